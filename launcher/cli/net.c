/* qvisor net define|undefine|list|show|start|run|stop|leases|gc */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include "launcher/cli/cli.h"

static int net_from_flags(struct cli *c, const char *name, json_object **out)
{
    json_object *o = json_object_new_object(), *v4 = NULL;
    json_object_object_add(o, "name", json_object_new_string(name));
    for (size_t i = 0; i < c->nopts; i++) {
        const char *opt = c->opts[i].opt->name, *v = c->opts[i].value;
        if (strcmp(opt, "mode") == 0 || strcmp(opt, "bridge") == 0) {
            json_object_object_add(o, opt, json_object_new_string(v));
        } else if (strcmp(opt, "mtu") == 0) {
            json_object_object_add(o, "mtu", json_object_new_int(atoi(v)));
        } else if (strcmp(opt, "autostart") == 0) {
            json_object_object_add(o, "autostart", json_object_new_boolean(true));
        } else if (strcmp(opt, "ipv4") == 0 || strcmp(opt, "dhcp") == 0) {
            if (!v4) {
                v4 = json_object_new_object();
                json_object_object_add(o, "ipv4", v4);
            }
            if (strcmp(opt, "ipv4") == 0) {
                json_object_object_add(v4, "address", json_object_new_string(v));
            } else {
                const char *comma = strchr(v, ',');
                if (!comma) {
                    json_object_put(o);
                    return qv_fail(&c->err, -EINVAL, "--dhcp %s: expected START,END", v);
                }
                json_object *d = json_object_new_object();
                json_object_object_add(d, "start", json_object_new_string_len(v, (int)(comma - v)));
                json_object_object_add(d, "end", json_object_new_string(comma + 1));
                json_object_object_add(v4, "dhcp", d);
            }
        } else if (strcmp(opt, "domain") == 0) {
            json_object *dns = json_object_new_object();
            json_object_object_add(dns, "domain", json_object_new_string(v));
            json_object_object_add(o, "dns", dns);
        } else if (strcmp(opt, "forward") == 0) {
            /* tcp:8080:10.77.0.10:80 */
            char proto[8], guest[64];
            unsigned hp, gp;
            if (sscanf(v, "%7[a-z]:%u:%63[^:]:%u", proto, &hp, guest, &gp) != 4) {
                json_object_put(o);
                return qv_fail(&c->err, -EINVAL, "--forward %s: expected PROTO:HOSTPORT:GUESTIP:GUESTPORT", v);
            }
            json_object *f = json_object_new_object(), *a;
            json_object_object_add(f, "protocol", json_object_new_string(proto));
            json_object_object_add(f, "host_port", json_object_new_int((int)hp));
            json_object_object_add(f, "guest", json_object_new_string(guest));
            json_object_object_add(f, "guest_port", json_object_new_int((int)gp));
            if (!json_object_object_get_ex(o, "forwards", &a)) {
                a = json_object_new_array();
                json_object_object_add(o, "forwards", a);
            }
            json_object_array_add(a, f);
        }
    }
    *out = o;
    return 0;
}

int cmd_net_define(struct cli *c)
{
    const char *arg = c->pos[0];
    _cleanup_json_ json_object *o = NULL;
    size_t n = strlen(arg);
    bool file = strchr(arg, '/') || (n > 5 && strcmp(arg + n - 5, ".json") == 0);
    int r = file ? json_read_file(arg, &o, &c->err) : net_from_flags(c, arg, &o);
    if (r < 0)
        return r;
    _cleanup_net_def_ struct net_def d = {0};
    if ((r = net_define(&c->paths, o, false, &d, &c->err)) < 0)
        return file && r == -EINVAL ? qv_prefix(&c->err, "%s: ", arg) : r;
    if (!c->quiet)
        printf("defined network %s (%s, bridge %s%s%s)\n", d.name, net_mode_names[d.mode], d.bridge,
               d.ipv4.address ? ", " : "", d.ipv4.address ? d.ipv4.address : "");
    return 0;
}

