/* Internal to launcher/: the CLI's option parser and the command table. */
#ifndef QV_CLI_H
#define QV_CLI_H

#include "launcher/supervisor/supervisor.h"

/* `qvisor ARGS...`: the whole command line, as main() gets it. */
int qvisor_main(int argc, char **argv);

#define CLI_MAX_OPTS 64

struct cli_opt {
    const char *name;       /* "memory" for --memory */
    bool has_arg;
    bool repeat;            /* may be given several times (--disk) */
    char short_name;        /* 'f' for -f, or 0 */
};

#define QMP_CLI_TIMEOUT_MS (10 * 60 * 1000)

struct cli {
    struct qv_paths paths;
    bool json, quiet;
    const struct cli_command *cmd;
    /* options given to the command, in order */
    struct { const struct cli_opt *opt; const char *value; } opts[CLI_MAX_OPTS];
    size_t nopts;
    char **pos;
    int npos;
    struct qv_err err;
};

struct cli_command {
    const char *name;
    int (*run)(struct cli *c);
    const struct cli_opt *opts;     /* NULL-name terminated */
    int min_pos, max_pos;           /* positional arguments */
    const char *usage;
    const char *summary;
};

/* Last value of --name, or NULL. */
const char *cli_opt(const struct cli *c, const char *name);
bool cli_flag(const struct cli *c, const char *name);
/* Parses --name as milliseconds from seconds ("60", "0.5"); dflt when absent. */
int cli_opt_seconds_ms(struct cli *c, const char *name, int dflt, int *out);
/* Starts `qvisor --root R ARGS... --ready-fd 3` detached (double fork, setsid,
 * stdio on /dev/null) and waits for its "ok" or error line. */
/* Prints JSON (pretty) to stdout. */
void cli_print_json(json_object *o);

/* The definition that DEFINITION_FLAGS give (define, create, boot), named `name`;
 * options that are not definition flags are left alone. */
int cli_definition_from_flags(struct cli *c, const char *name, json_object **out);
int cmd_boot(struct cli *c);
/* units.c: the host's side (autostart, shutdown-all) and the systemd generator, which
 * is qvisor called as qvisor-generator (argv as systemd gives it) */
int cmd_autostart(struct cli *c);
int cmd_net_autostart(struct cli *c);
int cmd_shutdown_all(struct cli *c);
int qvisor_generator(int argc, char **argv);
/* A live QEMU of VM `name` whatever its supervisor (vm.c) */
bool cli_qemu_lives(struct cli *c, const char *name);

/* Commands, implemented across cli_*.c */
int cmd_define(struct cli *c);
int cmd_create(struct cli *c);
int cmd_undefine(struct cli *c);
int cmd_edit(struct cli *c);
/* The edited JSON of `cur`: from $VISUAL/$EDITOR on a copy in `tmp` (a mkstemps
 * template ending ".json"; *edited then, and the copy is kept when the editor or the
 * JSON fails, named in the error) or, from a pipe, from stdin. */
