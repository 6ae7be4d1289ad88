/* Devices added to and removed from a running VM. The supervisor opens what QEMU
 * needs and passes the fd over QMP (add-fd for images, getfd for taps), so a
 * confined QEMU never opens a path itself. On q35 each device takes one of the
 * free pcie-root-ports kept for this; on pc it takes any free slot of pci.0.
 * Removal is finished (block nodes, fds, taps released) only when the guest has
 * let go of the device (DEVICE_DELETED). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>

#include "launcher/supervisor/hotplug_op.h"


void hop_clear(struct hotplug *h)
{
    vm_nic_free(&h->nic);
    memset(h, 0, sizeof(*h));
}

struct hotplug *hop_find(struct sup *s, const char *key)
{
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        struct hotplug *h = &s->hp[i];
        if (h->used && (strcmp(h->id, key) == 0 || strcmp(h->file, key) == 0 || strcmp(h->mac, key) == 0))
            return h;
    }
    return NULL;
}

int hop_free_slot(struct sup *s, struct qv_err *e)
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
void hop_next_id(struct sup *s, const char *prefix, size_t first, char *out, size_t outlen)
{
    for (size_t n = first;; n++) {
        snprintf(out, outlen, "%s%zu", prefix, n);
        if (!hop_find(s, out))
            return;
    }
}

void hop_place(struct sup *s, json_object *dev, const struct hotplug *h)
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
        if (!h->used || h->pending)     /* an attach under way is recorded once it succeeded */
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(h->id));
        json_object_object_add(o, "kind", json_object_new_string(h->kind == HOTPLUG_DISK ? "disk"
                                                                   : h->kind == HOTPLUG_NIC ? "nic" : "hostdev"));
        json_object_object_add(o, "port", json_object_new_int(h->port));
        json_object_object_add(o, "fdset", json_object_new_int(h->fdset));
        json_object_object_add(o, "layers", json_object_new_int(h->nlayers));
        if (h->rbd) {
            json_object_object_add(o, "rbd", json_object_new_boolean(true));
            json_object_object_add(o, "rbd_key", json_object_new_boolean(h->rbd_key));
        }
        json_object_object_add(o, "file", json_object_new_string(h->file));
        if (h->kind == HOTPLUG_DISK) {
            json_object_object_add(o, "volume", json_object_new_string(h->volume));
            json_object_object_add(o, "format", json_object_new_string(disk_format_names[h->format]));
            json_object_object_add(o, "cache", json_object_new_int((int)h->cache));     /* enum disk_cache */
            json_object_object_add(o, "aio", json_object_new_int((int)h->aio));         /* enum disk_aio */
            json_object_object_add(o, "readonly", json_object_new_boolean(h->readonly));
            json_object_object_add(o, "discard", json_object_new_boolean(h->discard));
        }
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
        const char *kind = json_object_object_get_ex(o, "kind", &v) ? json_object_get_string(v) : "disk";
        h->kind = strcmp(kind, "nic") == 0 ? HOTPLUG_NIC : strcmp(kind, "hostdev") == 0 ? HOTPLUG_HOSTDEV : HOTPLUG_DISK;
        h->port = json_object_object_get_ex(o, "port", &v) ? json_object_get_int(v) : -1;
        h->fdset = json_object_object_get_ex(o, "fdset", &v) ? json_object_get_int(v) : -1;
        h->nlayers = json_object_object_get_ex(o, "layers", &v) ? json_object_get_int(v) : 0;
        h->rbd = json_object_object_get_ex(o, "rbd", &v) && json_object_get_boolean(v);
        h->rbd_key = json_object_object_get_ex(o, "rbd_key", &v) && json_object_get_boolean(v);
        if (h->nlayers < 0 || h->nlayers > STORAGE_CHAIN_MAX)
            h->nlayers = 0;
        if (json_object_object_get_ex(o, "file", &v))
            snprintf(h->file, sizeof(h->file), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "volume", &v))
            snprintf(h->volume, sizeof(h->volume), "%s", json_object_get_string(v));
        h->format = json_object_object_get_ex(o, "format", &v) && strcmp(json_object_get_string(v), "raw") == 0
                        ? FORMAT_RAW : FORMAT_QCOW2;
        int cache = json_object_object_get_ex(o, "cache", &v) ? json_object_get_int(v) : 0;
        int aio = json_object_object_get_ex(o, "aio", &v) ? json_object_get_int(v) : 0;
        h->cache = cache >= CACHE_NONE && cache <= CACHE_DIRECTSYNC ? (enum disk_cache)cache : CACHE_NONE;
        h->aio = aio >= AIO_AUTO && aio <= AIO_THREADS ? (enum disk_aio)aio : AIO_AUTO;
        h->readonly = json_object_object_get_ex(o, "readonly", &v) && json_object_get_boolean(v);
        h->discard = json_object_object_get_ex(o, "discard", &v) && json_object_get_boolean(v);
        if (json_object_object_get_ex(o, "mac", &v))
            snprintf(h->mac, sizeof(h->mac), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "tap", &v))
            snprintf(h->tap, sizeof(h->tap), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "network", &v))
            snprintf(h->network, sizeof(h->network), "%s", json_object_get_string(v));
        h->nic_index = json_object_object_get_ex(o, "nic_index", &v) ? (size_t)json_object_get_int(v) : 0;
    }
}

