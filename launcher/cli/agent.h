/* Internal to launcher/cli: the guest agent verbs. agent.c keeps the connection to
 * the VM's supervisor (which owns the agent channel) and the agent/ifaddr verbs;
 * agent_exec.c is exec, agent_cp.c is cp. */
#ifndef QV_CLI_AGENT_H
#define QV_CLI_AGENT_H

#include "launcher/cli/cli.h"

/* One connection to the supervisor, many agent commands. */
struct agent_conn {
    int fd;
    struct buf in;
    const char *vm;
};

int agent_conn_open(struct cli *c, const char *vm, struct agent_conn *ac);
void agent_conn_close(struct agent_conn *ac);
/* Sends req (consumed) and reads its reply into *reply (NULL: dropped). */
int agent_conn_call(struct cli *c, struct agent_conn *ac, json_object *req, int timeout_ms, json_object **reply);
/* One agent command: *ret (may be NULL) gets a new reference to its "return". */
int agent_cmd(struct cli *c, struct agent_conn *ac, const char *execute, json_object *args, int timeout_ms,
              json_object **ret);

#endif
