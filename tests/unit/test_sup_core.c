/* The per-VM supervisor's core state transitions, without QEMU: a struct sup whose
 * QMP connection is one end of a socketpair held by the fake QMP peer, and whose
 * "QEMU" is a child process of the test that sleeps until told to exit. Each test
 * sends QMP events or stop requests and checks what the supervisor sends back to
 * QEMU (the peer expects exactly those commands, in order) and the state it keeps:
 * rs.state, exit_reason, last_exit, expected_exit, stop.phase and its timers. */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "tests/unit/sup_testlib.h"

/* The stop machinery's next phase is due now: as if its time had passed. */
static void stop_timer_fires(struct fx *f)
{
    assert_true(f->s->stop.next != 0);
    f->s->stop.next = monotonic_ms();
    sup_test_run_timers(f->s);
}

static void assert_near(uint64_t got, uint64_t want, uint64_t slack)
{
    if (got < want || got > want + slack)
        fail_msg("timer at %llu, expected %llu (+%llu)", (unsigned long long)got, (unsigned long long)want,
                 (unsigned long long)slack);
}

static enum vm_state recorded_state(struct fx *f, char *last_exit, size_t len)
{
    struct vm_runstate rs;
    struct qv_err e = {0};
    if (runstate_read(&f->paths, "vm1", &rs, &e) < 0)
        fail_msg("state.json: %s", e.msg);
    snprintf(last_exit, len, "%s", rs.last_exit);
    enum vm_state st = rs.state;
    runstate_free(&rs);
    return st;
}

/* ---- SHUTDOWN and the on_poweroff / on_reboot policies --------------------------- */

static void test_poweroff_stop(void **state)
{
    struct fx *f = *state;
    static const char *const reasons[] = {"guest-shutdown", "guest-panic", "host-qmp-system-powerdown"};
    for (size_t i = 0; i < ARRAY_SIZE(reasons); i++) {
        /* each reason on a fresh supervisor state */
        f->s->rs.state = VM_RUNNING;
        f->s->expected_exit = false;
        f->s->exit_reason[0] = '\0';
        f->s->def.on_poweroff = POWEROFF_STOP;
        shutdown_event(f, reasons[i]);
        expect(f, "quit");
        expect_nothing(f);
        assert_int_equal(f->s->rs.state, VM_STOPPING);
        assert_true(f->s->expected_exit);
        assert_string_equal(f->s->exit_reason, "guest powered off");
        assert_false(f->s->resetting);
    }
    qemu_exits(f, 0);
    assert_int_equal(f->s->rs.state, VM_SHUTOFF);
    assert_string_equal(f->s->rs.last_exit, "guest powered off");
    assert_true(f->s->done);
    assert_int_equal(f->s->exit_code, 0);
    assert_int_equal(f->s->qemu_pid, 0);
    assert_null(f->s->qmp);
    char last[256];
    assert_int_equal(recorded_state(f, last, sizeof(last)), VM_SHUTOFF);
    assert_string_equal(last, "guest powered off");
}

static void test_poweroff_restart(void **state)
{
    struct fx *f = *state;
    f->s->def.on_poweroff = POWEROFF_RESTART;
    static const char *const reasons[] = {"guest-shutdown", "guest-panic", "host-qmp-system-powerdown"};
    for (size_t i = 0; i < ARRAY_SIZE(reasons); i++) {
        shutdown_event(f, reasons[i]);
        expect(f, "system_reset");
        expect(f, "cont");
        expect_nothing(f);
        assert_true(f->s->resetting);
        assert_false(f->s->expected_exit);
        assert_string_equal(f->s->exit_reason, "");
        assert_int_equal(f->s->rs.state, VM_RUNNING);
        /* QEMU stops the powered-off guest: not a pause, while resetting */
        event(f, "STOP", NULL);
        assert_int_equal(f->s->rs.state, VM_RUNNING);
        event(f, "RESUME", NULL);
        assert_false(f->s->resetting);
        assert_int_equal(f->s->rs.state, VM_RUNNING);
    }
    /* the reset is over: the next STOP is a pause again */
    event(f, "STOP", NULL);
    assert_int_equal(f->s->rs.state, VM_PAUSED);
    event(f, "RESUME", NULL);
    assert_int_equal(f->s->rs.state, VM_RUNNING);
    expect_nothing(f);
    assert_false(f->s->done);
}

