/* Block jobs on a running VM's disks: pull (block-stream: the layers below the top
 * are copied into it and leave the chain), commit (block-commit: layers merged down
 * into a base; an active commit, of the disk's top, switches the disk to the base)
 * and copy (blockdev-mirror into a new file or volume, then a pivot onto it, or a
 * finished copy left beside the disk). The jobs themselves are jobs.c's; what comes
 * before them is blockprep.c's; this file has the requests, the starts, and what
 * comes after: the definition following the new top, the layers that left the
 * chain deleted from QEMU with their fdsets, a failed copy's file removed. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/supervisor/internal.h"

#define COPY_FDSET_BASE 5000    /* above the command line's fds and hotplug's sets */

const char *const block_op_names[] = {"pull", "commit", "copy", "write access"};

static void on_logged(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    if (err)
        sup_log(ctx, "block: %s", err->msg);
}

void block_send_logged(struct sup *s, const char *cmd, json_object *args)
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
            block_send_logged(s, "remove-fd", json_obj1("fdset-id", json_object_new_int(json_object_get_int(id))));
    }
    if (err)
        sup_log(s, "block: query-fdsets: %s", err->msg);
    if (names)
        json_object_put(names);
}

/* drop: [[format node, file node], ...], top first: a node goes once nothing above uses it. */
void block_drop_nodes(struct sup *s, json_object *drop)
{
    if (!s->qmp || !drop || !json_object_array_length(drop))
        return;
    if (!s->fdset_drop)
        s->fdset_drop = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(drop); i++) {
        json_object *pair = json_object_array_get_idx(drop, i);
        for (size_t k = 0; k < 2; k++)
            block_send_logged(s, "blockdev-del",
                        json_obj1("node-name", json_object_new_string(json_object_get_string(
                                              json_object_array_get_idx(pair, k)))));
        json_object_array_add(s->fdset_drop, json_object_get(json_object_array_get_idx(pair, 1)));
    }
    if (qmp_send(s->qmp, "query-fdsets", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_fdsets_for_drop, s) < 0) {
        json_object_put(s->fdset_drop);
        s->fdset_drop = NULL;
    }
}

json_object *block_node_pair(const char *fmt, const char *file)
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
        block_drop_nodes(s, data_get(j->data, "drop"));
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
        block_drop_nodes(s, data_get(j->data, "drop"));   /* the old chain */
        return;
    }
    /* the target goes out of QEMU: a finished copy is complete and closed, a failed one removed */
    json_object *target = json_object_new_array();
    json_object_array_add(target, block_node_pair(data_str(j->data, "node"), data_str(j->data, "file_node")));
    block_drop_nodes(s, target);
    json_object_put(target);
    if (err && dest) {
        if (unlink(dest) == 0)
            sup_log(s, "%s: the copy to %s did not happen; removed it", j->disk, dest);
    } else if (dest) {
        sup_log(s, "%s: the copy in %s is complete (no pivot: the disk stays on its image)", j->disk, dest);
    }
}

void block_commit_drop(struct sup *s, struct sup_job *j)
{
    block_drop_nodes(s, data_get(j->data, "drop"));
}

int block_commit_flush(struct sup *s, struct sup_job *j, qmp_reply_fn done, void *ctx)
{
    json_object *opts = data_get(j->data, "flush");
    if (!s->qmp || !opts)
        return -EIO;
    return qmp_send(s->qmp, "blockdev-reopen", json_obj1("options", json_object_get(opts)), NULL, 0, QMP_TIMEOUT_DEVICE,
                    0, done, ctx) < 0 ? -EIO : 0;
}

static void on_commit_flushed(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    if (err)
        sup_log(ctx, "block commit: flushing the base: %s", err->msg);
}

static void commit_gone(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (err)
        return;
    block_commit_drop(s, j);
    json_object *v;
    if (!(json_object_object_get_ex(j->data, "active", &v) && json_object_get_boolean(v)))
        block_commit_flush(s, j, on_commit_flushed, s);   /* what was merged is on disk */
}

const struct sup_job_ops block_pull_ops = {"pull", NULL, pull_done, pull_gone};
const struct sup_job_ops block_commit_ops = {"commit", NULL, commit_done, commit_gone};
const struct sup_job_ops block_active_commit_ops = {"active-commit", ready_noted, commit_done, commit_gone};
const struct sup_job_ops block_copy_ops = {"copy", ready_noted, copy_done, copy_gone};

/* Record before you create: a copy's target file and its nodes are in state.json
 * before the file exists, until the job that owns them is recorded (sup_job_start
 * writes both at once) or they are undone; a successor removes what its
 * predecessor left (block_reattach). */
#define COPY_TARGET_RECORD "block_copy_target"

