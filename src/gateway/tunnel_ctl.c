/*
 * tunnel_ctl — the control stream of a gateway tunnel (docs/tunnel-protocol.md):
 * its lines, and after the hello (tunnel_hello.c) register / unregister /
 * link / sleep / release, each answered on the same stream. Routes change
 * only through the registry. See tunnel-int.h for who may touch what.
 */
#include "tunnel.h"
#include "tunnel-int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "config.h"
#include "log.h"
#include "registry.h"
#include "util.h"

void tctl_send(struct tunnel *t, json_t *msg)
{
    char *line;
    size_t len;
    if (tunnel_msg_encode(msg, &line, &len) < 0)
        return;
    evbuffer_add(t->ctl_out, line, len);
    free(line);
    if (evbuffer_get_length(t->ctl_out) > TUN_CTL_OUT_MAX) {
        /* Its window stays shut while it keeps asking: the answers would pile up without end. */
        tunnel_kill(t, "the agent does not read its control answers (%zu bytes waiting)",
               evbuffer_get_length(t->ctl_out));
        return;
    }
    if (t->ctl_deferred && t->ctl_id > 0) {
        t->ctl_deferred = 0;
        nghttp2_session_resume_data(t->h2, t->ctl_id);
    }
}

int tctl_reg_find(const struct tunnel *t, const char *alias)
{
    for (unsigned i = 0; i < t->nreg; i++)
        if (strcmp(t->reg[i].alias, alias) == 0)
            return (int)i;
    return -1;
}

static void ctl_error(struct tunnel *t, const char *id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void ctl_error(struct tunnel *t, const char *id, const char *code, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "error", msg);
    if (o && id)
        json_object_set_new(o, "id", json_string(id));
    tctl_send(t, o);
}

ssize_t tctl_provide(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len,
                           uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct tunnel *t = ud;
    size_t n = evbuffer_get_length(t->ctl_out);
    if (n == 0 && t->st != T_CLOSING) {
        t->ctl_deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n > len)
        n = len;
    if (n)
        evbuffer_remove(t->ctl_out, buf, n);
    if (t->st == T_CLOSING && evbuffer_get_length(t->ctl_out) == 0) {
        *flags |= NGHTTP2_DATA_FLAG_EOF; /* on_frame_send then ends the session */
        t->ctl_eof_sent = 1;
    }
    return (ssize_t)n;
}

/* Refuses the hello (or gives up): the reason goes to the agent, then GOAWAY. */
void tctl_refuse(struct tunnel *t, const char *code, const char *why)
{
    log_warn("tunnel=%" PRIx64 " peer=%s refused: %s", t->id, t->peer, why);
    ctl_error(t, NULL, code, "%s", why);
    t->st = T_CLOSING;
    if (t->ctl_id > 0) {
        t->ctl_deferred = 0;
        nghttp2_session_resume_data(t->h2, t->ctl_id);
    }
}

static int reg_mine(void *arg, const char *alias)
{
    return tctl_reg_find(arg, alias) >= 0;
}

/* Adds url, link and expires to an answer; 0 or -1 (the error is answered). */
/* The uid is at its [quota] routes. */
static void quota_error(struct tunnel *t, const char *id)
{
    char why[160];
    registry_quota_why(t->hub->reg, t->uid, 0, why, sizeof(why));
    ctl_error(t, id, "quota", "%s", why);
}

/* Adds a fresh link of alias (a route of kind) to the answer o; -1 after
 * answering the error (o freed). */
static int add_link(struct tunnel *t, const char *id, json_t *o, const char *alias, int64_t ttl,
                    enum route_kind kind)
{
    struct registry_link l;
    int rc = registry_link(t->hub->reg, alias, t->uid, kind, ttl, &l);
    if (rc < 0) {
        char why[160];
        json_decref(o);
        if (rc == -EDQUOT) {
            registry_quota_why(t->hub->reg, t->uid, 1, why, sizeof(why));
            ctl_error(t, id, "quota", "%s", why);
        } else {
            ctl_error(t, id, REGISTRY_CODE(rc), "could not store a link: %s", registry_why(rc));
        }
        return -1;
    }
    json_object_set_new(o, "url", json_string(l.url));
    json_object_set_new(o, "link", json_string(l.link));
    json_object_set_new(o, "expires", json_integer(l.expires));
    memset(&l, 0, sizeof(l));
    return 0;
}

