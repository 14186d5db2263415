/*
 * tunnel-int.h — private to the agent's tunnel files (tunnel_*.c); the
 * public face is agent_tunnel.h. docs/tunnel-protocol.md is the protocol.
 *
 * Who owns what, and which thread may touch it:
 *  - struct agent_tunnel: one per agent_tunnel_open(). The fields above
 *    "thread" are fixed before the tunnel's thread starts and only read
 *    afterwards (both threads). Those "under mu" are shared with the caller's
 *    thread and taken only with mu held. Those "owned by the thread" are the
 *    tunnel thread's alone; the caller touches them only after joining it.
 *  - struct tconn: one connection attempt (transport, nghttp2 session,
 *    control stream, data streams, timers); owned by the tunnel thread, made
 *    by conn_attempt, freed only by conn_teardown (through conn_pump).
 *  - struct dstream: one HTTP/2 stream of a tconn (the control stream or a
 *    CONNECT to an app), on the tconn's list; tunnel thread only.
 *  - struct app_entry: one registered app, kept across connections (it
 *    carries the alias to ask for again); on agent_tunnel.apps, tunnel thread
 *    only. The caller's thread builds one and hands it over in a struct cmd.
 *  - struct cmd / struct waiter: the caller's requests and their answers.
 *    A cmd is owned by the queue (under mu) until the thread takes it; a
 *    waiter lives on the caller's stack, is written only under mu, and is
 *    always completed by the thread (tun_waiter_done) before it returns.
 */
#ifndef JG_AGENT_TUNNEL_INT_H
#define JG_AGENT_TUNNEL_INT_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>

#include <event2/event.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include "agent_tunnel.h"
#include "app.h"
#include "policy.h"
#include "proxyconn.h"
#include "tunnel_bridge.h"
#include "tunnel_proto.h"

#define MAX_REAP 16
#define ERRLEN 512

enum phase {
    PH_TLS,       /* TLS handshake */
    PH_CONTROL,   /* HTTP/2 up; waiting for the control stream and its challenge */
    PH_WELCOME,   /* hello sent */
    PH_READY,     /* welcomed */
};

enum ds_kind { DS_NEW, DS_CONTROL, DS_CONNECT, DS_REJECTED };

struct waiter {
    int done;
    int rc;
    json_t *reply;
    char err[ERRLEN];
};

struct app_entry {
    struct app_entry *next;
    struct agent_tunnel *t;
    char name[APP_NAME_MAX + 1];
    char local[APP_NAME_MAX + 8];   /* the :authority accepted in CONNECT */
    char *alias;                    /* NULL until the gateway answered */
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned port;
    int64_t ttl;
    char id[16];                    /* request in flight on the current connection */
    int rereg;                      /* counted in the connection's rereg_pending */
    int fresh;                      /* being registered anew after a refused re-register */
    int abandoned;                  /* the caller gave up waiting: unregister when answered */
    unsigned direct_port;           /* a direct route (--callback): the job's endpoint's port;
                                     * never re-registered: it does not live on the tunnel */
    int keep;                       /* direct: closing the tunnel does not unregister it */
    unsigned cb_port;               /* the policy's callback: the job's endpoint (0: none) */
    int cross_site;                 /* agent_app.cross_site, sent with every register */
    int gone;                       /* unregistered while the tunnel was down: at the welcome */
    int release;                    /* CMD_UNREGISTER: leave the route to a new agent */
    struct waiter *w;               /* the caller waiting for the first answer */
    struct event *timer;            /* bounds that wait */
};

enum cmd_type { CMD_REGISTER, CMD_ADOPT, CMD_UNREGISTER, CMD_CLOSE };

struct cmd {
    struct cmd *next;
    enum cmd_type type;
    struct app_entry *app;
    struct waiter *w;
};

struct tconn;

struct dstream {
    struct tunnel_bridge br;        /* first: the stream user data; br.sid 0 once closed */
    struct dstream *prev, *next;
    struct tconn *c;
    enum ds_kind kind;
    char method[16], authority[APP_NAME_MAX + 16], path[32];
    size_t hdr_bytes;
    int hdr_long;                   /* a pseudo-header did not fit: not ours */
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned port;
    int tried_v6;
    int connected, peer_eof, shut_wr, lingering;
};

