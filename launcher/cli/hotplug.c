/* attach-disk, detach-disk, attach-nic, detach-nic, change-media, ifaddr. Like virsh: a running
 * VM changes now; --persistent changes its definition too (the only thing that
 * changes when it is not running). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/cli.h"
#include "launcher/model/storedef.h"

/* Which entry of a definition's device array a detach removes: the one whose `field`
 * equals `key` (disks by file or volume, NICs by MAC), or the host device of the
 * same identity as `hostdev` (hostdevs[i] named as vm_hostdev_name names it). */
struct def_match {
    const char *field, *key;
    const struct vm_hostdev *hostdev;
};

static bool def_matches(const struct def_match *m, const struct vm_def *d, const char *list, json_object *entry,
                        size_t i)
{
    if (m->hostdev) {
        char have[48], want[48];
        if (strcmp(list, "hostdevs") != 0 || i >= d->nhostdevs)
            return false;
        vm_hostdev_name(&d->hostdevs[i], have, sizeof(have));
        vm_hostdev_name(m->hostdev, want, sizeof(want));
        return strcmp(have, want) == 0;
    }
    json_object *v;
    return json_object_object_get_ex(entry, m->field, &v) && strcasecmp(json_object_get_string(v), m->key) == 0;
}

static void def_match_name(const struct def_match *m, const char *list, char *out, size_t len)
{
    if (m->hostdev) {
        char dev[48];
        vm_hostdev_name(m->hostdev, dev, sizeof(dev));
        snprintf(out, len, "host device %s", dev);
    } else {
        snprintf(out, len, "%s with %s %s", strcmp(list, "disks") == 0 ? "disk" : "NIC", m->field, m->key);
    }
}

/* The definition with `dev` added to its array `list` (or, with `remove`, the entry
 * it matches taken out), checked as a whole; written (atomically) only when `write`,
 * so that a caller can learn whether a change is valid before it changes the VM.
 * `verb` (NULL for none) prefixes the errors. */
static int change_definition(struct cli *c, const char *name, const char *verb, const char *list, json_object *dev,
                             const struct def_match *remove, bool write)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, name, &d, &c->err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *o = vm_def_to_json(&d);
    json_object *arr;
    if (!json_object_object_get_ex(o, list, &arr)) {
        arr = json_object_new_array();
        json_object_object_add(o, list, arr);
    }
    if (!remove) {
        json_object_array_add(arr, json_object_get(dev));
    } else {
        size_t i, n = json_object_array_length(arr);
        for (i = 0; i < n && !def_matches(remove, &d, list, json_object_array_get_idx(arr, i), i); i++)
            ;
        if (i == n) {
            char what[160];
            def_match_name(remove, list, what, sizeof(what));
            return qv_fail(&c->err, -ENOENT, "%s: %s%sthe definition has no %s", name, verb ? verb : "",
                           verb ? ": " : "", what);
        }
        json_object_array_del_idx(arr, i, 1);
        /* hostdevs is absent from a definition without host devices, as vm_def_to_json writes it */
        if (strcmp(list, "hostdevs") == 0 && json_object_array_length(arr) == 0)
            json_object_object_del(o, list);
    }
    _cleanup_vm_def_ struct vm_def out = {0};
    r = write ? vm_define(&c->paths, o, true, &out, &c->err) : vm_def_from_json(o, &out, &c->err);
    if (r < 0 && verb)
        return qv_prefix(&c->err, "%s: %s: the definition: ", name, verb);
    return r;
}

static bool running(struct cli *c, const char *name)
{
    return vm_supervised(&c->paths, name, NULL);
}

