/* tunnel — see tunnel.h.
 *
 * Inside the thread: one struct tconn per connection attempt (transport,
 * nghttp2 session, control stream, data streams), one struct app_entry per
 * registered app (kept across connections: it carries the alias to ask for
 * again), and timers. Rules that keep lifetimes simple:
 *  - nghttp2 callbacks never free the connection; they record a failure
 *    (conn_fail) and the entry point that called into nghttp2 ends with
 *    conn_pump(), which flushes and, if the connection is dead, tears it down.
 *    Nothing touches the connection after conn_pump().
 *  - A data stream (struct dstream) lives until nghttp2 closes its stream,
 *    or, when bytes for the app are still queued then, until they are written
 *    (bounded: LINGER_MS, MAX_LINGER); teardown frees whatever is left.
 *  - The caller's thread only pushes commands (mutex + event_active) and
 *    waits on a struct waiter that this thread always completes.
 */
#include "tunnel.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <event2/util.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "proxyconn.h"
#include "sockpeer.h"
#include "tunnel_bridge.h"
#include "tunnel_proto.h"
#include "util.h"
#ifdef JG_HAVE_MUNGE
#include "munge_cred.h"
#endif

#ifndef JG_VERSION
#define JG_VERSION "unknown"
#endif

#define OUT_HIGH (256 * 1024)          /* tunnel output: no new frames above this */
#define OUT_LOW (64 * 1024)            /* ... and resume below this */
#define IO_CHUNK (64 * 1024)           /* largest single read or write of a socket */
#define BACKOFF_BASE_MS 500
#define BACKOFF_CAP_MS 30000
#define STABLE_MS 10000                /* a welcomed connection this old resets the backoff */
#define LINGER_MS 30000                /* writing what is left to an app after its stream */
#define MAX_LINGER 256
#define APP_CONNECT_TIMEOUT_S 10
#define APP_NAME_MAX 64
#define NONCE_LEN 43
#define SSH_WORDS_MAX 32
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
    struct waiter *w;               /* the caller waiting for the first answer */
    struct event *timer;            /* bounds that wait */
};

enum cmd_type { CMD_REGISTER, CMD_CLOSE };

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
    int ping_out;
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
    char *ssh_path;
    char **ssh_argv;
    char **envp;
    int64_t ping_interval_ms, ping_timeout_ms;
    agent_tunnel_event_fn on_event;
    void *event_arg;

    pthread_t thread;
    struct event_base *base;
    struct event *cmd_ev, *retry_ev;

    /* Under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct cmd *cmds, **cmds_tail;
    struct waiter open_w;

    /* Owned by the thread. */
    struct tconn *conn;
    struct app_entry *apps;
    unsigned attempt;               /* attempts since the last lasting connection */
    int opening;                    /* no welcome yet: a failure ends agent_tunnel_open() */
    int ever_welcomed;
    int stopping;
    pid_t reap[MAX_REAP];
    unsigned nreap;
};

static void conn_pump(struct tconn *c);
static void conn_teardown(struct tconn *c);
static void send_register(struct tconn *c, struct app_entry *a);
static ssize_t ctl_read_cb(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
                           uint32_t *flags, nghttp2_data_source *src, void *ud);

/* ---- small helpers ---------------------------------------------------------- */

static void vfmt(char *dst, size_t len, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

static void vfmt(char *dst, size_t len, const char *fmt, va_list ap)
{
    if (vsnprintf(dst, len, fmt, ap) < 0)
        dst[0] = '\0';
}

/* Text from the gateway for a message: printable ASCII, at most max bytes. */
static void printable(char *dst, size_t dstlen, const char *s, size_t max)
{
    size_t n = 0;
    for (; s && *s && n + 1 < dstlen && n < max; s++)
        dst[n++] = (*s >= 0x20 && *s < 0x7f) ? *s : '?';
    dst[n] = '\0';
}

static void tell(struct agent_tunnel *t, const struct agent_tunnel_event *ev)
{
    if (t->on_event) {
        t->on_event(t->event_arg, ev);
        return;
    }
    if (ev->message)
        fprintf(stderr, "jobgate: %s\n", ev->message);
}

static void notice(struct agent_tunnel *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void notice(struct agent_tunnel *t, const char *fmt, ...)
{
    char msg[ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vfmt(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct agent_tunnel_event ev = {.event = "notice", .message = msg};
    tell(t, &ev);
}

static void waiter_done(struct agent_tunnel *t, struct waiter *w, int rc, json_t *reply,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void waiter_done(struct agent_tunnel *t, struct waiter *w, int rc, json_t *reply,
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
            vfmt(w->err, sizeof(w->err), fmt, ap);
            va_end(ap);
        }
        w->done = 1;
        pthread_cond_broadcast(&t->cond);
    }
    pthread_mutex_unlock(&t->mu);
    json_decref(reply);
}

static uint32_t rand32(void)
{
    uint32_t v;
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
        v = (uint32_t)now_mono_ms() * 2654435761u;
    return v;
}

/* Full jitter: uniform in [0, min(cap, base * 2^attempt)]. */
static int64_t backoff_ms(struct agent_tunnel *t)
{
    int64_t ceil = BACKOFF_BASE_MS;
    for (unsigned i = 0; i < t->attempt && ceil < BACKOFF_CAP_MS; i++)
        ceil *= 2;
    if (ceil > BACKOFF_CAP_MS)
        ceil = BACKOFF_CAP_MS;
    t->attempt++;
    return (int64_t)(rand32() % (uint32_t)(ceil + 1));
}

static struct timeval ms_tv(int64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000),
                         .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* ---- options ------------------------------------------------------------------ */

static int host_char_ok(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '-' || ch == '_';
}

int agent_tunnel_parse_gateway(const char *url, char *host, size_t hostlen, unsigned *port,
                               char *err, size_t errlen)
{
    static const char scheme[] = "https://";
    const size_t sl = sizeof(scheme) - 1;
    char auth[300];

    if (!url || strncasecmp(url, scheme, sl) != 0) {
        if (url && strstr(url, "://"))
            return errmsg(err, errlen, -EINVAL,
                          "bad gateway '%s': only https:// URLs are supported", url ? url : "");
        return errmsg(err, errlen, -EINVAL, "bad gateway '%s': expected https://HOST[:PORT]",
                      url ? url : "");
    }
    const char *p = url + sl;
    size_t alen = strcspn(p, "/?#");
    const char *rest = p + alen;
    if (*rest == '/')
        rest++;
    if (*rest == '?' || *rest == '#')
        return errmsg(err, errlen, -EINVAL,
                      "bad gateway '%s': a gateway URL has no query or fragment", url);
    if (*rest != '\0')
        return errmsg(err, errlen, -EINVAL,
                      "bad gateway '%s': a gateway URL has no path (only \"/\")", url);
    if (alen == 0)
        return errmsg(err, errlen, -EINVAL, "bad gateway '%s': no host", url);
    if (alen >= sizeof(auth))
        return errmsg(err, errlen, -EINVAL, "bad gateway '%.40s...': host too long", url);
    memcpy(auth, p, alen);
    auth[alen] = '\0';
    if (strchr(auth, '@'))
        return errmsg(err, errlen, -EINVAL,
                      "bad gateway '%s': no user name or password in a gateway URL", url);

    const char *h = auth, *portstr = NULL;
    char *hend;
    if (auth[0] == '[') {
        hend = strchr(auth, ']');
        if (!hend)
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': unclosed '['", url);
        h = auth + 1;
        *hend = '\0';
        if (hend[1] == ':')
            portstr = hend + 2;
        else if (hend[1] != '\0')
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': junk after ']'", url);
        struct in6_addr a6;
        if (inet_pton(AF_INET6, h, &a6) != 1)
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': bad IPv6 address", url);
    } else {
        hend = strchr(auth, ':');
        if (hend) {
            *hend = '\0';
            portstr = hend + 1;
        }
        if (h[0] == '\0')
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': no host", url);
        for (const char *q = h; *q; q++)
            if (!host_char_ok(*q))
                return errmsg(err, errlen, -EINVAL,
                              "bad gateway '%s': bad character in the host name", url);
        if (h[0] == '-' || h[0] == '.')
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': bad host name", url);
    }
    *port = TUNNEL_DEFAULT_PORT;
    if (portstr) {
        uint64_t v;
        if (parse_uint(portstr, 1, 65535, &v) < 0)
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': bad port (1-65535)", url);
        *port = (unsigned)v;
    }
    if (strlen(h) >= hostlen || strlen(h) > 253)
        return errmsg(err, errlen, -EINVAL, "bad gateway '%s': host too long", url);
    memcpy(host, h, strlen(h) + 1);
    return 0;
}

int agent_tunnel_parse_via(const char *via, char *host, size_t hostlen, char *err, size_t errlen)
{
    if (!via || strncmp(via, "ssh:", 4) != 0)
        return errmsg(err, errlen, -EINVAL, "bad --via '%s': expected ssh:HOST",
                      via ? via : "");
    const char *h = via + 4;
    size_t n = strlen(h);
    if (n == 0)
        return errmsg(err, errlen, -EINVAL, "bad --via '%s': no host after 'ssh:'", via);
    if (h[0] == '-')
        return errmsg(err, errlen, -EINVAL, "bad --via '%s': the host may not start with '-'",
                      via);
    if (n >= hostlen || n > 255)
        return errmsg(err, errlen, -EINVAL, "bad --via: host too long");
    for (const char *q = h; *q; q++)
        if (*q <= 0x20 || *q >= 0x7f)
            return errmsg(err, errlen, -EINVAL,
                          "bad --via '%s': spaces or control characters in the host", via);
    memcpy(host, h, n + 1);
    return 0;
}

/* ---- identity: the pinned certificate, the token, MUNGE ---------------------- */

/* Opens dir/name for reading without following a symlink and checks that it
 * is a regular file of ours that nobody else can write (mode_mask: bits
 * that must be clear). fd, or -errno with a sentence in err. */
static int open_own_file(const char *dir, const char *name, unsigned mode_mask, off_t maxsize,
                         struct stat *st, char *path, size_t pathlen, char *err, size_t errlen)
{
    if (xsnprintf(path, pathlen, "%s/%s", dir, name) < 0)
        return errmsg(err, errlen, -ENAMETOOLONG, "path too long: %s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP)
            return errmsg(err, errlen, -e, "%s is a symbolic link; refusing to use it", path);
        return errmsg(err, errlen, -e, "cannot open %s: %s", path, strerror(e));
    }
    if (fstat(fd, st) < 0) {
        int e = errno;
        close(fd);
        return errmsg(err, errlen, -e, "cannot stat %s: %s", path, strerror(e));
    }
    const char *why = NULL;
    char buf[96];
    if (!S_ISREG(st->st_mode)) {
        why = "is not a regular file";
    } else if (st->st_uid != geteuid()) {
        (void)xsnprintf(buf, sizeof(buf), "belongs to uid %lu, not to you",
                        (unsigned long)st->st_uid);
        why = buf;
    } else if ((st->st_mode & mode_mask) != 0) {
        (void)xsnprintf(buf, sizeof(buf), "has mode %04o; it must be %s",
                        (unsigned)(st->st_mode & 07777),
                        mode_mask == 077 ? "0600 or stricter" : "writable only by you");
        why = buf;
    } else if (st->st_size > maxsize) {
        (void)xsnprintf(buf, sizeof(buf), "is larger than %lld bytes", (long long)maxsize);
        why = buf;
    }
    if (why) {
        close(fd);
        return errmsg(err, errlen, -EPERM, "%s %s; refusing to use it", path, why);
    }
    return fd;
}

/* The personal gateway's certificate as DER, if there is one we can trust
 * the file of; else NULL (then nothing is pinned and no token is sent). */
static unsigned char *load_pin(const struct agent_tunnel *t, int *len)
{
    char path[PATH_MAX], err[ERRLEN];
    struct stat st;

    *len = 0;
    if (!t->state_dir)
        return NULL;
    int fd = open_own_file(t->state_dir, "tls.crt", 022, 1 << 20, &st, path, sizeof(path), err,
                           sizeof(err));
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "r");
    if (!f) {
        close(fd);
        return NULL;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!x) {
        ERR_clear_error();
        return NULL;
    }
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    X509_free(x);
    if (n <= 0) {
        ERR_clear_error();
        return NULL;
    }
    *len = n;
    return der;
}

static int cert_equals(X509 *x, const unsigned char *der, int len)
{
    unsigned char *mine = NULL;
    int n = i2d_X509(x, &mine);
    int eq = n > 0 && n == len && memcmp(mine, der, (size_t)n) == 0;
    OPENSSL_free(mine);
    return eq;
}

/* Reads <state_dir>/agent.token into tok (TUNNEL_TOKEN_MAX + 1 bytes). */
static int read_token(const struct agent_tunnel *t, char *tok, char *err, size_t errlen)
{
    char path[PATH_MAX];
    struct stat st;

    int fd = open_own_file(t->state_dir, "agent.token", 077, TUNNEL_TOKEN_MAX, &st, path,
                           sizeof(path), err, errlen);
    if (fd < 0)
        return fd;
    char buf[TUNNEL_TOKEN_MAX + 2];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return errmsg(err, errlen, -e, "cannot read %s: %s", path, strerror(e));
        }
        if (r == 0 || (n += (size_t)r) >= sizeof(buf) - 1)
            break;
    }
    close(fd);
    if (n > TUNNEL_TOKEN_MAX) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return errmsg(err, errlen, -EMSGSIZE, "%s is longer than %d bytes", path,
                      TUNNEL_TOKEN_MAX);
    }
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    int ok = n > 0;
    for (size_t i = 0; i < n; i++)
        if (buf[i] <= 0x20 || buf[i] >= 0x7f)
            ok = 0;
    if (!ok) {
        OPENSSL_cleanse(buf, sizeof(buf));
        return errmsg(err, errlen, -EINVAL, "%s holds no token (empty, or not printable)", path);
    }
    memcpy(tok, buf, n);
    tok[n] = '\0';
    OPENSSL_cleanse(buf, sizeof(buf));
    return 0;
}

