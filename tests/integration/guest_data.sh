#!/bin/bash
# timeout: 300
# What a VM gets beside its devices: a cloud-init NoCloud seed (a read-only cdrom
# labelled cidata holding user-data and meta-data, built by the supervisor at each
# start) and systemd credentials (SMBIOS type 11, as systemd-vmspawn passes them),
# whose values never show on QEMU's command line, in state.json, the log, argv or show.
# One guest for every check.
. "$(dirname "$0")/../lib.sh"

secret="inline-$RANDOM$RANDOM-value"
fsecret="from-a-file-$RANDOM$RANDOM"
b64=$(printf '%s' "$secret" | base64 -w0)
fb64=$(printf '%s' "$fsecret" | base64 -w0)
printf '#cloud-config\nhostname: seeded\nruncmd:\n  - echo seeded-%s\n' "$RANDOM" > "$T_ROOT/user-data"
printf '%s' "$fsecret" > "$T_ROOT/cred.txt"
chmod 600 "$T_ROOT/user-data" "$T_ROOT/cred.txt"    # root's alone: the supervisor reads them as root
# lacks_secrets FILE: FILE has something in it, and no value in any form
lacks_secrets() {
    [ -s "$1" ] || { echo "$1 is empty or missing"; return 2; }
    ! grep -aqF -e "$secret" -e "$fsecret" -e "$b64" -e "$fb64" "$1"
}
# output_lacks_secrets CMD...: CMD succeeds, prints something, and no value
output_lacks_secrets() {
    "$@" > "$T_ROOT/cmd.out" 2>&1 || { cat "$T_ROOT/cmd.out"; return 2; }
    lacks_secrets "$T_ROOT/cmd.out"
}

# ---- definitions: errors name the file or the credential, never a value ----
check_error "a missing user-data file is refused, named (exit 2)" 2 \
    "cloud_init.user_data: $T_ROOT/nope: No such file or directory" \
    qv define bad1 --kernel "$G_KERNEL" --cloud-init "$T_ROOT/nope"
check_error "--meta-data alone is refused (exit 2)" 2 "--meta-data is for the seed of --cloud-init" \
    qv define bad2 --kernel "$G_KERNEL" --meta-data "$T_ROOT/user-data"
check_error "a missing credential file is refused, named (exit 2)" 2 \
    "credentials\[0\] \(c1\).file: $T_ROOT/nope: No such file or directory" \
    qv define bad3 --kernel "$G_KERNEL" --credential "c1=@$T_ROOT/nope"
check_error "a bad credential name is refused without its value (exit 2)" 2 \
    '^qvisor: credentials\[0\].name: "a/b" is not a credential name' \
    qv define bad4 --kernel "$G_KERNEL" --credential "a/b=$secret"
check "...the message does not hold the value" output_lacks_secrets bash -c \
    "'$QV_BIN' --root '$T_ROOT' define bad4 --kernel '$G_KERNEL' --credential 'a/b=$secret'; true"
check "...nothing was defined" test -z "$(ls "$T_ROOT/etc/qvisor/vms/" 2>/dev/null)"

define_guest gd "qv_agent=0" --cloud-init "$T_ROOT/user-data" --credential "api.token=$secret" \
    --credential "db.pass=@$T_ROOT/cred.txt"
def=$T_ROOT/etc/qvisor/vms/gd.json
check "the definition holding a value is root's alone (0600)" test "$(stat -c %a:%u "$def")" = 600:0
check_output "...and holds the value itself (it is the store)" "\"value\": \"$secret\"" cat "$def"
check_output "show names the credentials (and a file), and the seed" \
    "^api.token,db.pass=$T_ROOT/cred.txt $T_ROOT/user-data\$" \
    bash -c "'$QV_BIN' --root '$T_ROOT' show gd | jq -r '(.credentials | map(.name + (if .file then \"=\" + .file else \"\" end)) | join(\",\")) + \" \" + .cloud_init.user_data'"
check "...but never a value" output_lacks_secrets qv show gd
check "define --print never prints a value" output_lacks_secrets qv define gd2 --print --kernel "$G_KERNEL" \
    --credential "x=$secret"
