/* The real QEMU started through sandbox_spawn, with its own -sandbox on top:
 * it starts, answers QMP (raw socket I/O on a socketpair, no client library),
 * and /proc/PID shows what is in force: no capability in any set, no_new_privs,
 * seccomp mode 2 with our filter and QEMU's, its own uid, a private mount
 * namespace with a minimal /dev. Asked over QMP to open another VM's disk or
 * /dev/net/tun, it cannot. With KVM, /dev/kvm works for the VM's uid. A whole
 * guest boots under TCG from a kernel and initrd given as read-only paths. */
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "sandbox/sandbox.h"
#include "sandbox_testlib.h"

/* The alarm handler's only way to a QEMU that a hung test left running. */
static pid_t emergency_pid;

static void on_alarm(int sig)
{
    (void)sig;
    if (emergency_pid > 0)
        kill(emergency_pid, SIGKILL);
    static const char msg[] = "not ok - test_sandbox_qemu: timed out (alarm)\n";
    ssize_t w = write(1, msg, sizeof(msg) - 1);
    (void)w;
    _exit(1);
}

struct fx {
    char qemu[PATH_MAX];
    char dir[PATH_MAX];
    char disk[PATH_MAX];        /* "another VM's disk": never reachable by path */
    char mine[PATH_MAX];        /* this VM's disk, passed as an fd */
    struct sandbox_host host;
    struct sandbox_uid_lease lease;
    int qmp;                    /* our end of the socketpair */
    int err_r;                  /* QEMU's stderr */
    char cg_parent[64];
    struct sandbox_cgroup cg;
    bool cg_made;
    struct buf in;
    pid_t pid;
};

static int setup(void **state)
{
    alarm(60);
    struct fx *f = qv_xcalloc(1, sizeof(*f));
    f->qmp = f->err_r = -1;
    f->lease.lock_fd = -1;
    f->lease.hold_fd = -1;
    if (find_program("qemu-system-x86_64", f->qemu, sizeof(f->qemu)) < 0) {
        free(f);
        return -1;
    }
    if (scratch_mkdtemp("qvisor-qemutest", f->dir, sizeof(f->dir)) < 0) {
        free(f);
        return -1;
    }
    snprintf(f->disk, sizeof(f->disk), "%s/other-vm.raw", f->dir);
    int fd = open(f->disk, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0) {
        free(f);
        return -1;
    }
    close(fd);
    snprintf(f->mine, sizeof(f->mine), "%s/mine.raw", f->dir);
    fd = open(f->mine, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0) {
        free(f);
        return -1;
    }
    close(fd);
    sandbox_host_check("/sys/fs/cgroup", &f->host);
    snprintf(f->cg_parent, sizeof(f->cg_parent), "qvisor-qemutest-%d", (int)getpid());
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    if (f->pid > 0) {
        kill(f->pid, SIGKILL);
        waitpid(f->pid, NULL, 0);
    }
    struct qv_err e = {0};
    if (f->cg_made && sandbox_cgroup_remove(&f->cg, 5000, &e) < 0)
        fprintf(stderr, "# teardown: %s\n", e.msg);
    for (size_t i = 0; i < f->cg.ndirs; i++) {
        char *slash = strrchr(f->cg.dir[i].path, '/');
        if (slash) {
            *slash = '\0';
            rmdir(f->cg.dir[i].path);
        }
    }
    if (f->qmp >= 0)
        close(f->qmp);
    if (f->err_r >= 0)
        close(f->err_r);
    buf_free(&f->in);
    sandbox_uid_release(&f->lease);
    scratch_remove(f->dir);
    free(f);
    emergency_pid = 0;
    alarm(0);
    return 0;
}

/* Whether /proc/PID/cgroup (its text) puts the process in every directory of `cg`:
 * on v2 the line "0::/PATH"; on v1 one "N:CONTROLLERS:/PATH" per hierarchy, where
 * CONTROLLERS is the hierarchy's directory name ("memory", "cpu,cpuacct"). */
