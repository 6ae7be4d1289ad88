#!/bin/bash
# timeout: 360
# Volumes and running VMs: detach-disk by volume name (POOL/NAME, as attach-disk
# --volume takes it); "used by" of a volume a running VM has attached live only
# (attach-disk without --persistent), which vol delete then refuses; `vol export -` of a
# qcow2 overlay (a raw stream through a temporary file, which Ctrl-C removes); and a
# chain layer replaced between its check and its open at start, which is refused
# instead of being handed to QEMU.
. "$(dirname "$0")/../lib.sh"
IMGS=$T_ROOT/var/lib/qvisor/images
vinfo() { qv vol info "$1" --json | jq -e "$2"; }
marker=QVMARK-$RANDOM$RANDOM

qv vol create -q default/hot --size 8M --format raw
printf '%s' "$marker-hot" | dd of="$IMGS/hot" conv=notrunc status=none
qv vol create -q default/hot2 --size 8M
define_guest vh
qv start -q vh || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 90 guest_ok vh true

# ---- used by: a live-only hotplugged disk ----
check_output "attach-disk --volume, live only" 'disk attached as disk[0-9]+$' qv attach-disk vh --volume default/hot --serial HOT
check "...the guest reads the volume's marker" wait_until 20 guest_ok vh "head -c $((${#marker} + 4)) /dev/$(gdisk HOT) | grep -qx '$marker-hot'"
check "...the definition does not name it" bash -c "'$QV_BIN' --root '$T_ROOT' show vh --json | jq -e '.disks == []'"
check "vol info: used by the running VM that has it attached" vinfo default/hot '.used_by == ["vh (running)"]'
check_output "vol info (text) too" 'used by: +vh \(running\)' qv vol info default/hot
check_error "vol delete of it: conflict naming the VM (exit 4)" 4 'volume default/hot is used by VM vh \(running\)' \
    qv vol delete default/hot
check "...the volume is still there" test -f "$IMGS/hot"
# a qcow2 on a backing volume, attached live: the base is in use too
qv vol create -q default/base --size 8M --format raw
qv vol create -q default/over --backing default/base
qv attach-disk -q vh --volume default/over --serial OVER
check "a live-only disk's backing volume is used by the VM too" vinfo default/base '.used_by == ["vh (running)"]'
check_error "pool undefine of a pool whose volume a running VM has attached live (exit 4)" 4 \
    'pool fast holds volumes of VM vh \(running\)' \
    bash -c "'$QV_BIN' --root '$T_ROOT' pool define -q --name fast --path '$T_ROOT/fast' &&
             '$QV_BIN' --root '$T_ROOT' vol create -q fast/f1 --size 1M &&
             '$QV_BIN' --root '$T_ROOT' attach-disk -q vh --volume fast/f1 --serial F1 &&
             '$QV_BIN' --root '$T_ROOT' pool undefine fast"

# ---- detach-disk POOL/NAME ----
check_output "detach-disk by volume name" '^disk default/hot detached$' qv detach-disk vh default/hot
check "...the guest no longer has it" wait_until 20 guest_ok vh "! grep -qx HOT /sys/block/vd*/serial"
check "...and vol info no longer names the VM" vinfo default/hot '.used_by == []'
check_output "...so vol delete goes through" 'deleted volume default/hot' qv vol delete default/hot
check_output "attach-disk --volume --persistent" 'disk attached as disk[0-9]+ \(and defined\)' \
    qv attach-disk vh --volume default/hot2 --serial HOT2 --persistent
check_output "detach-disk POOL/NAME --persistent: unplugged and gone from the definition" \
    '^disk default/hot2 detached \(and removed from the definition\)$' qv detach-disk vh default/hot2 --persistent
check "...the definition no longer names it" bash -c "'$QV_BIN' --root '$T_ROOT' show vh --json | jq -e '.disks == []'"
check_error "detach-disk of a volume the VM does not have (exit 3)" 3 'vh: no hotplugged disk' qv detach-disk vh default/base
qv kill -q vh
check "once the VM is off, its live-only disks use nothing" vinfo default/base '.used_by == []'

