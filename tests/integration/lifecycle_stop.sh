#!/bin/bash
# timeout: 480
# Every way a VM stops: a guest that ignores ACPI, a QEMU that ignores quit and
# SIGTERM, --force, kill, the guest powering itself off, on_poweroff restart and
# on_reboot stop.
. "$(dirname "$0")/../lib.sh"

define_guest deaf "qv_acpi=0"
qv start -q deaf
wait_log deaf 'QVISOR-GUEST: ready' 90
start=$(date +%s)
check_output "stop of a guest that ignores ACPI falls through to quit" "deaf stopped" qv stop deaf --timeout 3
took=$(( $(date +%s) - start ))
check "...after the timeout, not before, and not much after ($took s)" test "$took" -ge 3 -a "$took" -le 8
check "...and says so in the log" log_has deaf 'the guest did not power off in time; quitting QEMU'
check "...the power button was pressed twice (for guests that miss the first): the guest saw $(count_log deaf "QVISOR-GUEST: power button ignored") presses" \
    test "$(count_log deaf 'QVISOR-GUEST: power button ignored')" -eq 2

# a QEMU that cannot answer (SIGSTOPped): quit, then SIGTERM, then SIGKILL
qv start -q deaf
pid=$(vm_pid deaf)
kill -STOP "$pid"
check_output "stop of a frozen QEMU ends with SIGKILL" "deaf stopped" qv stop deaf --timeout 1
check "...the log shows quit, SIGTERM and SIGKILL in turn" \
    bash -c "'$QV_BIN' --root '$T_ROOT' logs deaf | grep -q 'sending SIGTERM' && '$QV_BIN' --root '$T_ROOT' logs deaf | grep -q 'sending SIGKILL'"
check "...and QEMU is gone" bash -c "! kill -0 $pid 2>/dev/null"

qv start -q deaf
wait_log deaf 'QVISOR-GUEST: ready' 90
presses=$(count_log deaf 'supervisor: stopping: ACPI power button')
start=$(date +%s%N)
# with a 60 s timeout, "at once" and "after the timeout" are far apart even on a loaded host
check_output "stop --force quits at once" "deaf stopped" qv stop deaf --force --timeout 60
ms=$(( ($(date +%s%N) - start) / 1000000 ))
check "...well before the 60 s a graceful stop would wait ($ms ms)" test "$ms" -lt 20000
check "...without trying the power button first" \
    test "$(count_log deaf 'supervisor: stopping: ACPI power button')" -eq "$presses"

qv start -q deaf
pid=$(vm_pid deaf)
start=$(date +%s%N)
check_output "kill stops at once" "deaf killed" qv kill deaf
ms=$(( ($(date +%s%N) - start) / 1000000 ))
diag "kill took $ms ms"
check "...QEMU is gone and the state is shut off" bash -c "! kill -0 $pid 2>/dev/null && [ \"\$('$QV_BIN' --root '$T_ROOT' list --all | awk '/^deaf /{print \$2\" \"\$3}')\" = 'shut off' ]"

# the guest powers itself off: on_poweroff stop (default)
define_guest self "qv_run=true"
qv start -q self
check "a guest that powers off ends its supervisor" wait_until 90 bash -c "! '$QV_BIN' --root '$T_ROOT' list | grep -q '^self '"
check_output "...state shut off, last exit 'guest powered off'" "last exit +guest powered off" qv status self

# on_poweroff restart: the guest comes back by itself
define_guest again "qv_run=true" --on-poweroff restart
qv start -q again
check "on_poweroff restart: the guest boots again after powering off" \
    wait_until 120 bash -c "[ \$(grep -ac 'QVISOR-GUEST: ready' '$T_ROOT/var/log/qvisor/again.log') -ge 2 ]"
check "...and the VM is still running" state_is again running
qv kill -q again

# on_reboot stop: a reboot ends the VM
define_guest rb 'qv_run="reboot -f" qv_after=stay' --on-reboot stop
qv start -q rb
check "on_reboot stop: a guest reboot stops the VM" wait_until 90 bash -c "! '$QV_BIN' --root '$T_ROOT' list | grep -q '^rb '"
check_output "...with the reason recorded" "last exit +guest rebooted \(on_reboot: stop\)" qv status rb
finish
