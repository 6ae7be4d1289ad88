/* Volumes as the verbs see them: "POOL/NAME" references, who uses a volume (VMs whose
 * disks name it or hold it somewhere in their backing chain, volumes built on it), and
 * the policy around changes: a volume a VM uses is not deleted or shrunk without
 * --force, a volume others are built on is never deleted. Image work itself is the
 * pool backend's (storage/). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/model/model.h"
#include "launcher/model/storedef.h"

int vol_ref_parse(const char *s, struct vol_ref *out, struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    const char *slash = s ? strchr(s, '/') : NULL;
    if (!slash || strchr(slash + 1, '/') || (size_t)(slash - s) >= sizeof(out->pool))
        return qv_fail(e, -EINVAL, "\"%s\" is not a volume reference (POOL/NAME, like default/web1)", s ? s : "");
    memcpy(out->pool, s, (size_t)(slash - s));
    snprintf(out->name, sizeof(out->name), "%s", slash + 1);
    if (!name_valid(out->pool))
        return qv_fail(e, -EINVAL, "\"%s\": \"%s\" is not a valid pool name", s, out->pool);
    if (strlen(slash + 1) >= sizeof(out->name) || !storage_vol_name_valid(out->name))
        return qv_fail(e, -EINVAL, "\"%s\": \"%s\" is not a valid volume name (1-64 of letters, digits, _ . -, "
                       "not starting with . or -)", s, slash + 1);
    return 0;
}

int vol_lookup(const struct qv_paths *p, const char *refs, struct vol_ref *ref, struct pool_def *pd,
               struct storage_vol_info *vi, struct qv_err *e)
{
    int r = vol_ref_parse(refs, ref, e);
    if (r < 0)
        return r;
    r = pool_open(p, ref->pool, pd, e);
    if (r < 0)
        return r;
    struct storage_pool sp = pool_storage(pd);
    if ((r = pool_backend(pd)->vol_info(&sp, ref->name, vi, e)) < 0)
        pool_def_free(pd);
    return r;
}

void vol_found_free(struct vol_found *v)
{
    pool_def_free(&v->pd);
}

int vol_find(const struct qv_paths *p, const char *refs, struct vol_found *v, struct qv_err *e)
{
    return vol_lookup(p, refs, &v->ref, &v->pd, &v->vi, e);
}

/* vol_find for a verb whose backend call looks the volume up itself: an rbd pool's
 * volume is named "rbd:CEPHPOOL/NAME" from the definitions alone (no cluster is asked
 * here; the one connection of the verb says whether the image exists), other pools'
 * volumes are looked up as vol_find does. */
static int vol_find_named(const struct qv_paths *p, const char *refs, struct vol_found *v, struct qv_err *e)
{
    int r = vol_ref_parse(refs, &v->ref, e);
    if (r < 0 || (r = pool_open(p, v->ref.pool, &v->pd, e)) < 0)
        return r;
    if (!v->pd.rbd_pool) {
        struct storage_pool sp = pool_storage(&v->pd);
        return pool_backend(&v->pd)->vol_info(&sp, v->ref.name, &v->vi, e);
    }
    memset(&v->vi, 0, sizeof(v->vi));
    snprintf(v->vi.name, sizeof(v->vi.name), "%s", v->ref.name);
    snprintf(v->vi.path, sizeof(v->vi.path), "rbd:%s/%s", v->pd.rbd_pool, v->ref.name);
    v->vi.format = STORAGE_FORMAT_RAW;
    return 0;
}

int vol_resolve(const struct qv_paths *p, const char *ref, char *path, size_t pathlen, enum disk_format *fmt,
                struct qv_err *e)
{
    struct vol_ref v;
    _cleanup_pool_def_ struct pool_def pd = {0};
    struct storage_vol_info vi;
    int r = vol_lookup(p, ref, &v, &pd, &vi, e);
    if (r < 0)
        return r;
    snprintf(path, pathlen, "%s", vi.path);
    if (fmt)
        *fmt = vi.format == STORAGE_FORMAT_QCOW2 ? FORMAT_QCOW2 : FORMAT_RAW;
    return 0;
}

