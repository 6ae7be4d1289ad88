/* Block jobs on a running VM's disks: pull (block-stream: the layers below the top
 * are copied into it and leave the chain), commit (block-commit: layers merged down
 * into a base; an active commit, of the disk's top, switches the disk to the base)
 * and copy (blockdev-mirror into a new file or volume, then a pivot onto it, or a
 * finished copy left beside the disk). The jobs themselves are jobs.c's; this is
 * what comes before (the chain as QEMU holds it, fds for whatever QEMU must write
 * or open) and after (the definition following the new top, the layers that left
 * the chain deleted from QEMU with their fdsets, a failed copy's file removed).
 *
 * QEMU opens no path here either: a commit's base (and the overlay whose backing
 * name it rewrites) gets a read-write fd added to its fdset, since its node was
 * opened read-only; a copy's target is created by the supervisor (qemu-img create
 * as a watched child for qcow2) and passed with add-fd. Backing names written into
 * headers are the real paths (backing-file), never /dev/fdset/N.
 *
 * One request is prepared at a time (s->block_prep), step by step from QMP
 * completions and SIGCHLD: the loop never waits. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/supervisor/internal.h"

#define COPY_FDSET_BASE 5000    /* above the command line's fds and hotplug's sets */
#define CREATE_TIMEOUT_MS 60000

enum block_op { BLOCK_PULL, BLOCK_COMMIT, BLOCK_COPY };
static const char *const block_op_names[] = {"pull", "commit", "copy"};

struct layer {
    char fmt[64], file[64];     /* the layer's format and protocol nodes */
    char path[PATH_MAX];
    enum disk_format format;
};

struct block_prep {
    enum block_op op;
    unsigned client;
    bool wait;
    struct disk_ref d;
    struct disk_io io;
    struct layer chain[STORAGE_CHAIN_MAX + 1];
    size_t n;
    uint64_t size;              /* the top's virtual size */
    /* options */
    char base[PATH_MAX], top[PATH_MAX];
    char dest[PATH_MAX], volume[160];
    enum disk_format format;
    bool pivot, finish;
    int64_t bandwidth;
    /* commit */
    size_t t, b;                /* chain indexes of top and base */
    int rw_fd[2], nrw;          /* read-write fds for base and the top's overlay */
    size_t rw_layer[2];         /* their chain indexes */
    int rw_set[2];              /* their fdsets */
    int ro_fd[2][4], nro[2];    /* QEMU's numbers of the read-only fds already in them */
    int rw_pending;             /* their add-fd not answered yet */
    /* copy */
    unsigned seq;
    int fdset, fd;
    char tfmt[64], tfile[64];
    bool created;               /* dest is ours: removed when the copy does not happen */
    int added;                  /* 1 add-fd done, 2 file node, 3 format node */
    struct sup_child child;
};

static void prep_free(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    if (!p)
        return;
    for (int i = 0; i < p->nrw; i++)
        if (p->rw_fd[i] >= 0)
            close(p->rw_fd[i]);
    if (p->fd >= 0)
        close(p->fd);
    sup_child_abort(&p->child);
    free(p);
    s->block_prep = NULL;
}

static json_object *obj1(const char *key, json_object *v)
{
    json_object *a = json_object_new_object();
    json_object_object_add(a, key, v);
    return a;
}

static void on_logged(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    if (err)
        sup_log(ctx, "block: %s", err->msg);
}

static void send_logged(struct sup *s, const char *cmd, json_object *args)
{
    if (!s->qmp || qmp_send(s->qmp, cmd, args, NULL, 0, QMP_TIMEOUT_DEVICE, 0, on_logged, s) < 0)
        if (!s->qmp)
            json_object_put(args);
}

/* ---- layers leaving QEMU: nodes, then their fdsets (found by their opaque, the file node's name) ---- */

