/* An oracle for the argv builder that does not trust it.
 *
 * For every golden definition (tests/golden/NAME.json with no NAME.error) the builder's
 * command line is started in the real qemu-system-x86_64 (TCG, -S, resources opened by
 * the launcher's own code) and must reach "prelaunch". Then QMP is asked what the guest
 * would see — machine type, accelerator, CPUs and topology, memory and its backend,
 * firmware and kernel, every disk (device type, serial, PCI slot, format, read-only,
 * cache mode, which image file QEMU really holds open, backing chain), every cdrom,
 * every NIC (model, MAC, PCI slot, netdev type, multiqueue), controllers and free
 * hotplug root ports, consoles and chardevs, VNC — and the answers are compared with
 * the definition JSON as this test reads it, with the defaults README.md documents.
 * Nothing here reads the builder's output or its normalised definition, except the
 * MACs that `define` generated for NICs the definition leaves without one.
 *
 * Host features: accel kvm skips where /dev/kvm is absent (or cannot run -cpu host),
 * uefi where OVMF is missing, hugepages where none can be reserved. The hugepage pool
 * is raised only around that one definition, under a machine-wide lock whose file holds
 * the value to restore, so a killed run is repaired by the next one. */
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_tun.h>
#include <linux/kvm.h>
#include <net/if.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <setjmp.h>
#include <cmocka.h>

#include "launcher/supervisor/supervisor.h"
#include "qmp/qmp.h"
#include "golden_testlib.h"

/* The time zone QEMU runs in here (POSIX: three hours west of UTC; needs no tzdata),
 * unlike the pinned host's (tests/golden-host.json "utc_offset": five and a half hours
 * east): clock.offset localtime is qvisor's local time, given to QEMU as a date, whatever
 * zone QEMU itself would see. */
#define ORACLE_TZ "QVT+03"

/* ---- hugepages: raised around one QEMU, restored on exit, by signal, or next run ---- */

#define HP_LOCK "/run/lock/qvisor-test-hugepages"
#define HP_DEFAULT "/proc/sys/vm/nr_hugepages"

static int hp_fd = -1;              /* the lock, held while pages are needed */
static char hp_restore[24];         /* nr_hugepages to write back, "" if unchanged */
static char hp_path[128] = HP_DEFAULT;  /* the pool of the page size in use */

static long read_long_file(const char *path)
{
    char *s = NULL;
    if (read_file(path, 64, &s, NULL) < 0)
        return -1;
    long v = strtol(s, NULL, 10);
    free(s);
    return v;
}

/* async-signal-safe: only open/write/close/ftruncate */
static void hp_put_back(void)
{
    if (!hp_restore[0])
        return;
    int fd = open(hp_path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, hp_restore, strlen(hp_restore)) < 0) {
            /* nothing better to do in a signal handler; the next run retries */
        }
        close(fd);
    }
    hp_restore[0] = '\0';
    if (hp_fd >= 0 && ftruncate(hp_fd, 0) < 0) {
        /* the next run would restore the same value again: harmless */
    }
}

static void hp_release(void)
{
    hp_put_back();
    if (hp_fd >= 0) {
        close(hp_fd);
        hp_fd = -1;
    }
}

static void hp_on_signal(int sig)
{
    hp_put_back();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void hp_write(const char *path, long n)
{
    char v[24];
    int len = snprintf(v, sizeof(v), "%ld", n);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        write_all(fd, v, (size_t)len);
        close(fd);
    }
}

/* Takes the lock (repairing what a killed holder left: "VALUE [POOL]" in the lock file)
 * and makes `pages` free hugepages of page_kib KiB available (page_kib 0: only the
 * repair). 0, or -ENOMEM when the host cannot give them. */
static int hp_acquire(long page_kib, long pages)
{
    hp_fd = open(HP_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (hp_fd < 0)
        return -errno;
    int t;
    for (t = 0; t < 300 && flock(hp_fd, LOCK_EX | LOCK_NB) < 0; t++)
        usleep(100000);
    if (t == 300) {
        close(hp_fd);
        hp_fd = -1;
        return -ETIMEDOUT;
    }
    char left[160] = "", pool[128] = HP_DEFAULT;
    ssize_t n = pread(hp_fd, left, sizeof(left) - 1, 0);
    if (n > 0) {
        long v;
        left[n] = '\0';
        if (sscanf(left, "%ld %127s", &v, pool) >= 1)
            hp_write(pool, v);  /* a run killed while it held pages */
        if (ftruncate(hp_fd, 0) < 0)
            return -errno;
    }
    if (page_kib <= 0)
        return 0;
    char dir[96], free_path[128], resv_path[128];
    snprintf(dir, sizeof(dir), "/sys/kernel/mm/hugepages/hugepages-%ldkB", page_kib);
    snprintf(hp_path, sizeof(hp_path), "%s/nr_hugepages", dir);
    snprintf(free_path, sizeof(free_path), "%s/free_hugepages", dir);
    snprintf(resv_path, sizeof(resv_path), "%s/resv_hugepages", dir);
    /* free pages include those promised to mappings made already (another QEMU's) */
    long nr = read_long_file(hp_path), free_pages = read_long_file(free_path) - read_long_file(resv_path);
    if (nr < 0 || free_pages < 0)
        return -ENOMEM;
    if (free_pages >= pages)
        return 0;
    snprintf(hp_restore, sizeof(hp_restore), "%ld", nr);
    char rec[160];
    int len = snprintf(rec, sizeof(rec), "%ld %s", nr, hp_path);
    if (pwrite(hp_fd, rec, (size_t)len, 0) != len || fsync(hp_fd) < 0)
        return -errno;
    hp_write(hp_path, nr + pages - free_pages);
    return read_long_file(free_path) - read_long_file(resv_path) >= pages ? 0 : -ENOMEM;
}

/* ---- running QEMU ---- */

static int open_test_tap(void *opaque, const struct vm_def *d, size_t nic, int *fds, struct qv_err *e)
{
    (void)opaque;
    char name[IFNAMSIZ];
    snprintf(name, sizeof(name), "qvo%zu", nic);
    for (int q = 0; q < d->nics[nic].queues; q++) {
        fds[q] = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        if (fds[q] < 0)
            return qv_failerr(e, -errno, "/dev/net/tun");
        struct ifreq ifr = {0};
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (d->nics[nic].queues > 1 ? IFF_MULTI_QUEUE : 0);
        if (ioctl(fds[q], TUNSETIFF, &ifr) < 0)
            return qv_failerr(e, -errno, "TUNSETIFF %s", name);
    }
    return 0;
}

/* A real virtiofsd per share, unconfined (the supervisor's confinement is share.sh's
 * subject): QEMU's vhost-user-fs device asks its backend for features while it is
 * created, so the command line is only accepted with one answering. */
static pid_t fs_pids[VM_MAX_FILESYSTEMS];

static int open_test_fs(void *opaque, const struct vm_def *d, size_t i, int *fd, struct qv_err *e)
{
    const char *run_dir = opaque;
    char path[PATH_MAX], source[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/fs%zu.sock", run_dir, i);
    int lfd, r = unix_listen(path, 1, &lfd, e);
    if (r < 0)
        return r;
    r = unix_connect(path, fd, e);
    unlink(path);
    if (r < 0) {
        close(lfd);
        return r;
    }
    snprintf(source, sizeof(source), "source=%s", d->filesystems[i].source);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (dup2(lfd, 3) < 0)
            _exit(126);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        char *argv[] = {"/usr/lib/qemu/virtiofsd", "--fd=3", "-o", source, "-o", "sandbox=chroot", "--rlimit-nofile=0", NULL};
        char *envp[] = {NULL};
        execve(argv[0], argv, envp);
        _exit(127);
    }
    close(lfd);
    fs_pids[i] = pid;
    return pid < 0 ? qv_failerr(e, -errno, "fork") : 0;
}

static void stop_test_fs(void)
{
    for (size_t i = 0; i < VM_MAX_FILESYSTEMS; i++) {
        if (fs_pids[i] > 0) {
            kill(fs_pids[i], SIGKILL);
            waitpid(fs_pids[i], NULL, 0);
        }
        fs_pids[i] = 0;
    }
}

/* A real swtpm, unconfined (its confinement is tpm.sh's subject), on one end of a
 * socketpair: QEMU's tpm-emulator talks to it while the backend is created. */
static pid_t tpm_pid;

static int open_test_tpm(void *opaque, const struct vm_def *d, int *fd, struct qv_err *e)
{
    (void)d;
    const char *run_dir = opaque;
    char state[PATH_MAX + 16];
    snprintf(state, sizeof(state), "dir=%s", run_dir);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return qv_failerr(e, -errno, "socketpair");
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (dup2(sv[1], 3) < 0)
            _exit(126);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        char *argv[] = {"/usr/bin/swtpm", "socket", "--tpm2", "--tpmstate", state, "--ctrl", "type=unixio,clientfd=3",
                        "--terminate", NULL};
        char *envp[] = {NULL};
        execve(argv[0], argv, envp);
        _exit(127);
    }
    close(sv[1]);
    tpm_pid = pid;
    *fd = sv[0];
    return pid < 0 ? qv_failerr(e, -errno, "fork") : 0;
}

