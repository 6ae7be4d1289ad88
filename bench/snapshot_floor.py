#!/usr/bin/env python3
"""bench/snapshot_floor.py: the floor under `bench/storage`'s snapshot rows. Raw
QEMU, started here with the arguments bench/storage's VMs get (test guest, 192 MiB,
one vCPU, q35, TCG, -cpu max, a qcow2 disk with cache=none, a user-mode NIC), saves and
loads a RAM + disk snapshot through QMP's snapshot-save/snapshot-load jobs. Each
operation is timed from the command to the job's concluded event, which is the least
any manager of that QEMU can take.

    bench/snapshot_floor.py KERNEL INITRD QCOW2 [--runs N] [--hold SECONDS] [--cache none|writeback]
                           [--aio threads|io_uring]

--cache none (O_DIRECT, the default) is what bench/storage's libvirt domain asks for;
writeback is QEMU's default. qvisor's disks are cache=none with --aio io_uring.

QCOW2 is used in place (give it a copy). Prints one line per operation: median and
p90 in ms over the runs, and a JSON line at the end."""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def qmp_open(path, deadline):
    while True:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise SystemExit("snapshot_floor: QEMU's QMP socket did not appear")
            time.sleep(0.05)
    f = s.makefile("rwb", buffering=0)
    json.loads(f.readline())  # greeting
    qmp_cmd(f, "qmp_capabilities")
    return s, f


def qmp_cmd(f, name, args=None):
    msg = {"execute": name}
    if args is not None:
        msg["arguments"] = args
    f.write(json.dumps(msg).encode() + b"\n")
    while True:
        reply = json.loads(f.readline())
        if "return" in reply:
            return reply["return"]
        if "error" in reply:
            raise SystemExit(f"snapshot_floor: {name}: {reply['error'].get('desc')}")


def wait_job(f, job, timeout=300):
    """Reads events until the job concludes; returns its error, if any."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(f.readline())
        if msg.get("event") == "JOB_STATUS_CHANGE" and msg["data"]["id"] == job and \
                msg["data"]["status"] == "concluded":
            return None
    return "timed out"


def run_job(f, name, args):
    t0 = time.monotonic()
    qmp_cmd(f, name, args)
    err = wait_job(f, args["job-id"])
    ms = (time.monotonic() - t0) * 1000
    jobs = qmp_cmd(f, "query-jobs")
    for j in jobs:
        if j["id"] == args["job-id"] and j.get("error"):
            err = j["error"]
    qmp_cmd(f, "job-dismiss", {"id": args["job-id"]})
    if err:
        raise SystemExit(f"snapshot_floor: {name}: {err}")
    return ms


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]


def main():
    argv = sys.argv[1:]
    runs, hold, direct, aio = 5, 20, True, "threads"
    pos = []
    i = 0
    while i < len(argv):
        if argv[i] == "--runs":
            runs = int(argv[i + 1]); i += 2
        elif argv[i] == "--hold":
            hold = float(argv[i + 1]); i += 2
        elif argv[i] == "--cache":
            if argv[i + 1] not in ("none", "writeback"):
                raise SystemExit("snapshot_floor: --cache is none or writeback")
            direct = argv[i + 1] == "none"; i += 2
        elif argv[i] == "--aio":
            if argv[i + 1] not in ("threads", "io_uring"):
                raise SystemExit("snapshot_floor: --aio is threads or io_uring")
            aio = argv[i + 1]; i += 2
        else:
            pos.append(argv[i]); i += 1
    if len(pos) != 3:
        raise SystemExit(__doc__)
    kernel, initrd, image = pos
    tmp = tempfile.mkdtemp(prefix="qvsnapfloor.")
    sock = os.path.join(tmp, "qmp.sock")
    qemu = subprocess.Popen([
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "192M",
        "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 quiet panic=-1",
        "-blockdev", json.dumps({"driver": "file", "filename": image, "node-name": "f0",
                                 "cache": {"direct": direct}, "aio": aio}),
        "-blockdev", json.dumps({"driver": "qcow2", "file": "f0", "node-name": "disk0"}),
        "-device", "virtio-blk-pci,drive=disk0",
        "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
        "-serial", "null", "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s, f = qmp_open(sock, time.monotonic() + 30)
        time.sleep(hold)  # past the guest's boot, as bench/storage's HOLD
        create, revert = [], []
        for r in range(runs):
            tag = f"floor{r}"
            create.append(run_job(f, "snapshot-save", {"job-id": f"save{r}", "tag": tag,
                                                      "vmstate": "disk0", "devices": ["disk0"]}))
            revert.append(run_job(f, "snapshot-load", {"job-id": f"load{r}", "tag": tag,
                                                      "vmstate": "disk0", "devices": ["disk0"]}))
            # snapshot-load leaves the VM paused only when it was; it runs on here
            run_job(f, "snapshot-delete", {"job-id": f"del{r}", "tag": tag, "devices": ["disk0"]})
        s.close()
    finally:
        qemu.kill()
        qemu.wait()
        for n in os.listdir(tmp):
            os.unlink(os.path.join(tmp, n))
        os.rmdir(tmp)
    mode = ("cache=none" if direct else "cache=writeback") + f", aio={aio}"
    for name, xs in ((f"snapshot create (raw QEMU, {mode})", create),
                     (f"snapshot revert (raw QEMU, {mode})", revert)):
        print(f"  {name:44s} {statistics.median(xs):7.0f} ms  (p90 {p90(xs):.0f})")
    print(json.dumps({"runs": runs, "cache": "none" if direct else "writeback", "aio": aio,
                      "create_ms": create, "revert_ms": revert}))


if __name__ == "__main__":
    main()
