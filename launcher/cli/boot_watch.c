/* qvisor boot's watcher (boot.h): the console stream matched line by line against
 * --expect (in order), --fail and the kernel's panic banner, the supervisor's lines
 * read, the guest's verdict taken from its last one, and the run's decision. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/boot.h"

#define BOOT_TAIL (8u << 10)        /* console tail kept for reports */
#define BOOT_PANIC_BANNER "Kernel panic - not syncing"

static char *dup_n(const char *p, size_t n)
{
    char *s = qv_xcalloc(n + 1, 1);
    if (n)
        memcpy(s, p, n);
    return s;
}

uint64_t boot_since(const struct boot *b)
{
    return monotonic_ms() - b->t0;
}

void boot_decide(struct boot *b, int result, const char *fmt, ...)
{
    if (b->result >= 0)
        return;
    b->result = result;
    b->t_end = boot_since(b);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->reason, sizeof(b->reason), fmt, ap);
    va_end(ap);
}

void boot_check_fail(struct check *k, uint64_t at, const char *why)
{
    if (k->done)
        return;
    k->done = true;
    k->passed = false;
    k->at_ms = at;
    snprintf(k->why, sizeof(k->why), "%s", why);
}

/* Every check not decided yet fails with why. */
void boot_fail_open_checks(struct boot *b, const char *why)
{
    for (size_t i = 0; i < b->nchecks; i++)
        boot_check_fail(&b->checks[i], boot_since(b), why);
}

static void out_console(struct boot *b, const char *p, size_t n, bool line_start)
{
    if (b->c->quiet || n == 0)
        return;
    if (b->prefix && line_start) {
        char pre[96];
        int m = snprintf(pre, sizeof(pre), "%s| ", b->name);
        write_all(STDOUT_FILENO, pre, (size_t)m);
    }
    write_all(STDOUT_FILENO, p, n);
}

/* The current line (complete or not) against the next --expect and every --fail. */
static void match_line(struct boot *b, const char *line)
{
    for (size_t i = 0; i < b->nfails; i++) {
        if (regexec(&b->fails[i], line, 0, NULL, 0) == 0) {
            char why[300];
            snprintf(why, sizeof(why), "the console matched --fail '%s'", b->fail_src[i]);
            boot_fail_open_checks(b, why);
            boot_decide(b, 1, "%s", why);
            return;
        }
    }
    if (strstr(line, BOOT_PANIC_BANNER)) {
        boot_fail_open_checks(b, "kernel panic");
        boot_decide(b, 1, "kernel panic (the console says \"%s\")", BOOT_PANIC_BANNER);
        return;
    }
    while (b->next_expect < b->nexpect && regexec(&b->checks[b->next_expect].re, line, 0, NULL, 0) == 0) {
        struct check *k = &b->checks[b->next_expect++];
        k->done = k->passed = true;
        k->at_ms = boot_since(b);
    }
}

void boot_console_data(struct boot *b, const char *p, size_t n)
{
    if (!b->t_first_line && n)
        b->t_first_line = boot_since(b);
    buf_add(&b->tail, p, n);
    if (b->tail.len > BOOT_TAIL)
        buf_consume(&b->tail, b->tail.len - BOOT_TAIL);
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) + 1 : n;
        out_console(b, p, take, b->line.len == 0);
        for (size_t i = 0; i < take; i++)
            if (p[i] != '\r' && p[i] != '\n' && p[i] != '\0')
                buf_add(&b->line, &p[i], 1);
        if (b->line.len > 4096)     /* a line that never ends is matched in pieces */
            nl = p;
        char *s = dup_n(b->line.p ? b->line.p : "", b->line.len);
        if (b->result < 0 && (nl || b->line.len != b->line_checked))
            match_line(b, s);
        free(s);
        b->line_checked = b->line.len;
        if (nl) {
            buf_consume(&b->line, b->line.len);
            b->line_checked = 0;
        }
        p += take;
        n -= take;
    }
}

/* The guest is gone: its verdict. */
void boot_final_line(struct boot *b, json_object *o)
{
    json_object *v;
    bool panicked = json_object_object_get_ex(o, "panicked", &v) && json_object_get_boolean(v);
    const char *reason = json_object_object_get_ex(o, "reason", &v) ? json_object_get_string(v) : "";
    bool known = json_object_object_get_ex(o, "status", &v) && v;
    int status = known ? json_object_get_int(v) : -1;
    if (panicked) {
        boot_fail_open_checks(b, "kernel panic");
        boot_decide(b, 1, "kernel panic (GUEST_PANICKED)");
        return;
    }
    int code = -1;
    if (known && status < 128 && (status & 1))
        code = status >> 1;     /* isa-debug-exit: CODE*2+1 */
    else if (known && status == 0)
        code = 0;               /* powered off */
    if (code != 0) {
        char why[300];
        if (code > 0)
            snprintf(why, sizeof(why), "the guest reported exit code %d", code);
        else
            snprintf(why, sizeof(why), "the VM ended: %s", reason);
        boot_fail_open_checks(b, why);
        boot_decide(b, 1, "%s", why);
        return;
    }
    if (b->next_expect < b->nexpect || ((b->exec_cmd || b->exec_file) && !b->exec_started)) {
        boot_fail_open_checks(b, "the guest ended before this");
        boot_decide(b, 1, "the guest ended (%s) before %s", reason,
               b->next_expect < b->nexpect ? "every --expect was seen" : "--exec could run");
        return;
    }
    boot_decide(b, 0, "the guest %s", status == 0 ? "powered off" : "reported exit code 0");
}

void boot_read_lines(int *fd, struct buf *in, void (*fn)(struct boot *, const char *), struct boot *b, bool *eof)
{
    char chunk[4096];
    for (;;) {
        ssize_t n = read(*fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            *eof = true;
            break;
        }
        buf_add(in, chunk, (size_t)n);
    }
    char *nl;
    while (in->len && (nl = memchr(in->p, '\n', in->len))) {
        char *line = dup_n(in->p, (size_t)(nl - in->p));
        buf_consume(in, (size_t)(nl - in->p) + 1);
        fn(b, line);
        free(line);
    }
}

void boot_sup_line(struct boot *b, const char *line)
{
    json_object *o = json_tokener_parse(line);
    if (!o)
        return;
    if (b->final)
        json_object_put(b->final);
    b->final = o;
}

void boot_console_readable(struct boot *b)
{
    char chunk[8192];
    for (;;) {
        ssize_t n = read(b->console_fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            close(b->console_fd);
            b->console_fd = -1;
            return;
        }
        boot_console_data(b, chunk, (size_t)n);
    }
}
