#!/bin/bash
# timeout: 600
# The guest agent, for real: Debian's qemu-guest-agent in the test guest (started by
# its init on the org.qemu.guest_agent.0 port), the supervisor's persistent agent
# channel, and the verbs on top: exec (stdout, stderr, stdin, env, exit status,
# timeout), cp both ways with checksums, fsfreeze/fsthaw on a real ext4 disk, ifaddr
# --source agent, time-sync, set-password, reboot and stop through the agent; a
# disk-only snapshot that freezes the guest's filesystems for the switch (a marker only a
# freeze flushes reaches the image below the overlay; thawed after); an agent that is
# absent (no channel, or killed in the guest) is a clear error with exit 1 (also for
# snapshot --quiesce, which then makes nothing), and one restarted in the guest is found again.
. "$(dirname "$0")/../lib.sh"
agent_connected() { qv status ga | grep -Eq '^agent +connected'; }

# a small ext4 disk, for a freeze that has something to freeze
truncate -s 16M "$T_ROOT/ext4.raw"
mkfs.ext4 -q -F "$T_ROOT/ext4.raw" || { not_ok "mkfs.ext4 makes the test disk"; finish; }
define_guest ga "" --agent --disk "file=$T_ROOT/ext4.raw"
define_guest noga ""
qv start -q ga && qv start -q noga || { not_ok "the VMs start"; finish; }
agent_up() { qv agent ga ping; }
check "the supervisor connects to the guest's qemu-ga" wait_until 90 agent_up
check_output "status says the agent is connected" '^agent +connected' qv status ga
check "...and --json too" bash -c "'$QV_BIN' --root '$T_ROOT' status ga --json | jq -e '.agent == \"connected\"'"

# ---- exec ----
qv exec ga -- sh -c 'echo to-stdout; echo to-stderr >&2' > "$T_ROOT/out" 2> "$T_ROOT/err"
check "exec: the command's stdout on stdout" test "$(cat "$T_ROOT/out")" = to-stdout
check "exec: its stderr on stderr" test "$(cat "$T_ROOT/err")" = to-stderr
check_exit "exec: exit status 0" 0 qv exec ga -- true
check_exit "exec: exit status 3" 3 qv exec ga -- sh -c 'exit 3'
check_output "exec: stdin from a pipe (--stdin -)" '^3$' bash -c "printf 'a\nb\nc\n' | '$QV_BIN' --root '$T_ROOT' exec ga --stdin - -- wc -l"
printf 'from a file\n' > "$T_ROOT/in.txt"
check_output "exec: stdin from a file" '^from a file$' qv exec ga --stdin "$T_ROOT/in.txt" -- cat
head -c 1048576 /dev/urandom > "$T_ROOT/stdin.bin"
check_output "exec: 1 MiB of stdin (sent ahead in pieces) arrives whole" "^$(sha256sum < "$T_ROOT/stdin.bin" | cut -d' ' -f1) " \
    qv exec ga --stdin "$T_ROOT/stdin.bin" -- sha256sum
check_error "exec: stdin beyond 16 MiB is refused before anything runs" 2 'more than 16 MiB' \
    bash -c "head -c 17000000 /dev/zero | '$QV_BIN' --root '$T_ROOT' exec ga --stdin - -- wc -c"
check_output "exec: --env sets the command's environment (PATH kept)" '^hi /usr/local/sbin:' \
    qv exec ga --env GREETING=hi -- sh -c 'echo $GREETING $PATH'
t0=$(date +%s%N)
out=$(qv exec ga --timeout 1 -- sleep 31 2>&1); rc=$?
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "exec: a command that outlives --timeout: exit 5, killed in the guest" \
    bash -c "[ $rc = 5 ] && grep -q 'sleep did not finish within 1 s; killed it in the guest (pid [0-9]* and its descendants, SIGKILL)' <<< '$out'"
