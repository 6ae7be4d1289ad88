/* Devices backed by something on the host (libvirt's <tpm> and <hostdev>):
 *   "tpm": {"model": "tpm-crb" | "tpm-tis"}       (model defaults to tpm-crb)
 *   "hostdevs": [{"type": "pci", "address": "0000:01:00.0"},
 *                {"type": "usb", "vendor": "0x046d", "product": "0xc52b"},
 *                {"type": "usb", "bus": 1, "device": 3}]
 * The TPM is an emulated TPM 2.0 whose state a swtpm keeps in var/lib/qvisor/tpm/NAME;
 * both need a PC machine (pc or q35): microvm has neither ACPI tables for a TPM nor
 * PCI or USB. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/model/config.h"

const char *const tpm_model_names[] = {"none", "tpm-crb", "tpm-tis", NULL};
static const char *const hostdev_type_names[] = {"pci", "usb", NULL};

static int parse_tpm(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *o = NULL;
    int e = jr_object(r, root, "tpm", false, &o);
    if (e < 0 || !o)
        return e;
    size_t m = jr_key(r, "tpm");
    static const char *const keys[] = {"model", NULL};
    int model = TPM_CRB - 1;    /* an index into the names without "none" */
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_enum(r, o, "model", tpm_model_names + 1, &model)) < 0)
        return e;
    model++;
    if (d->machine == MACHINE_MICROVM)
        return jr_fail(r, "a TPM needs the ACPI tables of a pc or q35 machine, and microvm has none");
    d->tpm = model;
    jr_pop(r, m);
    return 0;
}

/* "0000:01:00.0" or "01:00.0" (domain 0000): hex digits, device 0-1f, function 0-7 */
static bool pci_address_parse(const char *s, char out[16])
{
    unsigned dom = 0, bus, dev, fn;
    int n = 0;
    size_t len = strlen(s);
    for (size_t i = 0; i < len; i++)
        if (!isxdigit((unsigned char)s[i]) && s[i] != ':' && s[i] != '.')
            return false;
    if (sscanf(s, "%4x:%2x:%2x.%1x%n", &dom, &bus, &dev, &fn, &n) == 4 && (size_t)n == len && len == 12) {
    } else if (sscanf(s, "%2x:%2x.%1x%n", &bus, &dev, &fn, &n) == 3 && (size_t)n == len && len == 7) {
        dom = 0;
    } else {
        return false;
    }
    if (dev > 0x1f || fn > 7)
        return false;
    snprintf(out, 16, "%04x:%02x:%02x.%x", dom, bus, dev, fn);
    return true;
}

/* "0x046d" or "046d": four hex digits, not 0 */
static int usb_id(struct jr *r, json_object *o, const char *key, int *out)
{
    char *s = NULL;
    int e = jr_string(r, o, key, true, &s);
    if (e < 0)
        return e;
    const char *h = strncmp(s, "0x", 2) == 0 || strncmp(s, "0X", 2) == 0 ? s + 2 : s;
    char *end;
    unsigned long v = strtoul(h, &end, 16);
    bool ok = strlen(h) == 4 && isxdigit((unsigned char)h[0]) && *end == '\0' && v > 0;
    free(s);
    if (!ok) {
        size_t m = jr_key(r, key);
        json_object *v2 = NULL;
        json_object_object_get_ex(o, key, &v2);
        e = jr_fail(r, "%s is not a USB id: four hex digits, e.g. \"0x046d\"", jr_show(v2));
        jr_pop(r, m);
        return e;
    }
    *out = (int)v;
    return 0;
}

static int parse_hostdev(struct jr *r, json_object *o, struct vm_hostdev *h)
{
    int type = -1, e;
    if ((e = jr_expect(r, o, json_type_object)) < 0)
        return e;
    json_object *tv = NULL;
    if (!json_object_object_get_ex(o, "type", &tv))
        return jr_fail(r, "\"type\" is missing (pci or usb)");
    if ((e = jr_enum(r, o, "type", hostdev_type_names, &type)) < 0)
        return e;
    memset(h, 0, sizeof(*h));
    h->type = type;
    if (type == HOSTDEV_PCI) {
        static const char *const keys[] = {"type", "address", NULL};
        char *addr = NULL;
        if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "address", true, &addr)) < 0)
            return e;
        bool ok = pci_address_parse(addr, h->address);
        free(addr);
        if (!ok) {
            size_t m = jr_key(r, "address");
            json_object *v = NULL;
            json_object_object_get_ex(o, "address", &v);
            e = jr_fail(r, "%s is not a PCI address: DOMAIN:BUS:DEVICE.FUNCTION in hex, e.g. \"0000:01:00.0\" "
                        "(as lspci -D prints it)", jr_show(v));
            jr_pop(r, m);
            return e;
        }
        return 0;
    }
    static const char *const keys[] = {"type", "vendor", "product", "bus", "device", NULL};
    if ((e = jr_only_keys(r, o, keys)) < 0)
        return e;
    bool by_id = json_object_object_get_ex(o, "vendor", NULL) || json_object_object_get_ex(o, "product", NULL);
    bool by_place = json_object_object_get_ex(o, "bus", NULL) || json_object_object_get_ex(o, "device", NULL);
    if (by_id == by_place)
        return jr_fail(r, "a USB device is named either by \"vendor\" and \"product\" or by \"bus\" and \"device\" "
                       "(as lsusb prints them)");
    if (by_id)
        return (e = usb_id(r, o, "vendor", &h->vendor)) < 0 ? e : usb_id(r, o, "product", &h->product);
    int64_t bus = 0, dev = 0;
    if (!json_object_object_get_ex(o, "bus", NULL) || !json_object_object_get_ex(o, "device", NULL))
        return jr_fail(r, "a USB device named by place needs both \"bus\" and \"device\"");
    if ((e = jr_int(r, o, "bus", 1, 255, &bus)) < 0 || (e = jr_int(r, o, "device", 1, 127, &dev)) < 0)
        return e;
    h->bus = (int)bus;
    h->device = (int)dev;
    return 0;
}

