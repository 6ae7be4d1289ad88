/* Save, restore and live migration: migrate.c and migrate_live.c (out; migrate_op.h is
 * their shared state), migrate_in.c (in), migrate_tls.c,
 * the control line's and the disk copy's halves (migstore_in.c with migstore_copy.c,
 * migstore_out.c). Included by internal.h */
#ifndef QV_SUP_MIGRATION_H
#define QV_SUP_MIGRATION_H

#include "launcher/supervisor/internal.h"

/* migrate.c (and migrate_live.c): save (QEMU's migration stream into a file the supervisor opened, behind a
 * header with the definition; the VM is shut off once the file is synced and renamed
 * into place; any failure removes the partial file and the guest runs on), and the
 * restore of such a file in a start. */
/* client is answered once QEMU is gone after a save (or with the failure). */
int migrate_save(struct sup *s, unsigned client, const char *file, bool bypass_cache, bool managed, struct qv_err *e);
/* Live migration to the destination supervisor at address (numeric ADDR:PORT); client
 * is answered at the end ({"downtime_ms", "total_time_ms", ...}) or with the failure,
 * after which the guest runs on here. bandwidth bytes/s (0: no cap), downtime_ms 0:
 * QEMU's default. */
struct migrate_live_opts {
    const char *address;        /* numeric ADDR:PORT */
    const char *token;          /* the destination's one-time token (migrate-incoming printed it) */
    int64_t bandwidth, downtime_ms;
    bool auto_converge, copy_storage;
    bool persistent;            /* the destination keeps the definition it runs */
    bool postcopy;              /* switch to post-copy after the first pass (the destination waits with --postcopy) */
    int64_t postcopy_bandwidth_mib; /* post-copy's cap (QEMU's max-postcopy-bandwidth), MiB/s; 0: none */
    bool unsafe;                /* migrate a running guest QEMU may corrupt on the way (TCG before 9.0, 2+ vCPUs) */
};
int migrate_live(struct sup *s, unsigned client, const struct migrate_live_opts *o, struct qv_err *e);
/* A start that receives the guest from a source: listens on listen_at (numeric
 * ADDR:PORT) before QEMU runs; ready once QEMU is set up and waits. */
int start_begin_incoming(struct sup *s, const char *listen_at, bool copy_storage, struct qv_err *e);
/* The stream is in: announce-self, then `cont` (or stay paused). */
void migrate_incoming_resume(struct sup *s);
void migrate_incoming_close(struct sup *s);
/* The listener's numeric ADDR:PORT (the port the kernel chose for port 0) while a
 * start waits for the stream; NULL otherwise. */
const char *migrate_incoming_address(struct sup *s);
/* The migration just begun by migrate_live goes over TLS (migrate_tls.c): credentials
 * from dir, the destination's certificate checked against hostname. Called right after
 * migrate_live succeeded (its first step is a QMP round trip, the TLS step comes later). */
int migrate_live_tls(struct sup *s, const char *dir, const char *hostname, struct qv_err *e);
/* migrate_tls.c: QEMU's tls-creds-x509 object MIG_TLS_ID from dir (libvirt's layout:
 * ca-cert.pem and server-* or client-*.pem), verify-peer on; QEMU reads a staging copy
 * owned by its uid through an add-fd'd directory fd, removed once loaded. done is
 * called once, err NULL on success; it is not called when this returns an error. */
#define MIG_TLS_ID "qv-mig-tls"
typedef void (*migrate_tls_done)(struct sup *s, void *ctx, const struct qv_err *err);
int migrate_tls_begin(struct sup *s, const char *dir, bool server, migrate_tls_done done, void *ctx,
                      struct qv_err *e);
/* Between migrate.c and migrate_in.c: a numeric ADDR:PORT or [V6]:PORT; the source
 * connected to the listener; the next query-migrate of a start's incoming stream.
 * QEMU's MIGRATION events (capability "events", both sides) say when a stream ends:
 * query-migrate then runs at once for the final figures; between events it only
 * refreshes the progress figures, this often. */
#define MIG_POLL_MS 1000
/* MIGRATION / MIGRATION_PASS (lifecycle.c's event dispatch). */
void migrate_event(struct sup *s, const char *event, json_object *data);
/* {"capability": "events", "state": true}, auto-converge and postcopy-ram as asked */
json_object *migrate_caps(bool auto_converge, bool postcopy);
/* migrate_live.c: what the guest sees of its definition (machine, memory, vCPUs and their
 * maximum, disks and NICs by bus/model in order, cdroms, filesystems, host devices, TPM,
 * balloon): the source sends it on the control line, the destination refuses a guest that
 * does not fit its own definition (why: the first difference) before any stream. */
json_object *migrate_guest_shape(const struct vm_def *d);
int migrate_shape_diff(json_object *theirs, const struct vm_def *here, char *why, size_t whylen);
/* migrate_in.c: migrate-incoming --postcopy: whether QEMU, confined here, may use
 * userfaultfd (vm.unprivileged_userfaultfd, the sandbox's extra_deny); checked before
 * anything starts. */
