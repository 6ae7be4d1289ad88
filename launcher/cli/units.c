/* The host's side: autostart (the unit enabled under systemd, the definition's flag
 * everywhere), `autostart --run` and `shutdown-all` (qvisor-guests.service, or an init
 * script without systemd), and the systemd generator that gives each VM's unit the
 * networks and limits of its definition. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/cli/cli.h"
#include "sandbox/sandbox.h"

/* systemd runs this host and the root is the host's own: units are the way */
static bool systemd_host(const struct cli *c)
{
    return !c->paths.root[0] && access("/run/systemd/system", F_OK) == 0;
}

/* systemctl VERB UNITS... ; its message in the error when it fails */
static int systemctl(struct cli *c, const char *what, const char *const *argv)
{
    _cleanup_free_ char *out = NULL;
    int r = run_program(argv, 120000, &out);
    if (r == 0)
        return 0;
    size_t n = out ? strlen(out) : 0;
    while (n && out[n - 1] == '\n')
        out[--n] = '\0';
    if (r < 0)
        return qv_failerr(&c->err, r, "%s: systemctl", what);
    return qv_fail(&c->err, -EIO, "%s: systemctl %s failed: %s", what, argv[1], n ? out : "no reason given");
}

/* The stored definition with "autostart" set, written back through the usual
 * validation (atomically). */
static int set_flag(struct cli *c, const char *path, const char *name, bool on, bool is_vm)
{
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, &c->err);
    if (r < 0)
        return r;
    json_object_object_add(o, "autostart", json_object_new_boolean(on));
    if (is_vm) {
        if (!on)
            json_object_object_del(o, "autostart");
        return vm_define(&c->paths, o, true, NULL, &c->err);
    }
    (void)name;
    return net_define(&c->paths, o, true, NULL, &c->err);
}

static int autostart_set(struct cli *c, const char *name, bool is_vm, bool on)
{
    char path[PATH_MAX], unit[160], what[160];
    int r;
    bool was;
    if (is_vm) {
        _cleanup_vm_def_ struct vm_def d = {0};
        if ((r = vm_load(&c->paths, name, &d, &c->err)) < 0)
            return r;
        if (d.transient)
            return qv_fail(&c->err, -EINVAL, "%s is a transient VM: it is gone once it stops (define it to autostart it)",
                           name);
        was = d.autostart;
        vm_def_path(&c->paths, name, path, sizeof(path));
        snprintf(unit, sizeof(unit), "qvisor@%s.service", name);
        snprintf(what, sizeof(what), "%s", name);
    } else {
        _cleanup_net_def_ struct net_def d = {0};
        if ((r = net_load(&c->paths, name, &d, &c->err)) < 0)
            return r;
        was = d.autostart;
        net_def_path(&c->paths, name, path, sizeof(path));
        snprintf(unit, sizeof(unit), "qvisor-net@%s.service", name);
        snprintf(what, sizeof(what), "network %s", name);
    }
    if (was != on && (r = set_flag(c, path, name, on, is_vm)) < 0)
        return r;
    if (systemd_host(c)) {
        const char *argv[] = {"systemctl", on ? "enable" : "disable", "--quiet", unit, NULL};
        if ((r = systemctl(c, what, argv)) < 0) {
            struct qv_err ignored = {0}, keep = c->err;
            if (was != on) {
                set_flag(c, path, name, was, is_vm);    /* bad outcome changes nothing */
                c->err = ignored;
            }
            c->err = keep;
            return r;
        }
    }
    if (!c->quiet)
        printf("%s: autostart %s%s%s\n", what, on ? "on" : "off", systemd_host(c) ? on ? ", unit enabled: " :
               ", unit disabled: " : "", systemd_host(c) ? unit : "");
    return 0;
}

static void list_names(char *out, size_t len, const struct strv *names)
{
    out[0] = '\0';
    for (size_t i = 0; i < names->n; i++)
        snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? ", " : "", names->v[i]);
}

/* Starts what autostarts, networks first (the VMs need them), each on its own: one
 * that fails is reported and the others still start. */
