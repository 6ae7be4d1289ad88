/* sandbox_spawn: validate, decide which steps apply on this host, prepare every
 * step's data, fork, confine, exec. The child reports a failure as one record on
 * a CLOEXEC pipe; a successful execve closes the pipe with nothing written. */
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sched.h>
#include <cap-ng.h>
#include <linux/capability.h>

#include "sandbox/internal.h"

#define MAX_MAPPED (SANDBOX_MAX_FDS + 4)

struct rlim_set {
    int resource;
    const char *name;
    struct rlimit lim;
};

struct spawn_plan {
    const struct sandbox_spec *spec;
    unsigned steps;
    char exec[PATH_MAX];
    /* fds: source in the parent -> target in the child */
    int src[MAX_MAPPED], tgt[MAX_MAPPED], tmp[MAX_MAPPED];
    size_t nfds;
    int keep[MAX_MAPPED];       /* targets, sorted */
    int floor;                  /* above every target: where sources are parked */
    int devnull;
    pid_t parent;               /* the spawning process, for parent_death_signal */
    char cg_procs[CG_NCTL][PATH_MAX];
    size_t ncg;
    struct mnt_plan mnt;
    struct rlim_set rl[3];
    size_t nrl;
    bool clear_bounding;
    struct sc_prog sc;
};

static void plan_free(struct spawn_plan *p)
{
    if (p->devnull >= 0)
        close(p->devnull);
    mnt_plan_free(&p->mnt);
    sc_free(&p->sc);
    free(p);
}

static void plan_freep(struct spawn_plan **p)
{
    if (*p)
        plan_free(*p);
}

/* ---- parent: validation and preparation -------------------------------------------- */

static int map_fd(struct spawn_plan *p, int source, int target, struct qv_err *e)
{
    if (source < 0 || target < 0 || target >= 65536)
        return qv_fail(e, -EBADF, "fds: cannot map fd %d to %d", source, target);
    if (fcntl(source, F_GETFD) < 0)
        return qv_failerr(e, -errno, "fds: fd %d (for %d in the child)", source, target);
    for (size_t i = 0; i < p->nfds; i++)
        if (p->tgt[i] == target)
            return qv_fail(e, -EINVAL, "fds: fd %d in the child is mapped twice", target);
    if (p->nfds == MAX_MAPPED)
        return qv_fail(e, -E2BIG, "fds: more than %d fds", SANDBOX_MAX_FDS);
    p->src[p->nfds] = source;
    p->tgt[p->nfds] = target;
    p->nfds++;
    return 0;
}

