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

struct session {
    char alias[ROUTE_ALIAS_MAX + 1];
    uid_t uid;
    int64_t expires;
};

struct auth {
    struct store *st;
    struct hmap *sessions; /* token hash -> struct session */
};

struct auth *auth_new(struct store *st)
{
    struct auth *a = xcalloc(1, sizeof(*a));
    a->st = st;
    a->sessions = hmap_new();
    return a;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    hmap_free(a->sessions, free);
    free(a);
}

static int session_add(struct auth *a, const uint8_t hash[TOKEN_HASH_LEN], const char *alias,
                       uid_t uid, int64_t expires)
{
    struct session *s = xcalloc(1, sizeof(*s));
    size_t n = strnlen(alias, ROUTE_ALIAS_MAX);
    memcpy(s->alias, alias, n);
    s->uid = uid;
    s->expires = expires;
    if (hmap_put(a->sessions, hash, TOKEN_HASH_LEN, s) < 0) {
        free(s);
        return -EEXIST;
    }
    return 0;
}

static int load_one(const uint8_t hash[STORE_HASH_LEN], const char *alias, uid_t uid,
                    int64_t expires, void *arg)
{
    session_add(arg, hash, alias, uid, expires);
    return 0;
}

int auth_load(struct auth *a, int64_t now)
{
    return store_session_load(a->st, now, load_one, a);
}

int auth_link_new(struct auth *a, const char *alias, int64_t ttl, char token[TOKEN_STR_LEN + 1],
                  int64_t *expires)
{
    uint8_t hash[TOKEN_HASH_LEN];
    int r = token_new(token);
    if (r < 0)
        return r;
    token_hash(token, TOKEN_STR_LEN, hash);
    *expires = now_real() + ttl;
    r = store_link_put(a->st, hash, alias, *expires);
    if (r < 0)
        memset(token, 0, TOKEN_STR_LEN + 1);
    return r;
}

int auth_redeem(struct auth *a, const char *alias, const char *tok, size_t len, uid_t uid,
                int64_t session_ttl, char cookie[TOKEN_STR_LEN + 1])
{
    uint8_t hash[TOKEN_HASH_LEN];
    if (!token_syntax_ok(tok, len))
        return -EINVAL;
    token_hash(tok, len, hash);
    int r = store_link_take(a->st, hash, alias, now_real());
    if (r < 0)
        return r;
    r = token_new(cookie);
    if (r < 0)
        return r;
    token_hash(cookie, TOKEN_STR_LEN, hash);
    int64_t expires = now_real() + session_ttl;
    r = store_session_put(a->st, hash, alias, uid, expires);
    if (r == 0)
        r = session_add(a, hash, alias, uid, expires);
    if (r < 0)
        memset(cookie, 0, TOKEN_STR_LEN + 1);
    return r;
}

/* The live session of alias with this hash, or NULL. */
static const struct session *live(struct auth *a, const char *alias,
                                  const uint8_t hash[TOKEN_HASH_LEN])
{
    const struct session *s = hmap_get(a->sessions, hash, TOKEN_HASH_LEN);
    return s && strcmp(s->alias, alias) == 0 && s->expires > now_real() ? s : NULL;
}

int auth_session_alive(struct auth *a, const char *alias, const uint8_t hash[TOKEN_HASH_LEN])
{
    return live(a, alias, hash) != NULL;
}

int auth_session_check(struct auth *a, const char *alias, const char *val, size_t len, uid_t *uid,
                       uint8_t hash[TOKEN_HASH_LEN])
{
    if (!token_syntax_ok(val, len))
        return 0;
    token_hash(val, len, hash);
    const struct session *s = live(a, alias, hash); /* one lookup per request */
    if (!s)
        return 0;
    if (uid)
        *uid = s->uid;
    return 1;
}

int auth_session_ok(struct auth *a, const char *alias, const char *val, size_t len, uid_t *uid)
{
    uint8_t hash[TOKEN_HASH_LEN];
    return auth_session_check(a, alias, val, len, uid, hash);
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

static int drop_if_alias(const void *key, size_t klen, void *val, void *arg)
{
    struct session *s = val;
    if (strcmp(s->alias, arg) != 0)
        return 0;
    free(s);
    return 1;
}

void auth_drop_alias(struct auth *a, const char *alias)
{
    hmap_filter(a->sessions, drop_if_alias, (void *)alias);
}

static int drop_if_expired(const void *key, size_t klen, void *val, void *arg)
{
    struct session *s = val;
    if (s->expires > *(const int64_t *)arg)
        return 0;
    free(s);
    return 1;
}

void auth_expire(struct auth *a, int64_t now)
{
    hmap_filter(a->sessions, drop_if_expired, &now);
    if (store_expire(a->st, now) < 0)
        log_warn("could not delete expired links and sessions from the store");
}
