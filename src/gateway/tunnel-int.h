/*
 * tunnel-int.h — the gateway's tunnels inside (see tunnel.h for the outside):
 * the types shared by tunnel.c (the session: hub, transport, nghttp2
 * callbacks, life and death), tunnel_hello.c (the hello: its credential,
 * checked off the loop, and the welcome), tunnel_ctl.c (the control stream
 * after it: register, unregister, link, sleep, release) and tunnel_stream.c
 * (CONNECT streams and the in-memory pairs that carry them from conn).
 *
 * Who touches what: a struct tunnel and everything it points to belong to
 * the worker whose loop accepted it and are touched only on that worker's
 * thread. Other workers look it up by id in the hub (under the hub's mutex)
 * only to learn its worker (tunnel_worker): a browser connection moves there
 * before it opens a stream, so tunnel_stream_open appends to `posted` on
 * the tunnel's own thread (still under the mutex that covers the lookup,
 * as tstream_on_post takes the list). A tunnel
 * is freed only when nothing on the stack uses it: every callback raises
 * `busy` on entry and calls tunnel_leave() on exit, which frees a tunnel
 * that tunnel_kill() marked dead meanwhile.
 */
#ifndef JG_TUNNEL_INT_H
#define JG_TUNNEL_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <event2/bufferevent.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/x509.h>

#include "jobcert.h"
#include "route.h"
#include "token.h"
#include "tunnel_bridge.h"
#include "tunnel_proto.h"

struct hello_job;
struct jg_config;
struct registry;
struct hmap;
struct worker;

/* Windows, header and control line limits: tunnel_proto.h, shared with the agent. */
#define TUN_OUT_HIGH (256 * 1024)            /* transport output: make no frames beyond */
#define TUN_MAX_REG 64                       /* registrations per tunnel */
#define TUN_MAX_STREAMS 10000                /* data streams per tunnel, queued ones included */
#define TUN_MAX_TUNNELS 10000                /* past their hello, whole gateway */
#define TUN_LOCAL_MAX 64                     /* the agent's name for a target */
#define TUN_ID_MAX 64                        /* a control request's id */
#define TUN_TICK_MS 1000
#define TUN_CTL_OUT_MAX (1024 * 1024)        /* answers the agent has not taken yet */
#define TUN_GONE_TICKS 5                     /* ticks a stream whose conn left may stall */
#define TUN_CHECKIN_MAX 3600                 /* a sleeping agent's poll and check-in: at most */

enum tstate {
    T_HELLO,   /* challenge sent, waiting for the hello */
    T_AUTH,    /* hello read; its credential and user checked off the loop (tunnel_hello.c) */
    T_VERIFY,  /* hello accepted; the scheduler is asked about the job it names */
    T_READY,   /* welcomed: registrations and data streams */
    T_CLOSING, /* refused or failed: the last control line, then GOAWAY */
};

struct tstream {
    /* First: the stream user data. br.sid is -1 once nghttp2 closed the
     * stream, br.bev our end of the in-memory link with conn, br.ready set when
     * the agent answered 200, br.far_eof when conn shut its side. */
    struct tunnel_bridge br;
    struct tunnel *t;
    LIST_ENTRY(tstream) link;   /* t->streams */
    int remote_eof;          /* the agent ended its side: shut ours once flushed */
    int status;
    int gone_ticks;          /* ticks since conn closed its end without progress */
    size_t gone_in;          /* input length at the last such tick */
    int64_t opened;          /* when it was submitted (monotonic ms): the agent answers
                              * within t_connect, or the browser gets a 503 */
};

/* A browser connection's backend end (an in-memory pair end: conn runs on
 * the tunnel's worker), posted to the tunnel for its next loop turn. */
struct post {
    struct post *next;
    struct bufferevent *bev;
    uid_t uid;
    char alias[ROUTE_ALIAS_MAX + 1];
    char local[TUN_LOCAL_MAX + 1];
};

struct reg {
    char alias[ROUTE_ALIAS_MAX + 1];
    char local[TUN_LOCAL_MAX + 1];
};

