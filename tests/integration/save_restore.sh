#!/bin/bash
# timeout: 420
# save, restore, managedsave and managedsave-remove with a real QEMU under TCG, sandbox
# on. The guest runs a counter it keeps in RAM (the initramfs' /tmp) and writes to its
# disk; save shuts the VM off, restore brings the same guest back (the counter goes on
# from where it was, no second boot), --paused leaves it paused; a definition changed
# since the save is refused, naming the difference; a save that fails (no such
# directory, a full filesystem mid-stream) leaves the guest running and no file behind;
# managedsave is resumed by the next start and removed then, shows as "saved" in list,
# blocks undefine until --managed-save; managedsave-remove makes the next start boot. A
# vCPU plugged live (setvcpus) is recorded in the file and plugged again before the
# stream by restore and by the start after a managed save.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
qemu-img create -q -f qcow2 "$img/data.qcow2" 16M
define_guest sv "qv_agent=0" --disk "file=$img/data.qcow2,serial=DATA,cache=writeback"
SAVE=$T_ROOT/sv.save

booted() { [ "$(count_log sv 'QVISOR-GUEST: ready')" -ge "$1" ]; }
boots() { count_log sv 'QVISOR-GUEST: ready'; }
# the guest's counter: once a second, +1 in /tmp/count (RAM only) and in the first
# sector of the data disk, synced
dev=$(gdisk DATA)
start_counter() {
    guest_ok sv "D=/dev/$dev; i=0; (while :; do i=\$((i+1)); echo \$i > /tmp/count; printf 'COUNT-%-506s' \$i | dd of=\$D bs=512 count=1 conv=fsync 2>/dev/null; sleep 1; done) > /dev/null 2>&1 & true"
}
count() { gsh sv 'cat /tmp/count' | grep -E '^[0-9]+$' | tail -1; }
disk_count() { gsh sv "dd if=/dev/$dev bs=512 count=1 2>/dev/null | tr -d ' '; echo" | grep -o 'COUNT-[0-9]*' | tail -1 | cut -d- -f2; }
count_above() { local n; n=$(count); [ -n "$n" ] && [ "$n" -gt "$1" ]; }
# the counter now, asked again while the console gives no number (it once gave none at
# load 11, and an empty value fails every check after it)
count_now() { local n i; for i in 1 2 3; do n=$(count); [ -n "$n" ] && { echo "$n"; return 0; }; done; return 1; }
def_set() { qv show sv | jq "$1" | qv edit sv > /dev/null; }
# header_has FILTER: the saved state's header (its second line) passes jq -e FILTER (and exists)
header_has() { local h; h=$(sed -n '2{p;q}' "$SAVE") && [ -n "$h" ] && jq -e "$1" <<< "$h" > /dev/null; }
vcpus_are() { [ "$(qv status sv --json | jq .vcpus)" = "$1" ]; }
online() { gsh sv 'cat /sys/devices/system/cpu/online' | grep -E '^[0-9][0-9,-]*$' | tail -1; }
online_is() { [ "$(online)" = "$1" ]; }

# ---- refusals before anything runs ----
check_error "save of a VM that is not running" 4 'sv is not running' qv save sv "$SAVE"
check_error "restore of a file that is no saved state" 2 "$T_ROOT/etc/qvisor/host.json: not a qvisor saved state" \
    qv restore "$T_ROOT/etc/qvisor/host.json"
check_error "restore of a file that does not exist" 3 "$T_ROOT/nosuch: No such file" qv restore "$T_ROOT/nosuch"

# ---- save and restore ----
def_set '.cpu.max = 2'      # setvcpus may plug a second vCPU
qv start -q sv || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 90 booted 1
check "the guest starts its counter" wait_until 30 start_counter
check "...which counts" wait_until 30 count_above 1
before=$(count_now)
check_error "a save into a directory that does not exist fails" 3 "sv: $T_ROOT/nodir/x: No such file or directory" \
    qv save sv "$T_ROOT/nodir/x"
check "...and the guest runs on" state_is sv running
check_output "save" "sv saved to $SAVE \\(shut off" qv save sv "$SAVE"
check "...the VM is shut off" state_is sv 'shut off'
uuid=$(qv show sv --json | jq -r .uuid)
check "...its QEMU is gone" sh -c "! pgrep -f -- '-uui[d] $uuid' > /dev/null"
check "...the file is there, readable by root only" sh -c "[ \"\$(stat -c %a '$SAVE')\" = 600 ]"
check "...no partial file is left" test ! -e "$SAVE.part"
check "...the log says where it went" log_has sv "saved to $SAVE"
check_output "...status says how it ended" "saved to $SAVE" qv status sv
check_output "restore" "sv restored from $SAVE \\(running\\)" qv restore "$SAVE"
check "...the VM runs" state_is sv running
check "...the counter goes on from where it was" wait_until 30 count_above "$before"
check_output "...and the guest did not boot again" '^1$' boots
at=$(count_now)
check "...it keeps counting" wait_until 30 count_above "$at"
dc=$(disk_count)
check "...the disk holds a count at least the one in RAM at the save" test "${dc:-0}" -ge "$before"

