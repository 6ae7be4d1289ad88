/* Network definitions: etc/qvisor/networks/NAME.json, validated like VM definitions,
 * refused when their subnet overlaps another network's or the host's. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/model/model.h"
#include "netsetup/netsetup.h"
#include "launcher/model/netdef.h"

const char *const net_mode_names[] = {"nat", "isolated", "routed", "bridge", NULL};
static const char *const proto_names[] = {"tcp", "udp", NULL};

#define DEFAULT_LEASE 3600

void net_def_free(struct net_def *n)
{
    free(n->name);
    free(n->bridge);
    free(n->ipv4.address);
    free(n->ipv4.dhcp_start);
    free(n->ipv4.dhcp_end);
    for (size_t i = 0; i < n->ipv4.nhosts; i++) {
        free(n->ipv4.hosts[i].mac);
        free(n->ipv4.hosts[i].ip);
        free(n->ipv4.hosts[i].name);
    }
    free(n->ipv4.hosts);
    free(n->ipv6.address);
    free(n->ipv6.dhcp_start);
    free(n->ipv6.dhcp_end);
    free(n->dns.domain);
    strv_free(&n->dns.forwarders);
    for (size_t i = 0; i < n->nforwards; i++)
        free(n->forwards[i].guest);
    free(n->forwards);
    memset(n, 0, sizeof(*n));
}

static bool hostname_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63 || s[0] == '-' || s[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

static bool domain_valid(const char *s)
{
    _cleanup_free_ char *copy = qv_xstrdup(s);
    char *save = NULL;
    int labels = 0;
    for (char *l = strtok_r(copy, ".", &save); l; l = strtok_r(NULL, ".", &save), labels++)
        if (!hostname_valid(l))
            return false;
    return labels > 0 && strlen(s) <= 253 && s[strlen(s) - 1] != '.';
}

/* An address inside cidr (and not its network or broadcast address for IPv4). */
static int addr_in(struct jr *r, json_object *o, const char *key, const struct netsetup_cidr *net, bool required,
                   char **out)
{
    int e = jr_string(r, o, key, required, out);
    if (e < 0 || !*out)
        return e;
    struct netsetup_cidr a;
    struct qv_err pe = {0};
    size_t m = jr_key(r, key);
    if (netsetup_cidr_parse(*out, &a, &pe) < 0 || a.family != net->family || strchr(*out, '/'))
        return jr_fail(r, "\"%s\" is not an IPv%d address", *out, net->family == AF_INET ? 4 : 6);
    if (!netsetup_cidr_contains(net, &a)) {
        char nets[64];
        netsetup_cidr_network_str(net, nets, sizeof(nets));
        return jr_fail(r, "%s is outside %s", *out, nets);
    }
    jr_pop(r, m);
    return 0;
}

/* Address blocks no bridge network may use: the guests' packets would be dropped,
 * misrouted or taken for the host's own. */
static const struct {
    const char *cidr, *what;
} reserved[] = {
    {"0.0.0.0/8", "\"this network\" (0.0.0.0/8), which is never a destination"},
    {"127.0.0.0/8", "loopback (127.0.0.0/8)"},
    {"169.254.0.0/16", "link-local (169.254.0.0/16), which routers never forward"},
    {"224.0.0.0/4", "multicast (224.0.0.0/4)"},
    {"240.0.0.0/4", "reserved (240.0.0.0/4, with the broadcast address 255.255.255.255)"},
    {"::/128", "the unspecified address (::)"},
    {"::1/128", "loopback (::1)"},
    {"::ffff:0:0/96", "IPv4-mapped (::ffff:0:0/96)"},
    {"fe80::/10", "link-local (fe80::/10), which every link has already"},
    {"ff00::/8", "multicast (ff00::/8)"},
};

/* Fails when the network `c` (as written in `text`) overlaps a reserved block. */
static int check_unicast(struct jr *r, const char *text, const struct netsetup_cidr *c)
{
    for (size_t i = 0; i < ARRAY_SIZE(reserved); i++) {
        struct netsetup_cidr b;
        struct qv_err pe = {0};
        if (netsetup_cidr_parse(reserved[i].cidr, &b, &pe) < 0 || b.family != c->family || !netsetup_cidr_overlap(c, &b))
            continue;
        return jr_key(r, "address"),
               jr_fail(r, "\"%s\" overlaps %s; use unicast addresses, e.g. a private range (%s)", text, reserved[i].what,
                       c->family == AF_INET ? "10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16" : "fd00::/8");
    }
    return 0;
}

