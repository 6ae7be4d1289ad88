/* A supervisor without QEMU, for unit tests: struct sup from sup_new_for_test, its
 * QMP connection held by the fake QMP peer (handshaken), and a child process of the
 * test standing in for QEMU (it waits until told to exit, or is killed). Included by
 * tests/unit/test_sup_core.c and test_ctl.c. */
#ifndef QV_SUP_TESTLIB_H
#define QV_SUP_TESTLIB_H
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"
#include "tests/fakes/qmp_peer.c"

#define SUP_TEST_FN static __attribute__((unused))

struct fx {
    char dir[64];
    struct qv_paths paths;
    struct qmp_peer peer;
    struct sup *s;
    pid_t child;        /* the stand-in for QEMU */
    int child_ctl;      /* write a byte: the child exits with it as its status */
};

/* The stand-in QEMU: waits on a pipe and exits with the status it reads. */
SUP_TEST_FN pid_t fake_qemu(int *ctl, bool ignore_sigterm)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        if (ignore_sigterm)
            signal(SIGTERM, SIG_IGN);
        else
            signal(SIGTERM, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        close(pfd[1]);
        unsigned char st = 0;
        ssize_t n = read(pfd[0], &st, 1);
        _exit(n == 1 ? st : 99);
    }
    close(pfd[0]);
    *ctl = pfd[1];
    return pid;
}

/* Blocks SIGTERM in this process only while forking, so that a child meant to
 * ignore it has done so before anyone can send it. */
SUP_TEST_FN pid_t fake_qemu_ignoring_term(int *ctl)
{
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, &old);
    pid_t pid = fake_qemu(ctl, true);
    sigprocmask(SIG_SETMASK, &old, NULL);
    return pid;
}

/* Waits (bounded) until the child is dead, without reaping it: the supervisor does. */
SUP_TEST_FN bool child_dead(pid_t pid)
{
    for (int i = 0; i < 500; i++) {
        siginfo_t si = {0};
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid)
            return true;
        usleep(10000);
    }
    return false;
}

SUP_TEST_FN void on_handshake(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    *(int *)ctx = err ? -1 : 1;
}

SUP_TEST_FN int fx_make(void **state, bool ignore_sigterm)
{
    struct fx *f = qv_xcalloc(1, sizeof(*f));
    *state = f;
    f->child_ctl = -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/qvsupcore.XXXXXX");
    struct qv_err e = {0};
    if (!mkdtemp(f->dir) || qv_paths_init(&f->paths, f->dir, &e) < 0)
        return -1;
    f->child = ignore_sigterm ? fake_qemu_ignoring_term(&f->child_ctl) : fake_qemu(&f->child_ctl, false);
    if (f->child < 0)
        return -1;
    int cfd = peer_open(&f->peer);
    if (cfd < 0)
        return -1;
    f->s = sup_new_for_test(&f->paths, "vm1", cfd, f->child, &e);
    if (!f->s) {
        fprintf(stderr, "sup_new_for_test: %s\n", e.msg);
        return -1;
    }
    int hs = 0;
    if (peer_send(&f->peer, PEER_GREETING) < 0 || qmp_handshake(f->s->qmp, 2000, on_handshake, &hs) < 0 ||
        !peer_answer(&f->peer, f->s->qmp, "qmp_capabilities", "{}"))
        return -1;
    for (int i = 0; i < 200 && !hs; i++) {
        struct pollfd p = {.fd = qmp_fd(f->s->qmp), .events = POLLIN};
        if (poll(&p, 1, 10) > 0)
            peer_pump(f->s->qmp, NULL);
    }
    return hs == 1 && qmp_ready(f->s->qmp) ? 0 : -1;
}

SUP_TEST_FN int fx_setup(void **state)
{
    return fx_make(state, false);
}

SUP_TEST_FN int fx_setup_ignoring_term(void **state)
{
    return fx_make(state, true);
}

SUP_TEST_FN int fx_teardown(void **state)
{
    struct fx *f = *state;
    if (!f)
        return 0;
    sup_free_for_test(f->s);
    peer_close(&f->peer);
    if (f->child > 0) {
        /* only while it is still ours: once the supervisor reaped it, its pid may be anyone's */
        siginfo_t si = {0};
        if (waitid(P_PID, (id_t)f->child, &si, WEXITED | WNOHANG | WNOWAIT) == 0) {
            if (si.si_pid == 0)
                kill(f->child, SIGKILL);
            waitpid(f->child, NULL, 0);
        }
    }
    if (f->child_ctl >= 0)
        close(f->child_ctl);
    if (f->dir[0] && strcmp(f->dir, "/tmp/qvsupcore.XXXXXX") != 0) {
        const char *rm[] = {"rm", "-rf", f->dir, NULL};
        run_program(rm, 10000, NULL);
    }
    free(f);
    return 0;
}

