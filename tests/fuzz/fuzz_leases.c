/* libFuzzer: a dnsmasq lease file (dnsmasq runs unprivileged and guests choose
 * their hostnames and client ids), read through netsetup_leases_read. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "netsetup/netsetup.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("leases", MFD_CLOEXEC);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size)
        abort();
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    struct netsetup_lease *l = NULL;
    size_t n = 0;
    struct qv_err e = {0};
    if (netsetup_leases_read(path, &l, &n, &e) == 0) {
        for (size_t i = 0; i < n; i++)
            /* every string field is terminated within its array */
            if (strnlen(l[i].ip, sizeof(l[i].ip)) == sizeof(l[i].ip) ||
                strnlen(l[i].mac, sizeof(l[i].mac)) == sizeof(l[i].mac) ||
                strnlen(l[i].hostname, sizeof(l[i].hostname)) == sizeof(l[i].hostname) ||
                strnlen(l[i].client_id, sizeof(l[i].client_id)) == sizeof(l[i].client_id))
                abort();
    }
    free(l);
    close(fd);
    return 0;
}
