/* The CLI's side of ctl.sock. */
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "launcher/supervisor/internal.h"

int ctl_connect(const struct qv_paths *p, const char *name, int *fd, struct qv_err *e)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(p, name, &d, e);     /* "no VM named" before "not running" */
    if (r < 0)
        return r;
    char path[PATH_MAX];
    vm_run_path(p, name, "ctl.sock", path, sizeof(path));
    struct qv_err ce = {0};
    if (unix_connect(path, fd, &ce) < 0) {
        if (ce.code == -ENOENT || ce.code == -ECONNREFUSED)
            return qv_fail(e, -EBUSY, "%s is not running", name);
        return qv_fail(e, ce.code, "%s: control socket: %s", name, ce.msg);
    }
    return 0;
}

/* MSG_NOSIGNAL: a supervisor that turned us away (too many clients) has closed
 * its end, and its reason is still there to be read; SIGPIPE would hide it. */
static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int ctl_send(int fd, json_object *req, struct qv_err *e)
{
    size_t len;
    const char *txt = json_object_to_json_string_length(req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                        &len);
    int r = send_all(fd, txt, len);
    if (r == 0)
        r = send_all(fd, "\n", 1);
    return r < 0 ? qv_failerr(e, r, "control socket") : 0;
}

/* A reply carries at most one QMP message (32 MiB) with its escaping redone: far
 * below this. Past it the supervisor is not one we understand. */
#define CTL_REPLY_MAX (256u << 20)

int ctl_read_line(int fd, struct buf *in, int timeout_ms, char **line, struct qv_err *e)
{
    uint64_t deadline = timeout_ms < 0 ? 0 : monotonic_ms() + (uint64_t)timeout_ms;
    size_t scanned = 0;     /* a reply of many MiB arrives in many reads: search only what is new */
    for (;;) {
        /* buf_take_line searches from the start: call it only once a newline is there */
        if (in->len > scanned && memchr(in->p + scanned, '\n', in->len - scanned)) {
            *line = buf_take_line(in);
            return 0;
        }
        scanned = in->len;
        if (in->len > CTL_REPLY_MAX)
            return qv_fail(e, -E2BIG, "the supervisor's reply is longer than %u MiB", CTL_REPLY_MAX >> 20);
        int wait = -1;
        if (deadline) {
            uint64_t now = monotonic_ms();
            if (now >= deadline)
                return qv_fail(e, -ETIMEDOUT, "no answer from the supervisor within %d ms", timeout_ms);
            wait = (int)(deadline - now);
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int pr = poll(&pfd, 1, wait);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return qv_failerr(e, -errno, "poll");
        if (pr == 0)
            continue;
        char chunk[65536];
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return qv_fail(e, -ECONNRESET, "the supervisor closed the connection");
        buf_add(in, chunk, (size_t)n);
    }
}

int ctl_parse_reply(const char *line, json_object **reply, struct qv_err *e)
{
    json_object *o = NULL;
    int r = json_parse_str("supervisor reply", line, &o, e);
    if (r < 0)
        return r;
    json_object *ok, *err, *code;
    /* only a boolean true: json-c calls the string "false" true */
    if (json_object_object_get_ex(o, "ok", &ok) && json_object_is_type(ok, json_type_boolean) &&
        json_object_get_boolean(ok)) {
        *reply = o;
        return 0;
    }
    int c = json_object_object_get_ex(o, "code", &code) ? json_object_get_int(code) : -EIO;
    r = qv_fail(e, c < 0 ? c : -EIO, "%s",
                json_object_object_get_ex(o, "error", &err) ? json_object_get_string(err) : "request failed");
    json_object_put(o);
    return r;
}

int ctl_call(const struct qv_paths *p, const char *name, json_object *req, int timeout_ms, json_object **reply,
             struct qv_err *e)
{
    _cleanup_close_ int fd = -1;
    int r = ctl_connect(p, name, &fd, e);
    if (r < 0) {
        json_object_put(req);
        return r;
    }
    struct qv_err send_err = {0};
    int sent = ctl_send(fd, req, &send_err);
    json_object_put(req);
    if (sent < 0 && sent != -EPIPE && sent != -ECONNRESET) {
        if (e)
            *e = send_err;
        return sent;
    }
    struct buf in = {0};
    _cleanup_free_ char *line = NULL;
    /* after EPIPE only the line the supervisor wrote before closing may be left */
    r = ctl_read_line(fd, &in, sent < 0 ? 1000 : timeout_ms, &line, e);
    if (r < 0 && sent < 0) {
        buf_free(&in);
        if (e)
            *e = send_err;
        return qv_prefix(e, "%s: ", name);
    }
    buf_free(&in);
    if (r < 0)
        return qv_prefix(e, "%s: ", name);
    json_object *o = NULL;
    r = ctl_parse_reply(line, &o, e);
    if (r == 0 && reply)
        *reply = o;
    else if (o)
        json_object_put(o);
    return r;
}

json_object *ctl_request(const char *cmd)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "cmd", json_object_new_string(cmd));
    return o;
}
