#!/bin/bash
# timeout: 600
# The host's side: `make install`/`uninstall` of the units, tmpfiles.d and sysusers.d
# entries and the generator; `systemd-analyze verify` on every unit; the generator's
# drop-ins; autostart (VMs and networks), `list --all`; `autostart --run` and
# `shutdown-all` (3 VMs, one ignoring ACPI, all gone within the timeout), `shutdown-all
# --save` (managed saves that autostart --run resumes; one that cannot be saved is
# stopped). The units
# under a real systemd: systemd_pid1.sh.
. "$(dirname "$0")/../lib.sh"

# ---- make install / uninstall ----
inst=$T_ROOT/inst
on_exit rm -rf "$inst"
check "make install DESTDIR= PREFIX= succeeds" make -s -C "$T_TOP" install DESTDIR="$inst" PREFIX=/usr
want_files="usr/bin/qvisor usr/lib/systemd/system/qvisor@.service usr/lib/systemd/system/qvisor-net@.service
usr/lib/systemd/system/qvisor-guests.service usr/lib/systemd/system-generators/qvisor-generator
usr/lib/tmpfiles.d/qvisor.conf usr/lib/sysusers.d/qvisor.conf"
missing=
for f in $want_files; do [ -e "$inst/$f" ] || [ -L "$inst/$f" ] || missing="$missing $f"; done
check "...installs the binary, the three units, the generator, tmpfiles.d and sysusers.d (missing:${missing:- none})" test -z "$missing"
check "...the units run the installed binary (@BINDIR@ replaced)" \
    grep -q '^ExecStart=/usr/bin/qvisor run --stop-timeout 60 %i$' "$inst/usr/lib/systemd/system/qvisor@.service"
check "...the generator is qvisor under another name" test "$(readlink "$inst/usr/lib/systemd/system-generators/qvisor-generator")" = /usr/bin/qvisor
check "make uninstall with the same DESTDIR and PREFIX removes all of it" \
    make -s -C "$T_TOP" uninstall DESTDIR="$inst" PREFIX=/usr
check "...nothing but empty directories is left" test -z "$(find "$inst" ! -type d)"

# ---- systemd-analyze verify, on units installed where their binary exists ----
if command -v systemd-analyze >/dev/null; then
    pre=$T_ROOT/prefix
    make -s -C "$T_TOP" install PREFIX="$pre" >/dev/null 2>&1
    # verify exits 0 on a line it ignores: its whole output must be empty
    verify() { local out; out=$(SYSTEMD_UNIT_PATH=$pre/lib/systemd/system: systemd-analyze verify --man=no "$1" 2>&1) && [ -z "$out" ] || { echo "$out"; return 1; }; }
    for u in qvisor@web1.service qvisor-net@default.service qvisor-guests.service; do
        check "systemd-analyze verify $u: no complaint" verify "$u"
    done
    check "systemd-tmpfiles applies qvisor.conf" systemd-tmpfiles --root="$T_ROOT/tmpfiles-root" --create "$pre/lib/tmpfiles.d/qvisor.conf"
    check "...etc/qvisor/secrets is 0700" test "$(stat -c %a "$T_ROOT/tmpfiles-root/etc/qvisor/secrets" 2>&1)" = 700
    mkdir -p "$T_ROOT/sysusers-root/etc"
    check "systemd-sysusers accepts qvisor.conf" systemd-sysusers --root="$T_ROOT/sysusers-root" "$pre/lib/sysusers.d/qvisor.conf"
    check "...and makes group qvisor" grep -q '^qvisor:' "$T_ROOT/sysusers-root/etc/group"
else
    ok "# SKIP systemd-analyze is not installed"
fi

# ---- the generator ----
qv net define -q gn1 --ipv4 10.93.0.1/24 --autostart
qv net define -q gn2 --ipv4 10.94.0.1/24
qv define -q gv1 --memory 128M --kernel "$G_KERNEL" --nic network=gn1 --nic network=gn2 --nic network=gn1
qv define -q gv2 --memory 128M --kernel "$G_KERNEL" --nic user
gen=$T_ROOT/gen
mkdir -p "$gen"
ln -s "$QV_BIN" "$T_ROOT/qvisor-generator"
check "the generator (qvisor called qvisor-generator) exits 0" env QVISOR_GENERATOR_ROOT="$T_ROOT" "$T_ROOT/qvisor-generator" "$gen" /nonexistent /nonexistent
dropin=$gen/qvisor@gv1.service.d/50-qvisor.conf
check "...gv1's unit is ordered after both its networks, each once" \
    test "$(grep -c '^After=qvisor-net@gn[12]\.service$' "$dropin" 2>&1)" = 2
