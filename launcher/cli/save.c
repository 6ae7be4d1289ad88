/* save, restore, managedsave, managedsave-remove: the guest's RAM and device state into
 * a file and back (QEMU's migration stream, written and read through fds the supervisor
 * opened; the file records the definition, model/savefile.c). save shows progress on a
 * terminal; Ctrl-C cancels it and the guest runs on. */
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/cli.h"

#define SAVE_POLL_MS 500

static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int64_t int_of(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static const char *str_of(json_object *o, const char *key, const char *dflt)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : dflt;
}

/* The migration block of `status` (NULL when none, or no answer). */
static json_object *migration_info(struct cli *c, const char *vm)
{
    json_object *reply = NULL, *st, *mig = NULL;
    struct qv_err e = {0};
    if (ctl_call(&c->paths, vm, ctl_request("status"), 5000, &reply, &e) == 0 &&
        json_object_object_get_ex(reply, "status", &st) && json_object_object_get_ex(st, "migration", &mig))
        mig = json_object_get(mig);
    if (reply)
        json_object_put(reply);
    return mig;
}

static void draw(const char *vm, json_object *mig)
{
    int64_t done = int_of(mig, "transferred"), total = int_of(mig, "total"), left = int_of(mig, "remaining");
    int pct = total > 0 ? (int)((total - left) * 100 / total) : 0;
    if (pct < 0 || pct > 100)
        pct = 0;
    json_object *disk;
    if (json_object_object_get_ex(mig, "disk_total", &disk) && !json_object_get_boolean(json_object_object_get(mig, "disks_synced")))
        fprintf(stderr, "\rmigrate %s: copying disks, %lld of %lld MiB sent, %lld MiB left   ", vm,
                (long long)(int_of(mig, "disk_transferred") >> 20), (long long)(int_of(mig, "disk_total") >> 20),
                (long long)(int_of(mig, "disk_remaining") >> 20));
    else if (strcmp(str_of(mig, "status", ""), "postcopy-active") == 0)
        fprintf(stderr, "\rmigrate %s [%-3d%%] post-copy: the guest runs there, %lld MiB sent, %lld MiB left to fetch   ",
                vm, pct, (long long)(done >> 20), (long long)(left >> 20));
    else if (strcmp(str_of(mig, "kind", ""), "migrate") == 0)
        fprintf(stderr, "\rmigrate %s [%-3d%%] %lld MiB sent, %lld MiB left, dirty %lld MiB/s, expected downtime %lld ms, %s   ",
                vm, pct, (long long)(done >> 20), (long long)(left >> 20), (long long)(int_of(mig, "dirty_rate") >> 20),
                (long long)int_of(mig, "expected_downtime_ms"), str_of(mig, "status", "?"));
    else
        fprintf(stderr, "\rsave %s [%-3d%%] %lld MiB written, %s   ", vm, pct, (long long)(done >> 20),
                str_of(mig, "status", "?"));
    fflush(stderr);
}

/* Sends the save request and waits for its answer (the VM shut off, or why not),
 * drawing progress on a terminal; Ctrl-C asks the supervisor to cancel. */
