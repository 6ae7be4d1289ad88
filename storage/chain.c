/* A backing chain opened layer by layer, each layer's fd for QEMU. The names in the
 * headers are untrusted input: a guest that owns the top image can write any name
 * there, so what they may point at is bounded here, not left to QEMU. */
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "storage/storage.h"

static int fd_size(int fd, uint64_t *out)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode))
        return ioctl(fd, BLKGETSIZE64, out) < 0 ? -errno : 0;
    *out = (uint64_t)st.st_size;
    return 0;
}

/* "nbd:host:10809", "json:{...}", "rbd:pool/img": a protocol prefix is a colon before
 * the first slash. QEMU would open such a name through its network or option parser. */
static bool has_protocol(const char *name)
{
    const char *colon = strchr(name, ':'), *slash = strchr(name, '/');
    return colon && (!slash || colon < slash);
}

/* A backing name relative to the directory of the image that holds it, as QEMU
 * joins them (the directory of the name as given, not of its symlink target). */
static int resolve_backing(const char *image, const char *name, char *out, size_t outlen)
{
    if (name[0] == '/')
        return snprintf(out, outlen, "%s", name) >= (int)outlen ? -ENAMETOOLONG : 0;
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof(dir), "%s", image) >= (int)sizeof(dir))
        return -ENAMETOOLONG;
    const char *d = dirname(dir);
    int n = strcmp(d, "/") == 0 ? snprintf(out, outlen, "/%s", name) : snprintf(out, outlen, "%s/%s", d, name);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

void storage_chain_close(struct storage_chain *c)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->layers[i].fd >= 0)
            close(c->layers[i].fd);
    free(c->layers);
    c->layers = NULL;
    c->n = 0;
}

static int open_layer(struct storage_chain *c, const char *path, const char *referrer, int flags,
                      struct storage_layer **out, struct qv_err *e)
{
    if (c->n >= STORAGE_CHAIN_MAX)
        return qv_fail(e, -ELOOP, "%s: backing chain deeper than %d layers (at %s)", c->layers[0].path,
                       STORAGE_CHAIN_MAX, path);
    struct qv_err oe = {0};
    int fd = storage_open_image(path, flags, &oe);
    if (fd < 0) {
        if (referrer)
            return qv_fail(e, fd, "%s: backing file: %s", referrer, oe.msg);
        *e = oe;
        return fd;
    }
    struct stat st;
    fstat(fd, &st);
    for (size_t i = 0; i < c->n; i++) {
        struct stat prev;
        if (fstat(c->layers[i].fd, &prev) == 0 && prev.st_dev == st.st_dev && prev.st_ino == st.st_ino) {
            close(fd);
            return qv_fail(e, -ELOOP, "%s: backing file %s is %s again: the chain loops", referrer, path,
                           c->layers[i].path);
        }
    }
    c->layers = qv_xrealloc(c->layers, (c->n + 1) * sizeof(*c->layers));
    struct storage_layer *l = &c->layers[c->n++];
    memset(l, 0, sizeof(*l));
    l->fd = fd;
    snprintf(l->path, sizeof(l->path), "%s", path);
    *out = l;
    return 0;
}

static int walk(struct storage_chain *c, const char *path, enum storage_format top_format, int top_flags,
                struct qv_err *e)
{
    const char *referrer = NULL;
    enum storage_format format = top_format;
    char next[PATH_MAX], prev[PATH_MAX];
    int r;
    snprintf(next, sizeof(next), "%s", path);
    for (;;) {
        struct storage_layer *l = NULL;
        if ((r = open_layer(c, next, referrer, c->n ? O_RDONLY : top_flags, &l, e)) < 0)
            return r;
        if (format == STORAGE_FORMAT_PROBE && (r = storage_detect_format_fd(l->fd, l->path, &format, e)) < 0)
            return r;
        l->format = format;
        if (format != STORAGE_FORMAT_QCOW2) {
            if ((r = fd_size(l->fd, &l->virtual_size)) < 0)
                return qv_failerr(e, r, "%s: size", l->path);
            return 0;
        }
        struct storage_qcow2_info q;
        if ((r = storage_qcow2_read(l->fd, l->path, &q, e)) < 0)
            return r;
        l->virtual_size = q.virtual_size;
        if (q.external_data_file)
            return qv_fail(e, -ENOTSUP, "%s: qcow2 images with an external data file are not supported", l->path);
        if (!q.backing[0])
            return 0;
        if (has_protocol(q.backing))
            return qv_fail(e, -ENOTSUP, "%s: backing file \"%s\" names a protocol; only local files can be layers",
                           l->path, q.backing);
        if (!q.backing_format[0]) {
            format = STORAGE_FORMAT_PROBE;
        } else if (storage_format_parse(q.backing_format, &format) < 0) {
            return qv_fail(e, -ENOTSUP, "%s: backing format \"%s\" is not supported (raw or qcow2)", l->path,
                           q.backing_format);
        }
        snprintf(prev, sizeof(prev), "%s", l->path);
        if (resolve_backing(prev, q.backing, next, sizeof(next)) < 0)
            return qv_fail(e, -ENAMETOOLONG, "%s: backing file name too long", prev);
        referrer = prev;
    }
}

int storage_chain_open(const char *path, enum storage_format top_format, int top_flags, struct storage_chain *out,
                       struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    int r = walk(out, path, top_format, top_flags, e);
    if (r < 0)
        storage_chain_close(out);
    return r;
}
