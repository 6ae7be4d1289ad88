/* launcher/model: what a VM's disks are made of beyond its definition: the disks
 * resolved at start (volumes, backing chains, rbd nodes), secrets, storage pools,
 * volumes, snapshots and clones (volume.c, secret.c, pooldef.c, snapshot.c,
 * clone.c; the rbd node in argv.c). */
#ifndef QV_MODEL_STOREDEF_H
#define QV_MODEL_STOREDEF_H

#include "launcher/model/model.h"

/* At start: each volume disk's file and format from its volume, and every disk's
 * backing chain opened, checked (missing layers, loops, protocols) and recorded in
 * disk->backing for the launch plan. Errors name the VM, the disk and the volume. */
int vm_resolve_disks(const struct qv_paths *p, struct vm_def *d, struct qv_err *e);
void vm_disk_rbd_free(struct vm_disk_rbd *r);   /* and the struct itself */
/* The blockdev node of an rbd disk: pool, image, monitors, user, and key-secret
 * `key_secret` (NULL: auth none), with the cache and read-only flags of its disk. */
json_object *blockdev_rbd(const char *node, const struct vm_disk_rbd *r, const char *key_secret,
                          const struct disk_io *io, bool discard, bool readonly);
/* The same for one disk (a hotplugged one). */
int vm_resolve_disk(const struct qv_paths *p, struct vm_disk *k, struct qv_err *e);
/* fd, just opened by path for layer `layer` of k (0: the top, j + 1: backing[j]), is the
 * file vm_resolve_disk checked: one put in its place since (a rename over it) is refused
 * with -ESTALE, so QEMU never gets a layer nobody checked. */
int vm_disk_check_fd(const struct vm_disk *k, size_t layer, int fd, struct qv_err *e);

/* ---- secrets: etc/qvisor/secrets/NAME (the value) + NAME.json (uuid, usage, description) ----
 * 0600 files in a 0700 directory, written atomically. A value file alone (written by hand)
 * is a secret without a usage. Values leave only through secret_read_value. */
struct secret_def {
    char *name;
    char uuid[37];          /* "" for a value file without its NAME.json */
    char *usage;            /* "ceph:client.libvirt", or NULL */
    char *description;
    bool has_value;
};
void secret_def_free(struct secret_def *d);
#define _cleanup_secret_def_ _cleanup_(secret_def_free)
int secret_load(const struct qv_paths *p, const char *name, struct secret_def *d, struct qv_err *e);
int secret_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e);
/* Defines NAME, or updates the usage/description given (*updated); the value stays.
 * -EEXIST when another secret has the usage. */
int secret_define(const struct qv_paths *p, const char *name, const char *usage, const char *description,
                  struct secret_def *out, bool *updated, struct qv_err *e);
/* The value (trailing newlines dropped; no NUL, at most 4 KiB); e never holds it. */
int secret_set_value(const struct qv_paths *p, const char *name, const char *value, size_t len, struct qv_err *e);
/* The file holding the value, for a library that reads a key file itself (librados). */
void secret_value_path(const struct qv_paths *p, const char *name, char *out, size_t n);
/* The value into *out (the caller wipes and frees it); -EPERM when others may read the file. */
int secret_read_value(const struct qv_paths *p, const char *name, char **out, struct qv_err *e);
/* "web1 (running)" for every running VM that uses the secret. */
int secret_users(const struct qv_paths *p, const char *name, struct strv *users, struct qv_err *e);
/* -EBUSY naming the users; the value and the metadata go. */
int secret_undefine(const struct qv_paths *p, const char *name, struct qv_err *e);

