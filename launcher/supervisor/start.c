/* Starting QEMU. The child is recorded (pid, start time, pid file, state.json) before
 * it may do anything; QEMU starts paused and gets `cont` only once the set-up over QMP
 * is done. Taking over a QEMU that outlived its supervisor is reattach.c. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"

/* A new QEMU's monitor handshake. It comes only after QEMU has set up every device,
 * and a virtiofs device waits for its virtiofsd to answer first: under heavy load that
 * alone took over 30 s. So there is no fixed limit while QEMU or a virtiofsd of the VM
 * keeps using CPU: a start fails after START_STALL_MS in which none of them did (a
 * QEMU that hangs), or after START_TIMEOUT_MAX_MS in all (one that spins).
 * QVISOR_TEST_START_STALL_MS shortens the stall limit for the tests. */
#define START_STALL_MS 30000
#define START_TIMEOUT_MAX_MS 600000

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

/* set_password's arguments for a VNC password, NULL when the VM has none; after
 * the QMP handshake, before `cont`: the password must not be on the command line. */
int vnc_password_args(struct sup *s, json_object **out, struct qv_err *e)
{
    *out = NULL;
    if (s->def.graphics.kind != GRAPHICS_VNC || !s->def.graphics.password_secret)
        return 0;
    _cleanup_free_ char *pw = NULL;
    int r = secret_read_value(s->paths, s->def.graphics.password_secret, &pw, e);
    if (r < 0)
        return r;
    json_object *a = json_object_new_object();
    json_object_object_add(a, "protocol", json_object_new_string("vnc"));
    json_object_object_add(a, "password", json_object_new_string(pw));
    explicit_bzero(pw, strlen(pw));
    *out = a;
    return 0;
}

void record_kvm(struct sup *s, json_object *kvm)
{
    json_object *en;
    bool on = json_object_object_get_ex(kvm, "enabled", &en) && json_object_get_boolean(en);
    snprintf(s->rs.accel, sizeof(s->rs.accel), "%s", on ? "kvm" : "tcg");
}

/* QVISOR_TEST_CRASH_AT=POINT kills the supervisor there, as a kill -9 would: the
 * lifecycle tests use it to prove that no crash point loses or doubles a QEMU.
 * QVISOR_TEST_STOP_AT=POINT stops it there (SIGSTOP) until a SIGCONT: a slow moment
 * made as long as a test needs. */
void sup_crash_point(const char *point)
{
    const char *at = getenv("QVISOR_TEST_CRASH_AT");
    if (at && strcmp(at, point) == 0)
        raise(SIGKILL);
    at = getenv("QVISOR_TEST_STOP_AT");
    if (at && strcmp(at, point) == 0)
        raise(SIGSTOP);
}

bool sup_fail_point(const char *point)
{
    const char *at = getenv("QVISOR_TEST_FAIL_AT");
    return at && strcmp(at, point) == 0;
}

/* Called between fork and everything else the child does (sandbox_spec.forked):
 * QEMU's pid and start time are on disk before it can touch a disk image. A
 * supervisor that cannot record its child does not start it. */
int sup_record_qemu(pid_t pid, void *opaque, struct qv_err *e)
{
    struct sup *s = opaque;
    sup_crash_point("fork");
    unsigned long long start;
    int r = proc_start_time(pid, &start);
    if (r < 0)
        return qv_failerr(e, r, "%s: reading the start time of QEMU pid %d", s->def.name, (int)pid);
    s->qemu_pid = pid;
    s->rs.qemu_pid = pid;
    s->rs.qemu_start = start;
    s->rs.started_at_ms = realtime_ms();
    tuning_new_qemu(s);
    char path[PATH_MAX], buf[32];
    snprintf(path, sizeof(path), "%s/pid", s->run_dir);
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)pid);
    if ((r = write_file_atomic(path, buf, (size_t)n, 0644, e)) < 0 ||
        (r = runstate_write(s->paths, s->def.name, &s->rs, e)) < 0) {
        s->qemu_pid = s->rs.qemu_pid = 0;
        return qv_prefix(e, "%s: QEMU not started, its pid could not be recorded: ", s->def.name);
    }
    sup_crash_point("recorded");
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

/* ---- a start, step by step in the loop ---------------------------------------------- */

