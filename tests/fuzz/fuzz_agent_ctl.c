/*
 * libFuzzer target for the agent's end of the tunnel's control stream
 * (src/agent/tunnel_ctl.c): what a gateway sends it (challenge, welcome or
 * refusal, the answers registered / error / link to its registers, notices,
 * types of a newer gateway) handed to cmsg_input, over a real struct
 * agent_tunnel and struct tconn as tunnel_thread.c and tunnel_conn.c make
 * them: the thread's event base (EVENT_BASE_FLAG_NOLOCK), the transport on a
 * socket pair (dial_transport, as over ssh), the agent's HTTP/2 server session
 * (tunnel_session_new, ds_session_cbs) and at the other end a gateway's client
 * session that opens the control stream, reads what the agent sends on it and
 * consumes it (so flow control goes on). The canned part of an exchange (the
 * challenge, the welcome) goes through the gateway's session as DATA; the
 * apps are made as the agent's commands make them (do_register: a waiter,
 * app_entry_pick_local, cmsg_register once welcomed), earlier connections'
 * apps as conn_teardown leaves them.
 *
 * Input: byte 0: bits 0-1 the phase the fuzzer's lines start in (the
 * challenge awaited, the welcome awaited, welcomed), bits 2-4 how the agent
 * proves who it is (ssh peercred, job certificate, user's certificate, the
 * personal token of a pinned gateway, none: MUNGE missing), bits 5-6 the
 * policy (persistent; no reconnect; keepalive(60) poll(30); keepalive(60)
 * callback), bit 7 a job id in the hello. Byte 1: bit 0 a reconnection (else
 * the first connection: agent_tunnel_open waits), bit 1 dialled from sleep
 * (a poll), bit 2 the tunnel is closing (woken to take its apps back), bits
 * 3-4 how lines reach cmsg_input (whole, in 7-byte pieces, byte by byte, or
 * as the gateway's DATA frames). Byte 2: bit k app k of APP_* below (bits
 * 0-6 only on a reconnection), bit 7 APP_NEW. Byte 3: bit 0 APP_TAKE, bit 1
 * APP_DIRECT2, bit 2 APP_NEW's register timed out, bit 3 APP_TAKE's run left,
 * bit 4 the runs that left let their routes go (release), bits 5-6 the
 * canned welcome's policy (none, poll 30, poll 120, poll 0), bit 7 a
 * job_refused in it. The rest: lines from the gateway. Apps are made in the
 * order of APP_*; the welcome registers the last one made first ("r1"),
 * those made once welcomed take the next ids.
 *
 * Invariants, checked with abort() after each line: a line that is empty is
 * nothing; one that is malformed (not a JSON object, no type, too long) or
 * unexpected (not the challenge first, not a welcome or error next, an answer
 * to no request of ours, a "link" answer, a registered answer without alias,
 * url, or the link of a new route) ends the connection as a protocol error
 * (closing, GOAWAY PROTOCOL_ERROR with the reason, the reason kept for the
 * reconnect, -EPROTO) and changes nothing else: no app, no phase, nothing
 * sent; after it no line is read. A challenge (version 1, 43 base64url
 * characters) gets one hello with this agent's node, job, policy and proof
 * (the certificate's signature of this nonce, the pinned gateway's token), or
 * ends the connection when there is no proof; a refusal before the welcome
 * ends it with a printable reason (a busy gateway: tried again). A welcome
 * sends one register per app that lives on the tunnel (ids unique, each with
 * its app's fields and alias) and unregisters those that left meanwhile,
 * completes agent_tunnel_open, takes the gateway's poll only within bounds. A
 * registered answer sets the alias of the app whose request it answers and no
 * other (non-empty, at most 255 bytes), completes its waiter once with it, or
 * takes the route back when the app was abandoned; an error answer ends that
 * app's request alone. No app refers to a completed waiter; every
 * re-registration is counted once; what the agent queues is whole JSON lines
 * of its own types, at most one per app and line, and reaches the gateway
 * intact and entirely. When the connection ends: every app's request is
 * forgotten, and the tunnel reconnects, sleeps, stops or fails
 * agent_tunnel_open as its policy says, with the reason. What the agent tells
 * (events' messages and reasons, agent_tunnel_open's error) is UTF-8, as the
 * shared tunnel's holder needs to pass it on (cmd_hold.c: json_string), and a
 * notice is printable (the gateway's words through tun_printable). No crash,
 * leak or undefined behaviour (ASan, UBSan); each input is freed whole.
 *
 * No stubs: everything the target links is the agent's own (src/agent
 * tunnel_*.c and what they need). Stand-ins: the connection's timers and the
 * register timeout have static callbacks (tunnel_conn.c, tunnel_thread.c);
 * the event loop never runs (nothing here waits), so they never fire (an abort
 * says so). The transport's callbacks (conn_read_cb, conn_event_cb) are static
 * too: what they do is done here with the real calls (tunnel_bridge_pump_in,
 * conn_fail, conn_pump); the retry timer is the real one, checked pending.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "fuzz.h"
#include "jobcert.h"
#include "log.h"
#include "tunnel-int.h"
#include "tunnel_proto.h"
#include "util.h"


#define NONCE "Fz0123456789-abcdefghijklmnopqrstuvwxyz_ABC"
#define WHERE_TLS "gw.example.org:443"
#define WHERE_SSH "ssh:login1"
#define PROTO_PREFIX "the gateway broke the tunnel protocol: "
#define MSG_MAX 4096    /* one message of the agent's but the hello: names, ports, an alias */

enum auth { A_SSH, A_JOBCERT, A_CERT, A_TOKEN, A_NONE };

/* The apps an input may start with: made before the connection (a reconnection only: left by
 * earlier ones), or once it is welcomed. */
enum {
    APP_ALIAS,     /* jupyter: registered before, its alias to ask back */
    APP_WAIT,      /* jupyter again (local jupyter-2): registered while the tunnel was down */
    APP_DIRECT,    /* a direct route, registered before: not re-registered */
    APP_ADOPT,     /* agent_tunnel_unregister_at_close: only to take back at the close */
    APP_GONE,      /* unregistered while the tunnel was down: at the welcome */
    APP_LATE,      /* its register timed out, unanswered when the connection was lost */
    APP_LEFT,      /* its run left while it was being registered again */
    APP_NEW,       /* once welcomed: rstudio, waited for */
    APP_TAKE,      /* once welcomed, with an alias (the holder taking over a run's route) */
    APP_DIRECT2,   /* once welcomed: a direct route */
    NAPP
};

