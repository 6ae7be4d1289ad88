/* Shared by test_argv_golden.c and test_argv_oracle.c: the golden definitions, the
 * images they name, and the host facts they are built with.
 *
 * The golden files name /tmp/qvisor-golden/...; each run keeps its images in a private
 * directory (mkdtemp) instead and substitutes it on the way in (definitions) and out
 * (command lines), so concurrent runs never share files and a killed run leaves only
 * a directory the next run sweeps. The host facts are pinned by tests/golden-host.json
 * through QVISOR_HOST_FACTS, the same way `qvisor argv` is pinned in cli_define.sh, so
 * the .argv files are the same on every host (with or without /dev/kvm, vhost-net, OVMF). */
#ifndef GOLDEN_TESTLIB_H
#define GOLDEN_TESTLIB_H

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "launcher/model/model.h"

#define GOLDEN_IMAGES "/tmp/qvisor-golden"

static char golden_dir[PATH_MAX];       /* tests/golden */
static char golden_facts_file[PATH_MAX]; /* tests/golden-host.json */
static char golden_images[64];          /* this run's private GOLDEN_IMAGES */
static int golden_lock_fd = -1;         /* held while the run lives: not swept */
static struct strv golden_valid, golden_invalid;

static inline const char *golden_build_dir(void)
{
    const char *b = getenv("QVISOR_TEST_BUILD");
    return b && *b ? b : "build";
}

static inline void golden_rm_rf(const char *dir)
{
    const char *rm[] = {"rm", "-rf", "--", dir, NULL};
    run_program(rm, 30000, NULL);
}

/* Removes what earlier, killed runs left: private directories whose lock nobody holds,
 * and (older than an hour, so a concurrent run of an older build is left alone) the
 * fixed /tmp/qvisor-golden and /tmp/qvgold.* roots earlier versions of this test used. */
static inline void golden_sweep(void)
{
    DIR *d = opendir("/tmp");
    if (!d)
        return;
    struct dirent *de;
    time_t now = time(NULL);
    while ((de = readdir(d))) {
        char path[PATH_MAX], lock[PATH_MAX];
        snprintf(path, sizeof(path), "/tmp/%s", de->d_name);
        struct stat st;
        if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        bool old = now - st.st_mtime > 3600;
        if (strncmp(de->d_name, "qvisor-golden.", 14) == 0) {
            snprintf(lock, sizeof(lock), "%s/.lock", path);
            int fd = open(lock, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                /* no lock yet: a run between mkdtemp and creating it, unless old */
                if (now - st.st_mtime > 60)
                    golden_rm_rf(path);
                continue;
            }
            if (flock(fd, LOCK_EX | LOCK_NB) == 0)
                golden_rm_rf(path);
            close(fd);
        } else if (old && (strcmp(de->d_name, "qvisor-golden") == 0 || strncmp(de->d_name, "qvgold.", 7) == 0)) {
            golden_rm_rf(path);
        }
    }
    closedir(d);
}

static inline void golden_cleanup(void)
{
    if (golden_images[0]) {
        golden_rm_rf(golden_images);
        golden_images[0] = '\0';
    }
    if (golden_lock_fd >= 0) {
        close(golden_lock_fd);
        golden_lock_fd = -1;
    }
}

static inline int golden_make_raw(const char *name, int mib)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", golden_images, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int r = ftruncate(fd, (off_t)mib << 20) < 0 ? -errno : 0;
    close(fd);
    return r;
}

/* The images every golden definition may name, in a fresh private directory. */
static inline int golden_images_make(void)
{
    golden_sweep();
    snprintf(golden_images, sizeof(golden_images), GOLDEN_IMAGES ".XXXXXX");
    if (!mkdtemp(golden_images)) {
        golden_images[0] = '\0';
        return -errno;
    }
    atexit(golden_cleanup);
    chmod(golden_images, 0755);
    char lock[PATH_MAX];
    snprintf(lock, sizeof(lock), "%s/.lock", golden_images);
    golden_lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (golden_lock_fd < 0 || flock(golden_lock_fd, LOCK_EX) < 0)
        return -errno;
    int r = 0;
    r = r ? r : golden_make_raw("a.raw", 16);
    r = r ? r : golden_make_raw("b.raw", 16);
    r = r ? r : golden_make_raw("cd.iso", 1);
    for (int i = 0; i < 12 && r == 0; i++) {
        char n[16];
        snprintf(n, sizeof(n), "d%d.raw", i);
        r = golden_make_raw(n, 1);
    }
    if (r < 0)
        return r;
    char qcow[PATH_MAX];
    snprintf(qcow, sizeof(qcow), "%s/a.qcow2", golden_images);
    const char *qimg[] = {"qemu-img", "create", "-q", "-f", "qcow2", qcow, "16M", NULL};
    char *out = NULL;
    r = run_program(qimg, 30000, &out);
    if (r != 0)
        fprintf(stderr, "qemu-img create %s: %s\n", qcow, out ? out : "");
    free(out);
    if (r != 0)
        return r < 0 ? r : -EIO;
    static const char *const guest_files[] = {"vmlinux", "initrd.img"};
    for (size_t i = 0; i < ARRAY_SIZE(guest_files); i++) {
        char target[PATH_MAX], link[PATH_MAX], abs[PATH_MAX];
        snprintf(target, sizeof(target), "%s/guest/%s", golden_build_dir(), guest_files[i]);
        snprintf(link, sizeof(link), "%s/%s", golden_images, guest_files[i]);
        if (symlink(realpath(target, abs) ? abs : target, link) < 0)
            return -errno;
    }
    return 0;
}

