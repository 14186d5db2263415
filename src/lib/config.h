/*
 * config — jobgated's settings: defaults for personal mode, the INI file for
 * shared mode, and the well-known paths (state directory, control socket)
 * that the daemon and the CLI must agree on.
 *
 * Owns the strings inside struct jg_config (config_free releases them).
 *
 * File format (strict: unknown sections or keys, duplicate keys, values out
 * of range and lines without '=' are errors reported as "FILE:LINE: what"):
 *
 *   # comment            ; comment
 *   [gateway]
 *   listen = 0.0.0.0:443          address:port, [v6]:port
 *   domain = apps.example.org     apps are <alias>.<domain>
 *   public_port = 443             port shown in URLs (default: listen port)
 *   state_dir = /var/lib/jobgate
 *   control_socket = /run/jobgate/control.sock
 *   cert = /etc/jobgate/tls.crt   both or neither; neither = self-signed in state_dir
 *   key = /etc/jobgate/tls.key
 *   log = stderr | syslog
 *   max_connections = 10000       client connections in the whole gateway, tunnels too
 *   workers = 0                   event-loop threads; 0: one per CPU, at most 8
 *   drain = 10s                   on SIGTERM, requests in flight get this long (0s..10m)
 *   user = jobgate                started as root: the account to drop to once bound (shared
 *                                 mode refuses root without it; "root" stays root)
 *   [limits]
 *   request_line = 8192           bytes, 256..65536
 *   header_bytes = 32768          bytes of a whole head, 1024..1048576
 *   headers = 100                 fields, 8..256
 *   [timeouts]                    durations: 30, 30s, 10m, 2h, 1d
 *   handshake = 10s   request_head = 30s   idle = 75s   connect = 10s
 *   io = 300s (no progress while a request is in flight)
 *   tunnel = 1h (no traffic on an upgraded connection, e.g. WebSocket)
 *   [links]
 *   ttl = 10m                     one-time link lifetime
 *   session_ttl = 12h             session cookie lifetime
 *   [tunnel]                      agents on other hosts (docs/tunnel-protocol.md)
 *   ping_interval = 15s   ping_timeout = 30s
 *   reconnect_wait = 5s           a request waits this long for a reconnecting agent, then 503
 *   grace = 10m                   routes of an agent that is gone are removed after this
 *   hold = 20s                    a request for a sleeping app (docs/policy.md) waits this
 *                                 long for its agent, then the "waking" page / 503
 *   hold_max = 32                 requests held at once per app; more get that page at once
 *   poll_min = 5s                 agents poll at most this often (slower ones are told so)
 *   hello_wait = 5s               a tunnel that has not said hello by then is closed
 *   pending_max = 1024            tunnels without hello yet, in all (more are closed at once)
 *   pending_per_address = 32      ... from one source address
 *   munge_socket = /run/munge/munge.socket.2   (default: MUNGE's own)
 *   client_ca = /etc/jobgate/users-ca.pem     users' own certificates (hello method cert),
 *   gridmap = /etc/grid-security/grid-mapfile  mapped to users by subject; both or neither
 *   [slurm]                       the node channel of spank_jobgate.so (docs/slurm.md)
 *   node_users = root slurm       whose MUNGE credentials may speak for nodes (names or
 *                                 uids; default root, and slurm where that user exists)
 *   job_cert_margin = 15m         a job certificate outlives the job's time limit by this
 *   job_cert_max = 7d             ... and lives at most this long
 *   job_check = 30s               how often the scheduler is asked about running jobs (0: never)
 *   squeue = /usr/bin/squeue      the command that answers (default: squeue on PATH)
 *   [quota]                       per user (not root, not the gateway's own user)
 *   routes = 256   links = 1024   tunnels = 64   control_clients = 16   held = 64
 *
 * A config file selects shared mode; without one jobgated runs in personal mode.
 */
#ifndef JG_CONFIG_H
#define JG_CONFIG_H

#include <stddef.h>
#include <stdint.h>

