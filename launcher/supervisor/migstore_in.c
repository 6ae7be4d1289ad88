/* The destination's half of the control line every live migration goes over
 * (migstore_out.c is the source's), and of the copy of local disks (migrate
 * --copy-storage). The protocol:
 *
 *   The source's supervisor opens a first TCP connection to the destination's --listen
 *   address and sends one line:
 *     QVMIG/1 {"vm": NAME, "uuid": UUID, "token": TOKEN, "copy_storage": BOOL,
 *              "persistent": BOOL, "disks": [{"id": "disk0", "size": BYTES, "format": "qcow2"}]}
 *   TOKEN is the one-time token this destination made (or was given) when it started to
 *   wait, printed by migrate-incoming: a source meant for another waiting destination,
 *   another VM (name or uuid), or the other mode (copy-storage or not) is refused with
 *   {"ok": false, "error": "..."}, its connection closed, and this side waits on for the
 *   right one, unchanged. Without --copy-storage QEMU already waits (-incoming defer)
 *   and the answer is {"ok": true} at once. With it there is no QEMU yet (the target
 *   images' sizes come from the source): the destination creates each target image
 *   (its definition's path, which must not exist yet; its definition's format, else the
 *   source's), starts QEMU with them, starts QEMU's NBD server on a listener it bound
 *   next to the control connection's local address (port chosen by the kernel, handed
 *   to QEMU as an fd) and exports each disk's node writable, then answers
 *     {"ok": true, "nbd": "ADDR:PORT", "exports": {"disk0": "disk0"}}
 *   or {"ok": false, "error": "..."} (and ends). The source mirrors each disk into its
 *   export and, once every mirror is in sync, opens a second connection on --listen for
 *   QEMU's migration stream (taken only from the control line's peer address). When
 *   the stream is complete (the guest stopped on both sides) the source cancels its
 *   mirrors in sync, which leaves the targets consistent, and sends "finish"; the
 *   destination stops its NBD server (copy-storage), lets the guest run (announce-self,
 *   cont), writes the definition it runs under etc/ (persistent, atomically) and only
 *   once the guest runs answers {"ok": true} (the Finish phase: the source's migrate
 *   returns then). A failure to run it answers {"ok": false, ...} with QEMU here gone,
 *   and the source resumes its guest; no answer at all leaves the source's guest paused
 *   (it may run here). Either side closing the control connection before "finish" ends
 *   the migration: the destination's QEMU quits and the images it created are removed;
 *   the source's mirrors and NBD nodes go and its guest runs on. A destination that
 *   hears from no source within its bound (migrate-incoming --timeout) cleans up and
 *   ends the same way.
 *
 * Nothing here waits: the connection is read in the loop, qemu-img runs as a watched
 * child, QMP steps complete through callbacks. The disks' part (the target images, the
 * NBD server and exports) is in migstore_copy.c. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "launcher/supervisor/migstore_in.h"

#define MSI_LINE_MAX 65536

void msi_send_line(struct sup *s, json_object *o)
{
    struct migstore_in *mi = s->msin;
    if (mi->ctl < 0)
        return;
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    char line[8192];
    int n = snprintf(line, sizeof(line), "%s\n", text);
    if (n >= (int)sizeof(line) || send(mi->ctl, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
        sup_log(s, "migration: telling the source failed: %s", strerror(errno));
}

static void send_error(struct sup *s, const char *msg)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(false));
    json_object_object_add(o, "error", json_object_new_string(msg));
    msi_send_line(s, o);
    json_object_put(o);
}

static void close_ctl(struct sup *s)
{
    struct migstore_in *mi = s->msin;
    if (mi->ctl >= 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, mi->ctl, NULL);
        close(mi->ctl);
        mi->ctl = -1;
    }
}

/* The copy is over (well or not): the connection goes, and, unless the guest is here
 * now, the images this side created. */
