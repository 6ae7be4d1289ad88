# shellcheck shell=bash disable=SC2034  # (variables used by the scripts that source this)
# bench/lib.sh: what the benchmarks share. Sourced, never run (not executable, so
# bench/run skips it). Set BENCH (the word messages start with) before sourcing.
#
#   say, die                    progress and errors on stderr
#   stats, median, ratio, verdict, fmt, json_list, json_str, kb_of, mib
#   ours, kill_ours             signal only processes whose command line is ours
#   bench_watchdog SECONDS      ends the script (SIGTERM, so its clean-up runs) after
#                               that long, whatever hangs; sets WATCHDOG
#   bench_timing_helper         builds build/bench/lifecycle_helper (CLOCK_MONOTONIC
#                               timing of one command: fork → reaped); sets HELPER
#   netns_kill_all NS           SIGKILL every process in network namespace NS (one the
#                               benchmark created, so every process in it is its own)
#   owner_write DIR, owner_alive DIR
#                               record this script as the owner of its temporary root;
#                               whether that owner still runs (a run killed by -9 left
#                               its root, namespaces and mounts behind)
#   apt_install LOG PKG...      installs Debian packages
#   lv_missing DRIVER...        what of libvirt (daemons, client, connection drivers)
#                               is not installed
#   lv_start DIR [NETNS]        a private libvirtd + virtlogd over directories under
#                               DIR, in a mount namespace of their own (and in network
#                               namespace NETNS when given); sets LV_URI, LV_VERSION
#   lv_stop                     stops them (and everything left in their namespaces)
#   lv_remove_traces            removes the mount points and cgroups libvirt's run made
#   lv_reap_dirs DIR            the mount points a run killed by -9 made
# libvirt's failures go through lv_fail, which sets LV_STATUS and LV_REASON.
: "${BENCH:=bench}"
BENCH_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '%s: %s\n' "$BENCH" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---- statistics and formatting ----
stats() {   # stats VALUE...: "median p90" (nearest rank), or "null null"
    [ $# -eq 0 ] && { echo "null null"; return; }
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1}
        END {m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
             k = int(0.9 * NR); if (k < 0.9 * NR) k++; if (k < 1) k = 1
             printf "%.1f %.1f\n", m, v[k]}'
}
median() { stats "$@" | cut -d' ' -f1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "null" || b == "null" || a == "" || b == "" || b + 0 == 0) print "null"; else printf "%.2f\n", a / b}'; }
# verdict VALUE LIMIT [min]: PASS when VALUE <= LIMIT (>= with "min"), n/a for null
verdict() {
    awk -v v="$1" -v lim="$2" -v dir="${3:-max}" 'BEGIN {
        if (v == "null" || v == "") print "n/a"
        else if (dir == "min") print (v + 0 >= lim + 0 ? "PASS" : "MISS")
        else print (v + 0 <= lim + 0 ? "PASS" : "MISS")}'
}
fmt() { [ "$1" = null ] || [ -z "$1" ] && echo "-" || echo "$1"; }
json_list() { local IFS=,; echo "[$*]"; }
json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "${s//$'\n'/ }"; }
kb_of() { awk -v k="$2" '$1 == k":" {print $2; exit}' "/proc/$1/status" 2>/dev/null; }
mib() { awk -v k="$1" 'BEGIN {if (k == "" || k == "null") print "null"; else printf "%.2f\n", k / 1024}'; }

# ---- processes ----
ours() {    # ours PID WORD: PID is alive and its command line names WORD
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}
kill_ours() {   # kill_ours WORD PID...: SIGKILL each PID that is still ours, and wait for it
    local word=$1 p
    shift
    for p in "$@"; do
        ours "$p" "$word" || continue
        kill -KILL "$p" 2>/dev/null
        for _ in $(seq 50); do [ -d "/proc/$p" ] || break; sleep 0.1; done
    done
}
netns_kill_all() {  # netns_kill_all NS: every process in our namespace NS, by pid
    local p pids
    [ -e "/run/netns/$1" ] || return 0
    pids=$(ip netns pids "$1" 2>/dev/null)
    [ -n "$pids" ] || return 0
    for p in $pids; do kill -KILL "$p" 2>/dev/null; done
    for _ in $(seq 50); do
        [ -z "$(ip netns pids "$1" 2>/dev/null)" ] && return 0
        sleep 0.1
    done
}

