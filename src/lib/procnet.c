/* procnet — see procnet.h. */
#include "procnet.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* libc only (no util.h): the Slurm plugin builds this file into slurmstepd too. */

#define LINE_MAX_BYTES 512  /* a table line is about 150 bytes (tcp6) */
#define MAX_INODES 64       /* listening sockets on one port (SO_REUSEPORT groups) */
#define MAX_PROCS 65536     /* processes scanned for the tree */
#define MAX_FDS 65536       /* descriptors looked at per process */

/* snprintf that says -1 when it had to cut. */
__attribute__((format(printf, 3, 4)))
static int fmt(char *buf, size_t len, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(buf, len, f, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* A message into why; returns rc. */
__attribute__((format(printf, 4, 5)))
static int say(char *why, size_t len, int rc, const char *f, ...)
{
    if (why && len) {
        va_list ap;
        va_start(ap, f);
        vsnprintf(why, len, f, ap);
        va_end(ap);
    }
    return rc;
}

int procnet_parse_line(const char *line, struct procnet_sock *s)
{
    /* sl local:port remote:port st tx:rx tr:when retrnsmt uid timeout inode */
    if (sscanf(line, " %*u: %32[0-9A-Fa-f]:%x %32[0-9A-Fa-f]:%x %x %*x:%*x %*x:%*x %*x %lu %*u %lu",
               s->local, &s->lport, s->remote, &s->rport, &s->state, &s->uid, &s->inode) != 7)
        return -EINVAL;
    return 0;
}

int procnet_scan(const char *proc, int v6, int (*cb)(const struct procnet_sock *s, void *arg),
                 void *arg)
{
    char path[512], line[LINE_MAX_BYTES];
    if (fmt(path, sizeof(path), "%s/net/%s", proc, v6 ? "tcp6" : "tcp") < 0)
        return -ENAMETOOLONG;
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    if (!fgets(line, sizeof(line), f)) { /* the header */
        fclose(f);
        return 0;
    }
    /* Bounded by the kernel's table; each line is short. */
    while (fgets(line, sizeof(line), f)) {
        struct procnet_sock s;
        if (procnet_parse_line(line, &s) == 0 && cb(&s, arg))
            break;
    }
    fclose(f);
    return 0;
}

int procnet_loopback_reachable(const char *hex, int v6)
{
    if (!v6)
        return strcmp(hex, "0100007F") == 0 || strcmp(hex, "00000000") == 0;
    return strcmp(hex, "00000000000000000000000001000000") == 0 || /* ::1 */
           strcmp(hex, "00000000000000000000000000000000") == 0 || /* :: */
           strcmp(hex, "0000000000000000FFFF00000100007F") == 0;   /* ::ffff:127.0.0.1 */
}

struct listeners_ctx {
    uint16_t port;
    uid_t uid;
    int v6;
    int *mine, *others;
};

static int count_listener(const struct procnet_sock *s, void *arg)
{
    struct listeners_ctx *lc = arg;
    if (s->state != PROCNET_LISTEN || s->lport != lc->port ||
        !procnet_loopback_reachable(s->local, lc->v6))
        return 0;
    if ((uid_t)s->uid == lc->uid)
        lc->mine[lc->v6]++;
    else
        (*lc->others)++;
    return 0;
}

int procnet_listeners(const char *proc, uint16_t port, uid_t uid, int mine[2], int *others,
                      char *why, size_t len)
{
    struct listeners_ctx lc = {.port = port, .uid = uid, .mine = mine, .others = others};
    mine[0] = mine[1] = *others = 0;
    for (lc.v6 = 0; lc.v6 < 2; lc.v6++) {
        int r = procnet_scan(proc, lc.v6, count_listener, &lc);
        if (r < 0 && r != -ENOENT)
            return say(why, len, r, "cannot read %s/net/%s: %s", proc, lc.v6 ? "tcp6" : "tcp",
                       strerror(-r));
    }
    return 0;
}

struct uid_ctx {
    const char *lhex, *rhex;
    unsigned lport, rport;
    long uid;
};

static int match_ends(const struct procnet_sock *s, void *arg)
{
    struct uid_ctx *uc = arg;
    if (s->lport != uc->lport || s->rport != uc->rport || strcasecmp(s->local, uc->lhex) != 0 ||
        strcasecmp(s->remote, uc->rhex) != 0)
        return 0;
    uc->uid = (long)s->uid;
    return 1;
}

long procnet_uid_of(const char *proc, int v6, const char *lhex, unsigned lport, const char *rhex,
                    unsigned rport)
{
    struct uid_ctx uc = {.lhex = lhex, .rhex = rhex, .lport = lport, .rport = rport, .uid = -1};
    if (procnet_scan(proc, v6, match_ends, &uc) < 0)
        return -1;
    return uc.uid;
}

/* An address as the tables print it (see struct procnet_sock). */
static int addr_hex(const struct sockaddr_storage *ss, char *out, size_t len, unsigned *port)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        *port = ntohs(a->sin_port);
        return fmt(out, len, "%08X", (unsigned)a->sin_addr.s_addr);
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uint32_t w[4];
        memcpy(w, &a->sin6_addr, sizeof(w));
        *port = ntohs(a->sin6_port);
        return fmt(out, len, "%08X%08X%08X%08X", (unsigned)w[0], (unsigned)w[1], (unsigned)w[2],
                   (unsigned)w[3]);
    }
    return -1;
}

