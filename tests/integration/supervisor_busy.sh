#!/bin/bash
# timeout: 300
# The supervisor's loop never waits on QEMU: while an attach-disk is held up (QEMU
# stopped with SIGSTOP in the middle of it, so its monitor answers nothing),
# `status`, `console` and `stop` are still served at once; when QEMU goes on, the
# attach finishes and its client gets the reply. No wall-clock bound: while QEMU is
# stopped its monitor cannot answer, so a supervisor that waited on it could serve
# nothing until QEMU goes on (the synchronous code answered nothing until QEMU's add-fd
# timed out after 5 s, which failed the attach): every answer below is checked to come
# while QEMU is still stopped and the attach still waits. (Latency is bench/'s.)
. "$(dirname "$0")/../lib.sh"

img=$T_ROOT/img
mkdir -p "$img"
truncate -s 16M "$img/slow.raw" "$img/slow2.raw"
define_guest busy
on_exit 'kill -CONT $(cat "$T_ROOT/qemu.pid" 2>/dev/null) 2>/dev/null'

qv start -q busy || { not_ok "the VM starts"; finish; }
check "the guest boots" wait_until 90 guest_ok busy true
qpid=$(vm_pid busy)
echo "$qpid" > "$T_ROOT/qemu.pid"

# ---- attach-disk held up by a stopped QEMU ----
kill -STOP "$qpid"
qv attach-disk busy "$img/slow.raw" --serial SLOW > "$T_ROOT/attach.out" 2>&1 &
attach=$!
# no wait for a log line here: a synchronous supervisor never writes one, it sits in add-fd
sleep 1
check "the supervisor started the attach (QEMU stopped, so it waits)" log_has busy 'attaching disk .*slow\.raw'
check "status answers while QEMU is stopped" answers status busy --json
check "...and says the VM runs" grep -q '"state": "running"' "$T_ROOT/out"
check "console --replay answers while QEMU is stopped" answers console busy --replay --expect 'QVISOR-GUEST: ready' --timeout 30
check "...with the guest's earlier output" grep -q 'QVISOR-GUEST: ready' "$T_ROOT/out"
check "the attach is still waiting for QEMU" kill -0 "$attach"
kill -CONT "$qpid"
wait "$attach"
check_output "once QEMU goes on, the attach finishes and answers" 'disk attached as disk[0-9]+' cat "$T_ROOT/attach.out"
check "...and the guest sees the disk" wait_until 30 guest_ok busy 'grep -h . /sys/block/vd*/serial | grep -qx SLOW'

# ---- stop while an attach waits ----
kill -STOP "$qpid"
qv attach-disk busy "$img/slow2.raw" > "$T_ROOT/attach2.out" 2>&1 &
attach=$!
wait_log busy 'attaching disk .*slow2\.raw' 10
qv stop busy --force > "$T_ROOT/stop.out" 2>&1 &
stopper=$!
check "stop is taken while QEMU is stopped and the attach waits (state stopping)" wait_until 60 state_is busy stopping
check "...the attach still waits (QEMU never answered it)" kill -0 "$attach"
check "...and QEMU is still stopped: nothing answered for it" grep -q '^State:[[:space:]]*T' /proc/"$qpid"/status
kill -CONT "$qpid"
check "the stop finishes" wait_until 30 sh -c "! kill -0 $stopper"
wait "$stopper"
check "...successfully" test $? -eq 0
wait "$attach"
check_output "the waiting attach got an answer: QEMU left before it finished" "QEMU exited before|QMP connection closed" cat "$T_ROOT/attach2.out"
check "the VM is shut off" state_is busy "shut off"
finish
