/* gateway — see gateway.h. */
#include "gateway.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <event2/thread.h>
#include <jansson.h>
#include <netinet/in.h>

#include "alias.h"
#include "auth.h"
#include "conn.h"
#include "control.h"
#include "log.h"
#include "store.h"
#include "tls.h"
#include "tunnel.h"
#include "util.h"

#define TICK_SECS 1
#define DRAIN_SECS 10 /* how long a stopping gateway lets requests in flight finish */
#define EXPIRE_EVERY_TICKS 60

int gateway_url(const struct gateway *gw, const char *alias, char *buf, size_t len)
{
    return xsnprintf(buf, len, "https://%s%s/", alias, gw->url_suffix);
}

int gateway_link_json(struct gateway *gw, json_t *obj, const char *alias, int64_t ttl)
{
    char token[TOKEN_STR_LEN + 1], url[512], link[640];
    int64_t expires;
    gateway_url(gw, alias, url, sizeof(url));
    json_object_set_new(obj, "url", json_string(url));
    if (auth_link_new(gw->auth, alias, ttl, token, &expires) < 0)
        return -1;
    snprintf(link, sizeof(link), "%s_jobgate/redeem/%s", url, token);
    json_object_set_new(obj, "link", json_string(link));
    json_object_set_new(obj, "expires", json_integer(expires));
    memset(token, 0, sizeof(token));
    memset(link, 0, sizeof(link));
    return 0;
}

int gateway_route_add(struct gateway *gw, struct route *r)
{
    int rc = alias_new(gw->routes, r->alias, sizeof(r->alias));
    if (rc < 0)
        return rc;
    rc = store_route_put(gw->store, r);
    if (rc < 0)
        return rc;
    rc = route_add(gw->routes, r);
    if (rc < 0) {
        store_route_delete(gw->store, r->alias);
        return rc;
    }
    const char *how = r->kind == ROUTE_UNIX ? "unix:" : r->kind == ROUTE_TCP ? "tcp:" : "tunnel:";
    store_audit(gw->store, r->uid, "route.add", r->alias, r->kind == ROUTE_TCP ? "tcp" : r->path);
    log_info("route add alias=%s uid=%u name=%s backend=%s%s%s", r->alias, (unsigned)r->uid,
             r->name, how, r->kind == ROUTE_TCP ? "" : r->path, r->starting ? " (starting)" : "");
    return 0;
}

int gateway_route_update(struct gateway *gw, const struct route *r)
{
    int rc = store_route_put(gw->store, r);
    if (rc < 0)
        return rc;
    route_remove(gw->routes, r->alias);
    rc = route_add(gw->routes, r);
    if (rc == 0)
        log_info("route update alias=%s uid=%u %s", r->alias, (unsigned)r->uid,
                 r->starting ? "starting" : "ready");
    return rc;
}

int gateway_route_remove(struct gateway *gw, const char *alias, uid_t by, const char *why)
{
    char a[ROUTE_ALIAS_MAX + 1];
    snprintf(a, sizeof(a), "%s", alias); /* alias may point into the route we free */
    int rc = store_route_delete(gw->store, a);
    if (rc < 0 && rc != -ENOENT)
        return rc;
    route_remove(gw->routes, a);
    auth_drop_alias(gw->auth, a);
    gateway_revoked(gw);
    store_audit(gw->store, by, "route.remove", a, why);
    log_info("route remove alias=%s by uid=%u (%s)", a, (unsigned)by, why);
    return 0;
}

void gateway_rdlock(struct gateway *gw)
{
    if (pthread_rwlock_rdlock(&gw->lock) != 0)
        fatal("state lock: cannot lock for reading");
}

void gateway_wrlock(struct gateway *gw)
{
    if (pthread_rwlock_wrlock(&gw->lock) != 0)
        fatal("state lock: cannot lock for writing");
}

void gateway_unlock(struct gateway *gw)
{
    pthread_rwlock_unlock(&gw->lock);
}

