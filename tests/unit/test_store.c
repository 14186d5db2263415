/* Unit tests for store (SQLite state). Each test gets a fresh directory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "store.h"

#define NOW INT64_C(1700000000)

struct fx {
    char dir[64];
    char path[128];
    struct store *s;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    memcpy(f->dir, "/tmp/jg-store-XXXXXX", sizeof("/tmp/jg-store-XXXXXX"));
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    if (snprintf(f->path, sizeof(f->path), "%s/state.db", f->dir) >= (int)sizeof(f->path)) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static void unlink_side(const char *path, const char *suffix)
{
    char p[160];
    if (snprintf(p, sizeof(p), "%s%s", path, suffix) < (int)sizeof(p))
        (void)unlink(p);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    store_close(f->s);
    unlink_side(f->path, "");
    unlink_side(f->path, "-wal");
    unlink_side(f->path, "-shm");
    int rc = rmdir(f->dir);
    free(f);
    return rc;
}

static struct store *open_ok(struct fx *f)
{
    assert_int_equal(store_open(&f->s, f->path), 0);
    assert_non_null(f->s);
    return f->s;
}

static void reopen(struct fx *f)
{
    store_close(f->s);
    f->s = NULL;
    open_ok(f);
}

static void hash_of(uint8_t h[STORE_HASH_LEN], unsigned seed)
{
    for (unsigned i = 0; i < STORE_HASH_LEN; i++)
        h[i] = (uint8_t)(seed * 131 + i * 7);
    h[5] = 0; /* a NUL inside: hashes are blobs, not strings */
}

static struct route mk(const char *alias, uid_t uid, uint16_t port)
{
    struct route r;
    memset(&r, 0, sizeof(r));
    assert_true(strlen(alias) < sizeof(r.alias));
    memcpy(r.alias, alias, strlen(alias) + 1);
    memcpy(r.name, "lab", sizeof("lab"));
    r.uid = uid;
    r.pid = 777;
    if (port) {
        r.kind = ROUTE_TCP;
        r.port = port;
        r.v6 = 1;
    } else {
        r.kind = ROUTE_UNIX;
        memcpy(r.path, "/run/user/1000/jobgate/a.sock", sizeof("/run/user/1000/jobgate/a.sock"));
    }
    r.created = NOW;
    return r;
}

/* Runs one SQL statement on a second connection and returns the first column
 * of its first row as an integer (or -1 with no row). */
