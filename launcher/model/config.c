/* VM definitions: JSON -> struct vm_def with validation (and back: config_json.c). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/model/config.h"
#include "launcher/model/storedef.h"

const char *const vm_machine_names[] = {"q35", "pc", "microvm", NULL};
const char *const vm_accel_names[] = {"auto", "kvm", "tcg", NULL};
const char *const firmware_names[] = {"bios", "uefi", NULL};
const char *const boot_dev_names[] = {"disk", "cdrom", "network", NULL};
const char *const disk_format_names[] = {"raw", "qcow2", NULL};
const char *const disk_bus_names[] = {"virtio", "scsi", "sata", "ide", "usb", NULL};
static const char *const cdrom_bus_names[] = {"sata", "ide", "scsi", NULL};
static const enum disk_bus cdrom_bus_values[] = {BUS_SATA, BUS_IDE, BUS_SCSI};
const char *const cache_names[] = {"none", "writeback", "writethrough", "unsafe", "directsync", NULL};
const char *const aio_names[] = {"auto", "io_uring", "native", "threads", NULL};
const char *const console_names[] = {"serial", "virtio", "none", NULL};
const char *const graphics_names[] = {"none", "vnc", NULL};
const char *const poweroff_names[] = {"stop", "restart", NULL};
const char *const reboot_names[] = {"restart", "stop", NULL};
const char *const crash_names[] = {"stop", "restart", "pause", NULL};

#define DEFAULT_MEMORY (1ull << 30)
#define MIN_MEMORY (16ull << 20)
#define MAX_VCPUS 288

void vm_disk_free(struct vm_disk *k)
{
    free(k->file);
    free(k->volume);
    for (size_t i = 0; i < k->nbacking; i++)
        free(k->backing[i].path);
    free(k->backing);
    free(k->serial);
    vm_disk_rbd_free(k->rbd);
    memset(k, 0, sizeof(*k));
}

void vm_def_free(struct vm_def *d)
{
    free(d->name);
    free(d->description);
    free(d->cpu.model);
    free(d->boot.kernel);
    free(d->boot.initrd);
    free(d->boot.cmdline);
    for (size_t i = 0; i < d->ndisks; i++)
        vm_disk_free(&d->disks[i]);
    free(d->disks);
    for (size_t i = 0; i < d->ncdroms; i++)
        free(d->cdroms[i].file);
    free(d->cdroms);
    for (size_t i = 0; i < d->nnics; i++)
        vm_nic_free(&d->nics[i]);
    free(d->nics);
    free(d->graphics.listen);
    free(d->graphics.password_secret);
    strv_free(&d->qemu_args);
    vm_filesystems_free(d);
    vm_confine_free(d);
    vm_guestdata_free(d);
    vm_tuning_free(d);
    memset(d, 0, sizeof(*d));
}

/* ---- small validators ---- */

static bool abs_path_valid(const char *s)
{
    return s && s[0] == '/' && strlen(s) < PATH_MAX && !strchr(s, '\n');
}

static bool charset_valid(const char *s, size_t maxlen, const char *extra)
{
    size_t n = strlen(s);
    if (n < 1 || n > maxlen)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr(extra, s[i]))
            return false;
    return true;
}

bool ip_literal_valid(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}


/* A string field that must satisfy `ok`; `what` describes the allowed form. */
int jr_checked_string(struct jr *r, json_object *o, const char *key, bool required, char **out,
                      bool (*ok)(const char *), const char *what)
{
    int e = jr_string(r, o, key, required, out);
    if (e < 0 || !*out)
        return e;
    if (ok(*out))
        return 0;
    size_t m = jr_key(r, key);
    json_object *v = json_object_object_get(o, key);
    e = jr_fail(r, "%s is not %s", jr_show(v), what);
    jr_pop(r, m);
    return e;
}

int boot_index_get(struct jr *r, json_object *o, int *out)
{
    int64_t v = -1;
    int e = jr_int(r, o, "boot_index", 0, 999, &v);
    *out = (int)v;
    return e;
}

/* ---- sections ---- */

