/* launcher/supervisor: the per-VM and per-network daemons and their client side.
 * A VM's supervisor (`qvisor run`) owns the only QMP connection to its QEMU and
 * serves ctl.sock; the CLI talks to it only through the functions below. Its
 * insides (struct sup and its parts) are in internal.h. */
#ifndef QV_SUPERVISOR_H
#define QV_SUPERVISOR_H

#include "launcher/model/model.h"
#include "launcher/model/netdef.h"

/* ---- the supervisor and its control socket ---------------------------------------------- */
/* `qvisor run`: supervises NAME until its QEMU is gone: takes over the QEMU of a
 * previous run if one lives, starts one otherwise. ready_fd (or -1) gets "ok\n"
 * once the guest runs, or "error CODE MESSAGE\n". echo_fd (or -1) gets a copy of
 * the supervisor's log lines (stderr for a foreground run under systemd). */
#define SUP_INCOMING_WAIT_MS (300 * 1000)
struct sup_opts {
    int ready_fd, echo_fd;
    bool attach_only;       /* take over a running QEMU, never start one (-ESRCH) */
    /* a start (not a take-over): the guest stays paused once QEMU is set up; and/or it
     * resumes from this full snapshot, loaded before it runs (NULL: boots) */
    bool paused;
    const char *load_snapshot;
    /* a start that restores this saved state (qvisor save/managedsave made it); removed
     * once restored when restore_remove (a managed save). NULL: none */
    const char *restore_file;
    bool restore_remove;
    /* a start that receives the guest from a source supervisor (migrate-incoming):
     * listens on this numeric ADDR:PORT; NULL: none */
    const char *incoming_listen;
    /* with incoming_listen: the source copies local disks (migrate --copy-storage); QEMU
     * starts once the source said which, and their images are made (migstore_in.c) */
    bool incoming_copy_storage;
    /* ...or switches to post-copy (migrate --postcopy): QEMU may use userfaultfd */
    bool incoming_postcopy;
    /* ...over TLS with the credentials in this directory (migrate_tls.c); NULL: plain */
    const char *incoming_tls;
    /* ...whose source must show this token (NULL: one made at random, shown by status) */
    const char *incoming_token;
    /* ...for at most this long (0: SUP_INCOMING_WAIT_MS); then it cleans up and ends */
    int incoming_timeout_ms;
    /* `qvisor boot`'s end of a socketpair, or -1. Its VM lives only as long as boot:
     * the end closing (boot exited, or was killed -9) kills QEMU, and QEMU gets
     * PR_SET_PDEATHSIG so it dies with this supervisor too. "keep\n" read from it lets
     * the VM outlive boot (--keep-on-failure). Once QEMU is gone, one line goes back:
     * {"status": QEMU's exit status or null, "panicked": bool, "reason": "..."}. */
    int boot_fd;
    /* SIGTERM (systemctl stop): how long the guest gets after the ACPI power button
     * before QEMU is made to quit (0: the default, 60 s) */
    int stop_timeout_ms;
};
/* Takes `def` over (it is left empty): a defined VM's as loaded, or a transient one's,
 * whose run-directory definition is removed once its QEMU is gone. */
int supervisor_run(const struct qv_paths *p, struct vm_def *def, const struct sup_opts *o, struct qv_err *e);
/* CLI side of ctl.sock: -EBUSY "web1 is not running" when no supervisor answers. */
int ctl_connect(const struct qv_paths *p, const char *name, int *fd, struct qv_err *e);
int ctl_send(int fd, json_object *req, struct qv_err *e);
int ctl_read_line(int fd, struct buf *in, int timeout_ms, char **line, struct qv_err *e);
/* {"ok":true,...} -> *reply; {"ok":false,"error":..,"code":..} -> that error. */
int ctl_parse_reply(const char *line, json_object **reply, struct qv_err *e);
/* One request, one reply; req is consumed. */
int ctl_call(const struct qv_paths *p, const char *name, json_object *req, int timeout_ms, json_object **reply,
             struct qv_err *e);
json_object *ctl_request(const char *cmd);

