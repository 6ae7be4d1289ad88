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

int proc_start_time(pid_t pid, unsigned long long *out)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    _cleanup_free_ char *s = NULL;
    int r = read_file(path, 8192, &s, NULL);
    if (r < 0)
        return r;
    /* comm (field 2) may contain spaces and parentheses: parse after the last ')' */
    char *p = strrchr(s, ')');
    if (!p)
        return -EINVAL;
    p++;
    /* fields 3..22: skip 19 fields to reach starttime */
    for (int field = 3; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return -EINVAL;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(p + 1, &end, 10);
    if (errno || end == p + 1)
        return -EINVAL;
    *out = v;
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

/* Reads both pipes until EOF or the deadline; at most 64 KiB of each is kept. */
static bool drain(int fds[2], struct buf *bufs[2], uint64_t deadline)
{
    for (;;) {
        struct pollfd pfd[2];
        nfds_t n = 0;
        int which[2];
        for (int i = 0; i < 2; i++)
            if (fds[i] >= 0) {
                pfd[n] = (struct pollfd){.fd = fds[i], .events = POLLIN};
                which[n++] = i;
            }
        if (n == 0)
            return false;
        uint64_t now = monotonic_ms();
        if (now >= deadline)
            return true;
        int pr = poll(pfd, n, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return false;
        if (pr == 0)
            return true;
        for (nfds_t k = 0; k < n; k++) {
            if (!pfd[k].revents)
                continue;
            int i = which[k];
            char chunk[4096];
            ssize_t got = read(fds[i], chunk, sizeof(chunk));
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                close(fds[i]);
                fds[i] = -1;
            } else if (bufs[i]->len < 65536) {
                buf_add(bufs[i], chunk, (size_t)got);
            }
        }
    }
}

/* out_err NULL: stderr joins stdout. */
static int run(const char *const *argv, int timeout_ms, char **out, char **out_err)
{
    char exe[PATH_MAX];
    int r = find_program(argv[0], exe, sizeof(exe));
    if (r < 0)
        return r;
    int po[2], pe[2] = {-1, -1};
    if (pipe2(po, O_CLOEXEC) < 0)
        return -errno;
    if (out_err && pipe2(pe, O_CLOEXEC) < 0) {
        r = -errno;
        close(po[0]);
        close(po[1]);
        return r;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        r = -errno;
        close(po[0]);
        close(po[1]);
        if (pe[0] >= 0) {
            close(pe[0]);
            close(pe[1]);
        }
        return r;
    }
    if (pid == 0) {
        /* A helper must not outlive a caller that was killed: it would run on, unbounded. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(127);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(po[1], 1);
        dup2(pe[1] >= 0 ? pe[1] : po[1], 2);
        execve(exe, (char *const *)argv, environ);
        _exit(127);
    }
    close(po[1]);
    if (pe[1] >= 0)
        close(pe[1]);
    struct buf bo = {0}, be = {0};
    buf_adds(&bo, "");
    buf_adds(&be, "");
    int fds[2] = {po[0], pe[0]};
    struct buf *bufs[2] = {&bo, &be};
    bool timed_out = drain(fds, bufs, monotonic_ms() + (uint64_t)timeout_ms);
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (timed_out)
        kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (out)
        *out = bo.p;
    else
        buf_free(&bo);
    if (out_err)
        *out_err = be.p;
    else
        buf_free(&be);
    if (timed_out)
        return -ETIMEDOUT;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

int run_program(const char *const *argv, int timeout_ms, char **output)
{
    return run(argv, timeout_ms, output, NULL);
}

int run_program_split(const char *const *argv, int timeout_ms, char **out, char **err)
{
    return run(argv, timeout_ms, out, err);
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