/* ---- storage pools: etc/qvisor/pools/NAME.json -------------------------------------------- */
struct pool_def {
    char *name;
    char *type;             /* a storage backend's type: "dir", "rbd" */
    char *path;             /* dir: the directory, absolute */
    /* rbd: {"pool": "rbd", "monitors": ["HOST[:PORT]", ...] and/or "ceph_conf": "/abs",
     * "user": "libvirt", "secret": "NAME"} (user defaults to admin; no secret: auth none) */
    char *rbd_pool;
    struct strv monitors;
    char *ceph_conf;
    char *user;
    char *secret;
    char *keyfile;          /* the secret's value file, set by pool_load/pool_define; never in JSON */
};
void pool_def_free(struct pool_def *d);    /* leaves it zeroed */
#define _cleanup_pool_def_ _cleanup_(pool_def_free)
int pool_def_from_json(json_object *o, struct pool_def *d, struct qv_err *e);
json_object *pool_def_to_json(const struct pool_def *d);
int pool_def_path(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* The backend's view of the pool (borrows d's strings), and its backend row. */
struct storage_pool pool_storage(const struct pool_def *d);
const struct storage_backend *pool_backend(const struct pool_def *d);
/* "default" (a dir pool at var/lib/qvisor/images) is defined on first use. */
int pool_load(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e);
/* The definition alone: no key file bound (a secret without a value does not fail it). */
int pool_read(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e);
/* pool_load, and the pool's place exists (a dir pool's directory is made). */
int pool_open(const struct qv_paths *p, const char *name, struct pool_def *d, struct qv_err *e);
/* Validates, refuses a directory another pool has, makes the directory, writes atomically. */
int pool_define(const struct qv_paths *p, json_object *o, bool replace, struct pool_def *out, struct qv_err *e);
/* -EBUSY naming the VMs whose disks are volumes of the pool. The volumes stay. */
int pool_undefine(const struct qv_paths *p, const char *name, struct qv_err *e);
int pool_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e);
/* "web1 (running)" for every VM with a disk in the pool. */
int pool_users(const struct qv_paths *p, const char *pool, struct strv *users, struct qv_err *e);

/* ---- volumes: "POOL/NAME" ------------------------------------------------------------------- */
struct vol_ref {
    char pool[65];
    char name[65];
};
/* -EINVAL unless s is POOL/NAME with two valid names. */
int vol_ref_parse(const char *s, struct vol_ref *out, struct qv_err *e);
/* The reference "POOL/NAME" parsed into *ref, the pool (opened) and the volume's info;
 * -EINVAL for a bad reference, -ENOENT naming what is missing. */
int vol_lookup(const struct qv_paths *p, const char *refs, struct vol_ref *ref, struct pool_def *pd,
               struct storage_vol_info *vi, struct qv_err *e);
/* vol_lookup's three results in one, freed at the end of its scope. */
struct vol_found {
    struct vol_ref ref;
    struct pool_def pd;
    struct storage_vol_info vi;
};
void vol_found_free(struct vol_found *v);
#define _cleanup_vol_found_ _cleanup_(vol_found_free)
int vol_find(const struct qv_paths *p, const char *refs, struct vol_found *v, struct qv_err *e);
/* The image path of volume `ref` ("default/web1") and its format (may be NULL). */
int vol_resolve(const struct qv_paths *p, const char *ref, char *path, size_t pathlen, enum disk_format *fmt,
                struct qv_err *e);
/* vol_resolve without asking a cluster: a volume of an rbd pool is "rbd:CEPHPOOL/NAME"
 * (raw) from the definitions alone, whether or not the image exists. */
int vol_resolve_named(const struct qv_paths *p, const char *ref, char *path, size_t pathlen, enum disk_format *fmt,
                      struct qv_err *e);
/* Where a new volume `ref` of a dir pool will be (a block copy creates it there
 * itself); -EEXIST when the volume exists, -EOPNOTSUPP for other pool types. */
int vol_new_path(const struct qv_paths *p, const char *ref, char *path, size_t pathlen, struct qv_err *e);
/* "web1 (running)", "db (defined)": VMs with a disk whose chain holds the file at `path`. */
int vol_users(const struct qv_paths *p, const struct vol_ref *ref, const char *path, struct strv *users,
              struct qv_err *e);
