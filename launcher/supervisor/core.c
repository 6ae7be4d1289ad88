/* `qvisor run NAME`: one supervisor per VM. It takes the VM's lock, starts QEMU
 * paused with every resource passed as an fd, finishes set-up over QMP, sends
 * `cont`, and then owns the only QMP connection for the VM's whole life: it applies
 * on_poweroff/on_reboot/on_crash, answers the control socket, writes the log and
 * state.json. If it dies, QEMU runs on; the next `run` finds it and carries on.
 * This is the core: the loop, set-up and tear-down; what happens to the guest
 * (events, policies, stopping, QEMU's exit) is in lifecycle.c. */
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"


int sup_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

void sup_log(struct sup *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qv_logv_echo(s->log_fd, s->echo_fd, "supervisor", s->def.name ? s->def.name : "qvisor", fmt, ap);
    va_end(ap);
}

void sup_save_state(struct sup *s)
{
    struct qv_err e = {0};
    /* A full /run must never take the VM down with it: log and carry on. */
    if (runstate_write(s->paths, s->def.name, &s->rs, &e) < 0)
        sup_log(s, "warning: cannot record state: %s", e.msg);
}

void sup_trim_heap(void)
{
    malloc_trim(0);
}

void sup_set_state(struct sup *s, enum vm_state st)
{
    if (s->rs.state == st)
        return;
    if (st != VM_PAUSED)
        s->rs.state_reason[0] = '\0';
    sup_log(s, "state: %s -> %s%s%s", vm_state_names[s->rs.state], vm_state_names[st],
            s->rs.state_reason[0] ? ": " : "", s->rs.state_reason);
    s->rs.state = st;
    sup_save_state(s);
    char status[64];
    snprintf(status, sizeof(status), "STATUS=%s", vm_state_names[st]);
    notify_send(&s->notify, status);
    json_object *data = json_object_new_object();
    json_object_object_add(data, "state", json_object_new_string(vm_state_names[st]));
    ctl_broadcast_event(s, "QVISOR_STATE", data, realtime_ms() * 1000);
    json_object_put(data);
}

void sup_epoll_add(struct sup *s, int fd, uint32_t events, struct ev *ev)
{
    struct epoll_event ee = {.events = events, .data.ptr = ev};
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ee) < 0)
        sup_log(s, "warning: epoll_ctl add fd %d: %s", fd, strerror(errno));
}

static void epoll_mod(struct sup *s, int fd, uint32_t events, struct ev *ev)
{
    struct epoll_event ee = {.events = events, .data.ptr = ev};
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, fd, &ee);
}

/* ---- status ---- */

json_object *sup_status_json(struct sup *s)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(s->def.name));
    json_object_object_add(o, "uuid", json_object_new_string(s->def.uuid));
    json_object_object_add(o, "state", json_object_new_string(vm_state_names[s->rs.state]));
    if (s->rs.state_reason[0])
        json_object_object_add(o, "state_reason", json_object_new_string(s->rs.state_reason));
    json_object_object_add(o, "supervisor_pid", json_object_new_int(getpid()));
    if (s->qemu_pid) {
        json_object_object_add(o, "pid", json_object_new_int(s->qemu_pid));
        uint64_t up = (realtime_ms() - s->rs.started_at_ms) / 1000;
        json_object_object_add(o, "uptime_s", json_object_new_int64((int64_t)up));
    }
    json_object_object_add(o, "vcpus", json_object_new_int(s->tune.vcpus ? s->tune.vcpus : s->def.cpu.count));
    if (s->def.cpu.max)
        json_object_object_add(o, "vcpus_max", json_object_new_int(s->def.cpu.max));
    char mem[32];
    format_size(s->def.memory.bytes, mem, sizeof(mem));
    json_object_object_add(o, "memory", json_object_new_string(mem));
    json_object *balloon = s->qemu_pid ? tuning_status_json(s) : NULL;
    if (balloon)
        json_object_object_add(o, "balloon", balloon);
    json_object_object_add(o, "accel", json_object_new_string(s->rs.accel));
    json_object_object_add(o, "qemu_version", json_object_new_string(s->rs.qemu_version));
    json_object_object_add(o, "last_exit", json_object_new_string(s->rs.last_exit));
    json_object *jobs = sup_jobs_json(s);
    if (jobs)
        json_object_object_add(o, "jobs", jobs);
    json_object *mig = migrate_status_json(s);
    if (mig)
        json_object_object_add(o, "migration", mig);
    json_object *conf = confine_inspect(s);
    if (conf)
        json_object_object_add(o, "confinement", conf);
    json_object *fs = virtiofs_status_json(s);
    if (fs)
        json_object_object_add(o, "filesystems", fs);
    json_object *tpm = tpm_status_json(s);
    if (tpm)
        json_object_object_add(o, "tpm", tpm);
    json_object *media = s->qemu_pid ? media_status_json(s) : NULL;
    if (media)
        json_object_object_add(o, "cdroms", media);
    return o;
}

