/* Shared by the test_sandbox*.c tests (header-only: a .c here would be linked into
 * every test binary). Scratch directories under /var/tmp carry the pid of the test
 * that made them, so a later run can remove what a killed one left behind without
 * touching the directories of a run still going on. */
#ifndef QV_SANDBOX_TESTLIB_H
#define QV_SANDBOX_TESTLIB_H

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

static int scratch_rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static inline void scratch_remove(const char *dir)
{
    nftw(dir, scratch_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* /var/tmp/PREFIX-PID-XXXXXX, made 0755. */
static inline int scratch_mkdtemp(const char *prefix, char *out, size_t len)
{
    snprintf(out, len, "/var/tmp/%s-%d-XXXXXX", prefix, (int)getpid());
    if (!mkdtemp(out))
        return -errno;
    chmod(out, 0755);
    return 0;
}

/* Removes /var/tmp/PREFIX-PID-* whose PID no longer runs, and PREFIX-XXXXXX of the
 * older naming (no pid) once they are an hour old. */
static inline void scratch_sweep(const char *prefix)
{
    DIR *d = opendir("/var/tmp");
    if (!d)
        return;
    size_t n = strlen(prefix);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, prefix, n) != 0 || de->d_name[n] != '-')
            continue;
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "/var/tmp/%s", de->d_name);
        char *end;
        long pid = strtol(de->d_name + n + 1, &end, 10);
        bool stale;
        if (end != de->d_name + n + 1 && *end == '-' && pid > 0) {
            stale = kill((pid_t)pid, 0) < 0 && errno == ESRCH;
        } else {
            struct stat st;
            stale = lstat(path, &st) == 0 && st.st_mtime < time(NULL) - 3600;
        }
        if (stale)
            scratch_remove(path);
    }
    closedir(d);
}

#endif
