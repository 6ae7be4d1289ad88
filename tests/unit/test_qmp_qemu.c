/* The QMP client against the real qemu-system-x86_64 (TCG, no guest): QEMU gets
 * one end of a socketpair as its monitor. Each test starts its own QEMU; the
 * teardown kills it whatever happened, and PR_SET_PDEATHSIG kills it if the test
 * process itself dies. */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "qmp/qmp.h"

#define QEMU_FD 3
#define WAIT_MS 10000

struct vm {
    pid_t pid;
    struct qmp *q;
    int resume, stop, shutdown, other;
    int bad_timestamps;     /* checked by the tests: cmocka must not jump out of a callback */
    char events[1024];
};

static void on_event(void *ctx, const char *event, json_object *data, uint64_t ts_us)
{
    (void)data;
    struct vm *vm = ctx;
    if (strcmp(event, "RESUME") == 0)
        vm->resume++;
    else if (strcmp(event, "STOP") == 0)
        vm->stop++;
    else if (strcmp(event, "SHUTDOWN") == 0)
        vm->shutdown++;
    else
        vm->other++;
    size_t len = strlen(vm->events);
    snprintf(vm->events + len, sizeof(vm->events) - len, "%s%s", len ? " " : "", event);
    /* QEMU stamps events with the host's wall clock */
    if (ts_us < 1000000000ull * 1000000ull)
        vm->bad_timestamps++;
}

static int setup(void **state)
{
    char exe[PATH_MAX];
    if (find_program("qemu-system-x86_64", exe, sizeof(exe)) < 0) {
        fprintf(stderr, "qemu-system-x86_64 not found\n");
        return -1;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    char chardev[64];
    snprintf(chardev, sizeof(chardev), "socket,id=qmp,fd=%d,server=off", QEMU_FD);
    const char *argv[] = {
        exe, "-machine", "pc", "-accel", "tcg", "-m", "64", "-nodefaults", "-no-user-config",
        "-display", "none", "-S", "-chardev", chardev, "-mon", "chardev=qmp,mode=control", NULL,
    };
    char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        /* only async-signal-safe calls from here on */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(126);
        if (sv[1] == QEMU_FD) {
            if (fcntl(QEMU_FD, F_SETFD, 0) < 0)
                _exit(126);
        } else if (dup2(sv[1], QEMU_FD) < 0) {
            _exit(126);
        }
        int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null < 0 || dup2(null, 0) < 0)
            _exit(126);
        execve(exe, (char *const *)argv, envp);
        _exit(127);
    }
    close(sv[1]);
    struct vm *vm = qv_xcalloc(1, sizeof(*vm));
    vm->pid = pid;
    vm->q = qmp_new(sv[0], QMP_MONITOR, on_event, vm);
    *state = vm;
    return vm->q ? 0 : -1;
}

static int teardown(void **state)
{
    struct vm *vm = *state;
    if (!vm)
        return 0;
    qmp_free(vm->q);
    if (vm->pid > 0) {
        kill(vm->pid, SIGKILL);
        while (waitpid(vm->pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    free(vm);
    return 0;
}

/* Runs the client's I/O until *counter reaches want, the deadline passes or the
 * connection closes. */
static int run_until(struct vm *vm, const int *counter, int want, int timeout_ms)
{
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    while (*counter < want) {
        uint64_t now = monotonic_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        uint32_t ev = qmp_poll_events(vm->q);
        struct pollfd p = {.fd = qmp_fd(vm->q),
                           .events = (short)(((ev & EPOLLIN) ? POLLIN : 0) | ((ev & EPOLLOUT) ? POLLOUT : 0))};
        int n = poll(&p, 1, (int)(deadline - now));
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0) {
            uint32_t got = ((p.revents & POLLIN) ? EPOLLIN : 0) | ((p.revents & POLLOUT) ? EPOLLOUT : 0) |
                           ((p.revents & (POLLHUP | POLLERR)) ? EPOLLHUP : 0);
            int r = qmp_handle_io(vm->q, got, NULL);
            if (r < 0)
                return *counter >= want ? 0 : r;
        }
        qmp_expire(vm->q, monotonic_ms());
    }
    return 0;
}

static json_object *call_ok(struct vm *vm, const char *cmd, json_object *args)
{
    struct qv_err e = {0};
    json_object *ret = NULL;
    int r = qmp_call(vm->q, cmd, args, NULL, 0, WAIT_MS, &ret, &e);
    if (r < 0)
        fail_msg("%s: %d %s", cmd, r, e.msg);
    assert_non_null(ret);
    return ret;
}

static json_object *member(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v))
        fail_msg("no \"%s\" in %s", key, json_object_to_json_string(o));
    return v;
}