static void msin_end(struct sup *s, bool keep_images)
{
    struct migstore_in *mi = s->msin;
    if (!mi)
        return;
    close_ctl(s);
    sup_child_abort(&mi->child);
    if (mi->nbd_fd >= 0)
        close(mi->nbd_fd);
    for (size_t i = 0; i < mi->ndisks && !keep_images; i++) {
        if (!mi->disks[i].created)
            continue;
        if (unlink(mi->disks[i].path) == 0)
            sup_log(s, "copy-storage: removed the target image %s", mi->disks[i].path);
        else if (errno != ENOENT)
            sup_log(s, "warning: copy-storage: removing %s: %s", mi->disks[i].path, strerror(errno));
    }
    buf_free(&mi->in);
    free(mi);
    s->msin = NULL;
}

/* A failure before QEMU was started: the supervisor ends, as a failed start would. */
void msi_fail_early(struct sup *s, const char *fmt, ...)
{
    char why[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    sup_log(s, "incoming migration failed: %s", why);
    send_error(s, why);
    msin_end(s, false);
    migrate_incoming_close(s);
    snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "incoming migration failed: %s", why);
    sup_set_state(s, VM_SHUTOFF);
    ctl_stop_done(s, true, NULL);
    s->exit_code = 1;
    s->done = true;
}

/* A failure once QEMU runs: the start fails (start_wind_up calls migstore_in_wind_up). */
void msi_fail_started(struct sup *s, int code, const char *fmt, ...)
{
    struct qv_err e = {0};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
    va_end(ap);
    e.code = code;
    start_failed(s, &e, NULL);
}

int migstore_in_listen(struct sup *s, bool copy_storage, struct qv_err *e)
{
    (void)e;
    struct migstore_in *mi = qv_xcalloc(1, sizeof(*mi));
    mi->ctl = mi->nbd_fd = -1;
    mi->child.out = -1;
    mi->copy = copy_storage;
    s->msin = mi;
    if (!copy_storage)
        return 0;   /* QEMU starts at once; migstore_in_ready opens the door once it waits */
    mi->deadline = monotonic_ms() + s->mig_in.wait_ms;
    s->ev_mig.kind = EV_MIGRATE;
    sup_epoll_add(s, s->mig_in.listen_fd, EPOLLIN, &s->ev_mig);
    s->rs.state = VM_STARTING;
    s->rs.supervisor_pid = getpid();
    sup_save_state(s);
    sup_log(s, "waiting on %s for the source to say which disks to copy (copy-storage)", s->start.incoming + 4);
    return 0;
}

bool migstore_in_waiting(struct sup *s)
{
    return s->msin && s->msin->phase == MSI_WAIT_SOURCE;
}

void migstore_in_ready(struct sup *s)
{
    if (s->msin && !s->msin->copy)
        s->msin->deadline = monotonic_ms() + s->mig_in.wait_ms;
}

bool migstore_in_copy(struct sup *s)
{
    return s->msin && s->msin->copy;
}

/* A source that is not the one this side waits for (or that left before saying who it
 * is): told why, its connection closed, and the wait goes on as it was. */
static void refuse(struct sup *s, const char *why)
{
    struct migstore_in *mi = s->msin;
    sup_log(s, "refused a source: %s; waiting on for the right one", why);
    send_error(s, why);
    close_ctl(s);
    buf_free(&mi->in);
    mi->ndisks = 0;
    mi->phase = MSI_WAIT_SOURCE;
    sup_epoll_add(s, s->mig_in.listen_fd, EPOLLIN, &s->ev_mig);
}

static bool same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr == ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr, &((const struct sockaddr_in6 *)b)->sin6_addr,
                      sizeof(struct in6_addr)) == 0;
    return false;
}

