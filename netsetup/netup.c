/* The few steps every caller takes in the same order, with the rollback each needs. */
#include <string.h>
#include <unistd.h>

#include "netsetup/internal.h"
#include "netsetup/nft_internal.h"

int netsetup_net_up(struct netsetup_nft *n, const struct netsetup_net *net, struct strv *log,
                    struct qv_err *e)
{
    int r = nsnft_check_network(net->name, e);
    if (r < 0)
        return r;
    bool existed = netsetup_link_exists(net->bridge);
    if ((r = netsetup_bridge_create(net->bridge, net->mtu, NETSETUP_ADOPT, e)) < 0)
        return qv_prefix(e, "%s: ", net->name);
    if (log)
        strv_pushf(log, "%s bridge %s", existed ? "reconfigured existing" : "created", net->bridge);
    const char *addrs[] = {net->ipv4, net->ipv6};
    for (size_t i = 0; i < ARRAY_SIZE(addrs); i++)
        if (addrs[i] && (r = netsetup_addr_add(net->bridge, addrs[i], e)) < 0)
            return qv_prefix(e, "%s: ", net->name);
    if (net->mode != NETSETUP_ISOLATED) {
        if (net->ipv4 && (r = netsetup_forwarding_enable(net->bridge, AF_INET, log, e)) < 0)
            return qv_prefix(e, "%s: ", net->name);
        if (net->ipv6 && (r = netsetup_forwarding_enable(net->bridge, AF_INET6, log, e)) < 0)
            return qv_prefix(e, "%s: ", net->name);
    }
    return netsetup_nft_net_apply(n, net, e);
}

int netsetup_net_down(struct netsetup_nft *n, const char *network, const char *bridge, struct qv_err *e)
{
    /* both halves are attempted: a failure of one must not leave the other behind */
    struct qv_err first = {0};
    int r = netsetup_nft_net_remove(n, network, &first);
    struct qv_err second = {0};
    int r2 = bridge ? netsetup_link_delete(bridge, &second) : 0;
    if (r2 == -ENODEV)
        r2 = 0;
    if (r < 0) {
        if (e)
            *e = first;
        return r;
    }
    if (r2 < 0 && e)
        *e = second;
    return r2;
}

int netsetup_nic_plug(struct netsetup_nft *n, const struct netsetup_nic *nic, int *fds, struct qv_err *e)
{
    if (nic->filter && !nic->network)
        return qv_fail(e, -EINVAL, "%s: a NIC filter needs a managed network", nic->tap ? nic->tap : "");
    int r = netsetup_tap_open(nic->tap, nic->queues, fds, e);
    if (r < 0)
        return r;
    /* closing the fds is the whole rollback: the tap is not persistent */
    _cleanup_fd_guard_ struct ns_fd_guard guard = {fds, nic->queues};
    if ((r = netsetup_link_attach(nic->tap, nic->bridge, e)) < 0)
        return r;
    if (nic->vlan && (r = netsetup_port_vlan(nic->tap, nic->bridge, nic->vlan, nic->own_bridge, e)) < 0)
        return r;
    if (nic->network && nic->filter)
        r = netsetup_nft_nic_apply(n, nic->network, nic->tap, nic->filter, e);
    else if (nic->network)
        /* a filter left by an earlier NIC of the same name would block this one */
        r = nsnft_nic_clear(n, nic->network, nic->tap, e);
    if (r < 0)
        return r;
    guard.fds = NULL;
    return 0;
}

int netsetup_nic_unplug(struct netsetup_nft *n, const char *network, const char *tap, struct qv_err *e)
{
    int r = network ? netsetup_nft_nic_remove(n, network, tap, e) : 0;
    if (r < 0)
        return r;
    r = netsetup_link_delete(tap, e);
    if (r == -ENODEV) {
        if (e)
            *e = (struct qv_err){0};
        r = 0;
    }
    return r;
}
