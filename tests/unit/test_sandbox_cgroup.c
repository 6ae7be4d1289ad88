/* The VM's cgroup: cgroup v1 for real on this machine (create with limits, a
 * probe spawned through sandbox_spawn joins it, limits read back from the
 * cgroup and from /proc/PID, removal after exit and of leftovers), cgroup v2 on
 * a fake tree of plain files (what gets written where, controllers enabled
 * from the top, missing controllers reported, removal), and the sizing helpers.
 * Every cgroup made here is removed in teardown, and by the alarm handler if a
 * test hangs. */
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "sandbox/sandbox.h"
#include "sandbox_testlib.h"

#define MIB (1ull << 20)

/* ---- emergency cleanup: what the alarm handler must not leave behind ------------------ */
static pid_t emergency_pid;
static char emergency_dirs[32][PATH_MAX];

static void on_alarm(int sig)
{
    (void)sig;
    if (emergency_pid > 0)
        kill(emergency_pid, SIGKILL);
    for (int pass = 0; pass < 50; pass++) {
        bool left = false;
        for (size_t i = 0; i < ARRAY_SIZE(emergency_dirs); i++)
            if (emergency_dirs[i][0] && rmdir(emergency_dirs[i]) < 0 && errno != ENOENT)
                left = true;
        if (!left)
            break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    static const char msg[] = "not ok - test_sandbox_cgroup: timed out (alarm)\n";
    ssize_t w = write(1, msg, sizeof(msg) - 1);
    (void)w;
    _exit(1);
}

/* Leaves before parents: the order rmdir needs. */
static void track_dir(const char *path)
{
    for (size_t i = 0; i < ARRAY_SIZE(emergency_dirs); i++)
        if (!emergency_dirs[i][0]) {
            snprintf(emergency_dirs[i], PATH_MAX, "%s", path);
            return;
        }
}

/* ---- fixture ---------------------------------------------------------------------------- */

/* every v1 hierarchy the VM's cgroup may have a directory in */
static const char *const hier[] = {"memory", "cpu", "pids", "blkio", "cpuacct"};

struct fx {
    char probe[PATH_MAX];
    char parent[64];            /* "qvisor-test-PID" under each v1 hierarchy */
    char fake[PATH_MAX];        /* fake v2 root */
    struct sandbox_host host;
    struct sandbox_uid_lease lease;
    char lockdir[PATH_MAX];
    struct sandbox_cgroup cgs[4];
    size_t ncgs;
    const struct sandbox_cgroup *joined;    /* this test process is in its supervisor leaf */
    struct sandbox_cgroup_origin origin;
    pid_t child;
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

static int setup(void **state)
{
    alarm(60);
    struct fx *f = qv_xcalloc(1, sizeof(*f));
    find_probe(f->probe, sizeof(f->probe));
    snprintf(f->parent, sizeof(f->parent), "qvisor-test-%d", (int)getpid());
    if (scratch_mkdtemp("qvisor-cgtest", f->fake, sizeof(f->fake)) < 0) {
        free(f);
        return -1;
    }
    snprintf(f->lockdir, sizeof(f->lockdir), "%s/uids", f->fake);
    f->lease.lock_fd = -1;
    f->lease.hold_fd = -1;
    sandbox_host_check("/sys/fs/cgroup", &f->host);
    /* the v1 parents this test may create, for the alarm handler (after the leaves) */
    char p[PATH_MAX];
    for (size_t i = 0; i < ARRAY_SIZE(hier); i++) {
        snprintf(p, sizeof(p), "/sys/fs/cgroup/%s/%s/vm1/" SANDBOX_CGROUP_QEMU, hier[i], f->parent);
        track_dir(p);
        snprintf(p, sizeof(p), "/sys/fs/cgroup/%s/%s/vm1/" SANDBOX_CGROUP_SUPERVISOR, hier[i], f->parent);
        track_dir(p);
    }
    for (size_t i = 0; i < ARRAY_SIZE(hier); i++) {
        snprintf(p, sizeof(p), "/sys/fs/cgroup/%s/%s/vm1", hier[i], f->parent);
        track_dir(p);
    }
    for (size_t i = 0; i < ARRAY_SIZE(hier); i++) {
        snprintf(p, sizeof(p), "/sys/fs/cgroup/%s/%s", hier[i], f->parent);
        track_dir(p);
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    if (f->child > 0) {
        kill(f->child, SIGKILL);
        waitpid(f->child, NULL, 0);
    }
    struct qv_err e = {0};
    if (f->joined)
        sandbox_cgroup_leave_self(f->joined, &f->origin, &e);
    for (size_t i = 0; i < f->ncgs; i++)
        if (sandbox_cgroup_remove(&f->cgs[i], 5000, &e) < 0)
            fprintf(stderr, "# teardown: %s\n", e.msg);
    for (size_t i = 0; i < ARRAY_SIZE(hier); i++) {
        char p[PATH_MAX];
        snprintf(p, sizeof(p), "/sys/fs/cgroup/%s/%s", hier[i], f->parent);
        rmdir(p);
    }
    sandbox_uid_release(&f->lease);
    scratch_remove(f->fake);
    free(f);
    memset(emergency_dirs, 0, sizeof(emergency_dirs));
    emergency_pid = 0;
    alarm(0);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */

static void put_file(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, text, strlen(text)), 0);
    close(fd);
}

static void assert_file(const char *dir, const char *name, const char *want)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    _cleanup_free_ char *got = NULL;
    if (read_file(path, 1 << 16, &got, NULL) < 0)
        fail_msg("cannot read %s", path);
    if (strcmp(got, want) != 0)
        fail_msg("%s holds \"%s\", want \"%s\"", path, got, want);
}

static json_object *jget(json_object *o, const char *k1, const char *k2)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, k1, &v))
        fail_msg("no %s in %s", k1, json_object_to_json_string(o));
    if (k2 && !json_object_object_get_ex(v, k2, &v))
        fail_msg("no %s.%s in %s", k1, k2, json_object_to_json_string(o));
    return v;
}

