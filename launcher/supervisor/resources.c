/* Opening what the QEMU command line refers to by fd number. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/supervisor/internal.h"

int vm_nvram_path(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_LIB "/nvram/%s_VARS.fd", name);
}

void launch_close_resources(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        fds[i] = -1;
    }
}

#define NVRAM_TEMPLATE_MAX (64u << 20)

static int copy_file_once(const char *from, const char *to, struct qv_err *e)
{
    if (path_exists(to))
        return 0;
    _cleanup_free_ char *data = NULL;
    size_t len;
    int r = read_file(from, NVRAM_TEMPLATE_MAX, &data, &len);
    if (r < 0)
        return qv_failerr(e, r, "UEFI variable template %s", from);
    return write_file_atomic(to, data, len, 0600, e);
}

static int open_nvram(const struct launch_ctx *ctx, const struct vm_def *d, int *out, struct qv_err *e)
{
    char path[PATH_MAX], dir[PATH_MAX];
    qv_path(ctx->paths, dir, sizeof(dir), QV_LIB "/nvram");
    int r = mkdir_p(dir, 0700);
    if (r < 0)
        return qv_failerr(e, r, "%s", dir);
    vm_nvram_path(ctx->paths, d->name, path, sizeof(path));
    if ((r = copy_file_once(ctx->facts->ovmf_vars, path, e)) < 0)
        return r;
    *out = open(path, O_RDWR | O_CLOEXEC);
    return *out < 0 ? qv_failerr(e, -errno, "UEFI variable store %s", path) : 0;
}

static void overlay_path(const struct qv_paths *p, const char *work_dir, const struct vm_def *d, size_t i,
                         char path[PATH_MAX])
{
    if (work_dir)
        snprintf(path, PATH_MAX, "%s/disk%zu.qcow2", work_dir, i);
    else
        qv_path(p, path, PATH_MAX, QV_LIB "/overlays/%s-disk%zu.qcow2", d->name, i);
}

int launch_overlay_cmd(const struct qv_paths *p, const char *work_dir, const struct vm_def *d, size_t i,
                       char path[PATH_MAX], const char *argv[LAUNCH_OVERLAY_ARGV], struct qv_err *e)
{
    char dir[PATH_MAX];
    if (work_dir)
        snprintf(dir, sizeof(dir), "%s", work_dir);
    else
        qv_path(p, dir, sizeof(dir), QV_LIB "/overlays");
    int r = mkdir_p(dir, 0700);
    if (r < 0)
        return qv_failerr(e, r, "%s", dir);
    overlay_path(p, work_dir, d, i, path);
    unlink(path);   /* a stale one of a run that died */
    const struct vm_disk *k = &d->disks[i];
    const char *v[] = {"qemu-img", "create", "-q", "-f", "qcow2", "-F", disk_format_names[k->format], "-b", k->file,
                       path, NULL};
    memcpy(argv, v, sizeof(v));
    return 0;
}

int launch_overlay_failed(const struct vm_disk *k, const char *path, int status, const char *output, struct qv_err *e)
{
    unlink(path);
    return qv_fail(e, -EIO, "disk %s: creating its throw-away overlay: %s", k->file,
                   *output ? output : status == 128 + SIGKILL ? "qemu-img killed after 30 s" : "qemu-img failed");
}

/* A qcow2 overlay on top of disk i, opened and then unlinked: QEMU holds the only
 * reference, so the overlay disappears with QEMU whatever way it exits. */
static int open_overlay(const struct launch_ctx *ctx, const struct vm_def *d, size_t i, int *out, struct qv_err *e)
{
    char path[PATH_MAX];
    int r;
    if (ctx->overlays_made) {
        overlay_path(ctx->paths, ctx->work_dir, d, i, path);
    } else {
        const char *argv[LAUNCH_OVERLAY_ARGV];
        if ((r = launch_overlay_cmd(ctx->paths, ctx->work_dir, d, i, path, argv, e)) < 0)
            return r;
        _cleanup_free_ char *output = NULL;
        r = run_program(argv, LAUNCH_OVERLAY_TIMEOUT_MS, &output);
        if (r < 0)
            return qv_failerr(e, r, "disk %s: creating its throw-away overlay", d->disks[i].file);
        if (r > 0) {
            size_t n = output ? strlen(output) : 0;
            while (n && output[n - 1] == '\n')
                output[--n] = '\0';
            return launch_overlay_failed(&d->disks[i], path, r, output ? output : "", e);
        }
    }
    *out = open(path, O_RDWR | O_CLOEXEC);
    r = *out < 0 ? -errno : 0;
    unlink(path);
    return r < 0 ? qv_failerr(e, r, "overlay %s", path) : 0;
}

