/* tunnel_conn — one connection to the gateway, from attempt to teardown:
 * transport callbacks, the HTTP/2 session's start and pump, PINGs, phase
 * and close timers, failure reasons, and what happens after: the reconnect
 * with backoff (backoff.h), or the end of agent_tunnel_open when the first
 * attempt failed.
 *
 * Tunnel thread only. conn_pump is the last thing every entry point does
 * with a connection: it flushes, and tears a dead one down. */
#include "tunnel-int.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <stdio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "backoff.h"
#include "tunnel_bridge.h"
#include "tunnel_proto.h"
#include "util.h"

#define OUT_HIGH (256 * 1024)          /* tunnel output: no new frames above this */
#define OUT_LOW (64 * 1024)            /* ... and resume below this */
#define IO_CHUNK (64 * 1024)           /* largest single read or write of a socket */
#define STABLE_MS 10000                /* a welcomed connection this old resets the backoff */
#define OPEN_BUSY_TRIES 5              /* a busy gateway is tried again so often while opening */

static uint32_t rand32(void)
{
    uint32_t v;
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
        v = (uint32_t)now_mono_ms() * 2654435761u;
    return v;
}

/* The next delay; counts the attempt (reset by a lasting connection). */
static int64_t backoff_ms(struct agent_tunnel *t)
{
    return backoff_delay_ms(t->attempt++, rand32());
}

void conn_fail_rc(struct tconn *c, int rc, const char *fmt, ...)
{
    if (c->dead)
        return;
    c->dead = 1;
    c->rc = rc;
    if (c->reason[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        tun_vfmt(c->reason, sizeof(c->reason), fmt, ap);
        va_end(ap);
    }
}

void conn_protocol_error(struct tconn *c, const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    tun_vfmt(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (c->dead || c->closing)
        return;
    (void)nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                                nghttp2_session_get_last_proc_stream_id(c->h2),
                                NGHTTP2_PROTOCOL_ERROR, (const uint8_t *)reason, strlen(reason));
    c->goaway_sent = 1;
    c->closing = 1;
    c->rc = -EPROTO;
    (void)xsnprintf(c->reason, sizeof(c->reason), "the gateway broke the tunnel protocol: %s",
                    reason);
    struct timeval tv = tun_ms_tv(TUNNEL_CLOSE_TIMEOUT_MS);
    evtimer_add(c->close_timer, &tv);
}

/* Frames nghttp2's output into the transport while it is under OUT_HIGH;
 * the write callback resumes below OUT_LOW. */
static void conn_flush(struct tconn *c)
{
    if (c->dead)
        return;
    int rv = tunnel_bridge_pump_out(c->h2, bufferevent_get_output(c->bev), OUT_HIGH);
    if (rv < 0)
        conn_fail(c, "HTTP/2 error: %s", nghttp2_strerror(rv));
}

void conn_take_input(struct tconn *c, struct evbuffer *in)
{
    int rv = c->h2 ? tunnel_bridge_pump_in(c->h2, in, &c->dead) : 0;
    if (rv < 0) {
        if (c->closing)
            conn_fail(c, "%s", c->reason);
        else
            conn_fail_rc(c, -EPROTO, "HTTP/2 error from the gateway at %s: %s", c->t->where,
                         nghttp2_strerror(rv));
    }
}

static void conn_read_cb(struct bufferevent *b, void *arg)
{
    struct tconn *c = arg;
    conn_take_input(c, bufferevent_get_input(b));
    conn_pump(c);
}

static void conn_write_cb(struct bufferevent *b, void *arg)
{
    (void)b;
    conn_pump(arg);
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    /* Reap an ssh that has handed over its pipes and exited meanwhile. */
    if (c->ssh_pid > 0 && waitpid(c->ssh_pid, NULL, WNOHANG) == c->ssh_pid)
        c->ssh_pid = 0;
    if (!c->ping_out && !c->closing) {
        static const uint8_t opaque[8] = {'j', 'o', 'b', 'g', 'a', 't', 'e', '1'};
        if (nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, opaque) == 0) {
            c->ping_out = 1;
            struct timeval tv = tun_ms_tv(c->t->ping_timeout_ms);
            evtimer_add(c->ping_deadline, &tv);
        }
    }
    conn_pump(c);
}

