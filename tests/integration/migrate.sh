#!/bin/bash
# timeout: 480
# Live migration between two "hosts" on one machine: each a network namespace and a PID
# namespace of its own (its own /proc, so neither sees the other's QEMU by its uuid) with
# its own qvisor root, joined by a veth pair; the disk is shared (the same path on both).
# The guest runs a counter kept in RAM and written to its disk. migrate-incoming on B
# waits (a transient VM from the definition file), migrate on A moves the guest: it keeps
# counting on B without a boot, A holds nothing running; a destination killed -9 in the
# middle of a slow (--bandwidth 1) migration and an abort both leave the guest running on
# the source and the destination cleaned up; a refused connection changes nothing; and
# the guest goes back to A.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
qemu-img create -q -f qcow2 "$img/data.qcow2" 16M
RB=$T_ROOT/hostb        # host B's root, under A's so that the cleanup finds its processes
mkdir -p "$RB/etc/qvisor"
printf '{"cgroup_parent": "%s-b"}\n' "$T_CGROUP" > "$RB/etc/qvisor/host.json"
NA=qva${T_ROOT##*.}
NB=qvb${T_ROOT##*.}
A_IP=10.251.0.1
B_IP=10.251.0.2

# host NS VAR: a netns with a PID namespace whose init (a bash that reaps orphans) is in VAR
host() {
    ip netns add "$1" || return 1
    ip -n "$1" link set lo up
    ip netns exec "$1" unshare --pid --fork --mount-proc bash -c 'while :; do sleep 1; done' 2> /dev/null &
    local holder=$! init=
    local i
    for i in $(seq 50); do init=$(pgrep -P "$holder") && break; sleep 0.1; done
    [ -n "$init" ] || return 1
    printf -v "$2" %s "$init"
    on_exit "kill -9 $init; ip netns del $1"
}
host "$NA" PA && host "$NB" PB || { not_ok "two hosts (network and PID namespaces)"; finish; }
ip link add va netns "$NA" type veth peer name vb netns "$NB"
ip -n "$NA" addr add $A_IP/24 dev va && ip -n "$NA" link set va up
ip -n "$NB" addr add $B_IP/24 dev vb && ip -n "$NB" link set vb up
qA() { nsenter -t "$PA" -p -m -n -- "$QV_BIN" --root "$T_ROOT" "$@"; }
qB() { nsenter -t "$PB" -p -m -n -- "$QV_BIN" --root "$RB" "$@"; }
stateA() { [ "$(qA status mg --json 2>/dev/null | jq -r .state)" = "$1" ]; }
stateB() { [ "$(qB status mg --json 2>/dev/null | jq -r .state)" = "$1" ]; }
# no QEMU of mg in host X's process table, and no supervisor holds its lock
noneA() { ! nsenter -t "$PA" -p -m -- pgrep -f -- "-uui[d] $uuid| [r]un mg" > /dev/null; }
noneB() { ! nsenter -t "$PB" -p -m -- pgrep -f -- "-uui[d] $uuid| [r]un mg" > /dev/null; }
logB() { cat "$RB/var/log/qvisor/mg.log" 2>/dev/null; }

define_guest mg "" --disk "file=$img/data.qcow2,serial=DATA,cache=writeback"
uuid=$(qv show mg --json | jq -r .uuid)
qv show mg > "$T_ROOT/mg.json"
dev="\$(for d in /sys/block/vd*; do grep -qx DATA \$d/serial 2>/dev/null && echo \${d##*/}; done)"
gA() { gsh mg "$1"; }
gB() { T_ROOT=$RB gsh mg "$1"; }
countA() { gA 'cat /tmp/count' | grep -E '^[0-9]+$' | tail -1; }
countB() { gB 'cat /tmp/count' | grep -E '^[0-9]+$' | tail -1; }
aboveA() { local n; n=$(countA); [ -n "$n" ] && [ "$n" -gt "$1" ]; }
aboveB() { local n; n=$(countB); [ -n "$n" ] && [ "$n" -gt "$1" ]; }
booted() { [ "$(count_log mg 'QVISOR-GUEST: ready')" -ge 1 ]; }
counter="D=/dev/$dev; i=0; (while :; do i=\$((i+1)); echo \$i > /tmp/count; printf 'COUNT-%-506s' \$i | dd of=\$D bs=512 count=1 conv=fsync 2>/dev/null; sleep 1; done) > /dev/null 2>&1 & true"
disk_countB() { gB "dd if=/dev/$dev bs=512 count=1 2>/dev/null | tr -d ' '; echo" | grep -o 'COUNT-[0-9]*' | tail -1 | cut -d- -f2; }
# migrated_bytes X: what host X's supervisor says it has sent so far
sentB() { qB status mg --json | jq -e '.migration.transferred > 1048576' > /dev/null; }

qA start -q mg || { not_ok "the VM starts on A"; finish; }
check "the guest boots on A" wait_until 90 booted
check "it starts its counter" wait_until 30 guest_ok mg "$counter"
check "...which counts" wait_until 30 aboveA 1

# ---- nobody listens: nothing changes ----
check_error "migrate to a port where nothing listens" 1 \
    "mg: migration to $B_IP:4711 failed: connecting to $B_IP:4711: Connection refused" \
    qA migrate mg --to tcp:$B_IP:4711
check "...the guest runs on A" stateA running
check_error "migrate-incoming without a definition here" 3 'no VM named mg' qB migrate-incoming mg --listen $B_IP:4711

# ---- A -> B ----
check_output "B waits for the stream" "mg: waiting for the migration stream on $B_IP:4711" \
    qB migrate-incoming mg --listen $B_IP:4711 --definition "$T_ROOT/mg.json"
check "...its QEMU waits (state starting)" stateB starting
before=$(countA)
check_output "migrate A -> B" "mg migrated to $B_IP:4711 in [0-9]+ ms \\(downtime [0-9]+ ms\\)" \
    qA migrate mg --to tcp:$B_IP:4711 --max-downtime 300 --auto-converge
check "B runs the guest" wait_until 30 stateB running
check "...it keeps counting from where it was" wait_until 30 aboveB "${before:-0}"
check "...without booting on B" sh -c "! grep -q 'QVISOR-GUEST: ready' '$RB/var/log/qvisor/mg.log'"
check "...B's log says where it came from" sh -c "grep -q 'the guest.s state came in from the source' '$RB/var/log/qvisor/mg.log'"
dc=$(disk_countB)
check "...and writes its count to the shared disk on B" test "${dc:-0}" -ge "${before:-1}"
check "A: shut off, its QEMU and supervisor gone" wait_until 30 noneA
check_output "...and it says why" 'migrated to' qA status mg
check "...still defined on A" sh -c "'$QV_BIN' --root '$T_ROOT' list --all | grep -q '^mg '"

# ---- B -> A, the destination's QEMU killed -9 in the middle ----
check_output "A waits for the stream" 'waiting for the migration stream' qA migrate-incoming mg --listen $A_IP:4712
(qB migrate mg --to tcp:$A_IP:4712 --bandwidth 1 > "$T_ROOT/m1.out" 2>&1; echo $? > "$T_ROOT/m1.rc") &
check "a slow migration (1 MiB/s) is under way" wait_until 60 sentB
apid=$(qA status mg --json | jq -r .pid)
check "kill -9 of A's QEMU" nsenter -t "$PA" -p -m -- kill -9 "$apid"
check "...migrate ends" wait_until 60 test -s "$T_ROOT/m1.rc"
check_output "...with an error that says the guest runs on" 'mg: migration to .* failed: .*the guest runs on here' \
    cat "$T_ROOT/m1.out"
check_output "...exit status 1" '^1$' cat "$T_ROOT/m1.rc"
check "...the guest still runs on B" stateB running
n=$(countB)
check "...and keeps counting" wait_until 30 aboveB "${n:-0}"
check "A is cleaned up (no QEMU, no supervisor)" wait_until 30 noneA

# ---- B -> A, aborted ----
check_output "A waits again" 'waiting for the migration stream' qA migrate-incoming mg --listen $A_IP:4713
(qB migrate mg --to tcp:$A_IP:4713 --bandwidth 1 > "$T_ROOT/m2.out" 2>&1; echo $? > "$T_ROOT/m2.rc") &
check "a slow migration is under way" wait_until 60 sentB
check_output "migrate --abort" 'being cancelled' qB migrate mg --abort
check "...migrate ends" wait_until 60 test -s "$T_ROOT/m2.rc"
check_output "...saying it was cancelled" 'failed: cancelled; the guest runs on here' cat "$T_ROOT/m2.out"
check "...the guest runs on B" stateB running
check "...A's waiting QEMU is gone (its stream broke)" wait_until 60 noneA

# ---- B -> A for good ----
check_output "A waits once more" 'waiting' qA migrate-incoming mg --listen $A_IP:4714
n=$(countB)
check_output "migrate B -> A" "mg migrated to $A_IP:4714" qB migrate mg --to tcp:$A_IP:4714
check "A runs the guest" wait_until 30 stateA running
check "...which counts on" wait_until 30 aboveA "${n:-0}"
check_output "...and booted only once, on A, at the start" '^1$' count_log mg 'QVISOR-GUEST: ready'
check "B holds nothing running" wait_until 30 noneB
check "...and the transient VM is gone from B's list" sh -c "! nsenter -t $PB -p -m -n -- '$QV_BIN' --root '$RB' list --all | grep -q '^mg '"

# ---- A -> B for good: defined on B (--persistent), undefined on A ----
check_output "B waits, the VM defined there (--persistent)" 'waiting' \
    qB migrate-incoming mg --listen $B_IP:4715 --definition "$T_ROOT/mg.json" --persistent
n=$(countA)
check "migrate --undefine-source --json" sh -c "nsenter -t $PA -p -m -n -- '$QV_BIN' --root '$T_ROOT' --json migrate mg --to tcp:$B_IP:4715 --undefine-source | jq -e '.downtime_ms >= 0 and .total_time_ms > 0 and .undefined_source'"
check "B runs the guest" wait_until 30 stateB running
check "...which counts on" wait_until 30 aboveB "${n:-0}"
check "...and B has it defined" test -s "$RB/etc/qvisor/vms/mg.json"
check "A holds nothing running" wait_until 30 noneA
check "...and no definition" test ! -e "$T_ROOT/etc/qvisor/vms/mg.json"
finish
