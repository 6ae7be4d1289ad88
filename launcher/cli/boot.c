/* qvisor boot: an ephemeral VM for CI. A transient VM (the `create` path) with an
 * automatic unique name, every disk behind a throw-away overlay, the guest's exit
 * device, and a supervisor that is this process's child: it lives only as long as
 * boot does (supervisor.h, sup_opts.boot_fd) and QEMU dies with it. boot streams the
 * console, matches --expect (in order) and --fail, runs --exec through the guest agent,
 * decides the exit status and tears everything down.
 * Exit: 0 passed, 1 failed (a --fail pattern, a panic, a failed --exec or guest
 * verdict), 2 usage, 5 timed out, 128+N killed by signal N (SIGINT, SIGTERM). */
#include <fcntl.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "launcher/cli/cli.h"
#include "launcher/cli/boot.h"

#define BOOT_TEARDOWN_MS 30000      /* the supervisor's end after boot let go */
#define BOOT_PING_MS 1000           /* agent pings while waiting for --exec */


static bool have_opt(struct cli *c, const char *name)
{
    return cli_opt(c, name) != NULL;
}

/* ---- the run ---- */

/* ---- children: the supervisor, agent pings, the exec ---- */

static int self_exe(char *out, size_t len)
{
    ssize_t n = readlink("/proc/self/exe", out, len - 1);
    if (n <= 0)
        return -errno;
    out[n] = '\0';
    return 0;
}

/* qvisor --root R ARGS... as a child; stdout and stderr inherited unless quiet_out. */
static pid_t spawn_self(struct boot *b, const char *const *args, bool quiet_out, int keep_fd3, int keep_fd4)
{
    char exe[PATH_MAX];
    if (self_exe(exe, sizeof(exe)) < 0)
        return -1;
    const char *argv[24] = {exe, "--root", b->c->paths.root[0] ? b->c->paths.root : "/"};
    size_t k = 3;
    for (size_t i = 0; args[i] && k < ARRAY_SIZE(argv) - 1; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    dup2(null, 0);
    if (quiet_out) {
        dup2(null, 1);
        dup2(null, 2);
    }
    if (keep_fd3 >= 0) {
        /* the supervisor: a session of its own (a terminal's ^C is boot's to handle) */
        setsid();
        dup2(null, 1);
        int f4 = dup(keep_fd4);
        dup2(keep_fd3, 3);
        dup2(f4, 4);
    }
    extern char **environ;
    execve(exe, (char *const *)argv, environ);
    _exit(127);
}

static int start_supervisor(struct boot *b, struct qv_err *e)
{
    int rp[2], sp[2];
    if (pipe2(rp, O_CLOEXEC) < 0)
        return qv_failerr(e, -errno, "pipe");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
        close(rp[0]);
        close(rp[1]);
        return qv_failerr(e, -errno, "socketpair");
    }
    const char *args[] = {"run", b->name, "--ready-fd", "3", "--boot-fd", "4", NULL};
    b->sup_pid = spawn_self(b, args, false, rp[1], sp[1]);
    int err = errno;
    close(rp[1]);
    close(sp[1]);
    b->ready_fd = rp[0];
    b->sup_fd = sp[0];
    if (b->sup_pid < 0) {
        b->sup_pid = 0;
        return qv_failerr(e, -err, "fork");
    }
    fd_set_nonblock(b->ready_fd, true);
    fd_set_nonblock(b->sup_fd, true);
    return 0;
}

static int connect_console(struct boot *b, struct qv_err *e)
{
    int fd = -1;
    int r = ctl_connect(&b->c->paths, b->name, &fd, e);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *req = ctl_request("console");
    json_object_object_add(req, "replay", json_object_new_boolean(true));
    struct buf in = {0};
    char *line = NULL;
    json_object *reply = NULL;
    if ((r = ctl_send(fd, req, e)) == 0 && (r = ctl_read_line(fd, &in, 10000, &line, e)) == 0 &&
        (r = ctl_parse_reply(line, &reply, e)) == 0)
        json_object_put(reply);
    free(line);
    if (r == 0 && in.len)
        boot_console_data(b, in.p, in.len);  /* the replay may come with the reply */
    buf_free(&in);
    if (r < 0) {
        close(fd);
        return r;
    }
    fd_set_nonblock(fd, true);
    b->console_fd = fd;
    return 0;
}

