#!/bin/bash
# timeout: 660
# Storage pools and volumes with the real qemu-img: every pool and vol verb, the
# refusals with their exit codes and messages, Ctrl-C during a copy leaving nothing
# behind, and guests booted from volume disks (one a 5-deep chain) reading a marker
# the host wrote into the bottom layer.
. "$(dirname "$0")/../lib.sh"
IMGS=$T_ROOT/var/lib/qvisor/images
pool_json() { qv pool list --json | jq -e "$@"; }

# ---- pools ----
check_output "pool list makes the default pool on first use" \
    "^default +dir .* 0 +$IMGS\$" qv pool list
check "...a dir pool at var/lib/qvisor/images under the root" test -d "$IMGS"
check "...defined in etc/qvisor/pools/default.json" jq -e '.type == "dir"' "$T_ROOT/etc/qvisor/pools/default.json"
check "pool list --json: capacity, allocation and available from statvfs" \
    pool_json '.[0] | .name == "default" and .capacity > 0 and .available > 0 and .allocation > 0 and .capacity >= .available'
check_output "pool define --name --type dir --path" "defined pool fast \(dir $T_ROOT/fast\)" \
    qv pool define --name fast --type dir --path "$T_ROOT/fast"
check "...makes its directory" test -d "$T_ROOT/fast"
printf '{"name": "cold", "type": "dir", "path": "%s/cold"}\n' "$T_ROOT" > "$T_ROOT/cold.json"
check_output "pool define FILE" "defined pool cold" qv pool define "$T_ROOT/cold.json"
check "pool show: the definition and its sizes" \
    bash -c "'$QV_BIN' --root '$T_ROOT' pool show cold | jq -e '.path == \"$T_ROOT/cold\" and .volumes == 0 and .capacity > 0'"
check_output "pool list shows cold" "^cold +dir .* 0 +$T_ROOT/cold\$" qv pool list
check "pool list --json lists default, cold and fast" pool_json '[.[].name] == ["cold", "default", "fast"]'
printf '{"name": "bad", "type": "lvm", "path": "%s/bad"}\n' "$T_ROOT" > "$T_ROOT/bad.json"
check_error "pool define: an unknown type is refused with its JSON path (exit 2)" 2 'bad.json: type: "lvm" is not one of dir' \
    qv pool define "$T_ROOT/bad.json"
check_error "pool define: a relative path (exit 2)" 2 'path: "rel/dir" is not an absolute directory path' \
    qv pool define --name bad --path rel/dir
check_error "pool define: a path with .. (exit 2)" 2 'path: ".*/\.\./etc" is not an absolute' \
    qv pool define --name bad --path "$T_ROOT/../etc"
check_error "pool define: an unknown key (exit 2)" 2 'bad2.json: unknown key "size"' \
    bash -c "printf '{\"name\": \"bad\", \"type\": \"dir\", \"path\": \"/x\", \"size\": 1}' > '$T_ROOT/bad2.json'; '$QV_BIN' --root '$T_ROOT' pool define '$T_ROOT/bad2.json'"
check_error "pool define: a name taken (exit 4)" 4 'pool fast is already defined' qv pool define --name fast --path "$T_ROOT/fast2"
check_error "pool define: another pool's directory (exit 4)" 4 "$T_ROOT/fast is already pool fast's directory" \
    qv pool define --name fast2 --path "$T_ROOT/fast"
check_not "...bad input defined nothing" test -e "$T_ROOT/etc/qvisor/pools/bad.json" -o -e "$T_ROOT/etc/qvisor/pools/fast2.json" -o -e "$T_ROOT/fast2"
touch "$T_ROOT/afile"
check_error "pool define: a path that is a file (exit 1)" 1 'is a regular file, not a directory' \
    qv pool define --name f --path "$T_ROOT/afile"
check_error "pool show of an unknown pool: no such object (exit 3)" 3 'no pool named nope' qv pool show nope
# a dir pool's volumes are its regular files, and only those
mkdir "$T_ROOT/fast/subdir"
: > "$T_ROOT/outside.raw"
ln -s "$T_ROOT/outside.raw" "$T_ROOT/fast/link.raw"
mkfifo "$T_ROOT/fast/fifo"
truncate -s 1M "$T_ROOT/fast/real.raw"
: > "$T_ROOT/fast/.fast.part-2147483646"
check_output "pool refresh counts regular files only (no symlink, FIFO, directory or temp file)" '^pool fast: 1 volume$' \
    qv pool refresh fast
