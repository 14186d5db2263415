/*
 * run.h — private to `jobgate run` (run*.c): the state of one run and the
 * parts that cmd_run() (run.c) puts together:
 *   run_app.c      the app process: signals, spawn, wait until it listens,
 *                  wait for its end, stop it;
 *   run_dir.c      where it listens: the private directory and socket path,
 *                  or a free loopback port;
 *   run_publish.c  how it is published: locally through the control socket,
 *                  or through a tunnel (agent_tunnel.h), behind one table of
 *                  operations.
 *
 * Everything runs on the main thread, except that the tunnel's thread
 * prints events through run_print_ready / run_emit_json, which take the
 * standard output lock themselves; it only reads struct run.
 */
#ifndef JG_RUN_H
#define JG_RUN_H

#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include <stdatomic.h>

#include <jansson.h>

#include "app.h"
#include "policy.h"


struct agent_tunnel;
struct callback;
struct publish_ops;
struct shared;

struct run {
    char name[APP_NAME_MAX + 1];
    int tcp, json;
    int64_t ttl;                    /* 0: the gateway's default */
    int64_t timeout;                /* seconds; 0: wait for ever */
    const char *control;            /* control socket path (local mode) */
    const char *gateway, *via, *ca; /* remote mode: -g, --via, --ca */
    const char *cert, *key;         /* -g: --cert, --key (the user's own certificate) */
    int callback;                   /* --callback: a direct route to our own endpoint */
    unsigned callback_port;         /* --callback-port (0: any) */
    struct callback *cb;            /* the endpoint, while it runs */
    int64_t ping_interval, ping_timeout; /* seconds; 0: the tunnel's defaults */
    const char *policy_opt;         /* --policy OPTIONS, or NULL */
    struct policy policy;           /* -g, --via: resolved (policy.h) */
    atomic_int lost;                /* the tunnel's thread: lost, and no reconnect */
    const struct publish_ops *pub;  /* local or tunnel */
    struct agent_tunnel *tunnel;    /* remote mode, once open */
    int own_tunnel;                 /* --own-tunnel: not the node's shared one */
    int cross_site;                 /* --cross-site: other sites' pages may act in the app */
    struct shared *shared;          /* the shared tunnel's holder, while connected */

    char dir[PATH_MAX];             /* private directory, "" when none */
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned port;
    char where[PATH_MAX + 32];      /* the endpoint, for messages */

    pid_t pid;                      /* the app (and its process group), 0 before start */
    int wstatus;                    /* from waitpid, once reaped */
};

/* ---- run.c: output (either thread; serialised inside) --------------------- */

/* One JSON event per line, flushed at once; takes ev (NULL is ignored). */
void run_emit_json(json_t *ev);
/* The "ready" event or lines for the gateway's answer to a registration. */
void run_print_ready(const struct run *r, const json_t *reply);

/* ---- run_app.c: the app process ------------------------------------------- */

/* From here on SIGINT, SIGTERM and SIGHUP go to the app (once it runs) and
 * SIGPIPE is ignored. 0 or -1 (errno). */
int app_install_signals(void);
/* Blocks the forwarded signals until app_start (which restores *old). */
int app_block_signals(sigset_t *old);
/* The last forwarded signal received, or 0. */
int app_pending_signal(void);
/* Starts argv in its own process group. 0, or the status to exit with after
 * printing why (127 when it cannot be executed). */
int app_start(struct run *r, char **argv, const sigset_t *oldmask);
/* Waits until the app listens: -1 ready, else the status to exit with. */
int app_wait_listening(struct run *r);
/* Waits until the app exits, without reaping it. */
void app_wait_exit(const struct run *r);
/* Reaps the app; the exit status that jobgate passes on. */
int app_reap(struct run *r);
/* SIGTERM, then SIGKILL after a grace period, to the app's group; reaps. */
int app_stop(struct run *r);
/* SIGTERM to the app's group, if it runs, from any thread: app_wait_exit
 * returns once it has ended (the tunnel was lost, run.lost). */
void app_end(void);

/* ---- run_dir.c: where the app listens (0, or -1 after printing why) ------- */

int rundir_make_socket(struct run *r);
int rundir_pick_port(struct run *r);
void rundir_cleanup(const struct run *r);

/* ---- run_publish.c: how the app is published ------------------------------- */

struct publish_ops {
    /* Before the app starts: is there a gateway that will take it (hello,
     * or the tunnel up)? 0, or -1 after printing why. */
    int (*open)(struct run *r);
    /* The app listens: register it. The gateway's answer (alias, url, link;
     * caller decrefs), or NULL after printing why. */
    json_t *(*add)(struct run *r);
    /* The app has ended: take its route back. */
    void (*remove)(struct run *r, const json_t *reg);
    /* Last, on every path after open (also a failed one): free it all. */
    void (*close)(struct run *r);
};

extern const struct publish_ops publish_local;  /* jobgated on this host */
extern const struct publish_ops publish_tunnel; /* -g or --via, --own-tunnel */
extern const struct publish_ops publish_shared; /* -g or --via: the node's shared tunnel */
extern const struct publish_ops publish_callback; /* --callback: a direct route */

/* What run_publish.c lends run_shared.c: */
struct agent_tunnel_event;
struct agent_app;
/* The policy for -g/--via into r->policy (policy.h; files, --policy). 0, or
 * -1 after saying why. */
int publish_resolve_policy(struct run *r);
/* Prints or emits a tunnel event (agent_tunnel.h) for r; "lost" ends the
 * app (r->lost). Any thread. */
void publish_tunnel_event(void *arg, const struct agent_tunnel_event *ev);
/* Registers r's app with reg (once, or again while the node has not reported
 * the policy's callback endpoint yet), starting that endpoint first: the
 * answer, or NULL after saying why. */
json_t *publish_register(struct run *r, int (*reg)(struct run *r, const struct agent_app *app,
                                                  json_t **reply, char *err, size_t errlen));

#endif
