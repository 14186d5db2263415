/* tunnel_stream — the HTTP/2 session's streams on the agent side: the
 * nghttp2 callbacks (which stream is the control stream, which CONNECT goes
 * to which registered app, PING answers, GOAWAY) and the data streams that
 * join a CONNECT stream to the app's socket through tunnel_bridge.h.
 *
 * Tunnel thread only. nghttp2 callbacks never free the connection; a data
 * stream lives until nghttp2 closes it, or until what the gateway sent has
 * been written to the app (bounded: LINGER_MS, MAX_LINGER). */
#include "tunnel-int.h"

#include <errno.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "procnet.h"
#include "tunnel_bridge.h"
#include "util.h"

#define LINGER_MS 30000                /* writing what is left to an app after its stream */
#define MAX_LINGER 256
#define APP_CONNECT_TIMEOUT_S 10

static int ds_connect(struct dstream *ds);

void ds_free(struct dstream *ds)
{
    struct tconn *c = ds->c;
    if (ds->prev)
        ds->prev->next = ds->next;
    else
        c->streams = ds->next;
    if (ds->next)
        ds->next->prev = ds->prev;
    c->nstreams--;
    if (ds->lingering)
        c->nlinger--;
    if (ds->br.bev) {
        bufferevent_setcb(ds->br.bev, NULL, NULL, NULL, NULL);
        bufferevent_free(ds->br.bev);
    }
    if (c->ctl == ds)
        c->ctl = NULL;
    free(ds);
    conn_idle_check(c); /* the last app stream: keepalive starts */
}

static void ds_drop_app(struct dstream *ds)
{
    if (!ds->br.bev)
        return;
    bufferevent_setcb(ds->br.bev, NULL, NULL, NULL, NULL);
    bufferevent_free(ds->br.bev);
    ds->br.bev = NULL;
}

static void respond_status(struct dstream *ds, const char *status)
{
    nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status),
                     NGHTTP2_NV_FLAG_NONE};
    ds->kind = DS_REJECTED;
    if (nghttp2_submit_response(ds->c->h2, ds->br.sid, &nv, 1, NULL) != 0)
        (void)nghttp2_submit_rst_stream(ds->c->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                        NGHTTP2_INTERNAL_ERROR);
}

/* After END_STREAM from the gateway, once everything for the app is
 * written: half-close toward the app. */
static void maybe_shut_wr(struct dstream *ds)
{
    if (!ds->peer_eof || !ds->connected || ds->shut_wr || !ds->br.bev)
        return;
    if (evbuffer_get_length(bufferevent_get_output(ds->br.bev)) > 0)
        return;
    (void)shutdown(bufferevent_getfd(ds->br.bev), SHUT_WR);
    ds->shut_wr = 1;
}

static void app_read_cb(struct bufferevent *b, void *arg)
{
    struct dstream *ds = arg;
    struct tconn *c = ds->c;
    if (!ds->br.sid) /* lingering: the stream is over, nothing more goes up */
        evbuffer_drain(bufferevent_get_input(b), evbuffer_get_length(bufferevent_get_input(b)));
    else
        tunnel_bridge_read(&ds->br);
    conn_pump(c);
}

static void app_write_cb(struct bufferevent *b, void *arg)
{
    struct dstream *ds = arg;
    struct tconn *c = ds->c;
    (void)b;
    tunnel_bridge_drained(&ds->br);
    maybe_shut_wr(ds);
    if (ds->lingering && evbuffer_get_length(bufferevent_get_output(ds->br.bev)) == 0)
        ds_free(ds);
    conn_pump(c);
}

static void app_event_cb(struct bufferevent *b, short what, void *arg)
{
    struct dstream *ds = arg;
    struct tconn *c = ds->c;
    (void)b;

    if (what & BEV_EVENT_CONNECTED && ds->port) {
        /* Any user may bind the loopback address the app does not hold (say
         * 127.0.0.1 when it listens on ::1): only the owner's socket gets the
         * stream (I2). */
        long uid = procnet_peer_uid(bufferevent_getfd(ds->br.bev), "/proc");
        if (uid != (long)getuid()) {
            tun_notice(c->t, "refusing port %u on %s: it is answered by uid %ld, not by you",
                       ds->port, ds->tried_v6 ? "::1" : "127.0.0.1", uid);
            what = BEV_EVENT_ERROR; /* then the other address, or 502 */
        }
    }
    if (what & BEV_EVENT_CONNECTED) {
        ds->connected = 1;
        bufferevent_set_timeouts(ds->br.bev, NULL, NULL);
        if (ds->br.sid) {
            nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE};
            nghttp2_data_provider prd = tunnel_bridge_provider(&ds->br);
            ds->br.ready = 1;
            if (nghttp2_submit_response(c->h2, ds->br.sid, &nv, 1, &prd) != 0)
                (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                                NGHTTP2_INTERNAL_ERROR);
        }
        maybe_shut_wr(ds);
    } else if ((what & BEV_EVENT_EOF) && !ds->br.far_err) {
        ds->br.far_eof = 1;
        if (!ds->br.sid)
            ds_free(ds);
        else
            tunnel_bridge_resume(&ds->br);
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT | BEV_EVENT_EOF)) {
        if (!ds->connected && ds->br.sid) {
            ds_drop_app(ds);
            if (ds->port && !ds->tried_v6) {
                ds->tried_v6 = 1;
                if (ds_connect(ds) == 0) {
                    conn_pump(c);
                    return;
                }
            }
            respond_status(ds, "502");
        } else if (ds->br.sid) {
            ds_drop_app(ds);
            (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                            NGHTTP2_CONNECT_ERROR);
        } else {
            ds_free(ds);
        }
    }
    conn_pump(c);
}

