/* VM definitions back to JSON: the normalised form `show` prints and the store
 * writes, every default filled in, with the same names the parser accepts. */
#include <stdlib.h>
#include <string.h>

#include "launcher/model/config.h"

static void put_str(json_object *o, const char *k, const char *v)
{
    if (v)
        json_object_object_add(o, k, json_object_new_string(v));
}

static void put_int(json_object *o, const char *k, int64_t v)
{
    json_object_object_add(o, k, json_object_new_int64(v));
}

static void put_bool(json_object *o, const char *k, bool v)
{
    json_object_object_add(o, k, json_object_new_boolean(v));
}

json_object *vm_disk_to_json(const struct vm_disk *k)
{
    json_object *j = json_object_new_object();
    if (k->volume)
        put_str(j, "volume", k->volume);    /* its file is resolved anew at each start */
    else
        put_str(j, "file", k->file);
    if (k->format != FORMAT_PROBE)
        put_str(j, "format", disk_format_names[k->format]);
    put_str(j, "bus", disk_bus_names[k->bus]);
    put_str(j, "cache", cache_names[k->cache]);
    put_str(j, "aio", aio_names[k->aio]);
    put_bool(j, "discard", k->discard);
    put_bool(j, "readonly", k->readonly);
    put_bool(j, "snapshot", k->snapshot);
    put_str(j, "serial", k->serial);
    if (k->boot_index >= 0)
        put_int(j, "boot_index", k->boot_index);
    return j;
}

json_object *vm_nic_to_json(const struct vm_nic *n)
{
    json_object *j = json_object_new_object();
    put_str(j, "type", nic_type_names[n->type]);
    if (n->type != NIC_USER)
        put_str(j, nic_type_names[n->type], n->source);
    if (n->type == NIC_DIRECT)
        put_str(j, "mode", macvtap_names[n->mode]);
    if (n->mac[0])
        put_str(j, "mac", n->mac);
    put_str(j, "model", nic_model_names[n->model]);
    if (n->type != NIC_USER) {
        put_int(j, "queues", n->queues);
        put_bool(j, "vhost", n->vhost);
    }
    if (n->type == NIC_USER) {
        json_object *fwd = json_object_new_array();
        for (size_t k = 0; k < n->nfwd; k++) {
            json_object *f = json_object_new_object();
            put_str(f, "protocol", n->fwd[k].udp ? "udp" : "tcp");
            put_str(f, "host", n->fwd[k].host);
            put_int(f, "host_port", n->fwd[k].host_port);
            put_str(f, "guest", n->fwd[k].guest);
            put_int(f, "guest_port", n->fwd[k].guest_port);
            json_object_array_add(fwd, f);
        }
        json_object_object_add(j, "hostfwd", fwd);
    }
    if (n->boot_index >= 0)
        put_int(j, "boot_index", n->boot_index);
    if (n->type == NIC_NETWORK) {
        if (n->filter_name) {
            put_str(j, "filter", n->filter_name);
        } else if (n->filter == FILTER_NONE) {
            put_str(j, "filter", "none");
        } else if (!n->allow_in && !n->ndeny_out) {
            put_str(j, "filter", "clean-traffic");
        } else {
            json_object *f = json_object_new_object();
            const struct nic_port *lists[] = {n->allow_in, n->deny_out};
            size_t counts[] = {n->nallow_in, n->ndeny_out};
            static const char *const keys[] = {"allow_in", "deny_out"};
            for (int l = 0; l < 2; l++) {
                if (l == 0 && !n->allow_in)
                    continue;
                json_object *a = json_object_new_array();
                for (size_t i = 0; i < counts[l]; i++) {
                    const struct nic_port *p = &lists[l][i];
                    char txt[32];
                    if (p->proto == IPPROTO_ICMP)
                        snprintf(txt, sizeof(txt), "icmp");
                    else if (p->lo == p->hi)
                        snprintf(txt, sizeof(txt), "%s/%d", p->proto == IPPROTO_TCP ? "tcp" : "udp", p->lo);
                    else
                        snprintf(txt, sizeof(txt), "%s/%d-%d", p->proto == IPPROTO_TCP ? "tcp" : "udp", p->lo, p->hi);
                    json_object_array_add(a, json_object_new_string(txt));
                }
                json_object_object_add(f, keys[l], a);
            }
            json_object_object_add(j, "filter", f);
        }
    }
    if (n->vlan)
        put_int(j, "vlan", n->vlan);
    return j;
}

static json_object *def_to_json(const struct vm_def *d, bool with_values);

json_object *vm_def_to_json(const struct vm_def *d)
{
    return def_to_json(d, true);
}

json_object *vm_def_to_json_public(const struct vm_def *d)
{
    return def_to_json(d, false);
}

