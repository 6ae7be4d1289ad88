/* The source's half of the control line every live migration goes over, and of
 * migrate --copy-storage (the protocol is described in migstore_in.c). Before QEMU's
 * migration stream starts the destination is told which VM comes (name, uuid, its
 * token); without --copy-storage its "ok" lets the stream go. With it: the local disks are listed
 * (query-named-block-nodes: their virtual size and format), the destination is told
 * over a control connection and answers with its NBD exports; for each disk the
 * supervisor connects to the NBD server (QEMU may have no network: it gets the socket
 * as an fd), adds an nbd client node and starts a blockdev-mirror (sync full) into it.
 * Once every mirror is ready (in sync) migrate.c goes on with the stream. When the
 * stream completed (the guest stopped here) the mirrors are cancelled, which in the
 * ready state finishes their last writes and leaves the targets consistent; the nodes
 * go, the destination hears "finish" and answers once its NBD server is stopped; then
 * QEMU here quits. Any failure before that cancels the mirrors (force), removes the
 * nodes and closes the connection (the destination removes what it made); the guest
 * runs on here with its disks untouched: a mirror only reads them. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "launcher/supervisor/internal.h"

#define MSO_HELLO_TIMEOUT_MS 180000     /* the destination makes the images and starts QEMU first */
#define MSO_ACK_TIMEOUT_MS 60000
#define MSO_CONNECT_TIMEOUT_MS 15000
#define MSO_CLEANUP_TIMEOUT_MS 60000
#define MSO_POLL_MS 300

enum mso_phase { MSO_LISTING, MSO_CONNECTING, MSO_HELLO, MSO_NBD, MSO_MIRRORING, MSO_SYNCED, MSO_FINISHING,
                 MSO_ACK, MSO_CLEANUP };

struct mso_disk {
    char id[24], node[48], export[64];
    int64_t size, done, total;
    char format[8], status[16];
    bool added, mirroring, ready, concluded, dismissed, deleted;
};

struct migstore_out {
    enum mso_phase phase;
    char address[80], nbd[80];
    char token[68];
    bool copy, persistent, postcopy;
    int64_t speed;
    int ctl, nbd_sock;
    struct buf in;
    struct mso_disk disks[VM_MAX_DISKS];
    size_t n, cur;
    uint64_t deadline, poll_at;
    bool polling;
    unsigned pending;
    bool over;              /* freed once no reply is owed */
};

static const char *qemu_says(const char *msg)
{
    static const char generic[] = "GenericError: ";
    return strncmp(msg, generic, sizeof(generic) - 1) == 0 ? msg + sizeof(generic) - 1 : msg;
}

static void close_fd(struct sup *s, int *fd)
{
    if (*fd >= 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, *fd, NULL);
        close(*fd);
        *fd = -1;
    }
}

static void release(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    if (!mo || mo->pending || !mo->over)
        return;
    close_fd(s, &mo->ctl);
    close_fd(s, &mo->nbd_sock);
    buf_free(&mo->in);
    free(mo);
    s->msout = NULL;
}

static int send_cmd(struct sup *s, const char *cmd, json_object *args, const int *fds, size_t nfds, qmp_reply_fn done)
{
    if (!s->qmp || !qmp_ready(s->qmp)) {
        if (args)
            json_object_put(args);
        return -ECONNRESET;
    }
    int r = qmp_send(s->qmp, cmd, args, fds, nfds, QMP_TIMEOUT_DEFAULT, 0, done, s);
    if (r == 0)
        s->msout->pending++;
    return r;
}

/* The reply's copy, or NULL once it is over (released when nothing else is owed). */
static struct migstore_out *replied(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    if (!mo)
        return NULL;
    mo->pending--;
    if (mo->over) {
        release(s);
        return NULL;
    }
    return mo;
}

/* dest_ran: whether the destination's QEMU ever ran the guest, as it said with its
 * failure (-1: it did not say: the source's own failure, or the line closed) */
