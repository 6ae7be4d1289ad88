/* The rbd backend: a Ceph pool's RBD images as volumes, through librados/librbd
 * (loaded on first use: a host without RBD pools never maps them). Every operation
 * connects as the pool's cephx user with bounded timeouts (RBD_TIMEOUT_S for the
 * monitors and for each operation), does its work and disconnects: a CLI verb or a
 * supervisor start holds no connection and no librados thread afterwards. librados
 * reads no ceph.conf and no environment unless the pool names a ceph.conf, and it
 * prints nothing: its errors come back as codes, turned into messages naming the pool
 * and the likely cause. */
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

#include "storage/storage.h"

/* Seconds for the monitor handshake and for each monitor or OSD operation. */
#define RBD_TIMEOUT_S "10"

/* ---- the libraries ---- */
#define RBD_DL_RADOS_SYMBOLS(X)                                                                       \
    X(rados_create2) X(rados_conf_set) X(rados_conf_get) X(rados_conf_read_file) X(rados_connect)    \
    X(rados_shutdown) X(rados_ioctx_create) X(rados_ioctx_destroy) X(rados_cluster_stat)             \
    X(rados_ioctx_pool_stat) X(rados_mon_command) X(rados_buffer_free)
#define RBD_DL_RBD_SYMBOLS(X)                                                                         \
    X(rbd_list2) X(rbd_image_spec_list_cleanup) X(rbd_open_read_only) X(rbd_close) X(rbd_stat)       \
    X(rbd_get_features) X(rbd_create4) X(rbd_image_options_create) X(rbd_image_options_destroy)      \
    X(rbd_image_options_set_uint64) X(rbd_remove) X(rbd_open) X(rbd_resize2) X(rbd_diff_iterate2)   \
    X(rbd_snap_list) X(rbd_snap_list_end) X(rbd_snap_is_protected) X(rbd_snap_protect)              \
    X(rbd_snap_unprotect) X(rbd_snap_create) X(rbd_snap_remove) X(rbd_snap_exists)                   \
    X(rbd_list_children3) X(rbd_linked_image_spec_list_cleanup) X(rbd_linked_image_spec_cleanup)     \
    X(rbd_snap_spec_cleanup) X(rbd_get_parent) X(rbd_watchers_list) X(rbd_watchers_list_cleanup)     \
    X(rbd_clone3) X(rbd_rename) X(rbd_read2) X(rbd_version) X(rbd_get_size)

#define RBD_DL_DEFINE(fn) static __typeof__(fn) *sym_##fn;
RBD_DL_RADOS_SYMBOLS(RBD_DL_DEFINE)
RBD_DL_RBD_SYMBOLS(RBD_DL_DEFINE)
#undef RBD_DL_DEFINE
#define RBD_DL_ENTRY(fn) {#fn, (void **)&sym_##fn},
static const struct qv_dl_sym rados_syms[] = {RBD_DL_RADOS_SYMBOLS(RBD_DL_ENTRY)};
static const struct qv_dl_sym rbd_syms[] = {RBD_DL_RBD_SYMBOLS(RBD_DL_ENTRY)};
#undef RBD_DL_ENTRY
static const struct qv_dl_lib librados = {
    "librados.so.2", "librados2", "Ceph RBD pools", rados_syms, ARRAY_SIZE(rados_syms),
};
static const struct qv_dl_lib librbd = {
    "librbd.so.1", "librbd1", "Ceph RBD pools", rbd_syms, ARRAY_SIZE(rbd_syms),
};

static int rbdp_dl(struct qv_err *e)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static bool loaded;
    pthread_mutex_lock(&lock);
    int r = 0;
    if (!loaded && (r = qv_dl_load(&librados, e)) == 0 && (r = qv_dl_load(&librbd, e)) == 0)
        loaded = true;
    pthread_mutex_unlock(&lock);
    return r;
}

/* ---- connections ---- */
struct rbd_conn {
    rados_t cluster;
    rados_ioctx_t io;
};

static void conn_close(struct rbd_conn *c)
{
    if (c->io)
        sym_rados_ioctx_destroy(c->io);
    if (c->cluster)
        sym_rados_shutdown(c->cluster);
    *c = (struct rbd_conn){0};
}

/* "127.0.0.1:6789,10.0.0.2" */
static char *monitors_joined(const struct storage_pool *p)
{
    return p->monitors ? strv_join(p->monitors, ",") : NULL;
}

