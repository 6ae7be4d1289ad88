#!/bin/bash
# timeout: 480
# qvisor reboot, all three paths, with the real QEMU under TCG and the test guest:
#  - no agent in the definition: system_reset, the guest boots a second time;
#  - "agent": true and the guest's qemu-guest-agent (Debian's, started by the test
#    guest's init on its org.qemu.guest_agent.0 port): guest-shutdown mode reboot reaches
#    the guest, whose /sbin/shutdown -r reboots it (no reset from the host);
#  - "agent": true but nothing answers in the guest (qv_agent=0: no qemu-ga started):
#    after the sync times out, system_reset.
. "$(dirname "$0")/../lib.sh"

boots() { count_log "$1" 'QVISOR-GUEST: up'; }
# wait_boots NAME N: the guest's init has said "ready" N times
ready_count() { [ "$(count_log "$1" 'QVISOR-GUEST: ready')" -ge "$2" ]; }

define_guest plain
define_guest withagent "" --agent
define_guest deafagent "qv_agent=0" --agent
for g in plain withagent deafagent; do qv start -q "$g"; done
all_ready() { ready_count plain 1 && ready_count withagent 1 && ready_count deafagent 1; }
check "three guests boot" wait_until 120 all_ready

check "the guest's qemu-guest-agent runs on its virtio-serial port" wait_log withagent 'QVISOR-GUEST: agent on /dev/vport' 20
check_not "...and none in the guest started with qv_agent=0" log_has deafagent 'QVISOR-GUEST: agent on'

# the three reboots are sent one after the other; the guests then boot again in parallel
# ---- no agent: system_reset ----
check_output "reboot without an agent" "plain rebooting" qv reboot plain
check "...resets through QEMU (the supervisor says so)" log_has plain 'reboot: system_reset'
# ---- agent that answers: the guest reboots itself ----
check_output "reboot with an agent" "withagent rebooting" qv reboot withagent
check "...goes through the guest agent (the supervisor says so)" log_has withagent 'reboot through the guest agent'
# ---- "agent": true, but nothing answers in the guest: fall back to reset ----
start=$(date +%s%N)
check_output "reboot with a silent agent" "deafagent rebooting" qv reboot deafagent
ms=$(( ($(date +%s%N) - start) / 1000000 ))
check "...falls back to system_reset after the agent's sync timed out" \
    bash -c "grep -aq 'guest agent did not answer' '$T_ROOT/var/log/qvisor/deafagent.log' && grep -aq 'reboot: system_reset' '$T_ROOT/var/log/qvisor/deafagent.log'"
check "...within seconds, not hanging ($ms ms, bound 30 s)" test "$ms" -lt 30000

check "no agent: the guest really boots again (its banner twice)" wait_until 90 ready_count plain 2
check "...exactly once more" test "$(boots plain)" -eq 2
check "...and the VM is still running" state_is plain running
check "agent: qemu-ga ran the guest's shutdown -r (guest-shutdown with mode reboot)" wait_log withagent 'QVISOR-GUEST: shutdown -r' 20
check "...and boots again (its banner twice)" wait_until 90 ready_count withagent 2
check_not "...without a system_reset from the host" log_has withagent 'reboot: system_reset|resetting instead'
check "...and the VM is still running" state_is withagent running
check "silent agent: the guest boots again" wait_until 90 ready_count deafagent 2

check_error "reboot of a stopped VM is a conflict (exit 4)" 4 "not running" bash -c "'$QV_BIN' --root '$T_ROOT' kill -q plain && '$QV_BIN' --root '$T_ROOT' reboot plain"
# after kill has answered, the supervisor is still on its way out (held there, stopped
# right after its answer): a verb sent then is "not running" too, not a connection
# closed under it (which it was, now and then, in the check above)
QVISOR_TEST_STOP_AT=stop-answered qv start -q plain
psup=$(sup_pid plain)
on_exit "kill -KILL $psup 2>/dev/null"
qv kill -q plain
check_error "...also while its supervisor is still on its way out (exit 4)" 4 "plain is not running" \
    timeout 10 "$QV_BIN" --root "$T_ROOT" reboot plain
kill -CONT "$psup"
check "...which then ends" pid_gone "$psup"
check_error "reboot of an unknown VM: no such object (exit 3)" 3 "nosuch" qv reboot nosuch
finish
