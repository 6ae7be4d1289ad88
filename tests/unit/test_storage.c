/* storage/: format detection, backing chains opened as fds, qemu-img as a child.
 * Every image here is made by the real qemu-img; chains that qemu-img refuses to
 * make (loops, protocol names) are written with `rebase -u`, which only rewrites
 * the header, as a guest that owns an image could. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "storage/storage.h"
#include "tests/unit/files_testlib.h"

#define MIB (1ull << 20)

struct fx {
    char dir[64];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/qv-storage-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    unsetenv("QVISOR_QEMU_IMG");
    rm_tree(f->dir);
    free(f);
    return 0;
}

static const char *at(struct fx *f, const char *name)
{
    static char bufs[4][PATH_MAX];
    static int next;
    char *p = bufs[next++ % 4];
    snprintf(p, PATH_MAX, "%s/%s", f->dir, name);
    return p;
}

/* qemu-img through the code under test, failing the test with its message. */
static void img(const char *a0, ...)
{
    const char *args[24];
    size_t n = 0;
    va_list ap;
    va_start(ap, a0);
    for (const char *a = a0; a && n < 23; a = va_arg(ap, const char *))
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    struct qv_err e = {0};
    int r = storage_qemu_img(args, 30000, NULL, &e);
    if (r < 0)
        fail_msg("qemu-img %s: %s", a0, e.msg);
}

