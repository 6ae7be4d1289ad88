/* setmem, setvcpus and display: a running VM's balloon target, vCPU count and VNC
 * address, through its supervisor (virsh setmem --live, setvcpus --live, domdisplay);
 * setvcpus --config changes the definition's cpu.count (with --live both). */
#include <stdlib.h>
#include <string.h>

#include "launcher/cli/cli.h"

int cmd_setmem(struct cli *c)
{
    json_object *req = ctl_request("setmem");
    json_object_object_add(req, "size", json_object_new_string(c->pos[1]));
    _cleanup_json_ json_object *reply = NULL;
    int r = ctl_call(&c->paths, c->pos[0], req, 10000, &reply, &c->err);
    if (r < 0)
        return r;
    json_object *v;
    char target[32] = "?";
    if (json_object_object_get_ex(reply, "target", &v))
        format_size((uint64_t)json_object_get_int64(v), target, sizeof(target));
    if (c->json)
        cli_print_json(reply);
    else if (!c->quiet)
        printf("%s: balloon target %s (the guest gives memory back as its balloon driver inflates; "
               "qvisor stats shows the actual size)\n", c->pos[0], target);
    return 0;
}

/* setvcpus --config: the definition's cpu.count, checked as a whole definition (a
 * pinning list per vCPU, NUMA nodes, cpu.max) before it is written atomically; with
 * `write` false only checked. */
static int setvcpus_config(struct cli *c, long n, bool write)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *o = vm_def_to_json(&d);
    json_object *cpu;
    if (!json_object_object_get_ex(o, "cpu", &cpu)) {
        cpu = json_object_new_object();
        json_object_object_add(o, "cpu", cpu);
    }
    json_object_object_add(cpu, "count", json_object_new_int((int)n));
    _cleanup_vm_def_ struct vm_def out = {0};
    r = write ? vm_define(&c->paths, o, true, &out, &c->err) : vm_def_from_json(o, &out, &c->err);
    return r < 0 ? qv_prefix(&c->err, "%s: setvcpus %ld --config: ", c->pos[0], n) : 0;
}

int cmd_setvcpus(struct cli *c)
{
    char *end;
    long n = strtol(c->pos[1], &end, 10);
    if (*c->pos[1] == '\0' || *end || n < 1 || n > 4096)
        return qv_fail(&c->err, -EINVAL, "%s: setvcpus: \"%s\" is not a vCPU count (1 or more)", c->pos[0], c->pos[1]);
    bool config = cli_flag(c, "config"), live = cli_flag(c, "live") || !config;
    int r;
    if (config && (r = setvcpus_config(c, n, !live)) < 0)
        return r;
    if (!live) {
        if (!c->quiet)
            printf("%s: %ld vCPUs from its next start (the definition changed)\n", c->pos[0], n);
        return 0;
    }
    json_object *req = ctl_request("setvcpus");
    json_object_object_add(req, "count", json_object_new_int((int)n));
    _cleanup_json_ json_object *reply = NULL;
    r = ctl_call(&c->paths, c->pos[0], req, 70000, &reply, &c->err);
    if (r < 0)
        return r;
    if (config && (r = setvcpus_config(c, n, true)) < 0)
        return qv_prefix(&c->err, "changed live, but not in the definition: ");
    json_object *v;
    int was = json_object_object_get_ex(reply, "was", &v) ? json_object_get_int(v) : -1;
    bool removing = json_object_object_get_ex(reply, "removing", &v) && json_object_get_boolean(v);
    if (c->json)
        cli_print_json(reply);
    else if (c->quiet)
        ;
    else if (was == (int)n)
        printf("%s: already has %ld vCPUs\n", c->pos[0], n);
    else if (removing)
        printf("%s: unplugging %d vCPUs (%d -> %ld); they go once the guest releases them\n", c->pos[0],
               was - (int)n, was, n);
    else
        printf("%s: %ld vCPUs (was %d); a guest without udev onlines new ones through "
               "/sys/devices/system/cpu/cpuN/online\n", c->pos[0], n, was);
    if (config && !c->quiet && !c->json)
        printf("%s: and %ld vCPUs from its next start (the definition changed)\n", c->pos[0], n);
    return 0;
}

int cmd_display(struct cli *c)
{
    /* a VM without graphics has no display whether it runs or not */
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    if (d.graphics.kind != GRAPHICS_VNC)
        return qv_fail(&c->err, -ENOENT, "%s has no display (graphics: none; set \"graphics\": {\"type\": \"vnc\"})",
                       c->pos[0]);
    _cleanup_json_ json_object *reply = NULL;
    r = ctl_call(&c->paths, c->pos[0], ctl_request("display"), 10000, &reply, &c->err);
    if (r < 0)
        return r;
    json_object *v;
    if (c->json)
        cli_print_json(reply);
    else
        printf("%s\n", json_object_object_get_ex(reply, "uri", &v) ? json_object_get_string(v) : "");
    return 0;
}
