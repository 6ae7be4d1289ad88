/* The destination's half of migrate --copy-storage (the protocol is described in
 * migstore_in.c): the target images the source's disks go into (created by a watched
 * qemu-img, one after the other, before QEMU starts with them), then QEMU's NBD server on
 * a listener bound next to the control line's local address (QEMU gets it as an fd) and
 * a writable export per disk; the answer tells the source where they are. Once the disks
 * and the stream are in, the server stops and the guest resumes. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "launcher/supervisor/migstore_in.h"

static const char *qemu_says(const char *msg)
{
    static const char generic[] = "GenericError: ";
    return strncmp(msg, generic, sizeof(generic) - 1) == 0 ? msg + sizeof(generic) - 1 : msg;
}

/* ---- the target images ---- */

void msi_create_next(struct sup *s)
{
    struct migstore_in *mi = s->msin;
    if (mi->next < mi->ndisks) {
        struct msi_disk *t = &mi->disks[mi->next];
        char size[32];
        snprintf(size, sizeof(size), "%lld", (long long)t->size);
        const char *bin = getenv("QVISOR_QEMU_IMG");
        const char *argv[] = {bin && *bin ? bin : "qemu-img", "create", "-q", "-f", t->format, t->path, size, NULL};
        struct qv_err e = {0};
        t->created = true;      /* recorded first: a failure half way removes what is there */
        if (sup_child_spawn(&mi->child, argv, MSI_CREATE_TIMEOUT_MS, &e) < 0)
            msi_fail_early(s, "%s: creating %s: %s", t->id, t->path, e.msg);
        else
            sup_log(s, "copy-storage: creating %s (%s, %lld bytes)", t->path, t->format, (long long)t->size);
        return;
    }
    mi->phase = MSI_STARTING;
    struct qv_err e = {0};
    if (start_begin(s, false, &e) < 0)
        msi_fail_early(s, "%s", e.msg);
}

void migstore_in_child_exited(struct sup *s)
{
    struct migstore_in *mi = s->msin;
    int status;
    char out[512];
    if (!mi || mi->phase != MSI_CREATING || !sup_child_reap(&mi->child, &status, out, sizeof(out)))
        return;
    struct msi_disk *t = &mi->disks[mi->next];
    if (status != 0) {
        msi_fail_early(s, "%s: creating %s: %s", t->id, t->path, out[0] ? out : "qemu-img failed");
        return;
    }
    mi->next++;
    msi_create_next(s);
}

/* ---- QEMU is set up: the NBD server and the exports, then the answer ---- */

static void serve_next(struct sup *s);

/* getfd: a failure fails the start; success waits for nbd-server-start's answer */
static void on_serve_fd(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct migstore_in *mi = s->msin;
    if (mi && mi->phase == MSI_SERVING && !s->start.failed && err)
        msi_fail_started(s, -EIO, "copy-storage: %s", qemu_says(err->msg));
}

static void on_serve_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct migstore_in *mi = s->msin;
    if (!mi || mi->phase != MSI_SERVING || s->start.failed)
        return;
    if (err) {
        msi_fail_started(s, -EIO, "copy-storage: %s", qemu_says(err->msg));
        return;
    }
    serve_next(s);
}

static void serve_next(struct sup *s)
{
    struct migstore_in *mi = s->msin;
    int r = 0;
    if (mi->next < mi->ndisks) {
        struct msi_disk *t = &mi->disks[mi->next++];
        struct disk_ref ref;
        if (!disk_find(s, t->id, &ref)) {
            msi_fail_started(s, -ENOENT, "copy-storage: %s is gone", t->id);
            return;
        }
        json_object *a = json_object_new_object();
        json_object_object_add(a, "type", json_object_new_string("nbd"));
        char id[40];
        snprintf(id, sizeof(id), "qv-mig-%s", t->id);
        json_object_object_add(a, "id", json_object_new_string(id));
        json_object_object_add(a, "node-name", json_object_new_string(ref.node));
        json_object_object_add(a, "name", json_object_new_string(t->id));
        json_object_object_add(a, "writable", json_object_new_boolean(true));
        r = qmp_send(s->qmp, "block-export-add", a, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_serve_step, s);
    } else {
        /* the readiness answer: where the exports are */
        json_object *o = json_object_new_object(), *ex = json_object_new_object();
        json_object_object_add(o, "ok", json_object_new_boolean(true));
        json_object_object_add(o, "nbd", json_object_new_string(mi->nbd_addr));
        for (size_t i = 0; i < mi->ndisks; i++)
            json_object_object_add(ex, mi->disks[i].id, json_object_new_string(mi->disks[i].id));
        json_object_object_add(o, "exports", ex);
        msi_send_line(s, o);
        json_object_put(o);
        sup_epoll_add(s, s->mig_in.listen_fd, EPOLLIN, &s->ev_mig);
        sup_log(s, "QEMU is set up, NBD exports on %s; waiting for the disks and then the migration stream on %s",
                mi->nbd_addr, s->start.incoming + 4);
        return;
    }
    if (r < 0)
        msi_fail_started(s, -ECONNRESET, "copy-storage: the QMP connection is closed");
}

