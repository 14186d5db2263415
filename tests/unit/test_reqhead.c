/* Unit tests for reqhead: alias from Host, the gateway's cookie, the safe
 * `next` path, log paths, hop-by-hop rules and the forwarded heads (each
 * forwarded head is parsed back with http1 and inspected). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "http1.h"
#include "reqhead.h"

static const struct http1_limits LIM = {8192, 65536, 100};

/* Heads are large (fields array): keep them out of the stack. */
static struct http1_head H; /* the incoming head */
static struct http1_head F; /* the forwarded head, parsed back */
static char fwd[65536];     /* bytes of the forwarded head (F points into it) */
static size_t fwd_len;

static struct http1_str str(const char *s)
{
    struct http1_str r = {s, strlen(s)};
    return r;
}

/* ---- helpers: parsing --------------------------------------------------- */

static void parse_req(const char *s, struct http1_head *h)
{
    size_t scan = 0, n = strlen(s);
    ssize_t r = http1_scan_head(s, n, &LIM, &scan);
    assert_int_equal(r, (ssize_t)n); /* test inputs are exactly one head */
    assert_int_equal(http1_parse_request(s, (size_t)r, &LIM, h), 0);
}

static void parse_resp(const char *s, int head_request, struct http1_head *h)
{
    size_t scan = 0, n = strlen(s);
    ssize_t r = http1_scan_head(s, n, &LIM, &scan);
    assert_int_equal(r, (ssize_t)n);
    assert_int_equal(http1_parse_response(s, (size_t)r, &LIM, head_request, h), 0);
}

/* Copies an evbuffer into fwd (NUL-terminated) and empties it. */
static void take(struct evbuffer *b)
{
    fwd_len = evbuffer_get_length(b);
    assert_true(fwd_len < sizeof(fwd));
    assert_int_equal(evbuffer_remove(b, fwd, fwd_len), (int)fwd_len);
    fwd[fwd_len] = '\0';
}

/* Parses req into H, forwards it, parses the result back into F. */
static void forward_req(const char *req, const char *ip)
{
    parse_req(req, &H);
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    reqhead_forward_request(b, &H, ip);
    take(b);
    evbuffer_free(b);
    parse_req(fwd, &F);
}

static void forward_resp(const char *resp, int head_request, int close)
{
    parse_resp(resp, head_request, &H);
    struct evbuffer *b = evbuffer_new();
    assert_non_null(b);
    reqhead_forward_response(b, &H, close);
    take(b);
    evbuffer_free(b);
    parse_resp(fwd, head_request, &F);
}

/* ---- helpers: fields ------------------------------------------------------ */

static int count_fields(const struct http1_head *h, const char *lname)
{
    int c = 0;
    for (size_t i = 0; i < h->nfields; i++)
        if (http1_name_is(&h->fields[i].name, lname))
            c++;
    return c;
}

/* Asserts exactly one field called lname, with value val. */
static void assert_one_field(const struct http1_head *h, const char *lname, const char *val)
{
    int idx = -1;
    for (size_t i = 0; i < h->nfields; i++) {
        if (http1_name_is(&h->fields[i].name, lname)) {
            if (idx >= 0)
                fail_msg("field %s appears more than once in:\n%s", lname, fwd);
            idx = (int)i;
        }
    }
    if (idx < 0) {
        fail_msg("field %s missing in:\n%s", lname, fwd);
        return;
    }
    const struct http1_str *v = &h->fields[idx].value;
    if (v->n != strlen(val) || memcmp(v->p, val, v->n) != 0)
        fail_msg("field %s is '%.*s', expected '%s'", lname, (int)v->n, v->p, val);
}

static void assert_no_field(const struct http1_head *h, const char *lname)
{
    if (count_fields(h, lname) != 0)
        fail_msg("field %s must not be forwarded:\n%s", lname, fwd);
}

static int str_is(const struct http1_str *s, const char *lit)
{
    return s->n == strlen(lit) && memcmp(s->p, lit, s->n) == 0;
}

/* Case-insensitive search in fwd. */
static int fwd_has(const char *needle)
{
    return strcasestr(fwd, needle) != NULL;
}

/* ---- reqhead_alias ------------------------------------------------------- */

static int alias_of(const char *host, const char *domain, char *out, size_t outlen)
{
    struct http1_str h = str(host);
    return reqhead_alias(&h, domain, out, outlen);
}

static void expect_alias(const char *host, const char *domain, const char *want)
{
    char out[128];
    memset(out, 'Z', sizeof(out));
    int r = alias_of(host, domain, out, sizeof(out));
    if (r != 0)
        fail_msg("host '%s' (domain %s): got %d, expected alias %s", host, domain, r, want);
    assert_string_equal(out, want);
}

static void expect_no_alias(const char *host, const char *domain)
{
    char out[128];
    int r = alias_of(host, domain, out, sizeof(out));
    if (r != -ENOENT)
        fail_msg("host '%s' (domain %s): got %d, expected -ENOENT", host, domain, r);
}

static void test_alias_accepts(void **state)
{
    (void)state;
    expect_alias("brisk-otter-canal.localhost:8443", "localhost", "brisk-otter-canal");
    expect_alias("brisk-otter-canal.localhost", "localhost", "brisk-otter-canal");
    expect_alias("Brisk-OTTER-Canal.LocalHost:8443", "localhost", "brisk-otter-canal");
    expect_alias("brisk-otter-canal.localhost.", "localhost", "brisk-otter-canal");
    expect_alias("brisk-otter-canal.localhost.:443", "localhost", "brisk-otter-canal");
    expect_alias("app-2x7q.apps.example.org", "apps.example.org", "app-2x7q");
    expect_alias("app-2x7q.APPS.Example.org:1", "apps.example.org", "app-2x7q");
    /* 63 characters: the longest DNS label. */
    char host[128], want[64];
    memset(want, 'a', 63);
    want[63] = '\0';
    snprintf(host, sizeof(host), "%s.localhost", want);
    expect_alias(host, "localhost", want);
}

