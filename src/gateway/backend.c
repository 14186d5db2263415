/* backend — see backend.h: the table of kinds and the wrappers around it. */
#include "backend.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

static const struct backend_ops *const kinds[] = {
    [ROUTE_UNIX] = &backend_unix_ops,
    [ROUTE_TCP] = &backend_tcp_ops,
    [ROUTE_TUNNEL] = &backend_tunnel_ops,
};

static const struct backend_ops *ops(const struct route *r)
{
    if ((unsigned)r->kind >= sizeof(kinds) / sizeof(kinds[0]))
        return NULL;
    return kinds[r->kind];
}

int backend_check(const struct backend_env *env, struct route *r, int starting, char *why,
                  size_t len)
{
    const struct backend_ops *o = ops(r);
    if (!o)
        return -EINVAL;
    return o->check(env, r, starting, why, len);
}

struct bufferevent *backend_connect(const struct backend_env *env, struct event_base *base,
                                    const struct route *r, int *ready)
{
    const struct backend_ops *o = ops(r);
    *ready = 0;
    if (!o) {
        errno = EINVAL;
        return NULL;
    }
    return o->connect(env, base, r, ready);
}

int backend_verify_peer(const struct backend_env *env, evutil_socket_t fd, const struct route *r,
                        char *why, size_t len)
{
    const struct backend_ops *o = ops(r);
    if (!o)
        return -EPERM;
    return o->verify(env, fd, r, why, len);
}

struct bufferevent *backend_socket_connect(struct event_base *base,
                                           const struct sockaddr_storage *ss, int sl, int nodelay)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    if (bufferevent_socket_connect(bev, (const struct sockaddr *)ss, sl) < 0) {
        int e = errno ? errno : ECONNREFUSED;
        bufferevent_free(bev);
        errno = e;
        return NULL;
    }
    return bev;
}
