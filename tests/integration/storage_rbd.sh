#!/bin/bash
# timeout: 1800
# Ceph RBD on a real single-node Ceph that this test starts once and stops (tests/ceph/
# cluster: one mon, one memstore OSD, cephx on), for pools, volumes and VM disks alike:
# - the cephx secret and its refusals, rbd pool define and the errors of a wrong key (also
#   with only a ceph.conf), a stopped monitor and a missing pool (clear, bounded, nothing
#   created), every vol verb through librbd, a copy-on-write clone of a protected
#   snapshot, a qcow2 image with a marker imported as raw and exported back, Ctrl-C
#   during an import leaving nothing, and the key in no argv or environment of qvisor or
#   qemu-img while an import runs;
# - the test guest with an rbd data disk that QEMU's rbd driver opens over the network
#   (monitors, user and key-secret given explicitly; the key read by QEMU from a sealed
#   memfd): a marker the cluster then holds, a second rbd disk hotplugged, an online
#   resize, RBD snapshots of the rbd-only VM and a snapshot with memory of the VM with an
#   rbd and a qcow2 disk (reverted live), linked (RBD clone) and full clones, the key
#   nowhere (root, logs, argv, show, /proc cmdline and environ of the supervisor and
#   QEMU), and an nft filter on QEMU's uid letting it reach the monitors and OSDs only.
# (one group: the cluster takes 15-20 s to start on a loaded machine)
. "$(dirname "$0")/../lib.sh"

# LeakSanitizer scans every loaded library's static data at exit: with libceph-common
# loaded that costs ~2 s per call of the ASan qvisor (1 s without it, here), the largest
# cost of this group. So the first call of each verb ("vol create", "start", ...) runs
# with leak detection and its later calls without, those that start a supervisor too
# (lib.sh's qv keeps it for them); ASan's other checks stay on for all.
qv() {
    case $1 in
    pool|vol|secret|snapshot|net) qv_lsan_once "$1-${2:-}" "$@" ;;
    *) qv_lsan_once "$1" "$@" ;;
    esac
}

CDIR=$(mktemp -d /tmp/qvceph.XXXXXX)
on_exit "'$T_TOP/tests/ceph/cluster' stop '$CDIR'"
if ! cenv=$("$T_TOP/tests/ceph/cluster" start "$CDIR" 2>"$T_ROOT/ceph.err"); then
    if grep -q 'is not installed' "$T_ROOT/ceph.err"; then
        ok "rbd pools and volumes # SKIP $(head -1 "$T_ROOT/ceph.err")"
        finish
    fi
    not_ok "the test cluster starts"
    diag "$(cat "$T_ROOT/ceph.err")"
    finish
fi
eval "$cenv"
printf '%s\n' "$CEPH_KEY" > "$CDIR/key.txt"     # for greps whose own argv must not hold it
ok "a single-node Ceph runs, monitor at $CEPH_MON"
# the administrator's view, to see what qvisor did (or did not) do
rbdc() { timeout 30 rbd --conf "$CEPH_CONF" --pool rbd "$@"; }
export -f rbdc
export CEPH_CONF
SDIR=$T_ROOT/etc/qvisor/secrets
PDIR=$T_ROOT/etc/qvisor/pools
# jqcheck FILTER CMD...: CMD succeeds and its JSON passes FILTER (jq -e alone passes on no input)
jqcheck() { local filter=$1 j; shift; j=$("$@") && [ -n "$j" ] && jq -e "$filter" <<< "$j"; }
export -f jqcheck
vinfo() { jqcheck "$2" qv vol info "$1" --json; }
# took CMD...: runs CMD, its output into $T_ROOT/out, prints how long it took (ms);
# took_to FILE CMD...: the same with the output into FILE
took_to() { local f=$1 t0=$EPOCHREALTIME; shift; "$@" >"$f" 2>&1; local rc=$?; echo $(( (${EPOCHREALTIME/./} - ${t0/./}) / 1000 )); return $rc; }
took() { took_to "$T_ROOT/out" "$@"; }
# bg_took FILE CMD...: took_to in the background; "MS EXIT" into FILE.took when done
bg_took() { { local t rc; t=$(took_to "$@"); rc=$?; echo "$t $rc" > "$1.took"; } & }
# judge_within DESC SECONDS CODE REGEX MS EXIT FILE: exit CODE, FILE matches REGEX, MS within SECONDS
judge_within() {
    local desc=$1 secs=$2 want=$3 re=$4 t=$5 rc=$6 out=$7
    if [ "$rc" -eq "$want" ] && grep -Eq -- "$re" "$out" && [ "$t" -le $((secs * 1000)) ]; then
        ok "$desc ($t ms)"
    else
        not_ok "$desc (exit $rc, want $want; $t ms, bound $secs s)"
        diag "$(cat "$out")"
    fi
}
# check_error_within DESC SECONDS CODE REGEX CMD...: check_error, and done within SECONDS
check_error_within() {
    local desc=$1 secs=$2 want=$3 re=$4 t rc
    shift 4
    t=$(took "$@"); rc=$?
    judge_within "$desc" "$secs" "$want" "$re" "$t" "$rc" "$T_ROOT/out"
}

# ---- the cephx secret ----
check_output "secret define --usage ceph:client.libvirt" '^defined secret ceph-libvirt ' \
    qv secret define ceph-libvirt --usage ceph:client.libvirt --description "Ceph client.libvirt key"
check "secret set-value from standard input" \
    bash -c "printf '%s\n' '$CEPH_KEY' | '$QV_BIN' --root '$T_ROOT' secret set-value ceph-libvirt"
check_output "secret list says it is set" '^ceph-libvirt +[0-9a-f-]{36} +ceph:client\.libvirt +set' qv secret list
check_not "...and shows the key neither in list --json nor in show" grep -qF "$CEPH_KEY" <(qv secret list --json; qv secret show ceph-libvirt)

# ---- pools ----
check_output "pool define --type rbd --pool --monitor --user --secret" \
    "^defined pool ceph \(rbd rbd on $CEPH_MON as client\.libvirt\)" \
    qv pool define --name ceph --type rbd --pool rbd --monitor "$CEPH_MON" --user libvirt --secret ceph-libvirt
check "...written as JSON: pool, monitors, user, secret (the secret's name, not its value)" \
    jq -e '.type == "rbd" and .pool == "rbd" and .monitors == ["'"$CEPH_MON"'"] and .user == "libvirt" and .secret == "ceph-libvirt"' "$PDIR/ceph.json"