check_not "...and drops what a dead copy left" test -e "$T_ROOT/fast/.fast.part-2147483646"
check_error "pool refresh of an unknown pool (exit 3)" 3 'no pool named nope' qv pool refresh nope
check_output "pool undefine" '^undefined pool cold \(its volumes stay where they are\)' qv pool undefine cold
check_not "...its definition is gone" test -e "$T_ROOT/etc/qvisor/pools/cold.json"
check "...its directory stays" test -d "$T_ROOT/cold"
check_error "pool undefine of an unknown pool (exit 3)" 3 'no pool named cold' qv pool undefine cold

# ---- volumes ----
vinfo() { qv vol info "$1" --json | jq -e "$2"; }
check_output "vol create: qcow2 by default" '^created volume default/base$' qv vol create default/base --size 64M
check "...a qcow2 file in the pool's directory" bash -c "qemu-img info --output=json '$IMGS/base' | jq -e '.format == \"qcow2\" and .\"virtual-size\" == 67108864'"
check_output "vol create --format raw --preallocation full" 'created volume fast/full.raw' \
    qv vol create fast/full.raw --size 8M --format raw --preallocation full
check "...all of it allocated" vinfo fast/full.raw '.format == "raw" and .capacity == 8388608 and .allocation >= 8388608'
check_output "vol create --preallocation metadata (qcow2)" 'created volume default/meta' \
    qv vol create default/meta --size 16M --preallocation metadata
check "...its metadata laid out: the file spans the whole disk, unlike a plain qcow2" \
    bash -c "[ \$(stat -c %s '$IMGS/meta') -ge 16777216 ] && [ \$(stat -c %s '$IMGS/base') -lt 16777216 ]"
check_output "vol create --backing POOL/VOL: an overlay taking the base's size" 'created volume default/top' \
    qv vol create default/top --backing default/base
check "...vol info shows the chain top first, with pool names" \
    vinfo default/top '[.chain[].volume] == ["default/top", "default/base"] and .capacity == 67108864 and .backing == "'"$IMGS"'/base"'
truncate -s 4M "$T_ROOT/plain.raw"
check_output "vol create --backing FILE" 'created volume fast/onfile' qv vol create fast/onfile --backing "$T_ROOT/plain.raw"
check "...whose chain ends in the file" vinfo fast/onfile '.chain[1].path == "'"$T_ROOT"'/plain.raw" and .chain[1].format == "raw"'
check_output "vol list POOL: names, formats, sizes and backing volumes" '^top +qcow2 +64\.0M +[0-9.]+K +default/base$' qv vol list default
check "vol list --json" bash -c "'$QV_BIN' --root '$T_ROOT' vol list default --json | jq -e '[.[].name] == [\"base\", \"meta\", \"top\"]'"
check_output "vol info (text): format, sizes, chain, users" 'used by: +-' qv vol info default/base
check "vol info: base is the backing file of top" vinfo default/base '.backing_for == ["default/top"] and .used_by == []'
check_error "vol create of an existing name: conflict (exit 4)" 4 'pool default already has a volume base' \
    qv vol create default/base --size 1M
check_error "vol create without --size or --backing (exit 2)" 2 '--size is needed' qv vol create default/nosize
check_error "vol create: a bad size (exit 2)" 2 '--size 10Q: not a size' qv vol create default/x --size 10Q
check_error "vol create: a bad format (exit 2)" 2 '--format vmdk: not one of qcow2, raw' qv vol create default/x --size 1M --format vmdk
check_error "vol create: metadata preallocation of raw (exit 2)" 2 'preallocation metadata is for qcow2' \
    qv vol create default/x --size 1M --format raw --preallocation metadata
