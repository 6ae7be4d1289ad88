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

#define MIG_FDNAME "qv-migrate"
#define MIG_SYNC_TIMEOUT_MS (10 * 60 * 1000)
#define MIG_MAX_BANDWIDTH (1ll << 40)    /* bytes/s: QEMU's default (32 MiB/s) is too slow for files and LANs */
#define MIG_CONNECT_TIMEOUT_MS 15000

enum mig_step { STEP_STOP, STEP_STORAGE, STEP_CAPS, STEP_TLS, STEP_PARAMS, STEP_CONNECT, STEP_GETFD, STEP_MIGRATE,
                STEP_RUNNING, STEP_SYNC, STEP_DONE };
static const char *const step_names[] = {"stop", "copy-storage", "migrate-set-capabilities", "TLS credentials",
                                         "migrate-set-parameters", "connect", "getfd", "migrate"};

struct mig_op {
    bool live;              /* migrate to another host; else a save to a file */
    char address[80];       /* live: the destination, numeric ADDR:PORT */
    int64_t bandwidth;      /* bytes/s, 0: no cap */
    int64_t downtime_ms;    /* 0: QEMU's default */
    bool auto_converge;
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

/* ---- helpers ---- */

static const char *qemu_says(const char *msg)
{
    static const char generic[] = "GenericError: ";
    return strncmp(msg, generic, sizeof(generic) - 1) == 0 ? msg + sizeof(generic) - 1 : msg;
}

static void op_release(struct sup *s)
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

static int op_send(struct sup *s, const char *cmd, json_object *args, const int *fds, size_t nfds, int timeout,
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
static struct mig_op *replied(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (!m)
        return NULL;
    m->pending--;
    if (m->over) {
        op_release(s);
        return NULL;
    }
    return m;
}

/* The save failed: the partial file goes, the guest runs on as it was, the client hears why. */
static void save_failed(struct sup *s, const char *fmt, ...) QV_PRINTF(2, 3);
static void save_failed(struct sup *s, const char *fmt, ...)
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
    op_release(s);
}

/* ---- the end of a save: sync, rename, quit ---- */

static void save_synced(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (m->bypass_cache)
        posix_fadvise(m->fd, 0, 0, POSIX_FADV_DONTNEED);   /* synced: the pages are clean, they go at once */
    if (rename(m->part, m->file) < 0) {
        save_failed(s, "renaming %s into place: %s", m->part, strerror(errno));
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
    op_release(s);
}

/* The destination runs the guest (it said so: answer): QEMU here quits, the VM is
 * shut off here. */
static void live_completed(struct sup *s, json_object *answer)
{
    struct mig_op *m = s->mig;
    uint64_t ms = monotonic_ms() - m->started_ms;
    sup_log(s, "migrated to %s in %llu ms (downtime %lld ms, %lld MiB sent); QEMU quits here", m->address,
            (unsigned long long)ms, (long long)m->downtime, (long long)(m->transferred >> 20));
    json_object *o = json_object_new_object();
    json_object_object_add(o, "address", json_object_new_string(m->address));
    json_object_object_add(o, "total_time_ms", json_object_new_int64((int64_t)ms));
    json_object_object_add(o, "qemu_total_time_ms", json_object_new_int64(m->total_time));
    json_object_object_add(o, "downtime_ms", json_object_new_int64(m->downtime));
    json_object_object_add(o, "transferred", json_object_new_int64(m->transferred));
    json_object *v;
    if (answer && json_object_object_get_ex(answer, "state", &v))
        json_object_object_add(o, "destination_state", json_object_get(v));
    if (answer && json_object_object_get_ex(answer, "defined", &v))
        json_object_object_add(o, "defined", json_object_get(v));
    if (answer && json_object_object_get_ex(answer, "persistent_error", &v)) {
        json_object_object_add(o, "persistent_error", json_object_get(v));
        sup_log(s, "warning: the destination runs the guest but did not keep its definition: %s",
                json_object_get_string(v));
    }
    sup_reply_json(s, m->client, o);
    json_object_put(o);
    snprintf(s->exit_reason, sizeof(s->exit_reason), "migrated to %s", m->address);
    s->expected_exit = true;
    sup_set_state(s, VM_STOPPING);
    sup_qmp(s, "quit", NULL);
    m->over = true;
    m->step = STEP_DONE;
    op_release(s);
}

static void save_completed(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (m->live && s->msout) {
        /* the mirrors end in sync first, the destination runs the guest and confirms;
         * then live_completed */
        migstore_out_complete(s);
        return;
    }
    if (m->live) {
        save_failed(s, "the control line to the destination is gone");
        return;
    }
    m->step = STEP_SYNC;
    /* fsync of a file of guest RAM may take seconds: a child does it, the loop serves on */
    const char *argv[] = {"sync", m->part, NULL};
    struct qv_err e = {0};
    if (sup_child_spawn(&m->sync, argv, MIG_SYNC_TIMEOUT_MS, &e) < 0)
        save_failed(s, "syncing %s: %s", m->part, e.msg);
}

void migrate_child_exited(struct sup *s)
{
    struct mig_op *m = s->mig;
    int status;
    char out[512];
    if (!m || m->step != STEP_SYNC || !sup_child_reap(&m->sync, &status, out, sizeof(out)))
        return;
    if (status != 0)
        save_failed(s, "syncing %s: %s", m->part, out[0] ? out : "sync failed");
    else
        save_synced(s);
}

/* ---- progress ---- */

static int64_t get_i64(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static void on_query(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    struct mig_op *m = replied(s);
    if (!m)
        return;
    m->polling = false;
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
    if (strcmp(status, "completed") == 0) {
        m->poll_at = 0;
        save_completed(s);
    } else if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0) {
        m->poll_at = 0;
        const char *desc = json_object_object_get_ex(ret, "error-desc", &v) ? json_object_get_string(v) : NULL;
        save_failed(s, "%s", m->cancel_asked      ? "cancelled"
                              : m->storage_error[0] ? m->storage_error
                              : desc                ? desc
                                                    : "QEMU's migration failed (the destination went away?)");
    } else {
        /* the event may have come while this query was out: its answer is older */
        m->poll_at = monotonic_ms() + (m->ended ? 0 : MIG_POLL_MS);
    }
}

json_object *migrate_caps(bool auto_converge)
{
    json_object *caps = json_object_new_array();
    static const char *const names[] = {"events", "auto-converge"};
    for (int i = 0; i < 2; i++) {
        json_object *c = json_object_new_object();
        json_object_object_add(c, "capability", json_object_new_string(names[i]));
        json_object_object_add(c, "state", json_object_new_boolean(i == 0 || auto_converge));
        json_object_array_add(caps, c);
    }
    return json_obj1("capabilities", caps);
}

void migrate_event(struct sup *s, const char *event, json_object *data)
{
    json_object *v;
    const char *status = data && json_object_object_get_ex(data, "status", &v) ? json_object_get_string(v) : "";
    bool over = strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0;
    struct mig_op *m = s->mig;
    if (m && !m->over && m->step == STEP_RUNNING) {
        if (strcmp(event, "MIGRATION_PASS") == 0) {
            m->passes = data && json_object_object_get_ex(data, "pass", &v) ? json_object_get_int(v) : m->passes + 1;
        } else if (over) {
            m->ended = true;
            if (!m->polling)
                m->poll_at = monotonic_ms();    /* the final figures now */
        }
    }
    if (over && start_active(s) && s->start.incoming[0]) {
        s->mig_in_ended = true;     /* an incoming stream (or a restore) is in, or failed */
        if (s->start.in_poll_at)
            s->start.in_poll_at = monotonic_ms();
    }
}

/* ---- the steps up to `migrate` ---- */

static void next_step(struct sup *s);

static void on_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct mig_op *m = replied(s);
    if (!m)
        return;
    if (err) {
        save_failed(s, "%s: %s", step_names[m->step], qemu_says(err->msg));
        return;
    }
    if (m->cancel_asked) {
        save_failed(s, "cancelled");
        return;
    }
    m->step++;
    next_step(s);
}

int migrate_parse_address(const char *text, struct sockaddr_storage *sa, socklen_t *len, struct qv_err *e)
{
    char host[80];
    const char *colon = strrchr(text, ':');
    if (!colon || colon == text || !colon[1] || (size_t)(colon - text) >= sizeof(host))
        return qv_fail(e, -EINVAL, "\"%s\" is not ADDRESS:PORT", text);
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM}, *res;
    int r = getaddrinfo(h, colon + 1, &hints, &res);
    if (r != 0)
        return qv_fail(e, -EINVAL, "\"%s\": %s (a numeric address and port)", text, gai_strerror(r));
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int migrate_connect_start(const char *address, int *fd, struct qv_err *e)
{
    struct sockaddr_storage sa;
    socklen_t len;
    int r = migrate_parse_address(address, &sa, &len, e);
    if (r < 0)
        return r;
    *fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (*fd < 0)
        return qv_failerr(e, -errno, "socket");
    if (connect(*fd, (struct sockaddr *)&sa, len) < 0 && errno != EINPROGRESS)
        return qv_failerr(e, -errno, "connecting to %s", address);
    return 0;
}

/* A control line that goes silent (a cable pulled, a host gone) ends in about 25 s. */
void migrate_keepalive(int fd)
{
    int one = 1, idle = 10, intvl = 5, cnt = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* Non-blocking: the loop hears when it is connected (EPOLLOUT), or gives up at poll_at. */
static int connect_begin(struct sup *s, struct qv_err *e)
{
    struct mig_op *m = s->mig;
    int r = migrate_connect_start(m->address, &m->sock, e);
    if (r < 0)
        return r;
    s->ev_mig.kind = EV_MIGRATE;
    sup_epoll_add(s, m->sock, EPOLLOUT, &s->ev_mig);
    m->poll_at = monotonic_ms() + MIG_CONNECT_TIMEOUT_MS;
    return 0;
}

static void connect_done(struct sup *s)
{
    struct mig_op *m = s->mig;
    int err = 0;
    socklen_t l = sizeof(err);
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, m->sock, NULL);
    m->poll_at = 0;
    if (getsockopt(m->sock, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
        err = errno;
    if (err) {
        save_failed(s, "connecting to %s: %s (is qvisor migrate-incoming %s --listen %s waiting there?)", m->address,
                    strerror(err), s->def.name, m->address);
        return;
    }
    sup_log(s, "connected to %s", m->address);
    m->step++;
    next_step(s);
}

static void on_tls(struct sup *s, void *ctx, const struct qv_err *err)
{
    (void)ctx;
    struct mig_op *m = replied(s);
    if (!m)
        return;
    if (err) {
        save_failed(s, "%s", err->msg);
        return;
    }
    sup_log(s, "TLS credentials from %s loaded (the destination must show a certificate for %s)", m->tls_dir,
            m->tls_hostname);
    if (m->cancel_asked) {
        save_failed(s, "cancelled");
        return;
    }
    m->step++;
    next_step(s);
}

static void next_step(struct sup *s)
{
    struct mig_op *m = s->mig;
    int r = 0;
    json_object *a;
    struct qv_err e = {0};
    switch (m->step) {
    case STEP_STOP:
        if (m->live || !m->was_running) {
            m->step++;
            next_step(s);
            return;
        }
        r = op_send(s, "stop", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, on_step);
        break;
    case STEP_STORAGE: {
        if (!m->live) {
            m->step++;
            next_step(s);
            return;
        }
        /* the control line (and the disks' copy) first */
        struct migrate_live_opts lo = {.address = m->address, .token = m->token, .bandwidth = m->bandwidth,
                                       .copy_storage = m->copy_storage, .persistent = m->persistent};
        if (migstore_out_begin(s, &lo, &e) < 0)
            save_failed(s, "%s", e.msg);
        return;     /* migrate_storage_ready goes on */
    }
    case STEP_CAPS:
        /* always: an earlier attempt's auto-converge must not stick to this one */
        r = op_send(s, "migrate-set-capabilities", migrate_caps(m->live && m->auto_converge), NULL, 0,
                    QMP_TIMEOUT_DEFAULT, on_step);
        break;
    case STEP_TLS:
        if (!m->tls_dir[0]) {
            m->step++;
            next_step(s);
            return;
        }
        if (migrate_tls_begin(s, m->tls_dir, false, on_tls, NULL, &e) < 0)
            save_failed(s, "%s", e.msg);
        else
            m->pending++;
        return;
    case STEP_PARAMS:
        a = json_object_new_object();
        if (m->live) {
            /* always: an earlier attempt's TLS must not stick to this one */
            json_object_object_add(a, "tls-creds", json_object_new_string(m->tls_dir[0] ? MIG_TLS_ID : ""));
            json_object_object_add(a, "tls-hostname", json_object_new_string(m->tls_hostname));
        }
        json_object_object_add(a, "max-bandwidth", json_object_new_int64(m->bandwidth ? m->bandwidth : MIG_MAX_BANDWIDTH));
        if (m->downtime_ms)
            json_object_object_add(a, "downtime-limit", json_object_new_int64(m->downtime_ms));
        r = op_send(s, "migrate-set-parameters", a, NULL, 0, QMP_TIMEOUT_DEFAULT, on_step);
        break;
    case STEP_CONNECT:
        if (!m->live) {
            m->step++;
            next_step(s);
            return;
        }
        if (connect_begin(s, &e) < 0)
            save_failed(s, "%s", e.msg);
        return;
    case STEP_GETFD:
        r = op_send(s, "getfd", json_obj1("fdname", json_object_new_string(MIG_FDNAME)), m->live ? &m->sock : &m->fd, 1,
                    QMP_TIMEOUT_DEFAULT, on_step);
        if (r == 0 && m->live) {
            close(m->sock);     /* QEMU has its own copy now */
            m->sock = -1;
        }
        break;
    case STEP_MIGRATE:
        r = op_send(s, "migrate", json_obj1("uri", json_object_new_string("fd:" MIG_FDNAME)), NULL, 0,
                    QMP_TIMEOUT_JOB, on_step);
        break;
    default:
        m->step = STEP_RUNNING;
        m->poll_at = monotonic_ms();    /* a small guest is done before the first poll */
        return;
    }
    if (r < 0)
        save_failed(s, "QEMU's monitor connection is closed");
}

/* ---- requests ---- */

/* What may not be under way when the guest's state leaves. */
static int op_checks(struct sup *s, const char *what, struct qv_err *e)
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

int migrate_live(struct sup *s, unsigned client, const struct migrate_live_opts *o, struct qv_err *e)
{
    const char *address = o->address;
    int64_t bandwidth = o->bandwidth, downtime_ms = o->downtime_ms;
    bool auto_converge = o->auto_converge, copy_storage = o->copy_storage;
    int r = op_checks(s, "migrated", e);
    if (r < 0)
        return r;
    if (!o->token || !o->token[0] || strlen(o->token) >= sizeof(((struct mig_op *)0)->token))
        return qv_fail(e, -EINVAL, "%s: migrate: the destination's token is missing (migrate-incoming printed it)",
                       s->def.name);
    struct sockaddr_storage sa;
    socklen_t len;
    if ((r = migrate_parse_address(address, &sa, &len, e)) < 0)
        return qv_prefix(e, "%s: migrate: ", s->def.name);
    struct mig_op *m = qv_xcalloc(1, sizeof(*m));
    m->fd = m->sock = -1;
    m->sync.out = -1;
    m->live = true;
    m->client = client;
    m->bandwidth = bandwidth;
    m->downtime_ms = downtime_ms;
    m->auto_converge = auto_converge;
    m->copy_storage = copy_storage;
    m->persistent = o->persistent;
    snprintf(m->token, sizeof(m->token), "%s", o->token);
    m->was_running = s->rs.state == VM_RUNNING;
    m->started_ms = monotonic_ms();
    snprintf(m->address, sizeof(m->address), "%s", address);
    s->mig = m;
    sup_log(s, "migrating to %s (bandwidth %s, max downtime %s%s%s)", address, bandwidth ? "capped" : "unlimited",
            downtime_ms ? "set" : "QEMU's default", auto_converge ? ", auto-converge" : "",
            copy_storage ? ", copying local disks" : "");
    next_step(s);
    return 0;
}

int migrate_live_tls(struct sup *s, const char *dir, const char *hostname, struct qv_err *e)
{
    struct mig_op *m = s->mig;
    if (!m || m->over || !m->live || m->step > STEP_CAPS)
        return qv_fail(e, -EINVAL, "%s: TLS: no migration is being set up", s->def.name);
    if (!dir || dir[0] != '/')
        return qv_fail(e, -EINVAL, "%s: --tls: the directory must be an absolute path", s->def.name);
    if (!hostname || !hostname[0] || strlen(hostname) >= sizeof(m->tls_hostname))
        return qv_fail(e, -EINVAL, "%s: --tls: the destination's host name is missing", s->def.name);
    snprintf(m->tls_dir, sizeof(m->tls_dir), "%s", dir);
    snprintf(m->tls_hostname, sizeof(m->tls_hostname), "%s", hostname);
    return 0;
}

int migrate_save(struct sup *s, unsigned client, const char *file, bool bypass_cache, bool managed, struct qv_err *e)
{
    int r = op_checks(s, "saved", e);
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
    r = savefile_write_header(m->fd, &s->def, vm_state_names[s->rs.state], s->rs.qemu_version, e);
    if (r < 0) {
        unlink(m->part);
        close(m->fd);
        free(m);
        return qv_prefix(e, "%s: %s: ", s->def.name, file);
    }
    s->mig = m;
    sup_log(s, "saving the guest's state to %s%s", file, bypass_cache ? " (bypassing the page cache)" : "");
    next_step(s);
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
    m->cancel_asked = true;
    sup_log(s, "cancelling the %s %s", m->live ? "migration to" : "save to", m->live ? m->address : m->file);
    if (m->step == STEP_RUNNING)
        sup_qmp(s, "migrate_cancel", NULL);
    else if (m->step == STEP_CONNECT || m->step == STEP_STORAGE)
        save_failed(s, "cancelled");
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
        json_object_object_add(o, "token", json_object_new_string(s->mig_token));
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
    if (m->live)
        json_object_object_add(o, "passes", json_object_new_int(m->passes));
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
            save_failed(s, "connecting to %s: no answer within %d s", m->address, MIG_CONNECT_TIMEOUT_MS / 1000);
        }
        m = NULL;
    }
    if (m && !m->over) {
        sup_child_expire(&m->sync, now);
        if (m->poll_at && !m->polling && now >= m->poll_at) {
            m->poll_at = 0;
            m->polling = true;
            if (op_send(s, "query-migrate", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, on_query) < 0) {
                m->polling = false;
                save_failed(s, "QEMU's monitor connection is closed");
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
        save_failed(s, "QEMU exited during the save");
    m = s->mig;
    if (m)
        m->pending = 0;     /* the monitor is gone: no reply comes any more */
    op_release(s);
    migstore_out_forget(s);
}

void migrate_io(struct sup *s, uint32_t events)
{
    (void)events;
    if (migstore_in_waiting(s))
        migstore_in_accept(s);      /* copy-storage: the source's control connection comes first */
    else if (s->mig && !s->mig->over && s->mig->step == STEP_CONNECT && s->mig->sock >= 0)
        connect_done(s);
    else if (s->mig_listen_fd > 0 && start_active(s) && !s->start.failed)
        migrate_incoming_accept(s);
}


/* ---- for migstore_out.c ---- */

void migrate_storage_ready(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (!m || m->over || m->step != STEP_STORAGE)
        return;
    m->step++;
    next_step(s);
}

void migrate_storage_finished(struct sup *s, json_object *answer)
{
    if (s->mig && !s->mig->over)
        live_completed(s, answer);
}

void migrate_storage_unconfirmed(struct sup *s, const char *why)
{
    struct mig_op *m = s->mig;
    migstore_out_abort(s);
    if (!m || m->over)
        return;
    sup_log(s, "migration to %s: the guest's state went over, but %s; the guest stays paused here (it may run there)",
            m->address, why);
    sup_reply_error(s, m->client, -EIO, "%s: migration to %s: the guest's state went over, but %s: the guest stays "
                    "paused here, as it may run there. Look there (qvisor status %s on the destination), then "
                    "either qvisor kill %s here (it runs there) or qvisor resume %s here (it does not)", s->def.name,
                    m->address, why, s->def.name, s->def.name, s->def.name);
    sup_set_state(s, VM_PAUSED);
    m->over = true;
    m->step = STEP_DONE;
    op_release(s);
}

void migrate_storage_failed(struct sup *s, const char *why)
{
    struct mig_op *m = s->mig;
    if (!m || m->over) {
        migstore_out_abort(s);
        return;
    }
    if (m->step == STEP_RUNNING && m->poll_at) {
        /* the stream flows: QEMU cancels it and the guest runs on; on_query says why */
        snprintf(m->storage_error, sizeof(m->storage_error), "%s", why);
        migstore_out_abort(s);
        sup_qmp(s, "migrate_cancel", NULL);
        return;
    }
    save_failed(s, "%s", why);
}
