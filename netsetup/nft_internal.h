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

/* The set elements this context knows a tap to have in its network's bridge table
 * ("SET { KEY }" lines), or NULL when it does not know (never touched it, or the
 * elements went). nsnft_remember() with NULL forgets; nsnft_forget_network() with
 * NULL forgets every network. */
const char *nsnft_known(const struct netsetup_nft *n, const char *network, const char *tap);
void nsnft_remember(struct netsetup_nft *n, const char *network, const char *tap, const char *elems);
void nsnft_forget_network(struct netsetup_nft *n, const char *network);

/* The bridge table's frame: sets, base and shared chains with their rules. Added or
 * re-declared without touching the elements (the NICs' filters) already there. */
void nsnft_bridge_frame(struct buf *b, const char *table);
/* Makes sure a tap to be plugged unfiltered has no filter left from an earlier NIC of
 * the same name; a network that is not running has none. */
int nsnft_nic_clear(struct netsetup_nft *n, const char *network, const char *tap, struct qv_err *e);

#endif