check_error "vol create: a name with .. (exit 2)" 2 'not a volume reference' qv vol create default/../x --size 1M
check_error "vol create: a name starting with a dot (exit 2)" 2 '".x" is not a valid volume name' qv vol create default/.x --size 1M
check_error "vol create: in an unknown pool (exit 3)" 3 'no pool named nope' qv vol create nope/x --size 1M
check_error "vol create: a missing backing volume (exit 3)" 3 'pool default has no volume gone' qv vol create default/x --backing default/gone
check_not "...bad input created nothing" bash -c "ls -A '$IMGS' | grep -vxE 'base|meta|top'"
check_error "vol info of a missing volume (exit 3)" 3 'pool default has no volume gone' qv vol info default/gone
check_error "vol info of a symlink in the pool (exit 2)" 2 'link.raw is a symbolic link, not a volume' qv vol info fast/link.raw
check_error "vol delete of a symlink in the pool (exit 2)" 2 'symbolic link' qv vol delete fast/link.raw
check "...which stays, as does its target" test -L "$T_ROOT/fast/link.raw" -a -e "$T_ROOT/outside.raw"

# resize
check_output "vol resize +SIZE grows" 'volume default/meta is now 32M' qv vol resize default/meta +16M
check_output "vol resize SIZE" 'volume default/meta is now 48M' qv vol resize default/meta 48M
check "...qemu-img agrees" bash -c "qemu-img info --output=json '$IMGS/meta' | jq -e '.\"virtual-size\" == 50331648'"
check_error "vol resize smaller without --allow-shrink: refused (exit 2)" 2 'shrinking loses data.*--allow-shrink' \
    qv vol resize default/meta 16M
check "...the size is unchanged" vinfo default/meta '.capacity == 50331648'
check_output "vol resize --allow-shrink" 'volume fast/full.raw is now 4M' qv vol resize fast/full.raw 4M --allow-shrink
check_error "vol resize: a bad size (exit 2)" 2 '"big" is not a size' qv vol resize default/meta big

# in use: by a defined VM, then a running one
define_guest vu "" --disk "file=$IMGS/meta,serial=META"
check "vol info names the VM using it (defined)" vinfo default/meta '.used_by == ["vu (defined)"]'
check_error "vol delete of a volume a defined VM uses: conflict naming the VM (exit 4)" 4 \
    'volume default/meta is used by VM vu \(defined\); delete it anyway with --force' qv vol delete default/meta
check_error "vol resize --allow-shrink of it: conflict (exit 4)" 4 'used by VM vu \(defined\); shrink it anyway with --force' \
    qv vol resize default/meta 32M --allow-shrink
check "...the volume is untouched" vinfo default/meta '.capacity == 50331648'
define_guest vb "" --disk "file=$IMGS/top,serial=TOP"
check "a VM whose disk is built on a volume uses that volume too" vinfo default/base '.used_by == ["vb (defined)"]'
qv start -q vu
check "vol info names the VM using it (running)" vinfo default/meta '.used_by == ["vu (running)"]'
check_error "vol delete of a running VM's volume: conflict (exit 4)" 4 \
    'used by VM vu \(running\)' qv vol delete default/meta
qv kill -q vu
check_error "vol delete of a volume others are built on: always refused, even with --force (exit 4)" 4 \
    'volume default/base is the backing file of default/top' qv vol delete default/base --force
check "...it stays" test -f "$IMGS/base"
check_output "vol delete --force of a defined VM's volume" 'deleted volume default/meta' qv vol delete default/meta --force
check_not "...it is gone" test -e "$IMGS/meta"
qv undefine -q vb
check_output "vol delete of the overlay" 'deleted volume default/top' qv vol delete default/top
check_output "...then of its base" 'deleted volume default/base' qv vol delete default/base
check_error "vol delete of a missing volume (exit 3)" 3 'pool default has no volume base' qv vol delete default/base

# a pool whose volumes a VM uses is not undefined
define_guest vf "" --disk "file=$T_ROOT/fast/onfile"
check_error "pool undefine of a pool a VM uses: conflict naming it (exit 4)" 4 'pool fast holds volumes of VM vf \(defined\)' \
    qv pool undefine fast
check "...it stays defined" test -f "$T_ROOT/etc/qvisor/pools/fast.json"
qv undefine -q vf

# ---- clone, import, export ----
head -c 1048576 /dev/urandom > "$T_ROOT/data.bin"
truncate -s 32M "$T_ROOT/data.bin"
qemu-img convert -q -f raw -O qcow2 "$T_ROOT/data.bin" "$T_ROOT/cloud.qcow2"
check_output "vol import FILE: converted to qcow2 by default" 'imported .*/cloud.qcow2 as default/src \(qcow2\)' \
    qv vol import default/src "$T_ROOT/cloud.qcow2"
