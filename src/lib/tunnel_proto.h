/*
 * tunnel_proto — what both ends of the tunnel (docs/tunnel-protocol.md)
 * must agree on, written once: the ALPN id, the settings and limits, the
 * control stream's framing (one JSON object per line, bounded) and the
 * HTTP/2 session set-up. Each end passes its own role; the agent is the
 * HTTP/2 server, the gateway the client.
 *
 * No event loop and no TLS in here: the caller owns the transport and the
 * nghttp2 session it gets back. Functions are safe on any thread for
 * objects that thread owns; nothing is shared.
 */
#ifndef JG_TUNNEL_PROTO_H
#define JG_TUNNEL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <nghttp2/nghttp2.h>

#define TUNNEL_ALPN "jobgate/1"
#define TUNNEL_VERSION 1
#define TUNNEL_CONTROL_PATH "/jobgate/control"
#define TUNNEL_CONTROL_TYPE "application/x-ndjson"

#define TUNNEL_CTL_LINE_MAX 65536            /* one control message, newline included */
#define TUNNEL_HEADER_LIST_MAX 16384         /* SETTINGS_MAX_HEADER_LIST_SIZE */
#define TUNNEL_STREAM_WINDOW (256 * 1024)    /* SETTINGS_INITIAL_WINDOW_SIZE */
#define TUNNEL_CONN_WINDOW (64 * 1024 * 1024) /* connection receive window */
#define TUNNEL_AGENT_MAX_STREAMS 10000       /* the agent's SETTINGS_MAX_CONCURRENT_STREAMS */
#define TUNNEL_FRAME_MAX (64 * 1024)         /* SETTINGS_MAX_FRAME_SIZE: a quarter window */
#define TUNNEL_TOKEN_MAX 256                 /* bytes of a personal agent token */

enum tunnel_role {
    TUNNEL_ROLE_AGENT,   /* HTTP/2 server: answers the gateway's streams */
    TUNNEL_ROLE_GATEWAY, /* HTTP/2 client: opens the control and data streams */
};

/* The nghttp2 callbacks a tunnel end uses; NULL slots stay unset. */
struct tunnel_session_cbs {
    nghttp2_on_begin_headers_callback begin_headers;
    nghttp2_on_header_callback header;
    nghttp2_on_frame_recv_callback frame_recv;
    nghttp2_on_data_chunk_recv_callback data_chunk;
    nghttp2_on_frame_send_callback frame_send;
    nghttp2_on_stream_close_callback stream_close;
};

/*
 * A session with the tunnel's settings queued: no automatic window updates
 * (the window opens only as the far side drains, see tunnel_bridge.h), the
 * stream window, the header list limit, the connection window. The agent
 * allows TUNNEL_AGENT_MAX_STREAMS streams; the gateway allows none and no
 * push. 0 with *out set, or -ENOMEM.
 */
int tunnel_session_new(nghttp2_session **out, enum tunnel_role role,
                       const struct tunnel_session_cbs *cbs, void *user_data);

/*
 * Encodes one control message as its line, newline included. Takes msg
 * (NULL is an allocation failure). 0 with *line (caller frees; wipe it first
 * when it held a secret) and *len set; -ENOMEM, or -EMSGSIZE when the line
 * would exceed TUNNEL_CTL_LINE_MAX.
 */
int tunnel_msg_encode(json_t *msg, char **line, size_t *len);

/*
 * Decodes one line (without its newline) into a JSON object, refusing
 * duplicate keys. 0 with *out set (caller decrefs), or -EPROTO with why in
 * err ("not an object" or the parser's words).
 */
int tunnel_msg_decode(const char *line, size_t len, json_t **out, char *err, size_t errlen);

/*
 * Splits a control stream into lines without trusting the peer: a line
 * longer than TUNNEL_CTL_LINE_MAX (newline included) is an error, whatever
 * the chunking. The buffer grows only as long lines need it.
 */
struct tunnel_lines {
    char *buf;
    size_t len, cap;
};

/*
 * Takes bytes from *data / *len up to the next newline. Returns 1 with
 * *line / *linelen set to a complete line without its newline (valid until
 * the next call; empty lines are returned too), 0 when all input was taken
 * without completing a line, or -EMSGSIZE when the line is too long (the
 * stream cannot be trusted after that).
 */
int tunnel_lines_next(struct tunnel_lines *l, const uint8_t **data, size_t *len,
                      const char **line, size_t *linelen);

void tunnel_lines_free(struct tunnel_lines *l);

#endif
