/* stats: virsh domstats for qvisor. Each running VM's supervisor answers one `stats`
 * request; a VM that does not run has only its state. Printed as a table, as JSON, or
 * in Prometheus' text exposition format (for node_exporter's textfile collector):
 * every metric family once, with its HELP and TYPE, samples labelled vm="NAME". */
#include <stdio.h>
#include <string.h>

#include "launcher/cli/cli.h"

static int64_t get_i64(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : -1;
}

static json_object *get_arr(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_array) ? v : NULL;
}

static const char *get_str(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

static bool runs(const struct vm_runstate *rs, bool supervised)
{
    return supervised && (rs->state == VM_RUNNING || rs->state == VM_PAUSED);
}

/* One VM's statistics: the supervisor's reply when it runs, {"name", "state"} else. A
 * VM that still runs but whose supervisor could not answer gets {"name", "state",
 * "error"}, and `failed` the first such error (the others' statistics are still printed). */
static json_object *vm_stats_of(struct cli *c, const char *name, struct qv_err *failed)
{
    _cleanup_runstate_ struct vm_runstate rs = {0};
    bool supervised;
    vm_observe(&c->paths, name, &rs, &supervised);
    json_object *reply = NULL;
    struct qv_err ce = {0};
    if (runs(&rs, supervised)) {
        if (ctl_call(&c->paths, name, ctl_request("stats"), 10000, &reply, &ce) == 0)
            return reply;
        /* it stopped meanwhile: its state is the answer, and no error */
        runstate_free(&rs);
        vm_observe(&c->paths, name, &rs, &supervised);
        if (!runs(&rs, supervised))
            ce.code = 0;
    }
    reply = json_object_new_object();
    json_object_object_add(reply, "name", json_object_new_string(name));
    json_object_object_add(reply, "state", json_object_new_string(vm_state_names[rs.state]));
    if (ce.code) {
        if (strncmp(ce.msg, name, strlen(name)) != 0 || ce.msg[strlen(name)] != ':')
            qv_prefix(&ce, "%s: ", name);
        qv_prefix(&ce, "stats: ");
        json_object_object_add(reply, "error", json_object_new_string(ce.msg));
        if (!failed->code)
            *failed = ce;
    }
    return reply;
}

/* ---- Prometheus ---- */
struct metric {
    const char *name, *type, *help;
    const char *list;           /* the array it is read from; NULL: the VM's object */
    const char *obj, *key;      /* the value: list item's (or VM's obj's) key */
    const char *label;          /* the list item's label: vcpu, disk, nic */
    double scale;               /* 1e-9: ns to seconds, 1e-3: ms to seconds */
};

static const struct metric metrics[] = {
    {"qvisor_vm_uptime_seconds", "gauge", "Time since the guest started.", NULL, NULL, "uptime_ms", NULL, 1e-3},
    {"qvisor_cpu_seconds_total", "counter", "CPU time of the VM's QEMU process (all threads).", NULL, "cpu", "time_ns",
     NULL, 1e-9},
    {"qvisor_vcpu_seconds_total", "counter", "CPU time of one vCPU thread.", "vcpus", NULL, "time_ns", "vcpu", 1e-9},
    {"qvisor_memory_size_bytes", "gauge", "Guest RAM as defined.", NULL, "memory", "size", NULL, 1},
    {"qvisor_memory_rss_bytes", "gauge", "Resident memory of the VM's QEMU process.", NULL, "memory", "rss", NULL, 1},
    {"qvisor_memory_balloon_actual_bytes", "gauge", "Guest RAM the balloon leaves to the guest (VMs with a balloon).",
     NULL, "memory", "balloon_actual", NULL, 1},
    {"qvisor_disk_read_requests_total", "counter", "Read requests a disk completed.", "disks", NULL, "rd_reqs", "disk",
     1},
    {"qvisor_disk_read_bytes_total", "counter", "Bytes read from a disk.", "disks", NULL, "rd_bytes", "disk", 1},
    {"qvisor_disk_write_requests_total", "counter", "Write requests a disk completed.", "disks", NULL, "wr_reqs", "disk",
     1},
    {"qvisor_disk_write_bytes_total", "counter", "Bytes written to a disk.", "disks", NULL, "wr_bytes", "disk", 1},
    {"qvisor_disk_flush_requests_total", "counter", "Flush requests a disk completed.", "disks", NULL, "flush_reqs",
     "disk", 1},
    {"qvisor_disk_read_seconds_total", "counter", "Time spent on a disk's reads.", "disks", NULL, "rd_total_time_ns",
     "disk", 1e-9},
    {"qvisor_disk_write_seconds_total", "counter", "Time spent on a disk's writes.", "disks", NULL, "wr_total_time_ns",
     "disk", 1e-9},
    {"qvisor_disk_flush_seconds_total", "counter", "Time spent on a disk's flushes.", "disks", NULL,
     "flush_total_time_ns", "disk", 1e-9},
    {"qvisor_nic_receive_bytes_total", "counter", "Bytes the guest received on a NIC.", "nics", NULL, "rx_bytes", "nic",
     1},
    {"qvisor_nic_receive_packets_total", "counter", "Packets the guest received on a NIC.", "nics", NULL, "rx_packets",
     "nic", 1},
    {"qvisor_nic_receive_drops_total", "counter", "Packets for the guest dropped on a NIC's host side.", "nics", NULL,
     "rx_drops", "nic", 1},
    {"qvisor_nic_transmit_bytes_total", "counter", "Bytes the guest sent on a NIC.", "nics", NULL, "tx_bytes", "nic", 1},
    {"qvisor_nic_transmit_packets_total", "counter", "Packets the guest sent on a NIC.", "nics", NULL, "tx_packets",
     "nic", 1},
    {"qvisor_nic_transmit_drops_total", "counter", "Packets from the guest dropped on a NIC's host side.", "nics", NULL,
     "tx_drops", "nic", 1},
};

/* A label value as the exposition format wants it: \, " and newline escaped. */
static void put_label(const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            printf("\\%c", *v);
        else if (*v == '\n')
            printf("\\n");
        else
            putchar(*v);
    }
}

