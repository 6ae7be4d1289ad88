/* Processes beside QEMU and QEMU's confinement: watched children (child.c), virtiofsd
 * (virtiofs.c), swtpm (tpm.c), host devices (hostdev.c), the uid, cgroup and
 * sandbox (confine.c). Included by internal.h */
#ifndef QV_SUP_SIBLINGS_H
#define QV_SUP_SIBLINGS_H

#include "launcher/supervisor/internal.h"

/* child.c */
int sup_child_spawn(struct sup_child *c, const char *const *argv, int timeout_ms, struct qv_err *e);
/* 0 while it runs; 1 once reaped: *status is its exit code (128 + signal when killed),
 * out what it wrote (trailing newlines dropped). */
int sup_child_reap(struct sup_child *c, int *status, char *out, size_t outlen);
void sup_child_expire(struct sup_child *c, uint64_t now);
void sup_child_abort(struct sup_child *c);
/* Tears down what the NICs of the last QEMU left (filters, macvtaps). */
void vmnet_after_exit(struct sup *s);
void net_nic_unplugged(struct sup *s, struct hotplug *h);
void vmnet_cleanup_recorded(struct sup *s, json_object *resources);
/* After a reattach: what the previous supervisor recorded about the NICs. */
void vmnet_restore(struct sup *s);
/* Learns guest addresses from the networks' leases and tightens the filters: when the
 * next look is due, and the look */
uint64_t vmnet_next_deadline(struct sup *s);
void vmnet_expire(struct sup *s, uint64_t now);
json_object *vmnet_addresses(struct sup *s);

/* virtiofs.c: one confined virtiofsd per share, a sibling of QEMU that lives as long as
 * QEMU's connection to it (no PR_SET_PDEATHSIG: it outlives a dead supervisor, as QEMU
 * does). launch_ctx.open_fs: starts filesystem i's virtiofsd on a listening socket
 * (recorded in state.json before it runs) and gives QEMU's connected end in *fd. */
int virtiofs_open(void *opaque, const struct vm_def *d, size_t i, int *fd, struct qv_err *e);
/* SIGCHLD: reaps ours; one gone while QEMU runs is logged (the guest's share is dead). */
void virtiofs_child_exited(struct sup *s);
/* QEMU is gone (or never started): every virtiofsd is killed and its record dropped. */
void virtiofs_after_exit(struct sup *s);
/* A new supervisor takes over the recorded virtiofsds of a live QEMU (by pid and start time). */
void virtiofs_reattach(struct sup *s);
/* Kills the recorded virtiofsds of a previous run whose QEMU is dead. */
void virtiofs_cleanup_recorded(struct sup *s, json_object *resources);
/* [{"tag", "source", "readonly", "pid", "confinement"}] for status; NULL without shares. */
json_object *virtiofs_status_json(struct sup *s);

/* tpm.c: the VM's swtpm, a confined sibling of QEMU that lives as long as QEMU's
 * connection to it (as virtiofsd does). launch_ctx.open_tpm: makes the state directory
 * this run's uid's, starts swtpm on one end of a socketpair (recorded in state.json
 * before it runs) and gives QEMU the other in *fd. */
int tpm_open(void *opaque, const struct vm_def *d, int *fd, struct qv_err *e);
/* The first start: swtpm_setup makes the TPM's state with EK and platform certificates
 * signed by the host's local CA, as watched child c. 1: started; 0: nothing to do (there
 * is a state, or no swtpm-tools: swtpm then makes one without certificates). */
int tpm_setup_begin(struct sup *s, struct sup_child *c, struct qv_err *e);
/* Its exit: 0, or the failure (the half-made state is removed). */
int tpm_setup_done(struct sup *s, int status, char *output, struct qv_err *e);
/* SIGCHLD: reaps it; gone while QEMU runs is logged (the guest's TPM is dead). */
void tpm_child_exited(struct sup *s);
/* QEMU is gone (or never started): swtpm is given a moment to save and end, then stopped. */
void tpm_after_exit(struct sup *s);
/* A new supervisor takes over the recorded swtpm of a live QEMU (by pid and start time). */
void tpm_reattach(struct sup *s);
/* Stops the recorded swtpm of a previous run whose QEMU is dead. */
void tpm_cleanup_recorded(struct sup *s, json_object *resources);
/* {"model", "state", "pid", "confinement"} for status; NULL without a TPM. */
json_object *tpm_status_json(struct sup *s);

/* hostdev.c: host devices. Opens hostdev i's USB device node for QEMU (found by
 * vendor:product or bus/device in sysfs); errors name the device and what to check. */
int hostdev_usb_open(const struct vm_def *d, size_t i, int *fd, struct qv_err *e);
/* PCI host devices: each is bound to vfio-pci and its IOMMU group viable; the device
 * nodes QEMU must see (/dev/vfio/vfio, /dev/vfio/GROUP…) are added to `devices`. */
int hostdev_pci_prepare(const struct vm_def *d, struct strv *devices, struct qv_err *e);
/* The same for one device (attach-device too); `where` starts its messages
 * ("hostdevs[0]", "attach-device"). */
int hostdev_usb_open_one(const struct vm_hostdev *h, const char *where, int *fd, struct qv_err *e);
int hostdev_pci_check(const struct vm_hostdev *h, const char *where, struct strv *devices, struct qv_err *e);

/* confine.c */
/* The spec of a confined process beside QEMU (virtiofsd, swtpm): argv, a fixed PATH,
 * the one descriptor fd3 (target 3), its output into the VM's log, a session of its
 * own, the host's sandbox facts; every step enabled. The caller then narrows the
 * steps and sets require, the uid and the paths. fd3 must outlive the spawn. */
void confine_sibling_spec(struct sup *s, struct sandbox_spec *spec, const char *const *argv,
                          const struct sandbox_fd *fd3);
int confine_prepare(struct sup *s, const struct launch_plan *p, struct qv_err *e);
int confine_spawn(struct sup *s, const struct launch_plan *p, const int *fds, pid_t *pid, struct qv_err *e);
bool confine_oom_killed(struct sup *s);
/* When QEMU was OOM-killed in its cgroup, fills e ("QEMU was killed for lack of
 * memory (cgroup memory limit 1G; …)") and returns -ENOMEM; else 0. */
int confine_oom_error(struct sup *s, struct qv_err *e);
/* After each QEMU exit: removes its cgroup. */
void confine_after_exit(struct sup *s);
/* Moves the supervisor into its leaf of the VM's cgroup, so the VM is charged for it
 * (confine_after_exit moves it back). A failure is a warning. */
void confine_join(struct sup *s);
/* When the supervisor is done: the cgroup and the uid lease. */
void confine_release(struct sup *s);
int confine_reattach(struct sup *s, struct qv_err *e);
/* Lets QEMU reach `addrs` (an rbd disk's cluster) too: the filter is applied again with
 * them added. Refused when QEMU runs in a private network namespace (it had no rbd
 * disk at start); nothing to do when its network is not filtered. */
int confine_cluster_allow(struct sup *s, const struct strv *addrs, struct qv_err *e);
/* Removes what a dead previous run recorded in its state (its cgroup). */
void confine_cleanup_recorded(struct sup *s, json_object *resources);
/* What is in force for QEMU, read back from /proc (NULL when not running). */
json_object *confine_inspect(struct sup *s);

#endif
