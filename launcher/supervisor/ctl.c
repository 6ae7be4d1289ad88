/* The supervisor's control socket, run/qvisor/vms/NAME/ctl.sock: JSON lines, one
 * request and one reply; "events" then streams events as JSON lines, and "console"
 * turns the connection into the raw serial console in both directions.
 *
 * A client may be anything that can connect, so nothing it sends is trusted: every
 * field of a request is type-checked before use (unknown fields are ignored, so an
 * older supervisor still serves a newer CLI), a request line is at most
 * CTL_REQUEST_MAX bytes, at most CTL_CLIENTS_MAX clients are served at once, a
 * client that leaves a request half-written (or sends none) for CTL_IDLE_MS is
 * dropped, and running out of descriptors pauses accept() instead of spinning. */
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "launcher/supervisor/ctl_verbs.h"

/* One call reads at most this much from one client, so a client that never stops
 * sending cannot starve the others (the fd is level-triggered: it comes back). */
#define CLIENT_READ_BUDGET (256u << 10)

struct sup_ctl {
    int fd;                     /* the listening socket; -1 before ctl_listen and after ctl_free */
    struct ev ev;
    struct sup_client *clients;
    unsigned next_id;
    unsigned n;
    uint64_t accept_resume;     /* accept() paused (EMFILE) until then; 0: listening */
    uint64_t warned_at;         /* last log line about turned-away clients */
};

struct sup_ctl *ctl_new(void)
{
    struct sup_ctl *ctl = qv_xcalloc(1, sizeof(*ctl));
    ctl->fd = -1;
    ctl->ev.kind = EV_CTL;
    return ctl;
}

int ctl_listen(struct sup *s, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/ctl.sock", s->run_dir);
    /* 0600 from the start: no window in which others could connect */
    mode_t old = umask(0177);
    int r = unix_listen(path, 16, &s->ctl->fd, e);
    umask(old);
    if (r < 0)
        return r;
    if (s->hc.ctl_group) {
        gid_t gid;
        if ((r = sandbox_group_lookup(s->hc.ctl_group, &gid, e)) < 0)
            return qv_prefix(e, "host.json ctl_group: ");
        if (chown(path, 0, gid) < 0 || chmod(path, 0660) < 0)
            return qv_failerr(e, -errno, "%s: giving it to group %s", path, s->hc.ctl_group);
    }
    fd_set_nonblock(s->ctl->fd, true);
    struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &s->ctl->ev};
    epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->ctl->fd, &ee);
    return 0;
}

static size_t client_backlog(const struct sup_client *c)
{
    return c->out.len - c->out_off;
}

static void client_update_events(struct sup *s, struct sup_client *c)
{
    struct epoll_event ee = {.events = EPOLLIN | (client_backlog(c) ? EPOLLOUT : 0), .data.ptr = &c->ev};
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ee);
}

static void client_flush(struct sup *s, struct sup_client *c)
{
    /* sent from an offset: a reply of many MiB must not be moved down after every send */
    while (client_backlog(c)) {
        ssize_t n = send(c->fd, c->out.p + c->out_off, client_backlog(c), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            c->dead = true;
            return;
        }
        c->out_off += (size_t)n;
    }
    if (!client_backlog(c)) {
        c->out_off = 0;
        c->out.len = 0;
        if (c->out.cap > CLIENT_OUT_MAX)
            buf_free(&c->out);      /* after a large reply: give the memory back */
    }
    if (!client_backlog(c) && c->close_after_write)
        c->dead = true;
    if (!c->dead)
        client_update_events(s, c);
}

static void client_queue(struct sup_client *c, const char *data, size_t n)
{
    if (c->out_off && c->out_off >= c->out.len / 2) {
        buf_consume(&c->out, c->out_off);
        c->out_off = 0;
    }
    buf_add(&c->out, data, n);
}

/* Streamed data (console output, events): a client that does not read is dropped
 * before its backlog passes CLIENT_OUT_MAX; the supervisor must not grow for it. */
void ctl_client_write(struct sup *s, struct sup_client *c, const char *data, size_t n)
{
    if (c->dead)
        return;
    if (client_backlog(c) + n > CLIENT_OUT_MAX) {
        c->dead = true;
        return;
    }
    client_queue(c, data, n);
    client_flush(s, c);
}

