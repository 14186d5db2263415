/* control — see control.h. */
#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "alias.h"
#include "auth.h"
#include "backend.h"
#include "gateway.h"
#include "log.h"
#include "store.h"
#include "tunnel.h"
#include "util.h"

#define CTL_LINE_MAX 65536
#define CTL_IDLE_SECS 60
#define CTL_MAX_CLIENTS 512
#define CTL_OUT_MAX 65536 /* answers waiting unread: stop reading requests beyond this */

struct control {
    struct gateway *gw;
    struct evconnlistener *lis;
    char *path;
    unsigned nclients;
    struct ctl_client *clients;
};

struct ctl_client {
    struct control *ctl;
    struct ctl_client *next, *prev;
    struct bufferevent *bev;
    struct event *ev_first; /* the first read, with recvmsg: it may carry descriptors */
    struct evbuffer *in;    /* requests not yet handled (the bufferevent's input moves here) */
    int fds[2];             /* stdin and stdout of `jobgate tunnel --stdio`, or -1 */
    int handed_over;        /* the connection now belongs to a tunnel: answer, then let go */
    uid_t uid;
    pid_t pid;
};

/* What a handler answers: a reply object, or an error code and sentence. */
struct reply {
    json_t *obj;
    const char *code;
    char error[512];
};

static void fail(struct reply *rp, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(struct reply *rp, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rp->error, sizeof(rp->error), fmt, ap);
    va_end(ap);
    rp->code = code;
}

static void client_free(struct ctl_client *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->ctl->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->ctl->nclients--;
    if (c->ev_first)
        event_free(c->ev_first);
    evbuffer_free(c->in);
    for (int i = 0; i < 2; i++)
        if (c->fds[i] >= 0)
            close(c->fds[i]);
    bufferevent_free(c->bev);
    free(c);
}

/* Route fields as JSON, for answers. */
static json_t *route_json(struct gateway *gw, const struct route *r)
{
    char url[512], backend[160];
    gateway_url(gw, r->alias, url, sizeof(url));
    if (r->kind == ROUTE_UNIX)
        snprintf(backend, sizeof(backend), "unix:%s", r->path);
    else if (r->kind == ROUTE_TUNNEL)
        tunnel_route_backend(r, backend, sizeof(backend));
    else
        snprintf(backend, sizeof(backend), r->v6 ? "tcp:[::1]:%u" : "tcp:127.0.0.1:%u", r->port);
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:I, s:s}", "alias", r->alias, "name", r->name,
                     "url", url, "uid", (json_int_t)r->uid, "pid", (json_int_t)r->pid, "backend",
                     backend, "created", (json_int_t)r->created, "state",
                     r->starting ? "starting"
                     : r->kind == ROUTE_TUNNEL && !r->tunnel ? "reconnecting" : "ready");
}

/* Adds a fresh link for alias to obj (url, link, expires). */
static int add_link(struct gateway *gw, json_t *obj, const char *alias, int64_t ttl,
                    struct reply *rp)
{
    if (gateway_link_json(gw, obj, alias, ttl) < 0) {
        fail(rp, "internal", "could not store a link (see the gateway's log)");
        return -1;
    }
    return 0;
}

struct find_ctx {
    const char *name;
    uid_t uid;
    const struct route *found;
    int count;
};

static int find_by_name(const struct route *r, void *arg)
{
    struct find_ctx *fc = arg;
    if (r->uid == fc->uid && strcmp(r->name, fc->name) == 0) {
        fc->found = r;
        fc->count++;
    }
    return 0;
}

/* An alias, or a name unique among uid's routes. Others' routes are "not found" (I1). */
static const struct route *resolve(struct ctl_client *c, uid_t uid, json_t *req, struct reply *rp)
{
    struct gateway *gw = c->ctl->gw;
    const char *a = json_string_value(json_object_get(req, "alias"));
    if (!a || !*a || strlen(a) > ROUTE_ALIAS_MAX + ROUTE_NAME_MAX) {
        fail(rp, "invalid", "'alias' must be an app's alias or name");
        return NULL;
    }
    const struct route *r = route_find(gw->routes, a, strlen(a));
    if (r && r->uid == uid)
        return r;
    struct find_ctx fc = {.name = a, .uid = uid};
    route_filter(gw->routes, find_by_name, &fc);
    if (fc.count == 1)
        return fc.found;
    if (fc.count > 1)
        fail(rp, "invalid", "several of your apps are named '%s': give the alias", a);
    else
        fail(rp, "not_found", "you have no app '%s'", a);
    return NULL;
}