/* The verification: the pinned certificate (exact DER), else the chain and
 * host name (SSL_set1_host) against the CA file or the system store. */
static int verify_cb(X509_STORE_CTX *xs, void *arg)
{
    (void)arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct tconn *c = ssl ? SSL_get_app_data(ssl) : NULL;
    X509 *leaf = X509_STORE_CTX_get0_cert(xs);
    if (c && c->pin && leaf && cert_equals(leaf, c->pin, c->pinlen))
        return 1;
    return X509_verify_cert(xs);
}

static const char *ssl_errstr(void)
{
    static __thread char buf[256];
    unsigned long e = ERR_get_error();
    if (!e)
        return "unknown error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

static SSL_CTX *make_ssl_ctx(const char *ca_file, char *err, size_t errlen)
{
    static const unsigned char alpn[] = "\x09" TUNNEL_ALPN;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        errmsg(err, errlen, -ENOMEM, "cannot make a TLS context: %s", ssl_errstr());
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Returns 0 on success, unlike the rest of OpenSSL. */
    if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1) != 0) {
        errmsg(err, errlen, -ENOMEM, "cannot set ALPN: %s", ssl_errstr());
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            errmsg(err, errlen, -EINVAL, "cannot load CA certificates from %s: %s", ca_file,
                   ssl_errstr());
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        ERR_clear_error(); /* no system store: only a pinned certificate can verify */
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, verify_cb, NULL);
    return ctx;
}

/* ---- ssh ------------------------------------------------------------------------ */

static void free_strv(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

/* $JOBGATE_SSH split on blanks, then HOST <remote> tunnel --stdio; the
 * program resolved through PATH now, so that the thread never reads the
 * environment (run.c changes it while the thread runs). */
static int ssh_prepare(struct agent_tunnel *t, char *err, size_t errlen)
{
    const char *cmd = getenv("JOBGATE_SSH");
    const char *remote = getenv("JOBGATE_REMOTE_JOBGATE");
    if (!cmd || !*cmd)
        cmd = "ssh";
    if (!remote || !*remote)
        remote = "jobgate";
    if (strlen(cmd) > 4096 || strlen(remote) > 4096)
        return errmsg(err, errlen, -EINVAL, "JOBGATE_SSH or JOBGATE_REMOTE_JOBGATE is too long");

    char **argv = xcalloc(SSH_WORDS_MAX + 5, sizeof(*argv));
    size_t n = 0;
    for (const char *p = cmd; *p;) {
        p += strspn(p, " \t");
        size_t w = strcspn(p, " \t");
        if (w == 0)
            break;
        if (n == SSH_WORDS_MAX) {
            free_strv(argv);
            return errmsg(err, errlen, -E2BIG, "JOBGATE_SSH has more than %d words",
                          SSH_WORDS_MAX);
        }
        argv[n++] = xstrndup(p, w);
        p += w;
    }
    if (n == 0) {
        free_strv(argv);
        return errmsg(err, errlen, -EINVAL, "JOBGATE_SSH names no program");
    }
    argv[n++] = xstrdup(t->host);
    argv[n++] = xstrdup(remote);
    argv[n++] = xstrdup("tunnel");
    argv[n++] = xstrdup("--stdio");
    argv[n] = NULL;
    t->ssh_argv = argv;

    if (strchr(argv[0], '/')) {
        if (access(argv[0], X_OK) < 0)
            return errmsg(err, errlen, -errno, "cannot run %s: %s", argv[0], strerror(errno));
        t->ssh_path = xstrdup(argv[0]);
        return 0;
    }
    const char *path = getenv("PATH");
    if (!path || !*path)
        path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path; *p;) {
        size_t w = strcspn(p, ":");
        char cand[PATH_MAX];
        struct stat st;
        if (w > 0 && xsnprintf(cand, sizeof(cand), "%.*s/%s", (int)w, p, argv[0]) == 0 &&
            stat(cand, &st) == 0 && S_ISREG(st.st_mode) && access(cand, X_OK) == 0) {
            t->ssh_path = xstrdup(cand);
            return 0;
        }
        p += w;
        if (*p == ':')
            p++;
    }
    return errmsg(err, errlen, -ENOENT, "cannot find '%s' in PATH (set JOBGATE_SSH)", argv[0]);
}

