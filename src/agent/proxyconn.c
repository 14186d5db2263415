/* proxyconn — see proxyconn.h. */
#include "proxyconn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http1.h"
#include "log.h"
#include "util.h"

/* More interim (1xx) answers than this before the real one is not a proxy. */
#define MAX_INTERIM 4
/* Room for "[" host "]:" port; hosts are at most 255 bytes. */
#define HOSTPORT_MAX 272


/* "host:port", with brackets around an IPv6 literal so the port stays apart. */
static void fmt_hostport(char *dst, size_t size, const char *host, unsigned port)
{
    if (strchr(host, ':'))
        (void)xsnprintf(dst, size, "[%s]:%u", host, port);
    else
        (void)xsnprintf(dst, size, "%s:%u", host, port);
}

static int is_ip_literal(const char *host)
{
    unsigned char a[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

/* A name or address that is safe to put into a request line: a DNS-ish name
 * (letters, digits, '-', '.', '_') or an IPv6 literal without brackets.
 * Anything else could smuggle CR LF or a second target into the request. */
static int host_ok(const char *host, size_t n)
{
    char tmp[256];
    unsigned char a[sizeof(struct in6_addr)];

    if (n == 0 || n > 255)
        return 0;
    if (memchr(host, ':', n)) {
        memcpy(tmp, host, n);
        tmp[n] = '\0';
        return inet_pton(AF_INET6, tmp, a) == 1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* environment                                                              */

static const char *env_nonempty(const char *lower, const char *upper, const char **name)
{
    const char *v = getenv(lower);
    *name = lower;
    if (v && *v)
        return v;
    v = getenv(upper);
    *name = upper;
    return v && *v ? v : NULL;
}

/* Does one no_proxy entry (trimmed, len n) cover host (len hl, no brackets,
 * no trailing dot)? */
static int no_proxy_entry_matches(const char *e, size_t n, const char *host, size_t hl, int host_is_ip)
{
    if (n == 1 && e[0] == '*')
        return 1;
    if (e[0] == '[') {
        const char *rb = memchr(e, ']', n);
        if (!rb)
            return 0;
        n = (size_t)(rb - e) - 1;
        e++;
    } else {
        const char *c1 = memchr(e, ':', n);
        /* one colon is host:port; several are a bare IPv6 literal */
        if (c1 && !memchr(c1 + 1, ':', n - (size_t)(c1 - e) - 1))
            n = (size_t)(c1 - e);
    }
    if (n > 0 && e[0] == '.') {
        e++;
        n--;
    }
    if (n > 0 && e[n - 1] == '.')
        n--;
    if (n == 0)
        return 0;
    if (n == hl && strncasecmp(e, host, n) == 0)
        return 1;
    /* addresses are not domains: 2.3.4 must not cover 1.2.3.4 */
    if (host_is_ip)
        return 0;
    return hl > n && host[hl - n - 1] == '.' && strncasecmp(host + hl - n, e, n) == 0;
}

static int no_proxy_matches(const char *list, const char *target)
{
    char host[256];
    size_t hl = strlen(target);

    if (hl >= 2 && target[0] == '[' && target[hl - 1] == ']') {
        target++;
        hl -= 2;
    }
    if (hl > 0 && target[hl - 1] == '.')
        hl--;
    if (hl == 0 || hl >= sizeof(host))
        return 0;
    memcpy(host, target, hl);
    host[hl] = '\0';
    int ip = is_ip_literal(host);

    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        const char *e = p, *next = p[n] ? p + n + 1 : p + n;
        while (n > 0 && (*e == ' ' || *e == '\t')) {
            e++;
            n--;
        }
        while (n > 0 && (e[n - 1] == ' ' || e[n - 1] == '\t'))
            n--;
        if (n > 0 && no_proxy_entry_matches(e, n, host, hl, ip))
            return 1;
        p = next;
    }
    return 0;
}

/* Percent-decodes s[0..n) into out (NUL-terminated). Returns the decoded
 * length or -1 for a bad escape, an encoded NUL, or no room. */
static ssize_t pct_decode(const char *s, size_t n, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hex_value((unsigned char)s[i + 1]);
            int lo = hex_value((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0 || o + 1 >= outsz)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (ssize_t)o;
}

/*
 * Parses a proxy value into *out. Messages never quote the value: a password
 * with an unencoded '/' or '@' lands in the host or port part, and error
 * messages end up in terminals and job logs.
 */
static int parse_proxy_value(const char *var, const char *v, struct proxy_spec *out, char *err,
                             size_t errlen)
{
    const char *s = v, *sep = strstr(v, "://");

    if (sep) {
        size_t sl = (size_t)(sep - v);
        if (sl == 4 && strncasecmp(v, "http", 4) == 0) {
            /* the one supported scheme */
        } else if (sl == 5 && strncasecmp(v, "https", 5) == 0) {
            return errmsg(err, errlen, -EINVAL,
                          "%s: https:// proxies are not supported (no TLS to the proxy); "
                          "use an http:// proxy URL, the tunnel inside is TLS anyway", var);
        } else if (sl >= 5 && strncasecmp(v, "socks", 5) == 0) {
            return errmsg(err, errlen, -EINVAL,
                          "%s: SOCKS proxies are not supported; only HTTP CONNECT proxies "
                          "(http://host:port)", var);
        } else {
            return errmsg(err, errlen, -EINVAL,
                          "%s: unsupported proxy URL scheme; only http:// (HTTP CONNECT) "
                          "proxies are supported", var);
        }
        s = sep + 3;
    }

    const char *end = s + strcspn(s, "/?#");
    const char *at = NULL;
    for (const char *q = s; q < end; q++)
        if (*q == '@')
            at = q;

    if (at) {
        char user[sizeof(out->auth)], pass[sizeof(out->auth)];
        const char *colon = memchr(s, ':', (size_t)(at - s));
        const char *uend = colon ? colon : at;
        ssize_t un = pct_decode(s, (size_t)(uend - s), user, sizeof(user));
        ssize_t pn = colon ? pct_decode(colon + 1, (size_t)(at - colon - 1), pass, sizeof(pass)) : 0;
        if (!colon)
            pass[0] = '\0';
        int bad = un < 0 || pn < 0 || un == 0 ||
                  xsnprintf(out->auth, sizeof(out->auth), "%s:%s", user, pass) < 0;
        explicit_bzero(user, sizeof(user));
        explicit_bzero(pass, sizeof(pass));
        if (bad) {
            explicit_bzero(out->auth, sizeof(out->auth));
            return errmsg(err, errlen, -EINVAL,
                          "%s: bad user:password in the proxy URL (empty user name, bad %%-escape, "
                          "or longer than %zu bytes)", var, sizeof(out->auth) - 1);
        }
        s = at + 1;
    }

    const char *hend;     /* end of the host name */
    const char *rest;     /* ":port" or end */
    const char *h = s;
    if (s < end && *s == '[') {
        const char *rb = memchr(s, ']', (size_t)(end - s));
        if (!rb)
            goto bad_host;
        h = s + 1;
        hend = rb;
        rest = rb + 1;
        if (hend == h || !memchr(h, ':', (size_t)(hend - h)))
            goto bad_host; /* brackets are for IPv6 literals only */
    } else {
        const char *colon = memchr(s, ':', (size_t)(end - s));
        hend = colon ? colon : end;
        rest = hend;
        if (memchr(h, ':', (size_t)(hend - h)))
            goto bad_host;
    }
    if (hend == h)
        return errmsg(err, errlen, -EINVAL, "%s: the proxy URL names no host", var);
    if (!host_ok(h, (size_t)(hend - h)))
        goto bad_host;
    memcpy(out->host, h, (size_t)(hend - h));
    out->host[hend - h] = '\0';

    out->port = PROXY_DEFAULT_PORT;
    if (rest < end) {
        char portstr[8];
        uint64_t port;
        size_t pl = (size_t)(end - rest) - 1;
        if (*rest != ':' || pl == 0 || pl >= sizeof(portstr))
            goto bad_port;
        memcpy(portstr, rest + 1, pl);
        portstr[pl] = '\0';
        if (parse_uint(portstr, 1, 65535, &port) < 0)
            goto bad_port;
        out->port = (unsigned)port;
    }
    return 0;

bad_host:
    explicit_bzero(out->auth, sizeof(out->auth));
    return errmsg(err, errlen, -EINVAL,
                  "%s: bad host in the proxy URL (expected http://[user:pass@]host[:port], "
                  "an IPv6 address in brackets)", var);
bad_port:
    explicit_bzero(out->auth, sizeof(out->auth));
    return errmsg(err, errlen, -EINVAL, "%s: bad port in the proxy URL (expected 1-65535)", var);
}

int proxy_from_env(const char *target_host, struct proxy_spec *out, char *err, size_t errlen)
{
    const char *var, *npvar;
    const char *v = env_nonempty("https_proxy", "HTTPS_PROXY", &var);
    const char *np = env_nonempty("no_proxy", "NO_PROXY", &npvar);
    char hp[HOSTPORT_MAX];

    memset(out, 0, sizeof(*out));
    if (err && errlen > 0)
        err[0] = '\0';
    if (!v)
        return 0;
    if (np && target_host && no_proxy_matches(np, target_host)) {
        log_debug("%s covers %s: connecting directly", npvar, target_host);
        return 0;
    }
    int rc = parse_proxy_value(var, v, out, err, errlen);
    if (rc < 0) {
        memset(out, 0, sizeof(*out));
        return rc;
    }
    fmt_hostport(hp, sizeof(hp), out->host, out->port);
    log_debug("%s: using proxy %s%s", var, hp, out->auth[0] ? " with credentials" : "");
    return 1;
}

/* ------------------------------------------------------------------------ */
/* sockets                                                                  */

/* Waits until fd is ready for events or the deadline passes (-ETIMEDOUT).
 * Errors and hangups count as ready: the next call on fd reports them. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_mono_ms();
        if (left <= 0)
            return -ETIMEDOUT;
        struct pollfd pfd = { .fd = fd, .events = events, .revents = 0 };
        int r = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r > 0)
            return 0;
        if (r == 0)
            return -ETIMEDOUT;
        if (errno != EINTR)
            return -errno;
    }
}

int tcp_connect_timeout(const char *host, unsigned port, int timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    char portstr[8], hp[HOSTPORT_MAX], addr[INET6_ADDRSTRLEN] = "";
    int rc, last = -ECONNREFUSED;

    if (!host || !host_ok(host, strlen(host)))
        return errmsg(err, errlen, -EINVAL, "bad host name to connect to");
    if (port == 0 || port > 65535)
        return errmsg(err, errlen, -EINVAL, "bad port %u to connect to %s", port, host);
    fmt_hostport(hp, sizeof(hp), host, port);
    if (timeout_ms <= 0)
        return errmsg(err, errlen, -EINVAL, "connect to %s: the timeout must be positive", hp);
    int64_t deadline = now_mono_ms() + timeout_ms;

    (void)xsnprintf(portstr, sizeof(portstr), "%u", port);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    /* The resolver keeps its own timeouts (resolv.conf); it is not bounded here. */
    rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        int e = rc == EAI_NONAME ? -ENOENT : rc == EAI_AGAIN ? -EAGAIN
                : rc == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
        return errmsg(err, errlen, e, "cannot resolve %s: %s", host,
                      rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
    }

    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)ai->ai_addr)->sin_addr, addr,
                      sizeof(addr));
        else if (ai->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_addr, addr,
                      sizeof(addr));
        else
            continue;

        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last = -errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            if (errno != EINPROGRESS) {
                last = -errno;
                close(fd);
                continue;
            }
            rc = wait_fd(fd, POLLOUT, deadline);
            if (rc < 0) {
                close(fd);
                last = rc;
                break; /* out of time for every address, not just this one */
            }
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                soerr = errno;
            if (soerr != 0) {
                last = -soerr;
                close(fd);
                continue;
            }
        }
        /* Small writes (TLS records, tunnel frames) must not wait for Nagle. */
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
            last = -errno;
            close(fd);
            continue;
        }
        freeaddrinfo(res);
        log_debug("connected to %s (%s)", hp, addr);
        return fd;
    }
    freeaddrinfo(res);
    if (last == -ETIMEDOUT)
        return errmsg(err, errlen, last, "connect to %s timed out after %d ms", hp, timeout_ms);
    return errmsg(err, errlen, last, "connect to %s%s%s%s: %s", hp, addr[0] ? " (" : "", addr,
                  addr[0] ? ")" : "", strerror(-last));
}