check_error "secret undefine while pool ceph uses it: conflict (exit 4)" 4 \
    'secret ceph-libvirt is used by pool ceph' qv secret undefine ceph-libvirt
check "...the secret is still there" test -s "$SDIR/ceph-libvirt"
check_output "secret show names the pool as its user" '"pool ceph"' qv secret show ceph-libvirt
check_error "pool define: --pool without --type rbd (exit 2)" 2 'are for --type rbd' qv pool define --name x --pool rbd
check_error "pool define: a monitor that is no HOST[:PORT] (exit 2)" 2 'monitors\[0\]: "a b" is not HOST' \
    qv pool define --name x --type rbd --pool rbd --monitor 'a b'
check_error "pool define: rbd without monitors or ceph_conf (exit 2)" 2 'monitors: missing' \
    qv pool define --name x --type rbd --pool rbd

# a wrong key, a missing Ceph pool, a monitor that does not answer: clear, bounded, nothing defined
qv secret define -q wrongkey
ceph-authtool --gen-print-key | "$QV_BIN" --root "$T_ROOT" secret set-value -q wrongkey
check_error_within "pool define with a wrong key: refused, naming pool, user and the fix (exit 1)" 30 1 \
    "pool bad: the monitors $CEPH_MON refused client\.libvirt's key \(check the pool's secret" \
    qv pool define --name bad --type rbd --pool rbd --monitor "$CEPH_MON" --user libvirt --secret wrongkey
# (the monitor as HOST:PORT, no v2: address vector: the client then waits out its timeout)
printf '[global]\nmon host = %s\n' "$CEPH_MON" > "$T_ROOT/mononly.conf"
check_error_within "pool define with a wrong key and only a ceph.conf: refused, naming its monitors (exit 1)" 30 1 \
    "pool bad: the monitors .*127\.0\.0\.1.* \(mon_host of $T_ROOT/mononly\.conf\) refused client\.libvirt's key" \
    qv pool define --name bad --type rbd --pool rbd --ceph-conf "$T_ROOT/mononly.conf" --user libvirt --secret wrongkey
check_error_within "pool define of a Ceph pool that does not exist: no such object (exit 3)" 30 3 \
    'pool bad: the Ceph cluster has no pool nosuch \(ceph osd pool create nosuch' \
    qv pool define --name bad --type rbd --pool nosuch --monitor "$CEPH_MON" --user libvirt --secret ceph-libvirt
deadport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# ---- rbd12: a monitor that refuses connections is said at once (librados would wait out its 10 s) ----
check_error_within "pool define with no monitor listening: Connection refused, at once (exit 1)" 10 1 \
    "pool bad: monitor 127\.0\.0\.1:$deadport: Connection refused \(is ceph-mon running there" \
    qv pool define --name bad --type rbd --pool rbd --monitor "127.0.0.1:$deadport" --user libvirt --secret ceph-libvirt
deadport2=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
check_error_within "...two monitors, neither listening: both named, at once (exit 1)" 10 1 \
    "pool bad: monitors 127\.0\.0\.1:$deadport, 127\.0\.0\.1:$deadport2: Connection refused" \
    qv pool define --name bad --type rbd --pool rbd --monitor "127.0.0.1:$deadport" --monitor "127.0.0.1:$deadport2" \
    --user libvirt --secret ceph-libvirt
printf '[global]\nmon host = [v2:127.0.0.1:%s,v1:127.0.0.1:%s]\n' "$deadport" "$deadport2" > "$T_ROOT/deadmon.conf"
check_error_within "...the monitors of a ceph.conf's address vector, neither listening (exit 1)" 10 1 \
    "pool bad: monitors 127\.0\.0\.1:$deadport, 127\.0\.0\.1:$deadport2: Connection refused" \
    qv pool define --name bad --type rbd --pool rbd --ceph-conf "$T_ROOT/deadmon.conf" --user libvirt --secret ceph-libvirt
check "...one monitor refusing and one answering: the pool is defined" \
    qv pool define --name mixed --type rbd --pool rbd --monitor "127.0.0.1:$deadport" --monitor "$CEPH_MON" \
    --user libvirt --secret ceph-libvirt
qv pool undefine mixed >/dev/null 2>&1
# ---- end rbd12 ----
check_not "...none of them defined a pool" test -e "$PDIR/bad.json"
check_error "pool define naming a secret without a value (exit 1)" 1 'secret novalue has no value yet' \
    bash -c "'$QV_BIN' --root '$T_ROOT' secret define -q novalue && '$QV_BIN' --root '$T_ROOT' pool define --name bad --type rbd --pool rbd --monitor '$CEPH_MON' --secret novalue"
check "secret undefine of a secret no pool uses" qv secret undefine wrongkey

# ---- volumes ----
check_output "vol create on rbd: raw by default" '^created volume ceph/web1$' qv vol create ceph/web1 --size 64M
check "...a format 2 image with layering only (rbd info)" \
    bash -c "jqcheck '.format == 2 and .features == [\"layering\"] and .size == 67108864' rbdc info web1 --format json"
check_error "vol create --format qcow2 on rbd: refused, saying why (exit 2)" 2 'an RBD image is raw; qcow2 volumes live in dir pools' \
    qv vol create ceph/q --size 8M --format qcow2
check_error "vol create of an existing name: conflict (exit 4)" 4 'pool ceph already has a volume web1' qv vol create ceph/web1 --size 8M
check_output "vol list ceph" '^web1 +raw +64\.0M ' qv vol list ceph
check "vol info --json: raw, capacity, allocation 0 (nothing written), rbd:POOL/NAME, features, no parent" \
    vinfo ceph/web1 '.format == "raw" and .capacity == 67108864 and .allocation == 0 and .path == "rbd:rbd/web1" and .features == ["layering"] and .parent == null and .snapshots == [] and .watchers == []'
check "vol info: allocation counts what was written (4 MiB in the image)" \
    bash -c "head -c 4M /dev/urandom > '$T_ROOT/4m' && rbdc import --image-feature layering '$T_ROOT/4m' filled >/dev/null 2>&1 && jqcheck '.allocation == 4194304' '$QV_BIN' --root '$T_ROOT' vol info ceph/filled --json"
check "pool list: ceph with its volumes and the allocation they hold (capacity unknown: no ceph-mgr)" \
    bash -c "jqcheck '.[] | select(.name == \"ceph\") | .volumes >= 2 and .allocation >= 4194304 and .capacity == null' '$QV_BIN' --root '$T_ROOT' pool list --json"
