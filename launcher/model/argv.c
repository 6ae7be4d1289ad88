/* The QEMU command line: a pure function of a definition and host facts.
 *
 * Every host resource QEMU needs (sockets, images, taps) is opened by the supervisor
 * and inherited at a fixed fd number chosen here, so the argv is deterministic and
 * QEMU needs no privilege and no path access. Device options use QEMU's JSON syntax.
 *
 * PCI slots are fixed per device class so that adding a disk never renames a NIC in
 * the guest: VGA 0x02, NICs 0x03-0x0a, virtio disks 0x0b-0x16, virtio-scsi 0x17,
 * virtio-serial 0x18, xhci 0x19, AHCI on pc 0x1a, virtiofs shares 0x1b.0-7, hotplug root
 * ports (q35) 0x1c.0-3, virtio-rng 0x1d, watchdog 0x1e (argv_devices.c). */
#include <fcntl.h>
#include <string.h>

#include "launcher/model/argv_internal.h"
#include "sandbox/sandbox.h"
#include "launcher/model/storedef.h"

void launch_plan_free(struct launch_plan *p)
{
    strv_free(&p->argv);
    memset(p, 0, sizeof(*p));
}

int argv_add_fd(struct builder *b, enum fd_kind kind, int index, int sub, int flags)
{
    struct launch_plan *p = b->p;
    if (p->nslots >= PLAN_MAX_FDS)
        return -1;
    int fd = b->next_fd++;
    p->slots[p->nslots++] = (struct fd_slot){.fd = fd, .kind = kind, .index = index, .sub = sub, .open_flags = flags};
    return fd;
}

enum vm_accel accel_resolve(const struct vm_def *d, const struct host_facts *f)
{
    if (d->accel != ACCEL_AUTO)
        return d->accel;
    if (f->accel_override != ACCEL_AUTO)
        return f->accel_override;
    return f->kvm_usable ? ACCEL_KVM : ACCEL_TCG;
}

/* ---- machine, cpu, memory ---- */

static int add_machine(struct builder *b, struct qv_err *e)
{
    const struct vm_def *d = b->d;
    struct buf m = {0};
    buf_adds(&m, vm_machine_names[d->machine]);
    if (d->boot.firmware == FIRMWARE_UEFI)
        buf_adds(&m, ",pflash0=fw-code,pflash1=fw-vars");
    if (argv_machine_ram_backend(d))
        buf_adds(&m, ",memory-backend=ram");
    arg2(b, "-machine", m.p);
    buf_free(&m);

    enum vm_accel accel = accel_resolve(d, b->f);
    if (accel == ACCEL_KVM && !b->f->kvm_usable)
        return qv_fail(e, -EINVAL, "%s: accel kvm: /dev/kvm is not usable on this host (use accel tcg or auto)",
                       d->name);
    b->p->accel = accel;
    arg2(b, "-accel", accel == ACCEL_KVM ? "kvm" : "tcg");

    const char *model = d->cpu.model ? d->cpu.model : accel == ACCEL_KVM ? "host" : "max";
    if (strcmp(model, "host") == 0 && accel != ACCEL_KVM)
        return qv_fail(e, -EINVAL, "%s: cpu.model: \"host\" needs KVM, and this VM runs under TCG (use \"auto\" or a named model)",
                       d->name);
    char cpu[160];
    int r = argv_cpu_options(b, accel, model, cpu, sizeof(cpu), e);
    if (r < 0)
        return r;
    arg2(b, "-cpu", cpu);
    char smp[128];
    if (d->cpu.sockets)
        snprintf(smp, sizeof(smp), "cpus=%d,sockets=%d,cores=%d,threads=%d", d->cpu.count, d->cpu.sockets,
                 d->cpu.cores, d->cpu.threads);
    else
        snprintf(smp, sizeof(smp), "cpus=%d", d->cpu.count);
    if (d->cpu.max)
        snprintf(smp + strlen(smp), sizeof(smp) - strlen(smp), ",maxcpus=%d", d->cpu.max);
    arg2(b, "-smp", smp);
    argv_add_memory(b);
    return 0;
}

/* ---- sockets QEMU listens on (bound by the supervisor) ---- */