/* Whether a monitor at HOST[:PORT] speaks Ceph: it greets a new connection with its
 * banner ("ceph v2" or "ceph v027") at once. A stopped or absent monitor does not (a
 * stopped one still has its connections accepted by the kernel). */
static bool mon_speaks(const char *mon, const char *dflt_port)
{
    char host[300], port[8];
    const char *colon = mon[0] == '[' ? strstr(mon, "]:") : strrchr(mon, ':');
    const char *h = mon[0] == '[' ? mon + 1 : mon;
    size_t hl = colon ? (size_t)(colon - h) : strlen(h) - (mon[0] == '[');
    if (hl >= sizeof(host))
        return false;
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, sizeof(port), "%s", colon ? colon + 1 + (mon[0] == '[') : dflt_port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
        return false;
    _cleanup_close_ int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    bool ok = false;
    if (fd >= 0 && (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 || errno == EINPROGRESS)) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        char banner[8] = "";
        ok = poll(&pf, 1, 2000) == 1 && recv(fd, banner, 6, 0) == 6 && memcmp(banner, "ceph v", 6) == 0;
    }
    freeaddrinfo(ai);
    return ok;
}

static bool any_mon_speaks(const struct storage_pool *p)
{
    for (size_t i = 0; p->monitors && p->monitors[i]; i++) {
        bool has_port = p->monitors[i][0] == '[' ? strstr(p->monitors[i], "]:") != NULL
                                                 : strchr(p->monitors[i], ':') != NULL;
        if (mon_speaks(p->monitors[i], "3300") || (!has_port && mon_speaks(p->monitors[i], "6789")))
            return true;
    }
    return false;
}

static int connect_fail(const struct storage_pool *p, int r, struct qv_err *e)
{
    _cleanup_free_ char *mons = monitors_joined(p);
    const char *where = mons ? mons : p->ceph_conf;
    switch (r) {
    case -ETIMEDOUT:
        /* a wrong key is not refused outright: the client retries until its timeout.
         * Tell it from a monitor that is gone by whether one greets us. */
        if (p->keyfile && any_mon_speaks(p))
            return qv_fail(e, -EACCES, "pool %s: the monitors %s refused client.%s's key (check the pool's secret: "
                           "qvisor secret set-value with the key `ceph auth get-key client.%s` prints)", p->name,
                           where, p->user, p->user);
        return qv_fail(e, r, "pool %s: no answer from the Ceph monitors %s within " RBD_TIMEOUT_S " s (are they "
                       "running and reachable from this host?)", p->name, where);
    case -EACCES:
    case -EPERM:
        return qv_fail(e, r, "pool %s: the monitors %s refused client.%s's key (check the pool's secret: qvisor "
                       "secret set-value)", p->name, where, p->user);
    case -EINVAL:
        return qv_fail(e, r, "pool %s: cannot connect as client.%s: the key is not a valid cephx key (qvisor secret "
                       "set-value with the key `ceph auth get-key client.%s` prints)", p->name, p->user, p->user);
    case -ENOENT:
        return qv_fail(e, r, "pool %s: no Ceph monitors known (give the pool monitors, or a ceph.conf naming "
                       "mon_host)", p->name);
    default:
        return qv_fail(e, r, "pool %s: cannot connect to the Ceph monitors %s as client.%s: %s", p->name, where,
                       p->user, strerror(-r));
    }
}

static int conn_set(struct rbd_conn *c, const struct storage_pool *p, const char *key, const char *value,
                    struct qv_err *e)
{
    int r = sym_rados_conf_set(c->cluster, key, value);
    return r < 0 ? qv_fail(e, r, "pool %s: Ceph option %s=%s: %s", p->name, key, value, strerror(-r)) : 0;
}

