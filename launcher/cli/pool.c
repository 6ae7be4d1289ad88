/* qvisor pool define|undefine|list|show|refresh */
#include <stdlib.h>
#include <string.h>

#include "launcher/cli/cli.h"
#include "launcher/model/storedef.h"

static void pool_where(const struct pool_def *d, char *out, size_t n);

static void add_opt(json_object *o, const char *key, const char *v)
{
    if (v)
        json_object_object_add(o, key, json_object_new_string(v));
}

int cmd_pool_define(struct cli *c)
{
    const char *arg = c->pos[0];
    _cleanup_json_ json_object *o = NULL;
    const char *name = cli_opt(c, "name"), *type = cli_opt(c, "type"), *path = cli_opt(c, "path");
    const char *rbd_pool = cli_opt(c, "pool"), *user = cli_opt(c, "user"), *secret = cli_opt(c, "secret");
    const char *conf = cli_opt(c, "ceph-conf");
    bool rbd_flags = rbd_pool || user || secret || conf || cli_opt(c, "monitor");
    bool file = arg != NULL;
    int r;
    if (file && (name || type || path || rbd_flags))
        return qv_fail(&c->err, -EINVAL, "pool define: a FILE or --name/--type/..., not both");
    if (!file && rbd_flags && (!type || strcmp(type, "rbd") != 0))
        return qv_fail(&c->err, -EINVAL, "pool define: --pool, --monitor, --user, --secret and --ceph-conf are for "
                       "--type rbd");
    if (file) {
        if ((r = json_read_file(arg, &o, &c->err)) < 0)
            return r;
    } else {
        if (!name)
            return qv_fail(&c->err, -EINVAL, "usage: qvisor %s", c->cmd->usage);
        o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(name));
        json_object_object_add(o, "type", json_object_new_string(type ? type : "dir"));
        add_opt(o, "path", path);
        add_opt(o, "pool", rbd_pool);
        json_object *mons = json_object_new_array();
        for (size_t i = 0; i < c->nopts; i++)
            if (strcmp(c->opts[i].opt->name, "monitor") == 0)
                json_object_array_add(mons, json_object_new_string(c->opts[i].value));
        if (json_object_array_length(mons))
            json_object_object_add(o, "monitors", mons);
        else
            json_object_put(mons);
        add_opt(o, "ceph_conf", conf);
        add_opt(o, "user", user);
        add_opt(o, "secret", secret);
    }
    _cleanup_pool_def_ struct pool_def d = {0};
    if ((r = pool_define(&c->paths, o, false, &d, &c->err)) < 0)
        return file && r == -EINVAL ? qv_prefix(&c->err, "%s: ", arg) : r;
    char where[512];
    pool_where(&d, where, sizeof(where));
    if (!c->quiet)
        printf("defined pool %s (%s %s)\n", d.name, d.type, where);
    return 0;
}

int cmd_pool_undefine(struct cli *c)
{
    int r = pool_undefine(&c->paths, c->pos[0], &c->err);
    if (r == 0 && !c->quiet)
        printf("undefined pool %s (its volumes stay where they are)\n", c->pos[0]);
    return r;
}

static json_object *pool_json(const struct pool_def *d, const struct storage_pool_stats *st, size_t nvols)
{
    json_object *o = pool_def_to_json(d);
    if (st) {
        /* null: the cluster does not say (no ceph-mgr) */
        json_object_object_add(o, "capacity", st->sizes_unknown ? NULL : json_object_new_int64((int64_t)st->capacity));
        json_object_object_add(o, "allocation", json_object_new_int64((int64_t)st->allocation));
        json_object_object_add(o, "available", st->sizes_unknown ? NULL : json_object_new_int64((int64_t)st->available));
        json_object_object_add(o, "volumes", json_object_new_int64((int64_t)nvols));
    }
    return o;
}

/* Where a pool's volumes are: its directory, or "rbd on 10.0.0.1:6789 as client.libvirt". */
static void pool_where(const struct pool_def *d, char *out, size_t n)
{
    if (d->path) {
        snprintf(out, n, "%s", d->path);
        return;
    }
    _cleanup_free_ char *mons = d->monitors.n ? strv_join((const char *const *)d->monitors.v, ",") : NULL;
    snprintf(out, n, "%s on %s as client.%s", d->rbd_pool ? d->rbd_pool : "?", mons ? mons : d->ceph_conf,
             d->user ? d->user : "admin");
}

/* A size for people: "9.8G". */
static void human(uint64_t b, char *out, size_t n)
{
    const char *u = "BKMGTPE";
    double v = (double)b;
    while (v >= 1024 && u[1]) {
        v /= 1024;
        u++;
    }
    if (*u == 'B')
        snprintf(out, n, "%" PRIu64 "B", b);
    else
        snprintf(out, n, "%.1f%c", v, *u);
}