static void add_socket_chardev(struct builder *b, const char *id, enum fd_kind kind)
{
    char opt[96];
    int fd = argv_add_fd(b, kind, 0, 0, 0);
    snprintf(opt, sizeof(opt), "socket,id=%s,fd=%d,server=on,wait=off", id, fd);
    arg2(b, "-chardev", opt);
}

/* ---- block devices ---- */

struct disk_io disk_io_mode(enum disk_cache cache, enum disk_aio aio, const struct host_facts *f)
{
    struct disk_io io = {true, false, true, NULL};
    switch (cache) {
    case CACHE_NONE: io = (struct disk_io){true, false, true, NULL}; break;
    case CACHE_WRITEBACK: io = (struct disk_io){false, false, true, NULL}; break;
    case CACHE_WRITETHROUGH: io = (struct disk_io){false, false, false, NULL}; break;
    case CACHE_UNSAFE: io = (struct disk_io){false, true, true, NULL}; break;
    case CACHE_DIRECTSYNC: io = (struct disk_io){true, false, false, NULL}; break;
    }
    switch (aio) {
    case AIO_IO_URING: io.aio = "io_uring"; break;
    case AIO_NATIVE: io.aio = "native"; break;
    case AIO_THREADS: io.aio = "threads"; break;
    case AIO_AUTO: io.aio = f->io_uring ? "io_uring" : io.direct ? "native" : "threads"; break;
    }
    return io;
}

static void add_cache(json_object *o, const struct disk_io *io, bool discard, bool readonly)
{
    json_object *c = jobj();
    jb(c, "direct", io->direct);
    jb(c, "no-flush", io->no_flush);
    json_object_object_add(o, "cache", c);
    if (discard)
        js(o, "discard", "unmap");
    jb(o, "read-only", readonly);
}

json_object *blockdev_file(const char *node, const char *filename, const struct disk_io *io, bool discard, bool readonly)
{
    json_object *o = jobj();
    js(o, "driver", "file");
    js(o, "filename", filename);
    js(o, "node-name", node);
    js(o, "aio", io->aio);
    add_cache(o, io, discard, readonly);
    return o;
}

json_object *blockdev_format(const char *driver, const char *node, const char *file_node, const char *backing,
                             const struct disk_io *io, bool discard, bool readonly)
{
    json_object *o = jobj();
    js(o, "driver", driver);
    js(o, "file", file_node);
    js(o, "node-name", node);
    if (backing)
        js(o, "backing", backing);
    add_cache(o, io, discard, readonly);
    return o;
}

/* QEMU 7.2's rbd driver reads a ceph.conf when it is given none (the default search
 * path, which the sandbox's /etc may hold): conf /dev/null keeps it to what is given
 * here. The key comes from the secret object `key_secret`, never from the command line. */
json_object *blockdev_rbd(const char *node, const struct vm_disk_rbd *r, const char *key_secret,
                          const struct disk_io *io, bool discard, bool readonly)
{
    json_object *o = jobj();
    js(o, "driver", "rbd");
    js(o, "node-name", node);
    js(o, "pool", r->rbd_pool);
    js(o, "image", r->image);
    js(o, "conf", "/dev/null");
    js(o, "user", r->user);
    json_object *servers = json_object_new_array();
    for (size_t i = 0; i < r->servers.n; i++) {
        const char *a = r->servers.v[i], *colon = strrchr(a, ':');
        json_object *sv = jobj();
        /* "[::1]:6789" -> host "::1" */
        size_t hl = colon ? (size_t)(colon - a) : strlen(a);
        char host[80];
        if (a[0] == '[' && hl >= 2 && a[hl - 1] == ']')
            snprintf(host, sizeof(host), "%.*s", (int)(hl - 2), a + 1);
        else
            snprintf(host, sizeof(host), "%.*s", (int)hl, a);
        js(sv, "host", host);
        js(sv, "port", colon ? colon + 1 : "3300");
        json_object_array_add(servers, sv);
    }
    json_object_object_add(o, "server", servers);
    json_object *auth = json_object_new_array();
    json_object_array_add(auth, json_object_new_string(key_secret ? "cephx" : "none"));
    json_object_object_add(o, "auth-client-required", auth);
    if (key_secret)
        js(o, "key-secret", key_secret);
    add_cache(o, io, discard, readonly);
    return o;
}

