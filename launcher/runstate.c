/* A VM's run directory: the supervisor lock, the QEMU pid file and state.json.
 * These are what lets `list`, `status` and a new supervisor tell what is running
 * without asking anyone, and what lets cleanup after a crash be exact. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/file.h>

#include "launcher/launcher.h"

const char *const vm_state_names[] = {"shut off", "starting", "running", "paused", "stopping", "crashed", NULL};

int vm_run_path(const struct qv_paths *p, const char *name, const char *file, char *out, size_t outlen)
{
    if (file)
        return qv_path(p, out, outlen, QV_RUN "/vms/%s/%s", name, file);
    return qv_path(p, out, outlen, QV_RUN "/vms/%s", name);
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

bool qemu_alive(const struct vm_runstate *s)
{
    if (s->qemu_pid <= 1 || !s->uuid[0])
        return false;
    unsigned long long start;
    if (proc_start_time(s->qemu_pid, &start) < 0 || start != s->qemu_start)
        return false;
    /* the uuid is in QEMU's -uuid argument: a reused pid cannot carry it */
    return proc_cmdline_contains(s->qemu_pid, s->uuid);
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
        char buf[32] = "";
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        *holder = n > 0 ? atoi(buf) : 0;
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
    if (holder) {
        char buf[32] = "";
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        *holder = n > 0 ? atoi(buf) : 0;
    }
    return true;
}

int vm_lock(const struct qv_paths *p, const char *name, int *fd_out, pid_t *holder, struct qv_err *e)
{
    char dir[PATH_MAX];
    vm_run_path(p, name, NULL, dir, sizeof(dir));
    return runlock_take(dir, name, fd_out, holder, e);
}

bool vm_supervised(const struct qv_paths *p, const char *name, pid_t *holder)
{
    char dir[PATH_MAX];
    vm_run_path(p, name, NULL, dir, sizeof(dir));
    return runlock_held(dir, holder);
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
        if (qemu_alive(s)) {
            s->supervisor_pid = 0;
        } else {
            s->state = VM_CRASHED;
            if (!s->last_exit[0])
                snprintf(s->last_exit, sizeof(s->last_exit), "QEMU and its supervisor are gone");
        }
    }
    return 0;
}
