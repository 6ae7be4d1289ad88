/* setmem, setvcpus and display: a running VM's balloon target, vCPU count and VNC
 * address, through its supervisor (virsh setmem --live, setvcpus --live, domdisplay). */
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

int cmd_setvcpus(struct cli *c)
{
    char *end;
    long n = strtol(c->pos[1], &end, 10);
    if (*c->pos[1] == '\0' || *end || n < 1 || n > 4096)
        return qv_fail(&c->err, -EINVAL, "%s: setvcpus: \"%s\" is not a vCPU count (1 or more)", c->pos[0], c->pos[1]);
    json_object *req = ctl_request("setvcpus");
    json_object_object_add(req, "count", json_object_new_int((int)n));
    _cleanup_json_ json_object *reply = NULL;
    int r = ctl_call(&c->paths, c->pos[0], req, 70000, &reply, &c->err);
    if (r < 0)
        return r;
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