struct gw {
    nghttp2_session *h2;
    int32_t sid;              /* the control stream */
    struct evbuffer *out;     /* lines for the agent: the DATA source */
    struct evbuffer *got;     /* what the agent sent on the control stream */
    int deferred, status, goaway;
    uint32_t goaway_code;
    char goaway_dbg[512];
};

static EVP_PKEY *key;         /* a job's key and certificate, as in $JOBGATE_DIR */
static X509 *cert;
static char *cert_pem;
static char sdir[64];         /* a personal gateway's state directory (agent.token) */
static char job_id[] = "123456";
static const char token[] = "c2VjcmV0LXRva2VuLW9mLWEtcGVyc29uYWwtZ2F0ZXdheS1mb3ItZnV6emluZw";

/* One input's. */
static struct agent_tunnel *T;
static struct gw G;
static int peer = -1;         /* the gateway's end of the socket pair: never read */
static enum auth auth;
static struct waiter W[NAPP]; /* the callers' waiters (on their stacks in the agent) */
static struct {
    unsigned ready, notice, reconnected, reconnecting, lost, sleeping;
    char ready_alias[300];
    char reason[ERRLEN];
} E;

static int streq(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

static const char *str(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static int printable(const char *s)
{
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e)
            return 0;
    return 1;
}

/* ---- stand-ins for static callbacks ------------------------------------------------------- */

static void never_cb(evutil_socket_t fd, short what, void *arg)
{
    abort(); /* a timer of seconds: the loop does not run while a connection lives */
}

/* Text the agent tells: it crosses the shared tunnel's holder as a JSON string (cmd_hold.c,
 * json_string), which takes only UTF-8. */
static void check_text(const char *s)
{
    json_t *j = json_string(s);
    CHECK(j);
    json_decref(j);
}

static void on_event(void *arg, const struct agent_tunnel_event *ev)
{
    CHECK(arg == T && ev->event);
    if (ev->message)
        CHECK(strlen(ev->message) < 2 * ERRLEN);
    if (ev->message)
        check_text(ev->message);
    if (ev->reason)
        check_text(ev->reason);
    if (strcmp(ev->event, "ready") == 0) {
        const char *alias = str(ev->reply, "alias");
        CHECK(alias && str(ev->reply, "local") && strlen(alias) < sizeof(E.ready_alias));
        memcpy(E.ready_alias, alias, strlen(alias) + 1);
        E.ready++;
    } else if (strcmp(ev->event, "notice") == 0) {
        /* The gateway's words in it made printable (tun_printable), as the rule is. */
        CHECK(ev->message && ev->message[0] && printable(ev->message));
        E.notice++;
    } else if (strcmp(ev->event, "reconnected") == 0) {
        E.reconnected++;
    } else if (strcmp(ev->event, "reconnecting") == 0 || strcmp(ev->event, "lost") == 0) {
        CHECK(ev->message && ev->reason && ev->reason[0] && strlen(ev->reason) < ERRLEN);
        memcpy(E.reason, ev->reason, strlen(ev->reason) + 1);
        if (ev->event[0] == 'l')
            E.lost++;
        else
            E.reconnecting++;
    } else {
        CHECK(strcmp(ev->event, "sleeping") == 0);
        E.sleeping++;
    }
}

/* ---- the gateway's end ---------------------------------------------------------------------- */

static ssize_t gw_read_cb(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
                          uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    int n = evbuffer_remove(G.out, buf, len);
    if (n <= 0) {
        G.deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return n;
}

static int gw_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    if (f->hd.stream_id == G.sid && nlen == 7 && memcmp(name, ":status", 7) == 0)
        G.status = vlen == 3 && memcmp(value, "200", 3) == 0 ? 200 : -1;
    return 0;
}

static int gw_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    if (f->hd.type == NGHTTP2_GOAWAY && !G.goaway) {
        size_t n = f->goaway.opaque_data_len;
        CHECK(n < sizeof(G.goaway_dbg));
        if (n > 0)
            memcpy(G.goaway_dbg, f->goaway.opaque_data, n);
        G.goaway_dbg[n] = '\0';
        G.goaway_code = f->goaway.error_code;
        G.goaway = 1;
    }
    return 0;
}

static int gw_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                   void *ud)
{
    CHECK(sid == G.sid); /* the agent opens no stream */
    evbuffer_add(G.got, data, len);
    (void)nghttp2_session_consume(s, sid, len); /* a gateway that reads all */
    return 0;
}

static void gw_send(struct evbuffer *to)
{
    const uint8_t *p;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(G.h2, &p)) > 0)
        evbuffer_add(to, p, (size_t)n);
    CHECK(n == 0);
}

/* What conn_read_cb does with the transport's input. */
static void agent_read(struct tconn *c, struct evbuffer *in)
{
    conn_take_input(c, in);
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* Bytes both ways until neither side has more, each entry point ending with conn_pump as in
 * the agent. The connection may be torn down on the way (T->conn NULL). */
static void exchange(void)
{
    struct evbuffer *in = evbuffer_new();
    for (int i = 0; i < 64 && T->conn; i++) {
        struct tconn *c = T->conn;
        gw_send(in);
        int moved = evbuffer_get_length(in) > 0;
        if (moved)
            agent_read(c, in);
        conn_pump(c);
        if (!T->conn)
            break;
        struct evbuffer *out = bufferevent_get_output(c->bev);
        size_t len = evbuffer_get_length(out);
        if (len > 0) {
            ssize_t r = nghttp2_session_mem_recv(G.h2, evbuffer_pullup(out, -1), len);
            CHECK(r == (ssize_t)len);
            /* Taken as the transport's write takes it (libevent keeps the start of a socket's
             * output frozen for everyone else). */
            evbuffer_unfreeze(out, 1);
            CHECK(evbuffer_drain(out, len) == 0);
            evbuffer_freeze(out, 1);
            moved = 1;
        }
        if (!moved)
            break;
    }
    evbuffer_free(in);
    if (T->conn) /* quiet: every message the agent queued went out */
        CHECK(evbuffer_get_length(T->conn->ctl_out) == 0 &&
              evbuffer_get_length(bufferevent_get_output(T->conn->bev)) == 0);
}

static void gw_start(void)
{
    static const struct tunnel_session_cbs cbs = {
        .header = gw_header, .frame_recv = gw_frame_recv, .data_chunk = gw_data};
    nghttp2_nv nv[] = {
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, 0}
        NV(":method", "POST"), NV(":scheme", "https"), NV(":authority", "jobgate"),
        NV(":path", TUNNEL_CONTROL_PATH), NV("content-type", TUNNEL_CONTROL_TYPE),
#undef NV
    };
    nghttp2_data_provider prd = {.read_callback = gw_read_cb};
    memset(&G, 0, sizeof(G));
    G.out = evbuffer_new();
    G.got = evbuffer_new();
    CHECK(tunnel_session_new(&G.h2, TUNNEL_ROLE_GATEWAY, &cbs, NULL) == 0);
    G.sid = nghttp2_submit_request(G.h2, NULL, nv, JG_ARRAY_LEN(nv), &prd, NULL);
    CHECK(G.sid > 0);
}

