/* sandbox: confines a child between fork and exec, in one place.
 *
 * The supervisor resolves what the VM runs as (a uid lease or a fixed user),
 * creates its cgroup, fills a sandbox_spec and calls sandbox_spawn() instead of
 * fork + execve. In the child, in this order, each step failing loudly:
 *   1. fds: only the mapped fds survive, at their fixed numbers; signal
 *      dispositions and mask reset; the environment is exactly spec.envp;
 *   2. cgroup: join the VM's cgroup;
 *   3. mount: a new mount namespace whose root is a tmpfs holding read-only
 *      binds of what QEMU needs, a private /tmp, a private minimal /dev and
 *      /proc; nothing else of the host (disks come as fds);
 *   4. rlimits;
 *   5. user: setgroups, setresgid, setresuid to the VM's own ids;
 *   6. caps: every capability set empty, bounding and ambient included;
 *      no_new_privs;
 *   7. seccomp: a deny list on top of "allow", loaded last before execve.
 * Errors in the child come back to the parent with the step that failed and
 * errno: "web1: sandbox: mount namespace: pivot_root: Operation not permitted".
 *
 * A step the host cannot provide (no root, no cgroup hierarchy, ...) is never
 * skipped silently: sandbox_host_check() reports it, and sandbox_spawn() fails
 * when the spec requires the step, or skips it with a warning otherwise. */
#ifndef QV_SANDBOX_H
#define QV_SANDBOX_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/common.h"

/* ---- steps ---------------------------------------------------------------- */
enum sandbox_step {
    SANDBOX_CGROUP,
    SANDBOX_MOUNT,
    SANDBOX_RLIMITS,
    SANDBOX_USER,
    SANDBOX_CAPS,
    SANDBOX_SECCOMP,
    SANDBOX_NETWORK,        /* a private, empty network namespace: no host sockets */
    SANDBOX_NSTEPS
};
#define SANDBOX_STEP(s) (1u << (s))
#define SANDBOX_ALL_STEPS ((1u << SANDBOX_NSTEPS) - 1)

/* "cgroup", "mount", "rlimits", "user", "caps", "seccomp", "network". */
const char *sandbox_step_name(enum sandbox_step s);
/* Names (as in `sandbox.require`, "all" for every step) to a mask of SANDBOX_STEP bits. */
int sandbox_steps_parse(const char *const *names, unsigned *mask, struct qv_err *e);

/* What this host can apply; for `qvisor host-check`, the VM log, and spawn. */
struct sandbox_host {
    struct {
        bool available;
        char detail[256];
    } step[SANDBOX_NSTEPS];
    int cgroup_version;             /* 0 (none), 1 or 2 */
    char cgroup_controllers[128];   /* the ones we limit: "memory cpu pids blkio" */
    bool kvm;                       /* /dev/kvm is a character device */
    bool mknod;                     /* device nodes can be created in a private /dev */
    bool cap_sys_resource;          /* rlimits may go above the current hard limits */
    uint64_t nofile_hard, memlock_hard;     /* UINT64_MAX: unlimited */
};
/* Probes with real operations (a throw-away child tries the mount namespace).
 * `cgroup_root` is usually "/sys/fs/cgroup". Never fails: unknowns are "not available". */
void sandbox_host_check(const char *cgroup_root, struct sandbox_host *h);
json_object *sandbox_host_json(const struct sandbox_host *h);

/* A step that cannot be applied: an error naming the step when `require` has it,
 * otherwise a warning "NAME: sandbox: STEP not applied: DETAIL" appended to
 * `warnings` (which may be NULL) and 0. For callers that prepare a step outside
 * sandbox_spawn, such as the cgroup. */
int sandbox_degrade(unsigned require, enum sandbox_step step, const char *name, const char *detail,
                    struct strv *warnings, struct qv_err *e);

/* ---- the uid a VM runs as -------------------------------------------------- */
/* A dynamic uid, reserved by shared flocks on LOCK_DIR/UID: one on lock_fd for
 * the supervisor, one on a separate open file description, hold_fd, for QEMU
 * (pass it as spec.hold_fd), so the uid stays taken while either lives and a
 * compromised QEMU can drop only its own lock. */
struct sandbox_uid_lease {
    uid_t uid;
    gid_t gid;          /* same number as uid: a group of its own */
    int lock_fd;        /* read-only; -1 when not held */
    int hold_fd;        /* read-only, for QEMU; kept for respawns; -1 when none */
};
/* Picks a uid in [first, last] stable for `name` (hash of the name, then linear
 * probing), never 0, never one that names an existing user or group, never one
 * that a running VM holds or any running process uses. A lock file without a
 * holder is free. */
