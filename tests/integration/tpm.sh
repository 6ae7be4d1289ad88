#!/bin/bash
# timeout: 960
# TPM 2.0 ("tpm": {"model": ...}) served by a swtpm the supervisor starts beside QEMU:
# the guest's kernel finds the TPM and it answers a command; QMP shows it; swtpm is
# confined (QEMU's uid, no capabilities, no_new_privs, seccomp, its own mount and
# network namespaces) and keeps its state in var/lib/qvisor/tpm/VM (0700, that uid's),
# made at the first start by swtpm_setup with EK and platform certificates in NV RAM
# (signed by the local CA in var/lib/qvisor/tpm-ca, root's);
# it outlives a killed supervisor, which the next one takes over; stop, and QEMU killed
# with its supervisor, leave no swtpm and keep the state; undefine removes the state
# unless --keep-tpm. A UEFI guest (OVMF) finds the default tpm-crb through ACPI, with the
# firmware's event log and extended PCRs. Host devices that do not exist fail the start
# naming the device.
. "$(dirname "$0")/../lib.sh"

def_set() { qv show "$1" | jq "$2" | qv edit "$1" > /dev/null; }
tpm_pid() { qv status tp --json | jq -r '.tpm.pid // empty'; }
status_field() { grep "^$2:" "/proc/$1/status" | cut -f2; }
ns_of() { readlink "/proc/$1/ns/$2"; }
alive() { kill -0 "$1" 2>/dev/null; }
gone() { ! kill -0 "$1" 2>/dev/null; }
no_swtpm() { ! pgrep -f -- "dir=$T_ROOT/var/lib/qvisor/tpm/" > /dev/null; }
state=$T_ROOT/var/lib/qvisor/tpm/tp
# TPM2_GetRandom(8) written to /dev/tpm0; the reply's header: tag 8001, size 20, rc 0
# (in a subshell: /dev/tpm0 is exclusive, and the shell must not keep it open)
getrandom='(exec 3<>/dev/tpm0 && printf "\200\001\000\000\000\014\000\000\001\173\000\010" >&3 && dd bs=64 count=1 <&3 2>/dev/null | od -An -tx1 | head -1)'
tpm_answers() { gsh tp "$getrandom" | grep -q '80 01 00 00 00 14 00 00 00 00'; }
# TPM2_NV_ReadPublic(INDEX, as 4 octal bytes): rc 0 (header 80 01, size, 00 00 00 00) when
# the NV index exists; TPM_RC_HANDLE (0x18b) when not
nv_public() {
    gsh tp "(exec 3<>/dev/tpm0 && printf \"\\200\\001\\000\\000\\000\\016\\000\\000\\001\\151$1\" >&3 && dd bs=1024 count=1 <&3 2>/dev/null | od -An -tx1 | head -1)"
}
nv_exists() { nv_public "$1" | grep -Eq '80 01 00 00 00 [0-9a-f]{2} 00 00 00 00'; }

# ---- the definition ----
define_guest tp "qv_agent=0"
check_error "a TPM on microvm is refused with the JSON path" 2 \
    'tpm: a TPM needs the ACPI tables of a pc or q35 machine, and microvm has none' \
    def_set tp '.machine = "microvm" | .nics = [] | .tpm = {"model": "tpm-crb"}'
check_error "an unknown TPM model is refused with what is allowed" 2 \
    'tpm\.model: "tpm-spi" is not one of tpm-crb, tpm-tis' def_set tp '.tpm = {"model": "tpm-spi"}'
check "...and neither changed the definition" sh -c "! jq -e .tpm '$T_ROOT/etc/qvisor/vms/tp.json'"
check "a TPM with no model is a tpm-crb" def_set tp '.tpm = {}'
check "...which show prints" sh -c "'$QV_BIN' --root '$T_ROOT' show tp | jq -e '.tpm == {\"model\": \"tpm-crb\"}'"

# ---- the guest's TPM ----
# A tpm-tis, found by the guest's tpm_tis.force=1 rather than through ACPI: with direct
# kernel boot QEMU 7.2 loads the initrd over the top 32 KiB of the ACPI tables once the
# TPM's event log makes them larger than its estimate (README), which firmware boots
# from a disk do not meet. acpi=off: the guest must not parse what the initrd's last
# bytes left there (their content differs from build to build; a CI run's guest never
# came up). The tpm-crb default is the oracle's (query-tpm).
check "a tpm-tis is accepted" def_set tp '.tpm = {"model": "tpm-tis"} | .boot.cmdline += " tpm_tis.force=1 tpm_tis.interrupts=0 acpi=off"'
qv start -q tp || { not_ok "the VM with a TPM starts"; diag "$(vm_log tp | tail -20)"; finish; }
check "the start warns that the initrd overwrites the ACPI tables" log_has tp "warning: tpm: QEMU loads the initrd of a direct kernel boot over the top of the ACPI tables"
if wait_until 150 guest_ok tp true; then ok "the guest boots"
else not_ok "the guest boots"; diag "$(vm_log tp | tail -40)"; finish; fi
check "the guest's kernel found a TPM 2.0" guest_ok tp 'test -c /dev/tpm0 && test "$(cat /sys/class/tpm/tpm0/tpm_version_major)" = 2'
check "...and it answers TPM2_GetRandom" tpm_answers
# the first start manufactured it with swtpm_setup: certificates in NV RAM, signed by the
# root-only local CA under var/lib/qvisor/tpm-ca
check "the first start ran swtpm_setup, which made the certificates" \
    log_has tp "tpm: EK and platform certificates are in the TPM's NV RAM"
