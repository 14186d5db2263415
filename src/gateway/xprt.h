/*
 * xprt — the byte transport under a connection: how a browser's TLS
 * connection (and its hand-over to another worker), a backend's socket and
 * the in-memory link between a browser connection and its tunnel stream are
 * made, and the few things the request pipeline asks of
 * them beyond reading and writing (the ALPN the handshake chose, closing the
 * write side or the whole connection, sending a small head at once).
 *
 * Above this seam conn, backend and tunnel see only the generic bufferevent
 * interface (input and output buffers, watermarks, enable/disable, events);
 * below it are the kinds of bufferevent and OpenSSL. Changing what carries
 * the bytes (the speed issue's own TLS transport, kTLS, a different event
 * library's buffers) changes this file and leaves the pipeline alone.
 *
 * Owns nothing beyond what it returns (the caller frees the bufferevent).
 * Any worker thread, on its own loop's objects; no lock.
 */
#ifndef JG_XPRT_H
#define JG_XPRT_H

#include <stddef.h>
#include <sys/socket.h>

#include <event2/bufferevent.h>
#include <openssl/ssl.h>

/* A TLS server connection on an accepted socket (the handshake runs; a
 * connected event follows). NULL (fd closed) when out of memory. Free it
 * with xprt_free (which frees the SSL and closes the socket). */
struct bufferevent *xprt_tls_accept(struct event_base *base, evutil_socket_t fd, SSL_CTX *ctx);

/* A TLS connection moving to another worker: frees the bufferevent and hands
 * back its SSL and socket, which the caller owns from here on. Bytes already
 * read (bev's input) are the caller's to take first; bev's output must be
 * empty. */
void xprt_tls_release(struct bufferevent *bev, SSL **ssl, evutil_socket_t *fd);

/* ... and on the new worker's loop: the established connection again. NULL
 * (ssl freed, fd closed) when out of memory. */
struct bufferevent *xprt_tls_resume(struct event_base *base, SSL *ssl, evutil_socket_t fd);

/* A plain connection on a connected (or connecting) socket. NULL (fd closed). */
struct bufferevent *xprt_socket(struct event_base *base, evutil_socket_t fd);

/* Two connected ends in memory on one loop (bufferevent_pair): bytes move
 * between them without a system call. Both ends keep socket semantics here:
 * xprt_close_write gives the other end an EOF after the bytes written,
 * xprt_free an EOF (or an error when bytes are left unread either way, as a
 * socket's close with unread data resets). 0, or -1 when out of memory. */
int xprt_pair(struct event_base *base, struct bufferevent *ends[2]);

/* Starts a non-blocking connect to ss. NULL with errno when it fails at once. */
struct bufferevent *xprt_connect(struct event_base *base, const struct sockaddr_storage *ss,
                                 socklen_t sl, int nodelay);

/* 1 when the TLS handshake chose the ALPN protocol proto. */
int xprt_alpn_is(struct bufferevent *bev, const char *proto);
/* "TLSv1.3", or "plain". */
const char *xprt_version(struct bufferevent *bev);

/* No more bytes from us: TLS close_notify where there is TLS, then FIN
 * (on a pair: the other end's EOF after what we wrote). */
void xprt_close_write(struct bufferevent *bev);

/* Frees a connection made here (TLS: its SSL and socket too); the peer
 * learns as from a socket's close. */
void xprt_free(struct bufferevent *bev);

/* 1 when bev is a pair end whose other end was freed: what is written to it
 * has no reader (a socket would fail the write with EPIPE). */
int xprt_peer_closed(struct bufferevent *bev);

/*
 * From a read callback: reads what else a plain socket holds now, until
 * bev's input holds budget bytes (sockread.h: libevent 2.1 reads 4 KiB per
 * wakeup). TLS connections are left to OpenSSL. 0, 1 at the end of the
 * stream, or -errno when the socket failed (consumed: the bufferevent will
 * report only an EOF, so the caller keeps the error).
 */
int xprt_read_ahead(struct bufferevent *bev, size_t budget);

/*
 * Queues n bytes for sending, writing at once what the socket takes when the
 * connection is plain, connected and has nothing queued: the bufferevent
 * would first wait for writability (an epoll round trip and two epoll_ctl
 * calls per request) to send a small head.
 */
void xprt_send(struct bufferevent *bev, int connected, const void *p, size_t n);

#endif
