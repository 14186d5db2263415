/* auth — see auth.h. */
#include "auth.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "log.h"
#include "route.h"
#include "store.h"
#include "util.h"

/* What a session cookie's or a link token's hash admits to. */
struct grant {
    char alias[ROUTE_ALIAS_MAX + 1];
    uid_t uid;
    int64_t expires;
};

struct auth {
    struct store *st;
    struct hmap *sessions;     /* cookie hash -> struct grant */
    struct hmap *links;        /* link token hash -> struct grant: the store's links, so that a
                                * made-up token costs a lookup, never a write */
    struct hmap *links_by_uid; /* uid -> how many of links are its (hmap_tally) */
};

struct auth *auth_new(struct store *st)
{
    struct auth *a = xcalloc(1, sizeof(*a));
    a->st = st;
    a->sessions = hmap_new();
    a->links = hmap_new();
    a->links_by_uid = hmap_new();
    return a;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    hmap_free(a->sessions, free);
    hmap_free(a->links, free);
    hmap_free(a->links_by_uid, NULL);
    free(a);
}

static int grant_add(struct hmap *m, const uint8_t hash[TOKEN_HASH_LEN], const char *alias,
                     uid_t uid, int64_t expires)
{
    struct grant *g = xcalloc(1, sizeof(*g));
    size_t n = strnlen(alias, ROUTE_ALIAS_MAX);
    memcpy(g->alias, alias, n);
    g->uid = uid;
    g->expires = expires;
    if (hmap_put(m, hash, TOKEN_HASH_LEN, g) < 0) {
        free(g);
        return -EEXIST;
    }
    return 0;
}

static int link_add(struct auth *a, const uint8_t hash[TOKEN_HASH_LEN], const char *alias,
                    uid_t uid, int64_t expires)
{
    int r = grant_add(a->links, hash, alias, uid, expires);
    if (r == 0)
        hmap_tally(a->links_by_uid, &uid, sizeof(uid), 1);
    return r;
}

/* Frees a link taken out of a->links. */
static void link_gone(struct auth *a, struct grant *g)
{
    if (!g)
        return;
    hmap_tally(a->links_by_uid, &g->uid, sizeof(g->uid), -1);
    free(g);
}

static int load_session(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                        int64_t expires, void *arg)
{
    grant_add(((struct auth *)arg)->sessions, hash, alias, uid, expires);
    return 0;
}

static int load_link(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                     int64_t expires, void *arg)
{
    link_add(arg, hash, alias, uid, expires);
    return 0;
}

int auth_load(struct auth *a, int64_t now)
{
    int r = store_session_load(a->st, now, load_session, a);
    return r < 0 ? r : store_link_load(a->st, now, load_link, a);
}

int auth_link_new(struct auth *a, const char *alias, uid_t uid, unsigned quota, int64_t ttl,
                  char token[TOKEN_STR_LEN + 1], int64_t *expires)
{
    uint8_t hash[TOKEN_HASH_LEN];
    if (quota && hmap_tally(a->links_by_uid, &uid, sizeof(uid), 0) >= quota)
        return -EDQUOT;
    int r = token_new(token);
    if (r < 0)
        return r;
    token_hash(token, TOKEN_STR_LEN, hash);
    *expires = now_real() + ttl;
    r = store_link_put(a->st, hash, alias, *expires);
    if (r == 0)
        r = link_add(a, hash, alias, uid, *expires);
    if (r < 0)
        memset(token, 0, TOKEN_STR_LEN + 1);
    return r;
}

unsigned auth_links_of(struct auth *a, uid_t uid)
{
    return (unsigned)hmap_tally(a->links_by_uid, &uid, sizeof(uid), 0);
}

int auth_link_check(struct auth *a, const char *alias, const char *tok, size_t len)
{
    uint8_t hash[TOKEN_HASH_LEN];
    if (!token_syntax_ok(tok, len))
        return -EINVAL;
    token_hash(tok, len, hash);
    const struct grant *g = hmap_get(a->links, hash, TOKEN_HASH_LEN);
    if (!g || strcmp(g->alias, alias) != 0)
        return -ENOENT;
    return g->expires > now_real() ? 0 : -ETIMEDOUT;
}

