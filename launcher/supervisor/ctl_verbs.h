/* Between the control socket (ctl.c: clients, replies) and what its requests do
 * (ctl_verbs.c: the table of verbs). Private to the two. */
#ifndef QVISOR_SUPERVISOR_CTL_VERBS_H
#define QVISOR_SUPERVISOR_CTL_VERBS_H

#include "launcher/supervisor/internal.h"

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
