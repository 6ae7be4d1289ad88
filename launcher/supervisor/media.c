/* CD-ROM media of a running VM (change-media): open the tray (forced, as a user
 * pressing eject on a drive the guest locked), remove the medium and free its nodes
 * and fdset, then — unless it is an eject — pass the new image as an fd that the
 * supervisor opened read-only (add-fd, a file node, a raw node), insert it, and close
 * the tray. An empty drive (`cdroms[]` without a file) has a device with no block
 * node, which takes a medium the same way.
 *
 * One change at a time per VM; every command goes out from the previous one's
 * completion, so the loop keeps serving. A failure after the old medium was removed
 * undoes the new medium's steps and closes the tray: the drive is then empty, and
 * the reply says so. What each drive holds once QEMU changed it is recorded in
 * state.json ("media"), so a new supervisor knows it after a restart; a QEMU that
 * exits takes its media with it and the next one starts with the definition's. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/internal.h"

/* new media's fdsets: above the hotplug ones (1000 + up to HOTPLUG_MAX * (STORAGE_CHAIN_MAX + 1)) */
#define MEDIA_FDSET_BASE 2000
#define MEDIA_STEPS 16
#define MEDIA_OLD_FDSETS 4

struct media_step {
    const char *cmd;
    json_object *args;
    int fd;                     /* passed with add-fd; -1 none; owned by the op */
    const char *undo_cmd;       /* run in reverse when a later step fails; NULL none */
    json_object *undo_args;
    bool best_effort;           /* a failure is logged, and the change goes on */
    bool tell;                  /* best_effort, but the reply reports the failure */
    bool medium_gone;           /* once done, the drive is empty: record it */
    bool medium_in;             /* once done, the drive holds the new medium: record it */
};

struct media_op {
    struct sup *s;
    unsigned client;
    size_t index;               /* cdroms[index] */
    char id[24];                /* cdrom0 */
    char file[PATH_MAX];        /* the new medium; "" for an eject */
    unsigned gen;               /* the new medium's node generation */
    int fd;
    struct media_step steps[MEDIA_STEPS];
    size_t n, done, undo_pos;
    bool rolling_back, removed;
    struct qv_err err;
};

/* ---- what each drive holds ---- */

static void ensure_table(struct sup *s)
{
    if (!s->media && s->def.ncdroms) {
        s->media = qv_xcalloc(s->def.ncdroms, sizeof(*s->media));
        s->nmedia = s->def.ncdroms;
    }
}

static const char *current_file(struct sup *s, size_t i)
{
    if (i < s->nmedia && s->media[i].changed)
        return s->media[i].file;
    return s->def.cdroms[i].file ? s->def.cdroms[i].file : "";
}

/* Node names of drive i's medium of generation gen: the command line's for 0. */
static void node_prefix(size_t i, unsigned gen, char *out, size_t outlen)
{
    if (gen == 0)
        snprintf(out, outlen, "cdrom%zu", i);
    else
        snprintf(out, outlen, "cdrom%zu-m%u", i, gen);
}

static void media_record(struct sup *s)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < s->nmedia; i++) {
        if (!s->media[i].changed)
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "index", json_object_new_int((int)i));
        json_object_object_add(o, "file", json_object_new_string(s->media[i].file));
        json_object_object_add(o, "gen", json_object_new_int((int)s->media[i].gen));
        json_object_array_add(a, o);
    }
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, "media", a);
    sup_save_state(s);
}

void media_restore(struct sup *s)
{
    json_object *a;
    if (!s->rs.resources || !json_object_object_get_ex(s->rs.resources, "media", &a) ||
        !json_object_is_type(a, json_type_array))
        return;
    ensure_table(s);
    for (size_t k = 0; k < json_object_array_length(a); k++) {
        json_object *o = json_object_array_get_idx(a, k), *v;
        if (!json_object_object_get_ex(o, "index", &v))
            continue;
        int i = json_object_get_int(v);
        if (i < 0 || (size_t)i >= s->nmedia)
            continue;   /* the definition lost that drive since: nothing to say about it */
        struct cdrom_media *m = &s->media[i];
        m->changed = true;
        snprintf(m->file, sizeof(m->file), "%s",
                 json_object_object_get_ex(o, "file", &v) ? json_object_get_string(v) : "");
        m->gen = json_object_object_get_ex(o, "gen", &v) ? (unsigned)json_object_get_int(v) : 0;
    }
}

json_object *media_status_json(struct sup *s)
{
    if (!s->def.ncdroms)
        return NULL;
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < s->def.ncdroms; i++) {
        json_object *o = json_object_new_object();
        char id[24];
        snprintf(id, sizeof(id), "cdrom%zu", i);
        json_object_object_add(o, "id", json_object_new_string(id));
        const char *f = current_file(s, i);
        json_object_object_add(o, "file", f[0] ? json_object_new_string(f) : NULL);
        json_object_array_add(a, o);
    }
    return a;
}

