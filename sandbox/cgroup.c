/* The VM's cgroup: v2 (one directory, controllers enabled from above) or v1 (one
 * directory per controller hierarchy). The supervisor resolves and records the
 * paths, creates the cgroup with limits before spawning, the child joins it, and
 * the supervisor removes it once QEMU has exited.
 *
 * A fake tree (plain directories and files, for tests) works too: writes to a
 * file that is not on a cgroup file system replace its contents, and removal
 * deletes the known control files; processes are only ever killed on a real
 * cgroup file system. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/magic.h>

#include "sandbox/internal.h"

const char *const cg_ctl_names[CG_NCTL] = {"memory", "cpu", "pids", "io", "cpuacct"};
const char *const cg_v1_names[CG_NCTL] = {"memory", "cpu", "pids", "blkio", "cpuacct"};

#define CG_ALL ((1u << CG_NCTL) - 1)
/* the controllers v2 has to enable: accounting is there without */
#define CG_V2_ENABLE (CG_ALL & ~(1u << CG_CPUACCT))
/* limits sized for QEMU alone, written on its leaf */
#define CG_QEMU_LIMITS ((1u << CG_MEMORY) | (1u << CG_PIDS))

static bool on_cgroupfs(const char *path)
{
    struct statfs sf;
    return statfs(path, &sf) == 0 && (sf.f_type == CGROUP2_SUPER_MAGIC || sf.f_type == CGROUP_SUPER_MAGIC);
}

int cg_write(const char *dir, const char *file, const char *value)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/%s", dir, file) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct statfs sf;
    /* A fake tree's plain file must end up holding exactly the value. */
    if (fstatfs(fd, &sf) == 0 && sf.f_type != CGROUP2_SUPER_MAGIC && sf.f_type != CGROUP_SUPER_MAGIC &&
        ftruncate(fd, 0) < 0) {
        int r = -errno;
        close(fd);
        return r;
    }
    size_t n = strlen(value);
    ssize_t w = write(fd, value, n);
    int r = w == (ssize_t)n ? 0 : w < 0 ? -errno : -EIO;
    close(fd);
    return r;
}

static int cg_read(const char *dir, const char *file, char *buf, size_t len)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/%s", dir, file) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    return read_file_small(path, buf, len);
}

static bool has_word(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n) {
        bool start = p == list || p[-1] == ' ' || p[-1] == '+' || p[-1] == '\n' || p[-1] == ',';
        bool end = p[n] == '\0' || p[n] == ' ' || p[n] == '\n' || p[n] == ',';
        if (start && end)
            return true;
    }
    return false;
}

int cg_detect_version(const char *root)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/cgroup.controllers", root);
    if (access(path, F_OK) == 0)
        return 2;
    for (int c = 0; c < CG_NCTL; c++)
        if (cg_v1_hierarchy(root, c, path, sizeof(path)) == 0)
            return 1;
    return 0;
}

int cg_v1_hierarchy(const char *root, enum sandbox_cgroup_ctl c, char *out, size_t len)
{
    static const char *const alt[CG_NCTL][3] = {
        [CG_MEMORY] = {"memory"},
        [CG_CPU] = {"cpu", "cpu,cpuacct", "cpuacct,cpu"},
        [CG_PIDS] = {"pids"},
        [CG_IO] = {"blkio"},
        [CG_CPUACCT] = {"cpuacct", "cpu,cpuacct", "cpuacct,cpu"},
    };
    for (int i = 0; i < 3 && alt[c][i]; i++) {
        char probe[PATH_MAX];
        snprintf(out, len, "%s/%s", root, alt[c][i]);
        snprintf(probe, sizeof(probe), "%s/cgroup.procs", out);
        if (access(probe, F_OK) == 0)
            return 0;
    }
    return -ENOENT;
}

