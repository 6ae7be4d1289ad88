/* Blocking forms of the QMP client for the CLI, start-up and tests: each runs a
 * poll() loop on the one connection until its own callback fired. Every wait is
 * bounded by the command's deadline, so none of them can hang. */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "qmp/qmp.h"

struct wait_result {
    bool done;
    int code;
    struct qv_err err;
    json_object *ret;
};

static void on_result(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct wait_result *w = ctx;
    w->done = true;
    if (err) {
        w->code = err->code < 0 ? err->code : -EIO;
        w->err = *err;
    } else if (ret) {
        w->ret = json_object_get(ret);
    }
}

/* Never returns while our command is pending: its callback points into the
 * caller's stack. Even when poll() itself fails, the loop goes on until the
 * command's deadline fails it. */
static void run_until_done(struct qmp *q, struct wait_result *w)
{
    while (!w->done) {
        uint64_t deadline = qmp_next_deadline(q);
        if (deadline == 0)
            return;  /* nothing pending, so nothing can point at w */
        uint64_t now = monotonic_ms();
        int wait_ms = deadline <= now ? 0 : deadline - now > INT_MAX ? INT_MAX : (int)(deadline - now);
        uint32_t want = qmp_poll_events(q);
        struct pollfd p = {
            .fd = qmp_fd(q),
            .events = (short)(((want & EPOLLIN) ? POLLIN : 0) | ((want & EPOLLOUT) ? POLLOUT : 0)),
        };
        int n = poll(&p, 1, wait_ms);
        if ((n < 0 && errno != EINTR) || (n > 0 && (p.revents & POLLNVAL))) {
            nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
        } else if (n > 0) {
            uint32_t got = ((p.revents & POLLIN) ? EPOLLIN : 0) | ((p.revents & POLLOUT) ? EPOLLOUT : 0) |
                           ((p.revents & POLLHUP) ? EPOLLHUP : 0) | ((p.revents & POLLERR) ? EPOLLERR : 0);
            /* A closed connection has already failed our command through its callback. */
            (void)qmp_handle_io(q, got, NULL);
        }
        qmp_expire(q, monotonic_ms());
    }
}

static int finish(struct qmp *q, struct wait_result *w, json_object **ret, struct qv_err *e)
{
    run_until_done(q, w);
    if (!w->done)
        return qv_fail(e, -EIO, "QMP: command vanished without a reply");
    if (w->code < 0) {
        json_object_put(w->ret);
        if (e)
            *e = w->err;
        return w->code;
    }
    if (ret)
        *ret = w->ret;
    else
        json_object_put(w->ret);
    return 0;
}

int qmp_handshake_sync(struct qmp *q, int timeout_ms, struct qv_err *e)
{
    struct wait_result w = {0};
    int r = qmp_handshake(q, timeout_ms, on_result, &w);
    if (r == -ECONNRESET)
        return qv_fail(e, r, "QMP handshake: connection already closed");
    if (r < 0)
        return qv_failerr(e, r, "QMP handshake");
    return finish(q, &w, NULL, e);
}

static int call(struct qmp *q, const char *cmd, json_object *args, const int *fds, size_t nfds,
                int timeout_ms, unsigned flags, json_object **ret, struct qv_err *e)
{
    if (ret)
        *ret = NULL;
    struct wait_result w = {0};
    int r = qmp_send(q, cmd, args, fds, nfds, timeout_ms, flags, on_result, &w);
    if (r == -ECONNRESET)
        return qv_fail(e, r, "%s: connection already closed", cmd ? cmd : "(null)");
    if (r < 0)
        return qv_failerr(e, r, "%s", cmd ? cmd : "(null)");
    return finish(q, &w, ret, e);
}

int qmp_call(struct qmp *q, const char *cmd, json_object *args, const int *fds, size_t nfds,
             int timeout_ms, json_object **ret, struct qv_err *e)
{
    return call(q, cmd, args, fds, nfds, timeout_ms, 0, ret, e);
}

int qmp_call_flags(struct qmp *q, const char *cmd, json_object *args, int timeout_ms, unsigned flags,
                   struct qv_err *e)
{
    return call(q, cmd, args, NULL, 0, timeout_ms, flags, NULL, e);
}

int qmp_agent_sync_call(struct qmp *q, int timeout_ms, struct qv_err *e)
{
    struct wait_result w = {0};
    int r = qmp_agent_sync(q, timeout_ms, on_result, &w);
    if (r < 0)
        return qv_failerr(e, r, "guest-sync-delimited");
    return finish(q, &w, NULL, e);
}

/* connect() on a unix socket with a full backlog fails with EAGAIN instead of
 * waiting, and there is nothing to poll for: retry until the deadline. */
static int connect_until(int fd, const struct sockaddr_un *sa, uint64_t deadline)
{
    for (;;) {
        if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN || monotonic_ms() >= deadline)
            return -errno;
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    }
}

int qmp_connect_path(const char *path, enum qmp_proto proto, int timeout_ms, qmp_event_fn on_event,
                     void *ctx, struct qmp **out, struct qv_err *e)
{
    *out = NULL;
    if (timeout_ms <= 0)
        timeout_ms = QMP_TIMEOUT_DEFAULT;
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;

    struct sockaddr_un sa;
    _cleanup_close_ int dirfd = -1;
    int r = unix_sockaddr(path, &sa, &dirfd);
    if (r < 0)
        return qv_failerr(e, r, "%s", path);

    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s: socket", path);
    r = connect_until(fd, &sa, deadline);
    if (r < 0)
        return qv_failerr(e, r, "%s: connect", path);

    struct qmp *q = qmp_new(qv_steal_fd(&fd), proto, on_event, ctx);
    if (!q)
        return qv_failerr(e, -errno, "%s", path);
    uint64_t now = monotonic_ms();
    int left = deadline > now ? (int)(deadline - now) : 1;
    r = proto == QMP_MONITOR ? qmp_handshake_sync(q, left, e) : qmp_agent_sync_call(q, left, e);
    if (r < 0) {
        qmp_free(q);
        if (e)
            qv_prefix(e, "%s: ", path);
        return r;
    }
    *out = q;
    return 0;
}