static int autostart_run(struct cli *c)
{
    _cleanup_strv_ struct strv nets = {0}, vms = {0}, failed = {0};
    int r;
    if ((r = net_list_names(&c->paths, &nets, &c->err)) < 0 || (r = vm_list_names(&c->paths, &vms, &c->err)) < 0)
        return r;
    bool units = systemd_host(c);
    for (int pass = 0; pass < 2; pass++) {
        struct strv *names = pass == 0 ? &nets : &vms;
        for (size_t i = 0; i < names->n; i++) {
            const char *name = names->v[i];
            struct qv_err e = {0};
            bool on, resume = false;
            if (pass == 0) {
                _cleanup_net_def_ struct net_def d = {0};
                on = net_load(&c->paths, name, &d, &e) == 0 && d.autostart && !net_running(&c->paths, name, NULL);
            } else {
                _cleanup_vm_def_ struct vm_def d = {0};
                resume = managedsave_resume_marked(&c->paths, name);
                if (resume && !managedsave_exists(&c->paths, name)) {
                    managedsave_mark_resume(&c->paths, name, false);     /* started by hand meanwhile */
                    resume = false;
                }
                on = vm_load(&c->paths, name, &d, &e) == 0 && (d.autostart || resume) && !d.transient &&
                     !vm_supervised(&c->paths, name, NULL);
            }
            if (e.msg[0]) {
                fprintf(stderr, "qvisor: autostart: %s\n", e.msg);
                strv_push(&failed, name);
                continue;
            }
            if (!on)
                continue;
            char unit[160];
            snprintf(unit, sizeof(unit), pass == 0 ? "qvisor-net@%s.service" : "qvisor@%s.service", name);
            struct cli sub = *c;
            sub.err = (struct qv_err){0};
            if (units) {
                const char *argv[] = {"systemctl", "start", unit, NULL};
                r = systemctl(&sub, unit, argv);
            } else if (pass == 0) {
                const char *args[] = {"net", "run", name, NULL};
                r = supervisor_spawn(&c->paths, args, 30000, name, &sub.err);
            } else {
                const char *args[] = {"run", name, NULL};
                r = supervisor_spawn(&c->paths, args, 120000, name, &sub.err);
            }
            if (r < 0) {
                fprintf(stderr, "qvisor: autostart: %s\n", sub.err.msg);
                strv_push(&failed, name);
            } else {
                if (resume)
                    managedsave_mark_resume(&c->paths, name, false);
                if (!c->quiet)
                    printf("%s%s started%s%s%s\n", pass == 0 ? "network " : "", name, resume ? " from its managed save" : "",
                           units ? " as " : "", units ? unit : "");
            }
        }
    }
    if (failed.n) {
        char list[1024];
        list_names(list, sizeof(list), &failed);
        return qv_fail(&c->err, -EIO, "autostart: %zu did not start (%s); the reasons are above", failed.n, list);
    }
    return 0;
}

int cmd_autostart(struct cli *c)
{
    if (cli_flag(c, "run")) {
        if (c->npos || cli_flag(c, "disable"))
            return qv_fail(&c->err, -EINVAL, "autostart --run takes no VM and no --disable");
        return autostart_run(c);
    }
    if (c->npos != 1)
        return qv_fail(&c->err, -EINVAL, "usage: qvisor %s", c->cmd->usage);
    return autostart_set(c, c->pos[0], true, !cli_flag(c, "disable"));
}

int cmd_net_autostart(struct cli *c)
{
    return autostart_set(c, c->pos[0], false, !cli_flag(c, "disable"));
}

/* ---- shutdown-all ------------------------------------------------------------------ */

struct stopping {
    char name[80];
    int fd;
    struct buf in;
};

/* The request for one VM: a stop (the ACPI button, forced after timeout_ms) or a
 * managed save. */
static json_object *shutdown_request(struct cli *c, const char *vm, bool save, int timeout_ms)
{
    if (save)
        return cli_managedsave_request(c, vm);
    json_object *req = ctl_request("stop");
    json_object_object_add(req, "timeout_ms", json_object_new_int(timeout_ms));
    return req;
}

/* Every VM of `names` that runs gets its request at once (the supervisors stop or save
 * their guests in parallel); the answers are then collected against one deadline.
 * done: the VMs that stopped (saved); failed: those that did not. */
