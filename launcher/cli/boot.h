/* Internal to launcher/cli: qvisor boot (boot.c: set-up, children, loop, teardown), its
 * console and supervisor watcher (boot_watch.c) and its reports (boot_report.c). */
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

/* One run of qvisor boot (boot.c), shared with its watcher (boot_watch.c). */
struct boot {
    struct cli *c;
    char name[72];
    bool prefix, writable, keep;
    int timeout_ms;
    struct check *checks;       /* the --expect ones, then --exec */
    size_t nchecks, nexpect, next_expect;
    regex_t *fails;
    const char **fail_src;
    size_t nfails;
    const char *exec_cmd, *exec_file;

    int lock_fd;
    char lock_path[PATH_MAX];
    bool created;               /* the transient VM exists */
    pid_t sup_pid;
    int ready_fd, sup_fd, console_fd, sigfd;
    struct buf ready_in, sup_in, line;
    size_t line_checked;        /* expects are tried again only when the line grew */
    struct buf tail;
    json_object *final;         /* the supervisor's last line */

    pid_t child;                /* `qvisor agent ping` or `qvisor exec` */
    bool child_is_exec, exec_started;
    uint64_t next_ping;

    uint64_t t0, t_ready, t_first_line, t_end;
    int result;                 /* exit status, -1 while undecided */
    char reason[512];
};

/* boot_watch.c */
uint64_t boot_since(const struct boot *b);
/* The run's exit status and why, once: a later decision changes nothing. */
void boot_decide(struct boot *b, int result, const char *fmt, ...) QV_PRINTF(3, 4);
void boot_check_fail(struct check *k, uint64_t at, const char *why);
/* Every check not decided yet fails with why. */
void boot_fail_open_checks(struct boot *b, const char *why);
/* Console bytes: the tail kept, echoed, matched line by line. */
void boot_console_data(struct boot *b, const char *p, size_t n);
/* Reads the console socket until EAGAIN; closes it at its end. */
void boot_console_readable(struct boot *b);
/* The guest is gone: its verdict, from the supervisor's last line. */
void boot_final_line(struct boot *b, json_object *o);
/* Reads *fd until EAGAIN and calls fn for each complete line; *eof at its end. */
void boot_read_lines(int *fd, struct buf *in, void (*fn)(struct boot *, const char *), struct boot *b, bool *eof);
/* One of the supervisor's lines (JSON): the last one is its end. */
void boot_sup_line(struct boot *b, const char *line);

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
