/* Snapshots of a running VM, over QMP (the records and the plan are model/snapshot.c's,
 * shared with the shut-off case):
 * - full (internal): snapshot-save of the guest's RAM and devices plus every disk that
 *   takes part, as a job (snapshot_full.c); revert is snapshot-load, delete snapshot-delete;
 * - disk-only (external): for each disk a qcow2 overlay made by qemu-img (a watched
 *   child), opened here and passed to QEMU as an fd (add-fd, blockdev-add of its file
 *   and qcow2 nodes), then one `transaction` of blockdev-snapshot puts every overlay
 *   on top at the same instant, the guest's filesystems frozen through its agent for
 *   that instant when it answers; the definition follows (disk_switched). Deleting one
 *   merges each overlay down with a block commit (active: pivot back to the image
 *   below; inner: the overlay above re-pointed) as a job (snapshot_merge.c).
 * One snapshot operation runs at a time; the loop serves everything else meanwhile.
 * This file has what they share, the freeze around a disk-only switch and the entry
 * points; snapshot_create.c takes a disk-only one (snapshot_op.h between the two). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/snapshot_op.h"

void snap_op_free(struct snap_op *op)
{
    for (size_t i = 0; i < op->rec.ndisks; i++)
        if (op->d[i].fd >= 0)
            close(op->d[i].fd);
    sup_child_abort(&op->child);
    storage_snapshot_free(&op->rec);
    if (op->s->snap == op)
        op->s->snap = NULL;
    free(op);
}

bool snap_monitor_ok(struct sup *s, struct qv_err *e)
{
    if (s->qmp && qmp_ready(s->qmp))
        return true;
    qv_fail(e, -EIO, "%s: QEMU's monitor connection is lost; try again once it is back", s->def.name);
    return false;
}

int snap_busy(struct sup *s, struct qv_err *e)
{
    if (s->snap || (s->block_prep && (s->block_prep->snap[0] || s->block_prep->writable)) || snapshot_merge_busy(s) ||
        snapshot_full_busy(s))
        return qv_fail(e, -EBUSY, "%s: a snapshot operation is under way; try again once it is over", s->def.name);
    for (int i = 0; i < SUP_JOBS_MAX; i++)
        if (s->jobs[i].used && str_startswith(s->jobs[i].ops->kind, "snapshot"))
            return qv_fail(e, -EBUSY, "%s: a snapshot job (%s) is running; try again once it is over", s->def.name,
                           s->jobs[i].id);
    return 0;
}

/* ---- the freeze: right before the transaction, the thaw right after it or, on any
 * failure, before the operation ends ---- */

static struct snap_op *op_by_seq(struct sup *s, void *ctx)
{
    return s->snap && s->snap->seq == (unsigned)(uintptr_t)ctx ? s->snap : NULL;
}

/* A freeze that may be in force is in state.json before the freeze goes out, and
 * leaves once the thaw answered: a supervisor killed in between leaves the guest
 * frozen, and its successor thaws it (snapshots_reattach). */
#define FREEZE_RECORD "snapshot_freeze"
#define REATTACH_THAW_TIMEOUT_MS 60000  /* the channel connects and syncs first */

static void freeze_record(struct sup *s, const char *name)
{
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    if (name)
        json_object_object_add(s->rs.resources, FREEZE_RECORD, json_object_new_string(name));
    else
        json_object_object_del(s->rs.resources, FREEZE_RECORD);
    sup_save_state(s);
}

static void on_reattach_thawed(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ctx, (void)ret;
    if (err) {
        sup_log(s, "warning: thawing the guest's filesystems, frozen by a snapshot whose supervisor died: %s (qvisor "
                "agent %s fsthaw)", err->msg, s->def.name);
        return;     /* the record stays: the next supervisor tries again */
    }
    sup_log(s, "the guest's filesystems, frozen by a snapshot whose supervisor died, are thawed (%d)",
            ret && json_object_is_type(ret, json_type_int) ? json_object_get_int(ret) : 0);
    freeze_record(s, NULL);
}


void snapshots_reattach(struct sup *s)
{
    json_object *v;
    snap_create_reattach(s);
    snapshot_merge_reattach(s);
    snapshot_full_reattach(s);
    if (!s->rs.resources || !json_object_object_get_ex(s->rs.resources, FREEZE_RECORD, &v))
        return;
    sup_log(s, "snapshot %s froze the guest's filesystems and its supervisor died before the thaw: thawing them",
            json_object_get_string(v));
    struct qv_err e = {0};
    if (agent_call(s, "guest-fsfreeze-thaw", NULL, REATTACH_THAW_TIMEOUT_MS, 0, on_reattach_thawed, NULL, &e) < 0)
        on_reattach_thawed(s, NULL, NULL, &e);
}