int migrate_postcopy_host_check(struct sup *s, struct qv_err *e);
/* The incoming stream switched to post-copy (postcopy-active): the guest runs here now. */
void migrate_incoming_postcopy(struct sup *s);
int migrate_parse_address(const char *text, struct sockaddr_storage *sa, socklen_t *len, struct qv_err *e);
/* A non-blocking TCP connect to ADDR:PORT begun (*fd; EPOLLOUT says how it ended), or
 * -errno with e filled ("connecting to ADDR: why"). The caller closes *fd either way. */
int migrate_connect_start(const char *address, int *fd, struct qv_err *e);
void migrate_incoming_accept(struct sup *s);
void migrate_keepalive(int fd);     /* on a control line: a silent peer ends it */
void migrate_incoming_poll(struct sup *s);
/* EV_MIGRATE: the outgoing connect finished, or the source connected. */
void migrate_io(struct sup *s, uint32_t events);
/* migrate_cancel for a save or migration under way; its client hears "cancelled". */
int migrate_abort(struct sup *s, struct qv_err *e);
bool migrate_busy(struct sup *s);
json_object *migrate_status_json(struct sup *s);    /* NULL when nothing is under way */
uint64_t migrate_next_deadline(struct sup *s);
void migrate_expire(struct sup *s, uint64_t now);
void migrate_child_exited(struct sup *s);
/* QEMU is gone: a save under way fails (its partial file removed). */
void migrate_forget(struct sup *s);
/* The start's QEMU is set up: the saved state s->start.incoming goes in (checked
 * against the definition first); the start goes on with start_after_load. */
int migrate_incoming_begin(struct sup *s, struct qv_err *e);

/* migstore_in.c (and migstore_copy.c): the destination's half of the control line every
 * live migration goes over, and of --copy-storage's copy of local disks (the protocol is
 * described there). */
int migstore_in_listen(struct sup *s, bool copy_storage, struct qv_err *e);   /* wait for the source's hello */
bool migstore_in_waiting(struct sup *s);                   /* no control connection yet */
bool migstore_in_copy(struct sup *s);                      /* migrate-incoming --copy-storage */
void migstore_in_ready(struct sup *s);     /* QEMU waits: the bound on the wait for a source starts */
/* The stream's connection fd comes from the control line's peer (else: logged, refused). */
bool migstore_in_stream_ok(struct sup *s, int fd);
/* The start ended with the guest running (or paused as asked): the source is told. */
void migstore_in_started(struct sup *s, bool paused);
uint64_t migstore_in_next_deadline(struct sup *s);         /* the bound on the wait for a source */
void migstore_in_expire(struct sup *s, uint64_t now);
void migstore_in_accept(struct sup *s);
void migstore_in_io(struct sup *s);
void migstore_in_child_exited(struct sup *s);
int migstore_in_serve(struct sup *s, struct qv_err *e);    /* QEMU set up: NBD server, exports, answer */
/* The stream is in: true when the start must wait for the source's "finish" (it then
 * goes on with migrate_incoming_resume); always, for a migration with a control line. */
bool migstore_in_hold(struct sup *s);
void migstore_in_wind_up(struct sup *s, const char *why);  /* the start failed */
bool migstore_in_cancel(struct sup *s, const char *why);   /* a stop before QEMU runs */
void migstore_in_forget(struct sup *s);
/* migstore_out.c: the source's half of the control line, and of --copy-storage. */
int migstore_out_begin(struct sup *s, const struct migrate_live_opts *o, struct qv_err *e);
void migstore_out_nbd_io(struct sup *s);
/* The stream completed: the mirrors are cancelled in sync and the destination told;
 * then live_completed goes on (migrate_storage_finished), or the guest runs on here. */
void migstore_out_complete(struct sup *s);
/* The migration failed or was cancelled: mirrors, NBD nodes and connection go. */
void migstore_out_abort(struct sup *s);
void migstore_out_forget(struct sup *s);   /* QEMU is gone */
bool migstore_out_busy(struct sup *s);
void migstore_out_progress(struct sup *s, json_object *o);
uint64_t migstore_out_next_deadline(struct sup *s);
void migstore_out_expire(struct sup *s, uint64_t now);
/* EV_MIGCTL: the control connection, either side. */
void migstore_io(struct sup *s, uint32_t events);
/* migrate.c, for migstore_out.c: the destination waits for the stream (the disks are
 * in sync), or confirmed that the guest runs there (answer: its words; the source's
 * QEMU quits), or the migration failed before the destination could run the guest
 * (it runs on here), or the destination never confirmed (the guest stays paused here:
 * it may run there). dest_ran: whether the destination ran the guest, as it said with
 * its failure; -1: it did not say. */
void migrate_storage_ready(struct sup *s);
void migrate_storage_finished(struct sup *s, json_object *answer);
void migrate_storage_failed(struct sup *s, const char *why, int dest_ran);
void migrate_storage_unconfirmed(struct sup *s, const char *why);

#endif
