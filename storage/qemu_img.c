/* qemu-img as a child program: argv and execve, bounded in time, killed with its
 * caller. Its stdout is the answer, its stderr the explanation of a failure. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* ---- convert: streamed progress, cancellable ---------------------------------------- */
static void progress_feed(struct buf *b, const struct storage_progress *prog)
{
    /* "    (45.00/100%)\r" per step */
    char *close;
    while ((close = memchr(b->p, '%', b->len))) {
        size_t upto = (size_t)(close - b->p) + 1;
        char *open = NULL;
        for (char *q = close; q >= b->p; q--)
            if (*q == '(') {
                open = q;
                break;
            }
        double pct;
        if (open && sscanf(open, "(%lf/100%%)", &pct) == 1 && prog->fn)
            prog->fn(prog->opaque, pct);
        buf_consume(b, upto);
    }
    if (b->len > 4096)
        buf_consume(b, b->len);
}

static void on_convert_output(struct buf *b, void *opaque)
{
    progress_feed(b, opaque);
}

static int run_convert(const char *const *argv, const struct storage_progress *prog, struct qv_err *e)
{
    struct run_watch w = {.cancel = prog ? prog->cancel : NULL, .on_stdout = prog ? on_convert_output : NULL,
                          .opaque = (void *)prog, .child_ignores_sigint = true};
    _cleanup_free_ char *out = NULL, *msg = NULL;
    int r = run_program_watched(argv, 0, &w, &out, &msg);
    if (r == -ECANCELED)
        return qv_fail(e, -ECANCELED, "qemu-img convert: interrupted");
    if (r == -ENOENT)
        return qv_fail(e, r, "%s: not found (install qemu-utils)", argv[0]);
    if (r < 0)
        return qv_failerr(e, r, "qemu-img convert");
    if (r == 0)
        return 0;
    size_t len = strlen(msg);
    while (len && (msg[len - 1] == '\n' || msg[len - 1] == '\r'))
        msg[--len] = '\0';
    const char *m = str_startswith(msg, "qemu-img: ") ? msg + 10 : msg;
    if (r > 128)
        return qv_fail(e, -EINTR, "qemu-img convert: killed by signal %d", r - 128);
    return qv_fail(e, -EIO, "qemu-img convert: %s", *m ? m : "failed without a message");
}

void storage_img_file(struct storage_img *out, const char *path, enum storage_format format)
{
    *out = (struct storage_img){.format = format};
    snprintf(out->name, sizeof(out->name), "%s", path);
}

/* A plain local name for qemu-img: "./x:y" is a file, "x:y" a protocol. */
static int img_arg(const struct storage_img *img, char *out, size_t outlen, struct qv_err *e)
{
    if (img->network)
        return snprintf(out, outlen, "%s", img->name) >= (int)outlen ? qv_fail(e, -ENAMETOOLONG, "image name too long")
                                                                    : 0;
    if (snprintf(out, outlen, "%s%s", img->name[0] == '/' ? "" : "./", img->name) >= (int)outlen)
        return qv_fail(e, -ENAMETOOLONG, "%s: path too long", img->name);
    return 0;
}

int storage_img_size(const struct storage_img *img, uint64_t *out, struct qv_err *e)
{
    if (img->size) {
        *out = img->size;
        return 0;
    }
    char name[sizeof(img->name) + 2], obj[sizeof(img->object)];
    int r = img_arg(img, name, sizeof(name), e);
    if (r < 0)
        return r;
    const char *args[12];
    size_t n = 0;
    args[n++] = "info";
    args[n++] = "--output=json";
    args[n++] = "-U";
    if (img->object[0]) {
        snprintf(obj, sizeof(obj), "%s", img->object);
        args[n++] = "--object";
        args[n++] = obj;
    }
    if (img->format != STORAGE_FORMAT_PROBE) {
        args[n++] = "-f";
        args[n++] = storage_format_name(img->format);
    }
    args[n++] = "--";
    args[n++] = name;
    args[n] = NULL;
    _cleanup_free_ char *json = NULL;
    struct storage_image_info ii;
    if ((r = storage_qemu_img(args, 60000, &json, e)) < 0 || (r = storage_image_info_parse(json, &ii, e)) < 0)
        return r;
    *out = ii.virtual_size;
    return 0;
}

int storage_convert(const struct storage_img *src, const struct storage_img *dst, bool dst_exists,
                    const struct storage_progress *prog, struct qv_err *e)
{
    char s[sizeof(src->name) + 2], d[sizeof(dst->name) + 2], so[sizeof(src->object) + 8], dobj[sizeof(dst->object) + 8];
    int r;
    if ((r = img_arg(src, s, sizeof(s), e)) < 0 || (r = img_arg(dst, d, sizeof(d), e)) < 0)
        return r;
    if (dst->format == STORAGE_FORMAT_PROBE)
        return qv_fail(e, -EINVAL, "qemu-img convert: no target format");
    const char *bin = getenv("QVISOR_QEMU_IMG");
    const char *argv[24];
    size_t n = 0;
    argv[n++] = bin && *bin ? bin : "qemu-img";
    argv[n++] = "convert";
    argv[n++] = prog && prog->fn ? "-p" : "-q";
    if (src->object[0]) {
        snprintf(so, sizeof(so), "%s", src->object);
        argv[n++] = "--object";
        argv[n++] = so;
    }
    if (dst->object[0] && strcmp(dst->object, src->object) != 0) {
        snprintf(dobj, sizeof(dobj), "%s", dst->object);
        argv[n++] = "--object";
        argv[n++] = dobj;
    }
    if (src->format != STORAGE_FORMAT_PROBE) {
        argv[n++] = "-f";
        argv[n++] = storage_format_name(src->format);
    }
    argv[n++] = "-O";
    argv[n++] = storage_format_name(dst->format);
    if (dst_exists)
        argv[n++] = "-n";
    argv[n++] = "--";
    argv[n++] = s;
    argv[n++] = d;
    argv[n] = NULL;
    return run_convert(argv, prog, e);
}
