/* define, undefine, list, show, argv: the definition commands. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "launcher/cli/cli.h"
#include "launcher/model/storedef.h"

/* ---- define from virt-install-like flags ---- */

static bool parse_bool_word(const char *v, bool *out)
{
    static const char *const yes[] = {"on", "yes", "true", "1", NULL}, *const no[] = {"off", "no", "false", "0", NULL};
    if (strv_contains(yes, v))
        return *out = true, true;
    if (strv_contains(no, v))
        return *out = false, true;
    return false;
}

/* A value typed for its key; a value that does not parse stays a string so that the
 * definition's validator reports it with its JSON path. */
static json_object *typed(const char *key, const char *v, const char *const *ints, const char *const *bools)
{
    if (strv_contains(bools, key)) {
        bool b;
        if (!v)
            return json_object_new_boolean(true);
        if (parse_bool_word(v, &b))
            return json_object_new_boolean(b);
    }
    if (v && strv_contains(ints, key)) {
        uint64_t n;
        if (parse_u64(v, &n) == 0 && n <= INT32_MAX)
            return json_object_new_int64((int64_t)n);
    }
    return json_object_new_string(v ? v : "");
}

/* "tcp:127.0.0.1:2222-:22" (QEMU's hostfwd syntax) as a hostfwd object. */
static int parse_hostfwd_spec(const char *spec, json_object **out, struct qv_err *e)
{
    char proto[8] = "", host[64] = "", guest[64] = "";
    unsigned hp = 0, gp = 0;
    const char *dash = strchr(spec, '-');
    if (!dash)
        goto bad;
    char left[128];
    snprintf(left, sizeof(left), "%.*s", (int)(dash - spec), spec);
    char *c1 = strchr(left, ':'), *c2 = c1 ? strrchr(left, ':') : NULL;
    if (!c1 || c1 == c2)
        goto bad;
    *c1 = *c2 = '\0';
    snprintf(proto, sizeof(proto), "%s", left[0] ? left : "tcp");
    snprintf(host, sizeof(host), "%s", c1 + 1);
    if (sscanf(c2 + 1, "%u", &hp) != 1)
        goto bad;
    const char *gc = strrchr(dash + 1, ':');
    if (!gc || sscanf(gc + 1, "%u", &gp) != 1)
        goto bad;
    snprintf(guest, sizeof(guest), "%.*s", (int)(gc - dash - 1), dash + 1);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "protocol", json_object_new_string(proto));
    if (host[0])
        json_object_object_add(o, "host", json_object_new_string(host));
    json_object_object_add(o, "host_port", json_object_new_int((int)hp));
    if (guest[0])
        json_object_object_add(o, "guest", json_object_new_string(guest));
    json_object_object_add(o, "guest_port", json_object_new_int((int)gp));
    *out = o;
    return 0;
bad:
    return qv_fail(e, -EINVAL, "hostfwd=%s: expected PROTO:HOST:PORT-GUEST:PORT, e.g. tcp:127.0.0.1:2222-:22", spec);
}

/* "k=v,k2,k3=v3" into an object; a first item without '=' is `first_key`. */
static int spec_to_object(const char *opt, const char *spec, const char *first_key, const char *const *ints,
                          const char *const *bools, json_object **out, struct qv_err *e)
{
    _cleanup_strv_ struct strv items = {0};
    str_split_escaped(spec, ',', &items);
    json_object *o = json_object_new_object();
    int r = 0;
    for (size_t i = 0; i < items.n && r == 0; i++) {
        char *item = items.v[i], *eq = strchr(item, '=');
        if (!*item)
            continue;
        if (eq)
            *eq = '\0';
        const char *key = item, *val = eq ? eq + 1 : NULL;
        if (i == 0 && !eq && first_key && !strv_contains(bools, item)) {
            key = first_key;
            val = item;
        }
        if (strcmp(key, "hostfwd") == 0) {
            json_object *fwd = NULL, *list;
            if (!val) {
                r = qv_fail(e, -EINVAL, "--%s: hostfwd needs a value", opt);
                break;
            }
            if ((r = parse_hostfwd_spec(val, &fwd, e)) < 0)
                break;
            if (!json_object_object_get_ex(o, "hostfwd", &list)) {
                list = json_object_new_array();
                json_object_object_add(o, "hostfwd", list);
            }
            json_object_array_add(list, fwd);
            continue;
        }
        json_object_object_add(o, key, typed(key, val, ints, bools));
    }
    if (r < 0) {
        json_object_put(o);
        return r;
    }
    *out = o;
    return 0;
}

