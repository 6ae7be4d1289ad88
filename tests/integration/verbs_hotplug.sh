#!/bin/bash
# timeout: 600
# --persistent on attach-disk, detach-disk, attach-nic and detach-nic, like virsh: a
# running VM changes now, --persistent changes its definition file too, and without
# it the file stays byte-identical. On a stopped VM only --persistent is allowed.
# The guest (real QEMU under TCG) is asked what it sees: disks by serial, NICs by MAC.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
truncate -s 16M "$img/cold.raw" "$img/hot1.raw" "$img/hot2.raw"
define_guest hp
def=$T_ROOT/etc/qvisor/vms/hp.json
snap() { cp "$def" "$T_ROOT/def.before"; }
unchanged() { cmp -s "$def" "$T_ROOT/def.before"; }
# in_def JQ: the definition file satisfies a jq filter
in_def() { jq -e "$1" "$def" > /dev/null; }
has_disk() { in_def "any(.disks[]?; .file == \"$1\")"; }
has_nic() { in_def "any(.nics[]?; .mac == \"$1\")"; }
# what the guest sees (grep -h: serial has no newline; the exit status of the last grep: a device going away while the glob is
# read must not fail the probe); the "no_" probes also succeed only when the guest
# ran them, so a dead console fails them too
# like guest_ok, but shows the console's answer when it fails
gok() { local o; o=$(gsh hp "$1"); grep -q 'END-42-0' <<< "$o" || { echo "$o"; return 1; }; }
guest_disk() { gok "grep -h . /sys/block/vd*/serial 2>/dev/null | grep -qx $1"; }
guest_no_disk() { gok "! grep -h . /sys/block/vd*/serial 2>/dev/null | grep -qx $1"; }
guest_nic() { gok "grep -h . /sys/class/net/eth*/address 2>/dev/null | grep -qx $1"; }
guest_no_nic() { gok "! grep -h . /sys/class/net/eth*/address 2>/dev/null | grep -qx $1"; }

# ---- a stopped VM: only the definition can change, and only with --persistent ----
snap
check_error "attach-disk to a stopped VM without --persistent: conflict (exit 4)" 4 'not running \(--persistent' \
    qv attach-disk hp "$img/cold.raw"
check "...and the definition is untouched" unchanged
check_output "attach-disk --persistent to a stopped VM" 'disk attached \(and defined\)' \
    qv attach-disk hp "$img/cold.raw" --serial COLD --persistent
check "...adds the disk to the definition file, with its options" in_def "any(.disks[]; .file == \"$img/cold.raw\" and .serial == \"COLD\")"
snap
check_error "detach-disk of a stopped VM without --persistent: conflict (exit 4)" 4 'not running' qv detach-disk hp "$img/cold.raw"
check "...and the definition is untouched" unchanged
check_output "detach-disk --persistent of a stopped VM" "disk $img/cold.raw detached from the definition" \
    qv detach-disk hp "$img/cold.raw" --persistent
check_not "...removes it from the definition file" has_disk "$img/cold.raw"
check_error "detach-disk --persistent of a disk the definition lacks: no such object (exit 3)" 3 'has no disk' \
    qv detach-disk hp "$img/cold.raw" --persistent
snap
check_error "attach-nic to a stopped VM without --persistent: conflict (exit 4)" 4 'not running' \
    qv attach-nic hp --user --mac 52:54:00:cc:00:01
check "...and the definition is untouched" unchanged
check_output "attach-nic --persistent to a stopped VM" 'NIC attached \(and defined\)' \
    qv attach-nic hp --user --mac 52:54:00:cc:00:01 --persistent
check "...adds the NIC to the definition file" has_nic 52:54:00:cc:00:01
snap
check_error "detach-nic of a stopped VM without --persistent: conflict (exit 4)" 4 'not running' \
    qv detach-nic hp --mac 52:54:00:cc:00:01
check "...and the definition is untouched" unchanged
check_output "detach-nic --persistent of a stopped VM" 'NIC 52:54:00:cc:00:01 detached from the definition' \
    qv detach-nic hp --mac 52:54:00:cc:00:01 --persistent
check_not "...removes it from the definition file" has_nic 52:54:00:cc:00:01

# ---- a running VM ----
qv start -q hp
check "the guest boots" wait_log hp 'QVISOR-GUEST: ready' 90
snap
check_output "attach-disk (live only)" 'disk attached as disk[0-9]+$' qv attach-disk hp "$img/hot1.raw" --format raw --serial HOT1
check "...the guest sees it" wait_until 20 guest_disk HOT1
check "...and the definition file is untouched" unchanged
check_output "attach-disk --persistent (live and defined)" 'disk attached as disk[0-9]+ \(and defined\)' \
    qv attach-disk hp "$img/hot2.raw" --format raw --serial HOT2 --persistent
