#!/bin/bash
# timeout: 360
# virtiofs shares (--share HOSTDIR[:TAG[:ro]]): the guest mounts a host directory, reads a
# host file, writes a result the host reads (its owner too); a read-only share refuses
# writes and the host directory stays as it was; each share's virtiofsd is confined (its
# own mount and network namespaces, root with the file-server capabilities only, chrooted
# into the share); it outlives a killed supervisor, which the next one takes over; stop,
# and QEMU killed with its supervisor, leave no virtiofsd.
. "$(dirname "$0")/../lib.sh"

rw=$T_ROOT/share
ro=$T_ROOT/ro
mkdir -p "$rw" "$ro"
echo "from the host $$" > "$rw/in.txt"
echo "read only" > "$ro/keep.txt"
chown -R 65534:65534 "$rw"      # the directory's owner is not root: can it read what the guest wrote?
ro_tree() { (cd "$ro" && find . -printf '%p %s %m %U %T@\n' | sort && cat keep.txt) | md5sum; }
ro_before=$(ro_tree)
# vfs_pid I: the pid of filesystems[I]'s virtiofsd, from status
vfs_pid() { qv status fs --json | jq -r ".filesystems[$1].pid // empty"; }
status_field() { grep "^$2:" "/proc/$1/status" | cut -f2; }
ns_of() { readlink "/proc/$1/ns/$2"; }
alive() { kill -0 "$1" 2>/dev/null; }
gone() { ! kill -0 "$1" 2>/dev/null; }
no_virtiofsd() { ! pgrep -f -- "source=$T_ROOT/" > /dev/null; }

# ---- the definition ----
check_error "a share of a missing directory is refused, with the fix" 2 \
    'filesystems\[0\]\.source: .*/nope: No such file or directory \(create the directory first\)' \
    qv define bad1 --memory 64M --share "$T_ROOT/nope"
check_error "two shares with one tag are refused, with the JSON path" 2 \
    'filesystems\[1\]\.tag: "data" is already the tag of filesystems\[0\]' qv define bad2 --share "$rw:data" --share "$ro:data"
check "...and neither is defined" test ! -e "$T_ROOT/etc/qvisor/vms/bad1.json" -a ! -e "$T_ROOT/etc/qvisor/vms/bad2.json"
define_guest fs "qv_share=data qv_agent=0" --share "$rw:data" --share "$ro:rodata:ro"
check "show lists both shares, the second read-only" jq -e --arg rw "$rw" --arg ro "$ro" \
    '.filesystems == [{"source": $rw, "tag": "data", "readonly": false}, {"source": $ro, "tag": "rodata", "readonly": true}]' \
    "$T_ROOT/etc/qvisor/vms/fs.json"
qv start -q fs || { not_ok "the VM with two shares starts"; diag "$(vm_log fs | tail -20)"; finish; }
check "the guest boots with the share mounted on /mnt/share" wait_until 90 guest_ok fs "mount | grep -q '^data on /mnt/share type virtiofs'"

# ---- in and out ----
check "the guest reads the host's file" guest_ok fs "grep -qx 'from the host $$' /mnt/share/in.txt"
check "the guest writes a result file" guest_ok fs "echo 'result $$' > /mnt/share/out.txt && sync"
check "...the host reads it with that content" test "$(cat "$rw/out.txt" 2>&1)" = "result $$"
check "...the directory's owner (uid 65534) can read it" setpriv --reuid=65534 --regid=65534 --clear-groups cat "$rw/out.txt"
check "...it belongs to the guest's uid (0): ownership passes through" test "$(stat -c %u "$rw/out.txt")" = 0

# ---- read-only ----
check "the read-only share mounts and reads in the guest" \
    guest_ok fs "mkdir -p /mnt/ro && mount -t virtiofs rodata /mnt/ro && grep -qx 'read only' /mnt/ro/keep.txt"
check_guest_fails "...a new file is refused" fs "echo x > /mnt/ro/new.txt" 'Read-only file system'
check_guest_fails "...removing a file is refused" fs "rm /mnt/ro/keep.txt" 'Read-only file system'
check "...and the host directory is unchanged" test "$(ro_tree)" = "$ro_before"

# ---- confinement of virtiofsd ----
v0=$(vfs_pid 0)
v1=$(vfs_pid 1)
check "status names a virtiofsd per share" test -n "$v0" -a -n "$v1" -a "$v0" != "$v1"
check "virtiofsd has a mount namespace of its own" test "$(ns_of "$v0" mnt)" != "$(ns_of $$ mnt)"
check "...and an empty network namespace" test "$(ns_of "$v0" net)" != "$(ns_of $$ net)"
check "...it is chrooted into the share" test "$(readlink "/proc/$v0/root")" = "$rw"
check "...root with only chown, dac_override, fowner, fsetid, setgid, setuid (no sys_admin, no mknod)" \
    test "$(status_field "$v0" CapEff)/$(status_field "$v0" CapPrm)" = 00000000000000db/00000000000000db
