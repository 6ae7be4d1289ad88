/* User and group lookups through NSS in a short-lived child. NSS loads the modules
 * nsswitch.conf names (libnss_systemd and with it libm and libcap, sss, ldap...)
 * into the process that asks and never unloads them: ~700 KiB resident in every
 * long-lived supervisor for one question asked at start. The child asks, writes the
 * answer to a pipe and exits; the caller maps nothing. Users from LDAP or
 * systemd-userdb count exactly as before, since the child asks the same NSS. */
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "common/common.h"

enum nss_query { NSS_USER, NSS_GROUP, NSS_ID };

struct nss_reply {
    int err;        /* NSS's own error (positive errno), 0 when it answered */
    bool found;
    uint32_t uid, gid;
};

/* getpw*_r/getgr*_r with a buffer that grows: a group with many members does not fit
 * in 4 KiB, and ERANGE must not read as "no such group". */
static int child_lookup(enum nss_query q, const char *name, uint32_t id, bool as_group, struct nss_reply *out)
{
    size_t size = 4096;
    for (;;) {
        char *buf = malloc(size);
        if (!buf)
            return ENOMEM;
        int r;
        if (!as_group) {
            struct passwd pw, *res = NULL;
            r = q == NSS_ID ? getpwuid_r((uid_t)id, &pw, buf, size, &res) : getpwnam_r(name, &pw, buf, size, &res);
            if (r == 0 && res) {
                out->found = true;
                out->uid = pw.pw_uid;
                out->gid = pw.pw_gid;
            }
        } else {
            struct group gr, *res = NULL;
            r = q == NSS_ID ? getgrgid_r((gid_t)id, &gr, buf, size, &res) : getgrnam_r(name, &gr, buf, size, &res);
            if (r == 0 && res) {
                out->found = true;
                out->gid = gr.gr_gid;
            }
        }
        free(buf);
        if (r != ERANGE || size >= (1u << 24))
            return r;
        size *= 2;
    }
}

static _Noreturn void child(int fd, enum nss_query q, const char *name, uint32_t id, pid_t parent)
{
    /* no lookup outlives a caller that was killed */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
        _exit(127);
    struct nss_reply a = {0};
    if (q == NSS_ID) {
        a.err = child_lookup(q, NULL, id, false, &a);
        if (!a.found)
            a.err = child_lookup(q, NULL, id, true, &a);
    } else {
        a.err = child_lookup(q, name, 0, q == NSS_GROUP, &a);
    }
    _exit(write_all(fd, &a, sizeof(a)) == 0 ? 0 : 127);
}

static const char *describe(enum nss_query q, const char *name, uint32_t id, char *out, size_t len)
{
    if (q == NSS_ID)
        snprintf(out, len, "uid/gid %u", (unsigned)id);
    else
        snprintf(out, len, "%s %s", q == NSS_USER ? "user" : "group", name);
    return out;
}

/* 0 with *a filled, or -errno with e saying why the child gave no answer. */
static int ask(enum nss_query q, const char *name, uint32_t id, struct nss_reply *a, struct qv_err *e)
{
    char what[320];
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return qv_failerr(e, -errno, "%s: cannot ask NSS: pipe", describe(q, name, id, what, sizeof(what)));
    _cleanup_close_ int rd = p[0];
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int r = -errno;
        close(p[1]);
        return qv_failerr(e, r, "%s: cannot ask NSS: fork", describe(q, name, id, what, sizeof(what)));
    }
    if (pid == 0)
        child(p[1], q, name, id, parent);
    close(p[1]);
    uint64_t deadline = monotonic_ms() + NSS_TIMEOUT_MS;
    size_t got = 0;
    int r = 0;
    while (got < sizeof(*a)) {
        uint64_t now = monotonic_ms();
        struct pollfd pfd = {.fd = rd, .events = POLLIN};
        int pr = now < deadline ? poll(&pfd, 1, (int)(deadline - now)) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            r = pr == 0 ? -ETIMEDOUT : -errno;
            break;
        }
        ssize_t n = read(rd, (char *)a + got, sizeof(*a) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = n == 0 ? -EPIPE : -errno;
            break;
        }
        got += (size_t)n;
    }
    if (r < 0)
        kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (r < 0)
        describe(q, name, id, what, sizeof(what));
    if (r == -ETIMEDOUT)
        return qv_fail(e, r, "%s: NSS gave no answer within %d s: a module in /etc/nsswitch.conf hangs "
                       "(a directory server out of reach?)", what, NSS_TIMEOUT_MS / 1000);
    if (r < 0)
        return qv_failerr(e, r, "%s: the NSS lookup died without an answer", what);
    return 0;
}

int nss_user(const char *name, bool *found, uid_t *uid, gid_t *gid, struct qv_err *e)
{
    struct nss_reply a;
    int r = ask(NSS_USER, name, 0, &a, e);
    if (r < 0)
        return r;
    if (a.err)
        return qv_failerr(e, -a.err, "user %s", name);
    *found = a.found;
    if (a.found) {
        *uid = a.uid;
        *gid = a.gid;
    }
    return 0;
}

int nss_group(const char *name, bool *found, gid_t *gid, struct qv_err *e)
{
    struct nss_reply a;
    int r = ask(NSS_GROUP, name, 0, &a, e);
    if (r < 0)
        return r;
    if (a.err)
        return qv_failerr(e, -a.err, "group %s", name);
    *found = a.found;
    if (a.found)
        *gid = a.gid;
    return 0;
}

int nss_id_named(uint32_t id, bool *named, struct qv_err *e)
{
    struct nss_reply a;
    int r = ask(NSS_ID, NULL, id, &a, e);
    if (r < 0)
        return r;
    /* as getpwuid_r's callers always did: an id NSS fails on is not counted as named */
    *named = a.found;
    return 0;
}
