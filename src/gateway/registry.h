/*
 * registry — the one owner of the gateway's shared state: the route table,
 * one-time links, sessions, the store (SQLite) behind them, the revocation
 * counter, the apps' URLs and the reaping of what has died.
 *
 * Owns: the state lock, struct route_table, struct job_table, struct auth,
 * struct store.
 *
 * The lock rule: the state lock exists only inside registry.c. Every
 * function below takes it itself, for reading (request admission, lookups,
 * listings) or for writing (anything that changes a route, a link or a
 * session), and releases it before it returns; nothing is held across an
 * event-loop turn, and no function here calls back into its caller with the
 * lock held. Callers get copies (struct route by value), never pointers into
 * the table, so a route removed by another thread is never touched.
 * Any worker thread may call any function here.
 *
 * Every route change goes through here, so memory, SQLite and the audit
 * trail stay in step, and every change that ends a route or a session bumps
 * the revocation counter that workers watch (registry_revocations).
 */
#ifndef JG_REGISTRY_H
#define JG_REGISTRY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "http1.h"
#include "job.h"
#include "route.h"
#include "token.h"

struct jg_config;
struct registry;

#define REGISTRY_URL_MAX 512
#define REGISTRY_LINK_MAX 640

/* Opens the store under cfg->state_dir, loads routes and live sessions.
 * cfg->public_port must be known (URLs are built from it). NULL with err. */
struct registry *registry_open(const struct jg_config *cfg, char *err, size_t errlen);
/* SIGHUP: quotas, link and session lifetimes, grace from cfg from now on
 * (cfg's domain and ports are the running ones; the caller keeps cfg until
 * the registry is closed). */
void registry_reconfigure(struct registry *reg, const struct jg_config *cfg);
void registry_close(struct registry *reg);

/* ".localhost:8443": what follows an alias in the apps' URLs. */
const char *registry_url_suffix(const struct registry *reg);
/* "https://<alias><suffix>/" into buf. 0 or -ENAMETOOLONG. */
int registry_url(const struct registry *reg, const char *alias, char *buf, size_t len);
size_t registry_route_count(struct registry *reg);

/* ---- browsers ------------------------------------------------------------ */

/* What a request for an app may do, decided under the lock in one call. */
enum admit {
    ADMIT_OK,           /* forward to route */
    ADMIT_UNKNOWN,      /* no such app: 404 */
    ADMIT_FORBIDDEN,    /* no live session for it among the cookies: 403 */
    ADMIT_RECONNECTING, /* its agent is away (session checked): wait, then 503 */
    ADMIT_STARTING,     /* registered, not listening yet (session checked): 503 */
    ADMIT_ASLEEP,       /* its agent sleeps (docs/policy.md): callback, or hold, then 503 */
};

struct admission {
    struct route route;                  /* a copy, when the app exists */
    uid_t uid;                           /* the session's owner */
    uint8_t sess_hash[TOKEN_HASH_LEN];   /* to re-check the session later */
    int64_t sess_expires;                /* ... and when it ends by itself (wall clock) */
};

/* Admission of a request for alias carrying the cookie values vals[0..n). */
enum admit registry_admit(struct registry *reg, const char *alias, const struct http1_str *vals,
                          int n, struct admission *a);

/* 1 while alias exists and the session with hash is live for it (the
 * revocation sweep of open connections). */
int registry_session_live(struct registry *reg, const char *alias,
                          const uint8_t hash[TOKEN_HASH_LEN]);

/* Redeems a link token on alias's host into a session cookie. 0 with the
 * cookie value; -ENXIO no such app, -ETIMEDOUT expired, another negative
 * errno when not valid (used, another app's, not a token). */
int registry_redeem(struct registry *reg, const char *alias, const char *tok, size_t len,
                    char cookie[TOKEN_STR_LEN + 1]);

/* Ends every live session of alias among the cookie values. */
void registry_logout(struct registry *reg, const char *alias, const struct http1_str *vals, int n);

/* /_jobgate/status: 0 with a copy of the route in *out, -ENXIO no such app,
 * -EACCES no session. */
int registry_status(struct registry *reg, const char *alias, const struct http1_str *vals, int n,
                    struct route *out);

/* ---- owners: the control socket and agents' tunnels ----------------------- */

/* A sentence for users about a change the registry could not make (its
 * -errno: the store's -EBUSY, -EROFS, -ENOSPC, -EIO), and the answer code
 * that goes with it: "unavailable" (a state of the host that passes) or
 * "internal". */
const char *registry_why(int err);
#define REGISTRY_CODE(err)                                                                         \
    ((err) == -EBUSY || (err) == -EROFS || (err) == -ENOSPC || (err) == -ENOMEM ? "unavailable"   \
                                                                                   : "internal")

/* The sentence for an -EDQUOT answer: uid is at its [quota] routes (links
 * nonzero: [quota] links) limit. */
