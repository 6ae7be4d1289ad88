/* A disk-only snapshot of a running VM taken (snapshots.c has the entry point and the
 * freeze): for each disk a qcow2 overlay made by qemu-img (a watched child), opened here
 * and passed to QEMU as an fd (add-fd, blockdev-add of its file and qcow2 nodes), then
 * one `transaction` of blockdev-snapshot; the definition follows (disk_switched). A
 * lost answer, a supervisor that died, or a QEMU that exited meanwhile are settled by
 * what QEMU reads, or what the overlays hold. */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/snapshot_op.h"

static void ext_finish(struct snap_op *op);

#define OVERLAY_TIMEOUT_MS 60000

/* ---- disk-only snapshots: overlays as fds, one transaction ---- */

/* Record before you create: the snapshot's record-to-be and each overlay's file and
 * nodes are in state.json before the first overlay file exists, and leave once the
 * snapshot is recorded or undone. A supervisor that dies in between, or loses the
 * transaction's answer, settles it by asking QEMU which node each disk reads
 * (ext_resolve): a switched disk keeps its overlay, the others' go. */
#define CREATE_RECORD "snapshot_create"

static void create_intent_set(struct snap_op *op)
{
    struct sup *s = op->s;
    json_object *o = json_object_new_object(), *disks = json_object_new_array();
    json_object_object_add(o, "record", storage_snapshot_to_json(&op->rec));
    for (size_t i = 0; i < op->rec.ndisks; i++) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "disk", json_object_new_string(op->d[i].id));
        json_object_object_add(d, "node", json_object_new_string(op->d[i].node));
        json_object_object_add(d, "file_node", json_object_new_string(op->d[i].file_node));
        json_object_array_add(disks, d);
    }
    json_object_object_add(o, "disks", disks);
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, CREATE_RECORD, o);
    sup_save_state(s);
}

void snap_create_intent_clear(struct sup *s)
{
    if (s->rs.resources && json_object_object_get_ex(s->rs.resources, CREATE_RECORD, NULL)) {
        json_object_object_del(s->rs.resources, CREATE_RECORD);
        sup_save_state(s);
    }
}

static void ext_undo(struct snap_op *op);

void snap_ext_fail(struct snap_op *op, const struct qv_err *err, const char *step)
{
    if (!op->err.code) {
        op->err = *err;
        if (!op->err.code)
            op->err.code = -EIO;
        qv_prefix(&op->err, "%s: snapshot %s: %s%s", op->s->def.name, op->rec.name, step ? step : "",
                  step ? ": " : "");
    }
    op->undoing = true;
    ext_undo(op);
}

static void ext_reply(struct snap_op *op, int r, const struct qv_err *e)
{
    struct sup *s = op->s;
    if (!op->client)
        return;
    if (r < 0) {
        sup_reply_error(s, op->client, r, "%s%s%s", e->msg, op->thaw_warning[0] ? "; " : "", op->thaw_warning);
        return;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "quiesced", json_object_new_boolean(op->rec.quiesced));
    if (op->rec.quiesce_note[0])
        json_object_object_add(o, "note", json_object_new_string(op->rec.quiesce_note));
    if (op->thaw_warning[0])
        json_object_object_add(o, "warning", json_object_new_string(op->thaw_warning));
    sup_reply_json(s, op->client, o);
    json_object_put(o);
}

/* Every disk of the snapshot now reads its overlay: the definition and the supervisor's
 * record follow (disk_switched), all of them even when one fails; the first error. */
static int switch_to_overlays(struct snap_op *op, struct qv_err *e)
{
    struct sup *s = op->s;
    int r = 0;
    for (size_t i = 0; i < op->rec.ndisks; i++) {
        const struct storage_snapshot_disk *k = &op->rec.disks[i];
        struct qv_err de = {0};
        if (disk_switched(s, k->disk, op->d[i].node, k->overlay, k->overlay_volume[0] ? k->overlay_volume : NULL,
                          FORMAT_QCOW2, &de) < 0 && !r) {
            r = de.code;
            *e = de;
        }
    }
    return r;
}

