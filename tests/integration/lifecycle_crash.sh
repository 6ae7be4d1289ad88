#!/bin/bash
# timeout: 660
# Crashes on every side: the supervisor killed with -9 (QEMU lives on and is
# reattached), QEMU killed with -9 (crashed, on_crash policy), both dead, guest panics.
. "$(dirname "$0")/../lib.sh"
# gone PID...: every PID has exited (a zombie waiting for its reaper counts as gone)
gone() {
    local p
    for p in "$@"; do
        [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && return 1
    done
    return 0
}
alive() { ! gone "$1"; }

# QEMU killed: crashed, and on_crash stop (the default) ends the supervisor
define_empty c0
qv start -q c0
qpid=$(vm_pid c0)
spid=$(sup_pid c0)
kill -9 "$qpid"
check "kill -9 of QEMU: the supervisor notices and exits" wait_until 10 bash -c "! kill -0 $spid 2>/dev/null"
check_output "...the VM is crashed, with the reason" "last exit +QEMU was killed by signal 9" qv status c0
check_output "...list --all shows crashed" "^c0 +crashed" qv list --all
check_output "a crashed VM starts again" "c0 started" qv start c0
qv kill -q c0

define_guest c1
qv start -q c1
wait_log c1 'QVISOR-GUEST: ready' 90
qpid=$(vm_pid c1)
spid=$(sup_pid c1)
kill -9 "$spid"
check "kill -9 of the supervisor: it is gone" wait_until 10 gone "$spid"
check "...and QEMU is left running" alive "$qpid"
check_output "list still shows the VM running" "^c1 +running" qv list
check_output "status says there is no supervisor" "supervisor +0|no supervisor" qv status c1 --json
check_output "start again reattaches" "c1 started" qv start c1
check "...to the same QEMU" test "$(vm_pid c1)" = "$qpid"
check "...with a new supervisor" test "$(sup_pid c1)" != "$spid"
check_output "...and the console still answers" 'again-7' \
    bash -c "echo 'echo again-\$((3+4))' | '$QV_BIN' --root '$T_ROOT' console c1 --idle 1"
check "...the log says it reattached" log_has c1 "reattached to running QEMU pid $qpid"

# a reattached QEMU is not our child: its death is seen, its exit status is not
spid=$(sup_pid c1)
kill -9 "$qpid"
check "kill -9 of a reattached QEMU: the supervisor notices and exits" wait_until 10 bash -c "! kill -0 $spid 2>/dev/null"
check_output "...the VM is crashed, and the reason says what is known" "last exit +QEMU exited \(status unknown" qv status c1

# on_crash restart: a new QEMU replaces the killed one
running_again() {   # NAME OLDPID: a QEMU other than OLDPID runs
    local p
    p=$(vm_pid "$1")
    [ -n "$p" ] && [ "$p" != "$2" ] && state_is "$1" running
}
define_empty c2 --on-crash restart
qv start -q c2
qpid=$(vm_pid c2)
kill -9 "$qpid"
check "on_crash restart: a new QEMU runs after the crash" \
    wait_until 60 running_again c2 "$qpid"
check "...the log records the crash and the restart" log_has c2 'starting it again in 1000 ms \(on_crash: restart, crash 1 of 5\)'
# a kill while the next restart waits ends the wait: after the third crash, whose wait
# (4 s) leaves a loaded machine time for the kill to come while it lasts
qpid=$(vm_pid c2)
kill -9 "$qpid"
check "a second crash: restarted after 2 s" wait_until 60 running_again c2 "$qpid"
qpid=$(vm_pid c2)
spid=$(sup_pid c2)
kill -9 "$qpid"
check "a third crash: the restart waits 4 s" wait_log c2 'starting it again in 4000 ms' 60
check "kill while a restart waits: it answers" qv kill -q c2
check "...the supervisor exits" wait_until 30 bash -c "! kill -0 $spid 2>/dev/null"
sleep 3
check "...no QEMU was started again" test -z "$(vm_pid c2)"
check "...the VM is shut off" state_is c2 "shut off"
check "...the log says the restart was cancelled" log_has c2 'killed: the pending restart is cancelled'

# both dead: the next start cleans up once and starts fresh
qv start -q c1
qpid=$(vm_pid c1)
spid=$(sup_pid c1)
kill -9 "$spid"; kill -9 "$qpid"
check "kill -9 of both: both are gone" wait_until 10 gone "$spid" "$qpid"
check_output "with QEMU and supervisor dead, list says crashed" "^c1 +crashed" qv list --all
check_output "start cleans up after the dead run and starts a new QEMU" "c1 started" qv start c1
check "...a new QEMU" test "$(vm_pid c1)" != "$qpid"
check "...the clean-up is logged once" test "$(count_log c1 "QEMU pid $qpid of the previous run is gone")" -eq 1
qv kill -q c1

# a guest kernel panic (pvpanic): on_crash pause keeps it for inspection
define_guest p1 'qv_run="echo c > /proc/sysrq-trigger" qv_after=stay' --on-crash pause
qv start -q p1
check "a guest panic is reported as GUEST_PANICKED" wait_log p1 'event GUEST_PANICKED' 90
check "on_crash pause: the VM is crashed and stays" wait_until 10 state_is p1 crashed
check_output "...QEMU is still there, paused" '"status": "guest-panicked"' qv qmp p1 '{"execute": "query-status"}'
check_output "stop of a crashed VM works" "p1 stopped" qv stop p1 --timeout 5

# a guest that panics in a loop is given up on
define_guest p2 'qv_run="echo c > /proc/sysrq-trigger" qv_after=stay' --on-crash restart
qv start -q p2
check "on_crash restart of a crash loop gives up after 5 crashes" wait_until 200 bash -c "! '$QV_BIN' --root '$T_ROOT' list | grep -q '^p2 '"
check_output "...the reason says so" "gave up after 5 crashes in 10 minutes" qv status p2
check "...each of the 5 crashes before was reset and rebooted" test "$(count_log p2 'resetting it \(on_crash: restart\)')" -eq 5
finish
