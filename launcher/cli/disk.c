/* disk-resize and blkstat: a running VM's disks, through its supervisor. */
#include <string.h>

#include "launcher/cli/cli.h"

int cmd_disk_resize(struct cli *c)
{
    json_object *req = ctl_request("disk-resize");
    json_object_object_add(req, "target", json_object_new_string(c->pos[1]));
    json_object_object_add(req, "size", json_object_new_string(c->pos[2]));
    if (cli_flag(c, "allow-shrink"))
        json_object_object_add(req, "allow_shrink", json_object_new_boolean(true));
    _cleanup_json_ json_object *reply = NULL;
    int r = ctl_call(&c->paths, c->pos[0], req, 60000, &reply, &c->err);
    if (r < 0)
        return r;
    json_object *v;
    char size[32] = "?";
    if (json_object_object_get_ex(reply, "size", &v))
        format_size((uint64_t)json_object_get_int64(v), size, sizeof(size));
    if (c->json)
        cli_print_json(reply);
    else if (!c->quiet)
        printf("%s: %s is now %s\n", c->pos[0], json_object_object_get_ex(reply, "disk", &v) ? json_object_get_string(v)
                                                                                            : c->pos[1], size);
    return 0;
}

int cmd_blkstat(struct cli *c)
{
    json_object *req = ctl_request("blkstat");
    if (c->npos > 1)
        json_object_object_add(req, "target", json_object_new_string(c->pos[1]));
    _cleanup_json_ json_object *reply = NULL;
    int r = ctl_call(&c->paths, c->pos[0], req, 10000, &reply, &c->err);
    if (r < 0)
        return r;
    json_object *disks;
    if (!json_object_object_get_ex(reply, "disks", &disks) || !json_object_is_type(disks, json_type_array))
        return qv_fail(&c->err, -EIO, "%s: the supervisor sent no statistics", c->pos[0]);
    if (c->json) {
        cli_print_json(disks);
        return 0;
    }
    static const char *const keys[] = {"rd_reqs", "rd_bytes", "wr_reqs", "wr_bytes", "flush_reqs"};
    printf("%-8s %10s %14s %10s %14s %10s  %s\n", "DISK", "RD_REQS", "RD_BYTES", "WR_REQS", "WR_BYTES", "FLUSHES",
           "FILE");
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *o = json_object_array_get_idx(disks, i), *v;
        printf("%-8s", json_object_object_get_ex(o, "disk", &v) ? json_object_get_string(v) : "?");
        for (size_t k = 0; k < ARRAY_SIZE(keys); k++)
            printf(" %*lld", k % 2 ? 14 : 10,
                   json_object_object_get_ex(o, keys[k], &v) ? (long long)json_object_get_int64(v) : 0LL);
        printf("  %s\n", json_object_object_get_ex(o, "file", &v) ? json_object_get_string(v) : "");
    }
    return 0;
}
