/* netsetup links: names, subnets, bridges, addresses, taps, macvtap, vhost,
 * forwarding and overlap checks — real links in a private network namespace. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sys/ioctl.h>
#include <linux/if.h>
#include <linux/if_tun.h>

#include "tests/unit/netsetup_testlib.h"

static void test_names(void **state)
{
    (void)state;
    char a[NETSETUP_IFNAMSIZ], b[NETSETUP_IFNAMSIZ], c[NETSETUP_IFNAMSIZ];
    netsetup_tap_name("0b0c9a5e-7f43-4a38-9d2b-0d2d0b7a1c11", 0, a);
    netsetup_tap_name("0b0c9a5e-7f43-4a38-9d2b-0d2d0b7a1c11", 0, b);
    netsetup_tap_name("0b0c9a5e-7f43-4a38-9d2b-0d2d0b7a1c11", 1, c);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_int_equal(strlen(a), 15);
    assert_true(str_startswith(a, NETSETUP_TAP_PREFIX));
    assert_true(netsetup_ifname_valid(a));
    netsetup_macvtap_name("0b0c9a5e-7f43-4a38-9d2b-0d2d0b7a1c11", 0, c);
    assert_true(str_startswith(c, NETSETUP_MACVTAP_PREFIX));
    assert_int_equal(strlen(c), 15);

    netsetup_bridge_name("default", a);
    assert_string_equal(a, "qvbr-default");
    netsetup_bridge_name("a-very-long-network-name", b);
    assert_int_equal(strlen(b), 15);
    assert_true(str_startswith(b, "qvbr-a-ve"));
    netsetup_bridge_name("a-very-long-network-nam3", c);
    assert_string_not_equal(b, c);

    assert_false(netsetup_ifname_valid(""));
    assert_false(netsetup_ifname_valid("0123456789abcdef"));
    assert_false(netsetup_ifname_valid("br 0"));
    assert_false(netsetup_ifname_valid("br/0"));
    assert_false(netsetup_ifname_valid(".."));
    assert_true(netsetup_ifname_valid("0123456789abcde"));
}

static void test_cidr(void **state)
{
    (void)state;
    struct qv_err e = {0};
    struct netsetup_cidr a, b;
    char s[64];
    assert_int_equal(netsetup_cidr_parse("10.77.0.1/24", &a, &e), 0);
    assert_int_equal(a.family, AF_INET);
    assert_int_equal(a.prefix, 24);
    netsetup_cidr_network_str(&a, s, sizeof(s));
    assert_string_equal(s, "10.77.0.0/24");
    netsetup_cidr_addr_str(&a, s, sizeof(s));
    assert_string_equal(s, "10.77.0.1");
    assert_int_equal(netsetup_cidr_parse("10.77.0.0/16", &b, &e), 0);
    assert_true(netsetup_cidr_overlap(&a, &b));
    assert_int_equal(netsetup_cidr_parse("10.78.0.0/24", &b, &e), 0);
    assert_false(netsetup_cidr_overlap(&a, &b));
    assert_int_equal(netsetup_cidr_parse("10.77.0.200", &b, &e), 0);
    assert_int_equal(b.prefix, 32);
    assert_true(netsetup_cidr_contains(&a, &b));
    assert_int_equal(netsetup_cidr_parse("fd77:1:2:3::1/64", &a, &e), 0);
    netsetup_cidr_network_str(&a, s, sizeof(s));
    assert_string_equal(s, "fd77:1:2:3::/64");
    assert_int_equal(netsetup_cidr_parse("10.77.0.1/33", &a, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "prefix length"));
    assert_int_equal(netsetup_cidr_parse("banana/3", &a, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "banana"));
}

static void test_bridge(void **state)
{
    (void)state;
    struct qv_err e = {0};
    assert_int_equal(netsetup_bridge_create("qvbr-t1", 1400, 0, &e), 0);
    struct netsetup_link_info info;
    assert_int_equal(netsetup_link_get("qvbr-t1", &info, &e), 0);
    assert_string_equal(info.kind, "bridge");
    assert_int_equal(info.mtu, 1400);
    assert_true(info.up);
    assert_true(str_startswith(info.mac, "02:71:76:"));
    char v[32];
    assert_int_equal(nstest_read_line("/sys/class/net/qvbr-t1/bridge/stp_state", v, sizeof(v)), 0);
    assert_string_equal(v, "0");
    assert_int_equal(nstest_read_line("/sys/class/net/qvbr-t1/bridge/forward_delay", v, sizeof(v)), 0);
    assert_string_equal(v, "0");

    /* a second create is a conflict unless adopting; adopting fixes what drifted */
    assert_int_equal(netsetup_bridge_create("qvbr-t1", 1400, 0, &e), -EEXIST);
    assert_string_equal(e.msg, "qvbr-t1: cannot create bridge: File exists");
    assert_int_equal(nstest_run(NULL, "ip", "link", "set", "qvbr-t1", "down", "mtu", "1300"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "link", "set", "qvbr-t1", "type", "bridge", "stp_state", "1",
                                "forward_delay", "1500"), 0);
    assert_int_equal(netsetup_bridge_create("qvbr-t1", 1400, NETSETUP_ADOPT, &e), 0);
    assert_int_equal(netsetup_link_get("qvbr-t1", &info, &e), 0);
    assert_int_equal(info.mtu, 1400);
    assert_true(info.up);
    assert_int_equal(nstest_read_line("/sys/class/net/qvbr-t1/bridge/stp_state", v, sizeof(v)), 0);
    assert_string_equal(v, "0");
    assert_int_equal(nstest_read_line("/sys/class/net/qvbr-t1/bridge/forward_delay", v, sizeof(v)), 0);
    assert_string_equal(v, "0");

    /* a non-bridge of that name is never adopted */
    assert_int_equal(nstest_run(NULL, "ip", "link", "add", "qvbr-veth", "type", "veth", "peer", "name", "qvbr-peer"), 0);
    assert_int_equal(netsetup_bridge_create("qvbr-veth", 0, NETSETUP_ADOPT, &e), -EEXIST);
    assert_non_null(strstr(e.msg, "veth"));

    assert_int_equal(netsetup_addr_add("qvbr-t1", "10.91.0.1/24", &e), 0);
    assert_int_equal(netsetup_addr_add("qvbr-t1", "10.91.0.1/24", &e), 0);   /* idempotent */
    assert_int_equal(netsetup_addr_add("qvbr-t1", "fd91::1/64", &e), 0);
    assert_int_equal(netsetup_addr_add("qvbr-t1", "fd91::1/64", &e), 0);
    char *out = NULL;
    assert_int_equal(nstest_run(&out, "ip", "addr", "show", "dev", "qvbr-t1"), 0);
    assert_non_null(strstr(out, "inet 10.91.0.1/24 brd 10.91.0.255"));
    assert_non_null(strstr(out, "inet6 fd91::1/64"));
    assert_null(strstr(out, "tentative"));
    free(out);
    assert_int_equal(netsetup_addr_add("qvbr-nope", "10.92.0.1/24", &e), -ENODEV);
    assert_string_equal(e.msg, "qvbr-nope: cannot add address 10.92.0.1/24: No such device");

    assert_int_equal(netsetup_link_set_mtu("qvbr-t1", 9000, &e), 0);
    assert_int_equal(netsetup_link_get("qvbr-t1", &info, &e), 0);
    assert_int_equal(info.mtu, 9000);
    assert_int_equal(netsetup_link_set_mtu("qvbr-t1", 70000, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "qvbr-t1: cannot set MTU 70000"));

    struct strv names = {0};
    assert_int_equal(netsetup_link_list("qvbr-", &names, &e), 0);
    assert_int_equal(names.n, 3);
    assert_string_equal(names.v[0], "qvbr-peer");
    assert_string_equal(names.v[1], "qvbr-t1");
    assert_string_equal(names.v[2], "qvbr-veth");
    strv_free(&names);

    assert_int_equal(netsetup_link_delete("qvbr-t1", &e), 0);
    assert_int_equal(netsetup_link_delete("qvbr-veth", &e), 0);
    assert_false(netsetup_link_exists("qvbr-t1"));
    assert_false(netsetup_link_exists("qvbr-peer"));
    assert_int_equal(netsetup_link_delete("qvbr-t1", &e), -ENODEV);
    assert_string_equal(e.msg, "qvbr-t1: cannot delete: No such device");
    assert_int_equal(netsetup_link_delete("bad name", &e), -EINVAL);
}