check "...and pulls in the autostart one" grep -qx 'Wants=qvisor-net@gn1.service' "$dropin"
check_not "...but not the one kept down by hand" grep -q 'Wants=qvisor-net@gn2' "$dropin"
check_not "...a VM without networks is ordered after none" grep -q '^After=' "$gen/qvisor@gv2.service.d/50-qvisor.conf"
# its limits (under cgroup v2 QEMU's cgroup is inside the unit's): 128M of guest RAM under
# TCG (accel auto counts as TCG) is 128M + QEMU's overhead (256M + 128M/16 + 32M per vCPU
# + 512M for TCG = 808M) + 128M for the supervisor = 1064M; 512 + 1 vCPU + 64 tasks
check "...gv2's unit has the definition's default limits: MemoryMax=1064M" \
    grep -qx "MemoryMax=$((1064 << 20))" "$gen/qvisor@gv2.service.d/50-qvisor.conf"
check "...and TasksMax=577" grep -qx 'TasksMax=577' "$gen/qvisor@gv2.service.d/50-qvisor.conf"
cat > "$T_ROOT/gv3.json" <<JSON
{"name": "gv3", "memory": "256M", "boot": {"kernel": "$G_KERNEL"},
 "limits": {"memory_max": "2G", "cpu": "150%", "cpu_weight": 200, "pids": 100, "io_weight": 300}}
JSON
qv define -q "$T_ROOT/gv3.json"
env QVISOR_GENERATOR_ROOT="$T_ROOT" "$T_ROOT/qvisor-generator" "$gen" /nonexistent /nonexistent
d3=$gen/qvisor@gv3.service.d/50-qvisor.conf
check "...limits.memory_max 2G + 128M for the supervisor: MemoryMax=2176M" grep -qx "MemoryMax=$((2176 << 20))" "$d3"
check "...limits.pids 100 + 64: TasksMax=164" grep -qx 'TasksMax=164' "$d3"
check "...limits.cpu, cpu_weight and io_weight as CPUQuota=150% CPUWeight=200 IOWeight=300" \
    test "$(grep -E '^(CPUQuota|CPUWeight|IOWeight)=' "$d3" | tr '\n' ' ')" = "CPUQuota=150% CPUWeight=200 IOWeight=300 "
check_exit "the generator refuses a relative output directory" 2 "$T_ROOT/qvisor-generator" relative

# ---- autostart flags ----
check_output "autostart VM" '^gv2: autostart on$' qv autostart gv2
check "...is in the definition" jq -e '.autostart == true' <<< "$(qv show gv2 --json)"
check_output "list --all shows it" '^gv2 +shut off +1 +128M +yes$' qv list --all
check "list --all --json says autostart" jq -e '.[] | select(.name == "gv2") | .autostart == true' <<< "$(qv list --all --json)"
check_output "autostart --disable" '^gv2: autostart off$' qv autostart gv2 --disable
check_output "...list --all shows no" '^gv2 +shut off +1 +128M +no$' qv list --all
check_output "net autostart NET" '^network gn2: autostart on$' qv net autostart gn2
check_output "...net list shows it" '^gn2 .* yes$' qv net list
check_output "net autostart --disable" '^network gn2: autostart off$' qv net autostart gn2 --disable
check_error "autostart of an unknown VM" 3 'no VM named nosuch' qv autostart nosuch
check_error "autostart --run takes no VM" 2 'autostart --run takes no VM' qv autostart gv2 --run
qv undefine gv1 >/dev/null; qv undefine gv2 >/dev/null
# autostart --run would start autostart networks in this (the host's) network
# namespace: none may be defined from here on ("default" autostarts)
for n in $(qv net list --json 2>/dev/null | jq -r '.[].name'); do qv net undefine "$n" >/dev/null; done
check "no network is left defined for autostart --run to start" test -z "$(ls "$T_ROOT/etc/qvisor/networks/" 2>/dev/null)"

