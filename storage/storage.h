/* storage: pools of volumes behind one backend table (dir; rbd slots in beside it), and
 * disk images as the supervisor hands them to QEMU. Format detection that
 * never blocks or follows a device it should not, a qcow2 chain opened as one fd per
 * layer (so QEMU needs no access to the image directories), and qemu-img as a
 * bounded child program. Uses only common; the launcher builds on it. */
#ifndef QV_STORAGE_H
#define QV_STORAGE_H

#include <stdbool.h>
#include <limits.h>
#include <stdint.h>

#include "common/common.h"

enum storage_format {
    STORAGE_FORMAT_PROBE = -1,  /* as an argument: detect it */
    STORAGE_FORMAT_RAW = 0,
    STORAGE_FORMAT_QCOW2 = 1,
};
/* "raw", "qcow2"; NULL for anything else. */
const char *storage_format_name(enum storage_format f);
/* The reverse; -ENOTSUP for formats QEMU knows but qvisor does not pass ("vmdk"). */
int storage_format_parse(const char *name, enum storage_format *out);

/* Opens an existing image for reading its header: only a regular file or a block
 * device (a FIFO, socket, tty or directory is refused before it is opened, and again
 * by fstat after, so a path swapped in between changes nothing), O_NONBLOCK so that
 * nothing can make the open wait. Returns the fd (CLOEXEC). */
int storage_open_image(const char *path, int flags, struct qv_err *e);
/* "a named pipe (FIFO)", "a directory", ...: what a path is, for error messages. */
const char *storage_file_type_name(mode_t mode);

/* qcow2 when the file starts with qcow2's magic, raw otherwise. Decide this once, when
 * an image is defined: a raw image's guest can write a qcow2 header into it. */
int storage_detect_format(const char *path, enum storage_format *out, struct qv_err *e);
int storage_detect_format_fd(int fd, const char *what, enum storage_format *out, struct qv_err *e);

/* What a qcow2 header says about the layer below it. */
struct storage_qcow2_info {
    uint32_t version;           /* 2 or 3 */
    uint64_t virtual_size;
    uint32_t cluster_bits;
    char backing[1024];         /* the backing file name as written; "" when none */
    char backing_format[32];    /* from the backing format extension; "" when absent */
    bool external_data_file;    /* data lives in another file QEMU would open */
};
int storage_qcow2_read(int fd, const char *what, struct storage_qcow2_info *out, struct qv_err *e);
/* Whether the qcow2 image maps any cluster of its own (an L2 table exists): false
 * only for a layer that holds nothing yet, as qemu-img create leaves an overlay. */
int storage_qcow2_has_data(int fd, const char *what, bool *out, struct qv_err *e);
/* Whether a process holds QEMU's image locks on it (a QEMU has it open). */
int storage_image_locked(int fd, const char *what, bool *out, struct qv_err *e);

/* ---- chains ------------------------------------------------------------------------ */
#define STORAGE_CHAIN_MAX 32

struct storage_layer {
    int fd;                     /* CLOEXEC; owned by the chain */
    enum storage_format format;
    char path[4096];            /* as resolved: relative backing names joined to their image's directory */
    uint64_t virtual_size;      /* qcow2: from the header; raw: the file or device size */
};
struct storage_chain {
    struct storage_layer *layers;   /* top first */
    size_t n;
};
/* Opens `path` (the top, with `top_flags`: O_RDONLY or O_RDWR) and every layer below
 * it read-only, one fd each. `top_format` PROBE detects the top's format; a backing
 * layer's format comes from its backing format extension, and is detected only where
 * the image names none. Relative backing names are taken relative to the directory of
 * the image that names them (as QEMU does). Refused: a loop (the same inode twice),
 * more than STORAGE_CHAIN_MAX layers, a missing layer (named in the error together with
 * the image that references it), backing names with a protocol ("nbd:", "json:"),
 * external data files, and anything that is not a regular file or block device.
 * On error nothing stays open. */
int storage_chain_open(const char *path, enum storage_format top_format, int top_flags, struct storage_chain *out,
                       struct qv_err *e);
void storage_chain_close(struct storage_chain *c);

/* ---- qemu-img --------------------------------------------------------------------- */
/* Runs qemu-img with `args` (after "qemu-img"; NULL-terminated), no shell, stdin from
 * /dev/null, killed when the caller dies (PR_SET_PDEATHSIG) or after timeout_ms.
 * stdout into *out (caller frees; may be NULL); a non-zero exit fails with qemu-img's
 * own stderr in the message. QVISOR_QEMU_IMG overrides the binary (tests). */
int storage_qemu_img(const char *const *args, int timeout_ms, char **out, struct qv_err *e);