/* An rbd disk's secret object (its key read from an inherited memfd) and its node. */
static void add_rbd_node(struct builder *b, size_t i, const struct vm_disk *k, const char *node,
                         const struct disk_io *io)
{
    char key[32] = "";
    if (k->rbd->keyfile) {
        char opt[128];
        int fd = argv_add_fd(b, FD_RBD_KEY, (int)i, 0, O_RDONLY);
        snprintf(key, sizeof(key), "disk%zu-key", i);
        /* the value file holds the key as `ceph auth get-key` prints it: base64 */
        snprintf(opt, sizeof(opt), "secret,id=%s,file=/proc/self/fd/%d,format=base64", key, fd);
        arg2(b, "-object", opt);
    }
    arg_json(b, "-blockdev", blockdev_rbd(node, k->rbd, key[0] ? key : NULL, io, k->discard, k->readonly));
}

/* -add-fd for fd, then a file node reading /dev/fdset/<fd>. */
static void add_file_node(struct builder *b, int fd, const char *node, const struct disk_io *io, bool discard,
                          bool readonly)
{
    char opt[96], path[32];
    snprintf(opt, sizeof(opt), "fd=%d,set=%d,opaque=%s", fd, fd, node);
    arg2(b, "-add-fd", opt);
    snprintf(path, sizeof(path), "/dev/fdset/%d", fd);
    arg_json(b, "-blockdev", blockdev_file(node, path, io, discard, readonly));
}

/* Where a disk or cdrom on an emulated controller plugs in. Port numbers count
 * every device on that controller, disks first, then cdroms. */
struct ports {
    int scsi, sata, ide, usb;
};

static void place_on_bus(struct builder *b, json_object *dev, enum disk_bus bus, struct ports *pt)
{
    char s[32];
    switch (bus) {
    case BUS_SCSI:
        js(dev, "bus", "scsi0.0");
        ji(dev, "channel", 0);
        ji(dev, "scsi-id", pt->scsi++);
        ji(dev, "lun", 0);
        break;
    case BUS_SATA:
        snprintf(s, sizeof(s), b->d->machine == MACHINE_PC ? "sata0.%d" : "ide.%d", pt->sata++);
        js(dev, "bus", s);
        break;
    case BUS_IDE:
        snprintf(s, sizeof(s), "ide.%d", pt->ide / 2);
        js(dev, "bus", s);
        ji(dev, "unit", pt->ide % 2);
        pt->ide++;
        break;
    case BUS_USB:
        js(dev, "bus", "usb0.0");
        break;
    case BUS_VIRTIO:
        break;
    }
}

static int disk_bootindex(struct builder *b, size_t i, int explicit_index)
{
    if (explicit_index >= 0)
        return explicit_index;
    return i == 0 ? b->boot_disk : -1;
}

/* The layers below disk i's top, bottom first (a node must exist before one names it
 * as its backing), each read-only from its own fd; the name of the top's backing
 * node in `top_backing`, "" when there is none. */
static void add_backing_layers(struct builder *b, size_t i, const struct vm_disk *k, const struct disk_io *io,
                               char *top_backing, size_t len)
{
    top_backing[0] = '\0';
    for (size_t j = k->nbacking; j-- > 0;) {
        char file[48], node[48], below[48];
        snprintf(file, sizeof(file), "disk%zu-b%zu-file", i, j);
        snprintf(node, sizeof(node), "disk%zu-b%zu-fmt", i, j);
        snprintf(below, sizeof(below), "disk%zu-b%zu-fmt", i, j + 1);
        int fd = argv_add_fd(b, FD_DISK_LAYER, (int)i, (int)j, O_RDONLY);
        add_file_node(b, fd, file, io, false, true);
        const char *driver = k->backing[j].format == FORMAT_QCOW2 ? "qcow2" : "raw";
        arg_json(b, "-blockdev", blockdev_format(driver, node, file, j + 1 < k->nbacking ? below : NULL, io, false, true));
        if (j == 0)
            snprintf(top_backing, len, "%s", node);
    }
}

