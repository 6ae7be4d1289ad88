/* What this host offers: the QEMU binary and its features, KVM, vhost-net, UEFI
 * firmware. Probing QEMU costs ~100 ms, so its answers are cached per binary
 * (path, size, mtime) under var/cache/qvisor and starts stay fast. */
#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "launcher/model/model.h"
#include "qmp/qmp.h"

#define PROBE_TIMEOUT_MS 10000

/* Dynamic VM uids: in the range systemd's UIDS-GIDS.md leaves unused (65536-524287),
 * below useradd's first subordinate uid (SUB_UID_MIN 100000). Not systemd's own
 * DynamicUser range (61184-65519): systemd hands those out without looking at running
 * processes, so a service could be given a running QEMU's uid. */
#define UID_FIRST 70000
#define UID_LAST 99999

int host_config_load(const struct qv_paths *p, struct host_config *hc, struct qv_err *e)
{
    memset(hc, 0, sizeof(*hc));
    hc->uid_first = UID_FIRST;
    hc->uid_last = UID_LAST;
    hc->log_max_size = LOG_MAX_SIZE;
    hc->log_max_backups = LOG_MAX_BACKUPS;
    char path[PATH_MAX];
    qv_path(p, path, sizeof(path), QV_ETC "/host.json");
    if (!path_exists(path))
        return 0;
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r < 0)
        return r;
    struct jr jr;
    jr_init(&jr, e);
    static const char *const keys[] = {"qemu", "accel", "uid_first", "uid_last", "cgroup_parent", "ctl_group",
                                       "log_max_size", "log_max_backups", "tpm_ca", NULL};
    int accel = ACCEL_AUTO;
    int64_t first = UID_FIRST, last = UID_LAST, backups = LOG_MAX_BACKUPS;
    if ((r = jr_expect(&jr, o, json_type_object)) < 0 || (r = jr_only_keys(&jr, o, keys)) < 0 ||
        (r = jr_string(&jr, o, "qemu", false, &hc->qemu)) < 0 || (r = jr_enum(&jr, o, "accel", vm_accel_names, &accel)) < 0 ||
        (r = jr_int(&jr, o, "uid_first", 1000, 0x7ffffffe, &first)) < 0 ||
        (r = jr_int(&jr, o, "uid_last", 1000, 0x7ffffffe, &last)) < 0 ||
        (r = jr_string(&jr, o, "cgroup_parent", false, &hc->cgroup_parent)) < 0 ||
        (r = jr_string(&jr, o, "ctl_group", false, &hc->ctl_group)) < 0 ||
        (r = jr_string(&jr, o, "tpm_ca", false, &hc->tpm_ca)) < 0 ||
        (r = jr_int(&jr, o, "log_max_backups", 0, 100, &backups)) < 0 ||
        (r = jr_size(&jr, o, "log_max_size", 64 << 10, &hc->log_max_size)) < 0) {
        host_config_free(hc);
        return qv_prefix(e, "%s: ", path);
    }
    if (hc->tpm_ca && hc->tpm_ca[0] != '/') {
        _cleanup_free_ char *ca = qv_xstrdup(hc->tpm_ca);
        host_config_free(hc);
        return qv_fail(e, -EINVAL, "%s: tpm_ca: \"%s\" is not an absolute path", path, ca);
    }
    if (last < first) {
        host_config_free(hc);
        return qv_fail(e, -EINVAL, "%s: uid_last %lld is below uid_first %lld", path, (long long)last, (long long)first);
    }
    hc->accel = accel;
    hc->uid_first = (uid_t)first;
    hc->uid_last = (uid_t)last;
    hc->log_max_backups = (int)backups;
    return 0;
}

void host_config_free(struct host_config *hc)
{
    free(hc->qemu);
    free(hc->cgroup_parent);
    free(hc->ctl_group);
    free(hc->tpm_ca);
    memset(hc, 0, sizeof(*hc));
}

static bool kvm_usable(void)
{
    _cleanup_close_ int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    return fd >= 0 && ioctl(fd, KVM_GET_API_VERSION, 0) == KVM_API_VERSION;
}

/* The kernel's character device, opened: a regular file someone left at that path
 * opens too, and QEMU would then fail on it at every start. */
