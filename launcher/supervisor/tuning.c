/* A running VM's size, changed live, and where its display listens:
 *   setmem    the balloon's target (QMP balloon); the guest gives pages back as it inflates
 *   setvcpus  vCPUs plugged (device_add of the slot's type from query-hotpluggable-cpus) or
 *             unplugged (device_del: the guest ejects them; KVM only, see on_slots) between
 *             cpu.count and cpu.max;
 *             plugged ones are pinned as the boot vCPUs (cpu.pinning.vcpus may list up to
 *             cpu.max) and sit in the NUMA node the definition gives them (QEMU's slot
 *             props carry node-id)
 *   display   where the VNC server listens (query-vnc: an auto port is known only there)
 * A supervisor that takes over a running QEMU asks it for its vCPUs and the balloon's size;
 * the balloon's target, which QEMU does not tell, is recorded in state.json.
 * Everything goes through QMP callbacks; the reply reaches the client when QEMU answered. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/supervisor/internal.h"

#define SETMEM_MIN (16ull << 20)    /* memory.size's own floor */
/* state.json's record of the balloon's target: QEMU tells the balloon's size, never the
 * target it was given, and a successor needs it (status, a migration carries it) */
#define BALLOON_RECORD "balloon_target"

/* ---- balloon ---- */

static void record_balloon_target(struct sup *s, uint64_t bytes)
{
    s->tune.balloon_target = bytes;
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, BALLOON_RECORD, json_object_new_int64((int64_t)bytes));
    sup_save_state(s);
}

struct mem_op {
    struct sup *s;
    unsigned client;
    uint64_t target;
    bool carried;           /* from a migration's source: no client, logged */
};

static void on_balloon(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct mem_op *op = ctx;
    struct sup *s = op->s;
    if (err && op->carried) {
        sup_log(s, "warning: the source's balloon target %llu MiB could not be set here: %s",
                (unsigned long long)(op->target >> 20), err->msg);
    } else if (err) {
        sup_reply_error(s, op->client, err->code, "%s: balloon: %s", s->def.name, err->msg);
    } else if (op->carried) {
        record_balloon_target(s, op->target);
        sup_log(s, "balloon target set to %llu MiB, as on the source", (unsigned long long)(op->target >> 20));
    } else {
        record_balloon_target(s, op->target);
        sup_log(s, "balloon target set to %llu MiB", (unsigned long long)(op->target >> 20));
        json_object *r = json_object_new_object();
        json_object_object_add(r, "target", json_object_new_int64((int64_t)op->target));
        if (s->tune.balloon_actual)
            json_object_object_add(r, "actual", json_object_new_int64((int64_t)s->tune.balloon_actual));
        sup_reply_json(s, op->client, r);
        json_object_put(r);
    }
    free(op);
}

int tuning_setmem(struct sup *s, unsigned client, const char *size, struct qv_err *e)
{
    char max[32];
    format_size(s->def.memory.bytes, max, sizeof(max));
    if (!s->def.memory.balloon)
        return qv_fail(e, -ENOENT,
                       "%s has no balloon device (set \"memory\": {\"size\": \"%s\", \"balloon\": true} and restart it)",
                       s->def.name, max);
    uint64_t bytes;
    if (!size || parse_size(size, &bytes) < 0)
        return qv_fail(e, -EINVAL, "%s: setmem: \"%s\" is not a size like 512M or 2G", s->def.name, size ? size : "");
    if (bytes > s->def.memory.bytes)
        return qv_fail(e, -ERANGE, "%s: setmem %s: more than memory.size %s (the balloon only takes memory back; "
                       "a larger size needs a definition change and a restart)", s->def.name, size, max);
    if (bytes < SETMEM_MIN)
        return qv_fail(e, -ERANGE, "%s: setmem %s: less than 16M", s->def.name, size);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "value", json_object_new_int64((int64_t)bytes));
    struct mem_op *op = qv_xcalloc(1, sizeof(*op));
    *op = (struct mem_op){.s = s, .client = client, .target = bytes};
    if (qmp_send(s->qmp, "balloon", args, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_balloon, op) < 0) {
        free(op);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    return 0;
}

