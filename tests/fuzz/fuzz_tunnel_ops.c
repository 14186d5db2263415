/*
 * libFuzzer target for what an agent asks on its tunnel's control stream once
 * welcomed (src/gateway/tunnel_ctl.c: register, unregister, link, sleep,
 * release, with a direct route or a callback for a job's tunnel), over the
 * real state: the registry (SQLite store) in a fresh directory under /tmp, the
 * agent CA and the tunnel hub. Each tunnel is a real one (tunnel_adopt_stdio,
 * as the `tunnel` control op makes it, on a socket pair) whose hello goes
 * through tctl_input and the check off the loop (tunnel_hello.c, offload.c:
 * its threads, and the loop run until the answer is back); the challenge and
 * the welcome are read from the socket pair by an agent's HTTP/2 session.
 * The fuzzer's lines then go to tctl_input as the session's on_data hands
 * them, and the answers are taken from the control stream's queue before the
 * session would send them.
 *
 * Input: byte 0 picks tunnel A's hello (bits 0-1: peercred as an ordinary
 * uid, peercred as the gateway's own uid, the job certificate of a running
 * job, the personal agent token), shared mode (bit 2), its policy (bits 3-4:
 * none, no reconnect, sleeps with poll, sleeps with callback), a tunnel B
 * (bit 5: with A's hello, or with bit 7 another uid's), and whether the first
 * line is A's hello itself (bit 6: "@C", "@S", "@K" in it stand for the job's
 * certificate, its signature of the nonce, the agent token). Byte 1: bit 0,
 * a browser redeems each link; bit 1, the reaper runs after each line. The
 * rest is lines, to A, or to B after "2:"; "!lose" and "!reconnect" end that
 * tunnel (and bring it back), "!end" ends the job, "!reap" runs the reaper.
 * "@A" in a line stands for the alias last registered, "@O", "@J", "@X",
 * "@E" for routes of the ordinary uid (orphaned; orphaned of the job; the
 * job's direct route; carried by another tunnel), "@T", "@U" for another
 * uid's (a tunnel route, a socket route).
 *
 * Invariants, checked with abort(): a hello gets the challenge with the
 * tunnel's nonce, then a welcome for the uid it proved (a personal gateway's
 * own only) or an error; a request gets at most one answer, a JSON
 * object of its type with its id, an error with a code of
 * docs/tunnel-protocol.md; what is registered or linked is this tunnel's
 * uid's and job's, carried by this tunnel (a direct route: the job's), with
 * its URL and a one-time link (that redeems once); an unregistered route is
 * gone; a line never changes the routes of another uid or job, nor takes a
 * route from another tunnel but by registering it; every route a tunnel
 * carries is in its own list; once a tunnel ends no route is carried by it
 * and the hub counts no tunnel; no crash, leak or undefined behaviour (ASan,
 * UBSan). Each input starts from the same state, so that it reproduces alone.
 */
#include <errno.h>
#include <ftw.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "fuzz.h"
#include "fuzz_gw.h"
#include "config.h"
#include "jobca.h"
#include "jobcert.h"
#include "log.h"
#include "offload.h"
#include "registry.h"
#include "route.h"
#include "tls.h"
#include "token.h"
#include "tunnel.h"
#include "tunnel-int.h"
#include "util.h"
#include "worker-t.h"


#define ORDINARY ((uid_t)1000)
#define ANOTHER ((uid_t)1001)
#define JOB 4711u

static struct jg_config cfg;
static struct event_base *base;
static volatile int stopping;
static atomic_uint clients;
static struct worker w;
static struct offload offload;   /* the hello's checks run on its threads */
static X509 *cert;               /* the gateway's TLS certificate, as hubs want one */
static struct jobca *ca;
static EVP_PKEY *job_key;        /* the job's key and certificate, as its node made them */
static char *job_pem;
static char agent_token[TOKEN_STR_LEN + 1];
static struct registry *reg;
static struct tunnel_hub *hubs[2]; /* personal (with the agent token), shared */
static int reopen;               /* the job ended: a new store for the next input */

