/* store — see store.h.
 *
 * One connection (SQLITE_OPEN_NOMUTEX: used only under the registry's write lock).
 * SQLite's busy handler blocks that loop, so every write is one short
 * BEGIN IMMEDIATE transaction: it takes the write lock up front and never has
 * to upgrade a read lock, which is where deferred transactions deadlock.
 *
 * Loads copy the rows out and finish the SELECT before calling back, so a
 * callback may call any store function (the prepared statements are shared).
 */
#include "store-int.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "log.h"
#include "util.h"

#define STORE_AUDIT_FIELD_MAX 256
#define STORE_AUDIT_KEEP (90 * 24 * 3600)

/* --- helpers ---------------------------------------------------------------- */

static int errno_of(int rc)
{
    switch (rc) {
    case SQLITE_CONSTRAINT_PRIMARYKEY:
    case SQLITE_CONSTRAINT_UNIQUE:
        return -EEXIST;
    case SQLITE_CONSTRAINT_FOREIGNKEY:
        return -ENOENT;
    case SQLITE_CONSTRAINT_NOTNULL:
    case SQLITE_CONSTRAINT_CHECK:
        return -EINVAL;
    default:
        break;
    }
    switch (rc & 0xff) {
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_READONLY:
        return -EROFS;
    default:
        return -EIO;
    }
}

