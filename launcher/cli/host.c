/* qvisor host-check: what this host offers qvisor, and what it cannot do. */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/cli.h"
#include "sandbox/sandbox.h"

struct check {
    json_object *list;
    int missing;        /* essential items absent */
};

static void item(struct check *c, const char *name, bool ok, bool essential, const char *fmt, ...) QV_PRINTF(5, 6);
static void item(struct check *c, const char *name, bool ok, bool essential, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(name));
    json_object_object_add(o, "ok", json_object_new_boolean(ok));
    json_object_object_add(o, "essential", json_object_new_boolean(essential));
    json_object_object_add(o, "detail", json_object_new_string(detail));
    json_object_array_add(c->list, o);
    if (!ok && essential)
        c->missing++;
}

static bool openable(const char *path)
{
    _cleanup_close_ int fd = open(path, O_RDWR | O_CLOEXEC);
    return fd >= 0;
}

/* PCI passthrough: the IOMMU (groups in sysfs), vfio-pci, and what is bound to it. */
static void check_vfio(struct check *ch)
{
    size_t groups = 0;
    DIR *dh = opendir("/sys/kernel/iommu_groups");
    struct dirent *de;
    while (dh && (de = readdir(dh)))
        groups += de->d_name[0] != '.';
    if (dh)
        closedir(dh);
    item(ch, "iommu", groups > 0, false, groups ? "%zu IOMMU groups: PCI devices can be passed through"
         : "%zu IOMMU groups: the IOMMU is off or absent, no PCI passthrough (intel_iommu=on or amd_iommu=on on the "
           "kernel command line, VT-d/AMD-Vi on in the firmware)", groups);
    bool vfio = path_exists("/sys/bus/pci/drivers/vfio-pci");
    struct buf b = {0};
    buf_adds(&b, "");
    dh = vfio ? opendir("/sys/bus/pci/drivers/vfio-pci") : NULL;
    while (dh && (de = readdir(dh))) {
        char link[PATH_MAX], target[PATH_MAX];
        if (!strchr(de->d_name, ':'))
            continue;   /* bind, unbind, module, ... */
        snprintf(link, sizeof(link), "/sys/bus/pci/drivers/vfio-pci/%s/iommu_group", de->d_name);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        target[n > 0 ? n : 0] = '\0';
        const char *g = strrchr(target, '/');
        buf_printf(&b, "%s%s (group %s)", b.p[0] ? ", " : "", de->d_name, g ? g + 1 : "none");
    }
    if (dh)
        closedir(dh);
    item(ch, "vfio-pci", vfio, false, "%s%s", vfio ? "loaded; bound to it: " : "not loaded (modprobe vfio-pci)",
         vfio ? (b.p[0] ? b.p : "no device") : "");
    buf_free(&b);
}

static long read_long(const char *dir, const char *name)
{
    char path[PATH_MAX];
    _cleanup_free_ char *v = NULL;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return read_file(path, 64, &v, NULL) == 0 ? strtol(v, NULL, 10) : -1;
}

/* One item per hugepage size the kernel offers (memory.hugepages "2M" or "1G"): its
 * pool, free pages, and how much guest RAM they hold. */
static void hugepage_items(struct check *ch, const char *root)
{
    DIR *d = opendir(root);
    struct dirent *de;
    int sizes = 0;
    while (d && (de = readdir(d))) {
        long kib;
        char dir[PATH_MAX], name[32], size[32];
        if (sscanf(de->d_name, "hugepages-%ldkB", &kib) != 1 || kib <= 0)
            continue;
        snprintf(dir, sizeof(dir), "%s/%s", root, de->d_name);
        /* free pages include those promised to mappings already made (resv) */
        long total = read_long(dir, "nr_hugepages"), free_pages = read_long(dir, "free_hugepages") - read_long(dir, "resv_hugepages");
        format_size((uint64_t)kib << 10, size, sizeof(size));
        snprintf(name, sizeof(name), "hugepages %s", size);
        char room[32];
        format_size((uint64_t)(free_pages > 0 ? free_pages : 0) * ((uint64_t)kib << 10), room, sizeof(room));
        item(ch, name, free_pages > 0, false, "%ld available of %ld in the pool (room for %s of guest RAM; raise with "
             "echo N > %s/nr_hugepages)", free_pages, total, free_pages > 0 ? room : "none", dir);
        sizes++;
    }
    if (d)
        closedir(d);
    if (!sizes)
        item(ch, "hugepages", false, false, "%s lists no hugepage sizes (a kernel without CONFIG_HUGETLBFS)", root);
}

