/* Internal to launcher/supervisor: the per-VM supervisor's core (core.c) and its
 * parts with their own state: ctl.sock (ctl.c; its verbs in ctl_verbs.c), the QMP monitor (monitor.c), the
 * console and log (console.c), confinement (confine.c), NICs (vmnet.c), hotplug
 * (hotplug*.c), a running VM's disks (disks.c), CD-ROM media (media.c), QEMU's jobs
 * (jobs.c), block jobs (blockjobs.c, blockprep.c), snapshots (snapshots.c, snapshot_create.c,
 * snapshot_full.c, snapshot_merge.c), the guest agent channel (agent.c, agent_ops.c; agent_chan.h),
 * virtiofs shares and their virtiofsd processes (virtiofs.c), save and migration
 * (migrate.c out, migrate_in.c in), cpu.pinning of QEMU's threads (pinning.c); networks: their
 * supervisor (netrun.c), live changes (netlive.c), garbage collection (netgc.c).
 * One process per VM owns the only QMP connection.
 * This header has struct sup and the core's interfaces; the disks' (block.h), the
 * processes beside QEMU's (siblings.h) and migration's (migration.h) are included at
 * its end. */
#ifndef QV_SUP_INTERNAL_H
#define QV_SUP_INTERNAL_H

#include <sys/socket.h>
#include <sys/un.h>

#include "launcher/supervisor/supervisor.h"
#include "qmp/qmp.h"
#include "netsetup/netsetup.h"
#include "sandbox/sandbox.h"

#define CTL_REQUEST_MAX (64u << 10) /* one request line; a longer one ends the connection */
#define CRASH_WINDOW_MS (10 * 60 * 1000)
#define CRASH_MAX 5                 /* restarts within the window before giving up */

/* ---- networks (netrun.c, netlive.c) ---- */
/* dnsmasq's settings for network d run from dir; hosts has room for d's hosts. */
void net_dnsmasq_config(const struct net_def *d, const char *dir, struct netsetup_dnsmasq *c,
                        struct netsetup_dhcp_host *hosts);

/* ---- sd_notify, without libsystemd (notify.c) ---------------------------------------------- */
#include <sys/un.h>
struct notify {
    int fd;
    struct sockaddr_un addr;
    socklen_t len;
    uint64_t watchdog_ms;   /* 0: no watchdog */
    uint64_t next_ping;
};
/* notify.c: the sd_notify protocol, without libsystemd */
void notify_init(struct notify *n);
void notify_send(struct notify *n, const char *msg);
void notify_close(struct notify *n);


enum ev_kind { EV_QMP, EV_CONSOLE, EV_CTL, EV_CLIENT, EV_SIGNAL, EV_PIDFD, EV_AGENT, EV_BOOT, EV_MIGRATE, EV_MIGCTL, EV_MIGNBD };

struct ev {
    enum ev_kind kind;
    struct sup_client *client;
};



/* What confines this VM's QEMU (confine.c). */
struct confine {
    struct sandbox_host host;
    bool host_checked;
    unsigned require;
    bool have_user;
    uid_t uid;
    gid_t gid;
    gid_t groups[1];
    size_t ngroups;
    struct sandbox_uid_lease lease;
    bool have_cgroup;
    bool private_network;   /* QEMU has an empty network namespace of its own */
    /* QEMU reaches Ceph clusters from the host's namespace through an nft filter on its
     * uid (recorded as resources.cluster_filter, with the addresses it lets through) */
    bool cluster_filter;
    struct strv cluster_addrs;
    uint64_t memory_max;    /* the memory limit in force, for the OOM message */
    struct sandbox_cgroup cg;
    bool joined;            /* this supervisor is in the VM's supervisor/ leaf */
    struct sandbox_cgroup_origin origin;    /* where it was before, to go back to */
    uint64_t oom_before;
};

#define HOTPLUG_MAX 16
enum hotplug_kind { HOTPLUG_DISK, HOTPLUG_NIC, HOTPLUG_HOSTDEV };

/* A device added while the VM runs (hotplug.c). */
struct hotplug_op;
struct hotplug {
    bool used, removing;
    bool pending;           /* being attached: slot and port reserved, not recorded yet */
    bool released_early;    /* DEVICE_DELETED came before device_del's reply */
    struct hotplug_op *op;  /* the attach or removal under way (hotplug.c), NULL if none */
    enum hotplug_kind kind;
    char id[24];            /* QEMU device id: disk3, nic2 */
    int port;               /* pcie-root-port index on q35, else -1 */
    int fdset;              /* disks, USB host devices: the add-fd set; -1 none */
    char file[PATH_MAX];    /* disks; host devices: their name ("usb 046d:c52b", "pci 0000:01:00.0") */
    int nlayers;            /* disks: backing layers below the top, each with its fdset and nodes */
    bool rbd, rbd_key;      /* disks: an rbd node (no fdset left once attached), with secret object ID-key */
    char top[48];           /* disks: the device's root node once a job moved it; "" = "<id>-fmt" */
    /* disks: as attached (the top's format follows snapshots and pivots), for snapshots
     * and block jobs, which treat it as a disk of the definition */
    char volume[160];       /* POOL/NAME when attached with --volume (and the top is still it); "" else */
    enum disk_format format;
    enum disk_cache cache;
    enum disk_aio aio;
    bool readonly, discard;
    char mac[18], tap[16], network[72];   /* NICs */
    size_t nic_index;       /* NICs: their slot in sup.nics */
    struct vm_nic nic;      /* NICs: as attached; type 0 fields when restored */
    unsigned waiting_client;    /* a detach waits for DEVICE_DELETED */
    uint64_t deadline;
};