check_output "pool refresh ceph" '^pool ceph: 2 volumes$' qv pool refresh ceph
check_output "vol resize +64M" 'volume ceph/web1 is now 128M' qv vol resize ceph/web1 +64M
check "...rbd info says 128 MiB" bash -c "jqcheck '.size == 134217728' rbdc info web1 --format json"
check_error "vol resize to less without --allow-shrink (exit 2)" 2 'shrinking loses data.*--allow-shrink' qv vol resize ceph/web1 32M
check_output "vol resize --allow-shrink" 'is now 32M' qv vol resize ceph/web1 32M --allow-shrink
check "...rbd info says 32 MiB" bash -c "jqcheck '.size == 33554432' rbdc info web1 --format json"

# import of a qcow2 cloud image holding a marker, as raw; export back and compare
marker=RBDMARK-$RANDOM$RANDOM
head -c 3M /dev/urandom > "$T_ROOT/data.bin"
printf '%s' "$marker" | dd of="$T_ROOT/data.bin" conv=notrunc status=none
qemu-img convert -q -f raw -O qcow2 "$T_ROOT/data.bin" "$T_ROOT/cloud.qcow2"
check_output "vol import of a qcow2 image into rbd: raw" 'imported .*/cloud\.qcow2 as ceph/base \(raw\)' \
    qv vol import ceph/base "$T_ROOT/cloud.qcow2"
check "...the image holds the data and the marker (rbd export by the admin)" \
    bash -c "rbdc export base - 2>/dev/null | cmp - '$T_ROOT/data.bin' && rbdc export base - 2>/dev/null | head -c ${#marker} | grep -qx '$marker'"
check "...format 2, layering only" bash -c "jqcheck '.format == 2 and .features == [\"layering\"]' rbdc info base --format json"
check_error "vol import --format qcow2 into rbd (exit 2)" 2 'an RBD image is raw' qv vol import ceph/q "$T_ROOT/cloud.qcow2" --format qcow2
check_output "vol export to a qcow2 file" "exported ceph/base to $T_ROOT/out\.qcow2" qv vol export ceph/base "$T_ROOT/out.qcow2" --format qcow2
check "...the same data" qemu-img compare -q -f raw -F qcow2 "$T_ROOT/data.bin" "$T_ROOT/out.qcow2"
check "vol export - streams the raw bytes" bash -c "'$QV_BIN' --root '$T_ROOT' vol export ceph/base - | cmp - '$T_ROOT/data.bin'"

# clones: full copies and copy-on-write ones from a protected snapshot
check_output "vol clone (full copy) within the pool" 'cloned ceph/base to ceph/full \(raw\)' qv vol clone ceph/base full
check "...standalone, the same data" bash -c "jqcheck '.parent == null' rbdc info full --format json && rbdc export full - 2>/dev/null | cmp - '$T_ROOT/data.bin'"
check_output "vol clone into a dir pool (full copy across pool types)" 'cloned ceph/base to default/fromceph \(raw\)' \
    qv vol clone ceph/base fromceph --pool default
check "...the same data" qemu-img compare -q -F raw "$T_ROOT/var/lib/qvisor/images/fromceph" "$T_ROOT/data.bin"
check_output "vol clone from a dir pool into rbd (raw there)" 'cloned default/fromceph to ceph/back \(raw\)' qv vol clone default/fromceph back --pool ceph
check "...the same data" bash -c "rbdc export back - 2>/dev/null | cmp - '$T_ROOT/data.bin'"
check_output "vol clone --from-snapshot: copy-on-write, the snapshot made and protected" \
    'cloned ceph/base@gold to ceph/web2 \(copy-on-write; the snapshot was made now and protected\)' \
    qv vol clone ceph/base web2 --from-snapshot gold
check "...rbd: web2's parent is rbd/base@gold, which is protected" \
    bash -c "jqcheck '.parent.image == \"base\" and .parent.snapshot == \"gold\"' rbdc info web2 --format json && jqcheck '.[0].name == \"gold\" and .[0].protected == \"true\"' rbdc snap ls base --format json"
check "...vol info of the clone: its parent; of the base: the snapshot and its clone" \
    bash -c "jqcheck '.parent == {\"pool\": \"rbd\", \"image\": \"base\", \"snapshot\": \"gold\"}' '$QV_BIN' --root '$T_ROOT' vol info ceph/web2 --json && jqcheck '.snapshots == [{\"name\": \"gold\", \"size\": 3145728, \"protected\": true, \"clones\": [\"rbd/web2\"]}]' '$QV_BIN' --root '$T_ROOT' vol info ceph/base --json"
check "...the clone reads the base's data" bash -c "rbdc export web2 - 2>/dev/null | cmp - '$T_ROOT/data.bin'"
rbdc snap create base@silver >/dev/null 2>&1
check_output "vol clone --from-snapshot of an existing unprotected snapshot protects it" \
    'cloned ceph/base@silver to ceph/web3 \(copy-on-write\)$' qv vol clone ceph/base web3 --from-snapshot silver
check "...silver is protected now" bash -c "jqcheck 'map(select(.name == \"silver\"))[0].protected == \"true\"' rbdc snap ls base --format json"
check_error "vol clone --from-snapshot of a dir volume (exit 2)" 2 '--from-snapshot clones RBD volumes' \
    qv vol clone default/fromceph x --from-snapshot s
check_error "vol clone --from-snapshot into a dir pool (exit 2)" 2 'a copy-on-write clone stays in the source' \
    qv vol clone ceph/base x --pool default --from-snapshot gold
check_error "vol clone onto an existing name (exit 4)" 4 'pool ceph already has a volume full' qv vol clone ceph/base full

# deletes and their refusals
check_error "vol delete of a volume with clones: conflict naming them (exit 4)" 4 \
    'volume base has clones \(rbd/web2, rbd/web3\); delete them first' qv vol delete ceph/base --delete-snapshots
check "...still there, with its snapshots" bash -c "jqcheck 'length == 2' rbdc snap ls base --format json"
check_output "vol delete of a clone" '^deleted volume ceph/web3$' qv vol delete ceph/web3
define_guest vmr "" --disk vol=ceph/web2
check_error "vol delete of a volume a VM's definition names: conflict naming the VM (exit 4)" 4 \
    'volume ceph/web2 is used by VM vmr \(defined\)' qv vol delete ceph/web2