static void put_sample(const struct metric *m, const char *vm, const char *item, int64_t raw)
{
    if (raw < 0)
        return;     /* the host could not say (a thread or tap gone meanwhile): no sample */
    printf("%s{vm=\"", m->name);
    put_label(vm);
    if (item) {
        printf("\",%s=\"", m->label);
        put_label(item);
    }
    printf("\"} %.9g\n", (double)raw * m->scale);
}

static void print_prometheus(json_object *vms)
{
    size_t n = json_object_array_length(vms);
    printf("# HELP qvisor_vm_up Whether the VM runs (1, also paused) or not (0).\n# TYPE qvisor_vm_up gauge\n");
    for (size_t i = 0; i < n; i++) {
        json_object *vm = json_object_array_get_idx(vms, i);
        const char *state = get_str(vm, "state");
        printf("qvisor_vm_up{vm=\"");
        put_label(get_str(vm, "name"));
        printf("\",state=\"%s\"} %d\n", state, get_arr(vm, "vcpus") ? 1 : 0);
    }
    for (size_t k = 0; k < ARRAY_SIZE(metrics); k++) {
        const struct metric *m = &metrics[k];
        printf("# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, m->type);
        for (size_t i = 0; i < n; i++) {
            json_object *vm = json_object_array_get_idx(vms, i), *o;
            const char *name = get_str(vm, "name");
            if (!m->list) {
                if (!get_arr(vm, "vcpus"))
                    continue;   /* not running: no samples but vm_up */
                o = vm;
                if (m->obj && !json_object_object_get_ex(vm, m->obj, &o))
                    continue;
                put_sample(m, name, NULL, get_i64(o, m->key));
                continue;
            }
            json_object *arr = get_arr(vm, m->list);
            for (size_t j = 0; arr && j < json_object_array_length(arr); j++) {
                json_object *it = json_object_array_get_idx(arr, j);
                char idx[24];
                const char *item = get_str(it, m->label);
                if (json_object_is_type(json_object_object_get(it, m->label), json_type_int)) {
                    snprintf(idx, sizeof(idx), "%lld", (long long)get_i64(it, m->label));
                    item = idx;
                }
                put_sample(m, name, item, get_i64(it, m->key));
            }
        }
    }
}

/* ---- the table ---- */
static void fmt_seconds(int64_t ns, char *out, size_t n)
{
    if (ns < 0)
        snprintf(out, n, "-");
    else
        snprintf(out, n, "%.2fs", (double)ns / 1e9);
}

static void fmt_bytes(int64_t v, char *out, size_t n)
{
    if (v < 0)
        snprintf(out, n, "-");
    else
        format_size((uint64_t)v, out, n);
}

static void print_table(json_object *vms)
{
    for (size_t i = 0; i < json_object_array_length(vms); i++) {
        json_object *vm = json_object_array_get_idx(vms, i), *o;
        printf("%s%s  %s\n", i ? "\n" : "", get_str(vm, "name"), get_str(vm, "state"));
        if (!get_arr(vm, "vcpus"))
            continue;
        char a[32], b[32], t[32];
        int64_t up = get_i64(vm, "uptime_ms");
        fmt_seconds(json_object_object_get_ex(vm, "cpu", &o) ? get_i64(o, "time_ns") : -1, t, sizeof(t));
        printf("  uptime %llds  cpu %s\n", (long long)(up > 0 ? up / 1000 : 0), t);
        if (json_object_object_get_ex(vm, "memory", &o)) {
            fmt_bytes(get_i64(o, "rss"), a, sizeof(a));
            fmt_bytes(get_i64(o, "size"), b, sizeof(b));
            printf("  memory %s resident, %s defined", a, b);
            if (get_i64(o, "balloon_actual") >= 0) {
                fmt_bytes(get_i64(o, "balloon_actual"), a, sizeof(a));
                printf(", %s with the balloon", a);
            }
            printf("\n");
        }
        json_object *arr = get_arr(vm, "vcpus");
        for (size_t j = 0; j < json_object_array_length(arr); j++) {
            json_object *c = json_object_array_get_idx(arr, j);
            fmt_seconds(get_i64(c, "time_ns"), t, sizeof(t));
            printf("  vcpu%-3lld %s\n", (long long)get_i64(c, "vcpu"), t);
        }
        arr = get_arr(vm, "disks");
        for (size_t j = 0; arr && j < json_object_array_length(arr); j++) {
            json_object *d = json_object_array_get_idx(arr, j);
            fmt_bytes(get_i64(d, "rd_bytes"), a, sizeof(a));
            fmt_bytes(get_i64(d, "wr_bytes"), b, sizeof(b));
            printf("  %-7s read %lld reqs %s, written %lld reqs %s, %lld flushes\n", get_str(d, "disk"),
                   (long long)get_i64(d, "rd_reqs"), a, (long long)get_i64(d, "wr_reqs"), b,
                   (long long)get_i64(d, "flush_reqs"));
        }
        arr = get_arr(vm, "nics");
        for (size_t j = 0; arr && j < json_object_array_length(arr); j++) {
            json_object *d = json_object_array_get_idx(arr, j);
            fmt_bytes(get_i64(d, "rx_bytes"), a, sizeof(a));
            fmt_bytes(get_i64(d, "tx_bytes"), b, sizeof(b));
            printf("  %-7s received %s (%lld packets, %lld dropped), sent %s (%lld packets, %lld dropped) on %s\n",
                   get_str(d, "nic"), a, (long long)get_i64(d, "rx_packets"), (long long)get_i64(d, "rx_drops"), b,
                   (long long)get_i64(d, "tx_packets"), (long long)get_i64(d, "tx_drops"), get_str(d, "tap"));
        }
    }
}

int cmd_stats(struct cli *c)
{
    _cleanup_strv_ struct strv names = {0};
    int r;
    if (c->npos) {
        for (int i = 0; i < c->npos; i++) {
            _cleanup_vm_def_ struct vm_def d = {0};
            if ((r = vm_load(&c->paths, c->pos[i], &d, &c->err)) < 0)
                return r;
            strv_push(&names, c->pos[i]);
        }
    } else if ((r = vm_list_names(&c->paths, &names, &c->err)) < 0) {
        return r;
    }
    _cleanup_json_ json_object *vms = json_object_new_array();
    struct qv_err failed = {0};
    for (size_t i = 0; i < names.n; i++)
        json_object_array_add(vms, vm_stats_of(c, names.v[i], &failed));
    if (cli_flag(c, "prometheus"))
        print_prometheus(vms);
    else if (c->json)
        cli_print_json(vms);
    else
        print_table(vms);
    if (failed.code) {
        c->err = failed;
        return failed.code;
    }
    return 0;
}
