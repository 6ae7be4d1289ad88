/* Started through sandbox_spawn by the tests, in place of QEMU: reports as one
 * JSON object on an inherited fd what a confined process sees and may do.
 *   sandbox_probe --report FD [--hidden PATH]... [--visible PATH]... [--wait FD] [--noop]
 * --noop exits at once (for timing); --wait blocks until FD reaches EOF after
 * reporting, so that the test can inspect the running process.
 * Started with a QEMU command line instead ("-name ..."), it stands in for QEMU
 * behind the supervisor's own spawn path: it reports on stdout (the VM's log) as
 * one line "PROBE-REPORT {...}" and exits. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/kvm.h>
#include <seccomp.h>

#include "sandbox/sandbox.h"

extern char **environ;

static json_object *listing(const char *dir, bool skip_own_fd)
{
    DIR *d = opendir(dir);
    if (!d)
        return json_object_new_int(-errno);
    struct strv names = {0};
    struct dirent *de;
    char own[16];
    snprintf(own, sizeof(own), "%d", dirfd(d));
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (skip_own_fd && !strcmp(de->d_name, own))
            continue;
        strv_push(&names, de->d_name);
    }
    closedir(d);
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < names.n; i++)
        json_object_array_add(a, json_object_new_string(names.v[i]));
    strv_free(&names);
    return a;
}

static int err_of(long r)
{
    return r < 0 ? errno : 0;
}

static json_object *status_fields(void)
{
    _cleanup_free_ char *text = NULL;
    json_object *o = json_object_new_object();
    if (read_file("/proc/self/status", 1 << 16, &text, NULL) < 0)
        return o;
    static const char *const keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
                                       "Seccomp", "Seccomp_filters", "SigBlk", "SigIgn"};
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        size_t n = strlen(keys[i]);
        for (char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
            if (strncmp(line, keys[i], n) || line[n] != ':')
                continue;
            char *v = line + n + 1;
            while (*v == '\t' || *v == ' ')
                v++;
            size_t len = strcspn(v, "\n");
            json_object_object_add(o, keys[i], json_object_new_string_len(v, (int)len));
        }
    }
    return o;
}

/* Arguments that make each call fail harmlessly in the kernel (bad pointers,
 * fds, flags) should the filter let it through. */
static long try_syscall(const char *name, int nr)
{
    long bad = -1;
    if (!strcmp(name, "personality")) {
        long r = syscall(nr, PER_LINUX32);
        if (r >= 0)
            syscall(nr, PER_LINUX);
        return r;
    }
    if (!strcmp(name, "clone"))
        return syscall(nr, CLONE_NEWUSER | CLONE_THREAD, 0, 0, 0, 0);
    if (!strcmp(name, "vhangup"))
        return syscall(nr);
    return syscall(nr, bad, bad, bad, bad, bad, bad);
}

/* Abstract unix sockets belong to a network namespace: the test listens on this one
 * in the host's (`sandbox_probe --listen-abstract`), the confined probe connects. */
#define PROBE_ABSTRACT "qvisor-sandbox-probe"

static socklen_t abstract_addr(struct sockaddr_un *a)
{
    memset(a, 0, sizeof(*a));
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path + 1, PROBE_ABSTRACT, strlen(PROBE_ABSTRACT));
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(PROBE_ABSTRACT));
}

static int listen_abstract(void)
{
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, len) < 0 || listen(fd, 8) < 0) {
        perror("listen-abstract");
        return 1;
    }
    printf("listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c >= 0)
            close(c);
    }
}

/* What the network around the probe lets it reach: 0 when connected, else errno. */
static json_object *network_results(void)
{
    json_object *o = json_object_new_object();
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    json_object_object_add(o, "abstract", json_object_new_int(fd < 0 ? errno : err_of(connect(fd, (struct sockaddr *)&a, len))));
    if (fd >= 0)
        close(fd);
    /* port 9 (discard) has no listener: the host's loopback refuses, an empty
     * namespace's loopback is down and unreachable */
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    json_object_object_add(o, "loopback_tcp", json_object_new_int(fd < 0 ? errno : err_of(connect(fd, (struct sockaddr *)&in, sizeof(in)))));
    if (fd >= 0)
        close(fd);
    struct if_nameindex *ifs = if_nameindex();
    json_object *names = json_object_new_array();
    for (struct if_nameindex *i = ifs; i && i->if_index; i++)
        json_object_array_add(names, json_object_new_string(i->if_name));
    if (ifs)
        if_freenameindex(ifs);
    json_object_object_add(o, "interfaces", names);
    return o;
}

