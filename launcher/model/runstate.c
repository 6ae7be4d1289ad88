/* A VM's run directory: the supervisor lock, the QEMU pid file and state.json.
 * These are what lets `list`, `status` and a new supervisor tell what is running
 * without asking anyone, and what lets cleanup after a crash be exact. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>

#include "launcher/model/model.h"
#include "sandbox/sandbox.h"

const char *const vm_state_names[] = {"shut off", "starting", "running", "paused", "stopping", "crashed", NULL};

int vm_run_path(const struct qv_paths *p, const char *name, const char *file, char *out, size_t outlen)
{
    if (file)
        return qv_path(p, out, outlen, QV_RUN "/vms/%s/%s", name, file);
    return qv_path(p, out, outlen, QV_RUN "/vms/%s", name);
}

int vm_boot_dir(const struct qv_paths *p, const char *name, const char *file, char *out, size_t outlen)
{
    if (file)
        return qv_path(p, out, outlen, QV_LIB "/boot/%s/%s", name, file);
    return qv_path(p, out, outlen, QV_LIB "/boot/%s", name);
}

int vm_uid_leases_forget(const struct qv_paths *p, const char *name)
{
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_RUN "/uids");
    struct qv_err e = {0};
    int removed, in_use;
    sandbox_uid_forget(dir, name, &removed, &in_use, &e);     /* best effort: a file left is free anyway */
    return in_use;
}

void runstate_free(struct vm_runstate *s)
{
    if (s->resources)
        json_object_put(s->resources);
    memset(s, 0, sizeof(*s));
}

static int state_index(const char *s)
{
    for (int i = 0; vm_state_names[i]; i++)
        if (strcmp(vm_state_names[i], s) == 0)
            return i;
    return VM_SHUTOFF;
}

static void copy_str(json_object *o, const char *key, char *out, size_t outlen)
{
    json_object *v;
    if (json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string))
        snprintf(out, outlen, "%s", json_object_get_string(v));
}

static int64_t get_int(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

int runstate_read(const struct qv_paths *p, const char *name, struct vm_runstate *s, struct qv_err *e)
{
    memset(s, 0, sizeof(*s));
    char path[PATH_MAX];
    vm_run_path(p, name, "state.json", path, sizeof(path));
    if (!path_exists(path))
        return -ENOENT;
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r < 0)
        return r;
    char state[32] = "";
    copy_str(o, "state", state, sizeof(state));
    s->state = state_index(state);
    s->supervisor_pid = (pid_t)get_int(o, "supervisor_pid");
    s->qemu_pid = (pid_t)get_int(o, "qemu_pid");
    s->qemu_start = (unsigned long long)get_int(o, "qemu_start_time");
    s->started_at_ms = (uint64_t)get_int(o, "started_at_ms");
    copy_str(o, "uuid", s->uuid, sizeof(s->uuid));
    copy_str(o, "accel", s->accel, sizeof(s->accel));
    copy_str(o, "qemu_version", s->qemu_version, sizeof(s->qemu_version));
    copy_str(o, "last_exit", s->last_exit, sizeof(s->last_exit));
    copy_str(o, "state_reason", s->state_reason, sizeof(s->state_reason));
    json_object *v;
    s->exiting = json_object_object_get_ex(o, "exiting", &v) && json_object_get_boolean(v);
    json_object *res;
    if (json_object_object_get_ex(o, "resources", &res))
        s->resources = json_object_get(res);
    return 0;
}

json_object *runstate_to_json(const struct vm_runstate *s)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "state", json_object_new_string(vm_state_names[s->state]));
    json_object_object_add(o, "supervisor_pid", json_object_new_int64(s->supervisor_pid));
    json_object_object_add(o, "qemu_pid", json_object_new_int64(s->qemu_pid));
    json_object_object_add(o, "qemu_start_time", json_object_new_int64((int64_t)s->qemu_start));
    json_object_object_add(o, "started_at_ms", json_object_new_int64((int64_t)s->started_at_ms));
    json_object_object_add(o, "uuid", json_object_new_string(s->uuid));
    json_object_object_add(o, "accel", json_object_new_string(s->accel));
    json_object_object_add(o, "qemu_version", json_object_new_string(s->qemu_version));
    json_object_object_add(o, "last_exit", json_object_new_string(s->last_exit));
    if (s->state_reason[0])
        json_object_object_add(o, "state_reason", json_object_new_string(s->state_reason));
    if (s->exiting)
        json_object_object_add(o, "exiting", json_object_new_boolean(true));
    if (s->resources)
        json_object_object_add(o, "resources", json_object_get(s->resources));
    return o;
}

int runstate_write(const struct qv_paths *p, const char *name, const struct vm_runstate *s, struct qv_err *e)
{
    char path[PATH_MAX];
    vm_run_path(p, name, "state.json", path, sizeof(path));
    _cleanup_json_ json_object *o = runstate_to_json(s);
    return json_write_file_atomic(path, o, 0644, e);
}

