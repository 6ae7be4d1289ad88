/* Snapshots of disk images: their metadata records (one JSON file per snapshot in a
 * directory the caller owns, written atomically, plus a file naming the current one),
 * and the qemu-img work on images that no QEMU has open: internal snapshots
 * (snapshot -c/-a/-d), overlays (create -b) and merges (commit, rebase). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/storage.h"

#define IMG_TIMEOUT_MS (10 * 60 * 1000)

void storage_snapshot_free(struct storage_snapshot *s)
{
    free(s->description);
    free(s->disks);
    memset(s, 0, sizeof(*s));
}

static void put_str(json_object *o, const char *key, const char *v)
{
    if (v && *v)
        json_object_object_add(o, key, json_object_new_string(v));
}

json_object *storage_snapshot_to_json(const struct storage_snapshot *s)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(s->name));
    json_object_object_add(o, "parent", s->parent[0] ? json_object_new_string(s->parent) : NULL);
    json_object_object_add(o, "created_ms", json_object_new_int64((int64_t)s->created_ms));
    json_object_object_add(o, "state", json_object_new_string(s->state));
    json_object_object_add(o, "kind", json_object_new_string(s->external ? "external" : "internal"));
    json_object_object_add(o, "memory", json_object_new_boolean(s->memory));
    json_object_object_add(o, "quiesced", json_object_new_boolean(s->quiesced));
    put_str(o, "quiesce_note", s->quiesce_note);
    put_str(o, "description", s->description);
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < s->ndisks; i++) {
        const struct storage_snapshot_disk *k = &s->disks[i];
        json_object *d = json_object_new_object();
        json_object_object_add(d, "disk", json_object_new_string(k->disk));
        json_object_object_add(d, "file", json_object_new_string(k->file));
        json_object_object_add(d, "format", json_object_new_string(storage_format_name(k->format)));
        put_str(d, "volume", k->volume);
        put_str(d, "overlay", k->overlay);
        put_str(d, "overlay_volume", k->overlay_volume);
        if (k->hotplug)
            json_object_object_add(d, "hotplug", json_object_new_boolean(true));
        if (k->rbd)
            json_object_object_add(d, "rbd", json_object_new_boolean(true));
        json_object_array_add(a, d);
    }
    json_object_object_add(o, "disks", a);
    return o;
}

static int copy_str(struct jr *r, json_object *o, const char *key, bool required, char *out, size_t outlen)
{
    _cleanup_free_ char *v = NULL;
    int rc = jr_string(r, o, key, required, &v);
    if (rc < 0)
        return rc;
    if (v && snprintf(out, outlen, "%s", v) >= (int)outlen) {
        size_t m = jr_key(r, key);
        rc = jr_fail(r, "too long");
        jr_pop(r, m);
        return rc;
    }
    return 0;
}

int storage_snapshot_from_json(json_object *o, struct storage_snapshot *s, struct qv_err *e)
{
    memset(s, 0, sizeof(*s));
    struct jr r;
    jr_init(&r, e);
    static const char *const keys[] = {"name", "parent", "created_ms", "state", "kind", "memory", "quiesced",
                                       "quiesce_note", "description", "disks", NULL};
    static const char *const kinds[] = {"internal", "external", NULL};
    static const char *const dkeys[] = {"disk", "file", "format", "volume", "overlay", "overlay_volume", "hotplug",
                                        "rbd", NULL};
    int kind = 0, rc;
    int64_t created = 0;
    json_object *disks = NULL, *pv;
    if ((rc = jr_expect(&r, o, json_type_object)) < 0 || (rc = jr_only_keys(&r, o, keys)) < 0 ||
        (rc = copy_str(&r, o, "name", true, s->name, sizeof(s->name))) < 0 ||
        (rc = jr_int(&r, o, "created_ms", 0, INT64_MAX, &created)) < 0 ||
        (rc = copy_str(&r, o, "state", true, s->state, sizeof(s->state))) < 0 ||
        (rc = jr_enum(&r, o, "kind", kinds, &kind)) < 0 || (rc = jr_bool(&r, o, "memory", &s->memory)) < 0 ||
        (rc = jr_bool(&r, o, "quiesced", &s->quiesced)) < 0 ||
        (rc = copy_str(&r, o, "quiesce_note", false, s->quiesce_note, sizeof(s->quiesce_note))) < 0 ||
        (rc = jr_string(&r, o, "description", false, &s->description)) < 0 ||
        (rc = jr_array(&r, o, "disks", &disks)) < 0)
        goto fail;
    if (json_object_object_get_ex(o, "parent", &pv) && pv &&
        (rc = copy_str(&r, o, "parent", false, s->parent, sizeof(s->parent))) < 0)
        goto fail;
    s->created_ms = (uint64_t)created;
    s->external = kind == 1;
    size_t n = disks ? json_object_array_length(disks) : 0;
    s->disks = qv_xcalloc(n ? n : 1, sizeof(*s->disks));
    size_t mark = jr_key(&r, "disks");
    for (size_t i = 0; i < n; i++) {
        json_object *d = json_object_array_get_idx(disks, i);
        struct storage_snapshot_disk *k = &s->disks[i];
        char fmt[16] = "";
        size_t m = jr_index(&r, i);
        if ((rc = jr_expect(&r, d, json_type_object)) < 0 || (rc = jr_only_keys(&r, d, dkeys)) < 0 ||
            (rc = copy_str(&r, d, "disk", true, k->disk, sizeof(k->disk))) < 0 ||
            (rc = copy_str(&r, d, "file", true, k->file, sizeof(k->file))) < 0 ||
            (rc = copy_str(&r, d, "format", true, fmt, sizeof(fmt))) < 0 ||
            (rc = copy_str(&r, d, "volume", false, k->volume, sizeof(k->volume))) < 0 ||
            (rc = copy_str(&r, d, "overlay", false, k->overlay, sizeof(k->overlay))) < 0 ||
            (rc = copy_str(&r, d, "overlay_volume", false, k->overlay_volume, sizeof(k->overlay_volume))) < 0 ||
            (rc = jr_bool(&r, d, "hotplug", &k->hotplug)) < 0 || (rc = jr_bool(&r, d, "rbd", &k->rbd)) < 0)
            goto fail;
        if (storage_format_parse(fmt, &k->format) < 0) {
            rc = jr_fail(&r, "format \"%s\" is not raw or qcow2", fmt);
            goto fail;
        }
        s->ndisks++;
        jr_pop(&r, m);
    }
    jr_pop(&r, mark);
    return 0;
fail:
    storage_snapshot_free(s);
    return rc;
}

static int record_path(const char *dir, const char *name, char *out, size_t outlen, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid snapshot name (1-64 of letters, digits, _ . -, not starting "
                       "with . or -)", name);
    if (snprintf(out, outlen, "%s/%s.json", dir, name) >= (int)outlen)
        return qv_fail(e, -ENAMETOOLONG, "%s: path too long", dir);
    return 0;
}

int storage_snapshot_load(const char *dir, const char *name, struct storage_snapshot *s, struct qv_err *e)
{
    char path[PATH_MAX];
    int r = record_path(dir, name, path, sizeof(path), e);
    if (r < 0)
        return r;
    if (!path_exists(path))
        return qv_fail(e, -ENOENT, "no snapshot named %s", name);
    _cleanup_json_ json_object *o = NULL;
    if ((r = json_read_file(path, &o, e)) < 0)
        return r;
    if ((r = storage_snapshot_from_json(o, s, e)) < 0)
        return qv_prefix(e, "%s: ", path);
    if (strcmp(s->name, name) != 0) {
        storage_snapshot_free(s);
        return qv_fail(e, -EINVAL, "%s: names snapshot \"%s\"", path, s->name);
    }
    return 0;
}

int storage_snapshot_save(const char *dir, const struct storage_snapshot *s, struct qv_err *e)
{
    char path[PATH_MAX];
    int r = record_path(dir, s->name, path, sizeof(path), e);
    if (r < 0)
        return r;
    if ((r = mkdir_p(dir, 0700)) < 0)
        return qv_failerr(e, r, "%s", dir);
    _cleanup_json_ json_object *o = storage_snapshot_to_json(s);
    return json_write_file_atomic(path, o, 0600, e);
}

int storage_snapshot_remove(const char *dir, const char *name, struct qv_err *e)
{
    char path[PATH_MAX];
    int r = record_path(dir, name, path, sizeof(path), e);
    if (r < 0)
        return r;
    if (unlink(path) < 0 && errno != ENOENT)
        return qv_failerr(e, -errno, "%s", path);
    return 0;
}

int storage_snapshot_names(const char *dir, struct strv *names, struct qv_err *e)
{
    return json_names_in(dir, names, e);
}

#define CURRENT_FILE "current"

int storage_snapshot_current(const char *dir, char *out, size_t outlen)
{
    char path[PATH_MAX];
    _cleanup_free_ char *text = NULL;
    out[0] = '\0';
    snprintf(path, sizeof(path), "%s/%s", dir, CURRENT_FILE);
    if (read_file(path, 256, &text, NULL) < 0)
        return 0;
    text[strcspn(text, "\n")] = '\0';
    if (name_valid(text))
        snprintf(out, outlen, "%s", text);
    return 0;
}

int storage_snapshot_set_current(const char *dir, const char *name, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, CURRENT_FILE);
    if (!name || !*name) {
        if (unlink(path) < 0 && errno != ENOENT)
            return qv_failerr(e, -errno, "%s", path);
        return 0;
    }
    int r = mkdir_p(dir, 0700);
    if (r < 0)
        return qv_failerr(e, r, "%s", dir);
    _cleanup_free_ char *text = qv_xasprintf("%s\n", name);
    return write_file_atomic(path, text, strlen(text), 0600, e);
}

/* ---- qemu-img on images no QEMU has open ---------------------------------------- */