/* Starts the connection to the app: its UNIX socket, or its loopback port
 * on 127.0.0.1 (then ::1). 0, or -1 when not even a socket could be made. */
static int ds_connect(struct dstream *ds)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof(ss));
    if (ds->sock[0]) {
        struct sockaddr_un *a = (struct sockaddr_un *)&ss;
        a->sun_family = AF_UNIX;
        memcpy(a->sun_path, ds->sock, strlen(ds->sock) + 1);
        sslen = sizeof(*a);
    } else if (!ds->tried_v6) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a->sin_port = htons((uint16_t)ds->port);
        sslen = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        a->sin6_port = htons((uint16_t)ds->port);
        sslen = sizeof(*a);
    }
    /* Our own socket: libevent's would not be close-on-exec, and the ssh
     * child is forked from this thread. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    struct bufferevent *b = bufferevent_socket_new(ds->c->t->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!b) {
        close(fd);
        return -1;
    }
    tunnel_bridge_attach(&ds->br, b);
    bufferevent_setcb(b, app_read_cb, app_write_cb, app_event_cb, ds);
    struct timeval tv = {.tv_sec = APP_CONNECT_TIMEOUT_S, .tv_usec = 0};
    bufferevent_set_timeouts(b, NULL, &tv);
    bufferevent_enable(b, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(b, (struct sockaddr *)&ss, (int)sslen) < 0) {
        /* libevent reports an immediate refusal through the event callback;
         * a real failure here leaves the socket unusable. */
        ds_drop_app(ds);
        return -1;
    }
    return 0;
}

static int cb_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct tconn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct dstream *ds = xcalloc(1, sizeof(*ds));
    ds->c = c;
    ds->br.h2 = s;
    ds->br.sid = f->hd.stream_id;
    ds->next = c->streams;
    if (c->streams)
        c->streams->prev = ds;
    c->streams = ds;
    c->nstreams++;
    if (c->idle_timer)
        evtimer_del(c->idle_timer); /* busy again */
    if (c->ph == PH_READY)
        c->wanted = 1; /* a browser came: stay for the keepalive after it */
    if (nghttp2_session_set_stream_user_data(s, ds->br.sid, ds) != 0) {
        ds->br.sid = 0;
        ds_free(ds);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static void copy_hdr(struct dstream *ds, char *dst, size_t dstlen, const uint8_t *v, size_t vlen)
{
    if (vlen >= dstlen) {
        ds->hdr_long = 1;
        return;
    }
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
}

static int cb_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud)
{
    (void)flags;
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct dstream *ds = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!ds)
        return 0;
    /* RFC 9113 6.5.2: name + value + 32 per field. */
    ds->hdr_bytes += namelen + valuelen + 32;
    if (ds->hdr_bytes > TUNNEL_HEADER_LIST_MAX)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST || namelen < 2 || name[0] != ':')
        return 0;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0)
        copy_hdr(ds, ds->method, sizeof(ds->method), value, valuelen);
    else if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
        copy_hdr(ds, ds->authority, sizeof(ds->authority), value, valuelen);
    else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
        copy_hdr(ds, ds->path, sizeof(ds->path), value, valuelen);
    return 0;
}