/* ---- the `qvisor boot` that started this VM ---- */

static void boot_detach(struct sup *s)
{
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->boot_fd, NULL);
    close(s->boot_fd);
    s->boot_fd = -1;
}

static void boot_readable(struct sup *s)
{
    char buf[64];
    ssize_t n = read(s->boot_fd, buf, sizeof(buf));
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n > 0 && memmem(buf, (size_t)n, "keep\n", 5)) {
        sup_log(s, "qvisor boot keeps the VM (--keep-on-failure): it runs on without it");
        boot_detach(s);
        return;
    }
    if (n > 0)
        return;
    boot_detach(s);
    sup_log(s, "qvisor boot is gone: the VM goes with it");
    sup_kill(s, "qvisor boot ended");
}

/* The end, for boot: QEMU's exit status and whether the guest panicked. */
static void boot_report(struct sup *s)
{
    if (s->boot_fd < 0)
        return;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "status", s->qemu_status >= 0 ? json_object_new_int(s->qemu_status) : NULL);
    json_object_object_add(o, "panicked", json_object_new_boolean(s->panicked));
    json_object_object_add(o, "reason", json_object_new_string(s->rs.last_exit));
    size_t len;
    const char *txt = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN, &len);
    write_all(s->boot_fd, txt, len);
    write_all(s->boot_fd, "\n", 1);
    json_object_put(o);
}

static void remove_boot_run_dir(const char *dir)
{
    static const char *const files[] = {"state.json", "lock", "definition.json", NULL};
    for (int i = 0; files[i]; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* ---- the loop ---- */

static void signal_readable(struct sup *s)
{
    struct signalfd_siginfo si;
    while (read(s->sigfd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            sup_log(s, "received %s: stopping the VM", strsignal((int)si.ssi_signo));
            sup_begin_stop(s, false, s->stop_timeout_ms);
        } else if (si.ssi_signo == SIGCHLD) {
            /* one SIGCHLD may stand for several children: each is asked with WNOHANG */
            hotplug_child_exited(s);
            start_child_exited(s);
            block_child_exited(s);
            snapshots_child_exited(s);
            virtiofs_child_exited(s);
            tpm_child_exited(s);
            migrate_child_exited(s);
            migstore_in_child_exited(s);
            cluster_watch_child_exited(s);
            if (s->qemu_is_child && s->qemu_pid)
                sup_qemu_gone(s);
        }
    }
}

static void qmp_io(struct sup *s, uint32_t events)
{
    struct qv_err e = {0};
    int r = qmp_handle_io(s->qmp, events, &e);
    if (r < 0 && start_active(s)) {
        /* a start's monitor: start_wind_up ends it, and QEMU with it */
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, qmp_fd(s->qmp), NULL);
        start_failed(s, &e, NULL);
        return;
    }
    if (r < 0) {
        if (s->expected_exit)
            sup_log(s, "QMP connection closed: QEMU is exiting");
        else
            sup_log(s, "QMP connection lost: %s", e.msg);
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, qmp_fd(s->qmp), NULL);
        bool reconnecting = monitor_lost(s, s->qmp, e.msg);
        qmp_free(s->qmp);
        s->qmp = NULL;
        if (reconnecting)
            return;
        /* as Incus and systemd do: a monitor that drops without SHUTDOWN is one */
        json_object *data = json_object_new_object();
        json_object_object_add(data, "guest", json_object_new_boolean(false));
        json_object_object_add(data, "reason", json_object_new_string("disconnect"));
        ctl_broadcast_event(s, "SHUTDOWN", data, realtime_ms() * 1000);
        json_object_put(data);
        return;
    }
    epoll_mod(s, qmp_fd(s->qmp), qmp_poll_events(s->qmp), &s->ev_qmp);
}

