/* Tuning keys of a VM definition, as libvirt's <cputune>, <numa>, <maxphysaddr> and
 * <memoryBacking><hugepages> give them:
 *   "cpu": {"pinning": {"vcpus": ["0-1", "2"], "emulator": "0-3"},
 *           "maxphysaddr": {"mode": "passthrough" | "emulate", "bits": 42}}
 *   "memory": {"hugepages": "2M" | "1G" | true | false}
 *   "numa": [{"cpus": "0-1", "memory": "512M"}, ...]
 * CPU lists keep the text the user wrote (shown back as written); they are checked
 * here and read again where they are used (argv.c, the supervisor's pinning). */
#include <stdlib.h>
#include <string.h>

#include "launcher/model/config.h"

const char *const physaddr_mode_names[] = {"default", "passthrough", "emulate", NULL};

#define PHYS_BITS_MIN 32    /* QEMU: "phys-bits should be between 32 and 52" */
#define PHYS_BITS_MAX 52

int vm_cpulist_parse(const char *s, unsigned limit, unsigned char *set)
{
    memset(set, 0, limit);
    if (!*s)
        return -EINVAL;
    int r = 0;
    for (const char *p = s;;) {
        char *end;
        if (*p < '0' || *p > '9')
            return -EINVAL;
        unsigned long lo = strtoul(p, &end, 10), hi = lo;
        p = end;
        if (*p == '-') {
            if (p[1] < '0' || p[1] > '9')
                return -EINVAL;
            hi = strtoul(p + 1, &end, 10);
            p = end;
        }
        if (lo > hi)
            return -EINVAL;
        if (hi >= limit)
            r = -ERANGE;
        for (unsigned long i = lo; i <= hi && i < limit; i++)
            set[i] = 1;
        if (!*p)
            return r;
        if (*p != ',')
            return -EINVAL;
        p++;
    }
}

/* A host CPU list at key (inside the current path), into *out. */
static int host_cpulist(struct jr *r, json_object *v, char **out)
{
    if (!json_object_is_type(v, json_type_string))
        return jr_fail(r, "%s is not a host CPU list like \"0-3,6\"", jr_show(v));
    unsigned char set[VM_HOST_CPUS_MAX];
    int e = vm_cpulist_parse(json_object_get_string(v), VM_HOST_CPUS_MAX, set);
    if (e == -ERANGE)
        return jr_fail(r, "%s names a CPU above %d", jr_show(v), VM_HOST_CPUS_MAX - 1);
    if (e < 0)
        return jr_fail(r, "%s is not a host CPU list like \"0-3,6\"", jr_show(v));
    *out = qv_xstrdup(json_object_get_string(v));
    return 0;
}

static int parse_pinning(struct jr *r, json_object *cpu, struct vm_def *d)
{
    json_object *o = NULL;
    int e = jr_object(r, cpu, "pinning", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "pinning");
    static const char *const keys[] = {"vcpus", "emulator", NULL};
    json_object *vcpus = NULL, *emu = NULL;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_array(r, o, "vcpus", &vcpus)) < 0)
        return e;
    if (vcpus) {
        size_t mv = jr_key(r, "vcpus");
        size_t n = json_object_array_length(vcpus);
        /* with cpu.max, the vCPUs setvcpus plugs may have theirs too (vCPUs count..max-1) */
        if (d->cpu.max && (n < (size_t)d->cpu.count || n > (size_t)d->cpu.max))
            return jr_fail(r, "%zu CPU lists for %d vCPUs and cpu.max %d (one list per vCPU, %d to %d of them)", n,
                           d->cpu.count, d->cpu.max, d->cpu.count, d->cpu.max);
        if (!d->cpu.max && n != (size_t)d->cpu.count)
            return jr_fail(r, "%zu CPU lists for %d vCPUs (one list per vCPU)", n, d->cpu.count);
        d->cpu.pin_vcpus = qv_xcalloc(n, sizeof(char *));
        d->cpu.npin_vcpus = (int)n;
        for (size_t i = 0; i < n; i++) {
            size_t mi = jr_index(r, i);
            if ((e = host_cpulist(r, json_object_array_get_idx(vcpus, i), &d->cpu.pin_vcpus[i])) < 0)
                return e;
            jr_pop(r, mi);
        }
        jr_pop(r, mv);
    }
    if (json_object_object_get_ex(o, "emulator", &emu)) {
        size_t me = jr_key(r, "emulator");
        if ((e = host_cpulist(r, emu, &d->cpu.pin_emulator)) < 0)
            return e;
        jr_pop(r, me);
    }
    jr_pop(r, m);
    return 0;
}

