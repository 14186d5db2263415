/* job — see job.h. */
#include "job.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "util.h"

struct job_table {
    struct hmap *map; /* the id's 4 bytes -> struct job * */
};

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
    hmap_free(t->map, free);
    free(t);
}

int job_put(struct job_table *t, const struct job *j)
{
    if (j->id == 0)
        return -EINVAL;
    struct job *old = hmap_get(t->map, &j->id, sizeof(j->id));
    if (old) {
        *old = *j;
        return 0;
    }
    struct job *copy = xmalloc(sizeof(*copy));
    *copy = *j;
    return hmap_put(t->map, &copy->id, sizeof(copy->id), copy);
}

const struct job *job_find(const struct job_table *t, uint32_t id)
{
    return id ? hmap_get(t->map, &id, sizeof(id)) : NULL;
}

int job_remove(struct job_table *t, uint32_t id)
{
    struct job *j = hmap_del(t->map, &id, sizeof(id));
    if (!j)
        return -ENOENT;
    free(j);
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
    free(val);
    return 1;
}

void job_filter(struct job_table *t, int (*cb)(const struct job *j, void *arg), void *arg)
{
    struct filter_ctx f = {cb, arg};
    hmap_filter(t->map, filter_one, &f);
}
