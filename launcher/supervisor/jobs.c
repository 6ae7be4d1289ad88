/* QEMU's jobs as the supervisor follows them: block-stream, block-commit,
 * blockdev-mirror and the generic snapshot-save/load/delete. A job is recorded in
 * state.json before its command goes out, followed through JOB_STATUS_CHANGE and a
 * query-jobs poll while it runs (progress for `status`, and whatever event was
 * missed while the monitor reconnected), carried on when it becomes ready (a pivot
 * asked for is sent then) and, once QEMU concluded it, handed to its kind's on_done
 * with QEMU's error, then dismissed and forgotten. Block jobs run with
 * auto-dismiss off and snapshot jobs always need a dismissal, so a concluded job
 * waits in QEMU, error and all, until a supervisor has seen it: one killed meanwhile
 * leaves it to its successor, which reads query-jobs when it takes over. Nothing
 * here waits: every step is a QMP completion. */
#include <stdlib.h>
#include <string.h>

#include "launcher/supervisor/internal.h"

/* The kinds a successor can carry on: each file with a kind of job adds its row. */
static const struct sup_job_ops *const job_kinds[] = {
    &block_pull_ops, &block_commit_ops, &block_active_commit_ops, &block_copy_ops,
    &snapshot_save_ops, &snapshot_load_ops, &snapshot_delete_ops, &snapshot_merge_ops, &snapshot_start_load_ops,
    NULL,
};

const struct sup_job_ops *sup_job_ops_find(const char *kind)
{
    for (size_t i = 0; kind && job_kinds[i]; i++)
        if (strcmp(job_kinds[i]->kind, kind) == 0)
            return job_kinds[i];
    return NULL;
}

/* QEMU's words without the class most errors carry ("GenericError: "). */
static const char *qemu_says(const char *msg)
{
    static const char generic[] = "GenericError: ";
    return strncmp(msg, generic, sizeof(generic) - 1) == 0 ? msg + sizeof(generic) - 1 : msg;
}

static bool is_block_job_cmd(const char *cmd)
{
    return strcmp(cmd, "block-stream") == 0 || strcmp(cmd, "block-commit") == 0 ||
           strcmp(cmd, "blockdev-mirror") == 0 || strcmp(cmd, "blockdev-backup") == 0;
}

static void job_clear(struct sup_job *j)
{
    if (j->data)
        json_object_put(j->data);
    if (j->result)
        json_object_put(j->result);
    struct sup *s = j->sup;
    unsigned pending = j->pending;
    memset(j, 0, sizeof(*j));
    j->sup = s;
    j->pending = pending;
}

/* A command about job j: its reply comes to done(j, ...), unless QEMU's monitor is
 * freed first (then never: nothing was allocated for it). */
static int job_send(struct sup *s, struct sup_job *j, const char *cmd, json_object *args, int timeout,
                    qmp_reply_fn done)
{
    if (!s->qmp) {
        json_object_put(args);
        return -ECONNRESET;
    }
    int r = qmp_send(s->qmp, cmd, args, NULL, 0, timeout, 0, done, j);
    if (r == 0)
        j->pending++;
    return r;
}

/* The job a reply is for: NULL when it was forgotten meanwhile. */
static struct sup_job *replied(void *ctx)
{
    struct sup_job *j = ctx;
    j->pending--;
    return j->used ? j : NULL;
}

struct sup_job *sup_job_find(struct sup *s, const char *key)
{
    for (int i = 0; key && i < SUP_JOBS_MAX; i++) {
        struct sup_job *j = &s->jobs[i];
        if (j->used && (strcmp(j->id, key) == 0 || (j->disk[0] && strcmp(j->disk, key) == 0)))
            return j;
    }
    return NULL;
}

static struct sup_job *find_by_id(struct sup *s, const char *id)
{
    for (int i = 0; id && i < SUP_JOBS_MAX; i++)
        if (s->jobs[i].used && strcmp(s->jobs[i].id, id) == 0)
            return &s->jobs[i];
    return NULL;
}

