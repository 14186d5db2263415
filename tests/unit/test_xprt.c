/* Unit tests for the in-memory link of src/gateway/xprt.c (xprt_pair): both
 * ends behave as the two ends of a socket, as conn and the tunnel expect of a
 * socketpair: bytes flow both ways, a close-write is an EOF after the bytes
 * written, a close is an EOF when nothing is left unread and a reset when
 * something is (either way), and the survivor learns that a write has no
 * reader any more. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "xprt.h"

struct end {
    struct evbuffer *got; /* what its read callback took */
    short events;         /* what its event callback saw */
};

struct fx {
    struct event_base *base;
    struct bufferevent *a, *b;
    struct end ea, eb;
};

static void on_read(struct bufferevent *bev, void *arg)
{
    struct end *e = arg;
    evbuffer_add_buffer(e->got, bufferevent_get_input(bev));
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct end *e = arg;
    e->events |= what;
}

static void setup(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    assert_non_null(f->base);
    struct bufferevent *ends[2];
    assert_int_equal(xprt_pair(f->base, ends), 0);
    f->a = ends[0];
    f->b = ends[1];
    f->ea.got = evbuffer_new();
    f->eb.got = evbuffer_new();
    bufferevent_setcb(f->a, on_read, NULL, on_event, &f->ea);
    bufferevent_setcb(f->b, on_read, NULL, on_event, &f->eb);
    bufferevent_enable(f->a, EV_READ | EV_WRITE);
    bufferevent_enable(f->b, EV_READ | EV_WRITE);
}

static void run(struct fx *f)
{
    /* Pair callbacks are deferred: a few turns of the loop deliver them all. */
    for (int i = 0; i < 4; i++)
        event_base_loop(f->base, EVLOOP_NONBLOCK);
}

static void teardown(struct fx *f)
{
    if (f->a)
        xprt_free(f->a);
    if (f->b)
        xprt_free(f->b);
    run(f);
    evbuffer_free(f->ea.got);
    evbuffer_free(f->eb.got);
    event_base_free(f->base);
}

static void test_bytes_flow_both_ways_without_a_socket(void **state)
{
    struct fx f;
    setup(&f);
    assert_true(bufferevent_getfd(f.a) < 0);
    /* Read-ahead has no socket to read: a no-op, not an error. */
    assert_int_equal(xprt_read_ahead(f.a, 1 << 20), 0);
    xprt_send(f.a, 1, "hello", 5);
    bufferevent_write(f.b, "world!", 6);
    run(&f);
    assert_int_equal(evbuffer_get_length(f.eb.got), 5);
    assert_memory_equal(evbuffer_pullup(f.eb.got, -1), "hello", 5);
    assert_int_equal(evbuffer_get_length(f.ea.got), 6);
    assert_int_equal(xprt_peer_closed(f.a), 0);
    assert_int_equal(f.ea.events | f.eb.events, 0);
    teardown(&f);
}

static void test_close_write_is_eof_after_the_bytes(void **state)
{
    struct fx f;
    setup(&f);
    bufferevent_write(f.a, "last", 4);
    xprt_close_write(f.a);
    run(&f);
    assert_int_equal(evbuffer_get_length(f.eb.got), 4);
    assert_true(f.eb.events & BEV_EVENT_EOF);
    assert_false(f.eb.events & BEV_EVENT_ERROR);
    /* Half-closed only: the other way still works. */
    bufferevent_write(f.b, "reply", 5);
    run(&f);
    assert_int_equal(evbuffer_get_length(f.ea.got), 5);
    teardown(&f);
}

static void test_close_with_nothing_unread_is_eof(void **state)
{
    struct fx f;
    setup(&f);
    bufferevent_write(f.a, "bye", 3);
    xprt_free(f.a);
    f.a = NULL;
    run(&f);
    assert_int_equal(evbuffer_get_length(f.eb.got), 3);
    assert_true(f.eb.events & BEV_EVENT_EOF);
    assert_false(f.eb.events & BEV_EVENT_ERROR);
    /* The survivor's writes have no reader from here on (EPIPE on a socket). */
    assert_int_equal(xprt_peer_closed(f.b), 1);
    teardown(&f);
}

static void test_close_with_bytes_unread_is_a_reset(void **state)
{
    struct fx f;
    setup(&f);
    /* b writes while a does not read: the bytes wait in b's output. */
    bufferevent_disable(f.a, EV_READ);
    bufferevent_write(f.b, "unread", 6);
    run(&f);
    xprt_free(f.a);
    f.a = NULL;
    run(&f);
    assert_true(f.eb.events & BEV_EVENT_ERROR);
    assert_int_equal(xprt_peer_closed(f.b), 1);
    teardown(&f);
}

static void test_close_with_input_left_is_a_reset(void **state)
{
    struct fx f;
    setup(&f);
    /* a's input holds bytes its owner never took. */
    bufferevent_setcb(f.a, NULL, NULL, on_event, &f.ea);
    bufferevent_write(f.b, "pending", 7);
    run(&f);
    assert_int_equal(evbuffer_get_length(bufferevent_get_input(f.a)), 7);
    xprt_free(f.a);
    f.a = NULL;
    run(&f);
    assert_true(f.eb.events & BEV_EVENT_ERROR);
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_flow_both_ways_without_a_socket),
        cmocka_unit_test(test_close_write_is_eof_after_the_bytes),
        cmocka_unit_test(test_close_with_nothing_unread_is_eof),
        cmocka_unit_test(test_close_with_bytes_unread_is_a_reset),
        cmocka_unit_test(test_close_with_input_left_is_a_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
