/* netsetup: the host side of guest networking — bridges, taps and macvtap through
 * route netlink, qvisor's nftables tables through libnftables, and dnsmasq as a
 * child. Mechanisms only: parsing definitions, recording state and supervising
 * belong to the launcher, which calls these functions in this order:
 *
 *   start a network    netsetup_net_up(), then netsetup_dnsmasq_spawn()
 *   stop it            kill dnsmasq, then netsetup_net_down()
 *   add a NIC          netsetup_tap_name() (record it first), netsetup_nic_plug(),
 *                      hand the fds to QEMU and close them
 *   learn a guest IP   netsetup_nft_nic_apply() again, with the address
 *   remove a NIC       netsetup_nic_unplug() once QEMU dropped the device
 *   garbage-collect    taps need none (they vanish with QEMU); a filter whose tap no
 *                      longer exists (netsetup_nft_nic_list() + netsetup_link_exists())
 *                      goes with netsetup_nft_nic_remove(); networks without a live
 *                      supervisor (netsetup_nft_net_list()) with netsetup_net_down();
 *                      macvtaps (NETSETUP_MACVTAP_PREFIX) by the caller's records
 *
 * Every removal works from names alone, so it also cleans up after a process that
 * died half-way. All functions return 0 or -errno and fill the qv_err. */
#ifndef QV_NETSETUP_H
#define QV_NETSETUP_H

#include <sys/socket.h>
#include <netinet/in.h>

#include "common/common.h"

/* ---- names ------------------------------------------------------------------------ */
#define NETSETUP_IFNAMSIZ 16            /* 15 characters and the NUL, as the kernel's IFNAMSIZ */
#define NETSETUP_TAP_PREFIX "qvt"       /* taps of VMs on bridges and networks */
#define NETSETUP_MACVTAP_PREFIX "qvm"   /* macvtap ("direct") NICs */
#define NETSETUP_BRIDGE_PREFIX "qvbr-"  /* bridges of managed networks */
#define NETSETUP_TABLE_PREFIX "qvisor-" /* nft tables: one inet and one bridge table per network */

/* 1-15 of [A-Za-z0-9_.-]: stricter than the kernel, so a name is always safe to
 * put into an nft command or a dnsmasq option unquoted. */
bool netsetup_ifname_valid(const char *name);
/* "qvt" + 12 hex digits of a hash of (uuid, index): stable across restarts, so a
 * crashed supervisor's successor can find and delete it. */
void netsetup_tap_name(const char *vm_uuid, unsigned nic_index, char out[NETSETUP_IFNAMSIZ]);
void netsetup_macvtap_name(const char *vm_uuid, unsigned nic_index, char out[NETSETUP_IFNAMSIZ]);
/* "qvbr-NAME" when it fits in 15 characters, else "qvbr-" + the first 4 characters
 * + 6 hex digits of a hash of the whole name. */
void netsetup_bridge_name(const char *network, char out[NETSETUP_IFNAMSIZ]);

/* ---- addresses and subnets ---------------------------------------------------------- */
struct netsetup_cidr {
    int family;                 /* AF_INET or AF_INET6 */
    unsigned char addr[16];     /* as written (host bits kept) */
    unsigned prefix;
};
/* "10.77.0.1/24", "fd77::1/64"; a bare address gets the full prefix. */
int netsetup_cidr_parse(const char *s, struct netsetup_cidr *out, struct qv_err *e);
bool netsetup_cidr_overlap(const struct netsetup_cidr *a, const struct netsetup_cidr *b);
/* Whether `addr` (its address only) lies inside `net`. */
bool netsetup_cidr_contains(const struct netsetup_cidr *net, const struct netsetup_cidr *addr);
/* The network with its prefix, "10.77.0.0/24", and the bare address, "10.77.0.1". */
void netsetup_cidr_network_str(const struct netsetup_cidr *c, char *out, size_t outlen);
void netsetup_cidr_addr_str(const struct netsetup_cidr *c, char *out, size_t outlen);
/* Fails with -EADDRINUSE and "10.77.0.0/24 overlaps route 10.77.0.0/16 on eth0" when
 * the subnet overlaps an address or a route of the host (default routes and the
 * link `ignore_link`, e.g. the network's own bridge on restart, are skipped). */
