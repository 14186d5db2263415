/* jobready — see jobready.h. */
#include "jobready.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <slurm/slurm.h>
#include <slurm/spank.h>

#include "nodecall.h"
#include "plugerr.h"
#include "procnet.h"

/* The step's one watcher: written by jobready_start and jobready_stop on
 * SPANK's thread, read by the watcher thread only between them. */
static struct {
    int started;
    int rfd, wfd, stop[2];
    pthread_t thread;
    struct plugconf conf;
    uint32_t jobid;
    uid_t uid;
    pid_t stepd;
    char node[128];
} w = {.rfd = -1, .wfd = -1, .stop = {-1, -1}};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A table address (procnet.h) as text for the gateway: "" to leave it out
 * (loopback, link-local), "*" for a wildcard (every address of the node), else
 * the IP literal. */
static void addr_text(const char *hex, int v6, char *out, size_t len)
{
    out[0] = '\0';
    if (!v6) {
        struct in_addr a;
        a.s_addr = (uint32_t)strtoul(hex, NULL, 16);
        if (a.s_addr == 0)
            snprintf(out, len, "*");
        else if ((ntohl(a.s_addr) >> 24) != 127)
            inet_ntop(AF_INET, &a, out, (socklen_t)len);
        return;
    }
    struct in6_addr a;
    uint32_t words[4];
    char part[9];
    for (int i = 0; i < 4; i++) {
        memcpy(part, hex + 8 * i, 8);
        part[8] = '\0';
        words[i] = (uint32_t)strtoul(part, NULL, 16);
    }
    memcpy(&a, words, sizeof(a));
    if (IN6_IS_ADDR_UNSPECIFIED(&a)) {
        snprintf(out, len, "*6");
    } else if (IN6_IS_ADDR_V4MAPPED(&a)) {
        struct in_addr v4;
        memcpy(&v4, &a.s6_addr[12], 4);
        if ((ntohl(v4.s_addr) >> 24) != 127)
            inet_ntop(AF_INET, &v4, out, (socklen_t)len);
    } else if (!IN6_IS_ADDR_LOOPBACK(&a) && !IN6_IS_ADDR_LINKLOCAL(&a)) {
        inet_ntop(AF_INET6, &a, out, (socklen_t)len);
    }
}

struct list_ctx {
    json_t *arr;
    const char *const *addrs; /* the node's addresses */
    size_t naddrs;
    uid_t uid;                /* the job's: another user's socket is never the job's */
};

/* Adds host:port once; 1 when the list is full. */
static int add_dest(json_t *arr, const char *host, unsigned port)
{
    size_t i;
    json_t *d;
    json_array_foreach(arr, i, d)
        if (strcmp(json_string_value(json_object_get(d, "host")), host) == 0 &&
            json_integer_value(json_object_get(d, "port")) == (json_int_t)port)
            return 0;
    json_array_append_new(arr, json_pack("{s:s, s:i}", "host", host, "port", (int)port));
    return json_array_size(arr) >= JOBREADY_DESTS_MAX;
}

static int add_listener(const struct procnet_sock *s, int v6, void *arg)
{
    struct list_ctx *lc = arg;
    char text[INET6_ADDRSTRLEN];
    if (strlen(s->local) != (v6 ? 32u : 8u) || (uid_t)s->uid != lc->uid)
        return 0;
    addr_text(s->local, v6, text, sizeof(text));
    if (!text[0])
        return 0;
    if (text[0] != '*') {
        /* Only an address of this node (IP_FREEBIND binds any): else the gateway would be
         * sent to someone else's host. */
        for (size_t i = 0; i < lc->naddrs; i++)
            if (strcmp(lc->addrs[i], text) == 0)
                return add_dest(lc->arr, text, s->lport);
        return 0;
    }
    /* A wildcard: every address of the node (of IPv4 only, for 0.0.0.0), each once. */
    for (size_t i = 0; i < lc->naddrs; i++)
        if ((text[1] == '6' || !strchr(lc->addrs[i], ':')) &&
            add_dest(lc->arr, lc->addrs[i], s->lport))
            return 1;
    return 0;
}

json_t *jobready_list(const char *proc, pid_t root, uid_t uid, const char *const *addrs,
                      size_t naddrs)
{
    struct list_ctx lc = {.arr = json_array(), .addrs = addrs, .naddrs = naddrs, .uid = uid};
    if (!lc.arr || procnet_tree_listeners(proc, root, add_listener, &lc) < 0) {
        json_decref(lc.arr);
        return NULL;
    }
    return lc.arr;
}

/* The node's own addresses now (not loopback, not link-local): where a
 * wildcard listener is reached. The count, at most max. */
static size_t node_addrs(char (*out)[INET6_ADDRSTRLEN], size_t max)
{
    struct ifaddrs *ifs = NULL;
    size_t n = 0;
    if (getifaddrs(&ifs) < 0)
        return 0;
    for (struct ifaddrs *i = ifs; i && n < max; i = i->ifa_next) {
        if (!i->ifa_addr || (i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP))
            continue;
        if (i->ifa_addr->sa_family == AF_INET) {
            struct in_addr a = ((struct sockaddr_in *)i->ifa_addr)->sin_addr;
            if ((ntohl(a.s_addr) >> 24) != 127 && (ntohl(a.s_addr) >> 16) != 0xA9FE)
                inet_ntop(AF_INET, &a, out[n++], INET6_ADDRSTRLEN);
        } else if (i->ifa_addr->sa_family == AF_INET6) {
            struct in6_addr *a = &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
            if (!IN6_IS_ADDR_LOOPBACK(a) && !IN6_IS_ADDR_LINKLOCAL(a))
                inet_ntop(AF_INET6, a, out[n++], INET6_ADDRSTRLEN);
        }
    }
    freeifaddrs(ifs);
    return n;
}

