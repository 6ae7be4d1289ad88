/* A running VM's disk-only snapshot deleted: its overlay merged into the image below
 * with an active block-commit (a job, jobs.c) and a pivot back to that image, whose
 * node is found in QEMU's graph by the fdset each format node reads. A base opened
 * read-only at start gets a read-write fd in its fdset and is reopened read-write
 * first. Then the definition names the base again (disk_switched), the overlay's
 * nodes and file go, and the record goes (its children to its parent). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/internal.h"

static const char *data_name(struct sup_job *j)
{
    json_object *v;
    return j->data && json_object_object_get_ex(j->data, "name", &v) ? json_object_get_string(v) : "";
}

/* The fdset path a format node reads: its "file" is that path, or a json: name
 * whose file.filename is. */
static bool node_file_path(json_object *node, const char *key, char *out, size_t outlen)
{
    json_object *v, *o = NULL, *f, *fn;
    if (!json_object_object_get_ex(node, key, &v) || !json_object_is_type(v, json_type_string))
        return false;
    const char *str = json_object_get_string(v);
    if (!str_startswith(str, "json:"))
        return snprintf(out, outlen, "%s", str) < (int)outlen;
    struct qv_err e = {0};
    if (json_parse_str("node", str + 5, &o, &e) < 0)
        return false;
    bool ok = json_object_object_get_ex(o, "file", &f) && json_object_object_get_ex(f, "filename", &fn) &&
              snprintf(out, outlen, "%s", json_object_get_string(fn)) < (int)outlen;
    json_object_put(o);
    return ok;
}

static json_object *node_named(json_object *nodes, const char *name)
{
    for (size_t i = 0; i < json_object_array_length(nodes); i++) {
        json_object *o = json_object_array_get_idx(nodes, i), *v;
        if (json_object_object_get_ex(o, "node-name", &v) && strcmp(json_object_get_string(v), name) == 0)
            return o;
    }
    return NULL;
}

/* The format node right below `top` in QEMU's graph. */
static bool node_below(json_object *nodes, const char *top, char *out, size_t outlen)
{
    json_object *t = node_named(nodes, top), *v;
    char want[64], have[64];
    if (!t || !node_file_path(t, "backing_file", want, sizeof(want)))
        return false;
    for (size_t i = 0; i < json_object_array_length(nodes); i++) {
        json_object *o = json_object_array_get_idx(nodes, i);
        if (!json_object_object_get_ex(o, "drv", &v) || strcmp(json_object_get_string(v), "file") == 0)
            continue;
        if (node_file_path(o, "file", have, sizeof(have)) && strcmp(have, want) == 0 &&
            json_object_object_get_ex(o, "node-name", &v))
            return snprintf(out, outlen, "%s", json_object_get_string(v)) < (int)outlen;
    }
    return false;
}

struct merge_req {
    struct sup *s;
    unsigned client;
    struct storage_snapshot rec;
    char top[48], base[48];
    char base_path[64];     /* the fdset the node below reads */
    char base_backing[48];  /* the node below that one; "" for none */
};

/* data: {"name", "disk", "node" (the overlay's), "base" (the node below), "active"} */
static void merge_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (err)
        return;
    json_object *v;
    const char *name = data_name(j), *base = "", *overlay = "";
    bool active = json_object_object_get_ex(j->data, "active", &v) && json_object_get_boolean(v);
    if (json_object_object_get_ex(j->data, "base", &v))
        base = json_object_get_string(v);
    if (json_object_object_get_ex(j->data, "node", &v))
        overlay = json_object_get_string(v);
    char dir[PATH_MAX];
    snapshot_dir(s->paths, s->def.name, dir, sizeof(dir));
    _cleanup_snapshot_ struct storage_snapshot rec = {0};
    struct qv_err e = {0};
    if (storage_snapshot_load(dir, name, &rec, &e) < 0) {
        sup_log(s, "snapshot %s merged; its record: %s", name, e.msg);
        return;     /* a successor ran this already */
    }
    const struct storage_snapshot_disk *k = &rec.disks[0];
    int r = 0;
    if (active)
        r = disk_switched(s, k->disk, base, k->file, k->volume[0] ? k->volume : NULL,
                          k->format == STORAGE_FORMAT_QCOW2 ? FORMAT_QCOW2 : FORMAT_RAW, &e);
    if (r == 0)
        r = snapshot_unrecord(s->paths, s->def.name, &rec, &e);
    if (r < 0) {
        j->fail = e;
        return;
    }
    unlink(k->overlay);
    sup_log(s, "snapshot %s deleted: %s merged into %s", name, k->overlay, k->file);
    /* the overlay's nodes are out of the graph now: drop them, format node first (a
     * failure only logs; QEMU frees them at exit anyway) */
    size_t len = strlen(overlay);
    if (active && s->qmp && len > 4 && strcmp(overlay + len - 4, "-fmt") == 0) {
        char file_node[48];
        snprintf(file_node, sizeof(file_node), "%.*s-file", (int)(len - 4), overlay);
        sup_qmp(s, "blockdev-del", json_obj1("node-name", json_object_new_string(overlay)));
        sup_qmp(s, "blockdev-del", json_obj1("node-name", json_object_new_string(file_node)));
    }
}

