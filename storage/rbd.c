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

#include "storage/rbd_internal.h"

#define RBD_DL_DEFINE(fn) __typeof__(fn) *sym_##fn;
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

void rbd_conn_close(struct rbd_conn *c)
{
    if (c->held) {
        *c = (struct rbd_conn){0};
        return;
    }
    if (c->io)
        sym_rados_ioctx_destroy(c->io);
    if (c->cluster)
        sym_rados_shutdown(c->cluster);
    *c = (struct rbd_conn){0};
}

/* "127.0.0.1:6789,10.0.0.2" */
char *rbd_monitors_joined(const struct storage_pool *p)
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

/* One monitor of a mon_host value: "10.0.0.1:6789", "v2:10.0.0.1:3300", or one entry of
 * an address vector "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]" (split at the commas). */
static void mon_token(char *t)
{
    if (t[0] == '[' && (strncmp(t + 1, "v1:", 3) == 0 || strncmp(t + 1, "v2:", 3) == 0))
        memmove(t, t + 1, strlen(t));
    if (strncmp(t, "v1:", 3) == 0 || strncmp(t, "v2:", 3) == 0)
        memmove(t, t + 3, strlen(t) - 2);
    size_t open = 0, close = 0, n = strlen(t);
    for (size_t i = 0; i < n; i++)
        open += t[i] == '[', close += t[i] == ']';
    if (close > open && n && t[n - 1] == ']')
        t[n - 1] = '\0';
}

/* The pool's monitors: those it names, else those of the ceph.conf it names (mon_host
 * as librados read it). */
static void pool_mons(const struct storage_pool *p, const char *conf_mons, struct strv *mons)
{
    for (size_t i = 0; p->monitors && p->monitors[i]; i++)
        strv_push(mons, p->monitors[i]);
    if (!mons->n && conf_mons) {
        _cleanup_free_ char *copy = qv_xstrdup(conf_mons);
        char *save = NULL;
        for (char *t = strtok_r(copy, ", ;\t", &save); t; t = strtok_r(NULL, ", ;\t", &save)) {
            mon_token(t);
            if (*t && !strv_contains((const char *const *)mons->v, t))
                strv_push(mons, t);
        }
    }
}

/* Whether a monitor of the pool greets us. */
static bool any_mon_speaks(const struct storage_pool *p, const char *conf_mons)
{
    struct strv mons = {0};
    pool_mons(p, conf_mons, &mons);
    bool ok = false;
    for (size_t i = 0; !ok && i < mons.n; i++) {
        const char *m = mons.v[i];
        bool has_port = m[0] == '[' ? strstr(m, "]:") != NULL : strchr(m, ':') != NULL;
        ok = mon_speaks(m, "3300") || (!has_port && mon_speaks(m, "6789"));
    }
    strv_free(&mons);
    return ok;
}

/* 0, or -ECONNREFUSED when every address of HOST[:PORT] (PORT or else each of
 * dflt_ports) refuses a TCP connection at once. A host that does not answer within
 * wait_ms (filtered, unreachable, slow) counts as possibly there: librados then waits
 * it out, bounded by RBD_TIMEOUT_S. */
static int mon_refuses(const char *mon, const char *const *dflt_ports, int wait_ms)
{
    char host[300];
    const char *colon = mon[0] == '[' ? strstr(mon, "]:") : strrchr(mon, ':');
    const char *h = mon[0] == '[' ? mon + 1 : mon;
    size_t hl = colon ? (size_t)(colon - h) : strlen(h) - (mon[0] == '[');
    if (hl >= sizeof(host))
        return 0;
    memcpy(host, h, hl);
    host[hl] = '\0';
    const char *given[2] = {colon ? colon + 1 + (mon[0] == '[') : NULL, NULL};
    const char *const *ports = colon ? given : dflt_ports;
    for (size_t i = 0; ports[i]; i++) {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
        if (getaddrinfo(host, ports[i], &hints, &ai) != 0 || !ai)
            return 0;   /* a name that does not resolve now: librados says what it finds */
        bool refused = true;
        for (struct addrinfo *a = ai; refused && a; a = a->ai_next) {
            _cleanup_close_ int fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                refused = false;
                break;
            }
            if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
                refused = false;
                break;
            }
            if (errno == EINPROGRESS) {
                struct pollfd pf = {.fd = fd, .events = POLLOUT};
                int err = 0;
                socklen_t len = sizeof(err);
                if (poll(&pf, 1, wait_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                    err = ETIMEDOUT;
                refused = err == ECONNREFUSED;
            } else {
                refused = errno == ECONNREFUSED;
            }
        }
        freeaddrinfo(ai);
        if (!refused)
            return 0;
    }
    return -ECONNREFUSED;
}

