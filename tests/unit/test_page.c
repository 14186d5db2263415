/* Unit tests for page (the gateway's own responses): each response is parsed
 * back with http1 and its framing checked against the body bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "http1.h"
#include "page.h"

static const struct http1_limits LIM = {8192, 65536, 100};

static struct http1_head H;
static char raw[65536]; /* the whole response, NUL-terminated */
static size_t raw_len;
static const char *body; /* points into raw */
static size_t body_len;

/* Parses the response in b (emptying it); head_request as for http1. */
static void parse(struct evbuffer *b, int head_request)
{
    raw_len = evbuffer_get_length(b);
    assert_true(raw_len > 0 && raw_len < sizeof(raw));
    assert_int_equal(evbuffer_remove(b, raw, raw_len), (int)raw_len);
    raw[raw_len] = '\0';
    size_t scan = 0;
    ssize_t hl = http1_scan_head(raw, raw_len, &LIM, &scan);
    assert_true(hl > 0);
    assert_int_equal(http1_parse_response(raw, (size_t)hl, &LIM, head_request, &H), 0);
    body = raw + hl;
    body_len = raw_len - (size_t)hl;
}

static void error_page(int status, const char *detail, int close, const char *extra, int head)
{
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    page_error(b, status, detail, close, extra, head);
    parse(b, head);
    evbuffer_free(b);
}

static const struct http1_str *field(const char *lname)
{
    static const struct http1_str none = {"", 0};
    int i = http1_find(&H, lname);
    if (i < 0) {
        fail_msg("no %s field in:\n%s", lname, raw);
        return &none;
    }
    return &H.fields[i].value;
}

static int field_is(const char *lname, const char *val)
{
    const struct http1_str *v = field(lname);
    return v->n == strlen(val) && memcmp(v->p, val, v->n) == 0;
}

static int count(const char *lname)
{
    int c = 0;
    for (size_t i = 0; i < H.nfields; i++)
        if (http1_name_is(&H.fields[i].name, lname))
            c++;
    return c;
}

static int body_has(const char *s)
{
    return memmem(body, body_len, s, strlen(s)) != NULL;
}

/* The body matches Content-Length exactly (nothing more, nothing less). */
static void assert_framed(void)
{
    assert_int_equal(count("content-length"), 1);
    assert_int_equal(count("transfer-encoding"), 0);
    assert_int_equal(H.body, body_len ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE);
    if (body_len)
        assert_int_equal(H.content_length, body_len);
}

static void test_reason(void **state)
{
    (void)state;
    assert_string_equal(page_reason(404), "Not Found");
    assert_string_equal(page_reason(403), "Forbidden");
    assert_string_equal(page_reason(502), "Bad Gateway");
    assert_string_equal(page_reason(503), "Service Unavailable");
    assert_string_equal(page_reason(303), "See Other");
    assert_string_equal(page_reason(599), "Error");
    assert_string_equal(page_reason(0), "Error");
}

static void test_error_statuses(void **state)
{
    (void)state;
    static const int st[] = {400, 403, 404, 405, 408, 413, 414, 417, 421, 431,
                             500, 501, 502, 503, 504, 505, 418, 599};
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
        error_page(st[i], NULL, 0, NULL, 0);
        assert_int_equal(H.status, st[i]);
        assert_int_equal(H.minor, 1);
        assert_true(H.reason.n == strlen(page_reason(st[i])) &&
                    memcmp(H.reason.p, page_reason(st[i]), H.reason.n) == 0);
        assert_framed();
        assert_true(body_len > 0);
        char title[64];
        snprintf(title, sizeof(title), "%d %s", st[i], page_reason(st[i]));
        assert_true(body_has(title));
        assert_true(field_is("content-type", "text/html; charset=utf-8"));
        assert_true(field_is("cache-control", "no-store"));
        assert_true(field_is("x-content-type-options", "nosniff"));
        assert_true(field_is("x-frame-options", "DENY"));
        assert_int_equal(count("content-security-policy"), 1);
        assert_int_equal(count("connection"), 0);
        assert_false(H.flags & HTTP1_F_CLOSE);
        assert_false(body_has("<script"));
    }
}

static void test_default_sentences(void **state)
{
    (void)state;
    error_page(404, NULL, 0, NULL, 0);
    assert_true(body_has("There is no app at this address"));
    error_page(502, NULL, 0, NULL, 0);
    assert_true(body_has("not reachable"));
    /* 503 asks the browser to try again; others do not */
    error_page(503, NULL, 0, NULL, 0);
    assert_true(body_has("http-equiv=\"refresh\""));
    error_page(502, NULL, 0, NULL, 0);
    assert_false(body_has("refresh"));
    /* a detail replaces the default sentence */
    error_page(404, "No such page here.", 0, NULL, 0);
    assert_true(body_has("No such page here."));
    assert_false(body_has("There is no app at this address"));
}

static void test_close(void **state)
{
    (void)state;
    error_page(400, NULL, 1, NULL, 0);
    assert_int_equal(count("connection"), 1);
    assert_true(field_is("connection", "close"));
    assert_true(H.flags & HTTP1_F_CLOSE);
    assert_framed();
}

