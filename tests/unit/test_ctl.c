/* The control socket's protocol: ctl_parse_request (pure) for every command with
 * good and bad requests; the supervisor's side served for real (ctl_listen,
 * ctl_accept, ctl_client_io on a test struct sup, pumped here as its loop would)
 * with whole, partial, pipelined, oversized and idle requests, event streaming and
 * the client cap; and the CLI's side (ctl_read_line, ctl_parse_reply) on a socketpair. */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "tests/unit/sup_testlib.h"
#include "launcher/supervisor/ctl_verbs.h"

/* ---- ctl_parse_request ------------------------------------------------------------ */

struct parse_case {
    const char *line;
    int rc;
    const char *msg;    /* the whole message when rc < 0 */
};

static const struct parse_case parse_cases[] = {
    /* every command, well formed */
    {"{\"cmd\": \"status\"}", 0, NULL},
    {"{\"cmd\": \"stop\"}", 0, NULL},
    {"{\"cmd\": \"stop\", \"force\": true, \"timeout_ms\": 0}", 0, NULL},
    {"{\"cmd\": \"stop\", \"force\": false, \"timeout_ms\": 2147483647}", 0, NULL},
    {"{\"cmd\": \"kill\"}", 0, NULL},
    {"{\"cmd\": \"pause\"}", 0, NULL},
    {"{\"cmd\": \"resume\"}", 0, NULL},
    {"{\"cmd\": \"reset\"}", 0, NULL},
    {"{\"cmd\": \"reboot\"}", 0, NULL},
    {"{\"cmd\": \"qmp\", \"execute\": \"query-status\"}", 0, NULL},
    {"{\"cmd\": \"qmp\", \"execute\": \"x\", \"arguments\": {\"a\": [1]}, \"timeout_ms\": 5}", 0, NULL},
    {"{\"cmd\": \"hmp\", \"command\": \"info status\"}", 0, NULL},
    {"{\"cmd\": \"attach-disk\", \"device\": {\"file\": \"/x.qcow2\"}}", 0, NULL},
    {"{\"cmd\": \"attach-nic\", \"device\": {}}", 0, NULL},
    {"{\"cmd\": \"detach-disk\", \"target\": \"disk3\"}", 0, NULL},
    {"{\"cmd\": \"detach-nic\", \"target\": \"52:54:00:00:00:01\"}", 0, NULL},
    {"{\"cmd\": \"ifaddr\"}", 0, NULL},
    {"{\"cmd\": \"events\"}", 0, NULL},
    {"{\"cmd\": \"console\"}", 0, NULL},
    {"{\"cmd\": \"console\", \"replay\": true}", 0, NULL},
    /* unknown fields are ignored (a newer CLI), unknown commands left to the dispatcher */
    {"{\"cmd\": \"status\", \"verbose\": [1, 2]}", 0, NULL},
    {"{\"cmd\": \"frobnicate\", \"force\": \"x\"}", 0, NULL},
    /* not a request */
    {"", -EINVAL, NULL},
    {"{\"cmd\": \"status\"", -EINVAL, NULL},
    {"not json", -EINVAL, NULL},
    {"[\"status\"]", -EINVAL, "a request is a JSON object with \"cmd\", not array"},
    {"\"status\"", -EINVAL, "a request is a JSON object with \"cmd\", not string"},
    {"42", -EINVAL, NULL},
    {"true", -EINVAL, NULL},     /* json_parse_str wants a container: any error will do */
    {"{}", -EINVAL, "request: \"cmd\" is missing (a string: status, stop, qmp, ...)"},
    {"{\"command\": \"status\"}", -EINVAL, "request: \"cmd\" is missing (a string: status, stop, qmp, ...)"},
    {"{\"cmd\": 1}", -EINVAL, "request: \"cmd\" must be a string, not int"},
    {"{\"cmd\": null}", -EINVAL, "request: \"cmd\" must be a string, not null"},
    {"{\"cmd\": [\"status\"]}", -EINVAL, "request: \"cmd\" must be a string, not array"},
    /* field types, per command */
    {"{\"cmd\": \"stop\", \"force\": \"yes\"}", -EINVAL, "stop: \"force\" must be true or false, not string"},
    {"{\"cmd\": \"stop\", \"force\": 1}", -EINVAL, "stop: \"force\" must be true or false, not int"},
    {"{\"cmd\": \"stop\", \"timeout_ms\": -1}", -EINVAL,
     "stop: \"timeout_ms\" must be an integer from 0 to 2147483647, not int"},
    {"{\"cmd\": \"stop\", \"timeout_ms\": 2147483648}", -EINVAL,
     "stop: \"timeout_ms\" must be an integer from 0 to 2147483647, not int"},
    {"{\"cmd\": \"stop\", \"timeout_ms\": 1e3}", -EINVAL,
     "stop: \"timeout_ms\" must be an integer from 0 to 2147483647, not double"},
    {"{\"cmd\": \"stop\", \"timeout_ms\": \"5\"}", -EINVAL,
     "stop: \"timeout_ms\" must be an integer from 0 to 2147483647, not string"},
    {"{\"cmd\": \"qmp\"}", -EINVAL, "qmp: \"execute\" is missing (a string)"},
    {"{\"cmd\": \"qmp\", \"execute\": 5}", -EINVAL, "qmp: \"execute\" must be a string, not int"},
    {"{\"cmd\": \"qmp\", \"execute\": \"x\", \"arguments\": []}", -EINVAL,
     "qmp: \"arguments\" must be an object, not array"},
    {"{\"cmd\": \"qmp\", \"execute\": \"x\", \"arguments\": \"{}\"}", -EINVAL,
     "qmp: \"arguments\" must be an object, not string"},
    {"{\"cmd\": \"qmp\", \"execute\": \"x\", \"timeout_ms\": true}", -EINVAL,
     "qmp: \"timeout_ms\" must be an integer from 0 to 2147483647, not boolean"},
    {"{\"cmd\": \"hmp\"}", -EINVAL, "hmp: \"command\" is missing (a string)"},
    {"{\"cmd\": \"hmp\", \"command\": [\"info\"]}", -EINVAL, "hmp: \"command\" must be a string, not array"},
    {"{\"cmd\": \"attach-disk\"}", -EINVAL, "attach-disk: \"device\" is missing (an object)"},
    {"{\"cmd\": \"attach-disk\", \"device\": \"/x.qcow2\"}", -EINVAL,
     "attach-disk: \"device\" must be an object, not string"},
    {"{\"cmd\": \"attach-nic\", \"device\": null}", -EINVAL, "attach-nic: \"device\" must be an object, not null"},
    {"{\"cmd\": \"detach-disk\"}", -EINVAL, "detach-disk: \"target\" is missing (a string)"},
    {"{\"cmd\": \"detach-nic\", \"target\": {}}", -EINVAL, "detach-nic: \"target\" must be a string, not object"},
    {"{\"cmd\": \"console\", \"replay\": 1}", -EINVAL, "console: \"replay\" must be true or false, not int"},
};

