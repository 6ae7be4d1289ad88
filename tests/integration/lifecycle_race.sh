#!/bin/bash
# timeout: 660
# Never two QEMUs on one disk: a supervisor killed at each point of a start, state
# files that fell behind or were cut short, stop and kill without a supervisor,
# racing starts. After each, exactly one QEMU of the VM runs (or none).
. "$(dirname "$0")/../lib.sh"

vm_uuid() { grep -o '"uuid": "[0-9a-f-]*"' "$T_ROOT/etc/qvisor/vms/$1.json" | cut -d'"' -f4; }
# QEMUs of a VM, by the uuid on their command line (the supervisor's own has none)
nqemu() { pgrep -fc -- "-uuid $(vm_uuid "$1")"; }
qemu_pids() { pgrep -f -- "-uuid $(vm_uuid "$1")" | tr '\n' ' '; }
one_qemu() { [ "$(nqemu "$1")" -eq 1 ]; }
no_qemu() { [ "$(nqemu "$1")" -eq 0 ]; }
sup_gone() { ! vm_supervisor_alive "$1"; }
vm_supervisor_alive() { pgrep -f -- "--root $T_ROOT run .*$1( |$)" >/dev/null; }

# r1, r2 and r3 are VMs without an OS (what is checked is QEMU's process, not a guest);
# r4 is the test guest, for a start finished by a successor and for a graceful stop
define_empty r1
define_guest r4
# the probe works: a started VM is counted
qv start -q r1
check "the QEMU counter sees a running VM" one_qemu r1
qv kill -q r1
check "...and sees it gone after kill" wait_until 10 no_qemu r1

# 1. killed right after fork, before the child is recorded: the child never runs
check_error "a supervisor killed after fork fails the start" 1 "exited before it was ready" \
    env QVISOR_TEST_CRASH_AT=fork "$QV_BIN" --root "$T_ROOT" start r1
check "...and its child exits without becoming QEMU" wait_until 10 no_qemu r1
check_output "the next start starts one QEMU" "r1 started" qv start r1
check "...exactly one" one_qemu r1
qv kill -q r1

# 2. killed after recording the child, before releasing it: the child exits untouched
check_error "a supervisor killed after recording its child fails the start" 1 "exited before it was ready" \
    env QVISOR_TEST_CRASH_AT=recorded "$QV_BIN" --root "$T_ROOT" start r1
check "...the recorded child exits without becoming QEMU" wait_until 10 no_qemu r1
check_output "...state.json had recorded it" '"state": "starting"' cat "$T_ROOT/run/qvisor/vms/r1/state.json"
check_output "the next start starts one QEMU" "r1 started" qv start r1
check "...exactly one" one_qemu r1
qv kill -q r1

# 3. killed between spawn and cont: QEMU waits in prelaunch; start finishes its start
check_error "a supervisor killed before cont fails the start" 1 "exited before it was ready" \
    env QVISOR_TEST_CRASH_AT=before-cont "$QV_BIN" --root "$T_ROOT" start r4
check "...QEMU lives on, never continued" one_qemu r4
qpid=$(qemu_pids r4)
check_output "start takes it over" "r4 started" qv start r4
check "...the same QEMU, no second one" test "$(qemu_pids r4)" = "$qpid"
check_output "...and \"started\" means running" '"state": "running"' qv status r4 --json
check_output "...QEMU itself says running" '"status": "running"' qv qmp r4 '{"execute": "query-status"}'
check "...the guest boots" wait_log r4 'QVISOR-GUEST: ready' 90
check "...the log says the start was finished" log_has r4 'never started: finishing its start'
qv kill -q r4