static bool vhost_net_usable(void)
{
    _cleanup_close_ int fd = open("/dev/vhost-net", O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISCHR(st.st_mode);
}

/* True if some enum in the QMP schema lists `value` (BlockdevAioOptions for io_uring). */
static bool schema_has_enum_value(json_object *schema, const char *value)
{
    for (size_t i = 0; i < json_object_array_length(schema); i++) {
        json_object *t = json_object_array_get_idx(schema, i), *mt, *vals;
        if (!json_object_object_get_ex(t, "meta-type", &mt) || strcmp(json_object_get_string(mt), "enum") != 0 ||
            !json_object_object_get_ex(t, "values", &vals))
            continue;
        for (size_t j = 0; j < json_object_array_length(vals); j++)
            if (strcmp(json_object_get_string(json_object_array_get_idx(vals, j)), value) == 0)
                return true;
    }
    return false;
}

/* Starts QEMU with no machine and asks it over QMP on a socketpair. */
static int probe_qemu(struct host_facts *f, struct qv_err *e)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return qv_failerr(e, -errno, "socketpair");
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int r = -errno;
        close(sv[0]);
        close(sv[1]);
        return qv_failerr(e, r, "fork");
    }
    if (pid == 0) {
        /* a probe whose asker was killed would otherwise wait in -S forever */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(127);
        dup2(sv[1], 3);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        const char *argv[] = {f->qemu, "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none",
                              "-S", "-chardev", "socket,id=qmp,fd=3,server=off", "-mon", "chardev=qmp,mode=control",
                              NULL};
        char *envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
        execve(f->qemu, (char *const *)argv, envp);
        _exit(127);
    }
    close(sv[1]);
    struct qmp *q = qmp_new(sv[0], QMP_MONITOR, NULL, NULL);
    _cleanup_json_ json_object *schema = NULL;
    int r = qmp_handshake_sync(q, PROBE_TIMEOUT_MS, e);
    if (r == 0)
        r = qmp_call(q, "query-qmp-schema", NULL, NULL, 0, PROBE_TIMEOUT_MS, &schema, e);
    if (r == 0) {
        qmp_qemu_version_numbers(q, &f->qemu_major, &f->qemu_minor, &f->qemu_micro);
        f->io_uring = schema_has_enum_value(schema, "io_uring");
        qmp_call(q, "quit", NULL, NULL, 0, PROBE_TIMEOUT_MS, NULL, NULL);
    }
    qmp_free(q);
    if (r < 0)
        kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (r < 0)
        return qv_prefix(e, "%s: probing QEMU: ", f->qemu);
    return 0;
}

static int probe_cached(const struct qv_paths *p, struct host_facts *f, struct qv_err *e)
{
    struct stat st;
    if (stat(f->qemu, &st) < 0)
        return qv_failerr(e, -errno, "QEMU binary %s", f->qemu);
    char path[PATH_MAX];
    qv_path(p, path, sizeof(path), QV_CACHE "/qemu.json");
    int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    _cleanup_json_ json_object *c = NULL;
    if (json_read_file(path, &c, NULL) == 0 && json_object_is_type(c, json_type_object)) {
        json_object *bin, *size, *mt, *maj, *min, *mic, *uring;
        if (json_object_object_get_ex(c, "binary", &bin) && strcmp(json_object_get_string(bin), f->qemu) == 0 &&
            json_object_object_get_ex(c, "size", &size) && json_object_get_int64(size) == st.st_size &&
            json_object_object_get_ex(c, "mtime_ns", &mt) && json_object_get_int64(mt) == mtime &&
            json_object_object_get_ex(c, "major", &maj) && json_object_object_get_ex(c, "minor", &min) &&
            json_object_object_get_ex(c, "micro", &mic) && json_object_object_get_ex(c, "io_uring", &uring)) {
            f->qemu_major = json_object_get_int(maj);
            f->qemu_minor = json_object_get_int(min);
            f->qemu_micro = json_object_get_int(mic);
            f->io_uring = json_object_get_boolean(uring);
            return 0;
        }
    }
    int r = probe_qemu(f, e);
    if (r < 0)
        return r;
    json_object *n = json_object_new_object();
    json_object_object_add(n, "binary", json_object_new_string(f->qemu));
    json_object_object_add(n, "size", json_object_new_int64(st.st_size));
    json_object_object_add(n, "mtime_ns", json_object_new_int64(mtime));
    json_object_object_add(n, "major", json_object_new_int(f->qemu_major));
    json_object_object_add(n, "minor", json_object_new_int(f->qemu_minor));
    json_object_object_add(n, "micro", json_object_new_int(f->qemu_micro));
    json_object_object_add(n, "io_uring", json_object_new_boolean(f->io_uring));
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_CACHE);
    /* a cache we cannot write only costs the next start another probe */
    if (mkdir_p(dir, 0755) == 0)
        json_write_file_atomic(path, n, 0644, NULL);
    json_object_put(n);
    return 0;
}

