/* Per-NIC filters in a network's bridge table, as elements of sets the network
 * declares once. Every set is keyed by the tap's name first ("qvt…" . its MAC, .
 * an address, . a protocol and port), and the rules that read them are the same for
 * every NIC: two base chains dispatch the filtered taps (sets out_taps, in_taps) to
 * the shared chains from_guest and to_guest. So a NIC adds, changes and removes only
 * elements, and the ruleset's chains and rules stay the same whatever the number of
 * NICs: libnftables 1.0.6 re-reads every chain and set of the ruleset before each
 * transaction, and the kernel validates the jumps of a table whenever a rule or a
 * verdict-map element changes, so per-NIC chains made every later NIC dearer.
 *
 * The sets are plain hashes. Port ranges are split into aligned blocks of 1, 16, 256
 * and 4096 ports, one set per block size matched through a mask, because libnftables
 * reads every element of an interval set before it deletes one of them.
 *
 * Replacing or removing a tap's filter needs its elements' keys. The context keeps
 * the ones it wrote (nsnft_known); when it does not know them, or the kernel says
 * they are not what it thought (a delete finds nothing, a create finds one), it reads
 * the network's sets once and starts over from what they hold. Every transaction is
 * all or nothing, so the kernel never holds half of a tap's filter. */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "netsetup/internal.h"
#include "netsetup/nft_internal.h"

#define KEY_PORT "ifname . inet_proto . inet_service"

/* Port blocks: 2^bits ports starting at a multiple of 2^bits. */
static const struct port_level {
    unsigned bits;
    const char *suffix, *mask;
} levels[] = {{0, "", ""}, {4, "_16", " & 0xfff0"}, {8, "_256", " & 0xff00"}, {12, "_4096", " & 0xf000"}};

/* The rules' other matches: a set per direction for each, keyed by the tap's name and
 * what the rule reads. Rules with addresses go to interval sets (prefixes, port
 * ranges: few elements, unlike the port blocks above), by family and by what else
 * they match: anything, a protocol's ports, an ICMP type. */
enum { SHAPE_ICMP, SHAPE_ICMPV6, SHAPE_NET4, SHAPE_NET6 = SHAPE_NET4 + 3 };
enum { NET_ANY, NET_PORT, NET_ICMP };     /* added to SHAPE_NET4 or SHAPE_NET6 */
static const struct shape {
    const char *suffix, *type, *match;
    bool interval;
} shapes[] = {
    {"_icmp", "icmp_type", "icmp type", false},
    {"_icmpv6", "icmpv6_type", "icmpv6 type", false},
    {"_net4", "ipv4_addr . ipv4_addr", "ip saddr . ip daddr", true},
    {"_net4_port", "ipv4_addr . ipv4_addr . inet_proto . inet_service", "ip saddr . ip daddr . meta l4proto . th dport", true},
    {"_net4_icmp", "ipv4_addr . ipv4_addr . icmp_type", "ip saddr . ip daddr . icmp type", true},
    {"_net6", "ipv6_addr . ipv6_addr", "ip6 saddr . ip6 daddr", true},
    {"_net6_port", "ipv6_addr . ipv6_addr . inet_proto . inet_service", "ip6 saddr . ip6 daddr . meta l4proto . th dport", true},
    {"_net6_icmp", "ipv6_addr . ipv6_addr . icmpv6_type", "ip6 saddr . ip6 daddr . icmpv6 type", true},
};

/* deny_out rules drop what the guest sends, allow_in rules accept what comes to it */
static const struct direction {
    const char *set, *ifname, *verdict;
} dirs[] = {{"deny_out", "iifname", "drop"}, {"allow_in", "oifname", "accept"}};

static const struct nic_set {
    const char *name, *type;
} nic_sets[] = {
    {"out_taps", "ifname"},             /* taps whose frames go through from_guest */
    {"in_taps", "ifname"},              /* taps whose inbound traffic goes through to_guest */
    {"tap_mac", "ifname . ether_addr"},
    {"tap_ipv4", "ifname . ipv4_addr"},
};

/* Whether `name` is one of the NIC sets (the fixed ones, or a direction's). */
static bool nic_set_name(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(nic_sets); i++)
        if (strcmp(name, nic_sets[i].name) == 0)
            return true;
    for (size_t d = 0; d < ARRAY_SIZE(dirs); d++) {
        size_t len = strlen(dirs[d].set);
        if (strncmp(name, dirs[d].set, len) != 0)
            continue;
        for (size_t i = 0; i < ARRAY_SIZE(levels); i++)
            if (strcmp(name + len, levels[i].suffix) == 0)
                return true;
        for (size_t i = 0; i < ARRAY_SIZE(shapes); i++)
            if (strcmp(name + len, shapes[i].suffix) == 0)
                return true;
    }
    return false;
}