/* A reply is owed to the client and always fits, however large (a QMP reply is
 * bounded by QMP_MAX_MESSAGE); only a client that already left CLIENT_OUT_MAX
 * unread while asking for more is dropped. */
void ctl_client_send(struct sup *s, struct sup_client *c, json_object *reply)
{
    if (c->dead)
        return;
    if (c->owed)
        c->owed--;
    c->idle_since = monotonic_ms();
    if (client_backlog(c) > CLIENT_OUT_MAX) {
        c->dead = true;
        return;
    }
    size_t len;
    const char *txt = json_object_to_json_string_length(reply, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                        &len);
    client_queue(c, txt, len);
    client_queue(c, "\n", 1);
    client_flush(s, c);
}

void ctl_reply_ok(struct sup *s, struct sup_client *c)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(true));
    ctl_client_send(s, c, o);
    json_object_put(o);
}

void ctl_reply_error(struct sup *s, struct sup_client *c, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(false));
    json_object_object_add(o, "error", json_object_new_string(msg));
    json_object_object_add(o, "code", json_object_new_int(code));
    ctl_client_send(s, c, o);
    json_object_put(o);
}

static struct sup_client *client_by_id(struct sup *s, unsigned id)
{
    for (struct sup_client *c = s->ctl->clients; c; c = c->next)
        if (c->id == id && !c->dead)
            return c;
    return NULL;
}

/* A QMP command on behalf of a client (ctl_client_qmp) */
struct pending {
    struct sup *s;
    unsigned client;
    enum ctl_qmp_shape shape;
};

static void on_client_reply(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct pending *p = ctx;
    struct sup_client *c = client_by_id(p->s, p->client);
    if (c) {
        if (err) {
            ctl_reply_error(p->s, c, err->code, "%s", err->msg);
        } else {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "ok", json_object_new_boolean(true));
            if (p->shape == CTL_AS_RETURN)
                json_object_object_add(o, "return", ret ? json_object_get(ret) : json_object_new_object());
            else if (p->shape == CTL_AS_HMP)
                json_object_object_add(o, "output", ret ? json_object_get(ret) : json_object_new_string(""));
            ctl_client_send(p->s, c, o);
            json_object_put(o);
        }
    }
    free(p);
}

void ctl_client_qmp(struct sup *s, struct sup_client *c, const char *cmd, json_object *args, enum ctl_qmp_shape shape,
                    int timeout)
{
    /* while a reconnect's handshake runs, the command would wait for it unseen */
    struct qv_err e = {0};
    if (monitor_ready(s, &e) < 0) {
        if (args)
            json_object_put(args);
        ctl_reply_error(s, c, e.code, "%s", e.msg);
        return;
    }
    struct pending *p = qv_xcalloc(1, sizeof(*p));
    p->s = s;
    p->client = c->id;
    p->shape = shape;
    if (qmp_send(s->qmp, cmd, args, NULL, 0, timeout, 0, on_client_reply, p) < 0) {
        free(p);
        ctl_reply_error(s, c, -EIO, "%s: cannot send %s to QEMU", s->def.name, cmd);
    }
}

void ctl_wait_for_stop(struct sup *s, unsigned client)
{
    struct sup_client *c = client_by_id(s, client);
    if (c)
        c->waits_for_stop = true;
}

void sup_reply_ok(struct sup *s, unsigned client)
{
    struct sup_client *c = client_by_id(s, client);
    if (c)
        ctl_reply_ok(s, c);
}

void sup_reply_json(struct sup *s, unsigned client, json_object *reply)
{
    struct sup_client *c = client_by_id(s, client);
    if (!c)
        return;
    json_object_object_add(reply, "ok", json_object_new_boolean(true));
    ctl_client_send(s, c, reply);
}

void sup_reply_error(struct sup *s, unsigned client, int code, const char *fmt, ...)
{
    struct sup_client *c = client_by_id(s, client);
    if (!c)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ctl_reply_error(s, c, code, "%s", msg);
}

/* Ends a connection with an error line it may or may not read. */
static void client_drop(struct sup *s, struct sup_client *c, int code, const char *why)
{
    c->close_after_write = true;
    ctl_reply_error(s, c, code, "%s: %s", s->def.name, why);
    c->dead = true;     /* whatever did not fit into the socket is not waited for */
}

