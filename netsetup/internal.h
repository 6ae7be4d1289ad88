/* netsetup internals shared by the module's files; not part of the public API. */
#ifndef QV_NETSETUP_INTERNAL_H
#define QV_NETSETUP_INTERNAL_H

#include "netsetup/dl.h"
#include "netsetup/netsetup.h"

/* A route-netlink socket that remembers the kernel's own errno: libnl folds
 * errors into its NLE_* codes, which lose the distinction users need
 * ("File exists" vs "Device or resource busy"). */
struct nlh {
    struct nl_sock *sk;
    int kernel_err;     /* -errno of the last NLMSG_ERROR, 0 if none */
};
/* Loads libnl on first use (dl.h): every use of libnl starts from an open nlh. */
int nlh_open(struct nlh *h, struct qv_err *e);
void nlh_close(struct nlh *h);
#define _cleanup_nlh_ _cleanup_(nlh_close)
/* -errno for a failed libnl call: the kernel's answer when there was one. */
int nlh_errno(struct nlh *h, int nle);
/* Sends a request and waits for its acknowledgement; 0 or -errno. */
int nlh_request(struct nlh *h, struct nl_msg *msg);
/* The kernel's current view of one link; -ENODEV when there is none. */
int nlh_get_link(struct nlh *h, const char *name, struct rtnl_link **out);
/* An RTM_NEWLINK message with an ifinfomsg header; flags are NLM_F_*. */
struct nl_msg *nlh_newlink_msg(int ifindex, unsigned ifi_flags, unsigned ifi_change, int nlm_flags);
/* Attribute writers for our small, fixed-size requests: running out of room in a
 * page-sized message is a bug, so they abort instead of returning. */
void nlh_put(struct nl_msg *msg, int attr, size_t len, const void *data);
void nlh_put_u32(struct nl_msg *msg, int attr, uint32_t v);
void nlh_put_str(struct nl_msg *msg, int attr, const char *s);
struct nlattr *nlh_nest(struct nl_msg *msg, int attr);

void nl_msg_freep(struct nl_msg **m);
void rtnl_link_putp(struct rtnl_link **l);
void nl_cache_freep(struct nl_cache **c);
void nl_addr_putp(struct nl_addr **a);
#define _cleanup_nlmsg_ _cleanup_(nl_msg_freep)
#define _cleanup_link_ _cleanup_(rtnl_link_putp)
#define _cleanup_cache_ _cleanup_(nl_cache_freep)
#define _cleanup_nladdr_ _cleanup_(nl_addr_putp)

/* "52:54:00:aa:bb:cc" -> bytes; false when malformed. */
bool ns_mac_parse(const char *s, unsigned char out[6]);

void ns_close_fds(int *fds, unsigned n);
/* Closes fds[0..n) at scope exit unless .fds was set to NULL (handed to the caller). */
struct ns_fd_guard {
    int *fds;
    unsigned n;
};
void ns_fd_guard_release(struct ns_fd_guard *g);
#define _cleanup_fd_guard_ _cleanup_(ns_fd_guard_release)

#include <dirent.h>
void ns_closedirp(DIR **d);
#define _cleanup_dir_ _cleanup_(ns_closedirp)

#endif