/* What a CD-ROM drive holds once change-media changed it (media.c). */
struct media_op;
struct cdrom_media {
    bool changed;           /* false: the definition's medium, as QEMU started */
    char file[PATH_MAX];    /* "" empty */
    unsigned gen;           /* its block nodes: cdromN-mGEN-file/-fmt (0: the command line's cdromN-*) */
};

/* A NIC's host side while the VM runs (vmnet.c). */
struct vm_nic_state {
    char tap[16];           /* tap or macvtap name, "" for user NICs */
    char network[72];       /* the managed network holding its filter, "" for none */
    char ip[64];            /* learnt from the network's leases; "" until then */
    bool filtered, macvtap;
};

/* A program the loop watches (child.c): started with an argv, reaped on SIGCHLD. */
struct sup_child {
    pid_t pid;              /* 0: none running */
    int out;                /* the read end of its stdout and stderr; -1 none */
    uint64_t deadline;      /* killed then; its exit reports the failure */
};
/* The clusters of the rbd disks asked again for their monitors and OSDs now and then
 * (cluster_watch.c), one pool at a time. */
struct cluster_watch {
    struct sup_child child;     /* `qvisor pool show POOL --addresses`; pid 0: none */
    char pool[72];
    size_t next_pool;           /* of this round */
    uint64_t at;                /* the next round; 0: not armed */
    bool failing;               /* said so in the log once */
};

/* `qvisor net start NAME` as a watched child (vmnet.c). */
#define NET_START_TIMEOUT_MS 60000
struct net_starter {
    struct sup_child child;
    char name[72];
};

/* A start under way (start.c): autostart networks and throw-away overlays (one
 * watched child at a time: `net start`, qemu-img), then QEMU, then its set-up over QMP up to `cont`; the loop serves meanwhile. */
enum start_phase { START_IDLE, START_PREPARE, START_QMP };
struct start_job {
    enum start_phase phase;
    bool restart;           /* on_crash: a failure leaves the VM crashed */
    bool paused;            /* the guest stays paused once QEMU is set up (start --paused) */
    char load[65];          /* a full snapshot loaded before the guest runs; "" none */
    /* a saved state the guest resumes from (restore, a start after managedsave): QEMU
     * runs with -incoming defer and gets the file once set up (migrate.c); "" none */
    char incoming[PATH_MAX];
    bool incoming_remove;   /* a managed save: removed once restored */
    bool restored;          /* its state is in: the guest ran before, it is no fresh start */
    uint64_t balloon_target; /* a restore: the balloon target its file records (0: none) */
    uint64_t in_poll_at;    /* next query-migrate while the state comes in; 0: none */
    bool failed;            /* set where it failed (often a QMP callback); wound up by start_wind_up */
    bool cancelled;         /* stop or kill asked for while it ran */
    struct qv_err err;
    off_t log_from;         /* QEMU's own words on a failure are in the log from here */
    struct net_starter net;
    struct sup_child overlay;   /* qemu-img creating a throw-away overlay */
    size_t overlay_disk;        /* the disk it is for; the next to look at once it is done */
    char overlay_path[PATH_MAX];
    struct sup_child seed;      /* genisoimage building the cloud-init seed */
    bool seed_built;
    char seed_iso[PATH_MAX];
    struct sup_child tpm_setup; /* swtpm_setup manufacturing a new TPM (tpm.c) */
    bool tpm_checked;
    /* QEMU's monitor handshake: no fixed limit while QEMU or its virtiofsds use CPU
     * (start.c, START_STALL_MS); when that is looked at next (0: not waiting) */
    uint64_t stall_check_at;
    uint64_t qmp_since;             /* QEMU spawned: waiting for its monitor since */
    unsigned long long cpu_seen;    /* their CPU ticks at the last look */
};

struct agent_chan;

/* A share's virtiofsd (virtiofs.c): pid and start time as recorded in state.json. */
#define VIRTIOFSD "/usr/lib/qemu/virtiofsd"     /* the C virtiofsd of qemu-system-common */
struct sup_fs {
    pid_t pid;              /* 0: none */
    unsigned long long start;
    bool child;             /* started by this supervisor: reaped here */
};

