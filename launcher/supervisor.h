/* Internal to launcher/: the per-VM supervisor (supervisor.c) and its control
 * socket (sup_ctl.c). One process per VM owns the only QMP connection. */
#ifndef QV_SUPERVISOR_H
#define QV_SUPERVISOR_H

#include <sys/socket.h>
#include <sys/un.h>

#include "launcher/launcher.h"
#include "qmp/qmp.h"

#define CONSOLE_RING (64u << 10)    /* recent console output kept for late attachers */
#define CLIENT_OUT_MAX (1u << 20)   /* a client that does not read is dropped past this */
#define CRASH_WINDOW_MS (10 * 60 * 1000)
#define CRASH_MAX 5                 /* restarts within the window before giving up */

enum ev_kind { EV_QMP, EV_CONSOLE, EV_CTL, EV_CLIENT, EV_SIGNAL, EV_PIDFD };

struct ev {
    enum ev_kind kind;
    struct sup_client *client;
};

enum client_mode { CLIENT_REQUEST, CLIENT_EVENTS, CLIENT_CONSOLE };

struct sup_client {
    struct ev ev;
    int fd;
    unsigned id;
    enum client_mode mode;
    struct buf in, out;
    bool waits_for_stop;    /* replied to when QEMU is gone */
    bool close_after_write;
    bool dead;
    struct sup_client *next;
};

struct notify {
    int fd;
    struct sockaddr_un addr;
    socklen_t len;
    uint64_t watchdog_ms;   /* 0: no watchdog */
    uint64_t next_ping;
};

struct sup {
    const struct qv_paths *paths;
    struct vm_def def;
    struct host_config hc;
    struct host_facts facts;
    char run_dir[PATH_MAX];
    int lock_fd, log_fd, epfd, sigfd, ready_fd, echo_fd;

    pid_t qemu_pid;
    int pidfd;
    bool qemu_is_child;
    struct qmp *qmp;
    struct ev ev_qmp, ev_console, ev_ctl, ev_signal, ev_pidfd;
    int console_fd;
    struct buf ring, line;
    uint64_t line_at;           /* when the partial console line last grew */
    int ctl_fd;
    struct sup_client *clients;
    unsigned next_client_id;
    struct vm_runstate rs;

    /* stopping: graceful (powerdown, again, quit, SIGTERM, SIGKILL) or forced */
    int stop_phase;
    uint64_t stop_next;         /* when the next phase starts */
    uint64_t stop_deadline;     /* graceful part ends: quit */
    bool expected_exit;         /* QEMU's exit is not a crash */
    char exit_reason[256];

    uint64_t crashes[CRASH_MAX + 1];
    int ncrashes;
    uint64_t restart_at;        /* a crashed QEMU is started again then; 0: none */

    struct notify notify;
    bool done;
    int exit_code;
};

/* supervisor.c */
void sup_log(struct sup *s, const char *fmt, ...) QV_PRINTF(2, 3);
void sup_set_state(struct sup *s, enum vm_state st);
void sup_begin_stop(struct sup *s, bool force, int timeout_ms);
void sup_kill(struct sup *s, const char *reason);
/* Sends a QMP command on behalf of the supervisor; errors are logged. */
void sup_qmp(struct sup *s, const char *cmd, json_object *args);
json_object *sup_status_json(struct sup *s);

/* sup_ctl.c */
int ctl_listen(struct sup *s, struct qv_err *e);
void ctl_accept(struct sup *s);
void ctl_client_io(struct sup *s, struct sup_client *c, uint32_t events);
void ctl_broadcast_event(struct sup *s, const char *event, json_object *data, uint64_t ts_us);
void ctl_broadcast_console(struct sup *s, const char *data, size_t n);
/* Replies {"ok":true} to every client waiting for QEMU to be gone. */
void ctl_stop_done(struct sup *s, bool ok, const char *msg);
void ctl_client_send(struct sup *s, struct sup_client *c, json_object *reply);
void ctl_reap_clients(struct sup *s);
void ctl_close_all(struct sup *s);

/* notify.c: the sd_notify protocol, without libsystemd */
void notify_init(struct notify *n);
void notify_send(struct notify *n, const char *msg);
void notify_close(struct notify *n);

#endif
