/* The lifecycle verbs: run, start, stop, kill, reboot, reset, pause, resume,
 * status, qmp, hmp, events, logs. (console is in console.c.) */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "launcher/cli/cli.h"

int cmd_run(struct cli *c)
{
    const char *ready = cli_opt(c, "ready-fd");
    struct sup_opts o = {.ready_fd = ready ? atoi(ready) : -1, .attach_only = cli_flag(c, "attach-only"),
                         .paused = cli_flag(c, "paused"), .load_snapshot = cli_opt(c, "load-snapshot"),
                         .boot_fd = cli_opt(c, "boot-fd") ? atoi(cli_opt(c, "boot-fd")) : -1,
                         .restore_file = cli_opt(c, "restore"), .restore_remove = cli_flag(c, "restore-remove"),
                         .incoming_listen = cli_opt(c, "incoming"), .incoming_tls = cli_opt(c, "incoming-tls"),
                         .incoming_copy_storage = cli_flag(c, "incoming-copy-storage"),
                         .incoming_postcopy = cli_flag(c, "incoming-postcopy"),
                         .incoming_token = cli_opt(c, "incoming-token"),
                         .incoming_timeout_ms = cli_opt(c, "incoming-timeout") ? atoi(cli_opt(c, "incoming-timeout")) : 0};
    o.echo_fd = c->quiet || o.ready_fd >= 0 ? -1 : 2;
    /* a plain run (the VM's unit, autostart) resumes a managed save as start does */
    char saved[PATH_MAX];
    if (!o.restore_file && !o.incoming_listen && !o.attach_only && !o.load_snapshot && o.boot_fd < 0 &&
        managedsave_exists(&c->paths, c->pos[0]) && managedsave_path(&c->paths, c->pos[0], saved, sizeof(saved)) == 0) {
        o.restore_file = saved;
        o.restore_remove = true;
    }
    int r = cli_opt_seconds_ms(c, "stop-timeout", 60000, &o.stop_timeout_ms);
    if (r < 0)
        return r;
    _cleanup_vm_def_ struct vm_def d = {0};
    r = vm_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0) {
        if (o.ready_fd >= 0)
            dprintf(o.ready_fd, "error %d %s\n", r, c->err.msg);
        return r;
    }
    r = supervisor_run(&c->paths, &d, &o, &c->err);
    return r;
}

int cmd_start(struct cli *c)
{
    const char *name = c->pos[0];
    int timeout_ms;
    int r = cli_opt_seconds_ms(c, "wait-timeout", 60000, &timeout_ms);
    if (r < 0)
        return r;
    _cleanup_vm_def_ struct vm_def d = {0};
    if ((r = vm_load(&c->paths, name, &d, &c->err)) < 0)
        return r;
    pid_t holder;
    /* a supervisor still cleaning up after a stop or kill is waited for (bounded) */
    if (vm_supervised(&c->paths, name, &holder))
        return qv_fail(&c->err, -EBUSY, "%s is already running (pid %d)", name, (int)holder);

    bool paused = cli_flag(c, "paused");
    /* a managed save is resumed (and removed once it is in) instead of a boot: `run`
     * does that by itself */
    bool resume = managedsave_exists(&c->paths, name);
    const char *args[] = {"run", name, paused ? "--paused" : NULL, NULL};
    if ((r = supervisor_spawn(&c->paths, args, timeout_ms, name, &c->err)) < 0) {
        if (resume && r != -ETIMEDOUT)
            qv_prefix(&c->err, "%s: resuming from its managed save (qvisor managedsave-remove %s boots it afresh "
                      "next time): ", name, name);
        return r;
    }
    if (!c->quiet)
        printf("%s started%s%s\n", name, resume ? " from its managed save" : "",
               paused ? " (paused: qvisor resume lets it run)" : "");
    return 0;
}

/* stop and kill reach QEMU through its supervisor. With none (it died), a QEMU may
 * still run: a supervisor is started that only takes it over (it never starts one),
 * and the request goes to it. (-EBUSY from ctl_call can only be ctl_connect's "not
 * running": the supervisor answers stop and kill with success or a timeout.) */
bool cli_qemu_lives(struct cli *c, const char *name)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    if (vm_load(&c->paths, name, &d, NULL) < 0)
        return false;
    _cleanup_runstate_ struct vm_runstate rs = {0};
    struct qemu_found f;
    bool have_rs = runstate_read(&c->paths, name, &rs, NULL) == 0;
    return vm_find_qemu(&c->paths, name, d.uuid, have_rs ? &rs : NULL, &f) > 0;
}

