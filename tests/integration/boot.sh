#!/bin/bash
# timeout: 600
# weight: 2
# qvisor boot: ephemeral CI VMs. The independent boots run in three waves of at most
# five guests, each deciding its exit status its own way: --expect patterns in order,
# --fail, a kernel panic, the guest's exit code (qv-exit through isa-debug-exit), --exec
# through the guest agent, the timeout; first SIGTERM and kill -9 of boot, and at the
# end what is left. (Eleven TCG guests at once, beside three other groups, took 190 s
# to a first console line in CI: the waves and the weight keep the machine able to run
# what it is given.)
. "$(dirname "$0")/../lib.sh"

# no_timer_check: eleven TCG guests on a loaded machine made the kernel panic with
# "IO-APIC + timer doesn't work!" (its check of the timer interrupt has a deadline)
B_ARGS=(--kernel "$G_KERNEL" --initrd "$G_INITRD" --memory 192M)
# bg TAG CMDLINE-EXTRA ARGS...: qvisor boot in the background (--timeout 300 unless
# given); its output in TAG.out, its status in TAG.rc
bg() {
    local tag=$1 extra=$2 tmo=(--timeout 300)
    [[ $extra == *qv_agent=* ]] || extra="$extra qv_agent=0"
    shift 2
    [[ " $* " == *" --timeout "* ]] && tmo=()
    ( qv boot "${B_ARGS[@]}" "${tmo[@]}" --append "$G_APPEND no_timer_check $extra" "$@" > "$T_ROOT/$tag.out" 2>&1
      echo $? > "$T_ROOT/$tag.rc" ) &
    echo $! > "$T_ROOT/$tag.pid"
}
rc_of() { cat "$T_ROOT/$1.rc" 2>/dev/null; }
done_all() { local t; for t in "$@"; do [ -s "$T_ROOT/$t.rc" ] || return 1; done; }
out_has() { tr -d '\r' < "$T_ROOT/$1.out" | grep -aEq -- "$2"; }
# check_boot DESC TAG CODE REGEX: boot TAG exited CODE and said REGEX
check_boot() {
    if [ "$(rc_of "$2")" = "$3" ] && out_has "$2" "$4"; then ok "$1"
    else not_ok "$1 (exit $(rc_of "$2"), want $3)"; diag "$(tail -c 3000 "$T_ROOT/$2.out")"; fi
}
qemu_of() { pgrep -f -- "guest=$1,debug-threads" > /dev/null; }
no_qemu() { ! qemu_of "$1"; }
gone() { no_qemu "$1" && [ ! -e "$T_ROOT/run/qvisor/vms/$1" ] && [ ! -e "$T_ROOT/run/qvisor/boot/$1.lock" ]; }

# a QEMU left by a boot that failed to tear down is killed with the test (transient
# VMs have no definition under etc/, where lib.sh looks for uuids)
kill_boot_qemus() {
    local def uuid
    for def in "$T_ROOT"/run/qvisor/vms/*/definition.json; do
        uuid=$(grep -o '"uuid": *"[0-9a-f-]*"' "$def" 2>/dev/null | cut -d'"' -f4)
        [ -n "$uuid" ] && pkill -KILL -f -- "-uuid $uuid"
    done
}
on_exit kill_boot_qemus

# a host directory shared in (virtiofs): the guest runs the script it holds, which writes
# the disk and reads it back, then writes out what it saw of the share, the cloud-init
# seed and the credentials, for the host to compare
secret="inline-$RANDOM$RANDOM-value"
fsecret="from-a-file-$RANDOM$RANDOM"
printf '#cloud-config\nhostname: seeded\nruncmd:\n  - echo seeded-%s\n' "$RANDOM" > "$T_ROOT/user-data"
printf '%s' "$fsecret" > "$T_ROOT/cred.txt"
chmod 600 "$T_ROOT/user-data" "$T_ROOT/cred.txt"
mkdir -p "$T_ROOT/bshare" "$T_ROOT/sh_term" "$T_ROOT/sh_k9one" "$T_ROOT/sh_k9all"
echo "from the host $$" > "$T_ROOT/bshare/in.txt"
cat > "$T_ROOT/bshare/run.sh" <<'SCRIPT'
out=/mnt/share
cat $out/in.txt > $out/result.txt && echo "written by the guest" >> $out/result.txt
for d in /dev/sr*; do [ "$(dd if=$d bs=1 skip=32808 count=6 2>/dev/null)" = cidata ] && seed=$d; done
qv-modprobe isofs && mkdir -p /seed && mount -t iso9660 -o ro "${seed:-/dev/none}" /seed && cp /seed/user-data $out/user-data.seen
cred() { cat /sys/firmware/dmi/entries/11-*/raw | tr '\0' '\n' | sed -n "s/.*io[.]systemd[.]credential[.]binary:$1=//p" | base64 -d; }
cred api.token > $out/api.token.seen
cred db.pass > $out/db.pass.seen
sync
printf GUEST-WROTE > /dev/vda; sync; head -c 11 /dev/vda; echo; echo 3 > /proc/sys/vm/drop_caches
head -c 11 /dev/vda | grep -q GUEST-WROTE && echo WRITE-READ-BACK
SCRIPT
# vfsd_of DIR: a virtiofsd serves DIR
vfsd_of() { pgrep -f -- "source=$1( |$)" > /dev/null; }
no_vfsd() { ! vfsd_of "$1"; }

