#!/bin/bash
# timeout: 420
# The units under a real systemd: systemd 252 boots as PID 1 of private PID, mount,
# cgroup and network namespaces, on a throw-away root (an overlay over / with its upper
# layer on a tmpfs, fresh /run and /tmp: its boot jobs must not touch the host's), its
# cgroups in a subtree of their own that the test removes. Its cgroups are v2 (unified),
# as on hosts in the field: a subtree of this host's cgroup2 mount, which has no
# controllers here (they are all v1's), so limits are not enforced, but the layout is
# the field's. qvisor is installed there with `make install`, and then:
#   systemctl start qvisor@VM -> READY only once the guest runs; its autostart
#     network started as its own unit (qvisor-net@NET), not inside the VM's cgroup;
#     QEMU's cgroup is inside the unit's (UNIT/qemu), where systemd sees it;
#   the generator, after daemon-reload, gives the VM's unit that network and its limits;
#   a hung (SIGSTOPped) supervisor is killed by the watchdog and restarted; the guest
#     lives on and the new supervisor reattaches;
#   systemctl kill -s KILL --kill-who=main -> QEMU survives, the restarted unit
#     reattaches;
#   systemctl stop -> ACPI power-off, not a forced stop.
# Where systemd cannot boot here, the test skips with the reason systemd gave.
. "$(dirname "$0")/../lib.sh"

SYSTEMD=/lib/systemd/systemd
if [ ! -x "$SYSTEMD" ] || ! command -v unshare >/dev/null || ! command -v nsenter >/dev/null; then
    ok "# SKIP no $SYSTEMD, unshare or nsenter"; finish
fi
if [ -d /run/systemd/system ]; then
    # a host systemd would see our cgroups; the test is written for sandboxes without one
    ok "# SKIP the host runs systemd itself"; finish
fi