check "the guest's TPM has the RSA EK certificate's NV index 0x01c00002" nv_exists '\001\300\000\002'
check "...the ECC EK certificate's 0x01c00016" nv_exists '\001\300\000\026'
check "...and the platform certificate's 0x01c08000" nv_exists '\001\300\200\000'
check_output "...while an index nobody wrote (0x01c00003) is TPM_RC_HANDLE" '80 01 00 00 00 0a 00 00 01 8b' \
    nv_public '\001\300\000\003'
ca=$T_ROOT/var/lib/qvisor/tpm-ca
check "the local CA is in var/lib/qvisor/tpm-ca, root's and 0700, with its signing key" \
    sh -c "test \"\$(stat -c '%a %u' '$ca')\" = '700 0' && test -s '$ca/signkey.pem' && test -s '$ca/issuercert.pem'"
check "QMP's query-tpm shows a tpm-tis on the emulator backend" sh -c \
    "'$QV_BIN' --root '$T_ROOT' qmp tp '{\"execute\": \"query-tpm\"}' | jq -e '. == [{\"model\": \"tpm-tis\", \"id\": \"tpm-tpm0\", \"options\": {\"type\": \"emulator\", \"data\": {\"chardev\": \"chrtpm\"}}}]'"

# ---- swtpm's confinement and state ----
t0=$(tpm_pid)
q0=$(vm_pid tp)
check "status names swtpm's pid and its state directory" \
    sh -c "test -n '$t0' && '$QV_BIN' --root '$T_ROOT' status tp --json | jq -e --arg s '$state' '.tpm.state == \$s and .tpm.model == \"tpm-tis\"'"
check "swtpm runs as QEMU's uid and gid, not root" \
    test "$(status_field "$t0" Uid | cut -f1)/$(status_field "$t0" Gid | cut -f1)" = "$(status_field "$q0" Uid | cut -f1)/$(status_field "$q0" Gid | cut -f1)" -a "$(status_field "$t0" Uid | cut -f1)" != 0
check "...with no capabilities (effective, permitted, bounding), no_new_privs and a seccomp filter" \
    test "$(status_field "$t0" CapEff)/$(status_field "$t0" CapPrm)/$(status_field "$t0" CapBnd)/$(status_field "$t0" NoNewPrivs)/$(status_field "$t0" Seccomp)" = 0000000000000000/0000000000000000/0000000000000000/1/2
check "...a mount namespace of its own" test "$(ns_of "$t0" mnt)" != "$(ns_of $$ mnt)"
check "...and an empty network namespace" test "$(ns_of "$t0" net)" != "$(ns_of $$ net)"
check "...in which /root of the host is not there" test ! -e "/proc/$t0/root$T_ROOT/etc/qvisor"
check "the state directory is 0700 and swtpm's uid's" \
    test "$(stat -c '%a %u' "$state")" = "700 $(status_field "$t0" Uid | cut -f1)"
check "...and holds the TPM's state" test -s "$state/tpm2-00.permall"

# ---- the supervisor dies: the TPM lives on and is taken over ----
spid=$(sup_pid tp)
kill -9 "$spid"
check "kill -9 of the supervisor: it is gone" wait_until 10 gone "$spid"
check "...swtpm outlives it, as QEMU does" alive "$t0"
check_output "start again reattaches" "tp started" qv start tp
check "...the new supervisor took over the same swtpm" test "$(tpm_pid)" = "$t0"
check "...and says so in the log" log_has tp "swtpm \\(pid $t0\\) still serves the guest's TPM"
check "...the guest's TPM still answers" tpm_answers

# ---- stop keeps the state and leaves no swtpm; so does kill -9 of both ----
check "stop" qv stop tp --timeout 20
check "...leaves no swtpm" wait_until 10 gone "$t0"
check "...and none in the state file" sh -c "! jq -e '.resources.swtpm' '$T_ROOT/run/qvisor/vms/tp/state.json'"
check "...the TPM state stays" test -s "$state/tpm2-00.permall"
qv start -q tp || not_ok "the VM starts again"
t1=$(tpm_pid)
check "it runs with a new swtpm on the same state" sh -c "test -n '$t1' && test '$t1' != '$t0' && kill -0 '$t1'"
check "...and its TPM answers" wait_until 90 tpm_answers
kill -9 "$(sup_pid tp)" "$(vm_pid tp)"
check "kill -9 of QEMU and its supervisor: no swtpm is left" wait_until 10 no_swtpm
check "...the state stays" test -s "$state/tpm2-00.permall"

