/* What a block job needs before it starts (blockjobs.c has the requests and the
 * jobs): the disk's chain as QEMU holds it (x-debug-query-block-graph from the
 * disk's top node) matched with the images' own for the paths; for a commit, a
 * read-write fd for every layer QEMU must write, which was opened read-only,
 * added to its fdset, its nodes reopened read-write and the read-only fd removed
 * (its open file holds QEMU's image lock); for a copy, the target created here
 * (qemu-img create as a watched child for qcow2) and passed with add-fd. A
 * snapshot's merge is such a commit (snapshot_merge.c); BLOCK_WRITABLE is the
 * commit's read-write step alone, for a snapshot-delete in a layer below the top.
 *
 * QEMU opens no path, and the backing names written into headers are the real
 * paths (backing-file), never /dev/fdset/N. One request is prepared at a time
 * (s->block_prep), step by step from QMP completions and SIGCHLD: the loop never
 * waits. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/supervisor/internal.h"

#define CREATE_TIMEOUT_MS 60000

/* ---- preparing: a failure answers the client and undoes what was made ---- */

void block_prep_fail(struct sup *s, const struct qv_err *err)
{
    struct block_prep *p = s->block_prep;
    if (!p)
        return;
    /* the copy's target, as far as it got into QEMU */
    if (p->added >= 3) {
        json_object *target = json_object_new_array();
        json_object_array_add(target, block_node_pair(p->tfmt, p->tfile));
        block_drop_nodes(s, target);
        json_object_put(target);
    } else if (p->added >= 1) {
        if (p->added == 2)
            block_send_logged(s, "blockdev-del", json_obj1("node-name", json_object_new_string(p->tfile)));
        block_send_logged(s, "remove-fd", json_obj1("fdset-id", json_object_new_int(p->fdset)));
    }
    if (p->created)
        unlink(p->dest);
    if (p->op == BLOCK_COPY)
        block_target_record(s, NULL);
    sup_log(s, "block %s of %s failed: %s", block_op_names[p->op], p->d.id, err->msg);
    if (p->client)
        sup_reply_error(s, p->client, err->code ? err->code : -EIO, "%s", err->msg);
    block_writable_fn done = p->writable;
    void *ctx = p->writable_ctx;
    block_prep_free(s);
    if (done)
        done(s, ctx, NULL, err);
}

/* BLOCK_WRITABLE: the layer reads through its read-write fd now; whoever asked goes on. */
static void writable_done(struct sup *s, const char *node)
{
    struct block_prep *p = s->block_prep;
    char name[64];
    snprintf(name, sizeof(name), "%s", node);
    block_writable_fn done = p->writable;
    void *ctx = p->writable_ctx;
    sup_log(s, "%s: %s is writable (node %s)", p->d.id, p->base, name);
    block_prep_free(s);
    done(s, ctx, name, NULL);
}

static void prep_failf(struct sup *s, int code, const char *fmt, ...) QV_PRINTF(3, 4);
static void prep_failf(struct sup *s, int code, const char *fmt, ...)
{
    struct qv_err e = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
    va_end(ap);
    block_prep_fail(s, &e);
}

/* A QMP step of the preparation: its reply continues at next(s, ret). */
static int prep_send(struct sup *s, const char *cmd, json_object *args, const int *fd, qmp_reply_fn next)
{
    if (!s->qmp || qmp_send(s->qmp, cmd, args, fd, fd ? 1 : 0, QMP_TIMEOUT_DEVICE, 0, next, s) < 0) {
        if (!s->qmp)
            json_object_put(args);
        prep_failf(s, -EIO, "%s: QEMU's monitor connection is lost", s->def.name);
        return -EIO;
    }
    return 0;
}

/* A failed step's QMP error, or false. */
static bool step_failed(struct sup *s, const char *what, const struct qv_err *err)
{
    if (!s->block_prep)
        return true;
    if (!err)
        return false;
    const char *m = err->msg;
    if (strncmp(m, "GenericError: ", 14) == 0)
        m += 14;
    prep_failf(s, err->code ? err->code : -EIO, "%s: %s of %s: %s: %s", s->def.name, block_op_names[s->block_prep->op],
               s->block_prep->d.id, what, m);
    return true;
}

