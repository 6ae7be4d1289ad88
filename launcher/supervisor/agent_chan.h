/* Internal to the guest agent channel (agent.c) and the operations built on it
 * (agent_ops.c: passthrough, freeze, reboot/stop, exec). */
#ifndef QV_SUP_AGENT_CHAN_H
#define QV_SUP_AGENT_CHAN_H

#include "launcher/supervisor/internal.h"

enum agent_link {
    LINK_DOWN,          /* no connection to qga.sock */
    LINK_UNSYNCED,      /* connected; the stream needs a sync before use */
    LINK_SYNCING,
    LINK_READY,
};

/* `qvisor exec`: guest-exec, then guest-exec-status polled with back-off. */
struct exec_op {
    struct exec_op *next;
    unsigned id;            /* what its status requests carry: the op may be gone by then */
    unsigned client;
    int64_t pid;
    uint64_t deadline;
    uint64_t poll_at;       /* 0 while a status request is out */
    unsigned poll_ms;
    int timeout_ms;
    char path[256];
    /* >0: this op is the kill of that guest pid (a command past its timeout; path and
     * timeout_ms are that command's), by the kill_step-th way agent_ops.c knows */
    int64_t kill_of;
    unsigned kill_step;
};

/* stdin for a coming exec, sent ahead in pieces by its client (exec-input) */
struct exec_input {
    struct exec_input *next;
    unsigned client;
    struct buf b64;         /* the pieces' base64, concatenated (each a multiple of 3 bytes) */
    uint64_t touched;
};

struct agent_req;
struct agent_chan {
    struct qmp *q;
    enum agent_link link;
    char why[512];          /* why it is not ready */
    bool port_closed;       /* VSERPORT_CHANGE said the guest closed its port */
    bool reset_wanted;      /* close and reconnect, outside the qmp's callbacks */
    bool ever_ready;
    bool down_logged;
    uint64_t retry_at;      /* next connect or sync; 0: none planned */
    unsigned retry_ms;
    struct agent_req *queue;    /* not sent yet, oldest first */
    unsigned nqueued;
    struct agent_req *inflight;
    struct exec_op *execs;
    unsigned next_exec_id;
    struct exec_input *inputs;
};

/* The VM's channel, made on first use. */
struct agent_chan *agent_chan_get(struct sup *s);
/* agent_ops.c: the execs' polls and deadlines, and their end when QEMU goes. */
void agent_exec_expire(struct sup *s, uint64_t now);
uint64_t agent_exec_next_deadline(struct sup *s);
void agent_exec_wind_down(struct sup *s);
void agent_exec_inputs_free(struct sup *s);

#endif