struct jg_config {
    int shared;             /* 0: personal mode (no config file) */
    char *listen;           /* "127.0.0.1:8443" */
    char *domain;           /* "localhost" */
    unsigned public_port;   /* 0: same as the listen port */
    char *state_dir;
    char *control_socket;
    char *cert_file;        /* NULL with key_file NULL: self-signed in state_dir */
    char *key_file;
    int use_syslog;
    unsigned max_connections;
    unsigned workers;       /* 0: one per CPU, at most 8 */
    int64_t drain;          /* seconds a stopping gateway lets requests in flight finish */
    char *run_user;         /* shared mode started as root: the account it drops to after
                             * binding (a name or uid; "root": stays root); NULL: none */

    unsigned max_request_line;
    unsigned max_header_bytes;
    unsigned max_headers;

    int64_t t_handshake, t_request_head, t_idle, t_connect, t_io, t_tunnel; /* seconds */
    int64_t link_ttl, session_ttl;                                         /* seconds */

    /* agents' tunnels (docs/tunnel-protocol.md) */
    int64_t ping_interval, ping_timeout;  /* seconds */
    int64_t reconnect_wait;               /* a request for a reconnecting route waits this long */
    int64_t grace;                        /* a route without its agent lives this long */
    int64_t hold;                         /* a request for a sleeping app waits this long */
    unsigned hold_max;                    /* ... and so many per app at once */
    int64_t poll_min;                     /* shortest poll interval accepted (seconds) */
    int64_t hello_wait;                   /* a tunnel says hello within this (seconds) */
    unsigned pending_max;                 /* tunnels without hello yet, gateway-wide */
    unsigned pending_per_address;         /* ... and from one source address */
    char *munge_socket;                   /* NULL: MUNGE's default socket */
    char *client_ca;                      /* NULL: no users' certificates */
    char *gridmap;                        /* NULL: none (needed with client_ca) */

    /* the node channel (docs/slurm.md) */
    char *node_users;                     /* NULL: the default, "root slurm" */
    int64_t job_cert_margin, job_cert_max; /* seconds */
    int64_t job_check;                    /* seconds between the reaper's checks; 0: none */
    char *squeue;                         /* NULL: "squeue" on PATH */

    /* per-user quotas (root and the gateway's own user are outside them) */
    unsigned quota_routes;                /* routes of one uid */
    unsigned quota_links;                 /* unredeemed one-time links of one uid */
    unsigned quota_tunnels;               /* authenticated tunnels of one uid */
    unsigned quota_control;               /* control-socket clients of one uid */
    unsigned quota_held;                  /* requests held for one uid's sleeping apps */
};

/* Fills personal-mode defaults, including the paths below. Returns 0 or -errno
 * (e.g. no HOME and no XDG_STATE_HOME). */
int config_defaults(struct jg_config *c);

/* Reads an INI file over the defaults and sets shared = 1. On error returns
 * -EINVAL (or -errno if the file cannot be read) and writes "PATH:LINE: reason"
 * (or "PATH: reason") into err. */
int config_load(struct jg_config *c, const char *path, char *err, size_t errlen);

void config_free(struct jg_config *c);

/* SIGHUP in a running gateway (next: the file read again, cur: what runs).
 * Calls changed() for every key whose value differs, with live = 1 when the
 * gateway takes the change at once; a key that takes effect only at the next
 * start (listen, domain, public_port, state_dir, control_socket, log,
 * workers, user, job_check) gets cur's value back in next, so that next
 * describes what runs. */
void config_reconcile(struct jg_config *next, const struct jg_config *cur,
                      void (*changed)(void *arg, const char *section, const char *key, int live),
                      void *arg);

/* $XDG_STATE_HOME/jobgate, else $HOME/.local/state/jobgate. Caller frees. NULL if neither is set. */
char *config_default_state_dir(void);
/* $XDG_RUNTIME_DIR/jobgate/control.sock when XDG_RUNTIME_DIR is set and is a
 * directory, else <state_dir>/control.sock. Caller frees. */
char *config_default_control_socket(const char *state_dir);

/* At most this many users in node_users. */
#define CONFIG_USERS_MAX 16
/* 1 if v is a list of 1..CONFIG_USERS_MAX user names or uids separated by
 * blanks (each 1..32 of A-Z a-z 0-9 . _ -, not starting with '-'). */
int config_users_ok(const char *v);

/* Splits "host:port" or "[v6]:port" into host (without brackets) and port.
 * 0 or -EINVAL. */
int config_split_hostport(const char *s, char *host, size_t hostlen, unsigned *port);

#endif
