/* The numbers a cgroup is given: the VM's limits written as v1 or v2 files (a file
 * the kernel lacks is a warning, a value it refuses an error), and the parsing of
 * limits.cpu. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "sandbox/internal.h"

static unsigned clampu(uint64_t v, unsigned lo, unsigned hi)
{
    return v < lo ? lo : v > hi ? hi : (unsigned)v;
}

struct writer {
    const char *dir;
    struct strv *warnings;
    struct qv_err *e;
};

/* Missing file: a warning (the controller or feature is absent). Refused value: an error. */
static int put(struct writer *w, const char *file, const char *fmt, ...) QV_PRINTF(3, 4);
static int put(struct writer *w, const char *file, const char *fmt, ...)
{
    char value[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    int r = cg_write(w->dir, file, value);
    if (r == -ENOENT) {
        strv_pushf(w->warnings, "cgroup: %s/%s does not exist; limit \"%s\" not applied", w->dir, file, value);
        return 1;
    }
    if (r < 0)
        return qv_failerr(w->e, r, "cgroup: writing \"%s\" to %s/%s", value, w->dir, file);
    return 0;
}

static int v2_limits(struct writer *w, unsigned ctls, const struct sandbox_cgroup_limits *l)
{
    int r = 0;
    if (ctls & (1u << CG_MEMORY) && l->memory_max) {
        if ((r = put(w, "memory.max", "%" PRIu64, l->memory_max)) < 0)
            return r;
        /* An OOM kill takes the whole VM, never half of QEMU's threads' owner. */
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/memory.oom.group", w->dir);
        if (access(path, F_OK) == 0 && (r = put(w, "memory.oom.group", "1")) < 0)
            return r;
    }
    if (ctls & (1u << CG_CPU)) {
        if (l->cpu_quota_us &&
            (r = put(w, "cpu.max", "%" PRIu64 " %" PRIu64, l->cpu_quota_us,
                     l->cpu_period_us ? l->cpu_period_us : 100000)) < 0)
            return r;
        if (l->cpu_weight && (r = put(w, "cpu.weight", "%u", clampu(l->cpu_weight, 1, 10000))) < 0)
            return r;
    }
    if (ctls & (1u << CG_PIDS) && l->pids_max && (r = put(w, "pids.max", "%" PRIu64, l->pids_max)) < 0)
        return r;
    if (ctls & (1u << CG_IO)) {
        if (l->io_weight) {
            char path[PATH_MAX];
            snprintf(path, sizeof(path), "%s/io.weight", w->dir);
            unsigned wt = clampu(l->io_weight, 1, 10000);
            /* io.weight comes with blk-iocost; with BFQ only io.bfq.weight exists. */
            if (access(path, F_OK) == 0)
                r = put(w, "io.weight", "default %u", wt);
            else
                r = put(w, "io.bfq.weight", "%u", clampu(wt, 1, 1000));
            if (r < 0)
                return r;
        }
        for (size_t i = 0; i < l->nio; i++) {
            const struct sandbox_io_limit *d = &l->io[i];
            struct buf b = {0};
            buf_printf(&b, "%u:%u", d->major, d->minor);
            if (d->rbps)
                buf_printf(&b, " rbps=%" PRIu64, d->rbps);
            if (d->wbps)
                buf_printf(&b, " wbps=%" PRIu64, d->wbps);
            if (d->riops)
                buf_printf(&b, " riops=%" PRIu64, d->riops);
            if (d->wiops)
                buf_printf(&b, " wiops=%" PRIu64, d->wiops);
            r = put(w, "io.max", "%s", b.p);
            buf_free(&b);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

static int v1_limits(struct writer *w, unsigned ctls, const struct sandbox_cgroup_limits *l)
{
    int r = 0;
    if (ctls & (1u << CG_MEMORY) && l->memory_max &&
        (r = put(w, "memory.limit_in_bytes", "%" PRIu64, l->memory_max)) < 0)
        return r;
    if (ctls & (1u << CG_CPU)) {
        if (l->cpu_quota_us) {
            if ((r = put(w, "cpu.cfs_period_us", "%" PRIu64, l->cpu_period_us ? l->cpu_period_us : 100000)) < 0 ||
                (r = put(w, "cpu.cfs_quota_us", "%" PRIu64, l->cpu_quota_us)) < 0)
                return r;
        }
        /* cgroup v2 weight 100 is v1's 1024 shares, as systemd converts it. */
        if (l->cpu_weight &&
            (r = put(w, "cpu.shares", "%u", clampu((uint64_t)l->cpu_weight * 1024 / 100, 2, 262144))) < 0)
            return r;
    }
    if (ctls & (1u << CG_PIDS) && l->pids_max && (r = put(w, "pids.max", "%" PRIu64, l->pids_max)) < 0)
        return r;
    if (ctls & (1u << CG_IO)) {
        if (l->io_weight) {
            char path[PATH_MAX];
            snprintf(path, sizeof(path), "%s/blkio.weight", w->dir);
            /* CFQ's blkio.weight is 10..1000 around 500; BFQ's is 1..1000 around 100. */
            if (access(path, F_OK) == 0)
                r = put(w, "blkio.weight", "%u", clampu((uint64_t)l->io_weight * 500 / 100, 10, 1000));
            else
                r = put(w, "blkio.bfq.weight", "%u", clampu(l->io_weight, 1, 1000));
            if (r < 0)
                return r;
        }
        for (size_t i = 0; i < l->nio; i++) {
            const struct sandbox_io_limit *d = &l->io[i];
            const struct { const char *file; uint64_t v; } t[] = {
                {"blkio.throttle.read_bps_device", d->rbps},
                {"blkio.throttle.write_bps_device", d->wbps},
                {"blkio.throttle.read_iops_device", d->riops},
                {"blkio.throttle.write_iops_device", d->wiops},
            };
            for (size_t k = 0; k < ARRAY_SIZE(t); k++)
                if (t[k].v && (r = put(w, t[k].file, "%u:%u %" PRIu64, d->major, d->minor, t[k].v)) < 0)
                    return r;
        }
    }
    return 0;
}

unsigned cg_wanted(const struct sandbox_cgroup_limits *l)
{
    unsigned m = 0;
    if (l->memory_max)
        m |= 1u << CG_MEMORY;
    if (l->cpu_quota_us || l->cpu_weight)
        m |= 1u << CG_CPU;
    if (l->pids_max)
        m |= 1u << CG_PIDS;
    if (l->io_weight || l->nio)
        m |= 1u << CG_IO;
    return m;
}

int cg_write_limits(int version, const char *dir, unsigned ctls, const struct sandbox_cgroup_limits *l,
                    struct strv *warnings, struct qv_err *e)
{
    struct writer w = {dir, warnings, e};
    return version == 2 ? v2_limits(&w, ctls, l) : v1_limits(&w, ctls, l);
}

/* ---- sizing -------------------------------------------------------------------------------- */

int sandbox_parse_cpu_quota(const char *s, uint64_t *quota_us, uint64_t *period_us, struct qv_err *e)
{
    if (strcmp(s, "max") == 0) {
        *quota_us = 0;
        *period_us = 100000;
        return 0;
    }
    char *end;
    errno = 0;
    double pct = strtod(s, &end);
    if (errno || end == s || strcmp(end, "%") != 0 || !isfinite(pct) || pct <= 0 || pct > 100000)
        return qv_fail(e, -EINVAL, "\"%s\" is not a CPU quota like \"150%%\" or \"max\"", s);
    *period_us = 100000;
    /* The kernel's smallest quota is 1 ms. */
    uint64_t q = (uint64_t)(pct * 1000.0 + 0.5);
    *quota_us = q < 1000 ? 1000 : q;
    return 0;
}

uint64_t sandbox_memory_overhead(uint64_t guest_ram, unsigned vcpus, bool tcg)
{
    const uint64_t mib = 1ull << 20;
    /* Heap, libraries and device state; page tables and the dirty bitmap grow
     * with RAM; each vCPU thread has its stack and KVM/TCG state; TCG's
     * translation buffer fills up to its size as the guest runs code. */
    uint64_t o = 256 * mib + guest_ram / 16 + (uint64_t)(vcpus ? vcpus : 1) * 32 * mib;
    if (tcg)
        o += 512 * mib;
    return o;
}
