#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/if.h>
#include <linux/if_bridge.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>


#include "netsetup/internal.h"

static int check_name(const char *name, struct qv_err *e)
{
    if (!netsetup_ifname_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid interface name (1-15 of A-Z a-z 0-9 _ . -)",
                       name ? name : "");
    return 0;
}

/* Every call on a named link starts here: the name checked, then its own route
 * socket (one per call, so nothing is shared between the supervisor's threads of
 * work or outlives the call). `name` NULL: no name to check. */
static int link_begin(struct nlh *h, const char *name, struct qv_err *e)
{
    int r = name ? check_name(name, e) : 0;
    return r < 0 ? r : nlh_open(h, e);
}

int netsetup_link_get(const char *name, struct netsetup_link_info *out, struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, name, e);
    if (r < 0)
        return r;
    _cleanup_link_ struct rtnl_link *link = NULL;
    if ((r = nlh_get_link(&h, name, &link)) < 0)
        return qv_failerr(e, r, "%s", name);
    out->ifindex = sym_rtnl_link_get_ifindex(link);
    out->mtu = sym_rtnl_link_get_mtu(link);
    out->up = (sym_rtnl_link_get_flags(link) & IFF_UP) != 0;
    const char *kind = sym_rtnl_link_get_type(link);
    snprintf(out->kind, sizeof(out->kind), "%s", kind ? kind : "");
    struct nl_addr *mac = sym_rtnl_link_get_addr(link);
    if (mac && sym_nl_addr_get_len(mac) == 6)
        sym_nl_addr2str(mac, out->mac, sizeof(out->mac));
    int master = sym_rtnl_link_get_master(link);
    if (master > 0) {
        _cleanup_link_ struct rtnl_link *m = NULL;
        if (sym_rtnl_link_get_kernel(h.sk, master, NULL, &m) >= 0)
            snprintf(out->master, sizeof(out->master), "%s", sym_rtnl_link_get_name(m));
    }
    return 0;
}

bool netsetup_link_exists(const char *name)
{
    struct netsetup_link_info info;
    return netsetup_link_get(name, &info, NULL) == 0;
}

int netsetup_link_list(const char *prefix, struct strv *out, struct qv_err *e)
{
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, NULL, e);
    if (r < 0)
        return r;
    _cleanup_cache_ struct nl_cache *cache = NULL;
    if ((r = sym_rtnl_link_alloc_cache(h.sk, AF_UNSPEC, &cache)) < 0)
        return qv_failerr(e, nlh_errno(&h, r), "cannot list network interfaces");
    for (struct nl_object *o = sym_nl_cache_get_first(cache); o; o = sym_nl_cache_get_next(o)) {
        const char *name = sym_rtnl_link_get_name((struct rtnl_link *)o);
        if (name && str_startswith(name, prefix ? prefix : ""))
            strv_push(out, name);
    }
    strv_sort(out);
    return 0;
}

int netsetup_link_delete(const char *name, struct qv_err *e)
{
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, name, e);
    if (r < 0)
        return r;
    _cleanup_link_ struct rtnl_link *link = sym_rtnl_link_alloc();
    if (!link)
        abort();
    sym_rtnl_link_set_name(link, name);
    if ((r = sym_rtnl_link_delete(h.sk, link)) < 0)
        return qv_failerr(e, nlh_errno(&h, r), "%s: cannot delete", name);
    return 0;
}

/* One RTM_NEWLINK on an existing link. */
static int change_link(struct nlh *h, const char *name, unsigned mtu, int master, bool set_up)
{
    _cleanup_link_ struct rtnl_link *link = NULL;
    int r = nlh_get_link(h, name, &link);
    if (r < 0)
        return r;
    _cleanup_nlmsg_ struct nl_msg *msg =
        nlh_newlink_msg(sym_rtnl_link_get_ifindex(link), set_up ? IFF_UP : 0, set_up ? IFF_UP : 0, 0);
    if (mtu)
        nlh_put_u32(msg, IFLA_MTU, mtu);
    if (master > 0)
        nlh_put_u32(msg, IFLA_MASTER, (uint32_t)master);
    return nlh_request(h, msg);
}