static bool in_cgroup(const char *proc_cgroup, const struct sandbox_cgroup *cg)
{
    if (!cg->ndirs)
        return false;
    size_t rootlen = strlen(cg->root);
    for (size_t i = 0; i < cg->ndirs; i++) {
        char leaf[PATH_MAX];
        sandbox_cgroup_leaf(cg, i, CG_LEAF_QEMU, leaf, sizeof(leaf));
        const char *rel = leaf + rootlen;   /* "/PATH/qemu" (v2), "/HIER/PATH/qemu" (v1) */
        char want[PATH_MAX + 64];
        if (cg->version == 2) {
            snprintf(want, sizeof(want), "0::%s\n", rel);
            const char *at = strstr(proc_cgroup, want);
            if (!at || (at != proc_cgroup && at[-1] != '\n'))
                return false;
            continue;
        }
        const char *slash = strchr(rel + 1, '/');
        if (!slash)
            return false;
        snprintf(want, sizeof(want), ":%.*s:%s\n", (int)(slash - rel - 1), rel + 1, slash);
        if (!strstr(proc_cgroup, want))
            return false;
    }
    return true;
}

/* in_cgroup on a fake v2 tree (this host has v1; hosts in the field have v2) */
static void test_cgroup_line_v2(void **state)
{
    (void)state;
    char root[PATH_MAX], file[PATH_MAX + 32];
    assert_int_equal(scratch_mkdtemp("qvisor-qemutest", root, sizeof(root)), 0);
    snprintf(file, sizeof(file), "%s/cgroup.controllers", root);
    int fd = open(file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, "cpu io memory pids\n", 19), 0);
    close(fd);
    struct sandbox_cgroup cg;
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = root, .parent = "qvisor-qemutest-1", .name = "vm"};
    assert_int_equal(sandbox_cgroup_resolve(&p, &cg, &e), 0);
    assert_int_equal(cg.version, 2);
    /* QEMU is in the VM's qemu/ leaf */
    assert_true(in_cgroup("0::/qvisor-qemutest-1/vm/qemu\n", &cg));
    assert_true(in_cgroup("1:name=systemd:/\n0::/qvisor-qemutest-1/vm/qemu\n", &cg));
    /* the v1 form, another cgroup, a parent only, the supervisor's leaf, a longer path: not in it */
    assert_false(in_cgroup("4:memory:/qvisor-qemutest-1/vm/qemu\n0::/\n", &cg));
    assert_false(in_cgroup("0::/qvisor-qemutest-1/vm2/qemu\n", &cg));
    assert_false(in_cgroup("0::/qvisor-qemutest-1/vm\n", &cg));
    assert_false(in_cgroup("0::/qvisor-qemutest-1/vm/supervisor\n", &cg));
    assert_false(in_cgroup("0::/x/qvisor-qemutest-1/vm/qemu\n", &cg));
    scratch_remove(root);
}

static char *qemu_stderr(struct fx *f)
{
    struct buf b = {0};
    buf_adds(&b, "");
    if (f->err_r < 0)
        return b.p;
    fd_set_nonblock(f->err_r, true);
    char chunk[4096];
    ssize_t n;
    while ((n = read(f->err_r, chunk, sizeof(chunk))) > 0)
        buf_add(&b, chunk, (size_t)n);
    buf_adds(&b, "");
    return b.p;
}

/* One JSON line from QEMU, within timeout_ms. */
static json_object *qmp_line(struct fx *f, int timeout_ms)
{
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    for (;;) {
        char *nl = f->in.len ? memchr(f->in.p, '\n', f->in.len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - f->in.p);
            _cleanup_free_ char *line = qv_xmalloc(n + 1);
            memcpy(line, f->in.p, n);
            line[n] = '\0';
            buf_consume(&f->in, n + 1);
            json_object *o = NULL;
            struct qv_err e = {0};
            if (json_parse_str("qmp", line, &o, &e) < 0)
                fail_msg("bad QMP line: %s", line);
            return o;
        }
        uint64_t now = monotonic_ms();
        if (now >= deadline) {
            _cleanup_free_ char *err = qemu_stderr(f);
            fail_msg("no answer from QEMU within %d ms; stderr: %s", timeout_ms, err);
        }
        struct pollfd p = {.fd = f->qmp, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        char chunk[4096];
        ssize_t r = read(f->qmp, chunk, sizeof(chunk));
        if (r <= 0) {
            _cleanup_free_ char *err = qemu_stderr(f);
            fail_msg("QMP connection closed; stderr: %s", err);
        }
        buf_add(&f->in, chunk, (size_t)r);
    }
}