static void test_parse_request(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(parse_cases); i++) {
        const struct parse_case *c = &parse_cases[i];
        json_object *req = (json_object *)&req;     /* must be reset */
        struct qv_err e = {0};
        int r = ctl_parse_request(c->line, strlen(c->line), &req, &e);
        if (r != c->rc)
            fail_msg("%s: got %d (%s), want %d", c->line, r, e.msg, c->rc);
        if (r == 0) {
            if (!req || !json_object_is_type(req, json_type_object))
                fail_msg("%s: no request object", c->line);
            json_object_put(req);
            continue;
        }
        if (req)
            fail_msg("%s: a request object after a failure", c->line);
        if (e.code != c->rc || !e.msg[0])
            fail_msg("%s: error code %d, message \"%s\"", c->line, e.code, e.msg);
        if (c->msg && strcmp(e.msg, c->msg) != 0)
            fail_msg("%s: message \"%s\", want \"%s\"", c->line, e.msg, c->msg);
    }
}

/* Every request kind the check lets through has a verb that serves it (a kind without
 * one would be answered "unknown request"), and the table knows no verb the check does
 * not (one would be served unchecked). */
static void test_request_kinds_have_verbs(void **state)
{
    (void)state;
    size_t n = 0;
    for (const char *k; (k = ctl_request_kind(n)); n++)
        if (!ctl_verb_known(k))
            fail_msg("request kind \"%s\" has no verb in ctl_verbs.c", k);
    assert_true(n >= 30);
    assert_false(ctl_verb_known("nonsense"));
    assert_false(ctl_verb_known(""));
    assert_int_equal(n, ctl_verb_count());
}