/* `dev` goes into the definition; `live` (NULL: dev) to the running VM. */
static int attach(struct cli *c, const char *what, json_object *dev, json_object *live)
{
    const char *name = c->pos[0];
    bool persistent = cli_flag(c, "persistent");
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, name, &d, &c->err);
    if (r < 0)
        return r;
    const char *id = NULL;
    json_object *reply = NULL;
    if (running(c, name)) {
        json_object *req = ctl_request(strcmp(what, "disk") == 0 ? "attach-disk" : "attach-nic");
        json_object_object_add(req, "device", json_object_get(live ? live : dev));
        json_object *vol;
        if (live && json_object_object_get_ex(dev, "volume", &vol))    /* what the file was resolved from */
            json_object_object_add(req, "volume", json_object_get(vol));
        if ((r = ctl_call(&c->paths, name, req, 90000, &reply, &c->err)) < 0)
            return r;
        json_object *v;
        if (json_object_object_get_ex(reply, "id", &v))
            id = json_object_get_string(v);
        /* keep the MAC the running VM got, so the definition matches it */
        if (json_object_object_get_ex(reply, "mac", &v))
            json_object_object_add(dev, "mac", json_object_new_string(json_object_get_string(v)));
    } else if (!persistent) {
        return qv_fail(&c->err, -EBUSY, "%s is not running (--persistent changes its definition)", name);
    }
    if (persistent && (r = change_definition(c, name, NULL, strcmp(what, "disk") == 0 ? "disks" : "nics", dev, NULL, true)) < 0) {
        if (reply)
            json_object_put(reply);
        return qv_prefix(&c->err, "%s: ", id ? "attached, but the definition did not change" : "attach");
    }
    if (!c->quiet)
        printf("%s attached%s%s%s\n", what, id ? " as " : "", id ? id : "", persistent ? " (and defined)" : "");
    if (reply)
        json_object_put(reply);
    return 0;
}

/* `target` as the user named it; the running VM is asked for `live_target` (NULL:
 * target), the definition's entry whose `field` equals target is removed. */
static int detach(struct cli *c, const char *what, const char *target, const char *live_target, const char *field)
{
    const char *name = c->pos[0];
    bool persistent = cli_flag(c, "persistent");
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, name, &d, &c->err);
    if (r < 0)
        return r;
    bool live = running(c, name), unplugged = false;
    if (live) {
        json_object *req = ctl_request(strcmp(what, "disk") == 0 ? "detach-disk" : "detach-nic");
        json_object_object_add(req, "target", json_object_new_string(live_target ? live_target : target));
        r = ctl_call(&c->paths, name, req, 60000, NULL, &c->err);
        /* a device of the definition itself is not hotplugged: --persistent removes it
         * from the definition, and the running QEMU keeps it until it stops */
        if (r < 0 && !(persistent && r == -ENOENT))
            return r;
        unplugged = r == 0;
    } else if (!persistent) {
        return qv_fail(&c->err, -EBUSY, "%s is not running (--persistent changes its definition)", name);
    }
    struct def_match m = {.field = field, .key = target};
    if (persistent &&
        (r = change_definition(c, name, NULL, strcmp(what, "disk") == 0 ? "disks" : "nics", NULL, &m, true)) < 0)
        return r;
    if (c->quiet)
        return 0;
    if (unplugged)
        printf("%s %s detached%s\n", what, target, persistent ? " (and removed from the definition)" : "");
    else if (live)
        printf("%s %s removed from the definition (the running VM keeps it until it stops)\n", what, target);
    else
        printf("%s %s detached from the definition\n", what, target);
    return 0;
}