static bool target_used(const struct spawn_plan *p, int t)
{
    for (size_t i = 0; i < p->nfds; i++)
        if (p->tgt[i] == t)
            return true;
    return false;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int plan_fds(struct spawn_plan *p, const struct sandbox_spec *s, struct qv_err *e)
{
    if (s->nfds > SANDBOX_MAX_FDS)
        return qv_fail(e, -E2BIG, "fds: more than %d fds", SANDBOX_MAX_FDS);
    int r;
    for (size_t i = 0; i < s->nfds; i++)
        if ((r = map_fd(p, s->fds[i].source, s->fds[i].target, e)) < 0)
            return r;
    p->devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (p->devnull < 0)
        return qv_failerr(e, -errno, "fds: /dev/null");
    const int std[3] = {-1, s->stdout_fd, s->stderr_fd};
    for (int t = 0; t < 3; t++) {
        if (std[t] >= 0 && target_used(p, t))
            return qv_fail(e, -EINVAL, "fds: fd %d in the child is mapped twice", t);
        if (!target_used(p, t) && (r = map_fd(p, std[t] >= 0 ? std[t] : p->devnull, t, e)) < 0)
            return r;
    }
    if (s->hold_fd >= 0) {
        int t = 3;
        while (target_used(p, t))
            t++;
        if ((r = map_fd(p, s->hold_fd, t, e)) < 0)
            return r;
    }
    int top = 2;
    for (size_t i = 0; i < p->nfds; i++) {
        p->keep[i] = p->tgt[i];
        if (p->tgt[i] > top)
            top = p->tgt[i];
    }
    qsort(p->keep, p->nfds, sizeof(int), cmp_int);
    p->floor = top + 1;
    return 0;
}

static int plan_rlimits(struct spawn_plan *p, const struct sandbox_spec *s, const struct sandbox_host *h,
                        struct strv *warnings, struct qv_err *e)
{
    struct { int res; const char *name; uint64_t want; uint64_t hard; } want[] = {
        {RLIMIT_NOFILE, "nofile", s->nofile, h->nofile_hard},
        {RLIMIT_MEMLOCK, "memlock", s->memlock, h->memlock_hard},
    };
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        if (!want[i].want)
            continue;
        uint64_t v = want[i].want;
        if (v > want[i].hard && !h->cap_sys_resource) {
            char detail[200];
            snprintf(detail, sizeof(detail),
                     "%s %llu is above the hard limit %llu and CAP_SYS_RESOURCE is missing; using %llu",
                     want[i].name, (unsigned long long)v, (unsigned long long)want[i].hard,
                     (unsigned long long)want[i].hard);
            int r = sandbox_degrade(s->require, SANDBOX_RLIMITS, s->name, detail, warnings, e);
            if (r < 0)
                return r;
            v = want[i].hard;
        }
        rlim_t lim = v == UINT64_MAX ? RLIM_INFINITY : (rlim_t)v;
        p->rl[p->nrl++] = (struct rlim_set){want[i].res, want[i].name, {lim, lim}};
    }
    if (!s->coredump)
        p->rl[p->nrl++] = (struct rlim_set){RLIMIT_CORE, "core", {0, 0}};
    return 0;
}

/* Steps this host cannot apply are dropped here, with a warning or an error. */
static int decide_steps(struct spawn_plan *p, const struct sandbox_spec *s, const struct sandbox_host *h,
                        struct strv *warnings, struct qv_err *e)
{
    unsigned steps = s->enable & SANDBOX_ALL_STEPS;
    if (s->require & ~steps)
        return qv_fail(e, -EINVAL, "%s: sandbox: a required step is disabled", s->name);
    int r;
    for (int st = 0; st < SANDBOX_NSTEPS; st++) {
        if (!(steps & SANDBOX_STEP(st)))
            continue;
        const char *detail = NULL;
        if (st == SANDBOX_CGROUP) {
            if (!s->cgroup)
                detail = "no cgroup was created for this VM";
        } else if (st == SANDBOX_CAPS) {
            /* Without CAP_SETPCAP the other sets are still cleared; only the
             * bounding set stays as inherited. */
            p->clear_bounding = h->step[st].available;
            if (!h->step[st].available &&
                (r = sandbox_degrade(s->require, st, s->name, h->step[st].detail, warnings, e)) < 0)
                return r;
            continue;
        } else if (!h->step[st].available) {
            detail = h->step[st].detail;
        }
        if (!detail)
            continue;
        if ((r = sandbox_degrade(s->require, st, s->name, detail, warnings, e)) < 0)
            return r;
        steps &= ~SANDBOX_STEP(st);
    }
    p->steps = steps;
    return 0;
}

static int validate(const struct sandbox_spec *s, struct qv_err *e)
{
    if (!s->name || !*s->name)
        return qv_fail(e, -EINVAL, "sandbox: spec has no name");
    if (!s->path || s->path[0] != '/')
        return qv_fail(e, -EINVAL, "%s: sandbox: executable \"%s\" must be an absolute path", s->name,
                       s->path ? s->path : "");
    if (!s->argv || !s->argv[0])
        return qv_fail(e, -EINVAL, "%s: sandbox: empty argv", s->name);
    if (s->keep_caps && (s->enable & SANDBOX_STEP(SANDBOX_USER)))
        return qv_fail(e, -EINVAL, "%s: sandbox: capabilities are kept only for a program that stays root", s->name);
    if (s->enable & SANDBOX_STEP(SANDBOX_USER)) {
        if (s->uid == (uid_t)-1 || s->gid == (gid_t)-1)
            return qv_fail(e, -EINVAL, "%s: sandbox: user: no uid/gid given", s->name);
        if (s->uid == 0 || s->gid == 0)
            return qv_fail(e, -EPERM, "%s: sandbox: user: QEMU never runs as root (uid %u gid %u)",
                           s->name, (unsigned)s->uid, (unsigned)s->gid);
        if (s->ngroups > SANDBOX_MAX_GROUPS)
            return qv_fail(e, -E2BIG, "%s: sandbox: user: more than %d groups", s->name,
                           SANDBOX_MAX_GROUPS);
        for (size_t i = 0; i < s->ngroups; i++)
            if (s->groups[i] == 0)
                return qv_fail(e, -EPERM, "%s: sandbox: user: the root group is never given to QEMU",
                               s->name);
    }
    return 0;
}

