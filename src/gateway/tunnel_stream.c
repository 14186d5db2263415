/*
 * tunnel_stream — the CONNECT streams of a gateway tunnel: each backend
 * connection of a tunnel route (a socketpair end handed over by
 * tunnel_stream_open on any worker) becomes one HTTP/2 stream to the agent,
 * pumped both ways with end-to-end backpressure. See tunnel-int.h for who
 * may touch what.
 */
#include "tunnel.h"
#include "tunnel-int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "hmap.h"
#include "log.h"
#include "util.h"
#include "worker-t.h"
#include "xprt.h"

void tstream_free(struct tstream *s)
{
    struct tunnel *t = s->t;
    if (s->id > 0 && t->h2)
        nghttp2_session_set_stream_user_data(t->h2, s->id, NULL);
    if (s->bev)
        bufferevent_free(s->bev);
    LIST_REMOVE(s, link);
    t->nstreams--;
    free(s);
}

/* Aborts a stream: RST to the agent, socketpair closed (conn sees the app gone). */
void tstream_abort(struct tstream *s)
{
    if (s->id > 0 && s->t->h2)
        nghttp2_submit_rst_stream(s->t->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
    tstream_free(s);
}

/* DATA from the agent has left our buffer for the socketpair: open the window that much. */
static void s_consume_drained(struct tstream *s)
{
    size_t pending = evbuffer_get_length(bufferevent_get_output(s->bev));
    if (s->unconsumed > pending) {
        if (s->id > 0)
            nghttp2_session_consume_stream(s->t->h2, s->id, s->unconsumed - pending);
        s->unconsumed = pending;
    }
}

void tstream_resume(struct tstream *s)
{
    if (s->deferred && s->open_ok && s->id > 0) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->t->h2, s->id);
    }
}

/* Bytes from conn (the browser's side) to send on the stream. */
static void s_read(struct bufferevent *bev, void *arg)
{
    struct tstream *s = arg;
    struct tunnel *t = s->t;
    t->busy++;
    tstream_resume(s);
    tunnel_flush(t);
    tunnel_leave(t);
}

static void s_write(struct bufferevent *bev, void *arg)
{
    struct tstream *s = arg;
    struct tunnel *t = s->t;
    t->busy++;
    s_consume_drained(s);
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
        if (s->id < 0) {
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
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && s->id > 0) {
        /* conn is done sending (browser closed, or the exchange ended):
         * END_STREAM once the buffered bytes are out. */
        s->eof_in = 1;
        bufferevent_disable(bev, EV_READ);
        s->deferred = 1;
        tstream_resume(s);
        if (!s->open_ok) {
            tstream_abort(s); /* nothing to wait for: the browser left before the agent answered */
        }
    } else {
        tstream_abort(s);
    }
    tunnel_flush(t);
    tunnel_leave(t);
}

static ssize_t s_provide(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    /* Not src->ptr: the stream may have been freed while nghttp2 still held DATA for it. */
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (!s || !s->bev)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t n = evbuffer_get_length(in);
    if (!s->open_ok || (n == 0 && !s->eof_in)) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > len)
        n = len;
    if (n)
        evbuffer_remove(in, buf, n);
    if (s->eof_in && evbuffer_get_length(in) == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* On the tunnel's worker: one posted backend connection becomes a CONNECT stream. */
static void open_stream(struct tunnel *t, struct post *p)
{
    int i = tctl_reg_find(t, p->alias);
    if (t->st != T_READY || t->dead || p->uid != t->uid || i < 0 ||
        strcmp(t->reg[i].local, p->local) != 0 || t->nstreams >= TUN_MAX_STREAMS) {
        log_warn("tunnel=%" PRIx64 " refusing a stream for %s: %s", t->id, p->alias,
                 t->nstreams >= TUN_MAX_STREAMS ? "too many streams" : "not this tunnel's route");
        close(p->fd);
        return;
    }
    struct tstream *s = xcalloc(1, sizeof(*s));
    s->t = t;
    s->bev = xprt_socket(t->w->base, p->fd);
    if (!s->bev) {
        free(s);
        return;
    }
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)p->local, 10, strlen(p->local), NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = s_provide};
    s->id = nghttp2_submit_request(t->h2, NULL, nv, 2, &dp, s);
    if (s->id < 0) {
        log_warn("tunnel=%" PRIx64 " cannot open a stream: %s", t->id, nghttp2_strerror(s->id));
        bufferevent_free(s->bev);
        free(s);
        return;
    }
    LIST_INSERT_HEAD(&t->streams, s, link);
    t->nstreams++;
    bufferevent_setcb(s->bev, s_read, s_write, s_event, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, TUN_STREAM_WINDOW);
    bufferevent_setwatermark(s->bev, EV_WRITE, TUN_STREAM_WINDOW / 4, 0);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
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

struct bufferevent *tunnel_stream_open(struct tunnel_hub *hub, struct event_base *base,
                                       const struct route *r)
{
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
    struct bufferevent *bev = xprt_socket(base, sv[0]);
    if (!bev) { /* sv[0] closed: the tunnel sees EOF on the other end and drops the stream */
        errno = ENOMEM;
        return NULL;
    }
    return bev;
}

/* Streams whose conn closed its end (conn never half-closes: its close is
 * final) while their input sits above the read watermark or waits for the
 * agent's window: no read event will ever report it. Unanswered ones go at
 * once, as in s_event; others once they have stalled for a few ticks. */void tstream_sweep_gone(struct tunnel *t)
{
    struct tstream *s, *next;
    for (s = LIST_FIRST(&t->streams); s; s = next) {
        next = LIST_NEXT(s, link);
        struct pollfd p = {.fd = bufferevent_getfd(s->bev), .events = POLLRDHUP};
        if (poll(&p, 1, 0) <= 0 || !(p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            continue;
        size_t in = evbuffer_get_length(bufferevent_get_input(s->bev));
        if (s->open_ok && s->id > 0 && (s->gone_ticks == 0 || in != s->gone_in)) {
            s->gone_ticks = 1;
            s->gone_in = in;
            continue;
        }
        if (s->open_ok && s->id > 0 && ++s->gone_ticks <= TUN_GONE_TICKS)
            continue;
        log_debug("tunnel=%" PRIx64 " stream=%d its browser connection left; dropped", t->id,
                  s->id);
        tstream_abort(s);
    }
}