/* ---- operations: one small state machine per attach or removal ----
 *
 * Every QMP command of an operation is sent with qmp_send and the next one goes
 * out from the previous one's completion, so the supervisor's loop keeps serving
 * (status, console, stop, events) however long QEMU takes. A step that succeeded
 * leaves its undo behind; when a later step fails, the undos run in reverse,
 * each awaited, and only then does the client get its error. The slot (and its
 * pcie port) is reserved for the whole operation, so operations on different
 * devices may run side by side. */

static void qcmd_free(struct qcmd *c)
{
    if (c->args)
        json_object_put(c->args);
    *c = (struct qcmd){.fd = -1};
}

void hop_free(struct hotplug_op *op)
{
    for (size_t i = 0; i < OP_STEPS; i++) {
        qcmd_free(&op->todo[i]);
        qcmd_free(&op->undo[i]);
    }
    for (int i = 0; i < op->nfds; i++)
        if (op->fds[i] >= 0)
            close(op->fds[i]);
    net_starter_abort(&op->net);
    vm_nic_free(&op->nic);
    if (op->reply)
        json_object_put(op->reply);
    if (op->h && op->h->op == op)
        op->h->op = NULL;
    free(op);
}

struct hotplug_op *hop_new(struct sup *s, struct hotplug *h, enum op_kind kind, unsigned client,
                                 const char *what)
{
    struct hotplug_op *op = qv_xcalloc(1, sizeof(*op));
    op->s = s;
    op->h = h;
    op->kind = kind;
    op->client = client;
    op->net.child.out = -1;
    op->qemu_fd = -1;
    snprintf(op->what, sizeof(op->what), "%s", what);
    for (size_t i = 0; i < OP_STEPS; i++)
        op->todo[i].fd = op->undo[i].fd = -1;
    h->op = op;
    return op;
}

/* Queues a step and its undo (undo_cmd NULL: none). */
void hop_step(struct hotplug_op *op, const char *cmd, json_object *args, int fd, int timeout,
                    const char *undo_cmd, json_object *undo_args)
{
    if (op->ntodo >= OP_STEPS)
        abort();    /* the builders below stay far under it */
    op->todo[op->ntodo] = (struct qcmd){.cmd = cmd, .args = args, .fd = fd, .timeout = timeout};
    op->undo[op->ntodo] = (struct qcmd){.cmd = undo_cmd, .args = undo_args, .fd = -1, .timeout = QMP_TIMEOUT_DEVICE};
    op->ntodo++;
}

void hop_advance(struct hotplug_op *op);

