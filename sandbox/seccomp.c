/* The launcher's seccomp filter: "allow" by default (QEMU's own -sandbox adds its
 * stricter rules once it has started), with a deny list of what a VMM never
 * needs. Compiled to BPF in the parent with libseccomp; the child loads the
 * program with one prctl, so nothing allocates after fork.
 *
 * Deliberately NOT denied: io_uring_setup/enter/register (aio=io_uring), fork,
 * vfork, execve (QEMU's spawn=deny takes over after its start-up), seccomp
 * (QEMU installs its own filter), mbind/set_mempolicy (host-nodes), memfd_create. */
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <linux/seccomp.h>
#include <seccomp.h>

#include "sandbox/internal.h"

static const struct sandbox_denied_syscall denied[] = {
    /* clone3 passes its flags in memory, where no filter can look: answering ENOSYS
     * makes glibc fall back to clone, whose flags we can check. EPERM would make
     * pthread_create fail instead. */
    {"clone3", ENOSYS, NULL, "flags out of reach of the filter; glibc falls back to clone"},
    {"clone", EPERM, "flags contain CLONE_NEW*", "new namespaces are the way to a root user inside one"},
    {"unshare", EPERM, NULL, "new namespaces (user, mount, net) widen the kernel surface"},
    {"setns", EPERM, NULL, "joining another namespace leaves the sandbox"},
    {"mount", EPERM, NULL, "the mount table is fixed at exec"},
    {"umount2", EPERM, NULL, "unmounting could reveal what private mounts hide"},
    {"pivot_root", EPERM, NULL, "the root is fixed at exec"},
    {"chroot", EPERM, NULL, "the root is fixed at exec"},
    {"move_mount", EPERM, NULL, "new mount API: same as mount"},
    {"open_tree", EPERM, NULL, "new mount API: detached copies of mounts"},
    {"fsopen", EPERM, NULL, "new mount API: creating file systems"},
    {"fsconfig", EPERM, NULL, "new mount API: configuring file systems"},
    {"fsmount", EPERM, NULL, "new mount API: creating mounts"},
    {"fspick", EPERM, NULL, "new mount API: reconfiguring mounts"},
    {"mount_setattr", EPERM, NULL, "changing mount flags such as read-only"},
    {"kexec_load", EPERM, NULL, "replacing the host kernel"},
    {"kexec_file_load", EPERM, NULL, "replacing the host kernel"},
    {"init_module", EPERM, NULL, "loading kernel code"},
    {"finit_module", EPERM, NULL, "loading kernel code"},
    {"delete_module", EPERM, NULL, "unloading kernel code"},
    {"create_module", EPERM, NULL, "obsolete module interface"},
    {"query_module", EPERM, NULL, "obsolete module interface"},
    {"get_kernel_syms", EPERM, NULL, "obsolete module interface, leaks kernel addresses"},
    {"bpf", EPERM, NULL, "kernel program loading, a frequent exploit primitive"},
    {"perf_event_open", EPERM, NULL, "side channels and a large, often vulnerable interface"},
    {"ptrace", EPERM, NULL, "tracing other processes of the same uid"},
    {"process_vm_readv", EPERM, NULL, "reading another process's memory"},
    {"process_vm_writev", EPERM, NULL, "writing another process's memory"},
    {"process_madvise", EPERM, NULL, "acting on another process's memory"},
    {"pidfd_getfd", EPERM, NULL, "stealing another process's file descriptors"},
    {"kcmp", EPERM, NULL, "probing other processes' kernel objects"},
    {"keyctl", EPERM, NULL, "kernel keyrings hold host secrets"},
    {"add_key", EPERM, NULL, "kernel keyrings hold host secrets"},
    {"request_key", EPERM, NULL, "kernel keyrings, and upcalls to user space helpers"},
    {"reboot", EPERM, NULL, "the host's power state"},
    {"swapon", EPERM, NULL, "host memory management"},
    {"swapoff", EPERM, NULL, "host memory management"},
    {"acct", EPERM, NULL, "host process accounting"},
    {"quotactl", EPERM, NULL, "host disk quotas"},
    {"quotactl_fd", EPERM, NULL, "host disk quotas"},
    {"syslog", EPERM, NULL, "the kernel log leaks addresses"},
    {"userfaultfd", EPERM, NULL, "stalls kernel accesses at will, an exploit aid; postcopy only"},
    {"open_by_handle_at", EPERM, NULL, "opens files by handle, around every mount (the 'shocker' escape)"},
    {"name_to_handle_at", EPERM, NULL, "the other half of open_by_handle_at"},
    {"lookup_dcookie", EPERM, NULL, "obsolete profiling interface"},
    {"iopl", EPERM, NULL, "direct access to host I/O ports"},
    {"ioperm", EPERM, NULL, "direct access to host I/O ports"},
    {"modify_ldt", EPERM, NULL, "16-bit segments, a history of kernel bugs; QEMU never needs them"},
    {"settimeofday", EPERM, NULL, "the host clock"},
    {"clock_settime", EPERM, NULL, "the host clock"},
    {"clock_adjtime", EPERM, NULL, "the host clock"},
    {"adjtimex", EPERM, NULL, "the host clock"},
    {"sethostname", EPERM, NULL, "the host's name"},
    {"setdomainname", EPERM, NULL, "the host's name"},
    {"fanotify_init", EPERM, NULL, "watching the host's file systems"},
    {"personality", EPERM, "persona is not the query 0xffffffff",
     "READ_IMPLIES_EXEC and ADDR_NO_RANDOMIZE undo W^X and ASLR; reading stays allowed"},
    {"uselib", EPERM, NULL, "obsolete a.out loader"},
    {"_sysctl", EPERM, NULL, "obsolete, removed from the kernel"},
    {"sysfs", EPERM, NULL, "obsolete"},
    {"vhangup", EPERM, NULL, "hanging up terminals"},
};

