/* What each control-socket request does: one table of verbs, each with the states it
 * may be served in and its handler. The requests reach here checked by
 * ctl_request.c (fields and types); ctl.c owns the socket and the clients.
 *
 * The gates, in order: a verb without V_ANY needs QEMU running (or a start under
 * way); during a start only V_STARTING verbs pass (nothing may reach QEMU before its
 * set-up is done and `cont` sent); during a save or migration only V_MIGRATING ones
 * (the guest's state is on its way out: nothing may change it), and `qmp` when it
 * only asks (query-*); V_MONITOR verbs need QEMU's monitor connected. A handler
 * returns 0 once it replied or will (QEMU's answer, a job's end), or -errno with e
 * filled, which is the reply. */
#include <string.h>

#include "launcher/supervisor/ctl_verbs.h"

enum {
    V_ANY = 1,          /* served in any state (status, stop, kill) */
    V_STARTING = 2,     /* also while a start is under way */
    V_MIGRATING = 4,    /* also during a save or migration */
    V_QUERY = 8,        /* also during a save or migration when it only asks QEMU (query-*) */
    V_MONITOR = 16,     /* needs QEMU's monitor connected */
};

struct ctl_verb {
    const char *cmd;
    unsigned flags;
    int (*run)(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e);
};

static int get_int(json_object *req, const char *key, int dflt)
{
    json_object *v;
    return json_object_object_get_ex(req, key, &v) ? json_object_get_int(v) : dflt;
}

static bool get_bool(json_object *req, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(req, key, &v) && json_object_get_boolean(v);
}

static const char *get_string(json_object *req, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(req, key, &v) ? json_object_get_string(v) : NULL;
}

static json_object *get_object(json_object *req, const char *key)
{
    json_object *v = NULL;
    json_object_object_get_ex(req, key, &v);
    return v;
}

static bool running(struct sup *s)
{
    return s->qemu_pid != 0 || start_active(s);
}

/* {"ok": true, KEY: value} */
static int reply_with(struct sup *s, struct sup_client *c, const char *key, json_object *value)
{
    json_object *o = json_obj1(key, value);
    sup_reply_json(s, c->id, o);
    json_object_put(o);
    return 0;
}

/* ---- the VM's life ---- */

static int v_status(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req, (void)e;
    json_object *st = sup_status_json(s), *mon = monitor_status_json(s), *agent = agent_status_json(s);
    if (mon)
        json_object_object_add(st, "monitor", mon);
    if (agent)
        json_object_object_add(st, "agent", agent);
    return reply_with(s, c, "status", st);
}

static int stop_or_kill(struct sup *s, struct sup_client *c, json_object *req, bool kill)
{
    bool was_running = running(s);
    c->waits_for_stop = true;
    if (kill) {
        sup_kill(s, "killed");     /* first: recording overlaps QEMU's death */
        if (s->qemu_pid && !s->done)
            sup_set_state(s, VM_STOPPING);
    } else {
        sup_begin_stop(s, get_bool(req, "force"), get_int(req, "timeout_ms", 60000));
    }
    if (!was_running)
        ctl_stop_done(s, true, NULL);
    return 0;
}

static int v_stop(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)e;
    const char *mode = get_string(req, "mode");
    if (running(s) && !start_active(s) && mode && strcmp(mode, "agent") == 0 && !get_bool(req, "force")) {
        agent_power(s, c->id, false, true, get_int(req, "timeout_ms", 60000));
        return 0;
    }
    return stop_or_kill(s, c, req, false);
}

static int v_kill(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)e;
    return stop_or_kill(s, c, req, true);
}

static int v_pause(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req, (void)e;
    ctl_client_qmp(s, c, "stop", NULL, CTL_AS_OK, QMP_TIMEOUT_DEFAULT);
    return 0;
}

static int v_resume(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req, (void)e;
    ctl_client_qmp(s, c, "cont", NULL, CTL_AS_OK, QMP_TIMEOUT_DEFAULT);
    return 0;
}

static int v_reset(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req, (void)e;
    ctl_client_qmp(s, c, "system_reset", NULL, CTL_AS_OK, QMP_TIMEOUT_DEFAULT);
    return 0;
}

static int v_reboot(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)e;
    const char *mode = get_string(req, "mode");
    agent_power(s, c->id, true, mode && strcmp(mode, "agent") == 0, 0);
    return 0;
}

/* ---- saves and migrations ---- */

static int v_save(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return migrate_save(s, c->id, get_string(req, "file"), get_bool(req, "bypass_cache"), get_bool(req, "managed"), e);
}

