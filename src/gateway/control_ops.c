/*
 * control_ops — the operations of the control socket (docs/control-protocol.md):
 * one fixed table of accepted requests, one handler per row, anything else
 * refused with a reason. Each handler acts only on the caller's own routes
 * (I2), except root in shared mode who may name a uid. Owns nothing; state
 * changes go through the registry (which locks inside). Worker 0's thread.
 */
#include "control_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "backend.h"
#include "config.h"
#include "log.h"
#include "procnet.h"
#include "registry.h"
#include "tunnel.h"
#include "util.h"

/* What a handler answers: a reply object, or an error code and sentence. */
struct reply {
    json_t *obj;
    const char *code;
    char error[512];
};

static void fail(struct reply *rp, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(struct reply *rp, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rp->error, sizeof(rp->error), fmt, ap);
    va_end(ap);
    rp->code = code;
}

/* Route fields as JSON, for answers. */
static json_t *route_json(struct registry *reg, const struct route *r)
{
    char url[REGISTRY_URL_MAX], backend[160];
    registry_url(reg, r->alias, url, sizeof(url));
    route_describe(r, backend, sizeof(backend));
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:I, s:s}", "alias", r->alias, "name",
                          r->name, "url", url, "uid", (json_int_t)r->uid, "pid",
                          (json_int_t)r->pid, "backend", backend, "created",
                          (json_int_t)r->created, "state", route_state(r));
    if (o && r->job)
        json_object_set_new(o, "job", json_integer(r->job));
    if (o && r->cross_site)
        json_object_set_new(o, "cross_site", json_true());
    if (o && r->kind == ROUTE_TUNNEL) {
        /* How it is reached now (docs/policy.md), and when its agent was
         * last seen: now while its tunnel is up. */
        char reach[64];
        route_reach(r, reach, sizeof(reach));
        json_object_set_new(o, "reach", json_string(reach));
        json_object_set_new(o, "seen", json_integer(r->tunnel ? now_real() : r->seen));
        if (r->asleep && !r->tunnel)
            json_object_set_new(o, "held", json_integer(r->held)); /* requests waiting */
    }
    return o;
}

/* Adds a fresh link for alias (url, link, expires) to the answer. */
static void add_link(struct ctl_peer *p, uid_t uid, const char *alias, int64_t ttl,
                     struct reply *rp)
{
    struct registry_link l;
    int rc = registry_link(p->w->reg, alias, uid, 0, ttl, &l);
    if (rc == -EDQUOT) {
        char why[160];
        registry_quota_why(p->w->reg, uid, 1, why, sizeof(why));
        fail(rp, "quota", "%s: redeem or let some expire first", why);
        return;
    }
    if (rc < 0) {
        fail(rp, REGISTRY_CODE(rc), "could not store a link: %s", registry_why(rc));
        return;
    }
    json_object_set_new(rp->obj, "url", json_string(l.url));
    json_object_set_new(rp->obj, "link", json_string(l.link));
    json_object_set_new(rp->obj, "expires", json_integer(l.expires));
    memset(&l, 0, sizeof(l));
}

/* The route req names by "alias": an alias or a name of uid's. */
static int resolve(struct ctl_peer *p, uid_t uid, json_t *req, struct route *out,
                   struct reply *rp)
{
    const char *a = json_string_value(json_object_get(req, "alias"));
    if (!a || !*a || strlen(a) > ROUTE_ALIAS_MAX + ROUTE_NAME_MAX) {
        fail(rp, "invalid", "'alias' must be an app's alias or name");
        return -1;
    }
    int rc = registry_route_resolve(p->w->reg, uid, a, out);
    if (rc == -ENOTUNIQ)
        fail(rp, "invalid", "several of your apps are named '%s': give the alias", a);
    else if (rc < 0)
        fail(rp, "not_found", "you have no app '%s'", a);
    return rc < 0 ? -1 : 0;
}

static int get_ttl(json_t *req, int64_t dflt, int64_t *ttl, struct reply *rp)
{
    if (app_json_ttl(req, dflt, ttl) < 0) {
        fail(rp, "invalid", "'ttl' must be " APP_LINK_TTL_RULE);
        return -1;
    }
    return 0;
}

/* Full destination checks (I2, I3); a starting app may not listen yet. */
static int check_target(struct ctl_peer *p, struct route *r, int starting, struct reply *rp)
{
    char why[400];
    int rc = backend_check(p->w->env, r, starting, why, sizeof(why));
    if (rc < 0) {
        fail(rp, rc == -EPERM ? "forbidden" : "invalid", "%s", why);
        return -1;
    }
    return 0;
}