static uint32_t v4(const char *s)
{
    struct in_addr a;
    inet_pton(AF_INET, s, &a);
    return ntohl(a.s_addr);
}

static int parse_ipv4(struct jr *r, json_object *root, struct net_def *n)
{
    json_object *o = NULL, *dhcp = NULL, *hosts = NULL;
    int e = jr_object(r, root, "ipv4", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "ipv4");
    static const char *const keys[] = {"address", "dhcp", "hosts", NULL};
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "address", true, &n->ipv4.address)) < 0)
        return e;
    struct qv_err pe = {0};
    if (netsetup_cidr_parse(n->ipv4.address, &n->ipv4.cidr, &pe) < 0 || n->ipv4.cidr.family != AF_INET ||
        !strchr(n->ipv4.address, '/') || n->ipv4.cidr.prefix < 8 || n->ipv4.cidr.prefix > 30)
        return jr_key(r, "address"),
               jr_fail(r, "\"%s\" is not the host's address with a prefix of 8 to 30 bits, like \"10.77.0.1/24\"",
                       n->ipv4.address);
    uint32_t host = (uint32_t)n->ipv4.cidr.addr[0] << 24 | (uint32_t)n->ipv4.cidr.addr[1] << 16 |
                    (uint32_t)n->ipv4.cidr.addr[2] << 8 | n->ipv4.cidr.addr[3];
    uint32_t mask = ~0u << (32 - n->ipv4.cidr.prefix);
    if ((host & ~mask) == 0 || (host & ~mask) == ~mask)
        return jr_key(r, "address"), jr_fail(r, "%s is the network's own or broadcast address, not a host's",
                                             n->ipv4.address);
    if ((e = check_unicast(r, n->ipv4.address, &n->ipv4.cidr)) < 0)
        return e;
    if ((e = jr_object(r, o, "dhcp", false, &dhcp)) < 0)
        return e;
    n->ipv4.lease_time = DEFAULT_LEASE;
    if (dhcp) {
        size_t md = jr_key(r, "dhcp");
        static const char *const dkeys[] = {"start", "end", "lease_time", NULL};
        int64_t lt = DEFAULT_LEASE;
        if ((e = jr_only_keys(r, dhcp, dkeys)) < 0 || (e = addr_in(r, dhcp, "start", &n->ipv4.cidr, true, &n->ipv4.dhcp_start)) < 0 ||
            (e = addr_in(r, dhcp, "end", &n->ipv4.cidr, true, &n->ipv4.dhcp_end)) < 0 ||
            (e = jr_int(r, dhcp, "lease_time", 120, 365 * 86400, &lt)) < 0)
            return e;
        if (v4(n->ipv4.dhcp_start) > v4(n->ipv4.dhcp_end))
            return jr_fail(r, "start %s is after end %s", n->ipv4.dhcp_start, n->ipv4.dhcp_end);
        if (v4(n->ipv4.dhcp_start) <= host && host <= v4(n->ipv4.dhcp_end))
            return jr_fail(r, "the range %s-%s contains the host's own address", n->ipv4.dhcp_start, n->ipv4.dhcp_end);
        n->ipv4.lease_time = (unsigned)lt;
        jr_pop(r, md);
    }
    if ((e = jr_array(r, o, "hosts", &hosts)) < 0)
        return e;
    if (hosts) {
        size_t mh = jr_key(r, "hosts");
        n->ipv4.nhosts = json_object_array_length(hosts);
        n->ipv4.hosts = qv_xcalloc(n->ipv4.nhosts, sizeof(*n->ipv4.hosts));
        for (size_t i = 0; i < n->ipv4.nhosts; i++) {
            json_object *h = json_object_array_get_idx(hosts, i);
            struct net_host *nh = &n->ipv4.hosts[i];
            size_t mi = jr_index(r, i);
            static const char *const hkeys[] = {"mac", "ip", "name", NULL};
            if ((e = jr_expect(r, h, json_type_object)) < 0 || (e = jr_only_keys(r, h, hkeys)) < 0 ||
                (e = jr_string(r, h, "mac", true, &nh->mac)) < 0 || (e = addr_in(r, h, "ip", &n->ipv4.cidr, false, &nh->ip)) < 0 ||
                (e = jr_string(r, h, "name", false, &nh->name)) < 0)
                return e;
            char mac[18];
            if (!mac_normalise(nh->mac, mac))
                return jr_key(r, "mac"), jr_fail(r, "\"%s\" is not a unicast MAC address", nh->mac);
            memcpy(nh->mac, mac, sizeof(mac));     /* same length: normalising only lowers the case */
            if (nh->name && !hostname_valid(nh->name))
                return jr_key(r, "name"), jr_fail(r, "\"%s\" is not a host name", nh->name);
            if (!nh->ip && !nh->name)
                return jr_fail(r, "needs ip or name");
            if (nh->ip && v4(nh->ip) == host)
                return jr_key(r, "ip"), jr_fail(r, "%s is the host's own address", nh->ip);
            for (size_t j = 0; j < i; j++) {
                if (strcmp(n->ipv4.hosts[j].mac, nh->mac) == 0)
                    return jr_key(r, "mac"), jr_fail(r, "%s is listed twice (hosts[%zu])", nh->mac, j);
                if (nh->ip && n->ipv4.hosts[j].ip && strcmp(n->ipv4.hosts[j].ip, nh->ip) == 0)
                    return jr_key(r, "ip"), jr_fail(r, "%s is given to hosts[%zu] too", nh->ip, j);
            }
            jr_pop(r, mi);
        }
        jr_pop(r, mh);
    }
    jr_pop(r, m);
    return 0;
}

