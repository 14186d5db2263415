/*
 * backoff — how long the agent waits before it dials the gateway again:
 * exponential from BACKOFF_BASE_MS, capped at BACKOFF_CAP_MS, with full
 * jitter so that the agents of a whole cluster do not redial in step after
 * the gateway restarts.
 *
 * A pure function: no state, any thread; the caller keeps the attempt count
 * and brings the randomness.
 */
#ifndef JG_BACKOFF_H
#define JG_BACKOFF_H

#include <stdint.h>

#define BACKOFF_BASE_MS 500
#define BACKOFF_CAP_MS 30000

/* Uniform in [0, min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2^attempt)] for a
 * uniform rnd; attempt 0 is the first retry. */
int64_t backoff_delay_ms(unsigned attempt, uint32_t rnd);

#endif