static void stop_test_tpm(void)
{
    if (tpm_pid > 0) {
        kill(tpm_pid, SIGKILL);
        waitpid(tpm_pid, NULL, 0);
    }
    tpm_pid = 0;
}

/* No host device exists here: USB devices get /dev/null, which QEMU's libusb refuses
 * once it opened it through the fdset; that refusal is the acceptance. */
static int open_test_usb(const struct vm_def *d, size_t i, int *fd, struct qv_err *e)
{
    (void)d;
    *fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    return *fd < 0 ? qv_failerr(e, -errno, "hostdevs[%zu]: /dev/null", i) : 0;
}

static pid_t spawn_qemu(const struct launch_plan *p, const int *fds, int *errfd)
{
    int pipefd[2];
    assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* a killed test must not leave a QEMU (holding hugepages) behind */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int high[PLAN_MAX_FDS];
        for (size_t i = 0; i < p->nslots; i++)
            high[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 200);
        for (size_t i = 0; i < p->nslots; i++)
            if (high[i] < 0 || dup2(high[i], p->slots[i].fd) < 0)
                _exit(126);
        dup2(pipefd[1], 2);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        char *envp[] = {"PATH=/usr/bin:/bin", "TZ=" ORACLE_TZ, NULL};
        execve(p->argv.v[0], p->argv.v, envp);
        _exit(127);
    }
    close(pipefd[1]);
    *errfd = pipefd[0];
    return pid;
}

static char *drain(int fd)
{
    struct buf b = {0};
    buf_adds(&b, "");
    char chunk[4096];
    fd_set_nonblock(fd, true);
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0)
        buf_add(&b, chunk, (size_t)n);
    return b.p;
}

/* ---- what the definition says, read here (README.md's defaults) ---- */

static json_object *get(json_object *o, const char *key)
{
    json_object *v = NULL;
    return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static const char *gets(json_object *o, const char *key, const char *dflt)
{
    json_object *v = get(o, key);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : dflt;
}

static int64_t geti(json_object *o, const char *key, int64_t dflt)
{
    json_object *v = get(o, key);
    return v && json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : dflt;
}

static bool getb(json_object *o, const char *key, bool dflt)
{
    json_object *v = get(o, key);
    return v && json_object_is_type(v, json_type_boolean) ? json_object_get_boolean(v) : dflt;
}

static int64_t size_of(const char *s)
{
    char *end;
    int64_t n = strtoll(s, &end, 10);
    const char *units = "KMGT", *u = *end ? strchr(units, *end) : NULL;
    for (const char *k = units; u && k <= u; k++)
        n <<= 10;
    return n;
}

/* memory.hugepages as README.md documents it: true or "2M" is 2 MiB pages, "1G" 1 GiB; 0: none */
static int64_t hugepage_bytes(json_object *mem)
{
    json_object *h = get(mem, "hugepages");
    if (!h)
        return 0;
    if (json_object_is_type(h, json_type_boolean))
        return json_object_get_boolean(h) ? 2 << 20 : 0;
    return size_of(json_object_get_string(h));
}

/* The image's format as its header says: qcow2 magic, else raw. */
static const char *sniff_format(const char *file)
{
    unsigned char magic[4] = {0};
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, magic, 4) != 4)
            memset(magic, 0, sizeof(magic));
        close(fd);
    }
    return memcmp(magic, "QFI\xfb", 4) == 0 ? "qcow2" : "raw";
}

/* ---- asking QEMU ---- */

struct oracle {
    const char *name;
    struct qmp *q;
    pid_t pid;
    struct buf why;
    int bad;
    json_object *json;          /* the definition as the golden file says */
    const struct vm_def *def;   /* only for MACs define generated */
    json_object *block, *fdsets, *pci, *peripheral, *chardev;
    time_t started;             /* wall time right before QEMU's exec */
};

static void mismatch(struct oracle *o, const char *fmt, ...) QV_PRINTF(2, 3);
static void mismatch(struct oracle *o, const char *fmt, ...)
{
    char s[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s, sizeof(s), fmt, ap);
    va_end(ap);
    buf_printf(&o->why, "  %s\n", s);
    o->bad++;
}

static json_object *ask(struct oracle *o, const char *cmd, json_object *args)
{
    json_object *ret = NULL;
    struct qv_err e = {0};
    if (qmp_call(o->q, cmd, args, NULL, 0, 10000, &ret, &e) < 0) {
        ret = NULL;
    }
    return ret;
}

static json_object *qom_get(struct oracle *o, const char *path, const char *prop)
{
    json_object *a = json_object_new_object();
    json_object_object_add(a, "path", json_object_new_string(path));
    json_object_object_add(a, "property", json_object_new_string(prop));
    return ask(o, "qom-get", a);
}

static char *qom_str(struct oracle *o, const char *path, const char *prop)
{
    json_object *v = qom_get(o, path, prop);
    char *s = v && json_object_is_type(v, json_type_string) ? qv_xstrdup(json_object_get_string(v)) : NULL;
    json_object_put(v);
    return s;
}

static void expect_str(struct oracle *o, const char *what, const char *got, const char *want)
{
    if (!got || strcmp(got, want) != 0)
        mismatch(o, "%s: QEMU has \"%s\", the definition says \"%s\"", what, got ? got : "(nothing)", want);
}

static void expect_int(struct oracle *o, const char *what, int64_t got, int64_t want)
{
    if (got != want)
        mismatch(o, "%s: QEMU has %lld, the definition says %lld", what, (long long)got, (long long)want);
}

/* The type of /machine/peripheral/ID, or NULL if there is no such device. */
static const char *peripheral_type(struct oracle *o, const char *id)
{
    for (size_t i = 0; i < json_object_array_length(o->peripheral); i++) {
        json_object *p = json_object_array_get_idx(o->peripheral, i);
        const char *t = gets(p, "type", "");
        if (strcmp(gets(p, "name", ""), id) == 0 && strncmp(t, "child<", 6) == 0) {
            static char type[128];
            snprintf(type, sizeof(type), "%.*s", (int)strlen(t) - 7, t + 6);
            return type;
        }
    }
    return NULL;
}

static int count_type(struct oracle *o, const char *type)
{
    int n = 0;
    char want[160];
    snprintf(want, sizeof(want), "child<%s>", type);
    for (size_t i = 0; i < json_object_array_length(o->peripheral); i++)
        n += strcmp(gets(json_object_array_get_idx(o->peripheral, i), "type", ""), want) == 0;
    return n;
}

/* The PCI slot of device `id` on bus 0, or -1. */
static int pci_slot(struct oracle *o, const char *id)
{
    json_object *bus = json_object_array_get_idx(o->pci, 0), *devs = get(bus, "devices");
    for (size_t i = 0; devs && i < json_object_array_length(devs); i++) {
        json_object *d = json_object_array_get_idx(devs, i);
        if (strcmp(gets(d, "qdev_id", ""), id) == 0)
            return (int)geti(d, "slot", -1);
    }
    return -1;
}

