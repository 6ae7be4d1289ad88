#!/bin/bash
# timeout: 400
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
finish
