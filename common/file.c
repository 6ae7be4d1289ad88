#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "common/common.h"

int write_all(int fd, const void *data, size_t n)
{
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int read_file(const char *path, size_t max, char **out, size_t *len)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct buf b = {0};
    buf_adds(&b, "");
    char chunk[8192];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof(chunk));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int err = -errno;
            buf_free(&b);
            return err;
        }
        if (r == 0)
            break;
        if (b.len + (size_t)r > max) {
            buf_free(&b);
            return -EFBIG;
        }
        buf_add(&b, chunk, (size_t)r);
    }
    *out = b.p;
    if (len)
        *len = b.len;
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s", path);
    _cleanup_close_ int dfd = open(dirname(tmp), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    return fsync(dfd) < 0 ? -errno : 0;
}

int write_file_atomic(const char *path, const void *data, size_t n, mode_t mode, struct qv_err *e)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp))
        return qv_fail(e, -ENAMETOOLONG, "%s: path too long", path);
    _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s: cannot create temporary file", path);
    int r = 0;
    if (fchmod(fd, mode) < 0 || (r = write_all(fd, data, n)) < 0 || fsync(fd) < 0) {
        r = r ? r : -errno;
        unlink(tmp);
        return qv_failerr(e, r, "%s: cannot write", path);
    }
    if (rename(tmp, path) < 0) {
        r = -errno;
        unlink(tmp);
        return qv_failerr(e, r, "%s: cannot rename into place", path);
    }
    r = fsync_dir_of(path);
    if (r < 0)
        return qv_failerr(e, r, "%s: cannot sync its directory", path);
    return 0;
}

int mkdir_p(const char *path, mode_t mode)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int fd_set_nonblock(int fd, bool on)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -errno;
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

int fd_set_cloexec(int fd, bool on)
{
    int fl = fcntl(fd, F_GETFD);
    if (fl < 0)
        return -errno;
    fl = on ? (fl | FD_CLOEXEC) : (fl & ~FD_CLOEXEC);
    return fcntl(fd, F_SETFD, fl) < 0 ? -errno : 0;
}

bool path_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

int qv_paths_init(struct qv_paths *p, const char *root, struct qv_err *e)
{
    if (!root || !*root)
        root = "/";
    if (root[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd)))
            return qv_failerr(e, -errno, "--root %s: cannot resolve", root);
        if (snprintf(p->root, sizeof(p->root), "%s/%s", cwd, root) >= (int)sizeof(p->root))
            return qv_fail(e, -ENAMETOOLONG, "--root %s: path too long", root);
    } else if (snprintf(p->root, sizeof(p->root), "%s", root) >= (int)sizeof(p->root)) {
        return qv_fail(e, -ENAMETOOLONG, "--root %s: path too long", root);
    }
    size_t n = strlen(p->root);
    while (n > 0 && p->root[n - 1] == '/')
        p->root[--n] = '\0';
    return 0;
}

int qv_path(const struct qv_paths *p, char *out, size_t outlen, const char *fmt, ...)
{
    char rel[PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(rel, sizeof(rel), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(rel))
        return -ENAMETOOLONG;
    n = snprintf(out, outlen, "%s/%s", p->root, rel);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* "pid N (its command line)" of the process holding a flock on fd's file, from
 * /proc/locks; "another process" when it cannot be told. */
static void lock_holder(int fd, char *out, size_t outlen)
{
    snprintf(out, outlen, "another process");
    struct stat st;
    _cleanup_fclose_ FILE *f = fstat(fd, &st) == 0 ? fopen("/proc/locks", "re") : NULL;
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof(line), f)) {
        /* "1: FLOCK  ADVISORY  WRITE 1234 fe:00:10953327 0 EOF"; waiters have "->" */
        char kind[16], mode[16];
        long pid;
        unsigned maj, min;
        unsigned long long ino;
        if (strstr(line, "->") ||
            sscanf(line, "%*d: %15s %*s %15s %ld %x:%x:%llu", kind, mode, &pid, &maj, &min, &ino) != 6 ||
            strcmp(kind, "FLOCK") != 0 || ino != (unsigned long long)st.st_ino || maj != major(st.st_dev) ||
            min != minor(st.st_dev) || pid <= 0 || pid == (long)getpid())
            continue;
        char path[64], cmd[160] = "";
        snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
        _cleanup_free_ char *args = NULL;
        size_t n = 0;
        if (read_file(path, 4096, &args, &n) == 0) {
            for (size_t i = 0; i + 1 < n; i++)
                if (args[i] == '\0')
                    args[i] = ' ';
            snprintf(cmd, sizeof(cmd), "%s", args);
        }
        snprintf(out, outlen, cmd[0] ? "pid %ld (%s)" : "pid %ld", pid, cmd);
        return;
    }
}

