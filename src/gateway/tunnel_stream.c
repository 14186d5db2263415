/*
 * tunnel_stream — the CONNECT streams of a gateway tunnel: each backend
 * connection of a tunnel route (an in-memory pair end handed over by
 * tunnel_stream_open; conn moves a browser connection to the tunnel's worker
 * first) becomes one HTTP/2 stream to the agent, pumped both ways with
 * end-to-end backpressure. See tunnel-int.h for who may touch what.
 */
#include "tunnel.h"
#include "tunnel-int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "hmap.h"
#include "config.h"
#include "log.h"
#include "page.h"
#include "util.h"
#include "worker-t.h"
#include "xprt.h"

void tstream_free(struct tstream *s)
{
    struct tunnel *t = s->t;
    if (s->br.sid > 0 && t->h2)
        nghttp2_session_set_stream_user_data(t->h2, s->br.sid, NULL);
    if (s->br.bev)
        xprt_free(s->br.bev);
    LIST_REMOVE(s, link);
    t->nstreams--;
    free(s);
}

/* Aborts a stream: RST to the agent, our end closed (conn sees the app gone). */
void tstream_abort(struct tstream *s)
{
    if (s->br.sid > 0 && s->t->h2)
        nghttp2_submit_rst_stream(s->t->h2, NGHTTP2_FLAG_NONE, s->br.sid, NGHTTP2_CANCEL);
    tstream_free(s);
}

/* Bytes from conn (the browser's side) to send on the stream. */
static void s_read(struct bufferevent *bev, void *arg)
{
    struct tstream *s = arg;
    struct tunnel *t = s->t;
    t->busy++;
    tunnel_bridge_read(&s->br);
    tunnel_flush(t);
    tunnel_leave(t);
}

static void s_write(struct bufferevent *bev, void *arg)
{
    struct tstream *s = arg;
    struct tunnel *t = s->t;
    t->busy++;
    tunnel_bridge_drained(&s->br);
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        if (s->br.sid < 0) {
            tstream_free(s); /* the stream is over and everything reached conn */
        } else if (s->remote_eof) {
            xprt_close_write(bev);
        }
    }
    tunnel_flush(t);
    tunnel_leave(t);
}

static void s_event(struct bufferevent *bev, short what, void *arg)
{
    struct tstream *s = arg;
    struct tunnel *t = s->t;
    t->busy++;
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && !s->br.far_err && s->br.sid > 0) {
        /* conn is done sending (browser closed, or the exchange ended):
         * END_STREAM once the buffered bytes are out. */
        s->br.far_eof = 1;
        bufferevent_disable(bev, EV_READ);
        s->br.deferred = 1;
        tunnel_bridge_resume(&s->br);
        if (!s->br.ready) {
            tstream_abort(s); /* nothing to wait for: the browser left before the agent answered */
        }
    } else {
        tstream_abort(s);
    }
    tunnel_flush(t);
    tunnel_leave(t);
}

/* On the tunnel's worker: one posted backend connection becomes a CONNECT stream. */
/* Instead of the app's answer, for a browser that would otherwise wait
 * without one: conn forwards it like any response. */
static void answer_busy(struct evbuffer *out)
{
    page_error(out, 503, "The app's agent has too many connections waiting; try again in a moment.",
               1, "Retry-After: 5\r\n", 0);
}

static void open_stream(struct tunnel *t, struct post *p)
{
    int i = tctl_reg_find(t, p->alias);
    if (t->st != T_READY || t->dead || p->uid != t->uid || i < 0 ||
        strcmp(t->reg[i].local, p->local) != 0 || t->nstreams >= TUN_MAX_STREAMS) {
        log_warn("tunnel=%" PRIx64 " refusing a stream for %s: %s", t->id, p->alias,
                 t->nstreams >= TUN_MAX_STREAMS ? "too many streams" : "not this tunnel's route");
        if (t->nstreams >= TUN_MAX_STREAMS)
            answer_busy(bufferevent_get_output(p->bev));
        xprt_free(p->bev); /* the page, if any, then EOF */
        return;
    }
    struct tstream *s = xcalloc(1, sizeof(*s));
    s->t = t;
    s->br.bev = p->bev;
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)p->local, 10, strlen(p->local), NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider dp = tunnel_bridge_provider(&s->br);
    s->br.h2 = t->h2;
    s->br.sid = nghttp2_submit_request(t->h2, NULL, nv, 2, &dp, s);
    if (s->br.sid < 0) {
        log_warn("tunnel=%" PRIx64 " cannot open a stream: %s", t->id, nghttp2_strerror(s->br.sid));
        xprt_free(s->br.bev);
        free(s);
        return;
    }
    s->opened = now_mono_ms();
    log_debug("tunnel=%" PRIx64 " stream=%d for %s", t->id, s->br.sid, p->alias);
    LIST_INSERT_HEAD(&t->streams, s, link);
    t->nstreams++;
    bufferevent_setcb(s->br.bev, s_read, s_write, s_event, s);
    tunnel_bridge_attach(&s->br, s->br.bev);
    bufferevent_enable(s->br.bev, EV_READ | EV_WRITE);
}

