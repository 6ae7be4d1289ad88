#!/bin/bash
# timeout: 660
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
g1_maps=$(cat "/proc/$(sup_pid g1)/maps" 2>/dev/null)
check "a network NIC's supervisor loaded libnl and libnftables to plug its tap" \
    bash -c 'grep -q libnl-route-3 <<< "$1" && grep -q libnftables <<< "$1"' _ "$g1_maps"
check "...and no NSS module (the uid lease asks NSS in a child)" bash -c '! grep -q libnss_ <<< "$1"' _ "$g1_maps"
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
# Now give the outside a route to the guests: only qvisor's forward rule may stop it.
in_out ip route add 10.77.0.0/24 via 192.168.250.1
check_output "the outside has a route to the guests' subnet" "10.77.0.0/24 via 192.168.250.1" in_out ip route show 10.77.0.0/24
check_error "nothing from the outside reaches a guest unasked, though it has a route" 1 '1 packets transmitted, 0 packets received' \
    in_out busybox ping -c 1 -W 2 "$ip1"
check "...and qvisor's rule is what stops it: without it the same ping passes" \
    without_nft_rule inet qvisor-default forward 'oifname "qvbr-default" reject' wait_until 15 in_out busybox ping -c 1 -W 2 "$ip1"
check_error "...and with the rule back it is stopped again" 1 '0 packets received' in_out busybox ping -c 1 -W 2 "$ip1"

# clean-traffic: a guest that changes its IP or MAC gets nothing through
tap2=$(qn ifaddr g2 | awk '/^nic0/ {print $5}')
mac2=$(qn ifaddr g2 | awk '/^nic0/ {print $2}')
# the filter is the shared chain from_guest and set elements keyed by the tap
check "g2 has a tap ($tap2) and its filter's elements: dispatch, MAC, address" \
    in_host nft get element bridge qvisor-default out_taps "{ \"$tap2\" }"
check "...its MAC" in_host nft get element bridge qvisor-default tap_mac "{ \"$tap2\" . $mac2 }"
check "...and its leased address" in_host nft get element bridge qvisor-default tap_ipv4 "{ \"$tap2\" . $ip2 }"
gsh g2 "ip addr flush dev eth0; ip addr add 10.77.0.77/24 dev eth0" > /dev/null
check_guest_fails "a guest that takes another source IP gets nothing through" g2 'ping -c 2 -W 1 10.77.0.1' '2 packets transmitted, 0 packets received'
check "...because the filter's last rule drops it: without that rule the same ping passes" \
    without_nft_rule bridge qvisor-default from_guest 'drop' wait_until 15 guest_ok g2 'ping -c 1 -W 2 10.77.0.1'
check_guest_fails "...and with the rule back it gets nothing through again" g2 'ping -c 2 -W 1 10.77.0.1' '0 packets received'
check "...and the tap's address elements are what lets a source through: with 10.77.0.77 added for $tap2 the ping passes" \
    with_nft_element bridge qvisor-default tap_ipv4 "\"$tap2\" . 10.77.0.77" wait_until 15 guest_ok g2 'ping -c 1 -W 2 10.77.0.1'
check_guest_fails "...and with it gone again it gets nothing through" g2 'ping -c 2 -W 1 10.77.0.1' '0 packets received'
gsh g2 "ip addr flush dev eth0; ip addr add $ip2/24 dev eth0; ip link set eth0 down; ip link set eth0 address 52:54:00:ee:ee:ee; ip link set eth0 up" > /dev/null
check_guest_fails "a guest that takes another MAC gets nothing through" g2 'ping -c 2 -W 1 10.77.0.1' '2 packets transmitted, 0 packets received'
mac_spoof_passes() {
    without_nft_rule bridge qvisor-default from_guest "iifname . ether saddr != @tap_mac drop" \
        without_nft_rule bridge qvisor-default from_guest "iifname . arp saddr ether != @tap_mac drop" \
        wait_until 15 guest_ok g2 'ping -c 1 -W 2 10.77.0.1'
}
check "...because of the filter's MAC rules: without them the same ping passes" mac_spoof_passes
check_guest_fails "...and with the rules back it gets nothing through again" g2 'ping -c 2 -W 1 10.77.0.1' '0 packets received'
check "...and the tap's MAC element is what the rules compare with: with 52:54:00:ee:ee:ee added for $tap2 the ping passes" \
    with_nft_element bridge qvisor-default tap_mac "\"$tap2\" . 52:54:00:ee:ee:ee" wait_until 15 guest_ok g2 'ping -c 1 -W 2 10.77.0.1'
check_guest_fails "...and with it gone again it gets nothing through" g2 'ping -c 2 -W 1 10.77.0.1' '0 packets received'
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
# absent = the listing worked and does not name it
filter_lacks_tap() { local t; t=$(in_host nft list table bridge qvisor-default) && ! grep -q "$1" <<< "$t"; }
filter_has_tap() { in_host nft list table bridge qvisor-default | grep -q "$1"; }
check "...with a filter of its own" filter_has_tap "$tap"
check_output "detach-nic waits for the guest to release it" "NIC 52:54:00:aa:00:01 detached" qn detach-nic g1 --mac 52:54:00:aa:00:01
check_error "...and its tap is gone" 1 "\"$tap\" does not exist" in_host ip link show "$tap"
check "...and its filter" filter_lacks_tap "$tap"

# everything goes away
check_output "the running guests have taps" '^qvt' in_host ip -br link
for g in g1 g2 g3x; do qn kill -q "$g"; done
no_tap() { local l; l=$(in_host ip -br link) && ! grep -q '^qvt' <<< "$l"; }
check "taps vanish with their VMs" no_tap
check_output "net stop" "network default stopped" qn net stop default
no_qvisor_rules() { local r; r=$(in_host nft list ruleset) && ! grep -q qvisor <<< "$r"; }
check "no trace of qvisor in the ruleset" no_qvisor_rules
check_error "no bridge left" 1 '"qvbr-default" does not exist' in_host ip link show qvbr-default
check "the admin's table is byte-identical" test "$(in_host nft -j list table inet filter)" = "$before"
finish