bool migstore_in_stream_ok(struct sup *s, int fd)
{
    struct migstore_in *mi = s->msin;
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    if (!mi || mi->phase != MSI_SERVING)
        return false;
    if (getpeername(fd, (struct sockaddr *)&sa, &len) < 0 || !same_host(&sa, &mi->peer)) {
        char host[INET6_ADDRSTRLEN] = "?";
        getnameinfo((struct sockaddr *)&sa, len, host, sizeof(host), NULL, 0, NI_NUMERICHOST);
        sup_log(s, "refused a stream connection from %s: not the source's address", host);
        return false;
    }
    return true;
}


void migstore_in_accept(struct sup *s)
{
    struct migstore_in *mi = s->msin;
    int c = accept4(s->mig_in.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0)
        return;
    /* the listener waits for the stream later; until then nobody else gets in */
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->mig_in.listen_fd, NULL);
    socklen_t plen = sizeof(mi->peer);
    if (getpeername(c, (struct sockaddr *)&mi->peer, &plen) < 0)
        memset(&mi->peer, 0, sizeof(mi->peer));
    migrate_keepalive(c);
    mi->ctl = c;
    mi->phase = MSI_WAIT_HELLO;
    s->ev_msctl.kind = EV_MIGCTL;
    sup_epoll_add(s, c, EPOLLIN, &s->ev_msctl);
    sup_log(s, "a source connected (control line)");
}

