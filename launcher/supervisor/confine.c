/* The supervisor's side of confinement: the VM's own uid, its cgroup with limits,
 * and the sandbox_spec that sandbox_spawn() applies between fork and exec. What is
 * about to be created is recorded in state.json first, so a crash at any step can
 * be cleaned up exactly. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <signal.h>

#include "launcher/supervisor/internal.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
#define CGROUP_REMOVE_MS 5000

static void log_warnings(struct sup *s, struct strv *w)
{
    for (size_t i = 0; i < w->n; i++)
        sup_log(s, "warning: %s", w->v[i]);
    strv_free(w);
}

static json_object *resources(struct sup *s)
{
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    return s->rs.resources;
}

static json_object *cgroup_json(const struct sandbox_cgroup *cg)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "version", json_object_new_int(cg->version));
    json_object_object_add(o, "split", json_object_new_boolean(cg->split));
    if (cg->delegated)
        json_object_object_add(o, "delegated", json_object_new_boolean(true));
    json_object_object_add(o, "root", json_object_new_string(cg->root));
    json_object_object_add(o, "ctls", json_object_new_int((int)cg->ctls));
    json_object *dirs = json_object_new_array();
    for (size_t i = 0; i < cg->ndirs; i++) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "path", json_object_new_string(cg->dir[i].path));
        json_object_object_add(d, "ctls", json_object_new_int((int)cg->dir[i].ctls));
        json_object_array_add(dirs, d);
    }
    json_object_object_add(o, "dirs", dirs);
    return o;
}

static bool cgroup_from_json(json_object *o, struct sandbox_cgroup *cg)
{
    json_object *v, *dirs;
    memset(cg, 0, sizeof(*cg));
    if (!o || !json_object_object_get_ex(o, "dirs", &dirs) || !json_object_is_type(dirs, json_type_array))
        return false;
    if (json_object_object_get_ex(o, "version", &v))
        cg->version = json_object_get_int(v);
    /* absent: an older qvisor put QEMU in the VM's directory itself */
    cg->split = json_object_object_get_ex(o, "split", &v) && json_object_get_boolean(v);
    cg->delegated = json_object_object_get_ex(o, "delegated", &v) && json_object_get_boolean(v);
    if (json_object_object_get_ex(o, "root", &v))
        snprintf(cg->root, sizeof(cg->root), "%s", json_object_get_string(v));
    if (json_object_object_get_ex(o, "ctls", &v))
        cg->ctls = (unsigned)json_object_get_int(v);
    for (size_t i = 0; i < json_object_array_length(dirs) && i < CG_NCTL; i++) {
        json_object *d = json_object_array_get_idx(dirs, i), *p, *c;
        if (!json_object_object_get_ex(d, "path", &p) || !json_object_object_get_ex(d, "ctls", &c))
            return false;
        snprintf(cg->dir[i].path, sizeof(cg->dir[i].path), "%s", json_object_get_string(p));
        cg->dir[i].ctls = (unsigned)json_object_get_int(c);
        cg->ndirs++;
    }
    return cg->ndirs > 0;
}

static int uid_dir(struct sup *s, char *out, size_t outlen)
{
    qv_path(s->paths, out, outlen, QV_RUN "/uids");
    return mkdir_p(out, 0755);
}