static void ping_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    conn_fail_rc(c, -ETIMEDOUT, "no answer to PING from the gateway within %" PRId64 " s",
                 c->t->ping_timeout_ms / 1000);
    conn_pump(c);
}

static void phase_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    const char *what_s = c->ph == PH_TLS       ? "finish the TLS handshake"
                         : c->ph == PH_CONTROL ? "send its challenge"
                                               : "answer the hello";
    conn_fail_rc(c, -ETIMEDOUT, "the gateway at %s did not %s within %d s", c->t->where, what_s,
                 TUNNEL_OPEN_TIMEOUT_MS / 1000);
    conn_pump(c);
}

static void close_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    conn_fail(c, "%s", c->reason[0] ? c->reason : "closed");
    conn_pump(c);
}

/* HTTP/2 as the server: our SETTINGS at once, then wait for the gateway. */
static int conn_start_h2(struct tconn *c)
{
    if (tunnel_session_new(&c->h2, TUNNEL_ROLE_AGENT, &ds_session_cbs, c) < 0)
        return -1;
    c->ph = PH_CONTROL;
    struct timeval tv = tun_ms_tv(c->t->ping_interval_ms);
    event_add(c->ping_timer, &tv);
    return 0;
}

static void tls_ready(struct tconn *c)
{
    struct agent_tunnel *t = c->t;
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alen);
    if (alen != sizeof(TUNNEL_ALPN) - 1 || memcmp(alpn, TUNNEL_ALPN, alen) != 0) {
        conn_fail_rc(c, -EPROTO,
                     "the server at %s does not speak the jobgate tunnel protocol (it did not "
                     "select ALPN %s); is it a jobgated gateway that takes tunnels?",
                     t->where, TUNNEL_ALPN);
        return;
    }
    X509 *peer = SSL_get0_peer_certificate(ssl);
    c->pinned = c->pin && peer && trust_cert_equals(peer, c->pin, c->pinlen);
    if (conn_start_h2(c) < 0)
        conn_fail(c, "cannot start HTTP/2");
}

static void conn_event_cb(struct bufferevent *b, short what, void *arg)
{
    struct tconn *c = arg;
    struct agent_tunnel *t = c->t;

    if (what & BEV_EVENT_CONNECTED) {
        if (c->tls && c->ph == PH_TLS)
            tls_ready(c);
        conn_pump(c);
        return;
    }
    if (c->closing) {
        conn_fail(c, "%s", c->reason[0] ? c->reason : "closed");
    } else if (c->ph == PH_TLS) {
        SSL *ssl = bufferevent_openssl_get_ssl(b);
        long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        unsigned long e = bufferevent_get_openssl_error(b);
        char es[256] = "";
        if (e)
            ERR_error_string_n(e, es, sizeof(es));
        while (bufferevent_get_openssl_error(b))
            ;
        if (vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH)
            conn_fail_rc(c, -EPERM,
                         "the certificate of the gateway at %s is not trusted: %s (it was not "
                         "issued for %s; use the name it was issued for)",
                         t->where, X509_verify_cert_error_string(vr), t->host);
        else if (vr != X509_V_OK)
            conn_fail_rc(c, -EPERM,
                         "the certificate of the gateway at %s is not trusted: %s (give its CA "
                         "with --ca FILE or JOBGATE_CA)",
                         t->where, X509_verify_cert_error_string(vr));
        else if (what & BEV_EVENT_EOF)
            conn_fail_rc(c, -ECONNRESET, "%s closed the connection during the TLS handshake",
                         t->where);
        else
            conn_fail_rc(c, -EPROTO, "TLS handshake with %s failed: %s", t->where,
                         es[0] ? es : strerror(EVUTIL_SOCKET_ERROR()));
    } else if (t->via_ssh && c->ph != PH_READY) {
        /* ssh failed (a closed pipe may also show as a reset): say how it ended. */
        char how[64] = "";
        dial_ssh_status(c, how, sizeof(how));
        conn_fail_rc(c, -ECONNRESET,
                     "the connection through ssh to %s ended before the gateway welcomed this "
                     "agent%s (see ssh's messages above)",
                     t->host, how);
    } else if (what & BEV_EVENT_EOF) {
        conn_fail_rc(c, -ECONNRESET, "the gateway closed the connection");
    } else {
        unsigned long e = c->tls ? bufferevent_get_openssl_error(b) : 0;
        char es[256] = "";
        if (e)
            ERR_error_string_n(e, es, sizeof(es));
        conn_fail(c, "connection to the gateway failed: %s",
                  es[0] ? es : strerror(EVUTIL_SOCKET_ERROR()));
    }
    conn_pump(c);
}

