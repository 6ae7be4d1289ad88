/* Loading libnl-3, libnl-route-3 and libnftables on first use (see dl.h). The
 * pointers are the process's only global state in netsetup: each is written once,
 * under the lock, before its library is marked loaded, and never again. */
#include <dlfcn.h>
#include <pthread.h>

#include "netsetup/dl.h"

#define NS_DL_DEFINE(fn) __typeof__(fn) *sym_##fn;
NS_DL_LIBNL_SYMBOLS(NS_DL_DEFINE)
NS_DL_LIBNL_ROUTE_SYMBOLS(NS_DL_DEFINE)
NS_DL_LIBNFTABLES_SYMBOLS(NS_DL_DEFINE)
#undef NS_DL_DEFINE

struct ns_dl_sym {
    const char *name;
    void **ptr;
};
#define NS_DL_ENTRY(fn) {#fn, (void **)&sym_##fn},
static const struct ns_dl_sym libnl_syms[] = {NS_DL_LIBNL_SYMBOLS(NS_DL_ENTRY)};
static const struct ns_dl_sym libnl_route_syms[] = {NS_DL_LIBNL_ROUTE_SYMBOLS(NS_DL_ENTRY)};
static const struct ns_dl_sym libnftables_syms[] = {NS_DL_LIBNFTABLES_SYMBOLS(NS_DL_ENTRY)};
#undef NS_DL_ENTRY

struct ns_dl_lib {
    const char *soname;         /* the ABI the headers we were built with describe */
    const char *package;        /* Debian's package of that soname */
    const char *purpose;
    const struct ns_dl_sym *syms;
    size_t nsyms;
};

static const struct ns_dl_lib libnl = {
    "libnl-3.so.200", "libnl-3-200", "bridges, taps and addresses (route netlink)",
    libnl_syms, ARRAY_SIZE(libnl_syms),
};
static const struct ns_dl_lib libnl_route = {
    "libnl-route-3.so.200", "libnl-route-3-200", "bridges, taps and addresses (route netlink)",
    libnl_route_syms, ARRAY_SIZE(libnl_route_syms),
};
static const struct ns_dl_lib libnftables = {
    "libnftables.so.1", "libnftables1", "its nftables rules (NAT, filters)",
    libnftables_syms, ARRAY_SIZE(libnftables_syms),
};

static pthread_mutex_t dl_lock = PTHREAD_MUTEX_INITIALIZER;
static bool libnl_loaded, libnftables_loaded;

/* The library stays loaded for the life of the process once every symbol was found. */
static int load(const struct ns_dl_lib *lib, struct qv_err *e)
{
    void *h = dlopen(lib->soname, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return qv_fail(e, -ENOPKG, "cannot load %s, which qvisor needs for %s: %s; (re)install the Debian package %s",
                       lib->soname, lib->purpose, dlerror(), lib->package);
    for (size_t i = 0; i < lib->nsyms; i++) {
        void *p = dlsym(h, lib->syms[i].name);
        if (!p) {
            int r = qv_fail(e, -ENOPKG, "%s has no function %s (%s): it is not the version qvisor was built "
                            "against; reinstall the Debian package %s, or rebuild qvisor", lib->soname,
                            lib->syms[i].name, dlerror(), lib->package);
            dlclose(h);
            return r;
        }
        *lib->syms[i].ptr = p;
    }
    return 0;
}

int ns_dl_libnl(struct qv_err *e)
{
    pthread_mutex_lock(&dl_lock);
    int r = 0;
    if (!libnl_loaded && (r = load(&libnl, e)) == 0 && (r = load(&libnl_route, e)) == 0)
        libnl_loaded = true;
    pthread_mutex_unlock(&dl_lock);
    return r;
}

int ns_dl_libnftables(struct qv_err *e)
{
    pthread_mutex_lock(&dl_lock);
    int r = 0;
    if (!libnftables_loaded && (r = load(&libnftables, e)) == 0)
        libnftables_loaded = true;
    pthread_mutex_unlock(&dl_lock);
    return r;
}
