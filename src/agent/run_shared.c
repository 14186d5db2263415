/*
 * run_shared — publish_shared, the default of `jobgate run -g` and `--via`:
 * the app goes over the one tunnel that a holder (`jobgate tunnel --hold`,
 * cmd_hold.c) keeps for all the runs of this user on this node to the same
 * gateway with the same job, identity and policy (docs/policy.md). The run
 * finds the holder at the rendezvous socket (rendezvous.h), or starts one
 * and waits for it; its connection to the holder is its app's registration.
 *
 * When the holder ends (killed), the run takes over within the reconnect
 * backoff: it finds or starts a new holder and registers its app again under
 * the alias it had, so links, sessions and the URL stay. Without reconnect
 * in the policy that is a lost tunnel: the app ends.
 *
 * Threads: the main thread (open, add, remove, close) and, once the app is
 * registered, the reader thread, the only reader of the holder's socket: it
 * prints the tunnel's events and does the takeover. struct shared's fields
 * marked "under mu" are shared by both.
 */
#include "run.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "agent_tunnel.h"
#include "backoff.h"
#include "callback.h"
#include "cmd.h"
#include "config.h"
#include "rendezvous.h"
#include "util.h"

#define SHARED_FIND_MS 40000      /* to find or start a holder and see its tunnel open */
#define SHARED_ANSWER_MS 30000    /* a register's answer (the holder waits 15 s at most) */
#define SHARED_UNREG_MS 3000      /* the unregister's answer at the end */

struct shared {
    char ident[2048];
    char key[RDV_KEY_LEN + 1];  /* rdv_key(ident): the holder's --name */
    struct rdv_paths paths;
    pthread_t th;
    int th_started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int fd;                   /* under mu (the reader thread replaces it on takeover) */
    struct rdv_reader rd;     /* fd's: add's, then the reader thread's */
    int stopping;             /* under mu */
    int unregistered;         /* under mu */
    char alias[256];          /* the reader thread's, after add */
    unsigned cb_port;
};

/* What makes two runs' tunnels one: the gateway, the job, the identity and
 * the policy (a run with another policy gets a tunnel of its own). */
static void make_ident(const struct run *r, char *buf, size_t len)
{
    char pol[160];
    const char *job = getenv("JOBGATE_JOB_ID");
    if (!job || !*job)
        job = getenv("SLURM_JOB_ID");
    policy_format(&r->policy, pol, sizeof(pol));
    const char *dir = getenv("JOBGATE_DIR"), *munge = getenv("JOBGATE_MUNGE_SOCKET");
    char *state = config_default_state_dir(); /* a personal gateway's pinned certificate */
    /* Files by what they are, not by how a run named them (relative paths). */
    char *ca = realpath(r->ca ? r->ca : getenv("JOBGATE_CA") ? getenv("JOBGATE_CA") : "", NULL);
    char *cert = realpath(r->cert ? r->cert : getenv("JOBGATE_CERT") ? getenv("JOBGATE_CERT")
                                                                     : "", NULL);
    char *key = realpath(r->key ? r->key : getenv("JOBGATE_KEY") ? getenv("JOBGATE_KEY") : "",
                         NULL);
    const char *env[] = {"https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "JOBGATE_SSH",
                         "JOBGATE_REMOTE_JOBGATE"};
    char more[1024] = "";
    for (size_t i = 0; i < sizeof(env) / sizeof(env[0]); i++)
        if (getenv(env[i]))
            (void)xsnprintf(more + strlen(more), sizeof(more) - strlen(more), "\n%s=%s", env[i],
                            getenv(env[i]));
    (void)xsnprintf(buf, len, "jobgate/1\n%s\n%s\nca=%s\ncert=%s\nkey=%s\ndir=%s\nmunge=%s\n"
                    "state=%s\npolicy=%s\nping=%lld/%lld%s", r->gateway ? r->gateway : r->via,
                    job ? job : "", ca ? ca : "", cert ? cert : "", key ? key : "",
                    dir ? dir : "", munge ? munge : "", state ? state : "", pol,
                    (long long)r->ping_interval, (long long)r->ping_timeout, more);
    free(state);
    free(ca);
    free(cert);
    free(key);
}