/* A direction's rules in its chain: one per port level and per shape. */
static void direction_rules(struct buf *b, const char *t, const char *chain, const struct direction *d)
{
    for (size_t i = 0; i < ARRAY_SIZE(levels); i++)
        buf_printf(b, "add rule bridge %s %s %s . meta l4proto . th dport%s @%s%s %s\n", t, chain, d->ifname,
                   levels[i].mask, d->set, levels[i].suffix, d->verdict);
    for (size_t i = 0; i < ARRAY_SIZE(shapes); i++)
        buf_printf(b, "add rule bridge %s %s %s . %s @%s%s %s\n", t, chain, d->ifname, shapes[i].match, d->set,
                   shapes[i].suffix, d->verdict);
}

void nsnft_bridge_frame(struct buf *b, const char *t)
{
    buf_printf(b, "add table bridge %s\n", t);
    for (size_t i = 0; i < ARRAY_SIZE(nic_sets); i++)
        buf_printf(b, "add set bridge %s %s { type %s; }\n", t, nic_sets[i].name, nic_sets[i].type);
    for (size_t d = 0; d < ARRAY_SIZE(dirs); d++) {
        for (size_t i = 0; i < ARRAY_SIZE(levels); i++)
            buf_printf(b, "add set bridge %s %s%s { type " KEY_PORT "; }\n", t, dirs[d].set, levels[i].suffix);
        for (size_t i = 0; i < ARRAY_SIZE(shapes); i++)
            buf_printf(b, "add set bridge %s %s%s { type ifname . %s;%s }\n", t, dirs[d].set, shapes[i].suffix,
                       shapes[i].type, shapes[i].interval ? " flags interval;" : "");
    }
    static const char *const chains[] = {"prerouting", "postrouting", "from_guest", "to_guest"};
    for (size_t i = 0; i < ARRAY_SIZE(chains); i++) {
        if (i < 2)
            buf_printf(b, "add chain bridge %s %s { type filter hook %s priority filter; policy accept; }\n", t,
                       chains[i], chains[i]);
        else
            buf_printf(b, "add chain bridge %s %s\n", t, chains[i]);
        buf_printf(b, "flush chain bridge %s %s\n", t, chains[i]);
    }
    buf_printf(b, "add rule bridge %s prerouting iifname @out_taps jump from_guest\n"
                  "add rule bridge %s postrouting oifname @in_taps jump to_guest\n", t, t);

    /* From the guest: default deny, then what its MAC and addresses may send. */
    const char *c = "from_guest";
    buf_printf(b, "add rule bridge %s %s iifname . ether saddr != @tap_mac drop\n", t, c);
    direction_rules(b, t, c, &dirs[0]);
    buf_printf(b, "add rule bridge %s %s ether type ip6 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s iifname . arp saddr ether != @tap_mac drop\n", t, c);
    /* 0.0.0.0: a DHCP client probing the address it was offered */
    buf_printf(b, "add rule bridge %s %s arp saddr ip 0.0.0.0 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s iifname . arp saddr ip @tap_ipv4 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s ether type ip udp sport 68 udp dport 67 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s iifname . ip saddr @tap_ipv4 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s drop\n", t, c);

    /* To the guest, when restricted. Stateless: this kernel has no bridge conntrack,
     * so "not a connection attempt" stands in for "a reply": TCP without a lone SYN,
     * UDP from the ports of services the guest asks, ICMP replies and errors (ICMP
     * requests, like new connections, need a rule). */
    c = "to_guest";
    static const char *const common_in[] = {
        "ether type arp accept",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, nd-redirect } accept",
        "tcp flags & (syn | ack) != syn accept",
        "udp sport { 53, 67, 123, 547 } accept",
        "icmp type { echo-reply, destination-unreachable, source-quench, redirect, router-advertisement, "
        "time-exceeded, parameter-problem, timestamp-reply, info-reply, address-mask-reply } accept",
        "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-reply, "
        "mld-listener-query } accept",
    };
    for (size_t i = 0; i < ARRAY_SIZE(common_in); i++)
        buf_printf(b, "add rule bridge %s %s %s\n", t, c, common_in[i]);
    direction_rules(b, t, c, &dirs[1]);
    buf_printf(b, "add rule bridge %s %s ether type ip drop\nadd rule bridge %s %s ether type ip6 drop\n", t, c, t, c);
}