static void add_disks(struct builder *b, struct ports *pt)
{
    const struct vm_def *d = b->d;
    int virtio_index = 0;
    for (size_t i = 0; i < d->ndisks; i++) {
        const struct vm_disk *k = &d->disks[i];
        struct disk_io io = disk_io_mode(k->cache, k->aio, b->f);
        const char *fmt = k->format == FORMAT_QCOW2 ? "qcow2" : "raw";
        char file[32], node[32], top[32], ovl_file[32];
        snprintf(file, sizeof(file), "disk%zu-file", i);
        snprintf(node, sizeof(node), "disk%zu-fmt", i);
        char backing[48];
        add_backing_layers(b, i, k, &io, backing, sizeof(backing));
        const char *below = backing[0] ? backing : NULL;
        if (k->rbd) {
            add_rbd_node(b, i, k, file, &io);
            arg_json(b, "-blockdev", blockdev_format("raw", node, file, NULL, &io, k->discard, k->readonly));
            snprintf(top, sizeof(top), "%s", node);
        } else if (k->snapshot) {
            int base = argv_add_fd(b, FD_DISK_BASE, (int)i, 0, O_RDONLY);
            add_file_node(b, base, file, &io, false, true);
            arg_json(b, "-blockdev", blockdev_format(fmt, node, file, below, &io, false, true));
            int ovl = argv_add_fd(b, FD_OVERLAY, (int)i, 0, O_RDWR);
            snprintf(ovl_file, sizeof(ovl_file), "disk%zu-ovl-file", i);
            snprintf(top, sizeof(top), "disk%zu-ovl", i);
            add_file_node(b, ovl, ovl_file, &io, k->discard, false);
            arg_json(b, "-blockdev", blockdev_format("qcow2", top, ovl_file, node, &io, k->discard, false));
        } else {
            int fd = argv_add_fd(b, FD_DISK, (int)i, 0, k->readonly ? O_RDONLY : O_RDWR);
            add_file_node(b, fd, file, &io, k->discard, k->readonly);
            arg_json(b, "-blockdev", blockdev_format(fmt, node, file, below, &io, k->discard, k->readonly));
            snprintf(top, sizeof(top), "%s", node);
        }
        json_object *dev = jobj();
        char id[24];
        snprintf(id, sizeof(id), "disk%zu", i);
        switch (k->bus) {
        case BUS_VIRTIO:
            js(dev, "driver", virtio_driver(b, "blk"));
            pci_place(b, dev, SLOT_DISK0 + virtio_index++, 0);
            break;
        case BUS_SCSI: js(dev, "driver", "scsi-hd"); break;
        case BUS_SATA:
        case BUS_IDE: js(dev, "driver", "ide-hd"); break;
        case BUS_USB: js(dev, "driver", "usb-storage"); break;
        }
        place_on_bus(b, dev, k->bus, pt);
        js(dev, "drive", top);
        js(dev, "id", id);
        if (k->serial)
            js(dev, "serial", k->serial);
        js(dev, "write-cache", io.write_cache ? "on" : "off");
        /* a host-side error (ENOSPC) pauses the guest instead of failing its I/O:
         * nothing is lost, `resume` goes on once the host is fixed (libvirt's error_policy stop) */
        js(dev, "werror", "stop");
        js(dev, "rerror", "stop");
        int bi = disk_bootindex(b, i, k->boot_index);
        if (bi >= 0)
            ji(dev, "bootindex", bi);
        arg_json(b, "-device", dev);
    }
}

