/* Full snapshots of a running VM (snapshots.c has the disk-only ones and the shared
 * checks): the guest's memory and devices and every disk that takes part, saved,
 * loaded and deleted by QEMU's snapshot-save/-load/-delete jobs (jobs.c); and the load
 * that resumes a shut-off VM from one, in prelaunch, before the guest runs (start.c
 * goes on from its end). The records are model/snapshot.c's. A save writes the
 * memory through the page cache of the disk that keeps it (see "buffered" below). */
#include <stdlib.h>
#include <string.h>

#include "launcher/supervisor/internal.h"

/* The device nodes of the record's disks, each checked to be its disk's top now.
 * rbd disks come first, and the memory goes into the first qcow2 one: QEMU's rbd
 * driver keeps no VM state, and QEMU hands one snapshot description to every device
 * in turn, into which qcow2 writes the id it picks, while rbd refuses any id but the
 * snapshot's name. */
/* for_load: an rbd disk is named by its rbd node, below the raw node the guest sees.
 * QEMU 7.2's snapshot-load of a raw node goes to its file child by closing the raw
 * node and opening it again around the rollback, inside the load's drained section,
 * and the guest's I/O on that disk then never completed; the rbd node rolls back in
 * place. vm_ref (may be NULL): the disk that keeps the memory. */
static int record_nodes(struct sup *s, const struct storage_snapshot *rec, bool for_load, json_object **devices,
                        char *vmstate, size_t vmlen, struct disk_ref *vm_ref, struct qv_err *e)
{
    *devices = json_object_new_array();
    vmstate[0] = '\0';
    for (int rbd_pass = 1; rbd_pass >= 0; rbd_pass--)
        for (size_t i = 0; i < rec->ndisks; i++) {
            struct disk_ref ref;
            if (rec->disks[i].rbd != (rbd_pass == 1))
                continue;
            if (!snap_disk_find(s, rec, &rec->disks[i], &ref, e)) {
                json_object_put(*devices);
                return e->code;
            }
            char node[sizeof(ref.node) + 8], fmt[sizeof(ref.id) + 8];
            snprintf(fmt, sizeof(fmt), "%s-fmt", ref.id);
            if (for_load && rbd_pass && strcmp(ref.node, fmt) == 0)
                snprintf(node, sizeof(node), "%s-file", ref.id);
            else
                snprintf(node, sizeof(node), "%s", ref.node);
            json_object_array_add(*devices, json_object_new_string(node));
            if (!rbd_pass && !vmstate[0]) {
                snprintf(vmstate, vmlen, "%s", ref.node);
                if (vm_ref)
                    *vm_ref = ref;
            }
        }
    if (!vmstate[0]) {
        json_object_put(*devices);
        return qv_fail(e, -EINVAL, "%s: snapshot %s: its disks are all rbd volumes, and the guest's memory is kept in "
                       "a qcow2 disk (qvisor snapshot create takes RBD snapshots of such a VM, without its memory)",
                       s->def.name, rec->name);
    }
    return 0;
}

/* ---- full snapshots: snapshot-save, snapshot-load, snapshot-delete jobs ---- */

/* data: the record (save) or {"name": N} (load, delete) */
static void buffered_restore(struct sup *s);

static void save_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    buffered_restore(s);    /* before the job's dismissal, after which its waiters hear the end */
    if (err)
        return;     /* QEMU's error goes to whoever waits; no record, QEMU removed its part */
    _cleanup_snapshot_ struct storage_snapshot rec = {0};
    struct qv_err e = {0};
    if (storage_snapshot_from_json(j->data, &rec, &e) < 0 || snapshot_record(s->paths, s->def.name, &rec, &e) < 0) {
        j->fail = e;
        qv_prefix(&j->fail, "%s: snapshot %s was taken, but its record was not written: ", s->def.name, rec.name);
        return;
    }
    sup_log(s, "snapshot %s taken (memory and %zu disk%s)", rec.name, rec.ndisks, rec.ndisks == 1 ? "" : "s");
}

static const char *data_name(struct sup_job *j)
{
    json_object *v;
    return j->data && json_object_object_get_ex(j->data, "name", &v) ? json_object_get_string(v) : "";
}

/* data's "then": "running" or "paused" as revert --running/--paused asked; "" for as
 * the snapshot was (QEMU's snapshot-load resumes a guest that ran before it). */