int vol_resolve_named(const struct qv_paths *p, const char *ref, char *path, size_t pathlen, enum disk_format *fmt,
                      struct qv_err *e)
{
    struct vol_ref v;
    _cleanup_pool_def_ struct pool_def pd = {0};
    int r;
    if ((r = vol_ref_parse(ref, &v, e)) < 0 || (r = pool_read(p, v.pool, &pd, e)) < 0)
        return r;
    if (!pd.rbd_pool)
        return vol_resolve(p, ref, path, pathlen, fmt, e);
    if (snprintf(path, pathlen, "rbd:%s/%s", pd.rbd_pool, v.name) >= (int)pathlen)
        return qv_fail(e, -ENAMETOOLONG, "volume %s: name too long", ref);
    if (fmt)
        *fmt = FORMAT_RAW;
    return 0;
}

int vol_new_path(const struct qv_paths *p, const char *refs, char *path, size_t pathlen, struct qv_err *e)
{
    struct vol_ref ref;
    _cleanup_pool_def_ struct pool_def pd = {0};
    int r;
    if ((r = vol_ref_parse(refs, &ref, e)) < 0 || (r = pool_open(p, ref.pool, &pd, e)) < 0)
        return r;
    if (strcmp(pd.type, "dir") != 0)
        return qv_fail(e, -EOPNOTSUPP, "%s: pool %s is of type %s; a running copy goes into a dir pool or a file",
                       refs, ref.pool, pd.type);
    struct storage_pool sp = pool_storage(&pd);
    struct storage_vol_info vi;
    struct qv_err ie = {0};
    if (pool_backend(&pd)->vol_info(&sp, ref.name, &vi, &ie) == 0)
        return qv_fail(e, -EEXIST, "volume %s exists already (choose a new name)", refs);
    if (snprintf(path, pathlen, "%s/%s", pd.path, ref.name) >= (int)pathlen)
        return qv_fail(e, -ENAMETOOLONG, "%s: path too long", refs);
    return 0;
}

/* ---- who uses what ---- */
struct file_id {
    dev_t dev;
    ino_t ino;
};

static bool file_id_of(const char *path, struct file_id *id)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return false;
    *id = (struct file_id){st.st_dev, st.st_ino};
    return true;
}

/* Whether the chain from `top` holds the file `id`, at depth >= min_depth (0: the top). */
static bool chain_holds(const char *top, const struct file_id *id, size_t min_depth)
{
    struct storage_chain c;
    struct qv_err e = {0};
    if (storage_chain_open(top, STORAGE_FORMAT_PROBE, O_RDONLY, &c, &e) < 0)
        return false;
    bool found = false;
    for (size_t i = min_depth; !found && i < c.n; i++) {
        struct stat st;
        found = fstat(c.layers[i].fd, &st) == 0 && st.st_dev == id->dev && st.st_ino == id->ino;
    }
    storage_chain_close(&c);
    return found;
}

/* The image a disk of a definition names: its file, or its volume's path. A volume of
 * an rbd pool is "rbd:CEPHPOOL/NAME", from the pool's definition alone (no cluster is
 * asked: a look at who uses what must not wait for monitors). */
static bool disk_image(const struct qv_paths *p, const struct vm_disk *k, char *out, size_t outlen)
{
    struct qv_err e = {0};
    if (k->file && !k->volume)
        return snprintf(out, outlen, "%s", k->file) < (int)outlen;
    if (!k->volume)
        return false;
    struct vol_ref ref;
    _cleanup_pool_def_ struct pool_def pd = {0};
    if (vol_ref_parse(k->volume, &ref, &e) == 0 && pool_read(p, ref.pool, &pd, &e) == 0 && pd.rbd_pool)
        return snprintf(out, outlen, "rbd:%s/%s", pd.rbd_pool, ref.name) < (int)outlen;
    return vol_resolve(p, k->volume, out, outlen, NULL, &e) == 0;
}

/* What a running VM holds beyond its definition, from its supervisor's records in
 * state.json: disks hotplugged without --persistent ("hotplug") and CD-ROM media
 * changed live ("media"). */
typedef bool vol_match_fn(const char *image, const char *volume, const void *arg);

