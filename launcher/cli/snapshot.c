/* qvisor snapshot create|list|show|current|revert|delete VM ...: a shut-off VM's
 * snapshots are made here with qemu-img (model/snapshot.c); a running VM's by its
 * supervisor over QMP, which owns the only connection to QEMU. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "launcher/cli/cli.h"
#include "launcher/model/storedef.h"

#define SNAPSHOT_CTL_TIMEOUT_MS (60 * 60 * 1000)    /* RAM and disks of a big guest take a while */

/* Whether a supervisor runs the VM's QEMU now; also loads the definition. */
static int vm_active(struct cli *c, const char *vm, struct vm_def *d, bool *active)
{
    int r = vm_load(&c->paths, vm, d, &c->err);
    if (r < 0)
        return r;
    _cleanup_runstate_ struct vm_runstate rs = {0};
    bool supervised = false;
    vm_observe(&c->paths, vm, &rs, &supervised);
    *active = supervised || (rs.state != VM_SHUTOFF && rs.state != VM_CRASHED);
    return 0;
}

/* Serialises snapshot changes of one VM made outside its supervisor. */
static int lock_snapshots(struct cli *c, const char *vm)
{
    char dir[PATH_MAX];
    snapshot_dir(&c->paths, vm, dir, sizeof(dir));
    return dir_lock(dir, &c->err);
}

static void when(uint64_t ms, char *out, size_t outlen)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, outlen, "%Y-%m-%d %H:%M:%S", &tm);
}

static const char *kind_of(const struct storage_snapshot *s)
{
    return s->external ? "disk-only" : s->memory ? "full" : "disks";
}

/* The disks attached to the running VM that its definition does not name (attached
 * without --persistent), from state.json's record of them: they are the VM's disks as
 * much as the others, and take part in its snapshots. (An attach --persistent put its
 * disk in both: it counts once, as the definition's.) */
#define LIVE_DISKS_MAX 16
struct live_disks {
    struct snapshot_live_disk v[LIVE_DISKS_MAX];
    struct snapshot_live live;
};

static bool def_names(const struct vm_def *d, const char *file, const char *volume)
{
    for (size_t i = 0; i < d->ndisks; i++) {
        const struct vm_disk *k = &d->disks[i];
        if ((volume[0] && k->volume && strcmp(k->volume, volume) == 0) || (k->file && strcmp(k->file, file) == 0))
            return true;
    }
    return false;
}

static struct live_disks *live_disks_read(struct cli *c, const struct vm_def *d)
{
    struct live_disks *l = qv_xcalloc(1, sizeof(*l));
    l->live.disks = l->v;
    _cleanup_runstate_ struct vm_runstate rs = {0};
    bool supervised = false;
    vm_observe(&c->paths, d->name, &rs, &supervised);
    json_object *a, *v;
    if (!rs.resources || !json_object_object_get_ex(rs.resources, "hotplug", &a) ||
        !json_object_is_type(a, json_type_array))
        return l;
    for (size_t i = 0; i < json_object_array_length(a) && l->live.n < LIVE_DISKS_MAX; i++) {
        json_object *o = json_object_array_get_idx(a, i);
        const char *kind = json_object_object_get_ex(o, "kind", &v) ? json_object_get_string(v) : "disk";
        if (strcmp(kind, "disk") != 0)
            continue;
        struct snapshot_live_disk *k = &l->v[l->live.n];
        memset(k, 0, sizeof(*k));
        if (json_object_object_get_ex(o, "id", &v))
            snprintf(k->id, sizeof(k->id), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "file", &v))
            snprintf(k->file, sizeof(k->file), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "volume", &v))
            snprintf(k->volume, sizeof(k->volume), "%s", json_object_get_string(v));
        k->format = json_object_object_get_ex(o, "format", &v) && strcmp(json_object_get_string(v), "raw") == 0
                        ? FORMAT_RAW : FORMAT_QCOW2;
        k->readonly = json_object_object_get_ex(o, "readonly", &v) && json_object_get_boolean(v);
        if (k->id[0] && !def_names(d, k->file, k->volume))
            l->live.n++;
    }
    return l;
}

