/* `qvisor run NAME`: one supervisor per VM. It takes the VM's lock, starts QEMU
 * paused with every resource passed as an fd, finishes set-up over QMP, sends
 * `cont`, and then owns the only QMP connection for the VM's whole life: it applies
 * on_poweroff/on_reboot/on_crash, answers the control socket, writes the log and
 * state.json. If it dies, QEMU runs on; the next `run` finds it and carries on. */
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"

#define POWERDOWN_AGAIN_MS 500
#define QUIT_GRACE_MS 2000
#define TERM_GRACE_MS 2000
#define KILL_GRACE_MS 5000

int sup_pidfd_open(pid_t pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

static int pidfd_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
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

/* ---- QMP ---- */

static void on_reply_logged(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup *s = ctx;
    if (err)
        sup_log(s, "QMP: %s", err->msg);
}

/* quit often loses its reply to the hang-up that follows it: nothing to report */
static void on_quit_reply(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ctx;
    (void)ret;
    (void)err;
}

void sup_qmp(struct sup *s, const char *cmd, json_object *args)
{
    if (!s->qmp) {
        if (args)
            json_object_put(args);
        sup_log(s, "QMP is not connected; cannot send %s", cmd);
        return;
    }
    bool quit = strcmp(cmd, "quit") == 0;
    qmp_send(s->qmp, cmd, args, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, quit ? on_quit_reply : on_reply_logged, s);
}

static void crashed(struct sup *s, const char *why);

void sup_on_event(void *ctx, const char *event, json_object *data, uint64_t ts_us)
{
    struct sup *s = ctx;
    ctl_broadcast_event(s, event, data, ts_us);
    const char *d = data ? jr_show(data) : "";
    if (strcmp(event, "SHUTDOWN") == 0) {
        json_object *reason = NULL;
        json_object_object_get_ex(data, "reason", &reason);
        const char *why = reason ? json_object_get_string(reason) : "";
        sup_log(s, "event SHUTDOWN %s", d);
        if (s->stop_phase || s->expected_exit) {
            s->expected_exit = true;
            sup_qmp(s, "quit", NULL);
        } else if (strcmp(why, "guest-reset") == 0) {
            snprintf(s->exit_reason, sizeof(s->exit_reason), "guest rebooted (on_reboot: stop)");
            s->expected_exit = true;
            sup_qmp(s, "quit", NULL);
        } else if (strcmp(why, "guest-shutdown") == 0 || strcmp(why, "guest-panic") == 0 ||
                   strcmp(why, "host-qmp-system-powerdown") == 0) {
            if (s->def.on_poweroff == POWEROFF_RESTART) {
                sup_log(s, "guest powered off; restarting it (on_poweroff: restart)");
                s->resetting = true;
                sup_qmp(s, "system_reset", NULL);
                sup_qmp(s, "cont", NULL);
            } else {
                snprintf(s->exit_reason, sizeof(s->exit_reason), "guest powered off");
                s->expected_exit = true;
                sup_set_state(s, VM_STOPPING);
                sup_qmp(s, "quit", NULL);
            }
        } else {
            /* host-qmp-quit, host-signal, host-ui: QEMU is on its way out */
            s->expected_exit = true;
            if (!s->exit_reason[0])
                snprintf(s->exit_reason, sizeof(s->exit_reason), "QEMU shut down (%s)", why);
        }
    } else if (strcmp(event, "STOP") == 0) {
        if (s->rs.state == VM_RUNNING && !s->resetting)
            sup_set_state(s, VM_PAUSED);
    } else if (strcmp(event, "RESUME") == 0) {
        s->resetting = false;
        if (s->rs.state == VM_PAUSED || s->rs.state == VM_STARTING || s->rs.state == VM_CRASHED)
            sup_set_state(s, VM_RUNNING);
    } else if (strcmp(event, "GUEST_PANICKED") == 0) {
        sup_log(s, "event GUEST_PANICKED %s", d);
        crashed(s, "guest panicked");
    } else if (strcmp(event, "DEVICE_DELETED") == 0) {
        json_object *dev = NULL;
        sup_log(s, "event %s %s", event, d);
        if (json_object_object_get_ex(data, "device", &dev))
            hotplug_device_deleted(s, json_object_get_string(dev));
    } else if (strcmp(event, "BLOCK_IO_ERROR") == 0) {
        disk_io_error(s, data);
    } else if (strcmp(event, "RESET") == 0 || strcmp(event, "WATCHDOG") == 0) {
        sup_log(s, "event %s %s", event, d);
    }
}

/* ---- stopping ---- */

/* A crashed guest waiting for its on_crash restart: a stop or kill ends the wait
 * instead of answering "done" and restarting it anyway. */
static bool cancel_restart(struct sup *s, const char *why)
{
    if (!s->restart_at || s->qemu_pid)
        return false;
    s->restart_at = 0;
    sup_log(s, "%s: the pending restart is cancelled", why);
    sup_set_state(s, VM_SHUTOFF);
    ctl_stop_done(s, true, NULL);
    s->done = true;
    return true;
}

void sup_kill(struct sup *s, const char *reason)
{
    if (cancel_restart(s, reason))
        return;
    if (start_active(s)) {
        start_cancel(s, reason);
        return;
    }
    if (!s->qemu_pid)
        return;
    s->expected_exit = true;
    if (!s->exit_reason[0])
        snprintf(s->exit_reason, sizeof(s->exit_reason), "%s", reason);
    if (s->pidfd >= 0)
        pidfd_signal(s->pidfd, SIGKILL);
    else
        kill(s->qemu_pid, SIGKILL);
}

/* Phases: 1 powerdown sent, 2 sent again, 3 quit sent, 4 SIGTERM sent, 5 SIGKILL sent. */
static void stop_step(struct sup *s)
{
    uint64_t now = monotonic_ms();
    switch (s->stop_phase) {
    case 1:
        sup_qmp(s, "system_powerdown", NULL);   /* for guests that missed the first */
        s->stop_phase = 2;
        s->stop_next = s->stop_deadline;
        break;
    case 2:
        sup_log(s, "the guest did not power off in time; quitting QEMU");
        /* fall through */
    case 0:
        s->expected_exit = true;
        sup_qmp(s, "quit", NULL);
        s->stop_phase = 3;
        s->stop_next = now + QUIT_GRACE_MS;
        break;
    case 3:
        sup_log(s, "QEMU did not quit; sending SIGTERM");
        if (s->pidfd >= 0)
            pidfd_signal(s->pidfd, SIGTERM);
        else
            kill(s->qemu_pid, SIGTERM);
        s->stop_phase = 4;
        s->stop_next = now + TERM_GRACE_MS;
        break;
    case 4:
        sup_log(s, "QEMU ignored SIGTERM; sending SIGKILL");
        sup_kill(s, "killed after stop timed out");
        s->stop_phase = 5;
        s->stop_next = now + KILL_GRACE_MS;
        break;
    default:
        sup_log(s, "QEMU pid %d survives SIGKILL", (int)s->qemu_pid);
        ctl_stop_done(s, false, "QEMU is still running after SIGKILL");
        s->stop_next = 0;
        break;
    }
}

void sup_begin_stop(struct sup *s, bool force, int timeout_ms)
{
    if (cancel_restart(s, force ? "stopped (forced)" : "stopped"))
        return;
    if (start_active(s)) {
        /* nothing of the guest ran yet: a stop ends the start at once */
        start_cancel(s, force ? "stopped (forced)" : "stopped");
        return;
    }
    if (!s->qemu_pid) {
        ctl_stop_done(s, true, NULL);
        return;
    }
    if (s->stop_phase && !(force && s->stop_phase < 3))
        return;     /* already under way; the caller waits with the others */
    if (!s->exit_reason[0])
        snprintf(s->exit_reason, sizeof(s->exit_reason), "stopped%s", force ? " (forced)" : "");
    /* the state before STOPPING decides how: read it first */
    enum vm_state was = s->rs.state;
    sup_set_state(s, VM_STOPPING);
    notify_send(&s->notify, "STOPPING=1");
    s->expected_exit = true;
    bool crashed_paused = was == VM_CRASHED;
    if (force || crashed_paused || s->never_ran || !s->qmp) {
        s->stop_phase = 0;
        stop_step(s);
        return;
    }
    sup_log(s, "stopping: ACPI power button, then quit after %d ms", timeout_ms);
    if (was == VM_PAUSED)
        sup_qmp(s, "cont", NULL);   /* a paused guest cannot see the button */
    sup_qmp(s, "system_powerdown", NULL);
    s->stop_phase = 1;
    s->stop_deadline = monotonic_ms() + (uint64_t)timeout_ms;
    s->stop_next = monotonic_ms() + POWERDOWN_AGAIN_MS;
    if (s->stop_next > s->stop_deadline)
        s->stop_next = s->stop_deadline;
}

/* ---- crashes and QEMU's exit ---- */

static bool crash_budget_left(struct sup *s)
{
    uint64_t now = monotonic_ms();
    int kept = 0;
    for (int i = 0; i < s->ncrashes; i++)
        if (now - s->crashes[i] < CRASH_WINDOW_MS)
            s->crashes[kept++] = s->crashes[i];
    s->ncrashes = kept;
    if (s->ncrashes >= CRASH_MAX)
        return false;
    s->crashes[s->ncrashes++] = now;
    return true;
}

static void crashed(struct sup *s, const char *why)
{
    snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", why);
    if (s->stop_phase)
        return;
    switch (s->def.on_crash) {
    case CRASH_PAUSE:
        sup_log(s, "%s; leaving it paused (on_crash: pause)", why);
        sup_set_state(s, VM_CRASHED);
        break;
    case CRASH_STOP:
        sup_log(s, "%s; stopping it (on_crash: stop)", why);
        snprintf(s->exit_reason, sizeof(s->exit_reason), "%s", why);
        sup_set_state(s, VM_CRASHED);
        s->expected_exit = true;
        s->exit_code = 1;
        sup_qmp(s, "quit", NULL);
        break;
    case CRASH_RESTART:
        if (!crash_budget_left(s)) {
            sup_log(s, "%s; gave up after %d crashes in %d minutes", why, CRASH_MAX, CRASH_WINDOW_MS / 60000);
            snprintf(s->exit_reason, sizeof(s->exit_reason), "%s; gave up after %d crashes in %d minutes", why,
                     CRASH_MAX, CRASH_WINDOW_MS / 60000);
            sup_set_state(s, VM_CRASHED);
            s->expected_exit = true;
            s->exit_code = 1;
            sup_qmp(s, "quit", NULL);
        } else {
            sup_log(s, "%s; resetting it (on_crash: restart)", why);
            s->resetting = true;
            sup_qmp(s, "system_reset", NULL);
            sup_qmp(s, "cont", NULL);
        }
        break;
    }
}

static void describe_exit(int code, int status_known, char *out, size_t outlen)
{
    if (!status_known)
        snprintf(out, outlen, "QEMU exited (status unknown: an earlier supervisor started it)");
    else if (code >= 128)
        snprintf(out, outlen, "QEMU was killed by signal %d (%s)", code - 128, strsignal(code - 128));
    else
        snprintf(out, outlen, "QEMU exited with status %d", code);
}

/* The last state of this QEMU, written even when the state itself does not change. */
static void record_end(struct sup *s, enum vm_state st)
{
    if (s->rs.state == st)
        sup_save_state(s);
    else
        sup_set_state(s, st);
}

void sup_release_qemu(struct sup *s)
{
    confine_after_exit(s);
    vmnet_after_exit(s);
    remove_run_files(s);
}

static void qemu_gone(struct sup *s)
{
    if (start_qemu_gone(s))
        return;
    int code = 0;
    bool known = false;
    if (s->qemu_is_child) {
        siginfo_t si = {0};
        if (waitid(P_PID, (id_t)s->qemu_pid, &si, WEXITED | WNOHANG) == 0 && si.si_pid) {
            known = true;
            code = si.si_code == CLD_EXITED ? si.si_status : 128 + si.si_status;
        } else if (si.si_pid == 0 && kill(s->qemu_pid, 0) == 0) {
            return;     /* not gone yet */
        }
    }
    char how[160];
    describe_exit(code, known, how, sizeof(how));
    if (confine_oom_killed(s)) {
        snprintf(how, sizeof(how), "out of memory (cgroup limit)");
        s->expected_exit = false;   /* whatever was under way, this is a crash */
    }
    if (s->pidfd >= 0) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->pidfd, NULL);
        close(s->pidfd);
        s->pidfd = -1;
    }
    if (s->qmp) {
        epoll_ctl(s->epfd, EPOLL_CTL_DEL, qmp_fd(s->qmp), NULL);
        qmp_free(s->qmp);
        s->qmp = NULL;
    }
    if (s->console_fd >= 0)
        console_readable(s);    /* the guest's last words are still in the socket */
    console_close(s);
    hotplug_forget_all(s);
    s->qemu_pid = 0;
    s->rs.qemu_pid = 0;
    s->stop_phase = 0;
    s->stop_next = 0;
    /* The VM is dead once this is recorded, and stop or kill are answered then; the
     * cgroup, taps and run files are released after (sup_release_qemu), with the lock
     * held until they are, unless a restart needs their names now. */
    bool restart = !s->expected_exit && s->def.on_crash == CRASH_RESTART && crash_budget_left(s);
    if (restart)
        sup_release_qemu(s);
    else
        s->rs.exiting = true;
    if (s->expected_exit) {
        snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", s->exit_reason[0] ? s->exit_reason : how);
        sup_log(s, "QEMU is gone: %s (%s)", s->rs.last_exit, how);
        record_end(s, s->rs.state == VM_CRASHED ? VM_CRASHED : VM_SHUTOFF);
        ctl_stop_done(s, true, NULL);
        s->done = true;
        return;
    }
    snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", how);
    sup_log(s, "QEMU died unexpectedly: %s", how);
    if (restart) {
        sup_set_state(s, VM_CRASHED);
        ctl_stop_done(s, true, NULL);
        uint64_t delay = 1000ull << (s->ncrashes - 1);
        sup_log(s, "starting it again in %llu ms (on_crash: restart, crash %d of %d)", (unsigned long long)delay,
                s->ncrashes, CRASH_MAX);
        s->restart_at = monotonic_ms() + delay;
        return;
    }
    if (s->def.on_crash == CRASH_RESTART) {
        snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s; gave up after %d crashes in %d minutes", how, CRASH_MAX,
                 CRASH_WINDOW_MS / 60000);
        sup_log(s, "%s", s->rs.last_exit);
    }
    record_end(s, VM_CRASHED);
    ctl_stop_done(s, true, NULL);
    s->exit_code = 1;
    s->done = true;
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
    json_object_object_add(o, "vcpus", json_object_new_int(s->def.cpu.count));
    char mem[32];
    format_size(s->def.memory.bytes, mem, sizeof(mem));
    json_object_object_add(o, "memory", json_object_new_string(mem));
    json_object_object_add(o, "accel", json_object_new_string(s->rs.accel));
    json_object_object_add(o, "qemu_version", json_object_new_string(s->rs.qemu_version));
    json_object_object_add(o, "last_exit", json_object_new_string(s->rs.last_exit));
    json_object *conf = confine_inspect(s);
    if (conf)
        json_object_object_add(o, "confinement", conf);
    return o;
}

