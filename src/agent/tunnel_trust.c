/* tunnel_trust — who the gateway is and how the agent proves who it is: the
 * TLS context (ALPN, CA file or system store, the pinned certificate of a
 * personal gateway through the verify callback), the personal token file,
 * a --jobgate job's certificate and key ($JOBGATE_DIR), and the hello's
 * auth object (peercred, jobcert, token or MUNGE).
 *
 * trust_ssl_ctx_new runs on the caller's thread inside agent_tunnel_open;
 * everything else on the tunnel's thread. Secrets read here are wiped after
 * use and never logged. */
#include "tunnel-int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "jobcert.h"
#include "tunnel_proto.h"
#include "util.h"
#ifdef JG_HAVE_MUNGE
#include "munge_cred.h"
#endif

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
unsigned char *trust_load_pin(const struct agent_tunnel *t, int *len)
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

int trust_cert_equals(X509 *x, const unsigned char *der, int len)
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

/* Reads all of fd (at most max bytes) into a new string; NULL if it is more. */
static char *read_all(int fd, size_t max)
{
    char *buf = xmalloc(max + 1);
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
        if (n > max) {
            free(buf);
            return NULL;
        }
    }
    buf[n] = '\0';
    return buf;
}

/* A certificate (cert_fd, read whole) and its key (key_fd) into t; both fds
 * are closed. 0, or -errno with err naming the paths. */
static int load_pair(struct agent_tunnel *t, int cert_fd, const char *cert_path, int key_fd,
                     const char *key_path, char *err, size_t errlen)
{
    t->job_cert = read_all(cert_fd, JOBCERT_PEM_MAX);
    close(cert_fd);
    X509 *x = t->job_cert ? jobcert_parse(t->job_cert, strlen(t->job_cert)) : NULL;
    if (!x) {
        close(key_fd);
        return errmsg(err, errlen, -EINVAL, "%s is not a certificate (PEM, at most %d bytes)",
                      cert_path, JOBCERT_PEM_MAX);
    }
    FILE *f = fdopen(key_fd, "r");
    if (!f)
        close(key_fd);
    t->job_key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    int ok = t->job_key && X509_check_private_key(x, t->job_key) == 1;
    X509_free(x);
    ERR_clear_error();
    if (!ok)
        return errmsg(err, errlen, -EINVAL, "%s is not the key of %s (or not a PEM key "
                      "without a passphrase)", key_path, cert_path);
    return 0;
}

int trust_job_load(struct agent_tunnel *t, char *ca, size_t calen, char *err, size_t errlen)
{
    const char *dir = getenv("JOBGATE_DIR"), *gw = getenv("JOBGATE_GATEWAY");
    char path[PATH_MAX], kpath[PATH_MAX], host[256], perr[64];
    unsigned port;
    struct stat st;
    ca[0] = '\0';
    if (!dir || !*dir)
        return 0;
    /* The job's key answers only its own gateway's challenges: another gateway could
     * relay one and act as the job. */
    if (!gw || agent_tunnel_parse_gateway(gw, host, sizeof(host), &port, perr, sizeof(perr)) < 0 ||
        strcmp(host, t->host) != 0 || port != t->port)
        return 0;
    int fd = open_own_file(dir, "job.crt", 022, JOBCERT_PEM_MAX, &st, path, sizeof(path), err,
                           errlen);
    if (fd == -ENOENT)
        return 0; /* no certificate for this job: MUNGE proves who we are */
    if (fd < 0)
        return fd;
    int kfd = open_own_file(dir, "job.key", 077, 65536, &st, kpath, sizeof(kpath), err, errlen);
    if (kfd < 0) {
        close(fd);
        return kfd;
    }
    int rc = load_pair(t, fd, path, kfd, kpath, err, errlen);
    if (rc < 0)
        return rc;
    if (xsnprintf(path, sizeof(path), "%s/gateway-ca.crt", dir) == 0 &&
        access(path, R_OK) == 0 && strlen(path) < calen)
        memcpy(ca, path, strlen(path) + 1);
    return 0;
}