static bool live_holds(const struct vm_runstate *rs, vol_match_fn *match, const void *arg)
{
    json_object *a, *v;
    if (!rs->resources)
        return false;
    if (json_object_object_get_ex(rs->resources, "hotplug", &a) && json_object_is_type(a, json_type_array))
        for (size_t i = 0; i < json_object_array_length(a); i++) {
            json_object *h = json_object_array_get_idx(a, i);
            json_object *vol = NULL;
            json_object_object_get_ex(h, "volume", &vol);
            if (json_object_object_get_ex(h, "kind", &v) && strcmp(json_object_get_string(v), "disk") == 0 &&
                json_object_object_get_ex(h, "file", &v) && json_object_get_string(v)[0] &&
                match(json_object_get_string(v), vol ? json_object_get_string(vol) : NULL, arg))
                return true;
        }
    if (json_object_object_get_ex(rs->resources, "media", &a) && json_object_is_type(a, json_type_array))
        for (size_t i = 0; i < json_object_array_length(a); i++)
            if (json_object_object_get_ex(json_object_array_get_idx(a, i), "file", &v) &&
                json_object_get_string(v)[0] && match(json_object_get_string(v), NULL, arg))
                return true;
    return false;
}

/* Calls `hit` for every VM one of whose disks or CD-ROMs has a layer for which
 * `match` holds: in its definition, or, while it runs, attached live. */
static int for_vm_disks(const struct qv_paths *p, vol_match_fn *match, const void *arg, struct strv *users,
                        struct qv_err *e)
{
    _cleanup_strv_ struct strv names = {0};
    int r = vm_list_names(p, &names, e);
    if (r < 0)
        return r;
    for (size_t i = 0; i < names.n; i++) {
        _cleanup_vm_def_ struct vm_def d = {0};
        if (vm_load(p, names.v[i], &d, NULL) < 0)
            continue;
        struct vm_runstate rs;
        bool supervised, running = false;
        if (vm_observe(p, d.name, &rs, &supervised) == 0) {
            running = rs.state != VM_SHUTOFF && rs.state != VM_CRASHED;
        } else {
            memset(&rs, 0, sizeof(rs));
        }
        bool hit = running && live_holds(&rs, match, arg);
        runstate_free(&rs);
        for (size_t k = 0; !hit && k < d.ndisks; k++) {
            char image[PATH_MAX];
            hit = disk_image(p, &d.disks[k], image, sizeof(image)) && match(image, d.disks[k].volume, arg);
        }
        for (size_t k = 0; !hit && k < d.ncdroms; k++)
            hit = d.cdroms[k].file && match(d.cdroms[k].file, NULL, arg);
        if (hit)
            strv_pushf(users, "%s (%s)", d.name, running ? "running" : "defined");
    }
    return 0;
}

static bool match_file(const char *image, const char *volume, const void *arg)
{
    (void)volume;
    return chain_holds(image, arg, 0);
}

/* A network volume has no inode: it is the same when its reference or its name is. */
struct net_match {
    char ref[160];
    const char *path;
};

static bool match_net(const char *image, const char *volume, const void *arg)
{
    const struct net_match *m = arg;
    return (volume && strcmp(volume, m->ref) == 0) || strcmp(image, m->path) == 0;
}

int vol_users(const struct qv_paths *p, const struct vol_ref *ref, const char *path, struct strv *users,
              struct qv_err *e)
{
    if (str_startswith(path, "rbd:")) {
        struct net_match m = {.path = path};
        if (ref)
            snprintf(m.ref, sizeof(m.ref), "%s/%s", ref->pool, ref->name);
        return for_vm_disks(p, match_net, &m, users, e);
    }
    struct file_id id;
    if (!file_id_of(path, &id))
        return 0;
    return for_vm_disks(p, match_file, &id, users, e);
}

struct pool_match {
    const char *name;
    const char *dir;    /* NULL: not a dir pool */
};

static bool match_pool(const char *image, const char *volume, const void *arg)
{
    const struct pool_match *m = arg;
    size_t n = strlen(m->name);
    if (volume && strncmp(volume, m->name, n) == 0 && volume[n] == '/')
        return true;
    if (!m->dir)
        return false;
    n = strlen(m->dir);
    return strncmp(image, m->dir, n) == 0 && image[n] == '/' && !strchr(image + n + 1, '/');
}

