/* attach-device: a host device (as a definition's "hostdevs" entry) plugged into a
 * running VM, checked on the host exactly as at start.
 *
 * USB: the supervisor finds and opens /dev/bus/usb/BBB/DDD and passes it with add-fd;
 * usb-host opens /dev/fdset/N on the VM's qemu-xhci (usb0), which a VM has when its
 * definition has a USB host device or a VNC tablet. No pcie-root-port is used.
 * PCI: vfio-pci on a free hotplug root port (q35) or pci.0 (pc). QEMU 7.2 opens
 * /dev/vfio/GROUP and the device's sysfs itself, so its confinement must already show
 * them (a VM started with a PCI host device of that IOMMU group); otherwise the attach is
 * refused with that fix. Its locked-memory limit is raised as at start (VFIO pins RAM).
 *
 * The device is recorded in state.json like hotplugged disks and NICs: a new
 * supervisor takes it over, detach-device removes it (and its fdset), and it is gone
 * when QEMU stops unless --persistent put it into the definition too. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

#include "launcher/supervisor/hotplug_op.h"

static bool has_usb_controller(const struct vm_def *d)
{
    for (size_t i = 0; i < d->nhostdevs; i++)
        if (d->hostdevs[i].type == HOSTDEV_USB)
            return true;
    return d->graphics.kind == GRAPHICS_VNC && d->graphics.tablet;
}

/* What QEMU's confinement lets it open for vfio-pci, and its locked-memory limit. */
static int pci_qemu_access(struct sup *s, const struct vm_hostdev *hd, const struct strv *nodes, struct qv_err *e)
{
    char path[PATH_MAX];
    for (size_t i = 0; i < nodes->n; i++) {
        snprintf(path, sizeof(path), "/proc/%d/root%s", (int)s->qemu_pid, nodes->v[i]);
        if (access(path, F_OK) < 0)
            return qv_fail(e, -EPERM, "attach-device: pci %s: QEMU's confinement has no %s (it gets the VFIO nodes "
                           "of the host devices its definition names at start): attach it with --persistent and "
                           "restart the VM", hd->address, nodes->v[i]);
    }
    snprintf(path, sizeof(path), "/proc/%d/root/sys/bus/pci/devices/%s", (int)s->qemu_pid, hd->address);
    if (access(path, F_OK) < 0)
        return qv_fail(e, -EPERM, "attach-device: pci %s: QEMU's confinement shows it no /sys (it does when its "
                       "definition names a PCI host device at start): attach it with --persistent and restart the VM",
                       hd->address);
    struct rlimit cur, want;
    uint64_t need = s->def.memory.bytes + (256ull << 20);
    if (prlimit(s->qemu_pid, RLIMIT_MEMLOCK, NULL, &cur) < 0)
        return qv_failerr(e, -errno, "attach-device: pci %s: reading QEMU's locked-memory limit", hd->address);
    if (cur.rlim_cur != RLIM_INFINITY && cur.rlim_cur < need) {
        want.rlim_cur = need;
        want.rlim_max = cur.rlim_max == RLIM_INFINITY || cur.rlim_max > need ? cur.rlim_max : need;
        if (prlimit(s->qemu_pid, RLIMIT_MEMLOCK, &want, NULL) < 0)
            return qv_failerr(e, -errno, "attach-device: pci %s: raising QEMU's locked-memory limit to %llu bytes "
                              "(VFIO pins guest RAM)", hd->address, (unsigned long long)need);
    }
    return 0;
}

int hotplug_hostdev_attach(struct sup *s, json_object *spec, unsigned client, struct qv_err *e)
{
    struct vm_hostdev hd;
    int r = vm_hostdev_from_json(spec, &s->def, &hd, e);
    if (r < 0)
        return qv_prefix(e, "%s: attach-device: ", s->def.name);
    char name[48];
    vm_hostdev_name(&hd, name, sizeof(name));
    struct hotplug *other = hop_find(s, name);
    if (other)
        return qv_fail(e, -EBUSY, "%s: attach-device: %s is attached already (as %s)", s->def.name, name, other->id);
    if (hd.type == HOSTDEV_USB && !has_usb_controller(&s->def))
        return qv_fail(e, -EOPNOTSUPP, "%s: attach-device: %s: the VM has no USB controller (it gets one when its "
                       "definition has a USB host device or a VNC tablet): attach it with --persistent and restart "
                       "the VM", s->def.name, name);
    int fd = -1;
    if (hd.type == HOSTDEV_USB) {
        r = hostdev_usb_open_one(&hd, "attach-device", &fd, e);
    } else {
        _cleanup_strv_ struct strv nodes = {0};
        r = hostdev_pci_check(&hd, "attach-device", &nodes, e);
        if (r == 0)
            r = pci_qemu_access(s, &hd, &nodes, e);
    }
    if (r < 0)
        return qv_prefix(e, "%s: ", s->def.name);
    int slot = hop_free_slot(s, e);
    if (slot < 0) {
        if (fd >= 0)
            close(fd);
        return slot;
    }
    struct hotplug *h = hop_claim(s, slot, HOTPLUG_HOSTDEV, "hostdev", s->def.nhostdevs);
    snprintf(hd.id, sizeof(hd.id), "%s", h->id);
    snprintf(h->file, sizeof(h->file), "%s", name);
    struct hotplug_op *op = hop_new(s, h, OP_ATTACH, client, "attach-device");
    json_object *dev;
    if (hd.type == HOSTDEV_USB) {
        h->port = -1;       /* on usb0: no root port */
        h->fdset = FDSET_BASE + slot;
        op->fds[op->nfds++] = fd;
        char path[32];
        snprintf(path, sizeof(path), "/dev/fdset/%d", h->fdset);
        json_object *a = json_object_new_object();
        json_object_object_add(a, "fdset-id", json_object_new_int(h->fdset));
        json_object_object_add(a, "opaque", json_object_new_string(h->id));
        hop_step(op, "add-fd", a, fd, QMP_TIMEOUT_DEFAULT, "remove-fd",
                 json_obj1("fdset-id", json_object_new_int(h->fdset)));
        dev = vm_hostdev_device(&hd, NULL, path);
    } else {
        h->fdset = -1;
        dev = vm_hostdev_device(&hd, NULL, NULL);
        hop_place(s, dev, h);
    }
    hop_step(op, "device_add", dev, -1, QMP_TIMEOUT_DEVICE, NULL, NULL);
    sup_log(s, "attaching host device %s as %s", name, h->id);
    op->reply = json_object_new_object();
    json_object_object_add(op->reply, "id", json_object_new_string(h->id));
    json_object_object_add(op->reply, "device", json_object_new_string(name));
    hop_advance(op);
    return 0;
}
