/*
 * reqhead — what the request pipeline reads from and writes into message
 * heads: the app's alias from Host, the gateway's session cookie, the safe
 * `next` path of a redeem link, and the heads forwarded in each direction.
 *
 * Owns nothing; pure functions over http1 heads (any thread, no lock), so
 * that each rule can be unit-tested without sockets.
 *
 * Rules (I4, I5 and RFC 9110 7.6.1):
 *  - hop-by-hop fields (Connection, Keep-Alive, Proxy-Connection, TE,
 *    Trailer, Transfer-Encoding, Upgrade, Proxy-Authorization,
 *    Proxy-Authenticate and every field named in Connection) never cross
 *    the gateway; framing is re-stated by the gateway from the parsed head;
 *  - X-Forwarded-* and Forwarded from the browser are dropped and replaced by
 *    the gateway's own X-Forwarded-For/-Proto/-Host;
 *  - the gateway's cookie is cut out of every Cookie field before the
 *    request reaches the app; a Cookie field left empty is dropped;
 *  - an app's cookies are host-only: Domain is cut out of every Set-Cookie
 *    (sibling apps share a registrable domain), and an app cannot set the
 *    gateway's cookie.
 */
#ifndef JG_REQHEAD_H
#define JG_REQHEAD_H

#include <event2/buffer.h>
#include <stddef.h>

#include "http1.h"

#define REQHEAD_COOKIE "__Host-jobgate"

/*
 * Extracts the alias from a Host value "<alias>.<domain>[:port]" (case-
 * insensitive, one trailing dot allowed). Writes the lower-cased alias into
 * out (NUL-terminated). Returns 0, or -ENOENT when the host is not a single
 * label under domain.
 */
int reqhead_alias(const struct http1_str *host, const char *domain, char *out, size_t outlen);

/*
 * Absolute-form request targets (RFC 9112 3.2.2: a server MUST accept them):
 * "http[s]://authority/path?q" becomes target "/path?q" (or "/") and the
 * authority replaces the Host value, so that routing and the session check
 * follow one authority. Returns 1 when h was rewritten, 0 for origin-form,
 * -1 for any other form (authority-form, "*", userinfo, empty authority).
 */
int reqhead_absolute_form(struct http1_head *h);

/*
 * Finds up to max values of the cookie called name in the Cookie fields of
 * h. Returns how many were found.
 */
int reqhead_cookies(const struct http1_head *h, const char *name, struct http1_str *vals, int max);

/* 1 when the request comes from a browser that shows a page: it navigates
 * (Sec-Fetch-Mode: navigate) or accepts text/html. */
int reqhead_wants_html(const struct http1_head *h);

/*
 * Writes into out (size outlen) the Cookie value with every cookie called
 * name removed. Returns the length written, or -1 when out is too small.
 */
int reqhead_cookie_strip(const struct http1_str *value, const char *name, char *out, size_t outlen);

/*
 * Why a request must not reach its app, or NULL (cross-app isolation: every
 * app lives under the gateway's domain, so a page of one app is "same-site"
 * to all the others and the browser sends them its cookies). A request that
 * can change state (a method other than GET, HEAD and OPTIONS, or an upgrade
 * such as a WebSocket) is refused when its Sec-Fetch-Site is same-site or
 * cross-site, or when it has an Origin other than https://<its Host>
 * ("null" included). Requests without either field (not a browser's, or an
 * old one) pass: the session cookie is still needed.
 */
const char *reqhead_cross_site(const struct http1_head *h);

/*
 * An app's Set-Cookie value as the browser gets it: host-only, every Domain
 * attribute dropped, so that a cookie one app sets reaches no other app
 * (they all live under the gateway's domain). Writes it into out and returns
 * its length, or -1 when the field is dropped whole: a cookie named like the
 * gateway's own, an empty one, or out too small (2 * value length + 2 is
 * always enough).
 */
int reqhead_set_cookie(const struct http1_str *value, char *out, size_t outlen);

/*
 * From a request target "/_jobgate/redeem/TOKEN?next=..." takes the next
 * parameter, percent-decodes it and accepts it only as a path on the same
 * host: it starts with one '/', not "//", and has no control byte nor
 * backslash. Space, non-ASCII and " < > ^ ` { | } are percent-encoded again
 * so that the result is safe in a Location field. Writes it to out and
 * returns 0; returns -EINVAL (out = "/") when absent or unsafe.
 */
int reqhead_next(const struct http1_str *target, char *out, size_t outlen);

/* Path of a target for logs: query string dropped, redeem tokens redacted,
 * non-printable bytes replaced, cut at outlen. Never carries a secret. */
void reqhead_log_path(const struct http1_str *target, char *out, size_t outlen);

/* 1 if the field name is hop-by-hop for this head (fixed list or named in Connection). */
int reqhead_hop_by_hop(const struct http1_head *h, const struct http1_str *name);

/* Appends the request head sent to the app. client_ip is the browser's address. */
void reqhead_forward_request(struct evbuffer *out, const struct http1_head *h,
                             const char *client_ip);

/* Appends the response head sent to the browser. close: the gateway will
 * close the browser connection after this response (adds Connection: close). */
void reqhead_forward_response(struct evbuffer *out, const struct http1_head *h, int close);

#endif