int sandbox_uid_acquire(const char *lock_dir, uid_t first, uid_t last, const char *name,
                        struct sandbox_uid_lease *out, struct qv_err *e);
/* For a supervisor that finds its QEMU still running: holds `uid` again next to
 * QEMU's own lock. Fails (-EWOULDBLOCK) only if someone holds it exclusively. */
int sandbox_uid_rehold(const char *lock_dir, uid_t uid, struct sandbox_uid_lease *out, struct qv_err *e);
/* Drops this process's holds (QEMU keeps its own). Idempotent. */
void sandbox_uid_release(struct sandbox_uid_lease *l);
/* Removes the lock files of uids that `name` held (by their contents) and nobody holds
 * now, under the allocation lock, so no allocator meets a file on its way out; a
 * transient VM's leases go with it. *removed counts them, *in_use those left because
 * a process holds the file or still runs as the uid (a QEMU on its way out). */
int sandbox_uid_forget(const char *lock_dir, const char *name, int *removed, int *in_use, struct qv_err *e);
/* Who holds uid's lock file according to its contents ("" if unknown); diagnostics. */
int sandbox_uid_holder(const char *lock_dir, uid_t uid, char *name, size_t len);
/* A fixed user or group from the passwd/group database; root is refused. */
int sandbox_user_lookup(const char *user, uid_t *uid, gid_t *gid, struct qv_err *e);
int sandbox_group_lookup(const char *group, gid_t *gid, struct qv_err *e);

/* ---- cgroups ------------------------------------------------------------------ */
/* CG_CPUACCT: CPU time used, for accounting only: v1's cpuacct hierarchy (the cpu one
 * when they are mounted together); under v2 it is in cpu.stat, always there. */
enum sandbox_cgroup_ctl { CG_MEMORY, CG_CPU, CG_PIDS, CG_IO, CG_CPUACCT, CG_NCTL };

struct sandbox_io_limit {
    unsigned major, minor;
    uint64_t rbps, wbps, riops, wiops;      /* 0: no limit */
};

/* 0 means "not limited" everywhere. Weights use the cgroup v2 scale (1..10000,
 * default 100) and are converted for v1 (cpu.shares, blkio.weight). */
struct sandbox_cgroup_limits {
    uint64_t memory_max;            /* bytes: guest RAM + sandbox_memory_overhead() unless overridden */
    uint64_t cpu_quota_us, cpu_period_us;
    unsigned cpu_weight;
    uint64_t pids_max;
    unsigned io_weight;
    const struct sandbox_io_limit *io;
    size_t nio;
};

struct sandbox_cgroup_params {
    const char *root;       /* cgroupfs mount, usually "/sys/fs/cgroup"; a fake tree in tests */
    const char *parent;     /* below each hierarchy root: "qvisor.slice" or the unit's delegated
                             * subtree; NULL: the cgroup this process is in */
    const char *name;       /* the leaf, usually the VM name */
    int version;            /* 0: detect from root; 1 or 2 to force */
    /* v2 only: the cgroup is parent/name with QEMU in it (not split) and no controller
     * is enabled on the way: a systemd unit's delegated cgroup (Delegate=yes) whose
     * service systemd must be able to restart into it while QEMU lives on, which
     * v2 refuses once the unit's cgroup passes controllers on (systemd 252 has no
     * DelegateSubgroup=). The unit's own limits apply then. */
    bool delegated;
};

/* One directory per hierarchy the VM joins: one for v2, one per controller for v1.
 * Each is a parent of two leaves (`split`): QEMU in qemu/, its supervisor in supervisor/,
 * so what the supervisor does for the VM (a console flood) is charged to the VM. Limits
 * sized for QEMU (memory_max with the OOM group, pids_max) are on qemu/; the others
 * (cpu quota and weight, io) on the VM's directory, for both. Processes live only in
 * the leaves, as cgroup v2 requires of a directory that passes controllers on. */
#define SANDBOX_CGROUP_QEMU "qemu"
#define SANDBOX_CGROUP_SUPERVISOR "supervisor"
enum sandbox_cgroup_leaf { CG_LEAF_QEMU, CG_LEAF_SUPERVISOR };

