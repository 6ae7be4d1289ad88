/* The "limits" and "sandbox" sections of a VM definition. */
#include <stdlib.h>
#include <string.h>

#include "launcher/model/config.h"
#include "sandbox/sandbox.h"

static const char *const step_names[] = {"cgroup", "mount", "rlimits", "user", "caps", "seccomp", "network", "all", NULL};

void vm_confine_free(struct vm_def *d)
{
    free(d->limits.cpu);
    for (size_t i = 0; i < d->limits.nio; i++)
        free(d->limits.io[i].device);
    free(d->limits.io);
    free(d->sandbox.user);
    free(d->sandbox.group);
    free(d->sandbox.chroot);
    strv_free(&d->sandbox.extra_deny);
    strv_free(&d->sandbox.require);
}

static int size_field(struct jr *r, json_object *o, const char *key, uint64_t *out)
{
    char *s = NULL;
    int e = jr_string(r, o, key, false, &s);
    if (e < 0 || !s)
        return e;
    int pr = parse_size(s, out);
    free(s);
    if (pr < 0 || *out == 0) {
        size_t m = jr_key(r, key);
        e = jr_fail(r, "%s is not a size like \"3G\"", jr_show(json_object_object_get(o, key)));
        jr_pop(r, m);
    }
    return e;
}

static int parse_io(struct jr *r, json_object *o, struct vm_io_limit *io)
{
    static const char *const keys[] = {"device", "read_bps", "write_bps", "read_iops", "write_iops", NULL};
    int64_t v[4] = {0};
    static const char *const nums[] = {"read_bps", "write_bps", "read_iops", "write_iops"};
    int e;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "device", true, &io->device)) < 0)
        return e;
    if (io->device[0] != '/')
        return jr_key(r, "device"), jr_fail(r, "\"%s\" is not an absolute path to a block device", io->device);
    for (int i = 0; i < 4; i++)
        if ((e = jr_int(r, o, nums[i], 1, INT64_MAX, &v[i])) < 0)
            return e;
    io->read_bps = (uint64_t)v[0];
    io->write_bps = (uint64_t)v[1];
    io->read_iops = (uint64_t)v[2];
    io->write_iops = (uint64_t)v[3];
    return 0;
}

int vm_limits_parse(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *o = NULL, *io = NULL;
    int e = jr_object(r, root, "limits", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "limits");
    static const char *const keys[] = {"memory_max", "cpu", "cpu_weight", "pids", "io_weight", "io", NULL};
    int64_t cw = 0, iw = 0, pids = 0;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = size_field(r, o, "memory_max", &d->limits.memory_max)) < 0 ||
        (e = jr_string(r, o, "cpu", false, &d->limits.cpu)) < 0 || (e = jr_int(r, o, "cpu_weight", 1, 10000, &cw)) < 0 ||
        (e = jr_int(r, o, "pids", 16, 4194304, &pids)) < 0 || (e = jr_int(r, o, "io_weight", 1, 10000, &iw)) < 0 ||
        (e = jr_array(r, o, "io", &io)) < 0)
        return e;
    if (d->limits.memory_max) {
        /* The limit holds QEMU and the guest RAM it touches; below QEMU's own overhead
         * (the start path's default adds the same to guest RAM) QEMU is OOM-killed
         * before the guest runs. Under "auto" the smaller KVM figure applies. */
        uint64_t mib = 1ull << 20;
        uint64_t need = sandbox_memory_overhead(d->memory.bytes, (unsigned)d->cpu.count, d->accel == ACCEL_TCG);
        need = (need + mib - 1) / mib * mib;
        if (d->limits.memory_max < need) {
            char ram[32], min[32];
            format_size(d->memory.bytes, ram, sizeof(ram));
            format_size(need, min, sizeof(min));
            return jr_key(r, "memory_max"),
                   jr_fail(r, "%s is less than QEMU itself needs beside %s of guest memory and %d vCPU%s%s "
                              "(at least \"%s\")", jr_show(json_object_object_get(o, "memory_max")), ram,
                           d->cpu.count, d->cpu.count == 1 ? "" : "s", d->accel == ACCEL_TCG ? " under TCG" : "", min);
        }
    }
    d->limits.cpu_weight = (int)cw;
    d->limits.io_weight = (int)iw;
    d->limits.pids = pids;
    if (d->limits.cpu) {
        uint64_t q, p;
        struct qv_err pe = {0};
        if (sandbox_parse_cpu_quota(d->limits.cpu, &q, &p, &pe) < 0)
            return jr_key(r, "cpu"), jr_fail(r, "\"%s\" is not a share of CPUs like \"150%%\"", d->limits.cpu);
    }
    if (io) {
        size_t mi = jr_key(r, "io");
        d->limits.nio = json_object_array_length(io);
        d->limits.io = qv_xcalloc(d->limits.nio, sizeof(*d->limits.io));
        for (size_t i = 0; i < d->limits.nio; i++) {
            json_object *item = json_object_array_get_idx(io, i);
            size_t mk = jr_index(r, i);
            if ((e = jr_expect(r, item, json_type_object)) < 0 || (e = parse_io(r, item, &d->limits.io[i])) < 0)
                return e;
            jr_pop(r, mk);
        }
        jr_pop(r, mi);
    }
    jr_pop(r, m);
    return 0;
}

