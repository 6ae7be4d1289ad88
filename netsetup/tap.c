#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <linux/if.h>
#include <linux/if_link.h>
#include <linux/if_tun.h>
#include <linux/rtnetlink.h>

#include "netsetup/internal.h"

static int check_queues(const char *name, unsigned queues, struct qv_err *e)
{
    if (queues < 1 || queues > NETSETUP_MAX_QUEUES)
        return qv_fail(e, -EINVAL, "%s: %u queues requested, 1-%d allowed", name, queues,
                       NETSETUP_MAX_QUEUES);
    return 0;
}

static int tun_flags(unsigned queues)
{
    return IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (queues > 1 ? IFF_MULTI_QUEUE : 0);
}

int netsetup_tap_open(const char *name, unsigned queues, int *fds, struct qv_err *e)
{
    if (!netsetup_ifname_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid tap name", name ? name : "");
    int r = check_queues(name, queues, e);
    if (r < 0)
        return r;
    if (netsetup_link_exists(name))
        return qv_failerr(e, -EEXIST, "%s: cannot create tap", name);
    for (unsigned i = 0; i < queues; i++)
        fds[i] = -1;
    _cleanup_fd_guard_ struct ns_fd_guard owned = {fds, queues};
    for (unsigned i = 0; i < queues; i++) {
        fds[i] = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        if (fds[i] < 0)
            return qv_failerr(e, -errno, "%s: cannot open /dev/net/tun", name);
        struct ifreq ifr = {0};
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
        ifr.ifr_flags = (short)tun_flags(queues);
        /* Deliberately no TUNSETPERSIST: the kernel deletes the tap when the last
         * queue fd closes, so a QEMU that exits or crashes takes its tap along. */
        if (ioctl(fds[i], TUNSETIFF, &ifr) < 0)
            return qv_failerr(e, -errno, "%s: cannot create tap (queue %u)", name, i);
    }
    owned.fds = NULL;
    return 0;
}

int netsetup_vhost_open(unsigned queues, int *fds, struct qv_err *e)
{
    int r = check_queues("vhost-net", queues, e);
    if (r < 0)
        return r;
    for (unsigned i = 0; i < queues; i++)
        fds[i] = -1;
    _cleanup_fd_guard_ struct ns_fd_guard owned = {fds, queues};
    for (unsigned i = 0; i < queues; i++) {
        fds[i] = open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
        if (fds[i] < 0)
            return qv_failerr(e, -errno, "vhost-net: /dev/vhost-net");
    }
    owned.fds = NULL;
    return 0;
}

int netsetup_macvtap_create(const char *name, const char *parent, enum netsetup_macvtap_mode mode,
                            const char *mac, struct qv_err *e)
{
    static const uint32_t modes[] = {
        [NETSETUP_MACVTAP_BRIDGE] = MACVLAN_MODE_BRIDGE,
        [NETSETUP_MACVTAP_VEPA] = MACVLAN_MODE_VEPA,
        [NETSETUP_MACVTAP_PRIVATE] = MACVLAN_MODE_PRIVATE,
        [NETSETUP_MACVTAP_PASSTHRU] = MACVLAN_MODE_PASSTHRU,
    };
    if (!netsetup_ifname_valid(name) || !netsetup_ifname_valid(parent))
        return qv_fail(e, -EINVAL, "macvtap \"%s\" on \"%s\": invalid interface name", name ? name : "",
                       parent ? parent : "");
    if ((unsigned)mode >= ARRAY_SIZE(modes))
        return qv_fail(e, -EINVAL, "%s: unknown macvtap mode %d", name, (int)mode);
    unsigned char hw[6];
    if (mac && !ns_mac_parse(mac, hw))
        return qv_fail(e, -EINVAL, "%s: \"%s\" is not a MAC address", name, mac);
    _cleanup_nlh_ struct nlh h = {0};
    int r = nlh_open(&h, e);
    if (r < 0)
        return r;
    _cleanup_link_ struct rtnl_link *lower = NULL;
    if ((r = nlh_get_link(&h, parent, &lower)) < 0)
        return qv_failerr(e, r, "%s: cannot create macvtap on %s", name, parent);
    _cleanup_nlmsg_ struct nl_msg *msg = nlh_newlink_msg(0, IFF_UP, IFF_UP, NLM_F_CREATE | NLM_F_EXCL);
    nlh_put_str(msg, IFLA_IFNAME, name);
    nlh_put_u32(msg, IFLA_LINK, (uint32_t)sym_rtnl_link_get_ifindex(lower));
    if (mac)
        nlh_put(msg, IFLA_ADDRESS, sizeof(hw), hw);
    struct nlattr *info = nlh_nest(msg, IFLA_LINKINFO);
    nlh_put_str(msg, IFLA_INFO_KIND, "macvtap");
    struct nlattr *data = nlh_nest(msg, IFLA_INFO_DATA);
    nlh_put_u32(msg, IFLA_MACVLAN_MODE, modes[mode]);
    sym_nla_nest_end(msg, data);
    sym_nla_nest_end(msg, info);
    if ((r = nlh_request(&h, msg)) < 0)
        return qv_failerr(e, r, "%s: cannot create macvtap on %s", name, parent);
    if (mode == NETSETUP_MACVTAP_PASSTHRU && mac) {
        /* passthru makes the macvtap inherit the parent's MAC at creation; only a
         * later change applies the guest's, and it goes to the parent as well */
        _cleanup_link_ struct rtnl_link *made = NULL;
        if ((r = nlh_get_link(&h, name, &made)) < 0)
            return qv_failerr(e, r, "%s: macvtap vanished after creation", name);
        _cleanup_nlmsg_ struct nl_msg *set = nlh_newlink_msg(sym_rtnl_link_get_ifindex(made), 0, 0, 0);
        nlh_put(set, IFLA_ADDRESS, sizeof(hw), hw);
        if ((r = nlh_request(&h, set)) < 0)
            return qv_failerr(e, r, "%s: cannot set MAC %s in passthru mode", name, mac);
    }
    return 0;
}

/* The macvtap's char device number as sysfs reports it, after making sure this
 * sysfs shows our network namespace (same ifindex under the same name). */
static int macvtap_devnum(const char *name, int ifindex, dev_t *out, struct qv_err *e)
{
    char path[256], v[32];
    snprintf(path, sizeof(path), "/sys/class/net/%s/ifindex", name);
    if (read_file_line(path, v, sizeof(v)) < 0 || atoi(v) != ifindex)
        return qv_fail(e, -ENODEV,
                       "%s: /sys does not show this network namespace's devices (sysfs must be "
                       "mounted from it)", name);
    snprintf(path, sizeof(path), "/sys/class/net/%s/macvtap/tap%d/dev", name, ifindex);
    int r = read_file_line(path, v, sizeof(v));
    if (r < 0)
        return qv_failerr(e, r, "%s: cannot read %s", name, path);
    unsigned maj, min;
    if (sscanf(v, "%u:%u", &maj, &min) != 2)
        return qv_fail(e, -EINVAL, "%s: %s: unexpected \"%s\"", name, path, v);
    *out = makedev(maj, min);
    return 0;
}

static int open_queues(const char *name, const char *node, unsigned queues, int *fds, struct qv_err *e)
{
    for (unsigned i = 0; i < queues; i++) {
        fds[i] = open(node, O_RDWR | O_CLOEXEC);
        if (fds[i] < 0)
            return qv_failerr(e, -errno, "%s: cannot open %s", name, node);
        struct ifreq ifr = {0};
        ifr.ifr_flags = (short)tun_flags(queues);
        if (ioctl(fds[i], TUNSETIFF, &ifr) < 0)
            return qv_failerr(e, -errno, "%s: cannot set queue flags on %s", name, node);
    }
    return 0;
}

/* A device node of our own in a fresh private directory, gone once opened. */
struct private_node {
    char dir[4096];
    char node[4200];
};
static void private_node_cleanup(struct private_node *p)
{
    if (p->node[0])
        unlink(p->node);
    if (p->dir[0])
        rmdir(p->dir);
}

int netsetup_macvtap_open(const char *name, unsigned queues, const char *node_dir, int *fds,
                          struct qv_err *e)
{
    if (!netsetup_ifname_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid macvtap name", name ? name : "");
    int r = check_queues(name, queues, e);
    if (r < 0)
        return r;
    struct netsetup_link_info info;
    if ((r = netsetup_link_get(name, &info, e)) < 0)
        return r;
    if (strcmp(info.kind, "macvtap") != 0)
        return qv_fail(e, -EINVAL, "%s: not a macvtap (%s)", name, info.kind[0] ? info.kind : "unknown kind");
    dev_t devnum = 0;
    if ((r = macvtap_devnum(name, info.ifindex, &devnum, e)) < 0)
        return r;
    for (unsigned i = 0; i < queues; i++)
        fds[i] = -1;
    _cleanup_fd_guard_ struct ns_fd_guard owned = {fds, queues};

    /* devtmpfs names nodes after the ifindex, which is only unique per network
     * namespace: /dev/tapN may belong to another namespace's macvtap. */
    char devpath[64];
    snprintf(devpath, sizeof(devpath), "/dev/tap%d", info.ifindex);
    struct stat st;
    if (stat(devpath, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == devnum) {
        if ((r = open_queues(name, devpath, queues, fds, e)) < 0)
            return r;
        owned.fds = NULL;
        return 0;
    }
    _cleanup_(private_node_cleanup) struct private_node p = {0};
    snprintf(p.dir, sizeof(p.dir), "%s/.qvisor-macvtap-XXXXXX", node_dir ? node_dir : "/dev");
    if (!mkdtemp(p.dir)) {
        r = -errno;
        p.dir[0] = '\0';
        return qv_failerr(e, r, "%s: cannot make a private directory under %s", name,
                          node_dir ? node_dir : "/dev");
    }
    snprintf(p.node, sizeof(p.node), "%s/tap%d", p.dir, info.ifindex);
    if (mknod(p.node, S_IFCHR | 0600, devnum) < 0) {
        r = qv_failerr(e, -errno, "%s: cannot create device node %s", name, p.node);
        p.node[0] = '\0';
        return r;
    }
    if ((r = open_queues(name, p.node, queues, fds, e)) < 0)
        return r;
    owned.fds = NULL;
    return 0;
}
