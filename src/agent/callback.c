/* callback — see callback.h. */
#include "callback.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "jobcert.h"
#include "util.h"

struct link;

struct callback {
    struct event_base *base;
    struct evconnlistener *lis;
    struct event *stop_ev;
    int stop_fd;                      /* eventfd: the caller's stop */
    struct event *resume_ev;          /* the listener back after an accept() error */
    unsigned handshakes;              /* connections still in their TLS handshake */
    LIST_HEAD(, link) links;          /* open connections (the thread's) */
    SSL_CTX *ctx;
    pthread_t thread;
    int started;                      /* the thread runs */
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned port;
};

/* One gateway connection: the TLS side and the app's side. Each direction
 * ends on its own (half-close): the gateway's EOF is passed on as a shutdown
 * of the app's write side, the app's EOF as TLS close_notify; the link goes
 * when both directions have ended, on an error, or after a timeout. */
struct link {
    struct callback *cb;
    LIST_ENTRY(link) entry;
    struct bufferevent *tls, *app;
    SSL *ssl;                   /* ours, as the socket under tls (no BEV_OPT_CLOSE_ON_FREE) */
    evutil_socket_t fd;
    int handshaking;            /* counted in cb->handshakes */
    int tls_eof, app_eof;       /* a side sent all it will send */
    int app_shut, tls_shut;     /* ... and we passed that on to the other side */
};

static void link_free(struct link *l)
{
    LIST_REMOVE(l, entry);
    if (l->handshaking)
        l->cb->handshakes--;
    if (l->tls)
        bufferevent_free(l->tls);
    SSL_free(l->ssl);
    if (l->fd >= 0)
        close(l->fd);
    if (l->app)
        bufferevent_free(l->app);
    free(l);
}

/* Moves what src read to dst; stops reading src while dst holds too much. */
static void pump(struct bufferevent *src, struct bufferevent *dst)
{
    evbuffer_add_buffer(bufferevent_get_output(dst), bufferevent_get_input(src));
    if (evbuffer_get_length(bufferevent_get_output(dst)) >= CALLBACK_HIGH_WATER)
        bufferevent_disable(src, EV_READ);
}

static size_t out_len(struct bufferevent *bev)
{
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

/* Passes an ended direction on once its bytes are out; frees when both ended. */
static void progress(struct link *l)
{
    if (l->tls_eof && !l->app_shut && out_len(l->app) == 0) {
        shutdown(bufferevent_getfd(l->app), SHUT_WR);
        l->app_shut = 1;
    }
    if (l->app_eof && !l->tls_shut && out_len(l->tls) == 0) {
        (void)SSL_shutdown(l->ssl); /* close_notify: the gateway knows the answer is whole */
        ERR_clear_error();
        l->tls_shut = 1;
        /* and a lingering close: what the gateway still sends is read, not reset */
        struct timeval linger = {CALLBACK_LINGER_S, 0};
        bufferevent_set_timeouts(l->tls, &linger, &linger);
    }
    if (l->tls_eof && l->app_eof && l->app_shut && l->tls_shut)
        link_free(l);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct link *l = arg;
    if (!l->app)
        return;
    if (bev == l->tls && l->tls_shut)
        evbuffer_drain(bufferevent_get_input(bev), evbuffer_get_length(bufferevent_get_input(bev)));
    else if (bev == l->tls)
        pump(l->tls, l->app);
    else
        pump(l->app, l->tls);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    struct link *l = arg;
    struct bufferevent *other = bev == l->tls ? l->app : l->tls;
    if (other && out_len(bev) < CALLBACK_HIGH_WATER / 2)
        bufferevent_enable(other, EV_READ);
    progress(l);
}

static void on_app_event(struct bufferevent *bev, short what, void *arg)
{
    struct link *l = arg;
    if (what & BEV_EVENT_CONNECTED)
        return;
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
        pump(l->app, l->tls);
        l->app_eof = 1;
        progress(l);
        return;
    }
    link_free(l); /* the app refused, failed or idled: the gateway sees the connection end */
}

/* The app's side, once the gateway has shown its certificate. */
static int connect_app(struct link *l)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    if (l->cb->sock[0]) {
        struct sockaddr_un *su = (struct sockaddr_un *)&ss;
        su->sun_family = AF_UNIX;
        memcpy(su->sun_path, l->cb->sock, strlen(l->cb->sock) + 1);
        sl = sizeof(*su);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)l->cb->port);
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof(*s4);
    }
    /* Our own socket: close-on-exec, which libevent's would not be. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    l->app = bufferevent_socket_new(l->cb->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!l->app) {
        close(fd);
        return -1;
    }
    if (bufferevent_socket_connect(l->app, (struct sockaddr *)&ss, (int)sl) < 0)
        return -1;
    struct timeval idle = {CALLBACK_IDLE_S, 0};
    bufferevent_set_timeouts(l->app, &idle, NULL);
    bufferevent_setcb(l->app, on_read, on_write, on_app_event, l);
    bufferevent_enable(l->app, EV_READ | EV_WRITE);
    return 0;
}

static void on_tls_event(struct bufferevent *bev, short what, void *arg)
{
    struct link *l = arg;
    if (what & BEV_EVENT_CONNECTED) {
        X509 *peer = SSL_get1_peer_certificate(l->ssl);
        int ok = peer && SSL_get_verify_result(l->ssl) == X509_V_OK &&
                 jobcert_has_uri(peer, JOBCERT_GATEWAY_URI);
        X509_free(peer);
        l->handshaking = 0;
        l->cb->handshakes--;
        if (!ok || connect_app(l) < 0) {
            link_free(l);
            return;
        }
        struct timeval idle = {CALLBACK_IDLE_S, 0};
        bufferevent_set_timeouts(bev, &idle, NULL);
        if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
            pump(l->tls, l->app);
        return;
    }
    if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR) && l->app && !l->tls_eof) {
        pump(l->tls, l->app);
        l->tls_eof = 1;
        progress(l);
        return;
    }
    link_free(l); /* a failed handshake, a timeout, a reset */
}

