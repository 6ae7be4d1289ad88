/* QEMU's migration stream coming in (migrate.c sends it): a start that restores a saved
 * state (restore, a start after managedsave: the file's fd at the stream's offset) or
 * receives a migrating guest (migrate-incoming: a listener bound before QEMU runs, the
 * start says it is ready once QEMU is set up, one connection is accepted and handed to
 * QEMU). Either way QEMU runs with -incoming defer and gets the fd with getfd +
 * migrate-incoming fd:; query-migrate polls say when the state is in, and the start
 * goes on to `cont` (announce-self first for a migrated guest) or ends paused. */
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include "launcher/supervisor/internal.h"

#define MIG_IN_FDNAME "qv-incoming"
#define MIG_TLS_HANDSHAKE_MS 20000

static const char *qemu_says(const char *msg)
{
    static const char generic[] = "GenericError: ";
    return strncmp(msg, generic, sizeof(generic) - 1) == 0 ? msg + sizeof(generic) - 1 : msg;
}

static bool incoming_tcp(struct sup *s)
{
    return strncmp(s->start.incoming, "tcp:", 4) == 0;
}

void migrate_incoming_resume(struct sup *s)
{
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    sup_log(s, "the guest's state came in from the source%s", s->start.paused ? "; it stays paused" : "");
    s->start.restored = true;
    /* QEMU announces by itself too; once more, so switches learn the MACs' new port */
    json_object *a = json_object_new_object();
    json_object_object_add(a, "initial", json_object_new_int(50));
    json_object_object_add(a, "max", json_object_new_int(550));
    json_object_object_add(a, "rounds", json_object_new_int(5));
    json_object_object_add(a, "step", json_object_new_int(100));
    sup_qmp(s, "announce-self", a);
    start_after_load(s, s->start.paused);
}

static void on_in_query(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    if (s->start.phase != START_QMP || s->start.failed || !s->start.incoming[0])
        return;
    if (err) {
        start_failed(s, err, "query-migrate");
        return;
    }
    json_object *v;
    const char *status = json_object_object_get_ex(ret, "status", &v) ? json_object_get_string(v) : "";
    if (strcmp(status, "completed") == 0 && incoming_tcp(s)) {
        if (!migstore_in_hold(s))   /* copy-storage: once the source has finished the disks */
            migrate_incoming_resume(s);
    } else if (strcmp(status, "completed") == 0) {
        sup_log(s, "the guest's state is restored from %s%s", s->start.incoming,
                s->start.paused ? "; it stays paused" : "");
        if (s->start.incoming_remove && unlink(s->start.incoming) < 0 && errno != ENOENT)
            sup_log(s, "warning: %s: %s (the managed save stays)", s->start.incoming, strerror(errno));
        s->start.restored = true;
        if (s->start.balloon_target)   /* what setmem had asked of the balloon before the save */
            tuning_balloon_carry(s, s->start.balloon_target);
        start_after_load(s, s->start.paused);
    } else if (strcmp(status, "postcopy-paused") == 0) {
        /* QEMU would wait for a recovery that qvisor does not do: the guest cannot run here */
        struct qv_err e = {0};
        qv_fail(&e, -EIO, "the migration stream broke during post-copy: part of the guest's memory never came from "
                "the source, so it cannot run here (nor on the source)");
        start_failed(s, &e, NULL);
    } else if (strcmp(status, "failed") == 0 || strcmp(status, "cancelled") == 0) {
        struct qv_err e = {0};
        qv_fail(&e, -EIO, "restoring from %s: %s", s->start.incoming,
                json_object_object_get_ex(ret, "error-desc", &v) ? json_object_get_string(v) : status);
        start_failed(s, &e, NULL);
    } else if (incoming_tcp(s) && s->mig_in.tls_dir[0] && (!*status || strcmp(status, "none") == 0 || strcmp(status, "setup") == 0) &&
               monotonic_ms() - s->mig_in.accepted_ms > MIG_TLS_HANDSHAKE_MS) {
        /* QEMU only logs a failed TLS handshake of an incoming stream and waits on, for
         * a connection that is gone: still in setup this long after it came is that */
        struct qv_err e = {0};
        qv_fail(&e, -EACCES, "the source's TLS handshake did not complete within %d s (a certificate of another CA, "
                "or not for this host? QEMU's words are in the log)", MIG_TLS_HANDSHAKE_MS / 1000);
        start_failed(s, &e, "incoming migration");
    } else {
        if (strcmp(status, "postcopy-active") == 0)
            migrate_incoming_postcopy(s);
        s->start.in_poll_at = monotonic_ms() + (s->mig_in.ended ? 0 : MIG_POLL_MS);
    }
}

