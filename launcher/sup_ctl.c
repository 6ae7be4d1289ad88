/* The supervisor's control socket, run/qvisor/vms/NAME/ctl.sock: JSON lines, one
 * request and one reply; "events" then streams events as JSON lines, and "console"
 * turns the connection into the raw serial console in both directions. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "launcher/supervisor.h"

#define REQUEST_MAX (1u << 20)

int ctl_listen(struct sup *s, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/ctl.sock", s->run_dir);
    /* 0600 from the start: no window in which others could connect */
    mode_t old = umask(0177);
    int r = unix_listen(path, 16, &s->ctl_fd, e);
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
    fd_set_nonblock(s->ctl_fd, true);
    struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &s->ev_ctl};
    epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->ctl_fd, &ee);
    return 0;
}

static void client_update_events(struct sup *s, struct sup_client *c)
{
    struct epoll_event ee = {.events = EPOLLIN | (c->out.len ? EPOLLOUT : 0), .data.ptr = &c->ev};
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ee);
}

static void client_flush(struct sup *s, struct sup_client *c)
{
    while (c->out.len) {
        ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            c->dead = true;
            return;
        }
        buf_consume(&c->out, (size_t)n);
    }
    if (!c->out.len && c->close_after_write)
        c->dead = true;
    if (!c->dead)
        client_update_events(s, c);
}

static void client_write(struct sup *s, struct sup_client *c, const char *data, size_t n)
{
    if (c->dead)
        return;
    if (c->out.len + n > CLIENT_OUT_MAX) {
        c->dead = true;     /* it does not read; the supervisor must not grow for it */
        return;
    }
    buf_add(&c->out, data, n);
    client_flush(s, c);
}

void ctl_client_send(struct sup *s, struct sup_client *c, json_object *reply)
{
    const char *txt = json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    client_write(s, c, txt, strlen(txt));
    client_write(s, c, "\n", 1);
}

static void reply_ok(struct sup *s, struct sup_client *c)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(true));
    ctl_client_send(s, c, o);
    json_object_put(o);
}

/* code: the negative errno the CLI turns into its exit status */
static void reply_error(struct sup *s, struct sup_client *c, int code, const char *fmt, ...) QV_PRINTF(4, 5);
static void reply_error(struct sup *s, struct sup_client *c, int code, const char *fmt, ...)
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
    for (struct sup_client *c = s->clients; c; c = c->next)
        if (c->id == id && !c->dead)
            return c;
    return NULL;
}

/* A QMP command on behalf of a client; the reply goes back to it if it is still there. */
struct pending {
    struct sup *s;
    unsigned client;
    enum { AS_OK, AS_RETURN, AS_HMP } shape;
};

static void on_client_reply(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct pending *p = ctx;
    struct sup_client *c = client_by_id(p->s, p->client);
    if (c) {
        if (err) {
            reply_error(p->s, c, err->code, "%s", err->msg);
        } else {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "ok", json_object_new_boolean(true));
            if (p->shape == AS_RETURN)
                json_object_object_add(o, "return", ret ? json_object_get(ret) : json_object_new_object());
            else if (p->shape == AS_HMP)
                json_object_object_add(o, "output", ret ? json_object_get(ret) : json_object_new_string(""));
            ctl_client_send(p->s, c, o);
            json_object_put(o);
        }
    }
    free(p);
}

static void client_qmp(struct sup *s, struct sup_client *c, const char *cmd, json_object *args, int shape, int timeout)
{
    if (!s->qmp) {
        if (args)
            json_object_put(args);
        reply_error(s, c, -ESRCH, "%s: QEMU's monitor is not connected (state %s)", s->def.name,
                    vm_state_names[s->rs.state]);
        return;
    }
    struct pending *p = qv_xcalloc(1, sizeof(*p));
    p->s = s;
    p->client = c->id;
    p->shape = shape;
    if (qmp_send(s->qmp, cmd, args, NULL, 0, timeout, 0, on_client_reply, p) < 0) {
        free(p);
        reply_error(s, c, -EIO, "%s: cannot send %s to QEMU", s->def.name, cmd);
    }
}