id=qvsd-${T_ROOT##*.}
W=$T_ROOT/sd
mkdir -p "$W"
mkdir -p "$W/cg2"
if ! mount -t cgroup2 none "$W/cg2" 2>/dev/null; then
    ok "# SKIP no cgroup2 file system to give systemd a unified hierarchy"; finish
fi
umount "$W/cg2"

sd_cleanup() {
    local pid
    pid=$(cat "$W/pid1" 2>/dev/null)
    # PID 1 of the namespace: SIGKILL takes every process of the namespace with it
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    [ -n "$pid" ] && for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    # the container's v2 hierarchy
    mkdir -p "$W/cg2"
    if mount -t cgroup2 none "$W/cg2" 2>/dev/null; then
        [ -d "$W/cg2/$id" ] && find "$W/cg2/$id" -depth -type d -exec rmdir {} + 2>/dev/null
        umount "$W/cg2"
    fi
}
on_exit sd_cleanup

# The namespace's first process: join a v2 cgroup of our own, then new PID and cgroup
# namespaces (that cgroup their root), and systemd as PID 1 on the throw-away root.
cat > "$W/enter.sh" <<INNER
#!/bin/bash
set -e
mkdir -p $W/cg2
mount -t cgroup2 none $W/cg2
mkdir -p $W/cg2/$id && echo \$\$ > $W/cg2/$id/cgroup.procs
umount $W/cg2
exec unshare --pid --fork --mount --cgroup --net --propagation private $W/boot.sh
INNER
cat > "$W/boot.sh" <<INNER
#!/bin/bash
set -e
# this process becomes systemd; /proc is still the host's: its pid out there
read -r outer _ < /proc/self/stat
echo \$outer > $W/pid1
O=$W/ovl
mkdir -p \$O
mount -t tmpfs -o mode=755 tmpfs \$O
mkdir -p \$O/upper \$O/work \$O/m
mount -t overlay overlay -o lowerdir=/,upperdir=\$O/upper,workdir=\$O/work \$O/m
M=\$O/m
mount --rbind /dev \$M/dev
mount -t proc proc \$M/proc
mount -t sysfs sysfs \$M/sys
# the cgroup namespace's root: this process's cgroup2 directory
mount -t cgroup2 none \$M/sys/fs/cgroup
mount -t tmpfs tmpfs \$M/run
mount -t tmpfs tmpfs \$M/tmp
# a checkout or build under /tmp (a clean clone there) stays visible: the guest's kernel
for d in $T_TOP $T_BUILD; do
    case \$d in /tmp/*) mkdir -p \$M\$d && mount --bind \$d \$M\$d ;; esac
done
# qvisor as a package installs it, and this test's settings
make -s -C $T_TOP install DESTDIR=\$M PREFIX=/usr/local BUILD=$T_BUILD >/dev/null
mkdir -p \$M/etc/qvisor \$M/etc/systemd/system/qvisor@.service.d
echo '{"accel": "tcg"}' > \$M/etc/qvisor/host.json
cat > \$M/etc/systemd/system/qvisor@.service.d/test.conf <<'CONF'
[Service]
ExecStart=
ExecStart=/usr/local/bin/qvisor run --stop-timeout 20 %i
TimeoutStopSec=40
WatchdogSec=6
TimeoutAbortSec=3
RestartSec=1
CONF
# nothing of the host's boot but what we need
ln -sf /dev/null \$M/etc/systemd/system/nvmf-autoconnect.service
cd \$M
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
exec $SYSTEMD --system --show-status=no
INNER
chmod +x "$W/enter.sh" "$W/boot.sh"
setsid unshare --mount --propagation private "$W/enter.sh" > "$W/boot.log" 2>&1 < /dev/null &
launcher=$!
# PID 1's pid out here, as boot.sh wrote it before it became systemd
pid1=
for _ in $(seq 150); do
    pid1=$(cat "$W/pid1" 2>/dev/null)
    [ -n "$pid1" ] && [ "$(cat /proc/$pid1/comm 2>/dev/null)" = systemd ] && break
    kill -0 $launcher 2>/dev/null || break
    sleep 0.2
done
[ "$(cat /proc/$pid1/comm 2>/dev/null)" = systemd ] || pid1=
if [ -z "$pid1" ]; then
    ok "# SKIP systemd did not start as PID 1 of a private PID namespace: $(tail -3 "$W/boot.log" | tr '\n' ' ')"
    finish
fi

in_sd() { timeout "${SD_TIMEOUT:-60}" nsenter -t "$pid1" -a "$@"; }
sq() { in_sd /usr/local/bin/qvisor "$@"; }
up() { local s; s=$(in_sd systemctl is-system-running 2>/dev/null); [ "$s" = running ] || [ "$s" = degraded ]; }
if ! wait_until 90 up; then
    ok "# SKIP systemd as PID 1 did not finish booting in 90 s: $(in_sd systemctl --failed --no-legend 2>&1 | head -3 | tr '\n' ' ')"
    finish
fi
ok "systemd boots as PID 1 of private PID/mount/cgroup/net namespaces ($(in_sd systemctl is-system-running))"

# ---- start: READY once the guest runs; its network as its own unit ----
sq net define -q sdnet --ipv4 10.96.0.1/24 --dhcp 10.96.0.100,10.96.0.200 --autostart
sq define -q sdvm --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND" --nic network=sdnet
SD_TIMEOUT=150 check "systemctl start qvisor@sdvm returns" in_sd systemctl start qvisor@sdvm
st=$(sq status sdvm --json 2>&1)
check "...and the guest runs as it returns (READY=1 came after cont)" jq -e '.state == "running"' <<< "$st"
check_output "...the unit is active (running)" '^active$' in_sd systemctl is-active qvisor@sdvm
if [ "$(in_sd systemctl is-active qvisor@sdvm 2>/dev/null)" != active ]; then
    # everything below needs the running unit: stop here, within the test's time, so
    # that the clean-up (which takes the whole namespace down) runs
    diag "$(in_sd journalctl -u qvisor@sdvm --no-pager -n 12 2>&1)"
    finish
fi
qpid=$(json_field "$st" pid)
spid=$(in_sd systemctl show -p MainPID --value qvisor@sdvm)
check "...its MainPID is the supervisor ($spid)" test "$spid" = "$(json_field "$st" supervisor_pid)"
check_output "...systemd runs on a unified (v2) hierarchy" '^cgroup2fs$' in_sd stat -f -c %T /sys/fs/cgroup
check "...QEMU's cgroup is inside the unit's: $(in_sd cat /proc/$qpid/cgroup 2>&1)" \
    grep -qx '0::/system.slice/system-qvisor.slice/qvisor@sdvm.service/qemu' <<< "$(in_sd cat /proc/$qpid/cgroup 2>&1)"
check "...the supervisor stays in the unit's own (systemd restarts it there)" \
    grep -qx '0::/system.slice/system-qvisor.slice/qvisor@sdvm.service' <<< "$(in_sd cat /proc/$spid/cgroup 2>&1)"
check_output "...systemctl status lists QEMU among the unit's processes" "$qpid .*qemu-system" \
    in_sd systemctl status --no-pager -l qvisor@sdvm
check_output "...the supervisor's log says where QEMU runs" 'cgroup: QEMU runs in .*qvisor@sdvm.service/qemu, inside this unit' sq logs sdvm
check_output "...the autostart network runs as its own unit" '^active$' in_sd systemctl is-active qvisor-net@sdnet
netpid=$(in_sd systemctl show -p MainPID --value qvisor-net@sdnet)
check "...not in the VM's cgroup: $(in_sd cat /proc/$netpid/cgroup 2>&1)" \
    grep -qx '0::/system.slice/system-qvisor\\x2dnet.slice/qvisor-net@sdnet.service' <<< "$(in_sd cat /proc/$netpid/cgroup 2>&1)"
check "...the supervisor says so" grep -q 'started network sdnet (autostart) as its unit qvisor-net@sdnet.service' <<< "$(sq logs sdvm 2>&1)"

# ---- the generator, run by daemon-reload ----
in_sd systemctl daemon-reload
check_output "after daemon-reload, the generator gives the VM's unit its network (Wants)" 'qvisor-net@sdnet\.service' \
    in_sd systemctl show -p Wants --value qvisor@sdvm
check_output "...and orders it after it" 'qvisor-net@sdnet\.service' in_sd systemctl show -p After --value qvisor@sdvm
# 192M under TCG: 192M + (256M + 12M + 32M + 512M) + 128M for the supervisor = 1132M
check_output "...and gives it the definition's limits (MemoryMax=1132M)" "^$((1132 << 20))\$" \
    in_sd systemctl show -p MemoryMax --value qvisor@sdvm

alive() { in_sd kill -0 "$qpid"; }
new_main() { local m; m=$(in_sd systemctl show -p MainPID --value qvisor@sdvm); [ -n "$m" ] && [ "$m" != 0 ] && [ "$m" != "$1" ] && [ "$(in_sd systemctl is-active qvisor@sdvm)" = active ]; }
reattached() { jq -e --arg p "$qpid" '.state == "running" and (.pid | tostring) == $p and .supervisor_pid > 0' <<< "$(sq status sdvm --json 2>/dev/null)" >/dev/null; }

# ---- the watchdog: a hung supervisor ----
in_sd kill -STOP "$spid"
check "a SIGSTOPped supervisor is killed by the watchdog and the unit restarted" wait_until 60 new_main "$spid"
check_output "...systemd says why" '[Ww]atchdog' in_sd journalctl -u qvisor@sdvm --no-pager -q
check "...QEMU lived on" alive
check "...the new supervisor reattached to it" wait_until 30 reattached
spid=$(in_sd systemctl show -p MainPID --value qvisor@sdvm)
check "...QEMU is still in the unit's qemu cgroup" \
    grep -qx '0::/system.slice/system-qvisor.slice/qvisor@sdvm.service/qemu' <<< "$(in_sd cat /proc/$qpid/cgroup 2>&1)"

# ---- the supervisor killed: QEMU stays ----
check "systemctl kill -s KILL --kill-who=main" in_sd systemctl kill -s KILL --kill-who=main qvisor@sdvm
check "...the unit is restarted" wait_until 30 new_main "$spid"
check "...QEMU survived" alive
check "...and the restarted unit reattached to it" wait_until 30 reattached
check_output "...NRestarts counts both" '^2$' in_sd systemctl show -p NRestarts --value qvisor@sdvm

# ---- stop: the ACPI power button ----
wait_until 90 bash -c "grep -q 'QVISOR-GUEST: ready' <<< \"\$(nsenter -t $pid1 -a /usr/local/bin/qvisor logs sdvm 2>/dev/null)\""
SD_TIMEOUT=60 check "systemctl stop qvisor@sdvm" in_sd systemctl stop qvisor@sdvm
logs=$(sq logs sdvm 2>&1)
check "...pressed the ACPI power button" grep -q 'stopping: ACPI power button' <<< "$logs"
check_not "...and the guest powered off by itself (no forced quit)" grep -q 'did not power off in time' <<< "$logs"
check "...QEMU is gone" bash -c "! nsenter -t $pid1 -a kill -0 $qpid 2>/dev/null"
check "...and so is its cgroup" bash -c "! nsenter -t $pid1 -a test -d '/sys/fs/cgroup/system.slice/system-qvisor.slice/qvisor@sdvm.service/qemu'"
check_output "...the unit is inactive, not failed" '^ActiveState=inactive Result=success$' \
    bash -c "nsenter -t $pid1 -a systemctl show -p ActiveState -p Result qvisor@sdvm | sort | paste -sd ' '"

# ---- autostart under systemd: units enabled, autostart --run and shutdown-all on units ----
check_output "autostart VM enables its unit" 'autostart on, unit enabled: qvisor@sdvm\.service' sq autostart sdvm
check_output "...systemctl agrees" '^enabled$' in_sd systemctl is-enabled qvisor@sdvm
check_output "net autostart NET enables the network's unit" 'unit enabled: qvisor-net@sdnet\.service' sq net autostart sdnet
in_sd systemctl stop qvisor-net@sdnet
out=$(SD_TIMEOUT=150 sq autostart --run 2>&1)
check "autostart --run starts the network, then the VM, both as units" \
    test "$(paste -sd ' ' <<< "$out")" = "network sdnet started as qvisor-net@sdnet.service sdvm started as qvisor@sdvm.service"
check_output "...the VM's unit is active" '^active$' in_sd systemctl is-active qvisor@sdvm
check_output "...and the network's" '^active$' in_sd systemctl is-active qvisor-net@sdnet
SD_TIMEOUT=60 check_output "shutdown-all stops a VM that runs as a unit" '^sdvm stopped$' sq shutdown-all --timeout 20
# "stopped" is the VM's state: its supervisor (the unit's main process) may still be on its way out
unit_settled() { ! nsenter -t "$pid1" -a systemctl show -p ActiveState --value qvisor@sdvm | grep -qE 'deactivating|activating'; }
check "...its unit settles" wait_until 30 unit_settled
check_output "...inactive, not failed (no restart)" '^ActiveState=inactive Result=success$' \
    bash -c "nsenter -t $pid1 -a systemctl show -p ActiveState -p Result qvisor@sdvm | sort | paste -sd ' '"
check_output "autostart --disable disables the unit" 'autostart off, unit disabled' sq autostart sdvm --disable
check_output "...systemctl agrees" '^disabled$' in_sd systemctl show -p UnitFileState --value qvisor@sdvm

finish