/* The routes an input finds (their aliases for "@" in lines), and the last one registered. */
static char al[128][ROUTE_ALIAS_MAX + 1];

/* One side of the input: a tunnel and how it said hello. */
struct side {
    struct tunnel *t; /* NULL once it ended */
    uint64_t id;
    int agent;        /* the agent's end of the transport: never written to, read after the
                       * hello through the agent's HTTP/2 session */
    int kind;         /* 0 peercred ordinary, 1 peercred own, 2 jobcert, 3 token, 4 peercred
                       * another */
    int policy;
    const char *hello; /* the input's own hello line (A, bit 6), or NULL */
    size_t hello_len;
};

/* ---- state ---------------------------------------------------------------------------- */

static int never_mine(void *arg, const char *alias)
{
    return 0;
}

/* A tunnel route of uid (and job) named name, attached to tunnel id (a tunnel of another
 * worker: never one of ours) and, with lost, detached again as when its agent was lost. */
static void tunnel_route(char *alias, uid_t uid, uint32_t job, uint64_t id, const char *name,
                         int lost)
{
    struct tunnel_claim c = {.uid = uid, .job = job, .tunnel = id, .name = name,
                             .local = "jupyter", .mine = never_mine};
    struct route r;
    CHECK(registry_tunnel_attach(reg, &c, &r) == 0);
    memcpy(alias, r.alias, sizeof(r.alias));
    if (lost) {
        const char *a[1] = {alias};
        registry_tunnel_detach(reg, id, a, 1, 0);
    }
}

/* The routes every input finds (with job JOB running with two destinations), in al[k] for
 * k in PRESET: another uid's socket route (U), the ordinary uid's orphaned route (O), one of
 * the job's (J), one carried by another tunnel (E), another uid's carried so (T), the job's
 * direct route (X). */
#define PRESET "UOJETX"
static struct route preset[128]; /* as made */
static int touched[128];         /* an answer named it: it may have links or sessions now */

static void make(char k)
{
    struct route r = {.uid = ANOTHER, .kind = ROUTE_UNIX, .name = "theirs",
                      .path = "/tmp/theirs.sock"};
    if (k == 'U') {
        CHECK(registry_route_add(reg, &r) == 0);
        memcpy(al['U'], r.alias, sizeof(r.alias));
    } else if (k == 'X') {
        r = (struct route){.uid = ORDINARY, .job = JOB, .kind = ROUTE_DIRECT, .name = "direct",
                           .path = "127.0.0.1", .port = 9000};
        CHECK(registry_direct_add(reg, &r) == 0);
        memcpy(al['X'], r.alias, sizeof(r.alias));
    } else {
        tunnel_route(al[(int)k], k == 'T' ? ANOTHER : ORDINARY, k == 'J' ? JOB : 0,
                     k == 'T' ? 2 : k == 'E' ? 3 : 1,
                     k == 'O' ? "orphan" : k == 'J' ? "jobapp" : k == 'E' ? "elsewhere" : "theirs",
                     k == 'O' || k == 'J');
    }
    CHECK(registry_route_get(reg, al[(int)k], &preset[(int)k]) == 0);
    touched[(int)k] = 0;
}

static void populate(void)
{
    for (const char *k = PRESET; *k; k++)
        make(*k);
    snprintf(al['A'], sizeof(al['A']), "none");
}

static int same_route(const struct route *a, const struct route *b)
{
    return a->uid == b->uid && a->job == b->job && a->kind == b->kind &&
           a->tunnel == b->tunnel && a->port == b->port && strcmp(a->name, b->name) == 0 &&
           strcmp(a->path, b->path) == 0 && a->asleep == b->asleep && a->once == b->once &&
           a->poll == b->poll && a->checkin == b->checkin && a->cb_port == b->cb_port &&
           a->cross_site == b->cross_site && a->wanted == b->wanted && a->held == b->held;
}