static void register_now(void)
{
    char err[1400], addrs[JOBREADY_DESTS_MAX][INET6_ADDRSTRLEN];
    const char *ap[JOBREADY_DESTS_MAX];
    size_t na = node_addrs(addrs, JOBREADY_DESTS_MAX);
    for (size_t i = 0; i < na; i++)
        ap[i] = addrs[i];
    json_t *list = jobready_list("/proc", w.stepd, w.uid, ap, na);
    if (!list) {
        slurm_error("jobgate: job %u: cannot list the job's listening sockets in /proc",
                    (unsigned)w.jobid);
        return;
    }
    size_t n = json_array_size(list);
    json_t *req = json_pack("{s:I, s:s, s:o}", "job", (json_int_t)w.jobid, "node", w.node,
                            "listen", list);
    json_t *ans = NULL;
    int status = 0;
    int rc = req ? nodecall_post(&w.conf, "job-ready", req, &status, &ans, err, sizeof(err))
                 : -ENOMEM;
    json_decref(req);
    if (rc < 0)
        slurm_error("jobgate: job %u: cannot register its destinations: %s", (unsigned)w.jobid,
                    err);
    else if (status != 200)
        slurm_error("jobgate: job %u: the gateway refused its destinations (%d): %s",
                    (unsigned)w.jobid, status,
                    json_string_value(json_object_get(ans, "error")) ?: "no reason given");
    else
        slurm_verbose("jobgate: job %u: %zu destinations registered", (unsigned)w.jobid, n);
    json_decref(ans);
}

static void *watch_main(void *arg)
{
    (void)arg;
    int64_t last = 0;
    for (;;) {
        struct pollfd p[2] = {{.fd = w.rfd, .events = POLLIN}, {.fd = w.stop[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        if (p[1].revents)
            return NULL;
        char buf[4096];
        ssize_t r = read(w.rfd, buf, sizeof(buf));
        if (r == 0)
            return NULL; /* every writer is gone */
        if (r < 0)
            continue;
        /* At most once a second, after what came meanwhile: a burst is one signal. */
        int64_t wait = last + JOBREADY_EVERY_MS - mono_ms();
        if (wait > 0 && poll(&p[1], 1, (int)wait) > 0)
            return NULL;
        /* What came meanwhile, but bounded: a task that writes without end must not keep
         * this thread from its stop. */
        for (int i = 0; i < 64 && read(w.rfd, buf, sizeof(buf)) > 0; i++)
            ;
        register_now();
        last = mono_ms();
    }
}

int jobready_prepare(const struct plugconf *c, uint32_t jobid, uid_t uid, const char *node,
                     int *fd, char *err, size_t errlen)
{
    int p[2] = {-1, -1};
    if (w.rfd >= 0)
        return plug_err(err, errlen, -EALREADY, "JOBGATE_READY_FD is set up already");
    /* The read end non-blocking (drained in a loop) and never inherited; the write end
     * inherited by the tasks. */
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0 || pipe2(w.stop, O_CLOEXEC) < 0 ||
        fcntl(p[1], F_SETFD, 0) < 0) {
        int e = errno;
        for (int i = 0; i < 2; i++)
            if (p[i] >= 0)
                close(p[i]);
        jobready_stop();
        return plug_err(err, errlen, -e, "cannot make a pipe: %s", strerror(e));
    }
    w.rfd = p[0];
    w.wfd = p[1];
    w.conf = *c;
    w.jobid = jobid;
    w.uid = uid;
    w.stepd = getpid();
    snprintf(w.node, sizeof(w.node), "%s", node);
    *fd = w.wfd;
    return 0;
}

int jobready_run(char *err, size_t errlen)
{
    if (w.rfd < 0 || w.started)
        return 0;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&w.thread, NULL, watch_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return plug_err(err, errlen, -rc, "cannot start a thread: %s", strerror(rc));
    w.started = 1;
    return 0;
}

void jobready_stop(void)
{
    if (w.started) {
        if (write(w.stop[1], "x", 1) < 0) {
            /* the thread then ends at its next look at the stop pipe */
        }
        /* It may be in a node call (bounded by its deadline): wait that long, then let
         * it go with the process rather than hold up the step's end. */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += NODECALL_TIMEOUT_MS / 1000 + 2;
        if (pthread_timedjoin_np(w.thread, NULL, &until) != 0) {
            pthread_detach(w.thread);
            w.started = 0;
            return; /* its descriptors stay with it */
        }
        w.started = 0;
    }
    int *fds[] = {&w.rfd, &w.wfd, &w.stop[0], &w.stop[1]};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (*fds[i] >= 0) {
            close(*fds[i]);
            *fds[i] = -1;
        }
}