/* Connected to the cluster as client.USER, with an I/O context on the pool. */
static int conn_open(const struct storage_pool *p, struct rbd_conn *c, struct qv_err *e)
{
    *c = (struct rbd_conn){0};
    int r = rbdp_dl(e);
    if (r < 0)
        return qv_prefix(e, "pool %s: ", p->name);
    char id[80];
    snprintf(id, sizeof(id), "client.%s", p->user ? p->user : "admin");
    if ((r = sym_rados_create2(&c->cluster, "ceph", id, 0)) < 0) {
        c->cluster = NULL;
        return qv_fail(e, r, "pool %s: librados: %s", p->name, strerror(-r));
    }
    if (p->ceph_conf && (r = sym_rados_conf_read_file(c->cluster, p->ceph_conf)) < 0) {
        conn_close(c);
        return qv_fail(e, r, "pool %s: ceph.conf %s: %s", p->name, p->ceph_conf, strerror(-r));
    }
    _cleanup_free_ char *mons = monitors_joined(p);
    /* set after the file, so that a ceph.conf cannot lengthen the waits or turn logs on */
    const char *const opts[][2] = {
        {"client_mount_timeout", RBD_TIMEOUT_S}, {"rados_mon_op_timeout", RBD_TIMEOUT_S},
        {"rados_osd_op_timeout", RBD_TIMEOUT_S}, {"log_to_stderr", "false"}, {"err_to_stderr", "false"},
        {"log_file", ""}, {"auth_client_required", p->keyfile ? "cephx" : "none"},
    };
    for (size_t i = 0; r == 0 && i < ARRAY_SIZE(opts); i++)
        r = conn_set(c, p, opts[i][0], opts[i][1], e);
    if (r == 0 && mons)
        r = conn_set(c, p, "mon_host", mons, e);
    if (r == 0 && p->keyfile)
        r = conn_set(c, p, "keyfile", p->keyfile, e);
    if (r < 0) {
        conn_close(c);
        return r;
    }
    if ((r = sym_rados_connect(c->cluster)) < 0) {
        conn_close(c);
        return connect_fail(p, r, e);
    }
    if ((r = sym_rados_ioctx_create(c->cluster, p->rbd_pool, &c->io)) < 0) {
        c->io = NULL;
        conn_close(c);
        if (r == -ENOENT)
            return qv_fail(e, r, "pool %s: the Ceph cluster has no pool %s (ceph osd pool create %s; rbd pool init "
                           "%s)", p->name, p->rbd_pool, p->rbd_pool, p->rbd_pool);
        return qv_fail(e, r, "pool %s: Ceph pool %s: %s", p->name, p->rbd_pool, strerror(-r));
    }
    return 0;
}

static int name_check(const struct storage_pool *p, const char *name, struct qv_err *e)
{
    if (!storage_vol_name_valid(name))
        return qv_fail(e, -EINVAL, "pool %s: \"%s\" is not a valid volume name (1-64 of letters, digits, _ . -, "
                       "not starting with . or -)", p->name, name);
    return 0;
}

/* ---- the backend ---- */
static int rbdp_check(const struct storage_pool *p, struct qv_err *e)
{
    struct rbd_conn c;
    int r = conn_open(p, &c, e);
    if (r == 0)
        conn_close(&c);
    return r;
}

/* Every image of the pool, also those that are no volume name (temporaries). */
static int list_all(const struct storage_pool *p, struct rbd_conn *c, struct strv *names, struct qv_err *e)
{
    int r;
    size_t max = 64;
    rbd_image_spec_t *specs = NULL;
    for (;;) {
        specs = qv_xcalloc(max, sizeof(*specs));
        if ((r = sym_rbd_list2(c->io, specs, &max)) != -ERANGE)
            break;
        free(specs);
    }
    if (r >= 0) {
        for (size_t i = 0; i < max; i++)
            strv_push(names, specs[i].name);
        sym_rbd_image_spec_list_cleanup(specs, max);
        strv_sort(names);
        r = 0;
    } else {
        r = qv_fail(e, r, "pool %s: listing Ceph pool %s: %s", p->name, p->rbd_pool, strerror(-r));
    }
    free(specs);
    return r;
}

static int rbdp_list(const struct storage_pool *p, struct strv *names, struct qv_err *e)
{
    struct rbd_conn c;
    _cleanup_strv_ struct strv all = {0};
    int r = conn_open(p, &c, e);
    if (r < 0)
        return r;
    r = list_all(p, &c, &all, e);
    conn_close(&c);
    for (size_t i = 0; r == 0 && i < all.n; i++)
        if (storage_vol_name_valid(all.v[i]))
            strv_push(names, all.v[i]);
    return r;
}


static int image_missing(const struct storage_pool *p, const char *name, int r, struct qv_err *e)
{
    if (r == -ENOENT)
        return qv_fail(e, r, "pool %s has no volume %s (qvisor vol list %s)", p->name, name, p->name);
    return qv_fail(e, r, "pool %s: volume %s: %s", p->name, name, strerror(-r));
}