/* ---- commit: read-write fds for the layers QEMU must write ---- */

/* The fdset holding the fds of file node `opaque`, and the numbers of those fds in QEMU. */
static int fdset_of(json_object *sets, const char *opaque, int *fdnums, int *nfd, int max)
{
    for (size_t i = 0; i < json_object_array_length(sets); i++) {
        json_object *set = json_object_array_get_idx(sets, i), *id, *fds, *op, *num;
        if (!json_object_object_get_ex(set, "fdset-id", &id) || !json_object_object_get_ex(set, "fds", &fds))
            continue;
        bool mine = false;
        *nfd = 0;
        for (size_t k = 0; k < json_object_array_length(fds); k++) {
            json_object *fd = json_object_array_get_idx(fds, k);
            if (json_object_object_get_ex(fd, "opaque", &op) && strcmp(json_object_get_string(op), opaque) == 0)
                mine = true;
            if (json_object_object_get_ex(fd, "fd", &num) && *nfd < max)
                fdnums[(*nfd)++] = json_object_get_int(num);
        }
        if (mine)
            return json_object_get_int(id);
    }
    return -1;
}

static void on_reopened(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    if (step_failed(s, "making the base writable (blockdev-reopen)", err))
        return;
    /* the node reads through the read-write fd now; the read-only one goes, and with it
     * the image locks its open file still holds (they would refuse the commit's write) */
    struct block_prep *p = s->block_prep;
    for (int i = 0; i < p->nrw; i++)
        for (int k = 0; k < p->nro[i]; k++) {
            json_object *a = json_object_new_object();
            json_object_object_add(a, "fdset-id", json_object_new_int(p->rw_set[i]));
            json_object_object_add(a, "fd", json_object_new_int(p->ro_fd[i][k]));
            block_send_logged(s, "remove-fd", a);
        }
    if (p->op == BLOCK_WRITABLE)
        writable_done(s, p->chain[p->b].fmt);
    else
        block_start_commit(s);
}

void block_layer_reopen_opts(const struct block_prep *p, int i, json_object *list)
{
    const struct layer *l = &p->chain[p->rw_layer[i]];
    char path[32];
    snprintf(path, sizeof(path), "/dev/fdset/%d", p->rw_set[i]);
    json_object_array_add(list, blockdev_file(l->file, path, &p->io, p->discard, false));
    json_object *fmt = blockdev_format(disk_format_names[l->format], l->fmt, l->file, NULL, &p->io, p->discard, false);
    if (l->format == FORMAT_QCOW2) {
        size_t below = p->rw_layer[i] + 1;
        json_object_object_add(fmt, "backing", below < p->n ? json_object_new_string(p->chain[below].fmt) : NULL);
    }
    json_object_array_add(list, fmt);
}

/* Every layer QEMU must write (opened read-only) gets its read-write fd; then its
 * file and format nodes are reopened read-write in one transaction, with the options
 * they were opened with otherwise (blockdev-reopen resets what is not given) and the
 * disk's discard, which a writable layer has (an active commit makes it the top). */
static void on_rw_added(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    if (step_failed(s, "add-fd", err))
        return;
    struct block_prep *p = s->block_prep;
    if (--p->rw_pending > 0)
        return;
    json_object *list = json_object_new_array();
    for (int i = 0; i < p->nrw; i++)
        block_layer_reopen_opts(p, i, list);
    prep_send(s, "blockdev-reopen", json_obj1("options", list), NULL, on_reopened);
}

