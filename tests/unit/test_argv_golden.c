/* Golden tests of VM definitions and the QEMU command line.
 *
 * tests/golden/NAME.json is a definition; NAME.argv the command line it must produce
 * (with the pinned host facts below), or NAME.error the one-line error it
 * must be rejected with. Every valid definition is also started by the real
 * qemu-system-x86_64 by test_argv_oracle, which reads back over QMP what the guest
 * would see and compares it with the definition itself.
 *
 * The host facts are pinned by tests/golden-host.json (see golden_testlib.h), so the
 * .argv files are the same on every host. `make golden-update` (this binary with
 * --update) rewrites them; review the diff. QVISOR_GOLDEN_UPDATE in the environment is
 * refused: it once turned every argv check into a pass. */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <setjmp.h>
#include <cmocka.h>

#include "launcher/model/model.h"
#include "golden_testlib.h"

static bool update_mode;

static int setup(void **state)
{
    (void)state;
    return golden_images_make();
}

static int teardown(void **state)
{
    (void)state;
    golden_cleanup();
    return 0;
}

static json_object *load_golden(const char *name)
{
    json_object *o = golden_load(name);
    if (!o)
        fail_msg("%s: cannot read or parse %s/%s.json", name, golden_dir, name);
    return o;
}

static char *argv_text(const struct launch_plan *p)
{
    struct buf b = {0};
    buf_adds(&b, "");
    for (size_t i = 0; i < p->argv.n; i++)
        buf_printf(&b, "%s\n", p->argv.v[i]);
    char *t = golden_unsubst(b.p);
    buf_free(&b);
    return t;
}

static void pinned_facts(struct host_facts *f)
{
    struct qv_err e = {0};
    if (golden_host_facts(f, &e) < 0)
        fail_msg("pinned host facts: %s", e.msg);
}

/* Defines `name` in a fresh root as `qvisor define` would, and builds its plan. */
static void define_and_plan(const char *name, struct golden_root *r, struct vm_def *d, struct launch_plan *plan)
{
    json_object *o = load_golden(name);
    struct qv_err e = {0};
    assert_int_equal(golden_root_make(r, name), 0);
    if (vm_define(&r->paths, o, false, d, &e) < 0)
        fail_msg("%s: define: %s", name, e.msg);
    json_object_put(o);
    struct host_facts f;
    pinned_facts(&f);
    if (build_launch_plan(d, &f, plan, &e) < 0)
        fail_msg("%s: plan: %s", name, e.msg);
}

static void test_golden_argv(void **state)
{
    const char *name = *state;
    struct golden_root r;
    struct vm_def d;
    struct launch_plan plan;
    define_and_plan(name, &r, &d, &plan);
    char *got = argv_text(&plan);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s.argv", golden_dir, name);
    bool same = true;
    if (update_mode) {
        struct qv_err e = {0};
        assert_int_equal(write_file_atomic(path, got, strlen(got), 0644, &e), 0);
    } else {
        char *want = NULL;
        same = read_file(path, 1 << 20, &want, NULL) == 0 && strcmp(want, got) == 0;
        if (!same)
            fprintf(stderr, "%s: argv differs from %s\n--- got:\n%s", name, path, got);
        free(want);
    }
    free(got);
    launch_plan_free(&plan);
    vm_def_free(&d);
    golden_root_remove(&r);
    assert_true(same);
}

/* ---- every key of the input survives `show` with its value ---- */

/* "1536M", "2G", 1073741824: bytes, or -1. Our own reading of the documented units,
 * so a show that rewrote a size wrongly is caught. */
static long long size_bytes(json_object *v)
{
    if (json_object_is_type(v, json_type_int))
        return json_object_get_int64(v);
    if (!json_object_is_type(v, json_type_string))
        return -1;
    const char *s = json_object_get_string(v);
    char *end;
    long long n = strtoll(s, &end, 10);
    if (end == s)
        return -1;
    static const char units[] = "KMGT";
    if (!*end)
        return n;
    const char *u = strchr(units, *end);
    if (!u || (end[1] && strcmp(end + 1, "iB") != 0 && strcmp(end + 1, "B") != 0))
        return -1;
    for (const char *k = units; k <= u; k++)
        n <<= 10;
    return n;
}

static bool is_mac_key(const char *path)
{
    size_t n = strlen(path);
    return n >= 4 && strcmp(path + n - 4, ".mac") == 0;
}

static bool is_size_key(const char *path)
{
    size_t n = strlen(path);
    bool numa_memory = strncmp(path, "numa[", 5) == 0 && n > 7 && strcmp(path + n - 7, ".memory") == 0;
    return strcmp(path, "memory") == 0 || strcmp(path, "memory.size") == 0 || strstr(path, "memory_max") || numa_memory;
}

