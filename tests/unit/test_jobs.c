/* The job tracker (launcher/supervisor/jobs.c) against the fake QMP peer: a job is
 * recorded before its command goes out, carries its job-id and auto-dismiss off,
 * follows JOB_STATUS_CHANGE and query-jobs (progress into `status`), sends the pivot
 * it was asked for once ready, hands QEMU's error to its kind when concluded, and is
 * dismissed and forgotten after; a refusal, a second job on the same disk and QEMU's
 * exit end it cleanly, every waiting client answered once. The definition follows a
 * disk's new image (vm_disk_image_update, disk_switched). */
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "tests/unit/sup_testlib.h"
#include "launcher/supervisor/ctl_verbs.h"

/* What the test kind saw. */
struct seen {
    int ready, done, gone;
    char done_err[1024];
    bool fail_own_part;
};
static struct seen seen;

static void kind_ready(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    (void)s;
    (void)j;
    (void)err;
    seen.ready++;
}

static void kind_done(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    (void)s;
    seen.done++;
    snprintf(seen.done_err, sizeof(seen.done_err), "%s", err ? err->msg : "");
    if (!err && seen.fail_own_part)
        qv_fail(&j->fail, -EIO, "the kind's own part failed");
    if (!err)
        j->result = json_object_new_string("merged");
}

static void kind_gone(struct sup *s, struct sup_job *j, const struct qv_err *err)
{
    (void)s, (void)j, (void)err;
    assert_int_equal(seen.gone, seen.done - 1);     /* once, after on_done */
    seen.gone++;
}

static const struct sup_job_ops test_kind = {"copy", kind_ready, kind_done, kind_gone};
static const struct sup_job_ops test_kind_no_ready = {"pull", NULL, kind_done, kind_gone};

/* A ctl client on a socketpair; the test reads its end. */
static unsigned add_client(struct fx *f, int *end)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct sup_client *c = ctl_client_add(f->s, sv[0]);
    c->owed = 1;
    *end = sv[1];
    return c->id;
}

