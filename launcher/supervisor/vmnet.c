/* The host side of a VM's NICs: taps on bridges and qvisor networks, macvtap on host
 * interfaces, and per-NIC filters that learn the guest's address from its lease.
 * Every tap is non-persistent, so it vanishes with QEMU even after a crash; what
 * does not vanish by itself (filters, macvtaps) is recorded in state.json first. */
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"

#define LEASE_POLL_WAITING_MS 250     /* a NIC still waits for its address */
#define LEASE_POLL_SETTLED_MS 5000    /* addresses known: notice renewals elsewhere */

static int nft(struct sup *s, struct qv_err *e)
{
    return s->nft ? 0 : netsetup_nft_open(&s->nft, e);
}

static void record_nics(struct sup *s)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < ARRAY_SIZE(s->nics); i++) {
        const struct vm_nic_state *n = &s->nics[i];
        if (!n->tap[0])
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "index", json_object_new_int((int)i));
        json_object_object_add(o, "tap", json_object_new_string(n->tap));
        json_object_object_add(o, "network", json_object_new_string(n->network));
        json_object_object_add(o, "macvtap", json_object_new_boolean(n->macvtap));
        json_object_array_add(a, o);
    }
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, "nics", a);
    runstate_write(s->paths, s->def.name, &s->rs, NULL);
}

/* The static address the network's definition gives this MAC, if any. */
static void static_ip(const struct net_def *nd, const char *mac, char *out, size_t outlen)
{
    out[0] = '\0';
    for (size_t i = 0; i < nd->ipv4.nhosts; i++)
        if (strcasecmp(nd->ipv4.hosts[i].mac, mac) == 0 && nd->ipv4.hosts[i].ip)
            snprintf(out, outlen, "%s", nd->ipv4.hosts[i].ip);
}

/* An autostart network a VM needs: `qvisor net start` it, as its own supervisor. Under
 * systemd, with the VM in its unit, the network is started as its own unit instead:
 * a child of ours would run in the VM's cgroup (stopped, killed and accounted with
 * the VM) and beside a qvisor-net@NET.service that systemd may start later. */
static void net_start_argv(struct sup *s, const char *name, char exe[PATH_MAX], char unit[128], const char *argv[8])
{
    if (s->own_unit) {
        snprintf(unit, 128, "qvisor-net@%s.service", name);
        const char *v[] = {"systemctl", "start", unit, NULL};
        memcpy(argv, v, sizeof(v));
        return;
    }
    const char *v[] = {exe, "--root", s->paths->root[0] ? s->paths->root : "/", "-q", "net", "start", name, NULL};
    memcpy(argv, v, sizeof(v));
}

static int self_exe(char exe[PATH_MAX], const char *name, struct qv_err *e)
{
    ssize_t n = readlink("/proc/self/exe", exe, PATH_MAX - 1);
    if (n <= 0)
        return qv_failerr(e, -errno, "network %s: finding qvisor itself", name);
    exe[n] = '\0';
    return 0;
}

/* r: the exit status of `net start` (or -errno); out: what it said. */
static int net_start_result(struct sup *s, const char *name, int r, const char *out, struct qv_err *e)
{
    if (r == 4 && net_running(s->paths, name, NULL))
        r = 0;      /* someone else started it meanwhile */
    if (r != 0)
        return qv_fail(e, -ENETDOWN, "network %s (autostart) did not start: %s", name,
                       *out ? out : r == 128 + SIGKILL ? "killed after 60 s" : "no reason given");
    if (s->own_unit)
        sup_log(s, "started network %s (autostart) as its unit qvisor-net@%s.service", name, name);
    else
        sup_log(s, "started network %s (autostart)", name);
    return 0;
}

int net_starter_begin(struct sup *s, struct net_starter *ns, const char *name, struct qv_err *e)
{
    char exe[PATH_MAX], unit[128];
    const char *argv[8];
    int r = self_exe(exe, name, e);
    if (r < 0)
        return r;
    net_start_argv(s, name, exe, unit, argv);
    if ((r = sup_child_spawn(&ns->child, argv, NET_START_TIMEOUT_MS, e)) < 0)
        return qv_prefix(e, "network %s: ", name);
    snprintf(ns->name, sizeof(ns->name), "%s", name);
    return 0;
}

int net_starter_reap(struct sup *s, struct net_starter *ns, int *result, struct qv_err *e)
{
    char out[4096];
    int status;
    if (!sup_child_reap(&ns->child, &status, out, sizeof(out)))
        return 0;
    *result = net_start_result(s, ns->name, status, out, e);
    return 1;
}

