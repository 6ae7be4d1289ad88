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
# the default range: not systemd's DynamicUser range (61184-65519), which systemd hands
# out without looking at running processes
check "...both from the default range 70000-99999" test "$uida" -ge 70000 -a "$uida" -le 99999 -a "$uidb" -ge 70000 -a "$uidb" -le 99999
check_output "status --json reports what is in force" '"no_new_privs": true' qv status va --json
check "QEMU has a mount namespace of its own" test "$(readlink /proc/$pa/ns/mnt)" != "$(readlink /proc/self/ns/mnt)"

# only the expected fds: sockets, pipes, anonymous inodes, its own image, its log
unexpected=$(for f in /proc/$pa/fd/*; do readlink "$f"; done | grep -Ev \
    "^(socket:|pipe:|anon_inode:|/dev/(null|urandom|random|zero|ptmx|pts/[0-9]+|kvm)$|/memfd:|$img/a.raw$|$T_ROOT/var/log/qvisor/va.log$|$T_ROOT/run/qvisor/uids/[0-9]+$)")
check "QEMU holds only the fds it is meant to" test -z "$unexpected"
[ -n "$unexpected" ] && diag "$unexpected"
devs=$(ls /proc/$pa/root/dev | tr '\n' ' ')
check "its /dev has only the allowed nodes ($devs)" bash -c "! ls /proc/$pa/root/dev | grep -Evq '^(null|zero|full|random|urandom|ptmx|pts|kvm|shm)$'"
# absent inside = QEMU's root is in view (its /dev/null is there), the thing exists
# on the host, and inside it is "No such file or directory"
check "QEMU's root is in view through /proc/PID/root" test -c "/proc/$pa/root/dev/null"
check "the host has /dev/net/tun" test -c /dev/net/tun
check_error "no /dev/net/tun inside" 1 'No such file or directory' stat "/proc/$pa/root/dev/net/tun"
check "the VM's image exists on the host" test -f "$img/a.raw"
check_error "...but is not reachable by path inside" 1 'No such file or directory' stat "/proc/$pa/root$img/a.raw"

# asking QEMU itself to break out
check_error "QEMU cannot open another VM's image (blockdev-add)" 1 "No such file|Permission denied|Could not open" \
    qv qmp va "{\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": \"file\", \"filename\": \"$img/b.raw\", \"node-name\": \"steal\"}}"
check_error "QEMU cannot open /dev/net/tun (netdev_add tap)" 1 "tun|No such file|Permission denied" \
    qv qmp va '{"execute": "netdev_add", "arguments": {"type": "tap", "id": "t0"}}'
check_error "QEMU cannot write outside its sandbox (dump-guest-memory)" 1 "No such file|Permission denied|Read-only" \
    qv qmp va "{\"execute\": \"dump-guest-memory\", \"arguments\": {\"paging\": false, \"protocol\": \"file:$T_ROOT/escape\"}}"
check_error "...and nothing was written" 1 'No such file or directory' stat "$T_ROOT/escape"

# hotplug of a disk by fd, with the sandbox on
# QEMU's open files, as the kernel shows them (a file opened on the host reads as its host path)
qemu_fds() { local f l=; for f in /proc/$pa/fd/*; do l+="$(readlink "$f")"$'\n'; done; [ -n "$l" ] && printf %s "$l"; }
qemu_holds() { local l; l=$(qemu_fds) && grep -qxF -- "$1" <<< "$l"; }
qemu_lacks() { local l; l=$(qemu_fds) && grep -qxF -- "$img/a.raw" <<< "$l" && ! grep -qxF -- "$1" <<< "$l"; }
wait_log va 'QVISOR-GUEST: ready' 90
check "before attach-disk QEMU holds no fd of hot.raw (but one of its own a.raw)" qemu_lacks "$img/hot.raw"
check_output "attach-disk on the sandboxed QEMU" "disk attached as disk1" qv attach-disk va "$img/hot.raw" --format raw
check "the guest sees the new disk" wait_until 20 guest_ok va "test -e /sys/block/vdb"
check "attach-disk passed the image as an fd: QEMU holds it open" qemu_holds "$img/hot.raw"
check_error "...though inside its namespace the path does not exist" 1 'No such file or directory' stat "/proc/$pa/root$img/hot.raw"
check_output "detach-disk once the guest released it" "disk $img/hot.raw detached" qv detach-disk va "$img/hot.raw"
# (the reply comes once the guest let go; QEMU closes the fd on the commands sent with it)
check "...and QEMU no longer holds it" wait_until 10 qemu_lacks "$img/hot.raw"

# QEMU's own -sandbox spawn=deny: a QEMU that tries to start a helper is killed
qv qmp vb '{"execute": "netdev_add", "arguments": {"type": "bridge", "id": "b0", "br": "br0"}}' > /dev/null 2>&1
check "a QEMU that tries to fork a helper dies (spawn=deny)" wait_until 10 state_is vb crashed
check_output "...and the supervisor says how" "last exit +QEMU was killed by signal 31" qv status vb

# the cgroup and its limits, found from the kernel's view of QEMU on either version:
# v2 "0::/PATH" under the one hierarchy; v1 "N:CTRL[,CTRL]:/PATH" under that controller's.
# The VM's cgroup is a parent of two leaves: QEMU in qemu/, its supervisor in supervisor/.
cg=/sys/fs/cgroup
pl=$(vm_pid vl)
sl=$(sup_pid vl)
cg_v2() { [ "$(stat -fc %T "$cg")" = cgroup2fs ]; }
# cg_dir PID CONTROLLER: the directory of PID's cgroup that has CONTROLLER
cg_dir() {
    local line ctrls path
    if cg_v2; then
        path=$(sed -n 's/^0:://p' "/proc/$1/cgroup")
        [ -n "$path" ] && echo "$cg${path%/}"
        return
    fi
    while IFS=: read -r _ ctrls path; do
        [[ ",$ctrls," == *",$2,"* ]] || continue
        if [ -d "$cg/$ctrls" ]; then echo "$cg/$ctrls${path%/}"; else echo "$cg/$2${path%/}"; fi
        return
    done < "/proc/$1/cgroup"
}
memdir=$(cg_dir "$pl" memory)
cpudir=$(cg_dir "$pl" cpu)
pidsdir=$(cg_dir "$pl" pids)
vmcpu=${cpudir%/qemu}
diag "cgroup v$(cg_v2 && echo 2 || echo 1): memory $memdir, cpu $cpudir, pids $pidsdir"
check "QEMU is in the VM's qemu leaf, $T_CGROUP/vl/qemu" \
    bash -c "[[ '$memdir' == */$T_CGROUP/vl/qemu ]] && grep -qx '$pl' '$memdir/cgroup.procs'"