void tuning_balloon_carry(struct sup *s, uint64_t bytes)
{
    if (!s->def.memory.balloon || bytes > s->def.memory.bytes || bytes < SETMEM_MIN || !s->qmp)
        return;
    struct mem_op *op = qv_xcalloc(1, sizeof(*op));
    *op = (struct mem_op){.s = s, .target = bytes, .carried = true};
    if (qmp_send(s->qmp, "balloon", json_obj1("value", json_object_new_int64((int64_t)bytes)), NULL, 0,
                 QMP_TIMEOUT_DEFAULT, 0, on_balloon, op) < 0)
        free(op);
}

void tuning_balloon_event(struct sup *s, json_object *data)
{
    json_object *v;
    if (data && json_object_object_get_ex(data, "actual", &v))
        s->tune.balloon_actual = (uint64_t)json_object_get_int64(v);
}

/* ---- vCPUs ---- */

struct vcpu_slot {
    json_object *entry;     /* query-hotpluggable-cpus' element (borrowed) */
    int64_t key[3];         /* socket, core, thread: the order vCPUs are plugged in */
    int index;              /* its place in that order: the hotplugged device's id vcpuN */
    const char *qom;        /* NULL: free slot */
};

struct vcpu_op {
    struct sup *s;
    unsigned client;
    void (*done)(struct sup *s, const struct qv_err *err);     /* instead of a client's answer */
    int want, present, pending;
    bool removing;
    struct qv_err err;      /* the first failure */
};

static int slot_cmp(const void *a, const void *b)
{
    const struct vcpu_slot *x = a, *y = b;
    for (int i = 0; i < 3; i++)
        if (x->key[i] != y->key[i])
            return x->key[i] < y->key[i] ? -1 : 1;
    return 0;
}

static int64_t prop(json_object *props, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(props, k, &v) ? json_object_get_int64(v) : 0;
}

static void vcpu_reply(struct vcpu_op *op)
{
    struct sup *s = op->s;
    if (op->done) {
        void (*done)(struct sup *, const struct qv_err *) = op->done;
        struct qv_err err = op->err;
        free(op);
        done(s, err.code ? &err : NULL);
        return;
    }
    if (op->err.code) {
        sup_reply_error(s, op->client, op->err.code, "%s", op->err.msg);
    } else {
        json_object *r = json_object_new_object();
        json_object_object_add(r, "vcpus", json_object_new_int(op->want));
        json_object_object_add(r, "was", json_object_new_int(op->present));
        json_object_object_add(r, "removing", json_object_new_boolean(op->removing));
        sup_reply_json(s, op->client, r);
        json_object_put(r);
    }
    free(op);
}

/* The plugged vCPUs' threads, pinned as the boot vCPUs are (cpu.pinning.vcpus lists them
 * up to cpu.max); a vCPU thread is created by the main loop and starts on its CPUs. */
static void on_plugged_cpus(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct vcpu_op *op = ctx;
    struct qv_err e = {0};
    if (err)
        qv_fail(&op->err, err->code, "%s: setvcpus %d: plugged, but query-cpus-fast failed, so the new vCPUs are not "
                "pinned: %s", op->s->def.name, op->want, err->msg);
    else if (pinning_apply(op->s, ret, &e) < 0)
        qv_fail(&op->err, e.code, "setvcpus %d: plugged, but not pinned: %s", op->want, e.msg);
    vcpu_reply(op);
}

static void vcpu_done(struct vcpu_op *op)
{
    struct sup *s = op->s;
    if (!op->err.code && !op->removing && op->want > op->present && s->def.cpu.pin_vcpus) {
        if (s->qmp && qmp_send(s->qmp, "query-cpus-fast", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_plugged_cpus, op) == 0)
            return;
        qv_fail(&op->err, -EIO, "%s: setvcpus %d: plugged, but not pinned: QEMU's monitor is gone", s->def.name,
                op->want);
    }
    vcpu_reply(op);
}

