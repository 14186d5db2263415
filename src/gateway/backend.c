/* backend — see backend.h. */
#include "backend.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "sockpeer.h"
#include "tunnel.h"
#include "util.h"

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

/* Hex address from /proc/net/tcp{,6} that loopback clients can reach. */
static int loopback_reachable(const char *hex, int v6)
{
    if (!v6)
        return strcmp(hex, "0100007F") == 0 || strcmp(hex, "00000000") == 0;
    return strcmp(hex, "00000000000000000000000001000000") == 0 || /* ::1 */
           strcmp(hex, "00000000000000000000000000000000") == 0 || /* :: */
           strcmp(hex, "0000000000000000FFFF00000100007F") == 0;   /* ::ffff:127.0.0.1 */
}

/* Scans one table; counts loopback-reachable listeners on port by uid and by others. */
static int scan_proc(const char *file, int v6, uint16_t port, uid_t uid, int *mine, int *others)
{
    FILE *f = fopen(file, "re");
    char line[512];
    if (!f)
        return -errno;
    if (!fgets(line, sizeof(line), f)) { /* header */
        fclose(f);
        return 0;
    }
    /* Bounded by the kernel's table size; each line is short. */
    while (fgets(line, sizeof(line), f)) {
        char local[64], remote[64];
        unsigned st, lport;
        unsigned long owner;
        if (sscanf(line, " %*u: %63[0-9A-Fa-f]:%x %63[0-9A-Fa-f]:%*x %x %*x:%*x %*x:%*x %*x %lu",
                   local, &lport, remote, &st, &owner) != 5)
            continue;
        if (st != 0x0A || lport != port || !loopback_reachable(local, v6))
            continue;
        if ((uid_t)owner == uid)
            mine[v6]++;
        else
            (*others)++;
    }
    fclose(f);
    return 0;
}

int backend_check_tcp(const char *proc_dir, uint16_t port, uid_t uid, int *v6, char *why,
                      size_t len)
{
    char path[256];
    int mine[2] = {0, 0}, others = 0;
    for (int fam = 0; fam < 2; fam++) {
        if (xsnprintf(path, sizeof(path), "%s/net/%s", proc_dir, fam ? "tcp6" : "tcp") < 0)
            return -ENAMETOOLONG;
        int r = scan_proc(path, fam, port, uid, mine, &others);
        if (r < 0 && r != -ENOENT) {
            snprintf(why, len, "cannot read %s: %s", path, strerror(-r));
            return r;
        }
    }
    if (others) {
        snprintf(why, len, "port %u on loopback is (also) held by another user", port);
        return -EPERM;
    }
    if (!mine[0] && !mine[1]) {
        snprintf(why, len, "nothing of yours listens on 127.0.0.1:%u", port);
        return -ENOENT;
    }
    *v6 = mine[0] ? 0 : 1;
    return 0;
}

int backend_verify_peer(evutil_socket_t fd, const struct route *r, const char *proc_dir, char *why,
                        size_t len)
{
    if (r->kind == ROUTE_TUNNEL)
        return 0; /* the tunnel proved its owner, and opens streams only for its own routes */
    if (r->kind == ROUTE_UNIX) {
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
    /* TCP: our end is the remote end of the app's accepted socket. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char path[256];
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        snprintf(why, len, "getsockname: %s", strerror(errno));
        return -EPERM;
    }
    unsigned ours = ntohs(r->v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                : ((struct sockaddr_in *)&ss)->sin_port);
    const char *lo = r->v6 ? "00000000000000000000000001000000" : "0100007F";
    if (xsnprintf(path, sizeof(path), "%s/net/%s", proc_dir, r->v6 ? "tcp6" : "tcp") < 0)
        return -ENAMETOOLONG;
    long uid = sockpeer_uid_in(path, lo, r->port, lo, ours);
    if (uid < 0) {
        snprintf(why, len, "no socket of the app's side of port %u found in %s", r->port, path);
        return -ENOENT;
    }
    if ((uid_t)uid != r->uid) {
        snprintf(why, len, "port %u is answered by uid %ld, not by the route's owner %u", r->port,
                 uid, (unsigned)r->uid);
        return -EPERM;
    }
    return 0;
}

struct bufferevent *backend_connect(struct gateway *gw, struct event_base *base,
                                    const struct route *r)
{
    if (r->kind == ROUTE_TUNNEL)
        return tunnel_stream_open(gw, base, r);
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    if (r->kind == ROUTE_UNIX) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&ss;
        sun->sun_family = AF_UNIX;
        size_t n = strnlen(r->path, sizeof(sun->sun_path));
        if (n >= sizeof(sun->sun_path)) {
            errno = ENAMETOOLONG;
            return NULL;
        }
        memcpy(sun->sun_path, r->path, n + 1);
        sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    } else if (r->v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(r->port);
        s6->sin6_addr = in6addr_loopback;
        sl = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(r->port);
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof(*s4);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (r->kind == ROUTE_TCP) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    if (bufferevent_socket_connect(bev, (struct sockaddr *)&ss, (int)sl) < 0) {
        int e = errno ? errno : ECONNREFUSED;
        bufferevent_free(bev);
        errno = e;
        return NULL;
    }
    return bev;
}
