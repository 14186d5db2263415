/*
 * cmd_hold — `jobgate tunnel --hold`: the process that holds one tunnel for
 * all the `jobgate run`s of a user on a node to one gateway (docs/policy.md,
 * "One tunnel per user, node and gateway"). A run starts it (run_shared.c)
 * when it finds no holder at the rendezvous socket (rendezvous.h); it runs
 * in a session of its own, so that a terminal's ^C to that run does not end
 * the others' tunnel.
 *
 * Takes the rendezvous lock (another holder has it: "busy"), opens the
 * tunnel (agent_tunnel.h, with the run's options and policy), tells the run
 * that started it how that went on --status-fd, then listens. Each run's
 * connection gets a thread that registers its one app and takes it back on
 * the run's "unregister"; a connection that ends without one (the run was
 * killed) leaves the route to wait for a new agent, as a lost tunnel would;
 * the tunnel's events go to every run
 * ("ready" only to the run of that app). When the last run has gone, the
 * holder closes the tunnel and exits.
 *
 * Threads: main (accepts, counts runs, closes), one per run (blocking
 * calls into the tunnel), and the tunnel's. The list of runs is under mu;
 * each run's socket is written under its own wmu.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "agent_tunnel.h"
#include "app.h"
#include "cmd.h"
#include "policy.h"
#include "rendezvous.h"
#include "util.h"

#define HOLD_FIRST_RUN_MS 15000   /* the run that started us connects within this */
#define HOLD_MAX_RUNS 64          /* one app each: the gateway's apps per tunnel */

enum { OPT_HOLD = 256, OPT_KEY_NAME, OPT_VIA, OPT_CA, OPT_CERT, OPT_KEY, OPT_POLICY,
       OPT_PING_INTERVAL, OPT_PING_TIMEOUT, OPT_STATUS_FD };

struct run_conn {
    struct run_conn *next;
    int fd;
    pthread_mutex_t wmu;       /* writes to fd */
    char local[APP_NAME_MAX + 8];
};

#define HOLD_EARLY_MAX 8          /* notices before the first run came */

static struct {
    pthread_mutex_t mu;
    struct run_conn *runs;     /* under mu */
    unsigned nruns;            /* under mu */
    json_t *early;             /* under mu: events told before any run came, for the first */
    int had_run;               /* under mu */
    int lost;                  /* under mu: the tunnel was lost for good (no reconnect) */
    struct agent_tunnel *t;
} H = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Never waits: the tunnel's thread calls this, and a run that does not read
 * (stopped with ^Z) must not stop the tunnel for the others. */
static void send_to(struct run_conn *rc, json_t *msg)
{
    pthread_mutex_lock(&rc->wmu);
    if (rdv_send_nowait(rc->fd, msg) < 0)
        (void)shutdown(rc->fd, SHUT_RDWR); /* gone, or not reading: its thread ends */
    pthread_mutex_unlock(&rc->wmu);
}

/* The tunnel's events, from its thread, to the runs as JSON. */
static void on_event(void *arg, const struct agent_tunnel_event *ev)
{
    (void)arg;
    const char *local = ev->reply ? json_string_value(json_object_get(ev->reply, "local")) : NULL;
    json_t *m = json_pack("{s:s,s:s,s:f,s:i}", "type", "event", "event", ev->event,
                          "retry_in", ev->retry_in, "attempt", (int)ev->attempt);
    if (!m)
        return;
    if (ev->message)
        json_object_set_new(m, "message", json_string(ev->message));
    if (ev->reason)
        json_object_set_new(m, "reason", json_string(ev->reason));
    if (ev->reply)
        json_object_set_new(m, "reply", json_deep_copy(ev->reply));
    pthread_mutex_lock(&H.mu);
    if (strcmp(ev->event, "lost") == 0)
        H.lost = 1;
    if (!H.had_run && json_array_size(H.early) < HOLD_EARLY_MAX) {
        /* The welcome's notices (a job the gateway did not bind) come before
         * the run that started us is here: they are its. */
        if (!H.early)
            H.early = json_array();
        json_array_append(H.early, m);
    }
    for (struct run_conn *rc = H.runs; rc; rc = rc->next) {
        if (strcmp(ev->event, "ready") == 0 && (!local || strcmp(local, rc->local) != 0))
            continue;
        send_to(rc, json_incref(m));
    }
    pthread_mutex_unlock(&H.mu);
    json_decref(m);
}