/* The query-block entry of device `id` (its qdev path starts with /machine/peripheral/ID). */
static json_object *block_of(struct oracle *o, const char *id)
{
    char path[128];
    size_t n = (size_t)snprintf(path, sizeof(path), "/machine/peripheral/%s", id);
    for (size_t i = 0; i < json_object_array_length(o->block); i++) {
        json_object *b = json_object_array_get_idx(o->block, i);
        const char *q = gets(b, "qdev", "");
        if (strcmp(q, id) == 0 || (strncmp(q, path, n) == 0 && (q[n] == '\0' || q[n] == '/')))
            return b;
    }
    return NULL;
}

/* "/dev/fdset/N" -> the file QEMU really holds open for that fd set (via /proc). */
static char *fdset_target(struct oracle *o, const char *filename)
{
    int set;
    if (!filename || sscanf(filename, "/dev/fdset/%d", &set) != 1)
        return filename ? qv_xstrdup(filename) : NULL;
    for (size_t i = 0; i < json_object_array_length(o->fdsets); i++) {
        json_object *s = json_object_array_get_idx(o->fdsets, i), *fds = get(s, "fds");
        if (geti(s, "fdset-id", -1) != set || !fds || json_object_array_length(fds) == 0)
            continue;
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof(link), "/proc/%d/fd/%lld", (int)o->pid,
                 (long long)geti(json_object_array_get_idx(fds, 0), "fd", -1));
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
            return NULL;
        target[n] = '\0';
        return qv_xstrdup(target);
    }
    return NULL;
}

static void expect_image(struct oracle *o, const char *what, const char *qemu_file, const char *def_file)
{
    char *got = fdset_target(o, qemu_file);
    char want[PATH_MAX];
    if (!realpath(def_file, want))
        snprintf(want, sizeof(want), "%s", def_file);
    expect_str(o, what, got, want);
    free(got);
}

/* ---- the comparisons ---- */

static const char *accel_of(struct oracle *o, const struct host_facts *pinned)
{
    const char *a = gets(o->json, "accel", "auto");
    if (strcmp(a, "auto") == 0)
        a = vm_accel_names[pinned->accel_override == ACCEL_AUTO ? ACCEL_TCG : pinned->accel_override];
    return a;
}

static void check_machine(struct oracle *o, const struct host_facts *pinned)
{
    const char *machine = gets(o->json, "machine", "q35");
    char *type = qom_str(o, "/machine", "type");
    const char *prefix = strcmp(machine, "q35") == 0 ? "pc-q35-" : strcmp(machine, "pc") == 0 ? "pc-i440fx-" : "microvm";
    if (!type || strncmp(type, prefix, strlen(prefix)) != 0)
        mismatch(o, "machine: QEMU runs \"%s\", the definition says %s", type ? type : "?", machine);
    free(type);

    json_object *kvm = ask(o, "query-kvm", NULL);
    bool want_kvm = strcmp(accel_of(o, pinned), "kvm") == 0;
    if (!kvm || getb(kvm, "enabled", !want_kvm) != want_kvm)
        mismatch(o, "accel: QEMU has KVM %s, the definition means %s", kvm && getb(kvm, "enabled", false) ? "on" : "off",
                 accel_of(o, pinned));
    json_object_put(kvm);

    json_object *v = ask(o, "query-name", NULL);
    expect_str(o, "name", gets(v, "name", NULL), gets(o->json, "name", ""));
    json_object_put(v);
    v = ask(o, "query-uuid", NULL);
    expect_str(o, "uuid", gets(v, "UUID", NULL), gets(o->json, "uuid", ""));
    json_object_put(v);
}

static void check_cpu(struct oracle *o, const struct host_facts *pinned)
{
    json_object *cpu = get(o->json, "cpu");
    int64_t sockets = geti(cpu, "sockets", 0), cores = geti(cpu, "cores", 1), threads = geti(cpu, "threads", 1);
    int64_t count = geti(cpu, "count", sockets ? sockets * cores * threads : 1);
    json_object *cpus = ask(o, "query-cpus-fast", NULL);
    expect_int(o, "cpu.count", cpus ? (int64_t)json_object_array_length(cpus) : -1, count);
    /* every vCPU the VM may have, present or pluggable: README's cpu.max, count without it */
    json_object *slots = ask(o, "query-hotpluggable-cpus", NULL);     /* microvm has none to tell */
    if (slots || get(cpu, "max"))
        expect_int(o, "cpu.max", slots ? (int64_t)json_object_array_length(slots) : -1, geti(cpu, "max", count));
    if (sockets && slots) {
        int64_t max_s = -1, max_c = -1, max_t = -1;
        for (size_t i = 0; i < json_object_array_length(slots); i++) {
            json_object *p = get(json_object_array_get_idx(slots, i), "props");
            max_s = geti(p, "socket-id", -1) > max_s ? geti(p, "socket-id", -1) : max_s;
            max_c = geti(p, "core-id", -1) > max_c ? geti(p, "core-id", -1) : max_c;
            max_t = geti(p, "thread-id", -1) > max_t ? geti(p, "thread-id", -1) : max_t;
        }
        expect_int(o, "cpu.sockets", max_s + 1, sockets);
        expect_int(o, "cpu.cores", max_c + 1, cores);
        expect_int(o, "cpu.threads", max_t + 1, threads);
    }
    const char *model = gets(cpu, "model", "auto");
    if (strcmp(model, "auto") == 0)
        model = strcmp(accel_of(o, pinned), "kvm") == 0 ? "host" : "max";
    if (cpus && json_object_array_length(cpus) > 0) {
        char *type = qom_str(o, gets(json_object_array_get_idx(cpus, 0), "qom-path", ""), "type");
        char *want = qv_xasprintf("%s-x86_64-cpu", model);
        expect_str(o, "cpu.model", type, want);
        free(type);
        free(want);
    }
    json_object_put(cpus);
    json_object_put(slots);
}

/* A RAM backend as the definition wants it: its size, hugetlb (and the page size), share. */
static void expect_backend(struct oracle *o, const char *id, int64_t size, int64_t page, bool shared)
{
    char path[64];
    snprintf(path, sizeof(path), "/objects/%s", id);
    json_object *h = qom_get(o, path, "hugetlb"), *s = qom_get(o, path, "share"), *z = qom_get(o, path, "size");
    json_object *hs = page ? qom_get(o, path, "hugetlbsize") : NULL;
    if (!z)
        mismatch(o, "memory: QEMU has no RAM backend %s", id);
    else
        expect_int(o, "memory backend size", json_object_get_int64(z), size);
    if (page || shared) {
        if (!h || json_object_get_boolean(h) != (page != 0))
            mismatch(o, "memory.hugepages: QEMU's RAM backend %s has hugetlb=%s", id, h ? json_object_to_json_string(h) : "(none)");
        if (page)
            expect_int(o, "memory.hugepages page size", hs ? json_object_get_int64(hs) : -1, page);
        if (!s || json_object_get_boolean(s) != shared)
            mismatch(o, "memory.shared: QEMU's RAM backend %s has share=%s", id, s ? json_object_to_json_string(s) : "(none)");
    } else if (h) {
        mismatch(o, "memory: QEMU's RAM backend %s is a memfd the definition does not ask for", id);
    }
    json_object_put(h);
    json_object_put(s);
    json_object_put(z);
    json_object_put(hs);
}

static void check_memory(struct oracle *o)
{
    json_object *m = get(o->json, "memory"), *numa = get(o->json, "numa");
    const char *size = json_object_is_type(m, json_type_string) ? json_object_get_string(m) : gets(m, "size", "1G");
    int64_t page = hugepage_bytes(m);
    bool shared = getb(m, "shared", false);
    json_object *fs = get(o->json, "filesystems");
    shared |= fs && json_object_array_length(fs) > 0;     /* README: a share needs shared RAM */
    json_object *sum = ask(o, "query-memory-size-summary", NULL);
    expect_int(o, "memory", geti(sum, "base-memory", -1), size_of(size));
    json_object_put(sum);
    /* memory.balloon: QEMU answers query-balloon only with a balloon device */
    bool balloon = getb(m, "balloon", false);
    json_object *bal = ask(o, "query-balloon", NULL);
    if ((bal != NULL) != balloon)
        mismatch(o, "memory.balloon: query-balloon %s", bal ? "answers" : "fails");
    else if (bal)
        expect_int(o, "memory.balloon actual", geti(bal, "actual", -1), size_of(size));
    json_object_put(bal);
    if (numa) {
        /* each node its own backend, with the node's share */
        for (size_t i = 0; i < json_object_array_length(numa); i++) {
            char id[24];
            snprintf(id, sizeof(id), "ram-node%zu", i);
            expect_backend(o, id, size_of(gets(json_object_array_get_idx(numa, i), "memory", "0")), page, shared);
        }
        return;
    }
    json_object *h = qom_get(o, "/objects/ram", "size");
    if (page || shared)
        expect_backend(o, "ram", size_of(size), page, shared);
    else if (h)
        mismatch(o, "memory: QEMU has a RAM backend object the definition does not ask for");
    json_object_put(h);
}