# bounded, not timed: well short of the command's 31 s (a loaded machine took 5.1 s)
check "...long before the command would have ended ($ms ms)" test "$ms" -lt 20000
pid=$(grep -o 'pid [0-9]*' <<< "$out" | grep -o '[0-9]*')
# kill -0 PID in the guest: 0 while it lives (proved on init), 1 once gone
probe() { qv exec ga -- sh -c "kill -0 $1 2>/dev/null; echo \$?"; }
check_output "...the probe sees a live process" '^0$' probe 1
gone() { [ "$(probe "$pid")" = 1 ]; }
check "...and the command no longer runs in the guest (pid $pid)" wait_until 15 gone
check "...the log says so" log_has ga "exec: sleep \\(guest pid $pid\\) killed"
# the command's own children go with it (qemu-ga gives it no process group): here a
# sleep that the command forked before it became a sleep itself
out=$(qv exec ga --timeout 3 -- sh -c 'sleep 301 & echo $! > /tmp/kid; exec sleep 34' 2>&1); rc=$?
pid=$(grep -o 'pid [0-9]*' <<< "$out" | grep -o '[0-9]*')
kid=$(qv exec ga -- cat /tmp/kid 2>/dev/null)
check "exec --timeout kills the command's tree: exit 5, and says so" \
    bash -c "[ $rc = 5 ] && grep -q 'sh did not finish within 3 s; killed it in the guest (pid [0-9]* and its descendants, SIGKILL)' <<< '$out'"
check "...the command no longer runs (pid $pid)" wait_until 15 gone
kid_gone() { [ -n "$kid" ] && [ "$(probe "$kid")" = 1 ]; }
check "...nor the child it forked (pid ${kid:-?})" wait_until 15 kid_gone
# the ways after the shell: a guest without one gets kill(1) by argv, the command
# alone; one without kill either, taskkill (Windows), which is not there: the failure
# is told (probes and repairs go by argv here, as there is no shell to run them)
check "the guest's shell is taken away" qv exec ga -- mv /bin/sh /bin/sh.off
out=$(qv exec ga --timeout 1 -- sleep 32 2>&1); rc=$?
pid=$(grep -o 'pid [0-9]*' <<< "$out" | grep -o '[0-9]*')
# timed_out_saying RC OUTPUT REGEX
timed_out_saying() { [ "$1" = 5 ] && grep -q -- "$3" <<< "$2"; }
check "exec --timeout with no shell: exit 5, killed by kill(1)" \
    timed_out_saying "$rc" "$out" 'sleep did not finish within 1 s; killed it in the guest (pid [0-9]*, SIGKILL)'
alive() { qv exec ga -- test -d "/proc/$1"; }
gone_argv() { ! alive "$pid"; }
check "...the probe by argv sees a live process" alive 1
check "...the command no longer runs in the guest (pid $pid)" wait_until 15 gone_argv
check "...the log: the shell could not start" log_has ga 'exec: sh -c: .*sh'
check "the guest's kill program is taken away too" qv exec ga -- rm /bin/kill
out=$(qv exec ga --timeout 1 -- sleep 33 2>&1); rc=$?
pid=$(grep -o 'pid [0-9]*' <<< "$out" | grep -o '[0-9]*')
check "exec --timeout with no way to kill: exit 5, and says the command may still run" \
    timed_out_saying "$rc" "$out" "killing it in the guest failed (.*taskkill.*): it may still run there as pid $pid\$"
check "...it does (pid $pid)" alive "$pid"
check "...the log: kill(1) could not start" log_has ga 'exec: kill -KILL: .*kill'
qv exec ga -- busybox kill -KILL "$pid" > /dev/null 2>&1
qv exec ga -- ln -s /bin/busybox /bin/kill > /dev/null 2>&1
qv exec ga -- mv /bin/sh.off /bin/sh > /dev/null 2>&1
check "...killed by hand, the guest's shell and kill are back" wait_until 15 gone
check_error "exec: a program the guest does not have" 1 'ga: guest-exec: .*nosuchprogram' qv exec ga -- nosuchprogram

# ---- cp ----
head -c 1048576 /dev/urandom > "$T_ROOT/blob"
sum=$(sha256sum < "$T_ROOT/blob" | cut -d' ' -f1)
check "cp: 1 MiB into the guest" qv cp "$T_ROOT/blob" ga:/tmp/blob
check_output "...arrives whole (sha256 in the guest)" "^$sum " qv exec ga -- sha256sum /tmp/blob
check "cp: a 1 MiB file the guest made, out of the guest" \
    qv exec ga -- dd if=/dev/urandom of=/tmp/made bs=1024 count=1024
