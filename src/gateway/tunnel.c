/* tunnel — see tunnel.h. */
#include "tunnel.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include "auth.h"
#include "gateway.h"
#include "hmap.h"
#include "log.h"
#include "store.h"
#include "token.h"
#include "tunnel_bridge.h"
#include "tunnel_proto.h"
#include "util.h"
#ifdef JG_HAVE_MUNGE
#include "munge_cred.h"
#endif

/* Windows, header and control line limits: tunnel_proto.h, shared with the agent. */
#define TUN_OUT_HIGH (256 * 1024)            /* transport output: make no frames beyond */
#define TUN_MAX_REG 64                       /* registrations per tunnel */
#define TUN_MAX_STREAMS 4096                 /* data streams per tunnel, queued ones included */
#define TUN_MAX_TUNNELS 10000                /* whole gateway */
#define TUN_LOCAL_MAX 64                     /* the agent's name for a target */
#define TUN_ID_MAX 64                        /* a control request's id */
#define TUN_TICK_MS 1000
#define TUN_CTL_OUT_MAX (1024 * 1024)        /* answers the agent has not taken yet */
#define TUN_GONE_TICKS 5                     /* ticks a stream whose conn left may stall */

enum tstate {
    T_HELLO,   /* challenge sent, waiting for the hello */
    T_READY,   /* welcomed: registrations and data streams */
    T_CLOSING, /* refused or failed: the last control line, then GOAWAY */
};

struct tstream {
    /* First: the stream user data. br.sid is -1 once nghttp2 closed the
     * stream, br.bev our end of the socketpair with conn, br.ready set when
     * the agent answered 200, br.far_eof when conn shut its side. */
    struct tunnel_bridge br;
    struct tunnel *t;
    struct tstream *next, *prev;
    int remote_eof;          /* the agent ended its side: shut ours once flushed */
    int status;
    int gone_ticks;          /* ticks since conn closed its end without progress */
    size_t gone_in;          /* input length at the last such tick */
};

struct post {
    struct post *next;
    int fd;
    uid_t uid;
    char alias[ROUTE_ALIAS_MAX + 1];
    char local[TUN_LOCAL_MAX + 1];
};

struct reg {
    char alias[ROUTE_ALIAS_MAX + 1];
    char local[TUN_LOCAL_MAX + 1];
};

struct tunnel {
    struct gateway *gw;
    struct worker *w;
    struct tunnel *next, *prev; /* the worker's list */
    uint64_t id;
    char peer[64];              /* the agent's address, or "ssh" */
    struct bufferevent *rd, *wr; /* the same bufferevent unless over a pipe pair */
    nghttp2_session *h2;
    enum tstate st;
    int stdio;                  /* handed over by `jobgate tunnel --stdio` */
    int hold_fd;                /* stdio: its control connection, closed when we end */
    uid_t peer_uid;             /* stdio: SO_PEERCRED of the hand-over */
    uid_t uid;                  /* the owner, once welcomed */
    char method[12];
    char nonce[TOKEN_STR_LEN + 1];
    int32_t ctl_id;
    struct evbuffer *ctl_out, *ctl_in;
    int ctl_deferred, ctl_eof_sent;
    struct tstream *streams;
    unsigned nstreams;
    struct reg reg[TUN_MAX_REG];
    unsigned nreg;
    struct event *ev_post, *ev_tick;
    struct post *posted;        /* guarded by the hub's mutex */
    int64_t started, ping_sent, last_ack;
    int busy, dead;
    char why[160];
};

struct tunnel_hub {
    pthread_mutex_t mu;
    struct hmap *byid; /* id (8 bytes) -> struct tunnel; under mu */
    uint64_t next_id;
    unsigned count;
    int have_token;
    uint8_t token_hash[TOKEN_HASH_LEN];
};

static void t_flush(struct tunnel *t);
static void t_kill(struct tunnel *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void t_leave(struct tunnel *t);

/* ---- the hub ------------------------------------------------------------------- */

static int ensure_agent_token(struct gateway *gw, struct tunnel_hub *hub, char *err,
                              size_t errlen)
{
    char path[4096], tok[TOKEN_STR_LEN + 1], buf[TUNNEL_TOKEN_MAX + 4];
    if (xsnprintf(path, sizeof(path), "%s/agent.token", gw->cfg->state_dir) < 0)
        return errmsg(err, errlen, -ENAMETOOLONG, "state directory path too long");
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        if (token_new(tok) < 0) {
            close(fd);
            unlink(path);
            return errmsg(err, errlen, -EIO, "no random bytes for the agent token");
        }
        int n = snprintf(buf, sizeof(buf), "%s\n", tok);
        ssize_t w = write(fd, buf, (size_t)n);
        memset(buf, 0, sizeof(buf));
        memset(tok, 0, sizeof(tok));
        if (w != n || close(fd) < 0) {
            unlink(path);
            return errmsg(err, errlen, -EIO, "cannot write %s", path);
        }
        log_info("made the agent token %s for agents on other hosts", path);
    } else if (errno != EEXIST) {
        return errmsg(err, errlen, -errno, "cannot create %s: %s", path, strerror(errno));
    }
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return errmsg(err, errlen, -e, "cannot read %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode) || st.st_uid != gw->uid || (st.st_mode & 077)) {
        close(fd);
        return errmsg(err, errlen, -EPERM,
                      "%s must be a regular file of yours that only you can read (chmod 600)",
                      path);
    }
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        return errmsg(err, errlen, -EIO, "cannot read %s", path);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    if (n == 0 || n > TUNNEL_TOKEN_MAX) {
        memset(buf, 0, sizeof(buf));
        return errmsg(err, errlen, -EINVAL, "%s is empty or too long; remove it to get a new one",
                      path);
    }
    token_hash(buf, (size_t)n, hub->token_hash);
    memset(buf, 0, sizeof(buf));
    hub->have_token = 1;
    return 0;
}