/* ---- timers: each part says when it next needs the loop, and does its work then ---- */

static uint64_t qmp_timer_next(struct sup *s)
{
    return s->qmp ? qmp_next_deadline(s->qmp) : 0;
}

static void qmp_timer_expire(struct sup *s, uint64_t now)
{
    if (s->qmp)
        qmp_expire(s->qmp, now);
}

static uint64_t watchdog_next(struct sup *s)
{
    return s->notify.next_ping;
}

static void watchdog_expire(struct sup *s, uint64_t now)
{
    if (!s->notify.next_ping || now < s->notify.next_ping)
        return;
    notify_send(&s->notify, "WATCHDOG=1");
    s->notify.next_ping = now + s->notify.watchdog_ms;
}

/* In the order their work is done once due: QMP's timed-out commands first, a crashed
 * QEMU's restart last. */
static const struct sup_timer {
    uint64_t (*next)(struct sup *s);        /* 0: nothing planned */
    void (*expire)(struct sup *s, uint64_t now);
} timers[] = {
    {qmp_timer_next, qmp_timer_expire},
    {lifecycle_stop_next_deadline, lifecycle_stop_expire},
    {hotplug_next_deadline, hotplug_expire},
    {ctl_next_deadline, ctl_expire},
    {monitor_next_deadline, monitor_expire},
    {agent_next_deadline, agent_expire},
    {start_next_deadline, start_expire},
    {sup_jobs_next_deadline, sup_jobs_expire},
    {snapshots_next_deadline, snapshots_expire},
    {migrate_next_deadline, migrate_expire},
    {cluster_watch_next_deadline, cluster_watch_expire},
    {vmnet_next_deadline, vmnet_expire},
    {watchdog_next, watchdog_expire},
    {console_next_deadline, console_expire},
    {lifecycle_restart_next_deadline, lifecycle_restart_expire},
};

static int next_timeout(struct sup *s)
{
    uint64_t now = monotonic_ms(), next = 0;
    for (size_t i = 0; i < ARRAY_SIZE(timers); i++) {
        uint64_t t = timers[i].next(s);
        if (t && (!next || t < next))
            next = t;
    }
    if (!next)
        return -1;
    return next <= now ? 0 : (int)(next - now);
}

static void run_timers(struct sup *s)
{
    uint64_t now = monotonic_ms();
    for (size_t i = 0; i < ARRAY_SIZE(timers); i++)
        timers[i].expire(s, now);
}

static void loop(struct sup *s)
{
    while (!s->done) {
        struct epoll_event evs[16];
        int n = epoll_wait(s->epfd, evs, ARRAY_SIZE(evs), next_timeout(s));
        if (n < 0 && errno != EINTR) {
            sup_log(s, "epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n && !s->done; i++) {
            struct ev *ev = evs[i].data.ptr;
            switch (ev->kind) {
            case EV_QMP:
                if (s->qmp)
                    qmp_io(s, evs[i].events);
                break;
            case EV_CONSOLE:
                console_readable(s);
                break;
            case EV_CTL:
                ctl_accept(s);
                break;
            case EV_CLIENT:
                ctl_client_io(s, ev->client, evs[i].events);
                break;
            case EV_SIGNAL:
                signal_readable(s);
                break;
            case EV_PIDFD:
                sup_qemu_gone(s);
                break;
            case EV_AGENT:
                agent_io(s, evs[i].events);
                break;
            case EV_BOOT:
                boot_readable(s);
                break;
            case EV_MIGRATE:
                migrate_io(s, evs[i].events);
                break;
            case EV_MIGCTL:
                migstore_io(s, evs[i].events);
                break;
            case EV_MIGNBD:
                migstore_out_nbd_io(s);
                break;
            }
        }
        run_timers(s);
        if (s->start.failed)
            start_wind_up(s);
        ctl_reap_clients(s);
    }
}

/* ---- set-up and tear-down ---- */

void sup_log_path(const struct sup *s, char *out, size_t len)
{
    if (s->work_dir[0])
        snprintf(out, len, "%s/%s.log", s->work_dir, s->def.name);
    else
        qv_path(s->paths, out, len, QV_LOG "/%s.log", s->def.name);
}

static int open_log(struct sup *s, struct qv_err *e)
{
    char dir[PATH_MAX], path[PATH_MAX];
    if (s->work_dir[0])
        snprintf(dir, sizeof(dir), "%s", s->work_dir);
    else
        qv_path(s->paths, dir, sizeof(dir), QV_LOG);
    int r = mkdir_p(dir, s->work_dir[0] ? 0700 : 0755);
    if (r < 0)
        return qv_failerr(e, r, "%s", dir);
    sup_log_path(s, path, sizeof(path));
    s->log_fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);   /* read back for QEMU's last words */
    return s->log_fd < 0 ? qv_failerr(e, -errno, "%s", path) : 0;
}

