/* registry — see registry.h. */
#include "registry-int.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alias.h"
#include "auth.h"
#include "config.h"
#include "job.h"
#include "log.h"
#include "procnet.h"
#include "store.h"
#include "util.h"

#define EXPIRE_EVERY_TICKS 60 /* registry_reap calls between sweeps of expired links and sessions */

__thread int registry_held;

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

/* ---- open and close ------------------------------------------------------------ */

static int load_route(const struct route *r, void *arg)
{
    struct registry *reg = arg;
    struct route c = *r;
    if (c.kind == ROUTE_TUNNEL)
        c.detached = now_mono_ms(); /* its agent reconnects, or the grace time ends it */
    if (route_add(reg->routes, &c) < 0)
        log_warn("stored route %s is invalid; ignored", r->alias);
    else
        hmap_tally(reg->routes_by_uid, &c.uid, sizeof(c.uid), 1);
    return 0;
}

static int load_job(const struct job *j, void *arg)
{
    struct registry *reg = arg;
    if (job_put(reg->jobs, j) < 0)
        log_warn("stored job %u is invalid; ignored", (unsigned)j->id);
    return 0;
}

void registry_reconfigure(struct registry *reg, const struct jg_config *cfg)
{
    atomic_store(&reg->cfg, cfg);
}

