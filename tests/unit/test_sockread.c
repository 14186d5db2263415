/* Unit tests for src/lib/sockread.c: one read callback takes everything a
 * socket holds (libevent 2.1 alone takes 4 KiB), stops at the budget, leaves
 * the end of the stream to the bufferevent, and does nothing with reading off. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "sockread.h"

struct fx {
    struct event_base *base;
    struct bufferevent *bev;
    int peer;
    size_t budget;
    size_t after_first;  /* input length after the first callback's read-ahead */
    int calls, last_rc, eof;
};

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct fx *f = arg;
    f->eof = (what & BEV_EVENT_EOF) != 0;
    event_base_loopbreak(f->base);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct fx *f = arg;
    f->last_rc = sockread_ahead(bev, f->budget);
    if (f->calls++ == 0)
        f->after_first = evbuffer_get_length(bufferevent_get_input(bev));
    event_base_loopbreak(f->base);
}

static void setup_pair(struct fx *f, size_t budget)
{
    int sv[2];
    memset(f, 0, sizeof(*f));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    int big = 4 << 20;
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    f->base = event_base_new();
    f->bev = bufferevent_socket_new(f->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    f->peer = sv[1];
    f->budget = budget;
    bufferevent_setcb(f->bev, on_read, NULL, on_event, f);
    bufferevent_enable(f->bev, EV_READ);
}

static void teardown_pair(struct fx *f)
{
    bufferevent_free(f->bev);
    if (f->peer >= 0)
        close(f->peer);
    event_base_free(f->base);
}

static size_t put(int fd, size_t n)
{
    static char block[65536];
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, block, n - done < sizeof(block) ? n - done : sizeof(block));
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    return done;
}

static void test_one_wakeup_takes_what_is_there(void **state)
{
    struct fx f;
    setup_pair(&f, 1 << 20);
    size_t sent = put(f.peer, 200000);
    assert_true(sent > 100000);
    event_base_dispatch(f.base);
    assert_int_equal(f.calls, 1);
    assert_int_equal(f.last_rc, 0);
    assert_int_equal(f.after_first, sent); /* not 4 KiB */
    teardown_pair(&f);
}

static void test_budget_is_a_ceiling(void **state)
{
    struct fx f;
    setup_pair(&f, 50000);
    assert_int_equal(put(f.peer, 200000), 200000);
    event_base_dispatch(f.base);
    assert_int_equal(f.after_first, 50000);
    teardown_pair(&f);
}

static void test_end_is_left_to_the_bufferevent(void **state)
{
    struct fx f;
    setup_pair(&f, 1 << 20);
    assert_int_equal(put(f.peer, 10000), 10000);
    close(f.peer);
    f.peer = -1;
    event_base_dispatch(f.base);
    assert_int_equal(f.after_first, 10000); /* every byte before the end */
    assert_false(f.eof);
    assert_true(f.last_rc == 0 || f.last_rc == 1);
    event_base_dispatch(f.base); /* the end: reported once, by the bufferevent */
    assert_true(f.eof);
    assert_int_equal(evbuffer_get_length(bufferevent_get_input(f.bev)), 10000);
    teardown_pair(&f);
}

static void test_a_short_read_costs_no_extra_syscall(void **state)
{
    /* Less than libevent's 4 KiB came in: the socket was drained, so the
     * read-ahead does not ask again (it would only get EAGAIN). Bytes that
     * arrive afterwards wait for the next wakeup. */
    struct fx f;
    setup_pair(&f, 1 << 20);
    assert_int_equal(put(f.peer, 1000), 1000);
    event_base_loop(f.base, EVLOOP_ONCE);
    assert_int_equal(f.calls, 1);
    assert_int_equal(f.after_first, 1000);
    assert_int_equal(put(f.peer, 1000), 1000);
    assert_int_equal(sockread_ahead(f.bev, 1 << 20), 0);
    assert_int_equal(evbuffer_get_length(bufferevent_get_input(f.bev)), 1000);
    teardown_pair(&f);
}

static void test_nothing_when_reading_is_off(void **state)
{
    struct fx f;
    setup_pair(&f, 1 << 20);
    assert_int_equal(put(f.peer, 10000), 10000);
    bufferevent_disable(f.bev, EV_READ);
    assert_int_equal(sockread_ahead(f.bev, 1 << 20), 0);
    assert_int_equal(evbuffer_get_length(bufferevent_get_input(f.bev)), 0);
    teardown_pair(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_wakeup_takes_what_is_there),
        cmocka_unit_test(test_budget_is_a_ceiling),
        cmocka_unit_test(test_end_is_left_to_the_bufferevent),
        cmocka_unit_test(test_a_short_read_costs_no_extra_syscall),
        cmocka_unit_test(test_nothing_when_reading_is_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
