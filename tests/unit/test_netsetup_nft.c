/* netsetup nftables: network rulesets per mode, per-NIC filters as set elements,
 * removal by name after a crash or from another context, coexistence with a host
 * table, and 200 taps at flat cost. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "tests/unit/netsetup_testlib.h"

static struct netsetup_nft *nft;

/* The items of a listing, and the i-th one's object when it is a `kind` ("rule",
 * "set"; NULL otherwise). */
static size_t items(json_object *doc)
{
    json_object *arr = NULL;
    return doc && json_object_object_get_ex(doc, "nftables", &arr) ? json_object_array_length(arr) : 0;
}

static json_object *item(json_object *doc, size_t i, const char *kind)
{
    json_object *arr = NULL, *o = NULL;
    json_object_object_get_ex(doc, "nftables", &arr);
    return json_object_object_get_ex(json_object_array_get_idx(arr, i), kind, &o) ? o : NULL;
}

static size_t count_rules(json_object *doc, const char *chain)
{
    size_t n = 0;
    for (size_t i = 0; i < items(doc); i++) {
        json_object *rule = item(doc, i, "rule"), *c = NULL;
        n += rule && json_object_object_get_ex(rule, "chain", &c) && strcmp(json_object_get_string(c), chain) == 0;
    }
    return n;
}

/* Set elements in a listing whose key starts with `tap` (NULL: every element). */
static size_t tap_elements(json_object *doc, const char *tap)
{
    size_t n = 0;
    for (size_t i = 0; i < items(doc); i++) {
        json_object *set = item(doc, i, "set"), *elems = NULL;
        for (size_t j = 0; set && json_object_object_get_ex(set, "elem", &elems) && j < json_object_array_length(elems); j++) {
            json_object *el = json_object_array_get_idx(elems, j), *parts = NULL;
            if (json_object_object_get_ex(el, "concat", &parts))
                el = json_object_array_get_idx(parts, 0);
            n += !tap || strcmp(json_object_get_string(el), tap) == 0;
        }
    }
    return n;
}

static char *list_text(const char *family, const char *table)
{
    char *out = NULL;
    int r = nstest_run(&out, "nft", "list", "table", family, table);
    assert_int_equal(r, 0);
    return out;
}

static const struct netsetup_forward fwd[] = {
    {IPPROTO_TCP, 8080, "10.60.0.10", 80},
    {IPPROTO_UDP, 5353, "10.60.0.11", 53},
};

static void test_modes(void **state)
{
    (void)state;
    struct qv_err e = {0};
    for (int mode = NETSETUP_NAT; mode <= NETSETUP_ROUTED; mode++) {
        struct netsetup_net net = {
            .name = "modes", .bridge = "qvbr-modes", .mode = mode,
            .ipv4 = "10.60.0.1/24", .ipv6 = "fd60::1/64",
            .forwards = mode == NETSETUP_ISOLATED ? NULL : fwd,
            .nforwards = mode == NETSETUP_ISOLATED ? 0 : ARRAY_SIZE(fwd),
        };
        /* twice: the second replaces the first atomically */
        assert_int_equal(netsetup_nft_net_apply(nft, &net, &e), 0);
        assert_int_equal(netsetup_nft_net_apply(nft, &net, &e), 0);
        json_object *doc = nstest_nft_json("table", "inet", "qvisor-modes");
        assert_non_null(doc);
        assert_int_equal(nstest_count(doc, "chain", "forward"), 1);
        assert_int_equal(nstest_count(doc, "chain", "input"), 1);
        assert_int_equal(nstest_count(doc, "chain", "postrouting_mangle"), 1);
        assert_int_equal(nstest_count(doc, "chain", "prerouting_nat"), mode == NETSETUP_ISOLATED ? 0 : 1);
        assert_int_equal(nstest_count(doc, "chain", "postrouting_nat"), mode == NETSETUP_ISOLATED ? 0 : 1);
        assert_int_equal(count_rules(doc, "prerouting_nat"), mode == NETSETUP_ISOLATED ? 0 : 2);
        json_object_put(doc);
        char *text = list_text("inet", "qvisor-modes");
        printf("# mode %s:\n", netsetup_net_mode_names[mode]);
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
            printf("#   %s\n", line);
        free(text);
        text = list_text("inet", "qvisor-modes");
        assert_non_null(strstr(text, "udp checksum set 0"));
        assert_true((strstr(text, "ip saddr 10.60.0.0/24 ip daddr != { 10.60.0.0/24, 224.0.0.0/24, "
                                  "255.255.255.255 } masquerade") != NULL) == (mode == NETSETUP_NAT));
        assert_true((strstr(text, "dnat ip to 10.60.0.10:80") != NULL) == (mode != NETSETUP_ISOLATED));
        assert_true((strstr(text, "iifname \"qvbr-modes\" reject") != NULL));
        free(text);
        doc = nstest_nft_json("table", "bridge", "qvisor-modes");
        /* the NICs' filters are elements of these: nothing per NIC but elements */
        assert_int_equal(nstest_count(doc, "map", NULL), 0);
        assert_int_equal(nstest_count(doc, "set", NULL), 28);
        assert_int_equal(nstest_count(doc, "chain", NULL), 4);
        assert_int_equal(count_rules(doc, "from_guest"), 20);
        assert_int_equal(count_rules(doc, "to_guest"), 20);
        json_object_put(doc);
    }
    struct strv nets = {0};
    assert_int_equal(netsetup_nft_net_list(nft, &nets, &e), 0);
    assert_int_equal(nets.n, 1);
    assert_string_equal(nets.v[0], "modes");
    strv_free(&nets);
    assert_int_equal(netsetup_nft_net_remove(nft, "modes", &e), 0);
    assert_int_equal(netsetup_nft_net_remove(nft, "modes", &e), 0);   /* absent is fine */
    assert_false(nstest_ruleset_mentions("qvisor"));
    assert_int_equal(netsetup_nft_net_list(nft, &nets, &e), 0);
    assert_int_equal(nets.n, 0);
}

