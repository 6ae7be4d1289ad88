#!/bin/bash
# timeout: 600
# Isolated and routed networks against an "outside" namespace, static hosts and
# port forwards, a host forward policy of drop, and garbage collection after
# kill -9 of QEMU and of its supervisor.
. "$(dirname "$0")/../lib.sh"
net_world || { not_ok "network namespaces"; finish; }

cat > "$T_ROOT/iso.json" <<J
{"name": "iso", "mode": "isolated", "ipv4": {"address": "10.78.0.1/24", "dhcp": {"start": "10.78.0.100", "end": "10.78.0.200"},
 "hosts": [{"mac": "52:54:00:78:00:99", "ip": "10.78.0.99", "name": "probe"}]}}
J
check_output "net define from a file" "defined network iso \(isolated" qn net define "$T_ROOT/iso.json"
check_output "net define from flags, with a static host and a port forward" "defined network rt \(routed" \
    qn net define rt --mode routed --ipv4 10.79.0.1/24 --dhcp 10.79.0.100,10.79.0.200
cat > "$T_ROOT/fw.json" <<J
{"name": "fw", "mode": "nat", "ipv4": {"address": "10.80.0.1/24", "dhcp": {"start": "10.80.0.100", "end": "10.80.0.200"},
 "hosts": [{"mac": "52:54:00:80:00:10", "ip": "10.80.0.10", "name": "web"}]},
 "dns": {"domain": "lab"}, "forwards": [{"protocol": "tcp", "host_port": 8080, "guest": "10.80.0.10", "guest_port": 80}]}
J
qn net define -q "$T_ROOT/fw.json"
check_error "a subnet overlapping another network is refused (exit 4)" 4 "overlaps 10.78.0.0/24 of network iso" \
    qn net define clash --ipv4 10.78.0.129/25
check_error "a subnet overlapping the host's is refused (exit 4)" 4 "overlaps" qn net define clash2 --ipv4 192.168.250.7/24
check_error "a bad definition names the JSON path (exit 2)" 2 'ipv4.dhcp.start: 10.9.9.9 is outside 10.78.5.0/24' \
    qn net define clash3 --ipv4 10.78.5.1/24 --dhcp 10.9.9.9,10.78.5.50
check_output "net show prints the normalised definition" '"lease_time": 3600' qn net show iso
chmod 700 "$T_ROOT"
check_error "a run dir dnsmasq could not read is refused with the fix" 1 "is not searchable by others .*chmod o\+x" qn net start iso
chmod 755 "$T_ROOT"
for n in iso rt fw; do qn net start -q "$n"; done
check_output "net list shows three running networks" "fw +running +nat" qn net list

define_net_guest ig iso
define_net_guest rg rt
define_net_guest fg fw --nic user
qn define -q fg2 --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND qv_net=dhcp" \
    --nic "network=fw,mac=52:54:00:80:00:10"
for g in ig rg fg2; do qn start -q "$g"; done
# ready = the guest applied its lease (the lease file is written a little earlier)
leased() { grep -q 'QVISOR-GUEST: lease eth0' "$T_ROOT/var/log/qvisor/$1.log" 2>/dev/null && [ -n "$(guest_ip "$1")" ]; }
all_leased() { leased ig && leased rg && leased fg2; }
check "every guest gets and applies its lease (isolated, routed, static)" wait_until 120 all_leased
check "the static host gets its fixed address" test "$(guest_ip fg2)" = 10.80.0.10
# a name dnsmasq answers itself (a static host): nothing depends on an upstream server
dns_iso() { guest_ok ig "nslookup probe 10.78.0.1 2>&1 | grep -q 10.78.0.99"; }
check "isolated: the guest reaches the network's DNS" wait_until 20 dns_iso
# Isolation must not rest on DHCP handing out no router: the guest gets a route
# and the outside one back, so only qvisor's rules can stop the packet.
in_out ip route add 10.79.0.0/24 via 192.168.250.1
in_out ip route add 10.78.0.0/24 via 192.168.250.1
check "the same probe passes on a NAT network (fw)" wait_until 20 guest_ok fg2 "ping -c 1 -W 2 192.168.250.2"
check_output "isolated: the guest is given a default route to the network's address" 'default via 10\.78\.0\.1' \
    gsh ig "ip route replace default via 10.78.0.1 dev eth0; ip route show"
check_guest_fails "isolated: the outside is not reachable, though the guest has a route" ig "ping -c 2 -W 1 192.168.250.2" \
    '2 packets transmitted, 0 packets received'
