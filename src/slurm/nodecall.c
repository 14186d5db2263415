/* nodecall — see nodecall.h. */
#include "nodecall.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <munge.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "plugerr.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events or the deadline passes: 0, or -ETIMEDOUT. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

/* gateway= "https://HOST[:PORT][/]" into host and port (plugconf checked its shape). */
static int split_url(const char *url, char *host, size_t hl, char *port, size_t pl)
{
    const char *h = url + strlen("https://"), *end = h + strcspn(h, "/");
    const char *colon = NULL;
    if (*h == '[') {
        const char *rb = memchr(h, ']', (size_t)(end - h));
        if (!rb)
            return -EINVAL;
        colon = rb + 1 < end && rb[1] == ':' ? rb + 1 : NULL;
        if ((size_t)(rb - h - 1) >= hl)
            return -EINVAL;
        memcpy(host, h + 1, (size_t)(rb - h - 1));
        host[rb - h - 1] = '\0';
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        const char *he = colon ? colon : end;
        if ((size_t)(he - h) >= hl)
            return -EINVAL;
        memcpy(host, h, (size_t)(he - h));
        host[he - h] = '\0';
    }
    const char *ps = colon ? colon + 1 : "443";
    size_t n = colon ? (size_t)(end - ps) : 3;
    if (n == 0 || n >= pl)
        return -EINVAL;
    memcpy(port, ps, n);
    port[n] = '\0';
    return 0;
}

/* host:port resolved within the deadline (getaddrinfo_a: a slow resolver must
 * not hold slurmstepd beyond it). 0 with *res, or -errno with err. */
static int resolve(const char *host, const char *port, int64_t deadline, struct addrinfo **res,
                   char *err, size_t errlen)
{
    /* On the heap: a lookup that cannot be cancelled in time still writes into it. */
    struct {
        struct addrinfo hints;
        struct gaicb req;
        char host[256], port[8];
    } *q = calloc(1, sizeof(*q));
    if (!q)
        return plug_err(err, errlen, -ENOMEM, "out of memory");
    snprintf(q->host, sizeof(q->host), "%s", host);
    snprintf(q->port, sizeof(q->port), "%s", port);
    q->hints.ai_family = AF_UNSPEC;
    q->hints.ai_socktype = SOCK_STREAM;
    q->req.ar_name = q->host;
    q->req.ar_service = q->port;
    q->req.ar_request = &q->hints;
    struct gaicb *list[1] = {&q->req};
    int rc = getaddrinfo_a(GAI_NOWAIT, list, 1, NULL);
    while (rc == 0 && (rc = gai_error(&q->req)) == EAI_INPROGRESS) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            if (gai_cancel(&q->req) == EAI_CANCELED) {
                free(q);
            } /* else: left to the resolver's thread (a small, rare leak, never a hang) */
            return plug_err(err, errlen, -ETIMEDOUT, "cannot resolve %s in time", host);
        }
        struct timespec ts = {(time_t)(left / 1000), (long)(left % 1000) * 1000000L};
        gai_suspend((const struct gaicb *const *)list, 1, &ts);
        rc = 0;
    }
    if (rc != 0) {
        if (q->req.ar_result)
            freeaddrinfo(q->req.ar_result);
        free(q);
        return plug_err(err, errlen, -EHOSTUNREACH, "cannot resolve %s: %s", host,
                        gai_strerror(rc));
    }
    *res = q->req.ar_result;
    free(q);
    return 0;
}

static int dial(const char *host, const char *port, int64_t deadline, char *err, size_t errlen)
{
    struct addrinfo *res = NULL;
    int rc = resolve(host, port, deadline, &res, err, errlen);
    if (rc < 0)
        return rc;
    int fd = -1, e = -ECONNREFUSED;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            e = -errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) {
            e = -errno;
        } else if ((e = wait_fd(fd, POLLOUT, deadline)) == 0) {
            int so = 0;
            socklen_t sl = sizeof(so);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl) == 0 && so == 0)
                break;
            e = -(so ? so : errno);
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return plug_err(err, errlen, e, "cannot connect to %s port %s: %s", host, port,
                        strerror(-e));
    return fd;
}

