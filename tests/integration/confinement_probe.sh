#!/bin/bash
# timeout: 300
# A probe program started through the very same spawn path as QEMU (it stands in
# for the QEMU binary, named in host.json): what a confined process sees and may do.
. "$(dirname "$0")/../lib.sh"

probe=$T_BUILD/progs/sandbox_probe
[ -x "$probe" ] || { not_ok "the probe is built ($probe)"; finish; }
# the probe speaks no QMP, so host facts come from a cache made for it
printf '{"qemu": "%s", "cgroup_parent": "%s"}\n' "$probe" "$T_CGROUP" > "$T_ROOT/etc/qvisor/host.json"
mkdir -p "$T_ROOT/var/cache/qvisor"
printf '{"binary": "%s", "size": %s, "mtime_ns": %s, "major": 7, "minor": 2, "micro": 0, "io_uring": true}\n' \
    "$probe" "$(stat -c %s "$probe")" "$(stat -c %.9Y "$probe" | tr -d .)" > "$T_ROOT/var/cache/qvisor/qemu.json"
img=$T_ROOT/img
mkdir -p "$img"
truncate -s 16M "$img/p.raw"
define_guest p "" --disk "$img/p.raw"
qv start p > /dev/null 2>&1
report=$(grep -a '^PROBE-REPORT ' "$T_ROOT/var/log/qvisor/p.log" | tail -1 | sed 's/^PROBE-REPORT //')
check "the probe ran through the supervisor's spawn path and reported" test -n "$report"
field() { grep -o "\"$1\": *[^,}]*" <<< "$report" | head -1 | sed 's/^[^:]*: *//'; }
has() { grep -q -- "$1" <<< "$report"; }
check "it runs as a non-root uid" has '"uid": *\[ *[1-9]'
check "all five capability sets are empty" bash -c "[ \$(grep -o '\"Cap[A-Za-z]*\": *\"0000000000000000\"' <<< '$report' | wc -l) -ge 5 ]"
check "NoNewPrivs is set" has '"NoNewPrivs": *"1"'
check "clone3 answers ENOSYS (38), never EPERM" test "$(field clone3)" = 38
check "threads still start" test "$(field thread)" = 0
check "/dev/net/tun cannot be opened" test "$(field tun)" != 0
check "/usr is not writable" test "$(field usr_write)" != 0
check "the private /tmp is writable" test "$(field tmp_write)" = 0
check "only fds 0-2, the plan's and the uid hold are open" bash -c "! grep -o '\"fds\": *\[[^]]*\]' <<< '$report' | grep -Eq '\"(1[0-9]|[2-9][0-9])\"'"
hidden_ok() {
    local p
    for p in /etc/qvisor /var/lib/qvisor /root /dev/net/tun; do
        grep -Eq "\"$p\": *\{\"stat\": *[1-9]" <<< "$report" || return 1
    done
}
check "qvisor's files, /root and /dev/net/tun are not visible" hidden_ok
denied=$(grep -o '"denied": *{[^}]*}' <<< "$report")
check "denied syscalls fail with EPERM (mount, ptrace, bpf, kexec_load, unshare, ...)" \
    bash -c "for s in mount ptrace bpf kexec_load init_module unshare setns reboot keyctl perf_event_open; do grep -Eq \"\\\"\$s\\\": *1[,}]\" <<< '$denied' || exit 1; done"
check "execve is possible before QEMU's own -sandbox spawn=deny takes over" test "$(field exec_self)" = 0
check_output "the start fails because the probe is no QEMU, and says so" "QEMU failed to start" qv status p
finish