static json_object *def_to_json(const struct vm_def *d, bool with_values)
{
    json_object *o = json_object_new_object();
    put_str(o, "name", d->name);
    if (d->uuid[0])
        put_str(o, "uuid", d->uuid);
    put_str(o, "description", d->description);
    put_str(o, "machine", vm_machine_names[d->machine]);
    put_str(o, "accel", vm_accel_names[d->accel]);

    json_object *cpu = json_object_new_object();
    put_str(cpu, "model", d->cpu.model ? d->cpu.model : "auto");
    put_int(cpu, "count", d->cpu.count);
    if (d->cpu.max)
        put_int(cpu, "max", d->cpu.max);
    if (d->cpu.sockets) {
        put_int(cpu, "sockets", d->cpu.sockets);
        put_int(cpu, "cores", d->cpu.cores);
        put_int(cpu, "threads", d->cpu.threads);
    }
    vm_tuning_cpu_to_json(d, cpu);
    json_object_object_add(o, "cpu", cpu);

    char size[32];
    format_size(d->memory.bytes, size, sizeof(size));
    if (d->memory.hugepage_size || d->memory.shared || d->memory.balloon) {
        json_object *mem = json_object_new_object();
        put_str(mem, "size", size);
        if (d->memory.hugepage_size)
            put_str(mem, "hugepages", d->memory.hugepage_size == (1u << 30) ? "1G" : "2M");
        else
            put_bool(mem, "hugepages", false);
        put_bool(mem, "shared", d->memory.shared);
        if (d->memory.balloon)
            put_bool(mem, "balloon", true);
        json_object_object_add(o, "memory", mem);
    } else {
        put_str(o, "memory", size);
    }

    vm_tuning_to_json(d, o);

    json_object *boot = json_object_new_object();
    put_str(boot, "firmware", firmware_names[d->boot.firmware]);
    put_str(boot, "kernel", d->boot.kernel);
    put_str(boot, "initrd", d->boot.initrd);
    put_str(boot, "cmdline", d->boot.cmdline);
    if (d->boot.norder) {
        json_object *order = json_object_new_array();
        for (int i = 0; i < d->boot.norder; i++)
            json_object_array_add(order, json_object_new_string(boot_dev_names[d->boot.order[i]]));
        json_object_object_add(boot, "order", order);
    }
    json_object_object_add(o, "boot", boot);

    json_object *disks = json_object_new_array();
    for (size_t i = 0; i < d->ndisks; i++)
        json_object_array_add(disks, vm_disk_to_json(&d->disks[i]));
    json_object_object_add(o, "disks", disks);

    json_object *cdroms = json_object_new_array();
    for (size_t i = 0; i < d->ncdroms; i++) {
        json_object *j = json_object_new_object();
        put_str(j, "file", d->cdroms[i].file);
        put_str(j, "bus", disk_bus_names[d->cdroms[i].bus]);
        if (d->cdroms[i].boot_index >= 0)
            put_int(j, "boot_index", d->cdroms[i].boot_index);
        json_object_array_add(cdroms, j);
    }
    json_object_object_add(o, "cdroms", cdroms);

    json_object *nics = json_object_new_array();
    for (size_t i = 0; i < d->nnics; i++)
        json_object_array_add(nics, vm_nic_to_json(&d->nics[i]));
    json_object_object_add(o, "nics", nics);
    if (d->nfilesystems)
        json_object_object_add(o, "filesystems", vm_filesystems_to_json(d));

    put_str(o, "console", console_names[d->console]);
    json_object *g = json_object_new_object();
    put_str(g, "type", graphics_names[d->graphics.kind]);
    if (d->graphics.kind == GRAPHICS_VNC) {
        put_str(g, "listen", d->graphics.listen);
        if (d->graphics.port < 0)
            put_str(g, "port", "auto");
        else
            put_int(g, "port", d->graphics.port);
        put_str(g, "password_secret", d->graphics.password_secret);
        put_str(g, "video", video_names[d->graphics.video]);
        if (d->graphics.tablet)
            put_bool(g, "tablet", true);
    }
    json_object_object_add(o, "graphics", g);
    put_bool(o, "agent", d->agent);
    if (d->exit_device)
        put_bool(o, "exit_device", true);
    if (d->autostart)
        put_bool(o, "autostart", true);
    put_str(o, "on_poweroff", poweroff_names[d->on_poweroff]);
    put_str(o, "on_reboot", reboot_names[d->on_reboot]);
    put_str(o, "on_crash", crash_names[d->on_crash]);
    vm_confine_to_json(d, o);
    if (d->qemu_args.n) {
        json_object *a = json_object_new_array();
        for (size_t i = 0; i < d->qemu_args.n; i++)
            json_object_array_add(a, json_object_new_string(d->qemu_args.v[i]));
        json_object_object_add(o, "qemu_args", a);
    }
    vm_devices_to_json(d, o);
    vm_passthrough_to_json(d, o);
    vm_guestdata_to_json(d, o, with_values);
    return o;
}
