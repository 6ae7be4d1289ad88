/* A scripted QMP / guest-agent peer on a socketpair, for tests of anything that
 * talks QMP. #include this file from a test (it is not linked on its own).
 *
 * The peer can be driven step by step from the test's own thread (send bytes,
 * then let the client run, then read what it sent), or run a script function in
 * a thread for code that blocks. Nothing here asserts: failures are recorded in
 * peer->failure (first one wins) and the test checks it, because cmocka's
 * assertions must not run outside the test's thread. Every wait is bounded. */
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "common/common.h"
#include "qmp/qmp.h"

/* Tests use a subset of these helpers; the rest must not trip -Werror. */
#define PEER_FN static __attribute__((unused))
#define PEER_MAX_FDS 64
#define PEER_WAIT_MS 5000

struct qmp_peer {
    int fd;
    struct buf in;                  /* received, not yet returned as lines */
    int fds[PEER_MAX_FDS];          /* received descriptors, oldest first */
    size_t nfds;
    struct buf fd_chunk;            /* the data of the last recvmsg that carried fds */
    bool eof;
    pthread_t thread;
    bool thread_running;
    void (*script)(struct qmp_peer *p, void *arg);
    void *arg;
    char failure[512];
};

PEER_FN void peer_fail(struct qmp_peer *p, const char *fmt, ...) QV_PRINTF(2, 3);
PEER_FN void peer_fail(struct qmp_peer *p, const char *fmt, ...)
{
    if (p->failure[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->failure, sizeof(p->failure), fmt, ap);
    va_end(ap);
}

/* Returns the client's end. */
PEER_FN int peer_open(struct qmp_peer *p)
{
    *p = (struct qmp_peer){.fd = -1};
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    p->fd = sv[0];
    return sv[1];
}

PEER_FN const char *peer_join(struct qmp_peer *p)
{
    if (p->thread_running) {
        pthread_join(p->thread, NULL);
        p->thread_running = false;
    }
    return p->failure;
}

PEER_FN void peer_close(struct qmp_peer *p)
{
    if (p->fd >= 0) {
        /* Wakes a script thread blocked on the socket, so the join below ends. */
        shutdown(p->fd, SHUT_RDWR);
    }
    peer_join(p);
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
    for (size_t i = 0; i < p->nfds; i++)
        close(p->fds[i]);
    p->nfds = 0;
    buf_free(&p->in);
    buf_free(&p->fd_chunk);
}

/* Hang up the way a dying QEMU does, keeping the peer's bookkeeping. */
PEER_FN void peer_hangup(struct qmp_peer *p)
{
    if (p->fd >= 0)
        close(p->fd);
    p->fd = -1;
}

PEER_FN void *peer_thread_main(void *arg)
{
    struct qmp_peer *p = arg;
    p->script(p, p->arg);
    return NULL;
}

PEER_FN int peer_start(struct qmp_peer *p, void (*script)(struct qmp_peer *, void *), void *arg)
{
    p->script = script;
    p->arg = arg;
    int r = pthread_create(&p->thread, NULL, peer_thread_main, p);
    if (r != 0)
        return -r;
    p->thread_running = true;
    return 0;
}

PEER_FN int peer_sendn(struct qmp_peer *p, const void *data, size_t n)
{
    const char *s = data;
    while (n > 0) {
        ssize_t w = send(p->fd, s, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            peer_fail(p, "peer send: %s", strerror(errno));
            return -errno;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

PEER_FN int peer_send(struct qmp_peer *p, const char *s)
{
    return peer_sendn(p, s, strlen(s));
}

PEER_FN int peer_sendf(struct qmp_peer *p, const char *fmt, ...) QV_PRINTF(2, 3);
PEER_FN int peer_sendf(struct qmp_peer *p, const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    int r = peer_sendn(p, s, (size_t)n);
    free(s);
    return r;
}

#define PEER_GREETING                                                                              \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "             \
    "\"package\": \"Debian 1:7.2+dfsg-7\"}, \"capabilities\": [\"oob\"]}}\r\n"

/* Lets the client run once, as its event loop would on readiness. */
PEER_FN int peer_pump(struct qmp *q, struct qv_err *e)
{
    return qmp_handle_io(q, EPOLLIN | EPOLLOUT, e);
}

/* One recvmsg, keeping descriptors. With `q`, the client is pumped while the peer
 * waits (step-by-step tests in one thread); without, the peer just waits. */
PEER_FN int peer_read_some(struct qmp_peer *p, struct qmp *q, int timeout_ms)
{
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    for (;;) {
        struct pollfd pfd = {.fd = p->fd, .events = POLLIN};
        uint64_t now = monotonic_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        int wait = q ? 5 : (int)(deadline - now);
        int n = poll(&pfd, 1, wait);
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0)
            break;
        if (q)
            (void)peer_pump(q, NULL);
    }
    char data[65536];
    union {
        char buf[CMSG_SPACE(PEER_MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {data, sizeof(data)};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    ssize_t r = recvmsg(p->fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (r < 0)
        return errno == EAGAIN ? 0 : -errno;
    if (r == 0) {
        p->eof = true;
        return -ECONNRESET;
    }
    bool got_fds = false;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int fds[PEER_MAX_FDS];
        memcpy(fds, CMSG_DATA(cm), n * sizeof(int));
        for (size_t i = 0; i < n; i++) {
            if (p->nfds < PEER_MAX_FDS)
                p->fds[p->nfds++] = fds[i];
            else
                close(fds[i]);
        }
        got_fds = true;
    }
    if (got_fds) {
        buf_free(&p->fd_chunk);
        buf_add(&p->fd_chunk, data, (size_t)r);
    }
    buf_add(&p->in, data, (size_t)r);
    return 0;
}

/* The next line the client sent, without its newline (a leading 0xFF is kept).
 * NULL, with the failure recorded, if none came in time. Caller frees. */
PEER_FN char *peer_recv_line(struct qmp_peer *p, struct qmp *q)
{
    uint64_t deadline = monotonic_ms() + PEER_WAIT_MS;
    for (;;) {
        char *nl = p->in.len ? memchr(p->in.p, '\n', p->in.len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - p->in.p);
            char *line = qv_xmalloc(n + 1);
            memcpy(line, p->in.p, n);
            line[n] = '\0';
            buf_consume(&p->in, n + 1);
            return line;
        }
        uint64_t now = monotonic_ms();
        int r = now < deadline ? peer_read_some(p, q, (int)(deadline - now)) : -ETIMEDOUT;
        if (r < 0) {
            peer_fail(p, "peer: no complete line from the client: %s", strerror(-r));
            return NULL;
        }
    }
}

/* Reads the next command, checks it is `expect` (if non-NULL) and well formed, and
 * returns it; *id (if non-NULL) gets its "id" (malloc'd, NULL if absent). */
PEER_FN json_object *peer_recv_cmd(struct qmp_peer *p, struct qmp *q, const char *expect, char **id)
{
    if (id)
        *id = NULL;
    _cleanup_free_ char *line = peer_recv_line(p, q);
    if (!line)
        return NULL;
    const char *text = line[0] == '\xff' ? line + 1 : line;
    json_object *cmd = json_tokener_parse(text);
    json_object *execute, *idv;
    if (!cmd || !json_object_object_get_ex(cmd, "execute", &execute)) {
        peer_fail(p, "peer: not a command: %s", line);
        json_object_put(cmd);
        return NULL;
    }
    if (expect && strcmp(json_object_get_string(execute), expect) != 0) {
        peer_fail(p, "peer: expected %s, got %s", expect, text);
        json_object_put(cmd);
        return NULL;
    }
    if (id && json_object_object_get_ex(cmd, "id", &idv))
        *id = qv_xstrdup(json_object_get_string(idv));
    return cmd;
}

/* Expects `cmd` and answers it with `ret` (JSON text) under its id. */
PEER_FN bool peer_answer(struct qmp_peer *p, struct qmp *q, const char *cmd, const char *ret)
{
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = peer_recv_cmd(p, q, cmd, &id);
    if (!c)
        return false;
    if (!id) {
        peer_fail(p, "peer: %s came without an id", cmd);
        return false;
    }
    return peer_sendf(p, "{\"return\": %s, \"id\": \"%s\"}\r\n", ret, id) == 0;
}

/* Takes the oldest received descriptor, -1 if none. */
PEER_FN int peer_take_fd(struct qmp_peer *p)
{
    if (p->nfds == 0)
        return -1;
    int fd = p->fds[0];
    memmove(p->fds, p->fds + 1, (p->nfds - 1) * sizeof(int));
    p->nfds--;
    return fd;
}