/* accept() failed (out of descriptors, say): pause the listener for a second
 * rather than spin on a socket that stays readable. */
static void on_accept_error(struct evconnlistener *lis, void *arg)
{
    struct callback *cb = arg;
    evconnlistener_disable(lis);
    struct timeval one = {1, 0};
    event_add(cb->resume_ev, &one);
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    evconnlistener_enable(((struct callback *)arg)->lis);
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct callback *cb = arg;
    /* Handshakes in flight are bounded: others on the node must not hold the app's
     * endpoint by opening connections and saying nothing. */
    if (cb->handshakes >= CALLBACK_HANDSHAKES_MAX) {
        close(fd);
        return;
    }
    SSL *ssl = SSL_new(cb->ctx);
    struct link *l = ssl ? calloc(1, sizeof(*l)) : NULL;
    if (!l) {
        SSL_free(ssl);
        close(fd);
        return;
    }
    l->cb = cb;
    l->ssl = ssl;
    l->fd = fd;
    LIST_INSERT_HEAD(&cb->links, l, entry);
    l->handshaking = 1;
    cb->handshakes++;
    /* Options 0: the SSL and the socket stay ours (link_free), whatever libevent does. */
    l->tls = bufferevent_openssl_socket_new(cb->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, 0);
    if (!l->tls) {
        link_free(l);
        return;
    }
    struct timeval hs = {CALLBACK_HANDSHAKE_S, 0};
    bufferevent_set_timeouts(l->tls, &hs, &hs);
    bufferevent_setcb(l->tls, on_read, on_write, on_tls_event, l);
    bufferevent_enable(l->tls, EV_READ | EV_WRITE);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct callback *cb = arg;
    while (!LIST_EMPTY(&cb->links))
        link_free(LIST_FIRST(&cb->links));
    event_base_loopbreak(cb->base);
}

static void *cb_main(void *arg)
{
    struct callback *cb = arg;
    event_base_loop(cb->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static SSL_CTX *server_ctx(const char *dir, char *err, size_t errlen)
{
    char crt[4096], key[4096], ca[4096];
    if (xsnprintf(crt, sizeof(crt), "%s/job.crt", dir) < 0 ||
        xsnprintf(key, sizeof(key), "%s/job.key", dir) < 0 ||
        xsnprintf(ca, sizeof(ca), "%s/ca.crt", dir) < 0) {
        errmsg(err, errlen, -ENAMETOOLONG, "JOBGATE_DIR is too long");
        return NULL;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, crt) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1 || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
        unsigned long e = ERR_get_error();
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        ERR_clear_error();
        errmsg(err, errlen, -EINVAL, "--callback needs the job's certificate, key and CA in "
               "%s (a job started with --jobgate): %s", dir, buf);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    return ctx;
}

struct callback *callback_start(const char *jobdir, const char *sock, unsigned port,
                                unsigned listen_port, unsigned *bound, char *err, size_t errlen)
{
    struct callback *cb = xcalloc(1, sizeof(*cb));
    LIST_INIT(&cb->links);
    cb->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sock)
        (void)xsnprintf(cb->sock, sizeof(cb->sock), "%s", sock);
    cb->port = port;
    cb->ctx = server_ctx(jobdir, err, errlen);
    cb->base = cb->ctx ? event_base_new() : NULL;
    if (!cb->base) {
        if (cb->ctx)
            errmsg(err, errlen, -ENOMEM, "cannot make an event loop");
        callback_stop(cb);
        return NULL;
    }
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)listen_port)};
    cb->lis = evconnlistener_new_bind(cb->base, on_accept, cb,
                                      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                          LEV_OPT_CLOSE_ON_EXEC, 128,
                                      (struct sockaddr *)&sin, sizeof(sin));
    cb->stop_ev = cb->stop_fd >= 0 ? event_new(cb->base, cb->stop_fd, EV_READ, on_stop, cb)
                                   : NULL;
    cb->resume_ev = evtimer_new(cb->base, on_resume, cb);
    if (cb->lis)
        evconnlistener_set_error_cb(cb->lis, on_accept_error);
    if (!cb->lis || !cb->stop_ev || !cb->resume_ev || event_add(cb->stop_ev, NULL) < 0) {
        errmsg(err, errlen, -errno, "cannot listen on port %u: %s", listen_port,
               strerror(errno));
        callback_stop(cb);
        return NULL;
    }
    struct sockaddr_in got;
    socklen_t gl = sizeof(got);
    getsockname(evconnlistener_get_fd(cb->lis), (struct sockaddr *)&got, &gl);
    *bound = ntohs(got.sin_port);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&cb->thread, NULL, cb_main, cb);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errmsg(err, errlen, -rc, "cannot start a thread: %s", strerror(rc));
        callback_stop(cb);
        return NULL;
    }
    cb->started = 1;
    return cb;
}

void callback_stop(struct callback *cb)
{
    if (!cb)
        return;
    if (cb->started) {
        uint64_t one = 1;
        (void)!write(cb->stop_fd, &one, sizeof(one));
        pthread_join(cb->thread, NULL);
    }
    if (cb->stop_ev)
        event_free(cb->stop_ev);
    if (cb->resume_ev)
        event_free(cb->resume_ev);
    if (cb->stop_fd >= 0)
        close(cb->stop_fd);
    if (cb->lis)
        evconnlistener_free(cb->lis);
    if (cb->base)
        event_base_free(cb->base);
    SSL_CTX_free(cb->ctx);
    free(cb);
}