/* Keepalive ran out: tell the gateway that we sleep, then close as at the
 * end (GOAWAY, close_notify, FIN); conn_teardown schedules the next poll. */
static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    if (c->dead || c->closing || c->ph != PH_READY)
        return;
    cmsg_sleep(c);
    c->sleeping = 1;
    c->closing = 1;
    memcpy(c->reason, "asleep", sizeof("asleep"));
    struct timeval tv = tun_ms_tv(TUNNEL_CLOSE_TIMEOUT_MS);
    evtimer_add(c->close_timer, &tv);
    conn_pump(c);
}

/* Idle: welcomed, no app stream, every app registered and answered. */
static int conn_idle(const struct tconn *c)
{
    const struct agent_tunnel *t = c->t;
    unsigned data = c->nstreams - (c->ctl ? 1u : 0u);
    if (c->ph != PH_READY || c->dead || c->closing || t->stopping || data > 0 ||
        c->rereg_pending > 0 || !policy_sleeps(&t->policy))
        return 0;
    int routes = 0;
    for (const struct app_entry *a = t->apps; a; a = a->next) {
        if (a->id[0] || a->w)
            return 0;
        routes |= a->alias != NULL && !a->direct_port;
    }
    return routes;
}

void conn_idle_check(struct tconn *c)
{
    if (!c->idle_timer)
        return;
    if (!conn_idle(c)) {
        evtimer_del(c->idle_timer);
        return;
    }
    if (evtimer_pending(c->idle_timer, NULL))
        return;
    /* A poll that found nothing held goes back to sleep at once. */
    int64_t ms = c->wake && !c->wanted ? TUNNEL_WAKE_LINGER_MS : c->t->policy.keepalive * 1000;
    struct timeval tv = tun_ms_tv(ms);
    evtimer_add(c->idle_timer, &tv);
}

/* When a sleeping tunnel dials again: the poll interval (or the check-in
 * interval without poll), within 10 % either way so that the agents of a
 * cluster spread out. */
static int64_t poll_delay_ms(const struct agent_tunnel *t)
{
    int64_t base = t->policy.poll > 0 ? t->policy.poll * 1000 : TUNNEL_CHECKIN_MS;
    int64_t spread = base / 5;
    return base - base / 10 + (spread > 0 ? (int64_t)(rand32() % (uint64_t)spread) : 0);
}

/* One connection attempt. Dialing blocks this thread (bounded by
 * TUNNEL_OPEN_TIMEOUT_MS); nothing else needs it while there is no
 * connection, and commands wait in the queue. */