void cli_size_human(uint64_t b, char *out, size_t n)
{
    human(b, out, n);
}

/* The stats and volume count of a pool; false (with e) when its place is unusable. */
static bool pool_state(const struct pool_def *d, struct storage_pool_stats *st, size_t *nvols, struct qv_err *e)
{
    struct storage_pool sp = pool_storage(d);
    const struct storage_backend *b = pool_backend(d);
    _cleanup_strv_ struct strv vols = {0};
    if (b->stats(&sp, st, e) < 0 || b->list(&sp, &vols, e) < 0)
        return false;
    *nvols = vols.n;
    return true;
}

int cmd_pool_list(struct cli *c)
{
    _cleanup_pool_def_ struct pool_def dflt = {0};
    /* like libvirt's, the default pool exists from the start */
    pool_open(&c->paths, "default", &dflt, NULL);
    _cleanup_strv_ struct strv names = {0};
    int r = pool_list_names(&c->paths, &names, &c->err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *arr = json_object_new_array();
    if (!c->json)
        printf("%-16s %-5s %-8s %-8s %-8s %-7s %s\n", "NAME", "TYPE", "CAPACITY", "ALLOC", "AVAIL", "VOLUMES", "PATH");
    for (size_t i = 0; i < names.n; i++) {
        _cleanup_pool_def_ struct pool_def d = {0};
        struct qv_err e = {0};
        if (pool_load(&c->paths, names.v[i], &d, &e) < 0) {
            if (!c->json)
                printf("%-16s %-5s (%s)\n", names.v[i], "?", e.msg);
            continue;
        }
        struct storage_pool_stats st = {0};
        size_t nvols = 0;
        bool ok = pool_state(&d, &st, &nvols, &e);
        if (c->json) {
            json_object *o = pool_json(&d, ok ? &st : NULL, nvols);
            if (!ok)
                json_object_object_add(o, "error", json_object_new_string(e.msg));
            json_object_array_add(arr, o);
        } else if (!ok) {
            printf("%-16s %-5s (%s)\n", d.name, d.type, e.msg);
        } else {
            char cap[16] = "?", al[16], av[16] = "?", where[512];
            if (!st.sizes_unknown) {
                human(st.capacity, cap, sizeof(cap));
                human(st.available, av, sizeof(av));
            }
            human(st.allocation, al, sizeof(al));
            pool_where(&d, where, sizeof(where));
            printf("%-16s %-5s %-8s %-8s %-8s %-7zu %s\n", d.name, d.type, cap, al, av, nvols, where);
        }
    }
    if (c->json)
        cli_print_json(arr);
    return 0;
}

/* pool show NAME --addresses: the monitors and OSDs of an rbd pool's cluster, one
 * "IP:PORT" a line, as its maps list them now (what QEMU's filter lets through). */
static int show_addresses(struct cli *c, const struct pool_def *d)
{
    if (strcmp(d->type, "rbd") != 0)
        return qv_fail(&c->err, -EINVAL, "pool %s is a %s pool: --addresses lists an rbd pool's Ceph monitors and "
                       "OSDs", d->name, d->type);
    struct storage_pool sp = pool_storage(d);
    _cleanup_strv_ struct strv addrs = {0};
    int r = storage_rbd_cluster_addrs(&sp, &addrs, &c->err);
    if (r < 0)
        return r;
    if (c->json) {
        _cleanup_json_ json_object *a = json_object_new_array();
        for (size_t i = 0; i < addrs.n; i++)
            json_object_array_add(a, json_object_new_string(addrs.v[i]));
        cli_print_json(a);
        return 0;
    }
    for (size_t i = 0; i < addrs.n; i++)
        printf("%s\n", addrs.v[i]);
    return 0;
}

int cmd_pool_show(struct cli *c)
{
    _cleanup_pool_def_ struct pool_def d = {0};
    int r = pool_open(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    if (cli_flag(c, "addresses"))
        return show_addresses(c, &d);
    struct storage_pool_stats st;
    size_t nvols;
    if (!pool_state(&d, &st, &nvols, &c->err))
        return c->err.code ? c->err.code : -EIO;
    _cleanup_json_ json_object *o = pool_json(&d, &st, nvols);
    cli_print_json(o);
    return 0;
}

int cmd_pool_refresh(struct cli *c)
{
    _cleanup_pool_def_ struct pool_def d = {0};
    int r = pool_open(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    struct storage_pool sp = pool_storage(&d);
    if ((r = pool_backend(&d)->refresh(&sp, &c->err)) < 0)
        return r;
    struct storage_pool_stats st;
    size_t nvols;
    if (!pool_state(&d, &st, &nvols, &c->err))
        return c->err.code ? c->err.code : -EIO;
    if (!c->quiet)
        printf("pool %s: %zu volume%s\n", d.name, nvols, nvols == 1 ? "" : "s");
    return 0;
}