static void shutdown_each(struct cli *c, const struct strv *names, bool save, int timeout_ms, struct strv *done,
                          struct strv *failed, bool *timed_out)
{
    struct stopping *st = qv_xcalloc(names->n ? names->n : 1, sizeof(*st));
    size_t n = 0;
    int r;
    for (size_t i = 0; i < names->n; i++) {
        _cleanup_runstate_ struct vm_runstate rs = {0};
        bool supervised;
        vm_observe(&c->paths, names->v[i], &rs, &supervised);
        if (rs.state == VM_SHUTOFF || rs.state == VM_CRASHED)
            continue;
        struct qv_err e = {0};
        int fd = -1;
        r = ctl_connect(&c->paths, names->v[i], &fd, &e);
        if (r == -EBUSY && cli_qemu_lives(c, names->v[i])) {
            /* QEMU without its supervisor: one that only takes it over */
            const char *args[] = {"run", "--attach-only", names->v[i], NULL};
            e = (struct qv_err){0};
            if ((r = supervisor_spawn(&c->paths, args, 30000, names->v[i], &e)) == 0)
                r = ctl_connect(&c->paths, names->v[i], &fd, &e);
        } else if (r == -EBUSY) {
            continue;       /* stopped meanwhile */
        }
        if (r == 0) {
            json_object *req = shutdown_request(c, names->v[i], save, timeout_ms);
            if (req) {
                r = ctl_send(fd, req, &e);
                json_object_put(req);
            } else {
                e = c->err;
                c->err = (struct qv_err){0};
                r = e.code ? e.code : -EIO;
            }
        }
        if (r < 0) {
            if (fd >= 0)
                close(fd);
            fprintf(stderr, "qvisor: shutdown-all: %s\n", e.msg);
            strv_push(failed, names->v[i]);
            continue;
        }
        snprintf(st[n].name, sizeof(st[n].name), "%s", names->v[i]);
        st[n++].fd = fd;
    }
    /* beyond the graceful part: quit, SIGTERM and SIGKILL each get a few seconds; a
     * save has the whole timeout and the same margin */
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms + 15000;
    for (size_t i = 0; i < n; i++) {
        uint64_t now = monotonic_ms();
        int left = deadline > now ? (int)(deadline - now) : 0;
        char *line = NULL;
        struct qv_err e = {0};
        json_object *reply = NULL;
        r = ctl_read_line(st[i].fd, &st[i].in, left, &line, &e);
        if (r == 0)
            r = ctl_parse_reply(line, &reply, &e);
        free(line);
        if (reply)
            json_object_put(reply);
        if (r < 0 && !e.msg[0])
            qv_failerr(&e, r, "%s: no answer to %s", st[i].name, save ? "the save" : "stop");
        if (r == -ETIMEDOUT)
            *timed_out = true;
        if (r < 0) {
            fprintf(stderr, "qvisor: shutdown-all: %s\n", e.msg);
            strv_push(failed, st[i].name);
        } else {
            strv_push(done, st[i].name);
        }
        close(st[i].fd);
        buf_free(&st[i].in);
    }
    free(st);
}

/* Stops every running VM, in parallel; --save managed-saves them instead (a VM whose
 * save fails is then stopped: never lost to the host's power-off) and marks them for
 * autostart --run to resume. */
int cmd_shutdown_all(struct cli *c)
{
    int timeout_ms;
    int r = cli_opt_seconds_ms(c, "timeout", 60000, &timeout_ms);
    if (r < 0)
        return r;
    bool save = cli_flag(c, "save");
    _cleanup_strv_ struct strv names = {0}, saved = {0}, unsaved = {0}, stopped = {0}, failed = {0};
    if ((r = vm_list_names(&c->paths, &names, &c->err)) < 0)
        return r;
    bool timed_out = false;
    if (save) {
        shutdown_each(c, &names, true, timeout_ms, &saved, &unsaved, &timed_out);
        for (size_t i = 0; i < saved.n; i++) {
            if ((r = managedsave_mark_resume(&c->paths, saved.v[i], true)) < 0)
                fprintf(stderr, "qvisor: shutdown-all: %s: marking it for autostart --run: %s\n", saved.v[i],
                        strerror(-r));
            if (!c->quiet)
                printf("%s saved\n", saved.v[i]);
        }
        if (unsaved.n)
            fprintf(stderr, "qvisor: shutdown-all: stopping what could not be saved\n");
        timed_out = false;
    }
    shutdown_each(c, save ? &unsaved : &names, false, timeout_ms, &stopped, &failed, &timed_out);
    for (size_t i = 0; i < stopped.n && !c->quiet; i++)
        printf("%s stopped%s\n", stopped.v[i], save ? " (not saved)" : "");
    if (failed.n) {
        char list[1024];
        list_names(list, sizeof(list), &failed);
        return qv_fail(&c->err, timed_out ? -ETIMEDOUT : -EIO, "shutdown-all: %zu VM%s did not stop (%s)", failed.n,
                       failed.n == 1 ? "" : "s", list);
    }
    if (save && unsaved.n) {
        char list[1024];
        list_names(list, sizeof(list), &unsaved);
        return qv_fail(&c->err, -EIO, "shutdown-all: %zu VM%s could not be saved and %s stopped instead (%s)",
                       unsaved.n, unsaved.n == 1 ? "" : "s", unsaved.n == 1 ? "was" : "were", list);
    }
    if (!c->quiet && !saved.n && !stopped.n)
        printf("no VM is running\n");
    return 0;
}

/* ---- the systemd generator ------------------------------------------------------------
 * Installed as system-generators/qvisor-generator (a link to qvisor); systemd runs it
 * at boot and at every daemon-reload with the directory for its output first. Each
 * defined VM's unit gets a drop-in: After= every network its NICs name, Wants= those
 * that autostart (a VM never pulls in a network its owner keeps down by hand), and
 * the definition's limits as the unit's (under cgroup v2 QEMU's cgroup is inside the
 * unit's, see sandbox_cgroup_params.delegated; elsewhere they bound the supervisor,
 * and QEMU's own cgroup has QEMU's). Run
 * early in boot: nothing but reading the definitions and writing files, and a
 * definition it cannot read costs that VM its drop-in, never the others theirs. */

