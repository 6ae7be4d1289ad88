#!/bin/bash
# timeout: 300
# Hostile input that needs real files: FIFOs, sockets and devices as disk, cdrom,
# kernel and initrd paths must be refused at once (never opened: a FIFO blocks its
# opener until a writer comes, and the definitions lock was held meanwhile); a
# definitions lock held by someone else gives "locked by pid N" after a bounded wait;
# NUL bytes and invalid UTF-8 in a file or on stdin; a FIFO attached to a running VM;
# and a QEMU OOM-killed during start is reported as such.
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
truncate -s 1M "$img/a.raw"
mkfifo "$img/fifo"
# whatever happens, nothing may stay blocked on the FIFO: a writer releases any reader
on_exit "timeout 2 bash -c 'echo > $img/fifo'"

# bounded DESC CODE REGEX ARGS...: like check_error for `qv ARGS...`, which must
# return within 10 s
bounded() {
    local desc=$1 want=$2 re=$3 out rc
    shift 3
    out=$(timeout -k 1 10 "$QV_BIN" --root "$T_ROOT" "$@" 2>&1); rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then not_ok "$desc (still blocked after 10 s)"; diag "$out"
    elif [ "$rc" -eq "$want" ] && grep -Eq -- "$re" <<< "$out"; then ok "$desc"
    else not_ok "$desc (exit $rc, want $want)"; diag "$out"; fi
}

def() { printf '%s\n' "$2" > "$T_ROOT/$1.json"; echo "$T_ROOT/$1.json"; }

bounded "a FIFO as a disk whose format is probed is refused at once (exit 2)" 2 \
    'disks\[0\]\.file: .*/fifo is a named pipe \(FIFO\), not a regular file or a block device' \
    define "$(def f1 '{"name": "f1", "disks": [{"file": "'"$img/fifo"'"}]}')"
bounded "a FIFO as a disk with a given format is refused too" 2 'disks\[0\]\.file: .*is a named pipe' \
    define "$(def f2 '{"name": "f2", "disks": [{"file": "'"$img/fifo"'", "format": "raw"}]}')"
bounded "a FIFO as a cdrom is refused" 2 'cdroms\[0\]\.file: .*is a named pipe' \
    define "$(def f3 '{"name": "f3", "cdroms": [{"file": "'"$img/fifo"'"}]}')"
bounded "a FIFO as boot.kernel is refused" 2 'boot\.kernel: .*is a named pipe \(FIFO\), not a regular file' \
    define "$(def f4 '{"name": "f4", "boot": {"kernel": "'"$img/fifo"'"}}')"
bounded "a FIFO as boot.initrd is refused" 2 'boot\.initrd: .*is a named pipe' \
    define "$(def f5 '{"name": "f5", "boot": {"kernel": "'"$G_KERNEL"'", "initrd": "'"$img/fifo"'"}}')"
bounded "a FIFO given by flags (--disk) is refused" 2 'is a named pipe' define f6 --disk "$img/fifo"
ln -s "$img/fifo" "$img/link-to-fifo"
bounded "a symbolic link to a FIFO is refused" 2 'link-to-fifo is a named pipe' \
    define f7 --disk "$img/link-to-fifo"
if python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('$img/sock')" 2>/dev/null; then
    bounded "a unix socket as a disk is refused" 2 'disks\[0\]\.file: .*/sock is a socket' define f8 --disk "$img/sock"
else
    ok "a unix socket as a disk is refused # SKIP python3 cannot make a unix socket here"
fi
bounded "/dev/tty as a disk is refused without opening it" 2 '/dev/tty is a character device' \
    define f9 --disk /dev/tty,format=raw
check_not "nothing was defined" bash -c "ls '$T_ROOT'/etc/qvisor/vms/*.json"
bounded "define works right after (no lock left behind)" 0 'defined ok1' define ok1 --disk "$img/a.raw"

# a definitions lock held by another process: a bounded wait, then who holds it
mkdir -p "$T_ROOT/etc/qvisor/networks"
# flock -o: the lock stays with flock itself, not with its child
flock -o "$T_ROOT/etc/qvisor/vms/.lock" sleep 60 &
holder=$!
on_exit "pkill -P $holder; kill $holder"
wait_until 5 grep -q " $holder " /proc/locks
start=$SECONDS
bounded "define with the VM definitions locked fails with who holds the lock (exit 4)" 4 \
    "vms/\.lock is locked by pid $holder \(flock -o .*/vms/\.lock sleep 60\); waited 5 s" define ok2 --disk "$img/a.raw"