static int64_t side_query(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    int rc = sqlite3_step(st);
    assert_true(rc == SQLITE_ROW || rc == SQLITE_DONE);
    int64_t v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    assert_int_equal(sqlite3_finalize(st), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    return v;
}

static void side_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(
        sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

/* --- collecting callbacks ---------------------------------------------------- */

struct routes_seen {
    struct route r[16];
    int n;
    int stop_after;  /* 0: never */
    struct store *s; /* non-NULL: delete each route from inside the callback */
};

static int collect_route(const struct route *r, void *arg)
{
    struct routes_seen *rs = arg;
    assert_true(rs->n < 16);
    rs->r[rs->n++] = *r;
    if (rs->s)
        assert_int_equal(store_route_delete(rs->s, r->alias), 0);
    return rs->stop_after && rs->n >= rs->stop_after;
}

static const struct route *seen_route(const struct routes_seen *rs, const char *alias)
{
    for (int i = 0; i < rs->n; i++)
        if (strcmp(rs->r[i].alias, alias) == 0)
            return &rs->r[i];
    return NULL;
}

struct sess {
    uint8_t hash[STORE_HASH_LEN];
    char alias[ROUTE_ALIAS_MAX + 1];
    uid_t uid;
    int64_t expires;
};

struct sessions_seen {
    struct sess v[16];
    int n;
};

static int collect_session(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                           int64_t expires, void *arg)
{
    struct sessions_seen *ss = arg;
    assert_true(ss->n < 16);
    struct sess *e = &ss->v[ss->n++];
    memcpy(e->hash, hash, STORE_HASH_LEN);
    assert_true(strlen(alias) < sizeof(e->alias));
    memcpy(e->alias, alias, strlen(alias) + 1);
    e->uid = uid;
    e->expires = expires;
    return 0;
}

static const struct sess *seen_session(const struct sessions_seen *ss, const uint8_t *hash)
{
    for (int i = 0; i < ss->n; i++)
        if (memcmp(ss->v[i].hash, hash, STORE_HASH_LEN) == 0)
            return &ss->v[i];
    return NULL;
}

static int load_sessions(struct store *s, int64_t now, struct sessions_seen *ss)
{
    memset(ss, 0, sizeof(*ss));
    assert_int_equal(store_session_load(s, now, collect_session, ss), 0);
    return ss->n;
}

static int load_routes(struct store *s, struct routes_seen *rs)
{
    memset(rs, 0, sizeof(*rs));
    assert_int_equal(store_route_load(s, collect_route, rs), 0);
    return rs->n;
}

/* --- tests --------------------------------------------------------------------- */

static void test_open_creates_private_wal_db(void **state)
{
    struct fx *f = *state;
    mode_t old = umask(022);
    open_ok(f);
    umask(old);
    struct route r = mk("alpha", 1000, 0);
    assert_int_equal(store_route_put(f->s, &r), 0); /* makes the -wal file exist */

    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char wal[160];
    assert_true(snprintf(wal, sizeof(wal), "%s-wal", f->path) < (int)sizeof(wal));
    assert_int_equal(stat(wal, &st), 0); /* WAL mode is on */
    assert_int_equal(st.st_mode & 077, 0);

    assert_int_equal(side_query(f->path, "PRAGMA user_version"), 3);
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM routes"), 1);
}

/* A database of version 1 (before jobs) is upgraded in place: its routes
 * stay, with no job. */
static void test_upgrade_from_v1(void **state)
{
    struct fx *f = *state;
    side_exec(f->path,
              "CREATE TABLE routes(alias TEXT PRIMARY KEY NOT NULL, name TEXT, uid INTEGER, "
              "  pid INTEGER, kind INTEGER, path TEXT, port INTEGER, v6 INTEGER, created INTEGER);"
              "CREATE TABLE links(hash BLOB PRIMARY KEY NOT NULL, "
              "  alias TEXT NOT NULL REFERENCES routes(alias) ON DELETE CASCADE, expires INTEGER);"
              "CREATE TABLE sessions(hash BLOB PRIMARY KEY NOT NULL, "
              "  alias TEXT NOT NULL REFERENCES routes ON DELETE CASCADE, uid INTEGER, "
              "  expires INTEGER);"
              "CREATE TABLE audit(id INTEGER PRIMARY KEY, time INTEGER, uid INTEGER, event TEXT, "
              "  alias TEXT, detail TEXT);"
              "INSERT INTO routes VALUES('old-one', 'lab', 1000, 0, 2, '', 8000, 0, 1700000000);"
              "PRAGMA user_version = 1;");
    struct store *s = open_ok(f);
    assert_int_equal(side_query(f->path, "PRAGMA user_version"), 3);
    struct routes_seen rs;
    assert_int_equal(load_routes(s, &rs), 1);
    const struct route *r = seen_route(&rs, "old-one");
    assert_non_null(r);
    assert_int_equal(r->port, 8000);
    assert_int_equal(r->job, 0);
    assert_int_equal(r->starting, 0);
    assert_int_equal(r->cross_site, 0);
}

static int collect_job(const struct job *j, void *arg)
{
    struct job *v = arg;
    for (int i = 0; i < 4; i++)
        if (v[i].id == 0) {
            v[i] = *j;
            return 0;
        }
    fail_msg("more jobs than expected");
    return 1;
}

static void test_jobs(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    struct job a = {.id = 4242, .uid = 1000, .user = "alice", .node = "cn042",
                    .not_after = NOW + 3600, .started = NOW};
    struct job b = a;
    b.id = 7;
    b.uid = 1001;
    memcpy(b.user, "bob", 4);
    assert_int_equal(store_job_put(s, &a), 0);
    assert_int_equal(store_job_put(s, &b), 0);
    a.ended = NOW + 60; /* put again: replaced */
    assert_int_equal(store_job_put(s, &a), 0);
    struct route r = mk("jobs-app", 1000, 8080);
    r.job = 4242;
    assert_int_equal(store_route_put(s, &r), 0);
    reopen(f);

    struct job seen[4];
    memset(seen, 0, sizeof(seen));
    assert_int_equal(store_job_load(f->s, collect_job, seen), 0);
    assert_int_equal(seen[0].id, 7); /* in id order */
    assert_memory_equal(&seen[1], &a, sizeof(a));
    assert_int_equal(seen[2].id, 0);
    struct routes_seen rs;
    assert_int_equal(load_routes(f->s, &rs), 1);
    assert_int_equal(seen_route(&rs, "jobs-app")->job, 4242);

    assert_int_equal(store_job_delete(f->s, 7), 0);
    memset(seen, 0, sizeof(seen));
    assert_int_equal(store_job_load(f->s, collect_job, seen), 0);
    assert_int_equal(seen[0].id, 4242);
    assert_int_equal(seen[1].id, 0);

    /* Names the gateway would not record are refused before SQLite. */
    struct job bad = a;
    memcpy(bad.user, "-rf", 4);
    assert_int_equal(store_job_put(f->s, &bad), -EINVAL);
    bad = a;
    memcpy(bad.node, "a b", 4);
    assert_int_equal(store_job_put(f->s, &bad), -EINVAL);
    bad = a;
    bad.id = 0;
    assert_int_equal(store_job_put(f->s, &bad), -EINVAL);
}

static void test_open_narrows_existing_mode(void **state)
{
    struct fx *f = *state;
    int fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0);
    assert_int_equal(fchmod(fd, 0644), 0);
    assert_int_equal(close(fd), 0);
    open_ok(f);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_open_refuses_newer_schema(void **state)
{
    struct fx *f = *state;
    side_exec(f->path, "CREATE TABLE future(x); PRAGMA user_version = 99;");
    struct store *s = (struct store *)1;
    assert_int_equal(store_open(&s, f->path), -EPROTO);
    assert_null(s);
    /* Refused without touching it. */
    assert_int_equal(side_query(f->path, "PRAGMA user_version"), 99);
    assert_int_equal(
        side_query(f->path, "SELECT count(*) FROM sqlite_schema WHERE name = 'routes'"), 0);
}

static void test_open_refuses_foreign_db(void **state)
{
    struct fx *f = *state;
    /* Version 0 but already has a "routes" table: not a database of ours. */
    side_exec(f->path, "CREATE TABLE routes(something_else);");
    struct store *s = NULL;
    assert_true(store_open(&s, f->path) < 0);
    assert_null(s);

    /* A file that is not SQLite at all. */
    unlink_side(f->path, "");
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    assert_true(fputs("this is not a database, just some text that is long enough to matter. "
                      "this is not a database, just some text that is long enough to matter.",
                      fp) >= 0);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(store_open(&s, f->path), -EIO);
    assert_null(s);
}

static void test_routes_put_load_replace(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    struct route a = mk("alpha", 1000, 0);
    struct route b = mk("bravo-2", 1001, 8888);
    b.starting = 1;   /* survives a restart (issue 13) */
    b.cross_site = 1;
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_route_put(s, &b), 0);

    struct routes_seen rs;
    assert_int_equal(load_routes(s, &rs), 2);
    const struct route *ra = seen_route(&rs, "alpha"), *rb = seen_route(&rs, "bravo-2");
    assert_non_null(ra);
    assert_non_null(rb);
    assert_memory_equal(ra, &a, sizeof(a)); /* every field round-trips */
    assert_memory_equal(rb, &b, sizeof(b));

    /* Replace: same alias, new target. Still one row, with the new values. */
    struct route a2 = mk("alpha", 1000, 9999);
    a2.pid = 888;
    assert_int_equal(store_route_put(s, &a2), 0);
    assert_int_equal(load_routes(s, &rs), 2);
    ra = seen_route(&rs, "alpha");
    assert_non_null(ra);
    assert_int_equal(ra->kind, ROUTE_TCP);
    assert_int_equal(ra->port, 9999);
    assert_int_equal(ra->pid, 888);
    assert_string_equal(ra->path, "");

    /* The callback can stop the load early. */
    memset(&rs, 0, sizeof(rs));
    rs.stop_after = 1;
    assert_int_equal(store_route_load(s, collect_route, &rs), 0);
    assert_int_equal(rs.n, 1);

    /* Invalid input is refused before SQLite. */
    struct route bad = mk("Not-Valid", 1000, 80);
    assert_int_equal(store_route_put(s, &bad), -EINVAL);
    bad = mk("okay", 1000, 80);
    bad.kind = 0;
    assert_int_equal(store_route_put(s, &bad), -EINVAL);
    assert_int_equal(store_route_delete(s, "no such"), -EINVAL);
    assert_int_equal(store_route_delete(s, "absent"), -ENOENT);
}

static void test_replace_same_owner_keeps_links(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    uint8_t h[STORE_HASH_LEN], hs[STORE_HASH_LEN];
    hash_of(h, 1);
    hash_of(hs, 2);
    struct route a = mk("alpha", 1000, 0);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_link_put(s, h, "alpha", NOW + 60), 0);
    assert_int_equal(store_session_put(s, hs, "alpha", 1000, NOW + 3600), 0);

    /* The agent reconnects and registers the alias again. */
    a.port = 0;
    a.pid = 999;
    assert_int_equal(store_route_put(s, &a), 0);
    struct sessions_seen ss;
    assert_int_equal(load_sessions(s, NOW, &ss), 1);
    assert_int_equal(store_link_take(s, h, "alpha", NOW, NULL), 0);
}

