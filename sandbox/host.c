/* What this host lets us apply, found by trying rather than guessing: the
 * mount namespace is exercised in a throw-away child, capabilities are read
 * from the kernel, seccomp is asked whether its errno action exists. */
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <linux/capability.h>
#include <linux/seccomp.h>

#include "sandbox/internal.h"

static bool have_cap(const struct __user_cap_data_struct d[2], int cap)
{
    return d[cap / 32].effective & (1u << (cap % 32));
}

static void set(struct sandbox_host *h, enum sandbox_step s, bool ok, const char *fmt, ...) QV_PRINTF(4, 5);
static void set(struct sandbox_host *h, enum sandbox_step s, bool ok, const char *fmt, ...)
{
    h->step[s].available = ok;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->step[s].detail, sizeof(h->step[s].detail), fmt, ap);
    va_end(ap);
}

static uint64_t as_u64(rlim_t v)
{
    return v == RLIM_INFINITY ? UINT64_MAX : (uint64_t)v;
}

/* The child does what mnt_apply does, on a small scale, and reports the first
 * failure; mknod is reported separately because /dev can do without it. */
static _Noreturn void probe_mount_child(int errfd, int mknod_fd)
{
    if (unshare(CLONE_NEWNS) < 0)
        child_fail(errfd, errno, "unshare(CLONE_NEWNS)");
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        child_fail(errfd, errno, "making / a slave");
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=64k") < 0)
        child_fail(errfd, errno, "tmpfs");
    if (chdir("/tmp") < 0 || mkdir("new", 0755) < 0 || mkdir("old", 0700) < 0 || mkdir("proc", 0755) < 0)
        child_fail(errfd, errno, "mkdir in tmpfs");
    bool nodes = mknod("null", S_IFCHR | 0666, makedev(1, 3)) == 0;
    if (write(mknod_fd, nodes ? "1" : "0", 1) != 1)
        child_fail(errfd, errno, "reporting mknod");
    if (mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        child_fail(errfd, errno, "proc");
    if (mount("tmpfs", "new", "tmpfs", 0, "size=64k") < 0)
        child_fail(errfd, errno, "tmpfs");
    if (syscall(SYS_pivot_root, ".", "old") < 0)
        child_fail(errfd, errno, "pivot_root");
    _exit(0);
}

static void probe_mount(struct sandbox_host *h)
{
    int ep[2], mp[2];
    if (pipe2(ep, O_CLOEXEC) < 0) {
        set(h, SANDBOX_MOUNT, false, "pipe: %s", strerror(errno));
        return;
    }
    if (pipe2(mp, O_CLOEXEC) < 0) {
        set(h, SANDBOX_MOUNT, false, "pipe: %s", strerror(errno));
        close(ep[0]);
        close(ep[1]);
        return;
    }
    pid_t pid = fork();
    if (pid == 0)
        probe_mount_child(ep[1], mp[1]);
    close(ep[1]);
    close(mp[1]);
    if (pid < 0) {
        set(h, SANDBOX_MOUNT, false, "fork: %s", strerror(errno));
        close(ep[0]);
        close(mp[0]);
        return;
    }
    struct child_report rep;
    ssize_t n;
    while ((n = read(ep[0], &rep, sizeof(rep))) < 0 && errno == EINTR)
        ;
    char node = '0';
    while (read(mp[0], &node, 1) < 0 && errno == EINTR)
        ;
    close(ep[0]);
    close(mp[0]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
        ;
    h->mknod = node == '1';
    if (n == (ssize_t)sizeof(rep)) {
        rep.msg[sizeof(rep.msg) - 1] = '\0';
        set(h, SANDBOX_MOUNT, false, "%s: %s", rep.msg, strerror(rep.err));
    } else {
        set(h, SANDBOX_MOUNT, true, "private mount namespace, tmpfs, proc, pivot_root%s",
            h->mknod ? ", device nodes" : "; no mknod: only world-usable host nodes, no /dev/kvm");
    }
}

static void probe_network(struct sandbox_host *h)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWNET) < 0 ? errno : 0);
    int st = 0;
    while (pid > 0 && waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    int err = pid < 0 ? errno : WIFEXITED(st) ? WEXITSTATUS(st) : EIO;
    if (err)
        set(h, SANDBOX_NETWORK, false, "unshare(CLONE_NEWNET): %s", strerror(err));
    else
        set(h, SANDBOX_NETWORK, true, "private network namespace with nothing but a down loopback");
}

static void probe_cgroup(struct sandbox_host *h, const char *root)
{
    h->cgroup_version = cg_detect_version(root);
    struct buf names = {0};
    buf_adds(&names, "");
    bool writable = false;
    if (h->cgroup_version == 2) {
        char avail[512] = "";
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/cgroup.controllers", root);
        read_file_small(path, avail, sizeof(avail));
        for (int c = 0; c < CG_NCTL; c++) {
            const char *n = cg_ctl_names[c];
            size_t len = strlen(n);
            for (const char *p = avail; (p = strstr(p, n)) != NULL; p += len)
                if ((p == avail || p[-1] == ' ') && (p[len] == ' ' || p[len] == '\n' || !p[len])) {
                    buf_printf(&names, "%s%s", names.len ? " " : "", n);
                    break;
                }
        }
        writable = access(root, W_OK) == 0;
    } else if (h->cgroup_version == 1) {
        for (int c = 0; c < CG_NCTL; c++) {
            char dir[PATH_MAX];
            if (cg_v1_hierarchy(root, c, dir, sizeof(dir)) == 0) {
                buf_printf(&names, "%s%s", names.len ? " " : "", cg_v1_names[c]);
                writable |= access(dir, W_OK) == 0;
            }
        }
    }
    snprintf(h->cgroup_controllers, sizeof(h->cgroup_controllers), "%s", names.p);
    if (h->cgroup_version == 0)
        set(h, SANDBOX_CGROUP, false, "no cgroup hierarchy under %s", root);
    else if (!names.len)
        set(h, SANDBOX_CGROUP, false, "cgroup v%d under %s has none of memory, cpu, pids, io",
            h->cgroup_version, root);
    else if (!writable)
        set(h, SANDBOX_CGROUP, false, "cgroup v%d under %s is not writable", h->cgroup_version, root);
    else
        set(h, SANDBOX_CGROUP, true, "v%d: %s", h->cgroup_version, names.p);
    buf_free(&names);
}