/* Logs a failed SQLite call and returns the errno-style code for it. */
int store_fail(const struct store *s, int rc, const char *op, const char *alias)
{
    static struct log_limit limit; /* under the registry's write lock, like every call here */
    log_limited(&limit, LOG_LVL_ERR, "store: %s [%s]: %s", op, alias ? alias : "-",
                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
    int e = errno_of(rc);
    /* The file system's errno is kept by SQLite only for I/O errors (and stale otherwise). */
    int sys = s->db && (rc & 0xff) == SQLITE_IOERR ? sqlite3_system_errno(s->db) : 0;
    if (e == -EIO && (sys == EROFS || sys == ENOSPC || sys == EDQUOT))
        e = sys == EROFS ? -EROFS : -ENOSPC; /* an I/O error of the file system's */
    return e;
}

/* Makes the statement ready for its next use. sqlite3_reset repeats the
 * error of the last step, which the caller has already handled. */
static void stmt_done(sqlite3_stmt *st)
{
    (void)sqlite3_reset(st);
    (void)sqlite3_clear_bindings(st);
}

/* Steps a statement that returns no rows, then resets it. */
static int exec_stmt(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    stmt_done(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int bind_text(sqlite3_stmt *st, int idx, const char *v, size_t max)
{
    if (!v)
        return sqlite3_bind_null(st, idx);
    size_t n = strnlen(v, max);
    /* Do not cut a UTF-8 sequence in half. */
    if (n == max && (v[n] & 0xc0) == 0x80)
        while (n > 0 && (v[n] & 0xc0) == 0x80)
            n--;
    return sqlite3_bind_text(st, idx, v, (int)n, SQLITE_STATIC);
}

static int bind_hash(sqlite3_stmt *st, int idx, const uint8_t hash[STORE_HASH_LEN])
{
    return sqlite3_bind_blob(st, idx, hash, STORE_HASH_LEN, SQLITE_STATIC);
}

static int tx_begin(struct store *s, const char *op, const char *alias)
{
    int rc = exec_stmt(s->st[ST_BEGIN]);
    return rc == SQLITE_OK ? 0 : store_fail(s, rc, op, alias);
}

static void tx_rollback(struct store *s, const char *op, const char *alias)
{
    /* Some errors (SQLITE_FULL, IOERR, NOMEM, BUSY) roll back on their own. */
    if (sqlite3_get_autocommit(s->db))
        return;
    int rc = exec_stmt(s->st[ST_ROLLBACK]);
    if (rc != SQLITE_OK)
        (void)store_fail(s, rc, op, alias);
}

static int tx_commit(struct store *s, const char *op, const char *alias)
{
    int rc = exec_stmt(s->st[ST_COMMIT]);
    if (rc == SQLITE_OK)
        return 0;
    int e = store_fail(s, rc, op, alias);
    tx_rollback(s, op, alias);
    return e;
}

/* Ends a write transaction: commits when rc is SQLITE_OK, otherwise logs,
 * rolls back and returns the error. */
static int tx_end(struct store *s, int rc, const char *op, const char *alias)
{
    if (rc == SQLITE_OK)
        return tx_commit(s, op, alias);
    int e = store_fail(s, rc, op, alias);
    tx_rollback(s, op, alias);
    return e;
}

static int alias_ok(const char *alias)
{
    return alias && route_alias_valid(alias, strnlen(alias, ROUTE_ALIAS_MAX + 1));
}

/* Copies a TEXT column into dst (size bytes with the NUL). -1 if it is NULL,
 * does not fit, or holds a NUL byte. */
int store_col_text(sqlite3_stmt *st, int col, char *dst, size_t size)
{
    if (sqlite3_column_type(st, col) != SQLITE_TEXT)
        return -1;
    const unsigned char *t = sqlite3_column_text(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (!t || n < 0 || (size_t)n >= size || memchr(t, 0, (size_t)n))
        return -1;
    memcpy(dst, t, (size_t)n);
    dst[n] = '\0';
    return 0;
}

static int col_range(sqlite3_stmt *st, int col, int64_t min, int64_t max, int64_t *out)
{
    if (sqlite3_column_type(st, col) != SQLITE_INTEGER)
        return -1;
    int64_t v = sqlite3_column_int64(st, col);
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}
/* --- routes -------------------------------------------------------------------- */

int store_route_put(struct store *s, const struct route *r)
{
    if (!alias_ok(r->alias))
        return -EINVAL;
    if (strnlen(r->name, sizeof(r->name)) == sizeof(r->name) ||
        strnlen(r->path, sizeof(r->path)) == sizeof(r->path) ||
        (r->kind != ROUTE_UNIX && r->kind != ROUTE_TCP && r->kind != ROUTE_TUNNEL &&
         r->kind != ROUTE_DIRECT)) {
        log_err("store: route put [%s]: malformed route", r->alias);
        return -EINVAL;
    }
    int e = tx_begin(s, "route put", r->alias);
    if (e < 0)
        return e;

    sqlite3_stmt *st = s->st[ST_ROUTE_DROP_OTHER];
    int rc = bind_text(st, 1, r->alias, sizeof(r->alias));
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, (sqlite3_int64)r->uid);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    if (rc == SQLITE_OK && sqlite3_changes(s->db) > 0)
        log_info("store: route %s changed owner; its links and sessions are gone", r->alias);

    if (rc == SQLITE_OK) {
        st = s->st[ST_ROUTE_PUT];
        rc = bind_text(st, 1, r->alias, sizeof(r->alias));
        if (rc == SQLITE_OK)
            rc = bind_text(st, 2, r->name, sizeof(r->name));
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 3, (sqlite3_int64)r->uid);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 4, (sqlite3_int64)r->pid);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 5, (int)r->kind);
        if (rc == SQLITE_OK)
            rc = bind_text(st, 6, r->path, sizeof(r->path));
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 7, r->port);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 8, r->v6 ? 1 : 0);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 9, r->created);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 10, (sqlite3_int64)r->job);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 11, r->starting ? 1 : 0);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int(st, 12, r->cross_site ? 1 : 0);
        if (rc == SQLITE_OK)
            rc = sqlite3_bind_int64(st, 13, (sqlite3_int64)r->pid_start);
        if (rc == SQLITE_OK)
            rc = exec_stmt(st);
        else
            stmt_done(st);
    }
    return tx_end(s, rc, "route put", r->alias);
}

int store_route_delete(struct store *s, const char *alias)
{
    if (!alias_ok(alias))
        return -EINVAL;
    int e = tx_begin(s, "route delete", alias);
    if (e < 0)
        return e;
    sqlite3_stmt *st = s->st[ST_ROUTE_DEL];
    int rc = bind_text(st, 1, alias, ROUTE_ALIAS_MAX + 1);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    int gone = rc == SQLITE_OK ? sqlite3_changes(s->db) : 0;
    e = tx_end(s, rc, "route delete", alias);
    if (e < 0)
        return e;
    return gone > 0 ? 0 : -ENOENT;
}