check "...vol info lists the VM among its users" vinfo ceph/web2 '.used_by == ["vmr (defined)"]'
define_guest vmg "" --disk vol=ceph/ghost
check_error "vol delete of a missing volume a VM's definition names: no volume (exit 3), not 'used by'" 3 \
    'pool ceph has no volume ghost' qv vol delete ceph/ghost
qv undefine -q vmg
check_error "pool undefine while a VM has a volume in it (exit 4)" 4 'pool ceph holds volumes of VM vmr' qv pool undefine ceph
qv undefine -q vmr
check_output "vol delete of the last clone" '^deleted volume ceph/web2$' qv vol delete ceph/web2
check_error "vol delete of a volume with snapshots but no clones: refused without --delete-snapshots (exit 4)" 4 \
    'volume base has snapshots \(gold, silver\); vol delete --delete-snapshots' qv vol delete ceph/base
check_output "vol delete --delete-snapshots" '^deleted volume ceph/base$' qv vol delete ceph/base --delete-snapshots
# rbd_lacks IMAGE: the admin lists the pool, and IMAGE is not in it (a failing rbd is no pass)
rbd_lacks() { local out; out=$(rbdc ls) && grep -q . <<< "$out" && ! grep -Eqx -- "$1" <<< "$out"; }
check "...the image is gone" rbd_lacks base
check_error "vol delete of a missing volume (exit 3)" 3 'pool ceph has no volume base' qv vol delete ceph/base
check_error "vol info of a missing volume (exit 3)" 3 'pool ceph has no volume nothing' qv vol info ceph/nothing

# a volume open elsewhere (a watcher: here an rbd bench of the admin's) is not deleted
rbdc bench --io-type write --io-size 4K --io-total 400M --io-threads 1 full >/dev/null 2>&1 &
bpid=$!
on_exit "kill -9 $bpid"
check "a watcher holds ceph/full (vol info lists it)" wait_until 30 vinfo ceph/full '.watchers | length == 1'
check_error "vol delete while another client has it open: conflict (exit 4)" 4 'volume full is open by another Ceph client' \
    qv vol delete ceph/full
kill -9 $bpid 2>/dev/null; wait $bpid 2>/dev/null

# Ctrl-C during an import: qemu-img through a wrapper that waits once the copy is
# written, so the interrupt lands on a complete temporary image that must go
head -c 8M /dev/urandom > "$T_ROOT/big.raw"
# (it also keeps what /proc showed of the running qemu-img: argv and environment)
cat > "$T_ROOT/slow-qemu-img" <<'EOS'
#!/bin/bash
if [ "$1" = convert ]; then
    qemu-img "$@" &
    c=$!
    until tr '\0' ' ' < /proc/$c/cmdline | grep -q '^qemu-img convert'; do sleep 0.01; done
    cp /proc/$c/cmdline "$SLOW_DIR/qemu-img.cmdline"; cp /proc/$c/environ "$SLOW_DIR/qemu-img.environ"
    wait $c || exit
    echo $$ > "$SLOW_DIR/copying"
    exec sleep 60
fi
exec qemu-img "$@"
EOS
chmod +x "$T_ROOT/slow-qemu-img"
export SLOW_DIR=$T_ROOT
QVISOR_QEMU_IMG=$T_ROOT/slow-qemu-img "$QV_BIN" --root "$T_ROOT" vol import ceph/intr "$T_ROOT/big.raw" >"$T_ROOT/intr.out" 2>&1 &
qpid=$!
on_exit "kill -9 $qpid"
check "an import through the slow wrapper reaches its wait" wait_until 60 test -s "$T_ROOT/copying"
cpid=$(cat "$T_ROOT/copying" 2>/dev/null)
check "...its temporary image is in the Ceph pool, hidden from vol list" \
    bash -c "rbdc ls | grep -q '^\.intr\.part-$qpid-' && ! '$QV_BIN' --root '$T_ROOT' vol list ceph | grep -q intr"
# the key was in neither qemu-img's argv nor its environment while it ran, and is in
# no process's now (qvisor waits for the wrapper)
check "...qemu-img's argv and environment were caught while it ran" test -s "$T_ROOT/qemu-img.cmdline" -a -s "$T_ROOT/qemu-img.environ"
check "...qemu-img read the key from the secret's 0600 file through --object (the path, never the value)" \
    bash -c "tr '\0' ' ' < '$T_ROOT/qemu-img.cmdline' | grep -q -- '--object secret,id=qv-dst,file=$SDIR/ceph-libvirt,format=base64'"
check_not "...the key is in neither" grep -aqF "$CEPH_KEY" "$T_ROOT/qemu-img.cmdline" "$T_ROOT/qemu-img.environ"
check "...nor in the argv or environment of any process now (qvisor among them; the probe finds it in its file)" \
    bash -c "grep -qFf '$CDIR/key.txt' '$SDIR/ceph-libvirt' && ! cat /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null | grep -aqFf '$CDIR/key.txt'"
check "...qvisor is among them" test -r "/proc/$qpid/environ"
kill -INT "$qpid"
wait "$qpid"; rc=$?
check "SIGINT: qvisor stops with exit 1, saying nothing was written" \
    bash -c "[ $rc -eq 1 ] && grep -q 'vol import ceph/intr: interrupted; nothing was written' '$T_ROOT/intr.out'"
check_not "...the qemu-img child is gone" kill -0 "$cpid"
check "...and so is the temporary image (and no volume intr)" rbd_lacks '.*intr.*'

# the key appears nowhere: not under the root but in the secret's own file, not in a log
check_not "the key is in no file under the root but the secret's value" \
    bash -c "grep -rlaF -- '$CEPH_KEY' '$T_ROOT' | grep -vx '$SDIR/ceph-libvirt'"
check_not "...nor in what any command printed" grep -qF "$CEPH_KEY" "$T_ROOT/intr.out" "$T_ROOT/out"


