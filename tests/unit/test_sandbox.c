/* sandbox_spawn end to end: a probe program started through the very same spawn
 * path as QEMU reports what it sees (ids, capabilities, seccomp, fds, /dev, /tmp,
 * mounts, environment, rlimits) and how each denied system call answers. Also:
 * failing steps come back as precise errors, required-versus-best-effort steps,
 * dynamic uid leases, introspection of a running process, spawn overhead.
 * Runs as root; every wait is bounded and the alarm handler kills what a hung
 * test left running. */
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <poll.h>
#include <grp.h>
#include <pwd.h>
#include <linux/capability.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <linux/kvm.h>
#include <cmocka.h>

#include "sandbox/sandbox.h"
#include "sandbox_testlib.h"

#define UID_FIRST 6400000u
#define UID_LAST 6465535u

/* ---- emergency cleanup ------------------------------------------------------------
 * The alarm handler's only way to the children of a hung test. */
static pid_t emergency_pids[16];

static void on_alarm(int sig)
{
    (void)sig;
    for (size_t i = 0; i < ARRAY_SIZE(emergency_pids); i++)
        if (emergency_pids[i] > 0)
            kill(emergency_pids[i], SIGKILL);
    static const char msg[] = "not ok - test_sandbox: timed out (alarm)\n";
    ssize_t w = write(1, msg, sizeof(msg) - 1);
    (void)w;
    _exit(1);
}

static void track(pid_t pid, bool on)
{
    for (size_t i = 0; i < ARRAY_SIZE(emergency_pids); i++) {
        if (on && emergency_pids[i] == 0) {
            emergency_pids[i] = pid;
            return;
        }
        if (!on && emergency_pids[i] == pid) {
            emergency_pids[i] = 0;
            return;
        }
    }
}

/* ---- fixture ------------------------------------------------------------------------ */

struct fx {
    struct sandbox_host host;
    char probe[PATH_MAX];
    char dir[PATH_MAX];         /* /var/tmp/qvisor-sbtest-XXXXXX: files the probe must not see */
    char hidden[PATH_MAX];
    char visible[PATH_MAX];
    char lockdir[PATH_MAX];
    char name[64];
    struct sandbox_uid_lease lease;
    pid_t running[8];
    size_t nrunning;
};

static void find_probe(char *out, size_t len)
{
    const char *b = getenv("QVISOR_TEST_BUILD");
    if (b && *b) {
        snprintf(out, len, "%s/progs/sandbox_probe", b);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    self[n > 0 ? n : 0] = '\0';
    /* build/asan/tests/X (ASan) or build/tests/X (plain) -> build/progs/sandbox_probe */
    const char *dir = dirname(self);
    char real[PATH_MAX];
    snprintf(out, len, "%s/../../progs/sandbox_probe", dir);
    if (access(out, X_OK) < 0)
        snprintf(out, len, "%s/../progs/sandbox_probe", dir);
    if (realpath(out, real))
        snprintf(out, len, "%s", real);
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, text, strlen(text)), 0);
    close(fd);
    chmod(path, mode);
}

static int setup(void **state)
{
    alarm(90);
    struct fx *f = qv_xcalloc(1, sizeof(*f));
    find_probe(f->probe, sizeof(f->probe));
    if (access(f->probe, X_OK) < 0) {
        fprintf(stderr, "# no probe at %s (make build/progs/sandbox_probe)\n", f->probe);
        free(f);
        return -1;
    }
    if (scratch_mkdtemp("qvisor-sbtest", f->dir, sizeof(f->dir)) < 0) {
        free(f);
        return -1;
    }
    snprintf(f->hidden, sizeof(f->hidden), "%s/other-vm-disk.img", f->dir);
    snprintf(f->visible, sizeof(f->visible), "%s/kernel", f->dir);
    snprintf(f->lockdir, sizeof(f->lockdir), "%s/uids", f->dir);
    write_text(f->hidden, "secret disk\n", 0666);
    /* 0666: only the read-only bind, not the permissions, can stop a write. */
    write_text(f->visible, "kernel image\n", 0666);
    snprintf(f->name, sizeof(f->name), "sbtest-%d", (int)getpid());
    f->lease.lock_fd = -1;
    f->lease.hold_fd = -1;
    sandbox_host_check("/sys/fs/cgroup", &f->host);
    *state = f;
    return 0;
}

static void reap(struct fx *f, pid_t pid, int timeout_ms, int *status)
{
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid || (r < 0 && errno != EINTR))
            break;
        if (monotonic_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (size_t i = 0; i < f->nrunning; i++)
        if (f->running[i] == pid)
            f->running[i] = f->running[--f->nrunning];
    track(pid, false);
    if (status)
        *status = st;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    while (f->nrunning) {
        kill(f->running[0], SIGKILL);
        reap(f, f->running[0], 5000, NULL);
    }
    sandbox_uid_release(&f->lease);
    scratch_remove(f->dir);
    free(f);
    alarm(0);
    return 0;
}

/* ---- running the probe ----------------------------------------------------------------- */

struct run {
    struct sandbox_spec spec;
    const char *extra_args[8];
    bool keep_running;          /* --wait: the test inspects, then closes wait_w */
    int wait_w;
    pid_t pid;
    int rc;
    struct qv_err err;
    struct strv warnings;
    json_object *report;
};