/* A QEMU job (jobs.c): block-stream, block-commit, blockdev-mirror, and the generic
 * snapshot-save/load/delete. Its kind's handlers are looked up by name when a new
 * supervisor takes over, so they get no pointer context: what a kind needs to finish
 * is in `data`, recorded in state.json with the job. */
struct sup;
#define SUP_JOBS_MAX 8
#define SUP_JOB_WAITERS 4
#define JOB_POLL_MS 1000        /* query-jobs while jobs run: progress, and events missed */
struct sup_job;
/* err NULL: success, else QEMU's error for the job (or why it is lost). */
typedef void (*sup_job_fn)(struct sup *s, struct sup_job *j, const struct qv_err *err);
struct sup_job_ops {
    const char *kind;       /* "pull", "commit", "copy", "snapshot-save", ...: recorded */
    sup_job_fn on_ready;    /* the job is ready (mirror, active commit); NULL: nothing to do */
    /* Once, when the job is over: concluded (err: its error), refused by QEMU at the
     * start (err: the refusal), or lost (QEMU gone, the job vanished). The job is then
     * dismissed and forgotten; j->fail set here turns a success into a failure for
     * whoever waits. Must be idempotent across a supervisor restart: a supervisor
     * killed between on_done and the dismissal runs it again in its successor. */
    sup_job_fn on_done;
    /* After on_done, once QEMU let go of the job (dismissed, or never had it): what
     * the job held may be removed now (nodes, fdsets, a failed copy's file); err as
     * for on_done. NULL: nothing to do. */
    sup_job_fn on_gone;
};
struct sup_job {
    bool used;
    const struct sup_job_ops *ops;
    char id[48];            /* QEMU's job-id: "qv7-copy-disk0" */
    char disk[24];          /* the device it works on; "" for a VM-wide job */
    char status[16];        /* "starting" until QEMU accepted it, then QEMU's (running, ready, concluded ...) */
    int64_t current, total; /* progress, from query-jobs */
    bool pivot;             /* intent, recorded: job-complete once ready */
    bool finish;            /* intent, recorded: a ready mirror is cancelled softly (copy kept, no pivot) */
    bool ready_seen, completing, cancelling, ending;
    json_object *data;      /* the kind's own; recorded */
    unsigned start_client;  /* answered when QEMU accepted or refused the start; 0: none */
    unsigned waiters[SUP_JOB_WAITERS];  /* answered when the job is over (--wait) */
    struct qv_err fail;     /* set by on_done: the kind's own part failed */
    json_object *result;    /* set by on_done: merged into the waiters' reply */
    uint64_t started_ms;    /* wall clock */
    struct qv_err end;      /* QEMU's error for a concluded job, until it is dismissed */
    /* kept when the slot is freed: a slot with commands in flight is not reused, so a
     * late reply finds its job or an empty slot, never another job */
    struct sup *sup;
    unsigned pending;
};

struct mig_op;
struct migstore_in;
struct migstore_out;
struct sup {
    const struct qv_paths *paths;
    struct vm_def def;
    struct host_config hc;
    struct host_facts facts;
    char run_dir[PATH_MAX];
    char work_dir[PATH_MAX];    /* a boot VM's private directory (its log, overlays); "" otherwise */
    int lock_fd, log_fd, epfd, sigfd, ready_fd, echo_fd;

    pid_t qemu_pid;
    int pidfd;
    bool qemu_is_child;
    struct qmp *qmp;
    struct ev ev_qmp, ev_signal, ev_pidfd;
    struct sup_console *con;    /* the serial console and the log it feeds (console.c) */
    struct sup_ctl *ctl;        /* the control socket and its clients (ctl.c) */
    struct sup_mon *mon;        /* QMP connection lost while QEMU lives: monitor.c reconnects */
    struct vm_runstate rs;
    /* the guest agent channel (agent.c); NULL until a VM with "agent": true runs */
    struct agent_chan *agent;
    struct ev ev_agent;

    /* stopping: graceful (powerdown, again, quit, SIGTERM, SIGKILL) or forced */
    struct {                    /* (lifecycle.c) */
        int phase;
        uint64_t next;          /* when the next phase starts */
        uint64_t deadline;      /* graceful part ends: quit */
    } stop;
    bool expected_exit;         /* QEMU's exit is not a crash */
    bool resetting;             /* we reset a powered-off or crashed guest: its STOP is no pause */
    bool never_ran;             /* QEMU is still in prelaunch: no `cont` yet */
    char exit_reason[256];

    struct {                    /* crashes and the restarts they cause (lifecycle.c) */
        uint64_t at[CRASH_MAX + 1];
        int n;
        uint64_t restart_at;    /* a crashed QEMU is started again then; 0: none */
    } crash;
    struct start_job start;