long procnet_peer_uid(int fd, const char *proc)
{
    struct sockaddr_storage me, peer;
    socklen_t ml = sizeof(me), pl = sizeof(peer);
    char mhex[40], phex[40];
    unsigned mport, pport;
    if (getsockname(fd, (struct sockaddr *)&me, &ml) < 0 ||
        getpeername(fd, (struct sockaddr *)&peer, &pl) < 0 ||
        addr_hex(&me, mhex, sizeof(mhex), &mport) < 0 ||
        addr_hex(&peer, phex, sizeof(phex), &pport) < 0)
        return -1;
    /* The far side's accepted socket: its local end is our peer, its remote end is us. */
    return procnet_uid_of(proc, peer.ss_family == AF_INET6, phex, pport, mhex, mport);
}

struct inodes_ctx {
    uint16_t port;
    unsigned long *ino;
    int *n;
};

static int collect_inode(const struct procnet_sock *s, void *arg)
{
    struct inodes_ctx *ic = arg;
    if (s->state == PROCNET_LISTEN && s->lport == ic->port && s->inode != 0 &&
        *ic->n < MAX_INODES)
        ic->ino[(*ic->n)++] = s->inode;
    return 0;
}

struct proc_ent {
    pid_t pid, ppid;
};

static int by_ppid(const void *a, const void *b)
{
    const struct proc_ent *x = a, *y = b;
    return (x->ppid > y->ppid) - (x->ppid < y->ppid);
}

