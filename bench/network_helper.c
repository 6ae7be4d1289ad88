/* Helper for bench/network: what bash cannot time to the microsecond, through the
 * netsetup API exactly as qvisor's supervisors call it.
 *
 *   network_helper taps --netns NAME [--taps N] [--window W] [--rounds R]
 *                       [--restrict-in] [--foreign-chains N] [--time-limit S]
 *       Many taps on one managed network's bridge, each with its per-NIC filter:
 *       1. netsetup_net_up() of a NAT network "taps" (bridge qvbr-taps, 10.93.0.1/16)
 *       2. N x netsetup_nic_plug() with a clean-traffic filter (the NIC's MAC and one
 *          IPv4; with --restrict-in inbound rules too), each timed; the fds are held
 *          as QEMU would hold them
 *       3. N x close (QEMU exits: the kernel deletes the tap) and
 *          netsetup_nic_unplug() (the filter goes), each timed
 *       4. the same N taps again with netsetup_nic_plug()'s three steps timed one
 *          by one (tap open, attach to the bridge, filter apply), and removed
 *       5. netsetup_net_down()
 *       Steps 2 to 4 are done R times (default 3); each tap's figure is its median
 *       over the rounds, so that load from elsewhere on the machine does not fall on
 *       one window only. The slope of a least-squares line through the plug times
 *       is the growth per tap already present.
 *       nftables objects (tables, chains, rules, rule expressions, maps, sets,
 *       map/set elements) and links are counted before the first tap, at N/2, at N
 *       and after removal, from a JSON listing of the namespace's whole ruleset.
 *       --foreign-chains N first loads a table of someone else's with N empty
 *       chains (libnftables reads every chain of the ruleset before a transaction).
 *
 *   network_helper phases --netns NAME --dir DIR [--runs N]
 *       What `qvisor net run` does to start and stop a NAT network with DHCP, step by
 *       step, N times (default 10): host subnet check, bridge, address, forwarding,
 *       nft tables, dnsmasq (netsetup_dnsmasq_spawn: until its pid file), then
 *       dnsmasq SIGTERM until reaped, tables removed, bridge deleted. Also dnsmasq
 *       alone, exec until its pid file is written (inotify, no polling), and
 *       SIGTERM until reaped. Files go to DIR (0755, for dnsmasq).
 *
 * Both run only in the private network namespace NAME that bench/network made with
 * `ip netns add NAME` and start them in with `ip netns exec NAME`: they refuse to run
 * unless /run/netns/NAME is the namespace they are in. Output: "key value" lines on
 * stdout (times in microseconds), messages on stderr. Exit 0, or 1 when a step
 * failed (what was made goes with the namespace). Bounded by an alarm (--time-limit,
 * 600 s by default). C17; no
 * shell: dnsmasq is started with fork + execve. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <nftables/libnftables.h>

#include "common/common.h"
#include "netsetup/netsetup.h"

#define MAX_TAPS 4096
#define MAX_RUNS 1000
#define TIME_LIMIT_S 600    /* default; --time-limit */

extern char **environ;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double median_of(const uint64_t *v, size_t n)
{
    if (n == 0)
        return 0;
    uint64_t s[MAX_TAPS];
    memcpy(s, v, n * sizeof(*v));
    qsort(s, n, sizeof(*s), cmp_u64);
    return n % 2 ? (double)s[n / 2] : ((double)s[n / 2 - 1] + (double)s[n / 2]) / 2;
}

/* nearest rank */
static double p90_of(const uint64_t *v, size_t n)
{
    if (n == 0)
        return 0;
    uint64_t s[MAX_TAPS];
    memcpy(s, v, n * sizeof(*v));
    qsort(s, n, sizeof(*s), cmp_u64);
    size_t k = (9 * n + 9) / 10;
    return (double)s[k ? k - 1 : 0];
}

static int fail(const char *what, const struct qv_err *e)
{
    fprintf(stderr, "network_helper: %s: %s\n", what, e->msg);
    return 1;
}