struct tconn {
    struct agent_tunnel *t;
    struct bufferevent *bev;
    int tls;
    pid_t ssh_pid;
    nghttp2_session *h2;
    enum phase ph;
    struct dstream *streams;
    unsigned nstreams, nlinger;
    struct dstream *ctl;            /* the control stream */
    struct tunnel_lines lines;      /* control input */
    struct evbuffer *ctl_out;       /* control output not yet framed */
    int ctl_deferred;
    struct event *phase_timer, *ping_timer, *ping_deadline, *close_timer;
    struct event *idle_timer;       /* keepalive: no data stream for this long, then sleep */
    int ping_out;
    int wake;                       /* dialled to poll (or to close) while asleep */
    int wanted;                     /* the gateway held requests for an app while we slept */
    int sleeping;                   /* closing on purpose (keepalive ran out): sleep after */
    int64_t ready_at;               /* when the welcome came (PH_READY) */
    unsigned char *pin;             /* DER of <state_dir>/tls.crt, or NULL */
    int pinlen;
    int pinned;
    unsigned next_id;
    unsigned rereg_pending;
    int announce_reconnected;
    int closing, goaway_sent, shut;
    int dead;
    int rc;
    char reason[ERRLEN];
};

struct agent_tunnel {
    /* Fixed by agent_tunnel_open() before the thread starts. */
    int via_ssh;
    char host[256];
    unsigned port;
    int host_is_ip;
    char where[300];                /* "HOST:PORT" or "ssh:HOST", for messages */
    int have_proxy;
    struct proxy_spec proxy;
    SSL_CTX *ssl_ctx;
    char *state_dir;                /* NULL: no personal gateway to pin */
    char *munge_socket;
    char node[256];
    char *job;
    char *job_cert;                 /* PEM of $JOBGATE_DIR/job.crt (or of --cert), or NULL */
    EVP_PKEY *job_key;              /* $JOBGATE_DIR/job.key (or --key), or NULL */
    int user_cert;                  /* job_cert is the user's own (method cert), not a job's */
    char *ssh_path;
    char **ssh_argv;
    char **envp;
    int64_t ping_interval_ms, ping_timeout_ms;
    struct policy policy;           /* keepalive, reconnect, callback, poll (policy.h): set
                                     * before the thread starts, then the thread's alone (the
                                     * welcome may change poll to the gateway's) */
    agent_tunnel_event_fn on_event;
    void *event_arg;

    pthread_t thread;
    struct event_base *base;
    struct event *cmd_ev, *retry_ev;
    int cmd_fd;                     /* eventfd: the caller's wake-up for cmd_ev */

    /* Under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct cmd *cmds, **cmds_tail;
    struct waiter open_w;
    int ended;                      /* the thread has taken its last commands */

    /* Owned by the thread. */
    struct tconn *conn;
    struct app_entry *apps;
    unsigned attempt;               /* attempts since the last lasting connection */
    int opening;                    /* no welcome yet: a failure ends agent_tunnel_open() */
    int ever_welcomed;
    int asleep;                     /* no connection on purpose: retry_ev is the next poll */
    int stopping;
    pid_t reap[MAX_REAP];
    unsigned nreap;
};

static inline struct timeval tun_ms_tv(int64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000),
                         .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* ---- tunnel_thread.c: telling the user, completing waiters ---------------- */