gsum=$(qv exec ga -- sha256sum /tmp/made | cut -d' ' -f1)
check "...copied" qv cp ga:/tmp/made "$T_ROOT/made"
check "...arrives whole (sha256 on the host)" test "$(sha256sum < "$T_ROOT/made" | cut -d' ' -f1)" = "$gsum"
mkdir -p "$T_ROOT/dir"
check "cp: into a host directory keeps the name" bash -c "'$QV_BIN' --root '$T_ROOT' cp ga:/tmp/blob '$T_ROOT/dir' && cmp '$T_ROOT/blob' '$T_ROOT/dir/blob'"
check_error "cp: a guest file that does not exist" 1 'ga:/nosuch/file: guest-file-open: .*No such file' \
    qv cp ga:/nosuch/file "$T_ROOT/x"
check "...leaves nothing behind on the host" bash -c "! ls '$T_ROOT' | grep -q '^x'"
chmod 750 "$T_ROOT/blob"
check "cp: into the guest keeps the file's mode" qv cp "$T_ROOT/blob" ga:/tmp/m750
check_output "...750 in the guest" '^750$' qv exec ga -- stat -c %a /tmp/m750
check "cp: out of the guest keeps it too" bash -c "'$QV_BIN' --root '$T_ROOT' exec ga -- sh -c 'echo m > /tmp/m711 && chmod 711 /tmp/m711' &&
    '$QV_BIN' --root '$T_ROOT' cp ga:/tmp/m711 '$T_ROOT/m711'"
check_output "...711 on the host" '^711$' stat -c %a "$T_ROOT/m711"
check_error "cp: neither side in a VM" 2 'exactly one of SRC and DST' qv cp "$T_ROOT/blob" "$T_ROOT/blob2"

# ---- fsfreeze ----
check "the guest mounts its ext4 disk" qv exec ga -- sh -c 'qv-modprobe ext4 && mkdir -p /mnt/d && mount -t ext4 /dev/vda /mnt/d'
check_output "fsfreeze: freezes it" '^ga: 1 filesystem frozen$' qv agent ga fsfreeze
check_output "fsfreeze-status: frozen" '^frozen$' qv agent ga fsfreeze-status
check_error "...and the agent refuses exec while frozen" 1 'guest-exec has been disabled: the agent is in frozen state' \
    qv exec ga -- touch /mnt/d/x
check_output "fsthaw: thaws it" '^ga: 1 filesystem thawed$' qv agent ga fsthaw
check_output "fsfreeze-status: thawed" '^thawed$' qv agent ga fsfreeze-status
check "...and the disk takes writes again" qv exec ga -- sh -c 'echo data > /mnt/d/x && sync && umount /mnt/d'

# ---- a disk-only snapshot of the running guest is quiesced ----
# The guest writes a marker into a file without syncing, and nothing writes it back for
# an hour (page cache writeback off, ext4 commits hourly): only the freeze, which syncs
# the filesystem, puts it into the image below the overlay before the overlay goes on.
check "the guest mounts its ext4 disk again, writeback held off" qv exec ga -- sh -c \
    'echo 360000 > /proc/sys/vm/dirty_expire_centisecs && echo 0 > /proc/sys/vm/dirty_writeback_centisecs && mount -t ext4 -o commit=3600 /dev/vda /mnt/d'
check "...and writes a marker, unsynced" qv exec ga -- sh -c 'echo QUIESCE-MARK-1 > /mnt/d/q1'
check_not "...which is not in the image yet" grep -aq QUIESCE-MARK-1 "$T_ROOT/ext4.raw"
check_output "snapshot create --disk-only: quiesced through the agent" \
    '^ga: snapshot q1 created \(disk-only, external, quiesced\)$' qv snapshot create ga q1 --disk-only
check "...the freeze flushed the marker into the image below the overlay" grep -aq QUIESCE-MARK-1 "$T_ROOT/ext4.raw"
frozen_then_thawed() { vm_log ga | grep -aE 'snapshot q1: 1 filesystem frozen|snapshot: 1 filesystem thawed|disk-only snapshot q1 taken' |
    sed 's/.*supervisor: //' | tr '\n' '|' | grep -q '^snapshot q1: 1 filesystem frozen|snapshot: 1 filesystem thawed|disk-only snapshot q1 taken'; }
