/* tunnel_proto — see tunnel_proto.h. */
#include "tunnel_proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static ssize_t data_length(nghttp2_session *h2, uint8_t type, int32_t sid, int32_t conn_window,
                           int32_t stream_window, uint32_t remote_max, void *user_data)
{
    (void)h2, (void)type, (void)sid, (void)user_data;
    int64_t n = remote_max;
    if (n > conn_window)
        n = conn_window;
    if (n > stream_window)
        n = stream_window;
    if (n > TUNNEL_FRAME_MAX)
        n = TUNNEL_FRAME_MAX;
    return n < 1 ? 1 : (ssize_t)n;
}

int tunnel_session_new(nghttp2_session **out, enum tunnel_role role,
                       const struct tunnel_session_cbs *cbs, void *user_data)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;

    *out = NULL;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return -ENOMEM;
    if (cbs->begin_headers)
        nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cbs->begin_headers);
    if (cbs->header)
        nghttp2_session_callbacks_set_on_header_callback(cb, cbs->header);
    if (cbs->frame_recv)
        nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cbs->frame_recv);
    if (cbs->data_chunk)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cbs->data_chunk);
    if (cbs->frame_send)
        nghttp2_session_callbacks_set_on_frame_send_callback(cb, cbs->frame_send);
    if (cbs->stream_close)
        nghttp2_session_callbacks_set_on_stream_close_callback(cb, cbs->stream_close);
    /* DATA frames as large as the peer takes (TUNNEL_FRAME_MAX between two
     * jobgate ends): a GiB costs 16,384 frames instead of 65,536. */
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, data_length);
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return -ENOMEM;
    }
    /* Backpressure end to end: the stream window opens only as the far side
     * drains (tunnel_bridge_drained), never because nghttp2 read a frame. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, TUNNEL_HEADER_LIST_MAX);
    int rv = role == TUNNEL_ROLE_AGENT ? nghttp2_session_server_new2(out, cb, user_data, opt)
                                       : nghttp2_session_client_new2(out, cb, user_data, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0) {
        *out = NULL;
        return -ENOMEM;
    }

    static const nghttp2_settings_entry agent_iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, TUNNEL_AGENT_MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, TUNNEL_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, TUNNEL_HEADER_LIST_MAX},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, TUNNEL_FRAME_MAX},
    };
    /* The agent opens no stream and pushes nothing. */
    static const nghttp2_settings_entry gateway_iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, TUNNEL_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, TUNNEL_HEADER_LIST_MAX},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, TUNNEL_FRAME_MAX},
    };
    int agent = role == TUNNEL_ROLE_AGENT;
    if (nghttp2_submit_settings(*out, NGHTTP2_FLAG_NONE, agent ? agent_iv : gateway_iv,
                                agent ? JG_ARRAY_LEN(agent_iv) : JG_ARRAY_LEN(gateway_iv)) != 0 ||
        nghttp2_session_set_local_window_size(*out, NGHTTP2_FLAG_NONE, 0,
                                              TUNNEL_CONN_WINDOW) != 0) {
        nghttp2_session_del(*out);
        *out = NULL;
        return -ENOMEM;
    }
    return 0;
}

int tunnel_msg_encode(json_t *msg, char **line, size_t *len)
{
    *line = NULL;
    *len = 0;
    if (!msg)
        return -ENOMEM;
    /* Compact output escapes every newline inside strings: one line. */
    char *s = json_dumps(msg, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(msg);
    if (!s)
        return -ENOMEM;
    size_t n = strlen(s);
    int rc = -EMSGSIZE;
    if (n + 1 <= TUNNEL_CTL_LINE_MAX) {
        /* A copy rather than realloc: the hello holds a secret, and realloc
         * could leave it behind in freed memory. */
        *line = xmalloc(n + 2);
        memcpy(*line, s, n);
        (*line)[n] = '\n';
        (*line)[n + 1] = '\0';
        *len = n + 1;
        rc = 0;
    }
    explicit_bzero(s, n);
    free(s);
    return rc;
}

int tunnel_msg_decode(const char *line, size_t len, json_t **out, char *err, size_t errlen)
{
    json_error_t je;
    json_t *m = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    *out = NULL;
    if (!m)
        return errmsg(err, errlen, -EPROTO, "%s", je.text);
    if (!json_is_object(m)) {
        json_decref(m);
        return errmsg(err, errlen, -EPROTO, "not an object");
    }
    *out = m;
    return 0;
}

int tunnel_lines_next(struct tunnel_lines *l, const uint8_t **data, size_t *len,
                      const char **line, size_t *linelen)
{
    const uint8_t *nl = memchr(*data, '\n', *len);
    size_t take = nl ? (size_t)(nl - *data) : *len;

    if (l->len + take + 1 > TUNNEL_CTL_LINE_MAX)
        return -EMSGSIZE;
    if (nl && l->len == 0) {
        /* The whole line is in this chunk: no copy. */
        *line = (const char *)*data;
        *linelen = take;
    } else {
        if (l->len + take > l->cap) {
            size_t cap = l->cap ? l->cap : 1024;
            while (cap < l->len + take)
                cap *= 2;
            if (cap > TUNNEL_CTL_LINE_MAX)
                cap = TUNNEL_CTL_LINE_MAX;
            l->buf = xrealloc(l->buf, cap);
            l->cap = cap;
        }
        if (take > 0)
            memcpy(l->buf + l->len, *data, take);
        l->len += take;
        if (nl) {
            *line = l->buf;
            *linelen = l->len;
            l->len = 0;
        }
    }
    size_t used = take + (nl ? 1 : 0);
    *data += used;
    *len -= used;
    return nl ? 1 : 0;
}

void tunnel_lines_free(struct tunnel_lines *l)
{
    free(l->buf);
    l->buf = NULL;
    l->len = l->cap = 0;
}