int pool_users(const struct qv_paths *p, const char *pool, struct strv *users, struct qv_err *e)
{
    _cleanup_pool_def_ struct pool_def pd = {0};
    char path[PATH_MAX];
    pool_def_path(p, pool, path, sizeof(path));
    if (!path_exists(path))
        return qv_fail(e, -ENOENT, "no pool named %s", pool);
    if (pool_read(p, pool, &pd, e) < 0)
        return 0;   /* a broken definition holds nothing: let it go */
    struct pool_match m = {pd.name, pd.path};
    return for_vm_disks(p, match_pool, &m, users, e);
}

int vol_dependents(const struct qv_paths *p, const char *path, struct strv *deps, struct qv_err *e)
{
    struct file_id id;
    if (!file_id_of(path, &id))
        return 0;
    _cleanup_strv_ struct strv pools = {0};
    int r = pool_list_names(p, &pools, e);
    if (r < 0)
        return r;
    if (!strv_contains((const char *const *)pools.v, "default"))
        strv_push(&pools, "default");
    for (size_t i = 0; i < pools.n; i++) {
        _cleanup_pool_def_ struct pool_def pd = {0};
        _cleanup_strv_ struct strv vols = {0};
        /* only files have backing files: an rbd pool is not asked (its cluster may be slow to answer) */
        if (pool_read(p, pools.v[i], &pd, NULL) < 0 || !pd.path)
            continue;
        struct storage_pool sp = pool_storage(&pd);
        if (pool_backend(&pd)->list(&sp, &vols, NULL) < 0)
            continue;
        for (size_t k = 0; k < vols.n; k++) {
            struct storage_vol_info vi;
            if (pool_backend(&pd)->vol_info(&sp, vols.v[k], &vi, NULL) == 0 && vi.backing[0] &&
                chain_holds(vi.path, &id, 1))
                strv_pushf(deps, "%s/%s", pd.name, vols.v[k]);
        }
    }
    return 0;
}

/* ---- changes, with their refusals ---- */
static int refuse_users(const struct qv_paths *p, const struct vol_ref *ref, const char *path, const char *what,
                        struct qv_err *e)
{
    _cleanup_strv_ struct strv users = {0};
    int r = vol_users(p, ref, path, &users, e);
    if (r < 0 || !users.n)
        return r;
    _cleanup_free_ char *who = strv_join((const char *const *)users.v, ", ");
    return qv_fail(e, -EBUSY, "volume %s/%s is used by VM %s; %s it anyway with --force", ref->pool, ref->name, who,
                   what);
}

int volume_delete(const struct qv_paths *p, const char *refs, unsigned flags, struct qv_err *e)
{
    _cleanup_vol_found_ struct vol_found v = {0};
    int r = vol_find_named(p, refs, &v, e);
    if (r < 0)
        return r;
    _cleanup_strv_ struct strv deps = {0};
    if ((r = vol_dependents(p, v.vi.path, &deps, e)) < 0)
        return r;
    if (deps.n) {
        _cleanup_free_ char *who = strv_join((const char *const *)deps.v, ", ");
        return qv_fail(e, -EBUSY, "volume %s is the backing file of %s; delete those first (or vol clone them "
                       "into standalone copies)", refs, who);
    }
    struct storage_pool sp = pool_storage(&v.pd);
    if (!(flags & VOL_DELETE_FORCE) && (r = refuse_users(p, &v.ref, v.vi.path, "delete", e)) < 0) {
        /* an rbd volume was named without asking its cluster: one that is not there is
         * "no volume" (exit 3), not "used by VM" (exit 4); only a refusal asks */
        struct storage_vol_info vi;
        struct qv_err missing = {0};
        if (r == -EBUSY && v.pd.rbd_pool && pool_backend(&v.pd)->vol_info(&sp, v.ref.name, &vi, &missing) == -ENOENT)
            *e = missing, r = -ENOENT;
        return r;
    }
    return pool_backend(&v.pd)->vol_delete(&sp, v.ref.name,
                                           flags & VOL_DELETE_SNAPSHOTS ? STORAGE_DELETE_SNAPSHOTS : 0, e);
}

/* "10G" or "+2G" (relative to `now`). */
static int parse_new_size(const char *s, uint64_t now, uint64_t *out, struct qv_err *e)
{
    bool rel = s[0] == '+';
    uint64_t v;
    if (parse_size(s + rel, &v) < 0 || (!rel && v == 0))
        return qv_fail(e, -EINVAL, "\"%s\" is not a size (like 20G, or +5G to grow by that much)", s);
    *out = rel ? now + v : v;
    return 0;
}

