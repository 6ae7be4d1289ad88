/* What happens to the guest, as the supervisor sees it: QEMU's events and the
 * on_poweroff/on_reboot/on_crash policies, stopping in phases (ACPI power button,
 * again, quit, SIGTERM, SIGKILL), crashes with their restart budget, and QEMU's exit. */
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"

#define POWERDOWN_AGAIN_MS 500
#define QUIT_GRACE_MS 2000
#define TERM_GRACE_MS 2000
#define KILL_GRACE_MS 5000

static int pidfd_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
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
    agent_guest_event(s, event, data);
    const char *d = data ? jr_show(data) : "";
    if (strcmp(event, "SHUTDOWN") == 0) {
        json_object *reason = NULL;
        json_object_object_get_ex(data, "reason", &reason);
        const char *why = reason ? json_object_get_string(reason) : "";
        sup_log(s, "event SHUTDOWN %s", d);
        if (s->stop.phase || s->expected_exit) {
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
        s->never_ran = false;   /* a VM started paused was resumed */
        if (s->rs.state == VM_PAUSED || s->rs.state == VM_STARTING || s->rs.state == VM_CRASHED)
            sup_set_state(s, VM_RUNNING);
    } else if (strcmp(event, "GUEST_PANICKED") == 0) {
        sup_log(s, "event GUEST_PANICKED %s", d);
        s->panicked = true;
        crashed(s, "guest panicked");
    } else if (strcmp(event, "DEVICE_DELETED") == 0) {
        json_object *dev = NULL, *path = NULL;
        sup_log(s, "event %s %s", event, d);
        if (json_object_object_get_ex(data, "device", &dev))
            hotplug_device_deleted(s, json_object_get_string(dev));
        json_object_object_get_ex(data, "path", &path);
        tuning_device_deleted(s, dev ? json_object_get_string(dev) : NULL, path ? json_object_get_string(path) : NULL);
    } else if (strcmp(event, "BALLOON_CHANGE") == 0) {
        tuning_balloon_event(s, data);
    } else if (strcmp(event, "BLOCK_IO_ERROR") == 0) {
        disk_io_error(s, data);
    } else if (strcmp(event, "JOB_STATUS_CHANGE") == 0) {
        sup_jobs_event(s, event, data);
    } else if (strcmp(event, "MIGRATION") == 0 || strcmp(event, "MIGRATION_PASS") == 0) {
        migrate_event(s, event, data);
    } else if (strcmp(event, "RESET") == 0 || strcmp(event, "WATCHDOG") == 0) {
        sup_log(s, "event %s %s", event, d);
    }
}

/* ---- stopping ---- */

/* A crashed guest waiting for its on_crash restart: a stop or kill ends the wait
 * instead of answering "done" and restarting it anyway. */
static bool cancel_restart(struct sup *s, const char *why)
{
    if (!s->crash.restart_at || s->qemu_pid)
        return false;
    s->crash.restart_at = 0;
    sup_log(s, "%s: the pending restart is cancelled", why);
    sup_set_state(s, VM_SHUTOFF);
    ctl_stop_listening(s);
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
void sup_stop_step(struct sup *s)
{
    uint64_t now = monotonic_ms();
    switch (s->stop.phase) {
    case 1:
        sup_qmp(s, "system_powerdown", NULL);   /* for guests that missed the first */
        s->stop.phase = 2;
        s->stop.next = s->stop.deadline;
        break;
    case 2:
        sup_log(s, "the guest did not power off in time; quitting QEMU");
        /* fall through */
    case 0:
        s->expected_exit = true;
        sup_qmp(s, "quit", NULL);
        s->stop.phase = 3;
        s->stop.next = now + QUIT_GRACE_MS;
        break;
    case 3:
        sup_log(s, "QEMU did not quit; sending SIGTERM");
        if (s->pidfd >= 0)
            pidfd_signal(s->pidfd, SIGTERM);
        else
            kill(s->qemu_pid, SIGTERM);
        s->stop.phase = 4;
        s->stop.next = now + TERM_GRACE_MS;
        break;
    case 4:
        sup_log(s, "QEMU ignored SIGTERM; sending SIGKILL");
        sup_kill(s, "killed after stop timed out");
        s->stop.phase = 5;
        s->stop.next = now + KILL_GRACE_MS;
        break;
    default:
        sup_log(s, "QEMU pid %d survives SIGKILL", (int)s->qemu_pid);
        ctl_stop_done(s, false, "QEMU is still running after SIGKILL");
        s->stop.next = 0;
        break;
    }
}

/* press: the ACPI power button (twice); else the guest was asked another way */
static void begin_stop(struct sup *s, bool force, int timeout_ms, bool press)
{
    if (cancel_restart(s, force ? "stopped (forced)" : "stopped"))
        return;
    if (migstore_in_cancel(s, force ? "stopped (forced) before the source came" : "stopped before the source came"))
        return;     /* migrate-incoming --copy-storage still waiting: no QEMU yet */
    if (start_active(s)) {
        /* nothing of the guest ran yet: a stop ends the start at once */
        start_cancel(s, force ? "stopped (forced)" : "stopped");
        return;
    }
    if (!s->qemu_pid) {
        ctl_stop_done(s, true, NULL);
        return;
    }
    if (s->stop.phase && !(force && s->stop.phase < 3))
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
        s->stop.phase = 0;
        sup_stop_step(s);
        return;
    }
    s->stop.deadline = monotonic_ms() + (uint64_t)timeout_ms;
    if (!press) {
        s->stop.phase = 2;      /* only the wait for the guest is left */
        s->stop.next = s->stop.deadline;
        return;
    }
    sup_log(s, "stopping: ACPI power button, then quit after %d ms", timeout_ms);
    if (was == VM_PAUSED)
        sup_qmp(s, "cont", NULL);   /* a paused guest cannot see the button */
    sup_qmp(s, "system_powerdown", NULL);
    s->stop.phase = 1;
    s->stop.next = monotonic_ms() + POWERDOWN_AGAIN_MS;
    if (s->stop.next > s->stop.deadline)
        s->stop.next = s->stop.deadline;
}