/* ---- the agent's objects ------------------------------------------------------------------- */

static void tunnel_new(uint8_t how, uint8_t more)
{
    static const struct policy policies[] = {
        {.keepalive = POLICY_FOREVER, .reconnect = 1},
        {.keepalive = POLICY_FOREVER},
        {.keepalive = 60, .reconnect = 1, .poll = 30},
        {.keepalive = 60, .reconnect = 1, .callback = 1},
    };
    struct agent_tunnel *t = T = xcalloc(1, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cond, NULL);
    t->cmds_tail = &t->cmds;
    t->cmd_fd = -1;
    t->ping_interval_ms = TUNNEL_PING_INTERVAL_MS;
    t->ping_timeout_ms = TUNNEL_PING_TIMEOUT_MS;
    t->on_event = on_event;
    t->event_arg = t;
    t->policy = policies[(how >> 5) & 3];
    auth = (how >> 2) & 7;
    if (auth > A_NONE || (auth == A_NONE && (how & 3) != 0))
        auth = A_SSH; /* without a proof there is no welcome to wait for */
    t->via_ssh = auth == A_SSH;
    snprintf(t->where, sizeof(t->where), "%s", t->via_ssh ? WHERE_SSH : WHERE_TLS);
    snprintf(t->host, sizeof(t->host), "%s", t->via_ssh ? "login1" : "gw.example.org");
    t->port = t->via_ssh ? 0 : 443;
    if (auth == A_JOBCERT || auth == A_CERT) {
        t->job_cert = cert_pem; /* shared by all inputs: never freed here */
        t->job_key = key;
        t->user_cert = auth == A_CERT;
    }
    if (auth == A_TOKEN)
        t->state_dir = sdir;
    memcpy(t->node, "cn042", 6);
    t->job = how & 0x80 ? job_id : NULL; /* static: never freed here */
    struct event_config *ecfg = event_config_new();
    CHECK(ecfg && event_config_set_flag(ecfg, EVENT_BASE_FLAG_NOLOCK) == 0);
    t->base = event_base_new_with_config(ecfg);
    event_config_free(ecfg);
    t->retry_ev = evtimer_new(t->base, conn_retry_cb, t);
    CHECK(t->base && t->retry_ev);
    if (more & 1) { /* a reconnection: agent_tunnel_open returned long ago */
        t->ever_welcomed = 1;
        t->attempt = 1;
        t->asleep = (more & 2) != 0;
        t->stopping = (more & 6) == 6; /* start_close dialled to take the routes back */
    } else {
        t->opening = 1;
    }
}

/* An app as agent_tunnel_add (or _register_direct) and do_register make it, registered at
 * once when the connection is welcomed (cmsg_register), else at the welcome. */
static struct app_entry *app_new(int slot, const char *name, const char *sock, unsigned port,
                                 const char *alias, int waited)
{
    struct app_entry *a = xcalloc(1, sizeof(*a));
    memcpy(a->name, name, strlen(name) + 1);
    if (sock)
        memcpy(a->sock, sock, strlen(sock) + 1);
    a->port = sock ? 0 : port;
    a->alias = alias ? xstrdup(alias) : NULL;
    a->t = T;
    a->w = waited ? &W[slot] : NULL;
    app_entry_pick_local(T, a);
    a->timer = evtimer_new(T->base, never_cb, a);
    CHECK(a->timer);
    a->next = T->apps;
    T->apps = a;
    if (waited) {
        struct timeval tv = tun_ms_tv(TUNNEL_REGISTER_TIMEOUT_MS);
        evtimer_add(a->timer, &tv);
    }
    return a;
}

static void app_send(struct app_entry *a)
{
    struct tconn *c = T->conn;
    if (c && c->ph == PH_READY && !c->dead && !c->closing) {
        cmsg_register(c, a);
        conn_idle_check(c);
    }
}

/* What register_timeout_cb does: the caller gives up; the answer, if it comes, takes the route
 * back. */
static void app_timeout(struct app_entry *a)
{
    struct waiter *w = a->w;
    a->w = NULL;
    tun_waiter_done(T, w, -ETIMEDOUT, NULL, "the gateway did not answer the registration");
    a->abandoned = 1;
    if (!a->id[0])
        app_entry_remove(T, a);
}

/* What do_unregister does with an app whose register is on its way. */
static void app_leave(struct app_entry *a, int release)
{
    if (a->w) {
        struct waiter *w = a->w;
        a->w = NULL;
        tun_waiter_done(T, w, -ECANCELED, NULL, "the app left");
    }
    a->abandoned = 1;
    a->release = release;
}

