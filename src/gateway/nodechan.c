/* nodechan — see nodechan.h. */
#include "nodechan.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "jobca.h"
#include "log.h"
#include "page.h"
#include "registry.h"
#include "token.h"
#include "util.h"
#ifdef JG_HAVE_MUNGE
#include "munge_cred.h"
#endif

#define DEFAULT_NODE_USERS "root slurm"

struct node_users {
    uid_t uid[CONFIG_USERS_MAX];
    unsigned n;
    struct node_users *older; /* the list it replaced (SIGHUP), kept until the end */
};

struct nodechan {
    const struct jg_config *_Atomic cfg;     /* nodechan_reconfigure swaps them: what */
    const struct node_users *_Atomic users;  /* they pointed to is kept until the end */
    struct node_users *all;                  /* the main thread's: every list, to free */
    struct registry *reg;
    const struct jobca *ca;
    uid_t self;
};

/* A user name or uid of node_users; 0 with *uid, -ENOENT for no such user. */
static int resolve_user(const char *name, uid_t *uid)
{
    struct passwd pw, *res = NULL;
    char buf[2048];
    uint64_t u;
    if (parse_uint(name, 0, UINT32_MAX - 1, &u) == 0) {
        *uid = (uid_t)u;
        return 0;
    }
    if (getpwnam_r(name, &pw, buf, sizeof(buf), &res) != 0 || !res)
        return -ENOENT;
    *uid = res->pw_uid;
    return 0;
}

struct node_users *nodechan_users_load(const struct jg_config *cfg, char *err, size_t errlen)
{
    struct node_users *u = xcalloc(1, sizeof(*u));
    int dflt = cfg->node_users == NULL;
    char *list = xstrdup(dflt ? DEFAULT_NODE_USERS : cfg->node_users), *save = NULL;
    for (char *w = strtok_r(list, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
        uid_t uid;
        if (resolve_user(w, &uid) < 0) {
            if (dflt)
                continue; /* no slurm user on this host: root alone */
            errmsg(err, errlen, -ENOENT, "[slurm] node_users: no such user '%s'", w);
            free(list);
            free(u);
            return NULL;
        }
        if (u->n < CONFIG_USERS_MAX)
            u->uid[u->n++] = uid;
    }
    free(list);
    return u;
}

void nodechan_users_free(struct node_users *u)
{
    while (u) {
        struct node_users *older = u->older;
        free(u);
        u = older;
    }
}

struct nodechan *nodechan_new(const struct jg_config *cfg, struct registry *reg,
                              const struct jobca *ca, uid_t self, char *err, size_t errlen)
{
    struct node_users *u = nodechan_users_load(cfg, err, errlen);
    if (!u)
        return NULL;
    struct nodechan *nc = xcalloc(1, sizeof(*nc));
    nc->cfg = cfg;
    nc->users = nc->all = u;
    nc->reg = reg;
    nc->ca = ca;
    nc->self = self;
    return nc;
}

void nodechan_reconfigure(struct nodechan *nc, const struct jg_config *cfg,
                          struct node_users *users)
{
    if (users) {
        users->older = nc->all;
        nc->all = users;
        atomic_store(&nc->users, users);
    }
    atomic_store(&nc->cfg, cfg);
}

void nodechan_free(struct nodechan *nc)
{
    if (nc)
        nodechan_users_free(nc->all);
    free(nc);
}

int nodechan_trusts(const struct nodechan *nc, uid_t uid)
{
    const struct node_users *u = nc ? nc->users : NULL;
    for (unsigned i = 0; u && i < u->n; i++)
        if (u->uid[i] == uid)
            return 1;
    return 0;
}

int nodechan_match(const struct http1_str *target)
{
    return target->n >= sizeof(NODECHAN_PREFIX) - 1 &&
           memcmp(target->p, NODECHAN_PREFIX, sizeof(NODECHAN_PREFIX) - 1) == 0;
}

/* Sends {"error": why} with status; returns status. */
static int refuse(struct evbuffer *out, int status, const char *why)
{
    json_t *o = json_pack("{s:s}", "error", why);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    page_send(out, status, "application/json", body ? body : "{}", body ? strlen(body) : 2, 1,
              NULL, 0);
    free(body);
    return status;
}

static int answer(struct evbuffer *out, json_t *o)
{
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!body)
        return refuse(out, 500, "out of memory");
    size_t n = strlen(body);
    page_send(out, 200, "application/json", body, n, 1, NULL, 0);
    free(body);
    return 200;
}

/* One node request between the loop that read it and the thread that
 * answers it (nodechan_call_run): the loop's copies, the thread's answer. */
struct nodechan_call {
    struct nodechan *nc;
    const struct node_op *op;
    char *cred;                 /* the Authorization's MUNGE credential */
    size_t clen;
    char *body;
    size_t len;
    char ip[64];
    struct evbuffer *out;       /* the answer */
    int status;
};

