/* The guest agent verbs: exec, cp, agent (ping, info, time-sync, fsfreeze, fsthaw,
 * fsfreeze-status, set-password) and ifaddr --source agent. They talk to the VM's
 * supervisor, which owns the agent channel (launcher/supervisor/agent.c); the agent's
 * data travels as base64, encoded and decoded here. */
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/cli/cli.h"

/* One exec request carries a small stdin in its own ctl.sock line (at most 64 KiB):
 * this much, base64-encoded, leaves room for the rest. More goes ahead in exec-input
 * pieces of EXEC_STDIN_PIECE (a multiple of 3: the pieces' base64 concatenates), up
 * to EXEC_STDIN_MAX, what the supervisor keeps for one exec. */
#define EXEC_STDIN_INLINE (40u << 10)
#define EXEC_STDIN_PIECE (36u << 10)
#define EXEC_STDIN_MAX (16u << 20)
/* cp: a write carries 36 KiB (48 KiB of base64) in one request line; a read asks for
 * 256 KiB (replies have no such limit). */
#define CP_WRITE_CHUNK (36u << 10)
#define CP_READ_CHUNK (256u << 10)
#define CP_PROGRESS_MIN (1u << 20)   /* smaller copies draw no progress */
#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---- base64 (RFC 4648, what the agent speaks) ---- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *cli_base64_encode(const void *data, size_t n)
{
    const unsigned char *p = data;
    char *out = qv_xmalloc(4 * ((n + 2) / 3) + 1), *o = out;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        *o++ = b64chars[v >> 18 & 63];
        *o++ = b64chars[v >> 12 & 63];
        *o++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? b64chars[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* Decodes into a new buffer (*n bytes); -EINVAL on anything but base64. */
int cli_base64_decode(const char *s, unsigned char **out, size_t *n)
{
    size_t len = strlen(s);
    unsigned char *buf = qv_xmalloc(len / 4 * 3 + 3), *o = buf;
    unsigned v = 0;
    int bits = 0, pad = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (ch == '\n' || ch == '\r')
            continue;
        if (ch == '=') {
            pad++;
            continue;
        }
        const char *k = memchr(b64chars, ch, 64);
        if (!k || pad) {
            free(buf);
            return -EINVAL;
        }
        v = v << 6 | (unsigned)(k - b64chars);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (unsigned char)(v >> bits);
            v &= (1u << bits) - 1;
        }
    }
    *out = buf;
    *n = (size_t)(o - buf);
    return 0;
}

/* ---- one connection to the supervisor, many agent commands ---- */

struct agent_conn {
    int fd;
    struct buf in;
    const char *vm;
};

static int conn_open(struct cli *c, const char *vm, struct agent_conn *ac)
{
    ac->vm = vm;
    ac->fd = -1;
    return ctl_connect(&c->paths, vm, &ac->fd, &c->err);
}

static void conn_close(struct agent_conn *ac)
{
    if (ac->fd >= 0)
        close(ac->fd);
    ac->fd = -1;
    buf_free(&ac->in);
}

/* Sends req (consumed) and reads its reply into *reply (NULL: dropped). */
static int conn_call(struct cli *c, struct agent_conn *ac, json_object *req, int timeout_ms, json_object **reply)
{
    int r = ctl_send(ac->fd, req, &c->err);
    json_object_put(req);
    if (r < 0)
        return qv_prefix(&c->err, "%s: ", ac->vm);
    _cleanup_free_ char *line = NULL;
    if ((r = ctl_read_line(ac->fd, &ac->in, timeout_ms, &line, &c->err)) < 0)
        return qv_prefix(&c->err, "%s: ", ac->vm);
    json_object *o = NULL;
    r = ctl_parse_reply(line, &o, &c->err);
    if (r == 0 && reply)
        *reply = o;
    else if (o)
        json_object_put(o);
    return r;
}