static int parse_cpu(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *o = NULL;
    int e = jr_object(r, root, "cpu", false, &o);
    d->cpu.count = 1;
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "cpu");
    static const char *const keys[] = {"model", "count", "sockets", "cores", "threads", "max", "pinning", "maxphysaddr", NULL};
    int64_t count = 0, s = 0, c = 0, t = 0, max = 0;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_int(r, o, "count", 1, MAX_VCPUS, &count)) < 0 ||
        (e = jr_int(r, o, "max", 1, MAX_VCPUS, &max)) < 0 ||
        (e = jr_int(r, o, "sockets", 1, MAX_VCPUS, &s)) < 0 || (e = jr_int(r, o, "cores", 1, MAX_VCPUS, &c)) < 0 ||
        (e = jr_int(r, o, "threads", 1, MAX_VCPUS, &t)) < 0)
        return e;
    e = jr_string(r, o, "model", false, &d->cpu.model);
    if (e < 0)
        return e;
    if (d->cpu.model && strcmp(d->cpu.model, "auto") == 0) {
        free(d->cpu.model);
        d->cpu.model = NULL;
    }
    if (d->cpu.model && !charset_valid(d->cpu.model, 64, "_.-+")) {
        jr_key(r, "model");
        return jr_fail(r, "\"%s\" is not a CPU model name (letters, digits, _ . - +)", d->cpu.model);
    }
    if (s || c || t) {
        d->cpu.sockets = s ? (int)s : 1;
        d->cpu.cores = c ? (int)c : 1;
        d->cpu.threads = t ? (int)t : 1;
        int64_t prod = (int64_t)d->cpu.sockets * d->cpu.cores * d->cpu.threads;
        /* the topology describes every vCPU the VM can have: max's when hotplug is on */
        if (max && prod != max)
            return jr_fail(r, "sockets × cores × threads = %lld does not match max %lld", (long long)prod,
                           (long long)max);
        if (!max && count && prod != count)
            return jr_fail(r, "sockets × cores × threads = %lld does not match count %lld", (long long)prod,
                           (long long)count);
        if (prod > MAX_VCPUS)
            return jr_fail(r, "%lld vCPUs is more than %d", (long long)prod, MAX_VCPUS);
        if (!max)
            count = prod;
    }
    d->cpu.count = count ? (int)count : 1;
    if (max && max < d->cpu.count) {
        jr_key(r, "max");
        return jr_fail(r, "%lld is less than count %d (max is how many vCPUs setvcpus may reach)", (long long)max,
                       d->cpu.count);
    }
    if (max > d->cpu.count && d->machine == MACHINE_MICROVM) {
        jr_key(r, "max");
        return jr_fail(r, "vCPU hotplug needs ACPI, and microvm has none (drop max, or use q35)");
    }
    d->cpu.max = max > d->cpu.count ? (int)max : 0;
    if ((e = vm_cpu_tuning_parse(r, o, d)) < 0)
        return e;
    jr_pop(r, m);
    return 0;
}

static int parse_memory(struct jr *r, json_object *root, struct vm_def *d)
{
    d->memory.bytes = DEFAULT_MEMORY;
    json_object *v;
    if (!json_object_object_get_ex(root, "memory", &v))
        return 0;
    size_t m = jr_key(r, "memory");
    int e;
    json_object *size = v;
    if (json_object_is_type(v, json_type_object)) {
        static const char *const keys[] = {"size", "hugepages", "shared", "balloon", NULL};
        if ((e = jr_only_keys(r, v, keys)) < 0 || (e = vm_hugepages_parse(r, v, d)) < 0 ||
            (e = jr_bool(r, v, "shared", &d->memory.shared)) < 0 || (e = jr_bool(r, v, "balloon", &d->memory.balloon)) < 0)
            return e;
        if (d->memory.balloon && d->machine == MACHINE_MICROVM)
            return jr_key(r, "balloon"), jr_fail(r, "virtio-balloon-pci needs PCI, and microvm has none");
        if (!json_object_object_get_ex(v, "size", &size)) {
            jr_pop(r, m);
            return 0;
        }
        jr_key(r, "size");
    }
    if (!json_object_is_type(size, json_type_string))
        return jr_fail(r, "%s is not a size like \"512M\" or \"2G\"", jr_show(size));
    uint64_t bytes;
    if (parse_size(json_object_get_string(size), &bytes) < 0)
        return jr_fail(r, "%s is not a size like \"512M\" or \"2G\"", jr_show(size));
    if (bytes < MIN_MEMORY || bytes % (1u << 20))
        return jr_fail(r, "%s must be a whole number of MiB, at least 16M", jr_show(size));
    if (d->memory.hugepage_size && bytes % d->memory.hugepage_size)
        return jr_fail(r, "%s must be a multiple of %s with hugepages", jr_show(size),
                       d->memory.hugepage_size == (1u << 30) ? "1G" : "2M");
    d->memory.bytes = bytes;
    jr_pop(r, m);
    return 0;
}