static int get_ttl(json_t *req, int64_t dflt, int64_t *ttl, struct reply *rp)
{
    json_t *t = json_object_get(req, "ttl");
    *ttl = dflt;
    if (!t)
        return 0;
    if (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > 7 * 86400) {
        fail(rp, "invalid", "'ttl' must be a number of seconds from 1 to 604800");
        return -1;
    }
    *ttl = json_integer_value(t);
    return 0;
}

/* Full destination checks (I2, I3); may_be_missing for a route that is starting. */
static int check_target(struct gateway *gw, struct route *r, int starting, struct reply *rp)
{
    char why[400];
    int rc;
    if (r->kind == ROUTE_UNIX)
        rc = backend_check_unix(r->path, r->uid, starting, why, sizeof(why));
    else if (starting)
        return 0;
    else
        rc = backend_check_tcp("/proc", r->port, r->uid, &r->v6, why, sizeof(why));
    if (rc < 0) {
        fail(rp, rc == -EPERM ? "forbidden" : "invalid", "%s", why);
        return -1;
    }
    return 0;
}

static void op_register(struct ctl_client *c, uid_t uid, json_t *req, struct reply *rp)
{
    struct gateway *gw = c->ctl->gw;
    struct route r;
    memset(&r, 0, sizeof(r));
    r.uid = uid;
    r.created = now_real();

    const char *name = json_string_value(json_object_get(req, "name"));
    const char *sock = json_string_value(json_object_get(req, "socket"));
    json_t *port = json_object_get(req, "port"), *pid = json_object_get(req, "pid");
    json_t *starting = json_object_get(req, "starting");
    int64_t ttl;

    if (name && !route_name_valid(name, ROUTE_NAME_MAX))
        return fail(rp, "invalid", "'name' must be 1-64 of A-Z a-z 0-9 . _ -");
    snprintf(r.name, sizeof(r.name), "%s", name ? name : "app");
    if (!!sock == !!port)
        return fail(rp, "invalid", "give exactly one of 'socket' and 'port'");
    if (sock) {
        if (strlen(sock) >= sizeof(r.path))
            return fail(rp, "invalid", "'socket' is longer than %zu bytes", sizeof(r.path) - 1);
        r.kind = ROUTE_UNIX;
        memcpy(r.path, sock, strlen(sock) + 1);
    } else {
        if (!json_is_integer(port) || json_integer_value(port) < 1 ||
            json_integer_value(port) > 65535)
            return fail(rp, "invalid", "'port' must be from 1 to 65535");
        r.kind = ROUTE_TCP;
        r.port = (uint16_t)json_integer_value(port);
    }
    if (pid) {
        struct stat st;
        char proc[64];
        if (!json_is_integer(pid) || json_integer_value(pid) < 1 ||
            json_integer_value(pid) > 4194304)
            return fail(rp, "invalid", "'pid' must be a process id");
        r.pid = (pid_t)json_integer_value(pid);
        snprintf(proc, sizeof(proc), "/proc/%ld", (long)r.pid);
        if (stat(proc, &st) < 0 || st.st_uid != uid)
            return fail(rp, "invalid", "process %ld is not a running process of yours", (long)r.pid);
    }
    if (starting && !json_is_boolean(starting))
        return fail(rp, "invalid", "'starting' must be true or false");
    r.starting = json_is_true(starting);
    if (get_ttl(req, gw->cfg->link_ttl, &ttl, rp) < 0 || check_target(gw, &r, r.starting, rp) < 0)
        return;
    if (gateway_route_add(gw, &r) < 0)
        return fail(rp, "internal", "could not add the route (see the gateway's log)");
    rp->obj = json_pack("{s:b, s:s, s:s, s:s}", "ok", 1, "alias", r.alias, "name", r.name, "state",
                        r.starting ? "starting" : "ready");
    add_link(gw, rp->obj, r.alias, ttl, rp);
}

