/* Golden tests of VM definitions and the QEMU command line.
 *
 * tests/golden/NAME.json is a definition; NAME.argv the command line it must produce
 * (with this machine's host facts, fixed below), or NAME.error the one-line error it
 * must be rejected with. Every valid definition is also started by the real
 * qemu-system-x86_64 (TCG, -S, resources opened by the launcher's own code) and must
 * reach the "prelaunch" state: every command line we generate is accepted by QEMU.
 *
 * QVISOR_GOLDEN_UPDATE=1 rewrites the .argv files (review the diff). */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <setjmp.h>
#include <cmocka.h>

#include "launcher/launcher.h"
#include "qmp/qmp.h"

#define IMAGES "/tmp/qvisor-golden"

static char golden_dir[PATH_MAX];
static struct strv valid, invalid;
static int old_hugepages = -1;

static struct host_facts golden_facts(void)
{
    struct host_facts f = {
        .qemu_major = 7, .qemu_minor = 2, .qemu_micro = 0,
        .io_uring = true, .kvm_usable = true, .vhost_net = false, .accel_override = ACCEL_TCG,
    };
    snprintf(f.qemu, sizeof(f.qemu), "/usr/bin/qemu-system-x86_64");
    snprintf(f.ovmf_code, sizeof(f.ovmf_code), "/usr/share/OVMF/OVMF_CODE_4M.fd");
    snprintf(f.ovmf_vars, sizeof(f.ovmf_vars), "/usr/share/OVMF/OVMF_VARS_4M.fd");
    return f;
}

static void run_or_die(const char *const *argv)
{
    char *out = NULL;
    int r = run_program(argv, 30000, &out);
    if (r != 0) {
        fprintf(stderr, "%s failed (%d): %s\n", argv[0], r, out ? out : "");
        abort();
    }
    free(out);
}

static void make_raw(const char *name, int mib)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), IMAGES "/%s", name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)mib << 20), 0);
    close(fd);
}

static const char *build_dir(void)
{
    const char *b = getenv("QVISOR_TEST_BUILD");
    return b && *b ? b : "build";
}

static void read_names(void)
{
    DIR *d = opendir(golden_dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        char name[256], err[PATH_MAX];
        snprintf(name, sizeof(name), "%.*s", (int)(n - 5), de->d_name);
        snprintf(err, sizeof(err), "%s/%s.error", golden_dir, name);
        strv_push(path_exists(err) ? &invalid : &valid, name);
    }
    closedir(d);
    strv_sort(&valid);
    strv_sort(&invalid);
}