static int64_t jnum(json_object *o, const char *k1, const char *k2)
{
    return json_object_get_int64(jget(o, k1, k2));
}

/* The whole disk under "/", for blkio throttling; false if / is not on one. */
static bool root_disk(unsigned *maj, unsigned *min)
{
    struct stat st;
    if (stat("/", &st) < 0 || major(st.st_dev) == 0)
        return false;
    char path[PATH_MAX], buf[64];
    snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/partition", major(st.st_dev), minor(st.st_dev));
    if (access(path, F_OK) == 0) {
        snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/../dev", major(st.st_dev), minor(st.st_dev));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return false;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            return false;
        buf[n] = '\0';
        return sscanf(buf, "%u:%u", maj, min) == 2;
    }
    snprintf(path, sizeof(path), "/sys/dev/block/%u:%u", major(st.st_dev), minor(st.st_dev));
    if (access(path, F_OK) < 0)
        return false;
    *maj = major(st.st_dev);
    *min = minor(st.st_dev);
    return true;
}

/* Spawns the probe into the cgroup; it reports, then waits for *wait_w to close. */
static pid_t spawn_in(struct fx *f, const struct sandbox_cgroup *cg, int *wait_w, json_object **report)
{
    struct qv_err e = {0};
    if (f->lease.lock_fd < 0)
        assert_int_equal(sandbox_uid_acquire(f->lockdir, 6400000, 6465535, f->parent, &f->lease, &e), 0);
    int rp[2], wp[2];
    assert_int_equal(pipe2(rp, O_CLOEXEC), 0);
    assert_int_equal(pipe2(wp, O_CLOEXEC), 0);
    struct sandbox_fd fds[] = {{rp[1], 3}, {wp[0], 4}};
    const char *argv[] = {"sandbox_probe", "--report", "3", "--wait", "4", NULL};
    struct sandbox_spec s;
    sandbox_spec_init(&s);
    s.name = "cgtest";
    s.path = f->probe;
    s.argv = argv;
    s.fds = fds;
    s.nfds = 2;
    s.host = &f->host;
    s.uid = f->lease.uid;
    s.gid = f->lease.gid;
    s.hold_fd = f->lease.hold_fd;
    s.cgroup = cg;
    s.require = SANDBOX_STEP(SANDBOX_CGROUP);
    pid_t pid;
    int r = sandbox_spawn(&s, &pid, NULL, &e);
    close(rp[1]);
    close(wp[0]);
    if (r < 0) {
        close(rp[0]);
        close(wp[1]);
        fail_msg("spawn: %s", e.msg);
    }
    f->child = pid;
    emergency_pid = pid;
    *wait_w = wp[1];
    struct buf b = {0};
    uint64_t deadline = monotonic_ms() + 20000;
    for (;;) {
        struct pollfd p = {.fd = rp[0], .events = POLLIN};
        uint64_t now = monotonic_ms();
        assert_true(now < deadline);
        if (poll(&p, 1, (int)(deadline - now)) <= 0)
            continue;
        char chunk[4096];
        ssize_t n = read(rp[0], chunk, sizeof(chunk));
        if (n <= 0)
            break;
        buf_add(&b, chunk, (size_t)n);
    }
    close(rp[0]);
    buf_adds(&b, "");
    assert_int_equal(json_parse_str("report", b.p, report, &e), 0);
    buf_free(&b);
    return pid;
}

