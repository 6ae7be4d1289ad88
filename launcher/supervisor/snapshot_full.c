/* Full snapshots of a running VM (snapshots.c has the disk-only ones and the shared
 * checks): the guest's memory and devices and every disk that takes part, saved,
 * loaded and deleted by QEMU's snapshot-save/-load/-delete jobs (jobs.c); and the load
 * that resumes a shut-off VM from one, in prelaunch, before the guest runs (start.c
 * goes on from its end). The records are model/snapshot.c's. */
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
 * place. */
static int record_nodes(struct sup *s, const struct storage_snapshot *rec, bool for_load, json_object **devices,
                        char *vmstate, size_t vmlen, struct qv_err *e)
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
            if (!rbd_pass && !vmstate[0])
                snprintf(vmstate, vmlen, "%s", ref.node);
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
static void save_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
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

int snapshot_full_create(struct sup *s, unsigned client, struct storage_snapshot *rec, struct qv_err *e)
{
    json_object *devices;
    char vmstate[48];
    int r = record_nodes(s, rec, false, &devices, vmstate, sizeof(vmstate), e);
    if (r < 0)
        return r;
    snprintf(rec->state, sizeof(rec->state), "%s", vm_state_names[s->rs.state]);
    rec->memory = true;
    rec->quiesced = false;  /* QEMU stops the guest while it saves: memory and disks agree without a freeze */
    json_object *args = json_object_new_object();
    json_object_object_add(args, "tag", json_object_new_string(rec->name));
    json_object_object_add(args, "vmstate", json_object_new_string(vmstate));
    json_object_object_add(args, "devices", devices);
    if (!sup_job_start(s, &snapshot_save_ops, NULL, "snapshot-save", args, storage_snapshot_to_json(rec), client, true,
                       e))
        return e->code;
    return 0;
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
    if ((r = record_nodes(s, &rec, true, &devices, vmstate, sizeof(vmstate), e)) < 0)
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

