/* gateway — see gateway.h. */
#include "gateway.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "control.h"
#include "jobca.h"
#include "jobcert.h"
#include "log.h"
#include "nodechan.h"
#include "jobwatch.h"
#include "registry.h"
#include "tls.h"
#include "tunnel.h"
#include "util.h"
#include "worker.h"

#define TICK_SECS 1

/* Each client connection holds two descriptors (its own and its app's):
 * raises the open-file limit as far as the hard limit allows and returns
 * how many client connections fit, at most max_connections. */
static unsigned fit_nofile(unsigned max_connections)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return max_connections;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
            log_warn("cannot raise the open-file limit: %s", strerror(errno));
            (void)getrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    rlim_t need = 2 * (rlim_t)max_connections + GATEWAY_NOFILE_RESERVE;
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
        return max_connections;
    unsigned fit = rl.rlim_cur > 2 * GATEWAY_NOFILE_RESERVE
                       ? (unsigned)((rl.rlim_cur - GATEWAY_NOFILE_RESERVE) / 2) : 256;
    log_warn("max_connections = %u needs %llu open files, the limit is %llu: taking at most "
             "%u client connections (raise LimitNOFILE, or ulimit -Hn)", max_connections,
             (unsigned long long)need, (unsigned long long)rl.rlim_cur, fit);
    return fit;
}

/* Routes die with their owner process or agent; links and sessions with their time. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct gateway *gw = arg;
    registry_reap(gw->reg);
}

static void reload(struct gateway *gw);

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct gateway *gw = arg;
    if (sig == SIGHUP) {
        reload(gw);
        return;
    }
    if (gw->stopping)
        return;
    log_info("signal %d: stopping; requests in flight get up to %d s to finish", (int)sig,
             (int)gw->cfg->drain);
    gw->stopping = 1;
    control_stop(gw->control);
    gw->control = NULL;
    /* Each worker drains its own connections on its own thread, and closes
     * what is left when its loop ends (worker_loop). */
    for (unsigned i = 0; i < gw->nworkers; i++)
        worker_stop(&gw->workers[i]);
}

/* The certificate: the configured one, or a self-signed one made on first start. */
/* The TLS context of the certificate and key (the configured ones, else the
 * self-signed pair in the state directory, made first when create). */
static SSL_CTX *load_tls(const struct jg_config *cfg, int create, char *err, size_t errlen)
{
    const char *cert = cfg->cert_file, *key = cfg->key_file;
    char crt_path[4096], key_path[4096];
    if (!cert) {
        if (create && tls_selfsigned_ensure(cfg->state_dir, cfg->domain, err, errlen) < 0)
            return NULL;
        snprintf(crt_path, sizeof(crt_path), "%s/tls.crt", cfg->state_dir);
        snprintf(key_path, sizeof(key_path), "%s/tls.key", cfg->state_dir);
        cert = crt_path;
        key = key_path;
    }
    return tls_server_ctx(cert, key, err, errlen);
}

static int make_tls(struct gateway *gw, char *err, size_t errlen)
{
    gw->ssl = load_tls(gw->cfg, 1, err, errlen);
    return gw->ssl ? 0 : -EINVAL;
}

/* A configuration SIGHUP applied, with what derives from it. Kept until the
 * gateway ends: other threads may still read one they loaded before. */
struct config_gen {
    struct jg_config cfg;
    struct http1_limits limits;
    struct config_gen *older;
};

/* The keys a SIGHUP found changed, for its log lines. */
struct changes {
    char live[600], later[600];
};

static void on_changed(void *arg, const char *section, const char *key, int live)
{
    struct changes *ch = arg;
    char *list = live ? ch->live : ch->later;
    size_t n = strlen(list), cap = sizeof(ch->live);
    if (n + 64 < cap)
        snprintf(list + n, cap - n, "%s[%s] %s", n ? ", " : "", section, key);
    else if (n + 5 < cap && strcmp(list + n - 3, "...") != 0)
        snprintf(list + n, cap - n, ", ...");
}

/* The configuration file read again into a new generation whose keys that
 * apply only at a start are the running ones. NULL with err and *rc. */