owner_write() { echo "$$ $(awk '{print $22}' "/proc/$$/stat")" > "$1/owner"; }
owner_alive() {
    local pid start
    read -r pid start < "$1/owner" 2>/dev/null || return 1
    [ -n "$pid" ] && [ "$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null)" = "$start" ]
}

WATCHDOG=
bench_watchdog() {  # bench_watchdog SECONDS: SIGTERM to this script after that long
    local me=$$ start
    start=$(awk '{print $22}' "/proc/$$/stat")
    (
        trap 'kill $sl 2>/dev/null; exit 0' TERM
        sleep "$1" &
        sl=$!
        wait $sl
        # only if the script still runs (killed by -9, its pid may have been reused)
        [ "$(awk '{print $22}' "/proc/$me/stat" 2>/dev/null)" = "$start" ] && kill -TERM "$me" 2>/dev/null
    ) &
    WATCHDOG=$!
}

HELPER=$BENCH_TOP/build/bench/lifecycle_helper
bench_timing_helper() {
    if [ ! -x "$HELPER" ] || [ "$HELPER" -ot "$BENCH_TOP/bench/lifecycle_helper.c" ]; then
        mkdir -p "$(dirname "$HELPER")"
        cc -std=c17 -O2 -Wall -Wextra -Werror -o "$HELPER" "$BENCH_TOP/bench/lifecycle_helper.c" ||
            die "cannot build $HELPER"
    fi
}

apt_install() {     # apt_install LOG PKG...
    local log=$1
    shift
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends "$@" > "$log" 2>&1
}

# ---- libvirt, privately ----
LV_STATUS=skipped
LV_REASON=""
LV_VERSION=null
LV_DIR='' LV_NETNS='' LV_HOLDER='' LV_LOGD='' LV_D='' LV_URI=''
LV_CREATED_DIRS=()
LV_CREATED_CGROUPS=()
lv_fail() { LV_STATUS=unavailable; LV_REASON=$*; say "libvirt: $*"; return 1; }

lv_missing() {  # lv_missing DRIVER...: prints what is missing, nothing when all is there
    local c d out=""
    for c in libvirtd virsh virtlogd; do command -v "$c" >/dev/null || out+="$c "; done
    for d in "$@"; do
        compgen -G "/usr/lib/*/libvirt/connection-driver/libvirt_driver_$d.so" >/dev/null ||
            out+="libvirt_driver_$d.so "
    done
    printf '%s' "${out% }"
}