static int reap(struct fx *f, pid_t pid)
{
    int st = 0;
    uint64_t deadline = monotonic_ms() + 10000;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (monotonic_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    f->child = 0;
    emergency_pid = 0;
    return st;
}

static struct sandbox_cgroup_limits test_limits(struct sandbox_io_limit *io, size_t nio)
{
    struct sandbox_cgroup_limits l = {
        .memory_max = 256 * MIB,
        .cpu_weight = 200,
        .pids_max = 64,
        .io_weight = 300,
        .io = io,
        .nio = nio,
    };
    struct qv_err e = {0};
    assert_int_equal(sandbox_parse_cpu_quota("150%", &l.cpu_quota_us, &l.cpu_period_us, &e), 0);
    return l;
}

/* ---- cgroup v1, for real -------------------------------------------------------------------- */

static void test_v1_lifecycle(void **state)
{
    struct fx *f = *state;
    if (f->host.cgroup_version != 1)
        skip();
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = "/sys/fs/cgroup", .parent = f->parent, .name = "vm1"};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    assert_int_equal(cg->version, 1);
    assert_true(cg->split);
    /* memory, cpu, pids, blkio, and cpuacct where it is mounted apart from cpu */
    assert_true(cg->ndirs == 4 || cg->ndirs == 5);
    char want[PATH_MAX];
    snprintf(want, sizeof(want), "/sys/fs/cgroup/memory/%s/vm1", f->parent);
    assert_string_equal(cg->dir[0].path, want);

    struct sandbox_io_limit io = {.rbps = 1048576, .wiops = 100};
    bool disk = root_disk(&io.major, &io.minor);
    struct sandbox_cgroup_limits l = test_limits(&io, disk ? 1 : 0);
    struct strv warnings = {0};
    if (sandbox_cgroup_create(cg, &l, &warnings, &e) < 0)
        fail_msg("%s", e.msg);
    for (size_t i = 0; i < warnings.n; i++)
        printf("# warning: %s\n", warnings.v[i]);
    assert_int_equal(warnings.n, 0);
    strv_free(&warnings);
    assert_int_equal(cg->ctls & 0xf, 0xf);
    /* QEMU's leaf and the supervisor's, in every hierarchy */
    for (size_t i = 0; i < cg->ndirs; i++) {
        char leaf[PATH_MAX];
        snprintf(leaf, sizeof(leaf), "%s/" SANDBOX_CGROUP_QEMU, cg->dir[i].path);
        assert_int_equal(access(leaf, F_OK), 0);
        snprintf(leaf, sizeof(leaf), "%s/" SANDBOX_CGROUP_SUPERVISOR, cg->dir[i].path);
        assert_int_equal(access(leaf, F_OK), 0);
    }

    /* limits as the kernel holds them */
    json_object *o = NULL;
    assert_int_equal(sandbox_cgroup_read(cg, &o, &e), 0);
    json_object *lim = jget(o, "limits", NULL);
    assert_int_equal(jnum(lim, "memory_max", NULL), (int64_t)(256 * MIB));
    assert_int_equal(jnum(lim, "cpu_quota_us", NULL), 150000);
    assert_int_equal(jnum(lim, "cpu_period_us", NULL), 100000);
    assert_int_equal(jnum(lim, "cpu_shares", NULL), 2048);
    assert_int_equal(jnum(lim, "pids_max", NULL), 64);
    assert_int_equal(jnum(lim, "io_weight", NULL), 300);
    if (disk) {
        char line[64];
        snprintf(line, sizeof(line), "%u:%u 1048576", io.major, io.minor);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(jget(lim, "io_read_bps", NULL), 0)),
                            line);
        snprintf(line, sizeof(line), "%u:%u 100", io.major, io.minor);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(jget(lim, "io_write_iops", NULL), 0)),
                            line);
    }
    json_object_put(o);
    /* where they are: QEMU's memory and pids on its leaf, cpu for the whole VM */
    char dir[PATH_MAX], txt[64];
    snprintf(dir, sizeof(dir), "/sys/fs/cgroup/memory/%s/vm1/" SANDBOX_CGROUP_QEMU, f->parent);
    assert_file(dir, "memory.limit_in_bytes", "268435456\n");
    snprintf(dir, sizeof(dir), "/sys/fs/cgroup/memory/%s/vm1/memory.limit_in_bytes", f->parent);
    assert_true(read_file_small(dir, txt, sizeof(txt)) >= 0);
    assert_true(strtoull(txt, NULL, 10) > 256 * MIB);
    snprintf(dir, sizeof(dir), "/sys/fs/cgroup/cpu/%s/vm1", f->parent);
    assert_file(dir, "cpu.cfs_quota_us", "150000\n");
    snprintf(dir, sizeof(dir), "/sys/fs/cgroup/cpu/%s/vm1/" SANDBOX_CGROUP_QEMU, f->parent);
    assert_file(dir, "cpu.cfs_quota_us", "-1\n");
    snprintf(dir, sizeof(dir), "/sys/fs/cgroup/pids/%s/vm1/" SANDBOX_CGROUP_QEMU, f->parent);
    assert_file(dir, "pids.max", "64\n");

    /* a probe spawned with the cgroup is in it, in every hierarchy */
    int wait_w;
    json_object *rep;
    pid_t pid = spawn_in(f, cg, &wait_w, &rep);
    const char *cgtext = json_object_get_string(jget(rep, "cgroup", NULL));
    static const char *const ctl[] = {"memory", "cpu", "pids", "blkio"};
    for (size_t i = 0; i < ARRAY_SIZE(ctl); i++) {
        char needle[128];
        snprintf(needle, sizeof(needle), ":%s:/%s/vm1/" SANDBOX_CGROUP_QEMU "\n", ctl[i], f->parent);
        if (!strstr(cgtext, needle))
            fail_msg("%s not in the probe's /proc/self/cgroup:\n%s", needle, cgtext);
    }
    json_object_put(rep);
    /* and /proc/PID tells the same, with the limits */
    assert_int_equal(sandbox_inspect(pid, "/sys/fs/cgroup", &o, &e), 0);
    snprintf(want, sizeof(want), "/%s/vm1/" SANDBOX_CGROUP_QEMU, f->parent);
    assert_string_equal(json_object_get_string(jget(jget(o, "cgroup", "paths"), "memory", NULL)), want);
    assert_int_equal(jnum(jget(o, "cgroup", "limits"), "memory_max", NULL), (int64_t)(256 * MIB));
    /* the cpu limits, on the VM's directory above QEMU's leaf, are the ones in force */
    assert_int_equal(jnum(jget(o, "cgroup", "limits"), "cpu_quota_us", NULL), 150000);
    assert_int_equal(jnum(jget(o, "cgroup", "limits"), "pids_current", NULL), 1);
    json_object_put(o);
    uint64_t kills = 99;
    assert_int_equal(sandbox_cgroup_oom_kills(cg, &kills), 0);
    assert_int_equal(kills, 0);

    /* an existing cgroup with a process in it is not reused */
    struct sandbox_cgroup again = *cg;
    assert_int_equal(sandbox_cgroup_create(&again, &l, NULL, &e), -EBUSY);
    assert_non_null(strstr(e.msg, "already has processes"));

    close(wait_w);
    int st = reap(f, pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* empty again: reused */
    assert_int_equal(sandbox_cgroup_create(&again, &l, NULL, &e), 0);
    assert_int_equal(sandbox_cgroup_remove(cg, 5000, &e), 0);
    for (size_t i = 0; i < cg->ndirs; i++)
        assert_int_equal(access(cg->dir[i].path, F_OK), -1);
    /* removing what is gone is fine */
    assert_int_equal(sandbox_cgroup_remove(cg, 5000, &e), 0);
}