/* An open image, closed at the end of its scope. */
static void image_closep(rbd_image_t *img)
{
    if (*img)
        sym_rbd_close(*img);
}
#define _cleanup_image_ _cleanup_(image_closep)

static int image_open(const struct storage_pool *p, struct rbd_conn *c, const char *name, const char *snap,
                      bool writable, rbd_image_t *img, struct qv_err *e)
{
    *img = NULL;
    int r = writable ? sym_rbd_open(c->io, name, img, snap) : sym_rbd_open_read_only(c->io, name, img, snap);
    if (r < 0) {
        *img = NULL;
        return image_missing(p, name, r, e);
    }
    return 0;
}

static int count_allocated(uint64_t off, size_t len, int exists, void *arg)
{
    (void)off;
    if (exists)
        *(uint64_t *)arg += len;
    return 0;
}

/* Bytes the image itself holds (not its parent's). */
static int image_allocation(rbd_image_t img, uint64_t size, uint64_t *out)
{
    *out = 0;
    return sym_rbd_diff_iterate2(img, NULL, 0, size, 0, 0, count_allocated, out);
}

static int info_on(const struct storage_pool *p, struct rbd_conn *c, const char *name, struct storage_vol_info *out,
                   struct qv_err *e)
{
    _cleanup_image_ rbd_image_t img = NULL;
    int r = image_open(p, c, name, NULL, false, &img, e);
    if (r < 0)
        return r;
    rbd_image_info_t st;
    if ((r = sym_rbd_stat(img, &st, sizeof(st))) < 0)
        return image_missing(p, name, r, e);
    *out = (struct storage_vol_info){.format = STORAGE_FORMAT_RAW, .capacity = st.size};
    if ((r = image_allocation(img, st.size, &out->allocation)) < 0)
        return qv_fail(e, r, "pool %s: volume %s: allocated extents: %s", p->name, name, strerror(-r));
    snprintf(out->name, sizeof(out->name), "%s", name);
    snprintf(out->path, sizeof(out->path), "rbd:%s/%s", p->rbd_pool, name);
    return 0;
}

static int rbdp_vol_info(const struct storage_pool *p, const char *name, struct storage_vol_info *out, struct qv_err *e)
{
    int r = name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = conn_open(p, &c, e)) < 0)
        return r;
    r = info_on(p, &c, name, out, e);
    conn_close(&c);
    return r;
}

static int rbdp_stats(const struct storage_pool *p, struct storage_pool_stats *out, struct qv_err *e)
{
    struct rbd_conn c;
    int r = conn_open(p, &c, e);
    if (r < 0)
        return r;
    struct rados_cluster_stat_t cs;
    struct rados_pool_stat_t ps;
    if ((r = sym_rados_cluster_stat(c.cluster, &cs)) < 0 || (r = sym_rados_ioctx_pool_stat(c.io, &ps)) < 0) {
        conn_close(&c);
        return qv_fail(e, r, "pool %s: Ceph statistics: %s", p->name, strerror(-r));
    }
    *out = (struct storage_pool_stats){
        .capacity = cs.kb * 1024, .available = cs.kb_avail * 1024, .allocation = ps.num_bytes,
    };
    if (cs.kb == 0) {
        /* the monitors learn sizes from ceph-mgr; without one they say 0: count what the
         * volumes hold instead, and say that the capacity is unknown */
        out->sizes_unknown = true;
        _cleanup_strv_ struct strv names = {0};
        if ((r = list_all(p, &c, &names, e)) == 0)
            for (size_t i = 0; i < names.n; i++) {
                struct storage_vol_info vi;
                if (info_on(p, &c, names.v[i], &vi, NULL) == 0)
                    out->allocation += vi.allocation;
            }
    }
    conn_close(&c);
    return r;
}