/* ---- the resources behind a plan's fds ------------------------------------------------ */
struct launch_ctx {
    const struct qv_paths *paths;
    const struct host_facts *facts;
    const char *run_dir;    /* where qmp.sock, console.sock and qga.sock are bound */
    /* Opens the tap (or macvtap) fds of NIC `nic`, one per queue; NULL refuses such NICs. */
    int (*open_tap)(void *opaque, const struct vm_def *d, size_t nic, int *fds, struct qv_err *e);
    /* Starts the virtiofsd of filesystem `index` and gives the end of its socket that
     * QEMU connects with; NULL refuses shares. */
    int (*open_fs)(void *opaque, const struct vm_def *d, size_t index, int *fd, struct qv_err *e);
    /* Starts the VM's swtpm and gives the end of its control socket QEMU gets; NULL
     * refuses a TPM. */
    int (*open_tpm)(void *opaque, const struct vm_def *d, int *fd, struct qv_err *e);
    /* Opens host USB device i's node for QEMU; NULL refuses USB host devices. */
    int (*open_usb)(const struct vm_def *d, size_t i, int *fd, struct qv_err *e);
    void *opaque;
    bool overlays_made;     /* the throw-away overlays exist (launch_overlay_cmd ran) */
    const char *work_dir;   /* a boot VM's private directory, where its overlays are; NULL:
                             * var/lib/qvisor/overlays */
    const char *seed_iso;   /* the cloud-init seed built for this start; NULL refuses a seed */
    /* Opens credential i as an fd QEMU (uid/gid) can read; NULL refuses credentials. */
    int (*open_credential)(const struct vm_def *d, size_t i, uid_t uid, gid_t gid, size_t *total, int *fd,
                           struct qv_err *e);
    uid_t qemu_uid;
    gid_t qemu_gid;
};
/* Opens everything the plan's fds name: binds the sockets, opens images, copies the
 * UEFI variable store on first use, opens throw-away overlays (unlinked once open,
 * so they vanish with QEMU; created here, waiting for qemu-img, unless overlays_made).
 * fds[i] belongs to p->slots[i]. On error nothing stays open. */
int launch_open_resources(const struct launch_plan *p, const struct vm_def *d, const struct launch_ctx *ctx,
                          int *fds, struct qv_err *e);
void launch_close_resources(int *fds, size_t n);
/* The qemu-img command that creates disk i's throw-away overlay at *path (a stale one
 * is removed first) in work_dir (NULL: var/lib/qvisor/overlays), for a caller that runs
 * it without waiting; argv points into d. */
#define LAUNCH_OVERLAY_ARGV 11
#define LAUNCH_OVERLAY_TIMEOUT_MS 30000
int launch_overlay_cmd(const struct qv_paths *p, const char *work_dir, const struct vm_def *d, size_t i, char path[PATH_MAX],
                       const char *argv[LAUNCH_OVERLAY_ARGV], struct qv_err *e);
/* Its failure (exit status and output), with the half-made overlay removed. */
int launch_overlay_failed(const struct vm_disk *k, const char *path, int status, const char *output, struct qv_err *e);
/* var/lib/qvisor/nvram/NAME_VARS.fd */
int vm_nvram_path(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* var/lib/qvisor/tpm/NAME: the swtpm state of a VM with a TPM */
int vm_tpm_dir(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* Removes that directory and the files in it (undefine): 1 removed, 0 there was none,
 * or -errno. */
int vm_tpm_remove(const struct qv_paths *p, const char *name);

/* ---- running networks (netrun.c) ---------------------------------------------------------- */
/* `qvisor net run`: bridge, rules and dnsmasq until SIGTERM; ready_fd as for VMs. */
int network_run(const struct qv_paths *p, const char *name, int ready_fd, int echo_fd, struct qv_err *e);
/* Stops the network's supervisor, or cleans up after a dead one (-ESRCH: nothing ran). */
int network_stop(const struct qv_paths *p, const char *name, int timeout_ms, struct qv_err *e);

/* ---- a running network changed live (netlive.c) ---------------------------------------------- */
/* net update --live: the host or forward applied to the running network (-ESRCH when it
 * is not running); what was done is appended to `applied`, one line each. */
int network_update_live(const struct qv_paths *p, const char *name, enum net_update_op op, enum net_update_section sec,
                        json_object *item, struct strv *applied, struct qv_err *e);
/* net edit of a running network: its hosts and forwards follow `edited` at once; the
 * other parts that differ (which wait for a restart) are appended to `restart`. */
int network_edit_live(const struct qv_paths *p, const struct net_def *edited, struct strv *applied,
                      struct strv *restart, struct qv_err *e);
/* run/qvisor/networks/NAME/live.json: the definition a network runs with. */
int network_live_write(const char *dir, const struct net_def *d, struct qv_err *e);
int network_live_read(const char *dir, struct net_def *out, struct qv_err *e);

/* Removes what dead supervisors left (see netgc.c); what it removed, one line each,
 * is added to `removed`. */
int network_gc(const struct qv_paths *paths, struct strv *removed, struct qv_err *err);

/* Runs `qvisor --root ROOT ARGS... --ready-fd 3` detached and waits (at most
 * timeout_ms) for it to say it is ready: 0, or its error (-ETIMEDOUT: it goes on
 * starting in the background). */
int supervisor_spawn(const struct qv_paths *paths, const char *const *args, int timeout_ms, const char *name,
                     struct qv_err *err);

#endif