int netsetup_subnet_check_host(const char *cidr, const char *ignore_link, struct qv_err *e);

/* ---- links (route netlink; never `ip` or `brctl`) ---------------------------------------
 * A missing link is -ENODEV ("qvt…: No such device"). */
struct netsetup_link_info {
    int ifindex;
    unsigned mtu;
    bool up;
    char kind[32];                      /* "bridge", "tun", "macvtap", "veth", "" */
    char master[NETSETUP_IFNAMSIZ];     /* "" when not enslaved */
    char mac[18];
};
int netsetup_link_get(const char *name, struct netsetup_link_info *out, struct qv_err *e);
bool netsetup_link_exists(const char *name);
/* Sorted names of the links whose name starts with prefix ("" lists all). */
int netsetup_link_list(const char *prefix, struct strv *out, struct qv_err *e);
int netsetup_link_delete(const char *name, struct qv_err *e);
int netsetup_link_set_mtu(const char *name, unsigned mtu, struct qv_err *e);
int netsetup_link_set_up(const char *name, bool up, struct qv_err *e);
/* Enslaves `name` to `bridge`, gives it the bridge's MTU, turns IPv6 off on it (a
 * port needs no addresses of its own) and brings it up. */
int netsetup_link_attach(const char *name, const char *bridge, struct qv_err *e);

/* Makes bridge port `port` an untagged access port of VLAN `vid` (1-4094): its PVID,
 * egress untagged, and no longer a member of the bridge's default VLAN. A bridge
 * without VLAN filtering is refused with the fix, unless `own_bridge` (one qvisor
 * made), whose filtering is then turned on (its other ports stay in the default
 * VLAN, untagged, as before). */
int netsetup_port_vlan(const char *port, const char *bridge, unsigned vid, bool own_bridge, struct qv_err *e);

/* Creates a bridge with STP off, forward delay 0, the given MTU (0 = kernel default),
 * a fixed MAC derived from its name (so the gateway's MAC never changes when ports
 * come and go) and brings it up. An existing link is -EEXIST unless flags has
 * NETSETUP_ADOPT, which reconfigures an existing bridge instead (a network
 * supervisor restarting over running guests). */
#define NETSETUP_ADOPT 1u
int netsetup_bridge_create(const char *name, unsigned mtu, unsigned flags, struct qv_err *e);
/* Adds "10.77.0.1/24" or "fd77::1/64" to a link; already present is success. IPv6
 * addresses skip duplicate address detection so dnsmasq can bind at once. */
int netsetup_addr_add(const char *link, const char *cidr, struct qv_err *e);

/* Turns on forwarding for `ifname` (and the global switch the family needs:
 * net.ipv4.ip_forward, net.ipv6.conf.all.forwarding). family: AF_INET, AF_INET6
 * or AF_UNSPEC for both. Each change made is appended to `changes` as
 * "net.ipv4.ip_forward: 0 -> 1" for the caller to log; warnings about side effects
 * (interfaces that stop accepting router advertisements) are appended too. Note that
 * writing ip_forward=1 is how Linux works: it turns on forwarding on every IPv4
 * interface. */
int netsetup_forwarding_enable(const char *ifname, int family, struct strv *changes, struct qv_err *e);

/* ---- taps, macvtap, vhost ------------------------------------------------------------ */
#define NETSETUP_MAX_QUEUES 16
/* Creates tap `name` (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, IFF_MULTI_QUEUE when queues > 1)
 * and stores one fd per queue in fds[0..queues). The tap is NOT persistent: it
 * disappears with the last fd, i.e. when QEMU exits or crashes, without anyone
 * cleaning up. An existing link of that name is -EEXIST (it may be another VM's
 * live tap: attaching queues to it would be a disaster). */
