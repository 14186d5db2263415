/* registry — see registry.h. */
#include "registry.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alias.h"
#include "auth.h"
#include "config.h"
#include "job.h"
#include "log.h"
#include "store.h"
#include "util.h"

#define EXPIRE_EVERY_TICKS 60 /* registry_reap calls between sweeps of expired links and sessions */
#define REAP_BATCH 32         /* routes ended per reap; the rest wait for the next second */

struct registry {
    const struct jg_config *cfg;
    /*
     * The state lock guards routes, jobs, auth and store. It prefers writers; it is
     * taken only by the functions of this file and never held across an
     * event-loop turn.
     */
    pthread_rwlock_t lock;
    int lock_ready;
    struct route_table *routes;
    struct job_table *jobs;
    struct registry_sched_job *sched; /* the scheduler's last word (jobwatch), by id */
    size_t nsched;
    struct auth *auth;
    struct store *store;
    atomic_uint revocations;
    unsigned ticks;           /* under the lock (written by registry_reap only) */
    char url_suffix[300];     /* constant after open: read without the lock */
};

/* Which lock this thread holds, so that every helper that needs it can say
 * so (one registry per process). */
enum { HELD_NONE, HELD_READ, HELD_WRITE };
static __thread int held;

#define ASSERT_READ() assert(held != HELD_NONE)
#define ASSERT_WRITE() assert(held == HELD_WRITE)

static void rdlock(struct registry *reg)
{
    assert(held == HELD_NONE);
    if (pthread_rwlock_rdlock(&reg->lock) != 0)
        fatal("state lock: cannot lock for reading");
    held = HELD_READ;
}

static void wrlock(struct registry *reg)
{
    assert(held == HELD_NONE);
    if (pthread_rwlock_wrlock(&reg->lock) != 0)
        fatal("state lock: cannot lock for writing");
    held = HELD_WRITE;
}

static void unlock(struct registry *reg)
{
    held = HELD_NONE;
    pthread_rwlock_unlock(&reg->lock);
}

static void revoked(struct registry *reg)
{
    atomic_fetch_add(&reg->revocations, 1);
}

unsigned registry_revocations(const struct registry *reg)
{
    return atomic_load(&reg->revocations);
}

const char *registry_url_suffix(const struct registry *reg)
{
    return reg->url_suffix;
}

int registry_url(const struct registry *reg, const char *alias, char *buf, size_t len)
{
    return xsnprintf(buf, len, "https://%s%s/", alias, reg->url_suffix);
}

static const struct route *find(struct registry *reg, const char *alias)
{
    ASSERT_READ();
    return route_find(reg->routes, alias, strlen(alias));
}

/* ---- open and close ------------------------------------------------------------ */

static int load_route(const struct route *r, void *arg)
{
    struct registry *reg = arg;
    struct route c = *r;
    if (c.kind == ROUTE_TUNNEL)
        c.detached = now_mono_ms(); /* its agent reconnects, or the grace time ends it */
    if (route_add(reg->routes, &c) < 0)
        log_warn("stored route %s is invalid; ignored", r->alias);
    return 0;
}

static int load_job(const struct job *j, void *arg)
{
    struct registry *reg = arg;
    if (job_put(reg->jobs, j) < 0)
        log_warn("stored job %u is invalid; ignored", (unsigned)j->id);
    return 0;
}

