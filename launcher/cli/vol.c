/* qvisor vol create|list|info|resize|delete|clone|import|export */
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/cli/cli.h"
#include "launcher/model/storedef.h"

static int format_opt(struct cli *c, enum storage_format dflt, enum storage_format *out)
{
    const char *f = cli_opt(c, "format");
    *out = dflt;
    if (f && storage_format_parse(f, out) < 0)
        return qv_fail(&c->err, -EINVAL, "--format %s: not one of qcow2, raw", f);
    return 0;
}

int cmd_vol_create(struct cli *c)
{
    struct volume_create_args a = {.backing = cli_opt(c, "backing")};
    const char *size = cli_opt(c, "size"), *pre = cli_opt(c, "preallocation");
    int r;
    if (size && (parse_size(size, &a.size) < 0 || a.size == 0))
        return qv_fail(&c->err, -EINVAL, "--size %s: not a size (like 10G, 512M)", size);
    if ((r = format_opt(c, STORAGE_FORMAT_PROBE, &a.format)) < 0)
        return r;
    if (pre) {
        size_t i = 0;
        while (storage_prealloc_names[i] && strcmp(storage_prealloc_names[i], pre) != 0)
            i++;
        if (!storage_prealloc_names[i])
            return qv_fail(&c->err, -EINVAL, "--preallocation %s: not one of off, metadata, full", pre);
        a.prealloc = (enum storage_prealloc)i;
    }
    /* POOL/VOL, or a file: absolute, ./x, ../x, or a bare name in this directory */
    char backing[PATH_MAX];
    const char *b = a.backing;
    if (b && b[0] != '/' && (!strchr(b, '/') || str_startswith(b, "./") || str_startswith(b, "../"))) {
        if (!realpath(b, backing))
            return qv_failerr(&c->err, errno == ENOENT ? -ENOENT : -errno, "--backing %s", b);
        a.backing = backing;
    }
    if ((r = volume_create(&c->paths, c->pos[0], &a, &c->err)) < 0)
        return r;
    if (!c->quiet)
        printf("created volume %s\n", c->pos[0]);
    return 0;
}

/* "default/base" where `path` is a volume of a defined pool; else the path. */
static void layer_name(struct cli *c, const char *path, char *out, size_t outlen)
{
    _cleanup_strv_ struct strv pools = {0};
    pool_list_names(&c->paths, &pools, NULL);
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    const char *d = dirname(dir), *base = strrchr(path, '/');
    for (size_t i = 0; base && i < pools.n; i++) {
        _cleanup_pool_def_ struct pool_def pd = {0};
        if (pool_load(&c->paths, pools.v[i], &pd, NULL) == 0 && pd.path && strcmp(pd.path, d) == 0 &&
            storage_vol_name_valid(base + 1)) {
            snprintf(out, outlen, "%s/%s", pd.name, base + 1);
            return;
        }
    }
    snprintf(out, outlen, "%s", path);
}

static json_object *vol_json(const struct storage_vol_info *vi)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(vi->name));
    json_object_object_add(o, "path", json_object_new_string(vi->path));
    json_object_object_add(o, "format", json_object_new_string(storage_format_name(vi->format)));
    json_object_object_add(o, "capacity", json_object_new_int64((int64_t)vi->capacity));
    json_object_object_add(o, "allocation", json_object_new_int64((int64_t)vi->allocation));
    if (vi->backing[0])
        json_object_object_add(o, "backing", json_object_new_string(vi->backing));
    return o;
}

