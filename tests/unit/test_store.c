/* The definition store and the text it reads: NUL bytes and keys, UTF-8, files of the
 * wrong type (never opened, so a FIFO cannot block a define), the bounded lock. */
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <setjmp.h>
#include <cmocka.h>

#include "launcher/model/model.h"

static void test_parse_nul_bytes_and_keys(void **state)
{
    (void)state;
    json_object *o = NULL;
    struct qv_err e = {0};
    static const char with_nul[] = "{\"name\": \"a\"}\0{\"qemu_args\": [\"-S\"]}";
    assert_int_equal(json_parse_buf("f.json", with_nul, sizeof(with_nul) - 1, &o, &e), -EINVAL);
    assert_string_equal(e.msg, "f.json:1:14: a NUL byte (JSON is text; write \\u0000 inside a string if you must)");
    static const char *const keys[] = {
        "{\"name\\u0000x\": 1}",
        "{\n  \"a\": 1,\n  'b\\u0000' : 2}",
        "{/* \" */ \"n\\u0000\": 1}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        memset(&e, 0, sizeof(e));
        int r = json_parse_str("k", keys[i], &o, &e);
        if (r != -EINVAL || !strstr(e.msg, "an object key contains \\u0000"))
            fail_msg("%s: got %d \"%s\"", keys[i], r, e.msg);
    }
    assert_int_equal(json_parse_str("k", "{\"a\": 1,\n \"b\\u0000c\": 2}", &o, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "k:2:2: "));
    /* in a value, or a key that only looks like one, it is for jr_check_text */
    static const char *const fine[] = {"{\"a\": \"x\\u0000y\"}", "[\"a\\u0000\", 1]", "{\"a\": \"\\\\u0000\"}"};
    for (size_t i = 0; i < ARRAY_SIZE(fine); i++) {
        assert_int_equal(json_parse_str("v", fine[i], &o, &e), 0);
        json_object_put(o);
    }
}

static int check_text(const char *json, struct qv_err *e)
{
    json_object *o = NULL;
    memset(e, 0, sizeof(*e));
    if (json_parse_str("t", json, &o, e) < 0)
        fail_msg("%s: %s", json, e->msg);
    struct jr r;
    jr_init(&r, e);
    int rc = jr_check_text(&r, o);
    json_object_put(o);
    return rc;
}