static void test_escaping(void **state)
{
    (void)state;
    error_page(403, "<script>alert(1)</script> & \"q\" 'x' <img src=x onerror=y>", 0, NULL, 0);
    assert_framed();
    assert_false(body_has("<script>"));
    assert_false(body_has("<img"));
    assert_true(body_has("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot; &#39;x&#39;"));

    /* control bytes (CR LF, ESC, DEL) never reach the page */
    error_page(400, "a\r\nSet-Cookie: x=1\x1b[0m\x7f" "b", 0, NULL, 0);
    assert_framed();
    assert_int_equal(count("set-cookie"), 0);
    assert_true(body_has("aSet-Cookie: x=1[0mb"));
    for (size_t i = 0; i < body_len; i++)
        assert_true(body[i] == '\n' || ((unsigned char)body[i] >= 0x20 && body[i] != 0x7f));

    /* UTF-8 passes through */
    error_page(404, "caf\xc3\xa9", 0, NULL, 0);
    assert_true(body_has("caf\xc3\xa9"));
}

static void test_long_detail(void **state)
{
    (void)state;
    static char d[5001];
    memset(d, '<', 5000);
    d[5000] = '\0';
    error_page(502, d, 1, NULL, 0);
    assert_int_equal(H.status, 502);
    assert_framed();
    assert_false(body_has("<<"));
    assert_true(body_has("</html>")); /* cut in the detail, never in the markup */
}

static void test_extra_fields(void **state)
{
    (void)state;
    error_page(405, "A link is redeemed with GET.", 0, "Allow: GET\r\nX-Extra: 1\r\n", 0);
    assert_int_equal(H.status, 405);
    assert_true(field_is("allow", "GET"));
    assert_true(field_is("x-extra", "1"));
    assert_framed();
}

static void test_head_only(void **state)
{
    (void)state;
    static char get_head[8192];
    error_page(404, "gone <b>", 1, "Allow: GET\r\n", 0);
    size_t get_body = body_len;
    size_t hl = raw_len - body_len;
    assert_true(hl < sizeof(get_head));
    memcpy(get_head, raw, hl);
    assert_true(get_body > 0);

    error_page(404, "gone <b>", 1, "Allow: GET\r\n", 1);
    assert_int_equal(body_len, 0);
    assert_int_equal(H.status, 404);
    /* the same head, announcing the GET body's length */
    assert_int_equal(raw_len, hl);
    assert_memory_equal(raw, get_head, hl);
    char cl[32];
    snprintf(cl, sizeof(cl), "%zu", get_body);
    assert_true(field_is("content-length", cl));
}

static void test_send(void **state)
{
    (void)state;
    static const char json[] = "{\"ok\":true}";
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    page_send(b, 200, "application/json", json, sizeof(json) - 1, 0, NULL, 0);
    parse(b, 0);
    assert_int_equal(H.status, 200);
    assert_true(field_is("content-type", "application/json"));
    assert_framed();
    assert_int_equal(body_len, sizeof(json) - 1);
    assert_memory_equal(body, json, body_len);

    page_send(b, 200, "application/json", json, sizeof(json) - 1, 1, NULL, 1);
    parse(b, 1);
    assert_int_equal(body_len, 0);
    assert_true(field_is("content-length", "11"));
    assert_true(H.flags & HTTP1_F_CLOSE);

    /* empty body */
    page_send(b, 200, "text/plain", "", 0, 0, NULL, 0);
    parse(b, 0);
    assert_true(field_is("content-length", "0"));
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(body_len, 0);
    evbuffer_free(b);
}

static void test_redirect(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    page_redirect(b, "/notebooks/a.ipynb", 0,
                  "Set-Cookie: __Host-jobgate=v; Path=/; Secure; HttpOnly; SameSite=Lax\r\n");
    parse(b, 0);
    assert_int_equal(H.status, 303);
    assert_true(H.reason.n == 9 && memcmp(H.reason.p, "See Other", 9) == 0);
    assert_true(field_is("location", "/notebooks/a.ipynb"));
    assert_int_equal(count("location"), 1);
    assert_true(field_is("set-cookie", "__Host-jobgate=v; Path=/; Secure; HttpOnly; SameSite=Lax"));
    assert_true(field_is("content-length", "0"));
    assert_true(field_is("cache-control", "no-store"));
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(body_len, 0);
    assert_int_equal(count("connection"), 0);

    page_redirect(b, "/", 1, NULL);
    parse(b, 0);
    assert_int_equal(H.status, 303);
    assert_true(field_is("location", "/"));
    assert_true(field_is("connection", "close"));
    assert_true(H.flags & HTTP1_F_CLOSE);
    assert_int_equal(body_len, 0);
    evbuffer_free(b);
}

/* Two responses appended to one buffer stay two well-framed responses. */
static void test_pipelined(void **state)
{
    (void)state;
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    page_error(b, 404, NULL, 0, NULL, 0);
    page_redirect(b, "/x", 0, NULL);
    size_t total = evbuffer_get_length(b);
    parse(b, 0); /* takes both; H is the first */
    assert_int_equal(raw_len, total);
    size_t first = (size_t)(body - raw) + (size_t)H.content_length;
    assert_true(first < raw_len);
    assert_true(strncmp(raw + first, "HTTP/1.1 303 ", 13) == 0);
    evbuffer_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reason),
        cmocka_unit_test(test_error_statuses),
        cmocka_unit_test(test_default_sentences),
        cmocka_unit_test(test_close),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_long_detail),
        cmocka_unit_test(test_extra_fields),
        cmocka_unit_test(test_head_only),
        cmocka_unit_test(test_send),
        cmocka_unit_test(test_redirect),
        cmocka_unit_test(test_pipelined),
    };
    return cmocka_run_group_tests_name("page", tests, NULL, NULL);
}