static const char *data_then(struct sup_job *j)
{
    json_object *v;
    return j->data && json_object_object_get_ex(j->data, "then", &v) ? json_object_get_string(v) : "";
}

/* The loaded snapshot is the current one now (a failure to record it is only logged:
 * the guest is back at it either way). */
static void mark_current(struct sup *s, const char *name)
{
    char dir[PATH_MAX];
    snapshot_dir(s->paths, s->def.name, dir, sizeof(dir));
    struct qv_err e = {0};
    if (storage_snapshot_set_current(dir, name, &e) < 0)
        sup_log(s, "warning: %s", e.msg);
}

static void load_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (err)
        return;
    mark_current(s, data_name(j));
    sup_log(s, "reverted to snapshot %s", data_name(j));
    if (strcmp(data_then(j), "paused") == 0)
        sup_qmp(s, "stop", NULL);
    else if (strcmp(data_then(j), "running") == 0)
        sup_qmp(s, "cont", NULL);
}

/* A start that resumes the guest from a full snapshot (revert of a shut-off VM): QEMU
 * loaded it in prelaunch; the start goes on to `cont`, or ends paused. A successor
 * supervisor that finds the job concluded only sends the `cont`. */
static void start_load_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    bool paused = strcmp(data_then(j), "paused") == 0;
    if (err) {
        if (start_active(s))
            start_failed(s, err, NULL);
        return;
    }
    mark_current(s, data_name(j));
    sup_log(s, "the guest's memory and disks are back at snapshot %s%s", data_name(j), paused ? "; it stays paused" : "");
    if (start_active(s))
        start_after_load(s, paused);
    else if (!paused)
        sup_qmp(s, "cont", NULL);
}

static void delete_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (err)
        return;
    char dir[PATH_MAX];
    snapshot_dir(s->paths, s->def.name, dir, sizeof(dir));
    _cleanup_snapshot_ struct storage_snapshot rec = {0};
    struct qv_err e = {0};
    if (storage_snapshot_load(dir, data_name(j), &rec, &e) == 0 && snapshot_unrecord(s->paths, s->def.name, &rec, &e) < 0)
        j->fail = e;
    sup_log(s, "snapshot %s deleted", data_name(j));
}

const struct sup_job_ops snapshot_save_ops = {.kind = "snapshot-save", .on_done = save_done};
const struct sup_job_ops snapshot_load_ops = {.kind = "snapshot-load", .on_done = load_done};
const struct sup_job_ops snapshot_start_load_ops = {.kind = "snapshot-load-start", .on_done = start_load_done};
const struct sup_job_ops snapshot_delete_ops = {.kind = "snapshot-delete", .on_done = delete_done};

/* ---- buffered: the memory written through the page cache ----
 * QEMU writes the guest's memory into the image of the disk that keeps it in pieces of
 * 32 KiB, one after the other; with that disk's O_DIRECT (cache none or directsync,
 * the default) each piece waits for the device, and the save took twice as long as
 * through the page cache (bench/README.md: 331 against 157 ms for 192 MiB). So, for
 * the save only, that disk's file node is reopened with cache.direct off, and reopened
 * as it was right after the job. Durable all the same when the client hears of it:
 * QEMU's save flushes the image after the memory and writes the snapshot table with
 * synchronous writes, the restoring blockdev-reopen flushes the node again before it
 * reopens it, and the client is answered after that (jobs.c answers once the job is
 * dismissed, which QEMU does after the reopen sent before it). Meanwhile the guest's
 * own writes (none while QEMU saves: the guest is stopped) would go through the page
 * cache with their flushes honoured, as cache=writeback's do.
 * The restore (the node's options as the disk's definition makes them) is in
 * state.json before the first reopen goes out and leaves once QEMU answered it: a
 * successor, or the monitor once it is back, sends it again; QEMU's exit ends it.
 * aio=native is left alone (it needs O_DIRECT). */
#define BUFFERED_RECORD "snapshot_buffered"

struct snap_full_prep {
    struct sup *s;
    unsigned client;
    char name[65];
    json_object *args, *data;   /* snapshot-save's arguments, the job's data (the record) */
    char vmstate[48];           /* the format node that takes the memory */
    struct disk_io io;          /* its disk's */
    bool discard;
};

