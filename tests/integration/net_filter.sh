#!/bin/bash
# timeout: 450
# Named NIC filters: filter define (flags and file) / list / show / undefine, validation
# with JSON paths, built-ins, undefine refused while a NIC uses one, and a running
# VM's NIC getting the filter's rules into its network's nftables bridge table
# (clean-traffic plus the named ports, ICMP types and addresses), removed when the VM
# goes. With real traffic between the network's host side and the guest: an ICMP type
# accepted from one source prefix and not from another, the same type dropped to one
# destination only, and each time the set element that decides it shown to decide it.
# The guest also has clock.offset localtime, its supervisor a TZ other than the host's.
. "$(dirname "$0")/../lib.sh"
net_world || { not_ok "network namespaces"; finish; }

check_output "filter define from flags" 'defined filter web \(clean-traffic, 1 in, 1 out rule\)' \
    qn filter define --name web --rule in:tcp:80:accept --rule out:tcp:25:drop
check "filter show prints its rules" jq -e '.rules == [
    {"direction": "in", "protocol": "tcp", "ports": "80", "action": "accept"},
    {"direction": "out", "protocol": "tcp", "ports": "25", "action": "drop"}] and .builtin == false' <<< "$(qn filter show web)"
cat > "$T_ROOT/bad.json" <<'J'
{"name": "bad", "rules": [{"direction": "out", "protocol": "udp", "ports": "53", "action": "drop"},
                          {"direction": "in", "protocol": "tcp", "ports": "22", "action": "drop"}]}
J
check_error "a rule the backend cannot do is refused with its JSON path (exit 2)" 2 \
    'bad.json: rules\[1\]\.action: an in rule accepts' qn filter define "$T_ROOT/bad.json"
check_error "a port out of range (exit 2)" 2 'rules\[0\]\.ports: "70000" is not a port' \
    qn filter define --name bad --rule out:tcp:70000:drop
check_error "a built-in name is not free (exit 2)" 2 'name: "clean-traffic" is not free \(it is built in\)' \
    qn filter define --name clean-traffic --rule out:tcp:25:drop
check_not "...none of them was written" test -e "$T_ROOT/etc/qvisor/filters/bad.json"
# ICMP types and addresses: each mistake named by its JSON path, exit 2, nothing written
bad_rule() {    # bad_rule RULE-JSON: a file "bad.json" with that rule after a good one
    printf '{"name": "bad", "rules": [{"direction": "in", "protocol": "tcp", "ports": "22", "action": "accept"}, %s]}\n' \
        "$1" > "$T_ROOT/bad.json"
    qn filter define "$T_ROOT/bad.json"
}
check_error "a source that is not a prefix (exit 2)" 2 'rules\[1\]\.source: "10\.0\.0\.300/8" is not an address or a prefix' \
    bad_rule '{"direction": "in", "protocol": "all", "source": "10.0.0.300/8", "action": "accept"}'
check_error "a prefix with host bits set names its network (exit 2)" 2 \
    'rules\[1\]\.destination: "10\.1\.2\.3/16" has bits set past its /16 prefix \(the network is 10\.1\.0\.0/16\)' \
    bad_rule '{"direction": "out", "protocol": "all", "destination": "10.1.2.3/16", "action": "drop"}'
check_error "an IPv6 prefix longer than 128 bits (exit 2)" 2 'rules\[1\]\.source: "fd00::/129" has a prefix longer than 128 bits' \
    bad_rule '{"direction": "in", "protocol": "all", "source": "fd00::/129", "action": "accept"}'
check_error "an ICMP type out of range (exit 2)" 2 'rules\[1\]\.type: 256 is not an ICMP type \(0-255\)' \
    bad_rule '{"direction": "in", "protocol": "icmp", "type": 256, "action": "accept"}'
check_error "an ICMPv6 type nft has no name for (exit 2)" 2 'rules\[1\]\.type: "echo-requets" is not an ICMPv6 type' \
    bad_rule '{"direction": "in", "protocol": "icmpv6", "type": "echo-requets", "action": "accept"}'
check_error "a type on a tcp rule (exit 2)" 2 'rules\[1\]\.type: only icmp and icmpv6 rules have a type' \
    bad_rule '{"direction": "in", "protocol": "tcp", "ports": "80", "type": 8, "action": "accept"}'
