/* QEMU's migration stream, both ways. Out: `migrate` connects to the destination's
 * supervisor (a non-blocking TCP connect, the socket handed to QEMU: QEMU itself may
 * have no network at all) and migrates live; once QEMU says "completed" the destination
 * owns the guest and QEMU here quits (the supervisor releases taps and rules as after
 * any stop); a failure leaves the guest running here (QEMU resumes it itself). In
 * (migrate_in.c): restores and migrate-incoming. `save` (and managedsave) pauses the guest
 * and migrates it into a file the supervisor opened, behind a header that records the
 * definition (model/savefile.c); once QEMU says "completed" the file is synced by a
 * watched child, renamed into place and QEMU quits: the VM is shut off. A failure at any
 * step removes the partial file and lets the guest run on as it was. In: a start that
 * restores (restore, a start after managedsave) runs QEMU with `-incoming defer` and,
 * once it is set up, hands it the file's fd at the stream's offset (migrate-incoming
 * fd:); the start then goes on to `cont` or ends paused. Nothing here waits: every step
 * is a QMP completion, progress comes from query-migrate polls. */
#include <fcntl.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>

#include "launcher/supervisor/internal.h"
#include "launcher/supervisor/migrate_op.h"

#define MIG_FDNAME "qv-migrate"
static const char *const step_names[] = {"stop", "copy-storage", "migrate-set-capabilities", "TLS credentials",
                                         "migrate-set-parameters", "connect", "getfd", "migrate"};

/* ---- helpers ---- */

static const char *qemu_says(const char *msg)
{
    static const char generic[] = "GenericError: ";
    return strncmp(msg, generic, sizeof(generic) - 1) == 0 ? msg + sizeof(generic) - 1 : msg;
}

void mig_release(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (!m || m->pending)
        return;
    sup_child_abort(&m->sync);
    if (m->fd >= 0)
        close(m->fd);
    if (m->sock >= 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, m->sock, NULL);
        close(m->sock);
    }
    free(m);
    s->mig = NULL;
}

int mig_send(struct sup *s, const char *cmd, json_object *args, const int *fds, size_t nfds, int timeout,
                   qmp_reply_fn done)
{
    if (!s->qmp || !qmp_ready(s->qmp)) {
        if (args)
            json_object_put(args);
        return -ECONNRESET;
    }
    int r = qmp_send(s->qmp, cmd, args, fds, nfds, timeout, 0, done, s);
    if (r == 0)
        s->mig->pending++;
    return r;
}

/* The reply's op, or NULL when it is over (its memory released when nothing else is owed). */
struct mig_op *mig_replied(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (!m)
        return NULL;
    m->pending--;
    if (m->over) {
        mig_release(s);
        return NULL;
    }
    return m;
}

/* The save failed: the partial file goes, the guest runs on as it was, the client hears why. */
void mig_failed(struct sup *s, const char *fmt, ...)
{
    migstore_out_abort(s);      /* mirrors and NBD nodes go; the destination hears it */
    if (s->mig->sock >= 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->mig->sock, NULL);
        close(s->mig->sock);
        s->mig->sock = -1;
    }
    struct mig_op *m = s->mig;
    char why[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (m->part[0])
        unlink(m->part);
    bool resume = !m->live && m->was_running && m->step > STEP_STOP && s->qmp;
    if (resume)
        sup_qmp(s, "cont", NULL);
    /* live: QEMU resumes a guest it stopped for the last pass itself */
    const char *then = resume || (m->live && s->qmp) ? "; the guest runs on here" : s->qmp ? "; the guest stays as it was" : "";
    const char *what = m->live ? "migration to" : "save to";
    const char *where = m->live ? m->address : m->file;
    sup_log(s, "%s %s failed: %s%s", what, where, why, then);
    sup_reply_error(s, m->client, m->cancel_asked ? -ECANCELED : -EIO, "%s: %s %s failed: %s%s", s->def.name, what,
                    where, why, then);
    m->over = true;
    m->step = STEP_DONE;
    mig_release(s);
}

/* ---- the end of a save: sync, rename, quit ---- */