/* Every occurrence of `from` in `s` replaced by `to`; a new string. */
static inline char *golden_replace(const char *s, const char *from, const char *to)
{
    struct buf b = {0};
    buf_adds(&b, "");
    size_t n = strlen(from);
    const char *p;
    while ((p = strstr(s, from))) {
        buf_add(&b, s, (size_t)(p - s));
        buf_adds(&b, to);
        s = p + n;
    }
    buf_adds(&b, s);
    return b.p;
}

/* tests/golden/NAME.json as text, with this run's image directory substituted. */
static inline json_object *golden_load(const char *name)
{
    char path[PATH_MAX], *text = NULL;
    snprintf(path, sizeof(path), "%s/%s.json", golden_dir, name);
    if (read_file(path, 1 << 20, &text, NULL) < 0)
        return NULL;
    char *dir = qv_xasprintf("%s/", golden_images);
    char *sub = golden_replace(text, GOLDEN_IMAGES "/", dir);
    free(dir);
    free(text);
    json_object *o = json_tokener_parse(sub);
    free(sub);
    return o;
}

/* A command line with this run's image directory named as the golden files name it. */
static inline char *golden_unsubst(const char *text)
{
    char *dir = qv_xasprintf("%s/", golden_images);
    char *r = golden_replace(text, dir, GOLDEN_IMAGES "/");
    free(dir);
    return r;
}

/* Sorted names of the valid (NAME.argv or no NAME.error) and invalid definitions. */
static inline void golden_read_names(void)
{
    const char *src = getenv("QVISOR_TEST_SRC");
    snprintf(golden_dir, sizeof(golden_dir), "%s/tests/golden", src && *src ? src : ".");
    snprintf(golden_facts_file, sizeof(golden_facts_file), "%s/tests/golden-host.json", src && *src ? src : ".");
    DIR *d = opendir(golden_dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".json") != 0)
            continue;
        char name[256], err[PATH_MAX];
        snprintf(name, sizeof(name), "%.*s", (int)(n - 5), de->d_name);
        snprintf(err, sizeof(err), "%s/%s.error", golden_dir, name);
        strv_push(path_exists(err) ? &golden_invalid : &golden_valid, name);
    }
    closedir(d);
    strv_sort(&golden_valid);
    strv_sort(&golden_invalid);
}

/* The pinned host facts, read as `qvisor argv` reads them under QVISOR_HOST_FACTS. */
static inline int golden_host_facts(struct host_facts *f, struct qv_err *e)
{
    setenv("QVISOR_HOST_FACTS", golden_facts_file, 1);
    struct qv_paths p;
    int r = qv_paths_init(&p, "/nonexistent", e);
    struct host_config hc = {0};
    if (r == 0)
        r = host_facts_probe(&p, &hc, f, e);
    unsetenv("QVISOR_HOST_FACTS");
    return r;
}

/* A fresh qvisor root for one definition, inside the private directory. */
struct golden_root {
    char dir[PATH_MAX];
    struct qv_paths paths;
};

static inline int golden_root_make(struct golden_root *r, const char *name)
{
    snprintf(r->dir, sizeof(r->dir), "%s/root-%s.XXXXXX", golden_images, name);
    if (!mkdtemp(r->dir))
        return -errno;
    struct qv_err e = {0};
    return qv_paths_init(&r->paths, r->dir, &e);
}

static inline void golden_root_remove(struct golden_root *r)
{
    golden_rm_rf(r->dir);
}

#endif