check_error "source and destination of two families (exit 2)" 2 'rules\[1\]\.destination: "fd00::/8" is an IPv6 prefix, the source is IPv4' \
    bad_rule '{"direction": "out", "protocol": "all", "source": "10.0.0.0/8", "destination": "fd00::/8", "action": "drop"}'
check_error "an ICMP type with IPv6 addresses (exit 2)" 2 'rules\[1\]\.source: "fd00::/8" is IPv6: ICMP types are IPv4.s \(use "icmpv6"\)' \
    bad_rule '{"direction": "in", "protocol": "icmp", "type": "echo-request", "source": "fd00::/8", "action": "accept"}'
check_error "\"all\" without an address (exit 2)" 2 'rules\[1\]\.protocol: "all" needs a source or a destination' \
    bad_rule '{"direction": "out", "protocol": "all", "action": "drop"}'
cat > "$T_ROOT/bad.json" <<'J'
{"name": "bad", "rules": [{"direction": "in", "protocol": "tcp", "ports": "8000-8100", "source": "10.0.0.0/8", "action": "accept"},
                          {"direction": "out", "protocol": "tcp", "ports": "8050", "source": "10.0.0.0/8", "action": "drop"},
                          {"direction": "in", "protocol": "tcp", "ports": "8050-8200", "source": "10.9.0.0/16", "action": "accept"}]}
J
check_error "two address rules of one direction that overlap (exit 2)" 2 'bad.json: rules\[2\]: overlaps rules\[0\]' \
    qn filter define "$T_ROOT/bad.json"
check_error "a --rule with an unknown match key (exit 2)" 2 '"port" is not ports, type, source or destination' \
    qn filter define --name bad --rule in:tcp:port=80:accept
check_not "...none of them was written" test -e "$T_ROOT/etc/qvisor/filters/bad.json"
check_output "a rule's IPv6 prefix in --rule keeps its colons; a numeric type is shown by name" \
    'defined filter six \(clean-traffic, 1 in, 1 out rule\)' \
    qn filter define --name six --rule out:all:destination=fd00:bad::/32:drop --rule in:icmpv6:type=128:accept
check "...filter show has them" jq -e '.rules == [
    {"direction": "in", "protocol": "icmpv6", "type": "echo-request", "action": "accept"},
    {"direction": "out", "protocol": "all", "destination": "fd00:bad::/32", "action": "drop"}]' <<< "$(qn filter show six)"
qn filter undefine -q six
# web, redefined (a definition replaces the old one): the guest below uses it
cat > "$T_ROOT/web.json" <<'J'
{"name": "web", "rules": [
  {"direction": "in", "protocol": "tcp", "ports": 80, "action": "accept"},
  {"direction": "out", "protocol": "tcp", "ports": "25", "action": "drop"},
  {"direction": "in", "protocol": "icmp", "type": 8, "source": "10.88.0.0/25", "action": "accept"},
  {"direction": "in", "protocol": "icmpv6", "type": "echo-request", "source": "fe80::/10", "action": "accept"},
  {"direction": "out", "protocol": "icmp", "type": "echo-request", "destination": "10.88.0.200", "action": "drop"},
  {"direction": "out", "protocol": "udp", "ports": "5000-5100", "destination": "fd00:bad::/32", "action": "drop"}]}
J
check_output "filter define with ICMP types and addresses (from a file)" 'defined filter web \(clean-traffic, 3 in, 3 out rules\)' \
    qn filter define "$T_ROOT/web.json"
check "...filter show normalizes them (the type by name, an address as a /32)" jq -e '.rules[1:4] == [
    {"direction": "in", "protocol": "icmp", "type": "echo-request", "source": "10.88.0.0/25", "action": "accept"},
    {"direction": "in", "protocol": "icmpv6", "type": "echo-request", "source": "fe80::/10", "action": "accept"},
    {"direction": "out", "protocol": "tcp", "ports": "25", "action": "drop"}] and
    .rules[4].destination == "10.88.0.200/32" and .rules[5].destination == "fd00:bad::/32"' <<< "$(qn filter show web)"
