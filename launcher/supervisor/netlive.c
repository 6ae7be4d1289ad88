/* A running network changed without a restart (net update, net edit): static hosts
 * through dnsmasq's hosts files and a SIGHUP (dnsmasq re-reads them and keeps every
 * lease), port forwards as their own nft rules (other forwards and their connections
 * are not touched). run/qvisor/networks/NAME/live.json is the definition the network
 * runs with: its supervisor writes it at start and re-reads it on SIGHUP, so a dnsmasq
 * it restarts later gets the same hosts. Changes are made under the run directory's
 * .lock, by the caller (root), and recorded there before the supervisor is told. */
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/internal.h"

#define LIVE_FILE "live.json"

void net_dnsmasq_config(const struct net_def *d, const char *dir, struct netsetup_dnsmasq *c,
                        struct netsetup_dhcp_host *hosts)
{
    memset(c, 0, sizeof(*c));
    c->network = d->name;
    c->run_dir = dir;
    c->bridge = d->bridge;
    c->ipv4 = d->ipv4.address;
    c->dhcp_start = d->ipv4.dhcp_start;
    c->dhcp_end = d->ipv4.dhcp_end;
    c->lease_time = d->ipv4.lease_time;
    for (size_t i = 0; i < d->ipv4.nhosts; i++)
        hosts[i] = (struct netsetup_dhcp_host){d->ipv4.hosts[i].mac, d->ipv4.hosts[i].ip, d->ipv4.hosts[i].name};
    c->hosts = hosts;
    c->nhosts = d->ipv4.nhosts;
    c->ipv6 = d->ipv6.address;
    c->dhcp6_start = d->ipv6.dhcp_start;
    c->dhcp6_end = d->ipv6.dhcp_end;
    c->no_router = d->mode == NET_ISOLATED;
    c->domain = d->dns.domain;
    c->forwarders = (const char *const *)d->dns.forwarders.v;
}

int network_live_write(const char *dir, const struct net_def *d, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/" LIVE_FILE, dir);
    _cleanup_json_ json_object *o = net_def_to_json(d);
    return json_write_file_atomic(path, o, 0644, e);
}

int network_live_read(const char *dir, struct net_def *out, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/" LIVE_FILE, dir);
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r < 0)
        return r;
    if ((r = net_def_from_json(o, out, e)) < 0)
        return qv_prefix(e, "%s: ", path);
    return 0;
}

static bool forward_eq(const struct net_forward *a, const struct net_forward *b)
{
    return a->udp == b->udp && a->host_port == b->host_port && a->guest_port == b->guest_port &&
           strcmp(a->guest, b->guest) == 0;
}

static bool has_forward(const struct net_def *d, const struct net_forward *f)
{
    for (size_t i = 0; i < d->nforwards; i++)
        if (forward_eq(&d->forwards[i], f))
            return true;
    return false;
}

static struct netsetup_forward ns_forward(const struct net_forward *f)
{
    return (struct netsetup_forward){f->udp ? IPPROTO_UDP : IPPROTO_TCP, (uint16_t)f->host_port, f->guest,
                                     (uint16_t)f->guest_port};
}

