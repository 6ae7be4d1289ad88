/* Pool definitions: etc/qvisor/pools/NAME.json, validated like VM and network
 * definitions (JSON paths, exit 2), written atomically under a directory lock. The
 * `default` dir pool (var/lib/qvisor/images under the root) is defined on first use. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/model/model.h"
#include "launcher/model/storedef.h"

void pool_def_free(struct pool_def *d)
{
    free(d->name);
    free(d->type);
    free(d->path);
    free(d->rbd_pool);
    strv_free(&d->monitors);
    free(d->ceph_conf);
    free(d->user);
    free(d->secret);
    free(d->keyfile);
    memset(d, 0, sizeof(*d));
}

/* An absolute, normalised path: no "." or ".." component, no "//", no trailing '/'. */
static bool pool_path_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 2 || n >= PATH_MAX - 80 || s[0] != '/' || s[n - 1] == '/' || strchr(s, '\n'))
        return false;
    for (const char *c = s; *c; c++) {
        if (*c != '/')
            continue;
        const char *next = c + 1;
        size_t len = strcspn(next, "/");
        if (len == 0 || (len == 1 && next[0] == '.') || (len == 2 && next[0] == '.' && next[1] == '.'))
            return false;
    }
    return true;
}

/* HOST[:PORT]: a DNS name or IPv4 address, or [IPv6], and a port 1-65535. */
static bool monitor_valid(const char *s)
{
    const char *port = NULL;
    size_t hostlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close == s + 1 || strspn(s + 1, "0123456789abcdefABCDEF:.") != (size_t)(close - s - 1))
            return false;
        hostlen = (size_t)(close - s + 1);
        if (close[1] == ':')
            port = close + 2;
        else if (close[1])
            return false;
    } else {
        hostlen = strcspn(s, ":");
        if (!hostlen || hostlen > 253 || strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") !=
            hostlen)
            return false;
        if (s[hostlen] == ':')
            port = s + hostlen + 1;
    }
    if (!port)
        return true;
    char *end;
    long v = strtol(port, &end, 10);
    return port[0] >= '0' && port[0] <= '9' && !*end && v >= 1 && v <= 65535;
}

/* A cephx id ("libvirt", not "client.libvirt"). */
static bool ceph_user_valid(const char *s)
{
    size_t n = strlen(s);
    return n >= 1 && n <= 64 && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") == n &&
           strncmp(s, "client.", 7) != 0;
}

static int parse_rbd(struct jr *r, json_object *o, struct pool_def *d)
{
    int e;
    if ((e = jr_string(r, o, "pool", true, &d->rbd_pool)) < 0)
        return e;
    if (!name_valid(d->rbd_pool))
        return jr_key(r, "pool"), jr_fail(r, "\"%s\" is not a valid Ceph pool name", d->rbd_pool);
    json_object *arr = NULL;
    if ((e = jr_array(r, o, "monitors", &arr)) < 0)
        return e;
    size_t n = arr ? json_object_array_length(arr) : 0;
    for (size_t i = 0; i < n; i++) {
        json_object *m = json_object_array_get_idx(arr, i);
        size_t mk = jr_key(r, "monitors");
        jr_index(r, i);
        if ((e = jr_expect(r, m, json_type_string)) < 0)
            return e;
        const char *v = json_object_get_string(m);
        if (!monitor_valid(v))
            return jr_fail(r, "\"%s\" is not HOST[:PORT] (a name, an IPv4 address or [IPv6], port 1-65535)", v);
        jr_pop(r, mk);
        strv_push(&d->monitors, v);
    }
    if ((e = jr_string(r, o, "ceph_conf", false, &d->ceph_conf)) < 0)
        return e;
    if (d->ceph_conf && !pool_path_valid(d->ceph_conf))
        return jr_key(r, "ceph_conf"), jr_fail(r, "\"%s\" is not an absolute path without . or .. components",
                                             d->ceph_conf);
    if (arr && !n)
        return jr_key(r, "monitors"), jr_fail(r, "empty (name at least one monitor)");
    if (!n && !d->ceph_conf)
        return jr_key(r, "monitors"), jr_fail(r, "missing (the Ceph monitors as HOST[:PORT], or a ceph_conf naming "
                                            "mon_host)");
    if ((e = jr_string(r, o, "user", false, &d->user)) < 0)
        return e;
    if (!d->user)
        d->user = qv_xstrdup("admin");
    else if (!ceph_user_valid(d->user))
        return jr_key(r, "user"), jr_fail(r, "\"%s\" is not a cephx id (like libvirt, without \"client.\")", d->user);
    if ((e = jr_string(r, o, "secret", false, &d->secret)) < 0)
        return e;
    if (d->secret && !name_valid(d->secret))
        return jr_key(r, "secret"), jr_fail(r, "\"%s\" is not a valid secret name", d->secret);
    return 0;
}