int cmd_net_undefine(struct cli *c)
{
    if (net_running(&c->paths, c->pos[0], NULL))
        return qv_fail(&c->err, -EBUSY, "network %s is running (qvisor net stop %s first)", c->pos[0], c->pos[0]);
    int r = net_undefine(&c->paths, c->pos[0], &c->err);
    if (r == 0 && !c->quiet)
        printf("undefined network %s\n", c->pos[0]);
    return r;
}

int cmd_net_show(struct cli *c)
{
    _cleanup_net_def_ struct net_def d = {0};
    int r = net_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *o = net_def_to_json(&d);
    cli_print_json(o);
    return 0;
}

static const char *net_state(struct cli *c, const char *name)
{
    if (net_running(&c->paths, name, NULL))
        return "running";
    char dir[PATH_MAX], path[PATH_MAX + 16];
    net_run_dir(&c->paths, name, dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/state.json", dir);
    _cleanup_json_ json_object *st = NULL;
    json_object *v;
    if (json_read_file(path, &st, NULL) == 0 && json_object_object_get_ex(st, "state", &v) &&
        strcmp(json_object_get_string(v), "shut off") != 0)
        return "crashed";   /* no supervisor, yet it never finished stopping */
    return "inactive";
}

int cmd_net_list(struct cli *c)
{
    _cleanup_net_def_ struct net_def dflt = {0};
    /* like libvirt's, the default network exists from the start */
    net_load(&c->paths, "default", &dflt, NULL);
    _cleanup_strv_ struct strv names = {0};
    int r = net_list_names(&c->paths, &names, &c->err);
    if (r < 0)
        return r;
    json_object *arr = json_object_new_array();
    if (!c->json)
        printf("%-16s %-9s %-9s %-15s %-18s %s\n", "NAME", "STATE", "MODE", "BRIDGE", "IPV4", "AUTOSTART");
    for (size_t i = 0; i < names.n; i++) {
        _cleanup_net_def_ struct net_def d = {0};
        struct qv_err e = {0};
        if (net_load(&c->paths, names.v[i], &d, &e) < 0) {
            if (!c->json)
                printf("%-16s %-9s (%s)\n", names.v[i], "invalid", e.msg);
            continue;
        }
        const char *state = net_state(c, d.name);
        if (c->json) {
            json_object *o = net_def_to_json(&d);
            json_object_object_add(o, "state", json_object_new_string(state));
            json_object_array_add(arr, o);
        } else {
            printf("%-16s %-9s %-9s %-15s %-18s %s\n", d.name, state, net_mode_names[d.mode], d.bridge,
                   d.ipv4.address ? d.ipv4.address : "-", d.autostart ? "yes" : "no");
        }
    }
    if (c->json)
        cli_print_json(arr);
    json_object_put(arr);
    return 0;
}

int cmd_net_run(struct cli *c)
{
    const char *ready = cli_opt(c, "ready-fd");
    int ready_fd = ready ? atoi(ready) : -1;
    return network_run(&c->paths, c->pos[0], ready_fd, c->quiet || ready_fd >= 0 ? -1 : 2, &c->err);
}

int cmd_net_start(struct cli *c)
{
    const char *name = c->pos[0];
    _cleanup_net_def_ struct net_def d = {0};
    int r = net_load(&c->paths, name, &d, &c->err);
    if (r < 0)
        return r;
    pid_t holder;
    if (net_running(&c->paths, name, &holder))
        return qv_fail(&c->err, -EBUSY, "network %s is already running (pid %d)", name, (int)holder);
    const char *args[] = {"net", "run", name, NULL};
    if ((r = supervisor_spawn(&c->paths, args, 30000, name, &c->err)) < 0)
        return r;
    if (!c->quiet)
        printf("network %s started\n", name);
    return 0;
}

int cmd_net_stop(struct cli *c)
{
    int r = network_stop(&c->paths, c->pos[0], 15000, &c->err);
    if (r == -ESRCH) {
        if (!c->quiet)
            printf("network %s is not running\n", c->pos[0]);
        return 0;
    }
    if (r == 0 && !c->quiet)
        printf("network %s stopped\n", c->pos[0]);
    return r;
}

int cmd_net_leases(struct cli *c)
{
    _cleanup_net_def_ struct net_def d = {0};
    int r = net_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    char dir[PATH_MAX], path[PATH_MAX + 32];
    net_run_dir(&c->paths, c->pos[0], dir, sizeof(dir));
    snprintf(path, sizeof(path), "%s/" NETSETUP_DNSMASQ_LEASES, dir);
    struct netsetup_lease *l = NULL;
    size_t n = 0;
    if ((r = netsetup_leases_read(path, &l, &n, &c->err)) < 0)
        return r;
    json_object *arr = json_object_new_array();
    if (!c->json)
        printf("%-20s %-17s %-39s %s\n", "EXPIRES", "MAC", "IP", "HOSTNAME");
    for (size_t i = 0; i < n; i++) {
        char when[32] = "never";
        if (l[i].expiry) {
            time_t t = (time_t)l[i].expiry;
            struct tm tm;
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime_r(&t, &tm));
        }
        if (c->json) {
            json_object *o = json_object_new_object();
            json_object_object_add(o, "expiry", json_object_new_int64(l[i].expiry));
            json_object_object_add(o, "mac", json_object_new_string(l[i].mac));
            json_object_object_add(o, "ip", json_object_new_string(l[i].ip));
            json_object_object_add(o, "hostname", json_object_new_string(l[i].hostname));
            json_object_object_add(o, "ipv6", json_object_new_boolean(l[i].ipv6));
            json_object_array_add(arr, o);
        } else {
            printf("%-20s %-17s %-39s %s\n", when, l[i].mac[0] ? l[i].mac : "-", l[i].ip,
                   l[i].hostname[0] ? l[i].hostname : "-");
        }
    }
    if (c->json)
        cli_print_json(arr);
    json_object_put(arr);
    free(l);
    return 0;
}