/* numa: every vCPU in the node whose list names it, each node's memory its backend's */
static void check_numa(struct oracle *o)
{
    json_object *numa = get(o->json, "numa");
    json_object *cpus = ask(o, "query-cpus-fast", NULL);
    for (size_t i = 0; cpus && i < json_object_array_length(cpus); i++) {
        json_object *c = json_object_array_get_idx(cpus, i);
        int64_t idx = geti(c, "cpu-index", -1), want = -1;
        for (size_t n = 0; numa && n < json_object_array_length(numa); n++) {
            /* "0,2-3": our own reading of the list */
            const char *p = gets(json_object_array_get_idx(numa, n), "cpus", "");
            while (*p) {
                char *end;
                long lo = strtol(p, &end, 10), hi = lo;
                if (*end == '-')
                    hi = strtol(end + 1, &end, 10);
                if (idx >= lo && idx <= hi)
                    want = (int64_t)n;
                p = *end ? end + 1 : end;
            }
        }
        char what[48];
        snprintf(what, sizeof(what), "numa: node of vCPU %lld", (long long)idx);
        expect_int(o, what, geti(get(c, "props"), "node-id", -1), want);
    }
    json_object_put(cpus);
    json_object *memdev = ask(o, "query-memdev", NULL);
    expect_int(o, "numa: memory backends", memdev ? (int64_t)json_object_array_length(memdev) : -1,
               numa ? (int64_t)json_object_array_length(numa) : memdev ? (int64_t)json_object_array_length(memdev) : -1);
    json_object_put(memdev);
}

/* cpu.maxphysaddr: the vCPU's phys-bits (emulate) or host-phys-bits(-limit) (passthrough) */
static void check_physaddr(struct oracle *o)
{
    json_object *a = get(get(o->json, "cpu"), "maxphysaddr");
    if (!a)
        return;     /* QEMU's own default (-cpu host turns host-phys-bits on by itself) */
    json_object *cpus = ask(o, "query-cpus-fast", NULL);
    const char *path = cpus && json_object_array_length(cpus) ? gets(json_object_array_get_idx(cpus, 0), "qom-path", "") : "";
    json_object *bits = qom_get(o, path, "phys-bits"), *host = qom_get(o, path, "host-phys-bits");
    json_object *limit = qom_get(o, path, "host-phys-bits-limit");
    const char *mode = gets(a, "mode", "");
    if (strcmp(mode, "emulate") == 0)
        expect_int(o, "cpu.maxphysaddr.bits", bits ? json_object_get_int64(bits) : -1, geti(a, "bits", 0));
    bool pass = strcmp(mode, "passthrough") == 0;
    if (!host || json_object_get_boolean(host) != pass)
        mismatch(o, "cpu.maxphysaddr: QEMU has host-phys-bits=%s", host ? json_object_to_json_string(host) : "(none)");
    if (pass)
        expect_int(o, "cpu.maxphysaddr.bits (limit)", limit ? json_object_get_int64(limit) : -1, geti(a, "bits", 0));
    json_object_put(bits);
    json_object_put(host);
    json_object_put(limit);
    json_object_put(cpus);
}

/* The RTC, read back from QEMU: clock.adjustment starts it at the pinned "now" plus the
 * adjustment; offset localtime at the pinned "now" in the pinned host's zone (UTC+05:30,
 * not QEMU's ORACLE_TZ); utc (the default) at the start's UTC time. Plus the time since:
 * the RTC has been running since QEMU started. */
static void check_clock(struct oracle *o, const struct host_facts *pinned)
{
    if (strcmp(gets(o->json, "machine", "q35"), "microvm") == 0)
        return;
    json_object *c = get(o->json, "clock"), *adj = get(c, "adjustment");
    bool localtime = strcmp(gets(c, "offset", "utc"), "localtime") == 0;
    int64_t want = adj ? pinned->now + json_object_get_int64(adj)
                       : localtime ? pinned->now + pinned->utc_offset : (int64_t)o->started;
    json_object *tm = qom_get(o, "/machine", "rtc-time");
    /* the RTC runs on the host's clock from QEMU's start (also while -S holds the vCPUs) */
    int64_t running = (int64_t)(time(NULL) - o->started);
    struct tm t = {.tm_year = (int)geti(tm, "tm_year", 0), .tm_mon = (int)geti(tm, "tm_mon", 0),
                   .tm_mday = (int)geti(tm, "tm_mday", 0), .tm_hour = (int)geti(tm, "tm_hour", 0),
                   .tm_min = (int)geti(tm, "tm_min", 0), .tm_sec = (int)geti(tm, "tm_sec", 0)};
    int64_t got = tm ? (int64_t)timegm(&t) : -1;
    if (got < want - 1 || got > want + running + 2)
        mismatch(o, "clock: the RTC reads %lld, the definition (offset %s, adjustment %lld) means %lld", (long long)got,
                 localtime ? "localtime" : "utc", adj ? (long long)json_object_get_int64(adj) : 0ll,
                 (long long)want);
    json_object_put(tm);
}

static void check_boot(struct oracle *o, const struct host_facts *pinned)
{
    json_object *boot = get(o->json, "boot");
    bool uefi = strcmp(gets(boot, "firmware", "bios"), "uefi") == 0;
    char *pflash = qom_str(o, "/machine", "pflash0");
    bool has_pflash = pflash && *pflash;
    if (uefi != has_pflash)
        mismatch(o, "boot.firmware: QEMU has pflash0 \"%s\", the definition says %s", pflash ? pflash : "", uefi ? "uefi" : "bios");
    free(pflash);
    if (uefi) {
        /* the code flash is the OVMF the (pinned) host offers, read-only */
        json_object *nodes = ask(o, "query-named-block-nodes", NULL);
        bool found = false;
        for (size_t i = 0; nodes && i < json_object_array_length(nodes); i++) {
            json_object *n = json_object_array_get_idx(nodes, i);
            found |= strcmp(gets(n, "file", ""), pinned->ovmf_code) == 0 && getb(n, "ro", false);
        }
        if (!found)
            mismatch(o, "boot.firmware: no read-only block node holds %s", pinned->ovmf_code);
        json_object_put(nodes);
    }
    static const char *const keys[][2] = {{"kernel", "kernel"}, {"initrd", "initrd"}, {"cmdline", "append"}};
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        char *got = qom_str(o, "/machine", keys[i][1]), *what = qv_xasprintf("boot.%s", keys[i][0]);
        expect_str(o, what, got ? got : "", gets(boot, keys[i][0], ""));
        free(got);
        free(what);
    }
}

/* Which device class boot.order puts at which position: the first disk/cdrom/NIC gets it. */
static int64_t order_index(struct oracle *o, const char *cls, size_t i, json_object *dev)
{
    int64_t explicit = geti(dev, "boot_index", -1);
    if (explicit >= 0)
        return explicit;
    json_object *boot = get(o->json, "boot"), *order = get(boot, "order");
    static const char *const dflt[] = {"disk", "cdrom", "network"};
    if (!order) {
        /* the default order, unless a kernel boots or a device names its boot_index */
        bool any = false;
        static const char *const lists[] = {"disks", "cdroms", "nics"};
        for (size_t l = 0; l < ARRAY_SIZE(lists); l++) {
            json_object *a = get(o->json, lists[l]);
            for (size_t k = 0; a && k < json_object_array_length(a); k++)
                any |= get(json_object_array_get_idx(a, k), "boot_index") != NULL;
        }
        for (size_t k = 0; i == 0 && !any && !get(boot, "kernel") && k < ARRAY_SIZE(dflt); k++)
            if (strcmp(dflt[k], cls) == 0)
                return (int64_t)k + 1;
        return -1;
    }
    for (size_t k = 0; i == 0 && k < json_object_array_length(order); k++)
        if (strcmp(json_object_get_string(json_object_array_get_idx(order, k)), cls) == 0)
            return (int64_t)k + 1;
    return -1;
}

