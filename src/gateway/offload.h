/*
 * offload — a few threads for the calls that may wait on another daemon:
 * MUNGE's (munged) and the user database's (NSS: files, LDAP, SSSD). An
 * event loop never makes them itself: one hung server would stall every
 * connection and tunnel of its worker. The loop hands a job in
 * (offload_submit); a pool thread runs its work; its done runs back on the
 * loop the job names (event_base_once), where the job's owner lives.
 *
 * Owns the threads and each job from offload_submit until its done is
 * called (done frees the job). The mutex guards the queue and the list of
 * jobs in flight. work gets only the job (and state that locks inside, such
 * as the registry); it must not touch the job's owner, which may be freed
 * meanwhile: an owner that goes away clears its pointer in the job, on its
 * own thread, the thread done runs on, so done sees it, and cancels it
 * (offload_cancel): a job not yet taken by a thread is not worked on.
 */
#ifndef JG_OFFLOAD_H
#define JG_OFFLOAD_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/queue.h>

struct event_base;
struct offload;

#define OFFLOAD_THREADS 2     /* calls that wait at once; more queue */
#define OFFLOAD_QUEUE_MAX 256 /* jobs in flight: more are refused (-EBUSY) */
#define OFFLOAD_RESERVE 64    /* ... of which only node requests may take the last ones: a
                               * flood of unauthenticated hellos cannot keep nodes out */

struct offload_job {
    void (*work)(struct offload_job *j); /* on a pool thread */
    void (*done)(struct offload_job *j); /* on base's loop (or at offload_free): frees j */
    struct event_base *base;
    /* the offload's own */
    struct offload *o;
    TAILQ_ENTRY(offload_job) link;
    int running;                         /* under o->mu: in a thread's work now */
    atomic_int cancelled;                /* its owner is gone: work is skipped */
};

TAILQ_HEAD(offload_list, offload_job);

struct offload {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct offload_list queue;   /* under mu: submitted, not yet taken */
    struct offload_list flight;  /* under mu: taken, done not yet called */
    unsigned count;              /* under mu: in both lists */
    int stop;                    /* under mu */
    unsigned running;            /* under mu: threads in a job's work */
    pthread_t threads[OFFLOAD_THREADS];
    unsigned nthreads;
    unsigned stuck;              /* after offload_stop: threads left in a call */
    int ready;
};

/* Starts the threads (after a daemon's fork: threads do not survive it).
 * 0 or -errno. */
int offload_start(struct offload *o);
/* Queues j (work, done and base set) while fewer than limit jobs are in
 * flight (OFFLOAD_QUEUE_MAX, or less to leave the rest to others). 0,
 * -EBUSY or -ESHUTDOWN; j stays the caller's when refused. */
int offload_submit(struct offload *o, struct offload_job *j, unsigned limit);
/* Its owner no longer wants j (on the thread done runs on): its work is
 * skipped if no thread took it yet; done is called all the same. */
void offload_cancel(struct offload_job *j);
/* Once the loops have ended, before they are freed: no thread touches a
 * loop from now on; waits a few seconds for works under way. Returns how
 * many threads are stuck in a hung daemon: they are left behind, and what
 * their works use (the registry, the hub, the node channel) must then stay
 * until the process exits. Again: returns the same at once. */
unsigned offload_stop(struct offload *o);
/* After the loops and the jobs' owners are freed: calls done of every job
 * left (a work still stuck excepted), frees the rest. */
void offload_free(struct offload *o);

#endif