/* ---- state.json ---- */

void sup_jobs_record(struct sup *s)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < SUP_JOBS_MAX; i++) {
        const struct sup_job *j = &s->jobs[i];
        if (!j->used)
            continue;
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(j->id));
        json_object_object_add(o, "kind", json_object_new_string(j->ops->kind));
        json_object_object_add(o, "disk", json_object_new_string(j->disk));
        json_object_object_add(o, "pivot", json_object_new_boolean(j->pivot));
        json_object_object_add(o, "finish", json_object_new_boolean(j->finish));
        json_object_object_add(o, "started_ms", json_object_new_int64((int64_t)j->started_ms));
        if (j->data)
            json_object_object_add(o, "data", json_object_get(j->data));
        json_object_array_add(a, o);
    }
    if (!s->rs.resources)
        s->rs.resources = json_object_new_object();
    json_object_object_add(s->rs.resources, "jobs", a);
    json_object_object_add(s->rs.resources, "job_seq", json_object_new_int64(s->job_seq));
    sup_save_state(s);
}

/* ---- telling others ---- */

json_object *sup_job_json(const struct sup_job *j)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(j->id));
    json_object_object_add(o, "kind", json_object_new_string(j->ops->kind));
    if (j->disk[0])
        json_object_object_add(o, "disk", json_object_new_string(j->disk));
    json_object_object_add(o, "status", json_object_new_string(j->status));
    json_object_object_add(o, "current", json_object_new_int64(j->current));
    json_object_object_add(o, "total", json_object_new_int64(j->total));
    if (j->pivot)
        json_object_object_add(o, "pivot", json_object_new_boolean(true));
    if (j->finish)
        json_object_object_add(o, "finish", json_object_new_boolean(true));
    if (j->data)
        json_object_object_add(o, "data", json_object_get(j->data));
    return o;
}

json_object *sup_jobs_json(struct sup *s)
{
    json_object *a = NULL;
    for (int i = 0; i < SUP_JOBS_MAX; i++) {
        if (!s->jobs[i].used)
            continue;
        if (!a)
            a = json_object_new_array();
        json_object_array_add(a, sup_job_json(&s->jobs[i]));
    }
    return a;
}

/* QVISOR_JOB on the events stream: every change of a job's status, and its end. */
static void job_event(struct sup *s, const struct sup_job *j, const char *status, const char *error)
{
    json_object *o = sup_job_json(j);
    json_object_object_add(o, "status", json_object_new_string(status));
    if (error)
        json_object_object_add(o, "error", json_object_new_string(error));
    ctl_broadcast_event(s, "QVISOR_JOB", o, realtime_ms() * 1000);
    json_object_put(o);
}

/* ---- the end of a job ---- */

static void answer_all(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    unsigned clients[SUP_JOB_WAITERS + 1];
    size_t n = 0;
    if (j->start_client)
        clients[n++] = j->start_client;
    for (int i = 0; i < SUP_JOB_WAITERS; i++)
        if (j->waiters[i])
            clients[n++] = j->waiters[i];
    j->start_client = 0;
    memset(j->waiters, 0, sizeof(j->waiters));
    for (size_t i = 0; i < n; i++) {
        if (err) {
            sup_reply_error(s, clients[i], err->code ? err->code : -EIO, "%s", err->msg);
            continue;
        }
        json_object *o = json_object_new_object();
        json_object *info = sup_job_json(j);
        json_object_object_add(info, "status", json_object_new_string("completed"));
        json_object_object_add(o, "job", info);
        if (j->result)
            json_object_object_add(o, "result", json_object_get(j->result));
        sup_reply_json(s, clients[i], o);
        json_object_put(o);
    }
}

/* on_done has run and QEMU forgot the job (or never had it): the end is told and
 * the slot freed. err: the job's own failure, if any. */