static void on_vcpu_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct vcpu_op *op = ctx;
    if (err && !op->err.code)
        qv_fail(&op->err, err->code, "%s: setvcpus %d: %s", op->s->def.name, op->want, err->msg);
    else if (!err && !op->removing)
        op->s->tune.vcpus++;
    if (--op->pending == 0)
        vcpu_done(op);
}

static void vcpu_send(struct vcpu_op *op, const char *cmd, json_object *args)
{
    op->pending++;
    if (qmp_send(op->s->qmp, cmd, args, NULL, 0, QMP_TIMEOUT_DEVICE, 0, on_vcpu_step, op) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -EIO, "QEMU's monitor is gone");
        on_vcpu_step(op, NULL, &e);
    }
}

static void on_slots(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct vcpu_op *op = ctx;
    struct sup *s = op->s;
    if (err) {
        qv_fail(&op->err, err->code, "%s: query-hotpluggable-cpus: %s", s->def.name, err->msg);
        vcpu_done(op);
        return;
    }
    size_t n = json_object_array_length(ret);
    struct vcpu_slot *slots = qv_xcalloc(n ? n : 1, sizeof(*slots));
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(ret, i), *props = NULL, *q;
        json_object_object_get_ex(c, "props", &props);
        slots[i] = (struct vcpu_slot){.entry = c, .key = {prop(props, "socket-id"), prop(props, "core-id"),
                                                          prop(props, "thread-id")}};
        if (json_object_object_get_ex(c, "qom-path", &q))
            slots[i].qom = json_object_get_string(q);
        op->present += slots[i].qom != NULL;
    }
    qsort(slots, n, sizeof(*slots), slot_cmp);
    for (size_t i = 0; i < n; i++)
        slots[i].index = (int)i;
    s->tune.vcpus = op->present;
    op->pending = 1;        /* held until every command is queued */
    if (op->want > op->present) {
        int need = op->want - op->present;
        for (size_t i = 0; i < n && need > 0; i++) {
            if (slots[i].qom)
                continue;
            json_object *args = json_object_new_object(), *type, *props;
            json_object_object_get_ex(slots[i].entry, "type", &type);
            json_object_object_add(args, "driver", json_object_new_string(json_object_get_string(type)));
            char id[24];
            snprintf(id, sizeof(id), "vcpu%d", slots[i].index);
            json_object_object_add(args, "id", json_object_new_string(id));
            if (json_object_object_get_ex(slots[i].entry, "props", &props)) {
                json_object_object_foreach(props, k, v) json_object_object_add(args, k, json_object_get(v));
            }
            sup_log(s, "setvcpus: plugging %s", id);
            vcpu_send(op, "device_add", args);
            need--;
        }
    } else if (op->want < op->present) {
        int extra = op->present - op->want;
        static const char peripheral[] = "/machine/peripheral/";
        int removable = 0;
        for (size_t i = 0; i < n; i++)
            removable += slots[i].qom && str_startswith(slots[i].qom, peripheral);
        if (strcmp(s->rs.accel, "tcg") == 0) {
            /* QEMU 7.2 leaves an unplugged vCPU's TCG memory listener registered: the next
             * change of the guest's memory map (any PCI device added, even one QEMU refuses)
             * runs it on the freed vCPU and QEMU dies (SIGSEGV). KVM has no such listener. */
            qv_fail(&op->err, -EOPNOTSUPP, "%s: setvcpus %d: QEMU under TCG cannot unplug vCPUs safely (the guest's "
                    "next PCI hotplug would crash it); setvcpus %d --config takes effect at its next start",
                    s->def.name, op->want, op->want);
        } else if (removable < extra) {
            qv_fail(&op->err, -ERANGE, "%s: setvcpus %d: only %d of its %d vCPUs were plugged live; the %d it "
                    "started with stay", s->def.name, op->want, removable, op->present, op->present - removable);
        } else {
            op->removing = true;
            for (size_t i = n; i-- > 0 && extra > 0;) {
                if (!slots[i].qom || !str_startswith(slots[i].qom, peripheral))
                    continue;
                json_object *args = json_object_new_object();
                const char *id = slots[i].qom + strlen(peripheral);
                unsigned k;
                if (sscanf(id, "vcpu%u", &k) == 1 && k < 8 * sizeof(s->tune.unplugging))
                    s->tune.unplugging[k / 8] |= (uint8_t)(1u << (k % 8));
                json_object_object_add(args, "id", json_object_new_string(id));
                sup_log(s, "setvcpus: unplugging %s", slots[i].qom + strlen(peripheral));
                vcpu_send(op, "device_del", args);
                extra--;
            }
        }
    }
    free(slots);
    if (--op->pending == 0)     /* the hold: no vCPU of its own to count */
        vcpu_done(op);
}

