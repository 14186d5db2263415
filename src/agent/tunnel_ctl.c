/* tunnel_ctl — the control stream and the app list: challenge -> hello ->
 * welcome, register / unregister and their answers, re-registration after a
 * reconnect, and the struct app_entry list that keeps each app's alias
 * across connections. Framing and codec come from tunnel_proto.h.
 *
 * Tunnel thread only. A handler that finds the gateway in the wrong records
 * it (conn_fail, conn_protocol_error); its caller ends with conn_pump. */
#include "tunnel-int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "tunnel_proto.h"
#include "util.h"

#ifndef JG_VERSION
#define JG_VERSION "unknown"
#endif

#define NONCE_LEN 43

struct app_entry *app_entry_find_local(struct agent_tunnel *t, const char *local)
{
    for (struct app_entry *a = t->apps; a; a = a->next)
        if (!a->abandoned && strcmp(a->local, local) == 0)
            return a;
    return NULL;
}

static struct app_entry *app_entry_find_id(struct agent_tunnel *t, const char *id)
{
    for (struct app_entry *a = t->apps; a; a = a->next)
        if (a->id[0] && strcmp(a->id, id) == 0)
            return a;
    return NULL;
}

void app_entry_free(struct app_entry *a)
{
    if (a->timer)
        event_free(a->timer);
    free(a->alias);
    free(a);
}