# a base image the guest writes to (through its overlay)
truncate -s 4M "$T_ROOT/base.raw"
printf 'BASE-CONTENT' | dd of="$T_ROOT/base.raw" conv=notrunc status=none
sum_before=$(sha256sum < "$T_ROOT/base.raw")

# ---- the first wave: SIGTERM and kill -9 of boot while QEMU runs ----
bg term '' --name bterm --expect 'never-printed' --share "$T_ROOT/sh_term" --disk "$T_ROOT/base.raw"
bg k9 '' --name bk9 --expect 'never-printed' --share "$T_ROOT/sh_k9one"
bg k9all '' --name bk9all --expect 'never-printed' --share "$T_ROOT/sh_k9all"

check_error "bad usage: a pattern that is no regular expression (exit 2)" 2 "not a regular expression" \
    qv boot --kernel "$G_KERNEL" --expect '('
check_error "bad usage: nothing to boot (exit 2)" 2 "what to boot" qv boot --expect x

# SIGTERM and kill -9 while QEMU runs
check "SIGTERM: the boot's QEMU runs" wait_until 120 qemu_of bterm
check "...and the virtiofsd of its --share" wait_until 30 vfsd_of "$T_ROOT/sh_term"
bdir=$T_ROOT/var/lib/qvisor/boot
check "...its log is in its private directory" test -s "$bdir/bterm/bterm.log"
check "...so is the overlay QEMU holds (unlinked)" bash -c \
    "ls -l /proc/$(pgrep -f -- 'guest=bterm,debug-threads' | head -1)/fd | grep -q '$bdir/bterm/disk0.qcow2 (deleted)'"
kill -TERM "$(pgrep -P "$(cat "$T_ROOT/term.pid")" -f 'qvisor.* boot ')"
check "...boot ends on SIGTERM (exit 143)" wait_until 60 bash -c "[ \"\$(cat '$T_ROOT/term.rc' 2>/dev/null)\" = 143 ]"
check "...and leaves no QEMU, run directory or lock" gone bterm
check "...nor its private directory" test ! -e "$bdir/bterm"
check "...nor virtiofsd" wait_until 10 no_vfsd "$T_ROOT/sh_term"
check "kill -9: the boot's QEMU runs" wait_until 120 qemu_of bk9
check "...and the virtiofsd of its --share" wait_until 30 vfsd_of "$T_ROOT/sh_k9one"
k9pid=$(pgrep -P "$(cat "$T_ROOT/k9.pid")" -f 'qvisor.* boot ')
kill -9 "$k9pid"
check "...its supervisor notices and QEMU is gone" wait_until 60 no_qemu bk9
check "...so is virtiofsd" wait_until 10 no_vfsd "$T_ROOT/sh_k9one"
check "...so is the VM's run directory" wait_until 30 test ! -e "$T_ROOT/run/qvisor/vms/bk9"
check "...its lock stays, for a later boot to sweep" test -e "$T_ROOT/run/qvisor/boot/bk9.lock"
check "kill -9 of boot and its supervisor together: QEMU runs first" wait_until 120 qemu_of bk9all
check "...and the virtiofsd of its --share" wait_until 30 vfsd_of "$T_ROOT/sh_k9all"
b=$(pgrep -P "$(cat "$T_ROOT/k9all.pid")" -f 'qvisor.* boot ')
s=$(pgrep -P "$b" -f 'qvisor.* run bk9all')
kill -9 "$b" $s
check "...QEMU dies with its supervisor (parent-death signal)" wait_until 30 no_qemu bk9all
check "...and virtiofsd with QEMU" wait_until 10 no_vfsd "$T_ROOT/sh_k9all"

