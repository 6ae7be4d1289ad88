/* Test helper: a hostile (or just raw) client of a supervisor's ctl.sock.
 *   ctl_probe SOCK request        sends stdin verbatim (add the newline yourself),
 *                                 prints the first reply line; exit 1 if none came
 *   ctl_probe SOCK hold N BYTES SECONDS
 *                                 opens N connections, pushes up to BYTES of one
 *                                 unfinished line into each, holds them SECONDS, and
 *                                 prints "connected=.. turned_away=.. dropped=.."
 *                                 (turned away: an error line and closed at once;
 *                                 dropped: closed later by the supervisor) */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>

/* hold mode connects without blocking: a listener that stopped accepting (full
 * backlog) must count as turning us away, not hang the test */
static int connect_to(const char *path, bool nonblock)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int do_request(const char *path)
{
    int fd = connect_to(path, false);
    if (fd < 0) {
        perror("ctl_probe: connect");
        return 2;
    }
    char buf[65536];
    ssize_t n;
    while ((n = read(0, buf, sizeof(buf))) > 0)
        if (write(fd, buf, (size_t)n) != n) {
            perror("ctl_probe: write");
            return 1;
        }
    /* one reply line, within 10 s */
    size_t len = 0;
    double end = now_s() + 10;
    while (now_s() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        n = read(fd, buf + len, sizeof(buf) - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        char *nl = strchr(buf, '\n');
        if (nl) {
            *nl = '\0';
            printf("%s\n", buf);
            return 0;
        }
    }
    fprintf(stderr, "ctl_probe: no reply line\n");
    return 1;
}

enum conn_state { OPEN, TURNED_AWAY, DROPPED };

static int do_hold(const char *path, int n, long bytes, int seconds)
{
    struct rlimit rl = {(rlim_t)n + 64, (rlim_t)n + 64};
    setrlimit(RLIMIT_NOFILE, &rl);
    int *fds = calloc((size_t)n, sizeof(int));
    long *sent = calloc((size_t)n, sizeof(long));
    enum conn_state *st = calloc((size_t)n, sizeof(*st));
    double *opened = calloc((size_t)n, sizeof(double));
    int connected = 0, refused = 0;
    static char chunk[65536];
    memset(chunk, 'x', sizeof(chunk));
    chunk[0] = '{';
    for (int i = 0; i < n; i++) {
        /* a full backlog (EAGAIN) gets 100 ms to drain before this one counts as refused */
        double give_up = now_s() + 0.1;
        while ((fds[i] = connect_to(path, true)) < 0 && errno == EAGAIN && now_s() < give_up)
            usleep(1000);
        if (fds[i] < 0) {
            refused++;
            st[i] = TURNED_AWAY;
            continue;
        }
        opened[i] = now_s();
        connected++;
    }
    double end = now_s() + seconds;
    while (now_s() < end) {
        for (int i = 0; i < n; i++) {
            if (fds[i] < 0 || st[i] != OPEN)
                continue;
            char in[4096];
            ssize_t r = recv(fds[i], in, sizeof(in) - 1, MSG_DONTWAIT);
            if (r >= 0) {
                in[r > 0 ? r : 0] = '\0';
                /* an error line right after connecting is "too many"; later, a drop */
                bool away = r > 0 && strstr(in, "too many") != NULL;
                st[i] = away ? TURNED_AWAY : DROPPED;
                continue;
            }
            if (sent[i] < bytes) {
                long want = bytes - sent[i] < (long)sizeof(chunk) ? bytes - sent[i] : (long)sizeof(chunk);
                ssize_t w = send(fds[i], chunk, (size_t)want, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (w > 0)
                    sent[i] += w;
                else if (w < 0 && errno != EAGAIN)
                    st[i] = DROPPED;
            }
        }
        usleep(20000);
    }
    int open_ = 0, away = refused, dropped = 0;
    for (int i = 0; i < n; i++) {
        if (fds[i] >= 0 && st[i] == OPEN)
            open_++;
        else if (fds[i] >= 0 && st[i] == TURNED_AWAY)
            away++;
        else if (st[i] == DROPPED)
            dropped++;
        if (fds[i] >= 0)
            close(fds[i]);
    }
    printf("connected=%d open=%d turned_away=%d dropped=%d\n", connected, open_, away, dropped);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[2], "request") == 0)
        return do_request(argv[1]);
    if (argc == 6 && strcmp(argv[2], "hold") == 0)
        return do_hold(argv[1], atoi(argv[3]), atol(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: ctl_probe SOCK request < LINES | ctl_probe SOCK hold N BYTES SECONDS\n");
    return 2;
}