/* Every key of `in` is in `out` with the same value (recursively); `out` may have more.
 * The only rewrites allowed: a size in another unit, a MAC's letter case, the
 * documented short form "memory": SIZE for {"size": SIZE}, hugepages true as "2M", and a PCI
 * address without its domain ("01:00.0" is "0000:01:00.0", as lspci prints either). */
static int subset(const char *path, json_object *in, json_object *out, struct buf *why)
{
    if (strcmp(path, "memory") == 0 && json_object_is_type(in, json_type_string) &&
        json_object_is_type(out, json_type_object)) {
        json_object *sz = NULL;
        json_object_object_get_ex(out, "size", &sz);
        return subset("memory.size", in, sz, why);
    }
    if (!out) {
        buf_printf(why, "  %s: %s is missing\n", path, jr_show(in));
        return 1;
    }
    int bad = 0;
    switch (json_object_get_type(in)) {
    case json_type_object: {
        if (!json_object_is_type(out, json_type_object)) {
            buf_printf(why, "  %s: %s became %s\n", path, jr_show(in), jr_show(out));
            return 1;
        }
        json_object_object_foreach(in, k, v) {
            json_object *o = NULL;
            json_object_object_get_ex(out, k, &o);
            char *sub = qv_xasprintf("%s%s%s", path, *path ? "." : "", k);
            bad += subset(sub, v, o, why);
            free(sub);
        }
        return bad;
    }
    case json_type_array:
        if (!json_object_is_type(out, json_type_array) || json_object_array_length(in) != json_object_array_length(out)) {
            buf_printf(why, "  %s: %s became %s\n", path, jr_show(in), jr_show(out));
            return 1;
        }
        for (size_t i = 0; i < json_object_array_length(in); i++) {
            char *sub = qv_xasprintf("%s[%zu]", path, i);
            bad += subset(sub, json_object_array_get_idx(in, i), json_object_array_get_idx(out, i), why);
            free(sub);
        }
        return bad;
    default:
        break;
    }
    bool same;
    /* README: hugepages true means 2M pages, and show says so */
    if (strcmp(path, "memory.hugepages") == 0 && json_object_is_type(in, json_type_boolean) && json_object_get_boolean(in))
        same = json_object_is_type(out, json_type_string) && strcmp(json_object_get_string(out), "2M") == 0;
    else if (is_size_key(path))
        same = size_bytes(in) >= 0 && size_bytes(in) == size_bytes(out);
    else if (strstr(path, "hostdevs[") && strstr(path, "].address") && json_object_is_type(in, json_type_string) &&
             strlen(json_object_get_string(in)) == 7)
        same = json_object_is_type(out, json_type_string) && strncmp(json_object_get_string(out), "0000:", 5) == 0 &&
               strcmp(json_object_get_string(out) + 5, json_object_get_string(in)) == 0;
    else if (is_mac_key(path))
        same = json_object_is_type(out, json_type_string) && strcasecmp(json_object_get_string(in), json_object_get_string(out)) == 0;
    else
        same = json_object_equal(in, out);
    if (!same)
        buf_printf(why, "  %s: %s became %s\n", path, jr_show(in), jr_show(out));
    return same ? 0 : 1;
}

/* define -> show keeps every key of the input with its value; define of the shown
 * form -> show gives the same text again (a fixed point) and still holds the input. */
static void test_golden_roundtrip(void **state)
{
    const char *name = *state;
    struct golden_root r;
    struct vm_def d, d2;
    struct launch_plan plan;
    define_and_plan(name, &r, &d, &plan);
    json_object *input = load_golden(name);
    json_object *first = vm_def_to_json(&d);
    char *s1 = json_pretty(first);
    struct qv_err e = {0};
    struct buf why = {0};
    buf_adds(&why, "");
    int lost = subset("", input, first, &why);
    /* undefine, then define the shown form again: same text */
    assert_int_equal(vm_undefine(&r.paths, d.name, &e), 0);
    if (vm_define(&r.paths, first, false, &d2, &e) < 0)
        fail_msg("%s: define of the shown form: %s", name, e.msg);
    json_object *second = vm_def_to_json(&d2);
    char *s2 = json_pretty(second);
    lost += subset("", input, second, &why);
    bool same = strcmp(s1, s2) == 0;
    if (!same)
        fprintf(stderr, "%s: not a fixed point:\n%s\n---\n%s\n", name, s1, s2);
    if (lost)
        fprintf(stderr, "%s: show lost or changed what the definition said:\n%s", name, why.p);
    buf_free(&why);
    free(s1);
    free(s2);
    json_object_put(input);
    json_object_put(first);
    json_object_put(second);
    vm_def_free(&d2);
    launch_plan_free(&plan);
    vm_def_free(&d);
    golden_root_remove(&r);
    assert_true(same);
    assert_int_equal(lost, 0);
}

