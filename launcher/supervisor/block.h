/* A running VM's disks and what changes them: CD-ROM media (media.c), disk requests and
 * tops (disks.c), QEMU's jobs (jobs.c), block jobs (blockjobs.c, blockprep.c),
 * snapshots (snapshots.c, snapshot_create.c, snapshot_full.c, snapshot_merge.c). Included by internal.h */
#ifndef QV_SUP_BLOCK_H
#define QV_SUP_BLOCK_H

#include "launcher/supervisor/internal.h"
#include "launcher/model/storedef.h"

/* media.c: CD-ROM media of a running VM. `target` is a drive id (cdrom0) or the file
 * it holds; file NULL ejects. The client is answered once QEMU finished; an error
 * before anything was sent is returned instead. */
int media_change(struct sup *s, unsigned client, const char *target, const char *file, struct qv_err *e);
/* state.json's "media" after a reattach; QEMU's exit forgets it all. */
void media_restore(struct sup *s);
void media_forget_all(struct sup *s);
/* [{"id": "cdrom0", "file": F or null}] for status; NULL without CD-ROMs. */
json_object *media_status_json(struct sup *s);

/* disks.c: a running VM's disks. A disk is named by device id (disk0), image path or
 * serial. The requests answer `client` through QMP callbacks; an error before
 * anything was sent is returned instead. */
int disk_resize(struct sup *s, unsigned client, const char *target, const char *size, bool allow_shrink,
                struct qv_err *e);
int disk_stats(struct sup *s, unsigned client, const char *target, struct qv_err *e);
/* query-blockstats' reply as [{"disk", "file", "rd_reqs", "rd_bytes", ...}], only the
 * disk `only` when it is not NULL or "". */
json_object *disk_stats_json(struct sup *s, json_object *ret, const char *only);
/* BLOCK_IO_ERROR: with action stop, the pause that follows carries the reason. */
void disk_io_error(struct sup *s, json_object *data);
/* A disk as jobs see it: device id, the node the guest reads (its current top, which a
 * pivot, an active commit or an external snapshot changes), the image at the top. */
struct disk_ref {
    char id[24];            /* the QEMU device: disk0, disk3 (hotplugged) */
    char node[48];          /* the top block node: what the guest sees */
    char file[PATH_MAX];
    ssize_t index;          /* its place in s->def.disks; -1: hotplugged */
    struct hotplug *hp;     /* hotplugged: its slot */
};
/* By device id, image path or serial; boot disks and hotplugged ones. */
bool disk_find(struct sup *s, const char *key, struct disk_ref *out);
/* Disk `id` now shows the guest `node`, holding the image `file` (a volume's path
 * when `volume` is POOL/NAME, else NULL) in `format`: the top node is recorded in
 * state.json, and a boot disk's definition follows, in memory and in the store
 * (etc/, or a transient VM's run directory), written atomically. A failure to
 * write the store is returned (the VM runs on the new image anyway). */
int disk_switched(struct sup *s, const char *id, const char *node, const char *file, const char *volume,
                  enum disk_format format, struct qv_err *e);
/* In query-block's answer: the node device `id` reads now (borrowed); NULL when none. */
const char *disk_qemu_top(json_object *blocks, const char *id);
/* A new QEMU starts with the definition's nodes again. */
void disk_tops_reset(struct sup *s);
void disk_tops_record(struct sup *s);
/* Reattach (synchronous, before the loop serves): the recorded tops, checked against
 * query-block, whose word wins. */
void disk_tops_reattach(struct sup *s);

/* jobs.c: QEMU's jobs, tracked by JOB_STATUS_CHANGE and query-jobs. The loop never
 * waits on them: every step is a QMP completion. */
/* Starts `cmd` (args taken; "job-id" added, and "auto-dismiss": false for block jobs
 * so a failure's reason stays readable) as a job of `ops` on `disk` ("" or NULL: the
 * VM), data taken (recorded with the job; may be NULL). The job is recorded in
 * state.json before the command goes out. client (0: none) is answered once QEMU
 * accepted ({"ok":true,"job":{...}}) or refused it (on_done runs with the refusal),
 * unless wait: then it is answered when the job is over. NULL with e set when
 * nothing was sent (a job already runs on the disk, too many jobs, no monitor): no
 * handler of ops runs and the client is not answered; the caller undoes what it
 * prepared and answers. */
struct sup_job *sup_job_start(struct sup *s, const struct sup_job_ops *ops, const char *disk, const char *cmd,
                              json_object *args, json_object *data, unsigned client, bool wait, struct qv_err *e);
