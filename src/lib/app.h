/*
 * app — what a registration may say about an app, the same for the CLI, the
 * agent, the control socket and the tunnel's control stream
 * (docs/control-protocol.md, docs/tunnel-protocol.md): its name, and the
 * lifetime of its one-time links.
 *
 * Owns nothing; pure functions, any thread.
 */
#ifndef JG_APP_H
#define JG_APP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define APP_NAME_MAX 64                 /* a name: 1-64 of A-Z a-z 0-9 . _ - */
#define APP_NAME_RULE "1-64 of A-Z a-z 0-9 . _ -"
#define APP_LINK_TTL_MAX (7 * 86400)    /* a link lives 1 s to 7 days */
#define APP_LINK_TTL_RULE "a number of seconds from 1 to 604800"

/* 1 if ch is one of A-Z a-z 0-9 . _ - */
int app_name_char_ok(char ch);
/* 1 if s is 1..max of them (names of apps, an agent's local names of its
 * targets). */
int app_name_valid(const char *s, size_t max);

/* 1 if ttl is a link lifetime the gateway grants. */
int app_link_ttl_valid(int64_t ttl);

/* The "ttl" member of a request: dflt when absent, else it must be valid.
 * 0, or -EINVAL (answer with APP_LINK_TTL_RULE). */
int app_json_ttl(const json_t *req, int64_t dflt, int64_t *ttl);

#endif
