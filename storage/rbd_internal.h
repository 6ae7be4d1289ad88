/* Inside the rbd backend (rbd.c: the libraries, connections, list/info/create/resize
 * and the backend table; rbd_image.c: snapshots, clones, watchers, delete, copies through
 * qemu-img, raw reads, details). Not for use outside storage/. */
#ifndef QV_STORAGE_RBD_INTERNAL_H
#define QV_STORAGE_RBD_INTERNAL_H

#include <rados/librados.h>
#include <rbd/librbd.h>

#include "storage/storage.h"

/* Seconds for the monitor handshake and for each monitor or OSD operation. */
#define RBD_TIMEOUT_S "10"

/* ---- the libraries ---- */
#define RBD_DL_RADOS_SYMBOLS(X)                                                                       \
    X(rados_create2) X(rados_conf_set) X(rados_conf_get) X(rados_conf_read_file) X(rados_connect)    \
    X(rados_shutdown) X(rados_ioctx_create) X(rados_ioctx_destroy) X(rados_cluster_stat)             \
    X(rados_ioctx_pool_stat) X(rados_mon_command) X(rados_buffer_free)
#define RBD_DL_RBD_SYMBOLS(X)                                                                         \
    X(rbd_list2) X(rbd_image_spec_list_cleanup) X(rbd_open_read_only) X(rbd_close) X(rbd_stat)       \
    X(rbd_get_features) X(rbd_create4) X(rbd_image_options_create) X(rbd_image_options_destroy)      \
    X(rbd_image_options_set_uint64) X(rbd_remove) X(rbd_open) X(rbd_resize2) X(rbd_diff_iterate2)   \
    X(rbd_snap_list) X(rbd_snap_list_end) X(rbd_snap_is_protected) X(rbd_snap_protect)              \
    X(rbd_snap_unprotect) X(rbd_snap_create) X(rbd_snap_remove) X(rbd_snap_exists) X(rbd_snap_rollback)                   \
    X(rbd_list_children3) X(rbd_linked_image_spec_list_cleanup) X(rbd_linked_image_spec_cleanup)     \
    X(rbd_snap_spec_cleanup) X(rbd_get_parent) X(rbd_watchers_list) X(rbd_watchers_list_cleanup)     \
    X(rbd_clone3) X(rbd_rename) X(rbd_read2) X(rbd_version) X(rbd_get_size)

#define RBD_DL_DECLARE(fn) extern __typeof__(fn) *sym_##fn;
RBD_DL_RADOS_SYMBOLS(RBD_DL_DECLARE)
RBD_DL_RBD_SYMBOLS(RBD_DL_DECLARE)
#undef RBD_DL_DECLARE

struct rbd_conn {
    rados_t cluster;
    rados_ioctx_t io;
    bool held;      /* shared under storage_rbd_hold: closing it leaves it open */
};
/* Connected as the pool's user with bounded waits, an I/O context on its Ceph pool; errors name the pool. */
int rbd_conn_open(const struct storage_pool *p, struct rbd_conn *c, struct qv_err *e);
void rbd_conn_close(struct rbd_conn *c);
/* "HOST:PORT,HOST" or NULL */
char *rbd_monitors_joined(const struct storage_pool *p);
int rbd_name_check(const struct storage_pool *p, const char *name, struct qv_err *e);
/* Every image, temporaries too, sorted. */
int rbd_list_all(const struct storage_pool *p, struct rbd_conn *c, struct strv *names, struct qv_err *e);
int rbd_image_missing(const struct storage_pool *p, const char *name, int r, struct qv_err *e);
int rbd_image_open(const struct storage_pool *p, struct rbd_conn *c, const char *name, const char *snap,
                   bool writable, rbd_image_t *img, struct qv_err *e);
void rbd_image_closep(rbd_image_t *img);
#define _cleanup_image_ _cleanup_(rbd_image_closep)

/* rbd_image.c: rows of the backend table */
int rbdp_vol_delete(const struct storage_pool *p, const char *name, unsigned flags, struct qv_err *e);
int rbdp_vol_img(const struct storage_pool *p, const char *name, const char *secret_id, struct storage_img *out,
                 struct qv_err *e);
int rbdp_vol_copy_in(const struct storage_pool *p, const char *name, const struct storage_img *src,
                     enum storage_format format, const struct storage_progress *prog, struct qv_err *e);
int rbdp_refresh(const struct storage_pool *p, struct qv_err *e);
int rbdp_vol_stream(const struct storage_pool *p, const char *name, int fd, const struct storage_progress *prog,
                    struct qv_err *e);
int rbdp_vol_detail(const struct storage_pool *p, const char *name, json_object *into, struct qv_err *e);
int rbdp_vol_clone_cow(const struct storage_pool *p, const char *src, const char *snap, const struct storage_pool *dst,
                       const char *name, bool *snap_made, struct qv_err *e);

#endif
