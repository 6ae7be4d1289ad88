#!/bin/bash
# timeout: 480
# Block jobs on a running, sandboxed VM under TCG: pull flattens a chain (the guest
# still reads the base's marker, the image has no backing file after), an active
# commit merges the top into its base (the guest's marker, written after start, is
# in the base; the definition names the base), a copy into another dir pool with a
# pivot while the guest writes all the time (the guest's data and the new volume's
# match byte for byte; the definition names the volume), --abort leaves the disk
# as it was, a job survives kill -9 of the supervisor and is pivoted by its
# successor, and the refusals say what is wrong with the exit codes of DESIGN.md.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
pool2=$T_ROOT/pool2
mkdir -p "$img" "$pool2"
qi() { qemu-img "$@" >/dev/null; }
# a 16 MiB raw base with a marker at 1 MiB, and a qcow2 on top of it
mkbase() {
    truncate -s 16M "$img/$1.raw"
    printf '%s' "$2" | dd of="$img/$1.raw" bs=1 seek=$((1 << 20)) conv=notrunc 2>/dev/null
}
mkbase pbase PULL-BASE-MARKER
mkbase cbase CMT-BASE-MARKER
qi create -f qcow2 -F raw -b "$img/pbase.raw" "$img/pmid.qcow2"
qi create -f qcow2 -F qcow2 -b "$img/pmid.qcow2" "$img/pull.qcow2"
qi create -f qcow2 -F raw -b "$img/cbase.raw" "$img/cmt.qcow2"
qi create -f qcow2 "$img/copy.qcow2" 16M
qi create -f qcow2 "$img/small.qcow2" 4M
truncate -s 16M "$img/ibase.raw"
qi create -f qcow2 -F raw -b "$img/ibase.raw" "$img/imid.qcow2"
qemu-io -c "write -P 0x41 1M 64k" "$img/imid.qcow2" >/dev/null
qi create -f qcow2 -F qcow2 -b "$img/imid.qcow2" "$img/icm.qcow2"
qv pool define -q --name pool2 --path "$pool2" || not_ok "pool2 is defined"
define_guest bj "" --disk "file=$img/pull.qcow2,serial=PULL,cache=writeback" \
    --disk "file=$img/cmt.qcow2,serial=CMT,cache=writeback,discard=on" \
    --disk "file=$img/copy.qcow2,serial=COPY,cache=writeback,discard=on" \
    --disk "file=$img/small.qcow2,serial=SMALL,cache=writeback" \
    --disk "file=$img/icm.qcow2,serial=ICM,cache=writeback"
qv start -q bj || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 90 guest_ok bj true
dev() { echo "/dev/$(gdisk "$1")"; }
# def_has JQ: the stored definition satisfies JQ (an empty answer never does)
def_has() { local j; j=$(qv show bj --json) && [ -n "$j" ] && jq -e "$1" <<< "$j" >/dev/null; }
# nodes_have REGEX: a block node QEMU holds has a name matching REGEX
nodes_have() {
    local j; j=$(qv qmp bj '{"execute": "query-named-block-nodes"}') && [ -n "$j" ] &&
        jq -r '.[]."node-name"' <<< "$j" | grep -Eq -- "$1"
}
nodes_lack() { local j; j=$(qv qmp bj '{"execute": "query-named-block-nodes"}') && [ -n "$j" ] && ! nodes_have "$1"; }
# top_is DISK REGEX: the node the device reads
top_is() {
    local j; j=$(qv qmp bj '{"execute": "query-block"}') && [ -n "$j" ] &&
        jq -r ".[] | select(.qdev | test(\"/$1/\")) | .inserted.\"node-name\"" <<< "$j" | grep -Eqx -- "$2"
}
wr_bytes() { qv blkstat bj "$1" --json | jq '.[0].wr_bytes'; }
wr_above() { local n; n=$(wr_bytes "$1") && [ -n "$n" ] && [ "$n" -gt "$2" ]; }
no_job() { local s; s=$(qv status bj) && [ -n "$s" ] && ! grep -q '^job' <<< "$s"; }
# the guest's view of 16 bytes at 1 MiB
marker() { echo "dd if=$(dev $1) bs=1 skip=$((1 << 20)) count=$2 2>/dev/null"; }

# ---- pull ----
check "the guest reads the pull base's marker through two layers" guest_ok bj "$(marker PULL 16) | grep -qx PULL-BASE-MARKER"
check_output "block pull --base: the middle layer into the top" 'bj: pull of disk0 completed' \
    qv block pull bj disk0 --base "$img/pbase.raw" --wait
