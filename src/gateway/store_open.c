/* store_open — see store-int.h: the database file, its pragmas, the schema
 * and its migrations, the prepared statements; store_open and store_close. */
#include "store-int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define STORE_SCHEMA_VERSION 3
/* How long a write waits for another process's lock on the database (an
 * admin's sqlite3 shell): short, since the registry's write lock is held
 * meanwhile and every request waits for it. */
#define STORE_BUSY_MS 250

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    /* An alias that passes to another owner must not keep the old owner's
     * links and sessions (I1): drop the row so that the cascade removes them. */
    [ST_ROUTE_DROP_OTHER] = "DELETE FROM routes WHERE alias = ?1 AND uid IS NOT ?2",
    /* An upsert, not INSERT OR REPLACE: the row stays, so the same owner's
     * links and sessions survive a re-registration (agent reconnect). */
    [ST_ROUTE_PUT] = ("INSERT INTO routes(alias, name, uid, pid, kind, path, port, v6, created, "
                      "job, starting, cross_site, pid_start) "
                      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) "
                      "ON CONFLICT(alias) DO UPDATE SET name = excluded.name, uid = excluded.uid, "
                      "pid = excluded.pid, kind = excluded.kind, path = excluded.path, "
                      "port = excluded.port, v6 = excluded.v6, created = excluded.created, "
                      "job = excluded.job, starting = excluded.starting, "
                      "cross_site = excluded.cross_site, pid_start = excluded.pid_start"),
    [ST_ROUTE_DEL] = "DELETE FROM routes WHERE alias = ?1",
    [ST_ROUTE_LOAD] = ("SELECT alias, name, uid, pid, kind, path, port, v6, created, job, "
                       "starting, cross_site, pid_start FROM routes ORDER BY created, alias"),
    [ST_LINK_PUT] = "INSERT INTO links(hash, alias, expires) VALUES(?1, ?2, ?3)",
    [ST_LINK_GET] = "SELECT alias, expires FROM links WHERE hash = ?1",
    [ST_LINK_DEL] = "DELETE FROM links WHERE hash = ?1",
    [ST_SESS_PUT] = "INSERT INTO sessions(hash, alias, uid, expires) VALUES(?1, ?2, ?3, ?4)",
    [ST_SESS_DEL] = "DELETE FROM sessions WHERE hash = ?1",
    [ST_SESS_LOAD] = "SELECT hash, alias, uid, expires FROM sessions WHERE expires > ?1",
    /* A link's owner is its route's (the cascade leaves no link without one). */
    [ST_LINK_LOAD] = ("SELECT l.hash, l.alias, r.uid, l.expires FROM links l "
                      "JOIN routes r ON r.alias = l.alias WHERE l.expires > ?1"),
    [ST_EXP_LINKS] = "DELETE FROM links WHERE expires <= ?1",
    [ST_EXP_SESS] = "DELETE FROM sessions WHERE expires <= ?1",
    [ST_EXP_AUDIT] = "DELETE FROM audit WHERE time < ?1",
    [ST_AUDIT] = "INSERT INTO audit(time, uid, event, alias, detail) VALUES(?1, ?2, ?3, ?4, ?5)",
    [ST_JOB_PUT] = ("INSERT OR REPLACE INTO jobs(id, uid, user, node, not_after, started, ended, "
                    "adopted) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
    [ST_JOB_LOAD] = ("SELECT id, uid, user, node, not_after, started, ended, adopted FROM jobs "
                     "ORDER BY id"),
    [ST_JOB_DEL] = "DELETE FROM jobs WHERE id = ?1",
};

/* Version 1. Plain CREATE TABLE (no IF NOT EXISTS): a database at version 0
 * that already has such tables is not ours, and we refuse it. */
