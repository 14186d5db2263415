/* Unit tests for auth (one-time links and sessions) on a real store in a
 * fresh directory per test. */
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

#include "auth.h"
#include "route.h"
#include "store.h"
#include "token.h"
#include "util.h"

#define APP "brisk-otter-canal"
#define OTHER "calm-heron-lake"
#define OWNER ((uid_t)1000)
#define OTHER_OWNER ((uid_t)1001)

struct fx {
    char dir[64];
    char path[128];
    struct store *st;
    struct auth *a;
};

static struct route mk(const char *alias, uid_t uid)
{
    struct route r;
    memset(&r, 0, sizeof(r));
    assert_true(strlen(alias) < sizeof(r.alias));
    memcpy(r.alias, alias, strlen(alias) + 1);
    memcpy(r.name, "lab", sizeof("lab"));
    r.uid = uid;
    r.pid = 4242;
    r.kind = ROUTE_UNIX;
    static const char sock[] = "/run/user/1000/jobgate/app.sock";
    memcpy(r.path, sock, sizeof(sock));
    r.created = now_real();
    return r;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    memcpy(f->dir, "/tmp/jg-auth-XXXXXX", sizeof("/tmp/jg-auth-XXXXXX"));
    if (!mkdtemp(f->dir) ||
        snprintf(f->path, sizeof(f->path), "%s/state.db", f->dir) >= (int)sizeof(f->path) ||
        store_open(&f->st, f->path) != 0) {
        free(f);
        return -1;
    }
    struct route a = mk(APP, OWNER), b = mk(OTHER, OTHER_OWNER);
    if (store_route_put(f->st, &a) != 0 || store_route_put(f->st, &b) != 0)
        return -1;
    f->a = auth_new(f->st);
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
    auth_free(f->a);
    store_close(f->st);
    unlink_side(f->path, "");
    unlink_side(f->path, "-wal");
    unlink_side(f->path, "-shm");
    unlink_side(f->path, "-journal");
    int rc = rmdir(f->dir);
    free(f);
    return rc;
}

/* Simulates a restart: a new store connection and a new auth loaded from it. */
static void restart(struct fx *f)
{
    auth_free(f->a);
    store_close(f->st);
    f->st = NULL;
    assert_int_equal(store_open(&f->st, f->path), 0);
    f->a = auth_new(f->st);
    assert_int_equal(auth_load(f->a, now_real()), 0);
}

static void link_new(struct fx *f, const char *alias, int64_t ttl, char tok[TOKEN_STR_LEN + 1])
{
    int64_t exp = 0;
    int64_t before = now_real();
    assert_int_equal(auth_link_new(f->a, alias, strcmp(alias, APP) == 0 ? OWNER : OTHER_OWNER, 0,
                                   ttl, tok, &exp), 0);
    assert_int_equal(strlen(tok), TOKEN_STR_LEN);
    assert_true(token_syntax_ok(tok, TOKEN_STR_LEN));
    assert_true(exp >= before + ttl && exp <= now_real() + ttl);
}

static int redeem(struct fx *f, const char *alias, const char *tok, uid_t uid, int64_t ttl,
                  char cookie[TOKEN_STR_LEN + 1])
{
    return auth_redeem(f->a, alias, tok, strlen(tok), uid, ttl, cookie);
}

static int ok(struct fx *f, const char *alias, const char *cookie)
{
    return auth_session_ok(f->a, alias, cookie, strlen(cookie), NULL);
}

/* Gets a live session for alias: link + redeem. */
static void session(struct fx *f, const char *alias, uid_t uid, char cookie[TOKEN_STR_LEN + 1])
{
    char tok[TOKEN_STR_LEN + 1];
    link_new(f, alias, 600, tok);
    assert_int_equal(redeem(f, alias, tok, uid, 3600, cookie), 0);
    assert_int_equal(ok(f, alias, cookie), 1);
}

/* True if the bytes of s occur in the file (absent file: false). */
static int file_contains(const char *path, const char *s)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    assert_non_null(buf);
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        assert_true(r > 0);
        got += (size_t)r;
    }
    close(fd);
    int found = memmem(buf, n, s, strlen(s)) != NULL;
    free(buf);
    return found;
}

