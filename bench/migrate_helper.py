#!/usr/bin/env python3
"""QMP driver for bench/migrate: what bash cannot do to the millisecond.

  migrate_helper.py time TIMEOUT_S OUT ERR CMD [ARG...]
      runs CMD (stdin /dev/null, stdout to OUT, stderr to ERR) and prints
      "MS STATUS": MS from spawn to reaped (CLOCK_MONOTONIC), STATUS its exit code.

  migrate_helper.py raw DIR SRC_PID DST_PID DST_ADDR BOOT_TIMEOUT_S QEMU [ARG...]
      the floor: two QEMUs with the same argv (qvisor argv), migrated by hand over QMP.
      Each is started inside a "host" (nsenter -t PID -p -m -n, as the bench's qvisor
      runs there) the way the supervisor starts it: every
      `-chardev socket,id=ID,fd=N,server=on,...` gets a listening unix socket
      DIR/{src,dst}/ID.sock at fd N. The source: qmp_capabilities, cont, and its console
      read until the guest says "QVISOR-GUEST: ready". The destination: the same argv
      plus `-incoming defer`, qmp_capabilities, migrate-incoming tcp:DST_ADDR. Then, on
      the clock: the source's migrate-set-capabilities (auto-converge off) and
      migrate-set-parameters (max-bandwidth 1 TiB/s, as qvisor sets), `migrate`
      tcp:DST_ADDR, and query-migrate every 5 ms until "completed". Then `cont` on the
      destination (checked running) and `quit` on both.
      Prints "WALL_MS QEMU_TOTAL_MS DOWNTIME_MS TRANSFERRED_BYTES".
      With MIGRATE_RAW_CGROUP=PREFIX in the environment each QEMU goes into the
      (existing) cgroup PREFIX-src or PREFIX-dst first.

Bounded: every wait gives up after a timeout; both QEMUs are killed on any failure
(the bench also kills its hosts' PID namespaces on exit).
"""
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

QMP_TIMEOUT = 60.0
POLL_S = 0.005
procs = []


def die(msg):
    sys.stderr.write("migrate_helper: %s\n" % msg)
    for p in procs:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    sys.exit(1)


def now_ms():
    return time.clock_gettime(time.CLOCK_MONOTONIC) * 1000.0