static void test_v1_remove_kills_leftovers(void **state)
{
    struct fx *f = *state;
    if (f->host.cgroup_version != 1)
        skip();
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = "/sys/fs/cgroup", .parent = f->parent, .name = "vm1"};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    struct sandbox_cgroup_limits l = {.pids_max = 32};
    assert_int_equal(sandbox_cgroup_create(cg, &l, NULL, &e), 0);
    int wait_w;
    json_object *rep;
    pid_t pid = spawn_in(f, cg, &wait_w, &rep);
    json_object_put(rep);
    /* QEMU "exited" but something it left behind still runs in the cgroup */
    if (sandbox_cgroup_remove(cg, 5000, &e) < 0)
        fail_msg("%s", e.msg);
    int st = reap(f, pid);
    close(wait_w);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    for (size_t i = 0; i < cg->ndirs; i++)
        assert_int_equal(access(cg->dir[i].path, F_OK), -1);
}

static uint64_t cpuacct_usage(const char *dir)
{
    char path[PATH_MAX], txt[64];
    snprintf(path, sizeof(path), "%s/cpuacct.usage", dir);
    assert_true(read_file_small(path, txt, sizeof(txt)) >= 0);
    return strtoull(txt, NULL, 10);
}

/* The supervisor moves itself into its leaf: its CPU time is the VM's; it moves back
 * to where it was before the cgroup is removed. */
