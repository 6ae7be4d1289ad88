/* Data handed to the guest: the "cloud_init" seed and systemd "credentials".
 * A credential's value is a secret: no message here ever shows it, the public
 * JSON form leaves it out, and a definition holding one is stored 0600. */
#include <ctype.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/model/config.h"

#define SEED_FILE_MAX (4u << 20)    /* user-data and meta-data, each */

void vm_guestdata_free(struct vm_def *d)
{
    free(d->cloud_init.user_data);
    free(d->cloud_init.meta_data);
    for (size_t i = 0; i < d->ncredentials; i++) {
        struct vm_credential *c = &d->credentials[i];
        free(c->name);
        if (c->value) {
            explicit_bzero(c->value, strlen(c->value));
            free(c->value);
        }
        free(c->file);
    }
    free(d->credentials);
    d->cloud_init = (struct vm_cloud_init){0};
    d->credentials = NULL;
    d->ncredentials = 0;
}

static bool abs_path_ok(const char *s)
{
    return s[0] == '/' && strlen(s) < PATH_MAX && !strchr(s, '\n');
}

/* systemd takes a credential name that is a valid file name without "="; we keep
 * to a plain set that is safe in every place a name shows up. */
static bool credential_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 128 || s[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("_.-@", s[i]))
            return false;
    return true;
}

static int path_field(struct jr *r, json_object *o, const char *key, bool required, char **out)
{
    int e = jr_string(r, o, key, required, out);
    if (e < 0 || !*out || abs_path_ok(*out))
        return e;
    size_t m = jr_key(r, key);
    e = jr_fail(r, "%s is not an absolute path", jr_show(json_object_object_get(o, key)));
    jr_pop(r, m);
    return e;
}

static int parse_cloud_init(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *o = NULL;
    int e = jr_object(r, root, "cloud_init", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "cloud_init");
    static const char *const keys[] = {"user_data", "meta_data", NULL};
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = path_field(r, o, "user_data", true, &d->cloud_init.user_data)) < 0 ||
        (e = path_field(r, o, "meta_data", false, &d->cloud_init.meta_data)) < 0)
        return e;
    if (d->machine == MACHINE_MICROVM)
        return jr_fail(r, "not available on microvm (the seed is a cdrom, and microvm has none)");
    jr_pop(r, m);
    return 0;
}

/* The value is checked without ever being shown: its type, NUL bytes, UTF-8. */
static int parse_credential(struct jr *r, json_object *o, struct vm_credential *c)
{
    static const char *const keys[] = {"name", "value", "file", NULL};
    int e;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "name", true, &c->name)) < 0)
        return e;
    if (!credential_name_ok(c->name))
        return jr_key(r, "name"), jr_fail(r, "%s is not a credential name (1-128 of letters, digits, _ . - @, "
                                             "not starting with .)", jr_show(json_object_object_get(o, "name")));
    json_object *v;
    bool has_value = json_object_object_get_ex(o, "value", &v);
    if (has_value == json_object_object_get_ex(o, "file", NULL))
        return jr_fail(r, "needs \"value\" or \"file\" (an absolute path), and only one of them");
    if (!has_value)
        return path_field(r, o, "file", true, &c->file);
    size_t m = jr_key(r, "value");
    if (!json_object_is_type(v, json_type_string))
        return jr_fail(r, "must be a string (its value is not shown)");
    const char *s = json_object_get_string(v);
    size_t n = (size_t)json_object_get_string_len(v);
    if (strlen(s) != n)
        return jr_fail(r, "contains a NUL character (use \"file\" for binary data)");
    if (n > VM_CREDENTIALS_BYTES)
        return jr_fail(r, "is %zu bytes, more than %u KiB", n, VM_CREDENTIALS_BYTES >> 10);
    c->value = qv_xstrdup(s);
    jr_pop(r, m);
    return 0;
}