static int prepare(struct spawn_plan *p, const struct sandbox_spec *s, const struct sandbox_host *h,
                   struct strv *warnings, struct qv_err *e)
{
    int r = validate(s, e);
    if (r < 0)
        return r;
    if (s->chroot) {
        snprintf(p->exec, sizeof(p->exec), "%s", s->path);
    } else {
        if (!realpath(s->path, p->exec))
            return qv_failerr(e, -errno, "%s: sandbox: executable %s", s->name, s->path);
        if (access(p->exec, X_OK) < 0)
            return qv_failerr(e, -errno, "%s: sandbox: executable %s", s->name, s->path);
    }
    if ((r = decide_steps(p, s, h, warnings, e)) < 0)
        return r;
    if ((r = plan_fds(p, s, e)) < 0)
        return qv_prefix(e, "%s: sandbox: ", s->name);
    if ((p->steps & SANDBOX_STEP(SANDBOX_CGROUP)) && !s->cgroup_after_exec) {
        for (size_t i = 0; i < s->cgroup->ndirs; i++) {
            char leaf[PATH_MAX];
            sandbox_cgroup_leaf(s->cgroup, i, CG_LEAF_QEMU, leaf, sizeof(leaf));
            snprintf(p->cg_procs[p->ncg++], PATH_MAX, "%s/cgroup.procs", leaf);
        }
    }
    if (p->steps & SANDBOX_STEP(SANDBOX_MOUNT)) {
        if ((r = mnt_plan_build(s, p->exec, &p->mnt, e)) < 0)
            return qv_prefix(e, "%s: sandbox: ", s->name);
        p->mnt.chown_nodes = p->steps & SANDBOX_STEP(SANDBOX_USER);
    }
    if (p->steps & SANDBOX_STEP(SANDBOX_RLIMITS) && (r = plan_rlimits(p, s, h, warnings, e)) < 0)
        return r;
    if (p->steps & SANDBOX_STEP(SANDBOX_SECCOMP) && (r = sc_build(s, &p->sc, e)) < 0)
        return qv_prefix(e, "%s: sandbox: ", s->name);
    return 0;
}

/* ---- child ----------------------------------------------------------------------------- */

static void close_between(unsigned lo, unsigned hi)
{
    if (lo > hi)
        return;
    if (close_range(lo, hi, 0) == 0)
        return;
    /* Kernels before 5.9: close one by one, up to what can be open. */
    struct rlimit rl;
    unsigned max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 1u << 20 ? (unsigned)rl.rlim_cur : 1u << 20;
    for (unsigned fd = lo; fd <= hi && fd < max; fd++)
        close((int)fd);
}

/* Step 1. Sources are first parked above every target (a source may sit on
 * another mapping's target), then dup2'd into place, which also clears their
 * CLOEXEC. The error pipe moves above the targets too and closes at exec. */