int tunnel_hub_init(struct gateway *gw, char *err, size_t errlen)
{
    struct tunnel_hub *hub = xcalloc(1, sizeof(*hub));
    pthread_mutex_init(&hub->mu, NULL);
    hub->byid = hmap_new();
    gw->tunnels = hub;
    if (!gw->cfg->shared)
        return ensure_agent_token(gw, hub, err, errlen);
    return 0;
}

void tunnel_hub_free(struct gateway *gw)
{
    struct tunnel_hub *hub = gw->tunnels;
    if (!hub)
        return;
    hmap_free(hub->byid, NULL);
    pthread_mutex_destroy(&hub->mu);
    memset(hub->token_hash, 0, sizeof(hub->token_hash));
    free(hub);
    gw->tunnels = NULL;
}

/* ---- streams ------------------------------------------------------------------- */

static void s_free(struct tstream *s)
{
    struct tunnel *t = s->t;
    if (s->br.sid > 0 && t->h2)
        nghttp2_session_set_stream_user_data(t->h2, s->br.sid, NULL);
    if (s->br.bev)
        bufferevent_free(s->br.bev);
    if (s->prev)
        s->prev->next = s->next;
    else
        t->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    t->nstreams--;
    free(s);
}

/* Aborts a stream: RST to the agent, socketpair closed (conn sees the app gone). */
static void s_abort(struct tstream *s)
{
    if (s->br.sid > 0 && s->t->h2)
        nghttp2_submit_rst_stream(s->t->h2, NGHTTP2_FLAG_NONE, s->br.sid, NGHTTP2_CANCEL);
    s_free(s);
}

/* Bytes from conn (the browser's side) to send on the stream. */
static void s_read(struct bufferevent *bev, void *arg)
{
    struct tstream *s = arg;
    struct tunnel *t = s->t;
    t->busy++;
    tunnel_bridge_resume(&s->br);
    t_flush(t);
    t_leave(t);
}

static void s_write(struct bufferevent *bev, void *arg)
{
    struct tstream *s = arg;
    struct tunnel *t = s->t;
    t->busy++;
    tunnel_bridge_drained(&s->br);
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        if (s->br.sid < 0) {
            s_free(s); /* the stream is over and everything reached conn */
        } else if (s->remote_eof) {
            shutdown(bufferevent_getfd(bev), SHUT_WR);
        }
    }
    t_flush(t);
    t_leave(t);
}

static void s_event(struct bufferevent *bev, short what, void *arg)
{
    struct tstream *s = arg;
    struct tunnel *t = s->t;
    t->busy++;
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && s->br.sid > 0) {
        /* conn is done sending (browser closed, or the exchange ended):
         * END_STREAM once the buffered bytes are out. */
        s->br.far_eof = 1;
        bufferevent_disable(bev, EV_READ);
        s->br.deferred = 1;
        tunnel_bridge_resume(&s->br);
        if (!s->br.ready) {
            s_abort(s); /* nothing to wait for: the browser left before the agent answered */
        }
    } else {
        s_abort(s);
    }
    t_flush(t);
    t_leave(t);
}

static int reg_find(const struct tunnel *t, const char *alias)
{
    for (unsigned i = 0; i < t->nreg; i++)
        if (strcmp(t->reg[i].alias, alias) == 0)
            return (int)i;
    return -1;
}

/* On the tunnel's worker: one posted backend connection becomes a CONNECT stream. */
static void open_stream(struct tunnel *t, struct post *p)
{
    int i = reg_find(t, p->alias);
    if (t->st != T_READY || t->dead || p->uid != t->uid || i < 0 ||
        strcmp(t->reg[i].local, p->local) != 0 || t->nstreams >= TUN_MAX_STREAMS) {
        log_warn("tunnel=%" PRIx64 " refusing a stream for %s: %s", t->id, p->alias,
                 t->nstreams >= TUN_MAX_STREAMS ? "too many streams" : "not this tunnel's route");
        close(p->fd);
        return;
    }
    struct tstream *s = xcalloc(1, sizeof(*s));
    s->t = t;
    s->br.bev = bufferevent_socket_new(t->w->base, p->fd, BEV_OPT_CLOSE_ON_FREE);
    if (!s->br.bev) {
        close(p->fd);
        free(s);
        return;
    }
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)p->local, 10, strlen(p->local), NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider dp = tunnel_bridge_provider(&s->br);
    s->br.h2 = t->h2;
    s->br.sid = nghttp2_submit_request(t->h2, NULL, nv, 2, &dp, s);
    if (s->br.sid < 0) {
        log_warn("tunnel=%" PRIx64 " cannot open a stream: %s", t->id, nghttp2_strerror(s->br.sid));
        bufferevent_free(s->br.bev);
        free(s);
        return;
    }
    s->next = t->streams;
    if (t->streams)
        t->streams->prev = s;
    t->streams = s;
    t->nstreams++;
    bufferevent_setcb(s->br.bev, s_read, s_write, s_event, s);
    tunnel_bridge_attach(&s->br, s->br.bev);
    bufferevent_enable(s->br.bev, EV_READ | EV_WRITE);
}

static void on_post(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    struct tunnel_hub *hub = t->gw->tunnels;
    pthread_mutex_lock(&hub->mu);
    struct post *list = t->posted;
    t->posted = NULL;
    pthread_mutex_unlock(&hub->mu);
    t->busy++;
    /* Posted newest first: open them in the order they came. */
    struct post *rev = NULL;
    while (list) {
        struct post *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        struct post *n = rev->next;
        open_stream(t, rev);
        free(rev);
        rev = n;
    }
    t_flush(t);
    t_leave(t);
}

