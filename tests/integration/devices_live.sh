#!/bin/bash
# timeout: 300
# A running VM resized live and its display: one guest with a balloon (memory.balloon),
# room for a second vCPU (cpu.max 2) and VNC without a password.
#   setmem: refused above memory.size; the guest's own MemTotal shrinks by what the
#           balloon took and grows back; stats (--json, --prometheus) and status show the
#           balloon's actual size
#   setvcpus: refused above cpu.max and below cpu.count; a plugged vCPU comes online in
#           the guest (/sys/devices/system/cpu/online), an unplugged one goes
#   display: vnc://HOST:PORT of the auto port; a VNC client is offered security type 1
#           (none) there (secrets.sh checks type 2, VNC auth, with a password)
. "$(dirname "$0")/../lib.sh"

mem_total() { gsh dv 'grep MemTotal /proc/meminfo' | awk '/^MemTotal:/ {print $2}'; }
cpus_online() { gsh dv 'cat /sys/devices/system/cpu/online' | grep -E '^[0-9][0-9,-]*$'; }
online_is() { [ "$(GSH_TIMEOUT=10 cpus_online)" = "$1" ]; }

define_guest dv "qv_agent=0" --graphics "vnc,listen=127.0.0.1,port=auto"
qv show dv --json | jq '.memory = {"size": "256M", "balloon": true} | .cpu.max = 2' > "$T_ROOT/dv.json"
check "memory.balloon and cpu.max go into the definition" bash -c "'$QV_BIN' --root '$T_ROOT' edit dv < '$T_ROOT/dv.json'"
check_output "...and show keeps them" '"balloon": true' qv show dv
check_output "...cpu.max too" '"max": 2' qv show dv
check_output "...and argv has the balloon and maxcpus" 'virtio-balloon-pci' qv argv dv
check_output "...-smp cpus=1,maxcpus=2" '^cpus=1,maxcpus=2$' qv argv dv
define_guest nog "qv_agent=0"
check_error "display of a VM without graphics: no such display (exit 3)" 3 'nog has no display \(graphics: none' \
    qv display nog
check_error "display of a VM that does not run (exit 4)" 4 'dv is not running' qv display dv
check_error "setmem of a VM that does not run (exit 4)" 4 'dv is not running' qv setmem dv 128M

qv start -q dv || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_log dv 'QVISOR-GUEST: ready' 120
check "...and has loaded its balloon driver" wait_until 60 guest_ok dv 'grep -q "^virtio_balloon " /proc/modules'

# ---- the balloon ----
m0=$(mem_total)
check "the guest's MemTotal is known ($m0 kB)" test -n "$m0"
check_error "setmem above memory.size is refused (exit 2)" 2 'dv: setmem 300M: more than memory.size 256M' \
    qv setmem dv 300M
check_error "setmem of nonsense is refused (exit 2)" 2 'not a size' qv setmem dv lots
check_output "setmem 128M" 'dv: balloon target 128M' qv setmem dv 128M
shrunk() { local m; m=$(mem_total); [ -n "$m" ] && [ "$m" -le $((m0 - 120000)) ]; }
check "...the guest's MemTotal shrinks by the 128M the balloon took" wait_until 90 shrunk
balloon_is() { [ "$(qv stats dv --json | jq '.[0].memory.balloon_actual')" = "$1" ]; }
check "stats --json shows the balloon's actual size, 128M" wait_until 60 balloon_is 134217728
check_output "...and so does --prometheus" '^qvisor_memory_balloon_actual_bytes\{vm="dv"\} 134217728$' \
    qv stats dv --prometheus
check_output "...and status" '"actual": *134217728' qv status dv --json
check_output "setmem back to 256M" 'dv: balloon target 256M' qv setmem dv 256M
grown() { local m; m=$(mem_total); [ -n "$m" ] && [ "$m" -ge $((m0 - 1024)) ]; }
check "...gives the guest its memory back" wait_until 90 grown

# ---- vCPUs ----
check_output "one vCPU online at start" '^0$' cpus_online
check_error "setvcpus above cpu.max is refused (exit 2)" 2 'dv: setvcpus 3: more than cpu.max 2' qv setvcpus dv 3
check_error "setvcpus 0 is refused (exit 2)" 2 'not a vCPU count' qv setvcpus dv 0
check_output "setvcpus 2 plugs one" 'dv: 2 vCPUs \(was 1\)' qv setvcpus dv 2
check "...which comes online in the guest" wait_until 60 online_is 0-1
check_output "...stats counts 2 vCPUs" '^2$' bash -c "'$QV_BIN' --root '$T_ROOT' stats dv --json | jq '.[0].vcpus | length'"
check_output "...status too" '"vcpus": *2' qv status dv --json
check_output "setvcpus 2 again changes nothing" 'already has 2 vCPUs' qv setvcpus dv 2
check_output "setvcpus 1 unplugs it" 'unplugging 1 vCPUs \(2 -> 1\)' qv setvcpus dv 1
check "...the guest releases it (DEVICE_DELETED)" wait_log dv 'vCPU vcpu1 unplugged' 90
check_output "...and has one vCPU online again" '^0$' cpus_online

# ---- display ----
uri=$(qv display dv)
check_output "display prints vnc://127.0.0.1:PORT" '^vnc://127\.0\.0\.1:59[0-9][0-9]$' echo "$uri"
port=${uri##*:}
check_output "...where QEMU listens (query-vnc)" "\"service\": *\"$port\"" qv qmp dv '{"execute": "query-vnc"}'
check_output "...and a VNC client is offered no authentication (type 1)" '^1$' rfb_types 127.0.0.1 "$port"
check_output "display --json" '"display": *[0-9]+' qv display dv --json

qv stop -q dv --timeout 30 || qv kill -q dv
finish