/* Reads every row of st (a SELECT) into a new array of items of size bytes
 * through from_row, skipping (and logging) the rows it refuses, and finishes
 * the statement before returning, so that callbacks on the rows may use any
 * statement. The count with *out (the caller frees it), or -errno. */
static int load_rows(struct store *s, sqlite3_stmt *st, size_t size,
                     int (*from_row)(sqlite3_stmt *st, void *item), const char *table, void **out)
{
    char *rows = NULL;
    size_t n = 0, cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            rows = xrealloc(rows, cap * size);
        }
        if (from_row(st, rows + n * size) < 0) {
            /* Name no bytes of a row we could not read; its rowid is enough. */
            log_warn("store: skipping a malformed %s row", table);
            continue;
        }
        n++;
    }
    stmt_done(st);
    if (rc != SQLITE_DONE) {
        free(rows);
        return store_fail(s, rc, "load", table);
    }
    *out = rows;
    return (int)n;
}

/* Reads one row of ST_ROUTE_LOAD. -1 for a row that is not a valid route. */
static int route_from_row(sqlite3_stmt *st, void *item)
{
    struct route *r = item;
    int64_t uid, pid, kind, port, v6 = 0, created = 0, job, starting, cross_site, pid_start;
    memset(r, 0, sizeof(*r));
    if (store_col_text(st, 0, r->alias, sizeof(r->alias)) < 0 ||
        !route_alias_valid(r->alias, strlen(r->alias)))
        return -1;
    if (sqlite3_column_type(st, 1) != SQLITE_NULL &&
        store_col_text(st, 1, r->name, sizeof(r->name)) < 0)
        return -1;
    if (sqlite3_column_type(st, 5) != SQLITE_NULL &&
        store_col_text(st, 5, r->path, sizeof(r->path)) < 0)
        return -1;
    if (col_range(st, 2, 0, UINT32_MAX, &uid) < 0 || col_range(st, 3, 0, INT32_MAX, &pid) < 0 ||
        col_range(st, 4, ROUTE_UNIX, ROUTE_DIRECT, &kind) < 0 ||
        col_range(st, 6, 0, UINT16_MAX, &port) < 0 || col_range(st, 9, 0, UINT32_MAX, &job) < 0 ||
        col_range(st, 10, 0, 1, &starting) < 0 || col_range(st, 11, 0, 1, &cross_site) < 0 ||
        col_range(st, 12, 0, INT64_MAX, &pid_start) < 0)
        return -1;
    if (sqlite3_column_type(st, 7) != SQLITE_NULL && col_range(st, 7, 0, 1, &v6) < 0)
        return -1;
    if (sqlite3_column_type(st, 8) != SQLITE_NULL &&
        col_range(st, 8, INT64_MIN, INT64_MAX, &created) < 0)
        return -1;
    r->uid = (uid_t)uid;
    r->pid = (pid_t)pid;
    r->kind = (enum route_kind)kind;
    r->port = (uint16_t)port;
    r->v6 = (int)v6;
    r->created = created;
    r->job = (uint32_t)job;
    r->starting = (int)starting;
    r->cross_site = (int)cross_site;
    r->pid_start = (uint64_t)pid_start;
    return 0;
}

int store_route_load(struct store *s, int (*cb)(const struct route *r, void *arg), void *arg)
{
    void *v;
    int n = load_rows(s, s->st[ST_ROUTE_LOAD], sizeof(struct route), route_from_row, "routes", &v);
    if (n < 0)
        return n;
    struct route *rows = v;
    int ret = 0;
    for (int i = 0; i < n; i++) {
        int c = cb(&rows[i], arg);
        if (c != 0) {
            ret = c < 0 ? c : 0;
            break;
        }
    }
    free(rows);
    return ret;
}

/* --- links ---------------------------------------------------------------------- */