check "...the top's header names the base by its real path" sh -c "qemu-img info -U '$img/pull.qcow2' | grep -qx 'backing file: $img/pbase.raw'"
check "...the middle layer left QEMU" nodes_lack '^disk0-b0-'
check "...the base is still there" nodes_have '^disk0-b1-fmt$'
check_output "block pull --wait completes" 'bj: pull of disk0 completed' qv block pull bj disk0 --wait
check "...the image has no backing file any more" sh -c "! qemu-img info -U '$img/pull.qcow2' | grep -q 'backing file'"
check "...and the guest still reads the marker, now from the top" \
    guest_ok bj "echo 3 > /proc/sys/vm/drop_caches; $(marker PULL 16) | grep -qx PULL-BASE-MARKER"
check "the layers that left are closed in QEMU" nodes_lack '^disk0-b'

# ---- commit (active: the top merged into the base, the disk switches to it) ----
check "the guest writes a marker on the commit disk's top" \
    guest_ok bj "printf GUEST-AFTER-START | dd of=$(dev CMT) bs=1 seek=$((2 << 20)) conv=fsync 2>/dev/null"
check "...which is not in the base yet" sh -c "! grep -q GUEST-AFTER-START '$img/cbase.raw'"
check_output "block commit --wait completes" 'bj: active-commit of disk1 completed' qv block commit bj CMT --wait
check "...the marker is in the base" grep -q GUEST-AFTER-START "$img/cbase.raw"
check "...the definition names the base" def_has ".disks[1].file == \"$img/cbase.raw\" and .disks[1].format == \"raw\""
check "...QEMU reads it" top_is disk1 disk1-b0-fmt
check "...and the top left QEMU" nodes_lack '^disk1-(fmt|file)$'
check "...and the guest reads both markers on" guest_ok bj \
    "echo 3 > /proc/sys/vm/drop_caches; $(marker CMT 15) | grep -qx CMT-BASE-MARKER"

# ---- commit of an inner layer: the top stays, its header names the base ----
check "the guest reads the middle layer's bytes" guest_ok bj "dd if=$(dev ICM) bs=1 skip=$((1 << 20)) count=4 2>/dev/null | grep -qx AAAA"
check_output "block commit --top (an inner commit)" 'bj: commit of disk4 completed' \
    qv block commit bj ICM --top "$img/imid.qcow2" --wait
check "...the middle layer's data is in the base" sh -c "dd if='$img/ibase.raw' bs=1 skip=$((1 << 20)) count=4 2>/dev/null | grep -qx AAAA"
check "...the top's header names the base by its real path" sh -c "qemu-img info -U '$img/icm.qcow2' | grep -qx 'backing file: $img/ibase.raw'"
check "...the middle layer left QEMU" nodes_lack '^disk4-b0-'
check "...the disk still reads its top" top_is disk4 disk4-fmt
check "...and the guest still reads the bytes" guest_ok bj \
    "echo 3 > /proc/sys/vm/drop_caches; dd if=$(dev ICM) bs=1 skip=$((1 << 20)) count=4 2>/dev/null | grep -qx AAAA"

# ---- refusals ----
check_error "an unknown disk" 3 'bj: no disk nosuch' qv block pull bj nosuch
check_error "pull of a disk without backing file" 2 'has no backing file: nothing to pull' qv block pull bj COPY
touch "$pool2/taken"
check_error "a destination that exists" 4 'taken exists already' qv block copy bj COPY --dest "$pool2/taken"
check_error "a volume that exists" 4 'volume pool2/taken exists already' qv block copy bj COPY --volume pool2/taken
check_error "a relative destination" 2 'give an absolute path' qv block copy bj COPY --dest rel.qcow2
check_error "no destination" 2 'give the destination as --dest FILE or --volume POOL/NAME' qv block copy bj COPY
check "...and none of them left a job" no_job
check "...or a file" test "$(ls "$pool2")" = taken

# ---- copy to another pool with a pivot while the guest writes ----
gsh bj "rm -f /tmp/stop; (i=0; while [ ! -e /tmp/stop ]; do dd if=/dev/urandom of=$(dev COPY) bs=4k count=8 seek=\$((i % 4000)) conv=fsync 2>/dev/null; i=\$((i + 37)); done; echo done > /tmp/stopped) & true" >/dev/null
check "the guest writes to the copy disk" wait_until 20 wr_above disk2 100000
check_output "block copy --volume --pivot --wait completes while the guest writes" 'bj: copy of disk2 completed' \
    qv block copy bj COPY --volume pool2/moved --pivot --wait