static void test_v1_supervisor_leaf(void **state)
{
    struct fx *f = *state;
    if (f->host.cgroup_version != 1)
        skip();
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = "/sys/fs/cgroup", .parent = f->parent, .name = "vm1"};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    assert_int_equal(sandbox_cgroup_create(cg, NULL, NULL, &e), 0);
    _cleanup_free_ char *before = NULL;
    assert_int_equal(read_file("/proc/self/cgroup", 1 << 16, &before, NULL), 0);
    if (sandbox_cgroup_join_self(cg, &f->origin, &e) < 0)
        fail_msg("%s", e.msg);
    f->joined = cg;
    _cleanup_free_ char *in = NULL;
    assert_int_equal(read_file("/proc/self/cgroup", 1 << 16, &in, NULL), 0);
    char needle[128];
    snprintf(needle, sizeof(needle), ":memory:/%s/vm1/" SANDBOX_CGROUP_SUPERVISOR "\n", f->parent);
    if (!strstr(in, needle))
        fail_msg("%s not in /proc/self/cgroup:\n%s", needle, in);
    /* work done now is the VM's: the VM's cpuacct.usage covers the leaf's */
    char vm[PATH_MAX], leaf[PATH_MAX];
    snprintf(vm, sizeof(vm), "/sys/fs/cgroup/cpuacct/%s/vm1", f->parent);
    snprintf(leaf, sizeof(leaf), "%s/" SANDBOX_CGROUP_SUPERVISOR, vm);
    if (access(vm, F_OK) == 0) {
        volatile uint64_t x = 0;
        for (uint64_t end = monotonic_ms() + 50; monotonic_ms() < end;)
            x++;
        uint64_t own = cpuacct_usage(leaf), all = cpuacct_usage(vm);
        assert_true(own >= 10 * 1000 * 1000);   /* 10 ms of the 50 at least */
        assert_true(all >= own);
    }
    /* a supervisor that has not left is never killed by the removal */
    assert_int_equal(sandbox_cgroup_remove(cg, 100, &e), -EBUSY);
    assert_int_equal(kill(getpid(), 0), 0);
    assert_int_equal(sandbox_cgroup_leave_self(cg, &f->origin, &e), 0);
    f->joined = NULL;
    _cleanup_free_ char *after = NULL;
    assert_int_equal(read_file("/proc/self/cgroup", 1 << 16, &after, NULL), 0);
    assert_string_equal(after, before);
    assert_int_equal(sandbox_cgroup_remove(cg, 5000, &e), 0);
    for (size_t i = 0; i < cg->ndirs; i++)
        assert_int_equal(access(cg->dir[i].path, F_OK), -1);
}

/* Without a parent the VM's cgroup goes below this process's own, per hierarchy. */
static void test_v1_own_parent(void **state)
{
    struct fx *f = *state;
    if (f->host.cgroup_version != 1)
        skip();
    struct qv_err e = {0};
    char name[64];
    snprintf(name, sizeof(name), "%s-own", f->parent);
    struct sandbox_cgroup_params p = {.root = "/sys/fs/cgroup", .name = name};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    _cleanup_free_ char *self = NULL;
    assert_int_equal(read_file("/proc/self/cgroup", 1 << 16, &self, NULL), 0);
    char *line = strstr(self, ":memory:");
    assert_non_null(line);
    line += strlen(":memory:");
    line[strcspn(line, "\n")] = '\0';
    char want[PATH_MAX];
    snprintf(want, sizeof(want), "/sys/fs/cgroup/memory%s%s%s", line, strcmp(line, "/") ? "/" : "", name);
    assert_string_equal(cg->dir[0].path, want);
    track_dir(cg->dir[0].path);
    assert_int_equal(sandbox_cgroup_create(cg, NULL, NULL, &e), 0);
    assert_int_equal(access(cg->dir[0].path, F_OK), 0);
    assert_int_equal(sandbox_cgroup_remove(cg, 5000, &e), 0);
    assert_int_equal(access(cg->dir[0].path, F_OK), -1);
}

/* ---- cgroup v2 on a fake tree ------------------------------------------------------------------ */

/* What the kernel shows in a v2 cgroup directory (every controller's files). */
static void fake_cgroup_dir(const char *dir, const char *controllers, const char *procs)
{
    mkdir(dir, 0755);
    put_file(dir, "cgroup.procs", procs);
    put_file(dir, "cgroup.controllers", controllers);
    put_file(dir, "cgroup.subtree_control", "");
    put_file(dir, "memory.max", "max\n");
    put_file(dir, "memory.oom.group", "0\n");
    put_file(dir, "memory.current", "1234\n");
    put_file(dir, "memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n");
    put_file(dir, "cpu.max", "max 100000\n");
    put_file(dir, "cpu.weight", "100\n");
    put_file(dir, "cpu.stat", "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n");
    put_file(dir, "pids.max", "max\n");
    put_file(dir, "pids.current", "0\n");
    put_file(dir, "io.weight", "default 100\n");
    put_file(dir, "io.max", "");
}

