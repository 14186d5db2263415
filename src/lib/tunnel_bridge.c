/* tunnel_bridge — see tunnel_bridge.h. */
#include "tunnel_bridge.h"

#include <errno.h>

#include <event2/event.h>

#include "sockread.h"
#include "tunnel_proto.h"

#define BRIDGE_IO_CHUNK (64 * 1024) /* largest single read or write of the far side */

int tunnel_bridge_pump_out(nghttp2_session *h2, struct evbuffer *out, size_t high)
{
    while (evbuffer_get_length(out) < high) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h2, &data);
        if (n < 0)
            return (int)n;
        if (n == 0)
            return 0;
        if (evbuffer_add(out, data, (size_t)n) < 0)
            return NGHTTP2_ERR_NOMEM;
    }
    return 0;
}

int tunnel_bridge_pump_in(nghttp2_session *h2, struct evbuffer *in, const int *stop)
{
    /* Chunk by chunk, as the buffer holds them: no pullup. */
    while (!*stop) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            return 0;
        ssize_t n = nghttp2_session_mem_recv(h2, v.iov_base, v.iov_len);
        if (n < 0)
            return (int)n;
        evbuffer_drain(in, (size_t)n);
    }
    return 0;
}

void tunnel_bridge_attach(struct tunnel_bridge *b, struct bufferevent *bev)
{
    b->bev = bev;
    /* No read high-water mark: libevent 2.1.12 re-runs the read callback
     * (deferred) for as long as the input stays at that mark with reading
     * enabled, which is the whole time a stream waits for its window: 24
     * million empty callbacks per GiB. The bridge pauses reading itself. */
    bufferevent_setwatermark(bev, EV_READ, 0, 0);
    bufferevent_setwatermark(bev, EV_WRITE, TUNNEL_STREAM_WINDOW / 4, 0);
    (void)bufferevent_set_max_single_read(bev, BRIDGE_IO_CHUNK);
    (void)bufferevent_set_max_single_write(bev, BRIDGE_IO_CHUNK);
}

nghttp2_data_provider tunnel_bridge_provider(struct tunnel_bridge *b)
{
    nghttp2_data_provider dp = {.source = {.ptr = b}, .read_callback = tunnel_bridge_read_cb};
    return dp;
}

ssize_t tunnel_bridge_read_cb(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t len,
                              uint32_t *flags, nghttp2_data_source *src, void *user_data)
{
    (void)src;
    (void)user_data;
    /* Not src->ptr: nghttp2 may ask for a stream whose owner is gone. */
    struct tunnel_bridge *b = nghttp2_session_get_stream_user_data(h2, sid);
    if (!b || !b->bev)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    struct evbuffer *in = bufferevent_get_input(b->bev);
    size_t n = evbuffer_get_length(in);
    if (!b->ready || (n == 0 && !b->far_eof)) {
        b->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > len)
        n = len;
    if (n > 0 && evbuffer_remove(in, buf, n) != (int)n)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (b->paused && evbuffer_get_length(in) < TUNNEL_STREAM_WINDOW) {
        b->paused = 0;
        (void)bufferevent_enable(b->bev, EV_READ);
    }
    if (b->far_eof && evbuffer_get_length(in) == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

void tunnel_bridge_resume(struct tunnel_bridge *b)
{
    if (b->deferred && b->ready && b->sid > 0) {
        b->deferred = 0;
        (void)nghttp2_session_resume_data(b->h2, b->sid);
    }
}

void tunnel_bridge_read(struct tunnel_bridge *b)
{
    int r = b->bev ? sockread_ahead(b->bev, TUNNEL_STREAM_WINDOW) : 0;
    if (r < 0)
        b->far_err = -r;
    if (b->bev && evbuffer_get_length(bufferevent_get_input(b->bev)) >= TUNNEL_STREAM_WINDOW &&
        (bufferevent_get_enabled(b->bev) & EV_READ)) {
        b->paused = 1; /* a window ahead: the data provider resumes reading */
        (void)bufferevent_disable(b->bev, EV_READ);
    }
    tunnel_bridge_resume(b);
}

int tunnel_bridge_data(struct tunnel_bridge *b, const uint8_t *data, size_t len)
{
    (void)nghttp2_session_consume_connection(b->h2, len);
    if (b->bev && bufferevent_write(b->bev, data, len) == 0) {
        b->unconsumed += len;
        return 0;
    }
    if (b->sid > 0)
        (void)nghttp2_session_consume_stream(b->h2, b->sid, len);
    return -ENOMEM;
}

void tunnel_bridge_drained(struct tunnel_bridge *b)
{
    size_t pending = b->bev ? evbuffer_get_length(bufferevent_get_output(b->bev)) : 0;
    if (b->unconsumed > pending) {
        if (b->sid > 0)
            (void)nghttp2_session_consume_stream(b->h2, b->sid, b->unconsumed - pending);
        b->unconsumed = pending;
    }
}
