/* route — see route.h. */
#include "route.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "log.h"
#include "util.h"

struct route_table {
    struct hmap *map; /* alias bytes (no NUL) -> struct route * */
};

int route_alias_valid(const char *s, size_t len)
{
    if (!s || len == 0 || len > ROUTE_ALIAS_MAX)
        return 0;
    if (s[0] == '-' || s[len - 1] == '-')
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return 0;
    }
    return 1;
}

struct route_table *route_table_new(void)
{
    struct route_table *t = xmalloc(sizeof(*t));
    t->map = hmap_new();
    return t;
}

void route_table_free(struct route_table *t)
{
    if (!t)
        return;
    hmap_free(t->map, free);
    free(t);
}

int route_add(struct route_table *t, const struct route *r)
{
    size_t len = strnlen(r->alias, sizeof(r->alias));
    if (len == sizeof(r->alias) || !route_alias_valid(r->alias, len))
        return -EINVAL;
    /* The name and path are used as C strings later; an unterminated one
     * would be read past its field (and a cut path would name another socket). */
    if (strnlen(r->name, sizeof(r->name)) == sizeof(r->name) ||
        strnlen(r->path, sizeof(r->path)) == sizeof(r->path)) {
        log_warn("route %.*s: name or path not terminated; refused", (int)len, r->alias);
        return -EINVAL;
    }

    struct route *copy = xmalloc(sizeof(*copy));
    *copy = *r;
    int rc = hmap_put(t->map, copy->alias, len, copy);
    if (rc < 0) {
        free(copy);
        return rc;
    }
    return 0;
}

const struct route *route_find(const struct route_table *t, const char *alias, size_t len)
{
    /* Cheap reject before hashing: Host headers of any length reach here. */
    if (!alias || len == 0 || len > ROUTE_ALIAS_MAX)
        return NULL;
    return hmap_get(t->map, alias, len);
}

int route_remove(struct route_table *t, const char *alias)
{
    size_t len = strnlen(alias, ROUTE_ALIAS_MAX + 1);
    if (len == 0 || len > ROUTE_ALIAS_MAX)
        return -ENOENT;
    struct route *r = hmap_del(t->map, alias, len);
    if (!r)
        return -ENOENT;
    free(r);
    return 0;
}

int route_replace(struct route_table *t, const struct route *r)
{
    size_t len = strnlen(r->alias, sizeof(r->alias));
    struct route *old = len && len <= ROUTE_ALIAS_MAX ? hmap_get(t->map, r->alias, len) : NULL;
    if (!old)
        return -ENOENT;
    if (strnlen(r->name, sizeof(r->name)) == sizeof(r->name) ||
        strnlen(r->path, sizeof(r->path)) == sizeof(r->path))
        return -EINVAL;
    *old = *r; /* same alias, so the map's key (its own copy) still matches */
    return 0;
}

size_t route_count(const struct route_table *t)
{
    return hmap_count(t->map);
}

struct filter_ctx {
    int (*cb)(const struct route *r, void *arg);
    void *arg;
};

static int filter_one(const void *key, size_t klen, void *val, void *arg)
{
    const struct filter_ctx *ctx = arg;
    struct route *r = val;
    (void)key;
    (void)klen;
    if (!ctx->cb(r, ctx->arg))
        return 0;
    /* hmap_filter removes the entry after we return; the route is ours to free. */
    free(r);
    return 1;
}

void route_filter(struct route_table *t, int (*cb)(const struct route *r, void *arg), void *arg)
{
    struct filter_ctx ctx = {cb, arg};
    hmap_filter(t->map, filter_one, &ctx);
}

int route_describe(const struct route *r, char *buf, size_t len)
{
    switch (r->kind) {
    case ROUTE_UNIX: return xsnprintf(buf, len, "unix:%s", r->path);
    case ROUTE_TCP: return xsnprintf(buf, len, r->v6 ? "tcp:[::1]:%u" : "tcp:127.0.0.1:%u", r->port);
    case ROUTE_TUNNEL: return xsnprintf(buf, len, "tunnel:%s", r->path);
    case ROUTE_DIRECT:
        return xsnprintf(buf, len, strchr(r->path, ':') ? "direct:[%s]:%u" : "direct:%s:%u",
                         r->path, r->port);
    }
    return xsnprintf(buf, len, "?");
}

const char *route_state(const struct route *r)
{
    if (r->starting)
        return "starting";
    if (r->kind == ROUTE_TUNNEL && !r->tunnel)
        return r->asleep ? "asleep" : "reconnecting";
    return "ready";
}

void route_reach(const struct route *r, char *buf, size_t len)
{
    if (r->kind != ROUTE_TUNNEL)
        (void)xsnprintf(buf, len, "%s", r->kind == ROUTE_DIRECT ? "direct" : "");
    else if (r->tunnel)
        (void)xsnprintf(buf, len, "tunnel");
    else if (!r->asleep)
        (void)xsnprintf(buf, len, "reconnecting");
    else if (r->cb_port && r->poll)
        (void)xsnprintf(buf, len, "callback, poll %us", (unsigned)r->poll);
    else if (r->cb_port)
        (void)xsnprintf(buf, len, "callback");
    else if (r->poll)
        (void)xsnprintf(buf, len, "poll %us", (unsigned)r->poll);
    else
        (void)xsnprintf(buf, len, "asleep");
}