static int get_int(json_object *req, const char *key, int dflt)
{
    json_object *v;
    return json_object_object_get_ex(req, key, &v) ? json_object_get_int(v) : dflt;
}

static bool get_bool(json_object *req, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(req, key, &v) && json_object_get_boolean(v);
}

static void ignore_reply(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ctx;
    (void)ret;
    (void)err;
}

/* Guest agent reboot; falls back to system_reset when there is no agent or it does
 * not answer the sync within a second (the supervisor's loop waits that long at most).
 * guest-shutdown never answers, so it is sent and not waited for. */
static void do_reboot(struct sup *s, struct sup_client *c)
{
    if (s->def.agent) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/qga.sock", s->run_dir);
        struct qmp *agent = NULL;
        struct qv_err e = {0};
        if (qmp_connect_path(path, QMP_AGENT, 1000, NULL, NULL, &agent, &e) == 0) {
            json_object *args = json_object_new_object();
            json_object_object_add(args, "mode", json_object_new_string("reboot"));
            bool sent = qmp_send(agent, "guest-shutdown", args, NULL, 0, 1000, QMP_NO_REPLY_OK, ignore_reply, NULL) == 0 &&
                        !(qmp_poll_events(agent) & EPOLLOUT);
            qmp_free(agent);
            if (sent) {
                sup_log(s, "reboot through the guest agent");
                reply_ok(s, c);
                return;
            }
        }
        sup_log(s, "guest agent did not answer (%s); resetting instead", e.msg);
    }
    sup_log(s, "reboot: system_reset (no guest agent; the guest gets no chance to shut down cleanly)");
    client_qmp(s, c, "system_reset", NULL, AS_OK, QMP_TIMEOUT_DEFAULT);
}

void sup_reply_ok(struct sup *s, unsigned client)
{
    struct sup_client *c = client_by_id(s, client);
    if (c)
        reply_ok(s, c);
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
    reply_error(s, c, code, "%s", msg);
}

/* attach-*: the device's JSON under "device"; the reply carries its id. */
static void do_attach(struct sup *s, struct sup_client *c, json_object *req, bool disk)
{
    json_object *spec, *reply = NULL;
    struct qv_err e = {0};
    if (!json_object_object_get_ex(req, "device", &spec)) {
        reply_error(s, c, -EINVAL, "attach: needs \"device\"");
        return;
    }
    int r = disk ? hotplug_disk_attach(s, spec, &reply, &e) : hotplug_nic_attach(s, spec, &reply, &e);
    if (r < 0) {
        reply_error(s, c, r, "%s", e.msg);
        return;
    }
    json_object_object_add(reply, "ok", json_object_new_boolean(true));
    ctl_client_send(s, c, reply);
    json_object_put(reply);
}

static void do_detach(struct sup *s, struct sup_client *c, json_object *req, enum hotplug_kind kind)
{
    json_object *target;
    struct qv_err e = {0};
    if (!json_object_object_get_ex(req, "target", &target)) {
        reply_error(s, c, -EINVAL, "detach: needs \"target\"");
        return;
    }
    int r = hotplug_detach(s, json_object_get_string(target), kind, c->id, &e);
    if (r < 0)
        reply_error(s, c, r, "%s", e.msg);
}