int auth_redeem(struct auth *a, const char *alias, const char *tok, size_t len, uid_t uid,
                int64_t session_ttl, char cookie[TOKEN_STR_LEN + 1])
{
    uint8_t hash[TOKEN_HASH_LEN];
    struct store_session sess = {.uid = uid, .expires = now_real() + session_ttl};
    if (!token_syntax_ok(tok, len))
        return -EINVAL;
    int r = token_new(cookie);
    if (r < 0)
        return r;
    token_hash(cookie, TOKEN_STR_LEN, sess.hash);
    token_hash(tok, len, hash);
    /* One transaction: the link goes only with the session made (a write that
     * fails leaves the link good for the next try). */
    r = store_link_take(a->st, hash, alias, now_real(), &sess);
    if (r == 0 || r == -ETIMEDOUT)
        link_gone(a, hmap_del(a->links, hash, TOKEN_HASH_LEN)); /* used up, or expired */
    if (r == 0)
        r = grant_add(a->sessions, sess.hash, alias, uid, sess.expires);
    if (r < 0)
        memset(cookie, 0, TOKEN_STR_LEN + 1);
    explicit_bzero(&sess, sizeof(sess));
    return r;
}

/* The live session of alias with this hash, or NULL. */
static const struct grant *live(struct auth *a, const char *alias,
                                  const uint8_t hash[TOKEN_HASH_LEN])
{
    const struct grant *s = hmap_get(a->sessions, hash, TOKEN_HASH_LEN);
    return s && strcmp(s->alias, alias) == 0 && s->expires > now_real() ? s : NULL;
}

int auth_session_alive(struct auth *a, const char *alias, const uint8_t hash[TOKEN_HASH_LEN])
{
    return live(a, alias, hash) != NULL;
}

int auth_session_check(struct auth *a, const char *alias, const char *val, size_t len, uid_t *uid,
                       uint8_t hash[TOKEN_HASH_LEN], int64_t *expires)
{
    if (!token_syntax_ok(val, len))
        return 0;
    token_hash(val, len, hash);
    const struct grant *s = live(a, alias, hash); /* one lookup per request */
    if (!s)
        return 0;
    if (uid)
        *uid = s->uid;
    if (expires)
        *expires = s->expires;
    return 1;
}

int auth_session_ok(struct auth *a, const char *alias, const char *val, size_t len, uid_t *uid)
{
    uint8_t hash[TOKEN_HASH_LEN];
    return auth_session_check(a, alias, val, len, uid, hash, NULL);
}

void auth_logout(struct auth *a, const char *val, size_t len)
{
    uint8_t hash[TOKEN_HASH_LEN];
    if (!token_syntax_ok(val, len))
        return;
    token_hash(val, len, hash);
    free(hmap_del(a->sessions, hash, TOKEN_HASH_LEN));
    store_session_delete(a->st, hash);
}

struct drop_ctx {
    struct auth *a;       /* links: their per-uid count goes down */
    const char *alias;    /* drop this alias's, or */
    int64_t now;          /* ... the expired ones */
};

static int drop_session(const void *key, size_t klen, void *val, void *arg)
{
    const struct drop_ctx *d = arg;
    struct grant *g = val;
    if (d->alias ? strcmp(g->alias, d->alias) != 0 : g->expires > d->now)
        return 0;
    free(g);
    return 1;
}

static int drop_link(const void *key, size_t klen, void *val, void *arg)
{
    const struct drop_ctx *d = arg;
    struct grant *g = val;
    if (d->alias ? strcmp(g->alias, d->alias) != 0 : g->expires > d->now)
        return 0;
    link_gone(d->a, g);
    return 1;
}

void auth_drop_alias(struct auth *a, const char *alias)
{
    struct drop_ctx d = {.a = a, .alias = alias};
    hmap_filter(a->sessions, drop_session, &d);
    hmap_filter(a->links, drop_link, &d);
}

void auth_expire(struct auth *a, int64_t now)
{
    struct drop_ctx d = {.a = a, .now = now};
    hmap_filter(a->sessions, drop_session, &d);
    hmap_filter(a->links, drop_link, &d);
    if (store_expire(a->st, now) < 0)
        log_warn("could not delete expired links and sessions from the store");
}