static json_object *list1(json_object *v)
{
    json_object *a = json_object_new_array();
    json_object_array_add(a, v);
    return a;
}

static json_object *buffered_record(struct sup *s)
{
    json_object *o;
    return s->rs.resources && json_object_object_get_ex(s->rs.resources, BUFFERED_RECORD, &o) ? o : NULL;
}

static void buffered_record_clear(struct sup *s)
{
    if (buffered_record(s)) {
        json_object_object_del(s->rs.resources, BUFFERED_RECORD);
        sup_save_state(s);
    }
}

static void buffered_restore(struct sup *s);

/* A save's restoring reopen is answered before its job's dismissal (QMP answers in
 * order), so the job that waits for it is still there to carry the warning to its
 * client. A restore sent later (monitor back, successor) has no client: logged only. */
static void warn_save_waiters(struct sup *s, const char *msg)
{
    for (int i = 0; i < SUP_JOBS_MAX; i++) {
        struct sup_job *j = &s->jobs[i];
        if (!j->used || j->ops != &snapshot_save_ops)
            continue;
        if (!j->result)
            j->result = json_object_new_object();
        json_object_object_add(j->result, "warning", json_object_new_string(msg));
    }
}

static void on_restored(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    json_object *v, *o = buffered_record(s);
    const char *node = o && json_object_object_get_ex(o, "node", &v) ? json_object_get_string(v) : "?";
    s->snap_restoring = false;
    if (err && (err->code == -ECONNRESET || err->code == -ETIMEDOUT)) {
        sup_log(s, "snapshot: node %s's direct I/O not restored yet (%s): again once the monitor is back", node,
                err->msg);
        return;     /* the record stays: snapshots_monitor_back, or a successor */
    }
    if (err) {
        char msg[sizeof(((struct qv_err *)0)->msg)];
        snprintf(msg, sizeof(msg), "%s: QEMU refused to put disk node %s back to direct I/O (%s): it goes on through "
                 "the host's page cache, its flushes honoured, until the VM restarts", s->def.name, node, err->msg);
        sup_log(s, "warning: snapshot: %s", msg);
        warn_save_waiters(s, msg);
    } else
        sup_log(s, "snapshot: node %s is back to direct I/O", node);
    buffered_record_clear(s);
}

/* The recorded node reopened as the definition has it (a flush first, by QEMU). */
static void buffered_restore(struct sup *s)
{
    json_object *o = buffered_record(s), *opts;
    if (!o || s->snap_restoring || !s->qmp || !qmp_ready(s->qmp) || !json_object_object_get_ex(o, "reopen", &opts))
        return;
    json_object *node = json_object_get(opts);
    if (sup_fail_point("snapshot-restore")) {   /* a node QEMU does not know: refused */
        json_object_put(node);
        node = json_object_new_object();
        json_object_object_add(node, "driver", json_object_new_string("file"));
        json_object_object_add(node, "node-name", json_object_new_string("qv-test-nosuch"));
        json_object_object_add(node, "filename", json_object_new_string("/dev/null"));
    }
    if (qmp_send(s->qmp, "blockdev-reopen", json_obj1("options", list1(node)), NULL, 0,
                 QMP_TIMEOUT_DEVICE, 0, on_restored, s) == 0)
        s->snap_restoring = true;
}

static void prep_free(struct snap_full_prep *p)
{
    if (p->args)
        json_object_put(p->args);
    if (p->data)
        json_object_put(p->data);
    if (p->s->snap_prep == p)
        p->s->snap_prep = NULL;
    free(p);
}

/* The save itself; its end restores the node (save_done). */
static void buffered_save(struct snap_full_prep *p)
{
    struct sup *s = p->s;
    struct qv_err e = {0};
    unsigned client = p->client;
    json_object *args = p->args, *data = p->data;
    p->args = p->data = NULL;
    prep_free(p);
    if (!sup_job_start(s, &snapshot_save_ops, NULL, "snapshot-save", args, data, client, true, &e)) {
        if (client)
            sup_reply_error(s, client, e.code ? e.code : -EIO, "%s", e.msg);
        buffered_restore(s);
    }
}