int netsetup_link_set_mtu(const char *name, unsigned mtu, struct qv_err *e)
{
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, name, e);
    if (r < 0)
        return r;
    if (mtu == 0)
        return qv_fail(e, -EINVAL, "%s: MTU 0 is not valid", name);
    if ((r = change_link(&h, name, mtu, 0, false)) < 0)
        return qv_failerr(e, r, "%s: cannot set MTU %u", name, mtu);
    return 0;
}

int netsetup_link_set_up(const char *name, bool up, struct qv_err *e)
{
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, name, e);
    if (r < 0)
        return r;
    _cleanup_link_ struct rtnl_link *link = NULL;
    if ((r = nlh_get_link(&h, name, &link)) < 0)
        return qv_failerr(e, r, "%s", name);
    _cleanup_nlmsg_ struct nl_msg *msg =
        nlh_newlink_msg(sym_rtnl_link_get_ifindex(link), up ? IFF_UP : 0, IFF_UP, 0);
    if ((r = nlh_request(&h, msg)) < 0)
        return qv_failerr(e, r, "%s: cannot bring %s", name, up ? "up" : "down");
    return 0;
}

int netsetup_link_attach(const char *name, const char *bridge, struct qv_err *e)
{
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, name, e);
    if (r < 0 || (r = check_name(bridge, e)) < 0)
        return r;
    _cleanup_link_ struct rtnl_link *br = NULL;
    if ((r = nlh_get_link(&h, bridge, &br)) < 0)
        return qv_failerr(e, r, "%s: cannot attach to bridge %s", name, bridge);
    const char *kind = sym_rtnl_link_get_type(br);
    if (!kind || strcmp(kind, "bridge") != 0)
        return qv_fail(e, -EINVAL, "%s: cannot attach to %s: not a bridge", name, bridge);
    /* A port whose MTU differs from its bridge's drops the guest's large frames
     * silently (or lowers the bridge's MTU for everyone), so the port follows. */
    /* A bridge port needs no addresses of its own; without this every tap would get
     * an IPv6 link-local address, duplicate address detection and MLD reports. */
    char path[128];
    snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/disable_ipv6", name);
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0)
        (void)write_all(fd, "1\n", 2);
    if ((r = change_link(&h, name, sym_rtnl_link_get_mtu(br), sym_rtnl_link_get_ifindex(br), true)) < 0)
        return qv_failerr(e, r, "%s: cannot attach to bridge %s", name, bridge);
    return 0;
}

static void bridge_mac(const char *name, unsigned char mac[6])
{
    uint64_t h = fnv1a64(name, strlen(name), FNV1A64_INIT);
    /* locally administered, unicast; "qv" in the second and third byte */
    mac[0] = 0x02;
    mac[1] = 0x71;
    mac[2] = 0x76;
    mac[3] = (unsigned char)(h >> 16);
    mac[4] = (unsigned char)(h >> 8);
    mac[5] = (unsigned char)h;
}

/* IFLA_LINKINFO { kind "bridge", data { attr = value } } */
static void put_bridge_option(struct nl_msg *msg, int attr, uint32_t value)
{
    struct nlattr *info = nlh_nest(msg, IFLA_LINKINFO);
    nlh_put_str(msg, IFLA_INFO_KIND, "bridge");
    struct nlattr *data = nlh_nest(msg, IFLA_INFO_DATA);
    nlh_put_u32(msg, attr, value);
    sym_nla_nest_end(msg, data);
    sym_nla_nest_end(msg, info);
}