void gateway_conn_gone(struct worker *w)
{
    if (w->gw->stopping && w->draining && w->nconns == 0) {
        event_base_loopexit(w->base, NULL); /* drained */
        return;
    }
    if (w->listener_paused && !w->gw->stopping && w->nconns < w->gw->cfg->max_connections) {
        evconnlistener_enable(w->listener);
        w->listener_paused = 0;
    }
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    struct worker *w = arg;
    conn_accept(w, fd, sa, salen);
    if (w->nconns >= w->gw->cfg->max_connections && !w->listener_paused) {
        log_warn("worker %u: %u connections open: not accepting more until some close", w->idx,
                 w->nconns);
        evconnlistener_disable(lis);
        w->listener_paused = 1;
    }
}

static void resume_accepting(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (!w->gw->stopping && w->nconns < w->gw->cfg->max_connections) {
        evconnlistener_enable(w->listener);
        w->listener_paused = 0;
    }
}

static void on_accept_error(struct evconnlistener *lis, void *arg)
{
    struct worker *w = arg;
    int err = EVUTIL_SOCKET_ERROR();
    struct timeval sec = {1, 0};
    /* Out of descriptors (or another accept error): a level-triggered listener
     * would spin; pause a second (this worker may have no connection whose
     * closing could resume it). */
    log_warn("worker %u: accept: %s; pausing for a second", w->idx,
             evutil_socket_error_to_string(err));
    evconnlistener_disable(lis);
    w->listener_paused = 1;
    event_base_once(w->base, -1, EV_TIMEOUT, resume_accepting, w, &sec);
}

/* Each proxied connection holds two descriptors: take all the kernel allows. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            log_warn("cannot raise the open-file limit: %s", strerror(errno));
    }
}

struct reap_ctx {
    char dead[16][ROUTE_ALIAS_MAX + 1];
    uid_t uid[16];
    int n;
};

static int find_dead(const struct route *r, void *arg)
{
    struct reap_ctx *rc = arg;
    if (r->pid > 0 && rc->n < 16 && kill(r->pid, 0) < 0 && errno == ESRCH) {
        snprintf(rc->dead[rc->n], sizeof(rc->dead[0]), "%s", r->alias);
        rc->uid[rc->n++] = r->uid;
    }
    return 0;
}

/* Routes die with their owner process; links and sessions with their time. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct gateway *gw = arg;
    struct reap_ctx rc = {.n = 0};
    gateway_wrlock(gw);
    route_filter(gw->routes, find_dead, &rc);
    for (int i = 0; i < rc.n; i++)
        gateway_route_remove(gw, rc.dead[i], rc.uid[i], "owner process gone");
    tunnel_reap(gw);
    if (++gw->ticks % EXPIRE_EVERY_TICKS == 0)
        auth_expire(gw->auth, now_real());
    gateway_unlock(gw);
}

void gateway_revoked(struct gateway *gw)
{
    atomic_fetch_add(&gw->revocations, 1);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    unsigned r = atomic_load(&w->gw->revocations);
    if (r != w->seen_revocation) {
        w->seen_revocation = r;
        conn_revoke_sweep(w);
    }
    log_flush();
}

/* On the worker's thread: stop accepting, close idle connections, let
 * exchanges in flight finish, and end the loop when none is left (or after
 * DRAIN_SECS). */
static void worker_drain(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct timeval limit = {DRAIN_SECS, 0};
    if (w->listener) { /* closed, not paused: new connections are refused at once */
        evconnlistener_free(w->listener);
        w->listener = NULL;
    }
    w->draining = 1;
    tunnel_close_all(w);
    conn_drain(w);
    if (w->nconns == 0)
        event_base_loopexit(w->base, NULL);
    else
        event_base_loopexit(w->base, &limit);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct gateway *gw = arg;
    if (sig == SIGHUP) {
        log_info("SIGHUP: nothing to reload yet");
        return;
    }
    if (gw->stopping)
        return;
    log_info("signal %d: stopping; requests in flight get up to %d s to finish", (int)sig,
             DRAIN_SECS);
    gw->stopping = 1;
    control_stop(gw);
    /* Each worker drains its own connections on its own thread (worker_drain),
     * and closes what is left when its loop ends (worker_main). */
    struct timeval now = {0, 0};
    for (unsigned i = 0; i < gw->nworkers; i++)
        event_base_once(gw->workers[i].base, -1, EV_TIMEOUT, worker_drain, &gw->workers[i], &now);
}