static int setup(void **state)
{
    (void)state;
    /* a private network namespace for the taps bridge/network NICs need */
    if (unshare(CLONE_NEWNET) < 0)
        return -1;
    mkdir_p(IMAGES, 0755);
    make_raw("a.raw", 16);
    make_raw("b.raw", 16);
    make_raw("cd.iso", 1);
    for (int i = 0; i < 12; i++) {
        char n[16];
        snprintf(n, sizeof(n), "d%d.raw", i);
        make_raw(n, 1);
    }
    const char *qimg[] = {"qemu-img", "create", "-q", "-f", "qcow2", IMAGES "/a.qcow2", "16M", NULL};
    run_or_die(qimg);
    static const char *const guest_files[] = {"vmlinux", "initrd.img"};
    for (size_t i = 0; i < ARRAY_SIZE(guest_files); i++) {
        char target[PATH_MAX], link[PATH_MAX], abs[PATH_MAX];
        snprintf(target, sizeof(target), "%s/guest/%s", build_dir(), guest_files[i]);
        snprintf(link, sizeof(link), IMAGES "/%s", guest_files[i]);
        unlink(link);
        if (symlink(realpath(target, abs) ? abs : target, link) < 0)
            return -1;
    }
    /* the hugepages definition needs 64 free 2 MiB pages */
    char *s = NULL;
    if (read_file("/proc/sys/vm/nr_hugepages", 64, &s, NULL) == 0) {
        old_hugepages = atoi(s);
        free(s);
        if (old_hugepages < 80) {
            int fd = open("/proc/sys/vm/nr_hugepages", O_WRONLY | O_CLOEXEC);
            if (fd >= 0) {
                write_all(fd, "80", 2);
                close(fd);
            }
        }
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    const char *rm[] = {"rm", "-rf", IMAGES, NULL};
    run_program(rm, 10000, NULL);
    if (old_hugepages >= 0 && old_hugepages < 80) {
        char v[16];
        int n = snprintf(v, sizeof(v), "%d", old_hugepages);
        int fd = open("/proc/sys/vm/nr_hugepages", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            write_all(fd, v, (size_t)n);
            close(fd);
        }
    }
    return 0;
}

/* A fresh root under /tmp for one definition, removed at the end. */
struct root {
    char dir[64];
    struct qv_paths paths;
};

static void root_make(struct root *r)
{
    snprintf(r->dir, sizeof(r->dir), "/tmp/qvgold.XXXXXX");
    assert_non_null(mkdtemp(r->dir));
    struct qv_err e = {0};
    assert_int_equal(qv_paths_init(&r->paths, r->dir, &e), 0);
}

static void root_remove(struct root *r)
{
    const char *rm[] = {"rm", "-rf", r->dir, NULL};
    run_program(rm, 10000, NULL);
}

static json_object *load_golden(const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s.json", golden_dir, name);
    json_object *o = NULL;
    struct qv_err e = {0};
    if (json_read_file(path, &o, &e) < 0)
        fail_msg("%s", e.msg);
    return o;
}

static char *argv_text(const struct launch_plan *p)
{
    struct buf b = {0};
    buf_adds(&b, "");
    for (size_t i = 0; i < p->argv.n; i++)
        buf_printf(&b, "%s\n", p->argv.v[i]);
    return b.p;
}

/* Defines `name` in a fresh root as `qvisor define` would, and builds its plan. */
static void define_and_plan(const char *name, struct root *r, struct vm_def *d, struct launch_plan *plan)
{
    json_object *o = load_golden(name);
    struct qv_err e = {0};
    root_make(r);
    if (vm_define(&r->paths, o, false, d, &e) < 0)
        fail_msg("%s: define: %s", name, e.msg);
    json_object_put(o);
    struct host_facts f = golden_facts();
    if (build_launch_plan(d, &f, plan, &e) < 0)
        fail_msg("%s: plan: %s", name, e.msg);
}

static void test_golden_argv(void **state)
{
    const char *name = *state;
    bool update = getenv("QVISOR_GOLDEN_UPDATE") != NULL;
    struct root r;
    struct vm_def d;
    struct launch_plan plan;
    define_and_plan(name, &r, &d, &plan);
    char *got = argv_text(&plan);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s.argv", golden_dir, name);
    bool same = true;
    if (update) {
        struct qv_err e = {0};
        assert_int_equal(write_file_atomic(path, got, strlen(got), 0644, &e), 0);
    } else {
        char *want = NULL;
        same = read_file(path, 1 << 20, &want, NULL) == 0 && strcmp(want, got) == 0;
        if (!same)
            print_error("%s: argv differs from %s\n--- got:\n%s", name, path, got);
        free(want);
    }
    free(got);
    launch_plan_free(&plan);
    vm_def_free(&d);
    root_remove(&r);
    assert_true(same);
}

/* define -> show -> define is a fixed point, and the normalised form parses to the
 * same normalised form. */
static void test_golden_roundtrip(void **state)
{
    const char *name = *state;
    struct root r;
    struct vm_def d, d2;
    struct launch_plan plan;
    define_and_plan(name, &r, &d, &plan);
    json_object *first = vm_def_to_json(&d);
    char *s1 = json_pretty(first);
    struct qv_err e = {0};
    /* undefine, then define the shown form again: same text */
    assert_int_equal(vm_undefine(&r.paths, d.name, &e), 0);
    if (vm_define(&r.paths, first, false, &d2, &e) < 0)
        fail_msg("%s: define of the shown form: %s", name, e.msg);
    json_object *second = vm_def_to_json(&d2);
    char *s2 = json_pretty(second);
    bool same = strcmp(s1, s2) == 0;
    if (!same)
        print_error("%s: not a fixed point:\n%s\n---\n%s", name, s1, s2);
    free(s1);
    free(s2);
    json_object_put(first);
    json_object_put(second);
    vm_def_free(&d2);
    launch_plan_free(&plan);
    vm_def_free(&d);
    root_remove(&r);
    assert_true(same);
}

static bool dir_is_empty_tree(const char *dir)
{
    /* only directories (and the define lock) may exist: no definition was written */
    char vms[PATH_MAX];
    snprintf(vms, sizeof(vms), "%s/etc/qvisor/vms", dir);
    DIR *d = opendir(vms);
    if (!d)
        return true;
    struct dirent *de;
    bool empty = true;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            empty = false;
    closedir(d);
    return empty;
}

static void test_golden_error(void **state)
{
    int mismatches = 0;
    const char *name = *state;
    json_object *o = load_golden(name);
    char path[PATH_MAX], *want = NULL;
    snprintf(path, sizeof(path), "%s/%s.error", golden_dir, name);
    assert_int_equal(read_file(path, 4096, &want, NULL), 0);
    want[strcspn(want, "\n")] = '\0';
    struct root r;
    root_make(&r);
    struct vm_def d;
    struct qv_err e = {0};
    int rc = vm_define(&r.paths, o, false, &d, &e);
    if (rc == 0) {
        /* valid as a definition: the error must come from the command line */
        struct host_facts f = golden_facts();
        struct launch_plan plan;
        rc = build_launch_plan(&d, &f, &plan, &e);
        if (rc == 0)
            launch_plan_free(&plan);
        vm_def_free(&d);
    } else if (!dir_is_empty_tree(r.dir)) {
        print_error("%s: a rejected definition left files behind\n", name);
        mismatches++;
    }
    if (rc != -EINVAL || strcmp(e.msg, want) != 0) {
        print_error("%s: want EINVAL \"%s\"\n     got %d \"%s\"\n", name, want, rc, e.msg);
        mismatches++;
    }
    free(want);
    json_object_put(o);
    root_remove(&r);
    assert_int_equal(mismatches, 0);
}

static int open_test_tap(void *opaque, const struct vm_def *d, size_t nic, int *fds, struct qv_err *e)
{
    (void)opaque;
    char name[IFNAMSIZ];
    snprintf(name, sizeof(name), "qvg%zu", nic);
    for (int q = 0; q < d->nics[nic].queues; q++) {
        fds[q] = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        if (fds[q] < 0)
            return qv_failerr(e, -errno, "/dev/net/tun");
        struct ifreq ifr = {0};
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (d->nics[nic].queues > 1 ? IFF_MULTI_QUEUE : 0);
        if (ioctl(fds[q], TUNSETIFF, &ifr) < 0)
            return qv_failerr(e, -errno, "TUNSETIFF %s", name);
    }
    return 0;
}

/* Starts QEMU with the plan's fds in place; returns its pid, stderr on *errfd. */
static pid_t spawn_qemu(const struct launch_plan *p, const int *fds, int *errfd)
{
    int pipefd[2];
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* move every source out of the way, then into its slot */
        int high[PLAN_MAX_FDS];
        for (size_t i = 0; i < p->nslots; i++)
            high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 200);
        for (size_t i = 0; i < p->nslots; i++)
            if (high[i] < 0 || dup2(high[i], p->slots[i].fd) < 0)
                _exit(126);
        dup2(pipefd[1], 2);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        char *envp[] = {"PATH=/usr/bin:/bin", NULL};
        execve(p->argv.v[0], p->argv.v, envp);
        _exit(127);
    }
    close(pipefd[1]);
    *errfd = pipefd[0];
    return pid;
}