/* Sends a command; returns the reply (events before it are skipped). */
static json_object *qmp(struct fx *f, const char *cmd)
{
    assert_int_equal(write_all(f->qmp, cmd, strlen(cmd)), 0);
    assert_int_equal(write_all(f->qmp, "\n", 1), 0);
    for (;;) {
        json_object *o = qmp_line(f, 10000);
        if (json_object_object_get_ex(o, "return", NULL) || json_object_object_get_ex(o, "error", NULL))
            return o;
        json_object_put(o);
    }
}

static void start_qemu(struct fx *f, const char *accel, bool kvm)
{
    struct qv_err e = {0};
    assert_int_equal(sandbox_uid_acquire(f->dir, 6400000, 6465535, "qemutest", &f->lease, &e), 0);
    int sv[2], ep[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    assert_int_equal(pipe2(ep, O_CLOEXEC), 0);
    f->qmp = sv[0];
    f->err_r = ep[0];
    const char *argv[] = {"qemu-system-x86_64", "-machine", "pc", "-accel", accel, "-m", "64",
                          "-nodefaults", "-no-user-config", "-display", "none", "-S",
                          "-chardev", "socket,id=qmp,fd=3,server=off",
                          "-mon", "chardev=qmp,mode=control",
                          "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
                          /* the VM's disk as the supervisor passes it: an fd, mode 0600, root's */
                          "-add-fd", "fd=4,set=4",
                          "-blockdev", "{\"driver\":\"file\",\"node-name\":\"disk0\",\"filename\":\"/dev/fdset/4\"}",
                          NULL};
    int disk = open(f->mine, O_RDWR | O_CLOEXEC);
    assert_true(disk >= 0);
    if (f->host.step[SANDBOX_CGROUP].available) {
        struct sandbox_cgroup_params p = {.root = "/sys/fs/cgroup", .parent = f->cg_parent, .name = "vm"};
        struct sandbox_cgroup_limits l = {
            .memory_max = (64ull << 20) + sandbox_memory_overhead(64ull << 20, 1, true),
            .pids_max = 256,
        };
        assert_int_equal(sandbox_cgroup_resolve(&p, &f->cg, &e), 0);
        f->cg_made = true;
        if (sandbox_cgroup_create(&f->cg, &l, NULL, &e) < 0)
            fail_msg("%s", e.msg);
    }
    struct sandbox_fd fds[] = {{sv[1], 3}, {disk, 4}};
    struct sandbox_spec s;
    sandbox_spec_init(&s);
    s.name = "qemutest";
    s.path = f->qemu;
    s.argv = argv;
    s.fds = fds;
    s.nfds = 2;
    s.stderr_fd = ep[1];
    s.hold_fd = f->lease.hold_fd;
    s.uid = f->lease.uid;
    s.gid = f->lease.gid;
    s.host = &f->host;
    s.kvm = kvm;
    s.nofile = 1024;
    s.cgroup = f->cg_made ? &f->cg : NULL;
    /* Every step is insisted on (the cgroup where this host has one). */
    s.require = f->cg_made ? SANDBOX_ALL_STEPS : SANDBOX_ALL_STEPS & ~SANDBOX_STEP(SANDBOX_CGROUP);
    /* A descriptor without CLOEXEC that must not reach QEMU. */
    int stray = open(f->disk, O_RDONLY);
    assert_true(stray >= 0);
    uint64_t t0 = monotonic_ms();
    int r = sandbox_spawn(&s, &f->pid, NULL, &e);
    close(stray);
    close(disk);
    close(sv[1]);
    close(ep[1]);
    if (r < 0)
        fail_msg("spawn: %s", e.msg);
    emergency_pid = f->pid;
    json_object *greeting = qmp_line(f, 15000);
    printf("# %s: sandbox_spawn to QMP greeting %llu ms\n", accel, (unsigned long long)(monotonic_ms() - t0));
    assert_true(json_object_object_get_ex(greeting, "QMP", NULL));
    json_object_put(greeting);
    json_object *rep = qmp(f, "{\"execute\":\"qmp_capabilities\"}");
    assert_true(json_object_object_get_ex(rep, "return", NULL));
    json_object_put(rep);
}

static void quit_qemu(struct fx *f)
{
    assert_int_equal(write_all(f->qmp, "{\"execute\":\"quit\"}\n", 19), 0);
    uint64_t deadline = monotonic_ms() + 10000;
    int st = 0;
    while (waitpid(f->pid, &st, WNOHANG) == 0) {
        if (monotonic_ms() > deadline)
            fail_msg("QEMU did not quit");
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    f->pid = 0;
    emergency_pid = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        _cleanup_free_ char *err = qemu_stderr(f);
        fail_msg("QEMU ended with status %#x; stderr: %s", st, err);
    }
}

static const char *status_value(const char *status, const char *key, char *out, size_t len)
{
    size_t n = strlen(key);
    for (const char *l = status; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, key, n) && l[n] == ':') {
            const char *v = l + n + 1;
            while (*v == '\t' || *v == ' ')
                v++;
            snprintf(out, len, "%.*s", (int)strcspn(v, "\n"), v);
            return out;
        }
    fail_msg("no %s in /proc/PID/status", key);
    return "";
}

