/*
 * libFuzzer target for the control socket's operations (control_handle,
 * src/gateway/control_ops.c) over the real state behind them: a registry
 * (routes, links, jobs, SQLite store) in a fresh directory under /tmp, the
 * real backend checks (a UNIX socket of each peer in that directory, a fake
 * /proc/net/tcp) and the real tunnel hub (the `tunnel` op takes a socket
 * pair sent with the request).
 *
 * Input: the first byte picks the peer and the gateway (bits 0-1: uid 0, an
 * ordinary uid, another one, the gateway's own; bit 2: shared mode; bit 3:
 * descriptors sent with each request; bits 4-5 both set: the gateway is
 * shutting down; bit 6: a browser redeems each link; bit 7: the reaper runs
 * after each request); the rest is request lines, each handed to
 * control_handle as control.c does ("@D" in a line stands for the state
 * directory, where the peers' sockets are, D/u<uid>/app.sock, and "@P" for
 * our pid). The registry holds two jobs (one running, one ended) and the
 * scheduler's word on others.
 *
 * Invariants, checked with abort(): each request is answered by exactly one
 * line, a JSON object with a boolean "ok"; a refusal has a code of
 * docs/control-protocol.md and a sentence, and acting for another uid is
 * refused but to root in shared mode; a success has what its op promises
 * (register and link: a route of that uid, its URL and a one-time link that
 * redeems once; remove: the route is gone; ready: it is; list and jobs: only
 * the caller's unless root lists all in shared mode; list sorted, in pages,
 * each within the clients' line, the whole list when it has one page); no
 * crash, leak or undefined behaviour (ASan, UBSan). Each input starts from
 * the same state (its routes are removed after it), so that it reproduces
 * alone.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "fuzz.h"
#include "fuzz_gw.h"
#include "backend.h"
#include "config.h"
#include "control_ops.h"
#include "log.h"
#include "registry.h"
#include "route.h"
#include "tls.h"
#include "token.h"
#include "tunnel.h"
#include "util.h"
#include "worker-t.h"


#define ORDINARY ((uid_t)1000)
#define ANOTHER ((uid_t)1001)
#define LINE_MAX_FUZZ 65536 /* control.c's CTL_LINE_MAX */

static char procdir[96];
static struct jg_config cfg;
static struct event_base *base;
static struct backend_env env;
static volatile int stopping;
static atomic_uint clients;
static struct worker w;
static X509 *cert;      /* the gateway's certificate, as the hub wants one */
static struct registry *reg;
static struct tunnel_hub *hub;

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f);
    fputs(text, f);
    CHECK(fclose(f) == 0);
}

/* D/u<uid>/app.sock: a listening socket of uid's in a directory of uid's (chown needs root;
 * without it the ordinary users' registrations are refused, which is fine too). */
static void peer_socket(uid_t uid)
{
    char d[128], p[160];
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(d, sizeof(d), "%s/u%u", dir, (unsigned)uid);
    CHECK(mkdir(d, 0700) == 0);
    snprintf(p, sizeof(p), "%s/app.sock", d);
    snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", p);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 && listen(fd, 1) == 0);
    (void)!chown(p, uid, uid);
    (void)!chown(d, uid, uid);
}

/* A fake /proc/net/tcp{,6}: 127.0.0.1:8000 the ordinary uid's, :8001 root's, :8002 the
 * other uid's, :8003 on every address the ordinary uid's and on loopback another's; ::1:8004
 * the ordinary uid's. */
static void fake_proc(void)
{
    static const char head[] = "  sl  local_address rem_address   st tx_queue rx_queue tr "
                               "tm->when retrnsmt   uid  timeout inode\n";
    static const struct {
        const char *addr;
        unsigned port, uid;
    } v4[] = {{"0100007F", 8000, ORDINARY}, {"0100007F", 8001, 0},
              {"0100007F", 8002, ANOTHER},  {"00000000", 8003, ORDINARY},
              {"0100007F", 8003, ANOTHER}};
    char p[160], text[2048], six[512];
    size_t n = 0;
    snprintf(procdir, sizeof(procdir), "%s/proc", dir);
    snprintf(p, sizeof(p), "%s/net", procdir);
    CHECK(mkdir(procdir, 0700) == 0 && mkdir(p, 0700) == 0);
    n += (size_t)snprintf(text + n, sizeof(text) - n, "%s", head);
    for (size_t i = 0; i < sizeof(v4) / sizeof(v4[0]); i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n,
                              "%4zu: %s:%04X 00000000:0000 0A 00000000:00000000 00:00000000 "
                              "00000000 %5u        0 %zu 1 0000000000000000 100 0 0 10 0\n",
                              i, v4[i].addr, v4[i].port, v4[i].uid, 40000 + i);
    snprintf(p, sizeof(p), "%s/net/tcp", procdir);
    put(p, text);
    snprintf(six, sizeof(six),
             "%s   0: 00000000000000000000000001000000:1F44 00000000000000000000000000000000:0000 "
             "0A 00000000:00000000 00:00000000 00000000 %5u        0 41000 1 0000000000000000 "
             "100 0 0 10 0\n",
             head, (unsigned)ORDINARY);
    snprintf(p, sizeof(p), "%s/net/tcp6", procdir);
    put(p, six);
}