/* ---- rules ---------------------------------------------------------------------------- */

bool netsetup_prefix_parse(const char *s, struct netsetup_cidr *c, char *why, size_t whylen)
{
    char addr[INET6_ADDRSTRLEN];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    memset(c, 0, sizeof(*c));
    snprintf(why, whylen, "is not an address or a prefix like \"10.1.0.0/16\" or \"fd00::/64\"");
    if (alen == 0 || alen >= sizeof(addr))
        return false;
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    c->family = strchr(addr, ':') ? AF_INET6 : AF_INET;
    unsigned bits = c->family == AF_INET6 ? 128 : 32;
    if (inet_pton(c->family, addr, c->addr) != 1)
        return false;
    c->prefix = bits;
    if (slash) {
        const char *p = slash + 1;
        unsigned len = 0;
        if (!*p || strlen(p) > 3)
            return false;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return false;
            len = len * 10 + (unsigned)(*p - '0');
        }
        if (len > bits) {
            snprintf(why, whylen, "has a prefix longer than %u bits", bits);
            return false;
        }
        c->prefix = len;
    }
    for (unsigned i = c->prefix; i < bits; i++)
        if (c->addr[i / 8] & (0x80 >> (i % 8))) {
            struct netsetup_cidr net = *c;
            for (unsigned k = c->prefix; k < bits; k++)
                net.addr[k / 8] &= (unsigned char)~(0x80 >> (k % 8));
            char txt[INET6_ADDRSTRLEN];
            inet_ntop(c->family, net.addr, txt, sizeof(txt));
            snprintf(why, whylen, "has bits set past its /%u prefix (the network is %s/%u)", c->prefix, txt, c->prefix);
            return false;
        }
    return true;
}

/* nft's names of ICMP and ICMPv6 types */
static const struct icmp_name {
    int proto;
    unsigned type;
    const char *name;
} icmp_names[] = {
    {IPPROTO_ICMP, 0, "echo-reply"}, {IPPROTO_ICMP, 3, "destination-unreachable"},
    {IPPROTO_ICMP, 4, "source-quench"}, {IPPROTO_ICMP, 5, "redirect"}, {IPPROTO_ICMP, 8, "echo-request"},
    {IPPROTO_ICMP, 9, "router-advertisement"}, {IPPROTO_ICMP, 10, "router-solicitation"},
    {IPPROTO_ICMP, 11, "time-exceeded"}, {IPPROTO_ICMP, 12, "parameter-problem"},
    {IPPROTO_ICMP, 13, "timestamp-request"}, {IPPROTO_ICMP, 14, "timestamp-reply"},
    {IPPROTO_ICMP, 15, "info-request"}, {IPPROTO_ICMP, 16, "info-reply"},
    {IPPROTO_ICMP, 17, "address-mask-request"}, {IPPROTO_ICMP, 18, "address-mask-reply"},
    {IPPROTO_ICMPV6, 1, "destination-unreachable"}, {IPPROTO_ICMPV6, 2, "packet-too-big"},
    {IPPROTO_ICMPV6, 3, "time-exceeded"}, {IPPROTO_ICMPV6, 4, "parameter-problem"},
    {IPPROTO_ICMPV6, 128, "echo-request"}, {IPPROTO_ICMPV6, 129, "echo-reply"},
    {IPPROTO_ICMPV6, 130, "mld-listener-query"}, {IPPROTO_ICMPV6, 131, "mld-listener-report"},
    {IPPROTO_ICMPV6, 132, "mld-listener-done"}, {IPPROTO_ICMPV6, 133, "nd-router-solicit"},
    {IPPROTO_ICMPV6, 134, "nd-router-advert"}, {IPPROTO_ICMPV6, 135, "nd-neighbor-solicit"},
    {IPPROTO_ICMPV6, 136, "nd-neighbor-advert"}, {IPPROTO_ICMPV6, 137, "nd-redirect"},
    {IPPROTO_ICMPV6, 138, "router-renumbering"}, {IPPROTO_ICMPV6, 141, "ind-neighbor-solicit"},
    {IPPROTO_ICMPV6, 142, "ind-neighbor-advert"}, {IPPROTO_ICMPV6, 143, "mld2-listener-report"},
};

int netsetup_icmp_type(int proto, const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(icmp_names); i++)
        if (icmp_names[i].proto == proto && strcmp(icmp_names[i].name, name) == 0)
            return (int)icmp_names[i].type;
    return -1;
}

