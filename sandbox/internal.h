/* sandbox internals: the plans prepared in the parent before fork and the
 * steps that carry them out in the child. Everything the child needs is computed
 * (paths formatted, the seccomp program compiled) before fork, so the child
 * only makes system calls. Not part of the module's interface. */
#ifndef QV_SANDBOX_INTERNAL_H
#define QV_SANDBOX_INTERNAL_H

#include <linux/filter.h>
#include "sandbox/sandbox.h"

/* ---- child error reporting -----------------------------------------------------
 * One record on a CLOEXEC pipe; a successful execve closes it with nothing written. */
struct child_report {
    int err;            /* positive errno */
    char msg[500];      /* "mount: pivot_root" */
};

/* Writes the report and _exits. Uses only write(2) and vsnprintf of %s/%d/%u. */
_Noreturn void child_fail(int errfd, int err, const char *fmt, ...) QV_PRINTF(3, 4);

/* ---- mount namespace ----------------------------------------------------------- */
enum mnt_kind { MNT_RO, MNT_RW, MNT_LINK };

struct mnt_entry {
    enum mnt_kind kind;
    bool dir;
    char *src;          /* "/oldroot/usr": where the host path is after the first pivot */
    char *dst;          /* "/newroot/usr" */
    char *target;       /* symlink target for MNT_LINK */
    uint64_t mnt_id;    /* of the host path, to skip paths an earlier bind already shows */
    char *host;         /* the host path, for messages and the covering check */
};

struct mnt_node {
    char *dst;          /* "/newroot/dev/kvm" */
    mode_t mode;        /* S_IFCHR | perms */
    dev_t rdev;
    bool owned;         /* chown to the VM's uid (kvm, extra devices) */
    bool bind_ok;       /* world-usable node: a bind of the host's node will do if mknod fails */
    char *host;         /* "/oldroot/dev/null" */
};

struct mnt_plan {
    char *root_src;     /* chroot: "/oldroot/<dir>"; NULL: a fresh tmpfs */
    struct mnt_entry *e;
    size_t n, cap;
    struct mnt_node *nodes;
    size_t nnodes, capnodes;
    char tmp_opts[64];
    uid_t owner;
    gid_t owner_gid;
    bool chown_nodes;
};

/* Resolves every path (realpath, lstat) and orders the binds. `exec_path` is the
 * canonical executable, bound unless a system bind already shows it. */
int mnt_plan_build(const struct sandbox_spec *s, const char *exec_path, struct mnt_plan *p,
                   struct qv_err *e);
void mnt_plan_free(struct mnt_plan *p);
/* Child: unshare, build the new root, pivot into it. Fails through child_fail. */
void mnt_apply(const struct mnt_plan *p, int errfd);

/* ---- seccomp ---------------------------------------------------------------------- */
struct sc_prog {
    struct sock_filter *filter;
    unsigned short len;
};
int sc_build(const struct sandbox_spec *s, struct sc_prog *out, struct qv_err *e);
void sc_free(struct sc_prog *p);
/* Child: one prctl. */
void sc_apply(const struct sc_prog *p, int errfd);

/* ---- cgroup helpers shared with inspect ----------------------------------------------- */
/* Limits and usage of one directory of a hierarchy into `o` (keys per controller). */
void cg_dir_read(int version, const char *dir, unsigned ctls, json_object *o);
/* The v1 hierarchy directory for a controller under root ("memory", "cpu,cpuacct"...). */
int cg_v1_hierarchy(const char *root, enum sandbox_cgroup_ctl c, char *out, size_t len);
/* "/sys/fs/cgroup" is v2 when it holds cgroup.controllers, v1 when it holds hierarchies. */
int cg_detect_version(const char *root);
/* cgroup_limits.c: writes the limits of `ctls` into dir; the controllers l asks for. */
int cg_write(const char *dir, const char *file, const char *value);
int cg_write_limits(int version, const char *dir, unsigned ctls, const struct sandbox_cgroup_limits *l,
                    struct strv *warnings, struct qv_err *e);
unsigned cg_wanted(const struct sandbox_cgroup_limits *l);
extern const char *const cg_ctl_names[CG_NCTL];     /* "memory", "cpu", "pids", "io", "cpuacct" */
extern const char *const cg_v1_names[CG_NCTL];      /* the same for v1: "blkio" for io */

/* ---- small helpers ------------------------------------------------------------------- */
/* The value of "Key:\t..." in /proc/PID/status-like text into out (trimmed). */
bool status_field(const char *text, const char *key, char *out, size_t len);

#endif