static const char schema_v1[] =
    "CREATE TABLE routes(alias TEXT PRIMARY KEY NOT NULL, name TEXT, uid INTEGER, "
    "  pid INTEGER, kind INTEGER, path TEXT, port INTEGER, v6 INTEGER, created INTEGER);"
    "CREATE TABLE links(hash BLOB PRIMARY KEY NOT NULL, "
    "  alias TEXT NOT NULL REFERENCES routes(alias) ON DELETE CASCADE, expires INTEGER);"
    "CREATE TABLE sessions(hash BLOB PRIMARY KEY NOT NULL, "
    "  alias TEXT NOT NULL REFERENCES routes ON DELETE CASCADE, uid INTEGER, expires INTEGER);"
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, time INTEGER, uid INTEGER, event TEXT, "
    "  alias TEXT, detail TEXT);"
    /* The cascades and store_expire search these columns. */
    "CREATE INDEX links_alias ON links(alias);"
    "CREATE INDEX links_expires ON links(expires);"
    "CREATE INDEX sessions_alias ON sessions(alias);"
    "CREATE INDEX sessions_expires ON sessions(expires);"
    "CREATE INDEX audit_time ON audit(time);"
    "PRAGMA user_version = 1;";

/* Version 2 (from 1): batch jobs (job.h), and the job a route belongs to. */
static const char schema_v2[] =
    "ALTER TABLE routes ADD COLUMN job INTEGER NOT NULL DEFAULT 0;"
    "CREATE TABLE jobs(id INTEGER PRIMARY KEY NOT NULL, uid INTEGER NOT NULL, user TEXT NOT NULL, "
    "  node TEXT NOT NULL, not_after INTEGER NOT NULL, started INTEGER NOT NULL, "
    "  ended INTEGER NOT NULL, adopted INTEGER NOT NULL DEFAULT 0);"
    "PRAGMA user_version = 2;";

/* Version 3 (from 2): a route's `starting` survives a restart, the app's
 * choice to take requests from other sites (route.h, cross_site), and its
 * owner process's start time (pid_start). */
static const char schema_v3[] =
    "ALTER TABLE routes ADD COLUMN starting INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE routes ADD COLUMN cross_site INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE routes ADD COLUMN pid_start INTEGER NOT NULL DEFAULT 0;"
    "PRAGMA user_version = 3;";

/* --- open / close ------------------------------------------------------------ */

/* Creates the file 0600 ourselves (SQLite would use 0644 less the umask, and
 * gives its -wal and -shm files the mode of the database file), and narrows
 * the mode of an existing database and its companions. */
static int prepare_file(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        log_err("store: cannot open %s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        log_err("store: cannot stat %s: %s", path, strerror(-rc));
    } else if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        log_err("store: %s is not a regular file", path);
    } else if ((st.st_mode & 077) && fchmod(fd, 0600) < 0) {
        rc = -errno;
        log_err("store: cannot chmod 0600 %s: %s", path, strerror(-rc));
    }
    if (close(fd) < 0 && rc == 0) {
        rc = -errno;
        log_err("store: cannot close %s: %s", path, strerror(-rc));
    }
    if (rc < 0)
        return rc;

    static const char *const suffix[] = {"-wal", "-shm"};
    for (size_t i = 0; i < JG_ARRAY_LEN(suffix); i++) {
        char side[PATH_MAX];
        if (xsnprintf(side, sizeof(side), "%s%s", path, suffix[i]) < 0) {
            log_err("store: path too long: %s", path);
            return -ENAMETOOLONG;
        }
        if (lstat(side, &st) < 0) {
            if (errno == ENOENT)
                continue;
            rc = -errno;
            log_err("store: cannot stat %s: %s", side, strerror(-rc));
            return rc;
        }
        if (S_ISREG(st.st_mode) && (st.st_mode & 077) && chmod(side, 0600) < 0) {
            rc = -errno;
            log_err("store: cannot chmod 0600 %s: %s", side, strerror(-rc));
            return rc;
        }
    }
    return 0;
}

/* Runs a one-row PRAGMA and returns its integer (ival) or compares its text. */
static int pragma_query(struct store *s, const char *path, const char *sql, int64_t *ival,
                        char *text, size_t text_size)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return store_fail(s, rc, sql, path);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        int e = store_fail(s, rc == SQLITE_DONE ? SQLITE_ERROR : rc, sql, path);
        (void)sqlite3_finalize(st);
        return e;
    }
    if (ival)
        *ival = sqlite3_column_int64(st, 0);
    if (text && store_col_text(st, 0, text, text_size) < 0)
        text[0] = '\0';
    (void)sqlite3_finalize(st);
    return 0;
}