static int v_migrate(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    const char *tls = get_string(req, "tls_dir"), *tls_host = get_string(req, "tls_hostname");
    if (tls && (tls[0] != '/' || !tls_host || !tls_host[0] || strlen(tls_host) > 250))
        return qv_fail(e, -EINVAL, "%s: migrate: tls_dir must be an absolute path, with tls_hostname the "
                       "destination's name", s->def.name);
    struct migrate_live_opts lo = {.address = get_string(req, "address"), .token = get_string(req, "token"),
                                   .bandwidth = (int64_t)get_int(req, "bandwidth_mib", 0) << 20,
                                   .downtime_ms = get_int(req, "max_downtime_ms", 0),
                                   .auto_converge = get_bool(req, "auto_converge"),
                                   .copy_storage = get_bool(req, "copy_storage"),
                                   .persistent = get_bool(req, "persistent"),
                                   .postcopy = get_bool(req, "postcopy"),
                                   .postcopy_bandwidth_mib = get_int(req, "postcopy_bandwidth_mib", 0),
                                   .unsafe = get_bool(req, "unsafe")};
    int r = migrate_live(s, c->id, &lo, e);
    if (r == 0 && tls && s->mig)    /* s->mig gone: its failure is answered already */
        migrate_live_tls(s, tls, tls_host, e);
    return r;
}

static int v_migrate_abort(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req;
    int r = migrate_abort(s, e);
    if (r == 0)
        ctl_reply_ok(s, c);
    return r;
}

/* ---- the guest agent, and QEMU's monitors as they are ---- */

static int v_agent(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    json_object *args = get_object(req, "arguments");
    return agent_request(s, c->id, get_string(req, "execute"), args ? json_object_get(args) : NULL,
                         get_int(req, "timeout_ms", AGENT_TIMEOUT_MS), e);
}

static int v_exec(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return agent_exec(s, c->id, get_object(req, "spec"), e);
}

static int v_exec_input(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    int r = agent_exec_input(s, c->id, get_string(req, "data"), e);
    if (r == 0)
        ctl_reply_ok(s, c);
    return r;
}

static int v_qmp(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)e;
    json_object *args = get_object(req, "arguments");
    ctl_client_qmp(s, c, get_string(req, "execute"), args ? json_object_get(args) : NULL, CTL_AS_RETURN,
                   get_int(req, "timeout_ms", QMP_TIMEOUT_JOB));
    return 0;
}

static int v_hmp(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)e;
    ctl_client_qmp(s, c, "human-monitor-command", json_obj1("command-line", json_object_new_string(
                                                                get_string(req, "command"))),
                   CTL_AS_HMP, QMP_TIMEOUT_JOB);
    return 0;
}

/* ---- devices ---- */

/* attach-*: the device's JSON under "device"; the reply, which carries the device's
 * id, comes when QEMU finished (or the attach was rolled back): the loop serves on. */
static int v_attach_disk(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return hotplug_disk_attach(s, get_object(req, "device"), get_string(req, "volume"), c->id, e);
}

static int v_attach_nic(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return hotplug_nic_attach(s, get_object(req, "device"), c->id, e);
}

static int v_attach_device(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return hotplug_hostdev_attach(s, get_object(req, "device"), c->id, e);
}

static int v_detach_disk(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return hotplug_detach(s, get_string(req, "target"), HOTPLUG_DISK, c->id, e);
}

static int v_detach_nic(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return hotplug_detach(s, get_string(req, "target"), HOTPLUG_NIC, c->id, e);
}

static int v_detach_device(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return hotplug_detach(s, get_string(req, "target"), HOTPLUG_HOSTDEV, c->id, e);
}

static int v_change_media(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return media_change(s, c->id, get_string(req, "target"), get_string(req, "file"), e);
}

/* ---- resources and statistics ---- */

static int v_stats(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req;
    return vm_stats(s, c->id, e);
}

static int v_setmem(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return tuning_setmem(s, c->id, get_string(req, "size"), e);
}

static int v_setvcpus(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return tuning_setvcpus(s, c->id, get_int(req, "count", 0), e);
}

static int v_display(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req;
    return tuning_display(s, c->id, e);
}

/* ---- disks: resize, statistics, block jobs, snapshots ---- */

static int v_disk_resize(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return disk_resize(s, c->id, get_string(req, "target"), get_string(req, "size"), get_bool(req, "allow_shrink"), e);
}

static int v_blkstat(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return disk_stats(s, c->id, get_string(req, "target"), e);
}

static int v_block(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return block_request(s, c->id, get_string(req, "op"), get_string(req, "target"), get_object(req, "options"), e);
}

static int v_snapshot_create(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return snapshot_live_create(s, c->id, get_string(req, "name"), get_bool(req, "disk_only"),
                                get_bool(req, "quiesce"), get_string(req, "description"), e);
}

static int v_snapshot_revert(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return snapshot_live_revert(s, c->id, get_string(req, "name"), get_string(req, "then"), e);
}

static int v_snapshot_delete(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    return snapshot_live_delete(s, c->id, get_string(req, "name"), get_string(req, "bandwidth"), e);
}

/* ---- networks ---- */

static int v_filter_reload(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    size_t n = 0;
    int r = vmnet_filter_reload(s, get_string(req, "filter"), &n, e);
    if (r < 0)
        return qv_prefix(e, "%s: ", s->def.name);
    return reply_with(s, c, "nics", json_object_new_int64((int64_t)n));
}

