/* procnet — see procnet.h. */
#include "procnet.h"

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util.h"

#define LINE_MAX_BYTES 512  /* a table line is about 150 bytes (tcp6) */
#define MAX_INODES 64       /* listening sockets on one port (SO_REUSEPORT groups) */
#define MAX_PROCS 65536     /* processes scanned for the tree */
#define MAX_FDS 65536       /* descriptors looked at per process */

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
    if (xsnprintf(path, sizeof(path), "%s/net/%s", proc, v6 ? "tcp6" : "tcp") < 0)
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
            return errmsg(why, len, r, "cannot read %s/net/%s: %s", proc, lc.v6 ? "tcp6" : "tcp",
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
        return xsnprintf(out, len, "%08X", (unsigned)a->sin_addr.s_addr);
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uint32_t w[4];
        memcpy(w, &a->sin6_addr, sizeof(w));
        *port = ntohs(a->sin6_port);
        return xsnprintf(out, len, "%08X%08X%08X%08X", (unsigned)w[0], (unsigned)w[1],
                         (unsigned)w[2], (unsigned)w[3]);
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

/* Reads every process's parent from <proc>/<pid>/stat. */
static int read_procs(const char *proc, struct proc_ent **out, size_t *count)
{
    DIR *d = opendir(proc);
    struct dirent *e;
    size_t n = 0, cap = 256;
    struct proc_ent *v;
    if (!d)
        return -errno;
    v = xmalloc(cap * sizeof(*v));
    while ((e = readdir(d)) && n < MAX_PROCS) {
        char path[512], buf[1024];
        uint64_t pid;
        if (parse_uint(e->d_name, 1, 0x7fffffff, &pid) < 0)
            continue;
        if (xsnprintf(path, sizeof(path), "%s/%s/stat", proc, e->d_name) < 0)
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
            cap *= 2;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[n].pid = (pid_t)pid;
        v[n].ppid = (pid_t)ppid;
        n++;
    }
    closedir(d);
    *out = v;
    *count = n;
    return 0;
}

/* 1 if one of pid's descriptors is a socket with one of the inodes. */
static int holds_inode(const char *proc, pid_t pid, const unsigned long *ino, int n)
{
    char dir[512];
    if (xsnprintf(dir, sizeof(dir), "%s/%ld/fd", proc, (long)pid) < 0)
        return 0;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *e;
    int found = 0, seen = 0;
    while (!found && (e = readdir(d)) && seen++ < MAX_FDS) {
        char path[1024], target[64];
        if (e->d_name[0] == '.')
            continue;
        if (xsnprintf(path, sizeof(path), "%s/%s", dir, e->d_name) < 0)
            continue;
        ssize_t len = readlink(path, target, sizeof(target) - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        unsigned long inode;
        if (sscanf(target, "socket:[%lu]", &inode) != 1)
            continue;
        for (int i = 0; i < n; i++)
            if (ino[i] == inode)
                found = 1;
    }
    closedir(d);
    return found;
}

int procnet_port_in_tree(const char *proc, uint16_t port, pid_t root, char *why, size_t len)
{
    unsigned long ino[MAX_INODES];
    int nino = 0, rc;
    struct inodes_ctx ic = {.port = port, .ino = ino, .n = &nino};
    for (int v6 = 0; v6 < 2; v6++) {
        rc = procnet_scan(proc, v6, collect_inode, &ic);
        if (rc < 0 && rc != -ENOENT) /* no IPv6 on this kernel is fine */
            return errmsg(why, len, rc, "cannot read %s/net/%s: %s", proc, v6 ? "tcp6" : "tcp",
                          strerror(-rc));
    }
    if (nino == 0) {
        snprintf(why, len, "nothing listens on port %u", port);
        return -ENOENT;
    }

    struct proc_ent *ps = NULL;
    size_t np = 0;
    rc = read_procs(proc, &ps, &np);
    if (rc < 0) {
        snprintf(why, len, "cannot list %s: %s", proc, strerror(-rc));
        return rc;
    }
    /* Breadth-first over the tree, children found by binary search in the
     * list sorted by parent: tree[] holds root and every descendant found. */
    qsort(ps, np, sizeof(*ps), by_ppid);
    pid_t *tree = xmalloc((np + 1) * sizeof(*tree));
    size_t nt = 0, head = 0;
    tree[nt++] = root;
    while (head < nt) {
        pid_t parent = tree[head++];
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
                tree[nt++] = ps[i].pid;
    }
    int owned = 0;
    for (size_t i = 0; i < nt && !owned; i++)
        owned = holds_inode(proc, tree[i], ino, nino);
    free(tree);
    free(ps);
    if (!owned)
        snprintf(why, len, "port %u is held by a process outside the app's process tree", port);
    return owned;
}