struct sandbox_cgroup {
    int version;
    bool split;                 /* false: recorded by an older qvisor, QEMU in dir itself */
    char root[PATH_MAX];        /* the cgroupfs mount it was resolved under */
    size_t ndirs;
    struct {
        char path[PATH_MAX];
        unsigned ctls;          /* bits (1u << CG_*) this directory controls */
    } dir[CG_NCTL];
    unsigned ctls;              /* controllers the VM's cgroup has */
    bool delegated;             /* see sandbox_cgroup_params */
};

/* Where the VM's cgroup lives, without creating anything (record it before
 * creating, so cleanup after a crash knows what to remove). */
int sandbox_cgroup_resolve(const struct sandbox_cgroup_params *p, struct sandbox_cgroup *cg,
                           struct qv_err *e);
/* Creates the cgroup (an existing empty one from an earlier run is reused; one
 * with processes is -EBUSY), enables controllers (v2), writes the limits and
 * reads them back. A limit whose controller is missing is a warning. */
int sandbox_cgroup_create(struct sandbox_cgroup *cg, const struct sandbox_cgroup_limits *l,
                          struct strv *warnings, struct qv_err *e);
/* Hierarchy directory i's leaf: DIR/qemu or DIR/supervisor (DIR when not split). */
int sandbox_cgroup_leaf(const struct sandbox_cgroup *cg, size_t i, enum sandbox_cgroup_leaf leaf, char *out,
                        size_t len);
/* Moves the process `pid` (all its threads) into the cgroup's qemu leaf. */
int sandbox_cgroup_attach(const struct sandbox_cgroup *cg, pid_t pid, struct qv_err *e);
/* Where this process was before it joined a VM's cgroup, per hierarchy directory. */
struct sandbox_cgroup_origin {
    size_t ndirs;
    char path[CG_NCTL][PATH_MAX];
};
/* Moves this process into the supervisor leaf, remembering where it was in `from`. */
int sandbox_cgroup_join_self(const struct sandbox_cgroup *cg, struct sandbox_cgroup_origin *from,
                             struct qv_err *e);
/* Moves this process back to `from` (to the hierarchy's root where that is gone or
 * cannot take processes), so that the VM's cgroup can be removed. */
int sandbox_cgroup_leave_self(const struct sandbox_cgroup *cg, const struct sandbox_cgroup_origin *from,
                              struct qv_err *e);
/* The limits and usage in force, as JSON (null: unlimited). */
int sandbox_cgroup_read(const struct sandbox_cgroup *cg, json_object **out, struct qv_err *e);
/* OOM kills so far (memory.events / memory.oom_control). */
int sandbox_cgroup_oom_kills(const struct sandbox_cgroup *cg, uint64_t *count);
/* After QEMU has exited: kills what is left in the cgroup (never this process: leave
 * it first), then removes it, leaves first, waiting at most timeout_ms for dying
 * processes. Absent is success. */
int sandbox_cgroup_remove(const struct sandbox_cgroup *cg, int timeout_ms, struct qv_err *e);

/* "150%" (of one CPU) to a quota per 100 ms period; "max" for none. */
int sandbox_parse_cpu_quota(const char *s, uint64_t *quota_us, uint64_t *period_us,
                            struct qv_err *e);
/* What QEMU needs on top of guest RAM: its own heap, page tables, per-vCPU stacks,
 * and under TCG the translation cache. */
uint64_t sandbox_memory_overhead(uint64_t guest_ram, unsigned vcpus, bool tcg);

/* ---- spawning ------------------------------------------------------------------- */
struct sandbox_fd {
    int source;     /* in the parent */
    int target;     /* number in the child; 0..2 allowed */
};

#define SANDBOX_MAX_FDS 256
#define SANDBOX_MAX_GROUPS 8

struct sandbox_spec {
    const char *name;               /* for messages: "web1" */
    const char *path;               /* the executable, absolute */
    const char *const *argv;
    const char *const *envp;        /* the child's whole environment; NULL: empty */

    const struct sandbox_fd *fds;   /* everything else is closed */
    size_t nfds;
    int stdout_fd, stderr_fd;       /* -1: /dev/null (stdin is always /dev/null
                                     * unless mapped to 0 in fds) */
    int hold_fd;                    /* kept open at a free number, not named in argv:
                                     * the uid lease's hold_fd; -1: none */
    bool setsid;                    /* own session: a terminal's ^C does not reach QEMU */
    /* PR_SET_PDEATHSIG for the program (0: none): it gets this signal when the thread
     * that spawned it ends. Set after the ids change (a change clears it); a parent
     * already gone by then fails the spawn. */
    int parent_death_signal;