int conn_new(struct agent_tunnel *t)
{
    struct tconn *c = xcalloc(1, sizeof(*c));
    c->t = t;
    c->wake = t->asleep;
    t->asleep = 0;
    t->conn = c;
    c->idle_timer = evtimer_new(t->base, idle_cb, c);
    c->phase_timer = evtimer_new(t->base, phase_timer_cb, c);
    c->ping_timer = event_new(t->base, -1, EV_PERSIST, ping_cb, c);
    c->ping_deadline = evtimer_new(t->base, ping_deadline_cb, c);
    c->close_timer = evtimer_new(t->base, close_timer_cb, c);
    c->ctl_out = evbuffer_new();
    return c->phase_timer && c->ping_timer && c->ping_deadline && c->close_timer &&
           c->ctl_out && c->idle_timer ? 0 : -ENOMEM;
}

void conn_attempt(struct agent_tunnel *t)
{
    char err[ERRLEN];
    int made = conn_new(t);
    struct tconn *c = t->conn;
    if (made < 0) {
        conn_fail(c, "out of memory");
        conn_pump(c);
        return;
    }
    dial_reap_children(t, 0);

    int fd = dial_connect(c, err, sizeof(err));
    if (fd < 0) {
        conn_fail_rc(c, fd, "cannot reach the gateway at %s: %s", t->where, err);
        conn_pump(c);
        return;
    }
    if (dial_transport(c, fd) < 0) {
        conn_fail(c, "cannot set up the connection: %s", trust_ssl_errstr());
        conn_pump(c);
        return;
    }
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
    (void)bufferevent_set_max_single_read(c->bev, IO_CHUNK);
    (void)bufferevent_set_max_single_write(c->bev, IO_CHUNK);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    struct timeval tv = tun_ms_tv(TUNNEL_OPEN_TIMEOUT_MS);
    evtimer_add(c->phase_timer, &tv);
    if (!c->tls && conn_start_h2(c) < 0)
        conn_fail(c, "cannot start HTTP/2");
    conn_pump(c);
}

/* Flushes; in a graceful close, sends GOAWAY once the control messages are
 * out and half-closes once everything is; tears down a dead connection.
 * The last thing every entry point does with c. */
void conn_pump(struct tconn *c)
{
    if (!c->dead && c->h2) {
        conn_flush(c);
        if (!c->dead && c->closing && !c->goaway_sent && evbuffer_get_length(c->ctl_out) == 0) {
            (void)nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                                        nghttp2_session_get_last_proc_stream_id(c->h2),
                                        NGHTTP2_NO_ERROR, NULL, 0);
            c->goaway_sent = 1;
            conn_flush(c);
        }
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (!c->dead && c->closing && c->goaway_sent && !c->shut &&
            !nghttp2_session_want_write(c->h2) && evbuffer_get_length(out) == 0) {
            /* Everything is written: close_notify and FIN, then wait for the
             * gateway's EOF (close_timer bounds it), so that unread input
             * does not turn our close into a reset that loses the tail. */
            if (c->tls) {
                SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
                if (ssl)
                    (void)SSL_shutdown(ssl);
                ERR_clear_error();
            }
            (void)shutdown(bufferevent_getfd(c->bev), SHUT_WR);
            c->shut = 1;
        }
        if (!c->dead && !c->closing && !nghttp2_session_want_read(c->h2) &&
            !nghttp2_session_want_write(c->h2))
            conn_fail(c, "the HTTP/2 session with the gateway ended");
    }
    if (c->dead)
        conn_teardown(c);
}

