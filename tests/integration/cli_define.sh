#!/bin/bash
# timeout: 900
# The definition commands through the real binary: define/show/list/undefine/argv,
# golden definitions and their errors, exit codes, global options in any position.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
for f in a.raw b.raw cd.iso d{0..11}.raw; do truncate -s 1M "$img/$f"; done
qemu-img create -q -f qcow2 "$img/a.qcow2" 16M
ln -s "$G_KERNEL" "$img/vmlinux"
ln -s "$G_INITRD" "$img/initrd.img"
gold=$T_TOP/tests/golden
work=$T_ROOT/defs
mkdir -p "$work"
# The golden files name /tmp/qvisor-golden; this test keeps its images in its own root.
for f in "$gold"/*.json "$gold"/*.argv "$gold"/*.error; do
    IFS= read -r -d '' text < "$f"
    printf '%s' "${text//\/tmp\/qvisor-golden/$img}" > "$work/${f##*/}"
done

# `qvisor argv` of a golden definition is built with the pinned host facts the unit
# test uses, so the golden files hold on any host (no /dev/kvm, no vhost-net, no OVMF).
# The two loops below make ~420 calls. They check what the command line prints and
# writes, so they run the optimized build (lib.sh's qp): under ASan each call cost ~110
# ms of CPU against ~15, a quarter of this group's time. Memory errors in that code stay
# covered: test_argv_golden parses and builds every golden definition and error in one
# process under ASan+LSan, and every other call here (define, show, list, edit,
# undefine, argv) runs the ASan build.
golden_argv() { QVISOR_HOST_FACTS=$T_TOP/tests/golden-host.json qp argv "$@"; }

snapshot() { (cd "$T_ROOT" && find etc var -type f -newer "$img/a.raw" 2>/dev/null | sort | xargs -r md5sum); }

# every golden definition defines, and `qvisor argv` prints exactly its golden file
# (the loops start as few processes as they can: each costs ~8 ms of CPU here)
mismatch=()
for def in "$work"/*.json; do
    name=${def##*/}
    name=${name%.json}
    [ -f "$work/$name.argv" ] || continue
    if ! out=$(qp define -q "$def" 2>&1); then mismatch+=("$name: define: $out"); continue; fi
    got=$(golden_argv "$name" 2>&1)
    IFS= read -r -d '' want < "$work/$name.argv"
    if [ "$got" != "${want%$'\n'}" ]; then
        mismatch+=("$name: $(diff -u "$work/$name.argv" - <<< "$got" | head -20)")
    fi