/* The limits of the definition in sandbox terms. io devices are resolved now. */
static int cgroup_limits(struct sup *s, const struct launch_plan *p, struct sandbox_cgroup_limits *l,
                         struct sandbox_io_limit *io, struct qv_err *e)
{
    const struct vm_limits *vl = &s->def.limits;
    memset(l, 0, sizeof(*l));
    l->memory_max = s->conf.memory_max = p->memory_max;
    l->cpu_quota_us = p->cpu_quota_us;
    l->cpu_period_us = p->cpu_period_us;
    l->cpu_weight = (unsigned)vl->cpu_weight;
    /* QEMU's threads: one per vCPU, its I/O worker pool (64 per AioContext), a few
     * more; a compromised QEMU that tries to fork-bomb the host hits this */
    l->pids_max = vl->pids ? (uint64_t)vl->pids : VM_DEFAULT_PIDS_MAX + (uint64_t)s->def.cpu.count;
    l->io_weight = (unsigned)vl->io_weight;
    for (size_t i = 0; i < vl->nio; i++) {
        struct stat st;
        if (stat(vl->io[i].device, &st) < 0)
            return qv_failerr(e, -errno, "%s: limits.io[%zu].device %s", s->def.name, i, vl->io[i].device);
        if (!S_ISBLK(st.st_mode))
            return qv_fail(e, -EINVAL, "%s: limits.io[%zu].device %s is not a block device", s->def.name, i,
                           vl->io[i].device);
        io[i] = (struct sandbox_io_limit){major(st.st_rdev), minor(st.st_rdev), vl->io[i].read_bps, vl->io[i].write_bps,
                                          vl->io[i].read_iops, vl->io[i].write_iops};
    }
    l->io = io;
    l->nio = vl->nio;
    return 0;
}

int confine_prepare(struct sup *s, const struct launch_plan *p, struct qv_err *e)
{
    struct confine *c = &s->conf;
    int r;
    if (!c->host_checked) {
        sandbox_host_check(CGROUP_ROOT, &c->host);
        c->host_checked = true;
        for (int i = 0; i < SANDBOX_NSTEPS; i++)
            if (!c->host.step[i].available)
                sup_log(s, "warning: sandbox: %s is not available on this host: %s", sandbox_step_name(i),
                        c->host.step[i].detail);
        if ((r = sandbox_steps_parse((const char *const *)s->def.sandbox.require.v, &c->require, e)) < 0)
            return qv_prefix(e, "%s: sandbox.require: ", s->def.name);
    }
    /* the user QEMU runs as */
    if (!c->have_user) {
        if (s->def.sandbox.user) {
            if ((r = sandbox_user_lookup(s->def.sandbox.user, &c->uid, &c->gid, e)) < 0)
                return qv_prefix(e, "%s: sandbox.user: ", s->def.name);
        } else {
            char dir[PATH_MAX];
            if ((r = uid_dir(s, dir, sizeof(dir))) < 0)
                return qv_failerr(e, r, "%s", dir);
            if ((r = sandbox_uid_acquire(dir, s->hc.uid_first, s->hc.uid_last, s->def.name, &c->lease, e)) < 0)
                return qv_prefix(e, "%s: ", s->def.name);
            c->uid = c->lease.uid;
            c->gid = c->lease.gid;
        }
        c->have_user = true;
        json_object_object_add(resources(s), "uid", json_object_new_int64(c->uid));
        json_object_object_add(resources(s), "gid", json_object_new_int64(c->gid));
    }
    c->ngroups = 0;
    if (s->def.sandbox.group) {
        if ((r = sandbox_group_lookup(s->def.sandbox.group, &c->groups[0], e)) < 0)
            return qv_prefix(e, "%s: sandbox.group: ", s->def.name);
        c->ngroups = 1;
    }

    /* the cgroup: recorded, then created */
    c->have_cgroup = false;
    if (c->host.cgroup_version) {
        /* Under its own unit on v2, QEMU's cgroup is UNIT/qemu, in the subtree systemd
         * delegated: the unit's status and accounting see QEMU, and the unit's limits
         * (the generator's drop-in) are QEMU's. Elsewhere it is qvisor/VM/qemu. */
        bool delegated = s->own_unit && c->host.cgroup_version == 2 && !s->hc.cgroup_parent;
        struct sandbox_cgroup_params cp = {.root = CGROUP_ROOT, .parent = s->hc.cgroup_parent ? s->hc.cgroup_parent : "qvisor",
                                           .name = s->def.name};
        if (delegated)
            cp = (struct sandbox_cgroup_params){.root = CGROUP_ROOT, .name = SANDBOX_CGROUP_QEMU, .delegated = true};
        struct qv_err ce = {0};
        if ((r = sandbox_cgroup_resolve(&cp, &c->cg, &ce)) == 0) {
            json_object_object_add(resources(s), "cgroup", cgroup_json(&c->cg));
            runstate_write(s->paths, s->def.name, &s->rs, NULL);
            struct sandbox_cgroup_limits l;
            struct sandbox_io_limit io[16];
            if (s->def.limits.nio > ARRAY_SIZE(io))
                return qv_fail(e, -E2BIG, "%s: limits.io: at most %zu devices", s->def.name, ARRAY_SIZE(io));
            if ((r = cgroup_limits(s, p, &l, io, e)) < 0)
                return r;
            struct strv w = {0};
            r = sandbox_cgroup_create(&c->cg, delegated ? NULL : &l, &w, &ce);
            log_warnings(s, &w);
            if (r == 0 && delegated)
                sup_log(s, "cgroup: QEMU runs in %s, inside this unit's; its limits are the unit's "
                        "(MemoryMax=%" PRIu64 " TasksMax=%" PRIu64 " from qvisor-generator; systemctl daemon-reload "
                        "after changing limits)", c->cg.dir[0].path, vm_unit_memory_max(&s->def),
                        vm_unit_tasks_max(&s->def));
        }
        if (r == -EBUSY)    /* processes in the VM's cgroup: never start a second QEMU beside them */
            return qv_fail(e, -EBUSY, "%s: %s; not starting another QEMU", s->def.name, ce.msg);
        if (r < 0) {
            if ((r = sandbox_degrade(c->require, SANDBOX_CGROUP, s->def.name, ce.msg, NULL, e)) < 0)
                return r;
            sup_log(s, "warning: sandbox: cgroup not applied: %s", ce.msg);
        } else {
            c->have_cgroup = true;
            sandbox_cgroup_oom_kills(&c->cg, &c->oom_before);
        }
    } else if ((r = sandbox_degrade(c->require, SANDBOX_CGROUP, s->def.name, "no cgroup hierarchy", NULL, e)) < 0) {
        return r;
    }
    return 0;
}