int cmd_vol_list(struct cli *c)
{
    _cleanup_pool_def_ struct pool_def pd = {0};
    int r = pool_open(&c->paths, c->pos[0], &pd, &c->err);
    if (r < 0)
        return r;
    struct storage_pool sp = pool_storage(&pd);
    const struct storage_backend *b = pool_backend(&pd);
    _cleanup_strv_ struct strv names = {0};
    if ((r = b->list(&sp, &names, &c->err)) < 0)
        return r;
    _cleanup_json_ json_object *arr = json_object_new_array();
    if (!c->json)
        printf("%-24s %-6s %-9s %-9s %s\n", "NAME", "FORMAT", "CAPACITY", "ALLOC", "BACKING");
    for (size_t i = 0; i < names.n; i++) {
        struct storage_vol_info vi;
        struct qv_err e = {0};
        if (b->vol_info(&sp, names.v[i], &vi, &e) < 0) {
            if (!c->json)
                printf("%-24s (%s)\n", names.v[i], e.msg);
            continue;   /* gone since the listing, or unreadable: the others still count */
        }
        if (c->json) {
            json_object_array_add(arr, vol_json(&vi));
            continue;
        }
        char cap[16], al[16], back[PATH_MAX] = "-";
        cli_size_human(vi.capacity, cap, sizeof(cap));
        cli_size_human(vi.allocation, al, sizeof(al));
        if (vi.backing[0])
            layer_name(c, vi.backing, back, sizeof(back));
        printf("%-24s %-6s %-9s %-9s %s\n", vi.name, storage_format_name(vi.format), cap, al, back);
    }
    if (c->json)
        cli_print_json(arr);
    return 0;
}

/* rbd facts: features, parent, snapshots (with their clones), watchers */
static void print_detail(json_object *o)
{
    json_object *v;
    if (json_object_object_get_ex(o, "features", &v)) {
        printf("features:   ");
        for (size_t i = 0; i < json_object_array_length(v); i++)
            printf(" %s", json_object_get_string(json_object_array_get_idx(v, i)));
        printf("\n");
    }
    if (json_object_object_get_ex(o, "parent", &v) && v) {
        json_object *pp, *pi, *ps;
        json_object_object_get_ex(v, "pool", &pp);
        json_object_object_get_ex(v, "image", &pi);
        json_object_object_get_ex(v, "snapshot", &ps);
        printf("parent:      %s/%s@%s\n", json_object_get_string(pp), json_object_get_string(pi),
               json_object_get_string(ps));
    }
    if (json_object_object_get_ex(o, "snapshots", &v))
        for (size_t i = 0; i < json_object_array_length(v); i++) {
            json_object *s = json_object_array_get_idx(v, i), *n, *pr, *cl;
            json_object_object_get_ex(s, "name", &n);
            json_object_object_get_ex(s, "protected", &pr);
            json_object_object_get_ex(s, "clones", &cl);
            printf("%s %s%s", i ? "            " : "snapshots:  ", json_object_get_string(n),
                   json_object_get_boolean(pr) ? " (protected)" : "");
            for (size_t k = 0; k < json_object_array_length(cl); k++)
                printf("%s%s", k ? ", " : " clones: ", json_object_get_string(json_object_array_get_idx(cl, k)));
            printf("\n");
        }
    if (json_object_object_get_ex(o, "watchers", &v)) {
        printf("watchers:   ");
        for (size_t i = 0; i < json_object_array_length(v); i++)
            printf(" %s", json_object_get_string(json_object_array_get_idx(v, i)));
        printf("%s\n", json_object_array_length(v) ? "" : " -");
    }
}

