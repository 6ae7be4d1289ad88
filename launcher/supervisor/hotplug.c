/* Devices added to and removed from a running VM. The supervisor opens what QEMU
 * needs and passes the fd over QMP (add-fd for images, getfd for taps), so a
 * confined QEMU never opens a path itself. On q35 each device takes one of the
 * free pcie-root-ports kept for this; on pc it takes any free slot of pci.0.
 * Removal is finished (block nodes, fds, taps released) only when the guest has
 * let go of the device (DEVICE_DELETED). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/internal.h"

#define FDSET_BASE 1000         /* above any fd number the command line uses */
#define RELEASE_TIMEOUT_MS 30000

static void hotplug_clear(struct hotplug *h)
{
    vm_nic_free(&h->nic);
    memset(h, 0, sizeof(*h));
}

static struct hotplug *find(struct sup *s, const char *key)
{
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        struct hotplug *h = &s->hp[i];
        if (h->used && (strcmp(h->id, key) == 0 || strcmp(h->file, key) == 0 || strcmp(h->mac, key) == 0))
            return h;
    }
    return NULL;
}

static int free_slot(struct sup *s, struct qv_err *e)
{
    bool port_used[VM_HOTPLUG_PORTS] = {0};
    int slot = -1;
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        if (s->hp[i].used && s->hp[i].port >= 0)
            port_used[s->hp[i].port] = true;
        else if (!s->hp[i].used && slot < 0)
            slot = i;
    }
    if (slot < 0)
        return qv_fail(e, -EBUSY, "%s: %d devices are hotplugged already", s->def.name, HOTPLUG_MAX);
    s->hp[slot].port = -1;
    if (s->def.machine == MACHINE_Q35) {
        for (int p = 0; p < VM_HOTPLUG_PORTS; p++) {
            if (!port_used[p]) {
                s->hp[slot].port = p;
                return slot;
            }
        }
        return qv_fail(e, -EBUSY, "%s: all %d hotplug ports are taken (detach a device first)", s->def.name,
                       VM_HOTPLUG_PORTS);
    }
    if (s->def.machine == MACHINE_MICROVM)
        return qv_fail(e, -EOPNOTSUPP, "%s: microvm has no hotplug", s->def.name);
    return slot;
}

/* A unique device id: after the definition's own and every hotplugged one. */
static void next_id(struct sup *s, const char *prefix, size_t first, char *out, size_t outlen)
{
    for (size_t n = first;; n++) {
        snprintf(out, outlen, "%s%zu", prefix, n);
        if (!find(s, out))
            return;
    }
}

static void place(struct sup *s, json_object *dev, const struct hotplug *h)
{
    char bus[16];
    if (h->port >= 0) {
        snprintf(bus, sizeof(bus), "rp%d", h->port);
        json_object_object_add(dev, "bus", json_object_new_string(bus));
    } else if (s->def.machine == MACHINE_PC) {
        json_object_object_add(dev, "bus", json_object_new_string("pci.0"));
    }
}

void hotplug_record(struct sup *s)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        const struct hotplug *h = &s->hp[i];
        if (!h->used)
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(h->id));
        json_object_object_add(o, "kind", json_object_new_string(h->kind == HOTPLUG_DISK ? "disk" : "nic"));
        json_object_object_add(o, "port", json_object_new_int(h->port));
        json_object_object_add(o, "fdset", json_object_new_int(h->fdset));
        json_object_object_add(o, "file", json_object_new_string(h->file));
        json_object_object_add(o, "mac", json_object_new_string(h->mac));
        json_object_object_add(o, "tap", json_object_new_string(h->tap));
        json_object_object_add(o, "network", json_object_new_string(h->network));
        json_object_object_add(o, "nic_index", json_object_new_int((int)h->nic_index));
        json_object_array_add(a, o);
    }
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, "hotplug", a);
    runstate_write(s->paths, s->def.name, &s->rs, NULL);
}