/* The client's reply, if one came. */
static json_object *reply_of(int end)
{
    char buf[8192];
    struct pollfd p = {.fd = end, .events = POLLIN};
    if (poll(&p, 1, 200) <= 0)
        return NULL;
    ssize_t n = recv(end, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    if (n <= 0)
        return NULL;
    buf[n] = '\0';
    return json_tokener_parse(buf);
}

static void assert_no_reply(int end)
{
    struct pollfd p = {.fd = end, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0);
}

/* The supervisor's next command is `cmd`: its arguments, answered with `ret`. */
static json_object *answer(struct fx *f, const char *cmd, const char *ret)
{
    _cleanup_free_ char *id = NULL;
    json_object *c = peer_recv_cmd(&f->peer, f->s->qmp, cmd, &id);
    if (!c)
        fail_msg("expected %s: %s", cmd, f->peer.failure);
    if (strncmp(ret, "ERROR:", 6) == 0)
        assert_int_equal(peer_sendf(&f->peer, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"%s\"}, \"id\": \"%s\"}\r\n",
                                    ret + 6, id), 0);
    else
        assert_int_equal(peer_sendf(&f->peer, "{\"return\": %s, \"id\": \"%s\"}\r\n", ret, id), 0);
    drain(f);
    json_object *args = NULL;
    json_object_object_get_ex(c, "arguments", &args);
    json_object_get(args);
    json_object_put(c);
    return args;
}

static const char *str_at(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : "";
}

static json_object *recorded_jobs(struct fx *f)
{
    struct vm_runstate rs;
    struct qv_err e = {0};
    if (runstate_read(&f->paths, "vm1", &rs, &e) < 0)
        fail_msg("state.json: %s", e.msg);
    json_object *a = NULL;
    if (rs.resources && json_object_object_get_ex(rs.resources, "jobs", &a))
        json_object_get(a);
    runstate_free(&rs);
    return a;
}

static int setup(void **state)
{
    memset(&seen, 0, sizeof(seen));
    return fx_setup(state);
}

/* ---- a job's whole life ---- */

static void test_copy_pivots_when_ready(void **state)
{
    struct fx *f = *state;
    int end;
    unsigned client = add_client(f, &end);
    struct qv_err e = {0};
    json_object *args = json_object_new_object();
    json_object_object_add(args, "device", json_object_new_string("disk0-fmt"));
    struct sup_job *j = sup_job_start(f->s, &test_kind, "disk0", "blockdev-mirror", args,
                                      json_object_new_string("kind data"), client, false, &e);
    assert_non_null(j);
    /* recorded before QEMU heard of it */
    _cleanup_json_ json_object *rec = recorded_jobs(f);
    assert_int_equal(json_object_array_length(rec), 1);
    json_object *r0 = json_object_array_get_idx(rec, 0);
    assert_string_equal(str_at(r0, "kind"), "copy");
    assert_string_equal(str_at(r0, "disk"), "disk0");
    assert_string_equal(str_at(r0, "data"), "kind data");
    char id[48];
    snprintf(id, sizeof(id), "%s", j->id);
    _cleanup_json_ json_object *sent = answer(f, "blockdev-mirror", "{}");
    assert_string_equal(str_at(sent, "job-id"), id);
    json_object *ad;
    assert_true(json_object_object_get_ex(sent, "auto-dismiss", &ad) && !json_object_get_boolean(ad));
    /* the start is answered once QEMU accepted it */
    _cleanup_json_ json_object *rep = reply_of(end);
    assert_non_null(rep);
    json_object *job;
    assert_true(json_object_object_get_ex(rep, "job", &job));
    assert_string_equal(str_at(job, "id"), id);
    /* and progress comes from query-jobs into status */
    char jobs[256];
    snprintf(jobs, sizeof(jobs),
             "[{\"id\": \"%s\", \"type\": \"mirror\", \"status\": \"running\", \"current-progress\": 30, "
             "\"total-progress\": 100}]", id);
    json_object_put(answer(f, "query-jobs", jobs));
    _cleanup_json_ json_object *st = sup_status_json(f->s);
    json_object *list, *v;
    assert_true(json_object_object_get_ex(st, "jobs", &list));
    json_object *one = json_object_array_get_idx(list, 0);
    assert_string_equal(str_at(one, "status"), "running");
    assert_true(json_object_object_get_ex(one, "current", &v) && json_object_get_int64(v) == 30);
    /* the pivot is wanted before the job is ready: nothing goes out yet */
    assert_int_equal(sup_job_complete(f->s, j, &e), 0);
    expect_nothing(f);
    /* ready: on_ready, then job-complete */
    char data[128];
    snprintf(data, sizeof(data), "{\"id\": \"%s\", \"status\": \"ready\"}", id);
    event(f, "JOB_STATUS_CHANGE", data);
    assert_int_equal(seen.ready, 1);
    _cleanup_json_ json_object *complete = answer(f, "job-complete", "{}");
    assert_string_equal(str_at(complete, "id"), id);
    json_object_put(answer(f, "query-jobs", jobs));     /* the poll the ready event asked for */
    /* a client waits for the end */
    int end2;
    unsigned waiter = add_client(f, &end2);
    assert_int_equal(sup_job_wait(f->s, j, waiter, &e), 0);
    /* concluded: its error (none) from query-jobs, on_done, then job-dismiss */
    snprintf(data, sizeof(data), "{\"id\": \"%s\", \"status\": \"concluded\"}", id);
    event(f, "JOB_STATUS_CHANGE", data);
    assert_int_equal(seen.done, 0);
    snprintf(jobs, sizeof(jobs), "[{\"id\": \"%s\", \"type\": \"mirror\", \"status\": \"concluded\", "
             "\"current-progress\": 100, \"total-progress\": 100}]", id);
    json_object_put(answer(f, "query-jobs", jobs));
    assert_int_equal(seen.done, 1);
    assert_string_equal(seen.done_err, "");
    assert_no_reply(end2);      /* not before QEMU forgot the job */
    assert_int_equal(seen.gone, 0);     /* QEMU may still hold the job's nodes */
    _cleanup_json_ json_object *dis = answer(f, "job-dismiss", "{}");
    assert_int_equal(seen.gone, 1);
    assert_string_equal(str_at(dis, "id"), id);
    _cleanup_json_ json_object *fin = reply_of(end2);
    assert_non_null(fin);
    assert_true(json_object_object_get_ex(fin, "ok", &v) && json_object_get_boolean(v));
    assert_string_equal(str_at(fin, "result"), "merged");
    assert_null(sup_job_find(f->s, "disk0"));
    _cleanup_json_ json_object *after = recorded_jobs(f);
    assert_int_equal(json_object_array_length(after), 0);
    expect_nothing(f);
    close(end);
    close(end2);
}

static void test_error_reaches_waiter(void **state)
{
    struct fx *f = *state;
    int end;
    unsigned client = add_client(f, &end);
    struct qv_err e = {0};
    struct sup_job *j = sup_job_start(f->s, &test_kind_no_ready, "disk1", "block-stream", json_object_new_object(),
                                      NULL, client, true, &e);
    assert_non_null(j);
    char id[48], data[160], jobs[256];
    snprintf(id, sizeof(id), "%s", j->id);
    json_object_put(answer(f, "block-stream", "{}"));
    assert_no_reply(end);       /* --wait: answered at the end only */
    snprintf(jobs, sizeof(jobs), "[{\"id\": \"%s\", \"type\": \"stream\", \"status\": \"running\", "
             "\"current-progress\": 0, \"total-progress\": 10}]", id);
    json_object_put(answer(f, "query-jobs", jobs));
    /* no pivot for a job that ends by itself */
    assert_int_equal(sup_job_complete(f->s, j, &e), -EINVAL);
    snprintf(data, sizeof(data), "{\"id\": \"%s\", \"status\": \"concluded\"}", id);
    event(f, "JOB_STATUS_CHANGE", data);
    snprintf(jobs, sizeof(jobs), "[{\"id\": \"%s\", \"type\": \"stream\", \"status\": \"concluded\", "
             "\"current-progress\": 3, \"total-progress\": 10, \"error\": \"Input/output error\"}]", id);
    json_object_put(answer(f, "query-jobs", jobs));
    assert_int_equal(seen.done, 1);
    assert_non_null(strstr(seen.done_err, "vm1: pull of disk1: Input/output error"));
    json_object_put(answer(f, "job-dismiss", "{}"));
    _cleanup_json_ json_object *rep = reply_of(end);
    assert_non_null(rep);
    assert_non_null(strstr(str_at(rep, "error"), "pull of disk1: Input/output error"));
    assert_null(sup_job_find(f->s, "disk1"));
    close(end);
}

static void test_kind_failure_turns_success_into_error(void **state)
{
    struct fx *f = *state;
    int end;
    seen.fail_own_part = true;
    unsigned client = add_client(f, &end);
    struct qv_err e = {0};
    struct sup_job *j = sup_job_start(f->s, &test_kind_no_ready, "disk0", "block-commit", json_object_new_object(),
                                      NULL, client, true, &e);
    char id[48], jobs[256];
    snprintf(id, sizeof(id), "%s", j->id);
    json_object_put(answer(f, "block-commit", "{}"));
    snprintf(jobs, sizeof(jobs), "[{\"id\": \"%s\", \"status\": \"concluded\", \"current-progress\": 1, "
             "\"total-progress\": 1}]", id);
    json_object_put(answer(f, "query-jobs", jobs));     /* concluded at the first poll: no event needed */
    json_object_put(answer(f, "job-dismiss", "{}"));
    _cleanup_json_ json_object *rep = reply_of(end);
    assert_non_null(strstr(str_at(rep, "error"), "the kind's own part failed"));
    close(end);
}

static void test_refused_start_and_busy_disk(void **state)
{
    struct fx *f = *state;
    int end;
    unsigned client = add_client(f, &end);
    struct qv_err e = {0};
    struct sup_job *j = sup_job_start(f->s, &test_kind, "disk0", "blockdev-mirror", json_object_new_object(), NULL,
                                      client, false, &e);
    assert_non_null(j);
    /* a second job on the same disk is refused before anything is sent */
    struct qv_err e2 = {0};
    assert_null(sup_job_start(f->s, &test_kind, "disk0", "blockdev-mirror", json_object_new_object(), NULL, 0, false,
                              &e2));
    assert_int_equal(e2.code, -EBUSY);
    assert_non_null(strstr(e2.msg, "vm1: disk0 has a copy job running already"));
    json_object_put(answer(f, "blockdev-mirror", "ERROR:Permission conflict on node 'disk0-fmt'"));
    assert_int_equal(seen.done, 1);
    if (!strstr(seen.done_err, "QEMU refused it: Permission conflict"))
        fail_msg("on_done saw: %s", seen.done_err);
    _cleanup_json_ json_object *rep = reply_of(end);
    assert_non_null(strstr(str_at(rep, "error"), "vm1: copy of disk0: QEMU refused it: Permission conflict"));
    assert_null(sup_job_find(f->s, "disk0"));
    expect_nothing(f);      /* nothing to dismiss: QEMU never had it */
    close(end);
}

static void test_abort_and_soft_finish(void **state)
{
    struct fx *f = *state;
    int end;
    unsigned client = add_client(f, &end);
    struct qv_err e = {0};
    struct sup_job *j = sup_job_start(f->s, &test_kind, "disk0", "blockdev-mirror", json_object_new_object(), NULL,
                                      client, true, &e);
    char id[48], jobs[256], data[128];
    snprintf(id, sizeof(id), "%s", j->id);
    json_object_put(answer(f, "blockdev-mirror", "{}"));
    snprintf(jobs, sizeof(jobs), "[{\"id\": \"%s\", \"status\": \"running\", \"current-progress\": 1, "
             "\"total-progress\": 9}]", id);
    json_object_put(answer(f, "query-jobs", jobs));
    assert_int_equal(sup_job_cancel(f->s, j, false, &e), 0);
    _cleanup_json_ json_object *c = answer(f, "job-cancel", "{}");
    assert_string_equal(str_at(c, "id"), id);
    /* QEMU may conclude a cancelled job without an error: it is still a cancellation */
    snprintf(data, sizeof(data), "{\"id\": \"%s\", \"status\": \"concluded\"}", id);
    event(f, "JOB_STATUS_CHANGE", data);
    snprintf(jobs, sizeof(jobs), "[{\"id\": \"%s\", \"status\": \"concluded\", \"current-progress\": 1, "
             "\"total-progress\": 9}]", id);
    json_object_put(answer(f, "query-jobs", jobs));
    assert_non_null(strstr(seen.done_err, "copy of disk0: cancelled"));
    json_object_put(answer(f, "job-dismiss", "{}"));
    _cleanup_json_ json_object *rep = reply_of(end);
    json_object *v;
    assert_non_null(strstr(str_at(rep, "error"), "vm1: copy of disk0: cancelled"));

    /* --finish: a ready mirror ends without its pivot, by block-job-cancel force=false */
    int end2;
    unsigned c2 = add_client(f, &end2);
    j = sup_job_start(f->s, &test_kind, "disk0", "blockdev-mirror", json_object_new_object(), NULL, c2, true, &e);
    snprintf(id, sizeof(id), "%s", j->id);
    json_object_put(answer(f, "blockdev-mirror", "{}"));
    snprintf(jobs, sizeof(jobs), "[{\"id\": \"%s\", \"status\": \"running\", \"current-progress\": 1, "
             "\"total-progress\": 9}]", id);
    json_object_put(answer(f, "query-jobs", jobs));
    assert_int_equal(sup_job_cancel(f->s, j, true, &e), 0);
    expect_nothing(f);
    snprintf(data, sizeof(data), "{\"id\": \"%s\", \"status\": \"ready\"}", id);
    event(f, "JOB_STATUS_CHANGE", data);
    _cleanup_json_ json_object *soft = answer(f, "block-job-cancel", "{}");
    assert_string_equal(str_at(soft, "device"), id);
    assert_true(json_object_object_get_ex(soft, "force", &v) && !json_object_get_boolean(v));
    snprintf(jobs, sizeof(jobs), "[{\"id\": \"%s\", \"status\": \"concluded\", \"current-progress\": 9, "
             "\"total-progress\": 9}]", id);
    json_object_put(answer(f, "query-jobs", jobs));
    assert_string_equal(seen.done_err, "");     /* a finish is a success */
    json_object_put(answer(f, "job-dismiss", "{}"));
    _cleanup_json_ json_object *rep2 = reply_of(end2);
    assert_true(json_object_object_get_ex(rep2, "ok", &v) && json_object_get_boolean(v));
    close(end);
    close(end2);
}

static void test_vanished_job_and_qemu_exit(void **state)
{
    struct fx *f = *state;
    int end, end2;
    unsigned c1 = add_client(f, &end), c2 = add_client(f, &end2);
    struct qv_err e = {0};
    struct sup_job *j = sup_job_start(f->s, &test_kind_no_ready, "disk0", "block-stream", json_object_new_object(),
                                      NULL, c1, true, &e);
    assert_non_null(j);
    json_object_put(answer(f, "block-stream", "{}"));
    /* someone dismissed it behind our back: it is lost, not waited for forever */
    json_object_put(answer(f, "query-jobs", "[]"));
    assert_int_equal(seen.done, 1);
    assert_non_null(strstr(seen.done_err, "QEMU no longer has job"));
    _cleanup_json_ json_object *rep = reply_of(end);
    assert_non_null(strstr(str_at(rep, "error"), "QEMU no longer has job"));

    j = sup_job_start(f->s, &test_kind_no_ready, "disk2", "block-stream", json_object_new_object(), NULL, c2, true,
                      &e);
    assert_non_null(j);
    json_object_put(answer(f, "block-stream", "{}"));
    qemu_exits(f, 0);
    assert_int_equal(seen.done, 2);
    assert_non_null(strstr(seen.done_err, "QEMU exited before the job ended"));
    _cleanup_json_ json_object *rep2 = reply_of(end2);
    assert_non_null(strstr(str_at(rep2, "error"), "QEMU exited before the job ended"));
    close(end);
    close(end2);
}

/* ---- a new supervisor carries on what the last one recorded ---- */

static void script_query_jobs(struct qmp_peer *p, void *arg)
{
    (void)arg;
    _cleanup_free_ char *id = NULL;
    _cleanup_json_ json_object *c = peer_recv_cmd(p, NULL, "query-jobs", &id);
    if (c)
        peer_sendf(p, "{\"return\": [{\"id\": \"qv3-pull-disk0\", \"type\": \"stream\", \"status\": \"concluded\", "
                      "\"current-progress\": 5, \"total-progress\": 5}, {\"id\": \"qv4-copy-disk1\", \"type\": "
                      "\"mirror\", \"status\": \"ready\", \"current-progress\": 7, \"total-progress\": 7}, "
                      "{\"id\": \"someone-elses\", \"status\": \"running\"}], \"id\": \"%s\"}\r\n", id);
}

static void test_reattach_carries_on(void **state)
{
    struct fx *f = *state;
    json_object *res = json_tokener_parse(
        "{\"job_seq\": 6, \"jobs\": ["
        "{\"id\": \"qv3-pull-disk0\", \"kind\": \"pull\", \"disk\": \"disk0\", "
        "  \"data\": {\"drop\": [[\"disk0-b0-fmt\", \"disk0-b0-file\"]]}},"
        "{\"id\": \"qv4-copy-disk1\", \"kind\": \"copy\", \"disk\": \"disk1\", \"pivot\": true, "
        "  \"data\": {\"dest\": \"/nowhere/x.qcow2\", \"node\": \"disk1-c4-fmt\", \"file_node\": \"disk1-c4-file\"}},"
        "{\"id\": \"qv5-pull-disk2\", \"kind\": \"pull\", \"disk\": \"disk2\"},"
        "{\"id\": \"qv9-x\", \"kind\": \"no-such-kind\"}]}");
    assert_non_null(res);
    f->s->rs.resources = res;
    assert_int_equal(peer_start(&f->peer, script_query_jobs, NULL), 0);
    sup_jobs_reattach(f->s);
    assert_string_equal(peer_join(&f->peer), "");
    assert_int_equal(f->s->job_seq, 6);     /* new ids never repeat old ones */
    /* the concluded pull is dismissed; the ready copy, meant to pivot, is completed */
    _cleanup_json_ json_object *dis = answer(f, "job-dismiss", "{}");
    assert_string_equal(str_at(dis, "id"), "qv3-pull-disk0");
    _cleanup_json_ json_object *complete = answer(f, "job-complete", "{}");
    assert_string_equal(str_at(complete, "id"), "qv4-copy-disk1");
    /* the pull is over: its old layer leaves QEMU, nodes first, then its fdset */
    _cleanup_json_ json_object *d1 = answer(f, "blockdev-del", "{}");
    assert_string_equal(str_at(d1, "node-name"), "disk0-b0-fmt");
    _cleanup_json_ json_object *d2 = answer(f, "blockdev-del", "{}");
    assert_string_equal(str_at(d2, "node-name"), "disk0-b0-file");
    json_object_put(answer(f, "query-fdsets", "[{\"fdset-id\": 7, \"fds\": [{\"fd\": 31, \"opaque\": \"disk0-b0-file\"}]},"
                                              " {\"fdset-id\": 8, \"fds\": [{\"fd\": 32, \"opaque\": \"disk1-file\"}]}]"));
    _cleanup_json_ json_object *rm = answer(f, "remove-fd", "{}");
    json_object *v;
    assert_true(json_object_object_get_ex(rm, "fdset-id", &v) && json_object_get_int(v) == 7);
    expect_nothing(f);
    /* left: the copy, as a job of its kind; the vanished pull and the unknown kind are gone */
    struct sup_job *j = sup_job_find(f->s, "disk1");
    assert_non_null(j);
    assert_ptr_equal(j->ops, &block_copy_ops);
    assert_string_equal(j->status, "ready");
    assert_true(j->pivot);
    assert_null(sup_job_find(f->s, "disk0"));
    assert_null(sup_job_find(f->s, "disk2"));
    _cleanup_json_ json_object *rec = recorded_jobs(f);
    assert_int_equal(json_object_array_length(rec), 1);
    assert_string_equal(str_at(json_object_array_get_idx(rec, 0), "id"), "qv4-copy-disk1");
}

/* ---- the definition follows a disk's new image ---- */

static void write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void test_definition_follows(void **state)
{
    struct fx *f = *state;
    char dir[PATH_MAX], path[PATH_MAX], a[PATH_MAX], b[PATH_MAX];
    qv_path(&f->paths, dir, sizeof(dir), QV_ETC "/vms");
    assert_int_equal(mkdir_p(dir, 0755), 0);
    snprintf(a, sizeof(a), "%s/a.raw", f->dir);
    snprintf(b, sizeof(b), "%s/b.qcow2", f->dir);
    write_file(a, "");
    char def[2048];
    snprintf(def, sizeof(def),
             "{\"name\": \"vm1\", \"memory\": \"64M\", \"description\": \"kept as written\", "
             "\"disks\": [{\"file\": \"%s\", \"format\": \"raw\", \"serial\": \"S1\"}]}", a);
    qv_path(&f->paths, path, sizeof(path), QV_ETC "/vms/vm1.json");
    write_file(path, def);
    _cleanup_json_ json_object *o = json_tokener_parse(def);
    vm_def_free(&f->s->def);
    assert_int_equal(vm_def_from_json(o, &f->s->def, NULL), 0);

    struct qv_err e = {0};
    assert_int_equal(disk_switched(f->s, "disk0", "disk0-c1-fmt", b, NULL, FORMAT_QCOW2, &e), 0);
    /* in memory */
    assert_string_equal(f->s->def.disks[0].file, b);
    assert_int_equal(f->s->def.disks[0].format, FORMAT_QCOW2);
    struct disk_ref d;
    assert_true(disk_find(f->s, "S1", &d));
    assert_string_equal(d.node, "disk0-c1-fmt");     /* resize, blkstat, errors use the new top */
    /* in the store, everything else as it was */
    _cleanup_json_ json_object *stored = NULL;
    assert_int_equal(json_read_file(path, &stored, &e), 0);
    json_object *disks, *v;
    assert_true(json_object_object_get_ex(stored, "disks", &disks));
    json_object *k = json_object_array_get_idx(disks, 0);
    assert_string_equal(str_at(k, "file"), b);
    assert_string_equal(str_at(k, "format"), "qcow2");
    assert_string_equal(str_at(k, "serial"), "S1");
    assert_string_equal(str_at(stored, "description"), "kept as written");
    /* the top node is recorded for a successor */
    struct vm_runstate rs;
    assert_int_equal(runstate_read(&f->paths, "vm1", &rs, &e), 0);
    json_object *tops;
    assert_true(json_object_object_get_ex(rs.resources, "disk_tops", &tops));
    assert_true(json_object_object_get_ex(tops, "disk0", &v));
    assert_string_equal(json_object_get_string(v), "disk0-c1-fmt");
    runstate_free(&rs);
    /* a stored definition that no longer names the old image is left alone */
    assert_int_equal(vm_disk_image_update(&f->paths, "vm1", a, NULL, "/x.raw", FORMAT_RAW, &e), -ENOENT);
    _cleanup_json_ json_object *again = NULL;
    assert_int_equal(json_read_file(path, &again, &e), 0);
    assert_string_equal(json_object_to_json_string(again), json_object_to_json_string(stored));
    /* a volume disk keeps naming a volume */
    assert_int_equal(vm_disk_image_update(&f->paths, "vm1", b, "pool2/moved", "/ignored", FORMAT_QCOW2, &e), 0);
    _cleanup_json_ json_object *vol = NULL;
    assert_int_equal(json_read_file(path, &vol, &e), 0);
    json_object_object_get_ex(vol, "disks", &disks);
    k = json_object_array_get_idx(disks, 0);
    assert_string_equal(str_at(k, "volume"), "pool2/moved");
    assert_false(json_object_object_get_ex(k, "file", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_copy_pivots_when_ready, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_error_reaches_waiter, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_kind_failure_turns_success_into_error, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_refused_start_and_busy_disk, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_abort_and_soft_finish, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_vanished_job_and_qemu_exit, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_definition_follows, setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reattach_carries_on, setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