static int child_fds(struct spawn_plan *p, int errfd)
{
    int moved = fcntl(errfd, F_DUPFD_CLOEXEC, p->floor);
    if (moved < 0)
        child_fail(errfd, errno, "fds: moving the error pipe");
    errfd = moved;
    for (size_t i = 0; i < p->nfds; i++) {
        p->tmp[i] = fcntl(p->src[i], F_DUPFD_CLOEXEC, p->floor);
        if (p->tmp[i] < 0)
            child_fail(errfd, errno, "fds: fd %d", p->src[i]);
    }
    for (size_t i = 0; i < p->nfds; i++)
        if (dup2(p->tmp[i], p->tgt[i]) < 0)
            child_fail(errfd, errno, "fds: dup2 %d to %d", p->src[i], p->tgt[i]);
    unsigned lo = 0;
    for (size_t i = 0; i < p->nfds; i++) {
        if ((unsigned)p->keep[i] > lo)
            close_between(lo, (unsigned)p->keep[i] - 1);
        lo = (unsigned)p->keep[i] + 1;
    }
    close_between(lo, (unsigned)errfd - 1);
    close_between((unsigned)errfd + 1, ~0u);
    return errfd;
}

/* The kernel's struct sigaction, for the raw call below. */
struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

static void child_signals(int errfd)
{
    /* Raw calls, not libc's: its wrappers (and a sanitizer's) refuse to touch libc's
     * own two internal signals, which may reach us ignored from whoever started the
     * supervisor, or blocked by fork(); an ignored signal stays ignored across exec. */
    struct kernel_sigaction dfl = {.handler = SIG_DFL};
    for (int sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(dfl.mask));
    uint64_t none = 0;
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(none)) < 0)
        child_fail(errfd, errno, "signals: unblocking");
}

static void child_cgroup(const struct spawn_plan *p, int errfd)
{
    for (size_t i = 0; i < p->ncg; i++) {
        int fd = open(p->cg_procs[i], O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            child_fail(errfd, errno, "cgroup: %s", p->cg_procs[i]);
        /* "0" is the writing process itself, in v1 and v2 alike. */
        if (write(fd, "0", 1) != 1)
            child_fail(errfd, errno, "cgroup: joining %s", p->cg_procs[i]);
        close(fd);
    }
}

static void child_rlimits(const struct spawn_plan *p, int errfd)
{
    for (size_t i = 0; i < p->nrl; i++)
        if (setrlimit(p->rl[i].resource, &p->rl[i].lim) < 0)
            child_fail(errfd, errno, "rlimits: %s", p->rl[i].name);
}

static void verify_caps(const struct spawn_plan *p, int errfd)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &hdr, d) < 0)
        child_fail(errfd, errno, "caps: capget");
    uint64_t keep = p->spec->keep_caps;
    for (int i = 0; i < 2; i++) {
        uint32_t k = (uint32_t)(keep >> (32 * i));
        if ((d[i].effective & ~k) || (d[i].permitted & ~k) || d[i].inheritable)
            child_fail(errfd, EPERM, "caps: capabilities left after clearing");
    }
    /* Up to 63, not CAP_LAST_CAP: the kernel may know more than our headers. */
    for (int c = 0; c < 64; c++) {
        if (p->clear_bounding && !(keep & (1ull << c)) && prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1)
            child_fail(errfd, EPERM, "caps: capability %d left in the bounding set", c);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
            child_fail(errfd, EPERM, "caps: capability %d left in the ambient set", c);
    }
}

static const char *change_id_step(int rc)
{
    switch (rc) {
    case -2: case -7: return "caps: PR_SET_KEEPCAPS";
    case -3: case -9: return "caps: capset";
    case -4: return "user: setresgid";
    case -6: return "user: setresuid";
    case -8: return "caps: clearing the bounding set";
    default: return "caps: capng_change_id";
    }
}

/* Steps 5 and 6 together: the bounding set can only be cleared while
 * CAP_SETPCAP is held, which ends with the uid change; capng_change_id orders
 * it (keep caps, clear bounding, setresgid, setresuid, clear the rest). */
