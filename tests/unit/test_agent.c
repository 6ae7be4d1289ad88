/* The supervisor's guest agent channel (launcher/supervisor/agent.c) against a fake
 * agent: the test listens on the VM's qga.sock itself, as QEMU's chardev would, and
 * answers by hand. Covers the first sync, a command, a timed-out command followed by
 * a resync that skips its late reply, garbage from the guest (reconnect and resync),
 * the guest closing its port (requests fail at once; reopening syncs at once), a reset
 * with a command in flight, the bounds on exec's stdin sent ahead, and the CLI's base64. */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "tests/unit/sup_testlib.h"
#include "launcher/cli/cli.h"

struct ga {
    struct fx *f;
    int listen_fd;
    int fd;             /* the accepted connection, -1 none */
    struct buf in;
};

/* What a request's callback saw. */
struct outcome {
    bool called;
    int code;
    char msg[512];
    json_object *ret;
};

static void on_outcome(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)s;
    struct outcome *o = ctx;
    o->called = true;
    o->code = err ? err->code : 0;
    snprintf(o->msg, sizeof(o->msg), "%s", err ? err->msg : "");
    o->ret = ret ? json_object_get(ret) : NULL;
}

/* One turn of the supervisor's loop, as far as the agent is concerned. */
static void loop_once(struct fx *f, int wait_ms)
{
    struct epoll_event evs[8];
    int n = epoll_wait(f->s->epfd, evs, 8, wait_ms);
    for (int i = 0; i < n; i++) {
        struct ev *ev = evs[i].data.ptr;
        if (ev->kind == EV_AGENT)
            agent_io(f->s, evs[i].events);
    }
    agent_expire(f->s, monotonic_ms());
}

static void loop_until(struct fx *f, bool *flag, int limit_ms)
{
    uint64_t end = monotonic_ms() + (uint64_t)limit_ms;
    while (!*flag && monotonic_ms() < end)
        loop_once(f, 10);
}

static int ga_setup(void **state)
{
    if (fx_setup(state) < 0)
        return -1;
    struct fx *f = *state;
    f->s->def.agent = true;
    struct ga *g = qv_xcalloc(1, sizeof(*g));
    g->f = f;
    g->fd = -1;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/qga.sock", f->s->run_dir);
    struct qv_err e = {0};
    if (unix_listen(path, 4, &g->listen_fd, &e) < 0) {
        fprintf(stderr, "%s\n", e.msg);
        return -1;
    }
    *state = g;
    return 0;
}

static int ga_teardown(void **state)
{
    struct ga *g = *state;
    if (!g)
        return 0;
    struct fx *f = g->f;
    agent_close(f->s);
    if (g->fd >= 0)
        close(g->fd);
    close(g->listen_fd);
    buf_free(&g->in);
    free(g);
    *state = f;
    return fx_teardown(state);
}