# ---- autostart --run, then shutdown-all: three guests, one deaf to ACPI ----
define_guest s1 ""
define_guest s2 "qv_acpi=0"
define_guest s3 ""
define_guest s4 ""      # not autostart: stays off
for v in s1 s2 s3; do qv autostart -q "$v"; done
qv define -q abad --memory 128M --kernel /nonexistent/vmlinuz --nic user
qv autostart -q abad
out=$(qv autostart --run 2>&1); rc=$?
check "autostart --run fails when one VM cannot start ($rc)" test "$rc" -eq 1
check "...and names it with its reason" grep -q 'abad: boot.kernel /nonexistent/vmlinuz: No such file' <<< "$out"
check "...while the others started" bash -c "grep -q '^s1 started' <<< '$out' && grep -q '^s2 started' <<< '$out' && grep -q '^s3 started' <<< '$out'"
check_output "...list shows the three running" '^s3 +running' qv list
check "...and s4, without autostart, shut off" state_is s4 "shut off"
qv autostart -q abad --disable
check "a second autostart --run starts nothing" test -z "$(qv autostart --run 2>&1)"
for v in s1 s2 s3; do wait_log "$v" 'QVISOR-GUEST: ready' 90; done
start=$(date +%s)
out=$(qv shutdown-all --timeout 4 2>&1); rc=$?
took=$(( $(date +%s) - start ))
check "shutdown-all --timeout 4 exits 0 ($rc)" test "$rc" -eq 0
check "...each VM stopped" bash -c "[ \$(grep -c ' stopped$' <<< '$out') -eq 3 ]"
check "...within the timeout and the forced part, not hanging: $took s <= 4 + 40" test "$took" -le 44
for v in s1 s2 s3; do check "...$v shut off" state_is "$v" "shut off"; done
check "...the deaf one was forced after the timeout" log_has s2 'the guest did not power off in time'
check_not "...the others powered off by themselves" log_has s1 'the guest did not power off in time'
# log lines start with an ISO time stamp: compared as text
ts_of() { grep -a -- "$2" "$T_ROOT/var/log/qvisor/$1.log" | tail -1 | cut -d' ' -f1; }
earlier() { [ -n "$1" ] && [ -n "$2" ] && [[ $1 < $2 ]] || { echo "'$1' is not before '$2'"; return 1; }; }
check "...in parallel: s3 got the button before s2's timeout ran out" \
    earlier "$(ts_of s3 'stopping: ACPI power button')" "$(ts_of s2 'did not power off in time')"
check_output "shutdown-all with nothing running" '^no VM is running$' qv shutdown-all

# ---- shutdown-all --save: managed saves, resumed by autostart --run ----
# s4 has no autostart: only the save's mark brings it back. s5 has a virtiofs share,
# which QEMU 7.2 cannot migrate: its save fails and it is stopped instead.
mkdir -p "$T_ROOT/sh5"
define_guest s5 "" --share "$T_ROOT/sh5"
for v in s1 s4 s5; do qv start -q "$v"; done
for v in s1 s4 s5; do wait_log "$v" 'QVISOR-GUEST: ready' 90; done
up_of() { gsh "$1" 'cut -d. -f1 /proc/uptime' | grep -Eo '^[0-9]+$' | head -1; }
up1=$(up_of s1)
out=$(qv shutdown-all --save --timeout 30 2>&1); rc=$?
check "shutdown-all --save exits 1 when one VM could not be saved ($rc)" test "$rc" -eq 1
check "...s1 and s4 saved" bash -c "grep -qx 's1 saved' <<< '$out' && grep -qx 's4 saved' <<< '$out'"
check "...s5 stopped instead, and that is said" bash -c "grep -qx 's5 stopped (not saved)' <<< '$out' && grep -q 'could not be saved and was stopped instead (s5)' <<< '$out'"
check_output "...list --all shows s4 saved" '^s4 +saved' qv list --all
check "...s5 is shut off" state_is s5 "shut off"
qv undefine -q s5
out=$(qv autostart --run 2>&1)
check "autostart --run resumes the saved VMs, s4 without autostart too" \
    bash -c "grep -qx 's1 started from its managed save' <<< '$out' && grep -qx 's4 started from its managed save' <<< '$out'"
u1=$(up_of s1)
check "...s1's guest did not boot again (uptime $up1 s before the save, $u1 s after)" test "${u1:-0}" -ge "${up1:-999999}"
check "...the marks are gone: a second autostart --run starts nothing" test -z "$(qv autostart --run 2>&1)"
qv shutdown-all -q --timeout 10

finish
