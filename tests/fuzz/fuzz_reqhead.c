/*
 * libFuzzer target for the request pipeline's rules on heads
 * (src/gateway/reqhead.c): Host to alias, absolute-form targets, the Cookie
 * and Set-Cookie rewrites, the cross-site check, next= and log paths, and
 * the heads forwarded each way. The input is a request head, then (after
 * the first blank line) a response head. Invariants are checked with
 * abort(): outputs stay within their bounds and never carry the gateway's
 * cookie onward.
 */
#include <stdint.h>
#include <stdio.h>
#include <strings.h>
#include <sys/types.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "fuzz.h"
#include "http1.h"
#include "reqhead.h"


static const struct http1_limits lim = {1024, 8192, 64};
static struct http1_head h;

static void cookies(const struct http1_head *hd)
{
    struct http1_str vals[4];
    int n = reqhead_cookies(hd, REQHEAD_COOKIE, vals, 4);
    CHECK(n >= 0 && n <= 4);
    for (size_t f = 0; f < hd->nfields; f++) {
        const struct http1_str *v = &hd->fields[f].value;
        size_t cap = 2 * v->n + 2;
        char *out = malloc(cap);
        int k = reqhead_cookie_strip(v, REQHEAD_COOKIE, out, cap);
        CHECK(k >= 0 && (size_t)k <= cap);
        /* Stripping is idempotent: no gateway cookie is left to strip. */
        struct http1_str once = {out, (size_t)k};
        char *again = malloc(cap);
        int k2 = reqhead_cookie_strip(&once, REQHEAD_COOKIE, again, cap);
        CHECK(k2 == k && memcmp(again, out, (size_t)k) == 0);
        free(again);
        k = reqhead_set_cookie(v, out, cap);
        CHECK(k == -1 || (k > 0 && (size_t)k <= cap));
        if (k > 0)
            CHECK(strncasecmp(out, REQHEAD_COOKIE "=", sizeof(REQHEAD_COOKIE)) != 0);
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    size_t scan = 0;
    ssize_t r = http1_scan_head(p, size, &lim, &scan);
    if (r <= 0 || http1_parse_request(p, (size_t)r, &lim, &h) < 0)
        return 0;
    char alias[64], next[2048], path[256];
    if (h.host.p && reqhead_alias(&h.host, "apps.example.org", alias, sizeof(alias)) == 0)
        CHECK(strlen(alias) >= 1 && strlen(alias) <= 63);
    (void)reqhead_absolute_form(&h);
    (void)reqhead_cross_site(&h);
    (void)reqhead_wants_html(&h);
    if (reqhead_next(&h.target, next, sizeof(next)) == 0)
        CHECK(next[0] == '/' && next[1] != '/' && !strchr(next, '\\') && !strchr(next, '\r'));
    reqhead_log_path(&h.target, path, sizeof(path));
    /* A log path never carries a redeem token, a quote or a blank (each odd byte
     * becomes '?'), nor more than the target's path. */
    CHECK(!strchr(path, '"') && !strchr(path, ' ') && strlen(path) <= h.target.n + 11);
    if (h.target.n >= 17 && memcmp(h.target.p, "/_jobgate/redeem/", 17) == 0)
        CHECK(strcmp(path, "/_jobgate/redeem/[redacted]") == 0);
    /* Safe methods are never refused as cross-site. */
    if (!(h.flags & HTTP1_F_UPGRADE) && h.method.n == 3 && memcmp(h.method.p, "GET", 3) == 0)
        CHECK(reqhead_cross_site(&h) == NULL);
    cookies(&h);
    struct evbuffer *out = evbuffer_new();
    reqhead_forward_request(out, &h, "192.0.2.1");
    size_t flen = evbuffer_get_length(out);
    const char *fw = (const char *)evbuffer_pullup(out, -1);
    CHECK(flen >= 4 && memcmp(fw + flen - 4, "\r\n\r\n", 4) == 0);
    evbuffer_free(out);

    /* The rest of the input as the app's response to it. */
    size_t rest = size - (size_t)r;
    scan = 0;
    ssize_t rr = http1_scan_head(p + r, rest, &lim, &scan);
    if (rr > 0 && http1_parse_response(p + r, (size_t)rr, &lim, 0, &h) == 0) {
        cookies(&h);
        out = evbuffer_new();
        reqhead_forward_response(out, &h, 1);
        flen = evbuffer_get_length(out);
        fw = (const char *)evbuffer_pullup(out, -1);
        CHECK(flen >= 4 && memcmp(fw + flen - 4, "\r\n\r\n", 4) == 0);
        evbuffer_free(out);
    }
    return 0;
}