/* Runs an SSL call until it is done or the deadline passes: its result, or -ETIMEDOUT. */
static int ssl_wait(SSL *ssl, int fd, int r, int64_t deadline)
{
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return wait_fd(fd, POLLIN, deadline) < 0 ? -ETIMEDOUT : 1;
    if (e == SSL_ERROR_WANT_WRITE)
        return wait_fd(fd, POLLOUT, deadline) < 0 ? -ETIMEDOUT : 1;
    return 0;
}

/* The MUNGE credential for op over body. 0 with *cred (free()), or -errno. */
static int credential(const struct plugconf *c, const char *op, const char *body, char **cred,
                      char *err, size_t errlen)
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    char payload[128];
    if (!EVP_Digest(body, strlen(body), md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return plug_err(err, errlen, -EIO, "cannot hash the request: %s", plug_ossl_err());
    int n = snprintf(payload, sizeof(payload), "jobgate/1 node %s ", op);
    for (unsigned i = 0; i < 32; i++)
        n += snprintf(payload + n, sizeof(payload) - (size_t)n, "%02x", md[i]);
    munge_ctx_t ctx = munge_ctx_create();
    if (!ctx)
        return plug_err(err, errlen, -ENOMEM, "cannot create a MUNGE context");
    munge_err_t me = EMUNGE_SUCCESS;
    if (c->munge_socket[0])
        me = munge_ctx_set(ctx, MUNGE_OPT_SOCKET, c->munge_socket);
    if (me == EMUNGE_SUCCESS)
        me = munge_encode(cred, ctx, payload, n);
    int rc = 0;
    if (me != EMUNGE_SUCCESS)
        rc = plug_err(err, errlen, -EACCES, "cannot encode a MUNGE credential: %s",
                      munge_ctx_strerror(ctx) ? munge_ctx_strerror(ctx) : munge_strerror(me));
    munge_ctx_destroy(ctx);
    return rc;
}

/* Sends req (len bytes) over ssl, reads the whole answer (the gateway closes). */
static int exchange(SSL *ssl, int fd, const char *req, size_t len, int64_t deadline, char **ans,
                    size_t *alen, char *err, size_t errlen)
{
    size_t off = 0;
    while (off < len) {
        int r = SSL_write(ssl, req + off, (int)(len - off));
        if (r > 0) {
            off += (size_t)r;
            continue;
        }
        int w = ssl_wait(ssl, fd, r, deadline);
        if (w <= 0)
            return plug_err(err, errlen, w < 0 ? -ETIMEDOUT : -EIO,
                            "cannot send the request: %s",
                            w < 0 ? "timed out" : plug_ossl_err());
    }
    char *buf = malloc(NODECALL_ANSWER_MAX + 1);
    size_t n = 0;
    if (!buf)
        return plug_err(err, errlen, -ENOMEM, "out of memory");
    for (;;) {
        if (n == NODECALL_ANSWER_MAX) {
            free(buf);
            return plug_err(err, errlen, -EMSGSIZE, "the gateway's answer is over %d bytes",
                            NODECALL_ANSWER_MAX);
        }
        int r = SSL_read(ssl, buf + n, (int)(NODECALL_ANSWER_MAX - n));
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) ||
            (e == SSL_ERROR_SSL && n > 0))
            break; /* the end of the answer */
        int w = ssl_wait(ssl, fd, r, deadline);
        if (w <= 0) {
            free(buf);
            return plug_err(err, errlen, w < 0 ? -ETIMEDOUT : -EIO,
                            "cannot read the answer: %s",
                            w < 0 ? "timed out" : plug_ossl_err());
        }
    }
    ERR_clear_error();
    buf[n] = '\0';
    *ans = buf;
    *alen = n;
    return 0;
}

/* "HTTP/1.1 200 ..." head and JSON body, whole (its Content-Length). */
static int parse_answer(const char *a, size_t n, int *status, json_t **answer, char *err,
                        size_t errlen)
{
    const char *body = strstr(a, "\r\n\r\n");
    if (n < 12 || memcmp(a, "HTTP/1.", 7) != 0 || a[8] != ' ' || !body)
        return plug_err(err, errlen, -EPROTO, "the gateway's answer is not HTTP");
    *status = atoi(a + 9);
    const char *cl = strcasestr(a, "\r\ncontent-length:");
    size_t want = cl && cl < body ? strtoul(cl + 17, NULL, 10) : (size_t)-1;
    if (want == (size_t)-1 || n - (size_t)(body + 4 - a) != want)
        return plug_err(err, errlen, -EPROTO, "the gateway's answer is cut short");
    json_error_t je;
    body += 4;
    *answer = json_loadb(body, n - (size_t)(body - a), 0, &je);
    if (!json_is_object(*answer)) {
        json_decref(*answer);
        *answer = NULL;
        return plug_err(err, errlen, -EPROTO,
                        "the gateway answered %d without a JSON object (is gateway= a jobgate "
                        "gateway?)", *status);
    }
    return 0;
}