static void run_init(struct fx *f, struct run *r, bool with_user)
{
    memset(r, 0, sizeof(*r));
    sandbox_spec_init(&r->spec);
    r->spec.name = f->name;
    r->spec.path = f->probe;
    r->spec.host = &f->host;
    r->wait_w = -1;
    if (with_user) {
        if (f->lease.lock_fd < 0) {
            struct qv_err e = {0};
            assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, f->name, &f->lease, &e), 0);
        }
        r->spec.uid = f->lease.uid;
        r->spec.gid = f->lease.gid;
        r->spec.hold_fd = f->lease.hold_fd;
    } else {
        r->spec.enable &= ~SANDBOX_STEP(SANDBOX_USER);
    }
}

static void run_free(struct run *r)
{
    json_object_put(r->report);
    strv_free(&r->warnings);
    if (r->wait_w >= 0)
        close(r->wait_w);
}

static int read_all_fd(int fd, int timeout_ms, struct buf *b)
{
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = monotonic_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            continue;
        char chunk[4096];
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : 0;
        buf_add(b, chunk, (size_t)n);
    }
}

/* Spawns the probe with the report pipe at `report_target` and, optionally, an
 * extra fd; fills r->report. The report's source fd and the extra fd are placed
 * so that each sits on the other's target number: the fd shuffle must cope. */
static void run_probe(struct fx *f, struct run *r)
{
    int rp[2], wp[2] = {-1, -1};
    assert_int_equal(pipe2(rp, O_CLOEXEC), 0);
    /* report source at 61, extra source at 60; targets swapped */
    int extra = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(dup3(rp[1], 61, O_CLOEXEC) == 61);
    assert_true(dup3(extra, 60, O_CLOEXEC) == 60);
    close(rp[1]);
    close(extra);
    struct sandbox_fd fds[3] = {{61, 60}, {60, 61}};
    size_t nfds = 2;
    const char *argv[24] = {"sandbox_probe", "--report", "60"};
    size_t argc = 3;
    if (r->keep_running) {
        assert_int_equal(pipe2(wp, O_CLOEXEC), 0);
        fds[nfds++] = (struct sandbox_fd){wp[0], 62};
        argv[argc++] = "--wait";
        argv[argc++] = "62";
    }
    for (size_t i = 0; r->extra_args[i]; i++)
        argv[argc++] = r->extra_args[i];
    argv[argc] = NULL;
    r->spec.argv = argv;
    r->spec.fds = fds;
    r->spec.nfds = nfds;
    r->rc = sandbox_spawn(&r->spec, &r->pid, &r->warnings, &r->err);
    close(61);
    close(60);
    if (wp[0] >= 0)
        close(wp[0]);
    r->wait_w = wp[1];
    if (r->rc < 0) {
        close(rp[0]);
        return;
    }
    f->running[f->nrunning++] = r->pid;
    track(r->pid, true);
    struct buf b = {0};
    int rr = read_all_fd(rp[0], 20000, &b);
    close(rp[0]);
    assert_int_equal(rr, 0);
    buf_adds(&b, "");
    struct qv_err e = {0};
    if (json_parse_str("probe report", b.p, &r->report, &e) < 0)
        fail_msg("bad report: %s: %s", e.msg, b.p);
    buf_free(&b);
    if (!r->keep_running) {
        int st;
        reap(f, r->pid, 10000, &st);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
}

static json_object *jget(json_object *o, const char *k1, const char *k2)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, k1, &v))
        fail_msg("report has no %s", k1);
    if (k2 && !json_object_object_get_ex(v, k2, &v))
        fail_msg("report has no %s.%s", k1, k2);
    return v;
}

static int jint(json_object *o, const char *k1, const char *k2)
{
    return json_object_get_int(jget(o, k1, k2));
}

static const char *jstr(json_object *o, const char *k1, const char *k2)
{
    return json_object_get_string(jget(o, k1, k2));
}

/* The array's strings, sorted and joined with spaces. */
static char *joined(json_object *a)
{
    struct strv s = {0};
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *v = json_object_array_get_idx(a, i);
        strv_push(&s, json_object_get_string(v));
    }
    for (size_t i = 1; i < s.n; i++)
        for (size_t k = i; k > 0 && strcmp(s.v[k - 1], s.v[k]) > 0; k--) {
            char *t = s.v[k];
            s.v[k] = s.v[k - 1];
            s.v[k - 1] = t;
        }
    char *j = strv_join((const char *const *)(s.v ? s.v : (char *[]){NULL}), " ");
    strv_free(&s);
    return j;
}

/* The private /tmp is empty, unless the probe itself lives under /tmp (a checkout
 * there): its read-only bind then shows as the first directory of its path. */
static const char *expected_tmp(const char *probe, char *buf, size_t len)
{
    buf[0] = '\0';
    if (strncmp(probe, "/tmp/", 5) == 0)
        snprintf(buf, len, "%.*s", (int)strcspn(probe + 5, "/"), probe + 5);
    return buf;
}

static void assert_joined(json_object *a, const char *want)
{
    char *got = joined(a);
    if (strcmp(got, want) != 0)
        fail_msg("got \"%s\", want \"%s\"", got, want);
    free(got);
}

/* ---- the confined probe ----------------------------------------------------------------- */

