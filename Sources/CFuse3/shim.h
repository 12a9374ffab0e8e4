#ifndef SCOUTFS_CFUSE3_SHIM_H
#define SCOUTFS_CFUSE3_SHIM_H

// libfuse's API level: 3.12 (Debian 12 ships 3.14).
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
// The kernel protocol's own numbers, for the requests the session reads itself (SessionIO).
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/file.h>
#include <fcntl.h>
#include <errno.h>

// Function-like macros and bitfields do not import into Swift; these wrap them.

static inline int scout_session_loop_mt(struct fuse_session *se, unsigned int max_threads) {
    struct fuse_loop_config *cfg = fuse_loop_cfg_create();
    if (!cfg) return -ENOMEM;
    fuse_loop_cfg_set_max_threads(cfg, max_threads);
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    int rc = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
    return rc;
}

static inline void scout_fi_set_keep_cache(struct fuse_file_info *fi, int on) { fi->keep_cache = on ? 1 : 0; }
static inline void scout_fi_set_direct_io(struct fuse_file_info *fi, int on) { fi->direct_io = on ? 1 : 0; }
static inline void scout_fi_set_cache_readdir(struct fuse_file_info *fi, int on) { fi->cache_readdir = on ? 1 : 0; }
static inline int scout_fi_flock_release(const struct fuse_file_info *fi) { return fi->flock_release; }

static inline void scout_conn_want(struct fuse_conn_info *conn, unsigned int flag) {
    if (conn->capable & flag) conn->want |= flag;
}
static inline void scout_conn_unwant(struct fuse_conn_info *conn, unsigned int flag) { conn->want &= ~flag; }

#endif