static void check_bootindex(struct oracle *o, const char *id, const char *what, int64_t want)
{
    char path[128];
    snprintf(path, sizeof(path), "/machine/peripheral/%s", id);
    json_object *v = qom_get(o, path, "bootindex");
    expect_int(o, what, v ? json_object_get_int64(v) : -1, want);
    json_object_put(v);
}

/* QEMU's cache flags for each documented cache mode. */
static void expect_cache(struct oracle *o, const char *what, json_object *cache, const char *mode)
{
    static const struct { const char *mode; bool writeback, direct, no_flush; } modes[] = {
        {"none", true, true, false}, {"writeback", true, false, false}, {"writethrough", false, false, false},
        {"unsafe", true, false, true}, {"directsync", false, true, false},
    };
    for (size_t i = 0; i < ARRAY_SIZE(modes); i++) {
        if (strcmp(modes[i].mode, mode) != 0)
            continue;
        if (!cache || getb(cache, "writeback", !modes[i].writeback) != modes[i].writeback ||
            getb(cache, "direct", !modes[i].direct) != modes[i].direct ||
            getb(cache, "no-flush", !modes[i].no_flush) != modes[i].no_flush)
            mismatch(o, "%s: cache %s, but QEMU has %s", what, mode, cache ? json_object_to_json_string(cache) : "none");
        return;
    }
    mismatch(o, "%s: unknown cache mode %s", what, mode);
}

static void check_disks(struct oracle *o, bool microvm)
{
    json_object *disks = get(o->json, "disks");
    int virtio = 0;
    for (size_t i = 0; disks && i < json_object_array_length(disks); i++) {
        json_object *k = json_object_array_get_idx(disks, i);
        char id[16], what[32];
        snprintf(id, sizeof(id), "disk%zu", i);
        snprintf(what, sizeof(what), "disks[%zu]", i);
        const char *bus = gets(k, "bus", "virtio");
        const char *want_type = strcmp(bus, "virtio") == 0 ? (microvm ? "virtio-blk-device" : "virtio-blk-pci")
                                : strcmp(bus, "scsi") == 0 ? "scsi-hd" : strcmp(bus, "usb") == 0 ? "usb-storage" : "ide-hd";
        const char *type = peripheral_type(o, id);
        if (!type) {
            mismatch(o, "%s: QEMU has no device %s", what, id);
            continue;
        }
        char *w = qv_xasprintf("%s.bus %s", what, bus);
        expect_str(o, w, type, want_type);
        free(w);
        if (strcmp(bus, "virtio") == 0 && !microvm) {
            /* README: virtio disks in PCI slots 11-22, in definition order */
            w = qv_xasprintf("%s PCI slot", what);
            expect_int(o, w, pci_slot(o, id), 0x0b + virtio++);
            free(w);
        }
        char path[128];
        snprintf(path, sizeof(path), "/machine/peripheral/%s", id);
        char *serial = qom_str(o, path, "serial");
        w = qv_xasprintf("%s.serial", what);
        if (get(k, "serial"))
            expect_str(o, w, serial, gets(k, "serial", ""));
        else if (serial && *serial && !(strncmp(serial, "QM", 2) == 0 && strlen(serial) == 7))
            /* none given: empty, or IDE's own "QMnnnnn" */
            mismatch(o, "%s: QEMU has \"%s\", the definition gives none", w, serial);
        free(w);
        free(serial);
        /* README: a host-side I/O error pauses the guest (werror/rerror stop) */
        static const char *const policies[] = {"werror", "rerror"};
        for (size_t p = 0; p < ARRAY_SIZE(policies); p++) {
            char *policy = qom_str(o, path, policies[p]);
            w = qv_xasprintf("%s.%s", what, policies[p]);
            expect_str(o, w, policy, "stop");
            free(w);
            free(policy);
        }
        if (!microvm) {
            w = qv_xasprintf("%s.boot_index", what);
            check_bootindex(o, id, w, order_index(o, "disk", i, k));
            free(w);
        }

        json_object *b = block_of(o, id), *in = get(b, "inserted");
        if (!in) {
            mismatch(o, "%s: QEMU has no medium in %s", what, id);
            continue;
        }
        const char *file = gets(k, "file", "");
        const char *format = gets(k, "format", sniff_format(file));
        bool readonly = getb(k, "readonly", false), snapshot = getb(k, "snapshot", false);
        w = qv_xasprintf("%s.readonly", what);
        expect_int(o, w, getb(in, "ro", !readonly), readonly);
        free(w);
        w = qv_xasprintf("%s.cache", what);
        expect_cache(o, w, get(in, "cache"), gets(k, "cache", "none"));
        free(w);
        json_object *image = get(in, "image");
        if (snapshot) {
            /* a throw-away qcow2 overlay over the image, opened read-only */
            w = qv_xasprintf("%s.snapshot overlay", what);
            expect_str(o, w, gets(in, "drv", NULL), "qcow2");
            free(w);
            json_object *base = get(image, "backing-image");
            w = qv_xasprintf("%s.format (under the snapshot)", what);
            expect_str(o, w, gets(base, "format", NULL), format);
            free(w);
            w = qv_xasprintf("%s.file (under the snapshot)", what);
            expect_image(o, w, gets(base, "filename", NULL), file);
            free(w);
        } else {
            w = qv_xasprintf("%s.format", what);
            expect_str(o, w, gets(in, "drv", NULL), format);
            free(w);
            if (get(in, "backing_file"))
                mismatch(o, "%s: QEMU has a backing file the definition does not ask for", what);
            w = qv_xasprintf("%s.file", what);
            expect_image(o, w, gets(in, "file", NULL), file);
            free(w);
        }
    }
}

static void check_cdroms(struct oracle *o, const char *machine)
{
    json_object *cds = get(o->json, "cdroms");
    for (size_t i = 0; cds && i < json_object_array_length(cds); i++) {
        json_object *c = json_object_array_get_idx(cds, i);
        char id[16], what[32];
        snprintf(id, sizeof(id), "cdrom%zu", i);
        snprintf(what, sizeof(what), "cdroms[%zu]", i);
        const char *bus = gets(c, "bus", strcmp(machine, "pc") == 0 ? "ide" : "sata");
        expect_str(o, what, peripheral_type(o, id), strcmp(bus, "scsi") == 0 ? "scsi-cd" : "ide-cd");
        char *w = qv_xasprintf("%s.boot_index", what);
        check_bootindex(o, id, w, order_index(o, "cdrom", i, c));
        free(w);
        json_object *b = block_of(o, id), *in = get(b, "inserted");
        const char *file = gets(c, "file", NULL);
        if (!file) {
            if (in)
                mismatch(o, "%s: an empty tray in the definition, a medium in QEMU", what);
            continue;
        }
        if (!in || !getb(in, "ro", false)) {
            mismatch(o, "%s: QEMU has no read-only medium", what);
            continue;
        }
        w = qv_xasprintf("%s.file", what);
        expect_image(o, w, gets(in, "file", NULL), file);
        free(w);
    }
}