static void test_reboot_stop(void **state)
{
    struct fx *f = *state;
    /* QEMU reports guest-reset only when run with -no-reboot, i.e. on_reboot: stop */
    shutdown_event(f, "guest-reset");
    expect(f, "quit");
    expect_nothing(f);
    assert_true(f->s->expected_exit);
    assert_string_equal(f->s->exit_reason, "guest rebooted (on_reboot: stop)");
    qemu_exits(f, 0);
    assert_int_equal(f->s->rs.state, VM_SHUTOFF);
    assert_string_equal(f->s->rs.last_exit, "guest rebooted (on_reboot: stop)");
    assert_int_equal(f->s->exit_code, 0);
    assert_true(f->s->done);
}

static void test_host_quit(void **state)
{
    struct fx *f = *state;
    f->s->def.on_poweroff = POWEROFF_RESTART;   /* not the guest's doing: no policy applies */
    shutdown_event(f, "host-qmp-quit");
    expect_nothing(f);
    assert_true(f->s->expected_exit);
    assert_false(f->s->resetting);
    assert_string_equal(f->s->exit_reason, "QEMU shut down (host-qmp-quit)");
    qemu_exits(f, 0);
    assert_int_equal(f->s->rs.state, VM_SHUTOFF);
    assert_string_equal(f->s->rs.last_exit, "QEMU shut down (host-qmp-quit)");
    assert_int_equal(f->s->exit_code, 0);
}

/* A guest that powers off while a stop is under way is not restarted. */
static void test_shutdown_during_stop(void **state)
{
    struct fx *f = *state;
    f->s->def.on_poweroff = POWEROFF_RESTART;
    sup_begin_stop(f->s, false, 60000);
    expect(f, "system_powerdown");
    shutdown_event(f, "guest-shutdown");
    expect(f, "quit");
    expect_nothing(f);
    assert_false(f->s->resetting);
    assert_string_equal(f->s->exit_reason, "stopped");
    qemu_exits(f, 0);
    assert_int_equal(f->s->rs.state, VM_SHUTOFF);
    assert_string_equal(f->s->rs.last_exit, "stopped");
    assert_int_equal(f->s->stop.phase, 0);
    assert_int_equal(f->s->stop.next, 0);
}

/* ---- pause and resume -------------------------------------------------------------- */

static void test_stop_resume(void **state)
{
    struct fx *f = *state;
    event(f, "STOP", NULL);
    assert_int_equal(f->s->rs.state, VM_PAUSED);
    char last[256];
    assert_int_equal(recorded_state(f, last, sizeof(last)), VM_PAUSED);
    event(f, "STOP", NULL);
    assert_int_equal(f->s->rs.state, VM_PAUSED);
    event(f, "RESUME", NULL);
    assert_int_equal(f->s->rs.state, VM_RUNNING);
    /* starting (the first cont) and a crashed guest someone resumed: both run */
    f->s->rs.state = VM_STARTING;
    event(f, "RESUME", NULL);
    assert_int_equal(f->s->rs.state, VM_RUNNING);
    f->s->rs.state = VM_CRASHED;
    event(f, "RESUME", NULL);
    assert_int_equal(f->s->rs.state, VM_RUNNING);
    /* a STOP while stopping is not a pause */
    f->s->rs.state = VM_STOPPING;
    event(f, "STOP", NULL);
    assert_int_equal(f->s->rs.state, VM_STOPPING);
    event(f, "RESUME", NULL);
    assert_int_equal(f->s->rs.state, VM_STOPPING);
    expect_nothing(f);
}

/* ---- crashes: on_crash and the crash budget ---------------------------------------- */

