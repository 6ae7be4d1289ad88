/* qvisor clone (virt-clone): a new VM from a shut-off one, with its own uuid and MACs
 * and its own copies of the writable disks. A full clone copies each disk into a new
 * volume (the whole chain, flattened). A linked clone copies nothing: the clone gets a
 * qcow2 overlay on the source's image, and so does the source VM, so that the shared
 * image is written by neither from then on; an rbd volume's linked clone is an RBD
 * copy-on-write clone of a protected snapshot of it (clone-NEW), which the source
 * VM writes past as before. Read-only disks stay shared. Everything made is removed
 * again when a later step fails. */
#include <stdlib.h>
#include <string.h>

#include "launcher/model/model.h"
#include "launcher/model/storedef.h"

struct clone_made {
    struct strv volumes;        /* created, removed on failure */
    struct strv snaps;          /* RBD snapshots made for linked clones: POOL/IMAGE@SNAP */
};

/* op 'u' of storage_rbd_snapshot on POOL/IMAGE@SNAP */
static void rbd_snap_drop(const struct qv_paths *p, const char *at)
{
    char ref[160];
    const char *snap = strrchr(at, '@');
    struct vol_ref vr;
    _cleanup_pool_def_ struct pool_def pd = {0};
    if (!snap || (size_t)(snap - at) >= sizeof(ref))
        return;
    snprintf(ref, sizeof(ref), "%.*s", (int)(snap - at), at);
    if (vol_ref_parse(ref, &vr, NULL) < 0 || pool_load(p, vr.pool, &pd, NULL) < 0)
        return;
    struct storage_pool sp = pool_storage(&pd);
    storage_rbd_snapshot(&sp, vr.name, 'u', snap + 1, NULL);
}

static void undo(const struct qv_paths *p, struct clone_made *m)
{
    for (size_t i = 0; i < m->volumes.n; i++)
        volume_delete(p, m->volumes.v[i], true, NULL);
    for (size_t i = 0; i < m->snaps.n; i++)     /* once their clones are gone */
        rbd_snap_drop(p, m->snaps.v[i]);
}

/* The pool and format a disk's copy goes to: a volume's own pool, else default. */
static int disk_source(const struct qv_paths *p, const struct vm_disk *k, char *pool, size_t poollen, char *path,
                       size_t pathlen, enum disk_format *fmt, struct qv_err *e)
{
    if (k->volume) {
        struct vol_ref ref;
        int r = vol_ref_parse(k->volume, &ref, e);
        if (r < 0 || (r = vol_resolve(p, k->volume, path, pathlen, fmt, e)) < 0)
            return r;
        snprintf(pool, poollen, "%s", ref.pool);
        return 0;
    }
    snprintf(pool, poollen, "default");
    snprintf(path, pathlen, "%s", k->file);
    *fmt = k->format == FORMAT_PROBE ? FORMAT_RAW : k->format;
    return 0;
}

static json_object *disks_of(json_object *o)
{
    json_object *a = NULL;
    json_object_object_get_ex(o, "disks", &a);
    return a;
}

static void name_volume(json_object *disk, const char *ref)
{
    json_object_object_del(disk, "file");
    json_object_object_del(disk, "format");
    json_object_object_add(disk, "volume", json_object_new_string(ref));
}

