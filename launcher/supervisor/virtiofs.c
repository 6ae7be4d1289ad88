/* virtiofs shares: one virtiofsd per filesystem, a sibling of QEMU, started by the
 * supervisor right before QEMU and confined with the same sandbox as QEMU.
 *
 * The socket: the supervisor binds and listens on run/…/fsN.sock, connects to it
 * itself, and unlinks it; virtiofsd gets the listening fd (--fd=3, it accepts the
 * one connection already queued) and QEMU the connected one (-chardev socket,fd=N).
 * Neither opens a path, and nobody else can connect in between.
 *
 * Who it runs as: root, because the C virtiofsd of QEMU 7.2 serves every file as its
 * owner: it switches its effective ids to the guest caller's for each create
 * (CAP_SETUID/SETGID) and reads and changes files of any owner (CAP_DAC_OVERRIDE,
 * FOWNER, CHOWN, FSETID). Ownership therefore passes through unchanged, as with
 * libvirt's default: a file the guest's root creates belongs to root on the host
 * (mode as the guest made it, 0644 under the usual umask, so the directory's owner
 * can read it), one the guest's uid 1000 creates belongs to host uid 1000. As a
 * non-root user it could not create files for any guest user but its own uid.
 *
 * What confines it (sandbox_spawn, the same steps as QEMU's where they fit):
 *  - mount: a new mount namespace whose root is a tmpfs with read-only binds of the
 *    system paths and the share itself, bound nosuid,nodev — and read-only for a
 *    readonly share, which is how readonly is enforced (virtiofsd has no option for
 *    it: the kernel answers EROFS). virtiofsd then chroots into the share
 *    (-o sandbox=chroot), so the share is all it can reach;
 *  - network: an empty network namespace of its own;
 *  - caps: root keeping only CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID,
 *    SYS_CHROOT and SETPCAP, the bounding set cut to the same; virtiofsd drops
 *    SYS_CHROOT and SETPCAP itself once it has chrooted and cleared its bounding set.
 *    No MKNOD (-o modcaps=-mknod: the guest cannot make device nodes in a host
 *    directory), no SETFCAP (xattrs are off anyway); no_new_privs;
 *  - seccomp: not ours — our deny list forbids chroot and unshare, which virtiofsd
 *    needs (unshare(CLONE_FS) in each worker); virtiofsd loads its own allow list,
 *    which kills it on anything else, before it serves a request;
 *  - no user step (it stays root, above) and no cgroup: the VM's cgroup holds QEMU.
 *
 * Lifetime: virtiofsd exits when its QEMU connection closes, so it lives exactly as
 * long as its QEMU. It has no PR_SET_PDEATHSIG: the supervisor may die and be
 * restarted while the guest runs, and the guest's share must live on like QEMU does;
 * a virtiofsd whose QEMU never came (the supervisor died between the two) sees the
 * supervisor's end of the socket close and exits too. Its pid and start time are in
 * state.json before it runs; a new supervisor takes it over with QEMU, or kills it
 * when QEMU is gone. */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <linux/capability.h>

#include "launcher/supervisor/internal.h"

#define VIRTIOFSD_NOFILE (1u << 20)    /* an O_PATH fd per inode the guest looked up */

/* QEMU still runs (not yet reaped, and not a zombie waiting for us) */
static bool qemu_running(struct sup *s)
{
    if (!s->qemu_pid)
        return false;
    if (!s->qemu_is_child)
        return kill(s->qemu_pid, 0) == 0;
    siginfo_t si = {0};
    return waitid(P_PID, (id_t)s->qemu_pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && !si.si_pid;
}

static json_object *record_list(struct sup *s)
{
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object *a;
    if (!json_object_object_get_ex(s->rs.resources, "virtiofsd", &a)) {
        a = json_object_new_array();
        json_object_object_add(s->rs.resources, "virtiofsd", a);
    }
    return a;
}

/* resources.virtiofsd[i] = {"tag", "pid", "start"}; pid 0: about to be started */
static void record(struct sup *s, size_t i)
{
    json_object *a = record_list(s);
    while (json_object_array_length(a) <= i)
        json_object_array_add(a, NULL);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "tag", json_object_new_string(s->def.filesystems[i].tag));
    json_object_object_add(o, "pid", json_object_new_int(s->fs[i].pid));
    json_object_object_add(o, "start", json_object_new_uint64(s->fs[i].start));
    json_object_array_put_idx(a, i, o);
}

struct fs_forked {
    struct sup *s;
    size_t index;
};

