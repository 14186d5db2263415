/* conn — see conn.h. */
#include "conn.h"
#include "conn-int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "backend.h"
#include "body.h"
#include "config.h"
#include "log.h"
#include "nodechan.h"
#include "page.h"
#include "registry.h"
#include "reqhead.h"
#include "reserved.h"
#include "tunnel.h"
#include "util.h"
#include "worker-t.h"
#include "xprt.h"

#define LINGER_SECS 2
#define PIPELINE_BATCH 32 /* requests handled per read event before yielding */
#define CALLBACK_CONNECT_S 3 /* a callback endpoint's connect and handshake */
#define WAIT_POLL_MS 100  /* how often a request waiting for its agent looks again */

static void cli_read(struct bufferevent *bev, void *arg);
static void cli_write(struct bufferevent *bev, void *arg);
static void cli_event(struct bufferevent *bev, short what, void *arg);
static void be_read(struct bufferevent *bev, void *arg);
static void be_write(struct bufferevent *bev, void *arg);
static void be_event(struct bufferevent *bev, short what, void *arg);
static void pump_request(struct conn *c);
static void pump_response(struct conn *c);

static int64_t now_ms(struct conn *c)
{
    struct timeval tv;
    event_base_gettimeofday_cached(c->w->base, &tv);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static int64_t timer_secs(struct conn *c, enum timer_kind k)
{
    const struct jg_config *cf = c->w->cfg;
    switch (k) {
    case TK_HANDSHAKE: return cf->t_handshake;
    case TK_HEAD: return cf->t_request_head;
    case TK_IDLE: return cf->t_idle;
    case TK_CONNECT:
        /* A sleeping agent's endpoint that does not answer soon is down: the
         * request waits for the poll instead (conn_asleep.c). */
        return c->via_cb && cf->t_connect > CALLBACK_CONNECT_S ? CALLBACK_CONNECT_S
                                                              : cf->t_connect;
    case TK_IO: return cf->t_io;
    case TK_TUNNEL: return cf->t_tunnel;
    case TK_CLOSE: return LINGER_SECS;
    case TK_WAIT: return 0;
    case TK_MOVE: return 0;
    }
    return 10;
}

void conn_timer_set(struct conn *c, enum timer_kind k)
{
    struct timeval tv = {(time_t)timer_secs(c, k), k == TK_WAIT ? WAIT_POLL_MS * 1000 : 0};
    c->tk = k;
    c->last_active = now_ms(c);
    event_add(c->timer, &tv);
}

#define ACCESS_FMT "req conn=%llu ip=%s alias=%s uid=%ld \"%s %s\" %d %llu %lldms"

static void access_log(struct conn *c)
{
    if (!c->method[0])
        return;
    long uid = c->uid == (uid_t)-1 ? -1L : (long)c->uid;
    long long ms = (long long)(now_mono_ms() - c->t_start);
    if (c->quiet) /* a failed redeem or its 429: a flood must not flood the log */
        log_limited(&c->w->quiet_log, LOG_LVL_INFO, ACCESS_FMT, (unsigned long long)c->id,
                    c->ip, c->alias[0] ? c->alias : "-", uid, c->method, c->path, c->status,
                    (unsigned long long)c->bytes_out, ms);
    else
        log_access(ACCESS_FMT, (unsigned long long)c->id, c->ip, c->alias[0] ? c->alias : "-",
                   uid, c->method, c->path, c->status, (unsigned long long)c->bytes_out, ms);
    c->method[0] = '\0';
    c->quiet = 0;
}

void conn_be_drop(struct conn *c)
{
    if (c->be) {
        xprt_free(c->be);
        c->be = NULL;
    }
    c->be_connected = 0;
    c->be_err = 0;
    c->be_alias[0] = '\0';
}

void conn_free(struct conn *c)
{
    struct worker *w = c->w;
    if (c->st == CS_EXCHANGE && c->method[0] && !c->status)
        c->status = 499; /* nginx's "client closed request", for the log */
    access_log(c);
    conn_unhold(c);
    conn_node_forget(c);
    if (c->cb_head)
        evbuffer_free(c->cb_head);
    conn_be_drop(c);
    if (c->cli)
        xprt_free(c->cli);
    event_free(c->timer);
    if (c->reqhead)
        evbuffer_free(c->reqhead);
    LIST_REMOVE(c, link);
    free(c);
    w->nconns--;
    atomic_fetch_sub(w->clients, 1);
    w->conn_gone(w);
}

/* Last phase: close_notify and FIN sent, input read and dropped for a short
 * while, so that unread request bytes do not turn our close into a reset that
 * destroys the response in flight (nginx's lingering close). */
static void linger(struct conn *c)
{
    c->st = CS_LINGER;
    xprt_close_write(c->cli);
    evbuffer_drain(bufferevent_get_input(c->cli), evbuffer_get_length(bufferevent_get_input(c->cli)));
    bufferevent_enable(c->cli, EV_READ);
    conn_timer_set(c, TK_CLOSE);
}

static void start_closing(struct conn *c)
{
    c->st = CS_CLOSING;
    conn_be_drop(c);
    bufferevent_disable(c->cli, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->cli)) == 0) {
        linger(c);
        return;
    }
    /* cli_write finishes the job once the output is flushed. */
    conn_timer_set(c, TK_IO);
}