# 4. state.json fell behind (a full /run) or was cut short: the QEMU is still found
qv start -q r1
qpid=$(vm_pid r1)
kill -9 "$(sup_pid r1)"
wait_until 10 sup_gone r1
printf '{"state": "starting", "qemu_pid": 0}\n' > "$T_ROOT/run/qvisor/vms/r1/state.json"
check_output "a stale state.json: status still shows the running QEMU (pid file)" "\"pid\": $qpid" qv status r1 --json
check_output "...start takes it over" "r1 started" qv start r1
check "...no second QEMU" test "$(qemu_pids r1)" = "$qpid "
check "...the log names the route it was found by" log_has r1 "found QEMU pid $qpid of this VM by its pid file"
kill -9 "$(sup_pid r1)"
wait_until 10 sup_gone r1
head -c 25 "$T_ROOT/run/qvisor/vms/r1/state.json" > "$T_ROOT/state.cut"
mv "$T_ROOT/state.cut" "$T_ROOT/run/qvisor/vms/r1/state.json"
rm -f "$T_ROOT/run/qvisor/vms/r1/pid"
check_output "a cut-short state.json and no pid file: start still takes the QEMU over" "r1 started" qv start r1
check "...no second QEMU" test "$(qemu_pids r1)" = "$qpid "
check "...found by its cgroup or the process table" log_has r1 "found QEMU pid $qpid of this VM by its (cgroup|process table)"
qv kill -q r1

# 5. stop and kill with the supervisor dead: QEMU is found, stopped, cleaned up
qv start -q r4
wait_until 90 eval '[ "$(count_log r4 "QVISOR-GUEST: ready")" -ge 2 ]'   # its second boot
kill -9 "$(sup_pid r4)"
wait_until 10 sup_gone r4
check "with the supervisor dead, QEMU runs" one_qemu r4
check_output "stop finds it and stops it" "r4 stopped" qv stop r4 --timeout 30
check "...QEMU is gone" no_qemu r4
check "...gracefully: the guest shut itself down" log_has r4 'event SHUTDOWN .*"reason": ?"guest-shutdown"'
check_output "...list says shut off" "^r4 +shut off" qv list --all
check_output "stop again: not running, exit 0" "r4 is not running" qv stop r4
qv start -q r4
kill -9 "$(sup_pid r4)"
wait_until 10 sup_gone r4
check_output "kill finds it without a supervisor and kills it" "r4 killed" qv kill r4
check "...QEMU is gone" no_qemu r4
check "...no supervisor lingers" wait_until 10 sup_gone r4

# 6. racing starts: one wins, the loser names the real supervisor pid
define_empty r2
losers=0 zero=0 doubles=0
for i in 1 2 3 4 5; do
    qv start r2 > "$T_ROOT/a.out" 2>&1 &
    a=$!
    qv start r2 > "$T_ROOT/b.out" 2>&1
    wait "$a"
    grep -q 'already running' "$T_ROOT/a.out" "$T_ROOT/b.out" && losers=$((losers + 1))
    grep -q 'already running (pid 0)' "$T_ROOT/a.out" "$T_ROOT/b.out" && zero=$((zero + 1))
    [ "$(nqemu r2)" -eq 1 ] || { doubles=$((doubles + 1)); diag "race $i: $(nqemu r2) QEMUs: $(cat "$T_ROOT"/[ab].out)"; }
    qv kill -q r2
    wait_until 10 no_qemu r2
done
check "5 racing start pairs: each time one QEMU" test "$doubles" -eq 0
check "...the loser says already running" test "$losers" -eq 5
check "...never \"pid 0\"" test "$zero" -eq 0

# 8. kill is answered once QEMU is reaped and recorded; the cgroup, taps and run files
# are released after, under the lock. Killed in between, the supervisor leaves them
# recorded ("exiting"), and the next start releases them before it starts anything.
env QVISOR_TEST_CRASH_AT=exiting "$QV_BIN" --root "$T_ROOT" start -q r1
cgdir=$(grep -o '"path": *"[^"]*"' "$T_ROOT/run/qvisor/vms/r1/state.json" | head -1 | cut -d'"' -f4)
check "the VM's cgroup is recorded and exists" test -n "$cgdir" -a -d "$cgdir"
check_output "kill is answered before the supervisor releases QEMU's cgroup" "r1 killed" qv kill r1
check "...QEMU is gone" no_qemu r1
check "...the supervisor died after answering (QVISOR_TEST_CRASH_AT=exiting)" wait_until 10 sup_gone r1
check "...leaving the cgroup behind" test -d "$cgdir"
check_output "...recorded as shut off and exiting" '"exiting": true' cat "$T_ROOT/run/qvisor/vms/r1/state.json"
check_output "the next start succeeds" "r1 started" qv start r1
check "...after releasing what the previous run left" log_has r1 'ended before it released its QEMU.s cgroup'
check "...exactly one QEMU" one_qemu r1
qv kill -q r1
check "after a kill, the cgroup goes once the supervisor is done" wait_until 10 bash -c "! test -d '$cgdir'"

