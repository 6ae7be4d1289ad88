/* common: errors, cleanup helpers, strings, files, JSON reading, host layout.
 * Every other module builds on this header and nothing here knows about VMs. */
#ifndef QV_COMMON_H
#define QV_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <json-c/json.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define QV_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ---- errors ------------------------------------------------------------
 * Functions return 0 or -errno and fill a qv_err whose message names the object
 * and the cause ("web1: disk /srv/a.qcow2: No such file or directory"). */
struct qv_err {
    int code;       /* negative errno, 0 when unset */
    char msg[1024];
};

/* Sets the message (replacing any) and returns `code`, which must be negative. */
int qv_fail(struct qv_err *e, int code, const char *fmt, ...) QV_PRINTF(3, 4);
/* Like qv_fail, appending ": strerror(-code)". */
int qv_failerr(struct qv_err *e, int code, const char *fmt, ...) QV_PRINTF(3, 4);
/* Prepends context to an existing message: "web1: " + msg. Returns e->code. */
int qv_prefix(struct qv_err *e, const char *fmt, ...) QV_PRINTF(2, 3);
/* Exit status for an error code, per DESIGN.md: 2 invalid, 3 no such object,
 * 4 conflict, 5 timed out, 1 anything else. */
int qv_exit_code(int code);

/* ---- cleanup helpers ---------------------------------------------------- */
#define _cleanup_(f) __attribute__((cleanup(f)))
void qv_freep(void *p);
void qv_closep(int *fd);
void qv_fclosep(FILE **f);
void qv_json_putp(json_object **o);
#define _cleanup_free_ _cleanup_(qv_freep)
#define _cleanup_close_ _cleanup_(qv_closep)
#define _cleanup_fclose_ _cleanup_(qv_fclosep)
#define _cleanup_json_ _cleanup_(qv_json_putp)

static inline void *qv_steal_ptr(void *pp)
{
    void **p = pp, *v = *p;
    *p = NULL;
    return v;
}
static inline int qv_steal_fd(int *fd)
{
    int v = *fd;
    *fd = -1;
    return v;
}

/* Allocation failure is not an error we can report usefully: abort. */
void *qv_xmalloc(size_t n);
void *qv_xcalloc(size_t n, size_t size);
void *qv_xrealloc(void *p, size_t n);
char *qv_xstrdup(const char *s);
char *qv_xasprintf(const char *fmt, ...) QV_PRINTF(1, 2);

/* ---- string vectors and buffers ------------------------------------------ */
struct strv {           /* NULL-terminated array of owned strings */
    char **v;
    size_t n, cap;
};
#define _cleanup_strv_ _cleanup_(strv_free)     /* strv_free leaves it empty: twice is harmless */
void strv_push(struct strv *s, const char *str);
void strv_pushf(struct strv *s, const char *fmt, ...) QV_PRINTF(2, 3);
void strv_take(struct strv *s, char *owned);
void strv_free(struct strv *s);
bool strv_contains(const char *const *v, const char *s);
void strv_sort(struct strv *s);
/* Joins with `sep`; caller frees. */
char *strv_join(const char *const *v, const char *sep);

struct buf {
    char *p;
    size_t len, cap;
};
void buf_add(struct buf *b, const void *data, size_t n);
void buf_adds(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) QV_PRINTF(2, 3);
void buf_consume(struct buf *b, size_t n);  /* drop n bytes from the front */
void buf_free(struct buf *b);

bool str_startswith(const char *s, const char *prefix);
/* Splits "a,b,c" on `sep` honouring doubled separators (",," is a literal comma). */
void str_split_escaped(const char *s, char sep, struct strv *out);

/* ---- numbers, sizes, names, ids ------------------------------------------ */
int parse_u64(const char *s, uint64_t *out);
/* "512M", "2G", "1024K", "1T", or plain bytes; binary units. */
int parse_size(const char *s, uint64_t *out);
/* The largest unit that represents `bytes` exactly: 2147483648 -> "2G". */
void format_size(uint64_t bytes, char *out, size_t outlen);
/* Object names: 1-64 of [A-Za-z0-9_.-], not starting with '.' or '-'. */
bool name_valid(const char *name);
/* "52:54:00:AB:cd:01" -> "52:54:00:ab:cd:01"; false for malformed, multicast or all-zero. */
bool mac_normalise(const char *in, char out[18]);
void uuid_generate_str(char out[37]);
bool uuid_valid(const char *s);
uint64_t monotonic_ms(void);
uint64_t realtime_ms(void);