# ---- the second wave: the verdicts; the four without --name are the "parallel, no name" ones ----
bg pass 'qv_share=share0 qv_run="sh /mnt/share/run.sh" qv_after=stay' \
    --disk "$T_ROOT/base.raw" --share "$T_ROOT/bshare" --cloud-init "$T_ROOT/user-data" \
    --credential "api.token=$secret" --credential "db.pass=@$T_ROOT/cred.txt" \
    --expect 'QVISOR-GUEST: ready' --expect 'WRITE-READ-BACK' --junit "$T_ROOT/pass.xml" --json
bg code3 'qv_run="qv-exit 3"' --junit "$T_ROOT/code3.xml" --json --keep-on-failure
bg code0 'qv_run="qv-exit 0"' --json
bg failpat '' --fail 'QVISOR-GUEST: (up|ready)' --expect 'never-printed' --json --tap
bg tmo '' --name btmo --expect 'never-printed' --timeout 60 --json
check "the second wave ends" wait_until 330 done_all pass code3 code0 failpat
# ---- the third wave, beside the timeout's idle guest ----
bg panic 'qv_run="echo c > /proc/sysrq-trigger" qv_after=stay' --name bpanic
bg exec0 qv_agent=1 --name bexec0 --exec 'echo FROM-EXEC-$((6*7)); exit 0'
printf 'echo to-stderr >&2\nexit 7\n' > "$T_ROOT/script.sh"
bg exec7 qv_agent=1 --name bexec7 --exec-file "$T_ROOT/script.sh"
check "the third wave ends" wait_until 330 done_all panic tmo exec0 exec7
check_boot "--expect patterns seen in order: exit 0" pass 0 'passed: every --expect was seen'
check_boot "...the console was streamed to stdout" pass 0 '^QVISOR-GUEST: ready$'
check "...the guest wrote its disk and read it back" out_has pass '^WRITE-READ-BACK$'
check "...the base image is unchanged (checksum)" test "$(sha256sum < "$T_ROOT/base.raw")" = "$sum_before"
check "--share: the guest read the host's file and wrote a result file out (virtiofs)" \
    test "$(cat "$T_ROOT/bshare/result.txt" 2>&1)" = "$(printf 'from the host %s\nwritten by the guest' $$)"
check "--cloud-init: the guest mounted the cidata seed and read the user-data" \
    cmp "$T_ROOT/bshare/user-data.seen" "$T_ROOT/user-data"
check "--credential NAME=VALUE: the guest read it from SMBIOS type 11" \
    test "$(cat "$T_ROOT/bshare/api.token.seen" 2>&1)" = "$secret"
check "--credential NAME=@FILE: the guest read the file's value" \
    test "$(cat "$T_ROOT/bshare/db.pass.seen" 2>&1)" = "$fsecret"
check "...and no value showed on the console" bash -c "! grep -aqF -e '$secret' -e '$fsecret' '$T_ROOT/pass.out'"
check_boot "the guest's exit code 3 (qv-exit): exit 1" code3 1 'FAILED: the guest reported exit code 3 \('
kept=$(grep -o '"name":"boot-[0-9a-f]*"' "$T_ROOT/code3.out" | head -1 | cut -d'"' -f4)
check_boot "--keep-on-failure: the path of the directory kept is printed" code3 1 \
    "kept \(--keep-on-failure\): the VM's log and overlays in $bdir/$kept "
