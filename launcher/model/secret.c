/* Secrets: etc/qvisor/secrets/NAME holds the value, NAME.json what it is (uuid, usage,
 * description). The directory is 0700 and every file 0600, written atomically under a
 * directory lock. A value file without its NAME.json (written by hand, as the VNC
 * password secrets were before `secret define`) is a secret without a usage.
 *
 * A value leaves this file only through secret_read_value, into the supervisor that
 * hands it to QEMU over QMP: never in argv, the environment, a log or an error. */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "launcher/model/model.h"
#include "launcher/model/storedef.h"

#define SECRET_MAX_VALUE 4096

/* libvirt's usage types; the id says what it is for ("client.libvirt", a TLS name) */
static const char *const usage_types[] = {"ceph", "tls", "vnc", "volume", "iscsi", NULL};

void secret_def_free(struct secret_def *d)
{
    free(d->name);
    free(d->usage);
    free(d->description);
    memset(d, 0, sizeof(*d));
}

static bool secret_name_valid(const char *name)
{
    size_t n = strlen(name);
    return name_valid(name) && !(n > 5 && strcmp(name + n - 5, ".json") == 0);
}

static int check_name(const char *name, struct qv_err *e)
{
    if (!secret_name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid secret name (1-64 of letters, digits, _ . -; not ending "
                       "in .json)", name);
    return 0;
}

static int usage_check(const char *usage, struct qv_err *e)
{
    const char *colon = strchr(usage, ':');
    size_t tlen = colon ? (size_t)(colon - usage) : 0;
    bool type_ok = false;
    for (size_t i = 0; colon && usage_types[i]; i++)
        type_ok |= strlen(usage_types[i]) == tlen && strncmp(usage, usage_types[i], tlen) == 0;
    bool id_ok = colon && colon[1] && strlen(colon + 1) <= 128;
    for (const char *c = colon ? colon + 1 : ""; id_ok && *c; c++)
        id_ok = *c > ' ' && *c < 0x7f;
    if (!type_ok || !id_ok)
        return qv_fail(e, -EINVAL, "usage \"%s\" is not TYPE:ID with TYPE one of ceph, tls, vnc, volume, iscsi "
                       "(e.g. ceph:client.libvirt)", usage);
    return 0;
}

static void dir_path(const struct qv_paths *p, char *out, size_t n)
{
    qv_path(p, out, n, QV_ETC "/secrets");
}

void secret_value_path(const struct qv_paths *p, const char *name, char *out, size_t n)
{
    qv_path(p, out, n, QV_ETC "/secrets/%s", name);
}

static void meta_path(const struct qv_paths *p, const char *name, char *out, size_t n)
{
    qv_path(p, out, n, QV_ETC "/secrets/%s.json", name);
}

/* The directory, 0700 whoever made it; its lock. */
static int lock_secrets(const struct qv_paths *p, struct qv_err *e)
{
    char etc[PATH_MAX], dir[PATH_MAX];
    qv_path(p, etc, sizeof(etc), QV_ETC);
    dir_path(p, dir, sizeof(dir));
    int r = mkdir_p(etc, 0755);
    if (r < 0)
        return qv_failerr(e, r, "%s", etc);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return qv_failerr(e, -errno, "%s", dir);
    if (chmod(dir, 0700) < 0)
        return qv_failerr(e, -errno, "%s", dir);
    return dir_lock(dir, e);
}

static int meta_from_json(json_object *o, struct secret_def *d, struct qv_err *e)
{
    static const char *const keys[] = {"name", "uuid", "usage", "description", NULL};
    struct jr r;
    jr_init(&r, e);
    int err;
    const char *uuid = NULL;
    json_object *v;
    if ((err = jr_expect(&r, o, json_type_object)) < 0 || (err = jr_only_keys(&r, o, keys)) < 0 ||
        (err = jr_string(&r, o, "name", true, &d->name)) < 0 || (err = jr_string(&r, o, "usage", false, &d->usage)) < 0 ||
        (err = jr_string(&r, o, "description", false, &d->description)) < 0)
        return err;
    if (json_object_object_get_ex(o, "uuid", &v))
        uuid = json_object_get_string(v);
    if (!uuid || !uuid_valid(uuid))
        return jr_key(&r, "uuid"), jr_fail(&r, "missing or not a UUID");
    snprintf(d->uuid, sizeof(d->uuid), "%s", uuid);
    return 0;
}

static json_object *meta_to_json(const struct secret_def *d)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(d->name));
    json_object_object_add(o, "uuid", json_object_new_string(d->uuid));
    if (d->usage)
        json_object_object_add(o, "usage", json_object_new_string(d->usage));
    if (d->description)
        json_object_object_add(o, "description", json_object_new_string(d->description));
    return o;
}