static int parse_ipv6(struct jr *r, json_object *root, struct net_def *n)
{
    json_object *o = NULL, *dhcp = NULL;
    int e = jr_object(r, root, "ipv6", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "ipv6");
    static const char *const keys[] = {"address", "dhcp", NULL};
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "address", true, &n->ipv6.address)) < 0)
        return e;
    struct qv_err pe = {0};
    if (netsetup_cidr_parse(n->ipv6.address, &n->ipv6.cidr, &pe) < 0 || n->ipv6.cidr.family != AF_INET6 ||
        !strchr(n->ipv6.address, '/') || n->ipv6.cidr.prefix < 48 || n->ipv6.cidr.prefix > 64)
        return jr_key(r, "address"), jr_fail(r, "\"%s\" is not an IPv6 address with a prefix of 48 to 64 bits, like "
                                             "\"fd77::1/64\"", n->ipv6.address);
    if ((e = check_unicast(r, n->ipv6.address, &n->ipv6.cidr)) < 0)
        return e;
    if ((e = jr_object(r, o, "dhcp", false, &dhcp)) < 0)
        return e;
    if (dhcp) {
        size_t md = jr_key(r, "dhcp");
        static const char *const dkeys[] = {"start", "end", NULL};
        if ((e = jr_only_keys(r, dhcp, dkeys)) < 0 || (e = addr_in(r, dhcp, "start", &n->ipv6.cidr, true, &n->ipv6.dhcp_start)) < 0 ||
            (e = addr_in(r, dhcp, "end", &n->ipv6.cidr, true, &n->ipv6.dhcp_end)) < 0)
            return e;
        jr_pop(r, md);
    }
    jr_pop(r, m);
    return 0;
}

static int parse_dns(struct jr *r, json_object *root, struct net_def *n)
{
    json_object *o = NULL, *fw = NULL;
    int e = jr_object(r, root, "dns", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "dns");
    static const char *const keys[] = {"domain", "forwarders", NULL};
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "domain", false, &n->dns.domain)) < 0 ||
        (e = jr_array(r, o, "forwarders", &fw)) < 0)
        return e;
    if (n->dns.domain && !domain_valid(n->dns.domain))
        return jr_key(r, "domain"), jr_fail(r, "\"%s\" is not a domain name", n->dns.domain);
    for (size_t i = 0; fw && i < json_object_array_length(fw); i++) {
        json_object *v = json_object_array_get_idx(fw, i);
        size_t mf = jr_key(r, "forwarders");
        jr_index(r, i);
        unsigned char buf[16];
        if ((e = jr_expect(r, v, json_type_string)) < 0)
            return e;
        const char *s = json_object_get_string(v);
        if (inet_pton(AF_INET, s, buf) != 1 && inet_pton(AF_INET6, s, buf) != 1)
            return jr_fail(r, "%s is not an IP address", jr_show(v));
        strv_push(&n->dns.forwarders, s);
        jr_pop(r, mf);
    }
    jr_pop(r, m);
    return 0;
}