struct bufferevent *tunnel_stream_open(struct gateway *gw, struct event_base *base,
                                       const struct route *r)
{
    struct tunnel_hub *hub = gw->tunnels;
    int sv[2];
    if (r->kind != ROUTE_TUNNEL || r->tunnel == 0) {
        errno = ECONNREFUSED;
        return NULL;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return NULL;
    struct post *p = xcalloc(1, sizeof(*p));
    p->fd = sv[1];
    p->uid = r->uid;
    snprintf(p->alias, sizeof(p->alias), "%s", r->alias);
    snprintf(p->local, sizeof(p->local), "%.*s", TUN_LOCAL_MAX, r->path);
    pthread_mutex_lock(&hub->mu);
    struct tunnel *t = hmap_get(hub->byid, &r->tunnel, sizeof(r->tunnel));
    if (t) {
        p->next = t->posted;
        t->posted = p;
        event_active(t->ev_post, EV_READ, 0);
    }
    pthread_mutex_unlock(&hub->mu);
    if (!t) {
        free(p);
        close(sv[0]);
        close(sv[1]);
        errno = ECONNREFUSED;
        return NULL;
    }
    struct bufferevent *bev = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        close(sv[0]); /* the tunnel sees EOF on the other end and drops the stream */
        errno = ENOMEM;
        return NULL;
    }
    return bev;
}

/* ---- the control stream ---------------------------------------------------------- */

static void ctl_send(struct tunnel *t, json_t *msg)
{
    char *line;
    size_t len;
    if (tunnel_msg_encode(msg, &line, &len) < 0)
        return;
    evbuffer_add(t->ctl_out, line, len);
    free(line);
    if (evbuffer_get_length(t->ctl_out) > TUN_CTL_OUT_MAX) {
        /* Its window stays shut while it keeps asking: the answers would pile up without end. */
        t_kill(t, "the agent does not read its control answers (%zu bytes waiting)",
               evbuffer_get_length(t->ctl_out));
        return;
    }
    if (t->ctl_deferred && t->ctl_id > 0) {
        t->ctl_deferred = 0;
        nghttp2_session_resume_data(t->h2, t->ctl_id);
    }
}

static void ctl_error(struct tunnel *t, const char *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void ctl_error(struct tunnel *t, const char *id, const char *code, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "error", msg);
    if (o && id)
        json_object_set_new(o, "id", json_string(id));
    ctl_send(t, o);
}

static ssize_t ctl_provide(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len,
                           uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct tunnel *t = ud;
    size_t n = evbuffer_get_length(t->ctl_out);
    if (n == 0 && t->st != T_CLOSING) {
        t->ctl_deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > len)
        n = len;
    if (n)
        evbuffer_remove(t->ctl_out, buf, n);
    if (t->st == T_CLOSING && evbuffer_get_length(t->ctl_out) == 0) {
        *flags |= NGHTTP2_DATA_FLAG_EOF; /* on_frame_send then ends the session */
        t->ctl_eof_sent = 1;
    }
    return (ssize_t)n;
}

/* Refuses the hello (or gives up): the reason goes to the agent, then GOAWAY. */
static void t_refuse(struct tunnel *t, const char *code, const char *why)
{
    log_warn("tunnel=%" PRIx64 " peer=%s refused: %s", t->id, t->peer, why);
    ctl_error(t, NULL, code, "%s", why);
    t->st = T_CLOSING;
    if (t->ctl_id > 0) {
        t->ctl_deferred = 0;
        nghttp2_session_resume_data(t->h2, t->ctl_id);
    }
}

/* Copies a short, printable string from the agent for the log ("-" if absent or odd). */
static void log_str(const json_t *v, char *out, size_t len)
{
    const char *s = json_string_value(v);
    if (!s || !*s || strlen(s) >= len) {
        snprintf(out, len, "-");
        return;
    }
    for (size_t i = 0; s[i]; i++)
        out[i] = (s[i] > ' ' && s[i] < 0x7f) ? s[i] : '?';
    out[strlen(s)] = '\0';
}

/* Checks the hello's credential. 0 with *uid, or -1 with why. */
static int hello_auth(struct tunnel *t, json_t *auth, uid_t *uid, char *why, size_t wl)
{
    struct gateway *gw = t->gw;
    const char *method = json_string_value(json_object_get(auth, "method"));
    if (!method) {
        snprintf(why, wl, "the hello has no auth.method");
        return -1;
    }
    snprintf(t->method, sizeof(t->method), "%s", strlen(method) < 12 ? method : "?");
    if (strcmp(method, "munge") == 0) {
#ifdef JG_HAVE_MUNGE
        const char *cred = json_string_value(json_object_get(auth, "credential"));
        char payload[64], err[256];
        struct munge_identity id;
        if (!cred) {
            snprintf(why, wl, "no MUNGE credential in the hello");
            return -1;
        }
        int n = snprintf(payload, sizeof(payload), "jobgate/1 hello %s", t->nonce);
        int rc = munge_cred_decode(gw->cfg->munge_socket, cred, strlen(cred), payload, (size_t)n,
                                   &id, err, sizeof(err));
        if (rc < 0) {
            snprintf(why, wl, "MUNGE credential refused: %s", err);
            return -1;
        }
        *uid = id.uid;
#else
        snprintf(why, wl, "this gateway was built without MUNGE");
        return -1;
#endif
    } else if (strcmp(method, "token") == 0) {
        const char *tok = json_string_value(json_object_get(auth, "token"));
        struct tunnel_hub *hub = gw->tunnels;
        uint8_t h[TOKEN_HASH_LEN];
        if (!hub->have_token) {
            snprintf(why, wl, "agent tokens are for personal gateways; use MUNGE or SSH");
            return -1;
        }
        if (!tok || strlen(tok) > 200) {
            snprintf(why, wl, "bad agent token");
            return -1;
        }
        token_hash(tok, strlen(tok), h);
        if (!token_hash_equal(h, hub->token_hash)) {
            snprintf(why, wl, "bad agent token");
            return -1;
        }
        *uid = gw->uid;
    } else if (strcmp(method, "peercred") == 0) {
        if (!t->stdio) {
            snprintf(why, wl, "peercred is only for tunnels handed over by 'jobgate tunnel'");
            return -1;
        }
        *uid = t->peer_uid;
    } else {
        snprintf(why, wl, "unknown auth method");
        return -1;
    }
    if (!gw->cfg->shared && *uid != gw->uid) {
        snprintf(why, wl, "this personal gateway takes only its own user's agents (uid %u)",
                 (unsigned)gw->uid);
        return -1;
    }
    return 0;
}