void block_target_record(struct sup *s, const struct block_prep *p)
{
    if (!p) {
        if (s->rs.resources && json_object_object_get_ex(s->rs.resources, COPY_TARGET_RECORD, NULL)) {
            json_object_object_del(s->rs.resources, COPY_TARGET_RECORD);
            sup_save_state(s);
        }
        return;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "disk", json_object_new_string(p->d.id));
    json_object_object_add(o, "dest", json_object_new_string(p->dest));
    json_object_object_add(o, "node", json_object_new_string(p->tfmt));
    json_object_object_add(o, "file_node", json_object_new_string(p->tfile));
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, COPY_TARGET_RECORD, o);
    sup_save_state(s);
}

void block_reattach(struct sup *s)
{
    json_object *o, *v;
    if (!s->rs.resources || !json_object_object_get_ex(s->rs.resources, COPY_TARGET_RECORD, &o))
        return;
    const char *dest = json_object_object_get_ex(o, "dest", &v) ? json_object_get_string(v) : "";
    for (int i = 0; i < SUP_JOBS_MAX; i++) {
        const char *jd = s->jobs[i].used && s->jobs[i].data ? data_str(s->jobs[i].data, "dest") : NULL;
        if (jd && strcmp(jd, dest) == 0) {
            block_target_record(s, NULL);   /* its job owns it */
            return;
        }
    }
    json_object *node, *file_node;
    if (json_object_object_get_ex(o, "node", &node) && json_object_object_get_ex(o, "file_node", &file_node)) {
        json_object *target = json_object_new_array();
        json_object_array_add(target, block_node_pair(json_object_get_string(node), json_object_get_string(file_node)));
        block_drop_nodes(s, target);
        json_object_put(target);
    }
    if (dest[0] && unlink(dest) == 0)
        sup_log(s, "the copy to %s was being prepared when its supervisor died: removed it", dest);
    block_target_record(s, NULL);
}

void block_prep_free(struct sup *s)
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

/* ---- starting the job ---- */

static void start_job(struct sup *s, const struct sup_job_ops *ops, const char *cmd, json_object *args,
                      json_object *data, bool pivot, bool finish)
{
    struct block_prep *p = s->block_prep;
    struct qv_err e = {0};
    if (p->created)
        json_object_object_del(s->rs.resources, COPY_TARGET_RECORD);    /* the job's record takes it over */
    struct sup_job *j = sup_job_start(s, ops, p->d.id, cmd, args, data, p->client, p->wait, &e);
    if (!j) {
        if (p->created)
            block_target_record(s, p);
        block_prep_fail(s, &e);     /* nothing reached QEMU: what was prepared is undone here */
        return;
    }
    /* the tracker answers the client from here on, and the kind removes the target if
     * the copy does not happen */
    p->client = 0;
    p->created = false;
    p->added = 0;
    block_prep_free(s);
    if (pivot)
        sup_job_complete(s, j, &e);
    else if (finish)
        sup_job_cancel(s, j, true, &e);
}

static json_object *drop_range(struct block_prep *p, size_t from, size_t to)
{
    json_object *a = json_object_new_array();
    for (size_t i = from; i < to && i < p->n; i++)
        json_object_array_add(a, block_node_pair(p->chain[i].fmt, p->chain[i].file));
    return a;
}

void block_start_pull(struct sup *s)
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

void block_start_commit(struct sup *s)
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
    json_object_object_add(data, "top_path", json_object_new_string(p->chain[p->t].path));
    json_object_object_add(data, "base_format", json_object_new_string(disk_format_names[p->chain[p->b].format]));
    json_object_object_add(data, "drop", drop_range(p, p->t, p->b));
    if (!active) {
        /* QEMU's commit does not flush its base (a mirror does): blockdev-reopen does */
        json_object *flush = json_object_new_array();
        for (int i = 0; i < p->nrw; i++)
            if (p->rw_layer[i] == p->b)
                block_layer_reopen_opts(p, i, flush);
        json_object_object_add(data, "flush", flush);
    }
    const struct sup_job_ops *ops = active ? &block_active_commit_ops : &block_commit_ops;
    if (p->snap[0]) {
        /* a snapshot's overlay: the snapshot's own step follows (snapshot_merge.c) */
        json_object_object_add(data, "name", json_object_new_string(p->snap));
        if (p->bandwidth)
            json_object_object_add(data, "bandwidth", json_object_new_int64(p->bandwidth));
        ops = &snapshot_merge_ops;
    }
    /* an active commit switches the disk to its base once the data is merged */
    start_job(s, ops, "block-commit", args, data, active, false);
}

void block_start_copy(struct sup *s)
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