int volume_resize(const struct qv_paths *p, const char *refs, const char *size, bool allow_shrink, bool force,
                  uint64_t *new_size, struct qv_err *e)
{
    struct vol_ref ref;
    _cleanup_pool_def_ struct pool_def pd = {0};
    struct storage_vol_info vi;
    int r;
    if ((r = vol_lookup(p, refs, &ref, &pd, &vi, e)) < 0 ||
        (r = parse_new_size(size, vi.capacity, new_size, e)) < 0)
        return r;
    bool shrink = *new_size < vi.capacity;
    if (shrink && !allow_shrink) {
        char a[32], b[32];
        format_size(vi.capacity, a, sizeof(a));
        format_size(*new_size, b, sizeof(b));
        return qv_fail(e, -EINVAL, "volume %s: %s is smaller than its %s; shrinking loses data past the new end "
                       "(--allow-shrink if that is what you want)", refs, b, a);
    }
    if (shrink && !force && (r = refuse_users(p, &ref, vi.path, "shrink", e)) < 0)
        return r;
    if (*new_size == vi.capacity)
        return 0;
    struct storage_pool sp = pool_storage(&pd);
    return pool_backend(&pd)->vol_resize(&sp, ref.name, *new_size, shrink, e);
}

/* A backing given as POOL/VOL or as an absolute file path. */
static int backing_resolve(const struct qv_paths *p, const char *b, char *path, size_t pathlen,
                           enum storage_format *fmt, struct qv_err *e)
{
    int r;
    if (b[0] != '/') {
        enum disk_format df;
        if ((r = vol_resolve(p, b, path, pathlen, &df, e)) < 0)
            return qv_prefix(e, "--backing: ");
        *fmt = df == FORMAT_QCOW2 ? STORAGE_FORMAT_QCOW2 : STORAGE_FORMAT_RAW;
        return 0;
    }
    snprintf(path, pathlen, "%s", b);
    if ((r = storage_detect_format(b, fmt, e)) < 0)
        return qv_prefix(e, "--backing: ");
    return 0;
}

int volume_create(const struct qv_paths *p, const char *refs, const struct volume_create_args *a, struct qv_err *e)
{
    struct vol_ref ref;
    _cleanup_pool_def_ struct pool_def pd = {0};
    int r;
    if ((r = vol_ref_parse(refs, &ref, e)) < 0 || (r = pool_open(p, ref.pool, &pd, e)) < 0)
        return r;
    struct storage_vol_spec s = {.size = a->size, .format = a->format, .prealloc = a->prealloc};
    if (s.format == STORAGE_FORMAT_PROBE)   /* the pool's own: RBD images are raw */
        s.format = strcmp(pd.type, "rbd") == 0 ? STORAGE_FORMAT_RAW : STORAGE_FORMAT_QCOW2;
    char backing[PATH_MAX];
    if (a->backing) {
        if ((r = backing_resolve(p, a->backing, backing, sizeof(backing), &s.backing_format, e)) < 0)
            return r;
        s.backing = backing;
    } else if (!a->size) {
        return qv_fail(e, -EINVAL, "vol create %s: --size is needed (or --backing, whose size it then takes)", refs);
    }
    struct storage_pool sp = pool_storage(&pd);
    return pool_backend(&pd)->vol_create(&sp, ref.name, &s, e);
}

int volume_img(const struct qv_paths *p, const char *refs, const char *secret_id, struct storage_img *out,
               struct qv_err *e)
{
    struct vol_ref ref;
    _cleanup_pool_def_ struct pool_def pd = {0};
    int r;
    if ((r = vol_ref_parse(refs, &ref, e)) < 0 || (r = pool_open(p, ref.pool, &pd, e)) < 0)
        return r;
    struct storage_pool sp = pool_storage(&pd);
    return pool_backend(&pd)->vol_img(&sp, ref.name, secret_id, out, e);
}

