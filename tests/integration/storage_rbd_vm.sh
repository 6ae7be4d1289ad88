#!/bin/bash
# timeout: 400
# VM disks on RBD volumes, on a throwaway single-node Ceph (tests/ceph/cluster): the
# test guest boots with an rbd data disk that QEMU's rbd driver opens over the network
# (monitors, user and key-secret given explicitly; the cephx key read by QEMU from a
# sealed memfd), writes a marker the cluster then holds, gets a second rbd disk hotplugged,
# sees an online resize, and the key appears nowhere: not under the root (but for the
# secret's own value file), not in the logs, argv, show, nor in /proc/*/cmdline or
# environ of the supervisor and QEMU. QEMU keeps the host's network for the cluster, and
# an nft filter on its uid lets it reach the monitors and OSDs and nothing else.
. "$(dirname "$0")/../lib.sh"

ceph_dir=$(mktemp -d /tmp/qvceph.XXXXXX)
on_exit "'$T_TOP/tests/ceph/cluster' stop '$ceph_dir/c'; rm -rf '$ceph_dir'"
env_out=$("$T_TOP/tests/ceph/cluster" start "$ceph_dir/c") || { not_ok "a Ceph cluster starts"; finish; }
eval "$env_out"
ok "a Ceph cluster starts ($CEPH_MON)"
admin() { timeout 60 "$@" --conf "$CEPH_CONF" --keyring "$CEPH_ADMIN_KEYRING"; }

qv secret define -q ceph-libvirt --usage ceph:client.libvirt >/dev/null
printf '%s\n' "$CEPH_KEY" | qv secret set-value ceph-libvirt
cat > "$T_ROOT/pool.json" <<EOF
{"name": "ceph", "type": "rbd", "pool": "rbd", "monitors": ["$CEPH_MON"], "user": "libvirt", "secret": "ceph-libvirt"}
EOF
check "the rbd pool is defined" qv pool define "$T_ROOT/pool.json"
check "vol create ceph/web1" qv vol create ceph/web1 --size 64M --format raw
check "vol create ceph/extra" qv vol create ceph/extra --size 32M --format raw

# the test guest without a user-mode NIC: nothing else opens QEMU's network
rbd_guest() {
    local name=$1
    shift
    qv define -q "$name" --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND" "$@"
}
rbd_guest nosuch --disk vol=ceph/nosuch
check_error "a VM whose rbd volume is missing does not start, and says why" 3 \
    'volume ceph/nosuch: pool ceph has no volume nosuch' qv start nosuch
qv undefine nosuch >/dev/null 2>&1

rbd_guest rv --disk vol=ceph/web1,serial=RBD1
check_output "argv: QEMU's rbd driver with monitors, user and a key-secret read from an fd" \
    '"driver":"rbd".*"pool":"rbd","image":"web1","conf":"/dev/null","user":"libvirt","server":\[\{"host":"127\.0\.0\.1","port":"[0-9]+"\}\],"auth-client-required":\["cephx"\],"key-secret":"disk0-key"' \
    qv argv rv
check_output "argv: the secret object reads /proc/self/fd/N" 'secret,id=disk0-key,file=/proc/self/fd/[0-9]+,format=base64' \
    qv argv rv
qv start -q rv || { not_ok "the VM with an rbd disk starts"; diag "$(vm_log rv | tail -20)"; finish; }
ok "the VM with an rbd disk starts"
check "the guest boots" wait_until 120 guest_ok rv true
dev() { echo "\$(for d in /sys/block/vd*; do grep -qx $1 \$d/serial 2>/dev/null && echo \${d##*/}; done)"; }

# ---- the data disk is the RBD image ----
check "the guest writes a marker on its rbd disk" \
    guest_ok rv "echo RBD-MARKER-ONE | dd of=/dev/$(dev RBD1) conv=fsync 2>/dev/null"
check "...and reads it back" guest_ok rv "head -c 14 /dev/$(dev RBD1) | grep -q RBD-MARKER-ONE"
check "...which the cluster holds: rbd export of web1 starts with it" \
    sh -c "admin() { timeout 60 \"\$@\" --conf '$CEPH_CONF' --keyring '$CEPH_ADMIN_KEYRING'; }; \
           admin rbd export rbd/web1 - 2>/dev/null | head -c 14 | grep -q RBD-MARKER-ONE"

# ---- the key appears nowhere ----
qpid=$(vm_pid rv)
spid=$(sup_pid rv)
key_leaks() {
    local where
    where=$(grep -rlF -- "$CEPH_KEY" "$T_ROOT" 2>/dev/null | grep -vx "$T_ROOT/etc/qvisor/secrets/ceph-libvirt")
    for p in $qpid $spid; do
        grep -qaF -- "$CEPH_KEY" /proc/$p/cmdline && where+=" /proc/$p/cmdline"
        grep -qaF -- "$CEPH_KEY" /proc/$p/environ && where+=" /proc/$p/environ"
    done
    qv argv rv 2>&1 | grep -qF -- "$CEPH_KEY" && where+=" argv"
    qv show rv 2>&1 | grep -qF -- "$CEPH_KEY" && where+=" show"
    qv status rv --json 2>&1 | grep -qF -- "$CEPH_KEY" && where+=" status"
    echo "$where"
    [ -z "$where" ]
}
check "the key is stored where it should be (the probe can find it)" \
    grep -rqlF -- "$CEPH_KEY" "$T_ROOT/etc/qvisor/secrets"