static void ext_finish(struct snap_op *op)
{
    struct sup *s = op->s;
    if (op->thaw_needed && !op->thaw_sent) {
        snap_thaw_then(op, ext_finish);  /* a failure before the transaction answered */
        return;
    }
    if (op->err.code) {
        sup_log(s, "snapshot %s failed: %s", op->rec.name, op->err.msg);
        ext_reply(op, op->err.code, &op->err);
        snap_create_intent_clear(s);
        snap_op_free(op);
        return;
    }
    struct qv_err e = {0};
    int r = switch_to_overlays(op, &e);
    snprintf(op->rec.state, sizeof(op->rec.state), "%s", vm_state_names[s->rs.state]);
    op->rec.memory = false;
    if (r == 0 && (r = snapshot_record(s->paths, s->def.name, &op->rec, &e)) < 0)
        qv_prefix(&e, "%s: snapshot %s: the overlays are in use, but its record was not written: ", s->def.name,
                  op->rec.name);
    sup_log(s, "disk-only snapshot %s taken: %zu overlay%s%s", op->rec.name, op->rec.ndisks,
            op->rec.ndisks == 1 ? "" : "s", op->rec.quiesced ? ", quiesced" : "");
    ext_reply(op, r, &e);
    snap_create_intent_clear(s);
    snap_op_free(op);
}

/* Which node each disk reads now (query-block's answer): a disk on its overlay keeps
 * it, whatever was heard of the transaction; the others' overlays go (nodes, fdsets
 * by their opaque, files). None switched: the snapshot failed with `why`. */
static void ext_resolve(struct snap_op *op, json_object *blocks, const struct qv_err *why)
{
    struct sup *s = op->s;
    size_t kept = 0;
    op->tx_pending = false;     /* known now */
    json_object *drop = json_object_new_array();
    char gone[512] = "";
    for (size_t i = 0; i < op->rec.ndisks; i++) {
        struct snap_disk_live *d = &op->d[i];
        const char *top = disk_qemu_top(blocks, d->id);
        if (top && strcmp(top, d->node) == 0) {
            if (kept != i) {
                struct storage_snapshot_disk k = op->rec.disks[i];
                op->rec.disks[kept] = k;
                op->d[kept] = *d;
                d->fd = -1;
            }
            kept++;
            continue;
        }
        json_object_array_add(drop, block_node_pair(d->node, d->file_node));
        if (unlink(op->rec.disks[i].overlay) == 0)
            sup_log(s, "snapshot %s: %s still reads node %s: its overlay %s is removed", op->rec.name, d->id,
                    top ? top : "?", op->rec.disks[i].overlay);
        size_t len = strlen(gone);
        snprintf(gone + len, sizeof(gone) - len, "%s%s", len ? ", " : "", d->id);
        if (d->fd >= 0)
            close(d->fd);
        d->fd = -1;
    }
    block_drop_nodes(s, drop);
    json_object_put(drop);
    size_t had = op->rec.ndisks;
    op->rec.ndisks = kept;
    op->undoing = true;     /* nothing is left for ext_undo: settled here */
    op->undo_pos = kept;
    if (!kept) {
        op->rec.ndisks = had;
        op->undo_pos = had;
        struct qv_err e = *why;
        if (!e.code)
            e.code = -EIO;
        op->err.code = 0;
        snap_ext_fail(op, &e, "blockdev-snapshot (QEMU did not switch)");
        return;
    }
    sup_log(s, "snapshot %s: QEMU reads the overlay%s of %zu disk%s%s%s%s", op->rec.name, kept == 1 ? "" : "s", kept,
            kept == 1 ? "" : "s", gone[0] ? " (not of " : "", gone, gone[0] ? ")" : "");
    op->err.code = 0;
    op->tx_err.code = 0;
    ext_finish(op);
}


