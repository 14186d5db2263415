/*
 * backend — how the gateway reaches an app: one table of operations per
 * kind of route (struct backend_ops), one file per kind:
 *
 *   backend_unix.c    a UNIX socket the owner owns (local apps)
 *   backend_tcp.c     a loopback TCP port the owner listens on (--tcp)
 *   backend_tunnel.c  a CONNECT stream through the owner's agent tunnel
 *   backend_direct.c  a job's own TLS endpoint (jobgate run --callback), mTLS
 *
 * A new kind is one new file and one row in backend.c's table; conn,
 * control and the registry do not change. Every slot is filled in every kind; callers use only the wrappers
 * below, never the table.
 *
 * Owns nothing. Threads: any worker; no lock (a route is passed by copy).
 * Invariants: a destination is checked when a route is registered, and the
 * peer is proven the owner's on every connection before any byte is sent
 * (I2, I3).
 */
#ifndef JG_BACKEND_H
#define JG_BACKEND_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "route.h"

struct jobca;
struct registry;
struct tunnel_hub;

/* What the kinds need from the daemon; set up once, read-only after. */
struct backend_env {
    const char *proc;          /* "/proc" (tests point it elsewhere) */
    struct tunnel_hub *hub;    /* for tunnel routes */
    struct registry *reg;      /* for direct routes: the job's destinations (I3) */
    const struct jobca *ca;    /* ... the gateway's client certificate, the job's proof */
};

struct backend_ops {
    /* At registration: may r (owner r->uid) name this destination? starting:
     * the app does not listen yet. May fill in what it learns (r->v6).
     * 0, or -EPERM / -ENOENT / -EINVAL with a reason in why. */
    int (*check)(const struct backend_env *env, struct route *r, int starting, char *why,
                 size_t len);
    /* Starts a non-blocking connection. NULL with errno when it fails at
     * once. *ready: connected already (no BEV_EVENT_CONNECTED will follow). */
    struct bufferevent *(*connect)(const struct backend_env *env, struct event_base *base,
                                   const struct route *r, int *ready);
    /* After the connection is up (bev, on socket fd; a TLS one after its
     * handshake): proves the peer is the route owner's. 0, or -EPERM /
     * -ENOENT with why. */
    int (*verify)(const struct backend_env *env, struct bufferevent *bev, evutil_socket_t fd,
                  const struct route *r, char *why, size_t len);
};

int backend_check(const struct backend_env *env, struct route *r, int starting, char *why,
                  size_t len);
struct bufferevent *backend_connect(const struct backend_env *env, struct event_base *base,
                                    const struct route *r, int *ready);
int backend_verify_peer(const struct backend_env *env, struct bufferevent *bev,
                        const struct route *r, char *why, size_t len);

/* The kinds' tables (backend.c indexes them by enum route_kind). */
extern const struct backend_ops backend_unix_ops, backend_tcp_ops, backend_tunnel_ops,
    backend_direct_ops;

/*
 * The ownership checks of the socket kinds, exposed for their unit tests.
 *
 * A UNIX socket path is acceptable for uid when it is absolute, fits
 * sun_path, is a socket owned by uid (or, with may_be_missing, does not
 * exist yet), and its directory is owned by uid or root and not writable by
 * group or others.
 */
int backend_check_unix(const char *path, uid_t uid, int may_be_missing, char *why, size_t len);

/*
 * A loopback TCP port is acceptable for uid when <proc>/net/tcp{,6} shows a
 * LISTEN socket reachable on loopback on that port owned by uid, and none
 * owned by anyone else. *v6 tells whether to dial ::1 rather than 127.0.0.1.
 */
int backend_check_tcp(const char *proc, uint16_t port, uid_t uid, int *v6, char *why,
                      size_t len);

#endif