/* Answers from the gateway itself (error page etc.) while in CS_HEAD or
 * before the response started. must_close: the connection ends after it. */
void conn_local_reply(struct conn *c, int status, const char *detail, int must_close,
                        const char *extra)
{
    struct evbuffer *out = bufferevent_get_output(c->cli);
    size_t before = evbuffer_get_length(out);
    int close = must_close || c->client_close;
    conn_node_forget(c); /* the answer given here is the only one */
    page_error(out, status, detail, close, extra, c->head_req);
    c->status = status;
    c->bytes_out += evbuffer_get_length(out) - before;
    c->client_close = close;
    c->req_done = 1;
    c->resp_done = 1;
    conn_exchange_done(c);
}

static void reset_exchange(struct conn *c)
{
    conn_unhold(c); /* whatever answered it (a 403 after a logout, say) */
    c->wait_until = 0; /* the next request waits for a reconnecting agent afresh */
    c->via_cb = c->cb_failed = 0;
    c->alias[0] = '\0';
    c->uid = (uid_t)-1;
    c->head_req = c->upgrade_req = 0;
    c->req_body = HTTP1_BODY_NONE;
    c->req_left = 0;
    c->req_done = 0;
    c->resp_started = c->resp_done = 0;
    c->resp_body = HTTP1_BODY_NONE;
    c->resp_left = 0;
    c->retried = 0;
    c->be_reused = 0;
    c->status = 0;
    c->bytes_out = 0;
    c->scan = 0;
}

/* The exchange is over (response complete): log, then keep-alive or close. */
void conn_exchange_done(struct conn *c)
{
    access_log(c);
    if (!c->req_done) {
        /* The app answered before reading the whole request body: the browser
         * connection can no longer be framed, nor can the backend's. */
        c->client_close = 1;
        c->be_reusable = 0;
    }
    if (!c->be_reusable)
        conn_be_drop(c);
    else if (c->be)
        /* The answer's last bytes may have filled the browser's buffer and
         * paused the backend (move_bytes): a kept backend reads again, to
         * take the next answer and to hear the app close it meanwhile. */
        bufferevent_enable(c->be, EV_READ);
    if (c->client_close) {
        start_closing(c);
        return;
    }
    reset_exchange(c);
    c->st = CS_HEAD;
    bufferevent_enable(c->cli, EV_READ);
    conn_timer_set(c, TK_IDLE);
    if (!c->in_head_loop && evbuffer_get_length(bufferevent_get_input(c->cli)) > 0)
        conn_on_head(c);
}

/* Moves up to n bytes from src to dst's output; pauses src if dst is full. */
static void move_bytes(struct conn *c, struct bufferevent *src, struct bufferevent *dst, size_t n,
                       int to_client)
{
    struct evbuffer *out = bufferevent_get_output(dst);
    if (n)
        evbuffer_remove_buffer(bufferevent_get_input(src), out, n);
    if (to_client) {
        c->bytes_out += n;
        /* The TLS bufferevent writes one record (and makes one syscall) per
         * chain: a small response made of a head chain and a body chain is
         * cheaper copied into one. */
        size_t len = evbuffer_get_length(out);
        if (len <= 16384 && evbuffer_peek(out, -1, NULL, NULL, 0) > 1)
            evbuffer_pullup(out, -1);
    }
    if (evbuffer_get_length(out) >= CONN_HIGH_WATER)
        bufferevent_disable(src, EV_READ); /* dst's write callback resumes it */
}

/*
 * Moves the body bytes waiting in src's input to dst's output, following the
 * framing (kind, left, ch). Returns 1 when the body ended, 0 when more is to
 * come or dst is full (src is paused then; dst's write callback resumes it),
 * -1 when a chunked body is malformed.
 */