static void child_creds(const struct spawn_plan *p, int errfd)
{
    const struct sandbox_spec *s = p->spec;
    bool user = p->steps & SANDBOX_STEP(SANDBOX_USER);
    bool caps = p->steps & SANDBOX_STEP(SANDBOX_CAPS);
    if (user && setgroups(s->ngroups, s->groups) < 0)
        child_fail(errfd, errno, "user: setgroups");
    if (caps) {
        capng_clear(CAPNG_SELECT_BOTH);
        for (int c = 0; c < 64; c++)
            if (s->keep_caps & (1ull << c))
                capng_update(CAPNG_ADD, CAPNG_EFFECTIVE | CAPNG_PERMITTED | CAPNG_BOUNDING_SET, (unsigned)c);
        /* libcap-ng reports failures by return code; errno is the syscall's, if any. */
        errno = 0;
        if (user) {
            int rc = capng_change_id((int)s->uid, (int)s->gid, p->clear_bounding ? CAPNG_CLEAR_BOUNDING
                                                                                  : CAPNG_NO_FLAG);
            if (rc < 0)
                child_fail(errfd, errno ? errno : EPERM, "%s", change_id_step(rc));
        } else {
            if (p->clear_bounding && capng_apply(CAPNG_SELECT_BOUNDS) < 0)
                child_fail(errfd, errno ? errno : EPERM, "caps: clearing the bounding set");
            if (capng_apply(CAPNG_SELECT_CAPS) < 0)
                child_fail(errfd, errno ? errno : EPERM, "caps: capset");
        }
        /* Before 4.3 there is no ambient set, and nothing to clear. */
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
            child_fail(errfd, errno, "caps: clearing the ambient set");
    } else if (user) {
        if (setresgid(s->gid, s->gid, s->gid) < 0)
            child_fail(errfd, errno, "user: setresgid");
        if (setresuid(s->uid, s->uid, s->uid) < 0)
            child_fail(errfd, errno, "user: setresuid");
    }
    if (user) {
        uid_t r, eu, su;
        gid_t g, eg, sg;
        if (getresuid(&r, &eu, &su) < 0 || getresgid(&g, &eg, &sg) < 0)
            child_fail(errfd, errno, "user: reading ids back");
        if (r != s->uid || eu != s->uid || su != s->uid || g != s->gid || eg != s->gid || sg != s->gid)
            child_fail(errfd, EPERM, "user: ids are not %u/%u after the change", (unsigned)s->uid,
                       (unsigned)s->gid);
    }
    if (caps)
        verify_caps(p, errfd);
    /* Always: execve can never raise privileges again (setuid binaries, file caps). */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(errfd, errno, "caps: PR_SET_NO_NEW_PRIVS");
}

/* The parent records the child before anything else happens: until it says "go",
 * the child only waits. A parent that dies first closes the gate, and the child
 * exits without having touched anything. */
static void child_await_gate(int gate_r, int gate_w)
{
    if (gate_r < 0)
        return;
    close(gate_w);
    char go = 0;
    ssize_t n;
    while ((n = read(gate_r, &go, 1)) < 0 && errno == EINTR)
        ;
    if (n != 1 || go != 'g')
        _exit(127);
    close(gate_r);
}

static _Noreturn void child_main(struct spawn_plan *p, int errfd, int gate_r, int gate_w)
{
    const struct sandbox_spec *s = p->spec;
    child_await_gate(gate_r, gate_w);
    errfd = child_fds(p, errfd);
    child_signals(errfd);
    if (s->setsid && setsid() < 0)
        child_fail(errfd, errno, "setsid");
    if (p->steps & SANDBOX_STEP(SANDBOX_CGROUP))
        child_cgroup(p, errfd);
    if (p->steps & SANDBOX_STEP(SANDBOX_NETWORK) && unshare(CLONE_NEWNET) < 0)
        child_fail(errfd, errno, "network namespace: unshare(CLONE_NEWNET)");
    if (p->steps & SANDBOX_STEP(SANDBOX_MOUNT))
        mnt_apply(&p->mnt, errfd);
    if (p->steps & SANDBOX_STEP(SANDBOX_RLIMITS))
        child_rlimits(p, errfd);
    child_creds(p, errfd);
    if (s->parent_death_signal && prctl(PR_SET_PDEATHSIG, s->parent_death_signal) < 0)
        child_fail(errfd, errno, "PR_SET_PDEATHSIG");
    if (s->parent_death_signal && getppid() != p->parent)
        child_fail(errfd, ESRCH, "PR_SET_PDEATHSIG: the parent is gone");
    if (p->steps & SANDBOX_STEP(SANDBOX_SECCOMP))
        sc_apply(&p->sc, errfd);
    static const char *const empty_env[] = {NULL};
    execve(p->exec, (char *const *)s->argv, (char *const *)(s->envp ? s->envp : empty_env));
    child_fail(errfd, errno, "exec %s", p->exec);
}