static int db_contains(struct fx *f, const char *s)
{
    char p[160];
    static const char *const sfx[] = {"", "-wal", "-journal"};
    for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", f->path, sfx[i]);
        if (file_contains(p, s))
            return 1;
    }
    return 0;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_link_redeem_session(void **state)
{
    struct fx *f = *state;
    char tok[TOKEN_STR_LEN + 1], cookie[TOKEN_STR_LEN + 1];
    link_new(f, APP, 600, tok);

    memset(cookie, 'Z', sizeof(cookie));
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, cookie), 0);
    assert_int_equal(strlen(cookie), TOKEN_STR_LEN);
    assert_true(token_syntax_ok(cookie, TOKEN_STR_LEN));
    assert_string_not_equal(cookie, tok); /* the cookie is a fresh secret */

    uid_t uid = 0;
    assert_int_equal(auth_session_ok(f->a, APP, cookie, TOKEN_STR_LEN, &uid), 1);
    assert_int_equal(uid, OWNER);
    assert_int_equal(ok(f, APP, cookie), 1);
    /* I1/I5: a session is good for its own app only. */
    uid = 77;
    assert_int_equal(auth_session_ok(f->a, OTHER, cookie, TOKEN_STR_LEN, &uid), 0);
    assert_int_equal(uid, 77);
    /* The link token is not a session. */
    assert_int_equal(ok(f, APP, tok), 0);
    /* The cookie is not a link. */
    char c2[TOKEN_STR_LEN + 1];
    assert_int_equal(redeem(f, APP, cookie, OWNER, 3600, c2), -ENOENT);

    /* I4: the store holds hashes only. */
    assert_false(db_contains(f, tok));
    assert_false(db_contains(f, cookie));
}

static void test_two_sessions_distinct(void **state)
{
    struct fx *f = *state;
    char c1[TOKEN_STR_LEN + 1], c2[TOKEN_STR_LEN + 1];
    session(f, APP, OWNER, c1);
    session(f, APP, OWNER, c2);
    assert_string_not_equal(c1, c2);
    assert_int_equal(ok(f, APP, c1), 1);
    assert_int_equal(ok(f, APP, c2), 1);
}

static void test_redeem_once(void **state)
{
    struct fx *f = *state;
    char tok[TOKEN_STR_LEN + 1], cookie[TOKEN_STR_LEN + 1], c2[TOKEN_STR_LEN + 1];
    link_new(f, APP, 600, tok);
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, cookie), 0);
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, c2), -ENOENT);
    /* also after a restart */
    restart(f);
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, c2), -ENOENT);
    assert_int_equal(ok(f, APP, cookie), 1);
}

static void test_redeem_wrong_alias(void **state)
{
    struct fx *f = *state;
    char tok[TOKEN_STR_LEN + 1], cookie[TOKEN_STR_LEN + 1];
    link_new(f, APP, 600, tok);
    assert_int_equal(redeem(f, OTHER, tok, OTHER_OWNER, 3600, cookie), -ENOENT);
    /* Shown on the wrong host, the link still works for its own app. */
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, cookie), 0);
    assert_int_equal(ok(f, APP, cookie), 1);
    assert_int_equal(ok(f, OTHER, cookie), 0);
}

static void test_redeem_unknown_and_malformed(void **state)
{
    struct fx *f = *state;
    char cookie[TOKEN_STR_LEN + 1], tok[TOKEN_STR_LEN + 1];

    /* well-formed but never issued */
    assert_int_equal(token_new(tok), 0);
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, cookie), -ENOENT);

    link_new(f, APP, 600, tok);
    char mangled[TOKEN_STR_LEN + 2];
    memcpy(mangled, tok, TOKEN_STR_LEN + 1);
    mangled[5] = mangled[5] == 'A' ? 'B' : 'A';
    assert_int_equal(redeem(f, APP, mangled, OWNER, 3600, cookie), -ENOENT);

    assert_int_equal(auth_redeem(f->a, APP, tok, TOKEN_STR_LEN - 1, OWNER, 3600, cookie), -EINVAL);
    assert_int_equal(auth_redeem(f->a, APP, "", 0, OWNER, 3600, cookie), -EINVAL);
    assert_int_equal(redeem(f, APP, "short", OWNER, 3600, cookie), -EINVAL);
    memcpy(mangled, tok, TOKEN_STR_LEN + 1);
    mangled[0] = '+';
    assert_int_equal(redeem(f, APP, mangled, OWNER, 3600, cookie), -EINVAL);
    mangled[0] = '/';
    assert_int_equal(redeem(f, APP, mangled, OWNER, 3600, cookie), -EINVAL);
    memcpy(mangled, tok, TOKEN_STR_LEN);
    mangled[TOKEN_STR_LEN] = 'A';
    mangled[TOKEN_STR_LEN + 1] = '\0';
    assert_int_equal(redeem(f, APP, mangled, OWNER, 3600, cookie), -EINVAL);
    /* an embedded NUL within the length */
    memcpy(mangled, tok, TOKEN_STR_LEN + 1);
    mangled[10] = '\0';
    assert_int_equal(auth_redeem(f->a, APP, mangled, TOKEN_STR_LEN, OWNER, 3600, cookie), -EINVAL);

    /* None of this used the real link up. */
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, cookie), 0);
}