static void on_asked(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct snap_op *op = ctx;
    if (err && err->code == -ECONNRESET) {
        snap_ext_ask(op);    /* lost again: asked once it is back */
        return;
    }
    if (err) {
        /* the intent stays in state.json: a successor settles it */
        struct qv_err e = {0};
        qv_fail(&e, err->code ? err->code : -EIO, "%s: snapshot %s: whether QEMU switched to the overlays is not "
                "known (query-block: %s); they are kept, and `qvisor start %s` after a restart of its supervisor "
                "settles it", op->s->def.name, op->rec.name, err->msg, op->s->def.name);
        sup_log(op->s, "%s", e.msg);
        ext_reply(op, e.code, &e);
        snap_op_free(op);
        return;
    }
    ext_resolve(op, ret, &op->tx_err);
}

/* The transaction's answer was lost: QEMU is asked what it did, now or once its
 * monitor is back (snapshots_monitor_back). */
void snap_ext_ask(struct snap_op *op)
{
    struct sup *s = op->s;
    op->asking = true;
    if (!s->qmp || !qmp_ready(s->qmp))
        return;
    if (qmp_send(s->qmp, "query-block", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_asked, op) == 0) {
        op->asking = false;
        sup_log(s, "snapshot %s: the answer to the switch was lost (%s): asking QEMU which nodes the disks read",
                op->rec.name, op->tx_err.msg);
    }
}

static void tx_continue(struct snap_op *op)
{
    if (op->tx_err.code == -ECONNRESET || op->tx_err.code == -ETIMEDOUT) {
        snap_ext_ask(op);    /* no answer: QEMU may have switched, and then writes to the overlays */
        return;
    }
    op->tx_pending = false;
    if (op->tx_err.code)
        snap_ext_fail(op, &op->tx_err, "blockdev-snapshot");
    else
        ext_finish(op);
}

/* Whatever the answer (a refusal, a timeout, the monitor lost): the guest thaws first. */
static void on_transaction(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct snap_op *op = ctx;
    if (err) {
        op->tx_err = *err;
        if (!op->tx_err.code)
            op->tx_err.code = -EIO;
    }
    if (op->thaw_needed && !op->thaw_sent)
        snap_thaw_then(op, tx_continue);
    else
        tx_continue(op);
}

static void on_setup_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct snap_op *op = ctx;
    struct snap_disk_live *d = &op->d[op->step];
    if (err) {
        snap_ext_fail(op, err, d->id);
        return;
    }
    json_object *v;
    if (d->fdset < 0) {
        if (!json_object_object_get_ex(ret, "fdset-id", &v)) {
            struct qv_err e = {0};
            qv_fail(&e, -EIO, "add-fd gave no fdset-id");
            snap_ext_fail(op, &e, d->id);
            return;
        }
        d->fdset = json_object_get_int(v);
        close(d->fd);
        d->fd = -1;
    } else if (!d->file_added) {
        d->file_added = true;
    } else {
        d->fmt_added = true;
        op->step++;
    }
    snap_ext_next(op);
}