int cli_edit_json(struct cli *c, json_object *cur, json_object **next, char *tmp, bool *edited);
int cmd_list(struct cli *c);
int cmd_show(struct cli *c);
int cmd_argv(struct cli *c);
int cmd_run(struct cli *c);
int cmd_start(struct cli *c);
int cmd_stop(struct cli *c);
int cmd_kill(struct cli *c);
int cmd_simple(struct cli *c);
int cmd_status(struct cli *c);
int cmd_console(struct cli *c);
int cmd_qmp(struct cli *c);
int cmd_hmp(struct cli *c);
int cmd_events(struct cli *c);
int cmd_logs(struct cli *c);
int cmd_net_define(struct cli *c);
int cmd_net_undefine(struct cli *c);
int cmd_net_show(struct cli *c);
int cmd_net_list(struct cli *c);
int cmd_net_run(struct cli *c);
int cmd_net_start(struct cli *c);
int cmd_net_stop(struct cli *c);
int cmd_net_leases(struct cli *c);
int cmd_net_gc(struct cli *c);
int cmd_net_edit(struct cli *c);
int cmd_net_update(struct cli *c);
int cmd_filter_define(struct cli *c);
int cmd_filter_list(struct cli *c);
int cmd_filter_show(struct cli *c);
int cmd_filter_undefine(struct cli *c);
int cmd_attach_disk(struct cli *c);
int cmd_detach_disk(struct cli *c);
int cmd_attach_nic(struct cli *c);
int cmd_attach_device(struct cli *c);
int cmd_detach_device(struct cli *c);
int cmd_detach_nic(struct cli *c);
int cmd_ifaddr(struct cli *c);
int cmd_change_media(struct cli *c);
int cmd_disk_resize(struct cli *c);
int cmd_blkstat(struct cli *c);
int cmd_setmem(struct cli *c);
int cmd_setvcpus(struct cli *c);
int cmd_display(struct cli *c);
int cmd_stats(struct cli *c);
int cmd_block_pull(struct cli *c);
int cmd_block_commit(struct cli *c);
int cmd_block_copy(struct cli *c);
int cmd_block_job(struct cli *c);
/* `status`: one line per running job */
void cli_print_jobs(json_object *jobs);
int cmd_host_check(struct cli *c);
int cmd_secret_define(struct cli *c);
int cmd_secret_set_value(struct cli *c);
int cmd_secret_list(struct cli *c);
int cmd_secret_show(struct cli *c);
int cmd_secret_undefine(struct cli *c);
int cmd_pool_define(struct cli *c);
int cmd_pool_undefine(struct cli *c);
int cmd_pool_list(struct cli *c);
int cmd_pool_show(struct cli *c);
int cmd_pool_refresh(struct cli *c);
int cmd_vol_create(struct cli *c);
int cmd_vol_list(struct cli *c);
int cmd_vol_info(struct cli *c);
int cmd_vol_resize(struct cli *c);
int cmd_vol_delete(struct cli *c);
int cmd_vol_clone(struct cli *c);
int cmd_clone(struct cli *c);
int cmd_vol_import(struct cli *c);
int cmd_vol_export(struct cli *c);
/* agent.c: the guest agent verbs */
#define AGENT_EXEC_DEFAULT_S 300                    /* exec without --timeout */
#define AGENT_CLI_TIMEOUT_MS 10000                  /* one agent command */
#define AGENT_FREEZE_CLI_TIMEOUT_MS (10 * 60 * 1000) /* guest-fsfreeze-freeze */
int cmd_exec(struct cli *c);
int cmd_cp(struct cli *c);
int cmd_agent(struct cli *c);
/* ifaddr --source agent: the interfaces as the guest sees them */
int cli_ifaddr_agent(struct cli *c, const char *vm);
char *cli_base64_encode(const void *data, size_t n);
int cli_base64_decode(const char *s, unsigned char **out, size_t *n);
/* save.c */
int cmd_save(struct cli *c);
int cmd_restore(struct cli *c);
int cmd_managedsave(struct cli *c);
int cmd_managedsave_remove(struct cli *c);
/* migrate.c */
int cmd_migrate(struct cli *c);
int cmd_migrate_incoming(struct cli *c);
int cmd_evacuate(struct cli *c);
/* save.c: sends a save or migrate request and waits for its reply (into *reply when not
 * NULL), with progress on a terminal; Ctrl-C asks the supervisor to cancel. */
int cli_migration_call(struct cli *c, const char *vm, json_object *req, json_object **reply);
/* The supervisor request for a managed save of vm (its directory made); NULL with c->err. */
json_object *cli_managedsave_request(struct cli *c, const char *vm);
int cmd_snapshot_create(struct cli *c);
int cmd_snapshot_list(struct cli *c);
int cmd_snapshot_show(struct cli *c);
int cmd_snapshot_current(struct cli *c);
int cmd_snapshot_revert(struct cli *c);
int cmd_snapshot_delete(struct cli *c);
/* "9.8G" */
void cli_size_human(uint64_t bytes, char *out, size_t outlen);

#endif
