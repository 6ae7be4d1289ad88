/* An outbound filter on one uid: the processes of a QEMU that must reach Ceph clusters
 * (rbd disks) run in the host's network namespace, and this table lets that uid open
 * connections only to the clusters' monitors and OSDs. Everything else new it sends
 * is rejected as administratively prohibited (the connect fails at once, "No route to
 * host", instead of hanging); replies on connections it accepted (a VNC listener)
 * still go out. One table per uid, named outside the qvisor-NET space that network
 * gc sweeps. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "netsetup/internal.h"
#include "netsetup/nft_internal.h"

void netsetup_uid_filter_table(uid_t uid, char *out, size_t outlen)
{
    snprintf(out, outlen, NETSETUP_UID_TABLE_PREFIX "%u", (unsigned)uid);
}

/* "IP:PORT" or "[IP6]:PORT" into the address and port as nft writes them; false for
 * anything else, so nothing but an address and a number reaches the script. */
static bool split_addr(const char *s, int *family, char *ip, size_t iplen, unsigned *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return false;
    char host[INET6_ADDRSTRLEN + 2];
    size_t hl = (size_t)(colon - s);
    if (s[0] == '[') {
        if (hl < 3 || s[hl - 1] != ']' || hl - 2 >= sizeof(host))
            return false;
        memcpy(host, s + 1, hl - 2);
        host[hl - 2] = '\0';
        *family = AF_INET6;
    } else {
        if (hl >= sizeof(host))
            return false;
        memcpy(host, s, hl);
        host[hl] = '\0';
        *family = AF_INET;
    }
    unsigned char buf[16];
    if (inet_pton(*family, host, buf) != 1 || !inet_ntop(*family, buf, ip, (socklen_t)iplen))
        return false;
    char *end;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (!colon[1] || *end || p == 0 || p > 65535)
        return false;
    *port = (unsigned)p;
    return true;
}

int netsetup_nft_uid_filter_apply(struct netsetup_nft *n, uid_t uid, const char *const *addrs, struct qv_err *e)
{
    char t[64];
    netsetup_uid_filter_table(uid, t, sizeof(t));
    struct buf v4 = {0}, v6 = {0}, b = {0};
    for (size_t i = 0; addrs && addrs[i]; i++) {
        int family;
        char ip[INET6_ADDRSTRLEN];
        unsigned port;
        if (!split_addr(addrs[i], &family, ip, sizeof(ip), &port)) {
            buf_free(&v4);
            buf_free(&v6);
            return qv_fail(e, -EINVAL, "uid %u filter: \"%s\" is not IP:PORT", (unsigned)uid, addrs[i]);
        }
        struct buf *to = family == AF_INET ? &v4 : &v6;
        buf_printf(to, "%s%s . %u", to->len ? ", " : "", ip, port);
    }
    buf_printf(&b, "add table inet %s\ndelete table inet %s\ntable inet %s {\n"
                   "  chain output {\n    type filter hook output priority 0; policy accept;\n"
                   "    meta skuid %u ct state established,related accept\n", t, t, t, (unsigned)uid);
    if (v4.len)
        buf_printf(&b, "    meta skuid %u ip daddr . tcp dport { %s } accept\n", (unsigned)uid, v4.p);
    if (v6.len)
        buf_printf(&b, "    meta skuid %u ip6 daddr . tcp dport { %s } accept\n", (unsigned)uid, v6.p);
    buf_printf(&b, "    meta skuid %u reject with icmpx admin-prohibited\n  }\n}\n", (unsigned)uid);
    char what[96];
    snprintf(what, sizeof(what), "the network filter of uid %u", (unsigned)uid);
    int r = netsetup_nft_run(n, what, b.p, e);
    buf_free(&v4);
    buf_free(&v6);
    buf_free(&b);
    return r;
}

int netsetup_nft_uid_filter_remove(struct netsetup_nft *n, uid_t uid, struct qv_err *e)
{
    char t[64], script[200], what[96];
    netsetup_uid_filter_table(uid, t, sizeof(t));
    snprintf(script, sizeof(script), "add table inet %s\ndelete table inet %s\n", t, t);
    snprintf(what, sizeof(what), "removing the network filter of uid %u", (unsigned)uid);
    return netsetup_nft_run(n, what, script, e);
}
