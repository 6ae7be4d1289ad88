# Two "hosts" on one machine for the migration tests (sourced after lib.sh). Each host is
# a network namespace and a PID namespace of its own (its own /proc, so neither sees the
# other's QEMU by its uuid) with its own qvisor root: A's is $T_ROOT, B's is $RB (under
# A's, so that the cleanup finds its processes). A veth pair joins them.
#
#   twohosts NET        makes them: A_IP=NET.1, B_IP=NET.2; PA, PB: the PID namespaces' inits
#   qA / qB ARGS        qvisor on host A / B
#   stateA / stateB S   VM mg's state there is S
#   noneA / noneB       no QEMU of mg ($uuid) and no supervisor of mg there
#   gA / gB CMD         CMD in mg's guest on A / B (over its console)
#   countA / countB     the guest's counter (/tmp/count); aboveA / aboveB N: it is above N
#   booted              mg booted (once) on A
#   waitB / waitA ARGS  migrate-incoming mg ARGS on B / A, its output in $T_ROOT/in.out;
#   tok                 the token that migrate-incoming printed
#   clean_logs          no sanitizer report in either host's logs
#   jqe FILTER [FILE]   jq -e on stdin (or FILE), failing on no input too: jq -e alone passes
#                       on an empty input, as from a command that failed
#   uffd V / uffd_done  vm.unprivileged_userfaultfd (post-copy's sysctl) set to V / put back as it
#                       was. It is the machine's, and groups run in parallel: from the first uffd
#                       to uffd_done (or the group's exit) the group holds a lock the others wait for.
#                       uffd fails (1) where the kernel has no such sysctl.
RB=$T_ROOT/hostb

_host() {       # NS VAR: a netns with a PID namespace whose init (a bash that reaps orphans) is in VAR
    ip netns add "$1" || return 1
    ip -n "$1" link set lo up
    ip netns exec "$1" unshare --pid --fork --mount-proc bash -c 'while :; do sleep 1; done' 2> /dev/null &
    local holder=$! init= i
    for i in $(seq 50); do init=$(pgrep -P "$holder") && break; sleep 0.1; done
    [ -n "$init" ] || return 1
    printf -v "$2" %s "$init"
    on_exit "kill -9 $init; ip netns del $1"
}

twohosts() {
    mkdir -p "$RB/etc/qvisor"
    printf '{"cgroup_parent": "%s-b"}\n' "$T_CGROUP" > "$RB/etc/qvisor/host.json"
    NA=qa${T_ROOT##*.}
    NB=qb${T_ROOT##*.}
    A_IP=$1.1
    B_IP=$1.2
    _host "$NA" PA && _host "$NB" PB || return 1
    ip link add va netns "$NA" type veth peer name vb netns "$NB" || return 1
    ip -n "$NA" addr add "$A_IP/24" dev va && ip -n "$NA" link set va up &&
        ip -n "$NB" addr add "$B_IP/24" dev vb && ip -n "$NB" link set vb up
}

qA() { nsenter -t "$PA" -p -m -n -- "$QV_BIN" --root "$T_ROOT" "$@"; }
qB() { nsenter -t "$PB" -p -m -n -- "$QV_BIN" --root "$RB" "$@"; }
# probes (lib.sh's QV_PROBE)
stateA() { [ "$(nsenter -t "$PA" -p -m -n -- "$QV_PROBE" --root "$T_ROOT" status mg --json 2>/dev/null | jq -r .state)" = "$1" ]; }
stateB() { [ "$(nsenter -t "$PB" -p -m -n -- "$QV_PROBE" --root "$RB" status mg --json 2>/dev/null | jq -r .state)" = "$1" ]; }
noneA() { ! nsenter -t "$PA" -p -m -- pgrep -f -- "-uui[d] $uuid| [r]un mg" > /dev/null; }
noneB() { ! nsenter -t "$PB" -p -m -- pgrep -f -- "-uui[d] $uuid| [r]un mg" > /dev/null; }
gA() { gsh mg "$1"; }
gB() { T_ROOT=$RB gsh mg "$1"; }
# (asked again, up to three times, while the console gives no number: at load 11 it once
# gave none, and an empty count fails every check after it)
_count() { local n i; for i in 1 2 3; do n=$("$1" 'cat /tmp/count' | grep -E '^[0-9]+$' | tail -1); [ -n "$n" ] && break; done; echo "$n"; }
countA() { _count gA; }
countB() { _count gB; }
aboveA() { local n; n=$(countA); [ -n "$n" ] && [ "$n" -gt "$1" ]; }
aboveB() { local n; n=$(countB); [ -n "$n" ] && [ "$n" -gt "$1" ]; }
booted() { [ "$(count_log mg 'QVISOR-GUEST: ready')" -ge 1 ]; }
waitA() { qA migrate-incoming mg "$@" > "$T_ROOT/in.out" 2>&1; local rc=$?; cat "$T_ROOT/in.out"; return $rc; }
waitB() { qB migrate-incoming mg "$@" > "$T_ROOT/in.out" 2>&1; local rc=$?; cat "$T_ROOT/in.out"; return $rc; }
tok() { grep -o -- '--token [^ ]*' "$T_ROOT/in.out" | head -1 | cut -d' ' -f2; }
jqe() { local in; in=$(cat "${2:-/dev/stdin}") && [ -n "$in" ] && jq -e "$1" <<< "$in" > /dev/null; }
# clean_logs: no sanitizer report (the supervisors are the ASan build) in either host's logs
clean_logs() { ! grep -lE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$T_ROOT"/var/log/qvisor/*.log "$RB"/var/log/qvisor/*.log 2>/dev/null; }

UFFD=/proc/sys/vm/unprivileged_userfaultfd
# the lock: a directory (mkdir is atomic) with its holder's pid in it; no open file, which
# the supervisors started meanwhile would inherit and hold on to
UFFD_LOCK=/run/lock/qvisor-tests-uffd
_uffd_held= _uffd_old= _uffd_trap=
uffd() {
    [ -w $UFFD ] || return 1
    if [ -z "$_uffd_held" ]; then
        local end=$((SECONDS + 600)) holder
        until mkdir "$UFFD_LOCK" 2> /dev/null; do
            holder=$(cat "$UFFD_LOCK/pid" 2> /dev/null)
            # a holder that died without its exit trap (SIGKILL): its lock goes
            [ -n "$holder" ] && ! kill -0 "$holder" 2> /dev/null && rm -rf "$UFFD_LOCK" && continue
            [ $SECONDS -lt $end ] || return 1
            sleep 0.5
        done
        echo $$ > "$UFFD_LOCK/pid"
        _uffd_held=1
        _uffd_old=$(cat $UFFD)
        [ -n "$_uffd_trap" ] || on_exit uffd_done
        _uffd_trap=1
    fi
    echo "$1" > $UFFD
}
uffd_done() {
    [ -n "$_uffd_held" ] || return 0
    echo "$_uffd_old" > $UFFD
    rm -rf "$UFFD_LOCK"
    _uffd_held=
}
