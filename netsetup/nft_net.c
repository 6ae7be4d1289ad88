#include <arpa/inet.h>
#include <inttypes.h>
#include <string.h>

#include "netsetup/internal.h"
#include "netsetup/nft_internal.h"

const char *const netsetup_net_mode_names[] = {"nat", "isolated", "routed", NULL};

int nsnft_check_network(const char *network, struct qv_err *e)
{
    if (!network || !name_valid(network))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid network name", network ? network : "");
    return 0;
}

struct subnets {
    bool v4, v6;
    char net4[64], net6[64];    /* "10.77.0.0/24" */
    struct netsetup_cidr c4, c6;
};

static int read_subnets(const struct netsetup_net *net, struct subnets *s, struct qv_err *e)
{
    memset(s, 0, sizeof(*s));
    int r;
    if (net->ipv4) {
        if ((r = netsetup_cidr_parse(net->ipv4, &s->c4, e)) < 0)
            return qv_prefix(e, "%s: ipv4: ", net->name);
        if (s->c4.family != AF_INET)
            return qv_fail(e, -EINVAL, "%s: ipv4: \"%s\" is not an IPv4 address", net->name, net->ipv4);
        netsetup_cidr_network_str(&s->c4, s->net4, sizeof(s->net4));
        s->v4 = true;
    }
    if (net->ipv6) {
        if ((r = netsetup_cidr_parse(net->ipv6, &s->c6, e)) < 0)
            return qv_prefix(e, "%s: ipv6: ", net->name);
        if (s->c6.family != AF_INET6)
            return qv_fail(e, -EINVAL, "%s: ipv6: \"%s\" is not an IPv6 address", net->name, net->ipv6);
        netsetup_cidr_network_str(&s->c6, s->net6, sizeof(s->net6));
        s->v6 = true;
    }
    return 0;
}

static int check_forwards(const struct netsetup_net *net, const struct subnets *s, struct qv_err *e)
{
    if (net->nforwards && net->mode == NETSETUP_ISOLATED)
        return qv_fail(e, -EINVAL, "%s: port forwards need mode nat or routed, not isolated", net->name);
    for (size_t i = 0; i < net->nforwards; i++) {
        const struct netsetup_forward *f = &net->forwards[i];
        if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
            return qv_fail(e, -EINVAL, "%s: forwards[%zu]: protocol must be tcp or udp", net->name, i);
        if (!f->host_port || !f->guest_port)
            return qv_fail(e, -EINVAL, "%s: forwards[%zu]: port 0 is not valid", net->name, i);
        struct netsetup_cidr g;
        if (netsetup_cidr_parse(f->guest_ip, &g, e) < 0)
            return qv_prefix(e, "%s: forwards[%zu]: ", net->name, i);
        if (!s->v4 || g.family != AF_INET || g.prefix != 32 || !netsetup_cidr_contains(&s->c4, &g))
            return qv_fail(e, -EINVAL, "%s: forwards[%zu]: guest %s is not an IPv4 address inside %s",
                           net->name, i, f->guest_ip, s->v4 ? s->net4 : "the network (no ipv4)");
    }
    return 0;
}

static void forward_chain(struct buf *b, const struct netsetup_net *net, const struct subnets *s)
{
    const char *br = net->bridge;
    buf_printf(b, "  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    buf_printf(b, "    iifname \"%s\" oifname \"%s\" accept\n", br, br);
    for (int fam = 0; fam < 2; fam++) {
        if (!(fam ? s->v6 : s->v4))
            continue;
        const char *ip = fam ? "ip6" : "ip", *sub = fam ? s->net6 : s->net4;
        switch (net->mode) {
        case NETSETUP_NAT:
            buf_printf(b, "    oifname \"%s\" %s daddr %s ct state established,related accept\n", br, ip, sub);
            /* always there, so a forward added live (netsetup_nft_forward_add) needs only its dnat rules */
            if (!fam)
                buf_printf(b, "    oifname \"%s\" ip daddr %s ct status dnat accept\n", br, sub);
            buf_printf(b, "    iifname \"%s\" %s saddr %s accept\n", br, ip, sub);
            break;
        case NETSETUP_ROUTED:
            buf_printf(b, "    oifname \"%s\" %s daddr %s accept\n", br, ip, sub);
            buf_printf(b, "    iifname \"%s\" %s saddr %s accept\n", br, ip, sub);
            break;
        case NETSETUP_ISOLATED:
            break;
        }
    }
    /* reject rather than drop: a guest gets "unreachable" at once, not a timeout */
    buf_printf(b, "    iifname \"%s\" reject\n    oifname \"%s\" reject\n  }\n", br, br);
}

