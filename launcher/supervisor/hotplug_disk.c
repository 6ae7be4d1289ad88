/* attach-disk: a virtio disk plugged into a running VM. The supervisor opens the image
 * and every layer of its backing chain (or, for an rbd volume, hands QEMU the cephx key
 * through an fd) and passes the fds with add-fd; QEMU gets a node per layer, bottom
 * first, and the virtio-blk-pci device on a free slot (hotplug.c). */
#include <fcntl.h>
#include <string.h>

#include "launcher/supervisor/hotplug_op.h"

/* add-fd, a file node and a format node on top of `backing` (NULL: none), each
 * with its undo. */
static void disk_node_steps(struct hotplug_op *op, int fd, int fdset, const char *prefix, const char *driver,
                            const char *backing, const struct disk_io *io, bool discard, bool readonly)
{
    char file_node[64], fmt_node[64], path[32];
    snprintf(file_node, sizeof(file_node), "%s-file", prefix);
    snprintf(fmt_node, sizeof(fmt_node), "%s-fmt", prefix);
    snprintf(path, sizeof(path), "/dev/fdset/%d", fdset);
    json_object *a = json_object_new_object();
    json_object_object_add(a, "fdset-id", json_object_new_int(fdset));
    json_object_object_add(a, "opaque", json_object_new_string(file_node));
    hop_step(op, "add-fd", a, fd, QMP_TIMEOUT_DEFAULT, "remove-fd", json_obj1("fdset-id", json_object_new_int(fdset)));
    hop_step(op, "blockdev-add", blockdev_file(file_node, path, io, discard, readonly), -1, QMP_TIMEOUT_DEVICE,
            "blockdev-del", json_obj1("node-name", json_object_new_string(file_node)));
    hop_step(op, "blockdev-add", blockdev_format(driver, fmt_node, file_node, backing, io, discard, readonly), -1,
            QMP_TIMEOUT_DEVICE, "blockdev-del", json_obj1("node-name", json_object_new_string(fmt_node)));
}

/* The image and every layer below it, opened here: QEMU opens no path. Each is the
 * file vm_resolve_disk checked, not one renamed into its place since. */