/* One agent command: *ret (may be NULL) gets a new reference to its "return". */
static int agent_cmd(struct cli *c, struct agent_conn *ac, const char *execute, json_object *args, int timeout_ms,
                     json_object **ret)
{
    json_object *req = ctl_request("agent"), *reply = NULL, *v;
    json_object_object_add(req, "execute", json_object_new_string(execute));
    if (args)
        json_object_object_add(req, "arguments", args);
    json_object_object_add(req, "timeout_ms", json_object_new_int(timeout_ms));
    int r = conn_call(c, ac, req, timeout_ms + 15000, &reply);
    if (r < 0)
        return r;
    if (ret)
        *ret = json_object_object_get_ex(reply, "return", &v) ? json_object_get(v) : NULL;
    json_object_put(reply);
    return 0;
}

static int agent_cmd_once(struct cli *c, const char *vm, const char *execute, json_object *args, int timeout_ms,
                          json_object **ret)
{
    struct agent_conn ac = {0};
    int r = conn_open(c, vm, &ac);
    if (r < 0) {
        if (args)
            json_object_put(args);
        return r;
    }
    r = agent_cmd(c, &ac, execute, args, timeout_ms, ret);
    conn_close(&ac);
    return r;
}

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
    if ((r = conn_open(c, vm, &ac)) < 0) {
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
            r = conn_call(c, &ac, piece, 30000, NULL);
        }
        json_object_object_add(spec, "input_pending", json_object_new_boolean(true));
    }
    free(data);
    json_object_object_add(spec, "timeout_ms", json_object_new_int(timeout_ms));
    json_object *req = ctl_request("exec"), *reply = NULL;
    json_object_object_add(req, "spec", spec);
    if (r == 0)
        r = conn_call(c, &ac, req, timeout_ms + 30000, &reply);
    else
        json_object_put(req);
    conn_close(&ac);
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

/* ---- cp ---- */