static void snapshot_env(struct agent_tunnel *t)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    t->envp = xcalloc(n + 1, sizeof(*t->envp));
    for (size_t i = 0; i < n; i++)
        t->envp[i] = xstrdup(environ[i]);
}

/* Starts ssh with both its stdin and stdout on one end of a socketpair, in
 * its own process group (a ^C at the terminal must not cut the tunnel before
 * the route is removed), stderr inherited. Returns our end, or -errno. */
static int ssh_spawn(struct agent_tunnel *t, pid_t *pid_out, char *err, size_t errlen)
{
    int sv[2], ep[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return errmsg(err, errlen, -errno, "socketpair: %s", strerror(errno));
    if (pipe2(ep, O_CLOEXEC) < 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        return errmsg(err, errlen, -e, "pipe: %s", strerror(e));
    }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(sv[0]);
        close(sv[1]);
        close(ep[0]);
        close(ep[1]);
        return errmsg(err, errlen, -e, "fork: %s", strerror(e));
    }
    if (pid == 0) {
        /* Only async-signal-safe calls: the parent has threads. */
        sigset_t none;
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        sigemptyset(&sa.sa_mask);
        (void)sigaction(SIGPIPE, &sa, NULL);
        (void)sigaction(SIGINT, &sa, NULL);
        (void)sigaction(SIGTERM, &sa, NULL);
        (void)sigaction(SIGHUP, &sa, NULL);
        sigemptyset(&none);
        (void)sigprocmask(SIG_SETMASK, &none, NULL);
        (void)setpgid(0, 0);
        int s = fcntl(sv[1], F_DUPFD, 3);
        int e = 0;
        if (s < 0 || dup2(s, 0) < 0 || dup2(s, 1) < 0) {
            e = errno;
        } else {
            close(s);
            execve(t->ssh_path, t->ssh_argv, t->envp);
            e = errno;
        }
        ssize_t w;
        do {
            w = write(ep[1], &e, sizeof(e));
        } while (w < 0 && errno == EINTR);
        _exit(127);
    }
    close(sv[1]);
    close(ep[1]);
    int e = 0;
    ssize_t n;
    do {
        n = read(ep[0], &e, sizeof(e));
    } while (n < 0 && errno == EINTR);
    close(ep[0]);
    if (n == (ssize_t)sizeof(e)) {
        close(sv[0]);
        (void)waitpid(pid, NULL, 0);
        return errmsg(err, errlen, -e, "cannot run %s: %s", t->ssh_path, strerror(e));
    }
    *pid_out = pid;
    return sv[0];
}

/* Reaps ssh children that have exited; final: ends and reaps all of them. */
static void reap_children(struct agent_tunnel *t, int final)
{
    int64_t deadline = now_mono_ms() + 1000;
    unsigned i = 0;
    while (i < t->nreap) {
        pid_t r = waitpid(t->reap[i], NULL, WNOHANG);
        if (r == t->reap[i] || (r < 0 && errno == ECHILD)) {
            t->reap[i] = t->reap[--t->nreap];
            continue;
        }
        if (!final) {
            i++;
            continue;
        }
        if (now_mono_ms() < deadline) {
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000L};
            (void)nanosleep(&ts, NULL);
            continue;
        }
        (void)kill(t->reap[i], SIGKILL);
        while (waitpid(t->reap[i], NULL, 0) < 0 && errno == EINTR)
            ;
        t->reap[i] = t->reap[--t->nreap];
    }
}

static void reap_later(struct agent_tunnel *t, pid_t pid)
{
    (void)kill(pid, SIGTERM);
    if (t->nreap == MAX_REAP)
        reap_children(t, 1);
    t->reap[t->nreap++] = pid;
}

/* ---- the app list --------------------------------------------------------------- */

static struct app_entry *find_app_local(struct agent_tunnel *t, const char *local)
{
    for (struct app_entry *a = t->apps; a; a = a->next)
        if (!a->abandoned && strcmp(a->local, local) == 0)
            return a;
    return NULL;
}

static struct app_entry *find_app_id(struct agent_tunnel *t, const char *id)
{
    for (struct app_entry *a = t->apps; a; a = a->next)
        if (a->id[0] && strcmp(a->id, id) == 0)
            return a;
    return NULL;
}

static void app_free(struct app_entry *a)
{
    if (a->timer)
        event_free(a->timer);
    free(a->alias);
    free(a);
}

static void app_remove(struct agent_tunnel *t, struct app_entry *a)
{
    for (struct app_entry **pp = &t->apps; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    app_free(a);
}

/* ---- sending ----------------------------------------------------------------------- */

static void conn_fail_rc(struct tconn *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conn_fail_rc(struct tconn *c, int rc, const char *fmt, ...)
{
    if (c->dead)
        return;
    c->dead = 1;
    c->rc = rc;
    if (c->reason[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vfmt(c->reason, sizeof(c->reason), fmt, ap);
        va_end(ap);
    }
}

#define conn_fail(c, ...) conn_fail_rc((c), -EIO, __VA_ARGS__)

/* The gateway broke the protocol: GOAWAY with the reason, then close. */
static void protocol_error(struct tconn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void protocol_error(struct tconn *c, const char *fmt, ...)
{
    char reason[256];
    va_list ap;
    va_start(ap, fmt);
    vfmt(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    if (c->dead || c->closing)
        return;
    (void)nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                                nghttp2_session_get_last_proc_stream_id(c->h2),
                                NGHTTP2_PROTOCOL_ERROR, (const uint8_t *)reason, strlen(reason));
    c->goaway_sent = 1;
    c->closing = 1;
    c->rc = -EPROTO;
    (void)xsnprintf(c->reason, sizeof(c->reason), "the gateway broke the tunnel protocol: %s",
                    reason);
    struct timeval tv = ms_tv(TUNNEL_CLOSE_TIMEOUT_MS);
    evtimer_add(c->close_timer, &tv);
}

/* Frames nghttp2's output into the transport while it is under OUT_HIGH;
 * the write callback resumes below OUT_LOW. */
static void conn_flush(struct tconn *c)
{
    if (c->dead)
        return;
    int rv = tunnel_bridge_pump_out(c->h2, bufferevent_get_output(c->bev), OUT_HIGH);
    if (rv < 0)
        conn_fail(c, "HTTP/2 error: %s", nghttp2_strerror(rv));
}

/* Queues one control message (one line). secret: wipe our copy afterwards. */
static int ctl_send(struct tconn *c, json_t *msg, int secret)
{
    char *s;
    size_t n;
    int rc = tunnel_msg_encode(msg, &s, &n);
    if (rc == -EMSGSIZE) {
        conn_fail(c, "a control message would be longer than %d bytes", TUNNEL_CTL_LINE_MAX);
        return -1;
    }
    if (rc < 0) {
        conn_fail(c, "cannot encode a control message");
        return -1;
    }
    if (evbuffer_add(c->ctl_out, s, n) < 0) {
        conn_fail(c, "out of memory");
        rc = -1;
    }
    if (secret)
        OPENSSL_cleanse(s, n);
    free(s);
    if (rc == 0 && c->ctl_deferred && c->ctl && c->ctl->br.sid) {
        c->ctl_deferred = 0;
        (void)nghttp2_session_resume_data(c->h2, c->ctl->br.sid);
    }
    return rc;
}

static void send_register(struct tconn *c, struct app_entry *a)
{
    (void)xsnprintf(a->id, sizeof(a->id), "r%u", ++c->next_id);
    json_t *m = json_pack("{s:s,s:s,s:s,s:s}", "type", "register", "id", a->id, "name", a->name,
                          "local", a->local);
    if (m && a->alias)
        (void)json_object_set_new(m, "alias", json_string(a->alias));
    else if (m && a->ttl > 0)
        (void)json_object_set_new(m, "ttl", json_integer(a->ttl));
    if (!m) {
        conn_fail(c, "cannot build a register message");
        return;
    }
    (void)ctl_send(c, m, 0);
}

static void send_unregister(struct tconn *c, const char *alias)
{
    json_t *m = json_pack("{s:s,s:s}", "type", "unregister", "alias", alias);
    if (m)
        (void)ctl_send(c, m, 0);
}

/* ---- data streams ---------------------------------------------------------------- */

static void ds_free(struct dstream *ds)
{
    struct tconn *c = ds->c;
    if (ds->prev)
        ds->prev->next = ds->next;
    else
        c->streams = ds->next;
    if (ds->next)
        ds->next->prev = ds->prev;
    c->nstreams--;
    if (ds->lingering)
        c->nlinger--;
    if (ds->br.bev) {
        bufferevent_setcb(ds->br.bev, NULL, NULL, NULL, NULL);
        bufferevent_free(ds->br.bev);
    }
    if (c->ctl == ds)
        c->ctl = NULL;
    free(ds);
}

static void ds_drop_app(struct dstream *ds)
{
    if (!ds->br.bev)
        return;
    bufferevent_setcb(ds->br.bev, NULL, NULL, NULL, NULL);
    bufferevent_free(ds->br.bev);
    ds->br.bev = NULL;
}

static void respond_status(struct dstream *ds, const char *status)
{
    nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status),
                     NGHTTP2_NV_FLAG_NONE};
    ds->kind = DS_REJECTED;
    if (nghttp2_submit_response(ds->c->h2, ds->br.sid, &nv, 1, NULL) != 0)
        (void)nghttp2_submit_rst_stream(ds->c->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                        NGHTTP2_INTERNAL_ERROR);
}

/* After END_STREAM from the gateway, once everything for the app is
 * written: half-close toward the app. */
static void maybe_shut_wr(struct dstream *ds)
{
    if (!ds->peer_eof || !ds->connected || ds->shut_wr || !ds->br.bev)
        return;
    if (evbuffer_get_length(bufferevent_get_output(ds->br.bev)) > 0)
        return;
    (void)shutdown(bufferevent_getfd(ds->br.bev), SHUT_WR);
    ds->shut_wr = 1;
}

static void app_read_cb(struct bufferevent *b, void *arg)
{
    struct dstream *ds = arg;
    struct tconn *c = ds->c;
    if (!ds->br.sid) /* lingering: the stream is over, nothing more goes up */
        evbuffer_drain(bufferevent_get_input(b), evbuffer_get_length(bufferevent_get_input(b)));
    else
        tunnel_bridge_resume(&ds->br);
    conn_pump(c);
}

static void app_write_cb(struct bufferevent *b, void *arg)
{
    struct dstream *ds = arg;
    struct tconn *c = ds->c;
    (void)b;
    tunnel_bridge_drained(&ds->br);
    maybe_shut_wr(ds);
    if (ds->lingering && evbuffer_get_length(bufferevent_get_output(ds->br.bev)) == 0)
        ds_free(ds);
    conn_pump(c);
}

static int ds_connect(struct dstream *ds);

static void app_event_cb(struct bufferevent *b, short what, void *arg)
{
    struct dstream *ds = arg;
    struct tconn *c = ds->c;
    (void)b;

    if (what & BEV_EVENT_CONNECTED && ds->port) {
        /* Any user may bind the loopback address the app does not hold (say
         * 127.0.0.1 when it listens on ::1): only the owner's socket gets the
         * stream (I2). */
        long uid = sockpeer_tcp_uid(bufferevent_getfd(ds->br.bev), "/proc");
        if (uid != (long)getuid()) {
            notice(c->t, "refusing port %u on %s: it is answered by uid %ld, not by you",
                   ds->port, ds->tried_v6 ? "::1" : "127.0.0.1", uid);
            what = BEV_EVENT_ERROR; /* then the other address, or 502 */
        }
    }
    if (what & BEV_EVENT_CONNECTED) {
        ds->connected = 1;
        bufferevent_set_timeouts(ds->br.bev, NULL, NULL);
        if (ds->br.sid) {
            nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE};
            nghttp2_data_provider prd = tunnel_bridge_provider(&ds->br);
            ds->br.ready = 1;
            if (nghttp2_submit_response(c->h2, ds->br.sid, &nv, 1, &prd) != 0)
                (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                                NGHTTP2_INTERNAL_ERROR);
        }
        maybe_shut_wr(ds);
    } else if (what & BEV_EVENT_EOF) {
        ds->br.far_eof = 1;
        if (!ds->br.sid)
            ds_free(ds);
        else
            tunnel_bridge_resume(&ds->br);
    } else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)) {
        if (!ds->connected && ds->br.sid) {
            ds_drop_app(ds);
            if (ds->port && !ds->tried_v6) {
                ds->tried_v6 = 1;
                if (ds_connect(ds) == 0) {
                    conn_pump(c);
                    return;
                }
            }
            respond_status(ds, "502");
        } else if (ds->br.sid) {
            ds_drop_app(ds);
            (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                            NGHTTP2_CONNECT_ERROR);
        } else {
            ds_free(ds);
        }
    }
    conn_pump(c);
}

