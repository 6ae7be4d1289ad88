/* A running VM's disks: online resize (block_resize), I/O statistics
 * (query-blockstats) and host-side I/O errors. Every disk device has
 * werror/rerror=stop, so an error such as ENOSPC on the host pauses the guest
 * instead of failing its I/O; BLOCK_IO_ERROR names the node, and the pause is shown
 * with its reason until `resume`. Requests complete through QMP callbacks. */
#include <stdlib.h>
#include <string.h>

#include "launcher/supervisor/internal.h"

static const char *boot_top(struct sup *s, size_t i, char *buf, size_t len)
{
    if (s->disk_top[i][0])
        return s->disk_top[i];
    snprintf(buf, len, "disk%zu-%s", i, s->def.disks[i].snapshot ? "ovl" : "fmt");
    return buf;
}

static void boot_disk_ref(struct sup *s, size_t i, struct disk_ref *out)
{
    const struct vm_disk *k = &s->def.disks[i];
    char buf[48];
    snprintf(out->id, sizeof(out->id), "disk%zu", i);
    snprintf(out->node, sizeof(out->node), "%s", boot_top(s, i, buf, sizeof(buf)));
    snprintf(out->file, sizeof(out->file), "%s", k->file ? k->file : "");
    out->index = (ssize_t)i;
    out->hp = NULL;
}

bool disk_find(struct sup *s, const char *key, struct disk_ref *out)
{
    for (size_t i = 0; key && i < s->def.ndisks; i++) {
        const struct vm_disk *k = &s->def.disks[i];
        boot_disk_ref(s, i, out);
        if (strcmp(out->id, key) == 0 || (k->file && strcmp(k->file, key) == 0) ||
            (k->serial && strcmp(k->serial, key) == 0) || (k->volume && strcmp(k->volume, key) == 0))
            return true;
    }
    for (int i = 0; key && i < HOTPLUG_MAX; i++) {
        struct hotplug *h = &s->hp[i];
        if (!h->used || h->pending || h->kind != HOTPLUG_DISK || (strcmp(h->id, key) != 0 && strcmp(h->file, key) != 0))
            continue;
        snprintf(out->id, sizeof(out->id), "%s", h->id);
        if (h->top[0])
            snprintf(out->node, sizeof(out->node), "%s", h->top);
        else
            snprintf(out->node, sizeof(out->node), "%s-fmt", h->id);
        snprintf(out->file, sizeof(out->file), "%s", h->file);
        out->index = -1;
        out->hp = h;
        return true;
    }
    return false;
}

/* The disk a block node belongs to: its top, or any node named after it
 * ("disk1-fmt", "disk1-b0-file", a copy's "disk1-c4-fmt") -> disk1. */
static bool disk_of_node(struct sup *s, const char *node, struct disk_ref *out)
{
    for (size_t i = 0; i < s->def.ndisks; i++)
        if (s->disk_top[i][0] && strcmp(s->disk_top[i], node) == 0) {
            boot_disk_ref(s, i, out);
            return true;
        }
    for (int i = 0; i < HOTPLUG_MAX; i++)
        if (s->hp[i].used && s->hp[i].top[0] && strcmp(s->hp[i].top, node) == 0)
            return disk_find(s, s->hp[i].id, out);
    char id[24];
    const char *dash = strchr(node, '-');
    size_t n = dash ? (size_t)(dash - node) : strlen(node);
    if (n == 0 || n >= sizeof(id))
        return false;
    memcpy(id, node, n);
    id[n] = '\0';
    return disk_find(s, id, out);
}

/* ---- disk-resize ---------------------------------------------------------------------- */

struct resize {
    struct sup *s;
    unsigned client;
    struct disk_ref disk;
    uint64_t size;          /* absolute, or the amount to add when grow */
    bool grow, allow_shrink;
    uint64_t target;
};

static void on_resized(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct resize *rz = ctx;
    struct sup *s = rz->s;
    (void)ret;
    if (err) {
        sup_reply_error(s, rz->client, err->code, "%s: %s: resizing: %s", s->def.name, rz->disk.id, err->msg);
    } else {
        char sz[32];
        format_size(rz->target, sz, sizeof(sz));
        sup_log(s, "%s (%s) resized to %s", rz->disk.id, rz->disk.file, sz);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "disk", json_object_new_string(rz->disk.id));
        json_object_object_add(o, "size", json_object_new_int64((int64_t)rz->target));
        sup_reply_json(s, rz->client, o);
        json_object_put(o);
    }
    free(rz);
}