static struct config_gen *read_again(struct gateway *gw, struct changes *ch, int *rc, char *err,
                                     size_t errlen)
{
    struct config_gen *g = xcalloc(1, sizeof(*g));
    (void)config_defaults(&g->cfg); /* no HOME: the file names its paths (as at the start) */
    *rc = config_load(&g->cfg, gw->config_path, err, errlen);
    if (*rc < 0) {
        config_free(&g->cfg);
        free(g);
        return NULL;
    }
    if (gw->listen_arg) { /* jobgated --listen */
        free(g->cfg.listen);
        g->cfg.listen = xstrdup(gw->listen_arg);
    }
    if (g->cfg.public_port == 0) {
        char host[256];
        (void)config_split_hostport(g->cfg.listen, host, sizeof(host), &g->cfg.public_port);
    }
    config_reconcile(&g->cfg, gw->cfg, on_changed, ch);
    g->limits.max_start_line = g->cfg.max_request_line;
    g->limits.max_head = g->cfg.max_header_bytes;
    g->limits.max_fields = g->cfg.max_headers;
    return g;
}

/* The new generation g (when a key that applies at once changed) in every
 * holder; users (NULL: unchanged) to the node channel. */
static void publish(struct gateway *gw, struct config_gen *g, struct node_users *users)
{
    unsigned max_clients = g->cfg.max_connections != gw->cfg->max_connections
                               ? fit_nofile(g->cfg.max_connections) : 0;
    for (unsigned i = 0; i < gw->nworkers; i++) {
        struct worker *w = &gw->workers[i];
        atomic_store(&w->cfg, &g->cfg);
        atomic_store(&w->limits, &g->limits);
        if (max_clients)
            atomic_store(&w->max_clients, max_clients);
    }
    registry_reconfigure(gw->reg, &g->cfg);
    tunnel_hub_reconfigure(gw->hub, &g->cfg);
    nodechan_reconfigure(gw->nodes, &g->cfg, users);
    jobwatch_reconfigure(gw->watch, &g->cfg);
    g->older = gw->gens;
    gw->gens = g;
    gw->cfg = &g->cfg;
}

/* SIGHUP: the configuration file (shared mode) and the certificate and key
 * read again. All or nothing: a file with an error, a certificate, CA or
 * grid-mapfile that cannot be read, or a node user who does not exist
 * leaves everything as it was. A file the gateway's account may not read
 * (started as root, it dropped to [gateway] user) leaves the configuration
 * as it runs and renews the certificate alone. Open connections keep their
 * certificate and go on with the new limits and timeouts; the keys
 * config_reconcile names apply at the next start. Nothing is kept for a
 * SIGHUP that changes nothing (no new generation, the users' CA reused
 * while its file is the same), so that renewal hooks do not grow memory. */
static void reload(struct gateway *gw)
{
    char err[512], id[JOBCERT_GATEWAY_ID_LEN + 1];
    struct changes ch = {{0}, {0}};
    struct config_gen *g = NULL;
    struct tunnel_trust *trust = NULL;
    struct node_users *users = NULL;
    SSL_CTX *ctx = NULL;
    int file = gw->cfg->shared && gw->config_path, rc = 0, new_trust = 0;
    if (file) {
        g = read_again(gw, &ch, &rc, err, sizeof(err));
        if (!g && rc == -EACCES) {
            log_warn("SIGHUP: %s: the configuration stays as it runs (the gateway's account "
                     "must be able to read it); the certificate alone is read again", err);
            file = 0;
        } else if (!g) {
            goto refused;
        }
    }
    const struct jg_config *cfg = g ? &g->cfg : gw->cfg;
    if (file && !tunnel_trust_current(gw->hub, cfg)) {
        if (tunnel_trust_load(cfg, &trust, err, sizeof(err)) < 0)
            goto refused;
        new_trust = 1;
    }
    if (file && !str_same(cfg->node_users, gw->cfg->node_users) &&
        !(users = nodechan_users_load(cfg, err, sizeof(err))))
        goto refused;
    ctx = load_tls(cfg, 0, err, sizeof(err));
    if (!ctx)
        goto refused;

    for (unsigned i = 0; i < gw->nworkers; i++)
        worker_set_tls(&gw->workers[i], ctx);
    tunnel_hub_set_cert(gw->hub, SSL_CTX_get0_certificate(ctx));
    SSL_CTX_free(gw->ssl);
    gw->ssl = ctx;
    if (jobcert_gateway_id(SSL_CTX_get0_certificate(ctx), id) == 0)
        log_info("SIGHUP: certificate read again (SHA-256 %.16s...) for new connections", id);
    if (!file)
        return;
    if (new_trust) {
        tunnel_hub_set_trust(gw->hub, trust);
        log_info("SIGHUP: users' certificates: %s", cfg->client_ca ? "CA and grid-mapfile read "
                 "again" : "none taken any more");
    }
    if (ch.later[0])
        log_warn("SIGHUP: changed in the configuration file, but taken only at the next start: "
                 "%s", ch.later);
    if (ch.live[0]) {
        publish(gw, g, users);
    } else {
        nodechan_users_free(users); /* none: node_users is a key, so it did not change */
        config_free(&g->cfg);
        free(g);
    }
    log_info("SIGHUP: configuration applied (%s)", ch.live[0] ? ch.live : "nothing changed");
    return;
refused:
    if (file) {
        log_err("SIGHUP: nothing applied, all stays as it was: %s", err);
        tunnel_trust_free(trust);
        nodechan_users_free(users);
        if (g)
            config_free(&g->cfg);
        free(g);
    } else {
        log_err("SIGHUP: keeping the certificate in use: %s", err);
    }
}