/* register with "direct": {"port": P[, "host": IP]}: a route that the gateway
 * dials itself, to the job's own TLS endpoint (backend_direct.c). Only a
 * job's tunnel, only to one of the job's destinations. Not one of the
 * tunnel's apps: it lives until the job ends or the agent unregisters it. */
/* The job's own endpoint named by d ({"port": P[, "host": IP]}, of a
 * "direct" or "callback" register): one of the job's destinations, into
 * *port and host. 0, or -1 after answering the error. */
static int job_endpoint(struct tunnel *t, const char *id, const char *what, json_t *d,
                        uint16_t *port, char *host, size_t hostlen)
{
    json_t *pv = json_object_get(d, "port");
    const char *h = json_string_value(json_object_get(d, "host"));
    if (!t->job) {
        ctl_error(t, id, "forbidden", "a %s belongs to a job: prove it with the job's "
                  "certificate (a --jobgate job)",
                  strcmp(what, "direct") == 0 ? "direct route" : "callback endpoint");
        return -1;
    }
    if (!json_is_integer(pv) || json_integer_value(pv) < 1 || json_integer_value(pv) > 65535 ||
        (json_object_get(d, "host") && !h)) {
        ctl_error(t, id, "invalid", "'%s' must be {\"port\": 1..65535[, \"host\": an IP "
                  "address]}", what);
        return -1;
    }
    *port = (uint16_t)json_integer_value(pv);
    int rc = h ? (strlen(h) < hostlen ? 0 : -EINVAL) :
             registry_job_dest_pick(t->hub->reg, t->job, t->uid, *port, host, hostlen);
    if (h && rc == 0) {
        snprintf(host, hostlen, "%s", h);
        rc = registry_job_dest(t->hub->reg, t->job, t->uid, host, *port);
    }
    if (rc == -ESTALE) {
        ctl_error(t, id, "ended", "job %u has ended", (unsigned)t->job);
        return -1;
    }
    if (rc < 0) {
        ctl_error(t, id, "not_destination",
                  "port %u%s%s is not a destination of job %u yet (write to "
                  "JOBGATE_READY_FD once it listens)", (unsigned)*port,
                  h ? " of " : "", h ? h : "", (unsigned)t->job);
        return -1;
    }
    return 0;
}

static void register_direct(struct tunnel *t, const char *id, json_t *m, const char *name,
                            int64_t ttl)
{
    struct route r;
    memset(&r, 0, sizeof(r));
    if (job_endpoint(t, id, "direct", json_object_get(m, "direct"), &r.port, r.path,
                     sizeof(r.path)) < 0)
        return;
    r.uid = t->uid;
    r.job = t->job;
    r.kind = ROUTE_DIRECT;
    r.cross_site = json_is_true(json_object_get(m, "cross_site")); /* checked by the caller */
    r.created = now_real();
    r.v6 = strchr(r.path, ':') != NULL;
    snprintf(r.name, sizeof(r.name), "%s", name);
    int rc = registry_direct_add(t->hub->reg, &r);
    if (rc == -ESTALE)
        return ctl_error(t, id, "ended", "job %u has ended", (unsigned)t->job);
    if (rc == -EMLINK)
        return ctl_error(t, id, "limit", "job %u has %d direct routes already", (unsigned)t->job,
                         REGISTRY_DIRECT_MAX);
    if (rc == -EPERM)
        return ctl_error(t, id, "not_destination", "%s port %u is not a destination of job %u",
                         r.path, (unsigned)r.port, (unsigned)t->job);
    if (rc == -EDQUOT)
        return quota_error(t, id);
    if (rc < 0)
        return ctl_error(t, id, REGISTRY_CODE(rc), "could not register the route: %s",
                         registry_why(rc));
    json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "type", "registered", "alias", r.alias, "name",
                          r.name, "kind", "direct");
    if (!o)
        return;
    if (id)
        json_object_set_new(o, "id", json_string(id));
    if (add_link(t, id, o, r.alias, ttl, ROUTE_DIRECT) < 0) {
        registry_route_remove(t->hub->reg, r.alias, t->uid, ROUTE_DIRECT, t->uid,
                              "no link could be stored");
        return;
    }
    tctl_send(t, o);
}

