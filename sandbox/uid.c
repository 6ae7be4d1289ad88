/* Which uid a VM runs as. Dynamic uids (like systemd's DynamicUser) come from a
 * range: the VM name's hash picks the first candidate, so a VM gets the same uid
 * run after run while it is free.
 *
 * A uid is taken while anyone holds a lock on LOCK_DIR/UID, or while any process
 * runs with it. Locks are shared and held on two separate open file descriptions:
 * the supervisor's, and QEMU's (spec.hold_fd). flock locks belong to an open file
 * description, so a compromised QEMU can drop only its own; the kernel drops the
 * rest when their holders exit, so a lock file left behind by a crash is free.
 * Taking a free uid means an exclusive lock turned shared, which is not atomic:
 * LOCK_DIR/.alloc serialises allocations around that window. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>
#include <sys/file.h>

#include "sandbox/sandbox.h"

#define UID_ALLOC_LOCK_MS 30000     /* held only while one supervisor picks its id */

/* Never root, never the 16- and 32-bit "no id" values, never nobody. */
static bool reserved(uint64_t uid)
{
    return uid == 0 || uid == 65534 || uid == 65535 || uid >= 0xffffffffull;
}

/* A process with this uid (real, effective, saved or fs) would share it. */
static bool uid_running(uid_t uid)
{
    DIR *d = opendir("/proc");
    if (!d)
        return false;
    bool found = false;
    struct dirent *de;
    while (!found && (de = readdir(d)) != NULL) {
        if (de->d_name[0] < '1' || de->d_name[0] > '9')
            continue;
        char path[64], text[4096], ids[128];
        snprintf(path, sizeof(path), "/proc/%s/status", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, text, sizeof(text) - 1);
        close(fd);
        if (n <= 0)
            continue;
        text[n] = '\0';
        const char *line = strstr(text, "\nUid:");
        if (!line || sscanf(line + 5, "%127[^\n]", ids) != 1)
            continue;
        char *end, *p = ids;
        for (int i = 0; i < 4; i++, p = end)
            if (strtoul(p, &end, 10) == uid && end != p)
                found = true;
    }
    closedir(d);
    return found;
}

static void record_holder(const char *path, const char *name)
{
    /* Diagnostics only: a separate writable fd, so the lock fds stay read-only
     * and QEMU's cannot be used to fill the run directory. */
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

static int open_shared(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_SH | LOCK_NB) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    return fd;
}

/* 1: taken by us (both locks held), 0: in use, <0: error. */
static int try_take(const char *path, struct sandbox_uid_lease *out)
{
    int fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int err = errno;
        close(fd);
        return err == EWOULDBLOCK ? 0 : -err;
    }
    /* Every allocator holds .alloc, so nobody can slip in while this converts. */
    if (flock(fd, LOCK_SH) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    int hold = open_shared(path);
    if (hold < 0) {
        close(fd);
        return hold;
    }
    out->lock_fd = fd;
    out->hold_fd = hold;
    return 1;
}

