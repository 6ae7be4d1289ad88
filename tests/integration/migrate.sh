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
# over tcp: defines the VM on the destination once it runs there. The source's guest is
# compared with the destination's definition (memory here) and refused before any
# stream; vCPUs plugged live (setvcpus) and the balloon's target go along, also from a
# supervisor that took over (its predecessor killed -9) after they changed. --postcopy:
# refused with the sysctl named while vm.unprivileged_userfaultfd is 0 (nothing starts),
# and a QEMU that came in without it has userfaultfd denied by its sandbox, one that came
# in with it has it;
# then (the test sets it to 1 and puts the old value back) B -> A switches to post-copy
# after the first pass, with a guest (1 vCPU) that keeps dirtying memory; --postcopy-bandwidth
# reaches QEMU (query-migrate-parameters on the source while it runs). A running guest
# with 2 vCPUs is refused without --unsafe (QEMU before 9.0 under TCG loses its writes
# during a migration) and goes paused; last, A -> B in post-copy with B failing at the
# switch (userfaultfd refused there by then): migrate ends by itself, saying that the
# guest never ran on B and stays paused on A (QEMU 7.2 cannot resume it).
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../lib_twohosts.sh"

img=$T_ROOT/img
mkdir -p "$img"
qemu-img create -q -f qcow2 "$img/data.qcow2" 16M
twohosts 10.251.0 || { not_ok "two hosts (network and PID namespaces)"; finish; }
logB() { cat "$RB/var/log/qvisor/mg.log" 2>/dev/null; }

define_guest mg "qv_agent=0" --disk "file=$img/data.qcow2,serial=DATA,cache=writeback"
qv show mg --json | jq '.memory = {"size": "192M", "balloon": true} | .cpu.max = 2' > "$T_ROOT/mg.json"
qv edit mg < "$T_ROOT/mg.json" > /dev/null || not_ok "cpu.max and a balloon in mg's definition"
uuid=$(qv show mg --json | jq -r .uuid)
qv show mg > "$T_ROOT/mg.json"
cpus_onlineB() { gB 'cat /sys/devices/system/cpu/online' | grep -E '^[0-9][0-9,-]*$' | tail -1; }
gB_ok() { T_ROOT=$RB guest_ok mg "$1"; }
online_isB() { [ "$(GSH_TIMEOUT=10 cpus_onlineB)" = "$1" ]; }
dev=$(gdisk DATA)
counter="D=/dev/$dev; i=0; (while :; do i=\$((i+1)); echo \$i > /tmp/count; printf 'COUNT-%-506s' \$i | dd of=\$D bs=512 count=1 conv=fsync 2>/dev/null; sleep 1; done) > /dev/null 2>&1 & true"
disk_countB() { gB "dd if=/dev/$dev bs=512 count=1 2>/dev/null | tr -d ' '; echo" | grep -o 'COUNT-[0-9]*' | tail -1 | cut -d- -f2; }
# migrated_bytes X: what host X's supervisor says it has sent so far
sentB() { qB status mg --json | jqe '.migration.transferred > 1048576'; }
statusA() { qA status mg --json | jq -r "$1"; }
# bgsnap true|false: QMP's background-snapshot capability on or off (post-copy off: they exclude each other)
bgsnap() { echo '{"execute": "migrate-set-capabilities", "arguments": {"capabilities": [{"capability": "postcopy-ram", "state": false}, {"capability": "background-snapshot", "state": '$1'}]}}'; }

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

# ---- B waits with a definition that does not fit (more memory): refused before any stream ----
jq '.memory.size = "256M" | del(.nics[]?.mac)' "$T_ROOT/mg.json" > "$T_ROOT/big.json"
check_output "B waits for mg defined with 256M" 'waiting' waitB --listen $B_IP:4709 --definition "$T_ROOT/big.json" --token k8
check_error "...migrating the 192M guest there is refused, naming the difference" 1 \
    "mg: migration to $B_IP:4709 failed: the destination: mg: the guest the source runs does not fit the definition here: memory is 201326592 there, 268435456 here.*; the guest runs on here" \
    qA migrate mg --to tcp:$B_IP:4709 --token k8
check_error "...and so is a post-copy migration to a destination that waits without --postcopy" 1 \
    "the destination: the source switches to post-copy \(--postcopy\), and this destination waits without --postcopy" \
    qA migrate mg --to tcp:$B_IP:4709 --token k8 --postcopy
