/* A VM's snapshots as the verbs see them: which disks take part, the tree of records
 * under var/lib/qvisor/snapshots/VM/, and the work on a shut-off VM's images through
 * qemu-img. Internal snapshots live in each qcow2 image; an external (disk-only)
 * snapshot puts a new qcow2 overlay on each disk's top, and the definition follows
 * the new top. What a running VM needs is done by its supervisor, with the same
 * plan and records. */
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/model/model.h"
#include "launcher/model/storedef.h"

int snapshot_dir(const struct qv_paths *p, const char *vm, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_LIB "/snapshots/%s", vm);
}

/* The disk's current top: its file, or its volume's image, and its format (an rbd
 * volume's from the definitions: its cluster is asked when its snapshot is taken). */
static int disk_top(const struct qv_paths *p, const struct vm_disk *k, char *path, size_t pathlen,
                    enum storage_format *fmt, struct qv_err *e)
{
    enum disk_format df = k->format;
    if (k->volume) {
        int r = vol_resolve_named(p, k->volume, path, pathlen, &df, e);
        if (r < 0)
            return r;
    } else {
        snprintf(path, pathlen, "%s", k->file ? k->file : "");
        if (df == FORMAT_PROBE && image_detect_format(path, &df, e) < 0)
            return e->code;
    }
    *fmt = df == FORMAT_QCOW2 ? STORAGE_FORMAT_QCOW2 : STORAGE_FORMAT_RAW;
    return 0;
}

bool snapshot_disk_included(const struct vm_disk *k)
{
    return !k->readonly && !k->snapshot;
}

/* VM.SNAP.qcow2 for disk0, VM-ID.SNAP.qcow2 for the others (disk1, a hotplugged
 * disk3): libvirt's habit of naming the overlay after the snapshot, in the directory
 * of the image below it. */
static int overlay_name(const char *vm, const char *id, const char *snap, char *out, size_t outlen)
{
    int n = strcmp(id, "disk0") == 0 ? snprintf(out, outlen, "%s.%s.qcow2", vm, snap)
                                     : snprintf(out, outlen, "%s-%s.%s.qcow2", vm, id, snap);
    return n < 0 || (size_t)n >= outlen || n > 64 ? -ENAMETOOLONG : 0;
}

/* One disk's entry of a new plan: sd->disk, file, format and volume are set. */
static int plan_disk(const struct vm_def *d, const char *name, bool external, struct storage_snapshot_disk *sd,
                     struct qv_err *e)
{
    if (sd->rbd && external)
        return qv_fail(e, -EINVAL, "%s: %s is the rbd volume %s: its snapshots are RBD snapshots, taken in the "
                       "cluster (leave --disk-only out)", d->name, sd->disk, sd->volume);
    if (sd->rbd)
        return 0;
    if (!external && sd->format != STORAGE_FORMAT_QCOW2)
        return qv_fail(e, -EINVAL, "%s: %s (%s) is raw; a snapshot with the guest's memory is kept inside "
                       "qcow2 images (convert it with qvisor vol import or qemu-img convert -O qcow2, mark the disk "
                       "readonly, or take a --disk-only snapshot)", d->name, sd->disk, sd->file);
    if (!external)
        return 0;
    char base[PATH_MAX], oname[128];
    snprintf(base, sizeof(base), "%s", sd->file);
    if (overlay_name(d->name, sd->disk, name, oname, sizeof(oname)) < 0)
        return qv_fail(e, -ENAMETOOLONG, "%s: snapshot %s: the overlay's name for %s would be too long "
                       "(choose a shorter snapshot name)", d->name, name, sd->disk);
    snprintf(sd->overlay, sizeof(sd->overlay), "%s/%s", dirname(base), oname);
    if (sd->volume[0]) {
        struct vol_ref ref;
        vol_ref_parse(sd->volume, &ref, NULL);
        snprintf(sd->overlay_volume, sizeof(sd->overlay_volume), "%s/%s", ref.pool, oname);
    }
    struct stat st;
    if (lstat(sd->overlay, &st) == 0)
        return qv_fail(e, -EEXIST, "%s: snapshot %s: %s's overlay %s exists already (remove it, or choose "
                       "another name)", d->name, name, sd->disk, sd->overlay);
    return 0;
}

