/* Removal of hotplugged disks, NICs and host devices: device_del, then, once the guest let go
 * (DEVICE_DELETED), the block nodes QEMU actually holds (found in its block graph, or
 * by the names they were attached with), their fdsets, an rbd disk's key, a NIC's
 * netdev and host side. */
#include <stdlib.h>
#include <string.h>

#include "launcher/supervisor/hotplug_op.h"

/* ---- removal, for disks and NICs ---- */

int hotplug_detach(struct sup *s, const char *key, enum hotplug_kind kind, unsigned client, struct qv_err *e)
{
    if (!key)   /* the request's "target", checked by ctl.c; never strcmp a NULL */
        return qv_fail(e, -EINVAL, "%s: detach: \"target\" must be a string", s->def.name);
    struct hotplug *h = hop_find(s, key);
    if (!h || h->kind != kind)
        return qv_fail(e, -ENOENT, "%s: no hotplugged %s %s (devices of the definition go with --persistent, "
                                   "at the next start)", s->def.name,
                       kind == HOTPLUG_DISK ? "disk" : kind == HOTPLUG_NIC ? "NIC" : "host device", key);
    if (h->pending)
        return qv_fail(e, -EBUSY, "%s: %s is being attached; detach it once that finished", s->def.name, h->id);
    if (h->removing)
        return qv_fail(e, -EALREADY, "%s: %s is being removed already", s->def.name, h->id);
    h->removing = true;
    struct hotplug_op *op = hop_new(s, h, OP_DEVICE_DEL, client, "detach");
    hop_step(op, "device_del", json_obj1("id", json_object_new_string(h->id)), -1, QMP_TIMEOUT_DEVICE, NULL, NULL);
    hop_advance(op);
    return 0;
}

/* The nodes and fdsets of a disk as attached, by their names: when QEMU's graph is not to be had. */
static void release_disk_by_name(struct hotplug_op *op)
{
    struct hotplug *h = op->h;
    /* top first: a layer is free to go once nothing above names it */
    for (int j = -1; j < h->nlayers; j++) {
        static const char *const parts[] = {"fmt", "file"};
        for (size_t p = 0; p < ARRAY_SIZE(parts); p++) {
            char node[64];
            if (j < 0)
                snprintf(node, sizeof(node), "%s-%s", h->id, parts[p]);
            else
                snprintf(node, sizeof(node), "%s-b%d-%s", h->id, j, parts[p]);
            hop_step(op, "blockdev-del", json_obj1("node-name", json_object_new_string(node)), -1, QMP_TIMEOUT_DEVICE,
                    NULL, NULL);
        }
        hop_step(op, "remove-fd", json_obj1("fdset-id", json_object_new_int(j < 0 ? h->fdset : hop_layer_fdset(h, j))), -1,
                QMP_TIMEOUT_DEFAULT, NULL, NULL);
    }
}

/* The disk's chain as QEMU holds it now (snapshots, pulls, commits and pivots change
 * its nodes), top first, then the fdsets its file nodes read through (by opaque). */
static void on_release_fdsets(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct hotplug_op *op = ctx;
    json_object *graph = op->reply;     /* the graph, kept here meanwhile */
    op->reply = NULL;
    op->in_flight = false;
    if (err || !graph) {
        if (err)
            sup_log(op->s, "removing %s: query-fdsets: %s", op->h->id, err->msg);
        if (graph)
            json_object_put(graph);
        release_disk_by_name(op);
        hop_advance(op);
        return;
    }
    char top[48];
    snprintf(top, sizeof(top), "%s", op->h->top);
    if (!top[0])
        snprintf(top, sizeof(top), "%s-fmt", op->h->id);
    json_object *files = json_object_new_array();
    const char *node = top;
    for (int n = 0; node && n <= 2 * (STORAGE_CHAIN_MAX + 1); n++) {
        const char *file = block_graph_child(graph, node, "file");
        hop_step(op, "blockdev-del", json_obj1("node-name", json_object_new_string(node)), -1, QMP_TIMEOUT_DEVICE, NULL,
                NULL);
        if (file) {
            hop_step(op, "blockdev-del", json_obj1("node-name", json_object_new_string(file)), -1, QMP_TIMEOUT_DEVICE,
                    NULL, NULL);
            json_object_array_add(files, json_object_new_string(file));
        }
        node = block_graph_child(graph, node, "backing");
    }
    for (size_t i = 0; i < json_object_array_length(ret); i++) {
        json_object *set = json_object_array_get_idx(ret, i), *id, *fds, *opq;
        if (!json_object_object_get_ex(set, "fdset-id", &id) || !json_object_object_get_ex(set, "fds", &fds))
            continue;
        bool ours = false;
        for (size_t k = 0; k < json_object_array_length(fds) && !ours; k++)
            for (size_t f = 0; f < json_object_array_length(files) && !ours; f++)
                ours = json_object_object_get_ex(json_object_array_get_idx(fds, k), "opaque", &opq) &&
                       strcmp(json_object_get_string(opq),
                              json_object_get_string(json_object_array_get_idx(files, f))) == 0;
        if (ours)
            hop_step(op, "remove-fd", json_obj1("fdset-id", json_object_new_int(json_object_get_int(id))), -1,
                    QMP_TIMEOUT_DEFAULT, NULL, NULL);
    }
    json_object_put(files);
    json_object_put(graph);
    hop_advance(op);
}

