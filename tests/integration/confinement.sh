#!/bin/bash
# timeout: 300
# What confines a running QEMU, read back from /proc and tested by asking QEMU
# itself (over QMP) to do what it must not: its own uid, no capabilities,
# no_new_privs, two seccomp filters, a private /dev and mount namespace, only the
# expected fds, a cgroup with limits, and the OOM killer as a crash reason.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
truncate -s 64M "$img/a.raw" "$img/b.raw" "$img/hot.raw"
define_guest va "" --disk "$img/a.raw"
qv define -q vb --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND" --disk "$img/b.raw"
cat > "$T_ROOT/limits.json" <<J
{"name": "vl", "memory": "192M", "boot": {"kernel": "$G_KERNEL", "initrd": "$G_INITRD", "cmdline": "$G_APPEND"},
 "limits": {"cpu": "50%", "pids": 512, "cpu_weight": 200}}
J
qv define -q "$T_ROOT/limits.json"
qv start -q va && qv start -q vb && qv start -q vl
pa=$(vm_pid va)
pb=$(vm_pid vb)
status_field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
    check "QEMU's $cap is empty" test "$(status_field "$pa" $cap)" = 0000000000000000
done
check "NoNewPrivs is set" test "$(status_field "$pa" NoNewPrivs)" = 1
check "Seccomp is in filter mode" test "$(status_field "$pa" Seccomp)" = 2
check "...with at least two filters (qvisor's and QEMU's own)" test "$(status_field "$pa" Seccomp_filters)" -ge 2
uida=$(status_field "$pa" Uid)
uidb=$(status_field "$pb" Uid)
check "QEMU runs as a non-root uid ($uida)" test "$uida" -gt 0
check "two VMs run as two different uids ($uida, $uidb)" test "$uida" != "$uidb"
check_output "status --json reports what is in force" '"no_new_privs": true' qv status va --json
check "QEMU has a mount namespace of its own" test "$(readlink /proc/$pa/ns/mnt)" != "$(readlink /proc/self/ns/mnt)"

# only the expected fds: sockets, pipes, anonymous inodes, its own image, its log
unexpected=$(for f in /proc/$pa/fd/*; do readlink "$f"; done | grep -Ev \
    "^(socket:|pipe:|anon_inode:|/dev/(null|urandom|random|zero|ptmx|pts/[0-9]+|kvm)$|/memfd:|$img/a.raw$|$T_ROOT/var/log/qvisor/va.log$|$T_ROOT/run/qvisor/uids/[0-9]+$)")
check "QEMU holds only the fds it is meant to" test -z "$unexpected"
[ -n "$unexpected" ] && diag "$unexpected"
devs=$(ls /proc/$pa/root/dev | tr '\n' ' ')
check "its /dev has only the allowed nodes ($devs)" bash -c "! ls /proc/$pa/root/dev | grep -Evq '^(null|zero|full|random|urandom|ptmx|pts|kvm|shm)$'"
check_not "no /dev/net/tun inside" test -e "/proc/$pa/root/dev/net/tun"
check_not "the VM's image is not reachable by path inside" test -e "/proc/$pa/root$img/a.raw"

# asking QEMU itself to break out
check_error "QEMU cannot open another VM's image (blockdev-add)" 1 "No such file|Permission denied|Could not open" \
    qv qmp va "{\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": \"file\", \"filename\": \"$img/b.raw\", \"node-name\": \"steal\"}}"
check_error "QEMU cannot open /dev/net/tun (netdev_add tap)" 1 "tun|No such file|Permission denied" \
    qv qmp va '{"execute": "netdev_add", "arguments": {"type": "tap", "id": "t0"}}'
check_error "QEMU cannot write outside its sandbox (dump-guest-memory)" 1 "No such file|Permission denied|Read-only" \
    qv qmp va "{\"execute\": \"dump-guest-memory\", \"arguments\": {\"paging\": false, \"protocol\": \"file:$T_ROOT/escape\"}}"
check_not "...and nothing was written" test -e "$T_ROOT/escape"

# hotplug of a disk by fd, with the sandbox on
wait_log va 'QVISOR-GUEST: ready' 90
check_output "attach-disk passes the image as an fd" "disk attached as disk1" qv attach-disk va "$img/hot.raw" --format raw
check "the guest sees the new disk" wait_until 20 guest_ok va "test -e /sys/block/vdb"
check_not "...which QEMU could not have opened by path" test -e "/proc/$pa/root$img/hot.raw"
check_output "detach-disk once the guest released it" "disk $img/hot.raw detached" qv detach-disk va "$img/hot.raw"
check_not "...and QEMU no longer holds it" bash -c "ls -l /proc/$pa/fd | grep -q hot.raw"

# QEMU's own -sandbox spawn=deny: a QEMU that tries to start a helper is killed
qv qmp vb '{"execute": "netdev_add", "arguments": {"type": "bridge", "id": "b0", "br": "br0"}}' > /dev/null 2>&1
check "a QEMU that tries to fork a helper dies (spawn=deny)" wait_until 10 state_is vb crashed
check_output "...and the supervisor says how" "last exit +QEMU was killed by signal 31" qv status vb

# the cgroup and its limits
cg=/sys/fs/cgroup
pl=$(vm_pid vl)
check "the VM's cgroup exists" grep -q "$T_CGROUP/vl" "/proc/$pl/cgroup"
if [ -d "$cg/memory/$T_CGROUP/vl" ]; then
    mem=$(cat "$cg/memory/$T_CGROUP/vl/memory.limit_in_bytes")
    check "memory limit: guest RAM plus overhead ($mem bytes)" test "$mem" -gt $((192 << 20)) -a "$mem" -lt $((1 << 31))
    check "cpu limit: 50% is a 50 ms quota per 100 ms" test "$(cat $cg/cpu/$T_CGROUP/vl/cpu.cfs_quota_us)" = 50000
    check "pids limit" test "$(cat $cg/pids/$T_CGROUP/vl/pids.max)" = 512
else
    mem=$(cat "$cg/$T_CGROUP/vl/memory.max")
    check "memory limit (v2)" test "$mem" -gt $((192 << 20))
fi
qv stop -q vl --force
check_not "the cgroup is gone after stop" bash -c "ls -d $cg/*/$T_CGROUP/vl $cg/$T_CGROUP/vl 2>/dev/null | grep -q ."

# the memory limit is enforced: a guest that touches more than its cgroup allows
cat > "$T_ROOT/oom.json" <<J
{"name": "oom", "memory": "512M", "boot": {"kernel": "$G_KERNEL", "initrd": "$G_INITRD",
 "cmdline": "$G_APPEND qv_run=\\"dd if=/dev/zero of=/fill bs=1M count=400\\" qv_after=stay"},
 "limits": {"memory_max": "352M"}}
J
qv define -q "$T_ROOT/oom.json"
qv start -q oom
check "a guest above its memory limit is stopped by the OOM killer" wait_until 120 bash -c "'$QV_BIN' --root '$T_ROOT' status oom | grep -q crashed"
check_output "...and reported as crashed: out of memory (cgroup limit)" "last exit +out of memory \(cgroup limit\)" qv status oom
finish
