/* Pools behind one backend table. A `dir` pool is a directory; its volumes are its
 * regular files and nothing else: a symlink is not followed out of the pool, a name
 * never carries a '/' or starts with '.', and every file is opened relative to the
 * pool's directory fd with O_NOFOLLOW. Copies and creations are written under a
 * hidden temporary name (".NAME.part-PID", never listed) and renamed into place only
 * when complete, without replacing anything. */
#include <dirent.h>
#include <inttypes.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "storage/storage.h"

const char *const storage_prealloc_names[] = {"off", "metadata", "full", NULL};

bool storage_vol_name_valid(const char *name)
{
    return name_valid(name);
}

#define TEMP_PREFIX "."
#define TEMP_INFIX ".part-"

/* ---- dir ------------------------------------------------------------------------------ */
static int dir_open(const struct storage_pool *p, struct qv_err *e)
{
    int fd = open(p->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return qv_failerr(e, -errno, "pool %s: directory %s", p->name, p->path);
    return fd;
}

static int dir_check(const struct storage_pool *p, struct qv_err *e)
{
    struct stat st;
    if (stat(p->path, &st) < 0) {
        if (errno != ENOENT)
            return qv_failerr(e, -errno, "pool %s: %s", p->name, p->path);
        int r = mkdir_p(p->path, 0711);
        if (r < 0)
            return qv_failerr(e, r, "pool %s: creating %s", p->name, p->path);
        return 0;
    }
    if (!S_ISDIR(st.st_mode))
        return qv_fail(e, -ENOTDIR, "pool %s: %s is %s, not a directory", p->name, p->path,
                       storage_file_type_name(st.st_mode));
    return 0;
}

static int dir_stats(const struct storage_pool *p, struct storage_pool_stats *out, struct qv_err *e)
{
    struct statvfs v;
    if (statvfs(p->path, &v) < 0)
        return qv_failerr(e, -errno, "pool %s: %s", p->name, p->path);
    out->capacity = (uint64_t)v.f_blocks * v.f_frsize;
    out->available = (uint64_t)v.f_bavail * v.f_frsize;
    out->allocation = (uint64_t)(v.f_blocks - v.f_bfree) * v.f_frsize;
    return 0;
}

static bool is_temp(const char *name)
{
    return name[0] == '.' && strstr(name, TEMP_INFIX) != NULL;
}

/* Calls `fn` for every entry of the pool's directory, with the directory's fd. */
static int dir_each(const struct storage_pool *p, void (*fn)(int dfd, const char *name, void *arg), void *arg,
                    struct qv_err *e)
{
    _cleanup_close_ int dfd = dir_open(p, e);
    if (dfd < 0)
        return dfd;
    DIR *d = fdopendir(dup(dfd));
    if (!d)
        return qv_failerr(e, -errno, "pool %s: %s", p->name, p->path);
    struct dirent *de;
    while ((de = readdir(d)))
        fn(dfd, de->d_name, arg);
    closedir(d);
    return 0;
}

static void add_volume(int dfd, const char *name, void *arg)
{
    struct stat st;
    if (storage_vol_name_valid(name) && fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode))
        strv_push(arg, name);
}

static int dir_list(const struct storage_pool *p, struct strv *names, struct qv_err *e)
{
    int r = dir_each(p, add_volume, names, e);
    strv_sort(names);
    return r;
}

/* ".NAME.part-PID" of a copy whose process is gone */
static void drop_stale_temp(int dfd, const char *name, void *arg)
{
    (void)arg;
    const char *infix = is_temp(name) ? strstr(name, TEMP_INFIX) : NULL;
    if (!infix)
        return;
    long pid = strtol(infix + strlen(TEMP_INFIX), NULL, 10);
    if (pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM))
        return;
    unlinkat(dfd, name, 0);
}

static int dir_refresh(const struct storage_pool *p, struct qv_err *e)
{
    return dir_each(p, drop_stale_temp, NULL, e);
}