int cmd_vol_info(struct cli *c)
{
    struct vol_ref ref;
    _cleanup_pool_def_ struct pool_def pd = {0};
    struct storage_vol_info vi;
    int r;
    if ((r = vol_lookup(&c->paths, c->pos[0], &ref, &pd, &vi, &c->err)) < 0)
        return r;
    struct storage_pool sp = pool_storage(&pd);
    const struct storage_backend *b = pool_backend(&pd);
    struct storage_chain chain = {0};
    struct qv_err ce = {0};
    /* a network volume has no chain of files: its backend says what it is built on */
    bool files = vi.path[0] == '/';
    int cr = files ? b->vol_open(&sp, ref.name, O_RDONLY, &chain, &ce) : 0;
    _cleanup_strv_ struct strv users = {0}, deps = {0};
    if ((r = vol_users(&c->paths, &ref, vi.path, &users, &c->err)) < 0 ||
        (r = vol_dependents(&c->paths, vi.path, &deps, &c->err)) < 0) {
        storage_chain_close(&chain);
        return r;
    }
    _cleanup_json_ json_object *o = vol_json(&vi);
    json_object_object_add(o, "pool", json_object_new_string(pd.name));
    if (b->vol_detail && (r = b->vol_detail(&sp, ref.name, o, &c->err)) < 0) {
        storage_chain_close(&chain);
        return r;
    }
    json_object *ch = json_object_new_array(), *us = json_object_new_array(), *dp = json_object_new_array();
    for (size_t i = 0; cr == 0 && i < chain.n; i++) {
        json_object *l = json_object_new_object();
        char name[PATH_MAX];
        layer_name(c, chain.layers[i].path, name, sizeof(name));
        json_object_object_add(l, "path", json_object_new_string(chain.layers[i].path));
        if (strcmp(name, chain.layers[i].path) != 0)
            json_object_object_add(l, "volume", json_object_new_string(name));
        json_object_object_add(l, "format", json_object_new_string(storage_format_name(chain.layers[i].format)));
        json_object_object_add(l, "virtual_size", json_object_new_int64((int64_t)chain.layers[i].virtual_size));
        json_object_array_add(ch, l);
    }
    for (size_t i = 0; i < users.n; i++)
        json_object_array_add(us, json_object_new_string(users.v[i]));
    for (size_t i = 0; i < deps.n; i++)
        json_object_array_add(dp, json_object_new_string(deps.v[i]));
    if (files)
        json_object_object_add(o, "chain", ch);
    else
        json_object_put(ch);
    if (cr < 0)
        json_object_object_add(o, "chain_error", json_object_new_string(ce.msg));
    json_object_object_add(o, "used_by", us);
    json_object_object_add(o, "backing_for", dp);
    if (c->json) {
        cli_print_json(o);
    } else {
        char cap[16], al[16];
        cli_size_human(vi.capacity, cap, sizeof(cap));
        cli_size_human(vi.allocation, al, sizeof(al));
        printf("volume:      %s/%s\npath:        %s\nformat:      %s\ncapacity:    %s (%" PRIu64 " bytes)\n"
               "allocation:  %s (%" PRIu64 " bytes)\n",
               pd.name, vi.name, vi.path, storage_format_name(vi.format), cap, vi.capacity, al, vi.allocation);
        for (size_t i = 0; cr == 0 && i < chain.n; i++) {
            char name[PATH_MAX];
            layer_name(c, chain.layers[i].path, name, sizeof(name));
            printf("%s %s (%s)\n", i == 0 ? "chain:      " : "            ", name,
                   storage_format_name(chain.layers[i].format));
        }
        if (cr < 0)
            printf("chain:       broken: %s\n", ce.msg);
        if (!files)
            print_detail(o);
        _cleanup_free_ char *u = strv_join((const char *const *)users.v, ", ");
        _cleanup_free_ char *d = strv_join((const char *const *)deps.v, ", ");
        printf("used by:     %s\nbacking for: %s\n", users.n ? u : "-", deps.n ? d : "-");
    }
    storage_chain_close(&chain);
    return 0;
}

int cmd_vol_resize(struct cli *c)
{
    uint64_t size;
    int r = volume_resize(&c->paths, c->pos[0], c->pos[1], cli_flag(c, "allow-shrink"), cli_flag(c, "force"), &size,
                          &c->err);
    if (r < 0)
        return r;
    char s[32];
    format_size(size, s, sizeof(s));
    if (!c->quiet)
        printf("volume %s is now %s\n", c->pos[0], s);
    return 0;
}

int cmd_vol_delete(struct cli *c)
{
    int r = volume_delete(&c->paths, c->pos[0], (cli_flag(c, "force") ? VOL_DELETE_FORCE : 0) |
                          (cli_flag(c, "delete-snapshots") ? VOL_DELETE_SNAPSHOTS : 0), &c->err);
    if (r == 0 && !c->quiet)
        printf("deleted volume %s\n", c->pos[0]);
    return r;
}

/* ---- long copies: a progress bar on a terminal, Ctrl-C stops them cleanly ---- */
static volatile int copy_cancel;

static void on_interrupt(int sig)
{
    (void)sig;
    copy_cancel = 1;
}

struct bar {
    const char *label;
    int last;
};

static void bar_draw(void *opaque, double pct)
{
    struct bar *b = opaque;
    int p = (int)pct;
    if (p == b->last)
        return;
    b->last = p;
    char cells[41];
    int full = p * 40 / 100;
    for (int i = 0; i < 40; i++)
        cells[i] = i < full ? '#' : '.';
    cells[40] = '\0';
    fprintf(stderr, "\r%s [%s] %3d%%", b->label, cells, p);
    fflush(stderr);
}

