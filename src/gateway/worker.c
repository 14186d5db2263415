/* worker — see worker.h. */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>
#include <event2/listener.h>

#include "config.h"
#include "conn.h"
#include "log.h"
#include "ratelimit.h"
#include "registry.h"
#include "tunnel.h"
#include "util.h"

static void resume_if_room(struct worker *w)
{
    if (w->listener && w->listener_paused && !*w->stopping &&
        atomic_load(w->clients) < w->max_clients) {
        evconnlistener_enable(w->listener);
        w->listener_paused = 0;
    }
}

static void conn_gone(struct worker *w)
{
    if (*w->stopping && w->draining && w->nconns == 0 && LIST_EMPTY(&w->tunnels)) {
        event_base_loopexit(w->base, NULL); /* drained */
        return;
    }
    resume_if_room(w);
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct worker *w = arg;
    unsigned all = atomic_load(w->clients);
    if (all >= w->max_clients) {
        /* Another worker took the last place since this one last looked. */
        close(fd);
    } else {
        conn_accept(w, fd, sa, salen);
        all = atomic_load(w->clients);
    }
    if (all >= w->max_clients && !w->listener_paused) {
        log_warn("worker %u: %u client connections open in the gateway ([gateway] "
                 "max_connections): not accepting more until some close", w->idx, all);
        evconnlistener_disable(lis);
        w->listener_paused = 1;
    }
}

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    resume_if_room(arg);
}

static void on_accept_error(struct evconnlistener *lis, void *arg)
{
    struct worker *w = arg;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval sec = {1, 0};
    /* Out of descriptors (or another accept error): a level-triggered listener
     * would spin; pause a second (this worker may have no connection whose
     * closing could resume it). */
    log_warn("worker %u: accept: %s; pausing for a second", w->idx,
             evutil_socket_error_to_string(err));
    evconnlistener_disable(lis);
    w->listener_paused = 1;
    event_base_once(w->base, -1, EV_TIMEOUT, resume_accepting, w, &sec);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    unsigned r = registry_revocations(w->reg);
    if (r != w->seen_revocation || (w->next_expiry && now_real() >= w->next_expiry)) {
        w->seen_revocation = r;
        conn_revoke_sweep(w); /* a session that expired closes its WebSockets too */
    }
    ratelimit_sweep(w->redeem_fails, now_mono_ms());
    resume_if_room(w); /* the gateway's count falls as any worker's connections close */
    log_flush();
}

static int listen_on(struct worker *w, unsigned nworkers, char *err, size_t errlen)
{
    const struct jg_config *cfg = w->cfg;
    char host[256];
    unsigned port;
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    if (config_split_hostport(cfg->listen, host, sizeof(host), &port) < 0)
        return errmsg(err, errlen, -EINVAL, "bad listen address '%s'", cfg->listen);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        sl = sizeof(*s4);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        sl = sizeof(*s6);
    } else {
        return errmsg(err, errlen, -EINVAL, "listen address '%s' is not a numeric IP address",
                      host);
    }
    /* Every worker binds the same address; the kernel spreads connections.
     * SO_REUSEPORT would also let a second jobgated of the same user share
     * the port in silence: the first worker tries the address without it
     * first, which another process's listener refuses. */
    if (w->idx == 0 && nworkers > 1) {
        int probe = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        if (probe >= 0)
            (void)setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (probe >= 0 && bind(probe, (struct sockaddr *)&ss, sl) < 0 && errno == EADDRINUSE) {
            close(probe);
            return errmsg(err, errlen, -EADDRINUSE, "cannot listen on %s: another process "
                          "listens there (another jobgated?)", cfg->listen);
        }
        if (probe >= 0)
            close(probe);
    }
    unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
    if (nworkers > 1)
        flags |= LEV_OPT_REUSEABLE_PORT;
    w->listener = evconnlistener_new_bind(w->base, on_accept, w, flags, 1024,
                                          (struct sockaddr *)&ss, (int)sl);
    if (!w->listener)
        return errmsg(err, errlen, -EADDRINUSE, "cannot listen on %s: %s", cfg->listen,
                      strerror(errno));
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    return 0;
}

static void take_tls(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    pthread_mutex_lock(&w->moves_mu);
    SSL_CTX *next = w->ssl_next;
    w->ssl_next = NULL;
    pthread_mutex_unlock(&w->moves_mu);
    if (!next)
        return;
    SSL_CTX_free(w->ssl); /* open connections hold references of their own */
    w->ssl = next;
}

