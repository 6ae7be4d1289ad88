#!/bin/bash
# timeout: 300
# net update and net edit on a running network, with real dnsmasq and nftables in
# namespaces this test makes; the "guests" are network namespaces plugged into the
# bridge by veth (udhcpc is their DHCP client), so no QEMU is needed: a lease that
# survives an update, a static host dnsmasq hands out without a restart, port
# forwards added and removed as single rules, --live/--config, and net edit through
# $EDITOR (validation, the kept copy, what waits for a restart).
. "$(dirname "$0")/../lib.sh"
net_world || { not_ok "network namespaces"; finish; }

qn net define -q nu --ipv4 10.86.0.1/24 --dhcp 10.86.0.100,10.86.0.150
check_output "net start nu" "network nu started" qn net start nu
rundir=$T_ROOT/run/qvisor/networks/nu
dns_pid() { cat "$rundir/dnsmasq.pid"; }
pid0=$(dns_pid)

# ep NS MAC: a namespace whose eth0 (MAC) is a port of qvbr-nu
EPS=()
ep() {
    ip netns add "$1" || return 1
    on_exit "ip netns del $1"
    EPS+=("$1")
    ip -n "$T_NS" link add "v${#EPS[@]}" type veth peer name eth0 netns "$1" &&
        ip -n "$1" link set eth0 address "$2" && ip -n "$1" link set eth0 up && ip -n "$1" link set lo up &&
        ip -n "$T_NS" link set "v${#EPS[@]}" master qvbr-nu && ip -n "$T_NS" link set "v${#EPS[@]}" up
}
# dhcp NS [REQUESTED-IP]: asks for a lease and prints the address it got
dhcp() {
    ip netns exec "$1" busybox udhcpc -i eth0 -n -q -t 6 -T 2 -s /bin/true ${2:+-r "$2"} 2>&1 |
        sed -n 's/.*lease of \([0-9.]*\) obtained.*/\1/p'
}
c1=qc1${T_ROOT##*.}
c2=qc2${T_ROOT##*.}
ep "$c1" 52:54:00:86:00:01 && ep "$c2" 52:54:00:86:00:02 || { not_ok "endpoints on qvbr-nu"; finish; }
ip1=$(dhcp "$c1")
check "a client gets a dynamic lease ($ip1)" bash -c "[[ '$ip1' == 10.86.0.1[0-5][0-9] ]]"
check_output "...net leases lists it" "52:54:00:86:00:01 +$ip1" qn net leases nu

# ---- hosts ----
check_output "net update add host: into the definition" 'network nu: host added to its definition' \
    qn net update nu add host --mac 52:54:00:86:00:02 --ip 10.86.0.20 --name fixed
check_output "...and into the running network, by dnsmasq re-reading its hosts" 'dnsmasq re-read them' \
    qn net update nu add host --mac 52:54:00:86:00:03 --ip 10.86.0.21 --live
check "...dnsmasq was not restarted (pid $pid0)" test "$(dns_pid)" = "$pid0"
check_output "the static host gets its address from the running dnsmasq" '^10\.86\.0\.20$' dhcp "$c2"
check_output "...the earlier client's lease is still there" "52:54:00:86:00:01 +$ip1" qn net leases nu
check_output "...and renewing it gives the same address" "^$ip1\$" dhcp "$c1" "$ip1"
check "net show has the host" jq -e '.ipv4.hosts == [{"mac": "52:54:00:86:00:02", "ip": "10.86.0.20", "name": "fixed"}]' \
    <<< "$(qn net show nu)"
check "...the --live host is only in the running network's hosts file" \
    bash -c "grep -q '52:54:00:86:00:03,10.86.0.21' '$rundir/dnsmasq.dhcp-hosts' && ! grep -q 52:54:00:86:00:03 '$T_ROOT/etc/qvisor/networks/nu.json'"
check_output "...and the supervisor took the change (for a dnsmasq it restarts)" 'changed live: ipv4.hosts' \
    cat "$T_ROOT/var/log/qvisor/net-nu.log"
check_output "--config alone changes the definition only" 'to its definition$' \
    qn net update nu add host --mac 52:54:00:86:00:04 --name cfgonly --config
check_not "...not the running network" grep -q 52:54:00:86:00:04 "$rundir/dnsmasq.dhcp-hosts"
cp "$T_ROOT/etc/qvisor/networks/nu.json" "$T_ROOT/nu.before"
check_error "a host already there is refused (exit 4)" 4 'host mac 52:54:00:86:00:02.* is there already \(ipv4.hosts\[0\]' \
    qn net update nu add host --mac 52:54:00:86:00:02 --ip 10.86.0.22
check_error "a host outside the subnet is refused with its JSON path (exit 2)" 2 'ipv4\.hosts\[2\]\.ip: 10\.99\.0\.5 is outside 10\.86\.0\.0/24' \
    qn net update nu add host --mac 52:54:00:86:00:05 --ip 10.99.0.5
check_error "an option of the other kind is a usage error (exit 2)" 2 '\-\-guest is not an option of a host' \
    qn net update nu add host --mac 52:54:00:86:00:05 --guest 10.86.0.9
check_error "deleting a host that is not there: no such object (exit 3)" 3 'network nu has no host with mac 52:54:00:86:00:99' \
    qn net update nu delete host --mac 52:54:00:86:00:99
check "...the refused updates changed nothing" cmp -s "$T_ROOT/etc/qvisor/networks/nu.json" "$T_ROOT/nu.before"
check_output "net update delete host" 'dnsmasq re-read them' qn net update nu delete host --mac 52:54:00:86:00:02
check_not "...it left the running network's hosts file" grep -q 52:54:00:86:00:02 "$rundir/dnsmasq.dhcp-hosts"
check "...and the definition" jq -e '[.ipv4.hosts[].mac] == ["52:54:00:86:00:04"]' <<< "$(qn net show nu)"

# ---- forwards ----
ip -n "$c1" addr add "$ip1/24" dev eth0 && ip -n "$c1" route add default via 10.86.0.1
ip netns exec "$c1" busybox nc -ll -p 80 -e echo fwd-ok > /dev/null 2>&1 &
nc_pid=$!
on_exit "kill $nc_pid"
fetch() { in_out busybox nc -w 3 192.168.250.1 "$1" < /dev/null 2>&1; }
check "the client serves on port 80 (seen from the host)" wait_until 10 bash -c "ip netns exec $T_NS busybox nc -w 2 $ip1 80 </dev/null | grep -q fwd-ok"
check_not "...but the outside reaches nothing on 192.168.250.1:8086 yet" bash -c "$(declare -f fetch in_out); T_OUT=$T_OUT; fetch 8086 | grep -q fwd-ok"
check_output "net update add forward" 'forwards \(1 rule added, 0 removed\)' \
    qn net update nu add forward --host-port 8086 --guest "$ip1" --guest-port 80
check_output "...the outside reaches the client through it" 'fwd-ok' fetch 8086
fwd_handle() { in_host nft -a list chain inet qvisor-nu prerouting_nat | sed -n "s/.*dport $1 dnat ip to .* # handle \([0-9]*\)$/\1/p"; }
h0=$(fwd_handle 8086)
check "...its rule is in prerouting_nat (handle $h0)" test -n "$h0"
qn net update -q nu add forward --protocol udp --host-port 5353 --guest "$ip1" --guest-port 53
check_output "a second forward adds its rule" 'udp dport 5353 dnat ip to' in_host nft list chain inet qvisor-nu prerouting_nat
qn net update -q nu delete forward --protocol udp --host-port 5353
check_not "...deleting it removes the rule" bash -c "ip netns exec $T_NS nft list chain inet qvisor-nu prerouting_nat | grep -q 'dport 5353'"
check "...and the first forward's rule was never touched (same handle)" test "$(fwd_handle 8086)" = "$h0"
check_error "a forward of a port already forwarded is refused (exit 4)" 4 'forward 8086/tcp is there already' \
    qn net update nu add forward --host-port 8086 --guest "$ip1" --guest-port 81
check_error "a forward to an address outside the network is refused (exit 2)" 2 'forwards\[1\]\.guest: 10\.1\.1\.1 is outside' \
    qn net update nu add forward --host-port 8087 --guest 10.1.1.1 --guest-port 80
check_output "net update delete forward" 'forwards \(0 rules added, 1 removed\)' qn net update nu delete forward --host-port 8086
check_output "...the rule is gone" '^$' fwd_handle 8086
check_not "...and the outside reaches nothing there any more" bash -c "$(declare -f fetch in_out); T_OUT=$T_OUT; fetch 8086 | grep -q fwd-ok"

# ---- net edit through $EDITOR (a terminal from `script`) ----
cat > "$T_ROOT/ed-fwd" <<ED
#!/bin/sh
jq '.forwards += [{"protocol": "tcp", "host_port": 8088, "guest": "$ip1", "guest_port": 80}] | .mtu = 1400' "\$1" > "\$1.new" && mv "\$1.new" "\$1"
ED
cat > "$T_ROOT/ed-bad" <<'ED'
#!/bin/sh
jq '.ipv4.dhcp.start = "10.86.1.5"' "$1" > "$1.new" && mv "$1.new" "$1"
ED
cat > "$T_ROOT/ed-name" <<'ED'
#!/bin/sh
jq '.name = "other"' "$1" > "$1.new" && mv "$1.new" "$1"
ED
chmod +x "$T_ROOT"/ed-*
net_edit_with() {
    local cmd
    cmd=$(printf 'EDITOR=%q ip netns exec %q %q --root %q net edit nu' "$1" "$T_NS" "$QV_BIN" "$T_ROOT")
    script -qec "$cmd" /dev/null < /dev/null | tr -d '\r'
    return "${PIPESTATUS[0]}"
}
kept_text() { grep -o '/tmp/qvisor-net-edit-[A-Za-z0-9]*\.json' <<< "$1" | head -1; }
cp "$T_ROOT/etc/qvisor/networks/nu.json" "$T_ROOT/nu.before"
out=$(net_edit_with "$T_ROOT/ed-bad"); rc=$?
check "a bad net edit is refused (exit 2) with its JSON path" \
    bash -c "[ $rc -eq 2 ] && grep -q 'ipv4.dhcp.start: 10.86.1.5 is outside 10.86.0.0/24' <<< '$out'" 
check "...and changes nothing" cmp -s "$T_ROOT/etc/qvisor/networks/nu.json" "$T_ROOT/nu.before"
kept=$(kept_text "$out")
check "...the edited text is kept for a retry ($kept)" bash -c "[ -n '$kept' ] && grep -q '10.86.1.5' '$kept'"
rm -f "$kept"
out=$(net_edit_with "$T_ROOT/ed-name"); rc=$?
check "net edit cannot rename (exit 2)" bash -c "[ $rc -eq 2 ] && grep -q 'a network keeps its name' <<< '$out'"
rm -f "$(kept_text "$out")"
out=$(net_edit_with "$T_ROOT/ed-fwd"); rc=$?
diag "$out"
check "net edit of a running network: saved" bash -c "[ $rc -eq 0 ] && grep -q '^network nu changed' <<< '$out'"
check "...the new forward applied live" grep -q 'now has it: forwards (1 rule added, 0 removed)' <<< "$out"
check "...and the MTU named as waiting for a restart" grep -q 'from its next start (qvisor net stop nu; qvisor net start nu): mtu' <<< "$out"
check_output "...the outside reaches the client through the edited-in forward" 'fwd-ok' fetch 8088
check "...the definition has both" jq -e '.mtu == 1400 and .forwards[0].host_port == 8088' <<< "$(qn net show nu)"
check_output "an edit from a pipe that changes nothing says so" '^nu: no change$' bash -c "$(declare -f qn); T_NS=$T_NS QV_BIN=$QV_BIN T_ROOT=$T_ROOT; qn net show nu | qn net edit nu"

# ---- a stopped network ----
check_output "net stop nu" "network nu stopped" qn net stop nu
check_error "--live on a stopped network: not running (exit 3)" 3 'network nu is not running' \
    qn net update nu add host --mac 52:54:00:86:00:07 --ip 10.86.0.27 --live
check_output "without --live a stopped network's definition changes" 'to its definition$' \
    qn net update nu add host --mac 52:54:00:86:00:07 --ip 10.86.0.27
check_not "...and nothing claims a running network" bash -c "$(declare -f qn); T_NS=$T_NS QV_BIN=$QV_BIN T_ROOT=$T_ROOT; qn net update nu delete host --mac 52:54:00:86:00:07 | grep -q running"
finish
