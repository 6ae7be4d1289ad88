/* Step names, spec defaults, the required-or-warn rule, and small helpers
 * used by both sides of the fork. */
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "sandbox/internal.h"

static const char *const step_names[SANDBOX_NSTEPS] = {
    [SANDBOX_CGROUP] = "cgroup",
    [SANDBOX_MOUNT] = "mount",
    [SANDBOX_RLIMITS] = "rlimits",
    [SANDBOX_USER] = "user",
    [SANDBOX_CAPS] = "caps",
    [SANDBOX_SECCOMP] = "seccomp",
    [SANDBOX_NETWORK] = "network",
};

const char *sandbox_step_name(enum sandbox_step s)
{
    return (unsigned)s < SANDBOX_NSTEPS ? step_names[s] : "?";
}

int sandbox_steps_parse(const char *const *names, unsigned *mask, struct qv_err *e)
{
    unsigned m = 0;
    for (size_t i = 0; names && names[i]; i++) {
        if (strcmp(names[i], "all") == 0) {
            m |= SANDBOX_ALL_STEPS;
            continue;
        }
        size_t s = 0;
        while (s < SANDBOX_NSTEPS && strcmp(names[i], step_names[s]) != 0)
            s++;
        if (s == SANDBOX_NSTEPS)
            return qv_fail(e, -EINVAL,
                           "\"%s\" is not one of all, cgroup, mount, rlimits, user, caps, seccomp, network",
                           names[i]);
        m |= SANDBOX_STEP(s);
    }
    *mask = m;
    return 0;
}

void sandbox_spec_init(struct sandbox_spec *s)
{
    memset(s, 0, sizeof(*s));
    s->name = "vm";
    s->stdout_fd = -1;
    s->stderr_fd = -1;
    s->hold_fd = -1;
    s->enable = SANDBOX_ALL_STEPS;
    s->uid = (uid_t)-1;
    s->gid = (gid_t)-1;
}

int sandbox_degrade(unsigned require, enum sandbox_step step, const char *name, const char *detail,
                    struct strv *warnings, struct qv_err *e)
{
    if (require & SANDBOX_STEP(step))
        return qv_fail(e, -EOPNOTSUPP, "%s: sandbox: %s is required but cannot be applied: %s",
                       name, sandbox_step_name(step), detail);
    if (warnings)
        strv_pushf(warnings, "%s: sandbox: %s not applied: %s", name, sandbox_step_name(step),
                   detail);
    return 0;
}

_Noreturn void child_fail(int errfd, int err, const char *fmt, ...)
{
    struct child_report r = {.err = err > 0 ? err : EIO};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.msg, sizeof(r.msg), fmt, ap);
    va_end(ap);
    /* A short write leaves the parent with a truncated record, which it reports as such. */
    while (write(errfd, &r, sizeof(r)) < 0 && errno == EINTR)
        ;
    _exit(127);
}

bool status_field(const char *text, const char *key, char *out, size_t len)
{
    size_t klen = strlen(key);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, klen) != 0 || line[klen] != ':')
            continue;
        const char *v = line + klen + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strcspn(v, "\n");
        if (n >= len)
            n = len - 1;
        memcpy(out, v, n);
        out[n] = '\0';
        return true;
    }
    return false;
}