int procnet_start_time(const char *proc, pid_t pid, uint64_t *start)
{
    char path[512], buf[1024];
    if (fmt(path, sizeof(path), "%s/%ld/stat", proc, (long)pid) < 0)
        return -ENAMETOOLONG;
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    size_t got = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[got] = '\0';
    /* After "pid (comm)": state is field 3, starttime field 22. */
    char *p = strrchr(buf, ')');
    if (!p)
        return -EINVAL;
    p++;
    for (int field = 3; field < 22; field++) {
        while (*p == ' ')
            p++;
        while (*p && *p != ' ')
            p++;
        if (!*p)
            return -EINVAL;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(p, &end, 10);
    if (errno || end == p || (*end != ' ' && *end != '\n' && *end != '\0'))
        return -EINVAL;
    *start = (uint64_t)v;
    return 0;
}

/* Reads every process's parent from <proc>/<pid>/stat. 0 or -errno. */
static int read_procs(const char *proc, struct proc_ent **out, size_t *count)
{
    DIR *d = opendir(proc);
    struct dirent *e;
    size_t n = 0, cap = 256;
    struct proc_ent *v;
    if (!d)
        return -errno;
    v = malloc(cap * sizeof(*v));
    while (v && (e = readdir(d)) && n < MAX_PROCS) {
        char path[512], buf[1024], *end;
        errno = 0;
        long pid = strtol(e->d_name, &end, 10);
        if (errno || *end || pid < 1 || pid > 0x7fffffff || e->d_name[0] < '1' ||
            e->d_name[0] > '9')
            continue;
        if (fmt(path, sizeof(path), "%s/%s/stat", proc, e->d_name) < 0)
            continue;
        FILE *f = fopen(path, "re");
        if (!f)
            continue; /* gone meanwhile */
        size_t got = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[got] = '\0';
        /* "pid (comm) state ppid ...": comm may hold spaces and ')', so take the last ')'. */
        char *rp = strrchr(buf, ')');
        int ppid;
        char state;
        if (!rp || sscanf(rp + 1, " %c %d", &state, &ppid) != 2)
            continue;
        if (n == cap) {
            struct proc_ent *nv = realloc(v, 2 * cap * sizeof(*v));
            if (!nv) {
                free(v);
                v = NULL;
                break;
            }
            v = nv;
            cap *= 2;
        }
        v[n].pid = (pid_t)pid;
        v[n].ppid = (pid_t)ppid;
        n++;
    }
    closedir(d);
    if (!v)
        return -ENOMEM;
    *out = v;
    *count = n;
    return 0;
}

/* root and its descendants into a new array *tree (free()). The count, or -errno. */
static long tree_of(const char *proc, pid_t root, pid_t **tree)
{
    struct proc_ent *ps = NULL;
    size_t np = 0;
    int rc = read_procs(proc, &ps, &np);
    if (rc < 0)
        return rc;
    /* Breadth-first over the tree, children found by binary search in the
     * list sorted by parent: t[] holds root and every descendant found. */
    qsort(ps, np, sizeof(*ps), by_ppid);
    pid_t *t = malloc((np + 1) * sizeof(*t));
    if (!t) {
        free(ps);
        return -ENOMEM;
    }
    size_t nt = 0, head = 0;
    t[nt++] = root;
    while (head < nt) {
        pid_t parent = t[head++];
        size_t lo = 0, hi = np;
        while (lo < hi) { /* first entry with ppid >= parent */
            size_t mid = lo + (hi - lo) / 2;
            if (ps[mid].ppid < parent)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t i = lo; i < np && ps[i].ppid == parent && nt < np + 1; i++)
            if (ps[i].pid != parent)
                t[nt++] = ps[i].pid;
    }
    free(ps);
    *tree = t;
    return (long)nt;
}

/* Marks, among ino[0..n), the socket inodes that pid holds a descriptor of
 * (held[i] = 1). The number newly marked. */
static int mark_held(const char *proc, pid_t pid, const unsigned long *ino, int n, char *held)
{
    char dir[512];
    if (fmt(dir, sizeof(dir), "%s/%ld/fd", proc, (long)pid) < 0)
        return 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    int marked = 0, seen = 0;
    while ((e = readdir(d)) && seen++ < MAX_FDS) {
        char path[1024], target[64];
        if (e->d_name[0] == '.')
            continue;
        if (fmt(path, sizeof(path), "%s/%s", dir, e->d_name) < 0)
            continue;
        ssize_t len = readlink(path, target, sizeof(target) - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        unsigned long inode;
        if (sscanf(target, "socket:[%lu]", &inode) != 1)
            continue;
        for (int i = 0; i < n; i++)
            if (ino[i] == inode && !held[i]) {
                held[i] = 1;
                marked++;
            }
    }
    closedir(d);
    return marked;
}

int procnet_port_in_tree(const char *proc, uint16_t port, pid_t root, char *why, size_t len)
{
    unsigned long ino[MAX_INODES];
    char held[MAX_INODES] = {0};
    int nino = 0, rc;
    struct inodes_ctx ic = {.port = port, .ino = ino, .n = &nino};
    for (int v6 = 0; v6 < 2; v6++) {
        rc = procnet_scan(proc, v6, collect_inode, &ic);
        if (rc < 0 && rc != -ENOENT) /* no IPv6 on this kernel is fine */
            return say(why, len, rc, "cannot read %s/net/%s: %s", proc, v6 ? "tcp6" : "tcp",
                       strerror(-rc));
    }
    if (nino == 0) {
        snprintf(why, len, "nothing listens on port %u", port);
        return -ENOENT;
    }
    pid_t *tree;
    long nt = tree_of(proc, root, &tree);
    if (nt < 0) {
        snprintf(why, len, "cannot list %s: %s", proc, strerror((int)-nt));
        return (int)nt;
    }
    int owned = 0;
    for (long i = 0; i < nt && !owned; i++)
        owned = mark_held(proc, tree[i], ino, nino, held) > 0;
    free(tree);
    if (!owned)
        snprintf(why, len, "port %u is held by a process outside the app's process tree", port);
    return owned;
}

struct listen_set {
    struct procnet_sock *s;
    unsigned long *ino;
    int n, cap, v6base; /* entries [v6base, n) came from tcp6 */
};

static int collect_listen(const struct procnet_sock *s, void *arg)
{
    struct listen_set *ls = arg;
    if (s->state != PROCNET_LISTEN || s->inode == 0 || ls->n >= ls->cap)
        return 0;
    ls->s[ls->n] = *s;
    ls->ino[ls->n++] = s->inode;
    return 0;
}

int procnet_tree_listeners(const char *proc, pid_t root,
                           int (*cb)(const struct procnet_sock *s, int v6, void *arg), void *arg)
{
    struct listen_set ls = {.cap = PROCNET_TREE_LISTEN_MAX};
    ls.s = malloc(ls.cap * sizeof(*ls.s));
    ls.ino = malloc(ls.cap * sizeof(*ls.ino));
    char *held = calloc((size_t)ls.cap, 1);
    int rc = ls.s && ls.ino && held ? 0 : -ENOMEM;
    for (int v6 = 0; rc == 0 && v6 < 2; v6++) {
        if (v6)
            ls.v6base = ls.n;
        rc = procnet_scan(proc, v6, collect_listen, &ls);
        if (rc == -ENOENT)
            rc = 0; /* no IPv6 on this kernel */
    }
    pid_t *tree = NULL;
    long nt = 0;
    if (rc == 0 && ls.n > 0 && (nt = tree_of(proc, root, &tree)) < 0)
        rc = (int)nt;
    for (long i = 0; rc == 0 && i < nt; i++)
        mark_held(proc, tree[i], ls.ino, ls.n, held);
    for (int i = 0; rc == 0 && i < ls.n; i++)
        if (held[i] && cb(&ls.s[i], i >= ls.v6base, arg))
            break;
    free(tree);
    free(held);
    free(ls.s);
    free(ls.ino);
    return rc;
}