static int rbdp_vol_create(const struct storage_pool *p, const char *name, const struct storage_vol_spec *s,
                          struct qv_err *e)
{
    int r = name_check(p, name, e);
    if (r < 0)
        return r;
    if (s->format != STORAGE_FORMAT_RAW)
        return qv_fail(e, -EINVAL, "pool %s: an RBD image is raw; qcow2 volumes live in dir pools (--format raw, or "
                       "leave --format out)", p->name);
    if (s->backing)
        return qv_fail(e, -EINVAL, "pool %s: an RBD volume has no backing file (vol clone --from-snapshot makes a "
                       "copy-on-write clone)", p->name);
    if (s->prealloc != STORAGE_PREALLOC_OFF)
        return qv_fail(e, -EINVAL, "pool %s: RBD images are thin: --preallocation is for dir pools", p->name);
    if (!s->size)
        return qv_fail(e, -EINVAL, "pool %s: volume %s: a size is needed (--size)", p->name, name);
    struct rbd_conn c;
    if ((r = conn_open(p, &c, e)) < 0)
        return r;
    rbd_image_options_t o;
    sym_rbd_image_options_create(&o);
    /* format 2 with layering only: what the kernel client and QEMU both open, and what clones need */
    sym_rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FORMAT, 2);
    sym_rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FEATURES, RBD_FEATURE_LAYERING);
    r = sym_rbd_create4(c.io, name, s->size, o);
    sym_rbd_image_options_destroy(o);
    conn_close(&c);
    if (r == -EEXIST)
        return qv_fail(e, r, "pool %s already has a volume %s (choose another name, or vol delete it first)", p->name,
                       name);
    if (r < 0)
        return qv_fail(e, r, "pool %s: creating volume %s: %s", p->name, name, strerror(-r));
    return 0;
}

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

static int rbdp_vol_delete(const struct storage_pool *p, const char *name, unsigned flags, struct qv_err *e)
{
    int r = name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = conn_open(p, &c, e)) < 0)
        return r;
    _cleanup_strv_ struct strv snaps = {0}, clones = {0}, watchers = {0};
    {
        _cleanup_image_ rbd_image_t img = NULL;
        struct snap_list sl;
        if ((r = image_open(p, &c, name, NULL, false, &img, e)) < 0) {
            conn_close(&c);
            return r;
        }
        if ((r = snaps_of(img, &sl)) == 0) {
            for (int i = 0; i < sl.n; i++) {
                strv_push(&snaps, sl.v[i].name);
                clones_of(&c, name, sl.v[i].name, &clones);
            }
            snap_list_free(&sl);
        }
        if (r == 0)
            r = watchers_of(img, &watchers);
        if (r < 0) {
            conn_close(&c);
            return qv_fail(e, r, "pool %s: volume %s: %s", p->name, name, strerror(-r));
        }
    }
    _cleanup_free_ char *list = NULL;
    if (clones.n) {
        list = strv_join((const char *const *)clones.v, ", ");
        r = qv_fail(e, -EBUSY, "pool %s: volume %s has clones (%s); delete them first", p->name, name, list);
    } else if (watchers.n) {
        list = strv_join((const char *const *)watchers.v, ", ");
        r = qv_fail(e, -EBUSY, "pool %s: volume %s is open by another Ceph client (%s): a running VM or a mapped "
                    "device", p->name, name, list);
    } else if (snaps.n && !(flags & STORAGE_DELETE_SNAPSHOTS)) {
        list = strv_join((const char *const *)snaps.v, ", ");
        r = qv_fail(e, -EBUSY, "pool %s: volume %s has snapshots (%s); vol delete --delete-snapshots removes them "
                    "with it", p->name, name, list);
    }
    for (size_t i = 0; r == 0 && i < snaps.n; i++) {
        _cleanup_image_ rbd_image_t img = NULL;
        int prot = 0;
        if ((r = image_open(p, &c, name, NULL, true, &img, e)) < 0)
            break;
        if ((r = sym_rbd_snap_is_protected(img, snaps.v[i], &prot)) == 0 && prot)
            r = sym_rbd_snap_unprotect(img, snaps.v[i]);
        if (r == 0)
            r = sym_rbd_snap_remove(img, snaps.v[i]);
        if (r < 0)
            r = qv_fail(e, r, "pool %s: volume %s: removing snapshot %s: %s", p->name, name, snaps.v[i], strerror(-r));
    }
    if (r == 0 && (r = sym_rbd_remove(c.io, name)) < 0) {
        if (r == -EBUSY)
            r = qv_fail(e, r, "pool %s: volume %s is open somewhere (a watcher holds it: a running VM or a mapped "
                        "device)", p->name, name);
        else if (r == -ENOTEMPTY)
            r = qv_fail(e, -EBUSY, "pool %s: volume %s has snapshots (vol delete --delete-snapshots)", p->name, name);
        else
            r = image_missing(p, name, r, e);
    }
    conn_close(&c);
    return r;
}

