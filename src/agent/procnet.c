/* procnet — see procnet.h. */
#include "procnet.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

#define MAX_INODES 64       /* listening sockets on one port (SO_REUSEPORT groups) */
#define MAX_PROCS 65536     /* processes scanned for the tree */
#define MAX_FDS 65536       /* descriptors looked at per process */

/* Collects the inodes of LISTEN sockets on port from one /proc/net table. */
static int listen_inodes(const char *path, uint16_t port, unsigned long *ino, int *n)
{
    FILE *f = fopen(path, "re");
    char line[512];
    if (!f)
        return errno == ENOENT ? 0 : -errno; /* no IPv6 on this kernel is fine */
    if (!fgets(line, sizeof(line), f)) {
        fclose(f);
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        unsigned lport, st;
        unsigned long inode;
        /* sl local:port remote:port st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line, " %*u: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%*x %x %*x:%*x %*x:%*x %*x %*u %*u %lu",
                   &lport, &st, &inode) != 3)
            continue;
        if (st == 0x0A && lport == port && inode != 0 && *n < MAX_INODES)
            ino[(*n)++] = inode;
    }
    fclose(f);
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
    char path[512];
    unsigned long ino[MAX_INODES];
    int nino = 0, rc;
    for (int v6 = 0; v6 < 2; v6++) {
        if (xsnprintf(path, sizeof(path), "%s/net/%s", proc, v6 ? "tcp6" : "tcp") < 0)
            return -ENAMETOOLONG;
        rc = listen_inodes(path, port, ino, &nino);
        if (rc < 0) {
            snprintf(why, len, "cannot read %s: %s", path, strerror(-rc));
            return rc;
        }
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