static void save_synced(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (m->bypass_cache)
        posix_fadvise(m->fd, 0, 0, POSIX_FADV_DONTNEED);   /* synced: the pages are clean, they go at once */
    if (rename(m->part, m->file) < 0) {
        mig_failed(s, "renaming %s into place: %s", m->part, strerror(errno));
        return;
    }
    m->part[0] = '\0';
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", m->file);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        int dfd = open(*dir ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    uint64_t ms = monotonic_ms() - m->started_ms;
    sup_log(s, "%s saved to %s (%lld MiB of guest state in %llu ms); QEMU quits", s->def.name, m->file,
            (long long)(m->transferred >> 20), (unsigned long long)ms);
    snprintf(s->exit_reason, sizeof(s->exit_reason), "%s to %s", m->managed ? "managed save" : "saved", m->file);
    s->expected_exit = true;
    sup_set_state(s, VM_STOPPING);
    ctl_wait_for_stop(s, m->client);    /* answered once QEMU is gone and the VM recorded shut off */
    sup_qmp(s, "quit", NULL);
    m->over = true;
    m->step = STEP_DONE;
    mig_release(s);
}

static void save_completed(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (m->live && s->msout) {
        /* the mirrors end in sync first, the destination runs the guest and confirms;
         * then mig_live_completed */
        migstore_out_complete(s);
        return;
    }
    if (m->live && m->in_postcopy) {
        /* all of it is there, and only there: the destination just did not say so */
        sup_log(s, "the stream completed in post-copy, the control line is gone: the guest is on %s", m->address);
        mig_live_completed(s, NULL);
        return;
    }
    if (m->live) {
        mig_failed(s, "the control line to the destination is gone");
        return;
    }
    m->step = STEP_SYNC;
    /* fsync of a file of guest RAM may take seconds: a child does it, the loop serves on */
    const char *argv[] = {"sync", m->part, NULL};
    struct qv_err e = {0};
    if (sup_child_spawn(&m->sync, argv, MIG_SYNC_TIMEOUT_MS, &e) < 0)
        mig_failed(s, "syncing %s: %s", m->part, e.msg);
}

void migrate_child_exited(struct sup *s)
{
    struct mig_op *m = s->mig;
    int status;
    char out[512];
    if (!m || m->step != STEP_SYNC || !sup_child_reap(&m->sync, &status, out, sizeof(out)))
        return;
    if (status != 0)
        mig_failed(s, "syncing %s: %s", m->part, out[0] ? out : "sync failed");
    else
        save_synced(s);
}

/* ---- progress ---- */