static json_t *error_msg(const char *code, const char *text)
{
    return json_pack("{s:s,s:s,s:s}", "type", "error", "code", code, "error", text);
}

/* One register request into the tunnel: the answer for the run. */
static json_t *do_register(struct run_conn *rc, json_t *m)
{
    char err[1024];
    json_t *reply = NULL;
    json_t *port = json_object_get(m, "port"), *ttl = json_object_get(m, "ttl");
    json_t *cbp = json_object_get(m, "callback_port");
    struct agent_app app = {
        .name = json_string_value(json_object_get(m, "name")),
        .sock = json_string_value(json_object_get(m, "sock")),
        .port = json_is_integer(port) && json_integer_value(port) > 0 &&
                json_integer_value(port) <= 65535 ? (unsigned)json_integer_value(port) : 0,
        .ttl = json_is_integer(ttl) && json_integer_value(ttl) > 0 ? json_integer_value(ttl) : 0,
        .callback_port = json_is_integer(cbp) && json_integer_value(cbp) > 0 &&
                         json_integer_value(cbp) <= 65535 ? (unsigned)json_integer_value(cbp)
                                                          : 0,
        .alias = json_string_value(json_object_get(m, "alias")),
        .cross_site = json_is_true(json_object_get(m, "cross_site")),
    };
    if (!app.name)
        return error_msg("invalid", "a register needs a name");
    if (rc->local[0])
        return error_msg("invalid", "one app per connection");
    int r = agent_tunnel_add(H.t, &app, &reply, err, sizeof(err));
    if (r < 0)
        return error_msg(r == -EREMOTEIO ? "remote" : "local", err);
    const char *local = json_string_value(json_object_get(reply, "local"));
    pthread_mutex_lock(&H.mu);
    (void)xsnprintf(rc->local, sizeof(rc->local), "%s", local ? local : "");
    pthread_mutex_unlock(&H.mu);
    json_object_set_new(reply, "type", json_string("registered"));
    return reply;
}

static void run_gone(struct run_conn *rc)
{
    pthread_mutex_lock(&H.mu);
    for (struct run_conn **pp = &H.runs; *pp; pp = &(*pp)->next)
        if (*pp == rc) {
            *pp = rc->next;
            break;
        }
    char local[sizeof(rc->local)];
    memcpy(local, rc->local, sizeof(local));
    pthread_mutex_unlock(&H.mu);
    if (local[0]) /* the run died without taking its app back: the route waits for a new
                   * agent, as when a tunnel of its own was lost */
        agent_tunnel_unregister(H.t, local, 1);
    close(rc->fd);
    pthread_mutex_destroy(&rc->wmu);
    free(rc);
    pthread_mutex_lock(&H.mu);
    H.nruns--;
    pthread_mutex_unlock(&H.mu);
}