static void test_panic_pause(void **state)
{
    struct fx *f = *state;
    f->s->def.on_crash = CRASH_PAUSE;
    event(f, "GUEST_PANICKED", "{\"action\": \"pause\"}");
    expect_nothing(f);
    assert_int_equal(f->s->rs.state, VM_CRASHED);
    assert_string_equal(f->s->rs.last_exit, "guest panicked");
    assert_false(f->s->expected_exit);
    assert_int_equal(f->s->exit_code, 0);
    /* the panicked guest sees no power button: a stop quits at once */
    uint64_t now = monotonic_ms();
    sup_begin_stop(f->s, false, 60000);
    expect(f, "quit");
    expect_nothing(f);
    assert_int_equal(f->s->stop.phase, 3);
    assert_near(f->s->stop.next, now + 2000, 1000);
    assert_true(f->s->expected_exit);
    qemu_exits(f, 0);
    assert_int_equal(f->s->rs.state, VM_SHUTOFF);
    assert_string_equal(f->s->rs.last_exit, "stopped");
}

static void test_panic_stop(void **state)
{
    struct fx *f = *state;
    f->s->def.on_crash = CRASH_STOP;
    event(f, "GUEST_PANICKED", "{\"action\": \"pause\"}");
    expect(f, "quit");
    expect_nothing(f);
    assert_int_equal(f->s->rs.state, VM_CRASHED);
    assert_true(f->s->expected_exit);
    assert_int_equal(f->s->exit_code, 1);
    assert_string_equal(f->s->exit_reason, "guest panicked");
    qemu_exits(f, 0);
    /* still crashed after QEMU left, and the supervisor ends with an error */
    assert_int_equal(f->s->rs.state, VM_CRASHED);
    assert_string_equal(f->s->rs.last_exit, "guest panicked");
    assert_true(f->s->done);
    assert_int_equal(f->s->exit_code, 1);
}

static void test_panic_restart_budget(void **state)
{
    struct fx *f = *state;
    f->s->def.on_crash = CRASH_RESTART;
    uint64_t now = monotonic_ms();
    /* crashes older than the window do not count */
    if (now > CRASH_WINDOW_MS + 60000) {
        for (int i = 0; i < 3; i++)
            f->s->crash.at[i] = now - CRASH_WINDOW_MS - 1000;
        f->s->crash.n = 3;
    }
    for (int i = 0; i < CRASH_MAX; i++) {
        event(f, "GUEST_PANICKED", "{\"action\": \"pause\"}");
        expect(f, "system_reset");
        expect(f, "cont");
        expect_nothing(f);
        assert_true(f->s->resetting);
        assert_false(f->s->expected_exit);
        assert_int_equal(f->s->crash.n, i + 1);
        event(f, "RESUME", NULL);
        assert_int_equal(f->s->rs.state, VM_RUNNING);
    }
    event(f, "GUEST_PANICKED", "{\"action\": \"pause\"}");
    expect(f, "quit");
    expect_nothing(f);
    assert_int_equal(f->s->rs.state, VM_CRASHED);
    assert_true(f->s->expected_exit);
    assert_int_equal(f->s->exit_code, 1);
    assert_string_equal(f->s->exit_reason, "guest panicked; gave up after 5 crashes in 10 minutes");
    qemu_exits(f, 0);
    assert_int_equal(f->s->rs.state, VM_CRASHED);
    assert_string_equal(f->s->rs.last_exit, "guest panicked; gave up after 5 crashes in 10 minutes");
    assert_true(f->s->done);
}

/* A panic during a stop is recorded, not acted upon: the stop goes on. */
static void test_panic_during_stop(void **state)
{
    struct fx *f = *state;
    f->s->def.on_crash = CRASH_RESTART;
    sup_begin_stop(f->s, false, 60000);
    expect(f, "system_powerdown");
    event(f, "GUEST_PANICKED", "{\"action\": \"pause\"}");
    expect_nothing(f);
    assert_string_equal(f->s->rs.last_exit, "guest panicked");
    assert_int_equal(f->s->rs.state, VM_STOPPING);
    assert_int_equal(f->s->crash.n, 0);
    assert_int_equal(f->s->stop.phase, 1);
}