int volume_copy_in(const struct qv_paths *p, const char *refs, const struct storage_img *src,
                   enum storage_format format, const struct storage_progress *prog, struct qv_err *e)
{
    struct vol_ref ref;
    _cleanup_pool_def_ struct pool_def pd = {0};
    int r;
    if ((r = vol_ref_parse(refs, &ref, e)) < 0 || (r = pool_open(p, ref.pool, &pd, e)) < 0)
        return r;
    struct storage_pool sp = pool_storage(&pd);
    return pool_backend(&pd)->vol_copy_in(&sp, ref.name, src, format, prog, e);
}

int volume_clone_cow(const struct qv_paths *p, const char *srcref, const char *snap, const char *dstref,
                     bool *snap_made, struct qv_err *e)
{
    _cleanup_vol_found_ struct vol_found v = {0};
    struct vol_ref dref;
    _cleanup_pool_def_ struct pool_def dpd = {0};
    int r;
    if ((r = vol_find_named(p, srcref, &v, e)) < 0 || (r = vol_ref_parse(dstref, &dref, e)) < 0 ||
        (r = pool_open(p, dref.pool, &dpd, e)) < 0)
        return r;
    const struct storage_backend *b = pool_backend(&v.pd);
    if (!b->vol_clone_cow)
        return qv_fail(e, -EINVAL, "volume %s: --from-snapshot clones RBD volumes; a %s pool's volume is cloned "
                       "in full (leave --from-snapshot out) or given an overlay (vol create --backing)", srcref,
                       v.pd.type);
    struct storage_pool sp = pool_storage(&v.pd), dp = pool_storage(&dpd);
    return b->vol_clone_cow(&sp, v.ref.name, snap, &dp, dref.name, snap_made, e);
}

int volume_export(const struct qv_paths *p, const char *refs, const char *dest, bool have_format,
                  enum storage_format format, const struct storage_progress *prog, struct qv_err *e)
{
    _cleanup_vol_found_ struct vol_found v = {0};
    int r = vol_find(p, refs, &v, e);
    if (r < 0)
        return r;
    struct stat st;
    if (lstat(dest, &st) == 0)
        return qv_fail(e, -EEXIST, "%s already exists (remove it first, or choose another name)", dest);
    struct storage_pool sp = pool_storage(&v.pd);
    struct storage_img src, dst;
    if ((r = pool_backend(&v.pd)->vol_img(&sp, v.ref.name, "qv-src", &src, e)) < 0)
        return r;
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.part-%d", dest, (int)getpid()) >= (int)sizeof(tmp))
        return qv_fail(e, -ENAMETOOLONG, "%s: path too long", dest);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s", tmp);
    close(fd);
    storage_img_file(&dst, tmp, have_format ? format : v.vi.format);
    if ((r = storage_convert(&src, &dst, false, prog, e)) < 0) {
        unlink(tmp);
        return r;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dest, RENAME_NOREPLACE) < 0) {
        r = -errno;
        unlink(tmp);
        return qv_failerr(e, r, "%s", dest);
    }
    chmod(dest, 0644);
    return 0;
}

/* The guest's view of the volume as raw bytes into fd: the file itself when it is
 * raw and alone, else a raw conversion under a temporary name in `tmpdir`. */
