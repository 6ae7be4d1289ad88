/* Internal to launcher/model: argv.c's builder, shared with argv_devices.c (the
 * devices that are one switch each, and the display). */
#ifndef QV_ARGV_INTERNAL_H
#define QV_ARGV_INTERNAL_H

#include <stdio.h>
#include <string.h>

#include "launcher/model/model.h"

#define SLOT_VGA 0x02
#define SLOT_NIC0 0x03
#define SLOT_DISK0 0x0b
#define SLOT_SCSI 0x17
#define SLOT_VSERIAL 0x18
#define SLOT_USB 0x19
#define SLOT_SATA 0x1a
#define SLOT_FS 0x1b
#define SLOT_ROOTPORTS 0x1c
#define SLOT_RNG 0x1d
#define SLOT_WATCHDOG 0x1e
/* every other slot is taken by a class above: 0x01 is free on q35 (0x1f is its LPC),
 * 0x1f on pc (0x01 is its PIIX3) */
#define SLOT_BALLOON_Q35 0x01
#define SLOT_BALLOON_PC 0x1f

struct builder {
    struct launch_plan *p;
    const struct vm_def *d;
    const struct host_facts *f;
    const char *pci_bus;    /* NULL on microvm: virtio-mmio, no PCI */
    int next_fd;
    int boot_disk, boot_cdrom, boot_nic;   /* bootindex from boot.order, or -1 */
};

static inline void arg(struct builder *b, const char *s)
{
    strv_push(&b->p->argv, s);
}

static inline void arg2(struct builder *b, const char *opt, const char *val)
{
    strv_push(&b->p->argv, opt);
    strv_push(&b->p->argv, val);
}

/* Option followed by its JSON value; consumes o. */
static inline void arg_json(struct builder *b, const char *opt, json_object *o)
{
    strv_push(&b->p->argv, opt);
    strv_push(&b->p->argv, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
}

static inline json_object *jobj(void)
{
    return json_object_new_object();
}

static inline void js(json_object *o, const char *k, const char *v)
{
    json_object_object_add(o, k, json_object_new_string(v));
}

static inline void ji(json_object *o, const char *k, int64_t v)
{
    json_object_object_add(o, k, json_object_new_int64(v));
}

static inline void jb(json_object *o, const char *k, bool v)
{
    json_object_object_add(o, k, json_object_new_boolean(v));
}

static inline void pci_place(struct builder *b, json_object *dev, int slot, int function)
{
    char addr[16];
    if (!b->pci_bus)
        return;
    js(dev, "bus", b->pci_bus);
    if (function)
        snprintf(addr, sizeof(addr), "0x%x.%d", slot, function);
    else
        snprintf(addr, sizeof(addr), "0x%x", slot);
    js(dev, "addr", addr);
}

/* virtio-KIND-pci on pc and q35, virtio-KIND-device (virtio-mmio) on microvm */
static inline const char *virtio_driver(struct builder *b, const char *kind)
{
    static const char *const names[][3] = {
        {"blk", "virtio-blk-pci", "virtio-blk-device"},
        {"net", "virtio-net-pci", "virtio-net-device"},
        {"scsi", "virtio-scsi-pci", "virtio-scsi-device"},
        {"serial", "virtio-serial-pci", "virtio-serial-device"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        if (strcmp(names[i][0], kind) == 0)
            return names[i][b->pci_bus ? 1 : 2];
    return "virtio-unknown";
}

/* argv.c: a slot for an fd the supervisor opens; returns its number in QEMU */
int argv_add_fd(struct builder *b, enum fd_kind kind, int index, int sub, int flags);

/* argv_passthrough.c: the TPM (its swtpm's control socket comes as an fd) and host
 * devices (vfio-pci behind their own root ports on q35; usb-host on usb0 by an fd) */
void argv_add_tpm(struct builder *b);
void argv_add_hostdevs(struct builder *b);

/* argv_devices.c */
void argv_add_display(struct builder *b);
/* ",watchdog=ACTION" for -action, "" without a watchdog */
const char *argv_watchdog_action(const struct vm_def *d);
/* rng, watchdog, balloon, the RTC's offset, the USB tablet (after the controllers) */
void argv_add_devices(struct builder *b);

/* argv_memory.c */
/* -machine memory-backend=ram: one backend for all RAM (no NUMA nodes) */
bool argv_machine_ram_backend(const struct vm_def *d);
/* -m, the RAM backends, -numa nodes */
void argv_add_memory(struct builder *b);
/* -cpu's value: the model with its physical address width options */
int argv_cpu_options(struct builder *b, enum vm_accel accel, const char *model, char *out, size_t outlen,
                     struct qv_err *e);

#endif