static void add_cdroms(struct builder *b, struct ports *pt)
{
    const struct vm_def *d = b->d;
    for (size_t i = 0; i < d->ncdroms; i++) {
        const struct vm_cdrom *c = &d->cdroms[i];
        char file[32], node[32], id[24];
        snprintf(id, sizeof(id), "cdrom%zu", i);
        if (c->file) {
            struct disk_io io = disk_io_mode(CACHE_WRITEBACK, AIO_AUTO, b->f);
            snprintf(file, sizeof(file), "cdrom%zu-file", i);
            snprintf(node, sizeof(node), "cdrom%zu-fmt", i);
            int fd = argv_add_fd(b, FD_CDROM, (int)i, 0, O_RDONLY);
            add_file_node(b, fd, file, &io, false, true);
            arg_json(b, "-blockdev", blockdev_format("raw", node, file, NULL, &io, false, true));
        }
        json_object *dev = jobj();
        js(dev, "driver", c->bus == BUS_SCSI ? "scsi-cd" : "ide-cd");
        place_on_bus(b, dev, c->bus, pt);
        if (c->file)
            js(dev, "drive", node);
        js(dev, "id", id);
        int bi = c->boot_index >= 0 ? c->boot_index : i == 0 ? b->boot_cdrom : -1;
        if (bi >= 0)
            ji(dev, "bootindex", bi);
        arg_json(b, "-device", dev);
    }
}

/* The cloud-init seed, after the cdroms on their bus: a read-only cdrom that
 * cloud-init finds by its label (cidata), never a boot device. */
static void add_seed(struct builder *b, struct ports *pt)
{
    if (!b->d->cloud_init.user_data)
        return;
    struct disk_io io = disk_io_mode(CACHE_WRITEBACK, AIO_AUTO, b->f);
    int fd = argv_add_fd(b, FD_SEED, 0, 0, O_RDONLY);
    add_file_node(b, fd, "cidata-file", &io, false, true);
    arg_json(b, "-blockdev", blockdev_format("raw", "cidata-fmt", "cidata-file", NULL, &io, false, true));
    json_object *dev = jobj();
    js(dev, "driver", "ide-cd");
    place_on_bus(b, dev, b->d->machine == MACHINE_PC ? BUS_IDE : BUS_SATA, pt);
    js(dev, "drive", "cidata-fmt");
    js(dev, "id", "cidata");
    arg_json(b, "-device", dev);
}

/* systemd credentials as SMBIOS type 11 strings, each read by QEMU from an inherited
 * memfd: the command line names only the fd, never the credential or its value. */
static void add_credentials(struct builder *b)
{
    for (size_t i = 0; i < b->d->ncredentials; i++) {
        char opt[64];
        int fd = argv_add_fd(b, FD_CREDENTIAL, (int)i, 0, O_RDONLY);
        snprintf(opt, sizeof(opt), "type=11,path=/proc/self/fd/%d", fd);
        arg2(b, "-smbios", opt);
    }
}

/* ---- network ---- */

static void fd_list(struct builder *b, enum fd_kind kind, int nic, int queues, char *out, size_t outlen)
{
    size_t len = 0;
    out[0] = '\0';
    for (int q = 0; q < queues; q++) {
        int fd = argv_add_fd(b, kind, nic, q, O_RDWR);
        len += (size_t)snprintf(out + len, outlen - len, "%s%d", q ? ":" : "", fd);
    }
}

static void add_nics(struct builder *b)
{
    const struct vm_def *d = b->d;
    for (size_t i = 0; i < d->nnics; i++) {
        const struct vm_nic *n = &d->nics[i];
        char netid[16], devid[16];
        snprintf(netid, sizeof(netid), "net%zu", i);
        snprintf(devid, sizeof(devid), "nic%zu", i);
        json_object *nd = jobj();
        if (n->type == NIC_USER) {
            js(nd, "type", "user");
            js(nd, "id", netid);
            if (n->nfwd) {
                json_object *fwd = json_object_new_array();
                for (size_t k = 0; k < n->nfwd; k++) {
                    char rule[128];
                    const struct hostfwd *f = &n->fwd[k];
                    snprintf(rule, sizeof(rule), "%s:%s:%d-%s:%d", f->udp ? "udp" : "tcp", f->host, f->host_port,
                             f->guest ? f->guest : "", f->guest_port);
                    json_object *s = jobj();
                    js(s, "str", rule);
                    json_object_array_add(fwd, s);
                }
                json_object_object_add(nd, "hostfwd", fwd);
            }
        } else {
            char fds[256], vfds[256];
            js(nd, "type", "tap");
            js(nd, "id", netid);
            fd_list(b, FD_TAP, (int)i, n->queues, fds, sizeof(fds));
            js(nd, n->queues > 1 ? "fds" : "fd", fds);
            bool vhost = n->vhost && b->f->vhost_net && n->model == MODEL_VIRTIO;
            if (vhost) {
                fd_list(b, FD_VHOST, (int)i, n->queues, vfds, sizeof(vfds));
                jb(nd, "vhost", true);
                js(nd, n->queues > 1 ? "vhostfds" : "vhostfd", vfds);
            }
        }
        arg_json(b, "-netdev", nd);

        json_object *dev = jobj();
        js(dev, "driver", n->model == MODEL_VIRTIO ? virtio_driver(b, "net") : n->model == MODEL_E1000 ? "e1000" : "rtl8139");
        pci_place(b, dev, SLOT_NIC0 + (int)i, 0);
        js(dev, "netdev", netid);
        js(dev, "id", devid);
        js(dev, "mac", n->mac);
        if (n->queues > 1) {
            jb(dev, "mq", true);
            ji(dev, "vectors", 2 * n->queues + 2);
        }
        int bi = n->boot_index >= 0 ? n->boot_index : i == 0 ? b->boot_nic : -1;
        if (bi >= 0)
            ji(dev, "bootindex", bi);
        arg_json(b, "-device", dev);
    }
}