check "...holds the image's data" qemu-img compare -q -f raw -F qcow2 "$T_ROOT/data.bin" "$IMGS/src"
check_output "vol import --format raw" 'as fast/src.raw \(raw\)' qv vol import fast/src.raw "$T_ROOT/cloud.qcow2" --format raw
check "...raw, with the same data" cmp "$T_ROOT/data.bin" "$T_ROOT/fast/src.raw"
qv vol create -q default/ovl --backing default/src
printf 'OVERLAY-DATA' | qemu-io -f qcow2 -c 'write -P 0x4f 2M 64k' "$IMGS/ovl" >/dev/null
check_output "vol clone within the pool (same format)" 'cloned default/ovl to default/ovl-copy \(qcow2\)' \
    qv vol clone default/ovl ovl-copy
check "...a standalone copy: no backing file" vinfo default/ovl-copy '.backing == null and (.chain | length) == 1'
check "...with the data of the whole chain" qemu-img compare -q "$IMGS/ovl" "$IMGS/ovl-copy"
check_output "vol clone --pool --format: into another pool, converted" 'cloned default/ovl to fast/ovl\.raw \(raw\)' \
    qv vol clone default/ovl ovl.raw --pool fast --format raw
check "...the same data" qemu-img compare -q -F raw "$IMGS/ovl" "$T_ROOT/fast/ovl.raw"
check_error "vol clone onto an existing name: conflict (exit 4)" 4 'pool default already has a volume src' qv vol clone default/ovl src
check_error "vol clone of a missing volume (exit 3)" 3 'pool default has no volume gone' qv vol clone default/gone x
check_error "vol clone into a missing pool (exit 3)" 3 'no pool named nope' qv vol clone default/ovl x --pool nope
check_error "vol import of a missing file (exit 3)" 3 'vol import: .*/nothing.img: No such file' qv vol import default/x "$T_ROOT/nothing.img"
qemu-img create -q -f qcow2 -F raw -b /etc/hostname "$T_ROOT/evil.qcow2"
check_error "vol import of an image with a backing file: refused, it could name any host file (exit 2)" 2 \
    'evil.qcow2 has a backing file \(/etc/hostname\)' qv vol import default/evil "$T_ROOT/evil.qcow2"
check_not "...nothing imported" test -e "$IMGS/evil"
check_error "vol import of a directory (exit 2)" 2 'is a directory, not an image file' qv vol import default/x "$T_ROOT"
check_output "vol export FILE: the volume's format" "exported default/ovl to $T_ROOT/out.qcow2" qv vol export default/ovl "$T_ROOT/out.qcow2"
check "...qcow2, standalone, same data" bash -c "qemu-img info --output=json '$T_ROOT/out.qcow2' | jq -e '.format == \"qcow2\" and (.\"backing-filename\" | not)' && qemu-img compare -q '$IMGS/ovl' '$T_ROOT/out.qcow2'"
check_output "vol export --format raw" 'exported' qv vol export default/src "$T_ROOT/out.raw" --format raw
check "...the raw bytes" cmp "$T_ROOT/data.bin" "$T_ROOT/out.raw"
check_error "vol export onto an existing file: conflict (exit 4)" 4 'out.raw already exists' qv vol export default/src "$T_ROOT/out.raw"
check "vol export - streams the guest's view as raw bytes" bash -c "'$QV_BIN' --root '$T_ROOT' vol export default/src - | cmp - '$T_ROOT/data.bin'"
check_error "vol export - --format qcow2: a stream is raw (exit 2)" 2 'a stream is raw' \
    bash -c "'$QV_BIN' --root '$T_ROOT' vol export default/src - --format qcow2 > '$T_ROOT/stream.out'"
check_not "exports and copies left no temporary files" bash -c "ls -A '$IMGS' '$T_ROOT/fast' '$T_ROOT' | grep -F .part-"

# progress: a bar on a terminal, nothing when piped
check_output "vol clone on a terminal draws a progress bar up to 100%" 'vol clone default/src default/tty \[#{40}\] 100%' \
    script -qec "'$QV_BIN' --root '$T_ROOT' vol clone default/src tty" /dev/null
check "vol clone piped prints no progress (stderr empty)" \
    bash -c "'$QV_BIN' --root '$T_ROOT' vol clone default/src piped 2>'$T_ROOT/err' | cat >/dev/null && [ ! -s '$T_ROOT/err' ]"