static int64_t get_i64(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

/* The end of a migration that broke after the switch to post-copy (postcopy_broken):
 * told to the user as it is; cont_error: QEMU's answer to the `cont` that tried to
 * resume a guest that never ran on the destination (NULL: it runs on here, or none was
 * tried). */
static void postcopy_end(struct sup *s, bool cont_tried, const char *cont_error)
{
    struct mig_op *m = s->mig;
    const char *name = s->def.name, *why = m->storage_error;
    char dest[340];
    snprintf(dest, sizeof(dest), "%.300s", m->dest_error[0] ? m->dest_error : "the destination said nothing");
    if (cont_tried && !cont_error) {
        sup_log(s, "migration to %s failed after the switch to post-copy: %s; the guest never ran there: it runs on "
                "here", m->address, why);
        sup_reply_error(s, m->client, -EIO, "%s: migration to %s failed after the switch to post-copy: %s (%s); the "
                        "guest never ran there, and runs on here", name, m->address, why, dest);
    } else if (m->dest_ran == 0) {
        sup_log(s, "migration to %s failed after the switch to post-copy: %s; the guest never ran there, but QEMU "
                "cannot resume it here (%s): it stays paused", m->address, why, cont_error ? cont_error : "");
        sup_reply_error(s, m->client, -EIO, "%s: migration to %s failed after the switch to post-copy: %s (%s). The "
                        "guest never ran there, so its whole state is here, but QEMU %d.%d cannot resume it (cont: "
                        "%.120s: its migration waits for a post-copy recovery that cannot come): it stays paused "
                        "here. Its disks hold what it wrote until it stopped: qvisor kill %s here, then qvisor start "
                        "%s boots it again; what was only in its memory is lost", name, m->address, why, dest,
                        s->facts.qemu_major, s->facts.qemu_minor, cont_error ? cont_error : "", name, name);
        sup_set_state(s, VM_PAUSED);
    } else if (m->dest_ran == 1) {
        sup_log(s, "migration to %s broke during post-copy: %s; the guest can run on neither host, QEMU stays paused "
                "here", m->address, why);
        sup_reply_error(s, m->client, -EIO, "%s: migration to %s broke during post-copy: %s (%s). The guest ran "
                        "there already, so it cannot come back here, and part of its memory is here only, so it "
                        "cannot run there either: it is lost (qvisor kill %s on both hosts, then start it from its "
                        "disks)", name, m->address, why, dest, name);
        sup_set_state(s, VM_PAUSED);
    } else {
        sup_log(s, "migration to %s broke during post-copy: %s; the destination did not say whether the guest ran "
                "there; QEMU stays paused here", m->address, why);
        sup_reply_error(s, m->client, -EIO, "%s: migration to %s broke during post-copy: %s (%s), "
                        "and the destination did not say whether the guest ran there. If it did, part of its memory "
                        "is here only and it can run on neither host; if not, its state is here but QEMU cannot "
                        "resume it after the switch. It stays paused here: qvisor status %s there, then qvisor kill "
                        "%s on both hosts and start it from its disks", name, m->address, why, dest, name, name);
        sup_set_state(s, VM_PAUSED);
    }
    m->over = true;
    m->step = STEP_DONE;
    mig_release(s);
}

static void on_broken_cont(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    if (mig_replied(s))
        postcopy_end(s, true, err ? qemu_says(err->msg) : NULL);
}

/* The stream broke (or stalled) after the switch to post-copy. Where the guest can run
 * depends on whether it ran on the destination, as the destination said with its
 * failure: if it never did, its whole state is here and `cont` resumes it (QEMU 7.2
 * refuses: its migration waits for a recovery that cannot come, and qvisor does not do
 * one); if it did, part of its memory is here only and it can run on neither host. */
static void postcopy_broken(struct sup *s, const char *why)
{
    struct mig_op *m = s->mig;
    migstore_out_abort(s);
    m->concluding = true;
    m->poll_at = 0;
    snprintf(m->storage_error, sizeof(m->storage_error), "%s", why);
    if (m->dest_ran == 0) {
        sup_log(s, "post-copy broke (%s), and the guest never ran on %s: resuming it here", why, m->address);
        if (mig_send(s, "cont", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, on_broken_cont) == 0)
            return;
        postcopy_end(s, true, "QEMU's monitor connection is closed");
        return;
    }
    postcopy_end(s, false, NULL);
}

/* query-migrate's answer after the switch to post-copy: true when the migration ended
 * there (broke, or stalled past its bound), told by postcopy_broken. QEMU's own end
 * (postcopy-paused) waits a little for the destination's word on whether the guest ran
 * there, which changes what can be done. */
static bool postcopy_check(struct sup *s, const char *status, const char *desc)
{
    struct mig_op *m = s->mig;
    uint64_t now = monotonic_ms();
    if (!m->in_postcopy || strcmp(status, "completed") == 0)
        return false;
    if (m->transferred != m->last_transferred || !m->progress_at) {
        m->last_transferred = m->transferred;
        m->progress_at = now;
    }
    bool broke = strcmp(status, "postcopy-paused") == 0 || strcmp(status, "failed") == 0 ||
                 strcmp(status, "cancelling") == 0;
    char why[300];
    if (broke) {
        if (m->dest_ran < 0 && !m->dest_gone) {
            if (!m->verdict_by)
                m->verdict_by = now + MIG_VERDICT_WAIT_MS;
            if (now < m->verdict_by)
                return false;
        }
        snprintf(why, sizeof(why), "%s", desc ? desc : "QEMU's stream broke");
    } else if (m->dest_gone && m->dest_ran >= 0) {
        /* the destination's QEMU is gone, it said so: nothing more can go */
        snprintf(why, sizeof(why), "the destination failed");
    } else {
        uint64_t bound = m->dest_gone ? MIG_POSTCOPY_GONE_STALL_MS : MIG_POSTCOPY_STALL_MS;
        if (now - m->progress_at < bound)
            return false;
        snprintf(why, sizeof(why), "QEMU sent nothing for %llu s (it stays in %s)",
                 (unsigned long long)((now - m->progress_at) / 1000), status);
    }
    postcopy_broken(s, why);
    return true;
}

static void on_query(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    struct mig_op *m = mig_replied(s);
    if (!m)
        return;
    m->polling = false;
    if (m->concluding)
        return;
    if (err) {
        sup_log(s, "query-migrate: %s", err->msg);
        m->poll_at = monotonic_ms() + MIG_POLL_MS;
        return;
    }
    json_object *v, *ram = NULL;
    const char *status = json_object_object_get_ex(ret, "status", &v) ? json_object_get_string(v) : "";
    snprintf(m->status, sizeof(m->status), "%s", status);
    if (json_object_object_get_ex(ret, "ram", &ram)) {
        m->transferred = get_i64(ram, "transferred");
        m->remaining = get_i64(ram, "remaining");
        m->total = get_i64(ram, "total");
        m->dirty_rate = get_i64(ram, "dirty-pages-rate") * get_i64(ram, "page-size");
    }
    m->expected_downtime = get_i64(ret, "expected-downtime");
    m->downtime = get_i64(ret, "downtime");
    m->total_time = get_i64(ret, "total-time");
    /* postcopy-paused too: the switch may be over and broken between two queries */
    if (!m->in_postcopy && (strcmp(status, "postcopy-active") == 0 || strcmp(status, "postcopy-paused") == 0 ||
                            strcmp(status, "postcopy-recover") == 0)) {
        m->in_postcopy = true;
        sup_log(s, "post-copy: the guest stopped here to run on %s; the rest of its memory follows (once it ran "
                "there, a failure cannot bring it back here)", m->address);
    }
    const char *desc = json_object_object_get_ex(ret, "error-desc", &v) ? json_object_get_string(v) : NULL;
    if (strcmp(status, "completed") == 0) {
        m->poll_at = 0;
        save_completed(s);
    } else if (postcopy_check(s, status, desc)) {
        return;
    } else if (m->in_postcopy) {
        m->poll_at = monotonic_ms() + MIG_POLL_MS;
    } else if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0) {
        m->poll_at = 0;
        mig_failed(s, "%s", m->cancel_asked      ? "cancelled"
                              : m->storage_error[0] ? m->storage_error
                              : desc                ? desc
                                                    : "QEMU's migration failed (the destination went away?)");
    } else {
        /* the event may have come while this query was out: its answer is older */
        m->poll_at = monotonic_ms() + (m->ended ? 0 : MIG_POLL_MS);
    }
}