/* "default/web1-overlay": volumes of every pool with `path` below their top layer. */
int vol_dependents(const struct qv_paths *p, const char *path, struct strv *deps, struct qv_err *e);

struct volume_create_args {
    uint64_t size;          /* 0: the backing file's */
    enum storage_format format; /* PROBE: the pool's (qcow2 in a dir pool, raw in an rbd pool) */
    const char *backing;    /* POOL/VOL or an absolute path; NULL: none */
    enum storage_prealloc prealloc;
};
int volume_create(const struct qv_paths *p, const char *ref, const struct volume_create_args *a, struct qv_err *e);
/* Refused (-EBUSY) when other volumes are built on it, or (unless force) VMs use it. */
#define VOL_DELETE_FORCE 1u         /* even while VMs use it */
#define VOL_DELETE_SNAPSHOTS 2u     /* rbd: with its snapshots (never while they have clones) */
int volume_delete(const struct qv_paths *p, const char *ref, unsigned flags, struct qv_err *e);
/* size "20G" or "+5G"; shrinking needs allow_shrink, and force when VMs use it. */
int volume_resize(const struct qv_paths *p, const char *ref, const char *size, bool allow_shrink, bool force,
                  uint64_t *new_size, struct qv_err *e);
/* The volumes of d's volume disks that may go with it (undefine --remove-storage), into
 * refs; -EBUSY naming the first that another VM uses or other volumes are built on. */
int vm_volumes_removable(const struct qv_paths *p, const struct vm_def *d, struct strv *refs, struct qv_err *e);
/* virt-clone: NEW from the shut-off VM src, new uuid and MACs; writable disks copied into
 * new volumes POOL/NEW-diskN (a volume's own pool, else default), or, when `linked`,
 * given qcow2 overlays on the shared image, the source VM moving onto an overlay
 * POOL/SRC-diskN-top of its own. Nothing stays behind when a step fails. */
int vm_clone(const struct qv_paths *p, const char *src, const char *new_name, bool linked,
             const struct storage_progress *prog, struct qv_err *e);
/* A new volume `ref` holding a full copy of `src`, converted to `format`. */
int volume_copy_in(const struct qv_paths *p, const char *ref, const struct storage_img *src,
                   enum storage_format format, const struct storage_progress *prog, struct qv_err *e);
/* How qemu-img opens volume `ref` (its key, if any, through an --object named secret_id). */
int volume_img(const struct qv_paths *p, const char *ref, const char *secret_id, struct storage_img *out,
               struct qv_err *e);
/* A copy-on-write clone `dstref` of `srcref` at snapshot `snap` (rbd), the snapshot
 * made (*snap_made) and protected as needed. */
int volume_clone_cow(const struct qv_paths *p, const char *srcref, const char *snap, const char *dstref,
                     bool *snap_made, struct qv_err *e);
/* A copy of the volume (its whole chain) in the file `dest`, which must not exist:
 * written to dest.part-PID and renamed when complete. Format: the volume's unless given. */
int volume_export(const struct qv_paths *p, const char *ref, const char *dest, bool have_format,
                  enum storage_format format, const struct storage_progress *prog, struct qv_err *e);
/* What the guest sees, as raw bytes, written to fd `out` (a pipe). */
int volume_export_raw_fd(const struct qv_paths *p, const char *ref, int out, const struct storage_progress *prog,
                         struct qv_err *e);

/* ---- snapshots: var/lib/qvisor/snapshots/VM/ ---------------------------------------------- */
int snapshot_dir(const struct qv_paths *p, const char *vm, char *out, size_t outlen);
/* A disk that snapshots take part in: written by the guest and kept (not readonly,
 * not a throw-away overlay). */
bool snapshot_disk_included(const struct vm_disk *k);
/* A new snapshot NAME of d: the disks that take part with their current tops (and,
 * external, the overlays to make, VM.NAME.qcow2 beside each top), parent = the current
 * snapshot. Refused: a name taken (-EEXIST), a raw disk for an internal snapshot
 * (naming the disk and the ways out), an overlay that exists, no disk at all. */