/* A process we recorded: same pid, same start time. Its command line names our uuid
 * once it has exec'd QEMU; before that (the child waits until it is recorded) it is
 * still a copy of the supervisor, which only a "starting" record can be. */
bool qemu_alive(const struct vm_runstate *s)
{
    if (s->qemu_pid <= 1 || !s->uuid[0])
        return false;
    unsigned long long start;
    if (proc_start_time(s->qemu_pid, &start) < 0 || start != s->qemu_start)
        return false;
    return proc_cmdline_has_pair(s->qemu_pid, "-uuid", s->uuid) || s->state == VM_STARTING;
}

#define EXEC_WAIT_MS 15000      /* longer than sandbox_spawn's own wait for execve */

/* The recorded process, once it has become QEMU (a recorded child still before its
 * execve is waited for; it either execs or exits, never lingers). */
static bool recorded_qemu(const struct vm_runstate *rs, const char *uuid, struct qemu_found *out)
{
    if (!rs || rs->qemu_pid <= 1)
        return false;
    uint64_t end = monotonic_ms() + EXEC_WAIT_MS;
    for (;;) {
        unsigned long long start;
        if (proc_start_time(rs->qemu_pid, &start) < 0 || start != rs->qemu_start)
            return false;
        if (proc_cmdline_has_pair(rs->qemu_pid, "-uuid", uuid)) {
            *out = (struct qemu_found){rs->qemu_pid, start, "state file"};
            return true;
        }
        if (monotonic_ms() >= end)
            return false;
        usleep(5000);
    }
}

static bool found_pid(pid_t pid, const char *uuid, const char *route, struct qemu_found *out)
{
    unsigned long long start;
    if (pid <= 1 || !proc_cmdline_has_pair(pid, "-uuid", uuid) || proc_start_time(pid, &start) < 0)
        return false;
    *out = (struct qemu_found){pid, start, route};
    return true;
}

static bool pidfile_qemu(const struct qv_paths *p, const char *name, const char *uuid, struct qemu_found *out)
{
    char path[PATH_MAX];
    _cleanup_free_ char *txt = NULL;
    vm_run_path(p, name, "pid", path, sizeof(path));
    if (read_file(path, 64, &txt, NULL) < 0)
        return false;
    return found_pid((pid_t)atoi(txt), uuid, "pid file", out);
}

static bool cgroup_qemu(const struct vm_runstate *rs, const char *uuid, struct qemu_found *out)
{
    json_object *cg, *dirs;
    if (!rs || !rs->resources || !json_object_object_get_ex(rs->resources, "cgroup", &cg) ||
        !json_object_object_get_ex(cg, "dirs", &dirs) || !json_object_is_type(dirs, json_type_array))
        return false;
    for (size_t i = 0; i < json_object_array_length(dirs); i++) {
        json_object *path;
        if (!json_object_object_get_ex(json_object_array_get_idx(dirs, i), "path", &path))
            continue;
        /* QEMU's leaf, or the VM's directory itself as older records had it */
        static const char *const where[] = {"/" SANDBOX_CGROUP_QEMU "/cgroup.procs", "/cgroup.procs"};
        for (size_t w = 0; w < ARRAY_SIZE(where); w++) {
            char procs[PATH_MAX];
            snprintf(procs, sizeof(procs), "%s%s", json_object_get_string(path), where[w]);
            _cleanup_free_ char *txt = NULL;
            if (read_file(procs, 1u << 16, &txt, NULL) < 0)
                continue;
            for (char *save = NULL, *tok = strtok_r(txt, "\n", &save); tok; tok = strtok_r(NULL, "\n", &save))
                if (found_pid((pid_t)atoi(tok), uuid, "cgroup", out))
                    return true;
        }
    }
    return false;
}

int vm_find_qemu(const struct qv_paths *p, const char *name, const char *uuid, const struct vm_runstate *rs,
                 struct qemu_found *out)
{
    memset(out, 0, sizeof(*out));
    if (!uuid || !uuid[0])
        return 0;
    if (recorded_qemu(rs, uuid, out) || pidfile_qemu(p, name, uuid, out) || cgroup_qemu(rs, uuid, out))
        return 1;
    pid_t pid;
    int r = proc_find_by_pair("-uuid", uuid, getpid(), &pid);
    if (r <= 0)
        return r;
    return found_pid(pid, uuid, "process table", out) ? 1 : 0;
}

/* The pid the holder of a lock wrote into it. A holder that has just taken the lock
 * writes it a moment later (until then the file is empty, or names the previous,
 * dead holder): wait for a live pid, briefly, rather than report "pid 0". */
static pid_t lock_holder(int fd)
{
    uint64_t end = monotonic_ms() + 500;
    for (;;) {
        char buf[32] = "";
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        pid_t pid = n > 0 ? (pid_t)atoi(buf) : 0;
        if ((pid > 0 && kill(pid, 0) == 0) || monotonic_ms() >= end)
            return pid;
        usleep(2000);
    }
}