static int parse_hello(struct sup *s, const char *line, char *why, size_t whylen)
{
    struct migstore_in *mi = s->msin;
    static const char magic[] = "QVMIG/1 ";
    if (strncmp(line, magic, sizeof(magic) - 1) != 0) {
        snprintf(why, whylen, "the source did not speak qvisor's control protocol (QVMIG/1): an older qvisor, or "
                 "not qvisor migrate at all");
        return -EPROTO;
    }
    _cleanup_json_ json_object *o = json_tokener_parse(line + sizeof(magic) - 1);
    json_object *v, *disks, *uuid, *token, *flag;
    if (!o || !json_object_object_get_ex(o, "vm", &v) || !json_object_object_get_ex(o, "disks", &disks) ||
        !json_object_is_type(disks, json_type_array) || !json_object_object_get_ex(o, "uuid", &uuid) ||
        !json_object_object_get_ex(o, "token", &token)) {
        snprintf(why, whylen, "the source's hello is not {\"vm\", \"uuid\", \"token\", \"disks\"}");
        return -EPROTO;
    }
    if (strcmp(json_object_get_string(v), s->def.name) != 0) {
        snprintf(why, whylen, "the source migrates VM %.64s; this destination waits for %s", json_object_get_string(v),
                 s->def.name);
        return -EINVAL;
    }
    if (strcmp(json_object_get_string(uuid), s->def.uuid) != 0) {
        snprintf(why, whylen, "the source's %s has uuid %.40s, the one here %s: not the same VM", s->def.name,
                 json_object_get_string(uuid), s->def.uuid);
        return -EINVAL;
    }
    if (strcmp(json_object_get_string(token), s->mig_in.token) != 0) {
        snprintf(why, whylen, "%s: the token does not match: this destination waits for another migration (migrate "
                 "--token takes the one its migrate-incoming printed)", s->def.name);
        return -EACCES;
    }
    bool copy = json_object_object_get_ex(o, "copy_storage", &flag) && json_object_get_boolean(flag);
    if (copy != mi->copy) {
        snprintf(why, whylen, copy ? "the source copies local disks (--copy-storage), and this destination waits "
                 "without --copy-storage" : "this destination waits for a copy of local disks (migrate-incoming "
                 "--copy-storage), and the source sends none (migrate --copy-storage)");
        return -EINVAL;
    }
    bool postcopy = json_object_object_get_ex(o, "postcopy", &flag) && json_object_get_boolean(flag);
    if (postcopy != s->mig_in.postcopy) {
        snprintf(why, whylen, postcopy ? "the source switches to post-copy (--postcopy), and this destination waits "
                 "without --postcopy (its QEMU may not use userfaultfd)" : "this destination waits for a post-copy "
                 "migration (migrate-incoming --postcopy), and the source sends none (migrate --postcopy)");
        return -EINVAL;
    }
    json_object *guest;
    if (!json_object_object_get_ex(o, "guest", &guest) || !json_object_is_type(guest, json_type_object)) {
        snprintf(why, whylen, "the source did not describe its guest (an older qvisor): the definitions cannot be "
                 "compared");
        return -EPROTO;
    }
    int r = migrate_shape_diff(guest, &s->def, why, whylen);
    if (r < 0)
        return r;
    mi->plugged_vcpus = json_object_object_get_ex(o, "plugged_vcpus", &v) ? json_object_get_int(v) : 0;
    mi->balloon_target = json_object_object_get_ex(o, "balloon_target", &v) ? (uint64_t)json_object_get_int64(v) : 0;
    mi->persistent = json_object_object_get_ex(o, "persistent", &flag) && json_object_get_boolean(flag);
    size_t n = json_object_array_length(disks);
    if (n > VM_MAX_DISKS) {
        snprintf(why, whylen, "too many disks (%zu)", n);
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        json_object *d = json_object_array_get_idx(disks, i), *id, *size, *fmt;
        if (!json_object_object_get_ex(d, "id", &id) || !json_object_object_get_ex(d, "size", &size) ||
            !json_object_object_get_ex(d, "format", &fmt)) {
            snprintf(why, whylen, "disks[%zu]: id, size and format are needed", i);
            return -EPROTO;
        }
        struct msi_disk *t = &mi->disks[mi->ndisks];
        snprintf(t->id, sizeof(t->id), "%s", json_object_get_string(id));
        t->size = json_object_get_int64(size);
        struct disk_ref ref;
        if (!disk_find(s, t->id, &ref) || ref.index < 0 || strcmp(ref.id, t->id) != 0) {
            snprintf(why, whylen, "%s: no such disk here (the definitions differ)", t->id);
            return -ENOENT;
        }
        const struct vm_disk *k = &s->def.disks[ref.index];
        if (!k->file || k->volume) {
            snprintf(why, whylen, "%s: only file disks are copied (volume %s: shared storage, or copy it "
                     "first)", t->id, k->volume ? k->volume : "?");
            return -EOPNOTSUPP;
        }
        const char *f = json_object_get_string(fmt);
        if (k->format != FORMAT_PROBE)
            f = disk_format_names[k->format];
        if (strcmp(f, "qcow2") != 0 && strcmp(f, "raw") != 0) {
            snprintf(why, whylen, "%s: format %s: only qcow2 and raw are made here", t->id, f);
            return -EINVAL;
        }
        if (t->size <= 0) {
            snprintf(why, whylen, "%s: bad size %lld", t->id, (long long)t->size);
            return -EINVAL;
        }
        snprintf(t->format, sizeof(t->format), "%s", f);
        snprintf(t->path, sizeof(t->path), "%s", k->file);
        if (access(t->path, F_OK) == 0) {
            snprintf(why, whylen, "%s: %s exists here: the copy goes into a new image (remove it, or give the "
                     "destination's definition another path; shared storage needs no --copy-storage)", t->id,
                     t->path);
            return -EEXIST;
        }
        mi->ndisks++;
    }
    return 0;
}

/* The source's vCPUs plugged (or nothing to plug): the stream may come. */
static void on_plugged_serving(struct sup *s, const struct qv_err *err)
{
    struct migstore_in *mi = s->msin;
    if (!mi || mi->phase != MSI_SERVING || mi->ctl < 0)
        return;
    if (err) {
        char why[900];
        snprintf(why, sizeof(why), "plugging the source's %d vCPUs here: %s", mi->plugged_vcpus, err->msg);
        mi->deadline = monotonic_ms() + s->mig_in.wait_ms;    /* waits on for another source, bounded again */
        refuse(s, why);
        return;
    }
    json_object *o = json_obj1("ok", json_object_new_boolean(true));
    msi_send_line(s, o);
    json_object_put(o);
    sup_epoll_add(s, s->mig_in.listen_fd, EPOLLIN, &s->ev_mig);
    sup_log(s, "the source of %s is here (its token matched); waiting for the migration stream", s->def.name);
}

