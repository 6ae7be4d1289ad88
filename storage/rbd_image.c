/* The rbd backend's image work: snapshots, clones and watchers (what a delete is refused
 * for), copies into and out of pools through qemu-img (the key read by qemu-img from the
 * secret's 0600 file, never in argv), raw reads, and the facts vol info shows. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "storage/rbd_internal.h"

/* ---- snapshots, clones, watchers ---- */
struct snap_list {
    rbd_snap_info_t *v;
    int n;
};

static void snap_list_free(struct snap_list *l)
{
    if (l->v) {
        sym_rbd_snap_list_end(l->v);
        free(l->v);
    }
    *l = (struct snap_list){0};
}

static int snaps_of(rbd_image_t img, struct snap_list *l)
{
    int max = 16, r;
    *l = (struct snap_list){0};
    for (;;) {
        l->v = qv_xcalloc((size_t)max + 1, sizeof(*l->v));
        if ((r = sym_rbd_snap_list(img, l->v, &max)) != -ERANGE)
            break;
        free(l->v);
        l->v = NULL;
    }
    if (r < 0) {
        free(l->v);
        l->v = NULL;
        return r;
    }
    l->n = r;
    return 0;
}

/* "POOL/IMAGE" of the clones made from snapshot `snap` of `name`. */
static int clones_of(struct rbd_conn *c, const char *name, const char *snap, struct strv *out)
{
    rbd_image_t img;
    int r = sym_rbd_open_read_only(c->io, name, &img, snap);
    if (r < 0)
        return r;
    size_t max = 16;
    rbd_linked_image_spec_t *v = NULL;
    for (;;) {
        v = qv_xcalloc(max, sizeof(*v));
        if ((r = sym_rbd_list_children3(img, v, &max)) != -ERANGE)
            break;
        free(v);
    }
    if (r >= 0) {
        for (size_t i = 0; i < max; i++)
            strv_pushf(out, "%s/%s%s", v[i].pool_name, v[i].image_name, v[i].trash ? " (in the trash)" : "");
        sym_rbd_linked_image_spec_list_cleanup(v, max);
        r = 0;
    }
    free(v);
    sym_rbd_close(img);
    return r;
}

static int watchers_of(rbd_image_t img, struct strv *out)
{
    size_t max = 8;
    rbd_image_watcher_t *v = NULL;
    int r;
    for (;;) {
        v = qv_xcalloc(max, sizeof(*v));
        if ((r = sym_rbd_watchers_list(img, v, &max)) != -ERANGE)
            break;
        free(v);
    }
    if (r >= 0) {
        for (size_t i = 0; i < max; i++)
            strv_push(out, v[i].addr);
        sym_rbd_watchers_list_cleanup(v, max);
        r = 0;
    }
    free(v);
    return r;
}

/* What holds volume `name`: its snapshots, their clones, its watchers (one read-only
 * open). */
static int holders_of(const struct storage_pool *p, struct rbd_conn *c, const char *name, struct strv *snaps,
                      struct strv *clones, struct strv *watchers, struct qv_err *e)
{
    _cleanup_image_ rbd_image_t img = NULL;
    struct snap_list sl;
    int r = rbd_image_open(p, c, name, NULL, false, &img, e);
    if (r < 0)
        return r;
    if ((r = snaps_of(img, &sl)) == 0) {
        for (int i = 0; i < sl.n; i++) {
            strv_push(snaps, sl.v[i].name);
            clones_of(c, name, sl.v[i].name, clones);
        }
        snap_list_free(&sl);
    }
    if (r == 0)
        r = watchers_of(img, watchers);
    return r < 0 ? qv_fail(e, r, "pool %s: volume %s: %s", p->name, name, strerror(-r)) : 0;
}

/* The refusal for what holds the volume (clones, then watchers, then snapshots unless
 * they go with it), or 0. */