int volume_export_raw_fd(const struct qv_paths *p, const char *refs, int out, const struct storage_progress *prog,
                         struct qv_err *e)
{
    _cleanup_vol_found_ struct vol_found v = {0};
    int r = vol_find(p, refs, &v, e);
    if (r < 0)
        return r;
    struct storage_pool sp = pool_storage(&v.pd);
    if (pool_backend(&v.pd)->vol_stream)
        return pool_backend(&v.pd)->vol_stream(&sp, v.ref.name, out, prog, e);
    char tmp[PATH_MAX] = "";
    const char *src = v.vi.path;
    if (v.vi.format != STORAGE_FORMAT_RAW || v.vi.backing[0]) {
        snprintf(tmp, sizeof(tmp), "%s/.export-%s.part-%d", v.pd.path, v.ref.name, (int)getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
            return qv_failerr(e, -errno, "%s", tmp);
        close(fd);
        struct storage_img si, di;
        storage_img_file(&si, v.vi.path, v.vi.format);
        storage_img_file(&di, tmp, STORAGE_FORMAT_RAW);
        if ((r = storage_convert(&si, &di, false, prog, e)) < 0) {
            unlink(tmp);
            return r;
        }
        src = tmp;
    }
    _cleanup_close_ int in = open(src, O_RDONLY | O_CLOEXEC);
    if (tmp[0])
        unlink(tmp);
    if (in < 0)
        return qv_failerr(e, -errno, "%s", src);
    char buf[1 << 16];
    for (;;) {
        if (prog && prog->cancel && *prog->cancel)
            return qv_fail(e, -ECANCELED, "export of %s: interrupted", refs);
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return qv_failerr(e, -errno, "%s", src);
        if (n == 0)
            return 0;
        if ((r = write_all(out, buf, (size_t)n)) < 0)
            return qv_failerr(e, r, "export of %s: writing", refs);
    }
}

/* ---- disks at start ---- */
static void disk_forget_layers(struct vm_disk *k)
{
    for (size_t i = 0; i < k->nbacking; i++)
        free(k->backing[i].path);
    free(k->backing);
    k->backing = NULL;
    k->nbacking = 0;
}

void vm_disk_rbd_free(struct vm_disk_rbd *r)
{
    if (!r)
        return;
    free(r->pool_name);
    free(r->rbd_pool);
    free(r->image);
    free(r->user);
    free(r->keyfile);
    strv_free(&r->servers);
    strv_free(&r->addrs);
    free(r);
}

/* A volume of an rbd pool: the image is there, and QEMU's rbd driver gets what it
 * needs to open it over the network (one connection to the cluster, bounded). */
static int resolve_rbd(const struct vol_ref *ref, const struct pool_def *pd, struct vm_disk *k, struct qv_err *e)
{
    if (k->snapshot)
        return qv_fail(e, -EINVAL, "volume %s: \"snapshot\": true (a throw-away overlay) is for file images; an rbd "
                       "volume is opened by QEMU over the network (take a snapshot of the VM instead)", k->volume);
    struct storage_pool sp = pool_storage(pd);
    struct storage_rbd_disk info;
    struct qv_err ve = {0};
    int r = storage_rbd_disk_info(&sp, ref->name, &info, &ve);
    if (r < 0)
        return qv_fail(e, r, "volume %s: %s", k->volume, ve.msg);
    struct vm_disk_rbd *rb = qv_xcalloc(1, sizeof(*rb));
    rb->pool_name = qv_xstrdup(pd->name);
    rb->rbd_pool = qv_xstrdup(pd->rbd_pool);
    rb->image = qv_xstrdup(ref->name);
    rb->user = qv_xstrdup(pd->user ? pd->user : "admin");
    rb->keyfile = pd->keyfile ? qv_xstrdup(pd->keyfile) : NULL;
    rb->servers = info.servers;
    rb->addrs = info.addrs;
    vm_disk_rbd_free(k->rbd);
    k->rbd = rb;
    free(k->file);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "rbd:%s/%s", pd->rbd_pool, ref->name);
    k->file = qv_xstrdup(path);
    k->format = FORMAT_RAW;
    return 0;
}

int vm_resolve_disk(const struct qv_paths *p, struct vm_disk *k, struct qv_err *e)
{
    int r;
    vm_disk_rbd_free(k->rbd);
    k->rbd = NULL;
    if (k->volume) {
        struct vol_ref ref;
        _cleanup_pool_def_ struct pool_def pd = {0};
        struct qv_err ve = {0};
        if ((r = vol_ref_parse(k->volume, &ref, &ve)) < 0 || (r = pool_load(p, ref.pool, &pd, &ve)) < 0)
            return qv_fail(e, r, "volume %s: %s", k->volume, ve.msg);
        if (strcmp(pd.type, "rbd") == 0) {
            disk_forget_layers(k);
            k->dev = 0;
            k->ino = 0;
            return resolve_rbd(&ref, &pd, k, e);
        }
    }
    if (k->volume) {
        char path[PATH_MAX];
        enum disk_format fmt;
        struct qv_err ve = {0};
        if ((r = vol_resolve(p, k->volume, path, sizeof(path), &fmt, &ve)) < 0)
            return qv_fail(e, r, "volume %s: %s", k->volume, ve.msg);
        free(k->file);
        k->file = qv_xstrdup(path);
        k->format = fmt;    /* a volume's format is what its header says now */
    }
    disk_forget_layers(k);
    k->dev = 0;
    k->ino = 0;
    if (k->format != FORMAT_QCOW2)
        return 0;
    /* every layer is opened and checked now, so that a broken chain is refused
     * before QEMU starts, naming the layer and the image that points at it */
    struct storage_chain c;
    if ((r = storage_chain_open(k->file, STORAGE_FORMAT_QCOW2, O_RDONLY, &c, e)) < 0)
        return r;
    struct stat st;
    for (size_t i = 0; i < c.n; i++) {
        if (fstat(c.layers[i].fd, &st) < 0) {
            r = qv_failerr(e, -errno, "%s", c.layers[i].path);
            disk_forget_layers(k);
            storage_chain_close(&c);
            return r;
        }
        if (i == 0) {
            k->dev = st.st_dev;
            k->ino = st.st_ino;
            continue;
        }
        if (i == 1) {
            k->nbacking = c.n - 1;
            k->backing = qv_xcalloc(k->nbacking, sizeof(*k->backing));
        }
        struct vm_disk_layer *l = &k->backing[i - 1];
        l->path = qv_xstrdup(c.layers[i].path);
        l->format = c.layers[i].format == STORAGE_FORMAT_QCOW2 ? FORMAT_QCOW2 : FORMAT_RAW;
        l->dev = st.st_dev;
        l->ino = st.st_ino;
    }
    storage_chain_close(&c);
    return 0;
}