void tstream_on_post(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    struct tunnel_hub *hub = t->hub;
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
    tunnel_flush(t);
    tunnel_leave(t);
}

struct worker *tunnel_worker(struct tunnel_hub *hub, uint64_t id)
{
    pthread_mutex_lock(&hub->mu);
    struct tunnel *t = id ? hmap_get(hub->byid, &id, sizeof(id)) : NULL;
    struct worker *w = t ? t->w : NULL;
    pthread_mutex_unlock(&hub->mu);
    return w;
}

struct bufferevent *tunnel_stream_open(struct tunnel_hub *hub, struct event_base *base,
                                       const struct route *r)
{
    if (r->kind != ROUTE_TUNNEL || r->tunnel == 0) {
        errno = ECONNREFUSED;
        return NULL;
    }
    struct bufferevent *ends[2] = {NULL, NULL};
    int err = 0;
    pthread_mutex_lock(&hub->mu);
    struct tunnel *t = hmap_get(hub->byid, &r->tunnel, sizeof(r->tunnel));
    if (!t)
        err = ECONNREFUSED;
    else if (t->w->base != base)
        err = EXDEV; /* conn moves to the tunnel's worker first; the tunnel moved since */
    else if (xprt_pair(base, ends) < 0)
        err = ENOMEM;
    if (!err) {
        struct post *p = xcalloc(1, sizeof(*p));
        p->bev = ends[1];
        p->uid = r->uid;
        snprintf(p->alias, sizeof(p->alias), "%s", r->alias);
        snprintf(p->local, sizeof(p->local), "%.*s", TUN_LOCAL_MAX, r->path);
        p->next = t->posted;
        t->posted = p;
        event_active(t->ev_post, EV_READ, 0);
    }
    pthread_mutex_unlock(&hub->mu);
    if (err) {
        errno = err;
        return NULL;
    }
    return ends[0];
}

/* Streams whose conn closed its end (conn never half-closes: its close is
 * final; xprt_peer_closed) while their input waits for the agent's window:
 * no read will ever report it. Unanswered ones go at once, as in s_event;
 * others once they have stalled for a few ticks.
 * Streams the agent has not answered within t_connect (it is slow, or has
 * no room: nghttp2 queues what exceeds its concurrency) get a 503 page. */
void tstream_tick(struct tunnel *t, int64_t now)
{
    struct tstream *s, *next;
    for (s = LIST_FIRST(&t->streams); s; s = next) {
        next = LIST_NEXT(s, link);
        if (!s->br.ready && s->br.sid > 0 && now - s->opened > t->hub->cfg->t_connect * 1000) {
            log_info("tunnel=%" PRIx64 " stream=%d the agent did not answer within %" PRId64
                     " s: 503", t->id, s->br.sid, t->hub->cfg->t_connect);
            nghttp2_submit_rst_stream(t->h2, NGHTTP2_FLAG_NONE, s->br.sid, NGHTTP2_CANCEL);
            nghttp2_session_set_stream_user_data(t->h2, s->br.sid, NULL);
            s->br.sid = -1;
            bufferevent_disable(s->br.bev, EV_READ);
            answer_busy(bufferevent_get_output(s->br.bev));
            bufferevent_setwatermark(s->br.bev, EV_WRITE, 0, 0); /* s_write frees it once flushed */
            continue;
        }
        if (!xprt_peer_closed(s->br.bev))
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
        tstream_abort(s);
    }
}