static bool descriptor_fits(json_object *o, const char **code, const char **vars)
{
    json_object *types, *mapping, *dev, *exe, *tmpl, *fn, *targets, *features;
    bool uefi = false;
    if (!json_object_object_get_ex(o, "interface-types", &types) || !json_object_is_type(types, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(types); i++)
        uefi |= strcmp(json_object_get_string(json_object_array_get_idx(types, i)), "uefi") == 0;
    if (!uefi || !json_object_object_get_ex(o, "mapping", &mapping) ||
        !json_object_object_get_ex(mapping, "device", &dev) || strcmp(json_object_get_string(dev), "flash") != 0 ||
        !json_object_object_get_ex(mapping, "executable", &exe) || !json_object_object_get_ex(exe, "filename", &fn))
        return false;
    *code = json_object_get_string(fn);
    if (!json_object_object_get_ex(mapping, "nvram-template", &tmpl) || !json_object_object_get_ex(tmpl, "filename", &fn))
        return false;
    *vars = json_object_get_string(fn);
    /* SMM-only and Secure Boot builds need machine options we do not set */
    if (json_object_object_get_ex(o, "features", &features)) {
        for (size_t i = 0; i < json_object_array_length(features); i++) {
            const char *ft = json_object_get_string(json_object_array_get_idx(features, i));
            if (strcmp(ft, "requires-smm") == 0 || strcmp(ft, "secure-boot") == 0 || strcmp(ft, "enrolled-keys") == 0)
                return false;
        }
    }
    if (!json_object_object_get_ex(o, "targets", &targets))
        return false;
    for (size_t i = 0; i < json_object_array_length(targets); i++) {
        json_object *t = json_object_array_get_idx(targets, i), *arch, *machines;
        if (!json_object_object_get_ex(t, "architecture", &arch) || strcmp(json_object_get_string(arch), "x86_64") != 0 ||
            !json_object_object_get_ex(t, "machines", &machines))
            continue;
        for (size_t j = 0; j < json_object_array_length(machines); j++)
            if (fnmatch(json_object_get_string(json_object_array_get_idx(machines, j)), "pc-q35-7.2", 0) == 0)
                return true;
    }
    return false;
}

int firmware_find_uefi(const char *const *dirs, char *code, size_t codelen, char *vars, size_t varslen)
{
    /* A descriptor in an earlier directory hides one of the same name in a later one
     * (/etc/qemu/firmware overrides /usr/share/qemu/firmware); order is by file name. */
    struct strv names = {0}, paths = {0};
    for (size_t d = 0; dirs[d]; d++) {
        DIR *dir = opendir(dirs[d]);
        if (!dir)
            continue;
        struct dirent *de;
        while ((de = readdir(dir))) {
            size_t n = strlen(de->d_name);
            if (n < 6 || strcmp(de->d_name + n - 5, ".json") != 0 || strv_contains((const char *const *)names.v, de->d_name))
                continue;
            strv_push(&names, de->d_name);
            strv_pushf(&paths, "%s/%s", dirs[d], de->d_name);
        }
        closedir(dir);
    }
    int found = -ENOENT;
    for (;;) {
        ssize_t best = -1;
        for (size_t i = 0; i < names.n; i++)
            if (names.v[i][0] && (best < 0 || strcmp(names.v[i], names.v[best]) < 0))
                best = (ssize_t)i;
        if (best < 0)
            break;
        names.v[best][0] = '\0';
        _cleanup_json_ json_object *o = NULL;
        const char *c, *v;
        if (json_read_file(paths.v[best], &o, NULL) < 0 || !descriptor_fits(o, &c, &v) || access(c, R_OK) < 0 ||
            access(v, R_OK) < 0)
            continue;
        snprintf(code, codelen, "%s", c);
        snprintf(vars, varslen, "%s", v);
        found = 0;
        break;
    }
    strv_free(&names);
    strv_free(&paths);
    return found;
}

/* QVISOR_HOST_FACTS=FILE replaces every probe with the facts in FILE, so the command
 * line of a definition is the same on every host: the golden tests pin the host this
 * way (a machine without /dev/kvm or with another QEMU would otherwise print another
 * argv). Nothing is probed and host.json's accel and QVISOR_ACCEL are ignored; a fact
 * that is wrong for this host only makes QEMU refuse to start. */
static int host_facts_pinned(const char *path, struct host_facts *f, struct qv_err *e)
{
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r < 0)
        return qv_prefix(e, "QVISOR_HOST_FACTS: ");
    struct jr jr;
    jr_init(&jr, e);
    static const char *const keys[] = {"qemu", "qemu_version", "io_uring", "kvm", "vhost_net", "accel",
                                       "ovmf_code", "ovmf_vars", "now", "utc_offset", NULL};
    char *qemu = NULL, *version = NULL, *code = NULL, *vars = NULL;
    int accel = ACCEL_AUTO;
    int64_t utc_offset = 0;
    if ((r = jr_expect(&jr, o, json_type_object)) < 0 || (r = jr_only_keys(&jr, o, keys)) < 0 ||
        (r = jr_string(&jr, o, "qemu", true, &qemu)) < 0 || (r = jr_string(&jr, o, "qemu_version", true, &version)) < 0 ||
        (r = jr_bool(&jr, o, "io_uring", &f->io_uring)) < 0 || (r = jr_bool(&jr, o, "kvm", &f->kvm_usable)) < 0 ||
        (r = jr_bool(&jr, o, "vhost_net", &f->vhost_net)) < 0 || (r = jr_enum(&jr, o, "accel", vm_accel_names, &accel)) < 0 ||
        (r = jr_string(&jr, o, "ovmf_code", false, &code)) < 0 || (r = jr_string(&jr, o, "ovmf_vars", false, &vars)) < 0 ||
        (r = jr_int(&jr, o, "now", 0, INT64_MAX, &f->now)) < 0 ||
        (r = jr_int(&jr, o, "utc_offset", -86400, 86400, &utc_offset)) < 0) {
        qv_prefix(e, "QVISOR_HOST_FACTS: %s: ", path);
    } else if (sscanf(version, "%d.%d.%d", &f->qemu_major, &f->qemu_minor, &f->qemu_micro) != 3) {
        r = qv_fail(e, -EINVAL, "QVISOR_HOST_FACTS: %s: qemu_version: \"%s\" is not MAJOR.MINOR.MICRO", path, version);
    } else {
        /* without "now" the clock is the host's (a test of clock.adjustment pins it) */
        f->now_pinned = json_object_object_get_ex(o, "now", NULL);
        host_facts_set_now(f, f->now_pinned ? f->now : time(NULL));
        if (json_object_object_get_ex(o, "utc_offset", NULL))
            f->utc_offset = utc_offset;
        f->accel_override = accel;
        snprintf(f->qemu, sizeof(f->qemu), "%s", qemu);
        snprintf(f->ovmf_code, sizeof(f->ovmf_code), "%s", code ? code : "");
        snprintf(f->ovmf_vars, sizeof(f->ovmf_vars), "%s", vars ? vars : "");
    }
    free(qemu);
    free(version);
    free(code);
    free(vars);
    return r;
}