static int join_path(char *out, size_t len, const char *a, const char *b, const char *c)
{
    /* Collapses the slashes callers put at either end of the parts. */
    while (*b == '/')
        b++;
    size_t bl = strlen(b);
    while (bl && b[bl - 1] == '/')
        bl--;
    int n = bl ? snprintf(out, len, "%s/%.*s/%s", a, (int)bl, b, c) : snprintf(out, len, "%s/%s", a, c);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

int sandbox_cgroup_resolve(const struct sandbox_cgroup_params *p, struct sandbox_cgroup *cg,
                           struct qv_err *e)
{
    memset(cg, 0, sizeof(*cg));
    const char *root = p->root ? p->root : "/sys/fs/cgroup";
    if (!p->name || !name_valid(p->name))
        return qv_fail(e, -EINVAL, "cgroup: \"%s\" is not a valid cgroup name", p->name ? p->name : "");
    if (p->parent && strstr(p->parent, ".."))
        return qv_fail(e, -EINVAL, "cgroup: parent \"%s\" must not contain ..", p->parent);
    int version = p->version ? p->version : cg_detect_version(root);
    if (version != 1 && version != 2)
        return qv_fail(e, -ENOENT, "cgroup: no cgroup hierarchy under %s", root);
    cg->version = version;
    cg->delegated = p->delegated && version == 2;
    cg->split = !cg->delegated;
    snprintf(cg->root, sizeof(cg->root), "%s", root);
    char parent[PATH_MAX];
    int r;
    if (version == 2) {
        if (p->parent)
            snprintf(parent, sizeof(parent), "%s", p->parent);
        else if ((r = proc_cgroup_path(0, NULL, parent, sizeof(parent))) < 0)
            return qv_failerr(e, r, "cgroup: this process's v2 cgroup");
        if (join_path(cg->dir[0].path, PATH_MAX, root, parent, p->name) < 0)
            return qv_fail(e, -ENAMETOOLONG, "cgroup: path too long");
        cg->dir[0].ctls = CG_ALL;
        cg->ndirs = 1;
        return 0;
    }
    for (int c = 0; c < CG_NCTL; c++) {
        char hier[PATH_MAX], path[PATH_MAX];
        if (cg_v1_hierarchy(root, c, hier, sizeof(hier)) < 0)
            continue;
        if (p->parent)
            snprintf(parent, sizeof(parent), "%s", p->parent);
        else if ((r = proc_cgroup_path(0, cg_v1_names[c], parent, sizeof(parent))) < 0)
            return qv_failerr(e, r, "cgroup: this process's %s cgroup", cg_v1_names[c]);
        if (join_path(path, sizeof(path), hier, parent, p->name) < 0)
            return qv_fail(e, -ENAMETOOLONG, "cgroup: path too long");
        size_t i = 0;
        /* Co-mounted controllers share one directory. */
        while (i < cg->ndirs && strcmp(cg->dir[i].path, path) != 0)
            i++;
        if (i == cg->ndirs)
            snprintf(cg->dir[cg->ndirs++].path, PATH_MAX, "%s", path);
        cg->dir[i].ctls |= 1u << c;
    }
    if (!cg->ndirs)
        return qv_fail(e, -ENOENT, "cgroup: no memory, cpu, pids or blkio hierarchy under %s", root);
    return 0;
}

/* ---- creating ------------------------------------------------------------------ */

static int read_pids(const char *dir, pid_t *pids, size_t max, size_t *n)
{
    char buf[8192];
    int r = cg_read(dir, "cgroup.procs", buf, sizeof(buf));
    if (r == -EFBIG) {
        /* more pids than fit: the complete lines are still pids, a cut one is not */
        char *last = strrchr(buf, '\n');
        *(last ? last : buf) = '\0';
    } else if (r < 0) {
        return r;
    }
    *n = 0;
    char *save_tok = NULL;
    for (char *tok = strtok_r(buf, " \n", &save_tok); tok; tok = strtok_r(NULL, " \n", &save_tok)) {
        long v = strtol(tok, NULL, 10);
        if (v > 0 && *n < max)
            pids[(*n)++] = (pid_t)v;
    }
    return 0;
}

int sandbox_cgroup_leaf(const struct sandbox_cgroup *cg, size_t i, enum sandbox_cgroup_leaf leaf, char *out,
                        size_t len)
{
    int n = cg->split ? snprintf(out, len, "%s/%s", cg->dir[i].path,
                                 leaf == CG_LEAF_QEMU ? SANDBOX_CGROUP_QEMU : SANDBOX_CGROUP_SUPERVISOR)
                      : snprintf(out, len, "%s", cg->dir[i].path);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* mkdir, or reuse a leftover from an earlier run if nothing runs in it (with
 * `check`: the supervisor's own leaf is the lock holder's alone). */
static int make_dir(const char *path, bool check, struct qv_err *e)
{
    _cleanup_free_ char *parent = qv_xstrdup(path);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = '\0';
        int r = mkdir_p(parent, 0755);
        if (r < 0)
            return qv_failerr(e, r, "cgroup: creating %s", parent);
    }
    if (mkdir(path, 0755) == 0)
        return 0;
    if (errno != EEXIST)
        return qv_failerr(e, -errno, "cgroup: creating %s", path);
    if (!check)
        return 0;
    pid_t pids[4];
    size_t n = 0;
    int r = read_pids(path, pids, ARRAY_SIZE(pids), &n);
    if (r < 0)
        return qv_failerr(e, r, "cgroup: reading %s/cgroup.procs", path);
    if (n)
        return qv_fail(e, -EBUSY, "cgroup: %s already has processes (pid %d): a QEMU from an earlier run?",
                       path, (int)pids[0]);
    return 0;
}

/* v2: every level from the root down to the leaf's parent must pass the
 * controllers on; enable what is missing, one write for all, one by one if that
 * fails. Levels whose controllers are already enabled (systemd's) are only read. */
static unsigned v2_enable(const char *root, const char *leaf, unsigned want, struct strv *warnings)
{
    _cleanup_free_ char *parent = qv_xstrdup(leaf);
    char *slash = strrchr(parent, '/');
    if (slash)
        *slash = '\0';
    size_t rootlen = strlen(root);
    if (strncmp(parent, root, rootlen) != 0)
        return 0;
    unsigned passed = want;
    size_t len = strlen(parent), pos = rootlen;
    for (;;) {
        char saved = parent[pos];
        parent[pos] = '\0';
        char avail[512] = "", enabled[512] = "";
        cg_read(parent, "cgroup.controllers", avail, sizeof(avail));
        cg_read(parent, "cgroup.subtree_control", enabled, sizeof(enabled));
        struct buf all = {0};
        for (int c = 0; c < CG_NCTL; c++) {
            if (!(passed & (1u << c)))
                continue;
            if (!has_word(avail, cg_ctl_names[c])) {
                strv_pushf(warnings, "cgroup: controller %s is not available in %s", cg_ctl_names[c], parent);
                passed &= ~(1u << c);
            } else if (!has_word(enabled, cg_ctl_names[c])) {
                buf_printf(&all, "%s+%s", all.len ? " " : "", cg_ctl_names[c]);
            }
        }
        if (all.len && cg_write(parent, "cgroup.subtree_control", all.p) < 0) {
            for (int c = 0; c < CG_NCTL; c++) {
                if (!(passed & (1u << c)) || has_word(enabled, cg_ctl_names[c]))
                    continue;
                char tok[16];
                snprintf(tok, sizeof(tok), "+%s", cg_ctl_names[c]);
                int r = cg_write(parent, "cgroup.subtree_control", tok);
                if (r < 0) {
                    strv_pushf(warnings, "cgroup: cannot enable %s in %s/cgroup.subtree_control: %s%s",
                               cg_ctl_names[c], parent, strerror(-r),
                               r == -EBUSY ? " (it has processes: move them into a leaf cgroup)" : "");
                    passed &= ~(1u << c);
                }
            }
        }
        buf_free(&all);
        parent[pos] = saved;
        if (pos >= len)
            break;
        char *next = strchr(parent + pos + 1, '/');
        pos = next ? (size_t)(next - parent) : len;
    }
    return passed;
}

static void strv_freep(struct strv *s)
{
    strv_free(s);
}

/* The VM's directory (and, split, its two leaves); no process may be in the VM's own. */
static int make_dirs(const struct sandbox_cgroup *cg, size_t i, struct qv_err *e)
{
    char qemu[PATH_MAX], sup[PATH_MAX];
    int r = make_dir(cg->dir[i].path, true, e);
    if (r < 0 || !cg->split)
        return r;
    if (sandbox_cgroup_leaf(cg, i, CG_LEAF_QEMU, qemu, sizeof(qemu)) < 0 ||
        sandbox_cgroup_leaf(cg, i, CG_LEAF_SUPERVISOR, sup, sizeof(sup)) < 0)
        return qv_fail(e, -ENAMETOOLONG, "cgroup: path too long");
    if ((r = make_dir(qemu, true, e)) < 0)
        return r;
    return make_dir(sup, false, e);
}

/* Limits on the VM's directory and on QEMU's leaf (see struct sandbox_cgroup). */
static int write_limits(const struct sandbox_cgroup *cg, size_t i, unsigned ctls,
                        const struct sandbox_cgroup_limits *l, struct strv *warn, struct qv_err *e)
{
    if (!cg->split)
        return cg_write_limits(cg->version, cg->dir[i].path, ctls, l, warn, e);
    char qemu[PATH_MAX];
    sandbox_cgroup_leaf(cg, i, CG_LEAF_QEMU, qemu, sizeof(qemu));
    int r = cg_write_limits(cg->version, cg->dir[i].path, ctls & ~CG_QEMU_LIMITS, l, warn, e);
    return r < 0 ? r : cg_write_limits(cg->version, qemu, ctls & CG_QEMU_LIMITS, l, warn, e);
}

int sandbox_cgroup_create(struct sandbox_cgroup *cg, const struct sandbox_cgroup_limits *l,
                          struct strv *warnings, struct qv_err *e)
{
    static const struct sandbox_cgroup_limits none;
    if (!l)
        l = &none;
    _cleanup_(strv_freep) struct strv local = {0};
    struct strv *warn = warnings ? warnings : &local;
    int r = 0;
    cg->ctls = 0;
    for (size_t i = 0; i < cg->ndirs; i++) {
        if ((r = make_dirs(cg, i, e)) < 0)
            return r;
        if (cg->delegated) {
            /* only what the unit's cgroup passes on already (nothing, usually); CPU
             * time is in cpu.stat without a controller */
            char avail[512] = "";
            cg_read(cg->dir[i].path, "cgroup.controllers", avail, sizeof(avail));
            cg->dir[i].ctls = 1u << CG_CPUACCT;
            for (int c = 0; c < CG_NCTL; c++)
                if (has_word(avail, cg_ctl_names[c]))
                    cg->dir[i].ctls |= 1u << c;
        } else if (cg->version == 2) {
            /* every level down to the VM's directory passes the controllers on */
            char leaf[PATH_MAX];
            sandbox_cgroup_leaf(cg, i, CG_LEAF_QEMU, leaf, sizeof(leaf));
            cg->dir[i].ctls = v2_enable(cg->root, leaf, CG_V2_ENABLE, warn) | (1u << CG_CPUACCT);
        }
        cg->ctls |= cg->dir[i].ctls;
        if ((r = write_limits(cg, i, cg->dir[i].ctls, l, warn, e)) < 0)
            return r;
    }
    unsigned missing = cg_wanted(l) & ~cg->ctls;
    for (int c = 0; c < CG_NCTL; c++)
        if (missing & (1u << c))
            strv_pushf(warn, "cgroup: no %s controller: its limits are not applied", cg_ctl_names[c]);
    return 0;
}

/* ---- reading back ------------------------------------------------------------------ */

static void put_num(json_object *o, const char *key, const char *text, uint64_t unlimited_from)
{
    if (!text)
        return;
    while (*text == ' ')
        text++;
    if (strncmp(text, "max", 3) == 0) {
        json_object_object_add(o, key, NULL);
        return;
    }
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || end == text)
        return;
    if (v < 0 || (uint64_t)v >= unlimited_from)
        json_object_object_add(o, key, NULL);
    else
        json_object_object_add(o, key, json_object_new_int64(v));
}