/* "./x:y" for a relative name: qemu-img would read "x:y" as a protocol. */
static int plain(const char *path, char *out, size_t outlen, struct qv_err *e)
{
    if (snprintf(out, outlen, "%s%s", path[0] == '/' ? "" : "./", path) >= (int)outlen)
        return qv_fail(e, -ENAMETOOLONG, "%s: path too long", path);
    return 0;
}

int storage_img_snapshot(const char *image, char op, const char *name, struct qv_err *e)
{
    /* snapshot has no -f: the format goes in image options (no probing), where a
     * comma of the path is doubled */
    struct buf opts = {0};
    char opt[3] = {'-', op, '\0'};
    if (op != 'c' && op != 'a' && op != 'd')
        return qv_fail(e, -EINVAL, "qemu-img snapshot: unknown operation %c", op);
    buf_adds(&opts, "driver=qcow2,file.driver=file,file.filename=");
    for (const char *c = image; *c; c++)
        buf_adds(&opts, *c == ',' ? ",," : (char[]){*c, '\0'});
    const char *args[] = {"snapshot", "-q", "--image-opts", opt, name, "--", opts.p, NULL};
    int r = storage_qemu_img(args, IMG_TIMEOUT_MS, NULL, e);
    buf_free(&opts);
    return r < 0 ? qv_prefix(e, "%s: ", image) : 0;
}

