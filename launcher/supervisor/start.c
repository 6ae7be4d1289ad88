/* Starting QEMU and taking over one that outlived its supervisor. The child is
 * recorded (pid, start time, pid file, state.json) before it may do anything; a
 * supervisor looks for a live QEMU of its VM by every route before it would start
 * another; QEMU starts paused and gets `cont` only once the set-up over QMP is done. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"

#define START_TIMEOUT_MS 30000

/* The last lines QEMU wrote to the log since `from`: its own words on why it failed. */
static void qemu_message(struct sup *s, off_t from, char *out, size_t outlen)
{
    out[0] = '\0';
    off_t end = lseek(s->log_fd, 0, SEEK_END);
    if (end <= from)
        return;
    size_t n = (size_t)(end - from) > 4096 ? 4096 : (size_t)(end - from);
    char buf[4097];
    ssize_t got = pread(s->log_fd, buf, n, end - (off_t)n);
    if (got <= 0)
        return;
    buf[got] = '\0';
    /* keep QEMU's lines, dropping our own */
    size_t k = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (strstr(line, " supervisor: ") || strstr(line, " console: "))
            continue;
        char *msg = strstr(line, "qemu-system");
        msg = msg ? msg : line;
        k += (size_t)snprintf(out + k, outlen > k ? outlen - k : 0, "%s%s", k ? "; " : "", msg);
    }
}

static int read_secret(struct sup *s, const char *name, char **out, struct qv_err *e)
{
    char path[PATH_MAX];
    qv_path(s->paths, path, sizeof(path), QV_ETC "/secrets/%s", name);
    struct stat st;
    if (stat(path, &st) < 0)
        return qv_failerr(e, -errno, "secret %s (%s)", name, path);
    if (st.st_mode & 077)
        return qv_fail(e, -EPERM, "secret %s: %s is readable by others (chmod 600 it)", name, path);
    size_t len;
    int r = read_file(path, 4096, out, &len);
    if (r < 0)
        return qv_failerr(e, r, "secret %s", name);
    while (len && ((*out)[len - 1] == '\n' || (*out)[len - 1] == '\r'))
        (*out)[--len] = '\0';
    return 0;
}

/* After the QMP handshake, before `cont`: what must not be on the command line. */
static int late_setup(struct sup *s, struct qv_err *e)
{
    if (s->def.graphics.kind == GRAPHICS_VNC && s->def.graphics.password_secret) {
        _cleanup_free_ char *pw = NULL;
        int r = read_secret(s, s->def.graphics.password_secret, &pw, e);
        if (r < 0)
            return r;
        json_object *a = json_object_new_object();
        json_object_object_add(a, "protocol", json_object_new_string("vnc"));
        json_object_object_add(a, "password", json_object_new_string(pw));
        r = qmp_call(s->qmp, "set_password", a, NULL, 0, QMP_TIMEOUT_DEFAULT, NULL, e);
        explicit_bzero(pw, strlen(pw));
        if (r < 0)
            return qv_prefix(e, "setting the VNC password: ");
    }
    return 0;
}

static void query_facts(struct sup *s)
{
    json_object *kvm = NULL;
    struct qv_err e = {0};
    snprintf(s->rs.qemu_version, sizeof(s->rs.qemu_version), "%s", qmp_qemu_version(s->qmp));
    if (qmp_call(s->qmp, "query-kvm", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &kvm, &e) == 0) {
        json_object *en;
        bool on = json_object_object_get_ex(kvm, "enabled", &en) && json_object_get_boolean(en);
        snprintf(s->rs.accel, sizeof(s->rs.accel), "%s", on ? "kvm" : "tcg");
        json_object_put(kvm);
    }
}

static int qmp_attach(struct sup *s, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/qmp.sock", s->run_dir);
    int r = qmp_connect_path(path, QMP_MONITOR, START_TIMEOUT_MS, sup_on_event, s, &s->qmp, e);
    if (r < 0)
        return r;
    sup_epoll_add(s, qmp_fd(s->qmp), qmp_poll_events(s->qmp), &s->ev_qmp);
    return 0;
}

/* QVISOR_TEST_CRASH_AT=POINT kills the supervisor there, as a kill -9 would: the
 * lifecycle tests use it to prove that no crash point loses or doubles a QEMU. */
static void crash_point(const char *point)
{
    const char *at = getenv("QVISOR_TEST_CRASH_AT");
    if (at && strcmp(at, point) == 0)
        raise(SIGKILL);
}

/* Called between fork and everything else the child does (sandbox_spec.forked):
 * QEMU's pid and start time are on disk before it can touch a disk image. A
 * supervisor that cannot record its child does not start it. */
