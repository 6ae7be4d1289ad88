/* What the guest agent channel (agent.c) is used for: ctl.sock's agent commands,
 * freezing filesystems for snapshots, reboot and stop through the agent, and `exec`
 * (guest-exec, then guest-exec-status polled with back-off until the command exits
 * or its timeout passes). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/supervisor/agent_chan.h"

#define EXEC_POLL_MIN_MS 10
#define EXEC_POLL_MAX_MS 500
#define EXEC_STATUS_TIMEOUT_MS 10000
/* exec-input: at most this much base64 per client (16 MiB of stdin) and twice that for
 * all clients together, kept this long without a new piece or the exec that uses it */
#define EXEC_INPUT_MIB 16u
#define EXEC_INPUT_MAX ((EXEC_INPUT_MIB << 20) / 3 * 4)
#define EXEC_INPUT_IDLE_MS 60000

static void inputs_expire(struct agent_chan *ch, uint64_t now);

/* ---- requests from ctl.sock ---- */

struct client_ctx {
    unsigned client;
};

static void on_passthrough(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err)
{
    struct client_ctx *c = ctx;
    if (err) {
        sup_reply_error(s, c->client, err->code, "%s", err->msg);
    } else {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "return", ret ? json_object_get(ret) : json_object_new_object());
        sup_reply_json(s, c->client, o);
        json_object_put(o);
    }
    free(c);
}

static bool no_reply_command(const char *cmd)
{
    return strcmp(cmd, "guest-shutdown") == 0 || str_startswith(cmd, "guest-suspend-");
}

int agent_request(struct sup *s, unsigned client, const char *cmd, json_object *args, int timeout_ms,
                  struct qv_err *e)
{
    if (str_startswith(cmd, "guest-sync")) {
        if (args)
            json_object_put(args);
        return qv_fail(e, -EINVAL, "%s: %s is the supervisor's own business (it keeps the stream in sync)",
                       s->def.name, cmd);
    }
    struct client_ctx *c = qv_xcalloc(1, sizeof(*c));
    c->client = client;
    int r = agent_call(s, cmd, args, timeout_ms, no_reply_command(cmd) ? QMP_NO_REPLY_OK : 0, on_passthrough, c, e);
    if (r < 0)
        free(c);
    return r;
}

/* ---- freezing filesystems (snapshots) ---- */

struct freeze_ctx {
    agent_freeze_fn done;
    void *ctx;
};

static void on_freeze(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err)
{
    struct freeze_ctx *f = ctx;
    f->done(s, f->ctx, err ? -1 : json_object_get_int(ret), err);
    free(f);
}

int agent_fsfreeze(struct sup *s, bool freeze, agent_freeze_fn done, void *ctx, struct qv_err *e)
{
    struct freeze_ctx *f = qv_xcalloc(1, sizeof(*f));
    f->done = done;
    f->ctx = ctx;
    int r = agent_call(s, freeze ? "guest-fsfreeze-freeze" : "guest-fsfreeze-thaw", NULL,
                       freeze ? AGENT_TIMEOUT_FREEZE_MS : AGENT_TIMEOUT_MS, 0, on_freeze, f, e);
    if (r < 0)
        free(f);
    return r;
}

/* ---- reboot and stop through the agent ---- */

struct power_ctx {
    unsigned client;
    bool reboot;
    bool agent_only;        /* --mode agent: no fallback */
    int timeout_ms;         /* stop: then quit */
};

static void on_reset_reply(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    if (err)
        sup_log(ctx, "reboot: system_reset: %s", err->msg);
}

static void reboot_by_reset(struct sup *s, unsigned client, const char *why)
{
    if (why)
        sup_log(s, "guest agent did not answer (%s); resetting instead", why);
    sup_log(s, "reboot: system_reset (no guest agent; the guest gets no chance to shut down cleanly)");
    if (!s->qmp || !qmp_ready(s->qmp)) {
        sup_reply_error(s, client, -EIO, "%s: QEMU's monitor is not connected; cannot reset", s->def.name);
        return;
    }
    if (qmp_send(s->qmp, "system_reset", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_reset_reply, s) < 0) {
        sup_reply_error(s, client, -EIO, "%s: cannot send system_reset to QEMU", s->def.name);
        return;
    }
    sup_reply_ok(s, client);
}

