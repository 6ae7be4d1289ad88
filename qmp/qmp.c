/* QMP / guest-agent client core: framing, parsing, dispatch, output queue,
 * timeouts. The blocking helpers live in qmp_sync.c and use only qmp.h. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "qmp/qmp.h"

/* One read() is bounded by this chunk, and one qmp_handle_io call by READ_BUDGET,
 * so a peer that floods us cannot starve the caller's other file descriptors. */
#define READ_CHUNK (64u << 10)
#define READ_BUDGET (1u << 20)
/* The kernel's limit on descriptors in one SCM_RIGHTS message (SCM_MAX_FD). */
#define MAX_FDS 253
#define MAX_IOV 16
/* After a message larger than this the tokener is replaced, to give its memory back. */
#define BIG_MESSAGE (1u << 20)

enum cmd_kind {
    CMD_PLAIN,
    CMD_GREETING,       /* waits for the greeting, then becomes CMD_CAPABILITIES */
    CMD_CAPABILITIES,
    CMD_SYNC,           /* guest-sync-delimited: answered after a 0xFF, without id */
};

struct qmp_cmd {
    struct qmp_cmd *next;
    enum cmd_kind kind;
    uint64_t id;            /* the N of "qv-N"; unused for greeting and sync */
    int64_t sync_id;
    char name[64];
    uint64_t deadline_ms;
    int timeout_ms;
    unsigned flags;
    qmp_reply_fn done;
    void *ctx;
};

struct qmp_out {
    struct qmp_out *next;
    char *data;
    size_t len, off;
    int *fds;               /* our duplicates, closed once sent */
    size_t nfds;
    bool handshake;         /* qmp_capabilities: never held back */
};

struct qmp {
    int fd;
    enum qmp_proto proto;
    qmp_event_fn on_event;
    void *ctx;

    json_tokener *tok;
    struct buf in;          /* received, not yet fed to the tokener */
    size_t fed;             /* bytes fed into the current unfinished message */
    char *rbuf;

    struct qmp_cmd *cmds;   /* oldest first */
    struct qmp_out *out;    /* oldest first */
    uint64_t next_id;
    unsigned callback_depth;

    bool greeting_seen, ready, closed;
    bool handshaking;       /* from qmp_handshake until capabilities succeeded or failed */
    /* Agent stream state: `unsynced` from a guest-sync-delimited until its echo
     * (input is discarded up to each 0xFF); `after_sentinel` while parsing the
     * message that follows a 0xFF, which is only ever a sync echo. */
    bool unsynced, after_sentinel;

    char close_reason[256];
    int major, minor, micro;
    char version[48];
};

static const char *peer_name(const struct qmp *q)
{
    return q->proto == QMP_AGENT ? "the guest agent" : "QEMU";
}

static const char *proto_name(const struct qmp *q)
{
    return q->proto == QMP_AGENT ? "guest agent" : "QMP";
}

/* ---- command list ---------------------------------------------------------- */

static void cmd_append(struct qmp *q, struct qmp_cmd *c)
{
    struct qmp_cmd **pp = &q->cmds;
    while (*pp)
        pp = &(*pp)->next;
    c->next = NULL;
    *pp = c;
}

static void cmd_unlink(struct qmp *q, struct qmp_cmd *c)
{
    for (struct qmp_cmd **pp = &q->cmds; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            c->next = NULL;
            return;
        }
    }
}

static struct qmp_cmd *cmd_find_kind(const struct qmp *q, enum cmd_kind kind)
{
    for (struct qmp_cmd *c = q->cmds; c; c = c->next)
        if (c->kind == kind)
            return c;
    return NULL;
}

static struct qmp_cmd *cmd_find_id(const struct qmp *q, json_object *id)
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
static struct qmp_cmd *cmd_oldest_sent(const struct qmp *q, bool skip_no_reply)
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

static void close_connection(struct qmp *q, const char *fmt, ...) QV_PRINTF(2, 3);

/* Calls back and frees an unlinked command. The callback may queue new commands. */
static void cmd_complete(struct qmp *q, struct qmp_cmd *c, json_object *ret, const struct qv_err *err)
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
        close_connection(q, "QMP connection closed: the handshake failed: %s", err->msg);
    free(c);
}

