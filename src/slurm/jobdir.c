/* jobdir — see jobdir.h. */
#include "jobdir.h"
#include "plugerr.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Makes base and its missing parents (0755), then opens it as a directory that this
 * process's user owns and no one else may write. A descriptor, or -errno. */
static int open_base(const char *base, char *err, size_t errlen)
{
    char p[4096];
    if (snprintf(p, sizeof(p), "%s", base) >= (int)sizeof(p))
        return plug_err(err, errlen, -ENAMETOOLONG, "%s: path too long", base);
    for (char *s = p + 1; ; s++) {
        if (*s == '/' || *s == '\0') {
            char c = *s;
            *s = '\0';
            if (mkdir(p, 0755) < 0 && errno != EEXIST)
                return plug_err(err, errlen, -errno, "cannot make %s: %s", p, strerror(errno));
            *s = c;
            if (!c)
                break;
        }
    }
    int fd = open(base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return plug_err(err, errlen, -errno, "cannot open %s: %s", base, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return plug_err(err, errlen, -e, "%s: %s", base, strerror(e));
    }
    if (st.st_uid != geteuid() || (st.st_mode & 022)) {
        close(fd);
        return plug_err(err, errlen, -EPERM, "%s: must belong to uid %u and be writable by it "
                    "alone (it is uid %u, mode %04o)", base, (unsigned)geteuid(),
                    (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
    }
    return fd;
}

int jobdir_make(const char *base, uint32_t jobid, uid_t uid, gid_t gid,
                char *path, size_t pathlen, char *err, size_t errlen)
{
    char name[16];
    snprintf(name, sizeof(name), "%u", (unsigned)jobid);
    if (snprintf(path, pathlen, "%s/%s", base, name) >= (int)pathlen)
        return plug_err(err, errlen, -ENAMETOOLONG, "%s/%s: path too long", base, name);
    int bfd = open_base(base, err, errlen);
    if (bfd < 0)
        return bfd;
    int rc = 0;
    bool made = mkdirat(bfd, name, 0700) == 0;
    if (!made && errno != EEXIST) {
        rc = plug_err(err, errlen, -errno, "cannot make %s: %s", path, strerror(errno));
        goto out;
    }
    int fd = openat(bfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        rc = plug_err(err, errlen, -errno, "cannot open %s: %s", path,
                  errno == ENOTDIR || errno == ELOOP ? "not a directory" : strerror(errno));
        goto out;
    }
    struct stat st;
    if (made && (fchown(fd, uid, gid) < 0 || fchmod(fd, 0700) < 0)) {
        rc = plug_err(err, errlen, -errno, "cannot give %s to uid %u: %s", path, (unsigned)uid,
                  strerror(errno));
        unlinkat(bfd, name, AT_REMOVEDIR);
    } else if (fstat(fd, &st) < 0) {
        rc = plug_err(err, errlen, -errno, "%s: %s", path, strerror(errno));
    } else if (st.st_uid != uid || (st.st_mode & 077)) {
        rc = plug_err(err, errlen, -EPERM, "%s exists and is not the job's (uid %u, mode %04o; "
                  "the job's user is uid %u)", path, (unsigned)st.st_uid,
                  (unsigned)(st.st_mode & 07777), (unsigned)uid);
    }
    close(fd);
out:
    close(bfd);
    return rc;
}

/* Removes name in dirfd with all it holds, never following a link. 0 or -errno. */
static int rmtree_at(int dirfd, const char *name, int depth)
{
    if (unlinkat(dirfd, name, 0) == 0)
        return 0;
    if (errno == ENOENT)
        return 0;
    if (errno != EISDIR && errno != EPERM)
        return -errno;
    if (depth >= JOBDIR_MAX_DEPTH)
        return -ELOOP;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return -e;
    }
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        int r = rmtree_at(fd, e->d_name, depth + 1);
        if (r < 0 && rc == 0)
            rc = r;
    }
    closedir(d);
    if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && rc == 0)
        rc = -errno;
    return rc;
}

int jobdir_remove(const char *base, uint32_t jobid, int timeout_ms, char *err, size_t errlen)
{
    char name[16];
    snprintf(name, sizeof(name), "%u", (unsigned)jobid);
    int bfd = open(base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (bfd < 0)
        return errno == ENOENT ? 0 : plug_err(err, errlen, -errno, "cannot open %s: %s", base,
                                          strerror(errno));
    int rc;
    for (int waited = 0; ; waited += 100) {
        rc = rmtree_at(bfd, name, 0);
        if ((rc != -ENOTEMPTY && rc != -EBUSY) || waited >= timeout_ms)
            break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    close(bfd);
    if (rc < 0)
        return plug_err(err, errlen, rc, "cannot remove %s/%s: %s", base, name, strerror(-rc));
    return 0;
}
