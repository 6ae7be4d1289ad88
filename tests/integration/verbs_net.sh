#!/bin/bash
# timeout: 300
# Network verbs and options nothing else exercises, in namespaces this test makes:
# net define --forward/--mtu/--autostart, a VM on an autostart network starting it,
# net undefine (refused while running, removed when stopped), and attach-nic
# --bridge (a bridge the test made), --direct (macvtap on a veth) and --user.
. "$(dirname "$0")/../lib.sh"
net_world || { not_ok "network namespaces"; finish; }

# ---- net define from flags ----
check_output "net define with --forward, --mtu and --autostart" 'defined network nf \(nat, bridge qvbr-nf, 10\.81\.0\.1/24\)' \
    qn net define nf --mode nat --ipv4 10.81.0.1/24 --dhcp 10.81.0.100,10.81.0.200 \
    --forward tcp:8081:10.81.0.10:80 --forward udp:5301:10.81.0.11:53 --mtu 1400 --autostart
nfdef=$(qn net show nf)
check "...the definition has the MTU" jq -e '.mtu == 1400' <<< "$nfdef"
check "...and autostart" jq -e '.autostart == true' <<< "$nfdef"
check "...and both forwards, each with its fields" jq -e '.forwards == [
    {"protocol": "tcp", "host_port": 8081, "guest": "10.81.0.10", "guest_port": 80},
    {"protocol": "udp", "host_port": 5301, "guest": "10.81.0.11", "guest_port": 53}]' <<< "$nfdef"
check_error "a bad --forward is a usage error (exit 2)" 2 'expected PROTO:HOSTPORT:GUESTIP:GUESTPORT' \
    qn net define nbad --ipv4 10.84.0.1/24 --forward 8081:80
check_error "a bad --mtu is refused with its JSON path (exit 2)" 2 'mtu' qn net define nbad --ipv4 10.84.0.1/24 --mtu 100
qn net define -q na --ipv4 10.82.0.1/24 --dhcp 10.82.0.100,10.82.0.200
check "a network defined without --autostart has it off" jq -e '.autostart == false' <<< "$(qn net show na)"
check_output "net list: nf autostarts" '^nf +inactive +nat +qvbr-nf +10\.81\.0\.1/24 +yes$' qn net list
check_output "net list: na does not" '^na +inactive +nat +qvbr-na +10\.82\.0\.1/24 +no$' qn net list

# ---- network autostart: a VM on an autostart network starts it ----
qn define -q va --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND" --nic network=na
qn define -q vf --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND" --nic network=nf
check_error "a VM on a stopped network without autostart does not start" 1 'network na is not running \(qvisor net start na\)' \
    qn start va
check_output "...and that network stays down" '^na +inactive' qn net list
check_output "a VM on a stopped autostart network starts" '^vf started' qn start vf
check_output "...and the network runs" '^nf +running' qn net list
check "...its supervisor says it started it" log_has vf 'started network nf \(autostart\)'
check "...its bridge exists" in_host ip link show qvbr-nf
check "...with the MTU of the definition" bash -c "ip -n $T_NS -o link show qvbr-nf | grep -q ' mtu 1400 '"
tap=$(qn ifaddr vf | awk '/^nic0/ {print $5}')
check "...and so has the VM's tap on it ($tap)" bash -c "ip -n $T_NS -o link show '$tap' | grep -q ' mtu 1400 .*master qvbr-nf'"
rules=$(in_host nft list ruleset)
check "the forwards are in the network's nft rules" \
    bash -c "grep -Eq 'tcp dport 8081 .*dnat (ip )?to 10\.81\.0\.10:80' <<< '$rules' && grep -Eq 'udp dport 5301 .*dnat (ip )?to 10\.81\.0\.11:53' <<< '$rules'"

# ---- net undefine ----
check_error "net undefine of a running network is refused (exit 4)" 4 'network nf is running \(qvisor net stop nf first\)' \
    qn net undefine nf
check_output "...and it stays defined" '"name": "nf"' qn net show nf
qn kill -q vf
qn net stop -q nf
check_output "net undefine of a stopped network" '^undefined network nf' qn net undefine nf
check_error "...it is gone (exit 3)" 3 'nf' qn net show nf
check_not "...from the store too" test -e "$T_ROOT/etc/qvisor/networks/nf.json"
check_error "net undefine of an unknown network: no such object (exit 3)" 3 'nf' qn net undefine nf