struct registry *registry_open(const struct jg_config *cfg, char *err, size_t errlen)
{
    char path[4096];
    pthread_rwlockattr_t la;
    struct registry *reg = xcalloc(1, sizeof(*reg));
    reg->cfg = cfg;
    if (cfg->public_port == 443)
        snprintf(reg->url_suffix, sizeof(reg->url_suffix), ".%s", cfg->domain);
    else
        snprintf(reg->url_suffix, sizeof(reg->url_suffix), ".%s:%u", cfg->domain,
                 cfg->public_port);
    int rc = pthread_rwlockattr_init(&la);
    if (rc == 0)
        rc = pthread_rwlockattr_setkind_np(&la, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (rc == 0)
        rc = pthread_rwlock_init(&reg->lock, &la);
    pthread_rwlockattr_destroy(&la);
    if (rc != 0) {
        errmsg(err, errlen, -rc, "cannot create the state lock: %s", strerror(rc));
        registry_close(reg);
        return NULL;
    }
    reg->lock_ready = 1;
    snprintf(path, sizeof(path), "%s/jobgate.db", cfg->state_dir);
    if (store_open(&reg->store, path) < 0) {
        errmsg(err, errlen, -EIO, "cannot open the state database %s (see above)", path);
        registry_close(reg);
        return NULL;
    }
    reg->routes = route_table_new();
    reg->jobs = job_table_new();
    reg->auth = auth_new(reg->store);
    store_route_load(reg->store, load_route, reg);
    store_job_load(reg->store, load_job, reg);
    auth_expire(reg->auth, now_real());
    auth_load(reg->auth, now_real());
    return reg;
}

void registry_close(struct registry *reg)
{
    if (!reg)
        return;
    auth_free(reg->auth);
    route_table_free(reg->routes);
    job_table_free(reg->jobs);
    free(reg->sched);
    store_close(reg->store);
    if (reg->lock_ready)
        pthread_rwlock_destroy(&reg->lock);
    free(reg);
}

size_t registry_route_count(struct registry *reg)
{
    rdlock(reg);
    size_t n = route_count(reg->routes);
    unlock(reg);
    return n;
}

/* ---- route changes (write lock held) -------------------------------------------- */

static int add_locked(struct registry *reg, struct route *r)
{
    ASSERT_WRITE();
    int rc = alias_new(reg->routes, r->alias, sizeof(r->alias));
    if (rc < 0)
        return rc;
    rc = store_route_put(reg->store, r);
    if (rc < 0)
        return rc;
    rc = route_add(reg->routes, r);
    if (rc < 0) {
        store_route_delete(reg->store, r->alias);
        return rc;
    }
    char where[160], detail[200];
    route_describe(r, where, sizeof(where));
    if (r->job)
        snprintf(detail, sizeof(detail), "%s job=%u", where, (unsigned)r->job);
    else
        snprintf(detail, sizeof(detail), "%s", where);
    store_audit(reg->store, r->uid, "route.add", r->alias, detail);
    log_info("route add alias=%s uid=%u name=%s backend=%s%s", r->alias, (unsigned)r->uid, r->name,
             detail, r->starting ? " (starting)" : "");
    return 0;
}

static int remove_locked(struct registry *reg, const char *alias, uid_t by, const char *why)
{
    ASSERT_WRITE();
    char a[ROUTE_ALIAS_MAX + 1];
    snprintf(a, sizeof(a), "%s", alias); /* alias may point into the route we free */
    int rc = store_route_delete(reg->store, a);
    if (rc < 0 && rc != -ENOENT)
        return rc;
    route_remove(reg->routes, a);
    auth_drop_alias(reg->auth, a);
    revoked(reg);
    store_audit(reg->store, by, "route.remove", a, why);
    log_info("route remove alias=%s by uid=%u (%s)", a, (unsigned)by, why);
    return 0;
}

int registry_route_add(struct registry *reg, struct route *r)
{
    wrlock(reg);
    int rc = add_locked(reg, r);
    unlock(reg);
    return rc;
}

int registry_route_get(struct registry *reg, const char *alias, struct route *out)
{
    rdlock(reg);
    const struct route *r = find(reg, alias);
    if (r)
        *out = *r;
    unlock(reg);
    return r ? 0 : -ENOENT;
}

struct name_ctx {
    const char *name;
    uid_t uid;
    const struct route *found;
    int count;
};

static int match_name(const struct route *r, void *arg)
{
    struct name_ctx *nc = arg;
    if (r->uid == nc->uid && strcmp(r->name, nc->name) == 0) {
        nc->found = r;
        nc->count++;
    }
    return 0;
}

int registry_route_resolve(struct registry *reg, uid_t uid, const char *key, struct route *out)
{
    rdlock(reg);
    const struct route *r = find(reg, key);
    int rc = 0;
    if (!r || r->uid != uid) {
        struct name_ctx nc = {.name = key, .uid = uid};
        route_filter(reg->routes, match_name, &nc);
        r = nc.count == 1 ? nc.found : NULL;
        rc = nc.count > 1 ? -ENOTUNIQ : nc.count == 0 ? -ENOENT : 0;
    }
    if (r)
        *out = *r;
    unlock(reg);
    return rc;
}

int registry_route_ready(struct registry *reg, const char *alias, uid_t uid)
{
    wrlock(reg);
    const struct route *found = find(reg, alias);
    int rc = 0;
    if (!found || found->uid != uid) {
        rc = -ENOENT;
    } else if (found->starting) {
        struct route r = *found;
        r.starting = 0;
        rc = store_route_put(reg->store, &r);
        if (rc == 0)
            rc = route_replace(reg->routes, &r);
        if (rc == 0)
            log_info("route update alias=%s uid=%u ready", r.alias, (unsigned)r.uid);
    }
    unlock(reg);
    return rc;
}

int registry_route_remove(struct registry *reg, const char *alias, uid_t owner,
                          enum route_kind kind, uid_t by, const char *why)
{
    wrlock(reg);
    const struct route *r = find(reg, alias);
    int rc = !r || r->uid != owner || (kind && r->kind != kind)
                 ? -ENOENT : remove_locked(reg, alias, by, why);
    unlock(reg);
    return rc;
}

struct list_ctx {
    uid_t uid;
    int all;
    struct route *v;
    int n;
};

static int copy_route(const struct route *r, void *arg)
{
    struct list_ctx *lc = arg;
    if (lc->all || r->uid == lc->uid)
        lc->v[lc->n++] = *r;
    return 0;
}

int registry_routes(struct registry *reg, uid_t uid, int all, struct route **out)
{
    rdlock(reg);
    struct list_ctx lc = {.uid = uid, .all = all};
    lc.v = xcalloc(route_count(reg->routes) + 1, sizeof(*lc.v));
    route_filter(reg->routes, copy_route, &lc);
    unlock(reg);
    *out = lc.v;
    return lc.n;
}

int registry_link(struct registry *reg, const char *alias, uid_t owner, enum route_kind kind,
                  int64_t ttl, struct registry_link *out)
{
    char token[TOKEN_STR_LEN + 1];
    memset(out, 0, sizeof(*out));
    wrlock(reg);
    const struct route *r = find(reg, alias);
    int rc = !r || r->uid != owner || (kind && r->kind != kind) ? -ENOENT
             : auth_link_new(reg->auth, alias, ttl, token, &out->expires);
    unlock(reg);
    if (rc < 0)
        return rc;
    registry_url(reg, alias, out->url, sizeof(out->url));
    snprintf(out->link, sizeof(out->link), "%s_jobgate/redeem/%s", out->url, token);
    memset(token, 0, sizeof(token));
    return 0;
}

/* ---- agents' tunnels ------------------------------------------------------------- */

struct orphan_ctx {
    uid_t uid;
    uint32_t job;
    const char *name;
    const struct route *found;
    int count;
};

static int match_orphan(const struct route *r, void *arg)
{
    struct orphan_ctx *oc = arg;
    if (r->kind == ROUTE_TUNNEL && r->tunnel == 0 && r->uid == oc->uid && r->job == oc->job &&
        strcmp(r->name, oc->name) == 0) {
        oc->found = r;
        oc->count++;
    }
    return 0;
}

int registry_tunnel_attach(struct registry *reg, const struct tunnel_claim *c, struct route *out)
{
    int rc = 0;
    wrlock(reg);
    const struct route *old = c->alias ? find(reg, c->alias) : NULL;
    if (!c->alias) {
        /* A new agent for an app whose agent died (the job restarted it): the
         * same user's only orphaned route of that name keeps its URL and cookies. */
        struct orphan_ctx oc = {.uid = c->uid, .job = c->job, .name = c->name};
        route_filter(reg->routes, match_orphan, &oc);
        if (oc.count == 1)
            old = oc.found;
    }
    memset(out, 0, sizeof(*out));
    const struct job *job = c->job ? job_find(reg->jobs, c->job) : NULL;
    if (c->job && (!job || job->ended || job->uid != c->uid)) {
        rc = -ESTALE; /* the job ended since the hello */
    } else if (c->full && !(old && c->mine(c->arg, old->alias))) {
        rc = -ENOSPC;
    } else if (old && (old->uid != c->uid || old->kind != ROUTE_TUNNEL || old->job != c->job)) {
        snprintf(out->alias, sizeof(out->alias), "%s", old->alias);
        rc = -EPERM;
    } else if (old) {
        /* Back after a reconnect (or taken over from a tunnel that has not
         * noticed yet that it is dead): same owner, so same route, links and
         * sessions. */
        struct route r = *old;
        if (r.tunnel && r.tunnel != c->tunnel)
            log_info("tunnel=%" PRIx64 " takes %s over from tunnel=%" PRIx64, c->tunnel, r.alias,
                     r.tunnel);
        int changed = strcmp(r.name, c->name) != 0 || strcmp(r.path, c->local) != 0;
        snprintf(r.name, sizeof(r.name), "%s", c->name);
        snprintf(r.path, sizeof(r.path), "%s", c->local);
        r.tunnel = c->tunnel;
        r.detached = 0;
        if ((changed && store_route_put(reg->store, &r) < 0) || route_replace(reg->routes, &r) < 0)
            rc = -EIO;
        else
            log_info("route attach alias=%s uid=%u tunnel=%" PRIx64, r.alias, (unsigned)r.uid,
                     c->tunnel);
        *out = r;
    } else {
        out->uid = c->uid;
        out->kind = ROUTE_TUNNEL;
        out->created = now_real();
        out->tunnel = c->tunnel;
        out->job = c->job;
        snprintf(out->name, sizeof(out->name), "%s", c->name);
        snprintf(out->path, sizeof(out->path), "%s", c->local);
        if (add_locked(reg, out) < 0)
            rc = -EIO;
    }
    unlock(reg);
    return rc;
}

void registry_tunnel_detach(struct registry *reg, uint64_t tunnel, const char *const *aliases,
                            unsigned n)
{
    int64_t now = now_mono_ms();
    wrlock(reg);
    for (unsigned i = 0; i < n; i++) {
        const struct route *r = find(reg, aliases[i]);
        if (!r || r->kind != ROUTE_TUNNEL || r->tunnel != tunnel)
            continue;
        struct route c = *r;
        c.tunnel = 0;
        c.detached = now;
        route_replace(reg->routes, &c);
        log_info("route detach alias=%s: its agent is gone; waiting up to %" PRId64 " s",
                 c.alias, reg->cfg->grace);
    }
    unlock(reg);
}

/* ---- batch jobs ------------------------------------------------------------------ */

/* Records job j, or finds it recorded for the same uid (write lock held).
 * how names the source in the audit trail and the log ("start": a node,
 * "adopt": the scheduler's word on an agent's hello). */
static int job_record_locked(struct registry *reg, const struct job *j, const char *how,
                             struct job *out)
{
    ASSERT_WRITE();
    const struct job *old = job_find(reg->jobs, j->id);
    if (old && old->uid != j->uid)
        return -EEXIST;
    if (old && old->ended)
        return -ESTALE;
    if (old && j->adopted && !old->adopted)
        return -EPERM; /* its node recorded it: its agents prove it with its certificate */
    if (old && old->adopted && !j->adopted) {
        struct job up = *old; /* its node confirms it now */
        up.adopted = 0;
        job_put(reg->jobs, &up);
        (void)store_job_put(reg->store, &up);
        *out = up;
        return 0;
    }
    if (old) {
        *out = *old; /* another node of the job, another step, another agent */
        return 0;
    }
    struct job n = *j;
    n.started = now_real();
    n.ended = 0;
    if (store_job_put(reg->store, &n) < 0 || job_put(reg->jobs, &n) < 0)
        return -EIO;
    char event[16], detail[160];
    snprintf(event, sizeof(event), "job.%s", how);
    snprintf(detail, sizeof(detail), "job=%u node=%s user=%s", (unsigned)n.id, n.node, n.user);
    store_audit(reg->store, n.uid, event, NULL, detail);
    log_info("job %s job=%u uid=%u user=%s node=%s", how, (unsigned)n.id, (unsigned)n.uid,
             n.user, n.node);
    *out = n;
    return 0;
}

int registry_job_start(struct registry *reg, const struct job *j, struct job *out)
{
    wrlock(reg);
    int rc = job_record_locked(reg, j, "start", out);
    unlock(reg);
    return rc;
}

int registry_job_adopt(struct registry *reg, const struct job *j)
{
    struct job out;
    wrlock(reg);
    int rc = job_record_locked(reg, j, "adopt", &out);
    unlock(reg);
    return rc;
}

struct job_routes {
    uint32_t job;
    char (*alias)[ROUTE_ALIAS_MAX + 1];
    size_t n, cap;
};

static int collect_job_route(const struct route *r, void *arg)
{
    struct job_routes *jr = arg;
    if (r->job != jr->job)
        return 0;
    if (jr->n == jr->cap) {
        jr->cap = jr->cap ? jr->cap * 2 : 8;
        jr->alias = xrealloc(jr->alias, jr->cap * sizeof(*jr->alias));
    }
    snprintf(jr->alias[jr->n++], sizeof(jr->alias[0]), "%s", r->alias);
    return 0;
}

/* Ends job (write lock held): its routes go, its record stays as ended. */
static int job_end_locked(struct registry *reg, const struct job *job, uid_t by, const char *why)
{
    ASSERT_WRITE();
    struct job j = *job; /* job points into the table */
    struct job_routes jr = {.job = j.id};
    route_filter(reg->routes, collect_job_route, &jr);
    int gone = 0;
    for (size_t i = 0; i < jr.n; i++)
        if (remove_locked(reg, jr.alias[i], by, why) == 0)
            gone++;
    free(jr.alias);
    job_dests_clear(reg->jobs, j.id);
    if (!j.ended) {
        /* Ended in memory whatever the store says: its tunnels and routes must not live on. */
        j.ended = now_real();
        job_put(reg->jobs, &j);
        if (store_job_put(reg->store, &j) < 0)
            log_warn("job %u: its end could not be stored (a restart would show it running "
                     "until the reaper asks the scheduler)", (unsigned)j.id);
        char detail[160];
        snprintf(detail, sizeof(detail), "job=%u routes=%d (%s)", (unsigned)j.id, gone, why);
        store_audit(reg->store, by, "job.end", NULL, detail);
        log_info("job end job=%u uid=%u by uid=%u routes=%d (%s)", (unsigned)j.id,
                 (unsigned)j.uid, (unsigned)by, gone, why);
    }
    revoked(reg); /* tunnels authenticated as the job end too */
    return gone;
}

int registry_job_end(struct registry *reg, uint32_t id, uid_t by, const char *why)
{
    wrlock(reg);
    const struct job *j = job_find(reg->jobs, id);
    int rc = j ? job_end_locked(reg, j, by, why) : -ENOENT;
    unlock(reg);
    return rc;
}

struct running_ctx {
    uint32_t *ids;
    size_t n, cap;
};

static int collect_running(const struct job *j, void *arg)
{
    struct running_ctx *rc = arg;
    if (!j->ended && rc->n < rc->cap)
        rc->ids[rc->n++] = j->id;
    return 0;
}

int registry_jobs_running(struct registry *reg, uint32_t **ids)
{
    rdlock(reg);
    struct running_ctx rc = {.cap = job_count(reg->jobs)};
    rc.ids = xcalloc(rc.cap + 1, sizeof(*rc.ids));
    job_filter(reg->jobs, collect_running, &rc);
    unlock(reg);
    *ids = rc.ids;
    return (int)rc.n;
}

int registry_job_ready(struct registry *reg, uint32_t id, const char *node,
                       const struct job_dest *d, unsigned n)
{
    wrlock(reg);
    const struct job *j = job_find(reg->jobs, id);
    int rc = !j ? -ENOENT : j->ended ? -ESTALE : job_dests_set(reg->jobs, id, node, d, n);
    if (rc == 0) {
        char detail[160];
        snprintf(detail, sizeof(detail), "job=%u node=%s destinations=%u", (unsigned)id, node, n);
        store_audit(reg->store, j->uid, "job.ready", NULL, detail);
        log_info("job ready job=%u node=%s destinations=%u", (unsigned)id, node, n);
    }
    unlock(reg);
    return rc;
}

int registry_job_dest(struct registry *reg, uint32_t id, uid_t uid, const char *host,
                      uint16_t port)
{
    rdlock(reg);
    const struct job *j = job_find(reg->jobs, id);
    int rc = !j || j->uid != uid ? -ENOENT : j->ended ? -ESTALE
             : job_dest_has(reg->jobs, id, host, port) ? 0 : -EPERM;
    unlock(reg);
    return rc;
}

struct direct_count {
    uint32_t job;
    unsigned n;
};

static int count_direct(const struct route *r, void *arg)
{
    struct direct_count *dc = arg;
    if (r->kind == ROUTE_DIRECT && r->job == dc->job)
        dc->n++;
    return 0;
}

int registry_direct_add(struct registry *reg, struct route *r)
{
    wrlock(reg);
    /* Checked under the same lock as the add: a job that ends meanwhile takes it along. */
    const struct job *j = job_find(reg->jobs, r->job);
    struct direct_count dc = {.job = r->job};
    int rc = !j || j->uid != r->uid ? -ENOENT : j->ended ? -ESTALE
             : !job_dest_has(reg->jobs, r->job, r->path, r->port) ? -EPERM : 0;
    if (rc == 0) {
        route_filter(reg->routes, count_direct, &dc);
        rc = dc.n >= REGISTRY_DIRECT_MAX ? -ENOSPC : add_locked(reg, r);
    }
    unlock(reg);
    return rc;
}

int registry_job_dest_pick(struct registry *reg, uint32_t id, uid_t uid, uint16_t port,
                           char *host, size_t len)
{
    rdlock(reg);
    const struct job *j = job_find(reg->jobs, id);
    const struct job_dest *d;
    unsigned n = j && j->uid == uid && !j->ended ? job_dests(reg->jobs, id, &d) : 0;
    int rc = !j || j->uid != uid ? -ENOENT : j->ended ? -ESTALE : -EPERM;
    for (unsigned i = 0; i < n; i++) {
        unsigned char a[16];
        if (d[i].port != port || (inet_pton(AF_INET, d[i].host, a) != 1 &&
                                  inet_pton(AF_INET6, d[i].host, a) != 1))
            continue;
        snprintf(host, len, "%s", d[i].host);
        rc = 0;
        break;
    }
    unlock(reg);
    return rc;
}

struct jobs_ctx {
    struct registry *reg;
    uid_t uid;
    int all;
    struct registry_jobs *out;
    size_t cap_dests;
};

static int copy_job(const struct job *j, void *arg)
{
    struct jobs_ctx *jc = arg;
    struct registry_jobs *o = jc->out;
    if (!jc->all && j->uid != jc->uid)
        return 0;
    const struct job_dest *d;
    unsigned nd = job_dests(jc->reg->jobs, j->id, &d);
    if (o->ndests + nd > jc->cap_dests) {
        jc->cap_dests = (o->ndests + nd) * 2;
        o->dests = xrealloc(o->dests, jc->cap_dests * sizeof(*o->dests));
    }
    o->jobs[o->n] = *j;
    o->first[o->n] = o->ndests;
    o->count[o->n] = nd;
    memcpy(o->dests + o->ndests, d, nd * sizeof(*d));
    o->ndests += nd;
    o->n++;
    return 0;
}

static int by_job_id(const void *a, const void *b)
{
    uint32_t x = ((const struct job *)a)->id, y = ((const struct job *)b)->id;
    return x < y ? -1 : x > y;
}

int registry_jobs(struct registry *reg, uid_t uid, int all, struct registry_jobs *out)
{
    memset(out, 0, sizeof(*out));
    rdlock(reg);
    size_t n = job_count(reg->jobs);
    struct jobs_ctx jc = {.reg = reg, .uid = uid, .all = all, .out = out};
    out->jobs = xcalloc(n + 1, sizeof(*out->jobs));
    out->first = xcalloc(n + 1, sizeof(*out->first));
    out->count = xcalloc(n + 1, sizeof(*out->count));
    job_filter(reg->jobs, copy_job, &jc);
    unlock(reg);
    /* By id, each job's destinations moved along with it. */
    struct job_dest *dests = xcalloc(out->ndests + 1, sizeof(*dests));
    struct { struct job j; unsigned first, count; } *v = xcalloc(out->n + 1, sizeof(*v));
    for (unsigned i = 0; i < out->n; i++) {
        v[i].j = out->jobs[i];
        v[i].first = out->first[i];
        v[i].count = out->count[i];
    }
    qsort(v, out->n, sizeof(*v), by_job_id);
    unsigned k = 0;
    for (unsigned i = 0; i < out->n; i++) {
        out->jobs[i] = v[i].j;
        memcpy(dests + k, out->dests + v[i].first, v[i].count * sizeof(*dests));
        out->first[i] = k;
        out->count[i] = v[i].count;
        k += v[i].count;
    }
    free(v);
    free(out->dests);
    out->dests = dests;
    return (int)out->n;
}

void registry_jobs_free(struct registry_jobs *j)
{
    free(j->jobs);
    free(j->first);
    free(j->count);
    free(j->dests);
    memset(j, 0, sizeof(*j));
}

void registry_sched_set(struct registry *reg, struct registry_sched_job *v, size_t n)
{
    wrlock(reg);
    struct registry_sched_job *old = reg->sched;
    reg->sched = v;
    reg->nsched = n;
    unlock(reg);
    free(old); /* outside the lock: a swap is all it holds it for */
}

static int sched_over(const char *state)
{
    static const char *const over[] = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE",
                                       "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                                       "REVOKED", "SPECIAL_EXIT", "TIMEOUT"};
    for (size_t i = 0; i < JG_ARRAY_LEN(over); i++)
        if (strcmp(state, over[i]) == 0)
            return 1;
    return 0;
}

int registry_sched_jobs(struct registry *reg, uid_t uid, int all,
                        struct registry_sched_job **out)
{
    rdlock(reg);
    struct registry_sched_job *v = xcalloc(reg->nsched + 1, sizeof(*v));
    size_t n = 0;
    for (size_t i = 0; i < reg->nsched; i++) {
        const struct registry_sched_job *s = &reg->sched[i];
        if ((all || s->uid == uid) && !sched_over(s->state) && !job_find(reg->jobs, s->id))
            v[n++] = *s;
    }
    unlock(reg);
    *out = v;
    return (int)n;
}

int registry_job_get(struct registry *reg, uint32_t id, struct job *out)
{
    rdlock(reg);
    const struct job *j = job_find(reg->jobs, id);
    if (j)
        *out = *j;
    unlock(reg);
    return j ? 0 : -ENOENT;
}

struct job_reap {
    int64_t now;
    uint32_t id[REAP_BATCH];
    int n;
};

static int find_expired_job(const struct job *j, void *arg)
{
    struct job_reap *jr = arg;
    if (jr->n < REAP_BATCH && jr->now > j->not_after)
        jr->id[jr->n++] = j->id;
    return 0;
}

/* Jobs whose certificates have expired: ended (when they were not) and forgotten. */
static void reap_jobs(struct registry *reg)
{
    ASSERT_WRITE();
    struct job_reap jr = {.now = now_real()};
    job_filter(reg->jobs, find_expired_job, &jr);
    for (int i = 0; i < jr.n; i++) {
        const struct job *j = job_find(reg->jobs, jr.id[i]);
        if (j && !j->ended)
            job_end_locked(reg, j, 0, "its certificates expired");
        if (store_job_delete(reg->store, jr.id[i]) == 0)
            job_remove(reg->jobs, jr.id[i]);
    }
}

/* ---- browsers --------------------------------------------------------------------- */

/* The first of the cookie values that is a live session of alias. */
static int session_among(struct registry *reg, const char *alias, const struct http1_str *vals,
                         int n, uid_t *uid, uint8_t hash[TOKEN_HASH_LEN])
{
    ASSERT_READ();
    uint8_t scratch[TOKEN_HASH_LEN];
    for (int i = 0; i < n; i++)
        if (auth_session_check(reg->auth, alias, vals[i].p, vals[i].n, uid,
                               hash ? hash : scratch))
            return 1;
    return 0;
}

enum admit registry_admit(struct registry *reg, const char *alias, const struct http1_str *vals,
                          int n, struct admission *a)
{
    rdlock(reg);
    const struct route *r = find(reg, alias);
    int ok = 0;
    if (r) {
        a->route = *r;
        ok = session_among(reg, alias, vals, n, &a->uid, a->sess_hash);
    }
    unlock(reg);
    if (!r)
        return ADMIT_UNKNOWN;
    if (!ok)
        return ADMIT_FORBIDDEN;
    if (a->route.kind == ROUTE_TUNNEL && a->route.tunnel == 0)
        return ADMIT_RECONNECTING;
    return a->route.starting ? ADMIT_STARTING : ADMIT_OK;
}

int registry_session_live(struct registry *reg, const char *alias,
                          const uint8_t hash[TOKEN_HASH_LEN])
{
    rdlock(reg);
    int live = find(reg, alias) && auth_session_alive(reg->auth, alias, hash);
    unlock(reg);
    return live;
}

int registry_redeem(struct registry *reg, const char *alias, const char *tok, size_t len,
                    char cookie[TOKEN_STR_LEN + 1])
{
    wrlock(reg);
    const struct route *r = find(reg, alias);
    int rc = r ? auth_redeem(reg->auth, alias, tok, len, r->uid, reg->cfg->session_ttl, cookie)
               : -ENXIO;
    unlock(reg);
    return rc;
}

void registry_logout(struct registry *reg, const char *alias, const struct http1_str *vals, int n)
{
    for (int i = 0; i < n; i++) {
        /* Only a live session of this app costs a write: made-up cookies
         * cannot serialise the workers on SQLite. */
        rdlock(reg);
        int live = auth_session_ok(reg->auth, alias, vals[i].p, vals[i].n, NULL);
        unlock(reg);
        if (!live)
            continue;
        wrlock(reg);
        auth_logout(reg->auth, vals[i].p, vals[i].n);
        revoked(reg);
        unlock(reg);
    }
}

int registry_status(struct registry *reg, const char *alias, const struct http1_str *vals, int n,
                    int *starting, uint32_t *job)
{
    rdlock(reg);
    const struct route *r = find(reg, alias);
    int rc = !r ? -ENXIO : session_among(reg, alias, vals, n, NULL, NULL) ? 0 : -EACCES;
    *starting = r && r->starting;
    *job = r && rc == 0 ? r->job : 0;
    unlock(reg);
    return rc;
}

/* ---- the reaper -------------------------------------------------------------------- */

struct reap_ctx {
    const struct job_table *jobs;
    int64_t now, grace_ms;
    char alias[REAP_BATCH][ROUTE_ALIAS_MAX + 1];
    uid_t uid[REAP_BATCH];
    const char *why[REAP_BATCH];
    int n;
};

static int find_dead(const struct route *r, void *arg)
{
    struct reap_ctx *rc = arg;
    const char *why = NULL;
    if (rc->n >= REAP_BATCH)
        return 0;
    const struct job *j = r->job ? job_find(rc->jobs, r->job) : NULL;
    if (r->pid > 0 && kill(r->pid, 0) < 0 && errno == ESRCH)
        why = "owner process gone";
    else if (r->job && (!j || j->ended))
        why = "its job ended";
    else if (r->kind == ROUTE_TUNNEL && r->tunnel == 0 && rc->now - r->detached > rc->grace_ms)
        why = "agent gone longer than the grace time";
    if (why) {
        snprintf(rc->alias[rc->n], sizeof(rc->alias[0]), "%s", r->alias);
        rc->uid[rc->n] = r->uid;
        rc->why[rc->n++] = why;
    }
    return 0;
}

void registry_reap(struct registry *reg)
{
    struct reap_ctx rc = {.jobs = reg->jobs, .now = now_mono_ms(),
                          .grace_ms = reg->cfg->grace * 1000};
    wrlock(reg);
    route_filter(reg->routes, find_dead, &rc);
    for (int i = 0; i < rc.n; i++)
        remove_locked(reg, rc.alias[i], rc.uid[i], rc.why[i]);
    if (++reg->ticks % EXPIRE_EVERY_TICKS == 0) {
        auth_expire(reg->auth, now_real());
        reap_jobs(reg);
    }
    unlock(reg);
}