/* register: a new route, or the agent's own route back after a reconnect. */
static void op_register(struct tunnel *t, const char *id, json_t *m)
{
    const char *name = json_string_value(json_object_get(m, "name"));
    const char *local = json_string_value(json_object_get(m, "local"));
    const char *alias = json_string_value(json_object_get(m, "alias"));
    int64_t ttl;
    if (!app_name_valid(name, ROUTE_NAME_MAX))
        return ctl_error(t, id, "invalid", "'name' must be " APP_NAME_RULE);
    if (!app_name_valid(local, TUN_LOCAL_MAX))
        return ctl_error(t, id, "invalid", "'local' must be " APP_NAME_RULE);
    if (app_json_ttl(m, t->hub->cfg->link_ttl, &ttl) < 0)
        return ctl_error(t, id, "invalid", "'ttl' must be " APP_LINK_TTL_RULE);
    if (json_object_get(m, "alias") && !alias)
        return ctl_error(t, id, "invalid", "'alias' must be a string");
    json_t *cross = json_object_get(m, "cross_site");
    if (cross && !json_is_boolean(cross))
        return ctl_error(t, id, "invalid", "'cross_site' must be true or false");
    if (t->asleep)
        return ctl_error(t, id, "invalid", "this tunnel said it sleeps: register on the next one");
    if (json_object_get(m, "direct"))
        return register_direct(t, id, m, name, ttl);

    struct tunnel_claim claim = {.uid = t->uid, .job = t->job, .tunnel = t->id, .alias = alias,
                                 .name = name,
                                 .local = local, .full = t->nreg >= TUN_MAX_REG,
                                 .mine = reg_mine, .arg = t,
                                 .once = t->once, .poll = t->poll, .checkin = t->checkin,
                                 .cross_site = json_is_true(cross)};
    char cb_host[46];
    json_t *cb = json_object_get(m, "callback");
    if (cb && !t->callback)
        return ctl_error(t, id, "invalid", "'callback' needs a policy with callback in the hello");
    if (cb && job_endpoint(t, id, "callback", cb, &claim.cb_port, cb_host, sizeof(cb_host)) < 0)
        return;
    claim.cb_host = cb_host;
    struct route r;
    int rc = registry_tunnel_attach(t->hub->reg, &claim, &r);
    if (rc == -EMLINK)
        return ctl_error(t, id, "limit", "at most %d apps per tunnel", TUN_MAX_REG);
    if (rc == -EPERM)
        return ctl_error(t, id, "forbidden", "%s is not one of your tunnel's apps", r.alias);
    if (rc == -ESTALE)
        return ctl_error(t, id, "ended", "job %u has ended", (unsigned)t->job);
    if (rc == -EDQUOT)
        return quota_error(t, id);
    if (rc < 0)
        return ctl_error(t, id, REGISTRY_CODE(rc), "could not register the route: %s",
                         registry_why(rc));
    int slot = tctl_reg_find(t, r.alias);
    if (slot < 0)
        slot = (int)t->nreg++;
    snprintf(t->reg[slot].alias, sizeof(t->reg[slot].alias), "%s", r.alias);
    snprintf(t->reg[slot].local, sizeof(t->reg[slot].local), "%s", local);
    json_t *o = json_pack("{s:s, s:s, s:s}", "type", "registered", "alias", r.alias, "name",
                          r.name);
    if (!o)
        return;
    if (id)
        json_object_set_new(o, "id", json_string(id));
    if (r.wanted)
        json_object_set_new(o, "wanted", json_true()); /* requests came while it slept */
    if (alias && strcmp(alias, r.alias) == 0) {
        /* Its own route back (a reconnect, a poll): the agent has its link
         * already, so none is made (docs/tunnel-protocol.md). */
        char url[REGISTRY_URL_MAX];
        registry_url(t->hub->reg, r.alias, url, sizeof(url));
        json_object_set_new(o, "url", json_string(url));
        tctl_send(t, o);
        return;
    }
    if (add_link(t, id, o, r.alias, ttl, ROUTE_TUNNEL) == 0) {
        tctl_send(t, o);
        return;
    }
    /* No link (the user's [quota] links): the agent cannot open the app, so
     * it is not published; its slot goes with it. */
    if (registry_tunnel_route_remove(t->hub->reg, r.alias, t->uid, t->job, t->id,
                                     "no link could be made") == 0) {
        slot = tctl_reg_find(t, r.alias);
        if (slot >= 0)
            t->reg[slot] = t->reg[--t->nreg];
    } /* else it stays this tunnel's, so that its end detaches it as usual */
}