static void set_path(json_object *root, const char *section, const char *key, json_object *v)
{
    json_object *s;
    if (!json_object_object_get_ex(root, section, &s)) {
        s = json_object_new_object();
        json_object_object_add(root, section, s);
    }
    json_object_object_add(s, key, v);
}

static void append(json_object *root, const char *key, json_object *v)
{
    json_object *a;
    if (!json_object_object_get_ex(root, key, &a)) {
        a = json_object_new_array();
        json_object_object_add(root, key, a);
    }
    json_object_array_add(a, v);
}

/* A path as typed, absolute: the supervisor reads it later from another directory. */
static json_object *abs_path_json(const char *v)
{
    char real[PATH_MAX], cwd[PATH_MAX];
    if (v[0] == '/' || !getcwd(cwd, sizeof(cwd)))
        return json_object_new_string(v);
    if (realpath(v, real))
        return json_object_new_string(real);
    struct buf b = {0};
    buf_printf(&b, "%s/%s", cwd, v);
    json_object *j = json_object_new_string(b.p);
    buf_free(&b);
    return j;
}

/* --share HOSTDIR[:TAG[:ro]] as a filesystems[] item; a relative HOSTDIR is made
 * absolute (a CI job shares "."), and the tag defaults to shareN in the definition. */
static json_object *share_spec(const char *spec)
{
    _cleanup_free_ char *s = qv_xstrdup(spec);
    json_object *o = json_object_new_object();
    size_t n = strlen(s);
    if (n > 3 && (strcmp(s + n - 3, ":ro") == 0 || strcmp(s + n - 3, ":rw") == 0)) {
        json_object_object_add(o, "readonly", json_object_new_boolean(s[n - 2] == 'r' && s[n - 1] == 'o'));
        s[n - 3] = '\0';
    }
    char *colon = strrchr(s, ':');
    if (colon) {
        *colon = '\0';
        json_object_object_add(o, "tag", json_object_new_string(colon + 1));
    }
    json_object_object_add(o, "source", abs_path_json(s));
    return o;
}

/* --cloud-init USER-DATA [--meta-data FILE], --credential NAME=VALUE|NAME=@FILE...
 * Messages name a credential, never its value. */
static int guestdata_from_flags(struct cli *c, json_object *o)
{
    const char *user = NULL, *meta = NULL;
    for (size_t i = 0; i < c->nopts; i++) {
        const char *opt = c->opts[i].opt->name, *v = c->opts[i].value;
        if (strcmp(opt, "cloud-init") == 0) {
            user = v;
        } else if (strcmp(opt, "meta-data") == 0) {
            meta = v;
        } else if (strcmp(opt, "credential") == 0) {
            const char *eq = strchr(v, '=');
            if (!eq || eq == v)
                return qv_fail(&c->err, -EINVAL, "--credential: expected NAME=VALUE or NAME=@FILE");
            json_object *item = json_object_new_object();
            json_object_object_add(item, "name", json_object_new_string_len(v, (int)(eq - v)));
            if (eq[1] == '@')
                json_object_object_add(item, "file", abs_path_json(eq + 2));
            else
                json_object_object_add(item, "value", json_object_new_string(eq + 1));
            append(o, "credentials", item);
        }
    }
    if (meta && !user)
        return qv_fail(&c->err, -EINVAL, "--meta-data is for the seed of --cloud-init USER-DATA");
    if (user) {
        set_path(o, "cloud_init", "user_data", abs_path_json(user));
        if (meta)
            set_path(o, "cloud_init", "meta_data", abs_path_json(meta));
    }
    return 0;
}

