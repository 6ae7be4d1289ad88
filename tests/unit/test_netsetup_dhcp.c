/* netsetup end to end: a real dnsmasq serving real DHCP leases to busybox udhcpc in
 * "guest" network namespaces, DNS for guest names, and UDP traffic between guests, the
 * host and an "outside" namespace through the nat, routed and isolated rulesets and
 * the per-NIC filters. All of it lives in the test's own namespaces.
 *
 *   g1 (eth0 52:54:00:88:00:01, static 10.88.0.50) ─┐
 *   g2 (eth0 52:54:00:88:00:02, dynamic)          ─┴─ qvbr-dhcp 10.88.0.1/24 ── host
 *   host up0 198.51.100.1/24 ── out up1 198.51.100.2/24 ("the internet") */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include "tests/unit/netsetup_testlib.h"

#define G1_MAC "52:54:00:88:00:01"
#define G2_MAC "52:54:00:88:00:02"
#define G1_IP "10.88.0.50"
#define HOST_IP "10.88.0.1"
#define UPLINK_HOST "198.51.100.1"
#define UPLINK_OUT "198.51.100.2"

static struct netsetup_nft *nft;
static char run_dir[64];
static pid_t dnsmasq_pid = -1;
static int log_fd = -1;
static char g2_ip[INET_ADDRSTRLEN];

static const struct netsetup_dhcp_host static_hosts[] = {{G1_MAC, G1_IP, "guest1"}};
static const char *const forwarders[] = {"192.0.2.53", NULL};
static const struct netsetup_forward forwards[] = {{IPPROTO_UDP, 5555, G1_IP, 7777}};

static struct netsetup_net net_def(enum netsetup_net_mode mode)
{
    return (struct netsetup_net){.name = "dhcp", .bridge = "qvbr-dhcp", .mode = mode, .ipv4 = HOST_IP "/24",
                                 .forwards = mode == NETSETUP_ISOLATED ? NULL : forwards,
                                 .nforwards = mode == NETSETUP_ISOLATED ? 0 : ARRAY_SIZE(forwards)};
}

static struct netsetup_dnsmasq dnsmasq_def(void)
{
    return (struct netsetup_dnsmasq){
        .network = "dhcp", .run_dir = run_dir, .bridge = "qvbr-dhcp", .ipv4 = HOST_IP "/24",
        .dhcp_start = "10.88.0.100", .dhcp_end = "10.88.0.150", .lease_time = 600,
        .hosts = static_hosts, .nhosts = ARRAY_SIZE(static_hosts),
        .domain = "vm.test", .forwarders = forwarders,
    };
}

static void show_dnsmasq_log(void)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/dnsmasq.log", run_dir);
    char *text = NULL;
    if (read_file(path, 1 << 20, &text, NULL) == 0)
        for (char *p = text, *nl; p && *p; p = nl ? nl + 1 : NULL) {
            nl = strchr(p, '\n');
            printf("# dnsmasq: %.*s\n", nl ? (int)(nl - p) : (int)strlen(p), p);
        }
    free(text);
}

/* ---- tiny UDP peers, run in a namespace by a forked child ---------------------------- */
struct udp_job {
    const char *bind_ip;        /* NULL: any */
    uint16_t port;              /* to bind (server) */
    const char *to_ip;          /* client: where to send */
    uint16_t to_port;
    int timeout_ms;
    int pipe_w;
};

static int udp_socket(const char *ip, uint16_t port)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (ip)
        inet_pton(AF_INET, ip, &a.sin_addr);
    if (s < 0 || ((ip || port) && bind(s, (struct sockaddr *)&a, sizeof(a)) < 0))
        return -1;
    return s;
}

