/* What is in force for a running process, read back from /proc rather than
 * remembered from the spec: `qvisor status --json` shows the truth even for a
 * QEMU started by an earlier supervisor. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sandbox/internal.h"

static json_object *ids(const char *text)
{
    json_object *a = json_object_new_array();
    char *end;
    for (const char *p = text; *p;) {
        errno = 0;
        unsigned long v = strtoul(p, &end, 10);
        if (end == p || errno)
            break;
        json_object_array_add(a, json_object_new_int64((int64_t)v));
        p = end;
        while (*p == ' ' || *p == '\t')
            p++;
    }
    return a;
}

static void add_status(json_object *o, const char *status)
{
    char v[256];
    if (status_field(status, "Uid", v, sizeof(v)))
        json_object_object_add(o, "uid", ids(v));
    if (status_field(status, "Gid", v, sizeof(v)))
        json_object_object_add(o, "gid", ids(v));
    if (status_field(status, "Groups", v, sizeof(v)))
        json_object_object_add(o, "groups", ids(v));
    static const struct { const char *field, *key; } caps[] = {
        {"CapInh", "inheritable"}, {"CapPrm", "permitted"}, {"CapEff", "effective"},
        {"CapBnd", "bounding"}, {"CapAmb", "ambient"},
    };
    json_object *c = json_object_new_object();
    bool none = true;
    for (size_t i = 0; i < ARRAY_SIZE(caps); i++) {
        if (!status_field(status, caps[i].field, v, sizeof(v)))
            continue;
        json_object_object_add(c, caps[i].key, json_object_new_string(v));
        if (strtoull(v, NULL, 16) != 0)
            none = false;
    }
    json_object_object_add(c, "none", json_object_new_boolean(none));
    json_object_object_add(o, "capabilities", c);
    if (status_field(status, "NoNewPrivs", v, sizeof(v)))
        json_object_object_add(o, "no_new_privs", json_object_new_boolean(atoi(v) == 1));
    json_object *sc = json_object_new_object();
    if (status_field(status, "Seccomp", v, sizeof(v)))
        json_object_object_add(sc, "mode", json_object_new_int(atoi(v)));
    if (status_field(status, "Seccomp_filters", v, sizeof(v)))
        json_object_object_add(sc, "filters", json_object_new_int(atoi(v)));
    json_object_object_add(o, "seccomp", sc);
}

bool sandbox_own_namespace(pid_t pid, const char *ns)
{
    char mine[64], theirs[64], path[64];
    snprintf(path, sizeof(path), "/proc/self/ns/%s", ns);
    ssize_t n1 = readlink(path, mine, sizeof(mine) - 1);
    snprintf(path, sizeof(path), "/proc/%d/ns/%s", (int)pid, ns);
    ssize_t n2 = readlink(path, theirs, sizeof(theirs) - 1);
    return n1 >= 0 && n2 >= 0 && (n1 != n2 || memcmp(mine, theirs, (size_t)n1) != 0);
}

static json_object *namespaces(pid_t pid)
{
    static const char *const names[] = {"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"};
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        if (sandbox_own_namespace(pid, names[i]))
            json_object_array_add(a, json_object_new_string(names[i]));
    return a;
}

static json_object *rlimits(pid_t pid)
{
    static const struct { const char *label, *key; } want[] = {
        {"Max open files", "nofile"}, {"Max locked memory", "memlock"}, {"Max core file size", "core"},
    };
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
    json_object *o = json_object_new_object();
    if (read_file_small(path, buf, sizeof(buf)) < 0)
        return o;
    char *save_line = NULL;
    for (char *line = strtok_r(buf, "\n", &save_line); line; line = strtok_r(NULL, "\n", &save_line)) {
        for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
            size_t n = strlen(want[i].label);
            if (strncmp(line, want[i].label, n) != 0)
                continue;
            json_object *pair = json_object_new_array();
            char *p = line + n;
            for (int k = 0; k < 2; k++) {
                while (*p == ' ')
                    p++;
                if (strncmp(p, "unlimited", 9) == 0) {
                    json_object_array_add(pair, NULL);
                    p += 9;
                } else {
                    char *end;
                    json_object_array_add(pair, json_object_new_int64(strtoll(p, &end, 10)));
                    p = end;
                }
            }
            json_object_object_add(o, want[i].key, pair);
        }
    }
    return o;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static json_object *dev_listing(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/root/dev", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return NULL;
    struct strv names = {0};
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            strv_push(&names, de->d_name);
    closedir(d);
    if (names.n)
        qsort(names.v, names.n, sizeof(char *), cmp_str);
    json_object *a = json_object_new_array();
    for (size_t i = 0; i < names.n; i++)
        json_object_array_add(a, json_object_new_string(names.v[i]));
    strv_free(&names);
    return a;
}

/* A QEMU in the qemu/ leaf of a VM's cgroup has only its own limits there (memory,
 * pids); cpu, io and the VM's CPU time are on the VM's directory above it. */