/* ---- virtiofs shares ---- */

/* Each share's vhost-user socket comes already connected to its virtiofsd (which the
 * supervisor started on the listening end), so the chardev is a client on an fd:
 * QEMU opens no path and never waits for a server to appear. */
static void add_filesystems(struct builder *b)
{
    const struct vm_def *d = b->d;
    for (size_t i = 0; i < d->nfilesystems; i++) {
        char id[16], opt[64];
        snprintf(id, sizeof(id), "fs%zu", i);
        int fd = argv_add_fd(b, FD_VIRTIOFS, (int)i, 0, O_RDWR);
        snprintf(opt, sizeof(opt), "socket,id=%s,fd=%d", id, fd);
        arg2(b, "-chardev", opt);
        json_object *dev = jobj();
        js(dev, "driver", b->pci_bus ? "vhost-user-fs-pci" : "vhost-user-fs-device");
        pci_place(b, dev, SLOT_FS, (int)i);
        if (b->pci_bus && i == 0 && d->nfilesystems > 1)
            jb(dev, "multifunction", true);
        js(dev, "chardev", id);
        js(dev, "tag", d->filesystems[i].tag);
        js(dev, "id", id);
        arg_json(b, "-device", dev);
    }
}

/* ---- everything else ---- */

static void add_controllers(struct builder *b)
{
    const struct vm_def *d = b->d;
    bool scsi = false, usb = false, sata = false;
    for (size_t i = 0; i < d->ndisks; i++) {
        scsi |= d->disks[i].bus == BUS_SCSI;
        usb |= d->disks[i].bus == BUS_USB;
        sata |= d->disks[i].bus == BUS_SATA;
    }
    for (size_t i = 0; i < d->ncdroms; i++) {
        scsi |= d->cdroms[i].bus == BUS_SCSI;
        sata |= d->cdroms[i].bus == BUS_SATA;
    }
    if (d->machine == MACHINE_Q35) {
        for (int i = 0; i < VM_HOTPLUG_PORTS; i++) {
            json_object *o = jobj();
            char id[16];
            snprintf(id, sizeof(id), "rp%d", i);
            js(o, "driver", "pcie-root-port");
            js(o, "id", id);
            ji(o, "chassis", i + 1);
            ji(o, "port", 0x10 + i);
            pci_place(b, o, SLOT_ROOTPORTS, i);
            if (i == 0)
                jb(o, "multifunction", true);
            arg_json(b, "-device", o);
        }
    }
    if (scsi) {
        json_object *o = jobj();
        js(o, "driver", virtio_driver(b, "scsi"));
        js(o, "id", "scsi0");
        pci_place(b, o, SLOT_SCSI, 0);
        arg_json(b, "-device", o);
    }
    for (size_t i = 0; i < d->nhostdevs; i++)
        usb |= d->hostdevs[i].type == HOSTDEV_USB;
    if (usb || (d->graphics.kind == GRAPHICS_VNC && d->graphics.tablet)) {
        json_object *o = jobj();
        js(o, "driver", "qemu-xhci");
        js(o, "id", "usb0");
        pci_place(b, o, SLOT_USB, 0);
        arg_json(b, "-device", o);
    }
    if (sata && d->machine == MACHINE_PC) {
        json_object *o = jobj();
        js(o, "driver", "ich9-ahci");
        js(o, "id", "sata0");
        pci_place(b, o, SLOT_SATA, 0);
        arg_json(b, "-device", o);
    }
    if (d->console == CONSOLE_VIRTIO || d->agent) {
        json_object *o = jobj();
        js(o, "driver", virtio_driver(b, "serial"));
        js(o, "id", "vser0");
        pci_place(b, o, SLOT_VSERIAL, 0);
        arg_json(b, "-device", o);
    }
}