int cmd_host_check(struct cli *c)
{
    struct check ch = {.list = json_object_new_array()};
    _cleanup_host_config_ struct host_config hc = {0};
    struct host_facts f;
    struct qv_err e = {0};
    bool have_config = host_config_load(&c->paths, &hc, &e) == 0;
    bool have_facts = have_config && host_facts_probe(&c->paths, &hc, &f, &e) == 0;
    if (have_facts) {
        item(&ch, "qemu", true, true, "%s %d.%d.%d", f.qemu, f.qemu_major, f.qemu_minor, f.qemu_micro);
        item(&ch, "kvm", f.kvm_usable, false, "%s", f.kvm_usable ? "/dev/kvm usable: accel auto means KVM"
                                                                 : "/dev/kvm not usable: guests run under TCG (slow)");
        item(&ch, "io_uring", f.io_uring, false, "%s", f.io_uring ? "QEMU offers aio=io_uring" : "aio native/threads");
        item(&ch, "vhost-net", f.vhost_net, false, "%s", f.vhost_net ? "/dev/vhost-net opens"
                                                                     : "no /dev/vhost-net: NIC traffic goes through QEMU (modprobe vhost_net)");
        item(&ch, "uefi", f.ovmf_code[0] != '\0', false, "%s", f.ovmf_code[0] ? f.ovmf_code : "no OVMF (apt-get install ovmf)");
        if (f.accel_override != ACCEL_AUTO)
            item(&ch, "accel override", true, false, "accel auto means %s here (QVISOR_ACCEL or host.json)",
                 vm_accel_names[f.accel_override]);
    } else {
        item(&ch, "qemu", false, true, "%s", e.msg);
    }
    item(&ch, "tun", openable("/dev/net/tun"), false, "%s", "/dev/net/tun: taps for bridge and network NICs");
    char path[PATH_MAX];
    item(&ch, "dnsmasq", find_program("dnsmasq", path, sizeof(path)) == 0, false, "%s",
         find_program("dnsmasq", path, sizeof(path)) == 0 ? path : "not found (apt-get install dnsmasq-base)");
    hugepage_items(&ch, "/sys/kernel/mm/hugepages");
    struct netsetup_nft *nft = NULL;
    struct qv_err ne = {0};
    bool nft_ok = netsetup_nft_open(&nft, &ne) == 0;
    if (nft)
        netsetup_nft_close(nft);
    item(&ch, "nftables", nft_ok, false, "%s", nft_ok ? "libnftables works" : ne.msg);

    /* Ceph RBD: QEMU's rbd block driver is a module of its own (qemu-block-extra) */
    char rbdmod[PATH_MAX] = "";
    const char *moddirs[] = {getenv("QEMU_MODULE_DIR"), "/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib/aarch64-linux-gnu/qemu",
                             "/usr/lib64/qemu", "/usr/lib/qemu"};
    for (size_t i = 0; !rbdmod[0] && i < ARRAY_SIZE(moddirs); i++) {
        char m[PATH_MAX];
        if (moddirs[i] && *moddirs[i] && snprintf(m, sizeof(m), "%s/block-rbd.so", moddirs[i]) < (int)sizeof(m) &&
            access(m, R_OK) == 0)
            snprintf(rbdmod, sizeof(rbdmod), "%s", m);
    }
    item(&ch, "qemu rbd driver", rbdmod[0] != '\0', false, "%s",
         rbdmod[0] ? rbdmod : "no block-rbd.so: QEMU cannot open RBD disks (apt-get install qemu-block-extra)");
    char rbd_detail[256];
    bool rbd_ok = storage_rbd_usable(rbd_detail, sizeof(rbd_detail));
    item(&ch, "librbd", rbd_ok, false, "%s", rbd_detail);
    char swtpm[PATH_MAX];
    bool have_swtpm = find_program("swtpm", swtpm, sizeof(swtpm)) == 0;
    item(&ch, "swtpm", have_swtpm, false, "%s", have_swtpm ? swtpm : "not found: no TPM for guests (apt-get install swtpm)");
    check_vfio(&ch);

    struct sandbox_host sh;
    sandbox_host_check("/sys/fs/cgroup", &sh);
    for (int i = 0; i < SANDBOX_NSTEPS; i++) {
        char name[32];
        snprintf(name, sizeof(name), "sandbox %s", sandbox_step_name(i));
        item(&ch, name, sh.step[i].available, false, "%s", sh.step[i].detail);
    }
    if (c->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "checks", ch.list);
        json_object_object_add(o, "sandbox", sandbox_host_json(&sh));
        cli_print_json(o);
        json_object_put(o);
    } else {
        for (size_t i = 0; i < json_object_array_length(ch.list); i++) {
            json_object *o = json_object_array_get_idx(ch.list, i), *n, *ok, *d;
            json_object_object_get_ex(o, "name", &n);
            json_object_object_get_ex(o, "ok", &ok);
            json_object_object_get_ex(o, "detail", &d);
            printf("%-4s %-18s %s\n", json_object_get_boolean(ok) ? "ok" : "--", json_object_get_string(n),
                   json_object_get_string(d));
        }
        json_object_put(ch.list);
    }
    if (ch.missing)
        return qv_fail(&c->err, -ENOENT, "this host lacks what qvisor needs (see above)");
    return 0;
}