static int parse_forwards(struct jr *r, json_object *root, struct net_def *n)
{
    json_object *a = NULL;
    int e = jr_array(r, root, "forwards", &a);
    if (e < 0 || !a)
        return e;
    size_t m = jr_key(r, "forwards");
    if (!n->ipv4.address && json_object_array_length(a) > 0)
        return jr_fail(r, "need ipv4 (port forwards go to IPv4 guests)");
    n->nforwards = json_object_array_length(a);
    n->forwards = qv_xcalloc(n->nforwards, sizeof(*n->forwards));
    for (size_t i = 0; i < n->nforwards; i++) {
        json_object *o = json_object_array_get_idx(a, i);
        struct net_forward *f = &n->forwards[i];
        size_t mi = jr_index(r, i);
        static const char *const keys[] = {"protocol", "host_port", "guest", "guest_port", NULL};
        int proto = 0;
        int64_t hp = 0, gp = 0;
        if ((e = jr_expect(r, o, json_type_object)) < 0 || (e = jr_only_keys(r, o, keys)) < 0 ||
            (e = jr_enum(r, o, "protocol", proto_names, &proto)) < 0 || (e = addr_in(r, o, "guest", &n->ipv4.cidr, true, &f->guest)) < 0)
            return e;
        if (!json_object_object_get_ex(o, "host_port", NULL))
            return jr_key(r, "host_port"), jr_fail(r, "missing");
        if ((e = jr_int(r, o, "host_port", 1, 65535, &hp)) < 0 || (e = jr_int(r, o, "guest_port", 1, 65535, &gp)) < 0)
            return e;
        f->udp = proto == 1;
        f->host_port = (int)hp;
        f->guest_port = gp ? (int)gp : (int)hp;
        for (size_t j = 0; j < i; j++)
            if (n->forwards[j].host_port == f->host_port && n->forwards[j].udp == f->udp)
                return jr_key(r, "host_port"), jr_fail(r, "%d/%s is forwarded twice", f->host_port, proto_names[proto]);
        jr_pop(r, mi);
    }
    jr_pop(r, m);
    return 0;
}

static int parse_net(struct jr *r, json_object *o, struct net_def *n)
{
    static const char *const keys[] = {"name", "mode", "bridge", "mtu", "ipv4", "ipv6", "dns", "forwards", "autostart", NULL};
    int e, mode = NET_NAT;
    int64_t mtu = 0;
    if ((e = jr_expect(r, o, json_type_object)) < 0 || (e = jr_check_text(r, o)) < 0 ||
        (e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "name", true, &n->name)) < 0)
        return e;
    if (!name_valid(n->name))
        return jr_key(r, "name"), jr_fail(r, "\"%s\" is not a valid name", n->name);
    if ((e = jr_enum(r, o, "mode", net_mode_names, &mode)) < 0 || (e = jr_string(r, o, "bridge", false, &n->bridge)) < 0 ||
        (e = jr_int(r, o, "mtu", 576, 65535, &mtu)) < 0 || (e = jr_bool(r, o, "autostart", &n->autostart)) < 0)
        return e;
    n->mode = mode;
    n->mtu = (unsigned)mtu;
    if (n->bridge && !netsetup_ifname_valid(n->bridge))
        return jr_key(r, "bridge"), jr_fail(r, "\"%s\" is not an interface name (1-15 of letters, digits, _ . -)", n->bridge);
    if (mode == NET_BRIDGE) {
        if (!n->bridge)
            return jr_key(r, "bridge"), jr_fail(r, "missing: mode bridge attaches to an existing host bridge");
        static const char *const managed_only[] = {"ipv4", "ipv6", "dns", "forwards", "mtu", NULL};
        for (int i = 0; managed_only[i]; i++)
            if (json_object_object_get_ex(o, managed_only[i], NULL))
                return jr_key(r, managed_only[i]),
                       jr_fail(r, "not with mode bridge: qvisor does not manage that bridge");
        return 0;
    }
    if (!n->bridge) {
        char br[NETSETUP_IFNAMSIZ];
        netsetup_bridge_name(n->name, br);
        n->bridge = qv_xstrdup(br);
    }
    if ((e = parse_ipv4(r, o, n)) < 0 || (e = parse_ipv6(r, o, n)) < 0 || (e = parse_dns(r, o, n)) < 0 ||
        (e = parse_forwards(r, o, n)) < 0)
        return e;
    if (!n->ipv4.address && !n->ipv6.address)
        return jr_fail(r, "a %s network needs ipv4 or ipv6", net_mode_names[mode]);
    if (n->nforwards && mode == NET_ISOLATED)
        return jr_key(r, "forwards"), jr_fail(r, "not with mode isolated");
    return 0;
}