/* The vCPUs the source plugged live (setvcpus) are plugged here too before the stream
 * comes: QEMU's stream carries their state, not the devices. done is called once. */
int msi_plug_vcpus(struct sup *s, void (*done)(struct sup *, const struct qv_err *), struct qv_err *e)
{
    struct migstore_in *mi = s->msin;
    if (mi->plugged_vcpus <= s->def.cpu.count) {
        done(s, NULL);
        return 0;
    }
    sup_log(s, "plugging the %d vCPUs the source runs with (setvcpus there)", mi->plugged_vcpus);
    return tuning_plug_vcpus(s, mi->plugged_vcpus, done, e);
}

static void on_hello(struct sup *s, const char *line)
{
    struct migstore_in *mi = s->msin;
    char why[900];
    if (parse_hello(s, line, why, sizeof(why)) < 0) {
        refuse(s, why);
        return;
    }
    mi->deadline = 0;
    if (!mi->copy) {
        mi->phase = MSI_SERVING;
        struct qv_err e = {0};
        if (msi_plug_vcpus(s, on_plugged_serving, &e) < 0) {
            mi->deadline = monotonic_ms() + s->mig_in.wait_ms;
            refuse(s, e.msg);
        }
        return;
    }
    sup_log(s, "copy-storage: %zu disk(s) to receive", mi->ndisks);
    mi->phase = MSI_CREATING;
    mi->next = 0;
    msi_create_next(s);
}

/* ---- the end ---- */

static void maybe_finish(struct sup *s)
{
    struct migstore_in *mi = s->msin;
    if (!mi->stream_done || !mi->finish_asked || mi->phase != MSI_SERVING)
        return;
    if (!mi->copy) {
        mi->phase = MSI_RESUMING;
        migrate_incoming_resume(s);
        return;
    }
    mi->phase = MSI_FINISHING;
    msi_nbd_stop(s);
}

bool migstore_in_hold(struct sup *s)
{
    struct migstore_in *mi = s->msin;
    if (!mi)
        return false;
    mi->stream_done = true;
    sup_log(s, "the guest's state is in; waiting for the source's finish%s", mi->copy ? " (the disks)" : "");
    maybe_finish(s);
    return true;
}

void migstore_in_io(struct sup *s)
{
    struct migstore_in *mi = s->msin;
    if (!mi || mi->ctl < 0)
        return;
    char chunk[4096];
    for (;;) {
        ssize_t n = recv(mi->ctl, chunk, sizeof(chunk), 0);
        if (n > 0) {
            buf_add(&mi->in, chunk, (size_t)n);
            if (mi->phase == MSI_WAIT_HELLO && mi->in.len >= 8 && memcmp(mi->in.p, "QVMIG/1 ", 8) != 0) {
                /* a QEMU stream or anything else sent here first: not a source of ours */
                refuse(s, "the source did not speak qvisor's control protocol (QVMIG/1): an older qvisor, or not "
                       "qvisor migrate at all");
                return;
            }
            if (mi->in.len > MSI_LINE_MAX)
                n = -1, errno = EMSGSIZE;
            else
                continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        /* closed, or broken: the source gave up (or died) */
        const char *why = n == 0 ? "closed the connection" : strerror(errno);
        if (mi->phase == MSI_WAIT_HELLO) {
            refuse(s, "the source left before it said who it is");
            return;
        }
        close_ctl(s);
        if (mi->phase == MSI_CREATING)
            msi_fail_early(s, "the source %s", why);
        else if (mi->phase == MSI_RESUMING)
            sup_log(s, "the source's control line closed (%s) while the guest resumes here; it runs on here", why);
        else if (s->mig_in.in_postcopy && mi->phase == MSI_SERVING) {
            /* the guest runs here already and can run nowhere else: the stream decides */
            sup_log(s, "the source's control line closed (%s) during post-copy; the guest runs on here", why);
            mi->finish_asked = true;
            maybe_finish(s);
        }
        else if (mi->phase != MSI_DONE && start_active(s))
            msi_fail_started(s, -ECANCELED, "the source ended the migration (its control connection: %s)", why);
        return;
    }
    char *line;
    while (s->msin && (line = buf_take_line(&mi->in))) {
        if (mi->phase == MSI_WAIT_HELLO)
            on_hello(s, line);
        else if (strcmp(line, "finish") == 0 && (mi->phase == MSI_SERVING)) {
            mi->finish_asked = true;
            maybe_finish(s);
        } else
            sup_log(s, "copy-storage: unexpected from the source: %.80s", line);
        free(line);
    }
}

void migstore_in_wind_up(struct sup *s, const char *why)
{
    if (!s->msin)
        return;
    /* whether the guest ran here: a source that switched to post-copy may resume its
     * own copy only if it never did */
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(false));
    json_object_object_add(o, "error", json_object_new_string(why));
    json_object_object_add(o, "guest_ran", json_object_new_boolean(!s->never_ran));
    msi_send_line(s, o);
    json_object_put(o);
    msin_end(s, false);
}

