/*
 * conn_move — a browser connection moves to the worker of its route's
 * tunnel with its first request for that route, so that the link to the
 * stream stays in memory (xprt_pair) and the tunnel's streams and their
 * browser connections share one thread. Its TLS state, socket and unread
 * bytes go through the target worker's moves queue (struct worker: moves,
 * under moves_mu, and ev_moves); there the head is handled again. See
 * conn-int.h.
 */
#include "conn.h"
#include "conn-int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "log.h"
#include "tunnel.h"
#include "util.h"
#include "worker-t.h"
#include "xprt.h"

/* A browser connection on its way to the worker of its route's tunnel, where
 * the link to the stream stays in memory (xprt_pair): its TLS state and
 * socket, and the bytes read and not yet handled (the request head first). */
struct conn_move {
    struct conn_move *next;
    SSL *ssl;
    evutil_socket_t fd;
    struct evbuffer *in;
    char ip[INET6_ADDRSTRLEN];
    unsigned long long from; /* its id on the first worker, for the log */
};

/* A request for a tunnel route whose tunnel lives on another worker: the
 * connection moves there (on the next loop turn, outside the head loop), so
 * that the link to the stream stays in memory, and the head is handled again
 * there. An answer still going out is finished here first (cli_write calls
 * conn_on_head again); while the gateway stops, the request gets a 503. 1 when the
 * request is taken care of so, 0 when it goes on here. */
int conn_start_move(struct conn *c, const struct route *r, size_t head_len, int has_body)
{
    struct worker *w = c->w;
    if (c->be && c->be_connected && strcmp(c->be_alias, r->alias) == 0)
        return 0; /* kept alive: this is the tunnel's worker already */
    struct worker *to = tunnel_worker(w->hub, r->tunnel);
    if (!to || to == w)
        return 0; /* here, or no tunnel (the connect says so) */
    if (*w->stopping || w->draining) {
        evbuffer_drain(bufferevent_get_input(c->cli), head_len);
        conn_local_reply(c, 503, "The gateway is stopping; try again in a moment.", has_body,
                         "Retry-After: 5\r\n");
        return 1;
    }
    if (evbuffer_get_length(bufferevent_get_output(c->cli)) > 0) {
        c->move_wait = 1;
        c->method[0] = '\0'; /* logged where it is answered */
        bufferevent_disable(c->cli, EV_READ);
        conn_timer_set(c, TK_IO); /* the browser must keep reading meanwhile */
        log_debug("conn=%llu alias=%s waits for its answers to go out before it moves",
                  (unsigned long long)c->id, r->alias);
        return 1;
    }
    c->move_to = to;
    c->st = CS_MOVING;
    c->method[0] = '\0'; /* the tunnel's worker logs the request */
    conn_be_drop(c);
    bufferevent_disable(c->cli, EV_READ | EV_WRITE);
    event_del(c->timer);
    c->tk = TK_MOVE;
    event_active(c->timer, EV_TIMEOUT, 0);
    log_debug("conn=%llu alias=%s moves to worker %u, its tunnel's", (unsigned long long)c->id,
              r->alias, to->idx);
    return 1;
}

void conn_move(struct conn *c)
{
    struct worker *to = c->move_to;
    struct conn_move *m = xcalloc(1, sizeof(*m));
    m->in = evbuffer_new();
    evbuffer_add_buffer(m->in, bufferevent_get_input(c->cli));
    memcpy(m->ip, c->ip, sizeof(m->ip));
    m->from = (unsigned long long)c->id;
    xprt_tls_release(c->cli, &m->ssl, &m->fd);
    c->cli = NULL;
    pthread_mutex_lock(&to->moves_mu);
    m->next = to->moves;
    to->moves = m;
    pthread_mutex_unlock(&to->moves_mu);
    event_active(to->ev_moves, EV_READ, 0);
    conn_free(c);
}

static void move_free(struct conn_move *m)
{
    if (m->ssl)
        SSL_free(m->ssl);
    if (m->fd >= 0)
        close(m->fd);
    evbuffer_free(m->in);
    free(m);
}

/* The moves queued for w, taken under its mutex (newest first). */
static struct conn_move *take_moves(struct worker *w)
{
    pthread_mutex_lock(&w->moves_mu);
    struct conn_move *m = w->moves;
    w->moves = NULL;
    pthread_mutex_unlock(&w->moves_mu);
    return m;
}

void conn_take_moves(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct conn_move *m = take_moves(w);
    while (m) {
        struct conn_move *next = m->next;
        if (*w->stopping || w->draining) {
            move_free(m);
            m = next;
            continue;
        }
        struct conn *c = conn_new(w);
        memcpy(c->ip, m->ip, sizeof(c->ip));
        c->cli = xprt_tls_resume(w->base, m->ssl, m->fd);
        m->ssl = NULL; /* xprt_tls_resume owns them now, or freed them */
        m->fd = -1;
        if (!c->cli) {
            free(c);
            move_free(m);
            m = next;
            continue;
        }
        conn_start(c, CS_HEAD, TK_HEAD);
        evbuffer_add_buffer(bufferevent_get_input(c->cli), m->in);
        log_debug("conn=%llu ip=%s is conn=%llu, moved to its tunnel's worker",
                  (unsigned long long)c->id, c->ip, m->from);
        move_free(m);
        conn_on_head(c);
        m = next;
    }
}

void conn_drop_moves(struct worker *w)
{
    struct conn_move *m = take_moves(w);
    while (m) {
        struct conn_move *next = m->next;
        move_free(m);
        m = next;
    }
}