# 8b. ...and a start meanwhile waits for that release (bounded), never running beside it:
# the supervisor stops itself after answering (QVISOR_TEST_STOP_AT=exiting)
env QVISOR_TEST_STOP_AT=exiting "$QV_BIN" --root "$T_ROOT" start -q r1
sp=$(sup_pid r1)
check_output "kill is answered while the supervisor has yet to release" "r1 killed" qv kill r1
sup_stopped() { grep -q '^State:.*stopped' "/proc/$sp/status"; }
check "...it is stopped there, holding the VM's lock" wait_until 10 sup_stopped
qv start r1 > "$T_ROOT/start8b.out" 2>&1 &
st=$!
sleep 1
start_waits() { kill -0 "$st" && no_qemu r1; }
check "a start meanwhile waits: still running after 1 s, no QEMU started" start_waits
kill -CONT "$sp"
wait "$st"
rc=$?
check "...and starts once the old supervisor has released and gone (exit $rc: $(cat "$T_ROOT/start8b.out"))" test "$rc" -eq 0
check "...exactly one QEMU" one_qemu r1
qv kill -q r1

# 7a. killed while it probes QEMU's features (nothing cached): the probe dies with it.
# The probe lives a few hundred ms; it is looked for without pauses, and when it was
# already gone the check says so as a skip rather than pass or fail on nothing.
define_empty r3
rm -rf "$T_ROOT/var/cache/qvisor"
"$QV_BIN" --root "$T_ROOT" run r3 >/dev/null 2>&1 &
sp=$!
probe=
end=$((SECONDS + 20))
while [ -z "$probe" ] && [ $SECONDS -lt $end ] && kill -0 "$sp" 2>/dev/null; do
    probe=$(pgrep -P "$sp" -f 'machine none' | head -1)
done
# frozen while the probe is up and talking QMP, then killed: as a kill at the worst moment
kill -STOP "$sp"
[ -n "$probe" ] && sleep 1
kill -9 "$sp"
wait "$sp" 2>/dev/null
if [ -n "$probe" ]; then
    check "a supervisor killed during the QEMU feature probe: the probe dies with it" \
        wait_until 5 bash -c "! kill -0 $probe 2>/dev/null"
    kill -9 "$probe" 2>/dev/null
else
    T_N=$((T_N + 1)); echo "ok $T_N # SKIP the feature probe finished before it could be caught"
fi
qv kill -q r3 >/dev/null 2>&1
pkill -KILL -f -- "-uuid $(vm_uuid r3)"

# 7. kill -9 of the supervisor as soon as it has forked QEMU's process, and at random
# moments of a start: never two QEMUs
doubles=0
for i in $(seq 1 12); do
    "$QV_BIN" --root "$T_ROOT" run r3 >/dev/null 2>&1 &
    sp=$!
    if [ $((i % 2)) -eq 1 ]; then
        wait_until 20 pgrep -P "$sp"
    else
        sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
    fi
    kill -9 "$sp" 2>/dev/null
    wait "$sp" 2>/dev/null
    sleep 0.5
    qv start -q r3 >/dev/null 2>&1
    n=$(nqemu r3)
    [ "$n" -eq 1 ] || { doubles=$((doubles + 1)); diag "round $i: $n QEMUs after start"; }
    qv kill -q r3
    pkill -KILL -f -- "-uuid $(vm_uuid r3)"
    wait_until 10 no_qemu r3
done
check "12 supervisors killed after fork or at random: start always leaves exactly one QEMU" test "$doubles" -eq 0
finish