int cmd_attach_disk(struct cli *c)
{
    if ((c->npos == 2) == cli_flag(c, "volume"))
        return qv_fail(&c->err, -EINVAL, "attach-disk %s: a FILE or --volume POOL/NAME, one of them", c->pos[0]);
    json_object *dev = json_object_new_object();
    if (c->npos == 2)
        json_object_object_add(dev, "file", json_object_new_string(c->pos[1]));
    static const char *const str_opts[] = {"bus", "format", "cache", "serial", NULL};
    for (int i = 0; str_opts[i]; i++)
        if (cli_opt(c, str_opts[i]))
            json_object_object_add(dev, str_opts[i], json_object_new_string(cli_opt(c, str_opts[i])));
    if (cli_flag(c, "readonly"))
        json_object_object_add(dev, "readonly", json_object_new_boolean(true));
    const char *volume = cli_opt(c, "volume");
    json_object *live = NULL;
    if (volume) {
        /* the definition names the volume; the running VM gets its file */
        char path[PATH_MAX];
        enum disk_format fmt;
        int r = vol_resolve(&c->paths, volume, path, sizeof(path), &fmt, &c->err);
        if (r < 0) {
            json_object_put(dev);
            return qv_prefix(&c->err, "attach-disk --volume: ");
        }
        live = json_object_new_object();
        json_object_object_foreach(dev, key, val)
            json_object_object_add(live, key, json_object_get(val));
        json_object_object_add(dev, "volume", json_object_new_string(volume));
        /* an rbd volume is no file: the supervisor resolves it (monitors, user, key) itself */
        bool rbd = str_startswith(path, "rbd:");
        json_object_object_add(live, rbd ? "volume" : "file", json_object_new_string(rbd ? volume : path));
    }
    int r = attach(c, "disk", dev, live);
    json_object_put(dev);
    if (live)
        json_object_put(live);
    return r;
}

int cmd_detach_disk(struct cli *c)
{
    const char *target = c->pos[1];
    struct vol_ref ref;
    struct qv_err ve = {0};
    /* POOL/NAME: a volume. The definition names it so; the running VM was given its
     * file (attach-disk --volume), so that is what the supervisor is asked for. */
    if (target[0] != '/' && strchr(target, '/') && vol_ref_parse(target, &ref, &ve) == 0) {
        char path[PATH_MAX];
        bool resolved = vol_resolve(&c->paths, target, path, sizeof(path), NULL, &ve) == 0;
        return detach(c, "disk", target, resolved ? path : NULL, "volume");
    }
    return detach(c, "disk", target, NULL, "file");
}

int cmd_attach_nic(struct cli *c)
{
    json_object *dev = json_object_new_object();
    static const char *const sources[] = {"network", "bridge", "direct", NULL};
    int given = 0;
    for (int i = 0; sources[i]; i++) {
        if (cli_opt(c, sources[i])) {
            json_object_object_add(dev, sources[i], json_object_new_string(cli_opt(c, sources[i])));
            given++;
        }
    }
    if (cli_flag(c, "user")) {
        json_object_object_add(dev, "type", json_object_new_string("user"));
        given++;
    }
    if (given != 1) {
        json_object_put(dev);
        return qv_fail(&c->err, -EINVAL, "attach-nic: give exactly one of --network, --bridge, --direct, --user");
    }
    static const char *const str_opts[] = {"mac", "model", "mode", "filter", NULL};
    for (int i = 0; str_opts[i]; i++)
        if (cli_opt(c, str_opts[i]))
            json_object_object_add(dev, str_opts[i], json_object_new_string(cli_opt(c, str_opts[i])));
    if (cli_opt(c, "queues"))
        json_object_object_add(dev, "queues", json_object_new_int(atoi(cli_opt(c, "queues"))));
    if (cli_opt(c, "vlan"))
        json_object_object_add(dev, "vlan", json_object_new_int(atoi(cli_opt(c, "vlan"))));
    int r = attach(c, "NIC", dev, NULL);
    json_object_put(dev);
    return r;
}

int cmd_detach_nic(struct cli *c)
{
    const char *mac = cli_opt(c, "mac");
    if (!mac)
        return qv_fail(&c->err, -EINVAL, "detach-nic: --mac MAC names the NIC");
    return detach(c, "NIC", mac, NULL, "mac");
}

