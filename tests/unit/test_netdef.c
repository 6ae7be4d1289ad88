/* Network definitions: what net_def_from_json accepts and refuses (reserved address
 * ranges, bridge names, strings), and net_define against a root of its own: overlaps
 * with other networks, the bounded definitions lock. */
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <setjmp.h>
#include <cmocka.h>

#include "launcher/model/model.h"
#include "launcher/model/netdef.h"

static json_object *parse(const char *text)
{
    json_object *o = NULL;
    struct qv_err e = {0};
    if (json_parse_str("test", text, &o, &e) < 0)
        fail_msg("%s: %s", text, e.msg);
    return o;
}

/* net_def_from_json on `text`: its return code, and the message in *msg. */
static int from_json(const char *text, struct qv_err *e)
{
    json_object *o = parse(text);
    struct net_def n;
    memset(e, 0, sizeof(*e));
    int r = net_def_from_json(o, &n, e);
    if (r == 0)
        net_def_free(&n);
    json_object_put(o);
    return r;
}

static void expect_refused(const char *text, const char *want)
{
    struct qv_err e;
    int r = from_json(text, &e);
    if (r != -EINVAL || !strstr(e.msg, want))
        fail_msg("%s\n  want EINVAL with \"%s\"\n  got %d \"%s\"", text, want, r, e.msg);
}

static void expect_accepted(const char *text)
{
    struct qv_err e;
    int r = from_json(text, &e);
    if (r != 0)
        fail_msg("%s\n  refused: %s", text, e.msg);
}

static void test_reserved_ipv4(void **state)
{
    (void)state;
    static const struct { const char *addr, *why; } bad[] = {
        {"224.0.0.1/24", "multicast (224.0.0.0/4)"},
        {"239.255.0.1/16", "multicast (224.0.0.0/4)"},
        {"240.0.0.1/24", "reserved (240.0.0.0/4"},
        {"255.255.255.254/30", "reserved (240.0.0.0/4, with the broadcast address"},
        {"0.0.0.1/24", "\"this network\" (0.0.0.0/8)"},
        {"169.254.10.1/24", "link-local (169.254.0.0/16)"},
        {"127.0.0.1/8", "loopback (127.0.0.0/8)"},
        {"127.10.0.1/24", "loopback (127.0.0.0/8)"},
        /* a wide prefix that reaches into a reserved block from outside */
        {"223.0.0.1/8", NULL},
        {"169.0.0.1/8", "link-local"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char text[256], want[160];
        snprintf(text, sizeof(text), "{\"name\": \"n\", \"ipv4\": {\"address\": \"%s\"}}", bad[i].addr);
        if (!bad[i].why) {
            expect_accepted(text);     /* 223.0.0.0/8 is unicast: only touching 224/4 is wrong */
            continue;
        }
        snprintf(want, sizeof(want), "ipv4.address: \"%s\" overlaps %s", bad[i].addr, bad[i].why);
        expect_refused(text, want);
    }
    static const char *const good[] = {"10.77.0.1/24", "172.16.5.1/24", "192.168.122.1/24", "100.64.0.1/10",
                                       "198.51.100.1/24", "8.8.8.1/24"};
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        char text[256];
        snprintf(text, sizeof(text), "{\"name\": \"n\", \"ipv4\": {\"address\": \"%s\"}}", good[i]);
        expect_accepted(text);
    }
}