void migrate_incoming_postcopy(struct sup *s)
{
    if (s->mig_in.in_postcopy || s->start.phase != START_QMP || s->start.failed || !incoming_tcp(s))
        return;
    /* the source stopped the guest for good: it runs here from now on, its pages still
     * coming (QEMU fetches each on its first touch); the start ends once all are in */
    s->mig_in.in_postcopy = true;
    sup_log(s, "post-copy: the guest runs here now, the rest of its memory comes from the source as it touches it");
    sup_qmp(s, "cont", NULL);
}

/* migrate-incoming --postcopy: QEMU runs without capabilities (so without CAP_SYS_PTRACE),
 * and QEMU 7.2 opens userfaultfd through the system call only, which such a process may
 * use only where vm.unprivileged_userfaultfd is 1. Checked before anything starts. */
#define UFFD_SYSCTL "/proc/sys/vm/unprivileged_userfaultfd"
int migrate_postcopy_host_check(struct sup *s, struct qv_err *e)
{
    for (size_t i = 0; i < s->def.sandbox.extra_deny.n; i++)
        if (strcmp(s->def.sandbox.extra_deny.v[i], "userfaultfd") == 0)
            return qv_fail(e, -EPERM, "%s: --postcopy: its sandbox.extra_deny denies userfaultfd, which post-copy "
                           "needs on the destination: remove it there, or migrate without --postcopy", s->def.name);
    char v[8] = "";
    int fd = open(UFFD_SYSCTL, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;   /* a kernel before 5.2: userfaultfd is open to everyone */
    ssize_t n = read(fd, v, sizeof(v) - 1);
    close(fd);
    if (n > 0 && v[0] == '1')
        return 0;
    return qv_fail(e, -EPERM, "%s: --postcopy: this host lets only processes with CAP_SYS_PTRACE use userfaultfd "
                   "(vm.unprivileged_userfaultfd = %c), and QEMU runs here without capabilities: allow it with "
                   "`sysctl -w vm.unprivileged_userfaultfd=1` (and a file in /etc/sysctl.d to keep it), or migrate "
                   "without --postcopy", s->def.name, n > 0 ? v[0] : '?');
}

void migrate_incoming_poll(struct sup *s)
{
    /* QEMU reads a file without ever yielding to its monitor: the reply comes once the
     * whole state is in, which may take long */
    if (!s->qmp || qmp_send(s->qmp, "query-migrate", NULL, NULL, 0, QMP_TIMEOUT_JOB, 0, on_in_query, s) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -ECONNRESET, "the QMP connection is closed");
        start_failed(s, &e, "restoring");
    }
}

static void on_in_step(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    if (err) {
        struct qv_err e = *err;
        qv_fail(&e, err->code, "%s", qemu_says(err->msg));
        start_failed(s, &e, "restoring");
    }
}

static void on_in_started(void *ctx, json_object *ret, const struct qv_err *err)
{
    on_in_step(ctx, ret, err);
    struct sup *s = ctx;
    if (s->start.phase == START_QMP && !s->start.failed)
        migrate_incoming_poll(s);
}

/* The listener's numeric ADDR:PORT ([V6]:PORT). */
static int incoming_bound(int fd, char *out, size_t outlen)
{
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    char host[INET6_ADDRSTRLEN], port[8];
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0 ||
        getnameinfo((struct sockaddr *)&sa, len, host, sizeof(host), port, sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV))
        return -EINVAL;
    snprintf(out, outlen, sa.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
    return 0;
}

const char *migrate_incoming_address(struct sup *s)
{
    /* with copy-storage no start runs until the source said which disks come */
    return incoming_tcp(s) && (start_active(s) || s->msin) ? s->start.incoming + 4 : NULL;
}