/* Whether this process runs in the named namespace /run/netns/NAME (the init
 * process's own cannot be compared: /proc/1/ns may not be readable). */
static bool in_named_netns(const char *name)
{
    char path[PATH_MAX];
    struct stat self, named;
    snprintf(path, sizeof(path), "/run/netns/%s", name ? name : "");
    if (!name || !netsetup_ifname_valid(name) || stat("/proc/self/ns/net", &self) < 0 || stat(path, &named) < 0) {
        fprintf(stderr, "network_helper: %s: %s\n", path, name ? strerror(errno) : "--netns NAME is required");
        return false;
    }
    return self.st_ino == named.st_ino && self.st_dev == named.st_dev;
}

/* ---- taps ------------------------------------------------------------------------------- */

/* "PREFIX_first_mean_us", "_first_median_us", "_last_mean_us", "_last_median_us",
 * "_total_us", "_ratio_mean", "_ratio_median" of v[0..n) */
static void windows(const char *prefix, const uint64_t *v, size_t n, size_t w)
{
    uint64_t sa = 0, sb = 0, total = 0;
    for (size_t i = 0; i < n; i++)
        total += v[i];
    for (size_t i = 0; i < w; i++) {
        sa += v[i];
        sb += v[n - w + i];
    }
    double ma = median_of(v, w), mb = median_of(v + n - w, w);
    double fa = (double)sa / (double)w, fb = (double)sb / (double)w;
    printf("%s_first_mean_us %.1f\n%s_first_median_us %.1f\n", prefix, fa, prefix, ma);
    printf("%s_last_mean_us %.1f\n%s_last_median_us %.1f\n", prefix, fb, prefix, mb);
    printf("%s_total_us %llu\n", prefix, (unsigned long long)total);
    printf("%s_ratio_mean %.3f\n%s_ratio_median %.3f\n", prefix, fa > 0 ? fb / fa : 0.0, prefix,
           ma > 0 ? mb / ma : 0.0);
}

static void samples(const char *key, const uint64_t *v, size_t n)
{
    printf("%s", key);
    for (size_t i = 0; i < n; i++)
        printf("%c%llu", i ? ',' : ' ', (unsigned long long)v[i]);
    printf("\n");
}

struct census {
    long tables, chains, rules, exprs, maps, sets, elems, links;
};

static long array_len(json_object *o, const char *key)
{
    json_object *a = NULL;
    if (!json_object_object_get_ex(o, key, &a) || !json_object_is_type(a, json_type_array))
        return 0;
    return (long)json_object_array_length(a);
}

static int census_take(struct nft_ctx *ctx, struct census *c, struct qv_err *e)
{
    memset(c, 0, sizeof(*c));
    if (nft_run_cmd_from_buffer(ctx, "list ruleset") != 0) {
        const char *err = nft_ctx_get_error_buffer(ctx);
        return qv_fail(e, -EIO, "nft list ruleset: %s", err ? err : "failed");
    }
    _cleanup_json_ json_object *doc = NULL;
    int r = json_parse_str("nft list ruleset", nft_ctx_get_output_buffer(ctx), &doc, e);
    (void)nft_ctx_get_error_buffer(ctx);
    if (r < 0)
        return r;
    json_object *items = NULL;
    if (!json_object_object_get_ex(doc, "nftables", &items) || !json_object_is_type(items, json_type_array))
        return qv_fail(e, -EIO, "nft list ruleset: no \"nftables\" array");
    for (size_t i = 0; i < json_object_array_length(items); i++) {
        json_object *it = json_object_array_get_idx(items, i), *o = NULL;
        if (json_object_object_get_ex(it, "table", &o))
            c->tables++;
        else if (json_object_object_get_ex(it, "chain", &o))
            c->chains++;
        else if (json_object_object_get_ex(it, "rule", &o)) {
            c->rules++;
            c->exprs += array_len(o, "expr");
        } else if (json_object_object_get_ex(it, "map", &o)) {
            c->maps++;
            c->elems += array_len(o, "elem");
        } else if (json_object_object_get_ex(it, "set", &o)) {
            c->sets++;
            c->elems += array_len(o, "elem");
        }
    }
    struct strv links = {0};
    r = netsetup_link_list("", &links, e);
    c->links = (long)links.n;
    strv_free(&links);
    return r;
}

