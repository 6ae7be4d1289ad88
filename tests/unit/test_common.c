/* common/: strings, sizes, names, files, the atomic write, JSON reading with paths,
 * and the small helpers every floor shares (FNV-1a, small-file reads, the
 * /proc/PID/cgroup parser, signalfd set-up, JSON-lines framing, child programs). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "common/common.h"
#include "tests/unit/files_testlib.h"

struct fx {
    char dir[64];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/qv-common-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    rm_tree(f->dir);
    free(f);
    return 0;
}

static void put(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, text, strlen(text)), 0);
    close(fd);
}

/* ---- strings ---- */

static void test_strv_and_buf(void **state)
{
    (void)state;
    struct strv s = {0};
    strv_push(&s, "b");
    strv_pushf(&s, "%s-%d", "a", 1);
    strv_take(&s, qv_xstrdup("c"));
    assert_int_equal(s.n, 3);
    assert_null(s.v[3]);
    strv_sort(&s);
    _cleanup_free_ char *j = strv_join((const char *const *)s.v, ",");
    assert_string_equal(j, "a-1,b,c");
    assert_true(strv_contains((const char *const *)s.v, "b"));
    assert_false(strv_contains((const char *const *)s.v, "a"));
    strv_free(&s);
    assert_int_equal(s.n, 0);

    struct buf b = {0};
    buf_adds(&b, "hello ");
    buf_printf(&b, "%d %s", 42, "world");
    assert_string_equal(b.p, "hello 42 world");
    buf_consume(&b, 6);
    assert_string_equal(b.p, "42 world");
    buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.p, "");
    buf_free(&b);

    struct strv parts = {0};
    str_split_escaped("a,b,,c,", ',', &parts);
    assert_int_equal(parts.n, 3);
    assert_string_equal(parts.v[0], "a");
    assert_string_equal(parts.v[1], "b,c");
    assert_string_equal(parts.v[2], "");
    strv_free(&parts);
    assert_true(str_startswith("qvbr-x", "qvbr-"));
    assert_false(str_startswith("qv", "qvbr-"));
}

static void test_sizes_and_names(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(parse_size("512M", &v), 0);
    assert_int_equal(v, 512ull << 20);
    assert_int_equal(parse_size("2GiB", &v), 0);
    assert_int_equal(v, 2ull << 30);
    assert_int_equal(parse_size("1024", &v), 0);
    assert_int_equal(v, 1024);
    assert_int_equal(parse_size("1x", &v), -EINVAL);
    assert_int_equal(parse_size("-1G", &v), -EINVAL);
    assert_int_equal(parse_size("99999999999P", &v), -ERANGE);
    assert_int_equal(parse_u64("12a", &v), -EINVAL);
    char s[32];
    format_size(2147483648ull, s, sizeof(s));
    assert_string_equal(s, "2G");
    format_size(1536ull << 20, s, sizeof(s));
    assert_string_equal(s, "1536M");
    format_size(1000, s, sizeof(s));
    assert_string_equal(s, "1000");

    assert_true(name_valid("web-1.a_b"));
    assert_false(name_valid(".hidden"));
    assert_false(name_valid("-x"));
    assert_false(name_valid("a/b"));
    assert_false(name_valid(""));
    char long_name[66];
    memset(long_name, 'a', 65);
    long_name[65] = '\0';
    assert_false(name_valid(long_name));

    char mac[18];
    assert_true(mac_normalise("52:54:00:AB:cd:01", mac));
    assert_string_equal(mac, "52:54:00:ab:cd:01");
    assert_false(mac_normalise("01:00:5e:00:00:01", mac));    /* multicast */
    assert_false(mac_normalise("00:00:00:00:00:00", mac));
    assert_false(mac_normalise("52:54:00:ab:cd:0g", mac));
    assert_false(mac_normalise("52-54-00-ab-cd-01", mac));

    char u1[37], u2[37];
    uuid_generate_str(u1);
    uuid_generate_str(u2);
    assert_true(uuid_valid(u1));
    assert_string_not_equal(u1, u2);
    assert_int_equal(u1[14], '4');
    assert_false(uuid_valid("6F9619FF-8B86-D011-B42D-00C04FC964FF"));   /* upper case */
}