json_object *migrate_caps(bool auto_converge, bool postcopy)
{
    json_object *caps = json_object_new_array();
    static const char *const names[] = {"events", "auto-converge", "postcopy-ram"};
    const bool on[] = {true, auto_converge, postcopy};
    for (int i = 0; i < 3; i++) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "capability", json_object_new_string(names[i]));
        json_object_object_add(c, "state", json_object_new_boolean(on[i]));
        json_object_array_add(caps, c);
    }
    return json_obj1("capabilities", caps);
}

static void on_postcopy_started(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct mig_op *m = mig_replied(s);
    if (m && err)
        sup_log(s, "migrate-start-postcopy: %s; the migration goes on as pre-copy", qemu_says(err->msg));
}

void migrate_event(struct sup *s, const char *event, json_object *data)
{
    json_object *v;
    const char *status = data && json_object_object_get_ex(data, "status", &v) ? json_object_get_string(v) : "";
    bool over = strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0;
    struct mig_op *m = s->mig;
    if (m && !m->over && !m->concluding && m->step == STEP_RUNNING) {
        if (strcmp(event, "MIGRATION_PASS") == 0) {
            m->passes = data && json_object_object_get_ex(data, "pass", &v) ? json_object_get_int(v) : m->passes + 1;
            /* pass 1 is the start; 2 comes once the first pass over RAM is done and
             * did not converge (virsh's --postcopy-after-precopy) */
            if (m->postcopy && !m->postcopy_asked && m->passes >= 2) {
                m->postcopy_asked = true;
                sup_log(s, "the first pass is done (%lld MiB sent): switching to post-copy",
                        (long long)(m->transferred >> 20));
                if (mig_send(s, "migrate-start-postcopy", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, on_postcopy_started) < 0)
                    sup_log(s, "migrate-start-postcopy: QEMU's monitor connection is closed");
            }
        } else if (strcmp(status, "postcopy-active") == 0 || strcmp(status, "postcopy-paused") == 0) {
            if (!m->polling)
                m->poll_at = monotonic_ms();    /* the phase shows at once */
        } else if (over) {
            m->ended = true;
            if (!m->polling)
                m->poll_at = monotonic_ms();    /* the final figures now */
        }
    }
    if (strcmp(status, "postcopy-active") == 0 && start_active(s) && s->start.incoming[0])
        migrate_incoming_postcopy(s);     /* the source stopped the guest: it runs here now */
    if (over && start_active(s) && s->start.incoming[0]) {
        s->mig_in.ended = true;     /* an incoming stream (or a restore) is in, or failed */
        if (s->start.in_poll_at)
            s->start.in_poll_at = monotonic_ms();
    }
}

