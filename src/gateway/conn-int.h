/*
 * conn-int.h — a browser connection inside (conn.h has the outside): the
 * type and the calls that conn.c (the request pipeline) shares with
 * conn_move.c (the move of a connection to its tunnel's worker).
 *
 * A struct conn belongs to the worker whose loop runs it and is touched
 * only on that worker's thread; the one hand-over between threads is the
 * moves queue of conn_move.c (struct worker's moves, under moves_mu).
 */
#ifndef JG_CONN_INT_H
#define JG_CONN_INT_H

#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

#include <event2/bufferevent.h>

#include "body.h"
#include "http1.h"
#include "route.h"
#include "token.h"

struct node_job;
struct worker;

enum cstate {
    CS_HANDSHAKE, /* TLS handshake in progress */
    CS_HEAD,      /* waiting for a request head */
    CS_WAIT,      /* a head for a tunnel route whose agent reconnects: checked again shortly */
    CS_EXCHANGE,  /* a request is being forwarded and/or its response streamed */
    CS_UPGRADED,  /* after 101: bytes both ways */
    CS_CLOSING,   /* flushing the last response */
    CS_LINGER,    /* write side shut; discarding input until EOF or timeout */
    CS_MOVING,    /* handed to its tunnel's worker on the next loop turn (conn_move) */
};

enum timer_kind {
    TK_HANDSHAKE, TK_HEAD, TK_IDLE, TK_CONNECT, TK_IO, TK_TUNNEL, TK_CLOSE, TK_WAIT,
    TK_MOVE, /* fired at once: the move happens outside the head loop */
};

struct conn {
    struct worker *w;
    LIST_ENTRY(conn) link;   /* w->conns */
    uint64_t id;
    enum cstate st;
    struct bufferevent *cli;
    struct bufferevent *be;
    char be_alias[ROUTE_ALIAS_MAX + 1]; /* the route the backend connection belongs to */
    struct route be_route; /* its copy, to prove the peer on connect */
    int be_connected;
    int be_err;         /* a socket error the read-ahead consumed (errno), reported at EOF */
    int be_reused;      /* this request went out on a kept-alive backend connection */
    int be_reusable;    /* the backend may take another request after this exchange */
    struct event *timer;
    enum timer_kind tk;
    int64_t last_active; /* ms, for the no-progress timers */
    char ip[INET6_ADDRSTRLEN];
    size_t scan;         /* head scan cursor (request, then response) */
    int in_head_loop;
    int revoked;         /* marked by the sweep, acted on after the lock */
    int64_t wait_until;  /* CS_WAIT: when the agent's reconnect wait ends (ms), 0 if not waiting */
    int held;            /* counted among held_alias's held requests (registry_hold) */
    int quiet;           /* its access line goes through the worker's quiet_log (a failed
                          * redeem: conn_local.c) */
    uid_t held_uid;      /* ... and among its owner's ([quota] held) */
    char held_alias[ROUTE_ALIAS_MAX + 1];
    int via_cb;          /* this exchange dials a sleeping agent's callback endpoint */
    int cb_failed;       /* ... which failed: the request waits for the poll instead */
    struct evbuffer *cb_head; /* via_cb: the request's head as received, to handle it again */
    struct worker *move_to; /* CS_MOVING: the tunnel's worker */
    int move_wait;          /* a head for a tunnel elsewhere waits for our answers to go out */
    int body_wait;          /* a node request's head waits for the rest of its body */
    const struct http1_limits *read_lim; /* the limits its read watermark was set for */
    struct node_job *node_job; /* a node request checked off the loop (conn_local.c) */

    /* the session that let the current exchange (or tunnel) through */
    int has_session;
    char sess_alias[ROUTE_ALIAS_MAX + 1];
    uint8_t sess_hash[TOKEN_HASH_LEN];
    int64_t sess_expires;         /* wall clock: that session ends by itself then */

    /* the exchange in flight */
    char alias[ROUTE_ALIAS_MAX + 1];
    uid_t uid;
    int head_req, upgrade_req, client_close;
    enum http1_body req_body;
    uint64_t req_left;
    struct http1_chunked req_ch;
    int req_done;
    int resp_started;
    enum http1_body resp_body;
    uint64_t resp_left;
    struct http1_chunked resp_ch;
    int resp_done;
    int retried;
    struct evbuffer *reqhead; /* the forwarded head, kept to retry on a fresh backend connection */

    /* for the access log */
    char method[16];
    char path[160];
    int status;
    uint64_t bytes_out;
    int64_t t_start;
};

/* conn.c */
struct conn *conn_new(struct worker *w);
/* c->cli is set: the connection joins its worker's loop in state st. */
void conn_start(struct conn *c, enum cstate st, enum timer_kind tk);
void conn_free(struct conn *c);
void conn_timer_set(struct conn *c, enum timer_kind k);
void conn_be_drop(struct conn *c);
/* Answers from the gateway itself (error page etc.) while in CS_HEAD or
 * before the response started. must_close: the connection ends after it. */
void conn_local_reply(struct conn *c, int status, const char *detail, int must_close,
                      const char *extra);
/* Reads request heads from the browser while the connection waits for one. */
void conn_on_head(struct conn *c);
/* Sends the parsed request (head_len bytes at the front of the input) to r. */
void conn_forward(struct conn *c, const struct route *r, const struct http1_head *h,
                  size_t head_len);
/* The exchange is over (response complete): log, then keep-alive or close. */
void conn_exchange_done(struct conn *c);
/* CS_WAIT: the head stays in the input and is handled again shortly (TK_WAIT). */
void conn_wait(struct conn *c);

/* conn_local.c: answered by the gateway itself (the request's head is at
 * the front of the input). */
void conn_node_request(struct conn *c, const struct http1_head *h, size_t head_len);
/* The connection no longer waits for its node request's answer (it ends, or
 * answered otherwise): the answer is dropped when it comes. */
void conn_node_forget(struct conn *c);
void conn_reserved_request(struct conn *c, const struct http1_head *h, size_t head_len);

/* conn_asleep.c */
/* A request for r, whose agent sleeps (ADMIT_ASLEEP): callback, or held
 * (CS_WAIT) until the agent's poll, or the waking page. */
void conn_asleep_request(struct conn *c, const struct route *r, struct http1_head *h,
                         size_t head_len, int has_body);
/* A callback dial failed before the app answered: the request is handled
 * again from its head (CS_WAIT) and waits for the poll. 1 if so. */
int conn_callback_failed(struct conn *c, const char *why);
/* The request no longer waits for a sleeping agent (no-op when it did not). */
void conn_unhold(struct conn *c);

/* conn_move.c */
/* In handle_request, for a tunnel route: 1 when the request is taken care
 * of by a move (now, or once our answers went out) or a 503, 0 when it
 * goes on here. */
int conn_start_move(struct conn *c, const struct route *r, size_t head_len, int has_body);
/* The TK_MOVE timer: hands c to its tunnel's worker and frees it here. */
void conn_move(struct conn *c);

#endif