static void check_nics(struct oracle *o, bool microvm)
{
    json_object *nics = get(o->json, "nics");
    json_object *cmd = json_object_new_object();
    json_object_object_add(cmd, "command-line", json_object_new_string("info network"));
    json_object *net = ask(o, "human-monitor-command", cmd);
    const char *network = net ? json_object_get_string(net) : "";
    for (size_t i = 0; nics && i < json_object_array_length(nics); i++) {
        json_object *n = json_object_array_get_idx(nics, i);
        char id[16], what[32], path[128];
        snprintf(id, sizeof(id), "nic%zu", i);
        snprintf(what, sizeof(what), "nics[%zu]", i);
        snprintf(path, sizeof(path), "/machine/peripheral/%s", id);
        const char *model = gets(n, "model", "virtio");
        const char *want_type = strcmp(model, "virtio") == 0 ? (microvm ? "virtio-net-device" : "virtio-net-pci") : model;
        const char *type = peripheral_type(o, id);
        if (!type) {
            mismatch(o, "%s: QEMU has no device %s", what, id);
            continue;
        }
        char *w = qv_xasprintf("%s.model", what);
        expect_str(o, w, type, want_type);
        free(w);
        /* the definition's MAC; when it gives none, the one define generated and stored */
        char mac[32];
        snprintf(mac, sizeof(mac), "%s", gets(n, "mac", i < o->def->nnics ? o->def->nics[i].mac : ""));
        for (char *p = mac; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        char *got = qom_str(o, path, "mac");
        w = qv_xasprintf("%s.mac", what);
        expect_str(o, w, got, mac);
        free(w);
        if (!got || strncmp(got, "52:54:00:", 9) != 0 || strcmp(got, "52:54:00:12:34:56") == 0)
            mismatch(o, "%s.mac: %s is not a 52:54:00 MAC other than QEMU's default", what, got ? got : "?");
        free(got);
        if (!microvm) {
            w = qv_xasprintf("%s PCI slot", what);
            expect_int(o, w, pci_slot(o, id), 0x03 + (int)i);   /* README: NICs in slots 3-10 */
            free(w);
            w = qv_xasprintf("%s.boot_index", what);
            check_bootindex(o, id, w, order_index(o, "network", i, n));
            free(w);
        }
        /* the backend: user networking, or a tap for network/bridge/direct */
        char *netdev = qom_str(o, path, "netdev");
        bool user = strcmp(gets(n, "type", ""), "user") == 0;
        char *line = netdev ? qv_xasprintf("%s: index=0,type=%s", netdev, user ? "user" : "tap") : NULL;
        if (!line || !strstr(network, line))
            mismatch(o, "%s: QEMU's backend %s is not %s:\n%s", what, netdev ? netdev : "?", user ? "user" : "tap", network);
        free(line);
        free(netdev);
        int64_t queues = geti(n, "queues", 1);
        json_object *mq = qom_get(o, path, "mq");
        if (strcmp(model, "virtio") == 0 && (!mq || json_object_get_boolean(mq) != (queues > 1)))
            mismatch(o, "%s.queues %lld: QEMU has mq=%s", what, (long long)queues, mq ? json_object_to_json_string(mq) : "?");
        json_object_put(mq);
    }
    json_object_put(net);
}

/* Shares: a vhost-user-fs device per filesystem with its tag, in slot 0x1b, its chardev
 * connected (QEMU talked to the virtiofsd on the other end of the fd). */
/* The TPM: query-tpm lists one emulator-backed TPM of the model asked for (tpm-crb by
 * default, README), or none. */
static void check_tpm(struct oracle *o)
{
    json_object *t = get(o->json, "tpm");
    json_object *list = ask(o, "query-tpm", NULL);
    size_t n = list ? json_object_array_length(list) : 0;
    if (!list) {
        mismatch(o, "QEMU did not answer query-tpm");
    } else if (!t && n) {
        mismatch(o, "a TPM the definition has none of: %s", jr_show(list));
    } else if (t) {
        json_object *one = n == 1 ? json_object_array_get_idx(list, 0) : NULL;
        const char *want = gets(t, "model", "tpm-crb");
        if (!one || strcmp(gets(one, "model", ""), want) != 0 || strcmp(gets(get(one, "options"), "type", ""), "emulator") != 0)
            mismatch(o, "tpm: expected one %s TPM on an emulator backend, QEMU has %s", want, jr_show(list));
    }
    json_object_put(list);
}

static void check_filesystems(struct oracle *o, bool microvm)
{
    json_object *fss = get(o->json, "filesystems");
    size_t n = fss ? json_object_array_length(fss) : 0;
    expect_int(o, "filesystems: vhost-user-fs devices", count_type(o, microvm ? "vhost-user-fs-device" : "vhost-user-fs-pci"),
               (int64_t)n);
    for (size_t i = 0; i < n; i++) {
        json_object *f = json_object_array_get_idx(fss, i);
        char id[16], path[128], *w;
        snprintf(id, sizeof(id), "fs%zu", i);
        snprintf(path, sizeof(path), "/machine/peripheral/%s", id);
        char *deftag = qv_xasprintf("share%zu", i);
        char *tag = qom_str(o, path, "tag");
        w = qv_xasprintf("filesystems[%zu].tag", i);
        expect_str(o, w, tag, gets(f, "tag", deftag));
        free(w);
        free(tag);
        free(deftag);
        if (!microvm) {
            w = qv_xasprintf("filesystems[%zu] PCI slot", i);
            expect_int(o, w, pci_slot(o, id), 0x1b);    /* README: shares in slot 0x1b */
            free(w);
        }
        json_object *chr = NULL;
        for (size_t k = 0; o->chardev && k < json_object_array_length(o->chardev); k++)
            if (strcmp(gets(json_object_array_get_idx(o->chardev, k), "label", ""), id) == 0)
                chr = json_object_array_get_idx(o->chardev, k);
        if (!chr || strncmp(gets(chr, "filename", ""), "unix:", 5) != 0)   /* not "disconnected:" */
            mismatch(o, "filesystems[%zu]: chardev %s is not a connected unix socket: %s", i, id, jr_show(chr));
    }
}

/* Controllers, consoles, chardevs, display: present exactly when the definition needs them. */
/* How many -device of `driver` the definition's qemu_args add (QEMU has those too). */
static int qemu_args_devices(struct oracle *o, const char *driver)
{
    json_object *args = get(o->json, "qemu_args");
    int n = 0;
    for (size_t i = 0; args && i + 1 < json_object_array_length(args); i++) {
        if (strcmp(json_object_get_string(json_object_array_get_idx(args, i)), "-device") != 0)
            continue;
        json_object *dev = json_tokener_parse(json_object_get_string(json_object_array_get_idx(args, i + 1)));
        n += dev && strcmp(gets(dev, "driver", ""), driver) == 0;
        json_object_put(dev);
    }
    return n;
}

static void check_devices(struct oracle *o, const char *machine, bool microvm)
{
    bool scsi = false, usb = false, sata = false;
    json_object *disks = get(o->json, "disks"), *cds = get(o->json, "cdroms");
    for (size_t i = 0; disks && i < json_object_array_length(disks); i++) {
        const char *bus = gets(json_object_array_get_idx(disks, i), "bus", "virtio");
        scsi |= strcmp(bus, "scsi") == 0;
        usb |= strcmp(bus, "usb") == 0;
        sata |= strcmp(bus, "sata") == 0;
    }
    for (size_t i = 0; cds && i < json_object_array_length(cds); i++) {
        const char *bus = gets(json_object_array_get_idx(cds, i), "bus", "");
        scsi |= strcmp(bus, "scsi") == 0;
        sata |= strcmp(bus, "sata") == 0;
    }
    const char *console = gets(o->json, "console", "serial");
    bool agent = getb(o->json, "agent", false);
    bool vnc = strcmp(gets(get(o->json, "graphics"), "type", "none"), "vnc") == 0;
    bool q35 = strcmp(machine, "q35") == 0, pc = strcmp(machine, "pc") == 0;
    json_object *gr = get(o->json, "graphics");
    bool tablet = vnc && getb(gr, "tablet", false), rng = getb(o->json, "rng", false);
    const char *video = vnc ? gets(gr, "video", "vga") : "";
    const struct { const char *type; int want; } classes[] = {
        {"pcie-root-port", q35 ? VM_HOTPLUG_PORTS : 0},
        {microvm ? "virtio-scsi-device" : "virtio-scsi-pci", scsi},
        {"qemu-xhci", usb || tablet},
        {"ich9-ahci", pc && sata},
        {microvm ? "virtio-serial-device" : "virtio-serial-pci", strcmp(console, "virtio") == 0 || agent},
        {"isa-serial", strcmp(console, "serial") == 0},
        {"virtconsole", strcmp(console, "virtio") == 0},
        {"virtserialport", agent},
        {"VGA", strcmp(video, "vga") == 0},
        {"virtio-vga", strcmp(video, "virtio") == 0},
        {"qxl-vga", strcmp(video, "qxl") == 0},
        {"bochs-display", strcmp(video, "bochs") == 0},
        {"usb-tablet", tablet},
        {"virtio-rng-pci", rng},
        {"i6300esb", get(o->json, "watchdog") != NULL},
        {"virtio-balloon-pci", getb(get(o->json, "memory"), "balloon", false)},
        {"pvpanic", !microvm},
    };
    for (size_t i = 0; i < ARRAY_SIZE(classes); i++) {
        char *w = qv_xasprintf("devices of type %s", classes[i].type);
        expect_int(o, w, count_type(o, classes[i].type), classes[i].want + qemu_args_devices(o, classes[i].type));
        free(w);
    }
    /* root ports left free for hotplug: nothing behind them */
    json_object *devs = get(json_object_array_get_idx(o->pci, 0), "devices");
    for (size_t i = 0; q35 && devs && i < json_object_array_length(devs); i++) {
        json_object *d = json_object_array_get_idx(devs, i), *br = get(d, "pci_bridge"), *below = get(br, "devices");
        if (br && below && json_object_array_length(below) > 0)
            mismatch(o, "root port %s is not free for hotplug", gets(d, "qdev_id", "?"));
    }
    if (agent) {
        char *n = NULL;
        for (size_t i = 0; i < json_object_array_length(o->peripheral) && !n; i++) {
            json_object *p = json_object_array_get_idx(o->peripheral, i);
            if (strcmp(gets(p, "type", ""), "child<virtserialport>") == 0) {
                char path[128];
                snprintf(path, sizeof(path), "/machine/peripheral/%s", gets(p, "name", ""));
                n = qom_str(o, path, "name");
            }
        }
        expect_str(o, "agent port", n, "org.qemu.guest_agent.0");
        free(n);
    }
    /* chardevs: QMP always, the console unless none, the agent's channel, the TPM's */
    bool tpm = get(o->json, "tpm") != NULL;
    const struct { const char *label; bool want; } chardevs[] = {
        {"qmp", true}, {"console", strcmp(console, "none") != 0}, {"qga", agent}, {"chrtpm", tpm},
    };
    for (size_t i = 0; i < ARRAY_SIZE(chardevs); i++) {
        bool have = false;
        for (size_t k = 0; o->chardev && k < json_object_array_length(o->chardev); k++)
            have |= strcmp(gets(json_object_array_get_idx(o->chardev, k), "label", ""), chardevs[i].label) == 0;
        if (have != chardevs[i].want)
            mismatch(o, "chardev %s: QEMU %s it", chardevs[i].label, have ? "has" : "lacks");
    }
    json_object *fss = get(o->json, "filesystems");
    expect_int(o, "chardevs", o->chardev ? (int64_t)json_object_array_length(o->chardev) : -1,
               1 + (strcmp(console, "none") != 0) + agent + tpm + (fss ? (int64_t)json_object_array_length(fss) : 0));
    /* VNC: where it listens and whether it asks for the password */
    json_object *v = ask(o, "query-vnc", NULL), *g = get(o->json, "graphics");
    if (!v || getb(v, "enabled", !vnc) != vnc) {
        mismatch(o, "graphics: VNC is %s in QEMU", v && getb(v, "enabled", false) ? "on" : "off");
    } else if (vnc) {
        expect_str(o, "graphics.listen", gets(v, "host", NULL), gets(g, "listen", "127.0.0.1"));
        int64_t port = geti(g, "port", -1);
        char *svc = port >= 0 ? qv_xasprintf("%lld", (long long)port) : NULL;
        if (svc)
            expect_str(o, "graphics.port", gets(v, "service", NULL), svc);
        else if (atoi(gets(v, "service", "0")) < 5900)
            mismatch(o, "graphics.port auto: QEMU listens on %s", gets(v, "service", "?"));
        free(svc);
        expect_str(o, "graphics.password_secret", gets(v, "auth", NULL), get(g, "password_secret") ? "vnc" : "none");
    }
    json_object_put(v);
    /* qemu_args: each -device with an id is there with its driver */
    json_object *args = get(o->json, "qemu_args");
    for (size_t i = 0; args && i + 1 < json_object_array_length(args); i++) {
        if (strcmp(json_object_get_string(json_object_array_get_idx(args, i)), "-device") != 0)
            continue;
        json_object *dev = json_tokener_parse(json_object_get_string(json_object_array_get_idx(args, i + 1)));
        if (dev && get(dev, "id"))
            expect_str(o, "qemu_args -device", peripheral_type(o, gets(dev, "id", "")), gets(dev, "driver", ""));
        json_object_put(dev);
    }
}

/* ---- host features ---- */

static bool kvm_present(void)
{
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    bool ok = fd >= 0 && ioctl(fd, KVM_GET_API_VERSION, 0) == KVM_API_VERSION;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Whether this host's KVM can run a guest with -cpu host at all (nested hypervisors
 * sometimes refuse an MSR and QEMU aborts): a plain command line written here. */
static bool kvm_cpu_host_works(char *why, size_t len)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return false;
    int errp[2];
    if (pipe2(errp, O_CLOEXEC) < 0)
        return false;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(sv[1], 3);
        dup2(errp[1], 2);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        const char *argv[] = {"/usr/bin/qemu-system-x86_64", "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-nodefaults",
                              "-no-user-config", "-display", "none", "-S", "-chardev", "socket,id=qmp,fd=3,server=off",
                              "-mon", "chardev=qmp,mode=control", NULL};
        char *envp[] = {"PATH=/usr/bin:/bin", NULL};
        execve(argv[0], (char *const *)argv, envp);
        _exit(127);
    }
    close(sv[1]);
    close(errp[1]);
    struct qmp *q = qmp_new(sv[0], QMP_MONITOR, NULL, NULL);
    struct qv_err e = {0};
    json_object *st = NULL;
    int r = qmp_handshake_sync(q, 10000, &e);
    if (r == 0)
        r = qmp_call(q, "query-status", NULL, NULL, 0, 10000, &st, &e);
    bool ok = r == 0 && strcmp(gets(st, "status", ""), "prelaunch") == 0;
    json_object_put(st);
    if (r == 0)
        qmp_call(q, "quit", NULL, NULL, 0, 5000, NULL, NULL);
    qmp_free(q);
    if (!ok)
        kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    char *err = drain(errp[0]);
    close(errp[0]);
    err[strcspn(err, "\n")] = '\0';
    snprintf(why, len, "%s", err);
    free(err);
    return ok;
}