static void fail_ran(struct sup *s, int dest_ran, const char *fmt, ...) QV_PRINTF(3, 4);
static void fail_ran(struct sup *s, int dest_ran, const char *fmt, ...)
{
    char why[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    struct migstore_out *mo = s->msout;
    /* the destination refused in so many words: it does not run the guest */
    bool stopped = mo->phase == MSO_FINISHING || mo->phase == MSO_ACK;
    if (stopped && s->qmp)
        sup_qmp(s, "cont", NULL);    /* the stream completed, the destination never runs it: on here */
    migrate_storage_failed(s, why, dest_ran);     /* calls migstore_out_abort */
}
#define fail(s, ...) fail_ran(s, -1, __VA_ARGS__)

/* ---- clean-up: jobs cancelled, dismissed, nodes deleted ---- */

static void on_cleanup(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    (void)err;      /* a job or node already gone: nothing left to do for it */
    struct sup *s = ctx;
    replied(s);
}

/* query-jobs' answer while cleaning up: concluded jobs are dismissed, the nodes of
 * disks without a job are deleted; done once no job of ours runs. */
static void cleanup_jobs(struct sup *s, json_object *jobs)
{
    struct migstore_out *mo = s->msout;
    bool waiting = false;
    for (size_t i = 0; i < mo->n; i++) {
        struct mso_disk *d = &mo->disks[i];
        char job[48], node[48];
        snprintf(job, sizeof(job), "qv-mig-%s", d->id);
        snprintf(node, sizeof(node), "qv-nbd-%s", d->id);
        if (d->mirroring) {
            const char *st = NULL;
            for (size_t k = 0; jobs && k < json_object_array_length(jobs) && !st; k++) {
                json_object *o = json_object_array_get_idx(jobs, k), *v;
                if (json_object_object_get_ex(o, "id", &v) && strcmp(json_object_get_string(v), job) == 0)
                    st = json_object_object_get_ex(o, "status", &v) ? json_object_get_string(v) : "";
            }
            if (st && strcmp(st, "concluded") == 0)
                send_cmd(s, "job-dismiss", json_obj1("id", json_object_new_string(job)), NULL, 0, on_cleanup);
            else if (st) {
                waiting = true;
                continue;
            }
            d->mirroring = false;
        }
        if (d->added) {
            send_cmd(s, "blockdev-del", json_obj1("node-name", json_object_new_string(node)), NULL, 0, on_cleanup);
            d->added = false;
        }
    }
    if (!waiting || monotonic_ms() > mo->deadline) {
        if (waiting)
            sup_log(s, "warning: copy-storage: mirror jobs still there after %d s", MSO_CLEANUP_TIMEOUT_MS / 1000);
        else if (mo->n)     /* (a migration without --copy-storage has none) */
            sup_log(s, "copy-storage: the mirrors and NBD nodes are removed");
        mo->over = true;
        mo->poll_at = 0;
        release(s);
        return;
    }
    mo->poll_at = monotonic_ms() + MSO_POLL_MS;
}

void migstore_out_abort(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    if (!mo || mo->over || mo->phase == MSO_CLEANUP)
        return;
    mo->phase = MSO_CLEANUP;
    close_fd(s, &mo->ctl);      /* the destination hears it and removes what it made */
    close_fd(s, &mo->nbd_sock);
    mo->deadline = monotonic_ms() + MSO_CLEANUP_TIMEOUT_MS;
    mo->polling = false;
    for (size_t i = 0; i < mo->n; i++) {
        struct mso_disk *d = &mo->disks[i];
        if (!d->mirroring)
            continue;
        char job[48];
        snprintf(job, sizeof(job), "qv-mig-%s", d->id);
        json_object *a = json_obj1("device", json_object_new_string(job));
        json_object_object_add(a, "force", json_object_new_boolean(true));
        send_cmd(s, "block-job-cancel", a, NULL, 0, on_cleanup);
    }
    if (!s->qmp || !qmp_ready(s->qmp)) {
        mo->pending = 0;
        mo->over = true;
        release(s);
        return;
    }
    mo->poll_at = monotonic_ms();
}

void migstore_out_forget(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    if (!mo)
        return;
    mo->pending = 0;
    mo->over = true;
    release(s);
}

bool migstore_out_busy(struct sup *s)
{
    return s->msout != NULL;
}

/* The stream is complete (and the mirrors, if any, are done): the destination runs
 * the guest and confirms (on_answer). */
static void send_finish(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    const char line[] = "finish\n";
    if (send(mo->ctl, line, sizeof(line) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)sizeof(line) - 1) {
        fail(s, "telling the destination to finish: %s", strerror(errno));
        return;
    }
    sup_log(s, "the stream is complete%s; the destination is told to run the guest", mo->n ? " and the mirrors done" : "");
    mo->phase = MSO_ACK;
    mo->deadline = monotonic_ms() + MSO_ACK_TIMEOUT_MS;
}

/* The destination may run the guest, and never said so: the guest stays paused here. */
static void unconfirmed(struct sup *s, const char *why)
{
    migrate_storage_unconfirmed(s, why);
}

/* ---- mirrors: polled until all are ready, and on while the stream flows ---- */

static void on_jobs(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    struct migstore_out *mo = replied(s);
    if (!mo)
        return;
    mo->polling = false;
    if (mo->phase == MSO_CLEANUP) {
        if (err)
            mo->poll_at = monotonic_ms() + MSO_POLL_MS;
        else
            cleanup_jobs(s, ret);
        return;
    }
    mo->poll_at = monotonic_ms() + MSO_POLL_MS;
    if (err) {
        sup_log(s, "query-jobs: %s", err->msg);
        return;
    }
    bool all_ready = true, all_gone = true;
    for (size_t i = 0; i < mo->n; i++) {
        struct mso_disk *d = &mo->disks[i];
        if (!d->mirroring)
            continue;
        char job[48];
        snprintf(job, sizeof(job), "qv-mig-%s", d->id);
        json_object *info = NULL, *v;
        for (size_t k = 0; k < json_object_array_length(ret) && !info; k++) {
            json_object *o = json_object_array_get_idx(ret, k);
            if (json_object_object_get_ex(o, "id", &v) && strcmp(json_object_get_string(v), job) == 0)
                info = o;
        }
        if (!info) {
            fail(s, "%s: the mirror job %s is gone", d->id, job);
            return;
        }
        const char *st = json_object_object_get_ex(info, "status", &v) ? json_object_get_string(v) : "";
        snprintf(d->status, sizeof(d->status), "%s", st);
        if (json_object_object_get_ex(info, "current-progress", &v))
            d->done = json_object_get_int64(v);
        if (json_object_object_get_ex(info, "total-progress", &v))
            d->total = json_object_get_int64(v);
        bool concluded = strcmp(st, "concluded") == 0 || strcmp(st, "aborting") == 0 || strcmp(st, "null") == 0;
        if (concluded && mo->phase != MSO_FINISHING) {
            const char *e = json_object_object_get_ex(info, "error", &v) ? json_object_get_string(v) : st;
            fail(s, "%s: copying to the destination failed: %s", d->id, e);
            return;
        }
        d->concluded = concluded;
        all_gone = all_gone && concluded;
        d->ready = strcmp(st, "ready") == 0 || strcmp(st, "standby") == 0;
        all_ready = all_ready && d->ready;
    }
    if (mo->phase == MSO_MIRRORING && all_ready) {
        sup_log(s, "copy-storage: every disk is in sync on the destination; the memory goes next");
        mo->phase = MSO_SYNCED;
        migrate_storage_ready(s);
    } else if (mo->phase == MSO_FINISHING && all_gone) {
        mo->poll_at = 0;
        for (size_t i = 0; i < mo->n; i++) {
            struct mso_disk *d = &mo->disks[i];
            char job[48], node[48];
            snprintf(job, sizeof(job), "qv-mig-%s", d->id);
            snprintf(node, sizeof(node), "qv-nbd-%s", d->id);
            send_cmd(s, "job-dismiss", json_obj1("id", json_object_new_string(job)), NULL, 0, on_cleanup);
            d->mirroring = false;
            send_cmd(s, "blockdev-del", json_obj1("node-name", json_object_new_string(node)), NULL, 0, on_cleanup);
            d->added = false;
        }
        send_finish(s);
    }
}

void migstore_out_complete(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    mo->phase = MSO_FINISHING;
    if (!mo->n) {
        send_finish(s);
        return;
    }
    /* the guest is stopped: a ready mirror's cancel writes what is in flight and ends
     * with the target identical to the source */
    for (size_t i = 0; i < mo->n; i++) {
        char job[48];
        snprintf(job, sizeof(job), "qv-mig-%s", mo->disks[i].id);
        if (send_cmd(s, "block-job-cancel", json_obj1("device", json_object_new_string(job)), NULL, 0,
                     on_cleanup) < 0) {
            fail(s, "QEMU's monitor connection is closed");
            return;
        }
    }
    mo->poll_at = monotonic_ms();
}

/* ---- NBD connections and mirrors, one disk after the other ---- */

static void nbd_next(struct sup *s);

static void on_mirror_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct migstore_out *mo = replied(s);
    if (!mo)
        return;
    struct mso_disk *d = &mo->disks[mo->cur];
    if (err) {
        d->mirroring = false;
        fail(s, "%s: %s", d->id, qemu_says(err->msg));
        return;
    }
    if (d->mirroring) {     /* blockdev-mirror answered: the next disk */
        mo->cur++;
        nbd_next(s);
    }
}

