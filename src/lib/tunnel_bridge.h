/*
 * tunnel_bridge — where the tunnel's HTTP/2 session (tunnel_proto.h) meets
 * libevent buffers, for both ends: the session's transport pump (frames out
 * under a high-water mark, input fed chunk by chunk without a pullup) and
 * one data stream joined to a bufferevent on its far side (the app's socket
 * in the agent, the link to the browser's connection in the gateway).
 *
 * ONE flow-control rule for both ends: DATA from the peer gives its
 * connection-level window back at once, so a stalled stream never blocks the
 * others, and its stream-level window only as the far side takes the bytes
 * (tunnel_bridge_drained from the bufferevent's write callback). A stream
 * therefore buffers at most its window, and a slow reader slows only its
 * own stream. Toward the peer, the bufferevent's input is read no further
 * than one window ahead: tunnel_bridge_read turns bev's reading off there
 * and the data provider turns it on again (no read high-water mark, see
 * tunnel_bridge_attach).
 *
 * Everything here runs on the thread that owns the session; no locks.
 */
#ifndef JG_TUNNEL_BRIDGE_H
#define JG_TUNNEL_BRIDGE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <nghttp2/nghttp2.h>

/*
 * One data stream and its far side. The owner embeds it as the FIRST member
 * of its stream struct and makes that struct the nghttp2 stream user data,
 * so that tunnel_bridge_read_cb finds the bridge from the stream id alone (a
 * freed stream then reads as absent instead of dangling).
 */
struct tunnel_bridge {
    nghttp2_session *h2;
    int32_t sid;              /* > 0 while the HTTP/2 stream is open */
    struct bufferevent *bev;  /* the far side; NULL once dropped */
    size_t unconsumed;        /* DATA written to bev, not yet given back to the peer */
    int ready;                /* DATA may flow toward the peer (the stream was answered) */
    int deferred;             /* the data provider waits for bytes from bev */
    int far_eof;              /* bev sent its last byte: END_STREAM once buffered bytes are out */
    int far_err;              /* errno of a failure tunnel_bridge_read saw: the EOF that
                               * follows is a reset, not an end */
    int paused;               /* bev's reading is off: a window is buffered (the data
                               * provider turns it on again) */
};

/* Frames the session's output into out while out holds less than high.
 * 0, or a negative nghttp2 error code (nghttp2_strerror names it). */
int tunnel_bridge_pump_out(nghttp2_session *h2, struct evbuffer *out, size_t high);

/* Feeds in to the session chunk by chunk, draining what it took, until in
 * is empty or *stop is set (a callback killed the connection). 0, or a
 * negative nghttp2 error code. */
int tunnel_bridge_pump_in(nghttp2_session *h2, struct evbuffer *in, const int *stop);

/* Joins bev to the stream: bounded reads (one window ahead) and a write
 * callback each time bev's output falls to a quarter window, where the owner
 * calls tunnel_bridge_drained. The owner sets bev's callbacks. */
void tunnel_bridge_attach(struct tunnel_bridge *b, struct bufferevent *bev);

/* The data provider of the stream's DATA toward the peer. */
nghttp2_data_provider tunnel_bridge_provider(struct tunnel_bridge *b);
ssize_t tunnel_bridge_read_cb(nghttp2_session *h2, int32_t sid, uint8_t *buf, size_t len,
                              uint32_t *flags, nghttp2_data_source *src, void *user_data);

/* bev has new input, or reached its end (far_eof set): send on. */
void tunnel_bridge_resume(struct tunnel_bridge *b);

/* bev's read callback: reads what else bev's socket holds, up to one window
 * (sockread.h), then sends on. A socket failure seen here is kept in
 * far_err for the owner's event callback. */
void tunnel_bridge_read(struct tunnel_bridge *b);

/* DATA from the peer for bev (see the rule above). 0, or -ENOMEM when bev
 * cannot take it: the window was given back, and the caller resets the
 * stream. */
int tunnel_bridge_data(struct tunnel_bridge *b, const uint8_t *data, size_t len);

/* bev's output drained: gives the peer's stream window back that much. */
void tunnel_bridge_drained(struct tunnel_bridge *b);

#endif