/* QEMU dies without a SHUTDOWN: a crash, and on_crash decides. */
static void test_unexpected_exit(void **state)
{
    struct fx *f = *state;
    f->s->def.on_crash = CRASH_STOP;
    qemu_killed(f, SIGKILL);
    assert_int_equal(f->s->rs.state, VM_CRASHED);
    assert_string_equal(f->s->rs.last_exit, "QEMU was killed by signal 9 (Killed)");
    assert_true(f->s->done);
    assert_int_equal(f->s->exit_code, 1);
    assert_int_equal(f->s->crash.restart_at, 0);
    char last[256];
    assert_int_equal(recorded_state(f, last, sizeof(last)), VM_CRASHED);
    assert_string_equal(last, "QEMU was killed by signal 9 (Killed)");
}

static void test_unexpected_exit_restart(void **state)
{
    struct fx *f = *state;
    f->s->def.on_crash = CRASH_RESTART;
    uint64_t now = monotonic_ms();
    qemu_exits(f, 3);
    assert_int_equal(f->s->rs.state, VM_CRASHED);
    assert_string_equal(f->s->rs.last_exit, "QEMU exited with status 3");
    assert_false(f->s->done);
    assert_int_equal(f->s->crash.n, 1);
    /* first restart after 1 s, doubling with each crash in the window */
    assert_near(f->s->crash.restart_at, now + 1000, 1000);
    /* the budget spent: the supervisor gives up instead */
    f->s->crash.restart_at = 0;
    f->s->crash.n = CRASH_MAX;
    for (int i = 0; i < CRASH_MAX; i++)
        f->s->crash.at[i] = monotonic_ms();
    f->s->qemu_pid = f->child;      /* as if started again; it is reaped, so gone at once */
    f->s->done = false;
    sup_test_qemu_gone(f->s);
    assert_true(f->s->done);
    assert_int_equal(f->s->exit_code, 1);
    assert_int_equal(f->s->crash.restart_at, 0);
    assert_non_null(strstr(f->s->rs.last_exit, "; gave up after 5 crashes in 10 minutes"));
}

/* ---- stopping: the phases -------------------------------------------------------- */

static void test_stop_phases(void **state)
{
    struct fx *f = *state;
    uint64_t now = monotonic_ms();
    sup_begin_stop(f->s, false, 3000);
    expect(f, "system_powerdown");
    expect_nothing(f);
    assert_int_equal(f->s->rs.state, VM_STOPPING);
    assert_true(f->s->expected_exit);
    assert_string_equal(f->s->exit_reason, "stopped");
    assert_int_equal(f->s->stop.phase, 1);
    assert_near(f->s->stop.next, now + 500, 500);
    assert_near(f->s->stop.deadline, now + 3000, 500);
    /* early: nothing happens */
    sup_test_run_timers(f->s);
    expect_nothing(f);
    assert_int_equal(f->s->stop.phase, 1);
    /* 500 ms on: the button again, then nothing until the deadline */
    stop_timer_fires(f);
    expect(f, "system_powerdown");
    assert_int_equal(f->s->stop.phase, 2);
    assert_int_equal(f->s->stop.next, f->s->stop.deadline);
    sup_test_run_timers(f->s);
    expect_nothing(f);
    /* the deadline: quit */
    now = monotonic_ms();
    stop_timer_fires(f);
    expect(f, "quit");
    assert_int_equal(f->s->stop.phase, 3);
    assert_near(f->s->stop.next, now + 2000, 500);
    /* QEMU did not quit: SIGTERM, which the stand-in dies of */
    stop_timer_fires(f);
    expect_nothing(f);
    assert_int_equal(f->s->stop.phase, 4);
    assert_true(child_dead(f->child));
    siginfo_t si = {0};
    assert_int_equal(waitid(P_PID, (id_t)f->child, &si, WEXITED | WNOHANG | WNOWAIT), 0);
    assert_int_equal(si.si_code, CLD_KILLED);
    assert_int_equal(si.si_status, SIGTERM);
    sup_test_qemu_gone(f->s);
    assert_int_equal(f->s->rs.state, VM_SHUTOFF);
    assert_string_equal(f->s->rs.last_exit, "stopped");
    assert_int_equal(f->s->stop.phase, 0);
    assert_int_equal(f->s->stop.next, 0);
    assert_int_equal(f->s->exit_code, 0);
}