int cli_definition_from_flags(struct cli *c, const char *name, json_object **out)
{
    static const char *const disk_ints[] = {"boot_index", NULL};
    static const char *const disk_bools[] = {"discard", "readonly", "snapshot", NULL};
    static const char *const nic_ints[] = {"queues", "boot_index", "vlan", NULL};
    static const char *const nic_bools[] = {"vhost", NULL};
    static const char *const gfx_ints[] = {"port", NULL};
    static const char *const none[] = {NULL};
    json_object *o = json_object_new_object();
    json_object_object_add(o, "name", json_object_new_string(name));
    int r = 0;
    for (size_t i = 0; i < c->nopts && r == 0; i++) {
        const char *opt = c->opts[i].opt->name, *v = c->opts[i].value;
        json_object *item = NULL;
        if (strcmp(opt, "machine") == 0 || strcmp(opt, "accel") == 0 || strcmp(opt, "memory") == 0 ||
            strcmp(opt, "console") == 0 || strcmp(opt, "description") == 0) {
            json_object_object_add(o, opt, json_object_new_string(v));
        } else if (str_startswith(opt, "on-")) {
            char key[32];
            snprintf(key, sizeof(key), "on_%s", opt + 3);
            json_object_object_add(o, key, json_object_new_string(v));
        } else if (strcmp(opt, "cpus") == 0) {
            set_path(o, "cpu", "count", typed("count", v, (const char *const[]){"count", NULL}, none));
        } else if (strcmp(opt, "cpu-model") == 0) {
            set_path(o, "cpu", "model", json_object_new_string(v));
        } else if (strcmp(opt, "kernel") == 0 || strcmp(opt, "initrd") == 0 || strcmp(opt, "firmware") == 0) {
            set_path(o, "boot", opt, json_object_new_string(v));
        } else if (strcmp(opt, "append") == 0) {
            set_path(o, "boot", "cmdline", json_object_new_string(v));
        } else if (strcmp(opt, "agent") == 0) {
            json_object_object_add(o, "agent", json_object_new_boolean(true));
        } else if (strcmp(opt, "disk") == 0) {
            json_object *vol;
            if ((r = spec_to_object(opt, v, "file", disk_ints, disk_bools, &item, &c->err)) == 0) {
                /* vol=POOL/NAME, virt-install's word for it */
                if (json_object_object_get_ex(item, "vol", &vol)) {
                    json_object_object_add(item, "volume", json_object_get(vol));
                    json_object_object_del(item, "vol");
                }
                append(o, "disks", item);
            }
        } else if (strcmp(opt, "cdrom") == 0) {
            if (strcmp(v, "empty") == 0)
                item = json_object_new_object();
            else
                r = spec_to_object(opt, v, "file", disk_ints, none, &item, &c->err);
            if (r == 0)
                append(o, "cdroms", item);
        } else if (strcmp(opt, "nic") == 0) {
            if ((r = spec_to_object(opt, v, "type", nic_ints, nic_bools, &item, &c->err)) == 0)
                append(o, "nics", item);
        } else if (strcmp(opt, "share") == 0) {
            append(o, "filesystems", share_spec(v));
        } else if (strcmp(opt, "graphics") == 0) {
            if ((r = spec_to_object(opt, v, "type", gfx_ints, none, &item, &c->err)) == 0)
                json_object_object_add(o, "graphics", item);
        }
    }
    if (r == 0)
        r = guestdata_from_flags(c, o);
    if (r < 0) {
        json_object_put(o);
        return r;
    }
    *out = o;
    return 0;
}

static bool looks_like_file(const char *arg)
{
    size_t n = strlen(arg);
    return strcmp(arg, "-") == 0 || strchr(arg, '/') || (n > 5 && strcmp(arg + n - 5, ".json") == 0);
}

/* The definition that define and create take: a JSON file, "-" for standard input,
 * or a name and flags (`extra` names the options that are not definition flags). */