/* ------------------------------------------------------------------------ */
/* CONNECT                                                                  */

static size_t base64(const unsigned char *in, size_t n, char *out, size_t outsz)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;

    if (outsz < 4 * ((n + 2) / 3) + 1)
        return 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int send_all(int fd, const char *p, size_t n, int64_t deadline)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int rc = wait_fd(fd, POLLOUT, deadline);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * Reads one response head into buf (lim->max_head bytes) without consuming a byte
 * beyond it: TLS starts right after the empty line, and the proxy may have
 * sent the server's first bytes in the same segment. Each round peeks at
 * what arrived; if the head is not complete, all of it is head and is
 * consumed (so the next poll waits for new bytes instead of spinning);
 * once the end is seen, exactly the rest of the head is consumed.
 * Returns the head length or -ETIMEDOUT, -ECONNRESET (EOF), -EMSGSIZE,
 * -EPROTO (with *perr the http1 error), or another -errno.
 */
static ssize_t read_head(int fd, char *buf, const struct http1_limits *lim, int64_t deadline,
                         int *perr)
{
    size_t cap = lim->max_head, have = 0, scan = 0;

    *perr = 0;
    for (;;) {
        int rc = wait_fd(fd, POLLIN, deadline);
        if (rc < 0)
            return rc;
        ssize_t n = recv(fd, buf + have, cap - have, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return -errno;
        }
        if (n == 0)
            return -ECONNRESET;
        ssize_t hl = http1_scan_head(buf, have + (size_t)n, lim, &scan);
        if (hl < 0) {
            *perr = (int)-hl;
            return hl == -HTTP1_E_HEAD_LARGE || hl == -HTTP1_E_START_LINE_LONG ? -EMSGSIZE
                                                                                 : -EPROTO;
        }
        size_t want = hl > 0 ? (size_t)hl - have : (size_t)n;
        /* the bytes were peeked, so they are queued: these reads do not block */
        while (want > 0) {
            ssize_t r = recv(fd, buf + have, want, MSG_DONTWAIT);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                return r < 0 ? -errno : -ECONNRESET;
            have += (size_t)r;
            want -= (size_t)r;
        }
        if (hl > 0)
            return hl;
        if (have >= cap)
            return -EMSGSIZE;
    }
}