check "...the guest runs on A" stateA running
check "...and B waits on" stateB starting
check_output "migrate-incoming --cancel ends B's wait" 'no longer waits' qB migrate-incoming mg --cancel
check "...B holds nothing" wait_until 60 noneB

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
check_output "setmem 160M on A (the balloon's target)" 'mg: balloon target 160M' qA setmem mg 160M
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
balloonB() { [ "$(qB status mg --json | jq .balloon.target)" = 167772160 ]; }
check "...and B set the balloon's target as on A (160M)" wait_until 30 balloonB
check "...B's log says where it came from" sh -c "grep -q 'the guest.s state came in from the source' '$RB/var/log/qvisor/mg.log'"
dc=$(disk_countB)
check "...and writes its count to the shared disk on B" test "${dc:-0}" -ge "${before:-1}"
# the sandbox lets userfaultfd through only for a QEMU that came in with --postcopy: B's did
# not. QEMU opens one for the background-snapshot capability (its kernel-support check);
# with vm.unprivileged_userfaultfd at 1 for now, only B's seccomp filter can refuse it
uffd 1
check_error "...B's QEMU, which came in without --postcopy, may not use userfaultfd (background-snapshot refused)" 1 \
    'Background-snapshot is not supported by host kernel' qB qmp mg "$(bgsnap true)"
qB qmp mg "$(bgsnap false)" > /dev/null 2>&1     # off, should it have been accepted
uffd_done
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
# nothing that changes the guest gets through meanwhile: a paused guest migrating without
# --unsafe (2 vCPUs, TCG before QEMU 9) must not run again before it is over
check_error "...resume is refused meanwhile (exit 4)" 4 \
    "mg: a save or migration is under way; try again once it is over \\(or cancel it: qvisor save\\|migrate mg --abort\\)" \
    qB resume mg
check_output "migrate --abort" 'being cancelled' qB migrate mg --abort
check "...migrate ends" wait_until 60 test -s "$T_ROOT/m2.rc"
check_output "...saying it was cancelled" 'failed: cancelled; the guest runs on here' cat "$T_ROOT/m2.out"
check "...the guest runs on B" stateB running
check "...A's waiting QEMU is gone (its stream broke)" wait_until 60 noneA
check "...B's log speaks of no mirrors (a migration without --copy-storage has none)" \
    sh -c "grep -q 'cancelled' '$RB/var/log/qvisor/mg.log' && ! grep -q 'copy-storage' '$RB/var/log/qvisor/mg.log'"

# ---- B -> A for good, in post-copy ----
uffd 0
qemus=$(count_log mg 'starting QEMU \(')
check_error "migrate-incoming --postcopy with vm.unprivileged_userfaultfd 0: refused, naming the sysctl" 1 \
    'mg: --postcopy: this host lets only processes with CAP_SYS_PTRACE use userfaultfd \(vm.unprivileged_userfaultfd = 0\).*sysctl -w vm.unprivileged_userfaultfd=1' \
    qA migrate-incoming mg --listen $A_IP:4714 --token k4 --postcopy
# the refusal comes from A's supervisor before it starts QEMU; it may still be on its way out
check "...no QEMU was started on A (its log counts $qemus before and after)" \
    test "$qemus" -gt 0 -a "$(count_log mg 'starting QEMU \(')" = "$qemus"
check "...and nothing runs there" wait_until 20 noneA
uffd 1
check_output "A waits for a post-copy migration (the sysctl at 1 for now)" 'waiting.*--postcopy' \
    waitA --listen $A_IP:4714 --token k4 --postcopy
check "...its QEMU checked userfaultfd first (it may use it, through the sandbox)" \
    grep -q 'post-copy: QEMU can use userfaultfd here' "$T_ROOT/var/log/qvisor/mg.log"
check "the guest on B keeps dirtying 4 MiB of memory every second" \
    gB_ok "(while :; do yes dirt | head -c 4194304 > /tmp/dirt; sleep 1; done) > /dev/null 2>&1 & echo \$! > /tmp/dirt.pid"
n=$(countB)
check_error "--postcopy-bandwidth without --postcopy is refused" 2 'migrate: --postcopy-bandwidth caps the post-copy phase and goes with --postcopy' \
    qB migrate mg --to tcp:$A_IP:4714 --token k4 --postcopy-bandwidth 64
check_error "...and 0 MiB/s too" 2 '--postcopy-bandwidth 0: a whole number from 1 to 1048576' \
    qB migrate mg --to tcp:$A_IP:4714 --token k4 --postcopy --postcopy-bandwidth 0
(qB --json migrate mg --to tcp:$A_IP:4714 --token k4 --postcopy --bandwidth 8 --postcopy-bandwidth 1024 \
    --max-downtime 50 > "$T_ROOT/m3.out" 2> "$T_ROOT/m3.err"; echo $? > "$T_ROOT/m3.rc") &