iso_open() {
    without_nft_rule inet qvisor-iso forward 'iifname "qvbr-iso" reject' \
        without_nft_rule inet qvisor-iso forward 'oifname "qvbr-iso" reject' \
        wait_until 15 guest_ok ig "ping -c 1 -W 2 192.168.250.2"
}
check "...and qvisor's forward rules are what stop it: without them the same ping passes" iso_open
check_guest_fails "...and with them back it is stopped again" ig "ping -c 2 -W 1 192.168.250.2" '0 packets received'
rip=$(guest_ip rg)
check "routed: the guest reaches the outside" wait_until 20 guest_ok rg "ping -c 2 -W 2 192.168.250.2"
check "routed: the outside reaches the guest by its own address (no NAT)" wait_until 10 in_out busybox ping -c 1 -W 2 "$rip"
dns_web() { guest_ok fg2 "nslookup web.lab 10.80.0.1 2>&1 | grep -q 10.80.0.10"; }
check "DNS: guest names resolve in the network's domain" wait_until 20 dns_web
dns_web || diag "$(gsh fg2 'nslookup web.lab 10.80.0.1')"
# the port forward: a listener in the guest, a connection from the outside to the host's port
gsh fg2 "(nc -ll -p 80 -e echo forwarded-\$((2+3)) >/dev/null 2>&1 &)" > /dev/null
forwarded() { in_out timeout 5 busybox nc 192.168.250.1 8080 < /dev/null | grep -q forwarded-5; }
check "a port forward carries a connection from outside to the guest" wait_until 20 forwarded

# a host whose own forward policy is drop: qvisor does not touch it, and says what to add
in_host nft -f - <<'NFT'
table inet filter {
    chain forward { type filter hook forward priority 0; policy drop; }
}
NFT
check_guest_fails "with the host's forward policy drop, routed traffic stops (qvisor edits no foreign table)" \
    rg "ping -c 1 -W 1 192.168.250.2" '1 packets transmitted, 0 packets received'
in_host nft add rule inet filter forward iifname "qvbr-*" accept
in_host nft add rule inet filter forward oifname "qvbr-*" accept
check "...and the two rules README documents bring it back" wait_until 20 guest_ok rg "ping -c 2 -W 2 192.168.250.2"
in_host nft delete table inet filter

# kill -9 of QEMU and of its supervisor, then net gc: nothing of qvisor stays behind
qpid=$(qn status rg --json | grep -o '"pid": [0-9]*' | head -1 | grep -o '[0-9]*')
spid=$(qn status rg --json | grep -o '"supervisor_pid": [0-9]*' | head -1 | grep -o '[0-9]*')
tap=$(qn ifaddr rg | awk '/^nic0/ {print $5}')
tapfilters() { in_host nft list table bridge qvisor-rt | grep -q "$tap"; }
check "the routed guest has a tap ($tap)" bash -c "[ -n '$tap' ] && ip netns exec $T_NS ip link show '$tap' >/dev/null" 
check "...and a filter naming it" tapfilters
kill -9 "$spid" "$qpid"
tap_gone() { in_host ip link show "$tap" 2>&1 | grep -q "\"$tap\" does not exist"; }
check "the dead QEMU's tap vanished by itself" wait_until 10 tap_gone
check_output "net gc removes the filter it left behind" "removed filter of tap $tap on network rt" qn net gc
no_tapfilter() { local t; t=$(in_host nft list table bridge qvisor-rt) && ! grep -q "$tap" <<< "$t"; }
check "...so no rule names it any more" no_tapfilter
for g in ig fg2; do qn kill -q "$g"; done
# a network supervisor killed with -9: gc removes its bridge, rules and dnsmasq
npid=$(cat "$T_ROOT/run/qvisor/networks/iso/lock")
kill -9 "$npid"
iso_crashed() { qn net list | grep -Eq '^iso +crashed'; }
wait_until 10 iso_crashed
check_output "a network whose supervisor was killed shows as crashed" "^iso +crashed" qn net list
check_output "net gc removes its tables, bridge and dnsmasq" "removed network iso: tables and bridge qvbr-iso" qn net gc
for n in rt fw; do qn net stop -q "$n"; done
no_qvisor_rules() { local r; r=$(in_host nft list ruleset) && ! grep -q qvisor <<< "$r"; }
check "afterwards nft list ruleset shows no trace of qvisor" no_qvisor_rules
no_link() { local l; l=$(in_host ip -br link) && ! grep -Eq '^(qvt|qvm|qvbr)' <<< "$l"; }
check "...and no qvisor link is left" no_link
check_output "net gc on a clean host removes nothing" "nothing to remove" qn net gc
finish
