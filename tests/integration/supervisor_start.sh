#!/bin/bash
# timeout: 660
# A start runs in the supervisor's loop, like everything else: while QEMU is held
# before its monitor answers (QVISOR_TEST_HOLD_QEMU stops it right after exec), or
# while an autostart network's dnsmasq takes its time (a stub that sleeps, bound
# over /usr/sbin/dnsmasq in a mount namespace of this test), `status` answers at
# once and says "starting"; requests that would reach QEMU before its set-up are
# refused; a stop ends the start; an on_crash restart is served the same way.
# The synchronous code answered nothing until QEMU's handshake or the network start
# was over (30 s / 60 s at worst).
. "$(dirname "$0")/../lib.sh"

started_within() {    # NAME: state "starting" shows within 10 s
    wait_until 10 state_is "$1" starting
}

# ---- a first start held before QEMU's monitor answers ----
define_guest held
QVISOR_TEST_HOLD_QEMU=1 qv start held > "$T_ROOT/start.out" 2>&1 &
starter=$!
check "the held start is under way" started_within held
qpid=$(vm_pid held)
on_exit "kill -CONT $qpid"
check "...QEMU is held (stopped)" grep -q '^State:.*stopped' "/proc/$qpid/status"
check "status answers during the start" answers status held --json
check "...and says starting" grep -q '"state": "starting"' "$T_ROOT/out"
check_error "pause is refused while the set-up is not done" 4 'held is starting; try again once it runs' qv pause held
check "start has not returned: the guest is not running yet" kill -0 "$starter"
kill -CONT "$qpid"
wait "$starter"
check "once QEMU goes on, start returns success" test $? -eq 0
check "...the VM runs" state_is held running
check "...and the guest boots" wait_until 90 guest_ok held true
qv kill held >/dev/null 2>&1

# ---- a stop during a held start ends it ----
QVISOR_TEST_HOLD_QEMU=1 qv start held > "$T_ROOT/start.out" 2>&1 &
starter=$!
started_within held
qpid=$(vm_pid held)
on_exit "kill -CONT $qpid"
check "stop --force answers during the start" answers stop held --force
wait "$starter"
rc=$?
check "...the start then fails" test "$rc" -ne 0
check_output "...saying it was stopped before the guest ran" 'stopped \(forced\) before it ran' cat "$T_ROOT/start.out"
check "...the VM is shut off" state_is held "shut off"
check "...and its QEMU is gone" wait_until 10 sh -c "! kill -0 $qpid 2>/dev/null"
qv undefine held >/dev/null

# ---- an on_crash restart held the same way ----
define_guest phoenix "" --on-crash restart
QVISOR_TEST_HOLD_QEMU=1 qv start phoenix > /dev/null 2>&1 &
starter=$!
started_within phoenix
qpid=$(vm_pid phoenix)
kill -CONT "$qpid"
wait "$starter"
check "the guest boots" wait_until 90 guest_ok phoenix true
kill -9 "$qpid"
check "after a crash the restart holds its new QEMU" wait_until 30 log_has phoenix 'test: holding QEMU pid'
check "...state starting" started_within phoenix
qpid2=$(vm_pid phoenix)
on_exit "kill -CONT $qpid2"
check "...a new QEMU" test -n "$qpid2" -a "$qpid2" != "$qpid"
check "status answers during the restart" answers status phoenix --json
check "...and says starting" grep -q '"state": "starting"' "$T_ROOT/out"
kill -CONT "$qpid2"
check "once it goes on the VM runs again" wait_until 30 state_is phoenix running
check "...and the guest boots again" wait_until 90 guest_ok phoenix true
qv kill phoenix >/dev/null 2>&1