static void census_print(const char *when, const struct census *c)
{
    printf("objects_%s tables=%ld chains=%ld rules=%ld exprs=%ld maps=%ld sets=%ld elems=%ld links=%ld\n", when,
           c->tables, c->chains, c->rules, c->exprs, c->maps, c->sets, c->elems, c->links);
}

#define TAPS_NET "taps"
#define TAPS_BRIDGE "qvbr-taps"

static char names[MAX_TAPS][NETSETUP_IFNAMSIZ], macs[MAX_TAPS][18], ips[MAX_TAPS][16];
static int fds[MAX_TAPS];
#define MAX_ROUNDS 15
static uint64_t plug_us[MAX_TAPS], close_us[MAX_TAPS], unplug_us[MAX_TAPS], open_us[MAX_TAPS],
    attach_us[MAX_TAPS], filter_us[MAX_TAPS], close2_us[MAX_TAPS], unplug2_us[MAX_TAPS];
static uint64_t plug_r[MAX_ROUNDS][MAX_TAPS], close_r[MAX_ROUNDS][MAX_TAPS], unplug_r[MAX_ROUNDS][MAX_TAPS],
    open_r[MAX_ROUNDS][MAX_TAPS], attach_r[MAX_ROUNDS][MAX_TAPS], filter_r[MAX_ROUNDS][MAX_TAPS];

/* out[i] = the median of in[0..rounds)[i] */
static void median_rounds(uint64_t in[][MAX_TAPS], int rounds, int n, uint64_t *out)
{
    for (int i = 0; i < n; i++) {
        uint64_t v[MAX_ROUNDS];
        for (int r = 0; r < rounds; r++)
            v[r] = in[r][i];
        out[i] = (uint64_t)(median_of(v, (size_t)rounds) + 0.5);
    }
}

/* least-squares slope of v[i] over i */
static double slope(const uint64_t *v, int n)
{
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < n; i++) {
        sx += i;
        sy += (double)v[i];
        sxx += (double)i * i;
        sxy += (double)i * (double)v[i];
    }
    double d = n * sxx - sx * sx;
    return d != 0 ? (n * sxy - sx * sy) / d : 0;
}

static const struct netsetup_port allow_in[] = {{.proto = IPPROTO_TCP, .lo = 22, .hi = 0}, {.proto = IPPROTO_ICMP}};

static struct netsetup_nic_filter filter_of(int i, bool restrict_in, const char *const *ipv)
{
    return (struct netsetup_nic_filter){.mac = macs[i], .ipv4 = ipv, .restrict_in = restrict_in,
                                        .allow_in = restrict_in ? allow_in : NULL,
                                        .nallow_in = restrict_in ? ARRAY_SIZE(allow_in) : 0};
}

/* QEMU exits (the last fd of a tap closes: the kernel deletes it), then the
 * supervisor unplugs (the filter goes, and the tap if it were still there). */
static int remove_all(struct netsetup_nft *nft, int n, uint64_t *cl_us, uint64_t *us, struct qv_err *e)
{
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_us();
        close(fds[i]);
        fds[i] = -1;
        uint64_t t1 = now_us();
        int r = netsetup_nic_unplug(nft, TAPS_NET, names[i], e);
        cl_us[i] = t1 - t0;
        us[i] = now_us() - t1;
        if (r < 0)
            return r;
    }
    return 0;
}

static int foreign_table(struct nft_ctx *ctx, int nchains)
{
    struct buf b = {0};
    buf_adds(&b, "add table inet someone_else\n");
    for (int i = 0; i < nchains; i++)
        buf_printf(&b, "add chain inet someone_else c%d\n", i);
    int rc = nft_run_cmd_from_buffer(ctx, b.p);
    buf_free(&b);
    if (rc != 0) {
        const char *err = nft_ctx_get_error_buffer(ctx);
        fprintf(stderr, "network_helper: foreign table: %s\n", err ? err : "failed");
        return 1;
    }
    return 0;
}