    struct notify notify;
    /* runs as its VM's unit qvisor@NAME.service (root "/"): its networks are started as
     * their units qvisor-net@NET.service, never as children in the VM's cgroup */
    bool own_unit;
    struct confine conf;
    struct hotplug hp[HOTPLUG_MAX];
    struct cluster_watch cluster_watch;
    char disk_top[VM_MAX_DISKS][48];    /* a boot disk's root node once a job moved it; "" = default */
    struct sup_job jobs[SUP_JOBS_MAX];
    unsigned job_seq;           /* the next job-id's number; recorded, so ids stay unique */
    uint64_t job_poll_at;       /* next query-jobs; 0: no job runs */
    bool job_polling, job_poll_again;
    struct block_prep *block_prep;  /* a block job being prepared (blockjobs.c) */
    json_object *fdset_drop;    /* file nodes whose fdsets go at the next query-fdsets reply */
    struct snap_op *snap;       /* a disk-only snapshot being taken (snapshots.c); NULL: none */
    struct snap_full_prep *snap_prep;   /* a full snapshot's save being prepared (snapshot_full.c); NULL: none */
    bool snap_restoring;        /* the vmstate disk's direct I/O is being restored (snapshot_full.c) */
    struct mig_op *mig;         /* a save or migration under way (migrate.c); NULL: none */
    struct {                    /* migrate-incoming (migrate_in.c, migstore_in.c) */
        int listen_fd;          /* the listener until the source connects; 0: none */
        char tls_dir[PATH_MAX]; /* --tls: the credentials' directory; "": no TLS */
        uint64_t accepted_ms;   /* when the source connected (a TLS handshake must be over soon after) */
        char token[68];         /* the one-time token the source must show */
        uint64_t wait_ms;       /* how long it waits for a source */
        bool ended;             /* a start's incoming stream: QEMU's MIGRATION event said it is over */
        bool postcopy;          /* --postcopy: QEMU may use userfaultfd */
        bool in_postcopy;       /* the stream is in post-copy: the guest runs here already */
    } mig_in;
    struct ev ev_mig;           /* the listener, or an outgoing migration's connect */
    /* migrate --copy-storage (migstore_in.c, migstore_out.c): the control connection
     * and, at the source, an NBD connection being made */
    struct migstore_in *msin;
    struct migstore_out *msout;
    struct ev ev_msctl, ev_msnbd;
    unsigned snap_seq;          /* the last one's number: late agent replies find it by that */
    struct cdrom_media *media;  /* one per cdroms[] entry once a medium changed; NULL before */
    size_t nmedia;
    struct media_op *media_op;  /* the change under way, NULL if none */
    struct vm_nic_state nics[VM_MAX_NICS + HOTPLUG_MAX];
    struct sup_fs fs[VM_MAX_FILESYSTEMS];
    struct sup_fs tpm;          /* the VM's swtpm (tpm.c) */
    struct netsetup_nft *nft;
    uint64_t lease_poll;        /* next look at the networks' leases; 0: none needed */
    /* a `qvisor boot` VM (sup_opts.boot_fd): QEMU dies with this supervisor, and the
     * VM with boot (see supervisor.h) */
    int boot_fd;
    int stop_timeout_ms;        /* for SIGTERM's graceful stop (sup_opts) */
    bool boot_vm;
    struct ev ev_boot;
    bool panicked;              /* GUEST_PANICKED seen */
    struct {
        uint64_t balloon_actual;    /* from BALLOON_CHANGE / query-balloon; 0: not known (a reattach) */
        uint64_t balloon_target;    /* the last setmem; 0: none */
        int vcpus;                  /* vCPUs QEMU has now; 0: not known (a reattach) */
        uint8_t unplugging[512 / 8];    /* vcpuN asked to go (device_del), not gone yet */
    } tune;
    int qemu_status;            /* QEMU's exit status once gone: 0-255, 128+signal; -1 unknown */
    bool done;
    int exit_code;
};

/* core.c */
void sup_log(struct sup *s, const char *fmt, ...) QV_PRINTF(2, 3);
void sup_set_state(struct sup *s, enum vm_state st);
void sup_begin_stop(struct sup *s, bool force, int timeout_ms);
/* The guest was asked to power off another way (its agent): wait for it up to
 * timeout_ms, then quit, SIGTERM, SIGKILL. */
void sup_begin_stop_waiting(struct sup *s, int timeout_ms);
void sup_kill(struct sup *s, const char *reason);
/* lifecycle.c: the next stop phase once its time came; QEMU's pidfd or SIGCHLD. */
void sup_stop_step(struct sup *s);
/* lifecycle.c's timers: the next stop phase, and a crashed QEMU's on_crash restart */
uint64_t lifecycle_stop_next_deadline(struct sup *s);
void lifecycle_stop_expire(struct sup *s, uint64_t now);
uint64_t lifecycle_restart_next_deadline(struct sup *s);
void lifecycle_restart_expire(struct sup *s, uint64_t now);
void sup_qemu_gone(struct sup *s);
/* core.c's small shared pieces */
int sup_pidfd_open(pid_t pid);
void sup_save_state(struct sup *s);      /* a failure is logged, never fatal */
/* Once the guest runs: what starting left freed on the heap (the definition's and the
 * QEMU probe's JSON: megabytes on a first start, when the probe runs) goes back. */
