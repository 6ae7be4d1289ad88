/* Devices added to and removed from a running VM. The supervisor opens what QEMU
 * needs and passes the fd over QMP (add-fd for images, getfd for taps), so a
 * confined QEMU never opens a path itself. On q35 each device takes one of the
 * free pcie-root-ports kept for this; on pc it takes any free slot of pci.0.
 * Removal is finished (block nodes, fds, taps released) only when the guest has
 * let go of the device (DEVICE_DELETED).
 * Here: the slots, what state.json records of them, and the steps every attach and
 * removal runs (each undone in reverse when a later one fails); each kind's attach is
 * in hotplug_disk.c, hotplug_nic.c and hotplug_hostdev.c, the removal in
 * hotplug_release.c. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

struct hotplug *hop_claim(struct sup *s, int slot, enum hotplug_kind kind, const char *prefix, size_t first)
{
    struct hotplug *h = &s->hp[slot];
    hop_next_id(s, prefix, first, h->id, sizeof(h->id));   /* before the slot counts as used */
    h->used = h->pending = true;
    h->kind = kind;
    return h;
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

static void attach_done(struct hotplug_op *op);

static void op_finish(struct hotplug_op *op)
{
    struct sup *s = op->s;
    struct hotplug *h = op->h;
    switch (op->kind) {
    case OP_ATTACH:
        if (op->rolling_back)
            hop_attach_failed(op);
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

/* ---- the end of an attach ---- */

void hop_attach_failed(struct hotplug_op *op)
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