int secret_load(const struct qv_paths *p, const char *name, struct secret_def *d, struct qv_err *e)
{
    int r = check_name(name, e);
    if (r < 0)
        return r;
    char meta[PATH_MAX], value[PATH_MAX];
    meta_path(p, name, meta, sizeof(meta));
    secret_value_path(p, name, value, sizeof(value));
    memset(d, 0, sizeof(*d));
    d->has_value = path_exists(value);
    if (!path_exists(meta)) {
        if (!d->has_value)
            return qv_fail(e, -ENOENT, "no secret named %s (qvisor secret list shows the defined ones)", name);
        d->name = qv_xstrdup(name);
        return 0;
    }
    _cleanup_json_ json_object *o = NULL;
    bool has_value = d->has_value;
    if ((r = json_read_file(meta, &o, e)) < 0)
        return r;
    if ((r = meta_from_json(o, d, e)) < 0) {
        secret_def_free(d);
        return qv_prefix(e, "%s: ", meta);
    }
    d->has_value = has_value;
    if (strcmp(d->name, name) != 0) {
        r = qv_fail(e, -EINVAL, "%s: holds a secret named %s, not %s", meta, d->name, name);
        secret_def_free(d);
    }
    return r;
}

int secret_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e)
{
    char dir[PATH_MAX];
    dir_path(p, dir, sizeof(dir));
    DIR *dh = opendir(dir);
    if (!dh)
        return errno == ENOENT ? 0 : qv_failerr(e, -errno, "%s", dir);
    struct dirent *de;
    while ((de = readdir(dh))) {
        char name[256];
        size_t n = strlen(de->d_name);
        if (n > 5 && strcmp(de->d_name + n - 5, ".json") == 0)
            snprintf(name, sizeof(name), "%.*s", (int)(n - 5), de->d_name);
        else
            snprintf(name, sizeof(name), "%s", de->d_name);
        if (secret_name_valid(name) && !strv_contains((const char *const *)names->v, name))
            strv_push(names, name);
    }
    closedir(dh);
    strv_sort(names);
    return 0;
}

/* The name of the secret other than `name` that has `usage`, if any. */
static bool usage_taken(const struct qv_paths *p, const char *name, const char *usage, char *other, size_t n)
{
    _cleanup_strv_ struct strv names = {0};
    secret_list_names(p, &names, NULL);
    for (size_t i = 0; i < names.n; i++) {
        _cleanup_secret_def_ struct secret_def d = {0};
        if (strcmp(names.v[i], name) != 0 && secret_load(p, names.v[i], &d, NULL) == 0 && d.usage &&
            strcmp(d.usage, usage) == 0) {
            snprintf(other, n, "%s", d.name);
            return true;
        }
    }
    return false;
}

int secret_define(const struct qv_paths *p, const char *name, const char *usage, const char *description,
                  struct secret_def *out, bool *updated, struct qv_err *e)
{
    int r = check_name(name, e);
    if (r < 0 || (usage && (r = usage_check(usage, e)) < 0))
        return r;
    if (description && (strlen(description) > 1024 || strchr(description, '\n')))
        return qv_fail(e, -EINVAL, "description: one line of at most 1024 characters");
    _cleanup_close_ int lock = lock_secrets(p, e);
    if (lock < 0)
        return lock;
    char other[128];
    if (usage && usage_taken(p, name, usage, other, sizeof(other)))
        return qv_fail(e, -EEXIST, "secret %s already has usage %s (one secret per usage)", other, usage);
    _cleanup_secret_def_ struct secret_def d = {0};
    *updated = false;
    if (secret_load(p, name, &d, NULL) == 0) {
        *updated = d.uuid[0] != '\0';
        if (usage) {
            free(d.usage);
            d.usage = qv_xstrdup(usage);
        }
        if (description) {
            free(d.description);
            d.description = qv_xstrdup(description);
        }
    } else {
        d.name = qv_xstrdup(name);
        d.usage = usage ? qv_xstrdup(usage) : NULL;
        d.description = description ? qv_xstrdup(description) : NULL;
    }
    if (!d.uuid[0])
        uuid_generate_str(d.uuid);
    char meta[PATH_MAX];
    meta_path(p, name, meta, sizeof(meta));
    _cleanup_json_ json_object *o = meta_to_json(&d);
    if ((r = json_write_file_atomic(meta, o, 0600, e)) < 0)
        return r;
    if (out) {
        *out = d;
        memset(&d, 0, sizeof(d));
    }
    return 0;
}

