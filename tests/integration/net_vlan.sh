#!/bin/bash
# timeout: 300
# nics[].vlan: a guest's tap as an untagged access port of its VLAN on the network's
# bridge (VLAN filtering turned on by qvisor on its own bridge, refused with the fix on
# a host bridge without it). One TCG guest on VLAN 100 and namespace endpoints the test
# puts on VLANs with iproute2's bridge tool, which is also the oracle for the tap.
. "$(dirname "$0")/../lib.sh"
net_world || { not_ok "network namespaces"; finish; }

qn net define -q nv --ipv4 10.87.0.1/24 --dhcp 10.87.0.100,10.87.0.150
qn net start -q nv
G="--memory 192M --kernel $G_KERNEL --initrd $G_INITRD"
check_error "a VLAN outside 1-4094 is refused with its JSON path (exit 2)" 2 'nics\[0\]\.vlan: 5000' \
    qn define bad $G --append "$G_APPEND" --nic network=nv,vlan=5000
check_error "...and on a user-mode NIC (exit 2)" 2 'nics\[0\]\.vlan: only for NICs on a bridge or a qvisor network' \
    qn define bad $G --append "$G_APPEND" --nic user,vlan=100
check_output "a NIC with vlan 100 is defined" '"vlan": 100' bash -c \
    "$(declare -f qn); T_NS=$T_NS QV_BIN=$QV_BIN T_ROOT=$T_ROOT; qn define -q gv $G --append '$G_APPEND' --nic network=nv,vlan=100,filter=none,mac=52:54:00:87:00:10 && qn show gv"
check_not "the network's bridge does not filter VLANs before" bash -c "ip -n $T_NS -d link show qvbr-nv | grep -q 'vlan_filtering 1'"

# ep NS VID IP: a namespace whose eth0 is a port of qvbr-nv; VID 1 leaves the default VLAN
EPS=0
ep() {
    EPS=$((EPS + 1))
    ip netns add "$1" || return 1
    on_exit "ip netns del $1"
    ip -n "$T_NS" link add "w$EPS" type veth peer name eth0 netns "$1" &&
        ip -n "$1" link set eth0 up && ip -n "$1" addr add "$3/24" dev eth0 &&
        ip -n "$T_NS" link set "w$EPS" master qvbr-nv && ip -n "$T_NS" link set "w$EPS" up || return 1
    [ "$2" = 1 ] || port_vlan "w$EPS" "$2"
}
# port_vlan PORT VID: make a test port an access port of VID
port_vlan() {
    bridge -n "$T_NS" vlan add vid "$2" dev "$1" pvid untagged && bridge -n "$T_NS" vlan del vid 1 dev "$1"
}
# does this kernel's bridge filter VLANs at all (CONFIG_BRIDGE_VLAN_FILTERING)?
if ! in_host ip link add vprobe type bridge vlan_filtering 1 2>/dev/null; then
    check_error "without bridge VLAN filtering in the kernel, the start says so" 1 \
        "VLAN 100: this kernel's bridges cannot filter VLANs \(it was built without CONFIG_BRIDGE_VLAN_FILTERING\)" qn start gv
    check_not "...and nothing runs" bash -c "'$QV_BIN' --root '$T_ROOT' list | grep -q '^gv '"
    ok "# SKIP VLAN isolation between guests: this kernel ($(uname -r)) has no bridge VLAN filtering"
    finish
fi
in_host ip link del vprobe
check_output "the guest on VLAN 100 starts" 'gv started' qn start gv
tap=$(qn ifaddr gv | awk '/^nic0/ {print $5}')
check "...and qvisor turned VLAN filtering on its own bridge on" bash -c "ip -n $T_NS -d link show qvbr-nv | grep -q 'vlan_filtering 1'"
vl=$(bridge -n "$T_NS" vlan show dev "$tap")
diag "$vl"
check "its tap ($tap) is an access port of VLAN 100: PVID, egress untagged" grep -Eq '(^|[[:space:]])100 PVID Egress Untagged' <<< "$vl"
check_not "...and no longer in the default VLAN 1" grep -Eq '(^|[[:space:]])1( |$)' <<< "$vl"

e1=qe1${T_ROOT##*.}; e2=qe2${T_ROOT##*.}; e3=qe3${T_ROOT##*.}
ep "$e1" 100 10.87.0.61 && ep "$e2" 200 10.87.0.62 && ep "$e3" 1 10.87.0.63 || { not_ok "endpoints on qvbr-nv"; finish; }
check "the guest answers on its console" wait_until 90 guest_ok gv 'ip addr add 10.87.0.60/24 dev eth0; ip link set eth0 up'
check "the guest reaches an endpoint on its VLAN (100)" wait_until 30 guest_ok gv 'ping -c 1 -W 2 10.87.0.61'
check_guest_fails "...but not one on VLAN 200" gv 'ping -c 2 -W 1 10.87.0.62' '2 packets transmitted, 0 packets received'
check_guest_fails "...nor one on the default VLAN" gv 'ping -c 2 -W 1 10.87.0.63' '2 packets transmitted, 0 packets received'
check "the default VLAN's port still reaches the host's address on the bridge" in_host ip netns exec "$e3" busybox ping -c 1 -W 2 10.87.0.1
check "...moved onto VLAN 100, the VLAN-200 endpoint is reached: only the VLAN kept it apart" \
    bash -c "$(declare -f port_vlan); T_NS=$T_NS; port_vlan w2 100 && bridge -n $T_NS vlan del vid 200 dev w2"
check "...the guest reaches it now" wait_until 20 guest_ok gv 'ping -c 1 -W 2 10.87.0.62'

# a host bridge without VLAN filtering: qvisor does not change it, it says how
in_host ip link add tbr0 type bridge && in_host ip link set tbr0 up
check_error "attach-nic --vlan on a host bridge without VLAN filtering is refused with the fix" 2 \
    'bridge tbr0 does not filter VLANs.*ip link set tbr0 type bridge vlan_filtering 1' \
    qn attach-nic gv --bridge tbr0 --vlan 300 --mac 52:54:00:87:00:11
check_not "...and left tbr0 as it was" bash -c "ip -n $T_NS -d link show tbr0 | grep -q 'vlan_filtering 1'"
in_host ip link set tbr0 type bridge vlan_filtering 1
check_output "with VLAN filtering on, the NIC is attached" 'attached' qn attach-nic gv --bridge tbr0 --vlan 300 --mac 52:54:00:87:00:11
tap2=$(qn ifaddr gv | awk '/52:54:00:87:00:11/ {print $5}')
check_output "...its tap ($tap2) is an access port of VLAN 300" '300 PVID Egress Untagged' bridge -n "$T_NS" vlan show dev "$tap2"
qn kill gv > /dev/null
finish