/* ---- the change ---- */

static void step_free(struct media_step *st)
{
    if (st->fd >= 0)
        close(st->fd);
    if (st->args)
        json_object_put(st->args);
    if (st->undo_args)
        json_object_put(st->undo_args);
    *st = (struct media_step){.fd = -1};
}

static void op_free(struct media_op *op)
{
    for (size_t i = 0; i < MEDIA_STEPS; i++)
        step_free(&op->steps[i]);
    if (op->fd >= 0)
        close(op->fd);
    if (op->s->media_op == op)
        op->s->media_op = NULL;
    free(op);
}

static struct media_step *add_step(struct media_op *op, const char *cmd, json_object *args)
{
    if (op->n >= MEDIA_STEPS)
        abort();    /* the builder below stays under it */
    struct media_step *st = &op->steps[op->n++];
    *st = (struct media_step){.cmd = cmd, .args = args, .fd = -1};
    return st;
}

static void advance(struct media_op *op);

static void finish(struct media_op *op)
{
    struct sup *s = op->s;
    if (op->rolling_back || op->err.code) {
        const char *now = op->removed ? "; the drive is now empty" : "";
        sup_log(s, "change-media %s failed: %s%s", op->id, op->err.msg, now);
        sup_reply_error(s, op->client, op->err.code ? op->err.code : -EIO, "%s: change-media %s: %s%s", s->def.name,
                        op->id, op->err.msg, now);
    } else {
        if (op->file[0])
            sup_log(s, "%s: medium %s inserted", op->id, op->file);
        else
            sup_log(s, "%s: medium ejected", op->id);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "cdrom", json_object_new_string(op->id));
        json_object_object_add(o, "file", op->file[0] ? json_object_new_string(op->file) : NULL);
        sup_reply_json(s, op->client, o);
        json_object_put(o);
    }
    op_free(op);
}

static void on_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct media_op *op = ctx;
    struct sup *s = op->s;
    if (op->rolling_back) {
        if (err)
            sup_log(s, "change-media %s: undoing %s: %s", op->id, op->steps[op->undo_pos].cmd, err->msg);
        advance(op);
        return;
    }
    struct media_step *st = &op->steps[op->done];
    if (err && st->best_effort) {
        sup_log(s, "change-media %s: %s: %s%s", op->id, st->cmd, err->msg, st->tell ? "" : " (going on)");
        if (st->tell) {
            op->err = *err;
            qv_prefix(&op->err, "%s: ", st->cmd);
        }
    } else if (err) {
        op->err = *err;
        qv_prefix(&op->err, "%s: ", st->cmd);
        op->rolling_back = true;
        op->undo_pos = op->done;
        advance(op);
        return;
    }
    ensure_table(s);
    struct cdrom_media *m = &s->media[op->index];
    if (st->medium_gone) {
        op->removed = true;
        m->changed = true;
        m->file[0] = '\0';
        /* the new medium's generation is taken now: should this supervisor die before it
         * is inserted, its nodes may exist, and the next change must not reuse their names */
        if (op->gen)
            m->gen = op->gen;
        media_record(s);
    } else if (st->medium_in) {
        op->removed = false;
        m->changed = true;
        snprintf(m->file, sizeof(m->file), "%s", op->file);
        m->gen = op->gen;
        media_record(s);
    }
    op->done++;
    advance(op);
}

/* Sends the next command (or undo), or ends the change. Runs from completions. */
static void advance(struct media_op *op)
{
    struct sup *s = op->s;
    for (;;) {
        const char *cmd;
        json_object *args;
        const int *fd = NULL;
        if (op->rolling_back) {
            while (op->undo_pos > 0 && !op->steps[op->undo_pos - 1].undo_cmd)
                op->undo_pos--;
            if (op->undo_pos == 0)
                break;
            struct media_step *st = &op->steps[--op->undo_pos];
            cmd = st->undo_cmd;
            args = st->undo_args;
            st->undo_args = NULL;
        } else {
            if (op->done >= op->n)
                break;
            struct media_step *st = &op->steps[op->done];
            cmd = st->cmd;
            args = st->args;
            st->args = NULL;
            if (st->fd >= 0)
                fd = &st->fd;
        }
        int r = -ECONNRESET;
        if (s->qmp)
            r = qmp_send(s->qmp, cmd, args, fd, fd ? 1 : 0, QMP_TIMEOUT_DEVICE, 0, on_step, op);
        else if (args)
            json_object_put(args);
        if (r == 0)
            return;
        struct qv_err e = {0};
        qv_fail(&e, r, "%s: cannot send %s to QEMU (monitor connection lost)", s->def.name, cmd);
        on_step(op, NULL, &e);
        return;
    }
    finish(op);
}