/* "VM:/path": a name as definitions allow it, a colon, an absolute path. */
static bool guest_side(const char *arg, char *vm, size_t vmlen, const char **path)
{
    const char *colon = strchr(arg, ':');
    if (!colon || colon == arg || colon[1] != '/' || (size_t)(colon - arg) >= vmlen)
        return false;
    for (const char *p = arg; p < colon; p++)
        if (!(strchr("_.-", *p) || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
            return false;
    memcpy(vm, arg, (size_t)(colon - arg));
    vm[colon - arg] = '\0';
    *path = colon + 1;
    return true;
}

/* Ctrl-C or SIGTERM during a copy: the guest's file handle is closed and a partial
 * host file removed before the CLI exits (the agent would keep the handle open). */
static volatile sig_atomic_t cp_interrupted;

static void cp_on_signal(int sig)
{
    cp_interrupted = sig;
}

static void cp_catch_signals(void)
{
    struct sigaction sa = {.sa_handler = cp_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static int cp_check_interrupt(struct cli *c)
{
    return cp_interrupted ? qv_fail(&c->err, -EINTR, "cp: interrupted by %s", strsignal(cp_interrupted)) : 0;
}

struct progress {
    bool on;
    uint64_t total, done, last_ms;
    const char *what;
};

static void progress_show(struct progress *p, bool final)
{
    if (!p->on)
        return;
    uint64_t now = monotonic_ms();
    if (!final && now - p->last_ms < 100)
        return;
    p->last_ms = now;
    char d[32], t[32];
    cli_size_human(p->done, d, sizeof(d));
    cli_size_human(p->total, t, sizeof(t));
    fprintf(stderr, "\r%s: %s / %s (%d%%)%s", p->what, d, t,
            p->total ? (int)(p->done * 100 / p->total) : 100, final ? "\n" : "");
}

/* "web1:/path: guest-file-open: …": the supervisor's message already names the VM */
static int cp_error(struct cli *c, struct agent_conn *ac, const char *path)
{
    size_t n = strlen(ac->vm);
    if (strncmp(c->err.msg, ac->vm, n) == 0 && c->err.msg[n] == ':' && c->err.msg[n + 1] == ' ')
        memmove(c->err.msg, c->err.msg + n + 2, strlen(c->err.msg + n + 2) + 1);
    return qv_prefix(&c->err, "%s:%s: ", ac->vm, path);
}

static int64_t open_guest_file(struct cli *c, struct agent_conn *ac, const char *path, const char *mode)
{
    json_object *args = json_object_new_object(), *ret = NULL;
    json_object_object_add(args, "path", json_object_new_string(path));
    json_object_object_add(args, "mode", json_object_new_string(mode));
    int r = agent_cmd(c, ac, "guest-file-open", args, AGENT_CLI_TIMEOUT_MS, &ret);
    if (r < 0)
        return r;
    int64_t h = json_object_is_type(ret, json_type_int) ? json_object_get_int64(ret) : -1;
    json_object_put(ret);
    if (h < 0)
        return qv_fail(&c->err, -EIO, "%s: %s: the agent returned no file handle", ac->vm, path);
    return h;
}

static void close_guest_file(struct cli *c, struct agent_conn *ac, int64_t h)
{
    json_object *args = json_object_new_object();
    json_object_object_add(args, "handle", json_object_new_int64(h));
    struct qv_err keep = c->err;
    agent_cmd(c, ac, "guest-file-close", args, AGENT_CLI_TIMEOUT_MS, NULL);
    c->err = keep;
}

/* argv run in the guest (guest-exec), waited for up to 10 s: 0 when it exited 0, with
 * its stdout in out; else -errno and why (c->err is left as it was: a file's mode is
 * kept where the agent allows, and never fails a copy). */
static int guest_run(struct cli *c, struct agent_conn *ac, const char *const *argv, char *out, size_t outlen, char *why,
                     size_t whylen)
{
    struct qv_err saved = c->err;
    json_object *arg = json_object_new_array(), *ret = NULL, *v;
    for (size_t i = 1; argv[i]; i++)
        json_object_array_add(arg, json_object_new_string(argv[i]));
    json_object *args = json_object_new_object();
    json_object_object_add(args, "path", json_object_new_string(argv[0]));
    json_object_object_add(args, "arg", arg);
    json_object_object_add(args, "capture-output", json_object_new_boolean(true));
    int r = agent_cmd(c, ac, "guest-exec", args, AGENT_CLI_TIMEOUT_MS, &ret);
    int64_t pid = r == 0 && ret && json_object_object_get_ex(ret, "pid", &v) ? json_object_get_int64(v) : -1;
    json_object_put(ret);
    if (r < 0 || pid < 0) {
        snprintf(why, whylen, "%s", r < 0 ? c->err.msg : "guest-exec gave no pid");
        c->err = saved;
        return r < 0 ? r : -EIO;
    }
    out[0] = '\0';
    for (int i = 0; i < 100; i++) {
        json_object *sa = json_object_new_object();
        json_object_object_add(sa, "pid", json_object_new_int64(pid));
        ret = NULL;
        if ((r = agent_cmd(c, ac, "guest-exec-status", sa, AGENT_CLI_TIMEOUT_MS, &ret)) < 0) {
            snprintf(why, whylen, "%s", c->err.msg);
            c->err = saved;
            return r;
        }
        if (ret && json_object_object_get_ex(ret, "exited", &v) && json_object_get_boolean(v)) {
            int code = json_object_object_get_ex(ret, "exitcode", &v) ? json_object_get_int(v) : -1;
            unsigned char *data = NULL;
            size_t n = 0;
            if (json_object_object_get_ex(ret, "out-data", &v) && cli_base64_decode(json_object_get_string(v), &data, &n) == 0)
                snprintf(out, outlen, "%.*s", (int)n, (const char *)data);
            free(data);
            json_object_put(ret);
            if (code != 0) {
                snprintf(why, whylen, "%s exited with %d", argv[0], code);
                return -EIO;
            }
            return 0;
        }
        json_object_put(ret);
        usleep(100000);
    }
    snprintf(why, whylen, "%s did not finish within 10 s", argv[0]);
    return -ETIMEDOUT;
}

static int cp_to_guest(struct cli *c, struct agent_conn *ac, const char *src, const char *dst_in)
{
    _cleanup_close_ int fd = open(src, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return qv_failerr(&c->err, -errno, "%s", src);
    if (!S_ISREG(st.st_mode))
        return qv_fail(&c->err, -EINVAL, "%s: not a regular file", src);
    /* DST/ names a directory: the file keeps its name there */
    _cleanup_free_ char *srccopy = qv_xstrdup(src);
    _cleanup_free_ char *dst = dst_in[strlen(dst_in) - 1] == '/' ? qv_xasprintf("%s%s", dst_in, basename(srccopy))
                                                                  : qv_xstrdup(dst_in);
    int64_t h = open_guest_file(c, ac, dst, "w");
    if (h < 0)
        return cp_error(c, ac, dst);
    struct progress pg = {.on = isatty(2) && !c->quiet && (uint64_t)st.st_size >= CP_PROGRESS_MIN,
                          .total = (uint64_t)st.st_size, .what = dst};
    _cleanup_free_ char *chunk = qv_xmalloc(CP_WRITE_CHUNK);
    int r = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, CP_WRITE_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = qv_failerr(&c->err, -errno, "%s", src);
            break;
        }
        if (n == 0 || (r = cp_check_interrupt(c)) < 0)
            break;
        json_object *args = json_object_new_object(), *ret = NULL, *v;
        json_object_object_add(args, "handle", json_object_new_int64(h));
        char *b64 = cli_base64_encode(chunk, (size_t)n);
        json_object_object_add(args, "buf-b64", json_object_new_string(b64));
        free(b64);
        if ((r = agent_cmd(c, ac, "guest-file-write", args, AGENT_CLI_TIMEOUT_MS, &ret)) < 0) {
            cp_error(c, ac, dst);
            break;
        }
        int64_t wrote = json_object_object_get_ex(ret, "count", &v) ? json_object_get_int64(v) : -1;
        json_object_put(ret);
        if (wrote != n) {
            r = qv_fail(&c->err, -EIO, "%s:%s: the agent wrote %lld of %zd bytes", ac->vm, dst, (long long)wrote, n);
            break;
        }
        pg.done += (uint64_t)n;
        progress_show(&pg, false);
    }
    close_guest_file(c, ac, h);
    if (r == 0)
        progress_show(&pg, true);
    else if (pg.on)
        fputc('\n', stderr);
    if (r == 0) {
        /* the agent creates files with its own umask: the mode follows by the guest's chmod */
        char mode[16], out[64], why[512] = "";
        snprintf(mode, sizeof(mode), "%o", (unsigned)(st.st_mode & 07777));
        const char *argv[] = {"chmod", mode, dst, NULL};
        if (guest_run(c, ac, argv, out, sizeof(out), why, sizeof(why)) < 0)
            fprintf(stderr, "qvisor: warning: %s:%s: the file's mode %s was not kept: %s\n", ac->vm, dst, mode, why);
    }
    return r;
}

static int cp_from_guest(struct cli *c, struct agent_conn *ac, const char *src, const char *dst_in)
{
    /* into a directory: the guest file's name */
    struct stat st;
    _cleanup_free_ char *srccopy = qv_xstrdup(src);
    _cleanup_free_ char *dst = stat(dst_in, &st) == 0 && S_ISDIR(st.st_mode)
                                   ? qv_xasprintf("%s/%s", dst_in, basename(srccopy)) : qv_xstrdup(dst_in);
    int64_t h = open_guest_file(c, ac, src, "r");
    if (h < 0)
        return cp_error(c, ac, src);
    struct progress pg = {.what = src};
    if (isatty(2) && !c->quiet) {
        /* the size, for the progress bar: seek to the end and back */
        json_object *args = json_object_new_object(), *ret = NULL, *v;
        json_object_object_add(args, "handle", json_object_new_int64(h));
        json_object_object_add(args, "offset", json_object_new_int(0));
        json_object_object_add(args, "whence", json_object_new_string("end"));
        if (agent_cmd(c, ac, "guest-file-seek", args, AGENT_CLI_TIMEOUT_MS, &ret) == 0 &&
            json_object_object_get_ex(ret, "position", &v)) {
            pg.total = (uint64_t)json_object_get_int64(v);
            pg.on = pg.total >= CP_PROGRESS_MIN;
        }
        json_object_put(ret);
        args = json_object_new_object();
        json_object_object_add(args, "handle", json_object_new_int64(h));
        json_object_object_add(args, "offset", json_object_new_int(0));
        json_object_object_add(args, "whence", json_object_new_string("set"));
        if (agent_cmd(c, ac, "guest-file-seek", args, AGENT_CLI_TIMEOUT_MS, NULL) < 0) {
            close_guest_file(c, ac, h);
            return cp_error(c, ac, src);
        }
    }
    /* written under a temporary name, renamed when complete */
    _cleanup_free_ char *tmp = qv_xasprintf("%s.qvisor-cp.XXXXXX", dst);
    _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int err = -errno;
        close_guest_file(c, ac, h);
        return qv_failerr(&c->err, err, "%s", dst);
    }
    mode_t um = umask(0);     /* as a file the user created: mkostemp made it 0600 */
    umask(um);
    /* the guest file's mode, as the guest's stat tells (cp's way: less the umask) */
    mode_t mode = 0666;
    char out[64], why[512] = "";
    const char *argv[] = {"stat", "-c", "%a", src, NULL};
    if (guest_run(c, ac, argv, out, sizeof(out), why, sizeof(why)) == 0 && out[0])
        mode = (mode_t)strtoul(out, NULL, 8) & 0777;
    else
        fprintf(stderr, "qvisor: warning: %s:%s: the file's mode is not known (%s): made %o\n", ac->vm, src,
                why[0] ? why : "no answer", (unsigned)(0666 & ~um));
    fchmod(fd, mode & ~um);
    int r = 0;
    for (;;) {
        if ((r = cp_check_interrupt(c)) < 0)
            break;
        json_object *args = json_object_new_object(), *ret = NULL, *v;
        json_object_object_add(args, "handle", json_object_new_int64(h));
        json_object_object_add(args, "count", json_object_new_int(CP_READ_CHUNK));
        if ((r = agent_cmd(c, ac, "guest-file-read", args, AGENT_CLI_TIMEOUT_MS, &ret)) < 0) {
            cp_error(c, ac, src);
            break;
        }
        bool eof = json_object_object_get_ex(ret, "eof", &v) && json_object_get_boolean(v);
        unsigned char *data = NULL;
        size_t n = 0;
        if (!json_object_object_get_ex(ret, "buf-b64", &v) ||
            cli_base64_decode(json_object_get_string(v), &data, &n) < 0) {
            json_object_put(ret);
            r = qv_fail(&c->err, -EIO, "%s:%s: the agent's data is not base64", ac->vm, src);
            break;
        }
        json_object_put(ret);
        if (n && write_all(fd, data, n) < 0) {
            r = qv_failerr(&c->err, -errno, "%s", tmp);
            free(data);
            break;
        }
        free(data);
        pg.done += n;
        progress_show(&pg, false);
        if (eof || n == 0)
            break;
    }
    close_guest_file(c, ac, h);
    if (r == 0 && fsync(fd) < 0)
        r = qv_failerr(&c->err, -errno, "%s", tmp);
    if (r == 0 && rename(tmp, dst) < 0)
        r = qv_failerr(&c->err, -errno, "%s", dst);
    if (r < 0) {
        unlink(tmp);
        if (pg.on)
            fputc('\n', stderr);
        return r;
    }
    if (pg.on) {
        pg.total = pg.done;
        progress_show(&pg, true);
    }
    return 0;
}

int cmd_cp(struct cli *c)
{
    char vm_src[72], vm_dst[72];
    const char *gsrc = NULL, *gdst = NULL;
    bool from = guest_side(c->pos[0], vm_src, sizeof(vm_src), &gsrc);
    bool to = guest_side(c->pos[1], vm_dst, sizeof(vm_dst), &gdst);
    if (from == to)
        return qv_fail(&c->err, -EINVAL, "cp: exactly one of SRC and DST must be VM:/path (usage: qvisor %s)",
                       c->cmd->usage);
    struct agent_conn ac = {0};
    int r = conn_open(c, from ? vm_src : vm_dst, &ac);
    if (r < 0)
        return r;
    cp_catch_signals();
    r = from ? cp_from_guest(c, &ac, gsrc, c->pos[1]) : cp_to_guest(c, &ac, c->pos[0], gdst);
    conn_close(&ac);
    return r;
}

/* ---- agent VM SUBCOMMAND ---- */

/* The password: a line on stdin (no echo on a terminal); never argv, never logged. */
static int read_password(struct cli *c, const char *user, char *pw, size_t pwlen)
{
    struct termios old, quiet;
    bool tty = isatty(0) && tcgetattr(0, &old) == 0;
    if (tty) {
        fprintf(stderr, "password for %s: ", user);
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        tcsetattr(0, TCSAFLUSH, &quiet);
    }
    size_t n = 0;
    int r = 0;
    for (;;) {
        char ch;
        ssize_t k = read(0, &ch, 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0 || ch == '\n')
            break;
        if (n + 1 >= pwlen) {
            r = qv_fail(&c->err, -E2BIG, "set-password: the password is longer than %zu bytes", pwlen - 1);
            break;
        }
        pw[n++] = ch;
    }
    pw[n] = '\0';
    if (n && pw[n - 1] == '\r')
        pw[--n] = '\0';
    if (tty) {
        tcsetattr(0, TCSAFLUSH, &old);
        fputc('\n', stderr);
    }
    if (r == 0 && n == 0)
        r = qv_fail(&c->err, -EINVAL, "set-password: no password on stdin (one line: the new password)");
    return r;
}

static int agent_set_password(struct cli *c, const char *vm, const char *user)
{
    char pw[1024];
    int r = read_password(c, user, pw, sizeof(pw));
    if (r < 0) {
        explicit_bzero(pw, sizeof(pw));
        return r;
    }
    char *b64 = cli_base64_encode(pw, strlen(pw));
    explicit_bzero(pw, sizeof(pw));
    json_object *args = json_object_new_object();
    json_object_object_add(args, "username", json_object_new_string(user));
    json_object_object_add(args, "password", json_object_new_string(b64));
    json_object_object_add(args, "crypted", json_object_new_boolean(false));
    explicit_bzero(b64, strlen(b64));
    free(b64);
    r = agent_cmd_once(c, vm, "guest-set-user-password", args, AGENT_CLI_TIMEOUT_MS, NULL);
    if (r == 0 && !c->quiet)
        printf("%s: password of %s set\n", vm, user);
    return r;
}

int cmd_agent(struct cli *c)
{
    const char *vm = c->pos[0], *sub = c->pos[1];
    static const struct {
        const char *sub, *execute;
        int timeout_ms;
    } subs[] = {
        {"ping", "guest-ping", AGENT_CLI_TIMEOUT_MS},
        {"info", "guest-info", AGENT_CLI_TIMEOUT_MS},
        {"time-sync", "guest-set-time", AGENT_CLI_TIMEOUT_MS},
        {"fsfreeze", "guest-fsfreeze-freeze", AGENT_FREEZE_CLI_TIMEOUT_MS},
        {"fsthaw", "guest-fsfreeze-thaw", AGENT_CLI_TIMEOUT_MS},
        {"fsfreeze-status", "guest-fsfreeze-status", AGENT_CLI_TIMEOUT_MS},
        {"set-password", "guest-set-user-password", AGENT_CLI_TIMEOUT_MS},
    };
    size_t i = 0;
    while (i < ARRAY_SIZE(subs) && strcmp(subs[i].sub, sub) != 0)
        i++;
    if (i == ARRAY_SIZE(subs))
        return qv_fail(&c->err, -EINVAL, "agent: no subcommand %s (ping, info, time-sync, fsfreeze, fsthaw, "
                       "fsfreeze-status, set-password USER)", sub);
    bool set_pw = strcmp(sub, "set-password") == 0;
    if (set_pw != (c->npos == 3))
        return qv_fail(&c->err, -EINVAL, "usage: qvisor %s", c->cmd->usage);
    if (set_pw)
        return agent_set_password(c, vm, c->pos[2]);
    json_object *args = NULL, *ret = NULL;
    if (strcmp(sub, "time-sync") == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        args = json_object_new_object();
        json_object_object_add(args, "time", json_object_new_int64((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec));
    }
    int r = agent_cmd_once(c, vm, subs[i].execute, args, subs[i].timeout_ms, &ret);
    if (r < 0)
        return r;
    if (c->json) {
        if (ret)
            cli_print_json(ret);
        else
            printf("{}\n");
    } else if (strcmp(sub, "ping") == 0) {
        if (!c->quiet)
            printf("%s: the guest agent answers\n", vm);
    } else if (strcmp(sub, "info") == 0) {
        json_object *v, *cmds;
        printf("version   %s\n", json_object_object_get_ex(ret, "version", &v) ? json_object_get_string(v) : "?");
        printf("commands ");
        if (json_object_object_get_ex(ret, "supported_commands", &cmds) && json_object_is_type(cmds, json_type_array))
            for (size_t k = 0; k < json_object_array_length(cmds); k++) {
                json_object *o = json_object_array_get_idx(cmds, k), *name, *en;
                if (json_object_object_get_ex(o, "name", &name) &&
                    (!json_object_object_get_ex(o, "enabled", &en) || json_object_get_boolean(en)))
                    printf(" %s", json_object_get_string(name));
            }
        printf("\n");
    } else if (strcmp(sub, "time-sync") == 0) {
        if (!c->quiet)
            printf("%s: guest clock set to the host's\n", vm);
    } else if (strcmp(sub, "fsfreeze") == 0 || strcmp(sub, "fsthaw") == 0) {
        int n = json_object_get_int(ret);
        printf("%s: %d filesystem%s %s\n", vm, n, n == 1 ? "" : "s", strcmp(sub, "fsfreeze") == 0 ? "frozen" : "thawed");
    } else {
        printf("%s\n", json_object_get_string(ret));
    }
    json_object_put(ret);
    return 0;
}

/* ---- ifaddr --source agent ---- */

int cli_ifaddr_agent(struct cli *c, const char *vm)
{
    json_object *ret = NULL;
    int r = agent_cmd_once(c, vm, "guest-network-get-interfaces", NULL, AGENT_CLI_TIMEOUT_MS, &ret);
    if (r < 0)
        return r;
    if (!json_object_is_type(ret, json_type_array)) {
        json_object_put(ret);
        return qv_fail(&c->err, -EIO, "%s: guest-network-get-interfaces: the agent's reply is not a list", vm);
    }
    /* as the guest sees them: name, MAC, addresses with prefix */
    json_object *out = json_object_new_array();
    for (size_t i = 0; i < json_object_array_length(ret); i++) {
        json_object *o = json_object_array_get_idx(ret, i), *v, *addrs;
        json_object *n = json_object_new_object(), *list = json_object_new_array();
        if (json_object_object_get_ex(o, "name", &v))
            json_object_object_add(n, "name", json_object_get(v));
        if (json_object_object_get_ex(o, "hardware-address", &v))
            json_object_object_add(n, "mac", json_object_get(v));
        if (json_object_object_get_ex(o, "ip-addresses", &addrs) && json_object_is_type(addrs, json_type_array))
            for (size_t k = 0; k < json_object_array_length(addrs); k++) {
                json_object *a = json_object_array_get_idx(addrs, k), *ip, *prefix, *type;
                if (!json_object_object_get_ex(a, "ip-address", &ip))
                    continue;
                json_object *e = json_object_new_object();
                if (json_object_object_get_ex(a, "ip-address-type", &type))
                    json_object_object_add(e, "type", json_object_get(type));
                json_object_object_add(e, "address", json_object_get(ip));
                if (json_object_object_get_ex(a, "prefix", &prefix))
                    json_object_object_add(e, "prefix", json_object_get(prefix));
                json_object_array_add(list, e);
            }
        json_object_object_add(n, "addresses", list);
        json_object_array_add(out, n);
    }
    json_object_put(ret);
    if (c->json) {
        cli_print_json(out);
    } else {
        printf("%-16s %-17s %s\n", "NAME", "MAC", "ADDRESSES");
        for (size_t i = 0; i < json_object_array_length(out); i++) {
            json_object *o = json_object_array_get_idx(out, i), *v, *list;
            printf("%-16s %-17s", json_object_object_get_ex(o, "name", &v) ? json_object_get_string(v) : "-",
                   json_object_object_get_ex(o, "mac", &v) ? json_object_get_string(v) : "-");
            json_object_object_get_ex(o, "addresses", &list);
            for (size_t k = 0; k < json_object_array_length(list); k++) {
                json_object *a = json_object_array_get_idx(list, k), *ip, *prefix;
                json_object_object_get_ex(a, "address", &ip);
                printf(" %s", json_object_get_string(ip));
                if (json_object_object_get_ex(a, "prefix", &prefix))
                    printf("/%d", json_object_get_int(prefix));
            }
            printf("%s\n", json_object_array_length(list) ? "" : " -");
        }
    }
    json_object_put(out);
    return 0;
}