static void test_probe_confined(void **state)
{
    struct fx *f = *state;
    struct run r;
    run_init(f, &r, true);
    static const char *const env[] = {"QV_PROBE=1", "LANG=C", NULL};
    r.spec.envp = env;
    r.spec.require = SANDBOX_ALL_STEPS & ~SANDBOX_STEP(SANDBOX_CGROUP);
    r.spec.enable &= ~SANDBOX_STEP(SANDBOX_CGROUP);
    const char *ro[] = {f->visible, NULL};
    r.spec.ro_paths = ro;
    r.spec.nofile = 512;
    r.spec.memlock = 65536;
    r.spec.setsid = true;
    r.spec.groups[0] = UID_FIRST + 77;
    r.spec.ngroups = 1;
    r.extra_args[0] = "--hidden";
    r.extra_args[1] = f->hidden;
    r.extra_args[2] = "--visible";
    r.extra_args[3] = f->visible;

    /* Signal state of the parent must not leak into the child. */
    struct sigaction ign = {.sa_handler = SIG_IGN}, old_usr2;
    sigaction(SIGUSR2, &ign, &old_usr2);
    sigset_t usr1, oldmask;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &oldmask);
    /* An fd without CLOEXEC must not reach the child either. */
    int leak = open(f->hidden, O_RDONLY);
    assert_true(leak >= 0);

    run_probe(f, &r);
    close(leak);
    sigprocmask(SIG_SETMASK, &oldmask, NULL);
    sigaction(SIGUSR2, &old_usr2, NULL);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    assert_int_equal(r.warnings.n, 0);
    json_object *o = r.report;

    /* user */
    unsigned u = f->lease.uid;
    char want[128];
    snprintf(want, sizeof(want), "%u %u %u", u, u, u);
    json_object *ids = jget(o, "ids", NULL);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(json_object_get_int64(json_object_array_get_idx(jget(ids, "uid", NULL), k)), u);
        assert_int_equal(json_object_get_int64(json_object_array_get_idx(jget(ids, "gid", NULL), k)), u);
    }
    json_object *groups = jget(ids, "groups", NULL);
    assert_int_equal(json_object_array_length(groups), 1);
    assert_int_equal(json_object_get_int64(json_object_array_get_idx(groups, 0)), UID_FIRST + 77);

    /* caps, no_new_privs, seccomp, signals */
    static const char *const caps[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"};
    for (size_t i = 0; i < ARRAY_SIZE(caps); i++)
        assert_string_equal(jstr(o, "status", caps[i]), "0000000000000000");
    assert_string_equal(jstr(o, "status", "NoNewPrivs"), "1");
    assert_string_equal(jstr(o, "status", "Seccomp"), "2");
    assert_string_equal(jstr(o, "status", "Seccomp_filters"), "1");
    assert_string_equal(jstr(o, "status", "SigBlk"), "0000000000000000");
    assert_string_equal(jstr(o, "status", "SigIgn"), "0000000000000000");
    assert_true(json_object_get_boolean(jget(o, "session_leader", NULL)));

    /* fds: 0-2, the uid lease at the lowest free number, the two swapped ones */
    assert_joined(jget(o, "fds", NULL), "0 1 2 3 60 61");

    /* file system */
    assert_joined(jget(o, "dev", NULL), "full null ptmx pts random urandom zero");
    char tmp_want[256];
    assert_joined(jget(o, "tmp", NULL), expected_tmp(f->probe, tmp_want, sizeof(tmp_want)));
    assert_int_equal(jint(o, "tmp_write", NULL), 0);
    assert_int_equal(jint(o, "usr_write", NULL), EROFS);
    assert_int_equal(jint(o, "root_mkdir", NULL), EROFS);
    assert_int_equal(jint(o, "tun", NULL), ENOENT);
    assert_int_equal(jint(o, "devnull_write", NULL), 0);
    assert_int_equal(jint(o, "kvm_api", NULL), -ENOENT);
    assert_int_equal(jint(o, "proc_self", NULL), 0);
    /* hidepid=invisible: the VM's uid sees only its own processes */
    assert_int_equal(jint(o, "proc_1", NULL), ENOENT);
    assert_int_equal(jint(jget(o, "hidden", NULL), f->hidden, "stat"), ENOENT);
    json_object *vis = jget(jget(o, "visible", NULL), f->visible, NULL);
    assert_int_equal(jint(vis, "stat", NULL), 0);
    assert_int_equal(jint(vis, "read", NULL), 0);
    assert_int_equal(jint(vis, "write", NULL), EROFS);
    assert_string_equal(jstr(o, "cwd", NULL), "/");
    /* Every mount is one we made: nothing of the host beyond what QEMU needs. */
    json_object *mounts = jget(o, "mounts", NULL);
    for (size_t i = 0; i < json_object_array_length(mounts); i++) {
        const char *m = json_object_get_string(json_object_array_get_idx(mounts, i));
        const char *allowed[] = {"/", "/dev", "/dev/pts", "/proc", "/tmp", "/usr", "/etc/ld.so.cache",
                                 f->probe, f->visible, NULL};
        if (!strv_contains(allowed, m))
            fail_msg("unexpected mount %s in the sandbox", m);
    }

    /* environment and rlimits */
    assert_joined(jget(o, "env", NULL), "LANG=C QV_PROBE=1");
    json_object *rl = jget(o, "rlimits", NULL);
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(rl, "nofile", NULL), 0)), 512);
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(rl, "nofile", NULL), 1)), 512);
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(rl, "memlock", NULL), 1)), 65536);
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(rl, "core", NULL), 0)), 0);
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(rl, "core", NULL), 1)), 0);

    /* threads still start, clone3 says ENOSYS, execve stays possible (QEMU's
     * own spawn=deny closes it after start-up) */
    assert_int_equal(jint(o, "thread", NULL), 0);
    assert_int_equal(jint(o, "clone3", NULL), ENOSYS);
    assert_int_equal(jint(o, "personality_query", NULL), 0);
    assert_int_equal(jint(o, "exec_self", NULL), 0);

    /* every entry of the deny list answers as documented */
    size_t n;
    const struct sandbox_denied_syscall *d = sandbox_seccomp_denied(&n);
    json_object *den = jget(o, "denied", NULL);
    size_t checked = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *v;
        if (!json_object_object_get_ex(den, d[i].name, &v))
            continue;
        if (strcmp(d[i].name, "clone3") == 0)
            continue;
        if (json_object_get_int(v) != d[i].err)
            fail_msg("%s answered %s, want %s", d[i].name, strerror(json_object_get_int(v)), strerror(d[i].err));
        checked++;
    }
    /* everything the probe could resolve on this architecture was checked */
    assert_int_equal(checked + 1, (size_t)json_object_object_length(den));
    assert_true(checked > 40);
    run_free(&r);
}