/* A ping or the exec ended: after a ping that answered, the exec starts; the exec's
 * status decides. */
static void child_done(struct boot *b, int status)
{
    b->child = 0;
    struct check *k = b->exec_cmd || b->exec_file ? &b->checks[b->nchecks - 1] : NULL;
    if (!b->child_is_exec) {
        if (status == 0 && b->result < 0) {
            /* the agent answered: run the command */
            char tmo[32];
            uint64_t used = boot_since(b);
            int left = b->timeout_ms > (int)used ? (b->timeout_ms - (int)used + 999) / 1000 : 1;
            snprintf(tmo, sizeof(tmo), "%d", left + 5);     /* boot's own timeout comes first */
            const char *file_args[] = {"exec", b->name, "--timeout", tmo, "--stdin", b->exec_file, "--",
                                       "/bin/sh", "-s", NULL};
            const char *cmd_args[] = {"exec", b->name, "--timeout", tmo, "--", "/bin/sh", "-c", b->exec_cmd, NULL};
            b->child = spawn_self(b, b->exec_file ? file_args : cmd_args, false, -1, -1);
            b->child_is_exec = true;
            b->exec_started = true;
            if (b->child < 0) {
                b->child = 0;
                boot_check_fail(k, boot_since(b), "could not start qvisor exec");
                boot_decide(b, 1, "--exec: could not start qvisor exec: %s", strerror(errno));
            }
        } else {
            b->next_ping = monotonic_ms() + BOOT_PING_MS;
        }
        return;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    k->done = true;
    k->at_ms = boot_since(b);
    k->passed = code == 0;
    if (code == 0) {
        boot_decide(b, 0, "--exec exited 0");
    } else {
        snprintf(k->why, sizeof(k->why), "exit status %d%s", code, code == 5 ? " (qvisor exec timed out)" : "");
        boot_decide(b, 1, "--exec failed: %s", k->why);
    }
}

static void reap_children(struct boot *b)
{
    int st;
    if (b->child > 0 && waitpid(b->child, &st, WNOHANG) == b->child)
        child_done(b, st);
}

static void maybe_ping(struct boot *b)
{
    if (!(b->exec_cmd || b->exec_file) || b->exec_started || b->child || b->result >= 0 || !b->t_ready ||
        b->next_expect < b->nexpect || monotonic_ms() < b->next_ping)
        return;
    const char *args[] = {"agent", b->name, "ping", NULL};
    b->child = spawn_self(b, args, true, -1, -1);
    b->child_is_exec = false;
    if (b->child < 0) {
        b->child = 0;
        b->next_ping = monotonic_ms() + BOOT_PING_MS;
    }
}

/* ---- the supervisor's lines: ready, then the end ---- */

/* accel auto fell back to TCG: say so, once (a KVM guest is many times faster) */
static void accel_notice(struct boot *b)
{
    json_object *reply = NULL, *st, *accel;
    struct qv_err e = {0};
    if (b->c->quiet || cli_opt(b->c, "accel") || ctl_call(&b->c->paths, b->name, ctl_request("status"), 5000, &reply, &e) < 0)
        return;
    if (json_object_object_get_ex(reply, "status", &st) && json_object_object_get_ex(st, "accel", &accel) &&
        strcmp(json_object_get_string(accel), "tcg") == 0)
        fprintf(stderr, "qvisor: %s: accel auto chose TCG (no usable KVM, or QVISOR_ACCEL or host.json say tcg): "
                        "emulated, many times slower\n", b->name);
    json_object_put(reply);
}

static void ready_line(struct boot *b, const char *line)
{
    if (strcmp(line, "ok") == 0) {
        b->t_ready = boot_since(b);
        struct qv_err e = {0};
        if (connect_console(b, &e) < 0 && b->result < 0 && !b->final)
            fprintf(stderr, "qvisor: %s: the console: %s\n", b->name, e.msg);
        accel_notice(b);
        return;
    }
    int code = -EIO, off = 0;
    if (sscanf(line, "error %d %n", &code, &off) < 1 || off == 0)
        off = 0;
    boot_fail_open_checks(b, "the VM did not start");
    boot_decide(b, 1, "the VM did not start: %s", line + off);
}

/* ---- the loop: until decided, then the supervisor's end ---- */

static void boot_loop(struct boot *b)
{
    uint64_t deadline = b->t0 + (uint64_t)b->timeout_ms;
    bool sup_gone = false;
    while (b->result < 0) {
        struct pollfd pf[5];
        int n = 0, i_ready = -1, i_sup = -1, i_con = -1;
        pf[n++] = (struct pollfd){.fd = b->sigfd, .events = POLLIN};
        if (b->ready_fd >= 0)
            i_ready = n, pf[n++] = (struct pollfd){.fd = b->ready_fd, .events = POLLIN};
        if (b->sup_fd >= 0)
            i_sup = n, pf[n++] = (struct pollfd){.fd = b->sup_fd, .events = POLLIN};
        if (b->console_fd >= 0)
            i_con = n, pf[n++] = (struct pollfd){.fd = b->console_fd, .events = POLLIN};
        uint64_t now = monotonic_ms();
        uint64_t wake = deadline;
        if (b->next_ping && b->next_ping < wake)
            wake = b->next_ping;
        int pr = poll(pf, (nfds_t)n, wake > now ? (int)(wake - now) : 0);
        if (pr < 0 && errno != EINTR)
            break;
        if (pr > 0 && pf[0].revents) {
            struct signalfd_siginfo si;
            while (read(b->sigfd, &si, sizeof(si)) == sizeof(si)) {
                if (si.ssi_signo == SIGCHLD) {
                    reap_children(b);
                } else {
                    char why[64];
                    snprintf(why, sizeof(why), "interrupted by %s", sigabbrev_np((int)si.ssi_signo));
                    boot_fail_open_checks(b, why);
                    boot_decide(b, 128 + (int)si.ssi_signo, "%s", why);
                }
            }
        }
        if (i_con >= 0 && pf[i_con].revents)
            boot_console_readable(b);
        if (i_ready >= 0 && pf[i_ready].revents) {
            bool eof = false;
            boot_read_lines(&b->ready_fd, &b->ready_in, ready_line, b, &eof);
            if (eof) {
                close(b->ready_fd);
                b->ready_fd = -1;
                if (!b->t_ready) {
                    boot_fail_open_checks(b, "the VM did not start");
                    boot_decide(b, 1, "the VM did not start: its supervisor exited (qvisor logs %s)", b->name);
                }
            }
        }
        if (i_sup >= 0 && pf[i_sup].revents) {
            bool eof = false;
            boot_read_lines(&b->sup_fd, &b->sup_in, boot_sup_line, b, &eof);
            if (eof) {
                sup_gone = true;
                close(b->sup_fd);
                b->sup_fd = -1;
            }
        }
        if (b->final && b->result < 0) {
            if (b->console_fd >= 0)
                boot_console_readable(b);      /* its last words first */
            if (b->result < 0)
                boot_final_line(b, b->final);
        } else if (sup_gone && b->result < 0) {
            boot_fail_open_checks(b, "the supervisor ended");
            boot_decide(b, 1, "the VM's supervisor ended without a word (qvisor logs %s)", b->name);
        }
        if (b->result < 0 && b->nexpect && b->next_expect == b->nexpect && !(b->exec_cmd || b->exec_file))
            boot_decide(b, 0, "every --expect was seen");
        maybe_ping(b);
        if (b->result < 0 && monotonic_ms() >= deadline) {
            char why[64];
            snprintf(why, sizeof(why), "timed out after %d s", b->timeout_ms / 1000);
            boot_fail_open_checks(b, why);
            boot_decide(b, 5, "%s", why);
        }
    }
}

/* The supervisor lets go of the VM once boot's end of the socket closes; bounded. */
static void teardown(struct boot *b)
{
    if (b->child > 0) {
        kill(b->child, SIGKILL);
        waitpid(b->child, NULL, 0);
        b->child = 0;
    }
    if (b->console_fd >= 0)
        close(b->console_fd);
    b->console_fd = -1;
    if (b->sup_fd >= 0)
        close(b->sup_fd);
    b->sup_fd = -1;
    if (b->ready_fd >= 0)
        close(b->ready_fd);
    b->ready_fd = -1;
    if (b->sup_pid > 0) {
        uint64_t end = monotonic_ms() + BOOT_TEARDOWN_MS;
        int st;
        while (waitpid(b->sup_pid, &st, WNOHANG) == 0) {
            if (monotonic_ms() >= end) {
                fprintf(stderr, "qvisor: %s: the supervisor did not end within %d s: killed (QEMU dies with it)\n",
                        b->name, BOOT_TEARDOWN_MS / 1000);
                kill(b->sup_pid, SIGKILL);
                waitpid(b->sup_pid, &st, 0);
                break;
            }
            struct pollfd pf = {.fd = b->sigfd, .events = POLLIN};
            if (poll(&pf, 1, 100) > 0) {
                struct signalfd_siginfo si;
                while (read(b->sigfd, &si, sizeof(si)) == sizeof(si))
                    ;   /* a second ^C while tearing down changes nothing */
            }
        }
        b->sup_pid = 0;
    }
}

/* After teardown: nothing of the boot stays, its lock last. */
static void release_name(struct boot *b)
{
    if (b->lock_fd < 0)
        return;
    if (b->created) {
        boot_forget(&b->c->paths, b->name, b->lock_path);     /* what the supervisor left, if it was killed */
    } else {
        boot_dir_remove(&b->c->paths, b->name);
        unlink(b->lock_path);
    }
    close(b->lock_fd);
    b->lock_fd = -1;
}

/* ---- set-up ---- */

static int compile(struct cli *c, const char *opt, const char *src, regex_t *re)
{
    int rc = regcomp(re, src, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char msg[128];
        regerror(rc, re, msg, sizeof(msg));
        return qv_fail(&c->err, -EINVAL, "--%s '%s': not a regular expression: %s", opt, src, msg);
    }
    return 0;
}

static int parse_boot_opts(struct boot *b)
{
    struct cli *c = b->c;
    int r = cli_opt_seconds_ms(c, "timeout", 300000, &b->timeout_ms);
    if (r < 0)
        return r;
    if (b->timeout_ms <= 0)
        return qv_fail(&c->err, -EINVAL, "--timeout: must be more than 0 seconds");
    if (have_opt(c, "image") && have_opt(c, "kernel"))
        return qv_fail(&c->err, -EINVAL, "boot: --image or --kernel, not both");
    if (!have_opt(c, "image") && !have_opt(c, "kernel") && !have_opt(c, "disk"))
        return qv_fail(&c->err, -EINVAL, "boot: what to boot? --image DISK or --kernel K (usage: qvisor %s)",
                       c->cmd->usage);
    b->exec_cmd = cli_opt(c, "exec");
    b->exec_file = cli_opt(c, "exec-file");
    if (b->exec_cmd && b->exec_file)
        return qv_fail(&c->err, -EINVAL, "boot: --exec or --exec-file, not both");
    if (b->exec_file && access(b->exec_file, R_OK) < 0)
        return qv_failerr(&c->err, -EINVAL, "--exec-file %s", b->exec_file);
    b->prefix = cli_flag(c, "prefix");
    b->writable = cli_flag(c, "writable");
    b->keep = cli_flag(c, "keep-on-failure");
    size_t ne = 0, nf = 0;
    for (size_t i = 0; i < c->nopts; i++) {
        ne += strcmp(c->opts[i].opt->name, "expect") == 0;
        nf += strcmp(c->opts[i].opt->name, "fail") == 0;
    }
    b->nexpect = ne;
    b->nchecks = ne + (b->exec_cmd || b->exec_file ? 1 : 0);
    b->checks = qv_xcalloc(b->nchecks + 1, sizeof(*b->checks));
    b->fails = qv_xcalloc(nf + 1, sizeof(*b->fails));
    b->fail_src = qv_xcalloc(nf + 1, sizeof(*b->fail_src));
    size_t ie = 0;
    for (size_t i = 0; i < c->nopts; i++) {
        const char *opt = c->opts[i].opt->name, *v = c->opts[i].value;
        if (strcmp(opt, "expect") == 0) {
            struct check *k = &b->checks[ie++];
            k->kind = "expect";
            k->text = v;
            if ((r = compile(c, opt, v, &k->re)) < 0)
                return r;
            k->compiled = true;
        } else if (strcmp(opt, "fail") == 0) {
            if ((r = compile(c, opt, v, &b->fails[b->nfails])) < 0)
                return r;
            b->fail_src[b->nfails++] = v;
        }
    }
    if (b->exec_cmd || b->exec_file) {
        b->checks[b->nchecks - 1].kind = "exec";
        b->checks[b->nchecks - 1].text = b->exec_cmd ? b->exec_cmd : b->exec_file;
    }
    return 0;
}

/* The transient definition: the flags', plus what a boot VM is. */
static int boot_definition(struct boot *b, json_object **out)
{
    struct cli *c = b->c;
    json_object *o = NULL, *disks, *v;
    int r = cli_definition_from_flags(c, b->name, &o);
    if (r < 0)
        return r;
    const char *image = cli_opt(c, "image");
    if (image) {
        if (!json_object_object_get_ex(o, "disks", &disks)) {
            disks = json_object_new_array();
            json_object_object_add(o, "disks", disks);
        }
        json_object *k = json_object_new_object();
        json_object_object_add(k, "file", json_object_new_string(image));
        json_object_array_put_idx(disks, json_object_array_length(disks), NULL);
        /* the boot disk first */
        for (size_t i = json_object_array_length(disks) - 1; i > 0; i--)
            json_object_array_put_idx(disks, i, json_object_get(json_object_array_get_idx(disks, i - 1)));
        json_object_array_put_idx(disks, 0, k);
    }
    if (!b->writable && json_object_object_get_ex(o, "disks", &disks))
        for (size_t i = 0; i < json_object_array_length(disks); i++)
            json_object_object_add(json_object_array_get_idx(disks, i), "snapshot", json_object_new_boolean(true));
    if (!json_object_object_get_ex(o, "nics", &v)) {
        json_object *a = json_object_new_array(), *n = json_object_new_object();
        json_object_object_add(n, "type", json_object_new_string("user"));
        json_object_array_add(a, n);
        json_object_object_add(o, "nics", a);
    }
    if (!json_object_object_get_ex(o, "memory", &v))
        json_object_object_add(o, "memory", json_object_new_string("512M"));
    json_object_object_add(o, "exit_device", json_object_new_boolean(true));
    if (b->exec_cmd || b->exec_file)
        json_object_object_add(o, "agent", json_object_new_boolean(true));
    /* the run ends with the guest: a reboot or a crash is not restarted */
    if (!json_object_object_get_ex(o, "on_reboot", &v))
        json_object_object_add(o, "on_reboot", json_object_new_string("stop"));
    if (!json_object_object_get_ex(o, "on_crash", &v))
        json_object_object_add(o, "on_crash", json_object_new_string("stop"));
    json_object_object_add(o, "description", json_object_new_string("qvisor boot"));
    *out = o;
    return 0;
}

static int create_vm(struct boot *b)
{
    struct cli *c = b->c;
    const char *given = cli_opt(c, "name");
    for (int attempt = 0; attempt < 16; attempt++) {
        if (given) {
            if (!name_valid(given))
                return qv_fail(&c->err, -EINVAL, "--name \"%s\": not a valid VM name", given);
            snprintf(b->name, sizeof(b->name), "%s", given);
        } else {
            uint32_t rnd = 0;
            if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
                rnd = (uint32_t)getpid() ^ (uint32_t)monotonic_ms();
            snprintf(b->name, sizeof(b->name), "boot-%08x", rnd);
        }
        int r = boot_lock(&c->paths, b->name, &b->lock_fd, b->lock_path, sizeof(b->lock_path), &c->err);
        if (r == -EEXIST && !given)
            continue;
        if (r < 0)
            return r;
        _cleanup_json_ json_object *o = NULL;
        _cleanup_vm_def_ struct vm_def d = {0};
        if ((r = boot_definition(b, &o)) == 0 && (r = vm_create_transient(&c->paths, o, &d, &c->err)) == 0) {
            b->created = true;
            return 0;
        }
        release_name(b);
        if (r != -EEXIST || given)
            return r;
        c->err.msg[0] = '\0';
    }
    return qv_fail(&c->err, -EEXIST, "no free name for the VM after 16 tries");
}

static void boot_free(struct boot *b)
{
    for (size_t i = 0; i < b->nchecks; i++)
        if (b->checks[i].compiled)
            regfree(&b->checks[i].re);
    for (size_t i = 0; i < b->nfails; i++)
        regfree(&b->fails[i]);
    free(b->checks);
    free(b->fails);
    free(b->fail_src);
    buf_free(&b->ready_in);
    buf_free(&b->sup_in);
    buf_free(&b->line);
    buf_free(&b->tail);
    if (b->final)
        json_object_put(b->final);
    if (b->sigfd >= 0)
        close(b->sigfd);
    if (b->lock_fd >= 0)
        close(b->lock_fd);
}

/* The VM's log's last lines (the supervisor's words and QEMU's stderr), on stderr:
 * the log goes with the private directory. */
static void log_tail(struct boot *b)
{
    char file[NAME_MAX + 1], path[PATH_MAX], text[2048];
    snprintf(file, sizeof(file), "%s.log", b->name);
    vm_boot_dir(&b->c->paths, b->name, file, path, sizeof(path));
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)sizeof(text) - 1 ? end - (off_t)sizeof(text) + 1 : 0;
    ssize_t n = pread(fd, text, sizeof(text) - 1, from);
    if (n <= 0)
        return;
    text[n] = '\0';
    const char *p = text;
    if (from > 0 && strchr(p, '\n'))
        p = strchr(p, '\n') + 1;     /* from a whole line */
    fprintf(stderr, "qvisor: %s: the VM's log ends (--keep-on-failure keeps it):\n%s%s", b->name, p,
            text[n - 1] == '\n' ? "" : "\n");
}

