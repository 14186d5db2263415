/*
 * store — durable state in SQLite (WAL mode): routes, one-time links,
 * sessions, batch jobs and an audit trail. One connection, used only by the registry
 * (and auth, on its behalf) with the registry's state lock held for
 * writing, so by one thread at a time (hence SQLITE_OPEN_NOMUTEX); requests
 * are admitted from memory under the read lock and never reach SQLite.
 * Every write is one short BEGIN IMMEDIATE transaction.
 *
 * Owns the sqlite3 handle and its prepared statements. Stores tokens only as
 * their SHA-256 hashes (I4); it never sees a token itself.
 *
 * Schema version is kept in PRAGMA user_version; store_open creates or
 * upgrades the schema and refuses a newer one with a clear error.
 */
#ifndef JG_STORE_H
#define JG_STORE_H

#include <stdint.h>
#include <sys/types.h>

#include "job.h"
#include "route.h"

#define STORE_HASH_LEN 32

struct store;

/* Opens (creating when needed, mode 0600) the database at path. 0 or -errno;
 * the reason is logged. Every write below returns -EBUSY (another process
 * holds the database's lock), -EROFS, -ENOSPC or -EIO when SQLite cannot
 * write; nothing of it is then in memory either (store_why says it for users). */
int store_open(struct store **out, const char *path);
void store_close(struct store *s);
/* A sentence for users about a failed write's -errno. */
const char *store_why(int err);

/* Routes. put replaces an existing row with the same alias. Removing a route
 * also removes its links and sessions. */
int store_route_put(struct store *s, const struct route *r);
int store_route_delete(struct store *s, const char *alias);
/* Calls cb for every stored route; stops early if cb returns nonzero. */
int store_route_load(struct store *s, int (*cb)(const struct route *r, void *arg), void *arg);

/* One-time links. */
int store_link_put(struct store *s, const uint8_t hash[STORE_HASH_LEN], const char *alias,
                   int64_t expires);
/*
 * Redeems a link atomically: if a link with this hash exists for this alias
 * and has not expired at time now, deletes it, stores sess (when not NULL)
 * in the same transaction, and returns 0. Returns -ENOENT when there is no
 * such link (unknown, already used, or for another alias) and -ETIMEDOUT
 * when it expired (it is deleted then too); a failed write changes nothing.
 */
struct store_session {
    uint8_t hash[STORE_HASH_LEN];
    uid_t uid;
    int64_t expires;
};
int store_link_take(struct store *s, const uint8_t hash[STORE_HASH_LEN], const char *alias,
                    int64_t now, const struct store_session *sess);
/* Calls cb for every unexpired link (at time now), with its route's owner. */
int store_link_load(struct store *s, int64_t now,
                    int (*cb)(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                              int64_t expires, void *arg),
                    void *arg);

/* Sessions (the browser cookie's hash). */
int store_session_put(struct store *s, const uint8_t hash[STORE_HASH_LEN], const char *alias,
                      uid_t uid, int64_t expires);
int store_session_delete(struct store *s, const uint8_t hash[STORE_HASH_LEN]);
/* Calls cb for every unexpired session (at time now). */
int store_session_load(struct store *s, int64_t now,
                       int (*cb)(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                                 int64_t expires, void *arg),
                       void *arg);

/* Deletes expired links and sessions. Returns the number deleted or -errno. */
int store_expire(struct store *s, int64_t now);

/* Jobs (job.h). put adds or replaces the job with j->id. */
int store_job_put(struct store *s, const struct job *j);
int store_job_delete(struct store *s, uint32_t id);
/* Calls cb for every stored job; stops early if cb returns nonzero. */
int store_job_load(struct store *s, int (*cb)(const struct job *j, void *arg), void *arg);

/* Appends an audit record (time, uid, event such as "route.add", alias, detail).
 * detail may be NULL. Must never be given a secret. */
int store_audit(struct store *s, uid_t uid, const char *event, const char *alias,
                const char *detail);

#endif
