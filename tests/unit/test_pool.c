/* Storage pools: what pool_def_from_json accepts and refuses, pool_define/load against
 * a root of its own (the default pool made on first use, one directory per pool), volume
 * references, and the dir backend on a real directory with the real qemu-img: only
 * regular files are volumes, symlinks are not followed out, copies are written under a
 * temporary name and leave nothing when cancelled. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/model/model.h"
#include "launcher/model/storedef.h"
#include "tests/unit/files_testlib.h"

#define MIB (1ull << 20)

static const struct storage_img *img_at(void *f, const char *path, enum storage_format fmt)
{
    (void)f;
    static struct storage_img img;
    storage_img_file(&img, path, fmt);
    return &img;
}

static json_object *parse(const char *text)
{
    json_object *o = NULL;
    struct qv_err e = {0};
    if (json_parse_str("test", text, &o, &e) < 0)
        fail_msg("%s: %s", text, e.msg);
    return o;
}

static int from_json(const char *text, struct qv_err *e)
{
    json_object *o = parse(text);
    struct pool_def d;
    memset(e, 0, sizeof(*e));
    int r = pool_def_from_json(o, &d, e);
    if (r == 0)
        pool_def_free(&d);
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

static void test_definition(void **state)
{
    (void)state;
    struct qv_err e;
    assert_int_equal(from_json("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/srv/images\"}", &e), 0);
    expect_refused("{\"name\": \"p\", \"path\": \"/srv\"}", "type: missing");
    expect_refused("{\"name\": \"p\", \"type\": \"lvm\", \"path\": \"/srv\"}", "type: \"lvm\" is not one of dir");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\"}", "path");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"srv\"}", "path: \"srv\" is not an absolute");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/srv/../etc\"}", "path: \"/srv/../etc\"");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/srv/./x\"}", "path");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/srv//x\"}", "path");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/srv/\"}", "path");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/\"}", "path");
    expect_refused("{\"name\": \"../p\", \"type\": \"dir\", \"path\": \"/srv\"}", "name: \"../p\" is not a valid name");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/srv\", \"size\": 1}", "size");
    expect_refused("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/srv\\u0000x\"}", "path");
    /* to_json of from_json is the same document */
    json_object *o = parse("{\"name\": \"p\", \"type\": \"dir\", \"path\": \"/srv/images\"}");
    struct pool_def d;
    assert_int_equal(pool_def_from_json(o, &d, &e), 0);
    json_object *back = pool_def_to_json(&d);
    assert_true(json_object_equal(o, back));
    json_object_put(back);
    json_object_put(o);
    pool_def_free(&d);
}

static void test_vol_ref(void **state)
{
    (void)state;
    struct vol_ref v;
    struct qv_err e = {0};
    assert_int_equal(vol_ref_parse("default/web1.qcow2", &v, &e), 0);
    assert_string_equal(v.pool, "default");
    assert_string_equal(v.name, "web1.qcow2");
    static const char *const bad[] = {"web1", "/web1", "default/", "default/a/b", "default/..", "default/.x",
                                      "../default/x", "default/-x", "p q/x", ""};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        if (vol_ref_parse(bad[i], &v, &e) != -EINVAL)
            fail_msg("\"%s\" was taken for a volume reference", bad[i]);
}

