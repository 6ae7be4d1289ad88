/* Between snapshots.c and snapshot_create.c (private to them): a disk-only snapshot
 * being taken (s->snap), step by step from QMP completions, the agent's answers and
 * qemu-img's exit; the freeze of the guest's filesystems around its switch. */
#ifndef QV_SUP_SNAPSHOT_OP_H
#define QV_SUP_SNAPSHOT_OP_H

#include "launcher/supervisor/internal.h"

struct snap_disk_live {
    char id[24];
    char old_top[48];       /* the node the overlay goes on */
    char node[48], file_node[48];
    uint64_t size;
    int fd;
    int fdset;              /* -1 until add-fd answered */
    bool file_added, fmt_added;
    struct disk_io io;      /* the disk's, for the overlay's nodes */
    bool discard;
};

struct snap_op;
typedef void (*snap_step_fn)(struct snap_op *op);

struct snap_op {
    struct sup *s;
    unsigned client;
    unsigned seq;           /* the agent's callbacks find the op by it: QEMU's exit may free it first */
    struct storage_snapshot rec;
    /* freezing the guest's filesystems around the switch (the agent's fsfreeze) */
    bool quiesce;           /* --quiesce: no freeze, no snapshot */
    bool want_freeze;       /* the agent answers: freeze right before the transaction */
    bool freeze_sent;
    bool thaw_needed;       /* a freeze went out (it may have frozen even if it failed): thaw, whatever happens */
    bool thaw_sent;
    snap_step_fn after_thaw;
    struct qv_err tx_err;   /* the transaction's outcome, kept while the thaw runs */
    char thaw_warning[512]; /* the thaw failed: the client hears it */
    struct snap_disk_live d[VM_MAX_DISKS];
    size_t made;            /* overlays qemu-img has made */
    size_t step;            /* the disk whose QMP set-up runs */
    struct sup_child child;
    struct qv_err err;
    bool undoing;
    size_t undo_pos;
    int undo_phase;
    /* the transaction's answer was lost (the monitor dropped, a timeout): QEMU is asked
     * which node each disk reads once the monitor is back */
    bool asking;
    bool tx_pending;        /* the transaction went out, and whether QEMU switched is not known yet */
};

/* snapshots.c: the op freed (fds closed, the qemu-img child aborted, s->snap cleared) */
void snap_op_free(struct snap_op *op);
/* The guest's filesystems frozen right before the transaction (the freeze recorded in
 * state.json first); snap_ext_next goes on from the answer, whatever it is. */
void snap_freeze(struct snap_op *op);
/* The thaw goes out (once), then `next`. */
void snap_thaw_then(struct snap_op *op, snap_step_fn next);

/* snapshot_create.c: the op made and its first step sent (rec taken); else the error,
 * nothing made. */
int snap_external_create(struct sup *s, unsigned client, struct storage_snapshot *rec, bool quiesce,
                         bool want_freeze, struct qv_err *e);
/* The next QMP step: an overlay's set-up, the freeze, the transaction. */
void snap_ext_next(struct snap_op *op);
/* The op fails with err (prefixed by step): what it made is undone, the client told. */
void snap_ext_fail(struct snap_op *op, const struct qv_err *err, const char *step);
/* The transaction's answer was lost: QEMU is asked which nodes the disks read, now or
 * once the monitor is back. */
void snap_ext_ask(struct snap_op *op);
/* The record of the snapshot under way leaves state.json. */
void snap_create_intent_clear(struct sup *s);
/* Reattach: a snapshot its dead supervisor left under way is settled by what QEMU reads. */
void snap_create_reattach(struct sup *s);
/* QEMU exited while whether it switched was not known: settled by what the overlays hold. */
void snap_settle_after_exit(struct snap_op *op);

#endif