# ---- attach-nic --bridge, --direct, --user ----
in_host ip link add tbr0 type bridge
in_host ip addr add 10.83.0.1/24 dev tbr0
in_host ip link set tbr0 up
# the macvtap's parent: a veth whose other end is in the outside namespace (this
# kernel has no dummy driver), so traffic through the macvtap can be checked too
ip link add tup0 netns "$T_NS" type veth peer name tup1 netns "$T_OUT"
in_host ip link set tup0 up
in_out ip addr add 10.85.0.1/24 dev tup1
in_out ip link set tup1 up
check "the test's bridge and veth exist" bash -c "ip -n $T_NS link show tbr0 && ip -n $T_NS link show tup0" 
qn define -q nv --memory 192M --kernel "$G_KERNEL" --initrd "$G_INITRD" --append "$G_APPEND" --nic user
qn start -q nv
check "a guest boots in the namespace" wait_log nv 'QVISOR-GUEST: ready' 90
gok() { local o; o=$(gsh nv "$1"); grep -q 'END-42-0' <<< "$o" || { echo "$o"; return 1; }; }
# the guest's interface with a MAC
ifname() { echo "\$(grep -l $1 /sys/class/net/eth*/address | cut -d/ -f5)"; }

check_output "attach-nic --bridge" 'NIC attached as nic[0-9]+$' qn attach-nic nv --bridge tbr0 --mac 52:54:00:dd:00:01
btap=$(qn ifaddr nv | awk '/52:54:00:dd:00:01/ {print $5}')
check "...a tap ($btap) is on the test's bridge" bash -c "[ -n '$btap' ] && ip -n $T_NS -o link show master tbr0 | grep -q '$btap'"
check "...the guest sees the NIC" wait_until 20 gok "grep -qx 52:54:00:dd:00:01 /sys/class/net/eth*/address"
check "...and reaches the bridge's address through it" \
    wait_until 20 gok "i=$(ifname 52:54:00:dd:00:01); ip link set \$i up; ip addr add 10.83.0.2/24 dev \$i 2>/dev/null; ping -c 1 -W 2 10.83.0.1"

check_output "attach-nic --direct (macvtap)" 'NIC attached as nic[0-9]+$' qn attach-nic nv --direct tup0 --mac 52:54:00:dd:00:02
mtap=$(qn ifaddr nv | awk '/52:54:00:dd:00:02/ {print $5}')
check "...a macvtap ($mtap) on the veth, with the NIC's MAC" \
    bash -c "[ -n '$mtap' ] && ip -n $T_NS -d -o link show '$mtap' | grep -q '$mtap@tup0.* link/ether 52:54:00:dd:00:02 .* macvtap'"
check "...the guest sees the NIC" wait_until 20 gok "grep -qx 52:54:00:dd:00:02 /sys/class/net/eth*/address"
check "...and reaches the veth's other end through it" \
    wait_until 20 gok "i=$(ifname 52:54:00:dd:00:02); ip link set \$i up; ip addr add 10.85.0.2/24 dev \$i 2>/dev/null; ping -c 1 -W 2 10.85.0.1"

check_output "attach-nic --user" 'NIC attached as nic[0-9]+$' qn attach-nic nv --user --mac 52:54:00:dd:00:03
check_output "...ifaddr shows it as user-mode" '52:54:00:dd:00:03 +user' qn ifaddr nv
check "...the guest sees the NIC" wait_until 20 gok "grep -qx 52:54:00:dd:00:03 /sys/class/net/eth*/address"
check_error "attach-nic with two sources is a usage error (exit 2)" 2 'exactly one of' qn attach-nic nv --user --bridge tbr0

for m in 01 02 03; do
    check_output "detach-nic 52:54:00:dd:00:$m" "NIC 52:54:00:dd:00:$m detached" qn detach-nic nv --mac 52:54:00:dd:00:$m
done
check_not "...the bridge's tap is gone" in_host ip link show "$btap"
check_not "...and the macvtap" in_host ip link show "$mtap"
check "...the guest has only its boot NIC left" gok '[ $(ls -d /sys/class/net/eth* | wc -l) -eq 1 ]'
qn kill -q nv
finish