int snapshot_plan(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                  const char *name, bool external, struct storage_snapshot *out, struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid snapshot name (1-64 of letters, digits, _ . -, not "
                       "starting with . or -)", name);
    if (d->transient)
        return qv_fail(e, -EINVAL, "%s is a transient VM: snapshots belong to defined VMs", d->name);
    char dir[PATH_MAX], rec[PATH_MAX];
    snapshot_dir(p, d->name, dir, sizeof(dir));
    snprintf(rec, sizeof(rec), "%s/%s.json", dir, name);
    if (path_exists(rec))
        return qv_fail(e, -EEXIST, "%s already has a snapshot named %s (snapshot delete it, or choose another name)",
                       d->name, name);
    snprintf(out->name, sizeof(out->name), "%s", name);
    storage_snapshot_current(dir, out->parent, sizeof(out->parent));
    out->created_ms = realtime_ms();
    out->external = external;
    size_t nlive = live ? live->n : 0;
    out->disks = qv_xcalloc(d->ndisks + nlive ? d->ndisks + nlive : 1, sizeof(*out->disks));
    int r;
    for (size_t i = 0; i < d->ndisks; i++) {
        const struct vm_disk *k = &d->disks[i];
        if (!snapshot_disk_included(k))
            continue;   /* nobody writes it, or its writes are thrown away anyway */
        struct storage_snapshot_disk *sd = &out->disks[out->ndisks];
        snprintf(sd->disk, sizeof(sd->disk), "disk%zu", i);
        if ((r = disk_top(p, k, sd->file, sizeof(sd->file), &sd->format, e)) < 0)
            goto fail;
        if (k->volume)
            snprintf(sd->volume, sizeof(sd->volume), "%s", k->volume);
        sd->rbd = k->volume && str_startswith(sd->file, "rbd:");
        if ((r = plan_disk(d, name, external, sd, e)) < 0)
            goto fail;
        out->ndisks++;
    }
    for (size_t i = 0; i < nlive; i++) {
        const struct snapshot_live_disk *l = &live->disks[i];
        if (l->readonly)
            continue;
        struct storage_snapshot_disk *sd = &out->disks[out->ndisks];
        snprintf(sd->disk, sizeof(sd->disk), "%s", l->id);
        snprintf(sd->file, sizeof(sd->file), "%s", l->file);
        snprintf(sd->volume, sizeof(sd->volume), "%s", l->volume);
        sd->format = l->format == FORMAT_QCOW2 ? STORAGE_FORMAT_QCOW2 : STORAGE_FORMAT_RAW;
        sd->hotplug = true;
        sd->rbd = sd->volume[0] && str_startswith(sd->file, "rbd:");
        if ((r = plan_disk(d, name, external, sd, e)) < 0)
            goto fail;
        out->ndisks++;
    }
    if (!out->ndisks) {
        r = qv_fail(e, -EINVAL, "%s has no disk to snapshot (read-only and throw-away disks are left out)", d->name);
        goto fail;
    }
    return 0;
fail:
    storage_snapshot_free(out);
    return r;
}

int snapshot_load_all(const struct qv_paths *p, const char *vm, struct storage_snapshot **out, size_t *n,
                      struct qv_err *e)
{
    char dir[PATH_MAX];
    snapshot_dir(p, vm, dir, sizeof(dir));
    _cleanup_strv_ struct strv names = {0};
    *out = NULL;
    *n = 0;
    int r = storage_snapshot_names(dir, &names, e);
    if (r < 0)
        return r;
    struct storage_snapshot *all = qv_xcalloc(names.n ? names.n : 1, sizeof(*all));
    for (size_t i = 0; i < names.n; i++) {
        if ((r = storage_snapshot_load(dir, names.v[i], &all[*n], e)) < 0) {
            snapshot_free_all(all, *n);
            *n = 0;
            return r;
        }
        (*n)++;
    }
    *out = all;
    return 0;
}

