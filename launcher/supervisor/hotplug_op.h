/* Internal to the hotplug files: the state machine every attach and removal runs
 * (hotplug.c), shared with each kind's attach (hotplug_disk.c, hotplug_nic.c,
 * hotplug_hostdev.c) and the removal (hotplug_release.c). */
#ifndef QV_HOTPLUG_OP_H
#define QV_HOTPLUG_OP_H

#include "launcher/supervisor/internal.h"

#define RELEASE_TIMEOUT_MS 30000
#define FDSET_BASE 1000         /* above any fd number the command line uses */

/* a disk: add-fd and two nodes per layer, the top's three, device_add */
#define OP_STEPS (3 * (STORAGE_CHAIN_MAX + 1) + 1)
#define OP_FDS (STORAGE_CHAIN_MAX + NETSETUP_MAX_QUEUES)

struct qcmd {
    const char *cmd;        /* NULL: nothing (an undo that needs no command) */
    json_object *args;
    int fd;                 /* passed along (add-fd, getfd), -1 none; owned by the op */
    int timeout;
    bool absorbs;           /* on success it owns what the earlier steps made (netdev_add takes the fds) */
    /* args gets "file": "/proc/self/fd/N", N the fd QEMU holds from the last add-fd
     * (a secret object reads its data from the fd passed just before) */
    bool file_from_fd;
    size_t cancels;         /* 1 + the step whose undo this one's success makes moot (remove-fd); 0 none */
};

enum op_kind { OP_ATTACH, OP_DEVICE_DEL, OP_RELEASE };

struct hotplug_op {
    struct sup *s;
    struct hotplug *h;
    enum op_kind kind;
    unsigned client;            /* 0: nobody waits for a reply */
    char what[16];              /* "attach-disk", "attach-nic", "detach" for messages */
    struct qcmd todo[OP_STEPS], undo[OP_STEPS];
    size_t ntodo, done, undo_pos;
    bool in_flight;             /* a command of this op is pending on s->qmp */
    bool rolling_back;
    struct qv_err err;          /* the failure being rolled back, or the cleanup's first */
    int fds[OP_FDS];
    int nfds;
    int qemu_fd;                /* the fd number QEMU gave the last add-fd, -1 none */
    struct vm_nic nic;          /* attach-nic: as requested */
    bool host_side;             /* attach-nic: tap, filter (undone by net_nic_unplugged) */
    json_object *reply;         /* the success reply, built when the last step is queued */
    struct net_starter net;     /* attach-nic: its autostart network being started */
};

/* A free slot (its pcie-root-port reserved on q35), or an error saying why none. */
int hop_free_slot(struct sup *s, struct qv_err *e);
/* A unique device id PREFIXn, n >= first: after the definition's own and every hotplugged one. */
void hop_next_id(struct sup *s, const char *prefix, size_t first, char *out, size_t outlen);
/* Free slot `slot` taken for a device of `kind` being attached (pending), with a new id
 * PREFIXn (n >= first, hop_next_id). */
struct hotplug *hop_claim(struct sup *s, int slot, enum hotplug_kind kind, const char *prefix, size_t first);
/* dev's "bus": the slot's root port on q35, pci.0 on pc. */
void hop_place(struct sup *s, json_object *dev, const struct hotplug *h);
/* A free slot's device, back to unused (hotplug.c). */
void hop_clear(struct hotplug *h);
/* The device named `key`: its id, image path, serial or volume; NULL when none. */
struct hotplug *hop_find(struct sup *s, const char *key);
struct hotplug_op *hop_new(struct sup *s, struct hotplug *h, enum op_kind kind, unsigned client, const char *what);
void hop_free(struct hotplug_op *op);
/* Queues a step and its undo (undo_cmd NULL: none). */
void hop_step(struct hotplug_op *op, const char *cmd, json_object *args, int fd, int timeout, const char *undo_cmd,
              json_object *undo_args);
/* Sends the next step, or finishes the operation. */
void hop_advance(struct hotplug_op *op);
/* The add-fd set of a disk's backing layer j. */
int hop_layer_fdset(const struct hotplug *h, int j);
/* An attach that failed: its host side undone, the client told, the slot freed. */
void hop_attach_failed(struct hotplug_op *op);
/* hotplug_release.c: an OP_RELEASE finished: the device's host side goes, the client hears. */
void hop_release_done(struct hotplug_op *op);

#endif