int netsetup_tap_open(const char *name, unsigned queues, int *fds, struct qv_err *e);
/* One /dev/vhost-net fd per queue; -ENOENT when the host has no vhost-net. */
int netsetup_vhost_open(unsigned queues, int *fds, struct qv_err *e);

enum netsetup_macvtap_mode {
    NETSETUP_MACVTAP_BRIDGE,
    NETSETUP_MACVTAP_VEPA,
    NETSETUP_MACVTAP_PRIVATE,
    NETSETUP_MACVTAP_PASSTHRU,
};
/* Creates macvtap `name` on host interface `parent` with the guest's MAC and brings
 * it up. Unlike a tap it persists: delete it with netsetup_link_delete(). In passthru
 * mode the kernel gives the parent the guest's MAC too, and deleting the macvtap
 * does not restore the parent's old one. */
int netsetup_macvtap_create(const char *name, const char *parent, enum netsetup_macvtap_mode mode,
                            const char *mac, struct qv_err *e);
/* Opens the macvtap's character device once per queue. /dev/tapIFINDEX is used when
 * it is the right device; otherwise (no devtmpfs node, or a node of another network
 * namespace with the same ifindex) a node is made with the major:minor from
 * /sys/class/net/NAME/macvtap/tapN/dev in a private directory under `node_dir`
 * ("/dev" when NULL; it must allow device nodes) and unlinked once open. sysfs must
 * be mounted from the caller's network namespace. */
int netsetup_macvtap_open(const char *name, unsigned queues, const char *node_dir, int *fds,
                          struct qv_err *e);

/* ---- nftables ---------------------------------------------------------------------------
 * qvisor touches only its own tables, one pair per running network:
 *   table inet   qvisor-NET   forward/input filter, dnat, masquerade, DHCP checksum fix
 *   table bridge qvisor-NET   per-NIC filters: sets keyed by the tap's name (out_taps,
 *                             in_taps, tap_mac, tap_ipv4, deny_out*, allow_in*) read by
 *                             two shared chains, from_guest and to_guest
 * A network's rules are one transaction; removing the network deletes both tables,
 * so no trace of qvisor is left when nothing runs. A NIC filter is only set elements
 * (three for clean-traffic with one address: the tap, its MAC, its address), added,
 * replaced or removed in one transaction that never touches other NICs' elements;
 * chains and rules are the same whatever the number of NICs, so a NIC's cost does not
 * grow with the others'. A context remembers the elements it wrote, so replacing or
 * removing them needs no listing; a context that did not write them (a restarted
 * supervisor, net gc) reads the network's sets once, which costs about 12 us per
 * element present.
 *
 * An accept in our tables does not override a drop in someone else's: a host whose
 * own forward chain has policy drop must accept qvisor's bridges there too (see
 * netsetup/README.md); qvisor never edits other tables. */
struct netsetup_nft;
int netsetup_nft_open(struct netsetup_nft **out, struct qv_err *e);
void netsetup_nft_close(struct netsetup_nft *n);
void netsetup_nft_closep(struct netsetup_nft **n);
#define _cleanup_nft_ _cleanup_(netsetup_nft_closep)
/* Runs one nft script as a single transaction; errors carry nft's own message. */
int netsetup_nft_run(struct netsetup_nft *n, const char *what, const char *script, struct qv_err *e);

/* A uid's outbound filter (nft_uid.c): table inet qvisor_uid_UID lets that uid open TCP
 * connections only to `addrs` ("IP:PORT", "[IP6]:PORT"; NULL-terminated) and rejects
 * everything else new it sends; replies on connections it accepted pass. Apply again
 * to replace the list (one transaction); removing an absent table is success. */