static uint64_t node_size(json_object *nodes, const char *node)
{
    for (size_t i = 0; nodes && i < json_object_array_length(nodes); i++) {
        json_object *n = json_object_array_get_idx(nodes, i), *v, *img;
        if (json_object_object_get_ex(n, "node-name", &v) && strcmp(json_object_get_string(v), node) == 0 &&
            json_object_object_get_ex(n, "image", &img) && json_object_object_get_ex(img, "virtual-size", &v))
            return (uint64_t)json_object_get_int64(v);
    }
    return 0;
}

static void on_nodes(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct resize *rz = ctx;
    struct sup *s = rz->s;
    uint64_t cur = err ? 0 : node_size(ret, rz->disk.node);
    char a[32], b[32];
    int code = 0;
    if (err) {
        sup_reply_error(s, rz->client, err->code, "%s: %s: %s", s->def.name, rz->disk.id, err->msg);
        code = err->code;
    } else if (!cur) {
        sup_reply_error(s, rz->client, -EIO, "%s: %s: QEMU does not report the size of node %s", s->def.name,
                        rz->disk.id, rz->disk.node);
        code = -EIO;
    } else {
        rz->target = rz->grow ? cur + rz->size : rz->size;
        rz->target = (rz->target + 511) & ~(uint64_t)511;     /* QEMU resizes in whole sectors */
        format_size(cur, a, sizeof(a));
        format_size(rz->target, b, sizeof(b));
        if (rz->target < cur && !rz->allow_shrink) {
            sup_reply_error(s, rz->client, -EINVAL,
                            "%s: %s is %s; shrinking it to %s cuts off what the guest stored there "
                            "(--allow-shrink if the guest's filesystem was shrunk first)", s->def.name, rz->disk.id, a,
                            b);
            code = -EINVAL;
        }
    }
    if (code) {
        free(rz);
        return;
    }
    json_object *args = json_object_new_object();
    json_object_object_add(args, "node-name", json_object_new_string(rz->disk.node));
    json_object_object_add(args, "size", json_object_new_int64((int64_t)rz->target));
    if (qmp_send(s->qmp, "block_resize", args, NULL, 0, QMP_TIMEOUT_DEVICE, 0, on_resized, rz) < 0) {
        sup_reply_error(s, rz->client, -EIO, "%s: QEMU's monitor is gone", s->def.name);
        free(rz);
    }
}

int disk_resize(struct sup *s, unsigned client, const char *target, const char *size, bool allow_shrink,
                struct qv_err *e)
{
    struct resize rz = {.s = s, .client = client, .allow_shrink = allow_shrink};
    if (!disk_find(s, target, &rz.disk))
        return qv_fail(e, -ENOENT, "%s: no disk %s (a device id such as disk0, an image path or a serial)", s->def.name,
                       target);
    rz.grow = size[0] == '+';
    if (parse_size(size + rz.grow, &rz.size) < 0 || rz.size == 0)
        return qv_fail(e, -EINVAL, "%s: disk-resize: \"%s\" is not a size (20G, or +5G to grow by 5 GiB)", s->def.name,
                       size);
    struct resize *p = qv_xcalloc(1, sizeof(*p));
    *p = rz;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "flat", json_object_new_boolean(true));
    if (qmp_send(s->qmp, "query-named-block-nodes", args, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_nodes, p) < 0) {
        free(p);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    return 0;
}

/* ---- blkstat --------------------------------------------------------------------------- */

struct stats_req {
    struct sup *s;
    unsigned client;
    char only[24];          /* one disk's id, "" for all */
};

/* query-blockstats names a device by its qdev path: "/machine/peripheral/disk0/virtio-backend". */
static void device_of_qdev(const char *qdev, char *out, size_t outlen)
{
    static const char prefix[] = "/machine/peripheral/";
    const char *p = strncmp(qdev, prefix, sizeof(prefix) - 1) == 0 ? qdev + sizeof(prefix) - 1 : qdev;
    size_t n = strcspn(p, "/");
    snprintf(out, outlen, "%.*s", (int)n, p);
}

json_object *disk_stats_json(struct sup *s, json_object *ret, const char *only)
{
    static const char *const keys[][2] = {
        {"rd_operations", "rd_reqs"},   {"rd_bytes", "rd_bytes"},   {"wr_operations", "wr_reqs"},
        {"wr_bytes", "wr_bytes"},       {"flush_operations", "flush_reqs"}, {"rd_total_time_ns", "rd_total_time_ns"},
        {"wr_total_time_ns", "wr_total_time_ns"}, {"flush_total_time_ns", "flush_total_time_ns"},
    };
    json_object *disks = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(ret); i++) {
        json_object *b = json_object_array_get_idx(ret, i), *qdev, *st, *v;
        char id[64];
        struct disk_ref ref;
        if (!json_object_object_get_ex(b, "qdev", &qdev) || !json_object_object_get_ex(b, "stats", &st))
            continue;
        device_of_qdev(json_object_get_string(qdev), id, sizeof(id));
        if (!disk_find(s, id, &ref) || strcmp(ref.id, id) != 0 || (only && only[0] && strcmp(only, id) != 0))
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "disk", json_object_new_string(ref.id));
        json_object_object_add(o, "file", json_object_new_string(ref.file));
        for (size_t k = 0; k < ARRAY_SIZE(keys); k++)
            json_object_object_add(o, keys[k][1],
                                   json_object_new_int64(json_object_object_get_ex(st, keys[k][0], &v)
                                                             ? json_object_get_int64(v) : 0));
        json_object_array_add(disks, o);
    }
    return disks;
}