static int v_ifaddr(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req, (void)e;
    return reply_with(s, c, "nics", vmnet_addresses(s));
}

/* ---- streams: events, the serial console ---- */

static int v_events(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    (void)req, (void)e;
    c->mode = CLIENT_EVENTS;
    ctl_reply_ok(s, c);
    return 0;
}

static int v_console(struct sup *s, struct sup_client *c, json_object *req, struct qv_err *e)
{
    if (!console_connected(s))
        return qv_fail(e, -ENODEV, "%s has no serial console connected (console: %s)", s->def.name,
                       s->def.console == CONSOLE_NONE ? "none" : "not connected");
    c->mode = CLIENT_CONSOLE;
    ctl_reply_ok(s, c);
    const struct buf *recent = console_recent(s);
    if (get_bool(req, "replay") && recent->len)
        ctl_client_write(s, c, recent->p, recent->len);
    return 0;
}

static const struct ctl_verb verbs[] = {
    {"status", V_ANY, v_status},
    {"stop", V_ANY, v_stop},
    {"kill", V_ANY, v_kill},
    {"pause", 0, v_pause},
    {"resume", 0, v_resume},
    {"reset", 0, v_reset},
    {"reboot", 0, v_reboot},
    {"save", V_MONITOR, v_save},
    {"migrate", V_MONITOR, v_migrate},
    {"migrate-abort", V_MIGRATING, v_migrate_abort},
    {"agent", 0, v_agent},
    {"exec", 0, v_exec},
    {"exec-input", 0, v_exec_input},
    {"qmp", V_QUERY, v_qmp},
    {"hmp", 0, v_hmp},
    {"attach-disk", V_MONITOR, v_attach_disk},
    {"attach-nic", V_MONITOR, v_attach_nic},
    {"attach-device", V_MONITOR, v_attach_device},
    {"detach-disk", V_MONITOR, v_detach_disk},
    {"detach-nic", V_MONITOR, v_detach_nic},
    {"detach-device", V_MONITOR, v_detach_device},
    {"change-media", V_MONITOR, v_change_media},
    {"stats", V_MONITOR, v_stats},
    {"setmem", V_MONITOR, v_setmem},
    {"setvcpus", V_MONITOR, v_setvcpus},
    {"display", V_MONITOR, v_display},
    {"disk-resize", V_MONITOR, v_disk_resize},
    {"blkstat", V_MONITOR, v_blkstat},
    {"block", V_MONITOR, v_block},
    {"snapshot-create", V_MONITOR, v_snapshot_create},
    {"snapshot-revert", V_MONITOR, v_snapshot_revert},
    {"snapshot-delete", V_MONITOR, v_snapshot_delete},
    {"filter-reload", 0, v_filter_reload},
    {"ifaddr", V_MIGRATING, v_ifaddr},
    {"events", V_STARTING | V_MIGRATING, v_events},
    {"console", V_STARTING | V_MIGRATING, v_console},
};

static const struct ctl_verb *verb_of(const char *cmd)
{
    for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
        if (strcmp(verbs[i].cmd, cmd) == 0)
            return &verbs[i];
    return NULL;
}

bool ctl_verb_known(const char *cmd)
{
    return verb_of(cmd) != NULL;
}

size_t ctl_verb_count(void)
{
    return ARRAY_SIZE(verbs);
}

/* 0, or why the VM's state refuses the verb now */
static int gate(struct sup *s, const struct ctl_verb *v, json_object *req, struct qv_err *e)
{
    if (v->flags & V_ANY)
        return 0;
    if (!running(s))
        return qv_fail(e, -EBUSY, "%s is not running (%s)", s->def.name, vm_state_names[s->rs.state]);
    if (start_active(s) && !(v->flags & V_STARTING))
        return qv_fail(e, -EBUSY, "%s is starting; try again once it runs", s->def.name);
    const char *asks = get_string(req, "execute");
    if (migrate_busy(s) && !(v->flags & V_MIGRATING) &&
        !((v->flags & V_QUERY) && asks && str_startswith(asks, "query-")))
        return qv_fail(e, -EBUSY, "%s: a save or migration is under way; try again once it is over (or cancel it: "
                       "qvisor save|migrate %s --abort)", s->def.name, s->def.name);
    return (v->flags & V_MONITOR) ? monitor_ready(s, e) : 0;
}

void ctl_handle_request(struct sup *s, struct sup_client *c, json_object *req)
{
    const char *cmd = get_string(req, "cmd");
    const struct ctl_verb *v = verb_of(cmd);
    struct qv_err e = {0};
    int r = v ? gate(s, v, req, &e) : qv_fail(&e, -EINVAL, "%s: unknown request \"%s\"", s->def.name, cmd);
    if (r == 0)
        r = v->run(s, c, req, &e);
    if (r < 0)
        ctl_reply_error(s, c, r, "%s", e.msg);
}
