/* attach-nic: a NIC plugged into a running VM. The host side first (a tap on its
 * bridge or network, its filter; a network with autostart is started as a child the
 * loop watches), then QEMU gets the tap fds (getfd), the netdev and the device on a
 * free slot (hotplug.c). */
#include <string.h>

#include "launcher/supervisor/hotplug_op.h"

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

/* The QMP part of an attach-nic, once the host side (tap fds) is ready. */
static void nic_queue_qmp(struct hotplug_op *op)
{
    struct sup *s = op->s;
    struct hotplug *h = op->h;
    const struct vm_nic *n = &op->nic;
    char netid[40], list[NETSETUP_MAX_QUEUES * 32] = "";
    snprintf(netid, sizeof(netid), "%s-net", h->id);
    json_object *nd = json_object_new_object();
    json_object_object_add(nd, "id", json_object_new_string(netid));
    if (n->type == NIC_USER) {
        json_object_object_add(nd, "type", json_object_new_string("user"));
    } else {
        for (int q = 0; q < op->nfds; q++) {
            char name[32];
            snprintf(name, sizeof(name), "%s-q%d", h->id, q);
            hop_step(op, "getfd", json_obj1("fdname", json_object_new_string(name)), op->fds[q], QMP_TIMEOUT_DEFAULT,
                    "closefd", json_obj1("fdname", json_object_new_string(name)));
            snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", q ? ":" : "", name);
        }
        json_object_object_add(nd, "type", json_object_new_string("tap"));
        json_object_object_add(nd, n->queues > 1 ? "fds" : "fd", json_object_new_string(list));
    }
    hop_step(op, "netdev_add", nd, -1, QMP_TIMEOUT_DEVICE, "netdev_del", json_obj1("id", json_object_new_string(netid)));
    op->todo[op->ntodo - 1].absorbs = true;     /* the netdev took the fds: netdev_del frees them */
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
    hop_place(s, dev, h);
    hop_step(op, "device_add", dev, -1, QMP_TIMEOUT_DEVICE, NULL, NULL);
    op->reply = json_object_new_object();
    json_object_object_add(op->reply, "id", json_object_new_string(h->id));
    json_object_object_add(op->reply, "mac", json_object_new_string(n->mac));
    if (s->nics[h->nic_index].tap[0])
        json_object_object_add(op->reply, "tap", json_object_new_string(s->nics[h->nic_index].tap));
    hop_advance(op);
}

/* Host side, then QMP. Fails only before anything was made. */
static int nic_plug_host(struct hotplug_op *op, struct qv_err *e)
{
    if (op->nic.type != NIC_USER) {
        int r = vmnet_plug(op->s, &op->nic, op->h->nic_index, op->fds, e);
        if (r < 0)
            return r;
        op->nfds = op->nic.queues;
        op->host_side = true;
    }
    nic_queue_qmp(op);
    return 0;
}

int hotplug_nic_attach(struct sup *s, json_object *spec, unsigned client, struct qv_err *e)
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
    int slot = hop_free_slot(s, e);
    if (slot < 0) {
        vm_nic_free(&n);
        return slot;
    }
    size_t nic_index = VM_MAX_NICS + (size_t)slot;
    if (n.mac[0] && (vm_mac_in_use(s->paths, n.mac, s->def.name) || hop_find(s, n.mac)))
        r = qv_fail(e, -EEXIST, "%s: attach-nic: MAC %s is in use", s->def.name, n.mac);
    else if (!n.mac[0])
        r = pick_mac(s, nic_index, n.mac, e);
    char net[72] = "";
    if (r == 0 && n.type == NIC_NETWORK)
        r = vmnet_needs_start(s, &n, net, sizeof(net), e);
    if (r < 0) {
        vm_nic_free(&n);
        return r;
    }
    struct hotplug *h = hop_claim(s, slot, HOTPLUG_NIC, "nic", s->def.nnics);
    h->nic_index = nic_index;
    snprintf(h->mac, sizeof(h->mac), "%s", n.mac);
    struct hotplug_op *op = hop_new(s, h, OP_ATTACH, client, "attach-nic");
    op->nic = n;
    if (net[0]) {
        /* the network starts as a child the loop watches; its exit continues here */
        r = net_starter_begin(s, &op->net, net, e);
        if (r == 0) {
            sup_log(s, "attach-nic %s: starting network %s (autostart)", h->id, net);
            return 0;
        }
    } else {
        r = nic_plug_host(op, e);
    }
    if (r < 0) {
        hop_free(op);
        hop_clear(h);
        return qv_prefix(e, "%s: attach-nic: ", s->def.name);
    }
    return 0;
}

/* SIGCHLD: a network start of an attach-nic may have ended. */
void hotplug_child_exited(struct sup *s)
{
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        struct hotplug_op *op = s->hp[i].op;
        struct qv_err e = {0};
        int r;
        if (!op || !net_starter_reap(s, &op->net, &r, &e))
            continue;
        if (r == 0)
            r = nic_plug_host(op, &e);
        if (r < 0) {
            op->err = e;
            qv_prefix(&op->err, "%s: ", op->h->id);
            op->rolling_back = true;
            hop_attach_failed(op);
        }
    }
}