static void on_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct hotplug_op *op = ctx;
    op->in_flight = false;
    if (op->rolling_back) {
        if (err)
            sup_log(op->s, "%s %s: undoing %s: %s", op->what, op->h->id, op->undo[op->undo_pos].cmd, err->msg);
    } else if (err) {
        op->err = *err;
        if (op->kind == OP_RELEASE) {
            /* the guest let go already: the rest of the clean-up still runs */
            sup_log(op->s, "removing %s: %s: %s", op->h->id, op->todo[op->done].cmd, err->msg);
            op->done++;
        } else {
            qv_prefix(&op->err, "%s: %s: ", op->todo[op->done].cmd, op->h->id);
            op->rolling_back = true;
            op->undo_pos = op->done;
        }
    } else {
        if (op->todo[op->done].absorbs)
            for (size_t i = 0; i < op->done; i++)
                qcmd_free(&op->undo[i]);
        if (op->todo[op->done].cancels)
            qcmd_free(&op->undo[op->todo[op->done].cancels - 1]);
        json_object *fd;
        if (ret && json_object_is_type(ret, json_type_object) && json_object_object_get_ex(ret, "fd", &fd))
            op->qemu_fd = json_object_get_int(fd);
        op->done++;
    }
    hop_advance(op);
}

static void op_finish(struct hotplug_op *op);

/* Sends the next command, or ends the operation. Called from completions, so it
 * must not block; a command that cannot be sent fails like one QEMU refused. */
void hop_advance(struct hotplug_op *op)
{
    struct sup *s = op->s;
    for (;;) {
        struct qcmd *c;
        if (op->rolling_back) {
            while (op->undo_pos > 0 && !op->undo[op->undo_pos - 1].cmd)
                op->undo_pos--;
            if (op->undo_pos == 0)
                break;
            op->undo_pos--;
            c = &op->undo[op->undo_pos];
        } else {
            if (op->done >= op->ntodo)
                break;
            c = &op->todo[op->done];
        }
        json_object *args = c->args;
        c->args = NULL;
        int r = -ECONNRESET;
        if (c->file_from_fd && args) {
            char path[40];
            snprintf(path, sizeof(path), "/proc/self/fd/%d", op->qemu_fd);
            json_object_object_add(args, "file", json_object_new_string(path));
        }
        if (s->qmp)
            r = qmp_send(s->qmp, c->cmd, args, c->fd >= 0 ? &c->fd : NULL, c->fd >= 0 ? 1 : 0, c->timeout, 0, on_step,
                         op);
        else if (args)
            json_object_put(args);
        if (r == 0) {
            op->in_flight = true;
            return;
        }
        struct qv_err e = {0};
        qv_fail(&e, r, "%s: cannot send %s to QEMU (monitor connection lost)", s->def.name, c->cmd);
        on_step(op, NULL, &e);
        return;
    }
    op_finish(op);
}

static void reply_to(struct sup *s, unsigned client, json_object *reply)
{
    if (client)
        sup_reply_json(s, client, reply);
}

static void attach_failed(struct hotplug_op *op);
static void attach_done(struct hotplug_op *op);

static void op_finish(struct hotplug_op *op)
{
    struct sup *s = op->s;
    struct hotplug *h = op->h;
    switch (op->kind) {
    case OP_ATTACH:
        if (op->rolling_back)
            attach_failed(op);
        else
            attach_done(op);
        return;
    case OP_DEVICE_DEL:
        if (op->rolling_back) {
            h->removing = false;
            if (op->client)
                sup_reply_error(s, op->client, op->err.code, "%s: detaching %s", s->def.name, op->err.msg);
        } else {
            /* the reply waits for DEVICE_DELETED */
            h->waiting_client = op->client;
            h->deadline = monotonic_ms() + RELEASE_TIMEOUT_MS;
            sup_log(s, "detaching %s: waiting for the guest to release it", h->id);
            if (h->released_early) {
                h->released_early = false;
                hop_free(op);
                hotplug_device_deleted(s, h->id);
                return;
            }
        }
        hop_free(op);
        return;
    case OP_RELEASE:
        hop_release_done(op);
        return;
    }
}