static int parse_boot(struct jr *r, json_object *root, struct vm_def *d, bool *order_given)
{
    json_object *o = NULL;
    int e = jr_object(r, root, "boot", false, &o);
    *order_given = false;
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "boot");
    static const char *const keys[] = {"firmware", "kernel", "initrd", "cmdline", "order", NULL};
    int fw = FIRMWARE_BIOS;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_enum(r, o, "firmware", firmware_names, &fw)) < 0)
        return e;
    d->boot.firmware = fw;
    if ((e = jr_checked_string(r, o, "kernel", false, &d->boot.kernel, abs_path_valid, "an absolute path")) < 0 ||
        (e = jr_checked_string(r, o, "initrd", false, &d->boot.initrd, abs_path_valid, "an absolute path")) < 0 ||
        (e = jr_string(r, o, "cmdline", false, &d->boot.cmdline)) < 0)
        return e;
    if (!d->boot.kernel && (d->boot.initrd || d->boot.cmdline)) {
        jr_key(r, d->boot.initrd ? "initrd" : "cmdline");
        return jr_fail(r, "needs boot.kernel");
    }
    json_object *order = NULL;
    if ((e = jr_array(r, o, "order", &order)) < 0)
        return e;
    if (order) {
        size_t mo = jr_key(r, "order");
        size_t n = json_object_array_length(order);
        if (n < 1 || n > 3)
            return jr_fail(r, "must list 1 to 3 of disk, cdrom, network");
        for (size_t i = 0; i < n; i++) {
            json_object *item = json_object_array_get_idx(order, i);
            size_t mi = jr_index(r, i);
            if ((e = jr_expect(r, item, json_type_string)) < 0)
                return e;
            int k = -1;
            for (int j = 0; boot_dev_names[j]; j++)
                if (strcmp(boot_dev_names[j], json_object_get_string(item)) == 0)
                    k = j;
            if (k < 0)
                return jr_fail(r, "%s is not one of disk, cdrom, network", jr_show(item));
            for (int j = 0; j < d->boot.norder; j++)
                if ((int)d->boot.order[j] == k)
                    return jr_fail(r, "%s is listed twice", jr_show(item));
            d->boot.order[d->boot.norder++] = k;
            jr_pop(r, mi);
        }
        jr_pop(r, mo);
        *order_given = true;
    }
    jr_pop(r, m);
    return 0;
}

static bool disk_serial_valid(const char *s)
{
    return charset_valid(s, 20, "_.+-");
}

static bool volume_ref_valid(const char *s)
{
    struct vol_ref v;
    return vol_ref_parse(s, &v, NULL) == 0;
}