static void on_request(struct tconn *c, struct dstream *ds)
{
    if (strcmp(ds->method, "POST") == 0 && strcmp(ds->path, TUNNEL_CONTROL_PATH) == 0 &&
        !ds->hdr_long) {
        if (c->ctl || c->ph != PH_CONTROL) {
            /* One control stream per connection; another is refused alone. */
            ds->kind = DS_REJECTED;
            (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                            NGHTTP2_PROTOCOL_ERROR);
            return;
        }
        ds->kind = DS_CONTROL;
        c->ctl = ds;
        nghttp2_nv nv[] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"content-type", (uint8_t *)TUNNEL_CONTROL_TYPE, 12,
             sizeof(TUNNEL_CONTROL_TYPE) - 1, NGHTTP2_NV_FLAG_NONE},
        };
        nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = cmsg_read_cb};
        if (nghttp2_submit_response(c->h2, ds->br.sid, nv, JG_ARRAY_LEN(nv), &prd) != 0)
            conn_fail(c, "cannot answer the control stream");
        return;
    }
    if (strcmp(ds->method, "CONNECT") == 0) {
        /* I2: only a target this agent registered, on a welcomed tunnel. */
        struct app_entry *a =
            (c->ph == PH_READY && !ds->hdr_long) ? app_entry_find_local(c->t, ds->authority) : NULL;
        if (!a) {
            respond_status(ds, "404");
            return;
        }
        ds->kind = DS_CONNECT;
        memcpy(ds->sock, a->sock, sizeof(ds->sock));
        ds->port = a->port;
        if (ds_connect(ds) < 0)
            respond_status(ds, "502");
        return;
    }
    ds->kind = DS_REJECTED;
    (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid, NGHTTP2_PROTOCOL_ERROR);
}

static void on_peer_eof(struct tconn *c, struct dstream *ds)
{
    if (ds->kind == DS_CONTROL) {
        if (!c->closing)
            conn_fail(c, "the gateway ended the control stream");
        return;
    }
    if (ds->kind == DS_CONNECT) {
        ds->peer_eof = 1;
        maybe_shut_wr(ds);
    }
}

static int cb_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct tconn *c = ud;
    struct dstream *ds;

    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        ds = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (!ds)
            break;
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST)
            on_request(c, ds);
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
            on_peer_eof(c, ds);
        break;
    case NGHTTP2_DATA:
        if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            break;
        ds = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (ds)
            on_peer_eof(c, ds);
        break;
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) {
            c->ping_out = 0;
            evtimer_del(c->ping_deadline);
        }
        break;
    case NGHTTP2_GOAWAY:
        if (!c->closing) {
            char dbg[128];
            char tmp[129];
            size_t n = f->goaway.opaque_data_len < 128 ? f->goaway.opaque_data_len : 128;
            memcpy(tmp, f->goaway.opaque_data, n);
            tmp[n] = '\0';
            tun_printable(dbg, sizeof(dbg), tmp, 120);
            conn_fail(c, "the gateway closed the tunnel (GOAWAY %s%s%s)",
                      nghttp2_http2_strerror(f->goaway.error_code), dbg[0] ? ": " : "", dbg);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int cb_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud)
{
    struct tconn *c = ud;
    (void)flags;
    struct dstream *ds = nghttp2_session_get_stream_user_data(s, sid);
    if (ds && ds->kind == DS_CONNECT && ds->br.bev && !ds->shut_wr) {
        if (tunnel_bridge_data(&ds->br, data, len) == 0)
            return 0;
        ds_drop_app(ds);
        (void)nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, sid, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    (void)nghttp2_session_consume(s, sid, len);
    if (ds && ds->kind == DS_CONTROL)
        cmsg_input(c, data, len);
    return 0;
}

static int cb_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    /* A complete 404/502 before the gateway finished its side: ask it to
     * stop sending (RFC 9113 8.1). */
    if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct dstream *ds = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (ds && ds->kind == DS_REJECTED &&
        nghttp2_session_get_stream_remote_close(s, ds->br.sid) == 0)
        (void)nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, ds->br.sid, NGHTTP2_NO_ERROR);
    return 0;
}

static int cb_stream_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *ud)
{
    struct tconn *c = ud;
    struct dstream *ds = nghttp2_session_get_stream_user_data(s, sid);
    if (!ds)
        return 0;
    ds->br.sid = 0;
    if (ds->kind == DS_CONTROL) {
        if (!c->closing)
            conn_fail(c, "the gateway closed the control stream");
        ds_free(ds);
        return 0;
    }
    if (ds->kind == DS_CONNECT && ds->br.bev && error_code == NGHTTP2_NO_ERROR &&
        evbuffer_get_length(bufferevent_get_output(ds->br.bev)) > 0 && c->nlinger < MAX_LINGER) {
        /* What the gateway sent is not all written yet: finish, bounded. */
        ds->lingering = 1;
        c->nlinger++;
        struct timeval tv = tun_ms_tv(LINGER_MS);
        bufferevent_set_timeouts(ds->br.bev, NULL, &tv);
        return 0;
    }
    ds_free(ds);
    return 0;
}

const struct tunnel_session_cbs ds_session_cbs = {
    .begin_headers = cb_begin_headers,
    .header = cb_header,
    .frame_recv = cb_frame_recv,
    .data_chunk = cb_data_chunk,
    .frame_send = cb_frame_send,
    .stream_close = cb_stream_close,
};
