#include <stdlib.h>
#include <string.h>

#include "netsetup/internal.h"

static void copy_field(char *out, size_t outlen, const char *s)
{
    /* dnsmasq writes "*" for "none" */
    snprintf(out, outlen, "%s", strcmp(s, "*") == 0 ? "" : s);
}

/* "EXPIRY MAC IP HOSTNAME CLIENT-ID" (DHCPv4) or, after the "duid" line,
 * "EXPIRY IAID IP HOSTNAME DUID" (DHCPv6). */
static bool parse_line(char *line, struct netsetup_lease *l)
{
    char *f[5], *save = NULL;
    int n = 0;
    for (char *t = strtok_r(line, " \t", &save); t && n < 5; t = strtok_r(NULL, " \t", &save))
        f[n++] = t;
    if (n < 4 || strcmp(f[0], "duid") == 0)
        return false;
    memset(l, 0, sizeof(*l));
    char *end;
    long long expiry = strtoll(f[0], &end, 10);
    if (*end || end == f[0] || strlen(f[2]) >= sizeof(l->ip))
        return false;
    l->expiry = expiry;
    l->ipv6 = strchr(f[2], ':') != NULL;
    snprintf(l->ip, sizeof(l->ip), "%s", f[2]);
    if (l->ipv6) {
        unsigned long iaid = strtoul(f[1], &end, 10);
        l->iaid = *end ? 0 : (uint32_t)iaid;
    } else if (strlen(f[1]) < sizeof(l->mac)) {
        snprintf(l->mac, sizeof(l->mac), "%s", f[1]);
    }
    copy_field(l->hostname, sizeof(l->hostname), f[3]);
    if (n == 5)
        copy_field(l->client_id, sizeof(l->client_id), f[4]);
    return true;
}

int netsetup_leases_read(const char *path, struct netsetup_lease **out, size_t *n, struct qv_err *e)
{
    *out = NULL;
    *n = 0;
    _cleanup_free_ char *text = NULL;
    int r = read_file(path, 16u << 20, &text, NULL);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return qv_failerr(e, r, "cannot read leases %s", path);
    size_t cap = 0;
    _cleanup_free_ struct netsetup_lease *leases = NULL;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        struct netsetup_lease l;
        if (!parse_line(line, &l))
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            leases = qv_xrealloc(leases, cap * sizeof(*leases));
        }
        leases[(*n)++] = l;
    }
    *out = qv_steal_ptr(&leases);
    return 0;
}
