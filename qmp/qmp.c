/* QMP / guest-agent client core: the command list, the output queue (with fds),
 * timeouts and the public API. Reading, framing and dispatch are in reader.c; the
 * blocking helpers live in qmp_sync.c and use only qmp.h. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "qmp/internal.h"

const char *qmpi_peer_name(const struct qmp *q)
{
    return q->proto == QMP_AGENT ? "the guest agent" : "QEMU";
}

const char *qmpi_proto_name(const struct qmp *q)
{
    return q->proto == QMP_AGENT ? "guest agent" : "QMP";
}

/* ---- command list ---------------------------------------------------------- */

void qmpi_cmd_append(struct qmp *q, struct qmp_cmd *c)
{
    struct qmp_cmd **pp = &q->cmds;
    while (*pp)
        pp = &(*pp)->next;
    c->next = NULL;
    *pp = c;
}

void qmpi_cmd_unlink(struct qmp *q, struct qmp_cmd *c)
{
    for (struct qmp_cmd **pp = &q->cmds; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            c->next = NULL;
            return;
        }
    }
}

struct qmp_cmd *qmpi_cmd_find_kind(const struct qmp *q, enum cmd_kind kind)
{
    for (struct qmp_cmd *c = q->cmds; c; c = c->next)
        if (c->kind == kind)
            return c;
    return NULL;
}

struct qmp_cmd *qmpi_cmd_find_id(const struct qmp *q, json_object *id)
{
    if (!id || !json_object_is_type(id, json_type_string))
        return NULL;
    const char *s = json_object_get_string(id);
    if (!str_startswith(s, "qv-"))
        return NULL;
    uint64_t n;
    if (parse_u64(s + 3, &n) < 0)
        return NULL;
    for (struct qmp_cmd *c = q->cmds; c; c = c->next)
        if ((c->kind == CMD_PLAIN || c->kind == CMD_CAPABILITIES) && c->id == n)
            return c;
    return NULL;
}

/* Whoever a message without id is meant for: the command sent first. */
struct qmp_cmd *qmpi_cmd_oldest_sent(const struct qmp *q, bool skip_no_reply)
{
    for (struct qmp_cmd *c = q->cmds; c; c = c->next) {
        if (c->kind != CMD_PLAIN && c->kind != CMD_CAPABILITIES)
            continue;
        if (skip_no_reply && (c->flags & QMP_NO_REPLY_OK))
            continue;
        return c;
    }
    return NULL;
}


/* Calls back and frees an unlinked command. The callback may queue new commands. */
void qmpi_cmd_complete(struct qmp *q, struct qmp_cmd *c, json_object *ret, const struct qv_err *err)
{
    bool handshake = c->kind == CMD_GREETING || c->kind == CMD_CAPABILITIES;
    if (handshake)
        q->handshaking = false;     /* held commands may go now (or fail below) */
    if (!err && c->kind == CMD_CAPABILITIES)
        q->ready = true;
    if (!err && c->kind == CMD_SYNC) {
        q->ready = true;
        q->unsynced = false;
    }
    if (c->done) {
        q->callback_depth++;
        c->done(c->ctx, ret, err);
        q->callback_depth--;
    }
    if (err && handshake)
        qmpi_close_connection(q, "QMP connection closed: the handshake failed: %s", err->msg);
    free(c);
}