/* In the parent, before the child does anything: its pid is recorded or it never runs. */
static int fs_forked(pid_t pid, void *opaque, struct qv_err *e)
{
    struct fs_forked *f = opaque;
    struct sup *s = f->s;
    unsigned long long start;
    int r = proc_start_time(pid, &start);
    if (r < 0)
        return qv_failerr(e, r, "reading the start time of virtiofsd pid %d", (int)pid);
    s->fs[f->index] = (struct sup_fs){.pid = pid, .start = start, .child = true};
    record(s, f->index);
    if ((r = runstate_write(s->paths, s->def.name, &s->rs, e)) < 0) {
        s->fs[f->index] = (struct sup_fs){0};
        record(s, f->index);
        return qv_prefix(e, "virtiofsd not started, its pid could not be recorded: ");
    }
    sup_crash_point("virtiofsd-recorded");
    return 0;
}

static int spawn_virtiofsd(struct sup *s, size_t i, int listen_fd, struct qv_err *e)
{
    const struct vm_fs *fs = &s->def.filesystems[i];
    struct confine *c = &s->conf;
    char source[PATH_MAX + 16];
    snprintf(source, sizeof(source), "source=%s", fs->source);
    const char *argv[] = {VIRTIOFSD, "--fd=3", "-o", source, "-o", "sandbox=chroot", "-o", "modcaps=-mknod:-setfcap",
                          "--rlimit-nofile=0", NULL};
    const char *share[] = {fs->source, NULL};
    struct sandbox_fd map = {.source = listen_fd, .target = 3};
    struct sandbox_spec spec;
    confine_sibling_spec(s, &spec, argv, &map);
    spec.enable &= ~(SANDBOX_STEP(SANDBOX_USER) | SANDBOX_STEP(SANDBOX_SECCOMP) | SANDBOX_STEP(SANDBOX_CGROUP));
    spec.require = c->require & spec.enable;
    /* the read-only bind is what makes a readonly share read-only: never without it */
    if (fs->readonly)
        spec.require |= SANDBOX_STEP(SANDBOX_MOUNT);
    spec.keep_caps = 1ull << CAP_CHOWN | 1ull << CAP_DAC_OVERRIDE | 1ull << CAP_FOWNER | 1ull << CAP_FSETID |
                     1ull << CAP_SETGID | 1ull << CAP_SETUID | 1ull << CAP_SYS_CHROOT | 1ull << CAP_SETPCAP;
    if (fs->readonly)
        spec.ro_paths = share;
    else
        spec.rw_paths = share;
    spec.nofile = c->host_checked && c->host.nofile_hard < VIRTIOFSD_NOFILE ? c->host.nofile_hard : VIRTIOFSD_NOFILE;
    struct fs_forked f = {s, i};
    spec.forked = fs_forked;
    spec.opaque = &f;
    struct strv w = {0};
    pid_t pid;
    int r = sandbox_spawn(&spec, &pid, &w, e);
    for (size_t k = 0; k < w.n; k++)
        sup_log(s, "warning: virtiofsd %s: %s", fs->tag, w.v[k]);
    strv_free(&w);
    if (r < 0) {
        s->fs[i] = (struct sup_fs){0};     /* reaped by sandbox_spawn */
        record(s, i);
        sup_save_state(s);
    }
    return r;
}

int virtiofs_open(void *opaque, const struct vm_def *d, size_t i, int *fd, struct qv_err *e)
{
    struct sup *s = opaque;
    const struct vm_fs *fs = &d->filesystems[i];
    struct stat st;
    /* checked at define; the directory may have gone since */
    if (stat(fs->source, &st) < 0)
        return qv_failerr(e, -errno, "filesystems[%zu] (%s): %s", i, fs->tag, fs->source);
    if (!S_ISDIR(st.st_mode))
        return qv_fail(e, -ENOTDIR, "filesystems[%zu] (%s): %s is not a directory", i, fs->tag, fs->source);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/fs%zu.sock", s->run_dir, i);
    int lfd = -1, cfd = -1;
    int r = unix_listen(path, 1, &lfd, e);
    if (r == 0)
        r = unix_connect(path, &cfd, e);
    unlink(path);
    if (r == 0) {
        /* record before you create: the entry exists (pid 0) before the fork */
        s->fs[i] = (struct sup_fs){0};
        record(s, i);
        sup_save_state(s);
        r = spawn_virtiofsd(s, i, lfd, e);
    }
    if (lfd >= 0)
        close(lfd);
    if (r < 0) {
        if (cfd >= 0)
            close(cfd);
        return qv_prefix(e, "filesystems[%zu] (%s): virtiofsd: ", i, fs->tag);
    }
    sup_log(s, "virtiofsd pid %d serves %s as %s%s", (int)s->fs[i].pid, fs->source, fs->tag,
            fs->readonly ? " (read-only)" : "");
    *fd = cfd;
    return 0;
}

/* pid still the process that was recorded */
static bool same_process(pid_t pid, unsigned long long start)
{
    unsigned long long now;
    return pid > 0 && proc_start_time(pid, &now) == 0 && now == start;
}

