/*
 * sockread — reading a plain socket faster than libevent 2.1's socket
 * bufferevent does. That bufferevent reads at most 4 KiB per wakeup
 * (evbuffer_read caps FIONREAD at 4096): an ioctl, a readv, an epoll_ctl
 * and an epoll_wait for every 4 KiB of a bulk transfer. Called from the
 * bufferevent's read callback, sockread_ahead reads what else the socket
 * holds at that moment, so that a transfer costs one wakeup per budget.
 *
 * Used for every plain socket that carries bodies: the gateway's backend
 * connections (an in-memory pair to a tunnel stream has no socket: a
 * no-op), the agent's app sockets. Owns
 * nothing; runs on the thread that owns the bufferevent.
 */
#ifndef JG_SOCKREAD_H
#define JG_SOCKREAD_H

#include <stddef.h>

#include <event2/bufferevent.h>

/*
 * Reads from bev's socket into bev's input until the input holds budget
 * bytes or the socket has nothing more for now. bev must be a socket
 * bufferevent (not TLS) with reading enabled, else nothing happens. Returns
 * 0, 1 at the end of the stream (nothing consumed: the bufferevent reports
 * it on its next read), or -errno when the socket failed (the error is
 * consumed: the bufferevent will see only an EOF, so the caller keeps it).
 */
int sockread_ahead(struct bufferevent *bev, size_t budget);

#endif