void confine_sibling_spec(struct sup *s, struct sandbox_spec *spec, const char *const *argv,
                          const struct sandbox_fd *fd3)
{
    static const char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
    struct confine *c = &s->conf;
    sandbox_spec_init(spec);
    spec->name = s->def.name;
    spec->path = argv[0];
    spec->argv = argv;
    spec->envp = envp;
    spec->fds = fd3;
    spec->nfds = 1;
    spec->stdout_fd = s->log_fd;
    spec->stderr_fd = s->log_fd;
    spec->setsid = true;
    spec->host = c->host_checked ? &c->host : NULL;
}

/* ---- the filter of a QEMU that reaches Ceph clusters ---- */

static int nft_ready(struct sup *s, struct qv_err *e)
{
    return s->nft ? 0 : netsetup_nft_open(&s->nft, e);
}

static void cluster_record(struct sup *s)
{
    struct confine *c = &s->conf;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "uid", json_object_new_int64(c->uid));
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < c->cluster_addrs.n; i++)
        json_object_array_add(a, json_object_new_string(c->cluster_addrs.v[i]));
    json_object_object_add(o, "addrs", a);
    json_object_object_add(resources(s), "cluster_filter", o);
    runstate_write(s->paths, s->def.name, &s->rs, NULL);
}

static int cluster_apply(struct sup *s, struct qv_err *e)
{
    struct confine *c = &s->conf;
    int r = nft_ready(s, e);
    if (r == 0)
        r = netsetup_nft_uid_filter_apply(s->nft, c->uid, (const char *const *)c->cluster_addrs.v, e);
    return r;
}

static void add_addrs(struct strv *to, const struct strv *from)
{
    for (size_t i = 0; i < from->n; i++)
        if (!strv_contains((const char *const *)to->v, from->v[i]))
            strv_push(to, from->v[i]);
}

/* Recorded, then made: a crash in between leaves a record whose table is absent,
 * which the clean-up takes in its stride. */
