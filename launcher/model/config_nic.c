/* A VM definition's NICs ("nics": [...]), in a definition and alone for hotplug:
 *   {"network": "default"} | {"bridge": "br0"} | {"direct": "eth0", "mode": "bridge"} | {}
 * with mac, model, queues, vhost, vlan, boot_index, a filter (a named one, "none", or
 * inline allow_in/deny_out port lists) and, for user-mode NICs, hostfwd rules. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher/model/config.h"

const char *const nic_type_names[] = {"user", "bridge", "network", "direct", NULL};
const char *const nic_model_names[] = {"virtio", "e1000", "rtl8139", NULL};
const char *const macvtap_names[] = {"bridge", "vepa", "private", "passthrough", NULL};
static const char *const proto_names[] = {"tcp", "udp", NULL};

void vm_nic_free(struct vm_nic *n)
{
    free(n->source);
    free(n->allow_in);
    free(n->deny_out);
    free(n->filter_name);
    for (size_t j = 0; j < n->nfwd; j++) {
        free(n->fwd[j].host);
        free(n->fwd[j].guest);
    }
    free(n->fwd);
    memset(n, 0, sizeof(*n));
}

static int parse_hostfwd(struct jr *r, json_object *o, struct hostfwd *f)
{
    static const char *const keys[] = {"protocol", "host", "host_port", "guest", "guest_port", NULL};
    int e, proto = 0;
    int64_t hp = 0, gp = 0;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_enum(r, o, "protocol", proto_names, &proto)) < 0 ||
        (e = jr_checked_string(r, o, "host", false, &f->host, ip_literal_valid, "an IP address")) < 0 ||
        (e = jr_checked_string(r, o, "guest", false, &f->guest, ip_literal_valid, "an IP address")) < 0)
        return e;
    if (!json_object_object_get_ex(o, "host_port", NULL) || !json_object_object_get_ex(o, "guest_port", NULL))
        return jr_fail(r, "needs host_port and guest_port");
    if ((e = jr_int(r, o, "host_port", 1, 65535, &hp)) < 0 || (e = jr_int(r, o, "guest_port", 1, 65535, &gp)) < 0)
        return e;
    f->udp = proto == 1;
    f->host_port = (int)hp;
    f->guest_port = (int)gp;
    if (!f->host)
        f->host = qv_xstrdup("127.0.0.1");
    if (strchr(f->host, ':') || (f->guest && strchr(f->guest, ':')))
        return jr_fail(r, "user-mode forwarding is IPv4 only");
    return 0;
}

/* "tcp/22", "udp/5000-5010", "icmp" */
bool nic_port_parse(const char *s, struct nic_port *p)
{
    if (strcmp(s, "icmp") == 0) {
        *p = (struct nic_port){.proto = IPPROTO_ICMP};
        return true;
    }
    unsigned lo, hi;
    char proto[4], tail;
    int n = sscanf(s, "%3[a-z]/%u-%u%c", proto, &lo, &hi, &tail);
    if (n == 2)
        hi = lo;
    else if (n != 3)
        return false;
    if ((strcmp(proto, "tcp") != 0 && strcmp(proto, "udp") != 0) || lo < 1 || hi > 65535 || lo > hi)
        return false;
    *p = (struct nic_port){.proto = strcmp(proto, "tcp") == 0 ? IPPROTO_TCP : IPPROTO_UDP, .lo = (int)lo, .hi = (int)hi};
    return true;
}

static int port_list(struct jr *r, json_object *o, const char *key, struct nic_port **out, size_t *n)
{
    json_object *a = NULL;
    int e = jr_array(r, o, key, &a);
    if (e < 0 || !a)
        return e;
    size_t m = jr_key(r, key);
    *n = json_object_array_length(a);
    *out = qv_xcalloc(*n, sizeof(**out));
    for (size_t i = 0; i < *n; i++) {
        json_object *v = json_object_array_get_idx(a, i);
        size_t mi = jr_index(r, i);
        if ((e = jr_expect(r, v, json_type_string)) < 0)
            return e;
        if (!nic_port_parse(json_object_get_string(v), &(*out)[i]))
            return jr_fail(r, "%s is not a port like \"tcp/22\", \"udp/5000-5010\" or \"icmp\"", jr_show(v));
        jr_pop(r, mi);
    }
    jr_pop(r, m);
    return 0;
}

static int parse_filter(struct jr *r, json_object *o, struct vm_nic *n)
{
    json_object *f;
    n->filter = n->type == NIC_NETWORK ? FILTER_CLEAN : FILTER_NONE;
    if (!json_object_object_get_ex(o, "filter", &f))
        return 0;
    size_t m = jr_key(r, "filter");
    if (n->type != NIC_NETWORK)
        return jr_fail(r, "only on NICs of a qvisor network");
    if (json_object_is_type(f, json_type_string)) {
        const char *s = json_object_get_string(f);
        if (!name_valid(s))
            return jr_fail(r, "%s is not \"clean-traffic\", \"none\", a filter's name or {\"allow_in\": [...], \"deny_out\": [...]}", jr_show(f));
        n->filter = strcmp(s, "none") == 0 ? FILTER_NONE : FILTER_CLEAN;
        if (!filter_builtin(s))
            n->filter_name = qv_xstrdup(s);
    } else {
        int e;
        static const char *const keys[] = {"allow_in", "deny_out", NULL};
        if ((e = jr_expect(r, f, json_type_object)) < 0 || (e = jr_only_keys(r, f, keys)) < 0 ||
            (e = port_list(r, f, "allow_in", &n->allow_in, &n->nallow_in)) < 0 ||
            (e = port_list(r, f, "deny_out", &n->deny_out, &n->ndeny_out)) < 0)
            return e;
        /* an explicit allow_in list, even empty, means inbound is filtered */
        if (json_object_object_get_ex(f, "allow_in", NULL) && !n->allow_in)
            n->allow_in = qv_xcalloc(1, sizeof(*n->allow_in));
    }
    jr_pop(r, m);
    return 0;
}