static int definition_input(struct cli *c, const char *const *extra, json_object **out, bool *from_file)
{
    const char *arg = c->pos[0];
    _cleanup_json_ json_object *o = NULL;
    int r;
    *from_file = looks_like_file(arg);
    if (*from_file) {
        for (size_t i = 0; i < c->nopts; i++)
            if (!strv_contains(extra, c->opts[i].opt->name))
                return qv_fail(&c->err, -EINVAL, "%s %s: --%s is for a definition by name, not from a file",
                               c->cmd->name, arg, c->opts[i].opt->name);
        if (strcmp(arg, "-") == 0) {
            _cleanup_free_ char *text = NULL;
            size_t len = 0;
            r = read_file("/dev/stdin", 4u << 20, &text, &len);
            if (r < 0)
                return qv_failerr(&c->err, r, "standard input");
            r = json_parse_buf("<stdin>", text, len, &o, &c->err);
        } else {
            r = json_read_file(arg, &o, &c->err);
        }
    } else {
        if (!name_valid(arg))
            return qv_fail(&c->err, -EINVAL, "\"%s\" is neither a JSON file nor a valid VM name", arg);
        r = cli_definition_from_flags(c, arg, &o);
    }
    if (r == 0)
        *out = json_object_get(o);
    return r;
}

/* --disk size=20G[,pool=P][,format=F] (virt-install's habit): a new volume P/NAME-diskN
 * (pool default, qcow2) for that disk. The definition names the volumes; they are made
 * only once the rest of it is valid, and removed again when defining fails. */
struct sized_disk {
    char ref[160];
    uint64_t size;
    enum storage_format format;
};

static int plan_sized_disks(struct cli *c, json_object *o, struct sized_disk **out, size_t *n)
{
    json_object *disks, *name;
    *out = NULL;
    *n = 0;
    if (!json_object_object_get_ex(o, "disks", &disks) || !json_object_object_get_ex(o, "name", &name))
        return 0;
    for (size_t i = 0; i < json_object_array_length(disks); i++) {
        json_object *k = json_object_array_get_idx(disks, i), *size, *pool, *fmt;
        if (!json_object_object_get_ex(k, "size", &size))
            continue;
        if (json_object_object_get_ex(k, "file", NULL) || json_object_object_get_ex(k, "volume", NULL))
            return qv_fail(&c->err, -EINVAL, "--disk size=%s makes a new volume: not with a file or vol=",
                           json_object_get_string(size));
        *out = qv_xrealloc(*out, (*n + 1) * sizeof(**out));
        struct sized_disk *sd = &(*out)[(*n)++];
        if (parse_size(json_object_get_string(size), &sd->size) < 0 || sd->size == 0)
            return qv_fail(&c->err, -EINVAL, "--disk size=%s: not a size (like 20G)", json_object_get_string(size));
        sd->format = STORAGE_FORMAT_PROBE;    /* the pool's: qcow2 in a dir pool, raw in rbd */
        if (json_object_object_get_ex(k, "format", &fmt) && storage_format_parse(json_object_get_string(fmt), &sd->format) < 0)
            return qv_fail(&c->err, -EINVAL, "--disk format=%s: not one of qcow2, raw", json_object_get_string(fmt));
        const char *pn = json_object_object_get_ex(k, "pool", &pool) ? json_object_get_string(pool) : "default";
        snprintf(sd->ref, sizeof(sd->ref), "%s/%s-disk%zu", pn, json_object_get_string(name), i);
        struct vol_ref ref;
        int r = vol_ref_parse(sd->ref, &ref, &c->err);
        if (r < 0)
            return r;
        _cleanup_pool_def_ struct pool_def pd = {0};
        struct storage_vol_info vi;
        struct qv_err le = {0};
        if ((r = pool_open(&c->paths, ref.pool, &pd, &le)) < 0)
            return qv_fail(&c->err, r, "--disk size=: %s", le.msg);
        struct storage_pool sp = pool_storage(&pd);
        if ((r = pool_backend(&pd)->vol_info(&sp, ref.name, &vi, &le)) == 0)
            return qv_fail(&c->err, -EEXIST, "--disk size=: volume %s exists already (use it with --disk vol=%s, "
                           "or delete it)", sd->ref, sd->ref);
        if (r != -ENOENT)
            return qv_fail(&c->err, r, "--disk size=: %s", le.msg);
        json_object_object_del(k, "size");
        json_object_object_del(k, "pool");
        json_object_object_add(k, "volume", json_object_new_string(sd->ref));
    }
    return 0;
}