void virtiofs_child_exited(struct sup *s)
{
    for (size_t i = 0; i < VM_MAX_FILESYSTEMS; i++) {
        struct sup_fs *f = &s->fs[i];
        int st;
        if (!f->child || f->pid <= 0 || waitpid(f->pid, &st, WNOHANG) != f->pid)
            continue;
        /* after QEMU it is expected (the connection closed); before, the guest's share is dead */
        if (qemu_running(s) && !s->expected_exit && i < s->def.nfilesystems)
            sup_log(s, "warning: virtiofsd of %s (pid %d) exited (%s %d) while QEMU runs: the guest's share %s no "
                    "longer answers until the VM is restarted", s->def.filesystems[i].tag, (int)f->pid,
                    WIFEXITED(st) ? "status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
                    s->def.filesystems[i].tag);
        *f = (struct sup_fs){0};
        if (i < s->def.nfilesystems) {
            record(s, i);
            sup_save_state(s);
        }
    }
}

static void kill_recorded(struct sup *s, pid_t pid, unsigned long long start, bool child, const char *tag)
{
    if (child) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return;
    }
    if (!same_process(pid, start))
        return;     /* gone, or the pid is someone else's now */
    sup_log(s, "stopping virtiofsd of %s (pid %d), started by an earlier supervisor", tag, (int)pid);
    kill(pid, SIGKILL);
    /* not our child: its parent reaps it; wait a little for it to vanish */
    for (int k = 0; k < 100 && same_process(pid, start); k++)
        usleep(10000);
}

void virtiofs_after_exit(struct sup *s)
{
    for (size_t i = 0; i < VM_MAX_FILESYSTEMS; i++) {
        struct sup_fs *f = &s->fs[i];
        if (f->pid > 0)
            kill_recorded(s, f->pid, f->start, f->child, i < s->def.nfilesystems ? s->def.filesystems[i].tag : "?");
        *f = (struct sup_fs){0};
    }
    if (s->rs.resources)
        json_object_object_del(s->rs.resources, "virtiofsd");
}

static bool entry(json_object *a, size_t i, pid_t *pid, unsigned long long *start, const char **tag)
{
    json_object *o = json_object_array_get_idx(a, i), *v;
    if (!o || !json_object_object_get_ex(o, "pid", &v))
        return false;
    *pid = json_object_get_int(v);
    *start = json_object_object_get_ex(o, "start", &v) ? json_object_get_uint64(v) : 0;
    *tag = json_object_object_get_ex(o, "tag", &v) ? json_object_get_string(v) : "?";
    return *pid > 0;
}

void virtiofs_reattach(struct sup *s)
{
    json_object *a;
    if (!s->rs.resources || !json_object_object_get_ex(s->rs.resources, "virtiofsd", &a) ||
        !json_object_is_type(a, json_type_array))
        return;
    for (size_t i = 0; i < json_object_array_length(a) && i < VM_MAX_FILESYSTEMS; i++) {
        pid_t pid;
        unsigned long long start;
        const char *tag;
        if (!entry(a, i, &pid, &start, &tag))
            continue;
        if (same_process(pid, start)) {
            s->fs[i] = (struct sup_fs){.pid = pid, .start = start};
            sup_log(s, "virtiofsd of %s (pid %d) still serves the guest", tag, (int)pid);
        } else {
            sup_log(s, "warning: virtiofsd of %s (pid %d) is gone: the guest's share no longer answers until the "
                    "VM is restarted", tag, (int)pid);
        }
    }
}

void virtiofs_cleanup_recorded(struct sup *s, json_object *res)
{
    json_object *a;
    if (!res || !json_object_object_get_ex(res, "virtiofsd", &a) || !json_object_is_type(a, json_type_array))
        return;
    for (size_t i = 0; i < json_object_array_length(a); i++) {
        pid_t pid;
        unsigned long long start;
        const char *tag;
        if (entry(a, i, &pid, &start, &tag))
            kill_recorded(s, pid, start, false, tag);
    }
}

json_object *virtiofs_status_json(struct sup *s)
{
    if (!s->def.nfilesystems)
        return NULL;
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < s->def.nfilesystems; i++) {
        const struct vm_fs *fs = &s->def.filesystems[i];
        json_object *o = json_object_new_object();
        json_object_object_add(o, "tag", json_object_new_string(fs->tag));
        json_object_object_add(o, "source", json_object_new_string(fs->source));
        json_object_object_add(o, "readonly", json_object_new_boolean(fs->readonly));
        if (s->fs[i].pid > 0) {
            json_object_object_add(o, "pid", json_object_new_int(s->fs[i].pid));
            json_object *conf = NULL;
            struct qv_err e = {0};
            if (sandbox_inspect(s->fs[i].pid, "/sys/fs/cgroup", &conf, &e) < 0)
                conf = json_object_new_string(e.msg);
            json_object_object_add(o, "confinement", conf);
        }
        json_object_array_add(a, o);
    }
    return a;
}
