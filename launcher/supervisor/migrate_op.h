/* The state of a save or live migration under way (s->mig), shared by migrate.c (the
 * steps, progress, saves, requests) and migrate_live.c (live migration: the connection,
 * the end, the calls from migstore_out.c). Included by those two only. */
#ifndef QV_SUP_MIGRATE_OP_H
#define QV_SUP_MIGRATE_OP_H

#include "launcher/supervisor/internal.h"

#define MIG_SYNC_TIMEOUT_MS (10 * 60 * 1000)
#define MIG_MAX_BANDWIDTH (1ll << 40)    /* bytes/s: QEMU's default (32 MiB/s) is too slow for files and LANs */
#define MIG_CONNECT_TIMEOUT_MS 15000
/* After the switch to post-copy a stream that sends nothing for this long is stuck: QEMU
 * 7.2 waits for a recovery (postcopy-paused), or deadlocks in postcopy-active (its
 * migration thread joins the return-path thread, which waits for a recovery) */
#define MIG_POSTCOPY_STALL_MS 60000
#define MIG_POSTCOPY_GONE_STALL_MS 15000    /* the same, once the destination is gone */
#define MIG_VERDICT_WAIT_MS 15000           /* the destination's word on whether the guest ran there */

enum mig_step { STEP_STOP, STEP_STORAGE, STEP_CAPS, STEP_TLS, STEP_PARAMS, STEP_CONNECT, STEP_GETFD, STEP_MIGRATE,
                STEP_RUNNING, STEP_SYNC, STEP_DONE };

struct mig_op {
    bool live;              /* migrate to another host; else a save to a file */
    char address[80];       /* live: the destination, numeric ADDR:PORT */
    int64_t bandwidth;      /* bytes/s, 0: no cap */
    int64_t downtime_ms;    /* 0: QEMU's default */
    bool auto_converge;
    bool postcopy;          /* post-copy allowed: switched to after the first pass */
    int64_t postcopy_bandwidth; /* bytes/s once in post-copy, 0: no cap */
    bool postcopy_asked;    /* migrate-start-postcopy sent: no cancel from here on */
    bool in_postcopy;       /* QEMU said postcopy-active: the guest runs on the destination */
    /* after the switch: what the destination said of its failure, and whether its QEMU
     * ever ran the guest (-1: it did not say, or has not yet) */
    char dest_error[600];
    int dest_ran;
    bool dest_gone;         /* the control line ended (with or without a word) */
    uint64_t verdict_by;    /* QEMU's stream broke: the destination's word is awaited until then */
    uint64_t progress_at;   /* post-copy: when the bytes sent last grew */
    int64_t last_transferred;
    bool concluding;        /* post-copy broke: the end is being told (a `cont` may be under way) */
    bool copy_storage;      /* local disks mirrored to the destination's NBD exports first (migstore_out.c) */
    char token[68];         /* the destination's one-time token */
    bool persistent;
    char storage_error[600];    /* the disk copy failed while the stream ran: why */
    char tls_dir[PATH_MAX];     /* live over TLS: the credentials' directory; "": plain */
    char tls_hostname[256];     /* the name the destination's certificate must carry */
    int64_t dirty_rate, expected_downtime, downtime, total_time;
    enum mig_step step;
    unsigned client;
    bool was_running;
    bool managed, bypass_cache;
    bool cancel_asked;
    char file[PATH_MAX], part[PATH_MAX];
    int fd;
    int sock;               /* live: the connection to the destination until QEMU has it */
    uint64_t started_ms;
    uint64_t poll_at;
    bool polling;
    bool ended;             /* a MIGRATION event said the stream is over: query at once */
    int passes;             /* MIGRATION_PASS events: RAM passes so far */
    int64_t transferred, remaining, total;
    char status[24];
    struct sup_child sync;
    unsigned pending;       /* replies owed to this op: it is freed only without any */
    bool over;              /* finished; freed once nothing is pending */
};

/* migrate.c */
/* Frees the op once nothing is owed to it (pending replies) and it is over. */
void mig_release(struct sup *s);
/* A QMP command of the op: its reply is owed (pending) until mig_replied. */
int mig_send(struct sup *s, const char *cmd, json_object *args, const int *fds, size_t nfds, int timeout,
             qmp_reply_fn done);
/* The reply's op, or NULL when it is over (its memory released when nothing else is owed). */
struct mig_op *mig_replied(struct sup *s);
/* The save or migration failed: a partial file goes, the guest runs on as it was, the
 * client hears why. */
void mig_failed(struct sup *s, const char *fmt, ...) QV_PRINTF(2, 3);
void mig_next_step(struct sup *s);
/* What may not be under way when the guest's state leaves. */
int mig_checks(struct sup *s, const char *what, struct qv_err *e);

/* migrate_live.c */
int mig_connect_begin(struct sup *s, struct qv_err *e);     /* STEP_CONNECT */
void mig_connect_done(struct sup *s);
void mig_on_tls(struct sup *s, void *ctx, const struct qv_err *err);   /* STEP_TLS's end */
/* The destination runs the guest (it said so: answer): QEMU here quits. */
void mig_live_completed(struct sup *s, json_object *answer);

#endif
