/* Live migration's half of migrate.c: the request, the connection to the destination's
 * supervisor (a non-blocking TCP connect whose socket QEMU gets: QEMU itself may have no
 * network at all), the end once the destination confirmed that the guest runs there,
 * and what migstore_out.c (the control line, the disks' copy) calls back. */
#include <netdb.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>

#include "launcher/supervisor/internal.h"
#include "launcher/supervisor/migrate_op.h"

/* The destination runs the guest (it said so: answer): QEMU here quits, the VM is
 * shut off here. */
void mig_live_completed(struct sup *s, json_object *answer)
{
    struct mig_op *m = s->mig;
    uint64_t ms = monotonic_ms() - m->started_ms;
    sup_log(s, "migrated to %s in %llu ms (downtime %lld ms, %lld MiB sent%s); QEMU quits here", m->address,
            (unsigned long long)ms, (long long)m->downtime, (long long)(m->transferred >> 20),
            m->in_postcopy ? ", the last of it in post-copy" : "");
    json_object *o = json_object_new_object();
    json_object_object_add(o, "address", json_object_new_string(m->address));
    json_object_object_add(o, "total_time_ms", json_object_new_int64((int64_t)ms));
    json_object_object_add(o, "qemu_total_time_ms", json_object_new_int64(m->total_time));
    json_object_object_add(o, "downtime_ms", json_object_new_int64(m->downtime));
    json_object_object_add(o, "transferred", json_object_new_int64(m->transferred));
    if (m->postcopy)
        json_object_object_add(o, "postcopy", json_object_new_boolean(m->in_postcopy));
    json_object *v;
    if (answer && json_object_object_get_ex(answer, "state", &v))
        json_object_object_add(o, "destination_state", json_object_get(v));
    if (answer && json_object_object_get_ex(answer, "defined", &v))
        json_object_object_add(o, "defined", json_object_get(v));
    if (answer && json_object_object_get_ex(answer, "persistent_error", &v)) {
        json_object_object_add(o, "persistent_error", json_object_get(v));
        sup_log(s, "warning: the destination runs the guest but did not keep its definition: %s",
                json_object_get_string(v));
    }
    sup_reply_json(s, m->client, o);
    json_object_put(o);
    snprintf(s->exit_reason, sizeof(s->exit_reason), "migrated to %s", m->address);
    s->expected_exit = true;
    sup_set_state(s, VM_STOPPING);
    sup_qmp(s, "quit", NULL);
    m->over = true;
    m->step = STEP_DONE;
    mig_release(s);
}

int migrate_parse_address(const char *text, struct sockaddr_storage *sa, socklen_t *len, struct qv_err *e)
{
    char host[80];
    const char *colon = strrchr(text, ':');
    if (!colon || colon == text || !colon[1] || (size_t)(colon - text) >= sizeof(host))
        return qv_fail(e, -EINVAL, "\"%s\" is not ADDRESS:PORT", text);
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM}, *res;
    int r = getaddrinfo(h, colon + 1, &hints, &res);
    if (r != 0)
        return qv_fail(e, -EINVAL, "\"%s\": %s (a numeric address and port)", text, gai_strerror(r));
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

int migrate_connect_start(const char *address, int *fd, struct qv_err *e)
{
    struct sockaddr_storage sa;
    socklen_t len;
    int r = migrate_parse_address(address, &sa, &len, e);
    if (r < 0)
        return r;
    *fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (*fd < 0)
        return qv_failerr(e, -errno, "socket");
    if (connect(*fd, (struct sockaddr *)&sa, len) < 0 && errno != EINPROGRESS)
        return qv_failerr(e, -errno, "connecting to %s", address);
    return 0;
}

