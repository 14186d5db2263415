/* reserved — see reserved.h. */
#include "reserved.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "gateway.h"
#include "page.h"
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

static int session_ok(struct gateway *gw, const char *alias, const struct http1_head *h)
{
    struct http1_str vals[4];
    int n = reqhead_cookies(h, REQHEAD_COOKIE, vals, 4);
    for (int i = 0; i < n; i++)
        if (auth_session_ok(gw->auth, alias, vals[i].p, vals[i].n, NULL))
            return 1;
    return 0;
}

static int redeem(struct gateway *gw, const char *alias, const struct http1_head *h,
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
    gateway_wrlock(gw);
    const struct route *r = route_find(gw->routes, alias, strlen(alias));
    int rc = r ? auth_redeem(gw->auth, alias, tok, len, r->uid, gw->cfg->session_ttl, cookie)
               : -ENOENT;
    gateway_unlock(gw);
    if (!r) {
        page_error(out, 404, NULL, close, NULL, 0);
        return 404;
    }
    if (rc == -ETIMEDOUT) {
        page_error(out, 403, "This link has expired. Ask for a fresh one with 'jobgate link'.",
                   close, NULL, 0);
        return 403;
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

static int logout(struct gateway *gw, const char *alias, const struct http1_head *h,
                  struct evbuffer *out, int close, int head_only)
{
    struct http1_str vals[4];
    int n = reqhead_cookies(h, REQHEAD_COOKIE, vals, 4);
    for (int i = 0; i < n; i++) {
        gateway_rdlock(gw);
        int live = auth_session_ok(gw->auth, alias, vals[i].p, vals[i].n, NULL);
        gateway_unlock(gw);
        if (!live)
            continue; /* only a live session of this app costs a write */
        gateway_wrlock(gw);
        auth_logout(gw->auth, vals[i].p, vals[i].n);
        gateway_revoked(gw);
        gateway_unlock(gw);
    }
    static const char body[] =
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Logged out</title></head>"
        "<body><h1>Logged out</h1><p>Your session for this app has ended.</p></body></html>\n";
    page_send(out, 200, "text/html; charset=utf-8", body, sizeof(body) - 1, close,
              "Set-Cookie: " REQHEAD_COOKIE "=" COOKIE_ATTRS "; Max-Age=0\r\n", head_only);
    return 200;
}

static int status(struct gateway *gw, const char *alias, const struct http1_head *h,
                  struct evbuffer *out, int close, int head_only)
{
    gateway_rdlock(gw);
    const struct route *r = route_find(gw->routes, alias, strlen(alias));
    int found = r != NULL, starting = r && r->starting, ok = r && session_ok(gw, alias, h);
    gateway_unlock(gw);
    if (!found) {
        page_error(out, 404, NULL, close, NULL, head_only);
        return 404;
    }
    if (!ok) {
        page_error(out, 403, NULL, close, NULL, head_only);
        return 403;
    }
    char body[256];
    int n = snprintf(body, sizeof(body), "{\"alias\":\"%s\",\"state\":\"%s\"}\n", alias,
                     starting ? "starting" : "ready");
    page_send(out, 200, "application/json", body, (size_t)n, close, NULL, head_only);
    return 200;
}

int reserved_handle(struct gateway *gw, const char *alias, const struct http1_head *h,
                    struct evbuffer *out, int close)
{
    int head_only = http1_name_is(&h->method, "head");
    if (h->target.n > sizeof(RESERVED_PREFIX "redeem/") - 1 &&
        memcmp(h->target.p, RESERVED_PREFIX "redeem/", sizeof(RESERVED_PREFIX "redeem/") - 1) == 0)
        return redeem(gw, alias, h, out, close);
    if (path_is(&h->target, RESERVED_PREFIX "logout"))
        return logout(gw, alias, h, out, close, head_only);
    if (path_is(&h->target, RESERVED_PREFIX "status"))
        return status(gw, alias, h, out, close, head_only);
    page_error(out, 404, "There is no such page in the gateway's reserved space /_jobgate/.",
               close, NULL, head_only);
    return 404;
}
