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
 * before swtpm starts. At the first start (no state yet) swtpm_setup manufactures it, as
 * libvirt does: EKs (RSA 2048, ECC P-384) with their certificates and a platform
 * certificate in the TPM's NV RAM (write-locked), signed by a local CA (swtpm_localca)
 * whose key stays root's, in var/lib/qvisor/tpm-ca (host.json's tpm_ca elsewhere), never
 * in reach of a VM. swtpm_setup runs as a watched child of the start, before QEMU. Where
 * swtpm-tools is not installed, swtpm makes the state itself, without certificates (the
 * log says so). `undefine` removes
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
#define SWTPM_SETUP "/usr/bin/swtpm_setup"
#define SWTPM_LOCALCA "/usr/bin/swtpm_localca"
#define TPM_STATE_FILE "tpm2-00.permall"
#define TPM_SETUP_TIMEOUT_MS 180000     /* key generation, twice, on a loaded host */
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

/* ---- the first start: swtpm_setup with EK and platform certificates ---- */

static void ca_dir(struct sup *s, char *out, size_t len)
{
    if (s->hc.tpm_ca)
        snprintf(out, len, "%s", s->hc.tpm_ca);
    else
        qv_path(s->paths, out, len, QV_LIB "/tpm-ca");
}

/* swtpm_setup's and swtpm_localca's configuration, in the CA's directory (root's, 0700) */
static int ca_config(struct sup *s, const char *ca, char *setup_conf, size_t len, struct qv_err *e)
{
    char conf[PATH_MAX + 32], opts[PATH_MAX + 32];
    int r = mkdir_p(ca, 0700);
    if (r < 0 || chmod(ca, 0700) < 0)
        return qv_failerr(e, r < 0 ? r : -errno, "%s", ca);
    snprintf(conf, sizeof(conf), "%s/swtpm-localca.conf", ca);
    snprintf(opts, sizeof(opts), "%s/swtpm-localca.options", ca);
    snprintf(setup_conf, len, "%s/swtpm_setup.conf", ca);
    _cleanup_free_ char *c = qv_xasprintf("statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\n"
                                          "certserial = %s/certserial\n", ca, ca, ca, ca);
    static const char o[] = "--platform-manufacturer qvisor\n--platform-version 2.1\n--platform-model QEMU\n";
    _cleanup_free_ char *sc = qv_xasprintf("create_certs_tool = " SWTPM_LOCALCA "\ncreate_certs_tool_config = %s\n"
                                           "create_certs_tool_options = %s\nactive_pcr_banks = sha256\n", conf, opts);
    if ((r = write_file_atomic(conf, c, strlen(c), 0600, e)) < 0 ||
        (r = write_file_atomic(opts, o, strlen(o), 0600, e)) < 0 ||
        (r = write_file_atomic(setup_conf, sc, strlen(sc), 0600, e)) < 0)
        return r;
    (void)s;
    return 0;
}

int tpm_setup_begin(struct sup *s, struct sup_child *c, struct qv_err *e)
{
    char parent[PATH_MAX], dir[PATH_MAX], state[PATH_MAX + 32];
    vm_tpm_dir(s->paths, s->def.name, dir, sizeof(dir));
    snprintf(state, sizeof(state), "%s/" TPM_STATE_FILE, dir);
    if (path_exists(state))
        return 0;
    if (access(SWTPM_SETUP, X_OK) < 0 || access(SWTPM_LOCALCA, X_OK) < 0) {
        sup_log(s, "tpm: no %s: the TPM is made without EK certificates (apt-get install swtpm-tools)",
                access(SWTPM_SETUP, X_OK) < 0 ? SWTPM_SETUP : SWTPM_LOCALCA);
        return 0;
    }
    qv_path(s->paths, parent, sizeof(parent), QV_LIB "/tpm");
    int r = mkdir_p(parent, 0700);
    if (r < 0 || (mkdir(dir, 0700) < 0 && errno != EEXIST))
        return qv_failerr(e, r < 0 ? r : -errno, "%s: tpm: %s", s->def.name, r < 0 ? parent : dir);
    char ca[PATH_MAX], conf[PATH_MAX + 32];
    ca_dir(s, ca, sizeof(ca));
    if ((r = ca_config(s, ca, conf, sizeof(conf), e)) < 0)
        return qv_prefix(e, "%s: tpm: the local CA: ", s->def.name);
    char vmid[320];
    snprintf(vmid, sizeof(vmid), "%s:%s", s->def.name, s->def.uuid);
    const char *argv[] = {SWTPM_SETUP, "--tpm2", "--tpmstate", dir, "--config", conf, "--create-ek-cert",
                          "--create-platform-cert", "--lock-nvram", "--not-overwrite", "--vmid", vmid, NULL};
    if ((r = sup_child_spawn(c, argv, TPM_SETUP_TIMEOUT_MS, e)) < 0)
        return qv_prefix(e, "%s: tpm: ", s->def.name);
    sup_log(s, "tpm: manufacturing its TPM with EK and platform certificates (swtpm_setup pid %d, CA %s)", (int)c->pid,
            ca);
    return 1;
}

int tpm_setup_done(struct sup *s, int status, char *output, struct qv_err *e)
{
    if (status == 0) {
        sup_log(s, "tpm: EK and platform certificates are in the TPM's NV RAM");
        return 0;
    }
    /* a half-made state must not pass for a TPM next time: it is made again */
    vm_tpm_remove(s->paths, s->def.name);
    for (char *p = output; *p; p++)
        if (*p == '\n')
            *p = ' ';
    return qv_fail(e, -EIO, "%s: tpm: swtpm_setup %s %d: %s", s->def.name,
                   status > 128 ? "was killed by signal" : "exited with", status > 128 ? status - 128 : status,
                   output[0] ? output : "no output");
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