static void job_forget(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    struct qv_err final = {0};
    if (err)
        final = *err;
    else if (j->fail.code)
        final = j->fail;
    if (j->ops->on_gone)
        j->ops->on_gone(s, j, err);
    const char *outcome = !final.code ? "completed" : final.code == -ECANCELED ? "cancelled" : "failed";
    if (final.code)
        sup_log(s, "job %s (%s%s%s) %s: %s", j->id, j->ops->kind, j->disk[0] ? " of " : "", j->disk, outcome,
                final.msg);
    else
        sup_log(s, "job %s (%s%s%s) completed", j->id, j->ops->kind, j->disk[0] ? " of " : "", j->disk);
    job_event(s, j, outcome, final.code ? final.msg : NULL);
    answer_all(s, j, final.code ? &final : NULL);
    job_clear(j);
    sup_jobs_record(s);
}

static void on_dismissed(void *ctx, json_object *ret, const struct qv_err *qerr)
{
    (void)ret;
    struct sup_job *j = replied(ctx);
    if (!j)
        return;
    if (qerr)
        sup_log(j->sup, "job %s: job-dismiss: %s", j->id, qerr->msg);
    struct qv_err end = j->end;
    job_forget(j->sup, j, end.code ? &end : NULL);
}

/* QEMU concluded the job (err: its error): the kind finishes, then QEMU forgets it. */
static void job_concluded(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    if (j->ending)
        return;
    j->ending = true;
    snprintf(j->status, sizeof(j->status), "concluded");
    if (err)
        j->end = *err;
    j->ops->on_done(s, j, err);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "id", json_object_new_string(j->id));
    if (job_send(s, j, "job-dismiss", args, QMP_TIMEOUT_DEFAULT, on_dismissed) < 0) {
        struct qv_err end = j->end;
        job_forget(s, j, end.code ? &end : NULL);
    }
}

/* A job that QEMU does not have (any more), or whose QEMU is gone: on_done hears why,
 * nothing is dismissed. */
static void job_lost(struct sup *s, struct sup_job *j, const struct qv_err *why)
{
    if (j->ending)
        return;
    j->ending = true;
    j->ops->on_done(s, j, why);
    job_forget(s, j, why);
}

/* ---- following a job ---- */

static void job_complete_now(struct sup *s, struct sup_job *j);
static void job_soft_cancel_now(struct sup *s, struct sup_job *j);

/* What QEMU says about the job now (a query-jobs entry, or only a status from an
 * event); error: the entry's "error" when concluded. */
static void job_update(struct sup *s, struct sup_job *j, const char *status, json_object *info)
{
    json_object *v;
    if (j->ending)
        return;
    if (info && json_object_object_get_ex(info, "current-progress", &v))
        j->current = json_object_get_int64(v);
    if (info && json_object_object_get_ex(info, "total-progress", &v))
        j->total = json_object_get_int64(v);
    if (strcmp(status, j->status) != 0) {
        snprintf(j->status, sizeof(j->status), "%s", status);
        job_event(s, j, status, NULL);
    }
    if (strcmp(status, "ready") == 0 && !j->ready_seen) {
        j->ready_seen = true;
        sup_log(s, "job %s (%s of %s) is ready", j->id, j->ops->kind, j->disk);
        if (j->ops->on_ready)
            j->ops->on_ready(s, j, NULL);
        if (j->pivot)
            job_complete_now(s, j);
        else if (j->finish)
            job_soft_cancel_now(s, j);
    } else if (strcmp(status, "concluded") == 0) {
        if (!info)
            return;     /* the error comes with query-jobs: the poll that follows the event */
        struct qv_err err = {0};
        bool cancelled = j->cancelling && !j->finish;
        if (json_object_object_get_ex(info, "error", &v) || cancelled)
            qv_fail(&err, cancelled ? -ECANCELED : -EIO, "%s: %s of %s: %s", s->def.name, j->ops->kind,
                    j->disk[0] ? j->disk : "the VM", cancelled ? "cancelled" : json_object_get_string(v));
        job_concluded(s, j, err.code ? &err : NULL);
    }
}

static void jobs_poll(struct sup *s);