/* Answers one datagram with "FROM <source address>" and reports that address. */
static int echo_once(void *arg)
{
    struct udp_job *j = arg;
    int s = udp_socket(j->bind_ip, j->port);
    if (s < 0 || write(j->pipe_w, "R", 1) != 1)
        return 2;
    struct pollfd p = {.fd = s, .events = POLLIN};
    if (poll(&p, 1, j->timeout_ms) <= 0)
        return 1;
    char buf[256];
    struct sockaddr_in from;
    socklen_t fl = sizeof(from);
    if (recvfrom(s, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl) < 0)
        return 2;
    char ip[INET_ADDRSTRLEN], reply[64];
    inet_ntop(AF_INET, &from.sin_addr, ip, sizeof(ip));
    int n = snprintf(reply, sizeof(reply), "FROM %s", ip);
    sendto(s, reply, (size_t)n, 0, (struct sockaddr *)&from, fl);
    return write(j->pipe_w, ip, strlen(ip)) > 0 ? 0 : 2;
}

/* Sends one datagram and reports the reply. */
static int ask_once(void *arg)
{
    struct udp_job *j = arg;
    int s = udp_socket(j->bind_ip, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(j->to_port)};
    inet_pton(AF_INET, j->to_ip, &to.sin_addr);
    if (s < 0 || sendto(s, "hi", 2, 0, (struct sockaddr *)&to, sizeof(to)) < 0)
        return 2;
    struct pollfd p = {.fd = s, .events = POLLIN};
    if (poll(&p, 1, j->timeout_ms) <= 0)
        return 1;
    char buf[256];
    ssize_t n = recv(s, buf, sizeof(buf), 0);
    if (n <= 0)
        return 1;
    return write(j->pipe_w, buf, (size_t)n) == n ? 0 : 2;
}

static pid_t fork_job(const char *ns, int (*fn)(void *), void *arg)
{
    if (ns)
        return nstest_fork_in(ns, fn, arg);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        _exit(fn(arg));
    }
    return pid;
}

static ssize_t read_timeout(int fd, char *buf, size_t len, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    return read(fd, buf, len);
}

struct echo {
    pid_t pid;
    int rfd;
};

static struct echo echo_start(const char *ns, const char *bind_ip, uint16_t port, int timeout_ms)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    struct udp_job j = {.bind_ip = bind_ip, .port = port, .timeout_ms = timeout_ms, .pipe_w = p[1]};
    pid_t pid = fork_job(ns, echo_once, &j);
    close(p[1]);
    char c;
    assert_int_equal(read_timeout(p[0], &c, 1, 5000), 1);   /* bound */
    return (struct echo){pid, p[0]};
}

/* The source address the echo saw, or "" when nothing arrived. */
static void echo_result(struct echo *e, char *out, size_t outlen)
{
    int rc = nstest_wait(e->pid, 10000);
    ssize_t n = rc == 0 ? read_timeout(e->rfd, out, outlen - 1, 1000) : -1;
    out[n > 0 ? n : 0] = '\0';
    close(e->rfd);
}

/* The reply to one datagram from namespace ns, or "" when none came. */
static void ask(const char *ns, const char *src, const char *to_ip, uint16_t to_port, int timeout_ms, char *out,
                size_t outlen)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    struct udp_job j = {.bind_ip = src, .to_ip = to_ip, .to_port = to_port, .timeout_ms = timeout_ms, .pipe_w = p[1]};
    pid_t pid = fork_job(ns, ask_once, &j);
    close(p[1]);
    int rc = nstest_wait(pid, timeout_ms + 5000);
    ssize_t n = rc == 0 ? read_timeout(p[0], out, outlen - 1, 1000) : -1;
    out[n > 0 ? n : 0] = '\0';
    close(p[0]);
}

/* A round trip from ns to an echo in echo_ns: what the echo saw as source ("" if
 * nothing). Silence is waited for briefly; an expected answer gets time to come. */
#define EXPECT_SILENCE 0
#define EXPECT_REPLY 1
#define EXPECT_RETRY 2      /* a short try that may lose its reply: seen is "" unless both ways worked */
static void round_trip(const char *ns, const char *src, const char *echo_ns, const char *to_ip, uint16_t port,
                       int expect, char *seen, size_t seenlen)
{
    int wait_ms = expect == EXPECT_REPLY ? 4000 : 700;
    char reply[64], want[80];
    struct echo e = echo_start(echo_ns, NULL, port, wait_ms + 300);
    ask(ns, src, to_ip, port, wait_ms, reply, sizeof(reply));
    echo_result(&e, seen, seenlen);
    snprintf(want, sizeof(want), "FROM %s", seen);
    if (expect == EXPECT_RETRY && strcmp(reply, want) != 0)
        seen[0] = '\0';
    else if (seen[0])
        assert_string_equal(reply, want);
}