/* Shared mode started as root: whom to become once bound ([gateway] user).
 * 0 with *to (uid -1: stay as we are), or -errno with err. */
static int run_as(const struct jg_config *cfg, struct passwd *to, char *buf, size_t len, char *err,
                  size_t errlen)
{
    struct passwd *res = NULL;
    uint64_t id;
    to->pw_uid = (uid_t)-1;
    if (!cfg->shared || geteuid() != 0) {
        if (cfg->run_user && geteuid() != 0)
            log_warn("[gateway] user = %s is for a gateway started as root; running as uid %u",
                     cfg->run_user, (unsigned)geteuid());
        return 0;
    }
    if (!cfg->run_user)
        return errmsg(err, errlen, -EPERM, "a shared gateway does not run as root: set "
                      "[gateway] user = ACCOUNT (jobgated drops to it once it has bound its "
                      "port), or user = root to stay root");
    int r = parse_uint(cfg->run_user, 0, UINT32_MAX - 1, &id) == 0
                ? getpwuid_r((uid_t)id, to, buf, len, &res)
                : getpwnam_r(cfg->run_user, to, buf, len, &res);
    if (r != 0 || !res)
        return errmsg(err, errlen, -ENOENT, "[gateway] user = %s: no such user", cfg->run_user);
    if (to->pw_uid == 0) {
        log_warn("running as root ([gateway] user = %s)", cfg->run_user);
        to->pw_uid = (uid_t)-1;
    }
    return 0;
}

/* Gives the state directory (and what is in it) to the account, then
 * becomes it for good: its uid, its gid, no other groups. */
static int drop_to(const struct jg_config *cfg, const struct passwd *to, char *err, size_t errlen)
{
    DIR *d = opendir(cfg->state_dir);
    struct dirent *e;
    if (!d || fchown(dirfd(d), to->pw_uid, to->pw_gid) < 0) {
        int x = errno;
        if (d)
            closedir(d);
        return errmsg(err, errlen, -x, "cannot give %s to %s: %s", cfg->state_dir, to->pw_name,
                      strerror(x));
    }
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' &&
            fchownat(dirfd(d), e->d_name, to->pw_uid, to->pw_gid, AT_SYMLINK_NOFOLLOW) < 0)
            log_warn("cannot give %s/%s to %s: %s", cfg->state_dir, e->d_name, to->pw_name,
                     strerror(errno));
    closedir(d);
    if (setgroups(0, NULL) < 0 || setgid(to->pw_gid) < 0 || setuid(to->pw_uid) < 0 ||
        setuid(0) == 0)
        return errmsg(err, errlen, -EPERM, "cannot become %s (uid %u): %s", to->pw_name,
                      (unsigned)to->pw_uid, strerror(errno));
    log_info("running as %s (uid %u, gid %u)", to->pw_name, (unsigned)to->pw_uid,
             (unsigned)to->pw_gid);
    return 0;
}

