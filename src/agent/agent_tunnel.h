/*
 * agent_tunnel — the agent's side of the tunnel to a remote gateway
 * (docs/tunnel-protocol.md): `jobgate run -g https://HOST[:PORT]` and
 * `jobgate run --via ssh:HOST`.
 *
 * The agent dials out (TLS with ALPN jobgate/1, through https_proxy when
 * set; or `ssh HOST jobgate tunnel --stdio` without TLS), then acts as the
 * HTTP/2 *server* of the gateway's HTTP/2 client: it answers the control
 * stream (challenge -> hello -> welcome, then register/unregister) and the
 * CONNECT streams that carry browser connections to the apps it registered.
 *
 * Owns one thread with its own event_base, which owns the connection, the
 * nghttp2 session, every stream and app socket, the reconnection timer and
 * the ssh child. The caller's thread (run.c's synchronous supervision of the
 * app) talks to it only through the functions below, which pass requests
 * under a mutex and wait, bounded, for their answers. The thread blocks
 * SIGINT, SIGTERM, SIGHUP and SIGPIPE, so the caller's handlers keep
 * receiving the forwarded signals.
 *
 * Invariants:
 *  - I2: the agent connects a CONNECT stream only to a target registered
 *    through agent_tunnel_register() on this tunnel (404 otherwise), and a
 *    secret goes only to the gateway it is meant for: the personal token only
 *    to a server whose certificate equals <state_dir>/tls.crt byte for byte,
 *    a MUNGE credential (bound to the connection's challenge) only after the
 *    chain and host name verified. Nothing is sent before verification.
 *  - Secrets (token, credential) are never logged or put in messages.
 *  - Every input is bounded (control line 64 KiB, header list 16 KiB, 1024
 *    streams, 256 KiB buffered per stream and direction) and every phase has
 *    a timeout (dial and welcome 10 s, register 15 s, close 2 s, PING).
 *  - After a successful open the thread reconnects by itself (backoff from
 *    0.5 s doubling to 30 s, full jitter, reset when a welcomed connection
 *    ends after lasting 10 s or more) and registers
 *    every app again under the alias it had, until agent_tunnel_close();
 *    with a policy without reconnect it ends instead ("lost").
 *  - The policy (docs/policy.md) goes to the gateway in the hello. When it
 *    lets the tunnel sleep (keepalive(S) with callback or poll), the tunnel
 *    closes S seconds after its last app stream ended, with a "sleep"
 *    message first, and the thread dials again at the poll interval (with
 *    jitter; every TUNNEL_CHECKIN_MS without poll), for a register, or to
 *    unregister at close. A poll connection that finds nothing held for
 *    its apps sleeps again after TUNNEL_WAKE_LINGER_MS.
 */
#ifndef JG_AGENT_TUNNEL_H
#define JG_AGENT_TUNNEL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define TUNNEL_DEFAULT_PORT 443u
#define TUNNEL_OPEN_TIMEOUT_MS 10000      /* dial, then handshake to welcome: each */
#define TUNNEL_REGISTER_TIMEOUT_MS 15000  /* register -> registered */
#define TUNNEL_CLOSE_TIMEOUT_MS 2000      /* unregister + GOAWAY on close */
#define TUNNEL_PING_INTERVAL_MS 15000
#define TUNNEL_PING_TIMEOUT_MS 30000
#define TUNNEL_CHECKIN_MS 300000          /* asleep without poll: come back this often */
#define TUNNEL_WAKE_LINGER_MS 1000        /* a poll that finds nothing held */

/* What the tunnel thread tells the user while it runs (from that thread). */
struct agent_tunnel_event {
    /* "reconnecting": the connection was lost or an attempt failed; message
     *                 says why, retry_in when the next attempt starts;
     * "reconnected":  a new connection is up and every app is registered again;
     * "ready":        an app had to be registered anew (the gateway did not
     *                 take its alias back): reply is the new answer, as from
     *                 agent_tunnel_register(), with "local";
     * "sleeping":     keepalive ran out: the tunnel closed on purpose and
     *                 comes back by poll (retry_in: when) or for a close;
     *                 message is NULL;
     * "lost":         the connection was lost and the policy has no
     *                 reconnect: the tunnel's thread has ended (message);
     * "notice":       anything else worth a line on stderr (message). */
    const char *event;
    const char *message;
    const char *reason;        /* reconnecting: why, without the retry part */
    double retry_in;           /* seconds */
    unsigned attempt;          /* reconnecting: 1 for the first attempt */
    const json_t *reply;       /* ready only; borrowed */
};

typedef void (*agent_tunnel_event_fn)(void *arg, const struct agent_tunnel_event *ev);

struct agent_tunnel_opts {
    const char *gateway;       /* "https://HOST[:PORT][/]", or NULL with via */
    const char *via;           /* "ssh:HOST", or NULL with gateway */
    const char *ca_file;       /* --ca; NULL: $JOBGATE_CA, else the system store */
    const char *cert_file;     /* --cert, --key: the user's own certificate (hello method */
    const char *key_file;      /* cert); NULL: $JOBGATE_CERT, $JOBGATE_KEY, else none */
    int64_t ping_interval_ms;  /* 0: TUNNEL_PING_INTERVAL_MS */
    int64_t ping_timeout_ms;   /* 0: TUNNEL_PING_TIMEOUT_MS */
    const struct policy *policy; /* keepalive, reconnect, callback, poll (policy.h);
                                  * NULL: persistent, with reconnect */
    agent_tunnel_event_fn on_event;   /* NULL: "jobgate: message" lines on stderr */
    void *event_arg;
};