int sup_record_qemu(pid_t pid, void *opaque, struct qv_err *e)
{
    struct sup *s = opaque;
    crash_point("fork");
    unsigned long long start;
    int r = proc_start_time(pid, &start);
    if (r < 0)
        return qv_failerr(e, r, "%s: reading the start time of QEMU pid %d", s->def.name, (int)pid);
    s->qemu_pid = pid;
    s->rs.qemu_pid = pid;
    s->rs.qemu_start = start;
    s->rs.started_at_ms = realtime_ms();
    char path[PATH_MAX], buf[32];
    snprintf(path, sizeof(path), "%s/pid", s->run_dir);
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
    if ((r = write_file_atomic(path, buf, (size_t)n, 0644, e)) < 0 ||
        (r = runstate_write(s->paths, s->def.name, &s->rs, e)) < 0) {
        s->qemu_pid = s->rs.qemu_pid = 0;
        return qv_prefix(e, "%s: QEMU not started, its pid could not be recorded: ", s->def.name);
    }
    crash_point("recorded");
    return 0;
}

void remove_run_files(struct sup *s)
{
    static const char *const files[] = {"qmp.sock", "console.sock", "qga.sock", "pid", NULL};
    for (int i = 0; files[i]; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", s->run_dir, files[i]);
        unlink(path);
    }
}

void report_ready(struct sup *s, int code, const char *msg)
{
    if (s->ready_fd < 0)
        return;
    char line[1200];
    int n = code ? snprintf(line, sizeof(line), "error %d %s\n", code, msg) : snprintf(line, sizeof(line), "ok\n");
    write_all(s->ready_fd, line, (size_t)n);
    close(s->ready_fd);
    s->ready_fd = -1;
}

/* The first `cont`: the guest runs, and `start` may return now. */
static int resume_guest(struct sup *s, struct qv_err *e)
{
    int r = qmp_call(s->qmp, "cont", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, NULL, e);
    if (r < 0)
        return qv_prefix(e, "%s: cont: ", s->def.name);
    s->never_ran = false;
    report_ready(s, 0, NULL);
    return 0;
}

int start_qemu(struct sup *s, struct qv_err *e)
{
    struct launch_plan plan;
    /* volumes and chains as they are now: a restart sees a volume grown or replaced */
    int r = vm_resolve_disks(s->paths, &s->def, e);
    if (r < 0)
        return r;
    r = build_launch_plan(&s->def, &s->facts, &plan, e);
    if (r < 0)
        return r;
    s->expected_exit = false;
    s->exit_reason[0] = '\0';
    s->stop_phase = 0;
    s->rs.state = VM_STARTING;
    s->never_ran = true;
    s->rs.supervisor_pid = getpid();
    s->rs.qemu_pid = 0;
    s->rs.last_exit[0] = '\0';
    memcpy(s->rs.uuid, s->def.uuid, sizeof(s->rs.uuid));
    sup_save_state(s);

    if ((r = confine_prepare(s, &plan, e)) < 0) {
        launch_plan_free(&plan);
        return r;
    }
    sup_save_state(s);
    struct launch_ctx ctx = {.paths = s->paths, .facts = &s->facts, .run_dir = s->run_dir, .open_tap = vmnet_open_tap,
                             .opaque = s};
    int fds[PLAN_MAX_FDS];
    if ((r = launch_open_resources(&plan, &s->def, &ctx, fds, e)) < 0) {
        launch_plan_free(&plan);
        return r;
    }
    off_t log_start = lseek(s->log_fd, 0, SEEK_END);
    sup_log(s, "starting QEMU (%s, %s) as uid %u", plan.accel == ACCEL_KVM ? "kvm" : "tcg", s->facts.qemu,
            (unsigned)s->conf.uid);
    pid_t pid = 0;
    r = confine_spawn(s, &plan, fds, &pid, e);
    launch_close_resources(fds, plan.nslots);
    launch_plan_free(&plan);
    if (r < 0) {
        /* the child, if any, is reaped: its pid must not be signalled again */
        s->qemu_pid = s->rs.qemu_pid = 0;
        sup_save_state(s);
        return r;
    }
    s->qemu_is_child = true;
    s->pidfd = sup_pidfd_open(s->qemu_pid);
    if (s->pidfd >= 0)
        sup_epoll_add(s, s->pidfd, EPOLLIN, &s->ev_pidfd);

    if ((r = qmp_attach(s, e)) < 0 || (r = console_connect(s, e)) < 0 || (r = late_setup(s, e)) < 0) {
        kill(s->qemu_pid, SIGKILL);
        int st;
        waitpid(s->qemu_pid, &st, 0);
        s->qemu_pid = s->rs.qemu_pid = 0;
        char msg[900];
        qemu_message(s, log_start, msg, sizeof(msg));
        /* an OOM kill shows only as a broken QMP connection: name the cause */
        if (confine_oom_error(s, e) == 0 && msg[0])
            qv_fail(e, -EIO, "%s", msg);
        return qv_prefix(e, "%s: QEMU failed to start: ", s->def.name);
    }
    crash_point("before-cont");
    if ((r = resume_guest(s, e)) < 0)
        return r;
    query_facts(s);
    sup_log(s, "QEMU %s running as pid %d (accel %s)", s->rs.qemu_version, (int)s->qemu_pid, s->rs.accel);
    sup_set_state(s, VM_RUNNING);
    return 0;
}

