/* Between the control socket (ctl.c: clients, replies) and what its requests do
 * (ctl_verbs.c: the table of verbs). Private to the two (and their unit tests). */
#ifndef QVISOR_SUPERVISOR_CTL_VERBS_H
#define QVISOR_SUPERVISOR_CTL_VERBS_H

#include "launcher/supervisor/internal.h"

#define CLIENT_OUT_MAX (1u << 20)   /* a client that does not read is dropped past this */
#define CTL_CLIENTS_MAX 64          /* ctl.sock connections at once; more are turned away */
#define CTL_IDLE_MS 10000           /* a half-written or silent request client is dropped then */
#define CTL_ACCEPT_BACKOFF_MS 100   /* out of descriptors: accept() rests this long */

enum client_mode { CLIENT_REQUEST, CLIENT_EVENTS, CLIENT_CONSOLE };

struct sup_client {
    struct ev ev;
    int fd;
    unsigned id;
    enum client_mode mode;
    struct buf in, out;
    size_t out_off;         /* bytes of `out` already sent: large replies go out without memmove */
    uint64_t idle_since;    /* request mode: connected, last completed a line or got a reply */
    unsigned owed;          /* requests read and not answered yet */
    bool waits_for_stop;    /* replied to when QEMU is gone */
    bool close_after_write;
    bool dead;
    struct sup_client *next;
};

/* ctl.c: a client on a connected socket (ctl_accept's, or a unit test's); the
 * number of clients served now */
struct sup_client *ctl_client_add(struct sup *s, int fd);
unsigned ctl_client_count(const struct sup *s);

/* ctl.c */
void ctl_reply_ok(struct sup *s, struct sup_client *c);
/* code: the negative errno the CLI turns into its exit status */
void ctl_reply_error(struct sup *s, struct sup_client *c, int code, const char *fmt, ...) QV_PRINTF(4, 5);
/* Raw bytes to a client (a console's replay). */
void ctl_client_write(struct sup *s, struct sup_client *c, const char *data, size_t n);
/* A QMP command on the client's behalf; QEMU's answer goes back to it, if it is still
 * there, as {"ok": true} (CTL_AS_OK), with "return" (CTL_AS_RETURN) or with "output"
 * (CTL_AS_HMP). Takes args. */
enum ctl_qmp_shape { CTL_AS_OK, CTL_AS_RETURN, CTL_AS_HMP };
void ctl_client_qmp(struct sup *s, struct sup_client *c, const char *cmd, json_object *args,
                    enum ctl_qmp_shape shape, int timeout);

/* ctl_verbs.c: serves one request that passed ctl_parse_request; every path replies
 * (now, or once QEMU or a job answers). */
void ctl_handle_request(struct sup *s, struct sup_client *c, json_object *req);
/* Whether the table has a verb for cmd (every request kind ctl_request.c checks). */
bool ctl_verb_known(const char *cmd);
size_t ctl_verb_count(void);

#endif
