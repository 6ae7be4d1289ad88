#include <string.h>
#include <linux/rtnetlink.h>


#include "netsetup/internal.h"

static void nladdr_cidr(struct nl_addr *a, struct netsetup_cidr *c)
{
    memset(c, 0, sizeof(*c));
    c->family = sym_nl_addr_get_family(a);
    unsigned len = sym_nl_addr_get_len(a);
    memcpy(c->addr, sym_nl_addr_get_binary_addr(a), len > 16 ? 16 : len);
    c->prefix = sym_nl_addr_get_prefixlen(a);
}

static void link_name(struct nl_cache *links, int ifindex, char *out, size_t outlen)
{
    if (ifindex <= 0 || !sym_rtnl_link_i2name(links, ifindex, out, outlen))
        snprintf(out, outlen, "?");
}

static int check_addresses(struct nlh *h, struct nl_cache *links, const struct netsetup_cidr *want,
                           const char *cidr, int ignore, struct qv_err *e)
{
    _cleanup_cache_ struct nl_cache *cache = NULL;
    int r = sym_rtnl_addr_alloc_cache(h->sk, &cache);
    if (r < 0)
        return qv_failerr(e, nlh_errno(h, r), "cannot list the host's addresses");
    for (struct nl_object *o = sym_nl_cache_get_first(cache); o; o = sym_nl_cache_get_next(o)) {
        struct rtnl_addr *a = (struct rtnl_addr *)o;
        struct nl_addr *local = sym_rtnl_addr_get_local(a);
        if (!local || sym_rtnl_addr_get_family(a) != want->family || sym_rtnl_addr_get_ifindex(a) == ignore)
            continue;
        struct netsetup_cidr have;
        nladdr_cidr(local, &have);
        have.prefix = (unsigned)sym_rtnl_addr_get_prefixlen(a);
        if (!netsetup_cidr_overlap(want, &have))
            continue;
        char addr[INET6_ADDRSTRLEN], dev[64];
        netsetup_cidr_addr_str(&have, addr, sizeof(addr));
        link_name(links, sym_rtnl_addr_get_ifindex(a), dev, sizeof(dev));
        return qv_fail(e, -EADDRINUSE, "%s overlaps address %s/%u on %s", cidr, addr, have.prefix, dev);
    }
    return 0;
}

static int check_routes(struct nlh *h, struct nl_cache *links, const struct netsetup_cidr *want,
                        const char *cidr, int ignore, struct qv_err *e)
{
    _cleanup_cache_ struct nl_cache *cache = NULL;
    int r = sym_rtnl_route_alloc_cache(h->sk, want->family, 0, &cache);
    if (r < 0)
        return qv_failerr(e, nlh_errno(h, r), "cannot list the host's routes");
    for (struct nl_object *o = sym_nl_cache_get_first(cache); o; o = sym_nl_cache_get_next(o)) {
        struct rtnl_route *rt = (struct rtnl_route *)o;
        struct nl_addr *dst = sym_rtnl_route_get_dst(rt);
        /* the local table repeats the addresses; a default route overlaps everything */
        if (!dst || sym_rtnl_route_get_table(rt) == RT_TABLE_LOCAL || sym_nl_addr_get_prefixlen(dst) == 0)
            continue;
        struct rtnl_nexthop *nh = sym_rtnl_route_nexthop_n(rt, 0);
        int ifindex = nh ? sym_rtnl_route_nh_get_ifindex(nh) : 0;
        if (ignore > 0 && ifindex == ignore)
            continue;
        struct netsetup_cidr have;
        nladdr_cidr(dst, &have);
        if (have.family != want->family || !netsetup_cidr_overlap(want, &have))
            continue;
        char net[64], dev[64];
        netsetup_cidr_network_str(&have, net, sizeof(net));
        link_name(links, ifindex, dev, sizeof(dev));
        return qv_fail(e, -EADDRINUSE, "%s overlaps route %s on %s", cidr, net, dev);
    }
    return 0;
}

int netsetup_subnet_check_host(const char *cidr, const char *ignore_link, struct qv_err *e)
{
    struct netsetup_cidr want;
    int r = netsetup_cidr_parse(cidr, &want, e);
    if (r < 0)
        return r;
    char shown[64];
    netsetup_cidr_network_str(&want, shown, sizeof(shown));
    _cleanup_nlh_ struct nlh h = {0};
    if ((r = nlh_open(&h, e)) < 0)
        return r;
    _cleanup_cache_ struct nl_cache *links = NULL;
    if ((r = sym_rtnl_link_alloc_cache(h.sk, AF_UNSPEC, &links)) < 0)
        return qv_failerr(e, nlh_errno(&h, r), "cannot list network interfaces");
    int ignore = ignore_link && *ignore_link ? sym_rtnl_link_name2i(links, ignore_link) : 0;
    if ((r = check_addresses(&h, links, &want, shown, ignore, e)) < 0)
        return r;
    return check_routes(&h, links, &want, shown, ignore, e);
}