# ---- VM disks on rbd volumes ----
admin() { timeout 60 "$@" --conf "$CEPH_CONF" --keyring "$CEPH_ADMIN_KEYRING"; }
check "vol create ceph/vmdisk" qv vol create ceph/vmdisk --size 64M --format raw
check "vol create ceph/extra" qv vol create ceph/extra --size 32M --format raw
# the test guest without a user-mode NIC: nothing else opens QEMU's network
rbd_guest() {
    local name=$1
    shift
    qv define -q "$name" --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND" "$@"
}
# a verb over several rbd disks of one pool connects to the cluster once: the monitor's
# count of closed client sessions grows as much for `argv` (which resolves the disks as a
# start does) and an offline snapshot of a VM with two disks as for one with one
mon_closed() { timeout 20 ceph --conf "$CEPH_CONF" daemon mon.a perf dump 2>/dev/null | jq -r '.mon.session_rm // empty'; }
# sessions_of CMD...: how many client sessions CMD opened and closed (the count, once it stays put)
sessions_of() {
    local before after n=0
    before=$(mon_closed) && [ -n "$before" ] || return 1
    "$@" > /dev/null 2>&1 || return 1
    after=$(mon_closed)
    while [ "$n" -lt 20 ]; do
        pause 0.3
        local now
        now=$(mon_closed)
        [ "$now" = "$after" ] && break
        after=$now n=$((n + 1))
    done
    echo $((after - before))
}
rbd_guest one --disk vol=ceph/vmdisk
rbd_guest two --disk vol=ceph/vmdisk --disk vol=ceph/extra
s1=$(sessions_of qv argv one) s2=$(sessions_of qv argv two)
check "argv of a VM with two rbd disks connects as often as one with one ($s2 and $s1 sessions)" \
    test -n "$s1" -a "${s1:-0}" -gt 0 -a "$s1" = "$s2"
s1=$(sessions_of qv snapshot create one c1) s2=$(sessions_of qv snapshot create two c2)
check "...so does an offline snapshot ($s2 and $s1 sessions)" test -n "$s1" -a "${s1:-0}" -gt 0 -a "$s1" = "$s2"
both_c2() { local a b; a=$(admin rbd snap ls rbd/vmdisk) && b=$(admin rbd snap ls rbd/extra) && grep -q ' c2 ' <<< "$a" && grep -q ' c2 ' <<< "$b"; }
check "...which took both RBD snapshots" both_c2
qv undefine one --snapshots-metadata > /dev/null 2>&1
qv undefine two --snapshots-metadata > /dev/null 2>&1
for snap in vmdisk@c1 vmdisk@c2 extra@c2; do admin rbd snap rm "rbd/$snap" > /dev/null 2>&1; done
rbd_guest nosuch --disk vol=ceph/nosuch
check_error "a VM whose rbd volume is missing does not start, and says why" 3 \
    'volume ceph/nosuch: pool ceph has no volume nosuch' qv start nosuch
qv undefine nosuch >/dev/null 2>&1

rbd_guest rv --disk vol=ceph/vmdisk,serial=RBD1
check_output "argv: QEMU's rbd driver with monitors, user and a key-secret read from an fd" \
    '"driver":"rbd".*"pool":"rbd","image":"vmdisk","conf":"/dev/null","user":"libvirt","server":\[\{"host":"127\.0\.0\.1","port":"[0-9]+"\}\],"auth-client-required":\["cephx"\],"key-secret":"disk0-key"' \
    qv argv rv
check_output "argv: the secret object reads /proc/self/fd/N" 'secret,id=disk0-key,file=/proc/self/fd/[0-9]+,format=base64' \
    qv argv rv
qv start -q rv || { not_ok "the VM with an rbd disk starts"; diag "$(vm_log rv | tail -20)"; finish; }
ok "the VM with an rbd disk starts"
# booted N: the guest's Nth "ready" is on its console, then its shell answers (a line
# typed while the kernel boots is lost, and gsh waits out its 30 s for the answer)
booted() { [ "$(count_log rv 'QVISOR-GUEST: ready')" -ge "$1" ] && guest_ok rv true; }
check "the guest boots" wait_until 120 booted 1

# ---- the data disk is the RBD image ----
check "the guest writes a marker on its rbd disk" \
    guest_ok rv "echo RBD-MARKER-ONE | dd of=/dev/$(gdisk RBD1) conv=fsync 2>/dev/null"
check "...and reads it back" guest_ok rv "head -c 14 /dev/$(gdisk RBD1) | grep -q RBD-MARKER-ONE"
check "...which the cluster holds: rbd export of vmdisk starts with it" \
    sh -c "admin() { timeout 60 \"\$@\" --conf '$CEPH_CONF' --keyring '$CEPH_ADMIN_KEYRING'; }; \
           admin rbd export rbd/vmdisk - 2>/dev/null | head -c 14 | grep -q RBD-MARKER-ONE"

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
check "the guest sees the hotplugged rbd disk" wait_until 30 guest_ok rv "test -b /dev/$(gdisk RBD2)"
check "the guest writes a marker on it" \
    guest_ok rv "echo RBD-MARKER-TWO | dd of=/dev/$(gdisk RBD2) conv=fsync 2>/dev/null"
check "...which the cluster holds in ceph/extra" \
    sh -c "timeout 60 rbd export rbd/extra - --conf '$CEPH_CONF' --keyring '$CEPH_ADMIN_KEYRING' 2>/dev/null | head -c 14 | grep -q RBD-MARKER-TWO"
check "the key appears nowhere after the hotplug either" key_leaks
check "detach-disk of the rbd disk, by its volume" qv detach-disk rv ceph/extra
check "the guest no longer sees it" wait_until 30 guest_ok rv "test ! -e /dev/$(gdisk RBD2)"

# ---- online resize ----
check "the guest sees the rbd disk at 64 MiB" guest_ok rv "test \$(cat /sys/block/$(gdisk RBD1)/size) -eq 131072"
check_output "disk-resize +16M of the rbd disk" 'rv: disk0 is now 80M' qv disk-resize rv RBD1 +16M
check "...the guest sees 80 MiB at once" wait_until 10 guest_ok rv "test \$(cat /sys/block/$(gdisk RBD1)/size) -eq 163840"
check_output "...and so does the cluster" 'size 80 MiB' admin rbd info rbd/vmdisk

# ---- snapshots: RBD snapshots ----
check "the guest writes state A on its rbd disk" \
    guest_ok rv "echo SNAP-STATE-A | dd of=/dev/$(gdisk RBD1) conv=fsync 2>/dev/null"
check_output "snapshot create of the running rbd-backed VM takes RBD snapshots" \
    'rv: snapshot s1 created \(RBD snapshots, the guest paused around them\)' qv snapshot create rv s1