# ---- a snapshot disk: its throw-away overlay is made by a watched qemu-img ----
mkdir -p "$T_ROOT/img"
printf 'BASE-MARKER' | dd of="$T_ROOT/img/base.raw" bs=1M seek=0 conv=notrunc 2>/dev/null
truncate -s 16M "$T_ROOT/img/base.raw"
sum_before=$(md5sum < "$T_ROOT/img/base.raw")
define_guest snap "" --disk "file=$T_ROOT/img/base.raw,snapshot=on,serial=SNAP"
check "a VM with a snapshot disk starts" qv start -q snap
check "...its supervisor made the overlay with a watched qemu-img" log_has snap 'disk0: making its throw-away overlay'
check "...and unlinked it once QEMU held it" test -z "$(ls -A "$T_ROOT/var/lib/qvisor/overlays")"
snapdev=/dev/$(gdisk SNAP)
check "the guest reads the base image through the overlay" wait_until 90 guest_ok snap \
    "head -c 11 $snapdev | grep -q BASE-MARKER"
check "...and writes to the overlay" guest_ok snap \
    "printf GUEST-WROTE | dd of=$snapdev conv=fsync 2>/dev/null && head -c 11 $snapdev | grep -q GUEST-WROTE"
qv stop -q snap --force >/dev/null 2>&1
check "the base image is untouched" test "$(md5sum < "$T_ROOT/img/base.raw")" = "$sum_before"
qv undefine snap >/dev/null

# ---- an autostart network whose dnsmasq is slow ----
net_world || { not_ok "network namespaces"; finish; }
cp /usr/sbin/dnsmasq "$T_ROOT/dnsmasq.real"
# it leaves dnsmasq.woke behind once it stops sleeping: an answer given while that is
# absent was given while the network start still waited
printf '#!/bin/sh\nsleep 6\ntouch %s\nexec %s "$@"\n' "$T_ROOT/dnsmasq.woke" "$T_ROOT/dnsmasq.real" > "$T_ROOT/dnsmasq.slow"
chmod 755 "$T_ROOT/dnsmasq.slow"
# qs: qn in a mount namespace where /usr/sbin/dnsmasq is the slow stub; the
# supervisors it starts (VM, `net start`, the network's own) inherit it
qs() {
    unshare --mount --propagation private sh -c 'mount --bind "$1" /usr/sbin/dnsmasq && shift && exec "$@"' \
        sh "$T_ROOT/dnsmasq.slow" ip netns exec "$T_NS" "$QV_BIN" --root "$T_ROOT" "$@"
}
qn net define -q slow --ipv4 10.87.0.1/24 --dhcp 10.87.0.100,10.87.0.200 --autostart
qn net define -q slow2 --ipv4 10.88.0.1/24 --dhcp 10.88.0.100,10.88.0.200 --autostart
on_exit "ip netns exec $T_NS '$QV_BIN' --root '$T_ROOT' net stop slow2"
on_exit "ip netns exec $T_NS '$QV_BIN' --root '$T_ROOT' net stop slow"
define_net_guest sn slow
qs start sn > "$T_ROOT/start.out" 2>&1 &
starter=$!
check "the VM's start starts its autostart network" wait_log sn 'starting network slow \(autostart\)' 10
check "status answers while the network starts" answers status sn --json
check "...before the slow dnsmasq woke" test ! -e "$T_ROOT/dnsmasq.woke"
check "...and says starting" grep -q '"state": "starting"' "$T_ROOT/out"
check "...start is still waiting for the slow dnsmasq" kill -0 "$starter"
wait "$starter"
check "start returns once the network is up" test $? -eq 0
check_output "...the network runs" '^slow +running' qn net list
check "...and the VM runs" state_is sn running

# attach-nic on a second autostart network, started through the same slow stub
rm -f "$T_ROOT/dnsmasq.woke"
qs attach-nic sn --network slow2 > "$T_ROOT/attach.out" 2>&1 &
attacher=$!
check "attach-nic starts its autostart network" wait_log sn 'starting network slow2 \(autostart\)' 10
check "status answers while that network starts" answers status sn --json
check "...before the slow dnsmasq woke" test ! -e "$T_ROOT/dnsmasq.woke"
check "...the attach is still waiting" kill -0 "$attacher"
wait "$attacher"
check_output "...and finishes once the network is up" 'attached as nic[0-9]+' cat "$T_ROOT/attach.out"
qn kill sn >/dev/null 2>&1
finish
