/* Shared by the test_netsetup*.c tests (header-only: a .c here would be linked into
 * every test binary). Each test process first moves into its own network and mount
 * namespaces, so every bridge, tap, rule and dnsmasq lives and dies with it. */
#ifndef QV_NETSETUP_TESTLIB_H
#define QV_NETSETUP_TESTLIB_H

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/common.h"
#include "netsetup/netsetup.h"

#define NSTEST_UNUSED __attribute__((unused))

extern char **environ;

/* Private netns + mount ns: a fresh sysfs shows our links, a tmpfs /run keeps
 * `ip netns add` bind mounts and anything else written there out of the host. */
static NSTEST_UNUSED void nstest_enter(int alarm_seconds)
{
    if (geteuid() != 0) {
        printf("1..0 # SKIP needs root for network namespaces\n");
        exit(0);
    }
    if (unshare(CLONE_NEWNET | CLONE_NEWNS) < 0) {
        printf("Bail out! unshare: %s\n", strerror(errno));
        exit(1);
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
        mount("sysfs", "/sys", "sysfs", 0, NULL) < 0 ||
        mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") < 0) {
        printf("Bail out! mount: %s\n", strerror(errno));
        exit(1);
    }
    setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
    /* the whole binary is bounded (a hang's bound, not a timing: test_netsetup_nft took
     * 42 s in a full run and ran past 110 s at load 11); tests/run's limit is 600 s */
    alarm((unsigned)alarm_seconds);
    struct qv_err e = {0};
    if (netsetup_link_set_up("lo", true, &e) < 0) {
        printf("Bail out! %s\n", e.msg);
        exit(1);
    }
}

/* A sysfs/procfs value without its newline. */
static NSTEST_UNUSED int nstest_read_line(const char *path, char *out, size_t outlen)
{
    char *s = NULL;
    int r = read_file(path, 4096, &s, NULL);
    if (r < 0)
        return r;
    s[strcspn(s, "\n")] = '\0';
    snprintf(out, outlen, "%s", s);
    free(s);
    return 0;
}

static NSTEST_UNUSED uint64_t nstest_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Runs a program (argv NULL-terminated) with a 20 s limit; returns its exit status
 * and, when out is non-NULL, its output (caller frees). */
static NSTEST_UNUSED int nstest_runv(char **out, const char *const *argv)
{
    char *output = NULL;
    int r = run_program(argv, 20000, &output);
    if (r != 0 || getenv("NSTEST_VERBOSE")) {
        printf("# command %s exited %d: %s\n", argv[0], r, output ? output : "");
        for (const char *const *a = argv; *a; a++)
            printf("#   arg %s\n", *a);
    }
    if (out)
        *out = output;
    else
        free(output);
    return r;
}
#define nstest_run(out, ...) nstest_runv(out, (const char *const[]){__VA_ARGS__, NULL})

/* Like run_program without its 64 KiB cap on output (listings of 200 taps' rules
 * are larger); stderr is left alone. Returns the exit status or -errno. */
static NSTEST_UNUSED int nstest_capture(const char *const *argv, char **out)
{
    char exe[PATH_MAX];
    int r = find_program(argv[0], exe, sizeof(exe));
    if (r < 0)
        return r;
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        execve(exe, (char *const *)argv, environ);
        _exit(127);
    }
    close(p[1]);
    struct buf b = {0};
    char chunk[65536];
    bool timed_out = false;
    for (;;) {
        struct pollfd pfd = {.fd = p[0], .events = POLLIN};
        if (poll(&pfd, 1, 20000) <= 0) {
            timed_out = true;
            break;
        }
        ssize_t n = read(p[0], chunk, sizeof(chunk));
        if (n <= 0)
            break;
        buf_add(&b, chunk, (size_t)n);
    }
    buf_add(&b, "", 1);
    close(p[0]);
    *out = b.p;
    int status;
    if (timed_out)
        kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* `nft -j list ...` parsed; NULL when the object does not exist. */
static NSTEST_UNUSED json_object *nstest_nft_json(const char *what, const char *family, const char *name)
{
    char *out = NULL;
    int r = family ? nstest_capture((const char *const[]){"nft", "-j", "list", what, family, name, NULL}, &out)
                   : nstest_capture((const char *const[]){"nft", "-j", "list", what, NULL}, &out);
    json_object *doc = NULL;
    if (r == 0)
        json_parse_str("nft", out, &doc, NULL);
    free(out);
    return doc;
}