static void test_alias_refuses(void **state)
{
    (void)state;
    expect_no_alias("evil.com", "localhost");
    expect_no_alias("brisk-otter-canal.example.org", "localhost");
    expect_no_alias("a.b.localhost", "localhost");     /* two labels */
    expect_no_alias(".localhost", "localhost");         /* empty label */
    expect_no_alias("localhost", "localhost");          /* the domain itself */
    expect_no_alias("localhost:8443", "localhost");
    expect_no_alias("[::1]:8443", "localhost");
    expect_no_alias("[::1]", "localhost");
    expect_no_alias("127.0.0.1:8443", "localhost");
    expect_no_alias("brisk-otter-canal.localhost:84a3", "localhost");  /* port with letters */
    expect_no_alias("brisk-otter-canal.localhost:http", "localhost");
    expect_no_alias("brisk-otter-canal.xlocalhost", "localhost");      /* suffix of a longer name */
    expect_no_alias("brisk-otter-canalxlocalhost", "localhost");
    expect_no_alias("brisk-otter-canal.localhost..", "localhost");     /* only one trailing dot */
    expect_no_alias("brisk-otter-canal.localhost.com", "localhost");
    expect_no_alias("-brisk.localhost", "localhost");                  /* not a DNS label */
    expect_no_alias("brisk-.localhost", "localhost");
    expect_no_alias("bri_sk.localhost", "localhost");
    expect_no_alias("", "localhost");

    /* 64 characters: one too many for a label, even with room in out. */
    char host[128], label[65];
    memset(label, 'a', 64);
    label[64] = '\0';
    snprintf(host, sizeof(host), "%s.localhost:8443", label);
    expect_no_alias(host, "localhost");
}

static void test_alias_small_out(void **state)
{
    (void)state;
    char out[8];
    memset(out, 'Z', sizeof(out));
    /* "abcdefgh" needs 9 bytes with its NUL: refused, never cut. */
    assert_int_equal(alias_of("abcdefgh.localhost", "localhost", out, sizeof(out)), -ENOENT);
    assert_int_equal(alias_of("abcdefg.localhost", "localhost", out, sizeof(out)), 0);
    assert_string_equal(out, "abcdefg");
}

/* ---- cookies --------------------------------------------------------------- */

static void test_cookies_find(void **state)
{
    (void)state;
    parse_req("GET / HTTP/1.1\r\n"
              "Host: brisk-otter-canal.localhost\r\n"
              "Cookie: a=1; __Host-jobgate=TOKONE; b=2\r\n"
              "Accept: */*\r\n"
              "Cookie: x__Host-jobgate=NOTOURS;\t__Host-jobgate=TOKTWO\t;__Host-jobgatex=NO\r\n"
              "Cookie: __host-jobgate=WRONGCASE\r\n"
              "\r\n",
              &H);
    struct http1_str v[4];
    assert_int_equal(reqhead_cookies(&H, REQHEAD_COOKIE, v, 4), 2);
    assert_true(str_is(&v[0], "TOKONE"));
    assert_true(str_is(&v[1], "TOKTWO"));

    /* max is respected, first one first */
    struct http1_str one[1];
    assert_int_equal(reqhead_cookies(&H, REQHEAD_COOKIE, one, 1), 1);
    assert_true(str_is(&one[0], "TOKONE"));

    /* several of ours in one field: still no more than max written */
    parse_req("GET / HTTP/1.1\r\nHost: a.localhost\r\n"
              "Cookie: __Host-jobgate=A; __Host-jobgate=B; __Host-jobgate=C\r\n\r\n",
              &H);
    struct http1_str guard = {"guard", 5};
    v[1] = guard;
    v[2] = guard;
    assert_int_equal(reqhead_cookies(&H, REQHEAD_COOKIE, v, 1), 1);
    assert_true(str_is(&v[0], "A"));
    assert_true(str_is(&v[1], "guard"));
    assert_int_equal(reqhead_cookies(&H, REQHEAD_COOKIE, v, 2), 2);
    assert_true(str_is(&v[1], "B"));
    assert_true(str_is(&v[2], "guard"));
    assert_int_equal(reqhead_cookies(&H, REQHEAD_COOKIE, v, 4), 3);

    parse_req("GET / HTTP/1.1\r\nHost: a.localhost\r\nCookie: a=1; b=2\r\n\r\n", &H);
    assert_int_equal(reqhead_cookies(&H, "b", v, 4), 1);
    assert_true(str_is(&v[0], "2"));

    parse_req("GET / HTTP/1.1\r\nHost: a.localhost\r\nCookie: x__Host-jobgate=1\r\n\r\n", &H);
    assert_int_equal(reqhead_cookies(&H, REQHEAD_COOKIE, v, 4), 0);
    parse_req("GET / HTTP/1.1\r\nHost: a.localhost\r\n\r\n", &H);
    assert_int_equal(reqhead_cookies(&H, REQHEAD_COOKIE, v, 4), 0);
}

static int strip(const char *value, char *out, size_t outlen)
{
    struct http1_str v = str(value);
    return reqhead_cookie_strip(&v, REQHEAD_COOKIE, out, outlen);
}