static void on_fdsets_for_drop(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    json_object *names = s->fdset_drop;
    s->fdset_drop = NULL;
    for (size_t i = 0; !err && names && i < json_object_array_length(ret); i++) {
        json_object *set = json_object_array_get_idx(ret, i), *id, *fds;
        if (!json_object_object_get_ex(set, "fdset-id", &id) || !json_object_object_get_ex(set, "fds", &fds))
            continue;
        bool match = false;
        for (size_t k = 0; k < json_object_array_length(fds) && !match; k++) {
            json_object *op;
            if (!json_object_object_get_ex(json_object_array_get_idx(fds, k), "opaque", &op))
                continue;
            for (size_t n = 0; n < json_object_array_length(names) && !match; n++)
                match = strcmp(json_object_get_string(json_object_array_get_idx(names, n)),
                               json_object_get_string(op)) == 0;
        }
        if (match)
            send_logged(s, "remove-fd", obj1("fdset-id", json_object_new_int(json_object_get_int(id))));
    }
    if (err)
        sup_log(s, "block: query-fdsets: %s", err->msg);
    if (names)
        json_object_put(names);
}

/* drop: [[format node, file node], ...], top first: a node goes once nothing above uses it. */
static void drop_nodes(struct sup *s, json_object *drop)
{
    if (!s->qmp || !drop || !json_object_array_length(drop))
        return;
    if (!s->fdset_drop)
        s->fdset_drop = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(drop); i++) {
        json_object *pair = json_object_array_get_idx(drop, i);
        for (size_t k = 0; k < 2; k++)
            send_logged(s, "blockdev-del",
                        obj1("node-name", json_object_new_string(json_object_get_string(
                                              json_object_array_get_idx(pair, k)))));
        json_object_array_add(s->fdset_drop, json_object_get(json_object_array_get_idx(pair, 1)));
    }
    if (qmp_send(s->qmp, "query-fdsets", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_fdsets_for_drop, s) < 0) {
        json_object_put(s->fdset_drop);
        s->fdset_drop = NULL;
    }
}

static json_object *pair(const char *fmt, const char *file)
{
    json_object *a = json_object_new_array();
    json_object_array_add(a, json_object_new_string(fmt));
    json_object_array_add(a, json_object_new_string(file));
    return a;
}

static const char *data_str(json_object *data, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(data, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v) : NULL;
}

static json_object *data_get(json_object *data, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(data, key, &v) ? v : NULL;
}

/* ---- the kinds: what happens once QEMU is done ---- */

extern const struct sup_job_ops block_copy_ops;

static void pull_gone(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (!err)
        drop_nodes(s, data_get(j->data, "drop"));
}

static void pull_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    (void)s, (void)j, (void)err;   /* the top stays the top: the definition has nothing to follow */
}

/* A pivot needs a ready job; the tracker sends it (or the --finish) then. */
static void ready_noted(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    (void)err;
    json_object *v;
    bool active = j->data && json_object_object_get_ex(j->data, "active", &v) && json_object_get_boolean(v);
    if (j->ops == &block_copy_ops || active)
        sup_log(s, "%s: %s", j->disk, j->pivot ? "in sync; switching over" : j->finish ? "in sync; finishing the copy"
                : "in sync; `qvisor block job` --pivot switches over, --finish keeps the copy, --abort drops it");
}

static void commit_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    json_object *v;
    bool active = json_object_object_get_ex(j->data, "active", &v) && json_object_get_boolean(v);
    if (err || !active)
        return;
    const char *node = data_str(j->data, "base_node"), *path = data_str(j->data, "base_path");
    const char *fmt = data_str(j->data, "base_format");
    if (!node || !path)
        return;
    struct qv_err e = {0};
    if (disk_switched(s, j->disk, node, path, NULL, fmt && strcmp(fmt, "raw") == 0 ? FORMAT_RAW : FORMAT_QCOW2, &e) < 0)
        j->fail = e;
}

static void copy_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (err || j->finish || !j->pivot)
        return;     /* no pivot: the disk stays where it was */
    const char *node = data_str(j->data, "node"), *dest = data_str(j->data, "dest");
    const char *vol = data_str(j->data, "volume"), *fmt = data_str(j->data, "format");
    struct qv_err e = {0};
    if (node && dest &&
        disk_switched(s, j->disk, node, dest, vol, fmt && strcmp(fmt, "raw") == 0 ? FORMAT_RAW : FORMAT_QCOW2, &e) < 0)
        j->fail = e;
}

