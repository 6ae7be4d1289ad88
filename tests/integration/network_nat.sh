#!/bin/bash
# timeout: 300
# The default NAT network built by qvisor itself, in namespaces this test creates:
# DHCP leases, guests reaching each other, the gateway and the outside through
# masquerade, per-NIC filters against spoofing, NIC hotplug, and a host firewall
# table left untouched.
. "$(dirname "$0")/../lib.sh"
net_world || { not_ok "network namespaces"; finish; }

# the admin's own table, loaded first: it must come out byte-identical
in_host nft -f - <<'NFT'
table inet filter {
    chain input { type filter hook input priority 0; policy accept; tcp dport 22 accept; }
    chain forward { type filter hook forward priority 0; policy accept; ct state invalid drop; }
    chain output { type filter hook output priority 0; policy accept; }
}
NFT
before=$(in_host nft -j list table inet filter)

check_output "the default network is shipped" '^default +inactive +nat +qvbr-default +10\.77\.' qn net list
check_output "net start default" "network default started" qn net start default
check "...its bridge exists" in_host ip link show qvbr-default
check "...with its own nft table" in_host nft list table inet qvisor-default
check_error "a second net start fails (exit 4)" 4 "already running" qn net start default

define_net_guest g1 default
define_net_guest g2 default
qn start -q g1 && qn start -q g2
two_leases() { [ "$(qn net leases default | grep -c '52:54:00')" -ge 2 ]; }
check "both guests get a DHCP lease" wait_until 90 two_leases
both_known() { [ -n "$(guest_ip g1)" ] && [ -n "$(guest_ip g2)" ]; }
check "ifaddr learns each guest's address from its lease" wait_until 10 both_known
ip1=$(guest_ip g1)
ip2=$(guest_ip g2)
diag "g1 $ip1, g2 $ip2"
check_output "net leases lists them" "$ip2" qn net leases default
check_output "ifaddr shows MAC, tap and network" "nic0 +52:54:00:[0-9a-f:]+ +network +default +qvt[0-9a-f]+ +$ip1" qn ifaddr g1
# the lease file is written before the guest has applied the address: wait for that too
check "both guests applied their leases" wait_until 60 bash -c "grep -q 'QVISOR-GUEST: lease eth0' '$T_ROOT/var/log/qvisor/g1.log' && grep -q 'QVISOR-GUEST: lease eth0' '$T_ROOT/var/log/qvisor/g2.log'"
check "the guests ping each other" wait_until 60 guest_ok g1 "ping -c 2 -W 3 $ip2"
check "...and the gateway" wait_until 30 guest_ok g2 "ping -c 2 -W 3 10.77.0.1"
# the outside has no route back to 10.77.0.0/24: only masquerade lets a reply come back
check "the outside is reached through NAT (masquerade)" wait_until 20 guest_ok g1 "ping -c 2 -W 2 192.168.250.2"
check_not "nothing from the outside reaches a guest unasked" in_out busybox ping -c 1 -W 1 "$ip1"

# clean-traffic: a guest that changes its IP or MAC gets nothing through
gsh g2 "ip addr flush dev eth0; ip addr add 10.77.0.77/24 dev eth0" > /dev/null
check_not "a guest that takes another source IP gets nothing through" guest_ok g2 'ping -c 2 -W 1 10.77.0.1'
gsh g2 "ip addr flush dev eth0; ip addr add $ip2/24 dev eth0; ip link set eth0 down; ip link set eth0 address 52:54:00:ee:ee:ee; ip link set eth0 up" > /dev/null
check_not "a guest that takes another MAC gets nothing through" guest_ok g2 'ping -c 2 -W 1 10.77.0.1'
qn define -q g3x --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND qv_net=dhcp" \
    --nic "network=default,filter=none"
qn start -q g3x
has_ip() { [ -n "$(guest_ip "$1")" ]; }
check "filter none: the guest gets its lease" wait_until 90 has_ip g3x
gsh g3x "ip addr add 10.77.0.78/24 dev eth0" > /dev/null
check "filter none: a spoofed source IP gets through" wait_until 15 guest_ok g3x "ping -c 1 -W 2 -I 10.77.0.78 10.77.0.1"

# NIC hotplug: the guest sees a new interface and gets a lease on it
check_output "attach-nic on a running guest" "NIC attached as nic1" qn attach-nic g1 --network default --mac 52:54:00:aa:00:01
check "the guest sees the new interface" wait_until 20 guest_ok g1 "test -e /sys/class/net/eth1"
hotplug_lease() {
    guest_ok g1 'udhcpc -i eth1 -n -q -t 5 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1' &&
        qn net leases default | grep -q 52:54:00:aa:00:01
}
check "...and gets a lease on it" wait_until 40 hotplug_lease
tap=$(qn ifaddr g1 | awk '/52:54:00:aa:00:01/ {print $5}')
check "...on a tap of its own" in_host ip link show "$tap"
check_output "detach-nic waits for the guest to release it" "NIC 52:54:00:aa:00:01 detached" qn detach-nic g1 --mac 52:54:00:aa:00:01
check_not "...and its tap is gone" in_host ip link show "$tap"
filter_has_tap() { in_host nft list table bridge qvisor-default | grep -q "$1"; }
check_not "...and its filter" filter_has_tap "$tap"

# everything goes away
for g in g1 g2 g3x; do qn kill -q "$g"; done
any_tap() { in_host ip -br link | grep -q '^qvt'; }
check_not "taps vanish with their VMs" any_tap
check_output "net stop" "network default stopped" qn net stop default
qvisor_rules() { in_host nft list ruleset | grep -q qvisor; }
check_not "no trace of qvisor in the ruleset" qvisor_rules
check_not "no bridge left" in_host ip link show qvbr-default
check "the admin's table is byte-identical" test "$(in_host nft -j list table inet filter)" = "$before"
finish