static void test_invalid(void **state)
{
    (void)state;
    struct qv_err e = {0};
    struct netsetup_net net = {.name = "bad", .bridge = "qvbr-bad", .mode = NETSETUP_ISOLATED,
                               .ipv4 = "10.61.0.1/24", .forwards = fwd, .nforwards = 1};
    assert_int_equal(netsetup_nft_net_apply(nft, &net, &e), -EINVAL);
    assert_string_equal(e.msg, "bad: port forwards need mode nat or routed, not isolated");
    net.mode = NETSETUP_NAT;
    assert_int_equal(netsetup_nft_net_apply(nft, &net, &e), -EINVAL);
    assert_string_equal(e.msg, "bad: forwards[0]: guest 10.60.0.10 is not an IPv4 address inside 10.61.0.0/24");
    net.nforwards = 0;
    net.name = "bad name";
    assert_int_equal(netsetup_nft_net_apply(nft, &net, &e), -EINVAL);
    net.name = "bad";
    net.bridge = "br;flush ruleset";
    assert_int_equal(netsetup_nft_net_apply(nft, &net, &e), -EINVAL);
    net.bridge = "qvbr-bad";
    net.ipv4 = "fd00::1/64";
    assert_int_equal(netsetup_nft_net_apply(nft, &net, &e), -EINVAL);
    assert_false(nstest_ruleset_mentions("qvisor"));
    /* nft's own words reach the caller */
    assert_int_equal(netsetup_nft_run(nft, "probe", "add rule inet nosuchtable c accept\n", &e), -ENOENT);
    assert_non_null(strstr(e.msg, "probe: nft: "));
    assert_non_null(strstr(e.msg, "No such file or directory"));
    printf("# %s\n", e.msg);
}

static const struct netsetup_port allow_in[] = {{.proto = IPPROTO_TCP, .lo = 22, .hi = 0}, {.proto = IPPROTO_TCP, .lo = 8000, .hi = 8100}, {.proto = IPPROTO_UDP, .lo = 53, .hi = 0}};
static const struct netsetup_port deny_out[] = {{.proto = IPPROTO_TCP, .lo = 25, .hi = 0}, {.proto = IPPROTO_ICMP}};

static void apply_test_net(const char *name, struct qv_err *e)
{
    struct netsetup_net net = {.name = name, .bridge = "qvbr-f", .mode = NETSETUP_NAT, .ipv4 = "10.62.0.1/24"};
    assert_int_equal(netsetup_nft_net_apply(nft, &net, e), 0);
}

/* Whether the listing has element KEY ("\"qvt-a\" . tcp . 25") in set SET. */
static bool has_elem(const char *text, const char *set, const char *key)
{
    char head[64];
    snprintf(head, sizeof(head), "set %s {", set);
    const char *p = strstr(text, head);
    const char *end = p ? strstr(p, "}\n") : NULL;
    const char *k = p ? strstr(p, key) : NULL;
    return k && k < end;
}