took=$((SECONDS - start))
check "...after a bounded wait of a few seconds ($took s)" test "$took" -ge 3 -a "$took" -le 9
bounded "undefine too" 4 "vms/\.lock is locked by pid $holder" undefine ok1
pkill -P "$holder"; kill "$holder"; wait "$holder" 2>/dev/null
bounded "...and works once the holder is gone" 0 'undefined ok1' undefine ok1
flock -o "$T_ROOT/etc/qvisor/networks/.lock" sleep 60 &
holder=$!
on_exit "pkill -P $holder; kill $holder"
wait_until 5 grep -q " $holder " /proc/locks
bounded "net define with the network definitions locked fails the same way (exit 4)" 4 \
    "networks/\.lock is locked by pid $holder" net define n1 --ipv4 10.231.0.1/24
pkill -P "$holder"; kill "$holder"; wait "$holder" 2>/dev/null

# NUL bytes and invalid UTF-8 where a test_argv_golden file cannot hold them
printf '{"name": "nul1"}\0{"name": "other", "qemu_args": ["-S"]}' > "$T_ROOT/nul1.json"
check_error "a NUL byte with garbage after it in a definition file is refused, with its place (exit 2)" 2 \
    'nul1\.json:1:17: a NUL byte' qv define "$T_ROOT/nul1.json"
check_error "...and on standard input" 2 '<stdin>:1:17: a NUL byte' bash -c "'$QV_BIN' --root '$T_ROOT' define - < '$T_ROOT/nul1.json'"
printf '{"name": "nul2", "memory\\u0000junk": "1G", "memory": "256M"}' > "$T_ROOT/nul2.json"
check_error "a key with \\u0000 is refused, not truncated to another key (exit 2)" 2 \
    'nul2\.json:1:18: an object key contains \\u0000' qv define "$T_ROOT/nul2.json"
printf '{"name": "utf1", "descr\xffiption": "x"}' > "$T_ROOT/utf1.json"
check_error "a key that is not UTF-8 is refused (exit 2)" 2 'an object key is not valid UTF-8 \(byte 6 of the key is 0xff\)' \
    qv define "$T_ROOT/utf1.json"
printf '{"name": "utf2", "boot": {"kernel": "%s", "cmdline": "console=ttyS0 \xc3"}}' "$G_KERNEL" > "$T_ROOT/utf2.json"
check_error "a value that is not UTF-8 is refused with its JSON path, from stdin too (exit 2)" 2 \
    'boot\.cmdline: is not valid UTF-8 \(byte 15 of the string is 0xc3\)' bash -c "'$QV_BIN' --root '$T_ROOT' define - < '$T_ROOT/utf2.json'"
printf '{"name": "n\\u0000et", "ipv4": {"address": "10.232.0.1/24"}}' > "$T_ROOT/net-nul.json"
check_error "a network name with \\u0000 is refused (exit 2)" 2 'name: "n\\u0000et" contains a NUL character' \
    qv net define "$T_ROOT/net-nul.json"
printf '{"name": "mc", "ipv4": {"address": "224.0.0.1/24"}}' > "$T_ROOT/net-mc.json"
check_error "a network on multicast addresses is refused (exit 2)" 2 'ipv4\.address: "224\.0\.0\.1/24" overlaps multicast' \
    qv net define "$T_ROOT/net-mc.json"
check_not "nothing was defined" bash -c "ls '$T_ROOT'/etc/qvisor/vms/*.json '$T_ROOT'/etc/qvisor/networks/*.json"

# a FIFO attached to a running VM: refused, and the supervisor keeps answering
define_empty h1
check_output "a guest starts" "^h1 started" qv start h1
bounded "attach-disk of a FIFO is refused at once (exit 2)" 2 'is a named pipe' attach-disk h1 "$img/fifo"
bounded "attach-disk of /dev/zero is refused" 2 '/dev/zero is a character device' attach-disk h1 /dev/zero --format raw
bounded "...and the supervisor still answers" 0 'running' status h1
qv kill -q h1

# QEMU OOM-killed while starting: says so instead of a broken QMP handshake. The
# VM's cgroup goes below a parent of its own (removed on exit with $T_CGROUP's) whose
# small limit starves QEMU itself.
cgm=/sys/fs/cgroup/memory
oomcg=$T_CGROUP-oom
if [ -f "$cgm/memory.limit_in_bytes" ] && mkdir -p "$cgm/$oomcg" &&
    echo $((24 << 20)) > "$cgm/$oomcg/memory.limit_in_bytes"; then
    printf '{"cgroup_parent": "%s"}\n' "$oomcg" > "$T_ROOT/etc/qvisor/host.json"
    define_guest o1
    check_error "a QEMU OOM-killed during start is reported as lack of memory (exit 1)" 1 \
        'o1: QEMU failed to start: QEMU was killed for lack of memory \(cgroup memory limit [0-9]+[KMG]; raise limits\.memory_max\)' \
        timeout 60 "$QV_BIN" --root "$T_ROOT" start o1
    check_output "...and it is not running" "o1 +(shut off|crashed)" qv list --all
else
    ok "a QEMU OOM-killed during start is reported as lack of memory # SKIP no cgroup v1 memory controller"
fi
finish