static void delete_sized(struct cli *c, const struct sized_disk *sd, size_t n)
{
    for (size_t i = 0; i < n; i++)
        volume_delete(&c->paths, sd[i].ref, true, NULL);
}

/* Checks the definition, then makes its sized disks' volumes. */
static int make_sized_disks(struct cli *c, json_object *o, struct sized_disk **sd, size_t *n)
{
    int r = plan_sized_disks(c, o, sd, n);
    if (r < 0 || !*n)
        return r;
    _cleanup_vm_def_ struct vm_def d = {0};
    if ((r = vm_def_from_json(o, &d, &c->err)) < 0)
        return r;
    for (size_t i = 0; i < *n; i++) {
        struct volume_create_args a = {.size = (*sd)[i].size, .format = (*sd)[i].format};
        if ((r = volume_create(&c->paths, (*sd)[i].ref, &a, &c->err)) < 0) {
            delete_sized(c, *sd, i);
            return r;
        }
    }
    return 0;
}

int cmd_define(struct cli *c)
{
    const char *arg = c->pos[0];
    static const char *const extra[] = {"print", NULL};
    _cleanup_json_ json_object *o = NULL;
    bool from_file;
    int r = definition_input(c, extra, &o, &from_file);
    if (r < 0)
        return r;
    if (cli_flag(c, "print")) {
        _cleanup_vm_def_ struct vm_def d = {0};
        if ((r = vm_def_from_json(o, &d, &c->err)) < 0)
            return from_file ? qv_prefix(&c->err, "%s: ", arg) : r;
        _cleanup_json_ json_object *norm = vm_def_to_json_public(&d);
        cli_print_json(norm);
        return 0;
    }
    _cleanup_vm_def_ struct vm_def d = {0};
    _cleanup_free_ struct sized_disk *sized = NULL;
    size_t nsized = 0;
    if (!from_file && (r = make_sized_disks(c, o, &sized, &nsized)) < 0)
        return r;
    r = vm_define(&c->paths, o, false, &d, &c->err);
    if (r < 0) {
        delete_sized(c, sized, nsized);
        return from_file && r == -EINVAL ? qv_prefix(&c->err, "%s: ", arg) : r;
    }
    for (size_t i = 0; i < nsized && !c->quiet; i++)
        printf("created volume %s\n", sized[i].ref);
    if (!c->quiet)
        printf("defined %s (%s)\n", d.name, d.uuid);
    return 0;
}

/* virsh create: a VM that runs without being defined, and is gone once it stops. */
int cmd_create(struct cli *c)
{
    const char *arg = c->pos[0];
    static const char *const extra[] = {"wait-timeout", NULL};
    int timeout_ms;
    int r = cli_opt_seconds_ms(c, "wait-timeout", 60000, &timeout_ms);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *o = NULL;
    bool from_file;
    if ((r = definition_input(c, extra, &o, &from_file)) < 0)
        return r;
    _cleanup_vm_def_ struct vm_def d = {0};
    if ((r = vm_create_transient(&c->paths, o, &d, &c->err)) < 0)
        return from_file && r == -EINVAL ? qv_prefix(&c->err, "%s: ", arg) : r;
    const char *args[] = {"run", d.name, NULL};
    r = supervisor_spawn(&c->paths, args, timeout_ms, d.name, &c->err);
    if (r < 0 && r != -ETIMEDOUT && !vm_supervised(&c->paths, d.name, NULL))
        vm_transient_forget(&c->paths, d.name);    /* no supervisor ever took it */
    if (r == 0 && !c->quiet)
        printf("%s created and started (transient: gone once it stops)\n", d.name);
    return r;
}