static void handshake(struct vm *vm)
{
    struct qv_err e = {0};
    int r = qmp_handshake_sync(vm->q, WAIT_MS, &e);
    if (r < 0)
        fail_msg("handshake: %d %s", r, e.msg);
    assert_true(qmp_ready(vm->q));
}

static void assert_status(struct vm *vm, bool running, const char *status)
{
    _cleanup_json_ json_object *st = call_ok(vm, "query-status", NULL);
    assert_int_equal(json_object_get_boolean(member(st, "running")), running);
    assert_string_equal(json_object_get_string(member(st, "status")), status);
}

static void test_handshake_and_queries(void **state)
{
    struct vm *vm = *state;
    handshake(vm);

    /* the version from the greeting is the one the binary reports */
    _cleanup_free_ char *out = NULL;
    const char *argv[] = {"qemu-system-x86_64", "--version", NULL};
    assert_int_equal(run_program(argv, WAIT_MS, &out), 0);
    const char *v = strstr(out, "version ");
    assert_non_null(v);
    char want[48];
    snprintf(want, sizeof(want), "%s", qmp_qemu_version(vm->q));
    assert_int_not_equal(strlen(want), 0);
    assert_memory_equal(v + strlen("version "), want, strlen(want));

    assert_status(vm, false, "prelaunch");

    _cleanup_json_ json_object *kvm = call_ok(vm, "query-kvm", NULL);
    assert_false(json_object_get_boolean(member(kvm, "enabled")));

    _cleanup_json_ json_object *ver = call_ok(vm, "query-version", NULL);
    json_object *qemu = member(ver, "qemu");
    int major, minor, micro;
    qmp_qemu_version_numbers(vm->q, &major, &minor, &micro);
    assert_int_equal(json_object_get_int(member(qemu, "major")), major);
    assert_int_equal(json_object_get_int(member(qemu, "minor")), minor);
    assert_int_equal(json_object_get_int(member(qemu, "micro")), micro);

    /* QEMU's own errors come back with class and description */
    struct qv_err e = {0};
    assert_int_equal(qmp_call(vm->q, "no-such-command", NULL, NULL, 0, WAIT_MS, NULL, &e), -EOPNOTSUPP);
    assert_string_equal(e.msg, "CommandNotFound: The command no-such-command has not been found");
    json_object *args = json_object_new_object();
    json_object_object_add(args, "id", json_object_new_string("nope"));
    assert_int_equal(qmp_call(vm->q, "device_del", args, NULL, 0, WAIT_MS, NULL, &e), -ENOENT);
    assert_true(str_startswith(e.msg, "DeviceNotFound: "));
}

static void test_command_before_capabilities(void **state)
{
    struct vm *vm = *state;
    struct qv_err e = {0};
    int r = qmp_call(vm->q, "query-status", NULL, NULL, 0, WAIT_MS, NULL, &e);
    assert_int_equal(r, -EOPNOTSUPP);
    assert_string_equal(e.msg, "CommandNotFound: Expecting capabilities negotiation with 'qmp_capabilities'");
    assert_false(qmp_ready(vm->q));
    handshake(vm);
    assert_status(vm, false, "prelaunch");
}

static void test_cont_stop_events(void **state)
{
    struct vm *vm = *state;
    handshake(vm);
    json_object_put(call_ok(vm, "cont", NULL));
    assert_int_equal(run_until(vm, &vm->resume, 1, WAIT_MS), 0);
    assert_status(vm, true, "running");
    json_object_put(call_ok(vm, "stop", NULL));
    assert_int_equal(run_until(vm, &vm->stop, 1, WAIT_MS), 0);
    assert_status(vm, false, "paused");
    assert_int_equal(vm->resume, 1);
    assert_int_equal(vm->stop, 1);
    assert_int_equal(vm->bad_timestamps, 0);
}