/* Size and NUL bytes, before any JSON is parsed. */
static void test_parse_request_bytes(void **state)
{
    (void)state;
    json_object *req = NULL;
    struct qv_err e = {0};
    /* exactly the limit is fine, one byte more is not */
    char *big = qv_xmalloc(CTL_REQUEST_MAX + 2);
    static const char cmd[] = "{\"cmd\": \"status\"}";
    memset(big, ' ', CTL_REQUEST_MAX + 1);
    memcpy(big, cmd, sizeof(cmd) - 1);
    assert_int_equal(ctl_parse_request(big, CTL_REQUEST_MAX, &req, &e), 0);
    json_object_put(req);
    assert_int_equal(ctl_parse_request(big, CTL_REQUEST_MAX + 1, &req, &e), -E2BIG);
    assert_null(req);
    assert_string_equal(e.msg, "request longer than 64 KiB");
    free(big);
    /* a NUL would end json-c's input early and hide what follows it */
    static const char nul[] = "{\"cmd\": \"status\"}\0{\"cmd\": \"kill\"}";
    memset(&e, 0, sizeof(e));
    assert_int_equal(ctl_parse_request(nul, sizeof(nul) - 1, &req, &e), -EINVAL);
    assert_string_equal(e.msg, "a request must not contain a NUL byte");
    assert_null(req);
    /* only `len` bytes count: what follows is not read */
    static const char two[] = "{\"cmd\": \"status\"}garbage";
    assert_int_equal(ctl_parse_request(two, sizeof(two) - 1 - 7, &req, &e), 0);
    json_object_put(req);
    memset(&e, 0, sizeof(e));
    assert_int_equal(ctl_parse_request(two, sizeof(two) - 1, &req, &e), -EINVAL);
    assert_null(req);
}

/* ---- the supervisor's side, served for real --------------------------------------- */

/* One turn of the supervisor's loop for its ctl clients and QMP connection. */
static void serve(struct fx *f, int ms)
{
    struct sup *s = f->s;
    struct epoll_event evs[16];
    int n = epoll_wait(s->epfd, evs, ARRAY_SIZE(evs), ms);
    for (int i = 0; i < n; i++) {
        struct ev *ev = evs[i].data.ptr;
        if (ev->kind == EV_CTL) {
            ctl_accept(s);
        } else if (ev->kind == EV_CLIENT) {
            ctl_client_io(s, ev->client, evs[i].events);
        } else if (ev->kind == EV_QMP && s->qmp) {
            struct qv_err e = {0};
            if (qmp_handle_io(s->qmp, evs[i].events, &e) < 0)
                fail_msg("QMP: %s", e.msg);
            struct epoll_event ee = {.events = qmp_poll_events(s->qmp), .data.ptr = &s->ev_qmp};
            epoll_ctl(s->epfd, EPOLL_CTL_MOD, qmp_fd(s->qmp), &ee);
        }
    }
    ctl_reap_clients(s);
}

struct client {
    int fd;
    struct buf in;
};

static void client_connect(struct fx *f, struct client *c)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/ctl.sock", f->s->run_dir);
    struct qv_err e = {0};
    *c = (struct client){.fd = -1};
    if (unix_connect(path, &c->fd, &e) < 0)
        fail_msg("connect: %s", e.msg);
    fd_set_nonblock(c->fd, true);
    for (int i = 0; i < 5; i++)
        serve(f, 5);
}

static void client_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    buf_free(&c->in);
}

