/* Guest RAM on the command line: its backend objects (shared memfd, hugepages), the
 * guest NUMA nodes with a backend each, and the CPU's physical address width. */
#include "launcher/model/argv_internal.h"

/* memory-backend-memfd when the RAM must be shared (virtiofsd maps it) or on hugepages
 * (no hugetlbfs path to open inside the sandbox), else plain anonymous RAM. */
static json_object *ram_backend(const struct vm_def *d, const char *id, uint64_t size)
{
    bool memfd = d->memory.hugepage_size || vm_memory_shared(d);
    json_object *o = jobj();
    js(o, "qom-type", memfd ? "memory-backend-memfd" : "memory-backend-ram");
    js(o, "id", id);
    ji(o, "size", (int64_t)size);
    if (memfd) {
        jb(o, "share", vm_memory_shared(d));
        if (d->memory.hugepage_size) {
            jb(o, "hugetlb", true);
            ji(o, "hugetlbsize", (int64_t)d->memory.hugepage_size);
        }
    }
    return o;
}

bool argv_machine_ram_backend(const struct vm_def *d)
{
    return !d->nnuma && (d->memory.hugepage_size || vm_memory_shared(d));
}

void argv_add_memory(struct builder *b)
{
    const struct vm_def *d = b->d;
    char mem[32];
    snprintf(mem, sizeof(mem), "%lluM", (unsigned long long)(d->memory.bytes >> 20));
    arg2(b, "-m", mem);
    if (argv_machine_ram_backend(d))
        arg_json(b, "-object", ram_backend(d, "ram", d->memory.bytes));
    for (size_t i = 0; i < d->nnuma; i++) {
        char id[24];
        snprintf(id, sizeof(id), "ram-node%zu", i);
        arg_json(b, "-object", ram_backend(d, id, d->numa[i].bytes));
        /* -numa is not JSON: a list "0-1,4" is given as cpus=0-1,cpus=4 */
        struct buf n = {0};
        buf_printf(&n, "node,nodeid=%zu", i);
        const char *p = d->numa[i].cpus;
        while (*p) {
            size_t len = strcspn(p, ",");
            buf_printf(&n, ",cpus=%.*s", (int)len, p);
            p += len + (p[len] == ',');
        }
        buf_printf(&n, ",memdev=%s", id);
        arg2(b, "-numa", n.p);
        buf_free(&n);
    }
}

int argv_cpu_options(struct builder *b, enum vm_accel accel, const char *model, char *out, size_t outlen,
                     struct qv_err *e)
{
    const struct vm_def *d = b->d;
    switch (d->cpu.physaddr) {
    case PHYSADDR_DEFAULT:
        snprintf(out, outlen, "%s", model);
        break;
    case PHYSADDR_PASSTHROUGH:
        /* under TCG QEMU ignores host-phys-bits without a word: refuse instead */
        if (accel != ACCEL_KVM || strcmp(model, "host") != 0)
            return qv_fail(e, -EINVAL, "%s: cpu.maxphysaddr: \"passthrough\" needs cpu.model host under KVM, and this VM "
                                       "runs %s under %s (use mode emulate with bits)",
                           d->name, model, accel == ACCEL_KVM ? "KVM" : "TCG");
        if (d->cpu.physaddr_bits)
            snprintf(out, outlen, "%s,host-phys-bits=on,host-phys-bits-limit=%d", model, d->cpu.physaddr_bits);
        else
            snprintf(out, outlen, "%s,host-phys-bits=on", model);
        break;
    case PHYSADDR_EMULATE:
        snprintf(out, outlen, "%s,phys-bits=%d", model, d->cpu.physaddr_bits);
        break;
    }
    return 0;
}
