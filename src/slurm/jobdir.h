/*
 * jobdir — the job directories of spank_jobgate.so: BASE/<jobid>, one per
 * --jobgate job on a node, readable only by the job's user. The plugin (root)
 * writes the job's key and certificate there; the job finds it through
 * JOBGATE_DIR. Made when the job's first step starts on the node, removed by
 * the job's epilog.
 *
 * The user owns what is inside, so nothing here follows a symbolic link or
 * trusts a name twice: every step goes through directory descriptors
 * (openat, mkdirat, unlinkat with O_NOFOLLOW). Owns no state.
 */
#ifndef JG_JOBDIR_H
#define JG_JOBDIR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Deepest directory tree jobdir_remove() descends (deeper: -ELOOP). */
#define JOBDIR_MAX_DEPTH 64

/* Makes BASE/<jobid> (mode 0700, owned by uid:gid), or accepts it when an
 * earlier step of the job made it (a directory, not a link, owned by uid,
 * nothing for group or others). BASE is made (0755) when missing and must be
 * a directory of this process's user that no one else may write. On success
 * 0 and the directory's path in path; else -errno and a message in err. */
int jobdir_make(const char *base, uint32_t jobid, uid_t uid, gid_t gid,
                char *path, size_t pathlen, char *err, size_t errlen);

/* Removes BASE/<jobid> with everything in it. NFS keeps a removed file that
 * is still open as .nfsXXXX until it is closed: the removal is tried again
 * for up to timeout_ms while the directory is not empty. An absent
 * directory is 0; else -errno and a message in err. */
int jobdir_remove(const char *base, uint32_t jobid, int timeout_ms, char *err, size_t errlen);

#endif