/* The apps an earlier connection left (conn_teardown forgot their requests). */
static void apps_before(uint8_t bits, uint8_t bits2)
{
    unsigned cb = T->policy.callback ? 8443 : 0;
    if (bits & (1u << APP_ALIAS))
        app_new(APP_ALIAS, "jupyter", "/run/user/1000/jobgate/jupyter.sock", 0,
                "brisk-otter-canal", 0);
    if (bits & (1u << APP_WAIT)) {
        struct app_entry *a = app_new(APP_WAIT, "jupyter", NULL, 8888, NULL, 1);
        a->ttl = 3600;
        a->cb_port = cb;
    }
    if (bits & (1u << APP_DIRECT)) {
        struct app_entry *a = app_new(APP_DIRECT, "direct", NULL, 0, "amber-delta-fjord", 0);
        a->direct_port = 8443;
        a->keep = 1;
    }
    if (bits & (1u << APP_ADOPT)) { /* CMD_ADOPT: no timer */
        struct app_entry *a = xcalloc(1, sizeof(*a));
        memcpy(a->name, "adopted", sizeof("adopted"));
        a->alias = xstrdup("canal-ember-gecko");
        a->direct_port = 1;
        a->t = T;
        app_entry_pick_local(T, a);
        a->next = T->apps;
        T->apps = a;
    }
    if (bits & (1u << APP_GONE))
        app_new(APP_GONE, "gone", NULL, 9999, "delta-heron-igloo", 0)->gone = 1;
    if (bits & (1u << APP_LATE)) {
        struct app_entry *a = app_new(APP_LATE, "late", NULL, 7777, NULL, 1);
        tun_waiter_done(T, &W[APP_LATE], -ETIMEDOUT, NULL, "timed out"); /* and then lost */
        evtimer_del(a->timer);
        a->w = NULL;
        a->abandoned = 1;
    }
    if (bits & (1u << APP_LEFT)) {
        struct app_entry *a = app_new(APP_LEFT, "left", NULL, 5555, "jolly-koala-lemon", 0);
        app_leave(a, (bits2 >> 4) & 1);
    }
}

/* The apps registered once the connection is welcomed. */
static void apps_after(uint8_t bits, uint8_t bits2)
{
    struct tconn *c = T->conn;
    if (!c || c->ph != PH_READY || c->dead || c->closing)
        return; /* do_register refuses while closing; waits for a welcome */
    if (bits & 0x80) {
        struct app_entry *a = app_new(APP_NEW, "rstudio", "/tmp/rs.sock", 0, NULL, 1);
        a->ttl = 600;
        a->cb_port = T->policy.callback ? 8443 : 0;
        app_send(a);
        if (bits2 & 4)
            app_timeout(a);
    }
    if (bits2 & 1) {
        struct app_entry *a = app_new(APP_TAKE, "tensorboard", NULL, 6006, "fjord-gecko-heron",
                                      1);
        a->cross_site = 1;
        app_send(a);
        if (bits2 & 8)
            app_leave(a, (bits2 >> 4) & 1);
    }
    if (bits2 & 2) {
        struct app_entry *a = app_new(APP_DIRECT2, "direct2", NULL, 0, NULL, 1);
        a->direct_port = 9443;
        a->keep = 1;
        a->ttl = 600;
        app_send(a);
    }
    conn_pump(c);
    exchange();
}

/* A connection as conn_attempt (conn_new) and conn_start_h2 make it, over a socket pair (the
 * ssh child's side is the gateway's), the control stream opened and answered. */
static void conn_make(void)
{
    struct agent_tunnel *t = T;
    int sv[2];
    CHECK(conn_new(t) == 0); /* its timers never fire: the loop never runs */
    struct tconn *c = t->conn;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    peer = sv[1];
    if (t->via_ssh) {
        CHECK(dial_transport(c, sv[0]) == 0);
    } else {
        /* TLS is below what is fuzzed: the handshake is done, the pinned certificate seen. */
        (void)evutil_make_socket_nonblocking(sv[0]);
        c->bev = bufferevent_socket_new(t->base, sv[0], BEV_OPT_CLOSE_ON_FREE);
        CHECK(c->bev);
        c->tls = 1;
        c->pinned = auth == A_TOKEN;
    }
    struct timeval tv = tun_ms_tv(TUNNEL_OPEN_TIMEOUT_MS);
    evtimer_add(c->phase_timer, &tv);
    CHECK(tunnel_session_new(&c->h2, TUNNEL_ROLE_AGENT, &ds_session_cbs, c) == 0);
    c->ph = PH_CONTROL;
    tv = tun_ms_tv(t->ping_interval_ms);
    event_add(c->ping_timer, &tv);
    conn_pump(c);
    gw_start();
    exchange();
    CHECK(T->conn == c && c->ctl && c->ctl->kind == DS_CONTROL && c->ph == PH_CONTROL &&
          G.status == 200 && !c->dead && !c->closing);
}

/* ---- one line and what it must do ---------------------------------------------------------- */

struct app_snap {
    struct app_entry *a;
    int has_alias;
    char alias[257];
    char id[16];
    struct waiter *w;
    int rereg, fresh, abandoned, gone, release, direct_port;
};

struct snap {
    unsigned n;
    struct app_snap app[NAPP];
    enum phase ph;
    unsigned next_id, rereg_pending;
    int64_t poll;
    int opening, ever_welcomed, wake, closing;
};

static void snap_app(struct app_snap *s, struct app_entry *a)
{
    memset(s, 0, sizeof(*s));
    s->a = a;
    s->has_alias = a->alias != NULL;
    if (a->alias) {
        CHECK(a->alias[0] && strlen(a->alias) <= 255);
        memcpy(s->alias, a->alias, strlen(a->alias) + 1);
    }
    memcpy(s->id, a->id, sizeof(s->id));
    s->w = a->w;
    s->rereg = a->rereg;
    s->fresh = a->fresh;
    s->abandoned = a->abandoned;
    s->gone = a->gone;
    s->release = a->release;
    s->direct_port = a->direct_port;
}

static void snap_take(struct snap *s, struct tconn *c)
{
    memset(s, 0, sizeof(*s));
    for (struct app_entry *a = T->apps; a; a = a->next) {
        CHECK(s->n < NAPP);
        snap_app(&s->app[s->n++], a);
    }
    s->ph = c->ph;
    s->next_id = c->next_id;
    s->rereg_pending = c->rereg_pending;
    s->poll = T->policy.poll;
    s->opening = T->opening;
    s->ever_welcomed = T->ever_welcomed;
    s->wake = c->wake;
    s->closing = c->closing;
}

static int app_same(const struct app_snap *s, struct app_entry *a)
{
    struct app_snap now;
    snap_app(&now, a);
    return memcmp(&now, s, sizeof(now)) == 0;
}