int vm_clone(const struct qv_paths *p, const char *src_name, const char *new_name, bool linked,
             const struct storage_progress *prog, struct qv_err *e)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(p, src_name, &d, e);
    if (r < 0)
        return r;
    if (!name_valid(new_name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid VM name", new_name);
    char path[PATH_MAX];
    vm_def_path(p, new_name, path, sizeof(path));
    if (path_exists(path))
        return qv_fail(e, -EEXIST, "%s is already defined; choose another name for the clone", new_name);
    struct vm_runstate rs;
    bool supervised;
    vm_observe(p, src_name, &rs, &supervised);
    bool active = supervised || (rs.state != VM_SHUTOFF && rs.state != VM_CRASHED);
    runstate_free(&rs);
    if (active)
        return qv_fail(e, -EBUSY, "%s is running; its disks change under a copy (stop it first)", src_name);

    _cleanup_json_ json_object *clone = vm_def_to_json(&d), *source = vm_def_to_json(&d);
    json_object_object_add(clone, "name", json_object_new_string(new_name));
    json_object_object_del(clone, "uuid");
    json_object *nics = NULL;
    if (json_object_object_get_ex(clone, "nics", &nics))
        for (size_t i = 0; i < json_object_array_length(nics); i++)
            json_object_object_del(json_object_array_get_idx(nics, i), "mac");

    struct clone_made made = {0};
    for (size_t i = 0; r == 0 && i < d.ndisks; i++) {
        const struct vm_disk *k = &d.disks[i];
        if (k->readonly)
            continue;   /* nobody writes it: both VMs read the same image */
        char pool[65], src[PATH_MAX], ref[160];
        enum disk_format fmt;
        if ((r = disk_source(p, k, pool, sizeof(pool), src, sizeof(src), &fmt, e)) < 0) {
            qv_prefix(e, "%s: disks[%zu]: ", src_name, i);
            break;
        }
        snprintf(ref, sizeof(ref), "%s/%s-disk%zu", pool, new_name, i);
        enum storage_format sf = fmt == FORMAT_QCOW2 ? STORAGE_FORMAT_QCOW2 : STORAGE_FORMAT_RAW;
        if (linked && str_startswith(src, "rbd:")) {
            /* RBD layering: the clone reads a protected snapshot of the source's image */
            char snap[80], at[240];
            bool snap_made = false;
            if (snprintf(snap, sizeof(snap), "clone-%s", new_name) > 64) {
                r = qv_fail(e, -ENAMETOOLONG, "%s: disks[%zu]: the RBD snapshot clone-%s would be too long a name "
                            "(choose a shorter name for the clone)", src_name, i, new_name);
                break;
            }
            r = volume_clone_cow(p, k->volume, snap, ref, &snap_made, e);
            if (snap_made) {
                snprintf(at, sizeof(at), "%s@%s", k->volume, snap);
                strv_push(&made.snaps, at);
            }
            if (r < 0) {
                qv_prefix(e, "%s: disks[%zu]: ", src_name, i);
                break;
            }
            strv_push(&made.volumes, ref);
        } else if (linked) {
            struct volume_create_args a = {.format = STORAGE_FORMAT_QCOW2, .backing = src};
            if ((r = volume_create(p, ref, &a, e)) < 0)
                break;
            strv_push(&made.volumes, ref);
            /* the source VM moves onto an overlay of its own: the shared image is frozen */
            char top[160];
            snprintf(top, sizeof(top), "%s/%s-disk%zu-top", pool, src_name, i);
            if ((r = volume_create(p, top, &a, e)) < 0)
                break;
            strv_push(&made.volumes, top);
            name_volume(json_object_array_get_idx(disks_of(source), i), top);
        } else {
            struct storage_img si;
            if (k->volume)
                r = volume_img(p, k->volume, "qv-src", &si, e);
            else
                storage_img_file(&si, src, sf);
            if (r < 0 || (r = volume_copy_in(p, ref, &si, sf, prog, e)) < 0)
                break;
            strv_push(&made.volumes, ref);
        }
        name_volume(json_object_array_get_idx(disks_of(clone), i), ref);
    }
    _cleanup_vm_def_ struct vm_def out = {0}, src_out = {0};
    if (r == 0 && (r = vm_define(p, clone, false, &out, e)) == 0 && linked &&
        (r = vm_define(p, source, true, &src_out, e)) < 0)
        vm_undefine(p, new_name, NULL);
    if (r < 0)
        undo(p, &made);
    strv_free(&made.volumes);
    strv_free(&made.snaps);
    return r;
}
