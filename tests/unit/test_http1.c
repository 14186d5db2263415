/* Unit tests for src/lib/http1.c: head scanner, request/response parser, chunked scanner. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1.h"

static const struct http1_limits LIM = {8192, 65536, 100};

/* Big (8 KiB of fields): one per test program, not on the stack. */
static struct http1_head H;

#define S(lit) lit, (sizeof(lit) - 1)

/* Deterministic PRNG so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* scan_head over a buffer that grows one byte per call, one cursor. */
static ssize_t scan_bytewise(const char *s, size_t n, const struct http1_limits *lim)
{
    size_t scan = 0;
    for (size_t k = 1; k <= n; k++) {
        ssize_t r = http1_scan_head(s, k, lim, &scan);
        if (r != 0)
            return r;
    }
    return 0;
}

/* scan_head over a buffer that grows by random amounts. */
static ssize_t scan_random(const char *s, size_t n, const struct http1_limits *lim)
{
    size_t scan = 0, k = 0;
    while (k < n) {
        k += 1 + rnd() % 17;
        if (k > n)
            k = n;
        ssize_t r = http1_scan_head(s, k, lim, &scan);
        if (r != 0)
            return r;
    }
    return 0;
}

static ssize_t scan_whole(const char *s, size_t n, const struct http1_limits *lim)
{
    size_t scan = 0;
    ssize_t r = http1_scan_head(s, n, lim, &scan);
    /* every way of feeding the bytes gives the same answer */
    assert_int_equal(r, scan_bytewise(s, n, lim));
    assert_int_equal(r, scan_random(s, n, lim));
    return r;
}

/* Scan then parse a complete request; returns the scan error or the parse result. */
static int req_n(const char *s, size_t n, const struct http1_limits *lim)
{
    ssize_t r = scan_whole(s, n, lim);
    if (r < 0)
        return (int)r;
    assert_true(r > 0); /* test inputs are complete heads */
    int pr = http1_parse_request(s, (size_t)r, lim, &H);
    if (pr == 0)
        assert_int_equal(H.head_len, (size_t)r);
    return pr;
}

static int resp_n(const char *s, size_t n, int head_req)
{
    ssize_t r = scan_whole(s, n, &LIM);
    if (r < 0)
        return (int)r;
    assert_true(r > 0);
    return http1_parse_response(s, (size_t)r, &LIM, head_req, &H);
}

#define REQ(lit) req_n(S(lit), &LIM)
#define RESP(lit) resp_n(S(lit), 0)
/* parse without scanning first: for errors the scanner would catch earlier */
#define PARSE(lit) http1_parse_request(S(lit), &LIM, &H)