static void raw_file(const char *path, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    close(fd);
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    while ((de = readdir(d)))
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static bool same_file(int fd, const char *path)
{
    struct stat a, b;
    return fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* ---- detection ---- */

static void test_detect_format(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    enum storage_format fmt;
    raw_file(at(f, "disk.raw"), 4 * MIB);
    img("create", "-q", "-f", "qcow2", at(f, "disk.qcow2"), "16M", NULL);
    raw_file(at(f, "empty"), 0);
    assert_int_equal(storage_detect_format(at(f, "disk.raw"), &fmt, &e), 0);
    assert_int_equal(fmt, STORAGE_FORMAT_RAW);
    assert_int_equal(storage_detect_format(at(f, "disk.qcow2"), &fmt, &e), 0);
    assert_int_equal(fmt, STORAGE_FORMAT_QCOW2);
    assert_int_equal(storage_detect_format(at(f, "empty"), &fmt, &e), 0);
    assert_int_equal(fmt, STORAGE_FORMAT_RAW);
    assert_int_equal(symlink(at(f, "disk.qcow2"), at(f, "link")), 0);
    assert_int_equal(storage_detect_format(at(f, "link"), &fmt, &e), 0);
    assert_int_equal(fmt, STORAGE_FORMAT_QCOW2);

    assert_int_equal(storage_detect_format(at(f, "missing"), &fmt, &e), -ENOENT);
    assert_non_null(strstr(e.msg, at(f, "missing")));
    assert_int_equal(storage_detect_format(f->dir, &fmt, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "a directory"));
    assert_int_equal(storage_detect_format("/dev/null", &fmt, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "character device"));

    /* a socket file */
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", at(f, "sock"));
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(storage_detect_format(at(f, "sock"), &fmt, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "socket"));
    close(s);
}

/* A FIFO with no writer would block a plain open() forever. */
static void test_detect_fifo_refused_without_blocking(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    enum storage_format fmt;
    assert_int_equal(mkfifo(at(f, "fifo"), 0600), 0);
    uint64_t t0 = monotonic_ms();
    assert_int_equal(storage_detect_format(at(f, "fifo"), &fmt, &e), -EINVAL);
    assert_true(monotonic_ms() - t0 < 1000);
    assert_non_null(strstr(e.msg, "FIFO"));
    assert_non_null(strstr(e.msg, at(f, "fifo")));
}

static void test_format_names(void **state)
{
    (void)state;
    enum storage_format fmt;
    assert_string_equal(storage_format_name(STORAGE_FORMAT_QCOW2), "qcow2");
    assert_null(storage_format_name(STORAGE_FORMAT_PROBE));
    assert_int_equal(storage_format_parse("raw", &fmt), 0);
    assert_int_equal(fmt, STORAGE_FORMAT_RAW);
    assert_int_equal(storage_format_parse("vmdk", &fmt), -ENOTSUP);
}

/* ---- chains ---- */

static void test_chain_of_three(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    raw_file(at(f, "base.raw"), 32 * MIB);
    img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", at(f, "base.raw"), at(f, "mid.qcow2"), NULL);
    /* compat=0.10: a version 2 header, whose extensions start at byte 72 */
    img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-F", "qcow2", "-b", at(f, "mid.qcow2"),
        at(f, "top.qcow2"), "64M", NULL);
    int before = count_fds();
    struct storage_chain c;
    assert_int_equal(storage_chain_open(at(f, "top.qcow2"), STORAGE_FORMAT_PROBE, O_RDWR, &c, &e), 0);
    assert_int_equal(c.n, 3);
    assert_int_equal(count_fds(), before + 3);
    const char *names[] = {"top.qcow2", "mid.qcow2", "base.raw"};
    const enum storage_format fmts[] = {STORAGE_FORMAT_QCOW2, STORAGE_FORMAT_QCOW2, STORAGE_FORMAT_RAW};
    const uint64_t sizes[] = {64 * MIB, 32 * MIB, 32 * MIB};
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(c.layers[i].path, at(f, names[i]));
        assert_int_equal(c.layers[i].format, fmts[i]);
        assert_int_equal(c.layers[i].virtual_size, sizes[i]);
        assert_true(same_file(c.layers[i].fd, at(f, names[i])));
        int fl = fcntl(c.layers[i].fd, F_GETFL);
        assert_int_equal(fl & O_ACCMODE, i == 0 ? O_RDWR : O_RDONLY);
        assert_false(fl & O_NONBLOCK);
        assert_true(fcntl(c.layers[i].fd, F_GETFD) & FD_CLOEXEC);
    }
    storage_chain_close(&c);
    assert_int_equal(count_fds(), before);

    /* the format given for the top is believed, not probed */
    assert_int_equal(storage_chain_open(at(f, "top.qcow2"), STORAGE_FORMAT_RAW, O_RDONLY, &c, &e), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.layers[0].format, STORAGE_FORMAT_RAW);
    storage_chain_close(&c);

    /* what qemu-img says about the same chain */
    struct storage_image_info info;
    assert_int_equal(storage_image_info(at(f, "top.qcow2"), STORAGE_FORMAT_QCOW2, 30000, &info, &e), 0);
    assert_int_equal(info.format, STORAGE_FORMAT_QCOW2);
    assert_int_equal(info.virtual_size, 64 * MIB);
    assert_int_equal(info.cluster_size, 65536);
    assert_string_equal(info.backing, at(f, "mid.qcow2"));
    assert_string_equal(info.backing_format, "qcow2");
    assert_int_equal(storage_image_info(at(f, "base.raw"), STORAGE_FORMAT_PROBE, 30000, &info, &e), 0);
    assert_int_equal(info.format, STORAGE_FORMAT_RAW);
    assert_string_equal(info.backing, "");
}

/* QEMU joins a relative backing name to the directory of the image naming it. */
static void test_chain_relative_backing(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    assert_int_equal(mkdir(at(f, "sub"), 0755), 0);
    img("create", "-q", "-f", "qcow2", at(f, "base.qcow2"), "8M", NULL);
    /* -u: written as given, "../base.qcow2", relative to sub/ */
    img("create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", "../base.qcow2", at(f, "sub/top.qcow2"), "8M",
        NULL);
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir("/"), 0);      /* the caller's directory plays no part */
    struct storage_chain c;
    int r = storage_chain_open(at(f, "sub/top.qcow2"), STORAGE_FORMAT_QCOW2, O_RDONLY, &c, &e);
    if (r == 0) {
        assert_int_equal(c.n, 2);
        assert_string_equal(c.layers[1].path, at(f, "sub/../base.qcow2"));
        assert_true(same_file(c.layers[1].fd, at(f, "base.qcow2")));
        storage_chain_close(&c);
    }
    /* and a relative top: its layers stay relative to where the top is */
    assert_int_equal(chdir(f->dir), 0);
    int r2 = storage_chain_open("sub/top.qcow2", STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e);
    if (r2 == 0) {
        assert_int_equal(c.n, 2);
        assert_string_equal(c.layers[1].path, "sub/../base.qcow2");
        storage_chain_close(&c);
    }
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(r, 0);
    assert_int_equal(r2, 0);
}

