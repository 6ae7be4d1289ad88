/* qvisor exec: a command run in the guest through the agent (guest-exec), its stdin
 * sent along, its output and exit status given back. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/agent.h"

/* One exec request carries a small stdin in its own ctl.sock line (at most 64 KiB):
 * this much, base64-encoded, leaves room for the rest. More goes ahead in exec-input
 * pieces of EXEC_STDIN_PIECE (a multiple of 3: the pieces' base64 concatenates), up
 * to EXEC_STDIN_MAX, what the supervisor keeps for one exec. */
#define EXEC_STDIN_INLINE (40u << 10)
#define EXEC_STDIN_PIECE (36u << 10)
#define EXEC_STDIN_MAX (16u << 20)
#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---- exec ---- */

static int read_stdin_file(struct cli *c, const char *path, char **data, size_t *n)
{
    _cleanup_close_ int fd = strcmp(path, "-") == 0 ? dup(0) : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return qv_failerr(&c->err, -errno, "--stdin %s", path);
    size_t cap = 64u << 10, got = 0;
    char *buf = qv_xmalloc(cap);
    for (;;) {
        if (got == cap) {
            cap *= 2;
            buf = qv_xrealloc(buf, cap);
        }
        ssize_t k = read(fd, buf + got, cap - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            free(buf);
            return qv_failerr(&c->err, -errno, "--stdin %s", path);
        }
        if (k == 0)
            break;
        got += (size_t)k;
        if (got > EXEC_STDIN_MAX) {
            free(buf);
            return qv_fail(&c->err, -E2BIG,
                           "--stdin %s: more than %u MiB, the most one exec carries; copy it into the guest with "
                           "qvisor cp and redirect it there", path, EXEC_STDIN_MAX >> 20);
        }
    }
    *data = buf;
    *n = got;
    return 0;
}

static void write_decoded(const char *vm, json_object *reply, const char *key, int fd,
                          const char *trunc_key)
{
    json_object *v;
    if (json_object_object_get_ex(reply, key, &v) && json_object_is_type(v, json_type_string)) {
        unsigned char *data = NULL;
        size_t n = 0;
        if (cli_base64_decode(json_object_get_string(v), &data, &n) < 0)
            fprintf(stderr, "qvisor: %s: the agent's %s is not base64\n", vm, strcmp(key, "out") ? "stderr" : "stdout");
        else if (n && write_all(fd, data, n) < 0 && errno != EPIPE)
            fprintf(stderr, "qvisor: %s: writing the command's output: %s\n", vm, strerror(errno));
        free(data);
    }
    if (json_object_object_get_ex(reply, trunc_key, &v) && json_object_get_boolean(v))
        fprintf(stderr, "qvisor: %s: the command's %s was cut short by the guest agent (it keeps at most 16 MiB)\n", vm,
                strcmp(key, "out") ? "stderr" : "stdout");
}

int cmd_exec(struct cli *c)
{
    const char *vm = c->pos[0];
    if (c->npos < 2)
        return qv_fail(&c->err, -EINVAL, "usage: qvisor %s", c->cmd->usage);
    int timeout_ms;
    int r = cli_opt_seconds_ms(c, "timeout", AGENT_EXEC_DEFAULT_S * 1000, &timeout_ms);
    if (r < 0)
        return r;
    if (timeout_ms <= 0)
        return qv_fail(&c->err, -EINVAL, "--timeout must be more than 0 seconds");
    json_object *spec = json_object_new_object();
    json_object_object_add(spec, "path", json_object_new_string(c->pos[1]));
    json_object *args = json_object_new_array();
    for (int i = 2; i < c->npos; i++)
        json_object_array_add(args, json_object_new_string(c->pos[i]));
    json_object_object_add(spec, "args", args);
    /* the agent replaces the whole environment with --env: keep a usable PATH */
    json_object *env = NULL;
    bool have_path = false;
    for (size_t i = 0; i < c->nopts; i++) {
        if (strcmp(c->opts[i].opt->name, "env") != 0)
            continue;
        const char *kv = c->opts[i].value;
        if (!strchr(kv, '=') || kv[0] == '=') {
            json_object_put(spec);
            return qv_fail(&c->err, -EINVAL, "--env %s: expected NAME=VALUE", kv);
        }
        if (!env)
            env = json_object_new_array();
        have_path |= str_startswith(kv, "PATH=");
        json_object_array_add(env, json_object_new_string(kv));
    }
    if (env && !have_path)
        json_object_array_add(env, json_object_new_string(DEFAULT_PATH));
    if (env)
        json_object_object_add(spec, "env", env);
    const char *in = cli_opt(c, "stdin");
    char *data = NULL;
    size_t n = 0;
    if (in && (r = read_stdin_file(c, in, &data, &n)) < 0) {
        json_object_put(spec);
        return r;
    }
    struct agent_conn ac = {0};
    if ((r = agent_conn_open(c, vm, &ac)) < 0) {
        free(data);
        json_object_put(spec);
        return r;
    }
    if (in && n <= EXEC_STDIN_INLINE) {
        _cleanup_free_ char *b64 = cli_base64_encode(data, n);
        json_object_object_add(spec, "input", json_object_new_string(b64));
    } else if (in) {
        /* ahead of the exec, on the same connection: the supervisor keeps them for it */
        for (size_t off = 0; off < n && r == 0; off += EXEC_STDIN_PIECE) {
            _cleanup_free_ char *b64 = cli_base64_encode(data + off, n - off < EXEC_STDIN_PIECE ? n - off
                                                                                                 : EXEC_STDIN_PIECE);
            json_object *piece = ctl_request("exec-input");
            json_object_object_add(piece, "data", json_object_new_string(b64));
            r = agent_conn_call(c, &ac, piece, 30000, NULL);
        }
        json_object_object_add(spec, "input_pending", json_object_new_boolean(true));
    }
    free(data);
    json_object_object_add(spec, "timeout_ms", json_object_new_int(timeout_ms));
    json_object *req = ctl_request("exec"), *reply = NULL;
    json_object_object_add(req, "spec", spec);
    if (r == 0)
        r = agent_conn_call(c, &ac, req, timeout_ms + 30000, &reply);
    else
        json_object_put(req);
    agent_conn_close(&ac);
    if (r < 0)
        return r;
    fflush(stdout);
    write_decoded(vm, reply, "out", 1, "out_truncated");
    write_decoded(vm, reply, "err", 2, "err_truncated");
    json_object *v;
    int status = json_object_object_get_ex(reply, "exitcode", &v) ? json_object_get_int(v) : 0;
    if (json_object_object_get_ex(reply, "signal", &v) && json_object_get_int(v) > 0)
        status = 128 + json_object_get_int(v);
    json_object_put(reply);
    return status & 255;
}