static void on_power(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct power_ctx *p = ctx;
    if (err && p->reboot && !p->agent_only) {
        reboot_by_reset(s, p->client, err->msg);
    } else if (err) {
        sup_reply_error(s, p->client, err->code == -ENODEV ? -ENODEV : -EIO, "%s", err->msg);
    } else if (p->reboot) {
        sup_log(s, "reboot through the guest agent");
        sup_reply_ok(s, p->client);
    } else {
        sup_log(s, "stopping: guest-shutdown through the guest agent, then quit after %d ms", p->timeout_ms);
        ctl_wait_for_stop(s, p->client);
        sup_begin_stop_waiting(s, p->timeout_ms);
    }
    free(p);
}

void agent_power(struct sup *s, unsigned client, bool reboot, bool agent_only, int timeout_ms)
{
    if (!s->def.agent && reboot && !agent_only) {
        reboot_by_reset(s, client, NULL);
        return;
    }
    struct power_ctx *p = qv_xcalloc(1, sizeof(*p));
    p->client = client;
    p->reboot = reboot;
    p->agent_only = agent_only;
    p->timeout_ms = timeout_ms;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "mode", json_object_new_string(reboot ? "reboot" : "powerdown"));
    struct qv_err e = {0};
    /* a default reboot tries the agent for a second, as it did before the channel was kept */
    if (agent_call(s, "guest-shutdown", args, agent_only ? AGENT_TIMEOUT_MS : 1000, QMP_NO_REPLY_OK, on_power, p,
                   &e) < 0) {
        free(p);
        if (reboot && !agent_only)
            reboot_by_reset(s, client, e.msg);
        else
            sup_reply_error(s, client, e.code, "%s", e.msg);
    }
}

/* ---- exec ---- */

static struct exec_op *exec_find(struct agent_chan *ch, unsigned id)
{
    for (struct exec_op *o = ch->execs; o; o = o->next)
        if (o->id == id)
            return o;
    return NULL;
}

static void exec_remove(struct agent_chan *ch, struct exec_op *x)
{
    for (struct exec_op **pp = &ch->execs; *pp; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            free(x);
            return;
        }
    }
}

static void copy_field(json_object *to, const char *to_key, json_object *from, const char *from_key)
{
    json_object *v;
    if (json_object_object_get_ex(from, from_key, &v))
        json_object_object_add(to, to_key, json_object_get(v));
}

static void exec_kill_failed(struct sup *s, unsigned client, const char *path, int timeout_ms, int64_t pid,
                             const char *why);
static void exec_kill_done(struct sup *s, const struct exec_op *x, json_object *ret);

static void on_exec_status(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err)
{
    struct agent_chan *ch = s->agent;
    struct exec_op *x = ch ? exec_find(ch, (unsigned)(uintptr_t)ctx) : NULL;
    if (!x)
        return;     /* it timed out meanwhile, and was answered */
    if (err && x->kill_of) {
        exec_kill_failed(s, x->client, x->path, x->timeout_ms, x->kill_of, err->msg);
        exec_remove(ch, x);
        return;
    }
    if (err) {
        sup_reply_error(s, x->client, err->code, "%s", err->msg);
        exec_remove(ch, x);
        return;
    }
    json_object *v;
    if (!json_object_object_get_ex(ret, "exited", &v) || !json_object_get_boolean(v)) {
        x->poll_at = monotonic_ms() + x->poll_ms;
        x->poll_ms = x->poll_ms * 2 > EXEC_POLL_MAX_MS ? EXEC_POLL_MAX_MS : x->poll_ms * 2;
        return;
    }
    if (x->kill_of) {
        exec_kill_done(s, x, ret);
        exec_remove(ch, x);
        return;
    }
    json_object *o = json_object_new_object();
    copy_field(o, "exitcode", ret, "exitcode");
    copy_field(o, "signal", ret, "signal");
    copy_field(o, "out", ret, "out-data");
    copy_field(o, "err", ret, "err-data");
    copy_field(o, "out_truncated", ret, "out-truncated");
    copy_field(o, "err_truncated", ret, "err-truncated");
    sup_reply_json(s, x->client, o);
    json_object_put(o);
    exec_remove(ch, x);
}