static void test_utf8_and_nul_strings(void **state)
{
    (void)state;
    struct qv_err e;
    static const char *const good[] = {
        "{\"a\": \"plain\"}", "{\"a\": \"caf\xc3\xa9\"}", "{\"a\": \"\xe2\x82\xac \xf0\x9f\x96\xa5 \xf4\x8f\xbf\xbf\"}",
        "{\"\xc3\xa9\": [\"\xed\x9f\xbf\"]}", "{\"a\": \"\\ud83d\\udda5\"}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(good); i++)
        if (check_text(good[i], &e) != 0)
            fail_msg("%s refused: %s", good[i], e.msg);
    static const struct { const char *json, *msg; } bad[] = {
        {"{\"a\": \"x\\u0000y\"}", "a: \"x\\u0000y\" contains a NUL character (\\u0000)"},
        {"{\"a\": {\"b\": [1, \"\\u0000\"]}}", "a.b[1]: \"\\u0000\" contains a NUL character (\\u0000)"},
        {"{\"a\": \"caf\xe9\"}", "a: is not valid UTF-8 (byte 4 of the string is 0xe9)"},
        {"{\"a\": \"\xc0\xaf\"}", "a: is not valid UTF-8 (byte 1 of the string is 0xc0)"},       /* overlong '/' */
        {"{\"a\": \"\xe0\x80\xaf\"}", "a: is not valid UTF-8 (byte 1 of the string is 0xe0)"},   /* overlong */
        {"{\"a\": \"\xed\xa0\x80\"}", "a: is not valid UTF-8 (byte 1 of the string is 0xed)"},   /* surrogate */
        {"{\"a\": \"\xf4\x90\x80\x80\"}", "a: is not valid UTF-8 (byte 1 of the string is 0xf4)"}, /* > U+10FFFF */
        {"{\"a\": \"ab\xe2\x82\"}", "a: is not valid UTF-8 (byte 3 of the string is 0xe2)"},     /* cut short */
        {"{\"a\": \"\xbf\"}", "a: is not valid UTF-8 (byte 1 of the string is 0xbf)"},
        {"{\"x\": {\"k\xff\": 1}}", "x: an object key is not valid UTF-8 (byte 2 of the key is 0xff)"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        int r = check_text(bad[i].json, &e);
        if (r != -EINVAL || strcmp(e.msg, bad[i].msg) != 0)
            fail_msg("%s\n  want \"%s\"\n  got %d \"%s\"", bad[i].json, bad[i].msg, r, e.msg);
    }
}

/* ---- vm_define in a root of its own ---- */

struct root {
    char dir[64];
    struct qv_paths paths;
};

static int root_setup(void **state)
{
    struct root *r = calloc(1, sizeof(*r));
    snprintf(r->dir, sizeof(r->dir), "/tmp/qvstore.XXXXXX");
    struct qv_err e = {0};
    if (!mkdtemp(r->dir) || qv_paths_init(&r->paths, r->dir, &e) < 0)
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

static int define(struct root *r, const char *fmt, struct qv_err *e, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, e);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    json_object *o = NULL;
    memset(e, 0, sizeof(*e));
    if (json_parse_str("test", text, &o, e) < 0)
        fail_msg("%s: %s", text, e->msg);
    int rc = vm_define(&r->paths, o, false, NULL, e);
    json_object_put(o);
    return rc;
}

static void test_define_file_types(void **state)
{
    struct root *r = *state;
    char fifo[PATH_MAX], img[PATH_MAX];
    snprintf(fifo, sizeof(fifo), "%s/fifo", r->dir);
    snprintf(img, sizeof(img), "%s/a.raw", r->dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    int fd = open(img, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 1 << 20), 0);
    close(fd);
    struct qv_err e;
    /* a FIFO must not be opened: the define would wait for a writer, holding the lock */
    alarm(10);
    assert_int_equal(define(r, "{\"name\": \"v\", \"disks\": [{\"file\": \"%s\"}]}", &e, fifo), -EINVAL);
    alarm(0);
    char want[512];
    snprintf(want, sizeof(want), "v: disks[0].file: %s is a named pipe (FIFO), not a regular file or a block device", fifo);
    assert_string_equal(e.msg, want);
    assert_int_equal(define(r, "{\"name\": \"v\", \"disks\": [{\"file\": \"%s\"}, {\"file\": \"/dev/null\", \"format\": "
                               "\"raw\"}]}", &e, img), -EINVAL);
    assert_string_equal(e.msg, "v: disks[1].file: /dev/null is a character device, not a regular file or a block device");
    assert_int_equal(define(r, "{\"name\": \"v\", \"boot\": {\"kernel\": \"%s\"}}", &e, r->dir), -EINVAL);
    assert_non_null(strstr(e.msg, "boot.kernel: /tmp/qvstore."));
    assert_non_null(strstr(e.msg, " is a directory, not a regular file"));
    /* a missing image with a given format may come later; a probed one may not */
    assert_int_equal(define(r, "{\"name\": \"later\", \"disks\": [{\"file\": \"%s.missing\", \"format\": \"raw\"}]}", &e,
                            img), 0);
    assert_int_equal(define(r, "{\"name\": \"v\", \"disks\": [{\"file\": \"%s.missing\"}]}", &e, img), -ENOENT);
    assert_int_equal(define(r, "{\"name\": \"v\", \"disks\": [{\"file\": \"%s\"}], \"cdroms\": [{}]}", &e, img), 0);
    /* image_detect_format itself never waits on a FIFO either */
    enum disk_format f;
    alarm(10);
    assert_int_equal(image_detect_format(fifo, &f, &e), -EINVAL);
    alarm(0);
    assert_non_null(strstr(e.msg, "is a named pipe (FIFO)"));
}

static void test_define_host_users(void **state)
{
    struct root *r = *state;
    struct qv_err e;
    assert_int_equal(define(r, "{\"name\": \"u\", \"sandbox\": {\"user\": \"root\"}}", &e), -EINVAL);
    assert_string_equal(e.msg, "u: sandbox.user: user root: QEMU never runs as root or in the root group "
                               "(use \"dynamic\" for a uid of its own)");
    assert_int_equal(define(r, "{\"name\": \"u\", \"sandbox\": {\"user\": \"no-such-user-here\"}}", &e), -EINVAL);
    assert_non_null(strstr(e.msg, "does not exist"));
    assert_int_equal(define(r, "{\"name\": \"u\", \"sandbox\": {\"group\": \"root\"}}", &e), -EINVAL);
    assert_int_equal(define(r, "{\"name\": \"u\", \"limits\": {\"memory_max\": \"1M\"}}", &e), -EINVAL);
    assert_string_equal(e.msg, "limits.memory_max: \"1M\" is less than QEMU itself needs beside 1G of guest memory "
                               "and 1 vCPU (at least \"352M\")");
    /* exactly the minimum is enough */
    assert_int_equal(define(r, "{\"name\": \"u\", \"limits\": {\"memory_max\": \"352M\"}}", &e), 0);
}

static void test_define_lock_bounded(void **state)
{
    struct root *r = *state;
    char dir[PATH_MAX], lock[PATH_MAX];
    qv_path(&r->paths, dir, sizeof(dir), QV_ETC "/vms");
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
    struct qv_err e, e2;
    uint64_t t0 = monotonic_ms();
    int rc = define(r, "{\"name\": \"v\"}", &e);
    int rc2 = vm_undefine(&r->paths, "v", &e2);
    uint64_t took = monotonic_ms() - t0;
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    assert_int_equal(rc, -EBUSY);
    assert_int_equal(rc2, -EBUSY);
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "%s is locked by pid %d (", lock, (int)child);
    if (!strstr(e.msg, want))
        fail_msg("want \"%s\" in \"%s\"", want, e.msg);
    assert_true(took >= 2 * DIR_LOCK_WAIT_MS - 200 && took < 2 * DIR_LOCK_WAIT_MS + 4000);
    assert_int_equal(define(r, "{\"name\": \"v\"}", &e), 0);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "a define blocked: timed out\n";
    (void)!write(2, m, sizeof(m) - 1);
    _exit(1);
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_nul_bytes_and_keys),
        cmocka_unit_test(test_utf8_and_nul_strings),
        cmocka_unit_test_setup_teardown(test_define_file_types, root_setup, root_teardown),
        cmocka_unit_test_setup_teardown(test_define_host_users, root_setup, root_teardown),
        cmocka_unit_test_setup_teardown(test_define_lock_bounded, root_setup, root_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