void sup_trim_heap(void);
void sup_epoll_add(struct sup *s, int fd, uint32_t events, struct ev *ev);
/* QMP events: state changes, the on_poweroff/on_reboot/on_crash policies. */
void sup_on_event(void *ctx, const char *event, json_object *data, uint64_t ts_us);

/* pinning.c: cpu.pinning applied to QEMU's threads from query-cpus-fast's answer */
bool pinning_wanted(const struct vm_def *d);
int pinning_apply(struct sup *s, json_object *cpus, struct qv_err *e);

/* start.c: starting QEMU, and taking over one that outlived its supervisor */
/* Begins a start (restart: after a crash): what fails before anything runs is
 * returned; the rest completes in the loop, which calls start_wind_up when
 * s->start.failed is set. Success ends in report_ready and state running. */
int start_begin(struct sup *s, bool restart, struct qv_err *e);
/* The first start's wishes (supervisor_run's options): paused, or resumed from a
 * snapshot or a saved state; set right after start_begin, before QEMU's set-up ends
 * (the saved state also before QEMU is spawned: start_begin_restore). */
void start_wishes(struct sup *s, const char *load_snapshot, bool paused);
/* A start that restores the saved state in `file` (removed once restored when
 * remove): QEMU waits for it with -incoming defer. */
int start_begin_restore(struct sup *s, const char *file, bool remove, struct qv_err *e);
static inline bool start_active(const struct sup *s)
{
    return s->start.phase != START_IDLE;
}
/* A start fails (the first failure is kept; step, if any, prefixes it); the loop winds it up. */
void start_failed(struct sup *s, const struct qv_err *err, const char *step);
/* The snapshot a start resumes from is loaded: `cont`, or the start ends paused. */
void start_after_load(struct sup *s, bool paused);
/* stop or kill during a start: it ends as a stop (the child or QEMU is killed). */
void start_cancel(struct sup *s, const char *why);
/* QEMU's pidfd or SIGCHLD during a start: true if that is the start's business. */
bool start_qemu_gone(struct sup *s);
void start_child_exited(struct sup *s);
uint64_t start_next_deadline(struct sup *s);
void start_expire(struct sup *s, uint64_t now);
/* A failed or cancelled start: QEMU killed and reaped, its connections closed, the
 * error (with QEMU's last words) in s->start.err; a restart leaves the VM crashed,
 * a cancelled start shut off. The first start's caller finishes with start_failed_cleanup. */
void start_wind_up(struct sup *s);
/* reattach.c. finish_start: a QEMU still in prelaunch gets its late set-up and `cont`. */
int reattach(struct sup *s, bool finish_start, struct qv_err *e);
/* A live QEMU of this VM found by any route: its pid and start time go into *prev. */
bool find_previous(struct sup *s, struct vm_runstate *prev, bool have_prev);
/* What a dead previous run recorded and left behind. */
void cleanup_previous(struct sup *s, const struct vm_runstate *prev);
void remove_run_files(struct sup *s);
/* query-kvm's answer: the accelerator QEMU really uses, into s->rs.accel */
void record_kvm(struct sup *s, json_object *kvm);
/* set_password's arguments for the VM's VNC password; *out NULL when it has none */
int vnc_password_args(struct sup *s, json_object **out, struct qv_err *e);
/* What a dead QEMU leaves to release: its cgroup, taps and filters, run files. */
void sup_release_qemu(struct sup *s);
/* QVISOR_TEST_CRASH_AT=POINT kills the supervisor there, as a kill -9 would;
 * QVISOR_TEST_STOP_AT=POINT stops it there until SIGCONT. */
void sup_crash_point(const char *point);
/* QVISOR_TEST_FAIL_AT=POINT: true there, where the caller then sends QEMU a command it
 * refuses, so that a test meets QEMU's real refusal of a step it cannot provoke. */
bool sup_fail_point(const char *point);
/* Tells whoever waits on ready_fd (start, a unit): "ok" or the error; once. */
void report_ready(struct sup *s, int code, const char *msg);
/* sandbox_spec.forked: records QEMU's pid and start time before it may run. */
int sup_record_qemu(pid_t pid, void *opaque, struct qv_err *e);
/* Sends a QMP command on behalf of the supervisor; errors are logged. */
void sup_qmp(struct sup *s, const char *cmd, json_object *args);
json_object *sup_status_json(struct sup *s);

/* console.c: the serial console and the VM's log file. console_free closes it (what
 * is left of a line goes to the log) and frees it. */