static int setup_loop(struct sup *s, struct qv_err *e)
{
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0)
        return qv_failerr(e, -errno, "epoll_create1");
    signal(SIGPIPE, SIG_IGN);
    s->sigfd = signalfd_for(SIGTERM, SIGINT, SIGCHLD, 0);
    if (s->sigfd < 0)
        return qv_failerr(e, s->sigfd, "signalfd");
    sup_epoll_add(s, s->sigfd, EPOLLIN, &s->ev_signal);
    return ctl_listen(s, e);
}



static void sup_free(struct sup *s)
{
    agent_close(s);
    ctl_close(s);
    confine_release(s);
    snapshots_forget(s);
    migrate_forget(s);
    migstore_in_forget(s);
    migrate_incoming_close(s);
    for (int i = 0; i < HOTPLUG_MAX; i++)
        vm_nic_free(&s->hp[i].nic);
    block_forget(s);
    for (int i = 0; i < SUP_JOBS_MAX; i++) {
        if (s->jobs[i].data)
            json_object_put(s->jobs[i].data);
        if (s->jobs[i].result)
            json_object_put(s->jobs[i].result);
    }
    media_forget_all(s);
    if (s->nft)
        netsetup_nft_close(s->nft);
    strv_free(&s->conf.cluster_addrs);
    if (s->qmp)
        qmp_free(s->qmp);
    console_free(s);
    if (s->pidfd >= 0)
        close(s->pidfd);
    if (s->sigfd >= 0)
        close(s->sigfd);
    if (s->epfd >= 0)
        close(s->epfd);
    notify_close(&s->notify);
    runstate_free(&s->rs);
    host_config_free(&s->hc);
    vm_def_free(&s->def);
    if (s->log_fd >= 0)
        close(s->log_fd);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    if (s->boot_fd >= 0)
        close(s->boot_fd);
    ctl_free(s);
    monitor_free(s);
}


/* The supervisor's state, zeroed, in pages of its own: most of it (hotplug slots,
 * NIC slots, host facts) is only ever read while empty, and pages never written stay
 * the kernel's shared zero page instead of resident memory. calloc from the heap
 * clears reused memory, which makes all ~112 KiB resident. Every descriptor starts
 * as -1 (not 0: sup_free would close stdin). */
static struct sup *sup_alloc(const struct qv_paths *paths)
{
    struct sup *s = mmap(NULL, sizeof(struct sup), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED)
        abort();
    s->paths = paths;
    s->lock_fd = s->log_fd = s->epfd = s->sigfd = s->pidfd = s->ready_fd = s->echo_fd = s->boot_fd = -1;
    s->conf.lease.lock_fd = s->conf.lease.hold_fd = -1;
    s->qemu_status = -1;
    s->ev_qmp.kind = EV_QMP;
    s->ev_signal.kind = EV_SIGNAL;
    s->ev_pidfd.kind = EV_PIDFD;
    s->ev_boot.kind = EV_BOOT;
    s->ctl = ctl_new();
    s->con = console_new();
    s->mon = monitor_new();
    notify_init(&s->notify);
    return s;
}

static void sup_release(struct sup *s)
{
    munmap(s, sizeof(*s));
}

/* migrate-incoming's one-time token (the one given, else 128 random bits) and its
 * bound on the wait for a source. The token tells two waiting destinations apart; it
 * authenticates nothing (TLS does that). */