static int no_progress(uint64_t done, uint64_t total, void *arg)
{
    (void)done, (void)total, (void)arg;
    return 0;
}

static int rbdp_vol_resize(const struct storage_pool *p, const char *name, uint64_t size, bool shrink,
                          struct qv_err *e)
{
    int r = name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = conn_open(p, &c, e)) < 0)
        return r;
    {
        _cleanup_image_ rbd_image_t img = NULL;
        if ((r = image_open(p, &c, name, NULL, true, &img, e)) == 0 &&
            (r = sym_rbd_resize2(img, size, shrink, no_progress, NULL)) < 0)
            r = qv_fail(e, r, "pool %s: resizing volume %s: %s", p->name, name, strerror(-r));
    }
    conn_close(&c);
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
    _cleanup_free_ char *mons = monitors_joined(p);
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

static int rbdp_vol_img(const struct storage_pool *p, const char *name, const char *secret_id, struct storage_img *out,
                       struct qv_err *e)
{
    int r = name_check(p, name, e);
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

static int rbdp_vol_copy_in(const struct storage_pool *p, const char *name, const struct storage_img *src,
                           enum storage_format format, const struct storage_progress *prog, struct qv_err *e)
{
    int r = name_check(p, name, e);
    if (r < 0)
        return r;
    if (format != STORAGE_FORMAT_RAW)
        return qv_fail(e, -EINVAL, "pool %s: an RBD image is raw; qcow2 volumes live in dir pools (--format raw, or "
                       "leave --format out)", p->name);
    struct rbd_conn c;
    if ((r = conn_open(p, &c, e)) < 0)
        return r;
    {
        rbd_image_t img;
        if ((r = sym_rbd_open_read_only(c.io, name, &img, NULL)) == 0) {
            sym_rbd_close(img);
            conn_close(&c);
            return qv_fail(e, -EEXIST, "pool %s already has a volume %s (choose another name, or vol delete it "
                           "first)", p->name, name);
        }
    }
    char tmp[200];
    temp_name(name, tmp, sizeof(tmp));
    struct storage_img dst;
    uint64_t size;
    if ((r = img_of(p, tmp, "qv-dst", &dst, e)) < 0 || (r = storage_img_size(src, &size, e)) < 0) {
        conn_close(&c);
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
        conn_close(&c);
        return qv_fail(e, r, "pool %s: volume %s: creating %s: %s", p->name, name, tmp, strerror(-r));
    }
    r = storage_convert(src, &dst, true, prog, e);
    if (r == 0 && (r = sym_rbd_rename(c.io, tmp, name)) < 0)
        r = r == -EEXIST ? qv_fail(e, r, "pool %s already has a volume %s", p->name, name)
                         : qv_fail(e, r, "pool %s: naming the copy %s: %s", p->name, name, strerror(-r));
    if (r < 0)
        remove_leftover(&c, tmp);
    conn_close(&c);
    return r < 0 ? qv_prefix(e, "pool %s: volume %s: ", p->name, name) : 0;
}

/* Drops ".NAME.part-PID-HOST" images of this host's copies whose process is gone. */
static int rbdp_refresh(const struct storage_pool *p, struct qv_err *e)
{
    struct rbd_conn c;
    int r = conn_open(p, &c, e);
    if (r < 0)
        return r;
    _cleanup_strv_ struct strv all = {0};
    char host[200];
    temp_name("x", host, sizeof(host));
    const char *myhost = strchr(strstr(host, ".part-") + 6, '-') + 1;
    if ((r = list_all(p, &c, &all, e)) == 0)
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
    conn_close(&c);
    return r;
}

/* ---- raw reads, details, clones ---- */
static int rbdp_vol_stream(const struct storage_pool *p, const char *name, int fd, const struct storage_progress *prog,
                          struct qv_err *e)
{
    int r = name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = conn_open(p, &c, e)) < 0)
        return r;
    _cleanup_free_ char *buf = qv_xmalloc(4 << 20);
    {
        _cleanup_image_ rbd_image_t img = NULL;
        uint64_t size = 0;
        if ((r = image_open(p, &c, name, NULL, false, &img, e)) == 0 && (r = sym_rbd_get_size(img, &size)) < 0)
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
    conn_close(&c);
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

static int rbdp_vol_detail(const struct storage_pool *p, const char *name, json_object *into, struct qv_err *e)
{
    int r = name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = conn_open(p, &c, e)) < 0)
        return r;
    _cleanup_image_ rbd_image_t img = NULL;
    if ((r = image_open(p, &c, name, NULL, false, &img, e)) < 0) {
        conn_close(&c);
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
    image_closep(&img);
    img = NULL;
    conn_close(&c);
    return 0;
}