/* The jobs the `jobs` op lists: two recorded over the node channel (one running with a
 * destination, one ended) and the scheduler's word on two others. */
static void jobs(void)
{
    int64_t now = now_real();
    struct job j = {.id = 4711, .uid = ORDINARY, .user = "alice", .node = "cn1",
                    .not_after = now + 3600, .started = now};
    struct job out;
    CHECK(registry_job_start(reg, &j, &out) == 0);
    struct job_dest d = {.node = "cn1", .host = "10.0.0.1", .port = 9000};
    CHECK(registry_job_ready(reg, 4711, "cn1", &d, 1) == 0);
    j.id = 4712;
    j.uid = 0;
    snprintf(j.user, sizeof(j.user), "root");
    CHECK(registry_job_start(reg, &j, &out) == 0);
    CHECK(registry_job_end(reg, 4712, 0, "fuzz") == 0);
    struct registry_sched_job *v = xcalloc(3, sizeof(*v));
    v[0] = (struct registry_sched_job){.id = 4713, .uid = ORDINARY, .state = "PENDING"};
    v[1] = (struct registry_sched_job){.id = 4714, .uid = ANOTHER, .state = "RUNNING"};
    v[2] = (struct registry_sched_job){.id = 4715, .uid = ORDINARY, .state = "COMPLETED"};
    registry_sched_set(reg, v, 3);
}

/* The registry and the hub, with the jobs above and no route. */
static void state_open(void)
{
    char err[512];
    reg = registry_open(&cfg, err, sizeof(err));
    CHECK(reg);
    hub = tunnel_hub_new(&cfg, reg, NULL, getuid(), cert, err, sizeof(err));
    CHECK(hub);
    jobs();
    w.reg = env.reg = reg;
    w.hub = env.hub = hub;
}

static void state_close(void)
{
    tunnel_hub_free(hub);
    registry_close(reg);
    fuzz_store_remove();
}

/* After each input: its tunnels closed and its routes removed (with their links and
 * sessions), through the registry, so that the next input starts from the same state. A
 * new store now and then (opening one costs its fsyncs: too slow for every input), so that
 * the audit trail does not grow without end. */
static void state_reset(void)
{
    static unsigned inputs;
    struct route *v;
    tunnel_close_all(&w);
    CHECK(atomic_load(&clients) == 0);
    int n = registry_routes(reg, 0, 1, &v);
    CHECK(n >= 0);
    for (int i = 0; i < n; i++)
        CHECK(registry_route_remove(reg, v[i].alias, v[i].uid, 0, 0, "fuzz: next input") == 0);
    free(v);
    CHECK(registry_route_count(reg) == 0);
    if (++inputs % 4096 == 0) {
        state_close();
        state_open();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv); /* libFuzzer calls it once, first */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    log_init("fuzz_control", 0, LOG_LVL_ERR);
    fuzz_gw_init("control", &cfg, &cert);
    cfg.quota_routes = 4;
    cfg.quota_links = 6;
    peer_socket(0);
    peer_socket(ORDINARY);
    peer_socket(ANOTHER);
    fake_proc();
    base = event_base_new();
    CHECK(base);
    env.proc = procdir;
    w.cfg = &cfg;
    w.base = base;
    w.env = &env;
    w.stopping = &stopping;
    w.clients = &clients;
    w.max_clients = 16;
    state_open();
    return 0;
}