static void client_input(struct sup *s, struct sup_client *c)
{
    if (c->mode == CLIENT_CONSOLE) {
        int r = c->in.len ? console_write(s, c->in.p, c->in.len) : 0;
        if (r < 0)
            sup_log(s, "console input dropped: %s", strerror(-r));
        buf_consume(&c->in, c->in.len);
        return;
    }
    if (c->mode == CLIENT_EVENTS || c->close_after_write) {
        buf_consume(&c->in, c->in.len);
        return;
    }
    char *nl;
    while (c->mode == CLIENT_REQUEST && !c->dead && (nl = memchr(c->in.p, '\n', c->in.len))) {
        size_t linelen = (size_t)(nl - c->in.p);
        if (linelen > CTL_REQUEST_MAX)
            break;
        json_object *req = NULL;
        struct qv_err e = {0};
        c->owed++;
        c->idle_since = monotonic_ms();
        if (ctl_parse_request(c->in.p, linelen, &req, &e) < 0)
            ctl_reply_error(s, c, e.code, "%s: %s", s->def.name, e.msg);
        else
            ctl_handle_request(s, c, req);
        if (req)
            json_object_put(req);
        buf_consume(&c->in, linelen + 1);
        if (c->mode == CLIENT_CONSOLE && c->in.len)
            client_input(s, c);
    }
    /* what is left is one unfinished line, or one too long (then longer still) */
    if (c->mode == CLIENT_REQUEST && !c->dead && c->in.len > CTL_REQUEST_MAX) {
        buf_free(&c->in);
        client_drop(s, c, -E2BIG, "request longer than 64 KiB: closing the connection");
    }
}

void ctl_client_io(struct sup *s, struct sup_client *c, uint32_t events)
{
    if (c->dead)
        return;
    if (events & EPOLLOUT)
        client_flush(s, c);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        char chunk[8192];
        size_t budget = CLIENT_READ_BUDGET;
        while (budget >= sizeof(chunk) && !c->dead) {
            ssize_t n = recv(c->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                break;
            if (n <= 0) {
                c->dead = true;     /* replies still owed to it are dropped */
                break;
            }
            budget -= (size_t)n;
            buf_add(&c->in, chunk, (size_t)n);
            client_input(s, c);
        }
    }
}

static void accept_pause(struct sup *s, int err)
{
    uint64_t now = monotonic_ms();
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->ctl->fd, NULL);
    s->ctl->accept_resume = now + CTL_ACCEPT_BACKOFF_MS;
    if (!s->ctl->warned_at || now - s->ctl->warned_at >= 10000) {
        s->ctl->warned_at = now;
        sup_log(s, "ctl.sock: cannot accept a client (%s); pausing accept for %d ms", strerror(err),
                CTL_ACCEPT_BACKOFF_MS);
    }
}

void ctl_accept(struct sup *s)
{
    /* a bounded batch: the clients already connected get their turn too */
    for (int i = 0; i < 2 * CTL_CLIENTS_MAX && !s->ctl->accept_resume; i++) {
        int fd = accept4(s->ctl->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays queued and the
                 * socket readable, so trying again at once would only spin */
                accept_pause(s, errno);
            return;
        }
        if (s->ctl->n >= CTL_CLIENTS_MAX) {
            char line[256];
            int n = snprintf(line, sizeof(line),
                             "{\"ok\":false,\"error\":\"%s: too many control connections (%d); try again later\","
                             "\"code\":%d}\n", s->def.name, CTL_CLIENTS_MAX, -EBUSY);
            ssize_t w = send(fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)w;
            close(fd);
            continue;
        }
        ctl_client_add(s, fd);
    }
}

struct sup_client *ctl_client_add(struct sup *s, int fd)
{
    struct sup_client *c = qv_xcalloc(1, sizeof(*c));
    c->fd = fd;
    c->id = ++s->ctl->next_id;
    c->ev.kind = EV_CLIENT;
    c->ev.client = c;
    c->idle_since = monotonic_ms();
    c->next = s->ctl->clients;
    s->ctl->clients = c;
    s->ctl->n++;
    struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &c->ev};
    epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ee);
    return c;
}

unsigned ctl_client_count(const struct sup *s)
{
    return s->ctl->n;
}

/* A request client is idle when it has sent nothing yet or left a line
 * half-written; one that waits for a reply (a stop, a long QMP command) is not. */
