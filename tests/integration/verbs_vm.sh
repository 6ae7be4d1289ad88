#!/bin/bash
# timeout: 360
# VM verbs and options nothing else exercises: host-check, show --confinement,
# start --wait-timeout, exit code 5 (timed out) from console --expect, start and
# stop, logs -f, and edit through $EDITOR. Real QEMU under TCG, the test guest.
. "$(dirname "$0")/../lib.sh"

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# ---- host-check ----
hc=$(qv host-check 2>&1); rc=$?
check "host-check exits 0 on a host with QEMU ($rc)" test "$rc" -eq 0
for item in qemu kvm vhost-net tun nftables dnsmasq "sandbox seccomp"; do
    check "host-check names $item" grep -Eq "^(ok|--) +$item " <<< "$hc"
done
check "...QEMU with its path and version" grep -Eq '^ok +qemu +/[^ ]*qemu-system-[a-z0-9_]+ [0-9]+\.[0-9]+\.[0-9]+' <<< "$hc"
# each answer is the host's: KVM and vhost-net are usable when this shell can open them
# (only a device: `<>` would create a missing path as a file)
opens() { [ -c "$1" ] && (exec 3<> "$1") 2>/dev/null; }
want=--; opens /dev/kvm && want=ok
check "...kvm says '$want' as /dev/kvm does for this shell" grep -Eq "^$want +kvm " <<< "$hc"
want=--; opens /dev/vhost-net && want=ok
check "...vhost-net says '$want' as /dev/vhost-net does" grep -Eq "^$want +vhost-net " <<< "$hc"
# a regular file at /dev/vhost-net (in a /dev of this test's own mount namespace)
# opens, but it is no vhost-net: QEMU would fail on it at every start
fakedev() {
    unshare --mount --propagation private sh -c '
        mkdir -p "$1/realdev" && mount --rbind /dev "$1/realdev" && mount -t tmpfs qvtest-dev /dev &&
        for n in null zero urandom kvm; do
            [ -e "$1/realdev/$n" ] && touch "/dev/$n" && mount --bind "$1/realdev/$n" "/dev/$n"
        done
        mkdir -p /dev/net && touch /dev/net/tun && mount --bind "$1/realdev/net/tun" /dev/net/tun &&
        echo not-a-device > /dev/vhost-net && shift && exec "$@"' sh "$T_ROOT" "$@"
}
check_output "...a regular file at /dev/vhost-net is not vhost-net" '^-- +vhost-net ' fakedev "$QV_BIN" --root "$T_ROOT" host-check
want=--; nft list tables > /dev/null 2>&1 && want=ok
check "...nftables says '$want' as nft does" grep -Eq "^$want +nftables " <<< "$hc"
check "...the accel override (QVISOR_ACCEL=tcg) is reported" grep -Eq '^ok +accel override +accel auto means tcg' <<< "$hc"
check "host-check --json: every item has name, ok and detail" \
    bash -c "'$QV_BIN' --root '$T_ROOT' host-check --json | jq -e '.checks | length > 5 and all(has(\"name\") and has(\"ok\") and has(\"detail\"))'"
# an essential item missing: QEMU itself
cp "$T_ROOT/etc/qvisor/host.json" "$T_ROOT/host.json.orig"
printf '{"cgroup_parent": "%s", "qemu": "/nonexistent/qemu-system-x86_64"}\n' "$T_CGROUP" > "$T_ROOT/etc/qvisor/host.json"
check_error "host-check without QEMU fails (exit 3) and says so" 3 '^-- +qemu .*nonexistent' qv host-check
cp "$T_ROOT/host.json.orig" "$T_ROOT/etc/qvisor/host.json"

# ---- start --wait-timeout ----
define_guest t1
check_error "start --wait-timeout with a bad number is a usage error (exit 2)" 2 'wait-timeout soon: not a number' \
    qv start t1 --wait-timeout soon
start=$(date +%s%N)
check_error "start --wait-timeout 0.01: timed out (exit 5), still starting" 5 'not running after .*goes on starting in the background' \
    qv start t1 --wait-timeout 0.01
