/* The guest agent verbs agent (ping, info, time-sync, fsfreeze, fsthaw,
 * fsfreeze-status, set-password) and ifaddr --source agent, and what every agent verb
 * shares (agent.h): base64 and the connection to the VM's supervisor, which owns the
 * agent channel (launcher/supervisor/agent.c); the agent's data travels as base64,
 * encoded and decoded here. exec is agent_exec.c, cp agent_cp.c. */
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "launcher/cli/agent.h"

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


int agent_conn_open(struct cli *c, const char *vm, struct agent_conn *ac)
{
    ac->vm = vm;
    ac->fd = -1;
    return ctl_connect(&c->paths, vm, &ac->fd, &c->err);
}

void agent_conn_close(struct agent_conn *ac)
{
    if (ac->fd >= 0)
        close(ac->fd);
    ac->fd = -1;
    buf_free(&ac->in);
}

int agent_conn_call(struct cli *c, struct agent_conn *ac, json_object *req, int timeout_ms, json_object **reply)
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

int agent_cmd(struct cli *c, struct agent_conn *ac, const char *execute, json_object *args, int timeout_ms,
                     json_object **ret)
{
    json_object *req = ctl_request("agent"), *reply = NULL, *v;
    json_object_object_add(req, "execute", json_object_new_string(execute));
    if (args)
        json_object_object_add(req, "arguments", args);
    json_object_object_add(req, "timeout_ms", json_object_new_int(timeout_ms));
    int r = agent_conn_call(c, ac, req, timeout_ms + 15000, &reply);
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
    int r = agent_conn_open(c, vm, &ac);
    if (r < 0) {
        if (args)
            json_object_put(args);
        return r;
    }
    r = agent_cmd(c, &ac, execute, args, timeout_ms, ret);
    agent_conn_close(&ac);
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