static void test_replace_other_owner_drops_links(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    uint8_t h[STORE_HASH_LEN], hs[STORE_HASH_LEN];
    hash_of(h, 1);
    hash_of(hs, 2);
    struct route a = mk("alpha", 1000, 0);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_link_put(s, h, "alpha", NOW + 60), 0);
    assert_int_equal(store_session_put(s, hs, "alpha", 1000, NOW + 3600), 0);

    /* The alias passes to another user: the old owner's capabilities die (I1). */
    struct route b = mk("alpha", 2000, 8080);
    assert_int_equal(store_route_put(s, &b), 0);
    struct sessions_seen ss;
    assert_int_equal(load_sessions(s, NOW, &ss), 0);
    assert_int_equal(store_link_take(s, h, "alpha", NOW, NULL), -ENOENT);
    struct routes_seen rs;
    assert_int_equal(load_routes(s, &rs), 1);
    assert_int_equal(rs.r[0].uid, 2000);
}

static void test_route_delete_cascades(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    uint8_t h1[STORE_HASH_LEN], h2[STORE_HASH_LEN], s1[STORE_HASH_LEN], s2[STORE_HASH_LEN];
    hash_of(h1, 1);
    hash_of(h2, 2);
    hash_of(s1, 3);
    hash_of(s2, 4);
    struct route a = mk("alpha", 1000, 0), b = mk("bravo", 1001, 8000);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_route_put(s, &b), 0);
    assert_int_equal(store_link_put(s, h1, "alpha", NOW + 60), 0);
    assert_int_equal(store_link_put(s, h2, "bravo", NOW + 60), 0);
    assert_int_equal(store_session_put(s, s1, "alpha", 1000, NOW + 60), 0);
    assert_int_equal(store_session_put(s, s2, "bravo", 1001, NOW + 60), 0);

    assert_int_equal(store_route_delete(s, "alpha"), 0);
    assert_int_equal(store_route_delete(s, "alpha"), -ENOENT);
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM links WHERE alias = 'alpha'"), 0);
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM sessions WHERE alias = 'alpha'"),
                     0);
    assert_int_equal(store_link_take(s, h1, "alpha", NOW, NULL), -ENOENT);
    struct sessions_seen ss;
    assert_int_equal(load_sessions(s, NOW, &ss), 1);
    assert_null(seen_session(&ss, s1));
    assert_non_null(seen_session(&ss, s2));
    /* The other route's things are untouched. */
    assert_int_equal(store_link_take(s, h2, "bravo", NOW, NULL), 0);
}