static void put_file_num(json_object *o, const char *key, const char *dir, const char *file,
                         uint64_t unlimited_from)
{
    char buf[128];
    if (cg_read(dir, file, buf, sizeof(buf)) >= 0)
        put_num(o, key, buf, unlimited_from);
}

static void put_keyed(json_object *o, const char *key, const char *dir, const char *file, const char *word)
{
    char buf[1024];
    if (cg_read(dir, file, buf, sizeof(buf)) < 0)
        return;
    size_t n = strlen(word);
    char *save_line = NULL;
    for (char *line = strtok_r(buf, "\n", &save_line); line; line = strtok_r(NULL, "\n", &save_line))
        if (strncmp(line, word, n) == 0 && line[n] == ' ')
            put_num(o, key, line + n + 1, UINT64_MAX);
}

static void put_lines(json_object *o, const char *key, const char *dir, const char *file)
{
    char buf[2048];
    if (cg_read(dir, file, buf, sizeof(buf)) < 0)
        return;
    json_object *a = json_object_new_array();
    char *save_line = NULL;
    for (char *line = strtok_r(buf, "\n", &save_line); line; line = strtok_r(NULL, "\n", &save_line))
        json_object_array_add(a, json_object_new_string(line));
    json_object_object_add(o, key, a);
}

