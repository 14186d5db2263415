/*
 * registry-int.h — private to the registry's files: registry.c (routes,
 * tunnels' routes, browsers, the reaper) and registry_job.c (batch jobs and
 * their destinations). registry.h is the outside.
 *
 * struct registry is the one owner of the gateway's shared state; its one
 * rwlock guards routes, jobs, auth and store, is taken only by the
 * registry's functions and never held across an event-loop turn. Helpers
 * named *_locked need it held (ASSERT_WRITE / ASSERT_READ say which).
 */
#ifndef JG_REGISTRY_INT_H
#define JG_REGISTRY_INT_H

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "hmap.h"
#include "log.h"
#include "registry.h"
#include "util.h"

#define REAP_BATCH 32         /* routes (or jobs) ended per reap; the rest wait for the next second */

struct registry {
    const struct jg_config *_Atomic cfg; /* registry_reconfigure swaps it */
    /*
     * The state lock guards routes, jobs, auth and store. It prefers writers; it is
     * taken only by the registry's functions (registry.c, registry_job.c) and
     * never held across an event-loop turn.
     */
    pthread_rwlock_t lock;
    int lock_ready;
    struct route_table *routes;
    struct job_table *jobs;
    struct registry_sched_job *sched; /* the scheduler's last word (jobwatch), by id */
    size_t nsched;
    struct auth *auth;
    struct store *store;
    struct hmap *routes_by_uid; /* uid -> how many routes it owns ([quota] routes) */
    struct hmap *held_by_uid; /* uid -> requests held for its sleeping apps ([quota] held) */
    uid_t self;               /* the gateway's own uid: outside the quotas, like root */
    atomic_uint revocations;
    unsigned ticks;           /* under the lock (written by registry_reap only) */
    char url_suffix[300];     /* constant after open: read without the lock */
};

/* Which lock this thread holds, so that every helper that needs it can say
 * so (one registry per process). */
enum { HELD_NONE, HELD_READ, HELD_WRITE };
extern __thread int registry_held;

#define ASSERT_READ() assert(registry_held != HELD_NONE)
#define ASSERT_WRITE() assert(registry_held == HELD_WRITE)

static inline void rdlock(struct registry *reg)
{
    assert(registry_held == HELD_NONE);
    if (pthread_rwlock_rdlock(&reg->lock) != 0)
        fatal("state lock: cannot lock for reading");
    registry_held = HELD_READ;
}

static inline void wrlock(struct registry *reg)
{
    assert(registry_held == HELD_NONE);
    if (pthread_rwlock_wrlock(&reg->lock) != 0)
        fatal("state lock: cannot lock for writing");
    registry_held = HELD_WRITE;
}

static inline void unlock(struct registry *reg)
{
    registry_held = HELD_NONE;
    pthread_rwlock_unlock(&reg->lock);
}

/* Root and the gateway's own user are outside the per-user quotas. */
static inline int quota_exempt(const struct registry *reg, uid_t uid)
{
    return uid == 0 || uid == reg->self;
}

static inline void revoked(struct registry *reg)
{
    atomic_fetch_add(&reg->revocations, 1);
}

static inline const struct route *find(struct registry *reg, const char *alias)
{
    ASSERT_READ();
    return route_find(reg->routes, alias, strlen(alias));
}

/* registry.c: a route in, or out, with its store row, audit line and log
 * (write lock held). */
int reg_add_locked(struct registry *reg, struct route *r);
int reg_remove_locked(struct registry *reg, const char *alias, uid_t by, const char *why);

/* registry_job.c: jobs whose certificates expired are ended and forgotten
 * (write lock held; registry_reap, once a minute). */
void reg_reap_jobs_locked(struct registry *reg);

#endif