struct sup_console *console_new(void);
void console_free(struct sup *s);
bool console_connected(const struct sup *s);
/* Its recent output, for a console client's replay. */
const struct buf *console_recent(const struct sup *s);
/* A console client's input, to the guest (dropped while not connected); -errno. */
int console_write(struct sup *s, const char *data, size_t n);
int console_connect(struct sup *s, struct qv_err *e);
void console_readable(struct sup *s);
void console_close(struct sup *s);
uint64_t console_next_deadline(struct sup *s);
void console_expire(struct sup *s, uint64_t now);
/* Rotates the log when it has grown past host.json's log_max_size. */
void vmlog_check(struct sup *s);
/* The VM's log: var/log/qvisor/NAME.log, or NAME.log in a boot VM's private directory. */
void sup_log_path(const struct sup *s, char *out, size_t len);

/* ctl.c */
void sup_reply_ok(struct sup *s, unsigned client);
/* Adds "ok":true to reply (kept by the caller) and sends it. */
void sup_reply_json(struct sup *s, unsigned client, json_object *reply);
void sup_reply_error(struct sup *s, unsigned client, int code, const char *fmt, ...) QV_PRINTF(4, 5);
/* ctl_close answers what it can, drops every client and removes ctl.sock; ctl_free
 * closes and frees */
struct sup_ctl *ctl_new(void);
void ctl_close(struct sup *s);
/* Once the VM has ended and the supervisor is on its way out: ctl.sock goes, so that
 * a request sent after stop or kill answered is "not running" (the CLI cannot connect)
 * instead of a connection closed under it; the clients connected stay. */
void ctl_stop_listening(struct sup *s);
void ctl_free(struct sup *s);
int ctl_listen(struct sup *s, struct qv_err *e);
void ctl_accept(struct sup *s);
void ctl_client_io(struct sup *s, struct sup_client *c, uint32_t events);
void ctl_broadcast_event(struct sup *s, const char *event, json_object *data, uint64_t ts_us);
void ctl_broadcast_console(struct sup *s, const char *data, size_t n);
/* Replies {"ok":true} to every client waiting for QEMU to be gone. */
void ctl_stop_done(struct sup *s, bool ok, const char *msg);
void ctl_client_send(struct sup *s, struct sup_client *c, json_object *reply);
void ctl_reap_clients(struct sup *s);
/* A stop through the guest agent: the client is answered once QEMU is gone. */
void ctl_wait_for_stop(struct sup *s, unsigned client);
/* Idle clients and the accept() back-off: the earliest deadline (0: none), and the
 * work once it passed. */
uint64_t ctl_next_deadline(struct sup *s);
void ctl_expire(struct sup *s, uint64_t now);
/* Type-checks a request without acting on it: 0, or -EINVAL with a message that
 * names the field and the type it needs. Pure, so fuzzers call it directly. */
int ctl_request_check(json_object *req, struct qv_err *e);
/* The i-th request kind the check knows ("status", ...); NULL past the last. */
const char *ctl_request_kind(size_t i);
/* One request line (without its newline): size, NUL bytes, JSON, then the check. */
int ctl_parse_request(const char *line, size_t len, json_object **req, struct qv_err *e);

/* agent.c: the guest agent channel, kept while QEMU runs (VMs with "agent": true):
 * connected and synchronised (guest-sync-delimited) by the loop, again after guest
 * resets and lost or garbled streams; requests queue and go one at a time.
 * agent_ops.c: what uses it (ctl.sock's agent and exec requests, freeze, reboot, stop). */
#define AGENT_TIMEOUT_MS 10000                  /* most agent commands */
#define AGENT_TIMEOUT_FREEZE_MS QMP_TIMEOUT_JOB /* guest-fsfreeze-freeze: flushing may take long */
#define AGENT_EXEC_TIMEOUT_MS 300000            /* exec without a timeout of its own */
/* A reply: ret (borrowed) or err; called exactly once for every request accepted. */
typedef void (*agent_reply_fn)(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err);
/* Queues one agent command (args consumed). 0: done will be called; else -errno with
 * e filled (-ENODEV: no agent channel, -EBUSY: not running or queue full). A guest
 * agent that does not answer fails it with "the guest agent does not answer (is
 * qemu-guest-agent running in the guest?)". QMP_NO_REPLY_OK: done once sent. */
int agent_call(struct sup *s, const char *cmd, json_object *args, int timeout_ms, unsigned flags, agent_reply_fn done,
               void *ctx, struct qv_err *e);
/* Freezes (or thaws) the guest's filesystems, e.g. around a snapshot: done gets the
 * number of filesystems frozen or thawed, or err (count -1). 0 when under way, else
 * -errno with e filled (-ENODEV: the VM has no agent channel). */