/* Ready: the pivot asked for at the start (sup_job_complete) goes out by itself. */
static void on_merge_ready(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    (void)s;
    (void)j;
    (void)err;
}

const struct sup_job_ops snapshot_merge_ops = {.kind = "snapshot-merge", .on_ready = on_merge_ready,
                                               .on_done = merge_done};

static void merge_end(struct merge_req *m, int r, const struct qv_err *e)
{
    if (r < 0 && m->client)
        sup_reply_error(m->s, m->client, r, "%s", e->msg);
    storage_snapshot_free(&m->rec);
    free(m);
}

/* The commit itself: a job, answered when it is over (pivot included). */
static void merge_start(struct merge_req *m)
{
    struct sup *s = m->s;
    struct qv_err e = {0};
    const struct storage_snapshot_disk *k = &m->rec.disks[0];
    json_object *args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string(m->top));
    json_object_object_add(args, "base-node", json_object_new_string(m->base));
    json_object *data = json_object_new_object();
    json_object_object_add(data, "name", json_object_new_string(m->rec.name));
    json_object_object_add(data, "disk", json_object_new_string(k->disk));
    json_object_object_add(data, "node", json_object_new_string(m->top));
    json_object_object_add(data, "base", json_object_new_string(m->base));
    json_object_object_add(data, "active", json_object_new_boolean(true));
    sup_log(s, "merging snapshot %s: %s into %s", m->rec.name, k->overlay, k->file);
    struct sup_job *j = sup_job_start(s, &snapshot_merge_ops, k->disk, "block-commit", args, data, m->client, true, &e);
    if (!j) {
        merge_end(m, e.code ? e.code : -EIO, &e);
        return;
    }
    m->client = 0;      /* the job answers it, whatever happens now */
    if (sup_job_complete(s, j, &e) < 0)
        sup_log(s, "warning: %s", e.msg);
    merge_end(m, 0, NULL);
}

static void on_base_reopened(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct merge_req *m = ctx;
    if (err) {
        struct qv_err e = {0};
        qv_fail(&e, err->code ? err->code : -EIO, "%s: snapshot %s: reopening %s read-write: %s", m->s->def.name,
                m->rec.name, m->rec.disks[0].file, err->msg);
        merge_end(m, e.code, &e);
        return;
    }
    merge_start(m);
}

/* The read-write fd is in the node's fdset: its file and format nodes are reopened
 * read-write, with the options they were made with otherwise. */