static void live_disks_freep(struct live_disks **l)
{
    free(*l);
}
#define _cleanup_live_disks_ _cleanup_(live_disks_freep)

/* Whether every disk a snapshot takes is an rbd volume (from the pool definitions:
 * no cluster is asked), the running VM's hotplugged ones too. A VM with file disks
 * beside them has its snapshot taken by QEMU, RBD images included, with the guest's
 * memory kept in a qcow2 disk. */
static bool rbd_volumes_only(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live)
{
    size_t n = 0;
    for (size_t i = 0; i < d->ndisks; i++) {
        char path[PATH_MAX];
        if (!snapshot_disk_included(&d->disks[i]))
            continue;
        if (!d->disks[i].volume || vol_resolve_named(p, d->disks[i].volume, path, sizeof(path), NULL, NULL) < 0 ||
            !str_startswith(path, "rbd:"))
            return false;
        n++;
    }
    for (size_t i = 0; live && i < live->n; i++)
        if (!live->disks[i].readonly && !(live->disks[i].volume[0] && str_startswith(live->disks[i].file, "rbd:")))
            return false;
    return n > 0;
}

/* "disk0 (ceph/web1), disk1 (ceph/web1-data)" */
static char *rbd_disks_named(const struct storage_snapshot *s)
{
    _cleanup_strv_ struct strv v = {0};
    for (size_t i = 0; i < s->ndisks; i++)
        strv_pushf(&v, "%s (%s)", s->disks[i].disk, s->disks[i].volume);
    return strv_join((const char *const *)v.v, ", ");
}

/* A running VM whose disks are rbd volumes: RBD snapshots taken with librbd from here
 * (the supervisor's loop never waits on the cluster), the guest paused around them
 * so that every image is taken at the same instant. Nothing asks the cluster before
 * the pause (the plan comes from the definitions). QEMU's `stop` waits for the guest's
 * pending disk I/O: where that hangs (an OSD QEMU cannot reach) the supervisor gives up
 * after its QMP timeout, and the guest is resumed (a `cont` QEMU runs once the I/O
 * completes) with nothing taken. */
static int rbd_running_snapshot(struct cli *c, const char *vm, struct vm_def *d, const struct snapshot_live *live,
                                const char *name)
{
    int r;
    _cleanup_close_ int lock = lock_snapshots(c, vm);
    if (lock < 0)
        return lock;
    _cleanup_snapshot_ struct storage_snapshot s = {0};
    if ((r = snapshot_plan(&c->paths, d, live, name, false, &s, &c->err)) < 0)
        return r;
    for (size_t i = 0; i < s.ndisks; i++)
        if (!s.disks[i].rbd)
            return qv_fail(&c->err, -EINVAL, "%s: snapshot %s: %s (%s) is no rbd volume now (attached meanwhile?); "
                           "try again", vm, name, s.disks[i].disk, s.disks[i].file);
    if (cli_opt(c, "description"))
        s.description = qv_xstrdup(cli_opt(c, "description"));
    _cleanup_runstate_ struct vm_runstate rs = {0};
    bool supervised = false;
    vm_observe(&c->paths, vm, &rs, &supervised);
    bool running = rs.state == VM_RUNNING;
    if (running && (r = ctl_call(&c->paths, vm, ctl_request("pause"), 30000, NULL, &c->err)) < 0) {
        _cleanup_free_ char *why = qv_xstrdup(c->err.msg), *disks = rbd_disks_named(&s);
        struct qv_err re = {0};
        bool resumed = ctl_call(&c->paths, vm, ctl_request("resume"), 30000, NULL, &re) == 0;
        return qv_fail(&c->err, r == -ETIMEDOUT ? -ETIMEDOUT : r, "%s: snapshot %s: the guest could not be paused "
                       "(%s): QEMU's I/O to %s does not complete (is an OSD unreachable from this host, or down?); "
                       "nothing was taken, %s", vm, name, why, disks,
                       resumed ? "the guest runs on" : "and the guest resumes once its I/O completes (a `cont` is "
                       "queued; qvisor status shows it)");
    }
    r = snapshot_create_rbd(&c->paths, d, &s, running ? "running" : "paused", &c->err);
    struct qv_err re = {0};
    if (running && ctl_call(&c->paths, vm, ctl_request("resume"), 30000, NULL, &re) < 0)
        fprintf(stderr, "qvisor: warning: %s stays paused after snapshot %s: %s (qvisor resume %s)\n", vm, name,
                re.msg, vm);
    return r;
}