static void on_hello(struct tunnel *t, json_t *m)
{
    char why[400], node[65], job[33], agent[65];
    uid_t uid;
    json_t *ver = json_object_get(m, "version");
    if (strcmp(json_string_value(json_object_get(m, "type")) ?: "", "hello") != 0) {
        t_refuse(t, "protocol", "the first message must be a hello");
        return;
    }
    if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
        t_refuse(t, "version", "this gateway speaks tunnel protocol version 1");
        return;
    }
    if (hello_auth(t, json_object_get(m, "auth"), &uid, why, sizeof(why)) < 0) {
        t_refuse(t, "auth", why);
        return;
    }
    log_str(json_object_get(m, "node"), node, sizeof(node));
    log_str(json_object_get(m, "job"), job, sizeof(job));
    log_str(json_object_get(m, "agent"), agent, sizeof(agent));
    t->uid = uid;
    t->st = T_READY;
    struct passwd pw, *res = NULL;
    char pwbuf[1024], idhex[17];
    const char *user = getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &res) == 0 && res
                           ? res->pw_name : "";
    snprintf(idhex, sizeof(idhex), "%016" PRIx64, t->id);
    log_info("tunnel=%" PRIx64 " peer=%s welcomed uid=%u method=%s node=%s job=%s agent=%s", t->id,
             t->peer, (unsigned)uid, t->method, node, job, agent);
    ctl_send(t, json_pack("{s:s, s:I, s:s, s:s}", "type", "welcome", "uid", (json_int_t)uid,
                          "user", user, "tunnel", idhex));
}

static int get_ttl(struct tunnel *t, json_t *m, int64_t *ttl)
{
    json_t *v = json_object_get(m, "ttl");
    *ttl = t->gw->cfg->link_ttl;
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 7 * 86400)
        return -1;
    *ttl = json_integer_value(v);
    return 0;
}

struct orphan_ctx {
    uid_t uid;
    const char *name;
    char alias[ROUTE_ALIAS_MAX + 1];
    int count;
};

static int find_orphan_named(const struct route *r, void *arg)
{
    struct orphan_ctx *oc = arg;
    if (r->kind == ROUTE_TUNNEL && r->tunnel == 0 && r->uid == oc->uid &&
        strcmp(r->name, oc->name) == 0) {
        snprintf(oc->alias, sizeof(oc->alias), "%s", r->alias);
        oc->count++;
    }
    return 0;
}

/* register: a new route, or the agent's own route back after a reconnect. Under the lock. */
static void op_register(struct tunnel *t, const char *id, json_t *m)
{
    struct gateway *gw = t->gw;
    const char *name = json_string_value(json_object_get(m, "name"));
    const char *local = json_string_value(json_object_get(m, "local"));
    const char *alias = json_string_value(json_object_get(m, "alias"));
    int64_t ttl;
    if (!route_name_valid(name, ROUTE_NAME_MAX))
        return ctl_error(t, id, "invalid", "'name' must be 1-64 of A-Z a-z 0-9 . _ -");
    if (!route_name_valid(local, TUN_LOCAL_MAX))
        return ctl_error(t, id, "invalid", "'local' must be 1-64 of A-Z a-z 0-9 . _ -");
    if (get_ttl(t, m, &ttl) < 0)
        return ctl_error(t, id, "invalid", "'ttl' must be a number of seconds from 1 to 604800");
    if (json_object_get(m, "alias") && !alias)
        return ctl_error(t, id, "invalid", "'alias' must be a string");

    struct route r;
    memset(&r, 0, sizeof(r));
    const struct route *old = alias ? route_find(gw->routes, alias, strlen(alias)) : NULL;
    if (!alias) {
        /* A new agent for an app whose agent died (the job restarted it): the
         * same user's only orphaned route of that name keeps its URL and cookies. */
        struct orphan_ctx oc = {.uid = t->uid, .name = name};
        route_filter(gw->routes, find_orphan_named, &oc);
        if (oc.count == 1)
            old = route_find(gw->routes, oc.alias, strlen(oc.alias));
    }
    int slot = old ? reg_find(t, old->alias) : -1;
    if (slot < 0 && t->nreg >= TUN_MAX_REG)
        return ctl_error(t, id, "limit", "at most %d apps per tunnel", TUN_MAX_REG);
    if (old && (old->uid != t->uid || old->kind != ROUTE_TUNNEL))
        return ctl_error(t, id, "forbidden", "%s is not one of your tunnel's apps", old->alias);
    if (old) {
        /* Back after a reconnect (or taken over from a tunnel that has not
         * noticed yet that it is dead): same owner, so same route, links and
         * sessions. */
        r = *old;
        if (r.tunnel && r.tunnel != t->id)
            log_info("tunnel=%" PRIx64 " takes %s over from tunnel=%" PRIx64, t->id, r.alias,
                     r.tunnel);
        int changed = strcmp(r.name, name) != 0 || strcmp(r.path, local) != 0;
        snprintf(r.name, sizeof(r.name), "%s", name);
        snprintf(r.path, sizeof(r.path), "%s", local);
        r.tunnel = t->id;
        r.detached = 0;
        if ((changed && store_route_put(gw->store, &r) < 0) || route_replace(gw->routes, &r) < 0)
            return ctl_error(t, id, "internal", "could not update the route (see the gateway's log)");
        log_info("route attach alias=%s uid=%u tunnel=%" PRIx64, r.alias, (unsigned)r.uid, t->id);
    } else {
        r.uid = t->uid;
        r.kind = ROUTE_TUNNEL;
        r.created = now_real();
        r.tunnel = t->id;
        snprintf(r.name, sizeof(r.name), "%s", name);
        snprintf(r.path, sizeof(r.path), "%s", local);
        if (gateway_route_add(gw, &r) < 0)
            return ctl_error(t, id, "internal", "could not add the route (see the gateway's log)");
    }
    if (slot < 0)
        slot = (int)t->nreg++;
    snprintf(t->reg[slot].alias, sizeof(t->reg[slot].alias), "%s", r.alias);
    snprintf(t->reg[slot].local, sizeof(t->reg[slot].local), "%s", local);
    json_t *o = json_pack("{s:s, s:s, s:s}", "type", "registered", "alias", r.alias, "name",
                          r.name);
    if (!o)
        return;
    if (id)
        json_object_set_new(o, "id", json_string(id));
    if (gateway_link_json(t->gw, o, r.alias, ttl) < 0) {
        json_decref(o);
        return ctl_error(t, id, "internal", "could not store a link (see the gateway's log)");
    }
    ctl_send(t, o);
}

