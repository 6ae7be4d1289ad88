/* qvisor boot's locks and private directories: run/qvisor/boot/NAME.lock, held (flock)
 * for as long as a boot lives, so a later boot tells a live one from one killed -9 and
 * sweeps what that one left; var/lib/qvisor/boot/NAME/, the boot's own directory (the
 * VM's log, its throw-away overlays), removed at its end unless kept. */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "launcher/cli/boot.h"

#define BOOT_KEPT "kept"     /* in a private directory: --keep-on-failure kept it, no sweep */

static void boot_dir(const struct qv_paths *p, char *out, size_t len)
{
    qv_path(p, out, len, QV_RUN "/boot");
}

void boot_dir_remove(const struct qv_paths *p, const char *name)
{
    char dir[PATH_MAX], path[PATH_MAX + NAME_MAX + 2];
    vm_boot_dir(p, name, NULL, dir, sizeof(dir));
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    /* only files: nothing makes directories in it */
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
            unlink(path);
        }
    closedir(d);
    rmdir(dir);
}

int boot_dir_keep(const struct qv_paths *p, const char *name, char *dir, size_t len)
{
    char path[PATH_MAX];
    vm_boot_dir(p, name, NULL, dir, len);
    vm_boot_dir(p, name, BOOT_KEPT, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    close(fd);
    return 0;
}

/* What a boot that died (kill -9) may have left: a transient definition and run
 * directory no supervisor serves, overlays of an older qvisor, its uid lease files,
 * its private directory; then its lock, unless a uid lease is still in use (its QEMU
 * on the way out): the lock stays for a later sweep to finish the job. */
void boot_forget(const struct qv_paths *p, const char *name, const char *lockpath)
{
    char path[PATH_MAX];
    int in_use = 0;
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
        in_use = vm_uid_leases_forget(p, name);
        boot_dir_remove(p, name);
    }
    for (int i = 0; i < VM_MAX_DISKS; i++) {
        qv_path(p, path, sizeof(path), QV_LIB "/overlays/%s-disk%d.qcow2", name, i);
        unlink(path);
    }
    if (!in_use)
        unlink(lockpath);
}

static bool kept(const struct qv_paths *p, const char *name)
{
    char path[PATH_MAX];
    vm_boot_dir(p, name, BOOT_KEPT, path, sizeof(path));
    return access(path, F_OK) == 0;
}

/* NAME's lock: free (its boot is dead), taken for the sweep; -1 otherwise. */
static int take_free(const char *lockpath, bool create)
{
    int fd = open(lockpath, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (fd < 0)
        return -1;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int boot_sweep(const struct qv_paths *p, int *swept)
{
    char dir[PATH_MAX], lockpath[PATH_MAX + NAME_MAX + 2], name[NAME_MAX + 1];
    boot_dir(p, dir, sizeof(dir));
    *swept = 0;
    /* the locks of boots that died, then private directories whose lock is gone (a
     * boot killed between its lock and its directory, a host restarted: run/ is a tmpfs) */
    for (int pass = 0; pass < 2; pass++) {
        char where[PATH_MAX];
        if (pass == 0)
            snprintf(where, sizeof(where), "%s", dir);
        else
            qv_path(p, where, sizeof(where), QV_LIB "/boot");
        DIR *d = opendir(where);
        if (!d)
            continue;
        struct dirent *de;
        while ((de = readdir(d))) {
            size_t n = strlen(de->d_name);
            if (pass == 0 && (n < 6 || strcmp(de->d_name + n - 5, ".lock") != 0))
                continue;
            snprintf(name, sizeof(name), "%.*s", (int)(pass == 0 ? n - 5 : n), de->d_name);
            if (!name_valid(name) || kept(p, name))
                continue;
            snprintf(lockpath, sizeof(lockpath), "%s/%s.lock", dir, name);
            if (pass == 1 && mkdir_p(dir, 0700) < 0)
                continue;
            int fd = take_free(lockpath, pass == 1);
            if (fd < 0)
                continue;
            boot_forget(p, name, lockpath);
            (*swept)++;
            close(fd);
        }
        closedir(d);
    }
    return 0;
}

/* Takes NAME's lock (created), checking it is still the file under that name, and
 * makes its private directory. */
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
            char own[PATH_MAX];
            vm_boot_dir(p, name, NULL, own, sizeof(own));
            if (kept(p, name))
                r = -EEXIST;    /* a boot of that name kept its VM and directory */
            else
                boot_dir_remove(p, name);   /* a stale one, its boot dead */
            if (r == 0 && (r = mkdir_p(own, 0700)) < 0)
                qv_failerr(e, r, "%s", own);
            else if (r == -EEXIST)
                qv_fail(e, r, "%s: a boot of that name was kept (--keep-on-failure): remove %s first", name, own);
            if (r < 0) {
                unlink(path);
                close(fd);
                return r;
            }
            *out = fd;
            return 0;
        }
        close(fd);     /* a sweep removed it between open and flock */
    }
    return qv_fail(e, -EBUSY, "%s: cannot hold its lock", path);
}