check "...the log: frozen, thawed, then taken" frozen_then_thawed
check_output "...the guest is thawed (fsfreeze-status)" '^thawed$' qv agent ga fsfreeze-status
check "...and its filesystem takes writes" qv exec ga -- sh -c 'echo after > /mnt/d/after && sync'
check_output "snapshot show: quiesced" '^quiesced: +yes$' qv snapshot show ga q1
check "...and --json" bash -c "'$QV_BIN' --root '$T_ROOT' snapshot show ga q1 --json | jq -e '.quiesced == true and (has(\"quiesce_note\") | not)'"
# a switch QEMU refuses (a copy job holds the disk's node) after the freeze: the guest is thawed all the same
check_output "a slow copy of the disk holds its node" 'ga: copy of disk0 started' \
    qv block copy ga disk0 --dest "$T_ROOT/copy.qcow2" --bandwidth 64K
check_error "a disk-only snapshot then fails at the switch, saying why" 1 'ga: snapshot q3: blockdev-snapshot: .*(busy|in use)' \
    qv snapshot create ga q3 --disk-only
check "...after freezing (the log)" log_has ga 'snapshot q3: 1 filesystem frozen'
check_output "...the guest is thawed" '^thawed$' qv agent ga fsfreeze-status
check "...and its filesystem takes writes" qv exec ga -- sh -c 'echo after2 > /mnt/d/after2 && sync'
check "...nothing was made: no overlay, no record" bash -c "test ! -e '$T_ROOT/ga.q3.qcow2' && test ! -e '$T_ROOT/var/lib/qvisor/snapshots/ga/q3.json'"
check_output "the copy is aborted" 'aborting the copy of disk0' qv block job ga disk0 --abort
no_job() { ! qv status ga | grep -q '^job '; }
check "...and ends" wait_until 20 no_job
# a supervisor killed while the guest is frozen for a snapshot: state.json says so, its successor thaws
spid=$(sup_pid ga)
kill -9 "$spid"
check "kill -9 of ga's supervisor" wait_until 10 bash -c "! kill -0 $spid 2>/dev/null"
check_output "a supervisor that dies right after a freeze takes over" 'ga started' \
    env QVISOR_TEST_CRASH_AT=snapshot-frozen "$QV_BIN" --root "$T_ROOT" start ga
spid=$(sup_pid ga)
# (a snapshot is quiesced only once the new supervisor has synced with the agent)
check "...and syncs with the agent" wait_until 30 agent_connected
qv snapshot create ga q4 --disk-only > /dev/null 2>&1
check "...a quiesced snapshot kills it after the freeze" wait_until 10 bash -c "! kill -0 $spid 2>/dev/null"
state=$T_ROOT/run/qvisor/vms/ga/state.json
check "...state.json records the freeze" jq -e '.resources.snapshot_freeze == "q4"' "$state"
check_output "start again reattaches" 'ga started' qv start ga
check "...and thaws the guest (the log)" wait_log ga 'frozen by a snapshot whose supervisor died, are thawed' 30
check_output "...fsfreeze-status: thawed" '^thawed$' qv agent ga fsfreeze-status
check "...its filesystem takes writes" qv exec ga --timeout 20 -- sh -c 'echo after3 > /mnt/d/after3 && sync'
check "...and the record is gone" jq -e '.resources | has("snapshot_freeze") | not' "$state"
check_error "--quiesce with a full snapshot is refused (it keeps memory: nothing to freeze for)" 2 \
    '--quiesce needs --disk-only' qv snapshot create ga q9 --quiesce
check_error "--quiesce with a VM that has no agent channel: exit 1, nothing made" 1 \
    'noga: snapshot q9: --quiesce: noga has no guest agent channel' qv snapshot create noga q9 --disk-only --quiesce
check "...no record" test ! -e "$T_ROOT/var/lib/qvisor/snapshots/noga/q9.json"

# ---- the other agent commands ----
mac=$(jq -r '.nics[0].mac' "$T_ROOT/etc/qvisor/vms/ga.json")
check_output "ifaddr --source agent: lo as the guest sees it" '^lo +00:00:00:00:00:00 +127\.0\.0\.1/8' \
    qv ifaddr ga --source agent