static int exec_sql(struct store *s, const char *sql, const char *op, const char *path)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : store_fail(s, rc, op, path);
}

static int configure(struct store *s, const char *path)
{
    int rc = sqlite3_extended_result_codes(s->db, 1);
    if (rc != SQLITE_OK)
        return store_fail(s, rc, "extended result codes", path);
    rc = sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
    if (rc != SQLITE_OK)
        return store_fail(s, rc, "busy timeout", path);

    char mode[16];
    int e = pragma_query(s, path, "PRAGMA journal_mode = WAL", NULL, mode, sizeof(mode));
    if (e < 0)
        return e;
    if (strcasecmp(mode, "wal") != 0)
        log_warn("store: %s: WAL mode not available (journal mode %s); continuing", path, mode);
    if ((e = exec_sql(s, "PRAGMA synchronous = NORMAL", "synchronous", path)) < 0 ||
        (e = exec_sql(s, "PRAGMA foreign_keys = ON", "foreign keys", path)) < 0)
        return e;
    /* A build without foreign keys would ignore the pragma, and the cascades
     * that remove a route's links and sessions with it would not happen. */
    int64_t fk = 0;
    if ((e = pragma_query(s, path, "PRAGMA foreign_keys", &fk, NULL, 0)) < 0)
        return e;
    if (fk != 1) {
        log_err("store: %s: SQLite has no foreign key support", path);
        return -ENOTSUP;
    }
    return 0;
}

static int migrate(struct store *s, const char *path)
{
    /* Inside the write lock, so that two processes cannot both create it. */
    int e = exec_sql(s, "BEGIN IMMEDIATE", "begin schema", path);
    if (e < 0)
        return e;
    int64_t version = 0;
    e = pragma_query(s, path, "PRAGMA user_version", &version, NULL, 0);
    if (e == 0) {
        if (version == 0) {
            e = exec_sql(s, schema_v1, "create schema v1", path);
            if (e == 0)
                version = 1;
        }
        if (e == 0 && version == 1) {
            e = exec_sql(s, schema_v2, "upgrade schema to v2", path);
            if (e == 0)
                version = 2;
        }
        if (e == 0 && version == 2) {
            e = exec_sql(s, schema_v3, "upgrade schema to v3", path);
            if (e == 0)
                log_info("store: %s: schema version %d", path, STORE_SCHEMA_VERSION);
        } else if (e == 0 && version != STORE_SCHEMA_VERSION) {
            log_err("store: %s has schema version %lld, this jobgated knows only up to %d; "
                    "refusing to use it (was it written by a newer release?)",
                    path, (long long)version, STORE_SCHEMA_VERSION);
            e = -EPROTO;
        }
        /* Later versions: one more step above per version, in this transaction. */
    }
    if (e < 0) {
        if (!sqlite3_get_autocommit(s->db))
            (void)exec_sql(s, "ROLLBACK", "rollback schema", path);
        return e;
    }
    return exec_sql(s, "COMMIT", "commit schema", path);
}

int store_open(struct store **out, const char *path)
{
    *out = NULL;
    if (!path || !*path)
        return -EINVAL;
    int e = prepare_file(path);
    if (e < 0)
        return e;

    struct store *s = xcalloc(1, sizeof(*s));
    int rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        int sys = s->db ? sqlite3_system_errno(s->db) : 0;
        e = store_fail(s, rc, "open", path);
        if (sys > 0)
            e = -sys;
        store_close(s);
        return e;
    }
    if ((e = configure(s, path)) < 0 || (e = migrate(s, path)) < 0) {
        store_close(s);
        return e;
    }
    for (int i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                                NULL);
        if (rc != SQLITE_OK) {
            e = store_fail(s, rc, "prepare", path);
            store_close(s);
            return e;
        }
    }
    *out = s;
    return 0;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        (void)sqlite3_finalize(s->st[i]); /* returns the last step's error, not its own */
    if (s->db) {
        int rc = sqlite3_close(s->db);
        if (rc != SQLITE_OK)
            log_err("store: close: %s", sqlite3_errstr(rc));
    }
    free(s);
}
