/* reserved — see reserved.h. */
#include "reserved.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "page.h"
#include "registry.h"
#include "reqhead.h"
#include "token.h"
#include "util.h"

#define COOKIE_ATTRS "; Path=/; HttpOnly; Secure; SameSite=Lax"

int reserved_match(const struct http1_str *target)
{
    return target->n >= sizeof(RESERVED_PREFIX) - 1 &&
           memcmp(target->p, RESERVED_PREFIX, sizeof(RESERVED_PREFIX) - 1) == 0;
}

/* Path part of the target (without the query) equals lit. */
static int path_is(const struct http1_str *t, const char *lit)
{
    size_t n = strlen(lit);
    return t->n >= n && memcmp(t->p, lit, n) == 0 && (t->n == n || t->p[n] == '?');
}

static int redeem(struct registry *reg, const char *alias, const struct http1_head *h,
                  struct evbuffer *out, int close)
{
    static const char pre[] = RESERVED_PREFIX "redeem/";
    const char *tok = h->target.p + sizeof(pre) - 1;
    size_t len = h->target.n - (sizeof(pre) - 1);
    const char *q = memchr(tok, '?', len);
    char cookie[TOKEN_STR_LEN + 1], next[2048], extra[256];

    if (q)
        len = (size_t)(q - tok);
    if (!http1_name_is(&h->method, "get")) {
        /* HEAD or a link previewer must not use up the link. */
        page_error(out, 405, "A link is redeemed with GET.", close, "Allow: GET\r\n", 0);
        return 405;
    }
    if (!token_syntax_ok(tok, len)) {
        page_error(out, 403, "This link is not valid. Ask for a fresh one with 'jobgate link'.",
                   close, NULL, 0);
        return 403;
    }
    int rc = registry_redeem(reg, alias, tok, len, cookie);
    if (rc == -ENXIO) {
        page_error(out, 404, NULL, close, NULL, 0);
        return 404;
    }
    if (rc == -ETIMEDOUT) {
        page_error(out, 403, "This link has expired. Ask for a fresh one with 'jobgate link'.",
                   close, NULL, 0);
        return 403;
    }
    if (rc == -EBUSY || rc == -EROFS || rc == -ENOSPC || rc == -ENOMEM || rc == -EIO) {
        /* The gateway cannot write (its state is locked, read-only or full):
         * the link is still good, so say so and when to try again. */
        char detail[300];
        snprintf(detail, sizeof(detail), "The gateway cannot open a session right now: %s. "
                 "Your link is still good; try it again in a minute.", registry_why(rc));
        page_error(out, 503, detail, close, "Retry-After: 60\r\n", 0);
        return 503;
    }
    if (rc < 0) {
        page_error(out, 403,
                   "This link is not valid: it was used already, or it belongs to another app. "
                   "Ask for a fresh one with 'jobgate link'.",
                   close, NULL, 0);
        return 403;
    }
    reqhead_next(&h->target, next, sizeof(next));
    snprintf(extra, sizeof(extra), "Set-Cookie: " REQHEAD_COOKIE "=%s" COOKIE_ATTRS "\r\n", cookie);
    page_redirect(out, next, close, extra);
    memset(cookie, 0, sizeof(cookie));
    memset(extra, 0, sizeof(extra));
    return 303;
}

/* GET (or HEAD) shows a button; only a POST from the app's own pages ends
 * the session: an <img> or a form on another app's page cannot. */
static int logout(struct registry *reg, const char *alias, const struct http1_head *h,
                  struct evbuffer *out, int close, int head_only)
{
    if (http1_name_is(&h->method, "get") || http1_name_is(&h->method, "head")) {
        static const char form[] =
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Log out</title></head>"
            "<body><h1>Log out of this app?</h1><form method=\"post\" action=\"" RESERVED_PREFIX
            "logout\"><button type=\"submit\">Log out</button></form></body></html>\n";
        page_send(out, 200, "text/html; charset=utf-8", form, sizeof(form) - 1, close,
                  "Cache-Control: no-store\r\n", head_only);
        return 200;
    }
    if (!http1_name_is(&h->method, "post")) {
        page_error(out, 405, "Log out with POST.", close, "Allow: GET, HEAD, POST\r\n", 0);
        return 405;
    }
    const char *why = reqhead_cross_site(h);
    if (why) {
        char detail[300];
        snprintf(detail, sizeof(detail), "Not logged out: %s.", why);
        page_error(out, 403, detail, close, NULL, 0);
        return 403;
    }
    struct http1_str vals[4];
    int n = reqhead_cookies(h, REQHEAD_COOKIE, vals, 4);
    registry_logout(reg, alias, vals, n);
    static const char body[] =
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Logged out</title></head>"
        "<body><h1>Logged out</h1><p>Your session for this app has ended.</p></body></html>\n";
    page_send(out, 200, "text/html; charset=utf-8", body, sizeof(body) - 1, close,
              "Set-Cookie: " REQHEAD_COOKIE "=" COOKIE_ATTRS "; Max-Age=0\r\n", head_only);
    return 200;
}

static int status(struct registry *reg, const char *alias, const struct http1_head *h,
                  struct evbuffer *out, int close, int head_only)
{
    struct http1_str vals[4];
    int n = reqhead_cookies(h, REQHEAD_COOKIE, vals, 4);
    struct route r;
    int rc = registry_status(reg, alias, vals, n, &r);
    if (rc == -ENXIO) {
        page_error(out, 404, NULL, close, NULL, head_only);
        return 404;
    }
    if (rc < 0) {
        page_error(out, 403, NULL, close, NULL, head_only);
        return 403;
    }
    /* Every string here is ours: an alias (a DNS label) and fixed words. */
    char body[512], jobf[32] = "", reach[64], seen[48] = "";
    if (r.job)
        snprintf(jobf, sizeof(jobf), ",\"job\":%u", (unsigned)r.job);
    route_reach(&r, reach, sizeof(reach));
    if (r.kind == ROUTE_TUNNEL)
        snprintf(seen, sizeof(seen), ",\"seen\":%lld", (long long)(r.tunnel ? now_real() : r.seen));
    int blen = snprintf(body, sizeof(body),
                        "{\"alias\":\"%s\",\"state\":\"%s\",\"reach\":\"%s\"%s%s}\n", alias,
                        route_state(&r), reach, jobf, seen);
    page_send(out, 200, "application/json", body, (size_t)blen, close, NULL, head_only);
    return 200;
}

int reserved_is_redeem(const struct http1_str *target)
{
    static const char pre[] = RESERVED_PREFIX "redeem/";
    return target->n > sizeof(pre) - 1 && memcmp(target->p, pre, sizeof(pre) - 1) == 0;
}

int reserved_handle(struct registry *reg, const char *alias, const struct http1_head *h,
                    struct evbuffer *out, int close)
{
    int head_only = http1_name_is(&h->method, "head");
    if (reserved_is_redeem(&h->target))
        return redeem(reg, alias, h, out, close);
    if (path_is(&h->target, RESERVED_PREFIX "logout"))
        return logout(reg, alias, h, out, close, head_only);
    if (path_is(&h->target, RESERVED_PREFIX "status"))
        return status(reg, alias, h, out, close, head_only);
    page_error(out, 404, "There is no such page in the gateway's reserved space /_jobgate/.",
               close, NULL, head_only);
    return 404;
}
