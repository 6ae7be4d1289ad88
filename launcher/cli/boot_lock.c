/* qvisor boot's locks: run/qvisor/boot/NAME.lock, held (flock) for as long as a boot
 * lives, so a later boot tells a live one from one killed -9 and sweeps what that one
 * left. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "launcher/cli/boot.h"

/* ---- the run directory of boots: run/qvisor/boot/NAME.lock, held while a boot lives ---- */

static void boot_dir(const struct qv_paths *p, char *out, size_t len)
{
    qv_path(p, out, len, QV_RUN "/boot");
}

/* What a boot that died (kill -9) may have left: its lock, overlays half made by
 * qemu-img, a transient definition no supervisor serves. */
void boot_forget(const struct qv_paths *p, const char *name, const char *lockpath)
{
    char path[PATH_MAX];
    if (!vm_supervised(p, name, NULL)) {
        vm_transient_forget(p, name);
        char run[PATH_MAX];
        vm_run_path(p, name, NULL, run, sizeof(run));
        static const char *const files[] = {"state.json", "lock", "ctl.sock", "qmp.sock", "console.sock",
                                            "qga.sock", "pid", NULL};
        for (int i = 0; files[i]; i++) {
            snprintf(path, sizeof(path), "%s/%s", run, files[i]);
            unlink(path);
        }
        rmdir(run);
    }
    for (int i = 0; i < VM_MAX_DISKS; i++) {
        qv_path(p, path, sizeof(path), QV_LIB "/overlays/%s-disk%d.qcow2", name, i);
        unlink(path);
    }
    unlink(lockpath);
}

int boot_sweep(const struct qv_paths *p, int *swept)
{
    char dir[PATH_MAX];
    boot_dir(p, dir, sizeof(dir));
    *swept = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".lock") != 0)
            continue;
        char lockpath[PATH_MAX], name[80];
        snprintf(lockpath, sizeof(lockpath), "%s/%s", dir, de->d_name);
        snprintf(name, sizeof(name), "%.*s", (int)(n - 5), de->d_name);
        int fd = open(lockpath, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (flock(fd, LOCK_EX | LOCK_NB) == 0 && name_valid(name)) {
            boot_forget(p, name, lockpath);
            (*swept)++;
        }
        close(fd);
    }
    closedir(d);
    return 0;
}

/* Takes NAME's lock (created), checking it is still the file under that name. */
int boot_lock(const struct qv_paths *p, const char *name, int *out, char *path, size_t len, struct qv_err *e)
{
    char dir[PATH_MAX];
    boot_dir(p, dir, sizeof(dir));
    int r = mkdir_p(dir, 0700);
    if (r < 0)
        return qv_failerr(e, r, "%s", dir);
    snprintf(path, len, "%s/%s.lock", dir, name);
    /* A lock held for a moment is another boot's sweep looking at it (boot_sweep); one
     * held for a second is a live boot's. */
    for (int tries = 0, busy = 0; tries < 5;) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            return qv_failerr(e, -errno, "%s", path);
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            close(fd);
            if (++busy >= 20)
                return qv_fail(e, -EEXIST, "%s: another qvisor boot uses this name", name);
            usleep(50 * 1000);
            continue;
        }
        tries++;
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
            *out = fd;
            return 0;
        }
        close(fd);     /* a sweep removed it between open and flock */
    }
    return qv_fail(e, -EBUSY, "%s: cannot hold its lock", path);
}

