/* The "cloud_init" and "credentials" members of a VM definition: what is accepted,
 * what is refused and with which words (never a credential's value), the public
 * form without values, the stored file's mode, and the command line: the seed as a
 * read-only cdrom by fd, each credential as an inherited fd, no value anywhere. */
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <setjmp.h>
#include <cmocka.h>

#include "launcher/model/model.h"

#define SECRET "hunter2-\\u00e9-very-secret"
#define SECRET_RAW "hunter2-\xc3\xa9-very-secret"

static int parse(const char *json, struct vm_def *d, struct qv_err *e)
{
    json_object *o = NULL;
    memset(e, 0, sizeof(*e));
    if (json_parse_str("t", json, &o, e) < 0)
        fail_msg("%s: %s", json, e->msg);
    int r = vm_def_from_json(o, d, e);
    json_object_put(o);
    return r;
}

static void expect_error(const char *json, const char *want)
{
    struct vm_def d;
    struct qv_err e;
    int r = parse(json, &d, &e);
    if (r == 0)
        vm_def_free(&d);
    if (r != -EINVAL || strcmp(e.msg, want) != 0)
        fail_msg("%s\n  got %d \"%s\"\n want \"%s\"", json, r, e.msg, want);
    if (strstr(e.msg, "hunter2"))
        fail_msg("%s: the message shows the value: %s", json, e.msg);
}

