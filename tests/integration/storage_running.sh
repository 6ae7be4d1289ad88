#!/bin/bash
# timeout: 420
# A running VM's disks: disk-resize (the guest sees the new size at once), blkstat
# (QEMU's counters for the guest's reads and writes), and a host-side ENOSPC: the
# disk lives on a tiny tmpfs, the guest fills it, the VM pauses with the reason in
# status, list and the log; once the tmpfs grows, `resume` finishes the guest's write
# and every byte it wrote is there.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
full=$T_ROOT/full
mkdir -p "$img" "$full"
truncate -s 32M "$img/data.raw"
mount -t tmpfs -o size=8M qvtest-full "$full" || { not_ok "a tmpfs for the ENOSPC case"; finish; }
on_exit "umount -l '$full'"
truncate -s 64M "$full/full.raw"
define_guest rd "" --disk "file=$img/data.raw,serial=DATA,cache=writeback" \
    --disk "file=$full/full.raw,serial=FULL,cache=writeback"
qv start -q rd || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 90 guest_ok rd true

# ---- disk-resize ----
check "the guest sees the data disk at 32 MiB" guest_ok rd "test \$(cat /sys/block/$(gdisk DATA)/size) -eq 65536"
check_output "disk-resize +16M, by serial" 'rd: disk0 is now 48M' qv disk-resize rd DATA +16M
check "...the guest sees 48 MiB at once" wait_until 10 guest_ok rd "test \$(cat /sys/block/$(gdisk DATA)/size) -eq 98304"
check "...and so does the image file" test "$(stat -c %s "$img/data.raw")" -eq $((48 << 20))
check_output "disk-resize to an absolute size, by path" 'is now 64M' qv disk-resize rd "$img/data.raw" 64M
check_error "shrinking is refused without --allow-shrink" 2 'disk0 is 64M; shrinking it to 16M cuts off' \
    qv disk-resize rd disk0 16M
check "...and changes nothing" test "$(stat -c %s "$img/data.raw")" -eq $((64 << 20))
check_error "a disk the VM does not have" 3 'rd: no disk nosuch' qv disk-resize rd nosuch +1M
check_error "a size that is none" 2 'is not a size' qv disk-resize rd disk0 +lots

# ---- blkstat ----
check "the guest reads 4 MiB of the data disk" guest_ok rd "dd if=/dev/$(gdisk DATA) of=/dev/null bs=64k count=64"
qv blkstat rd disk0 --json > "$T_ROOT/stat.json"
check "blkstat counts the guest's reads of that disk" \
    jq -e 'length == 1 and .[0].disk == "disk0" and .[0].rd_bytes >= 4194304 and .[0].rd_reqs > 0' "$T_ROOT/stat.json"
check_output "blkstat without a disk lists every disk" '^disk1 .* [0-9]+  '"$full/full.raw"'$' qv blkstat rd

# ---- ENOSPC on the host pauses the guest ----
# 256 copies of a 64 KiB pattern: busybox's `yes` alone is far too slow under TCG
gsh rd "rm -f /tmp/dd.rc; yes QVISOR-DATA | head -c 65536 > /tmp/p" > /dev/null
wr="for i in \$(seq 256); do cat /tmp/p; done | dd of=/dev/$(gdisk FULL) bs=64k conv=fsync 2>/dev/null; echo \$? > /tmp/dd.rc"
gsh rd "($wr) & true" > /dev/null
check "the guest's 16 MiB write on an 8 MiB tmpfs pauses the VM" wait_until 60 state_is rd paused
check_output "status says why" 'state +paused \(I/O error on disk1 \('"$full"'/full\.raw\): No space left on device\)' \
    qv status rd
check_output "list says why" '^rd +paused .*I/O error on disk1' qv list
check "the log says why, and how to go on" log_has rd "disk1 \\($full/full.raw\\): write error: No space left on device; the guest is paused until \`qvisor resume rd\`"
check "...the guest's write has not finished" test "$(stat -c %b "$full/full.raw")" -lt 32768
mount -o remount,size=64M "$full"
check "after the tmpfs grew, resume succeeds" qv resume rd
check "...the VM runs, and the reason is gone" sh -c "[ \"\$('$QV_BIN' --root '$T_ROOT' status rd --json | jq -r '.state + \"/\" + (.state_reason // \"\")')\" = running/ ]"
check "...the guest's write finishes successfully" wait_until 60 guest_ok rd 'grep -qx 0 /tmp/dd.rc'
want=$(for i in $(seq 256); do yes QVISOR-DATA | head -c 65536; done | md5sum | cut -d' ' -f1)
check "...and the image holds every byte the guest wrote" test "$(head -c 16777216 "$full/full.raw" | md5sum | cut -d' ' -f1)" = "$want"
qv kill rd >/dev/null 2>&1
finish
