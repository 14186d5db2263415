/* Unit tests for src/gateway/body.c: how much of a buffer belongs to the body
 * in flight, for each framing, fed in pieces as a socket would deliver them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>

#include "body.h"

/* Feeds text in pieces of step bytes; returns the body bytes consumed in
 * total (draining each span as conn does), *done when the body ended, -1 on
 * a framing error. What follows the body stays in the buffer. */
static ssize_t feed(struct evbuffer *b, enum http1_body kind, uint64_t len, const char *text,
                    size_t step, int *done)
{
    struct http1_chunked ch;
    uint64_t left = len;
    size_t n = strlen(text), off = 0, total = 0;
    http1_chunked_init(&ch, 1024);
    *done = 0;
    while (!*done && off < n) {
        size_t k = n - off < step ? n - off : step;
        evbuffer_add(b, text + off, k);
        off += k;
        ssize_t r = body_span(b, kind, &left, &ch, done);
        if (r < 0)
            return -1;
        evbuffer_drain(b, (size_t)r);
        total += (size_t)r;
    }
    evbuffer_add(b, text + off, n - off); /* the rest, untouched */
    return (ssize_t)total;
}

static void test_none_is_done_at_once(void **state)
{
    struct evbuffer *b = evbuffer_new();
    int done;
    uint64_t left = 0;
    struct http1_chunked ch;
    http1_chunked_init(&ch, 1024);
    evbuffer_add(b, "GET / HTTP/1.1\r\n", 16);
    assert_int_equal(body_span(b, HTTP1_BODY_NONE, &left, &ch, &done), 0);
    assert_true(done);
    assert_int_equal(evbuffer_get_length(b), 16);
    evbuffer_free(b);
}

static void test_length_stops_at_its_end(void **state)
{
    for (size_t step = 1; step <= 16; step++) {
        struct evbuffer *b = evbuffer_new();
        int done;
        assert_int_equal(feed(b, HTTP1_BODY_LENGTH, 10, "0123456789GET /next", step, &done), 10);
        assert_true(done);
        char rest[16] = {0};
        evbuffer_remove(b, rest, sizeof(rest) - 1);
        assert_string_equal(rest, "GET /next");
        evbuffer_free(b);
    }
}

static void test_length_not_done_while_short(void **state)
{
    struct evbuffer *b = evbuffer_new();
    int done;
    assert_int_equal(feed(b, HTTP1_BODY_LENGTH, 100, "only forty bytes of a hundred......", 7,
                          &done), 35);
    assert_false(done);
    evbuffer_free(b);
}

static void test_eof_takes_everything(void **state)
{
    struct evbuffer *b = evbuffer_new();
    int done;
    assert_int_equal(feed(b, HTTP1_BODY_EOF, 0, "all of it, until the close", 5, &done), 26);
    assert_false(done); /* only the close ends it */
    evbuffer_free(b);
}

static void test_chunked_with_trailer_then_next_request(void **state)
{
    static const char msg[] = "4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
    for (size_t step = 1; step <= sizeof(msg); step++) {
        struct evbuffer *b = evbuffer_new();
        int done;
        char text[256];
        snprintf(text, sizeof(text), "%sGET /next HTTP/1.1\r\n", msg);
        assert_int_equal(feed(b, HTTP1_BODY_CHUNKED, 0, text, step, &done),
                         (ssize_t)(sizeof(msg) - 1));
        assert_true(done);
        assert_int_equal(evbuffer_get_length(b), strlen("GET /next HTTP/1.1\r\n"));
        evbuffer_free(b);
    }
}

static void test_chunked_malformed(void **state)
{
    static const char *bad[] = {"zz\r\n", "4\r\nWikiXX", "-1\r\n", "4\r\nWiki\r\n0\r\nno-colon\r\n\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct evbuffer *b = evbuffer_new();
        int done;
        assert_int_equal(feed(b, HTTP1_BODY_CHUNKED, 0, bad[i], 64, &done), -1);
        evbuffer_free(b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_none_is_done_at_once),
        cmocka_unit_test(test_length_stops_at_its_end),
        cmocka_unit_test(test_length_not_done_while_short),
        cmocka_unit_test(test_eof_takes_everything),
        cmocka_unit_test(test_chunked_with_trailer_then_next_request),
        cmocka_unit_test(test_chunked_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