int cmd_undefine(struct cli *c)
{
    _cleanup_runstate_ struct vm_runstate rs = {0};
    bool supervised;
    vm_observe(&c->paths, c->pos[0], &rs, &supervised);
    bool active = supervised || (rs.state != VM_SHUTOFF && rs.state != VM_CRASHED);
    if (active)
        return qv_fail(&c->err, -EBUSY, "%s is running (stop it first)", c->pos[0]);
    /* what goes with the definition is checked before anything changes */
    _cleanup_strv_ struct strv vols = {0};
    int r;
    bool has_save = managedsave_exists(&c->paths, c->pos[0]);
    if (has_save && !cli_flag(c, "managed-save"))
        return qv_fail(&c->err, -EBUSY, "%s has a managed save (its guest's saved state): start it to resume it, or "
                       "undefine with --managed-save to remove the saved state too", c->pos[0]);
    int nsnap = snapshot_count(&c->paths, c->pos[0]);
    bool forget_snapshots = cli_flag(c, "snapshots-metadata");
    if (nsnap > 0 && !forget_snapshots)
        return qv_fail(&c->err, -EBUSY, "%s has %d snapshot%s (qvisor snapshot list %s): delete them first, or "
                       "undefine with --snapshots-metadata to forget them (their data stays in the images)",
                       c->pos[0], nsnap, nsnap == 1 ? "" : "s", c->pos[0]);
    if (cli_flag(c, "remove-storage")) {
        _cleanup_vm_def_ struct vm_def d = {0};
        if ((r = vm_load(&c->paths, c->pos[0], &d, &c->err)) < 0 ||
            (r = vm_volumes_removable(&c->paths, &d, &vols, &c->err)) < 0)
            return r == -EBUSY ? qv_prefix(&c->err, "%s: --remove-storage: ", c->pos[0]) : r;
    }
    if ((r = vm_undefine(&c->paths, c->pos[0], &c->err)) < 0)
        return r;
    if (!c->quiet)
        printf("undefined %s\n", c->pos[0]);
    char saved[PATH_MAX];
    managedsave_path(&c->paths, c->pos[0], saved, sizeof(saved));
    if (has_save && unlink(saved) == 0 && !c->quiet)
        printf("removed its managed save %s\n", saved);
    managedsave_mark_resume(&c->paths, c->pos[0], false);
    struct qv_err se = {0};
    if (nsnap > 0 && snapshot_forget_all(&c->paths, c->pos[0], &se) < 0)
        fprintf(stderr, "qvisor: %s: snapshot records stay: %s\n", c->pos[0], se.msg);
    for (size_t i = 0; i < vols.n; i++) {
        struct qv_err ve = {0};
        if (volume_delete(&c->paths, vols.v[i], true, &ve) < 0)
            fprintf(stderr, "qvisor: %s: volume %s stays: %s\n", c->pos[0], vols.v[i], ve.msg);
        else if (!c->quiet)
            printf("deleted volume %s\n", vols.v[i]);
    }
    /* a new VM of the same name must not inherit these UEFI variables */
    char nvram[PATH_MAX];
    vm_nvram_path(&c->paths, c->pos[0], nvram, sizeof(nvram));
    if (!cli_flag(c, "keep-nvram") && unlink(nvram) == 0 && !c->quiet)
        printf("removed its UEFI variable store %s\n", nvram);
    /* nor this TPM's keys (libvirt: --keep-tpm) */
    char tpm[PATH_MAX];
    vm_tpm_dir(&c->paths, c->pos[0], tpm, sizeof(tpm));
    if (!cli_flag(c, "keep-tpm")) {
        int t = vm_tpm_remove(&c->paths, c->pos[0]);
        if (t > 0 && !c->quiet)
            printf("removed its TPM state %s\n", tpm);
        else if (t < 0)
            fprintf(stderr, "qvisor: %s: TPM state %s stays: %s\n", c->pos[0], tpm, strerror(-t));
    }
    return 0;
}

/* *same: the edited JSON means the definition it started from (compared parsed and
 * written back, so "1024M" for "1G" or a reordered object is no change). Validation errors
 * are the caller's: they are reported like define's. */
static int edit_unchanged(json_object *next, json_object *cur, bool *same, struct qv_err *e)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_def_from_json(next, &d, e);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *norm = vm_def_to_json(&d);
    *same = json_object_equal(norm, cur);
    return 0;
}