void snapshot_free_all(struct storage_snapshot *all, size_t n)
{
    for (size_t i = 0; i < n; i++)
        storage_snapshot_free(&all[i]);
    free(all);
}

int snapshot_count(const struct qv_paths *p, const char *vm)
{
    char dir[PATH_MAX];
    snapshot_dir(p, vm, dir, sizeof(dir));
    _cleanup_strv_ struct strv names = {0};
    storage_snapshot_names(dir, &names, NULL);
    return (int)names.n;
}

int snapshot_forget_all(const struct qv_paths *p, const char *vm, struct qv_err *e)
{
    char dir[PATH_MAX];
    snapshot_dir(p, vm, dir, sizeof(dir));
    _cleanup_strv_ struct strv names = {0};
    int r = storage_snapshot_names(dir, &names, e);
    for (size_t i = 0; r == 0 && i < names.n; i++)
        r = storage_snapshot_remove(dir, names.v[i], e);
    if (r == 0)
        r = storage_snapshot_set_current(dir, NULL, e);
    if (r == 0) {
        char lock[PATH_MAX + 8];
        snprintf(lock, sizeof(lock), "%s/.lock", dir);     /* dir_lock's, of snapshot verbs */
        unlink(lock);
        rmdir(dir);
    }
    return r;
}

/* ---- the definition follows the top ---- */

int snapshot_set_disk_images(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, bool to_overlay,
                             struct qv_err *e)
{
    for (size_t i = 0; i < s->ndisks; i++) {
        const struct storage_snapshot_disk *k = &s->disks[i];
        /* the disk is found by the image it names now */
        const char *old = to_overlay ? (k->volume[0] ? k->volume : k->file)
                                     : (k->overlay_volume[0] ? k->overlay_volume : k->overlay);
        const char *vol = to_overlay ? k->overlay_volume : k->volume;
        enum disk_format fmt = to_overlay || k->format == STORAGE_FORMAT_QCOW2 ? FORMAT_QCOW2 : FORMAT_RAW;
        int r = vm_disk_image_update(p, vm, old, vol[0] ? vol : NULL, to_overlay ? k->overlay : k->file, fmt, e);
        if (r < 0)
            return qv_prefix(e, "%s: %s: ", vm, k->disk);
    }
    return 0;
}

/* ---- records ---- */

int snapshot_record(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, struct qv_err *e)
{
    char dir[PATH_MAX];
    snapshot_dir(p, vm, dir, sizeof(dir));
    int r = storage_snapshot_save(dir, s, e);
    if (r == 0)
        r = storage_snapshot_set_current(dir, s->name, e);
    return r;
}

/* The snapshot's children go to its parent, and so does "current". */
int snapshot_unrecord(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, struct qv_err *e)
{
    char dir[PATH_MAX], cur[65];
    snapshot_dir(p, vm, dir, sizeof(dir));
    struct storage_snapshot *all;
    size_t n;
    int r = snapshot_load_all(p, vm, &all, &n, e);
    for (size_t i = 0; r == 0 && i < n; i++) {
        if (strcmp(all[i].parent, s->name) != 0)
            continue;
        snprintf(all[i].parent, sizeof(all[i].parent), "%s", s->parent);
        r = storage_snapshot_save(dir, &all[i], e);
    }
    if (r == 0) {
        snapshot_free_all(all, n);
        storage_snapshot_current(dir, cur, sizeof(cur));
        if (strcmp(cur, s->name) == 0)
            r = storage_snapshot_set_current(dir, s->parent, e);
    }
    return r < 0 ? r : storage_snapshot_remove(dir, s->name, e);
}

/* ---- what may change, for revert and delete ---- */

static const struct storage_snapshot_disk *disk_of(const struct storage_snapshot *s, const char *disk)
{
    for (size_t i = 0; i < s->ndisks; i++)
        if (strcmp(s->disks[i].disk, disk) == 0)
            return &s->disks[i];
    return NULL;
}

