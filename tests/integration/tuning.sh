#!/bin/bash
# timeout: 300
# Tuning keys on one real guest (TCG, 2 vCPUs, a third plugged live): cpu.pinning on QEMU's vCPU threads and
# every other thread (read back from /proc, by the thread names debug-threads gives,
# not from qvisor), and again by a supervisor that takes over a QEMU whose threads were
# moved; two guest NUMA nodes as the guest kernel sees them; cpu.maxphysaddr emulate in
# the guest's cpuinfo; clock.adjustment in the guest's clock; memory.hugepages 2M
# (QEMU's RAM on 2 MiB pages), where the host's pool can be raised here: raised for the
# start under the lock test_argv_oracle uses, and put back at once (pages in use stay
# until QEMU ends, then go back to the kernel by themselves).
. "$(dirname "$0")/../lib.sh"

HP_LOCK=/run/lock/qvisor-test-hugepages
HP_DIR=/sys/kernel/mm/hugepages/hugepages-2048kB
ADJ=31536000        # a year ahead
alive() { kill -0 "$1" 2>/dev/null; }
gone() { ! kill -0 "$1" 2>/dev/null; }
# affinity PID NAME: Cpus_allowed_list of QEMU's thread called NAME
affinity() {
    local t
    for t in /proc/"$1"/task/*; do
        if [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ]; then grep '^Cpus_allowed_list:' "$t/status" | cut -f2; return; fi
    done
}
# other_affinities PID: the distinct Cpus_allowed_list of every thread that is not a vCPU
other_affinities() {
    local t
    for t in /proc/"$1"/task/*; do
        case "$(cat "$t/comm" 2>/dev/null)" in "CPU "*) ;; *) grep '^Cpus_allowed_list:' "$t/status" | cut -f2 ;; esac
    done | sort -u | tr '\n' ' '
}
pinned_as_defined() {
    [ "$(affinity "$1" 'CPU 0/TCG')" = 1 ] && [ "$(affinity "$1" 'CPU 1/TCG')" = 0 ] && [ "$(other_affinities "$1")" = "0 " ]
}
# free pages not yet promised to a mapping
hp_free() { echo $(( $(cat "$HP_DIR/free_hugepages") - $(cat "$HP_DIR/resv_hugepages") )); }
# the pool back to its size before the test; free pages QEMU's mappings reserved stay in
# the pool until QEMU ends, so this runs again, under the lock, once the VM is gone
hp_put_back() { [ -z "${hp_nr:-}" ] || echo "$hp_nr" > "$HP_DIR/nr_hugepages"; }
hp_final() {
    [ -n "${hp_nr:-}" ] || return 0
    kill_all_vms
    flock -w 30 "$hp_fd"
    hp_put_back
    : > "$HP_LOCK"
    hp_nr=
}

# ---- the definition ----
define_guest tun "qv_agent=0"
qv show tun | jq '.cpu = {"model": "auto", "count": 2, "max": 3, "pinning": {"vcpus": ["1", "0", "1"], "emulator": "0"},
                          "maxphysaddr": {"mode": "emulate", "bits": 42}}
                  | .numa = [{"cpus": "0", "memory": "64M"}, {"cpus": "1-2", "memory": "128M"}]
                  | .clock = {"offset": "utc", "adjustment": '$ADJ'}' > "$T_ROOT/tun.json"
check_output "the tuning keys are accepted by edit" "tun changed" bash -c "'$QV_BIN' --root '$T_ROOT' edit tun < '$T_ROOT/tun.json'"
jq '.cpu.pinning.vcpus = ["0"]' "$T_ROOT/tun.json" > "$T_ROOT/bad.json"
check_error "a pinning list per vCPU is required, with the JSON path" 2 \
    'cpu\.pinning\.vcpus: 1 CPU lists for 2 vCPUs and cpu\.max 3 \(one list per vCPU, 2 to 3 of them\)' bash -c "'$QV_BIN' --root '$T_ROOT' edit tun < '$T_ROOT/bad.json'"
jq '.numa[1].cpus = "1"' "$T_ROOT/tun.json" > "$T_ROOT/bad.json"
check_error "NUMA nodes must hold the vCPUs up to cpu.max too" 2 \
    'numa: vCPU 2 is in no node \(each of the 3 vCPUs up to cpu\.max must be in exactly one\)' \
    bash -c "'$QV_BIN' --root '$T_ROOT' edit tun < '$T_ROOT/bad.json'"
jq '.numa[1].cpus = "0-2"' "$T_ROOT/tun.json" > "$T_ROOT/bad.json"
check_error "a vCPU in two NUMA nodes is refused" 2 'numa\[1\]\.cpus: vCPU 0 is already in numa\[0\]' \
    bash -c "'$QV_BIN' --root '$T_ROOT' edit tun < '$T_ROOT/bad.json'"
check "...and the definition is the accepted one" jq -e '.numa[1].cpus == "1-2"' "$T_ROOT/etc/qvisor/vms/tun.json"

# hugepages: 96 pages for 192M, if this host lets the pool grow
huge=false why=""
exec {hp_fd}<>"$HP_LOCK"
if [ ! -w "$HP_DIR/nr_hugepages" ]; then
    why="no 2M hugepage pool here ($HP_DIR)"
elif ! flock -w 60 "$hp_fd"; then
    why="the hugepage lock stayed taken for 60 s"
else
    read -r left_nr left_pool < "$HP_LOCK" || true
    [ -n "${left_nr:-}" ] && echo "$left_nr" > "${left_pool:-/proc/sys/vm/nr_hugepages}" && : > "$HP_LOCK"
    on_exit hp_final
    free=$(hp_free)
    hp_before=$(cat "$HP_DIR/nr_hugepages")
    if [ "$free" -lt 96 ]; then
        hp_nr=$(cat "$HP_DIR/nr_hugepages")
        echo "$hp_nr $HP_DIR/nr_hugepages" > "$HP_LOCK"
        echo $((hp_nr + 96 - free)) > "$HP_DIR/nr_hugepages"
    fi
    if [ "$(hp_free)" -ge 96 ]; then
        huge=true
        jq '.memory = {"size": "192M", "hugepages": "2M"}' "$T_ROOT/tun.json" > "$T_ROOT/huge.json"
        qv edit tun < "$T_ROOT/huge.json" > /dev/null
    else
        why="the kernel gave only $(hp_free) of 96 free 2M pages"
    fi
fi
if [ -d "$HP_DIR" ]; then
    hc_want="$(hp_free) available of $(cat "$HP_DIR/nr_hugepages") in the pool"
    check_output "host-check reports the 2M pool's available pages and its size" "^$hc_want " \
        bash -c "'$QV_BIN' --root '$T_ROOT' host-check --json | jq -r '.checks[] | select(.name == \"hugepages 2M\") | .detail'"
fi
qv start -q tun || { not_ok "the tuned VM starts"; diag "$(vm_log tun | tail -20)"; finish; }
hp_put_back
flock -u "$hp_fd"
qpid=$(vm_pid tun)

# ---- pinning ----
check "vCPU 0's thread runs on host CPU 1, vCPU 1's on CPU 0 (as cpu.pinning.vcpus says)" \
    test "$(affinity "$qpid" 'CPU 0/TCG')/$(affinity "$qpid" 'CPU 1/TCG')" = "1/0"
check "...every other QEMU thread on the emulator's CPU 0" test "$(other_affinities "$qpid")" = "0 "
check "...the log says what was pinned" log_has tun "pinned 2 vCPU threads and [0-9]+ other QEMU threads"

# ---- the guest ----
check "the guest boots" wait_until 120 guest_ok tun true
check "the guest kernel sees two NUMA nodes, vCPU 0 in node0 and vCPU 1 in node1" \
    guest_ok tun "[ \"\$(cat /sys/devices/system/node/node0/cpulist)/\$(cat /sys/devices/system/node/node1/cpulist)\" = 0/1 ]"
node_kib() { gsh tun "grep MemTotal /sys/devices/system/node/node$1/meminfo" | grep -o 'MemTotal: *[0-9]*' | grep -o '[0-9]*$'; }
n0=$(node_kib 0) n1=$(node_kib 1)
diag "guest NUMA MemTotal: node0 ${n0:-?} kB, node1 ${n1:-?} kB"
# node0 also holds the kernel, its initramfs and the low-memory reservations: ~19M of 64M are left
check "...node1 holds most of its 128M, node0 at most its 64M" \
    test "${n1:-0}" -gt 100000 -a "${n1:-0}" -le 131072 -a "${n0:-0}" -gt 0 -a "${n0:-0}" -le 65536
# ---- a vCPU plugged live: pinned, and in the NUMA node the definition gives it ----
check_output "setvcpus 3 plugs the third vCPU" 'tun: 3 vCPUs \(was 2\)' qv setvcpus tun 3
check "...whose thread runs on host CPU 1 (cpu.pinning.vcpus[2])" test "$(affinity "$qpid" 'CPU 2/TCG')" = 1
check "...the log counts 3 pinned vCPU threads" log_has tun "pinned 3 vCPU threads"
check "...and the guest has it in NUMA node1" wait_until 60 guest_ok tun 'test -e /sys/devices/system/cpu/cpu2/node1'
check "the guest CPU has 42 physical address bits (cpu.maxphysaddr emulate)" \
    guest_ok tun "grep -q 'address sizes.*: 42 bits physical' /proc/cpuinfo"
gnow=$(gsh tun 'echo T$(date +%s)T' | grep -o 'T[0-9]*T' | tail -1 | tr -d T)
want=$(( $(date +%s) + ADJ ))
check "the guest's clock is a year ahead of the host's (clock.adjustment, within 5 min)" \
    test "${gnow:-0}" -gt $((want - 300)) -a "${gnow:-0}" -lt $((want + 300))
if $huge; then
    # smaps: the memfd mappings of guest RAM, and their page size
    pages=$(awk '/^[0-9a-f]+-[0-9a-f]+ / {m = ($0 ~ /memfd:/)} m && /^KernelPageSize:/ {print $2}' "/proc/$qpid/smaps" | sort -u | tr '\n' ' ')
    check "QEMU's guest RAM is on 2M hugepages (its memfd mappings have KernelPageSize 2048 kB)" test "$pages" = "2048 "
else
    ok "QEMU's guest RAM is on 2M hugepages # SKIP $why"
fi

# ---- a supervisor that takes over pins again ----
spid=$(sup_pid tun)
kill -9 "$spid"
check "kill -9 of the supervisor: it is gone, QEMU lives" wait_until 10 gone "$spid"
for t in /proc/"$qpid"/task/*; do taskset -pc 0-1 "${t##*/}" > /dev/null; done
check "...someone moves every QEMU thread to CPUs 0-1" test "$(affinity "$qpid" 'CPU 0/TCG')/$(other_affinities "$qpid")" = "0-1/0-1 "
check_output "start again reattaches" "tun started" qv start tun
check "...and the new supervisor pins the threads again" pinned_as_defined "$qpid"
check "...the plugged vCPU's too" test "$(affinity "$qpid" 'CPU 2/TCG')" = 1
check "...the guest still answers" guest_ok tun true
qv kill -q tun
if $huge; then
    hp_final
    check "once the VM is gone the hugepage pool is back to its size before the test" \
        test "$(cat "$HP_DIR/nr_hugepages")" -le "$hp_before"
fi
finish
