/*
 * conn — the request pipeline of one browser connection:
 *
 *   TLS handshake -> request head -> admission (registry_admit: app,
 *   session, state) ->
 *   backend connect (or reuse) -> head and body forwarded -> response head
 *   and body forwarded -> keep-alive (next head) | upgrade (byte pump) | close
 *
 * Owns the browser bufferevent (TLS), the backend bufferevent (to the app,
 * kept across requests to the same app) and one timer. A connection lives
 * on the worker that accepted it and is touched only on its thread; it
 * takes no lock (what it needs from shared state comes from registry_*
 * calls, which lock inside, as copies). One exception: a request for a
 * tunnel route whose tunnel lives on another worker moves the connection
 * there (its TLS state, socket and unread bytes, through that worker's
 * moves queue under its moves_mu), so that the link to the stream stays in
 * memory; the head is handled again there.
 *
 * Invariants:
 *  - one exchange at a time; pipelined requests wait in the input buffer;
 *  - bodies are never held whole: bytes move between buffers as chains
 *    (evbuffer_remove_buffer, no copy) and a side stops reading while the
 *    other side's output holds more than CONN_HIGH_WATER bytes;
 *  - every phase has a deadline: handshake, request head, keep-alive idle,
 *    backend connect, no progress while in flight, no traffic on a tunnel;
 *  - a request the gateway cannot frame with certainty is answered and the
 *    connection is closed (never resynchronised).
 */
#ifndef JG_CONN_H
#define JG_CONN_H

#include <event2/util.h>
#include <sys/socket.h>

struct worker;

#define CONN_HIGH_WATER (256 * 1024)
#define CONN_LOW_WATER (64 * 1024)

/* Takes ownership of a socket accepted by worker w; the connection lives on w's loop. */
void conn_accept(struct worker *w, evutil_socket_t fd, const struct sockaddr *sa, int salen);

/* Closes w's connections whose route or session has ended since they were
 * checked (on w's thread, after gateway_revoked, and when the earliest of
 * their sessions' ends, w->next_expiry, has come); sets w->next_expiry anew. */
void conn_revoke_sweep(struct worker *w);

/* Gateway stopping: closes w's idle and upgraded connections at once and
 * makes the others close after the exchange in flight (on w's thread). */
void conn_drain(struct worker *w);

/* Closes every browser connection of worker w (shutdown, on w's thread). */
void conn_close_all(struct worker *w);

/* w->ev_moves: takes the browser connections other workers moved to w
 * (a request for a tunnel route whose tunnel lives on w), on w's thread. */
void conn_take_moves(evutil_socket_t fd, short what, void *arg);

/* Frees the moves still queued for w (its loop has ended). */
void conn_drop_moves(struct worker *w);

#endif
