/* A running VM's snapshot deleted where it is not simply the top:
 * - disk-only: each disk's overlay is merged into the image below it by a block
 *   commit, prepared and started as `block commit` is (blockprep.c, blockjobs.c: a
 *   read-write fd for each layer QEMU writes, the real backing names in headers).
 *   The overlay that is the disk's top is an active commit with a pivot back to the
 *   image below; one in the middle of the chain is an inner commit, the overlay
 *   above it re-pointed (backing-file). The job's kind is snapshot-merge: once it
 *   concluded, the snapshot's own step follows (the definition follows a pivot, the
 *   snapshot above rests on the image below, the overlay file goes and the disk
 *   leaves the record, snapshot_disk_merged), then the next disk's commit, one disk
 *   after the other. A successor supervisor carries a job on (jobs.c) and then
 *   the remaining disks. What follows a job (its nodes out of QEMU, an inner
 *   commit's base flushed, the overlay removed, the next disk) is recorded in
 *   state.json ("snapshot_merge") before the record changes: a supervisor that
 *   dies anywhere after it leaves its successor the step to finish.
 * - full (internal) kept in an image below a disk-only overlay: that layer is made
 *   writable (BLOCK_WRITABLE) and the snapshot-delete job names its node. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/internal.h"

static const char *data_str(struct sup_job *j, const char *key)
{
    json_object *v;
    return j->data && json_object_object_get_ex(j->data, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v) : NULL;
}

static const struct storage_snapshot_disk *disk_of(const struct storage_snapshot *rec, const char *disk)
{
    for (size_t i = 0; i < rec->ndisks; i++)
        if (strcmp(rec->disks[i].disk, disk) == 0)
            return &rec->disks[i];
    return NULL;
}

#define MERGE_RECORD "snapshot_merge"

static json_object *merge_intent(struct sup *s)
{
    json_object *o;
    return s->rs.resources && json_object_object_get_ex(s->rs.resources, MERGE_RECORD, &o) ? o : NULL;
}

bool snapshot_merge_busy(struct sup *s)
{
    return merge_intent(s) != NULL;
}

static void merge_intent_set(struct sup *s, struct sup_job *j, const char *name, const char *overlay)
{
    json_object *o = json_object_new_object(), *v;
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_object_add(o, "disk", json_object_new_string(j->disk));
    json_object_object_add(o, "overlay", json_object_new_string(overlay));
    if (json_object_object_get_ex(j->data, "drop", &v))
        json_object_object_add(o, "drop", json_object_get(v));
    if (json_object_object_get_ex(j->data, "flush", &v))
        json_object_object_add(o, "flush", json_object_get(v));
    if (json_object_object_get_ex(j->data, "bandwidth", &v))
        json_object_object_add(o, "bandwidth", json_object_get(v));
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, MERGE_RECORD, o);
    sup_save_state(s);
}

static void merge_intent_clear(struct sup *s)
{
    if (merge_intent(s)) {
        json_object_object_del(s->rs.resources, MERGE_RECORD);
        sup_save_state(s);
    }
}

/* The commit of the record's first disk left; client answered when it is over. */
static int merge_next(struct sup *s, unsigned client, const struct storage_snapshot *rec, int64_t bandwidth,
                      struct qv_err *e)
{
    const struct storage_snapshot_disk *k = &rec->disks[0];
    sup_log(s, "merging snapshot %s: %s into %s", rec->name, k->overlay, k->file);
    return block_commit_begin(s, client, k->disk, k->overlay, k->file, rec->name, bandwidth, e);
}

/* data: block_start_commit's, with "name" (the snapshot) and "bandwidth" */
static void merge_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (err)
        return;
    json_object *v;
    const char *name = data_str(j, "name"), *base = data_str(j, "base_node");
    bool active = json_object_object_get_ex(j->data, "active", &v) && json_object_get_boolean(v);
    char dir[PATH_MAX];
    snapshot_dir(s->paths, s->def.name, dir, sizeof(dir));
    _cleanup_snapshot_ struct storage_snapshot rec = {0};
    struct qv_err e = {0};
    const struct storage_snapshot_disk *k;
    if (!name || storage_snapshot_load(dir, name, &rec, &e) < 0 || !(k = disk_of(&rec, j->disk))) {
        sup_log(s, "snapshot %s: %s merged already", name ? name : "?", j->disk);
        return;     /* a successor ran this already */
    }
    merge_intent_set(s, j, name, k->overlay);     /* before the record changes */
    int r = 0;
    if (active && base)
        r = disk_switched(s, k->disk, base, k->file, k->volume[0] ? k->volume : NULL,
                          k->format == STORAGE_FORMAT_QCOW2 ? FORMAT_QCOW2 : FORMAT_RAW, &e);
    if (r == 0)
        r = snapshot_disk_merged(s->paths, s->def.name, name, k->disk, &e);
    if (r < 0) {
        j->fail = e;
        qv_prefix(&j->fail, "%s: snapshot %s: %s is merged, but ", s->def.name, name, k->disk);
        merge_intent_clear(s);
        return;
    }
    sup_log(s, "snapshot %s: %s merged into %s", name, k->overlay, k->file);
    if (active)
        unlink(k->overlay);     /* a mirror flushed its base; an inner commit's base is flushed first (merge_gone) */
}