static int setvcpus(struct sup *s, unsigned client, int count, void (*done)(struct sup *, const struct qv_err *),
                    struct qv_err *e);

int tuning_setvcpus(struct sup *s, unsigned client, int count, struct qv_err *e)
{
    return setvcpus(s, client, count, NULL, e);
}

int tuning_plug_vcpus(struct sup *s, int count, void (*done)(struct sup *s, const struct qv_err *err), struct qv_err *e)
{
    return setvcpus(s, 0, count, done, e);
}

static int setvcpus(struct sup *s, unsigned client, int count, void (*done)(struct sup *, const struct qv_err *),
                    struct qv_err *e)
{
    int max = s->def.cpu.max ? s->def.cpu.max : s->def.cpu.count;
    if (!s->def.cpu.max && count != s->def.cpu.count)
        return qv_fail(e, -ERANGE, "%s has no vCPU hotplug: cpu.count is %d and there is no cpu.max (set cpu.max "
                       "in its definition and restart it)", s->def.name, s->def.cpu.count);
    if (count > max)
        return qv_fail(e, -ERANGE, "%s: setvcpus %d: more than cpu.max %d", s->def.name, count, max);
    if (count < s->def.cpu.count)
        return qv_fail(e, -ERANGE, "%s: setvcpus %d: less than cpu.count %d (the vCPUs it starts with cannot be "
                       "unplugged)", s->def.name, count, s->def.cpu.count);
    struct vcpu_op *op = qv_xcalloc(1, sizeof(*op));
    *op = (struct vcpu_op){.s = s, .client = client, .want = count, .done = done};
    if (qmp_send(s->qmp, "query-hotpluggable-cpus", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_slots, op) < 0) {
        free(op);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    return 0;
}

void tuning_device_deleted(struct sup *s, const char *device, const char *path)
{
    static const char peripheral[] = "/machine/peripheral/";
    const char *id = device;
    if (!id && path && str_startswith(path, peripheral))
        id = path + strlen(peripheral);     /* vcpuN/lapic */
    unsigned n;
    int used = 0;
    if (!id || sscanf(id, "vcpu%u%n", &n, &used) != 1 || (id[used] && id[used] != '/') ||
        n >= 8 * sizeof(s->tune.unplugging) || !(s->tune.unplugging[n / 8] & (1u << (n % 8))))
        return;
    s->tune.unplugging[n / 8] &= (uint8_t)~(1u << (n % 8));
    if (s->tune.vcpus > 0)
        s->tune.vcpus--;
    sup_log(s, "vCPU vcpu%u unplugged", n);
}

/* ---- display ---- */

static void on_vnc(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct mem_op *op = ctx;     /* client only */
    struct sup *s = op->s;
    json_object *v;
    if (err) {
        sup_reply_error(s, op->client, err->code, "%s: query-vnc: %s", s->def.name, err->msg);
    } else if (!json_object_object_get_ex(ret, "enabled", &v) || !json_object_get_boolean(v)) {
        sup_reply_error(s, op->client, -ENOENT, "%s: QEMU's VNC server is off", s->def.name);
    } else {
        const char *host = json_object_object_get_ex(ret, "host", &v) ? json_object_get_string(v) : "";
        int port = json_object_object_get_ex(ret, "service", &v) ? atoi(json_object_get_string(v)) : 0;
        /* a wildcard listens everywhere: this host reaches it as localhost */
        if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
            host = "localhost";
        bool v6 = strchr(host, ':') != NULL;
        char uri[160];
        snprintf(uri, sizeof(uri), "vnc://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
        json_object *r = json_object_new_object();
        json_object_object_add(r, "type", json_object_new_string("vnc"));
        json_object_object_add(r, "host", json_object_new_string(host));
        json_object_object_add(r, "port", json_object_new_int(port));
        json_object_object_add(r, "display", json_object_new_int(port - 5900));
        json_object_object_add(r, "uri", json_object_new_string(uri));
        json_object_object_add(r, "password", json_object_new_boolean(s->def.graphics.password_secret != NULL));
        sup_reply_json(s, op->client, r);
        json_object_put(r);
    }
    free(op);
}

int tuning_display(struct sup *s, unsigned client, struct qv_err *e)
{
    if (s->def.graphics.kind != GRAPHICS_VNC)
        return qv_fail(e, -ENOENT, "%s has no display (graphics: none; set \"graphics\": {\"type\": \"vnc\"})",
                       s->def.name);
    struct mem_op *op = qv_xcalloc(1, sizeof(*op));
    *op = (struct mem_op){.s = s, .client = client};
    if (qmp_send(s->qmp, "query-vnc", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_vnc, op) < 0) {
        free(op);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    return 0;
}

json_object *tuning_status_json(struct sup *s)
{
    if (!s->def.memory.balloon || !s->tune.balloon_actual)
        return NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "actual", json_object_new_int64((int64_t)s->tune.balloon_actual));
    if (s->tune.balloon_target)
        json_object_object_add(o, "target", json_object_new_int64((int64_t)s->tune.balloon_target));
    return o;
}

/* ---- what a new QEMU has, and what a successor learns ---- */

void tuning_new_qemu(struct sup *s)
{
    s->tune.balloon_actual = s->def.memory.balloon ? s->def.memory.bytes : 0;
    s->tune.balloon_target = 0;
    s->tune.vcpus = s->def.cpu.count;
    memset(s->tune.unplugging, 0, sizeof(s->tune.unplugging));
    if (s->rs.resources)
        json_object_object_del(s->rs.resources, BALLOON_RECORD);
}

void tuning_reattach(struct sup *s, json_object *cpus)
{
    memset(s->tune.unplugging, 0, sizeof(s->tune.unplugging));
    s->tune.vcpus = cpus ? (int)json_object_array_length(cpus) : 0;
    json_object *v;
    s->tune.balloon_target = s->rs.resources && json_object_object_get_ex(s->rs.resources, BALLOON_RECORD, &v)
                                 ? (uint64_t)json_object_get_int64(v) : 0;
    s->tune.balloon_actual = 0;
    if (s->tune.vcpus > s->def.cpu.count)
        sup_log(s, "QEMU runs %d vCPUs (%d plugged live)", s->tune.vcpus, s->tune.vcpus - s->def.cpu.count);
    if (!s->def.memory.balloon)
        return;
    /* at start-up, before the loop serves anyone: a take-over stays synchronous */
    json_object *ret = NULL;
    struct qv_err e = {0};
    if (qmp_call(s->qmp, "query-balloon", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &ret, &e) < 0)
        sup_log(s, "warning: query-balloon: %s (the balloon's size is not known until it changes)", e.msg);
    else
        tuning_balloon_event(s, ret);
    json_object_put(ret);
}