int cli_edit_json(struct cli *c, json_object *cur, json_object **next, char *tmp, bool *edited)
{
    int r;
    *edited = false;
    if (!isatty(STDIN_FILENO)) {
        _cleanup_free_ char *text = NULL;
        size_t len = 0;
        if ((r = read_file("/dev/stdin", 4u << 20, &text, &len)) < 0)
            return qv_failerr(&c->err, r, "standard input");
        return json_parse_buf("<stdin>", text, len, next, &c->err);
    }
    _cleanup_close_ int fd = mkstemps(tmp, 5);
    if (fd < 0)
        return qv_failerr(&c->err, -errno, "temporary file");
    _cleanup_free_ char *text = json_pretty(cur);
    write_all(fd, text, strlen(text));
    const char *editor = getenv("VISUAL") ? getenv("VISUAL") : getenv("EDITOR") ? getenv("EDITOR") : "vi";
    _cleanup_strv_ struct strv argv = {0};
    str_split_escaped(editor, ' ', &argv);
    strv_push(&argv, tmp);
    char exe[PATH_MAX];
    if (find_program(argv.v[0], exe, sizeof(exe)) < 0) {
        unlink(tmp);
        return qv_fail(&c->err, -ENOENT, "editor %s not found (set EDITOR, or pipe the new JSON in)", argv.v[0]);
    }
    pid_t pid = fork();
    if (pid == 0) {
        extern char **environ;
        execve(exe, argv.v, environ);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    r = json_read_file(tmp, next, &c->err);
    if (r < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (r == 0) {
            json_object_put(*next);
            *next = NULL;
            r = qv_fail(&c->err, -EIO, "the editor failed; nothing changed (your text is in %s)", tmp);
        } else {
            qv_prefix(&c->err, "nothing changed (your text is in %s): ", tmp);
        }
        return r;
    }
    *edited = true;
    return 0;
}

/* edit: the definition through $EDITOR (or, from a pipe, the new JSON on stdin),
 * validated like define, written only when valid. Changes apply at the next start. */
int cmd_edit(struct cli *c)
{
    const char *name = c->pos[0];
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, name, &d, &c->err);
    if (r < 0)
        return r;
    _cleanup_json_ json_object *cur = vm_def_to_json(&d);
    _cleanup_json_ json_object *next = NULL;
    char tmp[] = "/tmp/qvisor-edit-XXXXXX.json";
    bool edited = false;
    if ((r = cli_edit_json(c, cur, &next, tmp, &edited)) < 0)
        return r;
    /* a refused edit keeps the user's text, as a JSON syntax error already does */
    json_object *v;
    bool same = false;
    if (!json_object_object_get_ex(next, "name", &v) || strcmp(json_object_get_string(v), name) != 0)
        r = qv_fail(&c->err, -EINVAL, "name: a VM keeps its name (undefine and define to rename)");
    else if ((r = edit_unchanged(next, cur, &same, &c->err)) == 0 && !same)
        r = vm_define(&c->paths, next, true, NULL, &c->err);
    if (r < 0)
        return edited ? qv_prefix(&c->err, "nothing changed (your text is in %s): ", tmp) : r;
    if (edited)
        unlink(tmp);
    if (!c->quiet && same)
        printf("%s: no change\n", name);
    else if (!c->quiet)
        printf("%s changed%s\n", name, vm_supervised(&c->paths, name, NULL) ? " (from its next start)" : "");
    return 0;
}

int cmd_show(struct cli *c)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    if (cli_flag(c, "confinement")) {
        json_object *reply = NULL, *st, *conf;
        if ((r = ctl_call(&c->paths, c->pos[0], ctl_request("status"), 5000, &reply, &c->err)) < 0)
            return r;
        if (json_object_object_get_ex(reply, "status", &st) && json_object_object_get_ex(st, "confinement", &conf))
            cli_print_json(conf);
        else
            r = qv_fail(&c->err, -EBUSY, "%s: QEMU is not running", c->pos[0]);
        json_object_put(reply);
        return r;
    }
    if (d.qemu_args.n) {
        _cleanup_free_ char *args = strv_join((const char *const *)d.qemu_args.v, " ");
        fprintf(stderr, "qvisor: warning: %s: qemu_args are passed to QEMU unchecked: %s\n", d.name, args);
    }
    _cleanup_json_ json_object *o = vm_def_to_json_public(&d);
    cli_print_json(o);
    return 0;
}