/* The apps now are those of before but the one at index skip (-1: none), each unchanged but
 * that one. */
static void apps_unchanged_but(const struct snap *s, int skip, int removed)
{
    struct app_entry *a = T->apps;
    for (unsigned i = 0; i < s->n; i++) {
        if ((int)i == skip && removed)
            continue;
        CHECK(a == s->app[i].a);
        if ((int)i != skip)
            CHECK(app_same(&s->app[i], a));
        a = a->next;
    }
    CHECK(!a);
}

/* What holds after every line of a live connection. */
static void check_state(struct tconn *c)
{
    unsigned rereg = 0;
    for (struct app_entry *a = T->apps; a; a = a->next) {
        CHECK(a->t == T);
        if (a->alias)
            CHECK(a->alias[0] && strlen(a->alias) <= 255);
        CHECK(c->ph == PH_READY || !a->id[0]); /* registers go only to a welcomed tunnel */
        if (a->id[0])
            for (struct app_entry *b = a->next; b; b = b->next)
                CHECK(strcmp(a->id, b->id) != 0);
        if (a->w) /* a caller still waits: on its own waiter, not completed */
            CHECK(a->w >= W && a->w < W + NAPP && !a->w->done);
        rereg += a->rereg != 0;
    }
    CHECK(rereg == c->rereg_pending);
}

/* The lines of the agent's queue from off on, as JSON objects. */
static json_t *queued(struct tconn *c, size_t off, size_t *bytes)
{
    size_t len = evbuffer_get_length(c->ctl_out);
    json_t *arr = json_array();
    CHECK(len >= off);
    *bytes = len - off;
    if (len == off)
        return arr;
    const char *p = (const char *)evbuffer_pullup(c->ctl_out, -1) + off, *end, *nl;
    for (end = p + (len - off); p < end; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(end - p));
        CHECK(nl); /* whole lines only */
        json_t *m = json_loadb(p, (size_t)(nl - p), JSON_REJECT_DUPLICATES, NULL);
        const char *type = str(m, "type");
        CHECK(json_is_object(m) && type && (size_t)(nl - p) < TUNNEL_CTL_LINE_MAX);
        CHECK(strcmp(type, "hello") == 0 ? (size_t)(nl - p) < 4 * MSG_MAX
                                         : (size_t)(nl - p) < MSG_MAX);
        CHECK(streq(type, "hello") || streq(type, "register") || streq(type, "unregister") ||
              streq(type, "release") || streq(type, "sleep"));
        json_array_append_new(arr, m);
    }
    return arr;
}

static void check_hello(const json_t *h, const char *nonce)
{
    const struct policy *p = &T->policy;
    const json_t *pol = json_object_get(h, "policy"), *a = json_object_get(h, "auth");
    CHECK(streq(str(h, "type"), "hello") && json_integer_value(json_object_get(h, "version")) == 1);
    CHECK(streq(str(h, "agent"), "jobgate/fuzz") && streq(str(h, "node"), T->node));
    CHECK(T->job ? streq(str(h, "job"), T->job) : !json_object_get(h, "job"));
    CHECK(json_is_boolean(json_object_get(pol, "reconnect")) &&
          json_is_true(json_object_get(pol, "reconnect")) == !!p->reconnect &&
          json_is_true(json_object_get(pol, "callback")) == !!p->callback &&
          json_integer_value(json_object_get(pol, "poll")) == p->poll &&
          json_is_true(json_object_get(pol, "sleeps")) == policy_sleeps(p));
    if (policy_sleeps(p))
        CHECK(json_integer_value(json_object_get(pol, "keepalive")) == p->keepalive &&
              json_integer_value(json_object_get(pol, "checkin")) > 0);
    if (auth == A_SSH) {
        CHECK(streq(str(a, "method"), "peercred") && json_object_size(a) == 1);
    } else if (auth == A_TOKEN) {
        CHECK(streq(str(a, "method"), "token") && streq(str(a, "token"), token));
    } else {
        /* The certificate, and this very challenge signed with its key. */
        char payload[64];
        int n = snprintf(payload, sizeof(payload), "jobgate/1 hello %s", nonce);
        CHECK(streq(str(a, "method"), auth == A_CERT ? "cert" : "jobcert"));
        CHECK(streq(str(a, "cert"), cert_pem) && str(a, "signature"));
        CHECK(jobcert_verify(cert, payload, (size_t)n, str(a, "signature")) == 1);
    }
}

static void check_register(const json_t *m, const struct app_entry *a)
{
    const json_t *d = json_object_get(m, "direct"), *cb = json_object_get(m, "callback");
    CHECK(streq(str(m, "type"), "register") && streq(str(m, "id"), a->id));
    CHECK(streq(str(m, "name"), a->name) && streq(str(m, "local"), a->local));
    CHECK(a->direct_port ? json_integer_value(json_object_get(d, "port")) == (int)a->direct_port
                         : !d);
    CHECK(a->cb_port ? json_integer_value(json_object_get(cb, "port")) == (int)a->cb_port : !cb);
    CHECK(json_is_true(json_object_get(m, "cross_site")) == !!a->cross_site);
    if (a->alias)
        CHECK(streq(str(m, "alias"), a->alias) && !json_object_get(m, "ttl"));
    else
        CHECK(!json_object_get(m, "alias") &&
              (a->ttl > 0 ? json_integer_value(json_object_get(m, "ttl")) == a->ttl
                          : !json_object_get(m, "ttl")));
}

enum expect { X_NOTHING, X_PROTO, X_REFUSED, X_HELLO, X_WELCOME, X_REGISTERED, X_ERROR, X_NOTICE };

static int nonce_ok(const char *n)
{
    if (!n || strlen(n) != 43)
        return 0;
    for (; *n; n++)
        if (!((*n >= 'a' && *n <= 'z') || (*n >= 'A' && *n <= 'Z') || (*n >= '0' && *n <= '9') ||
              *n == '-' || *n == '_'))
            return 0;
    return 1;
}

static int reply_ok(const json_t *m, const char *k, size_t max)
{
    const char *s = str(m, k);
    return s && *s && strlen(s) <= max;
}

/* What the protocol says line (a whole one, without its newline) must do, from the state
 * before it; *k: the index of the app it answers. m: the line decoded, or NULL. */