check "...and the guest runs again" state_is rv running
check_output "...the cluster holds snapshot s1 of vmdisk" ' s1 ' admin rbd snap ls rbd/vmdisk
# ---- rbd12c: a snapshot while QEMU's rbd I/O hangs (its uid no longer reaches the OSD; qvisor does) ----
# a guest writing to its rbd disk without pause (away from the markers below), then
# QEMU's packets to the OSD dropped: its pending write hangs, and QEMU's `stop` waits for it
osdports=$(admin ceph osd dump --format json 2>/dev/null | jq -r '[.osds[].public_addrs.addrvec[].addr | sub(".*:"; "")] | join(", ")')
check "the guest writes to its rbd disk in a loop" \
    guest_ok rv "(while [ ! -e /stop-writer ]; do dd if=/dev/zero of=/dev/$(gdisk RBD1) bs=64k seek=200 count=16 oflag=direct 2>/dev/null; done) & true"
hangtab=qvtest_rbdhang_$$
on_exit "nft delete table inet $hangtab"
check "QEMU's packets to the OSD (ports ${osdports:-none}) are dropped" \
    nft -f - <<< "table inet $hangtab { chain out { type filter hook output priority -10; meta skuid $uid tcp dport { ${osdports:-1} } drop; }; }"
sleep 1
check_error_within "snapshot create: bounded, naming the VM, the disk and the cause, nothing taken (exit 5)" 90 5 \
    "rv: snapshot hang1: the guest could not be paused .*QEMU's I/O to disk0 \(ceph/vmdisk\) does not complete.*nothing was taken" \
    qv snapshot create rv hang1
no_hang1() { local out; out=$(admin rbd snap ls rbd/vmdisk) && grep -q ' s1 ' <<< "$out" && ! grep -q ' hang1 ' <<< "$out"; }
check "...no RBD snapshot hang1 in the cluster (s1 is listed)" no_hang1
unlisted_hang1() { local out; out=$(qv snapshot list rv) && grep -q '^s1 ' <<< "$out" && ! grep -q '^hang1 ' <<< "$out"; }
check "...none listed (s1 is)" unlisted_hang1
nft delete table inet "$hangtab"
check "...and the guest runs again once QEMU reaches the OSD" wait_until 120 state_is rv running
check "...its console answers; the writer stops" guest_ok rv "touch /stop-writer"
# ---- end rbd12c ----
check "the guest writes state B over it" \
    guest_ok rv "echo SNAP-STATE-B | dd of=/dev/$(gdisk RBD1) conv=fsync 2>/dev/null && head -c 12 /dev/$(gdisk RBD1) | grep -q SNAP-STATE-B"
check_output "snapshot list shows s1" '^s1 ' qv snapshot list rv
check_error "revert of the running VM is refused (it holds no memory)" 4 'stop the VM first' qv snapshot revert rv s1
# ---- rbd12: a disk hotplugged without --persistent takes part in the running VM's snapshots ----
check_output "attach-disk --volume ceph/extra without --persistent to the rbd-only VM" 'disk[0-9]' \
    qv attach-disk rv --volume ceph/extra --serial RBD2
check "the guest sees it" wait_until 30 guest_ok rv "test -b /dev/$(gdisk RBD2)"
check "the guest writes HOT-A on it" guest_ok rv "echo HOT-A | dd of=/dev/$(gdisk RBD2) conv=fsync 2>/dev/null"
check_output "snapshot create h1: RBD snapshots" 'rv: snapshot h1 created \(RBD snapshots' qv snapshot create rv h1
check_output "...of the hotplugged image too (rbd snap ls extra)" ' h1 ' admin rbd snap ls rbd/extra
check_output "...and of the definition's (rbd snap ls vmdisk)" ' h1 ' admin rbd snap ls rbd/vmdisk
check "...its record lists both, the hotplugged one by its device id" \
    bash -c "jqcheck '.[] | select(.name == \"h1\") | (.disks | length) == 2 and (.disks | map(select(.hotplug == true and .volume == \"ceph/extra\" and .rbd == true)) | length) == 1' '$QV_BIN' --root '$T_ROOT' snapshot list rv --json"
check "snapshot delete h1 while the VM runs" qv snapshot delete rv h1
no_h1() { local a b; a=$(admin rbd snap ls rbd/extra) && b=$(admin rbd snap ls rbd/vmdisk) && ! grep -q ' h1 ' <<< "$a$b"; }
check "...gone from both images" no_h1
check "detach-disk ceph/extra" qv detach-disk rv ceph/extra
qemu-img create -q -f raw "$T_ROOT/hot.raw" 8M
check_output "attach-disk of a raw file disk without --persistent" 'disk[0-9]' qv attach-disk rv "$T_ROOT/hot.raw" --serial HOTRAW
check "the guest sees it" wait_until 30 guest_ok rv "test -b /dev/$(gdisk HOTRAW)"
check_error "snapshot create with it: refused, naming the raw disk (QEMU keeps such a snapshot in qcow2 images)" 2 \
    "rv: disk[0-9]+ \($T_ROOT/hot\.raw\) is raw" qv snapshot create rv h2
# (in this shell: through bash -c, admin had no CEPH_ADMIN_KEYRING, rbd failed and this passed on nothing)
no_h2() { local out; out=$(admin rbd snap ls rbd/vmdisk) && grep -q ' s1 ' <<< "$out" && ! grep -q ' h2 ' <<< "$out"; }
check "...no RBD snapshot h2 was taken (s1 is listed)" no_h2
check "detach-disk of the raw file" qv detach-disk rv "$T_ROOT/hot.raw"
# ---- end rbd12 ----
# a qcow2 file disk beside the rbd disk, in the definition from the next start on
qemu-img create -q -f qcow2 "$T_ROOT/file1.qcow2" 32M
check_output "attach-disk --persistent of a qcow2 file disk beside the rbd disk" 'disk[0-9]' \
    qv attach-disk rv "$T_ROOT/file1.qcow2" --serial FILE1 --persistent
