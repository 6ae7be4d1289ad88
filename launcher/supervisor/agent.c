/* The guest agent channel: for a VM with "agent": true, one connection to qga.sock
 * (QEMU's end of the guest's org.qemu.guest_agent.0 virtio-serial port) for as long as
 * QEMU runs. Nothing here waits: requests are queued and sent one at a time, each with
 * its own deadline, and complete through callbacks.
 *
 * The stream from the guest is only trusted after guest-sync-delimited: after
 * connecting, after every command that timed out (its late reply could answer the
 * next one), after the guest reset or shut down (RESET, SHUTDOWN), and when the guest
 * opens its port again (VSERPORT_CHANGE: qemu-ga started). A closed or garbled stream
 * is reconnected with back-off. While the guest's port is known to be closed, or the
 * sync is not answered, requests fail at once with "the guest agent does not answer". */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "launcher/supervisor/agent_chan.h"

#define AGENT_SYNC_TIMEOUT_MS 3000
#define AGENT_RETRY_MIN_MS 500
#define AGENT_RETRY_MAX_MS 30000
#define AGENT_QUEUE_MAX 64

static const char *const link_names[] = {"not connected", "not answering", "synchronising", "connected"};

struct agent_req {
    struct agent_req *next;
    struct sup *s;
    char cmd[48];
    json_object *args;      /* owned until sent */
    int timeout_ms;
    uint64_t deadline;      /* while queued: fails then */
    unsigned flags;
    bool answered;          /* QMP_NO_REPLY_OK: answered once sent */
    agent_reply_fn done;
    void *ctx;
};

static void pump(struct sup *s);

struct agent_chan *agent_chan_get(struct sup *s)
{
    if (!s->agent) {
        s->agent = qv_xcalloc(1, sizeof(*s->agent));
        s->ev_agent.kind = EV_AGENT;
        s->agent->retry_ms = AGENT_RETRY_MIN_MS;
    }
    return s->agent;
}

static bool qemu_up(struct sup *s)
{
    return s->qemu_pid && !start_active(s) && !s->done;
}

static void set_why(struct agent_chan *ch, const char *fmt, ...) QV_PRINTF(2, 3);
static void set_why(struct agent_chan *ch, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ch->why, sizeof(ch->why), fmt, ap);
    va_end(ap);
}

static void req_complete(struct agent_req *r, json_object *ret, const struct qv_err *err)
{
    if (!r->answered && r->done) {
        r->answered = true;
        r->done(r->s, r->ctx, ret, err);
    }
}

static void req_fail(struct sup *s, struct agent_req *r, int code, const char *why)
{
    struct qv_err err = {0};
    qv_fail(&err, code, "%s: %s: %s", s->def.name, r->cmd, why);
    req_complete(r, NULL, &err);
}

static void req_free(struct agent_req *r)
{
    if (r->args)
        json_object_put(r->args);
    free(r);
}

/* Fails every queued request (not the one in flight: its qmp answers for it). */
static void fail_queue(struct sup *s, int code, const char *why)
{
    struct agent_chan *ch = s->agent;
    while (ch->queue) {
        struct agent_req *r = ch->queue;
        ch->queue = r->next;
        ch->nqueued--;
        req_fail(s, r, code, why);
        req_free(r);
    }
}

static void not_answering(struct sup *s, const char *detail)
{
    struct agent_chan *ch = s->agent;
    if (ch->link != LINK_DOWN)
        ch->link = LINK_UNSYNCED;
    set_why(ch, "the guest agent does not answer (is qemu-guest-agent running in the guest?)%s%s",
            detail ? ": " : "", detail ? detail : "");
    if (!ch->down_logged)
        sup_log(s, "guest agent: %s", ch->why);
    ch->down_logged = true;     /* once until it answers again */
}

static void drop_connection(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    if (!ch || !ch->q)
        return;
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, qmp_fd(ch->q), NULL);
    /* qmp_free calls nobody back: the request in flight is failed here */
    qmp_free(ch->q);
    ch->q = NULL;
    ch->link = LINK_DOWN;
    if (ch->inflight) {
        struct agent_req *r = ch->inflight;
        ch->inflight = NULL;
        req_fail(s, r, -EIO, ch->why[0] ? ch->why : "the guest agent's connection was closed");
        req_free(r);
    }
}

static void retry_later(struct agent_chan *ch)
{
    ch->retry_at = monotonic_ms() + ch->retry_ms;
    ch->retry_ms = ch->retry_ms * 2 > AGENT_RETRY_MAX_MS ? AGENT_RETRY_MAX_MS : ch->retry_ms * 2;
}