static void copy_gone(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    const char *dest = data_str(j->data, "dest");
    if (!err && j->pivot && !j->finish) {
        drop_nodes(s, data_get(j->data, "drop"));   /* the old chain */
        return;
    }
    /* the target goes out of QEMU: a finished copy is complete and closed, a failed one removed */
    json_object *target = json_object_new_array();
    json_object_array_add(target, pair(data_str(j->data, "node"), data_str(j->data, "file_node")));
    drop_nodes(s, target);
    json_object_put(target);
    if (err && dest) {
        if (unlink(dest) == 0)
            sup_log(s, "%s: the copy to %s did not happen; removed it", j->disk, dest);
    } else if (dest) {
        sup_log(s, "%s: the copy in %s is complete (no pivot: the disk stays on its image)", j->disk, dest);
    }
}

static void commit_gone(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (!err)
        drop_nodes(s, data_get(j->data, "drop"));
}

const struct sup_job_ops block_pull_ops = {"pull", NULL, pull_done, pull_gone};
const struct sup_job_ops block_commit_ops = {"commit", NULL, commit_done, commit_gone};
const struct sup_job_ops block_active_commit_ops = {"active-commit", ready_noted, commit_done, commit_gone};
const struct sup_job_ops block_copy_ops = {"copy", ready_noted, copy_done, copy_gone};

/* ---- preparing: a failure answers the client and undoes what was made ---- */

static void prep_fail(struct sup *s, const struct qv_err *err)
{
    struct block_prep *p = s->block_prep;
    if (!p)
        return;
    /* the copy's target, as far as it got into QEMU */
    if (p->added >= 3) {
        json_object *target = json_object_new_array();
        json_object_array_add(target, pair(p->tfmt, p->tfile));
        drop_nodes(s, target);
        json_object_put(target);
    } else if (p->added >= 1) {
        if (p->added == 2)
            send_logged(s, "blockdev-del", obj1("node-name", json_object_new_string(p->tfile)));
        send_logged(s, "remove-fd", obj1("fdset-id", json_object_new_int(p->fdset)));
    }
    if (p->created)
        unlink(p->dest);
    sup_log(s, "block %s of %s failed: %s", block_op_names[p->op], p->d.id, err->msg);
    if (p->client)
        sup_reply_error(s, p->client, err->code ? err->code : -EIO, "%s", err->msg);
    prep_free(s);
}

static void prep_failf(struct sup *s, int code, const char *fmt, ...) QV_PRINTF(3, 4);
static void prep_failf(struct sup *s, int code, const char *fmt, ...)
{
    struct qv_err e = {.code = code};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
    va_end(ap);
    prep_fail(s, &e);
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

/* ---- starting the job ---- */

static void start_job(struct sup *s, const struct sup_job_ops *ops, const char *cmd, json_object *args,
                      json_object *data, bool pivot, bool finish)
{
    struct block_prep *p = s->block_prep;
    struct qv_err e = {0};
    unsigned client = p->client;
    bool wait = p->wait;
    p->client = 0;      /* the tracker answers from here on */
    p->created = false; /* and the kind removes the target if the copy does not happen */
    p->added = 0;
    char id[24];
    snprintf(id, sizeof(id), "%s", p->d.id);
    prep_free(s);
    struct sup_job *j = sup_job_start(s, ops, id, cmd, args, data, client, wait, &e);
    if (!j) {
        if (client)
            sup_reply_error(s, client, e.code, "%s", e.msg);
        return;
    }
    if (pivot)
        sup_job_complete(s, j, &e);
    else if (finish)
        sup_job_cancel(s, j, true, &e);
}

static json_object *drop_range(struct block_prep *p, size_t from, size_t to)
{
    json_object *a = json_object_new_array();
    for (size_t i = from; i < to && i < p->n; i++)
        json_object_array_add(a, pair(p->chain[i].fmt, p->chain[i].file));
    return a;
}

static void start_pull(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(p->chain[0].fmt));
    size_t b = p->n;    /* no base: every layer below the top is copied up */
    if (p->base[0]) {
        b = p->b;
        json_object_object_add(args, "base-node", json_object_new_string(p->chain[b].fmt));
        /* into the top's header: the real name, not the fdset QEMU reads it through */
        json_object_object_add(args, "backing-file", json_object_new_string(p->chain[b].path));
    }
    if (p->bandwidth)
        json_object_object_add(args, "speed", json_object_new_int64(p->bandwidth));
    json_object *data = json_object_new_object();
    json_object_object_add(data, "drop", drop_range(p, 1, b));
    json_object_object_add(data, "base", json_object_new_string(b < p->n ? p->chain[b].path : ""));
    start_job(s, &block_pull_ops, "block-stream", args, data, false, false);
}