/* 0 done, 1 not running (the wanted state), or -errno. The supervisor answers stop
 * and kill once QEMU is reaped and recorded stopped; it releases the cgroup, taps and
 * run files after that, holding the lock, which whatever comes next waits for. */
static int call_supervisor(struct cli *c, const char *name, json_object *req, int timeout_ms)
{
    int r = ctl_call(&c->paths, name, json_object_get(req), timeout_ms, NULL, &c->err);
    if (r == -EBUSY) {
        c->err = (struct qv_err){0};
        const char *args[] = {"run", "--attach-only", name, NULL};
        r = cli_qemu_lives(c, name) ? supervisor_spawn(&c->paths, args, 30000, name, &c->err) : -ESRCH;
        if (r == 0)
            r = ctl_call(&c->paths, name, json_object_get(req), timeout_ms, NULL, &c->err);
        if (r == -ESRCH) {
            c->err = (struct qv_err){0};
            if (!c->quiet)
                printf("%s is not running\n", name);
            r = 1;
        }
    }
    json_object_put(req);
    return r;
}

int cmd_stop(struct cli *c)
{
    const char *name = c->pos[0];
    int timeout_ms;
    int r = cli_opt_seconds_ms(c, "timeout", 60000, &timeout_ms);
    if (r < 0)
        return r;
    const char *mode = cli_opt(c, "mode");
    if (mode && strcmp(mode, "acpi") != 0 && strcmp(mode, "agent") != 0)
        return qv_fail(&c->err, -EINVAL, "stop: --mode %s: not acpi or agent", mode);
    json_object *req = ctl_request("stop");
    json_object_object_add(req, "timeout_ms", json_object_new_int(timeout_ms));
    if (mode)
        json_object_object_add(req, "mode", json_object_new_string(mode));
    json_object_object_add(req, "force", json_object_new_boolean(cli_flag(c, "force")));
    /* beyond the graceful part: quit, SIGTERM and SIGKILL each get a few seconds */
    r = call_supervisor(c, name, req, timeout_ms + 15000);
    if (r != 0)
        return r > 0 ? 0 : r;
    if (!c->quiet)
        printf("%s stopped\n", name);
    return 0;
}

int cmd_kill(struct cli *c)
{
    const char *name = c->pos[0];
    int r = call_supervisor(c, name, ctl_request("kill"), 10000);
    if (r != 0)
        return r > 0 ? 0 : r;
    if (!c->quiet)
        printf("%s killed\n", name);
    return 0;
}