static void test_nic_filter(void **state)
{
    (void)state;
    struct qv_err e = {0};
    apply_test_net("filt", &e);
    const char *ips[] = {"10.62.0.5", "10.62.0.6", NULL};
    struct netsetup_nic_filter f = {
        .mac = "52:54:00:00:62:05", .ipv4 = ips, .restrict_in = true,
        .allow_in = allow_in, .nallow_in = ARRAY_SIZE(allow_in),
        .deny_out = deny_out, .ndeny_out = ARRAY_SIZE(deny_out),
    };
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-a", &f, &e), 0);
    json_object *doc = nstest_nft_json("table", "bridge", "qvisor-filt");
    /* out_taps, mac, 2 addresses, deny tcp 25, deny echo (ICMP and ICMPv6), in_taps,
     * allow tcp 22, udp 53 and 8000-8100: 6 blocks of 16 (8000-8095) and 5 single ports */
    size_t elems = tap_elements(doc, "qvt-a");
    assert_int_equal(elems, 21);
    assert_int_equal(nstest_elements(doc, "set", "allow_in_16"), 6);
    assert_int_equal(nstest_elements(doc, "set", "allow_in"), 7);
    /* and not one chain or rule more */
    assert_int_equal(nstest_count(doc, "chain", NULL), 4);
    assert_int_equal(count_rules(doc, "from_guest") + count_rules(doc, "to_guest"), 40);
    json_object_put(doc);
    char *text = list_text("bridge", "qvisor-filt");
    printf("# bridge table with one filtered NIC:\n");
    for (char *p = text, *nl; p && *p; p = nl ? nl + 1 : NULL) {
        nl = strchr(p, '\n');
        printf("#   %.*s\n", nl ? (int)(nl - p) : (int)strlen(p), p);
    }
    assert_true(has_elem(text, "tap_mac", "\"qvt-a\" . 52:54:00:00:62:05"));
    assert_true(has_elem(text, "deny_out", "\"qvt-a\" . tcp . 25"));
    assert_true(has_elem(text, "allow_in_16", "\"qvt-a\" . tcp . 8080"));
    assert_true(has_elem(text, "allow_in", "\"qvt-a\" . tcp . 8100"));
    assert_false(has_elem(text, "allow_in", "\"qvt-a\" . tcp . 8101"));
    free(text);

    /* a lease learnt: the same call with the address replaces the tap's elements */
    const char *one[] = {"10.62.0.7", NULL};
    f.ipv4 = one;
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-a", &f, &e), 0);
    doc = nstest_nft_json("table", "bridge", "qvisor-filt");
    assert_int_equal(tap_elements(doc, "qvt-a"), elems - 1);
    json_object_put(doc);
    text = list_text("bridge", "qvisor-filt");
    assert_true(has_elem(text, "tap_ipv4", "\"qvt-a\" . 10.62.0.7"));
    assert_null(strstr(text, "10.62.0.5"));
    free(text);
    const char *bad[] = {"10.62.0.300", NULL};
    f.ipv4 = bad;
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-a", &f, &e), -EINVAL);
    assert_string_equal(e.msg, "qvt-a: \"10.62.0.300\" is not an IPv4 address");
    f.ipv4 = ips;

    /* re-applying replaces, it never duplicates; dropping restrict_in drops in_taps */
    f.restrict_in = false;
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-a", &f, &e), 0);
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-a", &f, &e), 0);
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-b", &f, &e), 0);
    doc = nstest_nft_json("table", "bridge", "qvisor-filt");
    assert_int_equal(tap_elements(doc, "qvt-a"), 7);
    assert_int_equal(tap_elements(doc, "qvt-b"), 7);
    assert_int_equal(nstest_elements(doc, "set", "in_taps"), 0);
    assert_int_equal(nstest_elements(doc, "set", "out_taps"), 2);
    json_object_put(doc);
    struct strv taps = {0};
    assert_int_equal(netsetup_nft_nic_list(nft, "filt", &taps, &e), 0);
    assert_int_equal(taps.n, 2);
    assert_string_equal(taps.v[0], "qvt-a");
    assert_string_equal(taps.v[1], "qvt-b");
    strv_free(&taps);

    /* the network's rules can be rewritten under running NICs */
    apply_test_net("filt", &e);
    assert_int_equal(netsetup_nft_nic_list(nft, "filt", &taps, &e), 0);
    assert_int_equal(taps.n, 2);
    strv_free(&taps);

    /* Another context (a restarted supervisor) knows nothing of qvt-a's elements: it
     * replaces them all the same, and the first context, whose knowledge is now
     * stale, still replaces what is there. */
    struct netsetup_nft *other = NULL;
    assert_int_equal(netsetup_nft_open(&other, &e), 0);
    f.ipv4 = one;
    assert_int_equal(netsetup_nft_nic_apply(other, "filt", "qvt-a", &f, &e), 0);
    text = list_text("bridge", "qvisor-filt");
    assert_false(has_elem(text, "tap_ipv4", "\"qvt-a\" . 10.62.0.5"));
    assert_true(has_elem(text, "tap_ipv4", "\"qvt-a\" . 10.62.0.7"));
    free(text);
    f.ipv4 = ips;
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-a", &f, &e), 0);
    text = list_text("bridge", "qvisor-filt");
    assert_null(strstr(text, "10.62.0.7"));
    assert_true(has_elem(text, "tap_ipv4", "\"qvt-a\" . 10.62.0.5"));
    free(text);
    assert_int_equal(netsetup_nft_nic_remove(other, "filt", "qvt-b", &e), 0);
    netsetup_nft_close(other);
    doc = nstest_nft_json("table", "bridge", "qvisor-filt");
    assert_int_equal(tap_elements(doc, "qvt-b"), 0);
    assert_int_equal(tap_elements(doc, "qvt-a"), 7);
    json_object_put(doc);
    /* nft knew it had qvt-b: the remove finds it gone and is content */
    assert_int_equal(netsetup_nft_nic_remove(nft, "filt", "qvt-b", &e), 0);
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-b", &f, &e), 0);

    f.restrict_in = true;
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-a", &f, &e), 0);
    assert_int_equal(netsetup_nft_nic_remove(nft, "filt", "qvt-a", &e), 0);
    assert_int_equal(netsetup_nft_nic_remove(nft, "filt", "qvt-a", &e), 0);
    doc = nstest_nft_json("table", "bridge", "qvisor-filt");
    assert_int_equal(tap_elements(doc, "qvt-a"), 0);
    assert_int_equal(tap_elements(doc, NULL), 7);
    assert_int_equal(nstest_elements(doc, "set", "out_taps"), 1);
    assert_int_equal(nstest_elements(doc, "set", "in_taps"), 0);
    json_object_put(doc);

    /* the widest range: 15 single ports, 15 blocks each of 16, 256 and 4096 */
    struct netsetup_port all[] = {{.proto = IPPROTO_UDP, .lo = 1, .hi = 65535}};
    struct netsetup_nic_filter wide = {.mac = "52:54:00:00:62:05", .deny_out = all, .ndeny_out = 1};
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-w", &wide, &e), 0);
    doc = nstest_nft_json("table", "bridge", "qvisor-filt");
    assert_int_equal(tap_elements(doc, "qvt-w"), 2 + 60);
    assert_int_equal(nstest_elements(doc, "set", "deny_out_4096"), 15);
    json_object_put(doc);
    assert_int_equal(netsetup_nft_nic_remove(nft, "filt", "qvt-w", &e), 0);

    struct netsetup_nic_filter bad_mac = {.mac = "52:54:00:00:62"};
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-c", &bad_mac, &e), -EINVAL);
    struct netsetup_port badport[] = {{.proto = IPPROTO_TCP, .lo = 90, .hi = 80}};
    struct netsetup_nic_filter bad_port = {.mac = "52:54:00:00:62:05", .deny_out = badport, .ndeny_out = 1};
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-c", &bad_port, &e), -EINVAL);
    assert_string_equal(e.msg, "qvt-c: deny_out[0]: bad port range 90-80");

    assert_int_equal(netsetup_nft_net_remove(nft, "filt", &e), 0);
    /* with the network gone its filters went too; removal still succeeds */
    assert_int_equal(netsetup_nft_nic_remove(nft, "filt", "qvt-b", &e), 0);
    assert_int_equal(netsetup_nft_nic_apply(nft, "filt", "qvt-b", &f, &e), -ENOENT);
    assert_string_equal(e.msg, "filt: qvt-b: cannot apply filter: network filt is not running (no table bridge qvisor-filt)");
    assert_false(nstest_ruleset_mentions("qvisor"));
}

