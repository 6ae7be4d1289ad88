/* Named NIC filters (libvirt's nwfilter, the shapes qvisor's nftables backend has):
 * etc/qvisor/filters/NAME.json, referenced by network NICs as "filter": "NAME". Every
 * named filter is clean-traffic (the guest sends only from its own MAC and address)
 * plus its rules: "out" rules drop traffic the guest sends, "in" rules accept traffic
 * to the guest, and once there is one, everything else new coming in is dropped. A rule
 * matches a protocol's ports (tcp, udp), an ICMP/ICMPv6 type, or any protocol ("all"),
 * each optionally from a source and to a destination prefix. "clean-traffic" and "none"
 * are built in. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/model/model.h"

static const char *const dir_names[] = {"in", "out", NULL};
enum { PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, PROTO_ALL };
static const char *const proto_names[] = {"tcp", "udp", "icmp", "icmpv6", "all", NULL};
static const int proto_numbers[] = {IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6, 0};
static const char *const action_names[] = {"accept", "drop", NULL};

void filter_def_free(struct filter_def *f)
{
    free(f->name);
    free(f->allow_in);
    free(f->deny_out);
    memset(f, 0, sizeof(*f));
}

bool filter_builtin(const char *name)
{
    return strcmp(name, "clean-traffic") == 0 || strcmp(name, "none") == 0;
}

void nic_port_netsetup(const struct nic_port *p, struct netsetup_port *out)
{
    *out = (struct netsetup_port){.proto = p->proto, .lo = (uint16_t)p->lo, .hi = (uint16_t)p->hi,
                                  .typed = p->typed, .type = (uint8_t)p->icmp_type,
                                  .source = p->source[0] ? p->source : NULL,
                                  .destination = p->destination[0] ? p->destination : NULL};
}

/* "type": a number 0-255 or nft's name of one of the protocol's types. */
static int parse_icmp_type(struct jr *r, json_object *o, int proto, struct nic_port *p)
{
    json_object *v;
    if (!json_object_object_get_ex(o, "type", &v))
        return 0;
    size_t m = jr_key(r, "type");
    const char *family = proto == IPPROTO_ICMP ? "an ICMP" : "an ICMPv6";
    if (proto != IPPROTO_ICMP && proto != IPPROTO_ICMPV6)
        return jr_fail(r, "only icmp and icmpv6 rules have a type");
    int64_t t = -1;
    if (json_object_is_type(v, json_type_int)) {
        t = json_object_get_int64(v);
        if (t < 0 || t > 255)
            return jr_fail(r, "%s is not %s type (0-255)", jr_show(v), family);
    } else if (json_object_is_type(v, json_type_string)) {
        t = netsetup_icmp_type(proto, json_object_get_string(v));
    }
    if (t < 0)
        return jr_fail(r, "%s is not %s type (a number 0-255 or a name like %s)", jr_show(v), family,
                       proto == IPPROTO_ICMP ? "echo-request, timestamp-request, destination-unreachable"
                                             : "echo-request, nd-neighbor-solicit, packet-too-big");
    p->icmp_type = (int)t;
    p->typed = true;
    jr_pop(r, m);
    return 0;
}

/* "source", "destination": CIDRs of one family, normalized; `family` becomes theirs. */
static int parse_address(struct jr *r, json_object *o, const char *key, char *out, size_t outlen, int *family)
{
    _cleanup_free_ char *s = NULL;
    int e = jr_string(r, o, key, false, &s);
    if (e < 0 || !s)
        return e;
    size_t m = jr_key(r, key);
    struct netsetup_cidr c;
    char why[128], addr[INET6_ADDRSTRLEN];
    if (!netsetup_prefix_parse(s, &c, why, sizeof(why)))
        return jr_fail(r, "\"%s\" %s", s, why);
    if (*family && c.family != *family)
        return jr_fail(r, "\"%s\" is an IPv%d prefix, the source is IPv%d", s, c.family == AF_INET6 ? 6 : 4,
                       *family == AF_INET6 ? 6 : 4);
    *family = c.family;
    inet_ntop(c.family, c.addr, addr, sizeof(addr));
    snprintf(out, outlen, "%s/%u", addr, c.prefix);
    jr_pop(r, m);
    return 0;
}

