#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "netsetup/internal.h"

/* Sets a /proc/sys knob to "1" unless it already is, recording the change as
 * "net.ipv4.ip_forward: 0 -> 1". */
static int knob_on(const char *rel, struct strv *changes, struct qv_err *e)
{
    char path[256], old[64], name[256];
    snprintf(path, sizeof(path), "/proc/sys/%s", rel);
    snprintf(name, sizeof(name), "%s", rel);
    for (char *p = name; *p; p++)
        if (*p == '/')
            *p = '.';
    int r = read_file_line(path, old, sizeof(old));
    if (r < 0)
        return qv_failerr(e, r, "cannot read %s", path);
    if (strcmp(old, "1") == 0)
        return 0;
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write_all(fd, "1\n", 2) < 0)
        return qv_failerr(e, -errno, "cannot set %s to 1", name);
    if (changes)
        strv_pushf(changes, "%s: %s -> 1", name, old);
    return 0;
}

/* With forwarding on, an interface whose accept_ra is 1 ignores router
 * advertisements, so a host that got its IPv6 default route by SLAAC loses it
 * at the next expiry. Only 2 keeps it. */
static void warn_accept_ra(const char *ours, struct strv *changes)
{
    _cleanup_dir_ DIR *d = opendir("/proc/sys/net/ipv6/conf");
    if (!d || !changes)
        return;
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.' || strcmp(de->d_name, "all") == 0 || strcmp(de->d_name, "default") == 0 ||
            strcmp(de->d_name, "lo") == 0 || strcmp(de->d_name, ours) == 0)
            continue;
        char path[512], v[16];
        snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/accept_ra", de->d_name);
        if (read_file_line(path, v, sizeof(v)) == 0 && strcmp(v, "1") == 0)
            strv_pushf(changes,
                       "warning: %s has accept_ra=1 and now ignores router advertisements; "
                       "set net.ipv6.conf.%s.accept_ra=2 if it relies on them",
                       de->d_name, de->d_name);
    }
}

int netsetup_forwarding_enable(const char *ifname, int family, struct strv *changes, struct qv_err *e)
{
    if (!netsetup_ifname_valid(ifname))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid interface name", ifname ? ifname : "");
    char rel[128];
    int r;
    if (family == AF_INET || family == AF_UNSPEC) {
        if ((r = knob_on("net/ipv4/ip_forward", changes, e)) < 0)
            return r;
        snprintf(rel, sizeof(rel), "net/ipv4/conf/%s/forwarding", ifname);
        if ((r = knob_on(rel, changes, e)) < 0)
            return r;
    }
    if (family == AF_INET6 || family == AF_UNSPEC) {
        size_t before = changes ? changes->n : 0;
        if ((r = knob_on("net/ipv6/conf/all/forwarding", changes, e)) < 0)
            return r;
        snprintf(rel, sizeof(rel), "net/ipv6/conf/%s/forwarding", ifname);
        if ((r = knob_on(rel, changes, e)) < 0)
            return r;
        if (changes && changes->n > before)
            warn_accept_ra(ifname, changes);
    }
    return 0;
}