static void test_link_take_once(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    uint8_t h[STORE_HASH_LEN];
    hash_of(h, 9);
    struct route a = mk("alpha", 1000, 0);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_link_put(s, h, "alpha", NOW + 300), 0);
    assert_int_equal(store_link_put(s, h, "alpha", NOW + 300), -EEXIST);
    assert_int_equal(store_link_take(s, h, "alpha", NOW, NULL), 0);
    assert_int_equal(store_link_take(s, h, "alpha", NOW, NULL), -ENOENT);
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM links"), 0);

    uint8_t other[STORE_HASH_LEN];
    hash_of(other, 10);
    assert_int_equal(store_link_take(s, other, "alpha", NOW, NULL), -ENOENT);
}

static void test_link_wrong_alias(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    uint8_t h[STORE_HASH_LEN];
    hash_of(h, 11);
    struct route a = mk("alpha", 1000, 0), b = mk("bravo", 1000, 8000);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_route_put(s, &b), 0);
    assert_int_equal(store_link_put(s, h, "alpha", NOW + 300), 0);
    assert_int_equal(store_link_take(s, h, "bravo", NOW, NULL), -ENOENT);
    assert_int_equal(store_link_take(s, h, "alph", NOW, NULL), -ENOENT);
    /* Still valid for its own app. */
    assert_int_equal(store_link_take(s, h, "alpha", NOW, NULL), 0);
    /* A link cannot name a route that does not exist. */
    assert_int_equal(store_link_put(s, h, "ghost", NOW + 300), -ENOENT);
    assert_int_equal(store_link_put(s, h, "-bad", NOW + 300), -EINVAL);
}