static void incoming_identity(struct sup *sp, const struct sup_opts *o)
{
    sp->mig_in.wait_ms = o->incoming_timeout_ms > 0 ? (uint64_t)o->incoming_timeout_ms : SUP_INCOMING_WAIT_MS;
    if (o->incoming_token && *o->incoming_token) {
        snprintf(sp->mig_in.token, sizeof(sp->mig_in.token), "%s", o->incoming_token);
        return;
    }
    unsigned char raw[16];
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
        uint64_t t = monotonic_ms() ^ ((uint64_t)getpid() << 32);
        memcpy(raw, &t, sizeof(t));
        memcpy(raw + 8, &sp, sizeof(sp) < 8 ? sizeof(sp) : 8);
    }
    for (size_t i = 0; i < sizeof(raw); i++)
        snprintf(sp->mig_in.token + 2 * i, 3, "%02x", raw[i]);
}

int supervisor_run(const struct qv_paths *paths, struct vm_def *def, const struct sup_opts *o, struct qv_err *e)
{
    char name[80];
    snprintf(name, sizeof(name), "%s", def->name);
    /* not on the stack: the structure is large, and a stack that deep stays resident */
    struct sup *sp = sup_alloc(paths);
    sp->ready_fd = o->ready_fd;
    sp->echo_fd = o->echo_fd;
    sp->boot_fd = o->boot_fd;
    sp->boot_vm = o->boot_fd >= 0;
    if (sp->boot_vm)
        vm_boot_dir(paths, name, NULL, sp->work_dir, sizeof(sp->work_dir));
    sp->stop_timeout_ms = o->stop_timeout_ms > 0 ? o->stop_timeout_ms : 60000;
    pid_t holder;
    char unit[256], own[128];
    snprintf(own, sizeof(own), "qvisor@%s.service", name);
    sp->own_unit = !paths->root[0] && proc_systemd_unit(0, unit, sizeof(unit)) == 0 && strcmp(unit, own) == 0;
    /* the definition is ours now, whatever happens */
    sp->def = *def;
    memset(def, 0, sizeof(*def));
    int r = vm_lock(paths, name, &sp->lock_fd, &holder, e);
    if (r == 0)
        r = open_log(sp, e);
    if (r == 0)
        r = host_config_load(paths, &sp->hc, e);
    if (r == 0) {
        vm_run_path(paths, name, NULL, sp->run_dir, sizeof(sp->run_dir));
        r = setup_loop(sp, e);
    }
    if (r == 0)
        r = host_facts_probe(paths, &sp->hc, &sp->facts, e);
    if (r == 0 && sp->boot_fd >= 0)
        sup_epoll_add(sp, sp->boot_fd, EPOLLIN, &sp->ev_boot);
    if (r < 0) {
        sup_free(sp);
        report_ready(sp, r, e->msg);    /* after the lock is released: a retry must not meet us */
        sup_release(sp);
        return r;
    }
    _cleanup_runstate_ struct vm_runstate prev = {0};
    bool have_prev = runstate_read(paths, name, &prev, NULL) == 0;
    bool take_over = find_previous(sp, &prev, have_prev);
    if (take_over) {
        sp->rs = prev;
        prev.resources = NULL;
        r = reattach(sp, !o->attach_only, e);
    } else if (o->attach_only) {
        if (have_prev)
            cleanup_previous(sp, &prev);
        r = qv_fail(e, -ESRCH, "%s is not running", name);
    } else {
        if (have_prev)
            cleanup_previous(sp, &prev);
        if (o->incoming_tls)
            snprintf(sp->mig_in.tls_dir, sizeof(sp->mig_in.tls_dir), "%s", o->incoming_tls);
        if (o->incoming_listen)
            incoming_identity(sp, o);
        sp->mig_in.postcopy = o->incoming_listen && o->incoming_postcopy;
        r = o->incoming_listen ? start_begin_incoming(sp, o->incoming_listen, o->incoming_copy_storage, e)
          : o->restore_file    ? start_begin_restore(sp, o->restore_file, o->restore_remove, e)
                               : start_begin(sp, false, e);
        if (r == 0)
            start_wishes(sp, o->load_snapshot, o->paused);
    }
    if (r < 0) {
        sup_log(sp, "%s failed: %s", take_over ? "taking over" : "start", e->msg);
        if (take_over) {
            /* a QEMU we could not take over keeps running, its files and state as they
             * are: the next start finds it again */
            sp->qemu_pid = 0;
        } else {
            snprintf(sp->rs.last_exit, sizeof(sp->rs.last_exit), "%s", e->msg);
            sp->rs.state = VM_SHUTOFF;
            sp->rs.qemu_pid = 0;
            sup_save_state(sp);
            if (sp->qemu_pid)
                kill(sp->qemu_pid, SIGKILL);
            virtiofs_after_exit(sp);
            tpm_after_exit(sp);
            vmnet_after_exit(sp);
            remove_run_files(sp);
            if (sp->def.transient)
                vm_transient_forget(paths, name);
        }
        bool boot_vm = sp->boot_vm && !take_over;
        sup_free(sp);
        if (boot_vm)
            vm_uid_leases_forget(paths, name);     /* released by sup_free */
        report_ready(sp, r, e->msg);
        sup_release(sp);
        return r;
    }
    if (!start_active(sp)) {
        report_ready(sp, 0, NULL);
        notify_send(&sp->notify, "READY=1");
        sup_trim_heap();
    }
    loop(sp);
    if (sp->rs.exiting) {
        /* Answered and recorded: only a next start waits on what is left, for as long
         * as the lock is held. "exiting" stays recorded until then and after (cleaning
         * up again is harmless): a state without it under our lock would say "running". */
        ctl_close(sp);
        sup_crash_point("exiting");
        sup_release_qemu(sp);
    }
    sup_save_state(sp);
    if (sp->def.transient && !sp->qemu_pid)
        vm_transient_forget(paths, name);   /* a transient VM ends with its QEMU */
    boot_report(sp);
    int r2 = 0;
    if (sp->exit_code && sp->start.err.msg[0] && !sp->start.restart) {
        *e = sp->start.err;     /* the first start failed: its own words */
        r2 = e->code ? e->code : -EIO;
    } else if (sp->exit_code) {
        r2 = qv_fail(e, -EIO, "%s: %s", name, sp->rs.last_exit[0] ? sp->rs.last_exit : "stopped abnormally");
    }
    bool boot_gone = sp->boot_vm && !sp->qemu_pid;
    char run_dir[PATH_MAX];
    snprintf(run_dir, sizeof(run_dir), "%s", sp->run_dir);
    sup_free(sp);
    sup_release(sp);
    if (boot_gone) {
        /* a boot VM leaves nothing (its lock and uid lease are released now); its
         * private directory is boot's to remove or keep */
        remove_boot_run_dir(run_dir);
        vm_uid_leases_forget(paths, name);
    }
    return r2;
}