static int parse_disk(struct jr *r, json_object *o, struct vm_disk *k, const struct vm_def *d)
{
    static const char *const keys[] = {"file", "volume", "format", "bus", "cache", "aio", "discard", "readonly",
                                       "snapshot", "serial", "boot_index", NULL};
    int e, fmt = FORMAT_PROBE, bus = BUS_VIRTIO, cache = CACHE_NONE, aio = AIO_AUTO;
    if ((e = jr_only_keys(r, o, keys)) < 0 ||
        (e = jr_checked_string(r, o, "file", false, &k->file, abs_path_valid, "an absolute path")) < 0 ||
        (e = jr_checked_string(r, o, "volume", false, &k->volume, volume_ref_valid,
                               "a volume (POOL/NAME, like default/web1)")) < 0 ||
        (e = jr_enum(r, o, "format", disk_format_names, &fmt)) < 0 ||
        (e = jr_enum(r, o, "bus", disk_bus_names, &bus)) < 0 || (e = jr_enum(r, o, "cache", cache_names, &cache)) < 0 ||
        (e = jr_enum(r, o, "aio", aio_names, &aio)) < 0 || (e = jr_bool(r, o, "discard", &k->discard)) < 0 ||
        (e = jr_bool(r, o, "readonly", &k->readonly)) < 0 || (e = jr_bool(r, o, "snapshot", &k->snapshot)) < 0 ||
        (e = jr_checked_string(r, o, "serial", false, &k->serial, disk_serial_valid,
                               "a disk serial (1-20 of letters, digits, _ . + -)")) < 0 ||
        (e = boot_index_get(r, o, &k->boot_index)) < 0)
        return e;
    if (!k->file == !k->volume)
        return jr_fail(r, "needs \"file\" (an image) or \"volume\" (POOL/NAME), and only one of them");
    k->format = fmt;    /* FORMAT_PROBE until vm_define reads the image header */
    k->bus = bus;
    k->cache = cache;
    k->aio = aio;
    if (d->machine == MACHINE_MICROVM && bus != BUS_VIRTIO)
        return jr_key(r, "bus"), jr_fail(r, "\"%s\" is not available on microvm (only virtio)", disk_bus_names[bus]);
    if (d->machine == MACHINE_Q35 && bus == BUS_IDE)
        return jr_key(r, "bus"), jr_fail(r, "\"ide\" is not available on q35 (use sata)");
    if (aio == AIO_NATIVE && (cache == CACHE_WRITEBACK || cache == CACHE_WRITETHROUGH || cache == CACHE_UNSAFE))
        return jr_key(r, "aio"), jr_fail(r, "\"native\" needs cache none or directsync, not %s", cache_names[cache]);
    if (k->readonly && (bus == BUS_SATA || bus == BUS_IDE))
        return jr_key(r, "readonly"), jr_fail(r, "a %s disk cannot be read-only (use virtio or scsi, or a cdrom)",
                                            disk_bus_names[bus]);
    if (k->readonly && k->snapshot)
        return jr_key(r, "snapshot"), jr_fail(r, "a read-only disk needs no throw-away overlay");
    return 0;
}

static int parse_cdrom(struct jr *r, json_object *o, struct vm_cdrom *c, const struct vm_def *d)
{
    static const char *const keys[] = {"file", "bus", "boot_index", NULL};
    int e, bus = d->machine == MACHINE_PC ? 1 : 0;
    if ((e = jr_only_keys(r, o, keys)) < 0 ||
        (e = jr_checked_string(r, o, "file", false, &c->file, abs_path_valid, "an absolute path")) < 0 ||
        (e = jr_enum(r, o, "bus", cdrom_bus_names, &bus)) < 0 || (e = boot_index_get(r, o, &c->boot_index)) < 0)
        return e;
    c->bus = cdrom_bus_values[bus];
    if (d->machine == MACHINE_MICROVM)
        return jr_fail(r, "cdroms are not available on microvm");
    if (d->machine == MACHINE_Q35 && c->bus == BUS_IDE)
        return jr_key(r, "bus"), jr_fail(r, "\"ide\" is not available on q35 (use sata)");
    return 0;
}

/* Parses an array of objects with `parse_one`, allocating `size` bytes per item. */
static int parse_list(struct jr *r, json_object *root, const char *key, size_t size, void **items, size_t *n,
                      const struct vm_def *d, int (*parse_one)(struct jr *, json_object *, void *, const struct vm_def *))
{
    json_object *arr = NULL;
    int e = jr_array(r, root, key, &arr);
    if (e < 0 || !arr)
        return e;
    size_t m = jr_key(r, key);
    size_t count = json_object_array_length(arr);
    *items = qv_xcalloc(count, size);
    for (size_t i = 0; i < count; i++) {
        json_object *item = json_object_array_get_idx(arr, i);
        size_t mi = jr_index(r, i);
        *n = i + 1;     /* so vm_def_free releases what was parsed so far */
        if ((e = jr_expect(r, item, json_type_object)) < 0 || (e = parse_one(r, item, (char *)*items + i * size, d)) < 0)
            return e;
        jr_pop(r, mi);
    }
    *n = count;
    jr_pop(r, m);
    return 0;
}