static void update_epoll(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    if (!ch || !ch->q)
        return;
    struct epoll_event ee = {.events = qmp_poll_events(ch->q), .data.ptr = &s->ev_agent};
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, qmp_fd(ch->q), &ee);
}

/* A unix socket connects or fails at once: no waiting in the loop. */
static int agent_connect(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/qga.sock", s->run_dir);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        set_why(ch, "%s: %s", path, strerror(ENAMETOOLONG));
        return -ENAMETOOLONG;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        set_why(ch, "cannot connect to the guest agent's socket %s: %s", path, strerror(err));
        return -err;
    }
    ch->q = qmp_new(fd, QMP_AGENT, NULL, NULL);
    if (!ch->q) {
        set_why(ch, "guest agent connection: %s", strerror(errno));
        return -errno;
    }
    ch->link = LINK_UNSYNCED;
    struct epoll_event ee = {.events = qmp_poll_events(ch->q), .data.ptr = &s->ev_agent};
    epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ee);
    return 0;
}

static void on_sync(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct agent_chan *ch = s->agent;
    if (err) {
        not_answering(s, err->code == -ETIMEDOUT ? "no answer to guest-sync-delimited" : err->msg);
        fail_queue(s, -EIO, ch->why);
        retry_later(ch);
        return;
    }
    ch->link = LINK_READY;
    ch->why[0] = '\0';
    ch->retry_ms = AGENT_RETRY_MIN_MS;
    ch->retry_at = 0;
    ch->down_logged = false;
    sup_log(s, "guest agent: %s", ch->ever_ready ? "answers again" : "connected");
    ch->ever_ready = true;
    pump(s);
}

static void start_sync(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    ch->link = LINK_SYNCING;
    if (qmp_agent_sync(ch->q, AGENT_SYNC_TIMEOUT_MS, on_sync, s) < 0) {
        ch->link = LINK_UNSYNCED;
        ch->reset_wanted = true;    /* a stream that cannot even take a sync: start over */
    }
}

static void on_reply(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct agent_req *r = ctx;
    struct sup *s = r->s;
    struct agent_chan *ch = s->agent;
    if (ch->inflight == r)
        ch->inflight = NULL;
    if (err && err->code == -ETIMEDOUT) {
        /* its reply may still come and would answer the next command: sync first */
        not_answering(s, NULL);
        struct qv_err te = {0};
        qv_fail(&te, -EIO, "%s: %s: %s (no reply within %d ms)", s->def.name, r->cmd, ch->why, r->timeout_ms);
        req_complete(r, NULL, &te);
    } else if (err) {
        /* the agent's own words, without QMP's error class */
        static const char *const classes[] = {"GenericError: ", "CommandNotFound: ", "DeviceNotActive: ",
                                              "DeviceNotFound: ", "KVMMissingCap: "};
        const char *msg = err->msg;
        for (size_t i = 0; i < ARRAY_SIZE(classes); i++)
            if (str_startswith(msg, classes[i]))
                msg += strlen(classes[i]);
        struct qv_err e2 = {0};
        int code = err->code == -ECONNRESET ? -EIO : err->code;   /* the stream broke: the agent failed */
        if (str_startswith(msg, r->cmd))
            qv_fail(&e2, code, "%s: %s", s->def.name, msg);
        else
            qv_fail(&e2, code, "%s: %s: %s", s->def.name, r->cmd, msg);
        req_complete(r, NULL, &e2);
    } else {
        req_complete(r, ret, NULL);
    }
    /* guest-shutdown and the like: the guest is going away, its agent with it */
    if (r->flags & QMP_NO_REPLY_OK && ch->link == LINK_READY)
        ch->link = LINK_UNSYNCED;
    req_free(r);
    pump(s);
}

/* Sends the next queued request once the stream is synchronised; starts a sync (or
 * a connection) when requests wait. Safe inside the qmp's callbacks. */