static int str_eq(struct http1_str s, const char *lit)
{
    return s.p && s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

/* ------------------------------------------------------------------ requests */

static void test_get_simple(void **state)
{
    (void)state;
    static const char m[] = "GET /index.html?x=1&y=%20 HTTP/1.1\r\n"
                            "Host: example.com\r\n"
                            "User-Agent: curl/7.88\r\n"
                            "Accept: */*\r\n"
                            "\r\n";
    assert_int_equal(REQ(m), 0);
    assert_true(str_eq(H.method, "GET"));
    assert_true(str_eq(H.target, "/index.html?x=1&y=%20"));
    assert_int_equal(H.minor, 1);
    assert_int_equal(H.head_len, sizeof(m) - 1);
    assert_int_equal(H.nfields, 3);
    assert_true(str_eq(H.fields[0].name, "Host"));
    assert_true(str_eq(H.fields[0].value, "example.com"));
    assert_true(str_eq(H.fields[1].name, "User-Agent"));
    assert_true(str_eq(H.fields[1].value, "curl/7.88"));
    assert_true(str_eq(H.fields[2].value, "*/*"));
    assert_true(str_eq(H.host, "example.com"));
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(H.flags, 0);
    assert_int_equal(H.status, 0);
    assert_null(H.reason.p);
}

static void test_post_content_length(void **state)
{
    (void)state;
    static const char m[] = "POST /api HTTP/1.1\r\nHost: a.b\r\nContent-Length: 5\r\n"
                            "Content-Type: text/plain\r\n\r\nhello";
    size_t scan = 0;
    ssize_t r = http1_scan_head(S(m), &LIM, &scan);
    assert_int_equal(r, sizeof(m) - 1 - 5); /* body not part of the head */
    assert_int_equal(http1_parse_request(m, (size_t)r, &LIM, &H), 0);
    assert_true(str_eq(H.method, "POST"));
    assert_int_equal(H.body, HTTP1_BODY_LENGTH);
    assert_int_equal(H.content_length, 5);
    assert_int_equal(H.flags, 0);
}

static void test_head_and_other_methods(void **state)
{
    (void)state;
    assert_int_equal(REQ("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    assert_true(str_eq(H.method, "HEAD"));
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    /* any token is a method; the proxy decides what it supports */
    assert_int_equal(REQ("M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    assert_true(str_eq(H.method, "M-SEARCH"));
    assert_true(str_eq(H.target, "*"));
    assert_int_equal(REQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"), 0);
    assert_true(str_eq(H.target, "example.com:443"));
    assert_int_equal(REQ("GET http://x.org/a HTTP/1.1\r\nHost: x.org\r\n\r\n"), 0);
    assert_true(str_eq(H.target, "http://x.org/a"));
}

static void test_content_length_zero_is_none(void **state)
{
    (void)state;
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 000\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 007\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_LENGTH);
    assert_int_equal(H.content_length, 7);
}

static void test_post_chunked(void **state)
{
    (void)state;
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_CHUNKED);
    assert_int_equal(H.flags, HTTP1_F_TE);
    /* case-insensitive, OWS around it */
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding:\t CHUNKED \t\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_CHUNKED);
    assert_true(H.flags & HTTP1_F_TE);
}

static void test_value_ows_trimmed_and_obs_text(void **state)
{
    (void)state;
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost:x\r\nX-A:   a  b \t \r\nX-B:\r\nX-C: \t\r\n"
                         "X-D: caf\xc3\xa9 \x80\xff\r\n\r\n"),
                     0);
    assert_int_equal(H.nfields, 5);
    assert_true(str_eq(H.fields[0].value, "x"));
    assert_true(str_eq(H.fields[1].value, "a  b"));
    assert_int_equal(H.fields[2].value.n, 0);
    assert_int_equal(H.fields[3].value.n, 0);
    assert_true(str_eq(H.fields[4].value, "caf\xc3\xa9 \x80\xff"));
}

static void test_http10(void **state)
{
    (void)state;
    assert_int_equal(REQ("GET / HTTP/1.0\r\n\r\n"), 0);
    assert_int_equal(H.minor, 0);
    assert_null(H.host.p);
    assert_int_equal(H.flags, HTTP1_F_CLOSE);
    assert_int_equal(REQ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(H.flags, 0);
    assert_true(str_eq(H.host, "h"));
    assert_int_equal(REQ("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), 0);
    assert_int_equal(H.flags, HTTP1_F_CLOSE);
    assert_int_equal(REQ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), -HTTP1_E_HOST);
    /* 1.0 ignores Upgrade */
    assert_int_equal(REQ("GET / HTTP/1.0\r\nConnection: upgrade, keep-alive\r\nUpgrade: x\r\n\r\n"), 0);
    assert_int_equal(H.flags, 0);
}

static void test_connection_flags(void **state)
{
    (void)state;
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 0);
    assert_int_equal(H.flags, HTTP1_F_CLOSE);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, CLOSE\r\n\r\n"), 0);
    assert_int_equal(H.flags, HTTP1_F_CLOSE);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nConnection: closed\r\n\r\n"), 0);
    assert_int_equal(H.flags, 0);
    assert_int_equal(REQ("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
                         "Upgrade: websocket\r\n\r\n"),
                     0);
    assert_int_equal(H.flags, HTTP1_F_UPGRADE);
    /* two Connection fields combine */
    assert_int_equal(REQ("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nUpgrade: websocket\r\n"
                         "Connection: upgrade\r\n\r\n"),
                     0);
    assert_int_equal(H.flags, HTTP1_F_UPGRADE);
    /* upgrade token without an Upgrade field, and the reverse */
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n"), 0);
    assert_int_equal(H.flags, 0);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"), 0);
    assert_int_equal(H.flags, 0);
}

static void test_expect(void **state)
{
    (void)state;
    assert_int_equal(REQ("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"), 0);
    assert_int_equal(H.flags, HTTP1_F_EXPECT_100);
    assert_int_equal(REQ("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n"), 0);
    assert_int_equal(H.flags, HTTP1_F_EXPECT_100);
    assert_int_equal(REQ("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n\r\n"), 0);
    assert_int_equal(H.flags, HTTP1_F_EXPECT_OTHER);
    assert_int_equal(REQ("PUT / HTTP/1.1\r\nHost: x\r\nExpect:\r\n\r\n"), 0);
    assert_int_equal(H.flags, HTTP1_F_EXPECT_OTHER);
}

static void test_method_errors(void **state)
{
    (void)state;
    assert_int_equal(REQ("G(T / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_METHOD);
    assert_int_equal(REQ(" GET / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_METHOD);
    assert_int_equal(REQ("GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_METHOD);
    assert_int_equal(REQ("GET\r\nHost: x\r\n\r\n"), -HTTP1_E_METHOD);
    assert_int_equal(REQ("G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_METHOD);
    assert_int_equal(REQ("G\xc3\xa9T / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_METHOD);
}

static void test_target_errors(void **state)
{
    (void)state;
    assert_int_equal(REQ("GET  HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_TARGET);
    assert_int_equal(REQ("GET  / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_TARGET);
    assert_int_equal(REQ("GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_TARGET);
    assert_int_equal(REQ("GET /a\x7f HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_TARGET);
    assert_int_equal(REQ("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_TARGET);
    assert_int_equal(REQ("GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_TARGET);
    static const char nul[] = "GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(req_n(S(nul), &LIM), -HTTP1_E_TARGET);
    /* HTTP/0.9 shape: no version */
    assert_int_equal(REQ("GET /\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
}

static void test_version_errors(void **state)
{
    (void)state;
    assert_int_equal(REQ("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), -HTTP1_E_VERSION);
    assert_int_equal(REQ("GET / HTTP/1.2\r\nHost: x\r\n\r\n"), -HTTP1_E_VERSION);
    assert_int_equal(REQ("GET / HTTP/0.9\r\nHost: x\r\n\r\n"), -HTTP1_E_VERSION);
    assert_int_equal(REQ("GET / HTTP/3.0\r\nHost: x\r\n\r\n"), -HTTP1_E_VERSION);
    assert_int_equal(REQ("GET / HTTP/1.10\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
    assert_int_equal(REQ("GET / HTTP/11\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
    assert_int_equal(REQ("GET / HTTP/2\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
    assert_int_equal(REQ("GET / http/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
    assert_int_equal(REQ("GET / HTTP/1.1 \r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
    assert_int_equal(REQ("GET / HTTP/1.1x\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
    assert_int_equal(REQ("GET / / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
    assert_int_equal(REQ("GET / HTTP/a.b\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
}

static void test_field_name_errors(void **state)
{
    (void)state;
    /* whitespace between name and colon: a classic smuggling shape */
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"),
                     -HTTP1_E_FIELD_NAME);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length\t: 5\r\n\r\n"), -HTTP1_E_FIELD_NAME);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n"), -HTTP1_E_FIELD_NAME);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n"), -HTTP1_E_FIELD_NAME);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX(Y): z\r\n\r\n"), -HTTP1_E_FIELD_NAME);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX Y: z\r\n\r\n"), -HTTP1_E_FIELD_NAME);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX\x01Y: z\r\n\r\n"), -HTTP1_E_FIELD_NAME);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX\xffY: z\r\n\r\n"), -HTTP1_E_FIELD_NAME);
    /* all tchar is a valid name */
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\n!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n"), 0);
    assert_true(str_eq(H.fields[1].name, "!#$%&'*+-.^_`|~09azAZ"));
}

static void test_obs_fold(void **state)
{
    (void)state;
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"),
                     -HTTP1_E_OBS_FOLD);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n"), -HTTP1_E_OBS_FOLD);
    /* whitespace before the first field line */
    assert_int_equal(REQ("GET / HTTP/1.1\r\n Host: x\r\n\r\n"), -HTTP1_E_OBS_FOLD);
}

static void test_ctl_in_value(void **state)
{
    (void)state;
    static const char nul[] = "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n";
    assert_int_equal(req_n(S(nul), &LIM), -HTTP1_E_CTL);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01\r\n\r\n"), -HTTP1_E_CTL);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x1b[0m\r\n\r\n"), -HTTP1_E_CTL);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7f\r\n\r\n"), -HTTP1_E_CTL);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX-A: \x0b\r\n\r\n"), -HTTP1_E_CTL);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x0c\r\n\r\n"), -HTTP1_E_CTL);
    /* HTAB is allowed inside */
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\n\r\n"), 0);
    assert_true(str_eq(H.fields[1].value, "a\tb"));
}

static void test_bare_lf_cr(void **state)
{
    (void)state;
    /* scanner catches them */
    assert_int_equal(REQ("GET / HTTP/1.1\nHost: x\r\n\r\n"), -HTTP1_E_BARE_LF);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\n\r\n"), -HTTP1_E_BARE_LF);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\n\n"), -HTTP1_E_BARE_LF);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n"), -HTTP1_E_BARE_LF);
    assert_int_equal(REQ("\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_BARE_LF);
    assert_int_equal(REQ("GET / HTTP/1.1\rHost: x\r\n\r\n"), -HTTP1_E_BARE_CR);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n"), -HTTP1_E_BARE_CR);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\n\r\r\n"), -HTTP1_E_BARE_CR);
    assert_int_equal(REQ("GET / HTTP/1.1\r\r\nHost: x\r\n\r\n"), -HTTP1_E_BARE_CR);

    /* the parser catches them on its own as well (no scan first) */
    assert_int_equal(PARSE("GET / HTTP/1.1\nHost: x\r\n\r\n"), -HTTP1_E_BARE_LF);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHost: x\n\r\n"), -HTTP1_E_BARE_LF);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHost: x\r\n\n"), -HTTP1_E_BARE_LF);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n"), -HTTP1_E_BARE_CR);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\r\nHost: x\r\n\r\n"), -HTTP1_E_BARE_CR);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHo\rst: x\r\n\r\n"), -HTTP1_E_BARE_CR);
    assert_int_equal(PARSE("GET / HTTP/1.1\r\nHost: x\r\n\r\r\n"), -HTTP1_E_BARE_CR);
    assert_int_equal(PARSE("GET /\r HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_BARE_CR);
}

static void test_scan_detects_early(void **state)
{
    (void)state;
    size_t scan = 0;
    /* errors are reported before the head is complete */
    assert_int_equal(http1_scan_head(S("GET / HTTP/1.1\n"), &LIM, &scan), -HTTP1_E_BARE_LF);
    scan = 0;
    assert_int_equal(http1_scan_head(S("GET / HTTP/1.1\rX"), &LIM, &scan), -HTTP1_E_BARE_CR);
    /* a CR at the end waits for the next byte */
    scan = 0;
    assert_int_equal(http1_scan_head(S("GET / HTTP/1.1\r"), &LIM, &scan), 0);
    assert_int_equal(http1_scan_head(S("GET / HTTP/1.1\r\n"), &LIM, &scan), 0);
    assert_int_equal(http1_scan_head(S("GET / HTTP/1.1\r\nHost: x\r\n\r"), &LIM, &scan), 0);
    assert_int_equal(http1_scan_head(S("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), &LIM, &scan), 27);
    /* leading empty line is not skipped */
    scan = 0;
    assert_int_equal(http1_scan_head(S("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), &LIM, &scan),
                     -HTTP1_E_SYNTAX);
    scan = 0;
    assert_int_equal(http1_scan_head(S("\r\n"), &LIM, &scan), -HTTP1_E_SYNTAX);
    scan = 0;
    assert_int_equal(http1_scan_head("", 0, &LIM, &scan), 0);
    assert_int_equal(PARSE("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_SYNTAX);
}

static void test_scan_pipelined_and_bytewise(void **state)
{
    (void)state;
    static const char m[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t first = strlen("GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    size_t scan = 0;
    assert_int_equal(http1_scan_head(S(m), &LIM, &scan), (ssize_t)first);
    assert_int_equal(scan_bytewise(S(m), &LIM), (ssize_t)first);
    /* second head from its own start */
    scan = 0;
    assert_int_equal(http1_scan_head(m + first, sizeof(m) - 1 - first, &LIM, &scan),
                     (ssize_t)(sizeof(m) - 1 - first));

    /* byte by byte: 0 until the last byte, then the length, for many shapes */
    static const char *const heads[] = {
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ("POST /upload HTTP/1.1\r\nHost: example.org\r\nContent-Type: a/b\r\nX-Long: "
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"),
    };
    for (size_t k = 0; k < sizeof(heads) / sizeof(heads[0]); k++) {
        size_t n = strlen(heads[k]);
        scan = 0;
        for (size_t i = 1; i < n; i++)
            assert_int_equal(http1_scan_head(heads[k], i, &LIM, &scan), 0);
        assert_int_equal(http1_scan_head(heads[k], n, &LIM, &scan), (ssize_t)n);
        assert_int_equal(scan_random(heads[k], n, &LIM), (ssize_t)n);
    }
}

static void test_content_length_rules(void **state)
{
    (void)state;
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_LENGTH);
    assert_int_equal(H.content_length, 5);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"), 0);
    assert_int_equal(H.content_length, 5);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,5 ,\t5\r\n\r\n"), 0);
    assert_int_equal(H.content_length, 5);

    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n"), -HTTP1_E_CL_CONFLICT);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
                     -HTTP1_E_CL_CONFLICT);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\n"), 0);
    assert_int_equal(H.content_length, 5);

    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5a\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5.0\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5,\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ,5\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \"5\"\r\n\r\n"), -HTTP1_E_CL_INVALID);
    /* uint64 boundary */
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n"), 0);
    assert_int_equal(H.content_length, UINT64_MAX);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n"),
                     -HTTP1_E_CL_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
                     -HTTP1_E_CL_INVALID);
}

static void test_cl_and_te(void **state)
{
    (void)state;
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     -HTTP1_E_CL_AND_TE);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
                     -HTTP1_E_CL_AND_TE);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\nTRANSFER-ENCODING: gzip\r\n\r\n"),
                     -HTTP1_E_CL_AND_TE);
    assert_int_equal(REQ("POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     -HTTP1_E_CL_AND_TE);
}

static void test_te_variants(void **state)
{
    (void)state;
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"),
                     -HTTP1_E_TE_UNSUPPORTED);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunkedx\r\n\r\n"),
                     -HTTP1_E_TE_UNSUPPORTED);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
                     -HTTP1_E_TE_UNSUPPORTED);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
                     -HTTP1_E_TE_UNSUPPORTED);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n"),
                     -HTTP1_E_TE_UNSUPPORTED);
    /* several fields combine into one list */
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     -HTTP1_E_TE_UNSUPPORTED);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"),
                     -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
                     -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
                     -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;x\r\n\r\n"),
                     -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked ;q=1\r\n\r\n"),
                     -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n\r\n"), -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,\r\n\r\n"), -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked,\r\n\r\n"), -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , chunked\r\n\r\n"), -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n"), -HTTP1_E_TE_INVALID);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chu nked\r\n\r\n"), -HTTP1_E_TE_INVALID);
    /* smuggling shapes other layers catch */
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0b" "chunked\r\n\r\n"), -HTTP1_E_CTL);
    assert_int_equal(REQ("POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE); /* not the TE field, so no framing */
    assert_int_equal(H.flags & HTTP1_F_TE, 0);
}

static void test_host_rules(void **state)
{
    (void)state;
    assert_int_equal(REQ("GET / HTTP/1.1\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nX-Host: a\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost:\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a:b\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a:\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: :80\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: []\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a]b\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a%41\r\n\r\n"), -HTTP1_E_HOST);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: caf\xc3\xa9.org\r\n\r\n"), -HTTP1_E_HOST);

    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: brisk-otter-canal.apps.example.org:8443\r\n\r\n"), 0);
    assert_true(str_eq(H.host, "brisk-otter-canal.apps.example.org:8443"));
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n"), 0);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 0);
    assert_true(str_eq(H.host, "[::1]:8080"));
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n"), 0);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: [::ffff:10.0.0.1]:65535\r\n\r\n"), 0);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: a_b~c.localhost\r\n\r\n"), 0);
    assert_int_equal(REQ("GET / HTTP/1.1\r\nHOST:   x.localhost  \r\n\r\n"), 0);
    assert_true(str_eq(H.host, "x.localhost"));

    /* 255 bytes are fine, 256 are not */
    char buf[512];
    const char *pre = "GET / HTTP/1.1\r\nHost: ";
    size_t pl = strlen(pre);
    memcpy(buf, pre, pl);
    memset(buf + pl, 'a', 255);
    memcpy(buf + pl + 255, "\r\n\r\n", 4);
    assert_int_equal(req_n(buf, pl + 255 + 4, &LIM), 0);
    assert_int_equal(H.host.n, 255);
    memset(buf + pl, 'a', 256);
    memcpy(buf + pl + 256, "\r\n\r\n", 4);
    assert_int_equal(req_n(buf, pl + 256 + 4, &LIM), -HTTP1_E_HOST);
}

static void test_start_line_limit(void **state)
{
    (void)state;
    const struct http1_limits lim = {16, 4096, 10};
    size_t scan;
    /* "GET /0123456789 HTTP/1.1" is 24 bytes */
    assert_int_equal(req_n(S("GET /0123456789 HTTP/1.1\r\nHost: x\r\n\r\n"), &lim), -HTTP1_E_START_LINE_LONG);
    /* reported as soon as byte 17 of the line arrives, without any line end */
    scan = 0;
    assert_int_equal(http1_scan_head(S("GET /01234567890"), &lim, &scan), 0); /* 16 bytes */
    assert_int_equal(http1_scan_head(S("GET /012345678901"), &lim, &scan), -HTTP1_E_START_LINE_LONG);
    scan = 0;
    assert_int_equal(http1_scan_head(S("GET /012345678901"), &lim, &scan), -HTTP1_E_START_LINE_LONG);
    /* exactly max_start_line bytes before CRLF are fine */
    const struct http1_limits lim14 = {14, 4096, 10};
    assert_int_equal(req_n(S("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), &lim14), 0);
    const struct http1_limits lim13 = {13, 4096, 10};
    assert_int_equal(req_n(S("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), &lim13), -HTTP1_E_START_LINE_LONG);
    assert_int_equal(http1_parse_request(S("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), &lim13, &H),
                     -HTTP1_E_START_LINE_LONG);
    /* only the start line is limited; a long field line is fine */
    assert_int_equal(req_n(S("GET / HTTP/1.1\r\nHost: x\r\nX-Long-Field-Name: 0123456789\r\n\r\n"), &lim14), 0);
    /* a start line longer than 16 kB, the default-sized limit */
    static char big[20000];
    memcpy(big, "GET /", 5);
    memset(big + 5, 'a', sizeof(big) - 5);
    scan = 0;
    assert_int_equal(http1_scan_head(big, sizeof(big), &LIM, &scan), -HTTP1_E_START_LINE_LONG);
    assert_int_equal(scan_bytewise(big, 9000, &LIM), -HTTP1_E_START_LINE_LONG);
}

static void test_head_size_limit(void **state)
{
    (void)state;
    const struct http1_limits lim = {64, 40, 10};
    static const char m[] = "GET / HTTP/1.1\r\nHost: x\r\nX: 0123456789\r\n\r\n"; /* 42 bytes */
    assert_int_equal(sizeof(m) - 1, 42);
    size_t scan = 0;
    assert_int_equal(http1_scan_head(m, 40, &lim, &scan), 0);
    assert_int_equal(http1_scan_head(m, 41, &lim, &scan), -HTTP1_E_HEAD_LARGE);
    assert_int_equal(req_n(S(m), &lim), -HTTP1_E_HEAD_LARGE);
    assert_int_equal(http1_parse_request(S(m), &lim, &H), -HTTP1_E_HEAD_LARGE);
    /* a head of exactly max_head bytes is accepted, even with more bytes behind it */
    const struct http1_limits lim42 = {64, 42, 10};
    assert_int_equal(req_n(S(m), &lim42), 0);
    static const char m2[] = "GET / HTTP/1.1\r\nHost: x\r\nX: 0123456789\r\n\r\nGET / HTTP/1.1\r\n";
    scan = 0;
    assert_int_equal(http1_scan_head(S(m2), &lim42, &scan), 42);
    const struct http1_limits lim41 = {64, 41, 10};
    scan = 0;
    assert_int_equal(http1_scan_head(S(m2), &lim41, &scan), -HTTP1_E_HEAD_LARGE);
    scan = 0;
    assert_int_equal(http1_scan_head(m2, 41, &lim41, &scan), 0); /* CR at 40: LF would exceed */
    assert_int_equal(http1_scan_head(m2, 42, &lim41, &scan), -HTTP1_E_HEAD_LARGE);
    /* endless field lines */
    static char big[70000];
    memcpy(big, "GET / HTTP/1.1\r\n", 16);
    for (size_t i = 16; i + 8 <= sizeof(big); i += 8)
        memcpy(big + i, "X: yyy\r\n", 8);
    scan = 0;
    assert_int_equal(http1_scan_head(big, sizeof(big), &LIM, &scan), -HTTP1_E_HEAD_LARGE);
    assert_int_equal(scan_random(big, sizeof(big), &LIM), -HTTP1_E_HEAD_LARGE);
}

/* Builds "GET / HTTP/1.1\r\nHost: x\r\n" plus nextra "X-N: v\r\n" lines and the empty line. */
static size_t build_fields(char *buf, size_t cap, size_t nextra)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (size_t i = 0; i < nextra; i++)
        n += (size_t)snprintf(buf + n, cap - n, "X-%zu: v\r\n", i);
    n += (size_t)snprintf(buf + n, cap - n, "\r\n");
    assert_true(n < cap);
    return n;
}

static void test_field_count_limit(void **state)
{
    (void)state;
    static char buf[16384];
    const struct http1_limits lim3 = {8192, 65536, 3};
    size_t n = build_fields(buf, sizeof(buf), 2); /* 3 fields */
    assert_int_equal(req_n(buf, n, &lim3), 0);
    assert_int_equal(H.nfields, 3);
    n = build_fields(buf, sizeof(buf), 3); /* 4 fields */
    assert_int_equal(req_n(buf, n, &lim3), -HTTP1_E_TOO_MANY_FIELDS);

    /* max_fields above the cap is treated as the cap */
    const struct http1_limits big = {8192, 65536, 100000};
    n = build_fields(buf, sizeof(buf), HTTP1_MAX_FIELDS_CAP - 1);
    assert_int_equal(req_n(buf, n, &big), 0);
    assert_int_equal(H.nfields, HTTP1_MAX_FIELDS_CAP);
    assert_int_equal(http1_find(&H, "x-254"), HTTP1_MAX_FIELDS_CAP - 1);
    n = build_fields(buf, sizeof(buf), HTTP1_MAX_FIELDS_CAP);
    assert_int_equal(req_n(buf, n, &big), -HTTP1_E_TOO_MANY_FIELDS);
    n = build_fields(buf, sizeof(buf), 1000);
    assert_int_equal(req_n(buf, n, &big), -HTTP1_E_TOO_MANY_FIELDS);
}

static void test_parse_requires_exact_head(void **state)
{
    (void)state;
    /* head_len must cover exactly one complete head */
    assert_int_equal(http1_parse_request(S("GET / HTTP/1.1\r\nHost: x\r\n\r\nX"), &LIM, &H), -HTTP1_E_SYNTAX);
    assert_int_equal(http1_parse_request(S("GET / HTTP/1.1\r\nHost: x\r\n"), &LIM, &H), -HTTP1_E_SYNTAX);
    assert_int_equal(http1_parse_request(S("GET / HTTP/1.1\r\nHost: x"), &LIM, &H), -HTTP1_E_SYNTAX);
    assert_int_equal(http1_parse_request(S("GET / HTTP/1.1"), &LIM, &H), -HTTP1_E_SYNTAX);
    assert_int_equal(http1_parse_request("", 0, &LIM, &H), -HTTP1_E_SYNTAX);
    assert_int_equal(http1_parse_request(NULL, 0, &LIM, &H), -HTTP1_E_SYNTAX);
    assert_int_equal(http1_parse_request(S("GET / HTTP/1.1\r\nHost: x\r\n\r"), &LIM, &H), -HTTP1_E_BARE_CR);
    /* NULL limits use built-in defaults */
    assert_int_equal(http1_parse_request(S("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), NULL, &H), 0);
    size_t scan = 0;
    assert_int_equal(http1_scan_head(S("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), NULL, &scan), 27);
}

/* ------------------------------------------------------------------ responses */

static void test_response_basic(void **state)
{
    (void)state;
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/html\r\n\r\n"), 0);
    assert_int_equal(H.status, 200);
    assert_true(str_eq(H.reason, "OK"));
    assert_int_equal(H.minor, 1);
    assert_int_equal(H.body, HTTP1_BODY_LENGTH);
    assert_int_equal(H.content_length, 12);
    assert_int_equal(H.nfields, 2);
    assert_null(H.method.p);
    assert_int_equal(H.flags, 0);

    assert_int_equal(RESP("HTTP/1.1 404 Not  Found\t\r\nContent-Length: 0\r\n\r\n"), 0);
    assert_int_equal(H.status, 404);
    assert_true(str_eq(H.reason, "Not  Found\t"));
    assert_int_equal(H.body, HTTP1_BODY_NONE);

    /* missing reason, with and without the SP */
    assert_int_equal(RESP("HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\n"), 0);
    assert_int_equal(H.status, 200);
    assert_int_equal(H.reason.n, 0);
    assert_int_equal(RESP("HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n"), 0);
    assert_int_equal(H.status, 200);
    assert_int_equal(H.reason.n, 0);
    assert_int_equal(H.body, HTTP1_BODY_LENGTH);
    /* responses need no Host */
    assert_null(H.host.p);
}

static void test_response_no_body(void **state)
{
    (void)state;
    assert_int_equal(RESP("HTTP/1.1 204 No Content\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(RESP("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(H.content_length, 100); /* still reported, for HEAD-like use */
    assert_int_equal(RESP("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(RESP("HTTP/1.1 100 Continue\r\n\r\n"), 0);
    assert_int_equal(H.status, 100);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(RESP("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(H.flags, HTTP1_F_UPGRADE);
    assert_int_equal(RESP("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    /* HEAD request: no body whatever the head says */
    static const char m[] = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
    assert_int_equal(resp_n(S(m), 1), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(H.content_length, 1234);
    static const char m2[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(resp_n(S(m2), 1), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(resp_n(S(m2), 0), 0);
    assert_int_equal(H.body, HTTP1_BODY_CHUNKED);
}

static void test_response_framing(void **state)
{
    (void)state;
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_CHUNKED);
    assert_int_equal(H.flags, HTTP1_F_TE);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_CHUNKED);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: Chunked\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_CHUNKED);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_EOF);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_EOF);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;x=1\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_EOF);
    /* no framing at all: read until close */
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_EOF);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_NONE);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n"), 0);
    assert_int_equal(H.content_length, 3);
    /* errors */
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     -HTTP1_E_CL_AND_TE);
    assert_int_equal(RESP("HTTP/1.1 204 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     -HTTP1_E_CL_AND_TE);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
                     -HTTP1_E_CL_CONFLICT);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), -HTTP1_E_CL_INVALID);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), -HTTP1_E_OBS_FOLD);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nX : a\r\n\r\n"), -HTTP1_E_FIELD_NAME);
}

static void test_response_connection(void **state)
{
    (void)state;
    assert_int_equal(RESP("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"), 0);
    assert_int_equal(H.minor, 0);
    assert_int_equal(H.flags, HTTP1_F_CLOSE);
    assert_int_equal(RESP("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"), 0);
    assert_int_equal(H.flags, 0);
    assert_int_equal(RESP("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"), 0);
    assert_int_equal(H.flags, HTTP1_F_CLOSE);
    /* TE in a 1.0 response is faulty framing: read to close */
    assert_int_equal(RESP("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    assert_int_equal(H.body, HTTP1_BODY_EOF);
    assert_true(H.flags & HTTP1_F_CLOSE);
}

static void test_status_line_errors(void **state)
{
    (void)state;
    assert_int_equal(RESP("HTTP/1.1 20 OK\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1 2000 OK\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1 600 Nope\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1 099 Nope\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1 abc OK\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1  200 OK\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1\t200 OK\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1 200\tOK\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/1.1 \r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("http/1.1 200 OK\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("ICY 200 OK\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), -HTTP1_E_STATUS);
    assert_int_equal(RESP("HTTP/2.0 200 OK\r\n\r\n"), -HTTP1_E_VERSION);
    assert_int_equal(RESP("HTTP/1.1 200 O\x01K\r\n\r\n"), -HTTP1_E_CTL);
    assert_int_equal(http1_parse_response(S("HTTP/1.1 200 OK\rX\r\n\r\n"), &LIM, 0, &H), -HTTP1_E_BARE_CR);
    assert_int_equal(http1_parse_response(S("HTTP/1.1 200 OK\n\r\n"), &LIM, 0, &H), -HTTP1_E_BARE_LF);
    /* too long status line */
    const struct http1_limits lim = {16, 4096, 10};
    assert_int_equal(http1_parse_response(S("HTTP/1.1 200 A very long reason\r\n\r\n"), &lim, 0, &H),
                     -HTTP1_E_START_LINE_LONG);
    /* obs-text in the reason is allowed */
    assert_int_equal(RESP("HTTP/1.1 200 \xc3\x9c" "berall\r\n\r\n"), 0);
}

/* ------------------------------------------------------------------ chunked */

struct cres {
    ssize_t r;     /* total consumed, or the error */
    int done;
    uint64_t data; /* data_total */
};

/* Feeds s[0..n) cut at the given offsets (ascending); stops at done or error. */
static struct cres chunk_cuts(const char *s, size_t n, size_t max_trailer, const size_t *cuts,
                              size_t ncuts)
{
    struct http1_chunked c;
    struct cres res = {0, 0, 0};
    size_t off = 0;

    http1_chunked_init(&c, max_trailer);
    for (size_t k = 0; k <= ncuts; k++) {
        size_t to = k < ncuts ? cuts[k] : n;
        if (to < off)
            continue;
        int done = -1;
        ssize_t r = http1_chunked_feed(&c, s + off, to - off, &done);
        if (r < 0) {
            assert_int_equal(done, 0);
            res.r = r;
            res.data = c.data_total;
            /* errors are sticky */
            assert_int_equal(http1_chunked_feed(&c, "0\r\n\r\n", 5, &done), r);
            return res;
        }
        assert_true((size_t)r <= to - off);
        res.r += r;
        if (done) {
            res.done = 1;
            res.data = c.data_total;
            /* once done, nothing more is consumed */
            assert_int_equal(http1_chunked_feed(&c, "0\r\n\r\n", 5, &done), 0);
            assert_int_equal(done, 1);
            return res;
        }
        assert_int_equal(done, 0);
        assert_int_equal((size_t)r, to - off); /* not done: everything belongs to the body */
        off = to;
    }
    res.data = c.data_total;
    return res;
}

/* Whole, byte by byte and 200 random splits must all agree; returns the whole result. */
static struct cres chunk_all(const char *s, size_t n, size_t max_trailer)
{
    static size_t cuts[70000];
    struct cres whole = chunk_cuts(s, n, max_trailer, NULL, 0);
    struct cres x;

    assert_true(n < sizeof(cuts) / sizeof(cuts[0]));
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    x = chunk_cuts(s, n, max_trailer, cuts, n);
    assert_int_equal(x.r, whole.r);
    assert_int_equal(x.done, whole.done);
    assert_int_equal(x.data, whole.data);

    for (int round = 0; round < 200; round++) {
        size_t nc = 0, pos = 0;
        while (n > 0) {
            pos += 1 + rnd() % (round % 2 ? 4 : 64);
            if (pos >= n)
                break;
            cuts[nc++] = pos;
        }
        x = chunk_cuts(s, n, max_trailer, cuts, nc);
        assert_int_equal(x.r, whole.r);
        assert_int_equal(x.done, whole.done);
        assert_int_equal(x.data, whole.data);
    }
    return whole;
}

#define CHUNK(lit, mt) chunk_all(S(lit), (mt))

static void test_chunked_valid(void **state)
{
    (void)state;
    struct cres r;

    r = CHUNK("5\r\nhello\r\n0\r\n\r\n", 0);
    assert_int_equal(r.r, 15);
    assert_true(r.done);
    assert_int_equal(r.data, 5);

    r = CHUNK("0\r\n\r\n", 0);
    assert_int_equal(r.r, 5);
    assert_true(r.done);
    assert_int_equal(r.data, 0);

    r = CHUNK("a\r\n0123456789\r\nA\r\n0123456789\r\n1F\r\n0123456789abcdefghijklmnopqrstu\r\n"
              "0000\r\n\r\n", 0);
    assert_true(r.done);
    assert_int_equal(r.data, 51);

    /* data is opaque: CR, LF, NUL and "0\r\n\r\n" inside chunks are just data */
    static const char opaque[] = "a\r\n0\r\n\r\n\n\r\0\r\n\r\n0\r\n\r\n";
    r = chunk_all(S(opaque), 0);
    assert_int_equal(r.r, sizeof(opaque) - 1);
    assert_true(r.done);
    assert_int_equal(r.data, 10);

    /* extensions */
    r = CHUNK("5;name=value\r\nhello\r\n3;a;b=\"q s\\\"\";c\r\nabc\r\n0;last\r\n\r\n", 0);
    assert_true(r.done);
    assert_int_equal(r.data, 8);
    r = CHUNK("5 ;a = b\t;c\r\nhello\r\n0\r\n\r\n", 0);
    assert_true(r.done);

    /* trailers */
    static const char tr[] = "5\r\nhello\r\n0\r\nExpires: never\r\nX-Sum:\t1 2\r\nEmpty:\r\n\r\n";
    r = chunk_all(S(tr), 256);
    assert_int_equal(r.r, sizeof(tr) - 1);
    assert_true(r.done);
    assert_int_equal(r.data, 5);

    /* leading zeros, 16 hex digits is the maximum */
    r = CHUNK("0000000000000003\r\nabc\r\n0\r\n\r\n", 0);
    assert_true(r.done);
    assert_int_equal(r.data, 3);
}

static void test_chunked_pipelined(void **state)
{
    (void)state;
    static const char m[] = "4\r\nwiki\r\n0\r\nX: y\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t body = strlen("4\r\nwiki\r\n0\r\nX: y\r\n\r\n");
    struct cres r = chunk_all(S(m), 64);
    assert_true(r.done);
    assert_int_equal(r.r, (ssize_t)body);

    struct http1_chunked c;
    int done = 0;
    http1_chunked_init(&c, 64);
    assert_int_equal(http1_chunked_feed(&c, S(m), &done), (ssize_t)body);
    assert_int_equal(done, 1);
    assert_int_equal(c.data_total, 4);
    /* the rest is the next request, untouched */
    size_t scan = 0;
    assert_int_equal(http1_scan_head(m + body, sizeof(m) - 1 - body, &LIM, &scan),
                     (ssize_t)(sizeof(m) - 1 - body));
}

static void test_chunked_incomplete(void **state)
{
    (void)state;
    struct cres r;
    r = CHUNK("5\r\nhel", 0);
    assert_int_equal(r.r, 6);
    assert_false(r.done);
    assert_int_equal(r.data, 3);
    r = CHUNK("5\r\nhello\r\n0\r\n\r", 0);
    assert_int_equal(r.r, 14);
    assert_false(r.done);
    /* a huge chunk just counts down */
    r = CHUNK("ffffffffffffffff\r\nabc", 0);
    assert_int_equal(r.r, 21);
    assert_false(r.done);
    assert_int_equal(r.data, 3);
}

static void test_chunked_invalid(void **state)
{
    (void)state;
    assert_int_equal(CHUNK("g\r\nabc\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("+5\r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("-5\r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("0x5\r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK(" 5\r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5 \r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5;\x01\r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5;a=\"x\r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5;a@b\r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    /* missing or wrong CRLF after data */
    assert_int_equal(CHUNK("5\r\nhelloX\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5\r\nhello0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5\r\nhello\rX0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("3\r\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    /* bare LF anywhere outside data */
    assert_int_equal(CHUNK("5\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5\r\nhello\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5\r\nhello\r\n0\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5\r\nhello\r\n0\r\n\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5\r\nhello\r\n0\r\nX: y\n\r\n", 64).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5;a=b\nhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    /* bare CR */
    assert_int_equal(CHUNK("5\rhello\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("5\r\nhello\r\n0\r\n\rX", 0).r, -HTTP1_E_CHUNK);
    /* bad trailers */
    assert_int_equal(CHUNK("0\r\nX: a\r\n b\r\n\r\n", 64).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("0\r\nX : a\r\n\r\n", 64).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("0\r\nNoColon\r\n\r\n", 64).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("0\r\n: a\r\n\r\n", 64).r, -HTTP1_E_CHUNK);
    assert_int_equal(CHUNK("0\r\nX: a\x01\r\n\r\n", 64).r, -HTTP1_E_CHUNK);
    static const char nul[] = "0\r\nX: a\0\r\n\r\n";
    assert_int_equal(chunk_all(S(nul), 64).r, -HTTP1_E_CHUNK);
}

static void test_chunked_limits(void **state)
{
    (void)state;
    /* 17 hex digits: overflow shape, rejected even with leading zeros */
    assert_int_equal(CHUNK("fffffffffffffffff\r\n", 0).r, -HTTP1_E_CHUNK_LARGE);
    assert_int_equal(CHUNK("00000000000000001\r\nx\r\n0\r\n\r\n", 0).r, -HTTP1_E_CHUNK_LARGE);
    assert_int_equal(CHUNK("10000000000000000\r\n", 0).r, -HTTP1_E_CHUNK_LARGE);

    /* trailer section over max_trailer */
    static const char tr[] = "0\r\nX-A: 1234567890\r\nX-B: 1234567890\r\n\r\n"; /* 2 x 17 bytes */
    struct cres r = chunk_all(S(tr), 34);
    assert_true(r.done);
    assert_int_equal(r.r, sizeof(tr) - 1);
    assert_int_equal(chunk_all(S(tr), 33).r, -HTTP1_E_CHUNK_LARGE);
    assert_int_equal(chunk_all(S(tr), 0).r, -HTTP1_E_CHUNK_LARGE);
    assert_true(CHUNK("0\r\n\r\n", 0).done);

    /* one size line with extensions: 4096 bytes OK, 4097 not */
    static char line[5000];
    memcpy(line, "1;", 2);
    memset(line + 2, 'e', 4094);
    memcpy(line + 4096, "\r\nx\r\n0\r\n\r\n", 10);
    r = chunk_all(line, 4106, 0);
    assert_true(r.done);
    assert_int_equal(r.r, 4106);
    memset(line + 2, 'e', 4095);
    memcpy(line + 4097, "\r\nx\r\n0\r\n\r\n", 10);
    assert_int_equal(chunk_all(line, 4107, 0).r, -HTTP1_E_CHUNK_LARGE);

    /* an endless extension is cut off at the limit, not buffered */
    static char endless[9000];
    memcpy(endless, "1;", 2);
    memset(endless + 2, 'e', sizeof(endless) - 2);
    struct http1_chunked c;
    int done;
    http1_chunked_init(&c, 0);
    assert_int_equal(http1_chunked_feed(&c, endless, sizeof(endless), &done), -HTTP1_E_CHUNK_LARGE);
}

static void test_chunked_args(void **state)
{
    (void)state;
    struct http1_chunked c;
    int done = 7;
    http1_chunked_init(&c, 0);
    assert_int_equal(http1_chunked_feed(&c, "", 0, &done), 0);
    assert_int_equal(done, 0);
    assert_int_equal(http1_chunked_feed(&c, NULL, 0, &done), 0);
    assert_int_equal(http1_chunked_feed(&c, "5\r\nhello\r\n0\r\n\r\n", 15, NULL), 15);
    assert_int_equal(http1_chunked_feed(NULL, "0\r\n\r\n", 5, &done), -HTTP1_E_CHUNK);
}

/* ------------------------------------------------------------------ helpers */

static void test_err_status_and_str(void **state)
{
    (void)state;
    static const struct {
        int err, status;
    } map[] = {
        {HTTP1_E_SYNTAX, 400},          {HTTP1_E_BARE_LF, 400},       {HTTP1_E_BARE_CR, 400},
        {HTTP1_E_CTL, 400},             {HTTP1_E_OBS_FOLD, 400},      {HTTP1_E_FIELD_NAME, 400},
        {HTTP1_E_METHOD, 400},          {HTTP1_E_TARGET, 400},        {HTTP1_E_VERSION, 505},
        {HTTP1_E_STATUS, 502},          {HTTP1_E_START_LINE_LONG, 414}, {HTTP1_E_HEAD_LARGE, 431},
        {HTTP1_E_TOO_MANY_FIELDS, 431}, {HTTP1_E_CL_INVALID, 400},    {HTTP1_E_CL_CONFLICT, 400},
        {HTTP1_E_CL_AND_TE, 400},       {HTTP1_E_TE_UNSUPPORTED, 501}, {HTTP1_E_TE_INVALID, 400},
        {HTTP1_E_HOST, 400},            {HTTP1_E_CHUNK, 400},         {HTTP1_E_CHUNK_LARGE, 400},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        assert_int_equal(http1_err_status(map[i].err), map[i].status);
        assert_int_equal(http1_err_status(-map[i].err), map[i].status);
        const char *s = http1_err_str(-map[i].err);
        assert_non_null(s);
        assert_true(strlen(s) > 3);
        assert_string_equal(s, http1_err_str(map[i].err));
        assert_string_not_equal(s, http1_err_str(9999));
        /* all distinct */
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(s, http1_err_str(map[j].err));
    }
    assert_non_null(http1_err_str(0));
    assert_non_null(http1_err_str(9999));
    assert_non_null(http1_err_str(-9999));
    assert_non_null(http1_err_str(INT32_MIN + 1));
    assert_int_equal(http1_err_status(9999), 400);
}

static void test_name_list_find(void **state)
{
    (void)state;
    struct http1_str n = {"Content-Length", 14};
    assert_true(http1_name_is(&n, "content-length"));
    assert_false(http1_name_is(&n, "content-lengt"));
    assert_false(http1_name_is(&n, "content-lengths"));
    struct http1_str odd = {"\r", 1};
    assert_false(http1_name_is(&odd, "-"));
    struct http1_str at = {"@", 1};
    assert_false(http1_name_is(&at, "`"));

    struct http1_str v = {"keep-alive ,\tUpgrade, ,foo", 26};
    assert_true(http1_list_has(&v, "upgrade"));
    assert_true(http1_list_has(&v, "keep-alive"));
    assert_true(http1_list_has(&v, "foo"));
    assert_false(http1_list_has(&v, "close"));
    assert_false(http1_list_has(&v, "keep"));
    struct http1_str one = {"close", 5};
    assert_true(http1_list_has(&one, "close"));
    struct http1_str part = {"closed", 6};
    assert_false(http1_list_has(&part, "close"));

    assert_int_equal(REQ("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nCookie: c\r\n\r\n"), 0);
    assert_int_equal(http1_find(&H, "host"), 0);
    assert_int_equal(http1_find(&H, "x-a"), 1);
    assert_int_equal(http1_find(&H, "cookie"), 3);
    assert_int_equal(http1_find(&H, "accept"), -1);
    assert_int_equal(http1_find(&H, "x-"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_simple),
        cmocka_unit_test(test_post_content_length),
        cmocka_unit_test(test_head_and_other_methods),
        cmocka_unit_test(test_content_length_zero_is_none),
        cmocka_unit_test(test_post_chunked),
        cmocka_unit_test(test_value_ows_trimmed_and_obs_text),
        cmocka_unit_test(test_http10),
        cmocka_unit_test(test_connection_flags),
        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_method_errors),
        cmocka_unit_test(test_target_errors),
        cmocka_unit_test(test_version_errors),
        cmocka_unit_test(test_field_name_errors),
        cmocka_unit_test(test_obs_fold),
        cmocka_unit_test(test_ctl_in_value),
        cmocka_unit_test(test_bare_lf_cr),
        cmocka_unit_test(test_scan_detects_early),
        cmocka_unit_test(test_scan_pipelined_and_bytewise),
        cmocka_unit_test(test_content_length_rules),
        cmocka_unit_test(test_cl_and_te),
        cmocka_unit_test(test_te_variants),
        cmocka_unit_test(test_host_rules),
        cmocka_unit_test(test_start_line_limit),
        cmocka_unit_test(test_head_size_limit),
        cmocka_unit_test(test_field_count_limit),
        cmocka_unit_test(test_parse_requires_exact_head),
        cmocka_unit_test(test_response_basic),
        cmocka_unit_test(test_response_no_body),
        cmocka_unit_test(test_response_framing),
        cmocka_unit_test(test_response_connection),
        cmocka_unit_test(test_status_line_errors),
        cmocka_unit_test(test_chunked_valid),
        cmocka_unit_test(test_chunked_pipelined),
        cmocka_unit_test(test_chunked_incomplete),
        cmocka_unit_test(test_chunked_invalid),
        cmocka_unit_test(test_chunked_limits),
        cmocka_unit_test(test_chunked_args),
        cmocka_unit_test(test_err_status_and_str),
        cmocka_unit_test(test_name_list_find),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
