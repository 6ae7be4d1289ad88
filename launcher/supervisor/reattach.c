/* Taking over a QEMU that outlived its supervisor, and cleaning up after one that did
 * not. A supervisor looks for a live QEMU of its VM by every route (state file, pid
 * file, -uuid, cgroup) before it would start another, so that two QEMUs never open the
 * same disks. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "launcher/supervisor/internal.h"

/* A QEMU that outlived its supervisor: its monitor answers at once or never. */
#define REATTACH_TIMEOUT_MS 30000

static int qmp_attach(struct sup *s, struct qv_err *e)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/qmp.sock", s->run_dir);
    int r = qmp_connect_path(path, QMP_MONITOR, REATTACH_TIMEOUT_MS, sup_on_event, s, &s->qmp, e);
    if (r < 0)
        return r;
    sup_epoll_add(s, qmp_fd(s->qmp), qmp_poll_events(s->qmp), &s->ev_qmp);
    return 0;
}

/* A previous supervisor died and QEMU lived on: pick up where it left off. A QEMU
 * still in "prelaunch" was never continued: its start is finished here (late set-up,
 * `cont`), unless this supervisor only came to stop or kill it. */
int reattach(struct sup *s, bool finish_start, struct qv_err *e)
{
    int r = confine_reattach(s, e);
    if (r < 0)
        return r;
    hotplug_restore(s);
    media_restore(s);
    vmnet_restore(s);
    virtiofs_reattach(s);
    tpm_reattach(s);
    s->qemu_pid = s->rs.qemu_pid;
    s->qemu_is_child = false;
    s->pidfd = sup_pidfd_open(s->qemu_pid);
    if (s->pidfd < 0)
        return qv_failerr(e, -errno, "%s: QEMU pid %d", s->def.name, (int)s->qemu_pid);
    sup_epoll_add(s, s->pidfd, EPOLLIN, &s->ev_pidfd);
    r = qmp_attach(s, e);
    if (r < 0)
        return qv_prefix(e, "%s: reconnecting to QEMU pid %d: ", s->def.name, (int)s->qemu_pid);
    console_connect(s, e);
    snprintf(s->rs.qemu_version, sizeof(s->rs.qemu_version), "%s", qmp_qemu_version(s->qmp));
    disk_tops_reattach(s);
    sup_jobs_reattach(s);
    block_reattach(s);
    /* the vCPUs QEMU has now: setvcpus may have plugged some since it started */
    json_object *cpus = NULL;
    struct qv_err ce = {0};
    if (qmp_call(s->qmp, "query-cpus-fast", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &cpus, &ce) < 0) {
        sup_log(s, "warning: query-cpus-fast: %s (its vCPUs are neither counted nor pinned)", ce.msg);
        cpus = NULL;
    } else if (pinning_wanted(&s->def) && pinning_apply(s, cpus, &ce) < 0) {
        /* a successor pins again (QEMU may have been started by an older qvisor, or
         * someone moved its threads); a guest never dies of a pinning that fails here */
        sup_log(s, "warning: %s", ce.msg);
    }
    tuning_reattach(s, cpus);
    json_object_put(cpus);
    json_object *kvm = NULL;
    struct qv_err kvm_err = {0};
    if (qmp_call(s->qmp, "query-kvm", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &kvm, &kvm_err) == 0) {
        record_kvm(s, kvm);
        json_object_put(kvm);
    }
    json_object *st = NULL;
    if ((r = qmp_call(s->qmp, "query-status", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, &st, e)) < 0)
        return qv_prefix(e, "%s: QEMU pid %d: ", s->def.name, (int)s->qemu_pid);
    json_object *v;
    bool running = json_object_object_get_ex(st, "running", &v) && json_object_get_boolean(v);
    s->never_ran = json_object_object_get_ex(st, "status", &v) && strcmp(json_object_get_string(v), "prelaunch") == 0;
    json_object_put(st);
    enum vm_state prev = s->rs.state;
    s->rs.supervisor_pid = getpid();
    s->rs.exiting = false;
    s->rs.state = VM_STARTING;
    sup_log(s, "reattached to running QEMU pid %d%s", (int)s->qemu_pid,
            s->never_ran ? ", which was never started: finishing its start" : "");
    if (s->never_ran && finish_start && prev != VM_PAUSED) {    /* not one started paused on purpose */
        /* at start-up, before the loop serves anyone: a take-over stays synchronous */
        json_object *pw = NULL;
        if ((r = vnc_password_args(s, &pw, e)) < 0)
            return r;
        if (pw && (r = qmp_call(s->qmp, "set_password", pw, NULL, 0, QMP_TIMEOUT_DEFAULT, NULL, e)) < 0)
            return qv_prefix(e, "setting the VNC password: ");
        if ((r = qmp_call(s->qmp, "cont", NULL, NULL, 0, QMP_TIMEOUT_DEFAULT, NULL, e)) < 0)
            return qv_prefix(e, "%s: cont: ", s->def.name);
        s->never_ran = false;
        running = true;
    }
    sup_set_state(s, running ? VM_RUNNING : prev == VM_CRASHED ? VM_CRASHED : VM_PAUSED);
    snapshots_reattach(s);
    return 0;
}

/* Cleans up what a previous run recorded and left behind (its QEMU is dead). */
void cleanup_previous(struct sup *s, const struct vm_runstate *prev)
{
    /* "exiting": its supervisor recorded the end but may have died before releasing all */
    if (prev->state == VM_SHUTOFF && !prev->exiting)
        return;
    if (prev->qemu_pid) {
        sup_log(s, "QEMU pid %d of the previous run is gone (%s); cleaning up after it", (int)prev->qemu_pid,
                vm_state_names[prev->state]);
    } else if (prev->exiting && prev->resources && json_object_object_get_ex(prev->resources, "cgroup", NULL)) {
        sup_log(s, "the previous supervisor (pid %d) ended before it released its QEMU's cgroup and taps; "
                "releasing them", (int)prev->supervisor_pid);
    }
    confine_cleanup_recorded(s, prev->resources);
    vmnet_cleanup_recorded(s, prev->resources);
    virtiofs_cleanup_recorded(s, prev->resources);
    tpm_cleanup_recorded(s, prev->resources);
    remove_run_files(s);
}

/* The QEMU of a previous run, if one lives: found by every route, so that a second
 * one is never started on the same disks. */
bool find_previous(struct sup *s, struct vm_runstate *prev, bool have_prev)
{
    struct qemu_found f;
    int r = vm_find_qemu(s->paths, s->def.name, s->def.uuid, have_prev ? prev : NULL, &f);
    if (r < 0)
        sup_log(s, "warning: looking for a QEMU of the previous run: %s", strerror(-r));
    if (r <= 0)
        return false;
    if (!have_prev || prev->qemu_pid != f.pid || prev->state == VM_SHUTOFF) {
        sup_log(s, "found QEMU pid %d of this VM by its %s, not by the state file: taking it over", (int)f.pid,
                f.route);
        if (!have_prev)
            memset(prev, 0, sizeof(*prev));
        if (prev->state == VM_SHUTOFF || prev->state == VM_CRASHED)
            prev->state = VM_RUNNING;
    }
    prev->qemu_pid = f.pid;
    prev->qemu_start = f.start;
    memcpy(prev->uuid, s->def.uuid, sizeof(prev->uuid));
    return true;
}