const char *netsetup_icmp_type_name(int proto, unsigned type)
{
    for (size_t i = 0; i < ARRAY_SIZE(icmp_names); i++)
        if (icmp_names[i].proto == proto && icmp_names[i].type == type)
            return icmp_names[i].name;
    return NULL;
}

static bool has_address(const struct netsetup_port *p)
{
    return p->source || p->destination;
}

/* The rule's family from its addresses (both checked to be one family). */
static int rule_family(const struct netsetup_port *p)
{
    const char *a = p->source ? p->source : p->destination;
    return a && strchr(a, ':') ? AF_INET6 : AF_INET;
}

/* The ICMP type an ICMP rule with an address matches (its family's echo-request when untyped). */
static unsigned icmp_type_of(const struct netsetup_port *p, int family)
{
    return p->typed ? p->type : family == AF_INET6 ? 128 : 8;
}

/* The interval set of a rule with addresses. */
static size_t net_shape(const struct netsetup_port *p, int family)
{
    size_t base = family == AF_INET6 ? SHAPE_NET6 : SHAPE_NET4;
    return base + (p->proto == 0 ? NET_ANY : p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP ? NET_PORT : NET_ICMP);
}

/* A rule's extent along each field of its interval set's key, as 16-byte big-endian
 * bounds: source, destination, then protocol and port or ICMP type. */
struct extent {
    size_t shape, nfields;
    unsigned char lo[4][16], hi[4][16];
};

static void field_uint(struct extent *x, size_t f, unsigned lo, unsigned hi)
{
    memset(x->lo[f], 0, 16);
    memset(x->hi[f], 0, 16);
    x->lo[f][14] = (unsigned char)(lo >> 8), x->lo[f][15] = (unsigned char)lo;
    x->hi[f][14] = (unsigned char)(hi >> 8), x->hi[f][15] = (unsigned char)hi;
}

static void field_cidr(struct extent *x, size_t f, const char *s, int family)
{
    struct netsetup_cidr c = {.family = family, .prefix = 0};
    char why[96];
    if (s && !netsetup_prefix_parse(s, &c, why, sizeof(why)))
        c.prefix = 0;      /* checked before: not reached */
    unsigned bytes = family == AF_INET6 ? 16 : 4;
    memset(x->lo[f], 0, 16);
    memset(x->hi[f], 0, 16);
    for (unsigned i = 0; i < bytes * 8; i++) {
        unsigned char bit = (unsigned char)(0x80 >> (i % 8));
        if (i < c.prefix) {
            x->lo[f][i / 8] |= c.addr[i / 8] & bit;
            x->hi[f][i / 8] |= c.addr[i / 8] & bit;
        } else {
            x->hi[f][i / 8] |= bit;
        }
    }
}

static bool rule_extent(const struct netsetup_port *p, struct extent *x)
{
    if (!has_address(p))
        return false;
    int family = rule_family(p);
    x->shape = net_shape(p, family);
    field_cidr(x, 0, p->source, family);
    field_cidr(x, 1, p->destination, family);
    x->nfields = 2;
    if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
        field_uint(x, 2, (unsigned)p->proto, (unsigned)p->proto);
        field_uint(x, 3, p->lo, p->hi ? p->hi : p->lo);
        x->nfields = 4;
    } else if (p->proto) {
        unsigned t = icmp_type_of(p, family);
        field_uint(x, 2, t, t);
        x->nfields = 3;
    }
    return true;
}

bool netsetup_port_clash(const struct netsetup_port *a, const struct netsetup_port *b)
{
    struct extent x, y;
    if (!rule_extent(a, &x) || !rule_extent(b, &y) || x.shape != y.shape)
        return false;
    for (size_t f = 0; f < x.nfields; f++)
        if (memcmp(x.lo[f], y.hi[f], 16) > 0 || memcmp(y.lo[f], x.hi[f], 16) > 0)
            return false;
    return true;
}

static int check_nic(const char *network, const char *tap, struct qv_err *e)
{
    int r = nsnft_check_network(network, e);
    if (r < 0)
        return r;
    if (!netsetup_ifname_valid(tap))
        return qv_fail(e, -EINVAL, "%s: \"%s\" is not a valid tap name", network, tap ? tap : "");
    return 0;
}