# Ctrl-C: qemu-img through a wrapper that, once the real copy is written, waits, so
# that the interrupt lands while the temporary file is complete but not yet renamed
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
export SLOW_DIR=$T_ROOT
QVISOR_QEMU_IMG=$T_ROOT/slow-qemu-img "$QV_BIN" --root "$T_ROOT" vol clone default/src intr --pool fast >"$T_ROOT/intr.out" 2>&1 &
qpid=$!
on_exit "kill -9 $qpid"
check "a clone through the slow wrapper reaches its wait" wait_until 30 test -s "$T_ROOT/copying"
cpid=$(cat "$T_ROOT/copying" 2>/dev/null)
check "...its temporary file is in the target pool" bash -c "ls -A '$T_ROOT/fast' | grep -qx '\.intr\.part-$qpid'"
kill -INT "$qpid"
wait "$qpid"; rc=$?
check "SIGINT: qvisor stops with exit 1" test "$rc" -eq 1
check "...saying the copy was interrupted and nothing written" grep -q 'vol clone default/src fast/intr: interrupted; nothing was written' "$T_ROOT/intr.out"
check_not "...the qemu-img child is gone (killed, not left running)" kill -0 "$cpid"
check_not "...no volume intr" test -e "$T_ROOT/fast/intr"
check_not "...and no temporary file" bash -c "ls -A '$T_ROOT/fast' | grep -F intr"

# ---- VM disks naming volumes ----
# the marker the host writes at the start of the bottom layer (raw), read back by the
# guest through each disk
marker=QVMARK-$RANDOM$RANDOM
qv vol create -q default/l0 --size 16M --format raw
printf '%s' "$marker" | dd of="$IMGS/l0" conv=notrunc status=none
for i in 1 2 3 4; do qv vol create -q "default/l$i" --backing "default/l$((i - 1))"; done
check "a 5-deep volume chain: vol info lists l4 down to l0" \
    vinfo default/l4 '[.chain[].volume] == ["default/l4", "default/l3", "default/l2", "default/l1", "default/l0"]'
qv vol create -q default/plain --size 16M --format raw
printf '%s' "$marker-plain" | dd of="$IMGS/plain" conv=notrunc status=none
check "define --disk vol=POOL/NAME" define_guest vd "" --disk vol=default/plain,serial=PLAIN --disk vol=default/l4,serial=CHAIN
check "...the definition names the volumes, not their files" \
    bash -c "'$QV_BIN' --root '$T_ROOT' show vd --json | jq -e '[.disks[] | .volume] == [\"default/plain\", \"default/l4\"] and ([.disks[] | .file] == [null, null])'"
argv=$(qv argv vd)
check "argv: every layer of the chain is a node of its own read from an fd, linked by backing" \
    bash -c "grep -c '\"node-name\":\"disk1-b[0-3]-fmt\"' <<< '$argv' | grep -qx 4 &&
             grep -q '\"node-name\":\"disk1-fmt\",\"backing\":\"disk1-b0-fmt\"' <<< '$argv' &&
             grep -q '\"node-name\":\"disk1-b2-fmt\",\"backing\":\"disk1-b3-fmt\"' <<< '$argv' && ! grep -q '$IMGS' <<< '$argv'"
check_output "vd starts (sandboxed: QEMU sees no image path)" '^vd started' qv start vd
check "...a guest boots" wait_log vd 'QVISOR-GUEST: ready' 90
check "...it reads the marker from the plain volume" wait_until 20 guest_ok vd "head -c ${#marker} /dev/$(gdisk PLAIN) | grep -qx '$marker'"
check "...and through the 5-deep chain from its bottom layer" guest_ok vd "head -c ${#marker} /dev/$(gdisk CHAIN) | grep -qx '$marker'"
check "vol info: l0 is used by vd (running), through the chain" vinfo default/l0 '.used_by == ["vd (running)"] and .backing_for == ["default/l1", "default/l2", "default/l3", "default/l4"]'
check_error "vol delete of the plain volume of the running VM: conflict (exit 4)" 4 'used by VM vd \(running\)' qv vol delete default/plain
qv kill -q vd

