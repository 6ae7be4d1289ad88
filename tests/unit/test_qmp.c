/* The QMP / guest-agent client against a scripted fake peer on a socketpair:
 * framing under every chunking, id matching, hostile input, hang-ups, timeouts,
 * fd passing and the agent's sync protocol. */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "qmp/qmp.h"
#include "tests/fakes/qmp_peer.c"

/* ---- recording what the client reports ---------------------------------------- */

struct trace {
    char s[4096];
};

static void trace_add(struct trace *t, const char *fmt, ...) QV_PRINTF(2, 3);
static void trace_add(struct trace *t, const char *fmt, ...)
{
    size_t len = strlen(t->s);
    if (len && len < sizeof(t->s) - 1)
        t->s[len++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->s + len, sizeof(t->s) - len, fmt, ap);
    va_end(ap);
}

struct result {
    const char *tag;
    struct trace *trace;
    int calls;
    int code;
    bool had_ret;
    char msg[1024];
    json_object *ret;
    /* re-entrancy probes */
    struct qmp *q;
    int send_in_callback;           /* what qmp_send returned from inside the callback */
    struct result *chain;           /* sent from inside the callback when set */
    const char *chain_cmd;
};

static void on_reply(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct result *r = ctx;
    r->calls++;
    r->code = err ? err->code : 0;
    r->had_ret = ret != NULL;
    snprintf(r->msg, sizeof(r->msg), "%s", err ? err->msg : "");
    json_object_put(r->ret);
    r->ret = ret ? json_object_get(ret) : NULL;
    if (r->trace)
        trace_add(r->trace, "R:%s%s", r->tag ? r->tag : "?", err ? "!" : "");
    if (r->q && r->chain_cmd)
        r->send_in_callback = qmp_send(r->q, r->chain_cmd, NULL, NULL, 0, 1000, 0, on_reply, r->chain);
}

static void result_free(struct result *r)
{
    json_object_put(r->ret);
    r->ret = NULL;
}

struct fx {
    struct qmp_peer peer;
    struct qmp *q;
    struct trace trace;
    int events;
    char last_event[64];
    json_object *last_data;
    json_object *first_data;
    uint64_t last_ts;
    struct qv_err err;
    /* an event callback that sends a command */
    const char *send_on_event;
    struct result event_sent;
};

static void on_event(void *ctx, const char *event, json_object *data, uint64_t ts_us)
{
    struct fx *f = ctx;
    f->events++;
    snprintf(f->last_event, sizeof(f->last_event), "%s", event);
    json_object_put(f->last_data);
    f->last_data = data ? json_object_get(data) : NULL;
    f->last_ts = ts_us;
    if (f->events == 1)
        f->first_data = data ? json_object_get(data) : NULL;
    trace_add(&f->trace, "E:%s", event);
    if (f->send_on_event) {
        f->event_sent.trace = &f->trace;
        f->event_sent.tag = f->send_on_event;
        qmp_send(f->q, f->send_on_event, NULL, NULL, 0, 1000, 0, on_reply, &f->event_sent);
        f->send_on_event = NULL;
    }
}

static int fx_setup(void **state, enum qmp_proto proto)
{
    struct fx *f = qv_xcalloc(1, sizeof(*f));
    int cfd = peer_open(&f->peer);
    if (cfd < 0) {
        free(f);
        return -1;
    }
    f->q = qmp_new(cfd, proto, on_event, f);
    if (!f->q) {
        peer_close(&f->peer);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int setup_monitor(void **state)
{
    return fx_setup(state, QMP_MONITOR);
}

static int setup_agent(void **state)
{
    return fx_setup(state, QMP_AGENT);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    qmp_free(f->q);
    peer_close(&f->peer);
    json_object_put(f->last_data);
    json_object_put(f->first_data);
    result_free(&f->event_sent);
    free(f);
    return 0;
}

static int pump(struct fx *f)
{
    return peer_pump(f->q, &f->err);
}

/* Delivers `s` to the client one byte per read, letting it run after each. */
static int feed_bytewise(struct fx *f, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(peer_sendn(&f->peer, s + i, 1), 0);
        int r = pump(f);
        if (r < 0)
            return r;
    }
    return 0;
}

static void assert_peer_ok(struct qmp_peer *p)
{
    if (p->failure[0])
        fail_msg("%s", p->failure);
}

/* Greeting, qmp_capabilities, its reply: the client is ready afterwards. */
static void handshake(struct fx *f)
{
    struct result hs = {0};
    assert_int_equal(peer_send(&f->peer, PEER_GREETING), 0);
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), 0);
    assert_true(peer_answer(&f->peer, f->q, "qmp_capabilities", "{}"));
    assert_int_equal(pump(f), 0);
    assert_int_equal(hs.calls, 1);
    assert_int_equal(hs.code, 0);
    assert_true(qmp_ready(f->q));
    result_free(&hs);
}

/* Sends a command and returns its id as the peer saw it. */
static char *send_cmd(struct fx *f, const char *cmd, struct result *r, int timeout_ms, unsigned flags)
{
    assert_int_equal(qmp_send(f->q, cmd, NULL, NULL, 0, timeout_ms, flags, on_reply, r), 0);
    char *id = NULL;
    json_object *c = peer_recv_cmd(&f->peer, f->q, cmd, &id);
    assert_peer_ok(&f->peer);
    assert_non_null(c);
    json_object_put(c);
    return id;
}

/* ---- greeting and handshake --------------------------------------------------- */

static void test_greeting_unknown_keys(void **state)
{
    struct fx *f = *state;
    assert_string_equal(qmp_qemu_version(f->q), "");
    assert_false(qmp_ready(f->q));
    assert_int_equal(peer_send(&f->peer,
                               "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 3, \"minor\": 1, \"major\": 9, "
                               "\"nano\": 7}, \"package\": \"v9.1.3\", \"future\": [1, {\"x\": null}]}, "
                               "\"capabilities\": [\"oob\", \"something-new\"], \"motd\": \"hi\"}, "
                               "\"extra\": {\"k\": true}}\n"),
                     0);
    assert_int_equal(pump(f), 0);
    /* recorded on arrival, before anyone asked for the handshake */
    assert_string_equal(qmp_qemu_version(f->q), "9.1.3");
    int major = 0, minor = 0, micro = 0;
    qmp_qemu_version_numbers(f->q, &major, &minor, &micro);
    assert_int_equal(major, 9);
    assert_int_equal(minor, 1);
    assert_int_equal(micro, 3);
    assert_false(qmp_ready(f->q));

    struct result hs = {0};
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), 0);
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), -EALREADY);
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *caps = peer_recv_cmd(&f->peer, f->q, "qmp_capabilities", &id);
    assert_peer_ok(&f->peer);
    assert_non_null(caps);
    /* we do not ask for out-of-band execution, whatever the greeting offers */
    assert_false(json_object_object_get_ex(caps, "arguments", NULL));
    assert_non_null(id);
    assert_true(str_startswith(id, "qv-"));
    assert_int_equal(hs.calls, 0);
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", id), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(hs.calls, 1);
    assert_int_equal(hs.code, 0);
    assert_true(qmp_ready(f->q));
    assert_int_equal(qmp_pending(f->q), 0);
    assert_int_equal(f->events, 0);
    result_free(&hs);
}

static void test_handshake_before_greeting(void **state)
{
    struct fx *f = *state;
    struct result hs = {0};
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), 0);
    assert_int_equal(qmp_pending(f->q), 1);
    assert_int_not_equal(qmp_next_deadline(f->q), 0);
    /* nothing may be sent before the greeting arrives */
    assert_int_equal(qmp_poll_events(f->q), EPOLLIN);
    assert_int_equal(pump(f), 0);
    struct pollfd pfd = {.fd = f->peer.fd, .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 0), 0);

    assert_int_equal(peer_send(&f->peer, PEER_GREETING), 0);
    assert_true(peer_answer(&f->peer, f->q, "qmp_capabilities", "{}"));
    assert_int_equal(pump(f), 0);
    assert_int_equal(hs.calls, 1);
    assert_int_equal(hs.code, 0);
    assert_true(qmp_ready(f->q));
    assert_string_equal(qmp_qemu_version(f->q), "7.2.22");
    result_free(&hs);
}