/* A command past its timeout is killed in the guest: the agent has no kill of its
 * own, so a second guest-exec runs the guest's kill on the pid the first one gave,
 * and is itself waited for (guest-exec-status) so that its failure is told. The ways,
 * in order, each tried when the agent cannot start the one before: a shell that
 * kills the command's whole tree (qemu-ga gives it no process group of its own: each
 * process is stopped, its children read from /proc and killed the same way, then it;
 * the script holds nothing but the pid, a number); kill(1) by argv, the command
 * alone (a guest without a shell); taskkill (a Windows guest: the tree, forced). */
#define EXEC_KILL_TIMEOUT_MS 10000

enum { KILL_TREE, KILL_ONE, KILL_TASKKILL };
static const char *const kill_ways[][5] = {
    [KILL_TREE] = {"sh", "-c", NULL},
    [KILL_ONE] = {"kill", "-KILL", NULL},
    [KILL_TASKKILL] = {"taskkill", "/F", "/T", "/PID", NULL},
};
static const char *const kill_told[] = {
    [KILL_TREE] = " and its descendants, SIGKILL",
    [KILL_ONE] = ", SIGKILL",
    [KILL_TASKKILL] = ", taskkill /F /T",
};

struct exec_kill {
    unsigned client;
    int64_t pid;
    int timeout_ms;
    unsigned step;
    char path[256];
};

static void exec_kill_step(struct sup *s, struct exec_kill *k);

static void exec_kill_failed(struct sup *s, unsigned client, const char *path, int timeout_ms, int64_t pid,
                             const char *why)
{
    sup_log(s, "exec: killing %s (guest pid %lld) failed: %s", path, (long long)pid, why);
    sup_reply_error(s, client, -ETIMEDOUT, "%s: %s did not finish within %d s; killing it in the guest failed "
                    "(%s): it may still run there as pid %lld", s->def.name, path, (timeout_ms + 999) / 1000, why,
                    (long long)pid);
}

static void on_kill_started(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err)
{
    struct exec_kill *k = ctx;
    json_object *pid;
    if (err && s->agent && s->agent->link == LINK_READY && k->step + 1 < ARRAY_SIZE(kill_ways)) {
        /* the agent answered but could not start this way (no such program): the next one */
        char way[64] = "";
        for (size_t i = 0, n = 0; kill_ways[k->step][i] && n < sizeof(way); i++)
            n += (size_t)snprintf(way + n, sizeof(way) - n, "%s%s", i ? " " : "", kill_ways[k->step][i]);
        sup_log(s, "exec: %s: %s", way, err->msg);
        k->step++;
        exec_kill_step(s, k);
        return;
    }
    if (err) {
        exec_kill_failed(s, k->client, k->path, k->timeout_ms, k->pid, err->msg);
    } else if (!json_object_object_get_ex(ret, "pid", &pid) || !json_object_is_type(pid, json_type_int)) {
        exec_kill_failed(s, k->client, k->path, k->timeout_ms, k->pid, "guest-exec: the agent's reply has no pid");
    } else {
        /* the kill is waited for like any exec (on_exec_status tells its end) */
        struct agent_chan *ch = agent_chan_get(s);
        struct exec_op *x = qv_xcalloc(1, sizeof(*x));
        x->id = ++ch->next_exec_id;
        x->client = k->client;
        x->pid = json_object_get_int64(pid);
        x->kill_of = k->pid;
        x->kill_step = k->step;
        x->timeout_ms = k->timeout_ms;
        x->deadline = monotonic_ms() + EXEC_KILL_TIMEOUT_MS;
        x->poll_ms = EXEC_POLL_MIN_MS;
        x->poll_at = monotonic_ms() + x->poll_ms;
        snprintf(x->path, sizeof(x->path), "%s", k->path);
        x->next = ch->execs;
        ch->execs = x;
    }
    free(k);
}