/* Published FNV-1a 64 test vectors, and the continuation property callers rely on. */
static void test_fnv1a64(void **state)
{
    (void)state;
    assert_int_equal(fnv1a64("", 0, FNV1A64_INIT), 0xcbf29ce484222325ull);
    assert_int_equal(fnv1a64("a", 1, FNV1A64_INIT), 0xaf63dc4c8601ec8cull);
    assert_int_equal(fnv1a64("foobar", 6, FNV1A64_INIT), 0x85944171f73967e8ull);
    assert_int_equal(fnv1a64("bar", 3, fnv1a64("foo", 3, FNV1A64_INIT)), 0x85944171f73967e8ull);
}

/* ---- files ---- */

static void test_read_file(void **state)
{
    struct fx *f = *state;
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/a", f->dir);
    put(p, "line one\nline two\n");
    _cleanup_free_ char *s = NULL;
    size_t len;
    assert_int_equal(read_file(p, 100, &s, &len), 0);
    assert_int_equal(len, 18);
    assert_string_equal(s, "line one\nline two\n");
    char *t = NULL;
    assert_int_equal(read_file(p, 10, &t, NULL), -EFBIG);
    assert_null(t);
    snprintf(p, sizeof(p), "%s/missing", f->dir);
    assert_int_equal(read_file(p, 10, &t, NULL), -ENOENT);
}

