/* VM definitions on disk: etc/qvisor/vms/NAME.json, written atomically under a
 * directory lock so that two concurrent defines cannot both take a name, uuid or MAC.
 * A transient VM (`create`, later `boot`) has its definition in its run directory
 * instead, run/qvisor/vms/NAME/definition.json, for as long as it runs: every verb
 * finds it there, and nothing of it is left under etc/. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/stat.h>

#include "launcher/model/config.h"
#include "sandbox/sandbox.h"

int vm_def_path(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_ETC "/vms/%s.json", name);
}

static int transient_path(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return vm_run_path(p, name, "definition.json", out, outlen);
}

/* Where NAME's definition is: etc/ for a defined VM, its run directory for a running
 * transient one. false when neither exists. */
static bool definition_file(const struct qv_paths *p, const char *name, char *out, size_t outlen, bool *transient)
{
    *transient = false;
    vm_def_path(p, name, out, outlen);
    if (path_exists(out))
        return true;
    transient_path(p, name, out, outlen);
    *transient = path_exists(out);
    return *transient;
}

int vm_load(const struct qv_paths *p, const char *name, struct vm_def *d, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid VM name", name);
    char path[PATH_MAX];
    bool transient;
    if (!definition_file(p, name, path, sizeof(path), &transient))
        return qv_fail(e, -ENOENT, "no VM named %s (qvisor list --all shows the defined ones)", name);
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r < 0)
        return r;
    r = vm_def_from_json(o, d, e);
    if (r < 0)
        return qv_prefix(e, "%s: ", path);
    if (strcmp(d->name, name) != 0) {
        r = qv_fail(e, -EINVAL, "%s: holds a VM named %s, not %s", path, d->name, name);
        vm_def_free(d);
    }
    d->transient = transient;
    return r;
}

int vm_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e)
{
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_ETC "/vms");
    int r = json_names_in(dir, names, e);
    if (r < 0)
        return r;
    /* and the transient VMs that run now */
    qv_path(p, dir, sizeof(dir), QV_RUN "/vms");
    DIR *dh = opendir(dir);
    struct dirent *de;
    while (dh && (de = readdir(dh))) {
        char path[PATH_MAX];
        if (de->d_name[0] == '.' || !name_valid(de->d_name) || strv_contains((const char *const *)names->v, de->d_name))
            continue;
        if (transient_path(p, de->d_name, path, sizeof(path)) == 0 && path_exists(path))
            strv_push(names, de->d_name);
    }
    if (dh)
        closedir(dh);
    return 0;
}

void mac_generate(const char *uuid, size_t index, unsigned attempt, char out[18])
{
    /* FNV-1a over uuid, index and attempt: stable, spread, and cheap */
    char seed[96];
    int n = snprintf(seed, sizeof(seed), "%s/%zu/%u", uuid, index, attempt);
    uint64_t h = fnv1a64(seed, (size_t)n, FNV1A64_INIT);
    unsigned b3 = (h >> 16) & 0xff, b4 = (h >> 8) & 0xff, b5 = h & 0xff;
    if (b3 == 0x12 && b4 == 0x34 && b5 == 0x56)   /* QEMU's own default */
        b5 ^= 1;
    snprintf(out, 18, "52:54:00:%02x:%02x:%02x", b3, b4, b5);
}

int vm_path_check_type(const char *path, unsigned allowed, struct qv_err *e)
{
    /* stat, never open: opening a FIFO waits for a writer, forever, and opening a
     * character device can act (a watchdog arms, a tape rewinds) */
    struct stat st;
    if (stat(path, &st) < 0)
        return errno == ENOENT ? 0 : qv_failerr(e, -errno, "%s", path);
    if ((allowed & PATH_REG && S_ISREG(st.st_mode)) || (allowed & PATH_BLK && S_ISBLK(st.st_mode)))
        return 0;
    return qv_fail(e, -EINVAL, "%s is %s, not %s", path, storage_file_type_name(st.st_mode),
                   allowed & PATH_BLK ? "a regular file or a block device" : "a regular file");
}

/* Identity of every other defined VM, for uniqueness checks. */
struct others {
    struct strv uuids, macs, mac_owners;
};

static void others_free(struct others *o)
{
    strv_free(&o->uuids);
    strv_free(&o->macs);
    strv_free(&o->mac_owners);
}

