/*
 * backend — how the gateway reaches an app, and the checks that make a
 * destination the caller's own before a route may name it (I2, I3).
 *
 * Owns nothing. The checks run when a route is registered; the connect runs
 * per backend connection and dials only what a route names.
 */
#ifndef JG_BACKEND_H
#define JG_BACKEND_H

#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "route.h"

/*
 * A UNIX socket path is acceptable for uid when it is absolute, fits
 * sun_path, is a socket owned by uid (or, with may_be_missing, does not
 * exist yet), and its directory is owned by uid or root and not writable by
 * group or others. 0 or -EPERM / -ENOENT / -EINVAL with a reason in why.
 */
int backend_check_unix(const char *path, uid_t uid, int may_be_missing, char *why, size_t len);

/*
 * A loopback TCP port is acceptable for uid when /proc/net/tcp{,6} shows a
 * LISTEN socket reachable on loopback on that port owned by uid, and none
 * owned by anyone else. *v6 tells whether to dial ::1 rather than 127.0.0.1.
 * 0 or -EPERM / -ENOENT with a reason in why. proc_dir is normally "/proc"
 * (tests point it elsewhere).
 */
int backend_check_tcp(const char *proc_dir, uint16_t port, uid_t uid, int *v6, char *why,
                      size_t len);

/*
 * After the connect completed, proves that the peer belongs to the route's
 * owner (I2, I3), so that a socket swapped for a link to someone else's, or
 * a port re-bound by another user, is never sent a request: for a UNIX
 * socket the peer's SO_PEERCRED uid; for TCP the uid of the accepting
 * socket in <proc_dir>/net/tcp{,6}; a tunnel route was proven by its tunnel. 0, or -EPERM / -ENOENT with why.
 */
int backend_verify_peer(evutil_socket_t fd, const struct route *r, const char *proc_dir, char *why,
                        size_t len);

/* Starts a non-blocking connect to the route's destination (for a tunnel
 * route: a stream through the agent's tunnel, see tunnel.h). NULL with errno set
 * when it fails at once; otherwise BEV_EVENT_CONNECTED or _ERROR follows. */
struct gateway;
struct bufferevent *backend_connect(struct gateway *gw, struct event_base *base,
                                    const struct route *r);

#endif
