/* job — see job.h. */
#include "job.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "util.h"

struct job_table {
    struct hmap *map; /* the id's 4 bytes -> struct entry * */
};

/* A job and its destinations; the job first, so a struct job * is the entry's. */
struct entry {
    struct job j;
    struct job_dest *dests;
    unsigned ndests;
};

static void entry_free(void *p)
{
    struct entry *e = p;
    if (e)
        free(e->dests);
    free(e);
}

int job_name_valid(const char *name, size_t max)
{
    size_t n = name ? strnlen(name, max) : max;
    if (n == 0 || n >= max || name[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

struct job_table *job_table_new(void)
{
    struct job_table *t = xmalloc(sizeof(*t));
    t->map = hmap_new();
    return t;
}

void job_table_free(struct job_table *t)
{
    if (!t)
        return;
    hmap_free(t->map, entry_free);
    free(t);
}

int job_put(struct job_table *t, const struct job *j)
{
    if (j->id == 0)
        return -EINVAL;
    struct entry *old = hmap_get(t->map, &j->id, sizeof(j->id));
    if (old) {
        old->j = *j;
        return 0;
    }
    struct entry *e = xcalloc(1, sizeof(*e));
    e->j = *j;
    return hmap_put(t->map, &e->j.id, sizeof(e->j.id), e);
}

const struct job *job_find(const struct job_table *t, uint32_t id)
{
    return id ? hmap_get(t->map, &id, sizeof(id)) : NULL;
}

int job_remove(struct job_table *t, uint32_t id)
{
    struct entry *e = hmap_del(t->map, &id, sizeof(id));
    if (!e)
        return -ENOENT;
    entry_free(e);
    return 0;
}

size_t job_count(const struct job_table *t)
{
    return hmap_count(t->map);
}

struct filter_ctx {
    int (*cb)(const struct job *j, void *arg);
    void *arg;
};

static int filter_one(const void *key, size_t klen, void *val, void *arg)
{
    (void)key;
    (void)klen;
    struct filter_ctx *f = arg;
    if (!f->cb(val, f->arg))
        return 0;
    entry_free(val);
    return 1;
}

void job_filter(struct job_table *t, int (*cb)(const struct job *j, void *arg), void *arg)
{
    struct filter_ctx f = {cb, arg};
    hmap_filter(t->map, filter_one, &f);
}

int job_dests_set(struct job_table *t, uint32_t id, const char *node, const struct job_dest *d,
                  unsigned n)
{
    struct entry *e = id ? hmap_get(t->map, &id, sizeof(id)) : NULL;
    if (!e)
        return -ENOENT;
    if (n > JOB_DEST_MAX)
        return -ENOSPC;
    unsigned keep = 0;
    for (unsigned i = 0; i < e->ndests; i++)
        if (strcmp(e->dests[i].node, node) != 0)
            keep++;
    if (keep + n > JOB_DESTS_MAX)
        return -ENOSPC;
    struct job_dest *v = xcalloc(keep + n + 1, sizeof(*v));
    unsigned k = 0;
    for (unsigned i = 0; i < e->ndests; i++)
        if (strcmp(e->dests[i].node, node) != 0)
            v[k++] = e->dests[i];
    for (unsigned i = 0; i < n; i++)
        v[k++] = d[i];
    free(e->dests);
    e->dests = v;
    e->ndests = k;
    return 0;
}

unsigned job_dests(const struct job_table *t, uint32_t id, const struct job_dest **d)
{
    const struct entry *e = id ? hmap_get(t->map, &id, sizeof(id)) : NULL;
    *d = e ? e->dests : NULL;
    return e ? e->ndests : 0;
}

void job_dests_clear(struct job_table *t, uint32_t id)
{
    struct entry *e = id ? hmap_get(t->map, &id, sizeof(id)) : NULL;
    if (!e)
        return;
    free(e->dests);
    e->dests = NULL;
    e->ndests = 0;
}

int job_dest_has(const struct job_table *t, uint32_t id, const char *host, uint16_t port)
{
    const struct job_dest *d;
    unsigned n = job_dests(t, id, &d);
    for (unsigned i = 0; i < n; i++)
        if (d[i].port == port && strcmp(d[i].host, host) == 0)
            return 1;
    return 0;
}