static int parse_pool(struct jr *r, json_object *o, struct pool_def *d)
{
    static const char *const dir_keys[] = {"name", "type", "path", NULL};
    static const char *const rbd_keys[] = {"name", "type", "pool", "monitors", "ceph_conf", "user", "secret", NULL};
    int e, type = 0;
    if ((e = jr_expect(r, o, json_type_object)) < 0 || (e = jr_check_text(r, o)) < 0 ||
        (e = jr_string(r, o, "name", true, &d->name)) < 0)
        return e;
    if (!name_valid(d->name))
        return jr_key(r, "name"), jr_fail(r, "\"%s\" is not a valid name (1-64 of letters, digits, _ . -)", d->name);
    if (!json_object_object_get_ex(o, "type", NULL))
        return jr_key(r, "type"), jr_fail(r, "missing (one of dir, rbd)");
    if ((e = jr_enum(r, o, "type", storage_backend_types, &type)) < 0)
        return e;
    d->type = qv_xstrdup(storage_backend_types[type]);
    bool rbd = strcmp(d->type, "rbd") == 0;
    if ((e = jr_only_keys(r, o, rbd ? rbd_keys : dir_keys)) < 0)
        return e;
    if (rbd)
        return parse_rbd(r, o, d);
    if ((e = jr_string(r, o, "path", true, &d->path)) < 0)
        return e;
    if (!pool_path_valid(d->path))
        return jr_key(r, "path"), jr_fail(r, "\"%s\" is not an absolute directory path without . or .. components",
                                          d->path);
    if (strcmp(d->path, "/") == 0)
        return jr_key(r, "path"), jr_fail(r, "\"/\" cannot be a pool");
    return 0;
}

int pool_def_from_json(json_object *o, struct pool_def *d, struct qv_err *e)
{
    struct jr r;
    jr_init(&r, e);
    memset(d, 0, sizeof(*d));
    int err = parse_pool(&r, o, d);
    if (err < 0)
        pool_def_free(d);
    return err;
}

static void add_str(json_object *o, const char *key, const char *v)
{
    if (v)
        json_object_object_add(o, key, json_object_new_string(v));
}

json_object *pool_def_to_json(const struct pool_def *d)
{
    json_object *o = json_object_new_object();
    add_str(o, "name", d->name);
    add_str(o, "type", d->type);
    add_str(o, "path", d->path);
    add_str(o, "pool", d->rbd_pool);
    if (d->monitors.n) {
        json_object *m = json_object_new_array();
        for (size_t i = 0; i < d->monitors.n; i++)
            json_object_array_add(m, json_object_new_string(d->monitors.v[i]));
        json_object_object_add(o, "monitors", m);
    }
    add_str(o, "ceph_conf", d->ceph_conf);
    add_str(o, "user", d->user);
    add_str(o, "secret", d->secret);
    return o;
}

struct storage_pool pool_storage(const struct pool_def *d)
{
    return (struct storage_pool){
        .name = d->name, .type = d->type, .path = d->path, .rbd_pool = d->rbd_pool,
        .monitors = d->monitors.n ? (const char *const *)d->monitors.v : NULL, .ceph_conf = d->ceph_conf,
        .user = d->user, .keyfile = d->keyfile,
    };
}

/* An rbd pool's key file: the secret's value, which must be there. */
static int bind_keyfile(const struct qv_paths *p, struct pool_def *d, struct qv_err *e)
{
    if (!d->secret || d->keyfile)
        return 0;
    _cleanup_secret_def_ struct secret_def s = {0};
    int r = secret_load(p, d->secret, &s, e);
    if (r < 0)
        return qv_prefix(e, "pool %s: ", d->name);
    if (!s.has_value)
        return qv_fail(e, -ENOKEY, "pool %s: secret %s has no value yet (qvisor secret set-value %s < KEYFILE)",
                       d->name, d->secret, d->secret);
    char path[PATH_MAX];
    secret_value_path(p, d->secret, path, sizeof(path));
    d->keyfile = qv_xstrdup(path);
    return 0;
}

const struct storage_backend *pool_backend(const struct pool_def *d)
{
    return storage_backend_find(d->type);
}

/* ---- on disk ---- */

int pool_def_path(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_ETC "/pools/%s.json", name);
}

static int lock_dir(const struct qv_paths *p, struct qv_err *e)
{
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_ETC "/pools");
    return dir_lock(dir, e);
}

static int define_default(const struct qv_paths *p, struct pool_def *out, struct qv_err *e)
{
    char path[PATH_MAX];
    qv_path(p, path, sizeof(path), QV_LIB "/images");
    _cleanup_json_ json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string("default"));
    json_object_object_add(o, "type", json_object_new_string("dir"));
    json_object_object_add(o, "path", json_object_new_string(path));
    int r = pool_define(p, o, false, out, e);
    return r == -EEXIST ? pool_load(p, "default", out, e) : r;
}

