/* qmp: a small non-blocking client for the QEMU Machine Protocol and for
 * qemu-guest-agent, usable from an epoll loop and, for the CLI and tests, in a
 * blocking form. Replies are matched by id; events may arrive at any time. */
#ifndef QV_QMP_H
#define QV_QMP_H

#include "common/common.h"

enum qmp_proto {
    QMP_MONITOR,    /* greeting, qmp_capabilities, events */
    QMP_AGENT,      /* qemu-guest-agent: no greeting, guest-sync-delimited */
};

#define QMP_MAX_MESSAGE (16u << 20)   /* one JSON message; larger closes the connection */
#define QMP_MAX_DEPTH 64              /* nesting of one message */
#define QMP_TIMEOUT_DEFAULT 5000      /* ms: most commands */
#define QMP_TIMEOUT_DEVICE 60000      /* device_add, blockdev-add, netdev_add */
#define QMP_TIMEOUT_JOB 600000        /* block jobs, migration steps */

struct qmp;

/* An event: name, its "data" (may be NULL) and "timestamp" as microseconds. */
typedef void (*qmp_event_fn)(void *ctx, const char *event, json_object *data, uint64_t ts_us);
/* A reply: on success err is NULL and ret the "return" value (borrowed for the call);
 * on failure ret is NULL and err carries QEMU's class and desc
 * ("CommandNotFound: The command foo has not been found"), a timeout (-ETIMEDOUT),
 * or a closed connection (-ECONNRESET). */
typedef void (*qmp_reply_fn)(void *ctx, json_object *ret, const struct qv_err *err);

/* Takes ownership of fd (a connected stream socket) and makes it non-blocking. */
struct qmp *qmp_new(int fd, enum qmp_proto proto, qmp_event_fn on_event, void *ctx);
/* Closes the fd; pending commands are NOT called back. */
void qmp_free(struct qmp *q);
int qmp_fd(const struct qmp *q);
/* True once the greeting was read and qmp_capabilities answered (always for agents
 * after qmp_agent_sync succeeded). */
bool qmp_ready(const struct qmp *q);
/* "7.2.22" style, from the greeting; "" before it. */
const char *qmp_qemu_version(const struct qmp *q);
void qmp_qemu_version_numbers(const struct qmp *q, int *major, int *minor, int *micro);

/* Starts the monitor handshake: greeting, then qmp_capabilities. `done` is called
 * once with the capabilities reply or the error. */
int qmp_handshake(struct qmp *q, int timeout_ms, qmp_reply_fn done, void *ctx);

/* Queues a command. `args` (may be NULL) is consumed. fds are sent with SCM_RIGHTS
 * along with the command (for getfd / add-fd); the caller keeps its copies.
 * flags: QMP_NO_REPLY_OK for commands that may legitimately close the connection or
 * never answer (guest-shutdown): those complete with success on hang-up/timeout. */
#define QMP_NO_REPLY_OK 1u
int qmp_send(struct qmp *q, const char *cmd, json_object *args, const int *fds, size_t nfds,
             int timeout_ms, unsigned flags, qmp_reply_fn done, void *ctx);
/* Guest agent only: sends guest-sync-delimited with a random id and discards
 * everything until its echo, so a stale reply never answers a new command. */
int qmp_agent_sync(struct qmp *q, int timeout_ms, qmp_reply_fn done, void *ctx);

/* Event loop integration. handle_io reads and/or writes what it can, parses complete
 * messages and dispatches replies and events; it returns -ECONNRESET when the peer
 * closed or sent something that made us close (oversized, too deep, not JSON, invalid
 * UTF-8, not an object), after failing every pending command. */
int qmp_handle_io(struct qmp *q, uint32_t epoll_events, struct qv_err *e);
/* EPOLLIN, plus EPOLLOUT while output is queued. */
uint32_t qmp_poll_events(const struct qmp *q);
/* Earliest deadline of a pending command (CLOCK_MONOTONIC ms), 0 if none. */
uint64_t qmp_next_deadline(const struct qmp *q);
/* Fails commands whose deadline passed with -ETIMEDOUT. */
void qmp_expire(struct qmp *q, uint64_t now_ms);
size_t qmp_pending(const struct qmp *q);

/* ---- blocking helpers (CLI, tests, start-up) ---- */
/* Connects to a unix socket path and, for monitors, does the handshake. */
int qmp_connect_path(const char *path, enum qmp_proto proto, int timeout_ms, qmp_event_fn on_event,
                     void *ctx, struct qmp **out, struct qv_err *e);
/* Does the handshake on an existing qmp (monitor) within timeout_ms. */
int qmp_handshake_sync(struct qmp *q, int timeout_ms, struct qv_err *e);
/* Sends one command and runs I/O until its reply; events seen meanwhile go to the
 * event callback. *ret (if non-NULL) receives a new reference to "return". */
int qmp_call(struct qmp *q, const char *cmd, json_object *args, const int *fds, size_t nfds,
             int timeout_ms, json_object **ret, struct qv_err *e);

#endif
