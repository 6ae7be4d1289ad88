/* `qvisor net run NAME`: the host side of one network for as long as it runs — its
 * bridge, its nftables tables and its dnsmasq — and their removal, exactly, even
 * after a crash (state.json is written before anything is created). */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <poll.h>

#include "launcher/supervisor/internal.h"

#define DNSMASQ_START_MS 10000
#define DNSMASQ_STOP_MS 3000

struct netrun {
    const struct qv_paths *paths;
    struct net_def def;
    char dir[PATH_MAX];
    int lock_fd, log_fd, echo_fd;
    struct netsetup_nft *nft;
    pid_t dnsmasq;
    uint64_t restarts[5];
    int nrestarts;
};

static void nlog(struct netrun *n, const char *fmt, ...) QV_PRINTF(2, 3);
static void nlog(struct netrun *n, const char *fmt, ...)
{
    char who[80];
    snprintf(who, sizeof(who), "network %s", n->def.name ? n->def.name : "?");
    va_list ap;
    va_start(ap, fmt);
    qv_logv_echo(n->log_fd, n->echo_fd, "network", who, fmt, ap);
    va_end(ap);
}

static void write_state(struct netrun *n, const char *state)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "state", json_object_new_string(state));
    json_object_object_add(o, "supervisor_pid", json_object_new_int(getpid()));
    json_object_object_add(o, "mode", json_object_new_string(net_mode_names[n->def.mode]));
    json_object_object_add(o, "bridge", json_object_new_string(n->def.bridge));
    json_object_object_add(o, "managed", json_object_new_boolean(n->def.mode != NET_BRIDGE));
    json_object_object_add(o, "dnsmasq_pid", json_object_new_int(n->dnsmasq));
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/state.json", n->dir);
    struct qv_err e = {0};
    if (json_write_file_atomic(path, o, 0644, &e) < 0)
        nlog(n, "warning: cannot record state: %s", e.msg);
    json_object_put(o);
}

static int dnsmasq_start(struct netrun *n, struct qv_err *e)
{
    struct netsetup_dnsmasq c;
    struct netsetup_dhcp_host *hosts = qv_xcalloc(n->def.ipv4.nhosts + 1, sizeof(*hosts));
    net_dnsmasq_config(&n->def, n->dir, &c, hosts);
    int r = netsetup_dnsmasq_spawn(&c, n->log_fd, DNSMASQ_START_MS, &n->dnsmasq, e);
    free(hosts);
    if (r == 0) {
        nlog(n, "dnsmasq running as pid %d", (int)n->dnsmasq);
        write_state(n, "running");
    }
    return r;
}

static void dnsmasq_stop(struct netrun *n)
{
    if (n->dnsmasq <= 0)
        return;
    kill(n->dnsmasq, SIGTERM);
    for (int i = 0; i < DNSMASQ_STOP_MS / 10; i++) {
        if (waitpid(n->dnsmasq, NULL, WNOHANG) == n->dnsmasq) {
            n->dnsmasq = 0;
            return;
        }
        usleep(10000);
    }
    kill(n->dnsmasq, SIGKILL);
    waitpid(n->dnsmasq, NULL, 0);
    n->dnsmasq = 0;
}

/* What an earlier `net run` of this network left behind when it died. */
static void cleanup_leftovers(struct netrun *n)
{
    pid_t old;
    if (netsetup_dnsmasq_find(n->dir, &old) == 0) {
        nlog(n, "stopping dnsmasq pid %d left by an earlier run", (int)old);
        kill(old, SIGTERM);
        for (int i = 0; i < 100 && kill(old, 0) == 0; i++)
            usleep(10000);
        kill(old, SIGKILL);
    }
}

/* dnsmasq drops root and then reads its hosts files (again on SIGHUP): every
 * directory above them must let others through, or static hosts and names are
 * silently ignored. */
static int check_reachable(const char *dir, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s", dir);
    for (char *slash = path + strlen(path); slash > path; slash = strrchr(path, '/')) {
        struct stat st;
        *slash = '\0';
        const char *p = path[0] ? path : "/";
        if (stat(p, &st) == 0 && !(st.st_mode & S_IXOTH))
            return qv_fail(e, -EACCES, "%s is not searchable by others (mode %03o): dnsmasq, which does not run as "
                                       "root, could not read the network's hosts files below it (chmod o+x %s)",
                           p, st.st_mode & 0777, p);
    }
    return 0;
}