bool migstore_in_cancel(struct sup *s, const char *why)
{
    struct migstore_in *mi = s->msin;
    if (!mi || start_active(s) || mi->phase == MSI_DONE)
        return false;
    msi_fail_early(s, "%s", why);
    s->exit_code = 0;
    return true;
}

void migstore_in_forget(struct sup *s)
{
    msin_end(s, false);
}

void migstore_in_started(struct sup *s, bool paused)
{
    struct migstore_in *mi = s->msin;
    if (!mi || mi->phase != MSI_RESUMING)
        return;
    json_object *o = json_obj1("ok", json_object_new_boolean(true));
    json_object_object_add(o, "state", json_object_new_string(paused ? "paused" : "running"));
    if (mi->persistent && !s->def.transient) {
        sup_log(s, "%s is defined here already: its definition stays as it is", s->def.name);
    } else if (mi->persistent) {
        struct qv_err e = {0};
        if (vm_transient_persist(s->paths, &s->def, &e) < 0) {
            sup_log(s, "warning: keeping the definition here (persistent): %s", e.msg);
            json_object_object_add(o, "persistent_error", json_object_new_string(e.msg));
        } else {
            s->def.transient = false;
            sup_log(s, "%s is defined here now (the source asked for --persistent)", s->def.name);
            json_object_object_add(o, "defined", json_object_new_boolean(true));
        }
    }
    if (mi->balloon_target)
        tuning_balloon_carry(s, mi->balloon_target);
    sup_crash_point("incoming-before-confirm");     /* tests: the guest runs here, the source never hears it */
    msi_send_line(s, o);
    json_object_put(o);
    sup_log(s, "the source is told that the guest %s here", paused ? "is here (paused)" : "runs");
    mi->phase = MSI_DONE;
    msin_end(s, true);
}

uint64_t migstore_in_next_deadline(struct sup *s)
{
    return s->msin ? s->msin->deadline : 0;
}

void migstore_in_expire(struct sup *s, uint64_t now)
{
    struct migstore_in *mi = s->msin;
    if (!mi || !mi->deadline || now < mi->deadline)
        return;
    mi->deadline = 0;
    char why[300];
    snprintf(why, sizeof(why), "no source came within %llu s (migrate-incoming --timeout): this destination gives up "
             "and cleans up", (unsigned long long)(s->mig_in.wait_ms / 1000));
    if (mi->phase == MSI_WAIT_HELLO)
        send_error(s, why);
    if (start_active(s))
        msi_fail_started(s, -ETIMEDOUT, "%s", why);
    else
        msi_fail_early(s, "%s", why);
}