check "...an empty bounding set, no_new_privs and a seccomp filter" \
    test "$(status_field "$v0" CapBnd)/$(status_field "$v0" NoNewPrivs)/$(status_field "$v0" Seccomp)" = 0000000000000000/1/2
check "the read-only share's virtiofsd sees it mounted read-only" \
    grep -Eq '^[0-9]+ [0-9]+ [^ ]+ [^ ]+ / ro,nosuid,nodev' "/proc/$v1/mountinfo"
check "status shows virtiofsd's confinement" \
    sh -c "'$QV_BIN' --root '$T_ROOT' status fs --json | jq -e '.filesystems[0].confinement.capabilities.effective == \"00000000000000db\"'"

# ---- the supervisor dies: the share lives on and is taken over ----
spid=$(sup_pid fs)
kill -9 "$spid"
check "kill -9 of the supervisor: it is gone" wait_until 10 gone "$spid"
check "...both virtiofsd outlive it, as QEMU does" sh -c "kill -0 $v0 && kill -0 $v1"
check_output "start again reattaches" "fs started" qv start fs
check "...the new supervisor took over the same virtiofsd" test "$(vfs_pid 0)/$(vfs_pid 1)" = "$v0/$v1"
check "...and says so in the log" log_has fs "virtiofsd of data \\(pid $v0\\) still serves the guest"
check "...the guest still reads and writes the share" \
    guest_ok fs "grep -qx 'from the host $$' /mnt/share/in.txt && echo again > /mnt/share/again.txt && sync"
check "...the host sees that write" test "$(cat "$rw/again.txt" 2>&1)" = again

# ---- stop, and a kill of both QEMU and its supervisor, leave no virtiofsd ----
check "stop" qv stop fs --timeout 20
check "...leaves no virtiofsd" wait_until 10 sh -c "! kill -0 $v0 2>/dev/null && ! kill -0 $v1 2>/dev/null"
check "...and none in the state file" sh -c "! jq -e '.resources.virtiofsd' '$T_ROOT/run/qvisor/vms/fs/state.json'"
qv start -q fs || not_ok "the VM starts again"
v0=$(vfs_pid 0)
qpid=$(vm_pid fs)
spid=$(sup_pid fs)
check "it runs with a new virtiofsd" alive "$v0"
kill -9 "$spid" "$qpid"
check "kill -9 of QEMU and its supervisor: no virtiofsd is left" wait_until 10 no_virtiofsd
check_output "a later start cleans up and starts afresh" "fs started" qv start fs
check "...with its shares" wait_until 90 guest_ok fs "grep -qx 'from the host $$' /mnt/share/in.txt"
qv kill fs > /dev/null 2>&1
check "kill leaves no virtiofsd" wait_until 10 no_virtiofsd
# ---- a start slowed down to a crawl waits; one that hangs fails ----
# QEMU's monitor answers only once its devices (and virtiofsd) are set up. With a CPU
# quota of 1% that takes many times the stall limit (2 s here): a start waits as long
# as QEMU or its virtiofsd keeps using CPU, and fails once they stop (a QEMU held
# stopped), with nothing left running.
jq '.limits = {"cpu": "1%"}' "$T_ROOT/etc/qvisor/vms/fs.json" > "$T_ROOT/fs.json" && qv undefine fs > /dev/null &&
    qv define -q "$T_ROOT/fs.json" || not_ok "fs gets a CPU quota of 1%"
check_output "a start at 1% CPU, 2 s stall limit: QEMU's monitor is waited for" "fs started" \
    env QVISOR_TEST_START_STALL_MS=2000 "$QV_BIN" --root "$T_ROOT" start fs
check "...well past the stall limit: the log says it waited on" \
    log_has fs "QEMU's monitor has not answered after [0-9]+ s; QEMU or its virtiofsd is still working \\(CPU time grows\\): waiting on"
qv kill fs > /dev/null 2>&1
check "...kill leaves no virtiofsd" wait_until 10 no_virtiofsd
check_error "a start whose QEMU hangs (held stopped): fails after the stall limit (exit 5), saying so" 5 \
    "QEMU's monitor did not answer within [0-9]+ s, and QEMU and its virtiofsd used no CPU in the last 2 s: it hangs" \
    env QVISOR_TEST_HOLD_QEMU=1 QVISOR_TEST_START_STALL_MS=2000 "$QV_BIN" --root "$T_ROOT" start fs
check "...the VM is shut off" state_is fs "shut off"
uuid=$(jq -r .uuid "$T_ROOT/etc/qvisor/vms/fs.json")
no_qemu() { ! pgrep -f -- "-uuid $uuid" > /dev/null; }
check "...and leaves no QEMU ($uuid)" wait_until 10 no_qemu
check "...and no virtiofsd" wait_until 10 no_virtiofsd
finish