static bool str_eq_null(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool hosts_equal(const struct net_def *a, const struct net_def *b)
{
    if (a->ipv4.nhosts != b->ipv4.nhosts)
        return false;
    for (size_t i = 0; i < a->ipv4.nhosts; i++) {
        const struct net_host *x = &a->ipv4.hosts[i], *y = &b->ipv4.hosts[i];
        if (strcmp(x->mac, y->mac) || !str_eq_null(x->ip, y->ip) || !str_eq_null(x->name, y->name))
            return false;
    }
    return true;
}

/* Makes the running network `old` into `next`, which differs from it in hosts and
 * forwards only; what was done is appended to `applied`. */
static int apply_change(const char *dir, const struct net_def *old, const struct net_def *next, struct strv *applied,
                        struct qv_err *e)
{
    int r = 0;
    size_t removed = 0, added = 0;
    if (old->nforwards || next->nforwards) {
        _cleanup_nft_ struct netsetup_nft *nft = NULL;
        for (size_t i = 0; r == 0 && i < old->nforwards; i++) {
            if (has_forward(next, &old->forwards[i]))
                continue;
            struct netsetup_forward f = ns_forward(&old->forwards[i]);
            if ((nft || (r = netsetup_nft_open(&nft, e)) == 0) && (r = netsetup_nft_forward_remove(nft, old->name, &f, e)) == 0)
                removed++;
        }
        for (size_t i = 0; r == 0 && i < next->nforwards; i++) {
            if (has_forward(old, &next->forwards[i]))
                continue;
            struct netsetup_forward f = ns_forward(&next->forwards[i]);
            if ((nft || (r = netsetup_nft_open(&nft, e)) == 0) && (r = netsetup_nft_forward_add(nft, next->name, &f, e)) == 0)
                added++;
        }
        if (removed || added) {
            char line[96];
            snprintf(line, sizeof(line), "forwards (%zu rule%s added, %zu removed)", added, added == 1 ? "" : "s", removed);
            strv_push(applied, line);
        }
        if (r < 0)
            return r;
    }
    if (!hosts_equal(old, next)) {
        struct netsetup_dnsmasq c;
        struct netsetup_dhcp_host *hosts = qv_xcalloc(next->ipv4.nhosts + 1, sizeof(*hosts));
        net_dnsmasq_config(next, dir, &c, hosts);
        r = netsetup_dnsmasq_write(&c, e);
        free(hosts);
        if (r < 0)
            return r;
        pid_t dns;
        if (netsetup_dnsmasq_find(dir, &dns) == 0 && kill(dns, SIGHUP) == 0)
            strv_push(applied, "hosts (dnsmasq re-read them; its leases stay)");
        else
            strv_push(applied, "hosts (dnsmasq is not running: it reads them when it starts)");
    }
    return 0;
}

/* Tells the network's supervisor to re-read live.json (never a pid that is not it). */
static void tell_supervisor(const char *dir, const char *name)
{
    pid_t holder = 0;
    if (runlock_held(dir, &holder) && holder > 1 && proc_cmdline_contains(holder, "net") &&
        proc_cmdline_contains(holder, name))
        kill(holder, SIGHUP);
}

/* The running network's definition, under the run directory's lock (*lock). */
static int live_begin(const struct qv_paths *p, const char *name, char *dir, size_t dirlen, int *lock,
                      struct net_def *live, struct qv_err *e)
{
    net_run_dir(p, name, dir, dirlen);
    if (!net_running(p, name, NULL))
        return qv_fail(e, -ESRCH, "network %s is not running (--config alone changes its definition only)", name);
    if ((*lock = dir_lock(dir, e)) < 0)
        return *lock;
    struct qv_err ignored = {0};
    /* a supervisor older than live.json runs what the definition said when it started */
    if (network_live_read(dir, live, &ignored) < 0)
        return net_load(p, name, live, e);
    return 0;
}

static int live_commit(const char *dir, const struct net_def *old, const struct net_def *next, struct strv *applied,
                       struct qv_err *e)
{
    int r = apply_change(dir, old, next, applied, e);
    if (r == 0 && (r = network_live_write(dir, next, e)) == 0)
        tell_supervisor(dir, next->name);
    return r;
}

int network_update_live(const struct qv_paths *p, const char *name, enum net_update_op op, enum net_update_section sec,
                        json_object *item, struct strv *applied, struct qv_err *e)
{
    char dir[PATH_MAX];
    _cleanup_close_ int lock = -1;
    _cleanup_net_def_ struct net_def live = {0}, next = {0};
    int r = live_begin(p, name, dir, sizeof(dir), &lock, &live, e);
    if (r == 0 && (r = net_def_update(&live, op, sec, item, &next, e)) == 0)
        r = live_commit(dir, &live, &next, applied, e);
    return r;
}

int network_edit_live(const struct qv_paths *p, const struct net_def *edited, struct strv *applied,
                      struct strv *restart, struct qv_err *e)
{
    char dir[PATH_MAX];
    _cleanup_close_ int lock = -1;
    _cleanup_net_def_ struct net_def live = {0}, next = {0};
    int r = live_begin(p, edited->name, dir, sizeof(dir), &lock, &live, e);
    if (r < 0)
        return r;
    /* what can change live: the running definition with the edited hosts and forwards */
    _cleanup_json_ json_object *cand = net_def_to_json(&live);
    _cleanup_json_ json_object *want = net_def_to_json(edited);
    json_object *v4c, *v4w, *hosts;
    if (json_object_object_get_ex(cand, "ipv4", &v4c) && json_object_object_get_ex(want, "ipv4", &v4w) &&
        json_object_object_get_ex(v4w, "hosts", &hosts))
        json_object_object_add(v4c, "hosts", json_object_get(hosts));
    json_object *fw;
    if (json_object_object_get_ex(want, "forwards", &fw) && json_object_object_get_ex(cand, "forwards", NULL))
        json_object_object_add(cand, "forwards", json_object_get(fw));
    struct qv_err ce = {0};
    if (net_def_from_json(cand, &next, &ce) < 0) {
        /* e.g. forwards to addresses of a new subnet: all of it waits for the restart */
        net_def_diff(&live, edited, restart);
        return 0;
    }
    net_def_diff(&next, edited, restart);
    return live_commit(dir, &live, &next, applied, e);
}
