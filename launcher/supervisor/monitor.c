/* QEMU's monitor connection after it was lost while QEMU still runs: a message
 * over QMP_MAX_MESSAGE, garbage, a hang-up. QEMU's QMP chardev is a listening
 * socket that takes a new client once the old one is gone, so the supervisor
 * connects again (backing off from 100 ms to 2 s) and does the handshake without
 * blocking its loop. Meanwhile `status` says the monitor is lost, and requests that
 * need QEMU are refused with that reason instead of "not running". Events QEMU
 * sent in the gap are lost: the run state is read back with query-status. */
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "launcher/supervisor/internal.h"

#define RETRY_FIRST_MS 100
#define RETRY_MAX_MS 2000
#define HANDSHAKE_MS 10000

struct sup_mon {
    char error[256];            /* why it was lost, "" while connected */
    uint64_t retry_at;          /* next connect attempt; 0: none planned */
    unsigned attempts;
    qmp_event_fn on_event;      /* the lost connection's event handler, for the next one */
    void *ctx;
};

struct sup_mon *monitor_new(void)
{
    return qv_xcalloc(1, sizeof(struct sup_mon));
}

void monitor_free(struct sup *s)
{
    free(s->mon);
    s->mon = NULL;
}

/* QEMU's exit shows on its pidfd (readable once it is a zombie); the socket may
 * hang up a moment earlier, and then the first connect finds nobody listening. */
static bool qemu_still_runs(struct sup *s)
{
    if (!s->qemu_pid || s->expected_exit)
        return false;
    if (s->pidfd >= 0) {
        struct pollfd p = {.fd = s->pidfd, .events = POLLIN};
        if (poll(&p, 1, 0) > 0)
            return false;
    }
    return kill(s->qemu_pid, 0) == 0 || errno == EPERM;
}

static void plan_retry(struct sup *s)
{
    unsigned delay = RETRY_FIRST_MS;
    for (unsigned i = 0; i < s->mon->attempts && delay < RETRY_MAX_MS; i++)
        delay *= 2;
    if (delay > RETRY_MAX_MS)
        delay = RETRY_MAX_MS;
    s->mon->attempts++;
    s->mon->retry_at = monotonic_ms() + delay;
}

bool monitor_lost(struct sup *s, struct qmp *lost, const char *why)
{
    qmp_event_handler(lost, &s->mon->on_event, &s->mon->ctx);
    if (!qemu_still_runs(s))
        return false;
    if (!s->mon->error[0]) {
        /* a working connection was lost (not a failed reconnect): start the back-off anew */
        sup_log(s, "QMP connection lost while QEMU runs (%s): reconnecting", why);
        s->mon->attempts = 0;
    }
    snprintf(s->mon->error, sizeof(s->mon->error), "%s", why);
    plan_retry(s);
    return true;
}

uint64_t monitor_next_deadline(struct sup *s)
{
    return s->mon->retry_at;
}

static void on_status(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    json_object *running;
    if (err || !json_object_object_get_ex(ret, "running", &running) ||
        !json_object_is_type(running, json_type_boolean))
        return;
    if (json_object_get_boolean(running) && s->rs.state == VM_PAUSED)
        sup_set_state(s, VM_RUNNING);
    else if (!json_object_get_boolean(running) && s->rs.state == VM_RUNNING)
        sup_set_state(s, VM_PAUSED);
}

static void on_handshake(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    (void)ret;
    if (err) {
        /* the qmp closed itself; its fd hangs up and the loss path plans the next try */
        snprintf(s->mon->error, sizeof(s->mon->error), "%s", err->msg);
        return;
    }
    sup_log(s, "QMP connection restored");
    s->mon->error[0] = '\0';
    s->mon->attempts = 0;
    if (s->qmp)
        qmp_send(s->qmp, "query-status", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_status, s);
    snapshots_monitor_back(s);
}

static int connect_nonblocking(const char *path)
{
    struct sockaddr_un addr;
    _cleanup_close_ int dirfd = -1;
    int r = unix_sockaddr(path, &addr, &dirfd);
    if (r < 0)
        return r;
    /* non-blocking: with QEMU's backlog full a blocking connect would wait */
    _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return -errno;
    return qv_steal_fd(&fd);
}

void monitor_expire(struct sup *s, uint64_t now)
{
    if (!s->mon->retry_at || now < s->mon->retry_at)
        return;
    s->mon->retry_at = 0;
    if (s->qmp || !qemu_still_runs(s) || !s->mon->on_event)
        return;     /* connected already, or QEMU is going: qemu_gone cleans up */
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/qmp.sock", s->run_dir);
    int fd = connect_nonblocking(path);
    if (fd < 0) {
        snprintf(s->mon->error, sizeof(s->mon->error), "connecting to %s: %s", path, strerror(-fd));
        plan_retry(s);
        return;
    }
    struct qmp *q = qmp_new(fd, QMP_MONITOR, s->mon->on_event, s->mon->ctx);
    if (!q) {
        plan_retry(s);
        return;
    }
    if (qmp_handshake(q, HANDSHAKE_MS, on_handshake, s) < 0) {
        qmp_free(q);
        plan_retry(s);
        return;
    }
    s->qmp = q;
    struct epoll_event ee = {.events = qmp_poll_events(q), .data.ptr = &s->ev_qmp};
    epoll_ctl(s->epfd, EPOLL_CTL_ADD, qmp_fd(q), &ee);
}

int monitor_ready(struct sup *s, struct qv_err *e)
{
    if (s->qmp && qmp_ready(s->qmp))
        return 0;
    if (s->mon->error[0])
        return qv_fail(e, -EIO, "%s: QEMU's monitor connection was lost (%s); the supervisor is reconnecting, "
                       "try again", s->def.name, s->mon->error);
    return qv_fail(e, -EIO, "%s: QEMU's monitor is not connected (state %s)", s->def.name,
                   vm_state_names[s->rs.state]);
}

json_object *monitor_status_json(struct sup *s)
{
    if (!s->qemu_pid)
        return NULL;
    if (s->qmp && qmp_ready(s->qmp))
        return json_object_new_string("connected");
    if (!s->qmp && !s->mon->retry_at)
        return json_object_new_string("not connected");     /* QEMU is on its way out */
    char text[sizeof(s->mon->error) + 32];
    snprintf(text, sizeof(text), "lost (%s); reconnecting", s->mon->error[0] ? s->mon->error : "handshake");
    return json_object_new_string(text);
}