int net_def_from_json(json_object *o, struct net_def *n, struct qv_err *e)
{
    struct jr r;
    jr_init(&r, e);
    memset(n, 0, sizeof(*n));
    int err = parse_net(&r, o, n);
    if (err < 0)
        net_def_free(n);
    return err;
}

json_object *net_def_to_json(const struct net_def *n)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(n->name));
    json_object_object_add(o, "mode", json_object_new_string(net_mode_names[n->mode]));
    json_object_object_add(o, "bridge", json_object_new_string(n->bridge));
    if (n->mtu)
        json_object_object_add(o, "mtu", json_object_new_int((int)n->mtu));
    if (n->ipv4.address) {
        json_object *v = json_object_new_object();
        json_object_object_add(v, "address", json_object_new_string(n->ipv4.address));
        if (n->ipv4.dhcp_start) {
            json_object *d = json_object_new_object();
            json_object_object_add(d, "start", json_object_new_string(n->ipv4.dhcp_start));
            json_object_object_add(d, "end", json_object_new_string(n->ipv4.dhcp_end));
            json_object_object_add(d, "lease_time", json_object_new_int((int)n->ipv4.lease_time));
            json_object_object_add(v, "dhcp", d);
        }
        json_object *hosts = json_object_new_array();
        for (size_t i = 0; i < n->ipv4.nhosts; i++) {
            json_object *h = json_object_new_object();
            json_object_object_add(h, "mac", json_object_new_string(n->ipv4.hosts[i].mac));
            if (n->ipv4.hosts[i].ip)
                json_object_object_add(h, "ip", json_object_new_string(n->ipv4.hosts[i].ip));
            if (n->ipv4.hosts[i].name)
                json_object_object_add(h, "name", json_object_new_string(n->ipv4.hosts[i].name));
            json_object_array_add(hosts, h);
        }
        json_object_object_add(v, "hosts", hosts);
        json_object_object_add(o, "ipv4", v);
    }
    if (n->ipv6.address) {
        json_object *v = json_object_new_object();
        json_object_object_add(v, "address", json_object_new_string(n->ipv6.address));
        if (n->ipv6.dhcp_start) {
            json_object *d = json_object_new_object();
            json_object_object_add(d, "start", json_object_new_string(n->ipv6.dhcp_start));
            json_object_object_add(d, "end", json_object_new_string(n->ipv6.dhcp_end));
            json_object_object_add(v, "dhcp", d);
        }
        json_object_object_add(o, "ipv6", v);
    }
    if (n->mode != NET_BRIDGE) {
        json_object *dns = json_object_new_object();
        if (n->dns.domain)
            json_object_object_add(dns, "domain", json_object_new_string(n->dns.domain));
        json_object *fw = json_object_new_array();
        for (size_t i = 0; i < n->dns.forwarders.n; i++)
            json_object_array_add(fw, json_object_new_string(n->dns.forwarders.v[i]));
        json_object_object_add(dns, "forwarders", fw);
        json_object_object_add(o, "dns", dns);
        json_object *fwd = json_object_new_array();
        for (size_t i = 0; i < n->nforwards; i++) {
            json_object *f = json_object_new_object();
            json_object_object_add(f, "protocol", json_object_new_string(n->forwards[i].udp ? "udp" : "tcp"));
            json_object_object_add(f, "host_port", json_object_new_int(n->forwards[i].host_port));
            json_object_object_add(f, "guest", json_object_new_string(n->forwards[i].guest));
            json_object_object_add(f, "guest_port", json_object_new_int(n->forwards[i].guest_port));
            json_object_array_add(fwd, f);
        }
        json_object_object_add(o, "forwards", fwd);
    }
    json_object_object_add(o, "autostart", json_object_new_boolean(n->autostart));
    return o;
}

/* ---- on disk ---- */

int net_def_path(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_ETC "/networks/%s.json", name);
}

int net_load(const struct qv_paths *p, const char *name, struct net_def *n, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid network name", name);
    char path[PATH_MAX];
    net_def_path(p, name, path, sizeof(path));
    if (!path_exists(path)) {
        if (strcmp(name, "default") == 0)
            return net_define_default(p, n, e);
        return qv_fail(e, -ENOENT, "no network named %s (qvisor net list shows the defined ones)", name);
    }
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r < 0)
        return r;
    if ((r = net_def_from_json(o, n, e)) < 0)
        return qv_prefix(e, "%s: ", path);
    return 0;
}

int net_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e)
{
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_ETC "/networks");
    return json_names_in(dir, names, e);
}

