/* The CLI's side of ctl.sock. */
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include "launcher/launcher.h"

int ctl_connect(const struct qv_paths *p, const char *name, int *fd, struct qv_err *e)
{
    struct vm_def d;
    int r = vm_load(p, name, &d, e);
    if (r < 0)
        return r;
    vm_def_free(&d);
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

int ctl_send(int fd, json_object *req, struct qv_err *e)
{
    const char *txt = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    int r = write_all(fd, txt, strlen(txt));
    if (r == 0)
        r = write_all(fd, "\n", 1);
    return r < 0 ? qv_failerr(e, r, "control socket") : 0;
}

int ctl_read_line(int fd, struct buf *in, int timeout_ms, char **line, struct qv_err *e)
{
    uint64_t deadline = timeout_ms < 0 ? 0 : monotonic_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if ((*line = buf_take_line(in)) != NULL)
            return 0;
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
        char chunk[8192];
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
    if (json_object_object_get_ex(o, "ok", &ok) && json_object_get_boolean(ok)) {
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
    if (r == 0)
        r = ctl_send(fd, req, e);
    json_object_put(req);
    if (r < 0)
        return r;
    struct buf in = {0};
    _cleanup_free_ char *line = NULL;
    r = ctl_read_line(fd, &in, timeout_ms, &line, e);
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