struct storage_image_info {
    enum storage_format format;
    uint64_t virtual_size;
    uint64_t actual_size;       /* bytes allocated on the host */
    uint64_t cluster_size;      /* 0 for raw */
    bool dirty;
    char backing[1024];         /* "" when none; as written in the image */
    char backing_format[32];
};
/* `qemu-img info --output=json` on one image (not its backing chain), with -U so a
 * running VM's lock does not stand in the way. `format` PROBE lets qemu-img decide. */
int storage_image_info(const char *path, enum storage_format format, int timeout_ms, struct storage_image_info *out,
                       struct qv_err *e);
/* The parser behind it, on qemu-img's JSON text. */
int storage_image_info_parse(const char *json, struct storage_image_info *out, struct qv_err *e);

/* ---- pools and volumes ------------------------------------------------------------
 * A pool is a place that holds volumes; its type picks one row of the backend table.
 * `dir` is a directory whose regular files are the volumes; an `rbd` row (librbd)
 * slots in beside it with the same operations. Volume names are checked here too:
 * whatever the caller passed, a backend never sees a name with '/', a leading '.' or
 * '-', or one that is not 1-64 of [A-Za-z0-9_.-]. */
struct storage_pool {
    const char *name;
    const char *type;           /* a backend's type: "dir", "rbd" */
    const char *path;           /* dir: the directory */
    /* rbd: a Ceph pool reached as a cephx user. Monitors are given, or read from a
     * ceph.conf; the key is read by librados from keyfile (the secret's value file), so
     * it never passes through qvisor's own buffers or argv. */
    const char *rbd_pool;       /* the Ceph pool's name */
    const char *const *monitors;/* "HOST[:PORT]", NULL-terminated; NULL: from ceph_conf */
    const char *ceph_conf;      /* NULL: none (no ceph.conf is read) */
    const char *user;           /* the cephx id without "client." */
    const char *keyfile;        /* NULL: no key (auth none) */
};

struct storage_pool_stats {
    uint64_t capacity, allocation, available;   /* bytes, from statvfs for dir */
    /* rbd: the cluster reports no sizes (no ceph-mgr runs, so the monitors have no
     * statistics): capacity and available are unknown (0), allocation is the sum of
     * the volumes' allocated bytes */
    bool sizes_unknown;
};

enum storage_prealloc { STORAGE_PREALLOC_OFF, STORAGE_PREALLOC_METADATA, STORAGE_PREALLOC_FULL };
extern const char *const storage_prealloc_names[];     /* "off", "metadata", "full", NULL */

struct storage_vol_spec {
    uint64_t size;              /* 0 with a backing file: the backing file's size */
    enum storage_format format;
    const char *backing;        /* a name qemu-img opens (a path for dir); NULL: none */
    enum storage_format backing_format;
    enum storage_prealloc prealloc;
};

struct storage_vol_info {
    char name[65];
    char path[PATH_MAX];        /* what qemu-img and the supervisor open */
    enum storage_format format;
    uint64_t capacity;          /* virtual size */
    uint64_t allocation;        /* bytes allocated on the host */
    char backing[1024];         /* as written in the image; "" when none */
};

/* An image as qemu-img opens it: a local file (passed as "./x" when relative, so a
 * name like "nbd:x" stays a file), or a network image as a json: name (QEMU's rbd
 * driver with pool, image, user, monitors) whose key qemu-img reads through `object`
 * (a "secret,id=ID,file=KEYFILE,format=base64" --object: the key itself is never in
 * argv). */
struct storage_img {
    char name[PATH_MAX + 1024];
    char object[PATH_MAX + 96];     /* "" when none */
    bool network;                   /* name is a json: name, not a file */
    enum storage_format format;     /* PROBE: qemu-img decides */
    uint64_t size;                  /* the virtual size when known; 0: ask qemu-img */
};
/* A local file. */
void storage_img_file(struct storage_img *out, const char *path, enum storage_format format);
/* The virtual size (qemu-img info) when img->size is not known yet. */
int storage_img_size(const struct storage_img *img, uint64_t *out, struct qv_err *e);

/* vol_delete flags */
#define STORAGE_DELETE_SNAPSHOTS 1u     /* rbd: remove the image's snapshots first (never ones with clones) */

/* Long copies report progress (0..100) and stop when *cancel becomes non-zero (a
 * SIGINT handler sets it): the child is killed and nothing is left of the target. */
struct storage_progress {
    void (*fn)(void *opaque, double percent);   /* NULL: no progress wanted */
    void *opaque;
    volatile int *cancel;                       /* NULL: not cancellable */
};