static void on_buffered(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct snap_full_prep *p = ctx;
    if (err) {
        sup_log(p->s, "snapshot %s: the memory goes to the image with direct I/O: reopening node %s without it: %s",
                p->name, p->vmstate, err->msg);
    } else {
        sup_log(p->s, "snapshot %s: the memory goes through the page cache (%s's file node, until the save is over)",
                p->name, p->vmstate);
        sup_crash_point("snapshot-buffered");
    }
    buffered_save(p);
}

/* The vmstate node's file node, by the file name they share (the only node of driver
 * "file" with it); its direct I/O off, recorded first. Anything unexpected: the save
 * goes ahead with direct I/O. */
static void on_nodes(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct snap_full_prep *p = ctx;
    struct sup *s = p->s;
    const char *filename = NULL, *file_node = NULL, *why = NULL;
    int candidates = 0;
    for (size_t i = 0; !err && i < json_object_array_length(ret); i++) {
        json_object *n = json_object_array_get_idx(ret, i), *v;
        if (json_object_object_get_ex(n, "node-name", &v) && strcmp(json_object_get_string(v), p->vmstate) == 0 &&
            json_object_object_get_ex(n, "file", &v))
            filename = json_object_get_string(v);
    }
    for (size_t i = 0; filename && i < json_object_array_length(ret); i++) {
        json_object *n = json_object_array_get_idx(ret, i), *v, *c;
        if (!json_object_object_get_ex(n, "drv", &v) || strcmp(json_object_get_string(v), "file") != 0 ||
            !json_object_object_get_ex(n, "file", &v) || strcmp(json_object_get_string(v), filename) != 0)
            continue;
        candidates++;
        if (json_object_object_get_ex(n, "node-name", &v))
            file_node = json_object_get_string(v);
        if (!json_object_object_get_ex(n, "cache", &c) || !json_object_object_get_ex(c, "direct", &v) ||
            !json_object_get_boolean(v))
            why = "its file node does not use direct I/O";
    }
    if (err)
        why = err->msg;
    else if (!filename || !str_startswith(filename, "/dev/fdset/"))
        why = "QEMU names no fd set for its image";
    else if (candidates != 1 || !file_node)
        why = "its file node is not known for sure";
    if (why) {
        sup_log(s, "snapshot %s: the memory goes to node %s with direct I/O (%s)", p->name, p->vmstate, why);
        buffered_save(p);
        return;
    }
    json_object *rec = json_object_new_object();
    json_object_object_add(rec, "node", json_object_new_string(file_node));
    json_object_object_add(rec, "reopen", blockdev_file(file_node, filename, &p->io, p->discard, false));
    struct disk_io buffered = p->io;
    buffered.direct = false;
    json_object *off = blockdev_file(file_node, filename, &buffered, p->discard, false);
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, BUFFERED_RECORD, rec);
    sup_save_state(s);
    if (qmp_send(s->qmp, "blockdev-reopen", json_obj1("options", list1(off)), NULL, 0, QMP_TIMEOUT_DEVICE,
                 0, on_buffered, p) < 0)
        buffered_save(p);   /* the monitor is gone: the job's start fails and says so */
}

