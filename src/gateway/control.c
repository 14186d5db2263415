/* control — see control.h. */
#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "config.h"
#include "control_ops.h"
#include "log.h"
#include "nodechan.h"
#include "util.h"

#define CTL_LINE_MAX 65536
#define CTL_IDLE_SECS 60
#define CTL_MAX_CLIENTS 512 /* in all, for users under the quota */
#define CTL_RESERVED 64     /* more, for root, the gateway's own user and node users */
#define CTL_OUT_MAX 65536 /* answers waiting unread: stop reading requests beyond this */

struct control {
    struct worker *w;          /* worker 0 */
    uid_t uid;                 /* the gateway's own (personal mode serves only it) */
    struct evconnlistener *lis;
    struct event *ev_resume;   /* after an accept error */
    char *path;
    unsigned nclients;
    LIST_HEAD(, ctl_client) clients;
};

struct ctl_client {
    struct control *ctl;
    LIST_ENTRY(ctl_client) link;   /* ctl->clients */
    struct bufferevent *bev;
    struct event *ev_first; /* the first read, with recvmsg: it may carry descriptors */
    struct evbuffer *in;    /* requests not yet handled (the bufferevent's input moves here) */
    struct ctl_peer peer;   /* who, and the descriptors sent with the request */
    int64_t first_by;       /* the first bytes are due by then (now_mono_ms) */
};

static struct log_limit refused_log; /* worker 0's loop only */

static void client_free(struct ctl_client *c)
{
    LIST_REMOVE(c, link);
    c->ctl->nclients--;
    if (c->ev_first)
        event_free(c->ev_first);
    evbuffer_free(c->in);
    for (int i = 0; i < 2; i++)
        if (c->peer.fds[i] >= 0)
            close(c->peer.fds[i]);
    bufferevent_free(c->bev);
    free(c);
}

static void client_read(struct bufferevent *bev, void *arg)
{
    struct ctl_client *c = arg;
    struct evbuffer *in = c->in;
    /* The bufferevent's input stops at its watermark; ours holds at most a line more. */
    if (evbuffer_get_length(in) <= CTL_LINE_MAX)
        evbuffer_add_buffer(in, bufferevent_get_input(bev));
    for (int i = 0; i < 64; i++) { /* a bounded batch per event */
        if (evbuffer_get_length(bufferevent_get_output(bev)) > CTL_OUT_MAX) {
            /* The client does not read its answers: no more requests until it does. */
            bufferevent_disable(bev, EV_READ);
            return;
        }
        size_t len;
        char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_LF);
        if (!line) {
            if (evbuffer_get_length(in) > CTL_LINE_MAX) {
                log_warn("control: uid=%u sent a line over %d bytes; closing", (unsigned)c->peer.uid,
                         CTL_LINE_MAX);
                client_free(c);
            }
            return;
        }
        if (len > CTL_LINE_MAX) {
            free(line);
            client_free(c);
            return;
        }
        control_handle(&c->peer, line, len, bufferevent_get_output(bev));
        free(line);
        /* Descriptors are good for the request they came with only. */
        for (int k = 0; k < 2; k++)
            if (c->peer.fds[k] >= 0) {
                close(c->peer.fds[k]);
                c->peer.fds[k] = -1;
            }
        if (c->peer.handed_over) {
            /* The tunnel holds a copy of this connection; ours goes once the answer is out. */
            bufferevent_disable(bev, EV_READ);
            bufferevent_setwatermark(bev, EV_WRITE, 0, 0);
            if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
                client_free(c);
            return;
        }
    }
    if (evbuffer_get_length(in) > 0) /* more lines than one batch: continue next turn */
        bufferevent_trigger(bev, EV_READ, BEV_TRIG_DEFER_CALLBACKS);
}

/* Answers drained below the low-water mark: take requests again. */
static void client_write(struct bufferevent *bev, void *arg)
{
    struct ctl_client *c = arg;
    if (c->peer.handed_over) {
        client_free(c);
        return;
    }
    if (c->ev_first || (bufferevent_get_enabled(bev) & EV_READ))
        return; /* first_read has not run yet, or reading is on already */
    bufferevent_enable(bev, EV_READ);
    client_read(bev, arg);
}

static void client_event(struct bufferevent *bev, short what, void *arg)
{
    client_free(arg);
}