static void test_chain_loop_refused(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    img("create", "-q", "-f", "qcow2", at(f, "a.qcow2"), "8M", NULL);
    img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", at(f, "a.qcow2"), at(f, "b.qcow2"), NULL);
    img("rebase", "-q", "-u", "-F", "qcow2", "-b", at(f, "b.qcow2"), at(f, "a.qcow2"), NULL);
    int before = count_fds();
    struct storage_chain c;
    assert_int_equal(storage_chain_open(at(f, "b.qcow2"), STORAGE_FORMAT_PROBE, O_RDWR, &c, &e), -ELOOP);
    assert_non_null(strstr(e.msg, "loops"));
    assert_null(c.layers);
    assert_int_equal(count_fds(), before);
    /* an image that is its own backing file, reached through another name */
    img("create", "-q", "-f", "qcow2", at(f, "self.qcow2"), "8M", NULL);
    assert_int_equal(symlink("self.qcow2", at(f, "alias.qcow2")), 0);
    img("rebase", "-q", "-u", "-F", "qcow2", "-b", "alias.qcow2", at(f, "self.qcow2"), NULL);
    assert_int_equal(storage_chain_open(at(f, "self.qcow2"), STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e), -ELOOP);
    assert_int_equal(count_fds(), before);
}

static void test_chain_too_deep(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    char name[32], prev[32];
    img("create", "-q", "-f", "qcow2", at(f, "l0.qcow2"), "1M", NULL);
    for (int i = 1; i <= STORAGE_CHAIN_MAX; i++) {
        snprintf(prev, sizeof(prev), "l%d.qcow2", i - 1);
        snprintf(name, sizeof(name), "l%d.qcow2", i);
        img("create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b", prev, at(f, name), "1M", NULL);
    }
    /* exactly STORAGE_CHAIN_MAX layers are fine, one more is not */
    struct storage_chain c;
    snprintf(name, sizeof(name), "l%d.qcow2", STORAGE_CHAIN_MAX - 1);
    assert_int_equal(storage_chain_open(at(f, name), STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e), 0);
    assert_int_equal(c.n, STORAGE_CHAIN_MAX);
    storage_chain_close(&c);
    int before = count_fds();
    snprintf(name, sizeof(name), "l%d.qcow2", STORAGE_CHAIN_MAX);
    assert_int_equal(storage_chain_open(at(f, name), STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e), -ELOOP);
    assert_non_null(strstr(e.msg, "deeper than 32"));
    assert_int_equal(count_fds(), before);
}

static void test_chain_missing_layer(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    raw_file(at(f, "base.raw"), 8 * MIB);
    img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", at(f, "base.raw"), at(f, "mid.qcow2"), NULL);
    img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", at(f, "mid.qcow2"), at(f, "top.qcow2"), NULL);
    assert_int_equal(unlink(at(f, "base.raw")), 0);
    int before = count_fds();
    struct storage_chain c;
    assert_int_equal(storage_chain_open(at(f, "top.qcow2"), STORAGE_FORMAT_PROBE, O_RDWR, &c, &e), -ENOENT);
    /* both the image that names it and the missing name */
    assert_non_null(strstr(e.msg, at(f, "mid.qcow2")));
    assert_non_null(strstr(e.msg, at(f, "base.raw")));
    assert_int_equal(count_fds(), before);
    assert_int_equal(storage_chain_open(at(f, "nothing.qcow2"), STORAGE_FORMAT_PROBE, O_RDWR, &c, &e), -ENOENT);
    assert_non_null(strstr(e.msg, at(f, "nothing.qcow2")));
}

/* A backing name that points at a FIFO must not hang the supervisor. */
static void test_chain_fifo_layer_refused(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    assert_int_equal(mkfifo(at(f, "fifo"), 0600), 0);
    img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b", at(f, "fifo"), at(f, "top.qcow2"), "8M", NULL);
    struct storage_chain c;
    uint64_t t0 = monotonic_ms();
    assert_int_equal(storage_chain_open(at(f, "top.qcow2"), STORAGE_FORMAT_PROBE, O_RDWR, &c, &e), -EINVAL);
    assert_true(monotonic_ms() - t0 < 1000);
    assert_non_null(strstr(e.msg, "FIFO"));
    assert_non_null(strstr(e.msg, at(f, "top.qcow2")));
}