/* The agent lets one of its routes go without ending it (the run that
 * registered it through a shared tunnel died; its app may live on): the
 * route waits for a new agent as if its tunnel had been lost. */
static void op_release(struct tunnel *t, const char *id, json_t *m)
{
    const char *alias = json_string_value(json_object_get(m, "alias"));
    int slot = alias ? tctl_reg_find(t, alias) : -1;
    if (slot < 0)
        return ctl_error(t, id, "not_found", "this tunnel registered no app '%s'",
                         alias ? alias : "");
    if (t->released >= TUN_MAX_REG)
        return ctl_error(t, id, "limit", "at most %d routes released per tunnel", TUN_MAX_REG);
    const char *aliases[1] = {t->reg[slot].alias};
    registry_tunnel_detach(t->hub->reg, t->id, aliases, 1, 0);
    t->reg[slot] = t->reg[--t->nreg];
    t->released++;
}

/* The agent closes the tunnel to sleep (keepalive ran out): its routes wait
 * for its next poll (or are served by callback) rather than reconnecting. */
static void op_sleep(struct tunnel *t, const char *id)
{
    if (!t->sleeps)
        return ctl_error(t, id, "invalid", "the hello's policy does not let this tunnel sleep "
                         "(keepalive with callback or poll)");
    const char *aliases[TUN_MAX_REG];
    for (unsigned i = 0; i < t->nreg; i++)
        aliases[i] = t->reg[i].alias;
    t->asleep = 1;
    registry_tunnel_detach(t->hub->reg, t->id, aliases, t->nreg, 1);
    log_info("tunnel=%" PRIx64 " uid=%u sleeps: %u app(s), back within %u s", t->id,
             (unsigned)t->uid, t->nreg, (unsigned)t->checkin);
    t->nreg = 0; /* not ours any more: a request waits for the next poll */
}

static void op_unregister(struct tunnel *t, const char *id, json_t *m)
{
    const char *alias = json_string_value(json_object_get(m, "alias"));
    int slot = alias ? tctl_reg_find(t, alias) : -1;
    struct route r;
    /* Not this tunnel's, but the same uid's and job's: a direct route of the
     * job (any of its agents may end it), or a tunnel route whose agent's
     * tunnel slept or was lost (this one came to take it back without
     * registering it first). */
    if (slot < 0 && alias && registry_route_get(t->hub->reg, alias, &r) == 0 &&
        r.uid == t->uid && r.job == t->job &&
        ((r.kind == ROUTE_DIRECT && t->job) || (r.kind == ROUTE_TUNNEL && r.tunnel == 0))) {
        int rc = r.kind == ROUTE_DIRECT
                     ? registry_route_remove(t->hub->reg, alias, t->uid, r.kind, t->uid,
                                             "agent unregistered")
                     : registry_tunnel_route_remove(t->hub->reg, alias, t->uid, t->job, 0,
                                                    "agent unregistered");
        if (rc == -EXDEV)
            return ctl_error(t, id, "not_found", "another agent carries '%s' now", alias);
        if (rc < 0 && rc != -ENOENT)
            return ctl_error(t, id, REGISTRY_CODE(rc), "could not remove the route: %s",
                             registry_why(rc));
        json_t *o = json_pack("{s:s, s:s}", "type", "unregistered", "alias", r.alias);
        if (o && id)
            json_object_set_new(o, "id", json_string(id));
        tctl_send(t, o);
        return;
    }
    if (slot < 0)
        return ctl_error(t, id, "not_found", "this tunnel registered no app '%s'",
                         alias ? alias : "");
    int rc = registry_tunnel_route_remove(t->hub->reg, alias, t->uid, t->job, t->id,
                                          "agent unregistered");
    if (rc == -EXDEV) {
        /* Another agent took it over (this tunnel is stale): not ours to end. */
        t->reg[slot] = t->reg[--t->nreg];
        return ctl_error(t, id, "not_found", "another agent carries '%s' now", alias);
    }
    if (rc < 0 && rc != -ENOENT)
        return ctl_error(t, id, REGISTRY_CODE(rc), "could not remove the route: %s",
                         registry_why(rc));
    json_t *o = json_pack("{s:s, s:s}", "type", "unregistered", "alias", t->reg[slot].alias);
    if (o && id)
        json_object_set_new(o, "id", json_string(id));
    t->reg[slot] = t->reg[--t->nreg];
    tctl_send(t, o);
}