/* ---- DHCP client ------------------------------------------------------------------------ */
static int udhcpc(const char *ns, const char *hostname)
{
    char opt[64];
    snprintf(opt, sizeof(opt), "hostname:%s", hostname);
    const char *argv[] = {"busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "10", "-T", "1",
                          "-s", "/bin/true", "-x", opt, NULL};
    struct nstest_exec x = {.argv = argv, .out_fd = log_fd};
    pid_t pid = nstest_fork_in(ns, nstest_exec_fn, &x);
    return nstest_wait(pid, 30000);
}

static const struct netsetup_lease *find_lease(const struct netsetup_lease *l, size_t n, const char *mac)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(l[i].mac, mac) == 0)
            return &l[i];
    return NULL;
}

static void test_dnsmasq_config(void **state)
{
    (void)state;
    struct qv_err e = {0};
    char dir[] = "/tmp/qvtest-dnsconf-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *fw[] = {"192.0.2.53", "2001:db8::53#5353", NULL};
    struct netsetup_dhcp_host hosts[] = {{"52:54:00:aa:bb:01", "10.90.0.20", "web1"}, {"52:54:00:aa:bb:02", NULL, "db"}};
    struct netsetup_dnsmasq c = {
        .network = "conf", .run_dir = dir, .bridge = "qvbr-conf", .ipv4 = "10.90.0.1/24",
        .dhcp_start = "10.90.0.100", .dhcp_end = "10.90.0.199", .hosts = hosts, .nhosts = 2,
        .ipv6 = "fd90::1/64", .domain = "lab.example", .forwarders = fw, .no_router = true, .user = "nobody",
    };
    assert_int_equal(netsetup_dnsmasq_write(&c, &e), 0);
    char path[128];
    snprintf(path, sizeof(path), "%s/" NETSETUP_DNSMASQ_CONF, dir);
    char *conf = NULL;
    assert_int_equal(read_file(path, 1 << 16, &conf, NULL), 0);
    static const char *const want[] = {
        "\nuser=nobody\n", "\nexcept-interface=lo\n", "\ninterface=qvbr-conf\n", "\nbind-dynamic\n",
        "\nno-hosts\n", "\nno-resolv\n", "\nserver=192.0.2.53\n", "\nserver=2001:db8::53#5353\n",
        "\ndomain=lab.example\n", "\nlocal=/lab.example/\n", "\nexpand-hosts\n",
        "\ndhcp-range=10.90.0.100,10.90.0.199,255.255.255.0,3600\n", "\ndhcp-option=option:router\n",
        "\ndhcp-range=fd90::,ra-stateless,64\n", "\nenable-ra\n", "\nlog-facility=-\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(want); i++) {
        if (!strstr(conf, want[i]))
            printf("# missing %s in:\n%s\n", want[i], conf);
        assert_non_null(strstr(conf, want[i]));
    }
    free(conf);
    /* and dnsmasq itself accepts it */
    char opt[160];
    snprintf(opt, sizeof(opt), "--conf-file=%s/" NETSETUP_DNSMASQ_CONF, dir);
    assert_int_equal(nstest_run(NULL, "/usr/sbin/dnsmasq", "--test", opt), 0);
    struct netsetup_dnsmasq v6 = c;
    v6.dhcp6_start = "fd90::100";
    v6.dhcp6_end = "fd90::1ff";
    v6.ipv4 = NULL;
    v6.dhcp_start = v6.dhcp_end = NULL;
    v6.nhosts = 0;
    assert_int_equal(netsetup_dnsmasq_write(&v6, &e), 0);
    assert_int_equal(nstest_run(NULL, "/usr/sbin/dnsmasq", "--test", opt), 0);
    assert_int_equal(netsetup_dnsmasq_write(&c, &e), 0);
    char *hostsfile = NULL;
    snprintf(path, sizeof(path), "%s/dnsmasq.dhcp-hosts", dir);
    assert_int_equal(read_file(path, 1 << 16, &hostsfile, NULL), 0);
    assert_string_equal(hostsfile, "52:54:00:aa:bb:01,10.90.0.20,web1\n52:54:00:aa:bb:02,db\n");
    free(hostsfile);
    snprintf(path, sizeof(path), "%s/dnsmasq.hosts", dir);
    assert_int_equal(read_file(path, 1 << 16, &hostsfile, NULL), 0);
    assert_string_equal(hostsfile, "10.90.0.20 web1\n");
    free(hostsfile);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);

    /* anything that could smuggle a line into dnsmasq's config is refused */
    struct netsetup_dnsmasq bad = c;
    bad.domain = "lab\nconf-file=/etc/evil";
    assert_int_equal(netsetup_dnsmasq_write(&bad, &e), -EINVAL);
    bad = c;
    hosts[1].name = "db,set:x";
    assert_int_equal(netsetup_dnsmasq_write(&bad, &e), -EINVAL);
    assert_string_equal(e.msg, "conf: hosts[1]: \"db,set:x\" is not a host name");
    hosts[1].name = "db";
    hosts[0].ip = "10.91.0.20";
    assert_int_equal(netsetup_dnsmasq_write(&bad, &e), -EINVAL);
    assert_string_equal(e.msg, "conf: host \"10.91.0.20\" is not an address inside 10.90.0.0/24");
    hosts[0].ip = "10.90.0.20";
    hosts[0].mac = "52:54:00:aa:bb";
    assert_int_equal(netsetup_dnsmasq_write(&bad, &e), -EINVAL);
    hosts[0].mac = "52:54:00:aa:bb:01";
    bad.dhcp_start = "10.90.0.200";
    assert_int_equal(netsetup_dnsmasq_write(&bad, &e), -EINVAL);
    assert_string_equal(e.msg, "conf: DHCP range 10.90.0.200-10.90.0.199 ends before it starts");
    bad = c;
    const char *badfw[] = {"dns.example", NULL};
    bad.forwarders = badfw;
    assert_int_equal(netsetup_dnsmasq_write(&bad, &e), -EINVAL);
    bad = c;
    bad.run_dir = "relative";
    assert_int_equal(netsetup_dnsmasq_write(&bad, &e), -EINVAL);
    nstest_rm_rf(dir);
}