int store_link_put(struct store *s, const uint8_t hash[STORE_HASH_LEN], const char *alias,
                   int64_t expires)
{
    if (!hash || !alias_ok(alias))
        return -EINVAL;
    int e = tx_begin(s, "link put", alias);
    if (e < 0)
        return e;
    sqlite3_stmt *st = s->st[ST_LINK_PUT];
    int rc = bind_hash(st, 1, hash);
    if (rc == SQLITE_OK)
        rc = bind_text(st, 2, alias, ROUTE_ALIAS_MAX + 1);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 3, expires);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    return tx_end(s, rc, "link put", alias);
}

static int sess_insert(struct store *s, const uint8_t hash[STORE_HASH_LEN], const char *alias,
                       uid_t uid, int64_t expires);

int store_link_take(struct store *s, const uint8_t hash[STORE_HASH_LEN], const char *alias,
                    int64_t now, const struct store_session *sess)
{
    if (!hash || !alias_ok(alias))
        return -EINVAL;
    int e = tx_begin(s, "link take", alias);
    if (e < 0)
        return e;

    sqlite3_stmt *st = s->st[ST_LINK_GET];
    char owner[ROUTE_ALIAS_MAX + 1] = "";
    int64_t expires = 0;
    int found = 0;
    int rc = bind_hash(st, 1, hash);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            /* A row we cannot read is treated as no link for this alias. */
            found = store_col_text(st, 0, owner, sizeof(owner)) == 0 && strcmp(owner, alias) == 0 &&
                    sqlite3_column_type(st, 1) == SQLITE_INTEGER;
            expires = sqlite3_column_int64(st, 1);
            rc = SQLITE_OK;
        } else if (rc == SQLITE_DONE) {
            rc = SQLITE_OK;
        }
    }
    stmt_done(st);

    /* A link presented on another app's host stays valid for its own app. */
    if (rc != SQLITE_OK || !found) {
        e = tx_end(s, rc, "link take", alias);
        return e < 0 ? e : -ENOENT;
    }

    st = s->st[ST_LINK_DEL];
    rc = bind_hash(st, 1, hash);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    /* The session in the same transaction: the link is used up only if it
     * was turned into a session. */
    if (rc == SQLITE_OK && sess && expires > now)
        rc = sess_insert(s, sess->hash, alias, sess->uid, sess->expires);
    e = tx_end(s, rc, "link take", alias);
    if (e < 0)
        return e;
    return expires > now ? 0 : -ETIMEDOUT;
}

/* --- sessions ------------------------------------------------------------------- */

/* The session row, inside the caller's transaction. An SQLite code. */
static int sess_insert(struct store *s, const uint8_t hash[STORE_HASH_LEN], const char *alias,
                       uid_t uid, int64_t expires)
{
    sqlite3_stmt *st = s->st[ST_SESS_PUT];
    int rc = bind_hash(st, 1, hash);
    if (rc == SQLITE_OK)
        rc = bind_text(st, 2, alias, ROUTE_ALIAS_MAX + 1);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 3, (sqlite3_int64)uid);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 4, expires);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    return rc;
}

int store_session_put(struct store *s, const uint8_t hash[STORE_HASH_LEN], const char *alias,
                      uid_t uid, int64_t expires)
{
    if (!hash || !alias_ok(alias))
        return -EINVAL;
    int e = tx_begin(s, "session put", alias);
    if (e < 0)
        return e;
    return tx_end(s, sess_insert(s, hash, alias, uid, expires), "session put", alias);
}

int store_session_delete(struct store *s, const uint8_t hash[STORE_HASH_LEN])
{
    if (!hash)
        return -EINVAL;
    int e = tx_begin(s, "session delete", NULL);
    if (e < 0)
        return e;
    sqlite3_stmt *st = s->st[ST_SESS_DEL];
    int rc = bind_hash(st, 1, hash);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    int gone = rc == SQLITE_OK ? sqlite3_changes(s->db) : 0;
    e = tx_end(s, rc, "session delete", NULL);
    if (e < 0)
        return e;
    return gone > 0 ? 0 : -ENOENT;
}

struct session_row {
    uint8_t hash[STORE_HASH_LEN];
    char alias[ROUTE_ALIAS_MAX + 1];
    uid_t uid;
    int64_t expires;
};