static void read_in_force(int version, const char *dir, unsigned ctls, json_object *limits)
{
    cg_dir_read(version, dir, ctls, limits);
    const char *slash = strrchr(dir, '/');
    if (!slash || strcmp(slash + 1, SANDBOX_CGROUP_QEMU) != 0)
        return;
    char parent[PATH_MAX];
    snprintf(parent, sizeof(parent), "%.*s", (int)(slash - dir), dir);
    cg_dir_read(version, parent, ctls & ~((1u << CG_MEMORY) | (1u << CG_PIDS)), limits);
}

static json_object *cgroups(pid_t pid, const char *root)
{
    char cpath[PATH_MAX], dir[PATH_MAX];
    /* ENOENT: no v2 line (a v1-only host); anything else: the process is gone */
    int unified = proc_cgroup_path(pid, NULL, cpath, sizeof(cpath));
    if (unified < 0 && unified != -ENOENT)
        return NULL;
    int version = cg_detect_version(root);
    json_object *o = json_object_new_object();
    json_object *paths = json_object_new_object();
    json_object *limits = json_object_new_object();
    json_object_object_add(o, "version", json_object_new_int(version));
    if (version == 2 && unified == 0) {
        snprintf(dir, sizeof(dir), "%s%s", root, cpath);
        json_object_object_add(paths, "unified", json_object_new_string(cpath));
        read_in_force(2, dir, (1u << CG_NCTL) - 1, limits);
    }
    for (int c = 0; version == 1 && c < CG_NCTL; c++) {
        char hier[PATH_MAX];
        if (proc_cgroup_path(pid, cg_v1_names[c], cpath, sizeof(cpath)) < 0 ||
            cg_v1_hierarchy(root, c, hier, sizeof(hier)) < 0)
            continue;
        snprintf(dir, sizeof(dir), "%s%s", hier, cpath);
        json_object_object_add(paths, cg_v1_names[c], json_object_new_string(cpath));
        read_in_force(1, dir, 1u << c, limits);
    }
    json_object_object_add(o, "paths", paths);
    json_object_object_add(o, "limits", limits);
    return o;
}

int sandbox_inspect(pid_t pid, const char *cgroup_root, json_object **out, struct qv_err *e)
{
    char path[64], status[8192];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    int r = read_file_small(path, status, sizeof(status));
    if (r < 0)
        return qv_failerr(e, r, "pid %d", (int)pid);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "pid", json_object_new_int(pid));
    add_status(o, status);
    json_object_object_add(o, "namespaces", namespaces(pid));
    json_object_object_add(o, "rlimits", rlimits(pid));
    json_object_object_add(o, "dev", dev_listing(pid));
    json_object_object_add(o, "cgroup", cgroups(pid, cgroup_root ? cgroup_root : "/sys/fs/cgroup"));
    *out = o;
    return 0;
}