static int parse_rule(struct jr *r, json_object *o, struct nic_port *p, int *direction)
{
    static const char *const keys[] = {"direction", "protocol", "ports", "type", "source", "destination", "action",
                                       NULL};
    int e, dir = -1, proto = -1, action = -1;
    char *ports = NULL;
    memset(p, 0, sizeof(*p));
    if ((e = jr_expect(r, o, json_type_object)) < 0 || (e = jr_only_keys(r, o, keys)) < 0)
        return e;
    static const char *const required[] = {"direction", "protocol", "action"};
    for (size_t i = 0; i < ARRAY_SIZE(required); i++)
        if (!json_object_object_get_ex(o, required[i], NULL))
            return jr_key(r, required[i]), jr_fail(r, "missing");
    if ((e = jr_enum(r, o, "direction", dir_names, &dir)) < 0 || (e = jr_enum(r, o, "protocol", proto_names, &proto)) < 0 ||
        (e = jr_enum(r, o, "action", action_names, &action)) < 0)
        return e;
    json_object *pv;
    if (json_object_object_get_ex(o, "ports", &pv) && json_object_is_type(pv, json_type_int)) {
        char buf[16];
        snprintf(buf, sizeof(buf), "%d", json_object_get_int(pv));
        ports = qv_xstrdup(buf);
    } else if ((e = jr_string(r, o, "ports", false, &ports)) < 0) {
        return e;
    }
    _cleanup_free_ char *ports_owned = ports;   /* freed on every return below */
    (void)ports_owned;
    if (dir == 0 && action == 1)
        return jr_key(r, "action"), jr_fail(r, "an in rule accepts: inbound traffic is filtered by what is accepted "
                                               "(once there is an in rule, everything else new coming in is dropped)");
    if (dir == 1 && action == 0)
        return jr_key(r, "action"), jr_fail(r, "an out rule drops: everything the guest sends from its own MAC and "
                                               "address is accepted already");
    int family = 0;
    if ((e = parse_address(r, o, "source", p->source, sizeof(p->source), &family)) < 0 ||
        (e = parse_address(r, o, "destination", p->destination, sizeof(p->destination), &family)) < 0 ||
        (e = parse_icmp_type(r, o, proto_numbers[proto], p)) < 0)
        return e;
    if (proto == PROTO_TCP || proto == PROTO_UDP) {
        char spec[48];
        if (!ports)
            return jr_key(r, "ports"), jr_fail(r, "missing: a port or a range like \"8000-8100\"");
        snprintf(spec, sizeof(spec), "%s/%s", proto_names[proto], ports);
        struct nic_port range;
        if (!nic_port_parse(spec, &range))
            return jr_key(r, "ports"), jr_fail(r, "\"%s\" is not a port (1-65535) or a range like \"8000-8100\"", ports);
        p->lo = range.lo;
        p->hi = range.hi;
    } else if (ports) {
        return jr_key(r, "ports"), jr_fail(r, "not with %s (only tcp and udp rules have ports)", proto_names[proto]);
    }
    p->proto = proto_numbers[proto];
    if (proto == PROTO_ALL && !family)
        return jr_key(r, "protocol"), jr_fail(r, "\"all\" needs a source or a destination (a rule for everything "
                                                 "would be a filter of its own: \"none\")");
    const char *which = p->source[0] ? "source" : "destination";
    if (family == AF_INET6 && proto == PROTO_ICMP && p->typed)
        return jr_key(r, which), jr_fail(r, "\"%s\" is IPv6: ICMP types are IPv4's (use \"icmpv6\")",
                                         p->source[0] ? p->source : p->destination);
    if (family == AF_INET && proto == PROTO_ICMPV6)
        return jr_key(r, which), jr_fail(r, "\"%s\" is IPv4: ICMPv6 is IPv6's (use \"icmp\")",
                                         p->source[0] ? p->source : p->destination);
    *direction = dir;
    return 0;
}