static int check_ipv4_list(const char *tap, const char *const *ipv4, struct qv_err *e)
{
    for (size_t i = 0; ipv4 && ipv4[i]; i++) {
        struct in_addr a;
        if (inet_pton(AF_INET, ipv4[i], &a) != 1)
            return qv_fail(e, -EINVAL, "%s: \"%s\" is not an IPv4 address", tap, ipv4[i]);
    }
    return 0;
}

static int check_ports(const char *tap, const char *what, const struct netsetup_port *p, size_t n,
                       struct qv_err *e)
{
    for (size_t i = 0; i < n; i++) {
        const struct netsetup_port *r = &p[i];
        bool icmp = r->proto == IPPROTO_ICMP || r->proto == IPPROTO_ICMPV6;
        if (!icmp && r->proto != IPPROTO_TCP && r->proto != IPPROTO_UDP && r->proto != 0)
            return qv_fail(e, -EINVAL, "%s: %s[%zu]: protocol must be tcp, udp, icmp, icmpv6 or any", tap, what, i);
        if (!icmp && r->proto && (r->lo == 0 || (r->hi && r->hi < r->lo)))
            return qv_fail(e, -EINVAL, "%s: %s[%zu]: bad port range %u-%u", tap, what, i, r->lo, r->hi);
        if (r->proto == 0 && !has_address(r))
            return qv_fail(e, -EINVAL, "%s: %s[%zu]: a rule for any protocol needs a source or destination", tap,
                           what, i);
        int family = 0;
        const char *addrs[] = {r->source, r->destination};
        for (size_t k = 0; k < 2; k++) {
            struct netsetup_cidr c;
            char why[96];
            if (!addrs[k])
                continue;
            if (!netsetup_prefix_parse(addrs[k], &c, why, sizeof(why)))
                return qv_fail(e, -EINVAL, "%s: %s[%zu]: \"%s\" %s", tap, what, i, addrs[k], why);
            if (family && c.family != family)
                return qv_fail(e, -EINVAL, "%s: %s[%zu]: source and destination are of two families", tap, what, i);
            family = c.family;
        }
        if (family && ((r->proto == IPPROTO_ICMP && r->typed && family != AF_INET) ||
                       (r->proto == IPPROTO_ICMPV6 && family != AF_INET6)))
            return qv_fail(e, -EINVAL, "%s: %s[%zu]: %s with %s addresses", tap, what, i,
                           r->proto == IPPROTO_ICMP ? "icmp" : "icmpv6", family == AF_INET ? "IPv4" : "IPv6");
        for (size_t k = 0; k < i; k++)
            if (netsetup_port_clash(&p[k], r))
                return qv_fail(e, -EINVAL, "%s: %s[%zu] overlaps %s[%zu] (an interval set holds no two entries that overlap)",
                               tap, what, i, what, k);
    }
    return 0;
}

/* Appends "SET { KEY }\n" unless the list has it already: deleting one element twice
 * in a transaction fails it. */
static void elem(struct buf *b, const char *fmt, ...) QV_PRINTF(2, 3);
static void elem(struct buf *b, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(line, sizeof(line) - 1, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof(line) - 1)
        abort();    /* keys are short: names and addresses were checked */
    line[len++] = '\n';
    line[len] = '\0';
    for (const char *p = b->p; p && *p; p = strchr(p, '\n') + 1)
        if (strncmp(p, line, (size_t)len) == 0)
            return;
    buf_adds(b, line);
}

/* "10.1.0.0/16" as nft reads it, from a checked CIDR; NULL: the family's every address. */
static void cidr_text(const char *s, int family, char *out, size_t len)
{
    struct netsetup_cidr c;
    char why[96], addr[INET6_ADDRSTRLEN];
    if (!s || !netsetup_prefix_parse(s, &c, why, sizeof(why))) {
        snprintf(out, len, "%s", family == AF_INET6 ? "::/0" : "0.0.0.0/0");
        return;
    }
    inet_ntop(c.family, c.addr, addr, sizeof(addr));
    snprintf(out, len, "%s/%u", addr, c.prefix);
}

static const char *proto_name(int proto)
{
    return proto == IPPROTO_TCP ? "tcp" : "udp";
}