static int others_load(const struct qv_paths *p, const char *except, struct others *o, struct qv_err *e)
{
    struct strv names = {0};
    int r = vm_list_names(p, &names, e);
    for (size_t i = 0; r == 0 && i < names.n; i++) {
        if (strcmp(names.v[i], except) == 0)
            continue;
        char path[PATH_MAX];
        bool transient;
        definition_file(p, names.v[i], path, sizeof(path), &transient);
        _cleanup_json_ json_object *j = NULL;
        if (json_read_file(path, &j, NULL) < 0)
            continue;   /* a broken file elsewhere must not block this define */
        json_object *v, *nics;
        if (json_object_object_get_ex(j, "uuid", &v))
            strv_push(&o->uuids, json_object_get_string(v));
        if (json_object_object_get_ex(j, "nics", &nics) && json_object_is_type(nics, json_type_array)) {
            for (size_t k = 0; k < json_object_array_length(nics); k++) {
                json_object *mac;
                if (json_object_object_get_ex(json_object_array_get_idx(nics, k), "mac", &mac)) {
                    strv_push(&o->macs, json_object_get_string(mac));
                    strv_push(&o->mac_owners, names.v[i]);
                }
            }
        }
    }
    strv_free(&names);
    return r;
}

static ssize_t strv_index(const struct strv *s, const char *v)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], v) == 0)
            return (ssize_t)i;
    return -1;
}

bool vm_mac_in_use(const struct qv_paths *p, const char *mac, const char *except)
{
    struct others o = {0};
    bool used = others_load(p, except ? except : "", &o, NULL) == 0 && strv_index(&o.macs, mac) >= 0;
    others_free(&o);
    return used;
}

static bool mac_taken(const struct vm_def *d, size_t upto, const struct others *o, const char *mac)
{
    if (strv_index(&o->macs, mac) >= 0)
        return true;
    for (size_t i = 0; i < upto; i++)
        if (strcmp(d->nics[i].mac, mac) == 0)
            return true;
    return false;
}

static int assign_identity(struct vm_def *d, const struct vm_def *old, const struct others *o, struct qv_err *e)
{
    if (!d->uuid[0]) {
        if (old)
            memcpy(d->uuid, old->uuid, sizeof(d->uuid));
        else
            do
                uuid_generate_str(d->uuid);
            while (strv_index(&o->uuids, d->uuid) >= 0);
    } else if (strv_index(&o->uuids, d->uuid) >= 0) {
        return qv_fail(e, -EEXIST, "uuid: %s is already used by another VM", d->uuid);
    }
    for (size_t i = 0; i < d->nnics; i++) {
        struct vm_nic *n = &d->nics[i];
        if (n->mac[0]) {
            ssize_t k = strv_index(&o->macs, n->mac);
            if (k >= 0)
                return qv_fail(e, -EEXIST, "nics[%zu].mac: %s is already used by VM %s", i, n->mac, o->mac_owners.v[k]);
            continue;
        }
        if (old && i < old->nnics && old->nics[i].mac[0] && !mac_taken(d, i, o, old->nics[i].mac)) {
            memcpy(n->mac, old->nics[i].mac, sizeof(n->mac));
            continue;
        }
        unsigned attempt = 0;
        do
            mac_generate(d->uuid, i, attempt++, n->mac);
        while (mac_taken(d, i, o, n->mac) && attempt < 1000);
        if (attempt >= 1000)
            return qv_fail(e, -EEXIST, "nics[%zu]: no free MAC address found; give one with \"mac\"", i);
    }
    return 0;
}

/* Fills uuid and MACs, and checks them against the other VMs; `lock` is held. */
static int complete_identity(const struct qv_paths *p, struct vm_def *d, const struct vm_def *old, struct qv_err *e)
{
    struct others o = {0};
    int r = others_load(p, d->name, &o, e);
    if (r == 0)
        r = assign_identity(d, old, &o, e);
    others_free(&o);
    return r;
}

static int check_path(const char *path, unsigned allowed, struct qv_err *e, const char *fmt, ...) QV_PRINTF(4, 5);
static int check_path(const char *path, unsigned allowed, struct qv_err *e, const char *fmt, ...)
{
    int r = path ? vm_path_check_type(path, allowed, e) : 0;
    if (r < 0) {
        char where[64];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(where, sizeof(where), fmt, ap);
        va_end(ap);
        qv_prefix(e, "%s: ", where);
    }
    return r;
}

/* What start would refuse on this host, refused now instead: files of a type QEMU
 * cannot use (and that could hang whoever opens them), users and groups that do not
 * exist or are root's. Reads image headers for the formats not given. Takes no lock:
 * nothing here depends on the other definitions. */