static void on_blockstats(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct stats_req *rq = ctx;
    struct sup *s = rq->s;
    if (err) {
        sup_reply_error(s, rq->client, err->code, "%s: query-blockstats: %s", s->def.name, err->msg);
        free(rq);
        return;
    }
    json_object *reply = json_object_new_object();
    json_object_object_add(reply, "disks", disk_stats_json(s, ret, rq->only));
    sup_reply_json(s, rq->client, reply);
    json_object_put(reply);
    free(rq);
}

int disk_stats(struct sup *s, unsigned client, const char *target, struct qv_err *e)
{
    struct disk_ref ref;
    if (target && !disk_find(s, target, &ref))
        return qv_fail(e, -ENOENT, "%s: no disk %s (a device id such as disk0, an image path or a serial)", s->def.name,
                       target);
    struct stats_req *rq = qv_xcalloc(1, sizeof(*rq));
    rq->s = s;
    rq->client = client;
    if (target)
        snprintf(rq->only, sizeof(rq->only), "%s", ref.id);
    if (qmp_send(s->qmp, "query-blockstats", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_blockstats, rq) < 0) {
        free(rq);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    return 0;
}

/* ---- host-side I/O errors -------------------------------------------------------------- */

void disk_io_error(struct sup *s, json_object *data)
{
    json_object *v;
    const char *node = json_object_object_get_ex(data, "node-name", &v) ? json_object_get_string(v) : "";
    const char *action = json_object_object_get_ex(data, "action", &v) ? json_object_get_string(v) : "";
    const char *op = json_object_object_get_ex(data, "operation", &v) ? json_object_get_string(v) : "I/O";
    const char *why = json_object_object_get_ex(data, "reason", &v) ? json_object_get_string(v) : "I/O error";
    struct disk_ref ref;
    char disk[PATH_MAX + 64];
    if (disk_of_node(s, node, &ref))
        snprintf(disk, sizeof(disk), "%s (%s)", ref.id, ref.file);
    else
        snprintf(disk, sizeof(disk), "node %s", node);
    if (strcmp(action, "stop") != 0) {
        sup_log(s, "%s: %s error: %s (action %s)", disk, op, why, action);
        return;
    }
    char reason[sizeof(s->rs.state_reason)];
    snprintf(reason, sizeof(reason), "I/O error on %s: %s", disk, why);
    if (strcmp(reason, s->rs.state_reason) == 0)
        return;     /* QEMU repeats it for every request that fails meanwhile */
    sup_log(s, "%s: %s error: %s; the guest is paused until `qvisor resume %s`", disk, op, why, s->def.name);
    snprintf(s->rs.state_reason, sizeof(s->rs.state_reason), "%s", reason);
    if (s->rs.state == VM_PAUSED)
        sup_save_state(s);  /* already paused (its STOP came first): record why */
}

/* ---- the node a disk's device reads: it moves with pivots and snapshots ---------------- */

void disk_tops_reset(struct sup *s)
{
    memset(s->disk_top, 0, sizeof(s->disk_top));
    if (s->rs.resources)
        json_object_object_del(s->rs.resources, "disk_tops");
}

void disk_tops_record(struct sup *s)
{
    json_object *o = json_object_new_object();
    for (size_t i = 0; i < s->def.ndisks && i < VM_MAX_DISKS; i++) {
        if (!s->disk_top[i][0])
            continue;
        char id[24];
        snprintf(id, sizeof(id), "disk%zu", i);
        json_object_object_add(o, id, json_object_new_string(s->disk_top[i]));
    }
    for (int i = 0; i < HOTPLUG_MAX; i++)
        if (s->hp[i].used && s->hp[i].kind == HOTPLUG_DISK && s->hp[i].top[0])
            json_object_object_add(o, s->hp[i].id, json_object_new_string(s->hp[i].top));
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, "disk_tops", o);
    sup_save_state(s);
}