int vm_nic_parse(struct jr *r, json_object *o, struct vm_nic *n, const struct vm_def *d)
{
    static const char *const keys[] = {"type", "network", "bridge", "direct", "mode", "mac", "model",
                                       "queues", "vhost", "hostfwd", "boot_index", "filter", "vlan", NULL};
    int e, type = -1, model = MODEL_VIRTIO, mode = MACVTAP_BRIDGE;
    int64_t queues = 1;
    if ((e = jr_only_keys(r, o, keys)) < 0 || (e = jr_enum(r, o, "type", nic_type_names, &type)) < 0)
        return e;
    /* The source key names the type: {"network": "default"} is a network NIC. */
    static const char *const source_keys[] = {NULL, "bridge", "network", "direct"};
    for (int t = NIC_BRIDGE; t <= NIC_DIRECT; t++) {
        if (!json_object_object_get_ex(o, source_keys[t], NULL))
            continue;
        if (type >= 0 && type != t) {
            jr_key(r, source_keys[t]);
            return jr_fail(r, "not allowed with type %s", nic_type_names[type]);
        }
        type = t;
    }
    if (type < 0)
        type = NIC_USER;
    n->type = type;
    if (type != NIC_USER) {
        const char *key = source_keys[type];
        /* the same rule as the network set-up that will use it at start: a name that
         * passes here never fails there */
        bool (*ok)(const char *) = type == NIC_NETWORK ? name_valid : netsetup_ifname_valid;
        e = jr_checked_string(r, o, key, true, &n->source, ok,
                              type == NIC_NETWORK ? "a network name"
                                                  : "an interface name (1-15 of letters, digits, _ . -)");
        if (e < 0)
            return e;
    }
    char *mac = NULL;
    e = jr_string(r, o, "mac", false, &mac);
    if (e < 0)
        return e;
    if (mac) {
        bool ok = mac_normalise(mac, n->mac);
        bool qemu_default = ok && strcmp(n->mac, "52:54:00:12:34:56") == 0;
        free(mac);
        if (!ok || qemu_default) {
            jr_key(r, "mac");
            return jr_fail(r, "%s is not %s", jr_show(json_object_object_get(o, "mac")),
                           qemu_default ? "usable (it is QEMU's default MAC, shared by every unconfigured guest)"
                                        : "a unicast MAC address like 52:54:00:12:ab:cd");
        }
    }
    if ((e = jr_enum(r, o, "model", nic_model_names, &model)) < 0 || (e = jr_enum(r, o, "mode", macvtap_names, &mode)) < 0 ||
        (e = jr_int(r, o, "queues", 1, 16, &queues)) < 0 || (e = boot_index_get(r, o, &n->boot_index)) < 0)
        return e;
    n->model = model;
    n->mode = mode;
    n->queues = (int)queues;
    n->vhost = true;
    if ((e = jr_bool(r, o, "vhost", &n->vhost)) < 0)
        return e;
    if (type != NIC_DIRECT && json_object_object_get_ex(o, "mode", NULL))
        return jr_key(r, "mode"), jr_fail(r, "only for direct (macvtap) NICs");
    if (type == NIC_USER && (json_object_object_get_ex(o, "vhost", NULL) || queues > 1))
        return jr_key(r, queues > 1 ? "queues" : "vhost"), jr_fail(r, "not available with user-mode networking");
    if (queues > 1 && model != MODEL_VIRTIO)
        return jr_key(r, "queues"), jr_fail(r, "multiqueue needs model virtio");
    if (d->machine == MACHINE_MICROVM && model != MODEL_VIRTIO)
        return jr_key(r, "model"), jr_fail(r, "\"%s\" is not available on microvm (only virtio)", nic_model_names[model]);
    if ((e = parse_filter(r, o, n)) < 0)
        return e;
    int64_t vlan = 0;
    if ((e = jr_int(r, o, "vlan", 1, 4094, &vlan)) < 0)
        return e;
    n->vlan = (int)vlan;
    if (vlan && type != NIC_BRIDGE && type != NIC_NETWORK)
        return jr_key(r, "vlan"), jr_fail(r, "only for NICs on a bridge or a qvisor network (a tap on a bridge port)");
    json_object *fwd = NULL;
    if ((e = jr_array(r, o, "hostfwd", &fwd)) < 0)
        return e;
    if (fwd) {
        size_t mf = jr_key(r, "hostfwd");
        if (type != NIC_USER)
            return jr_fail(r, "only for user-mode NICs");
        n->nfwd = json_object_array_length(fwd);
        n->fwd = qv_xcalloc(n->nfwd, sizeof(*n->fwd));
        for (size_t i = 0; i < n->nfwd; i++) {
            json_object *item = json_object_array_get_idx(fwd, i);
            size_t mi = jr_index(r, i);
            if ((e = jr_expect(r, item, json_type_object)) < 0 || (e = parse_hostfwd(r, item, &n->fwd[i])) < 0)
                return e;
            jr_pop(r, mi);
        }
        jr_pop(r, mf);
    }
    return 0;
}

int vm_nic_from_json(json_object *o, const struct vm_def *d, struct vm_nic *out, struct qv_err *e)
{
    struct jr r;
    memset(out, 0, sizeof(*out));
    int err = vm_device_json_begin(&r, o, "nic", e);
    if (err == 0)
        err = vm_nic_parse(&r, o, out, d);
    if (err < 0)
        vm_nic_free(out);
    return err;
}
