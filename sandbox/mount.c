/* The private mount namespace. The parent resolves every path (realpath, file
 * type, the mount it lives on) and orders the work; the child then:
 *   - unshares the mount namespace and makes every mount a slave, so nothing
 *     propagates back to the host;
 *   - mounts a scratch tmpfs on /tmp and pivots into it, the host's root moving
 *     to /oldroot: every host path stays reachable as /oldroot/PATH, including
 *     paths under /tmp, which the scratch tmpfs no longer covers;
 *   - builds /newroot: a small tmpfs (or the chroot tree, read-only) with a
 *     private /dev, /proc and /tmp, then the read-only binds, then symlinks;
 *   - pivots into /newroot and detaches the scratch root with the whole host
 *     tree under it.
 * Binds are not recursive: a submount of a bound directory stays invisible
 * unless it is bound itself, so nothing is shown by accident. Each bind is made
 * read-only right after it is mounted, so that a mistake can never create a
 * file on the host. */
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include "sandbox/internal.h"

const char *const sandbox_default_system_paths[] = {
    "/usr",
    "/lib",                 /* merged-usr symlinks, or real directories on older systems */
    "/lib64",               /* holds the dynamic loader's PT_INTERP path */
    "/etc/ld.so.cache",
    "/etc/localtime",       /* QEMU's own local time (the RTC's is given as a date) */
    "/usr/share/qemu",      /* firmware descriptors, option ROMs, keymaps */
    "/usr/share/seabios",
    "/usr/share/OVMF",
    "/usr/share/edk2",
    "/usr/share/ipxe",
    "/usr/lib/ipxe/qemu",
    "/usr/lib/x86_64-linux-gnu/qemu",   /* QEMU modules (accel-tcg, display, ...) */
    "/usr/lib64/qemu",
    NULL,
};

#define OLDROOT "/oldroot"
#define NEWROOT "/newroot"

static void entry_free(struct mnt_entry *x)
{
    free(x->src);
    free(x->dst);
    free(x->target);
    free(x->host);
}

void mnt_plan_free(struct mnt_plan *p)
{
    for (size_t i = 0; i < p->n; i++)
        entry_free(&p->e[i]);
    for (size_t i = 0; i < p->nnodes; i++) {
        free(p->nodes[i].dst);
        free(p->nodes[i].host);
    }
    free(p->e);
    free(p->nodes);
    free(p->root_src);
    memset(p, 0, sizeof(*p));
}

static struct mnt_entry *entry_add(struct mnt_plan *p)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 32;
        p->e = qv_xrealloc(p->e, p->cap * sizeof(*p->e));
    }
    struct mnt_entry *x = &p->e[p->n++];
    memset(x, 0, sizeof(*x));
    return x;
}

static void node_add(struct mnt_plan *p, const char *path, mode_t mode, dev_t rdev, bool owned,
                     bool bind_ok)
{
    if (p->nnodes == p->capnodes) {
        p->capnodes = p->capnodes ? p->capnodes * 2 : 16;
        p->nodes = qv_xrealloc(p->nodes, p->capnodes * sizeof(*p->nodes));
    }
    p->nodes[p->nnodes++] = (struct mnt_node){
        .dst = qv_xasprintf(NEWROOT "%s", path),
        .host = qv_xasprintf(OLDROOT "%s", path),
        .mode = mode,
        .rdev = rdev,
        .owned = owned,
        .bind_ok = bind_ok,
    };
}

static int mount_id(const char *path, uint64_t *id)
{
    struct statx sx;
    if (statx(AT_FDCWD, path, 0, STATX_MNT_ID, &sx) < 0)
        return -errno;
    /* Kernels before 5.8 do not report it: treat every path as its own mount. */
    *id = (sx.stx_mask & STATX_MNT_ID) ? sx.stx_mnt_id : 0;
    return 0;
}

static bool path_under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && (path[n] == '/' || (n == 1 && dir[0] == '/'));
}