check_output "argv passes each credential as an inherited fd" \
    '^type=11,path=/proc/self/fd/[0-9]+$' qv argv gd
check "...and never a value" output_lacks_secrets qv argv gd

check_output "the VM starts" "gd started" qv start gd
check "the guest boots" wait_log gd 'QVISOR-GUEST: ready' 120
qpid=$(vm_pid gd)
run=$T_ROOT/run/qvisor/vms/gd

# ---- the seed: isoinfo (genisoimage's own reader) on the fd QEMU holds ----
iso_fd=$(ls -l "/proc/$qpid/fd" 2>/dev/null | awk '/cidata\.iso/ {print $9; exit}')
iso=/proc/$qpid/fd/$iso_fd
check "QEMU holds the seed open" test -n "$iso_fd"
check_output "...its volume label is cidata" '^Volume id: cidata$' isoinfo -d -i "$iso"
check "...its user-data is the file's" cmp <(isoinfo -R -i "$iso" -x /user-data) "$T_ROOT/user-data"
uuid=$(json_field "$(qv show gd)" uuid)
check "...its meta-data names the instance and the host" cmp <(isoinfo -R -i "$iso" -x /meta-data) \
    <(printf 'instance-id: %s\nlocal-hostname: gd\n' "$uuid")
check "...and nothing of it stays in the run directory" test ! -e "$run/cidata.iso" -a ! -e "$run/cidata"

# ---- the seed as the guest sees it: a cdrom labelled cidata, mounted ----
umd5=$(md5sum < "$T_ROOT/user-data" | cut -d' ' -f1)
# the ISO 9660 volume label is at byte 32808 (busybox has no blkid)
find_seed='for d in /dev/sr*; do [ "$(dd if=$d bs=1 skip=32808 count=6 2>/dev/null)" = cidata ] && echo "$d: label cidata"; done'
check_output "the guest finds a cdrom labelled cidata" '^/dev/sr[0-9]+: label cidata' gsh gd "$find_seed"
check_output "...and mounts it read-only (isofs)" 'END-42-0-END-42' gsh gd \
    "qv-modprobe isofs && mkdir -p /seed && mount -t iso9660 -o ro \$( ($find_seed) | cut -d: -f1) /seed"
check_output "...its user-data is the host's" "^$umd5" gsh gd 'md5sum /seed/user-data'
check_output "...its meta-data names the instance and the host" "^instance-id: $uuid" gsh gd 'cat /seed/meta-data'
check_output "..." "^local-hostname: gd" gsh gd 'cat /seed/meta-data' 

# ---- the credentials as the guest sees them: SMBIOS type 11 strings ----
smd5=$(printf '%s' "$secret" | md5sum | cut -d' ' -f1)
fmd5=$(printf '%s' "$fsecret" | md5sum | cut -d' ' -f1)
# decoded in the guest and compared by digest: the value itself never crosses the console
cred_md5() {
    gsh gd "cat /sys/firmware/dmi/entries/11-*/raw | tr '\\0' '\\n' | sed -n 's/.*io[.]systemd[.]credential[.]binary:$1=//p' | base64 -d | md5sum"
}
check_output "the guest reads the inline credential from SMBIOS type 11" "^$smd5" cred_md5 api.token
check_output "...and the one from a file" "^$fmd5" cred_md5 db.pass

# ---- no value anywhere outside the guest ----
tr '\0' ' ' < "/proc/${qpid:-none}/cmdline" > "$T_ROOT/cmdline"
check_output "QEMU's command line names each credential's fd" '-smbios type=11,path=/proc/self/fd/[0-9]+ ' \
    cat "$T_ROOT/cmdline"
check "...and shows no value" lacks_secrets "$T_ROOT/cmdline"
check "...ps neither" output_lacks_secrets ps -ww -o args= -p "$qpid"
check "state.json holds no value" lacks_secrets "$run/state.json"
check "the VM log holds no value" lacks_secrets "$T_ROOT/var/log/qvisor/gd.log"
check "status --json shows no value" output_lacks_secrets qv status gd --json
check_output "the VM stops" "gd stopped" qv stop gd --timeout 30
finish
