#!/bin/bash
# timeout: 300
# qvisor stats (virsh domstats): a guest on a managed network with a data disk writes
# a known amount to the disk and pings the gateway a known number of times; its
# statistics must show at least that much, the tap counters must be the kernel's own
# (ip -s link is the oracle), and --prometheus must parse with the Prometheus client's
# own parser and carry the same numbers. A VM that does not run has only vm_up 0.
. "$(dirname "$0")/../lib.sh"
net_world || { not_ok "network namespaces"; finish; }

PY=/usr/bin/python3   # Debian's python, which python3-prometheus-client is installed for
qn net define -q sn --ipv4 10.93.0.1/24 --dhcp 10.93.0.100,10.93.0.200
qn net start -q sn
on_exit "ip netns exec $T_NS '$QV_BIN' --root '$T_ROOT' net stop sn"
truncate -s 64M "$T_ROOT/data.raw"
define_net_guest st sn --disk "$T_ROOT/data.raw"
qv define -q idle --memory 128M --kernel "$G_KERNEL" --initrd "$G_INITRD" --nic user
qn start -q st || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 120 guest_ok st true

stats_json() { qn stats "$@" --json > "$T_ROOT/stats.json" 2> "$T_ROOT/stats.err"; }
jqs() { jq -e "$@" "$T_ROOT/stats.json" > /dev/null; }

check "stats --json answers for a running VM" stats_json st
wr0=$(jq '.[0].disks[] | select(.disk == "disk0") | .wr_bytes' "$T_ROOT/stats.json")
cpu0=$(jq '.[0].cpu.time_ns' "$T_ROOT/stats.json")
check "...the data disk is there, with a write counter ($wr0)" test -n "$wr0"

# ---- the guest does known work ----
check "the guest writes 8 MiB straight to its data disk" \
    guest_ok st 'dd if=/dev/zero of=/dev/vda bs=1M count=8 oflag=direct 2>/dev/null'
check "...and pings the gateway 5 times" wait_until 60 guest_ok st 'ping -c 5 -W 2 10.93.0.1 >/dev/null'
ip=$(guest_ip st)
check "...and gets 200 UDP datagrams from the host, to a port nobody listens on ($ip)" \
    in_host bash -c "for i in \$(seq 200); do echo x > /dev/udp/$ip/9; done"
check "stats again" stats_json st
check "the data disk's written bytes grew by at least 8 MiB" \
    jqs --argjson w "$wr0" '.[0].disks[] | select(.disk == "disk0") | .wr_bytes - $w >= 8388608'
check "...and at least 8 write requests" jqs '.[0].disks[] | select(.disk == "disk0") | .wr_reqs >= 8'
check "QEMU's CPU time grew" jqs --argjson c "$cpu0" '.[0].cpu.time_ns > $c'
check "one vCPU, with a thread id and a CPU time no larger than QEMU's whole" \
    jqs '(.[0].vcpus | length == 1) and .[0].vcpus[0].thread > 0 and .[0].vcpus[0].time_ns <= .[0].cpu.time_ns'
qpid=$(vm_pid st)
vm_rss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$qpid/status")
check "resident memory is QEMU's VmRSS (within 25%: $vm_rss)" \
    jqs --argjson r "$vm_rss" '.[0].memory.rss > $r * 0.75 and .[0].memory.rss < $r * 1.25'
check "defined memory is the definition's 192M" jqs '.[0].memory.size == 201326592'
tap=$(jq -r '.[0].nics[0].tap' "$T_ROOT/stats.json")
check "nic0 is counted on its tap ($tap)" test -n "$tap" -a "$tap" != null
check "...the guest received more than 200 packets and sent far fewer (its port-unreachable replies are rate-limited)" \
    jqs '.[0].nics[0].rx_packets >= 200 and .[0].nics[0].tx_packets < .[0].nics[0].rx_packets - 100'
# the kernel's counters, read after the stats: what the host sent is what the guest received
in_host ip -s -j link show "$tap" > "$T_ROOT/ip.json"
check "the guest received what the tap transmitted (ip -s link: tx of the host side)" \
    jq -e --slurpfile s "$T_ROOT/stats.json" \
    '.[0].stats64.tx.packets >= $s[0][0].nics[0].rx_packets and .[0].stats64.tx.packets - $s[0][0].nics[0].rx_packets < 20' \
    "$T_ROOT/ip.json"
check "...and sent what it received, at least the 5 pings" \
    jq -e --slurpfile s "$T_ROOT/stats.json" \
    '$s[0][0].nics[0].tx_packets >= 5 and .[0].stats64.rx.packets >= $s[0][0].nics[0].tx_packets and .[0].stats64.rx.packets - $s[0][0].nics[0].tx_packets < 20' \
    "$T_ROOT/ip.json"

# ---- all VMs, the one not running included ----
check "stats without names covers every defined VM" stats_json
check "...the shut-off VM has its state and nothing else" jqs '.[] | select(.name == "idle") | keys == ["name", "state"] and .state == "shut off"'
check_error "stats of an unknown VM: exit 3" 3 'nosuch' qn stats nosuch
check_output "the table names the disk and the NIC" 'disk0 +read .* written' qn stats st

# ---- Prometheus ----
qn stats --prometheus > "$T_ROOT/prom.txt"
stats_json st
cat > "$T_ROOT/prom.py" <<'EOF'
import json, sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
st = json.load(open(sys.argv[2]))[0]
def one(name, **labels):
    fam = fams[name]
    vals = [s.value for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(vals) == 1, (name, labels, vals)
    return vals[0]
assert fams["qvisor_vm_up"].type == "gauge"
assert one("qvisor_vm_up", vm="st") == 1 and one("qvisor_vm_up", vm="idle") == 0
assert fams["qvisor_disk_write_bytes"].type == "counter"   # the parser drops _total from counters
wr = one("qvisor_disk_write_bytes", vm="st", disk="disk0")
json_wr = [d for d in st["disks"] if d["disk"] == "disk0"][0]["wr_bytes"]
assert wr >= 8388608 and wr <= json_wr, (wr, json_wr)
assert one("qvisor_memory_size_bytes", vm="st") == 201326592
assert 0 < one("qvisor_vcpu_seconds", vm="st", vcpu="0") <= one("qvisor_cpu_seconds", vm="st")
assert one("qvisor_nic_transmit_packets", vm="st", nic="nic0") >= 5
assert not [s for f in fams.values() for s in f.samples if s.labels.get("vm") == "idle" and f.name != "qvisor_vm_up"]
print("ok")
EOF
check_output "--prometheus parses with the client's parser and matches the JSON" '^ok$' \
    "$PY" "$T_ROOT/prom.py" "$T_ROOT/prom.txt" "$T_ROOT/stats.json"
check "...every family has HELP and TYPE once" \
    bash -c "test \$(grep -c '^# TYPE' '$T_ROOT/prom.txt') = \$(grep -c '^# HELP' '$T_ROOT/prom.txt') -a \$(grep '^# TYPE' '$T_ROOT/prom.txt' | sort | uniq -d | wc -l) = 0"
finish
