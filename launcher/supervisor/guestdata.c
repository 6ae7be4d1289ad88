/* What the supervisor hands the guest beside its disks: the cloud-init NoCloud seed,
 * built at each start by genisoimage (a watched child, argv only) into the run
 * directory and passed to QEMU as an fd like any image, and the systemd credentials,
 * each in a sealed memfd that QEMU reads as /proc/self/fd/N. The user's files are
 * read here, as root: the definition is root's. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "launcher/supervisor/internal.h"

#define SEED_TIMEOUT_MS 30000

static void seed_paths(const struct sup *s, char *dir, size_t dirlen, char *iso, size_t isolen)
{
    snprintf(dir, dirlen, "%s/cidata", s->run_dir);
    snprintf(iso, isolen, "%s/cidata.iso", s->run_dir);
}

void seed_remove(struct sup *s)
{
    char dir[PATH_MAX], iso[PATH_MAX], f[PATH_MAX + 16];
    seed_paths(s, dir, sizeof(dir), iso, sizeof(iso));
    unlink(iso);
    static const char *const files[] = {"user-data", "meta-data"};
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        snprintf(f, sizeof(f), "%s/%s", dir, files[i]);
        unlink(f);
    }
    rmdir(dir);
}

int seed_begin(struct sup *s, struct sup_child *c, char iso[PATH_MAX], struct qv_err *e)
{
    char dir[PATH_MAX], ud[PATH_MAX + 16], md[PATH_MAX + 16];
    seed_remove(s);     /* what a previous run may have left */
    seed_paths(s, dir, sizeof(dir), iso, PATH_MAX);
    snprintf(ud, sizeof(ud), "%s/user-data", dir);
    snprintf(md, sizeof(md), "%s/meta-data", dir);
    if (mkdir(dir, 0700) < 0)
        return qv_failerr(e, -errno, "%s: cloud-init seed: %s", s->def.name, dir);
    _cleanup_free_ char *user = NULL, *meta = NULL;
    size_t ulen, mlen;
    int r;
    if ((r = vm_cloud_init_user(&s->def, &user, &ulen, e)) < 0 || (r = vm_cloud_init_meta(&s->def, &meta, &mlen, e)) < 0 ||
        (r = write_file_atomic(ud, user, ulen, 0600, e)) < 0 || (r = write_file_atomic(md, meta, mlen, 0600, e)) < 0)
        return r;
    const char *argv[] = {"genisoimage", "-quiet", "-input-charset", "utf-8", "-output", iso, "-volid", "cidata",
                          "-joliet", "-rock", ud, md, NULL};
    if ((r = sup_child_spawn(c, argv, SEED_TIMEOUT_MS, e)) < 0) {
        qv_prefix(e, "%s: cloud-init seed: ", s->def.name);
        if (r == -ENOENT)
            snprintf(e->msg + strlen(e->msg), sizeof(e->msg) - strlen(e->msg), " (apt-get install genisoimage)");
        return r;
    }
    sup_log(s, "cloud-init: building its seed (genisoimage pid %d)", (int)c->pid);
    return 0;
}

int seed_done(struct sup *s, int status, const char *output, struct qv_err *e)
{
    if (status == 0)
        return 0;
    /* one line: a start's error travels as one line to `qvisor start` */
    char said[1024];
    snprintf(said, sizeof(said), "%s", output[0] ? output : "no output");
    for (char *p = said; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return qv_fail(e, -EIO, "%s: cloud-init seed: genisoimage %s %d: %s", s->def.name,
                   status > 128 ? "was killed by signal" : "exited with", status > 128 ? status - 128 : status, said);
}

int credential_memfd(const struct vm_def *d, size_t i, uid_t uid, gid_t gid, size_t *total, int *out,
                     struct qv_err *e)
{
    _cleanup_free_ char *value = NULL;
    size_t len;
    int r = vm_credential_value(d, i, &value, &len, e);
    if (r < 0)
        return r;
    size_t n;
    char *text = vm_credential_smbios(d->credentials[i].name, value, len, &n);
    explicit_bzero(value, len);
    *total += n;
    if (*total > VM_CREDENTIALS_SMBIOS) {
        explicit_bzero(text, n);
        free(text);
        return qv_fail(e, -EFBIG, "%s: credential %s: the credentials come to more than %u KiB of SMBIOS strings "
                       "(the table holds 64 KiB)", d->name, d->credentials[i].name, VM_CREDENTIALS_SMBIOS >> 10);
    }
    int fd = memfd_create("qvisor-credential", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        r = -errno;
    else if ((r = write_all(fd, text, n)) == 0 && (fchown(fd, uid, gid) < 0 || fchmod(fd, 0400) < 0 ||
                                                    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE |
                                                                               F_SEAL_SEAL) < 0))
        r = -errno;
    explicit_bzero(text, n);
    free(text);
    if (r < 0) {
        if (fd >= 0)
            close(fd);
        return qv_failerr(e, r, "%s: credential %s: memfd", d->name, d->credentials[i].name);
    }
    *out = fd;
    return 0;
}

/* ---- the cephx key of an rbd disk ---- */

int rbd_key_memfd(const struct vm_disk *k, uid_t uid, gid_t gid, int *out, struct qv_err *e)
{
    if (!k->rbd || !k->rbd->keyfile)
        return qv_fail(e, -EINVAL, "disk %s: no cephx key to pass", k->file ? k->file : "?");
    _cleanup_free_ char *key = NULL;
    size_t len = 0;
    int r = read_file(k->rbd->keyfile, 4096, &key, &len);
    if (r < 0)
        return qv_failerr(e, r, "volume %s: the key of pool %s's secret (%s)", k->volume ? k->volume : k->file,
                          k->rbd->pool_name, k->rbd->keyfile);
    /* the key as `ceph auth get-key` prints it, maybe with a newline: QEMU wants bare base64 */
    size_t start = 0;
    while (start < len && (key[start] == ' ' || key[start] == '\n' || key[start] == '\t' || key[start] == '\r'))
        start++;
    while (len > start && (key[len - 1] == ' ' || key[len - 1] == '\n' || key[len - 1] == '\t' || key[len - 1] == '\r'))
        len--;
    int fd = memfd_create("qvisor-rbd-key", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        r = -errno;
    else if ((r = write_all(fd, key + start, len - start)) == 0 &&
             (fchown(fd, uid, gid) < 0 || fchmod(fd, 0400) < 0 ||
              fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0))
        r = -errno;
    explicit_bzero(key, len);
    if (r < 0) {
        if (fd >= 0)
            close(fd);
        return qv_failerr(e, r, "volume %s: memfd for its key", k->volume ? k->volume : k->file);
    }
    *out = fd;
    return 0;
}