void start_failed(struct sup *s, const struct qv_err *err, const char *step)
{
    if (s->start.failed)
        return;     /* the first failure is the story */
    s->start.failed = true;
    s->start.err = *err;
    if (step)
        qv_prefix(&s->start.err, "%s: ", step);
}

/* The guest runs, or is paused as asked: `start` (or the unit) may return now. */
static void started(struct sup *s, bool paused)
{
    s->start.phase = START_IDLE;
    /* paused in prelaunch, it never ran: a successor must not `cont` it (the recorded
     * state says paused), and a stop there is a kill */
    s->never_ran = paused && !s->start.load[0] && !s->start.restored;
    sup_log(s, "QEMU %s %s as pid %d (accel %s)", s->rs.qemu_version, paused ? "paused" : "running",
            (int)s->qemu_pid, s->rs.accel);
    sup_set_state(s, paused ? VM_PAUSED : VM_RUNNING);
    migstore_in_started(s, paused);     /* a migration's source hears that the guest is here */
    report_ready(s, 0, NULL);
    notify_send(&s->notify, "READY=1");
    sup_trim_heap();
}

static void on_cont(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    (void)ret;
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    if (err)
        start_failed(s, err, "cont");
    else
        started(s, false);
}

static void on_query_kvm(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    if (!err)
        record_kvm(s, ret);     /* an old QEMU without it: the accel stays unknown */
}

static void on_query_kvm_paused(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    on_query_kvm(ctx, ret, err);
    if (s->start.phase == START_QMP && !s->start.failed)
        started(s, true);
}

/* Set-up done: query-kvm and `cont` go out together (QEMU answers in order); a
 * paused start ends with query-kvm's answer. */
static void send_cont(struct sup *s, bool paused)
{
    sup_crash_point("before-cont");
    struct qv_err e = {0};
    if (qmp_send(s->qmp, "query-kvm", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, paused ? on_query_kvm_paused : on_query_kvm,
                 s) < 0 ||
        (!paused && qmp_send(s->qmp, "cont", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_cont, s) < 0)) {
        qv_fail(&e, -ECONNRESET, "the QMP connection is closed");
        start_failed(s, &e, "cont");
    }
}

void start_wishes(struct sup *s, const char *load_snapshot, bool paused)
{
    s->start.paused = paused;
    snprintf(s->start.load, sizeof(s->start.load), "%s", load_snapshot ? load_snapshot : "");
}

int start_begin_restore(struct sup *s, const char *file, bool remove, struct qv_err *e)
{
    /* checked before anything runs: a state that does not fit fails the start at once */
    _cleanup_json_ json_object *header = NULL;
    _cleanup_vm_def_ struct vm_def saved = {0};
    off_t off;
    int fd;
    int r = savefile_open(file, &header, &saved, &off, &fd, e);
    if (r < 0)
        return r;
    close(fd);
    int vcpus;
    if ((r = savefile_check_definition(file, &saved, &s->def, e)) < 0 ||
        (r = savefile_vcpus(file, header, &s->def, &vcpus, e)) < 0)
        return r;
    snprintf(s->start.incoming, sizeof(s->start.incoming), "%s", file);
    if ((r = start_begin(s, false, e)) < 0) {
        s->start.incoming[0] = '\0';
        return r;
    }
    s->start.incoming_remove = remove;
    return 0;
}

void start_after_load(struct sup *s, bool paused)
{
    if (s->start.phase == START_QMP && !s->start.failed)
        send_cont(s, paused);
}

/* QEMU is set up: a snapshot to resume from is loaded first (its job's end goes on
 * with start_after_load), else `cont`, unless the start was asked to stay paused. */
static void setup_continue(struct sup *s)
{
    struct qv_err e = {0};
    if (s->start.incoming[0] && !s->start.restored) {
        if (migrate_incoming_begin(s, &e) < 0)
            start_failed(s, &e, NULL);
    } else if (!s->start.load[0])
        send_cont(s, s->start.paused);
    else if (snapshot_start_load(s, s->start.load, s->start.paused, &e) < 0)
        start_failed(s, &e, NULL);
}

static void on_query_cpus(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    struct qv_err e = {0};
    if (err)
        start_failed(s, err, "cpu.pinning: query-cpus-fast");
    else if (pinning_apply(s, ret, &e) < 0)
        start_failed(s, &e, NULL);
    else
        setup_continue(s);
}