static void exec_kill_step(struct sup *s, struct exec_kill *k)
{
    char num[24], script[192];
    snprintf(num, sizeof(num), "%lld", (long long)k->pid);
    snprintf(script, sizeof(script),    /* a number: nothing the user wrote */
             "t() { kill -STOP $1 2>/dev/null; for c in $(cat /proc/$1/task/*/children 2>/dev/null); do t $c; done; "
             "kill -KILL $1; }; t %lld", (long long)k->pid);
    const char *const *way = kill_ways[k->step];
    json_object *arg = json_object_new_array();
    for (size_t i = 1; way[i]; i++)
        json_object_array_add(arg, json_object_new_string(way[i]));
    json_object_array_add(arg, json_object_new_string(k->step == KILL_TREE ? script : num));
    json_object *args = json_object_new_object();
    json_object_object_add(args, "path", json_object_new_string(way[0]));
    json_object_object_add(args, "arg", arg);
    struct qv_err e = {0};
    if (agent_call(s, "guest-exec", args, AGENT_TIMEOUT_MS, 0, on_kill_started, k, &e) < 0)
        on_kill_started(s, k, NULL, &e);
}

static void exec_kill(struct sup *s, const struct exec_op *x)
{
    struct exec_kill *k = qv_xcalloc(1, sizeof(*k));
    k->client = x->client;
    k->pid = x->pid;
    k->timeout_ms = x->timeout_ms;
    snprintf(k->path, sizeof(k->path), "%s", x->path);
    sup_log(s, "exec: %s (guest pid %lld) ran past its %d s: killing it", k->path, (long long)k->pid,
            (k->timeout_ms + 999) / 1000);
    exec_kill_step(s, k);
}

/* The kill's own end: exit 0 is a killed command; anything else (no such process:
 * it ended at the last moment; not permitted) is told as it is. */
static void exec_kill_done(struct sup *s, const struct exec_op *x, json_object *ret)
{
    json_object *v;
    int code = json_object_object_get_ex(ret, "exitcode", &v) ? json_object_get_int(v) : -1;
    if (code == 0) {
        sup_log(s, "exec: %s (guest pid %lld) killed", x->path, (long long)x->kill_of);
        sup_reply_error(s, x->client, -ETIMEDOUT, "%s: %s did not finish within %d s; killed it in the guest (pid "
                        "%lld%s)", s->def.name, x->path, (x->timeout_ms + 999) / 1000, (long long)x->kill_of,
                        kill_told[x->kill_step]);
        return;
    }
    char why[96];
    if (code >= 0)
        snprintf(why, sizeof(why), "the guest's %s exited %d", kill_ways[x->kill_step][0], code);
    else
        snprintf(why, sizeof(why), "the guest's %s was killed by signal %d", kill_ways[x->kill_step][0],
                 json_object_object_get_ex(ret, "signal", &v) ? json_object_get_int(v) : 0);
    exec_kill_failed(s, x->client, x->path, x->timeout_ms, x->kill_of, why);
}

/* Every agent_call may complete requests at once (a closed port fails the whole
 * queue), and their callbacks remove execs: the walk starts over after each call. */
void agent_exec_expire(struct sup *s, uint64_t now)
{
    struct agent_chan *ch = s->agent;
    inputs_expire(ch, now);
    for (;;) {
        struct exec_op *x = ch->execs;
        while (x && now < x->deadline && (!x->poll_at || now < x->poll_at))
            x = x->next;
        if (!x)
            return;
        if (now >= x->deadline) {
            struct exec_op late = *x;
            exec_remove(ch, x);
            if (late.kill_of)
                exec_kill_failed(s, late.client, late.path, late.timeout_ms, late.kill_of,
                                 "the guest's kill did not finish within 10 s");
            else
                exec_kill(s, &late);    /* the client hears once the kill has run (or could not) */
            continue;
        }
        x->poll_at = 0;
        json_object *args = json_object_new_object();
        json_object_object_add(args, "pid", json_object_new_int64(x->pid));
        struct qv_err e = {0};
        unsigned id = x->id;
        if (agent_call(s, "guest-exec-status", args, EXEC_STATUS_TIMEOUT_MS, 0, on_exec_status, (void *)(uintptr_t)id,
                       &e) < 0 && (x = exec_find(ch, id))) {
            sup_reply_error(s, x->client, e.code, "%s", e.msg);
            exec_remove(ch, x);
        }
    }
}