static void test_probe_kvm_node(void **state)
{
    struct fx *f = *state;
    if (!f->host.kvm || !f->host.mknod)
        skip();
    struct run r;
    run_init(f, &r, true);
    r.spec.kvm = true;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    assert_joined(jget(r.report, "dev", NULL), "full kvm null ptmx pts random urandom zero");
    /* owned by the VM's uid in the private /dev, whatever the host's mode */
    assert_int_equal(jint(r.report, "kvm_api", NULL), KVM_API_VERSION);
    run_free(&r);
}

/* Without our filter the same calls reach the kernel and fail differently:
 * proof that the EPERMs above come from the filter, not from missing caps. */
static void test_seccomp_off_kernel_answers(void **state)
{
    struct fx *f = *state;
    struct run r;
    run_init(f, &r, true);
    r.spec.enable &= ~SANDBOX_STEP(SANDBOX_SECCOMP);
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    json_object *o = r.report;
    assert_string_equal(jstr(o, "status", "Seccomp"), "0");
    assert_string_equal(jstr(o, "status", "NoNewPrivs"), "1");
    assert_int_equal(jint(o, "clone3", NULL), EINVAL);
    assert_int_equal(jint(o, "denied", "unshare"), EINVAL);
    assert_int_equal(jint(o, "denied", "setns"), EBADF);
    assert_int_equal(jint(o, "denied", "clone"), EINVAL);
    assert_int_equal(jint(o, "denied", "personality"), 0);
    assert_int_equal(jint(o, "denied", "userfaultfd"), EINVAL);
    run_free(&r);
}

static void test_extra_deny_and_userfaultfd(void **state)
{
    struct fx *f = *state;
    struct run r;
    run_init(f, &r, true);
    static const char *const extra[] = {"setns", "unshare", NULL};
    r.spec.extra_deny = extra;
    r.spec.allow_userfaultfd = true;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    /* allowed: the kernel's own answer to a bad flags word */
    assert_int_equal(jint(r.report, "denied", "userfaultfd"), EINVAL);
    assert_int_equal(jint(r.report, "denied", "setns"), EPERM);
    run_free(&r);

    run_init(f, &r, true);
    static const char *const bogus[] = {"no_such_call", NULL};
    r.spec.extra_deny = bogus;
    run_probe(f, &r);
    assert_int_equal(r.rc, -EINVAL);
    assert_non_null(strstr(r.err.msg, "\"no_such_call\" is not a system call"));
    run_free(&r);
}

static void test_chroot_whole_root(void **state)
{
    struct fx *f = *state;
    /* The bind of / is not recursive: the probe and the test files must be on it. */
    struct stat root, probe, hidden;
    if (stat("/", &root) < 0 || stat(f->probe, &probe) < 0 || stat(f->hidden, &hidden) < 0 ||
        probe.st_dev != root.st_dev || hidden.st_dev != root.st_dev)
        skip();
    /* the chroot gets a private /tmp over the host's: a probe under /tmp is hidden by it */
    if (strncmp(f->probe, "/tmp/", 5) == 0)
        skip();
    struct run r;
    run_init(f, &r, true);
    r.spec.chroot = "/";
    r.extra_args[0] = "--hidden";
    r.extra_args[1] = f->hidden;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    json_object *o = r.report;
    assert_int_equal(jint(o, "usr_write", NULL), EROFS);
    assert_joined(jget(o, "dev", NULL), "full null ptmx pts random urandom zero");
    char tmp_want[256];
    assert_joined(jget(o, "tmp", NULL), expected_tmp(f->probe, tmp_want, sizeof(tmp_want)));
    assert_int_equal(jint(o, "tun", NULL), ENOENT);
    /* the host's root, read-only, but not its submounts */
    assert_int_equal(jint(jget(o, "hidden", NULL), f->hidden, "stat"), 0);
    run_free(&r);
}

/* ---- failures come back precisely ---------------------------------------------------------- */

static void test_missing_executable(void **state)
{
    struct fx *f = *state;
    struct run r;
    run_init(f, &r, true);
    r.spec.path = "/nonexistent/qemu-system-x86_64";
    run_probe(f, &r);
    assert_int_equal(r.rc, -ENOENT);
    char want[256];
    snprintf(want, sizeof(want), "%s: sandbox: executable /nonexistent/qemu-system-x86_64: No such file or directory",
             f->name);
    assert_string_equal(r.err.msg, want);
    run_free(&r);
}