/* reboot, reset, pause, resume: one request, "NAME <done>" on success */
int cmd_simple(struct cli *c)
{
    static const struct { const char *cmd, *done; } verbs[] = {
        {"reboot", "rebooting"}, {"reset", "reset"}, {"pause", "paused"}, {"resume", "resumed"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(verbs); i++) {
        if (strcmp(c->cmd->name, verbs[i].cmd) != 0)
            continue;
        json_object *req = ctl_request(verbs[i].cmd);
        const char *mode = cli_opt(c, "mode");
        if (mode && strcmp(mode, "agent") != 0) {
            json_object_put(req);
            return qv_fail(&c->err, -EINVAL, "%s: --mode %s: only agent", c->cmd->name, mode);
        }
        if (mode)
            json_object_object_add(req, "mode", json_object_new_string(mode));
        int r = ctl_call(&c->paths, c->pos[0], req, 15000, NULL, &c->err);
        if (r == 0 && !c->quiet)
            printf("%s %s\n", c->pos[0], verbs[i].done);
        return r;
    }
    return qv_fail(&c->err, -EINVAL, "%s: not a lifecycle verb", c->cmd->name);
}

static void print_status_text(json_object *st)
{
    static const char *const keys[][2] = {
        {"name", "name"}, {"state", "state"}, {"pid", "pid"}, {"uptime_s", "uptime (s)"}, {"vcpus", "vcpus"},
        {"memory", "memory"}, {"accel", "accel"}, {"qemu_version", "qemu"}, {"last_exit", "last exit"},
        {"supervisor_pid", "supervisor"}, {"monitor", "monitor"}, {"agent", "agent"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        json_object *v;
        if (!json_object_object_get_ex(st, keys[i][0], &v))
            continue;
        const char *s = json_object_get_string(v);
        json_object *why;
        if (strcmp(keys[i][0], "state") == 0 && json_object_object_get_ex(st, "state_reason", &why))
            printf("%-12s %s (%s)\n", keys[i][1], s, json_object_get_string(why));
        else if (s && *s && strcmp(s, "0") != 0)
            printf("%-12s %s\n", keys[i][1], s);
    }
    json_object *c, *v, *sub;
    if (json_object_object_get_ex(st, "jobs", &v))
        cli_print_jobs(v);
    /* what confines QEMU, as read back from /proc by the supervisor */
    if (!json_object_object_get_ex(st, "confinement", &c) || !json_object_is_type(c, json_type_object))
        return;
    int uid = json_object_object_get_ex(c, "uid", &v) ? json_object_get_int(json_object_array_get_idx(v, 1)) : -1;
    bool nocaps = json_object_object_get_ex(c, "capabilities", &sub) && json_object_object_get_ex(sub, "none", &v) &&
                  json_object_get_boolean(v);
    bool nnp = json_object_object_get_ex(c, "no_new_privs", &v) && json_object_get_boolean(v);
    int filters = json_object_object_get_ex(c, "seccomp", &sub) && json_object_object_get_ex(sub, "filters", &v)
                      ? json_object_get_int(v) : 0;
    char ns[128] = "";
    if (json_object_object_get_ex(c, "namespaces", &v))
        for (size_t i = 0; i < json_object_array_length(v); i++)
            snprintf(ns + strlen(ns), sizeof(ns) - strlen(ns), "%s%s", i ? "," : "",
                     json_object_get_string(json_object_array_get_idx(v, i)));
    printf("%-12s uid %d, %s, %s, seccomp %d filter%s, own namespaces: %s\n", "confinement", uid,
           nocaps ? "no capabilities" : "CAPABILITIES LEFT", nnp ? "no_new_privs" : "privileges can be gained",
           filters, filters == 1 ? "" : "s", ns[0] ? ns : "none");
}

/* Status without a supervisor: what state.json and /proc say. */
static json_object *observed_status(struct cli *c, const struct vm_def *d)
{
    _cleanup_runstate_ struct vm_runstate rs = {0};
    bool supervised;
    vm_observe(&c->paths, d->name, &rs, &supervised);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(d->name));
    json_object_object_add(o, "uuid", json_object_new_string(d->uuid));
    json_object_object_add(o, "state", json_object_new_string(vm_state_names[rs.state]));
    if (rs.state_reason[0])
        json_object_object_add(o, "state_reason", json_object_new_string(rs.state_reason));
    if (rs.qemu_pid && rs.state != VM_SHUTOFF && rs.state != VM_CRASHED) {
        json_object_object_add(o, "pid", json_object_new_int(rs.qemu_pid));
        json_object_object_add(o, "supervisor_pid", json_object_new_int(0));
        json_object_object_add(o, "note", json_object_new_string("no supervisor: `qvisor run` or `start` reattaches"));
    }
    json_object_object_add(o, "vcpus", json_object_new_int(d->cpu.count));
    char mem[32];
    format_size(d->memory.bytes, mem, sizeof(mem));
    json_object_object_add(o, "memory", json_object_new_string(mem));
    json_object_object_add(o, "last_exit", json_object_new_string(rs.last_exit));
    return o;
}

int cmd_status(struct cli *c)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    json_object *reply = NULL, *st = NULL;
    struct qv_err e = {0};
    if (ctl_call(&c->paths, d.name, ctl_request("status"), 5000, &reply, &e) == 0 &&
        json_object_object_get_ex(reply, "status", &st))
        st = json_object_get(st);
    else
        st = observed_status(c, &d);
    if (reply)
        json_object_put(reply);
    if (c->json)
        cli_print_json(st);
    else
        print_status_text(st);
    json_object_put(st);
    return 0;
}

int cmd_qmp(struct cli *c)
{
    json_object *cmd = NULL;
    int r = json_parse_str("QMP command", c->pos[1], &cmd, &c->err);
    if (r < 0)
        return r;
    json_object *ex;
    if (!json_object_is_type(cmd, json_type_object) || !json_object_object_get_ex(cmd, "execute", &ex)) {
        json_object_put(cmd);
        return qv_fail(&c->err, -EINVAL, "qmp: expected {\"execute\": \"...\", \"arguments\": {...}}");
    }
    json_object_object_add(cmd, "cmd", json_object_new_string("qmp"));
    json_object *reply = NULL;
    r = ctl_call(&c->paths, c->pos[0], cmd, QMP_CLI_TIMEOUT_MS, &reply, &c->err);
    if (r < 0)
        return r;
    json_object *ret;
    if (json_object_object_get_ex(reply, "return", &ret))
        cli_print_json(ret);
    json_object_put(reply);
    return 0;
}