static int parse_disk_v(struct jr *r, json_object *o, void *p, const struct vm_def *d) { return parse_disk(r, o, p, d); }
static int parse_cdrom_v(struct jr *r, json_object *o, void *p, const struct vm_def *d) { return parse_cdrom(r, o, p, d); }
static int parse_nic_v(struct jr *r, json_object *o, void *p, const struct vm_def *d) { return vm_nic_parse(r, o, p, d); }

static int parse_graphics(struct jr *r, json_object *root, struct vm_def *d)
{
    d->graphics.port = -1;
    json_object *o = NULL;
    int e = jr_object(r, root, "graphics", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "graphics");
    static const char *const keys[] = {"type", "listen", "port", "password_secret", "video", "tablet", NULL};
    int kind = GRAPHICS_NONE;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_enum(r, o, "type", graphics_names, &kind)) < 0)
        return e;
    d->graphics.kind = kind;
    if (kind == GRAPHICS_NONE) {
        json_object_object_foreach(o, key, val) {
            (void)val;
            if (strcmp(key, "type") != 0)
                return jr_key(r, key), jr_fail(r, "only with type vnc");
        }
        jr_pop(r, m);
        return 0;
    }
    if (d->machine == MACHINE_MICROVM)
        return jr_key(r, "type"), jr_fail(r, "\"vnc\" is not available on microvm (it has no display device)");
    if ((e = jr_checked_string(r, o, "listen", false, &d->graphics.listen, ip_literal_valid, "an IP address")) < 0 ||
        (e = jr_checked_string(r, o, "password_secret", false, &d->graphics.password_secret, name_valid,
                               "a secret name")) < 0)
        return e;
    if ((e = vm_video_parse(r, o, d)) < 0)
        return e;
    if (!d->graphics.listen)
        d->graphics.listen = qv_xstrdup("127.0.0.1");
    json_object *port;
    if (json_object_object_get_ex(o, "port", &port) &&
        !(json_object_is_type(port, json_type_string) && strcmp(json_object_get_string(port), "auto") == 0)) {
        int64_t p;
        if (!json_object_is_type(port, json_type_int))
            return jr_key(r, "port"), jr_fail(r, "%s is not \"auto\" or a port 5900..65535", jr_show(port));
        if ((e = jr_int(r, o, "port", 5900, 65535, &p)) < 0)
            return e;
        d->graphics.port = (int)p;
    }
    jr_pop(r, m);
    return 0;
}