/* The default node a disk's device starts on. */
static void default_top(struct sup *s, const struct disk_ref *d, char *out, size_t len)
{
    if (d->index >= 0)
        snprintf(out, len, "disk%zd-%s", d->index, s->def.disks[d->index].snapshot ? "ovl" : "fmt");
    else
        snprintf(out, len, "%s-fmt", d->id);
}

static void set_top(struct sup *s, const struct disk_ref *d, const char *node)
{
    char def[48];
    default_top(s, d, def, sizeof(def));
    bool is_default = strcmp(def, node) == 0;
    if (d->index >= 0 && d->index < VM_MAX_DISKS)
        snprintf(s->disk_top[d->index], sizeof(s->disk_top[0]), "%s", is_default ? "" : node);
    else if (d->hp)
        snprintf(d->hp->top, sizeof(d->hp->top), "%s", is_default ? "" : node);
}

void disk_tops_reattach(struct sup *s)
{
    json_object *o, *blocks = NULL, *v;
    if (s->rs.resources && json_object_object_get_ex(s->rs.resources, "disk_tops", &o)) {
        json_object_object_foreach(o, id, node) {
            struct disk_ref d;
            if (json_object_is_type(node, json_type_string) && disk_find(s, id, &d) && strcmp(d.id, id) == 0)
                set_top(s, &d, json_object_get_string(node));
        }
    }
    /* QEMU's word wins: a supervisor killed between a pivot and its record is corrected here */
    struct qv_err e = {0};
    if (!s->qmp || qmp_call(s->qmp, "query-block", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &blocks, &e) < 0) {
        sup_log(s, "warning: query-block: %s; the recorded disk nodes are kept", e.msg);
        return;
    }
    bool changed = false;
    for (size_t i = 0; i < json_object_array_length(blocks); i++) {
        json_object *b = json_object_array_get_idx(blocks, i), *ins;
        char id[64];
        struct disk_ref d;
        if (!json_object_object_get_ex(b, "qdev", &v) || !json_object_object_get_ex(b, "inserted", &ins) ||
            !json_object_object_get_ex(ins, "node-name", &o))
            continue;
        device_of_qdev(json_object_get_string(v), id, sizeof(id));
        if (!disk_find(s, id, &d) || strcmp(d.id, id) != 0 || strcmp(d.node, json_object_get_string(o)) == 0)
            continue;
        sup_log(s, "%s reads node %s (recorded: %s)", d.id, json_object_get_string(o), d.node);
        set_top(s, &d, json_object_get_string(o));
        changed = true;
    }
    json_object_put(blocks);
    if (changed)
        disk_tops_record(s);
}

const char *disk_qemu_top(json_object *blocks, const char *id)
{
    for (size_t i = 0; i < json_object_array_length(blocks); i++) {
        json_object *b = json_object_array_get_idx(blocks, i), *v, *ins, *node;
        char dev[64];
        if (!json_object_object_get_ex(b, "qdev", &v) || !json_object_object_get_ex(b, "inserted", &ins) ||
            !json_object_object_get_ex(ins, "node-name", &node))
            continue;
        device_of_qdev(json_object_get_string(v), dev, sizeof(dev));
        if (strcmp(dev, id) == 0)
            return json_object_get_string(node);
    }
    return NULL;
}

int disk_switched(struct sup *s, const char *id, const char *node, const char *file, const char *volume,
                  enum disk_format format, struct qv_err *e)
{
    struct disk_ref d;
    if (!disk_find(s, id, &d) || strcmp(d.id, id) != 0)
        return qv_fail(e, -ENOENT, "%s: no disk %s", s->def.name, id);
    set_top(s, &d, node);
    int r = 0;
    if (d.hp) {
        snprintf(d.hp->file, sizeof(d.hp->file), "%s", file);
        snprintf(d.hp->volume, sizeof(d.hp->volume), "%s", volume ? volume : "");
        d.hp->format = format;
        hotplug_record(s);
    } else {
        struct vm_disk *k = &s->def.disks[d.index];
        const char *old = k->volume ? k->volume : k->file;
        r = vm_disk_image_update(s->paths, s->def.name, old, volume, file, format, e);
        if (r < 0)
            qv_prefix(e, "%s: %s now reads %s, but the definition could not follow: ", s->def.name, d.id, file);
        free(k->file);
        free(k->volume);
        k->file = qv_xstrdup(file);
        k->volume = volume ? qv_xstrdup(volume) : NULL;
        k->format = format;
        for (size_t j = 0; j < k->nbacking; j++)
            free(k->backing[j].path);
        free(k->backing);
        k->backing = NULL;
        k->nbacking = 0;
    }
    disk_tops_record(s);
    sup_log(s, "%s now reads %s%s%s%s (node %s)", d.id, file, volume ? " (volume " : "", volume ? volume : "",
            volume ? ")" : "", node);
    return r;
}