# attach-disk --volume, live and persistent
qv vol create -q default/hot --size 8M --format raw
printf '%s' "$marker-hot" | dd of="$IMGS/hot" conv=notrunc status=none
define_guest vh
qv start -q vh
check "a second guest boots" wait_log vh 'QVISOR-GUEST: ready' 90
check_output "attach-disk --volume --persistent" 'disk attached as disk[0-9]+ \(and defined\)' \
    qv attach-disk vh --volume default/hot --serial HOT --persistent
check "...the guest reads the volume's marker" wait_until 20 guest_ok vh "head -c $((${#marker} + 4)) /dev/$(gdisk HOT) | grep -qx '$marker-hot'"
check "...and the definition names the volume" bash -c "'$QV_BIN' --root '$T_ROOT' show vh --json | jq -e 'any(.disks[]; .volume == \"default/hot\")'"
check_error "attach-disk --volume of a missing volume: no such object (exit 3)" 3 'attach-disk --volume: pool default has no volume gone' \
    qv attach-disk vh --volume default/gone
check_error "attach-disk with a FILE and --volume (exit 2)" 2 'a FILE or --volume' qv attach-disk vh /x --volume default/hot
qv kill -q vh

# a missing volume is refused at start, naming VM, disk and volume
qv vol create -q default/gone-soon --size 1M --format raw
define_guest vm "" --disk vol=default/gone-soon
qv vol delete -q --force default/gone-soon
check_error "start with a missing volume: no such object naming VM, disk and volume (exit 3)" 3 \
    'vm: disks\[0\]: volume default/gone-soon: pool default has no volume gone-soon' qv start vm
check_error "define with a bad volume reference (exit 2)" 2 'disks\[0\]\.volume: "nopool" is not a volume' \
    qv define vbad --memory 128M --disk vol=nopool
check_error "a disk with both file and volume (exit 2)" 2 'disks\[0\]: needs "file" \(an image\) or "volume"' \
    qv define vbad --memory 128M --disk file=/x,vol=default/x
# a broken chain is refused before QEMU starts, naming the layer and who points at it
qv vol create -q default/b0 --size 1M --format raw
qv vol create -q default/b1 --backing default/b0
define_guest vbroken "" --disk vol=default/b1
rm "$IMGS/b0"
check_error "start with a missing chain layer: refused before QEMU, naming both images" 3 \
    "vbroken: disks\[0\]: $IMGS/b1: backing file: $IMGS/b0" qv start vbroken
check_not "...no QEMU ran" log_has vbroken 'QEMU started|qemu pid'

# define --disk size=: a new volume in the default pool
check_output "define --disk size=32M creates default/NAME-disk0" 'created volume default/vs-disk0' \
    qv define vs --memory 128M --kernel "$G_KERNEL" --initrd "$G_INITRD" --disk size=32M
check "...a 32M qcow2 volume" vinfo default/vs-disk0 '.capacity == 33554432 and .format == "qcow2" and .used_by == ["vs (defined)"]'
check_output "...in another pool with pool=, raw with format=" 'created volume fast/vs2-disk1' \
    qv define vs2 --memory 128M --disk vol=default/plain --disk size=8M,pool=fast,format=raw
check "...raw" vinfo fast/vs2-disk1 '.format == "raw"'
check_error "define --disk size= when that volume exists: conflict (exit 4)" 4 'volume default/vs-disk0 exists already' \
    qv define vs --memory 128M --disk size=32M
check_error "define --disk size= of a VM that fails validation creates nothing (exit 2)" 2 'memory' \
    qv define vx --memory lots --disk size=8M
check_not "...no volume vx-disk0" test -e "$IMGS/vx-disk0"

# ---- undefine --remove-storage, --keep-nvram ----
define_guest vs3 "" --disk vol=default/vs-disk0
check_error "undefine --remove-storage of a VM sharing a volume with another: conflict naming it (exit 4)" 4 \
    'vs: --remove-storage: volume default/vs-disk0 is used by VM vs3 \(defined\) too' qv undefine vs --remove-storage
