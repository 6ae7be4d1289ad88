#!/bin/bash
# timeout: 600
# change-media: a running VM's CD-ROM drives take another medium (opened by the
# supervisor, passed read-only as an fd) or are ejected, and the guest sees it: an
# empty drive takes one, a full drive swaps it, an eject leaves "no medium". The old
# medium's block nodes and fdset go. What the drives hold survives a restart of the
# supervisor; --config (or a VM that is not running) changes the definition. Errors
# name the VM, the drive and the cause, with their exit codes.
. "$(dirname "$0")/../lib.sh"
# a detached supervisor's stderr is /dev/null: its sanitizer reports go to files
export ASAN_OPTIONS=$ASAN_OPTIONS:log_path=$T_ROOT/sanitizer UBSAN_OPTIONS=$UBSAN_OPTIONS:log_path=$T_ROOT/sanitizer

# "media" of 1 MiB with a marker in their first sector: the guest reads /dev/srN raw
mkmedium() { truncate -s 1M "$T_ROOT/$1.iso"; printf 'MEDIUM-%s-MARK' "$1" | dd of="$T_ROOT/$1.iso" conv=notrunc status=none; }
for m in one two three four; do mkmedium $m; done
truncate -s 8M "$T_ROOT/data.raw"
define_guest cd "" --disk "file=$T_ROOT/data.raw" --cdrom empty --cdrom "$T_ROOT/one.iso"
qv start -q cd || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 90 guest_ok cd true
# reads N WHAT: the guest reads WHAT ("one", "two", ...) from /dev/srN; the first
# read after a change may fail once (the drive's "medium may have changed"), so poll
reads() { wait_until 20 guest_ok cd "dd if=/dev/sr$1 bs=2048 count=1 2>/dev/null | grep -q MEDIUM-$2-MARK"; }
empty() { gsh cd "dd if=/dev/sr$1 bs=2048 count=1 of=/dev/null" | grep -q "can't open '/dev/sr$1': No medium found"; }
media() { qv status cd --json | jq -c '[.cdroms[] | .file // "-" | sub(".*/"; "")]'; }
nodes() { qv qmp cd '{"execute": "query-named-block-nodes"}' | jq -c '[.[]."node-name" | select(startswith("cdrom"))] | sort'; }
fdsets() { qv qmp cd '{"execute": "query-fdsets"}' | jq -c '[.[].fds[].opaque | select(startswith("cdrom"))] | sort'; }

check "the guest sees no medium in the empty drive" empty 0
check "...and the definition's medium in the other" reads 1 one
check_output "status lists the drives and what they hold" '^\["-","one.iso"\]$' media
check_output "change-media into the empty drive" "^cd: cdrom0 now holds $T_ROOT/two.iso\$" qv change-media cd cdrom0 "$T_ROOT/two.iso"
check "...the guest reads the new medium" reads 0 two
check_output "change-media of a full drive, named by the file it holds" "^cd: cdrom1 now holds $T_ROOT/three.iso\$" \
    qv change-media cd "$T_ROOT/one.iso" "$T_ROOT/three.iso"
check "...the guest reads the new medium" reads 1 three
check_output "...status follows" '^\["two.iso","three.iso"\]$' media
check_output "...the old medium's block nodes are gone, one node pair per medium" \
    '^\["cdrom0-m1-file","cdrom0-m1-fmt","cdrom1-m1-file","cdrom1-m1-fmt"\]$' nodes
check_output "...and so is its fdset" '^\["cdrom0-m1-file","cdrom1-m1-file"\]$' fdsets
check_output "the supervisor passed an fd: QEMU opened no path" '"file": "/dev/fdset/[0-9]+"' \
    qv qmp cd '{"execute": "query-block"}'
check_output "eject" '^cd: cdrom0 ejected$' qv change-media cd cdrom0 --eject
# before the guest opens the drive: Linux closes an open tray on open
check "...the tray is closed, with nothing in it" bash -c "'$QV_BIN' --root '$T_ROOT' qmp cd '{\"execute\": \"query-block\"}' | jq -e '[.[] | select(.qdev | test(\"cdrom0\"))] | length == 1 and .[0].tray_open == false and (.[0].inserted | not)'"
check "...the guest sees no medium" wait_until 20 empty 0
check_output "...status says the drive is empty" '^\["-","three.iso"\]$' media
check_output "...its nodes and fdset are gone" '^\["cdrom1-m1-file"\]$' fdsets
check_output "eject of an empty drive is no error" '^cd: cdrom0 ejected$' qv change-media cd cdrom0 --eject