#define NETSETUP_UID_TABLE_PREFIX "qvisor_uid_"
void netsetup_uid_filter_table(uid_t uid, char *out, size_t outlen);
int netsetup_nft_uid_filter_apply(struct netsetup_nft *n, uid_t uid, const char *const *addrs, struct qv_err *e);
int netsetup_nft_uid_filter_remove(struct netsetup_nft *n, uid_t uid, struct qv_err *e);

enum netsetup_net_mode {
    NETSETUP_NAT,       /* masquerade to the outside, only replies and port forwards in */
    NETSETUP_ISOLATED,  /* guests reach each other and the host's DHCP/DNS, nothing else */
    NETSETUP_ROUTED,    /* forwarded both ways without NAT */
};
extern const char *const netsetup_net_mode_names[];     /* "nat", "isolated", "routed" */

struct netsetup_forward {
    int proto;                  /* IPPROTO_TCP or IPPROTO_UDP */
    uint16_t host_port;
    const char *guest_ip;       /* IPv4, inside the network */
    uint16_t guest_port;
};

struct netsetup_net {
    const char *name;           /* network name: the tables are qvisor-NAME */
    const char *bridge;
    enum netsetup_net_mode mode;
    unsigned mtu;               /* 0 = kernel default */
    const char *ipv4;           /* the host's address on the bridge, "10.77.0.1/24"; may be NULL */
    const char *ipv6;           /* "fd77::1/64"; may be NULL */
    const struct netsetup_forward *forwards;
    size_t nforwards;
};

/* Writes (or atomically replaces) the network's rules. The NIC filters already in its
 * bridge table are kept, so this is safe while guests run. */
int netsetup_nft_net_apply(struct netsetup_nft *n, const struct netsetup_net *net, struct qv_err *e);
/* A port forward of a running network, added or removed live as its own rules (one
 * transaction each): other forwards and their connections are not touched. Adding a
 * forward of a port already forwarded replaces it; removing matches protocol and
 * host_port only (guest_ip may be NULL) and an absent forward is success. -ENOENT when
 * the network is not running (or has no IPv4 forwarding: mode isolated). */
#define NETSETUP_FWD_COMMENT "qvisor forward "
int netsetup_nft_forward_add(struct netsetup_nft *n, const char *network, const struct netsetup_forward *f,
                             struct qv_err *e);
int netsetup_nft_forward_remove(struct netsetup_nft *n, const char *network, const struct netsetup_forward *f,
                                struct qv_err *e);
/* Deletes the network's tables and everything in them; absent is success. */
int netsetup_nft_net_remove(struct netsetup_nft *n, const char *network, struct qv_err *e);
/* Sorted names of networks that have qvisor tables. */
int netsetup_nft_net_list(struct netsetup_nft *n, struct strv *networks, struct qv_err *e);

/* One rule of a NIC filter: a protocol with its ports or ICMP type, and optionally
 * addresses. Rules with an address live in interval sets, which hold no two entries
 * that overlap: netsetup_port_clash() tells which two rules of one direction cannot
 * both be there. */
struct netsetup_port {
    int proto;                  /* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6, or 0 (any
                                 * protocol: only with an address) */
    uint16_t lo, hi;            /* TCP/UDP: inclusive range; hi 0 means lo only */
    bool typed;                 /* ICMP/ICMPv6: `type` is matched; untyped ICMP means echo-request,
                                 * IPv4 and IPv6 alike (untyped ICMPv6: IPv6's only) */
    uint8_t type;
    const char *source, *destination;   /* CIDRs ("10.0.0.0/8", "fd00::/64", or an address alone) of
                                         * one family, NULL: any; ICMP is IPv4's, ICMPv6 IPv6's */
};

/* A rule's address or prefix: "10.1.0.0/16", "fd00::/8", "10.0.0.7" (/32). Stricter
 * than netsetup_cidr_parse: false when it has bits set past its prefix (`why` says
 * what is wrong, naming the network then). */
