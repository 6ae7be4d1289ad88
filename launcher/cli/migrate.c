/* migrate and migrate-incoming: live migration between two qvisor hosts with no daemon
 * on either. The destination runs `migrate-incoming NAME --listen ADDR:PORT`: a
 * supervisor whose QEMU waits for the stream (what a unit or ssh starts there); the
 * source's `migrate NAME --to tcp:HOST:PORT` asks its supervisor to connect there and
 * migrate; `--to ssh://[USER@]HOST` starts that migrate-incoming through ssh first
 * (migrate_ssh.c). `--tls DIR`: QEMU's x509 TLS on both sides (supervisor/migrate_tls.c). Disks are shared (the same path on both hosts). The names are resolved here,
 * the supervisors only take numeric addresses (their loops never wait on DNS). */
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "launcher/cli/cli.h"
#include "launcher/cli/migrate_ssh.h"

#define SOURCE_EXIT_WAIT_MS 30000

/* HOST:PORT or [V6]:PORT -> numeric "ADDR:PORT" ("[V6]:PORT") in out. */
static int resolve(struct cli *c, const char *what, const char *text, bool passive, char *out, size_t outlen)
{
    char host[256];
    const char *colon = strrchr(text, ':');
    if (!colon || !colon[1] || (size_t)(colon - text) >= sizeof(host))
        return qv_fail(&c->err, -EINVAL, "%s \"%s\": not HOST:PORT", what, text);
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *h = host;
    if (h[0] == '[' && strlen(h) > 1 && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = '\0';
        h++;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < (passive ? 0 : 1) || port > 65535)
        return qv_fail(&c->err, -EINVAL, "%s \"%s\": the port must be %s", what, text,
                       passive ? "0-65535 (0: a free one, chosen here)" : "1-65535");
    struct addrinfo hints = {.ai_flags = AI_NUMERICSERV | (passive && !*h ? AI_PASSIVE : 0), .ai_socktype = SOCK_STREAM},
                    *res;
    int r = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &res);
    if (r != 0)
        return qv_fail(&c->err, r == EAI_NONAME ? -ENOENT : -EINVAL, "%s \"%s\": %s", what, text, gai_strerror(r));
    char addr[INET6_ADDRSTRLEN];
    getnameinfo(res->ai_addr, res->ai_addrlen, addr, sizeof(addr), NULL, 0, NI_NUMERICHOST);
    bool v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    snprintf(out, outlen, v6 ? "[%s]:%ld" : "%s:%ld", addr, port);
    return 0;
}

static int64_t int_of(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v) : 0;
}

static int positive(struct cli *c, const char *opt, int max, int *out)
{
    *out = 0;
    const char *v = cli_opt(c, opt);
    if (!v)
        return 0;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n <= 0 || n > max)
        return qv_fail(&c->err, -EINVAL, "--%s %s: a whole number from 1 to %d", opt, v, max);
    *out = (int)n;
    return 0;
}