void app_entry_remove(struct agent_tunnel *t, struct app_entry *a)
{
    for (struct app_entry **pp = &t->apps; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    app_entry_free(a);
}

/* Queues one control message (one line). secret: wipe our copy afterwards. */
static int cmsg_send(struct tconn *c, json_t *msg, int secret)
{
    char *s;
    size_t n;
    int rc = tunnel_msg_encode(msg, &s, &n);
    if (rc == -EMSGSIZE) {
        conn_fail(c, "a control message would be longer than %d bytes", TUNNEL_CTL_LINE_MAX);
        return -1;
    }
    if (rc < 0) {
        conn_fail(c, "cannot encode a control message");
        return -1;
    }
    if (evbuffer_add(c->ctl_out, s, n) < 0) {
        conn_fail(c, "out of memory");
        rc = -1;
    }
    if (secret)
        OPENSSL_cleanse(s, n);
    free(s);
    if (rc == 0 && c->ctl_deferred && c->ctl && c->ctl->br.sid) {
        c->ctl_deferred = 0;
        (void)nghttp2_session_resume_data(c->h2, c->ctl->br.sid);
    }
    return rc;
}

void cmsg_register(struct tconn *c, struct app_entry *a)
{
    (void)xsnprintf(a->id, sizeof(a->id), "r%u", ++c->next_id);
    json_t *m = json_pack("{s:s,s:s,s:s,s:s}", "type", "register", "id", a->id, "name", a->name,
                          "local", a->local);
    if (m && a->direct_port)
        (void)json_object_set_new(m, "direct", json_pack("{s:i}", "port", (int)a->direct_port));
    if (m && a->cb_port)
        (void)json_object_set_new(m, "callback", json_pack("{s:i}", "port", (int)a->cb_port));
    if (m && a->cross_site)
        (void)json_object_set_new(m, "cross_site", json_true());
    if (m && a->alias)
        (void)json_object_set_new(m, "alias", json_string(a->alias));
    else if (m && a->ttl > 0)
        (void)json_object_set_new(m, "ttl", json_integer(a->ttl));
    if (!m) {
        conn_fail(c, "cannot build a register message");
        return;
    }
    (void)cmsg_send(c, m, 0);
}

void cmsg_unregister(struct tconn *c, const char *alias)
{
    json_t *m = json_pack("{s:s,s:s}", "type", "unregister", "alias", alias);
    if (m)
        (void)cmsg_send(c, m, 0);
}

void cmsg_release(struct tconn *c, const char *alias)
{
    json_t *m = json_pack("{s:s,s:s}", "type", "release", "alias", alias);
    if (m)
        (void)cmsg_send(c, m, 0);
}

void cmsg_sleep(struct tconn *c)
{
    json_t *m = json_pack("{s:s}", "type", "sleep");
    if (m)
        (void)cmsg_send(c, m, 0);
}

/* The hello's "policy": what the gateway needs to know of ours
 * (docs/tunnel-protocol.md). */
static json_t *hello_policy(const struct agent_tunnel *t)
{
    const struct policy *p = &t->policy;
    int64_t checkin = p->poll ? p->poll : TUNNEL_CHECKIN_MS / 1000;
    json_t *o = json_pack("{s:b,s:b,s:I,s:b}", "reconnect", p->reconnect, "callback",
                          p->callback, "poll", (json_int_t)p->poll, "sleeps", policy_sleeps(p));
    if (o && policy_sleeps(p)) {
        (void)json_object_set_new(o, "keepalive", json_integer(p->keepalive));
        (void)json_object_set_new(o, "checkin", json_integer(checkin));
    }
    return o;
}

ssize_t cmsg_read_cb(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
                     uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct tconn *c = ud;
    (void)s;
    (void)sid;
    (void)flags;
    (void)src;
    int n = evbuffer_remove(c->ctl_out, buf, len);
    if (n <= 0) {
        c->ctl_deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return n;
}

static int nonce_ok(const char *n)
{
    if (!n || strlen(n) != NONCE_LEN)
        return 0;
    for (const char *p = n; *p; p++)
        if (!app_name_char_ok(*p) || *p == '.')
            return 0;
    return 1;
}

static void on_challenge(struct tconn *c, json_t *m)
{
    struct agent_tunnel *t = c->t;
    json_t *v = json_object_get(m, "version");
    const char *nonce = json_string_value(json_object_get(m, "nonce"));
    if (!json_is_integer(v) || json_integer_value(v) != 1) {
        conn_protocol_error(c, "unsupported tunnel protocol version in the challenge");
        return;
    }
    if (!nonce_ok(nonce)) {
        conn_protocol_error(c, "the challenge's nonce is not 43 base64url characters");
        return;
    }
    json_t *auth = trust_hello_auth(c, nonce);
    if (!auth)
        return;
    json_t *hello = json_pack("{s:s,s:i,s:s,s:s}", "type", "hello", "version", 1, "agent",
                              "jobgate/" JG_VERSION, "node", t->node);
    if (hello && t->job)
        (void)json_object_set_new(hello, "job", json_string(t->job));
    if (hello)
        (void)json_object_set_new(hello, "policy", hello_policy(t));
    if (!hello || json_object_set_new(hello, "auth", auth) < 0) {
        json_decref(hello);
        conn_fail(c, "cannot build the hello");
        return;
    }
    if (cmsg_send(c, hello, 1) == 0)
        c->ph = PH_WELCOME;
}

static void on_welcome(struct tconn *c, json_t *m)
{
    struct agent_tunnel *t = c->t;
    json_t *uid = json_object_get(m, "uid");
    if (!json_is_integer(uid) || json_integer_value(uid) < 0) {
        conn_protocol_error(c, "the welcome has no uid");
        return;
    }
    c->ph = PH_READY;
    c->ready_at = now_mono_ms();
    evtimer_del(c->phase_timer);
    /* The backoff is reset only by a connection that lasted (conn_teardown):
     * a gateway that welcomes and then drops every tunnel must not be
     * redialled a few times a second for ever. */
    int again = t->ever_welcomed;
    t->ever_welcomed = 1;
    /* The gateway's word on how often we come back (its poll_min, its cap). */
    json_t *gp = json_object_get(json_object_get(m, "policy"), "poll");
    if (json_is_integer(gp) && t->policy.poll > 0 && json_integer_value(gp) > 0 &&
        json_integer_value(gp) <= POLICY_SECONDS_MAX &&
        json_integer_value(gp) != t->policy.poll) {
        if (!again)
            tun_notice(t, "the gateway asks to be polled every %" JSON_INTEGER_FORMAT " s, not %"
                       PRId64 " s", json_integer_value(gp), t->policy.poll);
        t->policy.poll = json_integer_value(gp);
    }
    const char *refused = json_string_value(json_object_get(m, "job_refused"));
    if (refused && !again) {
        char why[201];
        tun_printable(why, sizeof(why), refused, 200); /* the gateway's text: printable */
        tun_notice(t, "the gateway does not bind this app to job %s: %s", t->job ? t->job : "?",
                   why);
    }
    if (t->opening) {
        t->opening = 0;
        tun_waiter_done(t, &t->open_w, 0, NULL, NULL);
    }
    if (t->stopping) {
        /* Woken from sleep to take the apps back. */
        tun_close_apps(c);
        return;
    }
    struct app_entry *a = t->apps, *next;
    for (; a; a = next) {
        next = a->next;
        if (a->abandoned && !a->alias) {
            app_entry_remove(t, a);
            continue;
        }
        if (a->direct_port && a->alias)
            continue; /* a direct route does not live on the tunnel */
        if (a->gone) { /* it left while we were away */
            cmsg_unregister(c, a->alias);
            app_entry_remove(t, a);
            continue;
        }
        a->rereg = a->alias != NULL && !a->w;
        if (a->rereg)
            c->rereg_pending++;
        cmsg_register(c, a);
    }
    /* A poll is not news: only a reconnection after a loss is announced. */
    c->announce_reconnected = again && !c->wake;
    if (c->announce_reconnected && c->rereg_pending == 0) {
        struct agent_tunnel_event ev = {.event = "reconnected",
                                        .message = "reconnected to the gateway"};
        c->announce_reconnected = 0;
        tun_tell(t, &ev);
    }
    conn_idle_check(c);
}

static void rereg_answered(struct tconn *c, struct app_entry *a)
{
    if (!a->rereg)
        return;
    a->rereg = 0;
    if (c->rereg_pending > 0 && --c->rereg_pending == 0 && c->announce_reconnected) {
        struct agent_tunnel_event ev = {.event = "reconnected",
                                        .message = "reconnected to the gateway"};
        c->announce_reconnected = 0;
        tun_tell(c->t, &ev);
    }
}

static int reply_str_ok(json_t *m, const char *key, size_t max)
{
    const char *s = json_string_value(json_object_get(m, key));
    return s && *s && strlen(s) <= max;
}

static void on_registered(struct tconn *c, struct app_entry *a, json_t *m)
{
    struct agent_tunnel *t = c->t;
    if (!reply_str_ok(m, "alias", 255) || !reply_str_ok(m, "url", 2048)) {
        conn_protocol_error(c, "a registered answer without alias or url");
        return;
    }
    const char *alias = json_string_value(json_object_get(m, "alias"));
    /* Our own route back comes without a link (we have one); a new one with. */
    if ((!a->alias || strcmp(a->alias, alias) != 0) && !reply_str_ok(m, "link", 4096)) {
        conn_protocol_error(c, "a registered answer for a new route without its link");
        return;
    }
    a->id[0] = '\0';
    if (a->timer)
        evtimer_del(a->timer);
    if (a->abandoned) {
        /* The caller gave up waiting, or the app left meanwhile: take the
         * route back (or let it wait for a new agent). */
        if (a->release)
            cmsg_release(c, alias);
        else
            cmsg_unregister(c, alias);
        rereg_answered(c, a);
        app_entry_remove(t, a);
        conn_idle_check(c);
        return;
    }
    int changed = !a->alias || strcmp(a->alias, alias) != 0;
    int first = a->w != NULL;
    if (json_is_true(json_object_get(m, "wanted")))
        c->wanted = 1; /* requests came while we slept: stay for the keepalive */
    if (changed) {
        free(a->alias);
        a->alias = xstrdup(alias);
    }
    (void)json_object_set_new(m, "local", json_string(a->local));
    if (first) {
        struct waiter *w = a->w;
        a->w = NULL;
        tun_waiter_done(t, w, 0, json_deep_copy(m), NULL);
    } else if (changed) {
        struct agent_tunnel_event ev = {.event = "ready", .reply = m,
                                        .message = "the app is registered anew"};
        tun_tell(t, &ev);
    }
    a->fresh = 0;
    rereg_answered(c, a);
    conn_idle_check(c);
}

static void on_request_error(struct tconn *c, struct app_entry *a, json_t *m)
{
    struct agent_tunnel *t = c->t;
    char msg[300], code[40];
    tun_printable(msg, sizeof(msg), json_string_value(json_object_get(m, "error")), 256);
    tun_printable(code, sizeof(code), json_string_value(json_object_get(m, "code")), 32);
    if (!msg[0])
        (void)xsnprintf(msg, sizeof(msg), "the gateway refused (%s)", code[0] ? code : "no reason");
    a->id[0] = '\0';
    if (a->w && !a->alias) {
        struct waiter *w = a->w;
        a->w = NULL;
        tun_waiter_done(t, w, -EREMOTEIO, NULL, "%s", msg);
        app_entry_remove(t, a);
        return;
    }
    if (a->abandoned) { /* it left while the answer was on its way */
        rereg_answered(c, a);
        app_entry_remove(t, a);
        conn_idle_check(c);
        return;
    }
    if (a->alias) {
        char palias[256];
        tun_printable(palias, sizeof(palias), a->alias, 255);
        tun_notice(t, "the gateway did not take %s back (%s); registering %s anew", palias, msg,
                   a->name);
        free(a->alias);
        a->alias = NULL;
        a->fresh = 1;
        cmsg_register(c, a);
        return;
    }
    if (!a->abandoned)
        tun_notice(t, "the gateway refused to register %s again (%s); it is not reachable any more",
                   a->name, msg);
    rereg_answered(c, a);
    app_entry_remove(t, a);
    conn_idle_check(c);
}

static void cmsg_message(struct tconn *c, const char *line, size_t len)
{
    struct agent_tunnel *t = c->t;
    if (len == 0 || (len == 1 && line[0] == '\r'))
        return;
    json_t *m;
    char why[200], pwhy[161];
    if (tunnel_msg_decode(line, len, &m, why, sizeof(why)) < 0) {
        /* jansson quotes the gateway's bytes: printable before they become a message */
        tun_printable(pwhy, sizeof(pwhy), why, 160);
        conn_protocol_error(c, "malformed control message (%s)", pwhy);
        return;
    }
    const char *type = json_string_value(json_object_get(m, "type"));
    char ptype[40];
    tun_printable(ptype, sizeof(ptype), type, 32);
    if (!type) {
        conn_protocol_error(c, "a control message without a type");
    } else if (c->ph == PH_CONTROL) {
        if (strcmp(type, "challenge") == 0)
            on_challenge(c, m);
        else
            conn_protocol_error(c, "expected a challenge, got '%s'", ptype);
    } else if (c->ph == PH_WELCOME) {
        if (strcmp(type, "welcome") == 0) {
            on_welcome(c, m);
        } else if (strcmp(type, "error") == 0) {
            char msg[300], code[40];
            tun_printable(msg, sizeof(msg), json_string_value(json_object_get(m, "error")), 256);
            tun_printable(code, sizeof(code), json_string_value(json_object_get(m, "code")), 32);
            if (strcmp(code, "busy") == 0) /* it cannot check credentials now: again later */
                conn_fail_rc(c, -EAGAIN, "the gateway at %s is busy: %s", t->where,
                             msg[0] ? msg : "no reason given");
            else
                conn_fail_rc(c, -EACCES, "the gateway at %s refused this agent: %s%s%s%s",
                             t->where, msg[0] ? msg : "no reason given", code[0] ? " (" : "",
                             code, code[0] ? ")" : "");
        } else {
            conn_protocol_error(c, "expected a welcome, got '%s'", ptype);
        }
    } else {
        const char *id = json_string_value(json_object_get(m, "id"));
        int answer = strcmp(type, "registered") == 0 || strcmp(type, "error") == 0 ||
                     strcmp(type, "link") == 0;
        struct app_entry *a = id ? app_entry_find_id(t, id) : NULL;
        if (answer && id && !a) {
            conn_protocol_error(c, "an answer to no request of ours ('%s')", ptype);
        } else if (strcmp(type, "registered") == 0 && a) {
            on_registered(c, a, m);
        } else if (strcmp(type, "error") == 0 && a) {
            on_request_error(c, a, m);
        } else if (strcmp(type, "error") == 0) {
            char msg[300];
            tun_printable(msg, sizeof(msg), json_string_value(json_object_get(m, "error")), 256);
            tun_notice(t, "the gateway says: %s", msg[0] ? msg : "(an error without a message)");
        } else if (answer) {
            conn_protocol_error(c, "a '%s' answer to a request that was not a register", ptype);
        }
        /* Other types: from a newer gateway; ignored. */
    }
    json_decref(m);
}

void cmsg_input(struct tconn *c, const uint8_t *data, size_t len)
{
    while (len > 0 && !c->dead && !c->closing) {
        const char *line;
        size_t n;
        int r = tunnel_lines_next(&c->lines, &data, &len, &line, &n);
        if (r < 0) {
            conn_protocol_error(c, "a control message longer than %d bytes", TUNNEL_CTL_LINE_MAX);
            return;
        }
        if (r == 0)
            return;
        cmsg_message(c, line, n);
    }
}

/* Makes local unique among our apps (two apps of one name on one tunnel). */
void app_entry_pick_local(struct agent_tunnel *t, struct app_entry *a)
{
    memcpy(a->local, a->name, strlen(a->name) + 1);
    for (unsigned i = 2; app_entry_find_local(t, a->local) && i < 100000; i++)
        (void)xsnprintf(a->local, sizeof(a->local), "%s-%u", a->name, i);
}