pcbwB() { [ "$(qB qmp mg '{"execute": "query-migrate-parameters"}' | jq -r '."max-postcopy-bandwidth"')" = 1073741824 ]; }
check "migrate B -> A --postcopy --postcopy-bandwidth 1024: B's QEMU has max-postcopy-bandwidth 1 GiB/s (query-migrate-parameters while it runs)" \
    wait_until 60 pcbwB
check "...the migration (8 MiB/s: the first pass cannot converge) ends" wait_until 240 test -s "$T_ROOT/m3.rc"
check "...in post-copy, the guest running on A" jqe '.postcopy == true and .destination_state == "running"' "$T_ROOT/m3.out"
[ -s "$T_ROOT/m3.err" ] && diag "migrate said: $(cat "$T_ROOT/m3.err")"
check "...A's QEMU, which came in with --postcopy, may use userfaultfd (background-snapshot accepted)" \
    qA qmp mg "$(bgsnap true)"
check "...(and turned off again)" qA qmp mg "$(bgsnap false)"
uffd_done
check "...B switched after the first pass" grep -q 'the first pass is done .*: switching to post-copy' "$RB/var/log/qvisor/mg.log"
check "...A ran the guest while its memory came" grep -q 'post-copy: the guest runs here now' "$T_ROOT/var/log/qvisor/mg.log"
check "A runs the guest" stateA running
check "...which stops dirtying memory" guest_ok mg 'kill $(cat /tmp/dirt.pid)'
check "...which counts on" wait_until 30 aboveA "${n:-0}"
check_output "...and booted only once, on A, at the start" '^1$' count_log mg 'QVISOR-GUEST: ready'
check "B holds nothing running" wait_until 30 noneB
check "...and the transient VM is gone from B's list" sh -c "! nsenter -t $PB -p -m -n -- '$QV_BIN' --root '$RB' list --all | grep -q '^mg '"

# ---- A -> B for good over tcp: --persistent defines it on B once it runs there, --undefine-source ----
check_output "B waits (a transient VM from the file)" 'waiting' waitB --listen $B_IP:4715 --definition "$T_ROOT/mg.json" --token k5
check_output "setvcpus 2 on A (plugged live)" 'mg: 2 vCPUs \(was 1\)' qA setvcpus mg 2
# a successor knows them: the vCPUs from QEMU, the balloon's target (QEMU does not tell it) from state.json
sA=$(qA status mg --json | jq -r .supervisor_pid)
check "kill -9 of A's supervisor (QEMU runs on)" nsenter -t "$PA" -p -m -- kill -9 "$sA"
check_output "start on A again reattaches" 'mg started' qA start mg
check "...with a new supervisor" test "$(statusA .supervisor_pid)" != "$sA"
check_output "...which counts the 2 vCPUs QEMU has and knows the balloon's target (160M)" '^2 167772160$' \
    statusA '"\(.vcpus) \(.balloon.target)"'
check "...not defined on B yet" test ! -e "$RB/etc/qvisor/vms/mg.json"
check_error "migrate of the running guest with 2 vCPUs (QEMU 7.2, TCG: it may lose writes) is refused without --unsafe, naming the bug and the ways out" 1 \
    "mg: migrate: QEMU 7\\.2 under TCG loses memory writes a running guest with more than one vCPU \\(it has 2\\) makes during a live migration \\(fixed in QEMU 9\\.0.*Pause it first .*--unsafe migrates it anyway" \
    qA migrate mg --to tcp:$B_IP:4715 --token k5 --persistent --undefine-source
check "...the guest runs on A" stateA running
check "...and B waits on" stateB starting
n=$(countA)
# paused, it writes nothing: safe, and it runs again on B (and no resume gets through
# while it goes: the check during the aborted migration above)
check_output "pause it on A" '' qA pause mg
out=$(qA --json migrate mg --to tcp:$B_IP:4715 --token k5 --persistent --undefine-source)
check "migrate (paused) --persistent --undefine-source --json" \
    jqe '.downtime_ms >= 0 and .total_time_ms > 0 and .undefined_source and .defined and .destination_state == "running"' <<< "$out"