static void client_send(struct client *c, const char *data, size_t n)
{
    while (n) {
        ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            poll(&p, 1, 10);
            continue;
        }
        if (w < 0)
            fail_msg("client send: %s", strerror(errno));
        data += w;
        n -= (size_t)w;
    }
}

static void client_says(struct client *c, const char *s)
{
    client_send(c, s, strlen(s));
}

/* The next reply line, serving the supervisor meanwhile; NULL at end of stream.
 * Within `ms` (then a failure). Caller frees. */
static char *client_line_within(struct fx *f, struct client *c, int ms)
{
    uint64_t deadline = monotonic_ms() + (uint64_t)ms;
    for (;;) {
        if (c->in.len && memchr(c->in.p, '\n', c->in.len))
            return buf_take_line(&c->in);
        char chunk[65536];
        ssize_t n = recv(c->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (n > 0) {
            buf_add(&c->in, chunk, (size_t)n);
            continue;
        }
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return NULL;
        if (monotonic_ms() >= deadline)
            fail_msg("no reply line within %d ms", ms);
        serve(f, 5);
    }
}

static char *client_line(struct fx *f, struct client *c)
{
    return client_line_within(f, c, 3000);
}

static void expect_line(struct fx *f, struct client *c, const char *want)
{
    _cleanup_free_ char *line = client_line(f, c);
    if (!line)
        fail_msg("connection closed; expected %s", want);
    if (strcmp(line, want) != 0)
        fail_msg("reply %s\n    expected %s", line, want);
}

static void expect_eof(struct fx *f, struct client *c)
{
    _cleanup_free_ char *line = client_line(f, c);
    if (line)
        fail_msg("expected the connection closed, got %s", line);
}

/* Nothing arrives for 100 ms while the supervisor is served. */
static void expect_no_reply(struct fx *f, struct client *c)
{
    uint64_t end = monotonic_ms() + 100;
    while (monotonic_ms() < end) {
        serve(f, 5);
        char b;
        ssize_t n = recv(c->fd, &b, 1, MSG_DONTWAIT | MSG_PEEK);
        if (n >= 0 || c->in.len)
            fail_msg("unexpected reply or hang-up (%zd)", n);
    }
}

static json_object *reply_json(struct fx *f, struct client *c)
{
    _cleanup_free_ char *line = client_line(f, c);
    if (!line)
        fail_msg("connection closed; expected a reply");
    json_object *o = json_tokener_parse(line);
    if (!o)
        fail_msg("not JSON: %s", line);
    return o;
}

static const char *jstr(json_object *o, const char *path1, const char *path2)
{
    json_object *v;
    if (!json_object_object_get_ex(o, path1, &v))
        return NULL;
    if (path2 && !json_object_object_get_ex(v, path2, &v))
        return NULL;
    return json_object_get_string(v);
}

static int ctl_setup(void **state)
{
    if (fx_setup(state) < 0)
        return -1;
    struct fx *f = *state;
    struct qv_err e = {0};
    if (ctl_listen(f->s, &e) < 0) {
        fprintf(stderr, "ctl_listen: %s\n", e.msg);
        return -1;
    }
    return 0;
}

static void test_status(void **state)
{
    struct fx *f = *state;
    struct client c;
    client_connect(f, &c);
    client_says(&c, "{\"cmd\": \"status\"}\n");
    _cleanup_json_ json_object *o = reply_json(f, &c);
    assert_string_equal(jstr(o, "ok", NULL), "true");
    assert_string_equal(jstr(o, "status", "name"), "vm1");
    assert_string_equal(jstr(o, "status", "state"), "running");
    assert_string_equal(jstr(o, "status", "monitor"), "connected");
    char pid[16];
    snprintf(pid, sizeof(pid), "%d", (int)f->child);
    assert_string_equal(jstr(o, "status", "pid"), pid);
    json_object *st, *up;
    assert_true(json_object_object_get_ex(o, "status", &st) && json_object_object_get_ex(st, "uptime_s", &up));
    assert_in_range(json_object_get_int64(up), 0, 60);
    /* the connection stays for more */
    client_says(&c, "{\"cmd\": \"frob\"}\n");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob\\\"\",\"code\":-22}");
    client_close(&c);
}

