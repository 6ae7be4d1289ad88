#!/bin/bash
# timeout: 300
# QEMU's network namespace: private and empty unless QEMU opens host sockets itself
# (user-mode NICs, VNC, qemu_args). Probed from inside with the probe program that
# stands in for QEMU (as in confinement_probe.sh), then checked on a real QEMU.
. "$(dirname "$0")/../lib.sh"

probe=$T_BUILD/progs/sandbox_probe
[ -x "$probe" ] || { not_ok "the probe is built ($probe)"; finish; }
"$probe" --listen-abstract > "$T_ROOT/listen.out" 2>&1 &
lp=$!
on_exit "kill $lp"
check "an abstract unix socket listens in the host's network namespace" wait_until 5 grep -q listening "$T_ROOT/listen.out"

use_probe() {
    printf '{"qemu": "%s", "cgroup_parent": "%s"}\n' "$probe" "$T_CGROUP" > "$T_ROOT/etc/qvisor/host.json"
    mkdir -p "$T_ROOT/var/cache/qvisor"
    printf '{"binary": "%s", "size": %s, "mtime_ns": %s, "major": 7, "minor": 2, "micro": 0, "io_uring": true}\n' \
        "$probe" "$(stat -c %s "$probe")" "$(stat -c %.9Y "$probe" | tr -d .)" > "$T_ROOT/var/cache/qvisor/qemu.json"
}
use_qemu() {
    printf '{"cgroup_parent": "%s"}\n' "$T_CGROUP" > "$T_ROOT/etc/qvisor/host.json"
    rm -rf "$T_ROOT/var/cache/qvisor"
}
# network_report NAME: the "network" part of the probe's report from NAME's last start
network_report() {
    qv start "$1" > /dev/null 2>&1
    grep -a '^PROBE-REPORT ' "$T_ROOT/var/log/qvisor/$1.log" | tail -1 | grep -o '"network": *{[^}]*}'
}
field() { grep -o "\"$2\": *[^,}]*" <<< "$1" | head -1 | sed 's/^[^:]*: *//'; }

use_probe
qv define -q shared --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND" --nic user
qv define -q private --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND"
rs=$(network_report shared)
rp=$(network_report private)
check "the probe reported from both VMs" test -n "$rs" -a -n "$rp"
# first: the probes work where the host's network is shared (user-mode NIC)
check "with a user-mode NIC, QEMU reaches the host's abstract socket (the probe works)" test "$(field "$rs" abstract)" = 0
check "...and the host's loopback answers (connection refused on a closed port, ECONNREFUSED)" \
    test "$(field "$rs" loopback_tcp)" = 111
# then: the same probes fail in the private namespace, for the expected reason
check "without host sockets, QEMU cannot reach the host's abstract socket (ECONNREFUSED: not in its namespace)" \
    test "$(field "$rp" abstract)" = 111
check "...nor 127.0.0.1 (ENETUNREACH: its loopback is down and its own)" test "$(field "$rp" loopback_tcp)" = 101
check_output "...and it sees no interface but lo" '"interfaces": *\[ *"lo" *\]' echo "$rp"

# a real QEMU: its namespace differs from the supervisor's exactly when it should
use_qemu
qv start -q private
qv start -q shared
ns_of() { readlink "/proc/$1/ns/net"; }
check "a QEMU with no user-mode NIC runs in a network namespace of its own" \
    test "$(ns_of "$(vm_pid private)")" != "$(ns_of "$(sup_pid private)")"
check "a QEMU with a user-mode NIC shares the host's" test "$(ns_of "$(vm_pid shared)")" = "$(ns_of "$(sup_pid shared)")"
check_output "status says which" 'own namespaces: .*net' qv status private
check_error "a user-mode NIC cannot be hotplugged into a private namespace, and the error says why (exit 2)" 2 \
    "private network namespace" qv attach-nic private --user
qv kill -q private
qv kill -q shared
finish