static void op_link(struct tunnel *t, const char *id, json_t *m)
{
    const char *alias = json_string_value(json_object_get(m, "alias"));
    int64_t ttl;
    struct route r;
    if (!alias || tctl_reg_find(t, alias) < 0 || registry_route_get(t->hub->reg, alias, &r) < 0 ||
        r.uid != t->uid || r.kind != ROUTE_TUNNEL || r.tunnel != t->id)
        return ctl_error(t, id, "not_found", "this tunnel has no app '%s'", alias ? alias : "");
    if (app_json_ttl(m, t->hub->cfg->link_ttl, &ttl) < 0)
        return ctl_error(t, id, "invalid", "'ttl' must be " APP_LINK_TTL_RULE);
    json_t *o = json_pack("{s:s, s:s}", "type", "link", "alias", alias);
    if (!o)
        return;
    if (id)
        json_object_set_new(o, "id", json_string(id));
    if (add_link(t, id, o, alias, ttl, ROUTE_TUNNEL) == 0)
        tctl_send(t, o);
}

/* One control line from the agent. */
static void ctl_line(struct tunnel *t, const char *line, size_t len)
{
    json_t *m;
    char why[160];
    if (tunnel_msg_decode(line, len, &m, why, sizeof(why)) < 0) {
        tunnel_kill(t, "malformed control message (%s)", why);
        return;
    }
    if (t->st == T_HELLO) {
        tctl_hello(t, m);
        json_decref(m);
        return;
    }
    if (t->st != T_READY) {
        json_decref(m);
        return;
    }
    const char *type = json_string_value(json_object_get(m, "type"));
    json_t *idv = json_object_get(m, "id");
    const char *id = json_string_value(idv);
    if (!type || (idv && (!id || strlen(id) > TUN_ID_MAX))) {
        json_decref(m);
        tunnel_kill(t, "malformed control message (no type, or a bad id)");
        return;
    }
    if (strcmp(type, "register") == 0)
        op_register(t, id, m);
    else if (strcmp(type, "unregister") == 0)
        op_unregister(t, id, m);
    else if (strcmp(type, "link") == 0)
        op_link(t, id, m);
    else if (strcmp(type, "sleep") == 0)
        op_sleep(t, id);
    else if (strcmp(type, "release") == 0)
        op_release(t, id, m);
    else
        ctl_error(t, id, "invalid", "unknown message type");
    json_decref(m);
}

void tctl_input(struct tunnel *t, const uint8_t *data, size_t len)
{
    while (len > 0 && !t->dead) {
        const char *line;
        size_t n;
        int r = tunnel_lines_next(&t->ctl_lines, &data, &len, &line, &n);
        if (r < 0) {
            tunnel_kill(t, "control message longer than %d bytes", TUNNEL_CTL_LINE_MAX);
            return;
        }
        if (r == 0)
            return;
        if (n > 0)
            ctl_line(t, line, n);
    }
}