static void op_unregister(struct tunnel *t, const char *id, json_t *m)
{
    const char *alias = json_string_value(json_object_get(m, "alias"));
    int slot = alias ? reg_find(t, alias) : -1;
    if (slot < 0)
        return ctl_error(t, id, "not_found", "this tunnel registered no app '%s'",
                         alias ? alias : "");
    const struct route *r = route_find(t->gw->routes, alias, strlen(alias));
    if (r && r->kind == ROUTE_TUNNEL && r->uid == t->uid &&
        gateway_route_remove(t->gw, alias, t->uid, "agent unregistered") < 0)
        return ctl_error(t, id, "internal", "could not remove the route (see the gateway's log)");
    json_t *o = json_pack("{s:s, s:s}", "type", "unregistered", "alias", t->reg[slot].alias);
    if (o && id)
        json_object_set_new(o, "id", json_string(id));
    t->reg[slot] = t->reg[--t->nreg];
    ctl_send(t, o);
}

static void op_link(struct tunnel *t, const char *id, json_t *m)
{
    const char *alias = json_string_value(json_object_get(m, "alias"));
    int64_t ttl;
    const struct route *r = alias && reg_find(t, alias) >= 0
                                ? route_find(t->gw->routes, alias, strlen(alias)) : NULL;
    if (!r || r->uid != t->uid || r->kind != ROUTE_TUNNEL)
        return ctl_error(t, id, "not_found", "this tunnel has no app '%s'", alias ? alias : "");
    if (get_ttl(t, m, &ttl) < 0)
        return ctl_error(t, id, "invalid", "'ttl' must be a number of seconds from 1 to 604800");
    json_t *o = json_pack("{s:s, s:s}", "type", "link", "alias", alias);
    if (!o)
        return;
    if (id)
        json_object_set_new(o, "id", json_string(id));
    if (gateway_link_json(t->gw, o, alias, ttl) < 0) {
        json_decref(o);
        return ctl_error(t, id, "internal", "could not store a link (see the gateway's log)");
    }
    ctl_send(t, o);
}

/* One control line from the agent. */
static void ctl_line(struct tunnel *t, const char *line, size_t len)
{
    json_error_t je;
    json_t *m = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!m || !json_is_object(m)) {
        json_decref(m);
        t_kill(t, "malformed control message (not a JSON object)");
        return;
    }
    if (t->st == T_HELLO) {
        on_hello(t, m);
        json_decref(m);
        return;
    }
    if (t->st != T_READY) {
        json_decref(m);
        return;
    }
    const char *type = json_string_value(json_object_get(m, "type"));
    json_t *idv = json_object_get(m, "id");
    const char *id = json_string_value(idv);
    if (!type || (idv && (!id || strlen(id) > TUN_ID_MAX))) {
        json_decref(m);
        t_kill(t, "malformed control message (no type, or a bad id)");
        return;
    }
    gateway_wrlock(t->gw);
    if (strcmp(type, "register") == 0)
        op_register(t, id, m);
    else if (strcmp(type, "unregister") == 0)
        op_unregister(t, id, m);
    else if (strcmp(type, "link") == 0)
        op_link(t, id, m);
    else
        ctl_error(t, id, "invalid", "unknown message type");
    gateway_unlock(t->gw);
    json_decref(m);
}

static void ctl_input(struct tunnel *t)
{
    for (;;) {
        struct evbuffer_ptr eol = evbuffer_search(t->ctl_in, "\n", 1, NULL);
        /* The limit counts the newline, as tunnel_lines_next does. */
        if (eol.pos < 0) {
            if (evbuffer_get_length(t->ctl_in) >= TUNNEL_CTL_LINE_MAX)
                t_kill(t, "control message longer than %d bytes", TUNNEL_CTL_LINE_MAX);
            return;
        }
        if ((size_t)eol.pos + 1 > TUNNEL_CTL_LINE_MAX) {
            t_kill(t, "control message longer than %d bytes", TUNNEL_CTL_LINE_MAX);
            return;
        }
        size_t n = (size_t)eol.pos;
        char *line = (char *)evbuffer_pullup(t->ctl_in, (ssize_t)n + 1);
        if (n > 0)
            ctl_line(t, line, n);
        evbuffer_drain(t->ctl_in, n + 1);
        if (t->dead)
            return;
    }
}