static bool hostdev_same(const struct vm_hostdev *a, const struct vm_hostdev *b)
{
    if (a->type != b->type)
        return false;
    if (a->type == HOSTDEV_PCI)
        return strcmp(a->address, b->address) == 0;
    return a->vendor == b->vendor && a->product == b->product && a->bus == b->bus && a->device == b->device;
}

void vm_hostdev_name(const struct vm_hostdev *h, char *out, size_t len)
{
    if (h->type == HOSTDEV_PCI)
        snprintf(out, len, "pci %s", h->address);
    else if (h->vendor)
        snprintf(out, len, "usb %04x:%04x", h->vendor, h->product);
    else
        snprintf(out, len, "usb bus %d device %d", h->bus, h->device);
}

/* Refuses a second use of the same host device and machines without the bus. */
static int hostdev_fits(struct jr *r, const struct vm_def *d, const struct vm_hostdev *h, size_t nbefore)
{
    if (d->machine == MACHINE_MICROVM)
        return jr_fail(r, "host devices need PCI (and USB), and microvm has neither (use pc or q35)");
    for (size_t k = 0; k < nbefore; k++) {
        if (hostdev_same(&d->hostdevs[k], h)) {
            char name[48];
            vm_hostdev_name(h, name, sizeof(name));
            return jr_fail(r, "%s is already hostdevs[%zu]: a host device goes to the guest once", name, k);
        }
    }
    return 0;
}

static int parse_hostdevs(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *arr = NULL;
    int e = jr_array(r, root, "hostdevs", &arr);
    if (e < 0 || !arr)
        return e;
    size_t m = jr_key(r, "hostdevs");
    size_t n = json_object_array_length(arr);
    if (n > VM_MAX_HOSTDEVS)
        return jr_fail(r, "%zu host devices; at most %d", n, VM_MAX_HOSTDEVS);
    size_t npci = 0;
    for (size_t i = 0; i < n; i++) {
        size_t mi = jr_index(r, i);
        struct vm_hostdev h;
        if ((e = parse_hostdev(r, json_object_array_get_idx(arr, i), &h)) < 0 || (e = hostdev_fits(r, d, &h, i)) < 0)
            return e;
        if (h.type == HOSTDEV_PCI && d->machine == MACHINE_Q35 && ++npci > VM_HOSTDEV_PORTS)
            return jr_fail(r, "q35 has %d root ports for PCI host devices given in the definition; attach more "
                           "with attach-device", VM_HOSTDEV_PORTS);
        snprintf(h.id, sizeof(h.id), "hostdev%zu", i);
        d->hostdevs[i] = h;
        d->nhostdevs = i + 1;
        jr_pop(r, mi);
    }
    jr_pop(r, m);
    return 0;
}

int vm_passthrough_parse(struct jr *r, json_object *root, struct vm_def *d)
{
    int e = parse_tpm(r, root, d);
    return e < 0 ? e : parse_hostdevs(r, root, d);
}

int vm_hostdev_from_json(json_object *o, const struct vm_def *d, struct vm_hostdev *out, struct qv_err *e)
{
    struct jr r;
    jr_init(&r, e);
    jr_key(&r, "hostdev");
    int err = parse_hostdev(&r, o, out);
    if (err == 0 && d)
        err = hostdev_fits(&r, d, out, d->nhostdevs);
    return err;
}

json_object *vm_hostdev_to_json(const struct vm_hostdev *h)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string(hostdev_type_names[h->type]));
    char hex[8];
    if (h->type == HOSTDEV_PCI) {
        json_object_object_add(o, "address", json_object_new_string(h->address));
    } else if (h->vendor) {
        snprintf(hex, sizeof(hex), "0x%04x", h->vendor);
        json_object_object_add(o, "vendor", json_object_new_string(hex));
        snprintf(hex, sizeof(hex), "0x%04x", h->product);
        json_object_object_add(o, "product", json_object_new_string(hex));
    } else {
        json_object_object_add(o, "bus", json_object_new_int(h->bus));
        json_object_object_add(o, "device", json_object_new_int(h->device));
    }
    return o;
}

void vm_passthrough_to_json(const struct vm_def *d, json_object *o)
{
    if (d->tpm != TPM_NONE) {
        json_object *t = json_object_new_object();
        json_object_object_add(t, "model", json_object_new_string(tpm_model_names[d->tpm]));
        json_object_object_add(o, "tpm", t);
    }
    if (d->nhostdevs) {
        json_object *a = json_object_new_array();
        for (size_t i = 0; i < d->nhostdevs; i++)
            json_object_array_add(a, vm_hostdev_to_json(&d->hostdevs[i]));
        json_object_object_add(o, "hostdevs", a);
    }
}
