/* gridmap — see gridmap.h. */
#include "gridmap.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

struct entry {
    char *dn;
    char user[GRIDMAP_USER_MAX]; /* "" when the line named several users */
    int dup;                     /* the subject appears on more than one line */
};

struct gridmap {
    pthread_mutex_t mu;          /* guards everything below */
    char *path;
    struct entry *e;
    size_t n;
    int broken;                  /* the file as it is now cannot be used */
    char broken_why[300];
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

static void entries_free(struct entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(e[i].dn);
    free(e);
}

static int by_dn(const void *a, const void *b)
{
    return strcmp(((const struct entry *)a)->dn, ((const struct entry *)b)->dn);
}

static int user_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

/* Parses text into a sorted array; duplicates marked. The count, or -EINVAL with "LINE: what". */
static int parse(const char *text, size_t len, struct entry **out, char *err, size_t errlen)
{
    struct entry *v = NULL;
    size_t n = 0, cap = 0;
    unsigned line = 0;
    const char *p = text, *end = text + len;
    *out = NULL;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        const char *s = p;
        p = nl ? nl + 1 : end;
        while (s < le && (*s == ' ' || *s == '\t'))
            s++;
        const char *t = le;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t' || t[-1] == '\r'))
            t--;
        if (s == t || *s == '#')
            continue;
        for (const char *c = s; c < t; c++)
            if ((unsigned char)*c < 0x20 && *c != '\t') {
                entries_free(v, n);
                return errmsg(err, errlen, -EINVAL, "%u: a control character", line);
            }
        if (*s != '"') {
            entries_free(v, n);
            return errmsg(err, errlen, -EINVAL, "%u: expected \"SUBJECT\" USER", line);
        }
        char dn[GRIDMAP_DN_MAX];
        size_t dl = 0;
        const char *c = s + 1;
        for (; c < t && *c != '"'; c++) {
            if (*c == '\\' && c + 1 < t && (c[1] == '"' || c[1] == '\\'))
                c++;
            if (dl + 1 >= sizeof(dn)) {
                entries_free(v, n);
                return errmsg(err, errlen, -EINVAL, "%u: a subject longer than %d bytes", line,
                              GRIDMAP_DN_MAX - 1);
            }
            dn[dl++] = *c;
        }
        dn[dl] = '\0';
        if (c >= t || dl == 0 || dn[0] != '/') {
            entries_free(v, n);
            return errmsg(err, errlen, -EINVAL,
                          "%u: the subject must be quoted and start with '/' (/C=…/O=…/CN=…)",
                          line);
        }
        const char *u = c + 1;
        if (u >= t || (*u != ' ' && *u != '\t')) {
            entries_free(v, n);
            return errmsg(err, errlen, -EINVAL, "%u: expected a user after the subject", line);
        }
        while (u < t && (*u == ' ' || *u == '\t'))
            u++;
        size_t ul = (size_t)(t - u);
        int several = memchr(u, ',', ul) != NULL;
        for (size_t i = 0; i < ul; i++)
            if (!user_char(u[i]) && !(several && u[i] == ',')) {
                entries_free(v, n);
                return errmsg(err, errlen, -EINVAL,
                              "%u: the user must be a name (A-Z a-z 0-9 . _ -), not '%.*s'",
                              line, (int)(ul > 64 ? 64 : ul), u);
            }
        if (ul == 0 || ul >= GRIDMAP_USER_MAX || u[0] == '-' || u[0] == ',') {
            entries_free(v, n);
            return errmsg(err, errlen, -EINVAL, "%u: a user name of 1..%d bytes", line,
                          GRIDMAP_USER_MAX - 1);
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[n].dn = xstrdup(dn);
        v[n].dup = 0;
        if (several)
            v[n].user[0] = '\0';
        else
            snprintf(v[n].user, sizeof(v[n].user), "%.*s", (int)ul, u);
        n++;
    }
    if (n > 1)
        qsort(v, n, sizeof(*v), by_dn);
    for (size_t i = 1; i < n; i++)
        if (strcmp(v[i - 1].dn, v[i].dn) == 0)
            v[i - 1].dup = v[i].dup = 1;
    *out = v;
    return (int)n;
}

int gridmap_parse_check(const char *text, size_t len, char *err, size_t errlen)
{
    struct entry *v;
    int n = parse(text, len, &v, err, errlen);
    if (n >= 0)
        entries_free(v, (size_t)n);
    return n;
}

/* Reads the file again (mu held). 0, or -errno with gm->broken set and why. */
static int load(struct gridmap *gm, const struct stat *st)
{
    char err[256], *buf = NULL;
    int fd = open(gm->path, O_RDONLY | O_CLOEXEC);
    int rc = 0;
    ssize_t got = 0;
    if (fd < 0) {
        rc = -errno;
        snprintf(gm->broken_why, sizeof(gm->broken_why), "%s: cannot open: %s", gm->path,
                 strerror(errno));
    } else if (st->st_size > (off_t)GRIDMAP_FILE_MAX) {
        rc = -EFBIG;
        snprintf(gm->broken_why, sizeof(gm->broken_why), "%s: larger than %u bytes", gm->path,
                 GRIDMAP_FILE_MAX);
    } else {
        buf = xmalloc((size_t)st->st_size + 1);
        size_t have = 0;
        while (have < (size_t)st->st_size &&
               (got = read(fd, buf + have, (size_t)st->st_size - have)) > 0)
            have += (size_t)got;
        if (got < 0 || have != (size_t)st->st_size) {
            rc = got < 0 ? -errno : -EAGAIN;
            snprintf(gm->broken_why, sizeof(gm->broken_why), "%s: cannot read it whole: %s",
                     gm->path, got < 0 ? strerror(errno) : "it changed while being read");
        } else {
            struct entry *v;
            int n = parse(buf, have, &v, err, sizeof(err));
            if (n < 0) {
                rc = n;
                snprintf(gm->broken_why, sizeof(gm->broken_why), "%s:%s", gm->path, err);
            } else {
                entries_free(gm->e, gm->n);
                gm->e = v;
                gm->n = (size_t)n;
            }
        }
    }
    if (fd >= 0)
        close(fd);
    free(buf);
    gm->dev = st->st_dev;
    gm->ino = st->st_ino;
    gm->size = st->st_size;
    gm->mtime = st->st_mtim;
    gm->broken = rc < 0;
    if (rc < 0) {
        entries_free(gm->e, gm->n);
        gm->e = NULL;
        gm->n = 0;
    }
    return rc;
}

struct gridmap *gridmap_open(const char *path, char *err, size_t errlen)
{
    struct gridmap *gm = xcalloc(1, sizeof(*gm));
    struct stat st;
    pthread_mutex_init(&gm->mu, NULL);
    gm->path = xstrdup(path);
    if (stat(path, &st) < 0) {
        errmsg(err, errlen, -errno, "%s: %s", path, strerror(errno));
        gridmap_free(gm);
        return NULL;
    }
    if (load(gm, &st) < 0) {
        errmsg(err, errlen, -EINVAL, "%s", gm->broken_why);
        gridmap_free(gm);
        return NULL;
    }
    log_info("gridmap: %s: %zu subjects", path, gm->n);
    return gm;
}

void gridmap_free(struct gridmap *gm)
{
    if (!gm)
        return;
    entries_free(gm->e, gm->n);
    free(gm->path);
    pthread_mutex_destroy(&gm->mu);
    free(gm);
}

int gridmap_lookup(struct gridmap *gm, const char *dn, char *user, size_t ulen, char *why,
                   size_t wlen)
{
    struct stat st;
    int rc;
    pthread_mutex_lock(&gm->mu);
    if (stat(gm->path, &st) < 0) {
        if (!gm->broken)
            log_err("gridmap: %s: %s; refusing every certificate until it is back", gm->path,
                    strerror(errno));
        snprintf(gm->broken_why, sizeof(gm->broken_why), "%s: %s", gm->path, strerror(errno));
        gm->broken = 1;
        gm->dev = 0;
        gm->ino = 0;
    } else if (st.st_dev != gm->dev || st.st_ino != gm->ino || st.st_size != gm->size ||
               st.st_mtim.tv_sec != gm->mtime.tv_sec || st.st_mtim.tv_nsec != gm->mtime.tv_nsec) {
        if (load(gm, &st) < 0)
            log_err("gridmap: %s; refusing every certificate until it is fixed",
                    gm->broken_why);
        else
            log_info("gridmap: %s read again: %zu subjects", gm->path, gm->n);
    }
    if (gm->broken) {
        rc = errmsg(why, wlen, -EIO, "the grid-mapfile cannot be used (%s)", gm->broken_why);
    } else {
        struct entry key = {.dn = (char *)dn};
        const struct entry *e = gm->n ? bsearch(&key, gm->e, gm->n, sizeof(*gm->e), by_dn) : NULL;
        if (!e)
            rc = errmsg(why, wlen, -ENOENT, "the subject %.300s is not in the grid-mapfile", dn);
        else if (e->dup || !e->user[0])
            rc = errmsg(why, wlen, -ENOTUNIQ,
                        "the grid-mapfile maps the subject %.300s to more than one user", dn);
        else
            rc = xsnprintf(user, ulen, "%s", e->user) < 0 ? -ENAMETOOLONG : 0;
    }
    pthread_mutex_unlock(&gm->mu);
    return rc;
}