/* root/qvisor.slice/vm1/{qemu,supervisor}; qemu_procs goes into vm1/qemu. */
static void fake_v2(const char *root, const char *slice_controllers, const char *qemu_procs)
{
    put_file(root, "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
    put_file(root, "cgroup.subtree_control", "");
    put_file(root, "cgroup.procs", "");
    char slice[PATH_MAX], vm[PATH_MAX], leaf[PATH_MAX];
    snprintf(slice, sizeof(slice), "%s/qvisor.slice", root);
    snprintf(vm, sizeof(vm), "%s/vm1", slice);
    mkdir(slice, 0755);
    put_file(slice, "cgroup.controllers", slice_controllers);
    put_file(slice, "cgroup.subtree_control", "");
    put_file(slice, "cgroup.procs", "");
    /* what the kernel would create with the directories */
    fake_cgroup_dir(vm, slice_controllers, "");
    snprintf(leaf, sizeof(leaf), "%s/" SANDBOX_CGROUP_QEMU, vm);
    fake_cgroup_dir(leaf, slice_controllers, qemu_procs);
    snprintf(leaf, sizeof(leaf), "%s/" SANDBOX_CGROUP_SUPERVISOR, vm);
    fake_cgroup_dir(leaf, slice_controllers, "");
}

static void test_v2_fake_tree(void **state)
{
    struct fx *f = *state;
    char root[PATH_MAX];
    snprintf(root, sizeof(root), "%s/cgroup", f->fake);
    mkdir(root, 0755);
    fake_v2(root, "cpu io memory pids\n", "");
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = root, .parent = "/qvisor.slice/", .name = "vm1"};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    assert_int_equal(cg->version, 2);
    assert_int_equal(cg->ndirs, 1);
    assert_true(cg->split);
    char vm[PATH_MAX], slice[PATH_MAX], qemu[PATH_MAX], sup[PATH_MAX];
    snprintf(slice, sizeof(slice), "%s/qvisor.slice", root);
    snprintf(vm, sizeof(vm), "%s/vm1", slice);
    snprintf(qemu, sizeof(qemu), "%s/" SANDBOX_CGROUP_QEMU, vm);
    snprintf(sup, sizeof(sup), "%s/" SANDBOX_CGROUP_SUPERVISOR, vm);
    assert_string_equal(cg->dir[0].path, vm);

    struct sandbox_io_limit io = {.major = 8, .minor = 16, .rbps = 1048576, .wiops = 100};
    struct sandbox_cgroup_limits l = test_limits(&io, 1);
    struct strv warnings = {0};
    if (sandbox_cgroup_create(cg, &l, &warnings, &e) < 0)
        fail_msg("%s", e.msg);
    for (size_t i = 0; i < warnings.n; i++)
        printf("# warning: %s\n", warnings.v[i]);
    assert_int_equal(warnings.n, 0);
    strv_free(&warnings);
    /* controllers pass down to the VM's directory, whose processes are all in leaves */
    assert_file(root, "cgroup.subtree_control", "+memory +cpu +pids +io");
    assert_file(slice, "cgroup.subtree_control", "+memory +cpu +pids +io");
    assert_file(vm, "cgroup.subtree_control", "+memory +cpu +pids +io");
    assert_file(qemu, "cgroup.subtree_control", "");
    /* QEMU's own limits on its leaf, the OOM group with them */
    assert_file(qemu, "memory.max", "268435456");
    assert_file(qemu, "memory.oom.group", "1");
    assert_file(qemu, "pids.max", "64");
    assert_file(vm, "memory.max", "max\n");
    assert_file(vm, "memory.oom.group", "0\n");
    assert_file(vm, "pids.max", "max\n");
    /* cpu and io for the whole VM, the supervisor's work included */
    assert_file(vm, "cpu.max", "150000 100000");
    assert_file(vm, "cpu.weight", "200");
    assert_file(vm, "io.weight", "default 300");
    assert_file(vm, "io.max", "8:16 rbps=1048576 wiops=100");
    assert_file(qemu, "cpu.max", "max 100000\n");
    assert_file(sup, "cpu.max", "max 100000\n");
    assert_file(sup, "memory.max", "max\n");

    /* QEMU joins its leaf; the VM's directory holds no process */
    assert_int_equal(sandbox_cgroup_attach(cg, 4242, &e), 0);
    assert_file(qemu, "cgroup.procs", "4242");
    assert_file(vm, "cgroup.procs", "");

    put_file(qemu, "memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 3\n");
    put_file(vm, "cpu.stat", "usage_usec 777000\nuser_usec 700000\nsystem_usec 77000\n");
    json_object *o = NULL;
    assert_int_equal(sandbox_cgroup_read(cg, &o, &e), 0);
    json_object *lim = jget(o, "limits", NULL);
    assert_int_equal(jnum(lim, "memory_max", NULL), (int64_t)(256 * MIB));
    assert_int_equal(jnum(lim, "memory_current", NULL), 1234);
    assert_int_equal(jnum(lim, "oom_kills", NULL), 3);
    assert_int_equal(jnum(lim, "cpu_quota_us", NULL), 150000);
    assert_int_equal(jnum(lim, "cpu_period_us", NULL), 100000);
    assert_int_equal(jnum(lim, "cpu_weight", NULL), 200);
    assert_int_equal(jnum(lim, "cpu_usage_us", NULL), 777000);  /* the VM's, both leaves */
    assert_int_equal(jnum(lim, "pids_max", NULL), 64);
    assert_int_equal(jnum(lim, "io_weight", NULL), 300);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(jget(lim, "io_max", NULL), 0)),
                        "8:16 rbps=1048576 wiops=100");
    json_object_put(o);
    uint64_t kills = 0;
    assert_int_equal(sandbox_cgroup_oom_kills(cg, &kills), 0);
    assert_int_equal(kills, 3);

    /* "max" reads back as unlimited */
    put_file(qemu, "memory.max", "max\n");
    assert_int_equal(sandbox_cgroup_read(cg, &o, &e), 0);
    json_object *v = (json_object *)1;
    assert_true(json_object_object_get_ex(jget(o, "limits", NULL), "memory_max", &v));
    assert_null(v);
    json_object_put(o);

    /* an existing VM directory is reused for a next start */
    struct sandbox_cgroup again = *cg;
    put_file(qemu, "cgroup.procs", "");
    assert_int_equal(sandbox_cgroup_create(&again, &l, NULL, &e), 0);

    assert_int_equal(sandbox_cgroup_remove(cg, 2000, &e), 0);
    assert_int_equal(access(qemu, F_OK), -1);
    assert_int_equal(access(sup, F_OK), -1);
    assert_int_equal(access(vm, F_OK), -1);
    assert_int_equal(access(slice, F_OK), 0);
}