/* Runs `copy` with the progress bar (stderr a terminal, not -q) and SIGINT, SIGTERM
 * and SIGHUP turned into a cancel of the copy; their old handlers come back after. */
static int with_progress(struct cli *c, const char *label, int (*copy)(struct cli *c, const struct storage_progress *p, void *arg),
                         void *arg)
{
    struct bar b = {label, -1};
    struct storage_progress prog = {.cancel = &copy_cancel};
    bool tty = !c->quiet && isatty(STDERR_FILENO);
    if (tty) {
        prog.fn = bar_draw;
        prog.opaque = &b;
    }
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    struct sigaction sa = {.sa_handler = on_interrupt}, old[3];
    sigemptyset(&sa.sa_mask);
    copy_cancel = 0;
    for (size_t i = 0; i < ARRAY_SIZE(sigs); i++)
        sigaction(sigs[i], &sa, &old[i]);
    int r = copy(c, &prog, arg);
    for (size_t i = 0; i < ARRAY_SIZE(sigs); i++)
        sigaction(sigs[i], &old[i], NULL);
    if (tty && b.last >= 0)
        fputc('\n', stderr);
    if (r == -ECANCELED || (r < 0 && copy_cancel))
        return qv_fail(&c->err, -ECANCELED, "%s: interrupted; nothing was written", label);
    return r;
}

struct copy_args {
    const char *dst_ref, *dest;
    struct storage_img src;
    enum storage_format format;
    bool have_format;
};

static int do_copy_in(struct cli *c, const struct storage_progress *p, void *arg)
{
    struct copy_args *a = arg;
    return volume_copy_in(&c->paths, a->dst_ref, &a->src, a->format, p, &c->err);
}

/* The format a copy into pool `ref`'s pool gets without --format: raw in an rbd pool. */
static int pool_format(struct cli *c, const char *ref, enum storage_format dflt, enum storage_format *out)
{
    struct vol_ref r;
    _cleanup_pool_def_ struct pool_def pd = {0};
    int e;
    if ((e = vol_ref_parse(ref, &r, &c->err)) < 0 || (e = pool_read(&c->paths, r.pool, &pd, &c->err)) < 0)
        return e;
    if (strcmp(pd.type, "rbd") == 0)
        dflt = STORAGE_FORMAT_RAW;
    return format_opt(c, dflt, out);
}

int cmd_vol_clone(struct cli *c)
{
    struct vol_ref src;
    _cleanup_pool_def_ struct pool_def pd = {0};
    struct storage_vol_info vi;
    int r;
    if ((r = vol_ref_parse(c->pos[0], &src, &c->err)) < 0)
        return r;
    const char *pool = cli_opt(c, "pool"), *snap = cli_opt(c, "from-snapshot");
    char dst[160];
    snprintf(dst, sizeof(dst), "%s/%s", pool ? pool : src.pool, c->pos[1]);
    if (snap) {
        /* the source is looked up by the clone itself, in its one connection */
        if (cli_opt(c, "format"))
            return qv_fail(&c->err, -EINVAL, "vol clone --from-snapshot: a copy-on-write clone keeps its parent's "
                           "format (leave --format out)");
        bool made = false;
        if ((r = volume_clone_cow(&c->paths, c->pos[0], snap, dst, &made, &c->err)) < 0)
            return r;
        if (!c->quiet)
            printf("cloned %s@%s to %s (copy-on-write%s)\n", c->pos[0], snap, dst,
                   made ? "; the snapshot was made now and protected" : "");
        return 0;
    }
    if ((r = vol_lookup(&c->paths, c->pos[0], &src, &pd, &vi, &c->err)) < 0)
        return r;
    struct copy_args a = {.dst_ref = dst};
    struct storage_pool sp = pool_storage(&pd);
    if ((r = pool_backend(&pd)->vol_img(&sp, src.name, "qv-src", &a.src, &c->err)) < 0)
        return r;
    a.src.format = vi.format;
    a.src.size = vi.capacity;
    if ((r = pool_format(c, dst, vi.format, &a.format)) < 0)
        return r;
    char label[256];
    snprintf(label, sizeof(label), "vol clone %s %s", c->pos[0], dst);
    if ((r = with_progress(c, label, do_copy_in, &a)) < 0)
        return r;
    if (!c->quiet)
        printf("cloned %s to %s (%s)\n", c->pos[0], dst, storage_format_name(a.format));
    return 0;
}