/* ---- the test ---- */

/* No host device exists on a test host: QEMU must take the command line up to the
 * first host device and refuse that one by name, i.e. the options are QEMU's own and
 * the device is where QEMU looked for it (vfio: sysfs of that address; usb-host: the
 * fd passed through the fdset). */
static void check_hostdev_refusal(const char *name, json_object *first, pid_t pid, int errfd)
{
    int wst = 0;
    for (int t = 0; t < 500 && waitpid(pid, &wst, WNOHANG) == 0; t++)
        usleep(20000);
    if (waitpid(pid, &wst, WNOHANG) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &wst, 0);
        close(errfd);
        fail_msg("%s: QEMU did not refuse the host device it cannot have within 10 s", name);
    }
    char *err = drain(errfd);
    close(errfd);
    char want[160];
    const char *addr = gets(first, "address", "");
    if (strcmp(gets(first, "type", ""), "pci") == 0)
        snprintf(want, sizeof(want), "vfio /sys/bus/pci/devices/%s%s: no such host device", strlen(addr) == 7 ? "0000:" : "",
                 addr);
    else
        snprintf(want, sizeof(want), "failed to open host usb device /dev/fdset/");
    bool ok = WIFEXITED(wst) && WEXITSTATUS(wst) == 1 && strstr(err, want);
    if (!ok)
        fprintf(stderr, "%s: expected QEMU to exit 1 saying \"%s\"; it said:\n%s\n", name, want, err);
    free(err);
    assert_true(ok);
}

static void skip_because(const char *name, const char *why)
{
    print_message("# SKIP %s: %s\n", name, why);
    skip();
}

