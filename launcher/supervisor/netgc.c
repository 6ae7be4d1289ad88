/* `net gc`: what dead network and VM supervisors left behind — the tables, bridge and
 * dnsmasq of a network no supervisor holds, the filters of taps that are gone, and
 * taps and macvtaps of VMs none of which runs (a QEMU whose supervisor died still
 * owns its taps). Decided by recorded names and locks, never by guessing. */
#include <signal.h>
#include <string.h>

#include "launcher/supervisor/supervisor.h"

int network_gc(const struct qv_paths *paths, struct strv *removed, struct qv_err *err)
{
    _cleanup_nft_ struct netsetup_nft *nft = NULL;
    int r = netsetup_nft_open(&nft, err);
    if (r < 0)
        return r;
    _cleanup_strv_ struct strv nets = {0};
    if ((r = netsetup_nft_net_list(nft, &nets, err)) < 0)
        return r;
    for (size_t i = 0; i < nets.n; i++) {
        struct qv_err e = {0};
        if (!net_running(paths, nets.v[i], NULL)) {
            _cleanup_net_def_ struct net_def d = {0};
            char bridge[NETSETUP_IFNAMSIZ];
            netsetup_bridge_name(nets.v[i], bridge);
            bool have = net_load(paths, nets.v[i], &d, NULL) == 0;
            char dir[PATH_MAX];
            net_run_dir(paths, nets.v[i], dir, sizeof(dir));
            pid_t dns;
            if (netsetup_dnsmasq_find(dir, &dns) == 0) {
                kill(dns, SIGTERM);
                strv_pushf(removed, "dnsmasq pid %d of network %s", (int)dns, nets.v[i]);
            }
            if (netsetup_net_down(nft, nets.v[i], have ? d.bridge : bridge, &e) == 0)
                strv_pushf(removed, "network %s: tables and bridge %s", nets.v[i], have ? d.bridge : bridge);
            continue;
        }
        _cleanup_strv_ struct strv taps = {0};
        if (netsetup_nft_nic_list(nft, nets.v[i], &taps, &e) == 0) {
            for (size_t t = 0; t < taps.n; t++) {
                if (netsetup_link_exists(taps.v[t]))
                    continue;
                if (netsetup_nft_nic_remove(nft, nets.v[i], taps.v[t], &e) == 0)
                    strv_pushf(removed, "filter of tap %s on network %s", taps.v[t], nets.v[i]);
            }
        }
    }
    /* macvtaps and taps of VMs none of which is running */
    static const char *const prefixes[] = {NETSETUP_MACVTAP_PREFIX, NETSETUP_TAP_PREFIX};
    _cleanup_strv_ struct strv vms = {0};
    _cleanup_strv_ struct strv owned = {0};
    vm_list_names(paths, &vms, NULL);
    for (size_t v = 0; v < vms.n; v++) {
        _cleanup_vm_def_ struct vm_def d = {0};
        if (vm_load(paths, vms.v[v], &d, NULL) < 0)
            continue;
        /* a QEMU whose supervisor died still owns its taps */
        _cleanup_runstate_ struct vm_runstate rs = {0};
        bool supervised;
        vm_observe(paths, d.name, &rs, &supervised);
        bool live = supervised || (rs.state != VM_SHUTOFF && rs.state != VM_CRASHED);
        for (unsigned k = 0; live && k < VM_MAX_NICS + 16 + 16; k++) {
            char name[NETSETUP_IFNAMSIZ];
            netsetup_macvtap_name(d.uuid, k, name);
            strv_push(&owned, name);
            netsetup_tap_name(d.uuid, k, name);
            strv_push(&owned, name);
        }
    }
    for (size_t p = 0; p < ARRAY_SIZE(prefixes); p++) {
        _cleanup_strv_ struct strv links = {0};
        netsetup_link_list(prefixes[p], &links, NULL);
        for (size_t l = 0; l < links.n; l++) {
            struct qv_err e = {0};
            if (strv_contains((const char *const *)owned.v, links.v[l]))
                continue;
            if (netsetup_link_delete(links.v[l], &e) == 0)
                strv_pushf(removed, "%s %s", p == 0 ? "macvtap" : "tap", links.v[l]);
        }
    }
    strv_free(&vms);
    strv_free(&owned);
    return 0;
}