static char *drain(int fd)
{
    struct buf b = {0};
    buf_adds(&b, "");
    char chunk[4096];
    fd_set_nonblock(fd, true);
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0)
        buf_add(&b, chunk, (size_t)n);
    return b.p;
}

static void test_golden_qemu_accepts(void **state)
{
    int failures = 0;
    const char *name = *state;
    struct root r;
    struct vm_def d;
    struct launch_plan plan;
    define_and_plan(name, &r, &d, &plan);
    struct host_facts f = golden_facts();
    char run_dir[PATH_MAX];
    snprintf(run_dir, sizeof(run_dir), "%s/run", r.dir);
    mkdir_p(run_dir, 0700);
    struct launch_ctx ctx = {.paths = &r.paths, .facts = &f, .run_dir = run_dir, .open_tap = open_test_tap};
    int fds[PLAN_MAX_FDS];
    struct qv_err e = {0};
    if (launch_open_resources(&plan, &d, &ctx, fds, &e) < 0)
        fail_msg("%s: opening resources: %s", name, e.msg);
    int errfd;
    pid_t pid = spawn_qemu(&plan, fds, &errfd);
    launch_close_resources(fds, plan.nslots);

    char sock[PATH_MAX];
    snprintf(sock, sizeof(sock), "%s/qmp.sock", run_dir);
    struct qmp *q = NULL;
    json_object *status = NULL;
    int rc = qmp_connect_path(sock, QMP_MONITOR, 10000, NULL, NULL, &q, &e);
    if (rc == 0)
        rc = qmp_call(q, "query-status", NULL, NULL, 0, 5000, &status, &e);
    json_object *st = NULL;
    if (rc == 0 && (!json_object_object_get_ex(status, "status", &st) ||
                    strcmp(json_object_get_string(st), "prelaunch") != 0)) {
        rc = -EINVAL;
        snprintf(e.msg, sizeof(e.msg), "status %s", jr_show(status));
    }
    if (q) {
        qmp_call(q, "quit", NULL, NULL, 0, 5000, NULL, NULL);
        qmp_free(q);
    }
    json_object_put(status);
    /* QEMU must exit by itself after quit; a second is generous */
    int wst = 0;
    for (int t = 0; t < 100 && waitpid(pid, &wst, WNOHANG) == 0; t++)
        usleep(20000);
    if (waitpid(pid, &wst, WNOHANG) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &wst, 0);
    }
    char *err = drain(errfd);
    close(errfd);
    if (rc < 0) {
        print_error("%s: QEMU did not accept the command line: %s\n%s", name, e.msg, err);
        failures++;
    }
    free(err);
    launch_plan_free(&plan);
    vm_def_free(&d);
    root_remove(&r);
    assert_int_equal(failures, 0);
}

