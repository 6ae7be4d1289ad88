/* Loading libnl-3, libnl-route-3 and libnftables on first use (see dl.h). The
 * pointers are the process's only global state in netsetup: each is written once,
 * under the lock, before its library is marked loaded, and never again. */
#include <pthread.h>

#include "netsetup/dl.h"

#define NS_DL_DEFINE(fn) __typeof__(fn) *sym_##fn;
NS_DL_LIBNL_SYMBOLS(NS_DL_DEFINE)
NS_DL_LIBNL_ROUTE_SYMBOLS(NS_DL_DEFINE)
NS_DL_LIBNFTABLES_SYMBOLS(NS_DL_DEFINE)
#undef NS_DL_DEFINE

#define NS_DL_ENTRY(fn) {#fn, (void **)&sym_##fn},
static const struct qv_dl_sym libnl_syms[] = {NS_DL_LIBNL_SYMBOLS(NS_DL_ENTRY)};
static const struct qv_dl_sym libnl_route_syms[] = {NS_DL_LIBNL_ROUTE_SYMBOLS(NS_DL_ENTRY)};
static const struct qv_dl_sym libnftables_syms[] = {NS_DL_LIBNFTABLES_SYMBOLS(NS_DL_ENTRY)};
#undef NS_DL_ENTRY

static const struct qv_dl_lib libnl = {
    "libnl-3.so.200", "libnl-3-200", "bridges, taps and addresses (route netlink)",
    libnl_syms, ARRAY_SIZE(libnl_syms),
};
static const struct qv_dl_lib libnl_route = {
    "libnl-route-3.so.200", "libnl-route-3-200", "bridges, taps and addresses (route netlink)",
    libnl_route_syms, ARRAY_SIZE(libnl_route_syms),
};
static const struct qv_dl_lib libnftables = {
    "libnftables.so.1", "libnftables1", "its nftables rules (NAT, filters)",
    libnftables_syms, ARRAY_SIZE(libnftables_syms),
};

static pthread_mutex_t dl_lock = PTHREAD_MUTEX_INITIALIZER;
static bool libnl_loaded, libnftables_loaded;

int ns_dl_libnl(struct qv_err *e)
{
    pthread_mutex_lock(&dl_lock);
    int r = 0;
    if (!libnl_loaded && (r = qv_dl_load(&libnl, e)) == 0 && (r = qv_dl_load(&libnl_route, e)) == 0)
        libnl_loaded = true;
    pthread_mutex_unlock(&dl_lock);
    return r;
}

int ns_dl_libnftables(struct qv_err *e)
{
    pthread_mutex_lock(&dl_lock);
    int r = 0;
    if (!libnftables_loaded && (r = qv_dl_load(&libnftables, e)) == 0)
        libnftables_loaded = true;
    pthread_mutex_unlock(&dl_lock);
    return r;
}