/* A bad request is answered with why, and the connection goes on. */
static void test_bad_requests(void **state)
{
    struct fx *f = *state;
    struct client c;
    client_connect(f, &c);
    client_says(&c, "{\"cmd\": \"stop\", \"force\": \"yes\"}\n");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: stop: \\\"force\\\" must be true or false, not string\","
                       "\"code\":-22}");
    client_says(&c, "{\"cmd\": \"qmp\", \"execute\": \"stop\", \"arguments\": [1]}\n");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: qmp: \\\"arguments\\\" must be an object, not array\","
                       "\"code\":-22}");
    client_says(&c, "{\"cmd\"\n");
    _cleanup_json_ json_object *o = reply_json(f, &c);
    assert_string_equal(jstr(o, "ok", NULL), "false");
    assert_string_equal(jstr(o, "code", NULL), "-22");
    assert_non_null(strstr(jstr(o, "error", NULL), "vm1: "));
    static const char nul[] = "{\"cmd\": \"status\"}\0x\n";
    client_send(&c, nul, sizeof(nul) - 1);
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: a request must not contain a NUL byte\",\"code\":-22}");
    /* nothing was acted upon: still running, and QEMU heard nothing */
    assert_int_equal(f->s->rs.state, VM_RUNNING);
    expect_nothing(f);
    client_says(&c, "{\"cmd\": \"nonsense\"}\n");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"nonsense\\\"\",\"code\":-22}");
    client_says(&c, "{\"cmd\": \"status\"}\n");
    json_object *st = reply_json(f, &c);
    assert_string_equal(jstr(st, "ok", NULL), "true");
    json_object_put(st);
    client_close(&c);
}

static void test_partial_and_pipelined(void **state)
{
    struct fx *f = *state;
    struct client c;
    client_connect(f, &c);
    /* half a line: nothing yet */
    client_says(&c, "{\"cmd\": \"fr");
    expect_no_reply(f, &c);
    client_says(&c, "ob1\"}\n");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob1\\\"\",\"code\":-22}");
    /* two requests in one write, and a third begun: answered in order */
    client_says(&c, "{\"cmd\": \"frob2\"}\n{\"cmd\": \"frob3\"}\n{\"cmd\":");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob2\\\"\",\"code\":-22}");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob3\\\"\",\"code\":-22}");
    expect_no_reply(f, &c);
    client_says(&c, " \"frob4\"}\n");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob4\\\"\",\"code\":-22}");
    /* one byte at a time */
    static const char slow[] = "{\"cmd\": \"frob5\"}\n";
    for (size_t i = 0; i < sizeof(slow) - 1; i++) {
        client_send(&c, slow + i, 1);
        serve(f, 0);
    }
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob5\\\"\",\"code\":-22}");
    client_close(&c);
}

static void test_oversized_line(void **state)
{
    struct fx *f = *state;
    struct client c;
    client_connect(f, &c);
    /* a line of exactly the limit is served */
    size_t n = CTL_REQUEST_MAX;
    char *line = qv_xmalloc(n + 64);
    memset(line, ' ', n);
    static const char cmd[] = "{\"cmd\": \"frob\"}";
    memcpy(line, cmd, sizeof(cmd) - 1);
    line[n] = '\n';
    client_send(&c, line, n + 1);
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob\\\"\",\"code\":-22}");
    /* one byte more, with no end in sight: the connection ends with why */
    memset(line, 'x', n + 2);
    client_send(&c, line, n + 2);
    free(line);
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1: request longer than 64 KiB: closing the connection\","
                       "\"code\":-7}");
    expect_eof(f, &c);
    client_close(&c);
    assert_int_equal(ctl_client_count(f->s), 0);
}