static void op_register(struct ctl_peer *p, uid_t uid, json_t *req, struct reply *rp)
{
    struct route r;
    memset(&r, 0, sizeof(r));
    r.uid = uid;
    r.created = now_real();

    const char *name = json_string_value(json_object_get(req, "name"));
    const char *sock = json_string_value(json_object_get(req, "socket"));
    json_t *port = json_object_get(req, "port"), *pid = json_object_get(req, "pid");
    json_t *starting = json_object_get(req, "starting");
    int64_t ttl;

    if (name && !app_name_valid(name, ROUTE_NAME_MAX))
        return fail(rp, "invalid", "'name' must be " APP_NAME_RULE);
    snprintf(r.name, sizeof(r.name), "%s", name ? name : "app");
    if (!!sock == !!port)
        return fail(rp, "invalid", "give exactly one of 'socket' and 'port'");
    if (sock) {
        if (strlen(sock) >= sizeof(r.path))
            return fail(rp, "invalid", "'socket' is longer than %zu bytes", sizeof(r.path) - 1);
        r.kind = ROUTE_UNIX;
        memcpy(r.path, sock, strlen(sock) + 1);
    } else {
        if (!json_is_integer(port) || json_integer_value(port) < 1 ||
            json_integer_value(port) > 65535)
            return fail(rp, "invalid", "'port' must be from 1 to 65535");
        r.kind = ROUTE_TCP;
        r.port = (uint16_t)json_integer_value(port);
    }
    if (pid) {
        struct stat st;
        char proc[64];
        if (!json_is_integer(pid) || json_integer_value(pid) < 1 ||
            json_integer_value(pid) > 4194304)
            return fail(rp, "invalid", "'pid' must be a process id");
        r.pid = (pid_t)json_integer_value(pid);
        snprintf(proc, sizeof(proc), "/proc/%ld", (long)r.pid);
        if (stat(proc, &st) < 0 || st.st_uid != uid)
            return fail(rp, "invalid", "process %ld is not a running process of yours", (long)r.pid);
        if (procnet_start_time("/proc", r.pid, &r.pid_start) < 0)
            r.pid_start = 0; /* the reaper then goes by the pid alone */
    }
    if (starting && !json_is_boolean(starting))
        return fail(rp, "invalid", "'starting' must be true or false");
    r.starting = json_is_true(starting);
    json_t *cross = json_object_get(req, "cross_site");
    if (cross && !json_is_boolean(cross))
        return fail(rp, "invalid", "'cross_site' must be true or false");
    r.cross_site = json_is_true(cross);
    if (get_ttl(req, p->w->cfg->link_ttl, &ttl, rp) < 0 || check_target(p, &r, r.starting, rp) < 0)
        return;
    int rc = registry_route_add(p->w->reg, &r);
    if (rc == -EDQUOT) {
        char why[160];
        registry_quota_why(p->w->reg, uid, 0, why, sizeof(why));
        return fail(rp, "quota", "%s: remove one first ('jobgate rm')", why);
    }
    if (rc < 0)
        return fail(rp, REGISTRY_CODE(rc), "could not add the route: %s", registry_why(rc));
    rp->obj = json_pack("{s:b, s:s, s:s, s:s}", "ok", 1, "alias", r.alias, "name", r.name, "state",
                        r.starting ? "starting" : "ready");
    add_link(p, uid, r.alias, ttl, rp);
    if (rp->code) /* no link: the app could not be opened, so it is not published */
        registry_route_remove(p->w->reg, r.alias, uid, 0, uid, "no link could be made");
}

static void op_ready(struct ctl_peer *p, uid_t uid, json_t *req, struct reply *rp)
{
    struct route r;
    if (resolve(p, uid, req, &r, rp) < 0)
        return;
    if (r.starting) {
        if (check_target(p, &r, 0, rp) < 0)
            return;
        int rc = registry_route_ready(p->w->reg, r.alias, uid);
        if (rc == -ENOENT)
            return fail(rp, "not_found", "you have no app '%s' any more", r.alias);
        if (rc < 0)
            return fail(rp, REGISTRY_CODE(rc), "could not update the route: %s",
                        registry_why(rc));
    }
    rp->obj = json_pack("{s:b, s:s, s:s}", "ok", 1, "alias", r.alias, "state", "ready");
}

static int by_alias(const void *a, const void *b)
{
    return strcmp(((const struct route *)a)->alias, ((const struct route *)b)->alias);
}

/* Routes in pages (docs/control-protocol.md): sorted by alias, those after
 * "after", until an answer holds about CTL_PAGE_BYTES; "next" names the
 * last one when more follow, for the client's next request. */
