/* TLS for the migration stream (migrate --tls DIR, migrate-incoming --tls DIR): QEMU's
 * tls-creds-x509 object, verify-peer on, on both sides. DIR has libvirt's layout:
 * ca-cert.pem, and server-cert.pem + server-key.pem (the destination) or client-cert.pem
 * + client-key.pem (the source).
 *
 * QEMU opens no path of the host (its mount namespace has none of them) and runs as its
 * own uid, which may not read the user's key. So the three files are copied into a
 * staging directory under the VM's run directory (0700 and 0400, owned by QEMU's uid),
 * the directory's fd goes to QEMU with add-fd and the object reads it as
 * dir=/proc/self/fd/N. QEMU loads the credentials when the object is created; right
 * after that the staging directory is removed and the fd dropped (remove-fd): the key is
 * on the host's disk only as the user keeps it, never in argv, QMP data or a log.
 * Nothing here waits: every step is a QMP completion. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/supervisor/internal.h"

struct tls_setup {
    struct sup *s;
    char stage[PATH_MAX];
    int dirfd;
    int64_t fdset;
    bool server;
    migrate_tls_done done;
    void *ctx;
};

static const char *const server_files[] = {"ca-cert.pem", "server-cert.pem", "server-key.pem", NULL};
static const char *const client_files[] = {"ca-cert.pem", "client-cert.pem", "client-key.pem", NULL};

static void unstage(struct tls_setup *t)
{
    if (t->dirfd >= 0)
        close(t->dirfd);
    t->dirfd = -1;
    if (!t->stage[0])
        return;
    for (int i = 0; server_files[i]; i++) {
        char p[PATH_MAX + 32];
        snprintf(p, sizeof(p), "%s/%s", t->stage, server_files[i]);
        unlink(p);
        snprintf(p, sizeof(p), "%s/%s", t->stage, client_files[i]);
        unlink(p);
    }
    rmdir(t->stage);
    t->stage[0] = '\0';
}

static void finish(struct tls_setup *t, const struct qv_err *err)
{
    unstage(t);
    if (t->fdset >= 0 && t->s->qmp)
        sup_qmp(t->s, "remove-fd", json_obj1("fdset-id", json_object_new_int64(t->fdset)));
    t->done(t->s, t->ctx, err);
    free(t);
}

static void fail_qemu(struct tls_setup *t, const char *step, const struct qv_err *err)
{
    struct qv_err e = {0};
    const char *msg = err->msg;
    if (strncmp(msg, "GenericError: ", 14) == 0)
        msg += 14;
    qv_fail(&e, err->code ? err->code : -EIO, "TLS credentials: %s: %s", step, msg);
    finish(t, &e);
}

static void on_object_add(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct tls_setup *t = ctx;
    if (err)
        fail_qemu(t, "tls-creds-x509", err);
    else
        finish(t, NULL);
}

static void on_add_fd(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct tls_setup *t = ctx;
    if (err) {
        fail_qemu(t, "add-fd", err);
        return;
    }
    json_object *v;
    t->fdset = json_object_object_get_ex(ret, "fdset-id", &v) ? json_object_get_int64(v) : -1;
    int64_t fd = json_object_object_get_ex(ret, "fd", &v) ? json_object_get_int64(v) : -1;
    char dir[48];
    snprintf(dir, sizeof(dir), "/proc/self/fd/%lld", (long long)fd);
    bool server = t->server;
    json_object *a = json_object_new_object();
    json_object_object_add(a, "qom-type", json_object_new_string("tls-creds-x509"));
    json_object_object_add(a, "id", json_object_new_string(MIG_TLS_ID));
    json_object_object_add(a, "dir", json_object_new_string(dir));
    json_object_object_add(a, "endpoint", json_object_new_string(server ? "server" : "client"));
    json_object_object_add(a, "verify-peer", json_object_new_boolean(true));
    if (!t->s->qmp || qmp_send(t->s->qmp, "object-add", a, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_object_add, t) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -ECONNRESET, "TLS credentials: QEMU's monitor connection is closed");
        finish(t, &e);
    }
}

/* src/name -> stage/name, 0400, owned by uid:gid (when this process may give it). */
static int copy_file(const char *vm, const char *src_dir, const char *name, const char *stage, uid_t uid, gid_t gid,
                     struct qv_err *e)
{
    char src[PATH_MAX + 32], dst[PATH_MAX + 32];
    snprintf(src, sizeof(src), "%s/%s", src_dir, name);
    snprintf(dst, sizeof(dst), "%s/%s", stage, name);
    int in = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (in < 0)
        return qv_failerr(e, -errno, "%s: --tls %s: %s", vm, src_dir, name);
    char buf[65536];
    ssize_t n = read(in, buf, sizeof(buf));
    int r = n < 0 ? -errno : 0;
    char more;
    if (n == (ssize_t)sizeof(buf) && read(in, &more, 1) > 0)
        r = -EFBIG;
    close(in);
    if (r < 0)
        return qv_failerr(e, r, "%s: --tls %s: %s", vm, src_dir, name);
    if (n == 0)
        return qv_fail(e, -EINVAL, "%s: --tls %s: %s is empty", vm, src_dir, name);
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0400);
    if (out < 0)
        return qv_failerr(e, -errno, "%s: TLS staging %s", vm, dst);
    r = write_all(out, buf, (size_t)n);
    explicit_bzero(buf, sizeof(buf));
    if (r == 0 && geteuid() == 0 && fchown(out, uid, gid) < 0)
        r = -errno;
    close(out);
    if (r < 0)
        return qv_failerr(e, r, "%s: TLS staging %s", vm, dst);
    return 0;
}

