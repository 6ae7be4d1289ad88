/* libFuzzer: bytes a ctl.sock client sends, framed into lines as the supervisor
 * frames them, each through ctl_parse_request (size, NUL, JSON, type check).
 * A request that passes must carry every field the dispatcher reads, with the
 * type it reads it as: that is what kept {"cmd": null} from crashing it. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/supervisor/internal.h"

static void need(json_object *req, const char *key, json_type t)
{
    json_object *v;
    if (!json_object_object_get_ex(req, key, &v) || !json_object_is_type(v, t))
        abort();
}

static void check_passed(json_object *req)
{
    need(req, "cmd", json_type_string);
    const char *cmd = json_object_get_string(json_object_object_get(req, "cmd"));
    if (strcmp(cmd, "detach-disk") == 0 || strcmp(cmd, "detach-nic") == 0)
        need(req, "target", json_type_string);
    else if (strcmp(cmd, "attach-disk") == 0 || strcmp(cmd, "attach-nic") == 0)
        need(req, "device", json_type_object);
    else if (strcmp(cmd, "qmp") == 0)
        need(req, "execute", json_type_string);
    else if (strcmp(cmd, "hmp") == 0)
        need(req, "command", json_type_string);
    json_object *v;
    /* only the commands that read it (an unknown command is answered as such) */
    bool reads_timeout = strcmp(cmd, "stop") == 0 || strcmp(cmd, "qmp") == 0;
    if (reads_timeout && json_object_object_get_ex(req, "timeout_ms", &v) &&
        (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        json_object *req = NULL;
        struct qv_err e = {0};
        int r = ctl_parse_request(p, len, &req, &e);
        if (r == 0)
            check_passed(req);
        else if (r != -EINVAL && r != -E2BIG)
            abort();
        else if (!e.msg[0])
            abort();    /* every refusal says why */
        json_object_put(req);
        p += len + (nl ? 1 : 0);
    }
    return 0;
}