static void test_greeting_timeout(void **state)
{
    struct fx *f = *state;
    struct result hs = {0};
    assert_int_equal(qmp_handshake(f->q, 100, on_reply, &hs), 0);
    uint64_t deadline = qmp_next_deadline(f->q);
    qmp_expire(f->q, deadline - 1);
    assert_int_equal(hs.calls, 0);
    qmp_expire(f->q, deadline);
    assert_int_equal(hs.calls, 1);
    assert_int_equal(hs.code, -ETIMEDOUT);
    assert_non_null(strstr(hs.msg, "no greeting from QEMU within 100 ms"));
    assert_false(qmp_ready(f->q));
    assert_int_equal(qmp_next_deadline(f->q), 0);
}

/* A reconnecting supervisor sends before the handshake is done: those commands
 * wait behind qmp_capabilities instead of being refused by QEMU. */
static void test_commands_held_during_handshake(void **state)
{
    struct fx *f = *state;
    struct result hs = {0}, a = {0}, b = {0};
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), 0);
    assert_int_equal(qmp_send(f->q, "query-status", NULL, NULL, 0, 1000, 0, on_reply, &a), 0);
    int fd = dup(0);
    assert_true(fd >= 0);
    assert_int_equal(qmp_send(f->q, "getfd", NULL, &fd, 1, 1000, 0, on_reply, &b), 0);
    close(fd);
    /* held: nothing to write, so no EPOLLOUT that would make a loop spin */
    assert_int_equal(qmp_poll_events(f->q), EPOLLIN);
    assert_int_equal(pump(f), 0);
    struct pollfd pfd = {.fd = f->peer.fd, .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 0), 0);

    assert_int_equal(peer_send(&f->peer, PEER_GREETING), 0);
    /* capabilities first, although queued last */
    assert_true(peer_answer(&f->peer, f->q, "qmp_capabilities", "{}"));
    assert_true(peer_answer(&f->peer, f->q, "query-status", "{\"running\": true}"));
    assert_true(peer_answer(&f->peer, f->q, "getfd", "{}"));
    assert_peer_ok(&f->peer);
    assert_int_equal(f->peer.nfds, 1);     /* the held fd still travelled with its command */
    assert_int_equal(pump(f), 0);
    assert_int_equal(hs.calls, 1);
    assert_int_equal(hs.code, 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.code, 0);
    assert_true(qmp_ready(f->q));
    result_free(&hs);
    result_free(&a);
    result_free(&b);
}

/* A handshake that fails leaves no usable monitor: the connection closes, and
 * what waited for it fails once, with the reason. */
static void test_handshake_failure_closes(void **state)
{
    struct fx *f = *state;
    struct result hs = {0}, a = {0};
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), 0);
    assert_int_equal(qmp_send(f->q, "query-status", NULL, NULL, 0, 5000, 0, on_reply, &a), 0);
    assert_int_equal(peer_send(&f->peer, PEER_GREETING), 0);
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *caps = peer_recv_cmd(&f->peer, f->q, "qmp_capabilities", &id);
    assert_peer_ok(&f->peer);
    assert_int_equal(peer_sendf(&f->peer,
                                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": \"%s\"}\r\n", id),
                     0);
    assert_int_equal(pump(f), -ECONNRESET);
    assert_int_equal(hs.calls, 1);
    assert_string_equal(hs.msg, "GenericError: no");
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, -ECONNRESET);
    assert_non_null(strstr(a.msg, "the handshake failed: GenericError: no"));
    assert_false(qmp_ready(f->q));
    assert_int_equal(qmp_poll_events(f->q), 0);
    /* the held command never reached the peer */
    assert_int_equal(peer_read_some(&f->peer, NULL, 1000), -ECONNRESET);
    assert_int_equal(f->peer.in.len, 0);
    result_free(&hs);
    result_free(&a);
}

/* The same on a timeout: a greeting that never comes. */
static void test_handshake_timeout_closes(void **state)
{
    struct fx *f = *state;
    struct result hs = {0}, a = {0};
    assert_int_equal(qmp_handshake(f->q, 100, on_reply, &hs), 0);
    assert_int_equal(qmp_send(f->q, "query-status", NULL, NULL, 0, 5000, 0, on_reply, &a), 0);
    qmp_expire(f->q, qmp_next_deadline(f->q));
    assert_int_equal(hs.code, -ETIMEDOUT);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, -ECONNRESET);
    assert_int_equal(pump(f), -ECONNRESET);
    assert_int_equal(qmp_pending(f->q), 0);
    result_free(&hs);
    result_free(&a);
}

/* What a supervisor needs to connect again after a loss: the same event handler. */
static void test_event_handler_kept(void **state)
{
    struct fx *f = *state;
    qmp_event_fn fn = NULL;
    void *ctx = NULL;
    qmp_event_handler(f->q, &fn, &ctx);
    assert_ptr_equal(fn, on_event);
    assert_ptr_equal(ctx, f);
}

/* Script for the blocking helpers: QEMU's answer to a command before
 * capabilities, then a normal session. */
static void script_caps_required(struct qmp_peer *p, void *arg)
{
    (void)arg;
    if (peer_send(p, PEER_GREETING) < 0)
        return;
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = peer_recv_cmd(p, NULL, "query-status", &id);
    if (!c)
        return;
    peer_sendf(p,
               "{\"id\": \"%s\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting "
               "capabilities negotiation with 'qmp_capabilities'\"}}\r\n",
               id);
    if (!peer_answer(p, NULL, "qmp_capabilities", "{}"))
        return;
    _cleanup_free_ char *id2 = NULL;
    _cleanup_json_ json_object *c2 = peer_recv_cmd(p, NULL, "query-status", &id2);
    if (!c2)
        return;
    peer_sendf(p,
               "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 5}, \"event\": \"RTC_CHANGE\", "
               "\"data\": {\"offset\": 1}}\r\n"
               "{\"return\": {\"status\": \"prelaunch\", \"singlestep\": false, \"running\": false}, "
               "\"id\": \"%s\"}\r\n",
               id2);
}

static void test_command_before_capabilities(void **state)
{
    struct fx *f = *state;
    assert_int_equal(peer_start(&f->peer, script_caps_required, NULL), 0);
    struct qv_err e = {0};
    json_object *ret = (json_object *)1;
    int r = qmp_call(f->q, "query-status", NULL, NULL, 0, 2000, &ret, &e);
    assert_int_equal(r, -EOPNOTSUPP);
    assert_null(ret);
    assert_string_equal(e.msg, "CommandNotFound: Expecting capabilities negotiation with 'qmp_capabilities'");
    assert_false(qmp_ready(f->q));
    /* the greeting was read meanwhile, and the handshake uses it */
    assert_string_equal(qmp_qemu_version(f->q), "7.2.22");

    assert_int_equal(qmp_handshake_sync(f->q, 2000, &e), 0);
    assert_true(qmp_ready(f->q));
    _cleanup_json_ json_object *status = NULL;
    assert_int_equal(qmp_call(f->q, "query-status", NULL, NULL, 0, 2000, &status, &e), 0);
    json_object *v;
    assert_true(json_object_object_get_ex(status, "status", &v));
    assert_string_equal(json_object_get_string(v), "prelaunch");
    assert_int_equal(f->events, 1);
    assert_string_equal(f->last_event, "RTC_CHANGE");
    assert_string_equal(peer_join(&f->peer), "");
}

/* ---- events, chunking ------------------------------------------------------------- */

static void test_events_interleaved(void **state)
{
    struct fx *f = *state;
    handshake(f);
    struct result a = {.tag = "a", .trace = &f->trace}, b = {.tag = "b", .trace = &f->trace};
    _cleanup_free_ char *ida = send_cmd(f, "query-a", &a, 1000, 0);
    _cleanup_free_ char *idb = send_cmd(f, "query-b", &b, 1000, 0);
    assert_int_equal(peer_sendf(&f->peer,
                                "{\"event\": \"E1\", \"timestamp\": {\"seconds\": 1700000000, \"microseconds\": "
                                "123456}}\r\n"
                                "{\"return\": {\"n\": 1}, \"id\": \"%s\"}\r\n"
                                "{\"event\": \"E2\", \"data\": {\"k\": [1, 2]}, \"timestamp\": {\"seconds\": 1, "
                                "\"microseconds\": 2}}\r\n"
                                "{\"return\": {\"n\": 2}, \"id\": \"%s\"}\r\n"
                                "{\"event\": \"E3\", \"data\": {\"reason\": \"x\"}, \"timestamp\": {\"seconds\": -1, "
                                "\"microseconds\": -1}}\r\n",
                                ida, idb),
                     0);
    assert_int_equal(pump(f), 0);
    assert_string_equal(f->trace.s, "E:E1 R:a E:E2 R:b E:E3");
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    json_object *n;
    assert_true(json_object_object_get_ex(b.ret, "n", &n));
    assert_int_equal(json_object_get_int(n), 2);
    assert_int_equal(f->events, 3);
    assert_string_equal(f->last_event, "E3");
    assert_int_equal(f->last_ts, 0);
    json_object *reason;
    assert_true(json_object_object_get_ex(f->last_data, "reason", &reason));
    assert_string_equal(json_object_get_string(reason), "x");
    result_free(&a);
    result_free(&b);
}

