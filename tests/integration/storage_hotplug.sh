#!/bin/bash
# timeout: 300
# A disk attached live (attach-disk) is a disk like the definition's for snapshots and
# block jobs, on one running, sandboxed guest under TCG: a full snapshot holds it and
# reverts it, a disk-only one puts an overlay on it and merges it back (after a kill -9
# of the supervisor), pull and copy --pivot work on it, detach releases the chain QEMU
# holds now; a record names it as hotplugged, so once it is detached (or another disk
# took its id, or the VM is shut off) revert and delete refuse clearly and touch nothing.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
qemu-img create -q -f qcow2 "$img/data.qcow2" 8M
truncate -s 16M "$img/hbase.raw"
qemu-img create -q -f qcow2 -F raw -b "$img/hbase.raw" "$img/hot.qcow2"
qemu-img create -q -f qcow2 "$img/other.qcow2" 8M
define_guest hs "" --disk "file=$img/data.qcow2,serial=DATA,cache=writeback"
# put MARKER MiB / at MiB: the guest writes and reads the hotplugged disk
put() { guest_ok hs "printf '%-512s' $1 | dd of=/dev/$(gdisk HOT) bs=512 seek=\$(($2 * 2048)) conv=fsync 2>/dev/null"; }
at() { gsh hs "dd if=/dev/$(gdisk HOT) bs=512 skip=\$(($1 * 2048)) count=1 2>/dev/null | tr -d ' '; echo" | tr -d '\r'; }
image_has() { qemu-img convert -U -O raw "$1" "$T_ROOT/flat.raw" && grep -aq "$2" "$T_ROOT/flat.raw"; }
owns() { qemu-img map -U --output=json "$1" | jq -e --argjson o $(($2 << 20)) \
    'any(.[]; .start <= $o and .start + .length > $o and .depth == 0 and .data)' > /dev/null; }
# reads DISK FILE: the running VM has DISK on image FILE
reads() { local j; j=$(qv blkstat hs "$1" --json) && [ -n "$j" ] && jq -e --arg f "$2" '.[0].file == $f' <<< "$j" >/dev/null; }
rec() { jq -e "$2" "$T_ROOT/var/lib/qvisor/snapshots/hs/$1.json" > /dev/null; }
nodes_lack() {
    local j; j=$(qv qmp hs '{"execute": "query-named-block-nodes"}') && [ -n "$j" ] &&
        ! jq -r '.[]."node-name"' <<< "$j" | grep -Eq -- "$1"
}

qv start -q hs || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 90 guest_ok hs true
check_output "a disk is attached live" 'disk attached as disk1$' qv attach-disk hs "$img/hot.qcow2" --serial HOT
check "the guest writes marker A on it" wait_until 30 put HOT-A 1

# ---- a full snapshot holds it ----
created_quietly() { local o; o=$(qv snapshot create hs "$@" 2>&1) && grep -q created <<< "$o" && ! grep -Eq 'leaves out|warning' <<< "$o"; }
check "a full snapshot takes it in, without a warning" created_quietly f1
check "...the record names disk1 as hotplugged, disk0 not" \
    rec f1 '(.disks | map(select(.disk == "disk1"))[0].hotplug) and (.disks | map(select(.disk == "disk0"))[0].hotplug | not)'
check "...and the image holds it" sh -c "qemu-img snapshot -U -l '$img/hot.qcow2' | grep -qw f1"
check "the guest overwrites A with B" put HOT-B 1
check_output "revert to f1 while it runs" 'reverted to snapshot f1' qv snapshot revert hs f1
check_output "...the hotplugged disk reads A again" '^HOT-A$' at 1

# ---- a disk-only one puts an overlay on it, merged back after a new supervisor took over ----
check_output "a disk-only snapshot" 'snapshot e1 created' qv snapshot create hs e1 --disk-only
check "...the hotplugged disk reads its own overlay" reads disk1 "$img/hs-disk1.e1.qcow2"
check "the guest writes marker C" put HOT-C 2
check "...into the overlay" owns "$img/hs-disk1.e1.qcow2" 2
spid=$(sup_pid hs)
kill -9 "$spid"
check "kill -9 of the supervisor" wait_until 10 bash -c "! kill -0 $spid 2>/dev/null"
check_output "start again reattaches" "hs started" qv start hs
check "...and knows disk1 reads the overlay" reads disk1 "$img/hs-disk1.e1.qcow2"
check_output "deleting e1 merges the overlay (block commit)" 'snapshot e1 deleted' qv snapshot delete hs e1
check "...disk1 reads its image again" reads disk1 "$img/hot.qcow2"
check "...the overlay is gone" test ! -e "$img/hs-disk1.e1.qcow2"
check "...and C is in the image" image_has "$img/hot.qcow2" HOT-C

# ---- block jobs ----
check_output "block pull of the hotplugged disk" 'pull of disk1 completed' qv block pull hs disk1 --wait
check "...the image has no backing file any more" sh -c "! qemu-img info -U --output=json '$img/hot.qcow2' | jq -e '.\"backing-filename\"' >/dev/null"
check_output "block copy --pivot of it" 'copy of disk1 completed; the disk now reads its new image' \
    qv block copy hs disk1 --dest "$img/moved.qcow2" --pivot --wait
check "...it reads the copy" reads disk1 "$img/moved.qcow2"
check_output "...with A and C" '^HOT-A$' at 1

# ---- gone: the records refuse, nothing is touched ----
check_output "a disk-only snapshot of the moved disk" 'snapshot e2 created' qv snapshot create hs e2 --disk-only
check "detach-disk after snapshots and a pivot" qv detach-disk hs disk1
check "...QEMU holds no node of it any more" nodes_lack '^disk1-'
check_error "delete of e2 refuses: disk1 is not attached now" 3 \
    'snapshot e2: disk1 \(.*hs-disk1.e2.qcow2\) was attached to the running VM .* not attached now' qv snapshot delete hs e2
check_error "revert to f1 refuses likewise" 3 'snapshot f1: disk1 .* not attached now' qv snapshot revert hs f1
check_output "another disk attached takes the id disk1" 'as disk1$' qv attach-disk hs "$img/other.qcow2"
check_error "...delete of e2 does not take it for the old one" 4 "overlay .*hs-disk1.e2.qcow2 is no longer in its chain" \
    qv snapshot delete hs e2
check "...the overlay is still there" test -e "$img/hs-disk1.e2.qcow2"
qv kill hs > /dev/null
check_error "shut off, delete of e2 refuses too" 3 'disk1 .* not attached now' qv snapshot delete hs e2
check_error "...and revert of f1" 3 'disk1 .* not attached now' qv snapshot revert hs f1
finish
