/*
 * backend_unix — routes to a UNIX socket: the local apps of `jobgate run`,
 * in the owner's private directory. The owner is proven by the socket's and
 * its directory's ownership at registration, and by SO_PEERCRED on every
 * connection (I2, I3). Owns nothing; no lock.
 */
#include "backend.h"

#include <errno.h>
#include <libgen.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "xprt.h"

int backend_check_unix(const char *path, uid_t uid, int may_be_missing, char *why, size_t len)
{
    struct sockaddr_un sun;
    struct stat st;
    char dir[sizeof(sun.sun_path)];
    size_t n = strlen(path);

    if (path[0] != '/' || n >= sizeof(sun.sun_path)) {
        snprintf(why, len, "socket path must be absolute and shorter than %zu bytes",
                 sizeof(sun.sun_path));
        return -EINVAL;
    }
    memcpy(dir, path, n + 1);
    const char *d = dirname(dir);
    if (lstat(d, &st) < 0) {
        snprintf(why, len, "socket directory %s: %s", d, strerror(errno));
        return -ENOENT;
    }
    if (!S_ISDIR(st.st_mode) || (st.st_uid != uid && st.st_uid != 0) || (st.st_mode & 022)) {
        snprintf(why, len,
                 "socket directory %s must be a directory of yours that nobody else can write to",
                 d);
        return -EPERM;
    }
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT && may_be_missing)
            return 0;
        snprintf(why, len, "socket %s: %s", path, strerror(errno));
        return -ENOENT;
    }
    if (!S_ISSOCK(st.st_mode) || st.st_uid != uid) {
        snprintf(why, len, "%s must be a UNIX socket owned by you", path);
        return -EPERM;
    }
    return 0;
}

static int check(const struct backend_env *env, struct route *r, int starting, char *why,
                 size_t len)
{
    return backend_check_unix(r->path, r->uid, starting, why, len);
}

static struct bufferevent *connect_unix(const struct backend_env *env, struct event_base *base,
                                        const struct route *r, int *ready)
{
    struct sockaddr_storage ss;
    struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
    memset(&ss, 0, sizeof(ss));
    sun->sun_family = AF_UNIX;
    size_t n = strnlen(r->path, sizeof(sun->sun_path));
    if (n >= sizeof(sun->sun_path)) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    memcpy(sun->sun_path, r->path, n + 1);
    return xprt_connect(base, &ss, (int)(offsetof(struct sockaddr_un, sun_path) + n + 1),
                                  0);
}

static int verify(const struct backend_env *env, struct bufferevent *bev, evutil_socket_t fd,
                  const struct route *r, char *why, size_t len)
{
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
        snprintf(why, len, "SO_PEERCRED: %s", strerror(errno));
        return -EPERM;
    }
    if (cred.uid != r->uid) {
        snprintf(why, len, "the socket's peer runs as uid %u, not as the route's owner %u",
                 (unsigned)cred.uid, (unsigned)r->uid);
        return -EPERM;
    }
    return 0;
}

const struct backend_ops backend_unix_ops = {
    .check = check,
    .connect = connect_unix,
    .verify = verify,
};