static uint64_t min_deadline(uint64_t a, uint64_t b)
{
    return !a ? b : !b ? a : a < b ? a : b;
}

uint64_t agent_exec_next_deadline(struct sup *s)
{
    uint64_t next = 0;
    for (struct exec_op *x = s->agent ? s->agent->execs : NULL; x; x = x->next)
        next = min_deadline(next, min_deadline(x->poll_at, x->deadline));
    for (struct exec_input *in = s->agent ? s->agent->inputs : NULL; in; in = in->next)
        next = min_deadline(next, in->touched + EXEC_INPUT_IDLE_MS);
    return next;
}

void agent_exec_wind_down(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    while (ch && ch->execs) {
        struct exec_op *x = ch->execs;
        ch->execs = x->next;
        sup_reply_error(s, x->client, -EIO, "%s: %s: the VM stopped while the command ran", s->def.name, x->path);
        free(x);
    }
}

struct exec_start {
    unsigned client;
    int timeout_ms;
    char path[256];
};

static void on_exec_started(struct sup *s, void *ctx, json_object *ret, const struct qv_err *err)
{
    struct exec_start *st = ctx;
    json_object *pid;
    if (err) {
        sup_reply_error(s, st->client, err->code, "%s", err->msg);
    } else if (!json_object_object_get_ex(ret, "pid", &pid) || !json_object_is_type(pid, json_type_int)) {
        sup_reply_error(s, st->client, -EIO, "%s: guest-exec: the agent's reply has no pid", s->def.name);
    } else {
        struct agent_chan *ch = agent_chan_get(s);
        struct exec_op *x = qv_xcalloc(1, sizeof(*x));
        x->id = ++ch->next_exec_id;
        x->client = st->client;
        x->pid = json_object_get_int64(pid);
        x->timeout_ms = st->timeout_ms;
        x->deadline = monotonic_ms() + (uint64_t)st->timeout_ms;
        x->poll_ms = EXEC_POLL_MIN_MS;
        x->poll_at = monotonic_ms() + x->poll_ms;
        snprintf(x->path, sizeof(x->path), "%s", st->path);
        x->next = ch->execs;
        ch->execs = x;
    }
    free(st);
}

static int string_array(json_object *spec, const char *key, json_object **out, struct qv_err *e)
{
    json_object *v;
    *out = NULL;
    if (!json_object_object_get_ex(spec, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_array))
        return qv_fail(e, -EINVAL, "exec: \"%s\" must be an array of strings", key);
    for (size_t i = 0; i < json_object_array_length(v); i++)
        if (!json_object_is_type(json_object_array_get_idx(v, i), json_type_string))
            return qv_fail(e, -EINVAL, "exec: \"%s\"[%zu] must be a string", key, i);
    *out = v;
    return 0;
}

static struct exec_input *input_find(struct agent_chan *ch, unsigned client, bool unlink)
{
    for (struct exec_input **pp = &ch->inputs; *pp; pp = &(*pp)->next) {
        struct exec_input *in = *pp;
        if (in->client != client)
            continue;
        if (unlink)
            *pp = in->next;
        return in;
    }
    return NULL;
}

static void input_free(struct exec_input *in)
{
    buf_free(&in->b64);
    free(in);
}