static bool user_name_valid(const char *s)
{
    return strcmp(s, "dynamic") == 0 || (strlen(s) <= 32 && strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_-.") == strlen(s) &&
                                          s[0] != '-');
}

/* An array of strings each accepted by `ok`. */
static int string_list(struct jr *r, json_object *o, const char *key, bool (*ok)(const char *), const char *what,
                       struct strv *out)
{
    json_object *a = NULL;
    int e = jr_array(r, o, key, &a);
    if (e < 0 || !a)
        return e;
    size_t m = jr_key(r, key);
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *v = json_object_array_get_idx(a, i);
        size_t mi = jr_index(r, i);
        if ((e = jr_expect(r, v, json_type_string)) < 0)
            return e;
        if (!ok(json_object_get_string(v)))
            return jr_fail(r, "%s is not %s", jr_show(v), what);
        strv_push(out, json_object_get_string(v));
        jr_pop(r, mi);
    }
    jr_pop(r, m);
    return 0;
}

static bool step_name_valid(const char *s)
{
    return strv_contains(step_names, s);
}

static bool abs_path(const char *s)
{
    return s[0] == '/';
}

int vm_sandbox_parse(struct jr *r, json_object *root, struct vm_def *d)
{
    d->sandbox.seccomp = true;
    json_object *o = NULL;
    int e = jr_object(r, root, "sandbox", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "sandbox");
    static const char *const keys[] = {"user", "group", "seccomp", "coredump", "chroot", "extra_deny", "require", NULL};
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "user", false, &d->sandbox.user)) < 0 ||
        (e = jr_string(r, o, "group", false, &d->sandbox.group)) < 0 || (e = jr_bool(r, o, "seccomp", &d->sandbox.seccomp)) < 0 ||
        (e = jr_bool(r, o, "coredump", &d->sandbox.coredump)) < 0 || (e = jr_string(r, o, "chroot", false, &d->sandbox.chroot)) < 0 ||
        (e = string_list(r, o, "extra_deny", sandbox_syscall_known, "a system call known on this architecture",
                         &d->sandbox.extra_deny)) < 0 ||
        (e = string_list(r, o, "require", step_name_valid, "one of cgroup, mount, rlimits, user, caps, seccomp, all",
                         &d->sandbox.require)) < 0)
        return e;
    if (d->sandbox.user && !user_name_valid(d->sandbox.user))
        return jr_key(r, "user"), jr_fail(r, "\"%s\" is not \"dynamic\" or a user name", d->sandbox.user);
    if (d->sandbox.user && strcmp(d->sandbox.user, "dynamic") == 0) {
        free(d->sandbox.user);
        d->sandbox.user = NULL;
    }
    if (d->sandbox.group && !user_name_valid(d->sandbox.group))
        return jr_key(r, "group"), jr_fail(r, "\"%s\" is not a group name", d->sandbox.group);
    if (d->sandbox.chroot && !abs_path(d->sandbox.chroot))
        return jr_key(r, "chroot"), jr_fail(r, "\"%s\" is not an absolute path", d->sandbox.chroot);
    if (!d->sandbox.seccomp && (strv_contains((const char *const *)d->sandbox.require.v, "seccomp") ||
                                strv_contains((const char *const *)d->sandbox.require.v, "all")))
        return jr_key(r, "seccomp"), jr_fail(r, "false contradicts require");
    jr_pop(r, m);
    return 0;
}

