/* Loading a library on first use (see common.h). A library stays loaded for the life
 * of the process once every symbol was found; a missing symbol unloads it again and
 * leaves no pointer set that a caller could take for a loaded library. */
#include <dlfcn.h>

#include "common/common.h"

int qv_dl_load(const struct qv_dl_lib *lib, struct qv_err *e)
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
            for (size_t k = 0; k < i; k++)
                *lib->syms[k].ptr = NULL;
            dlclose(h);
            return r;
        }
        *lib->syms[i].ptr = p;
    }
    return 0;
}
