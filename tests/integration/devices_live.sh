#!/bin/bash
# timeout: 300
# A running VM resized live and its display: one guest with a balloon (memory.balloon),
# room for a second vCPU (cpu.max 2) and VNC without a password.
#   setmem: refused above memory.size; the guest's own MemTotal shrinks by what the
#           balloon took and grows back; stats (--json, --prometheus) and status show the
#           balloon's actual size; a save records the target and the restore sets it again
#   setvcpus: refused above cpu.max and below cpu.count; a plugged vCPU comes online in
#           the guest (/sys/devices/system/cpu/online); an unplug is refused under TCG
#           (QEMU 7.2 would crash at the next PCI hotplug); --config changes the
#           definition's cpu.count (checked, atomically)
#   attach-device/detach-device: host devices the host lacks are refused by name, live
#           and with --persistent (which then changes nothing); --config and
#           --persistent change the definition; QEMU takes the device_add arguments
#   stats: a supervisor that answers an error (QEMU stopped) makes stats exit with it
#   display: vnc://HOST:PORT of the auto port; a VNC client is offered security type 1
#           (none) there (secrets.sh checks type 2, VNC auth, with a password)
. "$(dirname "$0")/../lib.sh"

mem_total() { gsh dv 'grep MemTotal /proc/meminfo' | awk '/^MemTotal:/ {print $2}'; }
cpus_online() { gsh dv 'cat /sys/devices/system/cpu/online' | grep -E '^[0-9][0-9,-]*$'; }
online_is() { [ "$(GSH_TIMEOUT=10 cpus_online)" = "$1" ]; }

define_guest dv "qv_agent=0" --graphics "vnc,listen=127.0.0.1,port=auto"
qv show dv --json | jq '.memory = {"size": "256M", "balloon": true} | .cpu.max = 2 | .graphics.tablet = true' > "$T_ROOT/dv.json"
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
# the definition's side of detach-disk/detach-nic --persistent, on a VM that does not run
truncate -s 1M "$T_ROOT/d1.img"
nog_disks() { jq '.disks // [] | length' "$T_ROOT/etc/qvisor/vms/nog.json"; }
check_output "attach-disk --persistent of a VM that does not run changes its definition" '^disk attached \(and defined\)$' \
    qv attach-disk nog "$T_ROOT/d1.img" --persistent
check_output "...which has the disk" '^1$' nog_disks
check_error "detach-disk --persistent of a disk the definition lacks is refused, naming it (exit 3)" 3 \
    '^qvisor: nog: the definition has no disk with file /srv/none\.img$' qv detach-disk nog /srv/none.img --persistent
check_error "...so is detach-nic of a MAC it lacks" 3 \
    '^qvisor: nog: the definition has no NIC with mac 52:54:00:00:00:99$' qv detach-nic nog --mac 52:54:00:00:00:99 --persistent
check_output "detach-disk --persistent removes the disk it has" "^disk $T_ROOT/d1\\.img detached from the definition\$" \
    qv detach-disk nog "$T_ROOT/d1.img" --persistent
check_output "...which has no disk again" '^0$' nog_disks

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
# a save keeps setmem's target: QEMU's stream has the balloon's state, qvisor's header the target
check_output "save with the balloon at 128M" "dv saved to $T_ROOT/dv.save" qv save dv "$T_ROOT/dv.save"
check "...the file's header records the balloon target" \
    sh -c "sed -n '2{p;q}' '$T_ROOT/dv.save' | jq -e '.balloon_target == 134217728' > /dev/null"
check_output "restore" 'dv restored from' qv restore "$T_ROOT/dv.save"
target_is() { [ "$(qv status dv --json | jq '.balloon.target')" = "$1" ]; }
check "...status shows the balloon target 128M again" wait_until 30 target_is 134217728
check "...and the guest's MemTotal is still the shrunk one" shrunk
rm -f "$T_ROOT/dv.save"
check_output "setmem back to 256M" 'dv: balloon target 256M' qv setmem dv 256M
grown() { local m; m=$(mem_total); [ -n "$m" ] && [ "$m" -ge $((m0 - 1024)) ]; }
check "...gives the guest its memory back" wait_until 90 grown