struct storage_backend {
    const char *type;
    /* The pool's place exists and is usable (a dir pool's directory is created). */
    int (*check)(const struct storage_pool *p, struct qv_err *e);
    int (*stats)(const struct storage_pool *p, struct storage_pool_stats *out, struct qv_err *e);
    /* Sorted names of the volumes that are there now. */
    int (*list)(const struct storage_pool *p, struct strv *names, struct qv_err *e);
    /* Forgets cached state and drops leftovers of interrupted copies. */
    int (*refresh)(const struct storage_pool *p, struct qv_err *e);
    /* -ENOENT "pool P has no volume V" when absent. */
    int (*vol_info)(const struct storage_pool *p, const char *name, struct storage_vol_info *out, struct qv_err *e);
    int (*vol_create)(const struct storage_pool *p, const char *name, const struct storage_vol_spec *s,
                      struct qv_err *e);
    int (*vol_delete)(const struct storage_pool *p, const char *name, unsigned flags, struct qv_err *e);
    int (*vol_resize)(const struct storage_pool *p, const char *name, uint64_t size, bool shrink, struct qv_err *e);
    /* A new volume holding a full copy of `src` converted to `format`: written under a
     * temporary name, renamed only when complete. */
    int (*vol_copy_in)(const struct storage_pool *p, const char *name, const struct storage_img *src,
                       enum storage_format format, const struct storage_progress *prog, struct qv_err *e);
    /* How qemu-img opens the volume; `secret_id` names its key's --object when it needs one. */
    int (*vol_img)(const struct storage_pool *p, const char *name, const char *secret_id, struct storage_img *out,
                   struct qv_err *e);
    /* Optional (NULL: none). Backend facts for vol info (rbd: features, parent,
     * snapshots, watchers), added to `into`. */
    int (*vol_detail)(const struct storage_pool *p, const char *name, json_object *into, struct qv_err *e);
    /* Optional. The guest's view as raw bytes into fd (rbd: read through librbd). */
    int (*vol_stream)(const struct storage_pool *p, const char *name, int fd, const struct storage_progress *prog,
                      struct qv_err *e);
    /* Optional. A copy-on-write clone `name` in pool `dst` (of the same backend and cluster)
     * of volume `src` at snapshot `snap`, which is made when absent (*snap_made) and
     * protected when it is not. */
    int (*vol_clone_cow)(const struct storage_pool *p, const char *src, const char *snap, const struct storage_pool *dst,
                         const char *name, bool *snap_made, struct qv_err *e);
    /* Open for QEMU: every layer of its chain as an fd (the top with `flags`). */
    int (*vol_open)(const struct storage_pool *p, const char *name, int flags, struct storage_chain *out,
                    struct qv_err *e);
};
/* NULL for an unknown type. */
const struct storage_backend *storage_backend_find(const char *type);
extern const struct storage_backend storage_rbd_backend;   /* rbd.c */
/* The types, NULL-terminated: "dir", "rbd". */
extern const char *const storage_backend_types[];
/* A volume name a backend accepts. */
bool storage_vol_name_valid(const char *name);

/* qemu-img convert from `src` into `dst` (a file: created, or overwritten; with
 * dst_exists, written into as it is: -n), dst->format; -p progress when prog->fn is
 * set; -ECANCELED when prog->cancel was set (the child was killed; the caller removes
 * `dst`). */
int storage_convert(const struct storage_img *src, const struct storage_img *dst, bool dst_exists,
                    const struct storage_progress *prog, struct qv_err *e);

/* rbd: whether librbd loads; "librbd 1.16.0" or the reason into detail. */
bool storage_rbd_usable(char *detail, size_t detail_len);

/* ---- snapshots --------------------------------------------------------------------
 * A snapshot's record: one JSON file per snapshot in a directory the caller owns
 * (written atomically), and a file there naming the current snapshot. Internal
 * snapshots live inside each qcow2 image; an external (disk-only) one is the state of
 * `file` when `overlay` was put on top of it. */