static void expect_strip(const char *value, const char *want)
{
    char out[256];
    int n = strip(value, out, sizeof(out));
    if (n < 0)
        fail_msg("strip '%s' failed", value);
    if ((size_t)n != strlen(want) || memcmp(out, want, (size_t)n) != 0)
        fail_msg("strip '%s' gave '%.*s', expected '%s'", value, n, out, want);
}

static void test_cookie_strip(void **state)
{
    (void)state;
    expect_strip("a=1; __Host-jobgate=T; b=2", "a=1; b=2");
    expect_strip("__Host-jobgate=T; a=1; b=2", "a=1; b=2");
    expect_strip("a=1; b=2; __Host-jobgate=T", "a=1; b=2");
    expect_strip("a=1;__Host-jobgate=T;b=2", "a=1; b=2");
    expect_strip(" a=1 ;\t__Host-jobgate=T ;\tb=2 ; ", "a=1; b=2");
    expect_strip("x__Host-jobgate=1; __Host-jobgate=T; __Host-jobgatex=2",
                 "x__Host-jobgate=1; __Host-jobgatex=2");
    expect_strip("z=3; y=2; x=1", "z=3; y=2; x=1"); /* order kept */
    expect_strip("__Host-jobgate=T; __Host-jobgate=U", "");

    char out[64];
    assert_int_equal(strip("__Host-jobgate=T", out, sizeof(out)), 0);
    assert_int_equal(strip("", out, sizeof(out)), 0);

    /* "a=1; b=2" is 8 bytes: exactly enough is fine, one less is -1. */
    assert_int_equal(strip("a=1; __Host-jobgate=T; b=2", out, 8), 8);
    assert_memory_equal(out, "a=1; b=2", 8);
    char small[16];
    memset(small, 'Z', sizeof(small));
    assert_int_equal(strip("a=1; __Host-jobgate=T; b=2", small, 7), -1);
    for (size_t i = 7; i < sizeof(small); i++)
        assert_int_equal(small[i], 'Z'); /* nothing written past outlen */
    assert_int_equal(strip("abc=1", small, 4), -1);
}

/* ---- reqhead_set_cookie, reqhead_cross_site -------------------------------- */

static void expect_set_cookie(const char *value, const char *want)
{
    char out[256];
    struct http1_str v = str(value);
    int n = reqhead_set_cookie(&v, out, sizeof(out));
    if (!want) {
        if (n >= 0)
            fail_msg("Set-Cookie '%s' kept as '%.*s'", value, n, out);
        return;
    }
    if (n < 0 || (size_t)n != strlen(want) || memcmp(out, want, (size_t)n) != 0)
        fail_msg("Set-Cookie '%s' gave '%.*s', expected '%s'", value, n < 0 ? 0 : n, out, want);
}

static void test_set_cookie_host_only(void **state)
{
    (void)state;
    expect_set_cookie("a=1; Path=/; Secure", "a=1; Path=/; Secure");
    expect_set_cookie("a=1; Domain=apps.example.org; Path=/", "a=1; Path=/");
    expect_set_cookie("a=1;domain=.apps.example.org;HttpOnly", "a=1; HttpOnly");
    expect_set_cookie("a=1; DOMAIN = x; Domain=y; Max-Age=5", "a=1; Max-Age=5");
    expect_set_cookie("a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Domain=x",
                      "a=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT");
    /* A cookie called Domain is a cookie; only the attribute goes. */
    expect_set_cookie("Domain=1; Domain=x", "Domain=1");
    /* The gateway's own cookie, any case, is not the app's to set. */
    expect_set_cookie("__Host-jobgate=T; Path=/; Secure", NULL);
    expect_set_cookie("__host-JOBGATE=T", NULL);
    expect_set_cookie("", NULL);
    char small[4];
    struct http1_str v = str("abcdef=1");
    assert_int_equal(reqhead_set_cookie(&v, small, sizeof(small)), -1);
}

static const char *cross_site_of(const char *req)
{
    parse_req(req, &H);
    return reqhead_cross_site(&H);
}

static void test_cross_site(void **state)
{
    (void)state;
#define HOSTL "Host: alice.apps.test:8443\r\n"
    /* Safe methods pass from anywhere: links keep working. */
    assert_null(cross_site_of("GET / HTTP/1.1\r\n" HOSTL "Sec-Fetch-Site: cross-site\r\n\r\n"));
    assert_null(cross_site_of("HEAD / HTTP/1.1\r\n" HOSTL "Origin: https://bob.apps.test\r\n\r\n"));
    assert_null(cross_site_of("OPTIONS / HTTP/1.1\r\n" HOSTL "Sec-Fetch-Site: same-site\r\n\r\n"));
    /* State-changing from the app's own page, or from no browser at all. */
    assert_null(cross_site_of("POST / HTTP/1.1\r\n" HOSTL "Content-Length: 0\r\n"
                              "Sec-Fetch-Site: same-origin\r\n"
                              "Origin: https://ALICE.apps.test:8443\r\n\r\n"));
    assert_null(cross_site_of("POST / HTTP/1.1\r\n" HOSTL "Content-Length: 0\r\n\r\n"));
    assert_null(cross_site_of("DELETE / HTTP/1.1\r\n" HOSTL "Sec-Fetch-Site: none\r\n\r\n"));
    /* From another app's page or another site. */
    assert_non_null(cross_site_of("POST / HTTP/1.1\r\n" HOSTL "Content-Length: 0\r\n"
                                  "Sec-Fetch-Site: same-site\r\n\r\n"));
    assert_non_null(cross_site_of("PUT / HTTP/1.1\r\n" HOSTL "Content-Length: 0\r\n"
                                  "sec-fetch-site: CROSS-SITE\r\n\r\n"));
    assert_non_null(cross_site_of("POST / HTTP/1.1\r\n" HOSTL "Content-Length: 0\r\n"
                                  "Origin: https://bob.apps.test:8443\r\n\r\n"));
    assert_non_null(cross_site_of("POST / HTTP/1.1\r\n" HOSTL "Content-Length: 0\r\n"
                                  "Origin: null\r\n\r\n"));
    assert_non_null(cross_site_of("POST / HTTP/1.1\r\n" HOSTL "Content-Length: 0\r\n"
                                  "Origin: http://alice.apps.test:8443\r\n\r\n"));
    assert_non_null(cross_site_of("POST / HTTP/1.1\r\n" HOSTL "Content-Length: 0\r\n"
                                  "Origin: https://alice.apps.test:8443.evil\r\n\r\n"));
    /* A WebSocket handshake is a GET that acts: checked as well. */
    assert_non_null(cross_site_of("GET /ws HTTP/1.1\r\n" HOSTL "Connection: Upgrade\r\n"
                                  "Upgrade: websocket\r\nOrigin: https://bob.apps.test:8443\r\n\r\n"));
    assert_null(cross_site_of("GET /ws HTTP/1.1\r\n" HOSTL "Connection: Upgrade\r\n"
                              "Upgrade: websocket\r\nOrigin: https://alice.apps.test:8443\r\n\r\n"));
#undef HOSTL
}

