/* qvisor cp: a file copied into or out of the guest through the agent's file
 * commands, in chunks, with its mode (guest-exec of the guest's chmod and stat). */
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "launcher/cli/agent.h"

/* cp: a write carries 36 KiB (48 KiB of base64) in one request line; a read asks for
 * 256 KiB (replies have no such limit). */
#define CP_WRITE_CHUNK (36u << 10)
#define CP_READ_CHUNK (256u << 10)
#define CP_PROGRESS_MIN (1u << 20)   /* smaller copies draw no progress */

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
    int r = agent_conn_open(c, from ? vm_src : vm_dst, &ac);
    if (r < 0)
        return r;
    cp_catch_signals();
    r = from ? cp_from_guest(c, &ac, gsrc, c->pos[1]) : cp_to_guest(c, &ac, c->pos[0], gdst);
    agent_conn_close(&ac);
    return r;
}