# errors: nothing changes
check_error "an unknown drive: no such object (exit 3)" 3 'cd: no CD-ROM cdrom7 \(a drive id such as cdrom0' \
    qv change-media cd cdrom7 "$T_ROOT/two.iso"
check_error "a disk instead of a CD-ROM (exit 2)" 2 'cd: disk0 is a disk, not a CD-ROM' qv change-media cd disk0 "$T_ROOT/two.iso"
check_error "...also by its file (exit 2)" 2 "cd: $T_ROOT/data.raw is a disk, not a CD-ROM" \
    qv change-media cd "$T_ROOT/data.raw" --eject
check_error "a missing file: no such object (exit 3)" 3 "cd: change-media cdrom1: $T_ROOT/nothing.iso: No such file or directory" \
    qv change-media cd cdrom1 "$T_ROOT/nothing.iso"
check_error "a directory (exit 2)" 2 "is a directory, not a regular file" qv change-media cd cdrom1 "$T_ROOT"
check_error "a FILE and --eject (exit 2)" 2 'a FILE or --eject, one of them' qv change-media cd cdrom1 "$T_ROOT/two.iso" --eject
check_error "neither (exit 2)" 2 'a FILE or --eject, one of them' qv change-media cd cdrom1
check_output "...nothing changed" '^\["-","three.iso"\]$' media
check "...and the guest still reads its medium" reads 1 three

# a new supervisor knows what the drives hold
qpid=$(vm_pid cd)
spid=$(sup_pid cd)
kill -9 "$spid"
check "kill -9 of the supervisor" wait_until 10 bash -c "! kill -0 $spid 2>/dev/null"
check_output "start reattaches" 'cd started' qv start cd
check "...to the same QEMU" test "$(vm_pid cd)" = "$qpid"
check_output "...status still shows the media change made before" '^\["-","three.iso"\]$' media
check_output "...the drive is named by the file it holds now" "^cd: cdrom1 now holds $T_ROOT/four.iso\$" \
    qv change-media cd "$T_ROOT/three.iso" "$T_ROOT/four.iso"
check "...the guest reads it" reads 1 four
check_output "...and the medium the first supervisor inserted is gone from QEMU" \
    '^\["cdrom1-m2-file","cdrom1-m2-fmt"\]$' nodes

# --config: the definition too
defmedia() { qv show cd --json | jq -c '[.cdroms[] | .file // "-" | sub(".*/"; "")]'; }
check_output "the definition still has the media it was defined with" '^\["-","one.iso"\]$' defmedia
check_output "change-media --config" "^cd: cdrom0 now holds $T_ROOT/two.iso \(and in the definition\)\$" \
    qv change-media cd cdrom0 "$T_ROOT/two.iso" --config
check_output "...the definition changed" '^\["two.iso","one.iso"\]$' defmedia
check "...and the guest reads it" reads 0 two
qv kill -q cd
check_output "a VM that is not running: the definition changes" \
    '^cd: cdrom1 ejected \(in the definition: the VM is not running\)$' qv change-media cd cdrom1 --eject
check_output "...it did" '^\["two.iso","-"\]$' defmedia
check_error "...a disk is refused there too (exit 2)" 2 'cd: disk0 is a disk, not a CD-ROM' qv change-media cd disk0 --eject
check_error "...as is an unknown drive (exit 3)" 3 'cd: no CD-ROM cdrom2' qv change-media cd cdrom2 --eject
check_output "...and a drive named by the file the definition gives it" "^cd: cdrom0 now holds $T_ROOT/three.iso" \
    qv change-media cd "$T_ROOT/two.iso" "$T_ROOT/three.iso"
qv start -q cd
check "the next start boots with the definition's media" wait_until 90 guest_ok cd true
check_output "...status shows them (the live changes of the last run are forgotten)" '^\["three.iso","-"\]$' media
check "...and the guest reads them" reads 0 three
qv kill -q cd
check_error "change-media of an unknown VM (exit 3)" 3 'nosuch' qv change-media nosuch cdrom0 --eject
check_not "no sanitizer report from the CLI or the three supervisors that came and went" \
    bash -c "ls '$T_ROOT'/sanitizer.* && cat '$T_ROOT'/sanitizer.*"
finish