/* ---- reqhead_next ---------------------------------------------------------- */

static int next_of(const char *target, char *out, size_t outlen)
{
    struct http1_str t = str(target);
    memset(out, 'Z', outlen);
    return reqhead_next(&t, out, outlen);
}

static void expect_next(const char *target, const char *want)
{
    char out[256];
    int r = next_of(target, out, sizeof(out));
    if (r != 0)
        fail_msg("next of '%s': got %d, expected '%s'", target, r, want);
    assert_string_equal(out, want);
}

static void expect_next_refused(const char *target)
{
    char out[256];
    int r = next_of(target, out, sizeof(out));
    if (r != -EINVAL || strcmp(out, "/") != 0)
        fail_msg("next of '%s': got %d '%s', expected -EINVAL '/'", target, r, out);
}

static void test_next_accepts(void **state)
{
    (void)state;
    expect_next("/_jobgate/redeem/TOK?next=%2Fnotebooks%2Fa.ipynb", "/notebooks/a.ipynb");
    expect_next("/_jobgate/redeem/TOK?next=/lab/tree", "/lab/tree");
    expect_next("/_jobgate/redeem/TOK?next=/", "/");
    expect_next("/_jobgate/redeem/TOK?a=1&next=/lab&b=2", "/lab");
    expect_next("/_jobgate/redeem/TOK?next=/lab&next=//evil.com", "/lab"); /* first one wins */
    /* The rest of the query belongs to next: still a same-host path. */
    expect_next("/_jobgate/redeem/TOK?next=/x?y=1", "/x?y=1");
    expect_next("/_jobgate/redeem/TOK?next=%2Fx%3Fy%3D1%26z%3D2", "/x?y=1&z=2");
    /* Bytes that are unsafe in a Location field go out percent-encoded again. */
    expect_next("/_jobgate/redeem/TOK?next=/a%20b", "/a%20b");
    expect_next("/_jobgate/redeem/TOK?next=/%C3%A9t%C3%A9", "/%C3%A9t%C3%A9");
    expect_next("/_jobgate/redeem/TOK?next=/%3Cscript%3E%22%7B%7C%7D%5E%60",
                "/%3Cscript%3E%22%7B%7C%7D%5E%60");
    expect_next("/_jobgate/redeem/TOK?next=/a%2fb", "/a/b"); /* lower-case hex */

    /* A raw space (never from the parser, but the function must stay safe). */
    char out[64];
    assert_int_equal(next_of("/_jobgate/redeem/T?next=/a b", out, sizeof(out)), 0);
    assert_string_equal(out, "/a%20b");
}

static void test_next_refuses(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "/_jobgate/redeem/TOK?next=//evil.com",
        "/_jobgate/redeem/TOK?next=/\\evil.com",
        "/_jobgate/redeem/TOK?next=/%5Cevil.com",
        "/_jobgate/redeem/TOK?next=%5C%5Cevil.com",
        "/_jobgate/redeem/TOK?next=https://evil.com",
        "/_jobgate/redeem/TOK?next=https%3A%2F%2Fevil.com",
        "/_jobgate/redeem/TOK?next=%2F%2Fevil.com",
        "/_jobgate/redeem/TOK?next=/%2Fevil.com",
        "/_jobgate/redeem/TOK?next=//",
        "/_jobgate/redeem/TOK?next=/%0d%0aSet-Cookie:x",
        "/_jobgate/redeem/TOK?next=/%0aSet-Cookie:x",
        "/_jobgate/redeem/TOK?next=/%09/evil.com",
        "/_jobgate/redeem/TOK?next=/%00",
        "/_jobgate/redeem/TOK?next=/%7f",
        "/_jobgate/redeem/TOK?next=evil.com",
        "/_jobgate/redeem/TOK?next=javascript:alert(1)",
        "/_jobgate/redeem/TOK?next=",
        "/_jobgate/redeem/TOK?next=+",
        "/_jobgate/redeem/TOK?next=/a+b",
        "/_jobgate/redeem/TOK?next=/%zz",
        "/_jobgate/redeem/TOK?next=/%2",
        "/_jobgate/redeem/TOK?next=/%",
        "/_jobgate/redeem/TOK",
        "/_jobgate/redeem/TOK?",
        "/_jobgate/redeem/TOK?nextx=/a",
        "/_jobgate/redeem/TOK?xnext=/a",
        "/_jobgate/redeem/TOK?NEXT=/a",
        "/_jobgate/redeem/TOK?a=1&b=2",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_next_refused(bad[i]);
}