/* The vCPU threads exist in prelaunch: pinned before any guest code runs. */
static void setup_done(struct sup *s)
{
    if (!pinning_wanted(&s->def)) {
        setup_continue(s);
        return;
    }
    if (qmp_send(s->qmp, "query-cpus-fast", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_query_cpus, s) < 0) {
        struct qv_err e = {0};
        qv_fail(&e, -ECONNRESET, "the QMP connection is closed");
        start_failed(s, &e, "cpu.pinning");
    }
}

static void on_set_password(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    (void)ret;
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    if (err)
        start_failed(s, err, "setting the VNC password");
    else
        setup_done(s);
}

static void on_handshake(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    (void)ret;
    s->start.stall_check_at = 0;
    if (s->start.phase != START_QMP || s->start.failed)
        return;
    if (err) {
        start_failed(s, err, NULL);
        return;
    }
    snprintf(s->rs.qemu_version, sizeof(s->rs.qemu_version), "%s", qmp_qemu_version(s->qmp));
    struct qv_err e = {0};
    json_object *pw = NULL;
    if (console_connect(s, &e) < 0 || vnc_password_args(s, &pw, &e) < 0) {
        start_failed(s, &e, NULL);
        return;
    }
    if (!pw) {
        setup_done(s);
    } else if (qmp_send(s->qmp, "set_password", pw, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_set_password, s) < 0) {
        qv_fail(&e, -ECONNRESET, "the QMP connection is closed");
        start_failed(s, &e, "setting the VNC password");
    }
}

static int stall_ms(void)
{
    const char *v = getenv("QVISOR_TEST_START_STALL_MS");
    int ms = v ? atoi(v) : 0;
    return ms > 0 ? ms : START_STALL_MS;
}

/* CPU ticks of QEMU and the VM's virtiofsds together: a process that is gone or
 * unreadable adds nothing. */
static unsigned long long start_cpu_ticks(struct sup *s)
{
    unsigned long long sum = 0, t;
    if (s->qemu_pid && proc_cpu_ticks(s->qemu_pid, &t) == 0)
        sum += t;
    for (size_t i = 0; i < s->def.nfilesystems && i < VM_MAX_FILESYSTEMS; i++)
        if (s->fs[i].pid && proc_cpu_ticks(s->fs[i].pid, &t) == 0)
            sum += t;
    return sum;
}

/* No greeting yet: go on waiting while QEMU or a virtiofsd works, else fail. */
static void stall_check(struct sup *s, uint64_t now)
{
    struct start_job *j = &s->start;
    unsigned long long cpu = start_cpu_ticks(s);
    unsigned waited = (unsigned)((now - j->qmp_since + 500) / 1000);
    struct qv_err e = {0};
    if (cpu == j->cpu_seen) {
        j->stall_check_at = 0;
        qv_fail(&e, -ETIMEDOUT, "QEMU's monitor did not answer within %u s, and QEMU%s used no CPU in the last %d s: "
                "it hangs (its log may say why)", waited, s->def.nfilesystems ? " and its virtiofsd" : "",
                (stall_ms() + 999) / 1000);
        start_failed(s, &e, NULL);
    } else if (now - j->qmp_since >= START_TIMEOUT_MAX_MS) {
        j->stall_check_at = 0;
        qv_fail(&e, -ETIMEDOUT, "QEMU's monitor did not answer within %u s while QEMU kept working: given up",
                waited);
        start_failed(s, &e, NULL);
    } else {
        sup_log(s, "QEMU's monitor has not answered after %u s; QEMU%s still working (CPU time grows): waiting on",
                waited, s->def.nfilesystems ? " or its virtiofsd is" : " is");
        j->cpu_seen = cpu;
        j->stall_check_at = now + (uint64_t)stall_ms();
    }
}

/* QEMU's QMP socket was bound and is listening before QEMU ran, so the connect
 * is immediate; the greeting and capabilities come back through the loop. */