/* One rule's elements in the direction's sets (`set`: deny_out or allow_in). */
static void rule_elems(struct buf *b, const char *tap, const char *set, const struct netsetup_port *p)
{
    if (has_address(p)) {
        int family = rule_family(p);
        const struct shape *sh = &shapes[net_shape(p, family)];
        char src[64], dst[64];
        cidr_text(p->source, family, src, sizeof(src));
        cidr_text(p->destination, family, dst, sizeof(dst));
        if (p->proto == 0)
            elem(b, "%s%s { \"%s\" . %s . %s }", set, sh->suffix, tap, src, dst);
        else if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP)
            elem(b, "%s%s { \"%s\" . %s . %s . %s . %u-%u }", set, sh->suffix, tap, src, dst, proto_name(p->proto),
                 p->lo, p->hi ? p->hi : p->lo);
        else
            elem(b, "%s%s { \"%s\" . %s . %s . %u }", set, sh->suffix, tap, src, dst, icmp_type_of(p, family));
        return;
    }
    if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
        if (p->proto == IPPROTO_ICMP)
            elem(b, "%s%s { \"%s\" . %u }", set, shapes[SHAPE_ICMP].suffix, tap, p->typed ? p->type : 8);
        if (p->proto == IPPROTO_ICMPV6 || !p->typed)
            elem(b, "%s%s { \"%s\" . %u }", set, shapes[SHAPE_ICMPV6].suffix, tap, p->typed ? p->type : 128);
        return;
    }
    uint32_t port = p->lo, hi = p->hi ? p->hi : p->lo;
    while (port <= hi) {
        /* the largest aligned block that starts here and fits */
        size_t l = ARRAY_SIZE(levels) - 1;
        while (l > 0 && ((port & ((1u << levels[l].bits) - 1)) || port + (1u << levels[l].bits) - 1 > hi))
            l--;
        elem(b, "%s%s { \"%s\" . %s . %u }", set, levels[l].suffix, tap, proto_name(p->proto), port);
        port += 1u << levels[l].bits;
    }
}

static void port_elems(struct buf *b, const char *tap, const char *set, const struct netsetup_port *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rule_elems(b, tap, set, &p[i]);
}

/* Every element of the tap's filter, out_taps first. */
static void filter_elems(struct buf *b, const char *tap, const struct netsetup_nic_filter *f)
{
    elem(b, "out_taps { \"%s\" }", tap);
    elem(b, "tap_mac { \"%s\" . %s }", tap, f->mac);
    for (size_t i = 0; f->ipv4 && f->ipv4[i]; i++)
        elem(b, "tap_ipv4 { \"%s\" . %s }", tap, f->ipv4[i]);
    port_elems(b, tap, "deny_out", f->deny_out, f->ndeny_out);
    if (f->restrict_in) {
        elem(b, "in_taps { \"%s\" }", tap);
        port_elems(b, tap, "allow_in", f->allow_in, f->nallow_in);
    }
}

/* "VERB element bridge T LINE" for each line; with `first`, the first line's verb. */
static void elem_commands(struct buf *b, const char *t, const char *verb, const char *first, const char *lines)
{
    for (const char *p = lines; p && *p;) {
        size_t len = strcspn(p, "\n");
        buf_printf(b, "%s element bridge %s %.*s\n", p == lines && first ? first : verb, t, (int)len, p);
        p += len + (p[len] == '\n');
    }
}

/* ---- what the kernel holds ---------------------------------------------------------- */

struct tap_line {
    char *tap, *line;
};

static int tap_line_cmp(const void *a, const void *b)
{
    const struct tap_line *x = a, *y = b;
    return strcmp(x->tap, y->tap);
}

/* One key component as nft reads it back: names quoted, the rest as listed; in
 * interval sets, {"prefix": {"addr", "len"}} and {"range": [LO, HI]}. */
static bool key_part(struct buf *b, json_object *v, bool quote)
{
    json_object *x = NULL, *addr = NULL, *len = NULL;
    if (!quote && json_object_object_get_ex(v, "prefix", &x)) {
        if (!json_object_object_get_ex(x, "addr", &addr) || !json_object_object_get_ex(x, "len", &len) ||
            !json_object_is_type(len, json_type_int) || !key_part(b, addr, false))
            return false;
        buf_printf(b, "/%d", json_object_get_int(len));
        return true;
    }
    if (!quote && json_object_object_get_ex(v, "range", &x)) {
        if (!json_object_is_type(x, json_type_array) || json_object_array_length(x) != 2 ||
            !key_part(b, json_object_array_get_idx(x, 0), false))
            return false;
        buf_adds(b, "-");
        return key_part(b, json_object_array_get_idx(x, 1), false);
    }
    if (json_object_is_type(v, json_type_string)) {
        const char *s = json_object_get_string(v);
        if (strpbrk(s, "\"\n{};"))
            return false;
        buf_printf(b, quote ? "\"%s\"" : "%s", s);
    } else if (json_object_is_type(v, json_type_int)) {
        buf_printf(b, "%lld", (long long)json_object_get_int64(v));
    } else {
        return false;
    }
    return true;
}