def cmd_time(args):
    timeout, out, err, cmd = float(args[0]), args[1], args[2], args[3:]
    with open(out, "wb") as o, open(err, "wb") as e:
        t0 = now_ms()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = 124
        t1 = now_ms()
    if rc < 0:
        rc = 128 - rc
    print("%.1f %d" % (t1 - t0, rc))


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(QMP_TIMEOUT)
        self.sock.connect(path)
        self.f = self.sock.makefile("rb")
        self.n = 0
        self.events = []
        greeting = self.read()
        if "QMP" not in greeting:
            die("no QMP greeting on %s: %r" % (path, greeting))
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.f.readline()
        if not line:
            die("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        self.n += 1
        msg = {"execute": name, "id": self.n}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self.read()
            if "event" in r:
                self.events.append(r)
                continue
            if r.get("id") != self.n:
                continue
            if "error" in r:
                die("%s: %s" % (name, r["error"].get("desc")))
            return r.get("return")


def start_qemu(d, nspid, argv):
    """QEMU in host NSPID with listening sockets at the fds its argv names."""
    os.makedirs(d, exist_ok=True)
    fds = {}
    for i, a in enumerate(argv):
        if i == 0 or argv[i - 1] != "-chardev" or not a.startswith("socket,"):
            continue
        opts = dict(kv.split("=", 1) for kv in a.split(",")[1:] if "=" in kv)
        if "fd" not in opts or opts.get("server") != "on":
            continue
        path = os.path.join(d, opts["id"] + ".sock")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(1)
        fds[int(opts["fd"])] = s
    log = os.open(os.path.join(d, "qemu.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    cmd = ["nsenter", "-t", nspid, "-p", "-m", "-n", "--"] + argv
    pid = os.fork()
    if pid == 0:
        try:
            # out of the way first (fd 100 up), then to their numbers, so none clobbers another
            high = {n: fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100) for n, s in fds.items()}
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            for n, f in high.items():
                os.dup2(f, n, inheritable=True)
            # --raw-cgroup: a cpu cgroup of its own per QEMU, as qvisor's QEMUs have
            cg = os.environ.get("MIGRATE_RAW_CGROUP")
            if cg:
                with open(cg + "-" + os.path.basename(d) + "/cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))
            for f in range(3, 1024):
                if f not in high and _isopen(f):
                    os.close(f)
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    procs.append(pid)
    os.close(log)
    for s in fds.values():
        s.close()
    return pid


def _isopen(f):
    try:
        os.fstat(f)
        return True
    except OSError:
        return False


def connect(path, what):
    deadline = time.monotonic() + QMP_TIMEOUT
    while True:
        try:
            if what == "qmp":
                return Qmp(path)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                die("cannot connect to %s" % path)
            time.sleep(0.05)


def reap(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _ = os.waitpid(pid, os.WNOHANG)
        if r:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def wait_console(sock, word, timeout):
    deadline = time.monotonic() + timeout
    buf = b""
    while word not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            die("the raw guest did not say %r in %ds: %r" % (word, timeout, buf[-200:]))
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            die("the raw guest's console closed")
        buf = buf[-4096:] + chunk


def cmd_raw(args):
    d, src_pid, dst_pid, addr, boot_timeout = args[0], args[1], args[2], args[3], float(args[4])
    argv = args[5:]
    src = start_qemu(os.path.join(d, "src"), src_pid, argv)
    dst = start_qemu(os.path.join(d, "dst"), dst_pid, argv + ["-incoming", "defer"])
    qs = connect(os.path.join(d, "src", "qmp.sock"), "qmp")
    con = None
    if os.path.exists(os.path.join(d, "src", "console.sock")):
        con = connect(os.path.join(d, "src", "console.sock"), "console")
    qs.cmd("cont")
    if con:
        wait_console(con, b"QVISOR-GUEST: ready", boot_timeout)
    qd = connect(os.path.join(d, "dst", "qmp.sock"), "qmp")
    qd.cmd("migrate-incoming", uri="tcp:" + addr)
    time.sleep(1.0)     # as in qvisor's rounds: the guest idles a moment after its boot

    t0 = now_ms()
    qs.cmd("migrate-set-capabilities", capabilities=[{"capability": "auto-converge", "state": False}])
    qs.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    qs.cmd("migrate", uri="tcp:" + addr)
    while True:
        r = qs.cmd("query-migrate")
        st = r.get("status")
        if st == "completed":
            break
        if st in ("failed", "cancelled"):
            die("raw migration %s: %s" % (st, r.get("error-desc")))
        if now_ms() - t0 > 600000:
            die("raw migration not done in 600 s")
        time.sleep(POLL_S)
    t1 = now_ms()
    # the destination has the guest: it runs on there (its argv has -S, as qvisor's)
    deadline = time.monotonic() + QMP_TIMEOUT
    while qd.cmd("query-status").get("status") not in ("paused", "running"):
        if time.monotonic() > deadline:
            die("the raw destination never finished loading")
        time.sleep(POLL_S)
    qd.cmd("cont")
    if qd.cmd("query-status").get("status") != "running":
        die("the raw destination does not run after cont")
    print("%.1f %d %d %d" % (t1 - t0, r.get("total-time", -1), r.get("downtime", -1),
                             r.get("ram", {}).get("transferred", -1)))
    sys.stdout.flush()
    for q in (qs, qd):
        try:
            q.cmd("quit")
        except SystemExit:
            pass
    for p in (src, dst):
        reap(p, 30)


def main():
    signal.signal(signal.SIGTERM, lambda *_: die("terminated"))
    if len(sys.argv) < 2:
        die("usage: see the top of this file")
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "time" and len(args) >= 4:
        cmd_time(args)
    elif mode == "raw" and len(args) >= 6:
        cmd_raw(args)
    else:
        die("usage: see the top of this file")


if __name__ == "__main__":
    main()