void cg_dir_read(int version, const char *dir, unsigned ctls, json_object *o)
{
    /* v1 reports "unlimited" as the largest page-aligned long. */
    const uint64_t v1_unlimited = 1ull << 62;
    if (version == 2) {
        if (ctls & (1u << CG_MEMORY)) {
            put_file_num(o, "memory_max", dir, "memory.max", UINT64_MAX);
            put_file_num(o, "memory_current", dir, "memory.current", UINT64_MAX);
            put_keyed(o, "oom_kills", dir, "memory.events", "oom_kill");
        }
        if (ctls & (1u << CG_CPU)) {
            char buf[128];
            if (cg_read(dir, "cpu.max", buf, sizeof(buf)) >= 0) {
                put_num(o, "cpu_quota_us", buf, UINT64_MAX);
                const char *sp = strchr(buf, ' ');
                if (sp)
                    put_num(o, "cpu_period_us", sp + 1, UINT64_MAX);
            }
            put_file_num(o, "cpu_weight", dir, "cpu.weight", UINT64_MAX);
        }
        if (ctls & (1u << CG_PIDS)) {
            put_file_num(o, "pids_max", dir, "pids.max", UINT64_MAX);
            put_file_num(o, "pids_current", dir, "pids.current", UINT64_MAX);
        }
        if (ctls & (1u << CG_CPUACCT))
            put_keyed(o, "cpu_usage_us", dir, "cpu.stat", "usage_usec");
        if (ctls & (1u << CG_IO)) {
            char buf[256];
            if (cg_read(dir, "io.weight", buf, sizeof(buf)) >= 0 && str_startswith(buf, "default "))
                put_num(o, "io_weight", buf + 8, UINT64_MAX);
            else
                put_file_num(o, "io_weight", dir, "io.bfq.weight", UINT64_MAX);
            put_lines(o, "io_max", dir, "io.max");
        }
        return;
    }
    if (ctls & (1u << CG_MEMORY)) {
        put_file_num(o, "memory_max", dir, "memory.limit_in_bytes", v1_unlimited);
        put_file_num(o, "memory_current", dir, "memory.usage_in_bytes", UINT64_MAX);
        put_keyed(o, "oom_kills", dir, "memory.oom_control", "oom_kill");
    }
    if (ctls & (1u << CG_CPU)) {
        put_file_num(o, "cpu_quota_us", dir, "cpu.cfs_quota_us", UINT64_MAX);
        put_file_num(o, "cpu_period_us", dir, "cpu.cfs_period_us", UINT64_MAX);
        put_file_num(o, "cpu_shares", dir, "cpu.shares", UINT64_MAX);
    }
    if (ctls & (1u << CG_PIDS)) {
        put_file_num(o, "pids_max", dir, "pids.max", UINT64_MAX);
        put_file_num(o, "pids_current", dir, "pids.current", UINT64_MAX);
    }
    if (ctls & (1u << CG_IO)) {
        put_file_num(o, "io_weight", dir, "blkio.weight", UINT64_MAX);
        if (!json_object_object_get_ex(o, "io_weight", NULL))
            put_file_num(o, "io_weight", dir, "blkio.bfq.weight", UINT64_MAX);
        put_lines(o, "io_read_bps", dir, "blkio.throttle.read_bps_device");
        put_lines(o, "io_write_bps", dir, "blkio.throttle.write_bps_device");
        put_lines(o, "io_read_iops", dir, "blkio.throttle.read_iops_device");
        put_lines(o, "io_write_iops", dir, "blkio.throttle.write_iops_device");
    }
    char ns[64];
    if (ctls & (1u << CG_CPUACCT) && cg_read(dir, "cpuacct.usage", ns, sizeof(ns)) >= 0)
        json_object_object_add(o, "cpu_usage_us", json_object_new_int64((int64_t)(strtoull(ns, NULL, 10) / 1000)));
}