/* Starts the connection to the app: its UNIX socket, or its loopback port
 * on 127.0.0.1 (then ::1). 0, or -1 when not even a socket could be made. */
static int ds_connect(struct dstream *ds)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof(ss));
    if (ds->sock[0]) {
        struct sockaddr_un *a = (struct sockaddr_un *)&ss;
        a->sun_family = AF_UNIX;
        memcpy(a->sun_path, ds->sock, strlen(ds->sock) + 1);
        sslen = sizeof(*a);
    } else if (!ds->tried_v6) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a->sin_port = htons((uint16_t)ds->port);
        sslen = sizeof(*a);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_loopback;
        a->sin6_port = htons((uint16_t)ds->port);
        sslen = sizeof(*a);
    }
    /* Our own socket: libevent's would not be close-on-exec, and the ssh
     * child is forked from this thread. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    struct bufferevent *b = bufferevent_socket_new(ds->c->t->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!b) {
        close(fd);
        return -1;
    }
    tunnel_bridge_attach(&ds->br, b);
    bufferevent_setcb(b, app_read_cb, app_write_cb, app_event_cb, ds);
    struct timeval tv = {.tv_sec = APP_CONNECT_TIMEOUT_S, .tv_usec = 0};
    bufferevent_set_timeouts(b, NULL, &tv);
    bufferevent_enable(b, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(b, (struct sockaddr *)&ss, (int)sslen) < 0) {
        /* libevent reports an immediate refusal through the event callback;
         * a real failure here leaves the socket unusable. */
        ds_drop_app(ds);
        return -1;
    }
    return 0;
}

/* ---- nghttp2 callbacks ------------------------------------------------------------- */

static int cb_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct tconn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct dstream *ds = xcalloc(1, sizeof(*ds));
    ds->c = c;
    ds->br.h2 = s;
    ds->br.sid = f->hd.stream_id;
    ds->next = c->streams;
    if (c->streams)
        c->streams->prev = ds;
    c->streams = ds;
    c->nstreams++;
    if (nghttp2_session_set_stream_user_data(s, ds->br.sid, ds) != 0) {
        ds->br.sid = 0;
        ds_free(ds);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static void copy_hdr(struct dstream *ds, char *dst, size_t dstlen, const uint8_t *v, size_t vlen)
{
    if (vlen >= dstlen) {
        ds->hdr_long = 1;
        return;
    }
    memcpy(dst, v, vlen);
    dst[vlen] = '\0';
}

static int cb_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *ud)
{
    (void)flags;
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct dstream *ds = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!ds)
        return 0;
    /* RFC 9113 6.5.2: name + value + 32 per field. */
    ds->hdr_bytes += namelen + valuelen + 32;
    if (ds->hdr_bytes > TUNNEL_HEADER_LIST_MAX)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST || namelen < 2 || name[0] != ':')
        return 0;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0)
        copy_hdr(ds, ds->method, sizeof(ds->method), value, valuelen);
    else if (namelen == 10 && memcmp(name, ":authority", 10) == 0)
        copy_hdr(ds, ds->authority, sizeof(ds->authority), value, valuelen);
    else if (namelen == 5 && memcmp(name, ":path", 5) == 0)
        copy_hdr(ds, ds->path, sizeof(ds->path), value, valuelen);
    return 0;
}

static void on_request(struct tconn *c, struct dstream *ds)
{
    if (strcmp(ds->method, "POST") == 0 && strcmp(ds->path, TUNNEL_CONTROL_PATH) == 0 &&
        !ds->hdr_long) {
        if (c->ctl || c->ph != PH_CONTROL) {
            /* One control stream per connection; another is refused alone. */
            ds->kind = DS_REJECTED;
            (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid,
                                            NGHTTP2_PROTOCOL_ERROR);
            return;
        }
        ds->kind = DS_CONTROL;
        c->ctl = ds;
        nghttp2_nv nv[] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"content-type", (uint8_t *)TUNNEL_CONTROL_TYPE, 12,
             sizeof(TUNNEL_CONTROL_TYPE) - 1, NGHTTP2_NV_FLAG_NONE},
        };
        nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = ctl_read_cb};
        if (nghttp2_submit_response(c->h2, ds->br.sid, nv, JG_ARRAY_LEN(nv), &prd) != 0)
            conn_fail(c, "cannot answer the control stream");
        return;
    }
    if (strcmp(ds->method, "CONNECT") == 0) {
        /* I2: only a target this agent registered, on a welcomed tunnel. */
        struct app_entry *a =
            (c->ph == PH_READY && !ds->hdr_long) ? find_app_local(c->t, ds->authority) : NULL;
        if (!a) {
            respond_status(ds, "404");
            return;
        }
        ds->kind = DS_CONNECT;
        memcpy(ds->sock, a->sock, sizeof(ds->sock));
        ds->port = a->port;
        if (ds_connect(ds) < 0)
            respond_status(ds, "502");
        return;
    }
    ds->kind = DS_REJECTED;
    (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid, NGHTTP2_PROTOCOL_ERROR);
}

static void ctl_input(struct tconn *c, const uint8_t *data, size_t len);

static void on_peer_eof(struct tconn *c, struct dstream *ds)
{
    if (ds->kind == DS_CONTROL) {
        if (!c->closing)
            conn_fail(c, "the gateway ended the control stream");
        return;
    }
    if (ds->kind == DS_CONNECT) {
        ds->peer_eof = 1;
        maybe_shut_wr(ds);
    }
}