static int cluster_filter_begin(struct sup *s, struct qv_err *e)
{
    struct confine *c = &s->conf;
    strv_free(&c->cluster_addrs);
    for (size_t i = 0; i < s->def.ndisks; i++)
        if (s->def.disks[i].rbd)
            add_addrs(&c->cluster_addrs, &s->def.disks[i].rbd->addrs);
    c->cluster_filter = true;
    cluster_record(s);
    struct qv_err fe = {0};
    int r = cluster_apply(s, &fe);
    if (r == 0) {
        _cleanup_free_ char *list = strv_join((const char *const *)c->cluster_addrs.v, " ");
        sup_log(s, "network: QEMU (uid %u) keeps the host's network for its rbd disks; it may connect only to "
                "the Ceph cluster's monitors and OSDs: %s", (unsigned)c->uid, list);
        return 0;
    }
    c->cluster_filter = false;
    if ((r = sandbox_degrade(c->require, SANDBOX_NETWORK, s->def.name, fe.msg, NULL, e)) < 0)
        return r;
    sup_log(s, "warning: sandbox: QEMU reaches the host's whole network (its rbd disks need the Ceph cluster, "
            "and its filter failed: %s)", fe.msg);
    return 0;
}

static void cluster_filter_end(struct sup *s, uid_t uid, json_object *res)
{
    struct qv_err e = {0};
    if (nft_ready(s, &e) < 0 || netsetup_nft_uid_filter_remove(s->nft, uid, &e) < 0)
        sup_log(s, "warning: network filter of uid %u: %s", (unsigned)uid, e.msg);
    else if (res)
        json_object_object_del(res, "cluster_filter");
}

int confine_cluster_allow(struct sup *s, const struct strv *addrs, struct qv_err *e)
{
    struct confine *c = &s->conf;
    if (!c->cluster_filter) {
        if (c->private_network)
            return qv_fail(e, -EINVAL, "%s: an rbd disk needs the Ceph cluster's network, and this QEMU runs in a "
                           "private network namespace (it had no rbd disk at start); add the disk to the definition "
                           "and restart", s->def.name);
        return 0;
    }
    size_t before = c->cluster_addrs.n;
    add_addrs(&c->cluster_addrs, addrs);
    if (c->cluster_addrs.n == before)
        return 0;
    cluster_record(s);
    int r = cluster_apply(s, e);
    if (r == 0)
        sup_log(s, "network: QEMU may now connect to %zu addresses of Ceph clusters", c->cluster_addrs.n);
    return r < 0 ? qv_prefix(e, "%s: ", s->def.name) : 0;
}

static bool under_usr(const char *path)
{
    return str_startswith(path, "/usr/");
}