/* The peer's reason phrase, made safe to print and bounded. */
static void clean_reason(const struct http1_str *r, char *dst, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < r->n && o + 1 < size && i < 128; i++) {
        unsigned char c = (unsigned char)r->p[i];
        dst[o++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    dst[o] = '\0';
}

int proxy_connect(const struct proxy_spec *p, const char *host, unsigned port, int timeout_ms,
                  char *err, size_t errlen)
{
    const struct http1_limits lim = {
        .max_start_line = 1024, .max_head = PROXY_MAX_ANSWER, .max_fields = HTTP1_MAX_FIELDS_CAP,
    };
    char php[HOSTPORT_MAX], thp[HOSTPORT_MAX], cerr[512], reason[160];
    char req[2048], cred[700];
    struct http1_head *h;
    char *buf;
    int fd, rc, herr = 0;

    if (err && errlen > 0)
        err[0] = '\0';
    if (!p || !host_ok(p->host, strnlen(p->host, sizeof(p->host))) || p->port == 0 ||
        p->port > 65535)
        return errmsg(err, errlen, -EINVAL, "bad proxy host or port");
    fmt_hostport(php, sizeof(php), p->host, p->port);
    if (!host || !host_ok(host, strlen(host)) || port == 0 || port > 65535)
        return errmsg(err, errlen, -EINVAL, "proxy %s: bad target host or port for CONNECT", php);
    fmt_hostport(thp, sizeof(thp), host, port);
    if (timeout_ms <= 0)
        return errmsg(err, errlen, -EINVAL, "proxy %s: the timeout must be positive", php);
    size_t alen = strnlen(p->auth, sizeof(p->auth));
    if (alen == sizeof(p->auth))
        return errmsg(err, errlen, -EINVAL, "proxy %s: credentials are not terminated", php);
    int64_t deadline = now_mono_ms() + timeout_ms;

    fd = tcp_connect_timeout(p->host, p->port, timeout_ms, cerr, sizeof(cerr));
    if (fd < 0)
        return errmsg(err, errlen, fd, "cannot reach proxy for %s: %s", thp, cerr);

    cred[0] = '\0';
    if (alen > 0)
        base64((const unsigned char *)p->auth, alen, cred, sizeof(cred));
    rc = xsnprintf(req, sizeof(req), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s%s%s\r\n", thp, thp,
                   cred[0] ? "Proxy-Authorization: Basic " : "", cred, cred[0] ? "\r\n" : "");
    explicit_bzero(cred, sizeof(cred));
    if (rc == 0)
        rc = send_all(fd, req, strlen(req), deadline);
    explicit_bzero(req, sizeof(req));
    if (rc < 0) {
        close(fd);
        if (rc == -ETIMEDOUT)
            return errmsg(err, errlen, rc, "proxy %s did not take the CONNECT request within %d ms",
                          php, timeout_ms);
        return errmsg(err, errlen, rc, "proxy %s: sending CONNECT: %s", php, strerror(-rc));
    }
    log_debug("proxy %s: CONNECT %s sent%s", php, thp, alen ? " with credentials" : "");

    buf = xmalloc(PROXY_MAX_ANSWER);
    h = xmalloc(sizeof(*h));
    for (int interim = 0;; interim++) {
        ssize_t hl = read_head(fd, buf, &lim, deadline, &herr);
        if (hl == -ETIMEDOUT) {
            rc = errmsg(err, errlen, (int)hl, "proxy %s did not answer CONNECT to %s within %d ms",
                        php, thp, timeout_ms);
            break;
        }
        if (hl == -ECONNRESET) {
            rc = errmsg(err, errlen, (int)hl,
                        "proxy %s closed the connection without answering CONNECT to %s", php, thp);
            break;
        }
        if (hl == -EMSGSIZE) {
            rc = errmsg(err, errlen, (int)hl,
                        "proxy %s: answer to CONNECT is too large (over %u bytes of head)", php,
                        PROXY_MAX_ANSWER);
            break;
        }
        if (hl == -EPROTO) {
            rc = errmsg(err, errlen, (int)hl, "proxy %s: malformed answer to CONNECT: %s", php,
                        http1_err_str(herr));
            break;
        }
        if (hl < 0) {
            rc = errmsg(err, errlen, (int)hl, "proxy %s: reading the answer to CONNECT: %s", php,
                        strerror((int)-hl));
            break;
        }
        rc = http1_parse_response(buf, (size_t)hl, &lim, 0, h);
        if (rc < 0) {
            rc = errmsg(err, errlen, rc == -HTTP1_E_HEAD_LARGE || rc == -HTTP1_E_TOO_MANY_FIELDS
                                         ? -EMSGSIZE : -EPROTO,
                        "proxy %s: malformed answer to CONNECT: %s", php, http1_err_str(rc));
            break;
        }
        clean_reason(&h->reason, reason, sizeof(reason));
        if (h->status >= 100 && h->status < 200 && h->status != 101) {
            if (interim < MAX_INTERIM)
                continue;
            rc = errmsg(err, errlen, -EPROTO, "proxy %s: too many interim answers to CONNECT",
                        php);
            break;
        }
        if (h->status >= 200 && h->status < 300) {
            rc = 0;
            log_debug("proxy %s: tunnel to %s open (%d)", php, thp, h->status);
            break;
        }
        if (h->status == 407) {
            if (alen)
                rc = errmsg(err, errlen, -EACCES,
                            "proxy %s rejected the credentials from https_proxy for CONNECT to %s: "
                            "407 %s", php, thp, reason);
            else
                rc = errmsg(err, errlen, -EACCES,
                            "proxy %s wants credentials for CONNECT to %s (407 %s); set them in "
                            "https_proxy as http://user:password@host:port", php, thp, reason);
            break;
        }
        rc = errmsg(err, errlen, -ECONNREFUSED, "proxy %s refused CONNECT to %s: %d %s", php, thp,
                    h->status, reason);
        break;
    }
    free(h);
    free(buf);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}
