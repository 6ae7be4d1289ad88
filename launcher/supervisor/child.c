/* Programs the supervisor runs without waiting for them (`qvisor net start`, qemu-img):
 * started with an argv, their output kept in a pipe, reaped when SIGCHLD says so,
 * killed at their deadline, and killed with the supervisor (PR_SET_PDEATHSIG). */
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"

int sup_child_spawn(struct sup_child *c, const char *const *argv, int timeout_ms, struct qv_err *e)
{
    int po[2];
    if (pipe2(po, O_CLOEXEC) < 0)
        return qv_failerr(e, -errno, "%s: pipe", argv[0]);
    pid_t pid;
    int r = spawn_program(argv, po[1], po[1], false, &pid);
    close(po[1]);
    if (r < 0) {
        close(po[0]);
        return qv_failerr(e, r, "%s", argv[0]);
    }
    fd_set_nonblock(po[0], true);
    *c = (struct sup_child){.pid = pid, .out = po[0], .deadline = monotonic_ms() + (uint64_t)timeout_ms};
    return 0;
}

static void child_close(struct sup_child *c)
{
    if (c->out >= 0)
        close(c->out);
    *c = (struct sup_child){.out = -1};
}

int sup_child_reap(struct sup_child *c, int *status, char *out, size_t outlen)
{
    int st;
    if (c->pid <= 0 || waitpid(c->pid, &st, WNOHANG) != c->pid)
        return 0;
    /* its few lines wait in the pipe (a longer story blocks it until the deadline) */
    ssize_t n = outlen ? read(c->out, out, outlen - 1) : 0;
    if (outlen) {
        n = n > 0 ? n : 0;
        while (n && out[n - 1] == '\n')
            n--;
        out[n] = '\0';
    }
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    child_close(c);
    return 1;
}

void sup_child_expire(struct sup_child *c, uint64_t now)
{
    if (c->pid > 0 && c->deadline && now >= c->deadline) {
        kill(c->pid, SIGKILL);      /* its exit (SIGCHLD) reports the failure */
        c->deadline = 0;
    }
}

void sup_child_abort(struct sup_child *c)
{
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
    }
    child_close(c);
}
