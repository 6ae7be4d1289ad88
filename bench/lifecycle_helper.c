/* Timing helper for bench/lifecycle: what bash cannot time to the millisecond.
 *
 *   lifecycle_helper time TIMEOUT_S OUT CMD [ARG...]
 *       runs CMD (stdin/stdout /dev/null, stderr to OUT), prints "MS STATUS"
 *       where MS is fork → reaped and STATUS the exit code (128+N for signal N)
 *   lifecycle_helper raw DIR HOLD_MS QEMU [ARG...]
 *       QEMU started by hand the way the supervisor starts it: every
 *       `-chardev socket,id=ID,fd=N,server=on,...` gets a listening unix socket
 *       DIR/ID.sock placed at fd N, stderr goes to DIR/qemu.log. The clock runs from
 *       before the sockets are bound until `cont` is answered over QMP. After HOLD_MS
 *       it sends SIGKILL and times kill → reaped. Prints "START_MS KILL_MS QEMU_RSS_KB".
 *
 * Bounded: every wait gives up after a timeout, and QEMU is killed on any failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define QMP_TIMEOUT_MS 30000
#define MAX_SOCKETS 8

static pid_t qemu_pid;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Ctrl-C or the bench's own cleanup: never leave the hand-started QEMU behind */
static void on_term(int sig)
{
    if (qemu_pid > 0)
        kill(qemu_pid, SIGKILL);
    _exit(128 + sig);
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lifecycle_helper: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (qemu_pid > 0) {
        kill(qemu_pid, SIGKILL);
        waitpid(qemu_pid, NULL, 0);
    }
    exit(1);
}

static void on_alarm(int sig)
{
    (void)sig;      /* only to interrupt waitpid */
}

/* Blocking waitpid (polling would add its period to the figure), bounded by an
 * alarm: the child is killed at the timeout and 124 returned. */
static int reap(pid_t pid, int timeout_ms)
{
    struct sigaction sa = {.sa_handler = on_alarm};     /* no SA_RESTART */
    sigaction(SIGALRM, &sa, NULL);
    alarm((unsigned)((timeout_ms + 999) / 1000));
    int st;
    pid_t r;
    if ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        alarm(0);
        return 124;
    }
    alarm(0);
    if (r != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int cmd_time(int argc, char **argv)
{
    if (argc < 5)
        die("usage: time TIMEOUT_S OUT CMD [ARG...]");
    int timeout_ms = atoi(argv[2]) * 1000;
    int out = open(argv[3], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (out < 0 || null < 0)
        die("%s: %s", argv[3], strerror(errno));
    double t0 = now_ms();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(out, 2);
        execvp(argv[4], argv + 4);
        _exit(127);
    }
    int code = reap(pid, timeout_ms);
    double ms = now_ms() - t0;
    printf("%.3f %d\n", ms, code);
    return 0;
}

/* ---- raw QEMU ---- */

struct sock_slot {
    char id[64];
    int target_fd;
    int fd;
};

static int bind_listen(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        die("%s: path too long for a unix socket", path);
    strcpy(sa.sun_path, path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 8) < 0)
        die("%s: %s", path, strerror(errno));
    return fd;
}

static int unix_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("connect %s: %s", path, strerror(errno));
    return fd;
}

/* `socket,id=ID,fd=N,...` → slot; other fd= arguments (disks) are not supported */
static void parse_sockets(int argc, char **argv, struct sock_slot *slots, int *nslots)
{
    for (int i = 0; i < argc; i++) {
        const char *fd = strstr(argv[i], "fd=");
        if (!fd || (fd != argv[i] && fd[-1] != ',' && fd[-1] != '"'))
            continue;
        if (strncmp(argv[i], "socket,", 7) != 0)
            die("argument %s passes an fd that is not a socket: the bench needs a definition without disks", argv[i]);
        const char *id = strstr(argv[i], "id=");
        if (!id || *nslots >= MAX_SOCKETS)
            die("argument %s: no id", argv[i]);
        struct sock_slot *s = &slots[(*nslots)++];
        size_t n = strcspn(id + 3, ",");
        snprintf(s->id, sizeof(s->id), "%.*s", (int)n, id + 3);
        s->target_fd = atoi(fd + 3);
        if (s->target_fd < 3 || s->target_fd > 64)
            die("argument %s: fd %d out of range", argv[i], s->target_fd);
    }
}

struct reader {
    int fd;
    char buf[65536];
    size_t len;
};