# ---- vCPUs ----
def_count() { jq '.cpu.count' "$T_ROOT/etc/qvisor/vms/dv.json"; }
check_output "one vCPU online at start" '^0$' cpus_online
check_error "setvcpus above cpu.max is refused (exit 2)" 2 'dv: setvcpus 3: more than cpu.max 2' qv setvcpus dv 3
check_error "setvcpus 0 is refused (exit 2)" 2 'not a vCPU count' qv setvcpus dv 0
check_error "setvcpus 3 --config: more than cpu.max is refused with the JSON path (exit 2)" 2 \
    'dv: setvcpus 3 --config: cpu\.max: 2 is less than count 3' qv setvcpus dv 3 --config
check_output "...and the definition keeps 1 vCPU" '^1$' def_count
check_output "setvcpus 2 --config changes only the definition" 'dv: 2 vCPUs from its next start' qv setvcpus dv 2 --config
check_output "...which now has count 2" '^2$' def_count
check_output "...so the next start gets 2 vCPUs" '^cpus=2(,|$)' qv argv dv
check_output "...while the running guest keeps 1" '"vcpus": *1' qv status dv --json
check_output "setvcpus 1 --config puts it back" 'dv: 1 vCPUs from its next start' qv setvcpus dv 1 --config
check_output "...the definition has count 1 again" '^1$' def_count
check_output "setvcpus 2 plugs one" 'dv: 2 vCPUs \(was 1\)' qv setvcpus dv 2
check "...which comes online in the guest" wait_until 60 online_is 0-1
check_output "...stats counts 2 vCPUs" '^2$' bash -c "'$QV_BIN' --root '$T_ROOT' stats dv --json | jq '.[0].vcpus | length'"
check_output "...status too" '"vcpus": *2' qv status dv --json
check_output "setvcpus 2 again changes nothing" 'already has 2 vCPUs' qv setvcpus dv 2
# QEMU 7.2 under TCG keeps an unplugged vCPU's memory listener, and the next PCI device_add
# (even one it refuses) then crashes it (SIGSEGV): seen here as a vfio-pci device_add that
# killed QEMU. Under TCG an unplug is refused; KVM (not runnable here) unplugs.
check_error "setvcpus 1 under TCG is refused, saying why (exit 1)" 1 \
    '^qvisor: dv: setvcpus 1: QEMU under TCG cannot unplug vCPUs safely \(the guest.s next PCI hotplug would crash it\)' \
    qv setvcpus dv 1
check "...nothing was unplugged" sh -c "! grep -q 'setvcpus: unplugging' '$T_ROOT/var/log/qvisor/dv.log'"
check_output "...the guest keeps both vCPUs online" '^0-1$' cpus_online

# ---- host devices hotplugged (attach-device, detach-device) ----
# This host has no USB device and no IOMMU: what runs here is the refusal naming the
# device, the definition's side (--config, --persistent), and QEMU taking the usb-host
# arguments attach-device sends (the -device object of golden hostdevs.argv) up to the
# device it cannot have. A vfio-pci device_add of an absent host device (sent to QEMU
# directly: attach-device refuses it before) is refused by the confined QEMU, which runs on.
# (the listing must have worked: it names the balloon)
no_hostdev() {
    local out
    out=$("$QV_BIN" --root "$T_ROOT" qmp dv '{"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}}') &&
        grep -q balloon <<< "$out" && ! grep -q hostdev <<< "$out"
}
def_hostdevs() { jq -c '.hostdevs // []' "$T_ROOT/etc/qvisor/vms/dv.json"; }
printf '{"type": "usb", "vendor": "0x1d6b", "product": "0xfffe"}\n' > "$T_ROOT/usb.json"
printf '{"type": "pci", "address": "1:2"}\n' > "$T_ROOT/badpci.json"
check_error "attach-device of a USB device this host lacks fails, naming it (exit 1)" 1 \
    '^qvisor: dv: attach-device: usb 1d6b:fffe: no such USB device on this host \(lsusb lists them\)$' \
    qv attach-device dv "$T_ROOT/usb.json"
check_error "...so does --usb BUS.DEVICE" 1 \
    '^qvisor: dv: attach-device: usb bus 250 device 99: no such USB device on this host \(/dev/bus/usb/250/099 is missing' \
    qv attach-device dv --usb 250.99
check_error "...and --pci of a PCI address this host lacks" 1 \
    '^qvisor: dv: attach-device: pci 0000:7f:1f\.7: no such PCI device on this host \(lspci -D lists them\)$' \
    qv attach-device dv --pci 7f:1f.7