/* What a supervisor leaves when it is killed: rules and filters, and nobody to
 * remove them but a stranger who knows only the names. */
static int crashing_owner(void *arg)
{
    (void)arg;
    struct qv_err e = {0};
    struct netsetup_nft *n = NULL;
    if (netsetup_nft_open(&n, &e) < 0)
        return 1;
    struct netsetup_net net = {.name = "crash", .bridge = "qvbr-crash", .mode = NETSETUP_ROUTED,
                               .ipv4 = "10.63.0.1/24", .ipv6 = "fd63::1/64"};
    if (netsetup_nft_net_apply(n, &net, &e) < 0)
        return 2;
    const char *ips[] = {"10.63.0.9", NULL};
    struct netsetup_nic_filter f = {.mac = "52:54:00:00:63:09", .ipv4 = ips};
    static const char *const taps[] = {"qvt-c1", "qvt-c2", "qvt-c3"};
    for (size_t i = 0; i < ARRAY_SIZE(taps); i++)
        if (netsetup_nft_nic_apply(n, "crash", taps[i], &f, &e) < 0)
            return 3;
    raise(SIGKILL);
    return 4;
}

/* Rules with an ICMP type or addresses: elements of the direction's type and interval
 * sets, read back and replaced by a context that did not write them (the listing's
 * prefixes and ranges), and refused when they are not rules nft can hold. */
