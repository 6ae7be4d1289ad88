/* launcher/model: network definitions (etc/qvisor/networks/NAME.json), their store,
 * live updates and run directory. netdef.c has them; the network supervisor and the
 * CLI's net verbs use them. */
#ifndef QV_MODEL_NETDEF_H
#define QV_MODEL_NETDEF_H

#include "launcher/model/model.h"

/* ---- network definitions: etc/qvisor/networks/NAME.json ------------------------------------ */
enum net_mode { NET_NAT, NET_ISOLATED, NET_ROUTED, NET_BRIDGE };
extern const char *const net_mode_names[];

struct net_host {
    char *mac, *ip, *name;
};

struct net_forward {
    bool udp;
    int host_port;
    char *guest;
    int guest_port;
};

struct net_def {
    char *name;
    enum net_mode mode;
    char *bridge;           /* generated for managed networks; the host's for mode bridge */
    unsigned mtu;           /* 0: kernel default */
    struct {
        char *address;      /* the host's side, "10.77.0.1/24" */
        struct netsetup_cidr cidr;
        char *dhcp_start, *dhcp_end;    /* NULL: no dynamic range */
        unsigned lease_time;
        struct net_host *hosts;
        size_t nhosts;
    } ipv4;
    struct {
        char *address;
        struct netsetup_cidr cidr;
        char *dhcp_start, *dhcp_end;    /* NULL: SLAAC only */
    } ipv6;
    struct {
        char *domain;
        struct strv forwarders;
    } dns;
    struct net_forward *forwards;
    size_t nforwards;
    bool autostart;
};
void net_def_free(struct net_def *n);   /* leaves it zeroed */
#define _cleanup_net_def_ _cleanup_(net_def_free)
static inline void net_def_move(struct net_def *to, struct net_def *from)
{
    *to = *from;
    *from = (struct net_def){0};
}
int net_def_from_json(json_object *o, struct net_def *n, struct qv_err *e);
json_object *net_def_to_json(const struct net_def *n);
int net_def_path(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* "default" is defined on first use, on a 10.77.N.0/24 the host does not use. */
int net_load(const struct qv_paths *p, const char *name, struct net_def *n, struct qv_err *e);
int net_define(const struct qv_paths *p, json_object *o, bool replace, struct net_def *out, struct qv_err *e);
int net_define_default(const struct qv_paths *p, struct net_def *out, struct qv_err *e);
int net_undefine(const struct qv_paths *p, const char *name, struct qv_err *e);
int net_list_names(const struct qv_paths *p, struct strv *names, struct qv_err *e);
/* net update: a static host ({"mac", "ip", "name"}) or a port forward ({"protocol",
 * "host_port", "guest", "guest_port"}) added to or deleted from a definition. Deleting
 * a host matches every key given; a forward is known by protocol (default tcp) and
 * host_port. *out is the validated result (-EEXIST: already there, -ENOENT: no such
 * item, -EINVAL: the result is not valid, with its JSON path). */
enum net_update_op { NET_UPDATE_ADD, NET_UPDATE_DELETE };
enum net_update_section { NET_UPDATE_HOST, NET_UPDATE_FORWARD };
extern const char *const net_update_section_names[];   /* "host", "forward" */
int net_def_update(const struct net_def *cur, enum net_update_op op, enum net_update_section sec, json_object *item,
                   struct net_def *out, struct qv_err *e);
/* The same on the stored definition, under the networks' lock, written atomically. */
int net_update_config(const struct qv_paths *p, const char *name, enum net_update_op op, enum net_update_section sec,
                      json_object *item, struct net_def *out, struct qv_err *e);
/* The parts of `to` that differ from `from`, as "mode", "ipv4.dhcp", ... (autostart
 * left out), appended to `changed`. */
void net_def_diff(const struct net_def *from, const struct net_def *to, struct strv *changed);
/* -EADDRINUSE when the network's subnets overlap the host's addresses or routes. */
int net_check_host(const struct net_def *n, struct qv_err *e);
/* run/qvisor/networks/NAME: lock, state.json, dnsmasq's files */
int net_run_dir(const struct qv_paths *p, const char *name, char *out, size_t outlen);
/* Whether a network supervisor holds the network's lock (its pid in *holder). */
bool net_running(const struct qv_paths *p, const char *name, pid_t *holder);

#endif
