#!/bin/bash
# timeout: 300
# A guest that floods its serial console: the VM's log is rotated by size and the
# rotated files are capped in number; the console still answers afterwards.
. "$(dirname "$0")/../lib.sh"

printf '{"cgroup_parent": "%s", "log_max_size": "64K", "log_max_backups": 2}\n' "$T_CGROUP" > "$T_ROOT/etc/qvisor/host.json"
logdir=$T_ROOT/var/log/qvisor
# serial output under TCG is slow (a few KiB/s on a loaded machine): 200 KB in long lines
define_guest fl 'qv_run="yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 200000; echo FLOOD-$((6*7))" qv_after=stay'
qv start -q fl
sup=$(sup_pid fl)
# the supervisor lives in the VM's cgroup, in a leaf of its own beside QEMU's: what a
# guest makes it do is charged to the VM (v2: cpu.stat; v1: the cpuacct hierarchy).
# The VM's directory is found from QEMU's cgroup (.../fl/qemu).
cg=/sys/fs/cgroup
if [ "$(stat -fc %T "$cg")" = cgroup2fs ]; then
    acct_of() { echo "$cg$(sed -n 's/^0:://p' "/proc/$1/cgroup")"; }
    usage_ns() { awk '$1 == "usage_usec" {print $2 * 1000}' "$1/cpu.stat"; }
else
    acct_of() { awk -F: -v cg="$cg" '("," $2 ",") ~ /,cpuacct,/ {print cg "/" $2 $3}' "/proc/$1/cgroup"; }
    usage_ns() { cat "$1/cpuacct.usage"; }
fi
vmdir=$(acct_of "$(vm_pid fl)")
vmdir=${vmdir%/qemu}
check "QEMU's cgroup is the VM's qemu leaf ($vmdir/qemu)" test "${vmdir%/$T_CGROUP/fl}" != "$vmdir"
check "the supervisor is in the VM's supervisor leaf" test "$(acct_of "$sup")" = "$vmdir/supervisor"
check "the guest floods its console (200 KB)" wait_until 120 bash -c "cat '$logdir'/fl.log* | grep -aq FLOOD-42"
read -r ut st < <(awk '{print $14, $15}' "/proc/$sup/stat")
sup_ns=$(( (ut + st) * 1000000000 / $(getconf CLK_TCK) ))
leaf_ns=$(usage_ns "$vmdir/supervisor")
vm_ns=$(usage_ns "$vmdir")
diag "supervisor CPU $((sup_ns / 1000000)) ms (/proc), charged to its leaf $((leaf_ns / 1000000)) ms, VM in all $((vm_ns / 1000000)) ms"
check "the flood kept the supervisor busy (over 20 ms of CPU)" test "$sup_ns" -gt 20000000
check "...and the VM's cgroup was charged for most of it" test $((leaf_ns * 10)) -ge $((sup_ns * 7))
check "...within the VM's total" test "$vm_ns" -ge "$leaf_ns"
check "the log was rotated" test -s "$logdir/fl.log.1"
check "...the supervisor says so in the log" bash -c "cat '$logdir'/fl.log* | grep -aq 'log rotated at'"
check "...at most 2 rotated files are kept" test ! -e "$logdir/fl.log.3"
check "...and nothing is bigger than the limit and one console batch" \
    bash -c "for f in '$logdir'/fl.log*; do [ \$(stat -c %s \"\$f\") -le \$((64 * 1024 + 512 * 1024)) ] || exit 1; done"
check "...in all, far less than the guest printed" \
    bash -c "[ \$(cat '$logdir'/fl.log* | wc -c) -lt 200000 ]"
check_output "the console still answers" 'echo-ok-42' gsh fl 'echo echo-ok-$((6*7))'
qv kill -q fl
finish