static enum expect predict(const struct snap *s, const json_t *m, int *k)
{
    const char *type = str(m, "type"), *id = str(m, "id");
    *k = -1;
    if (!json_is_object(m) || !type)
        return X_PROTO;
    if (s->ph == PH_CONTROL) {
        const json_t *v = json_object_get(m, "version");
        if (strcmp(type, "challenge") != 0 || !json_is_integer(v) || json_integer_value(v) != 1 ||
            !nonce_ok(str(m, "nonce")))
            return X_PROTO;
        return auth == A_NONE ? X_REFUSED : X_HELLO;
    }
    if (s->ph == PH_WELCOME) {
        const json_t *uid = json_object_get(m, "uid");
        if (strcmp(type, "error") == 0)
            return X_REFUSED;
        return strcmp(type, "welcome") == 0 && json_is_integer(uid) && json_integer_value(uid) >= 0
                   ? X_WELCOME : X_PROTO;
    }
    int answer = !strcmp(type, "registered") || !strcmp(type, "error") || !strcmp(type, "link");
    for (unsigned i = 0; id && i < s->n && *k < 0; i++)
        if (s->app[i].id[0] && strcmp(s->app[i].id, id) == 0)
            *k = (int)i;
    if (answer && id && *k < 0)
        return X_PROTO;
    if (strcmp(type, "registered") == 0 && *k >= 0) {
        const char *alias = str(m, "alias");
        if (!reply_ok(m, "alias", 255) || !reply_ok(m, "url", 2048))
            return X_PROTO;
        if ((!s->app[*k].has_alias || strcmp(s->app[*k].alias, alias) != 0) &&
            !reply_ok(m, "link", 4096))
            return X_PROTO;
        return X_REGISTERED;
    }
    if (strcmp(type, "error") == 0)
        return *k >= 0 ? X_ERROR : X_NOTICE;
    return answer ? X_PROTO : X_NOTHING;
}

/* The welcome's effect: each app kept, removed, registered or unregistered in list order. */
static void check_welcome(const struct snap *s, const json_t *m, struct tconn *c,
                          const json_t *out)
{
    const json_t *gp = json_object_get(json_object_get(m, "policy"), "poll");
    size_t k = 0;
    CHECK(c->ph == PH_READY && !c->dead && T->ever_welcomed && !T->opening);
    if (s->opening)
        CHECK(T->open_w.done && T->open_w.rc == 0);
    if (json_is_integer(gp) && s->poll > 0 && json_integer_value(gp) > 0 &&
        json_integer_value(gp) <= POLICY_SECONDS_MAX)
        CHECK(T->policy.poll == json_integer_value(gp));
    else
        CHECK(T->policy.poll == s->poll);
    if (T->stopping) { /* woken to take the apps back: unregisters, then GOAWAY */
        apps_unchanged_but(s, -1, 0);
        for (struct app_entry *a = T->apps; a; a = a->next)
            if (a->alias && !a->keep) {
                const json_t *u = json_array_get(out, k++);
                CHECK(streq(str(u, "type"), "unregister") && streq(str(u, "alias"), a->alias));
            }
        CHECK(k == json_array_size(out) && c->closing && !c->goaway_sent);
        return;
    }
    struct app_entry *a = T->apps;
    for (unsigned i = 0; i < s->n; i++) {
        const struct app_snap *p = &s->app[i];
        if (p->abandoned && !p->has_alias)
            continue; /* nobody waits for it and it has no route: gone */
        if (p->gone) {
            const json_t *u = json_array_get(out, k++);
            CHECK(p->has_alias && streq(str(u, "type"), "unregister") &&
                  streq(str(u, "alias"), p->alias));
            continue;
        }
        CHECK(a == p->a);
        if (p->direct_port && p->has_alias) {
            CHECK(app_same(p, a)); /* a direct route does not live on the tunnel */
        } else {
            CHECK(a->id[0] && a->rereg == (p->has_alias && !p->w) && a->w == p->w);
            check_register(json_array_get(out, k++), a);
        }
        a = a->next;
    }
    CHECK(!a && k == json_array_size(out));
    if (s->ever_welcomed && !s->wake && c->rereg_pending == 0)
        CHECK(E.reconnected == 1);
    if (!s->ever_welcomed || s->wake)
        CHECK(E.reconnected == 0);
}

static void check_registered(const struct snap *s, int k, const json_t *m, const json_t *out)
{
    const struct app_snap *p = &s->app[k];
    const char *alias = str(m, "alias");
    struct app_entry *a = p->a;
    if (p->abandoned) { /* its caller left: the route goes back (or waits for a new agent) */
        const json_t *u = json_array_get(out, 0);
        apps_unchanged_but(s, k, 1);
        CHECK(json_array_size(out) == 1 && streq(str(u, "alias"), alias) &&
              streq(str(u, "type"), p->release ? "release" : "unregister"));
        return;
    }
    apps_unchanged_but(s, k, 0);
    CHECK(streq(a->alias, alias) && !a->id[0] && !a->w && !a->fresh && !a->rereg);
    CHECK(json_array_size(out) == 0);
    if (p->w) { /* the caller gets the answer, once, with the local name */
        CHECK(p->w->done && p->w->rc == 0 && streq(str(p->w->reply, "alias"), alias) &&
              streq(str(p->w->reply, "local"), a->local) && E.ready == 0);
    } else if (!p->has_alias || strcmp(p->alias, alias) != 0) {
        CHECK(E.ready == 1 && strcmp(E.ready_alias, alias) == 0);
    } else {
        CHECK(E.ready == 0);
    }
    if (json_is_true(json_object_get(m, "wanted")))
        CHECK(T->conn->wanted);
}

static void check_error(const struct snap *s, int k, const json_t *out)
{
    const struct app_snap *p = &s->app[k];
    if (p->w && !p->has_alias) { /* a first registration refused: its caller is told */
        apps_unchanged_but(s, k, 1);
        CHECK(p->w->done && p->w->rc == -EREMOTEIO && p->w->err[0] && printable(p->w->err));
        CHECK(json_array_size(out) == 0);
    } else if (!p->abandoned && p->has_alias) { /* its alias not taken back: anew */
        struct app_entry *a = p->a;
        apps_unchanged_but(s, k, 0);
        CHECK(!a->alias && a->fresh && a->id[0] && strcmp(a->id, p->id) != 0 && a->w == p->w);
        CHECK(json_array_size(out) == 1 && E.notice == 1);
        check_register(json_array_get(out, 0), a);
    } else {
        apps_unchanged_but(s, k, 1);
        CHECK(json_array_size(out) == 0 && E.notice == !p->abandoned);
    }
}