static void state_open(void)
{
    char err[512];
    int64_t now = now_real();
    reg = registry_open(&cfg, err, sizeof(err));
    CHECK(reg);
    for (int i = 0; i < 2; i++) {
        cfg.shared = i;
        hubs[i] = tunnel_hub_new(&cfg, reg, ca, getuid(), cert, err, sizeof(err));
        CHECK(hubs[i]);
    }
    struct job j = {.id = JOB, .uid = ORDINARY, .user = "alice", .node = "cn1",
                    .not_after = now + 86400, .started = now}, out;
    CHECK(registry_job_start(reg, &j, &out) == 0);
    struct job_dest d[2] = {{.node = "cn1", .host = "127.0.0.1", .port = 9000},
                            {.node = "cn1", .host = "10.0.0.1", .port = 9001}};
    CHECK(registry_job_ready(reg, JOB, "cn1", d, 2) == 0);
    w.reg = reg;
    populate();
}

static void state_close(void)
{
    for (int i = 0; i < 2; i++)
        tunnel_hub_free(hubs[i]);
    registry_close(reg);
    fuzz_store_remove();
}

/* A route every input finds, as made and not named in an answer since; a tunnel route
 * without its agent also detached no longer ago than half the grace time, so that no
 * input's reaper finds it away too long in a long run (time must not change an input). */
static int preset_intact(const struct route *r, int k)
{
    int64_t grace_ms = (int64_t)cfg.grace * 1000;
    return !touched[k] && same_route(r, &preset[k]) && r->detached == preset[k].detached &&
           (r->kind != ROUTE_TUNNEL || r->tunnel || now_mono_ms() - r->detached < grace_ms / 2);
}

/* After each input: the routes it made removed, and those every input finds made again
 * where it changed them (or named them in an answer: they may have links or sessions),
 * through the registry; a new store after a job ended, and now and then so that the audit
 * trail does not grow without end (opening one costs its fsyncs: too slow for every input).
 * Which of those are gone is settled before any is made again: aliases are reused (the fuzz
 * build has 12 words), so one made again may get the alias another one had, and would pass
 * for it. */
static void state_reset(void)
{
    static unsigned inputs;
    struct route *v, now;
    int gone[128] = {0};
    if (reopen || ++inputs % 4096 == 0) {
        reopen = 0;
        state_close();
        state_open();
        return;
    }
    int n = registry_routes(reg, 0, 1, &v);
    CHECK(n >= 0);
    for (int i = 0; i < n; i++) {
        const char *k = PRESET;
        while (*k && strcmp(v[i].alias, al[(int)*k]) != 0)
            k++;
        if (*k && preset_intact(&v[i], *k))
            continue;
        CHECK(registry_route_remove(reg, v[i].alias, v[i].uid, 0, 0, "fuzz: next input") == 0);
    }
    free(v);
    for (const char *k = PRESET; *k; k++)
        gone[(int)*k] = registry_route_get(reg, al[(int)*k], &now) < 0;
    for (const char *k = PRESET; *k; k++)
        if (gone[(int)*k])
            make(*k);
    /* Each one there under its own alias, as made, and nothing else. */
    for (const char *k = PRESET; *k; k++) {
        CHECK(registry_route_get(reg, al[(int)*k], &now) == 0 && preset_intact(&now, *k));
        for (const char *o = PRESET; o < k; o++)
            CHECK(strcmp(al[(int)*o], al[(int)*k]) != 0);
    }
    CHECK(registry_route_count(reg) == strlen(PRESET));
    snprintf(al['A'], sizeof(al['A']), "none");
}