/* Links are checked from memory (no write for a made-up token) and counted
 * per owner against a quota; the count follows redeems, drops and restarts. */
static void test_link_check_and_quota(void **state)
{
    struct fx *f = *state;
    char t1[TOKEN_STR_LEN + 1], t2[TOKEN_STR_LEN + 1], t3[TOKEN_STR_LEN + 1];
    char cookie[TOKEN_STR_LEN + 1], made_up[TOKEN_STR_LEN + 1];
    int64_t exp;
    assert_int_equal(auth_link_new(f->a, APP, OWNER, 2, 600, t1, &exp), 0);
    assert_int_equal(auth_link_new(f->a, APP, OWNER, 2, 600, t2, &exp), 0);
    assert_int_equal(auth_link_new(f->a, APP, OWNER, 2, 600, t3, &exp), -EDQUOT);
    assert_int_equal(auth_links_of(f->a, OWNER), 2);
    assert_int_equal(auth_links_of(f->a, OTHER_OWNER), 0);

    assert_int_equal(auth_link_check(f->a, APP, t1, TOKEN_STR_LEN), 0);
    assert_int_equal(auth_link_check(f->a, OTHER, t1, TOKEN_STR_LEN), -ENOENT);
    assert_int_equal(token_new(made_up), 0);
    assert_int_equal(auth_link_check(f->a, APP, made_up, TOKEN_STR_LEN), -ENOENT);
    assert_int_equal(auth_link_check(f->a, APP, "short", 5), -EINVAL);

    /* A redeemed link no longer counts, and is no longer known. */
    assert_int_equal(redeem(f, APP, t1, OWNER, 3600, cookie), 0);
    assert_int_equal(auth_link_check(f->a, APP, t1, TOKEN_STR_LEN), -ENOENT);
    assert_int_equal(auth_links_of(f->a, OWNER), 1);
    assert_int_equal(auth_link_new(f->a, APP, OWNER, 2, 600, t3, &exp), 0);

    /* Counted again after a restart (the owner comes from the route). */
    restart(f);
    assert_int_equal(auth_links_of(f->a, OWNER), 2);
    assert_int_equal(auth_link_check(f->a, APP, t2, TOKEN_STR_LEN), 0);

    /* Expired ones stop counting at the next expiry pass; a dropped app's at once. */
    assert_int_equal(auth_link_new(f->a, OTHER, OTHER_OWNER, 0, -5, t1, &exp), 0);
    assert_int_equal(auth_link_check(f->a, OTHER, t1, TOKEN_STR_LEN), -ETIMEDOUT);
    assert_int_equal(auth_links_of(f->a, OTHER_OWNER), 1);
    auth_expire(f->a, now_real());
    assert_int_equal(auth_links_of(f->a, OTHER_OWNER), 0);
    auth_drop_alias(f->a, APP);
    assert_int_equal(auth_links_of(f->a, OWNER), 0);
    assert_int_equal(auth_link_check(f->a, APP, t2, TOKEN_STR_LEN), -ENOENT);
}