/* The connection ended (conn_teardown) with rc and reason: what the tunnel does next, by its
 * policy. A busy gateway (-EAGAIN) is tried again even while the tunnel opens (attempt is 0
 * or 1 here, under tunnel_conn.c's OPEN_BUSY_TRIES) or has no reconnect. */
static void check_ended(const struct snap *s, int stopping, int rc, const char *reason)
{
    int busy = rc == -EAGAIN;
    CHECK(!T->conn);
    for (struct app_entry *a = T->apps; a; a = a->next)
        CHECK(!a->id[0] && !a->rereg);
    if (stopping) {
        CHECK(!E.reconnecting && !E.lost && !E.sleeping);
    } else if (s->opening && !busy) { /* agent_tunnel_open fails with the reason */
        CHECK(T->open_w.done && T->open_w.rc == rc && T->stopping);
        CHECK(strcmp(T->open_w.err, reason) == 0);
        check_text(reason);
    } else if (s->wake && s->ph != PH_READY) {
        CHECK(E.sleeping == 1 && T->asleep && evtimer_pending(T->retry_ev, NULL));
    } else if (!T->policy.reconnect && !busy) {
        CHECK(E.lost == 1 && T->stopping && strcmp(E.reason, reason) == 0);
    } else {
        CHECK(E.reconnecting == 1 && strcmp(E.reason, reason) == 0);
        CHECK(!s->opening || !T->open_w.done); /* still opening: a busy gateway */
        CHECK(evtimer_pending(T->retry_ev, NULL));
    }
}

/* Feeds one line of the gateway's (with its newline when whole) as mode says, and checks. */
static void feed(const uint8_t *p, size_t n, int whole, int mode)
{
    struct tconn *c = T->conn;
    struct snap s;
    int k = -1, stopping = T->stopping;
    json_t *m = NULL;
    enum expect x = X_NOTHING;
    size_t len = whole ? n - 1 : n, bytes;
    char reason[ERRLEN];
    int rc;
    if (!c)
        return;
    snap_take(&s, c);
    if (c->closing || (len == 0 && whole) || (whole && len == 1 && p[0] == '\r')) {
        x = X_NOTHING; /* nothing is read after a protocol error; empty lines are nothing */
    } else if (len + 1 > TUNNEL_CTL_LINE_MAX) {
        x = X_PROTO;
    } else if (whole) {
        m = json_loadb((const char *)p, len, JSON_REJECT_DUPLICATES, NULL);
        x = predict(&s, m, &k);
    }
    memset(&E, 0, sizeof(E));
    if (mode == 3) {
        evbuffer_add(G.out, p, n);
        if (G.deferred) {
            G.deferred = 0;
            CHECK(nghttp2_session_resume_data(G.h2, G.sid) == 0);
        }
        struct evbuffer *in = evbuffer_new();
        gw_send(in);
        agent_read(c, in); /* a whole line fits in the stream's window */
        evbuffer_free(in);
        CHECK(evbuffer_get_length(G.out) == 0);
    } else {
        size_t piece = mode == 0 ? n : mode == 1 ? 7 : 1;
        for (size_t off = 0; off < n; off += piece)
            cmsg_input(c, p + off, n - off < piece ? n - off : piece);
    }
    json_t *out = queued(c, 0, &bytes);
    CHECK(json_array_size(out) <= s.n + 1); /* at most one message per app, or the hello */
    switch (x) {
    case X_NOTHING:
    case X_NOTICE:
        apps_unchanged_but(&s, -1, 0);
        CHECK(c->ph == s.ph && c->closing == s.closing && !c->dead && bytes == 0);
        CHECK(E.notice == (x == X_NOTICE) && !E.ready && !E.reconnected);
        break;
    case X_PROTO:
        apps_unchanged_but(&s, -1, 0);
        CHECK(c->ph == s.ph && c->closing && c->goaway_sent && !c->dead && c->rc == -EPROTO);
        CHECK(strncmp(c->reason, PROTO_PREFIX, strlen(PROTO_PREFIX)) == 0);
        CHECK(bytes == 0 && !E.notice && !E.ready);
        break;
    case X_REFUSED: {
        /* A refusal (or no proof to give): the reason, printable, what the gateway said. */
        char code[40], want[128];
        tun_printable(code, sizeof(code), str(m, "code"), 32);
        int busy = s.ph == PH_WELCOME && strcmp(code, "busy") == 0;
        apps_unchanged_but(&s, -1, 0);
        CHECK(c->ph == s.ph && c->dead && c->rc == (busy ? -EAGAIN : -EACCES) && bytes == 0);
        CHECK(printable(c->reason));
        snprintf(want, sizeof(want), "the gateway at %s %s: ", T->where,
                 busy ? "is busy" : "refused this agent");
        if (s.ph == PH_WELCOME)
            CHECK(strncmp(c->reason, want, strlen(want)) == 0);
        break;
    }
    case X_HELLO:
        apps_unchanged_but(&s, -1, 0);
        CHECK(c->ph == PH_WELCOME && !c->dead && !c->closing && json_array_size(out) == 1);
        check_hello(json_array_get(out, 0), str(m, "nonce"));
        break;
    case X_WELCOME:
        check_welcome(&s, m, c, out);
        break;
    case X_REGISTERED:
        CHECK(!c->dead && !c->closing);
        check_registered(&s, k, m, out);
        break;
    case X_ERROR:
        CHECK(!c->dead && !c->closing);
        check_error(&s, k, out);
        break;
    }
    check_state(c);
    memcpy(reason, c->reason, sizeof(reason));
    rc = c->rc;
    /* What the agent queued reaches the gateway whole, in order. */
    size_t before = evbuffer_get_length(G.got);
    char *sent = xmalloc(bytes + 1);
    evbuffer_copyout(c->ctl_out, sent, bytes);
    conn_pump(c);
    exchange();
    if (T->conn) {
        CHECK(evbuffer_get_length(G.got) == before + bytes);
        CHECK(bytes == 0 || memcmp(evbuffer_pullup(G.got, -1) + before, sent, bytes) == 0);
        evbuffer_drain(G.got, evbuffer_get_length(G.got));
        if (x == X_PROTO) /* GOAWAY with what the agent holds against the gateway */
            CHECK(G.goaway && G.goaway_code == NGHTTP2_PROTOCOL_ERROR &&
                  strcmp(G.goaway_dbg, reason + strlen(PROTO_PREFIX)) == 0);
    } else {
        CHECK(x == X_REFUSED); /* nothing else ends a connection at once */
        check_ended(&s, stopping, rc, reason);
    }
    free(sent);
    json_decref(out);
    json_decref(m);
}