# ---- vol export - of a qcow2 on a chain: a raw stream, through a temporary file ----
printf '%s' "$marker-over" | qemu-io -f qcow2 -c "write -P 0x4f 1M 64k" "$IMGS/over" >/dev/null
qemu-img convert -f qcow2 -O raw "$IMGS/over" "$T_ROOT/over.raw"
check "vol export - of a qcow2 overlay streams the guest's raw view of the whole chain" \
    bash -c "'$QV_BIN' --root '$T_ROOT' vol export default/over - | cmp - '$T_ROOT/over.raw'"
# Ctrl-C while qemu-img converts (a wrapper holds it after the real conversion)
cat > "$T_ROOT/slow-qemu-img" <<'EOS'
#!/bin/bash
if [ "$1" = convert ]; then
    qemu-img "$@" || exit
    echo $$ > "$SLOW_DIR/copying"
    exec sleep 60
fi
exec qemu-img "$@"
EOS
chmod +x "$T_ROOT/slow-qemu-img"
SLOW_DIR=$T_ROOT QVISOR_QEMU_IMG=$T_ROOT/slow-qemu-img "$QV_BIN" --root "$T_ROOT" vol export default/over - \
    > "$T_ROOT/stream.out" 2> "$T_ROOT/stream.err" &
xpid=$!
on_exit "kill -9 $xpid"
check "a streamed export reaches its conversion" wait_until 30 test -s "$T_ROOT/copying"
check "...its raw temporary file is in the pool, hidden" bash -c "ls -A '$IMGS' | grep -qx '\.export-over\.part-$xpid'"
kill -INT "$xpid"
wait "$xpid"; rc=$?
check "SIGINT: exit 1, saying nothing was written (exit $rc)" \
    bash -c "[ $rc -eq 1 ] && grep -q 'vol export default/over: interrupted; nothing was written' '$T_ROOT/stream.err'"
check_not "...the temporary file is gone" bash -c "ls -A '$IMGS' | grep -F .part-"
check_not "...so is the qemu-img child" kill -0 "$(cat "$T_ROOT/copying")"
check "...and nothing reached stdout" test ! -s "$T_ROOT/stream.out"

# ---- a chain layer replaced between its check and its open ----
qv vol create -q default/r0 --size 16M --format raw
printf '%s' "$marker-good" | dd of="$IMGS/r0" conv=notrunc status=none
qv vol create -q default/r1 --backing default/r0
truncate -s 16M "$T_ROOT/evil"
printf '%s' "$marker-EVIL" | dd of="$T_ROOT/evil" conv=notrunc status=none
define_guest vr "" --disk vol=default/r1,serial=RACE
# the supervisor stops once the chains are checked (QVISOR_TEST_STOP_AT), the bottom
# layer is replaced by another file under the same name, and it goes on
env QVISOR_TEST_STOP_AT=disks-resolved "$QV_BIN" --root "$T_ROOT" start vr > "$T_ROOT/race.out" 2>&1 &
st=$!
on_exit "kill -9 $st"
sp_of() { jq -r '.supervisor_pid // 0' "$T_ROOT/run/qvisor/vms/vr/state.json" 2>/dev/null; }
stopped() { local p; p=$(sp_of); [ "${p:-0}" -gt 0 ] && grep -q '^State:.*stopped' "/proc/$p/status"; }
check "the supervisor stops after checking the chain" wait_until 30 stopped
sp=$(sp_of)
mv "$T_ROOT/evil" "$IMGS/r0"
kill -CONT "$sp"
wait "$st"; rc=$?
check "a layer replaced after its check: the start is refused (exit $rc: $(cat "$T_ROOT/race.out"))" \
    bash -c "[ $rc -eq 1 ] && grep -q 'vr: disk $IMGS/r1: backing layer $IMGS/r0 was replaced since its chain was checked' '$T_ROOT/race.out'"
check_not "...no QEMU was started on it" log_has vr 'starting QEMU'
check_output "a start without the race boots, and reads the new bottom layer" '^vr started' qv start vr
check "...the guest reads it" wait_until 90 guest_ok vr "head -c $((${#marker} + 5)) /dev/$(gdisk RACE) | grep -qx '$marker-EVIL'"
qv kill -q vr
finish