/* HMP reports failure only as text in a successful human-monitor-command. These
 * are the forms QEMU 7.2 gives the monitor's own errors: hmp_handle_error's
 * "Error: ", the parser's "unknown command: " and its "Try \"help CMD\"" hint.
 * Free-form messages of single commands ("Cannot access memory") look like output. */
static bool hmp_output_failed(const char *text)
{
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (str_startswith(l, "Error: ") || str_startswith(l, "unknown command: ") || str_startswith(l, "Try \"help "))
            return true;
    return false;
}

int cmd_hmp(struct cli *c)
{
    json_object *req = ctl_request("hmp"), *reply = NULL, *out;
    json_object_object_add(req, "command", json_object_new_string(c->pos[1]));
    int r = ctl_call(&c->paths, c->pos[0], req, QMP_CLI_TIMEOUT_MS, &reply, &c->err);
    if (r < 0)
        return r;
    const char *text = json_object_object_get_ex(reply, "output", &out) ? json_object_get_string(out) : "";
    if (hmp_output_failed(text)) {
        /* the message goes to stderr with the exit status 1, like QMP's errors */
        _cleanup_free_ char *msg = qv_xstrdup(text);
        size_t n = 0;
        for (const char *p = text; *p; p++)
            if (*p != '\r')
                msg[n++] = *p;
        while (n && msg[n - 1] == '\n')
            n--;
        msg[n] = '\0';
        r = qv_fail(&c->err, -EIO, "%s: hmp '%s': %s", c->pos[0], c->pos[1], msg);
    } else {
        fputs(text, stdout);
    }
    json_object_put(reply);
    return r;
}

int cmd_events(struct cli *c)
{
    _cleanup_close_ int fd = -1;
    int r = ctl_connect(&c->paths, c->pos[0], &fd, &c->err);
    if (r < 0)
        return r;
    json_object *req = ctl_request("events");
    r = ctl_send(fd, req, &c->err);
    json_object_put(req);
    if (r < 0)
        return r;
    struct buf in = {0};
    bool first = true;
    for (;;) {
        char *line = NULL;
        struct qv_err e = {0};
        if (ctl_read_line(fd, &in, -1, &line, &e) < 0)
            break;      /* the supervisor is gone: so is the VM */
        if (first) {
            json_object *reply = NULL;
            r = ctl_parse_reply(line, &reply, &c->err);
            free(line);
            if (r < 0)
                break;
            json_object_put(reply);
            first = false;
            continue;
        }
        printf("%s\n", line);
        fflush(stdout);
        free(line);
    }
    buf_free(&in);
    return r;
}

int cmd_logs(struct cli *c)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    char path[PATH_MAX];
    qv_path(&c->paths, path, sizeof(path), QV_LOG "/%s.log", d.name);
    char file[NAME_MAX + 1];
    snprintf(file, sizeof(file), "%s.log", d.name);
    if (d.transient && access(path, F_OK) < 0)
        vm_boot_dir(&c->paths, d.name, file, path, sizeof(path));  /* a boot VM's log is in its private directory */
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT && !cli_flag(c, "follow"))
            return 0;   /* never started: nothing logged yet */
        if (errno != ENOENT)
            return qv_failerr(&c->err, -errno, "%s", path);
    }
    const char *lines = cli_opt(c, "lines");
    if (fd >= 0 && lines) {
        /* start after the N-th newline from the end (the file's last one does not
         * count: it ends the last line); fewer lines than N: from the start */
        long want = atol(lines);
        off_t end = lseek(fd, 0, SEEK_END), pos = end;
        char ch;
        long seen = 0;
        while (pos > 0 && seen < want) {
            pos--;
            if (pread(fd, &ch, 1, pos) == 1 && ch == '\n' && pos != end - 1)
                seen++;
        }
        lseek(fd, seen < want ? 0 : want ? pos + 1 : end, SEEK_SET);
    }
    bool follow = cli_flag(c, "follow");
    char chunk[65536];
    for (;;) {
        if (fd < 0) {
            fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                usleep(200000);
                continue;
            }
        }
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n > 0) {
            if (fwrite(chunk, 1, (size_t)n, stdout) != (size_t)n)
                return -EIO;
            continue;
        }
        if (!follow)
            break;
        fflush(stdout);
        usleep(200000);
    }
    return 0;
}