/* The job's key and its certificate, signed by the agent CA as the node channel does. */
static void job_credentials(void)
{
    char err[256], *csr;
    job_key = EVP_EC_gen("P-256");
    X509_REQ *req = X509_REQ_new();
    BIO *b = BIO_new(BIO_s_mem());
    CHECK(job_key && req && b && X509_REQ_set_pubkey(req, job_key) &&
          X509_REQ_sign(req, job_key, EVP_sha256()) > 0 && PEM_write_bio_X509_REQ(b, req));
    long len = BIO_get_mem_data(b, &csr);
    struct jobca_job jj = {.job_id = JOB, .uid = ORDINARY, .user = "alice",
                           .not_after = now_real() + 86400};
    CHECK(jobca_sign(ca, csr, (size_t)len, &jj, &job_pem, err, sizeof(err)) == 0);
    BIO_free(b);
    X509_REQ_free(req);
}

int LLVMFuzzerInitialize(int *argc, char ***argv); /* libFuzzer calls it once, first */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[512], p[128];
    log_init("fuzz_tunnel_ops", 0, LOG_LVL_ERR);
    signal(SIGPIPE, SIG_IGN); /* as the daemon does */
    CHECK(evthread_use_pthreads() == 0 && offload_start(&offload) == 0);
    fuzz_gw_init("tunnelops", &cfg, &cert);
    cfg.quota_routes = 8;
    cfg.quota_links = 6;
    cfg.quota_tunnels = 2;
    ca = jobca_open(dir, err, sizeof(err));
    CHECK(ca);
    job_credentials();
    base = event_base_new();
    CHECK(base);
    w.cfg = &cfg;
    w.base = base;
    w.stopping = &stopping;
    w.clients = &clients;
    w.max_clients = 16;
    w.offload = &offload;
    state_open();
    snprintf(p, sizeof(p), "%s/agent.token", dir);
    FILE *f = fopen(p, "r");
    CHECK(f && fgets(agent_token, sizeof(agent_token), f) && fclose(f) == 0);
    return 0;
}

/* ---- checks --------------------------------------------------------------------------- */

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* The answers waiting in t's control stream, in a new array (the queue is emptied). */
static json_t *answers(struct tunnel *t)
{
    json_t *arr = json_array();
    size_t n;
    char *line;
    while ((line = evbuffer_readln(t->ctl_out, &n, EVBUFFER_EOL_LF))) {
        json_error_t jerr;
        json_t *m = json_loadb(line, n, JSON_REJECT_DUPLICATES, &jerr);
        CHECK(json_is_object(m) && str(m, "type") && !memchr(line, '\r', n));
        json_array_append_new(arr, m);
        free(line);
    }
    CHECK(evbuffer_get_length(t->ctl_out) == 0); /* whole lines only */
    return arr;
}

/* A link of alias in answer a: its URL, and a one-time link (that redeems once). */
static void check_link(json_t *a, const char *alias, int redeem)
{
    char url[REGISTRY_URL_MAX], cookie[TOKEN_STR_LEN + 1];
    const char *u = str(a, "url"), *l = str(a, "link");
    CHECK(registry_url(reg, alias, url, sizeof(url)) == 0 && u && strcmp(u, url) == 0 && l);
    size_t n = strlen(url);
    CHECK(strncmp(l, url, n) == 0 && strncmp(l + n, "_jobgate/redeem/", 16) == 0);
    const char *tok = l + n + 16;
    CHECK(token_syntax_ok(tok, strlen(tok)));
    CHECK(json_integer_value(json_object_get(a, "expires")) > 0);
    if (redeem) {
        CHECK(registry_redeem(reg, alias, tok, strlen(tok), cookie) == 0);
        CHECK(registry_redeem(reg, alias, tok, strlen(tok), cookie) < 0);
    }
}

/* Every route t carries is in its list, which holds no alias twice. */
static void check_carried(struct tunnel *t)
{
    struct route *v;
    int n = registry_routes(reg, 0, 1, &v);
    CHECK(t->nreg <= TUN_MAX_REG);
    for (unsigned i = 0; i < t->nreg; i++)
        for (unsigned k = i + 1; k < t->nreg; k++)
            CHECK(strcmp(t->reg[i].alias, t->reg[k].alias) != 0);
    for (int i = 0; i < n; i++)
        if (v[i].kind == ROUTE_TUNNEL && v[i].tunnel == t->id)
            CHECK(v[i].uid == t->uid && v[i].job == t->job && tctl_reg_find(t, v[i].alias) >= 0);
    free(v);
}