int pool_read(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid pool name", name);
    char path[PATH_MAX];
    pool_def_path(p, name, path, sizeof(path));
    if (!path_exists(path)) {
        if (strcmp(name, "default") == 0)
            return define_default(p, d, e);
        return qv_fail(e, -ENOENT, "no pool named %s (qvisor pool list shows the defined ones)", name);
    }
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r < 0)
        return r;
    if ((r = pool_def_from_json(o, d, e)) < 0)
        return qv_prefix(e, "%s: ", path);
    if (strcmp(d->name, name) != 0) {
        r = qv_fail(e, -EINVAL, "%s: holds a pool named %s, not %s", path, d->name, name);
        pool_def_free(d);
    }
    return r;
}

int pool_load(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e)
{
    int r = pool_read(p, name, d, e);
    if (r == 0 && (r = bind_keyfile(p, d, e)) < 0)
        pool_def_free(d);
    return r;
}

int pool_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e)
{
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_ETC "/pools");
    return json_names_in(dir, names, e);
}

/* What the definitions on this host allow: no pool of that name yet (unless replaced),
 * no other pool in the same directory. */
static int define_allowed(const struct qv_paths *p, const struct pool_def *d, bool replace, struct qv_err *e)
{
    char path[PATH_MAX];
    pool_def_path(p, d->name, path, sizeof(path));
    if (!replace && path_exists(path))
        return qv_fail(e, -EEXIST, "pool %s is already defined (pool undefine %s first)", d->name, d->name);
    /* two pools in one directory would each list the other's volumes as their own */
    _cleanup_strv_ struct strv names = {0};
    int r = pool_list_names(p, &names, e);
    for (size_t i = 0; r == 0 && i < names.n; i++) {
        _cleanup_pool_def_ struct pool_def o = {0};
        if (strcmp(names.v[i], d->name) == 0 || pool_load(p, names.v[i], &o, NULL) < 0)
            continue;
        if (d->path && o.path && strcmp(d->path, o.path) == 0)
            r = qv_fail(e, -EEXIST, "pool %s: %s is already pool %s's directory", d->name, d->path, o.name);
    }
    return r;
}

/* The pool's place is checked (an rbd pool's cluster is asked, which may take the
 * monitors' 10 s) before the pools' lock is taken, so that no other pool verb waits
 * for it; what the definitions allow is checked before (a refusal needs no cluster)
 * and again under the lock, which the write needs. */
int pool_define(const struct qv_paths *p, json_object *o, bool replace, struct pool_def *out, struct qv_err *e)
{
    struct pool_def d;
    int r = pool_def_from_json(o, &d, e);
    if (r < 0)
        return r;
    if ((r = bind_keyfile(p, &d, e)) == 0 && (r = define_allowed(p, &d, replace, e)) == 0) {
        struct storage_pool sp = pool_storage(&d);   /* after bind_keyfile: it names the key */
        r = pool_backend(&d)->check(&sp, e);
    }
    if (r < 0) {
        pool_def_free(&d);
        return r;
    }
    _cleanup_close_ int lock = lock_dir(p, e);
    if ((r = lock < 0 ? lock : define_allowed(p, &d, replace, e)) == 0) {
        char path[PATH_MAX];
        pool_def_path(p, d.name, path, sizeof(path));
        _cleanup_json_ json_object *norm = pool_def_to_json(&d);
        r = json_write_file_atomic(path, norm, 0644, e);
    }
    if (r == 0 && out)
        *out = d;
    else
        pool_def_free(&d);
    return r;
}

int pool_undefine(const struct qv_paths *p, const char *name, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid pool name", name);
    _cleanup_strv_ struct strv users = {0};
    int r = pool_users(p, name, &users, e);
    if (r < 0)
        return r;
    if (users.n) {
        _cleanup_free_ char *who = strv_join((const char *const *)users.v, ", ");
        return qv_fail(e, -EBUSY, "pool %s holds volumes of VM %s (undefine them or move their disks first)", name, who);
    }
    _cleanup_close_ int lock = lock_dir(p, e);
    if (lock < 0)
        return lock;
    char path[PATH_MAX];
    pool_def_path(p, name, path, sizeof(path));
    if (unlink(path) < 0)
        return errno == ENOENT ? qv_fail(e, -ENOENT, "no pool named %s", name) : qv_failerr(e, -errno, "%s", path);
    return 0;
}

/* Loads a pool and checks its place is usable: what every volume verb starts with. */
int pool_open(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e)
{
    int r = pool_load(p, name, d, e);
    if (r < 0)
        return r;
    /* an rbd pool's every operation connects and reports what a check would: one
     * connection per verb, not two */
    if (strcmp(d->type, "rbd") == 0)
        return 0;
    struct storage_pool sp = pool_storage(d);
    const struct storage_backend *b = pool_backend(d);
    if ((r = b->check(&sp, e)) < 0)
        pool_def_free(d);
    return r;
}