/* ---- the steps up to `migrate` ---- */

static void on_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct mig_op *m = mig_replied(s);
    if (!m)
        return;
    if (err) {
        mig_failed(s, "%s: %s", step_names[m->step], qemu_says(err->msg));
        return;
    }
    if (m->cancel_asked) {
        mig_failed(s, "cancelled");
        return;
    }
    m->step++;
    mig_next_step(s);
}

void mig_next_step(struct sup *s)
{
    struct mig_op *m = s->mig;
    int r = 0;
    json_object *a;
    struct qv_err e = {0};
    switch (m->step) {
    case STEP_STOP:
        if (m->live || !m->was_running) {
            m->step++;
            mig_next_step(s);
            return;
        }
        r = mig_send(s, "stop", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, on_step);
        break;
    case STEP_STORAGE: {
        if (!m->live) {
            m->step++;
            mig_next_step(s);
            return;
        }
        /* the control line (and the disks' copy) first */
        struct migrate_live_opts lo = {.address = m->address, .token = m->token, .bandwidth = m->bandwidth,
                                       .copy_storage = m->copy_storage, .persistent = m->persistent,
                                       .postcopy = m->postcopy};
        if (migstore_out_begin(s, &lo, &e) < 0)
            mig_failed(s, "%s", e.msg);
        return;     /* migrate_storage_ready goes on */
    }
    case STEP_CAPS:
        /* always: an earlier attempt's auto-converge must not stick to this one */
        r = mig_send(s, "migrate-set-capabilities", migrate_caps(m->live && m->auto_converge, m->live && m->postcopy),
                    NULL, 0,
                    QMP_TIMEOUT_DEFAULT, on_step);
        break;
    case STEP_TLS:
        if (!m->tls_dir[0]) {
            m->step++;
            mig_next_step(s);
            return;
        }
        if (migrate_tls_begin(s, m->tls_dir, false, mig_on_tls, NULL, &e) < 0)
            mig_failed(s, "%s", e.msg);
        else
            m->pending++;
        return;
    case STEP_PARAMS:
        a = json_object_new_object();
        if (m->live) {
            /* always: an earlier attempt's TLS must not stick to this one */
            json_object_object_add(a, "tls-creds", json_object_new_string(m->tls_dir[0] ? MIG_TLS_ID : ""));
            json_object_object_add(a, "tls-hostname", json_object_new_string(m->tls_hostname));
            /* always, as TLS: 0 is no cap (QEMU's default) */
            json_object_object_add(a, "max-postcopy-bandwidth", json_object_new_int64(m->postcopy_bandwidth));
        }
        json_object_object_add(a, "max-bandwidth", json_object_new_int64(m->bandwidth ? m->bandwidth : MIG_MAX_BANDWIDTH));
        if (m->downtime_ms)
            json_object_object_add(a, "downtime-limit", json_object_new_int64(m->downtime_ms));
        r = mig_send(s, "migrate-set-parameters", a, NULL, 0, QMP_TIMEOUT_DEFAULT, on_step);
        break;
    case STEP_CONNECT:
        if (!m->live) {
            m->step++;
            mig_next_step(s);
            return;
        }
        if (mig_connect_begin(s, &e) < 0)
            mig_failed(s, "%s", e.msg);
        return;
    case STEP_GETFD:
        r = mig_send(s, "getfd", json_obj1("fdname", json_object_new_string(MIG_FDNAME)), m->live ? &m->sock : &m->fd, 1,
                    QMP_TIMEOUT_DEFAULT, on_step);
        if (r == 0 && m->live) {
            close(m->sock);     /* QEMU has its own copy now */
            m->sock = -1;
        }
        break;
    case STEP_MIGRATE:
        r = mig_send(s, "migrate", json_obj1("uri", json_object_new_string("fd:" MIG_FDNAME)), NULL, 0,
                    QMP_TIMEOUT_JOB, on_step);
        break;
    default:
        m->step = STEP_RUNNING;
        m->poll_at = monotonic_ms();    /* a small guest is done before the first poll */
        return;
    }
    if (r < 0)
        mig_failed(s, "QEMU's monitor connection is closed");
}