static void test_chain_refuses_what_qemu_would_open_elsewhere(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct storage_chain c;
    /* a protocol name: QEMU would connect somewhere; nothing here connects */
    img("create", "-q", "-f", "qcow2", at(f, "p.qcow2"), "8M", NULL);
    img("rebase", "-q", "-u", "-F", "raw", "-b", "nbd:127.0.0.1:1", at(f, "p.qcow2"), NULL);
    assert_int_equal(storage_chain_open(at(f, "p.qcow2"), STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e), -ENOTSUP);
    assert_non_null(strstr(e.msg, "protocol"));
    img("rebase", "-q", "-u", "-F", "raw", "-b", "json:{\"driver\":\"raw\"}", at(f, "p.qcow2"), NULL);
    assert_int_equal(storage_chain_open(at(f, "p.qcow2"), STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e), -ENOTSUP);
    /* a backing format qvisor does not pass */
    raw_file(at(f, "b.raw"), MIB);
    img("rebase", "-q", "-u", "-F", "vmdk", "-b", at(f, "b.raw"), at(f, "p.qcow2"), NULL);
    assert_int_equal(storage_chain_open(at(f, "p.qcow2"), STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e), -ENOTSUP);
    assert_non_null(strstr(e.msg, "vmdk"));
    /* an external data file is one more file QEMU would open by name */
    char opt[PATH_MAX + 16];
    snprintf(opt, sizeof(opt), "data_file=%s", at(f, "data.raw"));
    img("create", "-q", "-f", "qcow2", "-o", opt, at(f, "d.qcow2"), "8M", NULL);
    assert_int_equal(storage_chain_open(at(f, "d.qcow2"), STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e), -ENOTSUP);
    assert_non_null(strstr(e.msg, "external data file"));
}

