/* What a ctl.sock request may carry: one table of commands and their fields with
 * types, checked before anything reads a field (a pure function, fuzzed by
 * tests/fuzz/fuzz_ctl.c). */
#include <limits.h>
#include <string.h>

#include "launcher/supervisor/internal.h"

enum field_type { F_STRING, F_BOOL, F_INT, F_OBJECT };
static const char *const field_type_names[] = {"a string", "true or false", "an integer", "an object"};

struct field {
    const char *name;
    enum field_type type;
    bool required;
};

struct request_kind {
    const char *cmd;
    struct field fields[12];
};

static const struct request_kind request_kinds[] = {
    {"status", {{0}}},
    {"stop", {{"force", F_BOOL, false}, {"timeout_ms", F_INT, false}, {"mode", F_STRING, false}}},
    {"kill", {{0}}},
    {"pause", {{0}}},
    {"resume", {{0}}},
    {"reset", {{0}}},
    {"reboot", {{"mode", F_STRING, false}}},
    {"agent", {{"execute", F_STRING, true}, {"arguments", F_OBJECT, false}, {"timeout_ms", F_INT, false}}},
    {"exec", {{"spec", F_OBJECT, true}}},
    {"exec-input", {{"data", F_STRING, true}}},
    {"qmp", {{"execute", F_STRING, true}, {"arguments", F_OBJECT, false}, {"timeout_ms", F_INT, false}}},
    {"hmp", {{"command", F_STRING, true}}},
    {"attach-disk", {{"device", F_OBJECT, true}, {"volume", F_STRING, false}}},
    {"attach-nic", {{"device", F_OBJECT, true}}},
    {"attach-device", {{"device", F_OBJECT, true}}},
    {"detach-device", {{"target", F_STRING, true}}},
    {"detach-disk", {{"target", F_STRING, true}}},
    {"detach-nic", {{"target", F_STRING, true}}},
    {"ifaddr", {{0}}},
    {"filter-reload", {{"filter", F_STRING, true}}},
    {"disk-resize", {{"target", F_STRING, true}, {"size", F_STRING, true}, {"allow_shrink", F_BOOL, false}}},
    {"blkstat", {{"target", F_STRING, false}}},
    {"stats", {{0}}},
    {"setmem", {{"size", F_STRING, true}}},
    {"setvcpus", {{"count", F_INT, true}}},
    {"display", {{0}}},
    {"block", {{"op", F_STRING, true}, {"target", F_STRING, true}, {"options", F_OBJECT, false}}},
    {"snapshot-create", {{"name", F_STRING, true}, {"disk_only", F_BOOL, false}, {"quiesce", F_BOOL, false},
                         {"description", F_STRING, false}}},
    {"snapshot-revert", {{"name", F_STRING, true}, {"then", F_STRING, false}}},
    {"snapshot-delete", {{"name", F_STRING, true}, {"bandwidth", F_STRING, false}}},
    {"change-media", {{"target", F_STRING, true}, {"file", F_STRING, false}}},
    {"save", {{"file", F_STRING, true}, {"bypass_cache", F_BOOL, false}, {"managed", F_BOOL, false}}},
    {"migrate-abort", {{0}}},
    {"migrate", {{"address", F_STRING, true}, {"bandwidth_mib", F_INT, false}, {"max_downtime_ms", F_INT, false},
                 {"auto_converge", F_BOOL, false}, {"copy_storage", F_BOOL, false}, {"tls_dir", F_STRING, false},
                 {"tls_hostname", F_STRING, false}, {"token", F_STRING, false}, {"persistent", F_BOOL, false},
                 {"postcopy", F_BOOL, false}, {"postcopy_bandwidth_mib", F_INT, false},
                 {"unsafe", F_BOOL, false}}},
    {"events", {{0}}},
    {"console", {{"replay", F_BOOL, false}}},
};

static bool field_has_type(json_object *v, enum field_type t)
{
    switch (t) {
    case F_STRING:
        return json_object_is_type(v, json_type_string);
    case F_BOOL:
        return json_object_is_type(v, json_type_boolean);
    case F_INT:
        /* milliseconds: a non-negative int; 1e3 or "5" are not */
        return json_object_is_type(v, json_type_int) && json_object_get_int64(v) >= 0 &&
               json_object_get_int64(v) <= INT_MAX;
    case F_OBJECT:
        return json_object_is_type(v, json_type_object);
    }
    return false;
}

int ctl_request_check(json_object *req, struct qv_err *e)
{
    json_object *cmdv;
    if (!json_object_is_type(req, json_type_object))
        return qv_fail(e, -EINVAL, "a request is a JSON object with \"cmd\", not %s",
                       json_type_to_name(json_object_get_type(req)));
    if (!json_object_object_get_ex(req, "cmd", &cmdv))
        return qv_fail(e, -EINVAL, "request: \"cmd\" is missing (a string: status, stop, qmp, ...)");
    if (!json_object_is_type(cmdv, json_type_string))
        return qv_fail(e, -EINVAL, "request: \"cmd\" must be a string, not %s",
                       json_type_to_name(json_object_get_type(cmdv)));
    const char *cmd = json_object_get_string(cmdv);
    for (size_t i = 0; i < ARRAY_SIZE(request_kinds); i++) {
        const struct request_kind *k = &request_kinds[i];
        if (strcmp(k->cmd, cmd) != 0)
            continue;
        for (size_t f = 0; f < ARRAY_SIZE(k->fields) && k->fields[f].name; f++) {
            const struct field *fd = &k->fields[f];
            json_object *v;
            if (!json_object_object_get_ex(req, fd->name, &v)) {
                if (fd->required)
                    return qv_fail(e, -EINVAL, "%s: \"%s\" is missing (%s)", cmd, fd->name,
                                   field_type_names[fd->type]);
                continue;
            }
            if (!field_has_type(v, fd->type))
                return qv_fail(e, -EINVAL, "%s: \"%s\" must be %s%s, not %s", cmd, fd->name,
                               field_type_names[fd->type], fd->type == F_INT ? " from 0 to 2147483647" : "",
                               json_type_to_name(json_object_get_type(v)));
        }
        return 0;
    }
    /* a cmd the table does not know is answered "unknown request" by the dispatcher */
    return 0;
}

const char *ctl_request_kind(size_t i)
{
    return i < ARRAY_SIZE(request_kinds) ? request_kinds[i].cmd : NULL;
}

int ctl_parse_request(const char *line, size_t len, json_object **req, struct qv_err *e)
{
    *req = NULL;
    if (len > CTL_REQUEST_MAX)
        return qv_fail(e, -E2BIG, "request longer than %u KiB", CTL_REQUEST_MAX >> 10);
    /* json-c stops at a NUL: what follows it would be silently ignored */
    if (memchr(line, '\0', len))
        return qv_fail(e, -EINVAL, "a request must not contain a NUL byte");
    _cleanup_free_ char *text = qv_xmalloc(len + 1);
    memcpy(text, line, len);
    text[len] = '\0';
    json_object *o = NULL;
    int r = json_parse_str("request", text, &o, e);
    if (r == 0)
        r = ctl_request_check(o, e);
    if (r < 0) {
        json_object_put(o);
        return r;
    }
    *req = o;
    return 0;
}

/* Only after ctl_request_check: the types are known to be right. */
