/* The "filesystems" section of a VM definition: host directories shared with the
 * guest over virtiofs, as libvirt's <filesystem type='mount'><driver type='virtiofs'/>. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "launcher/model/config.h"

void vm_filesystems_free(struct vm_def *d)
{
    for (size_t i = 0; i < d->nfilesystems; i++)
        free(d->filesystems[i].source);
    free(d->filesystems);
    d->filesystems = NULL;
    d->nfilesystems = 0;
}

/* The tag reaches QEMU in JSON and the guest's mount command: a plain word. */
static bool tag_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > VM_FS_TAG_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] >= 'a' && s[i] <= 'z') && !(s[i] >= 'A' && s[i] <= 'Z') && !(s[i] >= '0' && s[i] <= '9') &&
            !strchr("_.-", s[i]))
            return false;
    return true;
}

static bool source_valid(const char *s)
{
    /* "/" alone would hand the guest the host's whole tree */
    return s[0] == '/' && s[1] && strlen(s) < PATH_MAX && !strchr(s, '\n') && !strchr(s, ',');
}

static int parse_fs(struct jr *r, json_object *o, struct vm_fs *f, size_t index)
{
    static const char *const keys[] = {"source", "tag", "readonly", NULL};
    char *tag = NULL;
    int e;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_string(r, o, "source", true, &f->source)) < 0)
        return e;
    if (!source_valid(f->source))
        return jr_key(r, "source"), jr_fail(r, "%s is not an absolute path to a directory other than /",
                                            jr_show(json_object_object_get(o, "source")));
    if ((e = jr_string(r, o, "tag", false, &tag)) < 0 || (e = jr_bool(r, o, "readonly", &f->readonly)) < 0) {
        free(tag);
        return e;
    }
    bool ok = !tag || tag_valid(tag);
    if (tag && ok)
        snprintf(f->tag, sizeof(f->tag), "%s", tag);
    else if (!tag)
        snprintf(f->tag, sizeof(f->tag), "share%zu", index);
    free(tag);
    if (!ok)
        return jr_key(r, "tag"), jr_fail(r, "%s is not a tag (1-%d of letters, digits, _ . -)",
                                         jr_show(json_object_object_get(o, "tag")), VM_FS_TAG_MAX);
    return 0;
}

int vm_filesystems_parse(struct jr *r, json_object *root, struct vm_def *d)
{
    json_object *arr = NULL;
    int e = jr_array(r, root, "filesystems", &arr);
    if (e < 0 || !arr)
        return e;
    size_t m = jr_key(r, "filesystems");
    size_t n = json_object_array_length(arr);
    if (n > VM_MAX_FILESYSTEMS)
        return jr_fail(r, "%zu shares, at most %d", n, VM_MAX_FILESYSTEMS);
    d->filesystems = qv_xcalloc(n ? n : 1, sizeof(*d->filesystems));
    for (size_t i = 0; i < n; i++) {
        json_object *item = json_object_array_get_idx(arr, i);
        size_t mi = jr_index(r, i);
        d->nfilesystems = i + 1;    /* so vm_def_free releases what was parsed so far */
        if ((e = jr_expect(r, item, json_type_object)) < 0 || (e = parse_fs(r, item, &d->filesystems[i], i)) < 0)
            return e;
        for (size_t j = 0; j < i; j++)
            if (strcmp(d->filesystems[j].tag, d->filesystems[i].tag) == 0)
                return jr_key(r, "tag"), jr_fail(r, "\"%s\" is already the tag of filesystems[%zu]",
                                                 d->filesystems[i].tag, j);
        jr_pop(r, mi);
    }
    jr_pop(r, m);
    return 0;
}

json_object *vm_filesystems_to_json(const struct vm_def *d)
{
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < d->nfilesystems; i++) {
        const struct vm_fs *f = &d->filesystems[i];
        json_object *o = json_object_new_object();
        json_object_object_add(o, "source", json_object_new_string(f->source));
        json_object_object_add(o, "tag", json_object_new_string(f->tag));
        json_object_object_add(o, "readonly", json_object_new_boolean(f->readonly));
        json_object_array_add(a, o);
    }
    return a;
}

int vm_filesystems_check_host(const struct vm_def *d, struct qv_err *e)
{
    for (size_t i = 0; i < d->nfilesystems; i++) {
        const char *src = d->filesystems[i].source;
        struct stat st;
        if (stat(src, &st) < 0) {
            int err = errno;
            return qv_fail(e, err == ENOENT ? -EINVAL : -err, "filesystems[%zu].source: %s: %s%s", i, src, strerror(err),
                           err == ENOENT ? " (create the directory first)" : "");
        }
        if (!S_ISDIR(st.st_mode))
            return qv_fail(e, -EINVAL, "filesystems[%zu].source: %s is %s, not a directory", i, src,
                           storage_file_type_name(st.st_mode));
    }
    return 0;
}