static void on_nbd_added(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct migstore_out *mo = replied(s);
    if (!mo)
        return;
    struct mso_disk *d = &mo->disks[mo->cur];
    if (err) {
        fail(s, "%s: connecting QEMU to the destination's NBD export: %s", d->id, qemu_says(err->msg));
        return;
    }
    d->added = true;
    char job[48], node[48];
    snprintf(job, sizeof(job), "qv-mig-%s", d->id);
    snprintf(node, sizeof(node), "qv-nbd-%s", d->id);
    json_object *a = json_object_new_object();
    json_object_object_add(a, "job-id", json_object_new_string(job));
    json_object_object_add(a, "device", json_object_new_string(d->node));
    json_object_object_add(a, "target", json_object_new_string(node));
    json_object_object_add(a, "sync", json_object_new_string("full"));
    json_object_object_add(a, "auto-dismiss", json_object_new_boolean(false));
    if (mo->speed)
        json_object_object_add(a, "speed", json_object_new_int64(mo->speed));
    d->mirroring = true;
    if (send_cmd(s, "blockdev-mirror", a, NULL, 0, on_mirror_step) < 0) {
        d->mirroring = false;
        fail(s, "QEMU's monitor connection is closed");
    }
}

void migstore_out_nbd_io(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    if (!mo || mo->phase != MSO_NBD || mo->nbd_sock < 0)
        return;
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, mo->nbd_sock, NULL);
    mo->deadline = 0;
    int err = 0;
    socklen_t l = sizeof(err);
    if (getsockopt(mo->nbd_sock, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
        err = errno;
    struct mso_disk *d = &mo->disks[mo->cur];
    if (err) {
        fail(s, "%s: connecting to the destination's NBD server %s: %s", d->id, mo->nbd, strerror(err));
        return;
    }
    char fdname[48], node[48];
    snprintf(fdname, sizeof(fdname), "qv-nbd-%s", d->id);
    snprintf(node, sizeof(node), "qv-nbd-%s", d->id);
    int r = send_cmd(s, "getfd", json_obj1("fdname", json_object_new_string(fdname)), &mo->nbd_sock, 1, on_cleanup);
    close(mo->nbd_sock);
    mo->nbd_sock = -1;
    if (r == 0) {
        json_object *a = json_object_new_object(), *server = json_object_new_object();
        json_object_object_add(a, "driver", json_object_new_string("nbd"));
        json_object_object_add(a, "node-name", json_object_new_string(node));
        json_object_object_add(server, "type", json_object_new_string("fd"));
        json_object_object_add(server, "str", json_object_new_string(fdname));
        json_object_object_add(a, "server", server);
        json_object_object_add(a, "export", json_object_new_string(d->export));
        r = send_cmd(s, "blockdev-add", a, NULL, 0, on_nbd_added);
    }
    if (r < 0)
        fail(s, "QEMU's monitor connection is closed");
}

static void nbd_next(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    if (mo->cur >= mo->n) {
        sup_log(s, "copy-storage: %zu mirror(s) running", mo->n);
        mo->phase = MSO_MIRRORING;
        mo->poll_at = monotonic_ms();
        return;
    }
    struct qv_err e = {0};
    if (migrate_connect_start(mo->nbd, &mo->nbd_sock, &e) < 0) {
        fail(s, "the destination's NBD server: %s", e.msg);
        return;
    }
    mo->phase = MSO_NBD;
    s->ev_msnbd.kind = EV_MIGNBD;
    sup_epoll_add(s, mo->nbd_sock, EPOLLOUT, &s->ev_msnbd);
    mo->deadline = monotonic_ms() + MSO_CONNECT_TIMEOUT_MS;
}

/* ---- the control connection ---- */

static void on_answer(struct sup *s, const char *line)
{
    struct migstore_out *mo = s->msout;
    _cleanup_json_ json_object *o = json_tokener_parse(line);
    json_object *v, *ex;
    if (!o || !json_object_object_get_ex(o, "ok", &v)) {
        fail(s, "the destination's answer is not qvisor's: %.80s", line);
        return;
    }
    if (!json_object_get_boolean(v)) {
        json_object *ran;
        int dest_ran = json_object_object_get_ex(o, "guest_ran", &ran) ? json_object_get_boolean(ran) : -1;
        fail_ran(s, dest_ran, "the destination: %s",
                 json_object_object_get_ex(o, "error", &v) ? json_object_get_string(v) : "refused (no reason given)");
        return;
    }
    if (mo->phase == MSO_ACK) {
        sup_log(s, "the destination runs the guest%s", mo->n ? " (it has the disks, its NBD server is stopped)" : "");
        mo->over = true;
        mo->poll_at = 0;
        close_fd(s, &mo->ctl);
        release(s);
        migrate_storage_finished(s, o);
        return;
    }
    if (mo->phase != MSO_HELLO)
        return;
    if (!mo->copy) {
        sup_log(s, "the destination waits for the stream");
        mo->deadline = 0;
        mo->phase = MSO_SYNCED;
        migrate_storage_ready(s);
        return;
    }
    if (!json_object_object_get_ex(o, "nbd", &v) || !json_object_object_get_ex(o, "exports", &ex)) {
        fail(s, "the destination's answer names no NBD server");
        return;
    }
    snprintf(mo->nbd, sizeof(mo->nbd), "%s", json_object_get_string(v));
    for (size_t i = 0; i < mo->n; i++) {
        if (!json_object_object_get_ex(ex, mo->disks[i].id, &v)) {
            fail(s, "%s: the destination exports no such disk", mo->disks[i].id);
            return;
        }
        snprintf(mo->disks[i].export, sizeof(mo->disks[i].export), "%s", json_object_get_string(v));
    }
    sup_log(s, "copy-storage: the destination exports the disks on %s", mo->nbd);
    mo->deadline = 0;
    mo->cur = 0;
    nbd_next(s);
}

static void send_hello(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    json_object *o = json_object_new_object(), *disks = json_object_new_array();
    json_object_object_add(o, "vm", json_object_new_string(s->def.name));
    json_object_object_add(o, "uuid", json_object_new_string(s->def.uuid));
    json_object_object_add(o, "token", json_object_new_string(mo->token));
    json_object_object_add(o, "copy_storage", json_object_new_boolean(mo->copy));
    json_object_object_add(o, "persistent", json_object_new_boolean(mo->persistent));
    json_object_object_add(o, "postcopy", json_object_new_boolean(mo->postcopy));
    json_object_object_add(o, "guest", migrate_guest_shape(&s->def));
    /* what changed while it ran: the destination plugs these vCPUs before the stream
     * (QEMU's stream needs the same devices) and sets the balloon once the guest runs */
    if (s->tune.vcpus > s->def.cpu.count)
        json_object_object_add(o, "plugged_vcpus", json_object_new_int(s->tune.vcpus));
    if (s->tune.balloon_target)
        json_object_object_add(o, "balloon_target", json_object_new_int64((int64_t)s->tune.balloon_target));
    for (size_t i = 0; i < mo->n; i++) {
        json_object *d = json_object_new_object();
        json_object_object_add(d, "id", json_object_new_string(mo->disks[i].id));
        json_object_object_add(d, "size", json_object_new_int64(mo->disks[i].size));
        json_object_object_add(d, "format", json_object_new_string(mo->disks[i].format));
        json_object_array_add(disks, d);
    }
    json_object_object_add(o, "disks", disks);
    char line[16384];
    int n = snprintf(line, sizeof(line), "QVMIG/1 %s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    if (n >= (int)sizeof(line) || send(mo->ctl, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
        fail(s, "telling the destination which disks come: %s", strerror(errno));
        return;
    }
    mo->phase = MSO_HELLO;
    mo->deadline = monotonic_ms() + (mo->copy ? MSO_HELLO_TIMEOUT_MS : MSO_CONNECT_TIMEOUT_MS);
    struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &s->ev_msctl};
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, mo->ctl, &ee);
}

