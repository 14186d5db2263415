/* ratelimit — see ratelimit.h. */
#include "ratelimit.h"

#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "util.h"

struct source {
    int64_t start;   /* the window began then */
    unsigned fails;  /* in it */
};

struct ratelimit {
    struct hmap *by_source; /* source string -> struct source */
    unsigned max;
    int64_t window;
    size_t max_sources;
};

struct ratelimit *ratelimit_new(unsigned max, int64_t window_ms, size_t max_sources)
{
    struct ratelimit *rl = xcalloc(1, sizeof(*rl));
    rl->by_source = hmap_new();
    rl->max = max;
    rl->window = window_ms;
    rl->max_sources = max_sources;
    return rl;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (!rl)
        return;
    hmap_free(rl->by_source, free);
    free(rl);
}

int64_t ratelimit_wait(struct ratelimit *rl, const char *source, int64_t now)
{
    const struct source *s = hmap_get(rl->by_source, source, strlen(source));
    if (!s || s->fails < rl->max || now - s->start >= rl->window)
        return 0;
    return s->start + rl->window - now;
}

struct sweep {
    int64_t window, now;
};

static int passed(const void *key, size_t klen, void *val, void *arg)
{
    const struct sweep *w = arg;
    struct source *s = val;
    if (w->now - s->start < w->window)
        return 0;
    free(s);
    return 1;
}

void ratelimit_sweep(struct ratelimit *rl, int64_t now)
{
    struct sweep w = {rl->window, now};
    hmap_filter(rl->by_source, passed, &w);
}

void ratelimit_fail(struct ratelimit *rl, const char *source, int64_t now)
{
    size_t n = strlen(source);
    struct source *s = hmap_get(rl->by_source, source, n);
    if (!s) {
        if (hmap_count(rl->by_source) >= rl->max_sources)
            ratelimit_sweep(rl, now);
        if (hmap_count(rl->by_source) >= rl->max_sources)
            return; /* full of live windows: not tracked (see ratelimit.h) */
        s = xcalloc(1, sizeof(*s));
        s->start = now;
        hmap_put(rl->by_source, source, n, s);
    }
    if (now - s->start >= rl->window) {
        s->start = now;
        s->fails = 0;
    }
    if (s->fails < UINT32_MAX)
        s->fails++;
}

size_t ratelimit_sources(const struct ratelimit *rl)
{
    return hmap_count(rl->by_source);
}