check_output "filter list has the built-in ones and web" '^web +6 +clean-traffic \+ rules' qn filter list
check "filter list --json" jq -e '[.[].name] == ["clean-traffic", "none", "web"]' <<< "$(qn filter list --json)"
check_output "filter show clean-traffic describes it" 'source MAC|own MAC|MAC and its leased' qn filter show clean-traffic
check_error "filter show of an unknown filter (exit 3)" 3 'no filter named ghost' qn filter show ghost

qn net define -q nf --ipv4 10.88.0.1/24 --dhcp 10.88.0.100,10.88.0.150
qn net start -q nf
G="--memory 192M --kernel $G_KERNEL --initrd $G_INITRD"
qn define -q fv $G --append "$G_APPEND qv_net=dhcp" --nic network=nf,filter=web,mac=52:54:00:88:00:10
# the same guest shows clock.offset localtime: its supervisor runs in UTC+05:30 (TZ)
qn show fv | jq '.clock = {"offset": "localtime"}' | qn edit fv > /dev/null
check_output "a NIC refers to the filter by name" '"filter": "web"' qn show fv
check_error "filter undefine is refused while a NIC uses it (exit 4)" 4 'filter web is used by fv nics\[0\]' \
    qn filter undefine web
check_error "...and a built-in one cannot go (exit 4)" 4 'filter none is built in' qn filter undefine none
start_in_zone() { TZ=QVT-05:30 qn start fv; }
check_output "the VM starts (its supervisor in TZ UTC+05:30)" 'fv started' start_in_zone
tap=$(qn ifaddr fv | awk '/^nic0/ {print $5}')
has() { in_host nft get element bridge qvisor-nf "$1" "{ $2 }" > /dev/null 2>&1; }
check "its tap ($tap) is filtered: clean-traffic (its MAC)" has tap_mac "\"$tap\" . 52:54:00:88:00:10"
check "...the out rule: tcp 25 dropped" has deny_out "\"$tap\" . tcp . 25"
check "...the in rule: tcp 80 accepted (and inbound restricted)" has allow_in "\"$tap\" . tcp . 80"
check_not "...nothing else: tcp 26 is not dropped" has deny_out "\"$tap\" . tcp . 26"
check "...echo requests from 10.88.0.0/25 accepted" has allow_in_net4_icmp "\"$tap\" . 10.88.0.0/25 . 0.0.0.0/0 . echo-request"
check "...echo requests to 10.88.0.200 dropped" has deny_out_net4_icmp "\"$tap\" . 0.0.0.0/0 . 10.88.0.200 . echo-request"
check "...udp 5000-5100 to fd00:bad::/32 dropped" has deny_out_net6_port "\"$tap\" . ::/0 . fd00:bad::/32 . udp . 5000-5100"

# Real traffic between the network's host side (10.88.0.1, and 10.88.0.200 added
# below, outside the accepted /25) and the guest
bridge=$(qn net show nf --json | jq -r .bridge)
in_host ip addr add 10.88.0.200/24 dev "$bridge"
has_lease() { [ -n "$(guest_ip fv)" ]; }
check "the guest has its lease" wait_until 120 has_lease
ip=$(guest_ip fv)
rtc=$(gsh fv 'echo R$(cat /sys/class/rtc/rtc0/since_epoch)R' | grep -o 'R[0-9]*R' | tail -1 | tr -d R)
want=$(( $(date +%s) + 19800 ))
diag "the guest's RTC: ${rtc:-?} s; the host's UTC + 5.5 h: $want s"
check "clock localtime: the guest's RTC reads the supervisor's local time, 5.5 h ahead of UTC (within 5 min)" \
    test "${rtc:-0}" -gt $((want - 300)) -a "${rtc:-0}" -lt $((want + 300))
ping_from() { in_host busybox ping -c 1 -W 2 -I "$1" "$ip"; }
check "an echo request from 10.88.0.1 (in the accepted /25) reaches the guest ($ip)" wait_until 120 ping_from 10.88.0.1
gsh fv "(nc -ll -p 80 -e echo web-\$((2+3)) >/dev/null 2>&1 &)" > /dev/null
tcp80_from() {
    in_host python3 -c 'import socket, sys
s = socket.socket(); s.settimeout(3); s.bind((sys.argv[1], 0)); s.connect((sys.argv[2], 80))
sys.exit(0 if s.recv(64).startswith(b"web-5") else 1)' "$1" "$ip"
}
check "10.88.0.200 reaches the guest: tcp 80 (the in rule for port 80)" wait_until 30 tcp80_from 10.88.0.200
check_error "...but its echo request does not: its source is outside the /25" 1 '1 packets transmitted, 0 packets received' \
    ping_from 10.88.0.200