static void test_tap(void **state)
{
    (void)state;
    struct qv_err e = {0};
    assert_int_equal(netsetup_bridge_create("qvbr-tap", 1450, 0, &e), 0);
    char tap[NETSETUP_IFNAMSIZ];
    netsetup_tap_name("5d1b3c58-3d6f-4c0e-8e3c-1e4b54f1a001", 0, tap);
    int fd = -1;
    assert_int_equal(netsetup_tap_open(tap, 1, &fd, &e), 0);
    assert_true(fd >= 0);
    struct ifreq ifr = {0};
    assert_int_equal(ioctl(fd, TUNGETIFF, &ifr), 0);
    assert_int_equal(ifr.ifr_flags & (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE),
                     IFF_TAP | IFF_NO_PI | IFF_VNET_HDR);
    assert_false(ifr.ifr_flags & IFF_PERSIST);
    /* a second VM must never attach to a live tap */
    int fd2 = -1;
    assert_int_equal(netsetup_tap_open(tap, 1, &fd2, &e), -EEXIST);
    assert_int_equal(fd2, -1);

    assert_int_equal(netsetup_link_attach(tap, "qvbr-tap", &e), 0);
    struct netsetup_link_info info;
    assert_int_equal(netsetup_link_get(tap, &info, &e), 0);
    assert_string_equal(info.kind, "tun");
    assert_string_equal(info.master, "qvbr-tap");
    assert_int_equal(info.mtu, 1450);
    assert_true(info.up);
    assert_int_equal(netsetup_link_attach(tap, "lo", &e), -EINVAL);
    assert_non_null(strstr(e.msg, "not a bridge"));

    /* the tap is not persistent: closing the last fd (QEMU exiting) removes it */
    close(fd);
    assert_true(nstest_wait_link(tap, false, 2000));

    int fds[4];
    assert_int_equal(netsetup_tap_open(tap, 4, fds, &e), 0);
    for (int i = 0; i < 4; i++) {
        assert_true(fds[i] >= 0);
        struct ifreq q = {0};
        assert_int_equal(ioctl(fds[i], TUNGETIFF, &q), 0);
        assert_true(q.ifr_flags & IFF_MULTI_QUEUE);
    }
    char path[128], v[16];
    snprintf(path, sizeof(path), "/sys/class/net/%s/tun_flags", tap);
    assert_int_equal(nstest_read_line(path, v, sizeof(v)), 0);
    assert_int_equal(netsetup_link_attach(tap, "qvbr-tap", &e), 0);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    assert_true(netsetup_link_exists(tap));     /* one queue still open */
    close(fds[3]);
    assert_true(nstest_wait_link(tap, false, 2000));

    int bad[2] = {-1, -1};
    assert_int_equal(netsetup_tap_open(tap, 0, bad, &e), -EINVAL);
    assert_int_equal(netsetup_tap_open(tap, NETSETUP_MAX_QUEUES + 1, bad, &e), -EINVAL);
    assert_int_equal(netsetup_link_delete("qvbr-tap", &e), 0);
}