static int bring_up(struct netrun *n, struct qv_err *e)
{
    const struct net_def *d = &n->def;
    int r = network_live_write(n->dir, d, e);    /* what net update changes live */
    if (r < 0)
        return r;
    if (d->mode == NET_BRIDGE) {
        if (!netsetup_link_exists(d->bridge))
            return qv_fail(e, -ENODEV, "network %s: host bridge %s does not exist (qvisor does not create bridges of "
                                       "mode bridge)", d->name, d->bridge);
        write_state(n, "running");
        return 0;
    }
    r = net_check_host(d, e);
    if (r == 0)
        r = check_reachable(n->dir, e);
    if (r < 0)
        return qv_prefix(e, "network %s: ", d->name);
    if ((r = netsetup_nft_open(&n->nft, e)) < 0)
        return r;
    struct netsetup_forward *fw = qv_xcalloc(d->nforwards + 1, sizeof(*fw));
    for (size_t i = 0; i < d->nforwards; i++)
        fw[i] = (struct netsetup_forward){d->forwards[i].udp ? IPPROTO_UDP : IPPROTO_TCP, (uint16_t)d->forwards[i].host_port,
                                          d->forwards[i].guest, (uint16_t)d->forwards[i].guest_port};
    struct netsetup_net nn = {.name = d->name, .bridge = d->bridge, .mode = (enum netsetup_net_mode)d->mode, .mtu = d->mtu,
                              .ipv4 = d->ipv4.address, .ipv6 = d->ipv6.address, .forwards = fw, .nforwards = d->nforwards};
    struct strv changes = {0};
    write_state(n, "starting");     /* recorded before anything exists */
    r = netsetup_net_up(n->nft, &nn, &changes, e);
    free(fw);
    for (size_t i = 0; i < changes.n; i++)
        nlog(n, "%s", changes.v[i]);
    strv_free(&changes);
    if (r < 0)
        return r;
    nlog(n, "bridge %s up, %s rules in table inet " NETSETUP_TABLE_PREFIX "%s", d->bridge, net_mode_names[d->mode], d->name);
    return dnsmasq_start(n, e);
}

static void tear_down(struct netrun *n)
{
    dnsmasq_stop(n);
    char live[PATH_MAX + 16];
    snprintf(live, sizeof(live), "%s/live.json", n->dir);
    unlink(live);
    if (n->def.mode != NET_BRIDGE && n->nft) {
        struct qv_err e = {0};
        if (netsetup_net_down(n->nft, n->def.name, n->def.bridge, &e) < 0)
            nlog(n, "warning: %s", e.msg);
        else
            nlog(n, "bridge %s and the rules are gone", n->def.bridge);
    }
    write_state(n, "shut off");
}

/* dnsmasq died: start it again, giving up after 5 deaths within a minute. */
static void dnsmasq_died(struct netrun *n, int status)
{
    n->dnsmasq = 0;
    nlog(n, "dnsmasq exited (%s %d)", WIFSIGNALED(status) ? "signal" : "status",
         WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    uint64_t now = monotonic_ms();
    int kept = 0;
    for (int i = 0; i < n->nrestarts; i++)
        if (now - n->restarts[i] < 60000)
            n->restarts[kept++] = n->restarts[i];
    n->nrestarts = kept;
    if (n->nrestarts >= (int)ARRAY_SIZE(n->restarts)) {
        nlog(n, "dnsmasq died %d times within a minute; no more restarts (DHCP and DNS are down)", n->nrestarts);
        write_state(n, "running");
        return;
    }
    n->restarts[n->nrestarts++] = now;
    struct qv_err e = {0};
    if (dnsmasq_start(n, &e) < 0)
        nlog(n, "restarting dnsmasq failed: %s", e.msg);
}

/* net update / net edit changed the running network (they did the work and wrote
 * live.json): a dnsmasq restarted from now on gets the new hosts. */
static void reload_live(struct netrun *n)
{
    struct net_def next = {0};
    struct qv_err e = {0};
    if (network_live_read(n->dir, &next, &e) < 0) {
        nlog(n, "warning: keeping the definition it runs with: %s", e.msg);
        return;
    }
    _cleanup_strv_ struct strv changed = {0};
    net_def_diff(&n->def, &next, &changed);
    _cleanup_free_ char *what = strv_join((const char *const *)changed.v, ", ");
    nlog(n, "changed live: %s", changed.n ? what : "nothing");
    net_def_free(&n->def);
    net_def_move(&n->def, &next);
}

static void serve(struct netrun *n, int sigfd, struct notify *nt)
{
    for (;;) {
        struct pollfd p = {.fd = sigfd, .events = POLLIN};
        int wait = nt && nt->watchdog_ms ? (int)nt->watchdog_ms : -1;
        int pr = poll(&p, 1, wait);
        if (nt && nt->watchdog_ms)
            notify_send(nt, "WATCHDOG=1");
        if (pr <= 0)
            continue;
        struct signalfd_siginfo si;
        while (read(sigfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo == SIGHUP) {
                reload_live(n);
                continue;
            }
            if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                nlog(n, "stopping (%s)", strsignal((int)si.ssi_signo));
                return;
            }
            int status;
            pid_t pid;
            while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
                if (pid == n->dnsmasq)
                    dnsmasq_died(n, status);
        }
    }
}