/* A read-only bind of a directory on the same mount already shows `real`. */
static bool covered(const struct mnt_plan *p, enum mnt_kind kind, const char *real, uint64_t id)
{
    if (id == 0)
        return false;
    for (size_t i = 0; i < p->n; i++) {
        const struct mnt_entry *x = &p->e[i];
        if (x->kind == kind && x->dir && x->mnt_id == id && path_under(real, x->host))
            return true;
    }
    return false;
}

static bool path_clean(const char *p)
{
    if (p[0] != '/' || strcmp(p, "/") == 0)
        return false;
    for (const char *c = p; (c = strstr(c, "/..")) != NULL; c += 3)
        if (c[3] == '/' || c[3] == '\0')
            return false;
    return true;
}

/* Adds one host path at the same place in the new root. Symlinks in the last
 * component are recreated (pointing at the canonical path, which is bound);
 * symlinked parent directories are refused rather than guessed at. */
static int add_path(struct mnt_plan *p, const char *path, enum mnt_kind kind, bool optional,
                    const char *what, struct qv_err *e)
{
    if (!path_clean(path))
        return qv_fail(e, -EINVAL, "mount namespace: %s \"%s\" must be an absolute path other than /", what, path);
    if (str_startswith(path, "/proc/") || strcmp(path, "/proc") == 0)
        return qv_fail(e, -EINVAL, "mount namespace: %s %s: /proc is private to the sandbox", what, path);
    char real[PATH_MAX];
    if (!realpath(path, real)) {
        if (optional && errno == ENOENT)
            return 0;
        return qv_failerr(e, -errno, "mount namespace: %s %s", what, path);
    }
    struct stat st;
    if (stat(real, &st) < 0)
        return qv_failerr(e, -errno, "mount namespace: %s %s", what, path);
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode))
        return qv_fail(e, -EINVAL, "mount namespace: %s %s is neither a file nor a directory%s", what, path,
                       S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? " (device nodes go in devices)" : "");
    if (strcmp(real, path) != 0) {
        _cleanup_free_ char *dir = qv_xstrdup(path);
        char *slash = strrchr(dir, '/');
        *(slash == dir ? slash + 1 : slash) = '\0';
        char realdir[PATH_MAX];
        if (!realpath(dir, realdir) || strcmp(realdir, dir) != 0)
            return qv_fail(e, -EINVAL, "mount namespace: %s %s: a parent directory is a symlink; give %s", what,
                           path, real);
        struct mnt_entry *l = entry_add(p);
        l->kind = MNT_LINK;
        l->dst = qv_xasprintf(NEWROOT "%s", path);
        l->target = qv_xstrdup(real);
        l->host = qv_xstrdup(path);
    }
    uint64_t id = 0;
    int r = mount_id(real, &id);
    if (r < 0)
        return qv_failerr(e, r, "mount namespace: %s %s", what, real);
    for (size_t i = 0; i < p->n; i++) {
        struct mnt_entry *x = &p->e[i];
        if (x->kind != MNT_LINK && strcmp(x->host, real) == 0) {
            if (x->kind != kind)
                return qv_fail(e, -EINVAL, "mount namespace: %s is both read-only and writable", real);
            return 0;
        }
    }
    if (covered(p, kind, real, id))
        return 0;
    struct mnt_entry *x = entry_add(p);
    x->kind = kind;
    x->dir = S_ISDIR(st.st_mode);
    x->host = qv_xstrdup(real);
    x->src = qv_xasprintf(OLDROOT "%s", real);
    x->dst = qv_xasprintf(NEWROOT "%s", real);
    x->mnt_id = id;
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    const struct mnt_entry *x = a, *y = b;
    /* Binds before links (links may point through binds), parents before children. */
    if ((x->kind == MNT_LINK) != (y->kind == MNT_LINK))
        return x->kind == MNT_LINK ? 1 : -1;
    return strcmp(x->dst, y->dst);
}

