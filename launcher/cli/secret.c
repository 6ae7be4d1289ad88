/* qvisor secret define|set-value|list|show|undefine: values go in (stdin or --file) and
 * never come out. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launcher/cli/cli.h"
#include "launcher/model/storedef.h"

int cmd_secret_define(struct cli *c)
{
    _cleanup_secret_def_ struct secret_def d = {0};
    bool updated;
    int r = secret_define(&c->paths, c->pos[0], cli_opt(c, "usage"), cli_opt(c, "description"), &d, &updated,
                          &c->err);
    if (r == 0 && !c->quiet)
        printf("%s secret %s (%s)%s%s%s\n", updated ? "updated" : "defined", d.name, d.uuid,
               d.has_value ? "" : "; give it a value: qvisor secret set-value ", d.has_value ? "" : d.name,
               d.has_value ? "" : " < FILE");
    return r;
}

int cmd_secret_set_value(struct cli *c)
{
    const char *file = cli_opt(c, "file");
    const char *from = file ? file : "/dev/stdin";
    if (!file && isatty(STDIN_FILENO))
        return qv_fail(&c->err, -EINVAL, "secret set-value reads the value from standard input or --file FILE, "
                       "never from the command line (qvisor secret set-value %s < FILE)", c->pos[0]);
    _cleanup_free_ char *value = NULL;
    size_t len = 0;
    int r = read_file(from, 8192, &value, &len);
    if (r < 0)
        return qv_failerr(&c->err, r, "secret %s: %s", c->pos[0], file ? file : "standard input");
    r = secret_set_value(&c->paths, c->pos[0], value, len, &c->err);
    explicit_bzero(value, len);
    if (r == 0 && !c->quiet)
        printf("secret %s set\n", c->pos[0]);
    return r;
}

static json_object *secret_json(const struct secret_def *d)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(d->name));
    if (d->uuid[0])
        json_object_object_add(o, "uuid", json_object_new_string(d->uuid));
    json_object_object_add(o, "usage", d->usage ? json_object_new_string(d->usage) : NULL);
    if (d->description)
        json_object_object_add(o, "description", json_object_new_string(d->description));
    json_object_object_add(o, "value", json_object_new_boolean(d->has_value));
    return o;
}

int cmd_secret_list(struct cli *c)
{
    _cleanup_strv_ struct strv names = {0};
    int r = secret_list_names(&c->paths, &names, &c->err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *arr = json_object_new_array();
    if (!c->json)
        printf("%-20s %-36s %-28s %s\n", "NAME", "UUID", "USAGE", "VALUE");
    for (size_t i = 0; i < names.n; i++) {
        _cleanup_secret_def_ struct secret_def d = {0};
        struct qv_err e = {0};
        if (secret_load(&c->paths, names.v[i], &d, &e) < 0) {
            fprintf(stderr, "qvisor: %s\n", e.msg);
            continue;
        }
        if (c->json)
            json_object_array_add(arr, secret_json(&d));
        else
            printf("%-20s %-36s %-28s %s\n", d.name, d.uuid[0] ? d.uuid : "-", d.usage ? d.usage : "-",
                   d.has_value ? "set" : "none");
    }
    if (c->json)
        cli_print_json(arr);
    return 0;
}

int cmd_secret_show(struct cli *c)
{
    _cleanup_secret_def_ struct secret_def d = {0};
    int r = secret_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    _cleanup_strv_ struct strv users = {0};
    secret_users(&c->paths, d.name, &users, NULL);
    _cleanup_json_ json_object *o = secret_json(&d);
    json_object *u = json_object_new_array();
    for (size_t i = 0; i < users.n; i++)
        json_object_array_add(u, json_object_new_string(users.v[i]));
    json_object_object_add(o, "used_by", u);
    cli_print_json(o);
    return 0;
}

int cmd_secret_undefine(struct cli *c)
{
    int r = secret_undefine(&c->paths, c->pos[0], &c->err);
    if (r == 0 && !c->quiet)
        printf("undefined secret %s (its value is gone)\n", c->pos[0]);
    return r;
}