void net_starter_expire(struct net_starter *ns, uint64_t now)
{
    sup_child_expire(&ns->child, now);
}

void net_starter_abort(struct net_starter *ns)
{
    sup_child_abort(&ns->child);
}

int vmnet_needs_start(struct sup *s, const struct vm_nic *n, char *net, size_t netlen, struct qv_err *e)
{
    net[0] = '\0';
    if (n->type != NIC_NETWORK)
        return 0;
    _cleanup_net_def_ struct net_def nd = {0};
    int r = net_load(s->paths, n->source, &nd, e);
    if (r < 0 || nd.mode == NET_BRIDGE || net_running(s->paths, n->source, NULL))
        return r;
    if (!nd.autostart)
        return qv_fail(e, -ENETDOWN, "network %s is not running (qvisor net start %s)", n->source, n->source);
    snprintf(net, netlen, "%s", n->source);
    return 0;
}

static int apply_filter(struct sup *s, const struct vm_nic *n, struct vm_nic_state *st, struct qv_err *e)
{
    /* a named filter is read each time it is applied: a redefined one counts from then */
    _cleanup_(filter_def_free) struct filter_def named = {0};
    struct vm_nic resolved;
    if (n->filter_name) {
        int r = filter_load(s->paths, n->filter_name, &named, e);
        if (r < 0)
            return qv_prefix(e, "%s: ", st->tap);
        resolved = *n;
        resolved.allow_in = named.allow_in;
        resolved.nallow_in = named.nallow_in;
        resolved.deny_out = named.deny_out;
        resolved.ndeny_out = named.ndeny_out;
        n = &resolved;
    }
    /* every rule: a filter has as many as its definition says */
    _cleanup_free_ struct netsetup_port *in = qv_xcalloc(n->nallow_in + 1, sizeof(*in));
    _cleanup_free_ struct netsetup_port *out = qv_xcalloc(n->ndeny_out + 1, sizeof(*out));
    for (size_t i = 0; i < n->nallow_in; i++)
        nic_port_netsetup(&n->allow_in[i], &in[i]);
    for (size_t i = 0; i < n->ndeny_out; i++)
        nic_port_netsetup(&n->deny_out[i], &out[i]);
    const char *ips[] = {st->ip[0] ? st->ip : NULL, NULL};
    struct netsetup_nic_filter f = {.mac = n->mac, .ipv4 = ips, .restrict_in = n->allow_in != NULL,
                                    .allow_in = in, .nallow_in = n->nallow_in, .deny_out = out,
                                    .ndeny_out = n->ndeny_out};
    int r = nft(s, e);
    return r < 0 ? r : netsetup_nft_nic_apply(s->nft, st->network, st->tap, &f, e);
}

int vmnet_plug(struct sup *s, const struct vm_nic *n, size_t index, int *fds, struct qv_err *e)
{
    struct vm_nic_state *st = &s->nics[index];
    memset(st, 0, sizeof(*st));
    int r = nft(s, e);
    if (r < 0)
        return r;
    if (n->type == NIC_DIRECT) {
        netsetup_macvtap_name(s->def.uuid, (unsigned)index, st->tap);
        st->macvtap = true;
        record_nics(s);
        if ((r = netsetup_macvtap_create(st->tap, n->source, (enum netsetup_macvtap_mode)n->mode, n->mac, e)) < 0 ||
            (r = netsetup_macvtap_open(st->tap, (unsigned)n->queues, s->run_dir, fds, e)) < 0) {
            netsetup_link_delete(st->tap, NULL);
            memset(st, 0, sizeof(*st));
            record_nics(s);
            return r;
        }
        sup_log(s, "nic%zu: macvtap %s on %s", index, st->tap, n->source);
        return 0;
    }
    struct netsetup_nic nic = {.queues = (unsigned)n->queues, .bridge = n->source, .vlan = (unsigned)n->vlan};
    _cleanup_net_def_ struct net_def nd = {0};
    if (n->type == NIC_NETWORK) {
        if ((r = net_load(s->paths, n->source, &nd, e)) < 0)
            return r;
        nic.bridge = nd.bridge;
        if (nd.mode != NET_BRIDGE && !net_running(s->paths, n->source, NULL))
            return qv_fail(e, -ENETDOWN, "network %s is not running (qvisor net start %s)", n->source, n->source);
        if (nd.mode != NET_BRIDGE) {
            nic.own_bridge = true;
            snprintf(st->network, sizeof(st->network), "%s", n->source);
            st->filtered = n->filter == FILTER_CLEAN;
            static_ip(&nd, n->mac, st->ip, sizeof(st->ip));
        }
    }
    netsetup_tap_name(s->def.uuid, (unsigned)index, st->tap);
    record_nics(s);     /* before the tap exists: a crash now still knows its name */
    nic.tap = st->tap;
    nic.network = st->filtered ? st->network : NULL;
    r = netsetup_nic_plug(s->nft, &nic, fds, e);
    if (r == 0 && st->filtered && (r = apply_filter(s, n, st, e)) < 0) {
        for (int q = 0; q < n->queues; q++)
            close(fds[q]);
    }
    if (r == 0)
        sup_log(s, "nic%zu: tap %s on bridge %s%s", index, st->tap, nic.bridge, st->filtered ? ", filtered" : "");
    if (r == 0 && st->network[0] && !s->lease_poll)
        s->lease_poll = monotonic_ms();
    if (r < 0) {
        memset(st, 0, sizeof(*st));
        record_nics(s);
        return r;
    }
    return 0;
}

