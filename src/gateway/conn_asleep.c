/*
 * conn_asleep — requests for an app whose agent sleeps (docs/policy.md):
 * through the job's callback endpoint while that works (a direct route,
 * backend_direct.c), else held for the agent's next poll (counted per app
 * in the registry: registry_hold), then the waking page. See conn-int.h.
 * The connection's worker thread only.
 */
#include "conn.h"
#include "conn-int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "page.h"
#include "registry.h"
#include "reqhead.h"
#include "util.h"
#include "worker-t.h"

/* The request no longer waits for a sleeping agent. */
void conn_unhold(struct conn *c)
{
    if (!c->held)
        return;
    c->held = 0;
    (void)registry_hold(c->w->reg, c->held_alias, c->held_uid, -1, 0);
}

/* A request for an app whose agent sleeps (docs/policy.md): through its
 * callback endpoint while that works, else held (CS_WAIT, looked at again
 * like a reconnecting route's) until the agent's poll brings its tunnel
 * back, at most [tunnel] hold and hold_max per app; then the waking page
 * (a browser) or a plain 503, with Retry-After until the next poll. */
void conn_asleep_request(struct conn *c, const struct route *r, struct http1_head *h,
                         size_t head_len, int has_body)
{
    struct worker *w = c->w;
    struct evbuffer *in = bufferevent_get_input(c->cli);
    if (r->cb_port && !r->cb_down && !c->cb_failed) {
        /* The job's own endpoint, as a direct route (backend_direct.c); the
         * head is kept to wait for the poll if the dial fails. */
        conn_unhold(c);
        struct route d = *r;
        d.kind = ROUTE_DIRECT;
        snprintf(d.path, sizeof(d.path), "%s", r->cb_host);
        d.port = r->cb_port;
        d.v6 = strchr(d.path, ':') != NULL;
        if (!c->cb_head)
            c->cb_head = evbuffer_new();
        evbuffer_drain(c->cb_head, evbuffer_get_length(c->cb_head));
        evbuffer_add(c->cb_head, evbuffer_pullup(in, (ssize_t)head_len), head_len);
        c->via_cb = 1;
        conn_forward(c, &d, h, head_len);
        return;
    }
    int64_t now = now_mono_ms();
    if (c->wait_until == 0 && !c->held) {
        /* Counted per app; over the bound (or hold = 0) it is answered at
         * once, and the agent still hears that it was wanted. */
        unsigned max = w->cfg->hold > 0 ? w->cfg->hold_max : 0;
        int rc = registry_hold(w->reg, c->alias, r->uid, 1, max);
        c->wait_until = now;
        if (rc == 0) {
            c->held = 1;
            c->held_uid = r->uid;
            snprintf(c->held_alias, sizeof(c->held_alias), "%s", c->alias);
            c->wait_until = now + w->cfg->hold * 1000;
        } else if (rc == -ENOENT) {
            c->wait_until = now + 1000; /* its agent came back meanwhile: look again */
        }
    }
    if (now < c->wait_until) {
        conn_wait(c);
        return;
    }
    conn_unhold(c);
    c->wait_until = 0;
    /* Until the next poll (its interval from the sleep on), else a few seconds. */
    unsigned retry = 5;
    if (r->poll) {
        int64_t since = (now - r->detached) / 1000;
        retry = r->poll - (unsigned)(since % r->poll);
    }
    int html = reqhead_wants_html(h);
    evbuffer_drain(in, head_len);
    struct evbuffer *out = bufferevent_get_output(c->cli);
    size_t before = evbuffer_get_length(out);
    int close = has_body || c->client_close;
    page_waking(out, retry, html, close, c->head_req);
    c->status = 503;
    c->bytes_out += evbuffer_get_length(out) - before;
    c->client_close = close;
    c->req_done = c->resp_done = 1;
    conn_exchange_done(c);
}

/* A callback that failed before the app answered: the request is handled
 * again from its head (on the wait timer's next turn) and waits for the
 * agent's poll. 1 if so. */
int conn_callback_failed(struct conn *c, const char *why)
{
    if (!c->via_cb || c->be_connected || c->resp_started || !c->cb_head)
        return 0;
    log_info("conn=%llu alias=%s the callback failed (%s): waiting for the agent's poll",
             (unsigned long long)c->id, c->alias, why);
    registry_callback_down(c->w->reg, c->alias);
    conn_be_drop(c);
    c->via_cb = 0;
    c->cb_failed = 1;
    c->req_done = c->resp_done = 0;
    c->status = 0;
    evbuffer_prepend_buffer(bufferevent_get_input(c->cli), c->cb_head);
    /* Handled again from the wait timer, outside this call chain: the
     * route's callback is down now, so it is held for the poll. */
    conn_wait(c);
    return 1;
}