check "the guest sees it" wait_until 30 guest_ok rv "test -b /dev/$(gdisk FILE1)"
check "kill" qv kill rv
check "the uid's nft table is gone with QEMU" wait_until 10 sh -c "! nft list table inet qvisor_uid_$uid >/dev/null 2>&1"
check "snapshot revert of the shut-off VM" qv snapshot revert rv s1
# ---- rbd12: this start's supervisor asks the cluster for new OSDs every 5 s (60 s by default) ----
export QVISOR_RBD_REFRESH_MS=5000
# ---- end rbd12 ----
ready0=$(count_log rv 'QVISOR-GUEST: ready')
check "the VM starts again" qv start -q rv
check "the guest boots" wait_until 120 booted $((ready0 + 1))
check "the guest reads state A again" guest_ok rv "head -c 12 /dev/$(gdisk RBD1) | grep -q SNAP-STATE-A"
# ---- rbd12: an OSD added while the VM runs: the supervisor lets QEMU reach it ----
uid=$(stat -c %u /proc/$(vm_pid rv))
check_output "pool show --addresses lists the monitor" "^127\.0\.0\.1:${CEPH_MON##*:}\$" qv pool show ceph --addresses
osd1=$("$T_TOP/tests/ceph/cluster" add-osd "$CDIR" 2>"$T_ROOT/osd.err")
check "a second OSD joins the cluster" test -n "$osd1"
osd1addr=$(admin ceph osd dump --format json 2>/dev/null | jq -r ".osds[] | select(.osd == ${osd1:-99}) | .public_addrs.addrvec[] | select(.type == \"v2\") | .addr")
check_output "...pool show --addresses lists it" "^${osd1addr:-none}\$" qv pool show ceph --addresses
check "the supervisor lets QEMU reach it within a refresh (QEMU's nft table)" \
    wait_until 90 sh -c "nft list table inet qvisor_uid_$uid | grep -qF '${osd1addr%:*} . ${osd1addr##*:}'"
check "...and says so in the log" log_has rv "cluster map lists [0-9]+ address(es)? QEMU could not reach yet"
# on_new: some of the 20 objects of vmdisk the guest writes next are served by the new
# OSD (acting primary: while a placement group is backfilled its old OSD serves it), so
# that a write reaches them only through what the supervisor added to QEMU's filter.
# `ceph osd map` is a monitor command (`pg ls-*` need a ceph-mgr, which this cluster
# lacks); one ceph process maps all 20. In this shell, not through bash -c, which has no
# CEPH_ADMIN_KEYRING here (ceph fails there, and jq -e passes on no input).
vmid=$(admin rbd info rbd/vmdisk --format json 2>/dev/null | jq -r .id)
on_new() {
    local n
    n=$(for i in $(seq 0 19); do printf 'osd map rbd rbd_data.%s.%016x\n' "$vmid" "$i"; done |
        admin ceph --format json 2>/dev/null | jq -r "select(.acting_primary == ${osd1:-99}) | .objname" | wc -l)
    echo "$n" > "$T_ROOT/on_new"
    [ "$n" -gt 0 ]
}
check "some of the 20 objects of vmdisk written next moved to it (ceph osd map)" wait_until 90 on_new
diag "$(cat "$T_ROOT/on_new" 2>/dev/null) of 20 on osd.$osd1"
check "the guest writes to each 4 MiB object of its rbd disk (on either OSD)" \
    guest_ok rv "for i in $(seq -s ' ' 0 19); do echo OSD-\$i | dd of=/dev/$(gdisk RBD1) bs=4M seek=\$i conv=fsync 2>/dev/null || exit 1; done"
# objects_hold: the cluster's copy of vmdisk holds each object's marker
objects_hold() {
    local i
    admin rbd export rbd/vmdisk - 2>/dev/null > "$T_ROOT/vmdisk.raw" || return 1
    for i in 0 7 13 19; do
        dd if="$T_ROOT/vmdisk.raw" bs=4M skip=$i count=1 2>/dev/null | head -c 8 | grep -q "OSD-$i" || return 1
    done
}
check "...which the cluster holds" objects_hold
[ -s "$T_ROOT/vmdisk.raw" ] || diag "rbd export of vmdisk gave nothing"
rm -f "$T_ROOT/vmdisk.raw"
unset QVISOR_RBD_REFRESH_MS
# ---- end rbd12 ----
check "snapshot delete of the running VM's RBD snapshot" qv snapshot delete rv s1
no_snap() { local out; out=$(admin rbd snap ls rbd/vmdisk) && ! grep -q ' s1 ' <<< "$out"; }
check "...gone from the cluster" no_snap