int cmd_ifaddr(struct cli *c)
{
    const char *source = cli_opt(c, "source");
    if (source && strcmp(source, "agent") == 0)
        return cli_ifaddr_agent(c, c->pos[0]);
    if (source && strcmp(source, "lease") != 0 && strcmp(source, "leases") != 0)
        return qv_fail(&c->err, -EINVAL, "ifaddr: --source %s: not lease or agent", source);
    json_object *reply = NULL, *nics;
    int r = ctl_call(&c->paths, c->pos[0], ctl_request("ifaddr"), 10000, &reply, &c->err);
    if (r < 0)
        return r;
    if (!json_object_object_get_ex(reply, "nics", &nics)) {
        json_object_put(reply);
        return qv_fail(&c->err, -EIO, "%s: the supervisor sent no addresses", c->pos[0]);
    }
    if (c->json) {
        cli_print_json(nics);
    } else {
        printf("%-6s %-17s %-8s %-14s %-15s %s\n", "NIC", "MAC", "TYPE", "SOURCE", "TAP", "IPV4");
        for (size_t i = 0; i < json_object_array_length(nics); i++) {
            json_object *o = json_object_array_get_idx(nics, i), *v;
            const char *f[6] = {"-", "-", "-", "-", "-", "-"};
            static const char *const keys[] = {"nic", "mac", "type", "source", "tap", "ipv4"};
            for (int k = 0; k < 6; k++)
                if (json_object_object_get_ex(o, keys[k], &v))
                    f[k] = json_object_get_string(v);
            printf("%-6s %-17s %-8s %-14s %-15s %s\n", f[0], f[1], f[2], f[3], f[4], f[5]);
        }
    }
    json_object_put(reply);
    return 0;
}

/* cdroms[index] of the definition: by id (cdrom0) or the file it holds; a disk's
 * name is told apart. -ENOENT when none. */
static int definition_cdrom(struct cli *c, const struct vm_def *d, const char *key, size_t *out)
{
    for (size_t i = 0; i < d->ncdroms; i++) {
        char id[24];
        snprintf(id, sizeof(id), "cdrom%zu", i);
        if (strcmp(id, key) == 0 || (d->cdroms[i].file && strcmp(d->cdroms[i].file, key) == 0)) {
            *out = i;
            return 0;
        }
    }
    for (size_t i = 0; i < d->ndisks; i++) {
        char id[24];
        snprintf(id, sizeof(id), "disk%zu", i);
        const struct vm_disk *k = &d->disks[i];
        if (strcmp(id, key) == 0 || (k->file && strcmp(k->file, key) == 0) || (k->volume && strcmp(k->volume, key) == 0))
            return qv_fail(&c->err, -EINVAL, "%s: %s is a disk, not a CD-ROM (change-media swaps a CD-ROM's medium; "
                           "attach-disk/detach-disk change disks)", d->name, key);
    }
    if (!d->ncdroms)
        return qv_fail(&c->err, -ENOENT, "%s: no CD-ROM %s: the VM has no CD-ROM drive (add one to the definition, "
                       "e.g. define --cdrom empty)", d->name, key);
    return qv_fail(&c->err, -ENOENT, "%s: no CD-ROM %s (a drive id such as cdrom0, or the file it holds)", d->name, key);
}

/* Sets (file NULL: empties) cdroms[index] of the definition, written atomically. */
static int definition_set_medium(struct cli *c, const struct vm_def *d, size_t index, const char *file)
{
    _cleanup_json_ json_object *o = vm_def_to_json(d);
    json_object *arr, *item;
    if (!json_object_object_get_ex(o, "cdroms", &arr) || index >= json_object_array_length(arr))
        return qv_fail(&c->err, -ENOENT, "%s: the definition has no cdrom%zu", d->name, index);
    item = json_object_array_get_idx(arr, index);
    if (file)
        json_object_object_add(item, "file", json_object_new_string(file));
    else
        json_object_object_del(item, "file");
    _cleanup_vm_def_ struct vm_def out = {0};
    return vm_define(&c->paths, o, true, &out, &c->err);
}

/* change-media NAME DEV FILE|--eject [--config]: virsh's. A running VM's drive
 * changes now (--config: its definition too); a VM that is not running has its
 * definition changed. */