static json_object *denied_results(void)
{
    json_object *o = json_object_new_object();
    size_t n;
    const struct sandbox_denied_syscall *d = sandbox_seccomp_denied(&n);
    for (size_t i = 0; i < n; i++) {
        int nr = seccomp_syscall_resolve_name(d[i].name);
        if (nr < 0)
            continue;
        errno = 0;
        long r = try_syscall(d[i].name, nr);
        json_object_object_add(o, d[i].name, json_object_new_int(err_of(r)));
    }
    return o;
}

static void *thread_main(void *arg)
{
    return arg;
}

static json_object *rlimit_pair(int res)
{
    struct rlimit rl;
    json_object *a = json_object_new_array();
    if (getrlimit(res, &rl) < 0)
        return a;
    json_object_array_add(a, rl.rlim_cur == RLIM_INFINITY ? NULL : json_object_new_int64((int64_t)rl.rlim_cur));
    json_object_array_add(a, rl.rlim_max == RLIM_INFINITY ? NULL : json_object_new_int64((int64_t)rl.rlim_max));
    return a;
}

static json_object *ids(void)
{
    json_object *o = json_object_new_object();
    uid_t r, e, s;
    gid_t gr, ge, gs;
    getresuid(&r, &e, &s);
    getresgid(&gr, &ge, &gs);
    json_object *u = json_object_new_array(), *g = json_object_new_array(), *groups = json_object_new_array();
    json_object_array_add(u, json_object_new_int64(r));
    json_object_array_add(u, json_object_new_int64(e));
    json_object_array_add(u, json_object_new_int64(s));
    json_object_array_add(g, json_object_new_int64(gr));
    json_object_array_add(g, json_object_new_int64(ge));
    json_object_array_add(g, json_object_new_int64(gs));
    gid_t list[64];
    int n = getgroups(64, list);
    for (int i = 0; i < n; i++)
        json_object_array_add(groups, json_object_new_int64(list[i]));
    json_object_object_add(o, "uid", u);
    json_object_object_add(o, "gid", g);
    json_object_object_add(o, "groups", groups);
    return o;
}

static int exec_self(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        char *const argv[] = {"sandbox_probe", "--noop", NULL};
        execve("/proc/self/exe", argv, environ);
        _exit(100 + (errno & 63));
    }
    int st;
    if (waitpid(pid, &st, 0) < 0)
        return -errno;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static json_object *paths_report(char **paths, size_t n, bool try_write)
{
    json_object *o = json_object_new_object();
    for (size_t i = 0; i < n; i++) {
        json_object *p = json_object_new_object();
        struct stat st;
        json_object_object_add(p, "stat", json_object_new_int(err_of(stat(paths[i], &st))));
        if (try_write) {
            int fd = open(paths[i], O_RDONLY | O_CLOEXEC);
            json_object_object_add(p, "read", json_object_new_int(err_of(fd)));
            if (fd >= 0)
                close(fd);
            fd = open(paths[i], O_WRONLY | O_CLOEXEC);
            json_object_object_add(p, "write", json_object_new_int(err_of(fd)));
            if (fd >= 0)
                close(fd);
        }
        json_object_object_add(o, paths[i], p);
    }
    return o;
}

static json_object *mount_points(void)
{
    _cleanup_free_ char *text = NULL;
    json_object *a = json_object_new_array();
    if (read_file("/proc/self/mountinfo", 1 << 20, &text, NULL) < 0)
        return a;
    char *save_line = NULL;
    for (char *line = strtok_r(text, "\n", &save_line); line; line = strtok_r(NULL, "\n", &save_line)) {
        /* id parent major:minor root MOUNTPOINT ... */
        char *f = line;
        for (int i = 0; i < 4 && f; i++)
            f = strchr(f, ' ') ? strchr(f, ' ') + 1 : NULL;
        if (!f)
            continue;
        json_object_array_add(a, json_object_new_string_len(f, (int)strcspn(f, " ")));
    }
    return a;
}

