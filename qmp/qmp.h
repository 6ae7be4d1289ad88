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

/* One JSON message from QEMU or the agent. Generous: 3x libvirt's 10 MiB, enough for
 * `hmp 'xp /2000000x 0'` (about 31 MiB of text); QEMU itself refuses input tokens
 * over 64 MiB. A larger message fails the pending commands with "larger than N
 * bytes" and closes the connection (the supervisor then reconnects): the stream
 * cannot be resynchronised in the middle of a message. The supervisor holds such
 * a message about four times while it passes it on, so this bounds its memory. */
#define QMP_MAX_MESSAGE (32u << 20)
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
 * or a closed connection (-ECONNRESET). err->code for QEMU errors: -EOPNOTSUPP for
 * CommandNotFound and KVMMissingCap, -ENOENT for DeviceNotFound, -ENODEV for
 * DeviceNotActive, -EIO otherwise. A QMP_NO_REPLY_OK command completed by hang-up or
 * timeout gets ret == NULL and err == NULL.
 * Every pending command gets exactly one call. Callbacks (these and events) may call
 * qmp_send; they must not call the blocking helpers below, nor qmp_free (it
 * aborts): free after qmp_handle_io returns. */
typedef void (*qmp_reply_fn)(void *ctx, json_object *ret, const struct qv_err *err);

/* Takes ownership of fd (a connected stream socket) and makes it non-blocking and
 * close-on-exec. NULL with errno set (fd closed) if that fails or fd < 0. */
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

/* Starts the monitor handshake: greeting, then qmp_capabilities, both within
 * timeout_ms. `done` is called once with the capabilities reply or the error.
 * -EINVAL on an agent, -EALREADY if a handshake is running or done.
 * Commands sent while the handshake runs are held back and go out once it
 * succeeded (QEMU would refuse them before qmp_capabilities). A failed handshake
 * closes the connection: a monitor without capabilities is of no use. */
int qmp_handshake(struct qmp *q, int timeout_ms, qmp_reply_fn done, void *ctx);

/* Queues a command with id "qv-N" and sends what the socket takes at once. `args`
 * (may be NULL, else an object) is consumed, also on failure. fds are duplicated and
 * sent with SCM_RIGHTS on the sendmsg that starts the command's bytes, which carries
 * no other command (for getfd / add-fd); the caller keeps its copies and may close
 * them at once. timeout_ms <= 0 means QMP_TIMEOUT_DEFAULT. done may be NULL.
 * Fails (no callback) with -ECONNRESET once the connection is closed.
 * flags: QMP_NO_REPLY_OK for commands that may legitimately close the connection or
 * never answer (guest-shutdown): those complete with success on hang-up/timeout. */
#define QMP_NO_REPLY_OK 1u
int qmp_send(struct qmp *q, const char *cmd, json_object *args, const int *fds, size_t nfds,
             int timeout_ms, unsigned flags, qmp_reply_fn done, void *ctx);
/* Guest agent only: sends 0xFF and guest-sync-delimited with a random id and discards
 * everything until a 0xFF followed by its echo, so a stale reply never answers a new
 * command. -EBUSY while other commands are pending. If the sync fails, input stays
 * discarded until a later sync succeeds. Agent replies without an id (old agents
 * may not echo ids) answer the oldest command not flagged QMP_NO_REPLY_OK; the agent
 * answers in order. */
int qmp_agent_sync(struct qmp *q, int timeout_ms, qmp_reply_fn done, void *ctx);

/* Event loop integration. handle_io reads and/or writes what it can, parses complete
 * messages and dispatches replies and events; it returns -ECONNRESET when the peer
 * closed or sent something that made us close (oversized, too deep, not JSON, invalid
 * UTF-8, not an object), after failing every pending command. It reads at most 1 MiB
 * per call, so register the fd level-triggered. After -ECONNRESET the fd stays open
 * (shut down) until qmp_free: remove it from the epoll set; later calls return
 * -ECONNRESET again without callbacks. A reply whose id matches no pending command
 * (e.g. one that came after its timeout) is dropped; an error without id fails the
 * oldest pending command, since QEMU sends those for input it could not parse. */
int qmp_handle_io(struct qmp *q, uint32_t epoll_events, struct qv_err *e);
/* EPOLLIN, plus EPOLLOUT while output is queued. */
uint32_t qmp_poll_events(const struct qmp *q);
/* Earliest deadline of a pending command (CLOCK_MONOTONIC ms), 0 if none. */
uint64_t qmp_next_deadline(const struct qmp *q);
/* Fails commands whose deadline passed with -ETIMEDOUT; QMP_NO_REPLY_OK ones
 * complete with success. */
void qmp_expire(struct qmp *q, uint64_t now_ms);
size_t qmp_pending(const struct qmp *q);
/* The event callback and context given to qmp_new, for a new connection to the
 * same peer after this one was lost. */
void qmp_event_handler(const struct qmp *q, qmp_event_fn *on_event, void **ctx);

/* ---- blocking helpers (CLI, tests, start-up) ---- */
/* Connects to a unix socket path (also one longer than sun_path) and does the
 * handshake (monitor) or guest-sync-delimited (agent), all within timeout_ms. */
int qmp_connect_path(const char *path, enum qmp_proto proto, int timeout_ms, qmp_event_fn on_event,
                     void *ctx, struct qmp **out, struct qv_err *e);
/* Does the handshake on an existing qmp (monitor) within timeout_ms. */
int qmp_handshake_sync(struct qmp *q, int timeout_ms, struct qv_err *e);
/* Sends one command and runs I/O until its reply; events seen meanwhile go to the
 * event callback. *ret (if non-NULL) receives a new reference to "return". */
int qmp_call(struct qmp *q, const char *cmd, json_object *args, const int *fds, size_t nfds,
             int timeout_ms, json_object **ret, struct qv_err *e);
/* qmp_call with flags and neither fds nor result: QMP_NO_REPLY_OK commands
 * (guest-shutdown) return 0 when the peer hangs up or timeout_ms passes. */
int qmp_call_flags(struct qmp *q, const char *cmd, json_object *args, int timeout_ms, unsigned flags,
                   struct qv_err *e);
/* Blocking qmp_agent_sync. */
int qmp_agent_sync_call(struct qmp *q, int timeout_ms, struct qv_err *e);

#endif