static int write_pid(const char *dir, pid_t pid)
{
    char val[32];
    snprintf(val, sizeof(val), "%d", (int)pid);
    return cg_write(dir, "cgroup.procs", val);
}

int sandbox_cgroup_attach(const struct sandbox_cgroup *cg, pid_t pid, struct qv_err *e)
{
    for (size_t i = 0; i < cg->ndirs; i++) {
        char leaf[PATH_MAX];
        sandbox_cgroup_leaf(cg, i, CG_LEAF_QEMU, leaf, sizeof(leaf));
        int r = write_pid(leaf, pid);
        if (r < 0)
            return qv_failerr(e, r, "cgroup: moving pid %d into %s", (int)pid, leaf);
    }
    return 0;
}

/* The mount of the hierarchy that holds directory i. */
static int hierarchy_root(const struct sandbox_cgroup *cg, size_t i, char *out, size_t len)
{
    if (cg->version == 2) {
        snprintf(out, len, "%s", cg->root);
        return 0;
    }
    for (int c = 0; c < CG_NCTL; c++)
        if (cg->dir[i].ctls & (1u << c))
            return cg_v1_hierarchy(cg->root, c, out, len);
    return -ENOENT;
}

int sandbox_cgroup_join_self(const struct sandbox_cgroup *cg, struct sandbox_cgroup_origin *from,
                             struct qv_err *e)
{
    from->ndirs = 0;
    for (size_t i = 0; i < cg->ndirs; i++) {
        char base[PATH_MAX], rel[PATH_MAX];
        int c = __builtin_ctz(cg->dir[i].ctls ? cg->dir[i].ctls : 1u);
        int r = hierarchy_root(cg, i, base, sizeof(base));
        if (r == 0)
            r = proc_cgroup_path(0, cg->version == 2 ? NULL : cg_v1_names[c], rel, sizeof(rel));
        if (r < 0)
            return qv_failerr(e, r, "cgroup: where this process is, below %s", cg->dir[i].path);
        int n = snprintf(from->path[i], PATH_MAX, "%s%s", base, strcmp(rel, "/") == 0 ? "" : rel);
        /* already inside the VM's cgroup: there is nowhere of its own to go back to */
        size_t dl = strlen(cg->dir[i].path);
        if (n >= PATH_MAX || (strncmp(from->path[i], cg->dir[i].path, dl) == 0 &&
                              (from->path[i][dl] == '/' || from->path[i][dl] == '\0')))
            snprintf(from->path[i], PATH_MAX, "%s", base);
        from->ndirs = i + 1;
    }
    for (size_t i = 0; i < cg->ndirs; i++) {
        char leaf[PATH_MAX];
        sandbox_cgroup_leaf(cg, i, CG_LEAF_SUPERVISOR, leaf, sizeof(leaf));
        int r = write_pid(leaf, getpid());
        if (r < 0)
            return qv_failerr(e, r, "cgroup: moving the supervisor (pid %d) into %s", (int)getpid(), leaf);
    }
    return 0;
}

