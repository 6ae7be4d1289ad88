/* Starting a supervisor in the background (`start`, `net start`, `create`): a
 * double fork and setsid so that it belongs to no terminal or shell, then a fresh
 * image of this program (`ps` shows "qvisor run NAME", nothing of the CLI lingers),
 * and a pipe on which it says "ok" once the guest runs, or why it could not start. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "launcher/supervisor/supervisor.h"

int supervisor_spawn(const struct qv_paths *paths, const char *const *args, int timeout_ms, const char *name,
                     struct qv_err *err)
{
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return qv_failerr(err, -errno, "pipe");
    pid_t pid = fork();
    if (pid < 0)
        return qv_failerr(err, -errno, "fork");
    if (pid == 0) {
        /* double fork + setsid: the supervisor belongs to no terminal and no shell */
        close(pipefd[0]);
        setsid();
        pid_t grandchild = fork();
        if (grandchild != 0)
            _exit(grandchild < 0 ? 1 : 0);
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        dup2(pipefd[1], 3);
        if (chdir("/") < 0)
            _exit(1);
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n <= 0)
            _exit(1);
        exe[n] = '\0';
        /* a fresh image: `ps` shows "qvisor run NAME", and nothing of this CLI lingers */
        const char *argv[16] = {exe, "--root", paths->root[0] ? paths->root : "/"};
        size_t k = 3;
        for (size_t i = 0; args[i] && k < ARRAY_SIZE(argv) - 3; i++)
            argv[k++] = args[i];
        argv[k++] = "--ready-fd";
        argv[k++] = "3";
        argv[k] = NULL;
        extern char **environ;
        execve(exe, (char *const *)argv, environ);
        _exit(127);
    }
    close(pipefd[1]);
    int st;
    waitpid(pid, &st, 0);
    struct buf in = {0};
    _cleanup_free_ char *line = NULL;
    struct qv_err e = {0};
    int r = ctl_read_line(pipefd[0], &in, timeout_ms, &line, &e);
    close(pipefd[0]);
    buf_free(&in);
    if (r == -ETIMEDOUT)
        return qv_fail(err, -ETIMEDOUT, "%s: not running after %d s; it goes on starting in the background "
                                            "(qvisor logs %s)", name, timeout_ms / 1000, name);
    if (r < 0)
        return qv_fail(err, -EIO, "%s: the supervisor exited before it was ready (see its log)", name);
    if (strcmp(line, "ok") != 0) {
        int code = -EIO, off = 0;
        if (sscanf(line, "error %d %n", &code, &off) < 1 || off == 0)
            return qv_fail(err, -EIO, "%s: %s", name, line);
        return qv_fail(err, code < 0 ? code : -EIO, "%s", line + off);
    }
    return 0;
}