void sandbox_host_check(const char *cgroup_root, struct sandbox_host *h)
{
    memset(h, 0, sizeof(*h));
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct d[2] = {0};
    syscall(SYS_capget, &hdr, d);

    probe_cgroup(h, cgroup_root ? cgroup_root : "/sys/fs/cgroup");

    if (have_cap(d, CAP_SYS_ADMIN)) {
        probe_mount(h);
        probe_network(h);
    } else {
        set(h, SANDBOX_MOUNT, false, "a mount namespace needs CAP_SYS_ADMIN (run as root)");
        set(h, SANDBOX_NETWORK, false, "a network namespace needs CAP_SYS_ADMIN (run as root)");
    }

    struct rlimit nofile = {0}, memlock = {0};
    getrlimit(RLIMIT_NOFILE, &nofile);
    getrlimit(RLIMIT_MEMLOCK, &memlock);
    h->nofile_hard = as_u64(nofile.rlim_max);
    h->memlock_hard = as_u64(memlock.rlim_max);
    h->cap_sys_resource = have_cap(d, CAP_SYS_RESOURCE);
    char memlock_text[32] = "unlimited";
    if (h->memlock_hard != UINT64_MAX)
        snprintf(memlock_text, sizeof(memlock_text), "%llu", (unsigned long long)h->memlock_hard);
    set(h, SANDBOX_RLIMITS, true, "hard limits nofile %llu, memlock %s; %s",
        (unsigned long long)h->nofile_hard, memlock_text,
        h->cap_sys_resource ? "CAP_SYS_RESOURCE: they can be raised" : "no CAP_SYS_RESOURCE: they cannot be raised");

    if (have_cap(d, CAP_SETUID) && have_cap(d, CAP_SETGID))
        set(h, SANDBOX_USER, true, "can switch to the VM's own uid and gid");
    else
        set(h, SANDBOX_USER, false, "switching uid needs CAP_SETUID and CAP_SETGID (run as root); "
            "QEMU would run as uid %u", (unsigned)getuid());

    bool bounding_empty = true;
    for (int c = 0; c < 64; c++)
        if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1)
            bounding_empty = false;
    if (have_cap(d, CAP_SETPCAP) || bounding_empty)
        set(h, SANDBOX_CAPS, true, "effective, permitted, inheritable, ambient and bounding sets can be cleared");
    else
        set(h, SANDBOX_CAPS, false, "no CAP_SETPCAP: the bounding set cannot be cleared (the other sets are)");

    unsigned action = SECCOMP_RET_ERRNO;
    if (prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0)
        set(h, SANDBOX_SECCOMP, false, "the kernel has no seccomp: %s", strerror(errno));
    /* Kernels before 4.14 do not know the question (EINVAL) but have the action. */
    else if (syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action) < 0 && errno == EOPNOTSUPP)
        set(h, SANDBOX_SECCOMP, false, "seccomp cannot answer with an errno: %s", strerror(errno));
    else
        set(h, SANDBOX_SECCOMP, true, "filters with errno answers");

    struct stat st;
    h->kvm = stat("/dev/kvm", &st) == 0 && S_ISCHR(st.st_mode);
}

json_object *sandbox_host_json(const struct sandbox_host *h)
{
    json_object *o = json_object_new_object();
    json_object *steps = json_object_new_object();
    for (int s = 0; s < SANDBOX_NSTEPS; s++) {
        json_object *st = json_object_new_object();
        json_object_object_add(st, "available", json_object_new_boolean(h->step[s].available));
        json_object_object_add(st, "detail", json_object_new_string(h->step[s].detail));
        json_object_object_add(steps, sandbox_step_name(s), st);
    }
    json_object_object_add(o, "steps", steps);
    json_object_object_add(o, "cgroup_version", json_object_new_int(h->cgroup_version));
    json_object_object_add(o, "cgroup_controllers", json_object_new_string(h->cgroup_controllers));
    json_object_object_add(o, "kvm", json_object_new_boolean(h->kvm));
    json_object_object_add(o, "mknod", json_object_new_boolean(h->mknod));
    json_object_object_add(o, "cap_sys_resource", json_object_new_boolean(h->cap_sys_resource));
    json_object_object_add(o, "nofile_hard", h->nofile_hard == UINT64_MAX ? NULL
                                                 : json_object_new_int64((int64_t)h->nofile_hard));
    json_object_object_add(o, "memlock_hard", h->memlock_hard == UINT64_MAX ? NULL
                                                  : json_object_new_int64((int64_t)h->memlock_hard));
    return o;
}