int cmd_snapshot_create(struct cli *c)
{
    const char *vm = c->pos[0], *name = c->pos[1];
    _cleanup_vm_def_ struct vm_def d = {0};
    bool active, disk_only = cli_flag(c, "disk-only"), quiesce = cli_flag(c, "quiesce");
    if (quiesce && !disk_only)
        return qv_fail(&c->err, -EINVAL, "snapshot create: --quiesce needs --disk-only (a full snapshot keeps the "
                       "guest's memory with its disks, which agree without freezing anything)");
    int r = vm_active(c, vm, &d, &active);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *reply = NULL;
    _cleanup_live_disks_ struct live_disks *live = active ? live_disks_read(c, &d) : NULL;
    bool rbd = active && !disk_only && rbd_volumes_only(&c->paths, &d, &live->live);
    if (rbd) {
        if ((r = rbd_running_snapshot(c, vm, &d, &live->live, name)) < 0)
            return r;
    } else if (active) {
        json_object *req = ctl_request("snapshot-create");
        json_object_object_add(req, "name", json_object_new_string(name));
        if (disk_only)
            json_object_object_add(req, "disk_only", json_object_new_boolean(true));
        if (quiesce)
            json_object_object_add(req, "quiesce", json_object_new_boolean(true));
        if (cli_opt(c, "description"))
            json_object_object_add(req, "description", json_object_new_string(cli_opt(c, "description")));
        if ((r = ctl_call(&c->paths, vm, req, SNAPSHOT_CTL_TIMEOUT_MS, &reply, &c->err)) < 0)
            return r;
    } else if (quiesce) {
        return qv_fail(&c->err, -EBUSY, "%s is not running: --quiesce freezes a running guest's filesystems (a shut-off "
                       "VM's disks are consistent as they are; leave --quiesce out)", vm);
    } else {
        _cleanup_close_ int lock = lock_snapshots(c, vm);
        if (lock < 0)
            return lock;
        _cleanup_snapshot_ struct storage_snapshot s = {0};
        if ((r = snapshot_plan(&c->paths, &d, NULL, name, disk_only, &s, &c->err)) < 0)
            return r;
        if (cli_opt(c, "description"))
            s.description = qv_xstrdup(cli_opt(c, "description"));
        if ((r = snapshot_create_offline(&c->paths, &d, &s, &c->err)) < 0)
            return r;
    }
    json_object *v;
    bool quiesced = reply && json_object_object_get_ex(reply, "quiesced", &v) && json_object_get_boolean(v);
    if (!c->quiet)
        printf("%s: snapshot %s created (%s%s%s)\n", vm, name,
               disk_only ? "disk-only, external" : rbd ? "RBD snapshots, the guest paused around them" : "internal",
               active && !disk_only && !rbd ? ", with the guest's memory" : "", quiesced ? ", quiesced" : "");
    if (reply && json_object_object_get_ex(reply, "note", &v) && !c->quiet)
        printf("note: not quiesced: %s\n", json_object_get_string(v));
    json_object *res;   /* a full snapshot's job puts it in its result */
    if (reply && (json_object_object_get_ex(reply, "warning", &v) ||
                  (json_object_object_get_ex(reply, "result", &res) && json_object_object_get_ex(res, "warning", &v))))
        fprintf(stderr, "qvisor: warning: %s\n", json_object_get_string(v));
    return 0;
}

/* ---- list, show ---- */

struct listing {
    struct storage_snapshot *all;
    size_t n;
    char current[65];
};

static void listing_free(struct listing *l)
{
    snapshot_free_all(l->all, l->n);
}

static int load_listing(struct cli *c, const char *vm, struct listing *l)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, vm, &d, &c->err);
    if (r < 0)
        return r;
    char dir[PATH_MAX];
    snapshot_dir(&c->paths, vm, dir, sizeof(dir));
    storage_snapshot_current(dir, l->current, sizeof(l->current));
    return snapshot_load_all(&c->paths, vm, &l->all, &l->n, &c->err);
}