void hotplug_forget_all(struct sup *s)
{
    /* QEMU is gone and its devices, fdsets and taps with it; its monitor connection
     * was freed first, so no completion of an operation can come any more */
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        struct hotplug *h = &s->hp[i];
        if (!h->used)
            continue;
        unsigned client = h->op ? h->op->client : h->waiting_client;
        if (client)
            sup_reply_error(s, client, -ESRCH, "%s: QEMU exited before the change of %s was finished", s->def.name,
                            h->id[0] ? h->id : "a device");
        bool host_side = h->op ? h->op->host_side : h->kind == HOTPLUG_NIC;
        if (host_side)
            net_nic_unplugged(s, h);
        if (h->op)
            hop_free(h->op);
        hop_clear(h);
    }
}

/* ---- disks ---- */

/* Layer j (0: the top's backing) of slot's disk gets an fdset of its own: QEMU's
 * /dev/fdset/N picks by access mode, so two read-only layers cannot share one. */
int hop_layer_fdset(const struct hotplug *h, int j)
{
    return h->fdset + HOTPLUG_MAX * (j + 1);
}

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
    struct hotplug *h = &s->hp[slot];
    hop_next_id(s, "disk", s->def.ndisks, h->id, sizeof(h->id));   /* before the slot counts as used */
    h->used = h->pending = true;
    h->kind = HOTPLUG_DISK;
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
    struct hotplug *h = &s->hp[slot];
    hop_next_id(s, "nic", s->def.nnics, h->id, sizeof(h->id));     /* before the slot counts as used */
    h->used = h->pending = true;
    h->kind = HOTPLUG_NIC;
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
            attach_failed(op);
        }
    }
}

/* ---- the end of an attach ---- */

static void attach_failed(struct hotplug_op *op)
{
    struct sup *s = op->s;
    struct hotplug *h = op->h;
    if (op->host_side)
        net_nic_unplugged(s, h);
    sup_log(s, "%s %s failed: %s", op->what, h->id, op->err.msg);
    if (op->client)
        sup_reply_error(s, op->client, op->err.code, "%s: %s: %s", s->def.name, op->what, op->err.msg);
    hop_free(op);
    hop_clear(h);
}

static void attach_done(struct hotplug_op *op)
{
    struct sup *s = op->s;
    struct hotplug *h = op->h;
    h->pending = false;
    if (h->kind == HOTPLUG_NIC) {
        memcpy(h->tap, s->nics[h->nic_index].tap, sizeof(h->tap));
        memcpy(h->network, s->nics[h->nic_index].network, sizeof(h->network));
        h->nic = op->nic;
        memset(&op->nic, 0, sizeof(op->nic));
        sup_log(s, "attached NIC %s (%s%s%s) as %s", h->mac, nic_type_names[h->nic.type], h->nic.source ? " " : "",
                h->nic.source ? h->nic.source : "", h->id);
    } else {
        sup_log(s, "attached %s %s as %s", h->kind == HOTPLUG_DISK ? "disk" : "host device", h->file, h->id);
    }
    hotplug_record(s);
    reply_to(s, op->client, op->reply);
    hop_free(op);
}

uint64_t hotplug_next_deadline(struct sup *s)
{
    uint64_t next = 0;
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        const struct hotplug *h = &s->hp[i];
        uint64_t d = !h->used ? 0 : h->op ? h->op->net.child.deadline : h->waiting_client ? h->deadline : 0;
        if (d && (!next || d < next))
            next = d;
    }
    return next;
}

void hotplug_expire(struct sup *s, uint64_t now)
{
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        struct hotplug *h = &s->hp[i];
        if (!h->used)
            continue;
        if (h->op && h->op->net.child.pid > 0) {
            net_starter_expire(&h->op->net, now);   /* its exit (SIGCHLD) fails the attach */
            continue;
        }
        if (h->op || !h->waiting_client || now < h->deadline)
            continue;
        sup_reply_error(s, h->waiting_client, -ETIMEDOUT,
                        "%s: the guest did not release %s within %d s (it is still attached; removal completes if "
                        "the guest lets go later)", s->def.name, h->id, RELEASE_TIMEOUT_MS / 1000);
        h->waiting_client = 0;
    }
}