static void pump(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    if (!ch || !qemu_up(s))
        return;
    if (!ch->q && ch->queue) {
        if (agent_connect(s) < 0) {
            fail_queue(s, -EIO, ch->why);
            retry_later(ch);
            return;
        }
    }
    if (!ch->q || !ch->queue || ch->inflight)
        return;
    if (ch->port_closed && ch->link != LINK_READY) {
        not_answering(s, "its port in the guest is closed");
        fail_queue(s, -EIO, ch->why);
        return;
    }
    if (ch->link == LINK_UNSYNCED) {
        start_sync(s);
        return;
    }
    if (ch->link != LINK_READY)
        return;
    struct agent_req *r = ch->queue;
    ch->queue = r->next;
    ch->nqueued--;
    json_object *args = r->args;
    r->args = NULL;
    ch->inflight = r;
    if (qmp_send(ch->q, r->cmd, args, NULL, 0, r->timeout_ms, r->flags, on_reply, r) < 0) {
        ch->inflight = NULL;
        req_fail(s, r, -EIO, "cannot send to the guest agent");
        req_free(r);
        ch->reset_wanted = true;
        return;
    }
    if (r->flags & QMP_NO_REPLY_OK)
        req_complete(r, NULL, NULL);    /* it never answers: sent is done */
}

int agent_call(struct sup *s, const char *cmd, json_object *args, int timeout_ms, unsigned flags, agent_reply_fn done,
               void *ctx, struct qv_err *e)
{
    if (!s->def.agent) {
        if (args)
            json_object_put(args);
        return qv_fail(e, -ENODEV, "%s has no guest agent channel (define it with --agent, or \"agent\": true)",
                       s->def.name);
    }
    if (!qemu_up(s)) {
        if (args)
            json_object_put(args);
        return qv_fail(e, -EBUSY, "%s is not running (%s)", s->def.name, vm_state_names[s->rs.state]);
    }
    struct agent_chan *ch = agent_chan_get(s);
    if (ch->nqueued >= AGENT_QUEUE_MAX) {
        if (args)
            json_object_put(args);
        return qv_fail(e, -EBUSY, "%s: %u guest agent requests are waiting already; try again later", s->def.name,
                       ch->nqueued);
    }
    struct agent_req *r = qv_xcalloc(1, sizeof(*r));
    r->s = s;
    snprintf(r->cmd, sizeof(r->cmd), "%s", cmd);
    r->args = args;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : QMP_TIMEOUT_DEFAULT;
    r->deadline = monotonic_ms() + (uint64_t)r->timeout_ms;
    r->flags = flags;
    r->done = done;
    r->ctx = ctx;
    struct agent_req **pp = &ch->queue;
    while (*pp)
        pp = &(*pp)->next;
    *pp = r;
    ch->nqueued++;
    pump(s);
    update_epoll(s);
    return 0;
}

/* ---- the loop ---- */

void agent_io(struct sup *s, uint32_t events)
{
    struct agent_chan *ch = s->agent;
    if (!ch || !ch->q)
        return;
    struct qv_err e = {0};
    if (qmp_handle_io(ch->q, events, &e) < 0) {
        /* the request in flight was failed by the qmp; the queue waits for the next connection */
        if (!s->expected_exit)
            sup_log(s, "%s; reconnecting", e.msg);
        set_why(ch, "the guest agent's connection was lost (%s)", e.msg);
        drop_connection(s);
        retry_later(ch);
        return;
    }
    if (ch->reset_wanted) {
        ch->reset_wanted = false;
        drop_connection(s);
        ch->retry_at = monotonic_ms();
        return;
    }
    update_epoll(s);
}

static uint64_t min_deadline(uint64_t a, uint64_t b)
{
    return !a ? b : !b ? a : a < b ? a : b;
}

uint64_t agent_next_deadline(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    if (!ch)
        return s->def.agent && qemu_up(s) ? monotonic_ms() : 0;   /* connect now */
    if (!qemu_up(s))
        return ch->q || ch->queue || ch->execs ? monotonic_ms() : 0;    /* wind down now */
    uint64_t next = ch->retry_at;
    if (ch->reset_wanted || (!ch->q && !ch->retry_at))
        next = monotonic_ms();
    if (ch->q)
        next = min_deadline(next, qmp_next_deadline(ch->q));
    for (struct agent_req *r = ch->queue; r; r = r->next)
        next = min_deadline(next, r->deadline);
    return min_deadline(next, agent_exec_next_deadline(s));
}

/* QEMU gone or going: every request and exec fails, the connection closes. */
static void wind_down(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    char why[128];
    snprintf(why, sizeof(why), "%s stopped", s->def.name);
    set_why(ch, "%s", why);
    drop_connection(s);
    fail_queue(s, -EIO, why);
    agent_exec_wind_down(s);
    ch->link = LINK_DOWN;
    ch->retry_at = 0;
    ch->retry_ms = AGENT_RETRY_MIN_MS;
    ch->port_closed = false;
}