int sandbox_uid_acquire(const char *lock_dir, uid_t first, uid_t last, const char *name,
                        struct sandbox_uid_lease *out, struct qv_err *e)
{
    out->uid = (uid_t)-1;
    out->gid = (gid_t)-1;
    out->lock_fd = -1;
    out->hold_fd = -1;
    if (!name || !*name)
        return qv_fail(e, -EINVAL, "uid: no VM name");
    if (first == 0 || last < first || reserved(last))
        return qv_fail(e, -EINVAL, "%s: uid: range %u-%u must not include 0 or the 'no id' values", name,
                       (unsigned)first, (unsigned)last);
    int r = mkdir_p(lock_dir, 0700);
    if (r < 0)
        return qv_failerr(e, r, "%s: uid: lock directory %s", name, lock_dir);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/.alloc", lock_dir);
    _cleanup_close_ int alloc = open(path, O_RDONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (alloc < 0)
        return qv_failerr(e, -errno, "%s: uid: %s", name, path);
    /* bounded: a supervisor stopped (SIGSTOP) while picking must not hang every start */
    if ((r = flock_wait(alloc, path, UID_ALLOC_LOCK_MS, e)) < 0)
        return qv_prefix(e, "%s: uid: ", name);
    uint64_t span = (uint64_t)last - first + 1;
    uint64_t start = fnv1a64(name, strlen(name), FNV1A64_INIT) % span;
    for (uint64_t i = 0; i < span; i++) {
        uint64_t cand = first + (start + i) % span;
        if (reserved(cand))
            continue;
        /* a uid or gid that already names someone would share their files */
        bool named;
        if ((r = nss_id_named((uint32_t)cand, &named, e)) < 0)
            return qv_prefix(e, "%s: uid: ", name);
        if (named)
            continue;
        snprintf(path, sizeof(path), "%s/%llu", lock_dir, (unsigned long long)cand);
        r = try_take(path, out);
        if (r < 0)
            return qv_failerr(e, r, "%s: uid: lock file %s", name, path);
        if (r == 0)
            continue;
        /* A QEMU whose locks are gone (dropped by a compromised QEMU itself, or
         * never taken by an older supervisor) still owns its uid. */
        if (uid_running((uid_t)cand)) {
            /* (another root's QEMU, say): a file that names no holder was made by
             * try_take just now, or left by an allocator killed in its window;
             * under .alloc it is nobody's, and nobody's forget would remove it */
            char holder[128];
            if (sandbox_uid_holder(lock_dir, (uid_t)cand, holder, sizeof(holder)) < 0 || !holder[0])
                unlink(path);
            sandbox_uid_release(out);
            continue;
        }
        record_holder(path, name);
        out->uid = (uid_t)cand;
        out->gid = (gid_t)cand;
        return 0;
    }
    return qv_fail(e, -EBUSY, "%s: uid: every uid in %u-%u is taken", name, (unsigned)first, (unsigned)last);
}

int sandbox_uid_rehold(const char *lock_dir, uid_t uid, struct sandbox_uid_lease *out, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%u", lock_dir, (unsigned)uid);
    out->uid = uid;
    out->gid = (gid_t)uid;
    out->hold_fd = -1;
    out->lock_fd = open_shared(path);
    if (out->lock_fd < 0)
        return qv_failerr(e, out->lock_fd, "uid %u: %s", (unsigned)uid, path);
    return 0;
}

void sandbox_uid_release(struct sandbox_uid_lease *l)
{
    if (l->lock_fd >= 0)
        close(l->lock_fd);
    if (l->hold_fd >= 0)
        close(l->hold_fd);
    l->lock_fd = -1;
    l->hold_fd = -1;
}

int sandbox_uid_forget(const char *lock_dir, const char *name, int *removed, int *in_use, struct qv_err *e)
{
    *removed = 0;
    *in_use = 0;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/.alloc", lock_dir);
    _cleanup_close_ int alloc = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (alloc < 0)
        return errno == ENOENT ? 0 : qv_failerr(e, -errno, "%s: uid: %s", name, path);
    int r = flock_wait(alloc, path, UID_ALLOC_LOCK_MS, e);
    if (r < 0)
        return qv_prefix(e, "%s: uid: ", name);
    DIR *d = opendir(lock_dir);
    if (!d)
        return qv_failerr(e, -errno, "%s: uid: %s", name, lock_dir);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char *end;
        unsigned long uid = strtoul(de->d_name, &end, 10);
        char holder[128];
        if (de->d_name[0] < '1' || de->d_name[0] > '9' || *end || reserved(uid) ||
            sandbox_uid_holder(lock_dir, (uid_t)uid, holder, sizeof(holder)) < 0 || strcmp(holder, name) != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", lock_dir, de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            continue;
        /* free: no supervisor and no QEMU holds it, and no process runs as it */
        if (flock(fd, LOCK_EX | LOCK_NB) == 0 && !uid_running((uid_t)uid)) {
            if (unlink(path) == 0)
                (*removed)++;
        } else {
            (*in_use)++;
        }
        close(fd);
    }
    closedir(d);
    return 0;
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
    bool found;
    uid_t u;
    gid_t g;
    int r = nss_user(user, &found, &u, &g, e);
    if (r < 0)
        return r;
    if (!found)
        return qv_fail(e, -ENOENT, "user %s does not exist", user);
    if (u == 0 || g == 0)
        return qv_fail(e, -EPERM, "user %s: QEMU never runs as root or in the root group", user);
    *uid = u;
    *gid = g;
    return 0;
}

int sandbox_group_lookup(const char *group, gid_t *gid, struct qv_err *e)
{
    bool found;
    gid_t g;
    int r = nss_group(group, &found, &g, e);
    if (r < 0)
        return r;
    if (!found)
        return qv_fail(e, -ENOENT, "group %s does not exist", group);
    if (g == 0)
        return qv_fail(e, -EPERM, "group %s: the root group is never given to QEMU", group);
    *gid = g;
    return 0;
}