/* ---- driving the supervisor ---------------------------------------------------- */

/* Lets the supervisor read everything the peer has sent so far (a socketpair has
 * it all at once), as its loop would. */
SUP_TEST_FN void drain(struct fx *f)
{
    for (int i = 0; i < 100 && f->s->qmp; i++) {
        struct pollfd p = {.fd = qmp_fd(f->s->qmp), .events = POLLIN};
        if (poll(&p, 1, 0) <= 0)
            return;
        struct qv_err e = {0};
        if (qmp_handle_io(f->s->qmp, EPOLLIN | EPOLLOUT, &e) < 0)
            fail_msg("QMP connection failed: %s", e.msg);
    }
}

SUP_TEST_FN void event(struct fx *f, const char *name, const char *data)
{
    if (data)
        assert_int_equal(peer_sendf(&f->peer,
                                    "{\"event\": \"%s\", \"data\": %s, \"timestamp\": {\"seconds\": 1700000000, "
                                    "\"microseconds\": 5}}\r\n", name, data), 0);
    else
        assert_int_equal(peer_sendf(&f->peer,
                                    "{\"event\": \"%s\", \"timestamp\": {\"seconds\": 1700000000, "
                                    "\"microseconds\": 5}}\r\n", name), 0);
    drain(f);
}

SUP_TEST_FN void shutdown_event(struct fx *f, const char *reason)
{
    char data[128];
    snprintf(data, sizeof(data), "{\"guest\": %s, \"reason\": \"%s\"}", strncmp(reason, "guest", 5) ? "false" : "true",
             reason);
    event(f, "SHUTDOWN", data);
}

/* The supervisor's next command must be `cmd`; it is answered with {}. */
SUP_TEST_FN void expect(struct fx *f, const char *cmd)
{
    if (!peer_answer(&f->peer, f->s->qmp, cmd, "{}"))
        fail_msg("expected the supervisor to send %s: %s", cmd, f->peer.failure);
    drain(f);
}

/* ... and its arguments must contain `key` with the string or integer value given. */
SUP_TEST_FN void expect_arg(struct fx *f, const char *cmd, const char *key, const char *value)
{
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = peer_recv_cmd(&f->peer, f->s->qmp, cmd, &id);
    if (!c)
        fail_msg("expected the supervisor to send %s: %s", cmd, f->peer.failure);
    json_object *args, *v;
    if (!json_object_object_get_ex(c, "arguments", &args) || !json_object_object_get_ex(args, key, &v) ||
        strcmp(json_object_get_string(v), value) != 0)
        fail_msg("%s: expected %s=%s in %s", cmd, key, value, json_object_to_json_string(c));
    assert_int_equal(peer_sendf(&f->peer, "{\"return\": {}, \"id\": \"%s\"}\r\n", id), 0);
    drain(f);
}

/* Nothing more was sent to QEMU (within 50 ms). */
SUP_TEST_FN void expect_nothing(struct fx *f)
{
    drain(f);
    struct pollfd p = {.fd = f->peer.fd, .events = POLLIN};
    if (f->peer.in.len || poll(&p, 1, 50) > 0) {
        char buf[512] = "";
        ssize_t n = f->peer.in.len ? 0 : recv(f->peer.fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
        if (n > 0)
            buf[n] = '\0';
        fail_msg("the supervisor sent QEMU something unexpected: %.*s%s", (int)f->peer.in.len,
                 f->peer.in.p ? f->peer.in.p : "", buf);
    }
}

/* The stand-in QEMU exits with `status` and the supervisor notices, as on its pidfd. */
SUP_TEST_FN void qemu_exits(struct fx *f, int status)
{
    unsigned char st = (unsigned char)status;
    assert_int_equal(write(f->child_ctl, &st, 1), 1);
    assert_true(child_dead(f->child));
    sup_test_qemu_gone(f->s);
}

SUP_TEST_FN void qemu_killed(struct fx *f, int sig)
{
    assert_int_equal(kill(f->child, sig), 0);
    assert_true(child_dead(f->child));
    sup_test_qemu_gone(f->s);
}

#endif
