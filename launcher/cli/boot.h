/* Internal to launcher/cli: qvisor boot (boot.c) and its reports (boot_report.c). */
#ifndef QV_CLI_BOOT_H
#define QV_CLI_BOOT_H

#include <regex.h>

#include "launcher/cli/cli.h"

/* One test case of a boot: an --expect pattern or the --exec command. */
struct check {
    const char *kind;           /* "expect" or "exec" */
    const char *text;           /* the pattern or the command */
    regex_t re;
    bool compiled;
    bool passed, done;
    uint64_t at_ms;             /* when it passed or failed, from the start */
    char why[256];
};

/* What a run came to, for --junit FILE, --tap and --json. */
struct boot_outcome {
    const char *name;
    int result;                 /* boot's exit status */
    const char *reason;
    uint64_t total_ms, first_line_ms, ready_ms;     /* from the start; 0: never */
    const struct check *checks;
    size_t nchecks;
    const char *tail;           /* the console's last bytes */
    size_t tail_len;
};
/* Writes the reports asked for; a report that cannot be written is said on stderr. */
void boot_reports(struct cli *c, const struct boot_outcome *o);
/* boot_lock.c. Removes what boots killed -9 left (their lock is free), except what
 * --keep-on-failure kept: *swept counts them. */
int boot_sweep(const struct qv_paths *p, int *swept);
/* NAME's lock, created and taken (-EEXIST: a live boot holds it, or a kept directory
 * has the name), its path in `path`; and NAME's private directory, made empty. */
int boot_lock(const struct qv_paths *p, const char *name, int *out, char *path, size_t len, struct qv_err *e);
/* What a boot VM may leave: a transient definition and run directory no supervisor
 * serves, its uid leases, its private directory, and then the lock file itself. */
void boot_forget(const struct qv_paths *p, const char *name, const char *lockpath);
/* NAME's private directory (var/lib/qvisor/boot/NAME) and what is in it, removed. */
void boot_dir_remove(const struct qv_paths *p, const char *name);
/* Marks it kept: no later boot sweeps it. Its path in dir. */
int boot_dir_keep(const struct qv_paths *p, const char *name, char *dir, size_t len);

#endif
