/* sd_notify on the socket systemd names in NOTIFY_SOCKET: one datagram per message. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stddef.h>
#include <sys/socket.h>

#include "launcher/supervisor/internal.h"

void notify_init(struct notify *n)
{
    memset(n, 0, sizeof(*n));
    n->fd = -1;
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof(n->addr.sun_path))
        return;
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0)
        return;
    n->addr.sun_family = AF_UNIX;
    size_t len = strlen(path);
    memcpy(n->addr.sun_path, path, len);
    if (path[0] == '@')
        n->addr.sun_path[0] = '\0';     /* abstract namespace */
    n->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    const char *wd = getenv("WATCHDOG_USEC"), *wdpid = getenv("WATCHDOG_PID");
    if (wd && (!wdpid || atoi(wdpid) == getpid())) {
        uint64_t usec = strtoull(wd, NULL, 10);
        if (usec >= 2000)
            n->watchdog_ms = usec / 2000;   /* ping at half the interval */
    }
    n->next_ping = n->watchdog_ms ? monotonic_ms() : 0;
    /* children (QEMU) must not talk to systemd on our behalf */
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

void notify_send(struct notify *n, const char *msg)
{
    if (n->fd < 0)
        return;
    /* a lost notification is not worth failing a VM over */
    if (sendto(n->fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&n->addr, n->len) < 0)
        return;
}

void notify_close(struct notify *n)
{
    if (n->fd >= 0)
        close(n->fd);
    n->fd = -1;
}