int network_run(const struct qv_paths *p, const char *name, int ready_fd, int echo_fd, struct qv_err *e)
{
    struct netrun n = {.paths = p, .lock_fd = -1, .log_fd = -1, .echo_fd = echo_fd};
    struct notify nt;
    notify_init(&nt);
    char what[128], logdir[PATH_MAX], logpath[PATH_MAX];
    snprintf(what, sizeof(what), "network %s", name);
    pid_t holder;
    int r = net_load(p, name, &n.def, e);
    if (r == 0) {
        net_run_dir(p, name, n.dir, sizeof(n.dir));
        r = runlock_take(n.dir, what, &n.lock_fd, &holder, e);
    }
    if (r == 0) {
        chmod(n.dir, 0755);     /* dnsmasq, no longer root, re-reads its hosts files there */
        qv_path(p, logdir, sizeof(logdir), QV_LOG);
        mkdir_p(logdir, 0755);
        qv_path(p, logpath, sizeof(logpath), QV_LOG "/net-%s.log", name);
        n.log_fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (n.log_fd < 0)
            r = qv_failerr(e, -errno, "%s", logpath);
    }
    int sigfd = signalfd_for(SIGTERM, SIGINT, SIGCHLD, SIGHUP, 0);
    if (r == 0 && sigfd < 0)
        r = qv_failerr(e, sigfd, "signalfd");
    if (r == 0) {
        cleanup_leftovers(&n);
        r = bring_up(&n, e);
        if (r < 0) {
            nlog(&n, "start failed: %s", e->msg);
            tear_down(&n);
        }
    }
    if (r == 0) {
        nlog(&n, "running");
        if (ready_fd >= 0) {
            write_all(ready_fd, "ok\n", 3);
            close(ready_fd);
            ready_fd = -1;
        }
        notify_send(&nt, "READY=1\nSTATUS=running");
        serve(&n, sigfd, &nt);
        notify_send(&nt, "STOPPING=1");
        tear_down(&n);
    }
    if (sigfd >= 0)
        close(sigfd);
    if (n.nft)
        netsetup_nft_close(n.nft);
    if (n.log_fd >= 0)
        close(n.log_fd);
    if (n.lock_fd >= 0)
        close(n.lock_fd);
    if (ready_fd >= 0) {
        dprintf(ready_fd, "error %d %s\n", r, e->msg);
        close(ready_fd);
    }
    notify_close(&nt);
    net_def_free(&n.def);
    return r;
}

/* Cleans up a network whose supervisor is gone (or asks a live one to stop). */
int network_stop(const struct qv_paths *p, const char *name, int timeout_ms, struct qv_err *e)
{
    _cleanup_net_def_ struct net_def d = {0};
    int r = net_load(p, name, &d, e);
    if (r < 0)
        return r;
    char dir[PATH_MAX];
    net_run_dir(p, name, dir, sizeof(dir));
    pid_t holder = 0;
    if (runlock_held(dir, &holder)) {
        char needle[160];
        snprintf(needle, sizeof(needle), "%s", name);
        /* never signal a pid that is not our network supervisor */
        if (holder > 1 && proc_cmdline_contains(holder, "net") && proc_cmdline_contains(holder, needle))
            kill(holder, SIGTERM);
        uint64_t end = monotonic_ms() + (uint64_t)timeout_ms;
        while (runlock_held(dir, NULL) && monotonic_ms() < end)
            usleep(5000);
        r = runlock_held(dir, NULL) ? qv_fail(e, -ETIMEDOUT, "network %s: its supervisor (pid %d) did not stop", name,
                                              (int)holder)
                                    : 0;
        return r;
    }
    /* no supervisor: remove by name whatever a dead one may have left */
    pid_t dns;
    if (netsetup_dnsmasq_find(dir, &dns) == 0) {
        kill(dns, SIGTERM);
        for (int i = 0; i < 100 && kill(dns, 0) == 0; i++)
            usleep(10000);
        kill(dns, SIGKILL);
    }
    if (d.mode != NET_BRIDGE) {
        _cleanup_nft_ struct netsetup_nft *nft = NULL;
        r = netsetup_nft_open(&nft, e);
        if (r == 0)
            r = netsetup_net_down(nft, d.name, d.bridge, e);
    }
    return r < 0 ? r : -ESRCH;     /* "was not running" for the caller to say */
}
