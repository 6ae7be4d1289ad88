#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "netsetup/internal.h"

#define DHCP_HOSTS_FILE "dnsmasq.dhcp-hosts"
#define DNS_HOSTS_FILE "dnsmasq.hosts"

/* Host names and domains go into dnsmasq's config verbatim: anything but
 * letters, digits, '-' and '.' could end or extend an option. */
static bool dns_name_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 253 || s[0] == '-' || s[0] == '.')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '.'))
            return false;
    return true;
}

static bool ip_valid(int family, const char *s)
{
    unsigned char a[16];
    return s && inet_pton(family, s, a) == 1;
}

/* "192.0.2.53", "2001:db8::53", optionally "#PORT". */
static bool server_valid(const char *s)
{
    char host[INET6_ADDRSTRLEN + 1];
    size_t n = s ? strcspn(s, "#") : 0;
    if (n == 0 || n >= sizeof(host))
        return false;
    memcpy(host, s, n);
    host[n] = '\0';
    if (s[n] == '#') {
        uint64_t port;
        if (parse_u64(s + n + 1, &port) < 0 || port == 0 || port > 65535)
            return false;
    }
    return ip_valid(AF_INET, host) || ip_valid(AF_INET6, host);
}

struct v4 {
    struct netsetup_cidr host;
    char netmask[INET_ADDRSTRLEN], network[INET_ADDRSTRLEN];
    uint64_t size;
};

static int check_in_subnet(const struct netsetup_dnsmasq *c, const struct netsetup_cidr *net, const char *what,
                           const char *ip, struct qv_err *e)
{
    struct netsetup_cidr a;
    if (netsetup_cidr_parse(ip, &a, NULL) < 0 || a.family != net->family ||
        a.prefix != (net->family == AF_INET ? 32u : 128u) || !netsetup_cidr_contains(net, &a)) {
        char shown[64];
        netsetup_cidr_network_str(net, shown, sizeof(shown));
        return qv_fail(e, -EINVAL, "%s: %s \"%s\" is not an address inside %s", c->network, what, ip, shown);
    }
    return 0;
}