static void test_events_stream(void **state)
{
    struct fx *f = *state;
    struct client ev, other;
    client_connect(f, &ev);
    client_connect(f, &other);
    client_says(&ev, "{\"cmd\": \"events\"}\n");
    expect_line(f, &ev, "{\"ok\":true}");
    /* what QEMU reports reaches the stream, then the state it led to */
    event(f, "STOP", NULL);
    expect_line(f, &ev, "{\"event\":\"STOP\",\"timestamp\":{\"seconds\":1700000000,\"microseconds\":5}}");
    _cleanup_json_ json_object *o = reply_json(f, &ev);
    assert_string_equal(jstr(o, "event", NULL), "QVISOR_STATE");
    assert_string_equal(jstr(o, "data", "state"), "paused");
    event(f, "BLOCK_IO_ERROR", "{\"device\": \"disk0\", \"operation\": \"write\"}");
    expect_line(f, &ev, "{\"event\":\"BLOCK_IO_ERROR\",\"data\":{\"device\":\"disk0\",\"operation\":\"write\"},"
                        "\"timestamp\":{\"seconds\":1700000000,\"microseconds\":5}}");
    /* a request client gets no events; a streaming one's input is ignored */
    expect_no_reply(f, &other);
    client_says(&ev, "{\"cmd\": \"status\"}\n");
    expect_no_reply(f, &ev);
    client_says(&other, "{\"cmd\": \"frob\"}\n");
    expect_line(f, &other, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob\\\"\",\"code\":-22}");
    client_close(&ev);
    client_close(&other);
}

/* stop is answered once QEMU is gone; requests to QEMU go through QMP. */
static void test_stop_and_forward(void **state)
{
    struct fx *f = *state;
    struct client c, w;
    client_connect(f, &c);
    client_connect(f, &w);
    client_says(&c, "{\"cmd\": \"pause\"}\n");
    for (int i = 0; i < 5; i++)
        serve(f, 5);
    expect(f, "stop");
    expect_line(f, &c, "{\"ok\":true}");
    event(f, "STOP", NULL);     /* what QEMU then reports */
    assert_int_equal(f->s->rs.state, VM_PAUSED);
    client_says(&c, "{\"cmd\": \"qmp\", \"execute\": \"query-status\"}\n");
    for (int i = 0; i < 5; i++)
        serve(f, 5);
    assert_true(peer_answer(&f->peer, f->s->qmp, "query-status", "{\"running\": false, \"status\": \"paused\"}"));
    expect_line(f, &c, "{\"ok\":true,\"return\":{\"running\":false,\"status\":\"paused\"}}");
    client_says(&c, "{\"cmd\": \"qmp\", \"execute\": \"nonsense\"}\n");
    for (int i = 0; i < 5; i++)
        serve(f, 5);
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *cmd = peer_recv_cmd(&f->peer, f->s->qmp, "nonsense", &id);
    assert_non_null(cmd);
    peer_sendf(&f->peer, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nonsense has not "
                         "been found\"}, \"id\": \"%s\"}\r\n", id);
    _cleanup_json_ json_object *err = reply_json(f, &c);
    assert_string_equal(jstr(err, "ok", NULL), "false");
    assert_non_null(strstr(jstr(err, "error", NULL), "The command nonsense has not been found"));
    /* two clients stop; both get their answer when QEMU is gone, not before */
    client_says(&c, "{\"cmd\": \"stop\", \"timeout_ms\": 30000}\n");
    for (int i = 0; i < 5; i++)
        serve(f, 5);
    expect(f, "cont");      /* it was paused */
    expect(f, "system_powerdown");
    client_says(&w, "{\"cmd\": \"stop\"}\n");
    expect_no_reply(f, &c);
    expect_no_reply(f, &w);
    assert_int_equal(f->s->stop.phase, 1);
    shutdown_event(f, "guest-shutdown");
    expect(f, "quit");
    expect_no_reply(f, &c);
    qemu_exits(f, 0);
    expect_line(f, &c, "{\"ok\":true}");
    expect_line(f, &w, "{\"ok\":true}");
    /* QEMU gone: what needs it is refused, status still answers */
    client_says(&c, "{\"cmd\": \"pause\"}\n");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1 is not running (shut off)\",\"code\":-16}");
    client_says(&w, "{\"cmd\": \"stop\"}\n");
    expect_line(f, &w, "{\"ok\":true}");
    client_close(&c);
    client_close(&w);
}

