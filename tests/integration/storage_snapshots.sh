#!/bin/bash
# timeout: 660
# Snapshots with real qemu-img and a real QEMU under TCG, sandbox on: a full snapshot
# of a running guest (RAM and disk) and of a shut-off one, each reverted, with a
# marker the guest wrote after the snapshot gone afterwards; a full snapshot of the running
# guest reverted while shut off (the VM starts from it: a marker kept only in the guest's
# RAM is back, without a boot; --paused leaves it paused); a disk-only snapshot
# taken live (the guest keeps running, the definition names the overlay) and deleted
# live (merged back: the guest's later write is in the base image); the tree; and the
# refusals with their exit codes.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
qemu-img create -q -f qcow2 "$img/data.qcow2" 16M
truncate -s 8M "$img/plain.raw"
define_guest sn "" --disk "file=$img/data.qcow2,serial=DATA"
qv define -q rawvm --memory 128M --kernel "$G_KERNEL" --disk "file=$img/plain.raw,cache=writeback" \
    --disk "file=$img/data.qcow2,readonly"
# put MARKER MiB: the guest writes a 512-byte marker at that MiB of the data disk, synced
put() { guest_ok sn "printf '%-512s' $1 | dd of=/dev/$(gdisk DATA) bs=512 seek=\$(($2 * 2048)) conv=fsync 2>/dev/null"; }
# at MiB: what the guest reads there
at() { gsh sn "dd if=/dev/$(gdisk DATA) bs=512 skip=\$(($1 * 2048)) count=1 2>/dev/null | tr -d ' '; echo" | tr -d '\r'; }
# image_has FILE MARKER: the host finds MARKER in what the image shows a guest
image_has() { qemu-img convert -U -O raw "$1" "$T_ROOT/flat.raw" && grep -aq "$2" "$T_ROOT/flat.raw"; }
# image_lacks FILE MARKER: the image is readable and MARKER is not in it
image_lacks() { qemu-img convert -U -O raw "$1" "$T_ROOT/flat.raw" && ! grep -aq "$2" "$T_ROOT/flat.raw"; }
# owns FILE MiB: the image's own layer (not its backing file) holds data at that MiB
owns() { qemu-img map -U --output=json "$1" | jq -e --argjson o $(($2 << 20)) \
    'any(.[]; .start <= $o and .start + .length > $o and .depth == 0 and .data)' > /dev/null; }
# booted N: the guest's init said "ready" N times (a console command typed earlier is lost)
booted() { [ "$(count_log sn 'QVISOR-GUEST: ready')" -ge "$1" ]; }
boot() { wait_until 90 booted "$1" && wait_until 30 guest_ok sn true; }
# boot_and_put N MARKER MiB: the N-th boot, then put
boot_and_put() { boot "$1" && put "$2" "$3"; }
tree() { qv snapshot list sn --tree; }
# in_image SNAP: the qcow2 image holds an internal snapshot of that name
in_image() { qemu-img snapshot -U -l "$img/data.qcow2" | awk '{print $2}' | grep -qx "$1"; }
not_in_image() { qemu-img snapshot -U -l "$img/data.qcow2" > /dev/null && ! in_image "$1"; }

# ---- refusals before anything runs ----
check_error "a VM that does not exist" 3 'no VM named nosuch' qv snapshot create nosuch s1
check_error "a full snapshot of a raw disk is refused, naming the disk and the fix" 2 \
    "rawvm: disk0 \\($img/plain.raw\\) is raw; .*qcow2.*--disk-only" qv snapshot create rawvm s1
check "...and nothing was recorded" test ! -e "$T_ROOT/var/lib/qvisor/snapshots/rawvm/s1.json"
check_output "a disk-only snapshot of the raw disk (the read-only disk left out)" 'snapshot r1 created' \
    qv snapshot create rawvm r1 --disk-only
check_output "...its definition names the overlay beside the raw image" "\"file\": \"$img/rawvm.r1.qcow2\"" qv show rawvm
check_output "...show names both files" "disk0: $img/plain.raw <- $img/rawvm.r1.qcow2" qv snapshot show rawvm r1
check "...and the read-only disk is not part of it" sh -c "'$QV_BIN' --root '$T_ROOT' snapshot show rawvm r1 --json | jq -e '.disks | length == 1'"
check_output "deleting it merges the overlay back (shut off: qemu-img commit)" 'deleted' qv snapshot delete rawvm r1
check_output "...the definition names the raw image again" "\"file\": \"$img/plain.raw\"" qv show rawvm
check "...and the overlay is gone" test ! -e "$img/rawvm.r1.qcow2"