static int load_route(const struct route *r, void *arg)
{
    struct gateway *gw = arg;
    struct route c = *r;
    if (c.kind == ROUTE_TUNNEL)
        c.detached = now_mono_ms(); /* its agent reconnects, or the grace time ends it */
    if (route_add(gw->routes, &c) < 0)
        log_warn("stored route %s is invalid; ignored", r->alias);
    return 0;
}

static int listen_on(struct gateway *gw, struct worker *w, char *err, size_t errlen)
{
    char host[256];
    unsigned port;
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    if (config_split_hostport(gw->cfg->listen, host, sizeof(host), &port) < 0) {
        snprintf(err, errlen, "bad listen address '%s'", gw->cfg->listen);
        return -EINVAL;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        sl = sizeof(*s4);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        sl = sizeof(*s6);
    } else {
        snprintf(err, errlen, "listen address '%s' is not a numeric IP address", host);
        return -EINVAL;
    }
    /* Every worker binds the same address; the kernel spreads connections. */
    unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC;
    if (gw->nworkers > 1)
        flags |= LEV_OPT_REUSEABLE_PORT;
    w->listener = evconnlistener_new_bind(w->base, on_accept, w, flags, 1024,
                                          (struct sockaddr *)&ss, (int)sl);
    if (!w->listener) {
        snprintf(err, errlen, "cannot listen on %s: %s", gw->cfg->listen, strerror(errno));
        return -EADDRINUSE;
    }
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    if (gw->cfg->public_port == 0)
        gw->cfg->public_port = port;
    return 0;
}

int gateway_init(struct gateway *gw, struct jg_config *cfg, char *err, size_t errlen)
{
    char path[4096];
    pthread_rwlockattr_t la;
    int rc;
    memset(gw, 0, sizeof(*gw));
    gw->cfg = cfg;
    gw->uid = getuid();
    gw->limits.max_start_line = cfg->max_request_line;
    gw->limits.max_head = cfg->max_header_bytes;
    gw->limits.max_fields = cfg->max_headers;

    raise_nofile();
    rc = mkdir_p(cfg->state_dir, 0700);
    if (rc < 0) {
        snprintf(err, errlen, "cannot create state directory %s: %s", cfg->state_dir, strerror(-rc));
        return rc;
    }
    const char *cert = cfg->cert_file, *key = cfg->key_file;
    char crt_path[4096], key_path[4096];
    if (!cert) {
        rc = tls_selfsigned_ensure(cfg->state_dir, cfg->domain, err, errlen);
        if (rc < 0)
            return rc;
        snprintf(crt_path, sizeof(crt_path), "%s/tls.crt", cfg->state_dir);
        snprintf(key_path, sizeof(key_path), "%s/tls.key", cfg->state_dir);
        cert = crt_path;
        key = key_path;
    }
    gw->ssl = tls_server_ctx(cert, key, err, errlen);
    if (!gw->ssl)
        return -EINVAL;

    snprintf(path, sizeof(path), "%s/jobgate.db", cfg->state_dir);
    rc = store_open(&gw->store, path);
    if (rc < 0) {
        snprintf(err, errlen, "cannot open the state database %s (see above)", path);
        return rc;
    }
    gw->routes = route_table_new();
    gw->auth = auth_new(gw->store);
    rc = tunnel_hub_init(gw, err, errlen);
    if (rc < 0)
        return rc;
    store_route_load(gw->store, load_route, gw);
    auth_expire(gw->auth, now_real());
    auth_load(gw->auth, now_real());

    rc = pthread_rwlockattr_init(&la);
    if (rc == 0)
        rc = pthread_rwlockattr_setkind_np(&la, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (rc == 0)
        rc = pthread_rwlock_init(&gw->lock, &la);
    pthread_rwlockattr_destroy(&la);
    if (rc != 0) {
        snprintf(err, errlen, "cannot create the state lock: %s", strerror(rc));
        return -rc;
    }
    gw->lock_ready = 1;
    if (evthread_use_pthreads() < 0) {
        snprintf(err, errlen, "libevent has no thread support");
        return -ENOSYS;
    }
    gw->nworkers = cfg->workers;
    if (gw->nworkers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        gw->nworkers = n < 1 ? 1 : n > 8 ? 8 : (unsigned)n;
    }
    gw->workers = xcalloc(gw->nworkers, sizeof(*gw->workers));
    for (unsigned i = 0; i < gw->nworkers; i++) {
        struct worker *w = &gw->workers[i];
        w->gw = gw;
        w->idx = i;
        /* The changelist folds the add/del pairs that bufferevents make within
         * one loop turn into one epoll_ctl, or none. */
        struct event_config *ecfg = event_config_new();
        if (ecfg) {
            event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
            w->base = event_base_new_with_config(ecfg);
            event_config_free(ecfg);
        }
        if (!w->base) {
            snprintf(err, errlen, "cannot create an event loop");
            return -ENOMEM;
        }
        rc = listen_on(gw, w, err, errlen);
        if (rc < 0)
            return rc;
        w->ev_flush = event_new(w->base, -1, EV_PERSIST, on_flush, w);
        struct timeval sec = {1, 0};
        event_add(w->ev_flush, &sec);
    }
    if (gw->cfg->public_port == 443)
        snprintf(gw->url_suffix, sizeof(gw->url_suffix), ".%s", cfg->domain);
    else
        snprintf(gw->url_suffix, sizeof(gw->url_suffix), ".%s:%u", cfg->domain, cfg->public_port);
    rc = control_start(gw, err, errlen);
    if (rc < 0)
        return rc;

    struct event_base *main_base = gw->workers[0].base;
    static const int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        gw->ev_signal[i] = evsignal_new(main_base, sigs[i], on_signal, gw);
        event_add(gw->ev_signal[i], NULL);
    }
    signal(SIGPIPE, SIG_IGN);
    gw->ev_tick = event_new(main_base, -1, EV_PERSIST, on_tick, gw);
    struct timeval tick = {TICK_SECS, 0};
    event_add(gw->ev_tick, &tick);
    log_info("jobgated %s (%s mode) listening on %s with %u worker%s: apps at "
             "https://<alias>%s/, %zu routes",
             JG_VERSION, cfg->shared ? "shared" : "personal", cfg->listen, gw->nworkers,
             gw->nworkers == 1 ? "" : "s", gw->url_suffix, route_count(gw->routes));
    return 0;
}