struct tunnel {
    struct tunnel_hub *hub;
    struct worker *w;
    LIST_ENTRY(tunnel) link;    /* w->tunnels */
    uint64_t id;
    char peer[64];              /* the agent's address, or "ssh" */
    struct bufferevent *rd, *wr; /* the same bufferevent unless over a pipe pair */
    nghttp2_session *h2;
    enum tstate st;
    int stdio;                  /* handed over by `jobgate tunnel --stdio` */
    int hold_fd;                /* stdio: its control connection, closed when we end */
    uid_t peer_uid;             /* stdio: SO_PEERCRED of the hand-over */
    char source[48];            /* whom the pre-hello cap counts it for: the address, or
                                 * "uid N" for a hand-over */
    int pending;                /* counted in hub->pending (no hello yet); under hub->mu */
    int drain_sent;             /* the drain's GOAWAY went (tunnel_goaway_all, t_tick) */
    int counted;                /* counted in hub->tunnels and by_uid (hello passed) */
    uid_t uid;                  /* the owner, once welcomed */
    char user[64];              /* ... and its name ("" if it has none) */
    struct hello_job *hello;    /* T_AUTH: the check under way (tunnel_hello.c) */
    uint32_t job;               /* its job: the certificate's (jobcert), or the hello's once
                                 * the scheduler confirmed it; else 0 */
    uint32_t claimed;           /* T_VERIFY: the job the hello named */
    int64_t verify_at;          /* ... since when the scheduler is asked (monotonic ms) */
    struct event *ev_verdict;   /* the scheduler's answer arrived (verdict below) */
    int verdict;                /* under the hub's mutex: 1 confirmed, -1 not, 0 none yet */
    char verdict_why[160];      /* under the hub's mutex */
    unsigned seen_revocation;   /* job tunnels: the registry's count at the last look */
    /* The hello's policy (docs/policy.md): what becomes of its routes when it ends. */
    int once;                   /* no reconnect: its routes end with it */
    int sleeps;                 /* keepalive with callback or poll: it may say "sleep" */
    int callback;               /* its apps may name a callback endpoint */
    uint32_t poll, checkin;     /* seconds (poll raised to [tunnel] poll_min) */
    int asleep;                 /* it said "sleep": its routes wait for its next poll */
    unsigned released;          /* routes it let go ("release"): at most TUN_MAX_REG */
    char method[12];
    char nonce[TOKEN_STR_LEN + 1];
    int32_t ctl_id;
    struct evbuffer *ctl_out;
    struct tunnel_lines ctl_lines; /* the agent's control stream, split into lines */
    int ctl_deferred, ctl_eof_sent;
    LIST_HEAD(, tstream) streams;
    unsigned nstreams;
    struct reg reg[TUN_MAX_REG];
    unsigned nreg;
    struct event *ev_post, *ev_tick;
    struct post *posted;        /* guarded by the hub's mutex */
    int64_t started, ping_sent, last_ack;
    int busy, dead;
    char why[160];
};

struct tunnel_trust {
    X509_STORE *store;         /* [tunnel] client_ca: users' own certificates */
    struct gridmap *gridmap;   /* ... mapped to users (gridmap.h: locks inside) */
    char *ca_path, *gridmap_path; /* what it was read from (NULL: none) */
    struct stat ca_st;         /* the CA file as it was read */
    struct tunnel_trust *older; /* the ones it replaced (SIGHUP), kept until the hub ends */
};

struct tunnel_hub {
    const struct jg_config *_Atomic cfg; /* tunnel_hub_reconfigure swaps it */
    struct registry *reg;
    const struct jobca *ca;  /* job certificates' issuer (read-only) */
    struct tunnel_trust *trust; /* under mu (SIGHUP replaces it); NULL: no client_ca */
    uid_t uid;         /* the gateway's own: a personal gateway's agents */
    char gateway_id[JOBCERT_GATEWAY_ID_LEN + 1]; /* its certificate's hash, in MUNGE hellos;
                                                  * under mu (SIGHUP changes it) */
    pthread_mutex_t mu;
    struct hmap *byid; /* id (8 bytes) -> struct tunnel; under mu */
    uint64_t next_id;
    /* Under mu. Tunnels that have not said hello are capped apart from the
     * others ([tunnel] pending_max, pending_per_address), so that a flood of
     * connections that never authenticate cannot keep agents out. */
    unsigned pending;
    struct hmap *pending_by; /* source -> how many of them (hmap_tally) */
    unsigned tunnels;        /* past their hello: at most TUN_MAX_TUNNELS */
    struct hmap *by_uid;     /* uid -> its tunnels past hello ([quota] tunnels) */
    int have_token;
    uint8_t token_hash[TOKEN_HASH_LEN];
    /* Set by the daemon before the workers start (read-only after): asks the
     * scheduler whether job runs as uid's, answered by tunnel_job_verdict.
     * NULL: no scheduler to ask (the hello's job is only logged). */
    int (*ask_job)(void *arg, uint32_t job, uid_t uid, const char *node, uint64_t tunnel);
    void *ask_arg;
};

/* tunnel.c: frames out while the transport has room; ends a finished session. */
void tunnel_flush(struct tunnel *t);
/* Marks t dead with a logged reason; it is freed by the last tunnel_leave(). */
void tunnel_kill(struct tunnel *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void tunnel_leave(struct tunnel *t);
/* The hello passed as uid: counts t against the gateway's and uid's tunnel
 * caps and no longer as pending. 0, or -1 with why (the quota): t then
 * stays counted as pending until it is gone. */
int tunnel_count_hello(struct tunnel *t, uid_t uid, char *why, size_t wl);

/* tunnel_hello.c: the hello, its credential, the welcome. */
void tctl_hello(struct tunnel *t, json_t *m);         /* T_HELLO: the hello; T_AUTH, refused */
void tctl_hello_forget(struct tunnel *t);             /* t ends: a check under way drops it */
void tctl_welcome(struct tunnel *t, const char *job_refused);  /* T_READY, and the welcome */
void tctl_on_verdict(evutil_socket_t fd, short what, void *arg); /* t->ev_verdict */

/* tunnel_ctl.c: the control stream after the hello. */
void tctl_send(struct tunnel *t, json_t *msg);        /* one message; takes msg */
void tctl_refuse(struct tunnel *t, const char *code, const char *why);
void tctl_input(struct tunnel *t, const uint8_t *data, size_t len); /* control stream bytes */
ssize_t tctl_provide(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                     nghttp2_data_source *src, void *ud);
int tctl_reg_find(const struct tunnel *t, const char *alias); /* slot in t->reg, or -1 */

/* tunnel_stream.c: data streams. */
void tstream_free(struct tstream *s);
void tstream_abort(struct tstream *s);                /* RST to the agent, then free */
void tstream_on_post(evutil_socket_t fd, short what, void *arg); /* t->ev_post */
void tstream_tick(struct tunnel *t, int64_t now);    /* once a second */

#endif