void conn_teardown(struct tconn *c)
{
    struct agent_tunnel *t = c->t;
    int was_ready = c->ph == PH_READY;
    int sleeping = c->sleeping, wake = c->wake;
    if (was_ready && (sleeping || now_mono_ms() - c->ready_at >= STABLE_MS))
        t->attempt = 0;
    int rc = c->rc ? c->rc : -EIO;
    char reason[ERRLEN];
    memcpy(reason, c->reason, sizeof(reason));
    if (!reason[0])
        memcpy(reason, "connection closed", sizeof("connection closed"));

    while (c->streams)
        ds_free(c->streams);
    if (c->h2)
        nghttp2_session_del(c->h2);
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->ssh_pid > 0)
        dial_reap_later(t, c->ssh_pid);
    if (c->phase_timer)
        event_free(c->phase_timer);
    if (c->ping_timer)
        event_free(c->ping_timer);
    if (c->ping_deadline)
        event_free(c->ping_deadline);
    if (c->close_timer)
        event_free(c->close_timer);
    if (c->idle_timer)
        event_free(c->idle_timer);
    if (c->ctl_out)
        evbuffer_free(c->ctl_out);
    tunnel_lines_free(&c->lines);
    OPENSSL_free(c->pin);
    free(c);
    t->conn = NULL;
    /* Requests in flight died with the connection; a welcome sends them again. */
    for (struct app_entry *a = t->apps; a; a = a->next) {
        a->id[0] = '\0';
        a->rereg = 0;
    }

    if (t->stopping && sleeping && tun_has_routes(t)) {
        /* Closed to sleep while the tunnel was being closed: once more,
         * to take the routes back. */
        t->asleep = 1;
        conn_attempt(t);
        return;
    }
    if (t->stopping) {
        event_base_loopbreak(t->base);
        return;
    }
    /* A busy gateway (it cannot check credentials now) is tried again: for
     * ever once the tunnel worked, a few times while it opens. */
    int busy = rc == -EAGAIN && (!t->opening || t->attempt < OPEN_BUSY_TRIES);
    if (t->opening && !busy) {
        tun_waiter_done(t, &t->open_w, rc, NULL, "%s", reason);
        t->stopping = 1;
        event_base_loopbreak(t->base);
        return;
    }
    if (sleeping || (wake && !was_ready)) {
        /* Asleep on purpose (or a poll that found no gateway): the next
         * poll, or at once for an app that waits to be registered. */
        int64_t delay = poll_delay_ms(t);
        for (struct app_entry *a = t->apps; a; a = a->next)
            if (a->w || a->gone) /* an app waits to come or go: soon, but not in a loop */
                delay = sleeping ? 0 : backoff_ms(t);
        t->asleep = 1;
        if (!sleeping)
            tun_notice(t, "cannot reach the gateway to collect requests: %s; next poll in %.0f s",
                       reason, (double)delay / 1000.0);
        struct agent_tunnel_event ev = {.event = "sleeping", .retry_in = (double)delay / 1000.0};
        tun_tell(t, &ev);
        struct timeval tv = tun_ms_tv(delay);
        evtimer_add(t->retry_ev, &tv);
        return;
    }
    if (!t->policy.reconnect && !busy) {
        char msg[ERRLEN + 128];
        (void)xsnprintf(msg, sizeof(msg), "lost the connection to the gateway (%s); the "
                        "connection policy has no reconnect", reason);
        struct agent_tunnel_event ev = {.event = "lost", .message = msg, .reason = reason};
        tun_tell(t, &ev);
        t->stopping = 1;
        event_base_loopbreak(t->base);
        return;
    }
    int64_t delay = backoff_ms(t);
    char msg[ERRLEN + 128];
    if (was_ready)
        (void)xsnprintf(msg, sizeof(msg),
                        "lost the connection to the gateway (%s); reconnecting in %.1f s", reason,
                        (double)delay / 1000.0);
    else
        (void)xsnprintf(msg, sizeof(msg), "cannot reconnect to the gateway: %s; next attempt in "
                        "%.1f s", reason, (double)delay / 1000.0);
    struct agent_tunnel_event ev = {.event = "reconnecting", .message = msg,
                                    .retry_in = (double)delay / 1000.0, .attempt = t->attempt};
    ev.reason = reason;
    tun_tell(t, &ev);
    struct timeval tv = tun_ms_tv(delay);
    evtimer_add(t->retry_ev, &tv);
}

void conn_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct agent_tunnel *t = arg;
    (void)fd;
    (void)what;
    if (!t->stopping && !t->conn)
        conn_attempt(t);
}