int storage_img_snapshot_exists(const char *image, const char *name, bool *found, struct qv_err *e)
{
    char img[PATH_MAX + 2];
    int r = plain(image, img, sizeof(img), e);
    if (r < 0)
        return r;
    const char *args[] = {"info", "--output=json", "-U", "-f", "qcow2", "--", img, NULL};
    _cleanup_free_ char *out = NULL;
    if ((r = storage_qemu_img(args, 60000, &out, e)) < 0)
        return r;
    _cleanup_json_ json_object *o = NULL;
    if ((r = json_parse_str("qemu-img info", out, &o, e)) < 0)
        return r;
    json_object *snaps, *v;
    *found = false;
    if (json_object_object_get_ex(o, "snapshots", &snaps) && json_object_is_type(snaps, json_type_array))
        for (size_t i = 0; i < json_object_array_length(snaps); i++)
            if (json_object_object_get_ex(json_object_array_get_idx(snaps, i), "name", &v) &&
                strcmp(json_object_get_string(v), name) == 0)
                *found = true;
    return 0;
}

int storage_img_overlay(const char *overlay, const char *backing, enum storage_format backing_format, uint64_t size,
                        struct qv_err *e)
{
    char ovl[PATH_MAX + 2], sz[32];
    int r = plain(overlay, ovl, sizeof(ovl), e);
    if (r < 0)
        return r;
    if (backing[0] != '/')
        return qv_fail(e, -EINVAL, "%s: the backing file name must be absolute", backing);
    const char *args[16];
    size_t n = 0;
    args[n++] = "create";
    args[n++] = "-q";
    args[n++] = "-f";
    args[n++] = "qcow2";
    args[n++] = "-F";
    args[n++] = storage_format_name(backing_format);
    args[n++] = "-b";
    args[n++] = backing;
    if (size) {
        args[n++] = "-u";   /* a running QEMU holds the backing file's lock: do not open it */
    }
    args[n++] = "--";
    args[n++] = ovl;
    if (size) {
        snprintf(sz, sizeof(sz), "%" PRIu64, size);
        args[n++] = sz;
    }
    args[n] = NULL;
    return storage_qemu_img(args, IMG_TIMEOUT_MS, NULL, e);
}

int storage_img_commit(const char *overlay, struct qv_err *e)
{
    char ovl[PATH_MAX + 2];
    int r = plain(overlay, ovl, sizeof(ovl), e);
    if (r < 0)
        return r;
    const char *args[] = {"commit", "-q", "-d", "-f", "qcow2", "--", ovl, NULL};
    return storage_qemu_img(args, IMG_TIMEOUT_MS, NULL, e);
}

int storage_img_rebase_unsafe(const char *image, const char *backing, enum storage_format backing_format,
                              struct qv_err *e)
{
    char img[PATH_MAX + 2];
    int r = plain(image, img, sizeof(img), e);
    if (r < 0)
        return r;
    const char *args[] = {"rebase", "-q", "-u", "-f", "qcow2", "-F", storage_format_name(backing_format),
                          "-b", backing, "--", img, NULL};
    return storage_qemu_img(args, IMG_TIMEOUT_MS, NULL, e);
}
