/* qemu-img as a child program: argv and execve, bounded in time, killed with its
 * caller. Its stdout is the answer, its stderr the explanation of a failure. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "storage/storage.h"

#define ARGS_MAX 32

int storage_qemu_img(const char *const *args, int timeout_ms, char **out, struct qv_err *e)
{
    const char *argv[ARGS_MAX + 2];
    const char *bin = getenv("QVISOR_QEMU_IMG");
    argv[0] = bin && *bin ? bin : "qemu-img";
    size_t n = 0;
    for (; args[n]; n++) {
        if (n >= ARGS_MAX)
            return qv_fail(e, -E2BIG, "qemu-img: more than %d arguments", ARGS_MAX);
        argv[n + 1] = args[n];
    }
    argv[n + 1] = NULL;
    _cleanup_free_ char *o = NULL, *err = NULL;
    int r = run_program_split(argv, timeout_ms, &o, &err);
    if (r == -ENOENT)
        return qv_fail(e, r, "%s: not found (install qemu-utils)", argv[0]);
    if (r == -ETIMEDOUT)
        return qv_fail(e, r, "qemu-img %s: no answer within %d ms", args[0] ? args[0] : "", timeout_ms);
    if (r < 0)
        return qv_failerr(e, r, "qemu-img %s", args[0] ? args[0] : "");
    if (r != 0) {
        size_t len = strlen(err);
        while (len && (err[len - 1] == '\n' || err[len - 1] == '\r'))
            err[--len] = '\0';
        /* "qemu-img: Could not open '/x': ..." already names the tool */
        const char *msg = str_startswith(err, "qemu-img: ") ? err + 10 : err;
        return qv_fail(e, -EIO, "qemu-img %s: %s", args[0] ? args[0] : "", *msg ? msg : "failed without a message");
    }
    if (out)
        *out = qv_steal_ptr(&o);
    return 0;
}

static int get_u64(json_object *o, const char *key, uint64_t *out)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0)
        return -EINVAL;
    *out = (uint64_t)json_object_get_int64(v);
    return 0;
}

static int get_str(json_object *o, const char *key, char *out, size_t outlen)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_string))
        return -EINVAL;
    return snprintf(out, outlen, "%s", json_object_get_string(v)) >= (int)outlen ? -ENAMETOOLONG : 0;
}

int storage_image_info_parse(const char *json, struct storage_image_info *out, struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    _cleanup_json_ json_object *o = NULL;
    int r = json_parse_str("qemu-img info", json, &o, e);
    if (r < 0)
        return r;
    if (!json_object_is_type(o, json_type_object))
        return qv_fail(e, -EINVAL, "qemu-img info: not a JSON object");
    char format[32] = "";
    json_object *v;
    if ((r = get_str(o, "format", format, sizeof(format))) < 0 || !format[0])
        return qv_fail(e, -EINVAL, "qemu-img info: no \"format\"");
    if (storage_format_parse(format, &out->format) < 0)
        return qv_fail(e, -ENOTSUP, "qemu-img info: format \"%s\" is not supported (raw or qcow2)", format);
    if (!json_object_object_get_ex(o, "virtual-size", &v))
        return qv_fail(e, -EINVAL, "qemu-img info: no \"virtual-size\"");
    if ((r = get_u64(o, "virtual-size", &out->virtual_size)) < 0 ||
        (r = get_u64(o, "actual-size", &out->actual_size)) < 0 ||
        (r = get_u64(o, "cluster-size", &out->cluster_size)) < 0)
        return qv_fail(e, -EINVAL, "qemu-img info: a size is not a non-negative integer");
    if ((r = get_str(o, "backing-filename", out->backing, sizeof(out->backing))) < 0 ||
        (r = get_str(o, "backing-filename-format", out->backing_format, sizeof(out->backing_format))) < 0)
        return qv_fail(e, -EINVAL, "qemu-img info: bad backing file entry");
    if (json_object_object_get_ex(o, "dirty-flag", &v))
        out->dirty = json_object_get_boolean(v);
    return 0;
}

int storage_image_info(const char *path, enum storage_format format, int timeout_ms, struct storage_image_info *out,
                       struct qv_err *e)
{
    /* a name like "nbd:x" would be opened as a protocol: only plain local paths go in */
    char arg[PATH_MAX + 2];
    if (snprintf(arg, sizeof(arg), "%s%s", path[0] == '/' ? "" : "./", path) >= (int)sizeof(arg))
        return qv_fail(e, -ENAMETOOLONG, "%s: path too long", path);
    const char *args[12];
    size_t n = 0;
    args[n++] = "info";
    args[n++] = "--output=json";
    args[n++] = "-U";
    if (format != STORAGE_FORMAT_PROBE) {
        if (!storage_format_name(format))
            return qv_fail(e, -EINVAL, "%s: unknown format %d", path, (int)format);
        args[n++] = "-f";
        args[n++] = storage_format_name(format);
    }
    args[n++] = "--";
    args[n++] = arg;
    args[n] = NULL;
    _cleanup_free_ char *json = NULL;
    int r = storage_qemu_img(args, timeout_ms, &json, e);
    if (r < 0)
        return qv_prefix(e, "%s: ", path);
    if ((r = storage_image_info_parse(json, out, e)) < 0)
        return qv_prefix(e, "%s: ", path);
    return 0;
}