done
if [ ${#mismatch[@]} -eq 0 ]; then ok "qvisor argv of every golden definition matches its file"
else not_ok "qvisor argv of every golden definition matches its file"; diag "$(printf '%s\n' "${mismatch[@]}")"; fi

# every bad definition: one line naming the JSON path, exit 2, root unchanged (the root
# is compared once around the whole loop: any file a refused define wrote or changed
# shows; the two valid ones below are undefined again, which leaves no file behind)
bad=()
before=$(snapshot)
for err in "$work"/*.error; do
    name=${err##*/}
    name=${name%.error}
    IFS= read -r want < "$err"
    out=$(qp define "$work/$name.json" 2>&1); rc=$?
    if [ "$name" = err-cpu-host-tcg ] || [ "$name" = err-maxphysaddr-auto-tcg ]; then
        # valid definitions whose command line cannot be built on this host (TCG)
        out=$(golden_argv "$name" 2>&1); rc=$?
        qv undefine -q "$name"
    fi
    [ $rc -eq 2 ] || bad+=("$name: exit $rc, want 2")
    [[ $out == *$'\n'* ]] && bad+=("$name: more than one line: $out")
    [[ $out == *"$want" ]] || bad+=("$name: got '$out', want '...$want'")
done
after=$(snapshot)
[ "$after" = "$before" ] || bad+=("the root changed: $(diff <(echo "$before") <(echo "$after"))")
if [ ${#bad[@]} -eq 0 ]; then ok "every bad definition is refused with its one-line error and exit 2"
else not_ok "every bad definition is refused with its one-line error and exit 2"; diag "$(printf '%s\n' "${bad[@]}")"; fi

# define -> show keeps every value the definition gave (defaults may be added), and
# define -> show -> define is a fixed point. Each leaf of the input must be in the
# output at the same path with the same value; an empty or unparsable show fails.
keeps_input() {
    local in=$1 out=$2
    [ -s "$out" ] || { echo "$out is empty"; return 1; }
    jq -e --slurpfile i "$in" '. as $o | [$i[0] | paths(scalars) as $p
        | select(($o | getpath($p)) != ($i[0] | getpath($p)))
        | "\($p | map(tostring) | join(".")): \($i[0] | getpath($p)) became \($o | getpath($p))"]
        | if length == 0 then true else error(join("; ")) end' "$out"
}
qv show full > "$T_ROOT/full1.json"
check "define -> show keeps every value of the definition" keeps_input "$work/full.json" "$T_ROOT/full1.json"
qv undefine -q full
qv define -q "$T_ROOT/full1.json"
qv show full > "$T_ROOT/full2.json"
check "define -> show -> define is a fixed point" bash -c "test -s '$T_ROOT/full1.json' && cmp '$T_ROOT/full1.json' '$T_ROOT/full2.json'"
check "...which still keeps every value of the definition" keeps_input "$work/full.json" "$T_ROOT/full2.json"

# conflicts: same name, same uuid, same MAC
check_exit "a second VM with the same name is refused (exit 4)" 4 qv define "$work/minimal.json"
sed 's/"name": "minimal"/"name": "other"/' "$work/minimal.json" > "$T_ROOT/other.json"
check_error "a second VM with the same uuid is refused (exit 4)" 4 "uuid: .* is already used" qv define "$T_ROOT/other.json"
cat > "$T_ROOT/macdup.json" <<J
{"name": "macdup", "nics": [{"type": "user", "mac": "52:54:00:01:02:03"}]}
J
check_error "a MAC used by another VM is refused, naming that VM (exit 4)" 4 "already used by VM full" qv define "$T_ROOT/macdup.json"

# generated MACs are stored and stable, and differ between VMs
qv define -q mac1 --nic user --nic user
qv define -q mac2 --nic user
macs=$(for v in mac1 mac2; do qv show "$v" | grep -o '"mac": "[^"]*"'; done | sort)
check "generated MACs are unique across VMs" test "$(uniq <<< "$macs" | wc -l)" -eq 3
check_output "generated MACs use the 52:54:00 prefix" '"mac": "52:54:00:' qv show mac1

# define by flags gives the same definition as the JSON form
qv define -q flags --memory 512M --cpus 2 --disk "file=$img/a.qcow2,bus=virtio,cache=writeback" \
    --kernel "$img/vmlinux" --append "console=ttyS0" --nic "user,hostfwd=tcp::2222-:22" --console serial
check_output "flags: memory and cpus" '"memory": "512M"' qv show flags
check_output "flags: disk format read from the image header" '"format": "qcow2"' qv show flags
check_output "flags: hostfwd parsed into an object" '"host_port": 2222' qv show flags
check_output "define --print shows the normalised JSON without writing" '"name": "printed"' qv define printed --memory 1G --print
check_exit "...and nothing was defined" 3 qv show printed
check_error "a missing image without a format is refused with the path (exit 3)" 3 \
    "disks\[0\].file: $img/missing.raw: No such file or directory" qv define nofile --disk "$img/missing.raw"

# global options before or after the command word, and QVISOR_ROOT
check_output "--root and --json after the command" '"name": "minimal"' "$QV_BIN" show minimal --root "$T_ROOT" --json
check_output "--root before the command" '"name": "minimal"' "$QV_BIN" --root "$T_ROOT" show minimal
check_output "QVISOR_ROOT selects the root" '"name": "minimal"' env QVISOR_ROOT="$T_ROOT" "$QV_BIN" show minimal
check_output "list --all shows defined VMs" '^minimal +shut off' qv list --all
check_output "list --all --json" '"state": "shut off"' qv list --all --json
check_output "show warns about qemu_args" 'warning: qemu-args: qemu_args are passed to QEMU unchecked' qv show qemu-args

# edit: validated before anything is written
qv show minimal | sed 's/"memory": "1G"/"memory": "768M"/' > "$T_ROOT/edit.json"
check_output "edit from a pipe changes the definition" "minimal changed" bash -c "'$QV_BIN' --root '$T_ROOT' edit minimal < '$T_ROOT/edit.json'"
check_output "...as show tells" '"memory": "768M"' qv show minimal
qv show minimal | sed 's/"memory": "768M"/"memory": "lots"/' > "$T_ROOT/edit-bad.json"
check_error "a bad edit is refused with its JSON path (exit 2)" 2 'memory: "lots" is not a size' \
    bash -c "'$QV_BIN' --root '$T_ROOT' edit minimal < '$T_ROOT/edit-bad.json'"
check_output "...and changed nothing" '"memory": "768M"' qv show minimal
qv show minimal | sed 's/"name": "minimal"/"name": "renamed"/' > "$T_ROOT/edit-name.json"
check_error "edit cannot rename (exit 2)" 2 'a VM keeps its name' bash -c "'$QV_BIN' --root '$T_ROOT' edit minimal < '$T_ROOT/edit-name.json'"
# the same definition, spelled differently (768M as bytes): no change, the file untouched
def_file=$T_ROOT/etc/qvisor/vms/minimal.json
before=$(stat -c %Y.%i "$def_file")
qv show minimal | sed 's/"memory": "768M"/"memory": "805306368"/' > "$T_ROOT/edit-same.json"
check_output "an edit that changes nothing says so" '^minimal: no change$' \
    bash -c "'$QV_BIN' --root '$T_ROOT' edit minimal < '$T_ROOT/edit-same.json'"
check "...and leaves the definition file as it was" test "$(stat -c %Y.%i "$def_file")" = "$before"

# errors and exit codes
check_exit "show of an unknown VM exits 3" 3 qv show nosuchvm
check_exit "undefine of an unknown VM exits 3" 3 qv undefine nosuchvm
check_exit "an unknown command exits 2" 2 qv frobnicate
check_exit "an unknown option exits 2" 2 qv list --bogus
printf '{"name": "broken",\n  "memory": }\n' > "$T_ROOT/broken.json"
check_error "a JSON syntax error names file, line and column (exit 2)" 2 "broken.json:2:13: " qv define "$T_ROOT/broken.json"
check "undefine removes the definition" qv undefine -q flags
check_exit "...after which show exits 3" 3 qv show flags
finish
