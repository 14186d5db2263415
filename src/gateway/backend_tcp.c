/*
 * backend_tcp — routes to a loopback TCP port (`jobgate run --tcp`). Any
 * user of the host can bind a free loopback port, so the port is proven the
 * owner's through the kernel's socket tables (procnet) at registration and
 * again on every connection, from the far end of the connection itself
 * (I2, I3). Owns nothing; no lock.
 */
#include "backend.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "procnet.h"
#include "xprt.h"

int backend_check_tcp(const char *proc, uint16_t port, uid_t uid, int *v6, char *why,
                      size_t len)
{
    int mine[2], others;
    int r = procnet_listeners(proc, port, uid, mine, &others, why, len);
    if (r < 0)
        return r;
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

static int check(const struct backend_env *env, struct route *r, int starting, char *why,
                 size_t len)
{
    if (starting)
        return 0; /* checked when it says it is ready */
    return backend_check_tcp(env->proc, r->port, r->uid, &r->v6, why, len);
}

static struct bufferevent *connect_tcp(const struct backend_env *env, struct event_base *base,
                                       const struct route *r, int *ready)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (r->v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(r->port);
        s6->sin6_addr = in6addr_loopback;
        return xprt_connect(base, &ss, sizeof(*s6), 1);
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(r->port);
    s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return xprt_connect(base, &ss, sizeof(*s4), 1);
}

static int verify(const struct backend_env *env, struct bufferevent *bev, evutil_socket_t fd,
                  const struct route *r, char *why, size_t len)
{
    /* Our end is the remote end of the app's accepted socket. */
    long uid = procnet_peer_uid(fd, env->proc);
    if (uid < 0) {
        snprintf(why, len, "no socket of the app's side of port %u found in %s/net", r->port,
                 env->proc);
        return -ENOENT;
    }
    if ((uid_t)uid != r->uid) {
        snprintf(why, len, "port %u is answered by uid %ld, not by the route's owner %u", r->port,
                 uid, (unsigned)r->uid);
        return -EPERM;
    }
    return 0;
}

const struct backend_ops backend_tcp_ops = {
    .check = check,
    .connect = connect_tcp,
    .verify = verify,
};
