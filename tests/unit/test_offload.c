/* Unit tests for offload: work off the loop, done back on it, bounded, and
 * every job handed back to its done, also the ones left at the end. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "offload.h"

struct tjob {
    struct offload_job oj;
    pthread_t worked_on;
    pthread_t done_on;
    int *dones;
    int block;               /* its work waits until *release */
    volatile int *release;
    struct event_base *stop; /* done ends this loop once dones reach want */
    int want;
};

static void work(struct offload_job *oj)
{
    struct tjob *j = (struct tjob *)oj;
    j->worked_on = pthread_self();
    while (j->block && !*j->release)
        usleep(1000);
}

static pthread_t done_thread;

static void done(struct offload_job *oj)
{
    struct tjob *j = (struct tjob *)oj;
    done_thread = pthread_self();
    j->done_on = pthread_self();
    if (++*j->dones >= j->want && j->stop)
        event_base_loopbreak(j->stop);
    free(j);
}

static struct tjob *new_job(struct event_base *base, int *dones, int want)
{
    struct tjob *j = calloc(1, sizeof(*j));
    j->oj.work = work;
    j->oj.done = done;
    j->oj.base = base;
    j->dones = dones;
    j->stop = base;
    j->want = want;
    return j;
}

static void test_work_off_the_loop_done_on_it(void **state)
{
    (void)state;
    struct offload o;
    struct event_base *base = event_base_new();
    int dones = 0;
    assert_int_equal(offload_start(&o), 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(offload_submit(&o, &new_job(base, &dones, 10)->oj, OFFLOAD_QUEUE_MAX), 0);
    struct timeval limit = {10, 0};
    event_base_loopexit(base, &limit);
    event_base_dispatch(base);
    assert_int_equal(dones, 10);
    assert_true(pthread_equal(done_thread, pthread_self()));
    offload_stop(&o);
    offload_free(&o);
    event_base_free(base);
}

static void test_bounded_and_left_jobs_done_at_the_end(void **state)
{
    (void)state;
    struct offload o;
    struct event_base *base = event_base_new();
    volatile int release = 0;
    int dones = 0, n = 0;
    assert_int_equal(offload_start(&o), 0);
    for (;; n++) {
        struct tjob *j = new_job(base, &dones, 1 << 30);
        j->block = 1;
        j->release = &release;
        int rc = offload_submit(&o, &j->oj, OFFLOAD_QUEUE_MAX);
        if (rc < 0) {
            assert_int_equal(rc, -EBUSY);
            free(j);
            break;
        }
    }
    assert_int_equal(n, OFFLOAD_QUEUE_MAX);
    release = 1;
    offload_stop(&o); /* no loop ran: the works' dones were never posted */
    struct tjob *late = new_job(base, &dones, 1);
    assert_int_equal(offload_submit(&o, &late->oj, OFFLOAD_QUEUE_MAX), -ESHUTDOWN);
    free(late);
    event_base_free(base); /* drops what was posted to it */
    offload_free(&o);      /* ... whose jobs go to their done here */
    assert_int_equal(dones, OFFLOAD_QUEUE_MAX);
}

int main(void)
{
    evthread_use_pthreads();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_work_off_the_loop_done_on_it),
        cmocka_unit_test(test_bounded_and_left_jobs_done_at_the_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
