/* cpu.pinning: each vCPU thread of QEMU on its host CPUs, every other QEMU thread (the
 * main loop, I/O and worker threads) on the emulator's (libvirt's <vcpupin> and
 * <emulatorpin>). Applied from query-cpus-fast's thread ids while QEMU is still in
 * prelaunch, and again when a supervisor takes over a running QEMU. Threads QEMU
 * creates later inherit the affinity of the thread that creates them: the main loop's,
 * so they stay on the emulator's CPUs. */
#include <dirent.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/supervisor/internal.h"

bool pinning_wanted(const struct vm_def *d)
{
    return d->cpu.pin_vcpus || d->cpu.pin_emulator;
}

/* `list` as a cpu_set_t; every CPU in it must be online here. */
static int host_set(const char *vm, const char *what, const char *list, const unsigned char *online,
                    const char *online_text, cpu_set_t *set, struct qv_err *e)
{
    unsigned char cpus[VM_HOST_CPUS_MAX];
    if (vm_cpulist_parse(list, VM_HOST_CPUS_MAX, cpus) < 0)
        return qv_fail(e, -EINVAL, "%s: %s: \"%s\" is not a host CPU list", vm, what, list);
    CPU_ZERO(set);
    for (int i = 0; i < VM_HOST_CPUS_MAX; i++) {
        if (!cpus[i])
            continue;
        if (!online[i])
            return qv_fail(e, -EINVAL, "%s: %s: host CPU %d is not online on this host (online: %s); change the "
                                       "definition's CPU list", vm, what, i, online_text);
        CPU_SET(i, set);
    }
    return 0;
}

static int set_affinity(const char *vm, const char *what, pid_t tid, const cpu_set_t *set, const char *list,
                        struct qv_err *e)
{
    if (sched_setaffinity(tid, sizeof(*set), set) == 0)
        return 0;
    return qv_failerr(e, -errno, "%s: %s: pinning QEMU thread %d to host CPUs %s", vm, what, (int)tid, list);
}

int pinning_apply(struct sup *s, json_object *cpus, struct qv_err *e)
{
    const struct vm_def *d = &s->def;
    if (!pinning_wanted(d))
        return 0;
    const char *vm = d->name;
    _cleanup_free_ char *online_text = NULL;
    unsigned char online[VM_HOST_CPUS_MAX];
    if (read_file("/sys/devices/system/cpu/online", 4096, &online_text, NULL) < 0)
        return qv_failerr(e, -errno, "%s: cpu.pinning: reading /sys/devices/system/cpu/online", vm);
    online_text[strcspn(online_text, "\n")] = '\0';
    if (vm_cpulist_parse(online_text, VM_HOST_CPUS_MAX, online) == -EINVAL)
        return qv_fail(e, -EINVAL, "%s: cpu.pinning: /sys/devices/system/cpu/online reads \"%s\"", vm, online_text);

    size_t n = json_object_is_type(cpus, json_type_array) ? json_object_array_length(cpus) : 0;
    _cleanup_free_ pid_t *vcpu_tids = qv_xcalloc(n + 1, sizeof(pid_t));
    int pinned = 0, others = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(cpus, i), *idx, *tid;
        if (!json_object_object_get_ex(c, "cpu-index", &idx) || !json_object_object_get_ex(c, "thread-id", &tid))
            return qv_fail(e, -EPROTO, "%s: cpu.pinning: query-cpus-fast gave no cpu-index or thread-id", vm);
        int64_t k = json_object_get_int64(idx);
        vcpu_tids[i] = (pid_t)json_object_get_int64(tid);
        if (!d->cpu.pin_vcpus || k < 0 || k >= d->cpu.npin_vcpus)
            continue;   /* a vCPU the definition gives no list */
        char what[48];
        snprintf(what, sizeof(what), "cpu.pinning.vcpus[%lld]", (long long)k);
        cpu_set_t set;
        int r = host_set(vm, what, d->cpu.pin_vcpus[k], online, online_text, &set, e);
        if (r == 0)
            r = set_affinity(vm, what, vcpu_tids[i], &set, d->cpu.pin_vcpus[k], e);
        if (r < 0)
            return r;
        pinned++;
    }
    if (d->cpu.pin_emulator) {
        cpu_set_t set;
        int r = host_set(vm, "cpu.pinning.emulator", d->cpu.pin_emulator, online, online_text, &set, e);
        if (r < 0)
            return r;
        char dir[64];
        snprintf(dir, sizeof(dir), "/proc/%d/task", (int)s->qemu_pid);
        DIR *tasks = opendir(dir);
        if (!tasks)
            return qv_failerr(e, -errno, "%s: cpu.pinning.emulator: %s", vm, dir);
        struct dirent *de;
        while ((de = readdir(tasks))) {
            pid_t tid = (pid_t)atoi(de->d_name);
            bool vcpu = false;
            for (size_t i = 0; i < n && !vcpu; i++)
                vcpu = vcpu_tids[i] == tid;
            if (tid <= 0 || vcpu)
                continue;
            /* a thread that ended meanwhile is no error */
            if (set_affinity(vm, "cpu.pinning.emulator", tid, &set, d->cpu.pin_emulator, e) < 0 && e->code != -ESRCH) {
                closedir(tasks);
                return e->code;
            }
            others++;
        }
        closedir(tasks);
    }
    sup_log(s, "pinned %d vCPU thread%s and %d other QEMU thread%s", pinned, pinned == 1 ? "" : "s", others,
            others == 1 ? "" : "s");
    return 0;
}