static void test_next_bounded(void **state)
{
    (void)state;
    char out[8];
    /* "/abcdefgh" does not fit 8 bytes: refused, never cut into another path. */
    assert_int_equal(next_of("/_jobgate/redeem/T?next=/abcdefgh", out, sizeof(out)), -EINVAL);
    assert_string_equal(out, "/");
    assert_int_equal(next_of("/_jobgate/redeem/T?next=/abcdef", out, sizeof(out)), 0);
    assert_string_equal(out, "/abcdef");
    /* An escape that would not fit is refused too. */
    assert_int_equal(next_of("/_jobgate/redeem/T?next=/abcd%20", out, sizeof(out)), -EINVAL);
    assert_string_equal(out, "/");
}

/* The contract is "writes to out (size outlen)": with outlen 1 nothing may be
 * written past out[0]. */
static void test_next_tiny_out(void **state)
{
    (void)state;
    char buf[4] = {'Z', 'Z', 'Z', 'Z'};
    struct http1_str t = str("/_jobgate/redeem/T?next=/lab");
    assert_int_equal(reqhead_next(&t, buf, 1), -EINVAL);
    if (buf[1] != 'Z')
        fail_msg("reqhead_next(outlen=1) wrote out[1] = 0x%02x (past outlen)",
                 (unsigned char)buf[1]);
}

/* ---- reqhead_log_path ------------------------------------------------------ */

static void log_path(const char *target, char *out, size_t outlen)
{
    struct http1_str t = str(target);
    reqhead_log_path(&t, out, outlen);
}

static void test_log_path(void **state)
{
    (void)state;
    char out[128];
    static const char tok[] = "q2vK3xZ0-abcdefghijklmnopqrstuvwxyz_0123456";

    char target[256];
    snprintf(target, sizeof(target), "/_jobgate/redeem/%s?next=%%2Flab", tok);
    log_path(target, out, sizeof(out));
    assert_null(strstr(out, tok));
    assert_null(strstr(out, "q2vK3"));
    assert_null(strchr(out, '?'));
    assert_string_equal(out, "/_jobgate/redeem/[redacted]");

    /* Even a tiny buffer never carries a piece of the token. */
    char small[20];
    log_path(target, small, sizeof(small));
    assert_null(strstr(small, "q2vK"));
    assert_true(strlen(small) < sizeof(small));

    log_path("/lab/tree?token=SECRET&x=1", out, sizeof(out));
    assert_string_equal(out, "/lab/tree");

    log_path("/a\x01" "b\x7f" "c\"d\xff" "e\r\nf g", out, sizeof(out));
    assert_string_equal(out, "/a?b?c?d?e??f?g");

    log_path("/abcdefghij", out, 5);
    assert_string_equal(out, "/abc");

    log_path("/_jobgate/logout", out, sizeof(out));
    assert_string_equal(out, "/_jobgate/logout");

    out[0] = 'Z';
    log_path("/x", out, 0); /* no room: writes nothing */
    assert_int_equal(out[0], 'Z');
}

/* ---- hop-by-hop ------------------------------------------------------------ */

static void test_hop_by_hop(void **state)
{
    (void)state;
    parse_req("GET / HTTP/1.1\r\n"
              "Host: a.localhost\r\n"
              "Connection: keep-alive,\tX-Secret , foo\r\n"
              "\r\n",
              &H);
    static const char *const hop[] = {
        "Connection", "CONNECTION", "keep-alive", "Proxy-Connection", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Proxy-Authorization", "Proxy-Authenticate",
        "x-secret", "X-SECRET", "Foo",
    };
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++) {
        struct http1_str n = str(hop[i]);
        if (!reqhead_hop_by_hop(&H, &n))
            fail_msg("%s must be hop-by-hop", hop[i]);
    }
    static const char *const end2end[] = {
        "Host", "Cookie", "Accept", "X-Sec", "X-Secrets", "fo", "Authorization", "Origin",
        "Sec-WebSocket-Key", "Trailers",
    };
    for (size_t i = 0; i < sizeof(end2end) / sizeof(end2end[0]); i++) {
        struct http1_str n = str(end2end[i]);
        if (reqhead_hop_by_hop(&H, &n))
            fail_msg("%s must not be hop-by-hop", end2end[i]);
    }
}

/* ---- forwarded request ----------------------------------------------------- */

#define HOST "brisk-otter-canal.localhost:8443"