static int validate(const struct netsetup_dnsmasq *c, struct v4 *v, struct netsetup_cidr *v6, struct qv_err *e)
{
    const char *net = c->network ? c->network : "network";
    if (!c->run_dir || c->run_dir[0] != '/' || strchr(c->run_dir, '\n'))
        return qv_fail(e, -EINVAL, "%s: dnsmasq needs an absolute run directory", net);
    if (!netsetup_ifname_valid(c->bridge))
        return qv_fail(e, -EINVAL, "%s: \"%s\" is not a valid bridge name", net, c->bridge ? c->bridge : "");
    if (!c->ipv4 && !c->ipv6)
        return qv_fail(e, -EINVAL, "%s: dnsmasq needs an IPv4 or IPv6 address on the bridge", net);
    int r;
    if (c->ipv4) {
        if ((r = netsetup_cidr_parse(c->ipv4, &v->host, e)) < 0)
            return qv_prefix(e, "%s: ", net);
        if (v->host.family != AF_INET || v->host.prefix < 8 || v->host.prefix > 30)
            return qv_fail(e, -EINVAL, "%s: \"%s\" is not an IPv4 address with a prefix of 8-30", net, c->ipv4);
        uint32_t mask = ~0u << (32 - v->host.prefix), a;
        memcpy(&a, v->host.addr, 4);
        struct in_addr m = {htonl(mask)}, n = {a & htonl(mask)};
        inet_ntop(AF_INET, &m, v->netmask, sizeof(v->netmask));
        inet_ntop(AF_INET, &n, v->network, sizeof(v->network));
        if ((c->dhcp_start && (r = check_in_subnet(c, &v->host, "dhcp start", c->dhcp_start, e)) < 0) ||
            (c->dhcp_end && (r = check_in_subnet(c, &v->host, "dhcp end", c->dhcp_end, e)) < 0))
            return r;
        if (!c->dhcp_start != !c->dhcp_end)
            return qv_fail(e, -EINVAL, "%s: a DHCP range needs both start and end", net);
        if (c->dhcp_start) {
            struct in_addr s, en;
            inet_pton(AF_INET, c->dhcp_start, &s);
            inet_pton(AF_INET, c->dhcp_end, &en);
            if (ntohl(en.s_addr) < ntohl(s.s_addr))
                return qv_fail(e, -EINVAL, "%s: DHCP range %s-%s ends before it starts", net, c->dhcp_start,
                               c->dhcp_end);
            v->size = (uint64_t)ntohl(en.s_addr) - ntohl(s.s_addr) + 1;
        }
    } else if (c->dhcp_start || c->dhcp_end || c->nhosts) {
        return qv_fail(e, -EINVAL, "%s: DHCPv4 settings need an IPv4 address", net);
    }
    if (c->ipv6) {
        if ((r = netsetup_cidr_parse(c->ipv6, v6, e)) < 0)
            return qv_prefix(e, "%s: ", net);
        if (v6->family != AF_INET6 || v6->prefix != 64)
            return qv_fail(e, -EINVAL, "%s: \"%s\": router advertisements need an IPv6 /64", net, c->ipv6);
        if (!c->dhcp6_start != !c->dhcp6_end)
            return qv_fail(e, -EINVAL, "%s: a DHCPv6 range needs both start and end", net);
        if ((c->dhcp6_start && (r = check_in_subnet(c, v6, "dhcp6 start", c->dhcp6_start, e)) < 0) ||
            (c->dhcp6_end && (r = check_in_subnet(c, v6, "dhcp6 end", c->dhcp6_end, e)) < 0))
            return r;
    }
    for (size_t i = 0; i < c->nhosts; i++) {
        const struct netsetup_dhcp_host *h = &c->hosts[i];
        unsigned char mac[6];
        if (!ns_mac_parse(h->mac, mac))
            return qv_fail(e, -EINVAL, "%s: hosts[%zu]: \"%s\" is not a MAC address", net, i, h->mac ? h->mac : "");
        if (h->ip && (r = check_in_subnet(c, &v->host, "host", h->ip, e)) < 0)
            return r;
        if (h->name && !dns_name_valid(h->name))
            return qv_fail(e, -EINVAL, "%s: hosts[%zu]: \"%s\" is not a host name", net, i, h->name);
    }
    if (c->domain && !dns_name_valid(c->domain))
        return qv_fail(e, -EINVAL, "%s: \"%s\" is not a domain name", net, c->domain);
    for (size_t i = 0; c->forwarders && c->forwarders[i]; i++)
        if (!server_valid(c->forwarders[i]))
            return qv_fail(e, -EINVAL, "%s: forwarder \"%s\" is not an IP address[#port]", net, c->forwarders[i]);
    if (c->user && !dns_name_valid(c->user))
        return qv_fail(e, -EINVAL, "%s: \"%s\" is not a user name", net, c->user);
    return 0;
}

static const char *run_user(const struct netsetup_dnsmasq *c)
{
    if (c->user)
        return c->user;
    /* in a child (common: nss_user), so the network supervisor maps no NSS modules;
     * no answer is "nobody", as a failed lookup always was */
    bool found = false;
    uid_t uid;
    gid_t gid;
    return nss_user("dnsmasq", &found, &uid, &gid, NULL) == 0 && found ? "dnsmasq" : "nobody";
}