static int vol_path(const struct storage_pool *p, const char *name, char *out, size_t outlen, struct qv_err *e)
{
    if (!storage_vol_name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid volume name (1-64 of letters, digits, _ . -, "
                       "not starting with . or -)", name);
    if (snprintf(out, outlen, "%s/%s", p->path, name) >= (int)outlen)
        return qv_fail(e, -ENAMETOOLONG, "pool %s: volume %s: path too long", p->name, name);
    return 0;
}

/* The volume's fd, only if it is a regular file of the pool (no symlink followed). */
static int dir_vol_fd(const struct storage_pool *p, const char *name, int flags, struct qv_err *e)
{
    char path[PATH_MAX];
    int r = vol_path(p, name, path, sizeof(path), e);
    if (r < 0)
        return r;
    _cleanup_close_ int dfd = dir_open(p, e);
    if (dfd < 0)
        return dfd;
    _cleanup_close_ int fd = openat(dfd, name, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0 && (errno == ENOENT))
        return qv_fail(e, -ENOENT, "pool %s has no volume %s (qvisor vol list %s)", p->name, name, p->name);
    if (fd < 0 && errno == ELOOP)
        return qv_fail(e, -EINVAL, "pool %s: %s is a symbolic link, not a volume", p->name, name);
    if (fd < 0)
        return qv_failerr(e, -errno, "pool %s: volume %s", p->name, name);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return qv_failerr(e, -errno, "pool %s: volume %s", p->name, name);
    if (!S_ISREG(st.st_mode))
        return qv_fail(e, -EINVAL, "pool %s: %s is %s, not a volume", p->name, name, storage_file_type_name(st.st_mode));
    fd_set_nonblock(fd, false);
    return qv_steal_fd(&fd);
}

static int dir_vol_info(const struct storage_pool *p, const char *name, struct storage_vol_info *out, struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    _cleanup_close_ int fd = dir_vol_fd(p, name, O_RDONLY, e);
    if (fd < 0)
        return fd;
    snprintf(out->name, sizeof(out->name), "%s", name);
    vol_path(p, name, out->path, sizeof(out->path), e);
    struct stat st;
    fstat(fd, &st);
    out->allocation = (uint64_t)st.st_blocks * 512;
    int r = storage_detect_format_fd(fd, out->path, &out->format, e);
    if (r < 0)
        return r;
    if (out->format != STORAGE_FORMAT_QCOW2) {
        out->capacity = (uint64_t)st.st_size;
        return 0;
    }
    struct storage_qcow2_info q;
    if ((r = storage_qcow2_read(fd, out->path, &q, e)) < 0)
        return r;
    out->capacity = q.virtual_size;
    snprintf(out->backing, sizeof(out->backing), "%s", q.backing);
    return 0;
}

/* ".NAME.part-PID" in the pool, created exclusively (so two copies never share it). */
static int temp_claim(const struct storage_pool *p, const char *name, char *tmp, size_t tmplen, struct qv_err *e)
{
    if (snprintf(tmp, tmplen, "%s/" TEMP_PREFIX "%s" TEMP_INFIX "%d", p->path, name, (int)getpid()) >= (int)tmplen)
        return qv_fail(e, -ENAMETOOLONG, "pool %s: volume %s: path too long", p->name, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return qv_failerr(e, -errno, "pool %s: %s", p->name, tmp);
    close(fd);
    return 0;
}

/* Moves the finished temporary file to its name, never over an existing volume. */
static int temp_commit(const struct storage_pool *p, const char *tmp, const char *name, struct qv_err *e)
{
    char path[PATH_MAX];
    vol_path(p, name, path, sizeof(path), e);
    chmod(tmp, 0600);
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) < 0) {
        int r = -errno;
        unlink(tmp);
        if (r == -EEXIST)
            return qv_fail(e, r, "pool %s already has a volume %s", p->name, name);
        return qv_failerr(e, r, "pool %s: volume %s", p->name, name);
    }
    return 0;
}

static int dir_exists_refuse(const struct storage_pool *p, const char *name, struct qv_err *e)
{
    char path[PATH_MAX];
    int r = vol_path(p, name, path, sizeof(path), e);
    if (r < 0)
        return r;
    struct stat st;
    if (lstat(path, &st) == 0)
        return qv_fail(e, -EEXIST, "pool %s already has %s %s (choose another name, or vol delete it first)",
                       p->name, S_ISREG(st.st_mode) ? "a volume" : "a file named", name);
    return 0;
}

static int dir_vol_create(const struct storage_pool *p, const char *name, const struct storage_vol_spec *s,
                          struct qv_err *e)
{
    int r = dir_exists_refuse(p, name, e);
    if (r < 0)
        return r;
    if (s->prealloc == STORAGE_PREALLOC_METADATA && s->format != STORAGE_FORMAT_QCOW2)
        return qv_fail(e, -EINVAL, "preallocation metadata is for qcow2 volumes (raw: off or full)");
    if (s->backing && s->format != STORAGE_FORMAT_QCOW2)
        return qv_fail(e, -EINVAL, "a volume with a backing file must be qcow2");
    char tmp[PATH_MAX], size[32], opt[64], backing[PATH_MAX + 2];
    if ((r = temp_claim(p, name, tmp, sizeof(tmp), e)) < 0)
        return r;
    const char *args[20];
    size_t n = 0;
    args[n++] = "create";
    args[n++] = "-q";
    args[n++] = "-f";
    args[n++] = storage_format_name(s->format);
    if (s->prealloc != STORAGE_PREALLOC_OFF) {
        snprintf(opt, sizeof(opt), "preallocation=%s", storage_prealloc_names[s->prealloc]);
        args[n++] = "-o";
        args[n++] = opt;
    }
    if (s->backing) {
        snprintf(backing, sizeof(backing), "%s%s", s->backing[0] == '/' ? "" : "./", s->backing);
        args[n++] = "-b";
        args[n++] = backing;
        args[n++] = "-F";
        args[n++] = storage_format_name(s->backing_format);
    }
    args[n++] = "--";
    args[n++] = tmp;
    if (s->size || !s->backing) {
        snprintf(size, sizeof(size), "%" PRIu64, s->size);
        args[n++] = size;
    }
    args[n] = NULL;
    if ((r = storage_qemu_img(args, 10 * 60 * 1000, NULL, e)) < 0) {
        unlink(tmp);
        return qv_prefix(e, "pool %s: volume %s: ", p->name, name);
    }
    return temp_commit(p, tmp, name, e);
}

