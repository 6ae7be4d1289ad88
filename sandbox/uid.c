/* Which uid a VM runs as. Dynamic uids (like systemd's DynamicUser) come from a
 * range: the VM name's hash picks the first candidate, so a VM gets the same uid
 * run after run while it is free; an flock on LOCK_DIR/UID marks it taken for
 * as long as any holder of the lock fd lives (the supervisor and, through
 * spec.hold_fd, QEMU). The kernel drops the lock when the last holder exits, so
 * a lock file left behind by a crash is simply free. */
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>

#include "sandbox/sandbox.h"

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Never root, never the 16- and 32-bit "no id" values, never nobody. */
static bool reserved(uint64_t uid)
{
    return uid == 0 || uid == 65534 || uid == 65535 || uid >= 0xffffffffull;
}

/* A uid or gid that already names someone would share their files. */
static bool id_in_use(uid_t uid)
{
    struct passwd pw, *pwr = NULL;
    struct group gr, *grr = NULL;
    char buf[4096];
    if (getpwuid_r(uid, &pw, buf, sizeof(buf), &pwr) == 0 && pwr)
        return true;
    if (getgrgid_r((gid_t)uid, &gr, buf, sizeof(buf), &grr) == 0 && grr)
        return true;
    return false;
}

static void record_holder(const char *path, const char *name)
{
    /* Diagnostics only: a separate writable fd, so the lock fd QEMU inherits
     * stays read-only and cannot be used to fill the run directory. */
    int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return;
    char line[128];
    int n = snprintf(line, sizeof(line), "%s\n", name);
    /* The lock, not the text, is what reserves the uid: a failed write is harmless. */
    ssize_t w = n > 0 ? write(fd, line, (size_t)n) : 0;
    (void)w;
    close(fd);
}

int sandbox_uid_acquire(const char *lock_dir, uid_t first, uid_t last, const char *name,
                        struct sandbox_uid_lease *out, struct qv_err *e)
{
    out->uid = (uid_t)-1;
    out->gid = (gid_t)-1;
    out->lock_fd = -1;
    if (!name || !*name)
        return qv_fail(e, -EINVAL, "uid: no VM name");
    if (first == 0 || last < first || reserved(last))
        return qv_fail(e, -EINVAL, "%s: uid: range %u-%u must not include 0 or the 'no id' values", name,
                       (unsigned)first, (unsigned)last);
    int r = mkdir_p(lock_dir, 0700);
    if (r < 0)
        return qv_failerr(e, r, "%s: uid: lock directory %s", name, lock_dir);
    uint64_t span = (uint64_t)last - first + 1;
    uint64_t start = fnv1a(name) % span;
    for (uint64_t i = 0; i < span; i++) {
        uint64_t cand = first + (start + i) % span;
        if (reserved(cand) || id_in_use((uid_t)cand))
            continue;
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%llu", lock_dir, (unsigned long long)cand);
        int fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            return qv_failerr(e, -errno, "%s: uid: lock file %s", name, path);
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            int err = errno;
            close(fd);
            if (err == EWOULDBLOCK)
                continue;
            return qv_failerr(e, -err, "%s: uid: locking %s", name, path);
        }
        record_holder(path, name);
        out->uid = (uid_t)cand;
        out->gid = (gid_t)cand;
        out->lock_fd = fd;
        return 0;
    }
    return qv_fail(e, -EBUSY, "%s: uid: every uid in %u-%u is taken", name, (unsigned)first, (unsigned)last);
}

void sandbox_uid_release(struct sandbox_uid_lease *l)
{
    if (l->lock_fd >= 0)
        close(l->lock_fd);
    l->lock_fd = -1;
}

int sandbox_uid_holder(const char *lock_dir, uid_t uid, char *name, size_t len)
{
    char path[PATH_MAX], buf[128];
    snprintf(path, sizeof(path), "%s/%u", lock_dir, (unsigned)uid);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return -errno;
    buf[n] = '\0';
    buf[strcspn(buf, "\n")] = '\0';
    snprintf(name, len, "%s", buf);
    return 0;
}

int sandbox_user_lookup(const char *user, uid_t *uid, gid_t *gid, struct qv_err *e)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    int r = getpwnam_r(user, &pw, buf, sizeof(buf), &res);
    if (r)
        return qv_failerr(e, -r, "user %s", user);
    if (!res)
        return qv_fail(e, -ENOENT, "user %s does not exist", user);
    if (pw.pw_uid == 0 || pw.pw_gid == 0)
        return qv_fail(e, -EPERM, "user %s: QEMU never runs as root or in the root group", user);
    *uid = pw.pw_uid;
    *gid = pw.pw_gid;
    return 0;
}

int sandbox_group_lookup(const char *group, gid_t *gid, struct qv_err *e)
{
    struct group gr, *res = NULL;
    char buf[4096];
    int r = getgrnam_r(group, &gr, buf, sizeof(buf), &res);
    if (r)
        return qv_failerr(e, -r, "group %s", group);
    if (!res)
        return qv_fail(e, -ENOENT, "group %s does not exist", group);
    if (gr.gr_gid == 0)
        return qv_fail(e, -EPERM, "group %s: the root group is never given to QEMU", group);
    *gid = gr.gr_gid;
    return 0;
}