static void op_list(struct ctl_peer *p, uid_t uid, json_t *req, struct reply *rp)
{
    struct route *v;
    int all = p->uid == 0 && p->w->cfg->shared && !json_object_get(req, "uid");
    json_t *after = json_object_get(req, "after");
    if (after && !json_is_string(after))
        return fail(rp, "invalid", "'after' must be an alias");
    int n = registry_routes(p->w->reg, uid, all, &v);
    qsort(v, (size_t)n, sizeof(*v), by_alias);
    json_t *arr = json_array();
    size_t bytes = 0;
    int i = 0;
    while (i < n && after && strcmp(v[i].alias, json_string_value(after)) <= 0)
        i++;
    for (; i < n && bytes < CTL_PAGE_BYTES; i++) {
        json_t *o = route_json(p->w->reg, &v[i]);
        bytes += json_dumpb(o, NULL, 0, JSON_COMPACT) + 1;
        json_array_append_new(arr, o);
    }
    rp->obj = json_pack("{s:b, s:o}", "ok", 1, "routes", arr);
    if (i < n && i > 0)
        json_object_set_new(rp->obj, "next", json_string(v[i - 1].alias));
    free(v);
}

/* The caller's batch jobs (root in shared mode: everyone's), with their destinations. */
static void op_jobs(struct ctl_peer *p, uid_t uid, json_t *req, struct reply *rp)
{
    struct registry_jobs rj;
    int all = p->uid == 0 && p->w->cfg->shared && !json_object_get(req, "uid");
    registry_jobs(p->w->reg, uid, all, &rj);
    json_t *arr = json_array();
    for (unsigned i = 0; i < rj.n; i++) {
        const struct job *j = &rj.jobs[i];
        json_t *dests = json_array();
        for (unsigned k = rj.first[i]; k < rj.first[i] + rj.count[i]; k++)
            json_array_append_new(dests, json_pack("{s:s, s:s, s:i}", "node", rj.dests[k].node,
                                                   "host", rj.dests[k].host, "port",
                                                   (int)rj.dests[k].port));
        json_t *o = json_pack("{s:I, s:I, s:s, s:s, s:s, s:I, s:I, s:o}", "job", (json_int_t)j->id,
                              "uid", (json_int_t)j->uid, "user", j->user, "node", j->node,
                              "state", j->ended ? "ended" : "running", "started",
                              (json_int_t)j->started, "not_after", (json_int_t)j->not_after,
                              "destinations", dests);
        if (o && j->ended)
            json_object_set_new(o, "ended", json_integer(j->ended));
        json_array_append_new(arr, o);
    }
    registry_jobs_free(&rj);
    /* Jobs the gateway has not recorded (queued, or running without jobgate): the
     * scheduler's last word. */
    struct registry_sched_job *sv;
    int ns = registry_sched_jobs(p->w->reg, uid, all, &sv);
    for (int i = 0; i < ns; i++) {
        char state[32];
        size_t k = 0;
        const char *st = strcmp(sv[i].state, "PENDING") == 0 ? "queued" : sv[i].state;
        for (; st[k] && k + 1 < sizeof(state); k++)
            state[k] = (char)(st[k] >= 'A' && st[k] <= 'Z' ? st[k] - 'A' + 'a' : st[k]);
        state[k] = '\0';
        json_array_append_new(arr, json_pack("{s:I, s:I, s:s, s:s, s:o}", "job",
                                             (json_int_t)sv[i].id, "uid", (json_int_t)sv[i].uid,
                                             "user", sv[i].user, "state", state, "destinations",
                                             json_array()));
    }
    free(sv);
    rp->obj = json_pack("{s:b, s:o}", "ok", 1, "jobs", arr);
}

static void op_link(struct ctl_peer *p, uid_t uid, json_t *req, struct reply *rp)
{
    int64_t ttl;
    struct route r;
    if (resolve(p, uid, req, &r, rp) < 0 || get_ttl(req, p->w->cfg->link_ttl, &ttl, rp) < 0)
        return;
    rp->obj = json_pack("{s:b, s:s}", "ok", 1, "alias", r.alias);
    add_link(p, uid, r.alias, ttl, rp);
}

static void op_remove(struct ctl_peer *p, uid_t uid, json_t *req, struct reply *rp)
{
    struct route r;
    if (resolve(p, uid, req, &r, rp) < 0)
        return;
    int rc = registry_route_remove(p->w->reg, r.alias, uid, 0, p->uid, "control.remove");
    if (rc == -ENOENT)
        return fail(rp, "not_found", "you have no app '%s'", r.alias);
    if (rc < 0)
        return fail(rp, REGISTRY_CODE(rc), "could not remove the route: %s", registry_why(rc));
    rp->obj = json_pack("{s:b, s:s}", "ok", 1, "alias", r.alias);
}