int confine_spawn(struct sup *s, const struct launch_plan *p, const int *fds, pid_t *pid, struct qv_err *e)
{
    struct confine *c = &s->conf;
    struct sandbox_spec spec;
    sandbox_spec_init(&spec);
    struct sandbox_fd map[PLAN_MAX_FDS];
    for (size_t i = 0; i < p->nslots; i++)
        map[i] = (struct sandbox_fd){.source = fds[i], .target = p->slots[i].fd};
    static const char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", NULL};
    const char *ro[8];
    size_t nro = 0;
    if (s->def.boot.kernel)
        ro[nro++] = s->def.boot.kernel;
    if (s->def.boot.initrd)
        ro[nro++] = s->def.boot.initrd;
    if (s->def.boot.firmware == FIRMWARE_UEFI && !under_usr(s->facts.ovmf_code))
        ro[nro++] = s->facts.ovmf_code;
    if (!under_usr(s->facts.qemu))
        ro[nro++] = s->facts.qemu;
    /* vfio-pci (QEMU 7.2) opens the group and reads the device's sysfs itself */
    _cleanup_strv_ struct strv vfio = {0};
    int r = hostdev_pci_prepare(&s->def, &vfio, e);
    if (r < 0)
        return qv_prefix(e, "%s: ", s->def.name);
    if (vfio.n)
        ro[nro++] = "/sys";
    ro[nro] = NULL;
    const char *deny[64];
    size_t ndeny = 0;
    for (size_t i = 0; i < s->def.sandbox.extra_deny.n && ndeny < ARRAY_SIZE(deny) - 1; i++)
        deny[ndeny++] = s->def.sandbox.extra_deny.v[i];
    deny[ndeny] = NULL;

    spec.name = s->def.name;
    spec.path = p->argv.v[0];
    spec.argv = (const char *const *)p->argv.v;
    spec.envp = envp;
    spec.fds = map;
    spec.nfds = p->nslots;
    spec.stdout_fd = s->log_fd;
    spec.stderr_fd = s->log_fd;
    spec.hold_fd = c->lease.hold_fd;
    spec.setsid = true;
    spec.require = c->require;
    spec.host = &c->host;
    if (!s->def.sandbox.seccomp)
        spec.enable &= ~SANDBOX_STEP(SANDBOX_SECCOMP);
    if (p->host_network)
        spec.enable &= ~SANDBOX_STEP(SANDBOX_NETWORK);
    c->private_network = !p->host_network && c->host.step[SANDBOX_NETWORK].available;
    if (p->cluster_filter && (r = cluster_filter_begin(s, e)) < 0)
        return r;
    if (p->cluster_network && !p->cluster_filter)
        sup_log(s, "warning: sandbox: QEMU reaches the host's whole network: its rbd disks need the Ceph cluster, "
                "and its user-mode NICs or qemu_args need the host's network unfiltered");
    spec.uid = c->uid;
    spec.gid = c->gid;
    memcpy(spec.groups, c->groups, sizeof(c->groups[0]) * c->ngroups);
    spec.ngroups = c->ngroups;
    spec.cgroup = c->have_cgroup ? &c->cg : NULL;
    spec.cgroup_after_exec = true;     /* see below */
    spec.ro_paths = ro;
    spec.kvm = p->accel == ACCEL_KVM;
    spec.chroot = s->def.sandbox.chroot;
    /* QEMU's own fds, its threads' eventfds and io_uring rings, with room to spare */
    spec.nofile = 1024 + 4 * (uint64_t)p->nslots;
    spec.coredump = s->def.sandbox.coredump;
    spec.extra_deny = deny;
    /* migrate-incoming --postcopy: QEMU fetches missing pages through userfaultfd */
    spec.allow_userfaultfd = s->mig_in.postcopy && s->start.incoming[0];
    if (vfio.n) {
        spec.devices = (const char *const *)vfio.v;
        /* VFIO pins all of guest RAM for the device's DMA */
        spec.memlock = s->def.memory.bytes + (256ull << 20);
    }
    spec.forked = sup_record_qemu;
    /* a `qvisor boot` VM dies with its supervisor (which dies with boot, or kills
     * QEMU when boot is gone); every other QEMU outlives its supervisor by design */
    spec.parent_death_signal = s->boot_vm ? SIGKILL : 0;
    spec.opaque = s;
    struct strv w = {0};
    r = sandbox_spawn(&spec, pid, &w, e);
    log_warnings(s, &w);
    if (r < 0 || !spec.cgroup)
        return r;
    /* QEMU runs with -S: no guest code executes before `cont`, so joining the cgroup
     * now, while QEMU initialises on another CPU, confines everything the guest can
     * ever do, and the kernel's wait for the move costs start-up nothing. (The few
     * pages QEMU touches before the move stay charged to our own cgroup.) */
    if ((r = sandbox_cgroup_attach(spec.cgroup, *pid, e)) < 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
        return qv_prefix(e, "%s: ", s->def.name);
    }
    /* Right behind QEMU's move, the kernel's wait for it is over and ours costs little. */
    confine_join(s);
    return 0;
}

void confine_join(struct sup *s)
{
    struct confine *c = &s->conf;
    struct qv_err e = {0};
    if (!c->have_cgroup || !c->cg.split || c->joined)
        return;
    if (sandbox_cgroup_join_self(&c->cg, &c->origin, &e) < 0)
        sup_log(s, "warning: the supervisor's work is not charged to the VM: %s", e.msg);
    else
        c->joined = true;
}

static void confine_leave(struct sup *s)
{
    struct confine *c = &s->conf;
    struct qv_err e = {0};
    if (!c->joined)
        return;
    if (sandbox_cgroup_leave_self(&c->cg, &c->origin, &e) < 0)
        sup_log(s, "warning: %s", e.msg);
    c->joined = false;
}