/* One disk of external s merged (its overlay's data now in the image below): a
 * snapshot whose overlay sat on that overlay rests on the image below now, and the
 * disk leaves s's record; with its last disk the record goes (snapshot_unrecord).
 * Each record is written atomically; a disk the record no longer has is done. */
int snapshot_disk_merged(const struct qv_paths *p, const char *vm, const char *name, const char *disk,
                         struct qv_err *e)
{
    char dir[PATH_MAX];
    snapshot_dir(p, vm, dir, sizeof(dir));
    _cleanup_snapshot_ struct storage_snapshot s = {0};
    int r = storage_snapshot_load(dir, name, &s, e);
    if (r < 0)
        return r == -ENOENT ? 0 : r;
    size_t at = s.ndisks;
    for (size_t i = 0; i < s.ndisks; i++)
        if (strcmp(s.disks[i].disk, disk) == 0)
            at = i;
    if (at == s.ndisks)
        return 0;
    const struct storage_snapshot_disk *k = &s.disks[at];
    struct storage_snapshot *all;
    size_t n;
    if ((r = snapshot_load_all(p, vm, &all, &n, e)) < 0)
        return r;
    for (size_t i = 0; r == 0 && i < n; i++) {
        struct storage_snapshot_disk *ak = all[i].external ? (struct storage_snapshot_disk *)disk_of(&all[i], disk)
                                                           : NULL;
        if (!ak || strcmp(all[i].name, name) == 0 || strcmp(ak->file, k->overlay) != 0)
            continue;
        snprintf(ak->file, sizeof(ak->file), "%s", k->file);
        snprintf(ak->volume, sizeof(ak->volume), "%s", k->volume);
        ak->format = k->format;
        r = storage_snapshot_save(dir, &all[i], e);
    }
    snapshot_free_all(all, n);
    if (r < 0)
        return r;
    if (s.ndisks == 1)
        return snapshot_unrecord(p, vm, &s, e);
    memmove(&s.disks[at], &s.disks[at + 1], (s.ndisks - at - 1) * sizeof(s.disks[0]));
    s.ndisks--;
    return storage_snapshot_save(dir, &s, e);
}

/* The disk's top as the definition names it now, or for a hotplugged disk as the
 * running VM has it: never a definition's disk of the same id. */
static int current_top(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                       const struct storage_snapshot *s, const struct storage_snapshot_disk *k, char *path,
                       size_t pathlen, struct qv_err *e)
{
    size_t idx;
    enum storage_format fmt;
    if (k->hotplug) {
        for (size_t i = 0; live && i < live->n; i++)
            if (strcmp(live->disks[i].id, k->disk) == 0) {
                snprintf(path, pathlen, "%s", live->disks[i].file);
                return 0;
            }
        return qv_fail(e, -ENOENT, "%s: snapshot %s: %s (%s) was attached to the running VM when the snapshot was "
                       "taken and is not attached now (detached, or the VM was restarted since): qvisor touches no "
                       "other disk in its place", d->name, s->name, k->disk, s->external ? k->overlay : k->file);
    }
    if (sscanf(k->disk, "disk%zu", &idx) != 1 || idx >= d->ndisks)
        return qv_fail(e, -ENOENT, "%s: the definition has no %s any more", d->name, k->disk);
    return disk_top(p, &d->disks[idx], path, pathlen, &fmt, e);
}

/* Other snapshots whose internal state lives in `file`: a new or merged image there
 * would lose them. */
static int internal_users(const struct storage_snapshot *all, size_t n, const char *except, const char *file,
                          char *who, size_t wholen)
{
    who[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        if (all[i].external || strcmp(all[i].name, except) == 0)
            continue;
        for (size_t j = 0; j < all[i].ndisks; j++)
            if (strcmp(all[i].disks[j].file, file) == 0) {
                snprintf(who + strlen(who), wholen - strlen(who), "%s%s", who[0] ? ", " : "", all[i].name);
                break;
            }
    }
    return who[0] ? -EBUSY : 0;
}