int sandbox_cgroup_leave_self(const struct sandbox_cgroup *cg, const struct sandbox_cgroup_origin *from,
                              struct qv_err *e)
{
    int first = 0;
    for (size_t i = 0; i < from->ndirs && i < cg->ndirs; i++) {
        if (write_pid(from->path[i], getpid()) == 0)
            continue;
        /* gone meanwhile, or (v2) it now passes controllers on: the root takes anyone */
        char base[PATH_MAX];
        int r = hierarchy_root(cg, i, base, sizeof(base));
        if (r == 0)
            r = write_pid(base, getpid());
        if (r < 0 && first == 0)
            first = qv_failerr(e, r, "cgroup: moving the supervisor (pid %d) back to %s", (int)getpid(),
                               from->path[i]);
    }
    return first;
}

int sandbox_cgroup_read(const struct sandbox_cgroup *cg, json_object **out, struct qv_err *e)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "version", json_object_new_int(cg->version));
    json_object *paths = json_object_new_array();
    for (size_t i = 0; i < cg->ndirs; i++) {
        if (access(cg->dir[i].path, F_OK) < 0) {
            int r = -errno;
            json_object_put(paths);
            json_object_put(o);
            return qv_failerr(e, r, "cgroup: %s", cg->dir[i].path);
        }
        json_object_array_add(paths, json_object_new_string(cg->dir[i].path));
    }
    json_object_object_add(o, "paths", paths);
    json_object *limits = json_object_new_object();
    for (size_t i = 0; i < cg->ndirs; i++) {
        unsigned ctls = cg->dir[i].ctls & (cg->ctls ? cg->ctls : CG_ALL);
        char qemu[PATH_MAX];
        sandbox_cgroup_leaf(cg, i, CG_LEAF_QEMU, qemu, sizeof(qemu));
        /* QEMU's own limits and usage from its leaf, the rest for the whole VM */
        cg_dir_read(cg->version, cg->dir[i].path, cg->split ? ctls & ~CG_QEMU_LIMITS : ctls, limits);
        if (cg->split)
            cg_dir_read(cg->version, qemu, ctls & CG_QEMU_LIMITS, limits);
    }
    json_object_object_add(o, "limits", limits);
    *out = o;
    return 0;
}