/* A listener next to the control connection's own address: the source reached this
 * host there. */
static int nbd_listen(struct sup *s, struct qv_err *e)
{
    struct migstore_in *mi = s->msin;
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    if (getsockname(mi->ctl, (struct sockaddr *)&sa, &len) < 0)
        return qv_failerr(e, -errno, "copy-storage: getsockname");
    if (sa.ss_family == AF_INET)
        ((struct sockaddr_in *)&sa)->sin_port = 0;
    else if (sa.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&sa)->sin6_port = 0;
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return qv_failerr(e, -errno, "copy-storage: socket");
    if (bind(fd, (struct sockaddr *)&sa, len) < 0 || listen(fd, 8) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        int r = -errno;
        close(fd);
        return qv_failerr(e, r, "copy-storage: the NBD listener");
    }
    char host[INET6_ADDRSTRLEN], port[8];
    getnameinfo((struct sockaddr *)&sa, len, host, sizeof(host), port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
    snprintf(mi->nbd_addr, sizeof(mi->nbd_addr), sa.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
    mi->nbd_fd = fd;
    return 0;
}

static int serve_start(struct sup *s, struct qv_err *e);

static void on_plugged_copy(struct sup *s, const struct qv_err *err)
{
    struct migstore_in *mi = s->msin;
    if (!mi || s->start.phase != START_QMP || s->start.failed)
        return;
    struct qv_err e = {0};
    if (err)
        msi_fail_started(s, err->code, "plugging the source's %d vCPUs here: %s", mi->plugged_vcpus, err->msg);
    else if (serve_start(s, &e) < 0)
        msi_fail_started(s, e.code, "%s", e.msg);
}

int migstore_in_serve(struct sup *s, struct qv_err *e)
{
    return msi_plug_vcpus(s, on_plugged_copy, e);
}

static int serve_start(struct sup *s, struct qv_err *e)
{
    struct migstore_in *mi = s->msin;
    int r = nbd_listen(s, e);
    if (r < 0)
        return r;
    mi->phase = MSI_SERVING;
    mi->next = 0;
    /* QEMU may have no network of its own: it gets the listening socket */
    r = qmp_send(s->qmp, "getfd", json_obj1("fdname", json_object_new_string(MSI_NBD_FDNAME)), &mi->nbd_fd, 1,
                 QMP_TIMEOUT_DEFAULT, 0, on_serve_fd, s);
    close(mi->nbd_fd);
    mi->nbd_fd = -1;
    if (r == 0) {
        json_object *addr = json_object_new_object(), *data = json_object_new_object();
        json_object_object_add(addr, "type", json_object_new_string("fd"));
        json_object_object_add(data, "str", json_object_new_string(MSI_NBD_FDNAME));
        json_object_object_add(addr, "data", data);
        r = qmp_send(s->qmp, "nbd-server-start", json_obj1("addr", addr), NULL, 0, QMP_TIMEOUT_DEFAULT, 0,
                     on_serve_step, s);
    }
    if (r < 0)
        return qv_fail(e, -ECONNRESET, "copy-storage: the QMP connection is closed");
    return 0;
}

/* ---- the end ---- */

static void on_nbd_stopped(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    struct migstore_in *mi = s->msin;
    if (!mi || mi->phase != MSI_FINISHING || s->start.failed)
        return;
    if (err)
        sup_log(s, "warning: nbd-server-stop: %s", qemu_says(err->msg));
    sup_log(s, "copy-storage: the disks are in; the NBD server is stopped");
    mi->phase = MSI_RESUMING;
    migrate_incoming_resume(s);     /* migstore_in_started confirms once the guest runs */
}

void msi_nbd_stop(struct sup *s)
{
    if (qmp_send(s->qmp, "nbd-server-stop", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_nbd_stopped, s) < 0)
        msi_fail_started(s, -ECONNRESET, "copy-storage: the QMP connection is closed");
}