static void on_commit_fdsets(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    if (step_failed(s, "query-fdsets", err))
        return;
    struct block_prep *p = s->block_prep;
    /* the base, and (not active) the overlay whose backing name is rewritten: unless
     * it is the top, which is writable already */
    size_t need[2] = {p->b, p->t ? p->t - 1 : 0};
    int n = p->t > 1 ? 2 : 1;
    for (int i = 0; i < n; i++) {
        struct layer *l = &p->chain[need[i]];
        p->rw_layer[i] = need[i];
        p->rw_set[i] = fdset_of(ret, l->file, p->ro_fd[i], &p->nro[i], 4);
        if (p->rw_set[i] < 0) {
            prep_failf(s, -EIO, "%s: commit of %s: QEMU has no fd set for %s (%s)", s->def.name, p->d.id, l->path,
                       l->file);
            return;
        }
        struct qv_err oe = {0};
        p->rw_fd[i] = storage_open_image(l->path, O_RDWR, &oe);
        if (p->rw_fd[i] < 0) {
            prep_failf(s, p->rw_fd[i], "%s: commit of %s: %s", s->def.name, p->d.id, oe.msg);
            return;
        }
        p->nrw = i + 1;
    }
    /* the fds stay owned by p until it is freed: qmp_send duplicated them */
    p->rw_pending = p->nrw;
    for (int i = 0; i < p->nrw; i++) {
        json_object *a = json_object_new_object();
        json_object_object_add(a, "fdset-id", json_object_new_int(p->rw_set[i]));
        json_object_object_add(a, "opaque", json_object_new_string(p->chain[p->rw_layer[i]].file));
        if (prep_send(s, "add-fd", a, &p->rw_fd[i], on_rw_added) < 0)
            return;
    }
}

/* ---- copy: the target, created here and passed as an fd ---- */

static void on_target_node(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    if (step_failed(s, "opening the target", err))
        return;
    struct block_prep *p = s->block_prep;
    if (++p->added < 3) {
        json_object *fmt = blockdev_format(disk_format_names[p->format], p->tfmt, p->tfile, NULL, &p->io, p->discard, false);
        prep_send(s, "blockdev-add", fmt, NULL, on_target_node);
        return;
    }
    block_start_copy(s);
}

static void on_target_fd(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    if (step_failed(s, "add-fd", err))
        return;
    struct block_prep *p = s->block_prep;
    p->added = 1;
    char path[32];
    snprintf(path, sizeof(path), "/dev/fdset/%d", p->fdset);
    prep_send(s, "blockdev-add", blockdev_file(p->tfile, path, &p->io, p->discard, false), NULL, on_target_node);
}

static void copy_open_target(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    struct qv_err oe = {0};
    sup_crash_point("block-copy-target-made");
    p->fd = storage_open_image(p->dest, O_RDWR, &oe);
    if (p->fd < 0) {
        prep_failf(s, p->fd, "%s: copy of %s: %s", s->def.name, p->d.id, oe.msg);
        return;
    }
    json_object *a = json_object_new_object();
    json_object_object_add(a, "fdset-id", json_object_new_int(p->fdset));
    json_object_object_add(a, "opaque", json_object_new_string(p->tfile));
    prep_send(s, "add-fd", a, &p->fd, on_target_fd);
}

static void copy_create_target(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    block_target_record(s, p);
    int fd = open(p->dest, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        int r = -errno;
        if (r == -EEXIST)
            prep_failf(s, r, "%s: copy of %s: %s exists already (choose a new name; qvisor never writes over a file)",
                       s->def.name, p->d.id, p->dest);
        else
            prep_failf(s, r, "%s: copy of %s: %s: %s", s->def.name, p->d.id, p->dest, strerror(-r));
        return;
    }
    p->created = true;
    if (p->format == FORMAT_RAW) {
        int r = ftruncate(fd, (off_t)p->size) < 0 ? -errno : 0;
        close(fd);
        if (r < 0) {
            prep_failf(s, r, "%s: copy of %s: %s: %s", s->def.name, p->d.id, p->dest, strerror(-r));
            return;
        }
        copy_open_target(s);
        return;
    }
    close(fd);
    char size[32];
    snprintf(size, sizeof(size), "%llu", (unsigned long long)p->size);
    const char *bin = getenv("QVISOR_QEMU_IMG");
    const char *argv[] = {bin && *bin ? bin : "qemu-img", "create", "-q", "-f", "qcow2", p->dest, size, NULL};
    struct qv_err e = {0};
    if (sup_child_spawn(&p->child, argv, CREATE_TIMEOUT_MS, &e) < 0)
        block_prep_fail(s, &e);
}

void block_child_exited(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    int status;
    char out[512];
    if (!p || p->child.pid <= 0 || !sup_child_reap(&p->child, &status, out, sizeof(out)))
        return;
    if (status != 0) {
        prep_failf(s, -EIO, "%s: copy of %s: qemu-img create %s: %s", s->def.name, p->d.id, p->dest,
                   out[0] ? out : status == 128 + 9 ? "killed after 60 s" : "failed");
        return;
    }
    copy_open_target(s);
}

