#!/bin/bash
# timeout: 1200
# Snapshots deleted while the guest runs where the overlay is not simply the top of
# one disk, with real qemu-img and a real QEMU under TCG, sandbox on: a disk-only
# snapshot of two disks; the middle one of three (an inner commit, the overlay above
# re-pointed); a full snapshot kept in an image that a later overlay covers; and a
# merge whose supervisor is killed -9 midway, finished by its successor. Each time
# the guest's checksum of its disks is unchanged, the host's flattened images match
# it, and qemu-img's view of the chains has the layer fewer. Then the crash windows,
# each hit at its exact point (QVISOR_TEST_CRASH_AT/STOP_AT): a supervisor killed
# once a snapshot's overlays or a copy's target exist (its successor removes them, a
# retry works), a monitor that drops with the switch's answer in flight (sock_drop
# reads it away: the snapshot is recorded from what QEMU reads), a supervisor killed
# after an inner merge's job ended (its successor flushes, removes the overlay and
# merges the rest), a second delete while a merge's flush is unanswered (busy), a
# supervisor killed right after sending a switch (settled either way), a monitor that
# drops with an inner merge's flush in flight (sent again once it is back), and QEMU
# killed while a switch's answer is lost (the overlays removed when they hold nothing
# of their own, else the snapshot recorded: nothing stale in a retry's way).
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
qemu-img create -q -f qcow2 "$img/a.qcow2" 16M
qemu-img create -q -f qcow2 "$img/b.qcow2" 16M
define_guest mg "" --disk "file=$img/a.qcow2,serial=AAA,cache=writeback" \
    --disk "file=$img/b.qcow2,serial=BBB,cache=writeback"
dev() { echo "/dev/$(gdisk "$1")"; }
# put SERIAL MiB COUNT: the guest writes COUNT MiB of random data there, synced
put() { guest_ok mg "dd if=/dev/urandom of=$(dev $1) bs=1M seek=$2 count=${3:-1} conv=fsync 2>/dev/null"; }
# sum SERIAL: the guest's md5 of the whole disk, read past its page cache
sum() { gsh mg "echo 3 > /proc/sys/vm/drop_caches; md5sum $(dev $1)" | grep -o '^[0-9a-f]\{32\}'; }
# same_sum SERIAL WANT: the guest reads WANT (non-empty) again
same_sum() { local s; s=$(sum "$1") && [ -n "$2" ] && [ "$s" = "$2" ]; }
# host_sum FILE WANT: the chain at FILE, flattened by the host, is what the guest read
host_sum() { qemu-img convert -U -O raw "$1" "$T_ROOT/flat.raw" && [ -n "$2" ] &&
    [ "$(md5sum < "$T_ROOT/flat.raw" | cut -d' ' -f1)" = "$2" ]; }