static void op_ready(struct ctl_client *c, uid_t uid, json_t *req, struct reply *rp)
{
    const struct route *found = resolve(c, uid, req, rp);
    if (!found)
        return;
    struct route r = *found;
    if (r.starting) {
        if (check_target(c->ctl->gw, &r, 0, rp) < 0)
            return;
        r.starting = 0;
        if (gateway_route_update(c->ctl->gw, &r) < 0)
            return fail(rp, "internal", "could not update the route (see the gateway's log)");
    }
    rp->obj = json_pack("{s:b, s:s, s:s}", "ok", 1, "alias", r.alias, "state", "ready");
}

struct list_ctx {
    struct ctl_client *c;
    uid_t uid;
    int all;
    json_t *arr;
};

static int list_one(const struct route *r, void *arg)
{
    struct list_ctx *lc = arg;
    if (lc->all || r->uid == lc->uid)
        json_array_append_new(lc->arr, route_json(lc->c->ctl->gw, r));
    return 0;
}

static void op_list(struct ctl_client *c, uid_t uid, json_t *req, struct reply *rp)
{
    struct list_ctx lc = {.c = c, .uid = uid, .arr = json_array()};
    lc.all = c->uid == 0 && c->ctl->gw->cfg->shared && !json_object_get(req, "uid");
    route_filter(c->ctl->gw->routes, list_one, &lc);
    rp->obj = json_pack("{s:b, s:o}", "ok", 1, "routes", lc.arr);
}

static void op_link(struct ctl_client *c, uid_t uid, json_t *req, struct reply *rp)
{
    struct gateway *gw = c->ctl->gw;
    int64_t ttl;
    const struct route *r = resolve(c, uid, req, rp);
    if (!r || get_ttl(req, gw->cfg->link_ttl, &ttl, rp) < 0)
        return;
    rp->obj = json_pack("{s:b, s:s}", "ok", 1, "alias", r->alias);
    add_link(gw, rp->obj, r->alias, ttl, rp);
}

static void op_remove(struct ctl_client *c, uid_t uid, json_t *req, struct reply *rp)
{
    char alias[ROUTE_ALIAS_MAX + 1];
    const struct route *r = resolve(c, uid, req, rp);
    if (!r)
        return;
    snprintf(alias, sizeof(alias), "%s", r->alias);
    if (gateway_route_remove(c->ctl->gw, alias, c->uid, "control.remove") < 0)
        return fail(rp, "internal", "could not remove the route (see the gateway's log)");
    rp->obj = json_pack("{s:b, s:s}", "ok", 1, "alias", alias);
}

static void op_hello(struct ctl_client *c, uid_t uid, json_t *req, struct reply *rp)
{
    struct gateway *gw = c->ctl->gw;
    rp->obj = json_pack("{s:b, s:s, s:s, s:s, s:s, s:I}", "ok", 1, "version", JG_VERSION, "mode",
                        gw->cfg->shared ? "shared" : "personal", "domain", gw->cfg->domain,
                        "url_suffix", gw->url_suffix, "uid", (json_int_t)uid);
}

/* Hands the byte stream of `jobgate tunnel --stdio` (its stdin and stdout,
 * sent with this request) to a tunnel owned by the sender's uid. */
static void op_tunnel(struct ctl_client *c, uid_t uid, json_t *req, struct reply *rp)
{
    json_t *v = json_object_get(req, "version");
    if (!json_is_integer(v) || json_integer_value(v) != 1)
        return fail(rp, "version", "this gateway speaks tunnel protocol version 1");
    if (uid != c->uid)
        return fail(rp, "forbidden", "a tunnel belongs to the user who hands it over");
    if (c->fds[0] < 0 || c->fds[1] < 0)
        return fail(rp, "invalid", "send stdin and stdout with the request (SCM_RIGHTS)");
    int hold = fcntl(bufferevent_getfd(c->bev), F_DUPFD_CLOEXEC, 3);
    int rc = tunnel_adopt_stdio(&c->ctl->gw->workers[0], c->fds[0], c->fds[1], hold, c->uid);
    c->fds[0] = c->fds[1] = -1; /* the tunnel's now, or closed */
    c->handed_over = rc == 0;
    if (rc < 0)
        return fail(rp, "unavailable", "cannot take the tunnel: %s", strerror(-rc));
    rp->obj = json_pack("{s:b}", "ok", 1);
}

