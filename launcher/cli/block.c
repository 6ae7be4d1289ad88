/* qvisor block pull|commit|copy|job VM DISK ...: block jobs on a running VM's disks,
 * run by its supervisor. With --wait the command returns when the job is over (a
 * copy without --pivot or --finish: once it is in sync), showing progress on a
 * terminal and nothing when piped. */
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/cli.h"

#define BLOCK_POLL_MS 500

static json_object *block_req(const char *op, const char *disk, json_object *opts)
{
    json_object *req = ctl_request("block");
    json_object_object_add(req, "op", json_object_new_string(op));
    json_object_object_add(req, "target", json_object_new_string(disk));
    json_object_object_add(req, "options", opts);
    return req;
}

static void opt_copy_str(struct cli *c, json_object *o, const char *name, const char *key)
{
    const char *v = cli_opt(c, name);
    if (v)
        json_object_object_add(o, key, json_object_new_string(v));
}

static void opt_copy_flag(struct cli *c, json_object *o, const char *name)
{
    if (cli_flag(c, name))
        json_object_object_add(o, name, json_object_new_boolean(true));
}

static const char *str_of(json_object *o, const char *key, const char *dflt)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : dflt;
}

static int64_t int_of(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static int percent(json_object *job)
{
    int64_t cur = int_of(job, "current"), total = int_of(job, "total");
    return total > 0 ? (int)(cur * 100 / total) : 0;
}

void cli_print_jobs(json_object *jobs)
{
    for (size_t i = 0; jobs && i < json_object_array_length(jobs); i++) {
        json_object *j = json_object_array_get_idx(jobs, i);
        printf("%-12s %s of %s: %s %d%%%s (%s)\n", "job", str_of(j, "kind", "?"), str_of(j, "disk", "the VM"),
               str_of(j, "status", "?"), percent(j), int_of(j, "pivot") ? ", pivot when ready" : "",
               str_of(j, "id", "?"));
    }
}

/* The job on `disk` now: NULL when there is none (or the supervisor does not answer). */
static json_object *job_info(struct cli *c, const char *disk)
{
    json_object *reply = NULL, *job = NULL;
    struct qv_err e = {0};
    if (ctl_call(&c->paths, c->pos[0], block_req("job", disk, json_object_new_object()), 5000, &reply, &e) == 0 &&
        json_object_object_get_ex(reply, "job", &job))
        job = json_object_get(job);
    if (reply)
        json_object_put(reply);
    return job;
}

static void bar(const char *label, int pct, const char *status)
{
    char cells[41];
    int full = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        cells[i] = i < full ? '#' : '.';
    cells[40] = '\0';
    fprintf(stderr, "\r%s [%s] %3d%% %-10s", label, cells, pct, status);
    fflush(stderr);
}

static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Sends `req` (wait: the reply comes when the job is over) and, on a terminal,
 * draws its progress meanwhile. Ctrl-C stops waiting (the job goes on; `block job
 * --abort` stops it). */
static int call_waiting(struct cli *c, const char *disk, json_object *req, json_object **reply)
{
    int fd = -1;
    int r = ctl_connect(&c->paths, c->pos[0], &fd, &c->err);
    if (r < 0) {
        json_object_put(req);
        return r;
    }
    r = ctl_send(fd, req, &c->err);
    json_object_put(req);
    bool tty = !c->quiet && !c->json && isatty(STDERR_FILENO);
    char label[96];
    snprintf(label, sizeof(label), "%s %s", c->cmd->name, disk);
    struct sigaction sa = {.sa_handler = on_interrupt}, old;
    sigemptyset(&sa.sa_mask);
    interrupted = 0;
    if (tty)    /* piped, Ctrl-C ends the command as it always does; the job goes on */
        sigaction(SIGINT, &sa, &old);
    struct buf in = {0};
    bool drew = false;
    while (r == 0) {
        char *line = NULL;
        r = ctl_read_line(fd, &in, tty ? BLOCK_POLL_MS : -1, &line, &c->err);
        if (r == 0) {
            r = ctl_parse_reply(line, reply, &c->err);
            free(line);
            break;
        }
        if (r != -ETIMEDOUT || interrupted)
            break;
        r = 0;
        _cleanup_json_ json_object *job = job_info(c, disk);
        if (job) {
            bar(label, percent(job), str_of(job, "status", ""));
            drew = true;
        }
    }
    if (tty)
        sigaction(SIGINT, &old, NULL);
    if (drew)
        fputc('\n', stderr);
    buf_free(&in);
    close(fd);
    if (interrupted)
        return qv_fail(&c->err, -EINTR, "%s: stopped waiting; the job goes on (qvisor block job %s %s [--abort])",
                       c->pos[0], c->pos[0], disk);
    return r;
}

/* A copy with --wait and neither --pivot nor --finish waits for it to be in sync. */
static int wait_ready(struct cli *c, const char *disk)
{
    bool tty = !c->quiet && !c->json && isatty(STDERR_FILENO);
    char label[96];
    snprintf(label, sizeof(label), "%s %s", c->cmd->name, disk);
    for (;;) {
        _cleanup_json_ json_object *job = job_info(c, disk);
        if (!job)
            return qv_fail(&c->err, -EIO, "%s: the copy of %s ended before it was in sync (qvisor logs %s)", c->pos[0],
                           disk, c->pos[0]);
        if (tty)
            bar(label, percent(job), str_of(job, "status", ""));
        if (strcmp(str_of(job, "status", ""), "ready") == 0) {
            if (tty)
                fputc('\n', stderr);
            return 0;
        }
        usleep(BLOCK_POLL_MS * 1000);
    }
}

static int block_run(struct cli *c, const char *op, json_object *opts, bool wait)
{
    const char *disk = c->pos[1];
    _cleanup_json_ json_object *reply = NULL;
    int r = wait ? call_waiting(c, disk, block_req(op, disk, opts), &reply)
                 : ctl_call(&c->paths, c->pos[0], block_req(op, disk, opts), 60000, &reply, &c->err);
    if (r < 0)
        return r;
    json_object *job = NULL;
    json_object_object_get_ex(reply, "job", &job);
    if (c->json) {
        cli_print_json(reply);
        return 0;
    }
    if (c->quiet)
        return 0;
    disk = str_of(job, "disk", disk);
    if (wait)
        printf("%s: %s of %s %s\n", c->pos[0], str_of(job, "kind", op), disk,
               str_of(job, "finish", NULL) ? "finished: the copy is complete, the disk stays on its image"
               : strcmp(op, "pull") == 0 ? "completed" : "completed; the disk now reads its new image");
    else
        printf("%s: %s of %s started (job %s)\n", c->pos[0], str_of(job, "kind", op), disk, str_of(job, "id", "?"));
    return 0;
}

int cmd_block_pull(struct cli *c)
{
    json_object *o = json_object_new_object();
    opt_copy_str(c, o, "base", "base");
    opt_copy_str(c, o, "bandwidth", "bandwidth");
    bool wait = cli_flag(c, "wait");
    if (wait)
        json_object_object_add(o, "wait", json_object_new_boolean(true));
    return block_run(c, "pull", o, wait);
}

int cmd_block_commit(struct cli *c)
{
    json_object *o = json_object_new_object();
    opt_copy_str(c, o, "base", "base");
    opt_copy_str(c, o, "top", "top");
    opt_copy_str(c, o, "bandwidth", "bandwidth");
    bool wait = cli_flag(c, "wait");
    if (wait)
        json_object_object_add(o, "wait", json_object_new_boolean(true));
    return block_run(c, "commit", o, wait);
}

int cmd_block_copy(struct cli *c)
{
    json_object *o = json_object_new_object();
    opt_copy_str(c, o, "dest", "dest");
    opt_copy_str(c, o, "volume", "volume");
    opt_copy_str(c, o, "format", "format");
    opt_copy_str(c, o, "bandwidth", "bandwidth");
    opt_copy_flag(c, o, "pivot");
    opt_copy_flag(c, o, "finish");
    bool ends = cli_flag(c, "pivot") || cli_flag(c, "finish");
    bool wait = cli_flag(c, "wait");
    if (wait && ends)
        json_object_object_add(o, "wait", json_object_new_boolean(true));
    int r = block_run(c, "copy", o, wait && ends);
    if (r < 0 || !wait || ends)
        return r;
    if ((r = wait_ready(c, c->pos[1])) < 0)
        return r;
    if (!c->quiet && !c->json)
        printf("%s: the copy of %s is in sync; qvisor block job %s %s --pivot switches over, --finish keeps the "
               "copy, --abort drops it\n", c->pos[0], c->pos[1], c->pos[0], c->pos[1]);
    return 0;
}

int cmd_block_job(struct cli *c)
{
    json_object *o = json_object_new_object();
    opt_copy_flag(c, o, "abort");
    opt_copy_flag(c, o, "pivot");
    opt_copy_flag(c, o, "finish");
    bool wait = cli_flag(c, "wait");
    if (wait)
        json_object_object_add(o, "wait", json_object_new_boolean(true));
    const char *disk = c->pos[1];
    _cleanup_json_ json_object *reply = NULL;
    int r = wait ? call_waiting(c, disk, block_req("job", disk, o), &reply)
                 : ctl_call(&c->paths, c->pos[0], block_req("job", disk, o), 60000, &reply, &c->err);
    if (r < 0)
        return r;
    json_object *job = NULL;
    json_object_object_get_ex(reply, "job", &job);
    if (c->json) {
        cli_print_json(job ? job : reply);
        return 0;
    }
    if (c->quiet)
        return 0;
    const char *kind = str_of(job, "kind", "?");
    disk = str_of(job, "disk", disk);
    if (wait)
        printf("%s: %s of %s is over: %s\n", c->pos[0], kind, disk, str_of(job, "status", "completed"));
    else if (cli_flag(c, "abort"))
        printf("%s: aborting the %s of %s\n", c->pos[0], kind, disk);
    else if (cli_flag(c, "pivot"))
        printf("%s: the %s of %s switches over %s\n", c->pos[0], kind, disk,
               strcmp(str_of(job, "status", ""), "ready") == 0 ? "now" : "once it is in sync");
    else if (cli_flag(c, "finish"))
        printf("%s: finishing the %s of %s without switching over\n", c->pos[0], kind, disk);
    else
        printf("%s: %s of %s: %s %d%% (%lld of %lld bytes) job %s\n", c->pos[0], kind, disk, str_of(job, "status", "?"),
               percent(job), (long long)int_of(job, "current"), (long long)int_of(job, "total"), str_of(job, "id", "?"));
    return 0;
}
