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
 * own thread, the thread done runs on, so done sees it.
 */
#ifndef JG_OFFLOAD_H
#define JG_OFFLOAD_H

#include <pthread.h>
#include <sys/queue.h>

struct event_base;
struct offload;

#define OFFLOAD_THREADS 2     /* calls that wait at once; more queue */
#define OFFLOAD_QUEUE_MAX 256 /* jobs in flight: more are refused (-EBUSY) */

struct offload_job {
    void (*work)(struct offload_job *j); /* on a pool thread */
    void (*done)(struct offload_job *j); /* on base's loop (or at offload_free): frees j */
    struct event_base *base;
    /* the offload's own */
    struct offload *o;
    TAILQ_ENTRY(offload_job) link;
    int running;                         /* under o->mu: in a thread's work now */
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
    int ready;
};

/* Starts the threads (after a daemon's fork: threads do not survive it).
 * 0 or -errno. */
int offload_start(struct offload *o);
/* Queues j (work, done and base set). 0, -EBUSY (OFFLOAD_QUEUE_MAX in
 * flight) or -ESHUTDOWN; j stays the caller's when refused. */
int offload_submit(struct offload *o, struct offload_job *j);
/* Once the loops have ended, before they are freed: no thread touches a
 * loop from now on; waits a few seconds for works under way (one stuck in
 * a hung daemon is left behind, with the process). */
void offload_stop(struct offload *o);
/* After the loops and the jobs' owners are freed: calls done of every job
 * left (a work still stuck excepted), frees the rest. */
void offload_free(struct offload *o);

#endif