/* Overlaps with other defined networks (by subnet or bridge) and with the host. */
static int check_conflicts(const struct qv_paths *p, const struct net_def *n, struct qv_err *e)
{
    struct strv names = {0};
    int r = net_list_names(p, &names, e);
    for (size_t i = 0; r == 0 && i < names.n; i++) {
        if (strcmp(names.v[i], n->name) == 0)
            continue;
        struct net_def o;
        if (net_load(p, names.v[i], &o, NULL) < 0)
            continue;
        char a[64], b[64];
        if (n->ipv4.address && o.ipv4.address && netsetup_cidr_overlap(&n->ipv4.cidr, &o.ipv4.cidr)) {
            netsetup_cidr_network_str(&n->ipv4.cidr, a, sizeof(a));
            netsetup_cidr_network_str(&o.ipv4.cidr, b, sizeof(b));
            r = qv_fail(e, -EADDRINUSE, "%s: ipv4: %s overlaps %s of network %s", n->name, a, b, o.name);
        } else if (n->ipv6.address && o.ipv6.address && netsetup_cidr_overlap(&n->ipv6.cidr, &o.ipv6.cidr)) {
            netsetup_cidr_network_str(&n->ipv6.cidr, a, sizeof(a));
            netsetup_cidr_network_str(&o.ipv6.cidr, b, sizeof(b));
            r = qv_fail(e, -EADDRINUSE, "%s: ipv6: %s overlaps %s of network %s", n->name, a, b, o.name);
        } else if (n->mode != NET_BRIDGE && o.mode != NET_BRIDGE && strcmp(n->bridge, o.bridge) == 0) {
            r = qv_fail(e, -EADDRINUSE, "%s: bridge %s is network %s's", n->name, n->bridge, o.name);
        }
        net_def_free(&o);
    }
    strv_free(&names);
    return r < 0 ? r : net_check_host(n, e);
}

int net_check_host(const struct net_def *n, struct qv_err *e)
{
    const char *cidrs[] = {n->ipv4.address, n->ipv6.address};
    for (size_t i = 0; i < ARRAY_SIZE(cidrs); i++) {
        if (!cidrs[i] || n->mode == NET_BRIDGE)
            continue;
        char net[64];
        netsetup_cidr_network_str(i == 0 ? &n->ipv4.cidr : &n->ipv6.cidr, net, sizeof(net));
        int r = netsetup_subnet_check_host(net, n->bridge, e);
        if (r < 0)
            return qv_prefix(e, "%s: %s: ", n->name, i == 0 ? "ipv4" : "ipv6");
    }
    return 0;
}

static int lock_dir(const struct qv_paths *p, struct qv_err *e)
{
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_ETC "/networks");
    return dir_lock(dir, e);
}

static int define_locked(const struct qv_paths *p, const struct net_def *n, bool replace, struct qv_err *e)
{
    char path[PATH_MAX];
    net_def_path(p, n->name, path, sizeof(path));
    if (!replace && path_exists(path))
        return qv_fail(e, -EEXIST, "network %s is already defined (undefine it first)", n->name);
    int r = check_conflicts(p, n, e);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *norm = net_def_to_json(n);
    return json_write_file_atomic(path, norm, 0644, e);
}

int net_define(const struct qv_paths *p, json_object *o, bool replace, struct net_def *out, struct qv_err *e)
{
    _cleanup_net_def_ struct net_def n = {0};
    int r = net_def_from_json(o, &n, e);
    if (r < 0)
        return r;
    _cleanup_close_ int lock = lock_dir(p, e);
    r = lock < 0 ? lock : define_locked(p, &n, replace, e);
    if (r == 0 && out)
        net_def_move(out, &n);
    return r;
}

int net_undefine(const struct qv_paths *p, const char *name, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid network name", name);
    _cleanup_close_ int lock = lock_dir(p, e);
    if (lock < 0)
        return lock;
    char path[PATH_MAX];
    net_def_path(p, name, path, sizeof(path));
    if (unlink(path) < 0)
        return errno == ENOENT ? qv_fail(e, -ENOENT, "no network named %s", name) : qv_failerr(e, -errno, "%s", path);
    return 0;
}