static void test_qemu_confined(void **state)
{
    struct fx *f = *state;
    start_qemu(f, "tcg", false);

    json_object *rep = qmp(f, "{\"execute\":\"query-status\"}");
    json_object *ret, *status;
    assert_true(json_object_object_get_ex(rep, "return", &ret));
    assert_true(json_object_object_get_ex(ret, "status", &status));
    assert_string_equal(json_object_get_string(status), "prelaunch");
    json_object_put(rep);

    char path[64], v[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)f->pid);
    _cleanup_free_ char *st = NULL;
    assert_int_equal(read_file(path, 1 << 16, &st, NULL), 0);
    static const char *const caps[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"};
    for (size_t i = 0; i < ARRAY_SIZE(caps); i++)
        assert_string_equal(status_value(st, caps[i], v, sizeof(v)), "0000000000000000");
    assert_string_equal(status_value(st, "NoNewPrivs", v, sizeof(v)), "1");
    assert_string_equal(status_value(st, "Seccomp", v, sizeof(v)), "2");
    int filters = atoi(status_value(st, "Seccomp_filters", v, sizeof(v)));
    printf("# QEMU runs with %d seccomp filters\n", filters);
    assert_true(filters >= 2);
    char want[64];
    snprintf(want, sizeof(want), "%u\t%u\t%u\t%u", f->lease.uid, f->lease.uid, f->lease.uid, f->lease.uid);
    assert_string_equal(status_value(st, "Uid", v, sizeof(v)), want);
    assert_true(f->lease.uid != 0);

    /* what status --json would show */
    json_object *o = NULL;
    struct qv_err e = {0};
    assert_int_equal(sandbox_inspect(f->pid, "/sys/fs/cgroup", &o, &e), 0);
    json_object *ns, *dev, *caps_o, *none;
    assert_true(json_object_object_get_ex(o, "namespaces", &ns));
    assert_int_equal(json_object_array_length(ns), 2);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(ns, 0)), "mnt");
    assert_string_equal(json_object_get_string(json_object_array_get_idx(ns, 1)), "net");
    assert_true(json_object_object_get_ex(o, "dev", &dev));
    assert_int_equal(json_object_array_length(dev), 7);
    assert_true(json_object_object_get_ex(o, "capabilities", &caps_o));
    assert_true(json_object_object_get_ex(caps_o, "none", &none));
    assert_true(json_object_get_boolean(none));
    json_object_put(o);

    /* every fd QEMU holds is ours or its own: no host file but the uid lease's lock */
    char lock[PATH_MAX];
    snprintf(lock, sizeof(lock), "%s/%u", f->dir, (unsigned)f->lease.uid);
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)f->pid);
    _cleanup_free_ char *list = NULL;
    const char *ls[] = {"ls", path, NULL};
    assert_int_equal(run_program(ls, 5000, &list), 0);
    for (char *save = NULL, *fd = strtok_r(list, "\n", &save); fd; fd = strtok_r(NULL, "\n", &save)) {
        char link[PATH_MAX], target[PATH_MAX];
        snprintf(link, sizeof(link), "%s/%s", path, fd);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
            continue;
        target[n] = '\0';
        if (target[0] == '/' && strncmp(target, "/dev/", 5) && strncmp(target, "/memfd:", 7) &&
            strcmp(target, lock) && strcmp(target, f->mine))
            fail_msg("QEMU holds fd %s -> %s", fd, target);
    }

    /* its own disk, opened through the fd it was given, is there */
    rep = qmp(f, "{\"execute\":\"query-named-block-nodes\"}");
    assert_non_null(strstr(json_object_to_json_string_ext(rep, JSON_C_TO_STRING_PLAIN), "\"node-name\":\"disk0\""));
    json_object_put(rep);

    /* asked to open another VM's disk, or the tun device, by path: it cannot */
    char cmd[PATH_MAX + 200];
    snprintf(cmd, sizeof(cmd),
             "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"file\",\"node-name\":\"steal\","
             "\"filename\":\"%s\"}}", f->disk);
    rep = qmp(f, cmd);
    json_object *err, *desc;
    if (!json_object_object_get_ex(rep, "error", &err))
        fail_msg("QEMU opened %s", f->disk);
    assert_true(json_object_object_get_ex(err, "desc", &desc));
    assert_non_null(strstr(json_object_get_string(desc), "No such file or directory"));
    json_object_put(rep);
    rep = qmp(f, "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"file\",\"node-name\":\"tun\","
                 "\"filename\":\"/dev/net/tun\"}}");
    assert_true(json_object_object_get_ex(rep, "error", NULL));
    json_object_put(rep);
    /* nor open its own files for writing */
    snprintf(cmd, sizeof(cmd),
             "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"file\",\"node-name\":\"self\","
             "\"filename\":\"%s\",\"read-only\":false}}", f->qemu);
    rep = qmp(f, cmd);
    assert_true(json_object_object_get_ex(rep, "error", NULL));
    json_object_put(rep);

    /* in its cgroup, with the limits; gone once QEMU has quit */
    snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)f->pid);
    _cleanup_free_ char *cgtext = NULL;
    assert_int_equal(read_file(path, 1 << 16, &cgtext, NULL), 0);
    if (f->cg_made) {
        if (!in_cgroup(cgtext, &f->cg))
            fail_msg("QEMU is not in its cgroup (%s, v%d): %s", f->cg.dir[0].path, f->cg.version, cgtext);
        char pidline[32];
        snprintf(pidline, sizeof(pidline), "%d", (int)f->pid);
        for (size_t i = 0; i < f->cg.ndirs; i++) {
            char procs[PATH_MAX + 16], leaf[PATH_MAX];
            sandbox_cgroup_leaf(&f->cg, i, CG_LEAF_QEMU, leaf, sizeof(leaf));
            snprintf(procs, sizeof(procs), "%s/cgroup.procs", leaf);
            _cleanup_free_ char *list = NULL;
            assert_int_equal(read_file(procs, 1 << 16, &list, NULL), 0);
            bool found = false;
            for (char *save = NULL, *l = strtok_r(list, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
                found |= strcmp(l, pidline) == 0;
            if (!found)
                fail_msg("QEMU pid %s is not in %s", pidline, procs);
        }
    }

    quit_qemu(f);
    if (f->cg_made) {
        assert_int_equal(sandbox_cgroup_remove(&f->cg, 5000, &e), 0);
        for (size_t i = 0; i < f->cg.ndirs; i++)
            assert_int_equal(access(f->cg.dir[i].path, F_OK), -1);
        f->cg_made = false;
    }
}

static void test_qemu_kvm_node(void **state)
{
    struct fx *f = *state;
    if (!f->host.kvm || !f->host.mknod)
        skip();
    /* -S: the vCPUs never run, so nested KVM's hang after the decompressor does not matter */
    start_qemu(f, "kvm", true);
    json_object *rep = qmp(f, "{\"execute\":\"query-kvm\"}");
    json_object *ret, *enabled, *present;
    assert_true(json_object_object_get_ex(rep, "return", &ret));
    assert_true(json_object_object_get_ex(ret, "enabled", &enabled));
    assert_true(json_object_object_get_ex(ret, "present", &present));
    assert_true(json_object_get_boolean(enabled));
    assert_true(json_object_get_boolean(present));
    json_object_put(rep);
    quit_qemu(f);
}

/* The guest's kernel and initrd (tests/run builds them into build/guest). */
static bool find_guest(char *kernel, char *initrd, size_t len)
{
    const char *b = getenv("QVISOR_TEST_BUILD");
    char dir[PATH_MAX];
    if (b && *b) {
        snprintf(dir, sizeof(dir), "%s/guest", b);
    } else {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        self[n > 0 ? n : 0] = '\0';
        char *slash = strrchr(self, '/');
        if (slash)
            *slash = '\0';
        snprintf(dir, sizeof(dir), "%s/../../guest", self);
    }
    snprintf(kernel, len, "%s/vmlinux", dir);
    snprintf(initrd, len, "%s/initrd.img", dir);
    return access(kernel, R_OK) == 0 && access(initrd, R_OK) == 0;
}

/* A whole guest under TCG: it boots, runs a command, powers off, and QEMU exits. */
static void test_qemu_boots_guest(void **state)
{
    struct fx *f = *state;
    char kernel[PATH_MAX], initrd[PATH_MAX], kreal[PATH_MAX], ireal[PATH_MAX];
    if (!find_guest(kernel, initrd, sizeof(kernel)) || !realpath(kernel, kreal) || !realpath(initrd, ireal))
        skip();
    struct qv_err e = {0};
    assert_int_equal(sandbox_uid_acquire(f->dir, 6400000, 6465535, "qemuboot", &f->lease, &e), 0);
    int con[2], ep[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, con), 0);
    assert_int_equal(pipe2(ep, O_CLOEXEC), 0);
    f->qmp = con[0];
    f->err_r = ep[0];
    const char *argv[] = {"qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-m", "256",
                          "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                          "-chardev", "socket,id=con,fd=3,server=off", "-serial", "chardev:con",
                          "-kernel", kreal, "-initrd", ireal,
                          "-append", "console=ttyS0 panic=-1 quiet qv_run=\"echo sandboxed-guest\"",
                          "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
                          NULL};
    struct sandbox_fd fds[] = {{con[1], 3}};
    const char *ro[] = {kreal, ireal, NULL};
    struct sandbox_spec s;
    sandbox_spec_init(&s);
    s.name = "qemuboot";
    s.path = f->qemu;
    s.argv = argv;
    s.fds = fds;
    s.nfds = 1;
    s.stderr_fd = ep[1];
    s.hold_fd = f->lease.hold_fd;
    s.uid = f->lease.uid;
    s.gid = f->lease.gid;
    s.host = &f->host;
    s.ro_paths = ro;
    s.enable &= ~SANDBOX_STEP(SANDBOX_CGROUP);
    s.require = s.enable;
    uint64_t t0 = monotonic_ms();
    int r = sandbox_spawn(&s, &f->pid, NULL, &e);
    close(con[1]);
    close(ep[1]);
    if (r < 0)
        fail_msg("spawn: %s", e.msg);
    emergency_pid = f->pid;
    /* the console until the guest reports its command's status */
    uint64_t deadline = monotonic_ms() + 45000;
    while (!f->in.p || !memmem(f->in.p, f->in.len, "QVISOR-GUEST: exit 0", 20)) {
        uint64_t now = monotonic_ms();
        if (now >= deadline) {
            _cleanup_free_ char *err = qemu_stderr(f);
            buf_adds(&f->in, "");
            fail_msg("no guest output in time; console: %s; stderr: %s", f->in.p, err);
        }
        struct pollfd p = {.fd = f->qmp, .events = POLLIN};
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        char chunk[4096];
        ssize_t n = read(f->qmp, chunk, sizeof(chunk));
        if (n <= 0) {
            _cleanup_free_ char *err = qemu_stderr(f);
            fail_msg("console closed; stderr: %s", err);
        }
        buf_add(&f->in, chunk, (size_t)n);
    }
    assert_non_null(memmem(f->in.p, f->in.len, "sandboxed-guest", 15));
    printf("# guest booted and ran its command %llu ms after sandbox_spawn\n",
           (unsigned long long)(monotonic_ms() - t0));
    int st = 0;
    while (waitpid(f->pid, &st, WNOHANG) == 0) {
        if (monotonic_ms() > deadline)
            fail_msg("QEMU did not exit after the guest powered off");
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    f->pid = 0;
    emergency_pid = 0;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
    scratch_sweep("qvisor-qemutest");     /* what killed runs left behind */
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    if (geteuid() != 0) {
        printf("1..0 # SKIP test_sandbox_qemu needs root\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cgroup_line_v2),
        cmocka_unit_test_setup_teardown(test_qemu_confined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qemu_kvm_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qemu_boots_guest, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
