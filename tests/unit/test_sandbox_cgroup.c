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
static char emergency_dirs[12][PATH_MAX];

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

struct fx {
    char probe[PATH_MAX];
    char parent[64];            /* "qvisor-test-PID" under each v1 hierarchy */
    char fake[PATH_MAX];        /* fake v2 root */
    struct sandbox_host host;
    struct sandbox_uid_lease lease;
    char lockdir[PATH_MAX];
    struct sandbox_cgroup cgs[4];
    size_t ncgs;
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
    static const char *const hier[] = {"memory", "cpu", "pids", "blkio"};
    char p[PATH_MAX];
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
    for (size_t i = 0; i < f->ncgs; i++)
        if (sandbox_cgroup_remove(&f->cgs[i], 5000, &e) < 0)
            fprintf(stderr, "# teardown: %s\n", e.msg);
    static const char *const hier[] = {"memory", "cpu", "pids", "blkio"};
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
    assert_int_equal(cg->ndirs, 4);
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
    assert_int_equal(cg->ctls, 0xf);

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

    /* a probe spawned with the cgroup is in it, in every hierarchy */
    int wait_w;
    json_object *rep;
    pid_t pid = spawn_in(f, cg, &wait_w, &rep);
    const char *cgtext = json_object_get_string(jget(rep, "cgroup", NULL));
    static const char *const ctl[] = {"memory", "cpu", "pids", "blkio"};
    for (size_t i = 0; i < ARRAY_SIZE(ctl); i++) {
        char needle[128];
        snprintf(needle, sizeof(needle), ":%s:/%s/vm1\n", ctl[i], f->parent);
        if (!strstr(cgtext, needle))
            fail_msg("%s not in the probe's /proc/self/cgroup:\n%s", needle, cgtext);
    }
    json_object_put(rep);
    /* and /proc/PID tells the same, with the limits */
    assert_int_equal(sandbox_inspect(pid, "/sys/fs/cgroup", &o, &e), 0);
    snprintf(want, sizeof(want), "/%s/vm1", f->parent);
    assert_string_equal(json_object_get_string(jget(jget(o, "cgroup", "paths"), "memory", NULL)), want);
    assert_int_equal(jnum(jget(o, "cgroup", "limits"), "memory_max", NULL), (int64_t)(256 * MIB));
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

static void fake_v2(const char *root, const char *slice_controllers, const char *leaf_procs)
{
    put_file(root, "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n");
    put_file(root, "cgroup.subtree_control", "");
    put_file(root, "cgroup.procs", "");
    char slice[PATH_MAX], leaf[PATH_MAX];
    snprintf(slice, sizeof(slice), "%s/qvisor.slice", root);
    snprintf(leaf, sizeof(leaf), "%s/vm1", slice);
    mkdir(slice, 0755);
    put_file(slice, "cgroup.controllers", slice_controllers);
    put_file(slice, "cgroup.subtree_control", "");
    put_file(slice, "cgroup.procs", "");
    /* what the kernel would create with the directory */
    mkdir(leaf, 0755);
    put_file(leaf, "cgroup.procs", leaf_procs);
    put_file(leaf, "cgroup.controllers", "");
    put_file(leaf, "cgroup.subtree_control", "");
    put_file(leaf, "memory.max", "max\n");
    put_file(leaf, "memory.oom.group", "0\n");
    put_file(leaf, "memory.current", "1234\n");
    put_file(leaf, "memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n");
    put_file(leaf, "cpu.max", "max 100000\n");
    put_file(leaf, "cpu.weight", "100\n");
    put_file(leaf, "pids.max", "max\n");
    put_file(leaf, "pids.current", "0\n");
    put_file(leaf, "io.weight", "default 100\n");
    put_file(leaf, "io.max", "");
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
    char leaf[PATH_MAX], slice[PATH_MAX];
    snprintf(slice, sizeof(slice), "%s/qvisor.slice", root);
    snprintf(leaf, sizeof(leaf), "%s/vm1", slice);
    assert_string_equal(cg->dir[0].path, leaf);

    struct sandbox_io_limit io = {.major = 8, .minor = 16, .rbps = 1048576, .wiops = 100};
    struct sandbox_cgroup_limits l = test_limits(&io, 1);
    struct strv warnings = {0};
    if (sandbox_cgroup_create(cg, &l, &warnings, &e) < 0)
        fail_msg("%s", e.msg);
    assert_int_equal(warnings.n, 0);
    strv_free(&warnings);
    assert_file(root, "cgroup.subtree_control", "+memory +cpu +pids +io");
    assert_file(slice, "cgroup.subtree_control", "+memory +cpu +pids +io");
    assert_file(leaf, "memory.max", "268435456");
    assert_file(leaf, "memory.oom.group", "1");
    assert_file(leaf, "cpu.max", "150000 100000");
    assert_file(leaf, "cpu.weight", "200");
    assert_file(leaf, "pids.max", "64");
    assert_file(leaf, "io.weight", "default 300");
    assert_file(leaf, "io.max", "8:16 rbps=1048576 wiops=100");

    put_file(leaf, "memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 3\n");
    json_object *o = NULL;
    assert_int_equal(sandbox_cgroup_read(cg, &o, &e), 0);
    json_object *lim = jget(o, "limits", NULL);
    assert_int_equal(jnum(lim, "memory_max", NULL), (int64_t)(256 * MIB));
    assert_int_equal(jnum(lim, "memory_current", NULL), 1234);
    assert_int_equal(jnum(lim, "oom_kills", NULL), 3);
    assert_int_equal(jnum(lim, "cpu_quota_us", NULL), 150000);
    assert_int_equal(jnum(lim, "cpu_period_us", NULL), 100000);
    assert_int_equal(jnum(lim, "cpu_weight", NULL), 200);
    assert_int_equal(jnum(lim, "pids_max", NULL), 64);
    assert_int_equal(jnum(lim, "io_weight", NULL), 300);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(jget(lim, "io_max", NULL), 0)),
                        "8:16 rbps=1048576 wiops=100");
    json_object_put(o);
    uint64_t kills = 0;
    assert_int_equal(sandbox_cgroup_oom_kills(cg, &kills), 0);
    assert_int_equal(kills, 3);

    /* "max" reads back as unlimited */
    put_file(leaf, "memory.max", "max\n");
    assert_int_equal(sandbox_cgroup_read(cg, &o, &e), 0);
    json_object *v = (json_object *)1;
    assert_true(json_object_object_get_ex(jget(o, "limits", NULL), "memory_max", &v));
    assert_null(v);
    json_object_put(o);

    assert_int_equal(sandbox_cgroup_remove(cg, 2000, &e), 0);
    assert_int_equal(access(leaf, F_OK), -1);
    assert_int_equal(access(slice, F_OK), 0);
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
    assert_file(leaf, "memory.max", "268435456");
    assert_int_equal(cg->ctls, (1u << CG_MEMORY) | (1u << CG_CPU) | (1u << CG_PIDS));
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
        cmocka_unit_test_setup_teardown(test_v1_own_parent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_fake_tree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_missing_controller, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_fake_never_kills, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resolve_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cpu_quota_and_overhead, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
