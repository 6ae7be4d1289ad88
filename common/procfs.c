/* Reading the kernel's small text files: sysfs values, /proc/PID files, cgroup files. */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/signalfd.h>

#include "common/common.h"

int read_file_small(const char *path, char *buf, size_t len)
{
    if (len == 0)
        return -EINVAL;
    buf[0] = '\0';
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    size_t off = 0;
    for (;;) {
        char probe;
        /* one byte past the room left tells "exactly full" from "too long" */
        char *dst = off + 1 < len ? buf + off : &probe;
        size_t want = off + 1 < len ? len - 1 - off : 1;
        ssize_t n = read(fd, dst, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            buf[off] = '\0';
            return -errno;
        }
        if (n == 0)
            break;
        if (dst == &probe) {
            buf[off] = '\0';
            return -EFBIG;
        }
        off += (size_t)n;
    }
    buf[off] = '\0';
    return (int)off;
}

int read_file_line(const char *path, char *out, size_t outlen)
{
    char buf[4096];
    int r = read_file_small(path, buf, sizeof(buf));
    if (r < 0)
        return r;
    buf[strcspn(buf, "\n")] = '\0';
    size_t n = strlen(buf);
    if (n >= outlen)
        return -EFBIG;
    memcpy(out, buf, n + 1);
    return 0;
}

/* `word` as one element of a comma-separated list ("cpu" in "cpu,cpuacct", not in "cpuset"). */
static bool in_list(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

int proc_cgroup_path(pid_t pid, const char *v1_controller, char *out, size_t outlen)
{
    char path[64], buf[8192];
    if (pid)
        snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
    else
        snprintf(path, sizeof(path), "/proc/self/cgroup");
    int r = read_file_small(path, buf, sizeof(buf));
    if (r < 0)
        return r;
    char *save = NULL;
    /* "hierarchy-id:controller-list:path"; the path may itself contain ':' */
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        *c2 = '\0';
        const char *ctls = c1 + 1;
        bool match = v1_controller ? in_list(ctls, v1_controller) : (*ctls == '\0' && strncmp(line, "0:", 2) == 0);
        if (match) {
            if (strlen(c2 + 1) >= outlen)
                return -ENAMETOOLONG;
            memcpy(out, c2 + 1, strlen(c2 + 1) + 1);
            return 0;
        }
    }
    return -ENOENT;
}

/* The unit in one cgroup path: a delegated unit's processes may sit in sub-cgroups of
 * its own, so it is the last component with a unit suffix. */
static int unit_of_path(char *path, char *out, size_t outlen)
{
    for (char *end = path + strlen(path); end > path;) {
        char *slash = end;
        while (slash > path && slash[-1] != '/')
            slash--;
        size_t len = (size_t)(end - slash);
        if ((len > 8 && memcmp(end - 8, ".service", 8) == 0) || (len > 6 && memcmp(end - 6, ".scope", 6) == 0)) {
            if (len >= outlen)
                return -ENAMETOOLONG;
            memcpy(out, slash, len);
            out[len] = '\0';
            return 0;
        }
        end = slash > path ? slash - 1 : path;
    }
    return -ENOENT;
}

int proc_systemd_unit(pid_t pid, char *out, size_t outlen)
{
    /* systemd tracks units on the unified hierarchy when it has one (v2, and hybrid
     * mode), on name=systemd otherwise; a host may show both lines, one of them stale */
    char path[PATH_MAX];
    if (proc_cgroup_path(pid, NULL, path, sizeof(path)) == 0 && unit_of_path(path, out, outlen) == 0)
        return 0;
    if (proc_cgroup_path(pid, "name=systemd", path, sizeof(path)) == 0)
        return unit_of_path(path, out, outlen);
    return -ENOENT;
}

int signalfd_for(int sig, ...)
{
    sigset_t mask;
    sigemptyset(&mask);
    va_list ap;
    va_start(ap, sig);
    for (int s = sig; s; s = va_arg(ap, int))
        sigaddset(&mask, s);
    va_end(ap);
    /* blocked first: a signal between the two calls would otherwise take its default action */
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
        return -errno;
    int fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

char *buf_take_line(struct buf *in)
{
    char *nl = in->len ? memchr(in->p, '\n', in->len) : NULL;
    if (!nl)
        return NULL;
    char *line = qv_xasprintf("%.*s", (int)(nl - in->p), in->p);
    buf_consume(in, (size_t)(nl - in->p) + 1);
    return line;
}