static void test_console_refused(void **state)
{
    struct fx *f = *state;
    struct client c;
    client_connect(f, &c);
    client_says(&c, "{\"cmd\": \"console\"}\n");
    expect_line(f, &c, "{\"ok\":false,\"error\":\"vm1 has no serial console connected (console: none)\","
                       "\"code\":-19}");
    client_close(&c);
}

static void test_client_cap(void **state)
{
    struct fx *f = *state;
    struct client cs[CTL_CLIENTS_MAX + 1];
    for (int i = 0; i < CTL_CLIENTS_MAX; i++)
        client_connect(f, &cs[i]);
    assert_int_equal(ctl_client_count(f->s), CTL_CLIENTS_MAX);
    struct client extra;
    client_connect(f, &extra);
    expect_line(f, &extra, "{\"ok\":false,\"error\":\"vm1: too many control connections (64); try again later\","
                           "\"code\":-16}");
    expect_eof(f, &extra);
    client_close(&extra);
    /* those inside are served */
    client_says(&cs[CTL_CLIENTS_MAX - 1], "{\"cmd\": \"frob\"}\n");
    expect_line(f, &cs[CTL_CLIENTS_MAX - 1], "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob\\\"\",\"code\":-22}");
    /* one leaves: a newcomer gets in */
    client_close(&cs[0]);
    for (int i = 0; i < 5; i++)
        serve(f, 5);
    assert_int_equal(ctl_client_count(f->s), CTL_CLIENTS_MAX - 1);
    client_connect(f, &extra);
    client_says(&extra, "{\"cmd\": \"frob\"}\n");
    expect_line(f, &extra, "{\"ok\":false,\"error\":\"vm1: unknown request \\\"frob\\\"\",\"code\":-22}");
    client_close(&extra);
    for (int i = 1; i < CTL_CLIENTS_MAX; i++)
        client_close(&cs[i]);
}

/* Idle clients are dropped after CTL_IDLE_MS; one waiting for its answer is not. */
static void test_idle_clients(void **state)
{
    struct fx *f = *state;
    struct client silent, half, waiting;
    client_connect(f, &silent);
    client_connect(f, &half);
    client_connect(f, &waiting);
    client_says(&half, "{\"cmd\": \"sta");
    client_says(&waiting, "{\"cmd\": \"stop\"}\n");
    for (int i = 0; i < 5; i++)
        serve(f, 5);
    expect(f, "system_powerdown");
    uint64_t now = monotonic_ms();
    assert_true(ctl_next_deadline(f->s) > now);
    assert_true(ctl_next_deadline(f->s) <= now + CTL_IDLE_MS);
    /* not yet */
    ctl_expire(f->s, now);
    expect_no_reply(f, &silent);
    /* 10 s on */
    ctl_expire(f->s, now + CTL_IDLE_MS + 1);
    expect_line(f, &silent, "{\"ok\":false,\"error\":\"vm1: no request within 10 s: closing the connection\","
                            "\"code\":-110}");
    expect_eof(f, &silent);
    expect_line(f, &half, "{\"ok\":false,\"error\":\"vm1: request not finished within 10 s: closing the "
                          "connection\",\"code\":-110}");
    expect_eof(f, &half);
    expect_no_reply(f, &waiting);
    assert_int_equal(ctl_client_count(f->s), 1);
    client_close(&silent);
    client_close(&half);
    client_close(&waiting);
}

/* ---- the CLI's side: ctl_read_line and ctl_parse_reply ---------------------------- */

