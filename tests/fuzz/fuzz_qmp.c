/* libFuzzer: what QEMU or a guest agent sends, into the QMP client's reader and
 * framer over a real socketpair. The first byte picks the protocol, whether an
 * agent sync runs, and the chunk size the bytes arrive in; commands are pending
 * so that replies with ids "qv-1".."qv-4" match, and a reply callback sends more.
 * A guest controls its agent's output: nothing in it may crash or hang us. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "qmp/qmp.h"

struct run {
    struct qmp *q;
    int replies, events;
};

static void on_event(void *ctx, const char *event, json_object *data, uint64_t ts_us)
{
    struct run *r = ctx;
    (void)data;
    (void)ts_us;
    if (!event)
        abort();
    r->events++;
}

static void on_reply(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct run *r = ctx;
    if (err && ret)
        abort();    /* one or the other */
    if (err && !err->msg[0])
        abort();
    if (++r->replies < 4)
        qmp_send(r->q, "query-status", NULL, NULL, 0, 1000, 0, on_reply, r);
}

static void drain(int fd)
{
    char sink[65536];
    while (recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0) {
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    enum qmp_proto proto = (mode & 1) ? QMP_AGENT : QMP_MONITOR;
    size_t chunk = 1 + (size_t)(mode >> 2) * 5;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    struct run r = {0};
    r.q = qmp_new(sv[1], proto, on_event, &r);
    if (!r.q)
        abort();
    if (proto == QMP_MONITOR)
        qmp_handshake(r.q, 1000, on_reply, &r);
    else if (mode & 2)
        qmp_agent_sync(r.q, 1000, on_reply, &r);
    qmp_send(r.q, "query-status", NULL, NULL, 0, 1000, 0, on_reply, &r);
    qmp_send(r.q, "guest-shutdown", NULL, NULL, 0, 1000, QMP_NO_REPLY_OK, on_reply, &r);
    int rc = 0;
    for (size_t off = 0; off < size && rc == 0; off += chunk) {
        size_t n = size - off < chunk ? size - off : chunk;
        if (send(sv[0], data + off, n, MSG_NOSIGNAL) != (ssize_t)n)
            break;
        rc = qmp_handle_io(r.q, EPOLLIN | EPOLLOUT, NULL);
        drain(sv[0]);
    }
    /* the peer goes away: whatever is pending completes exactly once */
    shutdown(sv[0], SHUT_RDWR);
    qmp_handle_io(r.q, EPOLLIN | EPOLLHUP, NULL);
    if (qmp_pending(r.q) != 0)
        abort();
    qmp_free(r.q);
    close(sv[0]);
    return 0;
}