static void test_link_expired(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    uint8_t h1[STORE_HASH_LEN], h2[STORE_HASH_LEN];
    hash_of(h1, 12);
    hash_of(h2, 13);
    struct route a = mk("alpha", 1000, 0);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_link_put(s, h1, "alpha", NOW - 1), 0);
    assert_int_equal(store_link_put(s, h2, "alpha", NOW), 0);
    assert_int_equal(store_link_take(s, h1, "alpha", NOW, NULL), -ETIMEDOUT);
    /* Deleted on the way: a second try finds nothing. */
    assert_int_equal(store_link_take(s, h1, "alpha", NOW, NULL), -ENOENT);
    /* Expiry time itself counts as expired. */
    assert_int_equal(store_link_take(s, h2, "alpha", NOW, NULL), -ETIMEDOUT);
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM links"), 0);
}

static void test_sessions(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    uint8_t s1[STORE_HASH_LEN], s2[STORE_HASH_LEN], s3[STORE_HASH_LEN], l1[STORE_HASH_LEN];
    hash_of(s1, 21);
    hash_of(s2, 22);
    hash_of(s3, 23);
    hash_of(l1, 24);
    struct route a = mk("alpha", 1000, 0), b = mk("bravo", 1001, 8000);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_route_put(s, &b), 0);
    assert_int_equal(store_session_put(s, s1, "alpha", 1000, NOW + 100), 0);
    assert_int_equal(store_session_put(s, s2, "bravo", 1001, NOW + 200), 0);
    assert_int_equal(store_session_put(s, s3, "alpha", 4000000000u, NOW - 5), 0);
    assert_int_equal(store_session_put(s, s1, "alpha", 1000, NOW + 100), -EEXIST);
    assert_int_equal(store_session_put(s, s1, "ghost", 1000, NOW + 100), -EEXIST);
    uint8_t s4[STORE_HASH_LEN];
    hash_of(s4, 25);
    assert_int_equal(store_session_put(s, s4, "ghost", 1000, NOW + 100), -ENOENT);

    struct sessions_seen ss;
    assert_int_equal(load_sessions(s, NOW, &ss), 2);
    const struct sess *e = seen_session(&ss, s1);
    assert_non_null(e);
    assert_string_equal(e->alias, "alpha");
    assert_int_equal(e->uid, 1000);
    assert_int_equal(e->expires, NOW + 100);
    e = seen_session(&ss, s2);
    assert_non_null(e);
    assert_string_equal(e->alias, "bravo");
    assert_int_equal(e->uid, 1001);
    assert_null(seen_session(&ss, s3));
    /* Earlier, the expired one was valid; and uids above 2^31 round-trip. */
    assert_int_equal(load_sessions(s, NOW - 10, &ss), 3);
    e = seen_session(&ss, s3);
    assert_non_null(e);
    assert_int_equal(e->uid, 4000000000u);
    assert_int_equal(load_sessions(s, NOW + 150, &ss), 1);

    assert_int_equal(store_session_delete(s, s1), 0);
    assert_int_equal(store_session_delete(s, s1), -ENOENT);
    assert_int_equal(load_sessions(s, NOW, &ss), 1);
    assert_non_null(seen_session(&ss, s2));

    /* Expiry removes the expired session and an expired link, nothing else. */
    assert_int_equal(store_link_put(s, l1, "alpha", NOW - 1), 0);
    assert_int_equal(store_expire(s, NOW), 2);
    assert_int_equal(load_sessions(s, NOW - 10, &ss), 1);
    assert_non_null(seen_session(&ss, s2));
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM links"), 0);
    assert_int_equal(store_expire(s, NOW), 0);
    assert_int_equal(store_expire(s, NOW + 200), 1); /* s2: expires == now */
}