static int cb_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct tconn *c = ud;
    struct dstream *ds;

    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        ds = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (!ds)
            break;
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST)
            on_request(c, ds);
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM)
            on_peer_eof(c, ds);
        break;
    case NGHTTP2_DATA:
        if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            break;
        ds = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (ds)
            on_peer_eof(c, ds);
        break;
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK) {
            c->ping_out = 0;
            evtimer_del(c->ping_deadline);
        }
        break;
    case NGHTTP2_GOAWAY:
        if (!c->closing) {
            char dbg[128];
            char tmp[129];
            size_t n = f->goaway.opaque_data_len < 128 ? f->goaway.opaque_data_len : 128;
            memcpy(tmp, f->goaway.opaque_data, n);
            tmp[n] = '\0';
            printable(dbg, sizeof(dbg), tmp, 120);
            conn_fail(c, "the gateway closed the tunnel (GOAWAY %s%s%s)",
                      nghttp2_http2_strerror(f->goaway.error_code), dbg[0] ? ": " : "", dbg);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int cb_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud)
{
    struct tconn *c = ud;
    (void)flags;
    struct dstream *ds = nghttp2_session_get_stream_user_data(s, sid);
    if (ds && ds->kind == DS_CONNECT && ds->br.bev && !ds->shut_wr) {
        if (tunnel_bridge_data(&ds->br, data, len) == 0)
            return 0;
        ds_drop_app(ds);
        (void)nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, sid, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    (void)nghttp2_session_consume(s, sid, len);
    if (ds && ds->kind == DS_CONTROL)
        ctl_input(c, data, len);
    return 0;
}

static int cb_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    /* A complete 404/502 before the gateway finished its side: ask it to
     * stop sending (RFC 9113 8.1). */
    if (f->hd.type != NGHTTP2_HEADERS || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct dstream *ds = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (ds && ds->kind == DS_REJECTED && nghttp2_session_get_stream_remote_close(s, ds->br.sid) == 0)
        (void)nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, ds->br.sid, NGHTTP2_NO_ERROR);
    return 0;
}

static int cb_stream_close(nghttp2_session *s, int32_t sid, uint32_t error_code, void *ud)
{
    struct tconn *c = ud;
    struct dstream *ds = nghttp2_session_get_stream_user_data(s, sid);
    if (!ds)
        return 0;
    ds->br.sid = 0;
    if (ds->kind == DS_CONTROL) {
        if (!c->closing)
            conn_fail(c, "the gateway closed the control stream");
        ds_free(ds);
        return 0;
    }
    if (ds->kind == DS_CONNECT && ds->br.bev && error_code == NGHTTP2_NO_ERROR &&
        evbuffer_get_length(bufferevent_get_output(ds->br.bev)) > 0 && c->nlinger < MAX_LINGER) {
        /* What the gateway sent is not all written yet: finish, bounded. */
        ds->lingering = 1;
        c->nlinger++;
        struct timeval tv = ms_tv(LINGER_MS);
        bufferevent_set_timeouts(ds->br.bev, NULL, &tv);
        return 0;
    }
    ds_free(ds);
    return 0;
}