/* A QEMU that ignores SIGTERM gets SIGKILL; then the supervisor waits no more. */
static void test_stop_sigkill(void **state)
{
    struct fx *f = *state;
    sup_begin_stop(f->s, true, 60000);
    expect(f, "quit");
    assert_int_equal(f->s->stop.phase, 3);
    assert_string_equal(f->s->exit_reason, "stopped (forced)");
    stop_timer_fires(f);
    assert_int_equal(f->s->stop.phase, 4);
    usleep(50000);
    siginfo_t si = {0};
    assert_int_equal(waitid(P_PID, (id_t)f->child, &si, WEXITED | WNOHANG | WNOWAIT), 0);
    assert_int_equal(si.si_pid, 0);     /* SIGTERM ignored: still alive */
    uint64_t now = monotonic_ms();
    stop_timer_fires(f);
    assert_int_equal(f->s->stop.phase, 5);
    assert_near(f->s->stop.next, now + 5000, 500);
    assert_true(child_dead(f->child));
    assert_int_equal(waitid(P_PID, (id_t)f->child, &si, WEXITED | WNOHANG | WNOWAIT), 0);
    assert_int_equal(si.si_status, SIGKILL);
    /* the exit was not noticed yet (no pidfd event here): the last phase gives up waiting */
    stop_timer_fires(f);
    assert_int_equal(f->s->stop.next, 0);
    expect_nothing(f);
    sup_test_qemu_gone(f->s);
    assert_int_equal(f->s->rs.state, VM_SHUTOFF);
    /* sup_kill keeps the reason the stop gave */
    assert_string_equal(f->s->rs.last_exit, "stopped (forced)");
}

static void test_stop_variants(void **state)
{
    struct fx *f = *state;
    /* a timeout shorter than the 500 ms repeat: the repeat is at the deadline */
    sup_begin_stop(f->s, false, 100);
    expect(f, "system_powerdown");
    assert_int_equal(f->s->stop.next, f->s->stop.deadline);
    /* a second graceful stop joins the first */
    sup_begin_stop(f->s, false, 60000);
    expect_nothing(f);
    assert_int_equal(f->s->stop.phase, 1);
    /* a forced stop overtakes it: quit now */
    sup_begin_stop(f->s, true, 60000);
    expect(f, "quit");
    assert_int_equal(f->s->stop.phase, 3);
    /* and once quit is sent, nothing more to overtake */
    sup_begin_stop(f->s, true, 60000);
    expect_nothing(f);
    assert_int_equal(f->s->stop.phase, 3);
    /* the first reason is kept */
    assert_string_equal(f->s->exit_reason, "stopped");
}

static void test_stop_paused(void **state)
{
    struct fx *f = *state;
    event(f, "STOP", NULL);
    assert_int_equal(f->s->rs.state, VM_PAUSED);
    sup_begin_stop(f->s, false, 60000);
    /* a paused guest cannot see the button: continued first */
    expect(f, "cont");
    expect(f, "system_powerdown");
    expect_nothing(f);
    assert_int_equal(f->s->stop.phase, 1);
    assert_int_equal(f->s->rs.state, VM_STOPPING);
}

static void test_stop_never_ran(void **state)
{
    struct fx *f = *state;
    f->s->never_ran = true;
    f->s->rs.state = VM_STARTING;
    sup_begin_stop(f->s, false, 60000);
    /* a guest in prelaunch has no ACPI to press: quit at once */
    expect(f, "quit");
    expect_nothing(f);
    assert_int_equal(f->s->stop.phase, 3);
    assert_int_equal(f->s->rs.state, VM_STOPPING);
}

