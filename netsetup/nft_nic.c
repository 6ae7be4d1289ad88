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

static const struct nic_set {
    const char *name, *type;
} nic_sets[] = {
    {"out_taps", "ifname"},             /* taps whose frames go through from_guest */
    {"in_taps", "ifname"},              /* taps whose inbound traffic goes through to_guest */
    {"tap_mac", "ifname . ether_addr"},
    {"tap_ipv4", "ifname . ipv4_addr"},
    {"deny_out", KEY_PORT}, {"deny_out_16", KEY_PORT}, {"deny_out_256", KEY_PORT}, {"deny_out_4096", KEY_PORT},
    {"deny_out_echo", "ifname"},
    {"allow_in", KEY_PORT}, {"allow_in_16", KEY_PORT}, {"allow_in_256", KEY_PORT}, {"allow_in_4096", KEY_PORT},
    {"allow_in_echo", "ifname"},
};

void nsnft_bridge_frame(struct buf *b, const char *t)
{
    buf_printf(b, "add table bridge %s\n", t);
    for (size_t i = 0; i < ARRAY_SIZE(nic_sets); i++)
        buf_printf(b, "add set bridge %s %s { type %s; }\n", t, nic_sets[i].name, nic_sets[i].type);
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
    for (size_t i = 0; i < ARRAY_SIZE(levels); i++)
        buf_printf(b, "add rule bridge %s %s iifname . meta l4proto . th dport%s @deny_out%s drop\n", t, c,
                   levels[i].mask, levels[i].suffix);
    buf_printf(b, "add rule bridge %s %s iifname @deny_out_echo icmp type echo-request drop\n"
                  "add rule bridge %s %s iifname @deny_out_echo icmpv6 type echo-request drop\n", t, c, t, c);
    buf_printf(b, "add rule bridge %s %s ether type ip6 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s iifname . arp saddr ether != @tap_mac drop\n", t, c);
    /* 0.0.0.0: a DHCP client probing the address it was offered */
    buf_printf(b, "add rule bridge %s %s arp saddr ip 0.0.0.0 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s iifname . arp saddr ip @tap_ipv4 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s ether type ip udp sport 68 udp dport 67 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s iifname . ip saddr @tap_ipv4 accept\n", t, c);
    buf_printf(b, "add rule bridge %s %s drop\n", t, c);

    /* To the guest, when restricted. Stateless: this kernel has no bridge conntrack,
     * so "not a connection attempt" stands in for "a reply". */
    c = "to_guest";
    static const char *const common_in[] = {
        "ether type arp accept",
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert, nd-redirect } accept",
        "tcp flags & (syn | ack) != syn accept",
        "udp sport { 53, 67, 123, 547 } accept",
        "icmp type != echo-request accept",
        "icmpv6 type != echo-request accept",
    };
    for (size_t i = 0; i < ARRAY_SIZE(common_in); i++)
        buf_printf(b, "add rule bridge %s %s %s\n", t, c, common_in[i]);
    for (size_t i = 0; i < ARRAY_SIZE(levels); i++)
        buf_printf(b, "add rule bridge %s %s oifname . meta l4proto . th dport%s @allow_in%s accept\n", t, c,
                   levels[i].mask, levels[i].suffix);
    buf_printf(b, "add rule bridge %s %s oifname @allow_in_echo icmp type echo-request accept\n"
                  "add rule bridge %s %s oifname @allow_in_echo icmpv6 type echo-request accept\n", t, c, t, c);
    buf_printf(b, "add rule bridge %s %s ether type ip drop\nadd rule bridge %s %s ether type ip6 drop\n", t, c, t, c);
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
        if (p[i].proto == IPPROTO_ICMP)
            continue;
        if (p[i].proto != IPPROTO_TCP && p[i].proto != IPPROTO_UDP)
            return qv_fail(e, -EINVAL, "%s: %s[%zu]: protocol must be tcp, udp or icmp", tap, what, i);
        if (p[i].lo == 0 || (p[i].hi && p[i].hi < p[i].lo))
            return qv_fail(e, -EINVAL, "%s: %s[%zu]: bad port range %u-%u", tap, what, i, p[i].lo, p[i].hi);
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

static void port_elems(struct buf *b, const char *tap, const char *set, const struct netsetup_port *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i].proto == IPPROTO_ICMP) {
            elem(b, "%s_echo { \"%s\" }", set, tap);
            continue;
        }
        const char *proto = p[i].proto == IPPROTO_TCP ? "tcp" : "udp";
        uint32_t port = p[i].lo, hi = p[i].hi ? p[i].hi : p[i].lo;
        while (port <= hi) {
            /* the largest aligned block that starts here and fits */
            size_t l = ARRAY_SIZE(levels) - 1;
            while (l > 0 && ((port & ((1u << levels[l].bits) - 1)) || port + (1u << levels[l].bits) - 1 > hi))
                l--;
            elem(b, "%s%s { \"%s\" . %s . %u }", set, levels[l].suffix, tap, proto, port);
            port += 1u << levels[l].bits;
        }
    }
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

/* One key component as nft reads it back: names quoted, the rest as listed. */
static bool key_part(struct buf *b, json_object *v, bool quote)
{
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
        bool ours = false;
        for (size_t k = 0; k < ARRAY_SIZE(nic_sets); k++)
            ours |= strcmp(sname, nic_sets[k].name) == 0;
        if (!ours)
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