static void config_text(const struct netsetup_dnsmasq *c, const struct v4 *v, const struct netsetup_cidr *v6,
                        struct buf *b)
{
    const char *d = c->run_dir;
    unsigned lease = c->lease_time ? c->lease_time : 3600;
    buf_printf(b, "# Generated by qvisor for network %s; rewritten at every start.\n",
               c->network ? c->network : "");
    buf_printf(b, "pid-file=%s/%s\nuser=%s\nlog-facility=-\n", d, NETSETUP_DNSMASQ_PID, run_user(c));
    /* only the bridge: a host's other interfaces never see this DNS/DHCP server */
    buf_printf(b, "except-interface=lo\ninterface=%s\nbind-dynamic\n", c->bridge);
    /* the host's /etc/hosts is none of the guests' business */
    buf_printf(b, "no-hosts\naddn-hosts=%s/%s\nstrict-order\n", d, DNS_HOSTS_FILE);
    if (c->forwarders && c->forwarders[0]) {
        buf_adds(b, "no-resolv\n");
        for (size_t i = 0; c->forwarders[i]; i++)
            buf_printf(b, "server=%s\n", c->forwarders[i]);
    }
    if (c->domain)
        buf_printf(b, "domain=%s\nlocal=/%s/\nexpand-hosts\n", c->domain, c->domain);
    buf_printf(b, "dhcp-leasefile=%s/%s\ndhcp-hostsfile=%s/%s\n", d, NETSETUP_DNSMASQ_LEASES, d, DHCP_HOSTS_FILE);
    if (c->ipv4) {
        if (c->dhcp_start)
            buf_printf(b, "dhcp-range=%s,%s,%s,%u\n", c->dhcp_start, c->dhcp_end, v->netmask, lease);
        else
            buf_printf(b, "dhcp-range=%s,static,%s,%u\n", v->network, v->netmask, lease);
        buf_printf(b, "dhcp-lease-max=%llu\ndhcp-no-override\ndhcp-authoritative\n",
                   (unsigned long long)(v->size + c->nhosts + 1));
        if (c->no_router)
            buf_adds(b, "dhcp-option=option:router\n");
    }
    if (c->ipv6) {
        char net6[64];
        struct netsetup_cidr n = *v6;
        netsetup_cidr_network_str(&n, net6, sizeof(net6));
        net6[strcspn(net6, "/")] = '\0';
        if (c->dhcp6_start)
            buf_printf(b, "dhcp-range=%s,%s,64,%u\n", c->dhcp6_start, c->dhcp6_end, lease);
        else
            buf_printf(b, "dhcp-range=%s,ra-stateless,64\n", net6);
        buf_adds(b, "enable-ra\n");
    }
}

static int write_run_file(const struct netsetup_dnsmasq *c, const char *name, const struct buf *b,
                          struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", c->run_dir, name);
    /* 0644: dnsmasq re-reads the hosts files on SIGHUP after dropping root */
    int r = write_file_atomic(path, b->p ? b->p : "", b->len, 0644, e);
    if (r < 0)
        return qv_prefix(e, "%s: ", c->network ? c->network : "dnsmasq");
    return 0;
}

int netsetup_dnsmasq_write(const struct netsetup_dnsmasq *c, struct qv_err *e)
{
    struct v4 v = {0};
    struct netsetup_cidr v6 = {0};
    int r = validate(c, &v, &v6, e);
    if (r < 0)
        return r;
    struct buf conf = {0}, dhcp = {0}, dns = {0};
    config_text(c, &v, &v6, &conf);
    for (size_t i = 0; i < c->nhosts; i++) {
        const struct netsetup_dhcp_host *h = &c->hosts[i];
        buf_printf(&dhcp, "%s", h->mac);
        if (h->ip)
            buf_printf(&dhcp, ",%s", h->ip);
        if (h->name)
            buf_printf(&dhcp, ",%s", h->name);
        buf_adds(&dhcp, "\n");
        /* a static host resolves before its first lease */
        if (h->ip && h->name)
            buf_printf(&dns, "%s %s\n", h->ip, h->name);
    }
    if ((r = write_run_file(c, DHCP_HOSTS_FILE, &dhcp, e)) == 0 && (r = write_run_file(c, DNS_HOSTS_FILE, &dns, e)) == 0)
        r = write_run_file(c, NETSETUP_DNSMASQ_CONF, &conf, e);
    buf_free(&conf);
    buf_free(&dhcp);
    buf_free(&dns);
    return r;
}

