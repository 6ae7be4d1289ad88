/* The network libraries, loaded on first use (dl.c). qvisor does not link libnl-3,
 * libnl-route-3 and libnftables: a VM supervisor whose NICs are all user-mode, and
 * every CLI verb that does not touch the host's network, never maps them (with what
 * libnftables pulls in — libnftnl, libgmp, libxtables, libjansson, libmnl — about
 * 1.1 MiB of resident memory per process). nlh_open() and netsetup_nft_open() load
 * them; every other call into them happens on an object those returned.
 *
 * netsetup calls these libraries only through the pointers sym_NAME declared here,
 * typed with __typeof__ of the library's own prototype, so the compiler checks every
 * call against the headers. A direct call does not link (the libraries are not on
 * the link line). To use one more function, add it to its library's list below. */
#ifndef QV_NETSETUP_DL_H
#define QV_NETSETUP_DL_H

#include <netlink/netlink.h>
#include <netlink/attr.h>
#include <netlink/msg.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/route.h>
#include <nftables/libnftables.h>

#include "common/common.h"

/* One list per library: X(function) for every function netsetup calls. */
#define NS_DL_LIBNL_SYMBOLS(X)                                                                        \
    X(nl_addr2str) X(nl_addr_build) X(nl_addr_get_binary_addr) X(nl_addr_get_family)                 \
    X(nl_addr_get_len) X(nl_addr_get_prefixlen) X(nl_addr_put) X(nl_addr_set_prefixlen)              \
    X(nl_cache_free) X(nl_cache_get_first) X(nl_cache_get_next) X(nl_connect) X(nl_send_auto)         \
    X(nl_socket_alloc) X(nl_socket_free) X(nl_socket_modify_err_cb) X(nl_wait_for_ack)               \
    X(nla_nest_end) X(nla_nest_start) X(nla_put) X(nlmsg_alloc_simple) X(nlmsg_append) X(nlmsg_free)

#define NS_DL_LIBNL_ROUTE_SYMBOLS(X)                                                                  \
    X(rtnl_addr_add) X(rtnl_addr_alloc) X(rtnl_addr_alloc_cache) X(rtnl_addr_get_family)             \
    X(rtnl_addr_get_ifindex) X(rtnl_addr_get_local) X(rtnl_addr_get_prefixlen) X(rtnl_addr_put)      \
    X(rtnl_addr_set_broadcast) X(rtnl_addr_set_flags) X(rtnl_addr_set_ifindex)                       \
    X(rtnl_addr_set_local) X(rtnl_addr_set_prefixlen) X(rtnl_link_alloc) X(rtnl_link_alloc_cache)    \
    X(rtnl_link_delete) X(rtnl_link_get_addr) X(rtnl_link_get_flags) X(rtnl_link_get_ifindex)        \
    X(rtnl_link_get_kernel) X(rtnl_link_get_master) X(rtnl_link_get_mtu) X(rtnl_link_get_name)       \
    X(rtnl_link_get_type) X(rtnl_link_i2name) X(rtnl_link_name2i) X(rtnl_link_put)                   \
    X(rtnl_link_set_name) X(rtnl_route_alloc_cache) X(rtnl_route_get_dst) X(rtnl_route_get_table)    \
    X(rtnl_route_nexthop_n) X(rtnl_route_nh_get_ifindex)

#define NS_DL_LIBNFTABLES_SYMBOLS(X)                                                                  \
    X(nft_ctx_buffer_error) X(nft_ctx_buffer_output) X(nft_ctx_free) X(nft_ctx_get_error_buffer)     \
    X(nft_ctx_get_output_buffer) X(nft_ctx_new) X(nft_ctx_output_get_flags)                          \
    X(nft_ctx_output_set_flags) X(nft_run_cmd_from_buffer)

#define NS_DL_DECLARE(fn) extern __typeof__(fn) *sym_##fn;
NS_DL_LIBNL_SYMBOLS(NS_DL_DECLARE)
NS_DL_LIBNL_ROUTE_SYMBOLS(NS_DL_DECLARE)
NS_DL_LIBNFTABLES_SYMBOLS(NS_DL_DECLARE)
#undef NS_DL_DECLARE

/* Load libnl-3 and libnl-route-3, or libnftables, once per process (later calls
 * return at once); 0, or -ENOPKG with an error naming the library, the reason and
 * the Debian package to install. Thread-safe. */
int ns_dl_libnl(struct qv_err *e);
int ns_dl_libnftables(struct qv_err *e);

#endif
