/* evacuate --to ssh://[USER@]HOST[:PORT] | tcp:HOST:PORT [--parallel N]: every running
 * (or paused) VM of this host migrates away, N at a time (default 1), each by its own
 * `qvisor migrate` child (argv, execve: this very program), so one VM's failure or
 * Ctrl-C never takes the others with it. With ssh:// each migration starts its own
 * migrate-incoming there; with tcp:HOST:PORT the destination must have one waiting per
 * VM, the VMs in name order on PORT, PORT+1, ..., each started with the same --token T
 * (migrate-incoming --token T) given here too. Every VM gets its line (or JSON
 * object); the exit status is 1 when any failed (the others moved all the same). */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "launcher/cli/cli.h"

#define EVACUATE_MAX_PARALLEL 16

struct evac {
    const char *name;
    pid_t pid;
    int out;            /* memfd: the child's stdout and stderr */
    int status;
    bool done;
    char to[300];
};

/* The options of evacuate that migrate takes as they are. */
static const char *const passed_opts[] = {"bandwidth", "max-downtime", "tls", "remote-qvisor", "remote-root",
                                          "ssh-config", "wait-timeout", "token", "postcopy-bandwidth", NULL};
static const char *const passed_flags[] = {"auto-converge", "persistent", "undefine-source", "copy-storage",
                                           "postcopy", "unsafe", NULL};

static int start_one(struct cli *c, const char *exe, struct evac *v)
{
    const char *argv[48];
    size_t k = 0;
    argv[k++] = exe;
    argv[k++] = "--root";
    argv[k++] = c->paths.root[0] ? c->paths.root : "/";
    argv[k++] = "--json";
    argv[k++] = "migrate";
    argv[k++] = v->name;
    argv[k++] = "--to";
    argv[k++] = v->to;
    char names[ARRAY_SIZE(passed_opts) + ARRAY_SIZE(passed_flags)][32];
    size_t nn = 0;
    for (size_t i = 0; passed_opts[i]; i++) {
        const char *val = cli_opt(c, passed_opts[i]);
        if (!val)
            continue;
        snprintf(names[nn], sizeof(names[nn]), "--%s", passed_opts[i]);
        argv[k++] = names[nn++];
        argv[k++] = val;
    }
    for (size_t i = 0; passed_flags[i]; i++) {
        if (!cli_flag(c, passed_flags[i]))
            continue;
        snprintf(names[nn], sizeof(names[nn]), "--%s", passed_flags[i]);
        argv[k++] = names[nn++];
    }
    argv[k] = NULL;
    v->out = memfd_create("qvisor-evacuate", MFD_CLOEXEC);
    if (v->out < 0)
        return -errno;
    return spawn_program(argv, v->out, v->out, true, &v->pid);     /* argv is copied by execve */
}

