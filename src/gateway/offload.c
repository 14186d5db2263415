/* offload — see offload.h. */
#include "offload.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "log.h"

#define STOP_WAIT_SECS 3 /* offload_stop waits this long for works under way */

/* On the job's loop: out of the books, then its done. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    struct offload_job *j = arg;
    struct offload *o = j->o;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&o->mu);
    TAILQ_REMOVE(&o->flight, j, link);
    o->count--;
    pthread_mutex_unlock(&o->mu);
    j->done(j);
}

static void *pool_main(void *arg)
{
    struct offload *o = arg;
    pthread_mutex_lock(&o->mu);
    while (!o->stop) {
        struct offload_job *j = TAILQ_FIRST(&o->queue);
        if (!j) {
            pthread_cond_wait(&o->cond, &o->mu);
            continue;
        }
        TAILQ_REMOVE(&o->queue, j, link);
        TAILQ_INSERT_TAIL(&o->flight, j, link);
        j->running = 1;
        o->running++;
        pthread_mutex_unlock(&o->mu);
        if (!atomic_load(&j->cancelled))
            j->work(j);
        pthread_mutex_lock(&o->mu);
        j->running = 0;
        o->running--;
        struct timeval now = {0, 0};
        /* Stopping: its loop has ended (offload_free calls done). */
        if (!o->stop && event_base_once(j->base, -1, EV_TIMEOUT, on_done, j, &now) < 0)
            log_err("offload: cannot hand a job back to its loop (left until the end)");
        pthread_cond_broadcast(&o->cond);
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

int offload_start(struct offload *o)
{
    memset(o, 0, sizeof(*o));
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cond, NULL);
    TAILQ_INIT(&o->queue);
    TAILQ_INIT(&o->flight);
    o->ready = 1;
    /* No signal of the daemon's lands here (it would interrupt munged's or
     * NSS's calls): the threads start with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = 0;
    for (; o->nthreads < OFFLOAD_THREADS && rc == 0; o->nthreads++)
        rc = pthread_create(&o->threads[o->nthreads], NULL, pool_main, o);
    if (rc != 0)
        o->nthreads--;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return -rc;
}

int offload_submit(struct offload *o, struct offload_job *j, unsigned limit)
{
    int rc = 0;
    pthread_mutex_lock(&o->mu);
    if (o->stop || o->nthreads == 0) {
        rc = -ESHUTDOWN;
    } else if (o->count >= limit || o->count >= OFFLOAD_QUEUE_MAX) {
        rc = -EBUSY;
    } else {
        j->o = o;
        j->running = 0;
        atomic_store(&j->cancelled, 0);
        TAILQ_INSERT_TAIL(&o->queue, j, link);
        o->count++;
        pthread_cond_signal(&o->cond);
    }
    pthread_mutex_unlock(&o->mu);
    return rc;
}

void offload_cancel(struct offload_job *j)
{
    atomic_store(&j->cancelled, 1);
}

unsigned offload_stop(struct offload *o)
{
    if (!o->ready || o->stop)
        return o->stuck;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += STOP_WAIT_SECS;
    pthread_mutex_lock(&o->mu);
    o->stop = 1;
    pthread_cond_broadcast(&o->cond);
    while (o->running > 0 && pthread_cond_timedwait(&o->cond, &o->mu, &until) == 0)
        ;
    unsigned stuck = o->stuck = o->running;
    pthread_mutex_unlock(&o->mu);
    if (stuck) {
        for (unsigned i = 0; i < o->nthreads; i++)
            pthread_detach(o->threads[i]);
    } else {
        for (unsigned i = 0; i < o->nthreads; i++)
            pthread_join(o->threads[i], NULL);
    }
    o->nthreads = 0;
    return stuck;
}

void offload_free(struct offload *o)
{
    if (!o->ready)
        return;
    struct offload_list left;
    struct offload_list *from[2] = {&o->queue, &o->flight};
    struct offload_job *j, *next;
    TAILQ_INIT(&left);
    pthread_mutex_lock(&o->mu);
    for (int l = 0; l < 2; l++)
        for (j = TAILQ_FIRST(from[l]); j; j = next) {
            next = TAILQ_NEXT(j, link);
            if (j->running)
                continue; /* stuck in a hung daemon: its thread still has it */
            TAILQ_REMOVE(from[l], j, link);
            TAILQ_INSERT_TAIL(&left, j, link);
            o->count--;
        }
    int stuck = o->running > 0;
    pthread_mutex_unlock(&o->mu);
    while ((j = TAILQ_FIRST(&left))) {
        TAILQ_REMOVE(&left, j, link);
        j->done(j);
    }
    if (!stuck) { /* else a thread still uses them: left with the process */
        pthread_mutex_destroy(&o->mu);
        pthread_cond_destroy(&o->cond);
    }
    o->ready = 0;
}
