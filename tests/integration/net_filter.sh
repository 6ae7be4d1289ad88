#!/bin/bash
# timeout: 300
# Named NIC filters: filter define (flags and file) / list / show / undefine, validation
# with JSON paths, built-ins, undefine refused while a NIC uses one, and a running
# VM's NIC getting the filter's rules into its network's nftables bridge table
# (clean-traffic plus the named ports), removed when the VM goes.
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
check_output "filter list has the built-in ones and web" '^web +2 +clean-traffic \+ rules' qn filter list
check "filter list --json" jq -e '[.[].name] == ["clean-traffic", "none", "web"]' <<< "$(qn filter list --json)"
check_output "filter show clean-traffic describes it" 'source MAC|own MAC|MAC and its leased' qn filter show clean-traffic
check_error "filter show of an unknown filter (exit 3)" 3 'no filter named ghost' qn filter show ghost

qn net define -q nf --ipv4 10.88.0.1/24 --dhcp 10.88.0.100,10.88.0.150
qn net start -q nf
G="--memory 192M --kernel $G_KERNEL --initrd $G_INITRD"
qn define -q fv $G --append "$G_APPEND" --nic network=nf,filter=web,mac=52:54:00:88:00:10
check_output "a NIC refers to the filter by name" '"filter": "web"' qn show fv
check_error "filter undefine is refused while a NIC uses it (exit 4)" 4 'filter web is used by fv nics\[0\]' \
    qn filter undefine web
check_error "...and a built-in one cannot go (exit 4)" 4 'filter none is built in' qn filter undefine none
check_output "the VM starts" 'fv started' qn start fv
tap=$(qn ifaddr fv | awk '/^nic0/ {print $5}')
has() { in_host nft get element bridge qvisor-nf "$1" "{ $2 }" > /dev/null 2>&1; }
check "its tap ($tap) is filtered: clean-traffic (its MAC)" has tap_mac "\"$tap\" . 52:54:00:88:00:10"
check "...the out rule: tcp 25 dropped" has deny_out "\"$tap\" . tcp . 25"
check "...the in rule: tcp 80 accepted (and inbound restricted)" has allow_in "\"$tap\" . tcp . 80"
check_not "...nothing else: tcp 26 is not dropped" has deny_out "\"$tap\" . tcp . 26"
qn kill fv > /dev/null
gone() { ! has deny_out "\"$tap\" . tcp . 25" && ! has tap_mac "\"$tap\" . 52:54:00:88:00:10"; }
check "when the VM goes, so do its filter's elements" wait_until 20 gone
qn define -q gv $G --append "$G_APPEND" --nic network=nf,filter=ghost
check_error "a VM whose filter does not exist does not start (exit 3)" 3 'no filter named ghost' qn start gv
qn undefine -q fv
check_output "with its NIC gone, filter undefine works" 'undefined filter web' qn filter undefine web
check_error "...and then web is gone (exit 3)" 3 'no filter named web' qn filter show web
finish