void hotplug_restore(struct sup *s)
{
    json_object *a;
    if (!s->rs.resources || !json_object_object_get_ex(s->rs.resources, "hotplug", &a))
        return;
    for (size_t i = 0; i < json_object_array_length(a) && i < HOTPLUG_MAX; i++) {
        json_object *o = json_object_array_get_idx(a, i), *v;
        struct hotplug *h = &s->hp[i];
        memset(h, 0, sizeof(*h));
        h->used = true;
        if (json_object_object_get_ex(o, "id", &v))
            snprintf(h->id, sizeof(h->id), "%s", json_object_get_string(v));
        h->kind = json_object_object_get_ex(o, "kind", &v) && strcmp(json_object_get_string(v), "nic") == 0 ? HOTPLUG_NIC
                                                                                                            : HOTPLUG_DISK;
        h->port = json_object_object_get_ex(o, "port", &v) ? json_object_get_int(v) : -1;
        h->fdset = json_object_object_get_ex(o, "fdset", &v) ? json_object_get_int(v) : -1;
        if (json_object_object_get_ex(o, "file", &v))
            snprintf(h->file, sizeof(h->file), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "mac", &v))
            snprintf(h->mac, sizeof(h->mac), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "tap", &v))
            snprintf(h->tap, sizeof(h->tap), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "network", &v))
            snprintf(h->network, sizeof(h->network), "%s", json_object_get_string(v));
        h->nic_index = json_object_object_get_ex(o, "nic_index", &v) ? (size_t)json_object_get_int(v) : 0;
    }
}

void hotplug_forget_all(struct sup *s)
{
    /* QEMU is gone and its devices, fdsets and taps with it */
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        if (s->hp[i].used && s->hp[i].waiting_client)
            sup_reply_error(s, s->hp[i].waiting_client, -ESRCH, "QEMU exited before the guest released the device");
        if (s->hp[i].used && s->hp[i].kind == HOTPLUG_NIC)
            net_nic_unplugged(s, &s->hp[i]);
        hotplug_clear(&s->hp[i]);
    }
}

/* ---- disks ---- */

static void disk_undo(struct sup *s, const struct hotplug *h, bool nodes)
{
    char node[48];
    if (nodes) {
        snprintf(node, sizeof(node), "%s-fmt", h->id);
        json_object *a = json_object_new_object();
        json_object_object_add(a, "node-name", json_object_new_string(node));
        qmp_call(s->qmp, "blockdev-del", a, NULL, 0, QMP_TIMEOUT_DEVICE, NULL, NULL);
        snprintf(node, sizeof(node), "%s-file", h->id);
        a = json_object_new_object();
        json_object_object_add(a, "node-name", json_object_new_string(node));
        qmp_call(s->qmp, "blockdev-del", a, NULL, 0, QMP_TIMEOUT_DEVICE, NULL, NULL);
    }
    json_object *a = json_object_new_object();
    json_object_object_add(a, "fdset-id", json_object_new_int(h->fdset));
    qmp_call(s->qmp, "remove-fd", a, NULL, 0, QMP_TIMEOUT_DEFAULT, NULL, NULL);
}


/* The QMP part of an attach; *stage says how far it got, for the undo. */
static int disk_plug(struct sup *s, struct hotplug *h, const struct vm_disk *k, int fd, int *stage, struct qv_err *e)
{
    char file_node[48], fmt_node[48], path[32];
    snprintf(file_node, sizeof(file_node), "%s-file", h->id);
    snprintf(fmt_node, sizeof(fmt_node), "%s-fmt", h->id);
    snprintf(path, sizeof(path), "/dev/fdset/%d", h->fdset);
    struct disk_io io = disk_io_mode(k->cache, k->aio, &s->facts);
    json_object *a = json_object_new_object();
    json_object_object_add(a, "fdset-id", json_object_new_int(h->fdset));
    json_object_object_add(a, "opaque", json_object_new_string(file_node));
    int r = qmp_call(s->qmp, "add-fd", a, &fd, 1, QMP_TIMEOUT_DEFAULT, NULL, e);
    if (r < 0)
        return r;
    *stage = 2;
    r = qmp_call(s->qmp, "blockdev-add", blockdev_file(file_node, path, &io, k->discard, k->readonly), NULL, 0,
                 QMP_TIMEOUT_DEVICE, NULL, e);
    if (r == 0)
        r = qmp_call(s->qmp, "blockdev-add",
                     blockdev_format(disk_format_names[k->format], fmt_node, file_node, NULL, &io, k->discard, k->readonly),
                     NULL, 0, QMP_TIMEOUT_DEVICE, NULL, e);
    if (r < 0)
        return r;
    json_object *dev = json_object_new_object();
    json_object_object_add(dev, "driver", json_object_new_string("virtio-blk-pci"));
    json_object_object_add(dev, "id", json_object_new_string(h->id));
    json_object_object_add(dev, "drive", json_object_new_string(fmt_node));
    json_object_object_add(dev, "write-cache", json_object_new_string(io.write_cache ? "on" : "off"));
    if (k->serial)
        json_object_object_add(dev, "serial", json_object_new_string(k->serial));
    place(s, dev, h);
    return qmp_call(s->qmp, "device_add", dev, NULL, 0, QMP_TIMEOUT_DEVICE, NULL, e);
}

