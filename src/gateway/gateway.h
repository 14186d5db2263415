/*
 * gateway — the daemon as a whole: the event loop, the HTTPS listener, the
 * tables (routes, sessions), the store and the control socket, and the
 * operations on routes that several front ends (control socket, later the
 * tunnel) share, so that every route change goes through one place that
 * keeps memory, SQLite and the audit trail in step.
 *
 * Owns everything it points to. Single-threaded: every function here runs
 * on the event-loop thread.
 */
#ifndef JG_GATEWAY_H
#define JG_GATEWAY_H

#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "http1.h"
#include "route.h"

struct store;
struct auth;
struct control;
struct conn;

struct gateway {
    struct jg_config *cfg;
    struct event_base *base;
    SSL_CTX *ssl;
    struct evconnlistener *listener;
    struct route_table *routes;
    struct store *store;
    struct auth *auth;
    struct control *control;
    struct http1_limits limits;
    uid_t uid;                /* the gateway's own uid */
    char url_suffix[300];     /* ".localhost:8443": what follows the alias in URLs */
    uint64_t next_conn_id;
    unsigned nconns;
    int listener_paused;
    struct conn *conns;       /* every open browser connection (for shutdown) */
    struct event *ev_signal[3];
    struct event *ev_tick;    /* reaping and expiry, every few seconds */
    int stopping;
    unsigned ticks;
    /* Parsing scratch: a head is parsed and used within one callback, never
     * kept, so one per gateway (single-threaded) instead of 8 KiB per connection. */
    struct http1_head scratch;
};

int gateway_init(struct gateway *gw, struct jg_config *cfg, char *err, size_t errlen);
int gateway_run(struct gateway *gw);
void gateway_free(struct gateway *gw);

/* Writes "https://<alias><url_suffix>/" into buf. */
int gateway_url(const struct gateway *gw, const char *alias, char *buf, size_t len);

/* Adds a route: picks a fresh alias into r->alias, stores it, audits. 0 or -errno. */
int gateway_route_add(struct gateway *gw, struct route *r);
/* Replaces a route's state (e.g. starting -> ready) in memory and store. */
int gateway_route_update(struct gateway *gw, const struct route *r);
/* Removes a route with its links and sessions; why goes to the audit trail. */
int gateway_route_remove(struct gateway *gw, const char *alias, uid_t by, const char *why);

/* Called by conn when a browser connection ends (to resume a paused listener). */
void gateway_conn_gone(struct gateway *gw);

#endif