static int check_host(struct vm_def *d, struct qv_err *e)
{
    int r = 0;
    for (size_t i = 0; r == 0 && i < d->ndisks; i++) {
        struct vm_disk *k = &d->disks[i];
        if (k->volume)
            continue;   /* resolved at start: the volume may be created after the VM */
        if ((r = check_path(k->file, PATH_REG | PATH_BLK, e, "disks[%zu].file", i)) < 0 || k->format != FORMAT_PROBE)
            continue;
        if ((r = image_detect_format(k->file, &k->format, e)) < 0) {
            qv_prefix(e, "disks[%zu].file: ", i);
            if (r != -EINVAL)
                snprintf(e->msg + strlen(e->msg), sizeof(e->msg) - strlen(e->msg),
                         " (create the image first, or give \"format\")");
        }
    }
    for (size_t i = 0; r == 0 && i < d->ncdroms; i++)
        r = check_path(d->cdroms[i].file, PATH_REG | PATH_BLK, e, "cdroms[%zu].file", i);
    if (r == 0)
        r = check_path(d->boot.kernel, PATH_REG, e, "boot.kernel");
    if (r == 0)
        r = check_path(d->boot.initrd, PATH_REG, e, "boot.initrd");
    if (r == 0)
        r = vm_filesystems_check_host(d, e);
    for (size_t i = 0; r == 0 && i < d->limits.nio; i++) {
        struct stat st;
        const char *dev = d->limits.io[i].device;
        if (stat(dev, &st) < 0)
            r = qv_failerr(e, errno == ENOENT ? -EINVAL : -errno, "limits.io[%zu].device: %s", i, dev);
        else if (!S_ISBLK(st.st_mode))
            r = qv_fail(e, -EINVAL, "limits.io[%zu].device: %s is %s, not a block device", i, dev,
                        storage_file_type_name(st.st_mode));
    }
    struct qv_err le = {0};
    uid_t uid;
    gid_t gid;
    if (r == 0 && d->sandbox.user && sandbox_user_lookup(d->sandbox.user, &uid, &gid, &le) < 0)
        r = qv_fail(e, -EINVAL, "sandbox.user: %s (use \"dynamic\" for a uid of its own)", le.msg);
    if (r == 0 && d->sandbox.group && sandbox_group_lookup(d->sandbox.group, &gid, &le) < 0)
        r = qv_fail(e, -EINVAL, "sandbox.group: %s", le.msg);
    if (r == 0)
        r = vm_guestdata_check_host(d, e);
    return r;
}

static int lock_vms_dir(const struct qv_paths *p, struct qv_err *e)
{
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_ETC "/vms");
    return dir_lock(dir, e);
}

/* Checks `d` against what is on disk and writes it; `lock` is held. */
static int define_locked(const struct qv_paths *p, struct vm_def *d, bool replace, struct qv_err *e)
{
    char path[PATH_MAX];
    transient_path(p, d->name, path, sizeof(path));
    if (path_exists(path))
        return qv_fail(e, -EEXIST, "%s runs as a transient VM; stop it first, or choose another name", d->name);
    vm_def_path(p, d->name, path, sizeof(path));
    _cleanup_vm_def_ struct vm_def old = {0};
    bool have_old = false;
    if (path_exists(path)) {
        if (!replace)
            return qv_fail(e, -EEXIST, "%s is already defined (qvisor edit %s changes it; undefine it to start over)",
                           d->name, d->name);
        have_old = vm_load(p, d->name, &old, NULL) == 0;
        if (have_old && d->uuid[0] && strcmp(d->uuid, old.uuid) != 0)
            return qv_fail(e, -EINVAL, "uuid: a VM keeps its uuid (%s)", old.uuid);
    }
    int r = complete_identity(p, d, have_old ? &old : NULL, e);
    if (r < 0)
        return qv_prefix(e, "%s: ", d->name);
    _cleanup_json_ json_object *norm = vm_def_to_json(d);
    return json_write_file_atomic(path, norm, vm_def_file_mode(d), e);
}

/* A definition as define and create take it: valid, and usable on this host. */
static int parse_checked(json_object *o, struct vm_def *d, struct qv_err *e)
{
    int r = vm_def_from_json(o, d, e);
    if (r == 0 && (r = check_host(d, e)) < 0) {
        qv_prefix(e, "%s: ", d->name);
        vm_def_free(d);
    }
    return r;
}

int vm_define(const struct qv_paths *p, json_object *o, bool replace, struct vm_def *out, struct qv_err *e)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = parse_checked(o, &d, e);
    if (r < 0)
        return r;
    _cleanup_close_ int lock = lock_vms_dir(p, e);
    r = lock < 0 ? lock : define_locked(p, &d, replace, e);
    if (r == 0 && out)
        vm_def_move(out, &d);
    return r;
}