/* An event loop until the gateway stops; then this worker's connections close. */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to worker 0 */
    event_base_dispatch(w->base);
    tunnel_close_all(w);
    conn_close_all(w);
    log_flush();
    return NULL;
}

int gateway_run(struct gateway *gw)
{
    for (unsigned i = 1; i < gw->nworkers; i++) {
        struct worker *w = &gw->workers[i];
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            log_err("cannot start worker %u: %s", i, strerror(rc));
            on_signal(SIGTERM, 0, gw);
            break;
        }
        w->started = 1;
    }
    int rc = event_base_dispatch(gw->workers[0].base) < 0 ? -EIO : 0;
    if (!gw->stopping)
        on_signal(SIGTERM, 0, gw);
    tunnel_close_all(&gw->workers[0]);
    conn_close_all(&gw->workers[0]);
    for (unsigned i = 1; i < gw->nworkers; i++)
        if (gw->workers[i].started)
            pthread_join(gw->workers[i].thread, NULL);
    return rc;
}

/* After a fork (daemonising): every event loop must be reinitialised. */
int gateway_reinit(struct gateway *gw)
{
    for (unsigned i = 0; i < gw->nworkers; i++)
        if (event_reinit(gw->workers[i].base) < 0)
            return -EIO;
    return 0;
}

void gateway_free(struct gateway *gw)
{
    log_flush();
    control_stop(gw);
    for (int i = 0; i < 3; i++)
        if (gw->ev_signal[i])
            event_free(gw->ev_signal[i]);
    if (gw->ev_tick)
        event_free(gw->ev_tick);
    for (unsigned i = 0; gw->workers && i < gw->nworkers; i++) {
        struct worker *w = &gw->workers[i];
        if (w->base) {
            tunnel_close_all(w);
            conn_close_all(w);
        }
        if (w->ev_flush)
            event_free(w->ev_flush);
        if (w->listener)
            evconnlistener_free(w->listener);
        if (w->base)
            event_base_free(w->base);
    }
    free(gw->workers);
    if (gw->ssl)
        SSL_CTX_free(gw->ssl);
    auth_free(gw->auth);
    tunnel_hub_free(gw);
    route_table_free(gw->routes);
    store_close(gw->store);
    if (gw->lock_ready)
        pthread_rwlock_destroy(&gw->lock);
    memset(gw, 0, sizeof(*gw));
}
