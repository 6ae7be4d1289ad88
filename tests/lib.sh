# Shared by the integration tests (bash). Each test script sources this file, runs
# checks that print TAP lines, and calls `finish`. A private root under /tmp and any
# VMs, namespaces or processes registered with `on_exit` are cleaned up on every exit.
set -u
T_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_BUILD=${QVISOR_TEST_BUILD:-$T_TOP/build}
# the ASan build; never a silent fall-back to whatever ./qvisor happens to be lying there
QV_BIN=${QVISOR_BIN:-$T_BUILD/asan/qvisor}
if [ ! -x "$QV_BIN" ]; then
    echo "not ok 1 - no qvisor binary at $QV_BIN (run make test-build, or set QVISOR_BIN)"
    echo "1..1"
    exit 1
fi
G_KERNEL=$T_BUILD/guest/vmlinux
G_INITRD=$T_BUILD/guest/initrd.img
T_N=0
T_FAILED=0
T_CLEANUP=()
T_ROOT=$(mktemp -d /tmp/qvtest.XXXXXX)
chmod 755 "$T_ROOT"     # as / is: dnsmasq, not root, reads its hosts files below it
export QVISOR_ACCEL=tcg
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

on_exit() { T_CLEANUP+=("$*"); }
# This root's VMs get cgroups of their own, so concurrent tests never share one.
T_CGROUP=qvisor-test-${T_ROOT##*.}
mkdir -p "$T_ROOT/etc/qvisor"
printf '{"cgroup_parent": "%s"}\n' "$T_CGROUP" > "$T_ROOT/etc/qvisor/host.json"
_t_cleanup() {
    local i
    for ((i = ${#T_CLEANUP[@]} - 1; i >= 0; i--)); do eval "${T_CLEANUP[$i]}" >/dev/null 2>&1; done
    # any QEMU (found by its -uuid: its command line names no path of the root) or
    # supervisor still running from this root, and its cgroups
    local def text uuids=
    for def in "$T_ROOT"/etc/qvisor/vms/*.json; do
        [ -f "$def" ] && IFS= read -r -d '' text < "$def"
        [[ ${text:-} =~ \"uuid\":\ \"([0-9a-f-]+)\" ]] && uuids+="${uuids:+|}${BASH_REMATCH[1]}"
    done
    [ -n "$uuids" ] && pkill -KILL -f -- "-uuid ($uuids)" 2>/dev/null
    pkill -KILL -f -- "$T_ROOT" 2>/dev/null
    _t_qemu_cpu
    find /sys/fs/cgroup -depth -type d -path "*/$T_CGROUP*" -exec rmdir {} + 2>/dev/null
    rm -rf "$T_ROOT"
}
# "# cpu: qemu N s, M starts": the CPU seconds this root's QEMUs used, from their
# cgroups' parents (tests/run adds it to the group's own CPU; cgroup v1 cpuacct, or v2
# cpu.stat), and how many QEMUs its supervisors started (a TCG boot is the suite's
# largest cost)
_t_qemu_cpu() {
    local d ns=0 n starts
    starts=$(cat "$T_ROOT"/var/log/qvisor/*.log "$T_ROOT"/*/var/log/qvisor/*.log 2>/dev/null | grep -ac ' starting QEMU (')
    for d in /sys/fs/cgroup/cpuacct/"$T_CGROUP"* /sys/fs/cgroup/"$T_CGROUP"*; do
        n=
        if [ -f "$d/cpuacct.usage" ]; then n=$(cat "$d/cpuacct.usage")
        elif [ -f "$d/cpu.stat" ]; then n=$(awk '$1 == "usage_usec" {printf "%d000\n", $2}' "$d/cpu.stat")
        fi
        ns=$((ns + ${n:-0}))
    done
    echo "# cpu: qemu $((ns / 1000000000)) s, $starts starts"
}
trap _t_cleanup EXIT
trap 'exit 130' INT TERM

# qv ARGS: the ASan build, as a user would run it. LeakSanitizer's scan at each exit
# costs ~40 ms of CPU (a call costs ~25 without it, ~3.5 for the optimized build) in a
# suite that makes thousands of calls, so in each group it runs for the first call of
# each verb, and for every call of a verb that may start a supervisor or QEMU (they
# inherit the environment, and a supervisor's leaks are the ones that grow); ASan and
# UBSan check every call. The unit tests and every supervisor run with it throughout.
mkdir -p "$T_ROOT/.lsan"
# qv_lsan_once KEY ARGS...: qvisor ARGS, with LSan only if no call with KEY came before
qv_lsan_once() {
    local key=${1//\//_}
    shift
    if [ -e "$T_ROOT/.lsan/$key" ]; then
        ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 "$QV_BIN" --root "$T_ROOT" "$@"
    else
        : > "$T_ROOT/.lsan/$key"
        "$QV_BIN" --root "$T_ROOT" "$@"
    fi
}
qv() {
    case $1 in
    start|restart|restore|run|migrate|migrate-incoming|evacuate|autostart|shutdown-all|managedsave|reboot|net|attach-*|change-media|block|snapshot)
        "$QV_BIN" --root "$T_ROOT" "$@" ;;
    vol|pool|secret|filter) qv_lsan_once "$1-${2:-}" "$@" ;;
    *) qv_lsan_once "$1" "$@" ;;
    esac
}
# Probes (what a check waits on or reads, not what it checks: a VM's state and pids, a
# command run in the guest over its console, the teardown) run the optimized build of
# the same tree: under ASan+LSan a qvisor call costs ~110 ms of CPU against ~15, the
# suite makes thousands of probe calls and its time is CPU-bound. The commands a
# check is about run QV_BIN (ASan), as do the supervisors they start.
QV_PROBE=${QVISOR_BIN:-$T_BUILD/qvisor}
[ -x "$QV_PROBE" ] || QV_PROBE=$QV_BIN
qp() { "$QV_PROBE" --root "$T_ROOT" "$@"; }

ok() { T_N=$((T_N + 1)); echo "ok $T_N - $*"; }
not_ok() { T_N=$((T_N + 1)); T_FAILED=$((T_FAILED + 1)); echo "not ok $T_N - $*"; }
diag() { sed 's/^/# /' <<< "$*"; }

# check DESC CMD...: passes when CMD exits 0; shows its output otherwise.
check() {
    local desc=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$desc"; else not_ok "$desc"; diag "$out"; fi
}
# check_fails DESC CODE CMD...: passes when CMD exits with status CODE.
check_exit() {
    local desc=$1 want=$2 out rc
    shift 2
    out=$("$@" 2>&1); rc=$?
    if [ "$rc" -eq "$want" ]; then ok "$desc"; else not_ok "$desc (exit $rc, want $want)"; diag "$out"; fi
}
# check_output DESC REGEX CMD...: CMD succeeds and its output matches REGEX.
check_output() {
    local desc=$1 re=$2 out
    shift 2
    if out=$("$@" 2>&1) && grep -Eq -- "$re" <<< "$out"; then ok "$desc"; else not_ok "$desc"; diag "$out"; fi
}
# check_not DESC CMD...: passes when CMD (a command or a function) ran and failed
# (exit 1-123: not "not found", not killed, not timed out). A failure has many
# causes, so use it only for an absence whose presence an earlier check showed;
# prefer check_error (the reason) or check_guest_fails (the guest answered).
check_not() {
    local desc=$1 out rc
    shift
    out=$("$@" 2>&1); rc=$?
    if [ "$rc" -ge 1 ] && [ "$rc" -le 123 ]; then ok "$desc"
    else not_ok "$desc (exit $rc)"; diag "$out"; fi
}
# check_error DESC CODE REGEX CMD...: CMD exits with status CODE and says REGEX.
check_error() {
    local desc=$1 want=$2 re=$3 out rc
    shift 3
    out=$("$@" 2>&1); rc=$?
    if [ "$rc" -eq "$want" ] && grep -Eq -- "$re" <<< "$out"; then ok "$desc"
    else not_ok "$desc (exit $rc, want $want)"; diag "$out"; fi
}
# wait_until SECONDS CMD...: CMD succeeds within SECONDS. It is tried again after
# 0.1 s, then less and less often, down to every 0.5 s: a wait that lasts (a TCG boot
# under load) costs a few tries, not ten a second of CPU taken from what it waits for.
wait_until() {
    local limit=$1 end pause=0.1
    shift
    end=$((SECONDS + limit))
    while ! "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $end ] && return 1
        pause $pause
        case $pause in 0.1) pause=0.2 ;; 0.2) pause=0.3 ;; 0.3) pause=0.5 ;; esac
    done
}
# pause SECONDS: sleeps without starting a process (sleep(1) is one, ~8 ms of CPU here):
# `read -t` on a FIFO that this shell holds open for writing too, so it never gets data
# or an end of file
mkfifo "$T_ROOT/.pause" && exec {T_PAUSE_FD}<> "$T_ROOT/.pause"
pause() { read -r -t "$1" -u "$T_PAUSE_FD" _; return 0; }
finish() {
    echo "1..$T_N"
    [ "$T_FAILED" -eq 0 ]
    exit $?
}

# ---- guests ----
# cryptomgr.notests and the kdf108 self-test off: the kernel's crypto self-tests took
# 2.3 s of a 13 s TCG boot (initcall_debug), in every boot of the suite
G_APPEND="console=ttyS0 quiet panic=-1 cryptomgr.notests initcall_blacklist=crypto_kdf108_init"
# define_guest NAME [EXTRA_CMDLINE] [DEFINE_FLAGS...]: the test guest, direct kernel boot
define_guest() {
    local name=$1 extra=${2:-}
    shift 2 2>/dev/null || shift $#
    qv define -q "$name" --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" \
        --append "$G_APPEND $extra" --nic user "$@"
}
# define_empty NAME [FLAGS...]: a VM with no OS (no kernel, disk or NIC): QEMU runs
# SeaBIOS, which finds nothing to boot and waits, halted. For checks about QEMU's
# process and the supervisor, not the guest: under TCG it costs ~0.4 s of CPU where a
# boot of the test guest costs ~4 (the suite's time is its CPU time).
define_empty() {
    local name=$1
    shift
    qv define -q "$name" --memory 64M "$@"
}
# The helpers below run thousands of times (most inside wait_until) and each process
# they start costs ~8 ms of CPU on these machines (a fork and exec, mostly the kernel's
# page-table work): they start as few as they can, bash does the rest.
vm_log() { cat "$T_ROOT/var/log/qvisor/$1.log" 2>/dev/null; }
# log_has NAME REGEX
log_has() { grep -aEq -- "$2" "$T_ROOT/var/log/qvisor/$1.log" 2>/dev/null; }
# wait_log NAME REGEX SECONDS
wait_log() { wait_until "${3:-60}" log_has "$1" "$2"; }
# count_log NAME REGEX: how many lines match (0 without a log)
count_log() {
    local f=$T_ROOT/var/log/qvisor/$1.log
    if [ -e "$f" ]; then grep -aEc -- "$2" "$f"; else echo 0; return 1; fi
}
# json_field JSON KEY: the first value of KEY (a string without its quotes, a number...)
json_field() {
    local re="\"$2\": *([^,}"$'\n'"]*)"
    [[ $1 =~ $re ]] || return 0
    local v=${BASH_REMATCH[1]}
    printf '%s\n' "${v//\"/}"
}
vm_state() { json_field "$(qp status "$1" --json 2>/dev/null)" state; }
vm_pid() { json_field "$(qp status "$1" --json 2>/dev/null)" pid; }
sup_pid() { json_field "$(qp status "$1" --json 2>/dev/null)" supervisor_pid; }
# pid_gone PID: waits (up to 30 s) for process PID to be gone; fails if it is not
pid_gone() { wait_until 30 test ! -e "/proc/$1"; }
# kill_gone NAME: kills the VM and waits for its supervisor to be gone: after `kill`
# has answered, the supervisor still writes the VM's state on its way out
kill_gone() {
    local p
    p=$(sup_pid "$1")
    qv kill -q "$1"
    [ -z "$p" ] || pid_gone "$p"
}
state_is() { [ "$(vm_state "$1")" = "$2" ]; }
# every test VM is killed on exit, whatever happened
kill_all_vms() {
    local n
    for n in $(qp list --all --json 2>/dev/null | grep -o '"name": "[^"]*"' | cut -d'"' -f4); do
        qp kill "$n" >/dev/null 2>&1
    done
}
on_exit kill_all_vms
NOTIFY_LISTEN=$T_BUILD/progs/notify_listen

# ---- commands inside the guest, through the serial console ----
# gsh NAME CMD: runs CMD in the guest's shell and prints what the console shows
# until CMD has finished (the end marker is computed, so the echoed command line
# never matches it), at most GSH_TIMEOUT seconds
# (the status is followed by the marker again, so waiting for "-END-42" cannot stop
# before the status has arrived: "END-42-1-END-42"). CMD's input is /dev/null: a
# command left without a file (a device not there yet) reads it and fails at once,
# where it would read the console's own input and hang until the time is up.
gsh() {
    local out
    out=$("$QV_PROBE" --root "$T_ROOT" console "$1" --expect -END-42 --timeout "${GSH_TIMEOUT:-30}" 2>&1 \
        <<< "{ $2; } < /dev/null; echo \"END-\$((6*7))-\$?-END-\$((6*7))\"")
    [ -z "$out" ] || printf '%s\n' "${out//$'\r'/}"
}
# gdisk SERIAL: a guest shell expression for the name (vdb, ...) of the disk with that
# serial, or no-disk/SERIAL while the guest sees none: a path in a directory that does
# not exist, so that reading /dev/$(gdisk S) fails at once and so does writing it (a
# plain name would be created as a file in /dev, and the write "succeed")
gdisk() { echo "\$(for d in /sys/block/vd*; do grep -qx $1 \$d/serial 2>/dev/null && { echo \${d##*/}; exit; }; done; echo no-disk/$1)"; }
# guest_ok NAME CMD: CMD exits 0 in the guest
guest_ok() { [[ $(gsh "$1" "$2") == *END-42-0-END-42* ]]; }
# check_guest_fails DESC NAME CMD REGEX: a negative check that cannot pass on a
# dead guest: the console answers, CMD runs there and exits non-zero, and what it
# printed matches REGEX (why it failed, e.g. '0 packets received').
check_guest_fails() {
    local desc=$1 name=$2 cmd=$3 re=$4 out
    out=$(gsh "$name" "$cmd")
    if grep -q 'END-42-0-END-42' <<< "$out"; then not_ok "$desc (it succeeded)"; diag "$out"
    elif ! grep -Eq 'END-42-[0-9]+-END-42' <<< "$out"; then not_ok "$desc (no answer from the guest's console)"; diag "$out"
    elif ! grep -Eq -- "$re" <<< "$out"; then not_ok "$desc (failed, but not with /$re/)"; diag "$out"
    else ok "$desc"; fi
}

# ---- answers while the supervisor is busy ----
# answers CMD...: CMD (a qvisor verb) succeeds, bounded by 60 s; its output in
# $T_ROOT/out. Not timed: a test shows that the answer came while the supervisor's
# other work still waited (the attach or start still running, QEMU still stopped, a
# stub still sleeping), which a supervisor that blocked could not do. Latency is bench/'s.
answers() {
    timeout 60 "$QV_BIN" --root "$T_ROOT" "$@" > "$T_ROOT/out" 2>&1
}

# ---- a private network world: a "host" namespace for qvisor and an "outside" one ----
# net_world: creates them, with a veth host 192.168.250.1 <-> outside 192.168.250.2;
# qn runs qvisor inside the host namespace.
net_world() {
    T_NS=qvh${T_ROOT##*.}
    T_OUT=qvo${T_ROOT##*.}
    ip netns add "$T_NS" && ip netns add "$T_OUT" || return 1
    on_exit "ip netns del $T_NS; ip netns del $T_OUT"
    ip -n "$T_NS" link set lo up
    ip -n "$T_OUT" link set lo up
    ip link add vh netns "$T_NS" type veth peer name vo netns "$T_OUT"
    ip -n "$T_NS" addr add 192.168.250.1/24 dev vh
    ip -n "$T_NS" link set vh up
    ip -n "$T_OUT" addr add 192.168.250.2/24 dev vo
    ip -n "$T_OUT" link set vo up
    on_exit "ip netns exec $T_NS '$QV_BIN' --root '$T_ROOT' net gc"
}
qn() { ip netns exec "$T_NS" "$QV_BIN" --root "$T_ROOT" "$@"; }
in_host() { ip netns exec "$T_NS" "$@"; }
in_out() { ip netns exec "$T_OUT" "$@"; }
# a guest on a network, asking DHCP for every NIC at boot
define_net_guest() {
    local name=$1 net=$2
    shift 2
    qn define -q "$name" --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" \
        --append "$G_APPEND qv_net=dhcp" --nic "network=$net" "$@"
}
# guest_ip NAME: the leased IPv4 of nic0 (empty until known)
guest_ip() { qn ifaddr "$1" --json 2>/dev/null | grep -o '"ipv4": "[0-9.]*"' | head -1 | cut -d'"' -f4; }

# ---- proving which rule stops a packet ----
# nft_rules FAMILY TABLE CHAIN: the chain's rules in the host namespace, one a
# line, as `nft -a` prints them ("RULE # handle N")
nft_rules() {
    in_host nft -a list chain "$1" "$2" "$3" | sed -n 's/^[[:space:]]*\(.* # handle [0-9]*\)$/\1/p' | grep -v '{ # handle'
}
# without_nft_rule FAMILY TABLE CHAIN RULE CMD...: deletes RULE (its text as nft
# prints it) from qvisor's chain, runs CMD, then puts the rule back where it was
# (calls nest). Returns CMD's status; 98 when RULE is not in the chain, 99 when the
# chain could not be restored exactly (both fail any check, as they should).
without_nft_rule() {
    local fam=$1 tab=$2 chain=$3 rule=$4 before after handle pos next rc
    shift 4
    before=$(nft_rules "$fam" "$tab" "$chain" | sed 's/ # handle [0-9]*$//')
    pos=$(awk -v r="$rule" '$0 == r {print NR; exit}' <<< "$before")
    [ -n "$pos" ] || { echo "no rule '$rule' in $fam $tab $chain:"; echo "$before"; return 98; }
    handle=$(nft_rules "$fam" "$tab" "$chain" | sed -n "${pos}p" | awk '{print $NF}')
    in_host nft delete rule "$fam" "$tab" "$chain" handle "$handle" || return 99
    "$@"
    rc=$?
    # by position, not handle: a nested call re-adds its rule under a new handle
    next=$(nft_rules "$fam" "$tab" "$chain" | sed -n "${pos}p" | awk '{print $NF}')
    if [ -n "$next" ]; then
        in_host nft insert rule "$fam" "$tab" "$chain" position "$next" $rule
    else
        in_host nft add rule "$fam" "$tab" "$chain" $rule
    fi
    after=$(nft_rules "$fam" "$tab" "$chain" | sed 's/ # handle [0-9]*$//')
    [ "$after" = "$before" ] || { echo "could not restore $fam $tab $chain:"; echo "$after"; return 99; }
    return $rc
}
# with_nft_element FAMILY TABLE SET KEY CMD...: adds element KEY ('"qvt…" . 10.0.0.9')
# to qvisor's set, runs CMD, then deletes it again. Returns CMD's status; 98 when the
# element was there already, 99 when it could not be added or deleted again.
with_nft_element() {
    local fam=$1 tab=$2 set=$3 key=$4 rc
    shift 4
    in_host nft get element "$fam" "$tab" "$set" "{ $key }" > /dev/null 2>&1 && { echo "$set already has $key"; return 98; }
    in_host nft add element "$fam" "$tab" "$set" "{ $key }" || return 99
    "$@"
    rc=$?
    in_host nft delete element "$fam" "$tab" "$set" "{ $key }" || return 99
    return $rc
}
# rfb_types HOST PORT: the security types a VNC server offers in the RFB 3.8 handshake,
# space-separated ("1": none, "2": VNC authentication)
rfb_types() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile("rb")
assert f.read(12).startswith(b"RFB 003.")
s.sendall(b"RFB 003.008\n")
n = f.read(1)[0]
print(" ".join(str(b) for b in f.read(n)))
PY
}
