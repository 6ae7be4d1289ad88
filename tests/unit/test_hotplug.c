/* The hotplug state machine (launcher/supervisor/hotplug.c) against the fake QMP peer: an
 * attach or a removal is a chain of QMP commands sent from completions, so the
 * caller (the supervisor's loop) gets control back at once and keeps serving; a
 * failed step rolls back exactly the steps before it, in reverse, and the ctl
 * client hears the result only when QEMU answered everything.
 *
 * The `struct sup` here is filled by hand with what hotplug.c uses (name, machine,
 * paths to a scratch root, the monitor connection, one ctl client on a
 * socketpair): no QEMU, no loop. The test's own thread plays the loop. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "tests/fakes/qmp_peer.c"
#include "launcher/supervisor/ctl_verbs.h"

struct fx {
    struct qmp_peer peer;
    struct qv_paths paths;
    char dir[64];
    char image[PATH_MAX];
    struct sup *s;
    struct sup_client *c;
    int client_end;     /* what the ctl client reads */
    struct buf got;
};

static int setup(void **state)
{
    struct fx *f = qv_xcalloc(1, sizeof(*f));
    struct qv_err e = {0};
    snprintf(f->dir, sizeof(f->dir), "/tmp/qv-hotplug-XXXXXX");
    if (!mkdtemp(f->dir) || qv_paths_init(&f->paths, f->dir, &e) < 0)
        return -1;
    char path[PATH_MAX];
    qv_path(&f->paths, path, sizeof(path), QV_RUN "/vms/t");
    if (mkdir_p(path, 0755) < 0)
        return -1;
    snprintf(f->image, sizeof(f->image), "%s/disk.raw", f->dir);
    int fd = open(f->image, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0)
        return -1;
    close(fd);

    struct sup *s = qv_xcalloc(1, sizeof(*s));
    s->paths = &f->paths;
    s->def.name = qv_xstrdup("t");
    snprintf(s->def.uuid, sizeof(s->def.uuid), "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
    s->def.machine = MACHINE_Q35;
    s->lock_fd = s->log_fd = s->epfd = s->sigfd = s->pidfd = s->ready_fd = -1;
    s->echo_fd = -1;
    s->ctl = ctl_new();
    s->con = console_new();
    s->mon = monitor_new();
    int cfd = peer_open(&f->peer);
    s->qmp = qmp_new(cfd, QMP_MONITOR, NULL, NULL);
    if (!s->qmp)
        return -1;
    /* the handshake, as the supervisor did it at start */
    peer_send(&f->peer, PEER_GREETING);
    qmp_handshake(s->qmp, 1000, NULL, NULL);
    if (!peer_answer(&f->peer, s->qmp, "qmp_capabilities", "{}") || peer_pump(s->qmp, NULL) < 0 ||
        !qmp_ready(s->qmp))
        return -1;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    struct sup_client *c = ctl_client_add(s, sv[0]);
    c->owed = 1;
    f->client_end = sv[1];
    f->s = s;
    f->c = c;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    struct sup *s = f->s;
    qmp_free(s->qmp);
    s->qmp = NULL;
    hotplug_forget_all(s);      /* an operation cut short by a failed assertion */
    ctl_free(s);        /* and the client */
    console_free(s);
    monitor_free(s);
    close(f->client_end);
    peer_close(&f->peer);
    runstate_free(&s->rs);
    vm_def_free(&s->def);
    free(s);
    buf_free(&f->got);
    char path[PATH_MAX];
    const char *const rm[] = {"rm", "-rf", f->dir, NULL};
    (void)path;
    run_program(rm, 10000, NULL);
    free(f);
    return 0;
}

static void assert_peer_ok(struct qmp_peer *p)
{
    if (p->failure[0])
        fail_msg("%s", p->failure);
}

/* The client's reply line, if one came within wait_ms (the loop's work pumped meanwhile). */
static json_object *client_reply(struct fx *f, int wait_ms)
{
    uint64_t deadline = monotonic_ms() + (uint64_t)wait_ms;
    for (;;) {
        char *nl = f->got.len ? memchr(f->got.p, '\n', f->got.len) : NULL;
        if (nl) {
            *nl = '\0';
            json_object *o = json_tokener_parse(f->got.p);
            buf_consume(&f->got, (size_t)(nl - f->got.p) + 1);
            return o;
        }
        char chunk[4096];
        ssize_t n = recv(f->client_end, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (n > 0) {
            buf_add(&f->got, chunk, (size_t)n);
            continue;
        }
        if (monotonic_ms() >= deadline)
            return NULL;
        (void)peer_pump(f->s->qmp, NULL);
        usleep(2000);
    }
}

static void assert_no_reply_yet(struct fx *f)
{
    json_object *o = client_reply(f, 30);
    if (o)
        fail_msg("the client got a reply too early: %s", json_object_to_json_string(o));
}

/* The next command must be `cmd`; answers it with ret (JSON) or with an error desc. */
static json_object *expect(struct fx *f, const char *cmd, char **id)
{
    json_object *c = peer_recv_cmd(&f->peer, f->s->qmp, cmd, id);
    assert_peer_ok(&f->peer);
    assert_non_null(c);
    return c;
}

static void answer(struct fx *f, const char *cmd, const char *error)
{
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = expect(f, cmd, &id);
    if (error)
        peer_sendf(&f->peer, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"%s\"}, \"id\": \"%s\"}\r\n", error,
                   id);
    else
        peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", id);
}

/* Expects `cmd` and answers it with `ret` (JSON text). */
static void answer_ret(struct fx *f, const char *cmd, const char *ret)
{
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = expect(f, cmd, &id);
    peer_sendf(&f->peer, "{\"return\": %s, \"id\": \"%s\"}\r\n", ret, id);
}

/* Expects `cmd` whose args[key] is the string val, and answers it. */
static void answer_arg(struct fx *f, const char *cmd, const char *key, const char *val)
{
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = expect(f, cmd, &id);
    json_object *args, *v;
    assert_true(json_object_object_get_ex(c, "arguments", &args));
    assert_true(json_object_object_get_ex(args, key, &v));
    assert_string_equal(json_object_get_string(v), val);
    peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", id);
}

static void assert_peer_quiet(struct fx *f)
{
    (void)peer_pump(f->s->qmp, NULL);
    int r = peer_read_some(&f->peer, f->s->qmp, 50);
    if (r == 0 && f->peer.in.len)
        fail_msg("QEMU got an unexpected command: %.*s", (int)f->peer.in.len, f->peer.in.p);
}

static int start_disk(struct fx *f)
{
    char spec[PATH_MAX + 64];
    snprintf(spec, sizeof(spec), "{\"file\": \"%s\", \"format\": \"raw\"}", f->image);
    _cleanup_json_ json_object *o = json_tokener_parse(spec);
    struct qv_err e = {0};
    int r = hotplug_disk_attach(f->s, o, NULL, 1, &e);
    if (r < 0)
        print_error("%s\n", e.msg);
    return r;
}

static int used_slots(struct sup *s)
{
    int n = 0;
    for (int i = 0; i < HOTPLUG_MAX; i++)
        n += s->hp[i].used;
    return n;
}

static void assert_ok_reply(struct fx *f, const char *id)
{
    _cleanup_json_ json_object *o = client_reply(f, 2000);
    assert_non_null(o);
    json_object *v;
    assert_true(json_object_object_get_ex(o, "ok", &v) && json_object_get_boolean(v));
    if (id) {
        assert_true(json_object_object_get_ex(o, "id", &v));
        assert_string_equal(json_object_get_string(v), id);
    }
}

static void assert_error_reply(struct fx *f, const char *needle)
{
    _cleanup_json_ json_object *o = client_reply(f, 2000);
    assert_non_null(o);
    json_object *v;
    assert_true(json_object_object_get_ex(o, "ok", &v) && !json_object_get_boolean(v));
    assert_true(json_object_object_get_ex(o, "error", &v));
    if (!strstr(json_object_get_string(v), needle))
        fail_msg("error \"%s\" does not say \"%s\"", json_object_get_string(v), needle);
}

/* ---- attach-disk ---- */

static void test_disk_attach_success(void **state)
{
    struct fx *f = *state;
    assert_int_equal(start_disk(f), 0);
    /* back at once: nothing answered yet, and the slot is taken but not recorded */
    assert_int_equal(used_slots(f->s), 1);
    assert_true(f->s->hp[0].pending);
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = expect(f, "add-fd", &id);
    int fd = peer_take_fd(&f->peer);
    assert_true(fd >= 0);   /* the image travelled with add-fd */
    close(fd);
    assert_no_reply_yet(f);
    peer_sendf(&f->peer, "{\"return\": {\"fdset-id\": 1000, \"fd\": 7}, \"id\": \"%s\"}\r\n", id);
    answer_arg(f, "blockdev-add", "node-name", "disk0-file");
    answer_arg(f, "blockdev-add", "node-name", "disk0-fmt");
    assert_no_reply_yet(f);
    answer_arg(f, "device_add", "bus", "rp0");
    assert_ok_reply(f, "disk0");
    assert_false(f->s->hp[0].pending);
    assert_null(f->s->hp[0].op);
    assert_peer_quiet(f);
}

/* A failure at step `at` (0: add-fd … 3: device_add) undoes exactly steps < at,
 * newest first, and then answers the client with QEMU's words. */
static void disk_fail_at(struct fx *f, int at)
{
    static const char *const steps[] = {"add-fd", "blockdev-add", "blockdev-add", "device_add"};
    assert_int_equal(start_disk(f), 0);
    for (int i = 0; i < at; i++)
        answer(f, steps[i], NULL);
    answer(f, steps[at], "boom at step");
    if (at > 0)
        assert_no_reply_yet(f); /* the rollback is awaited before the reply */
    if (at >= 3)
        answer_arg(f, "blockdev-del", "node-name", "disk0-fmt");
    if (at >= 2)
        answer_arg(f, "blockdev-del", "node-name", "disk0-file");
    if (at >= 1) {
        _cleanup_free_ char *id = NULL;
        _cleanup_json_ json_object *c = expect(f, "remove-fd", &id);
        json_object *args, *v;
        assert_true(json_object_object_get_ex(c, "arguments", &args));
        assert_true(json_object_object_get_ex(args, "fdset-id", &v));
        assert_int_equal(json_object_get_int(v), 1000);
        peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", id);
    }
    assert_error_reply(f, "boom at step");
    assert_int_equal(used_slots(f->s), 0);
    assert_peer_quiet(f);
}

static void test_disk_fail_add_fd(void **state) { disk_fail_at(*state, 0); }
static void test_disk_fail_file_node(void **state) { disk_fail_at(*state, 1); }
static void test_disk_fail_format_node(void **state) { disk_fail_at(*state, 2); }
static void test_disk_fail_device_add(void **state) { disk_fail_at(*state, 3); }

/* An undo that fails does not stop the rest of the rollback. */
static void test_disk_rollback_goes_on(void **state)
{
    struct fx *f = *state;
    assert_int_equal(start_disk(f), 0);
    answer(f, "add-fd", NULL);
    answer(f, "blockdev-add", NULL);
    answer(f, "blockdev-add", "no space");
    answer(f, "blockdev-del", "node is busy");
    answer(f, "remove-fd", NULL);
    assert_error_reply(f, "no space");
    assert_int_equal(used_slots(f->s), 0);
}

/* While QEMU sits on a step, other commands go out and come back, and a second
 * attach of the same image is refused rather than queued behind it. */
static void test_disk_delayed_reply(void **state)
{
    struct fx *f = *state;
    assert_int_equal(start_disk(f), 0);
    _cleanup_free_ char *add_id = NULL;
    _cleanup_json_ json_object *c = expect(f, "add-fd", &add_id);
    /* the loop goes on: another client's command is sent and answered first */
    int done = 0;
    assert_int_equal(qmp_send(f->s->qmp, "query-status", NULL, NULL, 0, 1000, 0, NULL, NULL), 0);
    (void)done;
    answer(f, "query-status", NULL);
    assert_int_equal(peer_pump(f->s->qmp, NULL), 0);
    assert_int_equal(qmp_pending(f->s->qmp), 1);    /* only add-fd still waits */
    char spec[PATH_MAX + 64];
    snprintf(spec, sizeof(spec), "{\"file\": \"%s\", \"format\": \"raw\"}", f->image);
    _cleanup_json_ json_object *o = json_tokener_parse(spec);
    struct qv_err e = {0};
    assert_int_equal(hotplug_disk_attach(f->s, o, NULL, 1, &e), -EBUSY);
    /* and a detach of the half-attached disk is refused too */
    assert_int_equal(hotplug_detach(f->s, "disk0", HOTPLUG_DISK, 1, &e), -EBUSY);
    assert_no_reply_yet(f);
    peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", add_id);
    answer(f, "blockdev-add", NULL);
    answer(f, "blockdev-add", NULL);
    answer(f, "device_add", NULL);
    assert_ok_reply(f, "disk0");
}

/* QEMU's monitor goes away in the middle: the client hears so, nothing is left. */
static void test_disk_monitor_lost(void **state)
{
    struct fx *f = *state;
    assert_int_equal(start_disk(f), 0);
    answer(f, "add-fd", NULL);
    _cleanup_json_ json_object *c = expect(f, "blockdev-add", NULL);
    peer_hangup(&f->peer);
    struct qv_err e = {0};
    uint64_t deadline = monotonic_ms() + 2000;
    while (qmp_handle_io(f->s->qmp, EPOLLIN, &e) == 0 && monotonic_ms() < deadline)
        usleep(1000);
    assert_error_reply(f, "attach-disk");
    assert_int_equal(used_slots(f->s), 0);
}

/* ---- attach-nic (user mode: no host side) ---- */

static int start_user_nic(struct fx *f)
{
    _cleanup_json_ json_object *o = json_tokener_parse("{\"type\": \"user\", \"mac\": \"52:54:00:ab:cd:01\"}");
    struct qv_err e = {0};
    int r = hotplug_nic_attach(f->s, o, 1, &e);
    if (r < 0)
        print_error("%s\n", e.msg);
    return r;
}

static void test_nic_attach_success(void **state)
{
    struct fx *f = *state;
    assert_int_equal(start_user_nic(f), 0);
    answer_arg(f, "netdev_add", "id", "nic0-net");
    assert_no_reply_yet(f);
    answer_arg(f, "device_add", "mac", "52:54:00:ab:cd:01");
    assert_ok_reply(f, "nic0");
    assert_string_equal(f->s->hp[0].mac, "52:54:00:ab:cd:01");
}

static void test_nic_fail_device_add(void **state)
{
    struct fx *f = *state;
    assert_int_equal(start_user_nic(f), 0);
    answer(f, "netdev_add", NULL);
    answer(f, "device_add", "bus full");
    answer_arg(f, "netdev_del", "id", "nic0-net");
    assert_error_reply(f, "bus full");
    assert_int_equal(used_slots(f->s), 0);
    assert_peer_quiet(f);
}

/* ---- detach ---- */

static void attach_disk_fully(struct fx *f)
{
    assert_int_equal(start_disk(f), 0);
    answer(f, "add-fd", NULL);
    answer(f, "blockdev-add", NULL);
    answer(f, "blockdev-add", NULL);
    answer(f, "device_add", NULL);
    assert_ok_reply(f, "disk0");
}

static void deleted_event(struct fx *f, const char *dev)
{
    /* what the supervisor's event callback does with DEVICE_DELETED */
    hotplug_device_deleted(f->s, dev);
}

/* The reply waits for the guest and then for QEMU to free the nodes and the fdset. */
static void test_detach_waits_for_cleanup(void **state)
{
    struct fx *f = *state;
    attach_disk_fully(f);
    struct qv_err e = {0};
    assert_int_equal(hotplug_detach(f->s, "disk0", HOTPLUG_DISK, 1, &e), 0);
    answer_arg(f, "device_del", "id", "disk0");
    assert_no_reply_yet(f);
    snprintf(f->s->hp[0].top, sizeof(f->s->hp[0].top), "disk0-s1-fmt");   /* as a disk-only snapshot left it */
    deleted_event(f, "disk0");
    /* the chain as QEMU holds it now: a snapshot's overlay on the attached image */
    answer_ret(f, "x-debug-query-block-graph",
               "{\"nodes\": [{\"id\": 1, \"name\": \"disk0-s1-fmt\"}, {\"id\": 2, \"name\": \"disk0-s1-file\"}, "
               "{\"id\": 3, \"name\": \"disk0-fmt\"}, {\"id\": 4, \"name\": \"disk0-file\"}], "
               "\"edges\": [{\"parent\": 1, \"child\": 2, \"name\": \"file\"}, "
               "{\"parent\": 1, \"child\": 3, \"name\": \"backing\"}, {\"parent\": 3, \"child\": 4, \"name\": \"file\"}]}");
    answer_ret(f, "query-fdsets", "[{\"fdset-id\": 1000, \"fds\": [{\"fd\": 30, \"opaque\": \"disk0-file\"}]}, "
               "{\"fdset-id\": 7, \"fds\": [{\"fd\": 31, \"opaque\": \"disk0-s1-file\"}]}, "
               "{\"fdset-id\": 8, \"fds\": [{\"fd\": 32, \"opaque\": \"disk9-file\"}]}]");
    answer_arg(f, "blockdev-del", "node-name", "disk0-s1-fmt");
    answer_arg(f, "blockdev-del", "node-name", "disk0-s1-file");
    answer_arg(f, "blockdev-del", "node-name", "disk0-fmt");
    assert_no_reply_yet(f);
    answer_arg(f, "blockdev-del", "node-name", "disk0-file");
    assert_no_reply_yet(f);
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c1 = expect(f, "remove-fd", &id);
    json_object *args, *v;
    assert_true(json_object_object_get_ex(c1, "arguments", &args) && json_object_object_get_ex(args, "fdset-id", &v));
    assert_int_equal(json_object_get_int(v), 1000);
    peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", id);
    _cleanup_free_ char *id2 = NULL;
    _cleanup_json_ json_object *c2 = expect(f, "remove-fd", &id2);
    assert_true(json_object_object_get_ex(c2, "arguments", &args) && json_object_object_get_ex(args, "fdset-id", &v));
    assert_int_equal(json_object_get_int(v), 7);     /* not 8: another disk's */
    peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", id2);
    assert_ok_reply(f, NULL);
    assert_peer_quiet(f);
    assert_int_equal(used_slots(f->s), 0);
}

static void test_detach_device_del_refused(void **state)
{
    struct fx *f = *state;
    attach_disk_fully(f);
    struct qv_err e = {0};
    assert_int_equal(hotplug_detach(f->s, "disk0", HOTPLUG_DISK, 1, &e), 0);
    answer(f, "device_del", "device is busy");
    assert_error_reply(f, "device is busy");
    assert_int_equal(used_slots(f->s), 1);
    assert_false(f->s->hp[0].removing);
    assert_peer_quiet(f);
}

/* DEVICE_DELETED before device_del's own reply (QEMU may send them in that order). */
static void test_detach_event_before_reply(void **state)
{
    struct fx *f = *state;
    attach_disk_fully(f);
    struct qv_err e = {0};
    assert_int_equal(hotplug_detach(f->s, "disk0", HOTPLUG_DISK, 1, &e), 0);
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = expect(f, "device_del", &id);
    deleted_event(f, "disk0");
    assert_no_reply_yet(f);
    peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", id);
    /* no graph to be had: the nodes go by the names they were attached with */
    answer(f, "x-debug-query-block-graph", "not here");
    answer_arg(f, "blockdev-del", "node-name", "disk0-fmt");
    answer_arg(f, "blockdev-del", "node-name", "disk0-file");
    answer(f, "remove-fd", NULL);
    assert_ok_reply(f, NULL);
    assert_int_equal(used_slots(f->s), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_disk_attach_success, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_fail_add_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_fail_file_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_fail_format_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_fail_device_add, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_rollback_goes_on, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_delayed_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_monitor_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nic_attach_success, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nic_fail_device_add, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_waits_for_cleanup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_device_del_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detach_event_before_reply, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