# ---- a full snapshot of the running guest ----
qv start -q sn || { not_ok "the VM starts"; finish; }
check "the guest boots" boot 1
check "the guest writes marker A" put MARK-A 0
check_output "a full snapshot while it runs" 'snapshot full1 created \(internal, with the guest.s memory\)' \
    qv snapshot create sn full1 --description "before B"
# the disk keeps the default cache=none: the memory goes through the page cache for the
# save only, and the disk's file node is back to direct I/O before the client hears
check "...its memory went through the page cache" log_has sn 'snapshot full1: the memory goes through the page cache'
# data_flags: the open flags (octal) of each fd QEMU (pid $QP, else sn's) holds on the data image
data_flags() { local qp=${QP:-$(vm_pid sn)} f; [ -n "$qp" ] && for f in /proc/"$qp"/fd/*; do
    [ "$(readlink "$f")" = "$img/data.qcow2" ] && awk '/^flags/ {print $2}' "/proc/$qp/fdinfo/${f##*/}"; done; }
# io_is direct|buffered: QEMU holds the data image, every fd with (without) O_DIRECT
io_is() { local fl n=0; for fl in $(data_flags); do n=$((n + 1))
    if [ "$1" = direct ]; then (( 8#$fl & 8#40000 )) || return 1; else (( !(8#$fl & 8#40000) )) || return 1; fi
    done; [ "$n" -gt 0 ]; }
direct_io() { io_is direct; }
check "...and the disk is back to direct I/O when the command returns" direct_io
check "...with nothing left to restore in state.json" \
    jq -e '(.resources.snapshot_buffered // null) == null' "$T_ROOT/run/qvisor/vms/sn/state.json"
check "the guest runs on after it" guest_ok sn true
check "the guest overwrites A with marker B" put MARK-B 0
check_output "...and reads B back" '^MARK-B$' at 0
check_output "a second full snapshot (a child of full1)" 'created' qv snapshot create sn full2
check_output "revert to full1 while it runs" 'reverted to snapshot full1' qv snapshot revert sn full1
check_output "...the guest reads A again: B, written after the snapshot, is gone" '^MARK-A$' at 0
check_error "a duplicate name is refused" 4 'sn already has a snapshot named full1' qv snapshot create sn full1
check_error "reverting to a snapshot that does not exist" 3 'sn has no snapshot named nosuch' qv snapshot revert sn nosuch
check_error "deleting one that does not exist" 3 'sn has no snapshot named nosuch' qv snapshot delete sn nosuch

# ---- a disk-only snapshot, live ----
check_output "a disk-only snapshot while it runs" 'snapshot ext1 created \(disk-only' \
    qv snapshot create sn ext1 --disk-only
check "...the guest keeps running" guest_ok sn true
check_output "...the definition names the overlay" "\"file\": \"$img/sn.ext1.qcow2\"" qv show sn
check "the guest writes marker C" put MARK-C 1
check "...which lands in the overlay" owns "$img/sn.ext1.qcow2" 1
check "...not in the base image" image_lacks "$img/data.qcow2" MARK-C
cat > "$T_ROOT/tree.want" <<'EOF'
full1
+- full2
`- ext1 *
EOF
check "list --tree: full2 and ext1 are children of full1, ext1 current" diff -u "$T_ROOT/tree.want" <(tree)
check "list --json: parent, kind, current" sh -c "'$QV_BIN' --root '$T_ROOT' snapshot list sn --json | jq -e '
    (map(select(.name == \"ext1\"))[0] | .parent == \"full1\" and .kind == \"external\" and .current and (.memory | not)) and
    (map(select(.name == \"full1\"))[0] | .memory and .state == \"running\" and .description == \"before B\")'"
check_error "revert to a disk-only snapshot while running is refused" 4 \
    'sn is running and snapshot ext1 holds no memory state' qv snapshot revert sn ext1
check_error "revert to full2, whose disk has moved on to the overlay, is refused" 4 \
    'cannot revert to full2: disk0 has moved on to .*sn.ext1.qcow2' qv snapshot revert sn full2
check_output "deleting ext1 while it runs merges it (block-commit)" 'snapshot ext1 deleted' qv snapshot delete sn ext1
check "...the guest keeps running" guest_ok sn true
check_output "...the definition names the base again" "\"file\": \"$img/data.qcow2\"" qv show sn
check "...the overlay is gone" test ! -e "$img/sn.ext1.qcow2"
check "...and marker C is in the base image" image_has "$img/data.qcow2" MARK-C
check "full2 is in the image" in_image full2
check_output "deleting full2 while it runs (snapshot-delete)" 'snapshot full2 deleted' qv snapshot delete sn full2
check "...it is gone from the image" not_in_image full2
check "...full1 is still there" in_image full1

# ---- a full snapshot reverted while shut off: the guest resumes from its memory ----
# a marker only in the guest's RAM (its /tmp is the initramfs), and the number of boots so far
check "the guest keeps a marker in RAM only" guest_ok sn 'echo RAM-MARK-1 > /tmp/ram-mark'
check_output "a full snapshot of it" 'snapshot live1 created' qv snapshot create sn live1
check "the guest changes the marker after it" guest_ok sn 'echo RAM-MARK-2 > /tmp/ram-mark'
boots=$(count_log sn 'QVISOR-GUEST: ready')
qv kill sn > /dev/null
check_output "revert to it while shut off starts the VM from the snapshot" \
    'the guest resumes from snapshot live1 \(running\)' qv snapshot revert sn live1
check "...it runs" state_is sn running
check_output "...the RAM-only marker is as it was at the snapshot" '^RAM-MARK-1' gsh sn 'cat /tmp/ram-mark'
check "...without a boot (the guest's init did not run again)" test "$(count_log sn 'QVISOR-GUEST: ready')" -eq "$boots"
check_output "...and live1 is current" '^live1$' qv snapshot current sn
qv kill sn > /dev/null
check_output "revert --paused while shut off" 'resumes from snapshot live1 \(paused\)' qv snapshot revert sn live1 --paused
check "...the VM is paused" state_is sn paused
check "...resume lets it run" qv resume sn
check_output "...from the snapshot's memory" '^RAM-MARK-1' gsh sn 'cat /tmp/ram-mark'
check_error "--running and --paused together are refused" 2 'exclude each other' qv snapshot revert sn live1 --running --paused
check_output "deleting live1 while it runs" 'snapshot live1 deleted' qv snapshot delete sn live1
# a supervisor that dies while the disk is off direct I/O for a save: its successor
# restores it (QVISOR_TEST_CRASH_AT: killed right after QEMU reopened the node)
sp=$(sup_pid sn) qp=$(vm_pid sn)
kill -9 "$sp"; wait_until 10 bash -c "! kill -0 $sp 2>/dev/null"
QVISOR_TEST_CRASH_AT=snapshot-buffered "$QV_BIN" --root "$T_ROOT" start -q sn
sp=$(sup_pid sn)
qv snapshot create sn cut1 > /dev/null 2>&1
check "a supervisor killed once the disk is off direct I/O for a save" eval \
    "wait_until 30 bash -c '! kill -0 $sp 2>/dev/null' && QP=$qp io_is buffered"
check_output "start again reattaches" "sn started" qv start sn
check "...its successor restores direct I/O" wait_until 30 direct_io
check "...the log says so" log_has sn 'its supervisor died: restoring direct I/O'
check "...no snapshot was recorded" test ! -e "$T_ROOT/var/lib/qvisor/snapshots/sn/cut1.json"
check_output "...and taking it again works" 'snapshot cut1 created' qv snapshot create sn cut1
check "...the disk back to direct I/O after it" direct_io
check_output "...and it goes" 'snapshot cut1 deleted' qv snapshot delete sn cut1
# QEMU refusing the restoring reopen (QVISOR_TEST_FAIL_AT: it is asked to reopen a node
# it does not know) is told to the client, whose snapshot was taken all the same
sp=$(sup_pid sn)
kill -9 "$sp"; wait_until 10 bash -c "! kill -0 $sp 2>/dev/null"
QVISOR_TEST_FAIL_AT=snapshot-restore "$QV_BIN" --root "$T_ROOT" start -q sn
check_output "a full snapshot whose restoring reopen QEMU refuses warns its client" \
    'warning: sn: QEMU refused to put disk node [^ ]+ back to direct I/O \(.*qv-test-nosuch' qv snapshot create sn warn1
check "...the snapshot was taken all the same" test -e "$T_ROOT/var/lib/qvisor/snapshots/sn/warn1.json"
check "...and the disk goes on through the page cache, as the warning says" io_is buffered
check_output "...it goes" 'snapshot warn1 deleted' qv snapshot delete sn warn1
sp=$(sup_pid sn)
kill -9 "$sp"; wait_until 10 bash -c "! kill -0 $sp 2>/dev/null"
qv start -q sn  # reattached by a supervisor without the failure point, for what follows
# a disk attached live takes part like a defined one (storage_hotplug.sh has the rest)
qemu-img create -q -f qcow2 "$img/hot.qcow2" 8M
check "a disk is attached live" qv attach-disk sn "$img/hot.qcow2"
check_output "a full snapshot takes it in" 'snapshot live2 created' qv snapshot create sn live2
check "...its record holds it, marked hotplugged" \
    jq -e '.disks | any(.hotplug and .file == "'"$img/hot.qcow2"'")' "$T_ROOT/var/lib/qvisor/snapshots/sn/live2.json"
check_output "...a disk-only one too" 'snapshot ext9 created' qv snapshot create sn ext9 --disk-only
check_output "...which merges back" 'snapshot ext9 deleted' qv snapshot delete sn ext9
check_output "...and live2 goes" 'snapshot live2 deleted' qv snapshot delete sn live2
check "the disk is detached" qv detach-disk sn "$img/hot.qcow2"

# ---- a full snapshot of the shut-off VM ----
qv kill sn > /dev/null
check_output "a snapshot of the shut-off VM (qemu-img)" 'snapshot off1 created \(internal\)' qv snapshot create sn off1
check_output "...recorded as taken shut off, without memory" '^state: +shutoff' qv snapshot show sn off1
qv start -q sn || { not_ok "the VM starts again"; finish; }
check "the guest boots and writes marker D after it" boot_and_put 2 MARK-D 2
qv kill sn > /dev/null
check "...D is in the image" image_has "$img/data.qcow2" MARK-D
check_output "revert to off1, shut off" 'reverted to snapshot off1' qv snapshot revert sn off1
check "...D, written after the snapshot, is gone" image_lacks "$img/data.qcow2" MARK-D
check "...and the VM stays shut off (the snapshot holds no memory)" state_is sn "shut off"
check "...while C, written before it, is there" image_has "$img/data.qcow2" MARK-C

# ---- a disk-only snapshot taken shut off, merged while running ----
check_output "a disk-only snapshot of the shut-off VM" 'snapshot ext2 created' qv snapshot create sn ext2 --disk-only
qv start -q sn || { not_ok "the VM starts on the overlay"; finish; }
check "the guest boots on the overlay and writes marker E" boot_and_put 3 MARK-E 3
check "...E lands in the overlay" owns "$img/sn.ext2.qcow2" 3
check_output "deleting ext2 while it runs merges it into the image QEMU opened read-only at start" \
    'snapshot ext2 deleted' qv snapshot delete sn ext2
check "...the guest keeps running" guest_ok sn true
check_output "...the definition names the base again" "\"file\": \"$img/data.qcow2\"" qv show sn
check "...and E is in the base image" image_has "$img/data.qcow2" MARK-E
qv kill sn > /dev/null
check_output "snapshot current names it" '^off1$' qv snapshot current sn
check_output "deleting full1 (shut off) gives its children to its parent" 'deleted' qv snapshot delete sn full1
check_output "...off1 is a root now, and current" '^off1 \*$' tree
check "...its record names no parent any more, and it is the only one left" \
    sh -c "'$QV_BIN' --root '$T_ROOT' snapshot list sn --json | jq -e 'length == 1 and .[0].name == \"off1\" and .[0].parent == null'"

# ---- undefine ----
check_error "undefine of a VM with snapshots is refused" 4 'sn has 1 snapshot .*--snapshots-metadata' qv undefine sn
check "...and the VM stays defined" qv show sn
check_output "undefine --snapshots-metadata forgets them" 'undefined sn' qv undefine sn --snapshots-metadata
check "...the records are gone" test ! -e "$T_ROOT/var/lib/qvisor/snapshots/sn"
finish
