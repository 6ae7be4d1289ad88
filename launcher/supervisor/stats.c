/* stats: what `virsh domstats` gives, for a running VM. The monitor answers for the
 * disks (query-blockstats) and the vCPU threads (query-cpus-fast); the host answers
 * for everything else, read from procfs and sysfs when the last reply is in: QEMU's
 * CPU time and resident memory, each vCPU thread's CPU time, each tap's counters; the
 * balloon's actual size comes from query-balloon. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/internal.h"

struct stats_op {
    struct sup *s;
    unsigned client;
    json_object *reply;
};

/* utime + stime of /proc/PID/stat or /proc/PID/task/TID/stat, in ns; -1 when unreadable. */
static int64_t proc_cpu_ns(const char *path)
{
    char buf[1024];
    if (read_file_small(path, buf, sizeof(buf)) < 0)
        return -1;
    const char *p = strrchr(buf, ')');     /* the command name may hold spaces */
    unsigned long long ut, st;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    long hz = sysconf(_SC_CLK_TCK);
    return (int64_t)((ut + st) * (1000000000ull / (unsigned long long)(hz > 0 ? hz : 100)));
}

/* VmRSS of /proc/PID/status in bytes; -1 when unreadable. */
static int64_t proc_rss(pid_t pid)
{
    char path[64], buf[4096] = "";   /* an open that fails leaves buf as it was */
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    if (read_file_small(path, buf, sizeof(buf)) < 0 && !buf[0])
        return -1;
    const char *p = strstr(buf, "\nVmRSS:");
    unsigned long long kb;
    return p && sscanf(p + 7, " %llu", &kb) == 1 ? (int64_t)kb * 1024 : -1;
}

static void add_i64(json_object *o, const char *key, int64_t v)
{
    json_object_object_add(o, key, json_object_new_int64(v));
}

static void add_tap_counters(json_object *o, const char *tap)
{
    /* the host's tap counts the other way round: what it transmits, the guest receives */
    static const char *const keys[][2] = {
        {"tx_bytes", "rx_bytes"}, {"tx_packets", "rx_packets"}, {"tx_dropped", "rx_drops"},
        {"rx_bytes", "tx_bytes"}, {"rx_packets", "tx_packets"}, {"rx_dropped", "tx_drops"},
    };
    for (size_t k = 0; k < ARRAY_SIZE(keys); k++) {
        char path[128], v[32];
        snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/%s", tap, keys[k][0]);
        add_i64(o, keys[k][1], read_file_line(path, v, sizeof(v)) >= 0 ? strtoll(v, NULL, 10) : -1);
    }
}

static const char *nic_id(struct sup *s, size_t i, char *buf, size_t n)
{
    if (i < s->def.nnics) {
        snprintf(buf, n, "nic%zu", i);
        return buf;
    }
    for (size_t h = 0; h < HOTPLUG_MAX; h++)
        if (s->hp[h].used && s->hp[h].kind == HOTPLUG_NIC && s->hp[h].nic_index == i)
            return s->hp[h].id;
    return NULL;
}

static json_object *nics_json(struct sup *s)
{
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < ARRAY_SIZE(s->nics); i++) {
        char buf[24];
        const char *id = nic_id(s, i, buf, sizeof(buf));
        if (!id || !s->nics[i].tap[0])
            continue;   /* user-mode NICs have no host side to count */
        json_object *o = json_object_new_object();
        json_object_object_add(o, "nic", json_object_new_string(id));
        json_object_object_add(o, "tap", json_object_new_string(s->nics[i].tap));
        add_tap_counters(o, s->nics[i].tap);
        json_object_array_add(arr, o);
    }
    return arr;
}

