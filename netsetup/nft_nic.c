/* Per-NIC filters in a network's bridge table. Each tap owns exactly: chain out-TAP
 * (frames from the guest) with its element in map nic_out and, when inbound traffic
 * is restricted, chain in-TAP with its element in nic_in. The base chains dispatch
 * through the maps, so adding, updating or removing one NIC is one transaction of
 * constant size whatever the number of NICs, and removal needs nothing but names.
 * Addresses and ports are plain rules, not sets: libnftables 1.0.6 reloads every set
 * and chain of the ruleset before each transaction, so each per-tap kernel object
 * makes every later transaction a little slower. */
#include <arpa/inet.h>
#include <string.h>

#include "netsetup/internal.h"
#include "netsetup/nft_internal.h"

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
        if (p[i].proto == IPPROTO_ICMP)
            continue;
        if (p[i].proto != IPPROTO_TCP && p[i].proto != IPPROTO_UDP)
            return qv_fail(e, -EINVAL, "%s: %s[%zu]: protocol must be tcp, udp or icmp", tap, what, i);
        if (p[i].lo == 0 || (p[i].hi && p[i].hi < p[i].lo))
            return qv_fail(e, -EINVAL, "%s: %s[%zu]: bad port range %u-%u", tap, what, i, p[i].lo, p[i].hi);
    }
    return 0;
}

static bool has_proto(const struct netsetup_port *p, size_t n, int proto)
{
    for (size_t i = 0; i < n; i++)
        if (p[i].proto == proto)
            return true;
    return false;
}

/* One rule per port or range: an anonymous set would be one more kernel set per
 * tap, and libnftables reloads every set of the ruleset before each transaction. */
static void port_rules(struct buf *b, const char *t, const char *chain, const struct netsetup_port *p, size_t n,
                       const char *verdict)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i].proto == IPPROTO_ICMP)
            continue;
        const char *proto = p[i].proto == IPPROTO_TCP ? "tcp" : "udp";
        if (p[i].hi && p[i].hi != p[i].lo)
            buf_printf(b, "add rule bridge %s %s %s dport %u-%u %s\n", t, chain, proto, p[i].lo, p[i].hi, verdict);
        else
            buf_printf(b, "add rule bridge %s %s %s dport %u %s\n", t, chain, proto, p[i].lo, verdict);
    }
    if (has_proto(p, n, IPPROTO_ICMP))
        buf_printf(b, "add rule bridge %s %s icmp type echo-request %s\nadd rule bridge %s %s icmpv6 type echo-request %s\n",
                   t, chain, verdict, t, chain, verdict);
}

/* Frames from the guest: default deny, then what its MAC and addresses may send. */
static void out_chain(struct buf *b, const char *t, const char *tap, const struct netsetup_nic_filter *f)
{
    char c[64];
    snprintf(c, sizeof(c), "out-%s", tap);
    buf_printf(b, "add chain bridge %s %s\nflush chain bridge %s %s\n", t, c, t, c);
    buf_printf(b, "add rule bridge %s %s ether saddr != %s drop\n", t, c, f->mac);
    port_rules(b, t, c, f->deny_out, f->ndeny_out, "drop");
    buf_printf(b, "add rule bridge %s %s ether type ip6 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s arp saddr ether != %s drop\n", t, c, f->mac);
    /* 0.0.0.0: a DHCP client probing the address it was offered */
    buf_printf(b, "add rule bridge %s %s arp saddr ip 0.0.0.0 accept\n", t, c);
    for (size_t i = 0; f->ipv4 && f->ipv4[i]; i++)
        buf_printf(b, "add rule bridge %s %s arp saddr ip %s accept\n", t, c, f->ipv4[i]);
    buf_printf(b, "add rule bridge %s %s ether type ip udp sport 68 udp dport 67 accept\n", t, c);
    for (size_t i = 0; f->ipv4 && f->ipv4[i]; i++)
        buf_printf(b, "add rule bridge %s %s ip saddr %s accept\n", t, c, f->ipv4[i]);
    buf_printf(b, "add rule bridge %s %s drop\n", t, c);
    buf_printf(b, "add element bridge %s nic_out { \"%s\" : jump %s }\n", t, tap, c);
}