/* ---- nghttp2 callbacks -------------------------------------------------------------- */

static int on_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    if (f->hd.type != NGHTTP2_HEADERS || nl != 7 || memcmp(name, ":status", 7) != 0)
        return 0;
    struct tunnel *t = ud;
    int status = 0;
    for (size_t i = 0; i < vl && i < 3; i++)
        status = status * 10 + (value[i] - '0');
    if (f->hd.stream_id == t->ctl_id) {
        if (status != 200)
            t_kill(t, "the agent answered the control stream with %d", status);
        return 0;
    }
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (s)
        s->status = status;
    return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    struct tunnel *t = ud;
    if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK)) {
        t->last_ack = now_mono_ms();
        t->ping_sent = 0;
        return 0;
    }
    if (f->hd.type == NGHTTP2_GOAWAY) {
        log_info("tunnel=%" PRIx64 " the agent is going away", t->id);
        return 0;
    }
    if (f->hd.stream_id == 0 || f->hd.stream_id == t->ctl_id)
        return 0;
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (!s)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_RESPONSE && !s->br.ready) {
        if (s->status != 200) {
            log_info("tunnel=%" PRIx64 " stream=%d the agent answered %d (%s)", t->id, s->br.sid,
                     s->status, s->status == 404 ? "not a target it registered"
                                                 : "its app did not accept the connection");
            s_abort(s);
            return 0;
        }
        s->br.ready = 1;
        s->br.deferred = 1;
        tunnel_bridge_resume(&s->br);
    }
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        s->remote_eof = 1;
        if (evbuffer_get_length(bufferevent_get_output(s->br.bev)) == 0)
            shutdown(bufferevent_getfd(s->br.bev), SHUT_WR);
        else
            bufferevent_setwatermark(s->br.bev, EV_WRITE, 0, 0); /* s_write when all is out */
    }
    return 0;
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *ud)
{
    struct tunnel *t = ud;
    if (t->dead)
        return 0; /* killed earlier in this read: act on nothing more it sent */
    if (id == t->ctl_id) {
        nghttp2_session_consume(h2, id, len);
        evbuffer_add(t->ctl_in, data, len);
        ctl_input(t);
        return 0;
    }
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (!s) {
        nghttp2_session_consume_connection(h2, len);
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_STREAM_CLOSED);
        return 0;
    }
    /* The window rule of tunnel_bridge.h: the stream's opens as conn drains. */
    if (tunnel_bridge_data(&s->br, data, len) < 0)
        s_abort(s);
    return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t id, uint32_t code, void *ud)
{
    struct tunnel *t = ud;
    if (id == t->ctl_id) {
        if (!t->dead && t->st != T_CLOSING)
            t_kill(t, "the agent closed the control stream");
        return 0;
    }
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (!s)
        return 0;
    nghttp2_session_set_stream_user_data(h2, id, NULL);
    s->br.sid = -1;
    if (code != NGHTTP2_NO_ERROR || !s->br.ready ||
        evbuffer_get_length(bufferevent_get_output(s->br.bev)) == 0) {
        if (code != NGHTTP2_NO_ERROR)
            log_debug("tunnel=%" PRIx64 " stream=%d reset: %s", t->id, id,
                      nghttp2_http2_strerror(code));
        s_free(s);
    } else {
        bufferevent_setwatermark(s->br.bev, EV_WRITE, 0, 0); /* s_write frees it once flushed */
    }
    return 0;
}