/* libvirt's "default", on a subnet the host does not use: 10.77.N.0/24. */
int net_define_default(const struct qv_paths *p, struct net_def *out, struct qv_err *e)
{
    struct qv_err last = {0};
    for (int third = 0; third < 256; third++) {
        char addr[32], start[32], end[32];
        snprintf(addr, sizeof(addr), "10.77.%d.1/24", third);
        snprintf(start, sizeof(start), "10.77.%d.100", third);
        snprintf(end, sizeof(end), "10.77.%d.254", third);
        json_object *o = json_object_new_object(), *v4 = json_object_new_object(), *dhcp = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string("default"));
        json_object_object_add(o, "mode", json_object_new_string("nat"));
        json_object_object_add(v4, "address", json_object_new_string(addr));
        json_object_object_add(dhcp, "start", json_object_new_string(start));
        json_object_object_add(dhcp, "end", json_object_new_string(end));
        json_object_object_add(v4, "dhcp", dhcp);
        json_object_object_add(o, "ipv4", v4);
        json_object *dns = json_object_new_object();
        json_object_object_add(dns, "domain", json_object_new_string("qvisor"));
        json_object_object_add(o, "dns", dns);
        json_object_object_add(o, "autostart", json_object_new_boolean(true));
        int r = net_define(p, o, false, out, &last);
        json_object_put(o);
        if (r == 0 || r == -EEXIST)
            return r == 0 ? 0 : net_load(p, "default", out, e);
        if (r != -EADDRINUSE)
            return qv_fail(e, r, "%s", last.msg);
    }
    return qv_fail(e, -EADDRINUSE, "default network: no free subnet in 10.77.0.0/16 (%s)", last.msg);
}

/* ---- net update: one static host or port forward at a time ---- */

const char *const net_update_section_names[] = {"host", "forward", NULL};

static bool item_str_eq(json_object *item, json_object *have, const char *key)
{
    json_object *a, *b;
    if (!json_object_object_get_ex(item, key, &a))
        return true;    /* not given: matches anything */
    if (!json_object_object_get_ex(have, key, &b))
        return false;
    if (strcmp(key, "mac") == 0) {
        char x[18], y[18];
        return mac_normalise(json_object_get_string(a), x) && mac_normalise(json_object_get_string(b), y) &&
               strcmp(x, y) == 0;
    }
    return strcmp(json_object_get_string(a), json_object_get_string(b)) == 0;
}

/* A forward is known by its protocol (tcp when not given) and host port. */
static bool same_forward(json_object *item, json_object *have)
{
    json_object *p, *hp, *hhp;
    const char *proto = json_object_object_get_ex(item, "protocol", &p) ? json_object_get_string(p) : "tcp";
    json_object *hproto = json_object_object_get(have, "protocol");
    return strcmp(proto, hproto ? json_object_get_string(hproto) : "tcp") == 0 &&
           json_object_object_get_ex(item, "host_port", &hp) && json_object_object_get_ex(have, "host_port", &hhp) &&
           json_object_get_int64(hp) == json_object_get_int64(hhp);
}

static const char *item_label(json_object *item, enum net_update_section sec, char *buf, size_t len)
{
    json_object *v;
    if (sec == NET_UPDATE_FORWARD) {
        json_object *p = json_object_object_get(item, "protocol");
        snprintf(buf, len, "%s/%s", json_object_object_get_ex(item, "host_port", &v) ? json_object_get_string(v) : "?",
                 p ? json_object_get_string(p) : "tcp");
    } else {
        const char *keys[] = {"mac", "ip", "name"};
        buf[0] = '\0';
        for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
            if (json_object_object_get_ex(item, keys[i], &v))
                snprintf(buf + strlen(buf), len - strlen(buf), "%s%s %s", buf[0] ? ", " : "", keys[i],
                         json_object_get_string(v));
    }
    return buf;
}