/* The job on `disk`, or with QEMU id `key`; NULL when none. */
struct sup_job *sup_job_find(struct sup *s, const char *key);
/* job-complete (a mirror pivots, an active commit drops the top) once it is ready:
 * at once when it is, else as soon as it becomes so (the intent is recorded). */
int sup_job_complete(struct sup *s, struct sup_job *j, struct qv_err *e);
/* job-cancel (abort); soft: a ready mirror ends without pivoting, its copy complete
 * (block-job-cancel force=false), and a not yet ready one does so once ready. */
int sup_job_cancel(struct sup *s, struct sup_job *j, bool soft, struct qv_err *e);
/* client is answered when the job is over; -EBUSY when too many wait. */
int sup_job_wait(struct sup *s, struct sup_job *j, unsigned client, struct qv_err *e);
json_object *sup_job_json(const struct sup_job *j);
/* Every job, for `status`; NULL when none. */
json_object *sup_jobs_json(struct sup *s);
/* QEMU events: JOB_STATUS_CHANGE. */
void sup_jobs_event(struct sup *s, const char *event, json_object *data);
void sup_jobs_record(struct sup *s);
/* Reattach (synchronous, before the loop serves): the recorded jobs against
 * query-jobs; those QEMU no longer has are forgotten, concluded and ready ones are
 * carried on as if their events came now. */
void sup_jobs_reattach(struct sup *s);
/* QEMU is gone: every job ends with on_done(err), waiters answered. */
void sup_jobs_forget_all(struct sup *s, const char *why);
uint64_t sup_jobs_next_deadline(struct sup *s);
void sup_jobs_expire(struct sup *s, uint64_t now);
/* The kinds a new supervisor can carry on, by name (jobs.c holds the table). */
const struct sup_job_ops *sup_job_ops_find(const char *kind);

/* blockjobs.c: block pull, commit, copy and job on a running VM's disks */
extern const struct sup_job_ops block_pull_ops, block_commit_ops, block_active_commit_ops, block_copy_ops;
/* op: pull, commit, copy or job; target: the disk; options: the op's (base, top,
 * dest, volume, format, pivot, finish, abort, wait, bandwidth). 0: under way, the
 * client is answered later; else the error (nothing was changed). */
int block_request(struct sup *s, unsigned client, const char *op, const char *target, json_object *options,
                  struct qv_err *e);
/* SIGCHLD: qemu-img creating a copy's target may have ended. */
void block_child_exited(struct sup *s);
uint64_t block_next_deadline(struct sup *s);
void block_expire(struct sup *s, uint64_t now);
/* QEMU is gone: a request being prepared ends (its client answered, a created target removed). */
void block_forget(struct sup *s);
/* A copy's target (p->dest and its nodes) recorded in state.json before it is
 * created; NULL: the record goes (the target was undone, or its job took it). */
void block_target_record(struct sup *s, const struct block_prep *p);
/* Reattach, after the jobs: a target its dead supervisor recorded and no job owns is
 * removed (its nodes out of QEMU, the file deleted), so a retry can make it again. */
void block_reattach(struct sup *s);

/* Between blockjobs.c (requests, the jobs' kinds) and blockprep.c (what a request
 * needs before its job starts: the chain as QEMU holds it, read-write fds and a
 * reopen for a commit, a copy's target). */
/* BLOCK_WRITABLE: no job; one layer below the top made writable (a read-write fd,
 * a reopen), for a snapshot-delete of an internal snapshot it holds. */
enum block_op { BLOCK_PULL, BLOCK_COMMIT, BLOCK_COPY, BLOCK_WRITABLE };
extern const char *const block_op_names[];

struct layer {
    char fmt[64], file[64];     /* the layer's format and protocol nodes */
    char path[PATH_MAX];
    enum disk_format format;
};

/* BLOCK_WRITABLE's end: node, the writable layer's format node, or err (the client
 * is the callback's to answer). */
typedef void (*block_writable_fn)(struct sup *s, void *ctx, const char *node, const struct qv_err *err);