static void test_child_side_failures(void **state)
{
    struct fx *f = *state;
    struct run r;

    /* exec refused in the child: root may execute it, the VM's uid may not */
    char copy[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s/probe-0700", f->dir);
    _cleanup_free_ char *bin = NULL;
    size_t len;
    assert_int_equal(read_file(f->probe, 64 << 20, &bin, &len), 0);
    int fd = open(copy, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0700);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, bin, len), 0);
    close(fd);
    run_init(f, &r, true);
    r.spec.path = copy;
    run_probe(f, &r);
    assert_int_equal(r.rc, -EACCES);
    char want[PATH_MAX + 128];
    snprintf(want, sizeof(want), "%s: sandbox: exec %s: Permission denied", f->name, copy);
    assert_string_equal(r.err.msg, want);
    run_free(&r);

    /* a cgroup that vanished between creation and spawn */
    struct sandbox_cgroup cg = {.version = 2, .ndirs = 1, .dir = {{.path = "/nonexistent-cgroup/vm"}}};
    run_init(f, &r, true);
    r.spec.cgroup = &cg;
    run_probe(f, &r);
    assert_int_equal(r.rc, -ENOENT);
    snprintf(want, sizeof(want),
             "%s: sandbox: cgroup: /nonexistent-cgroup/vm/cgroup.procs: No such file or directory", f->name);
    assert_string_equal(r.err.msg, want);
    run_free(&r);

    /* a chroot tree without a mountpoint for an extra path: the child cannot
     * create one in the read-only tree */
    char tree[PATH_MAX], sub[PATH_MAX + 16];
    snprintf(tree, sizeof(tree), "%s/tree", f->dir);
    mkdir(tree, 0755);
    static const char *const subdirs[] = {"dev", "proc", "tmp"};
    for (size_t i = 0; i < ARRAY_SIZE(subdirs); i++) {
        snprintf(sub, sizeof(sub), "%s/%s", tree, subdirs[i]);
        mkdir(sub, 0755);
    }
    run_init(f, &r, true);
    r.spec.chroot = tree;
    const char *kernel[] = {f->visible, NULL};
    r.spec.ro_paths = kernel;
    run_probe(f, &r);
    assert_int_equal(r.rc, -EROFS);
    snprintf(want, sizeof(want), "%s: sandbox: mount namespace: mkdir /var: Read-only file system", f->name);
    assert_string_equal(r.err.msg, want);
    run_free(&r);

    /* a bad fd map never forks */
    run_init(f, &r, true);
    r.spec.stdout_fd = 987;
    run_probe(f, &r);
    assert_int_equal(r.rc, -EBADF);
    assert_non_null(strstr(r.err.msg, "sandbox: fds: fd 987 (for 1 in the child): Bad file descriptor"));
    run_free(&r);

    /* a read-only path that does not exist */
    run_init(f, &r, true);
    const char *ro[] = {"/nonexistent/vmlinuz", NULL};
    r.spec.ro_paths = ro;
    run_probe(f, &r);
    assert_int_equal(r.rc, -ENOENT);
    assert_non_null(strstr(r.err.msg, "sandbox: mount namespace: read-only path /nonexistent/vmlinuz: No such file"));
    run_free(&r);

    /* root is refused outright */
    run_init(f, &r, true);
    r.spec.uid = 0;
    run_probe(f, &r);
    assert_int_equal(r.rc, -EPERM);
    assert_non_null(strstr(r.err.msg, "QEMU never runs as root"));
    run_free(&r);

    /* /dev/net/tun is never handed out */
    run_init(f, &r, true);
    const char *dev[] = {"/dev/net/tun", NULL};
    r.spec.devices = dev;
    run_probe(f, &r);
    assert_int_equal(r.rc, -EPERM);
    run_free(&r);
}

/* A step the host cannot apply: an error when required, a warning otherwise. */
static void test_required_versus_best_effort(void **state)
{
    struct fx *f = *state;
    struct sandbox_host poor = f->host;
    poor.step[SANDBOX_USER].available = false;
    snprintf(poor.step[SANDBOX_USER].detail, sizeof(poor.step[SANDBOX_USER].detail), "pretend: not root");
    struct run r;

    run_init(f, &r, true);
    r.spec.host = &poor;
    r.spec.require = SANDBOX_STEP(SANDBOX_USER);
    run_probe(f, &r);
    assert_int_equal(r.rc, -EOPNOTSUPP);
    char want[256];
    snprintf(want, sizeof(want), "%s: sandbox: user is required but cannot be applied: pretend: not root", f->name);
    assert_string_equal(r.err.msg, want);
    run_free(&r);

    run_init(f, &r, true);
    r.spec.host = &poor;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    /* one warning for the user step, one for the cgroup nobody created */
    char *w = strv_join((const char *const *)r.warnings.v, "|");
    snprintf(want, sizeof(want), "%s: sandbox: user not applied: pretend: not root", f->name);
    assert_non_null(strstr(w, want));
    assert_non_null(strstr(w, "cgroup not applied: no cgroup was created"));
    free(w);
    /* the rest still applies: root, but without a single capability */
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(r.report, "ids", "uid"), 0)), 0);
    assert_string_equal(jstr(r.report, "status", "CapEff"), "0000000000000000");
    assert_string_equal(jstr(r.report, "status", "CapBnd"), "0000000000000000");
    run_free(&r);

    /* an rlimit above the hard limit without CAP_SYS_RESOURCE is clamped, or refused */
    struct sandbox_host capless = f->host;
    capless.cap_sys_resource = false;
    run_init(f, &r, true);
    r.spec.host = &capless;
    r.spec.nofile = capless.nofile_hard + 1000;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    json_object *nofile = jget(jget(r.report, "rlimits", NULL), "nofile", NULL);
    assert_int_equal(json_object_get_int64(json_object_array_get_idx(nofile, 1)), (int64_t)capless.nofile_hard);
    run_free(&r);
    run_init(f, &r, true);
    r.spec.host = &capless;
    r.spec.nofile = capless.nofile_hard + 1000;
    r.spec.require = SANDBOX_STEP(SANDBOX_RLIMITS);
    run_probe(f, &r);
    assert_int_equal(r.rc, -EOPNOTSUPP);
    assert_non_null(strstr(r.err.msg, "rlimits is required but cannot be applied: nofile"));
    run_free(&r);
}