static int cmd_taps(int ntaps, int window, int rounds, bool restrict_in, int foreign)
{
    struct qv_err e = {0};
    struct nft_ctx *ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!ctx || nft_ctx_buffer_output(ctx) < 0 || nft_ctx_buffer_error(ctx) < 0) {
        fprintf(stderr, "network_helper: cannot create an nft context\n");
        return 1;
    }
    if (foreign > 0 && foreign_table(ctx, foreign))
        return 1;
    nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);

    _cleanup_nft_ struct netsetup_nft *nft = NULL;
    if (netsetup_nft_open(&nft, &e) < 0)
        return fail("nft", &e);
    struct netsetup_net net = {.name = TAPS_NET, .bridge = TAPS_BRIDGE, .mode = NETSETUP_NAT, .ipv4 = "10.93.0.1/16"};
    uint64_t t0 = now_us();
    if (netsetup_net_up(nft, &net, NULL, &e) < 0)
        return fail("net up", &e);
    printf("taps %d\nwindow %d\nrounds %d\nrestrict_in %d\nforeign_chains %d\nnet_up_us %llu\n", ntaps, window,
           rounds, restrict_in, foreign, (unsigned long long)(now_us() - t0));

    for (int i = 0; i < ntaps; i++) {
        char uuid[37];
        snprintf(uuid, sizeof(uuid), "00000000-0000-4000-8000-%012d", i);
        netsetup_tap_name(uuid, 0, names[i]);
        snprintf(macs[i], sizeof(macs[i]), "52:54:00:93:%02x:%02x", (i >> 8) & 0xff, i & 0xff);
        snprintf(ips[i], sizeof(ips[i]), "10.93.%d.%d", 1 + i / 250, 2 + i % 250);
        fds[i] = -1;
    }

    struct census base, mid = {0}, full, after, after2;
    if (census_take(ctx, &base, &e) < 0)
        return fail("count", &e);
    /* rounds of netsetup_nic_plug() as a VM supervisor calls it, and removal;
     * the first one also counts */
    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < ntaps; i++) {
            if (round == 0 && i == ntaps / 2 && census_take(ctx, &mid, &e) < 0)
                return fail("count", &e);
            const char *ipv[] = {ips[i], NULL};
            struct netsetup_nic_filter f = filter_of(i, restrict_in, ipv);
            struct netsetup_nic nic = {.tap = names[i], .queues = 1, .bridge = TAPS_BRIDGE, .network = TAPS_NET,
                                       .filter = &f};
            uint64_t a = now_us();
            int r = netsetup_nic_plug(nft, &nic, &fds[i], &e);
            plug_r[round][i] = now_us() - a;
            if (r < 0)
                return fail(names[i], &e);
        }
        if (round == 0) {
            if (census_take(ctx, &full, &e) < 0)
                return fail("count", &e);
            struct strv filtered = {0};
            if (netsetup_nft_nic_list(nft, TAPS_NET, &filtered, &e) < 0)
                return fail("nic list", &e);
            printf("filters_listed %zu\n", filtered.n);
            strv_free(&filtered);
        }
        if (remove_all(nft, ntaps, close_r[round], unplug_r[round], &e) < 0)
            return fail("unplug", &e);
        if (round == 0 && census_take(ctx, &after, &e) < 0)
            return fail("count", &e);

        /* the three steps of netsetup_nic_plug() one by one */
        for (int i = 0; i < ntaps; i++) {
            const char *ipv[] = {ips[i], NULL};
            struct netsetup_nic_filter f = filter_of(i, restrict_in, ipv);
            uint64_t a = now_us();
            if (netsetup_tap_open(names[i], 1, &fds[i], &e) < 0)
                return fail(names[i], &e);
            uint64_t b = now_us();
            if (netsetup_link_attach(names[i], TAPS_BRIDGE, &e) < 0)
                return fail(names[i], &e);
            uint64_t c = now_us();
            if (netsetup_nft_nic_apply(nft, TAPS_NET, names[i], &f, &e) < 0)
                return fail(names[i], &e);
            uint64_t d = now_us();
            open_r[round][i] = b - a;
            attach_r[round][i] = c - b;
            filter_r[round][i] = d - c;
        }
        if (remove_all(nft, ntaps, close2_us, unplug2_us, &e) < 0)
            return fail("unplug", &e);
        if (round == 0 && census_take(ctx, &after2, &e) < 0)
            return fail("count", &e);
        fprintf(stderr, "network_helper: round %d/%d done\n", round + 1, rounds);
    }
    median_rounds(plug_r, rounds, ntaps, plug_us);
    median_rounds(close_r, rounds, ntaps, close_us);
    median_rounds(unplug_r, rounds, ntaps, unplug_us);
    median_rounds(open_r, rounds, ntaps, open_us);
    median_rounds(attach_r, rounds, ntaps, attach_us);
    median_rounds(filter_r, rounds, ntaps, filter_us);
    t0 = now_us();
    if (netsetup_net_down(nft, TAPS_NET, TAPS_BRIDGE, &e) < 0)
        return fail("net down", &e);
    printf("net_down_us %llu\n", (unsigned long long)(now_us() - t0));

    census_print("base", &base);
    census_print("mid", &mid);
    census_print("full", &full);
    census_print("after", &after);
    census_print("after_round2", &after2);
    size_t n = (size_t)ntaps, w = (size_t)window;
    windows("plug", plug_us, n, w);
    printf("plug_slope_us_per_tap %.3f\nsplit_filter_slope_us_per_tap %.3f\nsplit_attach_slope_us_per_tap %.3f\n",
           slope(plug_us, ntaps), slope(filter_us, ntaps), slope(attach_us, ntaps));
    windows("close", close_us, n, w);
    windows("unplug", unplug_us, n, w);
    windows("split_open", open_us, n, w);
    windows("split_attach", attach_us, n, w);
    windows("split_filter", filter_us, n, w);
    samples("plug_samples_us", plug_us, n);
    samples("close_samples_us", close_us, n);
    samples("unplug_samples_us", unplug_us, n);
    samples("split_filter_samples_us", filter_us, n);
    nft_ctx_free(ctx);
    return 0;
}