/* Starts a holder (double fork: it is nobody's child to reap) and reads how
 * its start went: 1 ok, 0 busy (another is starting), -1 with err. */
static int spawn_holder(const struct run *r, const struct shared *sh, char *err, size_t errlen)
{
    char pol[160], pi[32], pt[32], sfd[16];
    policy_format(&r->policy, pol, sizeof(pol));
    (void)xsnprintf(pi, sizeof(pi), "%lld", (long long)r->ping_interval * 1000);
    (void)xsnprintf(pt, sizeof(pt), "%lld", (long long)r->ping_timeout * 1000);
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) < 0)
        return errmsg(err, errlen, -1, "pipe: %s", strerror(errno));
    (void)xsnprintf(sfd, sizeof(sfd), "%d", pfd[1]);
    const char *argv[32];
    int n = 0;
    argv[n++] = "jobgate";
    argv[n++] = "tunnel";
    argv[n++] = "--hold";
    argv[n++] = "--name";
    argv[n++] = sh->key;
    argv[n++] = r->gateway ? "-g" : "--via";
    argv[n++] = r->gateway ? r->gateway : r->via;
    if (r->ca) {
        argv[n++] = "--ca";
        argv[n++] = r->ca;
    }
    if (r->cert) {
        argv[n++] = "--cert";
        argv[n++] = r->cert;
        argv[n++] = "--key";
        argv[n++] = r->key;
    }
    argv[n++] = "--policy";
    argv[n++] = pol;
    if (r->ping_interval) {
        argv[n++] = "--ping-interval";
        argv[n++] = pi;
    }
    if (r->ping_timeout) {
        argv[n++] = "--ping-timeout";
        argv[n++] = pt;
    }
    argv[n++] = "--status-fd";
    argv[n++] = sfd;
    argv[n] = NULL;

    /* Only async-signal-safe calls between fork and exec. */
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        return errmsg(err, errlen, -1, "fork: %s", strerror(errno));
    }
    if (pid == 0) {
        /* The run's handlers (which forward ^C to its app) are not the holder's. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof(dfl));
        dfl.sa_handler = SIG_DFL;
        (void)sigaction(SIGINT, &dfl, NULL);
        (void)sigaction(SIGTERM, &dfl, NULL);
        (void)sigaction(SIGHUP, &dfl, NULL);
        sigset_t none;
        sigemptyset(&none);
        (void)sigprocmask(SIG_SETMASK, &none, NULL);
        if (fork() != 0)
            _exit(0);
        (void)setsid(); /* out of the terminal's process group before anything else */
        (void)fcntl(pfd[1], F_SETFD, 0);
        /* This very program: by its path (what a tool that runs it, valgrind
         * say, also answers), else by /proc's link (its file was replaced). */
        char self[PATH_MAX];
        ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (len > 0 && self[0] == '/') {
            self[len] = '\0';
            if (!strstr(self, " (deleted)"))
                execv(self, (char *const *)argv);
        }
        execv("/proc/self/exe", (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    (void)waitpid(pid, NULL, 0);
    char line[1200];
    size_t got = 0;
    int64_t deadline = now_mono_ms() + SHARED_FIND_MS;
    while (got < sizeof(line) - 1) {
        int64_t left = deadline - now_mono_ms();
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) == 0)
            break;
        ssize_t k = read(pfd[0], line + got, sizeof(line) - 1 - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
        if (memchr(line, '\n', got))
            break; /* one line: the holder's word */
    }
    close(pfd[0]);
    line[got] = '\0';
    if (strncmp(line, "ok", 2) == 0)
        return 1;
    if (strncmp(line, "busy", 4) == 0)
        return 0;
    if (strncmp(line, "error: ", 7) == 0) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        return errmsg(err, errlen, -1, "%s", line + 7);
    }
    return errmsg(err, errlen, -1, "the tunnel's holder (jobgate tunnel --hold) did not start");
}

static int stopping(struct shared *sh)
{
    pthread_mutex_lock(&sh->mu);
    int s = sh->stopping;
    pthread_mutex_unlock(&sh->mu);
    return s;
}