int hotplug_disk_attach(struct sup *s, json_object *spec, json_object **reply, struct qv_err *e)
{
    struct vm_disk k;
    int r = vm_disk_from_json(spec, &s->def, &k, e);
    if (r < 0)
        return qv_prefix(e, "%s: attach-disk: ", s->def.name);
    if (k.bus != BUS_VIRTIO || k.snapshot)
        r = qv_fail(e, -EINVAL, "%s: attach-disk: only virtio disks without snapshot can be hotplugged (bus %s)",
                    s->def.name, disk_bus_names[k.bus]);
    else if (find(s, k.file))
        r = qv_fail(e, -EBUSY, "%s: attach-disk: %s is attached already", s->def.name, k.file);
    int slot = r < 0 ? r : free_slot(s, e);
    _cleanup_close_ int fd = -1;
    if (slot >= 0 && (fd = open(k.file, (k.readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC)) < 0)
        slot = qv_failerr(e, -errno, "%s: attach-disk: %s", s->def.name, k.file);
    if (slot < 0) {
        vm_disk_free(&k);
        return slot;
    }
    struct hotplug *h = &s->hp[slot];
    h->kind = HOTPLUG_DISK;
    h->fdset = FDSET_BASE + slot;
    snprintf(h->file, sizeof(h->file), "%s", k.file);
    next_id(s, "disk", s->def.ndisks, h->id, sizeof(h->id));
    int stage = 1;
    r = disk_plug(s, h, &k, fd, &stage, e);
    vm_disk_free(&k);
    if (r < 0) {
        if (stage > 1)
            disk_undo(s, h, true);
        memset(h, 0, sizeof(*h));
        return qv_prefix(e, "%s: attach-disk: ", s->def.name);
    }
    h->used = true;
    hotplug_record(s);
    sup_log(s, "attached disk %s as %s", h->file, h->id);
    *reply = json_object_new_object();
    json_object_object_add(*reply, "id", json_object_new_string(h->id));
    return 0;
}

/* ---- NICs ---- */

/* A MAC no defined VM and no NIC of this one uses. */
static int pick_mac(struct sup *s, size_t index, char out[18], struct qv_err *e)
{
    for (unsigned attempt = 0; attempt < 1000; attempt++) {
        mac_generate(s->def.uuid, index, attempt, out);
        bool taken = vm_mac_in_use(s->paths, out, NULL);
        for (size_t i = 0; !taken && i < s->def.nnics; i++)
            taken = strcmp(s->def.nics[i].mac, out) == 0;
        for (int i = 0; !taken && i < HOTPLUG_MAX; i++)
            taken = s->hp[i].used && strcmp(s->hp[i].mac, out) == 0;
        if (!taken)
            return 0;
    }
    return qv_fail(e, -EEXIST, "%s: attach-nic: no free MAC address found; give one with --mac", s->def.name);
}

static int nic_plug_qmp(struct sup *s, struct hotplug *h, const struct vm_nic *n, const int *fds, int *stage,
                        struct qv_err *e)
{
    char netid[40], names[NETSETUP_MAX_QUEUES][32], list[NETSETUP_MAX_QUEUES * 32] = "";
    snprintf(netid, sizeof(netid), "%s-net", h->id);
    json_object *nd = json_object_new_object();
    json_object_object_add(nd, "id", json_object_new_string(netid));
    if (n->type == NIC_USER) {
        json_object_object_add(nd, "type", json_object_new_string("user"));
    } else {
        for (int q = 0; q < n->queues; q++) {
            snprintf(names[q], sizeof(names[q]), "%s-q%d", h->id, q);
            json_object *a = json_object_new_object();
            json_object_object_add(a, "fdname", json_object_new_string(names[q]));
            int r = qmp_call(s->qmp, "getfd", a, &fds[q], 1, QMP_TIMEOUT_DEFAULT, NULL, e);
            if (r < 0) {
                json_object_put(nd);
                return r;
            }
            *stage = 2 + q;
            snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", q ? ":" : "", names[q]);
        }
        json_object_object_add(nd, "type", json_object_new_string("tap"));
        json_object_object_add(nd, n->queues > 1 ? "fds" : "fd", json_object_new_string(list));
    }
    int r = qmp_call(s->qmp, "netdev_add", nd, NULL, 0, QMP_TIMEOUT_DEVICE, NULL, e);
    if (r < 0)
        return r;
    *stage = 100;
    json_object *dev = json_object_new_object();
    const char *driver = n->model == MODEL_VIRTIO ? "virtio-net-pci" : n->model == MODEL_E1000 ? "e1000" : "rtl8139";
    json_object_object_add(dev, "driver", json_object_new_string(driver));
    json_object_object_add(dev, "id", json_object_new_string(h->id));
    json_object_object_add(dev, "netdev", json_object_new_string(netid));
    json_object_object_add(dev, "mac", json_object_new_string(n->mac));
    if (n->queues > 1) {
        json_object_object_add(dev, "mq", json_object_new_boolean(true));
        json_object_object_add(dev, "vectors", json_object_new_int(2 * n->queues + 2));
    }
    place(s, dev, h);
    return qmp_call(s->qmp, "device_add", dev, NULL, 0, QMP_TIMEOUT_DEVICE, NULL, e);
}

static void nic_undo(struct sup *s, struct hotplug *h, const struct vm_nic *n, int stage)
{
    if (stage >= 100) {
        char netid[40];
        snprintf(netid, sizeof(netid), "%s-net", h->id);
        json_object *a = json_object_new_object();
        json_object_object_add(a, "id", json_object_new_string(netid));
        qmp_call(s->qmp, "netdev_del", a, NULL, 0, QMP_TIMEOUT_DEVICE, NULL, NULL);
        return;     /* the netdev owned the fds */
    }
    for (int q = 0; q + 2 <= stage && q < n->queues; q++) {
        char name[32];
        snprintf(name, sizeof(name), "%s-q%d", h->id, q);
        json_object *a = json_object_new_object();
        json_object_object_add(a, "fdname", json_object_new_string(name));
        qmp_call(s->qmp, "closefd", a, NULL, 0, QMP_TIMEOUT_DEFAULT, NULL, NULL);
    }
}

int hotplug_nic_attach(struct sup *s, json_object *spec, json_object **reply, struct qv_err *e)
{
    struct vm_nic n;
    int r = vm_nic_from_json(spec, &s->def, &n, e);
    if (r < 0)
        return qv_prefix(e, "%s: attach-nic: ", s->def.name);
    if (n.type == NIC_USER && s->conf.private_network) {
        vm_nic_free(&n);
        return qv_fail(e, -EINVAL, "%s: attach-nic: a user-mode NIC needs the host's network, and this QEMU runs in "
                                   "a private network namespace (it had no user-mode NIC at start); attach a "
                                   "network or bridge NIC, or add the user NIC to the definition and restart",
                       s->def.name);
    }
    int slot = free_slot(s, e);
    if (slot < 0) {
        vm_nic_free(&n);
        return slot;
    }
    struct hotplug *h = &s->hp[slot];
    h->kind = HOTPLUG_NIC;
    h->nic_index = VM_MAX_NICS + (size_t)slot;
    if (n.mac[0] && (vm_mac_in_use(s->paths, n.mac, s->def.name) || find(s, n.mac))) {
        r = qv_fail(e, -EEXIST, "%s: attach-nic: MAC %s is in use", s->def.name, n.mac);
    } else if (!n.mac[0]) {
        r = pick_mac(s, h->nic_index, n.mac, e);
    }
    int fds[NETSETUP_MAX_QUEUES];
    int nfds = 0;
    if (r == 0 && n.type != NIC_USER) {
        r = vmnet_plug(s, &n, h->nic_index, fds, e);
        nfds = r == 0 ? n.queues : 0;
    }
    int stage = 1;
    if (r == 0) {
        next_id(s, "nic", s->def.nnics, h->id, sizeof(h->id));
        r = nic_plug_qmp(s, h, &n, fds, &stage, e);
    }
    for (int q = 0; q < nfds; q++)
        close(fds[q]);      /* QEMU holds its own copies now */
    if (r < 0) {
        nic_undo(s, h, &n, stage);
        if (nfds) {
            struct hotplug tmp = *h;
            net_nic_unplugged(s, &tmp);
        }
        memset(h, 0, sizeof(*h));
        vm_nic_free(&n);
        return qv_prefix(e, "%s: attach-nic: ", s->def.name);
    }
    h->used = true;
    snprintf(h->mac, sizeof(h->mac), "%s", n.mac);
    memcpy(h->tap, s->nics[h->nic_index].tap, sizeof(h->tap));
    memcpy(h->network, s->nics[h->nic_index].network, sizeof(h->network));
    h->nic = n;
    hotplug_record(s);
    sup_log(s, "attached NIC %s (%s%s%s) as %s", n.mac, nic_type_names[n.type], n.source ? " " : "", n.source ? n.source : "",
            h->id);
    *reply = json_object_new_object();
    json_object_object_add(*reply, "id", json_object_new_string(h->id));
    json_object_object_add(*reply, "mac", json_object_new_string(n.mac));
    if (h->tap[0])
        json_object_object_add(*reply, "tap", json_object_new_string(h->tap));
    return 0;
}

/* ---- removal, for disks and NICs ---- */

int hotplug_detach(struct sup *s, const char *key, enum hotplug_kind kind, unsigned client, struct qv_err *e)
{
    if (!key)   /* the request's "target", checked by ctl.c; never strcmp a NULL */
        return qv_fail(e, -EINVAL, "%s: detach: \"target\" must be a string", s->def.name);
    struct hotplug *h = find(s, key);
    if (!h || h->kind != kind)
        return qv_fail(e, -ENOENT, "%s: no hotplugged %s %s (devices of the definition go with --persistent, "
                                   "at the next start)", s->def.name, kind == HOTPLUG_DISK ? "disk" : "NIC", key);
    if (h->removing)
        return qv_fail(e, -EALREADY, "%s: %s is being removed already", s->def.name, h->id);
    json_object *a = json_object_new_object();
    json_object_object_add(a, "id", json_object_new_string(h->id));
    int r = qmp_call(s->qmp, "device_del", a, NULL, 0, QMP_TIMEOUT_DEVICE, NULL, e);
    if (r < 0)
        return qv_prefix(e, "%s: detaching %s: ", s->def.name, h->id);
    h->removing = true;
    h->waiting_client = client;
    h->deadline = monotonic_ms() + RELEASE_TIMEOUT_MS;
    sup_log(s, "detaching %s: waiting for the guest to release it", h->id);
    return 0;
}

static void released(struct sup *s, struct hotplug *h)
{
    sup_log(s, "the guest released %s", h->id);
    if (h->kind == HOTPLUG_DISK) {
        /* the event callback must not block: QEMU answers these in order */
        char node[48];
        snprintf(node, sizeof(node), "%s-fmt", h->id);
        json_object *a = json_object_new_object();
        json_object_object_add(a, "node-name", json_object_new_string(node));
        sup_qmp(s, "blockdev-del", a);
        snprintf(node, sizeof(node), "%s-file", h->id);
        a = json_object_new_object();
        json_object_object_add(a, "node-name", json_object_new_string(node));
        sup_qmp(s, "blockdev-del", a);
        a = json_object_new_object();
        json_object_object_add(a, "fdset-id", json_object_new_int(h->fdset));
        sup_qmp(s, "remove-fd", a);
    } else {
        json_object *a = json_object_new_object();
        char netid[40];
        snprintf(netid, sizeof(netid), "%s-net", h->id);
        json_object_object_add(a, "id", json_object_new_string(netid));
        sup_qmp(s, "netdev_del", a);
        net_nic_unplugged(s, h);
    }
    if (h->waiting_client)
        sup_reply_ok(s, h->waiting_client);
    hotplug_clear(h);
    hotplug_record(s);
}

void hotplug_device_deleted(struct sup *s, const char *device)
{
    if (!device)
        return;
    for (int i = 0; i < HOTPLUG_MAX; i++)
        if (s->hp[i].used && strcmp(s->hp[i].id, device) == 0)
            released(s, &s->hp[i]);
}

uint64_t hotplug_next_deadline(struct sup *s)
{
    uint64_t next = 0;
    for (int i = 0; i < HOTPLUG_MAX; i++)
        if (s->hp[i].used && s->hp[i].waiting_client && (!next || s->hp[i].deadline < next))
            next = s->hp[i].deadline;
    return next;
}

void hotplug_expire(struct sup *s, uint64_t now)
{
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        struct hotplug *h = &s->hp[i];
        if (!h->used || !h->waiting_client || now < h->deadline)
            continue;
        sup_reply_error(s, h->waiting_client, -ETIMEDOUT,
                        "%s: the guest did not release %s within %d s (it is still attached; removal completes if "
                        "the guest lets go later)", s->def.name, h->id, RELEASE_TIMEOUT_MS / 1000);
        h->waiting_client = 0;
    }
}