/* Taps whose owner is gone vanish by themselves; this removes what does not:
 * filters of taps that no longer exist, networks whose supervisor died, macvtaps
 * of VMs that are not running, and their dnsmasq. */
int cmd_net_gc(struct cli *c)
{
    _cleanup_strv_ struct strv removed = {0};
    int r = network_gc(&c->paths, &removed, &c->err);
    for (size_t i = 0; i < removed.n; i++)
        printf("removed %s\n", removed.v[i]);
    if (r == 0 && !removed.n && !c->quiet)
        printf("nothing to remove\n");
    return r;
}

static void print_live(const char *name, const struct strv *applied, const struct strv *restart)
{
    if (applied->n) {
        _cleanup_free_ char *a = strv_join((const char *const *)applied->v, "; ");
        printf("the running network %s now has it: %s\n", name, a);
    }
    if (restart && restart->n) {
        _cleanup_free_ char *r = strv_join((const char *const *)restart->v, ", ");
        printf("from its next start (qvisor net stop %s; qvisor net start %s): %s\n", name, name, r);
    }
}

/* net edit: the definition through $EDITOR, validated like net define, written only
 * when valid; a running network takes the hosts and forwards at once and says what
 * waits for its restart. */
int cmd_net_edit(struct cli *c)
{
    const char *name = c->pos[0];
    _cleanup_net_def_ struct net_def d = {0}, nd = {0};
    int r = net_load(&c->paths, name, &d, &c->err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *cur = net_def_to_json(&d);
    _cleanup_json_ json_object *next = NULL;
    char tmp[] = "/tmp/qvisor-net-edit-XXXXXX.json";
    bool edited = false, same = false;
    if ((r = cli_edit_json(c, cur, &next, tmp, &edited)) < 0)
        return r;
    json_object *v;
    if (!json_object_object_get_ex(next, "name", &v) || strcmp(json_object_get_string(v), name) != 0)
        r = qv_fail(&c->err, -EINVAL, "name: a network keeps its name (undefine and define to rename)");
    else if ((r = net_def_from_json(next, &nd, &c->err)) == 0) {
        _cleanup_json_ json_object *norm = net_def_to_json(&nd);
        same = json_object_equal(norm, cur);
        if (!same)
            r = net_define(&c->paths, next, true, NULL, &c->err);
    }
    if (r < 0)
        return edited ? qv_prefix(&c->err, "nothing changed (your text is in %s): ", tmp) : r;
    if (edited)
        unlink(tmp);
    if (same) {
        if (!c->quiet)
            printf("%s: no change\n", name);
        return 0;
    }
    if (!c->quiet)
        printf("network %s changed\n", name);
    if (!net_running(&c->paths, name, NULL))
        return 0;
    _cleanup_strv_ struct strv applied = {0}, restart = {0};
    if ((r = network_edit_live(&c->paths, &nd, &applied, &restart, &c->err)) < 0)
        return qv_prefix(&c->err, "network %s: the definition is saved, but the running network did not take it: ", name);
    if (!c->quiet)
        print_live(name, &applied, &restart);
    return 0;
}

/* The host or forward of `net update` from its options. */
static int update_item(struct cli *c, enum net_update_section sec, json_object **out)
{
    static const char *const host_opts[] = {"mac", "ip", "name", NULL};
    static const char *const fwd_opts[][2] = {{"protocol", "protocol"}, {"host-port", "host_port"},
                                              {"guest", "guest"}, {"guest-port", "guest_port"}};
    json_object *o = json_object_new_object();
    for (size_t i = 0; i < c->nopts; i++) {
        const char *opt = c->opts[i].opt->name, *v = c->opts[i].value;
        if (strcmp(opt, "live") == 0 || strcmp(opt, "config") == 0)
            continue;
        const char *key = NULL;
        if (sec == NET_UPDATE_HOST && strv_contains(host_opts, opt))
            key = opt;
        for (size_t k = 0; sec == NET_UPDATE_FORWARD && k < ARRAY_SIZE(fwd_opts); k++)
            if (strcmp(opt, fwd_opts[k][0]) == 0)
                key = fwd_opts[k][1];
        if (!key) {
            json_object_put(o);
            return qv_fail(&c->err, -EINVAL, "--%s is not an option of a %s (%s)", opt, net_update_section_names[sec],
                           sec == NET_UPDATE_HOST ? "--mac, --ip, --name" : "--protocol, --host-port, --guest, --guest-port");
        }
        uint64_t num;
        /* a port that is not a number stays text, for validation to name */
        if (strstr(key, "port") && parse_u64(v, &num) == 0 && num <= 1000000)
            json_object_object_add(o, key, json_object_new_int((int)num));
        else
            json_object_object_add(o, key, json_object_new_string(v));
    }
    *out = o;
    return 0;
}

/* net update NET add|delete host|forward: like virsh net-update, on the definition
 * (--config), the running network (--live) or, by default, both. */
int cmd_net_update(struct cli *c)
{
    const char *name = c->pos[0], *action = c->pos[1], *section = c->pos[2];
    enum net_update_op op;
    if (strcmp(action, "add") == 0)
        op = NET_UPDATE_ADD;
    else if (strcmp(action, "delete") == 0)
        op = NET_UPDATE_DELETE;
    else
        return qv_fail(&c->err, -EINVAL, "net update: \"%s\" is not add or delete", action);
    int sec = -1;
    for (int i = 0; net_update_section_names[i]; i++)
        if (strcmp(section, net_update_section_names[i]) == 0)
            sec = i;
    if (sec < 0)
        return qv_fail(&c->err, -EINVAL, "net update: \"%s\" is not host or forward", section);
    _cleanup_json_ json_object *item = NULL;
    int r = update_item(c, (enum net_update_section)sec, &item);
    if (r < 0)
        return r;
    bool live = cli_flag(c, "live"), config = cli_flag(c, "config");
    if (!live && !config) {
        config = true;
        live = net_running(&c->paths, name, NULL);
    }
    char label[32];
    snprintf(label, sizeof(label), "%s %s", net_update_section_names[sec], op == NET_UPDATE_ADD ? "added" : "deleted");
    if (config) {
        if ((r = net_update_config(&c->paths, name, op, (enum net_update_section)sec, item, NULL, &c->err)) < 0)
            return r;
        if (!c->quiet)
            printf("network %s: %s to its definition\n", name, label);
    }
    if (live) {
        _cleanup_strv_ struct strv applied = {0};
        r = network_update_live(&c->paths, name, op, (enum net_update_section)sec, item, &applied, &c->err);
        if (r < 0)
            return config ? qv_prefix(&c->err, "network %s: the definition changed, the running network did not: ", name) : r;
        if (!c->quiet)
            print_live(name, &applied, NULL);
    }
    return 0;
}
