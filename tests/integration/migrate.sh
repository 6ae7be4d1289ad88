#!/bin/bash
# timeout: 540
# Live migration between two "hosts" on one machine: each a network namespace and a PID
# namespace of its own (its own /proc, so neither sees the other's QEMU by its uuid) with
# its own qvisor root, joined by a veth pair; the disk is shared (the same path on both).
# The guest runs a counter kept in RAM and written to its disk. migrate-incoming on B
# waits (a transient VM from the definition file), migrate on A moves the guest: it keeps
# counting on B without a boot, A holds nothing running; a destination killed -9 in the
# middle of a slow (--bandwidth 1) migration and an abort both leave the guest running on
# the source and the destination cleaned up; a refused connection changes nothing; and
# the guest goes back to A. The control line: a source with another token or for another
# uuid is refused and the destination waits on; a destination nobody comes to gives up
# after --timeout; migrate returns once the destination confirmed that the guest runs
# (and says so when it never does: the guest stays paused on the source); --persistent
# over tcp: defines the VM on the destination once it runs there.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../lib_twohosts.sh"

img=$T_ROOT/img
mkdir -p "$img"
qemu-img create -q -f qcow2 "$img/data.qcow2" 16M
twohosts 10.251.0 || { not_ok "two hosts (network and PID namespaces)"; finish; }
logB() { cat "$RB/var/log/qvisor/mg.log" 2>/dev/null; }

define_guest mg "" --disk "file=$img/data.qcow2,serial=DATA,cache=writeback"
uuid=$(qv show mg --json | jq -r .uuid)
qv show mg > "$T_ROOT/mg.json"
dev="\$(for d in /sys/block/vd*; do grep -qx DATA \$d/serial 2>/dev/null && echo \${d##*/}; done)"
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
    qA migrate mg --to tcp:$B_IP:4711 --token k0
check "...the guest runs on A" stateA running
check_error "migrate --to tcp: without the destination's token" 2 'migrate: --token is missing' \
    qA migrate mg --to tcp:$B_IP:4711
check_error "migrate-incoming without a definition here" 3 'no VM named mg' qB migrate-incoming mg --listen $B_IP:4711

# ---- another VM of the same name waits on B: refused; and B gives up by itself (--timeout) ----
jq '.uuid = "0badc0de-0000-4000-8000-000000000001" | del(.nics[]?.mac)' "$T_ROOT/mg.json" > "$T_ROOT/other.json"
check_output "B waits for another mg (another uuid), bounded (--timeout 8)" 'for 8 s' \
    waitB --listen $B_IP:4710 --definition "$T_ROOT/other.json" --timeout 8 --token k1
check_error "...a migration of this mg there is refused (not the same VM)" 1 \
    "mg: migration to $B_IP:4710 failed: the destination: the source's mg has uuid $uuid, the one here 0badc0de-.*: not the same VM; the guest runs on here" \
    qA migrate mg --to tcp:$B_IP:4710 --token k1
check "...the guest runs on A" stateA running
check "B gives up once its bound is over: its QEMU and supervisor are gone" wait_until 60 noneB
check "...saying why in its log" grep -q 'no source came within 8 s (migrate-incoming --timeout)' "$RB/var/log/qvisor/mg.log"
check "...and the transient VM is gone from B's list" sh -c "! nsenter -t $PB -p -m -n -- '$QV_BIN' --root '$RB' list --all | grep -q '^mg '"

# ---- A -> B ----
check_output "B waits for the stream, with a one-time token" \
    "mg: waiting for the migration stream on $B_IP:4711 .*--token [0-9a-f]{32}" \
    waitB --listen $B_IP:4711 --definition "$T_ROOT/mg.json"
T1=$(tok)
check "...its QEMU waits (state starting)" stateB starting
check_error "a source with another token is refused" 1 \
    "mg: migration to $B_IP:4711 failed: the destination: mg: the token does not match: this destination waits for another migration.*; the guest runs on here" \
    qA migrate mg --to tcp:$B_IP:4711 --token "x$T1"
check "...the guest runs on A" stateA running
check "...and B waits on, unchanged" stateB starting
before=$(countA)
check_output "migrate A -> B (the right token)" \
    "mg migrated to $B_IP:4711 in [0-9]+ ms \\(downtime [0-9]+ ms\\); running there" \
    qA migrate mg --to tcp:$B_IP:4711 --token "$T1" --max-downtime 300 --auto-converge
check "B runs the guest as soon as migrate returns (it confirmed)" stateB running
check "...B's log: the source was told once the guest ran" \
    awk '/QEMU .* running as pid/ { r = NR } /the source is told that the guest runs here/ && r { ok = 1 } END { exit !ok }' \
    "$RB/var/log/qvisor/mg.log"
