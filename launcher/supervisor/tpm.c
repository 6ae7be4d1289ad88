/* The VM's TPM 2.0: one swtpm, a sibling of QEMU, started by the supervisor right
 * before QEMU, as virtiofsd is (virtiofs.c).
 *
 * The socket: a socketpair. swtpm gets one end as its control channel
 * (--ctrl type=unixio,clientfd=3), QEMU the other (-chardev socket,fd=N); QEMU then
 * hands swtpm the data channel over it (CMD_SET_DATAFD). Neither opens a path.
 *
 * The state: var/lib/qvisor/tpm/NAME (0700), kept across starts, owned by the uid
 * swtpm runs as. That is QEMU's uid for this run, which a leased uid may change from
 * one start to the next: the directory and its files are given to this run's uid
 * before swtpm starts. swtpm creates the state on the first start (a TPM with no EK
 * certificates: swtpm_setup's certificate authority is not used). `undefine` removes
 * it unless --keep-tpm; `clone` gives the clone a new, empty TPM (a TPM's keys are
 * its identity and are not copied).
 *
 * What confines it (sandbox_spawn): QEMU's uid and gid, no capabilities at all,
 * no_new_privs, our seccomp deny list and then swtpm's own allow list (it loads one by
 * default), a mount namespace that sees the system paths read-only and only its own
 * state directory writable, an empty network namespace; no cgroup (the VM's holds
 * QEMU alone).
 *
 * Lifetime: with --terminate swtpm ends when its data channel closes, i.e. with QEMU.
 * It has no PR_SET_PDEATHSIG: the supervisor may die and be restarted while the guest
 * runs and its TPM must live on, as QEMU does. Its pid and start time are in
 * state.json before it runs; a new supervisor takes it over with a live QEMU, or kills
 * it when QEMU is gone (a swtpm whose QEMU never came would wait forever otherwise). */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "launcher/supervisor/internal.h"

#define SWTPM "/usr/bin/swtpm"
#define SWTPM_EXIT_WAIT_MS 2000    /* after QEMU: swtpm writes its state and ends by itself */

int vm_tpm_dir(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_LIB "/tpm/%s", name);
}

int vm_tpm_remove(const struct qv_paths *p, const char *name)
{
    char dir[PATH_MAX];
    vm_tpm_dir(p, name, dir, sizeof(dir));
    DIR *dh = opendir(dir);
    if (!dh)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *de;
    int r = 1;
    while ((de = readdir(dh)))
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
            unlinkat(dirfd(dh), de->d_name, 0) < 0 && errno != ENOENT)
            r = -errno;
    closedir(dh);
    if (r > 0 && rmdir(dir) < 0)
        r = -errno;
    return r;
}

static void record(struct sup *s)
{
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object *o = json_object_new_object();
    json_object_object_add(o, "pid", json_object_new_int(s->tpm.pid));
    json_object_object_add(o, "start", json_object_new_uint64(s->tpm.start));
    json_object_object_add(s->rs.resources, "swtpm", o);
}

/* In the parent, before the child does anything: its pid is recorded or it never runs. */
static int tpm_forked(pid_t pid, void *opaque, struct qv_err *e)
{
    struct sup *s = opaque;
    unsigned long long start;
    int r = proc_start_time(pid, &start);
    if (r < 0)
        return qv_failerr(e, r, "reading the start time of swtpm pid %d", (int)pid);
    s->tpm = (struct sup_fs){.pid = pid, .start = start, .child = true};
    record(s);
    if ((r = runstate_write(s->paths, s->def.name, &s->rs, e)) < 0) {
        s->tpm = (struct sup_fs){0};
        record(s);
        return qv_prefix(e, "swtpm not started, its pid could not be recorded: ");
    }
    sup_crash_point("swtpm-recorded");
    return 0;
}