static void finish(struct stats_op *op)
{
    struct sup *s = op->s;
    json_object *r = op->reply;
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)s->qemu_pid);
    json_object *cpu = json_object_new_object();
    add_i64(cpu, "time_ns", proc_cpu_ns(path));
    json_object_object_add(r, "cpu", cpu);
    json_object *mem = json_object_new_object();
    add_i64(mem, "size", (int64_t)s->def.memory.bytes);
    add_i64(mem, "rss", proc_rss(s->qemu_pid));
    if (s->def.memory.balloon && s->tune.balloon_actual)
        add_i64(mem, "balloon_actual", (int64_t)s->tune.balloon_actual);
    json_object_object_add(r, "memory", mem);
    json_object_object_add(r, "nics", nics_json(s));
    sup_reply_json(s, op->client, r);
    json_object_put(r);
    free(op);
}

static bool failed(struct stats_op *op, const char *cmd, const struct qv_err *err)
{
    if (!err)
        return false;
    sup_reply_error(op->s, op->client, err->code, "%s: %s: %s", op->s->def.name, cmd, err->msg);
    json_object_put(op->reply);
    free(op);
    return true;
}

/* the balloon's size now (BALLOON_CHANGE only tells changes, and none after a reattach) */
static void on_balloon(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct stats_op *op = ctx;
    if (err)
        op->s->tune.balloon_actual = 0;     /* no balloon_actual rather than no statistics at all */
    else
        tuning_balloon_event(op->s, ret);
    finish(op);
}

static void on_cpus(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct stats_op *op = ctx;
    if (failed(op, "query-cpus-fast", err))
        return;
    json_object *vcpus = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(ret); i++) {
        json_object *c = json_object_array_get_idx(ret, i), *v;
        int64_t idx = json_object_object_get_ex(c, "cpu-index", &v) ? json_object_get_int64(v) : (int64_t)i;
        int64_t tid = json_object_object_get_ex(c, "thread-id", &v) ? json_object_get_int64(v) : 0;
        char path[96];
        snprintf(path, sizeof(path), "/proc/%d/task/%" PRId64 "/stat", (int)op->s->qemu_pid, tid);
        json_object *o = json_object_new_object();
        add_i64(o, "vcpu", idx);
        add_i64(o, "thread", tid);
        add_i64(o, "time_ns", tid > 0 ? proc_cpu_ns(path) : -1);
        json_object_array_add(vcpus, o);
    }
    json_object_object_add(op->reply, "vcpus", vcpus);
    op->s->tune.vcpus = (int)json_object_array_length(ret);
    if (!op->s->def.memory.balloon) {
        finish(op);
    } else if (qmp_send(op->s->qmp, "query-balloon", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_balloon, op) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -EIO, "QEMU's monitor is gone");
        failed(op, "query-balloon", &e);
    }
}

static void on_blockstats(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct stats_op *op = ctx;
    if (failed(op, "query-blockstats", err))
        return;
    json_object_object_add(op->reply, "disks", disk_stats_json(op->s, ret, NULL));
    if (qmp_send(op->s->qmp, "query-cpus-fast", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_cpus, op) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -EIO, "QEMU's monitor is gone");
        failed(op, "query-cpus-fast", &e);
    }
}

int vm_stats(struct sup *s, unsigned client, struct qv_err *e)
{
    struct stats_op *op = qv_xcalloc(1, sizeof(*op));
    op->s = s;
    op->client = client;
    op->reply = json_object_new_object();
    json_object_object_add(op->reply, "name", json_object_new_string(s->def.name));
    json_object_object_add(op->reply, "state", json_object_new_string(vm_state_names[s->rs.state]));
    uint64_t now = realtime_ms();
    add_i64(op->reply, "uptime_ms",
            s->rs.started_at_ms && now > s->rs.started_at_ms ? (int64_t)(now - s->rs.started_at_ms) : 0);
    if (qmp_send(s->qmp, "query-blockstats", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_blockstats, op) < 0) {
        json_object_put(op->reply);
        free(op);
        return qv_fail(e, -EIO, "%s: QEMU's monitor is gone", s->def.name);
    }
    return 0;
}