check "...the definition names the volume" def_has '.disks[2].volume == "pool2/moved" and (.disks[2] | has("file") | not)'
check "...QEMU reads it" top_is disk2 'disk2-c[0-9]+-fmt'
wr0=$(wr_bytes disk2)
check "...the guest keeps writing, now to the new volume" wait_until 20 wr_above disk2 "$wr0"
check "...the old image is closed in QEMU" nodes_lack '^disk2-(fmt|file)$'
gsh bj "touch /tmp/stop" >/dev/null
check "the guest stops writing" wait_until 20 guest_ok bj "test -e /tmp/stopped"
guest_md5=$(gsh bj "md5sum $(dev COPY)" | grep -o '^[0-9a-f]\{32\}')
qemu-img convert -U -O raw "$pool2/moved" "$T_ROOT/moved.raw"
check "the guest's data and the new volume's match" test -n "$guest_md5" -a "$guest_md5" = "$(md5sum < "$T_ROOT/moved.raw" | cut -d' ' -f1)"
check "the old image no longer follows the guest" test "$(qemu-img convert -U -O raw "$img/copy.qcow2" "$T_ROOT/old.raw" && md5sum < "$T_ROOT/old.raw" | cut -d' ' -f1)" != "$guest_md5"
# the copy's nodes carry the disk's discard, as its nodes at start do: the guest's
# discard of the whole disk reaches the host file as holes (only through both layers:
# with discard=ignore on the qcow2 node nothing goes down; on the file node, the
# qcow2 layer frees its clusters and the file keeps its blocks)
data_kib() { qemu-img map -U --output=json "$pool2/moved" | jq '[.[] | select(.data) | .length] | add // 0 | . / 1024 | floor'; }
file_below() { local k; k=$(du -k "$pool2/moved" | cut -f1) && [ -n "$k" ] && [ "$k" -lt "$1" ]; }
check "the guest fills 12 MiB of the copy disk" guest_ok bj "dd if=/dev/urandom of=$(dev COPY) bs=1M count=12 conv=fsync 2>/dev/null"
check "...which the new volume's file holds" test "$(data_kib)" -ge 12288 -a "$(du -k "$pool2/moved" | cut -f1)" -ge 12288
check "the guest discards the whole copy disk" guest_ok bj "busybox blkdiscard $(dev COPY)"
check "...and the host file lets its blocks go" wait_until 10 file_below 4096

# ---- --abort leaves the disk as it was ----
check_output "a slow copy starts" 'bj: copy of disk3 started' qv block copy bj SMALL --dest "$pool2/slow.qcow2" --bandwidth 64K
check_error "a second job on the same disk" 4 'disk3 has a copy job running already' qv block pull bj SMALL
check_output "status shows the job" '^job +copy of disk3: (created|running)' qv status bj
check_output "block job --abort" 'aborting the copy of disk3' qv block job bj SMALL --abort
check "...the job ends" wait_until 20 no_job
check "...its file is removed" test ! -e "$pool2/slow.qcow2"
check "...and the disk is unchanged" def_has ".disks[3].file == \"$img/small.qcow2\""
check "...and still the device's node" top_is disk3 disk3-fmt
check "...and the target's nodes are gone" nodes_lack '^disk3-c'

# ---- a job survives kill -9 of its supervisor ----
check_output "a copy without pivot starts" 'bj: copy of disk3 started' qv block copy bj SMALL --dest "$pool2/small2.qcow2" --bandwidth 1M
spid=$(sup_pid bj)
kill -9 "$spid"
check "kill -9 of the supervisor" wait_until 10 bash -c "! kill -0 $spid 2>/dev/null"
check_output "start again reattaches" "bj started" qv start bj
check_output "...and status shows the job carried on" '^job +copy of disk3: (running|ready)' qv status bj
check "...its log says so" log_has bj 'job qv[0-9]+-copy-disk3 \(copy of disk3\) carries on'
check_output "block job --pivot --wait, by the new supervisor" 'copy of disk3 is over: completed' \
    qv block job bj SMALL --pivot --wait
check "...the definition names the copy" def_has ".disks[3].file == \"$pool2/small2.qcow2\""
check "...which QEMU reads" top_is disk3 'disk3-c[0-9]+-fmt'
check "the guest still works" guest_ok bj "dd if=$(dev SMALL) of=/dev/null bs=64k 2>/dev/null"

# what QEMU kept in its caches is on disk once it quit
check "the VM stops" qv stop bj --force
check "the pulled image holds the base's marker itself" sh -c "qemu-img convert -O raw '$img/pull.qcow2' '$T_ROOT/p.raw' && \
    dd if='$T_ROOT/p.raw' bs=1 skip=$((1 << 20)) count=16 2>/dev/null | grep -qx PULL-BASE-MARKER"
check "...and no layer below it is needed: the old ones are not read" sh -c "rm '$img/pmid.qcow2' '$img/pbase.raw' && qemu-img check '$img/pull.qcow2' >/dev/null"
check_output "the VM starts again on its moved and committed disks" "bj started" qv start bj
check "...and the guest reads the commit marker from the base" wait_until 90 guest_ok bj \
    "dd if=$(dev CMT) bs=1 skip=$((2 << 20)) count=17 2>/dev/null | grep -qx GUEST-AFTER-START"
qv kill bj >/dev/null 2>&1
finish
