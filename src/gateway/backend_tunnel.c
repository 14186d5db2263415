/*
 * backend_tunnel — routes through the owner's agent tunnel: the connection
 * is one end of an in-memory link whose other end becomes a CONNECT stream
 * on the tunnel's worker (tunnel_stream.c), where conn has moved first. The tunnel proved its owner at its
 * hello and registered the target itself, and the agent connects only
 * targets it registered (I2), so there is nothing to check here. Owns
 * nothing; no lock.
 */
#include "backend.h"

#include "tunnel.h"

static int check(const struct backend_env *env, struct route *r, int starting, char *why,
                 size_t len)
{
    return 0; /* registered through the tunnel, by the uid its hello proved */
}

static struct bufferevent *connect_tunnel(const struct backend_env *env, struct event_base *base,
                                          const struct route *r, int *ready)
{
    *ready = 1; /* an in-memory pair: connected at once */
    return tunnel_stream_open(env->hub, base, r);
}

static int verify(const struct backend_env *env, struct bufferevent *bev, evutil_socket_t fd,
                  const struct route *r, char *why, size_t len)
{
    return 0; /* the tunnel opens streams only for its own routes */
}

const struct backend_ops backend_tunnel_ops = {
    .check = check,
    .connect = connect_tunnel,
    .verify = verify,
};
