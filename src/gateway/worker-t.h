/*
 * worker-t.h — the type of one event-loop thread (no functions: any layer
 * may include it without pulling in the daemon; worker.h has the calls).
 *
 * A worker has its own listening socket on the gateway's address
 * (SO_REUSEPORT: the kernel spreads connections), its own browser
 * connections, tunnels and parsing scratch. Everything under "this worker's
 * own" is touched only on the worker's thread; the shared pointers are set
 * before the threads start and read-only after (what they point to has its
 * own rule: the registry locks inside, the tunnel hub has its mutex).
 * Worker 0 runs on the main thread and also hosts the control socket, the
 * signals and the reaper.
 */
#ifndef JG_WORKER_T_H
#define JG_WORKER_T_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/queue.h>

#include "http1.h"
#include "log.h"

struct backend_env;
struct event_base;
struct evconnlistener;
struct event;
struct jg_config;
struct nodechan;
struct offload;
struct ratelimit;
struct registry;
struct tunnel_hub;
struct conn;
struct conn_move;
struct tunnel;

struct worker {
    /* shared, read-only after start, except cfg, limits and max_clients:
     * SIGHUP swaps them (atomic; what they point to is never freed before
     * the gateway ends, so a reader may keep what it loaded) */
    const struct jg_config *_Atomic cfg;
    const struct http1_limits *_Atomic limits;
    SSL_CTX *ssl;                 /* this worker's reference: SIGHUP hands a new one in
                                   * ssl_next (worker_set_tls), which its loop takes */
    struct registry *reg;
    struct tunnel_hub *hub;
    struct nodechan *nodes;       /* the node channel (NULL: answered 404) */
    struct offload *offload;      /* threads for calls that may wait on munged or NSS */
    const struct backend_env *env;
    const volatile int *stopping; /* the daemon is shutting down */
    /* Client connections of the whole gateway (browsers' and agents' tunnels),
     * atomic, against max_clients ([gateway] max_connections, as far as the
     * open-file limit allows): every worker stops accepting at it. */
    atomic_uint *clients;
    atomic_uint max_clients;
    /* conn calls it when a browser connection ended (worker.c resumes a
     * paused listener, or ends a drained loop): a hook, so that conn never
     * calls up into the worker. */
    void (*conn_gone)(struct worker *w);

    /* this worker's own */
    unsigned idx;
    struct event_base *base;
    struct evconnlistener *listener;
    int listener_paused;
    LIST_HEAD(conn_list, conn) conns;       /* open browser connections (conn.c) */
    LIST_HEAD(tunnel_list, tunnel) tunnels; /* agents' tunnels accepted here (tunnel.c) */
    unsigned nconns;
    uint64_t next_conn_id;
    struct event *ev_flush;   /* every second: access-log buffer, revocation sweep */
    unsigned seen_revocation; /* the registry's revocation count at the last sweep */
    int64_t next_expiry;      /* wall clock: the first session of its connections ends (0: none) */
    struct ratelimit *redeem_fails; /* failed redeems per address (conn_local.c) */
    struct log_limit quiet_log;   /* access lines of those failures, within a rate */
    pthread_t thread;
    int started;
    int draining;             /* stopping: the loop ends when the last connection does */
    /* A head is parsed and used within one callback, never kept: one per
     * worker instead of 8 KiB per connection. */
    struct http1_head scratch;

    /* Browser connections other workers move here (conn.c): any worker
     * appends under moves_mu and activates ev_moves; this worker empties it. */
    pthread_mutex_t moves_mu;
    struct conn_move *moves;
    struct event *ev_moves;
    SSL_CTX *ssl_next;            /* under moves_mu: a new certificate to take (SIGHUP) */
    struct event *ev_tls;
};

#endif