/* ---- the answers ---------------------------------------------------------------------- */

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* url is alias's URL and link a one-time link of it. */
static void check_link(json_t *a, const char *alias, int redeem)
{
    char url[REGISTRY_URL_MAX], cookie[TOKEN_STR_LEN + 1];
    const char *u = str(a, "url"), *l = str(a, "link");
    CHECK(registry_url(reg, alias, url, sizeof(url)) == 0);
    CHECK(u && strcmp(u, url) == 0 && l);
    size_t n = strlen(url);
    CHECK(strncmp(l, url, n) == 0 && strncmp(l + n, "_jobgate/redeem/", 16) == 0);
    const char *tok = l + n + 16;
    CHECK(token_syntax_ok(tok, strlen(tok)));
    json_int_t exp = json_integer_value(json_object_get(a, "expires"));
    CHECK(exp > 0 && exp <= now_real() + 7 * 86400 + 1); /* a link lives 1 s .. 7 days */
    if (redeem) {
        /* A browser redeems it: once (I1). */
        CHECK(registry_redeem(reg, alias, tok, strlen(tok), cookie) == 0);
        CHECK(registry_redeem(reg, alias, tok, strlen(tok), cookie) < 0);
    }
}

/* list: uid's own routes (everyone's for all), sorted, after "after", in a page. */
static void check_list(json_t *a, json_t *req, uid_t uid, int all)
{
    json_t *routes = json_object_get(a, "routes"), *r;
    const char *after = str(req, "after"), *prev = after, *next = str(a, "next");
    size_t i;
    CHECK(json_is_array(routes));
    json_array_foreach(routes, i, r) {
        const char *alias = str(r, "alias");
        CHECK(alias && route_alias_valid(alias, strlen(alias)));
        CHECK(all || json_integer_value(json_object_get(r, "uid")) == (json_int_t)uid);
        CHECK(!prev || strcmp(prev, alias) < 0);
        prev = alias;
    }
    CHECK(!next || (json_array_size(routes) > 0 && strcmp(next, prev) == 0));
    if (!next && !after) { /* one page: all of them */
        struct route *v;
        int n = registry_routes(reg, uid, all, &v);
        free(v);
        CHECK(n >= 0 && (size_t)n == json_array_size(routes));
    }
}

/* jobs: uid's own (everyone's for all). */
static void check_jobs(json_t *a, uid_t uid, int all)
{
    json_t *jobs = json_object_get(a, "jobs"), *j;
    size_t i;
    CHECK(json_is_array(jobs));
    json_array_foreach(jobs, i, j)
        CHECK(all || json_integer_value(json_object_get(j, "uid")) == (json_int_t)uid);
}

/* One answer line for req from peer p: what control_handle promises. */
static void check_answer(const struct ctl_peer *p, const char *line, size_t len, json_t *req,
                         int redeem)
{
    static const char *const codes[] = {"invalid", "forbidden", "not_found", "exists", "quota",
                                        "unavailable", "internal", "version"};
    json_error_t jerr;
    CHECK(len >= 2 && len <= LINE_MAX_FUZZ && !memchr(line, '\n', len));
    json_t *a = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    CHECK(json_is_object(a) && json_is_boolean(json_object_get(a, "ok")));
    const char *op = json_is_object(req) ? str(req, "op") : NULL;
    json_t *as = json_is_object(req) ? json_object_get(req, "uid") : NULL;
    uid_t uid = json_is_integer(as) ? (uid_t)json_integer_value(as) : p->uid;
    if (json_is_false(json_object_get(a, "ok"))) {
        const char *code = str(a, "code"), *error = str(a, "error");
        size_t k = 0;
        while (code && k < JG_ARRAY_LEN(codes) && strcmp(code, codes[k]) != 0)
            k++;
        CHECK(k < JG_ARRAY_LEN(codes) && error && *error && json_object_size(a) == 3);
        CHECK(strcmp(code, "version") != 0 || (op && strcmp(op, "tunnel") == 0));
        /* Acting for another user is root's, in shared mode only. */
        if (as && uid != p->uid && (p->uid != 0 || !cfg.shared))
            CHECK(strcmp(code, "forbidden") == 0 || strcmp(code, "invalid") == 0);
        if (stopping && json_is_object(req))
            CHECK(strcmp(code, "unavailable") == 0 || strcmp(code, "invalid") == 0 ||
                  strcmp(code, "forbidden") == 0);
        json_decref(a);
        return;
    }
    CHECK(op && !stopping);
    CHECK(uid == p->uid || (p->uid == 0 && cfg.shared));
    if (strcmp(op, "register") == 0 || strcmp(op, "link") == 0) {
        const char *alias = str(a, "alias");
        struct route r;
        CHECK(alias && registry_route_get(reg, alias, &r) == 0 && r.uid == uid);
        if (strcmp(op, "register") == 0)
            CHECK(strcmp(str(a, "name"), r.name) == 0 && r.kind != ROUTE_TUNNEL);
        check_link(a, alias, redeem);
    } else if (strcmp(op, "list") == 0) {
        check_list(a, req, uid, p->uid == 0 && cfg.shared && !as);
    } else if (strcmp(op, "jobs") == 0) {
        check_jobs(a, uid, p->uid == 0 && cfg.shared && !as);
    } else if (strcmp(op, "hello") == 0) {
        CHECK(json_integer_value(json_object_get(a, "uid")) == (json_int_t)uid);
        CHECK(strcmp(str(a, "mode"), cfg.shared ? "shared" : "personal") == 0);
        CHECK(strcmp(str(a, "url_suffix"), registry_url_suffix(reg)) == 0);
    } else if (strcmp(op, "ready") == 0) {
        struct route r;
        CHECK(registry_route_get(reg, str(a, "alias"), &r) == 0 && r.uid == uid && !r.starting);
    } else if (strcmp(op, "remove") == 0) {
        struct route r;
        CHECK(str(a, "alias") && registry_route_get(reg, str(a, "alias"), &r) == -ENOENT);
    } else {
        CHECK(strcmp(op, "tunnel") == 0 && p->handed_over && uid == p->uid);
    }
    json_decref(a);
}

