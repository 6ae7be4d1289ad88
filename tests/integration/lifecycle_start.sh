#!/bin/bash
# timeout: 300
# Starting safely: concurrent starts, stale files from an earlier boot, a stale pid
# naming an unrelated live process, and QEMU's own message when it refuses to start.
. "$(dirname "$0")/../lib.sh"

define_guest s1
qv start s1 > "$T_ROOT/a.out" 2>&1 & a=$!
qv start s1 > "$T_ROOT/b.out" 2>&1 & b=$!
wait $a; ra=$?
wait $b; rb=$?
check "two concurrent starts: exactly one wins ($ra, $rb)" bash -c "[ \$(( ($ra == 0) + ($rb == 0) )) -eq 1 ]"
check "...the other fails with exit 4 and names the running supervisor" \
    bash -c "{ [ $ra -eq 4 ] && grep -q 's1 is already running (pid [0-9]*)' '$T_ROOT/a.out'; } || { [ $rb -eq 4 ] && grep -q 's1 is already running (pid [0-9]*)' '$T_ROOT/b.out'; }"
check_error "start of a running VM: exit 4" 4 "s1 is already running \(pid [0-9]+\)" qv start s1
check_error "run of a running VM: exit 4, before anything is created" 4 "s1 is already running" qv run s1
check_error "undefine of a running VM is refused (exit 4)" 4 "s1 is running \(stop it first\)" qv undefine s1
check "the control socket is 0600 by default" test "$(stat -c %a "$T_ROOT/run/qvisor/vms/s1/ctl.sock")" = 600
# the network libraries load only where a NIC needs them, NSS answers in a child
s1_maps=$(cat "/proc/$(sup_pid s1)/maps" 2>/dev/null)
check "the supervisor's mappings can be read (they name libc)" grep -q 'libc\.so' <<< "$s1_maps"
check "...a user-NIC VM's supervisor maps no libnl, no libnftables, no NSS module" \
    bash -c '! grep -E "libnl-|libnftables|libnss_" <<< "$1"' _ "$s1_maps"
kill_gone s1    # the stale files below must not be overwritten by its last state

# a stale state naming a live, unrelated process: it must never be signalled
sleep 600 & victim=$!
on_exit "kill $victim"
start_time=$(awk '{print $22}' "/proc/$victim/stat")
uuid=$(qv show s1 | grep -o '"uuid": "[^"]*"' | cut -d'"' -f4)
run=$T_ROOT/run/qvisor/vms/s1
cat > "$run/state.json" <<J
{"state": "running", "supervisor_pid": 1, "qemu_pid": $victim, "qemu_start_time": $start_time, "uuid": "$uuid"}
J
echo "$victim" > "$run/pid"
check_output "list does not mistake the unrelated process for QEMU" "^s1 +crashed" qv list --all
check_output "start with a stale pid of a live unrelated process works" "s1 started" qv start s1
check "...and the unrelated process was never signalled" kill -0 "$victim"
check "...QEMU has its own pid" test "$(vm_pid s1)" != "$victim"
kill_gone s1
check "...not even by kill" kill -0 "$victim"

# stale sockets and an empty lock file from a previous boot
for f in ctl.sock qmp.sock console.sock; do
    python3 -c "import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])" "$run/$f" 2>/dev/null ||
        { rm -f "$run/$f"; mkfifo "$run/$f"; }
done
: > "$run/lock"
echo 99999999 > "$run/pid"
check_output "start works over stale socket files, pid file and an empty lock file" "s1 started" qv start s1
qv kill -q s1

# QEMU refuses the command line: its own words come back
cat > "$T_ROOT/bad.json" <<J
{"name": "bad2", "memory": "128M", "boot": {"kernel": "$G_KERNEL"}, "qemu_args": ["-device", "no-such-device"]}
J
qv define -q "$T_ROOT/bad.json"
check_error "a start QEMU refuses fails with QEMU's own message (exit 1)" 1 \
    "bad2: QEMU failed to start: .*'no-such-device' is not a valid device model name" qv start bad2
check_output "...the state is shut off and keeps the reason" "last exit .*no-such-device" qv status bad2
check_output "...and QEMU's message is in the log" "qemu-system-x86_64: .*no-such-device" qv logs bad2
check "...no supervisor is left behind" bash -c "! '$QV_BIN' --root '$T_ROOT' list | grep -q '^bad2 '"
check_error "run of it in the foreground fails the same way (exit 1)" 1 "is not a valid device model name" qv run bad2 -q
check_error "a missing kernel is named (exit 3)" 3 "nok: boot.kernel /nonexistent/vmlinux: No such file or directory" \
    bash -c "'$QV_BIN' --root '$T_ROOT' define -q nok --kernel /nonexistent/vmlinux && '$QV_BIN' --root '$T_ROOT' start nok"
check_error "start of an unknown VM: exit 3" 3 "no VM named nosuch" qv start nosuch

# host.json ctl_group: members of that group may drive the VMs
printf '{"cgroup_parent": "%s", "ctl_group": "adm"}\n' "$T_CGROUP" > "$T_ROOT/etc/qvisor/host.json"
qv start -q s1
check "with ctl_group the control socket is 0660 and the group's" \
    test "$(stat -c '%a %G' "$T_ROOT/run/qvisor/vms/s1/ctl.sock")" = "660 adm"
qv kill -q s1
finish