static int qmp_begin(struct sup *s, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/qmp.sock", s->run_dir);
    int fd;
    int r = unix_connect(path, &fd, e);
    if (r < 0)
        return r;
    s->qmp = qmp_new(fd, QMP_MONITOR, sup_on_event, s);
    if (!s->qmp)
        return qv_failerr(e, -errno, "%s", path);
    if ((r = qmp_handshake(s->qmp, START_TIMEOUT_MAX_MS + 60000, on_handshake, s)) < 0)
        return qv_failerr(e, r, "%s: QMP handshake", path);
    s->start.qmp_since = monotonic_ms();
    s->start.cpu_seen = start_cpu_ticks(s);
    s->start.stall_check_at = s->start.qmp_since + (uint64_t)stall_ms();
    sup_epoll_add(s, qmp_fd(s->qmp), qmp_poll_events(s->qmp), &s->ev_qmp);
    return 0;
}

/* QVISOR_TEST_HOLD_QEMU stops QEMU right after exec, before its monitor can answer:
 * the tests use it to hold a start open and prove the loop serves meanwhile. */
static void hold_point(struct sup *s)
{
    if (getenv("QVISOR_TEST_HOLD_QEMU")) {
        sup_log(s, "test: holding QEMU pid %d (SIGSTOP)", (int)s->qemu_pid);
        kill(s->qemu_pid, SIGSTOP);
    }
}

/* Every autostart network is up: open what QEMU needs, fork, confine, exec. */
static int spawn_qemu(struct sup *s, struct qv_err *e)
{
    struct launch_plan plan;
    if (!s->facts.now_pinned)
        host_facts_set_now(&s->facts, time(NULL));  /* clock.adjustment and localtime count from this start */
    int r = build_launch_plan(&s->def, &s->facts, &plan, e);
    if (r < 0)
        return r;
    if ((r = confine_prepare(s, &plan, e)) < 0) {
        launch_plan_free(&plan);
        return r;
    }
    disk_tops_reset(s);
    sup_save_state(s);
    struct launch_ctx ctx = {.paths = s->paths, .facts = &s->facts, .run_dir = s->run_dir, .open_tap = vmnet_open_tap,
                             .open_fs = virtiofs_open, .open_tpm = tpm_open, .open_usb = hostdev_usb_open, .opaque = s, .overlays_made = true,
                             .work_dir = s->work_dir[0] ? s->work_dir : NULL,
                             .seed_iso = s->start.seed_built ? s->start.seed_iso : NULL,
                             .open_credential = credential_memfd, .qemu_uid = s->conf.uid, .qemu_gid = s->conf.gid};
    if (s->start.incoming[0]) {
        strv_push(&plan.argv, "-incoming");
        strv_push(&plan.argv, "defer");
    }
    int fds[PLAN_MAX_FDS];
    r = launch_open_resources(&plan, &s->def, &ctx, fds, e);
    if (s->start.seed_built)
        seed_remove(s);     /* QEMU gets the open ISO; nothing of the user-data stays on disk */
    if (r < 0) {
        launch_plan_free(&plan);
        return r;
    }
    s->start.log_from = lseek(s->log_fd, 0, SEEK_END);
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
    hold_point(s);
    s->start.phase = START_QMP;
    if ((r = qmp_begin(s, e)) < 0)
        start_failed(s, e, NULL);     /* QEMU runs: wound up by the loop like any later failure */
    return 0;
}

/* What QEMU needs made first, one watched child at a time: the autostart networks
 * of the NICs, then the throw-away overlays of snapshot disks; then QEMU itself. */
static int start_next(struct sup *s, struct qv_err *e)
{
    struct start_job *j = &s->start;
    for (size_t i = 0; i < s->def.nnics; i++) {
        char net[72];
        int r = vmnet_needs_start(s, &s->def.nics[i], net, sizeof(net), e);
        if (r < 0)
            return qv_prefix(e, "nic%zu: ", i);
        if (!net[0])
            continue;
        if ((r = net_starter_begin(s, &j->net, net, e)) < 0)
            return r;
        sup_log(s, "starting network %s (autostart)", net);
        return 0;
    }
    for (; j->overlay_disk < s->def.ndisks; j->overlay_disk++) {
        if (!s->def.disks[j->overlay_disk].snapshot)
            continue;
        const char *argv[LAUNCH_OVERLAY_ARGV];
        int r = launch_overlay_cmd(s->paths, s->work_dir[0] ? s->work_dir : NULL, &s->def, j->overlay_disk,
                                   j->overlay_path, argv, e);
        if (r == 0)
            r = sup_child_spawn(&j->overlay, argv, LAUNCH_OVERLAY_TIMEOUT_MS, e);
        if (r == 0)
            sup_log(s, "disk%zu: making its throw-away overlay", j->overlay_disk);
        return r < 0 ? qv_prefix(e, "disk %s: throw-away overlay: ", s->def.disks[j->overlay_disk].file) : 0;
    }
    if (s->def.cloud_init.user_data && !j->seed_built)
        return seed_begin(s, &j->seed, j->seed_iso, e);
    /* an incoming state brings the TPM's own (QEMU migrates swtpm's state) */
    if (s->def.tpm != TPM_NONE && !j->tpm_checked && !j->incoming[0]) {
        j->tpm_checked = true;
        int r = tpm_setup_begin(s, &j->tpm_setup, e);
        if (r != 0)
            return r < 0 ? r : 0;
    }
    return spawn_qemu(s, e);
}