int vmnet_open_tap(void *opaque, const struct vm_def *d, size_t nic, int *fds, struct qv_err *e)
{
    return vmnet_plug(opaque, &d->nics[nic], nic, fds, e);
}

/* The definition's NIC for a state slot: boot NICs by index, hotplugged by MAC. */
static const struct vm_nic *nic_def(struct sup *s, size_t index, struct vm_nic *tmp)
{
    if (index < s->def.nnics)
        return &s->def.nics[index];
    for (int i = 0; i < HOTPLUG_MAX; i++) {
        const struct hotplug *h = &s->hp[i];
        if (!h->used || h->kind != HOTPLUG_NIC || h->nic_index != index)
            continue;
        if (h->nic.mac[0])
            return &h->nic;
        /* restored after a reattach: what state.json kept */
        memset(tmp, 0, sizeof(*tmp));
        tmp->type = h->network[0] ? NIC_NETWORK : NIC_BRIDGE;
        snprintf(tmp->mac, sizeof(tmp->mac), "%s", h->mac);
        tmp->filter = FILTER_CLEAN;
        return tmp;
    }
    return NULL;
}

static void poll_leases(struct sup *s)
{
    bool waiting = false, any = false;
    for (size_t i = 0; i < ARRAY_SIZE(s->nics); i++) {
        struct vm_nic_state *st = &s->nics[i];
        struct vm_nic tmp;
        const struct vm_nic *n = st->network[0] ? nic_def(s, i, &tmp) : NULL;
        if (!n)
            continue;
        any = true;
        char dir[PATH_MAX], path[PATH_MAX + 32];
        net_run_dir(s->paths, st->network, dir, sizeof(dir));
        snprintf(path, sizeof(path), "%s/" NETSETUP_DNSMASQ_LEASES, dir);
        struct netsetup_lease *leases = NULL;
        size_t nl = 0;
        if (netsetup_leases_read(path, &leases, &nl, NULL) == 0) {
            for (size_t k = 0; k < nl; k++) {
                if (leases[k].ipv6 || strcasecmp(leases[k].mac, n->mac) != 0 || strcmp(leases[k].ip, st->ip) == 0)
                    continue;
                char old[64];
                snprintf(old, sizeof(old), "%s", st->ip);
                snprintf(st->ip, sizeof(st->ip), "%s", leases[k].ip);
                struct qv_err e = {0};
                if (st->filtered && apply_filter(s, n, st, &e) < 0)
                    sup_log(s, "nic%zu: filter for %s: %s", i, st->ip, e.msg);
                else
                    sup_log(s, "nic%zu: guest address %s%s%s (DHCP lease)%s", i, st->ip, old[0] ? ", was " : "", old,
                            st->filtered ? "; filter updated" : "");
            }
        }
        free(leases);
        if (!st->ip[0])
            waiting = true;
    }
    s->lease_poll = !any ? 0 : monotonic_ms() + (waiting ? LEASE_POLL_WAITING_MS : LEASE_POLL_SETTLED_MS);
}

int vmnet_filter_reload(struct sup *s, const char *filter, size_t *applied, struct qv_err *e)
{
    *applied = 0;
    for (size_t i = 0; i < ARRAY_SIZE(s->nics); i++) {
        struct vm_nic_state *st = &s->nics[i];
        struct vm_nic tmp;
        const struct vm_nic *n = st->network[0] && st->filtered ? nic_def(s, i, &tmp) : NULL;
        if (!n || !n->filter_name || strcmp(n->filter_name, filter) != 0)
            continue;
        int r = apply_filter(s, n, st, e);
        if (r < 0)
            return qv_prefix(e, "nic%zu: ", i);
        sup_log(s, "nic%zu: filter %s applied again (redefined)", i, filter);
        (*applied)++;
    }
    return 0;
}