/* ---- against a root and a pool directory of their own ---- */
struct fx {
    char dir[64];
    struct qv_paths paths;
    char pool[PATH_MAX];
    struct storage_pool sp;
    const struct storage_backend *b;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/qv-pool-XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    struct qv_err e = {0};
    qv_paths_init(&f->paths, f->dir, &e);
    snprintf(f->pool, sizeof(f->pool), "%s/pool", f->dir);
    mkdir(f->pool, 0755);
    f->sp = (struct storage_pool){.name = "p", .type = "dir", .path = f->pool};
    f->b = storage_backend_find("dir");
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

static const char *at(struct fx *f, const char *name)
{
    static char bufs[4][PATH_MAX];
    static int next;
    char *p = bufs[next++ % 4];
    snprintf(p, PATH_MAX, "%s/%s", f->pool, name);
    return p;
}

static size_t entries(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    if (d)
        closedir(d);
    return n;
}

static void test_define_and_default(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct pool_def d;
    /* the default pool exists on first use, under the root */
    assert_int_equal(pool_load(&f->paths, "default", &d, &e), 0);
    char want[PATH_MAX];
    snprintf(want, sizeof(want), "%s/var/lib/qvisor/images", f->dir);
    assert_string_equal(d.path, want);
    struct stat st;
    assert_int_equal(stat(want, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    pool_def_free(&d);
    /* a second pool on the same directory is refused, and changes nothing */
    char text[PATH_MAX + 64];
    snprintf(text, sizeof(text), "{\"name\": \"again\", \"type\": \"dir\", \"path\": \"%s\"}", want);
    json_object *o = parse(text);
    assert_int_equal(pool_define(&f->paths, o, false, NULL, &e), -EEXIST);
    assert_non_null(strstr(e.msg, "already pool default's directory"));
    json_object_put(o);
    assert_int_equal(pool_load(&f->paths, "again", &d, &e), -ENOENT);
    /* a pool whose directory is a file is refused */
    snprintf(text, sizeof(text), "{\"name\": \"f\", \"type\": \"dir\", \"path\": \"%s/file\"}", f->dir);
    close(open(at(f, "../file"), O_CREAT | O_WRONLY, 0644));
    o = parse(text);
    assert_int_equal(pool_define(&f->paths, o, false, NULL, &e), -ENOTDIR);
    json_object_put(o);
    /* a new one makes its directory */
    snprintf(text, sizeof(text), "{\"name\": \"n\", \"type\": \"dir\", \"path\": \"%s/new/dir\"}", f->dir);
    o = parse(text);
    assert_int_equal(pool_define(&f->paths, o, false, NULL, &e), 0);
    json_object_put(o);
    snprintf(want, sizeof(want), "%s/new/dir", f->dir);
    assert_int_equal(stat(want, &st), 0);
    struct strv names = {0};
    assert_int_equal(pool_list_names(&f->paths, &names, &e), 0);
    assert_int_equal(names.n, 2);
    assert_string_equal(names.v[0], "default");
    assert_string_equal(names.v[1], "n");
    strv_free(&names);
    assert_int_equal(pool_undefine(&f->paths, "n", &e), 0);
    assert_int_equal(pool_undefine(&f->paths, "n", &e), -ENOENT);
    assert_int_equal(stat(want, &st), 0);   /* the directory stays */
}

static void test_dir_only_regular_files(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    close(open(at(f, "a.raw"), O_CREAT | O_WRONLY, 0644));
    close(open(at(f, ".hidden"), O_CREAT | O_WRONLY, 0644));
    close(open(at(f, ".b.part-2147483646"), O_CREAT | O_WRONLY, 0644));
    mkdir(at(f, "sub"), 0755);
    mkfifo(at(f, "fifo"), 0644);
    char outside[PATH_MAX];
    snprintf(outside, sizeof(outside), "%s/outside.raw", f->dir);
    close(open(outside, O_CREAT | O_WRONLY, 0644));
    assert_int_equal(symlink(outside, at(f, "link.raw")), 0);
    struct strv names = {0};
    assert_int_equal(f->b->list(&f->sp, &names, &e), 0);
    assert_int_equal(names.n, 1);
    assert_string_equal(names.v[0], "a.raw");
    strv_free(&names);
    struct storage_vol_info vi;
    assert_int_equal(f->b->vol_info(&f->sp, "link.raw", &vi, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "symbolic link"));
    assert_int_equal(f->b->vol_info(&f->sp, "fifo", &vi, &e), -EINVAL);
    assert_int_equal(f->b->vol_info(&f->sp, "sub", &vi, &e), -EINVAL);
    assert_int_equal(f->b->vol_info(&f->sp, "../outside.raw", &vi, &e), -EINVAL);
    assert_int_equal(f->b->vol_info(&f->sp, "missing", &vi, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "pool p has no volume missing"));
    assert_int_equal(f->b->vol_delete(&f->sp, "link.raw", 0, &e), -EINVAL);
    assert_int_equal(access(outside, F_OK), 0);
    assert_int_equal(access(at(f, "link.raw"), F_OK), 0);
    /* refresh drops a dead copy's leftover, and nothing else */
    assert_int_equal(f->b->refresh(&f->sp, &e), 0);
    assert_int_equal(access(at(f, ".b.part-2147483646"), F_OK), -1);
    assert_int_equal(access(at(f, ".hidden"), F_OK), 0);
}

static void test_dir_volumes(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct storage_vol_spec s = {.size = 8 * MIB, .format = STORAGE_FORMAT_QCOW2};
    if (f->b->vol_create(&f->sp, "base", &s, &e) < 0)
        fail_msg("%s", e.msg);
    struct storage_vol_info vi;
    assert_int_equal(f->b->vol_info(&f->sp, "base", &vi, &e), 0);
    assert_int_equal(vi.format, STORAGE_FORMAT_QCOW2);
    assert_int_equal(vi.capacity, 8 * MIB);
    assert_string_equal(vi.backing, "");
    assert_int_equal(f->b->vol_create(&f->sp, "base", &s, &e), -EEXIST);
    /* an overlay takes its backing file's size */
    struct storage_vol_spec o = {.format = STORAGE_FORMAT_QCOW2, .backing = vi.path, .backing_format = STORAGE_FORMAT_QCOW2};
    if (f->b->vol_create(&f->sp, "top", &o, &e) < 0)
        fail_msg("%s", e.msg);
    struct storage_vol_info ti;
    assert_int_equal(f->b->vol_info(&f->sp, "top", &ti, &e), 0);
    assert_int_equal(ti.capacity, 8 * MIB);
    assert_string_equal(ti.backing, vi.path);
    /* raw, full preallocation: all of it allocated */
    struct storage_vol_spec r = {.size = 4 * MIB, .format = STORAGE_FORMAT_RAW, .prealloc = STORAGE_PREALLOC_FULL};
    assert_int_equal(f->b->vol_create(&f->sp, "full.raw", &r, &e), 0);
    assert_int_equal(f->b->vol_info(&f->sp, "full.raw", &vi, &e), 0);
    assert_int_equal(vi.format, STORAGE_FORMAT_RAW);
    assert_true(vi.allocation >= 4 * MIB);
    r.prealloc = STORAGE_PREALLOC_METADATA;
    assert_int_equal(f->b->vol_create(&f->sp, "meta.raw", &r, &e), -EINVAL);
    assert_int_equal(access(at(f, "meta.raw"), F_OK), -1);
    /* resize both ways */
    assert_int_equal(f->b->vol_resize(&f->sp, "base", 16 * MIB, false, &e), 0);
    assert_int_equal(f->b->vol_info(&f->sp, "base", &vi, &e), 0);
    assert_int_equal(vi.capacity, 16 * MIB);
    assert_int_equal(f->b->vol_resize(&f->sp, "full.raw", 2 * MIB, true, &e), 0);
    assert_int_equal(f->b->vol_info(&f->sp, "full.raw", &vi, &e), 0);
    assert_int_equal(vi.capacity, 2 * MIB);
    /* opened for QEMU: the whole chain */
    struct storage_chain c;
    assert_int_equal(f->b->vol_open(&f->sp, "top", O_RDWR, &c, &e), 0);
    assert_int_equal(c.n, 2);
    storage_chain_close(&c);
    /* a full copy holds no backing file */
    assert_int_equal(f->b->vol_copy_in(&f->sp, "flat", img_at(f, at(f, "top"), STORAGE_FORMAT_QCOW2), STORAGE_FORMAT_RAW, NULL, &e), 0);
    assert_int_equal(f->b->vol_info(&f->sp, "flat", &vi, &e), 0);
    assert_int_equal(vi.format, STORAGE_FORMAT_RAW);
    assert_string_equal(vi.backing, "");
    assert_int_equal(f->b->vol_delete(&f->sp, "flat", 0, &e), 0);
    assert_int_equal(f->b->vol_delete(&f->sp, "flat", 0, &e), -ENOENT);
    /* nothing but the volumes in the pool: no temporary file stayed */
    assert_int_equal(entries(f->pool), 3);
}

static void test_dir_copy_cancelled(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct storage_vol_spec s = {.size = 8 * MIB, .format = STORAGE_FORMAT_QCOW2};
    assert_int_equal(f->b->vol_create(&f->sp, "src", &s, &e), 0);
    volatile int cancel = 1;
    struct storage_progress prog = {.cancel = &cancel};
    assert_int_equal(f->b->vol_copy_in(&f->sp, "dst", img_at(f, at(f, "src"), STORAGE_FORMAT_QCOW2), STORAGE_FORMAT_QCOW2, &prog, &e),
                     -ECANCELED);
    assert_int_equal(entries(f->pool), 1);
    /* a failing copy (a source that is not there) leaves nothing either */
    assert_int_equal(f->b->vol_copy_in(&f->sp, "dst", img_at(f, at(f, "nothing"), STORAGE_FORMAT_RAW), STORAGE_FORMAT_RAW, NULL, &e),
                     -EIO);
    assert_int_equal(entries(f->pool), 1);
}

/* A VM's volume disk resolved at start: its file, its format, and every layer below. */
static void test_resolve_disks(void **state)
{
    struct fx *f = *state;
    struct qv_err e = {0};
    struct pool_def pd;
    assert_int_equal(pool_load(&f->paths, "default", &pd, &e), 0);
    struct storage_pool sp = pool_storage(&pd);
    struct storage_vol_spec base = {.size = 4 * MIB, .format = STORAGE_FORMAT_RAW};
    assert_int_equal(f->b->vol_create(&sp, "base", &base, &e), 0);
    char bpath[PATH_MAX];
    snprintf(bpath, sizeof(bpath), "%s/base", pd.path);
    struct storage_vol_spec mid = {.format = STORAGE_FORMAT_QCOW2, .backing = bpath, .backing_format = STORAGE_FORMAT_RAW};
    assert_int_equal(f->b->vol_create(&sp, "mid", &mid, &e), 0);
    char mpath[PATH_MAX];
    snprintf(mpath, sizeof(mpath), "%s/mid", pd.path);
    struct storage_vol_spec top = {.format = STORAGE_FORMAT_QCOW2, .backing = mpath, .backing_format = STORAGE_FORMAT_QCOW2};
    assert_int_equal(f->b->vol_create(&sp, "top", &top, &e), 0);
    json_object *o = parse("{\"name\": \"v\", \"memory\": \"128M\", \"disks\": [{\"volume\": \"default/top\"}, "
                           "{\"volume\": \"default/base\"}]}");
    struct vm_def d;
    if (vm_def_from_json(o, &d, &e) < 0)
        fail_msg("%s", e.msg);
    assert_int_equal(d.disks[0].format, FORMAT_PROBE);
    assert_null(d.disks[0].file);
    if (vm_resolve_disks(&f->paths, &d, &e) < 0)
        fail_msg("%s", e.msg);
    assert_int_equal(d.disks[0].format, FORMAT_QCOW2);
    assert_non_null(strstr(d.disks[0].file, "/top"));
    assert_int_equal(d.disks[0].nbacking, 2);
    assert_string_equal(d.disks[0].backing[0].path, mpath);
    assert_int_equal(d.disks[0].backing[0].format, FORMAT_QCOW2);
    assert_string_equal(d.disks[0].backing[1].path, bpath);
    assert_int_equal(d.disks[0].backing[1].format, FORMAT_RAW);
    assert_int_equal(d.disks[1].format, FORMAT_RAW);
    assert_int_equal(d.disks[1].nbacking, 0);
    /* resolving again gives the same, not twice as many layers */
    assert_int_equal(vm_resolve_disks(&f->paths, &d, &e), 0);
    assert_int_equal(d.disks[0].nbacking, 2);
    /* the definition keeps naming the volume */
    json_object *back = vm_def_to_json(&d);
    json_object *disks = json_object_object_get(back, "disks"), *k0 = json_object_array_get_idx(disks, 0);
    assert_string_equal(json_object_get_string(json_object_object_get(k0, "volume")), "default/top");
    assert_null(json_object_object_get(k0, "file"));
    json_object_put(back);
    /* a missing layer and a missing volume: errors naming VM, disk, volume or layer */
    unlink(bpath);
    assert_int_equal(vm_resolve_disks(&f->paths, &d, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "v: disks[0]: "));
    assert_non_null(strstr(e.msg, "/mid: backing file: "));
    assert_int_equal(f->b->vol_delete(&sp, "top", 0, &e), 0);
    assert_int_equal(vm_resolve_disks(&f->paths, &d, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "v: disks[0]: volume default/top: pool default has no volume top"));
    vm_def_free(&d);
    json_object_put(o);
    pool_def_free(&pd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_definition),
        cmocka_unit_test(test_vol_ref),
        cmocka_unit_test_setup_teardown(test_define_and_default, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dir_only_regular_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dir_volumes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dir_copy_cancelled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resolve_disks, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
