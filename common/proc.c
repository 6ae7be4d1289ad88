#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>

#include "common/common.h"

extern char **environ;

/* n consecutive numeric fields of /proc/PID/stat from field `first` (1-based, as in
 * proc(5)); comm (field 2) may hold spaces and parentheses, so fields are counted
 * after its last ')'. */
static int stat_fields(pid_t pid, int first, unsigned long long *vals, int n)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    _cleanup_free_ char *s = NULL;
    int r = read_file(path, 8192, &s, NULL);
    if (r < 0)
        return r;
    char *p = strrchr(s, ')');
    if (!p)
        return -EINVAL;
    p++;
    /* p sits on the space before field 3; move it to the one before `first` */
    for (int field = 3; field < first; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return -EINVAL;
    }
    for (int i = 0; i < n; i++) {
        char *end;
        errno = 0;
        vals[i] = strtoull(p + 1, &end, 10);
        if (errno || end == p + 1 || (*end != ' ' && *end != '\n' && *end != '\0'))
            return -EINVAL;
        p = end;
    }
    return 0;
}

int proc_start_time(pid_t pid, unsigned long long *out)
{
    return stat_fields(pid, 22, out, 1);
}

int proc_cpu_ticks(pid_t pid, unsigned long long *out)
{
    unsigned long long v[2];     /* utime (14), stime (15) */
    int r = stat_fields(pid, 14, v, 2);
    if (r < 0)
        return r;
    *out = v[0] + v[1];
    return 0;
}

/* /proc/PID/cmdline: NUL-separated arguments, len bytes in all. */
static int read_cmdline(pid_t pid, char **s, size_t *len)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    return read_file(path, 1u << 20, s, len);
}

bool proc_cmdline_contains(pid_t pid, const char *needle)
{
    _cleanup_free_ char *s = NULL;
    size_t len;
    if (read_cmdline(pid, &s, &len) < 0)
        return false;
    for (size_t off = 0; off < len; off += strlen(s + off) + 1)
        if (strstr(s + off, needle))
            return true;
    return false;
}

int find_program(const char *name, char *out, size_t outlen)
{
    if (strchr(name, '/')) {
        if (access(name, X_OK) < 0)
            return -errno;
        snprintf(out, outlen, "%s", name);
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/sbin:/usr/bin:/sbin:/bin";
    _cleanup_free_ char *copy = qv_xstrdup(path);
    char *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        char cand[PATH_MAX];
        snprintf(cand, sizeof(cand), "%s/%s", dir, name);
        struct stat st;
        if (stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0) {
            snprintf(out, outlen, "%s", cand);
            return 0;
        }
    }
    return -ENOENT;
}

enum drain_end { DRAIN_EOF, DRAIN_TIMEOUT, DRAIN_CANCELLED };

/* Reads both pipes until EOF, the deadline (0: none) or a cancel; at most 64 KiB of
 * each is kept, unless w->on_stdout consumes stdout as it comes. */
static enum drain_end drain(int fds[2], struct buf *bufs[2], uint64_t deadline, const struct run_watch *w)
{
    for (;;) {
        if (w && w->cancel && *w->cancel)
            return DRAIN_CANCELLED;
        struct pollfd pfd[2];
        nfds_t n = 0;
        int which[2];
        for (int i = 0; i < 2; i++)
            if (fds[i] >= 0) {
                pfd[n] = (struct pollfd){.fd = fds[i], .events = POLLIN};
                which[n++] = i;
            }
        if (n == 0)
            return DRAIN_EOF;
        uint64_t now = monotonic_ms();
        if (deadline && now >= deadline)
            return DRAIN_TIMEOUT;
        int wait = deadline ? (int)(deadline - now) : -1;
        if (w && w->cancel && (wait < 0 || wait > 100))
            wait = 100;     /* a tick to look at the cancel flag (a SIGINT may not interrupt poll) */
        int pr = poll(pfd, n, wait);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return DRAIN_EOF;
        if (pr == 0)
            continue;
        for (nfds_t k = 0; k < n; k++) {
            if (!pfd[k].revents)
                continue;
            int i = which[k];
            char chunk[4096];
            ssize_t got = read(fds[i], chunk, sizeof(chunk));
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0 && errno == EAGAIN)
                continue;
            if (got <= 0) {
                close(fds[i]);
                fds[i] = -1;
            } else if (i == 0 && w && w->on_stdout) {
                buf_add(bufs[i], chunk, (size_t)got);
                w->on_stdout(bufs[i], w->opaque);
            } else if (bufs[i]->len < 65536) {
                buf_add(bufs[i], chunk, (size_t)got);
            }
        }
    }
}