int start_begin_incoming(struct sup *s, const char *listen_at, bool copy_storage, struct qv_err *e)
{
    struct sockaddr_storage sa;
    socklen_t len;
    int r = migrate_parse_address(listen_at, &sa, &len, e);
    if (r < 0)
        return qv_prefix(e, "%s: --listen: ", s->def.name);
    if (s->mig_in.postcopy && copy_storage)
        return qv_fail(e, -EINVAL, "%s: --postcopy and --copy-storage go separately: copy the disks with a pre-copy "
                       "migration", s->def.name);
    if (s->mig_in.postcopy && (r = migrate_postcopy_host_check(s, e)) < 0)
        return r;
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0)
        return qv_failerr(e, -errno, "%s: socket", s->def.name);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, len) < 0 || listen(fd, 1) < 0) {
        r = -errno;
        close(fd);
        return qv_failerr(e, r, "%s: listening on %s", s->def.name, listen_at);
    }
    s->mig_in.listen_fd = fd;
    /* port 0: the kernel chose one; status says which (what an ssh source reads back) */
    char bound[INET6_ADDRSTRLEN + 8];
    if (incoming_bound(fd, bound, sizeof(bound)) == 0)
        listen_at = bound;
    snprintf(s->start.incoming, sizeof(s->start.incoming), "tcp:%s", listen_at);
    /* the control line comes first (migstore_in.c); with copy-storage QEMU starts once
     * the source said which disks come */
    if ((r = migstore_in_listen(s, copy_storage, e)) < 0 || copy_storage)
        return r;
    if ((r = start_begin(s, false, e)) < 0) {
        migstore_in_forget(s);
        migrate_incoming_close(s);
        s->start.incoming[0] = '\0';
    }
    return r;
}

void migrate_incoming_close(struct sup *s)
{
    if (s->mig_in.listen_fd > 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->mig_in.listen_fd, NULL);
        close(s->mig_in.listen_fd);
    }
    s->mig_in.listen_fd = 0;
}

/* The source connected: QEMU gets the stream, the listener goes (one source only). */
void migrate_incoming_accept(struct sup *s)
{
    int c = accept4(s->mig_in.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0)
        return;     /* EAGAIN, a connection that went: wait for the next */
    if (!migstore_in_stream_ok(s, c)) {
        close(c);   /* not from the source the control line speaks with: wait on */
        return;
    }
    migrate_incoming_close(s);
    s->mig_in.accepted_ms = monotonic_ms();
    sup_log(s, "the source connected: the guest's state comes in");
    /* events: MIGRATION says when it is in; capabilities, getfd and migrate-incoming
     * go out together (QEMU answers in order) */
    int r = qmp_send(s->qmp, "migrate-set-capabilities", migrate_caps(false, s->mig_in.postcopy), NULL, 0,
                     QMP_TIMEOUT_DEFAULT, 0, on_in_step, s);
    if (r == 0)
        r = qmp_send(s->qmp, "getfd", json_obj1("fdname", json_object_new_string(MIG_IN_FDNAME)), &c, 1,
                     QMP_TIMEOUT_DEFAULT, 0, on_in_step, s);
    close(c);
    if (r == 0)
        r = qmp_send(s->qmp, "migrate-incoming", json_obj1("uri", json_object_new_string("fd:" MIG_IN_FDNAME)), NULL,
                     0, QMP_TIMEOUT_JOB, 0, on_in_started, s);
    if (r < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -ECONNRESET, "the QMP connection is closed");
        start_failed(s, &e, "incoming migration");
    }
}

/* QEMU is ready for the stream: the source may connect now. */
static void listen_ready(struct sup *s)
{
    migstore_in_ready(s);
    s->ev_mig.kind = EV_MIGRATE;
    sup_epoll_add(s, s->mig_in.listen_fd, EPOLLIN, &s->ev_mig);
    sup_log(s, "QEMU is set up; waiting for the migration stream on %s%s", s->start.incoming + 4,
            s->mig_in.tls_dir[0] ? " (TLS, the source's certificate verified)" : "");
    report_ready(s, 0, NULL);
}

static void on_in_tls_params(void *ctx, json_object *ret, const struct qv_err *err)
{
    on_in_step(ctx, ret, err);
    struct sup *s = ctx;
    if (s->start.phase == START_QMP && !s->start.failed)
        listen_ready(s);
}

static void on_in_tls(struct sup *s, void *ctx, const struct qv_err *err)
{
    (void)ctx;
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    if (err) {
        start_failed(s, err, NULL);
        return;
    }
    if (!s->qmp || qmp_send(s->qmp, "migrate-set-parameters", json_obj1("tls-creds", json_object_new_string(MIG_TLS_ID)),
                            NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_in_tls_params, s) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -ECONNRESET, "the QMP connection is closed");
        start_failed(s, &e, "incoming migration");
    }
}

/* The stream may come: copy-storage's exports first, or TLS credentials, or at once. */
static int incoming_tcp_ready(struct sup *s, struct qv_err *e)
{
    if (migstore_in_copy(s))
        return migstore_in_serve(s, e);     /* not with TLS: the CLI refuses that */
    if (s->mig_in.tls_dir[0])
        return migrate_tls_begin(s, s->mig_in.tls_dir, true, on_in_tls, NULL, e);
    listen_ready(s);
    return 0;
}