static bool jobs_active(struct sup *s)
{
    for (int i = 0; i < SUP_JOBS_MAX; i++)
        if (s->jobs[i].used && !s->jobs[i].ending)
            return true;
    return false;
}

static void on_query_jobs(void *ctx, json_object *ret, const struct qv_err *err)
{
    struct sup *s = ctx;
    s->job_polling = false;
    if (err) {
        sup_log(s, "query-jobs: %s", err->msg);
    } else {
        for (int i = 0; i < SUP_JOBS_MAX; i++) {
            struct sup_job *j = &s->jobs[i];
            if (!j->used || j->ending || strcmp(j->status, "starting") == 0)
                continue;   /* a job whose start is not answered yet is not listed yet */
            json_object *info = NULL;
            for (size_t k = 0; k < json_object_array_length(ret) && !info; k++) {
                json_object *o = json_object_array_get_idx(ret, k), *v;
                if (json_object_object_get_ex(o, "id", &v) && strcmp(json_object_get_string(v), j->id) == 0)
                    info = o;
            }
            json_object *st;
            if (info && json_object_object_get_ex(info, "status", &st)) {
                job_update(s, j, json_object_get_string(st), info);
            } else {
                struct qv_err lost = {0};
                qv_fail(&lost, -EIO, "%s: %s of %s: QEMU no longer has job %s (dismissed by someone else?)",
                        s->def.name, j->ops->kind, j->disk[0] ? j->disk : "the VM", j->id);
                job_lost(s, j, &lost);
            }
        }
    }
    s->job_poll_at = jobs_active(s) ? monotonic_ms() + JOB_POLL_MS : 0;
    if (s->job_poll_again) {
        s->job_poll_again = false;
        jobs_poll(s);
    }
}

static void jobs_poll(struct sup *s)
{
    if (s->job_polling) {
        s->job_poll_again = true;
        return;
    }
    if (!s->qmp || !qmp_ready(s->qmp))
        return;     /* the timer tries again; a reconnected monitor is polled then */
    if (qmp_send(s->qmp, "query-jobs", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, 0, on_query_jobs, s) == 0)
        s->job_polling = true;
}

uint64_t sup_jobs_next_deadline(struct sup *s)
{
    uint64_t poll = s->job_polling ? 0 : s->job_poll_at, child = block_next_deadline(s);
    return !poll ? child : !child ? poll : poll < child ? poll : child;
}

void sup_jobs_expire(struct sup *s, uint64_t now)
{
    block_expire(s, now);
    if (s->job_poll_at && now >= s->job_poll_at && !s->job_polling) {
        s->job_poll_at = now + JOB_POLL_MS;
        jobs_poll(s);
    }
}

void sup_jobs_event(struct sup *s, const char *event, json_object *data)
{
    if (strcmp(event, "JOB_STATUS_CHANGE") != 0)
        return;
    json_object *id, *st;
    if (!json_object_object_get_ex(data, "id", &id) || !json_object_object_get_ex(data, "status", &st))
        return;
    struct sup_job *j = find_by_id(s, json_object_get_string(id));
    if (!j || j->ending)
        return;
    const char *status = json_object_get_string(st);
    if (strcmp(j->status, "starting") != 0 || strcmp(status, "concluded") != 0)
        job_update(s, j, status, NULL);
    if (strcmp(status, "concluded") == 0 || strcmp(status, "ready") == 0)
        jobs_poll(s);   /* concluded: its error; ready: its progress */
}

/* ---- starting ---- */

static void on_started(void *ctx, json_object *ret, const struct qv_err *err);