int trust_user_cert_load(struct agent_tunnel *t, const char *cert, const char *key, char *err,
                         size_t errlen)
{
    struct stat st;
    int fd = open(cert, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return errmsg(err, errlen, -errno, "cannot open %s: %s", cert, strerror(errno));
    int kfd = open(key, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (kfd < 0) {
        int e = errno;
        close(fd);
        return errmsg(err, errlen, -e, "cannot open %s: %s", key, strerror(e));
    }
    /* As ssh does: a key that others may read is not trusted to be yours alone. */
    if (fstat(kfd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 077)) {
        close(fd);
        close(kfd);
        return errmsg(err, errlen, -EPERM, "%s must be a file of yours that no one else may "
                      "read (chmod 600)", key);
    }
    int rc = load_pair(t, fd, cert, kfd, key, err, errlen);
    if (rc == 0)
        t->user_cert = 1;
    return rc;
}

/* The verification: the pinned certificate (exact DER), else the chain and
 * host name (SSL_set1_host) against the CA file or the system store. */
static int verify_cb(X509_STORE_CTX *xs, void *arg)
{
    (void)arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct tconn *c = ssl ? SSL_get_app_data(ssl) : NULL;
    X509 *leaf = X509_STORE_CTX_get0_cert(xs);
    if (c && c->pin && leaf && trust_cert_equals(leaf, c->pin, c->pinlen))
        return 1;
    return X509_verify_cert(xs);
}

const char *trust_ssl_errstr(void)
{
    static __thread char buf[256];
    unsigned long e = ERR_get_error();
    if (!e)
        return "unknown error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

SSL_CTX *trust_ssl_ctx_new(const char *ca_file, char *err, size_t errlen)
{
    static const unsigned char alpn[] = "\x09" TUNNEL_ALPN;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        errmsg(err, errlen, -ENOMEM, "cannot make a TLS context: %s", trust_ssl_errstr());
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Returns 0 on success, unlike the rest of OpenSSL. */
    if (SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1) != 0) {
        errmsg(err, errlen, -ENOMEM, "cannot set ALPN: %s", trust_ssl_errstr());
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            errmsg(err, errlen, -EINVAL, "cannot load CA certificates from %s: %s", ca_file,
                   trust_ssl_errstr());
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

/* The auth object of the hello; NULL after conn_fail. */
json_t *trust_hello_auth(struct tconn *c, const char *nonce)
{
    struct agent_tunnel *t = c->t;
    char err[ERRLEN];

    if (t->via_ssh)
        return json_pack("{s:s}", "method", "peercred");
    if (t->job_key) {
        /* A --jobgate job (or the user's own certificate): the certificate, and the
         * challenge signed with its key. */
        char payload[64], *sig = NULL;
        (void)xsnprintf(payload, sizeof(payload), "jobgate/1 hello %s", nonce);
        if (jobcert_sign(t->job_key, payload, strlen(payload), &sig, err, sizeof(err)) < 0) {
            conn_fail_rc(c, -EACCES, "%s", err);
            return NULL;
        }
        json_t *a = json_pack("{s:s,s:s,s:s}", "method", t->user_cert ? "cert" : "jobcert",
                              "cert", t->job_cert, "signature", sig);
        free(sig);
        return a;
    }
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
    char payload[160], gw[JOBCERT_GATEWAY_ID_LEN + 1];
    char *cred = NULL;
    /* Bound to this gateway's certificate too: a gateway we reached by
     * mistake cannot hand the credential on with another's challenge. */
    SSL *ssl = c->tls ? bufferevent_openssl_get_ssl(c->bev) : NULL;
    if (!ssl || jobcert_gateway_id(SSL_get0_peer_certificate(ssl), gw) < 0) {
        conn_fail_rc(c, -EACCES, "cannot prove who you are to the gateway at %s: MUNGE needs "
                     "its TLS certificate", t->where);
        return NULL;
    }
    (void)jobcert_munge_payload(payload, sizeof(payload), nonce, gw);
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