static int post(const struct plugconf *c, const char *op, json_t *body, int *status,
                json_t **answer, char *err, size_t errlen);

int nodecall_post(const struct plugconf *c, const char *op, json_t *body, int *status,
                  json_t **answer, char *err, size_t errlen)
{
    /* A gateway that closes early must not kill slurmstepd or slurmd with SIGPIPE (OpenSSL
     * writes in the handshake and after): blocked for the whole call, and a pending one
     * taken before it is unblocked. */
    sigset_t pipe, old;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &old);
    int rc = post(c, op, body, status, answer, err, errlen);
    struct timespec zero = {0, 0};
    if (!sigismember(&old, SIGPIPE))
        while (sigtimedwait(&pipe, NULL, &zero) == SIGPIPE)
            ;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

static int post(const struct plugconf *c, const char *op, json_t *body, int *status,
                json_t **answer, char *err, size_t errlen)
{
    int64_t deadline = now_ms() + NODECALL_TIMEOUT_MS;
    char host[256], port[8];
    *answer = NULL;
    *status = 0;
    if (split_url(c->gateway, host, sizeof(host), port, sizeof(port)) < 0)
        return plug_err(err, errlen, -EINVAL, "argument gateway=%s: not https://HOST[:PORT]",
                        c->gateway);
    char *json = json_dumps(body, JSON_COMPACT), *cred = NULL, *req = NULL, *ans = NULL;
    size_t alen = 0;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    int fd = -1, rc;
    if (!json) {
        rc = plug_err(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = credential(c, op, json, &cred, err, errlen)) < 0)
        goto out;
    int hostv6 = strchr(host, ':') != NULL;
    if (asprintf(&req,
                 "POST /_jobgate/node/v1/%s HTTP/1.1\r\nHost: %s%s%s:%s\r\n"
                 "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                 "Authorization: MUNGE %s\r\nConnection: close\r\n\r\n%s",
                 op, hostv6 ? "[" : "", host, hostv6 ? "]" : "", port, strlen(json), cred,
                 json) < 0) {
        req = NULL;
        rc = plug_err(err, errlen, -ENOMEM, "out of memory");
        goto out;
    }
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        (c->ca[0] ? SSL_CTX_load_verify_locations(ctx, c->ca, NULL)
                  : SSL_CTX_set_default_verify_paths(ctx)) != 1) {
        rc = plug_err(err, errlen, -EIO, "cannot set up TLS (ca=%s): %s",
                      c->ca[0] ? c->ca : "the system's", plug_ossl_err());
        goto out;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if ((fd = dial(host, port, deadline, err, errlen)) < 0) {
        rc = fd;
        goto out;
    }
    ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1 || (!hostv6 && SSL_set_tlsext_host_name(ssl, host) != 1) ||
        SSL_set1_host(ssl, host) != 1) {
        rc = plug_err(err, errlen, -EIO, "cannot set up TLS: %s", plug_ossl_err());
        goto out;
    }
    for (;;) {
        int r = SSL_connect(ssl);
        if (r == 1)
            break;
        int w = ssl_wait(ssl, fd, r, deadline);
        if (w <= 0) {
            long v = SSL_get_verify_result(ssl);
            rc = plug_err(err, errlen, w < 0 ? -ETIMEDOUT : -EIO, "TLS with %s failed: %s", host,
                          w < 0 ? "timed out"
                          : v != X509_V_OK ? X509_verify_cert_error_string(v)
                                           : plug_ossl_err());
            goto out;
        }
    }
    if ((rc = exchange(ssl, fd, req, strlen(req), deadline, &ans, &alen, err, errlen)) < 0)
        goto out;
    rc = parse_answer(ans, alen, status, answer, err, errlen);
out:
    if (cred) {
        explicit_bzero(cred, strlen(cred));
        free(cred);
    }
    if (req) {
        explicit_bzero(req, strlen(req));
        free(req);
    }
    free(json);
    free(ans);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    ERR_clear_error();
    return rc;
}