static int add_device(struct mnt_plan *p, const char *path, struct qv_err *e)
{
    if (!str_startswith(path, "/dev/") || !path_clean(path) || strchr(path + 5, '/'))
        return qv_fail(e, -EINVAL, "mount namespace: device \"%s\" must be a node directly in /dev", path);
    struct stat st;
    if (stat(path, &st) < 0)
        return qv_failerr(e, -errno, "mount namespace: device %s", path);
    if (!S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode))
        return qv_fail(e, -EINVAL, "mount namespace: device %s is not a device node", path);
    for (size_t i = 0; i < p->nnodes; i++)
        if (strcmp(p->nodes[i].host + strlen(OLDROOT), path) == 0)
            return 0;
    node_add(p, path, (st.st_mode & S_IFMT) | 0600, st.st_rdev, true, false);
    return 0;
}

int mnt_plan_build(const struct sandbox_spec *s, const char *exec_path, struct mnt_plan *p,
                   struct qv_err *e)
{
    memset(p, 0, sizeof(*p));
    int r;
    if (s->chroot) {
        char real[PATH_MAX];
        if (!realpath(s->chroot, real))
            return qv_failerr(e, -errno, "mount namespace: chroot %s", s->chroot);
        if (strcmp(real, "/") != 0 && !path_clean(real))
            return qv_fail(e, -EINVAL, "mount namespace: chroot %s is not a clean absolute path", s->chroot);
        bool whole = strcmp(real, "/") == 0;
        p->root_src = whole ? qv_xstrdup(OLDROOT) : qv_xasprintf(OLDROOT "%s", real);
        static const char *const needed[] = {"dev", "proc", "tmp"};
        for (size_t i = 0; i < ARRAY_SIZE(needed); i++) {
            char d[PATH_MAX];
            snprintf(d, sizeof(d), "%s/%s", whole ? "" : real, needed[i]);
            struct stat st;
            if (stat(d, &st) < 0 || !S_ISDIR(st.st_mode))
                return qv_fail(e, -ENOENT, "mount namespace: chroot %s has no %s directory to mount on",
                               s->chroot, needed[i]);
        }
    } else {
        const char *const *sys = s->system_paths ? s->system_paths : sandbox_default_system_paths;
        for (size_t i = 0; sys[i]; i++)
            if ((r = add_path(p, sys[i], MNT_RO, true, "system path", e)) < 0)
                return r;
        if ((r = add_path(p, exec_path, MNT_RO, false, "executable", e)) < 0)
            return r;
    }
    for (size_t i = 0; s->ro_paths && s->ro_paths[i]; i++)
        if ((r = add_path(p, s->ro_paths[i], MNT_RO, false, "read-only path", e)) < 0)
            return r;
    for (size_t i = 0; s->rw_paths && s->rw_paths[i]; i++)
        if ((r = add_path(p, s->rw_paths[i], MNT_RW, false, "writable path", e)) < 0)
            return r;
    if (p->n)
        qsort(p->e, p->n, sizeof(*p->e), cmp_entry);

    /* Fixed numbers from the kernel's devices.txt: no lookup needed. */
    static const struct { const char *name; unsigned minor; } mem_nodes[] = {
        {"null", 3}, {"zero", 5}, {"full", 7}, {"random", 8}, {"urandom", 9},
    };
    for (size_t i = 0; i < ARRAY_SIZE(mem_nodes); i++) {
        char path[32];
        snprintf(path, sizeof(path), "/dev/%s", mem_nodes[i].name);
        node_add(p, path, S_IFCHR | 0666, makedev(1, mem_nodes[i].minor), false, true);
    }
    if (s->kvm) {
        struct stat st;
        if (stat("/dev/kvm", &st) < 0)
            return qv_failerr(e, -errno, "mount namespace: KVM is used but /dev/kvm");
        if (!S_ISCHR(st.st_mode))
            return qv_fail(e, -ENODEV, "mount namespace: /dev/kvm is not a character device");
        node_add(p, "/dev/kvm", S_IFCHR | 0600, st.st_rdev, true, false);
    }
    for (size_t i = 0; s->devices && s->devices[i]; i++) {
        if (strcmp(s->devices[i], "/dev/net/tun") == 0)
            return qv_fail(e, -EPERM, "mount namespace: /dev/net/tun is never given to QEMU: pass tap fds");
        if ((r = add_device(p, s->devices[i], e)) < 0)
            return r;
    }