check "B runs the guest" stateB running
check "...which counts on" wait_until 30 aboveB "${n:-0}"
check "...and B has it defined" test -s "$RB/etc/qvisor/vms/mg.json"
check "...no longer as a transient VM" test ! -e "$RB/run/qvisor/vms/mg/definition.json"
check "A holds nothing running" wait_until 30 noneA
check "...and no definition" test ! -e "$T_ROOT/etc/qvisor/vms/mg.json"
check "...B plugged the second vCPU before the stream" grep -q 'plugging the 2 vCPUs the source runs with' "$RB/var/log/qvisor/mg.log"
check_output "...B's status counts 2 vCPUs" '^2$' sh -c "nsenter -t $PB -p -m -n -- '$QV_BIN' --root '$RB' status mg --json | jq .vcpus"
check "...both online in the guest on B" wait_until 30 online_isB 0-1
check_error "migrate --postcopy of the running 2-vCPU guest: refused alike, before anything starts" 1 \
    "mg: migrate: QEMU 7\\.2 under TCG loses memory writes .*use KVM, QEMU 9\\.0 or later, or 1 vCPU; --unsafe" \
    qB migrate mg --to tcp:$A_IP:4799 --token k9 --postcopy
check "...the guest runs on B" stateB running
check_output "pause it on B (2 vCPUs: safe paused)" '' qB pause mg

# ---- B -> A: A's supervisor dies after the guest runs there and before it confirms ----
check_output "A waits (its supervisor set to die before it confirms)" 'waiting' \
    nsenter -t "$PA" -p -m -n -- env QVISOR_TEST_CRASH_AT=incoming-before-confirm "$QV_BIN" --root "$T_ROOT" \
    migrate-incoming mg --listen $A_IP:4716 --definition "$T_ROOT/mg.json" --token k6
check_error "migrate B -> A (paused): the guest went over, no confirmation" 1 \
    "mg: migration to $A_IP:4716: the guest's state went over, but the destination closed the control line before it confirmed that it runs the guest.*: the guest stays paused here" \
    qB migrate mg --to tcp:$A_IP:4716 --token k6
check "...the guest stays paused on B (it may run on A)" stateB paused
check "...A's QEMU runs on without its supervisor" nsenter -t "$PA" -p -m -- pgrep -f -- "-uui[d] $uuid"
check_output "qvisor kill on B, as the message says when it runs there" '' qB kill mg
check "...B holds nothing running" wait_until 30 noneB

# ---- A -> B in post-copy, B failing at the switch (userfaultfd refused there by then): bounded ----
# B's QEMU proves userfaultfd works when it starts and when the stream begins (sysctl at 1);
# at the switch it opens one again, refused now (0): it fails before the guest ever ran
# there. QEMU 7.2's source then waits for a recovery (postcopy-paused, or a deadlock in
# postcopy-active), and would wait forever
check_output "start on A reattaches to its QEMU" 'mg started' qA start mg
check "the guest on A dirties 4 MiB of memory every second" \
    guest_ok mg "(while :; do yes dirt | head -c 4194304 > /tmp/dirt; sleep 1; done) > /dev/null 2>&1 & true"
uffd 1
check_output "B waits for a post-copy migration" 'waiting.*--postcopy' waitB --listen $B_IP:4717 --token k7 --postcopy
# 2 vCPUs: --unsafe (the guest's integrity is not what this checks)
(qA migrate mg --to tcp:$B_IP:4717 --token k7 --postcopy --unsafe --bandwidth 8 --max-downtime 50 > "$T_ROOT/m4.out" 2>&1
 echo $? > "$T_ROOT/m4.rc") &
sentA() { qA status mg --json | jqe '.migration.transferred > 1048576'; }
check "migrate A -> B --postcopy --unsafe: the stream flows" wait_until 60 sentA
check "...A's log warns that it goes anyway (--unsafe)" \
    grep -q 'warning: QEMU 7.2 under TCG may lose .*(2 vCPUs, migrated anyway: --unsafe' "$T_ROOT/var/log/qvisor/mg.log"
uffd 0
check "...migrate ends by itself (bounded)" wait_until 120 test -s "$T_ROOT/m4.rc"
uffd_done
check_output "...exit status 1" '^1$' cat "$T_ROOT/m4.rc"
check_output "...saying B failed after the switch, the guest never ran there, and QEMU 7.2 cannot resume it here" \
    "mg: migration to $B_IP:4717 failed after the switch to post-copy: .*Failed to open userfault fd.*The guest never ran there, so its whole state is here, but QEMU 7\\.2 cannot resume it \\(cont: Migration is not finalized yet.*qvisor kill mg here, then qvisor start mg" \
    cat "$T_ROOT/m4.out"
check "...A's guest stays paused" stateA paused
check "...B holds nothing" wait_until 30 noneB
check_output "qvisor kill on A, as the message says" '' qA kill mg
check "...A holds nothing" wait_until 30 noneA
check "no sanitizer report in either host's logs" clean_logs
finish