# chain_is FILE LAYER...: qemu-img's backing chain from FILE down, exactly
chain_is() { local top=$1; shift; [ "$(qemu-img info -U --backing-chain --output=json "$top" | jq -r '.[].filename' |
    tr '\n' ' ')" = "$* " ]; }
# def_file N: the image the definition names for disk N
def_file() { qv show mg --json | jq -r ".disks[$1].file"; }
snaps() { qv snapshot list mg --json | jq -r '[.[].name] | sort | join(" ")'; }
snaps_are() { [ "$(snaps)" = "$*" ]; }
# owns FILE MiB: the image's own layer holds data at that MiB
owns() { qemu-img map -U --output=json "$1" | jq -e --argjson o $(($2 << 20)) \
    'any(.[]; .start <= $o and .start + .length > $o and .depth == 0 and .data)' > /dev/null; }
in_image() { qemu-img snapshot -U -l "$1" | awk '{print $2}' | grep -qx "$2"; }
not_in_image() { qemu-img snapshot -U -l "$1" > /dev/null && ! in_image "$1" "$2"; }

# the overlays of snapshot S: disk A's, disk B's
ova() { echo "$img/mg.$1.qcow2"; }
ovb() { echo "$img/mg-disk1.$1.qcow2"; }
both_put() { put AAA "$1" && put BBB "$1"; }
both_same() { same_sum AAA "$a0" && same_sum BBB "$b0"; }
both_host() { host_sum "$(def_file 0)" "$a0" && host_sum "$(def_file 1)" "$b0"; }
both_own() { owns "$(ova "$1")" "$2" && owns "$(ovb "$1")" "$2"; }
sums() { a0=$(sum AAA); b0=$(sum BBB); }

qv start -q mg || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 90 guest_ok mg true

# ---- one disk-only snapshot of two disks, deleted live ----
check_output "a disk-only snapshot of both disks" 'snapshot two created' qv snapshot create mg two --disk-only
check "the guest writes on both disks after it" both_put 1
check "...which lands in both overlays" both_own two 1
sums
check_output "deleting it while the guest runs" 'snapshot two deleted' qv snapshot delete mg two
check "...the guest reads the same data on both disks" both_same
check "...the definition names both images again" test "$(def_file 0) $(def_file 1)" = "$img/a.qcow2 $img/b.qcow2"
check "...qemu-img sees one layer below each disk's top" eval \
    "chain_is \$(def_file 0) $img/a.qcow2 && chain_is \$(def_file 1) $img/b.qcow2"
check "...the host's images hold what the guest wrote" both_host
check "...the overlays are gone" test ! -e "$(ova two)" -a ! -e "$(ovb two)"
check "...and the record" snaps_are ""

# ---- the middle one of three, deleted live ----
check "three disk-only snapshots, the guest writing after each" eval \
    "qv snapshot create -q mg s1 --disk-only && both_put 2 && qv snapshot create -q mg s2 --disk-only && both_put 3 &&
     qv snapshot create -q mg s3 --disk-only && both_put 4"
check "...qemu-img sees four layers" chain_is "$(ova s3)" "$(ova s3)" "$(ova s2)" "$(ova s1)" "$img/a.qcow2"
sums
check_output "deleting s2, the middle one, while the guest runs" 'snapshot s2 deleted' qv snapshot delete mg s2
check "...the guest reads the same data on both disks" both_same
check "...qemu-img sees three layers: s3's overlay rests on s1's" eval \
    "chain_is $(ova s3) $(ova s3) $(ova s1) $img/a.qcow2 && chain_is $(ovb s3) $(ovb s3) $(ovb s1) $img/b.qcow2"
check "...what the guest wrote while s2 existed is in s1's overlay now" both_own s1 3
check "...the host's images hold what the guest wrote" both_host
check "...the definition still names s3's overlays" test "$(def_file 0) $(def_file 1)" = "$(ova s3) $(ovb s3)"
check "...s2's overlays are gone" test ! -e "$(ova s2)" -a ! -e "$(ovb s2)"
check "...s3's record rests on s1's overlays, its parent is s1" eval "qv snapshot show mg s3 --json | jq -e --arg a $(ova s1) \
    --arg b $(ovb s1) '.parent == \"s1\" and .disks[0].file == \$a and .disks[1].file == \$b' >/dev/null"
check "...and s2's record is gone" snaps_are "s1 s3"

# ---- a full snapshot in an image a later overlay covers, deleted live ----
check_output "a full snapshot (kept in s3's overlays)" 'snapshot full created' qv snapshot create mg full
check_output "a disk-only snapshot on top of it" 'snapshot ov created' qv snapshot create mg ov --disk-only
check "the guest writes after it" both_put 5
check "...full is in s3's overlays, now below ov's" eval "in_image $(ova s3) full && in_image $(ovb s3) full"
sums
check_output "deleting full while the guest runs (snapshot-delete below the top)" 'snapshot full deleted' \
    qv snapshot delete mg full
check "...qemu-img no longer finds it in either image" eval "not_in_image $(ova s3) full && not_in_image $(ovb s3) full"
check "...the guest reads the same data on both disks" both_same
check "...the chain is as it was" chain_is "$(ova ov)" "$(ova ov)" "$(ova s3)" "$(ova s1)" "$img/a.qcow2"
check "...and the record is gone" snaps_are "ov s1 s3"

# ---- a merge whose supervisor is killed midway ----
check "the guest writes 4 MiB on disk A" put AAA 6 4
sums
qv snapshot delete mg ov --bandwidth 256K > "$T_ROOT/del.out" 2>&1 &
merging() { qv status mg | grep -Eq '^job +snapshot-merge of disk0: running'; }
check "a slow merge of ov runs (status shows it)" wait_until 30 merging
spid=$(sup_pid mg)
kill -9 "$spid"
check "kill -9 of the supervisor mid-merge" wait_until 10 bash -c "! kill -0 $spid 2>/dev/null"
wait
check_output "start again reattaches" "mg started" qv start mg
check "...the job carries on" log_has mg 'job qv[0-9]+-snapshot-merge-disk0 \(snapshot-merge of disk0\) carries on'
ov_gone() { qv snapshot list mg --json | jq -e 'length > 0 and all(.[]; .name != "ov")' > /dev/null; }
check "...and the successor merges both disks: the record is gone" wait_until 90 ov_gone
check "...the guest reads the same data on both disks" both_same
check "...the definition names s3's overlays again" test "$(def_file 0) $(def_file 1)" = "$(ova s3) $(ovb s3)"
check "...qemu-img sees the layer fewer below both disks' tops" eval \
    "chain_is \$(def_file 0) $(ova s3) $(ova s1) $img/a.qcow2 && chain_is \$(def_file 1) $(ovb s3) $(ovb s1) $img/b.qcow2"
check "...the host's images hold what the guest wrote" both_host
check "...ov's overlays are gone" test ! -e "$(ova ov)" -a ! -e "$(ovb ov)"

# ---- crash windows, each hit at its exact point: a supervisor started with
# QVISOR_TEST_CRASH_AT=POINT dies there (kill -9), with _STOP_AT=POINT it stops there ----
# sup_with ENV...: the supervisor replaced by one with ENV (QEMU runs on; start reattaches)
sup_with() {
    local p; p=$(sup_pid mg)
    [ -n "$p" ] && kill -9 "$p" 2>/dev/null && wait_until 10 bash -c "! kill -0 $p 2>/dev/null"
    env "$@" "$QV_BIN" --root "$T_ROOT" start -q mg
}
stopped() { grep -Eq '^State:\s+T' "/proc/$1/status"; }
sup_gone() { ! kill -0 "$1" 2>/dev/null; }

# a disk-only snapshot whose supervisor dies once its overlay files exist
sup_with QVISOR_TEST_CRASH_AT=snapshot-overlays-made
sp=$(sup_pid mg)
qv snapshot create mg c1 --disk-only > /dev/null 2>&1
check "a supervisor killed right after making a snapshot's overlays leaves them" eval \
    "wait_until 10 sup_gone $sp && test -e $(ova c1) -a -e $(ovb c1)"
check_output "start again reattaches" "mg started" qv start mg
check "...its successor removes the overlays QEMU never switched to" test ! -e "$(ova c1)" -a ! -e "$(ovb c1)"
check "...records no snapshot" snaps_are "s1 s3"
check "...and the definition still names s3's overlays" test "$(def_file 0) $(def_file 1)" = "$(ova s3) $(ovb s3)"
check_output "taking it again works" 'snapshot c1 created' qv snapshot create mg c1 --disk-only

# a monitor that drops after QEMU switched to the overlays, its answer lost
sup_with QVISOR_TEST_STOP_AT=snapshot-switch-sent
sp=$(sup_pid mg)
qv snapshot create mg c2 --disk-only > "$T_ROOT/c2.out" 2>&1 &
client=$!
check "the supervisor stops right after sending the switch" wait_until 60 stopped "$sp"
"$T_BUILD/progs/sock_drop" "$sp" qmp.sock 30 > "$T_ROOT/drained" 2>&1
check "...QEMU's answer is read away and the connection shut down (as a drop would)" \
    grep -q '"return"' "$T_ROOT/drained"
kill -CONT "$sp"
wait "$client"
check_output "...the snapshot is taken all the same: QEMU is asked what it did" 'snapshot c2 created' cat "$T_ROOT/c2.out"
check "...the log says the answer was lost" log_has mg 'the answer to the switch was lost'
check "...the overlays QEMU writes to are kept" test -e "$(ova c2)" -a -e "$(ovb c2)"
check "...the definition names them" test "$(def_file 0) $(def_file 1)" = "$(ova c2) $(ovb c2)"
check "...the guest writes after it" both_put 7
check "...which lands in c2's overlays" both_own c2 7
sums
check "...and the host's images hold what the guest wrote" both_host

# an inner merge whose supervisor dies after its commit ended, before the flush answered
sup_with QVISOR_TEST_CRASH_AT=snapshot-merge-flush-sent
sp=$(sup_pid mg)
qv snapshot delete mg c1 > /dev/null 2>&1
check "a supervisor killed right after an inner merge's job ended (flush sent)" wait_until 30 sup_gone "$sp"
check_output "start again reattaches" "mg started" qv start mg
check "...the log says the step after the merge is finished" log_has mg 'the step after it was not finished: finishing it'
c1_gone() { snaps_are "c2 s1 s3"; }
check "...the successor merges the rest: c1's record is gone" wait_until 90 c1_gone
check "...c1's overlays are gone" test ! -e "$(ova c1)" -a ! -e "$(ovb c1)"
check "...the guest reads the same data on both disks" both_same
check "...qemu-img sees c2's overlays rest on s3's" eval \
    "chain_is $(ova c2) $(ova c2) $(ova s3) $(ova s1) $img/a.qcow2 && chain_is $(ovb c2) $(ovb c2) $(ovb s3) $(ovb s1) $img/b.qcow2"
check "...the host's images hold what the guest wrote" both_host

# two deletes at once: the second comes while the first one's flush is unanswered
sup_with QVISOR_TEST_STOP_AT=snapshot-merge-flushing
sp=$(sup_pid mg) qp=$(vm_pid mg)
qv snapshot delete mg s3 > "$T_ROOT/s3.out" 2>&1 &
client=$!
check "a merge stops before its flush" wait_until 90 stopped "$sp"
kill -STOP "$qp"
kill -CONT "$sp"
check_error "...another delete meanwhile (the flush unanswered) is refused as busy (exit 4)" 4 \
    'a snapshot operation is under way' timeout 20 "$QV_BIN" --root "$T_ROOT" snapshot delete mg s1
kill -CONT "$qp"
while kill -0 "$client" 2>/dev/null; do stopped "$sp" && kill -CONT "$sp"; sleep 0.2; done
wait "$client"
check_output "...the first delete ends well" 'snapshot s3 deleted' cat "$T_ROOT/s3.out"
check "...s1 is still there" snaps_are "c2 s1"
check "...the guest reads the same data on both disks" both_same

# a copy whose supervisor dies once the target file exists
sup_with QVISOR_TEST_CRASH_AT=block-copy-target-made
sp=$(sup_pid mg)
qv block copy mg disk0 --dest "$img/copy.qcow2" > /dev/null 2>&1
check "a supervisor killed right after creating a copy's target leaves it" eval \
    "wait_until 10 sup_gone $sp && test -e $img/copy.qcow2"
check_output "start again reattaches" "mg started" qv start mg
check "...its successor removes the target" test ! -e "$img/copy.qcow2"
check_output "...and the copy again works" 'the copy is complete' qv block copy mg disk0 --dest "$img/copy.qcow2" --finish --wait
check "...the copy holds what the guest reads" host_sum "$img/copy.qcow2" "$a0"

# a supervisor that dies right after sending the switch: QEMU took it or not, the
# successor records what QEMU reads
sup_with QVISOR_TEST_CRASH_AT=snapshot-switch-sent
sp=$(sup_pid mg)
qv snapshot create mg c3 --disk-only > /dev/null 2>&1
check "a supervisor killed right after sending a snapshot's switch" wait_until 30 sup_gone "$sp"
check_output "start again reattaches" "mg started" qv start mg
settled() {
    if snaps_are "c2 c3 s1"; then
        [ "$(def_file 0) $(def_file 1)" = "$(ova c3) $(ovb c3)" ] && [ -e "$(ova c3)" ] && [ -e "$(ovb c3)" ]
    else
        snaps_are "c2 s1" && [ "$(def_file 0) $(def_file 1)" = "$(ova c2) $(ovb c2)" ] &&
            [ ! -e "$(ova c3)" ] && [ ! -e "$(ovb c3)" ]
    fi
}
check "...the successor settles it: recorded and followed, or undone" settled
diag "c3 after its switch's supervisor died: $(snaps_are "c2 c3 s1" && echo recorded || echo undone)"
check "...the guest reads the same data on both disks" both_same

# a monitor that drops while an inner merge's flush is in flight: the flush goes out
# again once the monitor is back, and the merge ends well
layers() { qemu-img info -U --backing-chain --output=json "$1" | jq length; }
tops="$(def_file 0) $(def_file 1)" la=$(layers "$(def_file 0)") lb=$(layers "$(def_file 1)")
sup_with QVISOR_TEST_STOP_AT=snapshot-merge-flush-sent
sp=$(sup_pid mg)
qv snapshot delete mg s1 > "$T_ROOT/s1.out" 2>&1 &
client=$!
check "an inner merge stops right after sending its flush" wait_until 90 stopped "$sp"
"$T_BUILD/progs/sock_drop" "$sp" qmp.sock 30 > "$T_ROOT/drained" 2>&1
check "...QEMU's answer to the flush is read away and the connection shut down" grep -q '"return"' "$T_ROOT/drained"
for _ in $(seq 600); do kill -0 "$client" 2>/dev/null || break; stopped "$sp" && kill -CONT "$sp"; sleep 0.2; done
kill "$client" 2>/dev/null; kill -CONT "$sp" 2>/dev/null
wait "$client"
check_output "...the delete ends well" 'snapshot s1 deleted' cat "$T_ROOT/s1.out"
check "...the log says the flush goes out again once the monitor is back" log_has mg 'again once the monitor is back'
check "...s1's overlays are gone" test ! -e "$(ova s1)" -a ! -e "$(ovb s1)"
check "...the definition names the same tops" test "$(def_file 0) $(def_file 1)" = "$tops"
check "...qemu-img sees one layer fewer below both tops" eval \
    "test \$(layers \$(def_file 0)) -eq $((la - 1)) -a \$(layers \$(def_file 1)) -eq $((lb - 1))"
check "...the guest reads the same data on both disks" both_same
check "...the host's images hold what the guest wrote" both_host

# QEMU killed while whether it switched to a snapshot's overlays is not known (the
# switch's answer read away): the overlays are settled by what they hold, and nothing
# is left in a retry's way. switch_lost NAME: the supervisor stops once it sent the
# switch, the answer is drained, QEMU is killed, the supervisor goes on
switch_lost() {
    sup_with QVISOR_TEST_STOP_AT=snapshot-switch-sent
    local sp qp client; sp=$(sup_pid mg) qp=$(vm_pid mg)
    qv snapshot create mg "$1" --disk-only > "$T_ROOT/$1.out" 2>&1 &
    client=$!
    wait_until 60 stopped "$sp" && "$T_BUILD/progs/sock_drop" "$sp" qmp.sock 30 > "$T_ROOT/drained" 2>&1
    sleep "${2:-0}"
    kill -9 "$qp"; wait_until 10 bash -c "! kill -0 $qp 2>/dev/null"
    kill -CONT "$sp"
    wait "$client"
    grep -q '"return"' "$T_ROOT/drained"
}
# - the guest wrote nothing after the switch: the overlays go
tops="$(def_file 0) $(def_file 1)"
check "a snapshot's switch answer lost, QEMU killed before the guest wrote" switch_lost c5
check_output "...the snapshot failed, QEMU named" 'QEMU exited before snapshot c5 was taken' cat "$T_ROOT/c5.out"
check "...its overlays, holding nothing of their own, are removed" test ! -e "$(ova c5)" -a ! -e "$(ovb c5)"
check "...the log says why" log_has mg 'none holds anything of its own, they are removed'
check "...no snapshot was recorded, the definition names the same tops" eval \
    "! snaps | grep -qw c5 && test \"\$(def_file 0) \$(def_file 1)\" = \"$tops\""
check_output "start again" "mg started" qv start mg
check "...the guest boots" wait_until 120 guest_ok mg true
check "...it reads the same data on both disks" both_same
check_output "...and taking c5 again works" 'snapshot c5 created' qv snapshot create mg c5 --disk-only
# - the guest wrote after the switch: QEMU switched, the snapshot is recorded
gsh mg "while :; do echo MARK-C6 | dd of=$(dev AAA) bs=512 seek=20480 conv=fsync 2>/dev/null; sleep 0.3; done & true" > /dev/null
check "a snapshot's switch answer lost, QEMU killed after the guest wrote" switch_lost c6 3
check_output "...the client hears QEMU switched and the snapshot is recorded" \
    'after it switched to the overlays: the snapshot is recorded' cat "$T_ROOT/c6.out"
check "...it is recorded" eval "snaps | grep -qw c6"
check "...the definition names its overlays" test "$(def_file 0) $(def_file 1)" = "$(ova c6) $(ovb c6)"
check "...the guest's writes after the switch are in c6's overlay" owns "$(ova c6)" 10
check_output "start again" "mg started" qv start mg
check "...the guest boots on c6's overlays" wait_until 120 guest_ok mg true
check_output "...and reads what it wrote after the switch" 'MARK-C6' \
    gsh mg "dd if=$(dev AAA) bs=512 skip=20480 count=1 2>/dev/null"

qv kill mg > /dev/null 2>&1
finish