int cli_migration_call(struct cli *c, const char *vm, json_object *req, json_object **out)
{
    int fd = -1;
    int r = ctl_connect(&c->paths, vm, &fd, &c->err);
    if (r < 0) {
        json_object_put(req);
        return r;
    }
    r = ctl_send(fd, req, &c->err);
    json_object_put(req);
    bool tty = !c->quiet && !c->json && isatty(STDERR_FILENO);
    struct sigaction sa = {.sa_handler = on_interrupt}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    interrupted = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    struct buf in = {0};
    bool drew = false, cancel_sent = false;
    while (r == 0) {
        char *line = NULL;
        r = ctl_read_line(fd, &in, SAVE_POLL_MS, &line, &c->err);
        if (r == 0) {
            json_object *reply = NULL;
            r = ctl_parse_reply(line, &reply, &c->err);
            free(line);
            if (out && r == 0)
                *out = reply;
            else if (reply)
                json_object_put(reply);
            break;
        }
        if (r != -ETIMEDOUT)
            break;
        r = 0;
        c->err = (struct qv_err){0};
        if (interrupted && !cancel_sent) {
            struct qv_err e = {0};
            cancel_sent = true;
            if (ctl_call(&c->paths, vm, ctl_request("migrate-abort"), 10000, NULL, &e) < 0)
                fprintf(stderr, "%sqvisor: %s\n", drew ? "\n" : "", e.msg);
        }
        if (tty) {
            _cleanup_json_ json_object *mig = migration_info(c, vm);
            if (mig) {
                draw(vm, mig);
                drew = true;
            }
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (drew)
        fputc('\n', stderr);
    buf_free(&in);
    close(fd);
    return r;
}

/* path made absolute against the working directory: the supervisor has another one */
static int absolute(struct cli *c, const char *path, char *out, size_t outlen)
{
    if (path[0] == '/') {
        if (snprintf(out, outlen, "%s", path) >= (int)outlen)
            return qv_fail(&c->err, -ENAMETOOLONG, "%s: path too long", path);
        return 0;
    }
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return qv_failerr(&c->err, -errno, "the working directory");
    if (snprintf(out, outlen, "%s/%s", cwd, path) >= (int)outlen)
        return qv_fail(&c->err, -ENAMETOOLONG, "%s: path too long", path);
    return 0;
}

static json_object *save_request(const char *file, bool bypass, bool managed)
{
    json_object *req = ctl_request("save");
    json_object_object_add(req, "file", json_object_new_string(file));
    if (bypass)
        json_object_object_add(req, "bypass_cache", json_object_new_boolean(true));
    if (managed)
        json_object_object_add(req, "managed", json_object_new_boolean(true));
    return req;
}

int cmd_save(struct cli *c)
{
    const char *vm = c->pos[0];
    if (cli_flag(c, "abort")) {
        if (c->npos > 1)
            return qv_fail(&c->err, -EINVAL, "save --abort takes only the VM's name");
        int r = ctl_call(&c->paths, vm, ctl_request("migrate-abort"), 10000, NULL, &c->err);
        if (r == 0 && !c->quiet)
            printf("%s: the save is being cancelled; the guest runs on\n", vm);
        return r;
    }
    if (c->npos < 2)
        return qv_fail(&c->err, -EINVAL, "usage: %s", c->cmd->usage);
    char file[PATH_MAX];
    int r = absolute(c, c->pos[1], file, sizeof(file));
    if (r < 0)
        return r;
    if (access(file, F_OK) == 0 && managedsave_exists(&c->paths, vm)) {
        char ms[PATH_MAX];
        managedsave_path(&c->paths, vm, ms, sizeof(ms));
        if (strcmp(ms, file) == 0)
            return qv_fail(&c->err, -EEXIST, "%s: %s is its managed save; use qvisor managedsave %s", vm, file, vm);
    }
    if ((r = cli_migration_call(c, vm, save_request(file, cli_flag(c, "bypass-cache"), false), NULL)) < 0)
        return r;
    if (!c->quiet)
        printf("%s saved to %s (shut off; qvisor restore %s resumes it)\n", vm, file, file);
    return 0;
}

json_object *cli_managedsave_request(struct cli *c, const char *vm)
{
    char file[PATH_MAX], dir[PATH_MAX];
    int r = managedsave_path(&c->paths, vm, file, sizeof(file));
    if (r < 0) {
        qv_fail(&c->err, -ENAMETOOLONG, "%s: path too long", vm);
        return NULL;
    }
    qv_path(&c->paths, dir, sizeof(dir), QV_LIB "/save");
    if ((r = mkdir_p(dir, 0700)) < 0) {
        qv_failerr(&c->err, r, "%s", dir);
        return NULL;
    }
    return save_request(file, cli_flag(c, "bypass-cache"), true);
}

int cmd_managedsave(struct cli *c)
{
    const char *vm = c->pos[0];
    json_object *req = cli_managedsave_request(c, vm);
    if (!req)
        return c->err.code ? c->err.code : -EIO;
    int r;
    if ((r = cli_migration_call(c, vm, req, NULL)) < 0)
        return r;
    if (!c->quiet)
        printf("%s saved (managed save; qvisor start %s resumes it)\n", vm, vm);
    return 0;
}

int cmd_managedsave_remove(struct cli *c)
{
    const char *vm = c->pos[0];
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, vm, &d, &c->err);
    if (r < 0)
        return r;
    char file[PATH_MAX];
    managedsave_path(&c->paths, vm, file, sizeof(file));
    if (vm_supervised(&c->paths, vm, NULL) && managedsave_exists(&c->paths, vm))
        return qv_fail(&c->err, -EBUSY, "%s is running (or resuming from its managed save): nothing to remove now",
                       vm);
    managedsave_mark_resume(&c->paths, vm, false);
    if (unlink(file) < 0) {
        if (errno != ENOENT)
            return qv_failerr(&c->err, -errno, "%s: %s", vm, file);
        if (!c->quiet)
            printf("%s has no managed save\n", vm);
        return 0;
    }
    if (!c->quiet)
        printf("%s: managed save removed (the next start boots)\n", vm);
    return 0;
}

int cmd_restore(struct cli *c)
{
    char file[PATH_MAX];
    int r = absolute(c, c->pos[0], file, sizeof(file));
    if (r < 0)
        return r;
    int timeout_ms;
    if ((r = cli_opt_seconds_ms(c, "wait-timeout", 120000, &timeout_ms)) < 0)
        return r;
    _cleanup_json_ json_object *header = NULL;
    _cleanup_vm_def_ struct vm_def saved = {0};
    off_t off;
    int fd;
    if ((r = savefile_open(file, &header, &saved, &off, &fd, &c->err)) < 0)
        return r;
    close(fd);
    const char *vm = saved.name;
    _cleanup_vm_def_ struct vm_def now = {0};
    struct qv_err le = {0};
    if ((r = vm_load(&c->paths, vm, &now, &le)) < 0)
        return qv_fail(&c->err, r, "%s: the saved state is of VM %s, which is not defined here (%s); define it "
                       "with the definition it was saved with first", file, vm, le.msg);
    if ((r = savefile_check_definition(file, &saved, &now, &c->err)) < 0)
        return r;
    if (vm_supervised(&c->paths, vm, NULL))
        return qv_fail(&c->err, -EBUSY, "%s is already running: stop it first, then restore", vm);
    bool paused = cli_flag(c, "paused");
    const char *args[] = {"run", vm, "--restore", file, paused ? "--paused" : NULL, NULL};
    if ((r = supervisor_spawn(&c->paths, args, timeout_ms, vm, &c->err)) < 0)
        return r;
    if (!c->quiet)
        printf("%s restored from %s (%s)\n", vm, file, paused ? "paused: qvisor resume lets it run" : "running");
    return 0;
}
