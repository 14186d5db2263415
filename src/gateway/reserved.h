/*
 * reserved — the gateway's own URL space on every app host, /_jobgate/...:
 *   /_jobgate/redeem/<token>[?next=/path]  one-time link -> session cookie (I1)
 *   /_jobgate/logout                       POST ends the session (not from another
 *                                          app's page); GET shows a button for it
 *   /_jobgate/status                       {"alias","state"[,"job"]} for a session holder
 * Owns nothing; answers into the browser connection's output buffer. Any
 * worker thread; no lock (the registry locks inside).
 */
#ifndef JG_RESERVED_H
#define JG_RESERVED_H

#include <event2/buffer.h>

#include "http1.h"
#include "route.h"

struct registry;

#define RESERVED_PREFIX "/_jobgate/"

/* 1 if the request target is under /_jobgate/. */
int reserved_match(const struct http1_str *target);
/* 1 if it is a redeem (/_jobgate/redeem/...). */
int reserved_is_redeem(const struct http1_str *target);

/* Answers a reserved request for alias (the registry decides: a made-up
 * token or cookie costs no write). Returns the status sent. */
int reserved_handle(struct registry *reg, const char *alias, const struct http1_head *h,
                    struct evbuffer *out, int close);

#endif