/* What the child said: its JSON reply, or its last line of error. */
static void report(struct cli *c, struct evac *v, json_object *all)
{
    char buf[8192];
    ssize_t n = pread(v->out, buf, sizeof(buf) - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    close(v->out);
    int code = WIFEXITED(v->status) ? WEXITSTATUS(v->status) : 128 + WTERMSIG(v->status);
    _cleanup_json_ json_object *reply = NULL;
    char *brace = strchr(buf, '{');
    struct qv_err e = {0};
    if (code == 0 && brace)
        json_parse_str("migrate's answer", brace, &reply, &e);
    /* the error: the last line that says something */
    size_t len = strlen(buf);
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
        buf[--len] = '\0';
    char *why = strrchr(buf, '\n');
    why = why ? why + 1 : buf;
    if (strncmp(why, "qvisor: ", 8) == 0)
        why += 8;
    json_object *v_;
    if (c->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(v->name));
        json_object_object_add(o, "to", json_object_new_string(v->to));
        json_object_object_add(o, "ok", json_object_new_boolean(code == 0));
        if (code == 0 && reply) {
            if (json_object_object_get_ex(reply, "downtime_ms", &v_))
                json_object_object_add(o, "downtime_ms", json_object_get(v_));
            if (json_object_object_get_ex(reply, "total_time_ms", &v_))
                json_object_object_add(o, "total_time_ms", json_object_get(v_));
        } else if (code != 0) {
            json_object_object_add(o, "exit_status", json_object_new_int(code));
            json_object_object_add(o, "error", json_object_new_string(*why ? why : "migrate failed"));
        }
        json_object_array_add(all, o);
    } else if (code == 0) {
        long long total = reply && json_object_object_get_ex(reply, "total_time_ms", &v_) ? json_object_get_int64(v_) : 0;
        long long down = reply && json_object_object_get_ex(reply, "downtime_ms", &v_) ? json_object_get_int64(v_) : 0;
        if (!c->quiet)
            printf("%s: migrated to %s in %lld ms (downtime %lld ms)\n", v->name, v->to, total, down);
    } else {
        printf("%s: not migrated (exit status %d): %s\n", v->name, code, *why ? why : "migrate failed");
    }
    fflush(stdout);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int cmd_evacuate(struct cli *c)
{
    const char *to = cli_opt(c, "to");
    if (!to || (strncmp(to, "ssh://", 6) != 0 && strncmp(to, "tcp:", 4) != 0))
        return qv_fail(&c->err, -EINVAL, "evacuate: --to ssh://[USER@]HOST[:PORT] or tcp:HOST:PORT is missing");
    int parallel = 1;
    const char *p = cli_opt(c, "parallel");
    if (p) {
        char *end;
        long n = strtol(p, &end, 10);
        if (*end || n < 1 || n > EVACUATE_MAX_PARALLEL)
            return qv_fail(&c->err, -EINVAL, "evacuate: --parallel %s: a whole number from 1 to %d", p,
                           EVACUATE_MAX_PARALLEL);
        parallel = (int)n;
    }
    long base_port = 0;
    char host[300] = "";
    if (strncmp(to, "tcp:", 4) == 0) {
        const char *colon = strrchr(to + 4, ':');
        char *end;
        base_port = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || *end || base_port <= 0 || base_port > 65535)
            return qv_fail(&c->err, -EINVAL, "evacuate: --to %s: not tcp:HOST:PORT", to);
        snprintf(host, sizeof(host), "%.*s", (int)(colon - to), to);
    }
    _cleanup_strv_ struct strv names = {0};
    int r = vm_list_names(&c->paths, &names, &c->err);
    if (r < 0)
        return r;
    qsort(names.v, names.n, sizeof(*names.v), by_name);     /* tcp: which VM gets which port */
    struct evac *vs = qv_xcalloc(names.n ? names.n : 1, sizeof(*vs));
    size_t n = 0;
    for (size_t i = 0; i < names.n; i++) {
        _cleanup_runstate_ struct vm_runstate rs = {0};
        bool supervised;
        vm_observe(&c->paths, names.v[i], &rs, &supervised);
        if (!supervised || (rs.state != VM_RUNNING && rs.state != VM_PAUSED))
            continue;
        vs[n].name = names.v[i];
        vs[n].out = -1;
        if (base_port) {
            if (base_port + (long)n > 65535) {
                free(vs);
                return qv_fail(&c->err, -EINVAL, "evacuate: --to %s: not enough ports above it for %zu VMs", to, n + 1);
            }
            snprintf(vs[n].to, sizeof(vs[n].to), "%s:%ld", host, base_port + (long)n);
        } else {
            snprintf(vs[n].to, sizeof(vs[n].to), "%s", to);
        }
        n++;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (len <= 0) {
        free(vs);
        return qv_failerr(&c->err, -errno, "evacuate: this program's own path");
    }
    exe[len] = '\0';
    json_object *all = json_object_new_array();
    size_t next = 0, running = 0, failed = 0;
    while (next < n || running) {
        while (next < n && running < (size_t)parallel) {
            struct evac *v = &vs[next++];
            if ((r = start_one(c, exe, v)) < 0) {
                if (v->out >= 0)
                    close(v->out);
                v->out = memfd_create("qvisor-evacuate", MFD_CLOEXEC);
                dprintf(v->out, "qvisor: %s: starting qvisor migrate: %s\n", v->name, strerror(-r));
                v->status = 1 << 8;
                report(c, v, all);
                failed++;
                continue;
            }
            running++;
        }
        if (!running)
            break;
        int st;
        pid_t pid = waitpid(-1, &st, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (size_t i = 0; i < n; i++) {
            if (vs[i].pid != pid || vs[i].done)
                continue;
            vs[i].done = true;
            vs[i].status = st;
            running--;
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                failed++;
            report(c, &vs[i], all);
        }
    }
    if (c->json) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "vms", all);
        json_object_object_add(o, "failed", json_object_new_int((int)failed));
        cli_print_json(o);
        json_object_put(o);
    } else {
        json_object_put(all);
        if (!c->quiet)
            printf("evacuate: %zu of %zu VMs moved%s\n", n - failed, n, n ? "" : " (none runs here)");
    }
    free(vs);
    if (failed)
        return qv_fail(&c->err, -EIO, "evacuate: %zu of %zu VMs were not migrated (they run on here)", failed, n);
    return 0;
}
