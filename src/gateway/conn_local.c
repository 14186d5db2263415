/*
 * conn_local — requests the gateway answers itself, without an app: the node
 * channel (nodechan.h) and the reserved space /_jobgate/ (reserved.h), where
 * one-time links are redeemed. Failed redeems are counted per source address
 * (an IPv6 one by its /64; the worker's ratelimit.h): past REDEEM_FAILS_MAX
 * within a minute of its first failure, the address gets 429 until that
 * minute is over, and these answers are logged within a rate (conn->quiet).
 * See conn-int.h. The connection's worker thread only; a node request's
 * check runs off it (offload.h).
 */
#include "conn.h"
#include "conn-int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "nodechan.h"
#include "offload.h"
#include "page.h"
#include "ratelimit.h"
#include "reserved.h"
#include "util.h"
#include "worker-t.h"

/* A node request on its way through the offload's threads (nodechan.h). */
struct node_job {
    struct offload_job oj;      /* first: the offload's */
    struct conn *c;             /* the conn's thread's: NULL once it stopped waiting */
    struct nodechan_call *call; /* the pool thread's while it works */
};

static void node_work(struct offload_job *oj)
{
    nodechan_call_run(((struct node_job *)oj)->call);
}

/* The answer, on the connection's loop (or at the end, the conn long gone). */
static void node_done(struct offload_job *oj)
{
    struct node_job *j = (struct node_job *)oj;
    struct conn *c = j->c;
    if (!c) {
        nodechan_call_free(j->call);
        free(j);
        return;
    }
    c->node_job = NULL;
    struct evbuffer *out = bufferevent_get_output(c->cli);
    size_t before = evbuffer_get_length(out);
    c->status = nodechan_call_finish(j->call, out);
    free(j);
    c->bytes_out = evbuffer_get_length(out) - before;
    c->req_done = c->resp_done = 1;
    conn_exchange_done(c);
}

void conn_node_forget(struct conn *c)
{
    if (c->node_job) {
        c->node_job->c = NULL;
        offload_cancel(&c->node_job->oj);
    }
    c->node_job = NULL;
}

/* A node's request (nodechan.h): once its whole body is here, checked and
 * answered off the loop while the connection waits (CS_EXCHANGE, reading
 * nothing, within [timeouts] connect: a 504 after it), then it closes. */
void conn_node_request(struct conn *c, const struct http1_head *h, size_t head_len)
{
    struct evbuffer *in = bufferevent_get_input(c->cli);
    c->alias[0] = '\0';
    if (h->body == HTTP1_BODY_CHUNKED ||
        (h->body == HTTP1_BODY_LENGTH && h->content_length > NODECHAN_BODY_MAX)) {
        evbuffer_drain(in, head_len);
        conn_local_reply(c, 413, "A node request has a Content-Length of at most 16384.", 1, NULL);
        return;
    }
    size_t blen = h->body == HTTP1_BODY_LENGTH ? (size_t)h->content_length : 0;
    if (evbuffer_get_length(in) < head_len + blen) {
        c->body_wait = 1; /* the head is read again when more bytes arrive */
        return;
    }
    /* Copied out: a pullup past the head would move the bytes h points into. */
    char *body = xmalloc(blen + 1);
    struct evbuffer_ptr at;
    evbuffer_ptr_set(in, &at, head_len, EVBUFFER_PTR_SET);
    evbuffer_copyout_from(in, &at, body, blen);
    struct evbuffer *out = bufferevent_get_output(c->cli);
    size_t before = evbuffer_get_length(out);
    struct nodechan_call *call = NULL;
    if (c->w->nodes)
        call = nodechan_call_new(c->w->nodes, h, body, blen, c->ip, out, &c->status);
    else
        page_error(out, c->status = 404, "This gateway has no node channel.", 1, NULL, 0);
    free(body);
    evbuffer_drain(in, head_len + blen);
    c->client_close = 1;
    if (call) {
        struct node_job *j = xcalloc(1, sizeof(*j));
        j->c = c;
        j->call = call;
        j->oj.work = node_work;
        j->oj.done = node_done;
        j->oj.base = c->w->base;
        if (offload_submit(c->w->offload, &j->oj, OFFLOAD_QUEUE_MAX) == 0) {
            c->node_job = j;
            c->st = CS_EXCHANGE;
            bufferevent_disable(c->cli, EV_READ);
            conn_timer_set(c, TK_CONNECT);
            return;
        }
        nodechan_call_free(call);
        free(j);
        page_error(out, c->status = 503, "The gateway is busy: try again shortly.", 1,
                   "Retry-After: 1\r\n", 0);
    }
    c->bytes_out = evbuffer_get_length(out) - before;
    c->req_done = c->resp_done = 1;
    conn_exchange_done(c);
}

/* Whom a failed redeem is counted for: the IPv4 address, or the /64 of an
 * IPv6 one (one host commonly holds a whole /64). */
static void redeem_source(const char *ip, char *out, size_t len)
{
    struct in6_addr a;
    if (!strchr(ip, ':') || inet_pton(AF_INET6, ip, &a) != 1) {
        snprintf(out, len, "%s", ip);
        return;
    }
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
        inet_ntop(AF_INET, &a.s6_addr[12], out, (socklen_t)len);
        return;
    }
    memset(&a.s6_addr[8], 0, 8);
    char net[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, &a, net, sizeof(net));
    snprintf(out, len, "%s/64", net);
}

/* A request under /_jobgate/ (reserved.c answers it). */
void conn_reserved_request(struct conn *c, const struct http1_head *h, size_t head_len)
{
    struct worker *w = c->w;
    struct evbuffer *out = bufferevent_get_output(c->cli);
    size_t before = evbuffer_get_length(out);
    int close = h->body != HTTP1_BODY_NONE || c->client_close;
    int redeem = reserved_is_redeem(&h->target);
    int64_t now = now_mono_ms();
    char source[INET6_ADDRSTRLEN + 4];
    redeem_source(c->ip, source, sizeof(source));
    int64_t wait = redeem ? ratelimit_wait(w->redeem_fails, source, now) : 0;
    if (wait > 0) {
        char extra[48];
        snprintf(extra, sizeof(extra), "Retry-After: %lld\r\n", (long long)(wait + 999) / 1000);
        page_error(out, c->status = 429, NULL, close, extra, 0);
        c->quiet = 1;
    } else {
        c->status = reserved_handle(w->reg, c->alias, h, out, close);
        if (redeem && c->status != 303) {
            ratelimit_fail(w->redeem_fails, source, now);
            c->quiet = 1;
        }
    }
    c->bytes_out = evbuffer_get_length(out) - before;
    evbuffer_drain(bufferevent_get_input(c->cli), head_len);
    c->client_close = close;
    c->req_done = c->resp_done = 1;
    conn_exchange_done(c);
}
