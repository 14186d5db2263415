/* backend — see backend.h: the table of kinds and the wrappers around it. */
#include "backend.h"

#include <errno.h>

static const struct backend_ops *const kinds[] = {
    [ROUTE_UNIX] = &backend_unix_ops,
    [ROUTE_TCP] = &backend_tcp_ops,
    [ROUTE_TUNNEL] = &backend_tunnel_ops,
    [ROUTE_DIRECT] = &backend_direct_ops,
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

int backend_verify_peer(const struct backend_env *env, struct bufferevent *bev,
                        const struct route *r, char *why, size_t len)
{
    const struct backend_ops *o = ops(r);
    if (!o)
        return -EPERM;
    return o->verify(env, bev, bufferevent_getfd(bev), r, why, len);
}