static int pump_body(struct conn *c, struct bufferevent *src, struct bufferevent *dst,
                     enum http1_body kind, uint64_t *left, struct http1_chunked *ch, int to_client)
{
    struct evbuffer *in = bufferevent_get_input(src);
    while (evbuffer_get_length(in) > 0) {
        if (evbuffer_get_length(bufferevent_get_output(dst)) >= CONN_HIGH_WATER) {
            bufferevent_disable(src, EV_READ);
            return 0;
        }
        int done;
        ssize_t n = body_span(in, kind, left, ch, &done);
        if (n < 0)
            return -1;
        move_bytes(c, src, dst, (size_t)n, to_client);
        if (done)
            return 1;
        if (n == 0)
            break;
    }
    return 0;
}

static void pump_request(struct conn *c)
{
    if (c->req_done || !c->be || !c->be_connected) /* the head goes first */
        return;
    int r = pump_body(c, c->cli, c->be, c->req_body, &c->req_left, &c->req_ch, 0);
    if (r < 0) {
        log_info("conn=%llu alias=%s malformed chunked request body", (unsigned long long)c->id,
                 c->alias);
        if (!c->resp_started) {
            conn_be_drop(c);
            conn_local_reply(c, 400, "The chunked request body was malformed.", 1, NULL);
        } else {
            conn_free(c);
        }
        return;
    }
    c->req_done = r;
    if (c->req_done && c->resp_done)
        conn_exchange_done(c);
}

static void pump_response(struct conn *c)
{
    if (!c->resp_done) {
        int r = pump_body(c, c->be, c->cli, c->resp_body, &c->resp_left, &c->resp_ch, 1);
        if (r < 0) {
            log_info("conn=%llu alias=%s malformed chunked response from the app",
                     (unsigned long long)c->id, c->alias);
            conn_free(c); /* the head went out already: only a cut tells the browser */
            return;
        }
        c->resp_done = r;
    }
    if (c->resp_done)
        conn_exchange_done(c);
}

static void pump_tunnel(struct conn *c)
{
    struct evbuffer *ci = bufferevent_get_input(c->cli), *bi = bufferevent_get_input(c->be);
    if (evbuffer_get_length(ci))
        move_bytes(c, c->cli, c->be, evbuffer_get_length(ci), 0);
    if (evbuffer_get_length(bi))
        move_bytes(c, c->be, c->cli, evbuffer_get_length(bi), 1);
}

static void be_start(struct conn *c, const struct route *r)
{
    int ready;
    c->be = backend_connect(c->w->env, c->w->base, r, &ready);
    if (!c->be && conn_callback_failed(c, strerror(errno)))
        return;
    if (!c->be) {
        log_info("conn=%llu alias=%s cannot reach the app: %s", (unsigned long long)c->id,
                 c->alias, strerror(errno));
        conn_local_reply(c, 502, NULL, c->req_body != HTTP1_BODY_NONE, NULL);
        return;
    }
    snprintf(c->be_alias, sizeof(c->be_alias), "%s", r->alias);
    c->be_route = *r;
    c->be_connected = 0;
    bufferevent_setcb(c->be, be_read, be_write, be_event, c);
    bufferevent_setwatermark(c->be, EV_READ, 0, CONN_HIGH_WATER);
    bufferevent_setwatermark(c->be, EV_WRITE, CONN_LOW_WATER, 0);
    bufferevent_enable(c->be, EV_READ | EV_WRITE);
    conn_timer_set(c, TK_CONNECT);
    if (ready) /* a tunnel stream's end, say: the peer is checked all the same */
        bufferevent_trigger_event(c->be, BEV_EVENT_CONNECTED, BEV_TRIG_DEFER_CALLBACKS);
}

/* Sends the kept head on the backend connection (new or reused). On an idle
 * connected socket it is written at once: the bufferevent would first wait
 * for writability, an epoll round trip and two epoll_ctl calls per request. */
static void be_send_head(struct conn *c)
{
    size_t n = evbuffer_get_length(c->reqhead);
    xprt_send(c->be, c->be_connected, evbuffer_pullup(c->reqhead, (ssize_t)n), n);
}