check "the key appears nowhere else: root, logs, argv, show, status, /proc cmdline+environ" key_leaks
check "the probes looked at live processes" test -r "/proc/$qpid/cmdline" -a -r "/proc/$spid/environ"

# ---- QEMU's network: the cluster, nothing else ----
uid=$(stat -c %u /proc/$qpid)
check "QEMU shares the host's network namespace (the cluster is on loopback)" \
    test "$(readlink /proc/$qpid/ns/net)" = "$(readlink /proc/self/ns/net)"
check_output "an nft table filters QEMU's uid, naming the monitor" "meta skuid $uid ip daddr \. tcp dport \{[^}]*127\.0\.0\.1 \. ${CEPH_MON##*:}" \
    nft list table inet qvisor_uid_$uid
check "the log says what QEMU may reach" log_has rv "it may connect only to the Ceph cluster's monitors and OSDs"
# a listener QEMU must not reach, and a probe from inside QEMU: an nbd blockdev-add
# (it closes what it accepts, so a probe that does get through fails at once, and differently)
python3 -c 'import socket
s=socket.socket(); s.bind(("127.0.0.1",0)); s.listen(8); print(s.getsockname()[1], flush=True)
while True: s.accept()[0].close()' \
    > "$T_ROOT/port" &
lpid=$!
on_exit "kill $lpid"
wait_until 10 test -s "$T_ROOT/port"
lport=$(head -1 "$T_ROOT/port")
probe() { timeout 30 "$QV_BIN" --root "$T_ROOT" qmp rv "{\"execute\": \"blockdev-add\", \"arguments\": {\"driver\": \"nbd\", \"node-name\": \"probe$1\", \"server\": {\"type\": \"inet\", \"host\": \"127.0.0.1\", \"port\": \"$1\"}}}" 2>&1; true; }
check "the listener is reachable from the host" python3 -c "import socket; socket.create_connection(('127.0.0.1', $lport), 5)"
check_output "QEMU reaches the monitor (the nbd handshake, not the connect, fails)" \
    'Failed to read|handshake|unexpected|magic|EOF|Connection reset|reply' probe "${CEPH_MON##*:}"
check_output "QEMU cannot reach an unrelated local port: No route to host" 'No route to host' probe "$lport"

# ---- hotplug a second rbd disk ----
check_output "attach-disk --volume ceph/extra" 'disk[0-9]' qv attach-disk rv --volume ceph/extra --serial RBD2
check "the guest sees the hotplugged rbd disk" wait_until 30 guest_ok rv "test -n \"$(dev RBD2)\""
check "the guest writes a marker on it" \
    guest_ok rv "echo RBD-MARKER-TWO | dd of=/dev/$(dev RBD2) conv=fsync 2>/dev/null"
check "...which the cluster holds in ceph/extra" \
    sh -c "timeout 60 rbd export rbd/extra - --conf '$CEPH_CONF' --keyring '$CEPH_ADMIN_KEYRING' 2>/dev/null | head -c 14 | grep -q RBD-MARKER-TWO"
check "the key appears nowhere after the hotplug either" key_leaks
check "detach-disk of the rbd disk, by its volume" qv detach-disk rv ceph/extra
check "the guest no longer sees it" wait_until 30 guest_ok rv "test -z \"$(dev RBD2)\""

# ---- online resize ----
check "the guest sees the rbd disk at 64 MiB" guest_ok rv "test \$(cat /sys/block/$(dev RBD1)/size) -eq 131072"
check_output "disk-resize +16M of the rbd disk" 'rv: disk0 is now 80M' qv disk-resize rv RBD1 +16M
check "...the guest sees 80 MiB at once" wait_until 10 guest_ok rv "test \$(cat /sys/block/$(dev RBD1)/size) -eq 163840"
check_output "...and so does the cluster" 'size 80 MiB' admin rbd info rbd/web1

# ---- snapshots: RBD snapshots ----
check "the guest writes state A on its rbd disk" \
    guest_ok rv "echo SNAP-STATE-A | dd of=/dev/$(dev RBD1) conv=fsync 2>/dev/null"
check_output "snapshot create of the running rbd-backed VM takes RBD snapshots" \
    'rv: snapshot s1 created \(RBD snapshots, the guest paused around them\)' qv snapshot create rv s1
check "...and the guest runs again" state_is rv running
check_output "...the cluster holds snapshot s1 of web1" ' s1 ' admin rbd snap ls rbd/web1
check "the guest writes state B over it" \
    guest_ok rv "echo SNAP-STATE-B | dd of=/dev/$(dev RBD1) conv=fsync 2>/dev/null && head -c 12 /dev/$(dev RBD1) | grep -q SNAP-STATE-B"
check_output "snapshot list shows s1" '^s1 ' qv snapshot list rv
check_error "revert of the running VM is refused (it holds no memory)" 4 'stop the VM first' qv snapshot revert rv s1
check "kill" qv kill rv
check "the uid's nft table is gone with QEMU" wait_until 10 sh -c "! nft list table inet qvisor_uid_$uid >/dev/null 2>&1"
check "snapshot revert of the shut-off VM" qv snapshot revert rv s1
check "the VM starts again" qv start -q rv
check "the guest boots" wait_until 120 guest_ok rv true
check "the guest reads state A again" guest_ok rv "head -c 12 /dev/$(dev RBD1) | grep -q SNAP-STATE-A"
check "snapshot delete of the running VM's RBD snapshot" qv snapshot delete rv s1
no_snap() { local out; out=$(admin rbd snap ls rbd/web1) && ! grep -q ' s1 ' <<< "$out"; }
check "...gone from the cluster" no_snap
check "kill" qv kill rv
finish