int netsetup_bridge_create(const char *name, unsigned mtu, unsigned flags, struct qv_err *e)
{
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, name, e);
    if (r < 0)
        return r;
    _cleanup_link_ struct rtnl_link *old = NULL;
    r = nlh_get_link(&h, name, &old);
    if (r < 0 && r != -ENODEV)
        return qv_failerr(e, r, "%s: cannot create bridge", name);
    int ifindex = 0;
    if (old) {
        if (!(flags & NETSETUP_ADOPT))
            return qv_failerr(e, -EEXIST, "%s: cannot create bridge", name);
        const char *kind = sym_rtnl_link_get_type(old);
        if (!kind || strcmp(kind, "bridge") != 0)
            return qv_fail(e, -EEXIST, "%s: cannot create bridge: a %s link of that name exists", name,
                           kind ? kind : "non-bridge");
        ifindex = sym_rtnl_link_get_ifindex(old);
    }
    unsigned char mac[6];
    bridge_mac(name, mac);
    /* STP off in the first message and forward delay in a second one: the kernel
     * checks the delay against STP's minimum while STP may still be on (adopted). */
    _cleanup_nlmsg_ struct nl_msg *msg =
        nlh_newlink_msg(ifindex, IFF_UP, IFF_UP, ifindex ? 0 : NLM_F_CREATE | NLM_F_EXCL);
    if (!ifindex)
        nlh_put_str(msg, IFLA_IFNAME, name);
    if (mtu)
        nlh_put_u32(msg, IFLA_MTU, mtu);
    nlh_put(msg, IFLA_ADDRESS, sizeof(mac), mac);
    put_bridge_option(msg, IFLA_BR_STP_STATE, 0);
    if ((r = nlh_request(&h, msg)) < 0)
        return qv_failerr(e, r, "%s: cannot %s bridge", name, ifindex ? "configure" : "create");
    if (!ifindex) {
        _cleanup_link_ struct rtnl_link *made = NULL;
        if ((r = nlh_get_link(&h, name, &made)) < 0)
            return qv_failerr(e, r, "%s: bridge vanished after creation", name);
        ifindex = sym_rtnl_link_get_ifindex(made);
    }
    _cleanup_nlmsg_ struct nl_msg *delay = nlh_newlink_msg(ifindex, 0, 0, 0);
    put_bridge_option(delay, IFLA_BR_FORWARD_DELAY, 0);
    if ((r = nlh_request(&h, delay)) < 0)
        return qv_failerr(e, r, "%s: cannot set forward delay 0", name);
    return 0;
}

int netsetup_addr_add(const char *link_name, const char *cidr, struct qv_err *e)
{
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, link_name, e);
    if (r < 0)
        return r;
    struct netsetup_cidr c;
    if ((r = netsetup_cidr_parse(cidr, &c, e)) < 0)
        return qv_prefix(e, "%s: ", link_name);
    _cleanup_link_ struct rtnl_link *link = NULL;
    if ((r = nlh_get_link(&h, link_name, &link)) < 0)
        return qv_failerr(e, r, "%s: cannot add address %s", link_name, cidr);
    struct rtnl_addr *addr = sym_rtnl_addr_alloc();
    if (!addr)
        abort();
    _cleanup_nladdr_ struct nl_addr *local =
        sym_nl_addr_build(c.family, c.addr, c.family == AF_INET ? 4 : 16);
    _cleanup_nladdr_ struct nl_addr *bcast = NULL;
    sym_nl_addr_set_prefixlen(local, (int)c.prefix);
    sym_rtnl_addr_set_ifindex(addr, sym_rtnl_link_get_ifindex(link));
    sym_rtnl_addr_set_local(addr, local);
    sym_rtnl_addr_set_prefixlen(addr, (int)c.prefix);
    if (c.family == AF_INET && c.prefix < 31) {
        unsigned char b[4];
        memcpy(b, c.addr, 4);
        for (unsigned bit = c.prefix; bit < 32; bit++)
            b[bit / 8] |= (unsigned char)(0x80 >> (bit % 8));
        bcast = sym_nl_addr_build(AF_INET, b, 4);
        sym_rtnl_addr_set_broadcast(addr, bcast);
    }
    if (c.family == AF_INET6)
        sym_rtnl_addr_set_flags(addr, IFA_F_NODAD);
    h.kernel_err = 0;
    r = sym_rtnl_addr_add(h.sk, addr, 0);
    sym_rtnl_addr_put(addr);
    if (r < 0) {
        r = nlh_errno(&h, r);
        if (r == -EEXIST)
            return 0;
        return qv_failerr(e, r, "%s: cannot add address %s", link_name, cidr);
    }
    return 0;
}

/* RTM_SETLINK (add) or RTM_DELLINK (remove) of one VLAN on a bridge port, AF_BRIDGE. */
static int port_vlan_msg(struct nlh *h, int ifindex, int type, uint16_t vid, uint16_t flags)
{
    _cleanup_nlmsg_ struct nl_msg *msg = sym_nlmsg_alloc_simple(type, NLM_F_REQUEST | NLM_F_ACK);
    if (!msg)
        abort();
    struct ifinfomsg ifi = {.ifi_family = AF_BRIDGE, .ifi_index = ifindex};
    if (sym_nlmsg_append(msg, &ifi, sizeof(ifi), NLMSG_ALIGNTO) < 0)
        abort();
    struct nlattr *spec = nlh_nest(msg, IFLA_AF_SPEC);
    struct bridge_vlan_info info = {.flags = flags, .vid = vid};
    nlh_put(msg, IFLA_BRIDGE_VLAN_INFO, sizeof(info), &info);
    sym_nla_nest_end(msg, spec);
    return nlh_request(h, msg);
}