static void input_chain(struct buf *b, const struct netsetup_net *net, const struct subnets *s)
{
    const char *br = net->bridge;
    buf_printf(b, "  chain input {\n    type filter hook input priority filter; policy accept;\n");
    if (s->v4)
        buf_printf(b, "    iifname \"%s\" udp dport 67 accept\n", br);
    buf_printf(b, "    iifname \"%s\" meta l4proto { tcp, udp } th dport 53 accept\n", br);
    if (s->v6) {
        buf_printf(b, "    iifname \"%s\" udp dport 547 accept\n", br);
        buf_printf(b, "    iifname \"%s\" icmpv6 type { nd-router-solicit, nd-neighbor-solicit, "
                      "nd-neighbor-advert } accept\n", br);
    }
    if (net->mode == NETSETUP_ISOLATED)
        buf_printf(b, "    iifname \"%s\" ct state established,related accept\n"
                      "    iifname \"%s\" reject\n", br, br);
    buf_printf(b, "  }\n");
}

/* A forward's dnat rule, the same in prerouting_nat and output_nat; the comment is how
 * netsetup_nft_forward_remove() finds it again. */
static void forward_rule(struct buf *b, const struct netsetup_forward *f)
{
    const char *proto = f->proto == IPPROTO_TCP ? "tcp" : "udp";
    buf_printf(b, "fib daddr type local %s dport %u dnat ip to %s:%u comment \"" NETSETUP_FWD_COMMENT "%s/%u\"",
               proto, f->host_port, f->guest_ip, f->guest_port, proto, f->host_port);
}

/* output too, so the host itself can use its forwarded ports */
static const char *const fwd_hooks[][2] = {{"prerouting", "dstnat"}, {"output", "-100"}};

static void nat_chains(struct buf *b, const struct netsetup_net *net, const struct subnets *s)
{
    /* the dnat chains exist whenever forwards may (IPv4, not isolated), even empty, so
     * forwards come and go live as single rules */
    bool forwards = s->v4 && net->mode != NETSETUP_ISOLATED;
    if (forwards) {
        for (size_t h = 0; h < ARRAY_SIZE(fwd_hooks); h++) {
            buf_printf(b, "  chain %s_nat {\n    type nat hook %s priority %s; policy accept;\n",
                       fwd_hooks[h][0], fwd_hooks[h][0], fwd_hooks[h][1]);
            for (size_t i = 0; i < net->nforwards; i++) {
                buf_adds(b, "    ");
                forward_rule(b, &net->forwards[i]);
                buf_adds(b, "\n");
            }
            buf_printf(b, "  }\n");
        }
    }
    if (!forwards)
        return;
    buf_printf(b, "  chain postrouting_nat {\n    type nat hook postrouting priority srcnat; policy accept;\n");
    if (net->mode == NETSETUP_NAT)
        buf_printf(b, "    ip saddr %s ip daddr != { %s, 224.0.0.0/24, 255.255.255.255 } masquerade\n",
                   s->net4, s->net4);
    /* a guest reaching a forwarded port of the host that leads to its own network
     * must see the reply come back through the host */
    buf_printf(b, "    ip saddr %s ip daddr %s ct status dnat masquerade\n", s->net4, s->net4);
    buf_printf(b, "  }\n");
}

/* dnsmasq's DHCP replies leave with the checksum left to an offload that a tap does
 * not do; guests with strict clients drop them. UDP over IPv4 allows checksum 0. */
static void checksum_chain(struct buf *b, const struct netsetup_net *net, const struct subnets *s)
{
    if (!s->v4)
        return;
    buf_printf(b, "  chain postrouting_mangle {\n    type filter hook postrouting priority mangle; "
                  "policy accept;\n    oifname \"%s\" udp dport 68 udp checksum set 0\n  }\n", net->bridge);
}

int netsetup_nft_net_apply(struct netsetup_nft *n, const struct netsetup_net *net, struct qv_err *e)
{
    int r = nsnft_check_network(net->name, e);
    if (r < 0)
        return r;
    if (!netsetup_ifname_valid(net->bridge))
        return qv_fail(e, -EINVAL, "%s: \"%s\" is not a valid bridge name", net->name,
                       net->bridge ? net->bridge : "");
    if ((unsigned)net->mode > NETSETUP_ROUTED)
        return qv_fail(e, -EINVAL, "%s: unknown mode %d", net->name, (int)net->mode);
    struct subnets s;
    if ((r = read_subnets(net, &s, e)) < 0 || (r = check_forwards(net, &s, e)) < 0)
        return r;

    const char *t = net->name;
    struct buf b = {0};
    /* add+delete+add: replaces the inet table whether or not it existed, atomically */
    buf_printf(&b, "add table inet qvisor-%s\ndelete table inet qvisor-%s\ntable inet qvisor-%s {\n", t, t, t);
    forward_chain(&b, net, &s);
    input_chain(&b, net, &s);
    nat_chains(&b, net, &s);
    checksum_chain(&b, net, &s);
    buf_printf(&b, "}\n");
    /* The bridge table holds the NIC filters of running guests as set elements: only
     * its frame is (re)declared, the elements stay. */
    char bt[128];
    snprintf(bt, sizeof(bt), "qvisor-%s", t);
    nsnft_bridge_frame(&b, bt);
    char what[128];
    snprintf(what, sizeof(what), "%s: cannot apply network rules", t);
    r = netsetup_nft_run(n, what, b.p, e);
    buf_free(&b);
    return r;
}