static ssize_t ctl_read_cb(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len,
                           uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct tconn *c = ud;
    (void)s;
    (void)sid;
    (void)flags;
    (void)src;
    int n = evbuffer_remove(c->ctl_out, buf, len);
    if (n <= 0) {
        c->ctl_deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return n;
}

/* ---- the control stream ------------------------------------------------------------ */

static int nonce_ok(const char *n)
{
    if (!n || strlen(n) != NONCE_LEN)
        return 0;
    for (const char *p = n; *p; p++)
        if (!host_char_ok(*p) || *p == '.')
            return 0;
    return 1;
}

/* The auth object of the hello; NULL after conn_fail. */
static json_t *make_auth(struct tconn *c, const char *nonce)
{
    struct agent_tunnel *t = c->t;
    char err[ERRLEN];

    if (t->via_ssh)
        return json_pack("{s:s}", "method", "peercred");
    if (c->pinned) {
        char tok[TUNNEL_TOKEN_MAX + 1];
        if (read_token(t, tok, err, sizeof(err)) < 0) {
            conn_fail_rc(c, -EACCES, "cannot read your personal gateway's agent token: %s", err);
            return NULL;
        }
        json_t *a = json_pack("{s:s,s:s}", "method", "token", "token", tok);
        OPENSSL_cleanse(tok, sizeof(tok));
        return a;
    }
#ifdef JG_HAVE_MUNGE
    char payload[64];
    char *cred = NULL;
    (void)xsnprintf(payload, sizeof(payload), "jobgate/1 hello %s", nonce);
    int rc = munge_cred_encode(t->munge_socket, payload, strlen(payload), 0, (uid_t)-1, &cred,
                               err, sizeof(err));
    if (rc < 0) {
        conn_fail_rc(c, -EACCES,
                     "cannot prove who you are to the gateway at %s: %s; it needs MUNGE (munged "
                     "running on this node) or, for your personal gateway, its certificate in "
                     "%s/tls.crt",
                     t->where, err, t->state_dir ? t->state_dir : "~/.local/state/jobgate");
        return NULL;
    }
    json_t *a = json_pack("{s:s,s:s}", "method", "munge", "credential", cred);
    OPENSSL_cleanse(cred, strlen(cred));
    free(cred);
    return a;
#else
    (void)nonce;
    (void)err;
    conn_fail_rc(c, -EACCES,
                 "cannot prove who you are to the gateway at %s: this jobgate was built without "
                 "MUNGE, and the gateway is not your personal gateway (its certificate is not "
                 "%s/tls.crt); use MUNGE or a personal gateway",
                 t->where, t->state_dir ? t->state_dir : "~/.local/state/jobgate");
    return NULL;
#endif
}

static void on_challenge(struct tconn *c, json_t *m)
{
    struct agent_tunnel *t = c->t;
    json_t *v = json_object_get(m, "version");
    const char *nonce = json_string_value(json_object_get(m, "nonce"));
    if (!json_is_integer(v) || json_integer_value(v) != 1) {
        protocol_error(c, "unsupported tunnel protocol version in the challenge");
        return;
    }
    if (!nonce_ok(nonce)) {
        protocol_error(c, "the challenge's nonce is not 43 base64url characters");
        return;
    }
    json_t *auth = make_auth(c, nonce);
    if (!auth)
        return;
    json_t *hello = json_pack("{s:s,s:i,s:s,s:s}", "type", "hello", "version", 1, "agent",
                              "jobgate/" JG_VERSION, "node", t->node);
    if (hello && t->job)
        (void)json_object_set_new(hello, "job", json_string(t->job));
    if (!hello || json_object_set_new(hello, "auth", auth) < 0) {
        json_decref(hello);
        conn_fail(c, "cannot build the hello");
        return;
    }
    if (ctl_send(c, hello, 1) == 0)
        c->ph = PH_WELCOME;
}

static void on_welcome(struct tconn *c, json_t *m)
{
    struct agent_tunnel *t = c->t;
    json_t *uid = json_object_get(m, "uid");
    if (!json_is_integer(uid) || json_integer_value(uid) < 0) {
        protocol_error(c, "the welcome has no uid");
        return;
    }
    c->ph = PH_READY;
    c->ready_at = now_mono_ms();
    evtimer_del(c->phase_timer);
    /* The backoff is reset only by a connection that lasted (conn_teardown):
     * a gateway that welcomes and then drops every tunnel must not be
     * redialled a few times a second for ever. */
    int again = t->ever_welcomed;
    t->ever_welcomed = 1;
    if (t->opening) {
        t->opening = 0;
        waiter_done(t, &t->open_w, 0, NULL, NULL);
    }
    struct app_entry *a = t->apps, *next;
    for (; a; a = next) {
        next = a->next;
        if (a->abandoned && !a->alias) {
            app_remove(t, a);
            continue;
        }
        a->rereg = a->alias != NULL;
        if (a->rereg)
            c->rereg_pending++;
        send_register(c, a);
    }
    c->announce_reconnected = again;
    if (again && c->rereg_pending == 0) {
        struct agent_tunnel_event ev = {.event = "reconnected",
                                        .message = "reconnected to the gateway"};
        c->announce_reconnected = 0;
        tell(t, &ev);
    }
}

static void rereg_answered(struct tconn *c, struct app_entry *a)
{
    if (!a->rereg)
        return;
    a->rereg = 0;
    if (c->rereg_pending > 0 && --c->rereg_pending == 0 && c->announce_reconnected) {
        struct agent_tunnel_event ev = {.event = "reconnected",
                                        .message = "reconnected to the gateway"};
        c->announce_reconnected = 0;
        tell(c->t, &ev);
    }
}

static int reply_str_ok(json_t *m, const char *key, size_t max)
{
    const char *s = json_string_value(json_object_get(m, key));
    return s && *s && strlen(s) <= max;
}

static void on_registered(struct tconn *c, struct app_entry *a, json_t *m)
{
    struct agent_tunnel *t = c->t;
    if (!reply_str_ok(m, "alias", 255) || !reply_str_ok(m, "url", 2048) ||
        !reply_str_ok(m, "link", 4096)) {
        protocol_error(c, "a registered answer without alias, url or link");
        return;
    }
    const char *alias = json_string_value(json_object_get(m, "alias"));
    a->id[0] = '\0';
    if (a->timer)
        evtimer_del(a->timer);
    if (a->abandoned) {
        /* The caller gave up waiting; take the route back. */
        send_unregister(c, alias);
        rereg_answered(c, a);
        app_remove(t, a);
        return;
    }
    int changed = !a->alias || strcmp(a->alias, alias) != 0;
    int first = a->w != NULL;
    if (changed) {
        free(a->alias);
        a->alias = xstrdup(alias);
    }
    if (first) {
        struct waiter *w = a->w;
        a->w = NULL;
        waiter_done(t, w, 0, json_deep_copy(m), NULL);
    } else if (changed) {
        struct agent_tunnel_event ev = {.event = "ready", .reply = m,
                                        .message = "the app is registered anew"};
        tell(t, &ev);
    }
    a->fresh = 0;
    rereg_answered(c, a);
}

static void on_request_error(struct tconn *c, struct app_entry *a, json_t *m)
{
    struct agent_tunnel *t = c->t;
    char msg[300], code[40];
    printable(msg, sizeof(msg), json_string_value(json_object_get(m, "error")), 256);
    printable(code, sizeof(code), json_string_value(json_object_get(m, "code")), 32);
    if (!msg[0])
        (void)xsnprintf(msg, sizeof(msg), "the gateway refused (%s)", code[0] ? code : "no reason");
    a->id[0] = '\0';
    if (a->w) {
        struct waiter *w = a->w;
        a->w = NULL;
        waiter_done(t, w, -EREMOTEIO, NULL, "%s", msg);
        app_remove(t, a);
        return;
    }
    if (a->alias && !a->abandoned) {
        char palias[256];
        printable(palias, sizeof(palias), a->alias, 255);
        notice(t, "the gateway did not take %s back (%s); registering %s anew", palias, msg,
               a->name);
        free(a->alias);
        a->alias = NULL;
        a->fresh = 1;
        send_register(c, a);
        return;
    }
    if (!a->abandoned)
        notice(t, "the gateway refused to register %s again (%s); it is not reachable any more",
               a->name, msg);
    rereg_answered(c, a);
    app_remove(t, a);
}

static void ctl_message(struct tconn *c, const char *line, size_t len)
{
    struct agent_tunnel *t = c->t;
    if (len == 0 || (len == 1 && line[0] == '\r'))
        return;
    json_t *m;
    char why[200];
    if (tunnel_msg_decode(line, len, &m, why, sizeof(why)) < 0) {
        protocol_error(c, "malformed control message (%s)", why);
        return;
    }
    const char *type = json_string_value(json_object_get(m, "type"));
    char ptype[40];
    printable(ptype, sizeof(ptype), type, 32);
    if (!type) {
        protocol_error(c, "a control message without a type");
    } else if (c->ph == PH_CONTROL) {
        if (strcmp(type, "challenge") == 0)
            on_challenge(c, m);
        else
            protocol_error(c, "expected a challenge, got '%s'", ptype);
    } else if (c->ph == PH_WELCOME) {
        if (strcmp(type, "welcome") == 0) {
            on_welcome(c, m);
        } else if (strcmp(type, "error") == 0) {
            char msg[300], code[40];
            printable(msg, sizeof(msg), json_string_value(json_object_get(m, "error")), 256);
            printable(code, sizeof(code), json_string_value(json_object_get(m, "code")), 32);
            conn_fail_rc(c, -EACCES, "the gateway at %s refused this agent: %s%s%s%s", t->where,
                         msg[0] ? msg : "no reason given", code[0] ? " (" : "", code,
                         code[0] ? ")" : "");
        } else {
            protocol_error(c, "expected a welcome, got '%s'", ptype);
        }
    } else {
        const char *id = json_string_value(json_object_get(m, "id"));
        int answer = strcmp(type, "registered") == 0 || strcmp(type, "error") == 0 ||
                     strcmp(type, "link") == 0;
        struct app_entry *a = id ? find_app_id(t, id) : NULL;
        if (answer && id && !a) {
            protocol_error(c, "an answer to no request of ours ('%s')", ptype);
        } else if (strcmp(type, "registered") == 0 && a) {
            on_registered(c, a, m);
        } else if (strcmp(type, "error") == 0 && a) {
            on_request_error(c, a, m);
        } else if (strcmp(type, "error") == 0) {
            char msg[300];
            printable(msg, sizeof(msg), json_string_value(json_object_get(m, "error")), 256);
            notice(t, "the gateway says: %s", msg[0] ? msg : "(an error without a message)");
        } else if (answer) {
            protocol_error(c, "a '%s' answer to a request that was not a register", ptype);
        }
        /* Other types: from a newer gateway; ignored. */
    }
    json_decref(m);
}

static void ctl_input(struct tconn *c, const uint8_t *data, size_t len)
{
    while (len > 0 && !c->dead && !c->closing) {
        const char *line;
        size_t n;
        int r = tunnel_lines_next(&c->lines, &data, &len, &line, &n);
        if (r < 0) {
            protocol_error(c, "a control message longer than %d bytes", TUNNEL_CTL_LINE_MAX);
            return;
        }
        if (r == 0)
            return;
        ctl_message(c, line, n);
    }
}

/* ---- the connection ------------------------------------------------------------------ */

static void conn_read_cb(struct bufferevent *b, void *arg)
{
    struct tconn *c = arg;
    int rv = c->h2 ? tunnel_bridge_pump_in(c->h2, bufferevent_get_input(b), &c->dead) : 0;
    if (rv < 0) {
        if (c->closing)
            conn_fail(c, "%s", c->reason);
        else
            conn_fail_rc(c, -EPROTO, "HTTP/2 error from the gateway at %s: %s", c->t->where,
                         nghttp2_strerror(rv));
    }
    conn_pump(c);
}

static void conn_write_cb(struct bufferevent *b, void *arg)
{
    (void)b;
    conn_pump(arg);
}

static void ping_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    /* Reap an ssh that has handed over its pipes and exited meanwhile. */
    if (c->ssh_pid > 0 && waitpid(c->ssh_pid, NULL, WNOHANG) == c->ssh_pid)
        c->ssh_pid = 0;
    if (!c->ping_out && !c->closing) {
        static const uint8_t opaque[8] = {'j', 'o', 'b', 'g', 'a', 't', 'e', '1'};
        if (nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, opaque) == 0) {
            c->ping_out = 1;
            struct timeval tv = ms_tv(c->t->ping_timeout_ms);
            evtimer_add(c->ping_deadline, &tv);
        }
    }
    conn_pump(c);
}

static void ping_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    conn_fail_rc(c, -ETIMEDOUT, "no answer to PING from the gateway within %" PRId64 " s",
                 c->t->ping_timeout_ms / 1000);
    conn_pump(c);
}

static void phase_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    const char *what_s = c->ph == PH_TLS       ? "finish the TLS handshake"
                         : c->ph == PH_CONTROL ? "send its challenge"
                                               : "answer the hello";
    conn_fail_rc(c, -ETIMEDOUT, "the gateway at %s did not %s within %d s", c->t->where, what_s,
                 TUNNEL_OPEN_TIMEOUT_MS / 1000);
    conn_pump(c);
}

static void close_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct tconn *c = arg;
    (void)fd;
    (void)what;
    conn_fail(c, "%s", c->reason[0] ? c->reason : "closed");
    conn_pump(c);
}

/* HTTP/2 as the server: our SETTINGS at once, then wait for the gateway. */
static int conn_start_h2(struct tconn *c)
{
    static const struct tunnel_session_cbs cbs = {
        .begin_headers = cb_begin_headers,
        .header = cb_header,
        .frame_recv = cb_frame_recv,
        .data_chunk = cb_data_chunk,
        .frame_send = cb_frame_send,
        .stream_close = cb_stream_close,
    };
    if (tunnel_session_new(&c->h2, TUNNEL_ROLE_AGENT, &cbs, c) < 0)
        return -1;
    c->ph = PH_CONTROL;
    struct timeval tv = ms_tv(c->t->ping_interval_ms);
    event_add(c->ping_timer, &tv);
    return 0;
}

static void tls_ready(struct tconn *c)
{
    struct agent_tunnel *t = c->t;
    SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alen);
    if (alen != sizeof(TUNNEL_ALPN) - 1 || memcmp(alpn, TUNNEL_ALPN, alen) != 0) {
        conn_fail_rc(c, -EPROTO,
                     "the server at %s does not speak the jobgate tunnel protocol (it did not "
                     "select ALPN %s); is it a jobgated gateway that takes tunnels?",
                     t->where, TUNNEL_ALPN);
        return;
    }
    X509 *peer = SSL_get0_peer_certificate(ssl);
    c->pinned = c->pin && peer && cert_equals(peer, c->pin, c->pinlen);
    if (conn_start_h2(c) < 0)
        conn_fail(c, "cannot start HTTP/2");
}

/* ", ssh exited with status N" when the ssh child is gone (waiting briefly:
 * its end of the socket closes just before it exits); reaps it. */