/* The MUNGE credential of the request, bound to op and body: 0 with *uid,
 * or the status refused (answered). */
static int node_auth(struct nodechan *nc, const char *cred, size_t clen, const char *op,
                     const char *body, size_t len, struct evbuffer *out, uid_t *uid)
{
#ifdef JG_HAVE_MUNGE
    uint8_t hash[TOKEN_HASH_LEN];
    char hex[2 * TOKEN_HASH_LEN + 1], payload[160], err[256];
    token_hash(body, len, hash);
    token_hash_hex(hash, hex);
    int n = snprintf(payload, sizeof(payload), "jobgate/1 node %s %s", op, hex);
    struct munge_identity id;
    if (munge_cred_decode(nc->cfg->munge_socket, cred, clen, payload, (size_t)n, &id, err,
                          sizeof(err)) < 0) {
        char why[320];
        snprintf(why, sizeof(why), "MUNGE credential refused: %s", err);
        return refuse(out, 401, why);
    }
    if (nodechan_trusts(nc, id.uid)) {
        *uid = id.uid;
        return 0;
    }
    char why[200];
    snprintf(why, sizeof(why), "uid %u may not speak for nodes (the gateway's [slurm] node_users)",
             (unsigned)id.uid);
    return refuse(out, 403, why);
#else
    (void)nc; (void)cred; (void)clen; (void)op; (void)body; (void)len; (void)uid;
    return refuse(out, 501, "this gateway was built without MUNGE");
#endif
}

/* The job id of a request body: a positive integer below 2^32. 0 if not. */
static uint32_t job_id_of(const json_t *o)
{
    json_t *v = json_object_get(o, "job");
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > UINT32_MAX)
        return 0;
    return (uint32_t)json_integer_value(v);
}

/* Signs csr for job j: 0 with *cert, or -1 (400 answered). */
static int sign(struct nodechan *nc, const char *csr, const struct job *j, char **cert,
                struct evbuffer *out)
{
    struct jobca_job cj = {.job_id = j->id, .uid = (uint32_t)j->uid, .not_after = j->not_after};
    char err[256], why[320];
    snprintf(cj.user, sizeof(cj.user), "%s", j->user);
    if (jobca_sign(nc->ca, csr, strlen(csr), &cj, cert, err, sizeof(err)) == 0)
        return 0;
    snprintf(why, sizeof(why), "cannot sign the request: %s", err);
    refuse(out, 400, why);
    return -1;
}

static int job_start(struct nodechan *nc, json_t *m, uid_t by, struct evbuffer *out)
{
    const struct jg_config *cfg = nc->cfg; /* one generation for the whole request */
    struct job j = {.id = job_id_of(m)};
    json_t *uidv = json_object_get(m, "uid"), *limv = json_object_get(m, "time_limit");
    const char *user = json_string_value(json_object_get(m, "user"));
    const char *node = json_string_value(json_object_get(m, "node"));
    const char *csr = json_string_value(json_object_get(m, "csr"));
    if (!j.id)
        return refuse(out, 400, "'job' must be a job id (1..4294967295)");
    if (!json_is_integer(uidv) || json_integer_value(uidv) < 0 ||
        json_integer_value(uidv) >= UINT32_MAX)
        return refuse(out, 400, "'uid' must be a uid");
    if (!job_name_valid(user, JOB_USER_MAX))
        return refuse(out, 400, "'user' must be a user name (A-Z a-z 0-9 . _ -, at most 63)");
    if (!job_name_valid(node, JOB_NODE_MAX))
        return refuse(out, 400, "'node' must be a node name (A-Z a-z 0-9 . _ -, at most 64)");
    if (limv && (!json_is_integer(limv) || json_integer_value(limv) < 0))
        return refuse(out, 400, "'time_limit' must be seconds (0: unknown)");
    if (!csr)
        return refuse(out, 400, "'csr' must be a PEM certificate request");
    j.uid = (uid_t)json_integer_value(uidv);
    snprintf(j.user, sizeof(j.user), "%s", user);
    snprintf(j.node, sizeof(j.node), "%s", node);

    /* The user must be the one this host knows by that uid: the gateway
     * hands the job's apps to that uid's sessions. */
    struct passwd pw, *res = NULL;
    char pwbuf[2048];
    if (getpwuid_r(j.uid, &pw, pwbuf, sizeof(pwbuf), &res) != 0 || !res)
        return refuse(out, 400, "the job's uid has no user on the gateway's host");
    if (strcmp(res->pw_name, j.user) != 0)
        return refuse(out, 400, "the job's 'user' and 'uid' disagree on the gateway's host");
    if (!cfg->shared && j.uid != nc->self)
        return refuse(out, 403, "this personal gateway takes only its own user's jobs");

    int64_t now = now_real(), life = cfg->job_cert_max;
    int64_t lim = limv ? json_integer_value(limv) : 0;
    if (lim > 0 && lim < life - cfg->job_cert_margin)
        life = lim + cfg->job_cert_margin;
    j.not_after = now + life;

    /* The request is checked (signed) before anything is recorded; signed again in the
     * rare case that another node recorded the job first, with its own end. */
    char *cert = NULL;
    if (sign(nc, csr, &j, &cert, out) < 0)
        return 400;
    struct job rec;
    int rc = registry_job_start(nc->reg, &j, &rec);
    if (rc == 0 && rec.not_after != j.not_after) {
        free(cert);
        cert = NULL;
        if (sign(nc, csr, &rec, &cert, out) < 0)
            return 400;
    }
    if (rc < 0)
        free(cert);
    if (rc == -EEXIST)
        return refuse(out, 409, "this job is recorded for another user");
    if (rc == -ESTALE)
        return refuse(out, 409, "this job has ended");
    if (rc < 0)
        return refuse(out, 500, "could not record the job (see the gateway's log)");
    log_info("node uid=%u job=%u node=%s: certificate for user %s until %" PRId64, (unsigned)by,
             (unsigned)rec.id, j.node, rec.user, rec.not_after);
    json_t *o = json_pack("{s:I, s:s, s:s, s:I}", "job", (json_int_t)rec.id, "cert", cert, "ca",
                          jobca_cert_pem(nc->ca), "not_after", (json_int_t)rec.not_after);
    free(cert);
    return answer(out, o);
}

