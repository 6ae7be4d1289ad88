#!/bin/bash
# timeout: 480
# migrate --copy-storage between two "hosts" on one machine (network + PID namespaces,
# each its own qvisor root, as in migrate.sh). The guest's disk is local: a qcow2 on A,
# and B's definition puts its copy at another path (both roots share one filesystem
# here). The guest's counter writes its latest value to sector 0 and every value i to
# sector 128*i as well (64 KiB apart: a mirror copies whole chunks, a write next to an
# old value would carry it along), so the destination's disk shows whether any write, before or
# during the copy, went missing. An abort mid-copy and a kill -9 of B's QEMU mid-copy
# leave the guest running on A with no mirror job or NBD node left and B clean (the
# target image it made is removed); then the guest moves to B with its disk.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../lib_twohosts.sh"

img=$T_ROOT/img
mkdir -p "$img" "$RB/img"
qemu-img create -q -f qcow2 "$img/data.qcow2" 64M
target=$RB/img/data.qcow2
twohosts 10.252.0 || { not_ok "two hosts (network and PID namespaces)"; finish; }
# nothing of a copy left in A's QEMU: no job, no nbd node
no_mirrorA() {
    qA qmp mg '{"execute": "query-jobs"}' | jqe '. == []' &&
        qA qmp mg '{"execute": "query-named-block-nodes"}' | jqe 'length > 0 and ([.[] | select(.drv == "nbd")] == [])'
}

define_guest mg "qv_agent=0" --disk "file=$img/data.qcow2,serial=DATA,cache=writeback"
uuid=$(qv show mg --json | jq -r .uuid)
qv show mg --json | jq --arg t "$target" '(.disks[] | select(.file | endswith("/data.qcow2")) | .file) = $t' > "$T_ROOT/mgB.json"
dev=$(gdisk DATA)
# /tmp/count says i once COUNT-i is on the disk (fsync'd): a count read is never ahead of it
counter="D=/dev/$dev; i=0; (while :; do i=\$((i+1)); printf 'COUNT-%-506s' \$i | dd of=\$D bs=512 count=1 conv=fsync 2>/dev/null; printf 'COUNT-%-506s' \$i | dd of=\$D bs=512 seek=\$((i*128)) count=1 conv=fsync 2>/dev/null; echo \$i > /tmp/count; sleep 1; done) > /dev/null 2>&1 & true"
# history_on_B N: sectors 128..128*N of B's image hold COUNT-1 .. COUNT-N, none missing; read
# on the host (the guest's page cache would answer from RAM, which migrated anyway)
history_on_B() {
    qemu-img convert -U -f qcow2 -O raw "$target" "$T_ROOT/b.raw" || return 1
    local got
    got=$(dd if="$T_ROOT/b.raw" bs=64K skip=1 count="$1" 2>/dev/null | tr -d ' ' | grep -ao 'COUNT-[0-9]*' | cut -d- -f2 | tr '\n' ' ')
    rm -f "$T_ROOT/b.raw"
    [ "$got" = "$(seq -s ' ' 1 "$1") " ]
}
copying() { qA status mg --json | jqe '.migration.disk_transferred > 1048576 and (.migration.disks_synced | not)'; }

qA start -q mg || { not_ok "the VM starts on A"; finish; }
check "the guest boots on A" wait_until 90 booted
check "it starts its counter" wait_until 30 guest_ok mg "$counter"
check "...which counts" wait_until 30 aboveA 2

# ---- a destination that hears from no source gives up (--timeout), with nothing left ----
check_output "B waits for the source (--copy-storage), bounded (--timeout 2)" "mg: waiting for the source on $B_IP:4720 for 2 s" \
    waitB --listen $B_IP:4720 --definition "$T_ROOT/mgB.json" --copy-storage --timeout 2
check "...B gives up: its supervisor is gone" wait_until 30 noneB
check "...saying why in its log" grep -q 'no source came within 2 s' "$RB/var/log/qvisor/mg.log"
check "...and the transient VM is gone from B's list" sh -c "! nsenter -t $PB -p -m -n -- '$QV_BIN' --root '$RB' list --all | grep -q '^mg '"

# ---- abort mid-copy ----
check_output "B waits for the source (--copy-storage)" "mg: waiting for the source on $B_IP:4721" \
    waitB --listen $B_IP:4721 --definition "$T_ROOT/mgB.json" --copy-storage
check "...no target image yet" test ! -e "$target"
check_error "a source without --copy-storage is refused" 1 \
    "failed: the destination: this destination waits for a copy of local disks .*the guest runs on here" \
    qA migrate mg --to tcp:$B_IP:4721 --token "$(tok)"