static void unplug_state(struct sup *s, struct vm_nic_state *st)
{
    struct qv_err e = {0};
    if (st->macvtap) {
        if (netsetup_link_delete(st->tap, &e) < 0 && e.code != -ENODEV)
            sup_log(s, "warning: %s", e.msg);
    } else if (st->filtered && nft(s, &e) == 0) {
        /* the tap itself vanished with QEMU's fd */
        if (netsetup_nic_unplug(s->nft, st->network, st->tap, &e) < 0)
            sup_log(s, "warning: %s", e.msg);
    }
    memset(st, 0, sizeof(*st));
}

void vmnet_after_exit(struct sup *s)
{
    bool had = false;
    for (size_t i = 0; i < ARRAY_SIZE(s->nics); i++) {
        if (s->nics[i].tap[0]) {
            unplug_state(s, &s->nics[i]);
            had = true;
        }
    }
    s->lease_poll = 0;
    if (had)
        record_nics(s);
}

void net_nic_unplugged(struct sup *s, struct hotplug *h)
{
    if (h->nic_index < ARRAY_SIZE(s->nics) && s->nics[h->nic_index].tap[0]) {
        unplug_state(s, &s->nics[h->nic_index]);
        record_nics(s);
    }
}

void vmnet_cleanup_recorded(struct sup *s, json_object *res)
{
    json_object *a;
    if (!res || !json_object_object_get_ex(res, "nics", &a))
        return;
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *o = json_object_array_get_idx(a, i), *v;
        struct vm_nic_state st = {0};
        if (json_object_object_get_ex(o, "tap", &v))
            snprintf(st.tap, sizeof(st.tap), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "network", &v))
            snprintf(st.network, sizeof(st.network), "%s", json_object_get_string(v));
        st.macvtap = json_object_object_get_ex(o, "macvtap", &v) && json_object_get_boolean(v);
        st.filtered = st.network[0] != '\0';
        if (st.tap[0])
            unplug_state(s, &st);
    }
}

void vmnet_restore(struct sup *s)
{
    json_object *a;
    if (!s->rs.resources || !json_object_object_get_ex(s->rs.resources, "nics", &a))
        return;
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        json_object *o = json_object_array_get_idx(a, i), *v;
        int index = json_object_object_get_ex(o, "index", &v) ? json_object_get_int(v) : -1;
        if (index < 0 || (size_t)index >= ARRAY_SIZE(s->nics))
            continue;
        struct vm_nic_state *st = &s->nics[index];
        if (json_object_object_get_ex(o, "tap", &v))
            snprintf(st->tap, sizeof(st->tap), "%s", json_object_get_string(v));
        if (json_object_object_get_ex(o, "network", &v))
            snprintf(st->network, sizeof(st->network), "%s", json_object_get_string(v));
        st->macvtap = json_object_object_get_ex(o, "macvtap", &v) && json_object_get_boolean(v);
        st->filtered = st->network[0] != '\0';
    }
    s->lease_poll = monotonic_ms();
}

json_object *vmnet_addresses(struct sup *s)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < ARRAY_SIZE(s->nics); i++) {
        struct vm_nic tmp;
        const struct vm_nic *n = i < s->def.nnics ? &s->def.nics[i] : nic_def(s, i, &tmp);
        if (!n)
            continue;
        const struct vm_nic_state *st = &s->nics[i];
        json_object *o = json_object_new_object();
        char id[16];
        snprintf(id, sizeof(id), "nic%zu", i);
        json_object_object_add(o, "nic", json_object_new_string(id));
        json_object_object_add(o, "mac", json_object_new_string(n->mac));
        json_object_object_add(o, "type", json_object_new_string(nic_type_names[n->type]));
        if (i < s->def.nnics && n->source)
            json_object_object_add(o, "source", json_object_new_string(n->source));
        else if (st->network[0])
            json_object_object_add(o, "source", json_object_new_string(st->network));
        if (st->tap[0])
            json_object_object_add(o, "tap", json_object_new_string(st->tap));
        if (st->ip[0])
            json_object_object_add(o, "ipv4", json_object_new_string(st->ip));
        else if (n->type == NIC_USER)
            json_object_object_add(o, "ipv4", json_object_new_string("10.0.2.15"));
        json_object_array_add(a, o);
    }
    return a;
}

uint64_t vmnet_next_deadline(struct sup *s)
{
    return s->lease_poll;
}

void vmnet_expire(struct sup *s, uint64_t now)
{
    if (s->lease_poll && now >= s->lease_poll)
        poll_leases(s);
}