/* ---- parent: fork and collect ------------------------------------------------------------ */

static int await_exec(int rfd, pid_t pid, int timeout_ms, const char *name, struct qv_err *e)
{
    struct child_report rep;
    size_t got = 0;
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    int r = 0;
    for (;;) {
        uint64_t now = monotonic_ms();
        if (now >= deadline) {
            r = qv_fail(e, -ETIMEDOUT, "%s: sandbox: the child did not reach execve within %d ms", name,
                        timeout_ms);
            break;
        }
        struct pollfd pfd = {.fd = rfd, .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0) {
            r = qv_failerr(e, -errno, "%s: sandbox: waiting for the child", name);
            break;
        }
        if (pr == 0)
            continue;
        ssize_t n = read(rfd, (char *)&rep + got, sizeof(rep) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = qv_failerr(e, -errno, "%s: sandbox: reading the child's report", name);
            break;
        }
        if (n == 0) {
            if (got == 0)
                return 0;       /* execve succeeded */
            r = qv_fail(e, -EIO, "%s: sandbox: truncated report from the child", name);
            break;
        }
        got += (size_t)n;
        if (got == sizeof(rep)) {
            rep.msg[sizeof(rep.msg) - 1] = '\0';
            r = qv_failerr(e, -rep.err, "%s: sandbox: %s", name, rep.msg);
            break;
        }
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    return r;
}

int sandbox_spawn(const struct sandbox_spec *spec, pid_t *pid, struct strv *warnings, struct qv_err *e)
{
    struct sandbox_host checked;
    const struct sandbox_host *h = spec->host;
    if (!h) {
        sandbox_host_check("/sys/fs/cgroup", &checked);
        h = &checked;
    }
    _cleanup_(plan_freep) struct spawn_plan *p = qv_xcalloc(1, sizeof(*p));
    p->spec = spec;
    p->devnull = -1;
    p->parent = getpid();
    int r = prepare(p, spec, h, warnings, e);
    if (r < 0)
        return r;

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return qv_failerr(e, -errno, "%s: sandbox: pipe", spec->name);
    _cleanup_close_ int rfd = pfd[0];
    _cleanup_close_ int wfd = pfd[1];
    _cleanup_close_ int gate_r = -1;
    _cleanup_close_ int gate_w = -1;
    if (spec->forked) {
        if (pipe2(pfd, O_CLOEXEC) < 0)
            return qv_failerr(e, -errno, "%s: sandbox: pipe", spec->name);
        gate_r = pfd[0];
        gate_w = pfd[1];
    }

    /* No handler of ours may run in the child before it resets them all. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t child = fork();
    if (child == 0)
        child_main(p, wfd, gate_r, gate_w);
    int fork_err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (child < 0)
        return qv_failerr(e, -fork_err, "%s: sandbox: fork", spec->name);
    close(qv_steal_fd(&wfd));
    if (spec->forked) {
        close(qv_steal_fd(&gate_r));
        r = spec->forked(child, spec->opaque, e);
        if (r == 0 && write(gate_w, "g", 1) != 1)
            r = qv_failerr(e, -errno, "%s: sandbox: releasing the child", spec->name);
        close(qv_steal_fd(&gate_w));
        if (r < 0) {
            kill(child, SIGKILL);
            while (waitpid(child, NULL, 0) < 0 && errno == EINTR)
                ;
            return r;
        }
    }
    r = await_exec(rfd, child, spec->timeout_ms > 0 ? spec->timeout_ms : 10000, spec->name, e);
    if (r < 0)
        return r;
    *pid = child;
    return 0;
}