void qmpi_cmd_fail(struct qmp *q, struct qmp_cmd *c, int code, const char *fmt, ...)
{
    struct qv_err err = {0};
    char why[sizeof(err.msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    qv_fail(&err, code, "%s: %s", c->name, why);
    qmpi_cmd_complete(q, c, NULL, &err);
}

/* ---- output ------------------------------------------------------------------ */

/* While the handshake runs, only qmp_capabilities may leave: QEMU refuses
 * anything else before it. A message already partly sent is never held. */
static bool out_held(const struct qmp *q, const struct qmp_out *o)
{
    return q->handshaking && !o->handshake && o->off == 0;
}

static void out_free(struct qmp_out *o)
{
    for (size_t i = 0; i < o->nfds; i++)
        close(o->fds[i]);
    free(o->fds);
    free(o->data);
    free(o);
}

/* Sends what the socket takes. A message with descriptors always starts its own
 * sendmsg and carries them there, so QEMU receives them with that command's bytes
 * and not with an earlier or later command. Returns 0 (EAGAIN included) or -errno. */
static int flush_output(struct qmp *q)
{
    while (q->out && !out_held(q, q->out)) {
        struct iovec iov[MAX_IOV];
        size_t n = 0;
        struct qmp_out *first = q->out;
        iov[n++] = (struct iovec){first->data + first->off, first->len - first->off};
        if (first->nfds == 0)
            for (struct qmp_out *o = first->next; o && o->nfds == 0 && !out_held(q, o) && n < MAX_IOV; o = o->next)
                iov[n++] = (struct iovec){o->data, o->len};

        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = n};
        _cleanup_free_ char *control = NULL;
        if (first->nfds > 0) {
            size_t payload = first->nfds * sizeof(int);
            control = qv_xcalloc(1, CMSG_SPACE(payload));
            msg.msg_control = control;
            msg.msg_controllen = CMSG_SPACE(payload);
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(payload);
            memcpy(CMSG_DATA(cm), first->fds, payload);
        }
        ssize_t w = sendmsg(q->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -errno;
        }
        if (first->nfds > 0) {
            /* The kernel attached them to the first bytes sent: they are gone. */
            for (size_t i = 0; i < first->nfds; i++)
                close(first->fds[i]);
            first->nfds = 0;
        }
        size_t left = (size_t)w;
        while (q->out && left > 0) {
            struct qmp_out *o = q->out;
            size_t part = o->len - o->off;
            if (left < part) {
                o->off += left;
                break;
            }
            left -= part;
            q->out = o->next;
            out_free(o);
        }
    }
    return 0;
}

/* ---- closing ------------------------------------------------------------------- */

void qmpi_close_connection(struct qmp *q, const char *fmt, ...)
{
    if (q->closed)
        return;
    q->closed = true;
    q->ready = false;
    q->handshaking = false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->close_reason, sizeof(q->close_reason), fmt, ap);
    va_end(ap);
    /* The peer sees the hang-up at once; the fd itself stays ours until qmp_free
     * so the caller can still remove it from its epoll set. */
    shutdown(q->fd, SHUT_RDWR);
    while (q->out) {
        struct qmp_out *o = q->out;
        q->out = o->next;
        out_free(o);
    }
    buf_free(&q->in);
    json_tokener_reset(q->tok);

    /* Detached first: callbacks run against a closed qmp and cannot add to it. */
    struct qmp_cmd *list = q->cmds;
    q->cmds = NULL;
    while (list) {
        struct qmp_cmd *c = list;
        list = c->next;
        if (c->flags & QMP_NO_REPLY_OK)
            qmpi_cmd_complete(q, c, NULL, NULL);
        else
            qmpi_cmd_fail(q, c, -ECONNRESET, "%s", q->close_reason);
    }
}

/* ---- public API -------------------------------------------------------------------- */


struct qmp *qmp_new(int fd, enum qmp_proto proto, qmp_event_fn on_event, void *ctx)
{
    if (fd < 0) {
        errno = EBADF;
        return NULL;
    }
    int r = fd_set_nonblock(fd, true);
    if (r == 0)
        r = fd_set_cloexec(fd, true);
    if (r < 0) {
        close(fd);
        errno = -r;
        return NULL;
    }
    struct qmp *q = qv_xcalloc(1, sizeof(*q));
    q->fd = fd;
    q->proto = proto;
    q->on_event = on_event;
    q->ctx = ctx;
    q->next_id = 1;
    q->rbuf = qv_xmalloc(READ_CHUNK);
    q->tok = qmpi_tokener_new();
    return q;
}

void qmp_free(struct qmp *q)
{
    if (!q)
        return;
    if (q->callback_depth > 0) {
        /* The dispatcher still holds q when the callback returns: freeing it here
         * would turn into a use-after-free far from the cause. */
        static const char msg[] = "qvisor: qmp_free called from a qmp callback\n";
        ssize_t w = write(2, msg, sizeof(msg) - 1);
        (void)w;
        abort();
    }
    while (q->cmds) {
        struct qmp_cmd *c = q->cmds;
        q->cmds = c->next;
        free(c);
    }
    while (q->out) {
        struct qmp_out *o = q->out;
        q->out = o->next;
        out_free(o);
    }
    json_tokener_free(q->tok);
    buf_free(&q->in);
    free(q->rbuf);
    if (q->fd >= 0)
        close(q->fd);
    free(q);
}

int qmp_fd(const struct qmp *q)
{
    return q->fd;
}

