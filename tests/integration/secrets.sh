#!/bin/bash
# timeout: 300
# Secrets: define / set-value / list / show / undefine. A value goes in through stdin or
# a file and never comes out: not in list or show, not in QEMU's argv, the state file or
# the logs. A running VM that uses one (a VNC password) keeps it from being undefined.
. "$(dirname "$0")/../lib.sh"

sdir=$T_ROOT/etc/qvisor/secrets
value="qv-secret-$RANDOM$RANDOM-value"

check_output "secret define prints the new uuid" '^defined secret vncpw \([0-9a-f-]{36}\)' \
    qv secret define vncpw --usage vnc:web --description "VNC password"
check "...the directory is 0700, the metadata 0600" \
    bash -c "[ \$(stat -c %a '$sdir') = 700 ] && [ \$(stat -c %a '$sdir/vncpw.json') = 600 ]"
check_error "a second secret with the same usage is refused (exit 4)" 4 "vncpw already has usage vnc:web" \
    qv secret define other --usage vnc:web
check_error "a bad usage is refused (exit 2)" 2 'usage "nonsense" is not TYPE:ID' qv secret define other --usage nonsense
check_error "a name ending in .json is refused (exit 2)" 2 'not a valid secret name' qv secret define x.json
check "...and those refusals created nothing" test "$(ls "$sdir" | grep -v '^\.lock$' | sort | tr '\n' ' ')" = "vncpw.json "
check_error "the value is never taken from the command line (exit 2)" 2 "" qv secret set-value vncpw "$value"
check_error "set-value of an unknown secret (exit 3)" 3 "no secret named nosuch" \
    bash -c "echo x | '$QV_BIN' --root '$T_ROOT' secret set-value nosuch"
check_output "list before a value says none" '^vncpw +[0-9a-f-]{36} +vnc:web +none' qv secret list

# a VM that uses it cannot start while the secret has no value
define_guest sv "qv_agent=0" --graphics "vnc,listen=127.0.0.1,port=auto,password_secret=vncpw"
check_error "start with a secret that has no value names it" 3 "secret vncpw has no value" qv start sv
check "set-value from standard input" bash -c "printf '%s\n' '$value' | '$QV_BIN' --root '$T_ROOT' secret set-value vncpw"
check "...the value file is 0600 and holds the value without its newline" \
    bash -c "[ \$(stat -c %a '$sdir/vncpw') = 600 ] && [ \"\$(cat '$sdir/vncpw')\" = '$value' ]"
check_output "list says set" '^vncpw +[0-9a-f-]{36} +vnc:web +set' qv secret list
check_not "...and never shows the value (list --json, show)" grep -q "$value" <(qv secret list --json; qv secret show vncpw)
chmod 644 "$sdir/vncpw"
check_error "a value file others can read is refused at start" 1 "readable by others \(chmod 600 it\)" qv start sv
chmod 600 "$sdir/vncpw"

check_output "the VM starts with its VNC password" "sv started" qv start sv
check "the guest boots" wait_log sv 'QVISOR-GUEST: ready' 120
uri=$(qv display sv)
check_output "display names the VNC server's auto port" '^vnc://127\.0\.0\.1:59[0-9][0-9]$' echo "$uri"
check_output "...where a client is asked for VNC authentication (security type 2)" '^2$' rfb_types 127.0.0.1 "${uri##*:}"
check_error "setmem of a VM without a balloon says how to add one (exit 3)" 3 \
    'sv has no balloon device \(set "memory": \{"size": "192M", "balloon": true\}' qv setmem sv 100M
check_error "setvcpus of a VM without cpu.max (exit 2)" 2 'sv has no vCPU hotplug: cpu.count is 1 and there is no cpu.max' qv setvcpus sv 2
check_output "show names the running VM as a user" '"sv \(running\)"' qv secret show vncpw
check_error "undefine is refused while the VM runs (exit 4)" 4 "secret vncpw is used by sv \(running\)" \
    qv secret undefine vncpw
check "...and the value is still there" test -s "$sdir/vncpw"
qpid=$(vm_pid sv)
check_not "the value is not in QEMU's argv" grep -aq "$value" "/proc/$qpid/cmdline"
check_not "...nor in QEMU's or the supervisor's environment" \
    grep -aq "$value" "/proc/$qpid/environ" "/proc/$(sup_pid sv)/environ"
check_not "...nor in any file under the root but the secret's own" \
    bash -c "grep -rlaF -- '$value' '$T_ROOT' | grep -vx '$sdir/vncpw'"
check_not "...nor in qvisor argv" grep -q "$value" <(qv argv sv)

qv stop -q sv --timeout 30 || qv kill -q sv
check "undefine once the VM is off" qv secret undefine vncpw
check "...removes the value and the metadata" bash -c "[ ! -e '$sdir/vncpw' ] && [ ! -e '$sdir/vncpw.json' ]"
check_error "...after which show exits 3" 3 "no secret named vncpw" qv secret show vncpw

# a value file written by hand (as before `secret define`) is a secret without usage
printf 'handmade\n' > "$sdir/legacy" && chmod 600 "$sdir/legacy"
check_output "a hand-written value file is listed" '^legacy +- +- +set' qv secret list
check_output "...and can be given a usage" '^updated secret legacy|^defined secret legacy' \
    qv secret define legacy --usage tls:client
check "...keeping its value" test "$(cat "$sdir/legacy")" = handmade
check "set-value --file" bash -c "printf 'fromfile' > '$T_ROOT/v' && '$QV_BIN' --root '$T_ROOT' secret set-value legacy --file '$T_ROOT/v' </dev/null"
check "...replaces the value" test "$(cat "$sdir/legacy")" = fromfile
finish