static json_object *strv_json(const struct strv *s)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < s->n; i++)
        json_object_array_add(a, json_object_new_string(s->v[i]));
    return a;
}

void vm_confine_to_json(const struct vm_def *d, json_object *o)
{
    const struct vm_limits *l = &d->limits;
    json_object *lim = json_object_new_object();
    if (l->memory_max) {
        char size[32];
        format_size(l->memory_max, size, sizeof(size));
        json_object_object_add(lim, "memory_max", json_object_new_string(size));
    }
    if (l->cpu)
        json_object_object_add(lim, "cpu", json_object_new_string(l->cpu));
    if (l->cpu_weight)
        json_object_object_add(lim, "cpu_weight", json_object_new_int(l->cpu_weight));
    if (l->pids)
        json_object_object_add(lim, "pids", json_object_new_int64(l->pids));
    if (l->io_weight)
        json_object_object_add(lim, "io_weight", json_object_new_int(l->io_weight));
    if (l->nio) {
        json_object *a = json_object_new_array();
        for (size_t i = 0; i < l->nio; i++) {
            json_object *io = json_object_new_object();
            json_object_object_add(io, "device", json_object_new_string(l->io[i].device));
            const uint64_t v[] = {l->io[i].read_bps, l->io[i].write_bps, l->io[i].read_iops, l->io[i].write_iops};
            static const char *const k[] = {"read_bps", "write_bps", "read_iops", "write_iops"};
            for (int j = 0; j < 4; j++)
                if (v[j])
                    json_object_object_add(io, k[j], json_object_new_int64((int64_t)v[j]));
            json_object_array_add(a, io);
        }
        json_object_object_add(lim, "io", a);
    }
    json_object_object_add(o, "limits", lim);

    const struct vm_sandbox *s = &d->sandbox;
    json_object *sb = json_object_new_object();
    json_object_object_add(sb, "user", json_object_new_string(s->user ? s->user : "dynamic"));
    if (s->group)
        json_object_object_add(sb, "group", json_object_new_string(s->group));
    json_object_object_add(sb, "seccomp", json_object_new_boolean(s->seccomp));
    json_object_object_add(sb, "coredump", json_object_new_boolean(s->coredump));
    if (s->chroot)
        json_object_object_add(sb, "chroot", json_object_new_string(s->chroot));
    json_object_object_add(sb, "extra_deny", strv_json(&s->extra_deny));
    json_object_object_add(sb, "require", strv_json(&s->require));
    json_object_object_add(o, "sandbox", sb);
}

/* the supervisor's part of its unit: its heap, the console ring and log, its children
 * (virtiofsd, qemu-img) */
#define UNIT_SUPERVISOR_MEMORY (128ull << 20)
#define UNIT_SUPERVISOR_TASKS 64

uint64_t vm_unit_memory_max(const struct vm_def *d)
{
    uint64_t qemu = d->limits.memory_max ? d->limits.memory_max
                  : d->memory.bytes + sandbox_memory_overhead(d->memory.bytes, (unsigned)d->cpu.count,
                                                              d->accel != ACCEL_KVM);
    return qemu + UNIT_SUPERVISOR_MEMORY;
}

uint64_t vm_unit_tasks_max(const struct vm_def *d)
{
    uint64_t qemu = d->limits.pids ? (uint64_t)d->limits.pids : VM_DEFAULT_PIDS_MAX + (uint64_t)d->cpu.count;
    return qemu + UNIT_SUPERVISOR_TASKS;
}