static void on_base_writable(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct merge_req *m = ctx;
    struct sup *s = m->s;
    struct qv_err e = {0};
    if (err) {
        qv_fail(&e, err->code ? err->code : -EIO, "%s: snapshot %s: passing %s read-write: %s", s->def.name,
                m->rec.name, m->rec.disks[0].file, err->msg);
        merge_end(m, e.code, &e);
        return;
    }
    size_t idx = (size_t)strtoul(m->rec.disks[0].disk + 4, NULL, 10), len = strlen(m->base);
    char file_node[48];
    snprintf(file_node, sizeof(file_node), "%.*s-file", (int)(len > 4 ? len - 4 : len), m->base);
    struct disk_io io = disk_io_mode(s->def.disks[idx].cache, s->def.disks[idx].aio, &s->facts);
    json_object *opts = json_object_new_array();
    json_object_array_add(opts, blockdev_file(file_node, m->base_path, &io, false, false));
    /* blockdev-reopen keeps no option it is not given: the backing link included */
    json_object_array_add(opts, blockdev_format(storage_format_name(m->rec.disks[0].format), m->base, file_node,
                                                m->base_backing[0] ? m->base_backing : NULL, &io, false, false));
    if (qmp_send(s->qmp, "blockdev-reopen", json_obj1("options", opts), NULL, 0, QMP_TIMEOUT_DEVICE, 0, on_base_reopened,
                 m) < 0) {
        qv_fail(&e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
        merge_end(m, e.code, &e);
    }
}

static void on_merge_nodes(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct merge_req *m = ctx;
    struct sup *s = m->s;
    struct qv_err e = {0};
    const struct storage_snapshot_disk *k = &m->rec.disks[0];
    struct disk_ref ref;
    if (err) {
        qv_fail(&e, err->code ? err->code : -EIO, "%s: query-named-block-nodes: %s", s->def.name, err->msg);
        merge_end(m, e.code, &e);
        return;
    }
    if (!disk_find(s, k->disk, &ref)) {
        qv_fail(&e, -ENOENT, "%s: no disk %s", s->def.name, k->disk);
        merge_end(m, e.code, &e);
        return;
    }
    snprintf(m->top, sizeof(m->top), "%s", ref.node);
    if (strcmp(ref.file, k->overlay) != 0) {
        qv_fail(&e, -EBUSY, "%s: snapshot %s: its overlay is below a later one now; stop the VM to merge it, or delete "
                "the later snapshots first", s->def.name, m->rec.name);
        merge_end(m, e.code, &e);
        return;
    }
    if (!node_below(ret, m->top, m->base, sizeof(m->base))) {
        qv_fail(&e, -EIO, "%s: snapshot %s: QEMU's graph shows no node below %s", s->def.name, m->rec.name, m->top);
        merge_end(m, e.code, &e);
        return;
    }
    /* A layer opened at start is read-only: QEMU reopens it read-write for the
     * commit from the same fdset, which then needs a read-write fd of the file. */
    json_object *b = node_named(ret, m->base), *v;
    char path[64];
    int fdset;
    if (!b || !json_object_object_get_ex(b, "ro", &v) || !json_object_get_boolean(v)) {
        merge_start(m);
        return;
    }
    if (!node_file_path(b, "file", path, sizeof(path)) || sscanf(path, "/dev/fdset/%d", &fdset) != 1 ||
        !str_startswith(m->base, "disk") || strlen(m->base) < 5 || strcmp(m->base + strlen(m->base) - 4, "-fmt") != 0) {
        qv_fail(&e, -EIO, "%s: snapshot %s: node %s reads %s, not an fd set", s->def.name, m->rec.name, m->base, path);
        merge_end(m, e.code, &e);
        return;
    }
    snprintf(m->base_path, sizeof(m->base_path), "%s", path);
    if (!node_below(ret, m->base, m->base_backing, sizeof(m->base_backing)))
        m->base_backing[0] = '\0';
    _cleanup_close_ int fd = storage_open_image(k->file, O_RDWR, &e);
    if (fd < 0) {
        qv_prefix(&e, "%s: snapshot %s: ", s->def.name, m->rec.name);
        merge_end(m, e.code, &e);
        return;
    }
    if (qmp_send(s->qmp, "add-fd", json_obj1("fdset-id", json_object_new_int(fdset)), &fd, 1, QMP_TIMEOUT_DEFAULT, 0,
                 on_base_writable, m) < 0) {
        qv_fail(&e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
        merge_end(m, e.code, &e);
    }
}

int snapshot_live_merge(struct sup *s, unsigned client, struct storage_snapshot *rec, struct qv_err *e)
{
    struct merge_req *m = qv_xcalloc(1, sizeof(*m));
    m->s = s;
    m->client = client;
    m->rec = *rec;
    memset(rec, 0, sizeof(*rec));
    if (qmp_send(s->qmp, "query-named-block-nodes", json_obj1("flat", json_object_new_boolean(true)), NULL, 0,
                 QMP_TIMEOUT_DEFAULT, 0, on_merge_nodes, m) < 0) {
        storage_snapshot_free(&m->rec);
        free(m);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    return 0;
}
