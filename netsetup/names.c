#include <arpa/inet.h>
#include <string.h>

#include "netsetup/internal.h"

bool netsetup_ifname_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n >= NETSETUP_IFNAMSIZ || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
        return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '-'))
            return false;
    return true;
}

static void hashed_name(const char *prefix, const char *vm_uuid, unsigned nic_index,
                        char out[NETSETUP_IFNAMSIZ])
{
    char key[128];
    int n = snprintf(key, sizeof(key), "%s/%u", vm_uuid ? vm_uuid : "", nic_index);
    uint64_t h = fnv1a64(key, (size_t)n, FNV1A64_INIT);
    /* 12 hex digits: 48 bits, collisions among a host's NICs are not a practical concern */
    snprintf(out, NETSETUP_IFNAMSIZ, "%s%012llx", prefix, (unsigned long long)(h & 0xffffffffffffull));
}

void netsetup_tap_name(const char *vm_uuid, unsigned nic_index, char out[NETSETUP_IFNAMSIZ])
{
    hashed_name(NETSETUP_TAP_PREFIX, vm_uuid, nic_index, out);
}

void netsetup_macvtap_name(const char *vm_uuid, unsigned nic_index, char out[NETSETUP_IFNAMSIZ])
{
    hashed_name(NETSETUP_MACVTAP_PREFIX, vm_uuid, nic_index, out);
}

void netsetup_bridge_name(const char *network, char out[NETSETUP_IFNAMSIZ])
{
    char full[128];
    snprintf(full, sizeof(full), "%s%s", NETSETUP_BRIDGE_PREFIX, network);
    if (netsetup_ifname_valid(full)) {
        snprintf(out, NETSETUP_IFNAMSIZ, "%s", full);
        return;
    }
    uint64_t h = fnv1a64(network, strlen(network), FNV1A64_INIT);
    snprintf(out, NETSETUP_IFNAMSIZ, "%s%.4s%06llx", NETSETUP_BRIDGE_PREFIX, network,
             (unsigned long long)(h & 0xffffff));
}

int netsetup_cidr_parse(const char *s, struct netsetup_cidr *out, struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    char host[INET6_ADDRSTRLEN + 1];
    const char *slash = s ? strchr(s, '/') : NULL;
    size_t hl = slash ? (size_t)(slash - s) : (s ? strlen(s) : 0);
    if (!s || hl == 0 || hl >= sizeof(host))
        return qv_fail(e, -EINVAL, "\"%s\" is not an address with a prefix length", s ? s : "");
    memcpy(host, s, hl);
    host[hl] = '\0';
    if (inet_pton(AF_INET, host, out->addr) == 1)
        out->family = AF_INET;
    else if (inet_pton(AF_INET6, host, out->addr) == 1)
        out->family = AF_INET6;
    else
        return qv_fail(e, -EINVAL, "\"%s\" is not an IPv4 or IPv6 address", s);
    unsigned max = out->family == AF_INET ? 32 : 128;
    out->prefix = max;
    if (slash) {
        uint64_t v;
        if (parse_u64(slash + 1, &v) < 0 || v > max)
            return qv_fail(e, -EINVAL, "\"%s\": prefix length must be 0-%u", s, max);
        out->prefix = (unsigned)v;
    }
    return 0;
}

static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, bytes) != 0)
        return false;
    if (!rest)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

bool netsetup_cidr_overlap(const struct netsetup_cidr *a, const struct netsetup_cidr *b)
{
    if (a->family != b->family)
        return false;
    return prefix_equal(a->addr, b->addr, a->prefix < b->prefix ? a->prefix : b->prefix);
}

bool netsetup_cidr_contains(const struct netsetup_cidr *net, const struct netsetup_cidr *addr)
{
    return net->family == addr->family && prefix_equal(net->addr, addr->addr, net->prefix);
}

void netsetup_cidr_addr_str(const struct netsetup_cidr *c, char *out, size_t outlen)
{
    char s[INET6_ADDRSTRLEN];
    if (!inet_ntop(c->family, c->addr, s, sizeof(s)))
        s[0] = '\0';
    snprintf(out, outlen, "%s", s);
}

void netsetup_cidr_network_str(const struct netsetup_cidr *c, char *out, size_t outlen)
{
    struct netsetup_cidr n = *c;
    unsigned len = c->family == AF_INET ? 4 : 16;
    for (unsigned i = 0; i < len; i++) {
        unsigned bit = i * 8;
        if (bit >= c->prefix)
            n.addr[i] = 0;
        else if (c->prefix - bit < 8)
            n.addr[i] &= (unsigned char)(0xff << (8 - (c->prefix - bit)));
    }
    char s[INET6_ADDRSTRLEN];
    netsetup_cidr_addr_str(&n, s, sizeof(s));
    snprintf(out, outlen, "%s/%u", s, c->prefix);
}