static void test_reserved_ipv6(void **state)
{
    (void)state;
    static const struct { const char *addr, *why; } bad[] = {
        {"ff02::1/64", "multicast (ff00::/8)"},
        {"ff00:1::1/48", "multicast (ff00::/8)"},
        {"fe80::1/64", "link-local (fe80::/10)"},
        {"febf:1::1/64", "link-local (fe80::/10)"},
        {"::1/64", "the unspecified address (::)"},
        {"::2/64", "the unspecified address (::)"},
        {"::ffff:10.0.0.1/64", "the unspecified address"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char text[256], want[160];
        snprintf(text, sizeof(text), "{\"name\": \"n\", \"ipv6\": {\"address\": \"%s\"}}", bad[i].addr);
        snprintf(want, sizeof(want), "ipv6.address: \"%s\" overlaps %s", bad[i].addr, bad[i].why);
        expect_refused(text, want);
    }
    expect_accepted("{\"name\": \"n\", \"ipv6\": {\"address\": \"fd77::1/64\"}}");
    expect_accepted("{\"name\": \"n\", \"ipv6\": {\"address\": \"2001:db8:1::1/48\"}}");
    expect_accepted("{\"name\": \"n\", \"ipv6\": {\"address\": \"fec0::1/64\"}}");
}

static void test_names_and_strings(void **state)
{
    (void)state;
    expect_refused("{\"name\": \"n\", \"bridge\": \"br0;reboot\", \"ipv4\": {\"address\": \"10.1.0.1/24\"}}",
                   "bridge: \"br0;reboot\" is not an interface name");
    expect_refused("{\"name\": \"n\", \"bridge\": \"a-very-long-bridge\", \"ipv4\": {\"address\": \"10.1.0.1/24\"}}",
                   "is not an interface name");
    expect_refused("{\"name\": \"n\\u0000x\", \"ipv4\": {\"address\": \"10.1.0.1/24\"}}",
                   "name: \"n\\u0000x\" contains a NUL character");
    expect_refused("{\"name\": \"n\", \"ipv4\": {\"address\": \"10.1.0.1/24\\u0000junk\"}}",
                   "ipv4.address: \"10.1.0.1/24\\u0000junk\" contains a NUL character");
    expect_refused("{\"name\": \"n\", \"dns\": {\"domain\": \"lan\", \"forwarders\": [\"1.1.1.1\\u0000\"]}, "
                   "\"ipv4\": {\"address\": \"10.1.0.1/24\"}}",
                   "dns.forwarders[0]: \"1.1.1.1\\u0000\" contains a NUL character");
    expect_refused("{\"name\": \"n\", \"dns\": {\"domain\": \"caf\xc3\"}, \"ipv4\": {\"address\": \"10.1.0.1/24\"}}",
                   "dns.domain: is not valid UTF-8 (byte 4 of the string is 0xc3)");
    expect_refused("{\"name\": \"n\", \"mode\": \"bridge\", \"bridge\": \"br0\", \"ipv4\": {\"address\": \"10.1.0.1/24\"}}",
                   "ipv4: not with mode bridge");
    expect_accepted("{\"name\": \"n\", \"mode\": \"bridge\", \"bridge\": \"br-lan_0.1\"}");
}

/* ---- net_define in a root of its own ---- */

static bool have_netns;

struct root {
    char dir[64];
    struct qv_paths paths;
};

static int root_setup(void **state)
{
    struct root *r = calloc(1, sizeof(*r));
    snprintf(r->dir, sizeof(r->dir), "/tmp/qvnetdef.XXXXXX");
    if (!mkdtemp(r->dir))
        return -1;
    struct qv_err e = {0};
    if (qv_paths_init(&r->paths, r->dir, &e) < 0)
        return -1;
    *state = r;
    return 0;
}

static int root_teardown(void **state)
{
    struct root *r = *state;
    const char *rm[] = {"rm", "-rf", r->dir, NULL};
    run_program(rm, 10000, NULL);
    free(r);
    return 0;
}

static int define(struct root *r, const char *text, struct qv_err *e)
{
    json_object *o = parse(text);
    memset(e, 0, sizeof(*e));
    int rc = net_define(&r->paths, o, false, NULL, e);
    json_object_put(o);
    return rc;
}

static void test_define_overlaps(void **state)
{
    struct root *r = *state;
    struct qv_err e;
    if (!have_netns)
        skip();     /* the host's own routes could overlap */
    assert_int_equal(define(r, "{\"name\": \"a\", \"ipv4\": {\"address\": \"10.201.0.1/16\"}}", &e), 0);
    assert_int_equal(define(r, "{\"name\": \"b\", \"ipv4\": {\"address\": \"10.201.7.1/24\"}}", &e), -EADDRINUSE);
    assert_non_null(strstr(e.msg, "overlaps 10.201.0.0/16 of network a"));
    assert_int_equal(define(r, "{\"name\": \"a\", \"ipv4\": {\"address\": \"10.202.0.1/24\"}}", &e), -EEXIST);
    /* a reserved range is refused before anything is written */
    assert_int_equal(define(r, "{\"name\": \"c\", \"ipv4\": {\"address\": \"224.0.0.1/24\"}}", &e), -EINVAL);
    char path[PATH_MAX];
    net_def_path(&r->paths, "c", path, sizeof(path));
    assert_false(path_exists(path));
}

static void test_define_lock_bounded(void **state)
{
    struct root *r = *state;
    char dir[PATH_MAX], lock[PATH_MAX];
    if (!have_netns)
        skip();
    qv_path(&r->paths, dir, sizeof(dir), QV_ETC "/networks");
    assert_int_equal(mkdir_p(dir, 0755), 0);
    snprintf(lock, sizeof(lock), "%s/.lock", dir);
    int sync[2];
    assert_int_equal(pipe(sync), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0 || flock(fd, LOCK_EX) < 0)
            _exit(1);
        (void)!write(sync[1], "x", 1);
        pause();
        _exit(0);
    }
    char c;
    close(sync[1]);
    assert_int_equal(read(sync[0], &c, 1), 1);
    close(sync[0]);
    struct qv_err e;
    uint64_t t0 = monotonic_ms();
    int rc = define(r, "{\"name\": \"l\", \"ipv4\": {\"address\": \"10.203.0.1/24\"}}", &e);
    uint64_t took = monotonic_ms() - t0;
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    assert_int_equal(rc, -EBUSY);
    assert_int_equal(qv_exit_code(rc), 4);
    char want[64];
    snprintf(want, sizeof(want), "is locked by pid %d", (int)child);
    if (!strstr(e.msg, want))
        fail_msg("want \"%s\" in \"%s\"", want, e.msg);
    assert_true(took >= DIR_LOCK_WAIT_MS - 100 && took < DIR_LOCK_WAIT_MS + 3000);
    /* and the lock is free again once its holder is gone */
    assert_int_equal(define(r, "{\"name\": \"l\", \"ipv4\": {\"address\": \"10.203.0.1/24\"}}", &e), 0);
}

int main(void)
{
    /* net_define compares subnets with the host's routes: give it an empty netns */
    have_netns = geteuid() == 0 && unshare(CLONE_NEWNET) == 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserved_ipv4),
        cmocka_unit_test(test_reserved_ipv6),
        cmocka_unit_test(test_names_and_strings),
        cmocka_unit_test_setup_teardown(test_define_overlaps, root_setup, root_teardown),
        cmocka_unit_test_setup_teardown(test_define_lock_bounded, root_setup, root_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