struct registry *registry_open(const struct jg_config *cfg, char *err, size_t errlen)
{
    char path[4096];
    pthread_rwlockattr_t la;
    struct registry *reg = xcalloc(1, sizeof(*reg));
    reg->cfg = cfg;
    reg->self = getuid();
    reg->routes_by_uid = hmap_new();
    reg->held_by_uid = hmap_new();
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
    hmap_free(reg->routes_by_uid, NULL);
    hmap_free(reg->held_by_uid, NULL);
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

int reg_add_locked(struct registry *reg, struct route *r)
{
    ASSERT_WRITE();
    if (!quota_exempt(reg, r->uid) &&
        hmap_tally(reg->routes_by_uid, &r->uid, sizeof(r->uid), 0) >= reg->cfg->quota_routes)
        return -EDQUOT;
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
    hmap_tally(reg->routes_by_uid, &r->uid, sizeof(r->uid), 1);
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

int reg_remove_locked(struct registry *reg, const char *alias, uid_t by, const char *why)
{
    ASSERT_WRITE();
    char a[ROUTE_ALIAS_MAX + 1];
    snprintf(a, sizeof(a), "%s", alias); /* alias may point into the route we free */
    int rc = store_route_delete(reg->store, a);
    if (rc < 0 && rc != -ENOENT)
        return rc;
    const struct route *r = find(reg, a);
    if (r)
        hmap_tally(reg->routes_by_uid, &r->uid, sizeof(r->uid), -1);
    route_remove(reg->routes, a);
    auth_drop_alias(reg->auth, a);
    revoked(reg);
    store_audit(reg->store, by, "route.remove", a, why);
    log_info("route remove alias=%s by uid=%u (%s)", a, (unsigned)by, why);
    return 0;
}

const char *registry_why(int err)
{
    return store_why(err);
}

void registry_quota_why(struct registry *reg, uid_t uid, int links, char *buf, size_t len)
{
    rdlock(reg);
    unsigned n = links ? auth_links_of(reg->auth, uid)
                       : (unsigned)hmap_tally(reg->routes_by_uid, &uid, sizeof(uid), 0);
    unlock(reg);
    snprintf(buf, len, "uid %u has %u %s, its quota ([quota] %s)", (unsigned)uid, n,
             links ? "unused links" : "apps", links ? "links" : "routes");
}

int registry_route_add(struct registry *reg, struct route *r)
{
    wrlock(reg);
    int rc = reg_add_locked(reg, r);
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
                 ? -ENOENT : reg_remove_locked(reg, alias, by, why);
    unlock(reg);
    return rc;
}

int registry_tunnel_route_remove(struct registry *reg, const char *alias, uid_t uid, uint32_t job,
                                 uint64_t tunnel, const char *why)
{
    wrlock(reg);
    const struct route *r = find(reg, alias);
    int rc = !r || r->uid != uid || r->job != job || r->kind != ROUTE_TUNNEL ? -ENOENT
             : r->tunnel != tunnel ? -EXDEV
             : reg_remove_locked(reg, alias, uid, why);
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
             : auth_link_new(reg->auth, alias, owner,
                             quota_exempt(reg, owner) ? 0 : reg->cfg->quota_links, ttl, token,
                             &out->expires);
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

/* The tunnel's policy onto its route (attach). */
static void set_reach(struct route *r, const struct tunnel_claim *c)
{
    r->asleep = 0;
    r->once = c->once;
    r->poll = c->poll;
    r->checkin = c->checkin;
    r->cb_port = c->cb_port;
    snprintf(r->cb_host, sizeof(r->cb_host), "%s", c->cb_port && c->cb_host ? c->cb_host : "");
    r->cb_down = 0;
    r->seen = now_real();
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
        rc = -EMLINK; /* not -ENOSPC: that is the store's full disk */
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
        int changed = strcmp(r.name, c->name) != 0 || strcmp(r.path, c->local) != 0 ||
                      r.cross_site != c->cross_site;
        int wanted = old->wanted; /* old is the table's entry: route_replace overwrites it */
        snprintf(r.name, sizeof(r.name), "%s", c->name);
        snprintf(r.path, sizeof(r.path), "%s", c->local);
        r.tunnel = c->tunnel;
        r.detached = 0;
        r.cross_site = c->cross_site;
        set_reach(&r, c);
        r.wanted = 0;
        int e = changed ? store_route_put(reg->store, &r) : 0;
        if (e < 0 || route_replace(reg->routes, &r) < 0)
            rc = e < 0 ? e : -EIO;
        else
            log_info("route attach alias=%s uid=%u tunnel=%" PRIx64 "%s", r.alias,
                     (unsigned)r.uid, c->tunnel, wanted ? " (requests held)" : "");
        *out = r;
        out->wanted = wanted;
    } else {
        out->uid = c->uid;
        out->kind = ROUTE_TUNNEL;
        out->created = now_real();
        out->tunnel = c->tunnel;
        out->job = c->job;
        out->cross_site = c->cross_site;
        set_reach(out, c);
        snprintf(out->name, sizeof(out->name), "%s", c->name);
        snprintf(out->path, sizeof(out->path), "%s", c->local);
        int e = reg_add_locked(reg, out);
        if (e < 0)
            rc = e;
    }
    unlock(reg);
    return rc;
}

/* How long a route without its tunnel waits for the agent (ms). */
static int64_t away_limit_ms(const struct registry *reg, const struct route *r)
{
    int64_t grace = reg->cfg->grace * 1000;
    int64_t sleep = r->asleep ? (2 * (int64_t)r->checkin + 30) * 1000 : 0;
    return sleep > grace ? sleep : grace;
}

void registry_tunnel_detach(struct registry *reg, uint64_t tunnel, const char *const *aliases,
                            unsigned n, int asleep)
{
    int64_t now = now_mono_ms();
    wrlock(reg);
    for (unsigned i = 0; i < n; i++) {
        const struct route *r = find(reg, aliases[i]);
        if (!r || r->kind != ROUTE_TUNNEL || r->tunnel != tunnel)
            continue;
        if (r->once && !asleep) {
            char alias[ROUTE_ALIAS_MAX + 1];
            snprintf(alias, sizeof(alias), "%s", r->alias);
            reg_remove_locked(reg, alias, r->uid, "its agent's tunnel was lost (no reconnect)");
            continue;
        }
        struct route c = *r;
        c.tunnel = 0;
        c.detached = now;
        c.asleep = asleep;
        c.seen = now_real();
        route_replace(reg->routes, &c);
        if (asleep)
            log_info("route sleep alias=%s: its agent comes back within %u s", c.alias,
                     (unsigned)c.checkin);
        else
            log_info("route detach alias=%s: its agent is gone; waiting up to %" PRId64 " s",
                     c.alias, away_limit_ms(reg, &c) / 1000);
    }
    unlock(reg);
}

void registry_callback_down(struct registry *reg, const char *alias)
{
    wrlock(reg);
    const struct route *r = find(reg, alias);
    if (r && r->kind == ROUTE_TUNNEL && r->asleep && !r->cb_down) {
        struct route c = *r;
        c.cb_down = 1;
        c.wanted = 1;
        route_replace(reg->routes, &c);
    }
    unlock(reg);
}

int registry_hold(struct registry *reg, const char *alias, uid_t uid, int delta, unsigned max)
{
    int rc = 0;
    wrlock(reg);
    const struct route *r = find(reg, alias);
    if (delta < 0) /* counted for uid whether or not its route is still there */
        hmap_tally(reg->held_by_uid, &uid, sizeof(uid), -1);
    if (!r || r->kind != ROUTE_TUNNEL || (delta > 0 && (r->tunnel || !r->asleep))) {
        rc = -ENOENT;
    } else {
        struct route c = *r;
        if (delta > 0) {
            c.wanted = 1;
            if (c.held >= max || (!quota_exempt(reg, uid) &&
                                  hmap_tally(reg->held_by_uid, &uid, sizeof(uid), 0) >=
                                      reg->cfg->quota_held)) {
                rc = -EBUSY;
            } else {
                c.held++;
                hmap_tally(reg->held_by_uid, &uid, sizeof(uid), 1);
            }
        } else if (c.held > 0) {
            c.held--;
        }
        route_replace(reg->routes, &c);
    }
    unlock(reg);
    return rc;
}

/* ---- browsers --------------------------------------------------------------------- */

/* The first of the cookie values that is a live session of alias. */
static int session_among(struct registry *reg, const char *alias, const struct http1_str *vals,
                         int n, uid_t *uid, uint8_t hash[TOKEN_HASH_LEN], int64_t *expires)
{
    ASSERT_READ();
    uint8_t scratch[TOKEN_HASH_LEN];
    for (int i = 0; i < n; i++)
        if (auth_session_check(reg->auth, alias, vals[i].p, vals[i].n, uid,
                               hash ? hash : scratch, expires))
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
        a->sess_expires = 0;
        ok = session_among(reg, alias, vals, n, &a->uid, a->sess_hash, &a->sess_expires);
    }
    unlock(reg);
    if (!r)
        return ADMIT_UNKNOWN;
    if (!ok)
        return ADMIT_FORBIDDEN;
    if (a->route.kind == ROUTE_TUNNEL && a->route.tunnel == 0)
        return a->route.asleep ? ADMIT_ASLEEP : ADMIT_RECONNECTING;
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
    /* From memory under the read lock first: a made-up or used token costs
     * the workers no write lock and no SQLite transaction. */
    rdlock(reg);
    int known = find(reg, alias) ? auth_link_check(reg->auth, alias, tok, len) : -ENXIO;
    unlock(reg);
    if (known < 0 && known != -ETIMEDOUT)
        return known;
    wrlock(reg); /* a live (or expired: deleted now) link: take it */
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
                    struct route *out)
{
    rdlock(reg);
    const struct route *r = find(reg, alias);
    int rc = !r ? -ENXIO : session_among(reg, alias, vals, n, NULL, NULL, NULL) ? 0 : -EACCES;
    if (rc == 0)
        *out = *r;
    unlock(reg);
    return rc;
}

/* ---- the reaper -------------------------------------------------------------------- */

/* What the reaper needs of a route, copied under the read lock, so that the
 * slow part (a kill() and a /proc read per owner process) runs with no lock
 * and the write lock is held only to remove what was found, at most
 * REAP_BATCH routes a turn. */
struct reap_item {
    char alias[ROUTE_ALIAS_MAX + 1];
    uid_t uid;
    pid_t pid;
    uint64_t pid_start;
    int job_over;        /* its job ended (or is not known any more) */
    int away;            /* a tunnel route whose agent is away longer than it may be */
    int asleep;
    int64_t detached;
};

struct reap_ctx {
    const struct registry *reg;
    int64_t now;
    struct reap_item *v;
    size_t n;
};

static int snap_route(const struct route *r, void *arg)
{
    struct reap_ctx *rc = arg;
    const struct job *j = r->job ? job_find(rc->reg->jobs, r->job) : NULL;
    struct reap_item it = {.uid = r->uid, .pid = r->pid, .pid_start = r->pid_start,
                           .job_over = r->job && (!j || j->ended), .asleep = r->asleep,
                           .detached = r->detached};
    it.away = r->kind == ROUTE_TUNNEL && r->tunnel == 0 &&
              rc->now - r->detached > away_limit_ms(rc->reg, r);
    if (it.pid > 0 || it.job_over || it.away) {
        snprintf(it.alias, sizeof(it.alias), "%s", r->alias);
        rc->v[rc->n++] = it;
    }
    return 0;
}

/* Why the route of it ends, or NULL: no lock held (kill, /proc). */
static const char *reap_why(const struct reap_item *it)
{
    if (it->pid > 0) {
        uint64_t start;
        if (kill(it->pid, 0) < 0 && errno == ESRCH)
            return "owner process gone";
        /* kill() found a process: unless /proc says it started later than
         * the owner did (hidepid, or no /proc: no answer, no verdict). */
        if (it->pid_start && procnet_start_time("/proc", it->pid, &start) == 0 &&
            start != it->pid_start)
            return "owner process gone (its pid is another process's now)";
    }
    if (it->job_over)
        return "its job ended";
    if (it->away)
        return it->asleep ? "its sleeping agent did not come back" :
                            "agent gone longer than the grace time";
    return NULL;
}

void registry_reap(struct registry *reg)
{
    struct reap_ctx rc = {.reg = reg, .now = now_mono_ms()};
    const char *why[REAP_BATCH];
    struct reap_item dead[REAP_BATCH];
    int ndead = 0;

    rdlock(reg);
    rc.v = xcalloc(route_count(reg->routes) + 1, sizeof(*rc.v));
    route_filter(reg->routes, snap_route, &rc);
    unlock(reg);
    for (size_t i = 0; i < rc.n && ndead < REAP_BATCH; i++) {
        why[ndead] = reap_why(&rc.v[i]);
        if (why[ndead])
            dead[ndead++] = rc.v[i];
    }
    free(rc.v);

    wrlock(reg);
    for (int i = 0; i < ndead; i++) {
        /* Still the route that was judged: not re-registered meanwhile (the
         * same owner process, or an agent not back since). */
        const struct route *r = find(reg, dead[i].alias);
        if (r && r->uid == dead[i].uid && r->pid == dead[i].pid &&
            r->pid_start == dead[i].pid_start &&
            (!dead[i].away || (r->tunnel == 0 && r->detached == dead[i].detached)))
            reg_remove_locked(reg, dead[i].alias, dead[i].uid, why[i]);
    }
    if (++reg->ticks % EXPIRE_EVERY_TICKS == 0) {
        auth_expire(reg->auth, now_real());
        reg_reap_jobs_locked(reg);
    }
    unlock(reg);
}