static const char *exit_meaning(int status)
{
    switch (status) {
    case 1: return "configuration problem";
    case 2: return "network problem (address in use, or no permission to bind)";
    case 3: return "file system problem (missing file or permission)";
    case 4: return "out of memory";
    case 127: return "could not be executed";
    default: return "failed";
    }
}

static pid_t read_pid_file(const char *path)
{
    char s[32];
    if (read_file_line(path, s, sizeof(s)) < 0)
        return -1;
    char *end;
    long v = strtol(s, &end, 10);
    return end != s && v > 0 && v <= INT_MAX ? (pid_t)v : -1;
}

/* Runs in the forked child: only async-signal-safe calls until execve. */
static void exec_child(const char *bin, char *const argv[], int log_fd)
{
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL);
    setsid();
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0)
        dup2(null, 0);
    if (log_fd >= 0) {
        dup2(log_fd, 1);
        dup2(log_fd, 2);
    }
    close_range(3, ~0u, 0);
    char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    execve(bin, argv, envp);
    _exit(127);
}

int netsetup_dnsmasq_spawn(const struct netsetup_dnsmasq *c, int log_fd, int timeout_ms, pid_t *pid,
                           struct qv_err *e)
{
    const char *net = c->network ? c->network : "network";
    int r = netsetup_dnsmasq_write(c, e);
    if (r < 0)
        return r;
    const char *bin = c->dnsmasq ? c->dnsmasq : "/usr/sbin/dnsmasq";
    if (access(bin, X_OK) < 0)
        return qv_failerr(e, -errno, "%s: %s", net, bin);
    char pidpath[PATH_MAX], confopt[PATH_MAX + 16];
    snprintf(pidpath, sizeof(pidpath), "%s/%s", c->run_dir, NETSETUP_DNSMASQ_PID);
    snprintf(confopt, sizeof(confopt), "--conf-file=%s/%s", c->run_dir, NETSETUP_DNSMASQ_CONF);
    /* a stale pid file would look like readiness */
    if (unlink(pidpath) < 0 && errno != ENOENT)
        return qv_failerr(e, -errno, "%s: cannot remove %s", net, pidpath);
    char *const argv[] = {"dnsmasq", "--keep-in-foreground", confopt, NULL};
    pid_t child = fork();
    if (child < 0)
        return qv_failerr(e, -errno, "%s: cannot fork dnsmasq", net);
    if (child == 0)
        exec_child(bin, argv, log_fd);

    if (timeout_ms <= 0)
        timeout_ms = 5000;
    uint64_t deadline = monotonic_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int status;
        pid_t w = waitpid(child, &status, WNOHANG);
        if (w == child) {
            if (WIFEXITED(status))
                return qv_fail(e, -EIO, "%s: dnsmasq exited with status %d: %s", net, WEXITSTATUS(status),
                               exit_meaning(WEXITSTATUS(status)));
            return qv_fail(e, -EIO, "%s: dnsmasq killed by signal %d", net, WTERMSIG(status));
        }
        if (read_pid_file(pidpath) == child)
            break;
        if (monotonic_ms() >= deadline) {
            kill(child, SIGKILL);
            while (waitpid(child, &status, 0) < 0 && errno == EINTR)
                ;
            return qv_fail(e, -ETIMEDOUT, "%s: dnsmasq did not start within %d ms", net, timeout_ms);
        }
        poll(NULL, 0, 5);
    }
    *pid = child;
    return 0;
}

int netsetup_dnsmasq_find(const char *run_dir, pid_t *pid)
{
    char pidpath[PATH_MAX], conf[PATH_MAX];
    snprintf(pidpath, sizeof(pidpath), "%s/%s", run_dir, NETSETUP_DNSMASQ_PID);
    snprintf(conf, sizeof(conf), "--conf-file=%s/%s", run_dir, NETSETUP_DNSMASQ_CONF);
    pid_t p = read_pid_file(pidpath);
    /* a reused pid must never be mistaken for our dnsmasq */
    if (p <= 0 || !proc_cmdline_contains(p, conf))
        return -ESRCH;
    *pid = p;
    return 0;
}