/* The supervisor moves itself into its leaf and back to where it was (v2: "0::PATH"). */
static void test_v2_supervisor_leaf(void **state)
{
    struct fx *f = *state;
    char root[PATH_MAX];
    snprintf(root, sizeof(root), "%s/cgroup", f->fake);
    mkdir(root, 0755);
    fake_v2(root, "cpu io memory pids\n", "");
    char own[PATH_MAX], origin[PATH_MAX];
    if (proc_cgroup_path(0, NULL, own, sizeof(own)) < 0)
        skip();     /* no "0::" line: a kernel without cgroup v2 at all */
    /* this process's own v2 cgroup, as the fake tree shows it */
    snprintf(origin, sizeof(origin), "%s%s", root, strcmp(own, "/") == 0 ? "" : own);
    assert_int_equal(mkdir_p(origin, 0755), 0);
    put_file(origin, "cgroup.procs", "");
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = root, .parent = "qvisor.slice", .name = "vm1"};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    assert_int_equal(sandbox_cgroup_create(cg, NULL, NULL, &e), 0);
    char pid[32], sup[PATH_MAX], vm[PATH_MAX];
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    snprintf(vm, sizeof(vm), "%s/qvisor.slice/vm1", root);
    snprintf(sup, sizeof(sup), "%s/" SANDBOX_CGROUP_SUPERVISOR, vm);
    assert_int_equal(sandbox_cgroup_join_self(cg, &f->origin, &e), 0);
    assert_file(sup, "cgroup.procs", pid);
    assert_file(vm, "cgroup.procs", "");
    assert_int_equal(f->origin.ndirs, 1);
    assert_string_equal(f->origin.path[0], origin);
    assert_int_equal(sandbox_cgroup_leave_self(cg, &f->origin, &e), 0);
    assert_file(origin, "cgroup.procs", pid);
    /* where it came from is gone: the root takes it */
    put_file(root, "cgroup.procs", "");
    snprintf(f->origin.path[0], PATH_MAX, "%s/gone", root);
    assert_int_equal(sandbox_cgroup_leave_self(cg, &f->origin, &e), 0);
    assert_file(root, "cgroup.procs", pid);
}

static void test_v2_missing_controller(void **state)
{
    struct fx *f = *state;
    char root[PATH_MAX];
    snprintf(root, sizeof(root), "%s/cgroup", f->fake);
    mkdir(root, 0755);
    fake_v2(root, "cpu memory pids\n", "");
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = root, .parent = "qvisor.slice", .name = "vm1"};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    struct sandbox_io_limit io = {.major = 8, .minor = 0, .wbps = 4096};
    struct sandbox_cgroup_limits l = test_limits(&io, 1);
    struct strv warnings = {0};
    assert_int_equal(sandbox_cgroup_create(cg, &l, &warnings, &e), 0);
    char *w = strv_join((const char *const *)warnings.v, "|");
    assert_non_null(strstr(w, "controller io is not available in"));
    assert_non_null(strstr(w, "no io controller: its limits are not applied"));
    free(w);
    strv_free(&warnings);
    char leaf[PATH_MAX];
    snprintf(leaf, sizeof(leaf), "%s/qvisor.slice/vm1", root);
    assert_file(leaf, "io.max", "");
    assert_file(leaf, "memory.max", "max\n");
    assert_file(leaf, SANDBOX_CGROUP_QEMU "/memory.max", "268435456");
    assert_int_equal(cg->ctls, (1u << CG_MEMORY) | (1u << CG_CPU) | (1u << CG_PIDS) | (1u << CG_CPUACCT));
}

/* A systemd unit's delegated cgroup (v2): QEMU in UNIT/qemu, not split, and nothing
 * enabled on the way down, so systemd can restart the service into UNIT itself. */