int vm_create_transient(const struct qv_paths *p, json_object *o, struct vm_def *out, struct qv_err *e)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = parse_checked(o, &d, e);
    if (r < 0)
        return r;
    _cleanup_close_ int lock = lock_vms_dir(p, e);
    char path[PATH_MAX], dir[PATH_MAX];
    bool transient;
    if (lock < 0)
        r = lock;
    else if (d.autostart)
        r = qv_fail(e, -EINVAL, "%s: autostart: a transient VM is gone once it stops; define it to autostart it",
                    d.name);
    else if (definition_file(p, d.name, path, sizeof(path), &transient))
        r = qv_fail(e, -EEXIST, "%s %s; a transient VM needs a name of its own", d.name,
                    transient ? "already runs as a transient VM" : "is a defined VM (qvisor start starts it)");
    else if ((r = complete_identity(p, &d, NULL, e)) < 0)
        qv_prefix(e, "%s: ", d.name);
    else if ((r = vm_run_path(p, d.name, NULL, dir, sizeof(dir))) == 0 && (r = mkdir_p(dir, 0755)) < 0)
        qv_failerr(e, r, "%s", dir);
    if (r == 0) {
        _cleanup_json_ json_object *norm = vm_def_to_json(&d);
        transient_path(p, d.name, path, sizeof(path));
        r = json_write_file_atomic(path, norm, vm_def_file_mode(&d), e);
    }
    d.transient = true;
    if (r == 0 && out)
        vm_def_move(out, &d);
    return r;
}

void vm_transient_forget(const struct qv_paths *p, const char *name)
{
    char path[PATH_MAX];
    transient_path(p, name, path, sizeof(path));
    unlink(path);
}

int vm_transient_persist(const struct qv_paths *p, const struct vm_def *d, struct qv_err *e)
{
    _cleanup_close_ int lock = lock_vms_dir(p, e);
    if (lock < 0)
        return lock;
    char path[PATH_MAX], tpath[PATH_MAX];
    vm_def_path(p, d->name, path, sizeof(path));
    if (path_exists(path))
        return qv_fail(e, -EEXIST, "%s is defined here already: that definition stays", d->name);
    _cleanup_json_ json_object *norm = vm_def_to_json(d);
    json_object_object_del(norm, "transient");
    int r = json_write_file_atomic(path, norm, vm_def_file_mode(d), e);
    if (r < 0)
        return r;
    transient_path(p, d->name, tpath, sizeof(tpath));
    unlink(tpath);
    return 0;
}

int vm_undefine(const struct qv_paths *p, const char *name, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid VM name", name);
    _cleanup_close_ int lock = lock_vms_dir(p, e);
    if (lock < 0)
        return lock;
    char path[PATH_MAX];
    vm_def_path(p, name, path, sizeof(path));
    if (unlink(path) < 0)
        return errno == ENOENT ? qv_fail(e, -ENOENT, "no VM named %s", name) : qv_failerr(e, -errno, "%s", path);
    return 0;
}

int vm_disk_image_update(const struct qv_paths *p, const char *name, const char *old, const char *volume,
                         const char *file, enum disk_format format, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid VM name", name);
    _cleanup_close_ int lock = lock_vms_dir(p, e);
    if (lock < 0)
        return lock;
    char path[PATH_MAX];
    bool transient;
    if (!definition_file(p, name, path, sizeof(path), &transient))
        return qv_fail(e, -ENOENT, "no VM named %s is stored", name);
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r < 0)
        return r;
    json_object *disks, *match = NULL;
    if (json_object_object_get_ex(o, "disks", &disks) && json_object_is_type(disks, json_type_array)) {
        for (size_t i = 0; old && !match && i < json_object_array_length(disks); i++) {
            json_object *k = json_object_array_get_idx(disks, i), *v;
            if ((json_object_object_get_ex(k, "volume", &v) || json_object_object_get_ex(k, "file", &v)) &&
                json_object_is_type(v, json_type_string) && strcmp(json_object_get_string(v), old) == 0)
                match = k;
        }
    }
    if (!match)
        return qv_fail(e, -ENOENT, "%s: no disk of the stored definition names %s any more", path, old ? old : "");
    json_object_object_del(match, "volume");
    json_object_object_del(match, "file");
    if (volume)
        json_object_object_add(match, "volume", json_object_new_string(volume));
    else
        json_object_object_add(match, "file", json_object_new_string(file));
    json_object_object_add(match, "format", json_object_new_string(disk_format_names[format]));
    /* what is written must load: checked as a definition first */
    _cleanup_vm_def_ struct vm_def check = {0};
    if ((r = vm_def_from_json(o, &check, e)) < 0)
        return qv_prefix(e, "%s: ", path);
    return json_write_file_atomic(path, o, vm_def_file_mode(&check), e);
}
