/* Test helper: a monitor connection that drops with an answer in flight, made on
 * purpose. `sock_drop PID SUFFIX SECONDS` finds process PID's connected unix socket
 * whose peer's address ends with SUFFIX (qmp.sock: the supervisor's QMP
 * connection), waits up to SECONDS until something is waiting to be read on it
 * (QEMU's answer), reads all of it away (printed on stdout: the process never sees
 * it) and shuts the socket down, as a connection lost at that instant would be.
 * The process is meant to be stopped (SIGSTOP) meanwhile. Exit 1 when there is no
 * such socket or nothing came in time. Uses pidfd_getfd (Linux 5.6, ptrace rights). */
#include <errno.h>
#include <dirent.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

static int find_socket(int pidfd, int pid, const char *suffix)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/fd", pid);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *de;
    int found = -1;
    while (found < 0 && (de = readdir(d))) {
        char path[320], link[128];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        if (strncmp(link, "socket:", 7) != 0)
            continue;
        int fd = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(de->d_name), 0);
        if (fd < 0)
            continue;
        struct sockaddr_un a;
        socklen_t len = sizeof(a);
        memset(&a, 0, sizeof(a));
        size_t sl = strlen(suffix);
        if (getpeername(fd, (struct sockaddr *)&a, &len) == 0 && a.sun_family == AF_UNIX &&
            len > offsetof(struct sockaddr_un, sun_path)) {
            size_t pl = strnlen(a.sun_path, len - offsetof(struct sockaddr_un, sun_path));
            if (pl >= sl && strncmp(a.sun_path + pl - sl, suffix, sl) == 0) {
                found = fd;
                continue;
            }
        }
        close(fd);
    }
    closedir(d);
    return found;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: sock_drop PID SUFFIX SECONDS\n");
        return 2;
    }
    int pid = atoi(argv[1]);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        perror("sock_drop: pidfd_open");
        return 1;
    }
    int fd = find_socket(pidfd, pid, argv[2]);
    if (fd < 0) {
        fprintf(stderr, "sock_drop: process %d has no socket connected to *%s\n", pid, argv[2]);
        return 1;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, atoi(argv[3]) * 1000) <= 0) {
        fprintf(stderr, "sock_drop: nothing came in %s s\n", argv[3]);
        return 1;
    }
    usleep(200 * 1000);     /* whatever QEMU sends with it (events) goes too */
    char buf[65536];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    if (shutdown(fd, SHUT_RDWR) < 0) {
        perror("sock_drop: shutdown");
        return 1;
    }
    return 0;
}