struct merge_next_req {
    struct sup *s;
    unsigned client;
    char name[65], overlay[PATH_MAX];
    int64_t bandwidth;
};

/* The disk is done: the next one, or the end. */
static void merge_continue(struct sup *s, unsigned client, const char *name, int64_t bandwidth)
{
    char dir[PATH_MAX];
    snapshot_dir(s->paths, s->def.name, dir, sizeof(dir));
    _cleanup_snapshot_ struct storage_snapshot rec = {0};
    struct qv_err e = {0};
    if (storage_snapshot_load(dir, name, &rec, &e) < 0 || !rec.ndisks) {
        sup_log(s, "snapshot %s deleted", name);
        if (client)
            sup_reply_ok(s, client);
        return;
    }
    if (merge_next(s, client, &rec, bandwidth, &e) < 0) {
        sup_log(s, "snapshot %s: %s", name, e.msg);
        if (client)
            sup_reply_error(s, client, e.code, "%s (delete it again to merge the rest)", e.msg);
    }
}

static void on_base_flushed(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct merge_next_req *m = ctx;
    json_object *o = merge_intent(m->s);
    if (err && err->code == -ECONNRESET && o) {
        /* the monitor dropped: the step is taken again once it is back (or, QEMU gone,
         * dropped with the overlay kept: snapshots_forget) */
        sup_log(m->s, "snapshot %s: flushing the image below %s: %s; again once the monitor is back", m->name,
                m->overlay, err->msg);
        json_object_object_add(o, "await_monitor", json_object_new_boolean(true));
        json_object_object_add(o, "await_client", json_object_new_int64(m->client));
        free(m);
        return;
    }
    if (err) {
        /* the merged overlay stays on disk: what the base holds only in QEMU's cache is in it */
        sup_log(m->s, "snapshot %s: flushing the image below %s: %s; %s is kept", m->name, m->overlay, err->msg,
                m->overlay);
        if (m->client)
            sup_reply_error(m->s, m->client, err->code ? err->code : -EIO, "%s: snapshot %s: flushing the merged "
                            "image: %s (the overlay %s is kept)", m->s->def.name, m->name, err->msg, m->overlay);
        merge_intent_clear(m->s);   /* not tried again for ever: the overlay is kept instead */
        free(m);
        return;
    }
    unlink(m->overlay);
    merge_intent_clear(m->s);
    merge_continue(m->s, m->client, m->name, m->bandwidth);
    free(m);
}

/* The recorded step after a merged disk's job: its nodes go, an inner commit's base
 * is flushed (blockdev-reopen with the options it has) before the overlay goes,
 * then the next disk; client (0: none) hears the end. */
static void merge_after(struct sup *s, unsigned client)
{
    json_object *o = merge_intent(s), *v, *flush = NULL;
    struct merge_next_req *m = qv_xcalloc(1, sizeof(*m));
    m->s = s;
    m->client = client;
    m->bandwidth = json_object_object_get_ex(o, "bandwidth", &v) ? json_object_get_int64(v) : 0;
    snprintf(m->name, sizeof(m->name), "%s", json_object_object_get_ex(o, "name", &v) ? json_object_get_string(v) : "");
    snprintf(m->overlay, sizeof(m->overlay), "%s",
             json_object_object_get_ex(o, "overlay", &v) ? json_object_get_string(v) : "");
    if (json_object_object_get_ex(o, "drop", &v))
        block_drop_nodes(s, v);
    if (!json_object_object_get_ex(o, "flush", &flush) || !json_object_array_length(flush)) {
        on_base_flushed(m, NULL, NULL);     /* an active commit: the mirror flushed its base */
        return;
    }
    sup_crash_point("snapshot-merge-flushing");
    if (!s->qmp || qmp_send(s->qmp, "blockdev-reopen", json_obj1("options", json_object_get(flush)), NULL, 0,
                            QMP_TIMEOUT_DEVICE, 0, on_base_flushed, m) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
        on_base_flushed(m, NULL, &e);
        return;
    }
    sup_crash_point("snapshot-merge-flush-sent");
}

void snapshot_merge_monitor_back(struct sup *s)
{
    json_object *o = merge_intent(s), *v;
    if (!o || !json_object_object_get_ex(o, "await_monitor", NULL))
        return;
    unsigned client = json_object_object_get_ex(o, "await_client", &v) ? (unsigned)json_object_get_int64(v) : 0;
    json_object_object_del(o, "await_monitor");
    json_object_object_del(o, "await_client");
    merge_after(s, client);
}

void snapshot_merge_forget(struct sup *s)
{
    json_object *o = merge_intent(s), *v;
    if (!o)
        return;
    sup_log(s, "snapshot %s: QEMU exited before the image below %s was flushed: the overlay is kept",
            json_object_object_get_ex(o, "name", &v) ? json_object_get_string(v) : "?",
            json_object_object_get_ex(o, "overlay", &v) ? json_object_get_string(v) : "?");
    merge_intent_clear(s);
}

