/* Shared by the nft_*.c files of netsetup. */
#ifndef QV_NETSETUP_NFT_INTERNAL_H
#define QV_NETSETUP_NFT_INTERNAL_H

#include "netsetup/netsetup.h"

/* Runs a listing command with JSON output and parses it. */
int nsnft_list_json(struct netsetup_nft *n, const char *what, const char *cmd, json_object **out,
                    struct qv_err *e);
json_object *nsnft_items(json_object *doc);

/* Network names become table names inside nft scripts, so they are checked here
 * even though the launcher validates definitions too. */
int nsnft_check_network(const char *network, struct qv_err *e);

#endif