/* Forwards a request head that passed every check. */
void conn_forward(struct conn *c, const struct route *r, const struct http1_head *h,
                  size_t head_len)
{
    if (!c->reqhead)
        c->reqhead = evbuffer_new();
    evbuffer_drain(c->reqhead, evbuffer_get_length(c->reqhead));
    reqhead_forward_request(c->reqhead, h, c->ip);
    c->req_body = h->body;
    c->req_left = h->content_length;
    http1_chunked_init(&c->req_ch, c->w->limits->max_head);
    c->req_done = h->body == HTTP1_BODY_NONE;
    c->upgrade_req = (h->flags & HTTP1_F_UPGRADE) != 0;
    evbuffer_drain(bufferevent_get_input(c->cli), head_len); /* h is dangling from here on */
    c->st = CS_EXCHANGE;

    if (c->be && c->be_connected && strcmp(c->be_alias, r->alias) == 0) {
        c->be_reused = 1;
        conn_timer_set(c, TK_IO);
        be_send_head(c);
        pump_request(c);
    } else {
        /* The head goes out once the peer is proven to be the owner's (be_event). */
        conn_be_drop(c);
        be_start(c, r);
    }
}

void conn_wait(struct conn *c)
{
    c->st = CS_WAIT;
    c->method[0] = '\0'; /* logged when it is answered */
    bufferevent_disable(c->cli, EV_READ);
    conn_timer_set(c, TK_WAIT);
}

/* A complete, parsed request head of head_len bytes at the front of the input. */
static void handle_request(struct conn *c, struct http1_head *h, size_t head_len)
{
    struct worker *w = c->w;
    struct http1_str vals[4];

    snprintf(c->method, sizeof(c->method), "%.*s", (int)(h->method.n < 15 ? h->method.n : 15),
             h->method.p);
    c->t_start = now_mono_ms();
    c->head_req = http1_name_is(&h->method, "head");
    c->client_close = (h->flags & HTTP1_F_CLOSE) != 0;
    int has_body = h->body != HTTP1_BODY_NONE;

    if (reqhead_absolute_form(h) < 0) {
        snprintf(c->path, sizeof(c->path), "[invalid target]"); /* it could hold a token */
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 400, "The request target must be a path or an http(s) URL.", 1, NULL);
        return;
    }
    reqhead_log_path(&h->target, c->path, sizeof(c->path)); /* after the rewrite: redaction sees the path */
    if (nodechan_match(&h->target)) {
        conn_node_request(c, h, head_len);
        return;
    }
    if (reqhead_alias(&h->host, w->cfg->domain, c->alias, sizeof(c->alias)) < 0) {
        c->alias[0] = '\0';
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 404, "There is no app at this address.", has_body, NULL);
        return;
    }
    if (reserved_match(&h->target)) {
        conn_reserved_request(c, h, head_len);
        return;
    }
    struct admission a;
    int n = reqhead_cookies(h, REQHEAD_COOKIE, vals, 4);
    enum admit verdict = registry_admit(w->reg, c->alias, vals, n, &a);
    if (verdict == ADMIT_UNKNOWN) {
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 404, NULL, has_body, NULL);
        return;
    }
    if (verdict == ADMIT_FORBIDDEN) {
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 403, NULL, has_body, NULL);
        return;
    }
    c->uid = a.uid; /* logged with the answer, whatever it is */
    const char *why = a.route.cross_site ? NULL : reqhead_cross_site(h);
    if (why) {
        /* A page of another app (same-site to this one) or of another site. */
        char detail[400];
        snprintf(detail, sizeof(detail), "This request was refused: %s. Open the app at its own "
                 "address and try again. (An app that must take such requests is started with "
                 "'jobgate run --cross-site'.)", why);
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 403, detail, has_body, NULL);
        return;
    }
    memcpy(c->sess_hash, a.sess_hash, sizeof(c->sess_hash));
    c->has_session = 1;
    c->sess_expires = a.sess_expires;
    if (a.sess_expires && (!w->next_expiry || a.sess_expires < w->next_expiry))
        w->next_expiry = a.sess_expires; /* its end closes what it opened (a WebSocket) */
    memcpy(c->sess_alias, c->alias, sizeof(c->sess_alias));
    if (verdict != ADMIT_ASLEEP)
        conn_unhold(c); /* its agent is back (or the app gone) */
    if (verdict == ADMIT_ASLEEP) {
        if (h->flags & HTTP1_F_EXPECT_OTHER) {
            evbuffer_drain(bufferevent_get_input(c->cli), head_len);
            conn_local_reply(c, 417, "Only 'Expect: 100-continue' is supported.", has_body, NULL);
            return;
        }
        conn_asleep_request(c, &a.route, h, head_len, has_body);
        return;
    }
    if (verdict == ADMIT_RECONNECTING) {
        /* The agent is reconnecting: hold the request (its head stays in the
         * input) for up to reconnect_wait, then 503. */
        int64_t now = now_mono_ms();
        if (c->wait_until == 0)
            c->wait_until = now + w->cfg->reconnect_wait * 1000;
        if (now < c->wait_until) {
            conn_wait(c);
            return;
        }
        c->wait_until = 0;
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 503, "The app's agent is reconnecting; try again in a moment.", has_body,
                    "Retry-After: 5\r\n");
        return;
    }
    c->wait_until = 0;
    if (verdict == ADMIT_STARTING) {
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 503, NULL, has_body, "Retry-After: 3\r\n");
        return;
    }
    if (h->flags & HTTP1_F_EXPECT_OTHER) {
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 417, "Only 'Expect: 100-continue' is supported.", has_body, NULL);
        return;
    }
    if (a.route.kind == ROUTE_TUNNEL && conn_start_move(c, &a.route, head_len, has_body))
        return;
    conn_forward(c, &a.route, h, head_len);
}