static int write_dropin(const char *dir, const char *vm, const char *text)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/qvisor@%s.service.d", dir, vm);
    if (mkdir(path, 0755) < 0 && errno != EEXIST)
        return -errno;
    snprintf(path, sizeof(path), "%s/qvisor@%s.service.d/50-qvisor.conf", dir, vm);
    return write_file_atomic(path, text, strlen(text), 0644, NULL);
}

static void unit_limits(struct buf *text, const struct vm_def *d)
{
    const struct vm_limits *l = &d->limits;
    buf_printf(text, "[Service]\nMemoryMax=%" PRIu64 "\nTasksMax=%" PRIu64 "\n", vm_unit_memory_max(d),
               vm_unit_tasks_max(d));
    uint64_t quota, period;
    struct qv_err e = {0};
    if (l->cpu && sandbox_parse_cpu_quota(l->cpu, &quota, &period, &e) == 0 && quota)
        buf_printf(text, "CPUQuota=%" PRIu64 "%%\n", (quota * 100 + period / 2) / period);
    if (l->cpu_weight)
        buf_printf(text, "CPUWeight=%d\n", l->cpu_weight);
    if (l->io_weight)
        buf_printf(text, "IOWeight=%d\n", l->io_weight);
    for (size_t i = 0; i < l->nio; i++) {
        const struct vm_io_limit *io = &l->io[i];
        if (io->read_bps)
            buf_printf(text, "IOReadBandwidthMax=%s %" PRIu64 "\n", io->device, io->read_bps);
        if (io->write_bps)
            buf_printf(text, "IOWriteBandwidthMax=%s %" PRIu64 "\n", io->device, io->write_bps);
        if (io->read_iops)
            buf_printf(text, "IOReadIOPSMax=%s %" PRIu64 "\n", io->device, io->read_iops);
        if (io->write_iops)
            buf_printf(text, "IOWriteIOPSMax=%s %" PRIu64 "\n", io->device, io->write_iops);
    }
}

int qvisor_generator(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] != '/') {
        fprintf(stderr, "qvisor-generator: usage: qvisor-generator NORMAL-DIR [EARLY-DIR LATE-DIR]\n");
        return 2;
    }
    struct qv_paths p;
    struct qv_err e = {0};
    if (qv_paths_init(&p, getenv("QVISOR_GENERATOR_ROOT"), &e) < 0) {
        fprintf(stderr, "qvisor-generator: %s\n", e.msg);
        return 1;
    }
    _cleanup_strv_ struct strv vms = {0};
    if (vm_list_names(&p, &vms, &e) < 0)
        return 0;   /* no definitions: nothing to order */
    int status = 0;
    for (size_t i = 0; i < vms.n; i++) {
        _cleanup_vm_def_ struct vm_def d = {0};
        e = (struct qv_err){0};
        if (vm_load(&p, vms.v[i], &d, &e) < 0) {
            fprintf(stderr, "qvisor-generator: %s\n", e.msg);
            continue;
        }
        if (d.transient)
            continue;
        struct buf text = {0};
        buf_printf(&text, "# written by qvisor-generator from %s's definition\n[Unit]\n", d.name);
        for (size_t k = 0; k < d.nnics; k++) {
            const struct vm_nic *nic = &d.nics[k];
            if (nic->type != NIC_NETWORK)
                continue;
            bool seen = false;
            for (size_t j = 0; j < k; j++)
                seen |= d.nics[j].type == NIC_NETWORK && strcmp(d.nics[j].source, nic->source) == 0;
            if (seen)
                continue;
            /* only a defined network: loading "default" would define it, which is no
             * generator's business */
            _cleanup_net_def_ struct net_def nd = {0};
            struct qv_err ne = {0};
            char path[PATH_MAX];
            net_def_path(&p, nic->source, path, sizeof(path));
            bool autostart = path_exists(path) && net_load(&p, nic->source, &nd, &ne) == 0 && nd.autostart &&
                             nd.mode != NET_BRIDGE;
            buf_printf(&text, "After=qvisor-net@%s.service\n", nic->source);
            if (autostart)
                buf_printf(&text, "Wants=qvisor-net@%s.service\n", nic->source);
        }
        unit_limits(&text, &d);
        int r = write_dropin(argv[1], d.name, text.p);
        if (r < 0) {
            fprintf(stderr, "qvisor-generator: %s: writing its drop-in in %s: %s\n", d.name, argv[1], strerror(-r));
            status = 1;
        }
        buf_free(&text);
    }
    return status;
}