static void handle_request(struct sup *s, struct sup_client *c, json_object *req)
{
    json_object *cmdv;
    if (!json_object_is_type(req, json_type_object) || !json_object_object_get_ex(req, "cmd", &cmdv)) {
        reply_error(s, c, -EINVAL, "a request is a JSON object with \"cmd\"");
        return;
    }
    const char *cmd = json_object_get_string(cmdv);
    bool running = s->qemu_pid != 0;
    if (strcmp(cmd, "status") == 0) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "ok", json_object_new_boolean(true));
        json_object_object_add(o, "status", sup_status_json(s));
        ctl_client_send(s, c, o);
        json_object_put(o);
    } else if (strcmp(cmd, "stop") == 0 || strcmp(cmd, "kill") == 0) {
        c->waits_for_stop = true;
        if (strcmp(cmd, "kill") == 0) {
            sup_set_state(s, VM_STOPPING);
            sup_kill(s, "killed");
        } else {
            sup_begin_stop(s, get_bool(req, "force"), get_int(req, "timeout_ms", 60000));
        }
        if (!running)
            ctl_stop_done(s, true, NULL);
    } else if (!running) {
        reply_error(s, c, -EBUSY, "%s is not running (%s)", s->def.name, vm_state_names[s->rs.state]);
    } else if (strcmp(cmd, "pause") == 0) {
        client_qmp(s, c, "stop", NULL, AS_OK, QMP_TIMEOUT_DEFAULT);
    } else if (strcmp(cmd, "resume") == 0) {
        client_qmp(s, c, "cont", NULL, AS_OK, QMP_TIMEOUT_DEFAULT);
    } else if (strcmp(cmd, "reset") == 0) {
        client_qmp(s, c, "system_reset", NULL, AS_OK, QMP_TIMEOUT_DEFAULT);
    } else if (strcmp(cmd, "reboot") == 0) {
        do_reboot(s, c);
    } else if (strcmp(cmd, "qmp") == 0) {
        json_object *ex, *args = NULL;
        if (!json_object_object_get_ex(req, "execute", &ex) || !json_object_is_type(ex, json_type_string)) {
            reply_error(s, c, -EINVAL, "qmp: the command needs \"execute\"");
            return;
        }
        if (json_object_object_get_ex(req, "arguments", &args))
            args = json_object_get(args);
        client_qmp(s, c, json_object_get_string(ex), args, AS_RETURN, get_int(req, "timeout_ms", QMP_TIMEOUT_JOB));
    } else if (strcmp(cmd, "hmp") == 0) {
        json_object *line;
        if (!json_object_object_get_ex(req, "command", &line)) {
            reply_error(s, c, -EINVAL, "hmp: needs \"command\"");
            return;
        }
        json_object *args = json_object_new_object();
        json_object_object_add(args, "command-line", json_object_get(line));
        client_qmp(s, c, "human-monitor-command", args, AS_HMP, QMP_TIMEOUT_JOB);
    } else if (strcmp(cmd, "attach-disk") == 0 || strcmp(cmd, "attach-nic") == 0) {
        do_attach(s, c, req, strcmp(cmd, "attach-disk") == 0);
    } else if (strcmp(cmd, "detach-disk") == 0 || strcmp(cmd, "detach-nic") == 0) {
        do_detach(s, c, req, strcmp(cmd, "detach-disk") == 0 ? HOTPLUG_DISK : HOTPLUG_NIC);
    } else if (strcmp(cmd, "ifaddr") == 0) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "ok", json_object_new_boolean(true));
        json_object_object_add(o, "nics", vmnet_addresses(s));
        ctl_client_send(s, c, o);
        json_object_put(o);
    } else if (strcmp(cmd, "events") == 0) {
        c->mode = CLIENT_EVENTS;
        reply_ok(s, c);
    } else if (strcmp(cmd, "console") == 0) {
        if (s->console_fd < 0) {
            reply_error(s, c, -ENODEV, "%s has no serial console connected (console: %s)", s->def.name,
                        s->def.console == CONSOLE_NONE ? "none" : "not connected");
            return;
        }
        c->mode = CLIENT_CONSOLE;
        reply_ok(s, c);
        if (get_bool(req, "replay") && s->ring.len)
            client_write(s, c, s->ring.p, s->ring.len);
    } else {
        reply_error(s, c, -EINVAL, "unknown request \"%s\"", cmd);
    }
}