struct sup_job *sup_job_start(struct sup *s, const struct sup_job_ops *ops, const char *disk, const char *cmd,
                              json_object *args, json_object *data, unsigned client, bool wait, struct qv_err *e)
{
    struct sup_job *j = NULL;
    const char *busy = NULL;
    for (int i = 0; i < SUP_JOBS_MAX; i++) {
        if (!s->jobs[i].used && !s->jobs[i].pending && !j)
            j = &s->jobs[i];
        else if (s->jobs[i].used && disk && disk[0] && strcmp(s->jobs[i].disk, disk) == 0)
            busy = s->jobs[i].id;
    }
    int r = 0;
    if (busy) {
        struct sup_job *b = find_by_id(s, busy);
        r = qv_fail(e, -EBUSY, "%s: %s has a %s job running already (%s); wait for it, or `qvisor block job %s %s "
                    "--abort`", s->def.name, disk, b->ops->kind, busy, s->def.name, disk);
    } else if (!j) {
        r = qv_fail(e, -EBUSY, "%s: %d jobs run already; wait for one to end", s->def.name, SUP_JOBS_MAX);
    } else if (!s->qmp || !qmp_ready(s->qmp)) {
        r = qv_fail(e, -EIO, "%s: QEMU's monitor connection is lost; try again once it is back", s->def.name);
    }
    if (r < 0) {
        json_object_put(args);
        if (data)
            json_object_put(data);
        return NULL;
    }
    job_clear(j);
    j->sup = s;
    j->used = true;
    j->ops = ops;
    snprintf(j->disk, sizeof(j->disk), "%s", disk ? disk : "");
    snprintf(j->id, sizeof(j->id), "qv%u-%s%s%s", s->job_seq++, ops->kind, j->disk[0] ? "-" : "", j->disk);
    snprintf(j->status, sizeof(j->status), "starting");
    j->data = data;
    j->started_ms = realtime_ms();
    if (wait)
        j->waiters[0] = client;
    else
        j->start_client = client;
    json_object_object_add(args, "job-id", json_object_new_string(j->id));
    if (is_block_job_cmd(cmd))
        json_object_object_add(args, "auto-dismiss", json_object_new_boolean(false));
    sup_jobs_record(s);     /* before it exists: a successor knows what it is for */
    sup_log(s, "job %s: %s%s%s", j->id, cmd, j->disk[0] ? " on " : "", j->disk);
    if (job_send(s, j, cmd, args, QMP_TIMEOUT_JOB, on_started) < 0) {
        /* nothing reached QEMU: as if it had been refused before the send, the caller
         * undoes what it prepared and answers its client */
        qv_fail(e, -EIO, "%s: QEMU's monitor connection is lost", s->def.name);
        job_clear(j);
        sup_jobs_record(s);
        return NULL;
    }
    return j;
}

static void on_started(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup_job *j = replied(ctx);
    if (!j)
        return;
    struct sup *s = j->sup;
    if (err && (err->code == -ECONNRESET || err->code == -ETIMEDOUT)) {
        /* no answer: whether QEMU has the job, the next query-jobs tells */
        sup_log(s, "job %s: no answer to its start (%s); asking QEMU", j->id, err->msg);
        snprintf(j->status, sizeof(j->status), "unknown");
        return;
    }
    if (err) {
        struct qv_err refused = {0};
        qv_fail(&refused, err->code ? err->code : -EIO, "%s: %s of %s: QEMU refused it: %s", s->def.name,
                j->ops->kind, j->disk[0] ? j->disk : "the VM", qemu_says(err->msg));
        job_lost(s, j, &refused);
        return;
    }
    if (strcmp(j->status, "starting") == 0)
        snprintf(j->status, sizeof(j->status), "created");
    job_event(s, j, "started", NULL);
    if (j->start_client) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "job", sup_job_json(j));
        sup_reply_json(s, j->start_client, o);
        json_object_put(o);
        j->start_client = 0;
    }
    jobs_poll(s);       /* events that came before this reply were not ours yet */
}

/* ---- steering ---- */

static void on_steered(void *ctx, json_object *ret, const struct qv_err *err)
{
    (void)ret;
    struct sup_job *j = replied(ctx);
    if (!j || !err)
        return;
    sup_log(j->sup, "job %s: %s", j->id, err->msg);
    j->completing = false;
    snprintf(j->fail.msg, sizeof(j->fail.msg), "%s: job %s: %s", j->sup->def.name, j->id, qemu_says(err->msg));
    j->fail.code = err->code ? err->code : -EIO;
}