static int parse_maxphysaddr(struct jr *r, json_object *cpu, struct vm_def *d)
{
    json_object *o = NULL;
    int e = jr_object(r, cpu, "maxphysaddr", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "maxphysaddr");
    static const char *const keys[] = {"mode", "bits", NULL};
    static const char *const modes[] = {"passthrough", "emulate", NULL};
    int mode = -1;
    int64_t bits = 0;
    if ((e = jr_only_keys(r, o, keys)) < 0)
        return e;
    if (!json_object_object_get_ex(o, "mode", NULL))
        return jr_fail(r, "needs \"mode\": passthrough (the host's width) or emulate (with bits)");
    if ((e = jr_enum(r, o, "mode", modes, &mode)) < 0 ||
        (e = jr_int(r, o, "bits", PHYS_BITS_MIN, PHYS_BITS_MAX, &bits)) < 0)
        return e;
    d->cpu.physaddr = mode == 0 ? PHYSADDR_PASSTHROUGH : PHYSADDR_EMULATE;
    d->cpu.physaddr_bits = (int)bits;
    if (d->cpu.physaddr == PHYSADDR_EMULATE && !bits)
        return jr_fail(r, "mode emulate needs \"bits\" (%d..%d)", PHYS_BITS_MIN, PHYS_BITS_MAX);
    /* QEMU reads the host's width only for -cpu host under KVM (libvirt: host-passthrough) */
    if (d->cpu.physaddr == PHYSADDR_PASSTHROUGH && d->cpu.model && strcmp(d->cpu.model, "host") != 0)
        return jr_key(r, "mode"), jr_fail(r, "\"passthrough\" needs cpu.model host, not \"%s\" (or use emulate with bits)",
                                          d->cpu.model);
    if (d->cpu.physaddr == PHYSADDR_PASSTHROUGH && d->accel == ACCEL_TCG)
        return jr_key(r, "mode"), jr_fail(r, "\"passthrough\" needs KVM, and this VM runs under TCG (use emulate with bits)");
    jr_pop(r, m);
    return 0;
}

int vm_cpu_tuning_parse(struct jr *r, json_object *cpu, struct vm_def *d)
{
    int e = parse_pinning(r, cpu, d);
    return e < 0 ? e : parse_maxphysaddr(r, cpu, d);
}

int vm_hugepages_parse(struct jr *r, json_object *mem, struct vm_def *d)
{
    json_object *v;
    d->memory.hugepage_size = 0;
    if (!json_object_object_get_ex(mem, "hugepages", &v))
        return 0;
    size_t m = jr_key(r, "hugepages");
    if (json_object_is_type(v, json_type_boolean)) {
        d->memory.hugepage_size = json_object_get_boolean(v) ? 2u << 20 : 0;
    } else if (json_object_is_type(v, json_type_string) && strcmp(json_object_get_string(v), "2M") == 0) {
        d->memory.hugepage_size = 2u << 20;
    } else if (json_object_is_type(v, json_type_string) && strcmp(json_object_get_string(v), "1G") == 0) {
        d->memory.hugepage_size = 1u << 30;
    } else {
        return jr_fail(r, "%s is not one of \"2M\", \"1G\", true (2M), false", jr_show(v));
    }
    jr_pop(r, m);
    return 0;
}

/* Node `index`; owner[v] is the node (+1) that holds vCPU v, 0 while none does. */
static int parse_numa_node(struct jr *r, json_object *o, size_t index, struct vm_numa_node *n, const struct vm_def *d,
                           unsigned char *owner)
{
    static const char *const keys[] = {"cpus", "memory", NULL};
    int e;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "cpus", true, &n->cpus)) < 0)
        return e;
    if (!json_object_object_get_ex(o, "memory", NULL))
        return jr_fail(r, "needs \"memory\" (its share of memory.size, like \"512M\")");
    if ((e = jr_size(r, o, "memory", 1, &n->bytes)) < 0)
        return e;
    size_t mc = jr_key(r, "cpus");
    unsigned char set[VM_MAX_VCPUS];
    int all = d->cpu.max ? d->cpu.max : d->cpu.count;
    e = vm_cpulist_parse(n->cpus, (unsigned)all, set);
    if (e == -ERANGE && d->cpu.max)
        return jr_fail(r, "\"%s\" names a vCPU the VM cannot have (cpu.max is %d: vCPUs 0-%d)", n->cpus,
                       d->cpu.max, d->cpu.max - 1);
    if (e == -ERANGE)
        return jr_fail(r, "\"%s\" names a vCPU the VM does not have (cpu.count is %d: vCPUs 0-%d)", n->cpus,
                       d->cpu.count, d->cpu.count - 1);
    if (e < 0)
        return jr_fail(r, "\"%s\" is not a vCPU list like \"0-1,4\"", n->cpus);
    for (int i = 0; i < all; i++) {
        if (!set[i])
            continue;
        if (owner[i])
            return jr_fail(r, "vCPU %d is already in numa[%d]", i, owner[i] - 1);
        owner[i] = (unsigned char)(index + 1);
    }
    jr_pop(r, mc);
    size_t mm = jr_key(r, "memory");
    if (n->bytes % (1u << 20))
        return jr_fail(r, "\"%s\" is not a whole number of MiB", json_object_get_string(json_object_object_get(o, "memory")));
    if (d->memory.hugepage_size && n->bytes % d->memory.hugepage_size)
        return jr_fail(r, "\"%s\" is not a multiple of the %s hugepages", json_object_get_string(json_object_object_get(o, "memory")),
                       d->memory.hugepage_size == (1u << 30) ? "1G" : "2M");
    jr_pop(r, mm);
    return 0;
}