bool qmp_ready(const struct qmp *q)
{
    return q->ready && !q->closed;
}

const char *qmp_qemu_version(const struct qmp *q)
{
    return q->version;
}

void qmp_qemu_version_numbers(const struct qmp *q, int *major, int *minor, int *micro)
{
    if (major)
        *major = q->major;
    if (minor)
        *minor = q->minor;
    if (micro)
        *micro = q->micro;
}

static uint64_t deadline_after(int timeout_ms)
{
    return monotonic_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : QMP_TIMEOUT_DEFAULT);
}

static struct qmp_cmd *cmd_new(enum cmd_kind kind, const char *name, int timeout_ms, unsigned flags,
                               qmp_reply_fn done, void *ctx)
{
    struct qmp_cmd *c = qv_xcalloc(1, sizeof(*c));
    c->kind = kind;
    snprintf(c->name, sizeof(c->name), "%s", name);
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : QMP_TIMEOUT_DEFAULT;
    c->deadline_ms = deadline_after(c->timeout_ms);
    c->flags = flags;
    c->done = done;
    c->ctx = ctx;
    return c;
}

/* Queues bytes (taking `data`) with duplicates of fds, then tries to send. The
 * handshake's message goes before the commands held back for it. */
int qmpi_queue_output(struct qmp *q, char *data, const int *fds, size_t nfds, bool handshake)
{
    _cleanup_free_ char *owned = data;
    _cleanup_free_ int *dups = NULL;
    if (nfds > 0) {
        dups = qv_xcalloc(nfds, sizeof(int));
        for (size_t i = 0; i < nfds; i++) {
            dups[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
            if (dups[i] < 0) {
                int err = -errno;
                for (size_t k = 0; k < i; k++)
                    close(dups[k]);
                return err;
            }
        }
    }
    struct qmp_out *o = qv_xcalloc(1, sizeof(*o));
    o->len = strlen(owned);
    o->data = qv_steal_ptr(&owned);
    o->fds = qv_steal_ptr(&dups);
    o->nfds = nfds;
    o->handshake = handshake;
    struct qmp_out **pp = &q->out;
    while (*pp && !(handshake && out_held(q, *pp)))
        pp = &(*pp)->next;
    o->next = *pp;
    *pp = o;
    /* A send error shows up again, and is reported, in the next qmp_handle_io:
     * callbacks never run from inside qmp_send. */
    (void)flush_output(q);
    return 0;
}

int qmp_handshake(struct qmp *q, int timeout_ms, qmp_reply_fn done, void *ctx)
{
    if (q->proto != QMP_MONITOR)
        return -EINVAL;
    if (q->closed)
        return -ECONNRESET;
    if (q->ready || qmpi_cmd_find_kind(q, CMD_GREETING) || qmpi_cmd_find_kind(q, CMD_CAPABILITIES))
        return -EALREADY;
    struct qmp_cmd *c = cmd_new(CMD_GREETING, "QMP handshake", timeout_ms, 0, done, ctx);
    qmpi_cmd_append(q, c);
    q->handshaking = true;
    if (q->greeting_seen)
        qmpi_start_capabilities(q, c);
    return 0;
}

int qmp_send(struct qmp *q, const char *cmd, json_object *args, const int *fds, size_t nfds,
             int timeout_ms, unsigned flags, qmp_reply_fn done, void *ctx)
{
    _cleanup_json_ json_object *owned_args = args;
    if (!cmd || !*cmd || nfds > MAX_FDS || (nfds > 0 && !fds) ||
        (owned_args && !json_object_is_type(owned_args, json_type_object)))
        return -EINVAL;
    if (q->closed)
        return -ECONNRESET;

    uint64_t id = q->next_id++;
    _cleanup_json_ json_object *msg = json_object_new_object();
    json_object_object_add(msg, "execute", json_object_new_string(cmd));
    if (owned_args)
        json_object_object_add(msg, "arguments", qv_steal_ptr(&owned_args));
    char idstr[32];
    snprintf(idstr, sizeof(idstr), "qv-%" PRIu64, id);
    json_object_object_add(msg, "id", json_object_new_string(idstr));
    char *line = qv_xasprintf(
        "%s\n", json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));

    /* Registered before the bytes leave, so even an instant reply finds it. */
    struct qmp_cmd *c = cmd_new(CMD_PLAIN, cmd, timeout_ms, flags, done, ctx);
    c->id = id;
    qmpi_cmd_append(q, c);
    int r = qmpi_queue_output(q, line, fds, nfds, false);
    if (r < 0) {
        qmpi_cmd_unlink(q, c);
        free(c);
    }
    return r;
}

