/* Shared by unit tests that work in a scratch directory (header-only: a .c here would
 * be linked into every test binary). */
#ifndef QV_FILES_TESTLIB_H
#define QV_FILES_TESTLIB_H

#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

/* Removes path and, for a directory, everything below it (symlinks not followed). */
static inline void rm_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d)))
            if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
                char sub[PATH_MAX];
                snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
                rm_tree(sub);
            }
        if (d)
            closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

#endif