for ctl in memory cpu pids; do
    check "the supervisor (pid $sl) is in the VM's supervisor leaf ($ctl)" \
        bash -c "[[ '$(cg_dir "$sl" $ctl)' == */$T_CGROUP/vl/supervisor ]]"
done
check "...and the VM's own directory holds no process (processes only in leaves)" \
    test -z "$(cat "${memdir%/qemu}/cgroup.procs" "$vmcpu/cgroup.procs")"
if cg_v2; then
    mem=$(cat "$memdir/memory.max")
    cpu=$(cat "$vmcpu/cpu.max")
    weight=$(cat "$vmcpu/cpu.weight")
    want_weight=200
else
    mem=$(cat "$memdir/memory.limit_in_bytes")
    cpu="$(cat "$vmcpu/cpu.cfs_quota_us") $(cat "$vmcpu/cpu.cfs_period_us")"
    weight=$(cat "$vmcpu/cpu.shares")
    want_weight=2048    # v2's weight 100 is v1's 1024 shares
fi
check "memory limit on QEMU's leaf: guest RAM plus overhead, under 2 GiB ($mem bytes)" \
    test "$mem" -gt $((192 << 20)) -a "$mem" -lt $((1 << 31))
check "cpu limit on the whole VM: 50% is a 50 ms quota per 100 ms ($cpu)" test "$cpu" = "50000 100000"
check "cpu weight 200 on the whole VM ($weight)" test "$weight" = "$want_weight"
check "pids limit on QEMU's leaf" test "$(cat "$pidsdir/pids.max")" = 512
cg_dirs() {
    local d
    for d in "$memdir" "$cpudir" "$pidsdir"; do echo "$d" "${d%/qemu}" "${d%/qemu}/supervisor"; done | tr ' ' '\n' | sort -u
}
cg_left() { local d; for d in $(cg_dirs); do [ -d "$d" ] && echo "$d"; done; }
check "the cgroup's directories exist while it runs" test "$(cg_left)" = "$(cg_dirs)"
qv stop -q vl --force
# stop answers once QEMU is reaped and recorded; the supervisor removes the cgroup after
cg_gone() { [ -z "$(cg_left)" ]; }
check "the cgroup is gone after stop, leaves and all" wait_until 10 cg_gone
check "...once the supervisor has moved itself out and ended" wait_until 10 bash -c "! kill -0 $sl 2>/dev/null"

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