static void client_input(struct sup *s, struct sup_client *c)
{
    if (c->mode == CLIENT_CONSOLE) {
        if (s->console_fd >= 0 && c->in.len && write_all(s->console_fd, c->in.p, c->in.len) < 0)
            sup_log(s, "console input dropped: %s", strerror(errno));
        buf_consume(&c->in, c->in.len);
        return;
    }
    if (c->mode == CLIENT_EVENTS) {
        buf_consume(&c->in, c->in.len);
        return;
    }
    char *nl;
    while (c->mode == CLIENT_REQUEST && !c->dead && (nl = memchr(c->in.p, '\n', c->in.len))) {
        *nl = '\0';
        json_object *req = NULL;
        struct qv_err e = {0};
        if (json_parse_str("request", c->in.p, &req, &e) < 0)
            reply_error(s, c, -EINVAL, "%s", e.msg);
        else
            handle_request(s, c, req);
        if (req)
            json_object_put(req);
        buf_consume(&c->in, (size_t)(nl - c->in.p) + 1);
        if (c->mode == CLIENT_CONSOLE && c->in.len)
            client_input(s, c);
    }
    if (c->in.len > REQUEST_MAX)
        c->dead = true;
}

void ctl_client_io(struct sup *s, struct sup_client *c, uint32_t events)
{
    if (c->dead)
        return;
    if (events & EPOLLOUT)
        client_flush(s, c);
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        char chunk[8192];
        for (;;) {
            ssize_t n = recv(c->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                break;
            if (n <= 0) {
                c->dead = true;     /* replies still owed to it are dropped */
                break;
            }
            buf_add(&c->in, chunk, (size_t)n);
            client_input(s, c);
            if (c->dead)
                break;
        }
    }
}

void ctl_accept(struct sup *s)
{
    for (;;) {
        int fd = accept4(s->ctl_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        struct sup_client *c = qv_xcalloc(1, sizeof(*c));
        c->fd = fd;
        c->id = ++s->next_client_id;
        c->ev.kind = EV_CLIENT;
        c->ev.client = c;
        c->next = s->clients;
        s->clients = c;
        struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &c->ev};
        epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ee);
    }
}

void ctl_broadcast_event(struct sup *s, const char *event, json_object *data, uint64_t ts_us)
{
    json_object *o = NULL;
    for (struct sup_client *c = s->clients; c; c = c->next) {
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
        ctl_client_send(s, c, o);
    }
    if (o)
        json_object_put(o);
}

void ctl_broadcast_console(struct sup *s, const char *data, size_t n)
{
    for (struct sup_client *c = s->clients; c; c = c->next)
        if (c->mode == CLIENT_CONSOLE && !c->dead)
            client_write(s, c, data, n);
}

void ctl_stop_done(struct sup *s, bool ok, const char *msg)
{
    for (struct sup_client *c = s->clients; c; c = c->next) {
        if (!c->waits_for_stop || c->dead)
            continue;
        c->waits_for_stop = false;
        if (ok)
            reply_ok(s, c);
        else
            reply_error(s, c, -ETIMEDOUT, "%s: %s", s->def.name, msg);
    }
}

static void client_free(struct sup *s, struct sup_client *c)
{
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}

void ctl_reap_clients(struct sup *s)
{
    struct sup_client **pp = &s->clients;
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

void ctl_close_all(struct sup *s)
{
    /* replies still queued (the final "ok" of a stop) get one blocking chance */
    for (struct sup_client *c = s->clients; c; c = c->next) {
        if (c->out.len && !c->dead) {
            fd_set_nonblock(c->fd, false);
            struct timeval tv = {.tv_sec = 1};
            setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
            write_all(c->fd, c->out.p, c->out.len);
        }
        c->dead = true;
    }
    ctl_reap_clients(s);
}