/* ---- files and fds -------------------------------------------------------- */
int write_all(int fd, const void *data, size_t n);
/* Rotates a log by size: path.1..path.BACKUPS shift up, path is copied to path.1 and
 * the open fd truncated in place (O_APPEND writers carry on at its new end). */
int log_rotate(int fd, const char *path, int backups, struct qv_err *e);
/* Reads a whole file, at most `max` bytes (larger is -EFBIG). NUL-terminated. */
int read_file(const char *path, size_t max, char **out, size_t *len);
/* Temp file in the same directory, fsync, rename, fsync of the directory. */
int write_file_atomic(const char *path, const void *data, size_t n, mode_t mode, struct qv_err *e);
int mkdir_p(const char *path, mode_t mode);
int fd_set_nonblock(int fd, bool on);
int fd_set_cloexec(int fd, bool on);
bool path_exists(const char *path);
/* Takes an exclusive flock on fd, waiting at most timeout_ms; then -EBUSY saying
 * "WHAT is locked by pid N (its command line)". */
int flock_wait(int fd, const char *what, unsigned timeout_ms, struct qv_err *e);
#define DIR_LOCK_WAIT_MS 5000
/* Creates dir if needed and holds an exclusive flock on dir/.lock (waiting at most
 * DIR_LOCK_WAIT_MS); returns its fd (close it to unlock). Serialises changes to a
 * directory of definitions. */
int dir_lock(const char *dir, struct qv_err *e);
/* Sorted NAME of every dir/NAME.json whose NAME is valid; a missing dir is empty. */
int json_names_in(const char *dir, struct strv *names, struct qv_err *e);

/* ---- unix sockets ---------------------------------------------------------- */
/* Paths longer than sun_path (108 bytes) go through /proc/self/fd/DIR/NAME. All
 * sockets are CLOEXEC; listen unlinks a stale socket file first. */
struct sockaddr_un;
/* Fills addr for path; a path too long for sun_path is named through
 * /proc/self/fd/N/NAME, with *dirfd = N open on its directory (the caller closes it
 * after bind/connect; -1 when not needed). */
int unix_sockaddr(const char *path, struct sockaddr_un *addr, int *dirfd);
int unix_listen(const char *path, int backlog, int *out, struct qv_err *e);
int unix_connect(const char *path, int *out, struct qv_err *e);

/* ---- JSON ------------------------------------------------------------------ */
/* Parses a JSON file; errors say where ("web1.json:3:14: unexpected character"). */
int json_read_file(const char *path, json_object **out, struct qv_err *e);
int json_parse_str(const char *what, const char *text, json_object **out, struct qv_err *e);
/* The same for n bytes, which must hold no NUL byte (json-c would stop there). */
int json_parse_buf(const char *what, const char *text, size_t n, json_object **out, struct qv_err *e);
/* Pretty, stable serialisation ending in a newline; caller frees. */
char *json_pretty(json_object *o);
/* {"key": v}, taking v: the one-member argument objects of QMP commands. */
json_object *json_obj1(const char *key, json_object *v);
int json_write_file_atomic(const char *path, json_object *o, mode_t mode, struct qv_err *e);

/* Reading a document against a schema with a JSON path for every error:
 *   disks[1].bus: "scsii" is not one of virtio, scsi, sata, ide, usb */
struct jr {
    struct qv_err *err;
    char path[512];
    size_t len;
};
void jr_init(struct jr *r, struct qv_err *e);
size_t jr_key(struct jr *r, const char *key);      /* enter .key, returns a mark */
size_t jr_index(struct jr *r, size_t i);           /* enter [i] */
void jr_pop(struct jr *r, size_t mark);
int jr_fail(struct jr *r, const char *fmt, ...) QV_PRINTF(2, 3);
/* The value printed for errors: strings quoted, others as JSON. */
const char *jr_show(json_object *v);
/* Fails on any key of `obj` not in the NULL-terminated `allowed`. */
int jr_only_keys(struct jr *r, json_object *obj, const char *const *allowed);
/* Typed getters: absent keys leave *out untouched and return 0 unless required. */
int jr_object(struct jr *r, json_object *obj, const char *key, bool required, json_object **out);
int jr_array(struct jr *r, json_object *obj, const char *key, json_object **out);
int jr_string(struct jr *r, json_object *obj, const char *key, bool required, char **out);
int jr_bool(struct jr *r, json_object *obj, const char *key, bool *out);
int jr_int(struct jr *r, json_object *obj, const char *key, int64_t min, int64_t max, int64_t *out);
/* A size string ("512K", "8M", "2G") of at least `min` bytes. */
int jr_size(struct jr *r, json_object *obj, const char *key, uint64_t min, uint64_t *out);
/* String value that must be one of `names` (NULL-terminated); stores its index. */
int jr_enum(struct jr *r, json_object *obj, const char *key, const char *const *names, int *out);
/* Type checks of a value already at the current path. */
int jr_expect(struct jr *r, json_object *v, json_type type);
/* Every string and key in v (recursively) is valid UTF-8 without NUL: "a\u0000b" must
 * not quietly become "a" where a C string is taken. Fails with the JSON path. */
