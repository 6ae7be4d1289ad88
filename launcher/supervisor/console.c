/* The serial console's supervisor side: what QEMU's console socket delivers is kept
 * in a ring for late attachers, written to the VM's log a line at a time (one write
 * per batch, not per line), and passed to attached console clients. A guest that
 * floods its console is slowed down, never its manager: past a byte budget the
 * supervisor stops reading for a while, QEMU's serial port fills, and the guest waits
 * for its UART like on real hardware. The log itself is rotated by size. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/stat.h>

#include "launcher/supervisor/internal.h"

#define CONSOLE_LINE_IDLE_MS 1000
#define CONSOLE_RATE (256u << 10)      /* bytes per second, sustained: 20x a 115200-baud UART */
#define CONSOLE_BURST (1u << 20)       /* what a boot may print at once */
#define LOG_CHECK_MS 10000             /* QEMU writes to the log too: look at its size this often */
#define CONSOLE_RING (64u << 10)       /* recent console output kept for late attachers */

/* The console's byte budget: a token bucket. */
struct console_rate {
    int64_t tokens;
    uint64_t refilled_at;
    uint64_t resume_at;     /* reading is paused until then; 0: not paused */
    bool throttled;         /* said so in the log once */
};

struct sup_console {
    int fd;                 /* QEMU's console socket; -1 while not connected */
    struct ev ev;
    struct buf ring;        /* the last CONSOLE_RING bytes, for a console client's replay */
    struct buf line;        /* the partial line not logged yet */
    uint64_t line_at;       /* when it last grew */
    struct console_rate rate;
    uint64_t log_check_at;  /* next look at the log's size */
};

struct sup_console *console_new(void)
{
    struct sup_console *c = qv_xcalloc(1, sizeof(*c));
    c->fd = -1;
    c->ev.kind = EV_CONSOLE;
    return c;
}

void console_free(struct sup *s)
{
    if (!s->con)
        return;
    console_close(s);
    buf_free(&s->con->ring);
    buf_free(&s->con->line);
    free(s->con);
    s->con = NULL;
}

bool console_connected(const struct sup *s)
{
    return s->con->fd >= 0;
}

const struct buf *console_recent(const struct sup *s)
{
    return &s->con->ring;
}

int console_write(struct sup *s, const char *data, size_t n)
{
    if (s->con->fd < 0)
        return 0;
    return write_all(s->con->fd, data, n);
}

/* Complete lines (all of them when flushing) from the partial line into the log, one write. */
static void log_lines(struct sup *s, bool flush)
{
    char ts[40];
    format_timestamp(ts, sizeof(ts));
    struct buf out = {0};
    char *start = s->con->line.p;
    size_t len = s->con->line.len;
    for (;;) {
        char *nl = len ? memchr(start, '\n', len) : NULL;
        if (!nl && !(flush && len) && len < 4096)
            break;
        size_t n = nl ? (size_t)(nl - start) : len;
        if (n > 4096)
            n = 4096;
        buf_printf(&out, "%s console: ", ts);
        for (size_t i = 0; i < n; i++)
            if (start[i] != '\r') {
                char ch = (unsigned char)start[i] < 0x20 && start[i] != '\t' ? '?' : start[i];
                buf_add(&out, &ch, 1);
            }
        buf_add(&out, "\n", 1);
        size_t used = nl && n == (size_t)(nl - start) ? n + 1 : n;
        start += used;
        len -= used;
        if (!nl && !len)
            break;
    }
    if (out.len)
        write_all(s->log_fd, out.p, out.len);
    buf_free(&out);
    buf_consume(&s->con->line, s->con->line.len - len);
}

static void console_watch(struct sup *s, bool on)
{
    struct epoll_event ee = {.events = on ? EPOLLIN : 0, .data.ptr = &s->con->ev};
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, s->con->fd, &ee);
}