/* No route is carried by tunnel id (it ended). */
static void check_released(uint64_t id)
{
    struct route *v;
    int n = registry_routes(reg, 0, 1, &v);
    for (int i = 0; i < n; i++)
        CHECK(v[i].tunnel != id);
    free(v);
}

/* What one line of t's may have changed, from the routes before it (v[0..n)). */
static void check_others(struct tunnel *t, const struct route *v, int n, const char *type)
{
    struct route *after;
    int na = registry_routes(reg, 0, 1, &after);
    for (int i = 0; i < na; i++) {
        int k = 0;
        while (k < n && strcmp(v[k].alias, after[i].alias) != 0)
            k++;
        if (k == n) /* new: t's own, for its uid and job */
            CHECK(after[i].uid == t->uid && after[i].job == t->job &&
                  ((after[i].kind == ROUTE_TUNNEL && after[i].tunnel == t->id) ||
                   (after[i].kind == ROUTE_DIRECT && t->job)));
    }
    free(after);
    for (int i = 0; i < n; i++) {
        struct route now;
        int gone = registry_route_get(reg, v[i].alias, &now) < 0;
        if (v[i].uid != t->uid || v[i].job != t->job)
            CHECK(!gone && same_route(&v[i], &now)); /* another's (I2), another job's */
        else if (v[i].kind == ROUTE_TUNNEL && v[i].tunnel && v[i].tunnel != t->id)
            /* Another tunnel's: only taken over (register by its alias or name). */
            CHECK(!gone && (same_route(&v[i], &now) ||
                            (strcmp(type, "register") == 0 && now.tunnel == t->id)));
    }
}

/* The answer a (or none) to request m of t's. */
static void check_answer(struct tunnel *t, json_t *m, json_t *a, int redeem)
{
    static const char *const codes[] = {"invalid", "forbidden", "not_found", "limit", "quota",
                                        "ended", "not_destination", "unavailable", "internal"};
    const char *type = str(m, "type"), *got = str(a, "type"), *alias = str(a, "alias");
    json_t *id = json_object_get(m, "id");
    struct route r;
    CHECK(json_equal(id, json_object_get(a, "id")) || (!id && !json_object_get(a, "id")));
    if (strcmp(got, "error") == 0) {
        size_t k = 0;
        while (str(a, "code") && k < JG_ARRAY_LEN(codes) && strcmp(str(a, "code"), codes[k]))
            k++;
        CHECK(k < JG_ARRAY_LEN(codes) && str(a, "error") && *str(a, "error"));
        return;
    }
    CHECK(strcmp(got, type) == 0 || (strcmp(type, "register") == 0 &&
                                     strcmp(got, "registered") == 0) ||
          (strcmp(type, "unregister") == 0 && strcmp(got, "unregistered") == 0));
    CHECK(alias && route_alias_valid(alias, strlen(alias)));
    for (const char *k = PRESET; *k; k++)
        touched[(int)*k] |= strcmp(alias, al[(int)*k]) == 0;
    if (strcmp(got, "unregistered") == 0) {
        CHECK(registry_route_get(reg, alias, &r) == -ENOENT);
        return;
    }
    CHECK(registry_route_get(reg, alias, &r) == 0 && r.uid == t->uid && r.job == t->job);
    if (strcmp(got, "registered") == 0 && str(a, "kind"))
        CHECK(strcmp(str(a, "kind"), "direct") == 0 && r.kind == ROUTE_DIRECT && t->job);
    else
        CHECK(r.kind == ROUTE_TUNNEL && r.tunnel == t->id && tctl_reg_find(t, alias) >= 0);
    snprintf(al['A'], sizeof(al['A']), "%s", alias);
    if (strcmp(got, "registered") == 0 && str(m, "alias") && strcmp(str(m, "alias"), alias) == 0) {
        /* Its own route back: the agent has a link already. */
        char url[REGISTRY_URL_MAX];
        CHECK(!json_object_get(a, "link") && registry_url(reg, alias, url, sizeof(url)) == 0);
        CHECK(str(a, "url") && strcmp(str(a, "url"), url) == 0);
        return;
    }
    check_link(a, alias, redeem);
}