    unsigned enable;                /* steps to apply (sandbox_spec_init: all) */
    unsigned require;               /* steps that must not be skipped */
    const struct sandbox_host *host;    /* NULL: checked during the call */

    /* user */
    uid_t uid;                      /* (uid_t)-1 until set; never 0 */
    gid_t gid;
    gid_t groups[SANDBOX_MAX_GROUPS];   /* supplementary: none, or the configured group */
    size_t ngroups;

    /* caps: 0 clears every set. Otherwise (bits 1ull << CAP_*) exactly these stay in the
     * permitted, effective and bounding sets and the user step must be disabled: for a
     * helper that has to stay root (virtiofsd serves each file as its owner and switches
     * to the guest caller's ids per request); inheritable and ambient are still empty
     * and no_new_privs still holds, so exec keeps no more than these. */
    uint64_t keep_caps;

    /* cgroup: joined when set (created by the caller) */
    const struct sandbox_cgroup *cgroup;
    /* the caller moves the child into `cgroup` itself with sandbox_cgroup_attach()
     * once it runs, before any untrusted code does (QEMU started with -S runs no
     * guest code until `cont`): moving a process waits for an RCU grace period
     * (12-30 ms), and this way that wait overlaps the program's own start-up */
    bool cgroup_after_exec;

    /* mount namespace */
    const char *const *ro_paths;    /* VM-specific read-only files or dirs: kernel, initrd */
    const char *const *rw_paths;    /* writable binds (a hugetlbfs mount); use sparingly */
    const char *const *devices;     /* extra device nodes, e.g. "/dev/vhost-vsock" */
    const char *const *system_paths;    /* NULL: sandbox_default_system_paths */
    bool kvm;                       /* /dev/kvm in the private /dev, owned by uid */
    const char *chroot;             /* a tree used read-only as the root instead of
                                     * the host's binds; needs dev, proc, tmp dirs */
    uint64_t tmp_size;              /* private /tmp; 0: 16 MiB */

    /* rlimits: 0 leaves a limit as inherited; UINT64_MAX is unlimited */
    uint64_t nofile, memlock;
    bool coredump;                  /* false: RLIMIT_CORE 0 */

    /* seccomp */
    const char *const *extra_deny;  /* more syscall names answering EPERM */
    bool allow_userfaultfd;         /* postcopy migration */

    int timeout_ms;                 /* for the child to reach execve; 0: 10 s */

    /* Called in the parent right after fork, before the child does anything at all
     * (it waits on a pipe): record the pid here. Failing, or dying, here means the
     * child exits untouched. NULL: the child goes on at once. */
    int (*forked)(pid_t pid, void *opaque, struct qv_err *e);
    void *opaque;
};

/* Defaults: every step enabled, none required, fds -1, seccomp on. */
void sandbox_spec_init(struct sandbox_spec *s);

/* Host paths QEMU needs read-only (libraries, loader, firmware, modules);
 * entries absent on this host are ignored. NULL-terminated. */
extern const char *const sandbox_default_system_paths[];

/* Forks, confines, execs. On success *pid is QEMU's pid (the caller reaps it) and
 * skipped steps, if any, are in `warnings` (may be NULL). On failure nothing is
 * left running and e says which step failed and why. */
int sandbox_spawn(const struct sandbox_spec *spec, pid_t *pid, struct strv *warnings,
                  struct qv_err *e);

/* ---- the seccomp deny list ------------------------------------------------------ */
struct sandbox_denied_syscall {
    const char *name;
    int err;                /* EPERM, or ENOSYS for clone3 */
    const char *when;       /* NULL: always; otherwise the argument condition */
    const char *reason;
};
/* Whether this architecture knows a syscall by that name (for `sandbox.extra_deny`). */
bool sandbox_syscall_known(const char *name);
/* The built-in list, as loaded (userfaultfd included; dropped when allowed). */
const struct sandbox_denied_syscall *sandbox_seccomp_denied(size_t *n);

/* ---- what is in force for a running process ---------------------------------------- */
/* uid/gid/groups, the five capability sets, NoNewPrivs, Seccomp mode and filter
 * count, namespaces that differ from ours, rlimits, the /dev it sees, the cgroup
 * paths and their limits (`cgroup_root` as for sandbox_cgroup_params). */
int sandbox_inspect(pid_t pid, const char *cgroup_root, json_object **out, struct qv_err *e);
/* Whether pid is in another namespace of kind `ns` ("net", "mnt", ...) than we are;
 * false when either cannot be read. */
bool sandbox_own_namespace(pid_t pid, const char *ns);

#endif