static int open_disk_layers(struct sup *s, const struct vm_disk *k, int *fds, struct qv_err *e)
{
    for (size_t j = 0; j <= k->nbacking; j++) {
        int r;
        if (j == 0) {
            fds[0] = open(k->file, (k->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
            r = fds[0] < 0 ? qv_failerr(e, -errno, "%s", k->file) : 0;
        } else {
            fds[j] = storage_open_image(k->backing[j - 1].path, O_RDONLY, e);
            r = fds[j] < 0 ? qv_prefix(e, "%s: backing layer: ", k->file) : 0;
        }
        if (r == 0)
            r = vm_disk_check_fd(k, j, fds[j], e);
        if (r < 0) {
            launch_close_resources(fds, j + 1);
            return qv_prefix(e, "%s: attach-disk: ", s->def.name);
        }
    }
    return 0;
}

/* An rbd disk: its key handed over as a secret object that reads an fd passed just
 * before (add-fd, whose reply names the fd QEMU holds; dropped again once read), then
 * the rbd node with its monitors and user, and a raw node on top. */
static void rbd_node_steps(struct sup *s, struct hotplug_op *op, const struct vm_disk *k, int keyfd,
                           const struct disk_io *io)
{
    struct hotplug *h = op->h;
    char key[48] = "", file_node[48], fmt_node[48];
    if (keyfd >= 0) {
        snprintf(key, sizeof(key), "%s-key", h->id);
        json_object *a = json_object_new_object();
        json_object_object_add(a, "fdset-id", json_object_new_int(h->fdset));
        json_object_object_add(a, "opaque", json_object_new_string(key));
        hop_step(op, "add-fd", a, keyfd, QMP_TIMEOUT_DEFAULT, "remove-fd",
                json_obj1("fdset-id", json_object_new_int(h->fdset)));
        size_t add_fd_step = op->ntodo;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "qom-type", json_object_new_string("secret"));
        json_object_object_add(o, "id", json_object_new_string(key));
        json_object_object_add(o, "format", json_object_new_string("base64"));
        hop_step(op, "object-add", o, -1, QMP_TIMEOUT_DEFAULT, "object-del", json_obj1("id", json_object_new_string(key)));
        op->todo[op->ntodo - 1].file_from_fd = true;
        hop_step(op, "remove-fd", json_obj1("fdset-id", json_object_new_int(h->fdset)), -1, QMP_TIMEOUT_DEFAULT, NULL,
                NULL);
        op->todo[op->ntodo - 1].cancels = add_fd_step;
    }
    snprintf(file_node, sizeof(file_node), "%s-file", h->id);
    snprintf(fmt_node, sizeof(fmt_node), "%s-fmt", h->id);
    hop_step(op, "blockdev-add", blockdev_rbd(file_node, k->rbd, key[0] ? key : NULL, io, k->discard, k->readonly), -1,
            QMP_TIMEOUT_DEVICE, "blockdev-del", json_obj1("node-name", json_object_new_string(file_node)));
    hop_step(op, "blockdev-add", blockdev_format("raw", fmt_node, file_node, NULL, io, k->discard, k->readonly), -1,
            QMP_TIMEOUT_DEVICE, "blockdev-del", json_obj1("node-name", json_object_new_string(fmt_node)));
    (void)s;
}

int hotplug_disk_attach(struct sup *s, json_object *spec, const char *volume, unsigned client, struct qv_err *e)
{
    struct vm_disk k;
    int r = vm_disk_from_json(spec, &s->def, &k, e);
    if (r < 0)
        return qv_prefix(e, "%s: attach-disk: ", s->def.name);
    if (k.bus != BUS_VIRTIO || k.snapshot)
        r = qv_fail(e, -EINVAL, "%s: attach-disk: only virtio disks without snapshot can be hotplugged (bus %s)",
                    s->def.name, disk_bus_names[k.bus]);
    else if ((r = vm_resolve_disk(s->paths, &k, e)) < 0)
        qv_prefix(e, "%s: attach-disk: ", s->def.name);
    else if (hop_find(s, k.file))
        r = qv_fail(e, -EBUSY, "%s: attach-disk: %s is attached already", s->def.name, k.file);
    if (r == 0 && k.rbd && (r = confine_cluster_allow(s, &k.rbd->addrs, e)) < 0)
        qv_prefix(e, "attach-disk: ");
    int slot = r < 0 ? r : hop_free_slot(s, e);
    int fds[STORAGE_CHAIN_MAX + 1];
    if (slot >= 0 && k.rbd) {
        fds[0] = -1;
        if (k.rbd->keyfile && (r = rbd_key_memfd(&k, s->conf.uid, s->conf.gid, &fds[0], e)) < 0)
            slot = qv_prefix(e, "%s: attach-disk: ", s->def.name);
    } else if (slot >= 0 && (r = open_disk_layers(s, &k, fds, e)) < 0) {
        slot = r;
    }
    if (slot < 0) {
        vm_disk_free(&k);
        return slot;
    }
    struct hotplug *h = hop_claim(s, slot, HOTPLUG_DISK, "disk", s->def.ndisks);
    h->fdset = FDSET_BASE + slot;
    h->nlayers = (int)k.nbacking;
    snprintf(h->file, sizeof(h->file), "%s", k.file);
    snprintf(h->volume, sizeof(h->volume), "%s", volume ? volume : "");
    h->format = k.format;
    h->cache = k.cache;
    h->aio = k.aio;
    h->readonly = k.readonly;
    h->discard = k.discard;
    h->rbd = k.rbd != NULL;
    h->rbd_key = k.rbd && fds[0] >= 0;
    struct hotplug_op *op = hop_new(s, h, OP_ATTACH, client, "attach-disk");
    for (size_t j = 0; j <= k.nbacking; j++)
        op->fds[op->nfds++] = fds[j];

    struct disk_io io = disk_io_mode(k.cache, k.aio, &s->facts);
    if (k.rbd)
        rbd_node_steps(s, op, &k, fds[0], &io);
    /* bottom first: a node must exist before one names it as its backing */
    char prefix[48], below[64] = "";
    for (size_t j = k.nbacking; j-- > 0;) {
        snprintf(prefix, sizeof(prefix), "%s-b%zu", h->id, j);
        disk_node_steps(op, fds[j + 1], hop_layer_fdset(h, (int)j), prefix, disk_format_names[k.backing[j].format],
                        below[0] ? below : NULL, &io, false, true);
        snprintf(below, sizeof(below), "%s-fmt", prefix);
    }
    if (!k.rbd)
        disk_node_steps(op, fds[0], h->fdset, h->id, disk_format_names[k.format], below[0] ? below : NULL, &io,
                        k.discard, k.readonly);
    char fmt_node[48];
    snprintf(fmt_node, sizeof(fmt_node), "%s-fmt", h->id);
    json_object *dev = json_object_new_object();
    json_object_object_add(dev, "driver", json_object_new_string("virtio-blk-pci"));
    json_object_object_add(dev, "id", json_object_new_string(h->id));
    json_object_object_add(dev, "drive", json_object_new_string(fmt_node));
    json_object_object_add(dev, "write-cache", json_object_new_string(io.write_cache ? "on" : "off"));
    json_object_object_add(dev, "werror", json_object_new_string("stop"));   /* as boot disks: see argv.c */
    json_object_object_add(dev, "rerror", json_object_new_string("stop"));
    if (k.serial)
        json_object_object_add(dev, "serial", json_object_new_string(k.serial));
    hop_place(s, dev, h);
    hop_step(op, "device_add", dev, -1, QMP_TIMEOUT_DEVICE, NULL, NULL);
    sup_log(s, "attaching disk %s as %s%s", h->file, h->id, k.nbacking ? " with its backing chain" : "");
    vm_disk_free(&k);
    op->reply = json_obj1("id", json_object_new_string(h->id));
    hop_advance(op);
    return 0;
}