static int job_end(struct nodechan *nc, json_t *m, uid_t by, struct evbuffer *out)
{
    uint32_t id = job_id_of(m);
    const char *node = json_string_value(json_object_get(m, "node"));
    if (!id)
        return refuse(out, 400, "'job' must be a job id (1..4294967295)");
    if (!job_name_valid(node, JOB_NODE_MAX))
        return refuse(out, 400, "'node' must be a node name (A-Z a-z 0-9 . _ -, at most 64)");
    char why[128];
    snprintf(why, sizeof(why), "the job ended (node %s)", node);
    int rc = registry_job_end(nc->reg, id, by, why);
    if (rc == -ENOENT)
        return refuse(out, 404, "no such job");
    if (rc < 0)
        return refuse(out, 500, "could not end the job (see the gateway's log)");
    return answer(out, json_pack("{s:I, s:i}", "job", (json_int_t)id, "routes", rc));
}

/* A destination's host: the node's own name for a wildcard listener, or an IP
 * literal (no loopback: the gateway could not reach it there). */
static int dest_host_ok(const char *h)
{
    unsigned char a[16];
    if (inet_pton(AF_INET, h, a) == 1)
        /* not this host (0/8, 127/8), not link-local (169.254/16: cloud metadata lives
         * there), not multicast, broadcast or reserved (224/3) */
        return a[0] != 0 && a[0] != 127 && !(a[0] == 169 && a[1] == 254) && a[0] < 224;
    if (inet_pton(AF_INET6, h, a) == 1) {
        const struct in6_addr *v6 = (const struct in6_addr *)a;
        return !IN6_IS_ADDR_LOOPBACK(v6) && !IN6_IS_ADDR_UNSPECIFIED(v6) &&
               !IN6_IS_ADDR_LINKLOCAL(v6) && !IN6_IS_ADDR_MULTICAST(v6) &&
               !IN6_IS_ADDR_V4MAPPED(v6) && !IN6_IS_ADDR_V4COMPAT(v6);
    }
    return 0; /* an IP address of the node: the gateway never resolves a name for a job */
}

static int job_ready(struct nodechan *nc, json_t *m, uid_t by, struct evbuffer *out)
{
    uint32_t id = job_id_of(m);
    const char *node = json_string_value(json_object_get(m, "node"));
    json_t *list = json_object_get(m, "listen");
    struct job_dest d[JOB_DEST_MAX];
    if (!id)
        return refuse(out, 400, "'job' must be a job id (1..4294967295)");
    if (!job_name_valid(node, JOB_NODE_MAX))
        return refuse(out, 400, "'node' must be a node name (A-Z a-z 0-9 . _ -, at most 64)");
    if (!json_is_array(list) || json_array_size(list) > JOB_DEST_MAX)
        return refuse(out, 400, "'listen' must be a list of at most 32 {\"host\", \"port\"}");
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        const char *host = json_string_value(json_object_get(v, "host"));
        json_t *port = json_object_get(v, "port");
        if (!host || !dest_host_ok(host) || !json_is_integer(port) ||
            json_integer_value(port) < 1 || json_integer_value(port) > 65535)
            return refuse(out, 400, "'listen' entries are {\"host\": a unicast IP address of the "
                                    "node (not loopback, link-local or mapped), \"port\": "
                                    "1..65535}");
        memset(&d[i], 0, sizeof(d[i]));
        snprintf(d[i].node, sizeof(d[i].node), "%s", node);
        snprintf(d[i].host, sizeof(d[i].host), "%s", host);
        d[i].port = (uint16_t)json_integer_value(port);
    }
    int rc = registry_job_ready(nc->reg, id, node, d, (unsigned)json_array_size(list));
    if (rc == -ENOENT)
        return refuse(out, 404, "no such job");
    if (rc == -ESTALE)
        return refuse(out, 409, "this job has ended");
    if (rc == -ENOSPC)
        return refuse(out, 400, "the job has too many destinations");
    if (rc < 0)
        return refuse(out, 500, "could not record the destinations (see the gateway's log)");
    (void)by;
    return answer(out, json_pack("{s:I, s:i}", "job", (json_int_t)id, "destinations",
                                 (int)json_array_size(list)));
}