static int parse_credentials(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *arr = NULL;
    int e = jr_array(r, root, "credentials", &arr);
    if (e < 0 || !arr)
        return e;
    size_t m = jr_key(r, "credentials");
    size_t n = json_object_array_length(arr);
    if (n > VM_CREDENTIALS_MAX)
        return jr_fail(r, "%zu credentials, at most %d", n, VM_CREDENTIALS_MAX);
    if (n && d->machine == MACHINE_MICROVM)
        return jr_fail(r, "not available on microvm (credentials go in SMBIOS tables, and microvm has none)");
    d->credentials = qv_xcalloc(n ? n : 1, sizeof(*d->credentials));
    size_t inline_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *item = json_object_array_get_idx(arr, i);
        size_t mi = jr_index(r, i);
        d->ncredentials = i + 1;    /* so vm_guestdata_free releases what was parsed so far */
        if ((e = jr_expect(r, item, json_type_object)) < 0 || (e = parse_credential(r, item, &d->credentials[i])) < 0)
            return e;
        for (size_t j = 0; j < i; j++)
            if (strcmp(d->credentials[j].name, d->credentials[i].name) == 0)
                return jr_key(r, "name"), jr_fail(r, "\"%s\" is already credentials[%zu]", d->credentials[i].name, j);
        inline_bytes += d->credentials[i].value ? strlen(d->credentials[i].value) : 0;
        if (inline_bytes > VM_CREDENTIALS_BYTES)
            return jr_key(r, "value"), jr_fail(r, "the values come to more than %u KiB in all",
                                               VM_CREDENTIALS_BYTES >> 10);
        jr_pop(r, mi);
    }
    jr_pop(r, m);
    return 0;
}

int vm_guestdata_parse(struct jr *r, json_object *root, struct vm_def *d)
{
    int e = parse_cloud_init(r, root, d);
    return e < 0 ? e : parse_credentials(r, root, d);
}

int vm_credentials_check_text(struct jr *r, json_object *root)
{
    json_object *arr, *v;
    if (!json_object_object_get_ex(root, "credentials", &arr) || !json_object_is_type(arr, json_type_array))
        return 0;
    for (size_t i = 0; i < json_object_array_length(arr); i++) {
        json_object *c = json_object_array_get_idx(arr, i);
        if (!json_object_is_type(c, json_type_object) || !json_object_object_get_ex(c, "value", &v) ||
            !json_object_is_type(v, json_type_string))
            continue;
        const char *s = json_object_get_string(v);
        size_t n = (size_t)json_object_get_string_len(v), ok = 0;
        /* the whole-definition check would show the value in its message */
        size_t m = jr_key(r, "credentials");
        jr_index(r, i);
        jr_key(r, "value");
        if (strlen(s) != n)
            return jr_fail(r, "contains a NUL character (use \"file\" for binary data)");
        utf8_prefix((const unsigned char *)s, n, true, &ok);
        if (ok != n)
            return jr_fail(r, "is not valid UTF-8 (byte %zu; use \"file\" for binary data)", ok + 1);
        jr_pop(r, m);
    }
    return 0;
}

static void put_str(json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, json_object_new_string(v));
}

void vm_guestdata_to_json(const struct vm_def *d, json_object *o, bool with_values)
{
    if (d->cloud_init.user_data) {
        json_object *ci = json_object_new_object();
        put_str(ci, "user_data", d->cloud_init.user_data);
        if (d->cloud_init.meta_data)
            put_str(ci, "meta_data", d->cloud_init.meta_data);
        json_object_object_add(o, "cloud_init", ci);
    }
    if (d->ncredentials) {
        json_object *a = json_object_new_array();
        for (size_t i = 0; i < d->ncredentials; i++) {
            const struct vm_credential *c = &d->credentials[i];
            json_object *j = json_object_new_object();
            put_str(j, "name", c->name);
            if (c->file)
                put_str(j, "file", c->file);
            else if (with_values)
                put_str(j, "value", c->value);
            json_object_array_add(a, j);
        }
        json_object_object_add(o, "credentials", a);
    }
}