static void test_link_expired_crafted(void **state)
{
    struct fx *f = *state;
    char tok[TOKEN_STR_LEN + 1], cookie[TOKEN_STR_LEN + 1];
    int64_t exp;
    assert_int_equal(auth_link_new(f->a, APP, OWNER, 0, -10, tok, &exp), 0);
    assert_true(exp < now_real());
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, cookie), -ETIMEDOUT);
    /* an expired link is gone after the attempt */
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, cookie), -ENOENT);

    /* the same through the store directly, with a hash we computed */
    assert_int_equal(token_new(tok), 0);
    uint8_t h[TOKEN_HASH_LEN];
    token_hash(tok, TOKEN_STR_LEN, h);
    assert_int_equal(store_link_put(f->st, h, APP, now_real() - 1), 0);
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, cookie), -ETIMEDOUT);
}

static void test_expiry_real_time(void **state)
{
    struct fx *f = *state;
    char tok[TOKEN_STR_LEN + 1], tok2[TOKEN_STR_LEN + 1], cookie[TOKEN_STR_LEN + 1];
    link_new(f, APP, 1, tok);
    link_new(f, APP, 600, tok2);
    assert_int_equal(redeem(f, APP, tok2, OWNER, 1, cookie), 0);
    assert_int_equal(ok(f, APP, cookie), 1);
    sleep(2);
    char c2[TOKEN_STR_LEN + 1];
    assert_int_equal(redeem(f, APP, tok, OWNER, 3600, c2), -ETIMEDOUT);
    assert_int_equal(ok(f, APP, cookie), 0);
    /* expired sessions are not loaded after a restart */
    restart(f);
    assert_int_equal(ok(f, APP, cookie), 0);
}

static int count_row(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                     int64_t expires, void *arg)
{
    (void)hash;
    (void)alias;
    (void)uid;
    (void)expires;
    (*(int *)arg)++;
    return 0;
}

static int stored_sessions(struct fx *f)
{
    int n = 0;
    /* now = 0: every row, expired or not */
    assert_int_equal(store_session_load(f->st, INT64_C(0), count_row, &n), 0);
    return n;
}

static void test_session_expired_crafted(void **state)
{
    struct fx *f = *state;
    char tok[TOKEN_STR_LEN + 1], cookie[TOKEN_STR_LEN + 1], live[TOKEN_STR_LEN + 1];
    link_new(f, APP, 600, tok);
    assert_int_equal(redeem(f, APP, tok, OWNER, -5, cookie), 0);
    assert_int_equal(ok(f, APP, cookie), 0);
    session(f, APP, OWNER, live);
    assert_int_equal(stored_sessions(f), 2);

    auth_expire(f->a, now_real());
    assert_int_equal(ok(f, APP, live), 1);
    assert_int_equal(ok(f, APP, cookie), 0);
    /* the expired row left the store, the live one stayed */
    assert_int_equal(stored_sessions(f), 1);

    /* expiring "two hours from now" ends the one-hour session, in memory and store */
    auth_expire(f->a, now_real() + 7200);
    assert_int_equal(ok(f, APP, live), 0);
    assert_int_equal(stored_sessions(f), 0);
}

static void test_logout(void **state)
{
    struct fx *f = *state;
    char c1[TOKEN_STR_LEN + 1], c2[TOKEN_STR_LEN + 1];
    session(f, APP, OWNER, c1);
    session(f, APP, OWNER, c2);
    auth_logout(f->a, c1, strlen(c1));
    assert_int_equal(ok(f, APP, c1), 0);
    assert_int_equal(ok(f, APP, c2), 1); /* other sessions stay */
    /* garbage and repeats are harmless */
    auth_logout(f->a, "garbage", 7);
    auth_logout(f->a, c1, strlen(c1));
    auth_logout(f->a, "", 0);
    assert_int_equal(ok(f, APP, c2), 1);
    /* and it is gone from the store as well */
    restart(f);
    assert_int_equal(ok(f, APP, c1), 0);
    assert_int_equal(ok(f, APP, c2), 1);
}