int cmd_migrate(struct cli *c)
{
    const char *vm = c->pos[0];
    if (cli_flag(c, "abort")) {
        int r = ctl_call(&c->paths, vm, ctl_request("migrate-abort"), 10000, NULL, &c->err);
        if (r == 0 && !c->quiet)
            printf("%s: the migration is being cancelled; the guest runs on here\n", vm);
        return r;
    }
    const char *to = cli_opt(c, "to");
    if (!to)
        return qv_fail(&c->err, -EINVAL, "migrate: --to tcp:HOST:PORT or ssh://[USER@]HOST is missing (where qvisor "
                       "migrate-incoming %s --listen waits)", vm);
    bool ssh = strncmp(to, "ssh://", 6) == 0;
    if (strncmp(to, "tcp:", 4) != 0 && !ssh)
        return qv_fail(&c->err, -EINVAL, "migrate: --to %s: tcp:HOST:PORT or ssh://[USER@]HOST[:PORT]", to);
    if (!ssh && (cli_opt(c, "remote-qvisor") || cli_opt(c, "remote-root") || cli_opt(c, "ssh-config")))
        return qv_fail(&c->err, -EINVAL, "migrate: --remote-qvisor, --remote-root and --ssh-config go with --to "
                       "ssh://HOST (with tcp: the destination's migrate-incoming takes them)");
    const char *token = cli_opt(c, "token");
    if (ssh && token)
        return qv_fail(&c->err, -EINVAL, "migrate: --token goes with --to tcp: (over ssh the destination's token "
                       "comes back by itself)");
    if (!ssh && !token)
        return qv_fail(&c->err, -EINVAL, "migrate: --token is missing: the one-time token migrate-incoming %s printed "
                       "on the destination when it began to wait (so that the guest goes to that one and no other)",
                       vm);
    if (token && (!*token || strlen(token) > 64))
        return qv_fail(&c->err, -EINVAL, "migrate: --token: 1 to 64 characters");
    int bandwidth, postcopy_bandwidth, downtime, wait_ms, r;
    if ((r = positive(c, "bandwidth", 1 << 20, &bandwidth)) < 0 ||
        (r = positive(c, "postcopy-bandwidth", 1 << 20, &postcopy_bandwidth)) < 0 ||
        (r = positive(c, "max-downtime", 600000, &downtime)) < 0 ||
        (r = cli_opt_seconds_ms(c, "wait-timeout", 60000, &wait_ms)) < 0)
        return r;
    if (postcopy_bandwidth && !cli_flag(c, "postcopy"))
        return qv_fail(&c->err, -EINVAL, "migrate: --postcopy-bandwidth caps the post-copy phase and goes with "
                       "--postcopy (--bandwidth caps a pre-copy migration)");
    const char *tls = cli_opt(c, "tls");
    if (tls && tls[0] != '/')
        return qv_fail(&c->err, -EINVAL, "migrate: --tls %s: an absolute path (a directory with ca-cert.pem, "
                       "client-cert.pem and client-key.pem)", tls);
    if (tls && cli_flag(c, "copy-storage"))
        return qv_fail(&c->err, -EINVAL, "migrate: --tls covers the memory stream only, and --copy-storage's disk "
                       "copy would cross the network unencrypted: use one of them (or shared storage with --tls)");
    if (cli_flag(c, "postcopy") && cli_flag(c, "copy-storage"))
        return qv_fail(&c->err, -EINVAL, "migrate: --postcopy and --copy-storage go separately: copy the disks with a "
                       "pre-copy migration");
    for (int i = 0; tls && i < 3; i++) {
        /* checked here too: over ssh, the destination would otherwise wait for a stream that never comes */
        static const char *const files[] = {"ca-cert.pem", "client-cert.pem", "client-key.pem"};
        char p[PATH_MAX + 32];
        snprintf(p, sizeof(p), "%s/%s", tls, files[i]);
        if (access(p, R_OK) < 0)
            return qv_failerr(&c->err, -errno, "%s: --tls %s: %s", vm, tls, files[i]);
    }
    char addr[300], tls_host[256] = "";
    struct ssh_target t;
    if (ssh) {
        if ((r = ssh_target_parse(c, to, &t)) < 0)
            return r;
        snprintf(tls_host, sizeof(tls_host), "%s", t.host);
    } else {
        if ((r = resolve(c, "--to", to + 4, false, addr, sizeof(addr))) < 0)
            return r;
        /* the destination's certificate names the host as the user wrote it */
        const char *h = to + 4, *colon = strrchr(h, ':');
        size_t n = (size_t)(colon - h);
        if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
            h++;
            n -= 2;
        }
        snprintf(tls_host, sizeof(tls_host), "%.*s", (int)(n < sizeof(tls_host) ? n : sizeof(tls_host) - 1), h);
    }
    _cleanup_vm_def_ struct vm_def d = {0};
    if ((r = vm_load(&c->paths, vm, &d, &c->err)) < 0)
        return r;
    _cleanup_json_ json_object *def = NULL;
    struct ssh_incoming in = {.persistent = cli_flag(c, "persistent"), .copy_storage = cli_flag(c, "copy-storage"),
                              .postcopy = cli_flag(c, "postcopy"),
                              .tls_dir = tls,
                              .remote_qvisor = cli_opt(c, "remote-qvisor"), .remote_root = cli_opt(c, "remote-root"),
                              .ssh_config = cli_opt(c, "ssh-config"), .wait_timeout_ms = wait_ms};
    if (ssh) {
        if (!vm_supervised(&c->paths, vm, NULL))
            return qv_fail(&c->err, -ESRCH, "%s is not running", vm);
        def = vm_def_to_json(&d);
        json_object_object_del(def, "transient");
        in.definition = json_object_to_json_string_ext(def, JSON_C_TO_STRING_PLAIN);
        if ((r = ssh_start_incoming(c, vm, &t, &in, addr, sizeof(addr))) < 0)
            return r;
        if (!c->quiet && !c->json && isatty(STDERR_FILENO))
            fprintf(stderr, "%s: %s waits on %s\n", vm, t.host, addr);
    }
    json_object *req = ctl_request("migrate");
    json_object_object_add(req, "address", json_object_new_string(addr));
    json_object_object_add(req, "token", json_object_new_string(ssh ? t.token : token));
    if (cli_flag(c, "persistent"))
        json_object_object_add(req, "persistent", json_object_new_boolean(true));
    if (bandwidth)
        json_object_object_add(req, "bandwidth_mib", json_object_new_int(bandwidth));
    if (downtime)
        json_object_object_add(req, "max_downtime_ms", json_object_new_int(downtime));
    if (cli_flag(c, "auto-converge"))
        json_object_object_add(req, "auto_converge", json_object_new_boolean(true));
    if (cli_flag(c, "copy-storage"))
        json_object_object_add(req, "copy_storage", json_object_new_boolean(true));
    if (cli_flag(c, "postcopy"))
        json_object_object_add(req, "postcopy", json_object_new_boolean(true));
    if (postcopy_bandwidth)
        json_object_object_add(req, "postcopy_bandwidth_mib", json_object_new_int(postcopy_bandwidth));
    if (cli_flag(c, "unsafe"))
        json_object_object_add(req, "unsafe", json_object_new_boolean(true));
    if (tls) {
        json_object_object_add(req, "tls_dir", json_object_new_string(tls));
        json_object_object_add(req, "tls_hostname", json_object_new_string(tls_host));
    }
    _cleanup_json_ json_object *reply = NULL;
    if ((r = cli_migration_call(c, vm, req, &reply)) < 0) {
        if (ssh && ssh_cancel_incoming(c, vm, &t, &in) < 0)
            fprintf(stderr, "qvisor: %s: on %s, migrate-incoming may still wait (qvisor migrate-incoming %s --cancel "
                    "there)\n", vm, t.host, vm);
        return r;
    }
    /* the source supervisor releases taps, rules and leases once QEMU is gone, holding
     * the lock until it has: waited for, so that what follows never meets it. Looked at
     * every 10 ms (a lock test): at 100 ms the wait added ~50 ms to every migration,
     * a twentieth of a quiet 512 MiB TCG one (bench/migrate) */
    uint64_t until = monotonic_ms() + SOURCE_EXIT_WAIT_MS;
    while (vm_supervised(&c->paths, vm, NULL) && monotonic_ms() < until)
        usleep(10 * 1000);
    bool undefined = false;
    if (cli_flag(c, "undefine-source") && !d.transient) {
        struct qv_err ue = {0};
        if (vm_undefine(&c->paths, vm, &ue) < 0)
            fprintf(stderr, "qvisor: %s: migrated, but its definition here stays: %s\n", vm, ue.msg);
        else
            undefined = true;
    }
    if (c->json) {
        json_object_object_del(reply, "ok");
        json_object_object_add(reply, "undefined_source", json_object_new_boolean(undefined));
        cli_print_json(reply);
    } else if (!c->quiet) {
        json_object *st;
        const char *there = json_object_object_get_ex(reply, "destination_state", &st) ? json_object_get_string(st)
                                                                                        : "running";
        json_object *pc;
        bool post = json_object_object_get_ex(reply, "postcopy", &pc) && json_object_get_boolean(pc);
        printf("%s migrated to %s in %lld ms (downtime %lld ms%s); %s there%s%s\n", vm, addr,
               (long long)int_of(reply, "total_time_ms"), (long long)int_of(reply, "downtime_ms"),
               post ? ", the last of its memory in post-copy" : "", there,
               json_object_object_get_ex(reply, "defined", &st) ? ", defined there" : "",
               undefined ? "; its definition here is removed" : "");
    }
    json_object *pe;
    if (json_object_object_get_ex(reply, "persistent_error", &pe)) {
        fprintf(stderr, "qvisor: %s: it runs there, but its definition was not kept there: %s\n", vm,
                json_object_get_string(pe));
    }
    return 0;
}