static void test_refused(void **state)
{
    (void)state;
    static const struct { const char *json, *err; } cases[] = {
        {"{\"name\": \"v\", \"cloud_init\": {}}", "cloud_init.user_data: missing"},
        {"{\"name\": \"v\", \"cloud_init\": {\"user_data\": \"u.yaml\"}}",
         "cloud_init.user_data: \"u.yaml\" is not an absolute path"},
        {"{\"name\": \"v\", \"cloud_init\": {\"user_data\": \"/u\", \"meta_data\": \"m\"}}",
         "cloud_init.meta_data: \"m\" is not an absolute path"},
        {"{\"name\": \"v\", \"cloud_init\": {\"user_data\": \"/u\", \"network_config\": \"/n\"}}",
         "cloud_init: unknown key \"network_config\" (allowed: user_data, meta_data)"},
        {"{\"name\": \"v\", \"machine\": \"microvm\", \"boot\": {\"kernel\": \"/k\"}, \"cloud_init\": {\"user_data\": \"/u\"}}",
         "cloud_init: not available on microvm (the seed is a cdrom, and microvm has none)"},
        {"{\"name\": \"v\", \"credentials\": {}}", "credentials: {} is an object, expected an array"},
        {"{\"name\": \"v\", \"credentials\": [{\"value\": \"" SECRET "\"}]}", "credentials[0].name: missing"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \"a=b\", \"value\": \"" SECRET "\"}]}",
         "credentials[0].name: \"a=b\" is not a credential name (1-128 of letters, digits, _ . - @, not starting with .)"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \".x\", \"value\": \"" SECRET "\"}]}",
         "credentials[0].name: \".x\" is not a credential name (1-128 of letters, digits, _ . - @, not starting with .)"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \"x\"}]}",
         "credentials[0]: needs \"value\" or \"file\" (an absolute path), and only one of them"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \"x\", \"value\": \"" SECRET "\", \"file\": \"/f\"}]}",
         "credentials[0]: needs \"value\" or \"file\" (an absolute path), and only one of them"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \"x\", \"file\": \"f\"}]}",
         "credentials[0].file: \"f\" is not an absolute path"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \"x\", \"value\": [\"hunter2\"]}]}",
         "credentials[0].value: must be a string (its value is not shown)"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \"x\", \"value\": \"hunter2\\u0000x\"}]}",
         "credentials[0].value: contains a NUL character (use \"file\" for binary data)"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \"x\", \"value\": \"" SECRET "\"}, {\"name\": \"x\", \"file\": \"/f\"}]}",
         "credentials[1].name: \"x\" is already credentials[0]"},
        {"{\"name\": \"v\", \"credentials\": [{\"name\": \"x\", \"value\": \"" SECRET "\", \"mode\": 1}]}",
         "credentials[0]: unknown key \"mode\" (allowed: name, value, file)"},
        {"{\"name\": \"v\", \"machine\": \"microvm\", \"boot\": {\"kernel\": \"/k\"}, \"credentials\": [{\"name\": \"x\", \"file\": \"/f\"}]}",
         "credentials: not available on microvm (credentials go in SMBIOS tables, and microvm has none)"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        expect_error(cases[i].json, cases[i].err);
}

/* a value too large, alone and together; 65 credentials */
static void test_limits(void **state)
{
    (void)state;
    struct buf b = {0};
    buf_adds(&b, "{\"name\": \"v\", \"credentials\": [{\"name\": \"big\", \"value\": \"");
    for (unsigned i = 0; i < VM_CREDENTIALS_BYTES + 1; i++)
        buf_adds(&b, "h");
    buf_adds(&b, "\"}]}");
    expect_error(b.p, "credentials[0].value: is 32769 bytes, more than 32 KiB");
    buf_free(&b);
    buf_adds(&b, "{\"name\": \"v\", \"credentials\": [");
    for (int k = 0; k < 2; k++) {
        buf_printf(&b, "%s{\"name\": \"c%d\", \"value\": \"", k ? ", " : "", k);
        for (unsigned i = 0; i < VM_CREDENTIALS_BYTES / 2 + 1; i++)
            buf_adds(&b, "h");
        buf_adds(&b, "\"}");
    }
    buf_adds(&b, "]}");
    expect_error(b.p, "credentials[1].value: the values come to more than 32 KiB in all");
    buf_free(&b);
    buf_adds(&b, "{\"name\": \"v\", \"credentials\": [");
    for (int k = 0; k <= VM_CREDENTIALS_MAX; k++)
        buf_printf(&b, "%s{\"name\": \"c%d\", \"file\": \"/f\"}", k ? ", " : "", k);
    buf_adds(&b, "]}");
    expect_error(b.p, "credentials: 65 credentials, at most 64");
    buf_free(&b);
}

static const char *const good =
    "{\"name\": \"web1\", \"uuid\": \"0b6b9c43-2f4c-4b4e-9a3c-0d1b6d2a5e11\", \"cdroms\": [{\"file\": \"/cd.iso\"}],"
    " \"cloud_init\": {\"user_data\": \"/srv/u.yaml\"},"
    " \"credentials\": [{\"name\": \"api.token\", \"value\": \"" SECRET "\"}, {\"name\": \"db@pass\", \"file\": \"/srv/p\"}]}";

static void test_accepted_and_shown(void **state)
{
    (void)state;
    struct vm_def d;
    struct qv_err e;
    if (parse(good, &d, &e) < 0)
        fail_msg("%s", e.msg);
    assert_string_equal(d.cloud_init.user_data, "/srv/u.yaml");
    assert_null(d.cloud_init.meta_data);
    assert_int_equal(d.ncredentials, 2);
    assert_string_equal(d.credentials[0].value, SECRET_RAW);
    assert_string_equal(d.credentials[1].file, "/srv/p");
    assert_int_equal(vm_def_file_mode(&d), 0600);

    /* stored: the whole thing, and it reads back the same */
    json_object *full = vm_def_to_json(&d);
    struct vm_def again;
    if (vm_def_from_json(full, &again, &e) < 0)
        fail_msg("round trip: %s", e.msg);
    assert_string_equal(again.credentials[0].value, SECRET_RAW);
    assert_string_equal(again.cloud_init.user_data, "/srv/u.yaml");
    vm_def_free(&again);
    json_object_put(full);

    /* shown: names and files, no value */
    json_object *pub = vm_def_to_json_public(&d);
    const char *text = json_object_to_json_string_ext(pub, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    assert_null(strstr(text, "hunter2"));
    assert_non_null(strstr(text, "\"credentials\":[{\"name\":\"api.token\"},{\"name\":\"db@pass\",\"file\":\"/srv/p\"}]"));
    assert_non_null(strstr(text, "\"cloud_init\":{\"user_data\":\"/srv/u.yaml\"}"));
    json_object_put(pub);

    /* the default meta-data */
    char *meta = NULL;
    size_t len;
    assert_int_equal(vm_cloud_init_meta(&d, &meta, &len, &e), 0);
    assert_string_equal(meta, "instance-id: 0b6b9c43-2f4c-4b4e-9a3c-0d1b6d2a5e11\nlocal-hostname: web1\n");
    assert_int_equal(len, strlen(meta));
    free(meta);
    vm_def_free(&d);

    /* only files: nothing secret in the file, which stays readable */
    assert_int_equal(parse("{\"name\": \"v\", \"credentials\": [{\"name\": \"x\", \"file\": \"/f\"}]}", &d, &e), 0);
    assert_int_equal(vm_def_file_mode(&d), 0644);
    vm_def_free(&d);
}

/* meta-data and a credential from files: read whole; errors name the file */
static void test_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/qv-guestdata-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char meta[PATH_MAX], cred[PATH_MAX], json[3 * PATH_MAX];
    snprintf(meta, sizeof(meta), "%s/meta", dir);
    snprintf(cred, sizeof(cred), "%s/cred", dir);
    struct qv_err e = {0};
    assert_int_equal(write_file_atomic(meta, "instance-id: i-1\n", 17, 0600, &e), 0);
    assert_int_equal(write_file_atomic(cred, "bin\0ary", 7, 0600, &e), 0);
    snprintf(json, sizeof(json), "{\"name\": \"v\", \"cloud_init\": {\"user_data\": \"/u\", \"meta_data\": \"%s\"}, "
             "\"credentials\": [{\"name\": \"c\", \"file\": \"%s\"}, {\"name\": \"gone\", \"file\": \"%s/nope\"}]}",
             meta, cred, dir);
    struct vm_def d;
    if (parse(json, &d, &e) < 0)
        fail_msg("%s", e.msg);
    char *text = NULL;
    size_t len;
    assert_int_equal(vm_cloud_init_meta(&d, &text, &len, &e), 0);
    assert_string_equal(text, "instance-id: i-1\n");
    free(text);
    assert_int_equal(vm_credential_value(&d, 0, &text, &len, &e), 0);
    assert_int_equal(len, 7);
    assert_memory_equal(text, "bin\0ary", 7);
    free(text);
    assert_true(vm_credential_value(&d, 1, &text, &len, &e) < 0);
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "v: credential gone: %s/nope: No such file or directory", dir);
    assert_string_equal(e.msg, want);
    vm_def_free(&d);
    unlink(meta);
    unlink(cred);
    rmdir(dir);
}

static void test_smbios_string(void **state)
{
    (void)state;
    static const struct { const char *value, *b64; } cases[] = {
        {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"\xff\xfe\n", "//4K"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        size_t n;
        char *s = vm_credential_smbios("n.x", cases[i].value, strlen(cases[i].value), &n);
        char want[64];
        snprintf(want, sizeof(want), "io.systemd.credential.binary:n.x=%s", cases[i].b64);
        assert_string_equal(s, want);
        assert_int_equal(n, strlen(want));
        free(s);
    }
}

static void plan_for(const char *json, struct vm_def *d, struct launch_plan *p)
{
    struct qv_err e;
    if (parse(json, d, &e) < 0)
        fail_msg("%s", e.msg);
    struct host_facts f = {.qemu = "/usr/bin/qemu-system-x86_64", .accel_override = ACCEL_TCG};
    if (build_launch_plan(d, &f, p, &e) < 0)
        fail_msg("plan: %s", e.msg);
}

static ssize_t argv_find(const struct launch_plan *p, const char *needle)
{
    for (size_t i = 0; i < p->argv.n; i++)
        if (strstr(p->argv.v[i], needle))
            return (ssize_t)i;
    return -1;
}

static void test_argv(void **state)
{
    (void)state;
    struct vm_def d;
    struct launch_plan p;
    plan_for(good, &d, &p);
    for (size_t i = 0; i < p.argv.n; i++)
        if (strstr(p.argv.v[i], "hunter2") || strstr(p.argv.v[i], "api.token") || strstr(p.argv.v[i], "/srv/"))
            fail_msg("argv[%zu] shows a credential or a seed file: %s", i, p.argv.v[i]);
    /* each credential: an fd slot, named by -smbios as /proc/self/fd/N */
    int ncred = 0, seed_fd = -1;
    for (size_t i = 0; i < p.nslots; i++) {
        const struct fd_slot *s = &p.slots[i];
        if (s->kind == FD_SEED) {
            assert_int_equal(s->open_flags, O_RDONLY);
            seed_fd = s->fd;
        }
        if (s->kind != FD_CREDENTIAL)
            continue;
        assert_int_equal(s->index, ncred++);
        char want[64];
        snprintf(want, sizeof(want), "type=11,path=/proc/self/fd/%d", s->fd);
        ssize_t at = argv_find(&p, want);
        assert_true(at > 0);
        assert_string_equal(p.argv.v[at - 1], "-smbios");
        assert_string_equal(p.argv.v[at], want);
    }
    assert_int_equal(ncred, 2);
    /* the seed: read-only, on the SATA bus after the cdrom, no boot index */
    assert_true(seed_fd >= FD_FIRST);
    char want[128];
    snprintf(want, sizeof(want), "fd=%d,set=%d,opaque=cidata-file", seed_fd, seed_fd);
    assert_true(argv_find(&p, want) > 0);
    ssize_t dev = argv_find(&p, "\"id\":\"cidata\"");
    assert_true(dev > 0);
    assert_string_equal(p.argv.v[dev], "{\"driver\":\"ide-cd\",\"bus\":\"ide.1\",\"drive\":\"cidata-fmt\",\"id\":\"cidata\"}");
    ssize_t node = argv_find(&p, "\"node-name\":\"cidata-file\"");
    assert_true(node > 0);
    assert_non_null(strstr(p.argv.v[node], "\"read-only\":true"));
    launch_plan_free(&p);
    vm_def_free(&d);

    /* on pc: the IDE bus, after the cdrom; and no credentials, no -smbios */
    plan_for("{\"name\": \"v\", \"machine\": \"pc\", \"cdroms\": [{}], \"cloud_init\": {\"user_data\": \"/u\"}}", &d, &p);
    dev = argv_find(&p, "\"id\":\"cidata\"");
    assert_true(dev > 0);
    assert_string_equal(p.argv.v[dev],
                        "{\"driver\":\"ide-cd\",\"bus\":\"ide.0\",\"unit\":1,\"drive\":\"cidata-fmt\",\"id\":\"cidata\"}");
    assert_int_equal(argv_find(&p, "type=11"), -1);
    launch_plan_free(&p);
    vm_def_free(&d);

    /* the seed takes a port: with 6 SATA cdroms there is none left on q35 */
    expect_error("{\"name\": \"v\", \"cdroms\": [{}, {}, {}, {}, {}, {}], \"cloud_init\": {\"user_data\": \"/u\"}}",
                 "disks: 7 SATA disks and cdroms, at most 6");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_accepted_and_shown),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_smbios_string),
        cmocka_unit_test(test_argv),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