static void test_event_timestamp_and_no_data(void **state)
{
    struct fx *f = *state;
    assert_int_equal(peer_send(&f->peer, "{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1700000000, "
                                         "\"microseconds\": 123456}}\n"),
                     0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(f->events, 1);
    assert_string_equal(f->last_event, "STOP");
    assert_null(f->last_data);
    assert_true(f->last_ts == 1700000000123456ull);
}

static const char conversation[] =
    PEER_GREETING
    "{\"event\": \"E0\", \"data\": {\"s\": \"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}, \"timestamp\": "
    "{\"seconds\": 3, \"microseconds\": 4}}\r\n"
    "{\"return\": {}, \"id\": \"qv-1\"}\r\n"
    "{\"event\": \"E1\", \"timestamp\": {\"seconds\": 5, \"microseconds\": 6}}\r\n";

/* The handshake is started first, so qmp_capabilities is qv-1 and its reply can
 * be part of the same stream as the greeting. */
static void check_conversation(struct fx *f, struct result *hs)
{
    assert_int_equal(hs->calls, 1);
    assert_int_equal(hs->code, 0);
    assert_true(qmp_ready(f->q));
    assert_string_equal(f->trace.s, "E:E0 R:hs E:E1");
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *caps = peer_recv_cmd(&f->peer, f->q, "qmp_capabilities", &id);
    assert_peer_ok(&f->peer);
    assert_string_equal(id, "qv-1");
    assert_int_equal(f->events, 2);
    json_object *s;
    assert_true(json_object_object_get_ex(f->first_data, "s", &s));
    assert_string_equal(json_object_get_string(s), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
}

static void test_byte_by_byte(void **state)
{
    struct fx *f = *state;
    struct result hs = {.tag = "hs", .trace = &f->trace};
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), 0);
    assert_int_equal(feed_bytewise(f, conversation, sizeof(conversation) - 1), 0);
    check_conversation(f, &hs);
    json_object *s;
    assert_int_equal(f->last_ts, 5000006);
    assert_int_equal(hs.calls, 1);
    result_free(&hs);
    struct result a = {.tag = "a", .trace = &f->trace};
    _cleanup_free_ char *ida = send_cmd(f, "x", &a, 1000, 0);
    char reply[256];
    snprintf(reply, sizeof(reply), "{\"return\": {\"s\": \"\xf0\x9f\x98\x80\"}, \"id\": \"%s\"}\n", ida);
    assert_int_equal(feed_bytewise(f, reply, strlen(reply)), 0);
    assert_int_equal(a.calls, 1);
    assert_true(json_object_object_get_ex(a.ret, "s", &s));
    assert_string_equal(json_object_get_string(s), "\xf0\x9f\x98\x80");
    result_free(&a);
}

static void test_several_messages_one_write(void **state)
{
    struct fx *f = *state;
    struct result hs = {.tag = "hs", .trace = &f->trace};
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), 0);
    assert_int_equal(peer_sendn(&f->peer, conversation, sizeof(conversation) - 1), 0);
    assert_int_equal(pump(f), 0);
    check_conversation(f, &hs);
    result_free(&hs);
}

/* Every way of cutting the stream in two, each on a fresh connection: a cut inside
 * a multi-byte character that follows complete ones, inside a key, between \r and
 * \n, right after a message. */
static void test_split_everywhere(void **state)
{
    (void)state;
    size_t n = sizeof(conversation) - 1;
    for (size_t cut = 1; cut < n; cut++) {
        struct fx *f = NULL;
        assert_int_equal(setup_monitor((void **)&f), 0);
        struct result hs = {.tag = "hs", .trace = &f->trace};
        assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &hs), 0);
        assert_int_equal(peer_sendn(&f->peer, conversation, cut), 0);
        int r1 = pump(f);
        assert_int_equal(peer_sendn(&f->peer, conversation + cut, n - cut), 0);
        int r2 = pump(f);
        if (r1 != 0 || r2 != 0 || hs.calls != 1 || strcmp(f->trace.s, "E:E0 R:hs E:E1") != 0)
            fail_msg("cut at %zu: %d/%d, trace \"%s\", %s", cut, r1, r2, f->trace.s, f->err.msg);
        json_object *s;
        assert_true(json_object_object_get_ex(f->first_data, "s", &s));
        assert_string_equal(json_object_get_string(s), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
        result_free(&hs);
        void *st = f;
        teardown(&st);
    }
}

/* Writes split between \r and \n, inside a message, and with no separator at all
 * between two messages: the framing is JSON's, not lines. */
static void test_crlf_split(void **state)
{
    struct fx *f = *state;
    handshake(f);
    struct result a = {.tag = "a", .trace = &f->trace}, b = {.tag = "b", .trace = &f->trace};
    _cleanup_free_ char *ida = send_cmd(f, "a", &a, 1000, 0);
    _cleanup_free_ char *idb = send_cmd(f, "b", &b, 1000, 0);
    char m1[128], m2[128];
    snprintf(m1, sizeof(m1), "{\"return\": {}, \"id\": \"%s\"}", ida);
    snprintf(m2, sizeof(m2), "{\"return\": {}, \"id\": \"%s\"}", idb);
    assert_int_equal(peer_sendf(&f->peer, "{\"event\": \"E1\"}\r"), 0);
    assert_int_equal(pump(f), 0);
    assert_string_equal(f->trace.s, "E:E1");
    assert_int_equal(peer_sendf(&f->peer, "\n%s\r", m1), 0);
    assert_int_equal(pump(f), 0);
    assert_string_equal(f->trace.s, "E:E1 R:a");
    assert_int_equal(peer_sendf(&f->peer, "\n{\"event\": \"E2\"}{\"eve"), 0);
    assert_int_equal(pump(f), 0);
    assert_string_equal(f->trace.s, "E:E1 R:a E:E2");
    assert_int_equal(peer_sendf(&f->peer, "nt\": \"E3\"}\r\n\r\n%s\r", m2), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(peer_send(&f->peer, "\n"), 0);
    assert_int_equal(pump(f), 0);
    assert_string_equal(f->trace.s, "E:E1 R:a E:E2 E:E3 R:b");
    result_free(&a);
    result_free(&b);
}

/* ---- id matching ------------------------------------------------------------------- */

static void test_unknown_ids_dropped(void **state)
{
    struct fx *f = *state;
    handshake(f);
    struct result a = {.tag = "a", .trace = &f->trace};
    _cleanup_free_ char *ida = send_cmd(f, "query-a", &a, 1000, 0);
    assert_int_equal(peer_send(&f->peer, "{\"return\": {}, \"id\": \"qv-999\"}\n"
                                         "{\"return\": {}, \"id\": \"someone-else\"}\n"
                                         "{\"return\": {}, \"id\": 1}\n"
                                         "{\"return\": {}, \"id\": \"qv-\"}\n"
                                         "{\"return\": {}}\n"
                                         "{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}, "
                                         "\"id\": \"qv-998\"}\n"
                                         "{\"something\": \"new\"}\n"),
                     0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(a.calls, 0);
    assert_int_equal(qmp_pending(f->q), 1);
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {\"ok\": true}, \"id\": \"%s\"}\n", ida), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, 0);
    assert_int_equal(qmp_pending(f->q), 0);
    result_free(&a);
}

static void test_error_without_id_fails_oldest(void **state)
{
    struct fx *f = *state;
    handshake(f);
    struct result a = {.tag = "a", .trace = &f->trace}, b = {.tag = "b", .trace = &f->trace};
    _cleanup_free_ char *ida = send_cmd(f, "query-a", &a, 1000, 0);
    _cleanup_free_ char *idb = send_cmd(f, "query-b", &b, 1000, 0);
    assert_int_equal(peer_send(&f->peer, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
                                         "\"JSON parse error, expecting value\"}}\n"),
                     0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, -EIO);
    assert_string_equal(a.msg, "GenericError: JSON parse error, expecting value");
    assert_int_equal(b.calls, 0);
    /* the late reply to the failed command finds nobody; b's reply finds b */
    assert_int_equal(peer_sendf(&f->peer,
                                "{\"return\": {}, \"id\": \"%s\"}\n"
                                "{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'x' not found\"}, "
                                "\"id\": \"%s\"}\n",
                                ida, idb),
                     0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.code, -ENOENT);
    assert_string_equal(b.msg, "DeviceNotFound: Device 'x' not found");
    assert_string_equal(f->trace.s, "R:a! R:b!");
    result_free(&a);
    result_free(&b);
}

/* ---- hostile input closes the connection ------------------------------------------ */

/* A fresh monitor with one pending command receives `bytes` (whole or one byte per
 * read) and must close, failing the command once with a message containing `why`. */
static void expect_close_on(const char *bytes, size_t n, bool bytewise, const char *why)
{
    struct fx *f = NULL;
    assert_int_equal(setup_monitor((void **)&f), 0);
    struct result a = {0};
    _cleanup_free_ char *ida = send_cmd(f, "query-a", &a, 1000, 0);
    int r;
    if (bytewise) {
        r = feed_bytewise(f, bytes, n);
    } else {
        assert_int_equal(peer_sendn(&f->peer, bytes, n), 0);
        r = pump(f);
    }
    if (r != -ECONNRESET)
        fail_msg("input %.60s%s (%s): handle_io returned %d, expected -ECONNRESET", bytes,
                 n > 60 ? "..." : "", bytewise ? "byte by byte" : "whole", r);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, -ECONNRESET);
    if (!strstr(a.msg, why))
        fail_msg("message \"%s\" does not contain \"%s\"", a.msg, why);
    assert_non_null(strstr(f->err.msg, why));
    assert_int_equal(qmp_pending(f->q), 0);
    assert_int_equal(qmp_poll_events(f->q), 0);
    /* closed for good: the peer sees the hang-up, later calls change nothing */
    char c;
    assert_int_equal(recv(f->peer.fd, &c, 1, MSG_DONTWAIT), 0);
    assert_int_equal(pump(f), -ECONNRESET);
    assert_int_equal(a.calls, 1);
    assert_int_equal(qmp_send(f->q, "x", NULL, NULL, 0, 1000, 0, on_reply, &a), -ECONNRESET);
    assert_int_equal(a.calls, 1);
    result_free(&a);
    void *st = f;
    teardown(&st);
}

