/* Opening images and reading their headers without trusting the path: what sits
 * there may be a FIFO (an open that never returns), a tty, or a device swapped in
 * after a check. */
#include <endian.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "storage/storage.h"

static const char *const format_names[] = {[STORAGE_FORMAT_RAW] = "raw", [STORAGE_FORMAT_QCOW2] = "qcow2"};

const char *storage_format_name(enum storage_format f)
{
    return f >= 0 && (size_t)f < ARRAY_SIZE(format_names) ? format_names[f] : NULL;
}

int storage_format_parse(const char *name, enum storage_format *out)
{
    for (size_t i = 0; i < ARRAY_SIZE(format_names); i++)
        if (strcmp(name, format_names[i]) == 0) {
            *out = (enum storage_format)i;
            return 0;
        }
    return -ENOTSUP;
}

const char *storage_file_type_name(mode_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG: return "a regular file";
    case S_IFBLK: return "a block device";
    case S_IFCHR: return "a character device";
    case S_IFIFO: return "a named pipe (FIFO)";
    case S_IFSOCK: return "a socket";
    case S_IFDIR: return "a directory";
    case S_IFLNK: return "a symbolic link";
    }
    return "of an unknown file type";
}

int storage_open_image(const char *path, int flags, struct qv_err *e)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return qv_failerr(e, -errno, "%s", path);
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return qv_fail(e, -EINVAL, "%s is %s, not a regular file or a block device", path,
                       storage_file_type_name(st.st_mode));
    /* O_NONBLOCK: should a FIFO be swapped in after the stat, the open still returns */
    _cleanup_close_ int fd = open(path, (flags & O_ACCMODE) | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s", path);
    if (fstat(fd, &st) < 0)
        return qv_failerr(e, -errno, "%s", path);
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return qv_fail(e, -EINVAL, "%s is %s, not a regular file or a block device", path,
                       storage_file_type_name(st.st_mode));
    /* QEMU does its own non-blocking I/O where it wants it; a plain file keeps the usual semantics */
    int r = fd_set_nonblock(fd, false);
    if (r < 0)
        return qv_failerr(e, r, "%s", path);
    return qv_steal_fd(&fd);
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off, size_t *got)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)buf + done, n - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            break;
        done += (size_t)r;
    }
    *got = done;
    return 0;
}

int storage_detect_format_fd(int fd, const char *what, enum storage_format *out, struct qv_err *e)
{
    unsigned char magic[4] = {0};
    size_t n;
    int r = pread_full(fd, magic, sizeof(magic), 0, &n);
    if (r < 0)
        return qv_failerr(e, r, "%s: cannot read its header", what);
    *out = n == 4 && memcmp(magic, "QFI\xfb", 4) == 0 ? STORAGE_FORMAT_QCOW2 : STORAGE_FORMAT_RAW;
    return 0;
}

int storage_detect_format(const char *path, enum storage_format *out, struct qv_err *e)
{
    _cleanup_close_ int fd = storage_open_image(path, O_RDONLY, e);
    if (fd < 0)
        return fd;
    return storage_detect_format_fd(fd, path, out, e);
}

/* ---- qcow2 header (docs/interop/qcow2.txt in QEMU; all fields big-endian) ---- */
#define QCOW2_MAGIC 0x514649fbu
#define QCOW2_EXT_END 0u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_DATA_FILE 0x44415441u
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_V2_HEADER_LEN 72u

static uint32_t be32_at(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}

static uint64_t be64_at(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}