/* Sessions and links alike: (hash, alias, uid, expires) rows of statement id. */
static int load_tokens(struct store *s, enum stmt_id id, const char *what, int64_t now,
                       int (*cb)(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                                 int64_t expires, void *arg),
                       void *arg)
{
    sqlite3_stmt *st = s->st[id];
    struct session_row *rows = NULL;
    size_t n = 0, cap = 0;
    int rc = sqlite3_bind_int64(st, 1, now);
    if (rc != SQLITE_OK) {
        stmt_done(st);
        return store_fail(s, rc, what, NULL);
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            rows = xrealloc(rows, cap * sizeof(*rows));
        }
        struct session_row *row = &rows[n];
        const void *h = sqlite3_column_blob(st, 0);
        int64_t uid, expires;
        if (sqlite3_column_type(st, 0) != SQLITE_BLOB || !h ||
            sqlite3_column_bytes(st, 0) != STORE_HASH_LEN ||
            store_col_text(st, 1, row->alias, sizeof(row->alias)) < 0 ||
            !route_alias_valid(row->alias, strlen(row->alias)) ||
            col_range(st, 2, 0, UINT32_MAX, &uid) < 0 ||
            col_range(st, 3, INT64_MIN, INT64_MAX, &expires) < 0) {
            log_warn("store: %s: skipping a malformed row", what);
            continue;
        }
        memcpy(row->hash, h, STORE_HASH_LEN);
        row->uid = (uid_t)uid;
        row->expires = expires;
        n++;
    }
    stmt_done(st);
    if (rc != SQLITE_DONE) {
        free(rows);
        return store_fail(s, rc, what, NULL);
    }

    int ret = 0;
    for (size_t i = 0; i < n; i++) {
        int c = cb(rows[i].hash, rows[i].alias, rows[i].uid, rows[i].expires, arg);
        if (c != 0) {
            ret = c < 0 ? c : 0;
            break;
        }
    }
    /* The copies held hashes; do not leave them in freed memory. */
    if (rows)
        explicit_bzero(rows, cap * sizeof(*rows));
    free(rows);
    return ret;
}

int store_session_load(struct store *s, int64_t now,
                       int (*cb)(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                                 int64_t expires, void *arg),
                       void *arg)
{
    return load_tokens(s, ST_SESS_LOAD, "session load", now, cb, arg);
}

int store_link_load(struct store *s, int64_t now,
                    int (*cb)(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                              int64_t expires, void *arg),
                    void *arg)
{
    return load_tokens(s, ST_LINK_LOAD, "link load", now, cb, arg);
}

/* --- expiry and audit -------------------------------------------------------------- */

static int delete_before(struct store *s, enum stmt_id id, int64_t t, int64_t *count)
{
    sqlite3_stmt *st = s->st[id];
    int rc = sqlite3_bind_int64(st, 1, t);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    if (rc == SQLITE_OK)
        *count += sqlite3_changes(s->db);
    return rc;
}

int store_expire(struct store *s, int64_t now)
{
    int e = tx_begin(s, "expire", NULL);
    if (e < 0)
        return e;
    int64_t n = 0, old_audit = 0;
    /* The audit trail is kept for a bounded time so that the file stays bounded. */
    int64_t audit_before = now > INT64_MIN + STORE_AUDIT_KEEP ? now - STORE_AUDIT_KEEP : INT64_MIN;
    int rc = delete_before(s, ST_EXP_LINKS, now, &n);
    if (rc == SQLITE_OK)
        rc = delete_before(s, ST_EXP_SESS, now, &n);
    if (rc == SQLITE_OK)
        rc = delete_before(s, ST_EXP_AUDIT, audit_before, &old_audit);
    e = tx_end(s, rc, "expire", NULL);
    if (e < 0)
        return e;
    if (old_audit > 0)
        log_debug("store: removed %lld audit records older than 90 days", (long long)old_audit);
    return n > INT_MAX ? INT_MAX : (int)n;
}