static int refuse_holders(const struct storage_pool *p, const char *name, const struct strv *snaps,
                          const struct strv *clones, const struct strv *watchers, unsigned flags, struct qv_err *e)
{
    _cleanup_free_ char *list = NULL;
    if (clones->n) {
        list = strv_join((const char *const *)clones->v, ", ");
        return qv_fail(e, -EBUSY, "pool %s: volume %s has clones (%s); delete them first", p->name, name, list);
    }
    if (watchers->n) {
        list = strv_join((const char *const *)watchers->v, ", ");
        return qv_fail(e, -EBUSY, "pool %s: volume %s is open by another Ceph client (%s): a running VM or a mapped "
                       "device", p->name, name, list);
    }
    if (snaps->n && !(flags & STORAGE_DELETE_SNAPSHOTS)) {
        list = strv_join((const char *const *)snaps->v, ", ");
        return qv_fail(e, -EBUSY, "pool %s: volume %s has snapshots (%s); vol delete --delete-snapshots removes them "
                       "with it", p->name, name, list);
    }
    return 0;
}

/* rbd_remove's own refusal (librbd checks snapshots, watchers and groups before it
 * changes anything) explained: what holds the volume, looked up now. */
static int remove_refused(const struct storage_pool *p, struct rbd_conn *c, const char *name, int r, unsigned flags,
                          struct qv_err *e)
{
    _cleanup_strv_ struct strv snaps = {0}, clones = {0}, watchers = {0};
    struct qv_err le = {0};
    if (holders_of(p, c, name, &snaps, &clones, &watchers, &le) == 0 &&
        refuse_holders(p, name, &snaps, &clones, &watchers, flags, e) < 0)
        return -EBUSY;
    if (r == -EBUSY)
        return qv_fail(e, r, "pool %s: volume %s is open somewhere (a watcher holds it: a running VM or a mapped "
                       "device)", p->name, name);
    if (r == -EMLINK)
        return qv_fail(e, -EBUSY, "pool %s: volume %s belongs to an RBD group (rbd group image remove it first)",
                       p->name, name);
    return qv_fail(e, -EBUSY, "pool %s: volume %s has snapshots (vol delete --delete-snapshots)", p->name, name);
}

/* One connection. Without --delete-snapshots, librbd's remove alone (as libvirt's
 * vol-delete): it refuses an image that has snapshots (and so clones) or watchers before
 * it changes anything, and only then is the image opened to say what holds it. With
 * them, the holders are looked at first: clones and watchers refuse, snapshots go. */
int rbdp_vol_delete(const struct storage_pool *p, const char *name, unsigned flags, struct qv_err *e)
{
    int r = rbd_name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    _cleanup_strv_ struct strv snaps = {0}, clones = {0}, watchers = {0};
    if (flags & STORAGE_DELETE_SNAPSHOTS) {
        if ((r = holders_of(p, &c, name, &snaps, &clones, &watchers, e)) == 0)
            r = refuse_holders(p, name, &snaps, &clones, &watchers, flags, e);
    }
    if (r == 0 && snaps.n) {
        _cleanup_image_ rbd_image_t img = NULL;
        r = rbd_image_open(p, &c, name, NULL, true, &img, e);
        for (size_t i = 0; r == 0 && i < snaps.n; i++) {
            int prot = 0;
            if ((r = sym_rbd_snap_is_protected(img, snaps.v[i], &prot)) == 0 && prot)
                r = sym_rbd_snap_unprotect(img, snaps.v[i]);
            if (r == 0)
                r = sym_rbd_snap_remove(img, snaps.v[i]);
            if (r < 0)
                r = qv_fail(e, r, "pool %s: volume %s: removing snapshot %s: %s", p->name, name, snaps.v[i],
                            strerror(-r));
        }
    }
    if (r == 0 && (r = sym_rbd_remove(c.io, name)) < 0) {
        if (r == -EBUSY || r == -ENOTEMPTY || r == -EMLINK)
            r = remove_refused(p, &c, name, r, flags, e);
        else
            r = rbd_image_missing(p, name, r, e);
    }
    rbd_conn_close(&c);
    return r;
}

/* ---- qemu-img on rbd images ---- */
/* json:{"driver": "raw", "file": {"driver": "rbd", ...}}: QEMU's rbd driver with pool,
 * image, user, monitors and timeouts named, no ceph.conf read unless the pool has one,
 * the key read by qemu-img from the secret's 0600 value file through --object. */
