/*
 * auth — capabilities for browsers (I1, I4): one-time links and the session
 * cookies they are redeemed into.
 *
 * Owns the in-memory session table (hmap keyed by the SHA-256 of the cookie
 * value), which mirrors the sessions table of the store so that checking a
 * request costs one hash and one lookup, no SQL, and the same for the
 * unredeemed links (counted per owner for [quota] links), so that a made-up
 * token costs no write. Tokens exist in clear only on their way to the
 * user; everything kept is a hash.
 *
 * Used only by the registry, under its state lock: lookups under the read
 * lock, anything that changes a session or a link under the write lock.
 */
#ifndef JG_AUTH_H
#define JG_AUTH_H

#include <stdint.h>
#include <sys/types.h>

#include "token.h"

struct store;
struct auth;

struct auth *auth_new(struct store *st);
void auth_free(struct auth *a);
/* Loads unexpired sessions and links from the store. 0 or -errno. */
int auth_load(struct auth *a, int64_t now);

/* Mints a one-time link token for alias (owned by uid), valid ttl seconds;
 * -EDQUOT when uid has quota unredeemed links already (0: no quota). */
int auth_link_new(struct auth *a, const char *alias, uid_t uid, unsigned quota, int64_t ttl,
                  char token[TOKEN_STR_LEN + 1], int64_t *expires);
/* How many unredeemed links uid has. */
unsigned auth_links_of(struct auth *a, uid_t uid);

/*
 * The read-only half of a redeem, from memory (under the read lock): 0 when
 * tok is a live link of alias, else -EINVAL (not a token), -ENOENT (unknown,
 * used, or another app's) or -ETIMEDOUT. A made-up token stops here.
 */
int auth_link_check(struct auth *a, const char *alias, const char *tok, size_t len);

/*
 * Redeems a link token presented on alias's host and, when it is valid,
 * mints a session for alias owned by uid (the route's owner), valid
 * session_ttl seconds. Returns 0 with the cookie value in cookie, -ENOENT
 * (unknown, used, or another app's), -ETIMEDOUT (expired), -EINVAL (not a
 * token), or another negative errno.
 */
int auth_redeem(struct auth *a, const char *alias, const char *tok, size_t len, uid_t uid,
                int64_t session_ttl, char cookie[TOKEN_STR_LEN + 1]);

/* 1 if the cookie value is a live session for alias (and gives its owner's uid). */
int auth_session_ok(struct auth *a, const char *alias, const char *val, size_t len, uid_t *uid);
/* The same, also giving the session's hash, to re-check it later without the
 * cookie, and when it ends (wall clock, seconds; expires may be NULL). */
int auth_session_check(struct auth *a, const char *alias, const char *val, size_t len, uid_t *uid,
                       uint8_t hash[TOKEN_HASH_LEN], int64_t *expires);
/* 1 if the session with this hash is still live for alias. */
int auth_session_alive(struct auth *a, const char *alias, const uint8_t hash[TOKEN_HASH_LEN]);

/* Ends the session with this cookie value (if any). */
void auth_logout(struct auth *a, const char *val, size_t len);

/* Forgets every session and link of alias (the store cascades on route removal). */
void auth_drop_alias(struct auth *a, const char *alias);

/* Drops expired sessions and links from memory and expired rows from the store. */
void auth_expire(struct auth *a, int64_t now);

#endif