static void add_console_devices(struct builder *b)
{
    const struct vm_def *d = b->d;
    if (d->console == CONSOLE_SERIAL) {
        json_object *o = jobj();
        js(o, "driver", "isa-serial");
        js(o, "chardev", "console");
        js(o, "id", "serial0");
        arg_json(b, "-device", o);
    } else if (d->console == CONSOLE_VIRTIO) {
        json_object *o = jobj();
        js(o, "driver", "virtconsole");
        js(o, "chardev", "console");
        js(o, "id", "console0");
        js(o, "bus", "vser0.0");
        arg_json(b, "-device", o);
    }
    if (d->agent) {
        json_object *o = jobj();
        js(o, "driver", "virtserialport");
        js(o, "chardev", "qga");
        js(o, "name", "org.qemu.guest_agent.0");
        js(o, "id", "qga0");
        js(o, "bus", "vser0.0");
        arg_json(b, "-device", o);
    }
}

static int add_firmware(struct builder *b, struct qv_err *e)
{
    const struct vm_def *d = b->d;
    if (d->boot.firmware == FIRMWARE_UEFI) {
        if (!b->f->ovmf_code[0])
            return qv_fail(e, -ENOENT, "%s: boot.firmware: uefi needs OVMF, and QEMU's firmware descriptors list none "
                                        "(apt-get install ovmf)", d->name);
        json_object *o = jobj();
        js(o, "driver", "file");
        js(o, "filename", b->f->ovmf_code);
        js(o, "node-name", "fw-code-file");
        jb(o, "read-only", true);
        arg_json(b, "-blockdev", o);
        o = jobj();
        js(o, "driver", "raw");
        js(o, "file", "fw-code-file");
        js(o, "node-name", "fw-code");
        jb(o, "read-only", true);
        arg_json(b, "-blockdev", o);
        int fd = argv_add_fd(b, FD_NVRAM, 0, 0, O_RDWR);
        char opt[64], path[32];
        snprintf(opt, sizeof(opt), "fd=%d,set=%d,opaque=fw-vars-file", fd, fd);
        arg2(b, "-add-fd", opt);
        snprintf(path, sizeof(path), "/dev/fdset/%d", fd);
        o = jobj();
        js(o, "driver", "file");
        js(o, "filename", path);
        js(o, "node-name", "fw-vars-file");
        arg_json(b, "-blockdev", o);
        o = jobj();
        js(o, "driver", "raw");
        js(o, "file", "fw-vars-file");
        js(o, "node-name", "fw-vars");
        arg_json(b, "-blockdev", o);
    }
    if (d->boot.kernel) {
        arg2(b, "-kernel", d->boot.kernel);
        if (d->boot.initrd)
            arg2(b, "-initrd", d->boot.initrd);
        if (d->boot.cmdline)
            arg2(b, "-append", d->boot.cmdline);
    }
    return 0;
}

