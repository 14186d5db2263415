/*
 * gateway — the daemon as a whole: the event loop, the HTTPS listener, the
 * tables (routes, sessions), the store and the control socket, and the
 * operations on routes that several front ends (control socket, later the
 * tunnel) share, so that every route change goes through one place that
 * keeps memory, SQLite and the audit trail in step.
 *
 * Owns everything it points to. Runs one event loop per worker thread;
 * shared state is guarded by the state lock (see struct gateway).
 */
#ifndef JG_GATEWAY_H
#define JG_GATEWAY_H

#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "http1.h"
#include "route.h"

struct store;
struct auth;
struct control;
struct conn;
struct gateway;
struct tunnel;
struct tunnel_hub;

#define GATEWAY_MAX_WORKERS 64

/*
 * One event-loop thread. Each has its own listening socket on the same
 * address (SO_REUSEPORT: the kernel spreads connections), its own browser
 * connections and its own parsing scratch. Worker 0 runs on the main thread
 * and also hosts the control socket, the signals and the reaper.
 */
struct worker {
    struct gateway *gw;
    unsigned idx;
    struct event_base *base;
    struct evconnlistener *listener;
    int listener_paused;
    struct conn *conns;       /* this worker's open browser connections */
    struct tunnel *tunnels;   /* agents' tunnels accepted by this worker */
    unsigned nconns;
    uint64_t next_conn_id;
    struct event *ev_flush;   /* every second: access-log buffer, revocation sweep */
    unsigned seen_revocation; /* the gateway's revocation count at the last sweep */
    pthread_t thread;
    int started;
    int draining;             /* stopping: the loop ends when the last connection does */
    /* A head is parsed and used within one callback, never kept: one per
     * worker instead of 8 KiB per connection. */
    struct http1_head scratch;
};

struct gateway {
    struct jg_config *cfg;
    SSL_CTX *ssl;
    /*
     * The state lock guards routes, auth (sessions) and store, which all
     * workers share. Request handling takes it for reading; route changes,
     * link and session minting, redeeming and reaping take it for writing.
     * It prefers writers, and nobody holds it across an event-loop turn.
     */
    pthread_rwlock_t lock;
    int lock_ready;
    struct route_table *routes;
    struct store *store;
    struct auth *auth;
    struct control *control;
    struct tunnel_hub *tunnels; /* finds any worker's tunnel by id (tunnel.c) */
    struct http1_limits limits;
    uid_t uid;                /* the gateway's own uid */
    char url_suffix[300];     /* ".localhost:8443": what follows the alias in URLs */
    struct worker *workers;
    unsigned nworkers;
    struct event *ev_signal[3];
    struct event *ev_tick;    /* reaping and expiry (worker 0) */
    volatile int stopping;
    atomic_uint revocations;  /* bumped when a route or session ends: workers sweep */
    unsigned ticks;
};

int gateway_init(struct gateway *gw, struct jg_config *cfg, char *err, size_t errlen);
/* Runs worker 0 on this thread and the others on their own until a signal. */
int gateway_run(struct gateway *gw);
/* After fork(): reinitialises every event loop. */
int gateway_reinit(struct gateway *gw);
void gateway_free(struct gateway *gw);

/* Writes "https://<alias><url_suffix>/" into buf. */
int gateway_url(const struct gateway *gw, const char *alias, char *buf, size_t len);

/* Mints a one-time link for alias (state lock held for writing) and adds
 * "url", "link" and "expires" to obj. 0, or -1 when the store failed. */
struct json_t;
int gateway_link_json(struct gateway *gw, struct json_t *obj, const char *alias, int64_t ttl);

/* The route operations below expect the state lock held for writing. */

/* Adds a route: picks a fresh alias into r->alias, stores it, audits. 0 or -errno. */
int gateway_route_add(struct gateway *gw, struct route *r);
/* Replaces a route's state (e.g. starting -> ready) in memory and store. */
int gateway_route_update(struct gateway *gw, const struct route *r);
/* Removes a route with its links and sessions; why goes to the audit trail. */
int gateway_route_remove(struct gateway *gw, const char *alias, uid_t by, const char *why);

/* Called by conn when a browser connection ends (to resume a paused listener). */
void gateway_conn_gone(struct worker *w);

/* A route or a session ended: every worker closes the connections that used
 * it within a second (open WebSockets and streams are not checked per request). */
void gateway_revoked(struct gateway *gw);

/* Takes and releases the state lock. */
void gateway_rdlock(struct gateway *gw);
void gateway_wrlock(struct gateway *gw);
void gateway_unlock(struct gateway *gw);

#endif