/* What refuses a block job on disk d, whatever its options; a volume's path into d->file. */
static int prep_check(struct sup *s, struct disk_ref *d, const char *op, enum block_op bop, struct qv_err *e)
{
    /* a hotplugged disk is one like the definition's: its slot keeps how it was attached */
    const struct vm_disk *k = d->hp ? NULL : &s->def.disks[d->index];
    if (d->hp && (d->hp->pending || d->hp->removing))
        return qv_fail(e, -EBUSY, "%s: %s is being %s", s->def.name, d->id, d->hp->pending ? "attached" : "detached");
    if (k && k->snapshot)
        return qv_fail(e, -EINVAL, "%s: %s has a throw-away overlay (snapshot: true): nothing of it is kept, so "
                       "there is nothing to %s", s->def.name, d->id, op);
    if ((k ? k->readonly : d->hp->readonly) && bop != BLOCK_COPY)
        return qv_fail(e, -EINVAL, "%s: %s is read-only", s->def.name, d->id);
    struct sup_job *j = sup_job_find(s, d->id);
    if (j)
        return qv_fail(e, -EBUSY, "%s: %s has a %s job running already (%s); wait for it, or `qvisor block job %s %s "
                       "--abort`", s->def.name, d->id, j->ops->kind, j->id, s->def.name, d->id);
    if (s->block_prep)
        return qv_fail(e, -EBUSY, "%s: another block job is being started; try again in a moment", s->def.name);
    if (!d->file[0] && k && k->volume) {
        enum disk_format f;
        if (vol_resolve(s->paths, k->volume, d->file, sizeof(d->file), &f, e) < 0)
            return qv_prefix(e, "%s: %s: ", s->def.name, d->id);
    }
    return 0;
}

static struct block_prep *prep_new(struct sup *s, unsigned client, const struct disk_ref *d, enum block_op op)
{
    const struct vm_disk *k = d->hp ? NULL : &s->def.disks[d->index];
    struct block_prep *p = qv_xcalloc(1, sizeof(*p));
    p->op = op;
    p->client = client;
    p->d = *d;
    p->fd = -1;
    p->child.out = -1;
    p->format = (k ? k->format : d->hp->format) == FORMAT_RAW ? FORMAT_RAW : FORMAT_QCOW2;
    p->io = k ? disk_io_mode(k->cache, k->aio, &s->facts) : disk_io_mode(d->hp->cache, d->hp->aio, &s->facts);
    p->discard = k ? k->discard : d->hp->discard;
    return p;
}

/* A commit or a reopen on behalf of a snapshot: disk found and checked, the prep begun. */
static int prep_for_snapshot(struct sup *s, unsigned client, const char *disk, enum block_op op, const char *top,
                             const char *base, struct block_prep **out, struct qv_err *e)
{
    struct disk_ref d;
    if (!disk_find(s, disk, &d))
        return qv_fail(e, -ENOENT, "%s: no disk %s", s->def.name, disk);
    int r = prep_check(s, &d, op == BLOCK_COMMIT ? "merge" : "change", op, e);
    if (r < 0)
        return r;
    struct block_prep *p = prep_new(s, client, &d, op);
    p->wait = true;
    if (snprintf(p->top, sizeof(p->top), "%s", top ? top : "") >= (int)sizeof(p->top) ||
        snprintf(p->base, sizeof(p->base), "%s", base) >= (int)sizeof(p->base)) {
        free(p);
        return qv_fail(e, -ENAMETOOLONG, "%s: %s: a layer's path is too long", s->def.name, disk);
    }
    *out = p;
    return 0;
}

int block_commit_begin(struct sup *s, unsigned client, const char *disk, const char *top, const char *base,
                       const char *snap, int64_t bandwidth, struct qv_err *e)
{
    struct block_prep *p;
    int r = prep_for_snapshot(s, client, disk, BLOCK_COMMIT, top, base, &p, e);
    if (r < 0)
        return r;
    snprintf(p->snap, sizeof(p->snap), "%s", snap ? snap : "");
    p->bandwidth = bandwidth;
    s->block_prep = p;
    sup_log(s, "block commit of %s (%s into %s)%s%s", p->d.id, top, base, snap ? " deletes snapshot " : "",
            snap ? snap : "");
    return block_prep_begin(s, e);
}

int block_writable_begin(struct sup *s, const char *disk, const char *path, block_writable_fn done, void *ctx,
                         struct qv_err *e)
{
    struct block_prep *p;
    int r = prep_for_snapshot(s, 0, disk, BLOCK_WRITABLE, NULL, path, &p, e);
    if (r < 0)
        return r;
    p->writable = done;
    p->writable_ctx = ctx;
    s->block_prep = p;
    return block_prep_begin(s, e);
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
    int r = prep_check(s, &d, op, bop, e);
    if (r < 0)
        return r;
    struct block_prep *p = prep_new(s, client, &d, bop);
    char fmt[16], bw[32];
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
    return block_prep_begin(s, e);
}