static void test_read_file_small(void **state)
{
    struct fx *f = *state;
    char p[PATH_MAX], buf[8];
    snprintf(p, sizeof(p), "%s/v", f->dir);
    put(p, "1234567");                      /* exactly len - 1 */
    assert_int_equal(read_file_small(p, buf, sizeof(buf)), 7);
    assert_string_equal(buf, "1234567");
    put(p, "12345678");                     /* one byte too many: never a silent cut */
    assert_int_equal(read_file_small(p, buf, sizeof(buf)), -EFBIG);
    assert_string_equal(buf, "1234567");
    put(p, "");
    assert_int_equal(read_file_small(p, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");

    char line[16];
    put(p, "42\nmore\n");
    assert_int_equal(read_file_line(p, line, sizeof(line)), 0);
    assert_string_equal(line, "42");
    put(p, "0123456789abcdefXYZ\n");
    assert_int_equal(read_file_line(p, line, sizeof(line)), -EFBIG);
    snprintf(p, sizeof(p), "%s/none", f->dir);
    assert_int_equal(read_file_line(p, line, sizeof(line)), -ENOENT);
    /* the kernel's own files, which report a size of 0 */
    assert_int_equal(read_file_line("/proc/sys/kernel/ostype", line, sizeof(line)), 0);
    assert_string_equal(line, "Linux");
}

static size_t count_entries(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static void test_write_file_atomic(void **state)
{
    struct fx *f = *state;
    char p[PATH_MAX];
    struct qv_err e = {0};
    snprintf(p, sizeof(p), "%s/def.json", f->dir);
    assert_int_equal(write_file_atomic(p, "old\n", 4, 0600, &e), 0);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);

    /* A reader that opened the old file keeps reading the old file: the new one
     * replaces it by rename, it is never rewritten in place. */
    int old = open(p, O_RDONLY | O_CLOEXEC);
    assert_true(old >= 0);
    assert_int_equal(write_file_atomic(p, "new content\n", 12, 0640, &e), 0);
    char buf[32] = "";
    assert_int_equal(pread(old, buf, sizeof(buf) - 1, 0), 4);
    assert_string_equal(buf, "old\n");
    close(old);
    _cleanup_free_ char *s = NULL;
    assert_int_equal(read_file(p, 100, &s, NULL), 0);
    assert_string_equal(s, "new content\n");
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0640);
    assert_int_equal(count_entries(f->dir), 1);      /* no temporary file left */

    /* rename onto a non-empty directory fails: an error naming the path, no temp file */
    char d[PATH_MAX], inner[PATH_MAX + 8];
    snprintf(d, sizeof(d), "%s/adir", f->dir);
    assert_int_equal(mkdir(d, 0755), 0);
    snprintf(inner, sizeof(inner), "%s/x", d);
    put(inner, "x");
    assert_true(write_file_atomic(d, "y", 1, 0600, &e) < 0);
    assert_non_null(strstr(e.msg, d));
    assert_non_null(strstr(e.msg, "rename"));
    assert_int_equal(count_entries(f->dir), 2);
    snprintf(p, sizeof(p), "%s/no/such/dir/f", f->dir);
    assert_int_equal(write_file_atomic(p, "y", 1, 0600, &e), -ENOENT);
    assert_non_null(strstr(e.msg, p));

    snprintf(p, sizeof(p), "%s/m/n/o", f->dir);
    assert_int_equal(mkdir_p(p, 0755), 0);
    assert_int_equal(mkdir_p(p, 0755), 0);
    assert_true(path_exists(p));
}

/* ---- JSON ---- */

static void test_json_errors_name_the_place(void **state)
{
    (void)state;
    struct qv_err e = {0};
    json_object *o = NULL;
    assert_int_equal(json_parse_str("web1.json", "{\n  \"a\": 1,\n  \"b\": x\n}", &o, &e), -EINVAL);
    assert_true(str_startswith(e.msg, "web1.json:3:"));
    assert_int_equal(json_parse_str("t", "{\"a\": 1", &o, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "unexpected end"));
    assert_int_equal(json_parse_str("t", "{} []", &o, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "trailing data"));
    assert_int_equal(json_parse_str("t", " {\"a\": [1, 2]}\n", &o, &e), 0);
    _cleanup_free_ char *pretty = json_pretty(o);
    assert_int_equal(pretty[strlen(pretty) - 1], '\n');
    json_object_put(o);
}

static void test_jr_paths(void **state)
{
    (void)state;
    struct qv_err e = {0};
    _cleanup_json_ json_object *o = NULL;
    assert_int_equal(json_parse_str("t", "{\"disks\": [{\"bus\": \"virtio\"}, {\"bus\": \"scsii\", \"x\": 1}],"
                                         " \"count\": 300, \"name\": 5}", &o, &e), 0);
    struct jr r;
    jr_init(&r, &e);
    json_object *disks;
    assert_int_equal(jr_array(&r, o, "disks", &disks), 0);
    size_t mark = jr_key(&r, "disks");
    static const char *const buses[] = {"virtio", "scsi", "sata", "ide", "usb", NULL};
    int bus = -1;
    size_t m0 = jr_index(&r, 0);
    assert_int_equal(jr_enum(&r, json_object_array_get_idx(disks, 0), "bus", buses, &bus), 0);
    assert_int_equal(bus, 0);
    jr_pop(&r, m0);
    jr_index(&r, 1);
    assert_int_equal(jr_enum(&r, json_object_array_get_idx(disks, 1), "bus", buses, &bus), -EINVAL);
    assert_string_equal(e.msg, "disks[1].bus: \"scsii\" is not one of virtio, scsi, sata, ide, usb");
    static const char *const keys[] = {"bus", NULL};
    assert_int_equal(jr_only_keys(&r, json_object_array_get_idx(disks, 1), keys), -EINVAL);
    assert_non_null(strstr(e.msg, "disks[1]"));
    assert_non_null(strstr(e.msg, "x"));
    jr_pop(&r, mark);
    int64_t n = 0;
    assert_int_equal(jr_int(&r, o, "count", 1, 255, &n), -EINVAL);
    assert_true(str_startswith(e.msg, "count: 300"));
    char *name = NULL;
    assert_int_equal(jr_string(&r, o, "name", false, &name), -EINVAL);
    assert_true(str_startswith(e.msg, "name:"));
    assert_int_equal(jr_string(&r, o, "absent", true, &name), -EINVAL);
    assert_null(name);
    assert_int_equal(jr_string(&r, o, "absent", false, &name), 0);
    assert_null(name);
}

/* ---- the shared helpers ---- */

/* Each line of /proc/self/cgroup, found by the same rules the kernel documents. */
static void test_proc_cgroup_path(void **state)
{
    (void)state;
    _cleanup_free_ char *text = NULL;
    assert_int_equal(read_file("/proc/self/cgroup", 1 << 16, &text, NULL), 0);
    char path[PATH_MAX];
    int checked = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        assert_non_null(c2);
        *c2 = '\0';
        if (strcmp(line, "0:") == 0) {
            assert_int_equal(proc_cgroup_path(0, NULL, path, sizeof(path)), 0);
            assert_string_equal(path, c2 + 1);
            checked++;
            continue;
        }
        char *ctl = c1 + 1, *comma = strchr(ctl, ',');
        if (!*ctl)
            continue;
        if (comma)
            *comma = '\0';     /* the first of a co-mounted list ("cpu" of "cpu,cpuacct") */
        assert_int_equal(proc_cgroup_path(getpid(), ctl, path, sizeof(path)), 0);
        assert_string_equal(path, c2 + 1);
        checked++;
    }
    assert_true(checked > 0);
    /* "cpu" must not match "cpuset", nor a controller that is not listed at all */
    assert_int_equal(proc_cgroup_path(0, "no-such-controller", path, sizeof(path)), -ENOENT);
    assert_int_equal(proc_cgroup_path(0, "cpus", path, sizeof(path)), -ENOENT);
    assert_int_equal(proc_cgroup_path(999999999, NULL, path, sizeof(path)), -ENOENT);
    char tiny[1];
    int r = proc_cgroup_path(0, NULL, tiny, sizeof(tiny));
    assert_true(r == -ENAMETOOLONG || r == -ENOENT);
}