/* The lowest fdset id from MEDIA_FDSET_BASE that QEMU has not got: an old medium's
 * set that failed to go away is never added to (QEMU would pick either fd). */
static int free_fdset(json_object *fdsets)
{
    for (int id = MEDIA_FDSET_BASE;; id++) {
        bool taken = false;
        for (size_t i = 0; !taken && fdsets && i < json_object_array_length(fdsets); i++) {
            json_object *v;
            taken = json_object_object_get_ex(json_object_array_get_idx(fdsets, i), "fdset-id", &v) &&
                    json_object_get_int64(v) == id;
        }
        if (!taken)
            return id;
    }
}

/* The fdsets holding the old medium's fd: add-fd named it by its file node. */
static size_t old_fdsets(json_object *fdsets, const char *opaque, int64_t *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; fdsets && i < json_object_array_length(fdsets) && n < max; i++) {
        json_object *set = json_object_array_get_idx(fdsets, i), *id, *fds, *v;
        if (!json_object_object_get_ex(set, "fdset-id", &id) || !json_object_object_get_ex(set, "fds", &fds))
            continue;
        for (size_t k = 0; k < json_object_array_length(fds); k++)
            if (json_object_object_get_ex(json_object_array_get_idx(fds, k), "opaque", &v) &&
                strcmp(json_object_get_string(v), opaque) == 0) {
                out[n++] = json_object_get_int64(id);
                break;
            }
    }
    return n;
}

/* query-fdsets answered: the whole change is laid out, then sent step by step. */
static void on_fdsets(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct media_op *op = ctx;
    struct sup *s = op->s;
    if (err) {
        op->err = *err;
        qv_prefix(&op->err, "query-fdsets: ");
        finish(op);
        return;
    }
    ensure_table(s);
    const struct cdrom_media *m = &s->media[op->index];
    bool had = current_file(s, op->index)[0] != '\0';
    char old[48], node[64];
    node_prefix(op->index, m->changed ? m->gen : 0, old, sizeof(old));

    json_object *a = json_obj1("id", json_object_new_string(op->id));
    json_object_object_add(a, "force", json_object_new_boolean(true));
    struct media_step *st = add_step(op, "blockdev-open-tray", a);
    st->undo_cmd = "blockdev-close-tray";
    st->undo_args = json_obj1("id", json_object_new_string(op->id));
    add_step(op, "blockdev-remove-medium", json_obj1("id", json_object_new_string(op->id)))->medium_gone = true;
    if (had) {
        /* the medium is out of the drive: its nodes and fd go, whatever fails there */
        snprintf(node, sizeof(node), "%s-fmt", old);
        add_step(op, "blockdev-del", json_obj1("node-name", json_object_new_string(node)))->best_effort = true;
        snprintf(node, sizeof(node), "%s-file", old);
        add_step(op, "blockdev-del", json_obj1("node-name", json_object_new_string(node)))->best_effort = true;
        int64_t sets[MEDIA_OLD_FDSETS];
        size_t nsets = old_fdsets(ret, node, sets, MEDIA_OLD_FDSETS);
        for (size_t i = 0; i < nsets; i++)
            add_step(op, "remove-fd", json_obj1("fdset-id", json_object_new_int64(sets[i])))->best_effort = true;
    }
    if (op->file[0]) {
        char prefix[48], file_node[64], fmt_node[64], path[32];
        int fdset = free_fdset(ret);
        op->gen = (m->changed ? m->gen : 0) + 1;
        node_prefix(op->index, op->gen, prefix, sizeof(prefix));
        snprintf(file_node, sizeof(file_node), "%s-file", prefix);
        snprintf(fmt_node, sizeof(fmt_node), "%s-fmt", prefix);
        snprintf(path, sizeof(path), "/dev/fdset/%d", fdset);
        /* as the command line has it for a cdrom: writeback cache, read-only */
        struct disk_io io = disk_io_mode(CACHE_WRITEBACK, AIO_AUTO, &s->facts);
        a = json_obj1("fdset-id", json_object_new_int(fdset));
        json_object_object_add(a, "opaque", json_object_new_string(file_node));
        st = add_step(op, "add-fd", a);
        st->fd = op->fd;
        op->fd = -1;
        st->undo_cmd = "remove-fd";
        st->undo_args = json_obj1("fdset-id", json_object_new_int(fdset));
        st = add_step(op, "blockdev-add", blockdev_file(file_node, path, &io, false, true));
        st->undo_cmd = "blockdev-del";
        st->undo_args = json_obj1("node-name", json_object_new_string(file_node));
        st = add_step(op, "blockdev-add", blockdev_format("raw", fmt_node, file_node, NULL, &io, false, true));
        st->undo_cmd = "blockdev-del";
        st->undo_args = json_obj1("node-name", json_object_new_string(fmt_node));
        a = json_obj1("id", json_object_new_string(op->id));
        json_object_object_add(a, "node-name", json_object_new_string(fmt_node));
        add_step(op, "blockdev-insert-medium", a)->medium_in = true;
    }
    /* closing the tray is what the guest sees as "medium changed" (or "no medium") */
    st = add_step(op, "blockdev-close-tray", json_obj1("id", json_object_new_string(op->id)));
    st->best_effort = st->tell = true;    /* the medium is in: nothing to undo, but say so */
    sup_log(s, "change-media %s: %s%s%s", op->id, had ? current_file(s, op->index) : "(empty)",
            op->file[0] ? " -> " : " ejected", op->file);
    advance(op);
}