/* ---- the requests --------------------------------------------------------------------- */

/* line with "@D" as the state directory and "@P" as our pid, into a new string. */
static char *expand(const char *line, size_t len, size_t *outlen)
{
    char pid[16];
    size_t dl = strlen(dir), pl = (size_t)snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    char *out = xmalloc(len * (dl > pl ? dl : pl) + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        if (line[i] == '@' && i + 1 < len && (line[i + 1] == 'D' || line[i + 1] == 'P')) {
            memcpy(o, line[i + 1] == 'D' ? dir : pid, line[i + 1] == 'D' ? dl : pl);
            o += line[i + 1] == 'D' ? dl : pl;
            i++;
        } else {
            *o++ = line[i];
        }
    }
    *outlen = (size_t)(o - out);
    return out;
}

/* Two ends of a fresh socket pair, as `jobgate tunnel --stdio` sends its stdin and stdout. */
static void descriptors(struct ctl_peer *p)
{
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    p->fds[0] = sv[0];
    p->fds[1] = dup(sv[0]);
    close(sv[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uid_t uids[] = {0, ORDINARY, ANOTHER, (uid_t)-1};
    if (size < 1)
        return 0;
    uint8_t how = data[0];
    int conn[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, conn) == 0);
    struct ctl_peer p = {.w = &w, .uid = uids[how & 3], .pid = getpid(), .sock = conn[0],
                         .fds = {-1, -1}};
    if (p.uid == (uid_t)-1)
        p.uid = getuid();
    stopping = (how & 0x30) == 0x30;
    cfg.shared = !!(how & 4); /* read at each use: the registry and hub need no reopening */
    struct evbuffer *out = evbuffer_new();
    const char *s = (const char *)data + 1, *end = (const char *)data + size, *nl;
    while (!p.handed_over && (nl = memchr(s, '\n', (size_t)(end - s)))) {
        size_t len, alen;
        char *line = expand(s, (size_t)(nl - s), &len);
        s = nl + 1;
        if (how & 8)
            descriptors(&p);
        control_handle(&p, line, len, out);
        for (int k = 0; k < 2; k++) /* as control.c does: good for one request */
            if (p.fds[k] >= 0) {
                close(p.fds[k]);
                p.fds[k] = -1;
            }
        /* Exactly one line, and the whole of it. */
        char *answer = evbuffer_readln(out, &alen, EVBUFFER_EOL_LF);
        CHECK(answer && evbuffer_get_length(out) == 0);
        json_t *req = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
        check_answer(&p, answer, alen, req, !!(how & 0x40));
        json_decref(req);
        free(answer);
        free(line);
        if (how & 0x80)
            registry_reap(reg); /* the daemon's tick between two requests */
    }
    evbuffer_free(out);
    close(conn[0]);
    close(conn[1]);
    state_reset();
    return 0;
}