int cmd_change_media(struct cli *c)
{
    const char *name = c->pos[0], *dev = c->pos[1];
    bool eject = cli_flag(c, "eject"), config = cli_flag(c, "config") || cli_flag(c, "persistent");
    if ((c->npos == 3) == eject)
        return qv_fail(&c->err, -EINVAL, "change-media %s %s: a FILE or --eject, one of them", name, dev);
    char file[PATH_MAX] = "";
    if (!eject) {
        /* the supervisor opens it, from another directory: an absolute path, checked here too */
        if (!realpath(c->pos[2], file))
            return qv_failerr(&c->err, errno == ENOENT ? -ENOENT : -errno, "%s: change-media %s: %s", name, dev,
                              c->pos[2]);
        struct qv_err oe = {0};
        int fd = storage_open_image(file, O_RDONLY, &oe);
        if (fd < 0)
            return qv_fail(&c->err, fd, "%s: change-media %s: %s", name, dev, oe.msg);
        close(fd);
    }
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, name, &d, &c->err);
    if (r < 0)
        return r;
    bool live = running(c, name);
    size_t index = 0;
    if (live) {
        json_object *req = ctl_request("change-media");
        json_object_object_add(req, "target", json_object_new_string(dev));
        if (!eject)
            json_object_object_add(req, "file", json_object_new_string(file));
        _cleanup_json_ json_object *reply = NULL;
        if ((r = ctl_call(&c->paths, name, req, 60000, &reply, &c->err)) < 0)
            return r;
        json_object *v;
        /* DEV may have named the live medium: the definition is changed by drive */
        if (json_object_object_get_ex(reply, "cdrom", &v) && sscanf(json_object_get_string(v), "cdrom%zu", &index) != 1)
            return qv_fail(&c->err, -EIO, "%s: the supervisor named no drive", name);
    } else if ((r = definition_cdrom(c, &d, dev, &index)) < 0) {
        return r;
    }
    if ((!live || config) && (r = definition_set_medium(c, &d, index, eject ? NULL : file)) < 0)
        return live ? qv_prefix(&c->err, "%s: cdrom%zu changed, but the definition did not: ", name, index) : r;
    if (c->quiet)
        return 0;
    const char *where = !live ? " (in the definition: the VM is not running)" : config ? " (and in the definition)" : "";
    if (eject)
        printf("%s: cdrom%zu ejected%s\n", name, index, where);
    else
        printf("%s: cdrom%zu now holds %s%s\n", name, index, file, where);
    return 0;
}

/* ---- attach-device, detach-device: host devices ("hostdevs" entries) ---- */

/* The device from FILE (a JSON object as in "hostdevs") or from --pci ADDR / --usb
 * VENDOR:PRODUCT|BUS.DEVICE; parsed (but not fitted to the VM) into hd. */