static json_object *snap_json(const struct listing *l, const struct storage_snapshot *s)
{
    json_object *o = storage_snapshot_to_json(s);
    json_object_object_add(o, "current", json_object_new_boolean(strcmp(s->name, l->current) == 0));
    json_object *ch = json_object_new_array();
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->all[i].parent, s->name) == 0)
            json_object_array_add(ch, json_object_new_string(l->all[i].name));
    json_object_object_add(o, "children", ch);
    return o;
}

/* Oldest first: the order they were taken, then by name. */
static int by_time(const void *a, const void *b)
{
    const struct storage_snapshot *x = a, *y = b;
    if (x->created_ms != y->created_ms)
        return x->created_ms < y->created_ms ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* A root is a snapshot without a parent, or whose parent's record is gone. */
static bool is_root(const struct listing *l, const struct storage_snapshot *s)
{
    if (!s->parent[0])
        return true;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->all[i].name, s->parent) == 0)
            return false;
    return true;
}

static void print_tree(const struct listing *l, const struct storage_snapshot *s, const char *prefix, bool last,
                       bool root, int depth)
{
    const char *mark = strcmp(s->name, l->current) == 0 ? " *" : "";
    if (root)
        printf("%s%s\n", s->name, mark);
    else
        printf("%s%s %s%s\n", prefix, last ? "`-" : "+-", s->name, mark);
    if (depth > 64)
        return;     /* records edited into a loop: stop */
    char next[512];
    snprintf(next, sizeof(next), "%s%s", prefix, root ? "" : last ? "   " : "|  ");
    size_t nkids = 0, seen = 0;
    for (size_t i = 0; i < l->n; i++)
        nkids += strcmp(l->all[i].parent, s->name) == 0;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->all[i].parent, s->name) == 0)
            print_tree(l, &l->all[i], next, ++seen == nkids, false, depth + 1);
}

int cmd_snapshot_list(struct cli *c)
{
    _cleanup_(listing_free) struct listing l = {0};
    int r = load_listing(c, c->pos[0], &l);
    if (r < 0)
        return r;
    qsort(l.all, l.n, sizeof(*l.all), by_time);
    if (c->json) {
        _cleanup_json_ json_object *a = json_object_new_array();
        for (size_t i = 0; i < l.n; i++)
            json_object_array_add(a, snap_json(&l, &l.all[i]));
        cli_print_json(a);
        return 0;
    }
    if (cli_flag(c, "tree")) {
        for (size_t i = 0; i < l.n; i++)
            if (is_root(&l, &l.all[i]))
                print_tree(&l, &l.all[i], "", true, true, 0);
        return 0;
    }
    printf("%-20s %-19s %-8s %-9s %s\n", "NAME", "CREATED", "STATE", "KIND", "PARENT");
    for (size_t i = 0; i < l.n; i++) {
        const struct storage_snapshot *s = &l.all[i];
        char t[32];
        when(s->created_ms, t, sizeof(t));
        printf("%-20s %-19s %-8s %-9s %s%s\n", s->name, t, s->state, kind_of(s), s->parent[0] ? s->parent : "-",
               strcmp(s->name, l.current) == 0 ? "  (current)" : "");
    }
    return 0;
}

static const struct storage_snapshot *find_snap(const struct listing *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->all[i].name, name) == 0)
            return &l->all[i];
    return NULL;
}