/* Reads request heads from the browser while the connection waits for one. */
/* Reads up to a whole head of lim's (SIGHUP may raise it on an open connection). */
static void read_watermark(struct conn *c, const struct http1_limits *lim)
{
    size_t high = lim->max_head + 16384;
    bufferevent_setwatermark(c->cli, EV_READ, 0, high > CONN_HIGH_WATER ? high : CONN_HIGH_WATER);
    c->read_lim = lim;
}

void conn_on_head(struct conn *c)
{
    const struct http1_limits *lim = c->w->limits;
    if (*c->w->stopping) {
        conn_free(c);
        return;
    }
    if (lim != c->read_lim)
        read_watermark(c, lim);
    struct evbuffer *in = bufferevent_get_input(c->cli);
    int batch = 0;
    c->in_head_loop = 1;
    c->body_wait = 0;
    for (; c->st == CS_HEAD && !c->move_wait && !c->body_wait && batch < PIPELINE_BATCH; batch++) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            break;
        if (evbuffer_get_length(bufferevent_get_output(c->cli)) >= CONN_HIGH_WATER) {
            /* Answers the gateway made itself pile up unread: wait for the
             * browser to read (cli_write resumes). */
            bufferevent_disable(c->cli, EV_READ);
            break;
        }
        if (c->tk == TK_IDLE)
            conn_timer_set(c, TK_HEAD); /* the head's deadline runs from its first byte */
        size_t want = len < lim->max_head + 1 ? len : lim->max_head + 1;
        const char *p = (const char *)evbuffer_pullup(in, (ssize_t)want);
        ssize_t r = http1_scan_head(p, want, lim, &c->scan);
        if (r == 0)
            break;
        c->scan = 0; /* the cursor serves the response head next */
        if (r > 0) {
            int pe = http1_parse_request(p, (size_t)r, lim, &c->w->scratch);
            if (pe < 0)
                r = pe;
        }
        if (r < 0) {
            int err = (int)-r;
            snprintf(c->method, sizeof(c->method), "-");
            snprintf(c->path, sizeof(c->path), "-");
            c->t_start = now_mono_ms();
            log_info("conn=%llu ip=%s bad request: %s", (unsigned long long)c->id, c->ip,
                     http1_err_str(err));
            conn_local_reply(c, http1_err_status(err), http1_err_str(err), 1, NULL);
            break;
        }
        handle_request(c, &c->w->scratch, (size_t)r);
    }
    c->in_head_loop = 0;
    if (batch == PIPELINE_BATCH && c->st == CS_HEAD && !c->move_wait && evbuffer_get_length(in) > 0)
        bufferevent_trigger(c->cli, EV_READ, BEV_TRIG_DEFER_CALLBACKS); /* more pipelined heads */
}