bool confine_oom_killed(struct sup *s)
{
    uint64_t now = 0;
    return s->conf.have_cgroup && sandbox_cgroup_oom_kills(&s->conf.cg, &now) == 0 && now > s->conf.oom_before;
}

int confine_oom_error(struct sup *s, struct qv_err *e)
{
    if (!confine_oom_killed(s))
        return 0;
    char limit[32];
    format_size(s->conf.memory_max, limit, sizeof(limit));
    return qv_fail(e, -ENOMEM, "QEMU was killed for lack of memory (cgroup memory limit %s; raise limits.memory_max)",
                   limit);
}

void confine_after_exit(struct sup *s)
{
    struct confine *c = &s->conf;
    confine_leave(s);
    if (c->cluster_filter) {
        cluster_filter_end(s, c->uid, s->rs.resources);
        c->cluster_filter = false;
        strv_free(&c->cluster_addrs);
    }
    if (c->have_cgroup) {
        struct qv_err e = {0};
        if (sandbox_cgroup_remove(&c->cg, CGROUP_REMOVE_MS, &e) < 0)
            sup_log(s, "warning: cgroup: %s", e.msg);
        else if (s->rs.resources)
            json_object_object_del(s->rs.resources, "cgroup");     /* nothing left to remove after a crash */
        c->have_cgroup = false;
    }
}

void confine_release(struct sup *s)
{
    confine_after_exit(s);
    sandbox_uid_release(&s->conf.lease);
    s->conf.have_user = false;
}

int confine_reattach(struct sup *s, struct qv_err *e)
{
    struct confine *c = &s->conf;
    sandbox_host_check(CGROUP_ROOT, &c->host);
    c->host_checked = true;
    c->private_network = sandbox_own_namespace(s->rs.qemu_pid, "net");
    json_object *res = s->rs.resources, *v;
    if (res && json_object_object_get_ex(res, "uid", &v)) {
        c->uid = (uid_t)json_object_get_int64(v);
        c->gid = json_object_object_get_ex(res, "gid", &v) ? (gid_t)json_object_get_int64(v) : c->uid;
        c->have_user = true;
        if (!s->def.sandbox.user) {
            char dir[PATH_MAX];
            uid_dir(s, dir, sizeof(dir));
            if (sandbox_uid_rehold(dir, c->uid, &c->lease, e) < 0)
                return qv_prefix(e, "%s: ", s->def.name);
        }
    }
    json_object *cf, *a;
    if (res && json_object_object_get_ex(res, "cluster_filter", &cf)) {
        c->cluster_filter = true;
        strv_free(&c->cluster_addrs);
        if (json_object_object_get_ex(cf, "addrs", &a) && json_object_is_type(a, json_type_array))
            for (size_t i = 0; i < json_object_array_length(a); i++)
                strv_push(&c->cluster_addrs, json_object_get_string(json_object_array_get_idx(a, i)));
    }
    if (res && json_object_object_get_ex(res, "cgroup", &v) && cgroup_from_json(v, &c->cg)) {
        c->have_cgroup = true;
        sandbox_cgroup_oom_kills(&c->cg, &c->oom_before);
        confine_join(s);
    }
    return 0;
}

void confine_cleanup_recorded(struct sup *s, json_object *res)
{
    json_object *v, *u;
    struct sandbox_cgroup cg;
    if (res && json_object_object_get_ex(res, "cluster_filter", &v) && json_object_object_get_ex(v, "uid", &u))
        cluster_filter_end(s, (uid_t)json_object_get_int64(u), NULL);
    if (res && json_object_object_get_ex(res, "cgroup", &v) && cgroup_from_json(v, &cg)) {
        struct qv_err e = {0};
        if (sandbox_cgroup_remove(&cg, CGROUP_REMOVE_MS, &e) < 0)
            sup_log(s, "warning: cgroup of the previous run: %s", e.msg);
    }
}

json_object *confine_inspect(struct sup *s)
{
    if (!s->qemu_pid)
        return NULL;
    json_object *o = NULL;
    struct qv_err e = {0};
    if (sandbox_inspect(s->qemu_pid, CGROUP_ROOT, &o, &e) < 0)
        return json_object_new_string(e.msg);
    return o;
}