check "...it holds the VM's log" test -s "$bdir/$kept/$kept.log"
check_boot "a failed boot without --keep-on-failure shows its log's end" exec7 1 "the VM's log ends"
check_boot "the guest's exit code 0 (qv-exit): exit 0" code0 0 'passed: the guest reported exit code 0'
check_boot "a --fail pattern: exit 1" failpat 1 "FAILED: the console matched --fail"
check_boot "a kernel panic: exit 1" panic 1 'FAILED: kernel panic'
check "...its QEMU is gone" gone bpanic
check_boot "the timeout: exit 5" tmo 5 'FAILED: timed out after 60 s'
check "...QEMU had run (the VM was up when it timed out)" out_has tmo '"running_s":[0-9]'
check "...and nothing is left: no QEMU, run directory or lock" gone btmo
check_boot "--exec through the agent: its status 0, its output shown" exec0 0 'FROM-EXEC-42'
check_boot "--exec-file exiting 7: exit 1, stderr shown" exec7 1 'to-stderr'
check "...the reason names the status" out_has exec7 '--exec failed: exit status 7'
names=$(cat "$T_ROOT"/{pass,code3,code0,failpat}.out | grep -o '"name":"boot-[0-9a-f]*"' | sort -u | wc -l)
check "4 boots at once without --name: 4 different names" test "$names" -eq 4
check "no boot left a throw-away overlay" bash -c "! ls '$T_ROOT/var/lib/qvisor/overlays/' 2>/dev/null | grep -q ."
check "every VM is gone from list --all" bash -c "! '$QV_BIN' --root '$T_ROOT' list --all | grep -q boot"

# reports
xml_ok() { xmllint --noout "$1"; }     # libxml2-utils, from scripts/setup-deps
check "JUnit of a passing boot is well-formed XML" xml_ok "$T_ROOT/pass.xml"
check_output "...2 test cases, 0 failures" '<testsuite [^>]*tests="2" failures="0"' cat "$T_ROOT/pass.xml"
check "JUnit of a failing boot is well-formed XML" xml_ok "$T_ROOT/code3.xml"
check_output "...1 test case, 1 failure" '<testsuite [^>]*tests="1" failures="1"' cat "$T_ROOT/code3.xml"
check_output "...the failure carries the console's tail" 'QVISOR-GUEST: exit 3' \
    sed -n '/<failure/,/<\/failure>/p' "$T_ROOT/code3.xml"

check_output "TAP: the plan and the failed --expect with the reason" \
    '^1\.\.1$' tr -d '\r' < "$T_ROOT/failpat.out"
check "...not ok 1 - expect never-printed # the console matched --fail" \
    out_has failpat "^not ok 1 - expect never-printed # the console matched --fail"
check "accel auto falling back to TCG says so" out_has pass 'accel auto chose TCG'

# the next boot sweeps what kill -9 left (a lock no boot holds)
check_error "a boot whose kernel is missing fails" 1 "vmlinux-missing" \
    qv boot --kernel "$T_ROOT/vmlinux-missing" --timeout 30
check "...and it swept the lock the killed boot left" test ! -e "$T_ROOT/run/qvisor/boot/bk9.lock"
check "...and nothing of its own" bash -c "! ls '$T_ROOT/run/qvisor/boot/' | grep -q ."
check "...but not the directory --keep-on-failure kept" test -s "$bdir/$kept/$kept.log"
# every boot above (passed, failed, timed out, SIGTERM, kill -9, kill -9 with its
# supervisor, a start that failed) and the sweep: files, sockets and links left
leftovers() {
    find "$T_ROOT/run" "$T_ROOT/var" \( -type f -o -type s -o -type l \) ! -path "$T_ROOT/run/qvisor/uids/.alloc" \
        ! -path "$T_ROOT/var/cache/qvisor/*" ! -path "$bdir/$kept/*"
}
check "nothing of the boots is left under the root but what --keep-on-failure kept" test -z "$(leftovers)"
[ -z "$(leftovers)" ] || diag "$(leftovers)"
check "...no uid lease file either" test -z "$(ls "$T_ROOT/run/qvisor/uids/")"
for f in "$T_ROOT"/run/qvisor/uids/[0-9]*; do [ -e "$f" ] && diag "$f: $(head -c 200 "$f")"; done
finish