static int64_t random_sync_id(void)
{
    uint32_t v = 0;
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
        v = (uint32_t)(monotonic_ms() * 2654435761u) ^ (uint32_t)getpid();
    v &= 0x7fffffffu;
    return v ? v : 1;
}

int qmp_agent_sync(struct qmp *q, int timeout_ms, qmp_reply_fn done, void *ctx)
{
    if (q->proto != QMP_AGENT)
        return -EINVAL;
    if (q->closed)
        return -ECONNRESET;
    /* Replies to commands already sent would be thrown away as stale. */
    if (q->cmds)
        return -EBUSY;
    struct qmp_cmd *c = cmd_new(CMD_SYNC, "guest-sync-delimited", timeout_ms, 0, done, ctx);
    c->sync_id = random_sync_id();
    /* The leading 0xFF makes the agent drop whatever partial input an earlier
     * client left in its parser. */
    char *line = qv_xasprintf("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":%" PRId64 "}}\n",
                              c->sync_id);
    q->ready = false;
    q->unsynced = true;
    q->after_sentinel = false;
    json_tokener_reset(q->tok);
    q->fed = 0;
    qmpi_cmd_append(q, c);
    int r = qmpi_queue_output(q, line, NULL, 0, false);
    if (r < 0) {
        qmpi_cmd_unlink(q, c);
        free(c);
    }
    return r;
}


int qmp_handle_io(struct qmp *q, uint32_t epoll_events, struct qv_err *e)
{
    /* Reading comes first: a peer that answered and then hung up must have its
     * answers delivered before the hang-up fails what is left. */
    if (!q->closed && (epoll_events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)))
        qmpi_read_input(q);
    if (!q->closed && q->out && !out_held(q, q->out)) {
        int r = flush_output(q);
        if (r < 0) {
            qmpi_read_input(q);
            qmpi_close_connection(q, "%s connection closed: sending to %s: %s", qmpi_proto_name(q), qmpi_peer_name(q),
                             strerror(-r));
        }
    }
    if (q->closed)
        return qv_fail(e, -ECONNRESET, "%s", q->close_reason);
    return 0;
}

uint32_t qmp_poll_events(const struct qmp *q)
{
    if (q->closed)
        return 0;
    /* held commands wait for the handshake's reply, not for the socket */
    return EPOLLIN | (q->out && !out_held(q, q->out) ? EPOLLOUT : 0);
}

uint64_t qmp_next_deadline(const struct qmp *q)
{
    uint64_t best = 0;
    for (const struct qmp_cmd *c = q->cmds; c; c = c->next)
        if (best == 0 || c->deadline_ms < best)
            best = c->deadline_ms;
    return best;
}

void qmp_expire(struct qmp *q, uint64_t now_ms)
{
    /* Detached first, in order, so that commands queued by the callbacks wait
     * for their own deadline. */
    struct qmp_cmd *expired = NULL, **tail = &expired;
    for (struct qmp_cmd **pp = &q->cmds; *pp;) {
        struct qmp_cmd *c = *pp;
        if (c->deadline_ms <= now_ms) {
            *pp = c->next;
            c->next = NULL;
            *tail = c;
            tail = &c->next;
        } else {
            pp = &c->next;
        }
    }
    while (expired) {
        struct qmp_cmd *c = expired;
        expired = c->next;
        if (c->flags & QMP_NO_REPLY_OK)
            qmpi_cmd_complete(q, c, NULL, NULL);
        else if (c->kind == CMD_GREETING)
            qmpi_cmd_fail(q, c, -ETIMEDOUT, "no greeting from %s within %d ms", qmpi_peer_name(q), c->timeout_ms);
        else
            qmpi_cmd_fail(q, c, -ETIMEDOUT, "no reply from %s within %d ms", qmpi_peer_name(q), c->timeout_ms);
    }
}

void qmp_event_handler(const struct qmp *q, qmp_event_fn *on_event, void **ctx)
{
    *on_event = q->on_event;
    *ctx = q->ctx;
}

size_t qmp_pending(const struct qmp *q)
{
    size_t n = 0;
    for (const struct qmp_cmd *c = q->cmds; c; c = c->next)
        n++;
    return n;
}