struct storage_snapshot_disk {
    char disk[24];              /* the VM's device: disk0 */
    char file[PATH_MAX];        /* internal: the image that holds it; external: the image below the overlay */
    enum storage_format format; /* of file */
    char volume[160];           /* "POOL/NAME" when the disk named file as a volume; "" else */
    char overlay[PATH_MAX];     /* external: the overlay made on top of file */
    char overlay_volume[160];   /* its volume reference, when file was a volume */
    /* attached to the running VM (hotplugged), not a disk of the definition: `disk` is
     * its device id then, which only that VM's run knows (recorded as "hotplug": true) */
    bool hotplug;
    bool rbd;                   /* volume is an rbd image: the snapshot is an RBD snapshot of it, by name */
};
struct storage_snapshot {
    char name[65];
    char parent[65];            /* "" for a root */
    uint64_t created_ms;        /* wall clock */
    char state[16];             /* the VM's state when it was taken: "running", "paused", "shutoff" */
    bool memory;                /* holds the guest's RAM and device state */
    bool external;
    /* disk-only of a running VM: the guest's filesystems were frozen through its agent
     * while the overlays went on (a full one holds memory and needs no freeze) */
    bool quiesced;
    char quiesce_note[256];     /* why not, when one would have been wanted; "" else */
    char *description;          /* NULL: none */
    struct storage_snapshot_disk *disks;
    size_t ndisks;
};
void storage_snapshot_free(struct storage_snapshot *s);
#define _cleanup_snapshot_ _cleanup_(storage_snapshot_free)
json_object *storage_snapshot_to_json(const struct storage_snapshot *s);
int storage_snapshot_from_json(json_object *o, struct storage_snapshot *s, struct qv_err *e);
/* DIR/NAME.json; -ENOENT "no snapshot named NAME". */
int storage_snapshot_load(const char *dir, const char *name, struct storage_snapshot *s, struct qv_err *e);
int storage_snapshot_save(const char *dir, const struct storage_snapshot *s, struct qv_err *e);
int storage_snapshot_remove(const char *dir, const char *name, struct qv_err *e);
int storage_snapshot_names(const char *dir, struct strv *names, struct qv_err *e);
/* The current snapshot's name into out ("" for none). */
int storage_snapshot_current(const char *dir, char *out, size_t outlen);
/* name "" or NULL: none is current. */
int storage_snapshot_set_current(const char *dir, const char *name, struct qv_err *e);

/* qemu-img on a qcow2 image no QEMU has open: snapshot -c (create), -a (apply), -d
 * (delete) of the internal snapshot `name`. */
int storage_img_snapshot(const char *image, char op, const char *name, struct qv_err *e);
/* Whether the qcow2 image holds an internal snapshot `name` (qemu-img info -U). */
int storage_img_snapshot_exists(const char *image, const char *name, bool *found, struct qv_err *e);
/* A new qcow2 `overlay` on `backing` (an absolute path, recorded as it is given). With
 * size non-zero the backing file is not opened (a running QEMU holds its lock). */
int storage_img_overlay(const char *overlay, const char *backing, enum storage_format backing_format, uint64_t size,
                        struct qv_err *e);
/* Writes the overlay's data into its backing file (the overlay stays as it was). */
int storage_img_commit(const char *overlay, struct qv_err *e);
/* Points image at another backing file without copying (the data must be the same). */
int storage_img_rebase_unsafe(const char *image, const char *backing, enum storage_format backing_format,
                              struct qv_err *e);

/* ---- rbd, for VM disks (rbd.c) ---------------------------------------------------- */
struct storage_rbd_disk {
    uint64_t size;
    struct strv servers;    /* one "IP:PORT" per monitor of the monitor map (its msgr2 address when it has one) */
    struct strv addrs;      /* every public address of the monitors and OSDs in the cluster map: all that a
                             * client of this cluster connects to ("IP:PORT", "[IP6]:PORT") */
};
void storage_rbd_disk_free(struct storage_rbd_disk *d);
/* One connection: the image is there (-ENOENT "pool P has no volume V" if not), its
 * size, and the addresses QEMU's rbd driver is given and may reach. */
int storage_rbd_disk_info(const struct storage_pool *p, const char *image, struct storage_rbd_disk *out,
                          struct qv_err *e);
/* The public addresses of the cluster's monitors and OSDs as its maps list them now
 * (`qvisor pool show NAME --addresses`; a running VM's supervisor asks again now and
 * then, so that QEMU may reach OSDs added since it started). */
int storage_rbd_cluster_addrs(const struct storage_pool *p, struct strv *addrs, struct qv_err *e);
/* Between storage_rbd_hold() and storage_rbd_release(), the calling thread's rbd
 * functions connect to each pool once and share that connection (a start or a
 * snapshot over several disks of a pool connects once, not once per disk). Holds nest. */
void storage_rbd_hold(void);
void storage_rbd_release(void);
/* A hold for the rest of the enclosing block: STORAGE_RBD_HELD; */
static inline int storage_rbd_hold_scope(void)
{
    storage_rbd_hold();
    return 1;
}
static inline void storage_rbd_release_scope(int *unused)
{
    (void)unused;
    storage_rbd_release();
}
#define STORAGE_RBD_HELD \
    __attribute__((cleanup(storage_rbd_release_scope), unused)) int storage_rbd_held_ = storage_rbd_hold_scope()
/* An RBD snapshot of `image` through librbd: op 'c' create, 'a' roll back (no client
 * may have the image open), 'd' delete, 'u' unprotect and delete (refused while it
 * has clones), 'e' exists (-ENOENT when not). */
int storage_rbd_snapshot(const struct storage_pool *p, const char *image, char op, const char *snap,
                         struct qv_err *e);

#endif
