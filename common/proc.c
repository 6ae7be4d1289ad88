#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
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

bool proc_cmdline_contains(pid_t pid, const char *needle)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    _cleanup_free_ char *s = NULL;
    size_t len;
    if (read_file(path, 1u << 20, &s, &len) < 0)
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

int run_program(const char *const *argv, int timeout_ms, char **output)
{
    char exe[PATH_MAX];
    int r = find_program(argv[0], exe, sizeof(exe));
    if (r < 0)
        return r;
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        r = -errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return r;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        execve(exe, (char *const *)argv, environ);
        _exit(127);
    }
    close(pipefd[1]);
    struct buf b = {0};
    buf_adds(&b, "");
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    bool timed_out = false;
    for (;;) {
        uint64_t now = monotonic_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            timed_out = pr == 0;
            break;
        }
        char chunk[4096];
        ssize_t n = read(pipefd[0], chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (b.len < 65536)
            buf_add(&b, chunk, (size_t)n);
    }
    close(pipefd[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (output)
        *output = b.p;
    else
        buf_free(&b);
    if (timed_out)
        return -ETIMEDOUT;
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

/* Whether argv of PID holds `key` immediately followed by `value`, both whole
 * arguments: "-uuid" "1b4e…" names one VM's QEMU and nothing else (a `grep UUID`
 * carries the uuid, but not after a "-uuid" of its own). */
bool proc_cmdline_has_pair(pid_t pid, const char *key, const char *value)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    _cleanup_free_ char *s = NULL;
    size_t len;
    if (read_file(path, 1u << 20, &s, &len) < 0)
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