static int open_slot(const struct launch_plan *p, size_t i, const struct vm_def *d, const struct launch_ctx *ctx,
                     int *fds, struct qv_err *e)
{
    const struct fd_slot *s = &p->slots[i];
    char path[PATH_MAX];
    switch (s->kind) {
    case FD_QMP:
    case FD_CONSOLE:
    case FD_QGA: {
        const char *name = s->kind == FD_QMP ? "qmp.sock" : s->kind == FD_CONSOLE ? "console.sock" : "qga.sock";
        snprintf(path, sizeof(path), "%s/%s", ctx->run_dir, name);
        return unix_listen(path, 4, &fds[i], e);
    }
    case FD_DISK:
    case FD_DISK_BASE: {
        const char *file = d->disks[s->index].file;
        fds[i] = open(file, s->open_flags | O_CLOEXEC);
        if (fds[i] < 0)
            return qv_failerr(e, -errno, "disk %s", file);
        return vm_disk_check_fd(&d->disks[s->index], 0, fds[i], e);
    }
    case FD_DISK_LAYER: {
        const struct vm_disk *k = &d->disks[s->index];
        if ((size_t)s->sub >= k->nbacking)
            return qv_fail(e, -EINVAL, "disk %s: backing layer %d was not resolved", k->file, s->sub);
        fds[i] = storage_open_image(k->backing[s->sub].path, O_RDONLY, e);
        if (fds[i] < 0)
            return qv_prefix(e, "disk %s: backing layer: ", k->file);
        return vm_disk_check_fd(k, (size_t)s->sub + 1, fds[i], e);
    }
    case FD_OVERLAY:
        return open_overlay(ctx, d, (size_t)s->index, &fds[i], e);
    case FD_CDROM: {
        const char *file = d->cdroms[s->index].file;
        fds[i] = open(file, O_RDONLY | O_CLOEXEC);
        return fds[i] < 0 ? qv_failerr(e, -errno, "cdrom %s", file) : 0;
    }
    case FD_SEED:
        if (!ctx->seed_iso)
            return qv_fail(e, -EOPNOTSUPP, "cloud_init: the seed was not built");
        fds[i] = open(ctx->seed_iso, O_RDONLY | O_CLOEXEC);
        return fds[i] < 0 ? qv_failerr(e, -errno, "cloud-init seed %s", ctx->seed_iso) : 0;
    case FD_CREDENTIAL: {
        if (!ctx->open_credential)
            return qv_fail(e, -EOPNOTSUPP, "credentials: not passed here");
        size_t total = 0;     /* the SMBIOS strings so far, against the table's size */
        struct stat st;
        for (size_t k = 0; k < i; k++)
            if (p->slots[k].kind == FD_CREDENTIAL && fstat(fds[k], &st) == 0)
                total += (size_t)st.st_size;
        return ctx->open_credential(d, (size_t)s->index, ctx->qemu_uid, ctx->qemu_gid, &total, &fds[i], e);
    }
    case FD_NVRAM:
        return open_nvram(ctx, d, &fds[i], e);
    case FD_RBD_KEY:
        return rbd_key_memfd(&d->disks[s->index], ctx->qemu_uid, ctx->qemu_gid, &fds[i], e);
    case FD_TAP: {
        if (s->sub != 0)
            return 0;   /* all queues of a NIC are opened with its first */
        if (!ctx->open_tap)
            return qv_fail(e, -EOPNOTSUPP, "nics[%d]: %s NICs need the network set-up", s->index,
                           nic_type_names[d->nics[s->index].type]);
        int tapfds[16];
        int queues = d->nics[s->index].queues;
        int r = ctx->open_tap(ctx->opaque, d, (size_t)s->index, tapfds, e);
        if (r < 0)
            return r;
        for (int q = 0; q < queues; q++)
            fds[i + (size_t)q] = tapfds[q];
        return 0;
    }
    case FD_VHOST:
        fds[i] = open("/dev/vhost-net", O_RDWR | O_CLOEXEC);
        return fds[i] < 0 ? qv_failerr(e, -errno, "nics[%d]: /dev/vhost-net", s->index) : 0;
    case FD_TPM:
        if (!ctx->open_tpm)
            return qv_fail(e, -EOPNOTSUPP, "tpm: a TPM needs a supervisor to run swtpm");
        return ctx->open_tpm(ctx->opaque, d, &fds[i], e);
    case FD_USBHOST:
        if (!ctx->open_usb)
            return qv_fail(e, -EOPNOTSUPP, "hostdevs[%d]: USB host devices are not passed here", s->index);
        return ctx->open_usb(d, (size_t)s->index, &fds[i], e);
    case FD_VIRTIOFS:
        if (!ctx->open_fs)
            return qv_fail(e, -EOPNOTSUPP, "filesystems[%d]: shares need a supervisor to run virtiofsd", s->index);
        return ctx->open_fs(ctx->opaque, d, (size_t)s->index, &fds[i], e);
    }
    return qv_fail(e, -EINVAL, "unknown fd kind %d", s->kind);
}

/* QEMU reads these by path (inside its sandbox): say plainly when they are missing */
static int check_boot_files(const struct vm_def *d, struct qv_err *e)
{
    const char *files[][2] = {{"boot.kernel", d->boot.kernel}, {"boot.initrd", d->boot.initrd}};
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        struct stat st;
        if (!files[i][1])
            continue;
        if (stat(files[i][1], &st) < 0)
            return qv_failerr(e, -errno, "%s: %s %s", d->name, files[i][0], files[i][1]);
        if (!S_ISREG(st.st_mode))
            return qv_fail(e, -EINVAL, "%s: %s %s is not a regular file", d->name, files[i][0], files[i][1]);
    }
    return 0;
}

int launch_open_resources(const struct launch_plan *p, const struct vm_def *d, const struct launch_ctx *ctx, int *fds,
                          struct qv_err *e)
{
    for (size_t i = 0; i < p->nslots; i++)
        fds[i] = -1;
    int r = check_boot_files(d, e);
    if (r < 0)
        return r;
    for (size_t i = 0; i < p->nslots; i++) {
        if (fds[i] >= 0)
            continue;   /* a later queue of a tap opened with the first */
        r = open_slot(p, i, d, ctx, fds, e);
        if (r < 0) {
            launch_close_resources(fds, p->nslots);
            return qv_prefix(e, "%s: ", d->name);
        }
    }
    return 0;
}