/* The supervisor connects (its loop runs meanwhile); the test accepts. */
static void ga_accept(struct ga *g)
{
    if (g->fd >= 0)
        close(g->fd);
    g->fd = -1;
    buf_free(&g->in);
    uint64_t end = monotonic_ms() + 3000;
    while (g->fd < 0 && monotonic_ms() < end) {
        loop_once(g->f, 10);
        struct pollfd p = {.fd = g->listen_fd, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            g->fd = accept4(g->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    }
    assert_true(g->fd >= 0);
}

/* The next message the supervisor sent (0xFF bytes dropped), within 2 s; *sentinel
 * tells whether a 0xFF came before it. NULL on EOF. */
static json_object *ga_recv(struct ga *g, bool *sentinel)
{
    bool ff = false;
    uint64_t end = monotonic_ms() + 2000;
    for (;;) {
        char *nl = g->in.len ? memchr(g->in.p, '\n', g->in.len) : NULL;
        if (nl) {
            size_t len = (size_t)(nl - g->in.p);
            size_t skip = 0;
            while (skip < len && (unsigned char)g->in.p[skip] == 0xFF) {
                skip++;
                ff = true;
            }
            _cleanup_free_ char *line = strndup(g->in.p + skip, len - skip);
            buf_consume(&g->in, len + 1);
            if (sentinel)
                *sentinel = ff;
            return json_tokener_parse(line);
        }
        if (monotonic_ms() >= end)
            fail_msg("the supervisor sent nothing to the agent within 2 s");
        loop_once(g->f, 5);
        char chunk[4096];
        ssize_t n = recv(g->fd, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (n == 0)
            return NULL;
        if (n > 0)
            buf_add(&g->in, chunk, (size_t)n);
    }
}

static const char *cmd_of(json_object *m)
{
    json_object *v;
    return json_object_object_get_ex(m, "execute", &v) ? json_object_get_string(v) : "";
}

static void ga_send(struct ga *g, const char *fmt, ...) QV_PRINTF(2, 3);
static void ga_send(struct ga *g, const char *fmt, ...)
{
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    assert_int_equal(write_all(g->fd, buf, (size_t)n), 0);
}

/* Expects guest-sync-delimited after a 0xFF and echoes its id the way qemu-ga does. */
static void ga_sync(struct ga *g)
{
    bool ff = false;
    _cleanup_json_ json_object *m = ga_recv(g, &ff);
    assert_non_null(m);
    assert_string_equal(cmd_of(m), "guest-sync-delimited");
    assert_true(ff);
    json_object *args, *id;
    assert_true(json_object_object_get_ex(m, "arguments", &args) && json_object_object_get_ex(args, "id", &id));
    ga_send(g, "\xff{\"return\": %lld}\n", (long long)json_object_get_int64(id));
}

static bool connected(struct fx *f)
{
    _cleanup_json_ json_object *st = agent_status_json(f->s);
    return st && strcmp(json_object_get_string(st), "connected") == 0;
}

/* The first sync, and the supervisor has read its echo. */
static void ga_synced(struct ga *g)
{
    ga_sync(g);
    uint64_t end = monotonic_ms() + 2000;
    while (!connected(g->f) && monotonic_ms() < end)
        loop_once(g->f, 5);
    assert_true(connected(g->f));
}

static void ga_answer(struct ga *g, const char *cmd, const char *ret)
{
    _cleanup_json_ json_object *m = ga_recv(g, NULL);
    assert_non_null(m);
    assert_string_equal(cmd_of(m), cmd);
    json_object *id;
    assert_true(json_object_object_get_ex(m, "id", &id));
    ga_send(g, "{\"return\": %s, \"id\": \"%s\"}\n", ret, json_object_get_string(id));
}

static void call(struct ga *g, const char *cmd, int timeout_ms, struct outcome *o)
{
    struct qv_err e = {0};
    memset(o, 0, sizeof(*o));
    assert_int_equal(agent_call(g->f->s, cmd, NULL, timeout_ms, 0, on_outcome, o, &e), 0);
}

static void outcome_free(struct outcome *o)
{
    if (o->ret)
        json_object_put(o->ret);
    o->ret = NULL;
}

static void status_is(struct fx *f, const char *prefix)
{
    _cleanup_json_ json_object *st = agent_status_json(f->s);
    assert_non_null(st);
    if (!str_startswith(json_object_get_string(st), prefix))
        fail_msg("agent status \"%s\", expected \"%s...\"", json_object_get_string(st), prefix);
}

/* ---- tests ---- */

static void test_connect_sync_and_call(void **state)
{
    struct ga *g = *state;
    ga_accept(g);
    ga_synced(g);
    struct outcome o;
    call(g, "guest-ping", 2000, &o);
    ga_answer(g, "guest-ping", "{\"pong\": 1}");
    loop_until(g->f, &o.called, 2000);
    assert_true(o.called);
    assert_int_equal(o.code, 0);
    json_object *v;
    assert_true(json_object_object_get_ex(o.ret, "pong", &v));
    outcome_free(&o);
    status_is(g->f, "connected");
}

static void test_timeout_then_resync_skips_late_reply(void **state)
{
    struct ga *g = *state;
    ga_accept(g);
    ga_synced(g);
    struct outcome o;
    call(g, "guest-slow", 200, &o);
    _cleanup_json_ json_object *slow = ga_recv(g, NULL);
    assert_string_equal(cmd_of(slow), "guest-slow");
    loop_until(g->f, &o.called, 2000);
    assert_int_equal(o.code, -EIO);
    assert_non_null(strstr(o.msg, "vm1: guest-slow: the guest agent does not answer"));
    assert_non_null(strstr(o.msg, "no reply within 200 ms"));
    /* the next command waits for a sync; the late reply (without id, as old agents
     * send them) comes before the sync's echo and must not answer the new command */
    struct outcome o2;
    call(g, "guest-info", 2000, &o2);
    ga_send(g, "{\"return\": \"stale\"}\n");
    ga_sync(g);
    ga_answer(g, "guest-info", "\"fresh\"");
    loop_until(g->f, &o2.called, 2000);
    assert_int_equal(o2.code, 0);
    assert_string_equal(json_object_get_string(o2.ret), "fresh");
    outcome_free(&o2);
}

static void test_garbage_reconnects_and_resyncs(void **state)
{
    struct ga *g = *state;
    ga_accept(g);
    ga_synced(g);
    struct outcome o;
    call(g, "guest-ping", 3000, &o);
    _cleanup_json_ json_object *m = ga_recv(g, NULL);
    ga_send(g, "this is not JSON}\n");
    loop_until(g->f, &o.called, 2000);
    assert_int_equal(o.code, -EIO);
    assert_non_null(strstr(o.msg, "vm1: guest-ping:"));
    /* the supervisor hangs up and comes back with a sync */
    assert_null(ga_recv(g, NULL));
    ga_accept(g);
    ga_sync(g);
    call(g, "guest-ping", 2000, &o);
    ga_answer(g, "guest-ping", "{}");
    loop_until(g->f, &o.called, 2000);
    assert_int_equal(o.code, 0);
    outcome_free(&o);
}

static void test_port_closed_fails_fast_and_open_resyncs(void **state)
{
    struct ga *g = *state;
    ga_accept(g);
    ga_synced(g);
    event(g->f, "VSERPORT_CHANGE", "{\"id\": \"qga0\", \"open\": false}");
    status_is(g->f, "not answering: the guest agent does not answer");
    struct outcome o;
    uint64_t t0 = monotonic_ms();
    call(g, "guest-ping", 5000, &o);
    loop_until(g->f, &o.called, 1000);
    assert_true(o.called);
    assert_true(monotonic_ms() - t0 < 500);
    assert_int_equal(o.code, -EIO);
    assert_non_null(strstr(o.msg, "(is qemu-guest-agent running in the guest?): its port in the guest is closed"));
    /* qemu-ga starts: the supervisor syncs without waiting for a request */
    event(g->f, "VSERPORT_CHANGE", "{\"id\": \"qga0\", \"open\": true}");
    ga_synced(g);
}

static void test_reset_fails_command_in_flight(void **state)
{
    struct ga *g = *state;
    ga_accept(g);
    ga_synced(g);
    struct outcome o;
    call(g, "guest-fsfreeze-freeze", 60000, &o);
    _cleanup_json_ json_object *m = ga_recv(g, NULL);
    assert_string_equal(cmd_of(m), "guest-fsfreeze-freeze");
    event(g->f, "RESET", "{\"guest\": true, \"reason\": \"guest-reset\"}");
    loop_until(g->f, &o.called, 2000);
    assert_true(o.called);
    assert_int_equal(o.code, -EIO);
    assert_non_null(strstr(o.msg, "the guest reset"));
    ga_accept(g);
    ga_sync(g);
}

static void test_no_agent_channel(void **state)
{
    struct ga *g = *state;
    g->f->s->def.agent = false;
    struct qv_err e = {0};
    struct outcome o = {0};
    assert_int_equal(agent_call(g->f->s, "guest-ping", NULL, 1000, 0, on_outcome, &o, &e), -ENODEV);
    assert_string_equal(e.msg, "vm1 has no guest agent channel (define it with --agent, or \"agent\": true)");
    assert_false(o.called);
    assert_null(agent_status_json(g->f->s));
}

/* exec's stdin sent ahead: 16 MiB per client, twice that for all of them */
static void test_exec_input_bounds(void **state)
{
    struct ga *g = *state;
    struct sup *s = g->f->s;
    size_t piece = 1u << 20;    /* base64 characters: a multiple of 4 */
    char *b64 = qv_xmalloc(piece + 1);
    memset(b64, 'A', piece);
    b64[piece] = '\0';
    struct qv_err e = {0};
    for (unsigned client = 1; client <= 2; client++) {
        for (int i = 0; i < 21; i++)
            assert_int_equal(agent_exec_input(s, client, b64, &e), 0);
        assert_int_equal(agent_exec_input(s, client, b64, &e), -E2BIG);
        assert_string_equal(e.msg, "vm1: exec: stdin larger than 16 MiB");
        for (int i = 0; i < 21; i++)     /* the refused client starts over */
            assert_int_equal(agent_exec_input(s, client, b64, &e), 0);
    }
    assert_int_equal(agent_exec_input(s, 3, b64, &e), -EBUSY);
    assert_non_null(strstr(e.msg, "other clients' stdin fills what the supervisor keeps"));
    assert_int_equal(agent_exec_input(s, 4, "abc", &e), -EINVAL);
    free(b64);
}

static void test_base64(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"hello\n", "aGVsbG8K"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        _cleanup_free_ char *enc = cli_base64_encode(cases[i][0], strlen(cases[i][0]));
        assert_string_equal(enc, cases[i][1]);
        unsigned char *dec = NULL;
        size_t n = 0;
        assert_int_equal(cli_base64_decode(cases[i][1], &dec, &n), 0);
        assert_int_equal(n, strlen(cases[i][0]));
        assert_memory_equal(dec, cases[i][0], n);
        free(dec);
    }
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    _cleanup_free_ char *enc = cli_base64_encode(all, sizeof(all));
    unsigned char *dec = NULL;
    size_t n = 0;
    assert_int_equal(cli_base64_decode(enc, &dec, &n), 0);
    assert_int_equal(n, sizeof(all));
    assert_memory_equal(dec, all, n);
    free(dec);
    assert_int_equal(cli_base64_decode("Zm9v!", &dec, &n), -EINVAL);
    assert_int_equal(cli_base64_decode("Zg==Zg", &dec, &n), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_connect_sync_and_call, ga_setup, ga_teardown),
        cmocka_unit_test_setup_teardown(test_timeout_then_resync_skips_late_reply, ga_setup, ga_teardown),
        cmocka_unit_test_setup_teardown(test_garbage_reconnects_and_resyncs, ga_setup, ga_teardown),
        cmocka_unit_test_setup_teardown(test_port_closed_fails_fast_and_open_resyncs, ga_setup, ga_teardown),
        cmocka_unit_test_setup_teardown(test_reset_fails_command_in_flight, ga_setup, ga_teardown),
        cmocka_unit_test_setup_teardown(test_no_agent_channel, ga_setup, ga_teardown),
        cmocka_unit_test_setup_teardown(test_exec_input_bounds, ga_setup, ga_teardown),
        cmocka_unit_test(test_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
