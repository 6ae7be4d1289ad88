/* Internal to qmp/: the connection's state, shared by the core (qmp.c: commands,
 * output queue, timeouts, the public API) and the reader (reader.c: framing,
 * parsing, greeting, replies and events). */
#ifndef QV_QMP_INTERNAL_H
#define QV_QMP_INTERNAL_H

#include <json-c/json.h>

#include "qmp/qmp.h"

/* One read() is bounded by this chunk, and one qmp_handle_io call by READ_BUDGET,
 * so a peer that floods us cannot starve the caller's other file descriptors. */
#define READ_CHUNK (64u << 10)
#define READ_BUDGET (1u << 20)
/* The kernel's limit on descriptors in one SCM_RIGHTS message (SCM_MAX_FD). */
#define MAX_FDS 253
#define MAX_IOV 16
/* After a message larger than this the tokener is replaced, to give its memory back. */
#define BIG_MESSAGE (1u << 20)

enum cmd_kind {
    CMD_PLAIN,
    CMD_GREETING,       /* waits for the greeting, then becomes CMD_CAPABILITIES */
    CMD_CAPABILITIES,
    CMD_SYNC,           /* guest-sync-delimited: answered after a 0xFF, without id */
};

struct qmp_cmd {
    struct qmp_cmd *next;
    enum cmd_kind kind;
    uint64_t id;            /* the N of "qv-N"; unused for greeting and sync */
    int64_t sync_id;
    char name[64];
    uint64_t deadline_ms;
    int timeout_ms;
    unsigned flags;
    qmp_reply_fn done;
    void *ctx;
};

struct qmp_out {
    struct qmp_out *next;
    char *data;
    size_t len, off;
    int *fds;               /* our duplicates, closed once sent */
    size_t nfds;
    bool handshake;         /* qmp_capabilities: never held back */
};

struct qmp {
    int fd;
    enum qmp_proto proto;
    qmp_event_fn on_event;
    void *ctx;

    json_tokener *tok;
    struct buf in;          /* received, not yet fed to the tokener */
    size_t fed;             /* bytes fed into the current unfinished message */
    char *rbuf;

    struct qmp_cmd *cmds;   /* oldest first */
    struct qmp_out *out;    /* oldest first */
    uint64_t next_id;
    unsigned callback_depth;

    bool greeting_seen, ready, closed;
    bool handshaking;       /* from qmp_handshake until capabilities succeeded or failed */
    /* Agent stream state: `unsynced` from a guest-sync-delimited until its echo
     * (input is discarded up to each 0xFF); `after_sentinel` while parsing the
     * message that follows a 0xFF, which is only ever a sync echo. */
    bool unsynced, after_sentinel;

    char close_reason[256];
    int major, minor, micro;
    char version[48];
};

const char *qmpi_peer_name(const struct qmp *q);
const char *qmpi_proto_name(const struct qmp *q);
void qmpi_cmd_append(struct qmp *q, struct qmp_cmd *c);
void qmpi_cmd_unlink(struct qmp *q, struct qmp_cmd *c);
struct qmp_cmd *qmpi_cmd_find_kind(const struct qmp *q, enum cmd_kind kind);
struct qmp_cmd *qmpi_cmd_find_id(const struct qmp *q, json_object *id);
struct qmp_cmd *qmpi_cmd_oldest_sent(const struct qmp *q, bool skip_no_reply);
/* Closes the connection: every pending command fails with the reason. */
void qmpi_close_connection(struct qmp *q, const char *fmt, ...) QV_PRINTF(2, 3);
void qmpi_cmd_complete(struct qmp *q, struct qmp_cmd *c, json_object *ret, const struct qv_err *err);
void qmpi_cmd_fail(struct qmp *q, struct qmp_cmd *c, int code, const char *fmt, ...) QV_PRINTF(4, 5);
int qmpi_queue_output(struct qmp *q, char *data, const int *fds, size_t nfds, bool handshake);

/* reader.c */
json_tokener *qmpi_tokener_new(void);
void qmpi_start_capabilities(struct qmp *q, struct qmp_cmd *c);
/* Reads what is there (within the read budget) and dispatches whole messages. */
void qmpi_read_input(struct qmp *q);

#endif
