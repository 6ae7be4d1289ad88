#include <string.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/common.h"

int qv_fail(struct qv_err *e, int code, const char *fmt, ...)
{
    if (code >= 0)
        code = -EIO;
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return code;
}

int qv_failerr(struct qv_err *e, int code, const char *fmt, ...)
{
    if (code >= 0)
        code = -EIO;
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < sizeof(e->msg))
            snprintf(e->msg + n, sizeof(e->msg) - n, ": %s", strerror(-code));
        e->code = code;
    }
    return code;
}

int qv_prefix(struct qv_err *e, const char *fmt, ...)
{
    if (!e)
        return -EIO;
    char pre[256], old[sizeof(e->msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof(pre), fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof(old));
    snprintf(e->msg, sizeof(e->msg), "%s%s", pre, old);
    return e->code ? e->code : -EIO;
}

int qv_exit_code(int code)
{
    switch (-code) {
    case 0:
        return 0;
    case EINVAL:
    case E2BIG:
    case ERANGE:
        return 2;
    case ENOENT:
    case ESRCH:
        return 3;
    case EEXIST:
    case EBUSY:
    case EALREADY:
    case EADDRINUSE:
        return 4;
    case ETIMEDOUT:
        return 5;
    default:
        return 1;
    }
}

void qv_freep(void *p)
{
    free(*(void **)p);
}

void qv_closep(int *fd)
{
    if (*fd >= 0) {
        int saved = errno;
        close(*fd);
        errno = saved;
    }
}

void qv_fclosep(FILE **f)
{
    if (*f)
        fclose(*f);
}

void qv_json_putp(json_object **o)
{
    if (*o)
        json_object_put(*o);
}

static void *oom(void)
{
    static const char msg[] = "qvisor: out of memory\n";
    ssize_t r = write(2, msg, sizeof(msg) - 1);
    (void)r;
    abort();
}

void *qv_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    return p ? p : oom();
}

void *qv_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    return p ? p : oom();
}

void *qv_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    return q ? q : oom();
}

char *qv_xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    return p ? p : oom();
}

char *qv_xasprintf(const char *fmt, ...)
{
    va_list ap;
    char *s;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? oom() : s;
}