int cmd_snapshot_show(struct cli *c)
{
    _cleanup_(listing_free) struct listing l = {0};
    int r = load_listing(c, c->pos[0], &l);
    if (r < 0)
        return r;
    const struct storage_snapshot *s = find_snap(&l, c->pos[1]);
    if (!s)
        return qv_fail(&c->err, -ENOENT, "%s has no snapshot named %s (qvisor snapshot list %s)", c->pos[0], c->pos[1],
                       c->pos[0]);
    _cleanup_json_ json_object *o = snap_json(&l, s);
    if (c->json) {
        cli_print_json(o);
        return 0;
    }
    char t[32];
    when(s->created_ms, t, sizeof(t));
    json_object *ch;
    json_object_object_get_ex(o, "children", &ch);
    printf("name:        %s\nvm:          %s\nparent:      %s\nchildren:    ", s->name, c->pos[0],
           s->parent[0] ? s->parent : "-");
    for (size_t i = 0; i < json_object_array_length(ch); i++)
        printf("%s%s", i ? ", " : "", json_object_get_string(json_object_array_get_idx(ch, i)));
    printf("%s\ncreated:     %s\nstate:       %s\nkind:        %s (%s)\nmemory:      %s\ncurrent:     %s\n",
           json_object_array_length(ch) ? "" : "-", t, s->state, s->external ? "external" : "internal", kind_of(s),
           s->memory ? "yes" : "no", strcmp(s->name, l.current) == 0 ? "yes" : "no");
    /* only a disk-only snapshot of a running guest is ever frozen for */
    const char *why = s->quiesced ? "" : s->quiesce_note[0] ? s->quiesce_note
                    : s->memory ? "memory kept: not needed" : strcmp(s->state, "shutoff") == 0 ? "taken shut off" : "";
    printf("quiesced:    %s%s%s%s\n", s->quiesced ? "yes" : "no", why[0] ? " (" : "", why, why[0] ? ")" : "");
    if (s->description)
        printf("description: %s\n", s->description);
    for (size_t i = 0; i < s->ndisks; i++) {
        const struct storage_snapshot_disk *k = &s->disks[i];
        printf("%s %s: %s", i ? "            " : "disks:      ", k->disk, k->volume[0] ? k->volume : k->file);
        if (s->external)
            printf(" <- %s", k->overlay_volume[0] ? k->overlay_volume : k->overlay);
        printf("\n");
    }
    return 0;
}

int cmd_snapshot_current(struct cli *c)
{
    _cleanup_(listing_free) struct listing l = {0};
    int r = load_listing(c, c->pos[0], &l);
    if (r < 0)
        return r;
    if (!l.current[0] || !find_snap(&l, l.current))
        return qv_fail(&c->err, -ENOENT, "%s has no current snapshot", c->pos[0]);
    if (c->json) {
        _cleanup_json_ json_object *o = snap_json(&l, find_snap(&l, l.current));
        cli_print_json(o);
    } else {
        printf("%s\n", l.current);
    }
    return 0;
}

/* ---- revert, delete ---- */

/* The state the VM ends in, as virsh snapshot-revert has it: that of the snapshot (a
 * snapshot without memory leaves the VM shut off), unless --running or --paused. */
static int revert_then(struct cli *c, const char **then)
{
    bool running = cli_flag(c, "running"), paused = cli_flag(c, "paused");
    if (running && paused)
        return qv_fail(&c->err, -EINVAL, "snapshot revert: --running and --paused exclude each other");
    *then = running ? "running" : paused ? "paused" : "";
    return 0;
}

/* A shut-off VM after its disks went back: started (paused, or resumed from the
 * snapshot's memory) by a new supervisor, which reports once the guest runs. */
static int start_after_revert(struct cli *c, const char *vm, const char *load, bool paused)
{
    int timeout_ms;
    int r = cli_opt_seconds_ms(c, "wait-timeout", 60000, &timeout_ms);
    if (r < 0)
        return r;
    const char *args[6] = {"run", vm};
    size_t n = 2;
    if (load) {
        args[n++] = "--load-snapshot";
        args[n++] = load;
    }
    if (paused)
        args[n++] = "--paused";
    return supervisor_spawn(&c->paths, args, timeout_ms, vm, &c->err);
}