/* The QMP set-up of each overlay, then the transaction. */
void snap_ext_next(struct snap_op *op)
{
    struct sup *s = op->s;
    struct qv_err e = {0};
    if (!snap_monitor_ok(s, &e)) {
        snap_ext_fail(op, &e, NULL);
        return;
    }
    if (op->step < op->rec.ndisks) {
        struct snap_disk_live *d = &op->d[op->step];
        int r;
        if (d->fdset < 0) {
            /* opaque: its file node, by which a commit or a drop finds the fdset */
            r = qmp_send(s->qmp, "add-fd", json_obj1("opaque", json_object_new_string(d->file_node)), &d->fd, 1,
                         QMP_TIMEOUT_DEFAULT, 0, on_setup_step, op);
        } else if (!d->file_added) {
            char path[32];
            snprintf(path, sizeof(path), "/dev/fdset/%d", d->fdset);
            r = qmp_send(s->qmp, "blockdev-add", blockdev_file(d->file_node, path, &d->io, d->discard, false),
                         NULL, 0, QMP_TIMEOUT_DEVICE, 0, on_setup_step, op);
        } else {
            json_object *fmt = blockdev_format("qcow2", d->node, d->file_node, NULL, &d->io, d->discard, false);
            json_object_object_add(fmt, "backing", NULL);   /* blockdev-snapshot attaches the old top */
            r = qmp_send(s->qmp, "blockdev-add", fmt, NULL, 0, QMP_TIMEOUT_DEVICE, 0, on_setup_step, op);
        }
        if (r < 0) {
            qv_fail(&e, -EIO, "QEMU's monitor is gone");
            snap_ext_fail(op, &e, d->id);
        }
        return;
    }
    if (op->want_freeze && !op->freeze_sent) {
        snap_freeze(op);     /* every overlay is ready: the guest is frozen for the transaction only */
        return;
    }
    json_object *actions = json_object_new_array();
    for (size_t i = 0; i < op->rec.ndisks; i++) {
        json_object *data = json_object_new_object();
        json_object_object_add(data, "node", json_object_new_string(op->d[i].old_top));
        json_object_object_add(data, "overlay", json_object_new_string(op->d[i].node));
        json_object *a = json_object_new_object();
        json_object_object_add(a, "type", json_object_new_string("blockdev-snapshot"));
        json_object_object_add(a, "data", data);
        json_object_array_add(actions, a);
    }
    if (qmp_send(s->qmp, "transaction", json_obj1("actions", actions), NULL, 0, QMP_TIMEOUT_DEVICE, 0, on_transaction,
                 op) < 0) {
        qv_fail(&e, -EIO, "QEMU's monitor is gone");
        snap_ext_fail(op, &e, NULL);
        return;
    }
    op->tx_pending = true;
    sup_crash_point("snapshot-switch-sent");
}

static void on_undo(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct snap_op *op = ctx;
    if (err)
        sup_log(op->s, "snapshot %s: undoing: %s", op->rec.name, err->msg);
    ext_undo(op);
}

/* In reverse: each overlay's qcow2 node, file node and fdset go, the files too. */
static void ext_undo(struct snap_op *op)
{
    struct sup *s = op->s;
    while (op->undo_pos < op->rec.ndisks) {
        struct snap_disk_live *d = &op->d[op->rec.ndisks - 1 - op->undo_pos];
        const char *cmd = NULL;
        json_object *args = NULL;
        if (d->fmt_added) {
            d->fmt_added = false;
            cmd = "blockdev-del";
            args = json_obj1("node-name", json_object_new_string(d->node));
        } else if (d->file_added) {
            d->file_added = false;
            cmd = "blockdev-del";
            args = json_obj1("node-name", json_object_new_string(d->file_node));
        } else if (d->fdset >= 0) {
            cmd = "remove-fd";
            args = json_obj1("fdset-id", json_object_new_int(d->fdset));
            d->fdset = -1;
        }
        if (cmd && s->qmp && qmp_send(s->qmp, cmd, args, NULL, 0, QMP_TIMEOUT_DEVICE, 0, on_undo, op) == 0)
            return;
        if (!cmd) {
            unlink(op->rec.disks[op->rec.ndisks - 1 - op->undo_pos].overlay);
            op->undo_pos++;
        }
    }
    ext_finish(op);
}

