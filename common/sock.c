#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "common/common.h"

int unix_sockaddr(const char *path, struct sockaddr_un *addr, int *dirfd)
{
    *dirfd = -1;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    if (strlen(path) < sizeof(addr->sun_path)) {
        memcpy(addr->sun_path, path, strlen(path));
        return 0;
    }
    char dir[PATH_MAX], base[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    snprintf(base, sizeof(base), "%s", path);
    *dirfd = open(dirname(dir), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (*dirfd < 0)
        return -errno;
    int n = snprintf(addr->sun_path, sizeof(addr->sun_path), "/proc/self/fd/%d/%s", *dirfd, basename(base));
    if (n < 0 || (size_t)n >= sizeof(addr->sun_path)) {
        close(*dirfd);
        *dirfd = -1;
        return -ENAMETOOLONG;
    }
    return 0;
}

int unix_listen(const char *path, int backlog, int *out, struct qv_err *e)
{
    struct sockaddr_un addr;
    _cleanup_close_ int dirfd = -1;
    int r = unix_sockaddr(path, &addr, &dirfd);
    if (r < 0)
        return qv_failerr(e, r, "%s", path);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s: socket", path);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return qv_failerr(e, -errno, "%s: bind", path);
    if (listen(fd, backlog) < 0)
        return qv_failerr(e, -errno, "%s: listen", path);
    *out = qv_steal_fd(&fd);
    return 0;
}

int unix_connect(const char *path, int *out, struct qv_err *e)
{
    struct sockaddr_un addr;
    _cleanup_close_ int dirfd = -1;
    int r = unix_sockaddr(path, &addr, &dirfd);
    if (r < 0)
        return qv_failerr(e, r, "%s", path);
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s: socket", path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return qv_failerr(e, -errno, "%s: connect", path);
    *out = qv_steal_fd(&fd);
    return 0;
}