/* The fixed table of what a node may ask. */
struct node_op {
    const char *path;
    const char *name;
    int (*fn)(struct nodechan *nc, json_t *m, uid_t by, struct evbuffer *out);
};
static const struct node_op node_ops[] = {
    {NODECHAN_PREFIX "v1/job-start", "job-start", job_start},
    {NODECHAN_PREFIX "v1/job-end", "job-end", job_end},
    {NODECHAN_PREFIX "v1/job-ready", "job-ready", job_ready},
};

struct nodechan_call *nodechan_call_new(struct nodechan *nc, const struct http1_head *h,
                                       const char *body, size_t len, const char *ip,
                                       struct evbuffer *out, int *status)
{
    static const char scheme[] = "MUNGE ";
    const struct node_op *op = NULL;
    for (size_t i = 0; i < JG_ARRAY_LEN(node_ops); i++)
        if (h->target.n == strlen(node_ops[i].path) &&
            memcmp(h->target.p, node_ops[i].path, h->target.n) == 0)
            op = &node_ops[i];
    int i = http1_find(h, "authorization");
    if (!op)
        *status = refuse(out, 404, "no such node request");
    else if (!http1_name_is(&h->method, "post"))
        *status = refuse(out, 405, "node requests are POSTs");
    else if (i < 0 || h->fields[i].value.n <= sizeof(scheme) - 1 ||
             memcmp(h->fields[i].value.p, scheme, sizeof(scheme) - 1) != 0)
        *status = refuse(out, 401, "a node request needs 'Authorization: MUNGE <credential>'");
    else
        *status = 0;
    if (*status) {
        if (op)
            log_info("node ip=%s %s refused (%d)", ip, op->name, *status);
        return NULL;
    }
    struct nodechan_call *call = xcalloc(1, sizeof(*call));
    call->nc = nc;
    call->op = op;
    call->clen = h->fields[i].value.n - (sizeof(scheme) - 1);
    call->cred = xmalloc(call->clen + 1);
    memcpy(call->cred, h->fields[i].value.p + sizeof(scheme) - 1, call->clen);
    call->cred[call->clen] = '\0';
    call->body = xmalloc(len + 1);
    memcpy(call->body, body, len);
    call->len = len;
    snprintf(call->ip, sizeof(call->ip), "%s", ip);
    return call;
}

void nodechan_call_run(struct nodechan_call *call)
{
    struct nodechan *nc = call->nc;
    const struct node_op *op = call->op;
    uid_t by = (uid_t)-1;
    call->out = evbuffer_new();
    if (!call->out) {
        call->status = 500;
        return;
    }
    int st = node_auth(nc, call->cred, call->clen, op->name, call->body, call->len, call->out,
                       &by);
    if (st != 0) {
        log_info("node ip=%s %s refused (%d)", call->ip, op->name, st);
        call->status = st;
        return;
    }
    json_error_t jerr;
    json_t *m = json_loadb(call->body, call->len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(m)) {
        json_decref(m);
        call->status = refuse(call->out, 400, "the body must be one JSON object");
        return;
    }
    st = op->fn(nc, m, by, call->out);
    json_decref(m);
    if (st != 200)
        log_info("node ip=%s uid=%u %s answered %d", call->ip, (unsigned)by, op->name, st);
    call->status = st;
}

int nodechan_call_finish(struct nodechan_call *call, struct evbuffer *out)
{
    int st = call->status;
    if (call->out)
        evbuffer_add_buffer(out, call->out);
    else
        st = refuse(out, 500, "out of memory");
    nodechan_call_free(call);
    return st;
}

void nodechan_call_free(struct nodechan_call *call)
{
    if (!call)
        return;
    if (call->out)
        evbuffer_free(call->out);
    free(call->cred);
    free(call->body);
    free(call);
}