/* Which drive `key` names: its id (cdrom0) or the file it holds now. A disk's name
 * is told apart, so the user learns it is the wrong verb rather than a typo. */
static int find_drive(struct sup *s, const char *key, size_t *out, struct qv_err *e)
{
    for (size_t i = 0; i < s->def.ncdroms; i++) {
        char id[24];
        snprintf(id, sizeof(id), "cdrom%zu", i);
        const char *f = current_file(s, i);
        if (strcmp(id, key) == 0 || (f[0] && strcmp(f, key) == 0)) {
            *out = i;
            return 0;
        }
    }
    for (size_t i = 0; i < s->def.ndisks; i++) {
        char id[24];
        snprintf(id, sizeof(id), "disk%zu", i);
        const struct vm_disk *k = &s->def.disks[i];
        if (strcmp(id, key) == 0 || (k->file && strcmp(k->file, key) == 0) || (k->volume && strcmp(k->volume, key) == 0))
            return qv_fail(e, -EINVAL, "%s: %s is a disk, not a CD-ROM (change-media swaps a CD-ROM's medium; "
                           "attach-disk/detach-disk change disks)", s->def.name, key);
    }
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        const struct hotplug *h = &s->hp[i];
        if (h->used && h->kind == HOTPLUG_DISK && (strcmp(h->id, key) == 0 || strcmp(h->file, key) == 0))
            return qv_fail(e, -EINVAL, "%s: %s is a hotplugged disk, not a CD-ROM (detach-disk removes it)",
                           s->def.name, key);
    }
    if (!s->def.ncdroms)
        return qv_fail(e, -ENOENT, "%s: no CD-ROM %s: the VM has no CD-ROM drive (add one to the definition, "
                       "e.g. define --cdrom empty, and restart it)", s->def.name, key);
    return qv_fail(e, -ENOENT, "%s: no CD-ROM %s (a drive id such as cdrom0, or the file it holds)", s->def.name, key);
}

int media_change(struct sup *s, unsigned client, const char *target, const char *file, struct qv_err *e)
{
    size_t drive = 0;
    int r;
    if (!target)
        return qv_fail(e, -EINVAL, "%s: change-media: \"target\" must be a string", s->def.name);
    if ((r = find_drive(s, target, &drive, e)) < 0)
        return r;
    if (s->media_op)
        return qv_fail(e, -EBUSY, "%s: a change of %s's medium is under way; try again once it finished", s->def.name,
                       s->media_op->id);
    if (file && file[0] != '/')
        return qv_fail(e, -EINVAL, "%s: change-media: \"%s\" is not an absolute path", s->def.name, file);
    int fd = -1;
    if (file && (fd = storage_open_image(file, O_RDONLY, e)) < 0)
        return qv_prefix(e, "%s: change-media %s: ", s->def.name, target);
    struct media_op *op = qv_xcalloc(1, sizeof(*op));
    op->s = s;
    op->client = client;
    op->index = drive;
    op->fd = fd;
    snprintf(op->id, sizeof(op->id), "cdrom%zu", drive);
    snprintf(op->file, sizeof(op->file), "%s", file ? file : "");
    for (size_t i = 0; i < MEDIA_STEPS; i++)
        op->steps[i].fd = -1;
    if ((r = qmp_send(s->qmp, "query-fdsets", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_fdsets, op)) < 0) {
        op_free(op);
        return qv_failerr(e, r, "%s: QEMU's monitor", s->def.name);
    }
    s->media_op = op;
    return 0;
}

void media_forget_all(struct sup *s)
{
    /* QEMU is gone, its monitor connection freed: no completion comes any more */
    if (s->media_op) {
        sup_reply_error(s, s->media_op->client, -ESRCH, "%s: QEMU exited before the change of %s's medium was "
                        "finished", s->def.name, s->media_op->id);
        op_free(s->media_op);
    }
    free(s->media);
    s->media = NULL;
    s->nmedia = 0;
    if (s->rs.resources)
        json_object_object_del(s->rs.resources, "media");
}