bool netsetup_prefix_parse(const char *s, struct netsetup_cidr *c, char *why, size_t whylen);
/* The ICMP (IPPROTO_ICMP) or ICMPv6 type called `name` as nft names it ("echo-request",
 * "nd-neighbor-solicit"), -1 if none; and the name of a type, NULL if it has none. */
int netsetup_icmp_type(int proto, const char *name);
const char *netsetup_icmp_type_name(int proto, unsigned type);
/* Whether rules a and b of one direction go to one interval set and overlap there
 * (nftables refuses the second); false for rules without addresses, which never clash. */
bool netsetup_port_clash(const struct netsetup_port *a, const struct netsetup_port *b);

/* clean-traffic for one NIC: the guest may send only from `mac`, from one of `ipv4`
 * (until one is known: DHCP and ARP probes only) and ARP for it; IPv6 is allowed from
 * its MAC; other ethertypes (VLAN tags included) are dropped.
 * deny_out: traffic from the guest that a rule matches is dropped (its destination
 * port, ICMP type, source and destination addresses).
 * restrict_in: when true, traffic to the guest is limited, statelessly (this kernel
 * has no bridge conntrack), to: ARP and IPv6 neighbour discovery, TCP segments that do
 * not open a connection, UDP replies from DNS/DHCP/NTP ports, ICMP and ICMPv6 replies
 * and errors (echo replies, unreachable, time exceeded, ...), and what an `allow_in`
 * rule matches (new TCP connections and UDP datagrams to its ports, ICMP requests of
 * its type, anything from its source addresses...). */
struct netsetup_nic_filter {
    const char *mac;
    const char *const *ipv4;    /* NULL-terminated, may be NULL */
    bool restrict_in;
    const struct netsetup_port *allow_in;
    size_t nallow_in;
    const struct netsetup_port *deny_out;
    size_t ndeny_out;
};
/* Adds or replaces the filter of `tap` in `network`'s bridge table, in one
 * transaction. The network must be running (-ENOENT "network N is not running"
 * otherwise). When the guest's address is learnt (a lease) or changes, apply the
 * filter again with `ipv4` filled in. */
int netsetup_nft_nic_apply(struct netsetup_nft *n, const char *network, const char *tap,
                           const struct netsetup_nic_filter *f, struct qv_err *e);
/* Removes the tap's filter, every element keyed by its name, also half of one left by
 * hand; absent (or the network not running) is success. */
int netsetup_nft_nic_remove(struct netsetup_nft *n, const char *network, const char *tap,
                            struct qv_err *e);
/* Sorted tap names that have any filter element in the network (none when it is not
 * running). Reads every element: for garbage collection, not for each NIC. */
int netsetup_nft_nic_list(struct netsetup_nft *n, const char *network, struct strv *taps,
                          struct qv_err *e);

/* ---- putting a network and a NIC together --------------------------------------------- */
/* Bridge (adopted if it exists), addresses, forwarding when the mode routes
 * (changes are appended to `log`, may be NULL) and the rules. On failure what was
 * made is left for netsetup_net_down(), which the caller's cleanup runs anyway. */
int netsetup_net_up(struct netsetup_nft *n, const struct netsetup_net *net, struct strv *log,
                    struct qv_err *e);
/* Removes rules and bridge by name; absent parts are skipped. */
int netsetup_net_down(struct netsetup_nft *n, const char *network, const char *bridge,
                      struct qv_err *e);

struct netsetup_nic {
    const char *tap;            /* from netsetup_tap_name(), recorded before this call */
    unsigned queues;            /* 1..NETSETUP_MAX_QUEUES */
    const char *bridge;
    const char *network;        /* managed network holding the filter; NULL on a plain bridge */
    const struct netsetup_nic_filter *filter;   /* NULL: no filtering */
    unsigned vlan;              /* 0: none; else the tap is an access port of it (netsetup_port_vlan) */
    bool own_bridge;            /* the bridge is a qvisor network's: VLAN filtering may be turned on */
};
/* Opens the tap, attaches it and installs the filter; fds[0..queues) are for QEMU.
 * On failure nothing is left behind. */
