/*
 * tunnel — the gateway's side of agents' tunnels (docs/tunnel-protocol.md).
 *
 * An agent on a compute node dials the HTTPS port with ALPN "jobgate/1" (or
 * reaches us through `ssh HOST jobgate tunnel --stdio`, which hands its stdin
 * and stdout over the control socket). On that byte stream the gateway is the
 * HTTP/2 *client* (nghttp2): its first stream is the control stream
 * (challenge -> hello with a credential -> welcome -> register ...), and every
 * backend connection of a tunnel route becomes one CONNECT stream.
 *
 * Owns: the tunnels (each on the worker whose loop accepted it; touched only
 * on that worker's thread), their nghttp2 sessions and streams, and the hub
 * through which other workers find a tunnel by id (its mutex guards the id
 * map and each tunnel's list of posted streams), plus the personal agent
 * token's hash. Routes change only through the registry (which locks
 * inside); the tunnel keeps its own list of the aliases it registered.
 *
 * How a browser request reaches an app behind a tunnel without conn.c
 * knowing: backend_connect() for a ROUTE_TUNNEL route calls
 * tunnel_stream_open(), which makes an in-memory link (conn has moved to the
 * tunnel's worker first: tunnel_worker), posts one end to the tunnel and
 * returns a bufferevent on the other. The tunnel opens a CONNECT stream for
 * it and pumps link <-> stream.
 *
 * Invariants:
 *  - I2: routes are owned by the uid that the hello proved (MUNGE, the
 *    personal token, SO_PEERCRED of the SSH hand-over, or a job's
 *    certificate, whose routes also belong to that job and end with it, the
 *    tunnel too within a second); a stream is
 *    opened only on the tunnel the route is attached to, only when that
 *    tunnel's uid owns the route and registered the local name itself;
 *  - nothing is registered before a welcome;
 *  - backpressure end to end: received DATA is acknowledged at the
 *    connection level at once and at the stream level only as the
 *    link drains, so a stream holds at most its window and a stalled
 *    browser stalls only its own stream;
 *  - a malformed or oversize control message, a refused hello, a PING left
 *    unanswered: that tunnel ends (GOAWAY, logged reason), never the gateway;
 *  - secrets (tokens, MUNGE credentials) are never logged.
 */
#ifndef JG_TUNNEL_H
#define JG_TUNNEL_H

#include <event2/bufferevent.h>
#include <openssl/x509.h>
#include <sys/types.h>

#include "route.h"
#include "tunnel_proto.h" /* TUNNEL_ALPN */

struct jg_config;
struct jobca;
struct registry;
struct tunnel_hub;
struct worker;


/* Sets up the hub: routes change through reg; ca signed the job
 * certificates agents may prove themselves with; uid is the gateway's own;
 * cert is the gateway's TLS certificate (MUNGE hellos are bound to it). In
 * personal mode also makes sure <state_dir>/agent.token exists (0600, 256
 * bits) and keeps its hash. NULL with err. */
struct tunnel_hub *tunnel_hub_new(const struct jg_config *cfg, struct registry *reg,
                                  const struct jobca *ca, uid_t uid, X509 *cert, char *err,
                                  size_t errlen);
void tunnel_hub_free(struct tunnel_hub *hub);
/* SIGHUP's new certificate: MUNGE hellos from now on are bound to it. */
void tunnel_hub_set_cert(struct tunnel_hub *hub, X509 *cert);

/* Users' certificates: [tunnel] client_ca and gridmap, read from cfg's files. */
struct tunnel_trust;
/* 0 with *out (NULL when cfg takes no users' certificates), or -errno with err. */
int tunnel_trust_load(const struct jg_config *cfg, struct tunnel_trust **out, char *err,
                      size_t errlen);
void tunnel_trust_free(struct tunnel_trust *tr);
/* 1 when the hub's users' certificates are those of cfg: the same files, the
 * CA file unchanged since it was read (the grid-mapfile follows its file by
 * itself). Main thread. */
int tunnel_trust_current(struct tunnel_hub *hub, const struct jg_config *cfg);
/* SIGHUP: the hub takes trust (tunnel_trust_load, NULL: none) in place of its
 * own; hellos under way finish with the old one, kept until the end. */
void tunnel_hub_set_trust(struct tunnel_hub *hub, struct tunnel_trust *trust);
/* SIGHUP: the hub works by cfg from now on (kept by the caller until the hub
 * is freed). */
void tunnel_hub_reconfigure(struct tunnel_hub *hub, const struct jg_config *cfg);

/* Takes a TLS connection whose handshake chose ALPN jobgate/1 (from conn). */
void tunnel_adopt_tls(struct worker *w, struct bufferevent *bev, const char *ip);

/* Takes the stdin/stdout of `jobgate tunnel --stdio` (SSH transport), whose
 * owner SO_PEERCRED proved to be uid. hold_fd is a copy of that process's
 * control connection, closed when the tunnel ends: `jobgate tunnel` waits
 * for that, since sshd ends the channel when its command exits. The fds are
 * ours from here on. 0 or -errno (the fds are closed then too). */
int tunnel_adopt_stdio(struct worker *w, int in_fd, int out_fd, int hold_fd, uid_t uid);

/* backend_connect() for ROUTE_TUNNEL: a bufferevent on one end of a
 * link (xprt_pair) whose other end becomes a CONNECT stream on the route's
 * tunnel; called on the tunnel's worker (else NULL with EXDEV).
 * It is connected already (backend_connect's caller raises CONNECTED once
 * its callbacks are set). NULL with errno when the route has no live tunnel. */
struct bufferevent *tunnel_stream_open(struct tunnel_hub *hub, struct event_base *base,
                                       const struct route *r);

/* The worker whose loop holds tunnel id, or NULL (any thread; the hub's
 * mutex inside). Workers outlive tunnels: the answer may be stale, never
 * dangling. */
struct worker *tunnel_worker(struct tunnel_hub *hub, uint64_t id);

/* The scheduler's confirmation, for a tunnel whose hello named a job (not
 * with a job certificate): ask(arg, job, uid, node, tunnel) is called on the
 * tunnel's thread and must answer later, from any thread, with
 * tunnel_job_verdict. Set before the workers start. */
void tunnel_hub_set_job_check(struct tunnel_hub *hub,
                              int (*ask)(void *arg, uint32_t job, uid_t uid, const char *node,
                                         uint64_t tunnel),
                              void *arg);
/* Any thread: job runs as the tunnel's uid (ok), or not (why). A tunnel
 * that has gone meanwhile is skipped. */
void tunnel_job_verdict(struct tunnel_hub *hub, uint64_t tunnel, int ok, const char *why);

/* Worker w is stopping: GOAWAY to its tunnels and free them (on w's thread). */
void tunnel_close_all(struct worker *w);
/* Drain (on w's thread): every tunnel of w sends GOAWAY and ends once it is
 * out; one that carries requests does so at its first tick without them
 * (the worker's drain time bounds the wait). */
void tunnel_goaway_all(struct worker *w);

#endif