static void ctl_io(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    if (mo->phase == MSO_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof(err);
        if (getsockopt(mo->ctl, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
            err = errno;
        if (err) {
            fail(s, "connecting to %s: %s (is qvisor migrate-incoming %s --listen %s%s waiting there?)", mo->address,
                 strerror(err), s->def.name, mo->address, mo->copy ? " --copy-storage" : "");
            return;
        }
        migrate_keepalive(mo->ctl);
        send_hello(s);
        return;
    }
    char chunk[4096];
    for (;;) {
        ssize_t n = recv(mo->ctl, chunk, sizeof(chunk), 0);
        if (n > 0) {
            buf_add(&mo->in, chunk, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        /* a last line may have come with the close */
        char *line = buf_take_line(&mo->in);
        if (line) {
            on_answer(s, line);
            free(line);
            if (!s->msout || s->msout->over || s->msout->phase == MSO_CLEANUP)
                return;
        }
        if (mo->phase == MSO_ACK)
            unconfirmed(s, n == 0 ? "the destination closed the control line before it confirmed that it runs the "
                        "guest (its supervisor ended?)" : strerror(errno));
        else
            fail(s, "the destination %s", n == 0 ? "closed the control connection (its QEMU or supervisor ended?)"
                                                 : strerror(errno));
        return;
    }
    char *line;
    while (s->msout && !s->msout->over && s->msout->phase != MSO_CLEANUP && (line = buf_take_line(&mo->in))) {
        on_answer(s, line);
        free(line);
    }
}

void migstore_io(struct sup *s, uint32_t events)
{
    (void)events;
    if (s->msin)
        migstore_in_io(s);
    else if (s->msout && !s->msout->over && s->msout->ctl >= 0)
        ctl_io(s);
}

/* ---- the start: which disks, then the control line ---- */

static int connect_ctl(struct sup *s, struct qv_err *e)
{
    struct migstore_out *mo = s->msout;
    int r = migrate_connect_start(mo->address, &mo->ctl, e);
    if (r < 0)
        return r;
    mo->phase = MSO_CONNECTING;
    mo->deadline = monotonic_ms() + MSO_CONNECT_TIMEOUT_MS;
    s->ev_msctl.kind = EV_MIGCTL;
    sup_epoll_add(s, mo->ctl, EPOLLOUT, &s->ev_msctl);
    return 0;
}

static void on_nodes(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    struct migstore_out *mo = replied(s);
    if (!mo)
        return;
    if (err) {
        fail(s, "query-named-block-nodes: %s", qemu_says(err->msg));
        return;
    }
    for (size_t i = 0; i < s->def.ndisks; i++) {
        const struct vm_disk *k = &s->def.disks[i];
        char id[24];
        snprintf(id, sizeof(id), "disk%zu", i);
        struct disk_ref ref;
        if (k->rbd || k->readonly || k->snapshot || !disk_find(s, id, &ref))
            continue;   /* shared (rbd), never written, or throw-away: the destination has its own */
        for (size_t j = 0; j < json_object_array_length(ret); j++) {
            json_object *o = json_object_array_get_idx(ret, j), *v, *img;
            if (!json_object_object_get_ex(o, "node-name", &v) || strcmp(json_object_get_string(v), ref.node) != 0)
                continue;
            struct mso_disk *d = &mo->disks[mo->n++];
            snprintf(d->id, sizeof(d->id), "%s", id);
            snprintf(d->node, sizeof(d->node), "%s", ref.node);
            snprintf(d->format, sizeof(d->format), "%s",
                     json_object_object_get_ex(o, "drv", &v) ? json_object_get_string(v) : "raw");
            if (json_object_object_get_ex(o, "image", &img) && json_object_object_get_ex(img, "virtual-size", &v))
                d->size = json_object_get_int64(v);
            d->total = d->size;
            break;
        }
    }
    if (!mo->n) {
        fail(s, "no local disk to copy (every disk is shared, read-only or throw-away): migrate without "
             "--copy-storage");
        return;
    }
    struct qv_err e = {0};
    if (connect_ctl(s, &e) < 0)
        fail(s, "%s", e.msg);
}

int migstore_out_begin(struct sup *s, const struct migrate_live_opts *o, struct qv_err *e)
{
    struct migstore_out *mo = qv_xcalloc(1, sizeof(*mo));
    mo->ctl = mo->nbd_sock = -1;
    mo->speed = o->bandwidth;
    mo->copy = o->copy_storage;
    mo->persistent = o->persistent;
    mo->postcopy = o->postcopy;
    snprintf(mo->token, sizeof(mo->token), "%s", o->token);
    snprintf(mo->address, sizeof(mo->address), "%s", o->address);
    s->msout = mo;
    if (!mo->copy) {
        int r = connect_ctl(s, e);
        if (r < 0) {
            mo->over = true;
            release(s);
        }
        return r;
    }
    json_object *a = json_obj1("flat", json_object_new_boolean(true));
    if (send_cmd(s, "query-named-block-nodes", a, NULL, 0, on_nodes) < 0) {
        mo->over = true;
        release(s);
        return qv_fail(e, -ECONNRESET, "QEMU's monitor connection is closed");
    }
    return 0;
}

/* ---- progress and time ---- */

void migstore_out_progress(struct sup *s, json_object *o)
{
    struct migstore_out *mo = s->msout;
    if (!mo || mo->over)
        return;
    int64_t done = 0, total = 0;
    for (size_t i = 0; i < mo->n; i++) {
        done += mo->disks[i].done;
        total += mo->disks[i].total;
    }
    json_object_object_add(o, "disk_transferred", json_object_new_int64(done));
    json_object_object_add(o, "disk_total", json_object_new_int64(total));
    json_object_object_add(o, "disk_remaining", json_object_new_int64(total > done ? total - done : 0));
    json_object_object_add(o, "disks_synced", json_object_new_boolean(mo->phase >= MSO_SYNCED));
}

uint64_t migstore_out_next_deadline(struct sup *s)
{
    struct migstore_out *mo = s->msout;
    if (!mo || mo->over)
        return 0;
    uint64_t d = mo->polling ? 0 : mo->poll_at;
    if (mo->deadline && (!d || mo->deadline < d))
        d = mo->deadline;
    return d;
}

void migstore_out_expire(struct sup *s, uint64_t now)
{
    struct migstore_out *mo = s->msout;
    if (!mo || mo->over)
        return;
    if (mo->phase == MSO_CLEANUP) {
        if (mo->poll_at && !mo->polling && now >= mo->poll_at) {
            mo->poll_at = 0;
            mo->polling = true;
            if (send_cmd(s, "query-jobs", NULL, NULL, 0, on_jobs) < 0) {
                mo->pending = 0;
                mo->over = true;
                release(s);
            }
        }
        return;
    }
    if (mo->deadline && now >= mo->deadline) {
        mo->deadline = 0;
        if (mo->phase == MSO_ACK) {
            unconfirmed(s, "the destination did not confirm within 60 s that it runs the guest");
            return;
        }
        const char *what = mo->phase == MSO_HELLO      ? (mo->copy ? "the destination did not answer which NBD exports it has"
                                                                   : "the destination did not answer")
                         : mo->phase == MSO_CONNECTING ? "connecting to the destination: no answer within 15 s"
                                                       : "no answer from the destination";
        fail(s, "%s", what);
        return;
    }
    if (mo->poll_at && !mo->polling && now >= mo->poll_at) {
        mo->poll_at = 0;
        mo->polling = true;
        if (send_cmd(s, "query-jobs", NULL, NULL, 0, on_jobs) < 0) {
            mo->polling = false;
            fail(s, "QEMU's monitor connection is closed");
        }
    }
}