/* The external snapshot whose overlay sits directly on `file` for `disk`. */
static struct storage_snapshot *external_above(struct storage_snapshot *all, size_t n, const char *disk,
                                               const char *file)
{
    for (size_t i = 0; i < n; i++) {
        const struct storage_snapshot_disk *k = all[i].external ? disk_of(&all[i], disk) : NULL;
        if (k && strcmp(k->file, file) == 0)
            return &all[i];
    }
    return NULL;
}

int snapshot_check_revert(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                          const struct storage_snapshot *s, struct qv_err *e)
{
    struct storage_snapshot *all;
    size_t n;
    char top[PATH_MAX], who[512];
    /* a hotplugged disk that is gone says so first: nothing else is to be done about it */
    for (size_t i = 0; i < s->ndisks; i++)
        if (s->disks[i].hotplug && current_top(p, d, live, s, &s->disks[i], top, sizeof(top), e) < 0)
            return e->code;
    int r = snapshot_load_all(p, d->name, &all, &n, e);
    for (size_t i = 0; r == 0 && i < s->ndisks; i++) {
        const struct storage_snapshot_disk *k = &s->disks[i];
        if ((r = current_top(p, d, live, s, k, top, sizeof(top), e)) < 0)
            break;
        const char *want = s->external ? k->overlay : k->file;
        if (strcmp(top, want) != 0)
            r = qv_fail(e, -EBUSY, "%s: cannot revert to %s: %s has moved on to %s since (external snapshots "
                        "were taken after it; delete those first, which merges them)", d->name, s->name, k->disk,
                        top);
        else if (s->external && internal_users(all, n, s->name, k->overlay, who, sizeof(who)) < 0)
            r = qv_fail(e, -EBUSY, "%s: cannot revert to %s: snapshot %s lives in its overlay %s (delete it first)",
                        d->name, s->name, who, k->overlay);
    }
    snapshot_free_all(all, n);
    return r;
}

int snapshot_check_delete(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                          const struct storage_snapshot *s, struct storage_snapshot *all, size_t n, struct qv_err *e)
{
    char top[PATH_MAX], who[512];
    int r;
    for (size_t i = 0; !s->external && i < s->ndisks; i++)
        if (s->disks[i].hotplug && (r = current_top(p, d, live, s, &s->disks[i], top, sizeof(top), e)) < 0)
            return r;   /* its image may be anyone's now */
    if (!s->external)
        return 0;
    for (size_t i = 0; i < s->ndisks; i++) {
        const struct storage_snapshot_disk *k = &s->disks[i];
        if ((r = current_top(p, d, live, s, k, top, sizeof(top), e)) < 0)
            return r;
        if (internal_users(all, n, s->name, k->overlay, who, sizeof(who)) < 0)
            return qv_fail(e, -EBUSY, "%s: cannot delete %s: snapshot %s lives in its overlay %s, which the merge "
                           "removes (delete %s first)", d->name, s->name, who, k->overlay, who);
        if (strcmp(top, k->overlay) != 0 && !external_above(all, n, k->disk, k->overlay))
            return qv_fail(e, -EBUSY, "%s: cannot delete %s: %s's overlay %s is no longer in its chain (its top is %s)",
                           d->name, s->name, k->disk, k->overlay, top);
    }
    return 0;
}

/* ---- rbd disks: RBD snapshots through librbd ---- */

static int rbd_snap(const struct qv_paths *p, const struct storage_snapshot_disk *k, char op, const char *name,
                    struct qv_err *e)
{
    struct vol_ref ref;
    _cleanup_pool_def_ struct pool_def pd = {0};
    int r;
    if ((r = vol_ref_parse(k->volume, &ref, e)) < 0 || (r = pool_load(p, ref.pool, &pd, e)) < 0)
        return r;
    struct storage_pool sp = pool_storage(&pd);
    return storage_rbd_snapshot(&sp, ref.name, op, name, e);
}