/* A cancelled child gets SIGTERM, and SIGKILL if it is still there after 2 s. */
static void stop_child(pid_t pid, int *status)
{
    kill(pid, SIGTERM);
    for (int i = 0; i < 40; i++) {
        if (waitpid(pid, status, WNOHANG) == pid)
            return;
        usleep(50000);
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, status, 0) < 0 && errno == EINTR)
        ;
}

int spawn_program(const char *const *argv, int out_w, int err_w, bool ignore_sigint, pid_t *pid)
{
    char exe[PATH_MAX];
    int r = find_program(argv[0], exe, sizeof(exe));
    if (r < 0)
        return r;
    pid_t parent = getpid();
    pid_t p = fork();
    if (p < 0)
        return -errno;
    if (p == 0) {
        /* A helper must not outlive a caller that was killed: it would run on, unbounded. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(127);
        /* a caller's signalfd blocks signals the program needs as usual */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (ignore_sigint)
            signal(SIGINT, SIG_IGN);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(out_w, 1);
        dup2(err_w, 2);
        execve(exe, (char *const *)argv, environ);
        _exit(127);
    }
    *pid = p;
    return 0;
}

/* out_err NULL: stderr joins stdout. */
static int run(const char *const *argv, int timeout_ms, const struct run_watch *w, char **out, char **out_err)
{
    int po[2], pe[2] = {-1, -1};
    if (pipe2(po, O_CLOEXEC) < 0)
        return -errno;
    if (out_err && pipe2(pe, O_CLOEXEC) < 0) {
        int r = -errno;
        close(po[0]);
        close(po[1]);
        return r;
    }
    pid_t pid;
    int r = spawn_program(argv, po[1], pe[1] >= 0 ? pe[1] : po[1], w && w->child_ignores_sigint, &pid);
    if (r < 0) {
        close(po[0]);
        close(po[1]);
        if (pe[0] >= 0) {
            close(pe[0]);
            close(pe[1]);
        }
        return r;
    }
    close(po[1]);
    if (pe[1] >= 0)
        close(pe[1]);
    struct buf bo = {0}, be = {0};
    buf_adds(&bo, "");
    buf_adds(&be, "");
    int fds[2] = {po[0], pe[0]};
    struct buf *bufs[2] = {&bo, &be};
    enum drain_end end = drain(fds, bufs, timeout_ms > 0 ? monotonic_ms() + (uint64_t)timeout_ms : 0, w);
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    int status = 0;
    if (end == DRAIN_CANCELLED) {
        stop_child(pid, &status);
    } else {
        if (end == DRAIN_TIMEOUT)
            kill(pid, SIGKILL);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
    }
    if (out)
        *out = bo.p;
    else
        buf_free(&bo);
    if (out_err)
        *out_err = be.p;
    else
        buf_free(&be);
    if (end == DRAIN_CANCELLED)
        return -ECANCELED;
    if (end == DRAIN_TIMEOUT)
        return -ETIMEDOUT;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

int run_program(const char *const *argv, int timeout_ms, char **output)
{
    return run(argv, timeout_ms, NULL, output, NULL);
}

int run_program_split(const char *const *argv, int timeout_ms, char **out, char **err)
{
    return run(argv, timeout_ms, NULL, out, err);
}

int run_program_watched(const char *const *argv, int timeout_ms, const struct run_watch *w, char **out, char **err)
{
    return run(argv, timeout_ms, w, out, err);
}

/* Whether argv of PID holds `key` immediately followed by `value`, both whole
 * arguments: "-uuid" "1b4e…" names one VM's QEMU and nothing else (a `grep UUID`
 * carries the uuid, but not after a "-uuid" of its own). */
bool proc_cmdline_has_pair(pid_t pid, const char *key, const char *value)
{
    _cleanup_free_ char *s = NULL;
    size_t len;
    if (read_cmdline(pid, &s, &len) < 0)
        return false;
    const char *prev = NULL;
    for (size_t off = 0; off < len; off += strlen(s + off) + 1) {
        if (prev && strcmp(prev, key) == 0 && strcmp(s + off, value) == 0)
            return true;
        prev = s + off;
    }
    return false;
}

int proc_find_by_pair(const char *key, const char *value, pid_t except, pid_t *out)
{
    DIR *d = opendir("/proc");
    if (!d)
        return -errno;
    struct dirent *de;
    int found = 0;
    while (!found && (de = readdir(d))) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 1 || pid == except)
            continue;
        if (proc_cmdline_has_pair((pid_t)pid, key, value)) {
            *out = (pid_t)pid;
            found = 1;
        }
    }
    closedir(d);
    return found;
}