uint64_t block_next_deadline(struct sup *s)
{
    return s->block_prep && s->block_prep->child.pid > 0 ? s->block_prep->child.deadline : 0;
}

void block_expire(struct sup *s, uint64_t now)
{
    if (s->block_prep)
        sup_child_expire(&s->block_prep->child, now);
}

void block_forget(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    if (!p)
        return;
    struct qv_err gone = {0};
    qv_fail(&gone, -ESRCH, "%s: QEMU exited before the %s of %s started", s->def.name, block_op_names[p->op],
            p->d.id);
    if (p->client)
        sup_reply_error(s, p->client, gone.code, "%s", gone.msg);
    if (p->created)
        unlink(p->dest);
    if (p->op == BLOCK_COPY)
        block_target_record(s, NULL);
    block_writable_fn done = p->writable;
    void *ctx = p->writable_ctx;
    block_prep_free(s);
    if (done)
        done(s, ctx, NULL, &gone);
    if (s->fdset_drop) {
        json_object_put(s->fdset_drop);
        s->fdset_drop = NULL;
    }
}

/* ---- the chain as QEMU holds it ---- */

static json_object *graph_node(json_object *nodes, int64_t id)
{
    for (size_t i = 0; i < json_object_array_length(nodes); i++) {
        json_object *n = json_object_array_get_idx(nodes, i), *v;
        if (json_object_object_get_ex(n, "id", &v) && json_object_get_int64(v) == id)
            return n;
    }
    return NULL;
}

const char *block_graph_child(json_object *g, const char *parent, const char *name)
{
    json_object *nodes, *edges, *v;
    if (!json_object_object_get_ex(g, "nodes", &nodes) || !json_object_object_get_ex(g, "edges", &edges))
        return NULL;
    int64_t pid = -1;
    for (size_t i = 0; i < json_object_array_length(nodes) && pid < 0; i++) {
        json_object *n = json_object_array_get_idx(nodes, i);
        if (json_object_object_get_ex(n, "name", &v) && strcmp(json_object_get_string(v), parent) == 0 &&
            json_object_object_get_ex(n, "id", &v))
            pid = json_object_get_int64(v);
    }
    for (size_t i = 0; pid >= 0 && i < json_object_array_length(edges); i++) {
        json_object *ed = json_object_array_get_idx(edges, i), *c, *nm;
        if (json_object_object_get_ex(ed, "parent", &v) && json_object_get_int64(v) == pid &&
            json_object_object_get_ex(ed, "name", &nm) && strcmp(json_object_get_string(nm), name) == 0 &&
            json_object_object_get_ex(ed, "child", &c)) {
            json_object *n = graph_node(nodes, json_object_get_int64(c));
            return n && json_object_object_get_ex(n, "name", &v) ? json_object_get_string(v) : NULL;
        }
    }
    return NULL;
}

/* A layer named by the user: its path (as the chain resolved it, or as given). */
static ssize_t layer_index(struct block_prep *p, const char *name, size_t from)
{
    char real[PATH_MAX];
    bool have_real = realpath(name, real) != NULL;
    for (size_t i = from; i < p->n; i++) {
        char lreal[PATH_MAX];
        if (strcmp(p->chain[i].path, name) == 0 ||
            (have_real && realpath(p->chain[i].path, lreal) && strcmp(lreal, real) == 0))
            return (ssize_t)i;
    }
    return -1;
}

