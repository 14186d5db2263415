/*
 * backend_direct — routes to a job's own TLS endpoint (`jobgate run
 * --callback`, docs/slurm.md "Direct routes"): the gateway dials the job,
 * not the other way round. I3 twice over: the address must be one of the
 * destinations the job's node reported for it (JOBGATE_READY_FD: sockets
 * the job's own processes listen on), checked at registration and again on
 * every connection while the job runs; and the endpoint must prove, in the
 * TLS handshake, the job's own certificate (signed by the agent CA, naming
 * the route's job and owner), while the gateway presents its client
 * certificate (jobca_client_ctx) that the endpoint requires. Owns nothing;
 * no lock (the registry locks inside; the CA is read-only).
 */
#include "backend.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/ssl.h>

#include "jobca.h"
#include "registry.h"
#include "util.h"

/* The route's address as a socket address. 0 or -1 (not an IP literal). */
static int addr_of(const struct route *r, struct sockaddr_storage *ss, socklen_t *sl)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, r->path, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(r->port);
        *sl = sizeof(*s4);
        return 0;
    }
    if (inet_pton(AF_INET6, r->path, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(r->port);
        *sl = sizeof(*s6);
        return 0;
    }
    return -1;
}

/* Is the route's address still one of its job's destinations? */
static int dest_ok(const struct backend_env *env, const struct route *r, char *why, size_t len)
{
    int rc = r->job ? registry_job_dest(env->reg, r->job, r->uid, r->path, r->port) : -ENOENT;
    if (rc == -ESTALE)
        snprintf(why, len, "job %u has ended", (unsigned)r->job);
    else if (rc == -EPERM)
        snprintf(why, len, "%s port %u is not a destination of job %u (the job's node "
                 "reports its listening sockets through JOBGATE_READY_FD)", r->path, r->port,
                 (unsigned)r->job);
    else if (rc < 0)
        snprintf(why, len, "no running job %u of uid %u", (unsigned)r->job, (unsigned)r->uid);
    return rc;
}

static int check(const struct backend_env *env, struct route *r, int starting, char *why,
                 size_t len)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (addr_of(r, &ss, &sl) < 0 || r->port == 0) {
        snprintf(why, len, "a direct route leads to an IP address and a port");
        return -EINVAL;
    }
    return dest_ok(env, r, why, len);
}

static struct bufferevent *connect_direct(const struct backend_env *env, struct event_base *base,
                                          const struct route *r, int *ready)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    char why[200];
    if (addr_of(r, &ss, &sl) < 0 || dest_ok(env, r, why, sizeof(why)) < 0) {
        errno = EPERM;
        return NULL;
    }
    SSL *ssl = SSL_new(jobca_client_ctx(env->ca));
    if (!ssl) {
        errno = ENOMEM;
        return NULL;
    }
    /* As xprt's TLS bufferevents: it owns neither SSL nor socket (xprt_free closes both). */
    struct bufferevent *bev =
        bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, 0);
    if (!bev) {
        SSL_free(ssl);
        errno = ENOMEM;
        return NULL;
    }
    if (bufferevent_socket_connect(bev, (const struct sockaddr *)&ss, (int)sl) < 0) {
        int e = errno ? errno : ECONNREFUSED;
        evutil_socket_t fd = bufferevent_getfd(bev);
        bufferevent_free(bev);
        SSL_free(ssl);
        if (fd >= 0)
            close(fd);
        errno = e;
        return NULL;
    }
    int one = 1;
    setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    *ready = 0;
    return bev;
}

static int verify(const struct backend_env *env, struct bufferevent *bev, evutil_socket_t fd,
                  const struct route *r, char *why, size_t len)
{
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    X509 *peer = ssl ? SSL_get1_peer_certificate(ssl) : NULL;
    struct jobca_job j;
    char err[256];
    int rc = 0;
    if (dest_ok(env, r, why, len) < 0) {
        rc = -EPERM;
    } else if (!peer || SSL_get_verify_result(ssl) != X509_V_OK) {
        snprintf(why, len, "the endpoint shows no certificate of the agent CA");
        rc = -EPERM;
    } else if (jobca_verify(env->ca, peer, now_real(), &j, err, sizeof(err)) < 0) {
        snprintf(why, len, "the endpoint's certificate: %s", err);
        rc = -EPERM;
    } else if (j.job_id != r->job || j.uid != r->uid) {
        snprintf(why, len, "the endpoint is job %u's of uid %u, not job %u's of uid %u",
                 (unsigned)j.job_id, (unsigned)j.uid, (unsigned)r->job, (unsigned)r->uid);
        rc = -EPERM;
    }
    X509_free(peer);
    return rc;
}

const struct backend_ops backend_direct_ops = {
    .check = check,
    .connect = connect_direct,
    .verify = verify,
};