/* live: the disks attached to the running VM (its supervisor's; NULL when shut off):
 * they take part too, their record entries marked "hotplug" and named by device id. */
struct snapshot_live_disk {
    char id[24];                /* the device: disk3 */
    char file[PATH_MAX];        /* its top image now */
    char volume[160];           /* POOL/NAME when it was attached as a volume; "" else */
    enum disk_format format;
    bool readonly;
};
struct snapshot_live {
    const struct snapshot_live_disk *disks;
    size_t n;
};
int snapshot_plan(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                  const char *name, bool external, struct storage_snapshot *out, struct qv_err *e);
/* Every record, sorted by name; free with snapshot_free_all. */
int snapshot_load_all(const struct qv_paths *p, const char *vm, struct storage_snapshot **out, size_t *n,
                      struct qv_err *e);
void snapshot_free_all(struct storage_snapshot *all, size_t n);
int snapshot_count(const struct qv_paths *p, const char *vm);
/* Removes the records (not the images): undefine --snapshots-metadata. */
int snapshot_forget_all(const struct qv_paths *p, const char *vm, struct qv_err *e);
/* The definition's disks of s name their overlays (to_overlay) or the images below
 * them again; written atomically through vm_define. */
int snapshot_set_disk_images(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, bool to_overlay,
                             struct qv_err *e);
/* Writes s's record and makes it the current snapshot. */
int snapshot_record(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, struct qv_err *e);
/* Removes s's record; its children and "current" go to its parent. */
int snapshot_unrecord(const struct qv_paths *p, const char *vm, const struct storage_snapshot *s, struct qv_err *e);
/* Disk `disk` of external snapshot `name` was merged into the image below its
 * overlay: the snapshot whose overlay rested on that overlay rests on the image below
 * now, and the disk leaves the record (the record goes with its last disk, as
 * snapshot_unrecord). Idempotent: a record without the disk, or none, is done. */
int snapshot_disk_merged(const struct qv_paths *p, const char *vm, const char *name, const char *disk,
                         struct qv_err *e);
/* -EBUSY when the disks have moved on since s (a later external snapshot), or a later
 * internal snapshot (of the VM's records, read here) lives in the overlay a revert of
 * external s would empty. */
/* A hotplugged disk of s that live does not hold (detached, the VM restarted or shut
 * off since) is -ENOENT, named: it is never looked for among the definition's disks. */
int snapshot_check_revert(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                          const struct storage_snapshot *s, struct qv_err *e);
/* -EBUSY when deleting external s would lose an internal snapshot living in its
 * overlay, or its overlay is in no chain any more. */
int snapshot_check_delete(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                          const struct storage_snapshot *s, struct storage_snapshot *all, size_t n, struct qv_err *e);
/* A shut-off VM, through qemu-img: create (internal: snapshot -c in every image;
 * external: the overlays, the definition moves onto them), revert (snapshot -a; external:
 * the overlays emptied) and delete (snapshot -d; external: commit into the image below,
 * the definition or the next overlay moves back onto it). All or nothing on create. */
/* RBD snapshots of the planned disks, all or nothing, recorded with `state` ("running"
 * when the caller paused the guest around it, "shutoff"). */
int snapshot_create_rbd(const struct qv_paths *p, const struct vm_def *d, struct storage_snapshot *s, const char *state,
                        struct qv_err *e);
int snapshot_create_offline(const struct qv_paths *p, const struct vm_def *d, struct storage_snapshot *s,
                            struct qv_err *e);
int snapshot_revert_offline(const struct qv_paths *p, const struct vm_def *d, const struct storage_snapshot *s,
                            struct qv_err *e);
/* live: for the RBD snapshots of a running VM, deleted in the cluster while it runs
 * (NULL: shut off). */
int snapshot_delete_offline(const struct qv_paths *p, const struct vm_def *d, const struct snapshot_live *live,
                            const struct storage_snapshot *s, struct qv_err *e);

#endif