void sup_begin_stop(struct sup *s, bool force, int timeout_ms)
{
    begin_stop(s, force, timeout_ms, true);
}

void sup_begin_stop_waiting(struct sup *s, int timeout_ms)
{
    begin_stop(s, false, timeout_ms, false);
}

/* ---- crashes and QEMU's exit ---- */

static bool crash_budget_left(struct sup *s)
{
    uint64_t now = monotonic_ms();
    int kept = 0;
    for (int i = 0; i < s->crash.n; i++)
        if (now - s->crash.at[i] < CRASH_WINDOW_MS)
            s->crash.at[kept++] = s->crash.at[i];
    s->crash.n = kept;
    if (s->crash.n >= CRASH_MAX)
        return false;
    s->crash.at[s->crash.n++] = now;
    return true;
}

static void crashed(struct sup *s, const char *why)
{
    snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", why);
    if (s->stop.phase)
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
/* The end, recorded before stop or kill are answered: a transient VM is gone from
 * `list` by then, so its name may be used again at once. */
static void record_end(struct sup *s, enum vm_state st)
{
    if (s->def.transient)
        vm_transient_forget(s->paths, s->def.name);
    if (s->rs.state == st)
        sup_save_state(s);
    else
        sup_set_state(s, st);
}

void sup_release_qemu(struct sup *s)
{
    confine_after_exit(s);
    virtiofs_after_exit(s);
    tpm_after_exit(s);
    vmnet_after_exit(s);
    remove_run_files(s);
}

void sup_qemu_gone(struct sup *s)
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
    s->qemu_status = known ? code : -1;
    /* isa-debug-exit: the guest ended QEMU with its own verdict, CODE*2+1 */
    if (s->def.exit_device && known && code < 128 && (code & 1) && !s->expected_exit && !s->panicked) {
        snprintf(s->exit_reason, sizeof(s->exit_reason), "the guest reported exit code %d (isa-debug-exit)",
                 code >> 1);
        s->expected_exit = true;
    }
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
    console_readable(s);        /* the guest's last words are still in the socket */
    console_close(s);
    hotplug_forget_all(s);
    sup_jobs_forget_all(s, "QEMU exited before the job ended");
    snapshots_forget(s);
    migrate_forget(s);
    media_forget_all(s);
    s->qemu_pid = 0;
    s->rs.qemu_pid = 0;
    s->stop.phase = 0;
    s->stop.next = 0;
    /* The VM is dead once this is recorded, and stop or kill are answered then; the
     * cgroup, taps and run files are released after (sup_release_qemu), with the lock
     * held until they are, unless a restart needs their names now. */
    bool restart = !s->expected_exit && s->def.on_crash == CRASH_RESTART && crash_budget_left(s);
    if (restart) {
        sup_release_qemu(s);
    } else {
        s->rs.exiting = true;
        ctl_stop_listening(s);
    }
    if (s->expected_exit) {
        snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", s->exit_reason[0] ? s->exit_reason : how);
        sup_log(s, "QEMU is gone: %s (%s)", s->rs.last_exit, how);
        record_end(s, s->rs.state == VM_CRASHED ? VM_CRASHED : VM_SHUTOFF);
        ctl_stop_done(s, true, NULL);
        sup_crash_point("stop-answered");   /* tests: the supervisor on its way out */
        s->done = true;
        return;
    }
    snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", how);
    sup_log(s, "QEMU died unexpectedly: %s", how);
    if (restart) {
        sup_set_state(s, VM_CRASHED);
        ctl_stop_done(s, true, NULL);
        uint64_t delay = 1000ull << (s->crash.n - 1);
        sup_log(s, "starting it again in %llu ms (on_crash: restart, crash %d of %d)", (unsigned long long)delay,
                s->crash.n, CRASH_MAX);
        s->crash.restart_at = monotonic_ms() + delay;
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

/* ---- timers: the next stop phase, a crashed QEMU's restart ---- */

uint64_t lifecycle_stop_next_deadline(struct sup *s)
{
    return s->stop.next;
}

void lifecycle_stop_expire(struct sup *s, uint64_t now)
{
    if (s->stop.next && now >= s->stop.next)
        sup_stop_step(s);
}

uint64_t lifecycle_restart_next_deadline(struct sup *s)
{
    return s->crash.restart_at;
}

void lifecycle_restart_expire(struct sup *s, uint64_t now)
{
    if (!s->crash.restart_at || now < s->crash.restart_at)
        return;
    s->crash.restart_at = 0;
    struct qv_err e = {0};
    /* a definition changed meanwhile (attach --persistent, edit) applies now */
    struct vm_def fresh;
    if (vm_load(s->paths, s->def.name, &fresh, &e) == 0) {
        vm_def_free(&s->def);
        s->def = fresh;
    }
    if (start_begin(s, true, &e) < 0) {
        virtiofs_after_exit(s);
        tpm_after_exit(s);
        vmnet_after_exit(s);
        sup_log(s, "restart failed: %s", e.msg);
        snprintf(s->rs.last_exit, sizeof(s->rs.last_exit), "%s", e.msg);
        sup_set_state(s, VM_CRASHED);
        s->exit_code = 1;
        s->done = true;
    }
}