/* The app's response head (and interim 1xx heads). */
static void on_resp_head(struct conn *c)
{
    const struct http1_limits *lim = c->w->limits;
    struct evbuffer *in = bufferevent_get_input(c->be);
    struct http1_head *h = &c->w->scratch;
    while (!c->resp_started) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return;
        size_t want = len < lim->max_head + 1 ? len : lim->max_head + 1;
        const char *p = (const char *)evbuffer_pullup(in, (ssize_t)want);
        ssize_t r = http1_scan_head(p, want, lim, &c->scan);
        if (r == 0)
            return;
        int err = r < 0 ? (int)-r : -http1_parse_response(p, (size_t)r, lim, c->head_req, h);
        if (err) {
            log_warn("conn=%llu alias=%s bad response from the app: %s", (unsigned long long)c->id,
                     c->alias, http1_err_str(err));
            conn_be_drop(c);
            conn_local_reply(c, 502, "The app sent a malformed response.", !c->req_done, NULL);
            return;
        }
        c->scan = 0;
        struct evbuffer *out = bufferevent_get_output(c->cli);
        if (h->status == 101) {
            if (!c->upgrade_req) {
                conn_be_drop(c);
                conn_local_reply(c, 502, "The app switched protocols without being asked to.", 1, NULL);
                return;
            }
            reqhead_forward_response(out, h, 0);
            evbuffer_drain(in, (size_t)r);
            c->status = 101;
            c->resp_started = 1;
            c->st = CS_UPGRADED;
            access_log(c);
            conn_timer_set(c, TK_TUNNEL);
            bufferevent_enable(c->cli, EV_READ);
            pump_tunnel(c);
            return;
        }
        if (h->status < 200) {
            reqhead_forward_response(out, h, 0); /* 100 Continue and friends pass through */
            evbuffer_drain(in, (size_t)r);
            if (evbuffer_get_length(out) >= CONN_HIGH_WATER) {
                bufferevent_disable(c->be, EV_READ); /* cli_write resumes */
                return;
            }
            continue;
        }
        c->status = h->status;
        c->resp_body = h->body;
        c->resp_left = h->content_length;
        http1_chunked_init(&c->resp_ch, lim->max_head);
        if (h->body == HTTP1_BODY_EOF)
            c->client_close = 1;
        c->be_reusable = !(h->flags & HTTP1_F_CLOSE) && h->minor == 1 &&
                         h->body != HTTP1_BODY_EOF;
        size_t before = evbuffer_get_length(out);
        reqhead_forward_response(out, h, c->client_close);
        c->bytes_out += evbuffer_get_length(out) - before;
        evbuffer_drain(in, (size_t)r);
        c->resp_started = 1;
        c->resp_done = h->body == HTTP1_BODY_NONE;
    }
    pump_response(c);
}

static void cli_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    c->last_active = now_ms(c);
    switch (c->st) {
    case CS_HEAD: conn_on_head(c); break;
    case CS_EXCHANGE: pump_request(c); break;
    case CS_UPGRADED: pump_tunnel(c); break;
    case CS_LINGER:
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
        break;
    default: break;
    }
}

/* The browser's output drained below the low-water mark. */
static void cli_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    c->last_active = now_ms(c);
    if (c->st == CS_CLOSING) {
        if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
            linger(c);
        return;
    }
    if (c->st == CS_HEAD) {
        if (c->move_wait) {
            if (evbuffer_get_length(bufferevent_get_output(bev)) > 0)
                return;
            c->move_wait = 0; /* all out: the waiting head can move now */
        }
        bufferevent_enable(bev, EV_READ);
        if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
            conn_on_head(c);
        return;
    }
    if (c->be && (c->st == CS_EXCHANGE || c->st == CS_UPGRADED)) {
        bufferevent_enable(c->be, EV_READ);
        if (c->st == CS_UPGRADED)
            pump_tunnel(c);
        else if (c->resp_started)
            pump_response(c);
        else
            on_resp_head(c);
    }
}

static void cli_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        if (xprt_alpn_is(bev, TUNNEL_ALPN)) {
            /* An agent: the connection belongs to the tunnel from here on. */
            c->cli = NULL;
            tunnel_adopt_tls(c->w, bev, c->ip);
            conn_free(c);
            return;
        }
        c->st = CS_HEAD;
        conn_timer_set(c, TK_IDLE);
        log_debug("conn=%llu ip=%s TLS %s established", (unsigned long long)c->id, c->ip,
                  xprt_version(bev));
        /* A request that came with the handshake's last flight raised no read event of its own. */
        if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
            conn_on_head(c);
        return;
    }
    if ((what & BEV_EVENT_ERROR) && c->st == CS_HANDSHAKE)
        log_debug("conn=%llu ip=%s TLS handshake failed", (unsigned long long)c->id, c->ip);
    if (c->st == CS_UPGRADED && c->be)
        pump_tunnel(c);
    conn_free(c);
}

static void be_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    c->last_active = now_ms(c);
    int r = xprt_read_ahead(bev, CONN_HIGH_WATER);
    if (r < 0)
        c->be_err = -r;
    switch (c->st) {
    case CS_EXCHANGE:
        if (c->resp_started)
            pump_response(c);
        else
            on_resp_head(c);
        break;
    case CS_UPGRADED: pump_tunnel(c); break;
    default:
        /* Bytes from an idle backend connection: it is out of step; drop it. */
        conn_be_drop(c);
        break;
    }
}