static void test_reopen_persists(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    uint8_t h[STORE_HASH_LEN], hs[STORE_HASH_LEN];
    hash_of(h, 31);
    hash_of(hs, 32);
    struct route a = mk("alpha", 1000, 0);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_link_put(s, h, "alpha", NOW + 60), 0);
    assert_int_equal(store_session_put(s, hs, "alpha", 1000, NOW + 60), 0);
    assert_int_equal(store_audit(s, 1000, "route.add", "alpha", NULL), 0);

    reopen(f);
    s = f->s;
    struct routes_seen rs;
    assert_int_equal(load_routes(s, &rs), 1);
    assert_memory_equal(&rs.r[0], &a, sizeof(a));
    struct sessions_seen ss;
    assert_int_equal(load_sessions(s, NOW, &ss), 1);
    assert_memory_equal(ss.v[0].hash, hs, STORE_HASH_LEN);
    assert_int_equal(store_link_take(s, h, "alpha", NOW, NULL), 0);
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM audit"), 1);

    /* And the one-time link stays used across a restart. */
    reopen(f);
    assert_int_equal(store_link_take(f->s, h, "alpha", NOW, NULL), -ENOENT);
}

static void test_audit(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    char big[1000];
    memset(big, 'd', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(store_audit(s, 1000, "route.add", "alpha", "port 8080"), 0);
    assert_int_equal(store_audit(s, 0, "gateway.start", NULL, NULL), 0);
    assert_int_equal(store_audit(s, 1000, "link.new", "alpha", big), 0);
    assert_int_equal(store_audit(s, 1000, NULL, "alpha", NULL), -EINVAL);

    assert_int_equal(side_query(f->path, "SELECT count(*) FROM audit"), 3);
    assert_int_equal(
        side_query(f->path, "SELECT length(detail) FROM audit WHERE event = 'link.new'"), 256);
    assert_int_equal(side_query(f->path, "SELECT uid FROM audit WHERE event = 'route.add'"), 1000);
    assert_int_equal(
        side_query(f->path, "SELECT count(*) FROM audit WHERE event = 'gateway.start' "
                            "AND alias IS NULL AND detail IS NULL"),
        1);
    int64_t t = side_query(f->path, "SELECT max(time) - min(time) FROM audit");
    assert_true(t >= 0 && t < 60);

    /* Records live 90 days, then store_expire removes them. */
    int64_t now = side_query(f->path, "SELECT max(time) FROM audit");
    assert_int_equal(store_expire(s, now + 89 * 86400), 0);
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM audit"), 3);
    assert_int_equal(store_expire(s, now + 91 * 86400), 0); /* audit rows are not counted */
    assert_int_equal(side_query(f->path, "SELECT count(*) FROM audit"), 0);
}

static void test_audit_cap_keeps_utf8(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    /* 255 ASCII bytes then a two-byte character: the cut must not split it. */
    char d[300];
    memset(d, 'x', 255);
    memcpy(d + 255, "\xc3\xa9\xc3\xa9", 5);
    assert_int_equal(store_audit(s, 1, "ev", NULL, d), 0);
    assert_int_equal(side_query(f->path, "SELECT length(CAST(detail AS BLOB)) FROM audit"), 255);
}

static void test_load_skips_malformed_rows(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    struct route a = mk("alpha", 1000, 0);
    assert_int_equal(store_route_put(s, &a), 0);
    /* Junk written behind our back must not crash or reach the routing table. */
    side_exec(f->path,
              "INSERT INTO routes(alias, name, uid, pid, kind, path, port, v6, created) VALUES"
              "('Bad Alias', 'x', 1, 0, 1, '/p', 0, 0, 0),"
              "('badkind', 'x', 1, 0, 7, '/p', 0, 0, 0),"
              "('badport', 'x', 1, 0, 2, '', 70000, 0, 0),"
              "('baduid', 'x', -1, 0, 2, '', 80, 0, 0),"
              "('longpath', 'x', 1, 0, 1, printf('%.200c', 'p'), 0, 0, 0),"
              "('textuid', 'x', 'abc', 0, 1, '/p', 0, 0, 0);"
              "INSERT INTO sessions(hash, alias, uid, expires) VALUES"
              "(x'0011', 'alpha', 1, 9999999999), ('not a blob', 'alpha', 1, 9999999999);");
    struct routes_seen rs;
    assert_int_equal(load_routes(s, &rs), 1);
    assert_string_equal(rs.r[0].alias, "alpha");
    struct sessions_seen ss;
    assert_int_equal(load_sessions(s, NOW, &ss), 0);
}

static void test_callback_may_use_store(void **state)
{
    struct fx *f = *state;
    struct store *s = open_ok(f);
    struct route a = mk("alpha", 1000, 0), b = mk("bravo", 1000, 8000);
    assert_int_equal(store_route_put(s, &a), 0);
    assert_int_equal(store_route_put(s, &b), 0);
    /* E.g. the gateway drops routes of dead processes while loading them. */
    struct routes_seen rs;
    memset(&rs, 0, sizeof(rs));
    rs.s = s;
    assert_int_equal(store_route_load(s, collect_route, &rs), 0);
    assert_int_equal(rs.n, 2);
    assert_int_equal(load_routes(s, &rs), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_creates_private_wal_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_narrows_existing_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_from_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jobs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refuses_newer_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refuses_foreign_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_routes_put_load_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replace_same_owner_keeps_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replace_other_owner_drops_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_delete_cascades, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_take_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_wrong_alias, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_expired, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_persists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_cap_keeps_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_skips_malformed_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callback_may_use_store, setup, teardown),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