/* One JSON line from QMP; gives up at the deadline. */
static char *read_line(struct reader *r, double deadline)
{
    static char line[65536];
    for (;;) {
        char *nl = memchr(r->buf, '\n', r->len);
        if (nl) {
            size_t n = (size_t)(nl - r->buf);
            memcpy(line, r->buf, n);
            line[n] = '\0';
            memmove(r->buf, nl + 1, r->len - n - 1);
            r->len -= n + 1;
            return line;
        }
        if (r->len == sizeof(r->buf))
            die("QMP line too long");
        int left = (int)(deadline - now_ms());
        if (left <= 0)
            die("QMP: timed out");
        struct pollfd p = {.fd = r->fd, .events = POLLIN};
        int pr = poll(&p, 1, left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            die("QMP: timed out");
        ssize_t got = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            die("QMP: QEMU closed the connection (see its log)");
        r->len += (size_t)got;
    }
}

static void qmp_exec(struct reader *r, const char *cmd, double deadline)
{
    char req[128];
    int n = snprintf(req, sizeof(req), "{\"execute\": \"%s\"}\n", cmd);
    if (write(r->fd, req, (size_t)n) != n)
        die("QMP write: %s", strerror(errno));
    for (;;) {
        char *line = read_line(r, deadline);
        if (strstr(line, "\"return\""))
            return;
        if (strstr(line, "\"error\""))
            die("QMP %s: %s", cmd, line);
        /* an event: skip it */
    }
}

static long rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    long kb = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static int cmd_raw(int argc, char **argv)
{
    if (argc < 5)
        die("usage: raw DIR HOLD_MS QEMU [ARG...]");
    const char *dir = argv[2];
    int hold_ms = atoi(argv[3]);
    char **qargv = argv + 4;
    int qargc = argc - 4;
    /* LIFECYCLE_PHASES=1: also time fork → exec (through a close-on-exec pipe, which
     * the plain measurement leaves out so that it does exactly what a script would) */
    const char *ph = getenv("LIFECYCLE_PHASES");
    int phases = ph && strcmp(ph, "1") == 0;
    struct sock_slot slots[MAX_SOCKETS];
    int nslots = 0;
    parse_sockets(qargc, qargv, slots, &nslots);
    char path[4096];
    snprintf(path, sizeof(path), "%s/qemu.log", dir);
    int log = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (log < 0 || null < 0)
        die("%s: %s", path, strerror(errno));
    int execpipe[2] = {-1, -1};
    if (phases && pipe2(execpipe, O_CLOEXEC) < 0)
        die("pipe: %s", strerror(errno));
    int qmp_slot = -1;
    struct sigaction term = {.sa_handler = on_term};
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGHUP, &term, NULL);

    double t0 = now_ms();
    for (int i = 0; i < nslots; i++) {
        snprintf(path, sizeof(path), "%s/%s.sock", dir, slots[i].id);
        slots[i].fd = bind_listen(path);
        if (strcmp(slots[i].id, "qmp") == 0)
            qmp_slot = i;
    }
    if (qmp_slot < 0)
        die("the command line has no -chardev socket,id=qmp,fd=N");
    double t_fork = now_ms();
    qemu_pid = fork();
    if (qemu_pid < 0)
        die("fork: %s", strerror(errno));
    if (qemu_pid == 0) {
        /* lift every source above the targets first, so no dup2 clobbers another */
        int high[MAX_SOCKETS];
        for (int i = 0; i < nslots; i++)
            high[i] = fcntl(slots[i].fd, F_DUPFD_CLOEXEC, 100);
        dup2(null, 0);
        dup2(null, 1);
        dup2(log, 2);
        for (int i = 0; i < nslots; i++)
            dup2(high[i], slots[i].target_fd);
        execv(qargv[0], qargv);
        _exit(127);
    }
    double t_exec = 0;
    if (phases) {
        char c;
        close(execpipe[1]);
        while (read(execpipe[0], &c, 1) < 0 && errno == EINTR)
            ;
        t_exec = now_ms();
        close(execpipe[0]);
    }
    snprintf(path, sizeof(path), "%s/qemu.pid", dir);
    FILE *pf = fopen(path, "we");
    if (pf) {
        fprintf(pf, "%d\n", (int)qemu_pid);
        fclose(pf);
    }
    for (int i = 0; i < nslots; i++)
        close(slots[i].fd);
    snprintf(path, sizeof(path), "%s/qmp.sock", dir);
    struct reader *r = calloc(1, sizeof(*r));
    if (!r)
        die("out of memory");
    r->fd = unix_connect(path);
    double deadline = now_ms() + QMP_TIMEOUT_MS;
    char *greeting = read_line(r, deadline);
    if (!strstr(greeting, "\"QMP\""))
        die("QMP: unexpected greeting %s", greeting);
    double t_greeting = now_ms();
    qmp_exec(r, "qmp_capabilities", deadline);
    double t_caps = now_ms();
    qmp_exec(r, "cont", deadline);
    double t_cont = now_ms();
    double start_ms = t_cont - t0;

    if (hold_ms > 0)
        usleep((useconds_t)hold_ms * 1000);
    long rss = rss_kb(qemu_pid);
    double t1 = now_ms();
    kill(qemu_pid, SIGKILL);
    int code = reap(qemu_pid, 10000);
    double kill_ms = now_ms() - t1;
    qemu_pid = 0;
    close(r->fd);
    free(r);
    if (code != 128 + SIGKILL)
        die("QEMU exited with status %d before it was killed (see %s/qemu.log)", code, dir);
    printf("%.3f %.3f %ld", start_ms, kill_ms, rss);
    if (phases)
        printf(" bind=%.3f fork_exec=%.3f exec_greeting=%.3f capabilities=%.3f cont=%.3f", t_fork - t0,
               t_exec - t_fork, t_greeting - t_exec, t_caps - t_greeting, t_cont - t_caps);
    printf("\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "time") == 0)
        return cmd_time(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "raw") == 0)
        return cmd_raw(argc, argv);
    fprintf(stderr, "usage: lifecycle_helper time TIMEOUT_S OUT CMD [ARG...]\n"
                    "       lifecycle_helper raw DIR HOLD_MS QEMU [ARG...]\n");
    return 2;
}