/* Device counts per bus, and boot order against boot_index. */
static int check_devices(struct jr *r, struct vm_def *d, bool order_given)
{
    size_t virtio = 0, ide = 0, sata = 0;
    for (size_t i = 0; i < d->ndisks; i++) {
        virtio += d->disks[i].bus == BUS_VIRTIO;
        ide += d->disks[i].bus == BUS_IDE;
        sata += d->disks[i].bus == BUS_SATA;
    }
    for (size_t i = 0; i < d->ncdroms; i++) {
        ide += d->cdroms[i].bus == BUS_IDE;
        sata += d->cdroms[i].bus == BUS_SATA;
    }
    if (d->cloud_init.user_data) {     /* the seed's cdrom: ide on pc, sata on q35 */
        ide += d->machine == MACHINE_PC;
        sata += d->machine == MACHINE_Q35;
    }
    if (virtio > VM_MAX_DISKS)
        return jr_key(r, "disks"), jr_fail(r, "%zu virtio disks, at most %d (use bus scsi for more)", virtio, VM_MAX_DISKS);
    if (ide > 4)
        return jr_key(r, "disks"), jr_fail(r, "%zu IDE disks and cdroms, at most 4", ide);
    if (sata > 6)
        return jr_key(r, "disks"), jr_fail(r, "%zu SATA disks and cdroms, at most 6", sata);
    if (d->nnics > VM_MAX_NICS)
        return jr_key(r, "nics"), jr_fail(r, "%zu NICs, at most %d", d->nnics, VM_MAX_NICS);
    for (size_t i = 0; i < d->nnics; i++)
        for (size_t j = 0; j < i; j++)
            if (d->nics[i].mac[0] && strcmp(d->nics[i].mac, d->nics[j].mac) == 0)
                return jr_key(r, "nics"), jr_index(r, i), jr_key(r, "mac"),
                       jr_fail(r, "\"%s\" is already used by nics[%zu]", d->nics[i].mac, j);

    /* boot_index values must be unique; they exclude boot.order */
    int seen[1000] = {0};
    bool any = false;
    struct { const char *list; size_t n; size_t stride; const int *first; } lists[] = {
        {"disks", d->ndisks, sizeof(struct vm_disk), d->ndisks ? &d->disks[0].boot_index : NULL},
        {"cdroms", d->ncdroms, sizeof(struct vm_cdrom), d->ncdroms ? &d->cdroms[0].boot_index : NULL},
        {"nics", d->nnics, sizeof(struct vm_nic), d->nnics ? &d->nics[0].boot_index : NULL},
    };
    for (size_t l = 0; l < ARRAY_SIZE(lists); l++) {
        for (size_t i = 0; i < lists[l].n; i++) {
            int bi = *(const int *)((const char *)lists[l].first + i * lists[l].stride);
            if (bi < 0)
                continue;
            any = true;
            if (seen[bi])
                return jr_key(r, lists[l].list), jr_index(r, i), jr_key(r, "boot_index"),
                       jr_fail(r, "%d is used twice", bi);
            seen[bi] = 1;
        }
    }
    if (any && order_given)
        return jr_key(r, "boot"), jr_key(r, "order"), jr_fail(r, "not allowed when devices have boot_index");
    if (d->boot.kernel && order_given)
        return jr_key(r, "boot"), jr_key(r, "order"), jr_fail(r, "not used with boot.kernel");
    if (!any && !d->boot.kernel && !order_given) {
        d->boot.order[0] = BOOT_DISK;
        d->boot.order[1] = BOOT_CDROM;
        d->boot.order[2] = BOOT_NETWORK;
        d->boot.norder = 3;
    }
    return 0;
}