static int img_of(const struct storage_pool *p, const char *image, const char *secret_id, struct storage_img *out,
                  struct qv_err *e)
{
    *out = (struct storage_img){.format = STORAGE_FORMAT_RAW, .network = true};
    if (p->keyfile && strchr(p->keyfile, ','))
        return qv_fail(e, -EINVAL, "pool %s: key file %s: a comma in its path", p->name, p->keyfile);
    _cleanup_json_ json_object *top = json_object_new_object();
    json_object *f = json_object_new_object(), *kv = json_object_new_array(), *auth = json_object_new_array();
    json_object_object_add(top, "driver", json_object_new_string("raw"));
    json_object_object_add(top, "file", f);
    json_object_object_add(f, "driver", json_object_new_string("rbd"));
    json_object_object_add(f, "pool", json_object_new_string(p->rbd_pool));
    json_object_object_add(f, "image", json_object_new_string(image));
    json_object_object_add(f, "user", json_object_new_string(p->user ? p->user : "admin"));
    json_object_object_add(f, "conf", json_object_new_string(p->ceph_conf ? p->ceph_conf : "/dev/null"));
    json_object_array_add(auth, json_object_new_string(p->keyfile ? "cephx" : "none"));
    json_object_object_add(f, "auth-client-required", auth);
    if (p->keyfile) {
        json_object_object_add(f, "key-secret", json_object_new_string(secret_id));
        snprintf(out->object, sizeof(out->object), "secret,id=%s,file=%s,format=base64", secret_id, p->keyfile);
    }
    /* mon_host as Ceph reads it (a port is optional, v1 and v2 both tried), and the same
     * bounded waits as librados gets here */
    _cleanup_free_ char *mons = rbd_monitors_joined(p);
    const char *pairs[] = {"mon_host", mons, "client_mount_timeout", RBD_TIMEOUT_S, "rados_mon_op_timeout",
                           RBD_TIMEOUT_S};
    for (size_t i = mons ? 0 : 2; i < ARRAY_SIZE(pairs); i++)
        json_object_array_add(kv, json_object_new_string(pairs[i]));
    json_object_object_add(f, "=keyvalue-pairs",
                           json_object_new_string(json_object_to_json_string_ext(kv, JSON_C_TO_STRING_PLAIN)));
    json_object_put(kv);
    if (snprintf(out->name, sizeof(out->name), "json:%s", json_object_to_json_string_ext(top, JSON_C_TO_STRING_PLAIN)) >=
        (int)sizeof(out->name))
        return qv_fail(e, -ENAMETOOLONG, "pool %s: image name too long", p->name);
    return 0;
}

int rbdp_vol_img(const struct storage_pool *p, const char *name, const char *secret_id, struct storage_img *out,
                       struct qv_err *e)
{
    int r = rbd_name_check(p, name, e);
    return r < 0 ? r : img_of(p, name, secret_id, out, e);   /* size: 0, qemu-img asks when it needs it */
}