check "...B waits on, with no image made" sh -c "test ! -e '$target' && grep -q 'refused a source' '$RB/var/log/qvisor/mg.log'"
(qA migrate mg --to tcp:$B_IP:4721 --token "$(tok)" --copy-storage --bandwidth 1 > "$T_ROOT/m1.out" 2>&1; echo $? > "$T_ROOT/m1.rc") &
check "the disk copy is under way (1 MiB/s)" wait_until 90 copying
check "...into the image B made" test -s "$target"
check_output "migrate --abort" 'being cancelled' qA migrate mg --abort
check "...migrate ends" wait_until 60 test -s "$T_ROOT/m1.rc"
check_output "...saying it was cancelled" 'failed: cancelled; the guest runs on here' cat "$T_ROOT/m1.out"
check "...the guest runs on A" stateA running
n=$(countA)
check "...and counts on" wait_until 30 aboveA "${n:-0}"
check "...no mirror job or NBD node is left on A" wait_until 30 no_mirrorA
check "...and A's log says so" wait_log mg 'copy-storage: the mirrors and NBD nodes are removed' 30
check "B: its QEMU and supervisor are gone" wait_until 60 noneB
check "...and the target image it made is removed" wait_until 30 test ! -e "$target"

# ---- kill -9 of B's QEMU mid-copy ----
check_output "B waits again" 'waiting for the source' \
    qB migrate-incoming mg --listen $B_IP:4722 --definition "$T_ROOT/mgB.json" --copy-storage --token k2
(qA migrate mg --to tcp:$B_IP:4722 --token k2 --copy-storage --bandwidth 1 > "$T_ROOT/m2.out" 2>&1; echo $? > "$T_ROOT/m2.rc") &
check "the disk copy is under way" wait_until 90 copying
bpid=$(qB status mg --json | jq -r .pid)
check "kill -9 of B's QEMU" nsenter -t "$PB" -p -m -- kill -9 "$bpid"
check "...migrate ends" wait_until 60 test -s "$T_ROOT/m2.rc"
check_output "...with an error that says the guest runs on" 'mg: migration to .* failed: .*the guest runs on here' \
    cat "$T_ROOT/m2.out"
check_output "...exit status 1" '^1$' cat "$T_ROOT/m2.rc"
check "...the guest runs on A" stateA running
n=$(countA)
check "...and counts on" wait_until 30 aboveA "${n:-0}"
check "...no mirror job or NBD node is left on A" wait_until 30 no_mirrorA
check "B is cleaned up (no QEMU, no supervisor)" wait_until 60 noneB
check "...and the target image is removed" wait_until 30 test ! -e "$target"

# ---- A -> B with the disk ----
check_output "B waits once more" 'waiting for the source' \
    qB migrate-incoming mg --listen $B_IP:4723 --definition "$T_ROOT/mgB.json" --copy-storage --token k3
before=$(countA)
check_output "migrate --copy-storage --persistent A -> B" \
    "mg migrated to $B_IP:4723 in [0-9]+ ms \\(downtime [0-9]+ ms\\); running there, defined there" \
    qA migrate mg --to tcp:$B_IP:4723 --token k3 --copy-storage --persistent
check "B runs the guest as soon as migrate returns" stateB running
check "...B keeps the definition it runs (the copy's path)" jqe "[.disks[].file] | index(\"$target\")" "$RB/etc/qvisor/vms/mg.json"
check "...it keeps counting from where it was" wait_until 30 aboveB "${before:-0}"
check "...without booting on B" sh -c "! grep -q 'QVISOR-GUEST: ready' '$RB/var/log/qvisor/mg.log'"
now=$(countB)
check "...B's disk holds every value written on A, before and during the copy, and after (1..$now)" \
    history_on_B "${now:-1}"
# the log's order: the NBD server stopped, then the guest continued
nbd_then_cont() {
    awk '/the NBD server is stopped/ && !n { n = NR } /QEMU .* running as pid/ { r = NR } END { exit !(n && r > n) }' \
        "$RB/var/log/qvisor/mg.log"
}
check "...B's log says the NBD server stopped before the guest ran" nbd_then_cont
check "A: shut off, its QEMU and supervisor gone" wait_until 30 noneA
check_output "...and it says why" 'migrated to' qA status mg
check "...its own image stays" test -s "$img/data.qcow2"
check "no sanitizer report in either host's logs" clean_logs
finish
