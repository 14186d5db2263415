/*
 * proxyconn — the agent's outbound TCP dial to the gateway, directly or
 * through an HTTP CONNECT proxy named by https_proxy / HTTPS_PROXY.
 *
 * Compute nodes often reach the outside only through a site proxy, and the
 * agent always dials out (the gateway never dials in), so this is the one
 * place that decides how a byte stream to the gateway is opened. It owns the
 * proxy environment variables' interpretation (curl's rules, so users'
 * existing settings just work) and the CONNECT exchange; it hands back a
 * plain connected fd and owns nothing afterwards. TLS is the caller's job:
 * the fd is left positioned exactly after the proxy's empty line, so no byte
 * of the tunnel is ever consumed here.
 *
 * Proxy credentials never appear in logs or error messages.
 */
#ifndef JG_PROXYCONN_H
#define JG_PROXYCONN_H

#include <stddef.h>

#define PROXY_DEFAULT_PORT 1080u     /* curl's default when a proxy has no port */
#define PROXY_MAX_ANSWER   16384u    /* largest CONNECT answer head accepted */

struct proxy_spec {
    char host[256];  /* name or address; an IPv6 literal without brackets */
    unsigned port;
    char auth[512];  /* "user:pass" (percent-decoded) or "" */
};

/*
 * Which proxy, if any, applies to a connection to target_host. Reads
 * https_proxy, then HTTPS_PROXY (lowercase wins, an empty value counts as
 * unset, like curl), and no_proxy / NO_PROXY likewise.
 * Accepted values: "http://host:port", "host:port", "host",
 * "http://user:pass@host:port" (user and pass percent-decoded),
 * "[v6addr]:port"; the port defaults to PROXY_DEFAULT_PORT; a path is ignored.
 * no_proxy: comma-separated entries; "*" matches every host; "example.org"
 * and ".example.org" both match example.org and its subdomains; comparison
 * is case-insensitive; an entry's ":port" is ignored. When no_proxy matches,
 * the proxy value is not even parsed (the proxy does not apply).
 * Returns 1 with *out filled, 0 when no proxy applies, or -EINVAL with a
 * message in err (https:// and socks proxies are refused, not ignored:
 * silently going direct would fail later in a more confusing way).
 */
int proxy_from_env(const char *target_host, struct proxy_spec *out, char *err, size_t errlen);

/*
 * Connects to host:port through the proxy p: TCP to the proxy, then
 * "CONNECT host:port HTTP/1.1" (with Basic Proxy-Authorization when p->auth
 * is set). timeout_ms (> 0) bounds the whole operation, TCP connect and
 * answer together. Requires a 2xx answer (interim 1xx answers are skipped).
 * Returns a blocking, close-on-exec fd ready for TLS, or a negative errno
 * with a message in err:
 *   -EINVAL       bad arguments (a host that could inject into the request)
 *   -ETIMEDOUT    the proxy did not connect or answer in time
 *   -EACCES       407: the proxy wants (other) credentials
 *   -ECONNREFUSED the proxy answered with another non-2xx status
 *   -EPROTO       the answer is not HTTP
 *   -EMSGSIZE     the answer head exceeds PROXY_MAX_ANSWER
 *   -ECONNRESET   the proxy closed the connection before answering
 *   or an error of tcp_connect_timeout() for the proxy itself.
 */
int proxy_connect(const struct proxy_spec *p, const char *host, unsigned port, int timeout_ms,
                  char *err, size_t errlen);

/*
 * Resolves host (getaddrinfo) and tries each address in turn within one
 * overall deadline of timeout_ms (> 0): non-blocking connect and poll.
 * Returns a blocking fd with SOCK_CLOEXEC and TCP_NODELAY, or a negative
 * errno (-ETIMEDOUT, -ECONNREFUSED, -EHOSTUNREACH, -ENOENT for a name that
 * does not resolve, ...) with a message in err.
 */
int tcp_connect_timeout(const char *host, unsigned port, int timeout_ms, char *err, size_t errlen);

#endif
