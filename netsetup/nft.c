#include <stdlib.h>
#include <string.h>

#include "netsetup/internal.h"
#include "netsetup/nft_internal.h"

/* What this context knows to be in the kernel for each tap it touched: the tap's set
 * elements, so that replacing or removing them needs no listing (listing a set costs
 * libnftables about 12 us per element). Sorted by (network, tap). */
struct known_tap {
    char *network, *tap, *elems;
};

struct netsetup_nft {
    struct nft_ctx *ctx;
    struct known_tap *known;
    size_t nknown, cap;
};

int netsetup_nft_open(struct netsetup_nft **out, struct qv_err *e)
{
    int r = ns_dl_libnftables(e);
    if (r < 0)
        return r;
    struct nft_ctx *ctx = sym_nft_ctx_new(NFT_CTX_DEFAULT);
    if (!ctx)
        return qv_fail(e, -ENOMEM, "nftables: cannot create a context");
    if (sym_nft_ctx_buffer_output(ctx) < 0 || sym_nft_ctx_buffer_error(ctx) < 0) {
        sym_nft_ctx_free(ctx);
        return qv_fail(e, -ENOMEM, "nftables: cannot buffer output");
    }
    struct netsetup_nft *n = qv_xcalloc(1, sizeof(*n));
    n->ctx = ctx;
    *out = n;
    return 0;
}

void netsetup_nft_close(struct netsetup_nft *n)
{
    if (!n)
        return;
    nsnft_forget_network(n, NULL);
    free(n->known);
    sym_nft_ctx_free(n->ctx);
    free(n);
}

void netsetup_nft_closep(struct netsetup_nft **n)
{
    netsetup_nft_close(*n);
    *n = NULL;
}

static int known_cmp(const char *network, const char *tap, const struct known_tap *k)
{
    int c = strcmp(network, k->network);
    return c ? c : strcmp(tap, k->tap);
}

/* The index of (network, tap), or where it would go (*found false). */
static size_t known_find(const struct netsetup_nft *n, const char *network, const char *tap, bool *found)
{
    size_t lo = 0, hi = n->nknown;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = known_cmp(network, tap, &n->known[mid]);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    *found = false;
    return lo;
}

const char *nsnft_known(const struct netsetup_nft *n, const char *network, const char *tap)
{
    bool found;
    size_t i = known_find(n, network, tap, &found);
    return found ? n->known[i].elems : NULL;
}

static void known_free(struct known_tap *k)
{
    free(k->network);
    free(k->tap);
    free(k->elems);
}

void nsnft_remember(struct netsetup_nft *n, const char *network, const char *tap, const char *elems)
{
    bool found;
    size_t i = known_find(n, network, tap, &found);
    if (found && elems) {
        free(n->known[i].elems);
        n->known[i].elems = qv_xstrdup(elems);
    } else if (found) {
        known_free(&n->known[i]);
        memmove(&n->known[i], &n->known[i + 1], (n->nknown - i - 1) * sizeof(*n->known));
        n->nknown--;
    } else if (elems) {
        if (n->nknown == n->cap) {
            n->cap = n->cap ? 2 * n->cap : 16;
            n->known = qv_xrealloc(n->known, n->cap * sizeof(*n->known));
        }
        memmove(&n->known[i + 1], &n->known[i], (n->nknown - i) * sizeof(*n->known));
        n->known[i] = (struct known_tap){qv_xstrdup(network), qv_xstrdup(tap), qv_xstrdup(elems)};
        n->nknown++;
    }
}

void nsnft_forget_network(struct netsetup_nft *n, const char *network)
{
    size_t kept = 0;
    for (size_t i = 0; i < n->nknown; i++) {
        if (!network || strcmp(n->known[i].network, network) == 0)
            known_free(&n->known[i]);
        else
            n->known[kept++] = n->known[i];
    }
    n->nknown = kept;
}

/* nft reports the kernel's errno only as text ("Could not process rule: No such
 * file or directory"); callers need the code to tell "absent" from "broken". */