void registry_quota_why(struct registry *reg, uid_t uid, int links, char *buf, size_t len);

/* Adds a route: picks a fresh alias into r->alias, stores it, audits. 0 or
 * -errno: -EDQUOT when r->uid has [quota] routes already (root and the
 * gateway's own user have no quota). */
int registry_route_add(struct registry *reg, struct route *r);

/* A copy of the route with this alias. 0 or -ENOENT. */
int registry_route_get(struct registry *reg, const char *alias, struct route *out);

/* key is an alias of uid's, or a name unique among uid's routes; others'
 * routes are "not found" (I1). 0 with a copy, -ENOENT, or -ENOTUNIQ when
 * several of uid's routes have that name. */
int registry_route_resolve(struct registry *reg, uid_t uid, const char *key, struct route *out);

/* The route alias of uid stopped starting. 0, or -ENOENT, or -errno. */
int registry_route_ready(struct registry *reg, const char *alias, uid_t uid);

/* Removes alias if it is owner's (and of kind, when kind is nonzero), with
 * its links and sessions; by and why go to the audit trail. 0, -ENOENT, or
 * -errno from the store. */
int registry_route_remove(struct registry *reg, const char *alias, uid_t owner,
                          enum route_kind kind, uid_t by, const char *why);

/* An agent's unregister: removes tunnel route alias of uid and job only
 * while tunnel carries it (tunnel 0: while no tunnel does, a route whose
 * agent slept or was lost), all under one lock. 0, -ENOENT, -EXDEV
 * (another tunnel carries it now: it was taken over), or -errno. */
int registry_tunnel_route_remove(struct registry *reg, const char *alias, uid_t uid, uint32_t job,
                                 uint64_t tunnel, const char *why);

/* Copies of the routes of uid (of everyone when all) into a new array
 * (caller frees). The count, or -errno. */
int registry_routes(struct registry *reg, uid_t uid, int all, struct route **out);

/* A fresh one-time link for alias, which must be owner's (and of kind when
 * nonzero); -EDQUOT when owner has [quota] links unredeemed. Secrets: the
 * caller wipes link once it has been handed on. */
struct registry_link {
    char url[REGISTRY_URL_MAX];
    char link[REGISTRY_LINK_MAX];
    int64_t expires;
};
int registry_link(struct registry *reg, const char *alias, uid_t owner, enum route_kind kind,
                  int64_t ttl, struct registry_link *out);

/*
 * An agent's tunnel registers an app (docs/tunnel-protocol.md): its route
 * back after a reconnect (by alias), or the owner's only orphaned tunnel
 * route of that name (the job restarted its agent), or else a new route.
 * It attaches to tunnel id. mine(arg, alias) tells whether this tunnel
 * already registered alias; a full tunnel may only re-register those.
 * A tunnel of a job (c->job) registers only while that job runs, and takes
 * back only that job's routes; its new routes carry the job's id.
 * 0 with a copy in out; -EMLINK (full), -EPERM (not the uid's tunnel route
 * of this job: its alias in out->alias), -ESTALE (the job ended), -EIO.
 */
struct tunnel_claim {
    uid_t uid;
    uint32_t job;      /* the job the tunnel's certificate names, 0 for none */
    uint64_t tunnel;
    const char *alias; /* NULL: a new registration */
    const char *name;
    const char *local;
    int full;
    int (*mine)(void *arg, const char *alias);
    void *arg;
    /* The tunnel's policy (the hello's, docs/policy.md) and the app's callback. */
    int once;          /* no reconnect */
    uint32_t poll, checkin;
    uint16_t cb_port;  /* 0: no callback */
    const char *cb_host;
    int cross_site;    /* route.cross_site, as the agent asks */
};
/* out->wanted is 1 when requests came for the route while its agent slept. */
int registry_tunnel_attach(struct registry *reg, const struct tunnel_claim *c, struct route *out);

/* Tunnel id is gone: its routes among aliases[0..n) wait for their agent
 * (for the grace time; registry_reap ends them after it); with asleep (the
 * agent said "sleep") they sleep until its next poll or check-in; a route of
 * an agent without reconnect (route.once) ends at once otherwise. */
void registry_tunnel_detach(struct registry *reg, uint64_t tunnel, const char *const *aliases,
                            unsigned n, int asleep);

/* A request starts (delta 1) or stops (-1) waiting for alias's sleeping
 * agent (uid: the route's owner, whose [quota] held it counts against); a
 * start marks the route wanted. 0; -EBUSY when max wait for the app already,
 * or uid's quota is full (wanted is marked all the same); -ENOENT (gone, or
 * not asleep: a stop then only uncounts it for uid). */
int registry_hold(struct registry *reg, const char *alias, uid_t uid, int delta, unsigned max);