/* A previous supervisor died and QEMU lived on: pick up where it left off. A QEMU
 * still in "prelaunch" was never continued: its start is finished here (late set-up,
 * `cont`), unless this supervisor only came to stop or kill it. */
int reattach(struct sup *s, bool finish_start, struct qv_err *e)
{
    int r = confine_reattach(s, e);
    if (r < 0)
        return r;
    hotplug_restore(s);
    vmnet_restore(s);
    s->qemu_pid = s->rs.qemu_pid;
    s->qemu_is_child = false;
    s->pidfd = sup_pidfd_open(s->qemu_pid);
    if (s->pidfd < 0)
        return qv_failerr(e, -errno, "%s: QEMU pid %d", s->def.name, (int)s->qemu_pid);
    sup_epoll_add(s, s->pidfd, EPOLLIN, &s->ev_pidfd);
    r = qmp_attach(s, e);
    if (r < 0)
        return qv_prefix(e, "%s: reconnecting to QEMU pid %d: ", s->def.name, (int)s->qemu_pid);
    console_connect(s, e);
    query_facts(s);
    json_object *st = NULL;
    if ((r = qmp_call(s->qmp, "query-status", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &st, e)) < 0)
        return qv_prefix(e, "%s: QEMU pid %d: ", s->def.name, (int)s->qemu_pid);
    json_object *v;
    bool running = json_object_object_get_ex(st, "running", &v) && json_object_get_boolean(v);
    s->never_ran = json_object_object_get_ex(st, "status", &v) && strcmp(json_object_get_string(v), "prelaunch") == 0;
    json_object_put(st);
    enum vm_state prev = s->rs.state;
    s->rs.supervisor_pid = getpid();
    s->rs.state = VM_STARTING;
    sup_log(s, "reattached to running QEMU pid %d%s", (int)s->qemu_pid,
            s->never_ran ? ", which was never started: finishing its start" : "");
    if (s->never_ran && finish_start) {
        if ((r = late_setup(s, e)) < 0 || (r = resume_guest(s, e)) < 0)
            return r;
        running = true;
    }
    sup_set_state(s, running ? VM_RUNNING : prev == VM_CRASHED ? VM_CRASHED : VM_PAUSED);
    return 0;
}

/* Cleans up what a previous run recorded and left behind (its QEMU is dead). */
void cleanup_previous(struct sup *s, const struct vm_runstate *prev)
{
    if (prev->state == VM_SHUTOFF)
        return;
    if (prev->qemu_pid) {
        sup_log(s, "QEMU pid %d of the previous run is gone (%s); cleaning up after it", (int)prev->qemu_pid,
                vm_state_names[prev->state]);
    }
    confine_cleanup_recorded(s, prev->resources);
    vmnet_cleanup_recorded(s, prev->resources);
    remove_run_files(s);
}

/* The QEMU of a previous run, if one lives: found by every route, so that a second
 * one is never started on the same disks. */
bool find_previous(struct sup *s, struct vm_runstate *prev, bool have_prev)
{
    struct qemu_found f;
    int r = vm_find_qemu(s->paths, s->def.name, s->def.uuid, have_prev ? prev : NULL, &f);
    if (r < 0)
        sup_log(s, "warning: looking for a QEMU of the previous run: %s", strerror(-r));
    if (r <= 0)
        return false;
    if (!have_prev || prev->qemu_pid != f.pid || prev->state == VM_SHUTOFF) {
        sup_log(s, "found QEMU pid %d of this VM by its %s, not by the state file: taking it over", (int)f.pid,
                f.route);
        if (!have_prev)
            memset(prev, 0, sizeof(*prev));
        if (prev->state == VM_SHUTOFF || prev->state == VM_CRASHED)
            prev->state = VM_RUNNING;
    }
    prev->qemu_pid = f.pid;
    prev->qemu_start = f.start;
    memcpy(prev->uuid, s->def.uuid, sizeof(prev->uuid));
    return true;
}