static void on_thawed(struct sup *s, void *ctx, int count, const struct qv_err *err)
{
    struct snap_op *op = op_by_seq(s, ctx);
    if (!err)
        freeze_record(s, NULL);
    if (err) {
        sup_log(s, "warning: snapshot: thawing the guest's filesystems failed: %s (qvisor agent %s fsthaw)", err->msg,
                s->def.name);
        if (op)
            snprintf(op->thaw_warning, sizeof(op->thaw_warning), "thawing the guest's filesystems failed: %s; run "
                     "qvisor agent %s fsthaw", err->msg, s->def.name);
    } else {
        sup_log(s, "snapshot: %d filesystem%s thawed", count, count == 1 ? "" : "s");
    }
    if (op)
        op->after_thaw(op);
}

/* The thaw goes out (once), then `next`. */
void snap_thaw_then(struct snap_op *op, snap_step_fn next)
{
    struct qv_err e = {0};
    op->thaw_sent = true;
    op->after_thaw = next;
    if (agent_fsfreeze(op->s, false, on_thawed, (void *)(uintptr_t)op->seq, &e) < 0)
        on_thawed(op->s, (void *)(uintptr_t)op->seq, -1, &e);
}

static void on_frozen(struct sup *s, void *ctx, int count, const struct qv_err *err)
{
    struct snap_op *op = op_by_seq(s, ctx);
    if (!op)
        return;     /* QEMU is gone, and the op with it */
    if (err && op->quiesce) {
        struct qv_err e = {0};
        qv_fail(&e, err->code == -ENODEV ? -ENODEV : -EIO, "--quiesce: the guest's filesystems could not be frozen: "
                "%s", err->msg);
        snap_ext_fail(op, &e, NULL);
        return;
    }
    if (err) {
        snprintf(op->rec.quiesce_note, sizeof(op->rec.quiesce_note), "the guest's filesystems could not be frozen: %s",
                 err->msg);
        sup_log(s, "snapshot %s: not quiesced: %s", op->rec.name, op->rec.quiesce_note);
    } else {
        op->rec.quiesced = true;
        sup_log(s, "snapshot %s: %d filesystem%s frozen", op->rec.name, count, count == 1 ? "" : "s");
        sup_crash_point("snapshot-frozen");
    }
    snap_ext_next(op);
}

void snap_freeze(struct snap_op *op)
{
    struct qv_err e = {0};
    op->freeze_sent = true;
    if (op->s->rs.state != VM_RUNNING) {
        /* paused while the overlays were made: its agent would not answer for minutes */
        qv_fail(&e, -EIO, "%s is %s now", op->s->def.name, vm_state_names[op->s->rs.state]);
        on_frozen(op->s, (void *)(uintptr_t)op->seq, -1, &e);
        return;
    }
    op->thaw_needed = true;
    freeze_record(op->s, op->rec.name);
    if (agent_fsfreeze(op->s, true, on_frozen, (void *)(uintptr_t)op->seq, &e) < 0) {
        op->thaw_needed = false;    /* nothing went out */
        freeze_record(op->s, NULL);
        on_frozen(op->s, (void *)(uintptr_t)op->seq, -1, &e);
    }
}

void snap_live_disks(struct sup *s, struct snapshot_live_disk *out, struct snapshot_live *live)
{
    live->disks = out;
    live->n = 0;
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        const struct hotplug *h = &s->hp[i];
        if (!h->used || h->kind != HOTPLUG_DISK || h->pending || h->removing)
            continue;
        struct snapshot_live_disk *l = &out[live->n++];
        memset(l, 0, sizeof(*l));
        snprintf(l->id, sizeof(l->id), "%s", h->id);
        snprintf(l->file, sizeof(l->file), "%s", h->file);
        snprintf(l->volume, sizeof(l->volume), "%s", h->volume);
        l->format = h->format;
        l->readonly = h->readonly;
    }
}

bool snap_disk_find(struct sup *s, const struct storage_snapshot *rec, const struct storage_snapshot_disk *k,
                    struct disk_ref *out, struct qv_err *e)
{
    if (disk_find(s, k->disk, out) && strcmp(out->id, k->disk) == 0 && (out->hp != NULL) == k->hotplug &&
        (!out->hp || !(out->hp->pending || out->hp->removing)))
        return true;
    if (k->hotplug)
        qv_fail(e, -ENOENT, "%s: snapshot %s: %s (%s) was attached to the running VM when the snapshot was taken and "
                "is not attached now (detached, or the VM was restarted since): qvisor touches no other disk in its "
                "place", s->def.name, rec->name, k->disk, rec->external ? k->overlay : k->file);
    else
        qv_fail(e, -ENOENT, "%s: snapshot %s names %s, which the VM no longer has", s->def.name, rec->name, k->disk);
    return false;
}

void snapshots_monitor_back(struct sup *s)
{
    if (s->snap && s->snap->asking)
        snap_ext_ask(s->snap);
    snapshot_merge_monitor_back(s);
    snapshot_full_monitor_back(s);
}

/* Whether to freeze: the agent must answer now and the guest run (a paused guest's
 * agent cannot). --quiesce turns every reason not to into a refusal, as virsh's does. */