int netsetup_nft_net_remove(struct netsetup_nft *n, const char *network, struct qv_err *e)
{
    int r = nsnft_check_network(network, e);
    if (r < 0)
        return r;
    char script[1024], what[128];
    /* the leading adds make the deletes succeed when a table is already gone */
    snprintf(script, sizeof(script),
             "add table inet qvisor-%s\ndelete table inet qvisor-%s\n"
             "add table bridge qvisor-%s\ndelete table bridge qvisor-%s\n",
             network, network, network, network);
    snprintf(what, sizeof(what), "%s: cannot remove network rules", network);
    nsnft_forget_network(n, network);
    return netsetup_nft_run(n, what, script, e);
}

static int forward_check(const char *network, const struct netsetup_forward *f, struct qv_err *e)
{
    struct in_addr a;
    if (f->proto != IPPROTO_TCP && f->proto != IPPROTO_UDP)
        return qv_fail(e, -EINVAL, "%s: a forward's protocol must be tcp or udp", network);
    if (!f->host_port || (f->guest_ip && !f->guest_port))
        return qv_fail(e, -EINVAL, "%s: port 0 is not valid for a forward", network);
    if (f->guest_ip && inet_pton(AF_INET, f->guest_ip, &a) != 1)
        return qv_fail(e, -EINVAL, "%s: forward guest \"%s\" is not an IPv4 address", network, f->guest_ip);
    return 0;
}

/* The handles of the forward's rules ("delete rule ..." lines appended to `script`). */
static int forward_handles(struct netsetup_nft *n, const char *network, const struct netsetup_forward *f,
                           struct buf *script, size_t *found, struct qv_err *e)
{
    char comment[64];
    snprintf(comment, sizeof(comment), NETSETUP_FWD_COMMENT "%s/%u", f->proto == IPPROTO_TCP ? "tcp" : "udp",
             f->host_port);
    for (size_t h = 0; h < ARRAY_SIZE(fwd_hooks); h++) {
        char cmd[160], what[160];
        snprintf(cmd, sizeof(cmd), "list chain inet qvisor-%s %s_nat", network, fwd_hooks[h][0]);
        snprintf(what, sizeof(what), "%s: cannot read its port forwards", network);
        _cleanup_json_ json_object *doc = NULL;
        int r = nsnft_list_json(n, what, cmd, &doc, e);
        if (r == -ENOENT)
            return qv_fail(e, -ENOENT, "network %s is not running, or it has no IPv4 forwarding (mode isolated)",
                           network);
        if (r < 0)
            return r;
        json_object *arr = nsnft_items(doc);
        for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
            json_object *rule, *c, *handle;
            if (!json_object_object_get_ex(json_object_array_get_idx(arr, i), "rule", &rule) ||
                !json_object_object_get_ex(rule, "comment", &c) || strcmp(json_object_get_string(c), comment) != 0 ||
                !json_object_object_get_ex(rule, "handle", &handle))
                continue;
            buf_printf(script, "delete rule inet qvisor-%s %s_nat handle %" PRId64 "\n", network, fwd_hooks[h][0],
                       json_object_get_int64(handle));
            (*found)++;
        }
    }
    return 0;
}

int netsetup_nft_forward_add(struct netsetup_nft *n, const char *network, const struct netsetup_forward *f,
                             struct qv_err *e)
{
    int r = nsnft_check_network(network, e);
    if (r < 0 || (r = forward_check(network, f, e)) < 0)
        return r;
    if (!f->guest_ip)
        return qv_fail(e, -EINVAL, "%s: a forward needs a guest address", network);
    struct buf b = {0};
    size_t found = 0;
    /* one transaction: an earlier forward of the same port is replaced, nothing else is touched */
    r = forward_handles(n, network, f, &b, &found, e);
    for (size_t h = 0; r == 0 && h < ARRAY_SIZE(fwd_hooks); h++) {
        buf_printf(&b, "add rule inet qvisor-%s %s_nat ", network, fwd_hooks[h][0]);
        forward_rule(&b, f);
        buf_adds(&b, "\n");
    }
    if (r == 0) {
        char what[128];
        snprintf(what, sizeof(what), "%s: cannot add port forward %u/%s", network, f->host_port,
                 f->proto == IPPROTO_TCP ? "tcp" : "udp");
        r = netsetup_nft_run(n, what, b.p, e);
    }
    buf_free(&b);
    return r;
}

int netsetup_nft_forward_remove(struct netsetup_nft *n, const char *network, const struct netsetup_forward *f,
                                struct qv_err *e)
{
    int r = nsnft_check_network(network, e);
    if (r < 0 || (r = forward_check(network, f, e)) < 0)
        return r;
    struct buf b = {0};
    size_t found = 0;
    r = forward_handles(n, network, f, &b, &found, e);
    if (r == 0 && found) {
        char what[128];
        snprintf(what, sizeof(what), "%s: cannot remove port forward %u/%s", network, f->host_port,
                 f->proto == IPPROTO_TCP ? "tcp" : "udp");
        r = netsetup_nft_run(n, what, b.p, e);
    }
    buf_free(&b);
    return r;
}