static void test_golden_counts(void **state)
{
    (void)state;
    assert_true(valid.n >= 30);
    assert_true(invalid.n >= 30);
}

static struct CMUnitTest named(const char *prefix, const char *name, void (*fn)(void **))
{
    struct CMUnitTest t = {.name = qv_xasprintf("%s %s", prefix, name), .test_func = fn,
                           .initial_state = (void *)name};
    return t;
}

int main(void)
{
    /* one test per definition and property, so a failure names its definition */
    const char *src = getenv("QVISOR_TEST_SRC");
    snprintf(golden_dir, sizeof(golden_dir), "%s/tests/golden", src && *src ? src : ".");
    read_names();
    size_t n = 0, cap = 1 + valid.n * 3 + invalid.n;
    struct CMUnitTest *tests = qv_xcalloc(cap, sizeof(*tests));
    tests[n++] = (struct CMUnitTest){.name = qv_xstrdup("at least 30 valid and 30 invalid definitions"),
                                     .test_func = test_golden_counts};
    for (size_t i = 0; i < valid.n; i++)
        tests[n++] = named("argv", valid.v[i], test_golden_argv);
    for (size_t i = 0; i < valid.n; i++)
        tests[n++] = named("define-show-define", valid.v[i], test_golden_roundtrip);
    for (size_t i = 0; i < invalid.n; i++)
        tests[n++] = named("rejected", invalid.v[i], test_golden_error);
    for (size_t i = 0; i < valid.n; i++)
        tests[n++] = named("qemu accepts", valid.v[i], test_golden_qemu_accepts);
    int r = _cmocka_run_group_tests("argv_golden", tests, n, setup, teardown);
    for (size_t i = 0; i < n; i++)
        free((char *)tests[i].name);
    free(tests);
    strv_free(&valid);
    strv_free(&invalid);
    return r;
}