static bool dir_is_empty_tree(const char *dir)
{
    /* only directories (and the define lock) may exist: no definition was written */
    char vms[PATH_MAX];
    snprintf(vms, sizeof(vms), "%s/etc/qvisor/vms", dir);
    DIR *d = opendir(vms);
    if (!d)
        return true;
    struct dirent *de;
    bool empty = true;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            empty = false;
    closedir(d);
    return empty;
}

static void test_golden_error(void **state)
{
    int mismatches = 0;
    const char *name = *state;
    json_object *o = load_golden(name);
    char path[PATH_MAX], *want = NULL;
    snprintf(path, sizeof(path), "%s/%s.error", golden_dir, name);
    assert_int_equal(read_file(path, 4096, &want, NULL), 0);
    want[strcspn(want, "\n")] = '\0';
    struct golden_root r;
    assert_int_equal(golden_root_make(&r, name), 0);
    struct vm_def d;
    struct qv_err e = {0};
    int rc = vm_define(&r.paths, o, false, &d, &e);
    if (rc == 0) {
        /* valid as a definition: the error must come from the command line */
        struct host_facts f;
        pinned_facts(&f);
        struct launch_plan plan;
        rc = build_launch_plan(&d, &f, &plan, &e);
        if (rc == 0)
            launch_plan_free(&plan);
        vm_def_free(&d);
    } else if (!dir_is_empty_tree(r.dir)) {
        fprintf(stderr, "%s: a rejected definition left files behind\n", name);
        mismatches++;
    }
    char *got = golden_unsubst(e.msg);
    if (rc != -EINVAL || strcmp(got, want) != 0) {
        fprintf(stderr, "%s: want EINVAL \"%s\"\n     got %d \"%s\"\n", name, want, rc, got);
        mismatches++;
    }
    free(got);
    free(want);
    json_object_put(o);
    golden_root_remove(&r);
    assert_int_equal(mismatches, 0);
}

static void test_golden_counts(void **state)
{
    (void)state;
    assert_true(golden_valid.n >= 30);
    assert_true(golden_invalid.n >= 30);
}

static struct CMUnitTest named(const char *prefix, const char *name, void (*fn)(void **))
{
    struct CMUnitTest t = {.name = qv_xasprintf("%s %s", prefix, name), .test_func = fn,
                           .initial_state = (void *)name};
    return t;
}

int main(int argc, char **argv)
{
    /* whole TAP lines, never interleaved mid-line with the diagnostics on stderr */
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Update mode only through `make golden-update` (which passes --update): an
     * environment variable leaking into a test run must not turn checks into writes. */
    if (getenv("QVISOR_GOLDEN_UPDATE")) {
        printf("1..1\nnot ok 1 - QVISOR_GOLDEN_UPDATE is set: refusing to run; rewrite the goldens with "
               "`make golden-update`\n");
        return 1;
    }
    update_mode = argc == 2 && strcmp(argv[1], "--update") == 0;
    if (argc > 1 && !update_mode) {
        fprintf(stderr, "usage: %s [--update]\n", argv[0]);
        return 2;
    }
    /* one test per definition and property, so a failure names its definition */
    golden_read_names();
    size_t n = 0, cap = 1 + golden_valid.n * 2 + golden_invalid.n;
    struct CMUnitTest *tests = qv_xcalloc(cap, sizeof(*tests));
    tests[n++] = (struct CMUnitTest){.name = qv_xstrdup("at least 30 valid and 30 invalid definitions"),
                                     .test_func = test_golden_counts};
    for (size_t i = 0; i < golden_valid.n; i++)
        tests[n++] = named("argv", golden_valid.v[i], test_golden_argv);
    for (size_t i = 0; i < golden_valid.n && !update_mode; i++)
        tests[n++] = named("define-show-define", golden_valid.v[i], test_golden_roundtrip);
    for (size_t i = 0; i < golden_invalid.n && !update_mode; i++)
        tests[n++] = named("rejected", golden_invalid.v[i], test_golden_error);
    int r = _cmocka_run_group_tests("argv_golden", tests, n, setup, teardown);
    for (size_t i = 0; i < n; i++)
        free((char *)tests[i].name);
    free(tests);
    strv_free(&golden_valid);
    strv_free(&golden_invalid);
    return r;
}