/* The oracle: /proc/PID/stat split at spaces after comm's last ')', by hand. */
static unsigned long long stat_oracle(pid_t pid, int field)
{
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *tok = strrchr(buf, ')') + 2, *save = NULL;
    char *t = strtok_r(tok, " ", &save);
    for (int i = 3; i < field; i++)
        t = strtok_r(NULL, " ", &save);
    assert_non_null(t);
    return strtoull(t, NULL, 10);
}

/* start time and CPU ticks of a child that sleeps (its figures hold still), whose
 * comm has a space and a ')' in it */
static void test_proc_stat_fields(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_NAME, "a) b c", 0, 0, 0);
        for (volatile unsigned long i = 0; i < 20000000ul; i++)     /* user time */
            ;
        for (int i = 0; i < 2000000; i++)     /* system time */
            (void)getppid();
        pause();
        _exit(0);
    }
    unsigned long long start = 0, ticks = 0, prev = 1;
    /* wait until its busy loop ends: two equal readings 0.2 s apart */
    for (int i = 0; i < 100 && prev != ticks; i++) {
        prev = ticks;
        usleep(200000);
        assert_int_equal(proc_cpu_ticks(pid, &ticks), 0);
    }
    assert_int_equal(proc_start_time(pid, &start), 0);
    assert_true(start > 0);
    assert_true(start == stat_oracle(pid, 22));
    assert_true(stat_oracle(pid, 14) > 0 && stat_oracle(pid, 15) > 0);     /* both count */
    assert_true(ticks == stat_oracle(pid, 14) + stat_oracle(pid, 15));
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    assert_int_equal(proc_start_time(pid, &start), -ENOENT);
}

static void test_signalfd_for(void **state)
{
    (void)state;
    int fd = signalfd_for(SIGUSR1, SIGUSR2, 0);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    struct signalfd_siginfo si;
    assert_int_equal(read(fd, &si, sizeof(si)), -1);    /* non-blocking: nothing pending */
    assert_int_equal(errno, EAGAIN);
    raise(SIGUSR2);                                     /* blocked: queued, not fatal */
    assert_int_equal(read(fd, &si, sizeof(si)), (ssize_t)sizeof(si));
    assert_int_equal(si.ssi_signo, SIGUSR2);
    close(fd);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigaddset(&m, SIGUSR2);
    sigprocmask(SIG_UNBLOCK, &m, NULL);
}