check "...the guest sees it" wait_until 20 guest_disk HOT2
check "...and the definition file has it" in_def "any(.disks[]; .file == \"$img/hot2.raw\" and .serial == \"HOT2\")"
snap
check_output "attach-nic --user (live only)" 'NIC attached as nic[0-9]+$' qv attach-nic hp --user --mac 52:54:00:cc:00:02
check "...the guest sees it" wait_until 20 guest_nic 52:54:00:cc:00:02
check "...and the definition file is untouched" unchanged
check_output "attach-nic --user --persistent without a MAC (live and defined)" 'NIC attached as nic[0-9]+ \(and defined\)' \
    qv attach-nic hp --user --persistent
mac=$(jq -r '.nics[-1].mac // empty' "$def")
check "...the definition keeps the MAC the running VM got ($mac)" bash -c "[ -n '$mac' ] && '$QV_BIN' --root '$T_ROOT' ifaddr hp | grep -q '$mac'"
check "...the guest sees it" wait_until 20 guest_nic "$mac"
snap
check_output "detach-disk (live only)" "disk $img/hot1.raw detached$" qv detach-disk hp "$img/hot1.raw"
check "...the guest lost it" wait_until 10 guest_no_disk HOT1
check "...but kept the other" guest_disk HOT2
check "...and the definition file is untouched" unchanged
check_output "detach-nic (live only)" 'NIC 52:54:00:cc:00:02 detached$' qv detach-nic hp --mac 52:54:00:cc:00:02
check "...the guest lost it" wait_until 10 guest_no_nic 52:54:00:cc:00:02
check "...and the definition file is untouched" unchanged

# what --persistent defined is there at the next boot, what it did not is not
qv kill -q hp
qv start -q hp
check "after a restart the guest boots" wait_until 90 bash -c "[ \$(grep -ac 'QVISOR-GUEST: ready' '$T_ROOT/var/log/qvisor/hp.log') -ge 2 ]"
check "...with the disk attached --persistent" guest_disk HOT2
check "...and the NIC attached --persistent" guest_nic "$mac"
check "...but not the disk attached live only" guest_no_disk HOT1
check "...nor the NIC attached live only" guest_no_nic 52:54:00:cc:00:02

# now part of the definition: --persistent removes them from it; the running QEMU
# keeps them (they were not hotplugged in this run) and the CLI says so
snap
check_error "detach-disk of a defined disk without --persistent: not hotplugged (exit 3)" 3 'hot' \
    qv detach-disk hp "$img/hot2.raw"
check "...and the definition file is untouched" unchanged
check_output "detach-disk --persistent of a defined disk" "disk $img/hot2.raw removed from the definition" \
    qv detach-disk hp "$img/hot2.raw" --persistent
check_not "...it is gone from the definition file" has_disk "$img/hot2.raw"
check_output "detach-nic --persistent of a defined NIC" "NIC $mac removed from the definition" \
    qv detach-nic hp --mac "$mac" --persistent
check_not "...it is gone from the definition file" has_nic "$mac"

# ---- a qcow2 with a backing chain, hotplugged: every layer passed as an fd ----
printf 'CHAIN-BASE-MARKER' | dd of="$img/c0.raw" conv=notrunc 2>/dev/null
truncate -s 16M "$img/c0.raw"
qemu-img create -q -f qcow2 -F raw -b "$img/c0.raw" "$img/c1.qcow2"
qemu-img create -q -f qcow2 -F qcow2 -b "$img/c1.qcow2" "$img/c2.qcow2"
check_output "attach-disk of a qcow2 on a 2-layer backing chain" 'disk attached as disk[0-9]+' \
    qv attach-disk hp "$img/c2.qcow2" --format qcow2 --serial CHAIN
check "...the guest reads the bottom layer's marker through it" wait_until 30 gok "head -c 17 /dev/$(gdisk CHAIN) | grep -q CHAIN-BASE-MARKER"
check "...every layer is a node of its own, none opened by path" sh -c "'$QV_BIN' --root '$T_ROOT' qmp hp '{\"execute\": \"query-named-block-nodes\", \"arguments\": {\"flat\": true}}' |
    jq -e '[.[] | select(.\"node-name\" | test(\"-b[01]-file\$\"))] | length == 2 and all(.file | startswith(\"/dev/fdset/\"))'"
check_output "detach-disk of it" 'detached' qv detach-disk hp "$img/c2.qcow2"
check "...and its layers' nodes are gone from QEMU" sh -c "'$QV_BIN' --root '$T_ROOT' qmp hp '{\"execute\": \"query-named-block-nodes\", \"arguments\": {\"flat\": true}}' |
    jq -e '[.[] | select(.\"node-name\" | test(\"-b[01]-\"))] | length == 0'"
finish