/* Headers written by hand: nothing crashes, each says what is wrong. */
static void test_qcow2_header_corrupt(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct storage_qcow2_info q;
    unsigned char h[512] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
    int fd = open(at(f, "bad.qcow2"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    assert_int_equal(storage_qcow2_read(fd, "bad", &q, &e), -EINVAL);   /* cluster_bits 0 */
    assert_non_null(strstr(e.msg, "cluster_bits"));
    h[23] = 16;                                                         /* 64 KiB clusters */
    h[103] = 104;                                                       /* header_length */
    h[15] = 0xf0;                                                       /* backing offset 240 */
    h[16] = 0xff;                                                       /* backing size huge */
    assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    assert_int_equal(storage_qcow2_read(fd, "bad", &q, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "backing file name"));
    h[16] = 0;
    h[19] = 8;                                                          /* 8 bytes, past the end */
    assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    assert_int_equal(ftruncate(fd, 244), 0);
    assert_int_equal(storage_qcow2_read(fd, "bad", &q, &e), -EINVAL);
    /* an extension whose length runs past the first cluster */
    memset(h + 15, 0, 5);
    h[104] = 0xe2, h[105] = 0x79, h[106] = 0x2a, h[107] = 0xca, h[108] = 0x7f;
    assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    assert_int_equal(storage_qcow2_read(fd, "bad", &q, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "extension"));
    h[7] = 9;                                                           /* version 9 */
    assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
    assert_int_equal(storage_qcow2_read(fd, "bad", &q, &e), -ENOTSUP);
    close(fd);
}

/* ---- qemu-img ---- */

static void test_qemu_img_errors(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct storage_image_info info;
    /* qemu-img's own explanation reaches the caller */
    assert_int_equal(storage_image_info(at(f, "missing.qcow2"), STORAGE_FORMAT_QCOW2, 30000, &info, &e), -EIO);
    assert_non_null(strstr(e.msg, at(f, "missing.qcow2")));
    assert_non_null(strstr(e.msg, "No such file"));
    /* a path with a colon is a file, never a protocol */
    raw_file(at(f, "nbd:x"), MIB);
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f->dir), 0);
    int r = storage_image_info("nbd:x", STORAGE_FORMAT_RAW, 30000, &info, &e);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(r, 0);
    assert_int_equal(info.virtual_size, MIB);

    /* a qemu-img that hangs is killed at the deadline */
    const char *script = at(f, "slow-qemu-img");
    int fd = open(script, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
    assert_true(fd >= 0);
    assert_int_equal(write_all(fd, "#!/bin/sh\nexec sleep 30\n", 24), 0);
    close(fd);
    setenv("QVISOR_QEMU_IMG", script, 1);
    uint64_t t0 = monotonic_ms();
    assert_int_equal(storage_image_info(at(f, "nbd:x"), STORAGE_FORMAT_RAW, 300, &info, &e), -ETIMEDOUT);
    assert_true(monotonic_ms() - t0 < 5000);
    assert_non_null(strstr(e.msg, "300 ms"));
    setenv("QVISOR_QEMU_IMG", at(f, "no-such-qemu-img"), 1);
    assert_int_equal(storage_image_info(at(f, "nbd:x"), STORAGE_FORMAT_RAW, 300, &info, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "qemu-utils"));
    unsetenv("QVISOR_QEMU_IMG");
}

static void test_image_info_parse(void **state)
{
    (void)state;
    struct qv_err e = {0};
    struct storage_image_info info;
    assert_int_equal(storage_image_info_parse("{\"virtual-size\": 1048576, \"filename\": \"/x\", \"format\": \"qcow2\","
                                              " \"actual-size\": 200704, \"cluster-size\": 65536,"
                                              " \"backing-filename\": \"b.raw\", \"backing-filename-format\": \"raw\","
                                              " \"dirty-flag\": true}", &info, &e), 0);
    assert_int_equal(info.virtual_size, 1048576);
    assert_int_equal(info.actual_size, 200704);
    assert_true(info.dirty);
    assert_string_equal(info.backing, "b.raw");
    assert_string_equal(info.backing_format, "raw");
    assert_int_equal(storage_image_info_parse("not json", &info, &e), -EINVAL);
    assert_int_equal(storage_image_info_parse("[]", &info, &e), -EINVAL);
    assert_int_equal(storage_image_info_parse("{\"virtual-size\": 1}", &info, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "format"));
    assert_int_equal(storage_image_info_parse("{\"format\": \"vmdk\", \"virtual-size\": 1}", &info, &e), -ENOTSUP);
    assert_int_equal(storage_image_info_parse("{\"format\": \"raw\", \"virtual-size\": -1}", &info, &e), -EINVAL);
    assert_int_equal(storage_image_info_parse("{\"format\": \"raw\", \"virtual-size\": \"1\"}", &info, &e), -EINVAL);
    assert_int_equal(storage_image_info_parse("{\"format\": \"raw\"}", &info, &e), -EINVAL);
}

/* ---- snapshot records and qemu-img snapshot/overlay/commit ---- */
static void test_snapshot_records(void **state)
{
    struct fx *f = *state;
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/snaps", f->dir);
    struct qv_err e = {0};
    struct storage_snapshot s = {.created_ms = 1234, .external = true};
    snprintf(s.name, sizeof(s.name), "s1");
    snprintf(s.state, sizeof(s.state), "running");
    s.description = strdup("a, b");
    s.ndisks = 1;
    s.disks = calloc(1, sizeof(*s.disks));
    snprintf(s.disks[0].disk, sizeof(s.disks[0].disk), "disk0");
    snprintf(s.disks[0].file, sizeof(s.disks[0].file), "/x/a.raw");
    snprintf(s.disks[0].overlay, sizeof(s.disks[0].overlay), "/x/vm.s1.qcow2");
    s.disks[0].format = STORAGE_FORMAT_RAW;
    assert_int_equal(storage_snapshot_save(dir, &s, &e), 0);
    assert_int_equal(storage_snapshot_set_current(dir, "s1", &e), 0);
    struct storage_snapshot back;
    assert_int_equal(storage_snapshot_load(dir, "s1", &back, &e), 0);
    assert_string_equal(back.name, "s1");
    assert_string_equal(back.parent, "");
    assert_true(back.external);
    assert_false(back.memory);
    assert_int_equal(back.created_ms, 1234);
    assert_string_equal(back.description, "a, b");
    assert_int_equal(back.ndisks, 1);
    assert_string_equal(back.disks[0].overlay, "/x/vm.s1.qcow2");
    assert_int_equal(back.disks[0].format, STORAGE_FORMAT_RAW);
    storage_snapshot_free(&back);
    char cur[65];
    storage_snapshot_current(dir, cur, sizeof(cur));
    assert_string_equal(cur, "s1");
    assert_int_equal(storage_snapshot_load(dir, "nosuch", &back, &e), -ENOENT);
    assert_int_equal(storage_snapshot_load(dir, "../etc", &back, &e), -EINVAL);
    /* a record edited by hand: its path in the error */
    char path[256];
    snprintf(path, sizeof(path), "%s/bad.json", dir);
    struct qv_err we = {0};
    const char *bad = "{\"name\": \"bad\", \"state\": \"running\", \"kind\": \"sideways\", \"disks\": []}";
    assert_int_equal(write_file_atomic(path, bad, strlen(bad), 0600, &we), 0);
    assert_int_equal(storage_snapshot_load(dir, "bad", &back, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "kind"));
    struct strv names = {0};
    assert_int_equal(storage_snapshot_names(dir, &names, &e), 0);
    assert_int_equal(names.n, 2);   /* bad, s1: "current" is no record */
    strv_free(&names);
    assert_int_equal(storage_snapshot_remove(dir, "s1", &e), 0);
    assert_int_equal(storage_snapshot_set_current(dir, NULL, &e), 0);
    storage_snapshot_current(dir, cur, sizeof(cur));
    assert_string_equal(cur, "");
    storage_snapshot_free(&s);
}

static void test_img_snapshots(void **state)
{
    struct fx *f = *state;
    char base[128], ovl[128];
    snprintf(base, sizeof(base), "%s/b,ase.qcow2", f->dir);   /* a comma: doubled in the image options */
    snprintf(ovl, sizeof(ovl), "%s/ovl.qcow2", f->dir);
    img("create", "-q", "-f", "qcow2", base, "1M", NULL);
    struct qv_err e = {0};
    bool found = true;
    assert_int_equal(storage_img_snapshot_exists(base, "s1", &found, &e), 0);
    assert_false(found);
    assert_int_equal(storage_img_snapshot(base, 'c', "s1", &e), 0);
    assert_int_equal(storage_img_snapshot_exists(base, "s1", &found, &e), 0);
    assert_true(found);
    assert_int_equal(storage_img_snapshot(base, 'a', "nosuch", &e), -EIO);
    assert_non_null(strstr(e.msg, base));
    assert_int_equal(storage_img_snapshot(base, 'd', "s1", &e), 0);
    assert_int_equal(storage_img_snapshot_exists(base, "s1", &found, &e), 0);
    assert_false(found);
    assert_int_equal(storage_img_overlay(ovl, base, STORAGE_FORMAT_QCOW2, 0, &e), 0);
    struct storage_image_info ii;
    assert_int_equal(storage_image_info(ovl, STORAGE_FORMAT_QCOW2, 10000, &ii, &e), 0);
    assert_string_equal(ii.backing, base);
    assert_string_equal(ii.backing_format, "qcow2");
    assert_int_equal(ii.virtual_size, MIB);
    assert_int_equal(storage_img_overlay(ovl, "relative.qcow2", STORAGE_FORMAT_QCOW2, 0, &e), -EINVAL);
    assert_int_equal(storage_img_commit(ovl, &e), 0);
}

int main(void)
{
    char exe[PATH_MAX];
    if (find_program("qemu-img", exe, sizeof(exe)) < 0) {
        printf("1..0 # SKIP qemu-img is not installed (qemu-utils)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_detect_format, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detect_fifo_refused_without_blocking, setup, teardown),
        cmocka_unit_test(test_format_names),
        cmocka_unit_test_setup_teardown(test_chain_of_three, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_relative_backing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_loop_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_too_deep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_missing_layer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_fifo_layer_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_refuses_what_qemu_would_open_elsewhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qcow2_header_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qemu_img_errors, setup, teardown),
        cmocka_unit_test(test_image_info_parse),
        cmocka_unit_test_setup_teardown(test_snapshot_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_img_snapshots, setup, teardown),
    };
    alarm(100);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