static void test_stop_without_monitor(void **state)
{
    struct fx *f = *state;
    /* the QMP connection is lost: straight to the signals */
    qmp_free(f->s->qmp);
    f->s->qmp = NULL;
    sup_begin_stop(f->s, false, 60000);
    assert_int_equal(f->s->stop.phase, 3);
    stop_timer_fires(f);
    assert_int_equal(f->s->stop.phase, 4);
    assert_true(child_dead(f->child));
    sup_test_qemu_gone(f->s);
    assert_int_equal(f->s->rs.state, VM_SHUTOFF);
    assert_string_equal(f->s->rs.last_exit, "stopped");
}

static void test_stop_not_running(void **state)
{
    struct fx *f = *state;
    qemu_exits(f, 0);   /* unexpected: crashed, on_crash stop */
    assert_int_equal(f->s->rs.state, VM_CRASHED);
    f->s->done = false;
    sup_begin_stop(f->s, false, 60000);
    assert_int_equal(f->s->stop.phase, 0);
    assert_int_equal(f->s->stop.next, 0);
    assert_int_equal(f->s->rs.state, VM_CRASHED);
}

/* ---- hotplug's event ----------------------------------------------------------- */

static void test_device_deleted(void **state)
{
    struct fx *f = *state;
    struct hotplug *h = &f->s->hp[0];
    h->used = h->removing = true;
    h->kind = HOTPLUG_DISK;
    snprintf(h->id, sizeof(h->id), "disk3");
    h->fdset = 7;
    event(f, "DEVICE_DELETED", "{\"device\": \"disk9\", \"path\": \"/machine/peripheral/disk9\"}");
    expect_nothing(f);
    assert_true(h->used);
    event(f, "DEVICE_DELETED", "{\"device\": \"disk3\", \"path\": \"/machine/peripheral/disk3\"}");
    /* its chain as QEMU holds it, then the fdsets of its file nodes */
    if (!peer_answer(&f->peer, f->s->qmp, "x-debug-query-block-graph",
                     "{\"nodes\": [{\"id\": 1, \"name\": \"disk3-fmt\"}, {\"id\": 2, \"name\": \"disk3-file\"}], "
                     "\"edges\": [{\"parent\": 1, \"child\": 2, \"name\": \"file\"}]}"))
        fail_msg("expected the block graph query: %s", f->peer.failure);
    drain(f);
    if (!peer_answer(&f->peer, f->s->qmp, "query-fdsets",
                     "[{\"fdset-id\": 7, \"fds\": [{\"fd\": 40, \"opaque\": \"disk3-file\"}]}]"))
        fail_msg("expected query-fdsets: %s", f->peer.failure);
    drain(f);
    expect_arg(f, "blockdev-del", "node-name", "disk3-fmt");
    expect_arg(f, "blockdev-del", "node-name", "disk3-file");
    expect_arg(f, "remove-fd", "fdset-id", "7");
    expect_nothing(f);
    assert_false(h->used);
    assert_int_equal(f->s->rs.state, VM_RUNNING);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "test_sup_core: a test blocked: timed out\n";
    (void)!write(2, m, sizeof(m) - 1);
    _exit(1);
}

#define T(name) cmocka_unit_test_setup_teardown(name, fx_setup, fx_teardown)

int main(void)
{
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);
    alarm(60);
    const struct CMUnitTest tests[] = {
        T(test_poweroff_stop),
        T(test_poweroff_restart),
        T(test_reboot_stop),
        T(test_host_quit),
        T(test_shutdown_during_stop),
        T(test_stop_resume),
        T(test_panic_pause),
        T(test_panic_stop),
        T(test_panic_restart_budget),
        T(test_panic_during_stop),
        T(test_unexpected_exit),
        T(test_unexpected_exit_restart),
        T(test_stop_phases),
        cmocka_unit_test_setup_teardown(test_stop_sigkill, fx_setup_ignoring_term, fx_teardown),
        T(test_stop_variants),
        T(test_stop_paused),
        T(test_stop_never_ran),
        T(test_stop_without_monitor),
        T(test_stop_not_running),
        T(test_device_deleted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