static void start_commit(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    bool active = p->t == 0;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(p->chain[0].fmt));
    json_object_object_add(args, "top-node", json_object_new_string(p->chain[p->t].fmt));
    json_object_object_add(args, "base-node", json_object_new_string(p->chain[p->b].fmt));
    if (!active)
        json_object_object_add(args, "backing-file", json_object_new_string(p->chain[p->b].path));
    if (p->bandwidth)
        json_object_object_add(args, "speed", json_object_new_int64(p->bandwidth));
    json_object *data = json_object_new_object();
    json_object_object_add(data, "active", json_object_new_boolean(active));
    json_object_object_add(data, "base_node", json_object_new_string(p->chain[p->b].fmt));
    json_object_object_add(data, "base_path", json_object_new_string(p->chain[p->b].path));
    json_object_object_add(data, "base_format", json_object_new_string(disk_format_names[p->chain[p->b].format]));
    json_object_object_add(data, "drop", drop_range(p, p->t, p->b));
    /* an active commit switches the disk to its base once the data is merged */
    start_job(s, active ? &block_active_commit_ops : &block_commit_ops, "block-commit", args, data, active, false);
}

static void start_copy(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(p->chain[0].fmt));
    json_object_object_add(args, "target", json_object_new_string(p->tfmt));
    json_object_object_add(args, "sync", json_object_new_string("full"));
    if (p->bandwidth)
        json_object_object_add(args, "speed", json_object_new_int64(p->bandwidth));
    json_object *data = json_object_new_object();
    json_object_object_add(data, "dest", json_object_new_string(p->dest));
    if (p->volume[0])
        json_object_object_add(data, "volume", json_object_new_string(p->volume));
    json_object_object_add(data, "format", json_object_new_string(disk_format_names[p->format]));
    json_object_object_add(data, "node", json_object_new_string(p->tfmt));
    json_object_object_add(data, "file_node", json_object_new_string(p->tfile));
    json_object_object_add(data, "drop", drop_range(p, 0, p->n));
    start_job(s, &block_copy_ops, "blockdev-mirror", args, data, p->pivot, p->finish);
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
            send_logged(s, "remove-fd", a);
        }
    start_commit(s);
}

/* Every layer QEMU must write (opened read-only) gets its read-write fd; then its
 * file and format nodes are reopened read-write in one transaction, with the options
 * they were opened with otherwise (blockdev-reopen resets what is not given). */
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
    for (int i = 0; i < p->nrw; i++) {
        const struct layer *l = &p->chain[p->rw_layer[i]];
        char path[32];
        snprintf(path, sizeof(path), "/dev/fdset/%d", p->rw_set[i]);
        json_object_array_add(list, blockdev_file(l->file, path, &p->io, false, false));
        json_object *fmt = blockdev_format(disk_format_names[l->format], l->fmt, l->file, NULL, &p->io, false, false);
        if (l->format == FORMAT_QCOW2) {
            size_t below = p->rw_layer[i] + 1;
            json_object_object_add(fmt, "backing", below < p->n ? json_object_new_string(p->chain[below].fmt) : NULL);
        }
        json_object_array_add(list, fmt);
    }
    prep_send(s, "blockdev-reopen", obj1("options", list), NULL, on_reopened);
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
        json_object *fmt = blockdev_format(disk_format_names[p->format], p->tfmt, p->tfile, NULL, &p->io, false, false);
        prep_send(s, "blockdev-add", fmt, NULL, on_target_node);
        return;
    }
    start_copy(s);
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
    prep_send(s, "blockdev-add", blockdev_file(p->tfile, path, &p->io, false, false), NULL, on_target_node);
}

static void copy_open_target(struct sup *s)
{
    struct block_prep *p = s->block_prep;
    struct qv_err oe = {0};
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
        prep_fail(s, &e);
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
    if (p->client)
        sup_reply_error(s, p->client, -ESRCH, "%s: QEMU exited before the %s of %s started", s->def.name,
                        block_op_names[p->op], p->d.id);
    if (p->created)
        unlink(p->dest);
    prep_free(s);
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

/* The child of `parent` on edge `name` ("backing", "file"), by node name; NULL when none. */
static const char *graph_child(json_object *g, const char *parent, const char *name)
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
        const char *file = graph_child(ret, node, "file");
        if (!file)
            break;
        snprintf(p->chain[p->n].fmt, sizeof(p->chain[0].fmt), "%s", node);
        snprintf(p->chain[p->n].file, sizeof(p->chain[0].file), "%s", file);
        p->n++;
        node = graph_child(ret, node, "backing");
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
        start_pull(s);
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
    }
}