static int freeze_plan(struct sup *s, bool quiesce, const char *name, char *note, size_t notelen, bool *want,
                       struct qv_err *e)
{
    char why[400] = "";
    *want = false;
    if (!s->def.agent)
        snprintf(why, sizeof(why), "%s has no guest agent channel (define it with --agent)", s->def.name);
    else if (s->rs.state != VM_RUNNING)
        snprintf(why, sizeof(why), "%s is %s: its guest agent cannot freeze anything", s->def.name,
                 vm_state_names[s->rs.state]);
    else if (!agent_answers(s, why, sizeof(why)))
        ;
    else
        *want = true;
    if (*want)
        return 0;
    if (quiesce)
        return qv_fail(e, s->def.agent ? -EIO : -ENODEV, "%s: snapshot %s: --quiesce: %s", s->def.name, name, why);
    snprintf(note, notelen, "%s", why);
    return 0;
}

int snapshot_live_create(struct sup *s, unsigned client, const char *name, bool disk_only, bool quiesce,
                         const char *description, struct qv_err *e)
{
    int r;
    if (quiesce && !disk_only)
        return qv_fail(e, -EINVAL, "%s: snapshot %s: --quiesce needs --disk-only (a full snapshot keeps the guest's "
                       "memory with its disks, which agree without freezing anything)", s->def.name, name);
    if ((r = snap_busy(s, e)) < 0 || !snap_monitor_ok(s, e))
        return r < 0 ? r : e->code;
    bool want_freeze = false;
    char note[sizeof(((struct storage_snapshot *)0)->quiesce_note)] = "";
    if (disk_only && (r = freeze_plan(s, quiesce, name, note, sizeof(note), &want_freeze, e)) < 0)
        return r;
    _cleanup_snapshot_ struct storage_snapshot rec = {0};
    struct snapshot_live_disk ld[HOTPLUG_MAX];
    struct snapshot_live live;
    snap_live_disks(s, ld, &live);
    if ((r = snapshot_plan(s->paths, &s->def, &live, name, disk_only, &rec, e)) < 0)
        return r;
    if (description)
        rec.description = qv_xstrdup(description);
    snprintf(rec.quiesce_note, sizeof(rec.quiesce_note), "%s", note);
    sup_log(s, "taking %s snapshot %s%s", disk_only ? "disk-only" : "full", name,
            want_freeze ? " (the guest's filesystems frozen for it)" : "");
    if (!disk_only)
        return snapshot_full_create(s, client, &rec, e);
    return snap_external_create(s, client, &rec, quiesce, want_freeze, e);
}

/* ---- revert, delete ---- */

int snap_load_record(struct sup *s, const char *name, struct storage_snapshot *rec, struct qv_err *e)
{
    char dir[PATH_MAX];
    snapshot_dir(s->paths, s->def.name, dir, sizeof(dir));
    int r = storage_snapshot_load(dir, name, rec, e);
    if (r == -ENOENT)
        return qv_fail(e, -ENOENT, "%s has no snapshot named %s (qvisor snapshot list %s)", s->def.name, name,
                       s->def.name);
    return r;
}

int snapshot_live_delete(struct sup *s, unsigned client, const char *name, const char *bandwidth, struct qv_err *e)
{
    int r;
    if ((r = snap_busy(s, e)) < 0 || !snap_monitor_ok(s, e))
        return r < 0 ? r : e->code;
    uint64_t speed = 0;
    if (bandwidth && (parse_size(bandwidth, &speed) < 0 || speed > INT64_MAX))
        return qv_fail(e, -EINVAL, "snapshot delete: --bandwidth \"%s\" is not a size per second (50M)", bandwidth);
    _cleanup_snapshot_ struct storage_snapshot rec = {0};
    if ((r = snap_load_record(s, name, &rec, e)) < 0)
        return r;
    struct storage_snapshot *all;
    size_t n;
    if ((r = snapshot_load_all(s->paths, s->def.name, &all, &n, e)) < 0)
        return r;
    struct snapshot_live_disk ld[HOTPLUG_MAX];
    struct snapshot_live live;
    snap_live_disks(s, ld, &live);
    r = snapshot_check_delete(s->paths, &s->def, &live, &rec, all, n, e);
    snapshot_free_all(all, n);
    if (r < 0)
        return r;
    /* snapshot_merge.c: commits of the overlays, or snapshot-delete where it is kept */
    if (rec.external)
        return snapshot_live_merge(s, client, &rec, (int64_t)speed, e);
    return snapshot_live_delete_internal(s, client, &rec, e);
}

void snapshots_forget(struct sup *s)
{
    /* QEMU is gone (its monitor was freed first: no completion comes any more); the
     * overlays it never switched to go too */
    struct snap_op *op = s->snap;
    if (s->rs.resources && json_object_object_get_ex(s->rs.resources, FREEZE_RECORD, NULL))
        freeze_record(s, NULL);     /* the guest it froze is gone */
    snapshot_merge_forget(s);
    snapshot_full_forget(s);
    if (!op)
        return;
    if (op->asking || op->tx_pending) {
        snap_settle_after_exit(op);
        return;
    }
    if (op->client)
        sup_reply_error(s, op->client, -ESRCH, "%s: QEMU exited before snapshot %s was taken", s->def.name,
                        op->rec.name);
    for (size_t i = 0; i < op->made; i++)
        unlink(op->rec.disks[i].overlay);
    snap_create_intent_clear(s);
    snap_op_free(op);
}