int vm_numa_parse(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *arr = NULL;
    int e = jr_array(r, root, "numa", &arr);
    if (e < 0 || !arr)
        return e;
    size_t m = jr_key(r, "numa");
    size_t n = json_object_array_length(arr);
    if (n < 1 || n > VM_NUMA_MAX)
        return jr_fail(r, "%zu nodes: give 1 to %d", n, VM_NUMA_MAX);
    unsigned char owner[VM_MAX_VCPUS] = {0};
    d->numa = qv_xcalloc(n, sizeof(*d->numa));
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *item = json_object_array_get_idx(arr, i);
        size_t mi = jr_index(r, i);
        d->nnuma = i + 1;   /* so vm_def_free releases what was parsed so far */
        if ((e = jr_expect(r, item, json_type_object)) < 0 || (e = parse_numa_node(r, item, i, &d->numa[i], d, owner)) < 0)
            return e;
        total += d->numa[i].bytes;
        jr_pop(r, mi);
    }
    /* the vCPUs setvcpus may plug too: QEMU 7.2 calls a partial mapping obsolete and would
     * put them on node 0 */
    for (int c = 0; c < (d->cpu.max ? d->cpu.max : d->cpu.count); c++) {
        if (owner[c])
            continue;
        if (d->cpu.max)
            return jr_fail(r, "vCPU %d is in no node (each of the %d vCPUs up to cpu.max must be in exactly one)", c,
                           d->cpu.max);
        return jr_fail(r, "vCPU %d is in no node (each of the %d vCPUs must be in exactly one)", c, d->cpu.count);
    }
    if (total != d->memory.bytes) {
        char t[32], want[32];
        format_size(total, t, sizeof(t));
        format_size(d->memory.bytes, want, sizeof(want));
        return jr_fail(r, "the nodes hold %s together, and memory.size is %s (they must be equal)", t, want);
    }
    jr_pop(r, m);
    return 0;
}

void vm_tuning_cpu_to_json(const struct vm_def *d, json_object *cpu)
{
    if (d->cpu.pin_vcpus || d->cpu.pin_emulator) {
        json_object *p = json_object_new_object();
        if (d->cpu.pin_vcpus) {
            json_object *a = json_object_new_array();
            for (int i = 0; i < d->cpu.npin_vcpus; i++)
                json_object_array_add(a, json_object_new_string(d->cpu.pin_vcpus[i]));
            json_object_object_add(p, "vcpus", a);
        }
        if (d->cpu.pin_emulator)
            json_object_object_add(p, "emulator", json_object_new_string(d->cpu.pin_emulator));
        json_object_object_add(cpu, "pinning", p);
    }
    if (d->cpu.physaddr != PHYSADDR_DEFAULT) {
        json_object *a = json_object_new_object();
        json_object_object_add(a, "mode", json_object_new_string(physaddr_mode_names[d->cpu.physaddr]));
        if (d->cpu.physaddr_bits)
            json_object_object_add(a, "bits", json_object_new_int(d->cpu.physaddr_bits));
        json_object_object_add(cpu, "maxphysaddr", a);
    }
}

void vm_tuning_to_json(const struct vm_def *d, json_object *o)
{
    if (!d->nnuma)
        return;
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < d->nnuma; i++) {
        json_object *n = json_object_new_object();
        char size[32];
        format_size(d->numa[i].bytes, size, sizeof(size));
        json_object_object_add(n, "cpus", json_object_new_string(d->numa[i].cpus));
        json_object_object_add(n, "memory", json_object_new_string(size));
        json_object_array_add(a, n);
    }
    json_object_object_add(o, "numa", a);
}

void vm_tuning_free(struct vm_def *d)
{
    for (int i = 0; d->cpu.pin_vcpus && i < d->cpu.npin_vcpus; i++)
        free(d->cpu.pin_vcpus[i]);
    free(d->cpu.pin_vcpus);
    free(d->cpu.pin_emulator);
    for (size_t i = 0; i < d->nnuma; i++)
        free(d->numa[i].cpus);
    free(d->numa);
}
