/*
 * ratelimit — failures counted per source address in fixed windows, so that
 * one address guessing tokens (a redeem flood, docs/security.md) is told 429
 * while everyone else goes on, and its log lines are kept short.
 *
 * Owns its table of sources (an hmap, keyed hash: sources cannot force
 * collisions), bounded by max_sources: when full, the table is cleared of
 * sources whose window has passed, and if none has, the new source is not
 * tracked (it is not blocked either: the bound is memory, not a verdict).
 * One per worker, touched only on that worker's thread: no lock. Each worker
 * counts on its own, so an address has workers x max failures a window.
 */
#ifndef JG_RATELIMIT_H
#define JG_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

struct ratelimit;

/* The workers' redeem limiter (conn_local.c): failed redeems a minute from
 * one address, per worker, and how many addresses are tracked at most. */
#define REDEEM_FAILS_MAX 20
#define REDEEM_SOURCES_MAX 65536

/* At most max failures per source in each window_ms. */
struct ratelimit *ratelimit_new(unsigned max, int64_t window_ms, size_t max_sources);
void ratelimit_free(struct ratelimit *rl);

/* Milliseconds until source may try again (0: it may now), at time now. */
int64_t ratelimit_wait(struct ratelimit *rl, const char *source, int64_t now);
/* Counts one failure of source at time now. */
void ratelimit_fail(struct ratelimit *rl, const char *source, int64_t now);
/* Forgets the sources whose window has passed (called every second). */
void ratelimit_sweep(struct ratelimit *rl, int64_t now);
/* How many sources it tracks now. */
size_t ratelimit_sources(const struct ratelimit *rl);

#endif
