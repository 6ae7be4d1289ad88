#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "common/common.h"

void strv_take(struct strv *s, char *owned)
{
    if (s->n + 2 > s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = qv_xrealloc(s->v, s->cap * sizeof(char *));
    }
    s->v[s->n++] = owned;
    s->v[s->n] = NULL;
}

void strv_push(struct strv *s, const char *str)
{
    strv_take(s, qv_xstrdup(str));
}

void strv_pushf(struct strv *s, const char *fmt, ...)
{
    va_list ap;
    char *p;
    va_start(ap, fmt);
    int n = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    strv_take(s, p);
}

void strv_free(struct strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

bool strv_contains(const char *const *v, const char *s)
{
    for (; v && *v; v++)
        if (strcmp(*v, s) == 0)
            return true;
    return false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void strv_sort(struct strv *s)
{
    if (s->n > 1)
        qsort(s->v, s->n, sizeof(char *), cmp_str);
}

char *strv_join(const char *const *v, const char *sep)
{
    struct buf b = {0};
    buf_adds(&b, "");
    for (size_t i = 0; v && v[i]; i++) {
        if (i)
            buf_adds(&b, sep);
        buf_adds(&b, v[i]);
    }
    return b.p;
}

void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = qv_xrealloc(b->p, cap);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void buf_adds(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    char *p;
    va_start(ap, fmt);
    int n = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    buf_add(b, p, (size_t)n);
    free(p);
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->p, b->p + n, b->len - n);
        b->len -= n;
    }
    if (b->p)
        b->p[b->len] = '\0';
}

void buf_free(struct buf *b)
{
    free(b->p);
    *b = (struct buf){0};
}

bool str_startswith(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

void str_split_escaped(const char *s, char sep, struct strv *out)
{
    struct buf cur = {0};
    buf_adds(&cur, "");
    for (const char *p = s; *p; p++) {
        if (*p == sep && p[1] == sep) {
            buf_add(&cur, p, 1);
            p++;
        } else if (*p == sep) {
            strv_take(out, cur.p);
            cur = (struct buf){0};
            buf_adds(&cur, "");
        } else {
            buf_add(&cur, p, 1);
        }
    }
    strv_take(out, cur.p);
}

int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

static const char units[] = "KMGTP";

int parse_size(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -EINVAL;
    int shift = 0;
    if (*end) {
        const char *u = strchr(units, toupper((unsigned char)*end));
        if (!u || !*u)
            return -EINVAL;
        shift = 10 * (int)(u - units + 1);
        end++;
        if (*end == 'i' && end[1] == 'B')
            end += 2;
        else if (*end == 'B')
            end++;
        if (*end)
            return -EINVAL;
    }
    if (shift && v > (UINT64_MAX >> shift))
        return -ERANGE;
    *out = (uint64_t)v << shift;
    return 0;
}

void format_size(uint64_t bytes, char *out, size_t outlen)
{
    int u = -1;
    while (u + 1 < (int)strlen(units) && bytes && bytes % 1024 == 0) {
        bytes /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(out, outlen, "%" PRIu64, bytes);
    else
        snprintf(out, outlen, "%" PRIu64 "%c", bytes, units[u]);
}

/* Normalises "52:54:00:AB:cd:01" to lower case; rejects multicast and all-zero. */
bool mac_normalise(const char *in, char out[18])
{
    unsigned b[6];
    char tail;
    if (strlen(in) != 17 ||
        sscanf(in, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
        return false;
    for (int i = 0; i < 17; i++)
        if ((i % 3 == 2) ? in[i] != ':' : !isxdigit((unsigned char)in[i]))
            return false;
    if (b[0] & 1)
        return false;
    if (!(b[0] | b[1] | b[2] | b[3] | b[4] | b[5]))
        return false;
    snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
    return true;
}

bool name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n < 1 || n > 64 || name[0] == '.' || name[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("_.-", name[i]))
            return false;
    return true;
}

void uuid_generate_str(char out[37])
{
    uint8_t b[16];
    if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
        /* getrandom on Linux >= 3.17 does not fail for 16 bytes; fall back anyway */
        uint64_t t = realtime_ms() ^ ((uint64_t)getpid() << 32);
        for (size_t i = 0; i < sizeof(b); i++, t = t * 6364136223846793005ULL + 1)
            b[i] = (uint8_t)(t >> 56);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

bool uuid_valid(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

uint64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t realtime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void format_timestamp(char *out, size_t outlen)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, outlen, "%s.%03ldZ", base, ts.tv_nsec / 1000000);
}

void qv_logv_echo(int fd, int echo_fd, const char *tag, const char *who, const char *fmt, va_list ap)
{
    char ts[40], msg[2048], line[2200];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (fd >= 0) {
        format_timestamp(ts, sizeof(ts));
        int n = snprintf(line, sizeof(line), "%s %s: %s\n", ts, tag, msg);
        if (n > 0)
            write_all(fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    }
    if (echo_fd >= 0)
        dprintf(echo_fd, "%s: %s\n", who, msg);
}

void qv_logf(int fd, const char *tag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qv_logv_echo(fd, -1, tag, NULL, fmt, ap);
    va_end(ap);
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF). Stores in
 * *complete the length of the longest prefix that ends on a character boundary;
 * an unfinished character at the end is held back unless `final`. Returns false
 * on an invalid sequence. */
bool utf8_prefix(const unsigned char *s, size_t len, bool final, size_t *complete)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0)
                lo = 0xA0;
            else if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0)
                lo = 0x90;
            else if (c == 0xF4)
                hi = 0x8F;
        } else {
            *complete = i;
            return false;
        }
        for (size_t k = 1; k <= need; k++) {
            if (i + k >= len) {
                *complete = i;
                return !final;
            }
            unsigned char cc = s[i + k];
            if (k == 1 ? (cc < lo || cc > hi) : (cc & 0xC0) != 0x80) {
                *complete = i;
                return false;
            }
        }
        i += need + 1;
    }
    *complete = len;
    return true;
}
