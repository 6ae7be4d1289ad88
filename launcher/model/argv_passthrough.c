/* The TPM and host devices on the command line.
 *
 * TPM: QEMU's tpm-emulator backend talks to a swtpm over one control socket and hands
 * swtpm the data channel over it itself (CMD_SET_DATAFD). The supervisor starts swtpm
 * on one end of a socketpair and QEMU gets the other (-chardev socket,fd=N): no path,
 * nobody else can connect.
 *
 * Host PCI devices: QEMU 7.2's vfio-pci has no property taking an fd (that came with
 * iommufd, QEMU 9), so QEMU opens /dev/vfio/vfio, /dev/vfio/GROUP and the device's
 * sysfs directory itself; the supervisor puts exactly those into QEMU's private /dev.
 * On q35 each sits behind its own pcie-root-port (0x1c.4-7), as on real hardware, so
 * the guest's drivers see a normal PCIe endpoint; on pc QEMU places it on the first
 * free slot of pci.0, after every other device.
 *
 * Host USB devices: usb-host opens its device through qemu_open (hostdevice=), which
 * takes /dev/fdset/N: the supervisor finds /dev/bus/usb/BBB/DDD (by vendor:product or
 * by bus and device number) and passes it open; QEMU scans nothing. */
#include <fcntl.h>

#include "launcher/model/argv_internal.h"

#define HOSTDEV_PORT_FUNCTION0 4    /* rp0-3 are 0x1c.0-3 */

void argv_add_tpm(struct builder *b)
{
    const struct vm_def *d = b->d;
    if (d->tpm == TPM_NONE)
        return;
    char opt[64];
    int fd = argv_add_fd(b, FD_TPM, 0, 0, O_RDWR);
    snprintf(opt, sizeof(opt), "socket,id=chrtpm,fd=%d", fd);
    arg2(b, "-chardev", opt);
    arg2(b, "-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm");
    json_object *o = jobj();
    js(o, "driver", tpm_model_names[d->tpm]);
    js(o, "tpmdev", "tpm-tpm0");
    js(o, "id", "tpm0");
    arg_json(b, "-device", o);
}

void argv_add_hostdevs(struct builder *b)
{
    const struct vm_def *d = b->d;
    int port = 0;
    for (size_t i = 0; i < d->nhostdevs; i++) {
        const struct vm_hostdev *h = &d->hostdevs[i];
        json_object *o;
        if (h->type == HOSTDEV_PCI) {
            char bus[24] = "";
            if (d->machine == MACHINE_Q35) {
                snprintf(bus, sizeof(bus), "hdp%d", port);
                o = jobj();
                js(o, "driver", "pcie-root-port");
                js(o, "id", bus);
                ji(o, "chassis", VM_HOTPLUG_PORTS + 1 + port);
                ji(o, "port", 0x10 + VM_HOTPLUG_PORTS + port);
                pci_place(b, o, SLOT_ROOTPORTS, HOSTDEV_PORT_FUNCTION0 + port);
                arg_json(b, "-device", o);
                port++;
            }
            arg_json(b, "-device", vm_hostdev_device(h, bus[0] ? bus : NULL, NULL));
            continue;
        }
        char opt[64], path[32];
        int fd = argv_add_fd(b, FD_USBHOST, (int)i, 0, O_RDWR);
        snprintf(opt, sizeof(opt), "fd=%d,set=%d,opaque=%s", fd, fd, h->id);
        arg2(b, "-add-fd", opt);
        snprintf(path, sizeof(path), "/dev/fdset/%d", fd);
        arg_json(b, "-device", vm_hostdev_device(h, NULL, path));
    }
}

json_object *vm_hostdev_device(const struct vm_hostdev *h, const char *bus, const char *fdset_path)
{
    json_object *o = jobj();
    if (h->type == HOSTDEV_PCI) {
        js(o, "driver", "vfio-pci");
        js(o, "host", h->address);
        js(o, "id", h->id);
        if (bus)
            js(o, "bus", bus);
        return o;
    }
    js(o, "driver", "usb-host");
    js(o, "id", h->id);
    js(o, "bus", "usb0.0");
    js(o, "hostdevice", fdset_path);
    return o;
}