/* ---- tunnels -------------------------------------------------------------------------- */

static int on_agent_data(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    evbuffer_add(ud, data, len); /* the control stream: the only stream before the welcome */
    return 0;
}

/* What the agent got on t's control stream (as its HTTP/2 session reads it from its end,
 * once the tunnel's loop wrote it out) and what still waits to be sent, as messages. */
static json_t *sent(struct tunnel *t, int agent)
{
    static const struct tunnel_session_cbs cbs = {.data_chunk = on_agent_data};
    struct evbuffer *got = evbuffer_new();
    nghttp2_session *h2;
    uint8_t buf[16384];
    ssize_t n;
    for (int i = 0; i < 8 && evbuffer_get_length(bufferevent_get_output(t->wr)) > 0; i++)
        CHECK(event_base_loop(base, EVLOOP_NONBLOCK) == 0);
    CHECK(tunnel_session_new(&h2, TUNNEL_ROLE_AGENT, &cbs, got) == 0);
    while ((n = recv(agent, buf, sizeof(buf), MSG_DONTWAIT)) > 0)
        CHECK(nghttp2_session_mem_recv(h2, buf, (size_t)n) == n);
    nghttp2_session_del(h2);
    evbuffer_add_buffer(got, t->ctl_out); /* whole lines: each message is added whole */
    evbuffer_add_buffer(t->ctl_out, got);
    evbuffer_free(got);
    return answers(t);
}

/* s's canned hello (or the input's own, with @C, @S, @K in it) into a new string. */
static char *hello_line(struct tunnel *t, const struct side *s)
{
    static const char *const policies[] = {
        NULL, "{\"reconnect\":false}", "{\"sleeps\":true,\"poll\":30,\"checkin\":60}",
        "{\"sleeps\":true,\"callback\":true,\"checkin\":60}"};
    char payload[64], err[256], *sig = NULL, *line;
    int n = snprintf(payload, sizeof(payload), "jobgate/1 hello %s", t->nonce);
    if (s->kind == 2 || (s->hello && memmem(s->hello, s->hello_len, "@S", 2)))
        CHECK(jobcert_sign(job_key, payload, (size_t)n, &sig, err, sizeof(err)) == 0);
    else
        sig = xstrdup("-");
    json_t *pem = json_string(job_pem);
    char *cert_json = json_dumps(pem, JSON_ENCODE_ANY);
    if (s->hello) {
        /* The input's: its bytes as they are, the three marks replaced. */
        size_t cap = s->hello_len * (strlen(cert_json) + strlen(sig) + sizeof(agent_token)) + 1;
        char *o = line = xmalloc(cap);
        for (size_t i = 0; i < s->hello_len; i++) {
            const char *rep = NULL;
            if (s->hello[i] == '@' && i + 1 < s->hello_len) {
                char c = s->hello[i + 1];
                rep = c == 'C' ? cert_json : c == 'S' ? sig : c == 'K' ? agent_token : NULL;
            }
            if (rep) {
                o = stpcpy(o, rep);
                i++;
            } else {
                *o++ = s->hello[i];
            }
        }
        *o = '\0';
    } else {
        static const char *const methods[] = {"peercred", "peercred", "jobcert", "token",
                                              "peercred"};
        json_t *auth = json_pack("{s:s}", "method", methods[s->kind]);
        if (s->kind == 2) {
            json_object_set_new(auth, "cert", json_string(job_pem));
            json_object_set_new(auth, "signature", json_string(sig));
        }
        if (s->kind == 3)
            json_object_set_new(auth, "token", json_string(agent_token));
        json_t *h = json_pack("{s:s, s:i, s:o, s:s, s:s}", "type", "hello", "version", 1, "auth",
                              auth, "node", "cn1", "agent", "fuzz");
        if (s->policy)
            json_object_set_new(h, "policy", json_loads(policies[s->policy], 0, NULL));
        if (s->kind == 2)
            json_object_set_new(h, "job", json_string("4711"));
        line = json_dumps(h, JSON_COMPACT);
        json_decref(h);
    }
    free(cert_json);
    json_decref(pem);
    free(sig);
    return line;
}