int sandbox_cgroup_oom_kills(const struct sandbox_cgroup *cg, uint64_t *count)
{
    for (size_t i = 0; i < cg->ndirs; i++) {
        if (!(cg->dir[i].ctls & (1u << CG_MEMORY)))
            continue;
        char buf[1024], qemu[PATH_MAX];
        sandbox_cgroup_leaf(cg, i, CG_LEAF_QEMU, qemu, sizeof(qemu));
        int r = cg_read(qemu, cg->version == 2 ? "memory.events" : "memory.oom_control", buf, sizeof(buf));
        if (r < 0)
            return r;
        char *save_line = NULL;
        for (char *line = strtok_r(buf, "\n", &save_line); line; line = strtok_r(NULL, "\n", &save_line))
            if (str_startswith(line, "oom_kill ")) {
                *count = strtoull(line + 9, NULL, 10);
                return 0;
            }
        return -ENOENT;
    }
    return -ENOENT;
}

/* ---- removing ------------------------------------------------------------------------- */

static void remove_fake_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        /* Only names a cgroup directory holds: never anything else by mistake. */
        if (de->d_type != DT_REG || (!strchr(de->d_name, '.') && strcmp(de->d_name, "tasks") != 0))
            continue;
        unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
}

static int remove_dir(const char *dir, uint64_t deadline, struct qv_err *e)
{
    if (access(dir, F_OK) < 0)
        return 0;
    /* the leaves first (child cgroups are the only directories in a cgroup's) */
    _cleanup_(strv_freep) struct strv children = {0};
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d)) != NULL;)
        if (de->d_type == DT_DIR && strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            strv_pushf(&children, "%s/%s", dir, de->d_name);
    if (d)
        closedir(d);
    for (size_t i = 0; i < children.n; i++) {
        int r = remove_dir(children.v[i], deadline, e);
        if (r < 0)
            return r;
    }
    bool real = on_cgroupfs(dir);
    char kill_file[PATH_MAX];
    snprintf(kill_file, sizeof(kill_file), "%s/cgroup.kill", dir);
    if (real && access(kill_file, F_OK) == 0)
        cg_write(dir, "cgroup.kill", "1");
    for (;;) {
        if (real) {
            pid_t pids[256];
            size_t n = 0;
            if (read_pids(dir, pids, ARRAY_SIZE(pids), &n) == 0)
                for (size_t i = 0; i < n; i++)
                    if (pids[i] != getpid())    /* a supervisor that could not leave stays alive */
                        kill(pids[i], SIGKILL);
        } else {
            remove_fake_files(dir);
        }
        if (rmdir(dir) == 0 || errno == ENOENT)
            return 0;
        int err = errno;
        if ((err != EBUSY && err != ENOTEMPTY) || monotonic_ms() >= deadline)
            return qv_failerr(e, -err, "cgroup: removing %s", dir);
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int sandbox_cgroup_remove(const struct sandbox_cgroup *cg, int timeout_ms, struct qv_err *e)
{
    uint64_t deadline = monotonic_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 5000);
    int first = 0;
    for (size_t i = 0; i < cg->ndirs; i++) {
        int r = remove_dir(cg->dir[i].path, deadline, e);
        if (r < 0 && first == 0)
            first = r;
    }
    return first;
}