static void *run_thread(void *arg)
{
    struct run_conn *rc = arg;
    struct rdv_reader rd;
    rdv_reader_init(&rd, rc->fd);
    for (;;) {
        json_t *m;
        if (rdv_recv(&rd, &m, -1) < 0)
            break; /* the run ended (or broke the protocol): its app goes */
        const char *op = json_string_value(json_object_get(m, "op"));
        if (op && strcmp(op, "register") == 0) {
            send_to(rc, do_register(rc, m));
        } else if (op && strcmp(op, "unregister") == 0) {
            pthread_mutex_lock(&H.mu);
            char local[sizeof(rc->local)];
            memcpy(local, rc->local, sizeof(local));
            rc->local[0] = '\0';
            pthread_mutex_unlock(&H.mu);
            if (local[0])
                agent_tunnel_unregister(H.t, local, 0);
            send_to(rc, json_pack("{s:s}", "type", "unregistered"));
        } else {
            send_to(rc, error_msg("invalid", "unknown op"));
        }
        json_decref(m);
    }
    rdv_reader_free(&rd);
    run_gone(rc);
    return NULL;
}

/* One line to the run that started us ("ok", "busy", "error: why"), once. */
static void tell_status(int *fd, const char *word, const char *why)
{
    if (*fd < 0)
        return;
    char line[1200];
    int n = snprintf(line, sizeof(line), "%s%s%s\n", word, why ? ": " : "", why ? why : "");
    if (n > 0)
        (void)!write(*fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    close(*fd);
    *fd = -1;
}

int cmd_hold(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"hold", no_argument, NULL, OPT_HOLD},
        {"name", required_argument, NULL, OPT_KEY_NAME},
        {"gateway", required_argument, NULL, 'g'},
        {"via", required_argument, NULL, OPT_VIA},
        {"ca", required_argument, NULL, OPT_CA},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"policy", required_argument, NULL, OPT_POLICY},
        {"ping-interval", required_argument, NULL, OPT_PING_INTERVAL},
        {"ping-timeout", required_argument, NULL, OPT_PING_TIMEOUT},
        {"status-fd", required_argument, NULL, OPT_STATUS_FD},
        {NULL, 0, NULL, 0},
    };
    struct agent_tunnel_opts o;
    struct policy policy = POLICY_DEFAULT;
    const char *key = NULL;
    char err[1024];
    int c, status_fd = -1;
    uint64_t v;

    memset(&o, 0, sizeof(o));
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":g:", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_HOLD: break;
        case OPT_KEY_NAME: key = optarg; break;
        case 'g': o.gateway = optarg; break;
        case OPT_VIA: o.via = optarg; break;
        case OPT_CA: o.ca_file = optarg; break;
        case OPT_CERT: o.cert_file = optarg; break;
        case OPT_KEY: o.key_file = optarg; break;
        case OPT_POLICY:
            if (policy_parse_options(optarg, &policy, err, sizeof(err)) < 0)
                return cli_usage_error("tunnel", "%s", err);
            o.policy = &policy;
            break;
        case OPT_PING_INTERVAL:
        case OPT_PING_TIMEOUT:
            if (parse_uint(optarg, 1, 86400000, &v) < 0)
                return cli_usage_error("tunnel", "bad milliseconds '%s'", optarg);
            *(c == OPT_PING_INTERVAL ? &o.ping_interval_ms : &o.ping_timeout_ms) = (int64_t)v;
            break;
        case OPT_STATUS_FD:
            if (parse_uint(optarg, 3, 1023, &v) < 0)
                return cli_usage_error("tunnel", "bad --status-fd '%s'", optarg);
            status_fd = (int)v;
            break;
        default: return cli_getopt_error("tunnel", c, argc, argv);
        }
    }
    if (!key || (!o.gateway == !o.via))
        return cli_usage_error("tunnel", "--hold is started by 'jobgate run' (--name, and -g or "
                               "--via)");

    /* Our own session: a terminal's signals to the run that started us are
     * not for the tunnel of the others. Nothing of the run's but the status
     * pipe (a job's JOBGATE_READY_FD, say) stays open here. */
    (void)setsid();
    if (status_fd > 3)
        (void)close_range(3, (unsigned)status_fd - 1, 0);
    (void)close_range(status_fd >= 3 ? (unsigned)status_fd + 1 : 3, ~0U, 0);
    if (status_fd >= 0)
        (void)fcntl(status_fd, F_SETFD, FD_CLOEXEC); /* not into an ssh child */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        (void)dup2(null, STDIN_FILENO);
        (void)dup2(null, STDOUT_FILENO);
        close(null);
    }
    signal(SIGPIPE, SIG_IGN);

    struct rdv_paths p;
    if (rdv_paths(key, &p, err, sizeof(err)) < 0) {
        tell_status(&status_fd, "error", err);
        return 1;
    }
    int lockfd = rdv_lock(&p, err, sizeof(err));
    if (lockfd == -EBUSY) {
        tell_status(&status_fd, "busy", NULL); /* another holder, starting or running */
        return 0;
    }
    if (lockfd < 0) {
        tell_status(&status_fd, "error", err);
        return 1;
    }
    o.on_event = on_event;
    if (agent_tunnel_open(&o, &H.t, err, sizeof(err)) < 0) {
        tell_status(&status_fd, "error", err);
        close(lockfd);
        return 1;
    }
    int lfd = rdv_listen(&p, err, sizeof(err));
    if (lfd < 0) {
        tell_status(&status_fd, "error", err);
        agent_tunnel_close(H.t);
        close(lockfd);
        return 1;
    }
    tell_status(&status_fd, "ok", NULL);
    /* From here on the runs hear everything: the standard error of the run
     * that started us (a terminal, a pipe to tee) is not ours to keep open. */
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (devnull >= 0) {
        (void)dup2(devnull, STDERR_FILENO);
        close(devnull);
    }

    int64_t started = now_mono_ms();
    int had_runs = 0;
    for (;;) {
        pthread_mutex_lock(&H.mu);
        unsigned n = H.nruns;
        int lost = H.lost;
        pthread_mutex_unlock(&H.mu);
        if (n == 0 && (had_runs || now_mono_ms() - started > HOLD_FIRST_RUN_MS))
            break; /* the last one out closes it */
        if (lost && lfd >= 0) {
            /* No new run on a tunnel that is gone: they start their own holder. */
            (void)unlink(p.sock);
            close(lfd);
            lfd = -1;
            close(lockfd);
            lockfd = -1;
        }
        if (lfd < 0) {
            struct timespec ts = {0, 200 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        if (poll(&pfd, 1, 200) <= 0)
            continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        if (!rdv_peer_is_me(fd)) {
            close(fd);
            continue;
        }
        if (n >= HOLD_MAX_RUNS) {
            (void)rdv_send_nowait(fd, json_pack("{s:s,s:s,s:s}", "type", "error", "code", "limit",
                                                "error", "the tunnel's holder carries "
                                                "64 apps already: use --own-tunnel"));
            close(fd);
            continue;
        }
        struct run_conn *rc = xcalloc(1, sizeof(*rc));
        rc->fd = fd;
        pthread_mutex_init(&rc->wmu, NULL);
        pthread_mutex_lock(&H.mu);
        /* "open" first, then what the tunnel said before any run was here,
         * and only then the run hears events as they come. */
        send_to(rc, json_pack("{s:s}", "type", "open"));
        size_t i;
        json_t *ev;
        json_array_foreach(H.early, i, ev)
            send_to(rc, json_incref(ev));
        json_decref(H.early);
        H.early = NULL;
        rc->next = H.runs;
        H.runs = rc;
        H.nruns++;
        H.had_run = 1;
        pthread_mutex_unlock(&H.mu);
        had_runs = 1;
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&th, &at, run_thread, rc) != 0)
            run_gone(rc);
        pthread_attr_destroy(&at);
    }
    /* No run left: nobody may find us any more (a new run starts its own
     * holder at once), then the tunnel goes. */
    if (lfd >= 0) {
        (void)unlink(p.sock);
        close(lfd);
        close(lockfd);
    }
    agent_tunnel_close(H.t);
    json_decref(H.early);
    return 0;
}