static int change(struct cli *c, bool revert)
{
    const char *vm = c->pos[0], *name = c->pos[1], *then = "";
    _cleanup_vm_def_ struct vm_def d = {0};
    bool active;
    int r = revert ? revert_then(c, &then) : 0;
    if (r < 0 || (r = vm_active(c, vm, &d, &active)) < 0)
        return r;
    char dir[PATH_MAX];
    snapshot_dir(&c->paths, vm, dir, sizeof(dir));
    _cleanup_snapshot_ struct storage_snapshot s = {0};
    if ((r = storage_snapshot_load(dir, name, &s, &c->err)) < 0)
        return r == -ENOENT ? qv_fail(&c->err, -ENOENT, "%s has no snapshot named %s (qvisor snapshot list %s)", vm,
                                      name, vm)
                            : r;
    bool rbd_only = s.ndisks > 0, has_rbd = false;
    for (size_t i = 0; i < s.ndisks; i++) {
        rbd_only &= s.disks[i].rbd;
        has_rbd |= s.disks[i].rbd;
    }
    if (active && rbd_only && !revert) {
        /* RBD snapshots go in the cluster, whoever has the image open (with file disks
         * beside them, the supervisor has QEMU delete them all) */
        _cleanup_close_ int lock = lock_snapshots(c, vm);
        _cleanup_live_disks_ struct live_disks *live = live_disks_read(c, &d);
        return lock < 0 ? lock : snapshot_delete_offline(&c->paths, &d, &live->live, &s, &c->err);
    }
    if (active) {
        if (revert && !s.memory)
            return qv_fail(&c->err, -EBUSY, "%s is running and snapshot %s holds no memory state (%s); stop the VM "
                           "first, then revert", vm, name, s.external ? "a disk-only snapshot" : "taken while shut off");
        json_object *req = ctl_request(revert ? "snapshot-revert" : "snapshot-delete");
        json_object_object_add(req, "name", json_object_new_string(name));
        if (!revert && cli_opt(c, "bandwidth"))
            json_object_object_add(req, "bandwidth", json_object_new_string(cli_opt(c, "bandwidth")));
        if (revert && !*then && (strcmp(s.state, "running") == 0 || strcmp(s.state, "paused") == 0))
            then = s.state;     /* as it was then, whatever it is now */
        if (*then)
            json_object_object_add(req, "then", json_object_new_string(then));
        return ctl_call(&c->paths, vm, req, SNAPSHOT_CTL_TIMEOUT_MS, NULL, &c->err);
    }
    if (!revert && cli_opt(c, "bandwidth"))
        return qv_fail(&c->err, -EINVAL, "%s is shut off: --bandwidth caps a running VM's merge (qemu-img merges "
                       "at full speed); leave it out", vm);
    if (!revert) {
        _cleanup_close_ int lock = lock_snapshots(c, vm);
        return lock < 0 ? lock : snapshot_delete_offline(&c->paths, &d, NULL, &s, &c->err);
    }
    if (s.memory && !has_rbd) {
        /* QEMU's snapshot-load brings memory and disks back together, before the guest runs */
        {
            _cleanup_close_ int lock = lock_snapshots(c, vm);
            if (lock < 0)
                return lock;
            if ((r = snapshot_check_revert(&c->paths, &d, NULL, &s, &c->err)) < 0)
                return r;
        }
        bool paused = strcmp(then, "paused") == 0 || (!*then && strcmp(s.state, "paused") == 0);
        if ((r = start_after_revert(c, vm, name, paused)) < 0)
            return qv_prefix(&c->err, "%s: reverting to snapshot %s: ", vm, name);
        if (!c->quiet)
            printf("%s: the guest resumes from snapshot %s (%s)\n", vm, name, paused ? "paused" : "running");
        return 0;
    }
    {
        _cleanup_close_ int lock = lock_snapshots(c, vm);
        if (lock < 0)
            return lock;
        if ((r = snapshot_revert_offline(&c->paths, &d, &s, &c->err)) < 0)
            return r;
    }
    if (*then) {
        /* a snapshot without memory boots from its disks */
        if ((r = start_after_revert(c, vm, NULL, strcmp(then, "paused") == 0)) < 0)
            return qv_prefix(&c->err, "%s: reverted to snapshot %s, but starting it failed: ", vm, name);
        if (!c->quiet)
            printf("%s: started from snapshot %s's disks (%s)\n", vm, name, then);
    }
    return 0;
}

int cmd_snapshot_revert(struct cli *c)
{
    int r = change(c, true);
    if (r == 0 && !c->quiet)
        printf("%s: reverted to snapshot %s\n", c->pos[0], c->pos[1]);
    return r;
}

int cmd_snapshot_delete(struct cli *c)
{
    int r = change(c, false);
    if (r == 0 && !c->quiet)
        printf("%s: snapshot %s deleted\n", c->pos[0], c->pos[1]);
    return r;
}
