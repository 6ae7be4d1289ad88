/* Internal to launcher/supervisor: the per-VM supervisor's core (core.c) and its
 * parts with their own state: ctl.sock (ctl.c), the QMP monitor (monitor.c), the
 * console and log (console.c), confinement (confine.c), NICs (vmnet.c), hotplug
 * (hotplug.c), a running VM's disks (disks.c), CD-ROM media (media.c), QEMU's jobs
 * (jobs.c), block jobs (blockjobs.c, blockprep.c), snapshots (snapshots.c,
 * snapshot_full.c, snapshot_merge.c), the guest agent channel (agent.c, agent_ops.c; agent_chan.h),
 * virtiofs shares and their virtiofsd processes (virtiofs.c), save and migration
 * (migrate.c out, migrate_in.c in), cpu.pinning of QEMU's threads (pinning.c); networks: their
 * supervisor (netrun.c), live changes (netlive.c), garbage collection (netgc.c).
 * One process per VM owns the only QMP connection. */
#ifndef QV_SUP_INTERNAL_H
#define QV_SUP_INTERNAL_H

#include <sys/socket.h>
#include <sys/un.h>

#include "launcher/supervisor/supervisor.h"
#include "qmp/qmp.h"
#include "netsetup/netsetup.h"
#include "sandbox/sandbox.h"

#define CONSOLE_RING (64u << 10)    /* recent console output kept for late attachers */
#define CLIENT_OUT_MAX (1u << 20)   /* a client that does not read is dropped past this */
#define CTL_CLIENTS_MAX 64          /* ctl.sock connections at once; more are turned away */
#define CTL_REQUEST_MAX (64u << 10) /* one request line; a longer one ends the connection */
#define CTL_IDLE_MS 10000           /* a half-written or silent request client is dropped then */
#define CTL_ACCEPT_BACKOFF_MS 100   /* out of descriptors: accept() rests this long */
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

enum client_mode { CLIENT_REQUEST, CLIENT_EVENTS, CLIENT_CONSOLE };

struct sup_client {
    struct ev ev;
    int fd;
    unsigned id;
    enum client_mode mode;
    struct buf in, out;
    size_t out_off;         /* bytes of `out` already sent: large replies go out without memmove */
    uint64_t idle_since;    /* request mode: connected, last completed a line or got a reply */
    unsigned owed;          /* requests read and not answered yet */
    bool waits_for_stop;    /* replied to when QEMU is gone */
    bool close_after_write;
    bool dead;
    struct sup_client *next;
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
enum hotplug_kind { HOTPLUG_DISK, HOTPLUG_NIC };

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
    int fdset;              /* disks: the add-fd set */
    char file[PATH_MAX];    /* disks */
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

/* The console's byte budget (console.c). */
struct console_rate {
    int64_t tokens;
    uint64_t refilled_at;
    uint64_t resume_at;     /* reading is paused until then; 0: not paused */
    bool throttled;         /* said so in the log once */
};

/* A program the loop watches (child.c): started with an argv, reaped on SIGCHLD. */
struct sup_child {
    pid_t pid;              /* 0: none running */
    int out;                /* the read end of its stdout and stderr; -1 none */
    uint64_t deadline;      /* killed then; its exit reports the failure */
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
    int lock_fd, log_fd, epfd, sigfd, ready_fd, echo_fd;

    pid_t qemu_pid;
    int pidfd;
    bool qemu_is_child;
    struct qmp *qmp;
    struct ev ev_qmp, ev_console, ev_ctl, ev_signal, ev_pidfd;
    int console_fd;
    struct buf ring, line;
    uint64_t line_at;           /* when the partial console line last grew */
    struct console_rate console_rate;
    uint64_t log_check_at;      /* next look at the log's size */
    int ctl_fd;
    struct sup_client *clients;
    unsigned next_client_id;
    unsigned nclients;
    uint64_t ctl_accept_resume;     /* accept() paused (EMFILE) until then; 0: listening */
    uint64_t ctl_warned_at;         /* last log line about turned-away clients */
    /* QMP connection lost while QEMU lives: monitor.c reconnects */
    char monitor_error[256];        /* why it was lost, "" while connected */
    uint64_t monitor_retry_at;      /* next connect attempt; 0: none planned */
    unsigned monitor_attempts;
    qmp_event_fn monitor_on_event;
    void *monitor_ctx;
    struct vm_runstate rs;
    /* the guest agent channel (agent.c); NULL until a VM with "agent": true runs */
    struct agent_chan *agent;
    struct ev ev_agent;

    /* stopping: graceful (powerdown, again, quit, SIGTERM, SIGKILL) or forced */
    int stop_phase;
    uint64_t stop_next;         /* when the next phase starts */
    uint64_t stop_deadline;     /* graceful part ends: quit */
    bool expected_exit;         /* QEMU's exit is not a crash */
    bool resetting;             /* we reset a powered-off or crashed guest: its STOP is no pause */
    bool never_ran;             /* QEMU is still in prelaunch: no `cont` yet */
    char exit_reason[256];