int secret_set_value(const struct qv_paths *p, const char *name, const char *value, size_t len, struct qv_err *e)
{
    int r = check_name(name, e);
    if (r < 0)
        return r;
    while (len && (value[len - 1] == '\n' || value[len - 1] == '\r'))
        len--;
    if (len == 0)
        return qv_fail(e, -EINVAL, "secret %s: the value is empty", name);
    if (len > SECRET_MAX_VALUE)
        return qv_fail(e, -EINVAL, "secret %s: the value is longer than %d bytes", name, SECRET_MAX_VALUE);
    if (memchr(value, '\0', len))
        return qv_fail(e, -EINVAL, "secret %s: the value holds a NUL byte (give binary keys base64-encoded)", name);
    _cleanup_close_ int lock = lock_secrets(p, e);
    if (lock < 0)
        return lock;
    char meta[PATH_MAX], path[PATH_MAX];
    meta_path(p, name, meta, sizeof(meta));
    secret_value_path(p, name, path, sizeof(path));
    if (!path_exists(meta) && !path_exists(path))
        return qv_fail(e, -ENOENT, "no secret named %s (qvisor secret define %s first)", name, name);
    /* the error names the file, never the value */
    return write_file_atomic(path, value, len, 0600, e);
}

int secret_read_value(const struct qv_paths *p, const char *name, char **out, struct qv_err *e)
{
    int r = check_name(name, e);
    if (r < 0)
        return r;
    char path[PATH_MAX];
    secret_value_path(p, name, path, sizeof(path));
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno != ENOENT)
            return qv_failerr(e, -errno, "secret %s (%s)", name, path);
        char meta[PATH_MAX];
        meta_path(p, name, meta, sizeof(meta));
        return path_exists(meta) ? qv_fail(e, -ENOENT, "secret %s has no value (qvisor secret set-value %s)", name, name)
                                 : qv_fail(e, -ENOENT, "no secret named %s (qvisor secret define %s)", name, name);
    }
    if (st.st_mode & 077)
        return qv_fail(e, -EPERM, "secret %s: %s is readable by others (chmod 600 it)", name, path);
    size_t len;
    if ((r = read_file(path, SECRET_MAX_VALUE + 2, out, &len)) < 0)
        return qv_failerr(e, r, "secret %s", name);
    while (len && ((*out)[len - 1] == '\n' || (*out)[len - 1] == '\r'))
        (*out)[--len] = '\0';
    return 0;
}

/* "pool ceph" for every pool whose definition names the secret (its cephx key), and
 * "web1 (running)" for every running VM whose definition names it. */
int secret_users(const struct qv_paths *p, const char *name, struct strv *users, struct qv_err *e)
{
    _cleanup_strv_ struct strv pools = {0}, names = {0};
    int r = pool_list_names(p, &pools, e);
    for (size_t i = 0; r == 0 && i < pools.n; i++) {
        _cleanup_pool_def_ struct pool_def pd = {0};
        if (pool_read(p, pools.v[i], &pd, NULL) == 0 && pd.secret && strcmp(pd.secret, name) == 0)
            strv_pushf(users, "pool %s", pd.name);
    }
    if (r < 0 || (r = vm_list_names(p, &names, e)) < 0)
        return r;
    for (size_t i = 0; i < names.n; i++) {
        _cleanup_vm_def_ struct vm_def d = {0};
        if (vm_load(p, names.v[i], &d, NULL) < 0)
            continue;
        if (!d.graphics.password_secret || strcmp(d.graphics.password_secret, name) != 0)
            continue;
        _cleanup_runstate_ struct vm_runstate rs = {0};
        bool supervised = false;
        bool running = vm_observe(p, d.name, &rs, &supervised) == 0 &&
                       (supervised || (rs.state != VM_SHUTOFF && rs.state != VM_CRASHED));
        if (running)
            strv_pushf(users, "%s (running)", d.name);
    }
    return 0;
}

int secret_undefine(const struct qv_paths *p, const char *name, struct qv_err *e)
{
    int r = check_name(name, e);
    if (r < 0)
        return r;
    _cleanup_close_ int lock = lock_secrets(p, e);
    if (lock < 0)
        return lock;
    _cleanup_secret_def_ struct secret_def d = {0};
    if ((r = secret_load(p, name, &d, e)) < 0)
        return r;
    _cleanup_strv_ struct strv users = {0};
    if ((r = secret_users(p, name, &users, e)) < 0)
        return r;
    if (users.n) {
        _cleanup_free_ char *list = strv_join((const char *const *)users.v, ", ");
        bool pools = str_startswith(users.v[0], "pool ");
        return qv_fail(e, -EBUSY, "secret %s is used by %s (%s %s first)", name, list,
                       pools ? "pool undefine or redefine" : "stop", users.n == 1 ? "it" : "them");
    }
    char meta[PATH_MAX], value[PATH_MAX];
    meta_path(p, name, meta, sizeof(meta));
    secret_value_path(p, name, value, sizeof(value));
    /* the value first: a half-done undefine leaves metadata, never a value nobody lists */
    if (unlink(value) < 0 && errno != ENOENT)
        return qv_failerr(e, -errno, "%s", value);
    if (unlink(meta) < 0 && errno != ENOENT)
        return qv_failerr(e, -errno, "%s", meta);
    return 0;
}
