/*
 * route — the live routing table: alias -> backend of one app.
 *
 * Owns the struct route objects. Lookups are O(1) (hmap keyed by alias).
 * Used only by the registry, under its state lock (reading for lookups,
 * writing for changes); everyone else gets copies from registry_*, so
 * nobody holds a pointer into the table and removal is always safe.
 *
 * I3: a route names only a destination its owner registered (a UNIX socket
 * the owner owns, or a loopback TCP port the owner listens on); the gateway
 * dials nothing else.
 */
#ifndef JG_ROUTE_H
#define JG_ROUTE_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include "app.h"

#define ROUTE_ALIAS_MAX 63  /* one DNS label */
#define ROUTE_NAME_MAX APP_NAME_MAX /* human label given with jobgate run -n */

enum route_kind {
    ROUTE_UNIX = 1, /* path */
    ROUTE_TCP = 2,  /* 127.0.0.1:port (or [::1]:port when v6) */
    ROUTE_TUNNEL = 3, /* through the owner's agent tunnel; path holds the agent's local name */
    ROUTE_DIRECT = 4, /* a job's own TLS endpoint (jobgate run --callback): path holds its
                       * address (an IP literal), port its port; mTLS with the job's certificate */
};

struct route {
    char alias[ROUTE_ALIAS_MAX + 1];
    char name[ROUTE_NAME_MAX + 1];
    uid_t uid;          /* owner */
    pid_t pid;          /* owner process on this host, 0 if none; reaped when gone */
    uint64_t pid_start; /* ... its start time (procnet_start_time), 0: unknown: a process
                         * with that pid but another start time is not the owner */
    enum route_kind kind;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    uint16_t port;
    int v6;             /* TCP on ::1 rather than 127.0.0.1 */
    int64_t created;    /* wall clock, seconds */
    int starting;       /* registered, app not listening yet: requests get 503 */
    uint32_t job;       /* the batch job it belongs to (job.h), 0 for none: ends with it */
    int cross_site;     /* the app takes state-changing requests from other sites' pages
                         * (reqhead_cross_site; off by default: jobgate run --cross-site) */
    /* ROUTE_TUNNEL only, not stored: the tunnel it goes through (0 while its
     * agent reconnects or sleeps) and since when it has had none (monotonic ms). */
    uint64_t tunnel;
    int64_t detached;
    /* ROUTE_TUNNEL only, not stored: how its agent comes back while it has no
     * tunnel, from the hello's policy (docs/policy.md). */
    int asleep;         /* the tunnel closed on purpose (keepalive): not reconnecting */
    int once;           /* no reconnect: the route ends with its tunnel */
    uint32_t poll;      /* seconds: the agent polls this often while asleep; 0: never */
    uint32_t checkin;   /* seconds: ... and comes back at least this often */
    uint16_t cb_port;   /* callback: the job's own endpoint, dialled while asleep (0: none) */
    char cb_host[46];   /* ... at this destination of the job (an IP literal) */
    int cb_down;        /* a callback failed: wait for the agent's poll until it is back */
    int64_t seen;       /* wall clock: the agent's tunnel was last up then */
    unsigned held;      /* requests waiting for it now (registry_hold) */
    int wanted;         /* a request came while asleep: the agent hears it at its next poll */
};

struct route_table;

struct route_table *route_table_new(void);
void route_table_free(struct route_table *t);
/* Adds a copy of *r. -EEXIST if the alias is taken, -EINVAL if the alias is
 * not a valid DNS label (1..63 of a-z 0-9 '-', not starting or ending in '-'). */
int route_add(struct route_table *t, const struct route *r);
/* Finds by alias (len bytes, need not be NUL-terminated). NULL if absent. */
const struct route *route_find(const struct route_table *t, const char *alias, size_t len);
/* Replaces the route with r's alias by a copy of *r. 0 or -ENOENT. */
int route_replace(struct route_table *t, const struct route *r);
/* Removes by alias. 0 or -ENOENT. */
int route_remove(struct route_table *t, const char *alias);
size_t route_count(const struct route_table *t);
/* Calls cb for every route; cb returns nonzero to remove that route (after cb). */
void route_filter(struct route_table *t, int (*cb)(const struct route *r, void *arg), void *arg);
/* Where the route leads, for listings and logs: "unix:/path",
 * "tcp:127.0.0.1:8000" (or "tcp:[::1]:8000"), "tunnel:<local>",
 * "direct:10.1.2.3:8443". 0, or
 * -ENAMETOOLONG (cut). */
int route_describe(const struct route *r, char *buf, size_t len);
/* "starting", "reconnecting" (a tunnel route whose agent is away),
 * "asleep" (its agent closed the tunnel on purpose: poll, callback) or "ready". */
const char *route_state(const struct route *r);
/* How a tunnel route is reached now, for listings: "tunnel", "reconnecting",
 * "poll 30s", "callback", "callback, poll 30s"; "" for other kinds. */
void route_reach(const struct route *r, char *buf, size_t len);

/* 1 if s is a valid alias (see route_add). */
int route_alias_valid(const char *s, size_t len);

#endif