/* One gateway per state directory: two would share one database and one
 * agent CA behind each other's back (on other ports, or the same one). */
static int lock_state(struct gateway *gw, char *err, size_t errlen)
{
    char path[4096], pid[32];
    snprintf(path, sizeof(path), "%s/jobgated.lock", gw->cfg->state_dir);
    gw->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (gw->lock_fd < 0)
        return errmsg(err, errlen, -errno, "cannot open %s: %s", path, strerror(errno));
    if (flock(gw->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        ssize_t n = pread(gw->lock_fd, pid, sizeof(pid) - 1, 0);
        pid[n > 0 ? n : 0] = '\0';
        pid[strcspn(pid, "\n")] = '\0';
        if (e == EWOULDBLOCK)
            return errmsg(err, errlen, -EBUSY, "another jobgated (pid %s) uses the state "
                          "directory %s", pid[0] ? pid : "?", gw->cfg->state_dir);
        return errmsg(err, errlen, -e, "cannot lock %s: %s", path, strerror(e));
    }
    gateway_note_pid(gw);
    return 0;
}

void gateway_note_pid(struct gateway *gw)
{
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(gw->lock_fd, 0) < 0 || pwrite(gw->lock_fd, pid, (size_t)n, 0) != n)
        log_warn("cannot write the pid into %s/jobgated.lock: %s", gw->cfg->state_dir,
                 strerror(errno));
}

int gateway_init(struct gateway *gw, struct jg_config *cfg, char *err, size_t errlen)
{
    int rc;
    memset(gw, 0, sizeof(*gw));
    gw->cfg = cfg;
    gw->limits.max_start_line = cfg->max_request_line;
    gw->limits.max_head = cfg->max_header_bytes;
    gw->limits.max_fields = cfg->max_headers;

    unsigned max_clients = fit_nofile(cfg->max_connections);
    gw->lock_fd = -1;
    struct passwd to;
    char pwbuf[2048];
    rc = run_as(cfg, &to, pwbuf, sizeof(pwbuf), err, errlen);
    if (rc < 0)
        return rc;
    rc = mkdir_p(cfg->state_dir, 0700);
    if (rc < 0)
        return errmsg(err, errlen, rc, "cannot create state directory %s: %s", cfg->state_dir,
                      strerror(-rc));
    rc = lock_state(gw, err, errlen);
    if (rc < 0)
        return rc;
    rc = make_tls(gw, err, errlen);
    if (rc < 0)
        return rc;
    if (cfg->public_port == 0) { /* URLs show the port we listen on */
        char host[256];
        if (config_split_hostport(cfg->listen, host, sizeof(host), &cfg->public_port) < 0)
            return errmsg(err, errlen, -EINVAL, "bad listen address '%s'", cfg->listen);
    }
    gw->reg = registry_open(cfg, err, errlen);
    if (!gw->reg)
        return -EIO;
    gw->jobca = jobca_open(cfg->state_dir, err, errlen);
    if (!gw->jobca)
        return -EIO;
    gw->nodes = nodechan_new(cfg, gw->reg, gw->jobca, getuid(), err, errlen);
    if (!gw->nodes)
        return -EINVAL;
    gw->hub = tunnel_hub_new(cfg, gw->reg, gw->jobca, getuid(), SSL_CTX_get0_certificate(gw->ssl),
                             err, errlen);
    if (!gw->hub)
        return -EIO;
    gw->env.proc = "/proc";
    gw->env.hub = gw->hub;
    gw->env.reg = gw->reg;
    gw->env.ca = gw->jobca;

    if (evthread_use_pthreads() < 0)
        return errmsg(err, errlen, -ENOSYS, "libevent has no thread support");
    gw->nworkers = cfg->workers;
    if (gw->nworkers == 0) {
        /* The CPUs it may run on (taskset, a cgroup's cpuset), not all online. */
        cpu_set_t set;
        long n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set)
                                                               : sysconf(_SC_NPROCESSORS_ONLN);
        gw->nworkers = n < 1 ? 1 : n > 8 ? 8 : (unsigned)n;
    }
    gw->workers = xcalloc(gw->nworkers, sizeof(*gw->workers));
    for (unsigned i = 0; i < gw->nworkers; i++) {
        struct worker *w = &gw->workers[i];
        w->cfg = cfg;
        w->limits = &gw->limits;
        w->ssl = gw->ssl;
        w->reg = gw->reg;
        w->hub = gw->hub;
        w->nodes = gw->nodes;
        w->offload = &gw->offload;
        w->env = &gw->env;
        w->stopping = &gw->stopping;
        w->clients = &gw->clients;
        w->max_clients = max_clients;
        w->idx = i;
        rc = worker_init(w, gw->nworkers, err, errlen);
        if (rc < 0)
            return rc;
    }
    gw->control = control_start(&gw->workers[0], err, errlen);
    if (!gw->control)
        return -EIO;
    /* Bound, and every file it needs open: root is no longer needed. */
    if (to.pw_uid != (uid_t)-1 && (rc = drop_to(cfg, &to, err, errlen)) < 0)
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
             gw->nworkers == 1 ? "" : "s", registry_url_suffix(gw->reg),
             registry_route_count(gw->reg));
    return 0;
}