static void test_leases_parse(void **state)
{
    (void)state;
    struct qv_err e = {0};
    char dir[] = "/tmp/qvtest-leases-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/leases", dir);
    static const char text[] =
        "1763780000 52:54:00:88:00:02 10.88.0.120 guest2 01:52:54:00:88:00:02\n"
        "0 52:54:00:88:00:01 10.88.0.50 * *\n"
        "duid 00:01:00:01:2e:9a:11:22:02:71:76:aa:bb:cc\n"
        "1763780600 1234567 fd88::1a2b guest3 00:04:aa:bb\n"
        "garbage line\n";
    assert_int_equal(write_file_atomic(path, text, strlen(text), 0644, &e), 0);
    struct netsetup_lease *l = NULL;
    size_t n = 0;
    assert_int_equal(netsetup_leases_read(path, &l, &n, &e), 0);
    assert_int_equal(n, 3);
    assert_int_equal(l[0].expiry, 1763780000);
    assert_string_equal(l[0].mac, "52:54:00:88:00:02");
    assert_string_equal(l[0].ip, "10.88.0.120");
    assert_string_equal(l[0].hostname, "guest2");
    assert_string_equal(l[0].client_id, "01:52:54:00:88:00:02");
    assert_false(l[0].ipv6);
    assert_int_equal(l[1].expiry, 0);
    assert_string_equal(l[1].hostname, "");
    assert_string_equal(l[1].client_id, "");
    assert_true(l[2].ipv6);
    assert_int_equal(l[2].iaid, 1234567);
    assert_string_equal(l[2].mac, "");
    assert_string_equal(l[2].ip, "fd88::1a2b");
    assert_string_equal(l[2].client_id, "00:04:aa:bb");
    free(l);
    snprintf(path, sizeof(path), "%s/none", dir);
    assert_int_equal(netsetup_leases_read(path, &l, &n, &e), 0);
    assert_int_equal(n, 0);
    assert_null(l);
    nstest_rm_rf(dir);
}