/* ---- requests ---- */

/* What may not be under way when the guest's state leaves. */
int mig_checks(struct sup *s, const char *what, struct qv_err *e)
{
    if (s->mig)
        return qv_fail(e, -EBUSY, "%s: a save or migration is already under way", s->def.name);
    if (migstore_out_busy(s))
        return qv_fail(e, -EBUSY, "%s: the last migration's disk mirrors are being removed; try again in a moment",
                       s->def.name);
    if (s->rs.state != VM_RUNNING && s->rs.state != VM_PAUSED)
        return qv_fail(e, -EBUSY, "%s is %s: only a running or paused VM can be %s", s->def.name,
                       vm_state_names[s->rs.state], what);
    for (int i = 0; i < SUP_JOBS_MAX; i++)
        if (s->jobs[i].used)
            return qv_fail(e, -EBUSY, "%s: job %s is under way; try once it is over (qvisor status %s)",
                           s->def.name, s->jobs[i].id, s->def.name);
    if (s->snap)
        return qv_fail(e, -EBUSY, "%s: a snapshot is being taken; try once it is done", s->def.name);
    for (size_t i = 0; i < HOTPLUG_MAX; i++)
        if (s->hp[i].used)
            return qv_fail(e, -EBUSY, "%s: %s was attached while it runs and is not in its definition: the other "
                           "side needs the same devices (detach it first)", s->def.name, s->hp[i].id);
    return 0;
}

int migrate_save(struct sup *s, unsigned client, const char *file, bool bypass_cache, bool managed, struct qv_err *e)
{
    int r = mig_checks(s, "saved", e);
    if (r < 0)
        return r;
    if (s->never_ran)
        return qv_fail(e, -EBUSY, "%s was started paused and never ran: there is nothing to save", s->def.name);
    if (!file || file[0] != '/')
        return qv_fail(e, -EINVAL, "%s: save: the file must be an absolute path, not \"%s\"", s->def.name,
                       file ? file : "");
    struct mig_op *m = qv_xcalloc(1, sizeof(*m));
    m->fd = m->sock = -1;
    m->sync.out = -1;
    m->client = client;
    m->managed = managed;
    m->bypass_cache = bypass_cache;
    m->was_running = s->rs.state == VM_RUNNING;
    m->started_ms = monotonic_ms();
    snprintf(m->file, sizeof(m->file), "%s", file);
    if (snprintf(m->part, sizeof(m->part), "%s.part", file) >= (int)sizeof(m->part)) {
        free(m);
        return qv_fail(e, -ENAMETOOLONG, "%s: %s: path too long", s->def.name, file);
    }
    /* guest memory: readable by root only */
    m->fd = open(m->part, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (m->fd < 0) {
        int err = -errno;
        free(m);
        return qv_failerr(e, err, "%s: %s", s->def.name, file);
    }
    const struct savefile_live live = {.vcpus = s->tune.vcpus, .balloon_target = s->tune.balloon_target};
    r = savefile_write_header(m->fd, &s->def, vm_state_names[s->rs.state], s->rs.qemu_version, &live, e);
    if (r < 0) {
        unlink(m->part);
        close(m->fd);
        free(m);
        return qv_prefix(e, "%s: %s: ", s->def.name, file);
    }
    s->mig = m;
    sup_log(s, "saving the guest's state to %s%s", file, bypass_cache ? " (bypassing the page cache)" : "");
    mig_next_step(s);
    return 0;
}

int migrate_abort(struct sup *s, struct qv_err *e)
{
    struct mig_op *m = s->mig;
    if (!m || m->over)
        return qv_fail(e, -ENOENT, "%s: no save or migration is under way", s->def.name);
    if (m->step >= STEP_SYNC)
        return qv_fail(e, -EBUSY, "%s: the save is complete and being synced to disk: too late to cancel",
                       s->def.name);
    if (m->postcopy_asked)
        return qv_fail(e, -EBUSY, "%s: the migration switched to post-copy: the guest runs on %s now, and a cancel "
                       "would lose it; it ends by itself", s->def.name, m->address);
    m->cancel_asked = true;
    sup_log(s, "cancelling the %s %s", m->live ? "migration to" : "save to", m->live ? m->address : m->file);
    if (m->step == STEP_RUNNING)
        sup_qmp(s, "migrate_cancel", NULL);
    else if (m->step == STEP_CONNECT || m->step == STEP_STORAGE)
        mig_failed(s, "cancelled");
    return 0;
}

json_object *migrate_status_json(struct sup *s)
{
    struct mig_op *m = s->mig;
    const char *in = migrate_incoming_address(s);
    if ((!m || m->over) && in) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "kind", json_object_new_string("incoming"));
        json_object_object_add(o, "address", json_object_new_string(in));
        json_object_object_add(o, "token", json_object_new_string(s->mig_in.token));
        return o;
    }
    if (!m || m->over)
        return NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "kind", json_object_new_string(m->live ? "migrate" : m->managed ? "managedsave" : "save"));
    if (m->live) {
        json_object_object_add(o, "address", json_object_new_string(m->address));
        json_object_object_add(o, "dirty_rate", json_object_new_int64(m->dirty_rate));
        json_object_object_add(o, "expected_downtime_ms", json_object_new_int64(m->expected_downtime));
    } else {
        json_object_object_add(o, "file", json_object_new_string(m->file));
    }
    json_object_object_add(o, "status", json_object_new_string(m->step == STEP_SYNC ? "syncing"
                                                               : m->status[0]     ? m->status
                                                                                  : "setup"));
    json_object_object_add(o, "transferred", json_object_new_int64(m->transferred));
    if (m->live) {
        json_object_object_add(o, "passes", json_object_new_int(m->passes));
        json_object_object_add(o, "postcopy", json_object_new_boolean(m->in_postcopy));
    }
    json_object_object_add(o, "remaining", json_object_new_int64(m->remaining));
    json_object_object_add(o, "total", json_object_new_int64(m->total));
    migstore_out_progress(s, o);
    json_object_object_add(o, "elapsed_ms", json_object_new_int64((int64_t)(monotonic_ms() - m->started_ms)));
    return o;
}