static void test_buf_take_line(void **state)
{
    (void)state;
    struct buf in = {0};
    assert_null(buf_take_line(&in));
    buf_adds(&in, "{\"a\":1}\n{\"b\"");
    char *l = buf_take_line(&in);
    assert_string_equal(l, "{\"a\":1}");
    free(l);
    assert_null(buf_take_line(&in));          /* half a line stays */
    assert_string_equal(in.p, "{\"b\"");
    buf_adds(&in, ":2}\n\n");
    l = buf_take_line(&in);
    assert_string_equal(l, "{\"b\":2}");
    free(l);
    l = buf_take_line(&in);
    assert_string_equal(l, "");
    free(l);
    assert_int_equal(in.len, 0);
    buf_free(&in);
}

static void test_run_program(void **state)
{
    (void)state;
    char *out = NULL, *err = NULL;
    const char *both[] = {"sh", "-c", "echo to-out; echo to-err >&2; exit 3", NULL};
    assert_int_equal(run_program_split(both, 5000, &out, &err), 3);
    assert_string_equal(out, "to-out\n");
    assert_string_equal(err, "to-err\n");
    free(out);
    free(err);
    assert_int_equal(run_program(both, 5000, &out), 3);
    assert_non_null(strstr(out, "to-out"));
    assert_non_null(strstr(out, "to-err"));
    free(out);
    const char *missing[] = {"qv-no-such-program", NULL};
    assert_int_equal(run_program(missing, 1000, NULL), -ENOENT);
    const char *slow[] = {"sleep", "10", NULL};
    uint64_t t0 = monotonic_ms();
    assert_int_equal(run_program_split(slow, 200, NULL, NULL), -ETIMEDOUT);
    assert_true(monotonic_ms() - t0 < 3000);
}

static bool pid_gone(pid_t pid)
{
    char p[64], st[512];
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
    if (read_file_small(p, st, sizeof(st)) < 0)
        return true;
    const char *close_paren = strrchr(st, ')');
    return close_paren && close_paren[2] == 'Z';
}

/* A child program dies with the process that started it (LESSONS: qemu-img and
 * probes outliving a killed supervisor). */
static void test_run_program_dies_with_caller(void **state)
{
    struct fx *f = *state;
    char pidfile[PATH_MAX], script[PATH_MAX + 64];
    snprintf(pidfile, sizeof(pidfile), "%s/child.pid", f->dir);
    snprintf(script, sizeof(script), "echo $$ > %s; exec sleep 30", pidfile);
    pid_t caller = fork();
    assert_true(caller >= 0);
    if (caller == 0) {
        const char *argv[] = {"sh", "-c", script, NULL};
        run_program(argv, 60000, NULL);
        _exit(0);
    }
    char line[32] = "";
    uint64_t deadline = monotonic_ms() + 5000;
    while (monotonic_ms() < deadline && (read_file_line(pidfile, line, sizeof(line)) < 0 || !line[0]))
        usleep(10000);
    pid_t child = (pid_t)atoi(line);
    assert_true(child > 0);
    assert_false(pid_gone(child));
    kill(caller, SIGKILL);
    waitpid(caller, NULL, 0);
    deadline = monotonic_ms() + 5000;
    while (monotonic_ms() < deadline && !pid_gone(child))
        usleep(10000);
    bool gone = pid_gone(child);
    if (!gone)
        kill(child, SIGKILL);
    assert_true(gone);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strv_and_buf),
        cmocka_unit_test(test_sizes_and_names),
        cmocka_unit_test(test_fnv1a64),
        cmocka_unit_test_setup_teardown(test_read_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_file_small, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_file_atomic, setup, teardown),
        cmocka_unit_test(test_json_errors_name_the_place),
        cmocka_unit_test(test_jr_paths),
        cmocka_unit_test(test_proc_cgroup_path),
        cmocka_unit_test(test_signalfd_for),
        cmocka_unit_test(test_proc_stat_fields),
        cmocka_unit_test(test_buf_take_line),
        cmocka_unit_test(test_run_program),
        cmocka_unit_test_setup_teardown(test_run_program_dies_with_caller, setup, teardown),
    };
    alarm(60);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