int gateway_run(struct gateway *gw)
{
    char err[256];
    /* Threads start here, after a daemon's fork: a thread does not survive fork(). */
    int rc = offload_start(&gw->offload);
    if (rc < 0) {
        log_err("cannot start the threads for MUNGE and user lookups: %s", strerror(-rc));
        on_signal(SIGTERM, 0, gw);
    }
    gw->watch = jobwatch_start(gw->cfg, gw->reg, gw->hub, err, sizeof(err));
    if (!gw->watch && err[0]) {
        log_err("%s", err);
        on_signal(SIGTERM, 0, gw);
    }
    if (gw->watch) /* before the workers start: the hub reads it without a lock */
        tunnel_hub_set_job_check(gw->hub, jobwatch_ask, gw->watch);
    for (unsigned i = 1; i < gw->nworkers; i++) {
        rc = worker_start(&gw->workers[i]);
        if (rc != 0) {
            log_err("cannot start worker %u: %s", i, strerror(rc));
            on_signal(SIGTERM, 0, gw);
            break;
        }
    }
    worker_loop(&gw->workers[0]);
    if (!gw->stopping)
        on_signal(SIGTERM, 0, gw);
    for (unsigned i = 1; i < gw->nworkers; i++)
        worker_join(&gw->workers[i]);
    offload_stop(&gw->offload); /* before the loops are freed: no thread posts to them now */
    return 0;
}

/* After a fork (daemonising): every event loop must be reinitialised. */
int gateway_reinit(struct gateway *gw)
{
    for (unsigned i = 0; i < gw->nworkers; i++)
        if (worker_reinit(&gw->workers[i]) < 0)
            return -EIO;
    return 0;
}

void gateway_free(struct gateway *gw)
{
    log_flush();
    /* A call stuck in a hung munged or NSS still uses the registry, the hub,
     * the node channel and the agent CA when it returns: those then stay for
     * the process's last moments. */
    unsigned stuck = offload_stop(&gw->offload);
    control_stop(gw->control);
    for (int i = 0; i < 3; i++)
        if (gw->ev_signal[i])
            event_free(gw->ev_signal[i]);
    if (gw->ev_tick)
        event_free(gw->ev_tick);
    for (unsigned i = 0; gw->workers && i < gw->nworkers; i++)
        worker_free(&gw->workers[i]);
    free(gw->workers);
    offload_free(&gw->offload); /* the jobs left: their owners are gone */
    if (gw->ssl)
        SSL_CTX_free(gw->ssl);
    jobwatch_stop(gw->watch);
    if (stuck) { /* gw stays as it is too (main's is static): the threads' offload */
        log_warn("%u call%s to munged or the user database still waiting: the registry and "
                 "the tunnel hub stay until the process exits", stuck, stuck == 1 ? "" : "s");
        log_flush();
        return;
    }
    tunnel_hub_free(gw->hub);
    nodechan_free(gw->nodes);
    jobca_free(gw->jobca);
    registry_close(gw->reg);
    if (gw->lock_fd >= 0)
        close(gw->lock_fd); /* the lock goes with it: the next gateway may start */
    while (gw->gens) {
        struct config_gen *older = gw->gens->older;
        config_free(&gw->gens->cfg);
        free(gw->gens);
        gw->gens = older;
    }
    memset(gw, 0, sizeof(*gw));
}