static void test_oracle(void **state)
{
    const char *name = *state;
    json_object *json = golden_load(name);
    if (!json)
        fail_msg("%s: cannot read %s/%s.json", name, golden_dir, name);
    struct host_facts pinned;
    struct qv_err e = {0};
    if (golden_host_facts(&pinned, &e) < 0)
        fail_msg("pinned host facts: %s", e.msg);

    /* host features this definition needs: skip, never fail, where absent */
    const char *accel = gets(json, "accel", "auto");
    char why[256];
    if (strcmp(accel, "kvm") == 0 && !kvm_present()) {
        json_object_put(json);
        skip_because(name, "no /dev/kvm");
    }
    if (strcmp(accel, "kvm") == 0 && !kvm_cpu_host_works(why, sizeof(why))) {
        json_object_put(json);
        skip_because(name, "KVM on this host cannot run -cpu host");
    }
    bool uefi = strcmp(gets(get(json, "boot"), "firmware", "bios"), "uefi") == 0;
    if (uefi && (access(pinned.ovmf_code, R_OK) < 0 || access(pinned.ovmf_vars, R_OK) < 0)) {
        json_object_put(json);
        skip_because(name, "no OVMF");
    }
    json_object *mem = get(json, "memory");
    int64_t page = hugepage_bytes(mem);
    if (page) {
        long pages = (long)(size_of(gets(mem, "size", "1G")) / page);
        if (hp_acquire((long)(page >> 10), pages) < 0) {
            hp_release();
            json_object_put(json);
            char w[64];
            snprintf(w, sizeof(w), "%ld hugepages of %s cannot be reserved here", pages, page == (1 << 30) ? "1G" : "2M");
            skip_because(name, w);
        }
    }

    struct golden_root r;
    assert_int_equal(golden_root_make(&r, name), 0);
    struct vm_def d;
    if (vm_define(&r.paths, json, false, &d, &e) < 0)
        fail_msg("%s: define: %s", name, e.msg);
    struct launch_plan plan;
    if (build_launch_plan(&d, &pinned, &plan, &e) < 0)
        fail_msg("%s: plan: %s", name, e.msg);
    char run_dir[PATH_MAX];
    snprintf(run_dir, sizeof(run_dir), "%s/run", r.dir);
    mkdir_p(run_dir, 0700);
    struct launch_ctx ctx = {.paths = &r.paths, .facts = &pinned, .run_dir = run_dir, .open_tap = open_test_tap,
                             .open_fs = open_test_fs, .open_tpm = open_test_tpm, .open_usb = open_test_usb,
                             .opaque = run_dir};
    int fds[PLAN_MAX_FDS];
    if (launch_open_resources(&plan, &d, &ctx, fds, &e) < 0)
        fail_msg("%s: opening resources: %s", name, e.msg);
    int errfd;
    time_t started = time(NULL);
    pid_t pid = spawn_qemu(&plan, fds, &errfd);
    launch_close_resources(fds, plan.nslots);

    json_object *hostdevs = get(json, "hostdevs");
    if (hostdevs && json_object_array_length(hostdevs)) {
        check_hostdev_refusal(name, json_object_array_get_idx(hostdevs, 0), pid, errfd);
        json_object_put(json);
        launch_plan_free(&plan);
        vm_def_free(&d);
        golden_root_remove(&r);
        return;
    }
    struct oracle o = {.name = name, .pid = pid, .json = json, .def = &d, .started = started};
    buf_adds(&o.why, "");
    char sock[PATH_MAX];
    snprintf(sock, sizeof(sock), "%s/qmp.sock", run_dir);
    json_object *status = NULL;
    int rc = qmp_connect_path(sock, QMP_MONITOR, 10000, NULL, NULL, &o.q, &e);
    if (rc == 0)
        rc = qmp_call(o.q, "query-status", NULL, NULL, 0, 10000, &status, &e);
    if (rc == 0 && strcmp(gets(status, "status", ""), "prelaunch") != 0) {
        rc = -EINVAL;
        snprintf(e.msg, sizeof(e.msg), "status %s", jr_show(status));
    }
    json_object_put(status);
    if (rc == 0) {
        json_object *a = json_object_new_object();
        json_object_object_add(a, "path", json_object_new_string("/machine/peripheral"));
        o.peripheral = ask(&o, "qom-list", a);
        o.block = ask(&o, "query-block", NULL);
        o.fdsets = ask(&o, "query-fdsets", NULL);
        o.pci = ask(&o, "query-pci", NULL);
        o.chardev = ask(&o, "query-chardev", NULL);
        if (!o.peripheral || !o.block || !o.fdsets || !o.chardev)
            mismatch(&o, "QEMU did not answer qom-list/query-block/query-fdsets/query-chardev");
        const char *machine = gets(json, "machine", "q35");
        bool microvm = strcmp(machine, "microvm") == 0;
        if (!microvm && !o.pci)
            mismatch(&o, "QEMU did not answer query-pci");
        if (!o.bad) {
            check_machine(&o, &pinned);
            check_cpu(&o, &pinned);
            check_memory(&o);
            check_numa(&o);
            check_physaddr(&o);
            check_clock(&o, &pinned);
            check_boot(&o, &pinned);
            check_disks(&o, microvm);
            check_cdroms(&o, machine);
            check_nics(&o, microvm);
            check_devices(&o, machine, microvm);
            check_filesystems(&o, microvm);
            check_tpm(&o);
        }
        if (getenv("QVISOR_ORACLE_DUMP"))
            print_message("# %s\n# peripheral %s\n# block %s\n# pci %s\n# chardev %s\n", name, jr_show(o.peripheral),
                          jr_show(o.block), jr_show(o.pci), jr_show(o.chardev));
    }
    if (o.q) {
        qmp_call(o.q, "quit", NULL, NULL, 0, 5000, NULL, NULL);
        qmp_free(o.q);
    }
    /* QEMU must exit by itself after quit; two seconds are generous */
    int wst = 0;
    for (int t = 0; t < 100 && waitpid(pid, &wst, WNOHANG) == 0; t++)
        usleep(20000);
    if (waitpid(pid, &wst, WNOHANG) == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &wst, 0);
    }
    stop_test_fs();
    stop_test_tpm();
    hp_release();
    char *err = drain(errfd);
    close(errfd);
    if (rc < 0)
        fprintf(stderr, "%s: QEMU did not accept the command line: %s\n%s\n", name, e.msg, err);
    if (o.bad)
        fprintf(stderr, "%s: what QEMU shows the guest differs from the definition:\n%s", name, o.why.p);
    free(err);
    buf_free(&o.why);
    json_object_put(o.peripheral);
    json_object_put(o.block);
    json_object_put(o.fdsets);
    json_object_put(o.pci);
    json_object_put(o.chardev);
    json_object_put(json);
    launch_plan_free(&plan);
    vm_def_free(&d);
    golden_root_remove(&r);
    assert_int_equal(rc, 0);
    assert_int_equal(o.bad, 0);
}

static int setup(void **state)
{
    (void)state;
    /* a private network namespace for the taps bridge/network NICs need */
    if (unshare(CLONE_NEWNET) < 0)
        return -1;
    atexit(hp_release);
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < ARRAY_SIZE(sigs); i++)
        signal(sigs[i], hp_on_signal);
    /* put back what a killed earlier run left raised */
    if (hp_acquire(0, 0) == 0)
        hp_release();
    hp_release();
    return golden_images_make();
}

static int teardown(void **state)
{
    (void)state;
    golden_cleanup();
    return 0;
}

int main(void)
{
    /* whole TAP lines, never interleaved mid-line with the diagnostics on stderr */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (geteuid() != 0) {
        printf("1..0 # SKIP test_argv_oracle needs root (taps, hugepages)\n");
        return 0;
    }
    golden_read_names();
    struct CMUnitTest *tests = qv_xcalloc(golden_valid.n + 1, sizeof(*tests));
    size_t n = 0;
    for (size_t i = 0; i < golden_valid.n; i++)
        tests[n++] = (struct CMUnitTest){.name = qv_xasprintf("QEMU shows the guest what %s defines", golden_valid.v[i]),
                                         .test_func = test_oracle, .initial_state = golden_valid.v[i]};
    int r = _cmocka_run_group_tests("argv_oracle", tests, n, setup, teardown);
    for (size_t i = 0; i < n; i++)
        free((char *)tests[i].name);
    free(tests);
    strv_free(&golden_valid);
    strv_free(&golden_invalid);
    return n ? r : 1;
}