/* migrate-incoming NAME --cancel: the waiting destination goes (what a source whose
 * migration failed sends over ssh); a VM that runs here is left alone. */
static int incoming_cancel(struct cli *c, const char *vm)
{
    _cleanup_json_ json_object *st = NULL;
    json_object *status, *state, *mig, *kind;
    int r = ctl_call(&c->paths, vm, ctl_request("status"), 10000, &st, &c->err);
    if (r < 0)
        return r;
    if (!json_object_object_get_ex(st, "status", &status) || !json_object_object_get_ex(status, "state", &state) ||
        strcmp(json_object_get_string(state), "starting") != 0 ||
        !json_object_object_get_ex(status, "migration", &mig) || !json_object_object_get_ex(mig, "kind", &kind) ||
        strcmp(json_object_get_string(kind), "incoming") != 0)
        return qv_fail(&c->err, -EBUSY, "%s does not wait for a migration stream here: left as it is", vm);
    if ((r = ctl_call(&c->paths, vm, ctl_request("kill"), 30000, NULL, &c->err)) < 0)
        return r;
    if (!c->quiet)
        printf("%s: no longer waits for the migration stream\n", vm);
    return 0;
}

int cmd_migrate_incoming(struct cli *c)
{
    const char *vm = c->pos[0];
    if (cli_flag(c, "cancel"))
        return incoming_cancel(c, vm);
    const char *listen = cli_opt(c, "listen"), *file = cli_opt(c, "definition");
    if (!listen)
        return qv_fail(&c->err, -EINVAL, "migrate-incoming: --listen ADDR:PORT is missing");
    if (cli_flag(c, "persistent") && !file)
        return qv_fail(&c->err, -EINVAL, "migrate-incoming: --persistent defines the VM from --definition FILE");
    int timeout_ms, bound_ms;
    int r = cli_opt_seconds_ms(c, "wait-timeout", 60000, &timeout_ms);
    if (r < 0 || (r = cli_opt_seconds_ms(c, "timeout", SUP_INCOMING_WAIT_MS, &bound_ms)) < 0)
        return r;
    const char *token = cli_opt(c, "token");
    for (const char *p = token; p && *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
              *p == '_'))
            return qv_fail(&c->err, -EINVAL, "migrate-incoming: --token %s: letters, digits, - and _ only", token);
    if (token && (!*token || strlen(token) > 64))
        return qv_fail(&c->err, -EINVAL, "migrate-incoming: --token: 1 to 64 characters");
    char addr[300];
    if ((r = resolve(c, "--listen", listen, true, addr, sizeof(addr))) < 0)
        return r;
    if (vm_supervised(&c->paths, vm, NULL))
        return qv_fail(&c->err, -EBUSY, "%s is already running here", vm);
    _cleanup_vm_def_ struct vm_def d = {0};
    bool transient = false;
    const char *tls = cli_opt(c, "tls");
    if (tls && tls[0] != '/')
        return qv_fail(&c->err, -EINVAL, "migrate-incoming: --tls %s: an absolute path (a directory with ca-cert.pem, "
                       "server-cert.pem and server-key.pem)", tls);
    if (tls && cli_flag(c, "copy-storage"))
        return qv_fail(&c->err, -EINVAL, "migrate-incoming: --tls covers the memory stream only, and --copy-storage's "
                       "disk copy would cross the network unencrypted: use one of them");
    if (cli_flag(c, "postcopy") && cli_flag(c, "copy-storage"))
        return qv_fail(&c->err, -EINVAL, "migrate-incoming: --postcopy and --copy-storage go separately: copy the "
                       "disks with a pre-copy migration");
    if (file) {
        _cleanup_json_ json_object *o = NULL;
        if (strcmp(file, "-") == 0) {
            /* what migrate --to ssh:// sends: the definition may hold credential values */
            struct buf in = {0};
            char chunk[4096];
            ssize_t n;
            while ((n = read(STDIN_FILENO, chunk, sizeof(chunk))) > 0 && in.len < (4u << 20))
                buf_add(&in, chunk, (size_t)n);
            buf_adds(&in, "");
            r = json_parse_str("the definition on stdin", in.p, &o, &c->err);
            buf_free(&in);
            file = "the definition on stdin";
            if (r < 0)
                return r;
        } else if ((r = json_read_file(file, &o, &c->err)) < 0) {
            return r;
        }
        json_object *name;
        if (!json_object_object_get_ex(o, "name", &name) || strcmp(json_object_get_string(name), vm) != 0)
            return qv_fail(&c->err, -EINVAL, "%s: the definition is not of VM %s", file, vm);
        struct qv_err le = {0};
        if (vm_load(&c->paths, vm, &d, &le) == 0)
            return qv_fail(&c->err, -EEXIST, "%s is already defined here: drop --definition to use that definition",
                           vm);
        r = cli_flag(c, "persistent") ? vm_define(&c->paths, o, false, &d, &c->err)
                                      : vm_create_transient(&c->paths, o, &d, &c->err);
        if (r < 0)
            return qv_prefix(&c->err, "%s: ", file);
        transient = !cli_flag(c, "persistent");
    } else if ((r = vm_load(&c->paths, vm, &d, &c->err)) < 0) {
        return qv_prefix(&c->err, "%s (give its definition with --definition FILE.json): ", "migrate-incoming");
    }
    bool copy_storage = cli_flag(c, "copy-storage");
    char bound_s[16];
    snprintf(bound_s, sizeof(bound_s), "%d", bound_ms);
    const char *args[14];
    size_t k = 0;
    args[k++] = "run";
    args[k++] = vm;
    args[k++] = "--incoming";
    args[k++] = addr;
    if (copy_storage)
        args[k++] = "--incoming-copy-storage";
    if (cli_flag(c, "postcopy"))
        args[k++] = "--incoming-postcopy";
    if (tls) {
        args[k++] = "--incoming-tls";
        args[k++] = tls;
    }
    if (token) {
        args[k++] = "--incoming-token";
        args[k++] = token;
    }
    args[k++] = "--incoming-timeout";
    args[k++] = bound_s;
    args[k] = NULL;
    r = supervisor_spawn(&c->paths, args, timeout_ms, vm, &c->err);
    if (r < 0 && r != -ETIMEDOUT && transient && !vm_supervised(&c->paths, vm, NULL))
        vm_transient_forget(&c->paths, vm);
    if (r < 0)
        return r;
    /* the port the supervisor's listener has (the one asked for, or the kernel's pick for 0) */
    _cleanup_json_ json_object *st = NULL;
    json_object *status, *mig, *a;
    struct qv_err se = {0};
    char got_token[68] = "";
    if (ctl_call(&c->paths, vm, ctl_request("status"), 10000, &st, &se) == 0 &&
        json_object_object_get_ex(st, "status", &status) && json_object_object_get_ex(status, "migration", &mig)) {
        if (json_object_object_get_ex(mig, "address", &a))
            snprintf(addr, sizeof(addr), "%s", json_object_get_string(a));
        if (json_object_object_get_ex(mig, "token", &a))
            snprintf(got_token, sizeof(got_token), "%s", json_object_get_string(a));
    }
    if (!got_token[0])
        return qv_fail(&c->err, -EIO, "%s waits on %s, but its token could not be read back: %s (qvisor "
                       "migrate-incoming %s --cancel ends the wait)", vm, addr, se.msg[0] ? se.msg : "status names none",
                       vm);
    if (c->json) {
        _cleanup_json_ json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(vm));
        json_object_object_add(o, "address", json_object_new_string(addr));
        json_object_object_add(o, "tls", json_object_new_boolean(tls != NULL));
        json_object_object_add(o, "copy_storage", json_object_new_boolean(copy_storage));
        json_object_object_add(o, "token", json_object_new_string(got_token));
        json_object_object_add(o, "timeout_s", json_object_new_int(bound_ms / 1000));
        cli_print_json(o);
    } else if (!c->quiet) {
        printf("%s: waiting for the %s on %s%s for %d s (qvisor migrate %s --to tcp:%s --token %s%s%s on the "
               "source)\n", vm, copy_storage ? "source" : "migration stream", addr, tls ? " (TLS)" : "",
               bound_ms / 1000, vm, addr, got_token, tls ? " --tls DIR" : "",
               copy_storage ? " --copy-storage" : cli_flag(c, "postcopy") ? " --postcopy" : "");
    }
    return 0;
}