int filter_def_from_json(json_object *o, struct filter_def *f, struct qv_err *err)
{
    struct jr r;
    jr_init(&r, err);
    memset(f, 0, sizeof(*f));
    static const char *const keys[] = {"name", "rules", NULL};
    json_object *rules = NULL;
    _cleanup_free_ size_t *where = NULL;   /* each list entry's index in "rules", in then out */
    int e;
    if ((e = jr_expect(&r, o, json_type_object)) < 0 || (e = jr_check_text(&r, o)) < 0 ||
        (e = jr_only_keys(&r, o, keys)) < 0 || (e = jr_string(&r, o, "name", true, &f->name)) < 0)
        goto fail;
    if (!name_valid(f->name) || filter_builtin(f->name)) {
        jr_key(&r, "name");
        e = jr_fail(&r, "\"%s\" is not %s", f->name, name_valid(f->name) ? "free (it is built in)" : "a valid name");
        goto fail;
    }
    if ((e = jr_array(&r, o, "rules", &rules)) < 0)
        goto fail;
    size_t m = jr_key(&r, "rules"), n = rules ? json_object_array_length(rules) : 0;
    where = qv_xcalloc(2 * n + 1, sizeof(*where));
    for (size_t i = 0; i < n; i++) {
        size_t mi = jr_index(&r, i);
        struct nic_port p;
        int dir = 0;
        if ((e = parse_rule(&r, json_object_array_get_idx(rules, i), &p, &dir)) < 0)
            goto fail;
        struct nic_port **list = dir == 0 ? &f->allow_in : &f->deny_out;
        size_t *count = dir == 0 ? &f->nallow_in : &f->ndeny_out, *idx = where + (dir == 0 ? 0 : n);
        /* two address rules that overlap cannot share an nftables interval set */
        struct netsetup_port a, b;
        nic_port_netsetup(&p, &a);
        for (size_t k = 0; k < *count; k++) {
            nic_port_netsetup(&(*list)[k], &b);
            if (netsetup_port_clash(&b, &a)) {
                e = jr_fail(&r, "overlaps rules[%zu] (one direction, the same kind of match, addresses and "
                                "ports or types in common): make them disjoint, or merge them",
                            idx[k]);
                goto fail;
            }
        }
        *list = qv_xrealloc(*list, (*count + 1) * sizeof(**list));
        idx[*count] = i;
        (*list)[(*count)++] = p;
        jr_pop(&r, mi);
    }
    jr_pop(&r, m);
    return 0;
fail:
    filter_def_free(f);
    return e;
}

static json_object *rule_json(const char *dir, const struct nic_port *p)
{
    json_object *o = json_object_new_object();
    const char *proto = "all";
    for (size_t i = 0; i < ARRAY_SIZE(proto_numbers); i++)
        if (proto_numbers[i] == p->proto)
            proto = proto_names[i];
    json_object_object_add(o, "direction", json_object_new_string(dir));
    json_object_object_add(o, "protocol", json_object_new_string(proto));
    if (p->proto == IPPROTO_TCP || p->proto == IPPROTO_UDP) {
        char ports[16];
        if (p->lo == p->hi)
            snprintf(ports, sizeof(ports), "%d", p->lo);
        else
            snprintf(ports, sizeof(ports), "%d-%d", p->lo, p->hi);
        json_object_object_add(o, "ports", json_object_new_string(ports));
    }
    if (p->typed) {
        const char *name = netsetup_icmp_type_name(p->proto, (unsigned)p->icmp_type);
        json_object_object_add(o, "type", name ? json_object_new_string(name) : json_object_new_int(p->icmp_type));
    }
    if (p->source[0])
        json_object_object_add(o, "source", json_object_new_string(p->source));
    if (p->destination[0])
        json_object_object_add(o, "destination", json_object_new_string(p->destination));
    json_object_object_add(o, "action", json_object_new_string(strcmp(dir, "in") == 0 ? "accept" : "drop"));
    return o;
}