void agent_expire(struct sup *s, uint64_t now)
{
    if (!s->agent && !(s->def.agent && qemu_up(s)))
        return;
    struct agent_chan *ch = agent_chan_get(s);
    if (!qemu_up(s)) {
        if (ch->q || ch->queue || ch->execs)
            wind_down(s);
        return;
    }
    if (ch->q)
        qmp_expire(ch->q, now);
    for (struct agent_req **pp = &ch->queue; *pp;) {
        struct agent_req *r = *pp;
        if (now < r->deadline) {
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        ch->nqueued--;
        req_fail(s, r, -EIO, ch->why[0] ? ch->why : "the guest agent does not answer (is qemu-guest-agent running "
                                                      "in the guest?)");
        req_free(r);
    }
    if (ch->reset_wanted) {
        ch->reset_wanted = false;
        drop_connection(s);
        ch->retry_at = now;
    }
    if (!ch->q && !ch->retry_at)
        ch->retry_at = now;     /* this QEMU's first connection (every loss plans its own retry) */
    if (ch->retry_at && now >= ch->retry_at) {
        ch->retry_at = 0;
        if (!ch->q && agent_connect(s) < 0) {
            fail_queue(s, -EIO, ch->why);
            retry_later(ch);
        } else if (ch->link == LINK_UNSYNCED && !ch->inflight && !ch->port_closed) {
            start_sync(s);
        }
    }
    agent_exec_expire(s, now);
    pump(s);
    update_epoll(s);
}

void agent_close(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    if (!ch)
        return;
    wind_down(s);
    agent_exec_inputs_free(s);
    free(ch);
    s->agent = NULL;
}

/* QMP events about the guest: a reset or shutdown kills its agent mid-stream; the
 * guest opening its port means qemu-ga (re)started. */
void agent_guest_event(struct sup *s, const char *event, json_object *data)
{
    struct agent_chan *ch = s->agent;
    if (!ch)
        return;
    uint64_t now = monotonic_ms();
    if (strcmp(event, "RESET") == 0 || strcmp(event, "SHUTDOWN") == 0) {
        if (ch->link == LINK_READY || ch->link == LINK_SYNCING)
            ch->link = LINK_UNSYNCED;
        set_why(ch, "the guest %s; its agent has not answered since", strcmp(event, "RESET") == 0 ? "reset" : "shut down");
        /* a request in flight will never be answered by this agent */
        if (ch->inflight && !(ch->inflight->flags & QMP_NO_REPLY_OK))
            ch->reset_wanted = true;
        return;
    }
    if (strcmp(event, "VSERPORT_CHANGE") != 0)
        return;
    json_object *id, *open;
    if (!json_object_object_get_ex(data, "id", &id) || strcmp(json_object_get_string(id), "qga0") != 0 ||
        !json_object_object_get_ex(data, "open", &open))
        return;
    if (json_object_get_boolean(open)) {
        ch->port_closed = false;
        if (ch->link != LINK_READY) {
            ch->retry_ms = AGENT_RETRY_MIN_MS;
            ch->retry_at = now;     /* qemu-ga is there: sync now */
        }
    } else {
        ch->port_closed = true;
        not_answering(s, "its port in the guest is closed");
        if (ch->inflight && !(ch->inflight->flags & QMP_NO_REPLY_OK))
            ch->reset_wanted = true;
    }
}

bool agent_answers(struct sup *s, char *why, size_t whylen)
{
    struct agent_chan *ch = s->agent;
    if (s->def.agent && ch && qemu_up(s) && ch->link == LINK_READY && !ch->port_closed)
        return true;
    if (ch && ch->why[0])
        snprintf(why, whylen, "%s", ch->why);
    else
        snprintf(why, whylen, "the guest agent is %s", ch ? link_names[ch->link] : "not connected");
    return false;
}

json_object *agent_status_json(struct sup *s)
{
    if (!s->def.agent)
        return NULL;
    struct agent_chan *ch = s->agent;
    if (!ch || !qemu_up(s))
        return json_object_new_string(qemu_up(s) ? "connecting" : "not connected");
    if (ch->link == LINK_READY)
        return json_object_new_string("connected");
    char txt[640];
    snprintf(txt, sizeof(txt), "%s%s%s", link_names[ch->link], ch->why[0] ? ": " : "", ch->why);
    return json_object_new_string(txt);
}