static void on_release_graph(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct hotplug_op *op = ctx;
    op->in_flight = false;
    if (err) {
        sup_log(op->s, "removing %s: x-debug-query-block-graph: %s", op->h->id, err->msg);
        release_disk_by_name(op);
        hop_advance(op);
        return;
    }
    op->reply = json_object_get(ret);
    if (!op->s->qmp || qmp_send(op->s->qmp, "query-fdsets", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_release_fdsets,
                                op) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -EIO, "the monitor is gone");
        on_release_fdsets(op, NULL, &e);
        return;
    }
    op->in_flight = true;
}

static void released(struct sup *s, struct hotplug *h)
{
    sup_log(s, "the guest released %s", h->id);
    unsigned client = h->waiting_client;
    h->waiting_client = 0;
    struct hotplug_op *op = hop_new(s, h, OP_RELEASE, client, "detach");
    if (h->kind == HOTPLUG_DISK && h->rbd) {
        /* an rbd disk has no layers and no fdset left: its two nodes and its key */
        static const char *const parts[] = {"fmt", "file"};
        for (size_t p = 0; p < ARRAY_SIZE(parts); p++) {
            char node[64];
            snprintf(node, sizeof(node), "%s-%s", h->id, parts[p]);
            hop_step(op, "blockdev-del", json_obj1("node-name", json_object_new_string(node)), -1, QMP_TIMEOUT_DEVICE,
                    NULL, NULL);
        }
        if (h->rbd_key) {
            char key[48];
            snprintf(key, sizeof(key), "%s-key", h->id);
            hop_step(op, "object-del", json_obj1("id", json_object_new_string(key)), -1, QMP_TIMEOUT_DEFAULT, NULL, NULL);
        }
    } else if (h->kind == HOTPLUG_DISK) {
        /* the chain QEMU holds, not the names it was attached with */
        if (s->qmp && qmp_send(s->qmp, "x-debug-query-block-graph", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0,
                               on_release_graph, op) == 0) {
            op->in_flight = true;
            return;
        }
        release_disk_by_name(op);
    } else if (h->kind == HOTPLUG_HOSTDEV) {
        /* a USB device's fd goes with its fdset; vfio-pci holds nothing of ours */
        if (h->fdset >= 0)
            hop_step(op, "remove-fd", json_obj1("fdset-id", json_object_new_int(h->fdset)), -1, QMP_TIMEOUT_DEFAULT,
                     NULL, NULL);
    } else {
        char netid[40];
        snprintf(netid, sizeof(netid), "%s-net", h->id);
        hop_step(op, "netdev_del", json_obj1("id", json_object_new_string(netid)), -1, QMP_TIMEOUT_DEVICE, NULL, NULL);
    }
    hop_advance(op);
}

void hop_release_done(struct hotplug_op *op)
{
    struct sup *s = op->s;
    struct hotplug *h = op->h;
    if (h->kind == HOTPLUG_NIC)
        net_nic_unplugged(s, h);
    if (op->client) {
        if (op->err.code)
            sup_reply_error(s, op->client, op->err.code,
                            "%s: the guest released %s, but QEMU did not free all of it: %s", s->def.name, h->id,
                            op->err.msg);
        else
            sup_reply_ok(s, op->client);
    }
    hop_free(op);
    hop_clear(h);
    hotplug_record(s);
}

void hotplug_device_deleted(struct sup *s, const char *device)
{
    if (!device)
        return;
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        struct hotplug *h = &s->hp[i];
        if (!h->used || h->pending || strcmp(h->id, device) != 0)
            continue;
        if (h->op && h->op->kind == OP_DEVICE_DEL)
            h->released_early = true;   /* before device_del's own reply: finish once it came */
        else if (!h->op)
            released(s, h);
    }
}