int runlock_take(const char *dir, const char *what, int *fd_out, pid_t *holder, struct qv_err *e)
{
    char path[PATH_MAX];
    int r = mkdir_p(dir, 0755);
    if (r < 0)
        return qv_failerr(e, r, "%s", dir);
    snprintf(path, sizeof(path), "%s/lock", dir);
    _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return qv_failerr(e, -errno, "%s", path);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK)
            return qv_failerr(e, -errno, "%s: lock", path);
        *holder = lock_holder(fd);
        return qv_fail(e, -EBUSY, "%s is already running (pid %d)", what, (int)*holder);
    }
    /* the holder's pid is informational; the flock is what counts, so an empty or
     * stale lock file left by a power loss never blocks a start */
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, (size_t)n, 0) != n)
        (void)0;    /* best effort, see above */
    *fd_out = qv_steal_fd(&fd);
    return 0;
}

bool runlock_held(const char *dir, pid_t *holder)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/lock", dir);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    if (flock(fd, LOCK_SH | LOCK_NB) == 0)
        return false;
    if (holder)
        *holder = lock_holder(fd);
    return true;
}

/* Whether the lock's holder `pid` has recorded that it is only cleaning up. */
static bool holder_exiting(const struct qv_paths *p, const char *name, pid_t pid)
{
    struct vm_runstate rs;
    if (pid <= 0 || runstate_read(p, name, &rs, NULL) < 0)
        return false;
    bool exiting = rs.exiting && rs.supervisor_pid == pid;
    runstate_free(&rs);
    return exiting;
}

/* Held by a supervisor that is not on its way out (or for longer than VM_EXIT_WAIT_MS). */
static bool held_waiting_exit(const struct qv_paths *p, const char *name, const char *dir, pid_t *holder)
{
    uint64_t end = 0;
    pid_t pid = 0;
    while (runlock_held(dir, &pid)) {
        if (!holder_exiting(p, name, pid)) {
            if (holder)
                *holder = pid;
            return true;
        }
        uint64_t now = monotonic_ms();
        if (!end)
            end = now + VM_EXIT_WAIT_MS;
        if (now >= end) {
            if (holder)
                *holder = pid;
            return true;
        }
        usleep(1000);
    }
    return false;
}

int vm_lock(const struct qv_paths *p, const char *name, int *fd_out, pid_t *holder, struct qv_err *e)
{
    char dir[PATH_MAX];
    vm_run_path(p, name, NULL, dir, sizeof(dir));
    held_waiting_exit(p, name, dir, NULL);
    return runlock_take(dir, name, fd_out, holder, e);
}

bool vm_supervised(const struct qv_paths *p, const char *name, pid_t *holder)
{
    char dir[PATH_MAX];
    vm_run_path(p, name, NULL, dir, sizeof(dir));
    return held_waiting_exit(p, name, dir, holder);
}

/* The VM's uuid: from its run state, or from its definition when the state file lost it. */
static const char *vm_uuid_of(const struct qv_paths *p, const char *name, struct vm_runstate *s)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    if (!s->uuid[0] && vm_load(p, name, &d, NULL) == 0)
        snprintf(s->uuid, sizeof(s->uuid), "%s", d.uuid);
    return s->uuid;
}

int vm_observe(const struct qv_paths *p, const char *name, struct vm_runstate *s, bool *supervised)
{
    pid_t holder = 0;
    *supervised = vm_supervised(p, name, &holder);
    int r = runstate_read(p, name, s, NULL);
    if (r < 0) {
        memset(s, 0, sizeof(*s));
        s->state = *supervised ? VM_STARTING : VM_SHUTOFF;
        s->supervisor_pid = *supervised ? holder : 0;
        return 0;
    }
    if (*supervised)
        return 0;
    /* No supervisor: the file says what was last known; QEMU may have outlived it. */
    if (s->state != VM_SHUTOFF && s->state != VM_CRASHED) {
        struct qemu_found f;
        if (qemu_alive(s)) {
            s->supervisor_pid = 0;
        } else if (pidfile_qemu(p, name, vm_uuid_of(p, name, s), &f)) {
            /* the state file fell behind (a full /run); the pid file did not */
            s->supervisor_pid = 0;
            s->qemu_pid = f.pid;
            s->qemu_start = f.start;
        } else {
            s->state = VM_CRASHED;
            if (!s->last_exit[0])
                snprintf(s->last_exit, sizeof(s->last_exit), "QEMU and its supervisor are gone");
        }
    }
    return 0;
}

int net_run_dir(const struct qv_paths *p, const char *name, char *out, size_t outlen)
{
    return qv_path(p, out, outlen, QV_RUN "/networks/%s", name);
}

bool net_running(const struct qv_paths *p, const char *name, pid_t *holder)
{
    char dir[PATH_MAX];
    net_run_dir(p, name, dir, sizeof(dir));
    return runlock_held(dir, holder);
}
