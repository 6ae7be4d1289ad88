#!/bin/bash
# timeout: 180
# A guest that floods its serial console: the VM's log is rotated by size and the
# rotated files are capped in number; the console still answers afterwards.
. "$(dirname "$0")/../lib.sh"

printf '{"cgroup_parent": "%s", "log_max_size": "64K", "log_max_backups": 2}\n' "$T_CGROUP" > "$T_ROOT/etc/qvisor/host.json"
logdir=$T_ROOT/var/log/qvisor
# serial output under TCG is slow (a few KiB/s on a loaded machine): 200 KB in long lines
define_guest fl 'qv_run="yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -c 200000; echo FLOOD-$((6*7))" qv_after=stay'
qv start -q fl
check "the guest floods its console (200 KB)" wait_until 120 bash -c "cat '$logdir'/fl.log* | grep -aq FLOOD-42"
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