# lv_start DIR [NETNS]: libvirtd and virtlogd in a mount namespace of their own whose
# /etc/libvirt, /run/libvirt, /var/{lib,log,cache}/libvirt are DIR/{etc,run,lib,log,
# cache}, so a host's own libvirt is never touched; with NETNS (a namespace the caller
# made with `ip netns add`) also in that network namespace, with its own sysfs, so that
# the bridges, firewall rules and dnsmasq of libvirt's network driver live there.
# Debian's `libvirt-qemu` user exists only in that namespace when the host lacks it,
# and /dev/kvm is replaced by a node that user may open: otherwise libvirt 9.0 rejects
# its QEMU capabilities cache on every start.
lv_start() {
    LV_DIR=$1
    LV_NETNS=${2:-}
    command -v unshare >/dev/null && command -v nsenter >/dev/null || { lv_fail "needs unshare and nsenter"; return 1; }
    LV_VERSION=$(libvirtd --version | awk '{print $NF}')
    local L=$LV_DIR d
    mkdir -p "$L"/{etc,run,lib,log,cache}
    chmod 755 "$L" "$L"/*
    cat > "$L/etc/libvirtd.conf" <<EOF
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
EOF
    : > "$L/etc/qemu.conf"
    local mounts=""
    if ! getent passwd libvirt-qemu >/dev/null; then
        cp /etc/passwd "$L/passwd"
        cp /etc/group "$L/group"
        echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin' >> "$L/passwd"
        getent group libvirt-qemu >/dev/null || echo 'libvirt-qemu:x:64055:' >> "$L/group"
        mounts+="mount --bind $L/passwd /etc/passwd && mount --bind $L/group /etc/group && "
    fi
    if [ -c /dev/kvm ]; then
        local qgid
        qgid=$(getent group libvirt-qemu | cut -d: -f3)
        qgid=${qgid:-64055}
        if mknod "$L/kvm" c 10 232 2>/dev/null && chown "root:$qgid" "$L/kvm" && chmod 660 "$L/kvm"; then
            mounts+="mount --bind $L/kvm /dev/kvm && "
        else
            printf 'user = "root"\ngroup = "root"\n' > "$L/etc/qemu.conf"
        fi
    fi
    for d in /etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt; do
        if [ ! -d "$d" ]; then
            mkdir -p "$d" || { lv_fail "cannot create the mount point $d"; return 1; }
            LV_CREATED_DIRS+=("$d")
            echo "$d" >> "$L/created-dirs"     # for lv_reap_dirs after a kill -9
        fi
    done
    # libvirt makes a cgroup partition "machine" for domains; removed at the end when
    # this run made it
    for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        [ -d "$d" ] && [ ! -d "${d}machine" ] && LV_CREATED_CGROUPS+=("${d}machine")
    done
    mounts+="mount --bind $L/etc /etc/libvirt && mount --bind $L/run /run/libvirt && "
    mounts+="mount --bind $L/lib /var/lib/libvirt && mount --bind $L/log /var/log/libvirt && "
    mounts+="mount --bind $L/cache /var/cache/libvirt && touch $L/ns-ready"
    local ns_flags=-m
    if [ -n "$LV_NETNS" ]; then
        # `ip netns exec` enters the namespace and remounts /sys for it; it execs the
        # rest, so $! stays the holder's pid
        ip netns exec "$LV_NETNS" unshare -m --propagation private \
            bash -c "ip link set lo up && $mounts && exec sleep 100000" > "$L/holder.log" 2>&1 &
        ns_flags="-m -n"
    else
        unshare -m --propagation private bash -c "$mounts && exec sleep 100000" > "$L/holder.log" 2>&1 &
    fi
    LV_HOLDER=$!
    for _ in $(seq 100); do [ -e "$L/ns-ready" ] || ! [ -d "/proc/$LV_HOLDER" ] && break; sleep 0.05; done
    [ -e "$L/ns-ready" ] || { lv_fail "no private namespace: $(cat "$L/holder.log")"; return 1; }
    # shellcheck disable=SC2086
    nsenter -t "$LV_HOLDER" $ns_flags -- virtlogd > "$L/virtlogd.log" 2>&1 &
    LV_LOGD=$!
    # shellcheck disable=SC2086
    nsenter -t "$LV_HOLDER" $ns_flags -- libvirtd > "$L/libvirtd.log" 2>&1 &
    LV_D=$!
    LV_URI="qemu:///system?socket=$L/run/libvirt-sock"
    for _ in $(seq 150); do
        [ -S "$L/run/libvirt-sock" ] && timeout 5 virsh -q -c "$LV_URI" version >/dev/null 2>&1 && break
        [ -d "/proc/$LV_D" ] || break
        sleep 0.2
    done
    timeout 5 virsh -q -c "$LV_URI" version >/dev/null 2>&1 ||
        { lv_fail "libvirtd did not come up: $(grep -v 'DBus\|dmidecode\|DMI\|/dev/mem\|^$' "$L/libvirtd.log" | tail -n 2 | tr '\n' ' ')"; return 1; }
    return 0
}

lv_stop() {
    local p
    for p in $LV_D $LV_LOGD $LV_HOLDER; do
        [ -d "/proc/$p" ] && kill -TERM "$p" 2>/dev/null
    done
    for p in $LV_D $LV_LOGD $LV_HOLDER; do
        timeout 10 tail --pid="$p" -f /dev/null 2>/dev/null || kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    LV_D='' LV_LOGD='' LV_HOLDER=''
    # what libvirt started in its network namespace (dnsmasq daemonises)
    [ -n "$LV_NETNS" ] && netns_kill_all "$LV_NETNS"
    return 0
}

# lv_reap_dirs DIR: the mount points that a run killed by -9 made (DIR was its lv_start
# DIR), when no libvirtd runs any more that could be using them
lv_reap_dirs() {
    local d
    [ -s "$1/created-dirs" ] || return 0
    # (zombies aside: pid 1 may take its time to reap what a kill -9 orphaned)
    ps -C libvirtd -o stat= 2>/dev/null | grep -qv '^Z' && return 0
    while read -r d; do
        case $d in /etc/libvirt | /run/libvirt | /var/lib/libvirt | /var/log/libvirt | /var/cache/libvirt) rmdir "$d" 2>/dev/null ;; esac
    done < "$1/created-dirs"
    return 0
}

lv_remove_traces() {
    local d
    for d in "${LV_CREATED_CGROUPS[@]}"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    for d in "${LV_CREATED_DIRS[@]}"; do rmdir "$d" 2>/dev/null; done
    return 0
}