int jr_check_text(struct jr *r, json_object *v);

/* ---- host layout ------------------------------------------------------------ */
/* All of qvisor's files live under one root ("/" by default). */
struct qv_paths {
    char root[4096];    /* no trailing slash; "" means "/" */
};
int qv_paths_init(struct qv_paths *p, const char *root, struct qv_err *e);
/* root + "/" + printf(fmt): "etc/qvisor/vms/web1.json". Fails only on overflow. */
int qv_path(const struct qv_paths *p, char *out, size_t outlen, const char *fmt, ...) QV_PRINTF(4, 5);
#define QV_ETC "etc/qvisor"
#define QV_RUN "run/qvisor"
#define QV_LIB "var/lib/qvisor"
#define QV_LOG "var/log/qvisor"
#define QV_CACHE "var/cache/qvisor"

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF): *complete
 * gets the length of the longest prefix ending on a character boundary; an
 * unfinished character at the end is held back unless `final`. false on an invalid
 * sequence. */
bool utf8_prefix(const unsigned char *s, size_t len, bool final, size_t *complete);

/* ---- logging ------------------------------------------------------------------ */
/* "2026-11-22T02:34:46.123Z " into out (at least 32 bytes). */
void format_timestamp(char *out, size_t outlen);
/* One timestamped line to fd: "<ts> <tag>: <msg>\n". Never fails the caller. */
void qv_logf(int fd, const char *tag, const char *fmt, ...) QV_PRINTF(3, 4);
/* The same, and when echo_fd >= 0 also "<who>: <msg>\n" there (a journal). */
void qv_logv_echo(int fd, int echo_fd, const char *tag, const char *who, const char *fmt, va_list ap);

/* ---- processes ---------------------------------------------------------------- */
/* Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat). */
int proc_start_time(pid_t pid, unsigned long long *out);
/* CPU time a process used so far, user and system, in clock ticks (fields 14, 15). */
int proc_cpu_ticks(pid_t pid, unsigned long long *out);
/* Whether /proc/PID/cmdline contains `needle` as a substring of one argument. */
bool proc_cmdline_contains(pid_t pid, const char *needle);
/* Whether /proc/PID/cmdline has the argument `key` directly followed by `value`. */
bool proc_cmdline_has_pair(pid_t pid, const char *key, const char *value);
/* Scans /proc for a process (other than `except`) whose command line has that pair:
 * 1 and *out when found, 0 when none, -errno when /proc cannot be read. */
int proc_find_by_pair(const char *key, const char *value, pid_t except, pid_t *out);
/* Runs argv (execve, no shell), waits at most timeout_ms, captures stdout+stderr
 * (up to 64 KiB) into *output if non-NULL. Returns the exit status (>= 0) or -errno;
 * -ETIMEDOUT kills the child. */
int run_program(const char *const *argv, int timeout_ms, char **output);
/* The same with stdout and stderr kept apart (either may be NULL). Both kill the
 * child when the calling thread dies (PR_SET_PDEATHSIG). */
int run_program_split(const char *const *argv, int timeout_ms, char **out, char **err);
/* run_program_split for long work: timeout_ms <= 0 waits as long as it takes; the
 * watch may cancel it (SIGTERM, SIGKILL after 2 s: -ECANCELED) and sees stdout as it
 * comes (on_stdout may consume from the buffer what it used). */