static void op_hello(struct ctl_peer *p, uid_t uid, json_t *req, struct reply *rp)
{
    const struct jg_config *cfg = p->w->cfg;
    rp->obj = json_pack("{s:b, s:s, s:s, s:s, s:s, s:I}", "ok", 1, "version", JG_VERSION, "mode",
                        cfg->shared ? "shared" : "personal", "domain", cfg->domain, "url_suffix",
                        registry_url_suffix(p->w->reg), "uid", (json_int_t)uid);
}

/* Hands the byte stream of `jobgate tunnel --stdio` (its stdin and stdout,
 * sent with this request) to a tunnel owned by the sender's uid. */
static void op_tunnel(struct ctl_peer *p, uid_t uid, json_t *req, struct reply *rp)
{
    json_t *v = json_object_get(req, "version");
    if (!json_is_integer(v) || json_integer_value(v) != 1)
        return fail(rp, "version", "this gateway speaks tunnel protocol version 1");
    if (uid != p->uid)
        return fail(rp, "forbidden", "a tunnel belongs to the user who hands it over");
    if (p->fds[0] < 0 || p->fds[1] < 0)
        return fail(rp, "invalid", "send stdin and stdout with the request (SCM_RIGHTS)");
    int hold = fcntl(p->sock, F_DUPFD_CLOEXEC, 3);
    int rc = tunnel_adopt_stdio(p->w, p->fds[0], p->fds[1], hold, p->uid);
    p->fds[0] = p->fds[1] = -1; /* the tunnel's now, or closed */
    p->handed_over = rc == 0;
    if (rc < 0)
        return fail(rp, "unavailable", "cannot take the tunnel: %s", strerror(-rc));
    rp->obj = json_pack("{s:b}", "ok", 1);
}

static const struct {
    const char *op;
    void (*fn)(struct ctl_peer *, uid_t, json_t *, struct reply *);
} ops[] = {
    {"hello", op_hello}, {"register", op_register}, {"ready", op_ready}, {"list", op_list},
    {"link", op_link},   {"remove", op_remove},     {"tunnel", op_tunnel}, {"jobs", op_jobs},
};

void control_handle(struct ctl_peer *p, const char *line, size_t len, struct evbuffer *out)
{
    struct reply rp = {0};
    json_error_t jerr;
    json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *op = NULL;
    uid_t uid = p->uid;

    if (!req || !json_is_object(req)) {
        fail(&rp, "invalid", "request is not a JSON object: %s", req ? "wrong type" : jerr.text);
        goto answer;
    }
    op = json_string_value(json_object_get(req, "op"));
    json_t *as = json_object_get(req, "uid");
    if (as) {
        if (!json_is_integer(as) || json_integer_value(as) < 0 ||
            json_integer_value(as) > 0x7fffffff) {
            fail(&rp, "invalid", "'uid' must be a user id");
            goto answer;
        }
        if ((uid_t)json_integer_value(as) != p->uid && (p->uid != 0 || !p->w->cfg->shared)) {
            fail(&rp, "forbidden", "only root may act for another user, and only in shared mode");
            goto answer;
        }
        uid = (uid_t)json_integer_value(as);
    }
    if (*p->w->stopping) {
        fail(&rp, "unavailable", "the gateway is shutting down");
        goto answer;
    }
    for (size_t i = 0; op && i < JG_ARRAY_LEN(ops); i++) {
        if (strcmp(op, ops[i].op) == 0) {
            ops[i].fn(p, uid, req, &rp);
            goto answer;
        }
    }
    fail(&rp, "invalid", "unknown op '%.40s'", op ? op : "(none)");
answer:
    if (rp.code) {
        json_decref(rp.obj);
        rp.obj = json_pack("{s:b, s:s, s:s}", "ok", 0, "code", rp.code, "error", rp.error);
        log_info("control: uid=%u op=%.20s refused: %s", (unsigned)p->uid, op ? op : "?", rp.error);
    } else {
        log_debug("control: uid=%u op=%s ok", (unsigned)p->uid, op);
    }
    char *text = json_dumps(rp.obj, JSON_COMPACT);
    if (!text)
        fatal("out of memory encoding a control answer");
    evbuffer_add(out, text, strlen(text));
    evbuffer_add(out, "\n", 1);
    /* The answer may carry a link: wipe our copy of it. */
    memset(text, 0, strlen(text));
    free(text);
    json_decref(rp.obj);
    json_decref(req);
}