void tun_vfmt(char *dst, size_t len, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Text from the gateway for a message: printable ASCII, at most max bytes. */
void tun_printable(char *dst, size_t dstlen, const char *s, size_t max);
void tun_tell(struct agent_tunnel *t, const struct agent_tunnel_event *ev);
void tun_notice(struct agent_tunnel *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Completes w once (under mu) and wakes its caller; reply is taken. */
void tun_waiter_done(struct agent_tunnel *t, struct waiter *w, int rc, json_t *reply,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* ---- tunnel_url.c ------------------------------------------------------------ */

/* [A-Za-z0-9._-]: host names, app names, nonces. */

/* ---- tunnel_trust.c ---------------------------------------------------------- */

SSL_CTX *trust_ssl_ctx_new(const char *ca_file, char *err, size_t errlen);
/* In a --jobgate job ($JOBGATE_DIR set): the job's certificate and key into
 * t, and the gateway's CA file into ca (when the plugin wrote one). 0, or
 * -errno with err (a job directory that is not the user's, or unreadable). */
int trust_job_load(struct agent_tunnel *t, char *ca, size_t calen, char *err, size_t errlen);
/* The user's own certificate and key (--cert, --key) into t (method cert).
 * 0, or -errno with err. */
int trust_user_cert_load(struct agent_tunnel *t, const char *cert, const char *key, char *err,
                         size_t errlen);
/* The personal gateway's certificate as DER (OPENSSL_free it), or NULL. */
unsigned char *trust_load_pin(const struct agent_tunnel *t, int *len);
int trust_cert_equals(X509 *x, const unsigned char *der, int len);
const char *trust_ssl_errstr(void);
/* The auth object of the hello; NULL after conn_fail. */
json_t *trust_hello_auth(struct tconn *c, const char *nonce);

/* ---- tunnel_dial.c ----------------------------------------------------------- */

int dial_ssh_prepare(struct agent_tunnel *t, char *err, size_t errlen);
void dial_snapshot_env(struct agent_tunnel *t);
void dial_free_strv(char **v);
int dial_connect(struct tconn *c, char *err, size_t errlen);
int dial_transport(struct tconn *c, int fd);
void dial_ssh_status(struct tconn *c, char *buf, size_t len);
void dial_reap_children(struct agent_tunnel *t, int final);
void dial_reap_later(struct agent_tunnel *t, pid_t pid);

/* ---- tunnel_ctl.c: the app list and the control stream ---------------------- */

struct app_entry *app_entry_find_local(struct agent_tunnel *t, const char *local);
void app_entry_pick_local(struct agent_tunnel *t, struct app_entry *a);
void app_entry_free(struct app_entry *a);
void app_entry_remove(struct agent_tunnel *t, struct app_entry *a);
void cmsg_register(struct tconn *c, struct app_entry *a);
void cmsg_unregister(struct tconn *c, const char *alias);
/* Tells the gateway that the tunnel closes to sleep (keepalive ran out). */
void cmsg_sleep(struct tconn *c);
/* Lets alias go without ending it: it waits for a new agent. */
void cmsg_release(struct tconn *c, const char *alias);
void cmsg_input(struct tconn *c, const uint8_t *data, size_t len);
ssize_t cmsg_read_cb(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
                     uint32_t *flags, nghttp2_data_source *src, void *ud);

/* ---- tunnel_stream.c --------------------------------------------------------- */

extern const struct tunnel_session_cbs ds_session_cbs;
void ds_free(struct dstream *ds);

/* ---- tunnel_conn.c ----------------------------------------------------------- */

void conn_fail_rc(struct tconn *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define conn_fail(c, ...) conn_fail_rc((c), -EIO, __VA_ARGS__)
/* The gateway broke the protocol: GOAWAY with the reason, then close. */
void conn_protocol_error(struct tconn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void conn_pump(struct tconn *c);
void conn_teardown(struct tconn *c);
void conn_retry_cb(evutil_socket_t fd, short what, void *arg);
/* Dials now (the retry timer's work; also to wake a sleeping tunnel). */
void conn_attempt(struct agent_tunnel *t);
/* t's new connection (t->conn, before it dials), its timers and control
 * buffer made; -ENOMEM when one was not (the connection exists all the
 * same: conn_fail ends it). */
int conn_new(struct agent_tunnel *t);
/* The gateway's bytes in into the HTTP/2 session (a bad frame ends the connection). */
void conn_take_input(struct tconn *c, struct evbuffer *in);
/* Arms or stops the keepalive timer after anything that changes whether
 * the connection is idle (a stream ended, an answer came). */
void conn_idle_check(struct tconn *c);

/* ---- tunnel_thread.c: closing ---------------------------------------------- */

/* 1 when the gateway holds a route of ours on this tunnel (to take back at
 * the close): an app with an alias that lives on the tunnel. */
int tun_has_routes(const struct agent_tunnel *t);
/* On a welcomed connection of a closing tunnel: resets the app streams,
 * unregisters the apps, then GOAWAY (bounded by the close timer). */
void tun_close_apps(struct tconn *c);

#endif