/* ---- phases ------------------------------------------------------------------------------ */
#define PH_NET "phases"
#define PH_BRIDGE "qvbr-phases"
#define PH_CIDR "10.94.0.0/24"

enum {
    PH_CHECK, PH_NFT_OPEN, PH_BRIDGE_UP, PH_ADDR, PH_FORWARD, PH_NFT_APPLY, PH_DNSMASQ_SPAWN, PH_START,
    PH_DNSMASQ_STOP, PH_NFT_REMOVE, PH_BRIDGE_DEL, PH_STOP,
    PH_RAW_PIDFILE, PH_RAW_EXIT, PH_COUNT
};
static const char *const ph_names[PH_COUNT] = {
    "check_host", "nft_open", "bridge_create", "addr_add", "forwarding", "nft_apply", "dnsmasq_spawn", "start_total",
    "dnsmasq_term_reaped", "nft_remove", "bridge_delete", "stop_total",
    "dnsmasq_exec_to_pidfile", "dnsmasq_term_to_reaped",
};
static uint64_t ph[PH_COUNT][MAX_RUNS];

static int reap(pid_t pid, int *status)
{
    while (waitpid(pid, status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return 0;
}

/* dnsmasq by hand with the config netsetup wrote: exec until its pid file is closed
 * after writing (inotify), then SIGTERM until reaped. */
static int dnsmasq_raw(const char *dir, int log_fd, uint64_t *to_pidfile, uint64_t *to_exit)
{
    char pidpath[PATH_MAX], confopt[PATH_MAX + 16];
    snprintf(pidpath, sizeof(pidpath), "%s/%s", dir, NETSETUP_DNSMASQ_PID);
    snprintf(confopt, sizeof(confopt), "--conf-file=%s/%s", dir, NETSETUP_DNSMASQ_CONF);
    unlink(pidpath);
    int in = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (in < 0 || inotify_add_watch(in, dir, IN_CLOSE_WRITE | IN_MOVED_TO) < 0) {
        fprintf(stderr, "network_helper: inotify %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char *const argv[] = {"dnsmasq", "--keep-in-foreground", confopt, NULL};
    uint64_t t0 = now_us();
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0)
            dup2(nul, 0);
        dup2(log_fd, 1);
        dup2(log_fd, 2);
        execve("/usr/sbin/dnsmasq", argv, environ);
        _exit(127);
    }
    bool seen = false;
    uint64_t deadline = t0 + 10000000;
    while (!seen && now_us() < deadline) {
        struct pollfd p = {.fd = in, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) {
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                fprintf(stderr, "network_helper: dnsmasq exited before writing its pid file\n");
                close(in);
                return 1;
            }
            continue;
        }
        char ev[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        ssize_t n = read(in, ev, sizeof(ev));
        for (char *q = ev; n > 0 && q < ev + n;) {
            const struct inotify_event *ie = (const struct inotify_event *)q;
            if (ie->len && !strcmp(ie->name, NETSETUP_DNSMASQ_PID))
                seen = true;
            q += sizeof(*ie) + ie->len;
        }
    }
    *to_pidfile = now_us() - t0;
    close(in);
    uint64_t t1 = now_us();
    kill(pid, SIGTERM);
    int st;
    reap(pid, &st);
    *to_exit = now_us() - t1;
    if (!seen) {
        fprintf(stderr, "network_helper: dnsmasq wrote no pid file within 10 s\n");
        return 1;
    }
    return 0;
}

static int cmd_phases(const char *dir, int runs)
{
    struct qv_err e = {0};
    char logpath[PATH_MAX];
    snprintf(logpath, sizeof(logpath), "%s/dnsmasq.log", dir);
    int log_fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
        fprintf(stderr, "network_helper: %s: %s\n", logpath, strerror(errno));
        return 1;
    }
    struct netsetup_net net = {.name = PH_NET, .bridge = PH_BRIDGE, .mode = NETSETUP_NAT, .ipv4 = "10.94.0.1/24"};
    struct netsetup_dnsmasq dc = {.network = PH_NET, .run_dir = dir, .bridge = PH_BRIDGE, .ipv4 = "10.94.0.1/24",
                                  .dhcp_start = "10.94.0.100", .dhcp_end = "10.94.0.200"};
    /* one warm-up cycle (page cache, libraries), then the measured ones */
    for (int run = -1; run < runs; run++) {
        uint64_t t[PH_COUNT] = {0};
        _cleanup_nft_ struct netsetup_nft *nft = NULL;
        uint64_t s0 = now_us(), a = s0, b;
#define STEP(id, call, what)                                                                                 \
    do {                                                                                                     \
        if ((call) < 0)                                                                                      \
            return fail(what, &e);                                                                           \
        b = now_us();                                                                                        \
        t[id] = b - a;                                                                                       \
        a = b;                                                                                               \
    } while (0)
        STEP(PH_CHECK, netsetup_subnet_check_host(PH_CIDR, PH_BRIDGE, &e), "check");
        STEP(PH_NFT_OPEN, netsetup_nft_open(&nft, &e), "nft open");
        STEP(PH_BRIDGE_UP, netsetup_bridge_create(PH_BRIDGE, 0, NETSETUP_ADOPT, &e), "bridge");
        STEP(PH_ADDR, netsetup_addr_add(PH_BRIDGE, net.ipv4, &e), "address");
        STEP(PH_FORWARD, netsetup_forwarding_enable(PH_BRIDGE, AF_INET, NULL, &e), "forwarding");
        STEP(PH_NFT_APPLY, netsetup_nft_net_apply(nft, &net, &e), "nft apply");
        pid_t pid = -1;
        STEP(PH_DNSMASQ_SPAWN, netsetup_dnsmasq_spawn(&dc, log_fd, 10000, &pid, &e), "dnsmasq");
        t[PH_START] = now_us() - s0;

        uint64_t s1 = now_us();
        a = s1;
        kill(pid, SIGTERM);
        int st;
        STEP(PH_DNSMASQ_STOP, reap(pid, &st), "reap dnsmasq");
        STEP(PH_NFT_REMOVE, netsetup_nft_net_remove(nft, PH_NET, &e), "nft remove");
        STEP(PH_BRIDGE_DEL, netsetup_link_delete(PH_BRIDGE, &e), "bridge delete");
        t[PH_STOP] = now_us() - s1;
#undef STEP
        /* dnsmasq by hand on a bridge that exists (bind-dynamic would wait for it otherwise) */
        if (netsetup_bridge_create(PH_BRIDGE, 0, NETSETUP_ADOPT, &e) < 0 ||
            netsetup_addr_add(PH_BRIDGE, net.ipv4, &e) < 0)
            return fail("bridge for dnsmasq", &e);
        if (dnsmasq_raw(dir, log_fd, &t[PH_RAW_PIDFILE], &t[PH_RAW_EXIT]))
            return 1;
        if (netsetup_link_delete(PH_BRIDGE, &e) < 0)
            return fail("bridge delete", &e);
        if (run >= 0)
            for (int k = 0; k < PH_COUNT; k++)
                ph[k][run] = t[k];
    }
    close(log_fd);
    printf("runs %d\n", runs);
    for (int k = 0; k < PH_COUNT; k++)
        printf("phase %s %.0f %.0f\n", ph_names[k], median_of(ph[k], (size_t)runs), p90_of(ph[k], (size_t)runs));
    return 0;
}

int main(int argc, char **argv)
{
    int ntaps = 200, window = 20, runs = 10, foreign = 0, rounds = 3, limit = TIME_LIMIT_S;
    bool restrict_in = false;
    const char *netns = NULL, *dir = NULL, *mode = argc > 1 ? argv[1] : "";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--netns") && v)
            netns = argv[++i];
        else if (!strcmp(a, "--dir") && v)
            dir = argv[++i];
        else if (!strcmp(a, "--taps") && v)
            ntaps = atoi(argv[++i]);
        else if (!strcmp(a, "--window") && v)
            window = atoi(argv[++i]);
        else if (!strcmp(a, "--rounds") && v)
            rounds = atoi(argv[++i]);
        else if (!strcmp(a, "--runs") && v)
            runs = atoi(argv[++i]);
        else if (!strcmp(a, "--foreign-chains") && v)
            foreign = atoi(argv[++i]);
        else if (!strcmp(a, "--time-limit") && v)
            limit = atoi(argv[++i]);
        else if (!strcmp(a, "--restrict-in"))
            restrict_in = true;
        else
            mode = "";
    }
    bool taps = !strcmp(mode, "taps"), phases = !strcmp(mode, "phases");
    if ((!taps && !phases) || limit < 1 || (taps && (ntaps < 2 || ntaps > MAX_TAPS || window < 1 || window > ntaps ||
                                        rounds < 1 || rounds > MAX_ROUNDS || foreign < 0 || foreign > 100000)) ||
        (phases && (!dir || runs < 1 || runs > MAX_RUNS))) {
        fprintf(stderr, "usage: network_helper taps --netns NAME [--taps 2..%d] [--window W] [--rounds 1..%d] "
                        "[--restrict-in] [--foreign-chains N] [--time-limit S]\n"
                        "       network_helper phases --netns NAME --dir DIR [--runs 1..%d]\n",
                MAX_TAPS, MAX_ROUNDS, MAX_RUNS);
        return 2;
    }
    if (!in_named_netns(netns)) {
        fprintf(stderr, "network_helper: refusing to run outside network namespace %s (ip netns exec %s ...)\n",
                netns ? netns : "?", netns ? netns : "NAME");
        return 2;
    }
    alarm((unsigned)limit);
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct qv_err e = {0};
    if (netsetup_link_set_up("lo", true, &e) < 0)
        return fail("lo", &e);
    return taps ? cmd_taps(ntaps, window, rounds, restrict_in, foreign) : cmd_phases(dir, runs);
}