int cmd_vol_import(struct cli *c)
{
    struct copy_args a = {.dst_ref = c->pos[0]};
    const char *src_path = c->pos[1];
    storage_img_file(&a.src, src_path, STORAGE_FORMAT_PROBE);
    int r;
    if ((r = pool_format(c, a.dst_ref, STORAGE_FORMAT_QCOW2, &a.format)) < 0)
        return r;
    struct stat st;
    if (stat(src_path, &st) < 0)
        return qv_failerr(&c->err, errno == ENOENT ? -ENOENT : -errno, "vol import: %s", src_path);
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return qv_fail(&c->err, -EINVAL, "vol import: %s is %s, not an image file", src_path,
                       storage_file_type_name(st.st_mode));
    /* qemu-img would follow a backing file the image names: a downloaded image could
     * point at any file of this host and have it copied into the volume */
    struct storage_image_info ii;
    if ((r = storage_image_info(src_path, STORAGE_FORMAT_PROBE, 60000, &ii, &c->err)) < 0)
        return qv_prefix(&c->err, "vol import: ");
    if (ii.backing[0])
        return qv_fail(&c->err, -EINVAL, "vol import: %s has a backing file (%s); import a standalone image "
                       "(qemu-img convert it first), or vol create --backing", src_path, ii.backing);
    /* the format qemu-img saw is the one it reads: a raw file cannot turn into qcow2 in between */
    a.src.format = ii.format;
    a.src.size = ii.virtual_size;
    char label[256];
    snprintf(label, sizeof(label), "vol import %s", c->pos[0]);
    if ((r = with_progress(c, label, do_copy_in, &a)) < 0)
        return r;
    if (!c->quiet)
        printf("imported %s as %s (%s)\n", src_path, c->pos[0], storage_format_name(a.format));
    return 0;
}

static int do_export(struct cli *c, const struct storage_progress *p, void *arg)
{
    struct copy_args *a = arg;
    if (strcmp(a->dest, "-") == 0)
        return volume_export_raw_fd(&c->paths, a->dst_ref, STDOUT_FILENO, p, &c->err);
    return volume_export(&c->paths, a->dst_ref, a->dest, a->have_format, a->format, p, &c->err);
}

int cmd_vol_export(struct cli *c)
{
    struct copy_args a = {.dst_ref = c->pos[0], .dest = c->pos[1], .have_format = cli_flag(c, "format")};
    int r;
    if ((r = format_opt(c, STORAGE_FORMAT_QCOW2, &a.format)) < 0)
        return r;
    bool to_stdout = strcmp(a.dest, "-") == 0;
    if (to_stdout && isatty(STDOUT_FILENO))
        return qv_fail(&c->err, -EINVAL, "vol export %s -: stdout is a terminal (redirect it to a file or a pipe)",
                       c->pos[0]);
    if (to_stdout && a.have_format && a.format != STORAGE_FORMAT_RAW)
        return qv_fail(&c->err, -EINVAL, "vol export %s -: a stream is raw (--format raw, or export to a file)",
                       c->pos[0]);
    char label[256];
    snprintf(label, sizeof(label), "vol export %s", c->pos[0]);
    if ((r = with_progress(c, label, do_export, &a)) < 0)
        return r;
    if (!c->quiet && !to_stdout)
        printf("exported %s to %s\n", c->pos[0], a.dest);
    return 0;
}

/* qvisor clone VM NEW [--linked]: here for the progress bar and Ctrl-C of long copies */
static int do_clone(struct cli *c, const struct storage_progress *p, void *arg)
{
    (void)arg;
    return vm_clone(&c->paths, c->pos[0], c->pos[1], cli_flag(c, "linked"), p, &c->err);
}

int cmd_clone(struct cli *c)
{
    char label[160];
    snprintf(label, sizeof(label), "clone %s %s", c->pos[0], c->pos[1]);
    int r = with_progress(c, label, do_clone, NULL);
    if (r == 0 && !c->quiet)
        printf("cloned %s to %s (%s)\n", c->pos[0], c->pos[1],
               cli_flag(c, "linked") ? "linked: copy-on-write on the source's images" : "full copies");
    return r;
}