int net_def_update(const struct net_def *cur, enum net_update_op op, enum net_update_section sec, json_object *item,
                   struct net_def *out, struct qv_err *e)
{
    char label[160];
    if (!json_object_is_type(item, json_type_object))
        return qv_fail(e, -EINVAL, "network %s: the %s must be a JSON object", cur->name, net_update_section_names[sec]);
    item_label(item, sec, label, sizeof(label));
    if (cur->mode == NET_BRIDGE)
        return qv_fail(e, -EINVAL, "network %s: mode bridge has no %ss (qvisor does not manage that bridge)", cur->name,
                       net_update_section_names[sec]);
    if (sec == NET_UPDATE_HOST && !cur->ipv4.address)
        return qv_fail(e, -EINVAL, "network %s: static hosts are DHCPv4 and the network has no ipv4", cur->name);
    if (op == NET_UPDATE_DELETE && sec == NET_UPDATE_HOST && !json_object_object_length(item))
        return qv_fail(e, -EINVAL, "network %s: which host? (give its mac, ip or name)", cur->name);
    if (sec == NET_UPDATE_FORWARD && !json_object_object_get_ex(item, "host_port", NULL))
        return qv_fail(e, -EINVAL, "network %s: which forward? (give its host port)", cur->name);
    _cleanup_json_ json_object *o = net_def_to_json(cur);
    json_object *arr = NULL;
    if (sec == NET_UPDATE_HOST) {
        json_object *v4 = json_object_object_get(o, "ipv4");
        arr = json_object_object_get(v4, "hosts");
    } else {
        arr = json_object_object_get(o, "forwards");
    }
    size_t n = json_object_array_length(arr), match = n;
    for (size_t i = 0; i < n && match == n; i++) {
        json_object *have = json_object_array_get_idx(arr, i);
        if (sec == NET_UPDATE_FORWARD ? same_forward(item, have)
            : op == NET_UPDATE_DELETE ? item_str_eq(item, have, "mac") && item_str_eq(item, have, "ip") &&
                                            item_str_eq(item, have, "name")
                                      : item_str_eq(item, have, "mac"))
            match = i;
    }
    if (op == NET_UPDATE_ADD) {
        if (match < n)
            return qv_fail(e, -EEXIST, "network %s: %s %s is there already (%s[%zu]; delete it first)", cur->name,
                           net_update_section_names[sec], label, sec == NET_UPDATE_HOST ? "ipv4.hosts" : "forwards",
                           match);
        json_object_array_add(arr, json_object_get(item));
    } else {
        if (match == n)
            return qv_fail(e, -ENOENT, "network %s has no %s with %s (qvisor net show %s lists them)", cur->name,
                           net_update_section_names[sec], label, cur->name);
        json_object_array_del_idx(arr, match, 1);
    }
    int r = net_def_from_json(o, out, e);
    if (r < 0)
        return qv_prefix(e, "network %s: ", cur->name);
    return 0;
}

int net_update_config(const struct qv_paths *p, const char *name, enum net_update_op op, enum net_update_section sec,
                      json_object *item, struct net_def *out, struct qv_err *e)
{
    _cleanup_net_def_ struct net_def cur = {0}, next = {0};
    int r = net_load(p, name, &cur, e);     /* first, so "default" exists before the lock */
    if (r < 0)
        return r;
    net_def_free(&cur);
    _cleanup_close_ int lock = lock_dir(p, e);
    if (lock < 0)
        return lock;
    if ((r = net_load(p, name, &cur, e)) < 0 || (r = net_def_update(&cur, op, sec, item, &next, e)) < 0)
        return r;
    char path[PATH_MAX];
    net_def_path(p, name, path, sizeof(path));
    _cleanup_json_ json_object *norm = net_def_to_json(&next);
    if ((r = json_write_file_atomic(path, norm, 0644, e)) < 0)
        return r;
    if (out)
        net_def_move(out, &next);
    return 0;
}

/* Names the parts of `to` that differ from `from` ("mode", "ipv4.dhcp"), one level into
 * objects; autostart is left out (it never needs a restart). */
void net_def_diff(const struct net_def *from, const struct net_def *to, struct strv *changed)
{
    _cleanup_json_ json_object *a = net_def_to_json(from);
    _cleanup_json_ json_object *b = net_def_to_json(to);
    json_object *both[2] = {a, b};
    for (int side = 0; side < 2; side++) {
        json_object_object_foreach(both[side], key, val) {
            json_object *other = NULL;
            json_object_object_get_ex(both[!side], key, &other);
            if (strcmp(key, "autostart") == 0 || (other && json_object_equal(val, other)))
                continue;
            if (other && json_object_is_type(val, json_type_object) && json_object_is_type(other, json_type_object)) {
                json_object_object_foreach(val, k2, v2) {
                    json_object *o2 = NULL;
                    if (json_object_object_get_ex(other, k2, &o2) && json_object_equal(v2, o2))
                        continue;
                    char path[128];
                    snprintf(path, sizeof(path), "%s.%s", key, k2);
                    if (!strv_contains((const char *const *)changed->v, path))
                        strv_push(changed, path);
                }
                json_object_object_foreach(other, k3, v3) {
                    (void)v3;
                    char path[128];
                    snprintf(path, sizeof(path), "%s.%s", key, k3);
                    if (!json_object_object_get_ex(val, k3, NULL) && !strv_contains((const char *const *)changed->v, path))
                        strv_push(changed, path);
                }
            } else if (!strv_contains((const char *const *)changed->v, key)) {
                strv_push(changed, key);
            }
        }
    }
}
