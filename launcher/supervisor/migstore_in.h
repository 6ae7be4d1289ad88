/* The destination's half of the migration control line, shared by migstore_in.c (the
 * line: hello, token, finish, the end) and migstore_copy.c (--copy-storage: the target
 * images, QEMU's NBD server and exports). Included by those two only. */
#ifndef QV_SUP_MIGSTORE_IN_H
#define QV_SUP_MIGSTORE_IN_H

#include "launcher/supervisor/internal.h"

#define MSI_CREATE_TIMEOUT_MS 120000
#define MSI_NBD_FDNAME "qv-nbd-listen"

enum msi_phase { MSI_WAIT_SOURCE, MSI_WAIT_HELLO, MSI_CREATING, MSI_STARTING, MSI_SERVING, MSI_FINISHING,
                 MSI_RESUMING, MSI_DONE };

struct msi_disk {
    char id[24];
    char path[PATH_MAX];
    int64_t size;
    char format[8];
    bool created;
};

struct migstore_in {
    enum msi_phase phase;
    int ctl;                /* the control connection; -1 none */
    struct buf in;
    struct msi_disk disks[VM_MAX_DISKS];
    size_t ndisks, next;    /* next: the next image to create, then the next export */
    struct sup_child child;
    int nbd_fd;             /* the NBD listener until QEMU has it; -1 */
    char nbd_addr[80];
    bool stream_done, finish_asked;
    bool copy;              /* migrate-incoming --copy-storage */
    bool persistent;        /* the source asked for the definition to be kept here */
    int plugged_vcpus;      /* the source's vCPUs, plugged here before the stream; 0: cpu.count */
    uint64_t balloon_target;    /* the source's last setmem, set here once the guest runs; 0: none */
    uint64_t deadline;      /* no source by then: the destination gives up; 0: a source came */
    struct sockaddr_storage peer;   /* the control line's peer: the stream must come from there */
};

/* migstore_in.c */
/* Sends one JSON line to the source (a failure is logged). */
void msi_send_line(struct sup *s, json_object *o);
/* A failure before QEMU was started: the supervisor ends, as a failed start would. */
void msi_fail_early(struct sup *s, const char *fmt, ...) QV_PRINTF(2, 3);
/* A failure once QEMU runs: the start fails (start_wind_up calls migstore_in_wind_up). */
void msi_fail_started(struct sup *s, int code, const char *fmt, ...) QV_PRINTF(3, 4);
/* The vCPUs the source plugged live, plugged here before the stream; done called once. */
int msi_plug_vcpus(struct sup *s, void (*done)(struct sup *, const struct qv_err *), struct qv_err *e);

/* migstore_copy.c */
/* The next target image is created (a watched qemu-img), then QEMU starts. */
void msi_create_next(struct sup *s);
/* The disks are in: QEMU's NBD server stops, then the guest resumes here. */
void msi_nbd_stop(struct sup *s);

#endif