static void test_v2_delegated(void **state)
{
    struct fx *f = *state;
    char root[PATH_MAX], unit[PATH_MAX];
    snprintf(root, sizeof(root), "%s/cgroup", f->fake);
    mkdir(root, 0755);
    fake_v2(root, "cpu io memory pids\n", "");
    snprintf(unit, sizeof(unit), "%s/qvisor.slice/vm1", root);
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = root, .parent = "qvisor.slice/vm1", .name = SANDBOX_CGROUP_QEMU,
                                      .delegated = true};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    assert_true(cg->delegated);
    assert_false(cg->split);
    assert_int_equal(cg->ndirs, 1);
    char want[PATH_MAX];
    snprintf(want, sizeof(want), "%s/" SANDBOX_CGROUP_QEMU, unit);
    assert_string_equal(cg->dir[0].path, want);
    /* the qemu leaf passes nothing on: only accounting */
    put_file(want, "cgroup.controllers", "");
    struct strv warnings = {0};
    assert_int_equal(sandbox_cgroup_create(cg, NULL, &warnings, &e), 0);
    assert_int_equal(warnings.n, 0);
    strv_free(&warnings);
    assert_file(root, "cgroup.subtree_control", "");
    assert_file(root, "qvisor.slice/cgroup.subtree_control", "");
    assert_file(unit, "cgroup.subtree_control", "");
    assert_int_equal(cg->ctls, 1u << CG_CPUACCT);
    char leaf[PATH_MAX];
    assert_int_equal(sandbox_cgroup_leaf(cg, 0, CG_LEAF_QEMU, leaf, sizeof(leaf)), 0);
    assert_string_equal(leaf, want);
}

/* A fake tree's process list is never acted on: only a real cgroupfs is killed in. */
static void test_v2_fake_never_kills(void **state)
{
    struct fx *f = *state;
    pid_t sleeper = fork();
    assert_true(sleeper >= 0);
    if (sleeper == 0) {
        pause();
        _exit(0);
    }
    f->child = sleeper;
    emergency_pid = sleeper;
    char root[PATH_MAX], procs[32];
    snprintf(root, sizeof(root), "%s/cgroup", f->fake);
    mkdir(root, 0755);
    snprintf(procs, sizeof(procs), "%d\n", (int)sleeper);
    fake_v2(root, "cpu io memory pids\n", procs);
    struct qv_err e = {0};
    struct sandbox_cgroup_params p = {.root = root, .parent = "qvisor.slice", .name = "vm1"};
    struct sandbox_cgroup *cg = &f->cgs[f->ncgs++];
    assert_int_equal(sandbox_cgroup_resolve(&p, cg, &e), 0);
    assert_int_equal(sandbox_cgroup_create(cg, NULL, NULL, &e), -EBUSY);
    assert_int_equal(sandbox_cgroup_remove(cg, 2000, &e), 0);
    assert_int_equal(waitpid(sleeper, NULL, WNOHANG), 0);
    assert_int_equal(kill(sleeper, 0), 0);
}

static void test_resolve_errors(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct sandbox_cgroup cg;
    struct sandbox_cgroup_params p = {.root = f->fake, .parent = "x", .name = "vm1"};
    assert_int_equal(sandbox_cgroup_resolve(&p, &cg, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "no cgroup hierarchy under"));
    p.root = "/sys/fs/cgroup";
    p.name = "../etc";
    assert_int_equal(sandbox_cgroup_resolve(&p, &cg, &e), -EINVAL);
    p.name = "vm1";
    p.parent = "a/../../b";
    assert_int_equal(sandbox_cgroup_resolve(&p, &cg, &e), -EINVAL);
}

/* ---- sizing ------------------------------------------------------------------------------------- */

static void test_cpu_quota_and_overhead(void **state)
{
    (void)state;
    struct qv_err e = {0};
    uint64_t q, per;
    assert_int_equal(sandbox_parse_cpu_quota("150%", &q, &per, &e), 0);
    assert_int_equal(q, 150000);
    assert_int_equal(per, 100000);
    assert_int_equal(sandbox_parse_cpu_quota("12.5%", &q, &per, &e), 0);
    assert_int_equal(q, 12500);
    assert_int_equal(sandbox_parse_cpu_quota("0.1%", &q, &per, &e), 0);
    assert_int_equal(q, 1000);
    assert_int_equal(sandbox_parse_cpu_quota("max", &q, &per, &e), 0);
    assert_int_equal(q, 0);
    assert_int_equal(sandbox_parse_cpu_quota("150", &q, &per, &e), -EINVAL);
    assert_int_equal(sandbox_parse_cpu_quota("-5%", &q, &per, &e), -EINVAL);
    assert_int_equal(sandbox_parse_cpu_quota("lots", &q, &per, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "not a CPU quota"));

    uint64_t small = sandbox_memory_overhead(64 * MIB, 1, false);
    uint64_t big = sandbox_memory_overhead(16384 * MIB, 8, false);
    assert_true(small >= 256 * MIB);
    assert_true(big > small);
    assert_true(sandbox_memory_overhead(64 * MIB, 1, true) > small);
}

int main(void)
{
    scratch_sweep("qvisor-cgtest");     /* what killed runs left behind */
    signal(SIGALRM, on_alarm);
    if (geteuid() != 0) {
        printf("1..0 # SKIP test_sandbox_cgroup needs root\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v1_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_remove_kills_leftovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_supervisor_leaf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v1_own_parent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_fake_tree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_supervisor_leaf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_missing_controller, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_fake_never_kills, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_delegated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resolve_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cpu_quota_and_overhead, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