int main(int argc, char **argv)
{
    int report = -1, wait_fd = -1;
    char *hidden[16], *visible[16];
    size_t nhidden = 0, nvisible = 0;
    if (argc > 1 && strcmp(argv[1], "--listen-abstract") == 0)
        return listen_abstract();
    bool as_qemu = argc > 1 && strcmp(argv[1], "-name") == 0;
    if (as_qemu) {
        static char *const qemu_hidden[] = {"/etc/qvisor", "/var/lib/qvisor", "/root", "/home", "/dev/net/tun"};
        report = STDOUT_FILENO;
        for (size_t i = 0; i < ARRAY_SIZE(qemu_hidden); i++)
            hidden[nhidden++] = qemu_hidden[i];
    }
    for (int i = 1; i < argc && !as_qemu; i++) {
        if (!strcmp(argv[i], "--noop"))
            return 0;
        if (i + 1 >= argc)
            return 2;
        if (!strcmp(argv[i], "--report"))
            report = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--wait"))
            wait_fd = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--hidden") && nhidden < 16)
            hidden[nhidden++] = argv[++i];
        else if (!strcmp(argv[i], "--visible") && nvisible < 16)
            visible[nvisible++] = argv[++i];
        else
            return 2;
    }
    if (report < 0)
        return 2;

    json_object *o = json_object_new_object();
    json_object_object_add(o, "ids", ids());
    json_object_object_add(o, "status", status_fields());
    json_object_object_add(o, "fds", listing("/proc/self/fd", true));
    json_object_object_add(o, "dev", listing("/dev", false));
    json_object_object_add(o, "tmp", listing("/tmp", false));
    json_object_object_add(o, "root", listing("/", false));
    json_object_object_add(o, "mounts", mount_points());
    int fd = open("/tmp/probe-file", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    json_object_object_add(o, "tmp_write", json_object_new_int(err_of(fd)));
    if (fd >= 0) {
        close(fd);
        unlink("/tmp/probe-file");
    }
    json_object_object_add(o, "usr_write",
                           json_object_new_int(err_of(open("/usr/.qvisor-probe", O_WRONLY | O_CREAT | O_CLOEXEC, 0600))));
    json_object_object_add(o, "root_mkdir", json_object_new_int(err_of(mkdir("/probe-dir", 0700))));
    json_object_object_add(o, "tun", json_object_new_int(err_of(open("/dev/net/tun", O_RDWR | O_CLOEXEC))));
    fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    json_object_object_add(o, "devnull_write", json_object_new_int(fd < 0 ? errno : err_of(write(fd, "x", 1))));
    if (fd >= 0)
        close(fd);
    fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    json_object_object_add(o, "kvm_api", json_object_new_int(fd < 0 ? -errno : ioctl(fd, KVM_GET_API_VERSION, 0)));
    if (fd >= 0)
        close(fd);
    json_object_object_add(o, "proc_self", json_object_new_int(err_of(access("/proc/self/status", R_OK))));
    json_object_object_add(o, "proc_1", json_object_new_int(err_of(access("/proc/1", F_OK))));
    json_object_object_add(o, "hidden", paths_report(hidden, nhidden, false));
    json_object_object_add(o, "visible", paths_report(visible, nvisible, true));

    json_object *env = json_object_new_array();
    for (char **e = environ; e && *e; e++)
        json_object_array_add(env, json_object_new_string(*e));
    json_object_object_add(o, "env", env);
    json_object *rl = json_object_new_object();
    json_object_object_add(rl, "nofile", rlimit_pair(RLIMIT_NOFILE));
    json_object_object_add(rl, "memlock", rlimit_pair(RLIMIT_MEMLOCK));
    json_object_object_add(rl, "core", rlimit_pair(RLIMIT_CORE));
    json_object_object_add(o, "rlimits", rl);
    _cleanup_free_ char *cg = NULL;
    read_file("/proc/self/cgroup", 1 << 16, &cg, NULL);
    json_object_object_add(o, "cgroup", json_object_new_string(cg ? cg : ""));
    char cwd[4096];
    json_object_object_add(o, "cwd", json_object_new_string(getcwd(cwd, sizeof(cwd)) ? cwd : ""));
    json_object_object_add(o, "session_leader", json_object_new_boolean(getsid(0) == getpid()));

    pthread_t t;
    int tr = pthread_create(&t, NULL, thread_main, NULL);
    if (tr == 0)
        pthread_join(t, NULL);
    json_object_object_add(o, "thread", json_object_new_int(tr));
    errno = 0;
    json_object_object_add(o, "clone3", json_object_new_int(err_of(syscall(SYS_clone3, NULL, 0))));
    /* reading the persona stays allowed (sanitizer runtimes ask at start-up) */
    json_object_object_add(o, "personality_query",
                           json_object_new_int(err_of(syscall(SYS_personality, 0xffffffffUL))));
    json_object_object_add(o, "exec_self", json_object_new_int(exec_self()));
    json_object_object_add(o, "denied", denied_results());
    json_object_object_add(o, "network", network_results());

    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    int r = as_qemu ? write_all(report, "PROBE-REPORT ", 13) : 0;
    if (r == 0)
        r = write_all(report, text, strlen(text));
    if (r == 0 && as_qemu)
        r = write_all(report, "\n", 1);
    close(report);
    json_object_put(o);
    if (r < 0)
        return 3;
    if (wait_fd >= 0) {
        char c;
        while (read(wait_fd, &c, 1) > 0 || errno == EINTR)
            ;
    }
    return 0;
}