static void test_vhost(void **state)
{
    (void)state;
    struct qv_err e = {0};
    int fds[2] = {-1, -1};
    int r = netsetup_vhost_open(2, fds, &e);
    if (access("/dev/vhost-net", F_OK) == 0) {
        assert_int_equal(r, 0);
        close(fds[0]);
        close(fds[1]);
        return;
    }
    assert_int_equal(r, -ENOENT);
    assert_string_equal(e.msg, "vhost-net: /dev/vhost-net: No such file or directory");
    assert_int_equal(fds[0], -1);
    assert_int_equal(fds[1], -1);
}

static void check_macvtap_fds(const int *fds, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        assert_true(fds[i] >= 0);
        struct ifreq q = {0};
        assert_int_equal(ioctl(fds[i], TUNGETIFF, &q), 0);
        assert_true(q.ifr_flags & IFF_VNET_HDR);
    }
}

static void test_macvtap(void **state)
{
    (void)state;
    struct qv_err e = {0};
    /* no dummy driver on this kernel: a veth end is the "host NIC" */
    assert_int_equal(nstest_run(NULL, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1"), 0);
    assert_int_equal(netsetup_link_set_up("uplink0", true, &e), 0);
    static const enum netsetup_macvtap_mode modes[] = {NETSETUP_MACVTAP_BRIDGE, NETSETUP_MACVTAP_VEPA,
                                                       NETSETUP_MACVTAP_PRIVATE, NETSETUP_MACVTAP_PASSTHRU};
    static const char *const mode_names[] = {"bridge", "vepa", "private", "passthru"};
    for (size_t m = 0; m < ARRAY_SIZE(modes); m++) {
        char name[NETSETUP_IFNAMSIZ];
        netsetup_macvtap_name("8b2fb0a4-55ac-4f63-9d65-1c1fd0ad0002", (unsigned)m, name);
        assert_int_equal(netsetup_macvtap_create(name, "uplink0", modes[m], "52:54:00:ab:cd:01", &e), 0);
        struct netsetup_link_info info;
        assert_int_equal(netsetup_link_get(name, &info, &e), 0);
        assert_string_equal(info.kind, "macvtap");
        assert_string_equal(info.mac, "52:54:00:ab:cd:01");
        assert_true(info.up);
        char *out = NULL;
        assert_int_equal(nstest_run(&out, "ip", "-d", "link", "show", name), 0);
        char want[32];
        snprintf(want, sizeof(want), "macvtap mode %s", mode_names[m]);
        assert_non_null(strstr(out, want));
        free(out);
        int fds[2] = {-1, -1};
        assert_int_equal(netsetup_macvtap_open(name, 2, NULL, fds, &e), 0);
        check_macvtap_fds(fds, 2);
        assert_int_equal(netsetup_link_delete(name, &e), 0);
        close(fds[0]);
        close(fds[1]);
        assert_false(netsetup_link_exists(name));
    }
    assert_int_equal(netsetup_macvtap_create("qvm-bad", "nosuchnic", NETSETUP_MACVTAP_BRIDGE, NULL, &e), -ENODEV);
    assert_string_equal(e.msg, "qvm-bad: cannot create macvtap on nosuchnic: No such device");
    assert_int_equal(netsetup_macvtap_create("qvm-bad", "uplink0", NETSETUP_MACVTAP_BRIDGE, "zz", &e), -EINVAL);

    /* /dev/tapN belonging to something else (as with another namespace's macvtap of
     * the same ifindex): the node is made privately from sysfs' major:minor */
    assert_int_equal(netsetup_macvtap_create("qvm-priv", "uplink0", NETSETUP_MACVTAP_BRIDGE, NULL, &e), 0);
    struct netsetup_link_info info;
    assert_int_equal(netsetup_link_get("qvm-priv", &info, &e), 0);
    char devpath[64];
    snprintf(devpath, sizeof(devpath), "/dev/tap%d", info.ifindex);
    /* without a node the private path is taken anyway; never create one in the
     * host's devtmpfs (it is shared with the host despite our mount namespace) */
    bool covered = access(devpath, F_OK) == 0;
    if (covered)
        assert_int_equal(mount("/dev/null", devpath, NULL, MS_BIND, NULL), 0);
    char dir[] = "/tmp/qvtest-macvtap-XXXXXX";
    assert_non_null(mkdtemp(dir));
    int fd = -1;
    assert_int_equal(netsetup_macvtap_open("qvm-priv", 1, dir, &fd, &e), 0);
    check_macvtap_fds(&fd, 1);
    close(fd);
    if (covered)
        assert_int_equal(umount(devpath), 0);
    assert_int_equal(rmdir(dir), 0);   /* empty again: the node was private and is gone */
    assert_int_equal(netsetup_macvtap_open("uplink0", 1, NULL, &fd, &e), -EINVAL);
    assert_non_null(strstr(e.msg, "not a macvtap"));
    assert_int_equal(netsetup_link_delete("qvm-priv", &e), 0);
    assert_int_equal(netsetup_link_delete("uplink0", &e), 0);
}

static void test_forwarding(void **state)
{
    (void)state;
    struct qv_err e = {0};
    /* a new namespace copies the host's forwarding setting: start from off whatever the host has */
    FILE *f = fopen("/proc/sys/net/ipv4/ip_forward", "w");
    assert_non_null(f);
    assert_true(fputs("0\n", f) >= 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(netsetup_bridge_create("qvbr-fwd", 0, 0, &e), 0);
    struct strv changes = {0};
    assert_int_equal(netsetup_forwarding_enable("qvbr-fwd", AF_INET, &changes, &e), 0);
    assert_true(changes.n >= 1);
    assert_string_equal(changes.v[0], "net.ipv4.ip_forward: 0 -> 1");
    for (size_t i = 0; i < changes.n; i++)
        printf("# %s\n", changes.v[i]);
    strv_free(&changes);
    char v[16];
    assert_int_equal(nstest_read_line("/proc/sys/net/ipv4/conf/qvbr-fwd/forwarding", v, sizeof(v)), 0);
    assert_string_equal(v, "1");
    assert_int_equal(netsetup_forwarding_enable("qvbr-fwd", AF_INET, &changes, &e), 0);
    assert_int_equal(changes.n, 0);

    assert_int_equal(netsetup_forwarding_enable("qvbr-fwd", AF_INET6, &changes, &e), 0);
    assert_true(changes.n >= 1);
    assert_string_equal(changes.v[0], "net.ipv6.conf.all.forwarding: 0 -> 1");
    strv_free(&changes);
    assert_int_equal(nstest_read_line("/proc/sys/net/ipv6/conf/qvbr-fwd/forwarding", v, sizeof(v)), 0);
    assert_string_equal(v, "1");
    assert_int_equal(netsetup_forwarding_enable("nope0", AF_INET, &changes, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "/proc/sys/net/ipv4/conf/nope0/forwarding"));
    strv_free(&changes);
    assert_int_equal(netsetup_link_delete("qvbr-fwd", &e), 0);
}

static void test_overlap(void **state)
{
    (void)state;
    struct qv_err e = {0};
    assert_int_equal(nstest_run(NULL, "ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "link", "set", "eth9", "up"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "link", "set", "eth9p", "up"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "addr", "add", "192.168.50.7/24", "dev", "eth9"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "route", "add", "10.77.0.0/16", "via", "192.168.50.1"), 0);
    assert_int_equal(nstest_run(NULL, "ip", "route", "add", "default", "via", "192.168.50.1"), 0);

    assert_int_equal(netsetup_subnet_check_host("10.77.0.1/24", NULL, &e), -EADDRINUSE);
    assert_string_equal(e.msg, "10.77.0.0/24 overlaps route 10.77.0.0/16 on eth9");
    assert_int_equal(netsetup_subnet_check_host("192.168.0.0/16", NULL, &e), -EADDRINUSE);
    assert_string_equal(e.msg, "192.168.0.0/16 overlaps address 192.168.50.7/24 on eth9");
    assert_int_equal(netsetup_subnet_check_host("10.78.0.1/24", NULL, &e), 0);     /* default route skipped */
    assert_int_equal(netsetup_subnet_check_host("192.168.50.1/24", "eth9", &e), 0);
    assert_int_equal(netsetup_subnet_check_host("fd00:1::1/64", NULL, &e), 0);
    assert_int_equal(nstest_run(NULL, "ip", "addr", "add", "fd00:1::5/48", "dev", "eth9", "nodad"), 0);
    assert_int_equal(netsetup_subnet_check_host("fd00:1:0:7::1/64", NULL, &e), -EADDRINUSE);
    assert_non_null(strstr(e.msg, "fd00:1:0:7::/64 overlaps"));
    assert_int_equal(netsetup_subnet_check_host("nonsense", NULL, &e), -EINVAL);
    assert_int_equal(netsetup_link_delete("eth9", &e), 0);
}

/* Runs in a fresh image of this binary (test_missing_libraries): what netsetup says
 * when its libraries cannot be loaded. */
static int probe_missing_libraries(void)
{
    struct qv_err e = {0};
    struct netsetup_link_info info;
    printf("%d %s\n", netsetup_link_get("lo", &info, &e), e.msg);
    struct netsetup_nft *nft = NULL;
    printf("%d %s\n", netsetup_nft_open(&nft, &e), e.msg);
    netsetup_nft_close(nft);
    return 0;
}

/* The file this process mapped for a library whose name starts with `soname`. */
static void mapped_path(const char *soname, char *out, size_t len)
{
    FILE *f = fopen("/proc/self/maps", "r");
    assert_non_null(f);
    char line[1024];
    out[0] = '\0';
    while (!out[0] && fgets(line, sizeof(line), f)) {
        char *path = strchr(line, '/');
        if (path && strstr(path, soname)) {
            path[strcspn(path, "\n")] = '\0';
            snprintf(out, len, "%s", path);
        }
    }
    fclose(f);
    assert_true(out[0] != '\0');
}

/* qvisor loads libnl and libnftables on first use: when one is missing, the error
 * names it and the Debian package to install. Hidden here by mounting /dev/null over
 * the files (in this test's own mount namespace), for a fresh image of this binary. */
static void test_missing_libraries(void **state)
{
    (void)state;
    struct qv_err e = {0};
    struct netsetup_nft *nft = NULL;
    assert_int_equal(netsetup_nft_open(&nft, &e), 0);   /* mapped now, so its file can be found */
    netsetup_nft_close(nft);
    char route[PATH_MAX], nftables[PATH_MAX];
    mapped_path("libnl-route-3.so.200", route, sizeof(route));
    mapped_path("libnftables.so.1", nftables, sizeof(nftables));
    assert_int_equal(mount("/dev/null", route, NULL, MS_BIND, NULL), 0);
    assert_int_equal(mount("/dev/null", nftables, NULL, MS_BIND, NULL), 0);
    char *out = NULL;
    int r = nstest_capture((const char *const[]){"/proc/self/exe", "--probe-missing-libraries", NULL}, &out);
    umount(route);
    umount(nftables);
    printf("# %s", out);
    assert_int_equal(r, 0);
    char want[256];
    snprintf(want, sizeof(want), "%d cannot load libnl-route-3.so.200, which qvisor needs for bridges", -ENOPKG);
    assert_non_null(strstr(out, want));
    assert_non_null(strstr(out, "install the Debian package libnl-route-3-200\n"));
    snprintf(want, sizeof(want), "%d cannot load libnftables.so.1, which qvisor needs for its nftables", -ENOPKG);
    assert_non_null(strstr(out, want));
    assert_non_null(strstr(out, "install the Debian package libnftables1\n"));
    free(out);
    /* the libraries this process loaded before are untouched */
    assert_true(netsetup_link_exists("lo"));
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--probe-missing-libraries") == 0)
        return probe_missing_libraries();
    nstest_enter(400);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_cidr),
        cmocka_unit_test(test_bridge),
        cmocka_unit_test(test_tap),
        cmocka_unit_test(test_vhost),
        cmocka_unit_test(test_macvtap),
        cmocka_unit_test(test_forwarding),
        cmocka_unit_test(test_overlap),
        cmocka_unit_test(test_missing_libraries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
