/* qvisor filter define|list|show|undefine: named NIC filters (virsh nwfilter-*). */
#include <stdlib.h>
#include <string.h>

#include "launcher/cli/cli.h"

#define RULE_FORM "DIRECTION:PROTOCOL[:MATCH]:ACTION"

/* --rule DIRECTION:PROTOCOL[:MATCH]:ACTION, MATCH being PORTS or KEY=VALUE items joined by
 * commas (ports=, type=, source=, destination=): out:tcp:25:drop, in:tcp:8000-8100:accept,
 * in:icmp:type=echo-request,source=10.0.0.0/8:accept, out:all:destination=fd00::/8:drop.
 * Direction and protocol are the first two fields and the action the last, so an IPv6
 * prefix's colons stay in MATCH. */
static int rule_from_flag(struct cli *c, const char *v, json_object **out)
{
    const char *c1 = strchr(v, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL, *last = strrchr(v, ':');
    if (!c2)
        return qv_fail(&c->err, -EINVAL, "--rule %s: expected " RULE_FORM " (e.g. out:tcp:25:drop)", v);
    _cleanup_json_ json_object *o = json_object_new_object();
    json_object_object_add(o, "direction", json_object_new_string_len(v, (int)(c1 - v)));
    json_object_object_add(o, "protocol", json_object_new_string_len(c1 + 1, (int)(c2 - c1 - 1)));
    if (last > c2) {
        _cleanup_free_ char *match = qv_xasprintf("%.*s", (int)(last - c2 - 1), c2 + 1);
        _cleanup_strv_ struct strv items = {0};
        str_split_escaped(match, ',', &items);
        for (size_t i = 0; i < items.n; i++) {
            char *eq = strchr(items.v[i], '=');
            const char *key = eq ? items.v[i] : "ports", *val = eq ? eq + 1 : items.v[i];
            if (eq)
                *eq = '\0';
            static const char *const keys[] = {"ports", "type", "source", "destination", NULL};
            if (!strv_contains(keys, key))
                return qv_fail(&c->err, -EINVAL, "--rule %s: \"%s\" is not ports, type, source or destination", v, key);
            if (json_object_object_get_ex(o, key, NULL))
                return qv_fail(&c->err, -EINVAL, "--rule %s: %s given twice", v, key);
            /* a type given as a number is one */
            bool number = strcmp(key, "type") == 0 && *val && strspn(val, "0123456789") == strlen(val) && strlen(val) < 6;
            json_object_object_add(o, key, number ? json_object_new_int(atoi(val)) : json_object_new_string(val));
        }
    }
    json_object_object_add(o, "action", json_object_new_string(last + 1));
    *out = json_object_get(o);
    return 0;
}

/* Running NICs that use the filter take the new definition now, as libvirt's
 * nwfilter-define updates running guests. How many did; -EIO naming the first VM
 * whose supervisor could not. */
static int reload_users(struct cli *c, const char *filter, size_t *nics)
{
    _cleanup_strv_ struct strv vms = {0};
    int failed = 0;
    *nics = 0;
    if (vm_list_names(&c->paths, &vms, NULL) < 0)
        return 0;
    for (size_t i = 0; i < vms.n; i++) {
        _cleanup_vm_def_ struct vm_def d = {0};
        bool uses = false;
        if (vm_load(&c->paths, vms.v[i], &d, NULL) < 0)
            continue;
        for (size_t k = 0; k < d.nnics; k++)
            uses |= d.nics[k].filter_name && strcmp(d.nics[k].filter_name, filter) == 0;
        if (!uses)
            continue;
        json_object *req = ctl_request("filter-reload"), *reply = NULL, *n = NULL;
        json_object_object_add(req, "filter", json_object_new_string(filter));
        struct qv_err e = {0};
        int r = ctl_call(&c->paths, vms.v[i], req, 10000, &reply, &e);
        if (r == -EBUSY && strstr(e.msg, "is not running"))
            continue;
        if (r < 0) {
            if (!failed++)
                qv_fail(&c->err, -EIO, "filter %s is defined, but %s's running NICs still have the old one: %s "
                                       "(they take it at their next plug or lease)", filter, vms.v[i], e.msg);
            continue;
        }
        if (json_object_object_get_ex(reply, "nics", &n))
            *nics += (size_t)json_object_get_int64(n);
        json_object_put(reply);
    }
    return failed ? -EIO : 0;
}

int cmd_filter_define(struct cli *c)
{
    const char *file = c->npos ? c->pos[0] : NULL, *name = cli_opt(c, "name");
    if (!file == !name)
        return qv_fail(&c->err, -EINVAL, "filter define: give a FILE or --name NAME (with --rule ...)");
    _cleanup_json_ json_object *o = NULL;
    int r = 0;
    if (file) {
        if ((r = json_read_file(file, &o, &c->err)) < 0)
            return r;
    } else {
        o = json_object_new_object();
        json_object *rules = json_object_new_array();
        json_object_object_add(o, "name", json_object_new_string(name));
        json_object_object_add(o, "rules", rules);
        for (size_t i = 0; i < c->nopts; i++) {
            json_object *rule = NULL;
            if (strcmp(c->opts[i].opt->name, "rule") != 0)
                continue;
            if ((r = rule_from_flag(c, c->opts[i].value, &rule)) < 0)
                return r;
            json_object_array_add(rules, rule);
        }
    }
    _cleanup_(filter_def_free) struct filter_def f = {0};
    if ((r = filter_define(&c->paths, o, &f, &c->err)) < 0)
        return file && r == -EINVAL ? qv_prefix(&c->err, "%s: ", file) : r;
    size_t nics = 0;
    r = reload_users(c, f.name, &nics);
    if (!c->quiet)
        printf("defined filter %s (clean-traffic, %zu in, %zu out rule%s)%s", f.name, f.nallow_in, f.ndeny_out,
               f.ndeny_out == 1 ? "" : "s", nics ? "" : "\n");
    if (!c->quiet && nics)
        printf("; %zu running NIC%s took it\n", nics, nics == 1 ? "" : "s");
    return r;
}

static json_object *filter_json(const struct filter_def *f)
{
    if (!filter_builtin(f->name)) {
        json_object *o = filter_def_to_json(f);
        json_object_object_add(o, "builtin", json_object_new_boolean(false));
        return o;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(f->name));
    json_object_object_add(o, "builtin", json_object_new_boolean(true));
    json_object_object_add(o, "description",
                           json_object_new_string(strcmp(f->name, "none") == 0
                                                      ? "no filtering"
                                                      : "the guest sends only from its NIC's MAC and its leased or static "
                                                        "IPv4 address (ARP likewise); other ethertypes are dropped"));
    json_object_object_add(o, "rules", json_object_new_array());
    return o;
}

int cmd_filter_show(struct cli *c)
{
    _cleanup_(filter_def_free) struct filter_def f = {0};
    int r = filter_load(&c->paths, c->pos[0], &f, &c->err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *o = filter_json(&f);
    cli_print_json(o);
    return 0;
}

int cmd_filter_list(struct cli *c)
{
    _cleanup_strv_ struct strv names = {0};
    int r = filter_list_names(&c->paths, &names, &c->err);
    if (r < 0)
        return r;
    static const char *const builtins[] = {"clean-traffic", "none"};
    json_object *arr = json_object_new_array();
    if (!c->json)
        printf("%-20s %-8s %s\n", "NAME", "RULES", "KIND");
    for (size_t i = 0; i < ARRAY_SIZE(builtins) + names.n; i++) {
        const char *name = i < ARRAY_SIZE(builtins) ? builtins[i] : names.v[i - ARRAY_SIZE(builtins)];
        _cleanup_(filter_def_free) struct filter_def f = {0};
        struct qv_err e = {0};
        if (filter_load(&c->paths, name, &f, &e) < 0) {
            if (!c->json)
                printf("%-20s %-8s (%s)\n", name, "invalid", e.msg);
            continue;
        }
        if (c->json)
            json_object_array_add(arr, filter_json(&f));
        else
            printf("%-20s %-8zu %s\n", f.name, f.nallow_in + f.ndeny_out,
                   filter_builtin(name) ? "built in" : "clean-traffic + rules");
    }
    if (c->json)
        cli_print_json(arr);
    json_object_put(arr);
    return 0;
}

int cmd_filter_undefine(struct cli *c)
{
    int r = filter_undefine(&c->paths, c->pos[0], &c->err);
    if (r == 0 && !c->quiet)
        printf("undefined filter %s\n", c->pos[0]);
    return r;
}