/* The state directory, made or taken over for this run's uid. */
static int state_dir(struct sup *s, char *dir, size_t len, struct qv_err *e)
{
    char parent[PATH_MAX];
    qv_path(s->paths, parent, sizeof(parent), QV_LIB "/tpm");
    int r = mkdir_p(parent, 0700);
    if (r < 0)
        return qv_failerr(e, r, "%s", parent);
    vm_tpm_dir(s->paths, s->def.name, dir, len);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return qv_failerr(e, -errno, "%s", dir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return qv_failerr(e, -errno, "%s", dir);
    uid_t uid = s->conf.uid;
    gid_t gid = s->conf.gid;
    r = 0;
    if (fchown(dfd, uid, gid) < 0 || fchmod(dfd, 0700) < 0)
        r = qv_failerr(e, -errno, "%s", dir);
    DIR *dh = r == 0 ? fdopendir(dfd) : NULL;
    if (!dh) {
        close(dfd);
        return r < 0 ? r : qv_failerr(e, -errno, "%s", dir);
    }
    struct dirent *de;
    while (r == 0 && (de = readdir(dh))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (fchownat(dirfd(dh), de->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
            r = qv_failerr(e, -errno, "%s/%s", dir, de->d_name);
    }
    closedir(dh);
    return r;
}

static int spawn_swtpm(struct sup *s, const char *dir, int sock, struct qv_err *e)
{
    struct confine *c = &s->conf;
    char state[PATH_MAX + 32];
    snprintf(state, sizeof(state), "dir=%s,mode=0600", dir);
    const char *argv[] = {SWTPM, "socket", "--tpm2", "--tpmstate", state, "--ctrl", "type=unixio,clientfd=3",
                          "--terminate", NULL};
    const char *rw[] = {dir, NULL};
    struct sandbox_fd map = {.source = sock, .target = 3};
    struct sandbox_spec spec;
    confine_sibling_spec(s, &spec, argv, &map);
    spec.enable &= ~SANDBOX_STEP(SANDBOX_CGROUP);
    if (!s->def.sandbox.seccomp)
        spec.enable &= ~SANDBOX_STEP(SANDBOX_SECCOMP);
    spec.require = c->require & spec.enable;
    spec.uid = c->uid;
    spec.gid = c->gid;
    spec.rw_paths = rw;
    spec.nofile = 64;
    spec.forked = tpm_forked;
    spec.opaque = s;
    struct strv w = {0};
    pid_t pid;
    int r = sandbox_spawn(&spec, &pid, &w, e);
    for (size_t k = 0; k < w.n; k++)
        sup_log(s, "warning: swtpm: %s", w.v[k]);
    strv_free(&w);
    if (r < 0) {
        s->tpm = (struct sup_fs){0};     /* reaped by sandbox_spawn */
        record(s);
        sup_save_state(s);
    }
    return r;
}

int tpm_open(void *opaque, const struct vm_def *d, int *fd, struct qv_err *e)
{
    struct sup *s = opaque;
    char dir[PATH_MAX];
    int r = state_dir(s, dir, sizeof(dir), e);
    if (r < 0)
        return qv_prefix(e, "tpm: state directory: ");
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return qv_failerr(e, -errno, "tpm: socketpair");
    /* record before you create: the entry exists (pid 0) before the fork */
    s->tpm = (struct sup_fs){0};
    record(s);
    sup_save_state(s);
    r = spawn_swtpm(s, dir, sv[1], e);
    close(sv[1]);
    if (r < 0) {
        close(sv[0]);
        return qv_prefix(e, "tpm (%s): swtpm: ", tpm_model_names[d->tpm]);
    }
    sup_log(s, "swtpm pid %d serves the %s TPM 2.0, its state in %s", (int)s->tpm.pid, tpm_model_names[d->tpm], dir);
    if (d->boot.kernel && d->boot.initrd && d->boot.firmware != FIRMWARE_UEFI)
        sup_log(s, "warning: tpm: QEMU loads the initrd of a direct kernel boot over the top of the ACPI tables "
                   "a TPM enlarges: the guest boots without ACPI (README, \"Direct kernel boot and a TPM\"); "
                   "boot through firmware, or give the guest a tpm-tis with tpm_tis.force=1 acpi=off");
    *fd = sv[0];
    return 0;
}

static bool same_process(pid_t pid, unsigned long long start)
{
    unsigned long long now;
    return pid > 0 && proc_start_time(pid, &now) == 0 && now == start;
}

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

void tpm_child_exited(struct sup *s)
{
    int st;
    if (!s->tpm.child || s->tpm.pid <= 0 || waitpid(s->tpm.pid, &st, WNOHANG) != s->tpm.pid)
        return;
    if (qemu_running(s) && !s->expected_exit)
        sup_log(s, "warning: swtpm (pid %d) exited (%s %d) while QEMU runs: the guest's TPM no longer answers until "
                "the VM is restarted", (int)s->tpm.pid, WIFEXITED(st) ? "status" : "signal",
                WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    s->tpm = (struct sup_fs){0};
    record(s);
    sup_save_state(s);
}

/* swtpm ends by itself once QEMU's data channel closed (it saves its state first):
 * give it a moment, then SIGTERM, then SIGKILL. */
static bool swtpm_gone(pid_t pid, unsigned long long start, bool child)
{
    return child ? waitpid(pid, NULL, WNOHANG) == pid : !same_process(pid, start);
}

static void stop_recorded(struct sup *s, pid_t pid, unsigned long long start, bool child)
{
    const int term_at = SWTPM_EXIT_WAIT_MS / 10, kill_at = term_at + 50;
    for (int k = 0; k <= kill_at + 50; k++) {
        if (swtpm_gone(pid, start, child))
            return;
        if (k == term_at || k == kill_at) {
            sup_log(s, "stopping swtpm (pid %d)%s with %s", (int)pid, child ? "" : ", started by an earlier supervisor,",
                    k == term_at ? "SIGTERM" : "SIGKILL");
            kill(pid, k == term_at ? SIGTERM : SIGKILL);
        }
        usleep(10000);
    }
    if (child)
        waitpid(pid, NULL, 0);
}

void tpm_after_exit(struct sup *s)
{
    if (s->tpm.pid > 0)
        stop_recorded(s, s->tpm.pid, s->tpm.start, s->tpm.child);
    s->tpm = (struct sup_fs){0};
    if (s->rs.resources)
        json_object_object_del(s->rs.resources, "swtpm");
}

static bool entry(json_object *res, pid_t *pid, unsigned long long *start)
{
    json_object *o, *v;
    if (!res || !json_object_object_get_ex(res, "swtpm", &o) || !json_object_object_get_ex(o, "pid", &v))
        return false;
    *pid = json_object_get_int(v);
    *start = json_object_object_get_ex(o, "start", &v) ? json_object_get_uint64(v) : 0;
    return *pid > 0;
}

void tpm_reattach(struct sup *s)
{
    pid_t pid;
    unsigned long long start;
    if (!entry(s->rs.resources, &pid, &start))
        return;
    if (same_process(pid, start)) {
        s->tpm = (struct sup_fs){.pid = pid, .start = start};
        sup_log(s, "swtpm (pid %d) still serves the guest's TPM", (int)pid);
    } else {
        sup_log(s, "warning: swtpm (pid %d) is gone: the guest's TPM no longer answers until the VM is restarted",
                (int)pid);
    }
}

void tpm_cleanup_recorded(struct sup *s, json_object *res)
{
    pid_t pid;
    unsigned long long start;
    if (entry(res, &pid, &start))
        stop_recorded(s, pid, start, false);
}

json_object *tpm_status_json(struct sup *s)
{
    if (s->def.tpm == TPM_NONE)
        return NULL;
    char dir[PATH_MAX];
    vm_tpm_dir(s->paths, s->def.name, dir, sizeof(dir));
    json_object *o = json_object_new_object();
    json_object_object_add(o, "model", json_object_new_string(tpm_model_names[s->def.tpm]));
    json_object_object_add(o, "state", json_object_new_string(dir));
    if (s->tpm.pid > 0) {
        json_object_object_add(o, "pid", json_object_new_int(s->tpm.pid));
        json_object *conf = NULL;
        struct qv_err e = {0};
        if (sandbox_inspect(s->tpm.pid, "/sys/fs/cgroup", &conf, &e) < 0)
            conf = json_object_new_string(e.msg);
        json_object_object_add(o, "confinement", conf);
    }
    return o;
}