/* Every element of the network's NIC sets, as (tap, "SET { KEY }") pairs sorted by tap. */
static int scan(struct netsetup_nft *n, const char *network, struct tap_line **out, size_t *nout, struct qv_err *e)
{
    char cmd[256], what[160];
    snprintf(cmd, sizeof(cmd), "list table bridge qvisor-%s", network);
    snprintf(what, sizeof(what), "%s: cannot list NIC filters", network);
    _cleanup_json_ json_object *doc = NULL;
    int r = nsnft_list_json(n, what, cmd, &doc, e);
    if (r < 0)
        return r;
    struct tap_line *v = NULL;
    size_t len = 0, cap = 0;
    json_object *arr = nsnft_items(doc);
    for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
        json_object *set = NULL, *name = NULL, *elems = NULL;
        if (!json_object_object_get_ex(json_object_array_get_idx(arr, i), "set", &set) ||
            !json_object_object_get_ex(set, "name", &name) || !json_object_object_get_ex(set, "elem", &elems) ||
            !json_object_is_type(elems, json_type_array))
            continue;
        const char *sname = json_object_get_string(name);
        if (!nic_set_name(sname))
            continue;
        for (size_t j = 0; j < json_object_array_length(elems); j++) {
            json_object *el = json_object_array_get_idx(elems, j), *x = NULL;
            /* {"elem": {"val": KEY, ...}} when an element carries more than its key */
            if (json_object_object_get_ex(el, "elem", &x) && json_object_object_get_ex(x, "val", &x))
                el = x;
            json_object *parts = json_object_object_get_ex(el, "concat", &x) ? x : NULL;
            json_object *first = parts ? json_object_array_get_idx(parts, 0) : el;
            if (!first || !json_object_is_type(first, json_type_string))
                continue;
            struct buf line = {0};
            buf_printf(&line, "%s { ", sname);
            bool ok = key_part(&line, first, true);
            for (size_t k = 1; parts && ok && k < json_object_array_length(parts); k++) {
                buf_adds(&line, " . ");
                ok = key_part(&line, json_object_array_get_idx(parts, k), false);
            }
            buf_adds(&line, " }");
            if (!ok) {
                buf_free(&line);
                continue;
            }
            if (len == cap) {
                cap = cap ? 2 * cap : 64;
                v = qv_xrealloc(v, cap * sizeof(*v));
            }
            v[len++] = (struct tap_line){qv_xstrdup(json_object_get_string(first)), line.p};
        }
    }
    if (len)
        qsort(v, len, sizeof(*v), tap_line_cmp);
    *out = v;
    *nout = len;
    return 0;
}

static void tap_lines_free(struct tap_line *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].tap);
        free(v[i].line);
    }
    free(v);
}

/* Learns every tap's elements in the network from the kernel. */
static int resync(struct netsetup_nft *n, const char *network, struct qv_err *e)
{
    struct tap_line *v = NULL;
    size_t len = 0;
    int r = scan(n, network, &v, &len, e);
    if (r < 0)
        return r;
    nsnft_forget_network(n, network);
    for (size_t i = 0; i < len;) {
        struct buf lines = {0};
        size_t j = i;
        for (; j < len && strcmp(v[j].tap, v[i].tap) == 0; j++)
            buf_printf(&lines, "%s\n", v[j].line);
        nsnft_remember(n, network, v[i].tap, lines.p);
        buf_free(&lines);
        i = j;
    }
    tap_lines_free(v, len);
    return 0;
}

static int not_running(const char *network, const char *tap, const char *doing, struct qv_err *e)
{
    return qv_fail(e, -ENOENT, "%s: %s: cannot %s: network %s is not running (no table bridge qvisor-%s)", network,
                   tap, doing, network, network);
}

static void clear_err(struct qv_err *e)
{
    if (e)
        *e = (struct qv_err){0};
}

/* Replaces what the kernel has of the tap by `lines` (NULL: nothing), in one
 * transaction. What the context knows is tried first; when the kernel disagrees,
 * once more after reading what it has. */