void host_facts_set_now(struct host_facts *f, int64_t now)
{
    /* the zone qvisor runs in (TZ, else /etc/localtime), read here: QEMU's environment
     * is emptied and its mount namespace may not show the zone, so QEMU is given the
     * local time as a date rather than asked to find it (as libvirt computes its offsets) */
    time_t t = (time_t)now;
    struct tm tm;
    f->now = now;
    f->utc_offset = localtime_r(&t, &tm) ? tm.tm_gmtoff : 0;
}

int host_facts_probe(const struct qv_paths *p, const struct host_config *hc, struct host_facts *f, struct qv_err *e)
{
    memset(f, 0, sizeof(*f));
    const char *pinned = getenv("QVISOR_HOST_FACTS");
    if (pinned && *pinned)
        return host_facts_pinned(pinned, f, e);
    const char *qemu = hc->qemu ? hc->qemu : "qemu-system-x86_64";
    if (find_program(qemu, f->qemu, sizeof(f->qemu)) < 0)
        return qv_fail(e, -ENOENT, "QEMU binary %s not found (apt-get install qemu-system-x86, or set \"qemu\" in %s/host.json)",
                       qemu, QV_ETC);
    f->accel_override = hc->accel;
    const char *env = getenv("QVISOR_ACCEL");
    if (env && *env) {
        int i;
        for (i = 0; vm_accel_names[i] && strcmp(vm_accel_names[i], env) != 0; i++)
            ;
        if (!vm_accel_names[i])
            return qv_fail(e, -EINVAL, "QVISOR_ACCEL=%s is not one of auto, kvm, tcg", env);
        f->accel_override = i;
    }
    host_facts_set_now(f, time(NULL));
    f->kvm_usable = kvm_usable();
    f->vhost_net = vhost_net_usable();
    static const char *const fwdirs[] = {"/etc/qemu/firmware", "/usr/share/qemu/firmware", NULL};
    firmware_find_uefi(fwdirs, f->ovmf_code, sizeof(f->ovmf_code), f->ovmf_vars, sizeof(f->ovmf_vars));
    return probe_cached(p, f, e);
}