static int steer(struct sup *s, struct sup_job *j, const char *cmd, json_object *args, struct qv_err *e)
{
    if (job_send(s, j, cmd, args, QMP_TIMEOUT_DEFAULT, on_steered) < 0)
        return qv_fail(e, -EIO, "%s: QEMU's monitor connection is lost", s->def.name);
    return 0;
}

static json_object *id_args(const char *key, const char *id)
{
    json_object *a = json_object_new_object();
    json_object_object_add(a, key, json_object_new_string(id));
    return a;
}

static void job_complete_now(struct sup *s, struct sup_job *j)
{
    struct qv_err e = {0};
    if (j->completing)
        return;
    j->completing = true;
    sup_log(s, "job %s: completing (pivot)", j->id);
    if (steer(s, j, "job-complete", id_args("id", j->id), &e) < 0)
        j->completing = false;
}

static void job_soft_cancel_now(struct sup *s, struct sup_job *j)
{
    struct qv_err e = {0};
    if (j->cancelling)
        return;
    j->cancelling = true;
    sup_log(s, "job %s: finishing without a pivot", j->id);
    json_object *a = id_args("device", j->id);
    json_object_object_add(a, "force", json_object_new_boolean(false));
    if (steer(s, j, "block-job-cancel", a, &e) < 0)
        j->cancelling = false;
}

int sup_job_complete(struct sup *s, struct sup_job *j, struct qv_err *e)
{
    if (j->ending || j->cancelling)
        return qv_fail(e, -EBUSY, "%s: job %s is ending already", s->def.name, j->id);
    if (!j->ops->on_ready)
        return qv_fail(e, -EINVAL, "%s: a %s job has no pivot: it ends by itself", s->def.name, j->ops->kind);
    j->pivot = true;
    j->finish = false;
    sup_jobs_record(s);
    if (strcmp(j->status, "ready") == 0)
        job_complete_now(s, j);
    else
        sup_log(s, "job %s: pivot once it is ready", j->id);
    return 0;
}

int sup_job_cancel(struct sup *s, struct sup_job *j, bool soft, struct qv_err *e)
{
    if (j->ending)
        return qv_fail(e, -EBUSY, "%s: job %s is ending already", s->def.name, j->id);
    if (soft) {
        if (!j->ops->on_ready)
            return qv_fail(e, -EINVAL, "%s: a %s job cannot end without its change; --abort stops it",
                           s->def.name, j->ops->kind);
        j->finish = true;
        j->pivot = false;
        sup_jobs_record(s);
        if (strcmp(j->status, "ready") == 0)
            job_soft_cancel_now(s, j);
        return 0;
    }
    if (j->cancelling && !j->finish)
        return 0;
    j->cancelling = true;
    j->finish = j->pivot = false;
    sup_jobs_record(s);
    sup_log(s, "job %s: cancelling", j->id);
    int r = steer(s, j, "job-cancel", id_args("id", j->id), e);
    if (r < 0)
        j->cancelling = false;
    return r;
}

int sup_job_wait(struct sup *s, struct sup_job *j, unsigned client, struct qv_err *e)
{
    for (int i = 0; i < SUP_JOB_WAITERS; i++) {
        if (!j->waiters[i]) {
            j->waiters[i] = client;
            return 0;
        }
    }
    return qv_fail(e, -EBUSY, "%s: %d clients wait for job %s already", s->def.name, SUP_JOB_WAITERS, j->id);
}

/* ---- QEMU's end, a new supervisor ---- */

void sup_jobs_forget_all(struct sup *s, const char *why)
{
    for (int i = 0; i < SUP_JOBS_MAX; i++) {
        struct sup_job *j = &s->jobs[i];
        if (!j->used)
            continue;
        struct qv_err e = {0};
        qv_fail(&e, -ESRCH, "%s: %s of %s: %s", s->def.name, j->ops->kind, j->disk[0] ? j->disk : "the VM", why);
        if (j->ending) {
            /* on_done ran; only the dismissal was left, and QEMU took the job along */
            struct qv_err end = j->end;
            job_forget(s, j, end.code ? &end : NULL);
        } else {
            job_lost(s, j, &e);
        }
        j->pending = 0;     /* QEMU's monitor is gone with its replies */
    }
    s->job_poll_at = 0;
    s->job_polling = s->job_poll_again = false;
    block_forget(s);
}