static void test_dhcp_and_dns(void **state)
{
    (void)state;
    struct qv_err e = {0};
    int rc = udhcpc("g1", "guest1");
    if (rc != 0)
        show_dnsmasq_log();
    assert_int_equal(rc, 0);
    assert_int_equal(udhcpc("g2", "guest2"), 0);
    char path[128];
    snprintf(path, sizeof(path), "%s/" NETSETUP_DNSMASQ_LEASES, run_dir);
    struct netsetup_lease *l = NULL;
    size_t n = 0;
    assert_int_equal(netsetup_leases_read(path, &l, &n, &e), 0);
    for (size_t i = 0; i < n; i++)
        printf("# lease: %s %s %s %s expires %lld\n", l[i].mac, l[i].ip, l[i].hostname, l[i].client_id,
               (long long)l[i].expiry);
    const struct netsetup_lease *g1 = find_lease(l, n, G1_MAC), *g2 = find_lease(l, n, G2_MAC);
    assert_non_null(g1);
    assert_non_null(g2);
    assert_string_equal(g1->ip, G1_IP);
    assert_string_equal(g1->hostname, "guest1");
    assert_string_equal(g2->hostname, "guest2");
    assert_string_equal(g2->client_id, "01:" G2_MAC);
    struct netsetup_cidr range_lo, range_hi, got;
    assert_int_equal(netsetup_cidr_parse("10.88.0.100", &range_lo, &e), 0);
    assert_int_equal(netsetup_cidr_parse("10.88.0.150", &range_hi, &e), 0);
    assert_int_equal(netsetup_cidr_parse(g2->ip, &got, &e), 0);
    assert_true(memcmp(got.addr, range_lo.addr, 4) >= 0 && memcmp(got.addr, range_hi.addr, 4) <= 0);
    int64_t now = (int64_t)time(NULL);
    assert_true(g2->expiry > now + 500 && g2->expiry <= now + 601);
    snprintf(g2_ip, sizeof(g2_ip), "%s", g2->ip);
    free(l);

    /* the guests use their leases from now on */
    char cidr[32];
    snprintf(cidr, sizeof(cidr), "%s/24", G1_IP);
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g1", "addr", "add", cidr, "dev", "eth0"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g1", "route", "add", "default", "via", HOST_IP), 0);
    snprintf(cidr, sizeof(cidr), "%s/24", g2_ip);
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g2", "addr", "add", cidr, "dev", "eth0"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g2", "route", "add", "default", "via", HOST_IP), 0);

    /* guest names resolve, the static one and the leased one */
    char *out = NULL;
    assert_int_equal(nstest_run(&out, "ip", "netns", "exec", "g1", "busybox", "nslookup", "guest2.vm.test", HOST_IP), 0);
    assert_non_null(strstr(out, g2_ip));
    free(out);
    assert_int_equal(nstest_run(&out, "ip", "netns", "exec", "g2", "busybox", "nslookup", "guest1.vm.test", HOST_IP), 0);
    assert_non_null(strstr(out, G1_IP));
    free(out);

    pid_t found;
    assert_int_equal(netsetup_dnsmasq_find(run_dir, &found), 0);
    assert_int_equal(found, dnsmasq_pid);
    assert_int_equal(netsetup_dnsmasq_find("/nonexistent", &found), -ESRCH);
}