/* A new tunnel for s (handed over as `jobgate tunnel --stdio` does) and its hello: s->t is
 * the tunnel once welcomed, else NULL (refused, and ended). */
static void connect_side(struct side *s)
{
    static const uid_t peer[] = {ORDINARY, (uid_t)-1, ORDINARY, (uid_t)-1, ANOTHER};
    int sv[2];
    uid_t uid = peer[s->kind] == (uid_t)-1 ? getuid() : peer[s->kind];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(tunnel_adopt_stdio(&w, sv[0], sv[0], -1, uid) == 0);
    s->agent = sv[1];
    struct tunnel *t = LIST_FIRST(&w.tunnels);
    CHECK(t && t->st == T_HELLO && !t->dead && evbuffer_get_length(t->ctl_out) == 0);
    char *line = hello_line(t, s);
    size_t n = strlen(line);
    line[n] = '\n';
    t->busy++;
    tctl_input(t, (const uint8_t *)line, n + 1);
    free(line);
    /* The credential's user is looked up off the loop: its answer comes back as an event. */
    while (t->st == T_AUTH && !t->dead)
        CHECK(event_base_loop(base, EVLOOP_ONCE) == 0);
    json_t *arr = sent(t, s->agent), *a = json_array_get(arr, 1);
    json_t *ch = json_array_get(arr, 0);
    CHECK(strcmp(str(ch, "type"), "challenge") == 0 && strcmp(str(ch, "nonce"), t->nonce) == 0);
    s->id = t->id;
    if (t->st == T_READY && !t->dead) {
        CHECK(json_array_size(arr) == 2 && strcmp(str(a, "type"), "welcome") == 0);
        CHECK(json_integer_value(json_object_get(a, "uid")) == (json_int_t)t->uid);
        /* I2: the uid the hello proved: the hand-over's, the job's, or the token's (the
         * gateway's own); a personal gateway takes only its own. */
        CHECK(t->uid == uid || (t->job == JOB && t->uid == ORDINARY) || t->uid == getuid());
        CHECK(cfg.shared || t->uid == getuid());
        s->t = t;
    } else {
        /* Refused with a reason, or ended at a malformed line. */
        CHECK(json_array_size(arr) == 1 || json_array_size(arr) == 2);
        CHECK(!a || (strcmp(str(a, "type"), "error") == 0 && str(a, "code") && str(a, "error")));
        tunnel_kill(t, "fuzz: refused");
        s->t = NULL;
    }
    json_decref(arr);
    tunnel_leave(t);
    if (!s->t) {
        close(s->agent);
        check_released(s->id);
    }
}

static void lose(struct side *s)
{
    if (!s->t)
        return;
    s->t->busy++;
    tunnel_kill(s->t, "fuzz: the agent went away");
    tunnel_leave(s->t); /* freed: its routes wait for their agent (or sleep, or end) */
    s->t = NULL;
    close(s->agent);
    check_released(s->id);
}