static bool same_cluster(const struct storage_pool *a, const struct storage_pool *b)
{
    _cleanup_free_ char *ma = monitors_joined(a), *mb = monitors_joined(b);
    return strcmp(ma ? ma : "", mb ? mb : "") == 0 &&
           strcmp(a->ceph_conf ? a->ceph_conf : "", b->ceph_conf ? b->ceph_conf : "") == 0;
}

static int rbdp_vol_clone_cow(const struct storage_pool *p, const char *src, const char *snap,
                             const struct storage_pool *dst, const char *name, bool *snap_made, struct qv_err *e)
{
    *snap_made = false;
    int r = name_check(p, src, e);
    if (r < 0 || (r = name_check(dst, name, e)) < 0)
        return r;
    if (!storage_vol_name_valid(snap))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid snapshot name (1-64 of letters, digits, _ . -)", snap);
    if (strcmp(dst->type, "rbd") != 0 || !same_cluster(p, dst))
        return qv_fail(e, -EINVAL, "pool %s: a copy-on-write clone stays in the source's Ceph cluster; pool %s is "
                       "not an rbd pool of the same monitors (leave out --from-snapshot for a full copy)", p->name,
                       dst->name);
    struct rbd_conn c;
    if ((r = conn_open(p, &c, e)) < 0)
        return r;
    rados_ioctx_t dio = c.io;
    if (strcmp(dst->rbd_pool, p->rbd_pool) != 0 && (r = sym_rados_ioctx_create(c.cluster, dst->rbd_pool, &dio)) < 0) {
        conn_close(&c);
        return qv_fail(e, r, "pool %s: Ceph pool %s: %s", dst->name, dst->rbd_pool, strerror(-r));
    }
    rbd_image_t img = NULL;
    if ((r = image_open(p, &c, src, NULL, true, &img, e)) < 0)
        goto out;
    bool exists = false;
    int prot = 0;
    if ((r = sym_rbd_snap_exists(img, snap, &exists)) == 0 && !exists && (r = sym_rbd_snap_create(img, snap)) == 0)
        *snap_made = true;
    if (r == 0 && (r = sym_rbd_snap_is_protected(img, snap, &prot)) == 0 && !prot)
        r = sym_rbd_snap_protect(img, snap);
    if (r < 0) {
        r = qv_fail(e, r, "pool %s: volume %s: snapshot %s: %s", p->name, src, snap, strerror(-r));
        goto out;
    }
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
    conn_close(&c);
    return r;
}

static int rbdp_vol_open(const struct storage_pool *p, const char *name, int flags, struct storage_chain *out,
                        struct qv_err *e)
{
    (void)flags, (void)out;
    return qv_fail(e, -EOPNOTSUPP, "pool %s: volume %s is an RBD image, which QEMU opens over the network, not "
                   "from a file descriptor", p->name, name);
}

bool storage_rbd_usable(char *detail, size_t detail_len)
{
    struct qv_err e = {0};
    if (rbdp_dl(&e) < 0) {
        snprintf(detail, detail_len, "%s", e.msg);
        return false;
    }
    int maj = 0, min = 0, extra = 0;
    sym_rbd_version(&maj, &min, &extra);
    snprintf(detail, detail_len, "librados and librbd %d.%d.%d load", maj, min, extra);
    return true;
}

const struct storage_backend storage_rbd_backend = {
    .type = "rbd",
    .check = rbdp_check,
    .stats = rbdp_stats,
    .list = rbdp_list,
    .refresh = rbdp_refresh,
    .vol_info = rbdp_vol_info,
    .vol_create = rbdp_vol_create,
    .vol_delete = rbdp_vol_delete,
    .vol_resize = rbdp_vol_resize,
    .vol_copy_in = rbdp_vol_copy_in,
    .vol_img = rbdp_vol_img,
    .vol_detail = rbdp_vol_detail,
    .vol_stream = rbdp_vol_stream,
    .vol_clone_cow = rbdp_vol_clone_cow,
    .vol_open = rbdp_vol_open,
};