/* ".NAME.part-PID-HOST": never a volume name, and refresh knows whose it is. */
static void temp_name(const char *name, char *out, size_t outlen)
{
    char host[65] = "";
    gethostname(host, sizeof(host) - 1);
    for (char *h = host; *h; h++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", *h))
            *h = '_';
    snprintf(out, outlen, ".%s.part-%d-%s", name, (int)getpid(), host);
}

/* A leftover image goes, even while a killed qemu-img's watch still holds it: the dead
 * client is blocklisted (a watch outlives its client by 30 s otherwise). */
static int remove_leftover(struct rbd_conn *c, const char *name)
{
    int r = sym_rbd_remove(c->io, name);
    for (int tries = 0; r == -EBUSY && tries < 50; tries++) {
        rbd_image_t img;
        _cleanup_strv_ struct strv watchers = {0};
        if (sym_rbd_open_read_only(c->io, name, &img, NULL) == 0) {
            watchers_of(img, &watchers);
            sym_rbd_close(img);
        }
        for (size_t i = 0; tries == 0 && i < watchers.n; i++) {
            char cmd[512];
            snprintf(cmd, sizeof(cmd), "{\"prefix\": \"osd blocklist\", \"blocklistop\": \"add\", \"addr\": \"%s\", "
                     "\"expire\": 600}", watchers.v[i]);
            const char *cmds[] = {cmd};
            char *outbuf = NULL, *outs = NULL;
            size_t outlen = 0, outslen = 0;
            sym_rados_mon_command(c->cluster, cmds, 1, "", 0, &outbuf, &outlen, &outs, &outslen);
            sym_rados_buffer_free(outbuf);
            sym_rados_buffer_free(outs);
        }
        struct timespec ts = {0, 200 * 1000 * 1000};
        nanosleep(&ts, NULL);
        r = sym_rbd_remove(c->io, name);
    }
    return r == -ENOENT ? 0 : r;
}

int rbdp_vol_copy_in(const struct storage_pool *p, const char *name, const struct storage_img *src,
                           enum storage_format format, const struct storage_progress *prog, struct qv_err *e)
{
    int r = rbd_name_check(p, name, e);
    if (r < 0)
        return r;
    if (format != STORAGE_FORMAT_RAW)
        return qv_fail(e, -EINVAL, "pool %s: an RBD image is raw; qcow2 volumes live in dir pools (--format raw, or "
                       "leave --format out)", p->name);
    struct rbd_conn c;
    if ((r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    {
        rbd_image_t img;
        if ((r = sym_rbd_open_read_only(c.io, name, &img, NULL)) == 0) {
            sym_rbd_close(img);
            rbd_conn_close(&c);
            return qv_fail(e, -EEXIST, "pool %s already has a volume %s (choose another name, or vol delete it "
                           "first)", p->name, name);
        }
    }
    char tmp[200];
    temp_name(name, tmp, sizeof(tmp));
    struct storage_img dst;
    uint64_t size;
    if ((r = img_of(p, tmp, "qv-dst", &dst, e)) < 0 || (r = storage_img_size(src, &size, e)) < 0) {
        rbd_conn_close(&c);
        return r < 0 ? qv_prefix(e, "pool %s: volume %s: ", p->name, name) : r;
    }
    /* made here, like vol create makes it (format 2, layering only), then written into */
    rbd_image_options_t o;
    sym_rbd_image_options_create(&o);
    sym_rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FORMAT, 2);
    sym_rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FEATURES, RBD_FEATURE_LAYERING);
    r = sym_rbd_create4(c.io, tmp, size, o);
    sym_rbd_image_options_destroy(o);
    if (r < 0) {
        rbd_conn_close(&c);
        return qv_fail(e, r, "pool %s: volume %s: creating %s: %s", p->name, name, tmp, strerror(-r));
    }
    r = storage_convert(src, &dst, true, prog, e);
    if (r == 0 && (r = sym_rbd_rename(c.io, tmp, name)) < 0)
        r = r == -EEXIST ? qv_fail(e, r, "pool %s already has a volume %s", p->name, name)
                         : qv_fail(e, r, "pool %s: naming the copy %s: %s", p->name, name, strerror(-r));
    if (r < 0)
        remove_leftover(&c, tmp);
    rbd_conn_close(&c);
    return r < 0 ? qv_prefix(e, "pool %s: volume %s: ", p->name, name) : 0;
}

/* Drops ".NAME.part-PID-HOST" images of this host's copies whose process is gone. */
int rbdp_refresh(const struct storage_pool *p, struct qv_err *e)
{
    struct rbd_conn c;
    int r = rbd_conn_open(p, &c, e);
    if (r < 0)
        return r;
    _cleanup_strv_ struct strv all = {0};
    char host[200];
    temp_name("x", host, sizeof(host));
    const char *myhost = strchr(strstr(host, ".part-") + 6, '-') + 1;
    if ((r = rbd_list_all(p, &c, &all, e)) == 0)
        for (size_t i = 0; i < all.n; i++) {
            const char *part = all.v[i][0] == '.' ? strstr(all.v[i], ".part-") : NULL;
            char *end;
            long pid = part ? strtol(part + 6, &end, 10) : 0;
            if (pid <= 0 || *end != '-' || strcmp(end + 1, myhost) != 0)
                continue;
            if (kill((pid_t)pid, 0) == 0 || errno == EPERM)
                continue;
            remove_leftover(&c, all.v[i]);
        }
    rbd_conn_close(&c);
    return r;
}

/* ---- raw reads, details, clones ---- */
int rbdp_vol_stream(const struct storage_pool *p, const char *name, int fd, const struct storage_progress *prog,
                          struct qv_err *e)
{
    int r = rbd_name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    _cleanup_free_ char *buf = qv_xmalloc(4 << 20);
    {
        _cleanup_image_ rbd_image_t img = NULL;
        uint64_t size = 0;
        if ((r = rbd_image_open(p, &c, name, NULL, false, &img, e)) == 0 && (r = sym_rbd_get_size(img, &size)) < 0)
            r = qv_fail(e, r, "pool %s: volume %s: %s", p->name, name, strerror(-r));
        for (uint64_t off = 0; r == 0 && off < size;) {
            if (prog && prog->cancel && *prog->cancel) {
                r = qv_fail(e, -ECANCELED, "export of %s/%s: interrupted", p->name, name);
                break;
            }
            size_t want = size - off < (4u << 20) ? (size_t)(size - off) : (4u << 20);
            ssize_t got = sym_rbd_read2(img, off, want, buf, 0);
            if (got <= 0) {
                r = qv_fail(e, got < 0 ? (int)got : -EIO, "pool %s: reading volume %s: %s", p->name, name,
                            got < 0 ? strerror((int)-got) : "short read");
                break;
            }
            if ((r = write_all(fd, buf, (size_t)got)) < 0) {
                r = qv_failerr(e, r, "export of %s/%s: writing", p->name, name);
                break;
            }
            off += (uint64_t)got;
            if (prog && prog->fn)
                prog->fn(prog->opaque, 100.0 * (double)off / (double)size);
        }
    }
    rbd_conn_close(&c);
    return r;
}

static const struct {
    uint64_t bit;
    const char *name;
} feature_names[] = {
    {RBD_FEATURE_LAYERING, RBD_FEATURE_NAME_LAYERING},       {RBD_FEATURE_STRIPINGV2, RBD_FEATURE_NAME_STRIPINGV2},
    {RBD_FEATURE_EXCLUSIVE_LOCK, RBD_FEATURE_NAME_EXCLUSIVE_LOCK}, {RBD_FEATURE_OBJECT_MAP, RBD_FEATURE_NAME_OBJECT_MAP},
    {RBD_FEATURE_FAST_DIFF, RBD_FEATURE_NAME_FAST_DIFF},     {RBD_FEATURE_DEEP_FLATTEN, RBD_FEATURE_NAME_DEEP_FLATTEN},
    {RBD_FEATURE_JOURNALING, RBD_FEATURE_NAME_JOURNALING},   {RBD_FEATURE_DATA_POOL, RBD_FEATURE_NAME_DATA_POOL},
};

int rbdp_vol_detail(const struct storage_pool *p, const char *name, json_object *into, struct qv_err *e)
{
    int r = rbd_name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    _cleanup_image_ rbd_image_t img = NULL;
    if ((r = rbd_image_open(p, &c, name, NULL, false, &img, e)) < 0) {
        rbd_conn_close(&c);
        return r;
    }
    uint64_t features = 0;
    json_object *fa = json_object_new_array();
    if (sym_rbd_get_features(img, &features) == 0)
        for (size_t i = 0; i < ARRAY_SIZE(feature_names); i++)
            if (features & feature_names[i].bit)
                json_object_array_add(fa, json_object_new_string(feature_names[i].name));
    json_object_object_add(into, "features", fa);
    rbd_linked_image_spec_t pi;
    rbd_snap_spec_t ps;
    if (sym_rbd_get_parent(img, &pi, &ps) == 0) {
        json_object *po = json_object_new_object();
        json_object_object_add(po, "pool", json_object_new_string(pi.pool_name));
        json_object_object_add(po, "image", json_object_new_string(pi.image_name));
        json_object_object_add(po, "snapshot", json_object_new_string(ps.name ? ps.name : ""));
        json_object_object_add(into, "parent", po);
        sym_rbd_linked_image_spec_cleanup(&pi);
        sym_rbd_snap_spec_cleanup(&ps);
    } else {
        json_object_object_add(into, "parent", NULL);
    }
    json_object *sa = json_object_new_array();
    struct snap_list sl;
    if (snaps_of(img, &sl) == 0) {
        for (int i = 0; i < sl.n; i++) {
            json_object *so = json_object_new_object();
            int prot = 0;
            sym_rbd_snap_is_protected(img, sl.v[i].name, &prot);
            _cleanup_strv_ struct strv clones = {0};
            clones_of(&c, name, sl.v[i].name, &clones);
            json_object *ca = json_object_new_array();
            for (size_t k = 0; k < clones.n; k++)
                json_object_array_add(ca, json_object_new_string(clones.v[k]));
            json_object_object_add(so, "name", json_object_new_string(sl.v[i].name));
            json_object_object_add(so, "size", json_object_new_int64((int64_t)sl.v[i].size));
            json_object_object_add(so, "protected", json_object_new_boolean(prot));
            json_object_object_add(so, "clones", ca);
            json_object_array_add(sa, so);
        }
        snap_list_free(&sl);
    }
    json_object_object_add(into, "snapshots", sa);
    _cleanup_strv_ struct strv watchers = {0};
    watchers_of(img, &watchers);
    json_object *wa = json_object_new_array();
    for (size_t i = 0; i < watchers.n; i++)
        json_object_array_add(wa, json_object_new_string(watchers.v[i]));
    json_object_object_add(into, "watchers", wa);
    rbd_image_closep(&img);
    img = NULL;
    rbd_conn_close(&c);
    return 0;
}

static bool same_cluster(const struct storage_pool *a, const struct storage_pool *b)
{
    _cleanup_free_ char *ma = rbd_monitors_joined(a), *mb = rbd_monitors_joined(b);
    return strcmp(ma ? ma : "", mb ? mb : "") == 0 &&
           strcmp(a->ceph_conf ? a->ceph_conf : "", b->ceph_conf ? b->ceph_conf : "") == 0;
}

int rbdp_vol_clone_cow(const struct storage_pool *p, const char *src, const char *snap,
                             const struct storage_pool *dst, const char *name, bool *snap_made, struct qv_err *e)
{
    *snap_made = false;
    int r = rbd_name_check(p, src, e);
    if (r < 0 || (r = rbd_name_check(dst, name, e)) < 0)
        return r;
    if (!storage_vol_name_valid(snap))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid snapshot name (1-64 of letters, digits, _ . -)", snap);
    if (strcmp(dst->type, "rbd") != 0 || !same_cluster(p, dst))
        return qv_fail(e, -EINVAL, "pool %s: a copy-on-write clone stays in the source's Ceph cluster; pool %s is "
                       "not an rbd pool of the same monitors (leave out --from-snapshot for a full copy)", p->name,
                       dst->name);
    struct rbd_conn c;
    if ((r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    rados_ioctx_t dio = c.io;
    if (strcmp(dst->rbd_pool, p->rbd_pool) != 0 && (r = sym_rados_ioctx_create(c.cluster, dst->rbd_pool, &dio)) < 0) {
        rbd_conn_close(&c);
        return qv_fail(e, r, "pool %s: Ceph pool %s: %s", dst->name, dst->rbd_pool, strerror(-r));
    }
    /* a look read-only first (no watch to register and drop): the snapshot is usually
     * there and protected already, and the image is opened for writing only to make or
     * protect it */
    rbd_image_t img = NULL;
    bool exists = false;
    int prot = 0;
    if ((r = rbd_image_open(p, &c, src, NULL, false, &img, e)) < 0)
        goto out;
    if ((r = sym_rbd_snap_exists(img, snap, &exists)) == 0 && exists)
        r = sym_rbd_snap_is_protected(img, snap, &prot);
    if (r == 0 && (!exists || !prot)) {
        sym_rbd_close(img);
        img = NULL;
        if ((r = rbd_image_open(p, &c, src, NULL, true, &img, e)) < 0)
            goto out;
        if ((r = sym_rbd_snap_exists(img, snap, &exists)) == 0 && !exists && (r = sym_rbd_snap_create(img, snap)) == 0)
            *snap_made = true;
        if (r == 0 && (r = sym_rbd_snap_is_protected(img, snap, &prot)) == 0 && !prot)
            r = sym_rbd_snap_protect(img, snap);
    }
    if (r < 0) {
        r = qv_fail(e, r, "pool %s: volume %s: snapshot %s: %s", p->name, src, snap, strerror(-r));
        goto out;
    }
    sym_rbd_close(img);
    img = NULL;
    rbd_image_options_t o;
    sym_rbd_image_options_create(&o);
    sym_rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FORMAT, 2);
    sym_rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FEATURES, RBD_FEATURE_LAYERING);
    r = sym_rbd_clone3(c.io, src, snap, dio, name, o);
    sym_rbd_image_options_destroy(o);
    if (r == -EEXIST)
        r = qv_fail(e, r, "pool %s already has a volume %s (choose another name, or vol delete it first)", dst->name,
                    name);
    else if (r < 0)
        r = qv_fail(e, r, "pool %s: cloning %s@%s to %s: %s", p->name, src, snap, name, strerror(-r));
out:
    if (img)
        sym_rbd_close(img);
    if (dio != c.io)
        sym_rados_ioctx_destroy(dio);
    rbd_conn_close(&c);
    return r;
}

