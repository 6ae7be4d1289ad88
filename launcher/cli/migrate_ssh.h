/* Between migrate.c and migrate_ssh.c: the destination's half of a migration started
 * over ssh (migrate --to ssh://[USER@]HOST[:PORT]). */
#ifndef QV_CLI_MIGRATE_SSH_H
#define QV_CLI_MIGRATE_SSH_H

#include <stdbool.h>
#include <stddef.h>
#include <netinet/in.h>
#include <arpa/inet.h>

struct cli;

struct ssh_target {
    char user[64];                  /* "": ssh's default */
    char host[256];                 /* as given: ssh connects to it, TLS checks it */
    int port;                       /* 0: ssh's default */
    char addr[INET6_ADDRSTRLEN];    /* host resolved here: where the stream goes */
    bool v6;
    char qvisor[4096];              /* the remote qvisor, once ssh_start_incoming ran */
    char token[68];                 /* the destination's one-time token, once it waits */
};

struct ssh_incoming {
    const char *definition;         /* the VM's definition (JSON), sent on ssh's stdin */
    bool persistent;                /* defined there once it runs the guest (the control line says so) */
    bool copy_storage;              /* local disks copied over NBD (migrate --copy-storage) */
    bool postcopy;                  /* migrate --postcopy: the destination's QEMU may use userfaultfd */
    const char *tls_dir;            /* --tls DIR on the destination too; NULL: plain */
    const char *remote_qvisor;      /* NULL: this program's own path */
    const char *remote_root;        /* NULL: the remote's default root */
    const char *ssh_config;         /* ssh -F FILE; NULL: ssh's defaults */
    int wait_timeout_ms;
};

/* Parses ssh://[USER@]HOST[:PORT] (refusing what the remote shell would change) and
 * resolves HOST. */
int ssh_target_parse(struct cli *c, const char *to, struct ssh_target *t);
/* Runs migrate-incoming on the target through ssh; the numeric ADDR:PORT it waits on
 * (HOST as resolved here, the port it chose) in address. */
int ssh_start_incoming(struct cli *c, const char *vm, struct ssh_target *t, const struct ssh_incoming *in,
                       char *address, size_t addrlen);
/* After a failed migration: migrate-incoming NAME --cancel on the target (the waiting
 * destination goes; a VM running there stays). 0, or -EIO when that did not work. */
int ssh_cancel_incoming(struct cli *c, const char *vm, const struct ssh_target *t, const struct ssh_incoming *in);

#endif