int snapshot_create_rbd(const struct qv_paths *p, const struct vm_def *d, struct storage_snapshot *s, const char *state,
                        struct qv_err *e)
{
    STORAGE_RBD_HELD;   /* one connection per pool, not per disk (the guest is paused meanwhile) */
    int r = 0;
    size_t done = 0;
    for (; done < s->ndisks; done++)
        if ((r = rbd_snap(p, &s->disks[done], 'c', s->name, e)) < 0) {
            qv_prefix(e, "%s: %s: ", d->name, s->disks[done].disk);
            break;
        }
    if (r < 0) {
        /* all or nothing: what was made goes again; a create that timed out may have
         * been made all the same. What cannot be removed now is said. */
        size_t made = done + (r == -ETIMEDOUT && done < s->ndisks);
        _cleanup_strv_ struct strv left = {0};
        for (size_t i = 0; i < made; i++) {
            struct qv_err de = {0};
            int dr = rbd_snap(p, &s->disks[i], 'd', s->name, &de);
            if (dr < 0 && dr != -ENOENT)
                strv_pushf(&left, "%s@%s", s->disks[i].volume, s->name);
        }
        if (left.n) {
            _cleanup_free_ char *l = strv_join((const char *const *)left.v, ", ");
            _cleanup_free_ char *why = qv_xstrdup(e ? e->msg : "");
            return qv_fail(e, r, "%s; left behind, as the cluster did not answer: RBD snapshot%s %s (vol info lists "
                           "them; rbd snap rm)", why, left.n > 1 ? "s" : "", l);
        }
        return r;
    }
    snprintf(s->state, sizeof(s->state), "%s", state);
    s->memory = false;
    return snapshot_record(p, d->name, s, e);
}

/* ---- a shut-off VM: qemu-img ---- */

static int undo_overlays(const struct storage_snapshot *s, size_t made)
{
    for (size_t i = 0; i < made; i++)
        unlink(s->disks[i].overlay);
    return 0;
}

int snapshot_create_offline(const struct qv_paths *p, const struct vm_def *d, struct storage_snapshot *s,
                            struct qv_err *e)
{
    STORAGE_RBD_HELD;
    int r = 0;
    snprintf(s->state, sizeof(s->state), "shutoff");
    s->memory = false;
    size_t done = 0;
    for (; r == 0 && done < s->ndisks; done++) {
        const struct storage_snapshot_disk *k = &s->disks[done];
        r = k->rbd ? rbd_snap(p, k, 'c', s->name, e)
            : s->external ? storage_img_overlay(k->overlay, k->file, k->format, 0, e)
                          : storage_img_snapshot(k->file, 'c', s->name, e);
        if (r < 0) {
            qv_prefix(e, "%s: %s: ", d->name, k->disk);
            break;
        }
    }
    if (r < 0) {
        /* what was made for the other disks goes again: all or nothing */
        for (size_t i = 0; i < done; i++)
            if (s->disks[i].rbd)
                rbd_snap(p, &s->disks[i], 'd', s->name, NULL);
            else if (!s->external)
                storage_img_snapshot(s->disks[i].file, 'd', s->name, NULL);
        if (s->external)
            undo_overlays(s, done);
        return r;
    }
    if (s->external && (r = snapshot_set_disk_images(p, d->name, s, true, e)) < 0) {
        undo_overlays(s, s->ndisks);
        return r;
    }
    return snapshot_record(p, d->name, s, e);
}

int snapshot_revert_offline(const struct qv_paths *p, const struct vm_def *d, const struct storage_snapshot *s,
                            struct qv_err *e)
{
    STORAGE_RBD_HELD;
    int r = snapshot_check_revert(p, d, NULL, s, e);
    for (size_t i = 0; r == 0 && i < s->ndisks; i++) {
        const struct storage_snapshot_disk *k = &s->disks[i];
        /* external: an empty overlay again on the image as it was then */
        r = k->rbd ? rbd_snap(p, k, 'a', s->name, e)
            : s->external ? storage_img_overlay(k->overlay, k->file, k->format, 0, e)
                          : storage_img_snapshot(k->file, 'a', s->name, e);
        if (r < 0)
            qv_prefix(e, "%s: %s: ", d->name, k->disk);
    }
    if (r < 0)
        return r;
    char dir[PATH_MAX];
    snapshot_dir(p, d->name, dir, sizeof(dir));
    return storage_snapshot_set_current(dir, s->name, e);
}