static int bridge_sysfs_u(const char *bridge, const char *attr, unsigned *out)
{
    char path[128], s[32];
    snprintf(path, sizeof(path), "/sys/class/net/%s/bridge/%s", bridge, attr);
    int r = read_file_line(path, s, sizeof(s));
    if (r < 0)
        return r;
    *out = (unsigned)strtoul(s, NULL, 0);
    return 0;
}

int netsetup_port_vlan(const char *port, const char *bridge, unsigned vid, bool own_bridge, struct qv_err *e)
{
    if (vid < 1 || vid > 4094)
        return qv_fail(e, -EINVAL, "%s: VLAN %u is not 1-4094", port ? port : "", vid);
    _cleanup_nlh_ struct nlh h = {0};
    int r = link_begin(&h, port, e);
    if (r < 0 || (r = check_name(bridge, e)) < 0)
        return r;
    unsigned filtering = 0, dflt = 1;
    char brdir[96];
    snprintf(brdir, sizeof(brdir), "/sys/class/net/%s/bridge", bridge);
    if ((r = bridge_sysfs_u(bridge, "vlan_filtering", &filtering)) == -ENOENT && path_exists(brdir))
        return qv_fail(e, -EOPNOTSUPP, "%s: VLAN %u: this kernel's bridges cannot filter VLANs (it was built without "
                                       "CONFIG_BRIDGE_VLAN_FILTERING)", port, vid);
    if (r < 0)
        return qv_failerr(e, r, "%s: cannot read the VLAN filtering of bridge %s", port, bridge);
    if (!filtering && !own_bridge)
        return qv_fail(e, -EINVAL, "%s: bridge %s does not filter VLANs, so a VLAN tag would not isolate anything "
                                   "(turn it on: ip link set %s type bridge vlan_filtering 1)", port, bridge, bridge);
    _cleanup_link_ struct rtnl_link *br = NULL, *pl = NULL;
    if ((r = nlh_get_link(&h, bridge, &br)) < 0 || (r = nlh_get_link(&h, port, &pl)) < 0)
        return qv_failerr(e, r, "%s: VLAN %u on bridge %s", port, vid, bridge);
    if (!filtering) {
        /* a bridge qvisor made: its other ports keep the default VLAN, untagged, as before */
        _cleanup_nlmsg_ struct nl_msg *msg = nlh_newlink_msg(sym_rtnl_link_get_ifindex(br), 0, 0, 0);
        struct nlattr *info = nlh_nest(msg, IFLA_LINKINFO);
        nlh_put_str(msg, IFLA_INFO_KIND, "bridge");
        struct nlattr *data = nlh_nest(msg, IFLA_INFO_DATA);
        uint8_t on = 1;
        nlh_put(msg, IFLA_BR_VLAN_FILTERING, sizeof(on), &on);
        sym_nla_nest_end(msg, data);
        sym_nla_nest_end(msg, info);
        if ((r = nlh_request(&h, msg)) < 0)
            return qv_failerr(e, r, "%s: cannot turn on VLAN filtering", bridge);
    }
    bridge_sysfs_u(bridge, "default_pvid", &dflt);
    int ifindex = sym_rtnl_link_get_ifindex(pl);
    /* access port: frames from the guest join vid, frames of vid leave untagged */
    if ((r = port_vlan_msg(&h, ifindex, RTM_SETLINK, (uint16_t)vid, BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED)) < 0)
        return qv_failerr(e, r, "%s: cannot make it a port of VLAN %u", port, vid);
    if (dflt && dflt != vid && (r = port_vlan_msg(&h, ifindex, RTM_DELLINK, (uint16_t)dflt, 0)) < 0 && r != -ENOENT)
        return qv_failerr(e, r, "%s: cannot take it out of the default VLAN %u", port, dflt);
    return 0;
}