static void test_non_object_json(void **state)
{
    (void)state;
    static const struct {
        const char *in, *why;
    } cases[] = {
        {"[1,2]\n", "sent a JSON array instead of an object"},
        {"42\n", "sent a JSON int instead of an object"},
        {"4.5 ", "sent a JSON double instead of an object"},
        {"\"str\"", "sent a JSON string instead of an object"},
        {"null\n", "sent a JSON null instead of an object"},
        {"true\n", "sent a JSON boolean instead of an object"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        expect_close_on(cases[i].in, strlen(cases[i].in), false, cases[i].why);
        expect_close_on(cases[i].in, strlen(cases[i].in), true, cases[i].why);
    }
}

static void test_invalid_json(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "{\"return\": }\n", "{\"return\": 1,}\n", "{\"return\": True}\n", "{\"return\": tru}\n",
        "}\n", "{\"a\" 1}\n", "{\"a\": 1} x\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        expect_close_on(cases[i], strlen(cases[i]), false, "sent invalid JSON");
        expect_close_on(cases[i], strlen(cases[i]), true, "sent invalid JSON");
    }
    expect_close_on("{\"a\": \0}", 8, false, "sent invalid JSON");
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\xc3\x28",                 /* lead byte, then no continuation */
        "\xc0\xaf",                 /* overlong '/' */
        "\xe0\x80\xaf",             /* overlong, three bytes */
        "\xed\xa0\x80",             /* UTF-16 surrogate */
        "\xf4\x90\x80\x80",         /* past U+10FFFF */
        "\xf8\x88\x80\x80\x80",     /* five-byte form */
        "\x80",                     /* lone continuation */
        "\xff",
        "\xe2\x82",                 /* cut short by the closing quote */
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char msg[128];
        snprintf(msg, sizeof(msg), "{\"event\": \"X\", \"data\": {\"s\": \"a%sb\"}}\n", bad[i]);
        expect_close_on(msg, strlen(msg), false, "sent invalid UTF-8");
        expect_close_on(msg, strlen(msg), true, "sent invalid UTF-8");
    }
    /* also outside strings, where it is not JSON either */
    expect_close_on("\xc3\xa9{}\n", 5, false, "QMP connection closed");
}

static void test_deep_nesting(void **state)
{
    (void)state;
    enum { LEVELS = 10000 };
    _cleanup_free_ char *deep = qv_xmalloc(LEVELS + 16);
    strcpy(deep, "{\"return\": ");
    memset(deep + strlen(deep), '[', LEVELS);
    deep[11 + LEVELS] = '\0';
    expect_close_on(deep, strlen(deep), false, "nested deeper than 64 levels");

    struct buf objs = {0};
    buf_adds(&objs, "{\"event\": \"X\", \"data\": ");
    for (int i = 0; i < LEVELS; i++)
        buf_adds(&objs, "{\"a\": ");
    expect_close_on(objs.p, objs.len, false, "nested deeper than 64 levels");
    buf_free(&objs);
}

/* The top-level object and the innermost value count as levels, as json-c counts. */
static void send_nested_reply(struct fx *f, const char *id, int levels)
{
    struct buf b = {0};
    buf_adds(&b, "{\"return\": ");
    for (int i = 0; i < levels - 2; i++)
        buf_adds(&b, "[");
    buf_adds(&b, "1");
    for (int i = 0; i < levels - 2; i++)
        buf_adds(&b, "]");
    buf_printf(&b, ", \"id\": \"%s\"}\n", id);
    assert_int_equal(peer_sendn(&f->peer, b.p, b.len), 0);
    buf_free(&b);
}

static void test_nesting_limit_exact(void **state)
{
    struct fx *f = *state;
    struct result a = {0}, b = {0};
    _cleanup_free_ char *ida = send_cmd(f, "a", &a, 1000, 0);
    send_nested_reply(f, ida, QMP_MAX_DEPTH);
    assert_int_equal(pump(f), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, 0);
    _cleanup_free_ char *idb = send_cmd(f, "b", &b, 1000, 0);
    send_nested_reply(f, idb, QMP_MAX_DEPTH + 1);
    assert_int_equal(pump(f), -ECONNRESET);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.code, -ECONNRESET);
    result_free(&a);
    result_free(&b);
}

/* Streams {"return": "aaa…", "id": ID} of exactly `total` bytes in 64 KiB pieces from
 * one static block, letting the client run whenever the socket is full. Returns the
 * bytes the peer managed to write before the client hung up. */