static void on_graph(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    if (step_failed(s, "x-debug-query-block-graph", err))
        return;
    struct block_prep *p = s->block_prep;
    /* QEMU's chain from the top down ... */
    const char *node = p->d.node;
    p->n = 0;
    while (node && p->n <= STORAGE_CHAIN_MAX) {
        const char *file = block_graph_child(ret, node, "file");
        if (!file)
            break;
        snprintf(p->chain[p->n].fmt, sizeof(p->chain[0].fmt), "%s", node);
        snprintf(p->chain[p->n].file, sizeof(p->chain[0].file), "%s", file);
        p->n++;
        node = block_graph_child(ret, node, "backing");
    }
    /* ... and the images' own, for the paths: they must agree */
    struct storage_chain c;
    struct qv_err ce = {0};
    if (p->n == 0) {
        prep_failf(s, -EIO, "%s: %s: QEMU shows no image below node %s", s->def.name, p->d.id, p->d.node);
        return;
    }
    if (storage_chain_open(p->d.file, STORAGE_FORMAT_PROBE, O_RDONLY, &c, &ce) < 0) {
        prep_failf(s, ce.code, "%s: %s: %s", s->def.name, p->d.id, ce.msg);
        return;
    }
    bool same = c.n == p->n;
    for (size_t i = 0; same && i < c.n; i++) {
        snprintf(p->chain[i].path, sizeof(p->chain[i].path), "%s", c.layers[i].path);
        p->chain[i].format = c.layers[i].format == STORAGE_FORMAT_QCOW2 ? FORMAT_QCOW2 : FORMAT_RAW;
    }
    p->size = c.n ? c.layers[0].virtual_size : 0;
    size_t image_layers = c.n;
    storage_chain_close(&c);
    if (!same) {
        prep_failf(s, -EIO, "%s: %s: QEMU holds %zu layers below node %s, the image %s has %zu: not touching it",
                   s->def.name, p->d.id, p->n, p->d.node, p->d.file, image_layers);
        return;
    }
    switch (p->op) {
    case BLOCK_PULL: {
        if (p->n < 2) {
            prep_failf(s, -EINVAL, "%s: %s (%s) has no backing file: nothing to pull", s->def.name, p->d.id, p->d.file);
            return;
        }
        if (p->base[0]) {
            ssize_t b = layer_index(p, p->base, 1);
            if (b < 0) {
                prep_failf(s, -ENOENT, "%s: %s: %s is not a layer below %s", s->def.name, p->d.id, p->base, p->d.file);
                return;
            }
            if (b == 1) {
                prep_failf(s, -EINVAL, "%s: %s: %s is the top's own backing file: nothing to pull above it",
                           s->def.name, p->d.id, p->base);
                return;
            }
            p->b = (size_t)b;
        }
        block_start_pull(s);
        return;
    }
    case BLOCK_COMMIT: {
        if (p->n < 2) {
            prep_failf(s, -EINVAL, "%s: %s (%s) has no backing file: nothing to commit", s->def.name, p->d.id,
                       p->d.file);
            return;
        }
        ssize_t t = p->top[0] ? layer_index(p, p->top, 0) : 0;
        if (t < 0) {
            prep_failf(s, -ENOENT, "%s: %s: --top %s is not a layer of %s", s->def.name, p->d.id, p->top, p->d.file);
            return;
        }
        ssize_t b = p->base[0] ? layer_index(p, p->base, (size_t)t + 1) : (ssize_t)p->n - 1;
        if (b < 0) {
            prep_failf(s, -ENOENT, "%s: %s: --base %s is not a layer below %s", s->def.name, p->d.id, p->base,
                       p->chain[t].path);
            return;
        }
        p->t = (size_t)t;
        p->b = (size_t)b;
        prep_send(s, "query-fdsets", NULL, NULL, on_commit_fdsets);
        return;
    }
    case BLOCK_COPY:
        copy_create_target(s);
        return;
    case BLOCK_WRITABLE: {
        ssize_t b = layer_index(p, p->base, 0);
        if (b < 0) {
            prep_failf(s, -ENOENT, "%s: %s: %s is not a layer of %s", s->def.name, p->d.id, p->base, p->d.file);
            return;
        }
        if (b == 0) {
            writable_done(s, p->chain[0].fmt);   /* the top: writable already */
            return;
        }
        p->t = 0;   /* no overlay above it to rewrite: only the layer itself */
        p->b = (size_t)b;
        prep_send(s, "query-fdsets", NULL, NULL, on_commit_fdsets);
        return;
    }
    }
}

int block_prep_begin(struct sup *s, struct qv_err *e)
{
    if (!s->qmp || qmp_send(s->qmp, "x-debug-query-block-graph", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_graph, s) < 0) {
        block_prep_free(s);
        return qv_fail(e, -EIO, "%s: QEMU's monitor connection is lost", s->def.name);
    }
    return 0;
}