static void test_fwd_req_hop_by_hop(void **state)
{
    (void)state;
    forward_req("GET /lab?x=1 HTTP/1.1\r\n"
                "Host: " HOST "\r\n"
                "Connection: close, X-Secret\r\n"
                "Keep-Alive: timeout=5\r\n"
                "TE: trailers\r\n"
                "Trailer: X-Checksum\r\n"
                "Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
                "Proxy-Connection: keep-alive\r\n"
                "X-Secret: hush\r\n"
                "Upgrade: websocket\r\n" /* not announced in Connection: dropped */
                "Accept: text/html\r\n"
                "X-Keep: yes\r\n"
                "\r\n",
                "192.0.2.7");
    assert_true(strncmp(fwd, "GET /lab?x=1 HTTP/1.1\r\n", 23) == 0);
    assert_true(str_is(&F.method, "GET"));
    assert_true(str_is(&F.target, "/lab?x=1"));
    assert_int_equal(F.minor, 1);
    assert_no_field(&F, "connection");
    assert_no_field(&F, "keep-alive");
    assert_no_field(&F, "te");
    assert_no_field(&F, "trailer");
    assert_no_field(&F, "proxy-authorization");
    assert_no_field(&F, "proxy-connection");
    assert_no_field(&F, "x-secret");
    assert_no_field(&F, "upgrade");
    assert_false(fwd_has("hush"));
    assert_false(fwd_has("dXNlcjpwYXNz"));
    assert_one_field(&F, "accept", "text/html");
    assert_one_field(&F, "x-keep", "yes");
    assert_int_equal(F.body, HTTP1_BODY_NONE);
    assert_no_field(&F, "content-length");
    assert_no_field(&F, "transfer-encoding");
    assert_false(F.flags & HTTP1_F_UPGRADE);
}

static void test_fwd_req_forwarded_fields(void **state)
{
    (void)state;
    forward_req("GET / HTTP/1.1\r\n"
                "X-Forwarded-For: 6.6.6.6\r\n"
                "Host: " HOST "\r\n"
                "X-Forwarded-Proto: http\r\n"
                "X-Forwarded-Host: evil.example\r\n"
                "x-forwarded-user: admin\r\n"
                "Forwarded: for=6.6.6.6;proto=http\r\n"
                "User-Agent: t\r\n"
                "\r\n",
                "192.0.2.7");
    assert_one_field(&F, "host", HOST);
    assert_true(F.host.p && str_is(&F.host, HOST));
    assert_one_field(&F, "x-forwarded-for", "192.0.2.7");
    assert_one_field(&F, "x-forwarded-proto", "https");
    assert_one_field(&F, "x-forwarded-host", HOST);
    assert_no_field(&F, "forwarded");
    assert_no_field(&F, "x-forwarded-user");
    assert_false(fwd_has("6.6.6.6"));
    assert_false(fwd_has("evil.example"));
    assert_false(fwd_has("admin"));
    assert_one_field(&F, "user-agent", "t");

    /* IPv6 client address goes in as given. */
    forward_req("GET / HTTP/1.1\r\nHost: " HOST "\r\n\r\n", "2001:db8::1");
    assert_one_field(&F, "x-forwarded-for", "2001:db8::1");
}

static void test_fwd_req_cookie(void **state)
{
    (void)state;
    forward_req("GET / HTTP/1.1\r\n"
                "Host: " HOST "\r\n"
                "Cookie: a=1; __Host-jobgate=SECRETONE; b=2\r\n"
                "Cookie: __Host-jobgate=SECRETTWO\r\n"
                "Cookie: x__Host-jobgate=theirs\r\n"
                "\r\n",
                "127.0.0.1");
    assert_false(fwd_has("SECRETONE"));
    assert_false(fwd_has("SECRETTWO"));
    assert_int_equal(count_fields(&F, "cookie"), 2);
    int i = http1_find(&F, "cookie");
    assert_true(i >= 0);
    assert_true(str_is(&F.fields[i].value, "a=1; b=2"));
    assert_true(str_is(&F.fields[i + 1].value, "x__Host-jobgate=theirs"));

    /* A Cookie field with only ours disappears altogether. */
    forward_req("GET / HTTP/1.1\r\nHost: " HOST "\r\nCookie: __Host-jobgate=SECRET\r\n\r\n",
                "127.0.0.1");
    assert_no_field(&F, "cookie");
    assert_false(fwd_has("SECRET"));
    assert_false(fwd_has("__Host-jobgate"));
}

/* The app's own cookies reach it even when the browser separates them with
 * a bare ';' (RFC 6265 allows any client; curl -b "a=1;b=2" does this). */
static void test_fwd_req_cookie_no_space(void **state)
{
    (void)state;
    forward_req("GET / HTTP/1.1\r\nHost: " HOST "\r\nCookie: a=1;b=2\r\n\r\n", "127.0.0.1");
    int i = http1_find(&F, "cookie");
    if (i < 0)
        fail_msg("Cookie 'a=1;b=2' (no gateway cookie) was dropped:\n%s", fwd);
    assert_true(str_is(&F.fields[i].value, "a=1; b=2") || str_is(&F.fields[i].value, "a=1;b=2"));
}

/* Same thing through the heap path (a Cookie value over 4 KiB). */
static void test_fwd_req_cookie_large(void **state)
{
    (void)state;
    static char req[12000];
    static char big[6000];
    memset(big, 'v', 5000);
    big[5000] = '\0';
    int n = snprintf(req, sizeof(req),
                     "GET / HTTP/1.1\r\nHost: " HOST "\r\n"
                     "Cookie: big=%s; __Host-jobgate=SECRET; z=1\r\n\r\n",
                     big);
    assert_true(n > 0 && (size_t)n < sizeof(req));
    forward_req(req, "127.0.0.1");
    assert_false(fwd_has("SECRET"));
    int i = http1_find(&F, "cookie");
    assert_true(i >= 0);
    assert_int_equal(F.fields[i].value.n, 4 + 5000 + 2 + 3);
    assert_memory_equal(F.fields[i].value.p + 5004, "; z=1", 5);
}