static uint64_t client_idle_deadline(const struct sup_client *c)
{
    if (c->dead || c->mode != CLIENT_REQUEST || (c->owed && !c->in.len))
        return 0;
    return c->idle_since + CTL_IDLE_MS;
}

uint64_t ctl_next_deadline(struct sup *s)
{
    uint64_t next = s->ctl->accept_resume;
    for (struct sup_client *c = s->ctl->clients; c; c = c->next) {
        uint64_t d = client_idle_deadline(c);
        if (d && (!next || d < next))
            next = d;
    }
    return next;
}

void ctl_expire(struct sup *s, uint64_t now)
{
    for (struct sup_client *c = s->ctl->clients; c; c = c->next) {
        uint64_t d = client_idle_deadline(c);
        if (d && now >= d)
            client_drop(s, c, -ETIMEDOUT, c->in.len ? "request not finished within 10 s: closing the connection"
                                                    : "no request within 10 s: closing the connection");
    }
    if (s->ctl->accept_resume && now >= s->ctl->accept_resume) {
        s->ctl->accept_resume = 0;
        struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &s->ctl->ev};
        epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->ctl->fd, &ee);
    }
}

void ctl_broadcast_event(struct sup *s, const char *event, json_object *data, uint64_t ts_us)
{
    json_object *o = NULL;
    for (struct sup_client *c = s->ctl->clients; c; c = c->next) {
        if (c->mode != CLIENT_EVENTS || c->dead)
            continue;
        if (!o) {
            o = json_object_new_object();
            json_object_object_add(o, "event", json_object_new_string(event));
            if (data)
                json_object_object_add(o, "data", json_object_get(data));
            json_object *ts = json_object_new_object();
            json_object_object_add(ts, "seconds", json_object_new_int64((int64_t)(ts_us / 1000000)));
            json_object_object_add(ts, "microseconds", json_object_new_int64((int64_t)(ts_us % 1000000)));
            json_object_object_add(o, "timestamp", ts);
        }
        size_t len;
        const char *txt = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                            &len);
        ctl_client_write(s, c, txt, len);
        ctl_client_write(s, c, "\n", 1);
    }
    if (o)
        json_object_put(o);
}

void ctl_broadcast_console(struct sup *s, const char *data, size_t n)
{
    for (struct sup_client *c = s->ctl->clients; c; c = c->next)
        if (c->mode == CLIENT_CONSOLE && !c->dead)
            ctl_client_write(s, c, data, n);
}

void ctl_stop_done(struct sup *s, bool ok, const char *msg)
{
    for (struct sup_client *c = s->ctl->clients; c; c = c->next) {
        if (!c->waits_for_stop || c->dead)
            continue;
        c->waits_for_stop = false;
        if (ok)
            ctl_reply_ok(s, c);
        else
            ctl_reply_error(s, c, -ETIMEDOUT, "%s: %s", s->def.name, msg);
    }
}

static void client_free(struct sup *s, struct sup_client *c)
{
    s->ctl->n--;
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}

void ctl_reap_clients(struct sup *s)
{
    struct sup_client **pp = &s->ctl->clients;
    while (*pp) {
        struct sup_client *c = *pp;
        if (c->dead) {
            *pp = c->next;
            client_free(s, c);
        } else {
            pp = &c->next;
        }
    }
}

void ctl_close(struct sup *s)
{
    if (!s->ctl)
        return;
    /* replies still queued (the final "ok" of a stop) get one blocking chance */
    for (struct sup_client *c = s->ctl->clients; c; c = c->next) {
        if (client_backlog(c) && !c->dead) {
            fd_set_nonblock(c->fd, false);
            struct timeval tv = {.tv_sec = 1};
            setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            write_all(c->fd, c->out.p + c->out_off, client_backlog(c));
        }
        c->dead = true;
    }
    ctl_reap_clients(s);
    ctl_stop_listening(s);
}

void ctl_stop_listening(struct sup *s)
{
    if (s->ctl->fd < 0)
        return;
    close(s->ctl->fd);
    s->ctl->fd = -1;
    s->ctl->accept_resume = 0;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/ctl.sock", s->run_dir);
    unlink(path);
}

void ctl_free(struct sup *s)
{
    ctl_close(s);
    free(s->ctl);
    s->ctl = NULL;
}