static void ssh_status(struct tconn *c, char *buf, size_t len)
{
    if (c->ssh_pid <= 0)
        return;
    for (int i = 0; i < 20; i++) {
        int st;
        pid_t r = waitpid(c->ssh_pid, &st, WNOHANG);
        if (r == c->ssh_pid) {
            c->ssh_pid = 0;
            if (WIFEXITED(st))
                (void)xsnprintf(buf, len, ", ssh exited with status %d", WEXITSTATUS(st));
            else if (WIFSIGNALED(st))
                (void)xsnprintf(buf, len, ", ssh was killed by signal %d", WTERMSIG(st));
            return;
        }
        if (r < 0)
            return;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000000L};
        (void)nanosleep(&ts, NULL);
    }
}

static void conn_event_cb(struct bufferevent *b, short what, void *arg)
{
    struct tconn *c = arg;
    struct agent_tunnel *t = c->t;

    if (what & BEV_EVENT_CONNECTED) {
        if (c->tls && c->ph == PH_TLS)
            tls_ready(c);
        conn_pump(c);
        return;
    }
    if (c->closing) {
        conn_fail(c, "%s", c->reason[0] ? c->reason : "closed");
    } else if (c->ph == PH_TLS) {
        SSL *ssl = bufferevent_openssl_get_ssl(b);
        long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        unsigned long e = bufferevent_get_openssl_error(b);
        char es[256] = "";
        if (e)
            ERR_error_string_n(e, es, sizeof(es));
        while (bufferevent_get_openssl_error(b))
            ;
        if (vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH)
            conn_fail_rc(c, -EPERM,
                         "the certificate of the gateway at %s is not trusted: %s (it was not "
                         "issued for %s; use the name it was issued for)",
                         t->where, X509_verify_cert_error_string(vr), t->host);
        else if (vr != X509_V_OK)
            conn_fail_rc(c, -EPERM,
                         "the certificate of the gateway at %s is not trusted: %s (give its CA "
                         "with --ca FILE or JOBGATE_CA)",
                         t->where, X509_verify_cert_error_string(vr));
        else if (what & BEV_EVENT_EOF)
            conn_fail_rc(c, -ECONNRESET, "%s closed the connection during the TLS handshake",
                         t->where);
        else
            conn_fail_rc(c, -EPROTO, "TLS handshake with %s failed: %s", t->where,
                         es[0] ? es : strerror(EVUTIL_SOCKET_ERROR()));
    } else if (t->via_ssh && c->ph != PH_READY) {
        /* ssh failed (a closed pipe may also show as a reset): say how it ended. */
        char how[64] = "";
        ssh_status(c, how, sizeof(how));
        conn_fail_rc(c, -ECONNRESET,
                     "the connection through ssh to %s ended before the gateway welcomed this "
                     "agent%s (see ssh's messages above)",
                     t->host, how);
    } else if (what & BEV_EVENT_EOF) {
        conn_fail_rc(c, -ECONNRESET, "the gateway closed the connection");
    } else {
        unsigned long e = c->tls ? bufferevent_get_openssl_error(b) : 0;
        char es[256] = "";
        if (e)
            ERR_error_string_n(e, es, sizeof(es));
        conn_fail(c, "connection to the gateway failed: %s",
                  es[0] ? es : strerror(EVUTIL_SOCKET_ERROR()));
    }
    conn_pump(c);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg);

/* One connection attempt. Dialing blocks this thread (bounded by
 * TUNNEL_OPEN_TIMEOUT_MS); nothing else needs it while there is no
 * connection, and commands wait in the queue. */
static void conn_attempt(struct agent_tunnel *t)
{
    char err[ERRLEN];
    struct tconn *c = xcalloc(1, sizeof(*c));
    c->t = t;
    t->conn = c;
    c->phase_timer = evtimer_new(t->base, phase_timer_cb, c);
    c->ping_timer = event_new(t->base, -1, EV_PERSIST, ping_cb, c);
    c->ping_deadline = evtimer_new(t->base, ping_deadline_cb, c);
    c->close_timer = evtimer_new(t->base, close_timer_cb, c);
    c->ctl_out = evbuffer_new();
    if (!c->phase_timer || !c->ping_timer || !c->ping_deadline ||
        !c->close_timer || !c->ctl_out) {
        conn_fail(c, "out of memory");
        conn_pump(c);
        return;
    }
    reap_children(t, 0);

    int fd;
    if (t->via_ssh) {
        fd = ssh_spawn(t, &c->ssh_pid, err, sizeof(err));
    } else {
        c->pin = load_pin(t, &c->pinlen);
        if (t->have_proxy)
            fd = proxy_connect(&t->proxy, t->host, t->port, TUNNEL_OPEN_TIMEOUT_MS, err,
                               sizeof(err));
        else
            fd = tcp_connect_timeout(t->host, t->port, TUNNEL_OPEN_TIMEOUT_MS, err, sizeof(err));
    }
    if (fd < 0) {
        conn_fail_rc(c, fd, "cannot reach the gateway at %s: %s", t->where, err);
        conn_pump(c);
        return;
    }
    (void)evutil_make_socket_nonblocking(fd);
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);

    if (t->via_ssh) {
        c->bev = bufferevent_socket_new(t->base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (!c->bev)
            close(fd);
    } else {
        SSL *ssl = SSL_new(t->ssl_ctx);
        if (ssl) {
            SSL_set_app_data(ssl, c);
            if (!t->host_is_ip)
                (void)SSL_set_tlsext_host_name(ssl, t->host);
            (void)SSL_set1_host(ssl, t->host);
            c->bev = bufferevent_openssl_socket_new(t->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING,
                                                    BEV_OPT_CLOSE_ON_FREE);
            if (c->bev)
                bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
        }
        if (!c->bev) {
            /* On failure libevent has freed ssl; the fd is still ours. */
            close(fd);
        }
        c->tls = 1;
    }
    if (!c->bev) {
        conn_fail(c, "cannot set up the connection: %s", ssl_errstr());
        conn_pump(c);
        return;
    }
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOW, 0);
    (void)bufferevent_set_max_single_read(c->bev, IO_CHUNK);
    (void)bufferevent_set_max_single_write(c->bev, IO_CHUNK);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    struct timeval tv = ms_tv(TUNNEL_OPEN_TIMEOUT_MS);
    evtimer_add(c->phase_timer, &tv);
    if (!c->tls && conn_start_h2(c) < 0)
        conn_fail(c, "cannot start HTTP/2");
    conn_pump(c);
}

/* Flushes; in a graceful close, sends GOAWAY once the control messages are
 * out and half-closes once everything is; tears down a dead connection.
 * The last thing every entry point does with c. */
static void conn_pump(struct tconn *c)
{
    if (!c->dead && c->h2) {
        conn_flush(c);
        if (!c->dead && c->closing && !c->goaway_sent && evbuffer_get_length(c->ctl_out) == 0) {
            (void)nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE,
                                        nghttp2_session_get_last_proc_stream_id(c->h2),
                                        NGHTTP2_NO_ERROR, NULL, 0);
            c->goaway_sent = 1;
            conn_flush(c);
        }
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (!c->dead && c->closing && c->goaway_sent && !c->shut &&
            !nghttp2_session_want_write(c->h2) && evbuffer_get_length(out) == 0) {
            /* Everything is written: close_notify and FIN, then wait for the
             * gateway's EOF (close_timer bounds it), so that unread input
             * does not turn our close into a reset that loses the tail. */
            if (c->tls) {
                SSL *ssl = bufferevent_openssl_get_ssl(c->bev);
                if (ssl)
                    (void)SSL_shutdown(ssl);
                ERR_clear_error();
            }
            (void)shutdown(bufferevent_getfd(c->bev), SHUT_WR);
            c->shut = 1;
        }
        if (!c->dead && !c->closing && !nghttp2_session_want_read(c->h2) &&
            !nghttp2_session_want_write(c->h2))
            conn_fail(c, "the HTTP/2 session with the gateway ended");
    }
    if (c->dead)
        conn_teardown(c);
}

static void conn_teardown(struct tconn *c)
{
    struct agent_tunnel *t = c->t;
    int was_ready = c->ph == PH_READY;
    if (was_ready && now_mono_ms() - c->ready_at >= STABLE_MS)
        t->attempt = 0;
    int rc = c->rc ? c->rc : -EIO;
    char reason[ERRLEN];
    memcpy(reason, c->reason, sizeof(reason));
    if (!reason[0])
        memcpy(reason, "connection closed", sizeof("connection closed"));

    while (c->streams)
        ds_free(c->streams);
    if (c->h2)
        nghttp2_session_del(c->h2);
    if (c->bev)
        bufferevent_free(c->bev);
    if (c->ssh_pid > 0)
        reap_later(t, c->ssh_pid);
    if (c->phase_timer)
        event_free(c->phase_timer);
    if (c->ping_timer)
        event_free(c->ping_timer);
    if (c->ping_deadline)
        event_free(c->ping_deadline);
    if (c->close_timer)
        event_free(c->close_timer);
    if (c->ctl_out)
        evbuffer_free(c->ctl_out);
    tunnel_lines_free(&c->lines);
    OPENSSL_free(c->pin);
    free(c);
    t->conn = NULL;
    /* Requests in flight died with the connection; a welcome sends them again. */
    for (struct app_entry *a = t->apps; a; a = a->next) {
        a->id[0] = '\0';
        a->rereg = 0;
    }

    if (t->stopping) {
        event_base_loopbreak(t->base);
        return;
    }
    if (t->opening) {
        waiter_done(t, &t->open_w, rc, NULL, "%s", reason);
        t->stopping = 1;
        event_base_loopbreak(t->base);
        return;
    }
    int64_t delay = backoff_ms(t);
    char msg[ERRLEN + 128];
    if (was_ready)
        (void)xsnprintf(msg, sizeof(msg),
                        "lost the connection to the gateway (%s); reconnecting in %.1f s", reason,
                        (double)delay / 1000.0);
    else
        (void)xsnprintf(msg, sizeof(msg), "cannot reconnect to the gateway: %s; next attempt in "
                        "%.1f s", reason, (double)delay / 1000.0);
    struct agent_tunnel_event ev = {.event = "reconnecting", .message = msg,
                                    .retry_in = (double)delay / 1000.0, .attempt = t->attempt};
    ev.reason = reason;
    tell(t, &ev);
    struct timeval tv = ms_tv(delay);
    evtimer_add(t->retry_ev, &tv);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct agent_tunnel *t = arg;
    (void)fd;
    (void)what;
    if (!t->stopping && !t->conn)
        conn_attempt(t);
}