/* ---- requests ---- */

static int opt_str(json_object *o, const char *key, char *out, size_t len, struct qv_err *e)
{
    json_object *v;
    out[0] = '\0';
    if (!o || !json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_string))
        return qv_fail(e, -EINVAL, "block: \"%s\" must be a string", key);
    if (snprintf(out, len, "%s", json_object_get_string(v)) >= (int)len)
        return qv_fail(e, -ENAMETOOLONG, "block: \"%s\" is too long", key);
    return 0;
}

static int opt_bool(json_object *o, const char *key, bool *out, struct qv_err *e)
{
    json_object *v;
    *out = false;
    if (!o || !json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_boolean))
        return qv_fail(e, -EINVAL, "block: \"%s\" must be true or false", key);
    *out = json_object_get_boolean(v);
    return 0;
}

/* `block job`: info, --abort, --pivot, --finish, --wait. */
static int job_request(struct sup *s, unsigned client, const struct disk_ref *d, json_object *o, struct qv_err *e)
{
    bool abort_it, pivot, finish, wait;
    int r;
    if ((r = opt_bool(o, "abort", &abort_it, e)) < 0 || (r = opt_bool(o, "pivot", &pivot, e)) < 0 ||
        (r = opt_bool(o, "finish", &finish, e)) < 0 || (r = opt_bool(o, "wait", &wait, e)) < 0)
        return r;
    struct sup_job *j = sup_job_find(s, d->id);
    if (!j)
        return qv_fail(e, -ENOENT, "%s: no block job runs on %s", s->def.name, d->id);
    if ((int)abort_it + (int)pivot + (int)finish > 1)
        return qv_fail(e, -EINVAL, "block job: --abort, --pivot and --finish exclude each other");
    if (abort_it)
        r = sup_job_cancel(s, j, false, e);
    else if (pivot)
        r = sup_job_complete(s, j, e);
    else if (finish)
        r = sup_job_cancel(s, j, true, e);
    if (r < 0)
        return r;
    if (wait)
        return sup_job_wait(s, j, client, e);
    json_object *reply = json_object_new_object();
    json_object_object_add(reply, "job", sup_job_json(j));
    sup_reply_json(s, client, reply);
    json_object_put(reply);
    return 0;
}