static void test_drop_alias(void **state)
{
    struct fx *f = *state;
    char a1[TOKEN_STR_LEN + 1], a2[TOKEN_STR_LEN + 1], b1[TOKEN_STR_LEN + 1];
    session(f, APP, OWNER, a1);
    session(f, APP, OWNER, a2);
    session(f, OTHER, OTHER_OWNER, b1);
    auth_drop_alias(f->a, APP);
    assert_int_equal(ok(f, APP, a1), 0);
    assert_int_equal(ok(f, APP, a2), 0);
    uid_t uid = 0;
    assert_int_equal(auth_session_ok(f->a, OTHER, b1, strlen(b1), &uid), 1);
    assert_int_equal(uid, OTHER_OWNER);

    /* The route's removal cascades in the store: nothing comes back after a restart. */
    assert_int_equal(store_route_delete(f->st, APP), 0);
    restart(f);
    assert_int_equal(ok(f, APP, a1), 0);
    assert_int_equal(ok(f, OTHER, b1), 1);
}

static void test_restart_keeps_sessions_and_links(void **state)
{
    struct fx *f = *state;
    char cookie[TOKEN_STR_LEN + 1], pending[TOKEN_STR_LEN + 1], c2[TOKEN_STR_LEN + 1];
    session(f, APP, OWNER, cookie);
    link_new(f, OTHER, 600, pending);

    restart(f);
    uid_t uid = 0;
    assert_int_equal(auth_session_ok(f->a, APP, cookie, TOKEN_STR_LEN, &uid), 1);
    assert_int_equal(uid, OWNER);
    assert_int_equal(ok(f, OTHER, cookie), 0);
    /* A link not yet used survives the restart and still works once. */
    assert_int_equal(redeem(f, OTHER, pending, OTHER_OWNER, 3600, c2), 0);
    assert_int_equal(auth_session_ok(f->a, OTHER, c2, TOKEN_STR_LEN, &uid), 1);
    assert_int_equal(uid, OTHER_OWNER);
    assert_int_equal(redeem(f, OTHER, pending, OTHER_OWNER, 3600, c2), -ENOENT);

    /* Without auth_load, a fresh auth knows no session. */
    auth_free(f->a);
    f->a = auth_new(f->st);
    assert_int_equal(ok(f, APP, cookie), 0);
}

static void test_garbage_cookie(void **state)
{
    struct fx *f = *state;
    char cookie[TOKEN_STR_LEN + 1];
    session(f, APP, OWNER, cookie);
    uid_t uid = 99;

    static const char *const junk[] = {
        "", "x", "deleted", "null", "0",
        "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", /* 43 bytes, wrong alphabet */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", /* well-formed, unknown */
    };
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++)
        assert_int_equal(auth_session_ok(f->a, APP, junk[i], strlen(junk[i]), &uid), 0);

    char v[2 * TOKEN_STR_LEN + 2];
    /* one character changed */
    memcpy(v, cookie, TOKEN_STR_LEN + 1);
    v[TOKEN_STR_LEN - 1] = v[TOKEN_STR_LEN - 1] == 'a' ? 'b' : 'a';
    assert_int_equal(auth_session_ok(f->a, APP, v, TOKEN_STR_LEN, &uid), 0);
    /* the real cookie plus trailing bytes, or a prefix of it */
    snprintf(v, sizeof(v), "%sA", cookie);
    assert_int_equal(auth_session_ok(f->a, APP, v, strlen(v), &uid), 0);
    assert_int_equal(auth_session_ok(f->a, APP, cookie, TOKEN_STR_LEN - 1, &uid), 0);
    snprintf(v, sizeof(v), "%s%s", cookie, cookie);
    assert_int_equal(auth_session_ok(f->a, APP, v, strlen(v), &uid), 0);
    assert_int_equal(uid, 99);
    /* unknown alias */
    assert_int_equal(auth_session_ok(f->a, "nope", cookie, TOKEN_STR_LEN, &uid), 0);
    assert_int_equal(auth_session_ok(f->a, "", cookie, TOKEN_STR_LEN, &uid), 0);
    /* the real one still works: length is what counts, not a terminator */
    memcpy(v, cookie, TOKEN_STR_LEN);
    v[TOKEN_STR_LEN] = ';';
    assert_int_equal(auth_session_ok(f->a, APP, v, TOKEN_STR_LEN, &uid), 1);
    assert_int_equal(uid, OWNER);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_link_redeem_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_sessions_distinct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redeem_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redeem_wrong_alias, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redeem_unknown_and_malformed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_expired_crafted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expiry_real_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_expired_crafted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_alias, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_keeps_sessions_and_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_cookie, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_check_and_quota, setup, teardown),
    };
    return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}
