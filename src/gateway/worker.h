/*
 * worker — one event-loop thread of the daemon: its listener (accepting,
 * pausing at max_connections or on accept errors), its once-a-second flush
 * (access log, revocation sweep of its connections), its drain on shutdown.
 * The type is in worker-t.h.
 *
 * Owns the worker's event base, listener and timers. Each function runs on
 * the worker's own thread unless it says otherwise.
 */
#ifndef JG_WORKER_H
#define JG_WORKER_H

#include <stddef.h>

#include "worker-t.h"

/* Sets up w's event loop, listener on cfg->listen and flush timer (on the
 * main thread, before any worker runs). The shared pointers of w must be set.
 * 0 or -errno with err. */
int worker_init(struct worker *w, unsigned nworkers, char *err, size_t errlen);

/* Runs w's loop on a thread of its own (workers 1..n; worker 0 runs on the
 * main thread through worker_loop). 0 or an errno value. */
int worker_start(struct worker *w);
/* Runs w's loop on this thread until it ends, then closes what is left. */
void worker_loop(struct worker *w);
/* Waits for a started worker's thread. */
void worker_join(struct worker *w);

/* Gateway stopping (from any thread): w stops accepting, closes idle
 * connections and lets exchanges in flight finish within w->drain_secs. */
void worker_stop(struct worker *w);

/* SIGHUP (from any thread): new connections of w use ssl from its next loop
 * turn on (w takes a reference of its own); open ones keep theirs. */
void worker_set_tls(struct worker *w, SSL_CTX *ssl);

/* After fork(): reinitialises w's loop. 0 or -EIO. */
int worker_reinit(struct worker *w);
/* Frees w's loop, listener and what is still open (threads joined). */
void worker_free(struct worker *w);

#endif