void sup_jobs_reattach(struct sup *s)
{
    json_object *a, *v;
    if (!s->rs.resources)
        return;
    if (json_object_object_get_ex(s->rs.resources, "job_seq", &v))
        s->job_seq = (unsigned)json_object_get_int64(v);
    if (!json_object_object_get_ex(s->rs.resources, "jobs", &a) || !json_object_array_length(a))
        return;
    json_object *jobs = NULL;
    struct qv_err qerr = {0};
    if (qmp_call(s->qmp, "query-jobs", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &jobs, &qerr) < 0) {
        sup_log(s, "warning: query-jobs: %s; the recorded jobs are followed from their next event", qerr.msg);
    }
    int slot = 0;
    for (size_t i = 0; i < json_object_array_length(a) && slot < SUP_JOBS_MAX; i++) {
        json_object *o = json_object_array_get_idx(a, i);
        const char *kind = json_object_object_get_ex(o, "kind", &v) ? json_object_get_string(v) : "";
        const char *id = json_object_object_get_ex(o, "id", &v) ? json_object_get_string(v) : "";
        const struct sup_job_ops *ops = sup_job_ops_find(kind);
        if (!ops || !id[0] || strlen(id) >= sizeof(s->jobs[0].id)) {
            sup_log(s, "warning: recorded job \"%s\" of kind \"%s\" is unknown to this supervisor; left to QEMU",
                    id, kind);
            continue;
        }
        struct sup_job *j = &s->jobs[slot++];
        job_clear(j);
        j->sup = s;
        j->used = true;
        j->ops = ops;
        snprintf(j->id, sizeof(j->id), "%s", id);
        if (json_object_object_get_ex(o, "disk", &v))
            snprintf(j->disk, sizeof(j->disk), "%s", json_object_get_string(v));
        j->pivot = json_object_object_get_ex(o, "pivot", &v) && json_object_get_boolean(v);
        j->finish = json_object_object_get_ex(o, "finish", &v) && json_object_get_boolean(v);
        j->started_ms = json_object_object_get_ex(o, "started_ms", &v) ? (uint64_t)json_object_get_int64(v) : 0;
        if (json_object_object_get_ex(o, "data", &v))
            j->data = json_object_get(v);
        snprintf(j->status, sizeof(j->status), "unknown");
    }
    bool known = jobs != NULL;
    for (int i = 0; i < slot; i++) {
        struct sup_job *j = &s->jobs[i];
        json_object *info = NULL, *st;
        for (size_t k = 0; known && k < json_object_array_length(jobs) && !info; k++) {
            json_object *o = json_object_array_get_idx(jobs, k);
            if (json_object_object_get_ex(o, "id", &v) && strcmp(json_object_get_string(v), j->id) == 0)
                info = o;
        }
        if (info && json_object_object_get_ex(info, "status", &st)) {
            sup_log(s, "job %s (%s%s%s) carries on: %s", j->id, j->ops->kind, j->disk[0] ? " of " : "", j->disk,
                    json_object_get_string(st));
            job_update(s, j, json_object_get_string(st), info);
        } else if (known) {
            struct qv_err gone = {0};
            qv_fail(&gone, -EIO, "%s: %s of %s: job %s is gone from QEMU (it never started, or was dismissed)",
                    s->def.name, j->ops->kind, j->disk[0] ? j->disk : "the VM", j->id);
            job_lost(s, j, &gone);
        }
    }
    if (jobs)
        json_object_put(jobs);
    sup_jobs_record(s);
    s->job_poll_at = jobs_active(s) ? monotonic_ms() + JOB_POLL_MS : 0;
}