int flock_wait(int fd, const char *what, unsigned timeout_ms, struct qv_err *e)
{
    uint64_t deadline = monotonic_ms() + timeout_ms;
    useconds_t pause_us = 1000;
    for (;;) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EWOULDBLOCK)
            return qv_failerr(e, -errno, "%s: lock", what);
        if (monotonic_ms() >= deadline)
            break;
        usleep(pause_us);
        pause_us = pause_us < 50000 ? pause_us * 2 : 50000;
    }
    char holder[200];
    lock_holder(fd, holder, sizeof(holder));
    return qv_fail(e, -EBUSY, "%s is locked by %s; waited %u s (try again when it is done)", what, holder,
                   timeout_ms / 1000);
}

int dir_lock(const char *dir, struct qv_err *e)
{
    char lock[PATH_MAX];
    int r = mkdir_p(dir, 0755);
    if (r < 0)
        return qv_failerr(e, r, "%s", dir);
    snprintf(lock, sizeof(lock), "%s/.lock", dir);
    /* O_NOFOLLOW, O_NONBLOCK: whatever sits at the lock's path, opening it never waits */
    int fd = open(lock, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0600);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s", lock);
    if ((r = flock_wait(fd, lock, DIR_LOCK_WAIT_MS, e)) < 0) {
        close(fd);
        return r;
    }
    return fd;
}

int json_names_in(const char *dir, struct strv *names, struct qv_err *e)
{
    DIR *dh = opendir(dir);
    if (!dh)
        return errno == ENOENT ? 0 : qv_failerr(e, -errno, "%s", dir);
    struct dirent *de;
    while ((de = readdir(dh))) {
        size_t n = strlen(de->d_name);
        char name[256];
        if (n <= 5 || n > 5 + 64 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(n - 5), de->d_name);
        if (name_valid(name))
            strv_push(names, name);
    }
    closedir(dh);
    strv_sort(names);
    return 0;
}

/* path.N-1 -> path.N ... path -> path.1 by copy, then the open file is truncated in
 * place: every writer holding it with O_APPEND (QEMU's stderr among them) goes on
 * at the new end, and no one has to reopen anything. */
int log_rotate(int fd, const char *path, int backups, struct qv_err *e)
{
    char from[PATH_MAX], to[PATH_MAX];
    if (backups < 1)
        return ftruncate(fd, 0) < 0 ? qv_failerr(e, -errno, "%s: truncating", path) : 0;
    for (int i = backups - 1; i >= 1; i--) {
        snprintf(from, sizeof(from), "%s.%d", path, i);
        snprintf(to, sizeof(to), "%s.%d", path, i + 1);
        if (rename(from, to) < 0 && errno != ENOENT)
            return qv_failerr(e, -errno, "renaming %s", from);
    }
    snprintf(to, sizeof(to), "%s.1", path);
    _cleanup_close_ int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (out < 0)
        return qv_failerr(e, -errno, "%s", to);
    loff_t off = 0;
    for (;;) {
        ssize_t n = copy_file_range(fd, &off, out, NULL, 1 << 20, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return qv_failerr(e, -errno, "copying %s to %s", path, to);
        if (n == 0)
            break;
    }
    if (ftruncate(fd, 0) < 0)
        return qv_failerr(e, -errno, "%s: truncating", path);
    return 0;
}
