/* Unit tests for src/lib/tunnel_proto.c: the line splitter's limits, the
 * message codec and the session's settings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tunnel_proto.h"

/* Feeds buf in chunks of step bytes; collects the lines into out, joined by '|'. */
static int feed(struct tunnel_lines *l, const char *buf, size_t n, size_t step, char *out,
                size_t outlen)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t off = 0; off < n; off += step) {
        const uint8_t *d = (const uint8_t *)buf + off;
        size_t len = n - off < step ? n - off : step;
        while (len > 0) {
            const char *line;
            size_t ll;
            int r = tunnel_lines_next(l, &d, &len, &line, &ll);
            if (r < 0)
                return r;
            if (r == 0) {
                assert_int_equal(len, 0);
                break;
            }
            assert_true(o + ll + 2 < outlen);
            memcpy(out + o, line, ll);
            o += ll;
            out[o++] = '|';
            out[o] = '\0';
        }
    }
    return 0;
}

static void test_lines_split(void **state)
{
    (void)state;
    static const char in[] = "{\"a\":1}\n\n{\"b\":2}\npartial";
    char out[128];
    /* Every chunking gives the same lines, empty ones included. */
    for (size_t step = 1; step <= sizeof(in); step++) {
        struct tunnel_lines l = {0};
        assert_int_equal(feed(&l, in, sizeof(in) - 1, step, out, sizeof(out)), 0);
        assert_string_equal(out, "{\"a\":1}||{\"b\":2}|");
        assert_int_equal(l.len, strlen("partial"));
        tunnel_lines_free(&l);
    }
}

static void test_lines_limit(void **state)
{
    (void)state;
    size_t max = TUNNEL_CTL_LINE_MAX;
    char *big = malloc(max + 2);
    char out[64];
    assert_non_null(big);

    /* max - 1 bytes and the newline: the longest line there is. */
    memset(big, 'x', max - 1);
    big[max - 1] = '\n';
    for (size_t step = 1000; step <= max; step += max - 1000) {
        struct tunnel_lines l = {0};
        const uint8_t *d = (const uint8_t *)big;
        size_t len = max, got = 0;
        const char *line = NULL;
        size_t ll = 0;
        while (len > 0) {
            size_t chunk = len < step ? len : step, rest = len - chunk;
            len = chunk;
            int r = tunnel_lines_next(&l, &d, &len, &line, &ll);
            assert_true(r >= 0);
            if (r == 1)
                got++;
            len += rest;
        }
        assert_int_equal(got, 1);
        assert_int_equal(ll, max - 1);
        tunnel_lines_free(&l);
    }

    /* One byte more fails, whether the newline comes or not, in one chunk or many. */
    memset(big, 'x', max);
    big[max] = '\n';
    struct tunnel_lines l = {0};
    assert_int_equal(feed(&l, big, max + 1, max + 1, out, sizeof(out)), -EMSGSIZE);
    tunnel_lines_free(&l);
    assert_int_equal(feed(&l, big, max, 7, out, sizeof(out)), -EMSGSIZE);
    tunnel_lines_free(&l);
    /* The buffer never grows past the limit. */
    assert_int_equal(feed(&l, big, max - 1, 4096, out, sizeof(out)), 0);
    assert_true(l.cap <= max);
    tunnel_lines_free(&l);
    free(big);
}

static void test_encode(void **state)
{
    (void)state;
    char *line;
    size_t len;
    assert_int_equal(tunnel_msg_encode(json_pack("{s:s,s:s}", "type", "hello", "x", "a\nb"),
                                       &line, &len),
                     0);
    assert_string_equal(line, "{\"type\":\"hello\",\"x\":\"a\\nb\"}\n");
    assert_int_equal(len, strlen(line));
    free(line);

    assert_int_equal(tunnel_msg_encode(NULL, &line, &len), -ENOMEM);
    assert_null(line);

    /* A line of exactly the limit passes; one byte more does not. */
    size_t overhead = strlen("{\"s\":\"\"}\n");
    char *s = malloc(TUNNEL_CTL_LINE_MAX);
    assert_non_null(s);
    memset(s, 'y', TUNNEL_CTL_LINE_MAX - overhead);
    s[TUNNEL_CTL_LINE_MAX - overhead] = '\0';
    assert_int_equal(tunnel_msg_encode(json_pack("{s:s}", "s", s), &line, &len), 0);
    assert_int_equal(len, TUNNEL_CTL_LINE_MAX);
    free(line);
    memset(s, 'y', TUNNEL_CTL_LINE_MAX - overhead + 1);
    s[TUNNEL_CTL_LINE_MAX - overhead + 1] = '\0';
    assert_int_equal(tunnel_msg_encode(json_pack("{s:s}", "s", s), &line, &len), -EMSGSIZE);
    assert_null(line);
    free(s);
}

static void test_decode(void **state)
{
    (void)state;
    json_t *m;
    char err[200];
    static const char ok[] = "{\"type\":\"welcome\",\"uid\":7}";
    assert_int_equal(tunnel_msg_decode(ok, sizeof(ok) - 1, &m, err, sizeof(err)), 0);
    assert_string_equal(json_string_value(json_object_get(m, "type")), "welcome");
    json_decref(m);

    static const char dup[] = "{\"type\":\"a\",\"type\":\"b\"}";
    assert_int_equal(tunnel_msg_decode(dup, sizeof(dup) - 1, &m, err, sizeof(err)), -EPROTO);
    assert_null(m);
    assert_true(err[0] != '\0');

    assert_int_equal(tunnel_msg_decode("[1]", 3, &m, err, sizeof(err)), -EPROTO);
    assert_string_equal(err, "not an object");
    assert_int_equal(tunnel_msg_decode("{\"a\":", 5, &m, err, sizeof(err)), -EPROTO);
    /* Bytes after the line's end are not part of it. */
    assert_int_equal(tunnel_msg_decode("{}garbage", 2, &m, err, sizeof(err)), 0);
    json_decref(m);
}

static void test_session(void **state)
{
    (void)state;
    static const struct tunnel_session_cbs none = {0};
    nghttp2_session *s;
    assert_int_equal(tunnel_session_new(&s, TUNNEL_ROLE_AGENT, &none, NULL), 0);
    assert_int_equal(nghttp2_session_get_local_settings(s, NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE),
                     65535); /* not acknowledged yet: queued */
    assert_int_equal(nghttp2_session_get_local_window_size(s), TUNNEL_CONN_WINDOW);
    assert_true(nghttp2_session_want_write(s));
    nghttp2_session_del(s);
    assert_int_equal(tunnel_session_new(&s, TUNNEL_ROLE_GATEWAY, &none, NULL), 0);
    assert_int_equal(nghttp2_session_get_local_window_size(s), TUNNEL_CONN_WINDOW);
    nghttp2_session_del(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_split),
        cmocka_unit_test(test_lines_limit),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_session),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