# ---- a failure in the middle of the stream: a full filesystem ----
mkdir -p "$T_ROOT/small"
if mount -t tmpfs -o size=2M qvtest "$T_ROOT/small" 2>/dev/null; then
    on_exit "umount -l '$T_ROOT/small'"
    check_error "a save that runs out of space fails" 1 "sv: save to $T_ROOT/small/s failed: .*the guest runs on" \
        qv save sv "$T_ROOT/small/s"
    check "...the guest runs on" state_is sv running
    n=$(count_now)
    check "...and keeps counting" wait_until 30 count_above "${n:-0}"
    check "...and the partial file is removed" sh -c "[ -z \"\$(ls -A '$T_ROOT/small')\" ]"
else
    ok "# SKIP a full filesystem (cannot mount a tmpfs here)"
fi

# ---- restore --paused, and a definition that no longer fits; a vCPU plugged live goes along ----
check_output "setvcpus 2 (plugged live)" 'sv: 2 vCPUs \(was 1\)' qv setvcpus sv 2
# saved only once the guest has taken it (a save before that restores a guest that never will)
check "...the guest brings it online" wait_until 30 online_is 0-1
check_output "save again" "sv saved to" qv save sv "$SAVE"
check "...the file records the 2 vCPUs it runs with" header_has '.vcpus == 2 and .definition.cpu.count == 1'
# a header that records more vCPUs than cpu.max allows (same length: the stream stays where it is)
sed '2s/"vcpus":2/"vcpus":3/' "$SAVE" > "$T_ROOT/more.save"
check_error "restore of a state with more vCPUs than cpu.max allows is refused, naming both" 2 \
    "sv: the saved state in $T_ROOT/more.save runs 3 vCPUs \(plugged with setvcpus\), and its definition allows 1 to 2 now" \
    qv restore "$T_ROOT/more.save"
rm -f "$T_ROOT/more.save"
def_set '.memory = "256M"'
check_error "restore with another memory size is refused, naming it" 2 \
    'sv: the saved state in .* does not fit the definition any more \(memory: saved "192M", now "256M"\)' qv restore "$SAVE"
check "...and nothing started" state_is sv 'shut off'
def_set '.memory = "192M"'
check_output "with the definition as it was: restore --paused" 'restored from .* \(paused' qv restore "$SAVE" --paused
check "...the VM is paused" state_is sv paused
check "...with the 2 vCPUs plugged before the stream" log_has sv 'plugging the 2 vCPUs the guest was saved with'
check "...status counts 2 vCPUs" vcpus_are 2
check_output "resume" 'resumed' qv resume sv
n=$(count_now)
check "...the counter goes on" wait_until 30 count_above "${n:-0}"
check_output "...still one boot" '^1$' boots
check_output "...both vCPUs online in the guest" '^0-1$' online

# ---- managed save ----
check_output "managedsave" 'sv saved \(managed save' qv managedsave sv
check "...the state is kept under var/lib/qvisor/save" test -s "$T_ROOT/var/lib/qvisor/save/sv.state"
check_output "...list --all shows it saved" '^sv +saved' qv list --all
check_error "...undefine refuses to drop it silently" 4 'sv has a managed save .*--managed-save' qv undefine sv
check_output "start resumes it" 'sv started from its managed save' qv start sv
check "...with its 2 vCPUs" vcpus_are 2
check "...the counter goes on" wait_until 30 count_above "$before"
check_output "...without a boot" '^1$' boots
check "...and the managed save is gone" test ! -e "$T_ROOT/var/lib/qvisor/save/sv.state"
check_output "...list shows it running" '^sv +running' qv list
check_output "managedsave again" 'managed save' qv managedsave sv
check_output "managedsave-remove" 'managed save removed' qv managedsave-remove sv
check "...the file is gone" test ! -e "$T_ROOT/var/lib/qvisor/save/sv.state"
check_output "...list says shut off" '^sv +shut off' qv list --all
check_output "...and the next start boots" 'sv started$' qv start sv
check "...a second boot" wait_until 90 booted 2
check_output "managedsave of the booted guest" 'managed save' qv managedsave sv
check_output "undefine --managed-save removes it with the definition" 'removed its managed save' \
    qv undefine sv --managed-save
check "...the file is gone" test ! -e "$T_ROOT/var/lib/qvisor/save/sv.state"
finish
