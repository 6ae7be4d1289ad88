/* Host devices given to the guest: found and checked on the host before QEMU runs,
 * so a missing or unusable device fails the start with its name and the fix rather
 * than with QEMU's message.
 *
 * USB: the device node /dev/bus/usb/BBB/DDD is found in sysfs (by vendor:product or
 * by bus and device number) and opened here; QEMU gets the fd (usb-host
 * hostdevice=/dev/fdset/N) and never scans the host's USB.
 * PCI: QEMU 7.2 opens the VFIO container, the group and sysfs itself (vfio-pci takes
 * no fd); the device must be bound to vfio-pci and its IOMMU group viable (every
 * member bound to vfio-pci, or to no driver), and only /dev/vfio/vfio and the group's
 * node enter QEMU's private /dev. */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/supervisor/internal.h"

#define SYS_USB "/sys/bus/usb/devices"
#define SYS_PCI "/sys/bus/pci/devices"

static int read_hex(const char *dir, const char *file, int base, long *out)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    _cleanup_free_ char *s = NULL;
    if (read_file(path, 64, &s, NULL) < 0)
        return -1;
    char *end;
    *out = strtol(s, &end, base);
    return end == s ? -1 : 0;
}

int hostdev_usb_open(const struct vm_def *d, size_t i, int *fd, struct qv_err *e)
{
    char where[32];
    snprintf(where, sizeof(where), "hostdevs[%zu]", i);
    return hostdev_usb_open_one(&d->hostdevs[i], where, fd, e);
}

int hostdev_usb_open_one(const struct vm_hostdev *h, const char *where, int *fd, struct qv_err *e)
{
    char name[48];
    vm_hostdev_name(h, name, sizeof(name));
    long bus = h->bus, dev = h->device;
    if (h->vendor) {
        DIR *dh = opendir(SYS_USB);
        int found = 0;
        struct dirent *de;
        while (dh && (de = readdir(dh))) {
            char dir[PATH_MAX];
            long v, p, b, n;
            snprintf(dir, sizeof(dir), SYS_USB "/%s", de->d_name);
            if (de->d_name[0] == '.' || read_hex(dir, "idVendor", 16, &v) < 0 || read_hex(dir, "idProduct", 16, &p) < 0 ||
                v != h->vendor || p != h->product || read_hex(dir, "busnum", 10, &b) < 0 ||
                read_hex(dir, "devnum", 10, &n) < 0)
                continue;
            if (found++) {
                closedir(dh);
                return qv_fail(e, -EINVAL, "%s: %s: more than one such device on this host (bus %ld "
                               "device %ld, bus %ld device %ld): name it by \"bus\" and \"device\"", where, name, bus, dev,
                               b, n);
            }
            bus = b;
            dev = n;
        }
        if (dh)
            closedir(dh);
        if (!found)
            return qv_fail(e, -ENODEV, "%s: %s: no such USB device on this host (lsusb lists them)", where, name);
    }
    char path[64];
    snprintf(path, sizeof(path), "/dev/bus/usb/%03ld/%03ld", bus, dev);
    *fd = open(path, O_RDWR | O_CLOEXEC);
    if (*fd < 0 && errno == ENOENT)
        return qv_fail(e, -ENODEV, "%s: %s: no such USB device on this host (%s is missing; lsusb lists "
                       "them)", where, name, path);
    if (*fd < 0)
        return qv_failerr(e, -errno, "%s: %s: %s", where, name, path);
    return 0;
}

/* The driver a PCI device is bound to ("" for none). */
static void pci_driver(const char *dir, char *out, size_t len)
{
    char link[PATH_MAX], target[PATH_MAX];
    snprintf(link, sizeof(link), "%s/driver", dir);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    out[0] = '\0';
    if (n > 0) {
        target[n] = '\0';
        const char *slash = strrchr(target, '/');
        snprintf(out, len, "%s", slash ? slash + 1 : target);
    }
}

int hostdev_pci_prepare(const struct vm_def *d, struct strv *devices, struct qv_err *e)
{
    for (size_t i = 0; i < d->nhostdevs; i++) {
        if (d->hostdevs[i].type != HOSTDEV_PCI)
            continue;
        char where[32];
        snprintf(where, sizeof(where), "hostdevs[%zu]", i);
        int r = hostdev_pci_check(&d->hostdevs[i], where, devices, e);
        if (r < 0)
            return r;
    }
    return 0;
}

int hostdev_pci_check(const struct vm_hostdev *h, const char *where, struct strv *devices, struct qv_err *e)
{
    char dir[PATH_MAX], link[PATH_MAX], target[PATH_MAX], drv[64];
    snprintf(dir, sizeof(dir), SYS_PCI "/%s", h->address);
    if (!path_exists(dir))
        return qv_fail(e, -ENODEV, "%s: pci %s: no such PCI device on this host (lspci -D lists them)", where,
                       h->address);
    pci_driver(dir, drv, sizeof(drv));
    if (strcmp(drv, "vfio-pci") != 0)
        return qv_fail(e, -EBUSY, "%s: pci %s is %s%s, not to vfio-pci: bind it to vfio-pci first "
                       "(modprobe vfio-pci; driverctl set-override %s vfio-pci)", where, h->address,
                       drv[0] ? "bound to " : "bound to no driver", drv, h->address);
    snprintf(link, sizeof(link), "%s/iommu_group", dir);
    ssize_t n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return qv_fail(e, -ENODEV, "%s: pci %s has no IOMMU group: the IOMMU is off (intel_iommu=on "
                       "or amd_iommu=on on the host's kernel command line; qvisor host-check)", where, h->address);
    target[n] = '\0';
    const char *group = strrchr(target, '/') ? strrchr(target, '/') + 1 : target;
    /* viable: every device of the group is vfio's or unbound (a bridge's pcieport is fine) */
    char gdir[PATH_MAX];
    snprintf(gdir, sizeof(gdir), "/sys/kernel/iommu_groups/%s/devices", group);
    DIR *dh = opendir(gdir);
    struct dirent *de;
    while (dh && (de = readdir(dh))) {
        char mdir[PATH_MAX], mdrv[64];
        if (de->d_name[0] == '.')
            continue;
        snprintf(mdir, sizeof(mdir), "%s/%s", gdir, de->d_name);
        pci_driver(mdir, mdrv, sizeof(mdrv));
        if (mdrv[0] && strcmp(mdrv, "vfio-pci") != 0 && strcmp(mdrv, "pcieport") != 0 &&
            strcmp(mdrv, "pci-stub") != 0) {
            closedir(dh);
            return qv_fail(e, -EBUSY, "%s: pci %s: its IOMMU group %s is not viable: %s in the same "
                           "group is bound to %s (bind every device of the group to vfio-pci)", where, h->address,
                           group, de->d_name, mdrv);
        }
    }
    if (dh)
        closedir(dh);
    char node[64];
    snprintf(node, sizeof(node), "/dev/vfio/%s", group);
    if (!path_exists(node))
        return qv_fail(e, -ENODEV, "%s: pci %s: %s is missing (is the vfio-pci module loaded?)", where,
                       h->address, node);
    if (!strv_contains((const char *const *)devices->v, "/dev/vfio/vfio"))
        strv_push(devices, "/dev/vfio/vfio");
    if (!strv_contains((const char *const *)devices->v, node))
        strv_push(devices, node);
    return 0;
}
