/* tunnel_thread — the agent tunnel's thread and its public API (agent_tunnel.h):
 * agent_tunnel_open/register/close on the caller's thread, the command queue
 * that carries their requests to the tunnel's thread, the thread's loop and
 * its last cleanup, and the small helpers every tunnel file uses to tell the
 * user something or complete a waiter.
 *
 * The agent_tunnel_* functions run on the caller's thread and touch only
 * what agent_tunnel_open fixed before the thread started, plus mu-guarded
 * state (commands, waiters). Everything else here runs on the tunnel's
 * thread. tun_waiter_done takes mu itself. */
#include "tunnel-int.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "config.h"
#include "util.h"

void tun_vfmt(char *dst, size_t len, const char *fmt, va_list ap)
{
    if (vsnprintf(dst, len, fmt, ap) < 0)
        dst[0] = '\0';
}

/* Text from the gateway for a message: printable ASCII, at most max bytes. */
void tun_printable(char *dst, size_t dstlen, const char *s, size_t max)
{
    size_t n = 0;
    for (; s && *s && n + 1 < dstlen && n < max; s++)
        dst[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    dst[n] = '\0';
}

void tun_tell(struct agent_tunnel *t, const struct agent_tunnel_event *ev)
{
    if (t->on_event) {
        t->on_event(t->event_arg, ev);
        return;
    }
    if (ev->message)
        fprintf(stderr, "jobgate: %s\n", ev->message);
}

void tun_notice(struct agent_tunnel *t, const char *fmt, ...)
{
    char msg[ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    tun_vfmt(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct agent_tunnel_event ev = {.event = "notice", .message = msg};
    tun_tell(t, &ev);
}

void tun_waiter_done(struct agent_tunnel *t, struct waiter *w, int rc, json_t *reply,
                     const char *fmt, ...)
{
    pthread_mutex_lock(&t->mu);
    if (!w->done) {
        w->rc = rc;
        w->reply = reply;
        reply = NULL;
        if (fmt) {
            va_list ap;
            va_start(ap, fmt);
            tun_vfmt(w->err, sizeof(w->err), fmt, ap);
            va_end(ap);
        }
        w->done = 1;
        pthread_cond_broadcast(&t->cond);
    }
    pthread_mutex_unlock(&t->mu);
    json_decref(reply);
}

static void register_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct app_entry *a = arg;
    struct agent_tunnel *t = a->t;
    (void)fd;
    (void)what;
    if (!a->w)
        return;
    struct waiter *w = a->w;
    a->w = NULL;
    tun_waiter_done(t, w, -ETIMEDOUT, NULL,
                    "the gateway did not answer the registration of %s within %d s", a->name,
                    TUNNEL_REGISTER_TIMEOUT_MS / 1000);
    /* If the answer still comes, the route is taken back (on_registered). */
    a->abandoned = 1;
    if (!a->id[0])
        app_entry_remove(t, a);
}

int tun_has_routes(const struct agent_tunnel *t)
{
    for (const struct app_entry *a = t->apps; a; a = a->next)
        if (a->alias && !a->keep)
            return 1;
    return 0;
}

static void start_close(struct agent_tunnel *t)
{
    t->stopping = 1;
    evtimer_del(t->retry_ev);
    struct tconn *c = t->conn;
    int up = c && c->ph == PH_READY && !c->dead && !c->closing;
    /* Asleep: dial once more to take the routes back (tun_close_apps on the
     * welcome; the dial and handshake timeouts bound it). */
    int wake = !c && t->asleep && tun_has_routes(t);
    int waking = c && !c->dead && !c->closing && c->ph != PH_READY && tun_has_routes(t);
    for (struct app_entry *a = t->apps; a; a = a->next) {
        if (a->w) {
            struct waiter *w = a->w;
            a->w = NULL;
            tun_waiter_done(t, w, -ECANCELED, NULL, "the tunnel is closing");
        }
        if (a->keep)
            continue; /* a direct route outlives this tunnel */
        if (a->alias && !up && !wake && !waking) {
            char palias[256];
            tun_printable(palias, sizeof(palias), a->alias, 255);
            tun_notice(t, "could not remove %s from the gateway (the tunnel is down); the gateway "
                       "drops it after its grace period", palias);
        }
    }
    if (wake) {
        conn_attempt(t);
        return;
    }
    if (!c) {
        event_base_loopbreak(t->base);
        return;
    }
    if (!up && !c->dead && !c->closing && c->ph != PH_READY && tun_has_routes(t)) {
        /* Dialled to wake: the welcome takes the apps back (on_welcome sees
         * stopping); the phase timer bounds the wait. */
        return;
    }
    if (!up) {
        conn_fail(c, "closed");
        conn_pump(c);
        return;
    }
    tun_close_apps(c);
    conn_pump(c);
}

void tun_close_apps(struct tconn *c)
{
    struct agent_tunnel *t = c->t;
    /* The app has ended: its browser connections end too. */
    for (struct dstream *ds = c->streams; ds; ds = ds->next)
        if (ds->kind == DS_CONNECT && ds->br.sid)
            (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid, NGHTTP2_CANCEL);
    for (struct app_entry *a = t->apps; a; a = a->next)
        if (a->alias && !a->keep)
            cmsg_unregister(c, a->alias);
    c->closing = 1;
    if (c->idle_timer)
        evtimer_del(c->idle_timer);
    memcpy(c->reason, "closed", sizeof("closed"));
    struct timeval tv = tun_ms_tv(TUNNEL_CLOSE_TIMEOUT_MS);
    evtimer_add(c->close_timer, &tv);
}

static void do_register(struct agent_tunnel *t, struct app_entry *a, struct waiter *w)
{
    if (t->stopping) {
        tun_waiter_done(t, w, -ECANCELED, NULL, "the tunnel is closing");
        app_entry_free(a);
        return;
    }
    a->t = t;
    a->w = w;
    app_entry_pick_local(t, a);
    a->timer = evtimer_new(t->base, register_timeout_cb, a);
    if (!a->timer) {
        tun_waiter_done(t, w, -ENOMEM, NULL, "out of memory");
        app_entry_free(a);
        return;
    }
    a->next = t->apps;
    t->apps = a;
    struct timeval tv = tun_ms_tv(TUNNEL_REGISTER_TIMEOUT_MS);
    evtimer_add(a->timer, &tv);
    struct tconn *c = t->conn;
    if (c && c->ph == PH_READY && !c->dead && !c->closing) {
        cmsg_register(c, a);
        conn_idle_check(c);
    } else if (!c && t->asleep) {
        evtimer_del(t->retry_ev); /* wake now: the welcome registers it */
        conn_attempt(t);
        if (t->conn)
            t->conn->wanted = 1; /* a new app: its link is about to be opened */
    }
}

/* One app leaves a tunnel that others keep: unregistered now when the
 * connection is up, else at the next welcome (waking a sleeping tunnel). */
static void do_unregister(struct agent_tunnel *t, const char *local, int release)
{
    struct app_entry *a = app_entry_find_local(t, local);
    if (!a || a->keep)
        return;
    if (release && t->conn && t->conn->h2) {
        /* Its run is gone: so are its browser connections, as with a lost tunnel. */
        for (struct dstream *ds = t->conn->streams; ds; ds = ds->next)
            if (ds->kind == DS_CONNECT && ds->br.sid && strcmp(ds->authority, a->local) == 0)
                (void)nghttp2_submit_rst_stream(t->conn->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                                NGHTTP2_CANCEL);
    }
    if (a->w) {
        struct waiter *w = a->w;
        a->w = NULL;
        tun_waiter_done(t, w, -ECANCELED, NULL, "the app left");
    }
    struct tconn *c = t->conn;
    if (a->id[0]) {
        /* Its (re-)registration is on its way: the answer takes it back. */
        a->abandoned = 1;
        a->release = release;
    } else if (!a->alias) {
        app_entry_remove(t, a);
    } else if (c && c->ph == PH_READY && !c->dead && !c->closing) {
        if (release)
            cmsg_release(c, a->alias);
        else
            cmsg_unregister(c, a->alias);
        app_entry_remove(t, a);
        conn_idle_check(c);
    } else if (release) {
        app_entry_remove(t, a); /* not taken back: its route waits as it is */
    } else {
        a->gone = 1;
        if (!c && t->asleep) {
            evtimer_del(t->retry_ev);
            conn_attempt(t);
        }
    }
}

/* Empties the queue the caller's thread fills, in one step under mu. */
static struct cmd *take_cmds(struct agent_tunnel *t)
{
    pthread_mutex_lock(&t->mu);
    struct cmd *list = t->cmds;
    t->cmds = NULL;
    t->cmds_tail = &t->cmds;
    pthread_mutex_unlock(&t->mu);
    return list;
}

static void cmd_cb(evutil_socket_t fd, short what, void *arg)
{
    struct agent_tunnel *t = arg;
    (void)what;
    uint64_t n;
    (void)!read(fd, &n, sizeof(n)); /* the count does not matter: the list does */
    struct cmd *list = take_cmds(t);
    while (list) {
        struct cmd *cm = list;
        list = cm->next;
        if (cm->type == CMD_REGISTER)
            do_register(t, cm->app, cm->w);
        else if (cm->type == CMD_UNREGISTER) {
            do_unregister(t, cm->app->local, cm->app->release);
            app_entry_free(cm->app);
        } else if (cm->type == CMD_ADOPT) {
            /* Only to be unregistered when the tunnel closes. */
            cm->app->t = t;
            app_entry_pick_local(t, cm->app);
            cm->app->next = t->apps;
            t->apps = cm->app;
        }
        else if (!t->stopping || t->conn)
            start_close(t);
        else
            event_base_loopbreak(t->base);
        free(cm);
    }
    if (t->conn)
        conn_pump(t->conn);
}

static void post_cmd(struct agent_tunnel *t, struct cmd *cm)
{
    pthread_mutex_lock(&t->mu);
    if (t->ended) {
        /* The thread is gone (a lost tunnel without reconnect). */
        pthread_mutex_unlock(&t->mu);
        if (cm->w)
            tun_waiter_done(t, cm->w, -ECONNRESET, NULL, "the tunnel to the gateway is closed");
        if (cm->app)
            app_entry_free(cm->app);
        free(cm);
        return;
    }
    *t->cmds_tail = cm;
    t->cmds_tail = &cm->next;
    pthread_mutex_unlock(&t->mu);
    uint64_t one = 1;
    (void)!write(t->cmd_fd, &one, sizeof(one)); /* EAGAIN: a wake-up is pending anyway */
}

static void *tunnel_thread(void *arg)
{
    struct agent_tunnel *t = arg;
    struct timeval now = {0, 0};
    evtimer_add(t->retry_ev, &now);
    (void)event_base_loop(t->base, EVLOOP_NO_EXIT_ON_EMPTY);

    t->stopping = 1;
    if (t->conn) {
        conn_fail(t->conn, "closed");
        conn_teardown(t->conn);
    }
    if (t->opening) {
        t->opening = 0;
        tun_waiter_done(t, &t->open_w, -ECANCELED, NULL, "the tunnel was closed");
    }
    /* libevent finishes freeing a bufferevent (its TLS state included) from
     * the loop, after the callbacks in flight: give a connection torn down
     * in the last turn, or just above, that turn (LeakSanitizer saw the
     * leftovers when the open failed after the handshake). */
    (void)event_base_loop(t->base, EVLOOP_NONBLOCK);
    /* Commands that came too late; later ones are refused by post_cmd. */
    pthread_mutex_lock(&t->mu);
    t->ended = 1;
    pthread_mutex_unlock(&t->mu);
    struct cmd *list = take_cmds(t);
    while (list) {
        struct cmd *cm = list;
        list = cm->next;
        if (cm->type == CMD_REGISTER) {
            tun_waiter_done(t, cm->w, -ECANCELED, NULL, "the tunnel is closed");
            app_entry_free(cm->app);
        } else if (cm->type == CMD_ADOPT || cm->type == CMD_UNREGISTER) {
            app_entry_free(cm->app);
        }
        free(cm);
    }
    for (struct app_entry *a = t->apps; a; a = a->next) {
        if (a->w) {
            struct waiter *w = a->w;
            a->w = NULL;
            tun_waiter_done(t, w, -ECANCELED, NULL, "the tunnel is closed");
        }
    }
    dial_reap_children(t, 1);
    return NULL;
}

static void tunnel_free(struct agent_tunnel *t)
{
    while (t->apps) {
        struct app_entry *a = t->apps;
        t->apps = a->next;
        app_entry_free(a);
    }
    if (t->cmd_ev)
        event_free(t->cmd_ev);
    if (t->retry_ev)
        event_free(t->retry_ev);
    if (t->base)
        event_base_free(t->base);
    if (t->cmd_fd >= 0)
        close(t->cmd_fd);
    if (t->ssl_ctx)
        SSL_CTX_free(t->ssl_ctx);
    json_decref(t->open_w.reply);
    free(t->state_dir);
    free(t->munge_socket);
    free(t->job);
    free(t->job_cert);
    EVP_PKEY_free(t->job_key);
    free(t->ssh_path);
    dial_free_strv(t->ssh_argv);
    dial_free_strv(t->envp);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cond);
    free(t);
}

static void wait_done(struct agent_tunnel *t, struct waiter *w)
{
    pthread_mutex_lock(&t->mu);
    while (!w->done)
        pthread_cond_wait(&t->cond, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

static char *env_dup(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? xstrdup(v) : NULL;
}

int agent_tunnel_open(const struct agent_tunnel_opts *o, struct agent_tunnel **out, char *err,
                      size_t errlen)
{
    *out = NULL;
    if (!o || (!o->gateway == !o->via))
        return errmsg(err, errlen, -EINVAL, "give either a gateway URL or --via ssh:HOST");

    struct agent_tunnel *t = xcalloc(1, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    t->cmds_tail = &t->cmds;
    t->cmd_fd = -1;
    t->ping_interval_ms = o->ping_interval_ms > 0 ? o->ping_interval_ms : TUNNEL_PING_INTERVAL_MS;
    t->ping_timeout_ms = o->ping_timeout_ms > 0 ? o->ping_timeout_ms : TUNNEL_PING_TIMEOUT_MS;
    t->on_event = o->on_event;
    t->event_arg = o->event_arg;
    t->policy = o->policy ? *o->policy : POLICY_DEFAULT;

    int rc;
    if (o->via) {
        t->via_ssh = 1;
        rc = agent_tunnel_parse_via(o->via, t->host, sizeof(t->host), err, errlen);
        if (rc == 0) {
            (void)xsnprintf(t->where, sizeof(t->where), "ssh:%s", t->host);
            rc = dial_ssh_prepare(t, err, errlen);
        }
        if (rc == 0)
            dial_snapshot_env(t);
    } else {
        rc = agent_tunnel_parse_gateway(o->gateway, t->host, sizeof(t->host), &t->port, err,
                                        errlen);
        if (rc == 0) {
            struct in6_addr a6;
            struct in_addr a4;
            t->host_is_ip = inet_pton(AF_INET, t->host, &a4) == 1 ||
                            inet_pton(AF_INET6, t->host, &a6) == 1;
            (void)xsnprintf(t->where, sizeof(t->where), strchr(t->host, ':') ? "[%s]:%u" : "%s:%u",
                            t->host, t->port);
            rc = proxy_from_env(t->host, &t->proxy, err, errlen);
            t->have_proxy = rc == 1;
            if (rc > 0)
                rc = 0;
        }
        char job_ca[PATH_MAX];
        char *cert_env = env_dup("JOBGATE_CERT"), *key_env = env_dup("JOBGATE_KEY");
        const char *cert = o->cert_file ? o->cert_file : cert_env;
        const char *key = o->cert_file ? o->key_file : key_env;
        job_ca[0] = '\0';
        if (rc == 0 && cert && !key)
            rc = errmsg(err, errlen, -EINVAL, "JOBGATE_CERT needs JOBGATE_KEY");
        else if (rc == 0 && cert)
            rc = trust_user_cert_load(t, cert, key, err, errlen);
        else if (rc == 0)
            rc = trust_job_load(t, job_ca, sizeof(job_ca), err, errlen);
        free(cert_env);
        free(key_env);
        if (rc == 0) {
            char *ca_env = env_dup("JOBGATE_CA");
            const char *ca_file = o->ca_file ? o->ca_file : ca_env ? ca_env
                                  : job_ca[0] ? job_ca : NULL;
            t->ssl_ctx = trust_ssl_ctx_new(ca_file, err, errlen);
            free(ca_env);
            if (!t->ssl_ctx)
                rc = -EINVAL;
        }
        t->state_dir = config_default_state_dir();
        t->munge_socket = env_dup("JOBGATE_MUNGE_SOCKET");
    }
    if (rc < 0) {
        tunnel_free(t);
        return rc;
    }
    if (gethostname(t->node, sizeof(t->node)) < 0)
        memcpy(t->node, "unknown", sizeof("unknown"));
    t->node[sizeof(t->node) - 1] = '\0';
    t->job = env_dup("JOBGATE_JOB_ID");
    if (!t->job)
        t->job = env_dup("SLURM_JOB_ID");
    if (t->job && strlen(t->job) > 64) {
        free(t->job);
        t->job = NULL;
    }

    /* Only the tunnel thread touches the loop: the caller wakes it through
     * an eventfd, so the loop runs without libevent's locks. */
    struct event_config *ecfg = event_config_new();
    if (ecfg && event_config_set_flag(ecfg, EVENT_BASE_FLAG_NOLOCK) == 0)
        t->base = event_base_new_with_config(ecfg);
    if (ecfg)
        event_config_free(ecfg);
    t->cmd_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!t->base || t->cmd_fd < 0 ||
        !(t->cmd_ev = event_new(t->base, t->cmd_fd, EV_READ | EV_PERSIST, cmd_cb, t)) ||
        event_add(t->cmd_ev, NULL) < 0 ||
        !(t->retry_ev = evtimer_new(t->base, conn_retry_cb, t))) {
        tunnel_free(t);
        return errmsg(err, errlen, -ENOMEM, "cannot set up the event loop");
    }
    t->opening = 1;

    /* The thread starts with the forwarded signals (and SIGPIPE) blocked, so
     * that they keep going to the caller's handlers. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    rc = pthread_create(&t->thread, NULL, tunnel_thread, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        tunnel_free(t);
        return errmsg(err, errlen, -rc, "cannot start the tunnel thread: %s", strerror(rc));
    }

    wait_done(t, &t->open_w);
    if (t->open_w.rc < 0) {
        rc = t->open_w.rc;
        (void)errmsg(err, errlen, rc, "%s", t->open_w.err);
        pthread_join(t->thread, NULL);
        tunnel_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* Hands app a to the tunnel's thread to register and waits for the answer. */
static int register_wait(struct agent_tunnel *t, struct app_entry *a, json_t **reply, char *err,
                         size_t errlen)
{
    struct waiter w;
    memset(&w, 0, sizeof(w));
    struct cmd *cm = xcalloc(1, sizeof(*cm));
    cm->type = CMD_REGISTER;
    cm->app = a;
    cm->w = &w;
    post_cmd(t, cm);
    wait_done(t, &w);
    if (w.rc < 0)
        return errmsg(err, errlen, w.rc, "%s", w.err);
    *reply = w.reply;
    return 0;
}

int agent_tunnel_register(struct agent_tunnel *t, const char *name, const char *sock,
                          unsigned port, int64_t ttl, json_t **reply, char *err, size_t errlen)
{
    struct agent_app app = {.name = name, .sock = sock, .port = port, .ttl = ttl};
    return agent_tunnel_add(t, &app, reply, err, errlen);
}

int agent_tunnel_add(struct agent_tunnel *t, const struct agent_app *app, json_t **reply,
                     char *err, size_t errlen)
{
    const char *name = app->name, *sock = app->sock;
    unsigned port = app->port;
    *reply = NULL;
    if (app->alias && (!*app->alias || strlen(app->alias) > 255))
        return errmsg(err, errlen, -EINVAL, "bad alias");
    if (!app_name_valid(name, APP_NAME_MAX))
        return errmsg(err, errlen, -EINVAL, "bad app name '%s'", name ? name : "");
    size_t nlen = strlen(name);
    struct app_entry *a = xcalloc(1, sizeof(*a));
    memcpy(a->name, name, nlen + 1);
    if (sock) {
        if (strlen(sock) == 0 || strlen(sock) >= sizeof(a->sock)) {
            free(a);
            return errmsg(err, errlen, -ENAMETOOLONG, "socket path too long: %s", sock);
        }
        memcpy(a->sock, sock, strlen(sock) + 1);
    } else if (port == 0 || port > 65535) {
        free(a);
        return errmsg(err, errlen, -EINVAL, "bad port %u", port);
    }
    a->port = sock ? 0 : port;
    a->ttl = app->ttl;
    a->cb_port = app->callback_port <= 65535 ? app->callback_port : 0;
    a->cross_site = app->cross_site;
    a->alias = app->alias ? xstrdup(app->alias) : NULL;
    return register_wait(t, a, reply, err, errlen);
}

int agent_tunnel_register_direct(struct agent_tunnel *t, const char *name, unsigned port,
                                 int64_t ttl, json_t **reply, char *err, size_t errlen)
{
    *reply = NULL;
    if (!app_name_valid(name, APP_NAME_MAX) || port == 0 || port > 65535)
        return errmsg(err, errlen, -EINVAL, "bad app name or port");
    struct app_entry *a = xcalloc(1, sizeof(*a));
    memcpy(a->name, name, strlen(name) + 1);
    a->direct_port = port;
    a->keep = 1;
    a->ttl = ttl;
    return register_wait(t, a, reply, err, errlen);
}

void agent_tunnel_unregister_at_close(struct agent_tunnel *t, const char *name,
                                      const char *alias)
{
    struct app_entry *a = xcalloc(1, sizeof(*a));
    (void)xsnprintf(a->name, sizeof(a->name), "%s", name);
    a->alias = xstrdup(alias);
    a->direct_port = 1; /* never registered again */
    struct cmd *cm = xcalloc(1, sizeof(*cm));
    cm->type = CMD_ADOPT;
    cm->app = a;
    post_cmd(t, cm);
}

void agent_tunnel_unregister(struct agent_tunnel *t, const char *local, int release)
{
    struct app_entry *a = xcalloc(1, sizeof(*a));
    (void)xsnprintf(a->local, sizeof(a->local), "%s", local);
    a->release = release;
    struct cmd *cm = xcalloc(1, sizeof(*cm));
    cm->type = CMD_UNREGISTER;
    cm->app = a; /* only its local name: which app to take back */
    post_cmd(t, cm);
}

void agent_tunnel_close(struct agent_tunnel *t)
{
    if (!t)
        return;
    struct cmd *cm = xcalloc(1, sizeof(*cm));
    cm->type = CMD_CLOSE;
    post_cmd(t, cm);
    pthread_join(t->thread, NULL);
    tunnel_free(t);
}