static int build(const struct vm_def *d, const struct host_facts *f, struct launch_plan *out, struct qv_err *e)
{
    struct builder b = {
        .p = out, .d = d, .f = f, .next_fd = FD_FIRST,
        .pci_bus = d->machine == MACHINE_Q35 ? "pcie.0" : d->machine == MACHINE_PC ? "pci.0" : NULL,
        .boot_disk = -1, .boot_cdrom = -1, .boot_nic = -1,
    };
    for (int i = 0; i < d->boot.norder; i++) {
        int *slot = d->boot.order[i] == BOOT_DISK ? &b.boot_disk : d->boot.order[i] == BOOT_CDROM ? &b.boot_cdrom : &b.boot_nic;
        *slot = i + 1;
    }
    char opt[160];
    arg(&b, f->qemu);
    snprintf(opt, sizeof(opt), "guest=%s,debug-threads=on", d->name);
    arg2(&b, "-name", opt);
    arg2(&b, "-uuid", d->uuid);
    arg(&b, "-S");
    arg(&b, "-nodefaults");
    arg(&b, "-no-user-config");
    arg(&b, "-no-shutdown");
    arg2(&b, "-msg", "timestamp=on");
    arg2(&b, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    int r = add_machine(&b, e);
    if (r < 0)
        return r;
    add_socket_chardev(&b, "qmp", FD_QMP);
    arg2(&b, "-mon", "chardev=qmp,mode=control");
    if (d->console != CONSOLE_NONE)
        add_socket_chardev(&b, "console", FD_CONSOLE);
    if (d->agent)
        add_socket_chardev(&b, "qga", FD_QGA);
    /* The supervisor decides what a guest poweroff, reboot or panic means. */
    snprintf(opt, sizeof(opt), "reboot=%s,panic=pause%s", d->on_reboot == REBOOT_STOP ? "shutdown" : "reset",
             argv_watchdog_action(d));
    arg2(&b, "-action", opt);
    if ((r = add_firmware(&b, e)) < 0)
        return r;
    argv_add_display(&b);
    add_controllers(&b);
    struct ports pt = {0};
    add_disks(&b, &pt);
    add_cdroms(&b, &pt);
    add_seed(&b, &pt);
    add_nics(&b);
    add_filesystems(&b);
    argv_add_tpm(&b);
    add_console_devices(&b);
    add_credentials(&b);
    argv_add_devices(&b);
    argv_add_hostdevs(&b);
    if (d->machine != MACHINE_MICROVM) {
        json_object *o = jobj();
        js(o, "driver", "pvpanic");
        js(o, "id", "pvpanic0");
        arg_json(&b, "-device", o);
    }
    if (d->exit_device) {
        json_object *o = jobj();
        js(o, "driver", "isa-debug-exit");
        js(o, "id", "exit0");
        ji(o, "iobase", 0xf4);
        ji(o, "iosize", 4);
        arg_json(&b, "-device", o);
    }
    for (size_t i = 0; i < d->qemu_args.n; i++)
        arg(&b, d->qemu_args.v[i]);
    out->host_network = d->graphics.kind == GRAPHICS_VNC || d->qemu_args.n > 0;
    bool open_network = d->qemu_args.n > 0;
    for (size_t i = 0; i < d->nnics; i++)
        open_network |= d->nics[i].type == NIC_USER;
    out->host_network |= open_network;
    for (size_t i = 0; i < d->ndisks; i++)
        out->cluster_network |= d->disks[i].rbd != NULL;
    out->host_network |= out->cluster_network;
    /* a VNC listener only answers: the filter lets replies out */
    out->cluster_filter = out->cluster_network && !open_network;
    if (out->nslots >= PLAN_MAX_FDS)
        return qv_fail(e, -E2BIG, "%s: needs more than %d file descriptors", d->name, PLAN_MAX_FDS);
    return 0;
}

int build_launch_plan(const struct vm_def *d, const struct host_facts *f, struct launch_plan *out, struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    int r = build(d, f, out, e);
    if (r == 0) {
        /* out->accel is what QEMU runs with, so the overhead fits the accelerator in use */
        out->memory_max = d->limits.memory_max ? d->limits.memory_max
                        : d->memory.bytes + sandbox_memory_overhead(d->memory.bytes, (unsigned)d->cpu.count,
                                                                    out->accel == ACCEL_TCG);
        if (d->limits.cpu && sandbox_parse_cpu_quota(d->limits.cpu, &out->cpu_quota_us, &out->cpu_period_us, e) < 0)
            r = qv_prefix(e, "%s: limits.cpu: ", d->name);
    }
    if (r < 0)
        launch_plan_free(out);
    return r;
}