int block_request(struct sup *s, unsigned client, const char *op, const char *target, json_object *o,
                  struct qv_err *e)
{
    struct disk_ref d;
    if (!disk_find(s, target, &d))
        return qv_fail(e, -ENOENT, "%s: no disk %s (a device id such as disk0, an image path or a serial)",
                       s->def.name, target);
    if (strcmp(op, "job") == 0)
        return job_request(s, client, &d, o, e);
    enum block_op bop;
    if (strcmp(op, "pull") == 0)
        bop = BLOCK_PULL;
    else if (strcmp(op, "commit") == 0)
        bop = BLOCK_COMMIT;
    else if (strcmp(op, "copy") == 0)
        bop = BLOCK_COPY;
    else
        return qv_fail(e, -EINVAL, "block: \"%s\" is not one of pull, commit, copy, job", op);
    if (d.hp)
        return qv_fail(e, -EOPNOTSUPP, "%s: %s is hotplugged; block jobs work on the definition's disks "
                       "(attach it with --persistent and restart the VM)", s->def.name, d.id);
    const struct vm_disk *k = &s->def.disks[d.index];
    if (k->snapshot)
        return qv_fail(e, -EINVAL, "%s: %s has a throw-away overlay (snapshot: true): nothing of it is kept, so "
                       "there is nothing to %s", s->def.name, d.id, op);
    if (k->readonly && bop != BLOCK_COPY)
        return qv_fail(e, -EINVAL, "%s: %s is read-only", s->def.name, d.id);
    struct sup_job *j = sup_job_find(s, d.id);
    if (j)
        return qv_fail(e, -EBUSY, "%s: %s has a %s job running already (%s); wait for it, or `qvisor block job %s %s "
                       "--abort`", s->def.name, d.id, j->ops->kind, j->id, s->def.name, d.id);
    if (s->block_prep)
        return qv_fail(e, -EBUSY, "%s: another block job is being started; try again in a moment", s->def.name);
    if (!d.file[0] && k->volume) {
        enum disk_format f;
        if (vol_resolve(s->paths, k->volume, d.file, sizeof(d.file), &f, e) < 0)
            return qv_prefix(e, "%s: %s: ", s->def.name, d.id);
    }
    struct block_prep *p = qv_xcalloc(1, sizeof(*p));
    p->op = bop;
    p->client = client;
    p->d = d;
    p->fd = -1;
    p->child.out = -1;
    p->format = k->format == FORMAT_RAW ? FORMAT_RAW : FORMAT_QCOW2;
    p->io = disk_io_mode(k->cache, k->aio, &s->facts);
    char fmt[16], bw[32];
    int r;
    if ((r = opt_bool(o, "wait", &p->wait, e)) < 0 || (r = opt_str(o, "base", p->base, sizeof(p->base), e)) < 0 ||
        (r = opt_str(o, "top", p->top, sizeof(p->top), e)) < 0 ||
        (r = opt_str(o, "dest", p->dest, sizeof(p->dest), e)) < 0 ||
        (r = opt_str(o, "volume", p->volume, sizeof(p->volume), e)) < 0 ||
        (r = opt_str(o, "format", fmt, sizeof(fmt), e)) < 0 || (r = opt_bool(o, "pivot", &p->pivot, e)) < 0 ||
        (r = opt_bool(o, "finish", &p->finish, e)) < 0 || (r = opt_str(o, "bandwidth", bw, sizeof(bw), e)) < 0) {
        free(p);
        return r;
    }
    uint64_t speed = 0;
    if (bw[0] && (parse_size(bw, &speed) < 0 || speed > INT64_MAX))
        r = qv_fail(e, -EINVAL, "block: --bandwidth \"%s\" is not a size per second (100M)", bw);
    p->bandwidth = (int64_t)speed;
    if (r == 0 && fmt[0]) {
        if (strcmp(fmt, "raw") == 0)
            p->format = FORMAT_RAW;
        else if (strcmp(fmt, "qcow2") == 0)
            p->format = FORMAT_QCOW2;
        else
            r = qv_fail(e, -EINVAL, "block copy: --format \"%s\" is not one of raw, qcow2", fmt);
    }
    if (r == 0 && bop == BLOCK_COPY) {
        if (p->pivot && p->finish)
            r = qv_fail(e, -EINVAL, "block copy: --pivot and --finish exclude each other");
        else if (!p->dest[0] == !p->volume[0])
            r = qv_fail(e, -EINVAL, "block copy: give the destination as --dest FILE or --volume POOL/NAME");
        else if (p->volume[0])
            r = vol_new_path(s->paths, p->volume, p->dest, sizeof(p->dest), e);
        else if (p->dest[0] != '/')
            r = qv_fail(e, -EINVAL, "block copy: --dest %s: give an absolute path", p->dest);
        struct stat st;
        if (r == 0 && lstat(p->dest, &st) == 0)
            r = qv_fail(e, -EEXIST, "%s: copy of %s: %s exists already (choose a new name; qvisor never writes over "
                        "a file)", s->def.name, d.id, p->dest);
    }
    if (r < 0) {
        free(p);
        return r;
    }
    p->seq = s->job_seq;
    p->fdset = COPY_FDSET_BASE + (int)(s->job_seq % 4096);
    snprintf(p->tfmt, sizeof(p->tfmt), "%s-c%u-fmt", d.id, s->job_seq);
    snprintf(p->tfile, sizeof(p->tfile), "%s-c%u-file", d.id, s->job_seq);
    s->job_seq++;       /* the target's names are this request's alone */
    s->block_prep = p;
    sup_log(s, "block %s of %s (%s) requested", op, d.id, d.file);
    if (!s->qmp || qmp_send(s->qmp, "x-debug-query-block-graph", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_graph, s) < 0) {
        prep_free(s);
        return qv_fail(e, -EIO, "%s: QEMU's monitor connection is lost", s->def.name);
    }
    return 0;
}