int store_audit(struct store *s, uid_t uid, const char *event, const char *alias,
                const char *detail)
{
    if (!event)
        return -EINVAL;
    int e = tx_begin(s, "audit", event);
    if (e < 0)
        return e;
    sqlite3_stmt *st = s->st[ST_AUDIT];
    int rc = sqlite3_bind_int64(st, 1, now_real());
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, (sqlite3_int64)uid);
    if (rc == SQLITE_OK)
        rc = bind_text(st, 3, event, STORE_AUDIT_FIELD_MAX);
    if (rc == SQLITE_OK)
        rc = bind_text(st, 4, alias, STORE_AUDIT_FIELD_MAX);
    if (rc == SQLITE_OK)
        rc = bind_text(st, 5, detail, STORE_AUDIT_FIELD_MAX);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    return tx_end(s, rc, "audit", event);
}

/* --- jobs ---------------------------------------------------------------------- */

int store_job_put(struct store *s, const struct job *j)
{
    if (j->id == 0 || !job_name_valid(j->user, sizeof(j->user)) ||
        !job_name_valid(j->node, sizeof(j->node)))
        return -EINVAL;
    int e = tx_begin(s, "job put", NULL);
    if (e < 0)
        return e;
    sqlite3_stmt *st = s->st[ST_JOB_PUT];
    int rc = sqlite3_bind_int64(st, 1, (sqlite3_int64)j->id);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 2, (sqlite3_int64)j->uid);
    if (rc == SQLITE_OK)
        rc = bind_text(st, 3, j->user, sizeof(j->user));
    if (rc == SQLITE_OK)
        rc = bind_text(st, 4, j->node, sizeof(j->node));
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 5, j->not_after);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 6, j->started);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(st, 7, j->ended);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 8, j->adopted ? 1 : 0);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    return tx_end(s, rc, "job put", NULL);
}

int store_job_delete(struct store *s, uint32_t id)
{
    int e = tx_begin(s, "job delete", NULL);
    if (e < 0)
        return e;
    sqlite3_stmt *st = s->st[ST_JOB_DEL];
    int rc = sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
    if (rc == SQLITE_OK)
        rc = exec_stmt(st);
    else
        stmt_done(st);
    return tx_end(s, rc, "job delete", NULL);
}

/* Reads one row of ST_JOB_LOAD. -1 for a row that is not a valid job. */
static int job_from_row(sqlite3_stmt *st, void *item)
{
    struct job *j = item;
    int64_t id, uid, adopted;
    memset(j, 0, sizeof(*j));
    if (col_range(st, 0, 1, UINT32_MAX, &id) < 0 || col_range(st, 1, 0, UINT32_MAX, &uid) < 0 ||
        store_col_text(st, 2, j->user, sizeof(j->user)) < 0 ||
        store_col_text(st, 3, j->node, sizeof(j->node)) < 0 ||
        col_range(st, 4, INT64_MIN, INT64_MAX, &j->not_after) < 0 ||
        col_range(st, 5, INT64_MIN, INT64_MAX, &j->started) < 0 ||
        col_range(st, 6, 0, INT64_MAX, &j->ended) < 0 || col_range(st, 7, 0, 1, &adopted) < 0 ||
        !job_name_valid(j->user, sizeof(j->user)) || !job_name_valid(j->node, sizeof(j->node)))
        return -1;
    j->id = (uint32_t)id;
    j->uid = (uid_t)uid;
    j->adopted = (int)adopted;
    return 0;
}

int store_job_load(struct store *s, int (*cb)(const struct job *j, void *arg), void *arg)
{
    void *v;
    int n = load_rows(s, s->st[ST_JOB_LOAD], sizeof(struct job), job_from_row, "jobs", &v);
    if (n < 0)
        return n;
    struct job *rows = v;
    for (int i = 0; i < n; i++)
        if (cb(&rows[i], arg))
            break;
    free(rows);
    return 0;
}

const char *store_why(int err)
{
    switch (err) {
    case -EBUSY: return "the gateway's state database is locked by another process; try again";
    case -EROFS: return "the gateway's state directory is read-only";
    case -ENOSPC: return "the disk that holds the gateway's state is full";
    case -ENOMEM: return "the gateway is out of memory";
    default: return "the gateway could not write its state database (see its log)";
    }
}