static int replace(struct netsetup_nft *n, const char *network, const char *tap, const char *lines,
                   const char *doing, struct qv_err *e)
{
    char t[128], what[160];
    snprintf(t, sizeof(t), "qvisor-%s", network);
    snprintf(what, sizeof(what), "%s: %s: cannot %s", network, tap, doing);
    for (int attempt = 0;; attempt++) {
        const char *old = nsnft_known(n, network, tap);
        if (!old && !lines && attempt == 0) {
            /* nothing known to remove: read what there is */
            int r = resync(n, network, e);
            if (r == -ENOENT) {
                clear_err(e);   /* no table: the network is down and took every filter with it */
                return 0;
            }
            if (r < 0)
                return r;
            continue;
        }
        if (!old && !lines)
            return 0;
        struct buf b = {0};
        elem_commands(&b, t, "delete", NULL, old);
        /* Not knowing of any: "create" fails on a filter left by an earlier NIC of the
         * same name, which the second attempt then replaces. */
        elem_commands(&b, t, "add", old ? NULL : "create", lines);
        int r = netsetup_nft_run(n, what, b.p, e);
        buf_free(&b);
        if (r == 0) {
            nsnft_remember(n, network, tap, lines);
            clear_err(e);   /* what a first attempt said */
            return 0;
        }
        bool disagree = old ? r == -ENOENT : r == -EEXIST;
        if (!old && r == -ENOENT)
            return lines ? not_running(network, tap, doing, e) : (clear_err(e), 0);
        if (!disagree || attempt > 0)
            return r;
        if ((r = resync(n, network, e)) == -ENOENT)
            return lines ? not_running(network, tap, doing, e) : (clear_err(e), 0);
        if (r < 0)
            return r;
    }
}

int netsetup_nft_nic_apply(struct netsetup_nft *n, const char *network, const char *tap,
                           const struct netsetup_nic_filter *f, struct qv_err *e)
{
    int r = check_nic(network, tap, e);
    if (r < 0)
        return r;
    unsigned char mac[6];
    if (!ns_mac_parse(f->mac, mac))
        return qv_fail(e, -EINVAL, "%s: \"%s\" is not a MAC address", tap, f->mac ? f->mac : "");
    if ((r = check_ipv4_list(tap, f->ipv4, e)) < 0 ||
        (r = check_ports(tap, "allow_in", f->allow_in, f->nallow_in, e)) < 0 ||
        (r = check_ports(tap, "deny_out", f->deny_out, f->ndeny_out, e)) < 0)
        return r;
    struct buf lines = {0};
    filter_elems(&lines, tap, f);
    r = replace(n, network, tap, lines.p, "apply filter", e);
    buf_free(&lines);
    return r;
}

int netsetup_nft_nic_remove(struct netsetup_nft *n, const char *network, const char *tap,
                            struct qv_err *e)
{
    int r = check_nic(network, tap, e);
    if (r < 0)
        return r;
    return replace(n, network, tap, NULL, "remove filter", e);
}

int nsnft_nic_clear(struct netsetup_nft *n, const char *network, const char *tap, struct qv_err *e)
{
    int r = check_nic(network, tap, e);
    if (r < 0)
        return r;
    if (nsnft_known(n, network, tap))
        return replace(n, network, tap, NULL, "remove filter", e);
    /* Cheaper than reading every filter: a filter always has its out_taps element,
     * and creating one fails when it is there. */
    char script[256], what[160];
    snprintf(script, sizeof(script),
             "create element bridge qvisor-%s out_taps { \"%s\" }\ndelete element bridge qvisor-%s out_taps { \"%s\" }\n",
             network, tap, network, tap);
    snprintf(what, sizeof(what), "%s: %s: cannot check for an old filter", network, tap);
    r = netsetup_nft_run(n, what, script, e);
    if (r == -ENOENT) {
        clear_err(e);   /* the network is not running: no filters */
        return 0;
    }
    return r == -EEXIST ? replace(n, network, tap, NULL, "remove filter", e) : r;
}

int netsetup_nft_nic_list(struct netsetup_nft *n, const char *network, struct strv *taps,
                          struct qv_err *e)
{
    int r = nsnft_check_network(network, e);
    if (r < 0)
        return r;
    struct tap_line *v = NULL;
    size_t len = 0;
    r = scan(n, network, &v, &len, e);
    if (r == -ENOENT) {
        /* a network that is not running has no filters */
        clear_err(e);
        return 0;
    }
    if (r < 0)
        return r;
    /* every tap that has any element, so that a half-removed filter is found too */
    for (size_t i = 0; i < len; i++)
        if (i == 0 || strcmp(v[i].tap, v[i - 1].tap) != 0)
            strv_push(taps, v[i].tap);
    tap_lines_free(v, len);
    strv_sort(taps);
    return 0;
}
