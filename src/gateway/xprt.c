/* xprt — see xprt.h. */
#include "xprt.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/bufferevent_ssl.h>

#include "sockread.h"

/* A TLS bufferevent that owns neither ssl nor fd (no BEV_OPT_CLOSE_ON_FREE):
 * libevent would free and close them only in a finalizer on a later loop
 * turn, and a connection that moves to another worker must keep both.
 * xprt_free and xprt_tls_release say what becomes of them. */
static struct bufferevent *tls_bev(struct event_base *base, SSL *ssl, evutil_socket_t fd,
                                   enum bufferevent_ssl_state state)
{
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, fd, ssl, state, 0);
    if (!bev) {
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    /* OpenSSL 3 calls a TCP close without close_notify an error; browsers do it all the time. */
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

struct bufferevent *xprt_tls_accept(struct event_base *base, evutil_socket_t fd, SSL_CTX *ctx)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl) {
        close(fd);
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return tls_bev(base, ssl, fd, BUFFEREVENT_SSL_ACCEPTING);
}

struct bufferevent *xprt_tls_resume(struct event_base *base, SSL *ssl, evutil_socket_t fd)
{
    return tls_bev(base, ssl, fd, BUFFEREVENT_SSL_OPEN);
}

void xprt_tls_release(struct bufferevent *bev, SSL **ssl, evutil_socket_t *fd)
{
    *ssl = bufferevent_openssl_get_ssl(bev);
    *fd = bufferevent_getfd(bev);
    bufferevent_free(bev); /* without BEV_OPT_CLOSE_ON_FREE: both stay ours */
}

struct bufferevent *xprt_socket(struct event_base *base, evutil_socket_t fd)
{
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev)
        close(fd);
    return bev;
}

struct bufferevent *xprt_connect(struct event_base *base, const struct sockaddr_storage *ss,
                                 socklen_t sl, int nodelay)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    struct bufferevent *bev = xprt_socket(base, fd);
    if (!bev) {
        errno = ENOMEM;
        return NULL;
    }
    if (bufferevent_socket_connect(bev, (const struct sockaddr *)ss, (int)sl) < 0) {
        int e = errno ? errno : ECONNREFUSED;
        bufferevent_free(bev);
        errno = e;
        return NULL;
    }
    return bev;
}

int xprt_alpn_is(struct bufferevent *bev, const char *proto)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    const unsigned char *p;
    unsigned len;
    if (!ssl)
        return 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    return len == strlen(proto) && memcmp(p, proto, len) == 0;
}

const char *xprt_version(struct bufferevent *bev)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    return ssl ? SSL_get_version(ssl) : "plain";
}

int xprt_pair(struct event_base *base, struct bufferevent *ends[2])
{
    return bufferevent_pair_new(base, 0, ends);
}

void xprt_close_write(struct bufferevent *bev)
{
    if (bufferevent_pair_get_partner(bev)) {
        (void)bufferevent_flush(bev, EV_WRITE, BEV_FINISHED);
        return;
    }
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (ssl)
        SSL_shutdown(ssl);
    shutdown(bufferevent_getfd(bev), SHUT_WR);
}

void xprt_free(struct bufferevent *bev)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    if (ssl) {
        /* Ours (tls_bev). Closing now is safe with the epoll changelist: an
         * add for a reused descriptor number replaces the pending delete. */
        evutil_socket_t fd = bufferevent_getfd(bev);
        bufferevent_free(bev);
        SSL_free(ssl);
        if (fd >= 0)
            close(fd);
        return;
    }
    struct bufferevent *peer = bufferevent_pair_get_partner(bev);
    if (peer) {
        /* As a socket's close: bytes left unread either way reset the
         * connection; otherwise the peer reads our last bytes, then EOF (and
         * xprt_peer_closed tells it that writing more would fail). */
        if (evbuffer_get_length(bufferevent_get_input(bev)) > 0 ||
            evbuffer_get_length(bufferevent_get_output(peer)) > 0)
            bufferevent_trigger_event(peer, BEV_EVENT_ERROR | BEV_EVENT_READING, 0);
        else
            (void)bufferevent_flush(bev, EV_WRITE, BEV_FINISHED);
    }
    bufferevent_free(bev);
}

int xprt_peer_closed(struct bufferevent *bev)
{
    /* Only pair ends have no socket; one without a partner lost it to xprt_free. */
    return bufferevent_getfd(bev) < 0 && !bufferevent_openssl_get_ssl(bev) &&
           !bufferevent_pair_get_partner(bev);
}

int xprt_read_ahead(struct bufferevent *bev, size_t budget)
{
    if (bufferevent_openssl_get_ssl(bev) || bufferevent_getfd(bev) < 0)
        return 0; /* OpenSSL reads its records itself; a pair has no socket */
    return sockread_ahead(bev, budget);
}

void xprt_send(struct bufferevent *bev, int connected, const void *p, size_t n)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    size_t done = 0;
    if (connected && !bufferevent_openssl_get_ssl(bev) && bufferevent_getfd(bev) >= 0 &&
        evbuffer_get_length(out) == 0) {
        ssize_t w = send(bufferevent_getfd(bev), p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            done = (size_t)w;
    }
    if (done < n)
        evbuffer_add(out, (const char *)p + done, n - done);
}