/* 0, or the error of a pool none of whose monitors is listening (every one refuses a
 * connection): said at once, where librados would wait out its timeout. */
static int mons_all_refuse(const struct storage_pool *p, const char *conf_mons, struct qv_err *e)
{
    _cleanup_strv_ struct strv mons = {0};
    pool_mons(p, conf_mons, &mons);
    static const char *const dflt_ports[] = {"3300", "6789", NULL};
    for (size_t i = 0; i < mons.n; i++)
        if (mon_refuses(mons.v[i], dflt_ports, 500) == 0)
            return 0;
    if (!mons.n)
        return 0;
    _cleanup_free_ char *all = strv_join((const char *const *)mons.v, ", ");
    return qv_fail(e, -ECONNREFUSED, "pool %s: monitor%s %s: Connection refused (is ceph-mon running there, and "
                   "are the pool's monitor addresses right?)", p->name, mons.n > 1 ? "s" : "", all);
}

static int connect_fail(const struct storage_pool *p, int r, const char *conf_mons, struct qv_err *e)
{
    _cleanup_free_ char *mons = rbd_monitors_joined(p);
    char where[1400];
    if (mons)
        snprintf(where, sizeof(where), "%s", mons);
    else if (conf_mons && *conf_mons)
        snprintf(where, sizeof(where), "%s (mon_host of %s)", conf_mons, p->ceph_conf);
    else
        snprintf(where, sizeof(where), "of %s", p->ceph_conf ? p->ceph_conf : "the pool");
    switch (r) {
    case -ETIMEDOUT:
        /* a wrong key is not refused outright: the client retries until its timeout.
         * Tell it from a monitor that is gone by whether one greets us. */
        if (p->keyfile && any_mon_speaks(p, conf_mons))
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

/* ---- connections held for a verb (storage_rbd_hold) ---- */
#define HELD_MAX 4
static _Thread_local struct {
    int depth;
    size_t n;
    struct {
        char *key;      /* what names the connection: pool, user, key file, monitors, ceph.conf */
        struct rbd_conn c;
    } conn[HELD_MAX];
} held;

static char *held_key(const struct storage_pool *p)
{
    _cleanup_free_ char *mons = rbd_monitors_joined(p);
    return qv_xasprintf("%s\n%s\n%s\n%s\n%s\n%s", p->name, p->rbd_pool, p->user ? p->user : "",
                        p->keyfile ? p->keyfile : "", mons ? mons : "", p->ceph_conf ? p->ceph_conf : "");
}

void storage_rbd_hold(void)
{
    held.depth++;
}

void storage_rbd_release(void)
{
    if (held.depth == 0 || --held.depth > 0)
        return;
    for (size_t i = 0; i < held.n; i++) {
        held.conn[i].c.held = false;
        rbd_conn_close(&held.conn[i].c);
        free(held.conn[i].key);
    }
    held.n = 0;
}

static int conn_open(const struct storage_pool *p, struct rbd_conn *c, struct qv_err *e);

/* Connected to the cluster as client.USER, with an I/O context on the pool; under a
 * hold, the connection made for the same pool earlier. */
int rbd_conn_open(const struct storage_pool *p, struct rbd_conn *c, struct qv_err *e)
{
    if (!held.depth)
        return conn_open(p, c, e);
    _cleanup_free_ char *key = held_key(p);
    for (size_t i = 0; i < held.n; i++)
        if (strcmp(held.conn[i].key, key) == 0) {
            *c = held.conn[i].c;
            return 0;
        }
    int r = conn_open(p, c, e);
    if (r == 0 && held.n < HELD_MAX) {
        c->held = true;
        held.conn[held.n].c = *c;
        held.conn[held.n++].key = key;
        key = NULL;
    }
    return r;
}

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
        rbd_conn_close(c);
        return qv_fail(e, r, "pool %s: ceph.conf %s: %s", p->name, p->ceph_conf, strerror(-r));
    }
    _cleanup_free_ char *mons = rbd_monitors_joined(p);
    /* set after the file, so that a ceph.conf cannot lengthen the waits or turn logs on.
     * A delete (or a shrink) of an image without an object map sends one removal per
     * object of its size: 64 at a time, not librbd's 10 (a 1 GiB image is 256 objects;
     * measured here: a 512 MiB clone's delete 330 ms against 430 ms, medians of 4) */
    const char *const opts[][2] = {
        {"client_mount_timeout", RBD_TIMEOUT_S}, {"rados_mon_op_timeout", RBD_TIMEOUT_S},
        {"rados_osd_op_timeout", RBD_TIMEOUT_S}, {"log_to_stderr", "false"}, {"err_to_stderr", "false"},
        {"log_file", ""}, {"auth_client_required", p->keyfile ? "cephx" : "none"},
        {"rbd_concurrent_management_ops", "64"},
    };
    for (size_t i = 0; r == 0 && i < ARRAY_SIZE(opts); i++)
        r = conn_set(c, p, opts[i][0], opts[i][1], e);
    if (r == 0 && mons)
        r = conn_set(c, p, "mon_host", mons, e);
    if (r == 0 && p->keyfile)
        r = conn_set(c, p, "keyfile", p->keyfile, e);
    if (r < 0) {
        rbd_conn_close(c);
        return r;
    }
    char conf_mons[1024] = "";
    if (sym_rados_conf_get(c->cluster, "mon_host", conf_mons, sizeof(conf_mons)) < 0)
        conf_mons[0] = '\0';
    if ((r = mons_all_refuse(p, conf_mons, e)) < 0 || (r = sym_rados_connect(c->cluster)) < 0) {
        rbd_conn_close(c);
        return r == -ECONNREFUSED ? r : connect_fail(p, r, conf_mons, e);
    }
    if ((r = sym_rados_ioctx_create(c->cluster, p->rbd_pool, &c->io)) < 0) {
        c->io = NULL;
        rbd_conn_close(c);
        if (r == -ENOENT)
            return qv_fail(e, r, "pool %s: the Ceph cluster has no pool %s (ceph osd pool create %s; rbd pool init "
                           "%s)", p->name, p->rbd_pool, p->rbd_pool, p->rbd_pool);
        return qv_fail(e, r, "pool %s: Ceph pool %s: %s", p->name, p->rbd_pool, strerror(-r));
    }
    return 0;
}