int start_begin(struct sup *s, bool restart, struct qv_err *e)
{
    /* volumes and chains as they are now: a restart sees a volume grown or replaced */
    int r = vm_resolve_disks(s->paths, &s->def, e);
    if (r < 0)
        return r;
    struct launch_plan plan;
    if ((r = build_launch_plan(&s->def, &s->facts, &plan, e)) < 0)     /* a definition QEMU cannot run fails here */
        return r;
    launch_plan_free(&plan);
    /* a secret that cannot be read fails the start before anything runs (read again, and
     * handed over, after the handshake) */
    json_object *pw = NULL;
    if ((r = vnc_password_args(s, &pw, e)) < 0)
        return r;
    json_object_put(pw);
    /* a first start's saved state to restore (start_begin_restore) stays; a restart boots */
    char incoming[PATH_MAX];
    snprintf(incoming, sizeof(incoming), "%s", restart ? "" : s->start.incoming);
    s->start = (struct start_job){.restart = restart, .net.child.out = -1, .overlay.out = -1, .seed.out = -1,
                               .tpm_setup.out = -1};
    memcpy(s->start.incoming, incoming, sizeof(incoming));
    s->expected_exit = false;
    s->exit_reason[0] = '\0';
    s->stop.phase = 0;
    s->rs.state = VM_STARTING;
    s->never_ran = true;
    s->rs.supervisor_pid = getpid();
    s->rs.exiting = false;
    s->rs.qemu_pid = 0;
    s->rs.last_exit[0] = '\0';
    memcpy(s->rs.uuid, s->def.uuid, sizeof(s->rs.uuid));
    sup_save_state(s);
    sup_crash_point("disks-resolved");     /* the chains were checked; their files are opened later */
    s->start.phase = START_PREPARE;
    if ((r = start_next(s, e)) < 0)
        s->start.phase = START_IDLE;
    return r;
}

void start_child_exited(struct sup *s)
{
    struct start_job *j = &s->start;
    struct qv_err e = {0};
    int r = 0, status;
    char out[2048];
    if (j->phase != START_PREPARE)
        return;
    if (net_starter_reap(s, &j->net, &r, &e)) {
        /* r says how the network start went */
    } else if (sup_child_reap(&j->overlay, &status, out, sizeof(out))) {
        if (status != 0)
            r = launch_overlay_failed(&s->def.disks[j->overlay_disk], j->overlay_path, status, out, &e);
        j->overlay_disk++;
    } else if (sup_child_reap(&j->seed, &status, out, sizeof(out))) {
        r = seed_done(s, status, out, &e);
        j->seed_built = true;
    } else if (sup_child_reap(&j->tpm_setup, &status, out, sizeof(out))) {
        r = tpm_setup_done(s, status, out, &e);
    } else {
        return;
    }
    if (j->failed)
        return;     /* cancelled meanwhile */
    if (r < 0 || (r = start_next(s, &e)) < 0)
        start_failed(s, &e, NULL);
}

uint64_t start_next_deadline(struct sup *s)
{
    if (s->start.phase == START_QMP && !s->start.failed)
        return s->start.stall_check_at;
    if (s->start.phase != START_PREPARE)
        return 0;
    return s->start.net.child.pid  ? s->start.net.child.deadline
         : s->start.seed.pid       ? s->start.seed.deadline
         : s->start.tpm_setup.pid  ? s->start.tpm_setup.deadline
                                   : s->start.overlay.deadline;
}

