#!/bin/bash
# timeout: 420
# A VM's life with the real QEMU under TCG and the test guest: start, status,
# console, pause/resume, events, reset, qmp/hmp, graceful stop; and the foreground
# supervisor as systemd runs it (sd_notify, SIGTERM).
. "$(dirname "$0")/../lib.sh"

define_guest t1
check_output "start returns once the guest runs" "^t1 started" qv start t1
check_output "list shows it running" "^t1 +running" qv list
st=$(qv status t1 --json)
check "status --json: running, under TCG, QEMU 7.2, with a pid" \
    bash -c "grep -q '\"state\": \"running\"' <<< '$st' && grep -q '\"accel\": \"tcg\"' <<< '$st' && grep -q '\"qemu_version\": \"7.2' <<< '$st' && grep -Eq '\"pid\": [0-9]+' <<< '$st'"
check "the guest's serial output reaches the log (init marker)" wait_log t1 'QVISOR-GUEST: ready' 90
check_output "console: a command typed through a pipe answers" 'hello-42' \
    bash -c "echo 'echo hello-\$((6*7))' | '$QV_BIN' --root '$T_ROOT' console t1 --idle 1"
check_output "console --replay shows what was printed before anyone attached" 'QVISOR-GUEST: up' \
    bash -c "'$QV_BIN' --root '$T_ROOT' console t1 --replay --idle 0.5 < /dev/null"

"$QV_BIN" --root "$T_ROOT" events t1 >> "$T_ROOT/events.txt" 2>&1 &
events_pid=$!
on_exit "kill $events_pid"
# the stream is live once a pause and resume show up in it; only what follows counts
events_live() { qv pause t1 && qv resume t1 && grep -q '"event": *"RESUME"' "$T_ROOT/events.txt"; }
check "events: the stream is live" wait_until 30 events_live
primed=$(wc -l < "$T_ROOT/events.txt")
check_output "pause" "t1 paused" qv pause t1
check "status says paused" state_is t1 paused
check_output "qmp passes a command through: query-status" '"status": "paused"' qv qmp t1 '{"execute": "query-status"}'
check_output "resume" "t1 resumed" qv resume t1
check "status says running" state_is t1 running
check_output "hmp: info status" 'VM status: running' qv hmp t1 'info status'
check_error "qmp: QEMU's own error for an unknown command (exit 1)" 1 'CommandNotFound' qv qmp t1 '{"execute": "no-such-command"}'
check_error "qmp: malformed JSON is a usage error (exit 2)" 2 'QMP command' qv qmp t1 '{"execute": '
check_output "reset" "t1 reset" qv reset t1
check "the guest boots again after the reset" wait_until 90 bash -c "[ \$(grep -ac 'QVISOR-GUEST: ready' '$T_ROOT/var/log/qvisor/t1.log') -ge 2 ]"
kill "$events_pid" 2>/dev/null
streamed() {
    local t ev
    t=$(tail -n +$((primed + 1)) "$T_ROOT/events.txt")
    for ev in "$@"; do grep -q "\"event\": *\"$ev\"" <<< "$t" || return 1; done
}
check "events streamed STOP, RESUME and RESET as JSON lines" streamed STOP RESUME RESET

presses=$(count_log t1 'QVISOR-GUEST: power button')
start=$(date +%s%N)
check_output "stop powers the guest off through ACPI" "t1 stopped" qv stop t1 --timeout 30
ms=$(( ($(date +%s%N) - start) / 1000000 ))
diag "graceful stop took ${ms} ms"
# (it may see the second press too, sent 0.5 s after the first)
check "the guest saw the power button" test "$(count_log t1 'QVISOR-GUEST: power button')" -gt "$presses"
check "...and powered off itself (QEMU reports a SHUTDOWN by the guest)" \
    test "$(count_log t1 'event SHUTDOWN .*"reason": *"guest-shutdown"')" -eq 1
check_output "list --all shows it shut off" "^t1 +shut off" qv list --all
check_output "status keeps the last exit reason" "last exit +stopped" qv status t1
check_output "stop of a stopped VM is fine (exit 0)" "t1 is not running" qv stop t1
check_error "pause of a stopped VM is a conflict (exit 4)" 4 "t1 is not running" qv pause t1
check "logs has supervisor events with timestamps" bash -c "'$QV_BIN' --root '$T_ROOT' logs t1 | grep -Eq '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z supervisor: state: running -> stopping'"
check_output "logs -n 3 prints the last lines" "shut off" qv logs t1 -n 3

# the foreground supervisor, as a systemd unit runs it
"$NOTIFY_LISTEN" "$T_ROOT/notify.sock" 60 > "$T_ROOT/notify.txt" 2>&1 &
on_exit "kill $!"
wait_until 10 test -S "$T_ROOT/notify.sock"
NOTIFY_SOCKET=$T_ROOT/notify.sock WATCHDOG_USEC=2000000 "$QV_BIN" --root "$T_ROOT" run t1 > "$T_ROOT/run.out" 2>&1 &
run_pid=$!
check "run: READY=1 is sent once the guest runs" wait_until 30 grep -q '^READY=1' "$T_ROOT/notify.txt"
check "run: WATCHDOG=1 pings when WATCHDOG_USEC is set" wait_until 5 grep -q '^WATCHDOG=1' "$T_ROOT/notify.txt"
check_output "run: verbs work on a foreground supervisor" "t1 +running" qv list
check "run: the guest boots" wait_until 90 bash -c "[ \$(grep -ac 'QVISOR-GUEST: ready' '$T_ROOT/var/log/qvisor/t1.log') -ge 3 ]"
presses=$(count_log t1 'QVISOR-GUEST: power button')
kill -TERM "$run_pid"
wait "$run_pid"
rc=$?
check "run: SIGTERM stops the guest and run exits 0" test "$rc" -eq 0
check "...gracefully: the guest saw the power button" test "$(count_log t1 'QVISOR-GUEST: power button')" -gt "$presses"
check "...and powered off itself (QEMU reports a SHUTDOWN by the guest)" \
    test "$(count_log t1 'event SHUTDOWN .*"reason": *"guest-shutdown"')" -eq 2
check "...before the timeout" bash -c "! grep -aq 'did not power off in time' '$T_ROOT/var/log/qvisor/t1.log'"
check "run: STOPPING=1 was sent" grep -q '^STOPPING=1' "$T_ROOT/notify.txt"
check "run: supervisor events also go to stderr (the journal)" grep -q 'state: stopping -> shut off' "$T_ROOT/run.out"
finish