int rbd_name_check(const struct storage_pool *p, const char *name, struct qv_err *e)
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
    int r = rbd_conn_open(p, &c, e);
    if (r == 0)
        rbd_conn_close(&c);
    return r;
}

/* Every image of the pool, also those that are no volume name (temporaries). */
int rbd_list_all(const struct storage_pool *p, struct rbd_conn *c, struct strv *names, struct qv_err *e)
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
    int r = rbd_conn_open(p, &c, e);
    if (r < 0)
        return r;
    r = rbd_list_all(p, &c, &all, e);
    rbd_conn_close(&c);
    for (size_t i = 0; r == 0 && i < all.n; i++)
        if (storage_vol_name_valid(all.v[i]))
            strv_push(names, all.v[i]);
    return r;
}


int rbd_image_missing(const struct storage_pool *p, const char *name, int r, struct qv_err *e)
{
    if (r == -ENOENT)
        return qv_fail(e, r, "pool %s has no volume %s (qvisor vol list %s)", p->name, name, p->name);
    if (r == -ETIMEDOUT)
        return qv_fail(e, r, "pool %s: volume %s: no answer from the OSD holding it within " RBD_TIMEOUT_S " s (is an "
                       "OSD down, or unreachable from this host?)", p->name, name);
    return qv_fail(e, r, "pool %s: volume %s: %s", p->name, name, strerror(-r));
}