static size_t stream_big_reply(struct fx *f, const char *id, size_t total, int *client_rc)
{
    static char block[65536];
    memset(block, 'a', sizeof(block));
    char head[64], tail[64];
    snprintf(head, sizeof(head), "{\"return\": \"");
    snprintf(tail, sizeof(tail), "\", \"id\": \"%s\"}", id);
    size_t fill = total - strlen(head) - strlen(tail);
    size_t sent = 0;
    *client_rc = 0;
    uint64_t deadline = monotonic_ms() + 60000;
    while (sent < total && monotonic_ms() < deadline) {
        const char *p;
        size_t n;
        if (sent < strlen(head)) {
            p = head + sent;
            n = strlen(head) - sent;
        } else if (sent < strlen(head) + fill) {
            p = block;
            n = strlen(head) + fill - sent;
            if (n > sizeof(block))
                n = sizeof(block);
        } else {
            size_t off = sent - strlen(head) - fill;
            p = tail + off;
            n = strlen(tail) - off;
        }
        ssize_t w = send(f->peer.fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            sent += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            return sent;
        assert_true(w < 0 && errno == EAGAIN);
        *client_rc = pump(f);
    }
    while (*client_rc == 0 && monotonic_ms() < deadline) {
        *client_rc = pump(f);
        if (qmp_pending(f->q) == 0)
            break;
    }
    return sent;
}

static void test_message_size_limit_exact(void **state)
{
    struct fx *f = *state;
    struct result a = {0};
    _cleanup_free_ char *ida = send_cmd(f, "big", &a, 60000, 0);
    int rc;
    size_t sent = stream_big_reply(f, ida, QMP_MAX_MESSAGE, &rc);
    assert_int_equal(sent, QMP_MAX_MESSAGE);
    assert_int_equal(rc, 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, 0);
    assert_int_equal(json_object_get_string_len(a.ret),
                     QMP_MAX_MESSAGE - strlen("{\"return\": \"\", \"id\": \"\"}") - strlen(ida));
    result_free(&a);
    /* the next message is counted from zero */
    struct result b = {0};
    _cleanup_free_ char *idb = send_cmd(f, "small", &b, 1000, 0);
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\n", idb), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(b.calls, 1);
    result_free(&b);
}

static void test_oversized_message(void **state)
{
    struct fx *f = *state;
    struct result a = {0};
    _cleanup_free_ char *ida = send_cmd(f, "big", &a, 60000, 0);
    int rc;
    /* One byte over closes; far more is offered, to show we stop reading early. */
    size_t total = QMP_MAX_MESSAGE + (8u << 20);
    size_t sent = stream_big_reply(f, ida, total, &rc);
    assert_int_equal(rc, -ECONNRESET);
    assert_true(sent >= QMP_MAX_MESSAGE);
    assert_true(sent < total);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, -ECONNRESET);
    assert_non_null(strstr(a.msg, "larger than 33554432 bytes"));
    result_free(&a);

    /* exactly one byte over, on a fresh connection */
    struct fx *g = NULL;
    assert_int_equal(setup_monitor((void **)&g), 0);
    struct result b = {0};
    _cleanup_free_ char *idb = send_cmd(g, "big", &b, 60000, 0);
    stream_big_reply(g, idb, QMP_MAX_MESSAGE + 1, &rc);
    assert_int_equal(rc, -ECONNRESET);
    assert_int_equal(b.calls, 1);
    assert_non_null(strstr(b.msg, "larger than"));
    result_free(&b);
    void *st = g;
    teardown(&st);
}

/* ---- hang-up and timeouts ------------------------------------------------------------ */

static void test_hangup_fails_each_once(void **state)
{
    struct fx *f = *state;
    handshake(f);
    struct result r[3] = {{.tag = "0"}, {.tag = "1"}, {.tag = "2"}};
    struct result quiet = {.tag = "q"};
    struct result never = {0};
    for (int i = 0; i < 3; i++) {
        r[i].trace = &f->trace;
        char name[16];
        snprintf(name, sizeof(name), "cmd-%d", i);
        free(send_cmd(f, name, &r[i], 5000, 0));
    }
    quiet.trace = &f->trace;
    free(send_cmd(f, "quit", &quiet, 5000, QMP_NO_REPLY_OK));
    /* a callback that sends on a dead connection gets an error, not a callback */
    r[1].q = f->q;
    r[1].chain_cmd = "follow-up";
    r[1].chain = &never;
    /* half a reply, then the peer is gone */
    assert_int_equal(peer_send(&f->peer, "{\"return\": {\"x\""), 0);
    peer_hangup(&f->peer);
    assert_int_equal(pump(f), -ECONNRESET);
    assert_string_equal(f->err.msg, "QMP connection closed by QEMU");
    assert_string_equal(f->trace.s, "R:0! R:1! R:2! R:q");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].code, -ECONNRESET);
        char want[64];
        snprintf(want, sizeof(want), "cmd-%d: QMP connection closed by QEMU", i);
        assert_string_equal(r[i].msg, want);
    }
    assert_int_equal(quiet.calls, 1);
    assert_int_equal(quiet.code, 0);
    assert_false(quiet.had_ret);
    assert_int_equal(r[1].send_in_callback, -ECONNRESET);
    assert_int_equal(never.calls, 0);
    assert_int_equal(qmp_pending(f->q), 0);
    assert_false(qmp_ready(f->q));
    assert_int_equal(pump(f), -ECONNRESET);
    qmp_expire(f->q, UINT64_MAX);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r[i].calls, 1);
    assert_int_equal(quiet.calls, 1);
}

static void test_replies_before_hangup_delivered(void **state)
{
    struct fx *f = *state;
    struct result a = {.tag = "a"}, b = {.tag = "b"};
    _cleanup_free_ char *ida = send_cmd(f, "a", &a, 1000, 0);
    _cleanup_free_ char *idb = send_cmd(f, "b", &b, 1000, 0);
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\n", ida), 0);
    peer_hangup(&f->peer);
    assert_int_equal(pump(f), -ECONNRESET);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.code, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.code, -ECONNRESET);
    result_free(&a);
}

static void test_per_command_timeout(void **state)
{
    struct fx *f = *state;
    handshake(f);
    struct result fast = {.tag = "fast"}, slow = {.tag = "slow"}, quiet = {.tag = "quiet"};
    uint64_t before = monotonic_ms();
    _cleanup_free_ char *idf = send_cmd(f, "fast", &fast, 100, 0);
    _cleanup_free_ char *ids = send_cmd(f, "slow", &slow, QMP_TIMEOUT_DEVICE, 0);
    _cleanup_free_ char *idq = send_cmd(f, "guest-shutdown", &quiet, 200, QMP_NO_REPLY_OK);
    uint64_t dl = qmp_next_deadline(f->q);
    assert_true(dl >= before + 100 && dl <= monotonic_ms() + 100);

    qmp_expire(f->q, dl - 1);
    assert_int_equal(fast.calls, 0);
    qmp_expire(f->q, dl + 150);
    assert_int_equal(fast.calls, 1);
    assert_int_equal(fast.code, -ETIMEDOUT);
    assert_string_equal(fast.msg, "fast: no reply from QEMU within 100 ms");
    /* the command allowed to stay silent completes quietly */
    assert_int_equal(quiet.calls, 1);
    assert_int_equal(quiet.code, 0);
    assert_int_equal(slow.calls, 0);
    assert_int_equal(qmp_pending(f->q), 1);
    uint64_t dl2 = qmp_next_deadline(f->q);
    assert_true(dl2 >= before + QMP_TIMEOUT_DEVICE);

    /* the late reply to the timed-out command is dropped */
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\n", idf), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(fast.calls, 1);
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\n", ids), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(slow.calls, 1);
    assert_int_equal(slow.code, 0);
    assert_int_equal(qmp_next_deadline(f->q), 0);
    result_free(&slow);
}

static void test_qmp_call_times_out(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    uint64_t t0 = monotonic_ms();
    json_object *ret = NULL;
    int r = qmp_call(f->q, "query-nothing", NULL, NULL, 0, 200, &ret, &e);
    uint64_t took = monotonic_ms() - t0;
    assert_int_equal(r, -ETIMEDOUT);
    assert_null(ret);
    assert_string_equal(e.msg, "query-nothing: no reply from QEMU within 200 ms");
    assert_true(took >= 200);
    assert_true(took < 10000);     /* bounded; generous for a loaded 2-core host */
    /* the late reply is dropped; the next call gets its own */
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = peer_recv_cmd(&f->peer, NULL, "query-nothing", &id);
    assert_non_null(c);
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {\"late\": true}, \"id\": \"%s\"}\n", id), 0);
    assert_int_equal(peer_send(&f->peer, "{\"return\": {\"fresh\": true}, \"id\": \"qv-2\"}\n"), 0);
    _cleanup_json_ json_object *ret2 = NULL;
    assert_int_equal(qmp_call(f->q, "query-next", NULL, NULL, 0, 1000, &ret2, &e), 0);
    assert_true(json_object_object_get_ex(ret2, "fresh", NULL));
}

/* ---- re-entrancy ---------------------------------------------------------------------- */