static int dir_vol_delete(const struct storage_pool *p, const char *name, unsigned flags, struct qv_err *e)
{
    (void)flags;    /* a file holds no snapshots of its own that outlive it */
    _cleanup_close_ int fd = dir_vol_fd(p, name, O_RDONLY, e);
    if (fd < 0)
        return fd;
    _cleanup_close_ int dfd = dir_open(p, e);
    if (dfd < 0)
        return dfd;
    if (unlinkat(dfd, name, 0) < 0)
        return qv_failerr(e, -errno, "pool %s: deleting volume %s", p->name, name);
    return 0;
}

static int dir_vol_resize(const struct storage_pool *p, const char *name, uint64_t size, bool shrink, struct qv_err *e)
{
    struct storage_vol_info vi;
    int r = dir_vol_info(p, name, &vi, e);
    if (r < 0)
        return r;
    char sz[32];
    snprintf(sz, sizeof(sz), "%" PRIu64, size);
    const char *args[9];
    size_t n = 0;
    args[n++] = "resize";
    args[n++] = "-q";
    args[n++] = "-f";
    args[n++] = storage_format_name(vi.format);
    if (shrink)
        args[n++] = "--shrink";
    args[n++] = "--";
    args[n++] = vi.path;
    args[n++] = sz;
    args[n] = NULL;
    r = storage_qemu_img(args, 10 * 60 * 1000, NULL, e);
    return r < 0 ? qv_prefix(e, "pool %s: volume %s: ", p->name, name) : 0;
}

static int dir_vol_copy_in(const struct storage_pool *p, const char *name, const struct storage_img *src,
                           enum storage_format format, const struct storage_progress *prog, struct qv_err *e)
{
    int r = dir_exists_refuse(p, name, e);
    if (r < 0)
        return r;
    char tmp[PATH_MAX];
    if ((r = temp_claim(p, name, tmp, sizeof(tmp), e)) < 0)
        return r;
    struct storage_img dst;
    storage_img_file(&dst, tmp, format);
    if ((r = storage_convert(src, &dst, false, prog, e)) < 0) {
        unlink(tmp);
        return r;
    }
    return temp_commit(p, tmp, name, e);
}

static int dir_vol_img(const struct storage_pool *p, const char *name, const char *secret_id, struct storage_img *out,
                       struct qv_err *e)
{
    (void)secret_id;
    struct storage_vol_info vi;
    int r = dir_vol_info(p, name, &vi, e);
    if (r < 0)
        return r;
    storage_img_file(out, vi.path, vi.format);
    out->size = vi.capacity;
    return 0;
}

static int dir_vol_open(const struct storage_pool *p, const char *name, int flags, struct storage_chain *out,
                        struct qv_err *e)
{
    _cleanup_close_ int fd = dir_vol_fd(p, name, O_RDONLY, e);
    if (fd < 0)
        return fd;
    char path[PATH_MAX];
    vol_path(p, name, path, sizeof(path), e);
    return storage_chain_open(path, STORAGE_FORMAT_PROBE, flags, out, e);
}

static const struct storage_backend dir_backend = {
    .type = "dir",
    .check = dir_check,
    .stats = dir_stats,
    .list = dir_list,
    .refresh = dir_refresh,
    .vol_info = dir_vol_info,
    .vol_create = dir_vol_create,
    .vol_delete = dir_vol_delete,
    .vol_resize = dir_vol_resize,
    .vol_copy_in = dir_vol_copy_in,
    .vol_img = dir_vol_img,
    .vol_open = dir_vol_open,
};

static const struct storage_backend *const backends[] = {&dir_backend, &storage_rbd_backend};

const char *const storage_backend_types[] = {"dir", "rbd", NULL};

const struct storage_backend *storage_backend_find(const char *type)
{
    for (size_t i = 0; type && i < ARRAY_SIZE(backends); i++)
        if (strcmp(backends[i]->type, type) == 0)
            return backends[i];
    return NULL;
}