typedef void (*agent_freeze_fn)(struct sup *s, void *ctx, int count, const struct qv_err *err);
int agent_fsfreeze(struct sup *s, bool freeze, agent_freeze_fn done, void *ctx, struct qv_err *e);
/* The channel is connected and synchronised now; else false with why it is not. */
bool agent_answers(struct sup *s, char *why, size_t whylen);
/* ctl.sock requests: one agent command for `client` (its reply carries "return"), and
 * `exec` (spec: path, args, env, input (base64) or input_pending, timeout_ms). -errno
 * before anything was sent. */
int agent_request(struct sup *s, unsigned client, const char *cmd, json_object *args, int timeout_ms,
                  struct qv_err *e);
int agent_exec(struct sup *s, unsigned client, json_object *spec, struct qv_err *e);
/* exec's stdin sent ahead in pieces (base64 of multiples of 3 bytes, at most 16 MiB in
 * all) on the client's connection; an exec with "input_pending" takes them. */
int agent_exec_input(struct sup *s, unsigned client, const char *b64, struct qv_err *e);
/* reboot (agent_only false: system_reset when the agent does not answer within 1 s)
 * or stop (guest-shutdown, then quit after timeout_ms) through the agent. */
void agent_power(struct sup *s, unsigned client, bool reboot, bool agent_only, int timeout_ms);
/* QMP events: RESET, SHUTDOWN and VSERPORT_CHANGE decide when to resync. */
void agent_guest_event(struct sup *s, const char *event, json_object *data);
json_object *agent_status_json(struct sup *s);    /* NULL without "agent": true */
void agent_io(struct sup *s, uint32_t events);
uint64_t agent_next_deadline(struct sup *s);
void agent_expire(struct sup *s, uint64_t now);
void agent_close(struct sup *s);

/* monitor.c: QEMU's monitor connection after a loss while QEMU lives */
struct sup_mon *monitor_new(void);
void monitor_free(struct sup *s);
/* Called with the connection that just failed (before it is freed). Returns true
 * when a reconnect is planned (QEMU still runs), false when QEMU is going away. */
bool monitor_lost(struct sup *s, struct qmp *lost, const char *why);
uint64_t monitor_next_deadline(struct sup *s);
void monitor_expire(struct sup *s, uint64_t now);
/* "connected", or "lost (why); reconnecting", while QEMU runs; NULL otherwise */
json_object *monitor_status_json(struct sup *s);
/* 0 when QMP commands can be sent now (connected, handshake done); else -EIO and
 * why not: the loss and its reason while reconnecting, or not connected */
int monitor_ready(struct sup *s, struct qv_err *e);

/* hotplug.c */
/* Start an attach without waiting for QEMU: 0 when it is under way (the client gets
 * its reply, {"ok":true,"id":…} or an error, when it finished or was rolled back),
 * or an error before anything was done (the caller replies). client 0: no reply. */
/* volume: the POOL/NAME the disk's file was resolved from (attach-disk --volume), or NULL. */
int hotplug_disk_attach(struct sup *s, json_object *spec, const char *volume, unsigned client, struct qv_err *e);
int hotplug_nic_attach(struct sup *s, json_object *spec, unsigned client, struct qv_err *e);
/* hotplug_hostdev.c: attach-device of a host device (a "hostdevs" entry). */
int hotplug_hostdev_attach(struct sup *s, json_object *spec, unsigned client, struct qv_err *e);
/* SIGCHLD: a network start for an attach-nic may have ended. */
void hotplug_child_exited(struct sup *s);
/* Starts removing a hotplugged device (by id, image path or MAC); the client gets
 * its reply once the guest released it and QEMU freed its parts. */
int hotplug_detach(struct sup *s, const char *key, enum hotplug_kind kind, unsigned client, struct qv_err *e);
void hotplug_device_deleted(struct sup *s, const char *device);
uint64_t hotplug_next_deadline(struct sup *s);
/* cluster_watch.c: the rbd disks' clusters asked for new OSDs now and then */
void cluster_watch_child_exited(struct sup *s);
uint64_t cluster_watch_next_deadline(struct sup *s);
void cluster_watch_expire(struct sup *s, uint64_t now);
void hotplug_expire(struct sup *s, uint64_t now);
void hotplug_record(struct sup *s);
void hotplug_restore(struct sup *s);
void hotplug_forget_all(struct sup *s);

/* stats.c: the `stats` request: disks, vCPUs (thread CPU times), QEMU's CPU time and
 * RSS, tap counters, uptime. */
int vm_stats(struct sup *s, unsigned client, struct qv_err *e);
/* tuning.c: setmem (the balloon's target), setvcpus (plug/unplug vCPUs between cpu.count
 * and cpu.max), display (where VNC listens). They answer `client` through QMP callbacks;
 * an error before anything was sent is returned instead. */
int tuning_setmem(struct sup *s, unsigned client, const char *size, struct qv_err *e);
int tuning_setvcpus(struct sup *s, unsigned client, int count, struct qv_err *e);
int tuning_display(struct sup *s, unsigned client, struct qv_err *e);
void tuning_balloon_event(struct sup *s, json_object *data);    /* BALLOON_CHANGE */
/* A migrated guest: the vCPUs its source had plugged, before the stream (done once, err
 * NULL on success; not called when this returns an error), and the source's balloon
 * target once it runs (a failure is logged). */
