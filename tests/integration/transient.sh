#!/bin/bash
# timeout: 300
# A transient VM (virsh create): runs without a definition under etc/, every verb
# finds it while it runs, and nothing of it is left once it stops.
. "$(dirname "$0")/../lib.sh"

cat > "$T_ROOT/t1.json" <<J
{"name": "t1", "memory": "192M", "boot": {"kernel": "$G_KERNEL", "initrd": "$G_INITRD", "cmdline": "$G_APPEND"},
 "nics": [{"type": "user"}]}
J
check_output "create starts a transient VM from a file" "t1 created and started" qv create "$T_ROOT/t1.json"
check "...no definition is written under etc/" test ! -e "$T_ROOT/etc/qvisor/vms/t1.json"
check "...its definition lives in its run directory" test -s "$T_ROOT/run/qvisor/vms/t1/definition.json"
check_output "list shows it running" "^t1 +running" qv list
check_output "status answers" '"state": "running"' qv status t1 --json
check "the guest boots" wait_log t1 'QVISOR-GUEST: ready' 90
check_output "the console answers" 'transient-42' gsh t1 'echo transient-$((6*7))'
check_error "define of the same name is refused while it runs (exit 4)" 4 "runs as a transient VM" \
    qv define t1 --memory 128M
check_error "create of the same name again is refused (exit 4)" 4 "already runs as a transient VM" \
    qv create "$T_ROOT/t1.json"
# a supervisor killed -9: the transient VM is taken over like a defined one
qpid=$(vm_pid t1)
kill -9 "$(sup_pid t1)"
check "with its supervisor dead, the transient VM is still known" wait_until 10 bash -c \
    "'$QV_BIN' --root '$T_ROOT' list | grep -q '^t1 '"
check_output "start takes it over" "t1 started" qv start t1
check "...the same QEMU" test "$(vm_pid t1)" = "$qpid"
check_output "stop stops it" "t1 stopped" qv stop t1 --timeout 30
check "...and it is gone: no definition left" test ! -e "$T_ROOT/run/qvisor/vms/t1/definition.json"
check_error "...status says there is no such VM (exit 3)" 3 "no VM named t1" qv status t1
check "...list --all does not show it" bash -c "! '$QV_BIN' --root '$T_ROOT' list --all | grep -q '^t1 '"
# from flags; a start that fails leaves nothing behind
check_output "create from flags" "t2 created and started" qv create t2 --memory 192M --kernel "$G_KERNEL" \
    --initrd "$G_INITRD" --append "$G_APPEND"
qv kill -q t2
check "kill ends a transient VM too" wait_until 10 test ! -e "$T_ROOT/run/qvisor/vms/t2/definition.json"
printf '{"name": "t3", "memory": "192M", "qemu_args": ["-no-such-option"]}\n' > "$T_ROOT/t3.json"
# its supervisor held right after it reported the failure: the definition is gone by then
check_error "a transient VM that QEMU refuses: create fails with QEMU's words" 1 "no-such-option" \
    env QVISOR_TEST_STOP_AT=start-failure-reported "$QV_BIN" --root "$T_ROOT" create "$T_ROOT/t3.json"
check "...and leaves no definition" test ! -e "$T_ROOT/run/qvisor/vms/t3/definition.json"
t3sup=$(pgrep -f -- "--root $T_ROOT run .*t3( |$)")
[ -z "$t3sup" ] || { kill -CONT $t3sup; pid_gone "$t3sup"; }
check "...its supervisor was held there, and ends" bash -c "[ -n '$t3sup' ] && ! pgrep -f -- '--root $T_ROOT run .*t3( |\$)'"
check "a bad definition is refused before anything starts (exit 2)" bash -c \
    "echo '{\"name\": \"t4\", \"memory\": \"lots\"}' | '$QV_BIN' --root '$T_ROOT' create - 2>&1; [ \$? -eq 2 ]"
finish