struct block_prep {
    enum block_op op;
    unsigned client;
    char snap[65];              /* a commit that deletes this snapshot's disk: a snapshot-merge job */
    block_writable_fn writable; /* BLOCK_WRITABLE: told the end */
    void *writable_ctx;
    bool wait;
    struct disk_ref d;
    struct disk_io io;
    bool discard;               /* the disk's: on every node made writable or added here, as on its
                                 * active layer at start (so a later reopen with the disk's options,
                                 * snapshot_full.c's, changes nothing but what it means to) */
    struct layer chain[STORAGE_CHAIN_MAX + 1];
    size_t n;
    uint64_t size;              /* the top's virtual size */
    /* options */
    char base[PATH_MAX], top[PATH_MAX];
    char dest[PATH_MAX], volume[160];
    enum disk_format format;
    bool pivot, finish;
    int64_t bandwidth;
    /* commit */
    size_t t, b;                /* chain indexes of top and base */
    int rw_fd[2], nrw;          /* read-write fds for base and the top's overlay */
    size_t rw_layer[2];         /* their chain indexes */
    int rw_set[2];              /* their fdsets */
    int ro_fd[2][4], nro[2];    /* QEMU's numbers of the read-only fds already in them */
    int rw_pending;             /* their add-fd not answered yet */
    /* copy */
    unsigned seq;
    int fdset, fd;
    char tfmt[64], tfile[64];
    bool created;               /* dest is ours: removed when the copy does not happen */
    int added;                  /* 1 add-fd done, 2 file node, 3 format node */
    struct sup_child child;
};
/* In x-debug-query-block-graph's answer g: the child of node `parent` on edge `name`
 * ("backing", "file"), by node name (borrowed from g); NULL when none. */
const char *block_graph_child(json_object *g, const char *parent, const char *name);
/* Asks QEMU for its block graph: s->block_prep goes on from the answer. */
int block_prep_begin(struct sup *s, struct qv_err *e);
/* The request fails: its client hears why, what it made is undone. */
void block_prep_fail(struct sup *s, const struct qv_err *err);
void block_prep_free(struct sup *s);
/* s->block_prep is ready: the job starts (the preparation is freed). */
void block_start_pull(struct sup *s);
void block_start_commit(struct sup *s);
void block_start_copy(struct sup *s);
/* A commit of disk's layer `top` into `base` (paths; top the disk's top: an active
 * commit with a pivot), prepared as `block commit` is; snap: the snapshot whose
 * overlay this is (its job is a snapshot-merge, snapshot_merge.c finishes it), else
 * NULL. client is answered when the job is over. 0: under way; else nothing changed. */
int block_commit_begin(struct sup *s, unsigned client, const char *disk, const char *top, const char *base,
                       const char *snap, int64_t bandwidth, struct qv_err *e);
/* Disk's layer `path` made writable when it is not the top; done(ctx, node) then,
 * or done(ctx, NULL, err). 0: under way (done is called); else nothing changed. */
int block_writable_begin(struct sup *s, const char *disk, const char *path, block_writable_fn done, void *ctx,
                         struct qv_err *e);
/* A commit job's layers that left the chain: out of QEMU. */
void block_commit_drop(struct sup *s, struct sup_job *j);
/* The blockdev-reopen options (file node, format node) of layer p->rw_layer[i] as
 * made writable, appended to list. */
void block_layer_reopen_opts(const struct block_prep *p, int i, json_object *list);
/* An inner commit's base flushed (its metadata is in QEMU's cache until then: the
 * merged top must not go before): blockdev-reopen with the options it has, recorded
 * with the job ("flush"); done(ctx, err) once QEMU answered. -EIO when not sent. */
int block_commit_flush(struct sup *s, struct sup_job *j, qmp_reply_fn done, void *ctx);
/* drop: [[format node, file node], ...], top first: deleted from QEMU, and the fdsets
 * of the file nodes removed. */
void block_drop_nodes(struct sup *s, json_object *drop);
json_object *block_node_pair(const char *fmt, const char *file);
/* A QMP command whose failure is only logged. */
void block_send_logged(struct sup *s, const char *cmd, json_object *args);

/* snapshots.c, snapshot_create.c: snapshots of the running VM (records and plan: model/snapshot.c). Each
 * answers `client` when done (an error before anything was sent is returned). Full
 * ones are snapshot-save/load/delete jobs; a disk-only one makes its overlays with
 * qemu-img (a watched child), passes them as fds and switches in one transaction;
 * deleting one merges it with block-commit (a job). One at a time. */
/* A disk-only one of a running guest whose agent answers is quiesced: its filesystems
 * are frozen for the switch and thawed right after, also when anything fails; quiesce
 * (--quiesce, disk-only only) makes a freeze that cannot happen an error. */
int snapshot_live_create(struct sup *s, unsigned client, const char *name, bool disk_only, bool quiesce,
                         const char *description, struct qv_err *e);