int tuning_plug_vcpus(struct sup *s, int count, void (*done)(struct sup *s, const struct qv_err *err), struct qv_err *e);
void tuning_balloon_carry(struct sup *s, uint64_t bytes);
/* DEVICE_DELETED: QEMU 7.2 reports an unplugged vCPU by its lapic child's path only */
void tuning_device_deleted(struct sup *s, const char *device, const char *path);
/* A new QEMU: its balloon is not inflated, its vCPUs are the definition's. */
void tuning_new_qemu(struct sup *s);
/* A successor took over a live QEMU: its vCPUs (setvcpus may have plugged some) are the
 * ones QEMU has (cpus: query-cpus-fast's answer; NULL: not known), the balloon's size is
 * what QEMU says, its target (which QEMU does not tell) what state.json recorded. */
void tuning_reattach(struct sup *s, json_object *cpus);
/* {"actual", "target"} for status; NULL without a balloon or before its size is known */
json_object *tuning_status_json(struct sup *s);
/* vmnet.c: the host side of the VM's NICs */
int vmnet_open_tap(void *opaque, const struct vm_def *d, size_t nic, int *fds, struct qv_err *e);
/* Plugs one NIC (boot or hotplug) into its bridge or network; fds per queue. A
 * network that is not running is -ENETDOWN: whoever plugs starts autostart networks
 * first (net_starter), without waiting in the loop. */
int vmnet_plug(struct sup *s, const struct vm_nic *n, size_t index, int *fds, struct qv_err *e);
/* Applies the named filter again to every running NIC that uses it (filter define);
 * *applied: how many. */
int vmnet_filter_reload(struct sup *s, const char *filter, size_t *applied, struct qv_err *e);
/* A network NIC whose autostart network is not running: its name into net (else "");
 * -ENETDOWN for a stopped network without autostart. */
int vmnet_needs_start(struct sup *s, const struct vm_nic *n, char *net, size_t netlen, struct qv_err *e);
/* `qvisor net start NAME` as a child the loop watches (SIGCHLD), killed at its deadline. */
int net_starter_begin(struct sup *s, struct net_starter *ns, const char *name, struct qv_err *e);
/* SIGCHLD: 0 while it runs; 1 once it ended, with its verdict in *result (0 or -errno, e). */
int net_starter_reap(struct sup *s, struct net_starter *ns, int *result, struct qv_err *e);
/* Past its deadline it is killed; its exit then reports the failure. */
void net_starter_expire(struct net_starter *ns, uint64_t now);
/* Kills and reaps it (the operation it served is gone). */
void net_starter_abort(struct net_starter *ns);

/* guestdata.c: the cloud-init seed and the credentials */
/* Writes user-data and meta-data into RUN_DIR/cidata/ and starts genisoimage on them
 * (output in *iso); seed_done judges its exit. */
int seed_begin(struct sup *s, struct sup_child *c, char iso[PATH_MAX], struct qv_err *e);
int seed_done(struct sup *s, int status, const char *output, struct qv_err *e);
/* Removes the seed and its sources (QEMU holds the ISO open from its start). */
void seed_remove(struct sup *s);
/* Credential i as a sealed memfd holding its SMBIOS string, readable by uid only. */
/* The cephx key of rbd disk k in a sealed memfd owned by uid, 0400: QEMU reads it as
 * a secret object's /proc/self/fd/N (never argv, never QMP data). */
int rbd_key_memfd(const struct vm_disk *k, uid_t uid, gid_t gid, int *out, struct qv_err *e);
int credential_memfd(const struct vm_def *d, size_t i, uid_t uid, gid_t gid, size_t *total, int *out,
                     struct qv_err *e);

/* For unit tests only (core.c): a supervisor with no QEMU started, state
 * "running", its run directory made under paths. qmp_fd (taken; -1: none) becomes
 * its QMP connection with the supervisor's own event handler, not yet handshaken;
 * qemu_pid (0: none) must be the caller's child. Tests then drive it through the
 * entry points the loop uses: qmp_handle_io, sup_begin_stop, the ctl functions,
 * and the two below: the loop's timer pass and its reaction to QEMU's exit. */
struct sup *sup_new_for_test(const struct qv_paths *paths, const char *name, int qmp_fd, pid_t qemu_pid,
                             struct qv_err *e);
void sup_free_for_test(struct sup *s);
void sup_test_run_timers(struct sup *s);
void sup_test_qemu_gone(struct sup *s);

/* The parts with an interface of their own; each needs struct sup above. */
#include "launcher/supervisor/block.h"
#include "launcher/supervisor/siblings.h"
#include "launcher/supervisor/migration.h"

#endif