check_error "a bad device file is refused with its JSON path (exit 2)" 2 \
    'hostdev\.address: "1:2" is not a PCI address' qv attach-device dv "$T_ROOT/badpci.json"
check_error "...--usb of nonsense too" 2 '--usb "mouse" is neither VENDOR:PRODUCT' qv attach-device dv --usb mouse
check_error "--persistent with hardware that is not there fails" 1 'usb 1d6b:fffe: no such USB device' \
    qv attach-device dv --usb 1d6b:fffe --persistent
check_output "...and changes neither the definition" '^\[\]$' def_hostdevs
check "...nor the running VM (no hostdev device in QEMU)" no_hostdev
check_output "--config adds it to the definition only" '^host device usb 1d6b:fffe added to the definition$' \
    qv attach-device dv --usb 1d6b:fffe --config
check_output "...which now names it" '^\[\{"type":"usb","vendor":"0x1d6b","product":"0xfffe"\}\]$' def_hostdevs
check_error "--config of the same device again is refused (exit 2)" 2 \
    'usb 1d6b:fffe is already hostdevs\[0\]: a host device goes to the guest once' \
    qv attach-device dv "$T_ROOT/usb.json" --config
check_error "detach-device of a device that was not hotplugged (exit 3)" 3 \
    'dv: no hotplugged host device usb 1d6b:fffe' qv detach-device dv --usb 1d6b:fffe
check_output "detach-device --persistent removes it from the definition; the running VM had none" \
    '^host device usb 1d6b:fffe removed from the definition \(the running VM keeps it until it stops\)$' \
    qv detach-device dv "$T_ROOT/usb.json" --persistent
check_output "...which has no host device again" '^\[\]$' def_hostdevs
check_error "detach-device --config of a device the definition lacks (exit 3)" 3 \
    'dv: detach-device: the definition has no host device pci 0000:7f:1f\.7' qv detach-device dv --pci 0000:7f:1f.7 --config
qmp_add() { qv qmp dv "{\"execute\": \"device_add\", \"arguments\": $1}"; }
check_error "QEMU takes usb-host on usb0 with hostdevice=/dev/fdset/N, failing only at opening it" 1 \
    'GenericError: failed to open /dev/fdset/1009' \
    qmp_add '{"driver": "usb-host", "id": "hostdev9", "bus": "usb0.0", "hostdevice": "/dev/fdset/1009"}'
q_before=$(vm_pid dv)
check_error "QEMU refuses a vfio-pci device_add of a host device that is absent (its sysfs path), cleanly" 1 \
    'GenericError: vfio /sys/bus/pci/devices/0000:7f:1f\.7: no such host device: No such file or directory' \
    qmp_add '{"driver": "vfio-pci", "id": "hostdev8", "host": "0000:7f:1f.7", "bus": "rp2"}'
same_qemu_runs() {
    [ -n "$q_before" ] && [ "$(vm_pid dv)" = "$q_before" ] && kill -0 "$q_before" &&
        qv qmp dv '{"execute": "query-status"}' | grep -q '"status": *"running"'
}
check "...and the same QEMU runs on and answers its monitor" same_qemu_runs
check "...and the guest's console still answers" guest_ok dv true

# ---- display ----
uri=$(qv display dv)
check_output "display prints vnc://127.0.0.1:PORT" '^vnc://127\.0\.0\.1:59[0-9][0-9]$' echo "$uri"
port=${uri##*:}
check_output "...where QEMU listens (query-vnc)" "\"service\": *\"$port\"" qv qmp dv '{"execute": "query-vnc"}'
check_output "...and a VNC client is offered no authentication (type 1)" '^1$' rfb_types 127.0.0.1 "$port"
check_output "display --json" '"display": *[0-9]+' qv display dv --json

# ---- stats when the supervisor answers an error (QEMU stopped: its monitor times out) ----
qpid=$(vm_pid dv)
kill -STOP "$qpid"
check_error "stats of a VM whose supervisor answers an error exits with that error (5: timed out), naming the VM" 5 \
    '^qvisor: stats: dv: query-blockstats: ' qv stats dv
stats_json_anyway() { qv stats dv --json 2> /dev/null; true; }
check_output "...--json still prints the VM, with the error" '"error": "stats: dv: ' stats_json_anyway
kill -CONT "$qpid"
check "...and stats answers again once QEMU runs" wait_until 60 qv stats dv

qv stop -q dv --timeout 30 || qv kill -q dv
finish
