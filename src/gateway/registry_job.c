/* registry_job — the batch jobs in the registry (registry.h, "batch jobs";
 * docs/slurm.md): records, their end, their destinations and direct routes,
 * the scheduler's view, and the expiry of their certificates. Under the
 * registry's lock, like everything it owns (registry-int.h). */
#include "registry-int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "store.h"
#include "util.h"

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
        if (reg_remove_locked(reg, jr.alias[i], by, why) == 0)
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
        rc = dc.n >= REGISTRY_DIRECT_MAX ? -EMLINK : reg_add_locked(reg, r);
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
    if (nd) /* none: d and o->dests may be NULL, and memcpy's pointers must not be */
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
        if (v[i].count)
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
void reg_reap_jobs_locked(struct registry *reg)
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