/* The first bytes of a client: read with recvmsg so that descriptors sent
 * along (the `tunnel` op) are received; then the bufferevent takes over. */
static void first_read(evutil_socket_t fd, short what, void *arg)
{
    struct ctl_client *c = arg;
    char buf[4096];
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(2 * sizeof(int))];
    } cm;
    struct iovec iov = {buf, sizeof(buf)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = &cm,
                        .msg_controllen = sizeof(cm)};
    if (what & EV_TIMEOUT) {
        client_free(c);
        return;
    }
    ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        /* Woken with nothing to read: the event is not persistent, so arm it
         * again for what is left of the deadline (never beyond it). */
        int64_t left = c->first_by - now_mono_ms();
        if (left <= 0) {
            client_free(c);
            return;
        }
        struct timeval tv = {(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
        event_add(c->ev_first, &tv);
        return;
    }
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); n >= 0 && h; h = CMSG_NXTHDR(&mh, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int fds[2];
        for (size_t i = 0; i < k; i++) {
            int got;
            memcpy(&got, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
            if (i < 2 && k == 2)
                fds[i] = got;
            else
                close(got); /* not the two we take */
        }
        if (k == 2 && c->peer.fds[0] < 0) {
            c->peer.fds[0] = fds[0];
            c->peer.fds[1] = fds[1];
        } else if (k == 2) {
            close(fds[0]);
            close(fds[1]);
        }
    }
    if (n <= 0 || (mh.msg_flags & MSG_CTRUNC)) {
        if (mh.msg_flags & MSG_CTRUNC)
            log_warn("control: uid=%u sent more descriptors than a request takes; closing",
                     (unsigned)c->peer.uid);
        client_free(c);
        return;
    }
    event_free(c->ev_first);
    c->ev_first = NULL;
    evbuffer_add(c->in, buf, (size_t)n);
    bufferevent_enable(c->bev, EV_READ);
    client_read(c->bev, c);
}

/* Root, the gateway's own user and node users are outside the quota. */
static int exempt(const struct control *ctl, uid_t uid)
{
    return uid == 0 || uid == ctl->uid || nodechan_trusts(ctl->w->nodes, uid);
}

/* Refuses (answers, logs within a rate, closes fd) a client over its uid's
 * quota or over the total; 1 if refused. The quota keeps one user from
 * taking the slots of all; the reserve keeps the exempt users in. */
static int refuse_over_quota(struct control *ctl, int fd, uid_t uid)
{
    char msg[200];
    int free_pass = exempt(ctl, uid);
    unsigned mine = 0, quota = ctl->w->cfg->quota_control;
    struct ctl_client *c;
    LIST_FOREACH(c, &ctl->clients, link)
        mine += c->peer.uid == uid;
    if (!free_pass && mine >= quota)
        snprintf(msg, sizeof(msg), "uid %u has %u control connections open, its quota "
                 "([quota] control_clients)", (unsigned)uid, mine);
    else if (ctl->nclients >= CTL_MAX_CLIENTS + (free_pass ? CTL_RESERVED : 0))
        snprintf(msg, sizeof(msg), "the gateway has %u control connections open, its most",
                 ctl->nclients);
    else
        return 0;
    char line[300];
    int n = snprintf(line, sizeof(line), "{\"ok\":false,\"code\":\"quota\",\"error\":\"%s\"}\n", msg);
    ssize_t w = write(fd, line, (size_t)n);
    (void)w;
    log_limited(&refused_log, LOG_LVL_WARN, "control: refused uid=%u: %s", (unsigned)uid, msg);
    close(fd);
    return 1;
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct control *ctl = arg;
    struct ucred cred;
    socklen_t cl = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
        log_warn("control: SO_PEERCRED failed: %s", strerror(errno));
        close(fd);
        return;
    }
    if (!ctl->w->cfg->shared && cred.uid != ctl->uid) {
        /* A personal gateway serves its own user only. */
        static const char msg[] =
            "{\"ok\":false,\"code\":\"forbidden\",\"error\":\"this is another user's personal gateway\"}\n";
        ssize_t w = write(fd, msg, sizeof(msg) - 1);
        (void)w;
        log_warn("control: refused uid=%u on a personal gateway", (unsigned)cred.uid);
        close(fd);
        return;
    }
    if (refuse_over_quota(ctl, fd, cred.uid))
        return;
    /* An out-of-band byte is an ordinary (bad) byte of the request here, so
     * that it can never leave a readable socket that reads nothing. */
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof(one));
    struct ctl_client *c = xcalloc(1, sizeof(*c));
    c->ctl = ctl;
    c->peer.w = ctl->w;
    c->peer.uid = cred.uid;
    c->peer.pid = cred.pid;
    c->peer.sock = fd;
    c->peer.fds[0] = c->peer.fds[1] = -1;
    c->in = evbuffer_new();
    c->bev = bufferevent_socket_new(ctl->w->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev)
        fatal("out of memory (control client)");
    ctl->nclients++;
    LIST_INSERT_HEAD(&ctl->clients, c, link);
    struct timeval idle = {CTL_IDLE_SECS, 0};
    bufferevent_set_timeouts(c->bev, &idle, &idle);
    bufferevent_setwatermark(c->bev, EV_READ, 0, CTL_LINE_MAX + 2);
    bufferevent_setwatermark(c->bev, EV_WRITE, CTL_OUT_MAX / 2, 0);
    bufferevent_setcb(c->bev, client_read, client_write, client_event, c);
    bufferevent_enable(c->bev, EV_WRITE);
    c->ev_first = event_new(ctl->w->base, fd, EV_READ, first_read, c);
    if (!c->ev_first)
        fatal("out of memory (control client)");
    c->first_by = now_mono_ms() + CTL_IDLE_SECS * 1000;
    event_add(c->ev_first, &idle);
}