/* qemu-img made overlay op->made - 1 (or none yet): the next one, or the QMP part. */
static void ext_make_next(struct snap_op *op)
{
    struct qv_err e = {0};
    if (op->made == op->rec.ndisks) {
        sup_crash_point("snapshot-overlays-made");
        for (size_t i = 0; i < op->rec.ndisks; i++) {
            op->d[i].fd = storage_open_image(op->rec.disks[i].overlay, O_RDWR, &e);
            if (op->d[i].fd < 0) {
                snap_ext_fail(op, &e, op->d[i].id);
                return;
            }
        }
        snap_ext_next(op);
        return;
    }
    const struct storage_snapshot_disk *k = &op->rec.disks[op->made];
    const char *bin = getenv("QVISOR_QEMU_IMG");
    char size[32], out[PATH_MAX + 2];
    snprintf(size, sizeof(size), "%llu", (unsigned long long)op->d[op->made].size);
    snprintf(out, sizeof(out), "%s", k->overlay);
    const char *argv[] = {bin && *bin ? bin : "qemu-img", "create", "-q", "-f", "qcow2", "-F",
                          storage_format_name(k->format), "-b", k->file, "-u", "--", out, size, NULL};
    if (sup_child_spawn(&op->child, argv, OVERLAY_TIMEOUT_MS, &e) < 0)
        snap_ext_fail(op, &e, k->disk);
}

void snapshots_child_exited(struct sup *s)
{
    struct snap_op *op = s->snap;
    int status;
    char out[1024];
    if (!op || !sup_child_reap(&op->child, &status, out, sizeof(out)))
        return;
    if (status != 0) {
        struct qv_err e = {0};
        qv_fail(&e, -EIO, "creating %s: %s", op->rec.disks[op->made].overlay,
                *out ? out : status > 128 ? "qemu-img was killed" : "qemu-img failed");
        unlink(op->rec.disks[op->made].overlay);
        snap_ext_fail(op, &e, op->rec.disks[op->made].disk);
        return;
    }
    op->made++;
    ext_make_next(op);
}

uint64_t snapshots_next_deadline(struct sup *s)
{
    return s->snap ? s->snap->child.deadline : 0;
}

void snapshots_expire(struct sup *s, uint64_t now)
{
    if (s->snap)
        sup_child_expire(&s->snap->child, now);
}

/* The top nodes' sizes: an overlay made without opening its backing file needs it. */
static void on_sizes(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct snap_op *op = ctx;
    if (err) {
        snap_ext_fail(op, err, "query-named-block-nodes");
        return;
    }
    for (size_t i = 0; i < op->rec.ndisks; i++) {
        for (size_t n = 0; n < json_object_array_length(ret); n++) {
            json_object *o = json_object_array_get_idx(ret, n), *v, *img;
            if (json_object_object_get_ex(o, "node-name", &v) && strcmp(json_object_get_string(v), op->d[i].old_top) == 0 &&
                json_object_object_get_ex(o, "image", &img) && json_object_object_get_ex(img, "virtual-size", &v))
                op->d[i].size = (uint64_t)json_object_get_int64(v);
        }
        if (!op->d[i].size) {
            struct qv_err e = {0};
            qv_fail(&e, -EIO, "QEMU does not report the size of node %s", op->d[i].old_top);
            snap_ext_fail(op, &e, op->d[i].id);
            return;
        }
    }
    ext_make_next(op);
}