int agent_exec_input(struct sup *s, unsigned client, const char *b64, struct qv_err *e)
{
    size_t n = strlen(b64);
    if (n % 4 || strspn(b64, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != n)
        return qv_fail(e, -EINVAL, "%s: exec-input: \"data\" must be base64 of a multiple of 3 bytes", s->def.name);
    if (!s->def.agent)
        return qv_fail(e, -ENODEV, "%s has no guest agent channel (define it with --agent, or \"agent\": true)",
                       s->def.name);
    struct agent_chan *ch = agent_chan_get(s);
    struct exec_input *in = input_find(ch, client, false);
    if (!in) {
        in = qv_xcalloc(1, sizeof(*in));
        in->client = client;
        in->next = ch->inputs;
        ch->inputs = in;
    }
    size_t held = 0;    /* all clients together: twice what one may send */
    for (struct exec_input *o = ch->inputs; o; o = o->next)
        held += o->b64.len;
    if (in->b64.len + n > EXEC_INPUT_MAX || held + n > 2 * (size_t)EXEC_INPUT_MAX) {
        bool mine = in->b64.len + n > EXEC_INPUT_MAX;
        input_find(ch, client, true);
        input_free(in);
        if (mine)
            return qv_fail(e, -E2BIG, "%s: exec: stdin larger than %u MiB", s->def.name, EXEC_INPUT_MIB);
        return qv_fail(e, -EBUSY, "%s: exec: other clients' stdin fills what the supervisor keeps (%u MiB); try again "
                       "later", s->def.name, 2 * EXEC_INPUT_MIB);
    }
    buf_add(&in->b64, b64, n);
    in->touched = monotonic_ms();
    return 0;
}

/* Pieces whose client never sent its exec (it died) are dropped after a while. */
static void inputs_expire(struct agent_chan *ch, uint64_t now)
{
    for (struct exec_input **pp = &ch->inputs; *pp;) {
        struct exec_input *in = *pp;
        if (now - in->touched >= EXEC_INPUT_IDLE_MS) {
            *pp = in->next;
            input_free(in);
        } else {
            pp = &in->next;
        }
    }
}

void agent_exec_inputs_free(struct sup *s)
{
    struct agent_chan *ch = s->agent;
    while (ch && ch->inputs) {
        struct exec_input *in = ch->inputs;
        ch->inputs = in->next;
        input_free(in);
    }
}

int agent_exec(struct sup *s, unsigned client, json_object *spec, struct qv_err *e)
{
    json_object *path, *v, *argv = NULL, *env = NULL;
    if (!json_object_object_get_ex(spec, "path", &path) || !json_object_is_type(path, json_type_string) ||
        !*json_object_get_string(path))
        return qv_fail(e, -EINVAL, "exec: \"path\" (the program to run in the guest) is missing");
    int timeout_ms = 0;
    if (json_object_object_get_ex(spec, "timeout_ms", &v)) {
        if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) <= 0 ||
            json_object_get_int64(v) > 86400000)
            return qv_fail(e, -EINVAL, "exec: \"timeout_ms\" must be an integer from 1 to 86400000");
        timeout_ms = json_object_get_int(v);
    }
    if (string_array(spec, "args", &argv, e) < 0 || string_array(spec, "env", &env, e) < 0)
        return e->code;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "path", json_object_get(path));
    if (argv)
        json_object_object_add(args, "arg", json_object_get(argv));
    if (env)
        json_object_object_add(args, "env", json_object_get(env));
    if (json_object_object_get_ex(spec, "input", &v)) {
        if (!json_object_is_type(v, json_type_string)) {
            json_object_put(args);
            return qv_fail(e, -EINVAL, "exec: \"input\" must be a base64 string");
        }
        json_object_object_add(args, "input-data", json_object_get(v));
    }
    if (json_object_object_get_ex(spec, "input_pending", &v) && json_object_get_boolean(v)) {
        struct exec_input *in = s->agent ? input_find(s->agent, client, true) : NULL;
        if (!in) {
            json_object_put(args);
            return qv_fail(e, -EINVAL, "%s: exec: no stdin was sent ahead (exec-input) on this connection",
                           s->def.name);
        }
        json_object_object_add(args, "input-data", json_object_new_string_len(in->b64.p ? in->b64.p : "",
                                                                              (int)in->b64.len));
        input_free(in);
    }
    json_object_object_add(args, "capture-output", json_object_new_boolean(true));
    struct exec_start *st = qv_xcalloc(1, sizeof(*st));
    st->client = client;
    st->timeout_ms = timeout_ms ? timeout_ms : AGENT_EXEC_TIMEOUT_MS;
    snprintf(st->path, sizeof(st->path), "%s", json_object_get_string(path));
    int r = agent_call(s, "guest-exec", args, AGENT_TIMEOUT_MS, 0, on_exec_started, st, e);
    if (r < 0)
        free(st);
    return r;
}