check_output "...and eth0 with the NIC's MAC ($mac)" "^eth0 +$mac" qv ifaddr ga --source agent
check "...--json" bash -c "'$QV_BIN' --root '$T_ROOT' ifaddr ga --source agent --json | jq -e '.[] | select(.name == \"lo\") | .addresses[] | select(.address == \"127.0.0.1\" and .prefix == 8)'"
check_output "agent info: qemu-ga's version and commands" '^version +7\.' qv agent ga info
check_output "agent time-sync" 'guest clock set' qv agent ga time-sync
check_output "agent set-password, the password from stdin" 'password of root set' \
    bash -c "echo 'Sekrit-42' | '$QV_BIN' --root '$T_ROOT' agent ga set-password root"
check_output "...the guest's /etc/shadow has a new sha512 hash for root" '^root:\$6\$' qv exec ga -- cat /etc/shadow
check_not "...and the password is in no log" grep -rq 'Sekrit-42' "$T_ROOT/var/log"
check_error "agent: an unknown subcommand" 2 'no subcommand frobnicate' qv agent ga frobnicate

# ---- no agent ----
check_error "exec in a VM without an agent channel: exit 1, says why" 1 'noga has no guest agent channel \(define it with --agent' \
    qv exec noga -- true
check_error "agent ping there too" 1 'no guest agent channel' qv agent noga ping
check_error "stop --mode agent there too (the VM keeps running)" 1 'no guest agent channel' qv stop noga --mode agent
check "...it does" state_is noga running
check_error "reboot --mode agent there too" 1 'no guest agent channel' qv reboot noga --mode agent

# ---- the agent killed in the guest, then started again ----
check "the guest's agent is stopped" guest_ok ga 'qv-agent stop'
t0=$(date +%s%N)
check_error "exec: clear error, exit 1" 1 'ga: guest-exec: the guest agent does not answer \(is qemu-guest-agent running in the guest\?\)' \
    qv exec ga -- true
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
check "...within seconds, not hanging ($ms ms, bound 30 s)" test "$ms" -lt 30000
check_output "status says so" '^agent +not answering' qv status ga
check_error "snapshot --quiesce while the agent does not answer: exit 1, says why" 1 \
    'ga: snapshot q2: --quiesce: the guest agent does not answer' qv snapshot create ga q2 --disk-only --quiesce
check "...and makes nothing: no overlay, no record, the definition unchanged" bash -c \
    "test ! -e '$T_ROOT/ga.q2.qcow2' && test ! -e '$T_ROOT/var/lib/qvisor/snapshots/ga/q2.json' && jq -e '.disks[0].file == \"$T_ROOT/ga.q1.qcow2\"' '$T_ROOT/etc/qvisor/vms/ga.json'"
check_output "without --quiesce it is taken unfrozen, with a note" \
    'note: not quiesced: the guest agent does not answer' qv snapshot create ga q2 --disk-only
check_output "...which its record keeps" '^quiesced: +no \(the guest agent does not answer' qv snapshot show ga q2
check "the guest's agent is started again" guest_ok ga 'qv-agent start'
check "the supervisor finds it again by itself (the guest opened its port)" wait_until 20 agent_connected
check "...and it answers" agent_up
check_output "...and exec works again" '^back$' qv exec ga -- echo back
check "...the log says so" log_has ga 'guest agent: answers again'

# ---- reboot and stop through the agent ----
booted_twice() { [ "$(count_log ga 'QVISOR-GUEST: up')" -ge 2 ]; }
check_output "reboot --mode agent" 'ga rebooting' qv reboot ga --mode agent
check "...qemu-ga ran the guest's shutdown -r" wait_log ga 'QVISOR-GUEST: shutdown -r' 20
check "...the guest boots again" wait_until 90 booted_twice
check_not "...without a reset from the host" log_has ga 'reboot: system_reset|resetting instead'
check "...the supervisor syncs with the new agent" wait_until 60 agent_up
check_output "...and exec works there" '^again$' qv exec ga -- echo again
check_output "stop --mode agent" 'ga stopped' qv stop ga --mode agent --timeout 30
check "...qemu-ga ran the guest's shutdown -P" log_has ga 'QVISOR-GUEST: shutdown -P'
check_not "...no ACPI power button" log_has ga 'stopping: ACPI power button'
check "...the VM is shut off" state_is ga "shut off"
check_error "exec in a stopped VM: exit 4" 4 'ga is not running' qv exec ga -- true
finish
