/*
 * gateway — the daemon: start-up (certificate, registry, agent CA, node
 * channel, tunnel hub, workers, control socket, then the job watch),
 * signals, the once-a-second reaper tick, the
 * drain on SIGTERM, shutdown. It sits on top of every other module of
 * src/gateway and nothing calls up into it.
 *
 * Owns the struct gateway below and everything it points to. Runs on the
 * main thread (worker 0's); the other workers have their own threads
 * (worker.h). Shared state lives in the registry, which locks inside.
 */
#ifndef JG_GATEWAY_H
#define JG_GATEWAY_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <sys/types.h>

#include "backend.h"
#include "config.h"
#include "http1.h"
#include "offload.h"
#include "worker-t.h"

struct control;
struct event;
struct jobca;
struct nodechan;
struct registry;
struct jobwatch;
struct tunnel_hub;
struct config_gen;

#define GATEWAY_MAX_WORKERS 64
#define GATEWAY_NOFILE_RESERVE 1024 /* descriptors beyond two per client connection */

struct gateway {
    struct jg_config *cfg;
    SSL_CTX *ssl;
    struct registry *reg;
    struct tunnel_hub *hub;
    struct jobca *jobca;      /* the agent CA (jobca.h) */
    struct nodechan *nodes;   /* the node channel (nodechan.h) */
    struct jobwatch *watch;   /* the scheduler's word on jobs (jobwatch.h), or NULL */
    struct offload offload;   /* calls that may wait on munged or NSS (offload.h) */
    struct control *control;
    struct http1_limits limits;
    struct backend_env env;
    struct worker *workers;
    unsigned nworkers;
    struct event *ev_signal[3];
    struct event *ev_tick;    /* reaping and expiry (worker 0) */
    volatile int stopping;
    atomic_uint clients;      /* client connections of all workers (worker-t.h) */
    int lock_fd;              /* <state_dir>/jobgated.lock, held (flock) while it runs */
    const char *config_path;  /* shared mode: the file, read again on SIGHUP */
    const char *listen_arg;   /* jobgated --listen, over the file's (also on SIGHUP) */
    struct config_gen *gens;  /* what SIGHUPs applied, newest first (gw->cfg), kept to the end */
};

int gateway_init(struct gateway *gw, struct jg_config *cfg, char *err, size_t errlen);
/* Runs worker 0 on this thread and the others on their own until a signal. */
int gateway_run(struct gateway *gw);
/* Writes this process's pid into the state directory's lock file (after a
 * fork that detached it). */
void gateway_note_pid(struct gateway *gw);
/* After fork(): reinitialises every event loop. */
int gateway_reinit(struct gateway *gw);
void gateway_free(struct gateway *gw);

#endif