/* One line of the agent's on s's tunnel. */
static void feed(struct side *s, const char *line, size_t len, int redeem)
{
    struct tunnel *t = s->t;
    struct route *v;
    int n = registry_routes(reg, 0, 1, &v);
    json_t *m = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
    char *buf = xmalloc(len + 1);
    memcpy(buf, line, len);
    buf[len] = '\n';
    t->busy++;
    tctl_input(t, (const uint8_t *)buf, len + 1);
    free(buf);
    json_t *arr = answers(t);
    CHECK(json_array_size(arr) <= 1);
    if (!t->dead) {
        /* An empty line is skipped; anything else was decoded (as tunnel_msg_decode
         * does): a typed request with a sane id, or the tunnel would have ended. */
        CHECK(len == 0 || (json_is_object(m) && str(m, "type")));
        if (len == 0)
            CHECK(json_array_size(arr) == 0);
        else if (json_array_size(arr) == 1)
            check_answer(t, m, json_array_get(arr, 0), redeem);
        else
            CHECK(!strcmp(str(m, "type"), "sleep") || !strcmp(str(m, "type"), "release"));
        check_carried(t);
    } else {
        CHECK(json_array_size(arr) == 0);
    }
    check_others(t, v, n, json_is_object(m) && str(m, "type") ? str(m, "type") : "");
    json_decref(arr);
    json_decref(m);
    free(v);
    if (t->dead) {
        tunnel_leave(t);
        s->t = NULL;
        close(s->agent);
        check_released(s->id);
    } else {
        tunnel_leave(t);
    }
}

/* ---- the input ------------------------------------------------------------------------ */

/* line with its "@X" marks replaced by the aliases they stand for, into a new string. */
static char *expand(const char *line, size_t len, size_t *outlen)
{
    char *out = xmalloc(len * (ROUTE_ALIAS_MAX + 1) + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = i + 1 < len ? (unsigned char)line[i + 1] : 0;
        if (line[i] == '@' && strchr("AOJXETU", c) && c) {
            o = stpcpy(o, al[c]);
            i++;
        } else {
            *o++ = line[i];
        }
    }
    *outlen = (size_t)(o - out);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t how = data[0], more = data[1];
    const char *p = (const char *)data + 2, *end = (const char *)data + size, *nl;
    struct side sides[2] = {{.kind = how & 3, .policy = (how >> 3) & 3},
                            {.kind = (how & 0x80) ? 4 : how & 3, .policy = (how >> 3) & 3}};
    cfg.shared = !!(how & 4); /* read at each use */
    w.hub = hubs[cfg.shared];
    if (how & 0x40) { /* the first line is A's hello */
        if (!(nl = memchr(p, '\n', (size_t)(end - p))))
            goto out;
        sides[0].hello = p;
        sides[0].hello_len = (size_t)(nl - p);
        p = nl + 1;
    }
    connect_side(&sides[0]);
    if (how & 0x20)
        connect_side(&sides[1]);
    for (; (nl = memchr(p, '\n', (size_t)(end - p))); p = nl + 1) {
        size_t len;
        char *line = expand(p, (size_t)(nl - p), &len), *l = line;
        struct side *s = &sides[0];
        if (len >= 2 && memcmp(l, "2:", 2) == 0) {
            s = &sides[1];
            l += 2;
            len -= 2;
        }
        if (len == 5 && memcmp(l, "!lose", 5) == 0) {
            lose(s);
        } else if (len == 10 && memcmp(l, "!reconnect", 10) == 0) {
            lose(s);
            connect_side(s);
        } else if (len == 4 && memcmp(l, "!end", 4) == 0) {
            /* The job's epilog: its routes go, its tunnels end at their next tick. */
            (void)registry_job_end(reg, JOB, 0, "fuzz: the job ended");
            reopen = 1;
        } else if (len == 5 && memcmp(l, "!reap", 5) == 0) {
            registry_reap(reg);
        } else if (s->t) {
            feed(s, l, len, more & 1);
        }
        free(line);
        if (more & 2)
            registry_reap(reg);
    }
out:
    for (int i = 0; i < 2; i++)
        lose(&sides[i]);
    CHECK(LIST_EMPTY(&w.tunnels) && atomic_load(&clients) == 0);
    for (int i = 0; i < 2; i++)
        CHECK(hubs[i]->tunnels == 0 && hubs[i]->pending == 0);
    state_reset();
    return 0;
}