static void test_fwd_req_framing(void **state)
{
    (void)state;
    forward_req("POST /api HTTP/1.1\r\nHost: " HOST "\r\nTransfer-Encoding: chunked\r\n\r\n",
                "127.0.0.1");
    assert_int_equal(F.body, HTTP1_BODY_CHUNKED);
    assert_one_field(&F, "transfer-encoding", "chunked");
    assert_no_field(&F, "content-length");

    forward_req("POST /api HTTP/1.1\r\nHost: " HOST "\r\nContent-Length: 0042\r\n\r\n",
                "127.0.0.1");
    assert_int_equal(F.body, HTTP1_BODY_LENGTH);
    assert_int_equal(F.content_length, 42);
    assert_one_field(&F, "content-length", "42");
    assert_no_field(&F, "transfer-encoding");

    /* identical duplicates become one normalised field */
    forward_req("PUT /f HTTP/1.1\r\nHost: " HOST "\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n",
                "127.0.0.1");
    assert_one_field(&F, "content-length", "7");

    forward_req("POST /api HTTP/1.1\r\nHost: " HOST "\r\nContent-Length: 0\r\n\r\n", "127.0.0.1");
    assert_int_equal(F.body, HTTP1_BODY_NONE);
    assert_one_field(&F, "content-length", "0");

    forward_req("GET / HTTP/1.1\r\nHost: " HOST "\r\n\r\n", "127.0.0.1");
    assert_no_field(&F, "content-length");
    assert_no_field(&F, "transfer-encoding");

    /* HTTP/1.0 stays 1.0 */
    forward_req("GET /old HTTP/1.0\r\nHost: " HOST "\r\n\r\n", "127.0.0.1");
    assert_int_equal(F.minor, 0);
    assert_true(strncmp(fwd, "GET /old HTTP/1.0\r\n", 19) == 0);
}

static void test_fwd_req_upgrade(void **state)
{
    (void)state;
    forward_req("GET /api/kernels/1/channels HTTP/1.1\r\n"
                "Host: " HOST "\r\n"
                "Connection: keep-alive, Upgrade\r\n"
                "Upgrade: websocket\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n"
                "Origin: https://" HOST "\r\n"
                "\r\n",
                "127.0.0.1");
    assert_one_field(&F, "connection", "upgrade");
    assert_one_field(&F, "upgrade", "websocket");
    assert_true(F.flags & HTTP1_F_UPGRADE);
    assert_false(F.flags & HTTP1_F_CLOSE);
    assert_one_field(&F, "sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    assert_one_field(&F, "sec-websocket-version", "13");
    assert_one_field(&F, "origin", "https://" HOST);
    assert_one_field(&F, "host", HOST);
    assert_false(fwd_has("keep-alive"));
}

/* ---- forwarded response ---------------------------------------------------- */

static void test_fwd_resp_hop_by_hop(void **state)
{
    (void)state;
    static const char resp[] = "HTTP/1.1 200 OK\r\n"
                               "Connection: keep-alive, X-Internal\r\n"
                               "Keep-Alive: timeout=5\r\n"
                               "X-Internal: backend-7\r\n"
                               "Proxy-Authenticate: Basic realm=x\r\n"
                               "Trailer: X-Checksum\r\n"
                               "Content-Type: text/plain\r\n"
                               "Set-Cookie: _xsrf=abc; Path=/\r\n"
                               "Content-Length: 12\r\n"
                               "\r\n";
    forward_resp(resp, 0, 0);
    assert_true(strncmp(fwd, "HTTP/1.1 200 OK\r\n", 17) == 0);
    assert_int_equal(F.status, 200);
    assert_true(str_is(&F.reason, "OK"));
    assert_no_field(&F, "connection");
    assert_no_field(&F, "keep-alive");
    assert_no_field(&F, "x-internal");
    assert_no_field(&F, "proxy-authenticate");
    assert_no_field(&F, "trailer");
    assert_false(fwd_has("backend-7"));
    assert_one_field(&F, "content-type", "text/plain");
    assert_one_field(&F, "set-cookie", "_xsrf=abc; Path=/");
    assert_int_equal(F.body, HTTP1_BODY_LENGTH);
    assert_int_equal(F.content_length, 12);
    assert_one_field(&F, "content-length", "12");
    assert_false(F.flags & HTTP1_F_CLOSE);

    /* close: the gateway says so itself, once. */
    forward_resp(resp, 0, 1);
    assert_one_field(&F, "connection", "close");
    assert_true(F.flags & HTTP1_F_CLOSE);

    /* the app's "close" is hop-by-hop: not passed on when the gateway keeps alive */
    forward_resp("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", 0, 0);
    assert_no_field(&F, "connection");
}

static void test_fwd_resp_framing(void **state)
{
    (void)state;
    forward_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 0);
    assert_int_equal(F.body, HTTP1_BODY_CHUNKED);
    assert_one_field(&F, "transfer-encoding", "chunked");
    assert_no_field(&F, "content-length");

    /* Body until close: no framing invented. */
    forward_resp("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n", 0, 1);
    assert_int_equal(F.body, HTTP1_BODY_EOF);
    assert_no_field(&F, "content-length");
    assert_no_field(&F, "transfer-encoding");
    assert_one_field(&F, "connection", "close");
    assert_int_equal(F.minor, 1); /* the gateway speaks 1.1 to the browser */

    /* 200 with an empty body keeps saying so (else the browser waits for EOF). */
    forward_resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, 0);
    assert_one_field(&F, "content-length", "0");
    assert_int_equal(F.body, HTTP1_BODY_NONE);

    /* HEAD: Content-Length describes the GET body and is kept. */
    forward_resp("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: \"e\"\r\n\r\n", 1, 0);
    assert_one_field(&F, "content-length", "1234");
    assert_one_field(&F, "etag", "\"e\"");
    assert_int_equal(F.body, HTTP1_BODY_NONE);

    forward_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1, 0);
    assert_one_field(&F, "transfer-encoding", "chunked");
    assert_no_field(&F, "content-length");

    /* 204 and 304: no framing. */
    forward_resp("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", 0, 0);
    assert_int_equal(F.status, 204);
    assert_no_field(&F, "content-length");
    assert_no_field(&F, "transfer-encoding");
    assert_one_field(&F, "x-a", "1");

    /* an app that wrongly sends Content-Length with 204 does not pass it on */
    forward_resp("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", 0, 0);
    assert_no_field(&F, "content-length");

    forward_resp("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 99\r\n\r\n", 0, 0);
    assert_int_equal(F.status, 304);
    assert_no_field(&F, "content-length");
    assert_no_field(&F, "transfer-encoding");
    assert_one_field(&F, "etag", "\"v1\"");

    forward_resp("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", 0, 1);
    assert_no_field(&F, "content-length");
    assert_one_field(&F, "connection", "close");
}