static int errno_from_text(const char *msg)
{
    static const struct { const char *text; int err; } known[] = {
        {"No such file or directory", ENOENT}, {"File exists", EEXIST},
        {"Device or resource busy", EBUSY},    {"Operation not permitted", EPERM},
        {"Permission denied", EACCES},         {"Cannot allocate memory", ENOMEM},
        {"Operation not supported", EOPNOTSUPP}, {"No buffer space available", ENOBUFS},
        {"Numerical result out of range", ERANGE}, {"Too many links", EMLINK},
    };
    for (size_t i = 0; i < ARRAY_SIZE(known); i++)
        if (strstr(msg, known[i].text))
            return -known[i].err;
    return -EIO;
}

/* "Error: ..." lines and the command each refers to, on one line. */
static void summarise(const char *buf, char *out, size_t outlen)
{
    struct buf b = {0};
    buf_adds(&b, "");
    const char *p = buf ? buf : "";
    bool want_command = false;
    while (*p) {
        size_t len = strcspn(p, "\n");
        const char *err = memmem(p, len, "Error: ", 7);
        if (err) {
            if (b.len)
                buf_adds(&b, "; ");
            buf_add(&b, err + 7, len - (size_t)(err + 7 - p));
            want_command = true;
        } else if (want_command && len && !strchr("^ ~", *p)) {
            buf_adds(&b, " (");
            buf_add(&b, p, len > 160 ? 160 : len);
            buf_adds(&b, ")");
            want_command = false;
        }
        p += len;
        if (*p)
            p++;
    }
    buf_add(&b, "", 1);
    snprintf(out, outlen, "%s", b.len > 1 ? b.p : "nft failed without a message");
    buf_free(&b);
}

int netsetup_nft_run(struct netsetup_nft *n, const char *what, const char *script, struct qv_err *e)
{
    int rc = sym_nft_run_cmd_from_buffer(n->ctx, script);
    const char *err = sym_nft_ctx_get_error_buffer(n->ctx);
    (void)sym_nft_ctx_get_output_buffer(n->ctx);    /* reset: nothing of it is wanted */
    if (rc == 0)
        return 0;
    char msg[768];
    summarise(err, msg, sizeof(msg));
    return qv_fail(e, errno_from_text(err ? err : ""), "%s: nft: %s", what, msg);
}

int nsnft_list_json(struct netsetup_nft *n, const char *what, const char *cmd, json_object **out,
                    struct qv_err *e)
{
    unsigned flags = sym_nft_ctx_output_get_flags(n->ctx);
    sym_nft_ctx_output_set_flags(n->ctx, flags | NFT_CTX_OUTPUT_JSON);
    int rc = sym_nft_run_cmd_from_buffer(n->ctx, cmd);
    sym_nft_ctx_output_set_flags(n->ctx, flags);
    const char *text = sym_nft_ctx_get_output_buffer(n->ctx);
    const char *err = sym_nft_ctx_get_error_buffer(n->ctx);
    if (rc != 0) {
        char msg[768];
        summarise(err, msg, sizeof(msg));
        return qv_fail(e, errno_from_text(err ? err : ""), "%s: nft: %s", what, msg);
    }
    _cleanup_free_ char *copy = qv_xstrdup(text);
    return json_parse_str(what, copy, out, e);
}

/* The "nftables" array of a JSON listing; each item is {"table": {...}} etc. */
json_object *nsnft_items(json_object *doc)
{
    json_object *arr = NULL;
    if (!json_object_object_get_ex(doc, "nftables", &arr) || !json_object_is_type(arr, json_type_array))
        return NULL;
    return arr;
}

int netsetup_nft_net_list(struct netsetup_nft *n, struct strv *networks, struct qv_err *e)
{
    _cleanup_json_ json_object *doc = NULL;
    int r = nsnft_list_json(n, "listing qvisor's nft tables", "list tables", &doc, e);
    if (r < 0)
        return r;
    json_object *arr = nsnft_items(doc);
    size_t len = arr ? json_object_array_length(arr) : 0;
    for (size_t i = 0; i < len; i++) {
        json_object *t = NULL, *name = NULL;
        if (!json_object_object_get_ex(json_object_array_get_idx(arr, i), "table", &t) ||
            !json_object_object_get_ex(t, "name", &name))
            continue;
        const char *s = json_object_get_string(name);
        if (!str_startswith(s, NETSETUP_TABLE_PREFIX))
            continue;
        s += strlen(NETSETUP_TABLE_PREFIX);
        if (!strv_contains((const char *const *)networks->v, s))
            strv_push(networks, s);
    }
    strv_sort(networks);
    return 0;
}
