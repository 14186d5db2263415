/* tunnel — see tunnel.h: the hub, the session (nghttp2 callbacks, transport,
 * tick) and the life of a tunnel. tunnel-int.h says who may touch what. */
#include "tunnel.h"
#include "tunnel-int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
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

#include "config.h"
#include "gridmap.h"
#include "hmap.h"
#include "log.h"
#include "registry.h"
#include "token.h"
#include "tls.h"
#include "util.h"
#include "worker-t.h"
#include "xprt.h"

/* ---- the hub ------------------------------------------------------------------- */

static int ensure_agent_token(struct tunnel_hub *hub, char *err, size_t errlen)
{
    char path[4096], tok[TOKEN_STR_LEN + 1], buf[TUNNEL_TOKEN_MAX + 4];
    if (xsnprintf(path, sizeof(path), "%s/agent.token", hub->cfg->state_dir) < 0)
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
    if (!S_ISREG(st.st_mode) || st.st_uid != hub->uid || (st.st_mode & 077)) {
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

struct tunnel_hub *tunnel_hub_new(const struct jg_config *cfg, struct registry *reg,
                                  const struct jobca *ca, uid_t uid, X509 *cert, char *err,
                                  size_t errlen)
{
    struct tunnel_hub *hub = xcalloc(1, sizeof(*hub));
    if (jobcert_gateway_id(cert, hub->gateway_id) < 0) {
        errmsg(err, errlen, -EINVAL, "the gateway's TLS certificate cannot be hashed");
        free(hub);
        return NULL;
    }
    hub->cfg = cfg;
    hub->reg = reg;
    hub->ca = ca;
    hub->uid = uid;
    pthread_mutex_init(&hub->mu, NULL);
    hub->byid = hmap_new();
    hub->pending_by = hmap_new();
    hub->by_uid = hmap_new();
    if (!cfg->shared && ensure_agent_token(hub, err, errlen) < 0) {
        tunnel_hub_free(hub);
        return NULL;
    }
    if (tunnel_trust_load(cfg, &hub->trust, err, errlen) < 0) {
        tunnel_hub_free(hub);
        return NULL;
    }
    return hub;
}

int tunnel_trust_load(const struct jg_config *cfg, struct tunnel_trust **out, char *err,
                      size_t errlen)
{
    *out = NULL;
    if (!cfg->client_ca)
        return 0;
    struct tunnel_trust *tr = xcalloc(1, sizeof(*tr));
    tr->ca_path = xstrdup(cfg->client_ca);
    tr->gridmap_path = xstrdup(cfg->gridmap);
    tr->store = X509_STORE_new();
    if (stat(cfg->client_ca, &tr->ca_st) < 0)
        memset(&tr->ca_st, 0, sizeof(tr->ca_st));
    if (!tr->store || X509_STORE_load_file(tr->store, cfg->client_ca) != 1) {
        errmsg(err, errlen, -EINVAL, "[tunnel] client_ca: cannot load %s: %s", cfg->client_ca,
               tls_errstr());
        tunnel_trust_free(tr);
        return -EINVAL;
    }
    tr->gridmap = gridmap_open(cfg->gridmap, err, errlen);
    if (!tr->gridmap) {
        tunnel_trust_free(tr);
        return -EINVAL;
    }
    *out = tr;
    return 0;
}

void tunnel_trust_free(struct tunnel_trust *tr)
{
    while (tr) {
        struct tunnel_trust *older = tr->older;
        X509_STORE_free(tr->store);
        gridmap_free(tr->gridmap);
        free(tr->ca_path);
        free(tr->gridmap_path);
        free(tr);
        tr = older;
    }
}

int tunnel_trust_current(struct tunnel_hub *hub, const struct jg_config *cfg)
{
    struct stat st;
    pthread_mutex_lock(&hub->mu);
    const struct tunnel_trust *tr = hub->trust;
    pthread_mutex_unlock(&hub->mu);
    const char *ca = tr ? tr->ca_path : NULL, *gm = tr ? tr->gridmap_path : NULL;
    if (!str_same(ca, cfg->client_ca) || !str_same(gm, cfg->gridmap))
        return 0;
    return !ca || (stat(ca, &st) == 0 && st.st_ino == tr->ca_st.st_ino &&
                   st.st_dev == tr->ca_st.st_dev && st.st_size == tr->ca_st.st_size &&
                   st.st_mtim.tv_sec == tr->ca_st.st_mtim.tv_sec &&
                   st.st_mtim.tv_nsec == tr->ca_st.st_mtim.tv_nsec);
}

void tunnel_hub_set_trust(struct tunnel_hub *hub, struct tunnel_trust *trust)
{
    pthread_mutex_lock(&hub->mu);
    if (trust) {
        trust->older = hub->trust;
        hub->trust = trust;
    } else if (hub->trust) { /* none from now on: the old ones stay for hellos under way */
        struct tunnel_trust *none = xcalloc(1, sizeof(*none));
        none->older = hub->trust;
        hub->trust = none;
    }
    pthread_mutex_unlock(&hub->mu);
}

void tunnel_hub_reconfigure(struct tunnel_hub *hub, const struct jg_config *cfg)
{
    atomic_store(&hub->cfg, cfg);
}

void tunnel_hub_set_job_check(struct tunnel_hub *hub,
                              int (*ask)(void *arg, uint32_t job, uid_t uid, const char *node,
                                         uint64_t tunnel),
                              void *arg)
{
    hub->ask_job = ask;
    hub->ask_arg = arg;
}

void tunnel_job_verdict(struct tunnel_hub *hub, uint64_t tunnel, int ok, const char *why)
{
    pthread_mutex_lock(&hub->mu);
    struct tunnel *t = hmap_get(hub->byid, &tunnel, sizeof(tunnel));
    if (t && t->ev_verdict) {
        t->verdict = ok ? 1 : -1;
        snprintf(t->verdict_why, sizeof(t->verdict_why), "%s", why ? why : "");
        event_active(t->ev_verdict, EV_READ, 0);
    }
    pthread_mutex_unlock(&hub->mu);
}

void tunnel_hub_set_cert(struct tunnel_hub *hub, X509 *cert)
{
    char id[JOBCERT_GATEWAY_ID_LEN + 1];
    if (jobcert_gateway_id(cert, id) < 0)
        return;
    pthread_mutex_lock(&hub->mu);
    memcpy(hub->gateway_id, id, sizeof(id));
    pthread_mutex_unlock(&hub->mu);
}

void tunnel_hub_free(struct tunnel_hub *hub)
{
    if (!hub)
        return;
    hmap_free(hub->byid, NULL);
    hmap_free(hub->pending_by, NULL);
    hmap_free(hub->by_uid, NULL);
    tunnel_trust_free(hub->trust);
    pthread_mutex_destroy(&hub->mu);
    memset(hub->token_hash, 0, sizeof(hub->token_hash));
    free(hub);
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
            tunnel_kill(t, "the agent answered the control stream with %d", status);
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
            tstream_abort(s);
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
            xprt_close_write(s->br.bev);
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
        tctl_input(t, data, len);
        return 0;
    }
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (!s) {
        nghttp2_session_consume_connection(h2, len);
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_STREAM_CLOSED);
        return 0;
    }
    if (xprt_peer_closed(s->br.bev)) {
        /* conn closed its end for good: the app's bytes have no reader (EPIPE). */
        nghttp2_session_consume_connection(h2, len);
        tstream_abort(s);
        return 0;
    }
    /* The window rule of tunnel_bridge.h: the stream's opens as conn drains. */
    if (tunnel_bridge_data(&s->br, data, len) < 0)
        tstream_abort(s);
    return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t id, uint32_t code, void *ud)
{
    struct tunnel *t = ud;
    if (id == t->ctl_id) {
        if (!t->dead && t->st != T_CLOSING)
            tunnel_kill(t, "the agent closed the control stream");
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
        tstream_free(s);
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
void tunnel_flush(struct tunnel *t)
{
    if (t->dead || !t->h2)
        return;
    struct evbuffer *out = bufferevent_get_output(t->wr);
    int rv = tunnel_bridge_pump_out(t->h2, out, TUN_OUT_HIGH);
    if (rv < 0) {
        tunnel_kill(t, "HTTP/2: %s", nghttp2_strerror(rv));
        return;
    }
    if (!nghttp2_session_want_read(t->h2) && !nghttp2_session_want_write(t->h2) &&
        evbuffer_get_length(out) == 0)
        tunnel_kill(t, t->st == T_CLOSING ? "refused" : "session over");
}

static void t_read(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    t->busy++;
    int rv = tunnel_bridge_pump_in(t->h2, bufferevent_get_input(bev), &t->dead);
    if (rv < 0)
        tunnel_kill(t, "HTTP/2 from the agent: %s", nghttp2_strerror(rv));
    tunnel_flush(t);
    tunnel_leave(t);
}

static void t_write(struct bufferevent *bev, void *arg)
{
    struct tunnel *t = arg;
    t->busy++;
    tunnel_flush(t);
    tunnel_leave(t);
}

static void t_event(struct bufferevent *bev, short what, void *arg)
{
    struct tunnel *t = arg;
    t->busy++;
    if (what & BEV_EVENT_EOF)
        tunnel_kill(t, "the agent closed the connection");
    else if (what & BEV_EVENT_ERROR)
        tunnel_kill(t, "connection error: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    tunnel_leave(t);
}

/* The drain's end of a tunnel (t->busy held): GOAWAY, and t_write when it
 * is all out (not at the usual low-water mark), where tunnel_flush finds the
 * session over and the tunnel ends. */
static void t_goaway(struct tunnel *t)
{
    t->drain_sent = 1;
    nghttp2_session_terminate_session(t->h2, NGHTTP2_NO_ERROR);
    bufferevent_setwatermark(t->wr, EV_WRITE, 0, 0);
    tunnel_flush(t);
}

static void t_tick(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    const struct jg_config *cf = t->hub->cfg;
    int64_t now = now_mono_ms();
    t->busy++;
    if (t->w->draining && !t->drain_sent && !t->dead && t->nstreams == 0) {
        t_goaway(t); /* its requests are done: the drain ends it */
        tunnel_leave(t);
        return;
    }
    if (t->st == T_HELLO && now - t->started > cf->hello_wait * 1000) {
        tunnel_kill(t, "no hello within %" PRId64 " s", cf->hello_wait);
    } else if (t->st == T_VERIFY && (now - t->verify_at > cf->t_handshake * 500 ||
                                     now - t->started >= cf->t_handshake * 1000)) {
        /* The scheduler is slow (half the handshake time from the question,
         * within the handshake's): the tunnel works, without the job. */
        tctl_welcome(t, "the scheduler did not answer in time");
    } else if (t->st != T_READY && now - t->started > cf->t_handshake * 1000) {
        tunnel_kill(t, "no welcome within %" PRId64 " s", cf->t_handshake);
    } else if (t->ping_sent && now - t->ping_sent > cf->ping_timeout * 1000) {
        tunnel_kill(t, "no answer to PING within %" PRId64 " s", cf->ping_timeout);
    } else if (!t->ping_sent && now - t->last_ack >= cf->ping_interval * 1000) {
        nghttp2_submit_ping(t->h2, NGHTTP2_FLAG_NONE, NULL);
        t->ping_sent = now;
    }
    if (!t->dead && t->job && registry_revocations(t->hub->reg) != t->seen_revocation) {
        /* Something ended: if it was our job, we end with it. */
        struct job j;
        t->seen_revocation = registry_revocations(t->hub->reg);
        if (registry_job_get(t->hub->reg, t->job, &j) < 0 || j.ended)
            tunnel_kill(t, "its job %u ended", (unsigned)t->job);
    }
    if (!t->dead)
        tstream_tick(t, now);
    tunnel_flush(t);
    tunnel_leave(t);
}

/* ---- life and death ----------------------------------------------------------------- */

/* Routes of this tunnel wait for their agent to come back (grace). */
static void detach_routes(struct tunnel *t)
{
    const char *aliases[TUN_MAX_REG];
    for (unsigned i = 0; i < t->nreg; i++)
        aliases[i] = t->reg[i].alias;
    registry_tunnel_detach(t->hub->reg, t->id, aliases, t->nreg, t->asleep);
}

/* Takes t out of the pending count (under hub->mu). */
static void unpend(struct tunnel *t)
{
    struct tunnel_hub *hub = t->hub;
    if (!t->pending)
        return;
    t->pending = 0;
    hub->pending--;
    hmap_tally(hub->pending_by, t->source, strlen(t->source), -1);
}

/* Takes t out of every count (under hub->mu). */
static void uncount(struct tunnel *t)
{
    struct tunnel_hub *hub = t->hub;
    unpend(t);
    if (t->counted) {
        t->counted = 0;
        hub->tunnels--;
        hmap_tally(hub->by_uid, &t->uid, sizeof(t->uid), -1);
    }
}

int tunnel_count_hello(struct tunnel *t, uid_t uid, char *why, size_t wl)
{
    struct tunnel_hub *hub = t->hub;
    unsigned quota = hub->cfg->quota_tunnels;
    int exempt = uid == 0 || uid == hub->uid;
    int rc = 0;
    pthread_mutex_lock(&hub->mu);
    size_t mine = hmap_tally(hub->by_uid, &uid, sizeof(uid), 0);
    if (hub->tunnels >= TUN_MAX_TUNNELS) {
        snprintf(why, wl, "the gateway has %u tunnels open, its most", hub->tunnels);
        rc = -1;
    } else if (!exempt && mine >= quota) {
        snprintf(why, wl, "uid %u has %zu tunnels open, its quota ([quota] tunnels)",
                 (unsigned)uid, mine);
        rc = -1;
    } else {
        unpend(t); /* a refused one stays pending until it is gone */
        t->counted = 1;
        t->uid = uid; /* what uncount() takes it off */
        hub->tunnels++;
        hmap_tally(hub->by_uid, &uid, sizeof(uid), 1);
    }
    pthread_mutex_unlock(&hub->mu);
    return rc;
}

static void t_free(struct tunnel *t)
{
    struct tunnel_hub *hub = t->hub;
    pthread_mutex_lock(&hub->mu);
    hmap_del(hub->byid, &t->id, sizeof(t->id));
    uncount(t);
    struct post *p = t->posted;
    t->posted = NULL;
    pthread_mutex_unlock(&hub->mu);
    while (p) {
        struct post *n = p->next;
        xprt_free(p->bev);
        free(p);
        p = n;
    }
    if (t->nreg)
        detach_routes(t);
    while (!LIST_EMPTY(&t->streams))
        tstream_free(LIST_FIRST(&t->streams));
    if (t->h2)
        nghttp2_session_del(t->h2);
    t->h2 = NULL;
    if (t->rd != t->wr && t->wr)
        xprt_free(t->wr);
    if (t->rd)
        xprt_free(t->rd);
    if (t->ev_post)
        event_free(t->ev_post);
    if (t->ev_verdict)
        event_free(t->ev_verdict);
    tctl_hello_forget(t);
    if (t->ev_tick)
        event_free(t->ev_tick);
    if (t->hold_fd >= 0)
        close(t->hold_fd); /* `jobgate tunnel --stdio` sees EOF and exits */
    tunnel_lines_free(&t->ctl_lines);
    evbuffer_free(t->ctl_out);
    LIST_REMOVE(t, link);
    atomic_fetch_sub(t->w->clients, 1);
    struct worker *w = t->w;
    free(t);
    if (w->draining)
        w->conn_gone(w); /* the drain may be over */
}

void tunnel_kill(struct tunnel *t, const char *fmt, ...)
{
    if (t->dead)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->why, sizeof(t->why), fmt, ap);
    va_end(ap);
    t->dead = 1;
    log_info("tunnel=%" PRIx64 " peer=%s uid=%ld closed: %s", t->id, t->peer,
             t->st == T_HELLO || t->st == T_AUTH ? -1L : (long)t->uid, t->why);
}

void tunnel_leave(struct tunnel *t)
{
    if (--t->busy == 0 && t->dead)
        t_free(t);
}

/* A new tunnel from source (an address, or "uid N"), not said hello yet:
 * NULL (logged within a rate) when the pre-hello caps are full. */
static struct tunnel *t_new(struct worker *w, const char *peer, const char *source)
{
    static __thread struct log_limit refused_log;
    struct tunnel_hub *hub = w->hub;
    const struct jg_config *cf = hub->cfg;
    size_t slen = strlen(source);
    pthread_mutex_lock(&hub->mu);
    size_t from = hmap_tally(hub->pending_by, source, slen, 0);
    if (hub->pending >= cf->pending_max || from >= cf->pending_per_address) {
        unsigned all = hub->pending;
        pthread_mutex_unlock(&hub->mu);
        log_limited(&refused_log, LOG_LVL_WARN, "refusing a tunnel from %s: %zu from there and "
                    "%u in all have not said hello yet ([tunnel] pending_per_address, "
                    "pending_max)", source, from, all);
        return NULL;
    }
    struct tunnel *t = xcalloc(1, sizeof(*t));
    snprintf(t->source, sizeof(t->source), "%s", source);
    t->pending = 1;
    hub->pending++;
    hmap_tally(hub->pending_by, t->source, strlen(t->source), 1);
    /* Unpredictable ids: an id names a tunnel in the route table, nothing more,
     * but there is no reason to let one be guessed. */
    do {
        if (random_bytes(&t->id, sizeof(t->id)) < 0)
            t->id = ++hub->next_id;
    } while (t->id == 0 || hmap_get(hub->byid, &t->id, sizeof(t->id)));
    hmap_put(hub->byid, &t->id, sizeof(t->id), t);
    t->hub = hub;
    pthread_mutex_unlock(&hub->mu);
    t->w = w;
    snprintf(t->peer, sizeof(t->peer), "%s", peer);
    t->uid = (uid_t)-1;
    t->hold_fd = -1;
    t->ctl_out = evbuffer_new();
    t->ev_post = event_new(w->base, -1, 0, tstream_on_post, t);
    t->ev_verdict = event_new(w->base, -1, 0, tctl_on_verdict, t);
    t->ev_tick = event_new(w->base, -1, EV_PERSIST, t_tick, t);
    t->started = t->last_ack = now_mono_ms();
    LIST_INSERT_HEAD(&w->tunnels, t, link);
    atomic_fetch_add(w->clients, 1); /* a client connection like a browser's */
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
    nghttp2_data_provider dp = {.source.ptr = t, .read_callback = tctl_provide};
    t->ctl_id = nghttp2_submit_request(t->h2, NULL, nv, JG_ARRAY_LEN(nv), &dp, NULL);
    if (t->ctl_id < 0)
        return -EIO;
    tctl_send(t, json_pack("{s:s, s:i, s:s}", "type", "challenge", "version", TUNNEL_VERSION,
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
    tunnel_flush(t);
    if (evbuffer_get_length(bufferevent_get_input(t->rd)) > 0)
        t_read(t->rd, t); /* the agent's first bytes came with the handshake */
    tunnel_leave(t);
    return 0;
}

void tunnel_adopt_tls(struct worker *w, struct bufferevent *bev, const char *ip)
{
    struct tunnel *t = t_new(w, ip, ip);
    if (!t) {
        xprt_free(bev);
        return;
    }
    t->rd = t->wr = bev;
    t->busy++;
    if (t_start(t) < 0)
        tunnel_kill(t, "cannot set up the HTTP/2 session");
    else
        log_debug("tunnel=%" PRIx64 " peer=%s TLS, waiting for the hello", t->id, ip);
    tunnel_leave(t);
}

int tunnel_adopt_stdio(struct worker *w, int in_fd, int out_fd, int hold_fd, uid_t uid)
{
    char source[32];
    snprintf(source, sizeof(source), "uid %u", (unsigned)uid);
    struct tunnel *t = atomic_load(w->clients) < w->max_clients ? t_new(w, "ssh", source) : NULL;
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
        tunnel_kill(t, "out of memory");
    } else if (t_start(t) < 0) {
        rc = -ENOMEM;
        tunnel_kill(t, "cannot set up the HTTP/2 session");
    } else {
        log_info("tunnel=%" PRIx64 " handed over by uid %u (ssh)", t->id, (unsigned)uid);
    }
    tunnel_leave(t);
    return rc;
}

void tunnel_goaway_all(struct worker *w)
{
    struct tunnel *t, *next;
    for (t = LIST_FIRST(&w->tunnels); t; t = next) {
        next = LIST_NEXT(t, link);
        if (!t->h2 || t->dead || t->nstreams > 0)
            continue; /* one carrying requests goes at its first tick without them */
        t->busy++;
        t_goaway(t);
        tunnel_leave(t);
    }
}

void tunnel_close_all(struct worker *w)
{
    while (!LIST_EMPTY(&w->tunnels)) {
        struct tunnel *t = LIST_FIRST(&w->tunnels);
        if (t->h2 && !t->dead) {
            /* Best effort: GOAWAY into the buffer; the agent reconnects either way. */
            nghttp2_session_terminate_session(t->h2, NGHTTP2_NO_ERROR);
            t->busy++;
            tunnel_flush(t);
            t->busy--;
        }
        t->dead = 1;
        t_free(t);
    }
}