/* QEMU's own check of userfaultfd (postcopy_ram_supported_by_host: it opens one and
 * registers a region), confined as it is: a refusal ends the wait before any source came. */
static void on_in_postcopy_caps(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    struct qv_err e = {0};
    if (err) {
        qv_fail(&e, -EPERM, "--postcopy: QEMU cannot use userfaultfd here (%s; its reasons are in the log): "
                "vm.unprivileged_userfaultfd must be 1, and the sandbox must allow userfaultfd", qemu_says(err->msg));
        start_failed(s, &e, NULL);
        return;
    }
    sup_log(s, "post-copy: QEMU can use userfaultfd here");
    if (incoming_tcp_ready(s, &e) < 0)
        start_failed(s, &e, NULL);
}

static void restore_plugged(struct sup *s, const struct qv_err *err);

/* A restore: the file's header checked against the definition, the vCPUs it was saved
 * with plugged (restore_plugged), then its stream goes to QEMU from the header's end. */
static int restore_begin(struct sup *s, bool plugged, struct qv_err *e)
{
    _cleanup_json_ json_object *header = NULL;
    _cleanup_vm_def_ struct vm_def saved = {0};
    off_t off;
    int fd, vcpus;
    int r = savefile_open(s->start.incoming, &header, &saved, &off, &fd, e);
    if (r < 0)
        return r;
    if ((r = savefile_check_definition(s->start.incoming, &saved, &s->def, e)) < 0 ||
        (r = savefile_vcpus(s->start.incoming, header, &s->def, &vcpus, e)) < 0 ||
        (lseek(fd, off, SEEK_SET) < 0 && (r = qv_failerr(e, -errno, "%s", s->start.incoming)) < 0)) {
        close(fd);
        return r;
    }
    s->start.balloon_target = savefile_balloon_target(header);
    if (!plugged && vcpus > s->def.cpu.count) {
        close(fd);
        sup_log(s, "plugging the %d vCPUs the guest was saved with (setvcpus)", vcpus);
        return tuning_plug_vcpus(s, vcpus, restore_plugged, e);
    }
    sup_log(s, "restoring the guest's state from %s", s->start.incoming);
    /* capabilities (events), getfd and migrate-incoming go out together: QEMU answers in order */
    r = qmp_send(s->qmp, "migrate-set-capabilities", migrate_caps(false, false), NULL, 0, QMP_TIMEOUT_DEFAULT, 0,
                 on_in_step, s);
    if (r == 0)
        r = qmp_send(s->qmp, "getfd", json_obj1("fdname", json_object_new_string(MIG_IN_FDNAME)), &fd, 1,
                     QMP_TIMEOUT_DEFAULT, 0, on_in_step, s);
    close(fd);
    if (r == 0)
        r = qmp_send(s->qmp, "migrate-incoming", json_obj1("uri", json_object_new_string("fd:" MIG_IN_FDNAME)), NULL,
                     0, QMP_TIMEOUT_JOB, 0, on_in_started, s);
    if (r < 0)
        return qv_fail(e, -ECONNRESET, "restoring from %s: the QMP connection is closed", s->start.incoming);
    return 0;
}

static void restore_plugged(struct sup *s, const struct qv_err *err)
{
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    struct qv_err e = {0};
    if (err) {
        qv_fail(&e, err->code ? err->code : -EIO, "restoring from %s: plugging the vCPUs it was saved with: %s",
                s->start.incoming, err->msg);
        start_failed(s, &e, NULL);
    } else if (restore_begin(s, true, &e) < 0) {
        start_failed(s, &e, NULL);
    }
}

int migrate_incoming_begin(struct sup *s, struct qv_err *e)
{
    if (incoming_tcp(s)) {
        if (s->mig_in.listen_fd <= 0)
            return qv_fail(e, -EBADF, "%s: the migration listener is gone", s->def.name);
        if (!s->mig_in.postcopy)
            return incoming_tcp_ready(s, e);
        if (qmp_send(s->qmp, "migrate-set-capabilities", migrate_caps(false, true), NULL, 0, QMP_TIMEOUT_DEFAULT, 0,
                     on_in_postcopy_caps, s) < 0)
            return qv_fail(e, -ECONNRESET, "%s: the QMP connection is closed", s->def.name);
        return 0;
    }
    return restore_begin(s, false, e);
}