check "...it keeps counting from where it was" wait_until 30 aboveB "${before:-0}"
check "...without booting on B" sh -c "! grep -q 'QVISOR-GUEST: ready' '$RB/var/log/qvisor/mg.log'"
check "...B's log says where it came from" sh -c "grep -q 'the guest.s state came in from the source' '$RB/var/log/qvisor/mg.log'"
dc=$(disk_countB)
check "...and writes its count to the shared disk on B" test "${dc:-0}" -ge "${before:-1}"
check "A: shut off, its QEMU and supervisor gone" wait_until 30 noneA
check_output "...and it says why" 'migrated to' qA status mg
check "...still defined on A" sh -c "'$QV_BIN' --root '$T_ROOT' list --all | grep -q '^mg '"

# ---- B -> A, the destination's QEMU killed -9 in the middle ----
check_output "A waits for the stream" 'waiting for the migration stream' waitA --listen $A_IP:4712 --token k2
(qB migrate mg --to tcp:$A_IP:4712 --token k2 --bandwidth 1 > "$T_ROOT/m1.out" 2>&1; echo $? > "$T_ROOT/m1.rc") &
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
check_output "A waits again" 'waiting for the migration stream' waitA --listen $A_IP:4713 --token k3
(qB migrate mg --to tcp:$A_IP:4713 --token k3 --bandwidth 1 > "$T_ROOT/m2.out" 2>&1; echo $? > "$T_ROOT/m2.rc") &
check "a slow migration is under way" wait_until 60 sentB
check_output "migrate --abort" 'being cancelled' qB migrate mg --abort
check "...migrate ends" wait_until 60 test -s "$T_ROOT/m2.rc"
check_output "...saying it was cancelled" 'failed: cancelled; the guest runs on here' cat "$T_ROOT/m2.out"
check "...the guest runs on B" stateB running
check "...A's waiting QEMU is gone (its stream broke)" wait_until 60 noneA

# ---- B -> A for good ----
check_output "A waits once more" 'waiting' waitA --listen $A_IP:4714 --token k4
n=$(countB)
check_output "migrate B -> A" "mg migrated to $A_IP:4714" qB migrate mg --to tcp:$A_IP:4714 --token k4
check "A runs the guest" stateA running
check "...which counts on" wait_until 30 aboveA "${n:-0}"
check_output "...and booted only once, on A, at the start" '^1$' count_log mg 'QVISOR-GUEST: ready'
check "B holds nothing running" wait_until 30 noneB
check "...and the transient VM is gone from B's list" sh -c "! nsenter -t $PB -p -m -n -- '$QV_BIN' --root '$RB' list --all | grep -q '^mg '"

# ---- A -> B for good over tcp: --persistent defines it on B once it runs there, --undefine-source ----
check_output "B waits (a transient VM from the file)" 'waiting' waitB --listen $B_IP:4715 --definition "$T_ROOT/mg.json" --token k5
check "...not defined on B yet" test ! -e "$RB/etc/qvisor/vms/mg.json"
n=$(countA)
check "migrate --persistent --undefine-source --json" sh -c "nsenter -t $PA -p -m -n -- '$QV_BIN' --root '$T_ROOT' --json migrate mg --to tcp:$B_IP:4715 --token k5 --persistent --undefine-source | jq -e '.downtime_ms >= 0 and .total_time_ms > 0 and .undefined_source and .defined and .destination_state == \"running\"'"
check "B runs the guest" stateB running
check "...which counts on" wait_until 30 aboveB "${n:-0}"
check "...and B has it defined" test -s "$RB/etc/qvisor/vms/mg.json"
check "...no longer as a transient VM" test ! -e "$RB/run/qvisor/vms/mg/definition.json"
check "A holds nothing running" wait_until 30 noneA
check "...and no definition" test ! -e "$T_ROOT/etc/qvisor/vms/mg.json"

# ---- B -> A: A's supervisor dies after the guest runs there and before it confirms ----
check_output "A waits (its supervisor set to die before it confirms)" 'waiting' \
    nsenter -t "$PA" -p -m -n -- env QVISOR_TEST_CRASH_AT=incoming-before-confirm "$QV_BIN" --root "$T_ROOT" \
    migrate-incoming mg --listen $A_IP:4716 --definition "$T_ROOT/mg.json" --token k6
check_error "migrate B -> A: the guest went over, no confirmation" 1 \
    "mg: migration to $A_IP:4716: the guest's state went over, but the destination closed the control line before it confirmed that it runs the guest.*: the guest stays paused here" \
    qB migrate mg --to tcp:$A_IP:4716 --token k6
check "...the guest stays paused on B (it may run on A)" stateB paused
check "...A's QEMU runs on without its supervisor" nsenter -t "$PA" -p -m -- pgrep -f -- "-uui[d] $uuid"
check_output "qvisor kill on B, as the message says when it runs there" '' qB kill mg
check "...B holds nothing running" wait_until 30 noneB
check "no sanitizer report in either host's logs" clean_logs
finish
