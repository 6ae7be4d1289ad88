/* migrate --to ssh://[USER@]HOST[:PORT]: the destination's half started through ssh, by
 * this CLI, as a child program (argv, execve, no shell here). ssh runs
 *   QVISOR [--root DIR] --json migrate-incoming NAME --listen ADDR:0 --definition -
 *          [--copy-storage] [--tls DIR]
 * on HOST: ADDR is HOST as resolved here, port 0 lets the destination pick a free port,
 * and the definition travels on ssh's stdin (it may hold credential values: never in
 * an argv on either host). The remote shell joins the words with spaces, so every word
 * must be one that no shell changes: names and paths with other characters are refused
 * here rather than quoted. migrate-incoming answers with a JSON object that names the
 * port and the one-time token; the control line and the stream then go straight over
 * TCP to ADDR:PORT (not through ssh: its speed is the network's); --persistent travels
 * on the control line (the destination keeps its definition once the guest runs). The remote side's errors come back with the host's name. */
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "launcher/cli/cli.h"
#include "launcher/cli/migrate_ssh.h"

#define SSH_SLACK_MS 30000      /* ssh's own connect and the remote CLI's start, beyond --wait-timeout */

/* A word the remote shell passes on unchanged. */
static bool shell_safe(const char *w)
{
    if (!*w)
        return false;
    for (const char *p = w; *p; p++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-./:+,=@%", *p))
            return false;
    return true;
}

static int safe_word(struct cli *c, const char *what, const char *w)
{
    if (!shell_safe(w) || w[0] == '-')
        return qv_fail(&c->err, -EINVAL, "migrate: %s \"%s\": ssh hands it to the remote shell, so only letters, "
                       "digits and _-./:+,=@%% are allowed (and no leading -)", what, w);
    return 0;
}

int ssh_target_parse(struct cli *c, const char *to, struct ssh_target *t)
{
    *t = (struct ssh_target){0};
    const char *rest = to + strlen("ssh://");
    const char *at = strchr(rest, '@');
    if (at) {
        if ((size_t)(at - rest) >= sizeof(t->user) || at == rest)
            return qv_fail(&c->err, -EINVAL, "migrate: --to %s: the user name is empty or too long", to);
        memcpy(t->user, rest, (size_t)(at - rest));
        rest = at + 1;
    }
    const char *end = rest + strlen(rest);
    if (end > rest && end[-1] == '/')
        end--;
    const char *colon = NULL;
    if (*rest == '[') {
        const char *close = memchr(rest, ']', (size_t)(end - rest));
        if (!close)
            return qv_fail(&c->err, -EINVAL, "migrate: --to %s: no ] after the IPv6 address", to);
        if ((size_t)(close - rest - 1) >= sizeof(t->host))
            return qv_fail(&c->err, -EINVAL, "migrate: --to %s: the host name is too long", to);
        memcpy(t->host, rest + 1, (size_t)(close - rest - 1));
        colon = close + 1 < end && close[1] == ':' ? close + 1 : NULL;
        if (!colon && close + 1 != end)
            return qv_fail(&c->err, -EINVAL, "migrate: --to %s: not ssh://[USER@]HOST[:PORT]", to);
    } else {
        colon = memchr(rest, ':', (size_t)(end - rest));
        const char *hend = colon ? colon : end;
        if ((size_t)(hend - rest) >= sizeof(t->host))
            return qv_fail(&c->err, -EINVAL, "migrate: --to %s: the host name is too long", to);
        memcpy(t->host, rest, (size_t)(hend - rest));
    }
    if (!t->host[0])
        return qv_fail(&c->err, -EINVAL, "migrate: --to %s: the host is missing (ssh://[USER@]HOST[:PORT])", to);
    if (colon) {
        char port[8] = "";
        if ((size_t)(end - colon - 1) >= sizeof(port))
            return qv_fail(&c->err, -EINVAL, "migrate: --to %s: the port must be 1-65535", to);
        memcpy(port, colon + 1, (size_t)(end - colon - 1));
        char *pe;
        long p = strtol(port, &pe, 10);
        if (!port[0] || *pe || p <= 0 || p > 65535)
            return qv_fail(&c->err, -EINVAL, "migrate: --to %s: the port must be 1-65535", to);
        t->port = (int)p;
    }
    int r;
    if ((t->user[0] && (r = safe_word(c, "the ssh user", t->user)) < 0) ||
        (r = safe_word(c, "the ssh host", t->host)) < 0)
        return r;
    /* the address the destination listens on and the source connects to */
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    int g = getaddrinfo(t->host, NULL, &hints, &res);
    if (g != 0)
        return qv_fail(&c->err, g == EAI_NONAME ? -ENOENT : -EINVAL, "migrate: --to %s: %s: %s", to, t->host,
                       gai_strerror(g));
    getnameinfo(res->ai_addr, res->ai_addrlen, t->addr, sizeof(t->addr), NULL, 0, NI_NUMERICHOST);
    t->v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return 0;
}

/* Runs argv with `input` on its stdin; its stdout and stderr in *out, *err. The exit
 * status, 128 + signal, or -errno (-ETIMEDOUT: killed after timeout_ms). */
static int run_with_input(const char *const *argv, const char *input, int timeout_ms, char **out, char **err)
{
    char exe[PATH_MAX];
    int r = find_program(argv[0], exe, sizeof(exe));
    if (r < 0)
        return r;
    int pin[2], pout[2], perr[2];
    if (pipe2(pin, O_CLOEXEC) < 0)
        return -errno;
    if (pipe2(pout, O_CLOEXEC) < 0 || pipe2(perr, O_CLOEXEC) < 0) {
        r = -errno;
        close(pin[0]);
        close(pin[1]);
        return r;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* ssh keeps no terminal: BatchMode, and Ctrl-C here is ours to handle */
        setsid();
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        extern char **environ;
        execve(exe, (char *const *)argv, environ);
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    signal(SIGPIPE, SIG_IGN);
    write_all(pin[1], input, strlen(input));
    close(pin[1]);
    struct buf bo = {0}, be = {0};
    buf_adds(&bo, "");
    buf_adds(&be, "");
    struct pollfd fds[2] = {{.fd = pout[0], .events = POLLIN}, {.fd = perr[0], .events = POLLIN}};
    struct buf *bufs[2] = {&bo, &be};
    uint64_t until = monotonic_ms() + (uint64_t)timeout_ms;
    bool timed_out = false;
    while (fds[0].fd >= 0 || fds[1].fd >= 0) {
        uint64_t now = monotonic_ms();
        if (now >= until) {
            timed_out = true;
            break;
        }
        int n = poll(fds, 2, (int)(until - now));
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !fds[i].revents)
                continue;
            char chunk[4096];
            ssize_t k = read(fds[i].fd, chunk, sizeof(chunk));
            if (k > 0 && bufs[i]->len < (1u << 20))
                buf_add(bufs[i], chunk, (size_t)k);
            else if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN)) {
                close(fds[i].fd);
                fds[i].fd = -1;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    *out = bo.p;
    *err = be.p;
    if (timed_out)
        return -ETIMEDOUT;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The last line of text that says something, without "qvisor: ". */
static const char *last_words(char *text)
{
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
        text[--n] = '\0';
    char *line = strrchr(text, '\n');
    line = line ? line + 1 : text;
    if (strncmp(line, "qvisor: ", 8) == 0)
        line += 8;
    return *line ? line : "(no message)";
}

static int from_exit(int rc)
{
    switch (rc) {
    case 2: return -EINVAL;
    case 3: return -ENOENT;
    case 4: return -EBUSY;
    case 5: return -ETIMEDOUT;
    default: return -EIO;
    }
}

/* ssh [options] -- HOST QVISOR [--root DIR]: what both remote commands start with. */
static size_t ssh_argv(const char **argv, const struct ssh_target *t, const struct ssh_incoming *in,
                       const char *qvisor, char port[8])
{
    size_t k = 0;
    snprintf(port, 8, "%d", t->port);
    argv[k++] = "ssh";
    argv[k++] = "-o";
    argv[k++] = "BatchMode=yes";
    argv[k++] = "-T";
    if (in->ssh_config) {
        argv[k++] = "-F";
        argv[k++] = in->ssh_config;
    }
    if (t->port) {
        argv[k++] = "-p";
        argv[k++] = port;
    }
    if (t->user[0]) {
        argv[k++] = "-l";
        argv[k++] = t->user;
    }
    argv[k++] = "--";
    argv[k++] = t->host;
    argv[k++] = qvisor;
    if (in->remote_root) {
        argv[k++] = "--root";
        argv[k++] = in->remote_root;
    }
    return k;
}

int ssh_cancel_incoming(struct cli *c, const char *vm, const struct ssh_target *t, const struct ssh_incoming *in)
{
    (void)c;
    const char *argv[40];
    char port[8];
    size_t k = ssh_argv(argv, t, in, t->qvisor, port);
    argv[k++] = "migrate-incoming";
    argv[k++] = vm;
    argv[k++] = "--cancel";
    argv[k] = NULL;
    _cleanup_free_ char *out = NULL, *err = NULL;
    int r = run_with_input(argv, "", SSH_SLACK_MS + 30000, &out, &err);
    return r == 0 ? 0 : -EIO;
}

int ssh_start_incoming(struct cli *c, const char *vm, struct ssh_target *t, const struct ssh_incoming *in,
                       char *address, size_t addrlen)
{
    int r;
    char exe[PATH_MAX];
    const char *qvisor = in->remote_qvisor;
    if (!qvisor) {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        if (n <= 0)
            return qv_failerr(&c->err, -errno, "migrate: this program's own path (give --remote-qvisor PATH)");
        exe[n] = '\0';
        qvisor = exe;
    }
    if (qvisor[0] != '/')
        return qv_fail(&c->err, -EINVAL, "migrate: --remote-qvisor %s: an absolute path", qvisor);
    if ((r = safe_word(c, "VM name", vm)) < 0 || (r = safe_word(c, "--remote-qvisor", qvisor)) < 0 ||
        (in->remote_root && (r = safe_word(c, "--remote-root", in->remote_root)) < 0) ||
        (in->tls_dir && (r = safe_word(c, "--tls", in->tls_dir)) < 0))
        return r;
    if (in->remote_root && in->remote_root[0] != '/')
        return qv_fail(&c->err, -EINVAL, "migrate: --remote-root %s: an absolute path", in->remote_root);
    snprintf(t->qvisor, sizeof(t->qvisor), "%s", qvisor);
    qvisor = t->qvisor;
    char listen[INET6_ADDRSTRLEN + 8], port[8], wait_s[16];
    snprintf(listen, sizeof(listen), t->v6 ? "[%s]:0" : "%s:0", t->addr);
    snprintf(wait_s, sizeof(wait_s), "%d", in->wait_timeout_ms / 1000 > 0 ? in->wait_timeout_ms / 1000 : 1);
    const char *argv[40];
    size_t k = ssh_argv(argv, t, in, qvisor, port);
    argv[k++] = "--json";
    argv[k++] = "migrate-incoming";
    argv[k++] = vm;
    argv[k++] = "--listen";
    argv[k++] = listen;
    argv[k++] = "--definition";
    argv[k++] = "-";
    argv[k++] = "--wait-timeout";
    argv[k++] = wait_s;
    if (in->copy_storage)
        argv[k++] = "--copy-storage";
    if (in->postcopy)
        argv[k++] = "--postcopy";
    if (in->tls_dir) {
        argv[k++] = "--tls";
        argv[k++] = in->tls_dir;
    }
    argv[k] = NULL;
    _cleanup_free_ char *out = NULL, *err = NULL;
    r = run_with_input(argv, in->definition, in->wait_timeout_ms + SSH_SLACK_MS, &out, &err);
    if (r == -ENOENT)
        return qv_fail(&c->err, -ENOENT, "migrate: ssh is not installed here (openssh-client)");
    if (r == -ETIMEDOUT)
        return qv_fail(&c->err, -ETIMEDOUT, "%s: on %s: ssh gave no answer within %d s", vm, t->host,
                       (in->wait_timeout_ms + SSH_SLACK_MS) / 1000);
    if (r < 0)
        return qv_failerr(&c->err, r, "migrate: running ssh");
    if (r == 255)
        return qv_fail(&c->err, -EIO, "%s: ssh %s: %s", vm, t->host, last_words(err));
    if (r != 0)
        return qv_fail(&c->err, from_exit(r), "%s: on %s: %s", vm, t->host, last_words(err));
    /* the answer: {"name": ..., "address": "ADDR:PORT", ...} (what it said before it, if anything, is not JSON) */
    char *line = strchr(out, '{') ? strchr(out, '{') : out;
    _cleanup_json_ json_object *o = NULL;
    struct qv_err pe = {0};
    json_object *a;
    if (json_parse_str("the destination's answer", line, &o, &pe) < 0 || !json_object_object_get_ex(o, "address", &a) ||
        !json_object_is_type(a, json_type_string))
        return qv_fail(&c->err, -EIO, "%s: on %s: migrate-incoming answered \"%.200s\", not its address (is %s there "
                       "a qvisor that knows --listen ADDR:0?)", vm, t->host, line, qvisor);
    const char *got = json_object_get_string(a);
    const char *pcolon = strrchr(got, ':');
    if (!pcolon || atoi(pcolon + 1) <= 0)
        return qv_fail(&c->err, -EIO, "%s: on %s: migrate-incoming listens on \"%s\", no port", vm, t->host, got);
    json_object *tok;
    if (!json_object_object_get_ex(o, "token", &tok) || !json_object_is_type(tok, json_type_string) ||
        !json_object_get_string_len(tok) || (size_t)json_object_get_string_len(tok) >= sizeof(t->token))
        return qv_fail(&c->err, -EIO, "%s: on %s: migrate-incoming answered no token (is %s there a qvisor that "
                       "speaks QVMIG/1 with tokens?)", vm, t->host, qvisor);
    snprintf(t->token, sizeof(t->token), "%s", json_object_get_string(tok));
    /* connect to HOST as resolved here, at the port the destination chose */
    snprintf(address, addrlen, t->v6 ? "[%s]:%s" : "%s:%s", t->addr, pcolon + 1);
    return 0;
}