static void test_filter_rules(void **state)
{
    (void)state;
    struct qv_err e = {0};
    apply_test_net("rules", &e);
    static const struct netsetup_port in[] = {
        {.proto = IPPROTO_ICMP, .typed = true, .type = 13},
        {.proto = IPPROTO_ICMPV6, .typed = true, .type = 135},
        {.proto = 0, .source = "10.62.0.0/25"},
        {.proto = IPPROTO_TCP, .lo = 8000, .hi = 8100, .source = "fd00:62::/64"},
        {.proto = IPPROTO_ICMP, .typed = true, .type = 8, .source = "10.62.0.128/26", .destination = "10.62.0.7"},
    };
    static const struct netsetup_port out[] = {
        {.proto = 0, .destination = "192.0.2.0/24"},
        {.proto = IPPROTO_UDP, .lo = 53, .destination = "2001:db8::/32"},
        {.proto = IPPROTO_ICMPV6, .destination = "fd00::/8"},
        {.proto = IPPROTO_ICMP, .source = "10.62.0.5"},
    };
    struct netsetup_nic_filter f = {.mac = "52:54:00:00:62:09", .restrict_in = true, .allow_in = in,
                                    .nallow_in = ARRAY_SIZE(in), .deny_out = out, .ndeny_out = ARRAY_SIZE(out)};
    assert_int_equal(netsetup_nft_nic_apply(nft, "rules", "qvt-r", &f, &e), 0);
    char *text = list_text("bridge", "qvisor-rules");
    printf("# a filter with ICMP types and addresses, its sets' lines:\n");
    for (char *p = text, *nl; p && *p; p = nl ? nl + 1 : NULL) {
        nl = strchr(p, '\n');
        int len = nl ? (int)(nl - p) : (int)strlen(p);
        if (memmem(p, (size_t)len, "qvt-r", 5) || memmem(p, (size_t)len, "set ", 4))
            printf("#   %.*s\n", len, p);
    }
    assert_true(has_elem(text, "allow_in_icmp", "\"qvt-r\" . timestamp-request"));
    assert_true(has_elem(text, "allow_in_icmpv6", "\"qvt-r\" . nd-neighbor-solicit"));
    assert_true(has_elem(text, "allow_in_net4", "\"qvt-r\" . 10.62.0.0/25 . 0.0.0.0/0"));
    assert_true(has_elem(text, "allow_in_net6_port", "\"qvt-r\" . fd00:62::/64 . ::/0 . tcp . 8000-8100"));
    assert_true(has_elem(text, "allow_in_net4_icmp", "\"qvt-r\" . 10.62.0.128/26 . 10.62.0.7 . echo-request"));
    assert_true(has_elem(text, "deny_out_net4", "\"qvt-r\" . 0.0.0.0/0 . 192.0.2.0/24"));
    assert_true(has_elem(text, "deny_out_net6_port", "\"qvt-r\" . ::/0 . 2001:db8::/32 . udp . 53"));
    assert_true(has_elem(text, "deny_out_net6_icmp", "\"qvt-r\" . ::/0 . fd00::/8 . echo-request"));
    assert_true(has_elem(text, "deny_out_net4_icmp", "\"qvt-r\" . 10.62.0.5 . 0.0.0.0/0 . echo-request"));
    free(text);
    json_object *doc = nstest_nft_json("table", "bridge", "qvisor-rules");
    /* out_taps, mac, in_taps and one element a rule */
    assert_int_equal(tap_elements(doc, "qvt-r"), 3 + ARRAY_SIZE(in) + ARRAY_SIZE(out));
    json_object_put(doc);

    /* another context (a restarted supervisor) reads them back and replaces them */
    struct netsetup_nft *other = NULL;
    assert_int_equal(netsetup_nft_open(&other, &e), 0);
    struct netsetup_nic_filter plain = {.mac = "52:54:00:00:62:09"};
    assert_int_equal(netsetup_nft_nic_apply(other, "rules", "qvt-r", &plain, &e), 0);
    doc = nstest_nft_json("table", "bridge", "qvisor-rules");
    assert_int_equal(tap_elements(doc, "qvt-r"), 2);
    json_object_put(doc);
    assert_int_equal(netsetup_nft_nic_apply(other, "rules", "qvt-r", &f, &e), 0);
    netsetup_nft_close(other);
    assert_int_equal(netsetup_nft_nic_remove(nft, "rules", "qvt-r", &e), 0);
    doc = nstest_nft_json("table", "bridge", "qvisor-rules");
    assert_int_equal(tap_elements(doc, NULL), 0);
    json_object_put(doc);

    /* what nft could not take is refused before it is asked */
    static const struct {
        struct netsetup_port rule[2];
        const char *msg;
    } bad[] = {
        {{{.proto = 0}}, "qvt-r: deny_out[0]: a rule for any protocol needs a source or destination"},
        {{{.proto = 0, .destination = "10.0.0.1/8"}},
         "qvt-r: deny_out[0]: \"10.0.0.1/8\" has bits set past its /8 prefix (the network is 10.0.0.0/8)"},
        {{{.proto = 0, .destination = "10.0.0.0/8 } ; flush ruleset"}},
         "qvt-r: deny_out[0]: \"10.0.0.0/8 } ; flush ruleset\" is not an address or a prefix like \"10.1.0.0/16\" or \"fd00::/64\""},
        {{{.proto = 0, .source = "10.0.0.0/8", .destination = "fd00::/8"}},
         "qvt-r: deny_out[0]: source and destination are of two families"},
        {{{.proto = IPPROTO_ICMPV6, .destination = "10.0.0.0/8"}}, "qvt-r: deny_out[0]: icmpv6 with IPv4 addresses"},
        {{{.proto = IPPROTO_TCP, .lo = 80, .hi = 90, .destination = "10.0.0.0/8"},
          {.proto = IPPROTO_TCP, .lo = 85, .destination = "10.1.0.0/16"}},
         "qvt-r: deny_out[1] overlaps deny_out[0] (an interval set holds no two entries that overlap)"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct netsetup_nic_filter b = {.mac = "52:54:00:00:62:09", .deny_out = bad[i].rule,
                                        .ndeny_out = bad[i].rule[1].proto ? 2 : 1};
        assert_int_equal(netsetup_nft_nic_apply(nft, "rules", "qvt-r", &b, &e), -EINVAL);
        assert_string_equal(e.msg, bad[i].msg);
    }
    /* not overlapping: another port, another family, another direction's set */
    static const struct netsetup_port ok[] = {
        {.proto = IPPROTO_TCP, .lo = 80, .hi = 90, .destination = "10.0.0.0/8"},
        {.proto = IPPROTO_TCP, .lo = 91, .destination = "10.1.0.0/16"},
        {.proto = IPPROTO_UDP, .lo = 85, .destination = "10.1.0.0/16"},
        {.proto = 0, .destination = "10.1.0.0/16"},
    };
    for (size_t i = 1; i < ARRAY_SIZE(ok); i++)
        assert_false(netsetup_port_clash(&ok[0], &ok[i]));
    struct netsetup_nic_filter good = {.mac = "52:54:00:00:62:09", .deny_out = ok, .ndeny_out = ARRAY_SIZE(ok)};
    assert_int_equal(netsetup_nft_nic_apply(nft, "rules", "qvt-r", &good, &e), 0);
    assert_int_equal(netsetup_nft_net_remove(nft, "rules", &e), 0);
    assert_false(nstest_ruleset_mentions("qvisor"));
}

static void test_crash_recovery(void **state)
{
    (void)state;
    struct qv_err e = {0};
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(crashing_owner(NULL));
    assert_int_equal(nstest_wait(pid, 20000), 128 + SIGKILL);

    struct strv nets = {0}, taps = {0};
    assert_int_equal(netsetup_nft_net_list(nft, &nets, &e), 0);
    assert_int_equal(nets.n, 1);
    assert_string_equal(nets.v[0], "crash");
    strv_free(&nets);
    assert_int_equal(netsetup_nft_nic_list(nft, "crash", &taps, &e), 0);
    assert_int_equal(taps.n, 3);
    strv_free(&taps);
    /* half-removed by hand: the dispatching element gone, the others still there; the
     * listing still names the tap, so that net gc finds it */
    assert_int_equal(nstest_run(NULL, "nft", "delete", "element", "bridge", "qvisor-crash", "out_taps", "{ \"qvt-c2\" }"), 0);
    assert_int_equal(netsetup_nft_nic_list(nft, "crash", &taps, &e), 0);
    assert_int_equal(taps.n, 3);
    strv_free(&taps);
    assert_int_equal(netsetup_nft_nic_remove(nft, "crash", "qvt-c2", &e), 0);
    assert_int_equal(netsetup_nft_nic_remove(nft, "crash", "qvt-c1", &e), 0);
    json_object *doc = nstest_nft_json("table", "bridge", "qvisor-crash");
    /* exactly qvt-c3's elements are left: its name, MAC and address */
    assert_int_equal(tap_elements(doc, "qvt-c3"), 3);
    assert_int_equal(tap_elements(doc, NULL), 3);
    json_object_put(doc);
    assert_int_equal(netsetup_nft_net_remove(nft, "crash", &e), 0);
    assert_false(nstest_ruleset_mentions("qvisor"));
}

static const char host_table[] =
    "table inet filter {\n"
    "  set trusted { type ipv4_addr; elements = { 192.0.2.1, 192.0.2.2 } }\n"
    "  chain input { type filter hook input priority filter; policy accept;\n"
    "    ct state established,related accept\n    tcp dport 22 accept\n    ip saddr @trusted accept\n  }\n"
    "  chain forward { type filter hook forward priority filter; policy drop;\n"
    "    ct state established,related accept\n    iifname \"eth0\" oifname \"docker0\" accept\n  }\n"
    "  chain output { type filter hook output priority filter; policy accept; counter; }\n"
    "}\n";

static void test_coexistence(void **state)
{
    (void)state;
    struct qv_err e = {0};
    char path[] = "/tmp/qvtest-host-table-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    int wr = write_all(fd, host_table, strlen(host_table));
    close(fd);
    int loaded = nstest_run(NULL, "nft", "-f", path);
    unlink(path);
    assert_int_equal(wr, 0);
    assert_int_equal(loaded, 0);
    char *before = NULL, *after = NULL;
    assert_int_equal(nstest_run(&before, "nft", "-j", "list", "table", "inet", "filter"), 0);

    for (int round = 0; round < 2; round++) {
        struct netsetup_net a = {.name = "co-a", .bridge = "qvbr-co-a", .mode = NETSETUP_NAT, .ipv4 = "10.64.0.1/24",
                                 .forwards = (struct netsetup_forward[]){{IPPROTO_TCP, 2222, "10.64.0.2", 22}},
                                 .nforwards = 1};
        struct netsetup_net b = {.name = "co-b", .bridge = "qvbr-co-b", .mode = NETSETUP_ISOLATED,
                                 .ipv4 = "10.65.0.1/24", .ipv6 = "fd65::1/64"};
        assert_int_equal(netsetup_nft_net_apply(nft, &a, &e), 0);
        assert_int_equal(netsetup_nft_net_apply(nft, &b, &e), 0);
        struct netsetup_nic_filter f = {.mac = "52:54:00:00:64:02", .restrict_in = true,
                                        .allow_in = allow_in, .nallow_in = 1};
        assert_int_equal(netsetup_nft_nic_apply(nft, "co-a", "qvt-co1", &f, &e), 0);
        assert_int_equal(netsetup_nft_nic_apply(nft, "co-b", "qvt-co2", &f, &e), 0);
        assert_int_equal(netsetup_nft_nic_remove(nft, "co-a", "qvt-co1", &e), 0);
        assert_int_equal(netsetup_nft_net_remove(nft, "co-a", &e), 0);
        assert_int_equal(netsetup_nft_net_remove(nft, "co-b", &e), 0);
    }
    assert_int_equal(nstest_run(&after, "nft", "-j", "list", "table", "inet", "filter"), 0);
    assert_string_equal(before, after);
    free(before);
    free(after);
    assert_false(nstest_ruleset_mentions("qvisor"));
    assert_int_equal(nstest_run(NULL, "nft", "delete", "table", "inet", "filter"), 0);
}

static void test_net_up_down(void **state)
{
    (void)state;
    struct qv_err e = {0};
    struct netsetup_net net = {.name = "updown", .bridge = "qvbr-updown", .mode = NETSETUP_NAT, .mtu = 1400,
                               .ipv4 = "10.66.0.1/24", .ipv6 = "fd66::1/64"};
    struct strv log = {0};
    assert_int_equal(netsetup_net_up(nft, &net, &log, &e), 0);
    for (size_t i = 0; i < log.n; i++)
        printf("# net up: %s\n", log.v[i]);
    assert_string_equal(log.v[0], "created bridge qvbr-updown");
    strv_free(&log);
    struct netsetup_link_info info;
    assert_int_equal(netsetup_link_get("qvbr-updown", &info, &e), 0);
    assert_int_equal(info.mtu, 1400);
    char *out = NULL;
    assert_int_equal(nstest_run(&out, "ip", "addr", "show", "dev", "qvbr-updown"), 0);
    assert_non_null(strstr(out, "10.66.0.1/24"));
    assert_non_null(strstr(out, "fd66::1/64"));
    free(out);
    /* a restarted supervisor takes over what is there */
    assert_int_equal(netsetup_net_up(nft, &net, &log, &e), 0);
    assert_string_equal(log.v[0], "reconfigured existing bridge qvbr-updown");
    strv_free(&log);
    assert_int_equal(netsetup_net_down(nft, "updown", "qvbr-updown", &e), 0);
    assert_false(netsetup_link_exists("qvbr-updown"));
    assert_int_equal(netsetup_net_down(nft, "updown", "qvbr-updown", &e), 0);
    assert_false(nstest_ruleset_mentions("qvisor"));
}

static void test_plug_unplug(void **state)
{
    (void)state;
    struct qv_err e = {0};
    struct netsetup_net net = {.name = "plug", .bridge = "qvbr-plug", .mode = NETSETUP_NAT, .mtu = 1420,
                               .ipv4 = "10.68.0.1/24"};
    assert_int_equal(netsetup_net_up(nft, &net, NULL, &e), 0);
    char tap[NETSETUP_IFNAMSIZ];
    netsetup_tap_name("3f0e6d7c-1111-4222-8333-944455556666", 2, tap);
    const char *ips[] = {"10.68.0.20", NULL};
    struct netsetup_nic_filter f = {.mac = "52:54:00:68:00:20", .ipv4 = ips};
    struct netsetup_nic nic = {.tap = tap, .queues = 2, .bridge = "qvbr-plug", .network = "plug", .filter = &f};
    int fds[2] = {-1, -1};
    assert_int_equal(netsetup_nic_plug(nft, &nic, fds, &e), 0);
    struct netsetup_link_info info;
    assert_int_equal(netsetup_link_get(tap, &info, &e), 0);
    assert_string_equal(info.master, "qvbr-plug");
    assert_int_equal(info.mtu, 1420);
    char path[128], v[8];
    snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/disable_ipv6", tap);
    assert_int_equal(nstest_read_line(path, v, sizeof(v)), 0);
    assert_string_equal(v, "1");
    struct strv taps = {0};
    assert_int_equal(netsetup_nft_nic_list(nft, "plug", &taps, &e), 0);
    assert_int_equal(taps.n, 1);
    assert_string_equal(taps.v[0], tap);
    strv_free(&taps);

    /* QEMU exits: the tap goes by itself, the filter by unplug */
    close(fds[0]);
    close(fds[1]);
    assert_true(nstest_wait_link(tap, false, 2000));
    assert_int_equal(netsetup_nic_unplug(nft, "plug", tap, &e), 0);
    assert_int_equal(netsetup_nft_nic_list(nft, "plug", &taps, &e), 0);
    assert_int_equal(taps.n, 0);

    /* the same tap again without filtering: no stale filter survives */
    assert_int_equal(netsetup_nic_plug(nft, &nic, fds, &e), 0);
    close(fds[0]);
    close(fds[1]);
    nic.filter = NULL;
    assert_true(nstest_wait_link(tap, false, 2000));
    assert_int_equal(netsetup_nic_plug(nft, &nic, fds, &e), 0);
    assert_int_equal(netsetup_nft_nic_list(nft, "plug", &taps, &e), 0);
    assert_int_equal(taps.n, 0);
    /* unplug while QEMU still holds it (detach-nic after DEVICE_DELETED) */
    assert_int_equal(netsetup_nic_unplug(nft, "plug", tap, &e), 0);
    assert_false(netsetup_link_exists(tap));
    close(fds[0]);
    close(fds[1]);

    /* a failed plug leaves nothing behind */
    nic.filter = &f;
    nic.bridge = "qvbr-nope";
    assert_int_equal(netsetup_nic_plug(nft, &nic, fds, &e), -ENODEV);
    char want[128];
    snprintf(want, sizeof(want), "%s: cannot attach to bridge qvbr-nope: No such device", tap);
    assert_string_equal(e.msg, want);
    assert_int_equal(fds[0], -1);
    assert_true(nstest_wait_link(tap, false, 2000));
    nic.bridge = "qvbr-plug";
    nic.network = "notrunning";
    assert_int_equal(netsetup_nic_plug(nft, &nic, fds, &e), -ENOENT);
    assert_non_null(strstr(e.msg, "network notrunning is not running"));
    assert_true(nstest_wait_link(tap, false, 2000));
    nic.network = NULL;
    assert_int_equal(netsetup_nic_plug(nft, &nic, fds, &e), -EINVAL);
    assert_int_equal(netsetup_net_down(nft, "plug", "qvbr-plug", &e), 0);
    assert_false(nstest_ruleset_mentions("qvisor"));
}

#define SCALE_TAPS 200
#define SCALE_WINDOW 20

static void test_scale(void **state)
{
    (void)state;
    struct qv_err e = {0};
    struct netsetup_net net = {.name = "scale", .bridge = "qvbr-scale", .mode = NETSETUP_NAT, .ipv4 = "10.67.0.1/16"};
    assert_int_equal(netsetup_net_up(nft, &net, NULL, &e), 0);
    static int fds[SCALE_TAPS];
    static char names[SCALE_TAPS][NETSETUP_IFNAMSIZ];
    static uint64_t tap_us[SCALE_TAPS], attach_us[SCALE_TAPS], filter_us[SCALE_TAPS], unplug_us[SCALE_TAPS];
    for (int i = 0; i < SCALE_TAPS; i++) {
        char uuid[37], mac[18], ip[16];
        snprintf(uuid, sizeof(uuid), "00000000-0000-4000-8000-%012d", i);
        netsetup_tap_name(uuid, 0, names[i]);
        snprintf(mac, sizeof(mac), "52:54:00:67:%02x:%02x", i >> 8, i & 0xff);
        snprintf(ip, sizeof(ip), "10.67.%d.%d", 1 + i / 200, 2 + i % 200);
        const char *ips[] = {ip, NULL};
        struct netsetup_nic_filter f = {.mac = mac, .ipv4 = ips, .restrict_in = true,
                                        .allow_in = allow_in, .nallow_in = ARRAY_SIZE(allow_in),
                                        .deny_out = deny_out, .ndeny_out = ARRAY_SIZE(deny_out)};
        /* netsetup_nic_plug()'s three steps, timed one by one */
        uint64_t t0 = nstest_now_us();
        assert_int_equal(netsetup_tap_open(names[i], 1, &fds[i], &e), 0);
        uint64_t t1 = nstest_now_us();
        assert_int_equal(netsetup_link_attach(names[i], "qvbr-scale", &e), 0);
        uint64_t t2 = nstest_now_us();
        int r = netsetup_nft_nic_apply(nft, "scale", names[i], &f, &e);
        uint64_t t3 = nstest_now_us();
        if (r < 0)
            printf("# filter %d: %s\n", i, e.msg);
        assert_int_equal(r, 0);
        tap_us[i] = t1 - t0;
        attach_us[i] = t2 - t1;
        filter_us[i] = t3 - t2;
    }
    json_object *doc = nstest_nft_json("table", "bridge", "qvisor-scale");
    /* every tap adds the same number of elements and nothing else */
    assert_int_equal(nstest_count(doc, "chain", NULL), 4);
    assert_int_equal(nstest_count(doc, "set", NULL), 28);
    size_t per_tap = tap_elements(doc, names[0]);
    assert_int_equal(tap_elements(doc, names[SCALE_TAPS - 1]), per_tap);
    assert_int_equal(tap_elements(doc, NULL), per_tap * SCALE_TAPS);
    assert_int_equal(nstest_elements(doc, "set", "out_taps"), SCALE_TAPS);
    assert_int_equal(nstest_elements(doc, "set", "in_taps"), SCALE_TAPS);
    assert_int_equal(count_rules(doc, "prerouting"), 1);
    assert_int_equal(count_rules(doc, "postrouting"), 1);
    json_object_put(doc);
    struct strv ports = {0};
    assert_int_equal(netsetup_link_list(NETSETUP_TAP_PREFIX, &ports, &e), 0);
    assert_int_equal(ports.n, SCALE_TAPS);
    strv_free(&ports);

    /* learning a lease: one tap's elements replaced, whatever the number of taps */
    const char *ip[] = {"10.67.9.9", NULL};
    struct netsetup_nic_filter relearn = {.mac = "52:54:00:67:00:c7", .ipv4 = ip};
    uint64_t t0 = nstest_now_us();
    assert_int_equal(netsetup_nft_nic_apply(nft, "scale", names[SCALE_TAPS - 1], &relearn, &e), 0);
    uint64_t set_last = nstest_now_us() - t0;

    for (int i = 0; i < SCALE_TAPS; i++) {
        close(fds[i]);   /* QEMU exiting */
        uint64_t t1 = nstest_now_us();
        int r = netsetup_nic_unplug(nft, "scale", names[i], &e);
        unplug_us[i] = nstest_now_us() - t1;
        if (r < 0)
            printf("# unplug %d: %s\n", i, e.msg);
        assert_int_equal(r, 0);
    }
    const struct { const char *what; const uint64_t *us; } figures[] = {
        {"tap open", tap_us}, {"attach", attach_us}, {"filter apply", filter_us}, {"unplug (filter+tap)", unplug_us},
    };
    printf("# %d taps with filters, microseconds per tap, mean of the first and of the last %d:\n", SCALE_TAPS,
           SCALE_WINDOW);
    for (size_t k = 0; k < ARRAY_SIZE(figures); k++) {
        uint64_t first = 0, last = 0;
        for (int i = 0; i < SCALE_WINDOW; i++) {
            first += figures[k].us[i];
            last += figures[k].us[SCALE_TAPS - SCALE_WINDOW + i];
        }
        printf("#   %-20s first %6llu  last %6llu  (last/first %.2f)\n", figures[k].what,
               (unsigned long long)(first / SCALE_WINDOW), (unsigned long long)(last / SCALE_WINDOW),
               first ? (double)last / (double)first : 0.0);
    }
    printf("#   re-applying one filter with %d present: %llu\n", SCALE_TAPS, (unsigned long long)set_last);
    doc = nstest_nft_json("table", "bridge", "qvisor-scale");
    assert_int_equal(nstest_count(doc, "chain", NULL), 4);
    assert_int_equal(tap_elements(doc, NULL), 0);
    json_object_put(doc);
    assert_int_equal(netsetup_link_list(NETSETUP_TAP_PREFIX, &ports, &e), 0);
    assert_int_equal(ports.n, 0);
    assert_int_equal(netsetup_net_down(nft, "scale", "qvbr-scale", &e), 0);
    assert_false(nstest_ruleset_mentions("qvisor"));
}

static int setup(void **state)
{
    (void)state;
    struct qv_err e = {0};
    if (netsetup_nft_open(&nft, &e) < 0) {
        printf("# %s\n", e.msg);
        return -1;
    }
    return 0;
}

/* A failed assertion skips a test's own cleanup; what it left must not fail the next. */
static int remove_leftovers(void **state)
{
    (void)state;
    struct qv_err e = {0};
    struct strv nets = {0}, links = {0};
    netsetup_nft_net_list(nft, &nets, &e);
    for (size_t i = 0; i < nets.n; i++)
        netsetup_nft_net_remove(nft, nets.v[i], &e);
    netsetup_link_list("qv", &links, &e);
    for (size_t i = 0; i < links.n; i++)
        netsetup_link_delete(links.v[i], &e);
    strv_free(&nets);
    strv_free(&links);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    netsetup_nft_close(nft);
    return 0;
}

int main(void)
{
    nstest_enter(400);     /* a hang guard: 57 s alone, 111 s beside three other groups at load 10 */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_modes, remove_leftovers),
        cmocka_unit_test_teardown(test_invalid, remove_leftovers),
        cmocka_unit_test_teardown(test_nic_filter, remove_leftovers),
        cmocka_unit_test_teardown(test_filter_rules, remove_leftovers),
        cmocka_unit_test_teardown(test_crash_recovery, remove_leftovers),
        cmocka_unit_test_teardown(test_coexistence, remove_leftovers),
        cmocka_unit_test_teardown(test_net_up_down, remove_leftovers),
        cmocka_unit_test_teardown(test_plug_unplug, remove_leftovers),
        cmocka_unit_test_teardown(test_scale, remove_leftovers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