/* A connection to a holder whose tunnel is open: the fd, with its reader
 * in *rd, or -1 with err. */
static int find_holder(const struct run *r, const struct shared *sh, struct rdv_reader *rd,
                       char *err, size_t errlen)
{
    int64_t deadline = now_mono_ms() + SHARED_FIND_MS;
    for (unsigned i = 0;; i++) {
        if (stopping((struct shared *)sh))
            return errmsg(err, errlen, -1, "stopping");
        int fd = rdv_connect(sh->paths.sock, err, errlen);
        if (fd >= 0) {
            json_t *m = NULL;
            rdv_reader_init(rd, fd);
            int rc = rdv_recv(rd, &m, 5000);
            const char *type = json_string_value(json_object_get(m, "type"));
            int open = rc == 0 && type && strcmp(type, "open") == 0;
            if (rc == 0 && type && strcmp(type, "error") == 0) {
                (void)errmsg(err, errlen, -1, "%s",
                             json_string_value(json_object_get(m, "error")) ?: "refused");
                json_decref(m);
                rdv_reader_free(rd);
                close(fd);
                return -1;
            }
            json_decref(m);
            if (open)
                return fd;
            rdv_reader_free(rd);
            close(fd); /* a holder on its way out: look again */
        } else if (fd != -ENOENT && fd != -ECONNREFUSED) {
            return -1;
        } else {
            int s = spawn_holder(r, sh, err, errlen);
            if (s < 0)
                return -1;
            if (s > 0)
                continue;
        }
        if (now_mono_ms() > deadline)
            return errmsg(err, errlen, -1, "no tunnel holder answered at %s within %d s",
                          sh->paths.sock, SHARED_FIND_MS / 1000);
        struct timespec ts = {0, (long)(50 + (i < 10 ? i * 20 : 200)) * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void pass_event(struct run *r, json_t *m);

/* Sends a register on rd's socket and reads until its answer; the tunnel's
 * events that come first are told as they come. */
static int register_on(struct run *r, struct rdv_reader *rd, const struct agent_app *app,
                       json_t **reply, char *err, size_t errlen)
{
    int fd = rd->fd;
    *reply = NULL;
    json_t *m = json_pack("{s:s,s:s,s:I}", "op", "register", "name", app->name, "ttl",
                          (json_int_t)app->ttl);
    if (m && app->sock)
        json_object_set_new(m, "sock", json_string(app->sock));
    else if (m)
        json_object_set_new(m, "port", json_integer(app->port));
    if (m && app->callback_port)
        json_object_set_new(m, "callback_port", json_integer(app->callback_port));
    if (m && app->alias)
        json_object_set_new(m, "alias", json_string(app->alias));
    if (m && app->cross_site)
        json_object_set_new(m, "cross_site", json_true());
    if (rdv_send(fd, m) < 0)
        return errmsg(err, errlen, -EPIPE, "the tunnel's holder went away");
    int rc;
    for (;;) {
        json_t *a;
        rc = rdv_recv(rd, &a, SHARED_ANSWER_MS);
        if (rc < 0) {
            rc = errmsg(err, errlen, rc, "no answer from the tunnel's holder (%s)",
                        strerror(-rc));
            break;
        }
        const char *type = json_string_value(json_object_get(a, "type"));
        if (type && strcmp(type, "registered") == 0) {
            json_object_del(a, "type");
            *reply = a;
            rc = 0;
            break;
        }
        if (type && strcmp(type, "error") == 0) {
            const char *code = json_string_value(json_object_get(a, "code"));
            rc = errmsg(err, errlen, code && strcmp(code, "remote") == 0 ? -EREMOTEIO : -EIO,
                        "%s", json_string_value(json_object_get(a, "error")) ?: "refused");
            json_decref(a);
            break;
        }
        if (type && strcmp(type, "event") == 0)
            pass_event(r, a);
        json_decref(a);
    }
    return rc;
}

static int shared_reg(struct run *r, const struct agent_app *app, json_t **reply, char *err,
                      size_t errlen)
{
    r->shared->cb_port = app->callback_port;
    return register_on(r, &r->shared->rd, app, reply, err, errlen);
}

static void tell(struct run *r, const char *event, const char *msg, const char *reason,
                 double retry_in, unsigned attempt)
{
    struct agent_tunnel_event ev = {.event = event, .message = msg, .reason = reason,
                                    .retry_in = retry_in, .attempt = attempt};
    publish_tunnel_event(r, &ev);
}


/* The holder is gone: find or start another and register again under our
 * alias, with the backoff of a reconnect. 0, or -1 when stopping. */
static int take_over(struct run *r, struct shared *sh)
{
    char err[1024], msg[1200];
    for (unsigned attempt = 0;; attempt++) {
        uint32_t rnd;
        if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd))
            rnd = (uint32_t)now_mono_ms();
        int64_t delay = backoff_delay_ms(attempt, rnd);
        (void)xsnprintf(msg, sizeof(msg), "the process holding the tunnel ended; reconnecting "
                        "in %.1f s", (double)delay / 1000.0);
        tell(r, "reconnecting", msg, "the process holding the tunnel ended",
             (double)delay / 1000.0, attempt + 1);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += (time_t)(delay / 1000);
        until.tv_nsec += (long)(delay % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&sh->mu);
        while (!sh->stopping &&
               pthread_cond_timedwait(&sh->cond, &sh->mu, &until) != ETIMEDOUT)
            ;
        int stop = sh->stopping;
        pthread_mutex_unlock(&sh->mu);
        if (stop)
            return -1;
        struct rdv_reader rd;
        int fd = find_holder(r, sh, &rd, err, sizeof(err));
        if (fd < 0)
            continue;
        if (stopping(sh)) { /* the run ends: nothing to register any more */
            rdv_reader_free(&rd);
            close(fd);
            return -1;
        }
        struct agent_app app = {.name = r->name, .sock = r->tcp ? NULL : r->sock,
                                .port = r->port, .ttl = r->ttl, .callback_port = sh->cb_port,
                                .alias = sh->alias[0] ? sh->alias : NULL,
                                .cross_site = r->cross_site};
        json_t *reply;
        if (register_on(r, &rd, &app, &reply, err, sizeof(err)) < 0) {
            rdv_reader_free(&rd);
            close(fd);
            continue;
        }
        pthread_mutex_lock(&sh->mu);
        int old = sh->fd;
        sh->fd = fd;
        rdv_reader_free(&sh->rd);
        sh->rd = rd;
        stop = sh->stopping;
        pthread_mutex_unlock(&sh->mu);
        close(old);
        const char *alias = json_string_value(json_object_get(reply, "alias"));
        if (alias && strcmp(alias, sh->alias) != 0) {
            (void)xsnprintf(sh->alias, sizeof(sh->alias), "%s", alias);
            run_print_ready(r, reply); /* the gateway had let the old one go */
        } else {
            tell(r, "reconnected", "reconnected to the gateway (a new tunnel holder)", NULL, 0,
                 0);
        }
        json_decref(reply);
        return stop ? -1 : 0;
    }
}

/* A tunnel event from the holder, told as the tunnel's own would be; a new
 * alias ("ready") is ours from now on. */
static void pass_event(struct run *r, json_t *m)
{
    struct agent_tunnel_event ev = {
        .event = json_string_value(json_object_get(m, "event")) ?: "notice",
        .message = json_string_value(json_object_get(m, "message")),
        .reason = json_string_value(json_object_get(m, "reason")),
        .retry_in = json_number_value(json_object_get(m, "retry_in")),
        .attempt = (unsigned)json_integer_value(json_object_get(m, "attempt")),
        .reply = json_object_get(m, "reply"),
    };
    const char *alias = json_string_value(json_object_get(ev.reply, "alias"));
    if (strcmp(ev.event, "ready") == 0 && alias)
        (void)xsnprintf(r->shared->alias, sizeof(r->shared->alias), "%s", alias);
    publish_tunnel_event(r, &ev);
}

static void *reader_thread(void *arg)
{
    struct run *r = arg;
    struct shared *sh = r->shared;
    for (;;) {
        for (;;) {
            json_t *m;
            /* sh->rd changes only here (take_over, this thread) */
            if (rdv_recv(&sh->rd, &m, -1) < 0)
                break;
            const char *type = json_string_value(json_object_get(m, "type"));
            if (type && strcmp(type, "event") == 0) {
                pass_event(r, m);
            } else if (type && strcmp(type, "unregistered") == 0) {
                pthread_mutex_lock(&sh->mu);
                sh->unregistered = 1;
                pthread_cond_broadcast(&sh->cond);
                pthread_mutex_unlock(&sh->mu);
            }
            json_decref(m);
        }
        if (stopping(sh) || atomic_load(&r->lost))
            break;
        if (!r->policy.reconnect) {
            struct agent_tunnel_event ev = {
                .event = "lost", .reason = "the process holding the tunnel ended",
                .message = "lost the tunnel: the process holding it ended, and the connection "
                           "policy has no reconnect"};
            publish_tunnel_event(r, &ev);
            break;
        }
        if (take_over(r, sh) < 0)
            break;
    }
    pthread_mutex_lock(&sh->mu);
    sh->unregistered = 1; /* nobody will answer any more */
    pthread_cond_broadcast(&sh->cond);
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}

static void shared_stop(struct run *r, int unregister);

static int shared_open(struct run *r)
{
    char err[1024];
    if (publish_resolve_policy(r) < 0)
        return -1;
    struct shared *sh = xcalloc(1, sizeof(*sh));
    pthread_mutex_init(&sh->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sh->cond, &ca);
    pthread_condattr_destroy(&ca);
    sh->fd = -1;
    r->shared = sh;
    make_ident(r, sh->ident, sizeof(sh->ident));
    if (rdv_key(sh->ident, sh->key) < 0)
        (void)xsnprintf(err, sizeof(err), "cannot hash the tunnel's name");
    if (!sh->key[0] || rdv_paths(sh->key, &sh->paths, err, sizeof(err)) < 0 ||
        (sh->fd = find_holder(r, sh, &sh->rd, err, sizeof(err))) < 0) {
        cli_error("%s", err);
        sh->fd = -1;
        shared_stop(r, 0); /* cmd_run calls no close after a failed open */
        return -1;
    }
    return 0;
}

static json_t *shared_add(struct run *r)
{
    struct shared *sh = r->shared;
    json_t *reply = publish_register(r, shared_reg);
    if (!reply)
        return NULL;
    const char *alias = json_string_value(json_object_get(reply, "alias"));
    (void)xsnprintf(sh->alias, sizeof(sh->alias), "%s", alias ? alias : "");
    if (pthread_create(&sh->th, NULL, reader_thread, r) == 0)
        sh->th_started = 1;
    return reply;
}

/* The end: the app's route is taken back (answered, or a short wait), the
 * reader stops, the holder sees us go. */
static void shared_stop(struct run *r, int unregister)
{
    struct shared *sh = r->shared;
    if (!sh)
        return;
    pthread_mutex_lock(&sh->mu);
    sh->stopping = 1;
    pthread_cond_broadcast(&sh->cond);
    if (unregister && sh->th_started && sh->fd >= 0 &&
        rdv_send(sh->fd, json_pack("{s:s}", "op", "unregister")) == 0) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += SHARED_UNREG_MS / 1000;
        while (!sh->unregistered &&
               pthread_cond_timedwait(&sh->cond, &sh->mu, &until) != ETIMEDOUT)
            ;
    }
    if (sh->fd >= 0)
        (void)shutdown(sh->fd, SHUT_RDWR);
    pthread_mutex_unlock(&sh->mu);
    if (sh->th_started)
        pthread_join(sh->th, NULL);
    if (sh->fd >= 0)
        close(sh->fd);
    rdv_reader_free(&sh->rd);
    pthread_mutex_destroy(&sh->mu);
    pthread_cond_destroy(&sh->cond);
    free(sh);
    r->shared = NULL;
    callback_stop(r->cb);
    r->cb = NULL;
}

static void shared_remove(struct run *r, const json_t *reg)
{
    (void)reg;
    shared_stop(r, 1);
}

static void shared_close(struct run *r)
{
    shared_stop(r, 0);
}

const struct publish_ops publish_shared = {
    .open = shared_open,
    .add = shared_add,
    .remove = shared_remove,
    .close = shared_close,
};