/* keep_caps: a helper that stays root (virtiofsd) keeps exactly the given capabilities,
 * permitted, effective and bounding, and nothing inheritable or ambient; with the user
 * step enabled the spec is refused. */
static void test_keep_caps(void **state)
{
    struct fx *f = *state;
    struct run r;
    run_init(f, &r, true);
    r.spec.enable &= ~SANDBOX_STEP(SANDBOX_USER);
    r.spec.keep_caps = 1ull << CAP_CHOWN | 1ull << CAP_DAC_OVERRIDE | 1ull << CAP_SETUID;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(r.report, "ids", "uid"), 0)), 0);
    /* chown 0, dac_override 1, setuid 7 */
    assert_string_equal(jstr(r.report, "status", "CapEff"), "0000000000000083");
    assert_string_equal(jstr(r.report, "status", "CapPrm"), "0000000000000083");
    assert_string_equal(jstr(r.report, "status", "CapInh"), "0000000000000000");
    assert_string_equal(jstr(r.report, "status", "CapAmb"), "0000000000000000");
    if (f->host.step[SANDBOX_CAPS].available)
        assert_string_equal(jstr(r.report, "status", "CapBnd"), "0000000000000083");
    run_free(&r);

    run_init(f, &r, true);
    r.spec.keep_caps = 1ull << CAP_CHOWN;
    run_probe(f, &r);
    assert_int_equal(r.rc, -EINVAL);
    assert_non_null(strstr(r.err.msg, "capabilities are kept only for a program that stays root"));
    run_free(&r);
}

static void test_fd_map_conflicts(void **state)
{
    struct fx *f = *state;
    struct sandbox_spec s;
    sandbox_spec_init(&s);
    s.name = "fds";
    s.path = f->probe;
    const char *argv[] = {"sandbox_probe", "--noop", NULL};
    s.argv = argv;
    s.host = &f->host;
    s.enable &= ~SANDBOX_STEP(SANDBOX_USER);
    struct sandbox_fd fds[] = {{0, 5}, {1, 5}};
    s.fds = fds;
    s.nfds = 2;
    pid_t pid;
    struct qv_err e = {0};
    assert_int_equal(sandbox_spawn(&s, &pid, NULL, &e), -EINVAL);
    assert_string_equal(e.msg, "fds: sandbox: fds: fd 5 in the child is mapped twice");
    struct sandbox_fd fds2[] = {{0, 1}};
    s.fds = fds2;
    s.nfds = 1;
    s.stdout_fd = 2;
    assert_int_equal(sandbox_spawn(&s, &pid, NULL, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "fd 1 in the child is mapped twice"));
}

/* ---- dynamic uids ------------------------------------------------------------------------------ */