/* ---- commands from the caller's thread ------------------------------------------- */

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
    waiter_done(t, w, -ETIMEDOUT, NULL,
                "the gateway did not answer the registration of %s within %d s", a->name,
                TUNNEL_REGISTER_TIMEOUT_MS / 1000);
    /* If the answer still comes, the route is taken back (on_registered). */
    a->abandoned = 1;
    if (!a->id[0])
        app_remove(t, a);
}

static void start_close(struct agent_tunnel *t)
{
    t->stopping = 1;
    evtimer_del(t->retry_ev);
    struct tconn *c = t->conn;
    int up = c && c->ph == PH_READY && !c->dead && !c->closing;
    for (struct app_entry *a = t->apps; a; a = a->next) {
        if (a->w) {
            struct waiter *w = a->w;
            a->w = NULL;
            waiter_done(t, w, -ECANCELED, NULL, "the tunnel is closing");
        }
        if (a->alias && !up) {
            char palias[256];
            printable(palias, sizeof(palias), a->alias, 255);
            notice(t, "could not remove %s from the gateway (the tunnel is down); the gateway "
                   "drops it after its grace period", palias);
        }
    }
    if (!c) {
        event_base_loopbreak(t->base);
        return;
    }
    if (!up) {
        conn_fail(c, "closed");
        conn_pump(c);
        return;
    }
    /* The app has ended: its browser connections end too. */
    for (struct dstream *ds = c->streams; ds; ds = ds->next)
        if (ds->kind == DS_CONNECT && ds->br.sid)
            (void)nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, ds->br.sid, NGHTTP2_CANCEL);
    for (struct app_entry *a = t->apps; a; a = a->next)
        if (a->alias)
            send_unregister(c, a->alias);
    c->closing = 1;
    memcpy(c->reason, "closed", sizeof("closed"));
    struct timeval tv = ms_tv(TUNNEL_CLOSE_TIMEOUT_MS);
    evtimer_add(c->close_timer, &tv);
    conn_pump(c);
}

/* Makes local unique among our apps (two apps of one name on one tunnel). */
static void pick_local(struct agent_tunnel *t, struct app_entry *a)
{
    memcpy(a->local, a->name, strlen(a->name) + 1);
    for (unsigned i = 2; find_app_local(t, a->local) && i < 100000; i++)
        (void)xsnprintf(a->local, sizeof(a->local), "%s-%u", a->name, i);
}

static void do_register(struct agent_tunnel *t, struct app_entry *a, struct waiter *w)
{
    if (t->stopping) {
        waiter_done(t, w, -ECANCELED, NULL, "the tunnel is closing");
        app_free(a);
        return;
    }
    a->t = t;
    a->w = w;
    pick_local(t, a);
    a->timer = evtimer_new(t->base, register_timeout_cb, a);
    if (!a->timer) {
        waiter_done(t, w, -ENOMEM, NULL, "out of memory");
        app_free(a);
        return;
    }
    a->next = t->apps;
    t->apps = a;
    struct timeval tv = ms_tv(TUNNEL_REGISTER_TIMEOUT_MS);
    evtimer_add(a->timer, &tv);
    struct tconn *c = t->conn;
    if (c && c->ph == PH_READY && !c->dead && !c->closing)
        send_register(c, a);
}

static void cmd_cb(evutil_socket_t fd, short what, void *arg)
{
    struct agent_tunnel *t = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&t->mu);
    struct cmd *list = t->cmds;
    t->cmds = NULL;
    t->cmds_tail = &t->cmds;
    pthread_mutex_unlock(&t->mu);

    while (list) {
        struct cmd *cm = list;
        list = cm->next;
        if (cm->type == CMD_REGISTER)
            do_register(t, cm->app, cm->w);
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
    *t->cmds_tail = cm;
    t->cmds_tail = &cm->next;
    pthread_mutex_unlock(&t->mu);
    event_active(t->cmd_ev, EV_READ, 0);
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
        waiter_done(t, &t->open_w, -ECANCELED, NULL, "the tunnel was closed");
    }
    /* libevent finishes freeing a bufferevent (its TLS state included) from
     * the loop, after the callbacks in flight: give a connection torn down
     * in the last turn, or just above, that turn (LeakSanitizer saw the
     * leftovers when the open failed after the handshake). */
    (void)event_base_loop(t->base, EVLOOP_NONBLOCK);
    /* Commands that came too late. */
    pthread_mutex_lock(&t->mu);
    struct cmd *list = t->cmds;
    t->cmds = NULL;
    t->cmds_tail = &t->cmds;
    pthread_mutex_unlock(&t->mu);
    while (list) {
        struct cmd *cm = list;
        list = cm->next;
        if (cm->type == CMD_REGISTER) {
            waiter_done(t, cm->w, -ECANCELED, NULL, "the tunnel is closed");
            app_free(cm->app);
        }
        free(cm);
    }
    for (struct app_entry *a = t->apps; a; a = a->next) {
        if (a->w) {
            struct waiter *w = a->w;
            a->w = NULL;
            waiter_done(t, w, -ECANCELED, NULL, "the tunnel is closed");
        }
    }
    reap_children(t, 1);
    return NULL;
}

/* ---- the caller's side ------------------------------------------------------------- */

static void tunnel_free(struct agent_tunnel *t)
{
    while (t->apps) {
        struct app_entry *a = t->apps;
        t->apps = a->next;
        app_free(a);
    }
    if (t->cmd_ev)
        event_free(t->cmd_ev);
    if (t->retry_ev)
        event_free(t->retry_ev);
    if (t->base)
        event_base_free(t->base);
    if (t->ssl_ctx)
        SSL_CTX_free(t->ssl_ctx);
    json_decref(t->open_w.reply);
    free(t->state_dir);
    free(t->munge_socket);
    free(t->job);
    free(t->ssh_path);
    free_strv(t->ssh_argv);
    free_strv(t->envp);
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
    t->ping_interval_ms = o->ping_interval_ms > 0 ? o->ping_interval_ms : TUNNEL_PING_INTERVAL_MS;
    t->ping_timeout_ms = o->ping_timeout_ms > 0 ? o->ping_timeout_ms : TUNNEL_PING_TIMEOUT_MS;
    t->on_event = o->on_event;
    t->event_arg = o->event_arg;

    int rc;
    if (o->via) {
        t->via_ssh = 1;
        rc = agent_tunnel_parse_via(o->via, t->host, sizeof(t->host), err, errlen);
        if (rc == 0) {
            (void)xsnprintf(t->where, sizeof(t->where), "ssh:%s", t->host);
            rc = ssh_prepare(t, err, errlen);
        }
        if (rc == 0)
            snapshot_env(t);
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
        if (rc == 0) {
            char *ca_env = env_dup("JOBGATE_CA");
            const char *ca_file = o->ca_file ? o->ca_file : ca_env;
            t->ssl_ctx = make_ssl_ctx(ca_file, err, errlen);
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
    t->job = env_dup("SLURM_JOB_ID");
    if (t->job && strlen(t->job) > 64) {
        free(t->job);
        t->job = NULL;
    }

    /* event_active() from the caller's thread needs libevent's locking. */
    if (evthread_use_pthreads() < 0 || !(t->base = event_base_new()) ||
        !(t->cmd_ev = event_new(t->base, -1, 0, cmd_cb, t)) ||
        !(t->retry_ev = evtimer_new(t->base, retry_cb, t))) {
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

int agent_tunnel_register(struct agent_tunnel *t, const char *name, const char *sock,
                          unsigned port, int64_t ttl, json_t **reply, char *err, size_t errlen)
{
    *reply = NULL;
    size_t nlen = name ? strlen(name) : 0;
    if (nlen == 0 || nlen > APP_NAME_MAX)
        return errmsg(err, errlen, -EINVAL, "bad app name");
    for (const char *p = name; *p; p++)
        if (!host_char_ok(*p))
            return errmsg(err, errlen, -EINVAL, "bad app name '%s'", name);
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
    a->ttl = ttl;

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