void snapshot_merge_reattach(struct sup *s)
{
    json_object *o = merge_intent(s), *v;
    if (!o)
        return;
    for (int i = 0; i < SUP_JOBS_MAX; i++)
        if (s->jobs[i].used && s->jobs[i].ops == &snapshot_merge_ops)
            return;     /* carried on: its end takes the step (merge_gone) */
    json_object_object_del(o, "await_monitor");   /* this run's clients are not that run's */
    json_object_object_del(o, "await_client");
    sup_log(s, "snapshot %s: %s was merged when its supervisor died, the step after it was not finished: finishing "
            "it", json_object_object_get_ex(o, "name", &v) ? json_object_get_string(v) : "?",
            json_object_object_get_ex(o, "disk", &v) ? json_object_get_string(v) : "?");
    merge_after(s, 0);
}

/* QEMU let go of the job: the layer's nodes go; an inner commit's base is flushed
 * and the overlay removed; then the next disk, or the end. Whoever waits for the
 * job waits for all of it. */
static void merge_gone(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (err || j->fail.code || !merge_intent(s))
        return;
    unsigned client = j->waiters[0] ? j->waiters[0] : j->start_client;
    if (j->waiters[0])
        memmove(j->waiters, j->waiters + 1, sizeof(j->waiters) - sizeof(j->waiters[0]));
    else
        j->start_client = 0;
    merge_after(s, client);
}

/* A no-op: the pivot asked for at the start (an active commit) goes out by itself. */
static void merge_ready(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    (void)s, (void)j, (void)err;
}

const struct sup_job_ops snapshot_merge_ops = {.kind = "snapshot-merge", .on_ready = merge_ready,
                                               .on_done = merge_done, .on_gone = merge_gone};

int snapshot_live_merge(struct sup *s, unsigned client, struct storage_snapshot *rec, int64_t bandwidth,
                        struct qv_err *e)
{
    if (!rec->ndisks)
        return qv_fail(e, -EINVAL, "%s: snapshot %s covers no disk", s->def.name, rec->name);
    return merge_next(s, client, rec, bandwidth, e);
}

/* ---- an internal snapshot in layers below the tops ---- */

struct del_req {
    struct sup *s;
    unsigned client;
    struct storage_snapshot rec;
    json_object *devices;   /* the nodes that hold it, so far */
    size_t next;
};

static void del_free(struct del_req *d)
{
    if (d->devices)
        json_object_put(d->devices);
    storage_snapshot_free(&d->rec);
    free(d);
}

static void del_step(struct del_req *d);

static void on_writable(struct sup *s, void *ctx, const char *node, const struct qv_err *err)
{
    struct del_req *d = ctx;
    if (err) {
        if (d->client)
            sup_reply_error(s, d->client, err->code ? err->code : -EIO, "%s", err->msg);
        del_free(d);
        return;
    }
    json_object_array_add(d->devices, json_object_new_string(node));
    d->next++;
    del_step(d);
}

/* Each disk's node holding the snapshot (writable first when below the top), then the job. */
static void del_step(struct del_req *d)
{
    struct sup *s = d->s;
    struct qv_err e = {0};
    while (d->next < d->rec.ndisks) {
        const struct storage_snapshot_disk *k = &d->rec.disks[d->next];
        struct disk_ref ref;
        if (!snap_disk_find(s, &d->rec, k, &ref, &e))
            goto fail;
        if (!k->rbd && strcmp(ref.file, k->file) != 0) {   /* an rbd snapshot is in the image QEMU has open */
            if (block_writable_begin(s, k->disk, k->file, on_writable, d, &e) < 0) {
                qv_prefix(&e, "%s: snapshot %s: ", s->def.name, d->rec.name);
                goto fail;
            }
            return;
        }
        json_object_array_add(d->devices, json_object_new_string(ref.node));
        d->next++;
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "tag", json_object_new_string(d->rec.name));
    json_object_object_add(args, "devices", d->devices);
    d->devices = NULL;
    if (!sup_job_start(s, &snapshot_delete_ops, NULL, "snapshot-delete", args,
                       json_obj1("name", json_object_new_string(d->rec.name)), d->client, true, &e))
        goto fail;
    d->client = 0;
    del_free(d);
    return;
fail:
    if (d->client)
        sup_reply_error(s, d->client, e.code ? e.code : -EIO, "%s", e.msg);
    del_free(d);
}

int snapshot_live_delete_internal(struct sup *s, unsigned client, struct storage_snapshot *rec, struct qv_err *e)
{
    (void)e;
    struct del_req *d = qv_xcalloc(1, sizeof(*d));
    d->s = s;
    d->client = client;
    d->rec = *rec;
    memset(rec, 0, sizeof(*rec));
    d->devices = json_object_new_array();
    del_step(d);
    return 0;
}