static void be_write(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    c->last_active = now_ms(c);
    if (c->st == CS_EXCHANGE) {
        bufferevent_enable(c->cli, EV_READ);
        pump_request(c);
    } else if (c->st == CS_UPGRADED) {
        bufferevent_enable(c->cli, EV_READ);
        pump_tunnel(c);
    }
}

/* Methods that change nothing (RFC 9110 9.2.1): the only ones sent twice. */
static int safe_method(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0;
}

static void be_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        char why[256];
        if (backend_verify_peer(c->w->env, bev, &c->be_route, why, sizeof(why)) < 0) {
            log_warn("conn=%llu alias=%s refusing the app's connection: %s",
                     (unsigned long long)c->id, c->alias, why);
            if (conn_callback_failed(c, "its endpoint is not the job's"))
                return;
            conn_be_drop(c);
            conn_local_reply(c, 502, "The app's address is not held by the app's owner.", !c->req_done,
                        NULL);
            return;
        }
        c->be_connected = 1;
        if (c->tk == TK_CONNECT)
            conn_timer_set(c, TK_IO);
        be_send_head(c);
        pump_request(c);
        return;
    }
    int err = EVUTIL_SOCKET_ERROR();
    if (c->be_err && (what & BEV_EVENT_EOF)) {
        /* The read-ahead saw the socket fail; what followed was only its end. */
        what = (short)((what & ~BEV_EVENT_EOF) | BEV_EVENT_ERROR);
        err = c->be_err;
    }
    if (c->st == CS_UPGRADED) {
        pump_tunnel(c);
        conn_be_drop(c);
        start_closing(c);
        return;
    }
    if (c->st != CS_EXCHANGE) {
        conn_be_drop(c); /* an idle kept-alive connection went away */
        return;
    }
    if (!c->resp_started && c->be_reused && !c->retried && c->req_body == HTTP1_BODY_NONE &&
        safe_method(c->method) && evbuffer_get_length(bufferevent_get_input(c->be)) == 0) {
        /* The app closed a kept-alive connection as we sent on it: once, on a fresh one. */
        struct route rc = c->be_route;
        /* A sleeping app's callback endpoint goes again where it went (the registry's
         * route is the tunnel route, with no tunnel). */
        int found = c->via_cb || registry_route_get(c->w->reg, c->alias, &rc) == 0;
        c->retried = 1;
        conn_be_drop(c);
        if (!found) {
            conn_local_reply(c, 404, NULL, 0, NULL);
            return;
        }
        c->be_reused = 0;
        be_start(c, &rc); /* the head is sent again once connected */
        return;
    }
    if (c->resp_started) {
        if ((what & BEV_EVENT_EOF) && c->resp_body == HTTP1_BODY_EOF) {
            pump_response(c);
            c->resp_done = 1;
            conn_be_drop(c);
            conn_exchange_done(c);
            return;
        }
        if (!c->resp_done) {
            log_info("conn=%llu alias=%s the app closed in the middle of a response",
                     (unsigned long long)c->id, c->alias);
            conn_free(c);
        }
        return;
    }
    if (!c->be_connected && conn_callback_failed(c, evutil_socket_error_to_string(err)))
        return;
    if (!c->be_connected)
        log_info("conn=%llu alias=%s cannot reach the app: %s", (unsigned long long)c->id, c->alias,
                 evutil_socket_error_to_string(err));
    else
        log_info("conn=%llu alias=%s the app closed without answering", (unsigned long long)c->id,
                 c->alias);
    conn_be_drop(c);
    conn_local_reply(c, 502, NULL, !c->req_done, NULL);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    if (c->tk == TK_MOVE) {
        conn_move(c);
        return;
    }
    if (c->tk == TK_WAIT) { /* look at the route again */
        c->st = CS_HEAD;
        conn_timer_set(c, TK_HEAD);
        bufferevent_enable(c->cli, EV_READ);
        conn_on_head(c);
        return;
    }
    if (c->tk == TK_IO || c->tk == TK_TUNNEL) {
        int64_t idle = now_ms(c) - c->last_active, limit = timer_secs(c, c->tk) * 1000;
        if (idle < limit) {
            int64_t left = limit - idle;
            struct timeval tv = {(time_t)(left / 1000), (suseconds_t)((left % 1000) * 1000)};
            event_add(c->timer, &tv);
            return;
        }
    }
    switch (c->tk) {
    case TK_HEAD:
        log_info("conn=%llu ip=%s request head not complete in time", (unsigned long long)c->id,
                 c->ip);
        snprintf(c->method, sizeof(c->method), "-");
        snprintf(c->path, sizeof(c->path), "-");
        c->t_start = now_mono_ms();
        conn_local_reply(c, 408, "The request did not arrive in time.", 1, NULL);
        return;
    case TK_CONNECT:
    case TK_IO:
        if (c->st == CS_EXCHANGE && !c->resp_started && c->tk == TK_CONNECT &&
            conn_callback_failed(c, "no answer in time"))
            return;
        if (c->st == CS_EXCHANGE && !c->resp_started) {
            if (c->node_job)
                log_warn("conn=%llu ip=%s node request: munged or the user database did not "
                         "answer in time", (unsigned long long)c->id, c->ip);
            else
                log_info("conn=%llu alias=%s the app did not answer in time",
                         (unsigned long long)c->id, c->alias);
            conn_be_drop(c);
            conn_local_reply(c, 504, NULL, 1, NULL);
            return;
        }
        break;
    default: break;
    }
    conn_free(c);
}