static json_object *hostdev_arg(struct cli *c, const char *verb, struct vm_hostdev *hd)
{
    const char *pci = cli_opt(c, "pci"), *usb = cli_opt(c, "usb");
    int given = (c->npos == 2) + (pci != NULL) + (usb != NULL);
    if (given != 1) {
        qv_fail(&c->err, -EINVAL, "%s %s: a device FILE (JSON, as a \"hostdevs\" entry), --pci ADDRESS or --usb "
                "VENDOR:PRODUCT|BUS.DEVICE, one of them", verb, c->pos[0]);
        return NULL;
    }
    json_object *o = NULL;
    if (c->npos == 2) {
        if (json_read_file(c->pos[1], &o, &c->err) < 0) {
            qv_prefix(&c->err, "%s %s: ", verb, c->pos[0]);
            return NULL;
        }
    } else if (pci) {
        o = json_object_new_object();
        json_object_object_add(o, "type", json_object_new_string("pci"));
        json_object_object_add(o, "address", json_object_new_string(pci));
    } else {
        o = json_object_new_object();
        json_object_object_add(o, "type", json_object_new_string("usb"));
        char a[16], b[16], sep;
        int n = 0;
        if (sscanf(usb, "%15[0-9a-fA-Fx]%c%15[0-9a-fA-Fx]%n", a, &sep, b, &n) == 3 && (size_t)n == strlen(usb) &&
            (sep == ':' || sep == '.')) {
            if (sep == ':') {
                json_object_object_add(o, "vendor", json_object_new_string(a));
                json_object_object_add(o, "product", json_object_new_string(b));
            } else {
                json_object_object_add(o, "bus", json_object_new_int(atoi(a)));
                json_object_object_add(o, "device", json_object_new_int(atoi(b)));
            }
        } else {
            json_object_put(o);
            qv_fail(&c->err, -EINVAL, "%s %s: --usb \"%s\" is neither VENDOR:PRODUCT (046d:c52b) nor BUS.DEVICE "
                    "(1.3), as lsusb prints them", verb, c->pos[0], usb);
            return NULL;
        }
    }
    if (vm_hostdev_from_json(o, NULL, hd, &c->err) < 0) {
        json_object_put(o);
        qv_prefix(&c->err, "%s %s: ", verb, c->pos[0]);
        return NULL;
    }
    return o;
}

static int hostdev_verb(struct cli *c, bool attach_it)
{
    const char *verb = attach_it ? "attach-device" : "detach-device", *name = c->pos[0];
    bool persistent = cli_flag(c, "persistent"), config = cli_flag(c, "config");
    struct vm_hostdev hd;
    _cleanup_json_ json_object *dev = hostdev_arg(c, verb, &hd);
    if (!dev)
        return c->err.code;
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, name, &d, &c->err);
    if (r < 0)
        return r;
    char devname[48];
    vm_hostdev_name(&hd, devname, sizeof(devname));
    bool live = !config && running(c, name), define = persistent || config, kept = false;
    if (!live && !define)
        return qv_fail(&c->err, -EBUSY, "%s is not running (--config or --persistent changes its definition)", name);
    /* bad input changes nothing: the new definition is checked before the VM changes */
    struct def_match same = {.hostdev = &hd};
    const struct def_match *remove = attach_it ? NULL : &same;
    if (define && (r = change_definition(c, name, verb, "hostdevs", dev, remove, false)) < 0)
        return r;
    _cleanup_json_ json_object *reply = NULL;
    if (live) {
        json_object *req = ctl_request(verb);
        if (attach_it)
            json_object_object_add(req, "device", json_object_get(dev));
        else
            json_object_object_add(req, "target", json_object_new_string(devname));
        r = ctl_call(&c->paths, name, req, 60000, &reply, &c->err);
        /* a device of the definition itself was not hotplugged: --persistent removes it
         * from the definition, and the running QEMU keeps it until it stops */
        if (r == -ENOENT && !attach_it && define)
            live = kept = true;
        else if (r < 0)
            return r;
    }
    if (define && (r = change_definition(c, name, verb, "hostdevs", dev, remove, true)) < 0)
        return live ? qv_prefix(&c->err, "%s, but the definition did not change: ", attach_it ? "attached" : "detached")
                    : r;
    if (c->quiet)
        return 0;
    json_object *v;
    const char *id = reply && json_object_object_get_ex(reply, "id", &v) ? json_object_get_string(v) : NULL;
    if (attach_it)
        printf("host device %s %s%s%s%s\n", devname, live ? "attached" : "added to the definition", id ? " as " : "",
               id ? id : "", live && define ? " (and defined)" : "");
    else if (kept)
        printf("host device %s removed from the definition (the running VM keeps it until it stops)\n", devname);
    else
        printf("host device %s %s%s\n", devname, live ? "detached" : "removed from the definition",
               live && define ? " (and removed from the definition)" : "");
    return 0;
}

int cmd_attach_device(struct cli *c)
{
    return hostdev_verb(c, true);
}

int cmd_detach_device(struct cli *c)
{
    return hostdev_verb(c, false);
}