void start_expire(struct sup *s, uint64_t now)
{
    if (s->start.phase == START_QMP && !s->start.failed && s->start.stall_check_at && now >= s->start.stall_check_at)
        stall_check(s, now);
    if (s->start.phase == START_PREPARE) {
        net_starter_expire(&s->start.net, now);
        sup_child_expire(&s->start.overlay, now);
        sup_child_expire(&s->start.seed, now);
        sup_child_expire(&s->start.tpm_setup, now);
    }
}

void start_cancel(struct sup *s, const char *why)
{
    struct qv_err e = {0};
    qv_fail(&e, -ECANCELED, "%s before it ran", why);
    s->start.cancelled = true;
    s->expected_exit = true;
    start_failed(s, &e, NULL);
}

bool start_qemu_gone(struct sup *s)
{
    if (s->start.phase != START_QMP)
        return false;
    siginfo_t si = {0};
    /* WNOWAIT: start_wind_up reaps it, with its exit status */
    if (s->qemu_is_child && waitid(P_PID, (id_t)s->qemu_pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && !si.si_pid)
        return true;    /* not gone: a SIGCHLD for someone else */
    struct qv_err e = {0};
    qv_fail(&e, -EIO, "QEMU exited");
    start_failed(s, &e, NULL);
    return true;
}

void start_wind_up(struct sup *s)
{
    struct start_job *j = &s->start;
    net_starter_abort(&j->net);
    migrate_incoming_close(s);
    sup_child_abort(&j->overlay);
    sup_child_abort(&j->seed);
    sup_child_abort(&j->tpm_setup);
    seed_remove(s);
    char msg[900] = "";
    if (s->qemu_pid) {
        kill(s->qemu_pid, SIGKILL);
        if (s->qemu_is_child)
            waitpid(s->qemu_pid, NULL, 0);     /* SIGKILLed: the kernel's teardown, not QEMU's will */
        if (s->pidfd >= 0) {
            epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->pidfd, NULL);
            close(s->pidfd);
            s->pidfd = -1;
        }
        qemu_message(s, j->log_from, msg, sizeof(msg));
    }
    if (s->qmp) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, qmp_fd(s->qmp), NULL);
        qmp_free(s->qmp);
        s->qmp = NULL;
    }
    console_close(s);
    s->qemu_pid = s->rs.qemu_pid = 0;
    /* an OOM kill shows only as a broken QMP connection: name the cause. QEMU's own
     * words tell the story when QEMU went away (it exited, or its monitor closed);
     * when the supervisor gave up on it (a timeout, a file swapped, a secret it could
     * not read) that reason stays first, and what QEMU printed follows. */
    bool qemu_left = j->err.code == -EIO || j->err.code == -ECONNRESET;
    if (!j->cancelled && confine_oom_error(s, &j->err) == 0 && msg[0]) {
        if (qemu_left)
            qv_fail(&j->err, -EIO, "%s", msg);
        else
            snprintf(j->err.msg + strlen(j->err.msg), sizeof(j->err.msg) - strlen(j->err.msg), " (QEMU said: %s)",
                     msg);
    }
    if (!j->cancelled)
        qv_prefix(&j->err, "%s: QEMU failed to start: ", s->def.name);
    migstore_in_wind_up(s, j->err.msg);     /* the source hears why; the images made for it go */
    j->phase = START_IDLE;
    j->failed = false;
    confine_after_exit(s);
    virtiofs_after_exit(s);
    tpm_after_exit(s);
    vmnet_after_exit(s);
    remove_run_files(s);
    if (s->def.transient)
        vm_transient_forget(s->paths, s->def.name);     /* gone when the CLI hears of the failure */
    ctl_stop_done(s, true, NULL);
    snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", j->err.msg);
    sup_log(s, "%s failed: %s", j->restart ? "restart" : "start", j->err.msg);
    sup_set_state(s, j->cancelled ? VM_SHUTOFF : j->restart ? VM_CRASHED : VM_SHUTOFF);
    report_ready(s, j->err.code ? j->err.code : -EIO, j->err.msg);
    sup_crash_point("start-failure-reported");     /* tests: the supervisor on its way out */
    s->exit_code = j->cancelled ? 0 : 1;
    s->done = true;
}