static void test_send_from_callbacks(void **state)
{
    struct fx *f = *state;
    handshake(f);
    struct result c = {.tag = "c", .trace = &f->trace};
    struct result b = {.tag = "b", .trace = &f->trace, .q = f->q, .chain_cmd = "cmd-c", .chain = &c};
    struct result a = {.tag = "a", .trace = &f->trace, .q = f->q, .chain_cmd = "cmd-b", .chain = &b};
    _cleanup_free_ char *ida = send_cmd(f, "cmd-a", &a, 1000, 0);
    /* a's reply and an event in one write: the event callback sends too */
    f->send_on_event = "cmd-e";
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\n{\"event\": \"E\"}\n", ida), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.send_in_callback, 0);
    assert_int_equal(qmp_pending(f->q), 2);
    _cleanup_free_ char *idb = NULL, *ide = NULL, *idc = NULL;
    _cleanup_json_ json_object *cb = peer_recv_cmd(&f->peer, f->q, "cmd-b", &idb);
    _cleanup_json_ json_object *ce = peer_recv_cmd(&f->peer, f->q, "cmd-e", &ide);
    assert_peer_ok(&f->peer);
    /* b is the last pending reply-wise once e is answered first */
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\n{\"return\": {}, \"id\": \"%s\"}\n",
                                ide, idb),
                     0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.send_in_callback, 0);
    _cleanup_json_ json_object *cc = peer_recv_cmd(&f->peer, f->q, "cmd-c", &idc);
    assert_peer_ok(&f->peer);
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\n", idc), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(c.calls, 1);
    assert_string_equal(f->trace.s, "R:a E:E R:cmd-e R:b R:c");
    assert_int_equal(qmp_pending(f->q), 0);
    result_free(&a);
    result_free(&b);
    result_free(&c);
}

static void free_in_callback(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    (void)err;
    qmp_free(ctx);
}

/* qmp_free from a callback would be a use-after-free in the dispatcher: it must
 * stop the process at the culprit instead. Runs in a child. */
static void test_free_from_callback_aborts(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* the abort message is expected; keep it out of the test log */
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null >= 0)
            dup2(null, 2);
        struct qmp_peer p;
        int cfd = peer_open(&p);
        struct qmp *q = qmp_new(cfd, QMP_MONITOR, NULL, NULL);
        qmp_send(q, "x", NULL, NULL, 0, 1000, 0, free_in_callback, q);
        peer_send(&p, "{\"return\": {}, \"id\": \"qv-1\"}\n");
        qmp_handle_io(q, EPOLLIN, NULL);
        _exit(0);
    }
    int status = 0;
    uint64_t deadline = monotonic_ms() + 10000;
    pid_t w;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && monotonic_ms() < deadline)
        nanosleep(&(struct timespec){.tv_nsec = 5000000}, NULL);
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fail_msg("child did not finish");
    }
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
}

/* ---- fd passing --------------------------------------------------------------------- */

static int temp_file(struct stat *st)
{
    int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        char path[] = "/tmp/qvisor-test-qmp-XXXXXX";
        fd = mkostemp(path, O_CLOEXEC);
        if (fd >= 0)
            unlink(path);
    }
    if (fd >= 0 && fstat(fd, st) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void assert_same_file(int fd, const struct stat *want)
{
    struct stat st;
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_true(st.st_ino == want->st_ino);
    assert_true(st.st_dev == want->st_dev);
}

static void test_fd_passing(void **state)
{
    struct fx *f = *state;
    handshake(f);
    struct stat st;
    int file = temp_file(&st);
    assert_true(file >= 0);
    struct result a = {0}, g = {0};
    assert_int_equal(qmp_send(f->q, "query-status", NULL, NULL, 0, 1000, 0, on_reply, &a), 0);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "fdname", json_object_new_string("disk0"));
    assert_int_equal(qmp_send(f->q, "getfd", args, &file, 1, 1000, 0, on_reply, &g), 0);

    _cleanup_json_ json_object *c1 = peer_recv_cmd(&f->peer, f->q, "query-status", NULL);
    _cleanup_free_ char *line = peer_recv_line(&f->peer, f->q);
    assert_peer_ok(&f->peer);
    assert_non_null(strstr(line, "\"execute\":\"getfd\""));
    assert_non_null(strstr(line, "\"fdname\":\"disk0\""));
    assert_int_equal(f->peer.nfds, 1);
    /* the descriptor came with the getfd command's bytes, all of them, and nothing after */
    assert_true(f->peer.fd_chunk.len >= strlen(line) + 1);
    const char *tail = f->peer.fd_chunk.p + f->peer.fd_chunk.len - strlen(line) - 1;
    assert_memory_equal(tail, line, strlen(line));
    assert_int_equal(tail[strlen(line)], '\n');
    int got = peer_take_fd(&f->peer);
    assert_same_file(got, &st);
    close(got);
    /* the caller's copy is still its own */
    assert_true(fcntl(file, F_GETFD) >= 0);
    close(file);
    result_free(&a);
    result_free(&g);
}

/* The descriptor waits in the output queue behind a large command; the caller has
 * long closed its copy when it finally goes out. */