mode_t vm_def_file_mode(const struct vm_def *d)
{
    for (size_t i = 0; i < d->ncredentials; i++)
        if (d->credentials[i].value)
            return 0600;
    return 0644;
}

/* stat, never open: a FIFO would hang the reader. A missing file fails here (at
 * define: an invalid definition). */
static int check_file(const char *path, struct qv_err *e, const char *where)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return qv_fail(e, errno == ENOENT ? -EINVAL : -errno, "%s: %s: %s", where, path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return qv_fail(e, -EINVAL, "%s: %s is %s, not a regular file", where, path, storage_file_type_name(st.st_mode));
    return 0;
}

int vm_guestdata_check_host(const struct vm_def *d, struct qv_err *e)
{
    int r = 0;
    if (d->cloud_init.user_data)
        r = check_file(d->cloud_init.user_data, e, "cloud_init.user_data");
    if (r == 0 && d->cloud_init.meta_data)
        r = check_file(d->cloud_init.meta_data, e, "cloud_init.meta_data");
    for (size_t i = 0; r == 0 && i < d->ncredentials; i++) {
        char where[160];
        snprintf(where, sizeof(where), "credentials[%zu] (%s).file", i, d->credentials[i].name);
        if (d->credentials[i].file)
            r = check_file(d->credentials[i].file, e, where);
    }
    return r;
}

/* A regular file read whole (at most `max` bytes), opened without following a FIFO's wait. */
static int read_regular(const char *path, size_t max, char **out, size_t *len, struct qv_err *e, const char *where)
{
    int r = check_file(path, e, where);
    if (r < 0)
        return r;
    r = read_file(path, max, out, len);
    if (r == -EFBIG)
        return qv_fail(e, r, "%s: %s is larger than %zu KiB", where, path, max >> 10);
    return r < 0 ? qv_failerr(e, r, "%s: %s", where, path) : 0;
}

int vm_credential_value(const struct vm_def *d, size_t i, char **value, size_t *len, struct qv_err *e)
{
    const struct vm_credential *c = &d->credentials[i];
    if (c->value) {
        *len = strlen(c->value);
        *value = qv_xstrdup(c->value);
        return 0;
    }
    char where[160];
    snprintf(where, sizeof(where), "%s: credential %s", d->name, c->name);
    return read_regular(c->file, VM_CREDENTIALS_BYTES, value, len, e, where);
}

int vm_cloud_init_meta(const struct vm_def *d, char **text, size_t *len, struct qv_err *e)
{
    if (d->cloud_init.meta_data) {
        char where[128];
        snprintf(where, sizeof(where), "%s: cloud_init.meta_data", d->name);
        return read_regular(d->cloud_init.meta_data, SEED_FILE_MAX, text, len, e, where);
    }
    struct buf b = {0};
    buf_printf(&b, "instance-id: %s\nlocal-hostname: %s\n", d->uuid, d->name);
    *len = b.len;
    *text = b.p;
    return 0;
}

int vm_cloud_init_user(const struct vm_def *d, char **text, size_t *len, struct qv_err *e)
{
    char where[128];
    snprintf(where, sizeof(where), "%s: cloud_init.user_data", d->name);
    return read_regular(d->cloud_init.user_data, SEED_FILE_MAX, text, len, e, where);
}

static void base64_append(struct buf *b, const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        char q[4] = {tab[v >> 18 & 63], tab[v >> 12 & 63], i + 1 < n ? tab[v >> 6 & 63] : '=', i + 2 < n ? tab[v & 63] : '='};
        buf_add(b, q, 4);
    }
}

char *vm_credential_smbios(const char *name, const char *value, size_t len, size_t *outlen)
{
    struct buf b = {0};
    buf_printf(&b, "io.systemd.credential.binary:%s=", name);
    base64_append(&b, (const unsigned char *)value, len);
    *outlen = b.len;
    return b.p;
}