/* A control line that goes silent (a cable pulled, a host gone) ends in about 25 s. */
void migrate_keepalive(int fd)
{
    int one = 1, idle = 10, intvl = 5, cnt = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* Non-blocking: the loop hears when it is connected (EPOLLOUT), or gives up at poll_at. */
int mig_connect_begin(struct sup *s, struct qv_err *e)
{
    struct mig_op *m = s->mig;
    int r = migrate_connect_start(m->address, &m->sock, e);
    if (r < 0)
        return r;
    s->ev_mig.kind = EV_MIGRATE;
    sup_epoll_add(s, m->sock, EPOLLOUT, &s->ev_mig);
    m->poll_at = monotonic_ms() + MIG_CONNECT_TIMEOUT_MS;
    return 0;
}

void mig_connect_done(struct sup *s)
{
    struct mig_op *m = s->mig;
    int err = 0;
    socklen_t l = sizeof(err);
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, m->sock, NULL);
    m->poll_at = 0;
    if (getsockopt(m->sock, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
        err = errno;
    if (err) {
        mig_failed(s, "connecting to %s: %s (is qvisor migrate-incoming %s --listen %s waiting there?)", m->address,
                    strerror(err), s->def.name, m->address);
        return;
    }
    sup_log(s, "connected to %s", m->address);
    m->step++;
    mig_next_step(s);
}

void mig_on_tls(struct sup *s, void *ctx, const struct qv_err *err)
{
    (void)ctx;
    struct mig_op *m = mig_replied(s);
    if (!m)
        return;
    if (err) {
        mig_failed(s, "%s", err->msg);
        return;
    }
    sup_log(s, "TLS credentials from %s loaded (the destination must show a certificate for %s)", m->tls_dir,
            m->tls_hostname);
    if (m->cancel_asked) {
        mig_failed(s, "cancelled");
        return;
    }
    m->step++;
    mig_next_step(s);
}


int migrate_live(struct sup *s, unsigned client, const struct migrate_live_opts *o, struct qv_err *e)
{
    const char *address = o->address;
    int64_t bandwidth = o->bandwidth, downtime_ms = o->downtime_ms;
    bool auto_converge = o->auto_converge, copy_storage = o->copy_storage;
    int r = mig_checks(s, "migrated", e);
    if (r < 0)
        return r;
    if (!o->token || !o->token[0] || strlen(o->token) >= sizeof(((struct mig_op *)0)->token))
        return qv_fail(e, -EINVAL, "%s: migrate: the destination's token is missing (migrate-incoming printed it)",
                       s->def.name);
    struct sockaddr_storage sa;
    socklen_t len;
    if ((r = migrate_parse_address(address, &sa, &len, e)) < 0)
        return qv_prefix(e, "%s: migrate: ", s->def.name);
    if (o->postcopy && copy_storage)
        return qv_fail(e, -EINVAL, "%s: migrate: --postcopy and --copy-storage go separately: copy the disks with a "
                       "pre-copy migration", s->def.name);
    /* QEMU before 9.0 under TCG loses guest writes during a live migration: the fast path
     * of cpu_physical_memory_sync_dirty_bitmap() clears the dirty bits without resetting
     * the vCPUs' TLB entries, so stores through entries cached before a bitmap sync mark
     * nothing dirty and those pages never go again (QEMU commit "physmem: Fix migration
     * dirty bitmap coherency with TCG memory access", 9.0; Debian 12's 7.2 lacks it). A
     * guest that keeps writing arrives with stale pages: here (QEMU 7.2.22) its kernel
     * oopsed on the destination in 2-3 runs of 7 with 2 vCPUs, after a post-copy and after
     * a pre-copy alike; with 1 vCPU it went over cleanly 6 times of 6 (TCG flushes a vCPU's
     * TLB at each process switch, which narrows the window: narrower, not closed). So, as
     * virsh migrate does for what it knows to be unsafe: a running guest with 2+ vCPUs is
     * refused unless --unsafe says the user takes the risk; 1 vCPU gets a warning; a
     * paused guest writes nothing and goes as it is. */
    bool tcg_old = strcmp(s->rs.accel, "tcg") == 0 && s->facts.qemu_major < 9 && s->rs.state == VM_RUNNING;
    if (tcg_old && s->tune.vcpus > 1 && !o->unsafe)
        return qv_fail(e, -EOPNOTSUPP, "%s: migrate: QEMU %d.%d under TCG loses memory writes a running guest with "
                       "more than one vCPU (it has %d) makes during a live migration (fixed in QEMU 9.0: \"physmem: "
                       "Fix migration dirty bitmap coherency with TCG memory access\"), and the guest arrives "
                       "corrupted. Pause it first (qvisor pause %s; it runs again on the destination), or use KVM, "
                       "QEMU 9.0 or later, or 1 vCPU; --unsafe migrates it anyway", s->def.name, s->facts.qemu_major,
                       s->facts.qemu_minor, s->tune.vcpus, s->def.name);
    if (tcg_old)
        sup_log(s, "warning: QEMU %d.%d under TCG may lose this guest's memory writes made during the migration "
                "(%d vCPU%s%s; fixed in QEMU 9.0): a guest that writes much can arrive corrupted; pause it first to "
                "be safe", s->facts.qemu_major, s->facts.qemu_minor, s->tune.vcpus, s->tune.vcpus > 1 ? "s" : "",
                s->tune.vcpus > 1 ? ", migrated anyway: --unsafe" : "");
    if (o->postcopy_bandwidth_mib < 0 || o->postcopy_bandwidth_mib > MIG_MAX_BANDWIDTH >> 20 ||
        (o->postcopy_bandwidth_mib && !o->postcopy))
        return qv_fail(e, -EINVAL, "%s: migrate: the post-copy bandwidth (%lld MiB/s) goes with post-copy, from 1 to "
                       "%lld MiB/s", s->def.name, (long long)o->postcopy_bandwidth_mib,
                       (long long)(MIG_MAX_BANDWIDTH >> 20));
    struct mig_op *m = qv_xcalloc(1, sizeof(*m));
    m->fd = m->sock = -1;
    m->sync.out = -1;
    m->dest_ran = -1;
    m->live = true;
    m->postcopy = o->postcopy;
    m->postcopy_bandwidth = o->postcopy_bandwidth_mib << 20;
    m->client = client;
    m->bandwidth = bandwidth;
    m->downtime_ms = downtime_ms;
    m->auto_converge = auto_converge;
    m->copy_storage = copy_storage;
    m->persistent = o->persistent;
    snprintf(m->token, sizeof(m->token), "%s", o->token);
    m->was_running = s->rs.state == VM_RUNNING;
    m->started_ms = monotonic_ms();
    snprintf(m->address, sizeof(m->address), "%s", address);
    s->mig = m;
    char post[96] = "";
    if (o->postcopy)
        snprintf(post, sizeof(post), ", post-copy after the first pass%s", o->postcopy_bandwidth_mib ? " (capped)" : "");
    sup_log(s, "migrating to %s (bandwidth %s, max downtime %s%s%s%s)", address, bandwidth ? "capped" : "unlimited",
            downtime_ms ? "set" : "QEMU's default", auto_converge ? ", auto-converge" : "",
            copy_storage ? ", copying local disks" : "", post);
    mig_next_step(s);
    return 0;
}

int migrate_live_tls(struct sup *s, const char *dir, const char *hostname, struct qv_err *e)
{
    struct mig_op *m = s->mig;
    if (!m || m->over || !m->live || m->step > STEP_CAPS)
        return qv_fail(e, -EINVAL, "%s: TLS: no migration is being set up", s->def.name);
    if (!dir || dir[0] != '/')
        return qv_fail(e, -EINVAL, "%s: --tls: the directory must be an absolute path", s->def.name);
    if (!hostname || !hostname[0] || strlen(hostname) >= sizeof(m->tls_hostname))
        return qv_fail(e, -EINVAL, "%s: --tls: the destination's host name is missing", s->def.name);
    snprintf(m->tls_dir, sizeof(m->tls_dir), "%s", dir);
    snprintf(m->tls_hostname, sizeof(m->tls_hostname), "%s", hostname);
    return 0;
}


void migrate_io(struct sup *s, uint32_t events)
{
    (void)events;
    if (migstore_in_waiting(s))
        migstore_in_accept(s);      /* copy-storage: the source's control connection comes first */
    else if (s->mig && !s->mig->over && s->mig->step == STEP_CONNECT && s->mig->sock >= 0)
        mig_connect_done(s);
    else if (s->mig_in.listen_fd > 0 && start_active(s) && !s->start.failed)
        migrate_incoming_accept(s);
}


/* ---- for migstore_out.c ---- */

void migrate_storage_ready(struct sup *s)
{
    struct mig_op *m = s->mig;
    if (!m || m->over || m->step != STEP_STORAGE)
        return;
    m->step++;
    mig_next_step(s);
}

void migrate_storage_finished(struct sup *s, json_object *answer)
{
    if (s->mig && !s->mig->over)
        mig_live_completed(s, answer);
}

void migrate_storage_unconfirmed(struct sup *s, const char *why)
{
    struct mig_op *m = s->mig;
    migstore_out_abort(s);
    if (!m || m->over)
        return;
    sup_log(s, "migration to %s: the guest's state went over, but %s; the guest stays paused here (it may run there)",
            m->address, why);
    sup_reply_error(s, m->client, -EIO, "%s: migration to %s: the guest's state went over, but %s: the guest stays "
                    "paused here, as it may run there. Look there (qvisor status %s on the destination), then "
                    "either qvisor kill %s here (it runs there) or qvisor resume %s here (it does not)", s->def.name,
                    m->address, why, s->def.name, s->def.name, s->def.name);
    sup_set_state(s, VM_PAUSED);
    m->over = true;
    m->step = STEP_DONE;
    mig_release(s);
}

void migrate_storage_failed(struct sup *s, const char *why, int dest_ran)
{
    struct mig_op *m = s->mig;
    if (!m || m->over) {
        migstore_out_abort(s);
        return;
    }
    if (m->postcopy_asked) {
        /* no cancel now: the guest may run there already. The stream decides: it
         * completes (a destination QEMU that lost only its supervisor), breaks, or stalls
         * (migrate.c's on_query bounds it); the destination's word says what is left */
        migstore_out_abort(s);
        m->dest_gone = true;
        if (!m->dest_error[0] || dest_ran >= 0) {
            snprintf(m->dest_error, sizeof(m->dest_error), "%s", why);
            m->dest_ran = dest_ran;
        }
        sup_log(s, "migration to %s after the switch to post-copy: %s%s", m->address, why,
                dest_ran == 0 ? " (the guest never ran there)" : dest_ran == 1 ? " (the guest ran there)" : "");
        if (!m->polling && !m->concluding)
            m->poll_at = monotonic_ms();    /* what QEMU says now decides */
        return;
    }
    if (m->step == STEP_RUNNING && (m->poll_at || m->polling)) {
        /* the stream flows: QEMU cancels it and the guest runs on; on_query says why */
        snprintf(m->storage_error, sizeof(m->storage_error), "%s", why);
        migstore_out_abort(s);
        sup_qmp(s, "migrate_cancel", NULL);
        return;
    }
    mig_failed(s, "%s", why);
}

/* ---- what both sides must agree on (the control line's hello) ---- */

json_object *migrate_guest_shape(const struct vm_def *d)
{
    json_object *o = json_object_new_object(), *disks = json_object_new_array(), *nics = json_object_new_array();
    json_object_object_add(o, "machine", json_object_new_string(vm_machine_names[d->machine]));
    json_object_object_add(o, "memory", json_object_new_int64((int64_t)d->memory.bytes));
    json_object_object_add(o, "vcpus", json_object_new_int(d->cpu.count));
    json_object_object_add(o, "max_vcpus", json_object_new_int(d->cpu.max ? d->cpu.max : d->cpu.count));
    char topo[48];
    snprintf(topo, sizeof(topo), "%d/%d/%d", d->cpu.sockets, d->cpu.cores, d->cpu.threads);
    json_object_object_add(o, "topology", json_object_new_string(topo));
    json_object_object_add(o, "balloon", json_object_new_boolean(d->memory.balloon));
    for (size_t i = 0; i < d->ndisks; i++)
        json_object_array_add(disks, json_object_new_string(disk_bus_names[d->disks[i].bus]));
    json_object_object_add(o, "disks", disks);
    json_object_object_add(o, "cdroms", json_object_new_int((int)d->ncdroms));
    for (size_t i = 0; i < d->nnics; i++)
        json_object_array_add(nics, json_object_new_string(nic_model_names[d->nics[i].model]));
    json_object_object_add(o, "nics", nics);
    json_object_object_add(o, "filesystems", json_object_new_int((int)d->nfilesystems));
    json_object_object_add(o, "hostdevs", json_object_new_int((int)d->nhostdevs));
    json_object_object_add(o, "tpm", json_object_new_string(tpm_model_names[d->tpm]));
    return o;
}

static const char *shown(json_object *v)
{
    return v ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : "nothing";
}

int migrate_shape_diff(json_object *theirs, const struct vm_def *here, char *why, size_t whylen)
{
    _cleanup_json_ json_object *mine = migrate_guest_shape(here);
    json_object_object_foreach(mine, k, v) {
        json_object *t = NULL;
        json_object_object_get_ex(theirs, k, &t);
        if (strcmp(shown(t), shown(v)) == 0)
            continue;
        snprintf(why, whylen, "%s: the guest the source runs does not fit the definition here: %s is %s there, %s "
                 "here (the definitions must agree on what the guest sees)", here->name, k, shown(t), shown(v));
        return -EINVAL;
    }
    return 0;
}