static void test_fd_passing_queued(void **state)
{
    struct fx *f = *state;
    int small = 4096;
    assert_int_equal(setsockopt(qmp_fd(f->q), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    struct stat st;
    int file = temp_file(&st);
    assert_true(file >= 0);
    struct result big = {0}, g = {0};
    _cleanup_free_ char *blob = qv_xmalloc(1u << 20);
    memset(blob, 'x', (1u << 20) - 1);
    blob[(1u << 20) - 1] = '\0';
    json_object *args = json_object_new_object();
    json_object_object_add(args, "blob", json_object_new_string(blob));
    assert_int_equal(qmp_send(f->q, "big", args, NULL, 0, 5000, 0, on_reply, &big), 0);
    assert_true(qmp_poll_events(f->q) & EPOLLOUT);
    args = json_object_new_object();
    json_object_object_add(args, "fdname", json_object_new_string("late"));
    assert_int_equal(qmp_send(f->q, "getfd", args, &file, 1, 5000, 0, on_reply, &g), 0);
    close(file);
    struct result after = {0};
    assert_int_equal(qmp_send(f->q, "after", NULL, NULL, 0, 5000, 0, on_reply, &after), 0);

    _cleanup_free_ char *l1 = peer_recv_line(&f->peer, f->q);
    assert_peer_ok(&f->peer);
    assert_true(strlen(l1) > (1u << 20));
    _cleanup_free_ char *l2 = peer_recv_line(&f->peer, f->q);
    assert_peer_ok(&f->peer);
    assert_non_null(strstr(l2, "\"fdname\":\"late\""));
    assert_int_equal(f->peer.nfds, 1);
    const char *tail = f->peer.fd_chunk.p + f->peer.fd_chunk.len - strlen(l2) - 1;
    assert_true(f->peer.fd_chunk.len >= strlen(l2) + 1);
    assert_memory_equal(tail, l2, strlen(l2));
    int got = peer_take_fd(&f->peer);
    assert_same_file(got, &st);
    close(got);
    _cleanup_json_ json_object *c3 = peer_recv_cmd(&f->peer, f->q, "after", NULL);
    assert_peer_ok(&f->peer);
    assert_int_equal(f->peer.nfds, 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(qmp_poll_events(f->q), EPOLLIN);
}

static void test_send_argument_checks(void **state)
{
    struct fx *f = *state;
    struct result a = {0};
    assert_int_equal(qmp_send(f->q, "", NULL, NULL, 0, 1000, 0, on_reply, &a), -EINVAL);
    assert_int_equal(qmp_send(f->q, NULL, NULL, NULL, 0, 1000, 0, on_reply, &a), -EINVAL);
    /* arguments must be an object; consumed anyway (ASan would see the leak) */
    assert_int_equal(qmp_send(f->q, "x", json_object_new_array(), NULL, 0, 1000, 0, on_reply, &a), -EINVAL);
    int bad = 9999;
    assert_int_equal(qmp_send(f->q, "x", json_object_new_object(), &bad, 1, 1000, 0, on_reply, &a), -EBADF);
    assert_int_equal(qmp_pending(f->q), 0);
    assert_int_equal(a.calls, 0);
    /* timeout 0 means the default */
    uint64_t t0 = monotonic_ms();
    assert_int_equal(qmp_send(f->q, "x", NULL, NULL, 0, 0, 0, NULL, NULL), 0);
    uint64_t dl = qmp_next_deadline(f->q);
    assert_true(dl >= t0 + QMP_TIMEOUT_DEFAULT && dl <= monotonic_ms() + QMP_TIMEOUT_DEFAULT);
    /* a command without callback still times out cleanly */
    qmp_expire(f->q, dl);
    assert_int_equal(qmp_pending(f->q), 0);
}

/* ---- guest agent ---------------------------------------------------------------------- */

/* Reads the sync request: 0xFF first, then guest-sync-delimited without a command id. */
static int64_t agent_read_sync(struct fx *f)
{
    _cleanup_free_ char *line = peer_recv_line(&f->peer, f->q);
    assert_peer_ok(&f->peer);
    assert_int_equal((unsigned char)line[0], 0xff);
    _cleanup_json_ json_object *cmd = json_tokener_parse(line + 1);
    assert_non_null(cmd);
    json_object *ex, *args, *id;
    assert_true(json_object_object_get_ex(cmd, "execute", &ex));
    assert_string_equal(json_object_get_string(ex), "guest-sync-delimited");
    assert_false(json_object_object_get_ex(cmd, "id", NULL));
    assert_true(json_object_object_get_ex(cmd, "arguments", &args));
    assert_true(json_object_object_get_ex(args, "id", &id));
    assert_true(json_object_is_type(id, json_type_int));
    return json_object_get_int64(id);
}

static void agent_sync_with_noise(struct fx *f, bool bytewise)
{
    struct result s = {.tag = "sync", .trace = &f->trace};
    assert_false(qmp_ready(f->q));
    assert_int_equal(qmp_agent_sync(f->q, 1000, on_reply, &s), 0);
    int64_t n = agent_read_sync(f);
    int64_t stale = n == 12345 ? 54321 : 12345;
    char noise[512];
    /* garbage (not JSON, not UTF-8), the right echo without its 0xFF, an old
     * sync's echo with one: none of these completes the sync */
    int len = snprintf(noise, sizeof(noise),
                       "garbage \x01\xfe\x80 {\"return\": {}, \"id\": \"qv-0\"} [[[ {\"return\": %lld}\r\n"
                       "\xff{\"return\": %lld}\r\n\xff{\"retu",
                       (long long)n, (long long)stale);
    if (bytewise) {
        assert_int_equal(feed_bytewise(f, noise, (size_t)len), 0);
    } else {
        assert_int_equal(peer_sendn(&f->peer, noise, (size_t)len), 0);
        assert_int_equal(pump(f), 0);
    }
    assert_int_equal(s.calls, 0);
    assert_false(qmp_ready(f->q));
    char echo[64];
    len = snprintf(echo, sizeof(echo), "\xff{\"return\": %lld}\r\n", (long long)n);
    if (bytewise) {
        assert_int_equal(feed_bytewise(f, echo, (size_t)len), 0);
    } else {
        assert_int_equal(peer_sendn(&f->peer, echo, (size_t)len), 0);
        assert_int_equal(pump(f), 0);
    }
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.code, 0);
    assert_true(qmp_ready(f->q));
    result_free(&s);

    struct result info = {.tag = "info", .trace = &f->trace};
    _cleanup_free_ char *id = send_cmd(f, "guest-info", &info, 1000, 0);
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {\"version\": \"7.2\"}, \"id\": \"%s\"}\n", id), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(info.calls, 1);
    assert_int_equal(info.code, 0);
    assert_string_equal(f->trace.s, "R:sync R:info");
    result_free(&info);
}

static void test_agent_sync(void **state)
{
    agent_sync_with_noise(*state, false);
}

static void test_agent_sync_byte_by_byte(void **state)
{
    agent_sync_with_noise(*state, true);
}

/* After a failed sync the stream stays untrusted until a later sync succeeds. */
static void test_agent_sync_timeout_then_resync(void **state)
{
    struct fx *f = *state;
    struct result s1 = {0}, s2 = {0};
    assert_int_equal(qmp_agent_sync(f->q, 100, on_reply, &s1), 0);
    int64_t n1 = agent_read_sync(f);
    qmp_expire(f->q, qmp_next_deadline(f->q));
    assert_int_equal(s1.calls, 1);
    assert_int_equal(s1.code, -ETIMEDOUT);
    assert_false(qmp_ready(f->q));
    /* the late echo and a reply that is not ours: dropped, connection kept */
    assert_int_equal(peer_sendf(&f->peer, "\xff{\"return\": %lld}\n{\"return\": 1}\n", (long long)n1), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(s1.calls, 1);

    assert_int_equal(qmp_agent_sync(f->q, 1000, on_reply, &s2), 0);
    int64_t n2 = agent_read_sync(f);
    assert_int_equal(peer_sendf(&f->peer, "\xff{\"return\": %lld}\n", (long long)n2), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(s2.calls, 1);
    assert_int_equal(s2.code, 0);
    assert_true(qmp_ready(f->q));
    result_free(&s1);
    result_free(&s2);
}

static void test_agent_no_reply_ok(void **state)
{
    struct fx *f = *state;
    struct result down = {.tag = "down", .trace = &f->trace}, info = {.tag = "info", .trace = &f->trace};
    free(send_cmd(f, "guest-shutdown", &down, 5000, QMP_NO_REPLY_OK));
    free(send_cmd(f, "guest-info", &info, 5000, 0));
    peer_hangup(&f->peer);
    assert_int_equal(pump(f), -ECONNRESET);
    assert_string_equal(f->err.msg, "guest agent connection closed by the guest agent");
    assert_int_equal(down.calls, 1);
    assert_int_equal(down.code, 0);
    assert_false(down.had_ret);
    assert_int_equal(info.calls, 1);
    assert_int_equal(info.code, -ECONNRESET);
    assert_string_equal(f->trace.s, "R:down R:info!");
}

static void test_agent_no_reply_ok_timeout(void **state)
{
    struct fx *f = *state;
    struct result down = {0};
    free(send_cmd(f, "guest-shutdown", &down, 300, QMP_NO_REPLY_OK));
    qmp_expire(f->q, qmp_next_deadline(f->q));
    assert_int_equal(down.calls, 1);
    assert_int_equal(down.code, 0);
    assert_false(down.had_ret);
    assert_int_equal(qmp_pending(f->q), 0);
}

/* Agents that do not echo ids answer in order; a command that may stay silent is
 * not the one they answer. */
static void test_agent_reply_without_id(void **state)
{
    struct fx *f = *state;
    struct result down = {0}, info = {0}, ping = {0};
    free(send_cmd(f, "guest-shutdown", &down, 5000, QMP_NO_REPLY_OK));
    free(send_cmd(f, "guest-info", &info, 5000, 0));
    free(send_cmd(f, "guest-ping", &ping, 5000, 0));
    assert_int_equal(peer_send(&f->peer, "{\"return\": {\"version\": \"old\"}}\n{\"return\": {}}\n"), 0);
    assert_int_equal(pump(f), 0);
    assert_int_equal(info.calls, 1);
    json_object *v;
    assert_true(json_object_object_get_ex(info.ret, "version", &v));
    assert_string_equal(json_object_get_string(v), "old");
    assert_int_equal(ping.calls, 1);
    assert_int_equal(down.calls, 0);
    result_free(&info);
    result_free(&ping);
}

static void test_agent_misuse(void **state)
{
    struct fx *f = *state;
    struct result r = {0};
    assert_int_equal(qmp_handshake(f->q, 1000, on_reply, &r), -EINVAL);
    free(send_cmd(f, "guest-info", &r, 5000, 0));
    assert_int_equal(qmp_agent_sync(f->q, 1000, on_reply, &r), -EBUSY);
    assert_int_equal(r.calls, 0);

    struct fx *m = NULL;
    assert_int_equal(setup_monitor((void **)&m), 0);
    assert_int_equal(qmp_agent_sync(m->q, 1000, on_reply, &r), -EINVAL);
    void *st = m;
    teardown(&st);
}

/* The agent answers the sync, then takes guest-shutdown and, if `arg` is set,
 * goes away as a rebooting guest's agent does; otherwise it stays silent. */
static void script_agent_shutdown(struct qmp_peer *p, void *arg)
{
    _cleanup_free_ char *line = peer_recv_line(p, NULL);
    if (!line)
        return;
    if (line[0] != '\xff') {
        peer_fail(p, "sync request without 0xFF: %s", line);
        return;
    }
    _cleanup_json_ json_object *cmd = json_tokener_parse(line + 1);
    json_object *args, *id;
    if (!json_object_object_get_ex(cmd, "arguments", &args) || !json_object_object_get_ex(args, "id", &id)) {
        peer_fail(p, "bad sync: %s", line);
        return;
    }
    peer_sendf(p, "{\"return\": {}, \"id\": \"stale\"}\n\xff{\"return\": %lld}\n",
               (long long)json_object_get_int64(id));
    _cleanup_json_ json_object *down = peer_recv_cmd(p, NULL, "guest-shutdown", NULL);
    if (down && arg)
        peer_hangup(p);
}

static void test_agent_blocking_shutdown(void **state)
{
    struct fx *f = *state;
    assert_int_equal(peer_start(&f->peer, script_agent_shutdown, f), 0);
    struct qv_err e = {0};
    assert_int_equal(qmp_agent_sync_call(f->q, 2000, &e), 0);
    assert_true(qmp_ready(f->q));
    json_object *args = json_object_new_object();
    json_object_object_add(args, "mode", json_object_new_string("reboot"));
    uint64_t t0 = monotonic_ms();
    int r = qmp_call_flags(f->q, "guest-shutdown", args, 30000, QMP_NO_REPLY_OK, &e);
    if (r < 0)
        fail_msg("guest-shutdown: %d %s", r, e.msg);
    /* completed by the hang-up, not by the timeout (far apart, even on a loaded host) */
    assert_true(monotonic_ms() - t0 < 15000);
    assert_string_equal(peer_join(&f->peer), "");
    assert_int_equal(qmp_call_flags(f->q, "guest-ping", NULL, 1000, 0, &e), -ECONNRESET);
    assert_int_equal(qmp_agent_sync_call(f->q, 1000, &e), -ECONNRESET);
}

static void test_agent_blocking_shutdown_silent(void **state)
{
    struct fx *f = *state;
    assert_int_equal(peer_start(&f->peer, script_agent_shutdown, NULL), 0);
    struct qv_err e = {0};
    assert_int_equal(qmp_agent_sync_call(f->q, 2000, &e), 0);
    uint64_t t0 = monotonic_ms();
    assert_int_equal(qmp_call_flags(f->q, "guest-shutdown", NULL, 200, QMP_NO_REPLY_OK, &e), 0);
    assert_true(monotonic_ms() - t0 >= 200);
    /* without the flag, silence is a timeout */
    assert_int_equal(qmp_call_flags(f->q, "guest-ping", NULL, 100, 0, &e), -ETIMEDOUT);
    assert_string_equal(e.msg, "guest-ping: no reply from the guest agent within 100 ms");
    assert_string_equal(peer_join(&f->peer), "");
}

/* Outside a sync, garbage from the agent is as fatal as from QEMU. */
static void test_agent_garbage_closes(void **state)
{
    struct fx *f = *state;
    struct result info = {0};
    free(send_cmd(f, "guest-info", &info, 5000, 0));
    assert_int_equal(peer_send(&f->peer, "garbage\n"), 0);
    assert_int_equal(pump(f), -ECONNRESET);
    assert_int_equal(info.calls, 1);
    assert_int_equal(info.code, -ECONNRESET);
    assert_non_null(strstr(info.msg, "guest-info: guest agent connection closed: the guest agent sent invalid JSON"));
}

/* ---- qmp_connect_path ------------------------------------------------------------------ */

struct listener {
    int fd;
    enum qmp_proto proto;
    struct qmp_peer peer;
};

static void script_accept(struct qmp_peer *p, void *arg)
{
    struct listener *l = arg;
    struct pollfd pfd = {.fd = l->fd, .events = POLLIN};
    if (poll(&pfd, 1, PEER_WAIT_MS) != 1) {
        peer_fail(p, "nobody connected");
        return;
    }
    p->fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (p->fd < 0) {
        peer_fail(p, "accept: %s", strerror(errno));
        return;
    }
    if (l->proto == QMP_MONITOR) {
        peer_send(p, PEER_GREETING);
        peer_answer(p, NULL, "qmp_capabilities", "{}");
        return;
    }
    _cleanup_free_ char *line = peer_recv_line(p, NULL);
    if (!line)
        return;
    _cleanup_json_ json_object *cmd = json_tokener_parse(line + 1);
    json_object *args, *id;
    if (!json_object_object_get_ex(cmd, "arguments", &args) || !json_object_object_get_ex(args, "id", &id)) {
        peer_fail(p, "bad sync: %s", line);
        return;
    }
    peer_sendf(p, "\xff{\"return\": %lld}\n", (long long)json_object_get_int64(id));
}

static int listen_at(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* bind through the directory, since the path may not fit sun_path */
    _cleanup_free_ char *dir = qv_xstrdup(path);
    char *slash = strrchr(dir, '/');
    *slash = '\0';
    _cleanup_close_ int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/proc/self/fd/%d/%s", dfd, slash + 1);
    if (dfd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void connect_and_check(const char *path, enum qmp_proto proto)
{
    struct listener l = {.fd = listen_at(path), .proto = proto};
    assert_true(l.fd >= 0);
    l.peer.fd = -1;
    assert_int_equal(peer_start(&l.peer, script_accept, &l), 0);
    struct qmp *q = NULL;
    struct qv_err e = {0};
    int r = qmp_connect_path(path, proto, 3000, NULL, NULL, &q, &e);
    const char *failure = peer_join(&l.peer);
    if (r < 0)
        fail_msg("connect %s: %d %s (peer: %s)", path, r, e.msg, failure);
    assert_string_equal(failure, "");
    assert_non_null(q);
    assert_true(qmp_ready(q));
    if (proto == QMP_MONITOR)
        assert_string_equal(qmp_qemu_version(q), "7.2.22");
    qmp_free(q);
    peer_close(&l.peer);
    close(l.fd);
    unlink(path);
}

static void test_connect_path(void **state)
{
    (void)state;
    char dir[] = "/tmp/qvisor-test-qmp-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[4096];
    snprintf(path, sizeof(path), "%s/qmp.sock", dir);
    connect_and_check(path, QMP_MONITOR);
    snprintf(path, sizeof(path), "%s/qga.sock", dir);
    connect_and_check(path, QMP_AGENT);

    /* longer than sun_path */
    char deep[4096];
    snprintf(deep, sizeof(deep), "%s/%0120d", dir, 0);
    assert_int_equal(mkdir(deep, 0700), 0);
    snprintf(path, sizeof(path), "%s/qmp.sock", deep);
    assert_true(strlen(path) > sizeof(((struct sockaddr_un *)0)->sun_path));
    connect_and_check(path, QMP_MONITOR);

    /* nobody there */
    struct qmp *q = (struct qmp *)1;
    struct qv_err e = {0};
    snprintf(path, sizeof(path), "%s/none.sock", dir);
    assert_int_equal(qmp_connect_path(path, QMP_MONITOR, 500, NULL, NULL, &q, &e), -ENOENT);
    assert_null(q);
    assert_non_null(strstr(e.msg, path));
    assert_non_null(strstr(e.msg, "No such file or directory"));

    /* somebody there who never greets: bounded by the timeout */
    snprintf(path, sizeof(path), "%s/mute.sock", dir);
    int mute = listen_at(path);
    assert_true(mute >= 0);
    uint64_t t0 = monotonic_ms();
    assert_int_equal(qmp_connect_path(path, QMP_MONITOR, 300, NULL, NULL, &q, &e), -ETIMEDOUT);
    assert_true(monotonic_ms() - t0 < 10000);      /* bounded; generous for a loaded host */
    assert_non_null(strstr(e.msg, "no greeting from QEMU within"));
    assert_true(str_startswith(e.msg, path));
    close(mute);
    unlink(path);

    rmdir(deep);
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_greeting_unknown_keys, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_before_greeting, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_greeting_timeout, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_command_before_capabilities, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_commands_held_during_handshake, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_failure_closes, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_timeout_closes, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_event_handler_kept, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_events_interleaved, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_event_timestamp_and_no_data, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_byte_by_byte, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_several_messages_one_write, setup_monitor, teardown),
        cmocka_unit_test(test_split_everywhere),
        cmocka_unit_test_setup_teardown(test_crlf_split, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_ids_dropped, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_error_without_id_fails_oldest, setup_monitor, teardown),
        cmocka_unit_test(test_non_object_json),
        cmocka_unit_test(test_invalid_json),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test_setup_teardown(test_nesting_limit_exact, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_message_size_limit_exact, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_message, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_hangup_fails_each_once, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_replies_before_hangup_delivered, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_per_command_timeout, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_qmp_call_times_out, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_send_from_callbacks, setup_monitor, teardown),
        cmocka_unit_test(test_free_from_callback_aborts),
        cmocka_unit_test_setup_teardown(test_fd_passing, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_fd_passing_queued, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_send_argument_checks, setup_monitor, teardown),
        cmocka_unit_test_setup_teardown(test_agent_sync, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_sync_byte_by_byte, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_sync_timeout_then_resync, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_no_reply_ok, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_no_reply_ok_timeout, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_reply_without_id, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_misuse, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_garbage_closes, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_blocking_shutdown, setup_agent, teardown),
        cmocka_unit_test_setup_teardown(test_agent_blocking_shutdown_silent, setup_agent, teardown),
        cmocka_unit_test(test_connect_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