ms=$(ms_since "$start")
check "...returned without waiting for the guest to run ($ms ms, bound 30 s)" test "$ms" -lt 30000
check "...and the VM comes up by itself" wait_until 60 state_is t1 running
qv kill -q t1
start=$(date +%s%N)
check_output "start --wait-timeout 60 waits until the guest runs" '^t1 started' qv start t1 --wait-timeout 60
check "...and it runs" state_is t1 running

# ---- console --expect: exit 5 ----
check "the guest boots" wait_log t1 'QVISOR-GUEST: ready' 90
check_output "console --expect finds a line already printed (--replay)" 'QVISOR-GUEST: ready' \
    bash -c "'$QV_BIN' --root '$T_ROOT' console t1 --replay --expect 'QVISOR-GUEST: ready' --timeout 10 < /dev/null"
start=$(date +%s%N)
check_error "console --expect NEVER --timeout 2: timed out (exit 5)" 5 '"NEVER-SEEN" did not appear on the console within 2 s' \
    bash -c "'$QV_BIN' --root '$T_ROOT' console t1 --expect NEVER-SEEN --timeout 2 < /dev/null"
ms=$(ms_since "$start")
check "...after 2 s, not before, and not much after ($ms ms)" test "$ms" -ge 2000 -a "$ms" -lt 8000

# ---- show --confinement ----
conf=$(qv show t1 --confinement)
pid=$(vm_pid t1)
status_field() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
check "show --confinement: QEMU's pid" test "$(jq -r .pid <<< "$conf")" = "$pid"
check "...its uid, as /proc says ($(status_field "$pid" Uid))" test "$(jq -r '.uid[1]' <<< "$conf")" = "$(status_field "$pid" Uid)"
check "...no capabilities, as /proc says" \
    test "$(jq -r '.capabilities.none' <<< "$conf")/$(status_field "$pid" CapEff)" = true/0000000000000000
check "...no_new_privs and the seccomp filters, as /proc says" \
    test "$(jq -r '"\(.no_new_privs) \(.seccomp.filters)"' <<< "$conf")" = "true $(status_field "$pid" Seccomp_filters)"
check "...its own mount namespace" jq -e '.namespaces | index("mnt")' <<< "$conf"
check "...its cgroup: the VM's qemu leaf" jq -e ".cgroup.paths | to_entries | all(.value | endswith(\"$T_CGROUP/t1/qemu\"))" <<< "$conf"

# ---- logs -f ----
"$QV_BIN" --root "$T_ROOT" logs t1 -f > "$T_ROOT/follow.txt" 2>&1 &
follow_pid=$!
on_exit "kill $follow_pid"
check "logs -f prints what is already logged" wait_until 10 grep -q 'QVISOR-GUEST: ready' "$T_ROOT/follow.txt"
gsh t1 'echo "FOLLOW-$((6*7))"' > /dev/null
check "...and follows new lines (the guest's console)" wait_until 10 grep -q 'console: FOLLOW-42' "$T_ROOT/follow.txt"
qv pause -q t1 && qv resume -q t1
check "...and the supervisor's events" wait_until 10 grep -q 'state: paused -> running' "$T_ROOT/follow.txt"
check "...it is still following" kill -0 "$follow_pid"
kill -TERM "$follow_pid"
check "...until it is told to stop" wait_until 5 bash -c "! kill -0 $follow_pid"
check "logs without -f ends by itself" timeout 10 "$QV_BIN" --root "$T_ROOT" logs t1
# the log of a running VM may grow between the two reads (a partial console line is
# flushed into it a second later; it landed between them even after 0.5 s of quiet):
# the two must agree once, on three lines
last3() {
    local want got
    want=$(vm_log t1 | tail -n 3)
    got=$("$QV_BIN" --root "$T_ROOT" logs t1 -n 3) || return 1
    [ "$(wc -l <<< "$want")" -eq 3 ] && [ "$got" = "$want" ]
}
check "logs -n 3 prints the last three lines" wait_until 10 last3
check_output "logs -n 0 prints nothing" '^0$' bash -c "'$QV_BIN' --root '$T_ROOT' logs t1 -n 0 | wc -l"