static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    struct tunnel *t = ud;
    if (f->hd.stream_id == t->ctl_id && t->st == T_CLOSING && t->ctl_eof_sent &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        nghttp2_session_terminate_session(h2, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    /* The agent is the server: it answers our streams and opens none. */
    if (f->hd.type == NGHTTP2_PUSH_PROMISE)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

/* ---- transport ---------------------------------------------------------------------- */

/* Frames out while the transport's output has room; closes a finished session. */
static void t_flush(struct tunnel *t)
{
    if (t->dead || !t->h2)
        return;
    struct evbuffer *out = bufferevent_get_output(t->wr);
    int rv = tunnel_bridge_pump_out(t->h2, out, TUN_OUT_HIGH);
    if (rv < 0) {
        t_kill(t, "HTTP/2: %s", nghttp2_strerror(rv));
        return;
    }
    if (!nghttp2_session_want_read(t->h2) && !nghttp2_session_want_write(t->h2) &&
        evbuffer_get_length(out) == 0)
        t_kill(t, t->st == T_CLOSING ? "refused" : "session over");
}

static void t_read(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    t->busy++;
    int rv = tunnel_bridge_pump_in(t->h2, bufferevent_get_input(bev), &t->dead);
    if (rv < 0)
        t_kill(t, "HTTP/2 from the agent: %s", nghttp2_strerror(rv));
    t_flush(t);
    t_leave(t);
}

static void t_write(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    t->busy++;
    t_flush(t);
    t_leave(t);
}

static void t_event(struct bufferevent *bev, short what, void *arg)
{
    struct tunnel *t = arg;
    t->busy++;
    if (what & BEV_EVENT_EOF)
        t_kill(t, "the agent closed the connection");
    else if (what & BEV_EVENT_ERROR)
        t_kill(t, "connection error: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    t_leave(t);
}

/* Streams whose conn closed its end (conn never half-closes: its close is
 * final) while their input sits above the read watermark or waits for the
 * agent's window: no read event will ever report it. Unanswered ones go at
 * once, as in s_event; others once they have stalled for a few ticks. */
static void sweep_gone(struct tunnel *t)
{
    struct tstream *s, *next;
    for (s = t->streams; s; s = next) {
        next = s->next;
        struct pollfd p = {.fd = bufferevent_getfd(s->br.bev), .events = POLLRDHUP};
        if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            continue;
        size_t in = evbuffer_get_length(bufferevent_get_input(s->br.bev));
        if (s->br.ready && s->br.sid > 0 && (s->gone_ticks == 0 || in != s->gone_in)) {
            s->gone_ticks = 1;
            s->gone_in = in;
            continue;
        }
        if (s->br.ready && s->br.sid > 0 && ++s->gone_ticks <= TUN_GONE_TICKS)
            continue;
        log_debug("tunnel=%" PRIx64 " stream=%d its browser connection left; dropped", t->id,
                  s->br.sid);
        s_abort(s);
    }
}

static void t_tick(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    const struct jg_config *cf = t->gw->cfg;
    int64_t now = now_mono_ms();
    t->busy++;
    if (t->st != T_READY && now - t->started > cf->t_handshake * 1000) {
        t_kill(t, "no welcome within %" PRId64 " s", cf->t_handshake);
    } else if (t->ping_sent && now - t->ping_sent > cf->ping_timeout * 1000) {
        t_kill(t, "no answer to PING within %" PRId64 " s", cf->ping_timeout);
    } else if (!t->ping_sent && now - t->last_ack >= cf->ping_interval * 1000) {
        nghttp2_submit_ping(t->h2, NGHTTP2_FLAG_NONE, NULL);
        t->ping_sent = now;
    }
    if (!t->dead)
        sweep_gone(t);
    t_flush(t);
    t_leave(t);
}

/* ---- life and death ----------------------------------------------------------------- */

/* Routes of this tunnel wait for their agent to come back (grace). Under the lock. */
static void detach_routes(struct tunnel *t)
{
    int64_t now = now_mono_ms();
    for (unsigned i = 0; i < t->nreg; i++) {
        const struct route *r = route_find(t->gw->routes, t->reg[i].alias,
                                           strlen(t->reg[i].alias));
        if (!r || r->kind != ROUTE_TUNNEL || r->tunnel != t->id)
            continue;
        struct route c = *r;
        c.tunnel = 0;
        c.detached = now;
        route_replace(t->gw->routes, &c);
        log_info("route detach alias=%s: its agent is gone; waiting up to %" PRId64 " s",
                 c.alias, t->gw->cfg->grace);
    }
}

static void t_free(struct tunnel *t)
{
    struct tunnel_hub *hub = t->gw->tunnels;
    struct worker *w = t->w;
    pthread_mutex_lock(&hub->mu);
    hmap_del(hub->byid, &t->id, sizeof(t->id));
    hub->count--;
    struct post *p = t->posted;
    t->posted = NULL;
    pthread_mutex_unlock(&hub->mu);
    while (p) {
        struct post *n = p->next;
        close(p->fd);
        free(p);
        p = n;
    }
    if (t->nreg) {
        gateway_wrlock(t->gw);
        detach_routes(t);
        gateway_unlock(t->gw);
    }
    while (t->streams)
        s_free(t->streams);
    if (t->h2)
        nghttp2_session_del(t->h2);
    t->h2 = NULL;
    if (t->rd != t->wr && t->wr)
        bufferevent_free(t->wr);
    if (t->rd)
        bufferevent_free(t->rd);
    if (t->ev_post)
        event_free(t->ev_post);
    if (t->ev_tick)
        event_free(t->ev_tick);
    if (t->hold_fd >= 0)
        close(t->hold_fd); /* `jobgate tunnel --stdio` sees EOF and exits */
    evbuffer_free(t->ctl_in);
    evbuffer_free(t->ctl_out);
    if (t->prev)
        t->prev->next = t->next;
    else
        w->tunnels = t->next;
    if (t->next)
        t->next->prev = t->prev;
    free(t);
}

static void t_kill(struct tunnel *t, const char *fmt, ...)
{
    if (t->dead)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->why, sizeof(t->why), fmt, ap);
    va_end(ap);
    t->dead = 1;
    log_info("tunnel=%" PRIx64 " peer=%s uid=%ld closed: %s", t->id, t->peer,
             t->st == T_HELLO ? -1L : (long)t->uid, t->why);
}

static void t_leave(struct tunnel *t)
{
    if (--t->busy == 0 && t->dead)
        t_free(t);
}

static struct tunnel *t_new(struct worker *w, const char *peer)
{
    struct gateway *gw = w->gw;
    struct tunnel_hub *hub = gw->tunnels;
    pthread_mutex_lock(&hub->mu);
    if (hub->count >= TUN_MAX_TUNNELS) {
        pthread_mutex_unlock(&hub->mu);
        log_warn("refusing a tunnel from %s: %d tunnels open", peer, TUN_MAX_TUNNELS);
        return NULL;
    }
    struct tunnel *t = xcalloc(1, sizeof(*t));
    /* Unpredictable ids: an id names a tunnel in the route table, nothing more,
     * but there is no reason to let one be guessed. */
    do {
        if (random_bytes(&t->id, sizeof(t->id)) < 0)
            t->id = ++hub->next_id;
    } while (t->id == 0 || hmap_get(hub->byid, &t->id, sizeof(t->id)));
    hmap_put(hub->byid, &t->id, sizeof(t->id), t);
    hub->count++;
    pthread_mutex_unlock(&hub->mu);
    t->gw = gw;
    t->w = w;
    snprintf(t->peer, sizeof(t->peer), "%s", peer);
    t->uid = (uid_t)-1;
    t->hold_fd = -1;
    t->ctl_in = evbuffer_new();
    t->ctl_out = evbuffer_new();
    t->ev_post = event_new(w->base, -1, 0, on_post, t);
    t->ev_tick = event_new(w->base, -1, EV_PERSIST, t_tick, t);
    t->started = t->last_ack = now_mono_ms();
    t->next = w->tunnels;
    if (w->tunnels)
        w->tunnels->prev = t;
    w->tunnels = t;
    return t;
}

/* The HTTP/2 session and the control stream, on a transport already set. */
static int t_start(struct tunnel *t)
{
    static const struct tunnel_session_cbs cbs = {
        .begin_headers = on_begin_headers,
        .header = on_header,
        .frame_recv = on_frame_recv,
        .data_chunk = on_data,
        .frame_send = on_frame_send,
        .stream_close = on_stream_close,
    };
    if (tunnel_session_new(&t->h2, TUNNEL_ROLE_GATEWAY, &cbs, t) < 0)
        return -ENOMEM;
    if (token_new(t->nonce) < 0)
        return -EIO;
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"POST", 7, 4, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":scheme", (uint8_t *)"https", 7, 5, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)"jobgate", 10, 7, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":path", (uint8_t *)TUNNEL_CONTROL_PATH, 5, sizeof(TUNNEL_CONTROL_PATH) - 1,
         NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)TUNNEL_CONTROL_TYPE, 12,
         sizeof(TUNNEL_CONTROL_TYPE) - 1, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider dp = {.source.ptr = t, .read_callback = ctl_provide};
    t->ctl_id = nghttp2_submit_request(t->h2, NULL, nv, JG_ARRAY_LEN(nv), &dp, NULL);
    if (t->ctl_id < 0)
        return -EIO;
    ctl_send(t, json_pack("{s:s, s:i, s:s}", "type", "challenge", "version", TUNNEL_VERSION,
                          "nonce", t->nonce));
    bufferevent_setcb(t->rd, t_read, t->rd == t->wr ? t_write : NULL, t_event, t);
    if (t->wr != t->rd)
        bufferevent_setcb(t->wr, NULL, t_write, t_event, t);
    bufferevent_setwatermark(t->wr, EV_WRITE, TUN_OUT_HIGH / 2, 0);
    bufferevent_enable(t->rd, EV_READ);
    bufferevent_enable(t->wr, EV_WRITE);
    struct timeval tick = {TUN_TICK_MS / 1000, 0};
    event_add(t->ev_tick, &tick);
    t->busy++;
    t_flush(t);
    if (evbuffer_get_length(bufferevent_get_input(t->rd)) > 0)
        t_read(t->rd, t); /* the agent's first bytes came with the handshake */
    t_leave(t);
    return 0;
}