bool sandbox_syscall_known(const char *name)
{
    return name && *name && seccomp_syscall_resolve_name(name) != __NR_SCMP_ERROR;
}

const struct sandbox_denied_syscall *sandbox_seccomp_denied(size_t *n)
{
    *n = ARRAY_SIZE(denied);
    return denied;
}

static void ctx_releasep(scmp_filter_ctx *c)
{
    if (*c)
        seccomp_release(*c);
}

static int add_clone_rules(scmp_filter_ctx ctx, int nr)
{
    /* One rule per flag: conditions of one rule are ANDed, rules are ORed. */
    static const uint64_t ns_flags[] = {CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                                        CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP};
    for (size_t i = 0; i < ARRAY_SIZE(ns_flags); i++) {
        int r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 1,
                                 SCMP_A0_64(SCMP_CMP_MASKED_EQ, ns_flags[i], ns_flags[i]));
        if (r < 0)
            return r;
    }
    return 0;
}

static int add_rule(scmp_filter_ctx ctx, const struct sandbox_denied_syscall *d, struct qv_err *e)
{
    int nr = seccomp_syscall_resolve_name(d->name);
    /* Not a system call on this architecture: nothing to deny. */
    if (nr < 0)
        return 0;
    int r;
    if (strcmp(d->name, "clone") == 0)
        r = add_clone_rules(ctx, nr);
    else if (strcmp(d->name, "personality") == 0)
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO((unsigned)d->err), nr, 1,
                             SCMP_A0_32(SCMP_CMP_NE, 0xffffffffu));
    else
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO((unsigned)d->err), nr, 0);
    if (r < 0)
        return qv_failerr(e, r, "seccomp: rule for %s", d->name);
    return 0;
}

int sc_build(const struct sandbox_spec *s, struct sc_prog *out, struct qv_err *e)
{
    _cleanup_(ctx_releasep) scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx)
        return qv_fail(e, -ENOMEM, "seccomp: cannot create a filter");
    /* The child sets no_new_privs itself, before and independently of the filter. */
    int r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
    if (r < 0)
        return qv_failerr(e, r, "seccomp: attribute");
    for (size_t i = 0; i < ARRAY_SIZE(denied); i++) {
        if (s->allow_userfaultfd && strcmp(denied[i].name, "userfaultfd") == 0)
            continue;
        r = add_rule(ctx, &denied[i], e);
        if (r < 0)
            return r;
    }
    for (size_t i = 0; s->extra_deny && s->extra_deny[i]; i++) {
        const char *name = s->extra_deny[i];
        int nr = seccomp_syscall_resolve_name(name);
        if (nr == __NR_SCMP_ERROR)
            return qv_fail(e, -EINVAL, "seccomp: extra_deny: \"%s\" is not a system call", name);
        if (nr < 0)
            continue;
        r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
        /* Already in the list, possibly with another errno: the built-in rule stands. */
        if (r < 0 && r != -EEXIST)
            return qv_failerr(e, r, "seccomp: extra_deny: %s", name);
    }

    int fd = memfd_create("qvisor-seccomp", MFD_CLOEXEC);
    if (fd < 0)
        return qv_failerr(e, -errno, "seccomp: memfd_create");
    _cleanup_close_ int mfd = fd;
    r = seccomp_export_bpf(ctx, mfd);
    if (r < 0)
        return qv_failerr(e, r, "seccomp: export");
    off_t size = lseek(mfd, 0, SEEK_END);
    if (size <= 0 || size % (off_t)sizeof(struct sock_filter) != 0 ||
        size / (off_t)sizeof(struct sock_filter) > BPF_MAXINSNS)
        return qv_fail(e, -EINVAL, "seccomp: exported program has a bad size (%lld bytes)",
                       (long long)size);
    _cleanup_free_ struct sock_filter *f = qv_xmalloc((size_t)size);
    if (pread(mfd, f, (size_t)size, 0) != size)
        return qv_failerr(e, -EIO, "seccomp: reading the exported program");
    out->filter = qv_steal_ptr(&f);
    out->len = (unsigned short)(size / (off_t)sizeof(struct sock_filter));
    return 0;
}

void sc_free(struct sc_prog *p)
{
    free(p->filter);
    p->filter = NULL;
    p->len = 0;
}

void sc_apply(const struct sc_prog *p, int errfd)
{
    struct sock_fprog prog = {.len = p->len, .filter = p->filter};
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
        child_fail(errfd, errno, "seccomp: loading the filter");
}