static void test_quit_and_reap(void **state)
{
    struct vm *vm = *state;
    handshake(vm);
    json_object_put(call_ok(vm, "quit", NULL));
    /* then the SHUTDOWN event and the hang-up */
    assert_int_equal(run_until(vm, &vm->shutdown, 1, WAIT_MS), 0);
    int never = 0;
    assert_int_equal(run_until(vm, &never, 1, WAIT_MS), -ECONNRESET);
    assert_false(qmp_ready(vm->q));
    struct qv_err e = {0};
    assert_int_equal(qmp_call(vm->q, "query-status", NULL, NULL, 0, WAIT_MS, NULL, &e), -ECONNRESET);

    int status = 0;
    uint64_t deadline = monotonic_ms() + WAIT_MS;
    pid_t w;
    while ((w = waitpid(vm->pid, &status, WNOHANG)) == 0 && monotonic_ms() < deadline)
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    assert_int_equal(w, vm->pid);
    vm->pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static int temp_file(struct stat *st)
{
    int fd = open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 && fstat(fd, st) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static void test_fd_passing(void **state)
{
    struct vm *vm = *state;
    handshake(vm);
    struct stat st;
    _cleanup_close_ int file = temp_file(&st);
    assert_true(file >= 0);
    struct qv_err e = {0};

    json_object *args = json_object_new_object();
    json_object_object_add(args, "fdname", json_object_new_string("probe"));
    int r = qmp_call(vm->q, "getfd", args, &file, 1, WAIT_MS, NULL, &e);
    if (r < 0)
        fail_msg("getfd: %s", e.msg);
    /* closefd only succeeds for a name getfd really registered */
    args = json_object_new_object();
    json_object_object_add(args, "fdname", json_object_new_string("probe"));
    _cleanup_json_ json_object *closed = call_ok(vm, "closefd", args);

    args = json_object_new_object();
    json_object_object_add(args, "fdname", json_object_new_string("nothing"));
    assert_int_equal(qmp_call(vm->q, "getfd", args, NULL, 0, WAIT_MS, NULL, &e), -EIO);
    assert_non_null(strstr(e.msg, "SCM_RIGHTS"));

    /* add-fd tells which fd QEMU holds: it must be our file */
    args = json_object_new_object();
    json_object_object_add(args, "opaque", json_object_new_string("qvisor-test"));
    _cleanup_json_ json_object *added = NULL;
    r = qmp_call(vm->q, "add-fd", args, &file, 1, WAIT_MS, &added, &e);
    if (r < 0)
        fail_msg("add-fd: %s", e.msg);
    int qemu_fd = json_object_get_int(member(added, "fd"));
    char link[64];
    snprintf(link, sizeof(link), "/proc/%d/fd/%d", (int)vm->pid, qemu_fd);
    struct stat seen;
    assert_int_equal(stat(link, &seen), 0);
    assert_true(seen.st_ino == st.st_ino);
    assert_true(seen.st_dev == st.st_dev);
    _cleanup_json_ json_object *sets = call_ok(vm, "query-fdsets", NULL);
    assert_non_null(strstr(json_object_to_json_string(sets), "qvisor-test"));
}

/* QEMU answers input it cannot parse with an error that has no id: the command
 * that was waiting gets it, and the session carries on. */
static void test_unparsable_input(void **state)
{
    struct vm *vm = *state;
    handshake(vm);
    static const char junk[] = "{\"execute\": }\n";
    assert_int_equal(write_all(qmp_fd(vm->q), junk, sizeof(junk) - 1), 0);
    struct qv_err e = {0};
    assert_int_equal(qmp_call(vm->q, "query-status", NULL, NULL, 0, WAIT_MS, NULL, &e), -EIO);
    assert_true(str_startswith(e.msg, "GenericError: JSON parse error"));
    assert_status(vm, false, "prelaunch");
    assert_true(qmp_ready(vm->q));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_handshake_and_queries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_before_capabilities, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cont_stop_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quit_and_reap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fd_passing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unparsable_input, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