/* Number of items of a kind ("chain", "set", "map", "rule", "table") in a listing,
 * optionally only those whose "name" starts with prefix. */
static NSTEST_UNUSED size_t nstest_count(json_object *doc, const char *kind, const char *prefix)
{
    json_object *arr = NULL;
    if (!doc || !json_object_object_get_ex(doc, "nftables", &arr))
        return 0;
    size_t n = 0;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *o = NULL, *name = NULL;
        if (!json_object_object_get_ex(json_object_array_get_idx(arr, i), kind, &o))
            continue;
        if (prefix && (!json_object_object_get_ex(o, "name", &name) ||
                       !str_startswith(json_object_get_string(name), prefix)))
            continue;
        n++;
    }
    return n;
}

/* Elements of a map or set in a `list map` / `list set` / `list table` listing. */
static NSTEST_UNUSED size_t nstest_elements(json_object *doc, const char *kind, const char *name)
{
    json_object *arr = NULL;
    if (!doc || !json_object_object_get_ex(doc, "nftables", &arr))
        return 0;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *o = NULL, *nm = NULL, *elem = NULL;
        if (!json_object_object_get_ex(json_object_array_get_idx(arr, i), kind, &o) ||
            !json_object_object_get_ex(o, "name", &nm) || strcmp(json_object_get_string(nm), name) != 0)
            continue;
        return json_object_object_get_ex(o, "elem", &elem) ? json_object_array_length(elem) : 0;
    }
    return 0;
}

/* Whether the text of `nft list ruleset` mentions qvisor at all. */
static NSTEST_UNUSED bool nstest_ruleset_mentions(const char *needle)
{
    char *out = NULL;
    int r = run_program((const char *const[]){"nft", "list", "ruleset", NULL}, 20000, &out);
    bool found = r != 0 || (out && strstr(out, needle));
    if (found)
        printf("# nft list ruleset (status %d):\n%s\n", r, out ? out : "");
    free(out);
    return found;
}

/* Waits up to timeout_ms for a link to (dis)appear. */
static NSTEST_UNUSED bool nstest_wait_link(const char *name, bool present, int timeout_ms)
{
    uint64_t end = monotonic_ms() + (uint64_t)timeout_ms;
    do {
        if (netsetup_link_exists(name) == present)
            return true;
        poll(NULL, 0, 10);
    } while (monotonic_ms() < end);
    return netsetup_link_exists(name) == present;
}

/* Forks a child that joins network namespace `ns` (made by `ip netns add`) and runs
 * fn there; the child dies with us. Returns its pid. */
static NSTEST_UNUSED pid_t nstest_fork_in(const char *ns, int (*fn)(void *), void *arg)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char path[128];
    snprintf(path, sizeof(path), "/run/netns/%s", ns);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) < 0)
        _exit(120);
    close(fd);
    _exit(fn(arg));
}

/* Waits for a child at most timeout_ms (then kills it); returns its exit status,
 * 128+signal, or -ETIMEDOUT. */
static NSTEST_UNUSED int nstest_wait(pid_t pid, int timeout_ms)
{
    uint64_t end = monotonic_ms() + (uint64_t)timeout_ms;
    int status;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (w < 0)
            return -errno;
        if (monotonic_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -ETIMEDOUT;
        }
        poll(NULL, 0, 10);
    }
}

/* Execs argv inside the child (for nstest_fork_in). */
struct nstest_exec {
    const char *const *argv;
    int out_fd;         /* -1: /dev/null */
};
static NSTEST_UNUSED int nstest_exec_fn(void *arg)
{
    struct nstest_exec *x = arg;
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(x->out_fd >= 0 ? x->out_fd : null, 1);
    dup2(x->out_fd >= 0 ? x->out_fd : null, 2);
    char exe[PATH_MAX];
    if (find_program(x->argv[0], exe, sizeof(exe)) < 0)
        return 127;
    execve(exe, (char *const *)x->argv, environ);
    return 127;
}

static NSTEST_UNUSED void nstest_rm_rf(const char *dir)
{
    if (dir && dir[0] == '/' && strlen(dir) > 5)
        run_program((const char *const[]){"rm", "-rf", "--", dir, NULL}, 20000, NULL);
}

#endif
