/* `qvisor console NAME`: the serial console through the supervisor. On a terminal
 * it is raw and Ctrl-] detaches; with a pipe it sends stdin, then prints what the
 * guest answers until it has been quiet for --idle seconds, or, with --expect TEXT,
 * until TEXT appears (exit 5 after --timeout seconds without it). */
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include <sys/socket.h>

#include "launcher/cli/cli.h"

#define DETACH_KEY 0x1d     /* Ctrl-] */

struct term {
    bool raw;
    struct termios saved;
};

static void term_raw(struct term *t)
{
    if (tcgetattr(STDIN_FILENO, &t->saved) < 0)
        return;
    struct termios raw = t->saved;
    cfmakeraw(&raw);
    if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0)
        t->raw = true;
}

static void term_restore(struct term *t)
{
    if (t->raw)
        tcsetattr(STDIN_FILENO, TCSANOW, &t->saved);
    t->raw = false;
}

static int out(const char *p, size_t n)
{
    return write_all(STDOUT_FILENO, p, n);
}

int cmd_console(struct cli *c)
{
    const char *name = c->pos[0];
    int idle_ms, timeout_ms;
    int r = cli_opt_seconds_ms(c, "idle", 1000, &idle_ms);
    if (r == 0)
        r = cli_opt_seconds_ms(c, "timeout", 30000, &timeout_ms);
    if (r < 0)
        return r;
    const char *expect = cli_opt(c, "expect");
    size_t expect_len = expect ? strlen(expect) : 0;
    struct buf seen = {0};     /* the tail of the output, for --expect */
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    bool found = false;
    _cleanup_close_ int fd = -1;
    if ((r = ctl_connect(&c->paths, name, &fd, &c->err)) < 0)
        return r;
    json_object *req = ctl_request("console");
    json_object_object_add(req, "replay", json_object_new_boolean(cli_flag(c, "replay")));
    r = ctl_send(fd, req, &c->err);
    json_object_put(req);
    if (r < 0)
        return r;
    struct buf in = {0};
    _cleanup_free_ char *line = NULL;
    json_object *reply = NULL;
    if ((r = ctl_read_line(fd, &in, 5000, &line, &c->err)) < 0 || (r = ctl_parse_reply(line, &reply, &c->err)) < 0) {
        buf_free(&in);
        return r;
    }
    json_object_put(reply);
    if (in.len) {
        out(in.p, in.len);
        buf_add(&seen, in.p, in.len);
    }
    buf_free(&in);

    bool tty = isatty(STDIN_FILENO);
    struct term t = {0};
    if (tty) {
        fprintf(stderr, "Connected to the console of %s; Ctrl-] detaches.\r\n", name);
        term_raw(&t);
    }
    bool stdin_open = true;
    signal(SIGPIPE, SIG_IGN);
    for (;;) {
        if (expect && (found = seen.len && memmem(seen.p, seen.len, expect, expect_len)))
            break;
        int wait = stdin_open ? -1 : idle_ms;
        if (expect) {
            uint64_t now = monotonic_ms();
            if (now >= deadline)
                break;
            wait = (int)(deadline - now);
        }
        struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN}};
        int pr = poll(pfd, stdin_open ? 2 : 1, wait);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr == 0 && !expect)
            break;      /* stdin is done and the guest has been quiet */
        if (pr == 0)
            continue;
        char buf[8192];
        if (pfd[0].revents) {
            ssize_t n = read(fd, buf, sizeof(buf));
            if (n <= 0) {
                if (tty)
                    fprintf(stderr, "\r\nThe console of %s closed.\r\n", name);
                break;
            }
            if (out(buf, (size_t)n) < 0)
                break;
            if (expect) {
                buf_add(&seen, buf, (size_t)n);
                if (seen.len > 2 * expect_len + 8192)
                    buf_consume(&seen, seen.len - expect_len - 8192);
            }
        }
        if (stdin_open && pfd[1].revents) {
            ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
            if (n <= 0) {
                stdin_open = false;
                continue;
            }
            char *detach = tty ? memchr(buf, DETACH_KEY, (size_t)n) : NULL;
            size_t send_n = detach ? (size_t)(detach - buf) : (size_t)n;
            if (send_n && write_all(fd, buf, send_n) < 0)
                break;
            if (detach) {
                term_restore(&t);
                fprintf(stderr, "\nDetached from %s.\n", name);
                break;
            }
        }
    }
    term_restore(&t);
    buf_free(&seen);
    if (expect && !found)
        return qv_fail(&c->err, -ETIMEDOUT, "%s: \"%s\" did not appear on the console within %d s", name, expect,
                       timeout_ms / 1000);
    return 0;
}