static void test_read_line(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct buf in = {0};
    struct qv_err e = {0};
    char *line = NULL;
    /* two lines at once: one each call */
    assert_int_equal(write(sv[1], "{\"ok\":true}\n{\"ok\":false}\n{\"o", 28), 28);
    assert_int_equal(ctl_read_line(sv[0], &in, 1000, &line, &e), 0);
    assert_string_equal(line, "{\"ok\":true}");
    free(line);
    assert_int_equal(ctl_read_line(sv[0], &in, 1000, &line, &e), 0);
    assert_string_equal(line, "{\"ok\":false}");
    free(line);
    /* half a line: a timeout, and the half is kept */
    uint64_t t0 = monotonic_ms();
    assert_int_equal(ctl_read_line(sv[0], &in, 100, &line, &e), -ETIMEDOUT);
    assert_true(monotonic_ms() - t0 >= 100);
    assert_string_equal(e.msg, "no answer from the supervisor within 100 ms");
    assert_int_equal(write(sv[1], "k\":1}\n", 6), 6);
    assert_int_equal(ctl_read_line(sv[0], &in, 1000, &line, &e), 0);
    assert_string_equal(line, "{\"ok\":1}");
    free(line);
    /* the supervisor leaves mid-line */
    assert_int_equal(write(sv[1], "{\"ok\":", 6), 6);
    close(sv[1]);
    memset(&e, 0, sizeof(e));
    assert_int_equal(ctl_read_line(sv[0], &in, 1000, &line, &e), -ECONNRESET);
    assert_string_equal(e.msg, "the supervisor closed the connection");
    buf_free(&in);
    close(sv[0]);
}

static void test_parse_reply(void **state)
{
    (void)state;
    json_object *o = NULL;
    struct qv_err e = {0};
    assert_int_equal(ctl_parse_reply("{\"ok\":true,\"status\":{\"state\":\"running\"}}", &o, &e), 0);
    assert_string_equal(jstr(o, "status", "state"), "running");
    json_object_put(o);
    /* an error reply: its code and message */
    o = NULL;
    assert_int_equal(ctl_parse_reply("{\"ok\":false,\"error\":\"vm1 is not running (shutoff)\",\"code\":-16}", &o, &e),
                     -EBUSY);
    assert_int_equal(e.code, -EBUSY);
    assert_string_equal(e.msg, "vm1 is not running (shutoff)");
    assert_null(o);
    assert_int_equal(ctl_parse_reply("{\"ok\":false,\"error\":\"slow\",\"code\":-110}", &o, &e), -ETIMEDOUT);
    assert_string_equal(e.msg, "slow");
    /* without a usable code: EIO; without a message: a generic one */
    assert_int_equal(ctl_parse_reply("{\"ok\":false,\"error\":\"odd\"}", &o, &e), -EIO);
    assert_string_equal(e.msg, "odd");
    assert_int_equal(ctl_parse_reply("{\"ok\":false,\"error\":\"odd\",\"code\":16}", &o, &e), -EIO);
    assert_int_equal(ctl_parse_reply("{\"ok\":false}", &o, &e), -EIO);
    assert_string_equal(e.msg, "request failed");
    /* ok missing or not true is no success */
    assert_int_equal(ctl_parse_reply("{\"status\":{}}", &o, &e), -EIO);
    assert_int_equal(ctl_parse_reply("{\"ok\":\"false\",\"code\":-2,\"error\":\"gone\"}", &o, &e), -ENOENT);
    /* not JSON */
    memset(&e, 0, sizeof(e));
    assert_true(ctl_parse_reply("{\"ok\":tru", &o, &e) < 0);
    assert_non_null(strstr(e.msg, "supervisor reply"));
    assert_null(o);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "test_ctl: a test blocked: timed out\n";
    (void)!write(2, m, sizeof(m) - 1);
    _exit(1);
}

#define T(name) cmocka_unit_test_setup_teardown(name, ctl_setup, fx_teardown)

int main(void)
{
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    alarm(60);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_request),
        cmocka_unit_test(test_parse_request_bytes),
        cmocka_unit_test(test_request_kinds_have_verbs),
        T(test_status),
        T(test_bad_requests),
        T(test_partial_and_pipelined),
        T(test_oversized_line),
        T(test_events_stream),
        T(test_stop_and_forward),
        T(test_console_refused),
        T(test_client_cap),
        T(test_idle_clients),
        cmocka_unit_test(test_read_line),
        cmocka_unit_test(test_parse_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