static void resume_listener(evutil_socket_t fd, short what, void *arg)
{
    struct control *ctl = arg; /* alive: control_stop frees this timer with it */
    evconnlistener_enable(ctl->lis);
}

/* Out of descriptors (or another accept error): pause a second rather than spin. */
static void on_accept_error(struct evconnlistener *lis, void *arg)
{
    struct control *ctl = arg;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval sec = {1, 0};
    log_warn("control: accept: %s; pausing for a second", evutil_socket_error_to_string(err));
    evconnlistener_disable(lis);
    evtimer_add(ctl->ev_resume, &sec);
}

struct control *control_start(struct worker *w0, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    const struct jg_config *cfg = w0->cfg;
    const char *path = cfg->control_socket;
    size_t n = strlen(path);
    if (n >= sizeof(sun.sun_path)) {
        errmsg(err, errlen, -ENAMETOOLONG, "control socket path %s is too long", path);
        return NULL;
    }
    char dir[sizeof(sun.sun_path)];
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        int r = mkdir_p(dir, cfg->shared ? 0755 : 0700);
        if (r < 0) {
            errmsg(err, errlen, r, "cannot create %s: %s", dir, strerror(-r));
            return NULL;
        }
    }
    /* A stale socket from a previous run: remove it only if nobody answers on it. */
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, n + 1);
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
        close(probe);
        errmsg(err, errlen, -EADDRINUSE, "another jobgated already answers on %s", path);
        return NULL;
    }
    if (probe >= 0)
        close(probe);
    unlink(path);

    struct control *ctl = xcalloc(1, sizeof(*ctl));
    ctl->w = w0;
    ctl->uid = getuid();
    ctl->path = xstrdup(path);
    mode_t old = umask(cfg->shared ? 0111 : 0177);
    ctl->lis = evconnlistener_new_bind(w0->base, on_accept, ctl,
                                       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 64,
                                       (struct sockaddr *)&sun, sizeof(sun));
    umask(old);
    if (!ctl->lis) {
        errmsg(err, errlen, -EIO, "cannot listen on %s: %s", path, strerror(errno));
        free(ctl->path);
        free(ctl);
        return NULL;
    }
    evconnlistener_set_error_cb(ctl->lis, on_accept_error);
    ctl->ev_resume = evtimer_new(w0->base, resume_listener, ctl);
    log_info("control socket at %s", path);
    return ctl;
}

void control_stop(struct control *ctl)
{
    if (!ctl)
        return;
    while (!LIST_EMPTY(&ctl->clients))
        client_free(LIST_FIRST(&ctl->clients));
    if (ctl->ev_resume)
        event_free(ctl->ev_resume);
    evconnlistener_free(ctl->lis);
    unlink(ctl->path);
    free(ctl->path);
    free(ctl);
}