static void test_uid_leases(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct sandbox_uid_lease a, b, a2, a3;
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "web1", &a, &e), 0);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "db1", &b, &e), 0);
    assert_true(a.uid != b.uid);
    assert_true(a.uid >= UID_FIRST && a.uid <= UID_LAST && a.uid != 0);
    assert_int_equal(a.gid, a.uid);
    char holder[64];
    assert_int_equal(sandbox_uid_holder(f->lockdir, a.uid, holder, sizeof(holder)), 0);
    assert_string_equal(holder, "web1");

    /* held: the same name gets another uid (the next one after probing) */
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "web1", &a2, &e), 0);
    assert_true(a2.uid != a.uid);
    sandbox_uid_release(&a2);

    /* stable: released and asked again, web1 gets its uid back; the lock file
     * left behind without a holder is free */
    uid_t first = a.uid;
    sandbox_uid_release(&a);
    sandbox_uid_release(&a);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%u", f->lockdir, (unsigned)first);
    assert_true(access(path, F_OK) == 0);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "web1", &a3, &e), 0);
    assert_int_equal(a3.uid, first);
    sandbox_uid_release(&a3);
    sandbox_uid_release(&b);

    /* a range of one: taken means busy; root and nobody are never handed out */
    struct sandbox_uid_lease one, two;
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST + 5, UID_FIRST + 5, "x", &one, &e), 0);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST + 5, UID_FIRST + 5, "y", &two, &e), -EBUSY);
    sandbox_uid_release(&one);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, 0, 10, "x", &two, &e), -EINVAL);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, 65534, 65534, "x", &two, &e), -EINVAL);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, 65530, 65535, "x", &two, &e), -EINVAL);

    /* many names spread over the range without collisions */
    struct sandbox_uid_lease many[20];
    for (int i = 0; i < 20; i++) {
        char name[16];
        snprintf(name, sizeof(name), "vm%d", i);
        assert_int_equal(sandbox_uid_acquire(f->lockdir, 61184, 65519, name, &many[i], &e), 0);
        assert_true(many[i].uid >= 61184 && many[i].uid <= 65519);
        for (int k = 0; k < i; k++)
            assert_true(many[k].uid != many[i].uid);
    }
    for (int i = 0; i < 20; i++)
        sandbox_uid_release(&many[i]);

    /* names of existing users or groups are skipped: nobody's 65534 even inside a range */
    assert_int_equal(sandbox_user_lookup("nobody", &first, &a.gid, &e), 0);
    assert_int_equal(sandbox_user_lookup("root", &first, &a.gid, &e), -EPERM);
    assert_int_equal(sandbox_user_lookup("no-such-user-qv", &first, &a.gid, &e), -ENOENT);
    gid_t gid;
    assert_int_equal(sandbox_group_lookup("adm", &gid, &e), 0);
    assert_int_equal(gid, getgrnam("adm")->gr_gid);
    assert_int_equal(sandbox_group_lookup("root", &gid, &e), -EPERM);
    assert_int_equal(sandbox_group_lookup("no-such-group-qv", &gid, &e), -ENOENT);

    /* an id that names a user, or only a group, is never leased (NSS asked in a child) */
    assert_non_null(getpwuid(1));
    assert_int_equal(sandbox_uid_acquire(f->lockdir, 1, 1, "x", &two, &e), -EBUSY);
    gid_t only_group = 0;
    setgrent();
    for (struct group *g; !only_group && (g = getgrent());)
        if (g->gr_gid > 0 && g->gr_gid < 65534 && !getpwuid(g->gr_gid))
            only_group = g->gr_gid;
    endgrent();
    assert_true(only_group > 0);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, only_group, only_group, "x", &two, &e), -EBUSY);
    /* and the same range of one is free once nobody's name is on it */
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST + 7, UID_FIRST + 7, "x", &two, &e), 0);
    sandbox_uid_release(&two);
}

/* QEMU holds its own lock: the uid stays taken after the supervisor lets go, a
 * QEMU that drops its lock cannot free the supervisor's, and a uid with a live
 * process stays taken even without any lock. */
static void test_uid_held_by_child(void **state)
{
    struct fx *f = *state;
    struct run r;
    run_init(f, &r, true);
    r.keep_running = true;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    uid_t held = f->lease.uid;
    struct qv_err e = {0};
    struct sandbox_uid_lease again;

    /* a compromised QEMU drops the lock it inherited (same open file description) */
    assert_int_equal(flock(f->lease.hold_fd, LOCK_UN), 0);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, f->name, &again, &e), 0);
    assert_true(again.uid != held);
    sandbox_uid_release(&again);

    /* the supervisor goes too: no lock at all, but the process still runs as `held` */
    sandbox_uid_release(&f->lease);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, f->name, &again, &e), 0);
    assert_true(again.uid != held);
    sandbox_uid_release(&again);

    close(r.wait_w);
    r.wait_w = -1;
    reap(f, r.pid, 10000, NULL);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, f->name, &again, &e), 0);
    assert_int_equal(again.uid, held);
    sandbox_uid_release(&again);
    run_free(&r);
}

/* A supervisor that restarts holds its running QEMU's uid again, next to QEMU's lock. */
static void test_uid_rehold(void **state)
{
    struct fx *f = *state;
    struct run r;
    run_init(f, &r, true);
    r.keep_running = true;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    uid_t held = f->lease.uid;
    sandbox_uid_release(&f->lease);     /* the old supervisor dies */
    struct qv_err e = {0};
    struct sandbox_uid_lease back, other;
    assert_int_equal(sandbox_uid_rehold(f->lockdir, held, &back, &e), 0);
    assert_int_equal(back.uid, held);
    assert_int_equal(back.hold_fd, -1);
    close(r.wait_w);
    r.wait_w = -1;
    reap(f, r.pid, 10000, NULL);
    /* QEMU is gone, the new supervisor still holds it */
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, f->name, &other, &e), 0);
    assert_true(other.uid != held);
    sandbox_uid_release(&other);
    sandbox_uid_release(&back);
    assert_int_equal(sandbox_uid_rehold(f->lockdir, UID_FIRST + 3, &back, &e), -ENOENT);
    run_free(&r);
}

/* Any process with the uid makes it taken, lock file or not. */
static void test_uid_in_use_by_process(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct sandbox_uid_lease l;
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "squatted", &l, &e), 0);
    uid_t usual = l.uid;
    sandbox_uid_release(&l);
    int ready[2];
    assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setresuid(usual, usual, usual) < 0)
            _exit(1);
        close(ready[1]);
        pause();
        _exit(0);
    }
    f->running[f->nrunning++] = pid;
    track(pid, true);
    close(ready[1]);
    char c;
    assert_int_equal(read(ready[0], &c, 1), 0);
    close(ready[0]);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "squatted", &l, &e), 0);
    assert_true(l.uid != usual);
    sandbox_uid_release(&l);
    /* the squatter is someone else's (another root's QEMU): the lock file probed for
     * it, which names no holder, is not left behind; one that names a holder stays
     * for that holder's forget */
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%u", f->lockdir, (unsigned)usual);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "squatted", &l, &e), 0);
    assert_true(l.uid != usual);
    sandbox_uid_release(&l);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(errno, ENOENT);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "other\n", 6), 6);
    close(fd);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "squatted", &l, &e), 0);
    assert_true(l.uid != usual);
    sandbox_uid_release(&l);
    assert_int_equal(access(path, F_OK), 0);
    kill(pid, SIGKILL);
    reap(f, pid, 5000, NULL);
    assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, "squatted", &l, &e), 0);
    assert_int_equal(l.uid, usual);
    sandbox_uid_release(&l);
}

