/*
 * reserved — the gateway's own URL space on every app host, /_jobgate/...:
 *   /_jobgate/redeem/<token>[?next=/path]  one-time link -> session cookie (I1)
 *   /_jobgate/logout                       ends the session
 *   /_jobgate/status                       {"alias","state"} for a session holder
 * Owns nothing; answers into the browser connection's output buffer.
 */
#ifndef JG_RESERVED_H
#define JG_RESERVED_H

#include <event2/buffer.h>

#include "http1.h"
#include "route.h"

struct gateway;

#define RESERVED_PREFIX "/_jobgate/"

/* 1 if the request target is under /_jobgate/. */
int reserved_match(const struct http1_str *target);

/* Answers a reserved request for alias. Takes the state lock itself: for
 * reading, and for writing only to redeem a link or end a live session, so
 * that requests with made-up tokens cannot serialise the workers on SQLite.
 * Returns the status sent. */
int reserved_handle(struct gateway *gw, const char *alias, const struct http1_head *h,
                    struct evbuffer *out, int close);

#endif