json_object *filter_def_to_json(const struct filter_def *f)
{
    json_object *o = json_object_new_object(), *rules = json_object_new_array();
    json_object_object_add(o, "name", json_object_new_string(f->name));
    for (size_t i = 0; i < f->nallow_in; i++)
        json_object_array_add(rules, rule_json("in", &f->allow_in[i]));
    for (size_t i = 0; i < f->ndeny_out; i++)
        json_object_array_add(rules, rule_json("out", &f->deny_out[i]));
    json_object_object_add(o, "rules", rules);
    return o;
}

static void filter_path(const struct qv_paths *p, const char *name, char *out, size_t len)
{
    qv_path(p, out, len, QV_ETC "/filters/%s.json", name);
}

int filter_load(const struct qv_paths *p, const char *name, struct filter_def *f, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid filter name", name);
    memset(f, 0, sizeof(*f));
    if (filter_builtin(name)) {
        f->name = qv_xstrdup(name);
        return 0;
    }
    char path[PATH_MAX];
    filter_path(p, name, path, sizeof(path));
    if (!path_exists(path))
        return qv_fail(e, -ENOENT, "no filter named %s (qvisor filter list shows them)", name);
    _cleanup_json_ json_object *o = NULL;
    int r = json_read_file(path, &o, e);
    if (r == 0 && (r = filter_def_from_json(o, f, e)) < 0)
        qv_prefix(e, "%s: ", path);
    return r;
}

int filter_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e)
{
    char dir[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_ETC "/filters");
    return json_names_in(dir, names, e);
}

int filter_define(const struct qv_paths *p, json_object *o, struct filter_def *out, struct qv_err *e)
{
    _cleanup_(filter_def_free) struct filter_def f = {0};
    int r = filter_def_from_json(o, &f, e);
    if (r < 0)
        return r;
    char dir[PATH_MAX], path[PATH_MAX];
    qv_path(p, dir, sizeof(dir), QV_ETC "/filters");
    _cleanup_close_ int lock = dir_lock(dir, e);
    if (lock < 0)
        return lock;
    filter_path(p, f.name, path, sizeof(path));
    _cleanup_json_ json_object *norm = filter_def_to_json(&f);
    if ((r = json_write_file_atomic(path, norm, 0644, e)) == 0 && out) {
        *out = f;
        memset(&f, 0, sizeof(f));
    }
    return r;
}

/* "web1 nics[0]" for the first NIC of a defined VM that uses the filter. */
static bool filter_user(const struct qv_paths *p, const char *name, char *who, size_t len)
{
    _cleanup_strv_ struct strv vms = {0};
    if (vm_list_names(p, &vms, NULL) < 0)
        return false;
    for (size_t i = 0; i < vms.n; i++) {
        _cleanup_vm_def_ struct vm_def d = {0};
        if (vm_load(p, vms.v[i], &d, NULL) < 0)
            continue;
        for (size_t k = 0; k < d.nnics; k++)
            if (d.nics[k].filter_name && strcmp(d.nics[k].filter_name, name) == 0) {
                snprintf(who, len, "%s nics[%zu]", d.name, k);
                return true;
            }
    }
    return false;
}

int filter_undefine(const struct qv_paths *p, const char *name, struct qv_err *e)
{
    if (!name_valid(name))
        return qv_fail(e, -EINVAL, "\"%s\" is not a valid filter name", name);
    if (filter_builtin(name))
        return qv_fail(e, -EBUSY, "filter %s is built in", name);
    char dir[PATH_MAX], path[PATH_MAX], who[160];
    qv_path(p, dir, sizeof(dir), QV_ETC "/filters");
    _cleanup_close_ int lock = dir_lock(dir, e);
    if (lock < 0)
        return lock;
    filter_path(p, name, path, sizeof(path));
    if (!path_exists(path))
        return qv_fail(e, -ENOENT, "no filter named %s", name);
    if (filter_user(p, name, who, sizeof(who)))
        return qv_fail(e, -EBUSY, "filter %s is used by %s (give that NIC another filter first)", name, who);
    if (unlink(path) < 0)
        return qv_failerr(e, -errno, "%s", path);
    return 0;
}