static int parse_definition(struct jr *rp, json_object *o, struct vm_def *d)
{
    struct jr r = *rp;
    static const char *const keys[] = {"name", "uuid", "description", "machine", "accel", "cpu", "memory",
                                       "boot", "disks", "cdroms", "nics", "filesystems", "console", "graphics", "agent",
                                       "exit_device", "on_poweroff", "on_reboot", "on_crash", "limits", "sandbox",
                                       "qemu_args", "cloud_init", "credentials", "autostart", "rng", "watchdog", "clock",
                                       "tpm", "hostdevs", "numa", NULL};
    int err = 0, machine = MACHINE_Q35, accel = ACCEL_AUTO, console = CONSOLE_SERIAL;
    int onp = POWEROFF_STOP, onr = REBOOT_RESTART, onc = CRASH_STOP;
    _cleanup_free_ char *uuid = NULL;
    bool order_given = false;
    json_object *qargs = NULL;
    if ((err = jr_expect(&r, o, json_type_object)) < 0 || (err = vm_credentials_check_text(&r, o)) < 0 ||
        (err = jr_check_text(&r, o)) < 0 ||
        (err = jr_only_keys(&r, o, keys)) < 0 ||
        (err = jr_checked_string(&r, o, "name", true, &d->name, name_valid,
                                 "a valid name (1-64 of letters, digits, _ . -, not starting with . or -)")) < 0 ||
        (err = jr_checked_string(&r, o, "uuid", false, &uuid, uuid_valid, "a lower-case UUID")) < 0 ||
        (err = jr_string(&r, o, "description", false, &d->description)) < 0 ||
        (err = jr_enum(&r, o, "machine", vm_machine_names, &machine)) < 0 ||
        (err = jr_enum(&r, o, "accel", vm_accel_names, &accel)) < 0)
        return err;
    d->machine = machine;
    d->accel = accel;
    if (uuid)
        memcpy(d->uuid, uuid, sizeof(d->uuid));
    if ((err = parse_cpu(&r, o, d)) < 0 || (err = parse_memory(&r, o, d)) < 0 || (err = vm_numa_parse(&r, o, d)) < 0 ||
        (err = parse_boot(&r, o, d, &order_given)) < 0)
        return err;
    if (d->machine == MACHINE_MICROVM && !d->boot.kernel) {
        jr_key(&r, "boot");
        err = jr_fail(&r, "microvm needs boot.kernel (it has no disk firmware)");
        return err;
    }
    if (d->machine == MACHINE_MICROVM && d->boot.firmware == FIRMWARE_UEFI) {
        jr_key(&r, "boot"), jr_key(&r, "firmware");
        err = jr_fail(&r, "\"uefi\" is not available on microvm");
        return err;
    }
    if ((err = parse_list(&r, o, "disks", sizeof(struct vm_disk), (void **)&d->disks, &d->ndisks, d, parse_disk_v)) < 0 ||
        (err = parse_list(&r, o, "cdroms", sizeof(struct vm_cdrom), (void **)&d->cdroms, &d->ncdroms, d, parse_cdrom_v)) < 0 ||
        (err = parse_list(&r, o, "nics", sizeof(struct vm_nic), (void **)&d->nics, &d->nnics, d, parse_nic_v)) < 0 ||
        (err = vm_filesystems_parse(&r, o, d)) < 0 ||
        (err = jr_enum(&r, o, "console", console_names, &console)) < 0 || (err = parse_graphics(&r, o, d)) < 0 ||
        (err = jr_bool(&r, o, "agent", &d->agent)) < 0 || (err = jr_bool(&r, o, "exit_device", &d->exit_device)) < 0 ||
        (err = jr_bool(&r, o, "autostart", &d->autostart)) < 0 ||
        (err = jr_enum(&r, o, "on_poweroff", poweroff_names, &onp)) < 0 ||
        (err = jr_enum(&r, o, "on_reboot", reboot_names, &onr)) < 0 ||
        (err = jr_enum(&r, o, "on_crash", crash_names, &onc)) < 0 || (err = jr_array(&r, o, "qemu_args", &qargs)) < 0)
        return err;
    if ((err = vm_limits_parse(&r, o, d)) < 0 || (err = vm_sandbox_parse(&r, o, d)) < 0 ||
        (err = vm_guestdata_parse(&r, o, d)) < 0 || (err = vm_devices_parse(&r, o, d)) < 0 ||
        (err = vm_passthrough_parse(&r, o, d)) < 0)
        return err;
    d->console = console;
    d->on_poweroff = onp;
    d->on_reboot = onr;
    d->on_crash = onc;
    if (qargs) {
        size_t m = jr_key(&r, "qemu_args");
        for (size_t i = 0; i < json_object_array_length(qargs); i++) {
            json_object *a = json_object_array_get_idx(qargs, i);
            size_t mi = jr_index(&r, i);
            if ((err = jr_expect(&r, a, json_type_string)) < 0)
                return err;
            strv_push(&d->qemu_args, json_object_get_string(a));
            jr_pop(&r, mi);
        }
        jr_pop(&r, m);
    }
    return check_devices(&r, d, order_given);
}

int vm_def_from_json(json_object *o, struct vm_def *d, struct qv_err *e)
{
    struct jr r;
    jr_init(&r, e);
    memset(d, 0, sizeof(*d));
    int err = parse_definition(&r, o, d);
    if (err < 0)
        vm_def_free(d);
    return err;
}

int vm_device_json_begin(struct jr *r, json_object *o, const char *key, struct qv_err *e)
{
    jr_init(r, e);
    jr_key(r, key);
    int err = jr_expect(r, o, json_type_object);
    return err < 0 ? err : jr_check_text(r, o);
}

/* One device for hotplug, with the same checks as inside a definition. */
int vm_disk_from_json(json_object *o, const struct vm_def *d, struct vm_disk *out, struct qv_err *e)
{
    struct jr r;
    memset(out, 0, sizeof(*out));
    int err = vm_device_json_begin(&r, o, "disk", e);
    if (err == 0)
        err = parse_disk(&r, o, out, d);
    /* a volume is resolved where the disk is attached (vm_resolve_disk): an rbd one
     * needs its monitors, user and key there */
    if (err == 0 && !out->volume && (err = vm_path_check_type(out->file, PATH_REG | PATH_BLK, e)) < 0)
        qv_prefix(e, "disk.file: ");
    if (err == 0 && !out->volume && out->format == FORMAT_PROBE)
        err = image_detect_format(out->file, &out->format, e);
    if (err < 0)
        vm_disk_free(out);
    return err;
}