# ---- stop: exit 5 when the supervisor does not answer in time ----
spid=$(sup_pid t1)
kill -STOP "$spid"
on_exit "kill -CONT $spid"
start=$(date +%s%N)
check_error "stop --timeout 1 of a frozen supervisor: timed out (exit 5)" 5 'no answer from the supervisor' \
    timeout 60 "$QV_BIN" --root "$T_ROOT" stop t1 --timeout 1
ms=$(ms_since "$start")
# stop waits --timeout for the guest, then a fixed 15 s for quit, SIGTERM and SIGKILL
check "...after --timeout plus the 15 s for quit and signals, not the default 60 s ($ms ms)" \
    test "$ms" -ge 15500 -a "$ms" -lt 30000
kill -CONT "$spid"
check "...and once it thaws the VM stops as asked" wait_until 30 bash -c "! '$QV_BIN' --root '$T_ROOT' list | grep -q '^t1 '"

# ---- edit through $EDITOR (on a terminal: `script` gives it one) ----
def=$T_ROOT/etc/qvisor/vms/t1.json
cat > "$T_ROOT/ed-mem" <<'ED'
#!/bin/sh
sed -i 's/"memory": "192M"/"memory": "320M"/' "$1"
ED
cat > "$T_ROOT/ed-bad" <<'ED'
#!/bin/sh
sed -i 's/"memory": "320M"/"memory": "lots"/' "$1"
ED
cat > "$T_ROOT/ed-syntax" <<'ED'
#!/bin/sh
printf '{"name": "t1", ' > "$1"
ED
cat > "$T_ROOT/ed-fail" <<'ED'
#!/bin/sh
sed -i 's/"memory": "320M"/"memory": "512M"/' "$1"
exit 3
ED
chmod +x "$T_ROOT"/ed-*
# edit_with EDITOR: qvisor edit t1 on a pseudo-terminal; prints its output and exits with its status
edit_with() {
    local cmd
    cmd=$(printf 'EDITOR=%q %q --root %q edit t1' "$1" "$QV_BIN" "$T_ROOT")
    script -qec "$cmd" /dev/null < /dev/null | tr -d '\r'
    return "${PIPESTATUS[0]}"
}
# a refused edit leaves its text in /tmp/qvisor-edit-*.json and says where
kept_text() { grep -o '/tmp/qvisor-edit-[A-Za-z0-9]*\.json' <<< "$1" | head -1; }
check_output "edit runs \$EDITOR on the definition and validates it" '^t1 changed' edit_with "$T_ROOT/ed-mem"
check "...the definition file has the change" grep -q '"memory": "320M"' "$def"
check_output "...show prints it" '"memory": "320M"' qv show t1
cp "$def" "$T_ROOT/def.before"
out=$(edit_with "$T_ROOT/ed-bad"); rc=$?
check "an edit with a bad value is refused (exit 2, the JSON path)" \
    bash -c "[ $rc -eq 2 ] && grep -q 'memory: \"lots\" is not a size' <<< '$out'"
check "...and changes nothing" cmp -s "$def" "$T_ROOT/def.before"
kept=$(kept_text "$out")
check "...the edited text is kept for the user ($kept)" bash -c "[ -n '$kept' ] && grep -q '\"lots\"' '$kept'"
rm -f "$kept"
out=$(edit_with "$T_ROOT/ed-syntax"); rc=$?
check "an edit that is not JSON is refused (exit 2)" test "$rc" -eq 2
check "...and changes nothing" cmp -s "$def" "$T_ROOT/def.before"
rm -f "$(kept_text "$out")"
out=$(edit_with "$T_ROOT/ed-fail"); rc=$?
check "an editor that fails changes nothing (exit 1, 'the editor failed')" \
    bash -c "[ $rc -eq 1 ] && grep -q 'the editor failed' <<< '$out' && cmp -s '$def' '$T_ROOT/def.before'"
rm -f "$(kept_text "$out")"
check_error "edit of an unknown VM: no such object (exit 3)" 3 'nosuch' qv edit nosuch
finish