    uint64_t tmp = s->tmp_size ? s->tmp_size : 16ull << 20;
    snprintf(p->tmp_opts, sizeof(p->tmp_opts), "mode=1777,size=%llu", (unsigned long long)tmp);
    p->chown_nodes = (s->enable & SANDBOX_STEP(SANDBOX_USER)) && s->uid != (uid_t)-1;
    p->owner = s->uid;
    p->owner_gid = s->gid;
    return 0;
}

/* ---- the child side: system calls only ------------------------------------------- */

static void mkdirs(const char *path, int errfd)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof(buf))
        child_fail(errfd, ENAMETOOLONG, "mount namespace: mkdir %s", path);
    memcpy(buf, path, n + 1);
    for (char *c = buf + 1; *c; c++) {
        if (*c != '/')
            continue;
        *c = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            child_fail(errfd, errno, "mount namespace: mkdir %s", buf + strlen(NEWROOT));
        *c = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST)
        child_fail(errfd, errno, "mount namespace: mkdir %s", buf + strlen(NEWROOT));
}

static void parent_dirs(const char *path, int errfd)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof(buf))
        child_fail(errfd, ENAMETOOLONG, "mount namespace: %s", path);
    memcpy(buf, path, n + 1);
    char *slash = strrchr(buf, '/');
    if (slash && slash != buf) {
        *slash = '\0';
        mkdirs(buf, errfd);
    }
}

/* The path as QEMU will see it, for messages. */
static const char *shown(const char *dst)
{
    size_t n = strlen(NEWROOT);
    return strncmp(dst, NEWROOT, n) == 0 && dst[n] == '/' ? dst + n : dst;
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                     const char *data, const char *what, int errfd)
{
    if (mount(src, dst, type, flags, data) < 0)
        child_fail(errfd, errno, "mount namespace: %s %s", what, shown(dst));
}

static void bind(const struct mnt_entry *x, int errfd)
{
    struct stat st;
    if (x->dir) {
        mkdirs(x->dst, errfd);
    } else if (lstat(x->dst, &st) < 0) {
        parent_dirs(x->dst, errfd);
        int fd = open(x->dst, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0444);
        if (fd < 0)
            child_fail(errfd, errno, "mount namespace: mountpoint %s", x->host);
        close(fd);
    }
    do_mount(x->src, x->dst, NULL, MS_BIND, NULL, "bind", errfd);
    unsigned long ro = x->kind == MNT_RO ? MS_RDONLY : 0;
    do_mount(NULL, x->dst, NULL, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | ro, NULL,
             ro ? "read-only remount of" : "remount of", errfd);
}

static void link_path(const struct mnt_entry *x, int errfd)
{
    struct stat st;
    /* Already there through a bind of its directory. */
    if (lstat(x->dst, &st) == 0)
        return;
    parent_dirs(x->dst, errfd);
    if (symlink(x->target, x->dst) < 0)
        child_fail(errfd, errno, "mount namespace: symlink %s", x->host);
}

