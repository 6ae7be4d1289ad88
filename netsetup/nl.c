#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>

#include <netlink/errno.h>

#include "netsetup/internal.h"

static int record_error(struct sockaddr_nl *nla, struct nlmsgerr *err, void *arg)
{
    (void)nla;
    struct nlh *h = arg;
    h->kernel_err = err->error < 0 ? err->error : -err->error;
    return NL_STOP;
}

int nlh_open(struct nlh *h, struct qv_err *e)
{
    h->kernel_err = 0;
    h->sk = NULL;
    int r = ns_dl_libnl(e);
    if (r < 0)
        return r;
    h->sk = sym_nl_socket_alloc();
    if (!h->sk)
        return qv_fail(e, -ENOMEM, "netlink: cannot allocate a socket");
    r = sym_nl_connect(h->sk, NETLINK_ROUTE);
    if (r < 0) {
        r = nlh_errno(h, r);
        sym_nl_socket_free(h->sk);
        h->sk = NULL;
        return qv_failerr(e, r, "netlink: cannot connect");
    }
    sym_nl_socket_modify_err_cb(h->sk, NL_CB_CUSTOM, record_error, h);
    return 0;
}

void nlh_close(struct nlh *h)
{
    if (h->sk)
        sym_nl_socket_free(h->sk);
    h->sk = NULL;
}

int nlh_errno(struct nlh *h, int nle)
{
    if (h && h->kernel_err) {
        int r = h->kernel_err;
        h->kernel_err = 0;
        return r;
    }
    static const struct { int nle, err; } map[] = {
        {NLE_NOMEM, ENOMEM},        {NLE_EXIST, EEXIST},       {NLE_OBJ_NOTFOUND, ENODEV},
        {NLE_NODEV, ENODEV},        {NLE_BUSY, EBUSY},         {NLE_INVAL, EINVAL},
        {NLE_RANGE, ERANGE},        {NLE_PERM, EPERM},         {NLE_NOACCESS, EACCES},
        {NLE_OPNOTSUPP, EOPNOTSUPP}, {NLE_AGAIN, EAGAIN},      {NLE_MSGSIZE, EMSGSIZE},
        {NLE_AF_NOSUPPORT, EAFNOSUPPORT}, {NLE_INTR, EINTR},   {NLE_BAD_SOCK, EBADF},
        {NLE_NOADDR, EADDRNOTAVAIL},
    };
    int code = nle < 0 ? -nle : nle;
    for (size_t i = 0; i < ARRAY_SIZE(map); i++)
        if (map[i].nle == code)
            return -map[i].err;
    return -EIO;
}

int nlh_request(struct nlh *h, struct nl_msg *msg)
{
    h->kernel_err = 0;
    int r = sym_nl_send_auto(h->sk, msg);
    if (r >= 0)
        r = sym_nl_wait_for_ack(h->sk);
    return r < 0 ? nlh_errno(h, r) : 0;
}

int nlh_get_link(struct nlh *h, const char *name, struct rtnl_link **out)
{
    h->kernel_err = 0;
    int r = sym_rtnl_link_get_kernel(h->sk, 0, name, out);
    return r < 0 ? nlh_errno(h, r) : 0;
}

struct nl_msg *nlh_newlink_msg(int ifindex, unsigned ifi_flags, unsigned ifi_change, int nlm_flags)
{
    struct nl_msg *msg = sym_nlmsg_alloc_simple(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | nlm_flags);
    if (!msg)
        abort();
    struct ifinfomsg ifi = {
        .ifi_family = AF_UNSPEC,
        .ifi_index = ifindex,
        .ifi_flags = ifi_flags,
        .ifi_change = ifi_change,
    };
    if (sym_nlmsg_append(msg, &ifi, sizeof(ifi), NLMSG_ALIGNTO) < 0)
        abort();
    return msg;
}

void nlh_put(struct nl_msg *msg, int attr, size_t len, const void *data)
{
    if (sym_nla_put(msg, attr, (int)len, data) < 0)
        abort();
}

void nlh_put_u32(struct nl_msg *msg, int attr, uint32_t v)
{
    nlh_put(msg, attr, sizeof(v), &v);
}

void nlh_put_str(struct nl_msg *msg, int attr, const char *s)
{
    nlh_put(msg, attr, strlen(s) + 1, s);
}

struct nlattr *nlh_nest(struct nl_msg *msg, int attr)
{
    struct nlattr *a = sym_nla_nest_start(msg, attr);
    if (!a)
        abort();
    return a;
}

void nl_msg_freep(struct nl_msg **m)
{
    if (*m)
        sym_nlmsg_free(*m);
}

void rtnl_link_putp(struct rtnl_link **l)
{
    if (*l)
        sym_rtnl_link_put(*l);
}

void nl_cache_freep(struct nl_cache **c)
{
    if (*c)
        sym_nl_cache_free(*c);
}

void nl_addr_putp(struct nl_addr **a)
{
    if (*a)
        sym_nl_addr_put(*a);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool ns_mac_parse(const char *s, unsigned char out[6])
{
    if (!s || strlen(s) != 17)
        return false;
    for (int i = 0; i < 6; i++) {
        int hi = hexval(s[3 * i]), lo = hexval(s[3 * i + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && s[3 * i + 2] != ':'))
            return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

void ns_close_fds(int *fds, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

void ns_fd_guard_release(struct ns_fd_guard *g)
{
    if (g->fds)
        ns_close_fds(g->fds, g->n);
}

void ns_closedirp(DIR **d)
{
    if (*d)
        closedir(*d);
}