int storage_qcow2_read(int fd, const char *what, struct storage_qcow2_info *out, struct qv_err *e)
{
    memset(out, 0, sizeof(*out));
    unsigned char h[104];
    size_t n;
    int r = pread_full(fd, h, sizeof(h), 0, &n);
    if (r < 0)
        return qv_failerr(e, r, "%s: cannot read its qcow2 header", what);
    if (n < QCOW2_V2_HEADER_LEN || be32_at(h) != QCOW2_MAGIC)
        return qv_fail(e, -EINVAL, "%s: not a qcow2 image", what);
    out->version = be32_at(h + 4);
    if (out->version != 2 && out->version != 3)
        return qv_fail(e, -ENOTSUP, "%s: qcow2 version %u is not supported (2 or 3)", what, out->version);
    uint64_t backing_off = be64_at(h + 8);
    uint32_t backing_len = be32_at(h + 16);
    out->cluster_bits = be32_at(h + 20);
    out->virtual_size = be64_at(h + 24);
    if (out->cluster_bits < 9 || out->cluster_bits > 21)
        return qv_fail(e, -EINVAL, "%s: corrupt qcow2 header (cluster_bits %u)", what, out->cluster_bits);
    uint64_t cluster = 1ull << out->cluster_bits;
    uint32_t header_len = QCOW2_V2_HEADER_LEN;
    if (out->version == 3) {
        if (n < sizeof(h))
            return qv_fail(e, -EINVAL, "%s: truncated qcow2 v3 header", what);
        header_len = be32_at(h + 100);
        if (header_len < sizeof(h) || header_len % 8 || header_len > cluster)
            return qv_fail(e, -EINVAL, "%s: corrupt qcow2 header (header_length %u)", what, header_len);
        out->external_data_file = (be64_at(h + 72) & QCOW2_INCOMPAT_DATA_FILE) != 0;
    }
    /* Header extensions follow the header, inside the first cluster. */
    uint64_t end = backing_off && backing_off < cluster ? backing_off : cluster;
    for (uint64_t off = header_len; off + 8 <= end;) {
        unsigned char eh[8];
        if ((r = pread_full(fd, eh, 8, off, &n)) < 0 || n < 8)
            return qv_failerr(e, r < 0 ? r : -EINVAL, "%s: cannot read its qcow2 header extensions", what);
        uint32_t type = be32_at(eh), len = be32_at(eh + 4);
        if (type == QCOW2_EXT_END)
            break;
        if (off + 8 + len > end)
            return qv_fail(e, -EINVAL, "%s: corrupt qcow2 header extension 0x%08x", what, type);
        if (type == QCOW2_EXT_BACKING_FORMAT) {
            if (len >= sizeof(out->backing_format))
                return qv_fail(e, -EINVAL, "%s: backing format name of %u bytes", what, len);
            if ((r = pread_full(fd, out->backing_format, len, off + 8, &n)) < 0 || n < len)
                return qv_failerr(e, r < 0 ? r : -EINVAL, "%s: cannot read its backing format", what);
            out->backing_format[len] = '\0';
        } else if (type == QCOW2_EXT_DATA_FILE) {
            out->external_data_file = true;
        }
        off += 8 + (((uint64_t)len + 7) & ~7ull);
    }
    if (backing_off) {
        /* QEMU itself refuses names over 1023 bytes */
        if (backing_len == 0 || backing_len >= sizeof(out->backing))
            return qv_fail(e, -EINVAL, "%s: backing file name of %u bytes", what, backing_len);
        if ((r = pread_full(fd, out->backing, backing_len, backing_off, &n)) < 0 || n < backing_len)
            return qv_failerr(e, r < 0 ? r : -EINVAL, "%s: cannot read its backing file name", what);
        out->backing[backing_len] = '\0';
        if (strlen(out->backing) != backing_len)
            return qv_fail(e, -EINVAL, "%s: backing file name contains a NUL byte", what);
    }
    return 0;
}

/* QEMU's image locking (locking=auto) holds shared locks on bytes 100-299 of every
 * image file it has open, one byte per permission it takes or refuses to share: a
 * write lock tested over them finds any such QEMU, ours or not. */
int storage_image_locked(int fd, const char *what, bool *out, struct qv_err *e)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 200};
    *out = true;
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return qv_failerr(e, -errno, "%s: cannot test its locks", what);
    *out = fl.l_type != F_UNLCK;
    return 0;
}

/* An L1 entry names an L2 table (bits 9-55): the layer may map clusters of its own. */
#define QCOW2_L1_OFFSET_MASK 0x00fffffffffffe00ull
#define QCOW2_L1_MAX_BYTES (32u << 20)

int storage_qcow2_has_data(int fd, const char *what, bool *out, struct qv_err *e)
{
    unsigned char h[48], buf[4096];
    size_t n;
    *out = true;
    int r = pread_full(fd, h, sizeof(h), 0, &n);
    if (r < 0)
        return qv_failerr(e, r, "%s: cannot read its qcow2 header", what);
    if (n < sizeof(h) || be32_at(h) != QCOW2_MAGIC)
        return qv_fail(e, -EINVAL, "%s: not a qcow2 image", what);
    uint64_t l1_bytes = (uint64_t)be32_at(h + 36) * 8, l1_off = be64_at(h + 40);
    if (l1_bytes > QCOW2_L1_MAX_BYTES)
        return qv_fail(e, -EINVAL, "%s: corrupt qcow2 header (an L1 table of %llu bytes)", what,
                       (unsigned long long)l1_bytes);
    for (uint64_t done = 0; done < l1_bytes; done += sizeof(buf)) {
        size_t want = l1_bytes - done < sizeof(buf) ? (size_t)(l1_bytes - done) : sizeof(buf);
        if ((r = pread_full(fd, buf, want, l1_off + done, &n)) < 0 || n < want)
            return qv_failerr(e, r < 0 ? r : -EINVAL, "%s: cannot read its L1 table", what);
        for (size_t i = 0; i + 8 <= want; i += 8)
            if (be64_at(buf + i) & QCOW2_L1_OFFSET_MASK)
                return 0;
    }
    *out = false;
    return 0;
}