static void cmd_fail(struct qmp *q, struct qmp_cmd *c, int code, const char *fmt, ...) QV_PRINTF(4, 5);
static void cmd_fail(struct qmp *q, struct qmp_cmd *c, int code, const char *fmt, ...)
{
    struct qv_err err = {0};
    char why[sizeof(err.msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    qv_fail(&err, code, "%s: %s", c->name, why);
    cmd_complete(q, c, NULL, &err);
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

static void close_connection(struct qmp *q, const char *fmt, ...)
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
            cmd_complete(q, c, NULL, NULL);
        else
            cmd_fail(q, c, -ECONNRESET, "%s", q->close_reason);
    }
}

/* ---- incoming messages ------------------------------------------------------------ */

static int error_class_code(const char *cls)
{
    if (strcmp(cls, "CommandNotFound") == 0 || strcmp(cls, "KVMMissingCap") == 0)
        return -EOPNOTSUPP;
    if (strcmp(cls, "DeviceNotFound") == 0)
        return -ENOENT;
    if (strcmp(cls, "DeviceNotActive") == 0)
        return -ENODEV;
    return -EIO;
}

static void fail_with_qemu_error(struct qmp *q, struct qmp_cmd *c, json_object *error)
{
    json_object *cls = NULL, *desc = NULL;
    if (json_object_is_type(error, json_type_object)) {
        json_object_object_get_ex(error, "class", &cls);
        json_object_object_get_ex(error, "desc", &desc);
    }
    const char *cls_s = json_object_is_type(cls, json_type_string) ? json_object_get_string(cls)
                                                                   : "GenericError";
    const char *desc_s = json_object_is_type(desc, json_type_string) ? json_object_get_string(desc)
                                                                     : "(no description)";
    struct qv_err err = {0};
    qv_fail(&err, error_class_code(cls_s), "%s: %s", cls_s, desc_s);
    cmd_complete(q, c, NULL, &err);
}

static int queue_output(struct qmp *q, char *data, const int *fds, size_t nfds, bool handshake);

/* The handshake goes on in the same entry: same deadline, same callback. */
static void start_capabilities(struct qmp *q, struct qmp_cmd *c)
{
    c->kind = CMD_CAPABILITIES;
    c->id = q->next_id++;
    snprintf(c->name, sizeof(c->name), "qmp_capabilities");
    (void)queue_output(q, qv_xasprintf("{\"execute\":\"qmp_capabilities\",\"id\":\"qv-%" PRIu64 "\"}\n", c->id),
                       NULL, 0, true);
}

static void handle_greeting(struct qmp *q, json_object *greeting)
{
    if (q->greeting_seen)
        return;
    q->greeting_seen = true;
    json_object *version, *qemu, *v;
    if (json_object_object_get_ex(greeting, "version", &version) &&
        json_object_object_get_ex(version, "qemu", &qemu) &&
        json_object_is_type(qemu, json_type_object)) {
        int *fields[] = {&q->major, &q->minor, &q->micro};
        const char *names[] = {"major", "minor", "micro"};
        for (size_t i = 0; i < ARRAY_SIZE(fields); i++)
            if (json_object_object_get_ex(qemu, names[i], &v) && json_object_is_type(v, json_type_int))
                *fields[i] = json_object_get_int(v);
        snprintf(q->version, sizeof(q->version), "%d.%d.%d", q->major, q->minor, q->micro);
    }
    struct qmp_cmd *wait = cmd_find_kind(q, CMD_GREETING);
    if (wait)
        start_capabilities(q, wait);
}

static void handle_event(struct qmp *q, json_object *msg, json_object *event)
{
    if (!json_object_is_type(event, json_type_string) || !q->on_event)
        return;
    json_object *data = NULL, *ts, *v;
    json_object_object_get_ex(msg, "data", &data);
    uint64_t ts_us = 0;
    if (json_object_object_get_ex(msg, "timestamp", &ts) && json_object_is_type(ts, json_type_object)) {
        int64_t sec = 0, usec = 0;
        if (json_object_object_get_ex(ts, "seconds", &v))
            sec = json_object_get_int64(v);
        if (json_object_object_get_ex(ts, "microseconds", &v))
            usec = json_object_get_int64(v);
        /* QEMU stamps -1 when it has no clock; that is "no timestamp", not 2^64-1. */
        if (sec >= 0 && usec >= 0)
            ts_us = (uint64_t)sec * 1000000u + (uint64_t)usec;
    }
    q->callback_depth++;
    q->on_event(q->ctx, json_object_get_string(event), data, ts_us);
    q->callback_depth--;
}

/* Takes ownership of msg (which may be NULL: the JSON literal null). */
static void handle_message(struct qmp *q, json_object *msg_owned)
{
    _cleanup_json_ json_object *msg = msg_owned;
    json_object *v, *id = NULL;

    if (q->after_sentinel) {
        q->after_sentinel = false;
        struct qmp_cmd *sync = cmd_find_kind(q, CMD_SYNC);
        if (sync && json_object_is_type(msg, json_type_object) &&
            json_object_object_get_ex(msg, "return", &v) && json_object_is_type(v, json_type_int) &&
            json_object_get_int64(v) == sync->sync_id) {
            cmd_unlink(q, sync);
            cmd_complete(q, sync, v, NULL);
        }
        /* Anything else after a 0xFF is the echo of an older sync: stale. */
        return;
    }
    if (q->unsynced)
        return;

    if (!json_object_is_type(msg, json_type_object)) {
        close_connection(q, "%s connection closed: %s sent a JSON %s instead of an object",
                         proto_name(q), peer_name(q), json_type_to_name(json_object_get_type(msg)));
        return;
    }
    if (q->proto == QMP_MONITOR && json_object_object_get_ex(msg, "QMP", &v)) {
        handle_greeting(q, v);
        return;
    }
    if (json_object_object_get_ex(msg, "event", &v)) {
        handle_event(q, msg, v);
        return;
    }
    json_object_object_get_ex(msg, "id", &id);
    if (json_object_object_get_ex(msg, "return", &v)) {
        struct qmp_cmd *c = cmd_find_id(q, id);
        /* A guest agent that does not echo ids still answers strictly in order. A
         * monitor always echoes ours, so a return it sends without one is not for us. */
        if (!c && !id && q->proto == QMP_AGENT)
            c = cmd_oldest_sent(q, true);
        if (!c)
            return;
        cmd_unlink(q, c);
        cmd_complete(q, c, v, NULL);
        return;
    }
    if (json_object_object_get_ex(msg, "error", &v)) {
        /* Without an id, QEMU is reporting input it could not parse: that was the
         * command sent first among those still waiting. */
        struct qmp_cmd *c = id ? cmd_find_id(q, id) : cmd_oldest_sent(q, false);
        if (!c)
            return;
        cmd_unlink(q, c);
        fail_with_qemu_error(q, c, v);
        return;
    }
    /* Unknown message kinds are a newer protocol talking: ignore them. */
}

/* Input we cannot make sense of: fatal, except while an agent stream is being
 * resynchronised, where garbage is exactly what we expect to skip. */
static void input_error(struct qmp *q, const char *fmt, ...) QV_PRINTF(2, 3);
static void input_error(struct qmp *q, const char *fmt, ...)
{
    if (q->unsynced) {
        json_tokener_reset(q->tok);
        q->fed = 0;
        q->after_sentinel = false;
        return;
    }
    char why[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    close_connection(q, "%s connection closed: %s", proto_name(q), why);
}

static void too_large(struct qmp *q)
{
    input_error(q, "a message from %s is larger than %u bytes (%u MiB, the limit for one message)", peer_name(q),
                QMP_MAX_MESSAGE, QMP_MAX_MESSAGE >> 20);
}

static void saw_sentinel(struct qmp *q)
{
    json_tokener_reset(q->tok);
    q->fed = 0;
    q->after_sentinel = true;
}

static json_tokener *tokener_new(void);

static void process_input(struct qmp *q)
{
    /* State lives in q and is re-read every round: a callback run from
     * handle_message may itself have consumed input. */
    while (!q->closed && q->in.len > 0) {
        const unsigned char *p = (const unsigned char *)q->in.p;
        size_t len = q->in.len;
        bool final = false;

        if (q->proto == QMP_AGENT) {
            const unsigned char *ff = memchr(p, 0xFF, len);
            if (q->unsynced && !q->after_sentinel) {
                buf_consume(&q->in, ff ? (size_t)(ff - p) + 1 : len);
                if (ff)
                    saw_sentinel(q);
                continue;
            }
            if (ff == p) {
                buf_consume(&q->in, 1);
                saw_sentinel(q);
                continue;
            }
            if (ff) {
                len = (size_t)(ff - p);
                final = true;
            }
        }

        size_t room = QMP_MAX_MESSAGE - q->fed;
        bool capped = len > room;
        if (capped) {
            len = room;
            final = false;
        }
        size_t ok;
        if (!utf8_prefix(p, len, final, &ok)) {
            input_error(q, "%s sent invalid UTF-8", peer_name(q));
            continue;
        }
        if (ok == 0) {
            if (capped)
                too_large(q);
            break;  /* the rest of a character is still on its way */
        }

        json_object *obj = json_tokener_parse_ex(q->tok, (const char *)p, (int)ok);
        enum json_tokener_error jerr = json_tokener_get_error(q->tok);
        if (jerr == json_tokener_continue) {
            buf_consume(&q->in, ok);
            q->fed += ok;
            if (q->fed >= QMP_MAX_MESSAGE)
                too_large(q);
            continue;
        }
        if (jerr == json_tokener_error_depth) {
            input_error(q, "a message from %s is nested deeper than %d levels", peer_name(q), QMP_MAX_DEPTH);
            continue;
        }
        if (jerr == json_tokener_error_parse_utf8_string) {
            input_error(q, "%s sent invalid UTF-8", peer_name(q));
            continue;
        }
        if (jerr != json_tokener_success) {
            input_error(q, "%s sent invalid JSON (%s)", peer_name(q), json_tokener_error_desc(jerr));
            continue;
        }
        size_t used = json_tokener_get_parse_end(q->tok);
        if (used == 0 || used > ok) {
            /* Cannot happen with json-c as we know it; never loop on it. */
            json_object_put(obj);
            input_error(q, "JSON parser made no progress on input from %s", peer_name(q));
            continue;
        }
        buf_consume(&q->in, used);
        if (q->fed + used > BIG_MESSAGE) {
            /* json-c's tokener keeps its string buffer at the largest size it
             * ever reached: one big reply would stay in our RSS for good */
            json_tokener_free(q->tok);
            q->tok = tokener_new();
        }
        q->fed = 0;
        handle_message(q, obj);
    }
}

/* ---- public API -------------------------------------------------------------------- */

static json_tokener *tokener_new(void)
{
    json_tokener *tok = json_tokener_new_ex(QMP_MAX_DEPTH);
    if (!tok)
        abort();    /* out of memory, as in qv_xmalloc */
    /* ALLOW_TRAILING_CHARS: without it STRICT refuses a second message in the
     * same buffer, and QEMU routinely sends several at once. */
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS | JSON_TOKENER_VALIDATE_UTF8);
    return tok;
}

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
    q->tok = tokener_new();
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
static int queue_output(struct qmp *q, char *data, const int *fds, size_t nfds, bool handshake)
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
    if (q->ready || cmd_find_kind(q, CMD_GREETING) || cmd_find_kind(q, CMD_CAPABILITIES))
        return -EALREADY;
    struct qmp_cmd *c = cmd_new(CMD_GREETING, "QMP handshake", timeout_ms, 0, done, ctx);
    cmd_append(q, c);
    q->handshaking = true;
    if (q->greeting_seen)
        start_capabilities(q, c);
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
    cmd_append(q, c);
    int r = queue_output(q, line, fds, nfds, false);
    if (r < 0) {
        cmd_unlink(q, c);
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
    cmd_append(q, c);
    int r = queue_output(q, line, NULL, 0, false);
    if (r < 0) {
        cmd_unlink(q, c);
        free(c);
    }
    return r;
}

static void read_input(struct qmp *q)
{
    size_t budget = READ_BUDGET;
    while (!q->closed && budget > 0) {
        ssize_t n = recv(q->fd, q->rbuf, READ_CHUNK < budget ? READ_CHUNK : budget, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                close_connection(q, "%s connection closed: receiving from %s: %s", proto_name(q),
                                 peer_name(q), strerror(errno));
            return;
        }
        if (n == 0) {
            close_connection(q, "%s connection closed by %s", proto_name(q), peer_name(q));
            return;
        }
        budget -= (size_t)n;
        buf_add(&q->in, q->rbuf, (size_t)n);
        process_input(q);
    }
}

int qmp_handle_io(struct qmp *q, uint32_t epoll_events, struct qv_err *e)
{
    /* Reading comes first: a peer that answered and then hung up must have its
     * answers delivered before the hang-up fails what is left. */
    if (!q->closed && (epoll_events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP)))
        read_input(q);
    if (!q->closed && q->out && !out_held(q, q->out)) {
        int r = flush_output(q);
        if (r < 0) {
            read_input(q);
            close_connection(q, "%s connection closed: sending to %s: %s", proto_name(q), peer_name(q),
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
            cmd_complete(q, c, NULL, NULL);
        else if (c->kind == CMD_GREETING)
            cmd_fail(q, c, -ETIMEDOUT, "no greeting from %s within %d ms", peer_name(q), c->timeout_ms);
        else
            cmd_fail(q, c, -ETIMEDOUT, "no reply from %s within %d ms", peer_name(q), c->timeout_ms);
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