int vm_disk_check_fd(const struct vm_disk *k, size_t layer, int fd, struct qv_err *e)
{
    if (layer > k->nbacking)
        return qv_fail(e, -EINVAL, "disk %s: no backing layer %zu", k->file, layer);
    const struct vm_disk_layer *l = layer ? &k->backing[layer - 1] : NULL;
    dev_t dev = l ? l->dev : k->dev;
    ino_t ino = l ? l->ino : k->ino;
    if (!ino)
        return 0;   /* not a checked chain (a raw disk): nothing to compare with */
    struct stat st;
    if (fstat(fd, &st) < 0)
        return qv_failerr(e, -errno, "disk %s", k->file);
    if (st.st_dev == dev && st.st_ino == ino)
        return 0;
    if (l)
        return qv_fail(e, -ESTALE, "disk %s: backing layer %s was replaced since its chain was checked (start "
                       "again: the new one is checked then)", k->file, l->path);
    return qv_fail(e, -ESTALE, "disk %s was replaced since its chain was checked (start again: the new one is "
                   "checked then)", k->file);
}

int vm_resolve_disks(const struct qv_paths *p, struct vm_def *d, struct qv_err *e)
{
    STORAGE_RBD_HELD;   /* the rbd disks of one pool: one connection */
    for (size_t i = 0; i < d->ndisks; i++) {
        int r = vm_resolve_disk(p, &d->disks[i], e);
        if (r < 0)
            return qv_prefix(e, "%s: disks[%zu]: ", d->name, i);
    }
    return 0;
}

int vm_volumes_removable(const struct qv_paths *p, const struct vm_def *d, struct strv *refs, struct qv_err *e)
{
    char own[80];
    snprintf(own, sizeof(own), "%s (", d->name);
    for (size_t i = 0; i < d->ndisks; i++) {
        const char *ref = d->disks[i].volume;
        if (!ref || strv_contains((const char *const *)refs->v, ref))
            continue;
        _cleanup_vol_found_ struct vol_found v = {0};
        struct qv_err le = {0};
        int r = vol_find(p, ref, &v, &le);
        if (r == -ENOENT)
            continue;   /* gone already: nothing to remove */
        if (r < 0)
            return qv_fail(e, r, "disks[%zu]: %s", i, le.msg);
        _cleanup_strv_ struct strv users = {0}, deps = {0};
        if ((r = vol_users(p, &v.ref, v.vi.path, &users, e)) < 0 || (r = vol_dependents(p, v.vi.path, &deps, e)) < 0)
            return r;
        for (size_t k = 0; k < users.n; k++)
            if (!str_startswith(users.v[k], own))
                return qv_fail(e, -EBUSY, "volume %s is used by VM %s too; undefine without --remove-storage, or "
                               "detach it there first", ref, users.v[k]);
        if (deps.n)
            return qv_fail(e, -EBUSY, "volume %s is the backing file of %s; undefine without --remove-storage", ref,
                           deps.v[0]);
        strv_push(refs, ref);
    }
    return 0;
}