/* ---- the loop ---- */

static void signal_readable(struct sup *s)
{
    struct signalfd_siginfo si;
    while (read(s->sigfd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            sup_log(s, "received %s: stopping the VM", strsignal((int)si.ssi_signo));
            sup_begin_stop(s, false, 60000);
        } else if (si.ssi_signo == SIGCHLD) {
            /* one SIGCHLD may stand for several children: each is asked with WNOHANG */
            hotplug_child_exited(s);
            start_child_exited(s);
            if (s->qemu_is_child && s->qemu_pid)
                qemu_gone(s);
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

static int next_timeout(struct sup *s)
{
    uint64_t now = monotonic_ms(), next = 0;
    uint64_t cands[] = {s->stop_next, s->restart_at, s->notify.next_ping, s->qmp ? qmp_next_deadline(s->qmp) : 0,
                        hotplug_next_deadline(s), s->lease_poll, console_next_deadline(s), ctl_next_deadline(s),
                        monitor_next_deadline(s), ctl_agent_deadline(s), start_next_deadline(s)};
    for (size_t i = 0; i < ARRAY_SIZE(cands); i++)
        if (cands[i] && (!next || cands[i] < next))
            next = cands[i];
    if (!next)
        return -1;
    return next <= now ? 0 : (int)(next - now);
}

static void run_timers(struct sup *s)
{
    uint64_t now = monotonic_ms();
    if (s->qmp)
        qmp_expire(s->qmp, now);
    if (s->stop_next && now >= s->stop_next)
        stop_step(s);
    hotplug_expire(s, now);
    ctl_expire(s, now);
    monitor_expire(s, now);
    ctl_agent_expire(s, now);
    start_expire(s, now);
    if (s->lease_poll && now >= s->lease_poll)
        vmnet_poll_leases(s);
    if (s->notify.next_ping && now >= s->notify.next_ping) {
        notify_send(&s->notify, "WATCHDOG=1");
        s->notify.next_ping = now + s->notify.watchdog_ms;
    }
    console_run_timers(s, now);
    if (s->restart_at && now >= s->restart_at) {
        s->restart_at = 0;
        struct qv_err e = {0};
        /* a definition changed meanwhile (attach --persistent, edit) applies now */
        struct vm_def fresh;
        if (vm_load(s->paths, s->def.name, &fresh, &e) == 0) {
            vm_def_free(&s->def);
            s->def = fresh;
        }
        if (start_begin(s, true, &e) < 0) {
            vmnet_after_exit(s);
            sup_log(s, "restart failed: %s", e.msg);
            snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", e.msg);
            sup_set_state(s, VM_CRASHED);
            s->exit_code = 1;
            s->done = true;
        }
    }
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
                if (s->console_fd >= 0)
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
                qemu_gone(s);
                break;
            case EV_AGENT:
                ctl_agent_io(s, evs[i].events);
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

static int open_log(struct sup *s, struct qv_err *e)
{
    char dir[PATH_MAX], path[PATH_MAX];
    qv_path(s->paths, dir, sizeof(dir), QV_LOG);
    int r = mkdir_p(dir, 0755);
    if (r < 0)
        return qv_failerr(e, r, "%s", dir);
    qv_path(s->paths, path, sizeof(path), QV_LOG "/%s.log", s->def.name);
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
    s->ev_qmp.kind = EV_QMP;
    s->ev_console.kind = EV_CONSOLE;
    s->ev_ctl.kind = EV_CTL;
    s->ev_signal.kind = EV_SIGNAL;
    s->ev_pidfd.kind = EV_PIDFD;
    sup_epoll_add(s, s->sigfd, EPOLLIN, &s->ev_signal);
    return ctl_listen(s, e);
}



static void close_ctl(struct sup *s)
{
    if (s->ctl_fd < 0)
        return;
    close(s->ctl_fd);
    s->ctl_fd = -1;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/ctl.sock", s->run_dir);
    unlink(path);
}

static void sup_free(struct sup *s)
{
    ctl_agent_close(s);
    ctl_close_all(s);
    confine_release(s);
    for (int i = 0; i < HOTPLUG_MAX; i++)
        vm_nic_free(&s->hp[i].nic);
    if (s->nft)
        netsetup_nft_close(s->nft);
    if (s->qmp)
        qmp_free(s->qmp);
    if (s->console_fd >= 0)
        close(s->console_fd);
    if (s->pidfd >= 0)
        close(s->pidfd);
    close_ctl(s);
    if (s->sigfd >= 0)
        close(s->sigfd);
    if (s->epfd >= 0)
        close(s->epfd);
    notify_close(&s->notify);
    buf_free(&s->ring);
    buf_free(&s->line);
    runstate_free(&s->rs);
    host_config_free(&s->hc);
    vm_def_free(&s->def);
    if (s->log_fd >= 0)
        close(s->log_fd);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
}


/* The supervisor's state, zeroed, in pages of its own: most of it (hotplug slots,
 * NIC slots, host facts) is only ever read while empty, and pages never written stay
 * the kernel's shared zero page instead of resident memory. calloc from the heap
 * clears reused memory, which makes all ~112 KiB resident. */
static struct sup *sup_alloc(void)
{
    void *p = mmap(NULL, sizeof(struct sup), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        abort();
    return p;
}

static void sup_release(struct sup *s)
{
    munmap(s, sizeof(*s));
}

int supervisor_run(const struct qv_paths *paths, struct vm_def *def, const struct sup_opts *o, struct qv_err *e)
{
    char name[80];
    snprintf(name, sizeof(name), "%s", def->name);
    /* not on the stack: the structure is large, and a stack that deep stays resident */
    struct sup *sp = sup_alloc();
    sp->paths = paths;
    sp->lock_fd = sp->log_fd = sp->epfd = sp->sigfd = sp->pidfd = sp->console_fd = sp->ctl_fd = -1;
    sp->ready_fd = o->ready_fd;
    sp->echo_fd = o->echo_fd;
    sp->conf.lease.lock_fd = sp->conf.lease.hold_fd = -1;     /* not 0: sup_free would close stdin */
    pid_t holder;
    notify_init(&sp->notify);
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
        r = start_begin(sp, false, e);
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
            vmnet_after_exit(sp);
            remove_run_files(sp);
            if (sp->def.transient)
                vm_transient_forget(paths, name);
        }
        sup_free(sp);
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
        ctl_close_all(sp);
        close_ctl(sp);
        sup_crash_point("exiting");
        sup_release_qemu(sp);
    }
    sup_save_state(sp);
    if (sp->def.transient && !sp->qemu_pid)
        vm_transient_forget(paths, name);   /* a transient VM ends with its QEMU */
    int r2 = 0;
    if (sp->exit_code && sp->start.err.msg[0] && !sp->start.restart) {
        *e = sp->start.err;     /* the first start failed: its own words */
        r2 = e->code ? e->code : -EIO;
    } else if (sp->exit_code) {
        r2 = qv_fail(e, -EIO, "%s: %s", name, sp->rs.last_exit[0] ? sp->rs.last_exit : "stopped abnormally");
    }
    sup_free(sp);
    sup_release(sp);
    return r2;
}

/* ---- for unit tests only ---- */

struct sup *sup_new_for_test(const struct qv_paths *paths, const char *name, int qmp_fd, pid_t qemu_pid,
                             struct qv_err *e)
{
    struct sup *s = sup_alloc();
    s->paths = paths;
    s->lock_fd = s->log_fd = s->epfd = s->sigfd = s->pidfd = s->console_fd = s->ctl_fd = s->ready_fd = -1;
    s->echo_fd = -1;
    s->conf.lease.lock_fd = s->conf.lease.hold_fd = -1;
    notify_init(&s->notify);
    s->def.name = qv_xstrdup(name);
    s->def.console = CONSOLE_NONE;
    s->ev_qmp.kind = EV_QMP;
    s->ev_console.kind = EV_CONSOLE;
    s->ev_ctl.kind = EV_CTL;
    s->ev_signal.kind = EV_SIGNAL;
    s->ev_pidfd.kind = EV_PIDFD;
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
    qemu_gone(s);
}