int cmd_list(struct cli *c)
{
    _cleanup_strv_ struct strv names = {0};
    int r = vm_list_names(&c->paths, &names, &c->err);
    if (r < 0)
        return r;
    json_object *arr = json_object_new_array();
    bool all = cli_flag(c, "all");
    if (!c->json)
        printf("%-24s %-10s %5s %8s%s\n", "NAME", "STATE", "CPUS", "MEMORY", all ? "  AUTOSTART" : "");
    for (size_t i = 0; i < names.n; i++) {
        _cleanup_vm_def_ struct vm_def d = {0};
        struct qv_err e = {0};
        _cleanup_runstate_ struct vm_runstate rs = {0};
        bool supervised;
        vm_observe(&c->paths, names.v[i], &rs, &supervised);
        const char *state = vm_state_names[rs.state];
        bool active = rs.state != VM_SHUTOFF && rs.state != VM_CRASHED;
        if (!cli_flag(c, "all") && !active)
            continue;
        bool ok = vm_load(&c->paths, names.v[i], &d, &e) == 0;
        if (!ok)
            state = "invalid";
        else if (rs.state == VM_SHUTOFF && !supervised && managedsave_exists(&c->paths, names.v[i]))
            state = "saved";    /* shut off, and the next start resumes its managed save */
        char mem[32] = "-";
        if (ok)
            format_size(d.memory.bytes, mem, sizeof(mem));
        if (c->json) {
            json_object *j = json_object_new_object();
            json_object_object_add(j, "name", json_object_new_string(names.v[i]));
            if (ok)
                json_object_object_add(j, "uuid", json_object_new_string(d.uuid));
            json_object_object_add(j, "state", json_object_new_string(state));
            if (rs.state_reason[0])
                json_object_object_add(j, "state_reason", json_object_new_string(rs.state_reason));
            if (ok) {
                json_object_object_add(j, "vcpus", json_object_new_int(d.cpu.count));
                json_object_object_add(j, "memory", json_object_new_string(mem));
                json_object_object_add(j, "autostart", json_object_new_boolean(d.autostart));
            } else {
                json_object_object_add(j, "error", json_object_new_string(e.msg));
            }
            json_object_array_add(arr, j);
        } else if (ok) {
            printf("%-24s %-10s %5d %8s", names.v[i], state, d.cpu.count, mem);
            if (all)
                printf("  %-*s", rs.state_reason[0] ? 9 : 0, d.autostart ? "yes" : "no");
            printf("%s%s\n", rs.state_reason[0] ? "  " : "", rs.state_reason);
        } else {
            printf("%-24s %-10s %5s %8s  (%s)\n", names.v[i], state, "-", "-", e.msg);
        }
    }
    if (c->json)
        cli_print_json(arr);
    json_object_put(arr);
    return 0;
}

int cmd_argv(struct cli *c)
{
    _cleanup_vm_def_ struct vm_def d = {0};
    int r = vm_load(&c->paths, c->pos[0], &d, &c->err);
    if (r < 0)
        return r;
    _cleanup_host_config_ struct host_config hc = {0};
    struct host_facts f;
    struct launch_plan plan;
    if ((r = host_config_load(&c->paths, &hc, &c->err)) < 0 || (r = host_facts_probe(&c->paths, &hc, &f, &c->err)) < 0 ||
        (r = vm_resolve_disks(&c->paths, &d, &c->err)) < 0 || (r = build_launch_plan(&d, &f, &plan, &c->err)) < 0)
        return r;
    for (size_t i = 0; i < plan.argv.n; i++)
        printf("%s\n", plan.argv.v[i]);
    launch_plan_free(&plan);
    return 0;
}