/* The gateway closes the connection (conn_event_cb: EOF), or ends it after the GOAWAY. */
static void gateway_closes(void)
{
    struct tconn *c = T->conn;
    if (!c)
        return;
    struct snap s;
    char reason[ERRLEN];
    int stopping = T->stopping;
    snap_take(&s, c);
    memset(&E, 0, sizeof(E));
    if (c->closing)
        conn_fail(c, "%s", c->reason[0] ? c->reason : "closed");
    else
        conn_fail_rc(c, -ECONNRESET, "the gateway closed the connection");
    memcpy(reason, c->reason, sizeof(reason));
    int rc = c->rc;
    conn_pump(c);
    check_ended(&s, stopping, rc, reason);
}

static void tunnel_free(void)
{
    struct agent_tunnel *t = T;
    while (t->apps) {
        struct app_entry *a = t->apps;
        t->apps = a->next;
        app_entry_free(a);
    }
    for (size_t i = 0; i < JG_ARRAY_LEN(W); i++) {
        if (W[i].done && W[i].rc == 0)
            CHECK(json_is_object(W[i].reply));
        json_decref(W[i].reply);
    }
    json_decref(t->open_w.reply);
    event_free(t->retry_ev);
    event_base_free(t->base);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cond);
    free(t);
    T = NULL;
    nghttp2_session_del(G.h2);
    evbuffer_free(G.out);
    evbuffer_free(G.got);
    close(peer);
    peer = -1;
}

/* ---- set-up once ----------------------------------------------------------------------------- */

static void rm_sdir(void)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/agent.token", sdir);
    unlink(p);
    rmdir(sdir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv); /* libFuzzer calls it once, first */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char p[128];
    log_init("fuzz_agent_ctl", 0, LOG_LVL_ERR);
    signal(SIGPIPE, SIG_IGN);
    CHECK(strlen(NONCE) == 43);
    /* A job's key and a certificate for it (the agent only sends and signs with them). */
    key = EVP_EC_gen("P-256");
    cert = X509_new();
    X509_NAME *name = X509_NAME_new();
    BIO *b = BIO_new(BIO_s_mem());
    CHECK(key && cert && name && b);
    CHECK(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"job 123456",
                                     -1, -1, 0));
    CHECK(X509_set_version(cert, 2) && ASN1_INTEGER_set(X509_get_serialNumber(cert), 1) &&
          X509_gmtime_adj(X509_getm_notBefore(cert), 0) &&
          X509_gmtime_adj(X509_getm_notAfter(cert), 86400) && X509_set_subject_name(cert, name) &&
          X509_set_issuer_name(cert, name) && X509_set_pubkey(cert, key) &&
          X509_sign(cert, key, EVP_sha256()) > 0 && PEM_write_bio_X509(b, cert));
    char *pem;
    long n = BIO_get_mem_data(b, &pem);
    cert_pem = xstrndup(pem, (size_t)n);
    BIO_free(b);
    X509_NAME_free(name);
    /* The personal gateway's agent token, as a pinned gateway's state directory holds it. */
    snprintf(sdir, sizeof(sdir), "/tmp/jg-fuzz-agentctl-XXXXXX");
    CHECK(mkdtemp(sdir));
    atexit(rm_sdir);
    snprintf(p, sizeof(p), "%s/agent.token", sdir);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CHECK(fd >= 0 && write(fd, token, strlen(token)) == (ssize_t)strlen(token) &&
          write(fd, "\n", 1) == 1 && close(fd) == 0);
    return 0;
}

/* ---- the input ------------------------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const welcome_policy[] = {"", ",\"policy\":{\"poll\":30,\"checkin\":60}",
                                                 ",\"policy\":{\"poll\":120}",
                                                 ",\"policy\":{\"poll\":0}"};
    char line[256];
    if (size < 4)
        return 0;
    uint8_t how = data[0], more = data[1], apps = data[2], apps2 = data[3];
    int phase = how & 3, mode = (more >> 3) & 3;
    const uint8_t *p = data + 4, *end = data + size, *nl;
    memset(W, 0, sizeof(W));
    tunnel_new(how, more);
    if (T->ever_welcomed)
        apps_before(apps, apps2);
    conn_make();
    if (phase >= 1) { /* the challenge, as the gateway sends it at once */
        int n = snprintf(line, sizeof(line), "{\"type\":\"challenge\",\"version\":1,"
                         "\"nonce\":\"%s\"}\n", NONCE);
        feed((const uint8_t *)line, (size_t)n, 1, 3);
        CHECK(T->conn && T->conn->ph == PH_WELCOME);
    }
    if (phase >= 2) {
        int n = snprintf(line, sizeof(line), "{\"type\":\"welcome\",\"uid\":1000,\"user\":"
                         "\"alice\",\"tunnel\":\"7\"%s%s}\n", welcome_policy[(apps2 >> 5) & 3],
                         apps2 & 0x80 ? ",\"job_refused\":\"no such job\"" : "");
        feed((const uint8_t *)line, (size_t)n, 1, 3);
        CHECK(T->conn && T->conn->ph == PH_READY);
        apps_after(apps, apps2);
    }
    for (; p < end && T->conn; p = nl + 1) {
        nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            feed(p, (size_t)(end - p), 0, mode);
            break;
        }
        feed(p, (size_t)(nl - p) + 1, 1, mode);
    }
    gateway_closes();
    tunnel_free();
    return 0;
}