/* then: "running" or "paused" (revert --running/--paused), "" or NULL: as QEMU leaves
 * it (the guest runs on if it ran). */
int snapshot_live_revert(struct sup *s, unsigned client, const char *name, const char *then, struct qv_err *e);
/* A start that resumes the guest from full snapshot `name` (a revert while shut off):
 * in prelaunch, once QEMU's set-up is done, a snapshot-load job; its end continues the
 * start (start_after_load) or fails it. */
int snapshot_start_load(struct sup *s, const char *name, bool paused, struct qv_err *e);
int snapshot_live_delete(struct sup *s, unsigned client, const char *name, const char *bandwidth, struct qv_err *e);
/* Between snapshots.c and snapshot_full.c: a new snapshot operation may start
 * (none under way, no snapshot job) and the monitor is there; the record NAME. */
int snap_busy(struct sup *s, struct qv_err *e);
bool snap_monitor_ok(struct sup *s, struct qv_err *e);
int snap_load_record(struct sup *s, const char *name, struct storage_snapshot *rec, struct qv_err *e);
/* The disks attached live, for the model's plan and checks (out: HOTPLUG_MAX entries). */
void snap_live_disks(struct sup *s, struct snapshot_live_disk *out, struct snapshot_live *live);
/* A record's disk as this run has it: a hotplugged entry only among the hotplugged
 * disks, a definition's only among the definition's; false (e filled) when absent. */
bool snap_disk_find(struct sup *s, const struct storage_snapshot *rec, const struct storage_snapshot_disk *k,
                    struct disk_ref *out, struct qv_err *e);
/* snapshot_full.c: a full snapshot's snapshot-save job (rec: the plan's record). The
 * disk that keeps the memory is written through the page cache for the save (its
 * file node reopened without, then with direct I/O; the restore recorded first). */
int snapshot_full_create(struct sup *s, unsigned client, struct storage_snapshot *rec, struct qv_err *e);
/* A save being prepared, or a node's direct I/O being restored. */
bool snapshot_full_busy(struct sup *s);
/* The monitor is back, or a successor took over: a recorded restore is sent (again). */
void snapshot_full_monitor_back(struct sup *s);
void snapshot_full_reattach(struct sup *s);
/* QEMU is gone: a save being prepared fails, the restore is moot. */
void snapshot_full_forget(struct sup *s);
/* snapshot_merge.c: a disk-only snapshot merged, disk after disk, each a block commit
 * (active when the overlay is the top, else inner); bandwidth 0: no cap. */
int snapshot_live_merge(struct sup *s, unsigned client, struct storage_snapshot *rec, int64_t bandwidth,
                        struct qv_err *e);
/* A merged disk's step after its job (nodes out of QEMU, an inner commit's base
 * flushed, the overlay removed, then the next disk) is in state.json from the job's
 * end until it is done: a successor finishes it and merges the rest; meanwhile
 * another snapshot operation waits (busy). */
void snapshot_merge_reattach(struct sup *s);
bool snapshot_merge_busy(struct sup *s);
/* A flush whose answer a monitor drop lost is sent again once it is back; QEMU's
 * exit drops the step (the overlay is kept: it holds what the flush would have). */
void snapshot_merge_monitor_back(struct sup *s);
void snapshot_merge_forget(struct sup *s);
/* An internal snapshot deleted (snapshot-delete), its images made writable first
 * where they are below a disk-only overlay now. Both take the record and answer
 * client; an error returned means nothing was sent. */
int snapshot_live_delete_internal(struct sup *s, unsigned client, struct storage_snapshot *rec, struct qv_err *e);
/* Reattach: a freeze for a snapshot that its dead supervisor never thawed (state.json
 * says so) is thawed through the agent; a disk-only snapshot it left under way is
 * settled by what QEMU reads (switched: recorded, else its overlays removed); a
 * merge step it left is finished (snapshot_merge_reattach). */
void snapshots_reattach(struct sup *s);
/* The monitor is back: a snapshot whose switch went unanswered asks QEMU now. */
void snapshots_monitor_back(struct sup *s);
void snapshots_child_exited(struct sup *s);
uint64_t snapshots_next_deadline(struct sup *s);
void snapshots_expire(struct sup *s, uint64_t now);
/* QEMU is gone: a disk-only snapshot under way fails, its overlays removed. */
void snapshots_forget(struct sup *s);
extern const struct sup_job_ops snapshot_save_ops, snapshot_load_ops, snapshot_delete_ops, snapshot_merge_ops,
    snapshot_start_load_ops;

#endif