int snap_external_create(struct sup *s, unsigned client, struct storage_snapshot *rec, bool quiesce,
                           bool want_freeze, struct qv_err *e)
{
    struct snap_op *op = qv_xcalloc(1, sizeof(*op));
    op->s = s;
    op->seq = ++s->snap_seq;
    op->client = client;
    op->child.out = -1;
    op->quiesce = quiesce;
    op->want_freeze = want_freeze;
    op->rec = *rec;
    memset(rec, 0, sizeof(*rec));
    /* node names unique in this QEMU, whatever ran before: from the clock */
    unsigned long long stamp = (unsigned long long)realtime_ms();
    for (size_t i = 0; i < op->rec.ndisks; i++) {
        struct snap_disk_live *d = &op->d[i];
        struct disk_ref ref;
        d->fd = d->fdset = -1;
        snprintf(d->id, sizeof(d->id), "%s", op->rec.disks[i].disk);
        if (!snap_disk_find(s, &op->rec, &op->rec.disks[i], &ref, e)) {
            snap_op_free(op);
            return e->code;
        }
        d->io = ref.hp ? disk_io_mode(ref.hp->cache, ref.hp->aio, &s->facts)
                       : disk_io_mode(s->def.disks[ref.index].cache, s->def.disks[ref.index].aio, &s->facts);
        d->discard = ref.hp ? ref.hp->discard : s->def.disks[ref.index].discard;
        snprintf(d->old_top, sizeof(d->old_top), "%s", ref.node);
        snprintf(d->node, sizeof(d->node), "%s-s%llx-fmt", d->id, stamp);
        snprintf(d->file_node, sizeof(d->file_node), "%s-s%llx-file", d->id, stamp);
    }
    create_intent_set(op);
    json_object *args = json_obj1("flat", json_object_new_boolean(true));
    if (qmp_send(s->qmp, "query-named-block-nodes", args, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_sizes, op) < 0) {
        snap_op_free(op);
        snap_create_intent_clear(s);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    s->snap = op;
    return 0;
}

/* A disk-only snapshot whose supervisor died between recording it and its end
 * (overlays made or not, nodes added or not, switched or not): QEMU says which
 * disks read their overlay, and the snapshot is settled as ext_resolve does. */
void snap_create_reattach(struct sup *s)
{
    json_object *o, *rec, *disks, *v;
    if (!s->rs.resources || !json_object_object_get_ex(s->rs.resources, CREATE_RECORD, &o))
        return;
    struct qv_err e = {0};
    struct snap_op *op = qv_xcalloc(1, sizeof(*op));
    op->s = s;
    op->seq = ++s->snap_seq;
    op->child.out = -1;
    if (!json_object_object_get_ex(o, "record", &rec) || !json_object_object_get_ex(o, "disks", &disks) ||
        storage_snapshot_from_json(rec, &op->rec, &e) < 0 || json_object_array_length(disks) != op->rec.ndisks) {
        sup_log(s, "warning: the recorded disk-only snapshot under way is unreadable (%s); left as it is",
                e.msg[0] ? e.msg : "no record or disks");
        snap_op_free(op);
        snap_create_intent_clear(s);
        return;
    }
    for (size_t i = 0; i < op->rec.ndisks; i++) {
        json_object *d = json_object_array_get_idx(disks, i);
        struct snap_disk_live *l = &op->d[i];
        l->fd = l->fdset = -1;
        snprintf(l->id, sizeof(l->id), "%s", json_object_object_get_ex(d, "disk", &v) ? json_object_get_string(v) : "");
        snprintf(l->node, sizeof(l->node), "%s", json_object_object_get_ex(d, "node", &v) ? json_object_get_string(v) : "");
        snprintf(l->file_node, sizeof(l->file_node), "%s",
                 json_object_object_get_ex(d, "file_node", &v) ? json_object_get_string(v) : "");
    }
    /* the guest's filesystems: thawed by the freeze record's own step; a freeze in
     * force when the overlays went on is not known now */
    op->rec.quiesced = false;
    if (!op->rec.quiesce_note[0])
        snprintf(op->rec.quiesce_note, sizeof(op->rec.quiesce_note), "its supervisor died while it was taken");
    s->snap = op;
    json_object *blocks = NULL;
    struct qv_err lost = {0};
    qv_fail(&lost, -EIO, "its supervisor died before the switch");
    sup_log(s, "snapshot %s was under way when its supervisor died: asking QEMU which nodes the disks read",
            op->rec.name);
    if (qmp_call(s->qmp, "query-block", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &blocks, &e) < 0) {
        sup_log(s, "warning: snapshot %s: query-block: %s; its overlays are kept for the next supervisor", op->rec.name,
                e.msg);
        snap_op_free(op);
        return;
    }
    ext_resolve(op, blocks, &lost);
    json_object_put(blocks);
}

/* QEMU exited while whether it switched to the overlays was not known (the switch
 * unanswered, or its answer lost). Data lands in an overlay only once QEMU switched
 * to it, and every disk switches in one transaction: an overlay that maps anything of
 * its own means all switched, and the snapshot is recorded, the definition on the
 * overlays; none mapping anything means nothing is lost without them, switched or not,
 * and they go. Either way a retry finds nothing in its way. Kept as they are only when
 * that cannot be told: an overlay unreadable or still locked by a QEMU, or one of a
 * hotplugged disk (which left with QEMU) holding data. */
void snap_settle_after_exit(struct snap_op *op)
{
    struct sup *s = op->s;
    bool data = false, hot = false, held = false;
    char why[600] = "", files[1024] = "";
    for (size_t i = 0; i < op->rec.ndisks; i++) {
        const struct storage_snapshot_disk *k = &op->rec.disks[i];
        size_t len = strlen(files);
        snprintf(files + len, sizeof(files) - len, "%s%s", len ? ", " : "", k->overlay);
        struct qv_err e = {0};
        bool has = true, locked = true;
        int fd = storage_open_image(k->overlay, O_RDONLY, &e);
        if (fd >= 0 && storage_image_locked(fd, k->overlay, &locked, &e) == 0 && locked) {
            qv_fail(&e, -EBUSY, "%s is open in a QEMU (it holds its image locks)", k->overlay);
            held = true;
        }
        if (fd >= 0 && !locked)
            storage_qcow2_has_data(fd, k->overlay, &has, &e);
        if (fd >= 0)
            close(fd);
        if (e.code && !why[0])
            snprintf(why, sizeof(why), "%s", e.msg);
        data = data || has;
        hot = hot || k->hotplug;
    }
    if (!why[0] && data && hot)
        snprintf(why, sizeof(why), "an overlay holds the guest's writes and a disk of the snapshot was attached live "
                 "(it left with QEMU)");
    if (why[0]) {
        sup_log(s, "warning: QEMU exited while it was not known whether snapshot %s switched to its overlays; they "
                "are kept (%s): %s", op->rec.name, files, why);
        if (op->client)
            sup_reply_error(s, op->client, -ESRCH, "%s: QEMU exited while snapshot %s was taken; whether it switched "
                            "to the overlays cannot be told (%s), they are kept: %s", s->def.name, op->rec.name, why,
                            files);
    } else if (!data) {
        for (size_t i = 0; i < op->rec.ndisks; i++)
            unlink(op->rec.disks[i].overlay);
        sup_log(s, "QEMU exited while it was not known whether snapshot %s switched to its overlays; none holds "
                "anything of its own, they are removed (%s)", op->rec.name, files);
        if (op->client)
            sup_reply_error(s, op->client, -ESRCH, "%s: QEMU exited before snapshot %s was taken", s->def.name,
                            op->rec.name);
    } else {
        struct qv_err e = {0};
        int r = switch_to_overlays(op, &e);
        op->rec.memory = false;
        op->rec.quiesced = false;
        snprintf(op->rec.quiesce_note, sizeof(op->rec.quiesce_note), "QEMU exited while it was taken");
        if (r == 0)
            r = snapshot_record(s->paths, s->def.name, &op->rec, &e);
        sup_log(s, "QEMU exited while it was not known whether snapshot %s switched to its overlays; they hold the "
                "guest's writes, so it did: the snapshot is %s (%s)", op->rec.name, r ? "not recorded" : "recorded",
                r ? e.msg : files);
        if (op->client)
            sup_reply_error(s, op->client, -ESRCH, "%s: QEMU exited while snapshot %s was taken, after it switched to "
                            "the overlays: %s", s->def.name, op->rec.name, r ? e.msg : "the snapshot is recorded, "
                            "the definition names them");
    }
    if (!held)
        snap_create_intent_clear(s);     /* else a QEMU lives on with them: a successor settles it by asking it */
    snap_op_free(op);
}