static void make_dev(const struct mnt_plan *p, int errfd)
{
    do_mount("tmpfs", NEWROOT "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64",
             "tmpfs on", errfd);
    for (size_t i = 0; i < p->nnodes; i++) {
        const struct mnt_node *n = &p->nodes[i];
        if (mknod(n->dst, n->mode, n->rdev) == 0) {
            /* mknod applies the umask; the mode is what we mean. */
            if (chmod(n->dst, n->mode & 07777) < 0)
                child_fail(errfd, errno, "mount namespace: chmod %s", n->dst + strlen(NEWROOT));
            if (n->owned && p->chown_nodes && chown(n->dst, p->owner, p->owner_gid) < 0)
                child_fail(errfd, errno, "mount namespace: chown %s", n->dst + strlen(NEWROOT));
            continue;
        }
        /* Where mknod is refused (a container), world-usable nodes can be bound
         * from the host; a node that must belong to the VM's uid cannot. */
        if (!n->bind_ok)
            child_fail(errfd, errno, "mount namespace: mknod %s", n->dst + strlen(NEWROOT));
        int fd = open(n->dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0)
            child_fail(errfd, errno, "mount namespace: mountpoint %s", n->dst + strlen(NEWROOT));
        close(fd);
        do_mount(n->host, n->dst, NULL, MS_BIND, NULL, "bind of the host's", errfd);
    }
    mkdirs(NEWROOT "/dev/pts", errfd);
    do_mount("devpts", NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620", "devpts on", errfd);
    if (symlink("pts/ptmx", NEWROOT "/dev/ptmx") < 0)
        child_fail(errfd, errno, "mount namespace: symlink /dev/ptmx");
}

static void make_proc(int errfd)
{
    /* hidepid=invisible: QEMU sees only its own uid's processes. Kernels before
     * 5.8 share proc options across the pid namespace (so setting them here would
     * change the host's /proc) and reject the word "invisible": EINVAL then means
     * "old kernel", and the plain mount is the safe fallback. */
    unsigned long fl = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (mount("proc", NEWROOT "/proc", "proc", fl, "hidepid=invisible") == 0)
        return;
    if (errno == EINVAL && mount("proc", NEWROOT "/proc", "proc", fl, NULL) == 0)
        return;
    child_fail(errfd, errno, "mount namespace: proc on /proc");
}

void mnt_apply(const struct mnt_plan *p, int errfd)
{
    mode_t old_umask = umask(0);
    if (unshare(CLONE_NEWNS) < 0)
        child_fail(errfd, errno, "mount namespace: unshare(CLONE_NEWNS)");
    /* Slave: our mounts never reach the host, the host's unmounts still reach us. */
    do_mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL, "making slave:", errfd);
    do_mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700,size=64k",
             "scratch tmpfs on", errfd);
    if (chdir("/tmp") < 0)
        child_fail(errfd, errno, "mount namespace: chdir to the scratch root");
    if (mkdir("newroot", 0755) < 0 || mkdir("oldroot", 0700) < 0)
        child_fail(errfd, errno, "mount namespace: mkdir in the scratch root");
    if (syscall(SYS_pivot_root, ".", "oldroot") < 0)
        child_fail(errfd, errno, "mount namespace: pivot_root");

    if (p->root_src) {
        do_mount(p->root_src, NEWROOT, NULL, MS_BIND, NULL, "bind of the chroot on", errfd);
        do_mount(NULL, NEWROOT, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL,
                 "read-only remount of the chroot", errfd);
    } else {
        do_mount("tmpfs", NEWROOT, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096",
                 "tmpfs for the new root on", errfd);
        mkdirs(NEWROOT "/dev", errfd);
        mkdirs(NEWROOT "/proc", errfd);
        mkdirs(NEWROOT "/tmp", errfd);
    }
    make_dev(p, errfd);
    make_proc(errfd);
    do_mount("tmpfs", NEWROOT "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, p->tmp_opts, "tmpfs on",
             errfd);
    for (size_t i = 0; i < p->n; i++) {
        if (p->e[i].kind == MNT_LINK)
            link_path(&p->e[i], errfd);
        else
            bind(&p->e[i], errfd);
    }
    do_mount(NULL, NEWROOT "/dev", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL,
             "read-only remount of", errfd);
    if (!p->root_src)
        do_mount(NULL, NEWROOT, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL,
                 "read-only remount of the new root", errfd);

    if (chdir(NEWROOT) < 0)
        child_fail(errfd, errno, "mount namespace: chdir to the new root");
    /* The new root goes under the scratch root; detaching "." then takes the
     * scratch root and the whole host tree below /oldroot with it. */
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        child_fail(errfd, errno, "mount namespace: pivot_root into the new root");
    if (umount2(".", MNT_DETACH) < 0)
        child_fail(errfd, errno, "mount namespace: detaching the host's root");
    if (chdir("/") < 0)
        child_fail(errfd, errno, "mount namespace: chdir /");
    umask(old_umask);
}