int cmd_boot(struct cli *c)
{
    struct boot b = {.c = c, .lock_fd = -1, .ready_fd = -1, .sup_fd = -1, .console_fd = -1, .sigfd = -1,
                     .result = -1};
    b.t0 = monotonic_ms();
    int r = parse_boot_opts(&b);
    if (r < 0) {
        boot_free(&b);
        return r;
    }
    /* signals are ours from here: ^C and SIGTERM tear down, never leave the VM behind */
    b.sigfd = signalfd_for(SIGINT, SIGTERM, SIGCHLD, SIGHUP, 0);
    if (b.sigfd < 0) {
        boot_free(&b);
        return qv_failerr(&c->err, b.sigfd, "signalfd");
    }
    signal(SIGPIPE, SIG_IGN);
    int swept = 0;
    boot_sweep(&c->paths, &swept);
    if ((r = create_vm(&b)) < 0) {
        boot_free(&b);
        return r;
    }
    if ((r = start_supervisor(&b, &c->err)) < 0) {
        teardown(&b);
        release_name(&b);
        boot_free(&b);
        return r;
    }
    boot_loop(&b);
    if (b.line.len && !c->quiet)
        write_all(STDOUT_FILENO, "\n", 1);     /* the console's last line was cut: reports start on their own */
    bool keep = b.keep && b.result != 0 && b.sup_fd >= 0 && b.result < 128;
    if (keep) {
        write_all(b.sup_fd, "keep\n", 5);
        close(b.sup_fd);
        b.sup_fd = -1;
        b.sup_pid = 0;     /* it runs on, reparented */
        if (b.child > 0)
            kill(b.child, SIGKILL);
    } else {
        teardown(&b);
    }
    struct boot_outcome out = {.name = b.name, .result = b.result, .reason = b.reason, .total_ms = b.t_end,
                               .first_line_ms = b.t_first_line, .ready_ms = b.t_ready, .checks = b.checks,
                               .nchecks = b.nchecks, .tail = b.tail.p ? b.tail.p : "", .tail_len = b.tail.len};
    boot_reports(c, &out);
    if (!c->quiet)
        fprintf(stderr, "qvisor: %s: %s: %s (%.1f s)\n", b.name, b.result == 0 ? "passed" : "FAILED", b.reason,
                (double)b.t_end / 1000);
    if (keep) {
        /* the VM runs on (if it still does) under its supervisor; the directory stays
         * for the user, and the name's lock goes */
        char dir[PATH_MAX];
        if (boot_dir_keep(&c->paths, b.name, dir, sizeof(dir)) < 0)
            fprintf(stderr, "qvisor: %s: marking %s kept: %s\n", b.name, dir, strerror(errno));
        unlink(b.lock_path);
        fprintf(stderr, "qvisor: %s: kept (--keep-on-failure): the VM's log and overlays in %s (remove it when "
                        "done); while the VM runs: qvisor console %s, qvisor kill %s ends it\n",
                b.name, dir, b.name, b.name);
    } else {
        if (b.result != 0 && b.result < 128 && b.t_ready && !c->quiet)
            log_tail(&b);
        release_name(&b);
    }
    int result = b.result;
    boot_free(&b);
    return result;
}