/* An open image, closed at the end of its scope. */
void rbd_image_closep(rbd_image_t *img)
{
    if (*img)
        sym_rbd_close(*img);
}

int rbd_image_open(const struct storage_pool *p, struct rbd_conn *c, const char *name, const char *snap,
                      bool writable, rbd_image_t *img, struct qv_err *e)
{
    *img = NULL;
    int r = writable ? sym_rbd_open(c->io, name, img, snap) : sym_rbd_open_read_only(c->io, name, img, snap);
    if (r < 0) {
        *img = NULL;
        return rbd_image_missing(p, name, r, e);
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
    int r = rbd_image_open(p, c, name, NULL, false, &img, e);
    if (r < 0)
        return r;
    rbd_image_info_t st;
    if ((r = sym_rbd_stat(img, &st, sizeof(st))) < 0)
        return rbd_image_missing(p, name, r, e);
    *out = (struct storage_vol_info){.format = STORAGE_FORMAT_RAW, .capacity = st.size};
    if ((r = image_allocation(img, st.size, &out->allocation)) < 0)
        return qv_fail(e, r, "pool %s: volume %s: allocated extents: %s", p->name, name, strerror(-r));
    snprintf(out->name, sizeof(out->name), "%s", name);
    snprintf(out->path, sizeof(out->path), "rbd:%s/%s", p->rbd_pool, name);
    return 0;
}

static int rbdp_vol_info(const struct storage_pool *p, const char *name, struct storage_vol_info *out, struct qv_err *e)
{
    int r = rbd_name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    r = info_on(p, &c, name, out, e);
    rbd_conn_close(&c);
    return r;
}

static int rbdp_stats(const struct storage_pool *p, struct storage_pool_stats *out, struct qv_err *e)
{
    struct rbd_conn c;
    int r = rbd_conn_open(p, &c, e);
    if (r < 0)
        return r;
    struct rados_cluster_stat_t cs;
    struct rados_pool_stat_t ps;
    if ((r = sym_rados_cluster_stat(c.cluster, &cs)) < 0 || (r = sym_rados_ioctx_pool_stat(c.io, &ps)) < 0) {
        rbd_conn_close(&c);
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
        if ((r = rbd_list_all(p, &c, &names, e)) == 0)
            for (size_t i = 0; i < names.n; i++) {
                struct storage_vol_info vi;
                if (info_on(p, &c, names.v[i], &vi, NULL) == 0)
                    out->allocation += vi.allocation;
            }
    }
    rbd_conn_close(&c);
    return r;
}

static int rbdp_vol_create(const struct storage_pool *p, const char *name, const struct storage_vol_spec *s,
                          struct qv_err *e)
{
    int r = rbd_name_check(p, name, e);
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
    if ((r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    rbd_image_options_t o;
    sym_rbd_image_options_create(&o);
    /* format 2 with layering only: what the kernel client and QEMU both open, and what clones need */
    sym_rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FORMAT, 2);
    sym_rbd_image_options_set_uint64(o, RBD_IMAGE_OPTION_FEATURES, RBD_FEATURE_LAYERING);
    r = sym_rbd_create4(c.io, name, s->size, o);
    sym_rbd_image_options_destroy(o);
    rbd_conn_close(&c);
    if (r == -EEXIST)
        return qv_fail(e, r, "pool %s already has a volume %s (choose another name, or vol delete it first)", p->name,
                       name);
    if (r < 0)
        return qv_fail(e, r, "pool %s: creating volume %s: %s", p->name, name, strerror(-r));
    return 0;
}

static int no_progress(uint64_t done, uint64_t total, void *arg)
{
    (void)done, (void)total, (void)arg;
    return 0;
}

static int rbdp_vol_resize(const struct storage_pool *p, const char *name, uint64_t size, bool shrink,
                          struct qv_err *e)
{
    int r = rbd_name_check(p, name, e);
    struct rbd_conn c;
    if (r < 0 || (r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    {
        _cleanup_image_ rbd_image_t img = NULL;
        if ((r = rbd_image_open(p, &c, name, NULL, true, &img, e)) == 0 &&
            (r = sym_rbd_resize2(img, size, shrink, no_progress, NULL)) < 0)
            r = qv_fail(e, r, "pool %s: resizing volume %s: %s", p->name, name, strerror(-r));
    }
    rbd_conn_close(&c);
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

/* ---- for VM disks ---- */

/* `ceph PREFIX -f json` as the pool's user; the parsed answer in *out. */
static int mon_json(const struct storage_pool *p, struct rbd_conn *c, const char *prefix, json_object **out,
                    struct qv_err *e)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "{\"prefix\":\"%s\",\"format\":\"json\"}", prefix);
    const char *cmds[] = {cmd};
    char *buf = NULL, *status = NULL;
    size_t buflen = 0, statuslen = 0;
    int r = sym_rados_mon_command(c->cluster, cmds, 1, "", 0, &buf, &buflen, &status, &statuslen);
    if (r == 0) {
        /* the answer is not NUL-terminated */
        json_tokener *tok = json_tokener_new();
        *out = buf && buflen <= INT32_MAX ? json_tokener_parse_ex(tok, buf, (int)buflen) : NULL;
        json_tokener_free(tok);
        if (!*out)
            r = -EBADMSG;
    }
    if (buf)
        sym_rados_buffer_free(buf);
    if (status)
        sym_rados_buffer_free(status);
    if (r == -EACCES || r == -EPERM)
        return qv_fail(e, r, "pool %s: client.%s may not read the cluster map (`%s`; give it mon 'profile rbd')",
                       p->name, p->user, prefix);
    return r < 0 ? qv_fail(e, r, "pool %s: `%s`: %s", p->name, prefix, strerror(-r)) : 0;
}

/* "127.0.0.1:6790" or "[::1]:6790" from an addrvec entry; port 0 (not bound) is skipped. */
static void push_addrs(json_object *holder, const char *key, struct strv *all, struct strv *first_of)
{
    json_object *pa, *vec;
    if (!json_object_object_get_ex(holder, key, &pa) || !json_object_object_get_ex(pa, "addrvec", &vec) ||
        !json_object_is_type(vec, json_type_array))
        return;
    const char *v2 = NULL, *any = NULL;
    for (size_t i = 0; i < json_object_array_length(vec); i++) {
        json_object *a = json_object_array_get_idx(vec, i), *addr, *type;
        if (!json_object_object_get_ex(a, "addr", &addr))
            continue;
        const char *s = json_object_get_string(addr);
        const char *colon = strrchr(s, ':');
        if (!colon || strcmp(colon, ":0") == 0)
            continue;
        if (!strv_contains((const char *const *)all->v, s))
            strv_push(all, s);
        any = any ? any : s;
        if (json_object_object_get_ex(a, "type", &type) && strcmp(json_object_get_string(type), "v2") == 0)
            v2 = v2 ? v2 : s;
    }
    if (first_of && (v2 || any))
        strv_push(first_of, v2 ? v2 : any);
}

/* The public addresses of the monitors and OSDs the cluster's maps list now (a map
 * grows with the cluster: an OSD added later is in the next answer); servers: one per
 * monitor. */
static int cluster_addrs_on(const struct storage_pool *p, struct rbd_conn *c, struct strv *addrs, struct strv *servers,
                            struct qv_err *e)
{
    json_object *mons = NULL, *osds = NULL, *arr;
    int r;
    if ((r = mon_json(p, c, "mon dump", &mons, e)) == 0 && (r = mon_json(p, c, "osd dump", &osds, e)) == 0) {
        if (json_object_object_get_ex(mons, "mons", &arr) && json_object_is_type(arr, json_type_array))
            for (size_t i = 0; i < json_object_array_length(arr); i++)
                push_addrs(json_object_array_get_idx(arr, i), "public_addrs", addrs, servers);
        if (json_object_object_get_ex(osds, "osds", &arr) && json_object_is_type(arr, json_type_array))
            for (size_t i = 0; i < json_object_array_length(arr); i++)
                push_addrs(json_object_array_get_idx(arr, i), "public_addrs", addrs, NULL);
        if (!servers->n)
            r = qv_fail(e, -ENOENT, "pool %s: the cluster's monitor map lists no monitor address", p->name);
    }
    json_object_put(mons);
    json_object_put(osds);
    return r;
}

void storage_rbd_disk_free(struct storage_rbd_disk *d)
{
    strv_free(&d->servers);
    strv_free(&d->addrs);
    memset(d, 0, sizeof(*d));
}

int storage_rbd_disk_info(const struct storage_pool *p, const char *image, struct storage_rbd_disk *out,
                          struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    int r = rbd_name_check(p, image, e);
    struct rbd_conn c;
    if (r < 0 || (r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    rbd_image_t img;
    if ((r = sym_rbd_open_read_only(c.io, image, &img, NULL)) < 0) {
        rbd_conn_close(&c);
        return rbd_image_missing(p, image, r, e);
    }
    rbd_image_info_t st;
    r = sym_rbd_stat(img, &st, sizeof(st));
    sym_rbd_close(img);
    if (r < 0) {
        rbd_conn_close(&c);
        return rbd_image_missing(p, image, r, e);
    }
    out->size = st.size;
    r = cluster_addrs_on(p, &c, &out->addrs, &out->servers, e);
    rbd_conn_close(&c);
    if (r < 0)
        storage_rbd_disk_free(out);
    return r;
}

int storage_rbd_cluster_addrs(const struct storage_pool *p, struct strv *addrs, struct qv_err *e)
{
    struct rbd_conn c;
    int r = rbd_conn_open(p, &c, e);
    if (r < 0)
        return r;
    _cleanup_strv_ struct strv servers = {0};
    r = cluster_addrs_on(p, &c, addrs, &servers, e);
    rbd_conn_close(&c);
    return r;
}

int storage_rbd_snapshot(const struct storage_pool *p, const char *image, char op, const char *snap,
                         struct qv_err *e)
{
    int r = rbd_name_check(p, image, e);
    struct rbd_conn c;
    if (r < 0 || (r = rbd_conn_open(p, &c, e)) < 0)
        return r;
    rbd_image_t img;
    if ((r = op == 'e' ? sym_rbd_open_read_only(c.io, image, &img, NULL) : sym_rbd_open(c.io, image, &img, NULL)) < 0) {
        rbd_conn_close(&c);
        return rbd_image_missing(p, image, r, e);
    }
    const char *what = "snapshot";
    bool exists = false;
    switch (op) {
    case 'c': r = sym_rbd_snap_create(img, snap); what = "creating snapshot"; break;
    case 'a': r = sym_rbd_snap_rollback(img, snap); what = "rolling back to snapshot"; break;
    case 'd': r = sym_rbd_snap_remove(img, snap); what = "deleting snapshot"; break;
    case 'u':
        what = "unprotecting and deleting snapshot";
        if ((r = sym_rbd_snap_unprotect(img, snap)) == 0 || r == -EINVAL)   /* EINVAL: it was not protected */
            r = sym_rbd_snap_remove(img, snap);
        break;
    case 'e': r = sym_rbd_snap_exists(img, snap, &exists); r = r < 0 ? r : exists ? 0 : -ENOENT; break;
    default: r = -EINVAL;
    }
    sym_rbd_close(img);
    rbd_conn_close(&c);
    if (r == -ENOENT && op != 'c')
        return qv_fail(e, r, "pool %s: volume %s has no snapshot %s", p->name, image, snap);
    if (r == -EEXIST)
        return qv_fail(e, r, "pool %s: volume %s has a snapshot %s already", p->name, image, snap);
    if (r == -ETIMEDOUT)
        return qv_fail(e, r, "pool %s: volume %s: %s %s: no answer from the OSD holding it within " RBD_TIMEOUT_S
                       " s (is an OSD down, or unreachable from this host?)", p->name, image, what, snap);
    return r < 0 ? qv_fail(e, r, "pool %s: volume %s: %s %s: %s", p->name, image, what, snap, strerror(-r)) : 0;
}