    uint64_t crashes[CRASH_MAX + 1];
    int ncrashes;
    uint64_t restart_at;        /* a crashed QEMU is started again then; 0: none */
    struct start_job start;

    struct notify notify;
    /* runs as its VM's unit qvisor@NAME.service (root "/"): its networks are started as
     * their units qvisor-net@NET.service, never as children in the VM's cgroup */
    bool own_unit;
    struct confine conf;
    struct hotplug hp[HOTPLUG_MAX];
    char disk_top[VM_MAX_DISKS][48];    /* a boot disk's root node once a job moved it; "" = default */
    struct sup_job jobs[SUP_JOBS_MAX];
    unsigned job_seq;           /* the next job-id's number; recorded, so ids stay unique */
    uint64_t job_poll_at;       /* next query-jobs; 0: no job runs */
    bool job_polling, job_poll_again;
    struct block_prep *block_prep;  /* a block job being prepared (blockjobs.c) */
    json_object *fdset_drop;    /* file nodes whose fdsets go at the next query-fdsets reply */
    struct snap_op *snap;       /* a disk-only snapshot being taken (snapshots.c); NULL: none */
    struct mig_op *mig;         /* a save or migration under way (migrate.c); NULL: none */
    int mig_listen_fd;          /* migrate-incoming's listener until the source connects; 0: none */
    char mig_tls_dir[PATH_MAX]; /* migrate-incoming --tls: the credentials' directory; "": no TLS */
    uint64_t mig_accepted_ms;   /* when the source connected (a TLS handshake must be over soon after) */
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
/* finish_start: a QEMU still in prelaunch gets its late set-up and `cont`. */
int reattach(struct sup *s, bool finish_start, struct qv_err *e);
/* A live QEMU of this VM found by any route: its pid and start time go into *prev. */
bool find_previous(struct sup *s, struct vm_runstate *prev, bool have_prev);
/* What a dead previous run recorded and left behind. */
void cleanup_previous(struct sup *s, const struct vm_runstate *prev);
void remove_run_files(struct sup *s);
/* What a dead QEMU leaves to release: its cgroup, taps and filters, run files. */
void sup_release_qemu(struct sup *s);
/* QVISOR_TEST_CRASH_AT=POINT kills the supervisor there, as a kill -9 would;
 * QVISOR_TEST_STOP_AT=POINT stops it there until SIGCONT. */
void sup_crash_point(const char *point);
/* Tells whoever waits on ready_fd (start, a unit): "ok" or the error; once. */
void report_ready(struct sup *s, int code, const char *msg);
/* sandbox_spec.forked: records QEMU's pid and start time before it may run. */
int sup_record_qemu(pid_t pid, void *opaque, struct qv_err *e);
/* Sends a QMP command on behalf of the supervisor; errors are logged. */
void sup_qmp(struct sup *s, const char *cmd, json_object *args);
json_object *sup_status_json(struct sup *s);

/* console.c: the serial console and the VM's log file */
int console_connect(struct sup *s, struct qv_err *e);
void console_readable(struct sup *s);
void console_close(struct sup *s);
uint64_t console_next_deadline(struct sup *s);
void console_run_timers(struct sup *s, uint64_t now);
/* Rotates the log when it has grown past host.json's log_max_size. */
void vmlog_check(struct sup *s);

/* ctl.c */
void sup_reply_ok(struct sup *s, unsigned client);
/* Adds "ok":true to reply (kept by the caller) and sends it. */
void sup_reply_json(struct sup *s, unsigned client, json_object *reply);
void sup_reply_error(struct sup *s, unsigned client, int code, const char *fmt, ...) QV_PRINTF(4, 5);
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
void ctl_close_all(struct sup *s);
/* Idle clients and the accept() back-off: the earliest deadline (0: none), and the
 * work once it passed. */
uint64_t ctl_next_deadline(struct sup *s);
void ctl_expire(struct sup *s, uint64_t now);
/* Type-checks a request without acting on it: 0, or -EINVAL with a message that
 * names the field and the type it needs. Pure, so fuzzers call it directly. */
int ctl_request_check(json_object *req, struct qv_err *e);
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
/* Called with the connection that just failed (before it is freed). Returns true
 * when a reconnect is planned (QEMU still runs), false when QEMU is going away. */
bool monitor_lost(struct sup *s, struct qmp *lost, const char *why);
uint64_t monitor_next_deadline(struct sup *s);
void monitor_expire(struct sup *s, uint64_t now);
/* "connected", or "lost (why); reconnecting", while QEMU runs; NULL otherwise */
json_object *monitor_status_json(struct sup *s);

/* hotplug.c */
/* Start an attach without waiting for QEMU: 0 when it is under way (the client gets
 * its reply, {"ok":true,"id":…} or an error, when it finished or was rolled back),
 * or an error before anything was done (the caller replies). client 0: no reply. */
/* volume: the POOL/NAME the disk's file was resolved from (attach-disk --volume), or NULL. */
int hotplug_disk_attach(struct sup *s, json_object *spec, const char *volume, unsigned client, struct qv_err *e);
int hotplug_nic_attach(struct sup *s, json_object *spec, unsigned client, struct qv_err *e);
/* SIGCHLD: a network start for an attach-nic may have ended. */
void hotplug_child_exited(struct sup *s);
/* Starts removing a hotplugged device (by id, image path or MAC); the client gets
 * its reply once the guest released it and QEMU freed its parts. */
int hotplug_detach(struct sup *s, const char *key, enum hotplug_kind kind, unsigned client, struct qv_err *e);
void hotplug_device_deleted(struct sup *s, const char *device);
uint64_t hotplug_next_deadline(struct sup *s);
void hotplug_expire(struct sup *s, uint64_t now);
void hotplug_record(struct sup *s);
void hotplug_restore(struct sup *s);
void hotplug_forget_all(struct sup *s);

/* media.c: CD-ROM media of a running VM. `target` is a drive id (cdrom0) or the file
 * it holds; file NULL ejects. The client is answered once QEMU finished; an error
 * before anything was sent is returned instead. */
int media_change(struct sup *s, unsigned client, const char *target, const char *file, struct qv_err *e);
/* state.json's "media" after a reattach; QEMU's exit forgets it all. */
void media_restore(struct sup *s);
void media_forget_all(struct sup *s);
/* [{"id": "cdrom0", "file": F or null}] for status; NULL without CD-ROMs. */
json_object *media_status_json(struct sup *s);

/* disks.c: a running VM's disks. A disk is named by device id (disk0), image path or
 * serial. The requests answer `client` through QMP callbacks; an error before
 * anything was sent is returned instead. */
int disk_resize(struct sup *s, unsigned client, const char *target, const char *size, bool allow_shrink,
                struct qv_err *e);
int disk_stats(struct sup *s, unsigned client, const char *target, struct qv_err *e);
/* query-blockstats' reply as [{"disk", "file", "rd_reqs", "rd_bytes", ...}], only the
 * disk `only` when it is not NULL or "". */
json_object *disk_stats_json(struct sup *s, json_object *ret, const char *only);
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
/* DEVICE_DELETED: QEMU 7.2 reports an unplugged vCPU by its lapic child's path only */
void tuning_device_deleted(struct sup *s, const char *device, const char *path);
/* {"actual", "target"} for status; NULL without a balloon or before its size is known */
json_object *tuning_status_json(struct sup *s);
/* BLOCK_IO_ERROR: with action stop, the pause that follows carries the reason. */
void disk_io_error(struct sup *s, json_object *data);
/* A disk as jobs see it: device id, the node the guest reads (its current top, which a
 * pivot, an active commit or an external snapshot changes), the image at the top. */
struct disk_ref {
    char id[24];            /* the QEMU device: disk0, disk3 (hotplugged) */
    char node[48];          /* the top block node: what the guest sees */
    char file[PATH_MAX];
    ssize_t index;          /* its place in s->def.disks; -1: hotplugged */
    struct hotplug *hp;     /* hotplugged: its slot */
};
/* By device id, image path or serial; boot disks and hotplugged ones. */
bool disk_find(struct sup *s, const char *key, struct disk_ref *out);
/* Disk `id` now shows the guest `node`, holding the image `file` (a volume's path
 * when `volume` is POOL/NAME, else NULL) in `format`: the top node is recorded in
 * state.json, and a boot disk's definition follows, in memory and in the store
 * (etc/, or a transient VM's run directory), written atomically. A failure to
 * write the store is returned (the VM runs on the new image anyway). */
int disk_switched(struct sup *s, const char *id, const char *node, const char *file, const char *volume,
                  enum disk_format format, struct qv_err *e);
/* A new QEMU starts with the definition's nodes again. */
void disk_tops_reset(struct sup *s);
void disk_tops_record(struct sup *s);
/* Reattach (synchronous, before the loop serves): the recorded tops, checked against
 * query-block, whose word wins. */
void disk_tops_reattach(struct sup *s);

/* jobs.c: QEMU's jobs, tracked by JOB_STATUS_CHANGE and query-jobs. The loop never
 * waits on them: every step is a QMP completion. */
/* Starts `cmd` (args taken; "job-id" added, and "auto-dismiss": false for block jobs
 * so a failure's reason stays readable) as a job of `ops` on `disk` ("" or NULL: the
 * VM), data taken (recorded with the job; may be NULL). The job is recorded in
 * state.json before the command goes out. client (0: none) is answered once QEMU
 * accepted ({"ok":true,"job":{...}}) or refused it (on_done runs with the refusal),
 * unless wait: then it is answered when the job is over. NULL with e set when
 * nothing was sent (a job already runs on the disk, too many jobs, no monitor): no
 * handler of ops runs and the client is not answered; the caller undoes what it
 * prepared and answers. */
struct sup_job *sup_job_start(struct sup *s, const struct sup_job_ops *ops, const char *disk, const char *cmd,
                              json_object *args, json_object *data, unsigned client, bool wait, struct qv_err *e);
/* The job on `disk`, or with QEMU id `key`; NULL when none. */
struct sup_job *sup_job_find(struct sup *s, const char *key);
/* job-complete (a mirror pivots, an active commit drops the top) once it is ready:
 * at once when it is, else as soon as it becomes so (the intent is recorded). */
int sup_job_complete(struct sup *s, struct sup_job *j, struct qv_err *e);
/* job-cancel (abort); soft: a ready mirror ends without pivoting, its copy complete
 * (block-job-cancel force=false), and a not yet ready one does so once ready. */
int sup_job_cancel(struct sup *s, struct sup_job *j, bool soft, struct qv_err *e);
/* client is answered when the job is over; -EBUSY when too many wait. */
int sup_job_wait(struct sup *s, struct sup_job *j, unsigned client, struct qv_err *e);
json_object *sup_job_json(const struct sup_job *j);
/* Every job, for `status`; NULL when none. */
json_object *sup_jobs_json(struct sup *s);
/* QEMU events: JOB_STATUS_CHANGE. */
void sup_jobs_event(struct sup *s, const char *event, json_object *data);
void sup_jobs_record(struct sup *s);
/* Reattach (synchronous, before the loop serves): the recorded jobs against
 * query-jobs; those QEMU no longer has are forgotten, concluded and ready ones are
 * carried on as if their events came now. */
void sup_jobs_reattach(struct sup *s);
/* QEMU is gone: every job ends with on_done(err), waiters answered. */
void sup_jobs_forget_all(struct sup *s, const char *why);
uint64_t sup_jobs_next_deadline(struct sup *s);
void sup_jobs_expire(struct sup *s, uint64_t now);
/* The kinds a new supervisor can carry on, by name (jobs.c holds the table). */
const struct sup_job_ops *sup_job_ops_find(const char *kind);

/* blockjobs.c: block pull, commit, copy and job on a running VM's disks */
extern const struct sup_job_ops block_pull_ops, block_commit_ops, block_active_commit_ops, block_copy_ops;
/* op: pull, commit, copy or job; target: the disk; options: the op's (base, top,
 * dest, volume, format, pivot, finish, abort, wait, bandwidth). 0: under way, the
 * client is answered later; else the error (nothing was changed). */
int block_request(struct sup *s, unsigned client, const char *op, const char *target, json_object *options,
                  struct qv_err *e);
/* SIGCHLD: qemu-img creating a copy's target may have ended. */
void block_child_exited(struct sup *s);
uint64_t block_next_deadline(struct sup *s);
void block_expire(struct sup *s, uint64_t now);
/* QEMU is gone: a request being prepared ends (its client answered, a created target removed). */
void block_forget(struct sup *s);

/* Between blockjobs.c (requests, the jobs' kinds) and blockprep.c (what a request
 * needs before its job starts: the chain as QEMU holds it, read-write fds and a
 * reopen for a commit, a copy's target). */
/* BLOCK_WRITABLE: no job; one layer below the top made writable (a read-write fd,
 * a reopen), for a snapshot-delete of an internal snapshot it holds. */
enum block_op { BLOCK_PULL, BLOCK_COMMIT, BLOCK_COPY, BLOCK_WRITABLE };
extern const char *const block_op_names[];

struct layer {
    char fmt[64], file[64];     /* the layer's format and protocol nodes */
    char path[PATH_MAX];
    enum disk_format format;
};

/* BLOCK_WRITABLE's end: node, the writable layer's format node, or err (the client
 * is the callback's to answer). */
typedef void (*block_writable_fn)(struct sup *s, void *ctx, const char *node, const struct qv_err *err);

struct block_prep {
    enum block_op op;
    unsigned client;
    char snap[65];              /* a commit that deletes this snapshot's disk: a snapshot-merge job */
    block_writable_fn writable; /* BLOCK_WRITABLE: told the end */
    void *writable_ctx;
    bool wait;
    struct disk_ref d;
    struct disk_io io;
    struct layer chain[STORAGE_CHAIN_MAX + 1];
    size_t n;
    uint64_t size;              /* the top's virtual size */
    /* options */
    char base[PATH_MAX], top[PATH_MAX];
    char dest[PATH_MAX], volume[160];
    enum disk_format format;
    bool pivot, finish;
    int64_t bandwidth;
    /* commit */
    size_t t, b;                /* chain indexes of top and base */
    int rw_fd[2], nrw;          /* read-write fds for base and the top's overlay */
    size_t rw_layer[2];         /* their chain indexes */
    int rw_set[2];              /* their fdsets */
    int ro_fd[2][4], nro[2];    /* QEMU's numbers of the read-only fds already in them */
    int rw_pending;             /* their add-fd not answered yet */
    /* copy */
    unsigned seq;
    int fdset, fd;
    char tfmt[64], tfile[64];
    bool created;               /* dest is ours: removed when the copy does not happen */
    int added;                  /* 1 add-fd done, 2 file node, 3 format node */
    struct sup_child child;
};
/* In x-debug-query-block-graph's answer g: the child of node `parent` on edge `name`
 * ("backing", "file"), by node name (borrowed from g); NULL when none. */
const char *block_graph_child(json_object *g, const char *parent, const char *name);
/* Asks QEMU for its block graph: s->block_prep goes on from the answer. */
int block_prep_begin(struct sup *s, struct qv_err *e);
/* The request fails: its client hears why, what it made is undone. */
void block_prep_fail(struct sup *s, const struct qv_err *err);
void block_prep_free(struct sup *s);
/* s->block_prep is ready: the job starts (the preparation is freed). */
void block_start_pull(struct sup *s);
void block_start_commit(struct sup *s);
void block_start_copy(struct sup *s);
/* A commit of disk's layer `top` into `base` (paths; top the disk's top: an active
 * commit with a pivot), prepared as `block commit` is; snap: the snapshot whose
 * overlay this is (its job is a snapshot-merge, snapshot_merge.c finishes it), else
 * NULL. client is answered when the job is over. 0: under way; else nothing changed. */
int block_commit_begin(struct sup *s, unsigned client, const char *disk, const char *top, const char *base,
                       const char *snap, int64_t bandwidth, struct qv_err *e);
/* Disk's layer `path` made writable when it is not the top; done(ctx, node) then,
 * or done(ctx, NULL, err). 0: under way (done is called); else nothing changed. */
int block_writable_begin(struct sup *s, const char *disk, const char *path, block_writable_fn done, void *ctx,
                         struct qv_err *e);
/* A commit job's layers that left the chain: out of QEMU. */
void block_commit_drop(struct sup *s, struct sup_job *j);
/* The blockdev-reopen options (file node, format node) of layer p->rw_layer[i] as
 * made writable, appended to list. */
void block_layer_reopen_opts(const struct block_prep *p, int i, json_object *list);
/* An inner commit's base flushed (its metadata is in QEMU's cache until then: the
 * merged top must not go before): blockdev-reopen with the options it has, recorded
 * with the job ("flush"); done(ctx, err) once QEMU answered. -EIO when not sent. */
int block_commit_flush(struct sup *s, struct sup_job *j, qmp_reply_fn done, void *ctx);
/* drop: [[format node, file node], ...], top first: deleted from QEMU, and the fdsets
 * of the file nodes removed. */
void block_drop_nodes(struct sup *s, json_object *drop);
json_object *block_node_pair(const char *fmt, const char *file);
/* A QMP command whose failure is only logged. */
void block_send_logged(struct sup *s, const char *cmd, json_object *args);

/* vmnet.c: the host side of the VM's NICs */
int vmnet_open_tap(void *opaque, const struct vm_def *d, size_t nic, int *fds, struct qv_err *e);
/* Plugs one NIC (boot or hotplug) into its bridge or network; fds per queue. A
 * network that is not running is -ENETDOWN: whoever plugs starts autostart networks
 * first (net_starter), without waiting in the loop. */
int vmnet_plug(struct sup *s, const struct vm_nic *n, size_t index, int *fds, struct qv_err *e);
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

/* child.c */
int sup_child_spawn(struct sup_child *c, const char *const *argv, int timeout_ms, struct qv_err *e);
/* 0 while it runs; 1 once reaped: *status is its exit code (128 + signal when killed),
 * out what it wrote (trailing newlines dropped). */
int sup_child_reap(struct sup_child *c, int *status, char *out, size_t outlen);
void sup_child_expire(struct sup_child *c, uint64_t now);
void sup_child_abort(struct sup_child *c);
/* Tears down what the NICs of the last QEMU left (filters, macvtaps). */
void vmnet_after_exit(struct sup *s);
void net_nic_unplugged(struct sup *s, struct hotplug *h);
void vmnet_cleanup_recorded(struct sup *s, json_object *resources);
/* After a reattach: what the previous supervisor recorded about the NICs. */
void vmnet_restore(struct sup *s);
/* Learns guest addresses from the networks' leases and tightens the filters. */
void vmnet_poll_leases(struct sup *s);
json_object *vmnet_addresses(struct sup *s);

/* virtiofs.c: one confined virtiofsd per share, a sibling of QEMU that lives as long as
 * QEMU's connection to it (no PR_SET_PDEATHSIG: it outlives a dead supervisor, as QEMU
 * does). launch_ctx.open_fs: starts filesystem i's virtiofsd on a listening socket
 * (recorded in state.json before it runs) and gives QEMU's connected end in *fd. */
int virtiofs_open(void *opaque, const struct vm_def *d, size_t i, int *fd, struct qv_err *e);
/* SIGCHLD: reaps ours; one gone while QEMU runs is logged (the guest's share is dead). */
void virtiofs_child_exited(struct sup *s);
/* QEMU is gone (or never started): every virtiofsd is killed and its record dropped. */
void virtiofs_after_exit(struct sup *s);
/* A new supervisor takes over the recorded virtiofsds of a live QEMU (by pid and start time). */
void virtiofs_reattach(struct sup *s);
/* Kills the recorded virtiofsds of a previous run whose QEMU is dead. */
void virtiofs_cleanup_recorded(struct sup *s, json_object *resources);
/* [{"tag", "source", "readonly", "pid", "confinement"}] for status; NULL without shares. */
json_object *virtiofs_status_json(struct sup *s);

/* tpm.c: the VM's swtpm, a confined sibling of QEMU that lives as long as QEMU's
 * connection to it (as virtiofsd does). launch_ctx.open_tpm: makes the state directory
 * this run's uid's, starts swtpm on one end of a socketpair (recorded in state.json
 * before it runs) and gives QEMU the other in *fd. */
int tpm_open(void *opaque, const struct vm_def *d, int *fd, struct qv_err *e);
/* SIGCHLD: reaps it; gone while QEMU runs is logged (the guest's TPM is dead). */
void tpm_child_exited(struct sup *s);
/* QEMU is gone (or never started): swtpm is given a moment to save and end, then stopped. */
void tpm_after_exit(struct sup *s);
/* A new supervisor takes over the recorded swtpm of a live QEMU (by pid and start time). */
void tpm_reattach(struct sup *s);
/* Stops the recorded swtpm of a previous run whose QEMU is dead. */
void tpm_cleanup_recorded(struct sup *s, json_object *resources);
/* {"model", "state", "pid", "confinement"} for status; NULL without a TPM. */
json_object *tpm_status_json(struct sup *s);

/* hostdev.c: host devices. Opens hostdev i's USB device node for QEMU (found by
 * vendor:product or bus/device in sysfs); errors name the device and what to check. */
int hostdev_usb_open(const struct vm_def *d, size_t i, int *fd, struct qv_err *e);
/* PCI host devices: each is bound to vfio-pci and its IOMMU group viable; the device
 * nodes QEMU must see (/dev/vfio/vfio, /dev/vfio/GROUP…) are added to `devices`. */
int hostdev_pci_prepare(const struct vm_def *d, struct strv *devices, struct qv_err *e);

/* confine.c */
int confine_prepare(struct sup *s, const struct launch_plan *p, struct qv_err *e);
int confine_spawn(struct sup *s, const struct launch_plan *p, const int *fds, pid_t *pid, struct qv_err *e);
bool confine_oom_killed(struct sup *s);
/* When QEMU was OOM-killed in its cgroup, fills e ("QEMU was killed for lack of
 * memory (cgroup memory limit 1G; …)") and returns -ENOMEM; else 0. */
int confine_oom_error(struct sup *s, struct qv_err *e);
/* After each QEMU exit: removes its cgroup. */
void confine_after_exit(struct sup *s);
/* Moves the supervisor into its leaf of the VM's cgroup, so the VM is charged for it
 * (confine_after_exit moves it back). A failure is a warning. */
void confine_join(struct sup *s);
/* When the supervisor is done: the cgroup and the uid lease. */
void confine_release(struct sup *s);
int confine_reattach(struct sup *s, struct qv_err *e);
/* Lets QEMU reach `addrs` (an rbd disk's cluster) too: the filter is applied again with
 * them added. Refused when QEMU runs in a private network namespace (it had no rbd
 * disk at start); nothing to do when its network is not filtered. */
int confine_cluster_allow(struct sup *s, const struct strv *addrs, struct qv_err *e);
/* Removes what a dead previous run recorded in its state (its cgroup). */
void confine_cleanup_recorded(struct sup *s, json_object *resources);
/* What is in force for QEMU, read back from /proc (NULL when not running). */
json_object *confine_inspect(struct sup *s);

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

/* migrate.c: save (QEMU's migration stream into a file the supervisor opened, behind a
 * header with the definition; the VM is shut off once the file is synced and renamed
 * into place; any failure removes the partial file and the guest runs on), and the
 * restore of such a file in a start. */
/* client is answered once QEMU is gone after a save (or with the failure). */
int migrate_save(struct sup *s, unsigned client, const char *file, bool bypass_cache, bool managed, struct qv_err *e);
/* Live migration to the destination supervisor at address (numeric ADDR:PORT); client
 * is answered at the end ({"downtime_ms", "total_time_ms", ...}) or with the failure,
 * after which the guest runs on here. bandwidth bytes/s (0: no cap), downtime_ms 0:
 * QEMU's default. */
int migrate_live(struct sup *s, unsigned client, const char *address, int64_t bandwidth, int64_t downtime_ms,
                 bool auto_converge, bool copy_storage, struct qv_err *e);
/* A start that receives the guest from a source: listens on listen_at (numeric
 * ADDR:PORT) before QEMU runs; ready once QEMU is set up and waits. */
int start_begin_incoming(struct sup *s, const char *listen_at, bool copy_storage, struct qv_err *e);
/* The stream is in: announce-self, then `cont` (or stay paused). */
void migrate_incoming_resume(struct sup *s);
void migrate_incoming_close(struct sup *s);
/* The listener's numeric ADDR:PORT (the port the kernel chose for port 0) while a
 * start waits for the stream; NULL otherwise. */
const char *migrate_incoming_address(struct sup *s);
/* The migration just begun by migrate_live goes over TLS (migrate_tls.c): credentials
 * from dir, the destination's certificate checked against hostname. Called right after
 * migrate_live succeeded (its first step is a QMP round trip, the TLS step comes later). */
int migrate_live_tls(struct sup *s, const char *dir, const char *hostname, struct qv_err *e);
/* migrate_tls.c: QEMU's tls-creds-x509 object MIG_TLS_ID from dir (libvirt's layout:
 * ca-cert.pem and server-* or client-*.pem), verify-peer on; QEMU reads a staging copy
 * owned by its uid through an add-fd'd directory fd, removed once loaded. done is
 * called once, err NULL on success; it is not called when this returns an error. */
#define MIG_TLS_ID "qv-mig-tls"
typedef void (*migrate_tls_done)(struct sup *s, void *ctx, const struct qv_err *err);
int migrate_tls_begin(struct sup *s, const char *dir, bool server, migrate_tls_done done, void *ctx,
                      struct qv_err *e);
/* Between migrate.c and migrate_in.c: a numeric ADDR:PORT or [V6]:PORT; the source
 * connected to the listener; the next query-migrate of a start's incoming stream. */
#define MIG_POLL_MS 250
int migrate_parse_address(const char *text, struct sockaddr_storage *sa, socklen_t *len, struct qv_err *e);
void migrate_incoming_accept(struct sup *s);
void migrate_incoming_poll(struct sup *s);
/* EV_MIGRATE: the outgoing connect finished, or the source connected. */
void migrate_io(struct sup *s, uint32_t events);
/* migrate_cancel for a save or migration under way; its client hears "cancelled". */
int migrate_abort(struct sup *s, struct qv_err *e);
bool migrate_busy(struct sup *s);
json_object *migrate_status_json(struct sup *s);    /* NULL when nothing is under way */
uint64_t migrate_next_deadline(struct sup *s);
void migrate_expire(struct sup *s, uint64_t now);
void migrate_child_exited(struct sup *s);
/* QEMU is gone: a save under way fails (its partial file removed). */
void migrate_forget(struct sup *s);
/* The start's QEMU is set up: the saved state s->start.incoming goes in (checked
 * against the definition first); the start goes on with start_after_load. */
int migrate_incoming_begin(struct sup *s, struct qv_err *e);

/* migstore_in.c: migrate-incoming --copy-storage, the destination's half of the copy
 * of local disks (the control line protocol is described there). */
int migstore_in_listen(struct sup *s, struct qv_err *e);   /* wait for the source's hello */
bool migstore_in_waiting(struct sup *s);                   /* no control connection yet */
void migstore_in_accept(struct sup *s);
void migstore_in_io(struct sup *s);
void migstore_in_child_exited(struct sup *s);
int migstore_in_serve(struct sup *s, struct qv_err *e);    /* QEMU set up: NBD server, exports, answer */
/* The stream is in: true when the start must wait for the source's "finish" (it then
 * goes on with migrate_incoming_resume). */
bool migstore_in_hold(struct sup *s);
void migstore_in_wind_up(struct sup *s, const char *why);  /* the start failed */
bool migstore_in_cancel(struct sup *s, const char *why);   /* a stop before QEMU runs */
void migstore_in_forget(struct sup *s);
/* migstore_out.c: migrate --copy-storage, the source's half. */
int migstore_out_begin(struct sup *s, const char *address, int64_t speed, struct qv_err *e);
void migstore_out_nbd_io(struct sup *s);
/* The stream completed: the mirrors are cancelled in sync and the destination told;
 * then live_completed goes on (migrate_storage_finished), or the guest runs on here. */
void migstore_out_complete(struct sup *s);
/* The migration failed or was cancelled: mirrors, NBD nodes and connection go. */
void migstore_out_abort(struct sup *s);
void migstore_out_forget(struct sup *s);   /* QEMU is gone */
bool migstore_out_busy(struct sup *s);
void migstore_out_progress(struct sup *s, json_object *o);
uint64_t migstore_out_next_deadline(struct sup *s);
void migstore_out_expire(struct sup *s, uint64_t now);
/* EV_MIGCTL: the control connection, either side. */
void migstore_io(struct sup *s, uint32_t events);
/* migrate.c, for migstore_out.c: the disks are in sync (the migration goes on), or
 * finished at the end (the source's QEMU quits), or the copy failed. */
void migrate_storage_ready(struct sup *s);
void migrate_storage_finished(struct sup *s);
void migrate_storage_failed(struct sup *s, const char *why);

/* snapshots.c: snapshots of the running VM (records and plan: model/snapshot.c). Each
 * answers `client` when done (an error before anything was sent is returned). Full
 * ones are snapshot-save/load/delete jobs; a disk-only one makes its overlays with
 * qemu-img (a watched child), passes them as fds and switches in one transaction;
 * deleting one merges it with block-commit (a job). One at a time. */
/* A disk-only one of a running guest whose agent answers is quiesced: its filesystems
 * are frozen for the switch and thawed right after, also when anything fails; quiesce
 * (--quiesce, disk-only only) makes a freeze that cannot happen an error. */
int snapshot_live_create(struct sup *s, unsigned client, const char *name, bool disk_only, bool quiesce,
                         const char *description, struct qv_err *e);
/* then: "running" or "paused" (revert --running/--paused), "" or NULL: as QEMU leaves
 * it (the guest runs on if it ran). */
int snapshot_live_revert(struct sup *s, unsigned client, const char *name, const char *then, struct qv_err *e);
/* A start that resumes the guest from full snapshot `name` (a revert while shut off):
 * in prelaunch, once QEMU's set-up is done, a snapshot-load job; its end continues the
 * start (start_after_load) or fails it. */
int snapshot_start_load(struct sup *s, const char *name, bool paused, struct qv_err *e);
int snapshot_live_delete(struct sup *s, unsigned client, const char *name, const char *bandwidth, struct qv_err *e);
/* Between snapshots.c and snapshot_full.c: a new snapshot operation may start
 * (none under way, no snapshot job) and the monitor is there; the record NAME. */
int snap_busy(struct sup *s, struct qv_err *e);
bool snap_monitor_ok(struct sup *s, struct qv_err *e);
int snap_load_record(struct sup *s, const char *name, struct storage_snapshot *rec, struct qv_err *e);
/* The disks attached live, for the model's plan and checks (out: HOTPLUG_MAX entries). */
void snap_live_disks(struct sup *s, struct snapshot_live_disk *out, struct snapshot_live *live);
/* A record's disk as this run has it: a hotplugged entry only among the hotplugged
 * disks, a definition's only among the definition's; false (e filled) when absent. */
bool snap_disk_find(struct sup *s, const struct storage_snapshot *rec, const struct storage_snapshot_disk *k,
                    struct disk_ref *out, struct qv_err *e);
/* snapshot_full.c: a full snapshot's snapshot-save job (rec: the plan's record). */
int snapshot_full_create(struct sup *s, unsigned client, struct storage_snapshot *rec, struct qv_err *e);
/* snapshot_merge.c: a disk-only snapshot merged, disk after disk, each a block commit
 * (active when the overlay is the top, else inner); bandwidth 0: no cap. */
int snapshot_live_merge(struct sup *s, unsigned client, struct storage_snapshot *rec, int64_t bandwidth,
                        struct qv_err *e);
/* An internal snapshot deleted (snapshot-delete), its images made writable first
 * where they are below a disk-only overlay now. Both take the record and answer
 * client; an error returned means nothing was sent. */
int snapshot_live_delete_internal(struct sup *s, unsigned client, struct storage_snapshot *rec, struct qv_err *e);
/* Reattach: a freeze for a snapshot that its dead supervisor never thawed (state.json
 * says so) is thawed through the agent. */
void snapshots_reattach(struct sup *s);
void snapshots_child_exited(struct sup *s);
uint64_t snapshots_next_deadline(struct sup *s);
void snapshots_expire(struct sup *s, uint64_t now);
/* QEMU is gone: a disk-only snapshot under way fails, its overlays removed. */
void snapshots_forget(struct sup *s);
extern const struct sup_job_ops snapshot_save_ops, snapshot_load_ops, snapshot_delete_ops, snapshot_merge_ops,
    snapshot_start_load_ops;

#endif