int migrate_tls_begin(struct sup *s, const char *dir, bool server, migrate_tls_done done, void *ctx,
                      struct qv_err *e)
{
    if (!dir || dir[0] != '/')
        return qv_fail(e, -EINVAL, "%s: --tls: the directory must be an absolute path, not \"%s\"", s->def.name,
                       dir ? dir : "");
    if (!s->qmp || !qmp_ready(s->qmp))
        return qv_fail(e, -ECONNRESET, "%s: TLS credentials: QEMU's monitor connection is closed", s->def.name);
    struct tls_setup *t = qv_xcalloc(1, sizeof(*t));
    t->s = s;
    t->dirfd = -1;
    t->fdset = -1;
    t->server = server;
    t->done = done;
    t->ctx = ctx;
    snprintf(t->stage, sizeof(t->stage), "%s/mig-tls-%s", s->run_dir, server ? "server" : "client");
    uid_t uid = s->conf.have_user ? s->conf.uid : geteuid();
    gid_t gid = s->conf.have_user ? s->conf.gid : getegid();
    /* a staging directory left by a supervisor killed in the middle goes first */
    char keep[PATH_MAX];
    snprintf(keep, sizeof(keep), "%s", t->stage);
    unstage(t);
    snprintf(t->stage, sizeof(t->stage), "%s", keep);
    int r = 0;
    if (mkdir(t->stage, 0700) < 0) {
        r = qv_failerr(e, -errno, "%s: TLS staging %s", s->def.name, t->stage);
        t->stage[0] = '\0';
    } else if (geteuid() == 0 && chown(t->stage, uid, gid) < 0) {
        r = qv_failerr(e, -errno, "%s: TLS staging %s", s->def.name, t->stage);
    }
    const char *const *files = server ? server_files : client_files;
    for (int i = 0; r == 0 && files[i]; i++)
        r = copy_file(s->def.name, dir, files[i], t->stage, uid, gid, e);
    if (r == 0 && (t->dirfd = open(t->stage, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        r = qv_failerr(e, -errno, "%s: TLS staging %s", s->def.name, t->stage);
    if (r < 0) {
        unstage(t);
        free(t);
        return r;
    }
    /* an object left by an earlier attempt goes (its error, when there is none, is no matter) */
    qmp_send(s->qmp, "object-del", json_obj1("id", json_object_new_string(MIG_TLS_ID)), NULL, 0, QMP_TIMEOUT_DEFAULT,
             0, NULL, NULL);
    if (qmp_send(s->qmp, "add-fd", NULL, &t->dirfd, 1, QMP_TIMEOUT_DEFAULT, 0, on_add_fd, t) < 0) {
        unstage(t);
        free(t);
        return qv_fail(e, -ECONNRESET, "%s: TLS credentials: QEMU's monitor connection is closed", s->def.name);
    }
    return 0;
}