bool migrate_busy(struct sup *s)
{
    return s->mig && !s->mig->over;
}

uint64_t migrate_next_deadline(struct sup *s)
{
    uint64_t d = 0;
    if (s->mig && !s->mig->over) {
        d = s->mig->polling ? 0 : s->mig->poll_at;
        if (s->mig->sync.pid && (!d || s->mig->sync.deadline < d))
            d = s->mig->sync.deadline;
    }
    if (s->start.in_poll_at && (!d || s->start.in_poll_at < d))
        d = s->start.in_poll_at;
    uint64_t ds = migstore_out_next_deadline(s);
    if (ds && (!d || ds < d))
        d = ds;
    ds = migstore_in_next_deadline(s);
    if (ds && (!d || ds < d))
        d = ds;
    return d;
}

void migrate_expire(struct sup *s, uint64_t now)
{
    migstore_out_expire(s, now);
    migstore_in_expire(s, now);
    struct mig_op *m = s->mig;
    if (m && !m->over && m->step == STEP_CONNECT) {
        if (m->poll_at && now >= m->poll_at) {
            m->poll_at = 0;
            mig_failed(s, "connecting to %s: no answer within %d s", m->address, MIG_CONNECT_TIMEOUT_MS / 1000);
        }
        m = NULL;
    }
    if (m && !m->over) {
        sup_child_expire(&m->sync, now);
        if (m->poll_at && !m->polling && now >= m->poll_at) {
            m->poll_at = 0;
            m->polling = true;
            if (mig_send(s, "query-migrate", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, on_query) < 0) {
                m->polling = false;
                mig_failed(s, "QEMU's monitor connection is closed");
            }
        }
    }
    if (s->start.in_poll_at && now >= s->start.in_poll_at) {
        s->start.in_poll_at = 0;
        migrate_incoming_poll(s);
    }
}

void migrate_forget(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (!m) {
        migstore_out_forget(s);
        return;
    }
    if (!m->over)
        mig_failed(s, "QEMU exited during the save");
    m = s->mig;
    if (m)
        m->pending = 0;     /* the monitor is gone: no reply comes any more */
    mig_release(s);
    migstore_out_forget(s);
}