int snapshot_full_create(struct sup *s, unsigned client, struct storage_snapshot *rec, struct qv_err *e)
{
    json_object *devices;
    char vmstate[48];
    struct disk_ref ref;
    int r = record_nodes(s, rec, false, &devices, vmstate, sizeof(vmstate), &ref, e);
    if (r < 0)
        return r;
    snprintf(rec->state, sizeof(rec->state), "%s", vm_state_names[s->rs.state]);
    rec->memory = true;
    rec->quiesced = false;  /* QEMU stops the guest while it saves: memory and disks agree without a freeze */
    json_object *args = json_object_new_object();
    json_object_object_add(args, "tag", json_object_new_string(rec->name));
    json_object_object_add(args, "vmstate", json_object_new_string(vmstate));
    json_object_object_add(args, "devices", devices);
    struct disk_io io = ref.hp ? disk_io_mode(ref.hp->cache, ref.hp->aio, &s->facts)
                               : disk_io_mode(s->def.disks[ref.index].cache, s->def.disks[ref.index].aio, &s->facts);
    if (!io.direct || strcmp(io.aio, "native") == 0) {
        if (!sup_job_start(s, &snapshot_save_ops, NULL, "snapshot-save", args, storage_snapshot_to_json(rec), client,
                           true, e))
            return e->code;
        return 0;
    }
    struct snap_full_prep *p = qv_xcalloc(1, sizeof(*p));
    p->s = s;
    p->client = client;
    snprintf(p->name, sizeof(p->name), "%s", rec->name);
    p->args = args;
    p->data = storage_snapshot_to_json(rec);
    snprintf(p->vmstate, sizeof(p->vmstate), "%s", vmstate);
    p->io = io;
    p->discard = ref.hp ? ref.hp->discard : s->def.disks[ref.index].discard;
    if (qmp_send(s->qmp, "query-named-block-nodes", json_obj1("flat", json_object_new_boolean(true)), NULL, 0,
                 QMP_TIMEOUT_DEFAULT, 0, on_nodes, p) < 0) {
        prep_free(p);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    s->snap_prep = p;
    return 0;
}

bool snapshot_full_busy(struct sup *s)
{
    return s->snap_prep || s->snap_restoring;
}

void snapshot_full_monitor_back(struct sup *s)
{
    buffered_restore(s);
}

void snapshot_full_reattach(struct sup *s)
{
    if (!buffered_record(s))
        return;
    sup_log(s, "a snapshot's save wrote through the page cache when its supervisor died: restoring direct I/O");
    buffered_restore(s);
}

void snapshot_full_forget(struct sup *s)
{
    s->snap_restoring = false;
    buffered_record_clear(s);   /* the node went with QEMU */
    struct snap_full_prep *p = s->snap_prep;
    if (!p)
        return;
    if (p->client)
        sup_reply_error(s, p->client, -ESRCH, "%s: QEMU exited before snapshot %s was taken", s->def.name, p->name);
    prep_free(p);
}

/* snapshot-load's arguments for the record's disks, as this QEMU names their nodes. */
static int load_args(struct sup *s, const char *name, json_object **args, struct qv_err *e)
{
    _cleanup_snapshot_ struct storage_snapshot rec = {0};
    int r = snap_load_record(s, name, &rec, e);
    if (r < 0)
        return r;
    if (!rec.memory)
        return qv_fail(e, -EBUSY, "%s is running and snapshot %s holds no memory state; stop the VM first, then "
                       "revert", s->def.name, name);
    struct snapshot_live_disk ld[HOTPLUG_MAX];
    struct snapshot_live live;
    snap_live_disks(s, ld, &live);
    if ((r = snapshot_check_revert(s->paths, &s->def, &live, &rec, e)) < 0)
        return r;
    json_object *devices;
    char vmstate[48];
    if ((r = record_nodes(s, &rec, true, &devices, vmstate, sizeof(vmstate), NULL, e)) < 0)
        return r;
    *args = json_object_new_object();
    json_object_object_add(*args, "tag", json_object_new_string(name));
    json_object_object_add(*args, "vmstate", json_object_new_string(vmstate));
    json_object_object_add(*args, "devices", devices);
    return 0;
}

static json_object *load_data(const char *name, const char *then)
{
    json_object *data = json_obj1("name", json_object_new_string(name));
    if (then && *then)
        json_object_object_add(data, "then", json_object_new_string(then));
    return data;
}

int snapshot_live_revert(struct sup *s, unsigned client, const char *name, const char *then, struct qv_err *e)
{
    int r;
    if ((r = snap_busy(s, e)) < 0 || !snap_monitor_ok(s, e))
        return r < 0 ? r : e->code;
    if (then && *then && strcmp(then, "running") != 0 && strcmp(then, "paused") != 0)
        return qv_fail(e, -EINVAL, "snapshot-revert: \"then\" must be \"running\" or \"paused\", not \"%s\"", then);
    json_object *args;
    if ((r = load_args(s, name, &args, e)) < 0)
        return r;
    sup_log(s, "reverting to snapshot %s", name);
    if (!sup_job_start(s, &snapshot_load_ops, NULL, "snapshot-load", args, load_data(name, then), client, true, e))
        return e->code;
    return 0;
}

int snapshot_start_load(struct sup *s, const char *name, bool paused, struct qv_err *e)
{
    json_object *args;
    int r = load_args(s, name, &args, e);
    if (r < 0)
        return r;
    sup_log(s, "loading snapshot %s before the guest runs", name);
    if (!sup_job_start(s, &snapshot_start_load_ops, NULL, "snapshot-load", args,
                       load_data(name, paused ? "paused" : "running"), 0, false, e))
        return e->code;
    return 0;
}

