/*
 * page — the gateway's own HTTP responses: short human pages for errors
 * (404 unknown app, 403 no session, 502 app not reachable, 503 app
 * starting, 400 and friends for bad requests) and small redirects.
 *
 * Owns nothing; any thread, no lock. Every page is a complete HTTP/1.1 response with
 * Content-Length, no-store caching and headers that keep it inert
 * (no scripts, no framing, no sniffing).
 */
#ifndef JG_PAGE_H
#define JG_PAGE_H

#include <event2/buffer.h>

/* Reason phrase for a status ("Not Found"); "Error" for unknown codes. */
const char *page_reason(int status);

/*
 * Appends a complete error response. detail is plain text (escaped here),
 * may be NULL for the default sentence of that status. close: add
 * "Connection: close". extra: further header lines, each ending in CRLF, or
 * NULL. head_only: HEAD request, no body bytes.
 */
void page_error(struct evbuffer *out, int status, const char *detail, int close, const char *extra,
                int head_only);

/*
 * Appends the 503 of an app whose agent sleeps (docs/policy.md) with
 * Retry-After: retry seconds: for a browser (html) a short page that tries
 * again by itself after that long, else one line of plain text.
 */
void page_waking(struct evbuffer *out, unsigned retry, int html, int close, int head_only);

/* Appends a response with a given content type and body (for JSON, small pages). */
void page_send(struct evbuffer *out, int status, const char *ctype, const char *body, size_t len,
               int close, const char *extra, int head_only);

/* Appends "303 See Other" to location (which must already be a safe path). */
void page_redirect(struct evbuffer *out, const char *location, int close, const char *extra);

#endif