struct conn *conn_new(struct worker *w)
{
    struct conn *c = xcalloc(1, sizeof(*c));
    c->w = w;
    /* Unique across workers: the worker's index in the low byte. */
    c->id = (++w->next_conn_id << 8) | w->idx;
    c->uid = (uid_t)-1;
    return c;
}

/* c->cli is set: the connection joins w's loop in state st. */
void conn_start(struct conn *c, enum cstate st, enum timer_kind tk)
{
    struct worker *w = c->w;
    c->timer = evtimer_new(w->base, on_timer, c);
    LIST_INSERT_HEAD(&w->conns, c, link);
    w->nconns++;
    atomic_fetch_add(w->clients, 1);
    read_watermark(c, w->limits);
    bufferevent_setwatermark(c->cli, EV_WRITE, CONN_LOW_WATER, 0);
    bufferevent_setcb(c->cli, cli_read, cli_write, cli_event, c);
    bufferevent_enable(c->cli, EV_READ | EV_WRITE);
    c->st = st;
    conn_timer_set(c, tk);
}

void conn_accept(struct worker *w, evutil_socket_t fd, const struct sockaddr *sa, int salen)
{
    struct conn *c = conn_new(w);
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->ip, sizeof(c->ip));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->ip, sizeof(c->ip));
    else
        snprintf(c->ip, sizeof(c->ip), "local");
    c->cli = xprt_tls_accept(w->base, fd, w->ssl);
    if (!c->cli) {
        free(c);
        return;
    }
    conn_start(c, CS_HANDSHAKE, TK_HANDSHAKE);
}

void conn_revoke_sweep(struct worker *w)
{
    struct conn *c, *next;
    w->next_expiry = 0;
    LIST_FOREACH(c, &w->conns, link) {
        c->revoked = c->has_session && !registry_session_live(w->reg, c->sess_alias, c->sess_hash);
        if (c->has_session && !c->revoked && c->sess_expires &&
            (!w->next_expiry || c->sess_expires < w->next_expiry))
            w->next_expiry = c->sess_expires;
    }
    for (c = LIST_FIRST(&w->conns); c; c = next) {
        next = LIST_NEXT(c, link);
        if (!c->revoked)
            continue;
        c->revoked = 0;
        c->has_session = 0;
        if (c->st == CS_EXCHANGE || c->st == CS_UPGRADED) {
            log_info("conn=%llu alias=%s closed: its route or session ended",
                     (unsigned long long)c->id, c->sess_alias);
            conn_free(c);
        } else {
            conn_be_drop(c); /* idle: the next request is checked anyway */
        }
    }
}

void conn_drain(struct worker *w)
{
    struct conn *c, *next;
    for (c = LIST_FIRST(&w->conns); c; c = next) {
        next = LIST_NEXT(c, link);
        switch (c->st) {
        case CS_EXCHANGE:
            c->client_close = 1; /* answered, then closed (Connection: close if not sent yet) */
            break;
        case CS_CLOSING:
        case CS_LINGER:
            break;
        default: /* handshake, idle keep-alive, WebSocket: nothing worth waiting for */
            conn_free(c);
            break;
        }
    }
}

void conn_close_all(struct worker *w)
{
    while (!LIST_EMPTY(&w->conns))
        conn_free(LIST_FIRST(&w->conns));
}
