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

img=$T_ROOT/img
mkdir -p "$img" "$T_ROOT/hostb/img"
qemu-img create -q -f qcow2 "$img/data.qcow2" 64M
RB=$T_ROOT/hostb
mkdir -p "$RB/etc/qvisor"
printf '{"cgroup_parent": "%s-b"}\n' "$T_CGROUP" > "$RB/etc/qvisor/host.json"
NA=qsa${T_ROOT##*.}
NB=qsb${T_ROOT##*.}
A_IP=10.252.0.1
B_IP=10.252.0.2
target=$RB/img/data.qcow2

host() {
    ip netns add "$1" || return 1
    ip -n "$1" link set lo up
    ip netns exec "$1" unshare --pid --fork --mount-proc bash -c 'while :; do sleep 1; done' 2> /dev/null &
    local holder=$! init=
    local i
    for i in $(seq 50); do init=$(pgrep -P "$holder") && break; sleep 0.1; done
    [ -n "$init" ] || return 1
    printf -v "$2" %s "$init"
    on_exit "kill -9 $init; ip netns del $1"
}
host "$NA" PA && host "$NB" PB || { not_ok "two hosts (network and PID namespaces)"; finish; }
ip link add sa netns "$NA" type veth peer name sb netns "$NB"
ip -n "$NA" addr add $A_IP/24 dev sa && ip -n "$NA" link set sa up
ip -n "$NB" addr add $B_IP/24 dev sb && ip -n "$NB" link set sb up
qA() { nsenter -t "$PA" -p -m -n -- "$QV_BIN" --root "$T_ROOT" "$@"; }
qB() { nsenter -t "$PB" -p -m -n -- "$QV_BIN" --root "$RB" "$@"; }
stateA() { [ "$(qA status mg --json 2>/dev/null | jq -r .state)" = "$1" ]; }
stateB() { [ "$(qB status mg --json 2>/dev/null | jq -r .state)" = "$1" ]; }
noneA() { ! nsenter -t "$PA" -p -m -- pgrep -f -- "-uui[d] $uuid| [r]un mg" > /dev/null; }
noneB() { ! nsenter -t "$PB" -p -m -- pgrep -f -- "-uui[d] $uuid| [r]un mg" > /dev/null; }
# nothing of a copy left in A's QEMU: no job, no nbd node
no_mirrorA() {
    qA qmp mg '{"execute": "query-jobs"}' | jq -e '. == []' > /dev/null &&
        qA qmp mg '{"execute": "query-named-block-nodes"}' | jq -e 'length > 0 and ([.[] | select(.drv == "nbd")] == [])' > /dev/null
}

define_guest mg "" --disk "file=$img/data.qcow2,serial=DATA,cache=writeback"
uuid=$(qv show mg --json | jq -r .uuid)
qv show mg --json | jq --arg t "$target" '(.disks[] | select(.file | endswith("/data.qcow2")) | .file) = $t' > "$T_ROOT/mgB.json"
dev="\$(for d in /sys/block/vd*; do grep -qx DATA \$d/serial 2>/dev/null && echo \${d##*/}; done)"
gA() { gsh mg "$1"; }
gB() { T_ROOT=$RB gsh mg "$1"; }
countA() { gA 'cat /tmp/count' | grep -E '^[0-9]+$' | tail -1; }
countB() { gB 'cat /tmp/count' | grep -E '^[0-9]+$' | tail -1; }
aboveA() { local n; n=$(countA); [ -n "$n" ] && [ "$n" -gt "$1" ]; }
aboveB() { local n; n=$(countB); [ -n "$n" ] && [ "$n" -gt "$1" ]; }
booted() { [ "$(count_log mg 'QVISOR-GUEST: ready')" -ge 1 ]; }
counter="D=/dev/$dev; i=0; (while :; do i=\$((i+1)); echo \$i > /tmp/count; printf 'COUNT-%-506s' \$i | dd of=\$D bs=512 count=1 conv=fsync 2>/dev/null; printf 'COUNT-%-506s' \$i | dd of=\$D bs=512 seek=\$((i*128)) count=1 conv=fsync 2>/dev/null; sleep 1; done) > /dev/null 2>&1 & true"
# history_on_B N: sectors 128..128*N of B's image hold COUNT-1 .. COUNT-N, none missing; read
# on the host (the guest's page cache would answer from RAM, which migrated anyway)
history_on_B() {
    qemu-img convert -U -f qcow2 -O raw "$target" "$T_ROOT/b.raw" || return 1
    local got
    got=$(dd if="$T_ROOT/b.raw" bs=64K skip=1 count="$1" 2>/dev/null | tr -d ' ' | grep -ao 'COUNT-[0-9]*' | cut -d- -f2 | tr '\n' ' ')
    rm -f "$T_ROOT/b.raw"
    [ "$got" = "$(seq -s ' ' 1 "$1") " ]
}
copying() { qA status mg --json | jq -e '.migration.disk_transferred > 1048576 and (.migration.disks_synced | not)' > /dev/null; }

qA start -q mg || { not_ok "the VM starts on A"; finish; }
check "the guest boots on A" wait_until 90 booted
check "it starts its counter" wait_until 30 guest_ok mg "$counter"
check "...which counts" wait_until 30 aboveA 2

# ---- abort mid-copy ----
check_output "B waits for the source (--copy-storage)" "mg: waiting for the source on $B_IP:4721" \
    qB migrate-incoming mg --listen $B_IP:4721 --definition "$T_ROOT/mgB.json" --copy-storage
check "...no target image yet" test ! -e "$target"
(qA migrate mg --to tcp:$B_IP:4721 --copy-storage --bandwidth 1 > "$T_ROOT/m1.out" 2>&1; echo $? > "$T_ROOT/m1.rc") &
check "the disk copy is under way (1 MiB/s)" wait_until 90 copying
check "...into the image B made" test -s "$target"
check_output "migrate --abort" 'being cancelled' qA migrate mg --abort
check "...migrate ends" wait_until 60 test -s "$T_ROOT/m1.rc"
check_output "...saying it was cancelled" 'failed: cancelled; the guest runs on here' cat "$T_ROOT/m1.out"
check "...the guest runs on A" stateA running
n=$(countA)
check "...and counts on" wait_until 30 aboveA "${n:-0}"
check "...no mirror job or NBD node is left on A" wait_until 30 no_mirrorA
check "B: its QEMU and supervisor are gone" wait_until 60 noneB
check "...and the target image it made is removed" wait_until 30 test ! -e "$target"

# ---- kill -9 of B's QEMU mid-copy ----
check_output "B waits again" 'waiting for the source' \
    qB migrate-incoming mg --listen $B_IP:4722 --definition "$T_ROOT/mgB.json" --copy-storage
(qA migrate mg --to tcp:$B_IP:4722 --copy-storage --bandwidth 1 > "$T_ROOT/m2.out" 2>&1; echo $? > "$T_ROOT/m2.rc") &
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
    qB migrate-incoming mg --listen $B_IP:4723 --definition "$T_ROOT/mgB.json" --copy-storage
before=$(countA)
check_output "migrate --copy-storage A -> B" "mg migrated to $B_IP:4723 in [0-9]+ ms \\(downtime [0-9]+ ms\\)" \
    qA migrate mg --to tcp:$B_IP:4723 --copy-storage
check "B runs the guest" wait_until 30 stateB running
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
finish