int snapshot_delete_offline(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                            const struct storage_snapshot *s, struct qv_err *e)
{
    STORAGE_RBD_HELD;
    struct storage_snapshot *all;
    size_t n;
    int r = snapshot_load_all(p, d->name, &all, &n, e);
    if (r < 0)
        return r;
    if ((r = snapshot_check_delete(p, d, live, s, all, n, e)) < 0)
        goto out;
    char dir[PATH_MAX], top[PATH_MAX];
    snapshot_dir(p, d->name, dir, sizeof(dir));
    bool redefine = false;
    for (size_t i = 0; r == 0 && i < s->ndisks; i++) {
        const struct storage_snapshot_disk *k = &s->disks[i];
        if (k->rbd) {
            struct qv_err de = {0};
            /* one someone deleted in the cluster: the record still goes */
            if ((r = rbd_snap(p, k, 'd', s->name, &de)) == -ENOENT)
                r = 0;
            else if (r < 0)
                qv_fail(e, r, "%s: %s: %s", d->name, k->disk, de.msg);
            continue;
        }
        if (!s->external) {
            bool found = true;
            /* an image someone removed or emptied: the record still goes */
            if (!path_exists(k->file) || storage_img_snapshot_exists(k->file, s->name, &found, NULL) < 0 || !found)
                continue;
            if ((r = storage_img_snapshot(k->file, 'd', s->name, e)) < 0)
                qv_prefix(e, "%s: %s: ", d->name, k->disk);
            continue;
        }
        /* the overlay's data goes down into the image below it */
        if ((r = storage_img_commit(k->overlay, e)) < 0) {
            qv_prefix(e, "%s: %s: merging %s into %s: ", d->name, k->disk, k->overlay, k->file);
            break;
        }
        current_top(p, d, NULL, s, k, top, sizeof(top), NULL);
        struct storage_snapshot *above = strcmp(top, k->overlay) == 0 ? NULL : external_above(all, n, k->disk, k->overlay);
        if (above) {
            /* a later overlay was built on this one: it now rests on the merged image */
            struct storage_snapshot_disk *ak = (struct storage_snapshot_disk *)disk_of(above, k->disk);
            if ((r = storage_img_rebase_unsafe(ak->overlay, k->file, k->format, e)) < 0) {
                qv_prefix(e, "%s: %s: ", d->name, k->disk);
                break;
            }
            snprintf(ak->file, sizeof(ak->file), "%s", k->file);
            snprintf(ak->volume, sizeof(ak->volume), "%s", k->volume);
            ak->format = k->format;
            if ((r = storage_snapshot_save(dir, above, e)) < 0)
                break;
        } else {
            redefine = true;
        }
    }
    if (r == 0 && redefine) {
        /* only the disks whose top was this overlay go back to the image below */
        struct storage_snapshot back = *s;
        struct storage_snapshot_disk *ks = qv_xcalloc(s->ndisks, sizeof(*ks));
        back.ndisks = 0;
        for (size_t i = 0; i < s->ndisks; i++)
            if (current_top(p, d, NULL, s, &s->disks[i], top, sizeof(top), NULL) == 0 && strcmp(top, s->disks[i].overlay) == 0)
                ks[back.ndisks++] = s->disks[i];
        back.disks = ks;
        r = snapshot_set_disk_images(p, d->name, &back, false, e);
        free(ks);
    }
    if (r == 0 && s->external)
        for (size_t i = 0; i < s->ndisks; i++)
            unlink(s->disks[i].overlay);
    if (r == 0)
        r = snapshot_unrecord(p, d->name, s, e);
out:
    snapshot_free_all(all, n);
    return r;
}