static void test_fwd_resp_upgrade(void **state)
{
    (void)state;
    /* close=1 must not turn a 101 into a closing response. */
    forward_resp("HTTP/1.1 101 Switching Protocols\r\n"
                 "Connection: Upgrade\r\n"
                 "Upgrade: websocket\r\n"
                 "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                 "\r\n",
                 0, 1);
    assert_int_equal(F.status, 101);
    assert_one_field(&F, "connection", "upgrade");
    assert_one_field(&F, "upgrade", "websocket");
    assert_one_field(&F, "sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_no_field(&F, "content-length");
    assert_no_field(&F, "transfer-encoding");

    /* A 101 always announces the upgrade, even if the app forgot Connection. */
    forward_resp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 0, 0);
    assert_one_field(&F, "connection", "upgrade");
    assert_one_field(&F, "upgrade", "websocket");

    /* A 200 with Upgrade but no "Connection: upgrade" loses Upgrade. */
    forward_resp("HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n", 0, 0);
    assert_no_field(&F, "upgrade");
    assert_no_field(&F, "connection");
}

static void test_absolute_form(void **state)
{
    (void)state;
    static struct http1_head h; /* 8 KiB: keep it off the stack */
    parse_req("GET https://Brisk-Otter-Canal.localhost:8443/x/y?z=1 HTTP/1.1\r\n"
              "Host: other.localhost\r\nAccept: */*\r\n\r\n", &h);
    assert_int_equal(reqhead_absolute_form(&h), 1);
    assert_int_equal(h.target.n, 8);
    assert_memory_equal(h.target.p, "/x/y?z=1", 8);
    char alias[64];
    assert_int_equal(reqhead_alias(&h.host, "localhost", alias, sizeof(alias)), 0);
    assert_string_equal(alias, "brisk-otter-canal");
    int i = http1_find(&h, "host");
    assert_true(i >= 0);
    assert_int_equal(h.fields[i].value.n, strlen("Brisk-Otter-Canal.localhost:8443"));

    parse_req("GET http://a.localhost HTTP/1.1\r\nHost: a.localhost\r\n\r\n", &h);
    assert_int_equal(reqhead_absolute_form(&h), 1);
    assert_int_equal(h.target.n, 1);
    assert_int_equal(h.target.p[0], '/');

    /* HTTP/1.0 without Host: the authority becomes the Host field. */
    parse_req("GET http://b.localhost/p HTTP/1.0\r\n\r\n", &h);
    assert_int_equal(reqhead_absolute_form(&h), 1);
    i = http1_find(&h, "host");
    assert_true(i >= 0);
    assert_int_equal(h.fields[i].value.n, 11);

    parse_req("GET /plain HTTP/1.1\r\nHost: a.localhost\r\n\r\n", &h);
    assert_int_equal(reqhead_absolute_form(&h), 0);
    assert_int_equal(h.target.n, 6);

    static const char *const bad[] = {
        "GET * HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
        "GET a.localhost:443 HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
        "GET https://user:pw@a.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
        "GET https:///x HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
        "GET ftp://a.localhost/x HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    };
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        parse_req(bad[k], &h);
        assert_int_equal(reqhead_absolute_form(&h), -1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alias_accepts),
        cmocka_unit_test(test_alias_refuses),
        cmocka_unit_test(test_alias_small_out),
        cmocka_unit_test(test_cookies_find),
        cmocka_unit_test(test_cookie_strip),
        cmocka_unit_test(test_set_cookie_host_only),
        cmocka_unit_test(test_cross_site),
        cmocka_unit_test(test_next_accepts),
        cmocka_unit_test(test_next_refuses),
        cmocka_unit_test(test_next_bounded),
        cmocka_unit_test(test_next_tiny_out),
        cmocka_unit_test(test_log_path),
        cmocka_unit_test(test_hop_by_hop),
        cmocka_unit_test(test_fwd_req_hop_by_hop),
        cmocka_unit_test(test_fwd_req_forwarded_fields),
        cmocka_unit_test(test_fwd_req_cookie),
        cmocka_unit_test(test_fwd_req_cookie_no_space),
        cmocka_unit_test(test_absolute_form),
        cmocka_unit_test(test_fwd_req_cookie_large),
        cmocka_unit_test(test_fwd_req_framing),
        cmocka_unit_test(test_fwd_req_upgrade),
        cmocka_unit_test(test_fwd_resp_hop_by_hop),
        cmocka_unit_test(test_fwd_resp_framing),
        cmocka_unit_test(test_fwd_resp_upgrade),
    };
    return cmocka_run_group_tests_name("reqhead", tests, NULL, NULL);
}