void worker_set_tls(struct worker *w, SSL_CTX *ssl)
{
    SSL_CTX_up_ref(ssl);
    pthread_mutex_lock(&w->moves_mu);
    SSL_CTX *old = w->ssl_next;
    w->ssl_next = ssl;
    pthread_mutex_unlock(&w->moves_mu);
    if (old)
        SSL_CTX_free(old);
    event_active(w->ev_tls, EV_READ, 0);
}

int worker_init(struct worker *w, unsigned nworkers, char *err, size_t errlen)
{
    w->conn_gone = conn_gone;
    /* The changelist folds the add/del pairs that bufferevents make within
     * one loop turn into one epoll_ctl, or none. */
    struct event_config *ecfg = event_config_new();
    if (ecfg) {
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        w->base = event_base_new_with_config(ecfg);
        event_config_free(ecfg);
    }
    if (!w->base)
        return errmsg(err, errlen, -ENOMEM, "cannot create an event loop");
    int rc = listen_on(w, nworkers, err, errlen);
    if (rc < 0)
        return rc;
    w->redeem_fails = ratelimit_new(REDEEM_FAILS_MAX, 60 * 1000, REDEEM_SOURCES_MAX);
    w->ev_flush = event_new(w->base, -1, EV_PERSIST, on_flush, w);
    struct timeval sec = {1, 0};
    event_add(w->ev_flush, &sec);
    pthread_mutex_init(&w->moves_mu, NULL);
    w->ev_moves = event_new(w->base, -1, 0, conn_take_moves, w);
    w->ev_tls = event_new(w->base, -1, 0, take_tls, w);
    SSL_CTX_up_ref(w->ssl); /* its own reference, handed back at worker_free */
    if (!w->ev_flush || !w->ev_moves || !w->ev_tls)
        return errmsg(err, errlen, -ENOMEM, "cannot create an event loop");
    return 0;
}

/* On the worker's thread: stop accepting, close idle connections, let
 * exchanges in flight finish, and end the loop when none is left (or after
 * [gateway] drain). */
static void drain(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct timeval limit = {(time_t)w->cfg->drain, 0};
    if (w->listener) { /* closed, not paused: new connections are refused at once */
        evconnlistener_free(w->listener);
        w->listener = NULL;
    }
    w->draining = 1;
    tunnel_goaway_all(w); /* agents hear it (and reconnect to the next gateway) */
    conn_drain(w);
    if (w->nconns == 0 && LIST_EMPTY(&w->tunnels))
        event_base_loopexit(w->base, NULL);
    else
        event_base_loopexit(w->base, &limit);
}

void worker_stop(struct worker *w)
{
    struct timeval now = {0, 0};
    event_base_once(w->base, -1, EV_TIMEOUT, drain, w, &now);
}

void worker_loop(struct worker *w)
{
    event_base_dispatch(w->base);
    tunnel_close_all(w);
    conn_close_all(w);
    log_flush();
}

static void *worker_main(void *arg)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to worker 0 */
    worker_loop(arg);
    return NULL;
}

int worker_start(struct worker *w)
{
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    w->started = rc == 0;
    return rc;
}

void worker_join(struct worker *w)
{
    if (w->started)
        pthread_join(w->thread, NULL);
    w->started = 0;
}

int worker_reinit(struct worker *w)
{
    return event_reinit(w->base) < 0 ? -EIO : 0;
}

void worker_free(struct worker *w)
{
    if (w->base) {
        tunnel_close_all(w);
        conn_close_all(w);
    }
    if (w->ev_flush)
        event_free(w->ev_flush);
    ratelimit_free(w->redeem_fails);
    w->redeem_fails = NULL;
    if (w->ev_tls) {
        event_free(w->ev_tls);
        SSL_CTX_free(w->ssl_next);
        SSL_CTX_free(w->ssl);
        w->ssl = w->ssl_next = NULL;
    }
    if (w->ev_moves) {
        conn_drop_moves(w);
        event_free(w->ev_moves);
        pthread_mutex_destroy(&w->moves_mu);
    }
    if (w->listener)
        evconnlistener_free(w->listener);
    if (w->base)
        event_base_free(w->base);
}