static void test_nat(void **state)
{
    (void)state;
    char seen[64], reply[64];
    /* out: masqueraded behind the host's uplink address, and the reply comes back */
    round_trip("g2", NULL, "out", UPLINK_OUT, 7001, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, UPLINK_HOST);
    /* no unsolicited inbound */
    round_trip("out", NULL, "g2", g2_ip, 7002, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    /* a port forward reaches the static guest, which sees the real client */
    struct echo ec = echo_start("g1", NULL, 7777, 4300);
    ask("out", NULL, UPLINK_HOST, 5555, 4000, reply, sizeof(reply));
    echo_result(&ec, seen, sizeof(seen));
    assert_string_equal(seen, UPLINK_OUT);
    assert_string_equal(reply, "FROM " UPLINK_OUT);
    /* guests reach each other and the host */
    round_trip("g2", NULL, "g1", G1_IP, 7003, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, g2_ip);
    round_trip("g1", NULL, NULL, HOST_IP, 7004, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, G1_IP);
}

static void test_routed_and_isolated(void **state)
{
    (void)state;
    struct qv_err e = {0};
    char seen[64];
    struct netsetup_net routed = net_def(NETSETUP_ROUTED);
    assert_int_equal(netsetup_nft_net_apply(nft, &routed, &e), 0);
    round_trip("g2", NULL, "out", UPLINK_OUT, 7011, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, g2_ip);   /* no NAT */
    round_trip("out", NULL, "g2", g2_ip, 7012, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, UPLINK_OUT);

    struct netsetup_net isolated = net_def(NETSETUP_ISOLATED);
    assert_int_equal(netsetup_nft_net_apply(nft, &isolated, &e), 0);
    round_trip("g2", NULL, "out", UPLINK_OUT, 7013, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    round_trip("out", NULL, "g2", g2_ip, 7014, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    round_trip("g1", NULL, NULL, HOST_IP, 7015, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");     /* the host offers DHCP and DNS only */
    round_trip("g2", NULL, "g1", G1_IP, 7016, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, g2_ip);  /* guests still talk to each other */
    char *out = NULL;
    assert_int_equal(nstest_run(&out, "ip", "netns", "exec", "g1", "busybox", "nslookup", "guest2.vm.test", HOST_IP), 0);
    assert_non_null(strstr(out, g2_ip));
    free(out);

    struct netsetup_net nat = net_def(NETSETUP_NAT);
    assert_int_equal(netsetup_nft_net_apply(nft, &nat, &e), 0);
    round_trip("g2", NULL, "out", UPLINK_OUT, 7017, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, UPLINK_HOST);
}

static void test_nic_filter_traffic(void **state)
{
    (void)state;
    struct qv_err e = {0};
    char seen[64];
    const char *ips[] = {g2_ip, NULL};
    struct netsetup_nic_filter f = {.mac = G2_MAC, .ipv4 = ips};
    assert_int_equal(netsetup_nft_nic_apply(nft, "dhcp", "qvt-g2", &f, &e), 0);
    round_trip("g2", NULL, NULL, HOST_IP, 7021, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, g2_ip);
    round_trip("g2", NULL, "g1", G1_IP, 7022, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, g2_ip);

    /* another source address: nothing gets through */
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g2", "addr", "add", "10.88.0.99/24", "dev", "eth0"), 0);
    round_trip("g2", "10.88.0.99", NULL, HOST_IP, 7023, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    round_trip("g2", "10.88.0.99", "g1", G1_IP, 7024, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");

    /* another MAC: nothing either, even from the right address */
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g2", "link", "set", "eth0", "address", "52:54:00:88:00:99"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g2", "neigh", "flush", "all"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "neigh", "flush", "all"), 0);
    round_trip("g2", g2_ip, NULL, HOST_IP, 7025, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g2", "link", "set", "eth0", "address", G2_MAC), 0);
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g2", "neigh", "flush", "all"), 0);

    /* before a lease is known only DHCP passes; the lease then opens the filter */
    struct netsetup_nic_filter unknown = {.mac = G2_MAC};
    assert_int_equal(netsetup_nft_nic_apply(nft, "dhcp", "qvt-g2", &unknown, &e), 0);
    round_trip("g2", g2_ip, NULL, HOST_IP, 7026, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    assert_int_equal(udhcpc("g2", "guest2"), 0);
    assert_int_equal(netsetup_nft_nic_apply(nft, "dhcp", "qvt-g2", &f, &e), 0);
    /* The guest's ARP for the gateway failed while it was blocked, and the kernel
     * retries a FAILED neighbour only after a pause (so would a real guest): the
     * first datagrams may be lost. */
    seen[0] = '\0';
    for (int i = 0; i < 8 && !seen[0]; i++)
        round_trip("g2", g2_ip, NULL, HOST_IP, (uint16_t)(7040 + i), EXPECT_RETRY, seen, sizeof(seen));
    assert_string_equal(seen, g2_ip);

    /* inbound restricted to one port: others are dropped, replies still come in */
    struct netsetup_port allow[] = {{.proto = IPPROTO_UDP, .lo = 7028, .hi = 0}};
    struct netsetup_nic_filter in = {.mac = G2_MAC, .ipv4 = ips, .restrict_in = true, .allow_in = allow,
                                     .nallow_in = 1};
    assert_int_equal(netsetup_nft_nic_apply(nft, "dhcp", "qvt-g2", &in, &e), 0);
    round_trip("g1", NULL, "g2", g2_ip, 7028, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, G1_IP);
    round_trip("g1", NULL, "g2", g2_ip, 7029, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    char *out = NULL;
    assert_int_equal(nstest_run(&out, "ip", "netns", "exec", "g2", "busybox", "nslookup", "guest1.vm.test", HOST_IP), 0);
    free(out);

    /* outbound ports denied: 7024-7039 is one block of 16 ports (a masked lookup),
     * 7040 a single port, 7041 just outside */
    struct netsetup_port deny[] = {{.proto = IPPROTO_UDP, .lo = 7024, .hi = 7040}};
    struct netsetup_nic_filter out_f = {.mac = G2_MAC, .ipv4 = ips, .deny_out = deny, .ndeny_out = 1};
    assert_int_equal(netsetup_nft_nic_apply(nft, "dhcp", "qvt-g2", &out_f, &e), 0);
    round_trip("g2", NULL, "g1", G1_IP, 7031, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    round_trip("g2", NULL, "g1", G1_IP, 7040, EXPECT_SILENCE, seen, sizeof(seen));
    assert_string_equal(seen, "");
    round_trip("g2", NULL, "g1", G1_IP, 7041, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, g2_ip);

    /* without the filter the spoofed address passes: it was the filter */
    assert_int_equal(netsetup_nft_nic_remove(nft, "dhcp", "qvt-g2", &e), 0);
    round_trip("g2", "10.88.0.99", NULL, HOST_IP, 7033, EXPECT_REPLY, seen, sizeof(seen));
    assert_string_equal(seen, "10.88.0.99");
    assert_int_equal(nstest_run(NULL, "ip", "-n", "g2", "addr", "del", "10.88.0.99/24", "dev", "eth0"), 0);
}

static void test_dnsmasq_restart(void **state)
{
    (void)state;
    struct qv_err e = {0};
    assert_int_equal(kill(dnsmasq_pid, SIGTERM), 0);
    assert_int_equal(nstest_wait(dnsmasq_pid, 5000), 0);
    dnsmasq_pid = -1;
    pid_t p;
    assert_int_equal(netsetup_dnsmasq_find(run_dir, &p), -ESRCH);
    struct netsetup_dnsmasq c = dnsmasq_def();
    assert_int_equal(netsetup_dnsmasq_spawn(&c, log_fd, 5000, &dnsmasq_pid, &e), 0);
    /* the leases survived the restart */
    char path[128];
    snprintf(path, sizeof(path), "%s/" NETSETUP_DNSMASQ_LEASES, run_dir);
    struct netsetup_lease *l = NULL;
    size_t n = 0;
    assert_int_equal(netsetup_leases_read(path, &l, &n, &e), 0);
    assert_non_null(find_lease(l, n, G2_MAC));
    free(l);
    /* a second dnsmasq on the same bridge cannot bind and says why */
    pid_t second = -1;
    char dir2[] = "/tmp/qvtest-dnsmasq2-XXXXXX";
    assert_non_null(mkdtemp(dir2));
    c.run_dir = dir2;
    assert_int_equal(netsetup_dnsmasq_spawn(&c, log_fd, 5000, &second, &e), -EIO);
    printf("# %s\n", e.msg);
    assert_non_null(strstr(e.msg, "dnsmasq exited with status 2"));
    nstest_rm_rf(dir2);
}

static int setup(void **state)
{
    (void)state;
    struct qv_err e = {0};
    if (netsetup_nft_open(&nft, &e) < 0)
        return -1;
    snprintf(run_dir, sizeof(run_dir), "/tmp/qvtest-dnsmasq-XXXXXX");
    if (!mkdtemp(run_dir) || chmod(run_dir, 0755) < 0)
        return -1;
    char logpath[128];
    snprintf(logpath, sizeof(logpath), "%s/dnsmasq.log", run_dir);
    log_fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    static const char *const cmds[][12] = {
        {"ip", "netns", "add", "g1"},
        {"ip", "netns", "add", "g2"},
        {"ip", "netns", "add", "out"},
        {"ip", "link", "add", "qvt-g1", "type", "veth", "peer", "name", "eth0", "netns", "g1"},
        {"ip", "link", "add", "qvt-g2", "type", "veth", "peer", "name", "eth0", "netns", "g2"},
        {"ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1", "netns", "out"},
        {"ip", "-n", "g1", "link", "set", "eth0", "address", G1_MAC, "up"},
        {"ip", "-n", "g2", "link", "set", "eth0", "address", G2_MAC, "up"},
        {"ip", "-n", "g1", "link", "set", "lo", "up"},
        {"ip", "-n", "g2", "link", "set", "lo", "up"},
        {"ip", "-n", "out", "link", "set", "up1", "up"},
        {"ip", "-n", "out", "addr", "add", UPLINK_OUT "/24", "dev", "up1"},
        {"ip", "-n", "out", "route", "add", "10.88.0.0/24", "via", UPLINK_HOST},
        {"ip", "link", "set", "up0", "up"},
        {"ip", "addr", "add", UPLINK_HOST "/24", "dev", "up0"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cmds); i++)
        if (nstest_runv(NULL, cmds[i]) != 0)
            return -1;
    struct netsetup_net net = net_def(NETSETUP_NAT);
    struct strv log = {0};
    if (netsetup_net_up(nft, &net, &log, &e) < 0 || netsetup_link_attach("qvt-g1", "qvbr-dhcp", &e) < 0 ||
        netsetup_link_attach("qvt-g2", "qvbr-dhcp", &e) < 0) {
        printf("# %s\n", e.msg);
        return -1;
    }
    strv_free(&log);
    struct netsetup_dnsmasq c = dnsmasq_def();
    uint64_t t0 = nstest_now_us();
    if (netsetup_dnsmasq_spawn(&c, log_fd, 5000, &dnsmasq_pid, &e) < 0) {
        printf("# %s\n", e.msg);
        show_dnsmasq_log();
        return -1;
    }
    printf("# dnsmasq serving after %llu ms\n", (unsigned long long)((nstest_now_us() - t0) / 1000));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    struct qv_err e = {0};
    if (dnsmasq_pid > 0) {
        kill(dnsmasq_pid, SIGTERM);
        nstest_wait(dnsmasq_pid, 5000);
    }
    netsetup_net_down(nft, "dhcp", "qvbr-dhcp", &e);
    netsetup_nft_close(nft);
    if (log_fd >= 0)
        close(log_fd);
    nstest_rm_rf(run_dir);
    return 0;
}

int main(void)
{
    nstest_enter(400);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dnsmasq_config),
        cmocka_unit_test(test_leases_parse),
        cmocka_unit_test(test_dhcp_and_dns),
        cmocka_unit_test(test_nat),
        cmocka_unit_test(test_routed_and_isolated),
        cmocka_unit_test(test_nic_filter_traffic),
        cmocka_unit_test(test_dnsmasq_restart),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