check "...nothing changed: vs is still defined" test -f "$T_ROOT/etc/qvisor/vms/vs.json"
check "...and its volume is there" test -f "$IMGS/vs-disk0"
qv undefine -q vs3
mkdir -p "$T_ROOT/var/lib/qvisor/nvram"
echo vars > "$T_ROOT/var/lib/qvisor/nvram/vs_VARS.fd"
check_output "undefine --remove-storage deletes the VM's volumes" 'deleted volume default/vs-disk0' qv undefine vs --remove-storage
check_not "...the volume is gone" test -e "$IMGS/vs-disk0"
check_not "...and so is its UEFI variable store (a new vs must not inherit it)" test -e "$T_ROOT/var/lib/qvisor/nvram/vs_VARS.fd"
echo vars > "$T_ROOT/var/lib/qvisor/nvram/vs2_VARS.fd"
check_output "undefine --keep-nvram" '^undefined vs2$' qv undefine vs2 --keep-nvram
check "...keeps the UEFI variable store" test -f "$T_ROOT/var/lib/qvisor/nvram/vs2_VARS.fd"
check "...and, without --remove-storage, the volumes" test -f "$T_ROOT/fast/vs2-disk1"

# ---- clone VM NEW [--linked] ----
qv vol create -q default/cs --size 8M --format raw
printf '%s' "$marker-cs" | dd of="$IMGS/cs" conv=notrunc status=none
truncate -s 4M "$T_ROOT/cs-file.raw"
define_guest csrc "" --disk vol=default/cs --disk "file=$T_ROOT/cs-file.raw" --disk "file=$T_ROOT/cs-file.raw,readonly=on"
shown() { qv show "$1" --json; }
check_output "clone VM NEW: full copies" '^cloned csrc to cfull \(full copies\)' qv clone csrc cfull
check "...a new uuid and new MACs" bash -c "[ \"\$('$QV_BIN' --root '$T_ROOT' show cfull --json | jq -r '.uuid, .nics[0].mac')\" != \"\$('$QV_BIN' --root '$T_ROOT' show csrc --json | jq -r '.uuid, .nics[0].mac')\" ]"
check "...its writable disks are new volumes (a file disk lands in default), the read-only one shared" \
    bash -c "'$QV_BIN' --root '$T_ROOT' show cfull --json | jq -e '[.disks[] | .volume // .file] == [\"default/cfull-disk0\", \"default/cfull-disk1\", \"$T_ROOT/cs-file.raw\"]'"
check "...standalone copies holding the data" cmp "$IMGS/cs" "$IMGS/cfull-disk0"
check "...with no backing file" vinfo default/cfull-disk0 '.backing == null'
check_output "clone --linked" 'cloned csrc to clink \(linked' qv clone csrc clink --linked
check "...the clone's disk is an overlay on the source's image" vinfo default/clink-disk0 '[.chain[].volume] == ["default/clink-disk0", "default/cs"]'
check "...and the source VM moved onto an overlay of its own" \
    bash -c "'$QV_BIN' --root '$T_ROOT' show csrc --json | jq -e '.disks[0].volume == \"default/csrc-disk0-top\"' && '$QV_BIN' --root '$T_ROOT' vol info default/csrc-disk0-top --json | jq -e '.chain[1].volume == \"default/cs\"'"
check "...so the shared image is used by both, and deleting it is refused" \
    bash -c "'$QV_BIN' --root '$T_ROOT' vol info default/cs --json | jq -e '.used_by == [\"clink (defined)\", \"csrc (defined)\"]' && ! '$QV_BIN' --root '$T_ROOT' vol delete default/cs --force"
qv start -q clink
check "the linked clone boots" wait_log clink 'QVISOR-GUEST: ready' 90
check "...and reads the source's data through its overlay" wait_until 20 guest_ok clink "head -c $((${#marker} + 3)) /dev/\$(basename \$(ls -d /sys/block/vd* | head -1)) | grep -qx '$marker-cs'"
check_error "clone of a running VM: conflict (exit 4)" 4 'clink is running; its disks change under a copy' qv clone clink c2
qv kill -q clink
check_error "clone onto a defined name: conflict (exit 4)" 4 'cfull is already defined' qv clone csrc cfull
check_error "clone of an unknown VM (exit 3)" 3 'no VM named nope' qv clone nope c3
qv vol create -q default/cfail-disk1 --size 1M --format raw
check_error "clone whose second copy cannot be made: conflict (exit 4)" 4 'pool default already has a volume cfail-disk1' qv clone csrc cfail
check_not "...and the first copy was removed again, nothing defined" bash -c "test -e '$IMGS/cfail-disk0' || test -e '$T_ROOT/etc/qvisor/vms/cfail.json'"
finish