# ---- a VM with an rbd disk and a qcow2 file disk: one snapshot with memory, by QEMU ----
both() { echo "echo $1 | dd of=/dev/$(gdisk RBD1) conv=fsync 2>/dev/null && echo $1 | dd of=/dev/$(gdisk FILE1) conv=fsync 2>/dev/null"; }
rbd_head() { admin rbd export rbd/vmdisk - 2>/dev/null | head -c ${#1} | grep -qx "$1"; }
# the qcow2 image as QEMU holds it (-U: it is open and locked)
file_head() { qemu-img convert -U -f qcow2 -O raw "$T_ROOT/file1.qcow2" "$T_ROOT/file1.raw" && head -c ${#1} "$T_ROOT/file1.raw" | grep -qx "$1"; }
export -f admin rbd_head file_head
export CEPH_ADMIN_KEYRING T_ROOT
check "the guest writes MIXED-A on both disks" guest_ok rv "$(both MIXED-A)"
check_output "snapshot create of the running VM with both: QEMU's, with the guest's memory" \
    'rv: snapshot m1 created \(internal, with the guest.s memory\)' qv snapshot create rv m1
check "...the guest runs again" state_is rv running
check_output "...the cluster holds RBD snapshot m1 of vmdisk" ' m1 ' admin rbd snap ls rbd/vmdisk
check_output "...and the qcow2 image an internal snapshot m1" ' m1 ' qemu-img snapshot -U -l "$T_ROOT/file1.qcow2"
check "...listed as a full snapshot of both disks" bash -c "jqcheck '.[] | select(.name == \"m1\") | .memory == true and (.disks | length) == 2 and (.disks | map(.rbd == true) | sort) == [false, true]' '$QV_BIN' --root '$T_ROOT' snapshot list rv --json"
check "the guest writes MIXED-B over both" guest_ok rv "$(both MIXED-B)"
check "...which both images hold" bash -c "rbd_head MIXED-B && file_head MIXED-B"
# ---- rbd12: live revert (QEMU's snapshot-load rolls the rbd image back at its rbd node) ----
check_output "live revert of it: the guest resumes from its memory" 'reverted to snapshot m1' \
    timeout 300 "$QV_BIN" --root "$T_ROOT" snapshot revert rv m1
check "...the guest runs" wait_until 60 state_is rv running
check "...both images hold MIXED-A again" bash -c "rbd_head MIXED-A && file_head MIXED-A"
check "...and the guest reads MIXED-A from both disks, its page cache dropped (its disk I/O completes)" \
    guest_ok rv "echo 3 > /proc/sys/vm/drop_caches; head -c 7 /dev/$(gdisk RBD1) | grep -q MIXED-A && head -c 7 /dev/$(gdisk FILE1) | grep -q MIXED-A"
check "...and writes MIXED-C over both" guest_ok rv "$(both MIXED-C)"
check "...which both images hold" bash -c "rbd_head MIXED-C && file_head MIXED-C"
# ---- end rbd12 ----
check "kill" qv kill rv
check "snapshot revert of the shut-off VM: both disks" qv snapshot revert rv m1
check "...both images hold MIXED-A again" bash -c "rbd_head MIXED-A && file_head MIXED-A"
check "snapshot delete of the mixed snapshot" qv snapshot delete rv m1
no_m1() { local out; out=$(admin rbd snap ls rbd/vmdisk) && ! grep -q ' m1 ' <<< "$out" && ! qemu-img snapshot -U -l "$T_ROOT/file1.qcow2" | grep -q ' m1 '; }
check "...gone from the cluster and from the qcow2 image" no_m1

# ---- clones of the VM with an rbd disk ----
check_output "clone --linked of the shut-off VM" 'cloned rv to rvl \(linked' qv clone rv rvl --linked
check "...its rbd disk is an RBD clone of vmdisk@clone-rvl, protected" \
    bash -c "$(declare -f jqcheck rbdc); jqcheck '.parent.image == \"vmdisk\" and .parent.snapshot == \"clone-rvl\"' rbdc info rvl-disk0 --format json && jqcheck 'map(select(.name == \"clone-rvl\"))[0].protected == \"true\"' rbdc snap ls vmdisk --format json"
check "...which reads the source's data" bash -c "$(declare -f rbdc); rbdc export rvl-disk0 - 2>/dev/null | head -c 7 | grep -qx MIXED-A"
check "...the definition names it; the file disk got an overlay" \
    bash -c "jq -e '.disks[0].volume == \"ceph/rvl-disk0\" and .disks[1].volume == \"default/rvl-disk1\"' '$T_ROOT/etc/qvisor/vms/rvl.json'"
check "...the source VM keeps its rbd volume" jq -e '.disks[0].volume == "ceph/vmdisk"' "$T_ROOT/etc/qvisor/vms/rv.json"
check_output "clone (full) of the shut-off VM" 'cloned rv to rvf \(full copies\)' qv clone rv rvf
check "...its rbd disk is a standalone copy in the same pool with the data" \
    bash -c "$(declare -f jqcheck rbdc); jqcheck '.parent == null' rbdc info rvf-disk0 --format json && rbdc export rvf-disk0 - 2>/dev/null | head -c 7 | grep -qx MIXED-A"
check "undefine --remove-storage of both clones" bash -c "'$QV_BIN' --root '$T_ROOT' undefine rvl --remove-storage && '$QV_BIN' --root '$T_ROOT' undefine rvf --remove-storage"
check "...their images are gone from the cluster" rbd_lacks 'rv[lf]-.*'
qv undefine -q rv     # its volumes stay; the pool can go at the end

# an unreachable pool does not hide the others; a stopped monitor gives a bounded error
qv vol create -q default/keep --size 1M
kill -STOP $(cat "$CDIR"/run/mon.a.pid)
on_exit "kill -CONT $(cat "$CDIR"/run/mon.a.pid)"
# (vol list and pool list each wait out the monitors' 10 s: side by side)
bg_took "$T_ROOT/vl.out" qv vol list ceph
vl=$!
bg_took "$T_ROOT/pl.out" qv pool list
pl=$!
# ---- rbd12c: a pool define waiting for the monitors holds no lock the other pool verbs need ----
bg_took "$T_ROOT/pd.out" qv pool define --name slow --type rbd --pool rbd --monitor "$CEPH_MON" --user libvirt \
    --secret ceph-libvirt
pd=$!
slow_waits() {  # the define of slow is connected to the stopped monitor
    local pid
    pid=$(pgrep -f -- "--root $T_ROOT pool define --name slow") &&
        ss -Htnp "( dport = :${CEPH_MON##*:} )" | grep -q "pid=$pid,"
}
check "pool define of an rbd pool waits for the stopped monitor" wait_until 20 slow_waits
check "...without the pools' lock (flock -n takes it)" flock -n "$PDIR/.lock" true
check "...so a pool define meanwhile is done while it still waits" \
    bash -c "'$QV_BIN' --root '$T_ROOT' pool define -q --name quick --type dir --path '$T_ROOT/quick' && test ! -e '$T_ROOT/pd.out.took'"
wait $vl $pl $pd
t=999999 rc=255
read -r t rc < "$T_ROOT/pd.out.took"
judge_within "...which then times out naming the pool (exit 5)" 40 5 "pool slow: no answer from the Ceph monitors" \
    "$t" "$rc" "$T_ROOT/pd.out"
check_not "...and defines nothing" test -e "$PDIR/slow.json"
qv pool undefine quick >/dev/null 2>&1
# ---- end rbd12c ----
t=999999 rc=255
read -r t rc < "$T_ROOT/vl.out.took"
judge_within "vol list with the monitor stopped: timed out naming the pool (exit 5)" 40 5 \
    "pool ceph: no answer from the Ceph monitors $CEPH_MON within 10 s" "$t" "$rc" "$T_ROOT/vl.out"
t=999999
read -r t rc < "$T_ROOT/pl.out.took"
check "pool list still lists default (and says why ceph is missing) within bounds ($t ms)" \
    bash -c "grep -Eq '^default +dir' '$T_ROOT/pl.out' && grep -Eq '^ceph +rbd +\(pool ceph: no answer from the Ceph monitors' '$T_ROOT/pl.out' && [ $t -le 40000 ]"
kill -CONT $(cat "$CDIR"/run/mon.a.pid)
check "after the monitor resumes, pool show answers again" wait_until 60 bash -c "jqcheck '.volumes >= 1' '$QV_BIN' --root '$T_ROOT' pool show ceph"
check "host-check: QEMU's rbd driver and librbd" \
    bash -c "jqcheck '[.checks[] | select(.name == \"qemu rbd driver\" or .name == \"librbd\") | .ok] == [true, true]' '$QV_BIN' --root '$T_ROOT' host-check --json"
check_output "pool undefine ceph (its images stay in Ceph)" '^undefined pool ceph' qv pool undefine ceph
check "...the images are still there" bash -c "rbdc ls | grep -qx full"
check "secret undefine once no pool uses it" qv secret undefine ceph-libvirt
finish