/* ---- introspection ------------------------------------------------------------------------------ */

static void test_inspect_running(void **state)
{
    struct fx *f = *state;
    struct run r;
    run_init(f, &r, true);
    r.keep_running = true;
    r.spec.nofile = 400;
    run_probe(f, &r);
    if (r.rc < 0)
        fail_msg("spawn: %s", r.err.msg);
    json_object *o = NULL;
    struct qv_err e = {0};
    assert_int_equal(sandbox_inspect(r.pid, "/sys/fs/cgroup", &o, &e), 0);
    assert_int_equal(json_object_get_int64(json_object_array_get_idx(jget(o, "uid", NULL), 1)), f->lease.uid);
    assert_true(json_object_get_boolean(jget(o, "capabilities", "none")));
    assert_string_equal(jstr(o, "capabilities", "bounding"), "0000000000000000");
    assert_true(json_object_get_boolean(jget(o, "no_new_privs", NULL)));
    assert_int_equal(jint(o, "seccomp", "mode"), 2);
    assert_int_equal(jint(o, "seccomp", "filters"), 1);
    assert_joined(jget(o, "namespaces", NULL), "mnt net");
    assert_joined(jget(o, "dev", NULL), "full null ptmx pts random urandom zero");
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(o, "rlimits", "nofile"), 0)), 400);
    assert_int_equal(json_object_get_int(json_object_array_get_idx(jget(o, "rlimits", "core"), 1)), 0);
    json_object_put(o);
    assert_int_equal(sandbox_inspect(999999999, "/sys/fs/cgroup", &o, &e), -ENOENT);
    close(r.wait_w);
    r.wait_w = -1;
    reap(f, r.pid, 10000, NULL);
    run_free(&r);
}

static void test_host_check(void **state)
{
    struct fx *f = *state;
    json_object *o = sandbox_host_json(&f->host);
    /* root on this machine: every step but (possibly) rlimit raising is available */
    for (int s = SANDBOX_MOUNT; s < SANDBOX_NSTEPS; s++)
        if (!f->host.step[s].available)
            fail_msg("%s: %s", sandbox_step_name(s), f->host.step[s].detail);
    assert_true(f->host.cgroup_version == 1 || f->host.cgroup_version == 2);
    printf("# host-check: %s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    unsigned m;
    struct qv_err e = {0};
    const char *names[] = {"user", "seccomp", NULL};
    assert_int_equal(sandbox_steps_parse(names, &m, &e), 0);
    assert_int_equal(m, SANDBOX_STEP(SANDBOX_USER) | SANDBOX_STEP(SANDBOX_SECCOMP));
    const char *bad[] = {"mount", "selinux", NULL};
    assert_int_equal(sandbox_steps_parse(bad, &m, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "\"selinux\" is not one of"));
}

/* ---- cost ------------------------------------------------------------------------------------------- */

static void test_spawn_overhead(void **state)
{
    struct fx *f = *state;
    const int n = 20;
    const char *argv[] = {"sandbox_probe", "--noop", NULL};
    uint64_t t0 = monotonic_ms();
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            execve(f->probe, (char *const *)argv, (char *[]){NULL});
            _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    uint64_t plain = monotonic_ms() - t0;
    struct qv_err e = {0};
    if (f->lease.lock_fd < 0)
        assert_int_equal(sandbox_uid_acquire(f->lockdir, UID_FIRST, UID_LAST, f->name, &f->lease, &e), 0);
    t0 = monotonic_ms();
    for (int i = 0; i < n; i++) {
        struct sandbox_spec s;
        sandbox_spec_init(&s);
        s.name = f->name;
        s.path = f->probe;
        s.argv = argv;
        s.host = &f->host;
        s.uid = f->lease.uid;
        s.gid = f->lease.gid;
        s.hold_fd = f->lease.hold_fd;
        s.enable &= ~SANDBOX_STEP(SANDBOX_CGROUP);
        pid_t pid;
        if (sandbox_spawn(&s, &pid, NULL, &e) < 0)
            fail_msg("%s", e.msg);
        track(pid, true);
        f->running[f->nrunning++] = pid;
        int st;
        reap(f, pid, 10000, &st);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    uint64_t boxed = monotonic_ms() - t0;
#ifdef __SANITIZE_ADDRESS__
    const char *build = "ASan build";
#else
    const char *build = "plain build";
#endif
    printf("# spawn to exit, mean of %d (%s): sandbox_spawn %.2f ms, plain fork+execve %.2f ms\n", n, build,
           (double)boxed / n, (double)plain / n);
}

int main(void)
{
    scratch_sweep("qvisor-sbtest");     /* what killed runs left behind */
    signal(SIGALRM, on_alarm);
    if (geteuid() != 0) {
        printf("1..0 # SKIP test_sandbox needs root\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_probe_confined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_kvm_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seccomp_off_kernel_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_extra_deny_and_userfaultfd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chroot_whole_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_executable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_child_side_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_required_versus_best_effort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fd_map_conflicts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uid_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uid_held_by_child, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uid_rehold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uid_in_use_by_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inspect_running, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spawn_overhead, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