struct run_watch {
    volatile int *cancel;       /* looked at every 100 ms; NULL: not cancellable */
    void (*on_stdout)(struct buf *out, void *opaque);
    void *opaque;
    bool child_ignores_sigint;  /* Ctrl-C at the terminal is the caller's to handle */
};
int run_program_watched(const char *const *argv, int timeout_ms, const struct run_watch *w, char **out, char **err);
/* Forks and execs argv[0] (looked up in PATH) with stdin from /dev/null, stdout and
 * stderr into out_w and err_w, an empty signal mask, killed when the caller dies
 * (PR_SET_PDEATHSIG). The caller closes its write ends and reaps *pid. */
int spawn_program(const char *const *argv, int out_w, int err_w, bool ignore_sigint, pid_t *pid);
/* Finds an executable in PATH (or the default /usr/sbin:/usr/bin:/sbin:/bin). */
int find_program(const char *name, char *out, size_t outlen);

/* ---- users and groups (NSS) ------------------------------------------------------
 * Asked in a short-lived child (fork, the lookup, the answer through a pipe), so the
 * caller never maps NSS modules (libnss_systemd, sss, ldap... and what they pull in):
 * a long-lived supervisor stays small. The same NSS answers: users from LDAP or
 * systemd-userdb count. A child that gives no answer within NSS_TIMEOUT_MS is killed
 * (-ETIMEDOUT). NSS's own errors are -errno ("user NAME: ..."); *found false is
 * "no such user/group". */
#define NSS_TIMEOUT_MS 10000
int nss_user(const char *name, bool *found, uid_t *uid, gid_t *gid, struct qv_err *e);
int nss_group(const char *name, bool *found, gid_t *gid, struct qv_err *e);
/* Whether a user has uid `id` or a group has gid `id`; an id NSS fails on (not
 * timing out) counts as not named, as getpwuid_r's callers always did. */
int nss_id_named(uint32_t id, bool *named, struct qv_err *e);

/* ---- libraries loaded on first use (dl.c) ---------------------------------------
 * A floor that needs a big library only for some verbs (libnftables, librbd) keeps it
 * off the link line and loads it here: each symbol into a pointer typed with the
 * library's own prototype, so every call is still checked against its header. */
struct qv_dl_sym {
    const char *name;
    void **ptr;
};
struct qv_dl_lib {
    const char *soname;         /* the ABI the headers we were built with describe */
    const char *package;        /* Debian's package of that soname */
    const char *purpose;        /* "its nftables rules (NAT, filters)": what qvisor needs it for */
    const struct qv_dl_sym *syms;
    size_t nsyms;
};
/* dlopen + dlsym of every symbol; -ENOPKG naming the library, the reason and the
 * package to install. Not locked: the caller loads each library once, under its lock. */
int qv_dl_load(const struct qv_dl_lib *lib, struct qv_err *e);

/* ---- small repeats, one helper each ----------------------------------------------- */
/* 64-bit FNV-1a over n bytes, continuing from h (start with FNV1A64_INIT): stable
 * across runs and hosts, for names, MACs and uid slots derived from a name. */
#define FNV1A64_INIT 0xcbf29ce484222325ull
uint64_t fnv1a64(const void *data, size_t n, uint64_t h);
/* Reads a small file (sysfs, procfs, cgroupfs) into buf, NUL-terminated, newlines
 * kept; returns its length. -EFBIG when it does not fit in len - 1 bytes (what was
 * read stays in buf), so a truncated /proc file is never taken for the whole. */
int read_file_small(const char *path, char *buf, size_t len);
/* The first line of a small file without its newline; -EFBIG when longer than outlen - 1. */
int read_file_line(const char *path, char *out, size_t outlen);
/* The cgroup path of `pid` (0: this process) from /proc/PID/cgroup: the v2 line
 * ("0::/x") when `v1_controller` is NULL, else the v1 line whose controller list
 * names it ("4:cpu,cpuacct:/x" for "cpu"). -ENOENT when there is no such line. */
int proc_cgroup_path(pid_t pid, const char *v1_controller, char *out, size_t outlen);
/* The systemd unit a process runs in ("qvisor@web1.service"), from the cgroup path
 * systemd keeps (the unified hierarchy's, else name=systemd's); -ENOENT outside one.
 * pid 0: this process. */
int proc_systemd_unit(pid_t pid, char *out, size_t outlen);
/* Blocks the given signals (0-terminated list) and returns a CLOEXEC, non-blocking
 * signalfd for them, or -errno (the signals stay blocked). */
int signalfd_for(int sig, ...);
/* JSON lines: takes the first complete line ("\n"-terminated) out of `in` and
 * returns it without the newline (caller frees), or NULL while none is complete. */
char *buf_take_line(struct buf *in);

#endif