check "...and the address rule's element is what decides: with 10.88.0.128/25 added, it passes" \
    with_nft_element bridge "qvisor-nf" allow_in_net4_icmp "\"$tap\" . 10.88.0.128/25 . 0.0.0.0/0 . echo-request" \
    wait_until 15 ping_from 10.88.0.200
check_error "...and with it gone again it is stopped again" 1 '0 packets received' ping_from 10.88.0.200
check "the guest's echo request reaches 10.88.0.1" wait_until 30 guest_ok fv 'ping -c 1 -W 2 10.88.0.1'
check_guest_fails "...but not 10.88.0.200 (out: echo-request to 10.88.0.200 dropped)" fv 'ping -c 2 -W 1 10.88.0.200' \
    '2 packets transmitted, 0 packets received'
without_element() {     # without_element SET KEY CMD...: KEY out of SET while CMD runs
    local set=$1 key=$2 rc
    shift 2
    in_host nft delete element bridge qvisor-nf "$set" "{ $key }" || return 99
    "$@"
    rc=$?
    in_host nft add element bridge qvisor-nf "$set" "{ $key }" || return 99
    return $rc
}
check "...because of that type's element: without it the same ping passes" \
    without_element deny_out_net4_icmp "\"$tap\" . 0.0.0.0/0 . 10.88.0.200/32 . echo-request" \
    wait_until 15 guest_ok fv 'ping -c 1 -W 2 10.88.0.200'
check_guest_fails "...and with it back it is dropped again" fv 'ping -c 2 -W 1 10.88.0.200' '0 packets received'
# IPv6: the guest's link-local address, pinged from the bridge's (fe80::/10: accepted)
ll=$(gsh fv 'ip -6 addr show dev eth0 scope link' | grep -o 'fe80::[0-9a-f:]*' | head -1)
ping6_guest() { in_host busybox ping6 -c 1 -W 2 -I "$bridge" "${ll:-fe80::1}"; }
check "IPv6: an echo request from the host's link-local address (fe80::/10) reaches the guest (${ll:-no address})" \
    wait_until 30 ping6_guest
check_error "...and without the icmpv6 rule's element it does not" 1 '0 packets received' \
    without_element allow_in_net6_icmp "\"$tap\" . fe80::/10 . ::/0 . echo-request" ping6_guest
check "...and with it back it passes again" wait_until 15 ping6_guest

# a redefinition reaches the running NIC at once (libvirt's nwfilter-define does too)
jq '.rules += [{"direction": "out", "protocol": "tcp", "ports": "26", "action": "drop"}]' "$T_ROOT/web.json" > "$T_ROOT/web2.json"
check_output "filter define of a filter in use: the running NIC takes it" \
    'defined filter web \(clean-traffic, 3 in, 4 out rules\); 1 running NIC took it' qn filter define "$T_ROOT/web2.json"
check "...its new rule is there at once: tcp 26 dropped" has deny_out "\"$tap\" . tcp . 26"
check "...and its old ones still are" has allow_in_net4_icmp "\"$tap\" . 10.88.0.0/25 . 0.0.0.0/0 . echo-request"
check "...the supervisor says so" log_has fv 'nic0: filter web applied again \(redefined\)'
qn kill fv > /dev/null
gone() { ! has deny_out "\"$tap\" . tcp . 25" && ! has tap_mac "\"$tap\" . 52:54:00:88:00:10" &&
    ! has deny_out_net4_icmp "\"$tap\" . 0.0.0.0/0 . 10.88.0.200 . echo-request"; }
check "when the VM goes, so do its filter's elements" wait_until 20 gone
qn define -q gv $G --append "$G_APPEND" --nic network=nf,filter=ghost
check_error "a VM whose filter does not exist does not start (exit 3)" 3 'no filter named ghost' qn start gv
qn undefine -q fv
check_output "with its NIC gone, filter undefine works" 'undefined filter web' qn filter undefine web
check_error "...and then web is gone (exit 3)" 3 'no filter named web' qn filter show web
finish