# ---- UEFI: OVMF finds the default tpm-crb through ACPI and measures the boot ----
# One boot through OVMF, which loads the bzImage (its EFI stub) that -kernel names: the
# guest's kernel finds the tpm-crb in the ACPI tables (nothing forced on its command line),
# reads the firmware's event log from the EFI configuration table, and the PCRs OVMF
# extended are not all zero.
uefi_log='/sys/kernel/security/tpm0/binary_bios_measurements'
if [ -s "$T_BUILD/guest/vmlinuz" ]; then
    define_guest tu "qv_agent=0"
    check "a UEFI guest with the default TPM is defined" \
        def_set tu ".boot.firmware = \"uefi\" | .boot.kernel = \"$T_BUILD/guest/vmlinuz\" | .tpm = {}"
    if qv start -q tu; then
        check "the UEFI guest boots" wait_until 180 guest_ok tu true
        check "...through UEFI" guest_ok tu 'test -d /sys/firmware/efi'
        check "its kernel found a TPM 2.0 through ACPI, driven by tpm_crb" guest_ok tu \
            'test "$(cat /sys/class/tpm/tpm0/tpm_version_major)" = 2 && test "$(basename "$(readlink /sys/class/tpm/tpm0/device/driver)")" = tpm_crb'
        check "the firmware's TCG2 event log is there (securityfs), not empty, in the crypto-agile format" guest_ok tu \
            "mount -t securityfs securityfs /sys/kernel/security 2>/dev/null; test \"\$(head -c 4096 $uefi_log | wc -c)\" -gt 100 && head -c 200 $uefi_log | grep -q 'Spec ID Event03'"
        check "OVMF extended PCR 0 (sha256): not all zeros" guest_ok tu \
            'p=$(cat /sys/class/tpm/tpm0/pcr-sha256/0) && echo "pcr0 $p" && test -n "$p" && ! echo "$p" | grep -qx "0*"'
        check "QMP's query-tpm shows the tpm-crb" sh -c \
            "'$QV_BIN' --root '$T_ROOT' qmp tu '{\"execute\": \"query-tpm\"}' | jq -e '.[0].model == \"tpm-crb\"'"
        qv kill tu > /dev/null
    else
        not_ok "the UEFI VM with a TPM starts"; diag "$(vm_log tu | tail -20)"
    fi
else
    not_ok "the test guest has its bzImage (build/guest/vmlinuz, from tests/guest/build)"
fi

# ---- host devices that do not exist: the start fails naming them ----
define_guest hd "qv_agent=0"
def_set hd '.hostdevs = [{"type": "pci", "address": "0000:7f:1f.7"}]'
check_error "a PCI host device that is not there fails the start, naming it" 1 \
    'hd: hostdevs\[0\]: pci 0000:7f:1f\.7: no such PCI device on this host \(lspci -D lists them\)' qv start hd
def_set hd '.hostdevs = [{"type": "usb", "vendor": "0x1d6b", "product": "0xfffe"}]'
check_error "...so does a USB one by vendor:product" 1 \
    'hd: hostdevs\[0\]: usb 1d6b:fffe: no such USB device on this host \(lsusb lists them\)' qv start hd
def_set hd '.hostdevs = [{"type": "usb", "bus": 250, "device": 99}]'
check_error "...and one by bus and device" 1 \
    'hd: hostdevs\[0\]: usb bus 250 device 99: no such USB device on this host \(/dev/bus/usb/250/099 is missing; lsusb lists them\)' qv start hd
check "...and no QEMU ran for it" sh -c "! pgrep -f -- 'guest=h[d],' > /dev/null"

# ---- host-check explains what PCI passthrough needs, from what sysfs says ----
groups=$(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l)
check_output "host-check counts the IOMMU groups sysfs lists ($groups)" "iommu +$groups IOMMU groups" qv host-check
if [ -d /sys/bus/pci/drivers/vfio-pci ]; then
    check_output "...and says vfio-pci is loaded" "vfio-pci +loaded" qv host-check
else
    check_output "...and says vfio-pci is not loaded, with the fix" "vfio-pci +not loaded \\(modprobe vfio-pci\\)" qv host-check
fi

# ---- undefine ----
check_output "undefine --keep-tpm keeps the TPM state" "undefined tp" qv undefine tp --keep-tpm
check "...which is still there" test -s "$state/tpm2-00.permall"
define_guest tp "qv_agent=0"
check_output "undefine removes the state of a VM of that name" "removed its TPM state $state" qv undefine tp
check "...which is gone" test ! -e "$state"
finish