/* ---- for unit tests only ---- */

struct sup *sup_new_for_test(const struct qv_paths *paths, const char *name, int qmp_fd, pid_t qemu_pid,
                             struct qv_err *e)
{
    struct sup *s = sup_alloc(paths);
    s->def.name = qv_xstrdup(name);
    s->def.console = CONSOLE_NONE;
    vm_run_path(paths, name, NULL, s->run_dir, sizeof(s->run_dir));
    int r = mkdir_p(s->run_dir, 0755);
    if (r == 0 && (s->epfd = epoll_create1(EPOLL_CLOEXEC)) < 0)
        r = -errno;
    if (r < 0) {
        qv_failerr(e, r, "%s: test supervisor", s->run_dir);
        if (qmp_fd >= 0)
            close(qmp_fd);
        sup_free(s);
        sup_release(s);
        return NULL;
    }
    if (qmp_fd >= 0) {
        s->qmp = qmp_new(qmp_fd, QMP_MONITOR, sup_on_event, s);
        sup_epoll_add(s, qmp_fd, qmp_poll_events(s->qmp), &s->ev_qmp);
    }
    if (qemu_pid > 0) {
        s->qemu_pid = s->rs.qemu_pid = qemu_pid;
        s->qemu_is_child = true;
        s->rs.started_at_ms = realtime_ms();
        s->pidfd = sup_pidfd_open(qemu_pid);
    }
    s->rs.state = VM_RUNNING;
    return s;
}

void sup_free_for_test(struct sup *s)
{
    if (!s)
        return;
    sup_free(s);
    sup_release(s);
}

void sup_test_run_timers(struct sup *s)
{
    run_timers(s);
}

void sup_test_qemu_gone(struct sup *s)
{
    sup_qemu_gone(s);
}