int netsetup_nic_plug(struct netsetup_nft *n, const struct netsetup_nic *nic, int *fds,
                      struct qv_err *e);
/* Removes the filter and, if QEMU has not already made it vanish, the tap. */
int netsetup_nic_unplug(struct netsetup_nft *n, const char *network, const char *tap,
                        struct qv_err *e);

/* ---- dnsmasq --------------------------------------------------------------------------- */
struct netsetup_dhcp_host {
    const char *mac;
    const char *ip;             /* may be NULL: a name only */
    const char *name;           /* may be NULL */
};

struct netsetup_dnsmasq {
    const char *network;        /* for messages */
    const char *run_dir;        /* existing directory for config, hosts, leases, pid; the
                                 * dnsmasq user must be able to search it (0755) to re-read
                                 * hosts on SIGHUP */
    const char *bridge;
    const char *ipv4;           /* host address "10.77.0.1/24"; NULL: no DHCPv4 */
    const char *dhcp_start, *dhcp_end;  /* NULL: no dynamic range (static hosts only) */
    unsigned lease_time;        /* seconds; 0 = 3600 */
    const struct netsetup_dhcp_host *hosts;
    size_t nhosts;
    const char *ipv6;           /* host address "fd77::1/64"; NULL: no RA/DHCPv6 */
    const char *dhcp6_start, *dhcp6_end;    /* NULL: stateless (RA + SLAAC) */
    bool no_router;             /* isolated networks: guests get no default route via the host */
    const char *domain;         /* guest names resolve as NAME.DOMAIN; may be NULL */
    const char *const *forwarders;  /* NULL-terminated upstream DNS servers; NULL or empty:
                                     * the host's /etc/resolv.conf */
    const char *user;           /* NULL: "dnsmasq" when that user exists, else "nobody" */
    const char *dnsmasq;        /* binary; NULL: /usr/sbin/dnsmasq */
};

/* Paths of the files under run_dir. */
#define NETSETUP_DNSMASQ_CONF "dnsmasq.conf"
#define NETSETUP_DNSMASQ_LEASES "dnsmasq.leases"
#define NETSETUP_DNSMASQ_PID "dnsmasq.pid"

/* Writes dnsmasq.conf, the DHCP hosts file and the DNS hosts file (atomically). After
 * a change of hosts alone, SIGHUP makes a running dnsmasq re-read them. */
int netsetup_dnsmasq_write(const struct netsetup_dnsmasq *c, struct qv_err *e);
/* Writes the files and starts dnsmasq (fork + execve, in the foreground, only our
 * config file) with stdin on /dev/null and stdout/stderr on log_fd (-1: inherit).
 * Returns once dnsmasq wrote its pid file (it is serving) or fails with its exit
 * status explained if it quit first; the caller reaps and restarts it. */
int netsetup_dnsmasq_spawn(const struct netsetup_dnsmasq *c, int log_fd, int timeout_ms, pid_t *pid,
                           struct qv_err *e);
/* A dnsmasq left running from run_dir (pid file naming a live dnsmasq with our config
 * on its command line): its pid, or -ESRCH. */
int netsetup_dnsmasq_find(const char *run_dir, pid_t *pid);

struct netsetup_lease {
    int64_t expiry;             /* seconds since the epoch; 0 = infinite */
    bool ipv6;
    char mac[18];               /* "" for DHCPv6 leases */
    char ip[INET6_ADDRSTRLEN];
    char hostname[256];         /* "" when the client sent none */
    char client_id[256];        /* DHCPv4 client-id or DHCPv6 DUID; "" when none */
    uint32_t iaid;              /* DHCPv6 */
};
/* Parses dnsmasq's lease file; a missing file is no leases. *out is freed with free(). */
int netsetup_leases_read(const char *path, struct netsetup_lease **out, size_t *n, struct qv_err *e);

#endif