struct agent_tunnel;
struct policy;

/*
 * Splits a -g value into host (IPv6 literal without brackets) and port:
 * only "https://", no user info, path "/" or none, no query or fragment.
 * 0, or -EINVAL with a sentence in err (a usage error).
 */
int agent_tunnel_parse_gateway(const char *url, char *host, size_t hostlen, unsigned *port,
                               char *err, size_t errlen);

/* Checks a --via value ("ssh:HOST", HOST not starting with '-', no spaces)
 * and copies HOST. 0, or -EINVAL with a sentence in err. */
int agent_tunnel_parse_via(const char *via, char *host, size_t hostlen, char *err,
                           size_t errlen);

/*
 * Connects (dial, TLS and ALPN or the ssh pipe, HTTP/2), answers the
 * challenge with a hello and waits for the welcome, each phase bounded.
 * Returns 0 with *out set, after which the tunnel's thread owns the
 * connection and reconnects by itself; or a negative errno with a sentence
 * in err (unreachable, certificate not trusted, no ALPN jobgate/1, no way to
 * prove who we are, the gateway's reason for refusing the hello, ...).
 * Reads the environment (JOBGATE_CA, JOBGATE_MUNGE_SOCKET, JOBGATE_SSH,
 * JOBGATE_REMOTE_JOBGATE, SLURM_JOB_ID, https_proxy/no_proxy) only here.
 */
int agent_tunnel_open(const struct agent_tunnel_opts *o, struct agent_tunnel **out, char *err,
                      size_t errlen);

/*
 * Registers an app: name (1-64 of [A-Za-z0-9._-]) and where it listens, a
 * UNIX socket path sock, or when sock is NULL the loopback TCP port (tried on
 * 127.0.0.1, then ::1). ttl > 0 asks for that lifetime of the first link.
 * Waits for the gateway's answer (TUNNEL_REGISTER_TIMEOUT_MS; also across a
 * reconnection). Returns 0 with *reply set to the "registered" object
 * (alias, url, link, expires; caller json_decref()s it), or a negative errno
 * with a sentence in err (-EREMOTEIO: the gateway's refusal).
 */
int agent_tunnel_register(struct agent_tunnel *t, const char *name, const char *sock,
                          unsigned port, int64_t ttl, json_t **reply, char *err, size_t errlen);
/* One app for agent_tunnel_add: agent_tunnel_register's arguments, and */
struct agent_app {
    const char *name;
    const char *sock;          /* or NULL and port */
    unsigned port;
    int64_t ttl;
    unsigned callback_port;    /* the policy's callback (docs/policy.md): the job's own
                                * endpoint on this port of this node (callback.h), dialled
                                * while the tunnel sleeps; one of the job's destinations
                                * (-EREMOTEIO "not_destination" until the node reported it);
                                * 0: none */
    const char *alias;         /* the route to take back (its previous agent's tunnel, e.g.
                                * the holder of a shared tunnel, ended); registered anew if
                                * the gateway no longer has it; NULL: a new route */
    int cross_site;            /* the route takes state-changing requests from other sites'
                                * pages (jobgate run --cross-site) */
};
/* As agent_tunnel_register; the answer also carries "local", the app's name
 * within this tunnel (for agent_tunnel_unregister). */
int agent_tunnel_add(struct agent_tunnel *t, const struct agent_app *app, json_t **reply,
                     char *err, size_t errlen);
/* Takes the app registered as local back (at once, or at the next
 * connection while the tunnel sleeps or reconnects); its other apps stay.
 * With release, the route is not ended but left to wait for a new agent (as
 * when a tunnel is lost: its run died, the app may live on), and the app's
 * streams are reset. */
void agent_tunnel_unregister(struct agent_tunnel *t, const char *local, int release);

/*
 * Registers a direct route (jobgate run --callback, docs/slurm.md): the
 * gateway will dial the job's own endpoint on port of this node, which must
 * be one of the job's destinations (JOBGATE_READY_FD). Needs a tunnel proved
 * with the job's certificate. The route does not live on the tunnel: closing
 * the tunnel leaves it (agent_tunnel_unregister_at_close ends it later). As
 * agent_tunnel_register otherwise; -EREMOTEIO with the gateway's refusal
 * ("not_destination" while the node has not reported the port yet).
 */
int agent_tunnel_register_direct(struct agent_tunnel *t, const char *name, unsigned port,
                                 int64_t ttl, json_t **reply, char *err, size_t errlen);

/* The direct route alias (of app name) is to be unregistered when t closes. */
void agent_tunnel_unregister_at_close(struct agent_tunnel *t, const char *name,
                                      const char *alias);

/*
 * Ends the tunnel: unregisters every app and sends GOAWAY (bounded by
 * TUNNEL_CLOSE_TIMEOUT_MS; if the tunnel is down at that moment the gateway
 * drops the routes after its grace period, and a notice says so), stops and
 * joins the thread, ends the ssh child, frees everything. t may be NULL.
 */
void agent_tunnel_close(struct agent_tunnel *t);

#endif