/* A callback to alias's sleeping agent failed: requests wait for its poll
 * until its tunnel is back (attach clears it). */
void registry_callback_down(struct registry *reg, const char *alias);

/* ---- batch jobs (the node channel, docs/slurm.md) ------------------------- */

/* A node starts job j (id, uid, user, node, not_after): records it, or finds
 * it recorded already for the same uid (another node or step of the job).
 * 0 with the record in *out; -EEXIST recorded for another uid, -ESTALE it
 * ended, -EIO. */
int registry_job_start(struct registry *reg, const struct job *j, struct job *out);

/* An agent's hello named job j->id (SLURM_JOB_ID, no certificate) and the
 * scheduler says it runs as j->uid: records it when it is not recorded
 * (then the reaper ends it with the job). j->adopted must be set. 0, -EEXIST
 * (recorded for another uid), -EPERM (its node recorded it: only its
 * certificate proves it), -ESTALE (it ended), -EIO. */
int registry_job_adopt(struct registry *reg, const struct job *j);

/* Job id ended: every route of it goes with its links and sessions (open
 * connections and the job's tunnels close at the next sweep); the record
 * stays, as ended, until its certificates expire. by and why go to the
 * audit trail. The number of routes removed, -ENOENT (unknown job), -EIO. */
int registry_job_end(struct registry *reg, uint32_t id, uid_t by, const char *why);

/* Node says which TCP ports the job's own processes listen on there (its
 * allowed destinations, replacing what node said before). 0, -ENOENT (no
 * such job), -ESTALE (it ended), -ENOSPC (more than job.h allows). */
int registry_job_ready(struct registry *reg, uint32_t id, const char *node,
                       const struct job_dest *d, unsigned n);

/* host:port is a destination of job id, which runs as uid (I3 for direct
 * routes). 0, -ENOENT (no such job of uid's), -ESTALE (ended), -EPERM (not
 * one of its destinations). */
int registry_job_dest(struct registry *reg, uint32_t id, uid_t uid, const char *host,
                      uint16_t port);
/* Adds direct route r (ROUTE_DIRECT, r->job, r->uid, r->path:r->port) when,
 * under the write lock, its job runs as r->uid and the address is one of its
 * destinations, and the job has fewer than REGISTRY_DIRECT_MAX direct routes.
 * 0 with r->alias, -ENOENT, -ESTALE, -EPERM, -EMLINK (the job has its most), or -errno. */
#define REGISTRY_DIRECT_MAX 16
int registry_direct_add(struct registry *reg, struct route *r);

/* The first of job id's destinations on port whose host is an IP literal,
 * into host: where a direct route of that port leads. 0, or as above. */
int registry_job_dest_pick(struct registry *reg, uint32_t id, uid_t uid, uint16_t port,
                           char *host, size_t len);

/* Copies of uid's jobs (everyone's when all), by id, each with its
 * destinations: jobs[i]'s are dests[first[i] .. first[i] + count[i]). */
struct registry_jobs {
    struct job *jobs;
    unsigned *first, *count;
    struct job_dest *dests;
    unsigned n, ndests;
};
int registry_jobs(struct registry *reg, uid_t uid, int all, struct registry_jobs *out);
void registry_jobs_free(struct registry_jobs *j);

/* A copy of job id. 0, or -ENOENT. */
int registry_job_get(struct registry *reg, uint32_t id, struct job *out);

/* The scheduler's last word on every job it lists (jobwatch.h), for
 * listings: queued jobs, and jobs that run without jobgate. */
struct registry_sched_job {
    uint32_t id;
    uid_t uid;
    char state[32];    /* the scheduler's, e.g. PENDING, RUNNING */
    char user[JOB_USER_MAX]; /* uid's name, looked up by the job watch ("" if none) */
};
/* Replaces the view by v[0..n) (taken: freed by the registry). */
void registry_sched_set(struct registry *reg, struct registry_sched_job *v, size_t n);
/* Copies of the view's jobs of uid (everyone's when all) that are not
 * recorded and not over, by id, into a new array (caller frees). The count. */
int registry_sched_jobs(struct registry *reg, uid_t uid, int all,
                        struct registry_sched_job **out);

/* The ids of the recorded jobs that have not ended, in a new array (the
 * caller frees it): what the scheduler is asked about (sched.h). The count. */
int registry_jobs_running(struct registry *reg, uint32_t **ids);

/* ---- time ----------------------------------------------------------------- */

/* Once a second (worker 0): routes whose owner process died or whose agent
 * has been away longer than the grace time; every minute expired links and
 * sessions, and jobs whose certificates expired (ended and forgotten). */
void registry_reap(struct registry *reg);

/* Bumped whenever a route or a session ends: workers compare it with what
 * they saw last and then sweep their open connections. */
unsigned registry_revocations(const struct registry *reg);

#endif