void tunnel_adopt_tls(struct worker *w, struct bufferevent *bev, const char *ip)
{
    struct tunnel *t = t_new(w, ip);
    if (!t) {
        bufferevent_free(bev);
        return;
    }
    t->rd = t->wr = bev;
    t->busy++;
    if (t_start(t) < 0)
        t_kill(t, "cannot set up the HTTP/2 session");
    else
        log_debug("tunnel=%" PRIx64 " peer=%s TLS, waiting for the hello", t->id, ip);
    t_leave(t);
}

int tunnel_adopt_stdio(struct worker *w, int in_fd, int out_fd, int hold_fd, uid_t uid)
{
    struct tunnel *t = t_new(w, "ssh");
    if (!t) {
        close(in_fd);
        close(out_fd);
        if (hold_fd >= 0)
            close(hold_fd);
        return -EMFILE;
    }
    t->stdio = 1;
    t->hold_fd = hold_fd;
    t->peer_uid = uid;
    evutil_make_socket_nonblocking(in_fd);
    evutil_make_socket_nonblocking(out_fd);
    t->rd = bufferevent_socket_new(w->base, in_fd, BEV_OPT_CLOSE_ON_FREE);
    t->wr = in_fd == out_fd ? t->rd : bufferevent_socket_new(w->base, out_fd, BEV_OPT_CLOSE_ON_FREE);
    t->busy++;
    int rc = 0;
    if (!t->rd || !t->wr) {
        if (!t->rd)
            close(in_fd);
        if (!t->wr && in_fd != out_fd)
            close(out_fd);
        if (!t->wr)
            t->wr = t->rd;
        rc = -ENOMEM;
        t_kill(t, "out of memory");
    } else if (t_start(t) < 0) {
        rc = -ENOMEM;
        t_kill(t, "cannot set up the HTTP/2 session");
    } else {
        log_info("tunnel=%" PRIx64 " handed over by uid %u (ssh)", t->id, (unsigned)uid);
    }
    t_leave(t);
    return rc;
}

void tunnel_close_all(struct worker *w)
{
    while (w->tunnels) {
        struct tunnel *t = w->tunnels;
        if (t->h2 && !t->dead) {
            /* Best effort: GOAWAY into the buffer; the agent reconnects either way. */
            nghttp2_session_terminate_session(t->h2, NGHTTP2_NO_ERROR);
            t->busy++;
            t_flush(t);
            t->busy--;
        }
        t->dead = 1;
        t_free(t);
    }
}

struct reap_ctx {
    int64_t now, grace_ms;
    char gone[16][ROUTE_ALIAS_MAX + 1];
    uid_t uid[16];
    int n;
};

static int find_orphan(const struct route *r, void *arg)
{
    struct reap_ctx *rc = arg;
    if (r->kind == ROUTE_TUNNEL && r->tunnel == 0 && rc->n < 16 &&
        rc->now - r->detached > rc->grace_ms) {
        snprintf(rc->gone[rc->n], sizeof(rc->gone[0]), "%s", r->alias);
        rc->uid[rc->n++] = r->uid;
    }
    return 0;
}

void tunnel_reap(struct gateway *gw)
{
    struct reap_ctx rc = {.now = now_mono_ms(), .grace_ms = gw->cfg->grace * 1000};
    route_filter(gw->routes, find_orphan, &rc);
    for (int i = 0; i < rc.n; i++)
        gateway_route_remove(gw, rc.gone[i], rc.uid[i], "agent gone longer than the grace time");
}

int tunnel_route_backend(const struct route *r, char *buf, size_t len)
{
    return xsnprintf(buf, len, "tunnel:%s", r->path);
}
