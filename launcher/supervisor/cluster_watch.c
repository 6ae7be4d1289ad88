/* The Ceph clusters of a running VM's rbd disks, asked again now and then: QEMU's
 * network filter lets it reach the monitors and OSDs the cluster maps listed when the
 * VM started (or a disk was attached), and an OSD added since is not among them — the
 * guest's I/O to placement groups that move there would hang. Every
 * CLUSTER_WATCH_INTERVAL_MS (QVISOR_RBD_REFRESH_MS overrides it) the supervisor runs
 * `qvisor pool show POOL --addresses` for each pool in turn as a watched child (the
 * loop never waits on a cluster) and lets QEMU reach what is new. Addresses are only
 * added: one that left the map may come back, and the filter goes with QEMU anyway. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/internal.h"

#define CLUSTER_WATCH_INTERVAL_MS 60000
#define CLUSTER_WATCH_TIMEOUT_MS 40000      /* the CLI's own waits are bounded by RBD_TIMEOUT_S (10 s) per step */

static uint64_t interval_ms(void)
{
    const char *v = getenv("QVISOR_RBD_REFRESH_MS");
    char *end;
    unsigned long long ms = v ? strtoull(v, &end, 10) : 0;
    return v && *v && !*end && ms >= 100 && ms <= 86400000ULL ? ms : CLUSTER_WATCH_INTERVAL_MS;
}

/* The qvisor pools of the VM's rbd disks now (the definition's and the attached ones). */
static void vm_rbd_pools(struct sup *s, struct strv *pools)
{
    char pool[160];
    for (size_t i = 0; i < s->def.ndisks; i++) {
        const struct vm_disk *k = &s->def.disks[i];
        if (k->rbd && k->rbd->pool_name && !strv_contains((const char *const *)pools->v, k->rbd->pool_name))
            strv_push(pools, k->rbd->pool_name);
    }
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        const struct hotplug *h = &s->hp[i];
        if (!h->used || h->kind != HOTPLUG_DISK || !h->rbd || !h->volume[0])
            continue;
        snprintf(pool, sizeof(pool), "%s", h->volume);
        char *slash = strchr(pool, '/');
        if (slash)
            *slash = '\0';
        if (!strv_contains((const char *const *)pools->v, pool))
            strv_push(pools, pool);
    }
}

static bool watching(struct sup *s)
{
    return s->conf.cluster_filter && s->qemu_pid > 0;
}

static void ask(struct sup *s, const char *pool)
{
    struct cluster_watch *w = &s->cluster_watch;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) {
        sup_log(s, "warning: Ceph cluster map of pool %s: finding qvisor itself: %s", pool, strerror(errno));
        return;
    }
    exe[n] = '\0';
    const char *argv[] = {exe, "--root", s->paths->root[0] ? s->paths->root : "/", "pool", "show", pool,
                          "--addresses", NULL};
    struct qv_err e = {0};
    if (sup_child_spawn(&w->child, argv, CLUSTER_WATCH_TIMEOUT_MS, &e) < 0) {
        sup_log(s, "warning: Ceph cluster map of pool %s: %s", pool, e.msg);
        return;
    }
    snprintf(w->pool, sizeof(w->pool), "%s", pool);
}

/* The next pool of this round, or the next round armed. */
static void next(struct sup *s, uint64_t now)
{
    struct cluster_watch *w = &s->cluster_watch;
    _cleanup_strv_ struct strv pools = {0};
    vm_rbd_pools(s, &pools);
    while (w->next_pool < pools.n && w->child.pid <= 0)
        ask(s, pools.v[w->next_pool++]);
    if (w->child.pid <= 0) {
        w->next_pool = 0;
        w->at = now + interval_ms();
    }
}

void cluster_watch_child_exited(struct sup *s)
{
    struct cluster_watch *w = &s->cluster_watch;
    char out[8192];
    int status;
    if (w->child.pid <= 0 || !sup_child_reap(&w->child, &status, out, sizeof(out)))
        return;
    if (!watching(s))
        return;
    if (status != 0) {
        /* the cluster may be away for a while: the filter keeps what it has, and the
         * next round asks again */
        if (!w->failing)
            sup_log(s, "warning: Ceph cluster map of pool %s not read (exit %d): %s; asking again in %llu s", w->pool,
                    status, out[0] ? out : "no reason given", (unsigned long long)(interval_ms() / 1000));
        w->failing = true;
    } else {
        w->failing = false;
        _cleanup_strv_ struct strv addrs = {0};
        char *save = NULL;
        for (char *t = strtok_r(out, "\n", &save); t; t = strtok_r(NULL, "\n", &save))
            if (*t && strspn(t, "0123456789abcdefABCDEF.:[]") == strlen(t))
                strv_push(&addrs, t);
        size_t before = s->conf.cluster_addrs.n;
        struct qv_err e = {0};
        if (confine_cluster_allow(s, &addrs, &e) < 0)
            sup_log(s, "warning: network filter: letting QEMU reach the new addresses of pool %s's cluster: %s",
                    w->pool, e.msg);
        else if (s->conf.cluster_addrs.n > before)
            sup_log(s, "network: pool %s's cluster map lists %zu address%s QEMU could not reach yet; it may now",
                    w->pool, s->conf.cluster_addrs.n - before, s->conf.cluster_addrs.n - before == 1 ? "" : "es");
    }
    next(s, monotonic_ms());
}

uint64_t cluster_watch_next_deadline(struct sup *s)
{
    struct cluster_watch *w = &s->cluster_watch;
    if (w->child.pid > 0)
        return w->child.deadline;
    if (!watching(s)) {
        w->at = 0;
        w->next_pool = 0;
        return 0;
    }
    if (!w->at)
        w->at = monotonic_ms() + interval_ms();
    return w->at;
}

void cluster_watch_expire(struct sup *s, uint64_t now)
{
    struct cluster_watch *w = &s->cluster_watch;
    if (w->child.pid > 0) {
        sup_child_expire(&w->child, now);
        return;
    }
    if (watching(s) && w->at && now >= w->at)
        next(s, now);
}