/* The token bucket: false (and reading paused until there is budget) when spent. */
static bool console_budget(struct sup *s, uint64_t now)
{
    struct console_rate *cr = &s->con->rate;
    if (!cr->refilled_at)
        cr->tokens = CONSOLE_BURST;
    else
        cr->tokens += (int64_t)((now - cr->refilled_at) * CONSOLE_RATE / 1000);
    if (cr->tokens > CONSOLE_BURST)
        cr->tokens = CONSOLE_BURST;
    cr->refilled_at = now;
    if (cr->tokens > 0)
        return true;
    /* wait until 64 KiB can be read again */
    cr->resume_at = now + (uint64_t)(-cr->tokens + (64 << 10)) * 1000 / CONSOLE_RATE + 1;
    if (!cr->throttled)
        sup_log(s, "console: the guest prints more than %u KiB/s; reading it more slowly", CONSOLE_RATE >> 10);
    cr->throttled = true;
    console_watch(s, false);
    return false;
}

void console_readable(struct sup *s)
{
    char chunk[8192];
    bool logged = false;
    while (s->con->fd >= 0 && console_budget(s, monotonic_ms())) {
        ssize_t n = read(s->con->fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            console_close(s);
            break;
        }
        s->con->rate.tokens -= n;
        buf_add(&s->con->ring, chunk, (size_t)n);
        if (s->con->ring.len > CONSOLE_RING)
            buf_consume(&s->con->ring, s->con->ring.len - CONSOLE_RING);
        buf_add(&s->con->line, chunk, (size_t)n);
        s->con->line_at = monotonic_ms();
        ctl_broadcast_console(s, chunk, (size_t)n);
        logged = true;
    }
    if (logged) {
        log_lines(s, false);
        vmlog_check(s);
    }
}

void console_close(struct sup *s)
{
    if (s->con->fd < 0)
        return;
    log_lines(s, true);
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->con->fd, NULL);
    close(s->con->fd);
    s->con->fd = -1;
    s->con->rate = (struct console_rate){0};
}

int console_connect(struct sup *s, struct qv_err *e)
{
    if (s->def.console == CONSOLE_NONE)
        return 0;
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/console.sock", s->run_dir);
    int r = unix_connect(path, &s->con->fd, e);
    if (r < 0)
        return r;
    fd_set_nonblock(s->con->fd, true);
    struct epoll_event ee = {.events = EPOLLIN, .data.ptr = &s->con->ev};
    if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->con->fd, &ee) < 0)
        sup_log(s, "warning: epoll_ctl add console: %s", strerror(errno));
    return 0;
}

/* The earlier of two deadlines, 0 meaning none. */
static uint64_t earliest(uint64_t a, uint64_t b)
{
    return !a ? b : !b ? a : a < b ? a : b;
}

uint64_t console_next_deadline(struct sup *s)
{
    uint64_t idle = s->con->line.len ? s->con->line_at + CONSOLE_LINE_IDLE_MS : 0;
    return earliest(earliest(s->con->rate.resume_at, idle), s->con->log_check_at);
}

void console_expire(struct sup *s, uint64_t now)
{
    /* a prompt without a newline still reaches the log once the guest is quiet */
    if (s->con->line.len && now >= s->con->line_at + CONSOLE_LINE_IDLE_MS)
        log_lines(s, true);
    if (s->con->rate.resume_at && now >= s->con->rate.resume_at) {
        s->con->rate.resume_at = 0;
        if (s->con->fd >= 0) {
            console_watch(s, true);
            console_readable(s);
        }
    }
    if (s->con->log_check_at && now >= s->con->log_check_at)
        vmlog_check(s);
}

/* ---- the log file: rotated by size, like virtlogd's max_size/max_backups ---- */

void vmlog_check(struct sup *s)
{
    s->con->log_check_at = monotonic_ms() + LOG_CHECK_MS;
    struct stat st;
    if (s->log_fd < 0 || fstat(s->log_fd, &st) < 0 || (uint64_t)st.st_size < s->hc.log_max_size)
        return;
    char path[PATH_MAX];
    sup_log_path(s, path, sizeof(path));
    struct qv_err e = {0};
    /* QEMU's stderr is this same open file: it goes on appending after the truncation */
    if (log_rotate(s->log_fd, path, s->hc.log_max_backups, &e) < 0)
        sup_log(s, "warning: rotating the log: %s", e.msg);
    else
        sup_log(s, "log rotated at %lld bytes (%d kept)", (long long)st.st_size, s->hc.log_max_backups);
}