/* Frames to the guest, when restricted: the network's shared accepts, then its ports. */
static void in_chain(struct buf *b, const char *t, const char *tap, const struct netsetup_nic_filter *f)
{
    char c[64];
    snprintf(c, sizeof(c), "in-%s", tap);
    buf_printf(b, "add chain bridge %s %s\nflush chain bridge %s %s\n", t, c, t, c);
    if (!f->restrict_in) {
        /* declared above only so that removing what an earlier filter had is valid */
        buf_printf(b, "add element bridge %s nic_in { \"%s\" : jump %s }\ndelete element bridge %s nic_in { \"%s\" }\n"
                      "delete chain bridge %s %s\n", t, tap, c, t, tap, t, c);
        return;
    }
    buf_printf(b, "add rule bridge %s %s jump nic_in_common\n", t, c);
    port_rules(b, t, c, f->allow_in, f->nallow_in, "accept");
    buf_printf(b, "add rule bridge %s %s ether type ip drop\nadd rule bridge %s %s ether type ip6 drop\n", t, c, t, c);
    buf_printf(b, "add element bridge %s nic_in { \"%s\" : jump %s }\n", t, tap, c);
}

static int run_nic(struct netsetup_nft *n, const char *network, const char *tap, const char *doing,
                   const char *script, struct qv_err *e)
{
    char what[160];
    snprintf(what, sizeof(what), "%s: %s: cannot %s", network, tap, doing);
    int r = netsetup_nft_run(n, what, script, e);
    if (r == -ENOENT)
        return qv_fail(e, -ENOENT, "%s: %s: cannot %s: network %s is not running (no table bridge qvisor-%s)",
                       network, tap, doing, network, network);
    return r;
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
    char t[128];
    snprintf(t, sizeof(t), "qvisor-%s", network);
    struct buf b = {0};
    out_chain(&b, t, tap, f);
    in_chain(&b, t, tap, f);
    r = run_nic(n, network, tap, "apply filter", b.p, e);
    buf_free(&b);
    return r;
}

int netsetup_nft_nic_remove(struct netsetup_nft *n, const char *network, const char *tap,
                            struct qv_err *e)
{
    int r = check_nic(network, tap, e);
    if (r < 0)
        return r;
    char t[128];
    snprintf(t, sizeof(t), "qvisor-%s", network);
    struct buf b = {0};
    /* Declaring every object first makes the deletes valid whether or not an
     * earlier, interrupted attempt already removed some of them. */
    for (int dir = 0; dir < 2; dir++) {
        const char *map = dir ? "nic_in" : "nic_out", *pre = dir ? "in" : "out";
        buf_printf(&b,
                   "add chain bridge %s %s-%s\nflush chain bridge %s %s-%s\n"
                   "add element bridge %s %s { \"%s\" : jump %s-%s }\n"
                   "delete element bridge %s %s { \"%s\" }\ndelete chain bridge %s %s-%s\n",
                   t, pre, tap, t, pre, tap, t, map, tap, pre, tap, t, map, tap, t, pre, tap);
    }
    char what[160];
    snprintf(what, sizeof(what), "%s: %s: cannot remove filter", network, tap);
    r = netsetup_nft_run(n, what, b.p, e);
    buf_free(&b);
    /* no table: the network is down and took every filter with it */
    if (r == -ENOENT) {
        if (e)
            *e = (struct qv_err){0};
        return 0;
    }
    return r;
}

int netsetup_nft_nic_list(struct netsetup_nft *n, const char *network, struct strv *taps,
                          struct qv_err *e)
{
    int r = nsnft_check_network(network, e);
    if (r < 0)
        return r;
    char cmd[256], what[128];
    snprintf(cmd, sizeof(cmd), "list map bridge qvisor-%s nic_out", network);
    snprintf(what, sizeof(what), "%s: cannot list NIC filters", network);
    _cleanup_json_ json_object *doc = NULL;
    r = nsnft_list_json(n, what, cmd, &doc, e);
    if (r == -ENOENT) {
        /* a network that is not running has no filters */
        if (e)
            *e = (struct qv_err){0};
        return 0;
    }
    if (r < 0)
        return r;
    json_object *arr = nsnft_items(doc);
    size_t len = arr ? json_object_array_length(arr) : 0;
    for (size_t i = 0; i < len; i++) {
        json_object *map = NULL, *elems = NULL;
        if (!json_object_object_get_ex(json_object_array_get_idx(arr, i), "map", &map) ||
            !json_object_object_get_ex(map, "elem", &elems) || !json_object_is_type(elems, json_type_array))
            continue;
        for (size_t j = 0; j < json_object_array_length(elems); j++) {
            json_object *el = json_object_array_get_idx(elems, j);
            /* [key, verdict] pairs; a bare key would be a set */
            json_object *key = json_object_is_type(el, json_type_array) ? json_object_array_get_idx(el, 0) : el;
            if (json_object_is_type(key, json_type_string))
                strv_push(taps, json_object_get_string(key));
        }
    }
    strv_sort(taps);
    return 0;
}