static void handle(struct ctl_client *c, const char *line, size_t len)
{
    enum { NONE, READ, WRITE };
    static const struct {
        const char *op;
        void (*fn)(struct ctl_client *, uid_t, json_t *, struct reply *);
        int lock;
    } ops[] = {
        {"hello", op_hello, NONE}, {"register", op_register, WRITE}, {"ready", op_ready, WRITE},
        {"list", op_list, READ},   {"link", op_link, WRITE},         {"remove", op_remove, WRITE},
        {"tunnel", op_tunnel, NONE},
    };
    struct reply rp = {0};
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *op = NULL;
    uid_t uid = c->uid;

    if (!req || !json_is_object(req)) {
        fail(&rp, "invalid", "request is not a JSON object: %s", req ? "wrong type" : jerr.text);
        goto answer;
    }
    op = json_string_value(json_object_get(req, "op"));
    json_t *as = json_object_get(req, "uid");
    if (as) {
        if (!json_is_integer(as) || json_integer_value(as) < 0 ||
            json_integer_value(as) > 0x7fffffff) {
            fail(&rp, "invalid", "'uid' must be a user id");
            goto answer;
        }
        if ((uid_t)json_integer_value(as) != c->uid && (c->uid != 0 || !c->ctl->gw->cfg->shared)) {
            fail(&rp, "forbidden", "only root may act for another user, and only in shared mode");
            goto answer;
        }
        uid = (uid_t)json_integer_value(as);
    }
    if (c->ctl->gw->stopping) {
        fail(&rp, "unavailable", "the gateway is shutting down");
        goto answer;
    }
    for (size_t i = 0; op && i < sizeof(ops) / sizeof(ops[0]); i++) {
        if (strcmp(op, ops[i].op) == 0) {
            if (ops[i].lock == WRITE)
                gateway_wrlock(c->ctl->gw);
            else if (ops[i].lock == READ)
                gateway_rdlock(c->ctl->gw);
            ops[i].fn(c, uid, req, &rp);
            if (ops[i].lock != NONE)
                gateway_unlock(c->ctl->gw);
            goto answer;
        }
    }
    fail(&rp, "invalid", "unknown op '%.40s'", op ? op : "(none)");
answer:
    if (rp.code) {
        json_decref(rp.obj);
        rp.obj = json_pack("{s:b, s:s, s:s}", "ok", 0, "code", rp.code, "error", rp.error);
        log_info("control: uid=%u op=%.20s refused: %s", (unsigned)c->uid, op ? op : "?", rp.error);
    } else {
        log_debug("control: uid=%u op=%s ok", (unsigned)c->uid, op);
    }
    char *out = json_dumps(rp.obj, JSON_COMPACT);
    if (!out)
        fatal("out of memory encoding a control answer");
    struct evbuffer *o = bufferevent_get_output(c->bev);
    evbuffer_add(o, out, strlen(out));
    evbuffer_add(o, "\n", 1);
    /* The answer may carry a link: wipe our copy of it. */
    memset(out, 0, strlen(out));
    free(out);
    json_decref(rp.obj);
    json_decref(req);
    /* Descriptors are good for the request they came with only. */
    for (int i = 0; i < 2; i++)
        if (c->fds[i] >= 0) {
            close(c->fds[i]);
            c->fds[i] = -1;
        }
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
                log_warn("control: uid=%u sent a line over %d bytes; closing", (unsigned)c->uid,
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
        handle(c, line, len);
        free(line);
        if (c->handed_over) {
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
    if (c->handed_over) {
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
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return; /* still armed */
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
        if (k == 2 && c->fds[0] < 0) {
            c->fds[0] = fds[0];
            c->fds[1] = fds[1];
        } else if (k == 2) {
            close(fds[0]);
            close(fds[1]);
        }
    }
    if (n <= 0 || (mh.msg_flags & MSG_CTRUNC)) {
        if (mh.msg_flags & MSG_CTRUNC)
            log_warn("control: uid=%u sent more descriptors than a request takes; closing",
                     (unsigned)c->uid);
        client_free(c);
        return;
    }
    event_free(c->ev_first);
    c->ev_first = NULL;
    evbuffer_add(c->in, buf, (size_t)n);
    bufferevent_enable(c->bev, EV_READ);
    client_read(c->bev, c);
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
    if (!ctl->gw->cfg->shared && cred.uid != ctl->gw->uid) {
        /* A personal gateway serves its own user only. */
        static const char msg[] =
            "{\"ok\":false,\"code\":\"forbidden\",\"error\":\"this is another user's personal gateway\"}\n";
        ssize_t w = write(fd, msg, sizeof(msg) - 1);
        (void)w;
        log_warn("control: refused uid=%u on a personal gateway", (unsigned)cred.uid);
        close(fd);
        return;
    }
    if (ctl->nclients >= CTL_MAX_CLIENTS) {
        log_warn("control: %u clients already; refusing uid=%u", ctl->nclients, (unsigned)cred.uid);
        close(fd);
        return;
    }
    struct ctl_client *c = xcalloc(1, sizeof(*c));
    c->ctl = ctl;
    c->uid = cred.uid;
    c->pid = cred.pid;
    c->fds[0] = c->fds[1] = -1;
    c->in = evbuffer_new();
    c->bev = bufferevent_socket_new(ctl->gw->workers[0].base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev)
        fatal("out of memory (control client)");
    ctl->nclients++;
    c->next = ctl->clients;
    if (ctl->clients)
        ctl->clients->prev = c;
    ctl->clients = c;
    struct timeval idle = {CTL_IDLE_SECS, 0};
    bufferevent_set_timeouts(c->bev, &idle, &idle);
    bufferevent_setwatermark(c->bev, EV_READ, 0, CTL_LINE_MAX + 2);
    bufferevent_setwatermark(c->bev, EV_WRITE, CTL_OUT_MAX / 2, 0);
    bufferevent_setcb(c->bev, client_read, client_write, client_event, c);
    bufferevent_enable(c->bev, EV_WRITE);
    c->ev_first = event_new(ctl->gw->workers[0].base, fd, EV_READ, first_read, c);
    if (!c->ev_first)
        fatal("out of memory (control client)");
    event_add(c->ev_first, &idle);
}

static void resume_listener(evutil_socket_t fd, short what, void *arg)
{
    struct gateway *gw = arg; /* not the control: it may be gone by now */
    if (gw->control)
        evconnlistener_enable(gw->control->lis);
}

/* Out of descriptors (or another accept error): pause a second rather than spin. */
static void on_accept_error(struct evconnlistener *lis, void *arg)
{
    struct control *ctl = arg;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval sec = {1, 0};
    log_warn("control: accept: %s; pausing for a second", evutil_socket_error_to_string(err));
    evconnlistener_disable(lis);
    event_base_once(ctl->gw->workers[0].base, -1, EV_TIMEOUT, resume_listener, ctl->gw, &sec);
}

int control_start(struct gateway *gw, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    const char *path = gw->cfg->control_socket;
    size_t n = strlen(path);
    if (n >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "control socket path %s is too long", path);
        return -ENAMETOOLONG;
    }
    char dir[sizeof(sun.sun_path)];
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        int r = mkdir_p(dir, gw->cfg->shared ? 0755 : 0700);
        if (r < 0) {
            snprintf(err, errlen, "cannot create %s: %s", dir, strerror(-r));
            return r;
        }
    }
    /* A stale socket from a previous run: remove it only if nobody answers on it. */
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, n + 1);
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
        close(probe);
        snprintf(err, errlen, "another jobgated already answers on %s", path);
        return -EADDRINUSE;
    }
    if (probe >= 0)
        close(probe);
    unlink(path);

    struct control *ctl = xcalloc(1, sizeof(*ctl));
    ctl->gw = gw;
    ctl->path = xstrdup(path);
    mode_t old = umask(gw->cfg->shared ? 0111 : 0177);
    ctl->lis = evconnlistener_new_bind(gw->workers[0].base, on_accept, ctl,
                                       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 64,
                                       (struct sockaddr *)&sun, sizeof(sun));
    umask(old);
    if (!ctl->lis) {
        snprintf(err, errlen, "cannot listen on %s: %s", path, strerror(errno));
        free(ctl->path);
        free(ctl);
        return -EIO;
    }
    evconnlistener_set_error_cb(ctl->lis, on_accept_error);
    gw->control = ctl;
    log_info("control socket at %s", path);
    return 0;
}

void control_stop(struct gateway *gw)
{
    struct control *ctl = gw->control;
    if (!ctl)
        return;
    while (ctl->clients)
        client_free(ctl->clients);
    evconnlistener_free(ctl->lis);
    unlink(ctl->path);
    free(ctl->path);
    free(ctl);
    gw->control = NULL;
}
