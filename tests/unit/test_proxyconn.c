/* Unit tests for src/agent/proxyconn.c: proxy environment parsing, and
 * CONNECT against tiny proxies (and a target) forked on 127.0.0.1. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proxyconn.h"
#include "util.h"

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */

static pid_t kids[8];
static size_t nkids;

static void clear_env(void)
{
    unsetenv("https_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("no_proxy");
    unsetenv("NO_PROXY");
}

static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < nkids; i++) {
        kill(kids[i], SIGKILL);
        waitpid(kids[i], NULL, 0);
    }
    nkids = 0;
    clear_env();
    return 0;
}

static int listen_local(uint16_t *port)
{
    struct sockaddr_in sin;
    socklen_t sl = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 8), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

/* A port on 127.0.0.1 where nothing listens (bound once, then released). */
static uint16_t closed_port(void)
{
    uint16_t port;
    int fd = listen_local(&port);
    close(fd);
    return port;
}

static pid_t fork_kid(void)
{
    assert_true(nkids < JG_ARRAY_LEN(kids));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        alarm(30); /* an orphan never outlives a broken run for long */
    else
        kids[nkids++] = pid;
    return pid;
}

static void write_all_or_die(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            _exit(3);
        p += w;
        n -= (size_t)w;
    }
}

/* Child side: copies bytes both ways until one side closes. */
static void relay(int a, int b)
{
    char buf[4096];
    for (;;) {
        struct pollfd pf[2] = { { .fd = a, .events = POLLIN }, { .fd = b, .events = POLLIN } };
        if (poll(pf, 2, -1) < 0)
            _exit(4);
        for (int i = 0; i < 2; i++) {
            if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t n = read(pf[i].fd, buf, sizeof(buf));
            if (n <= 0)
                _exit(0);
            write_all_or_die(i == 0 ? b : a, buf, (size_t)n);
        }
    }
}

/* The target: says HELLO first (as SSH or SMTP servers do), then echoes. */
static uint16_t start_banner_echo(void)
{
    uint16_t port;
    int lfd = listen_local(&port);
    if (fork_kid() == 0) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0)
            _exit(2);
        write_all_or_die(c, "HELLO", 5);
        char buf[4096];
        ssize_t n;
        while ((n = read(c, buf, sizeof(buf))) > 0)
            write_all_or_die(c, buf, (size_t)n);
        _exit(0);
    }
    close(lfd);
    return port;
}

enum fake_mode {
    FAKE_RELAY,    /* dial the CONNECT target; answer 200 + its banner in one write; relay */
    FAKE_ANSWER,   /* send answer ('|' splits it into writes 30 ms apart), then echo */
    FAKE_SILENT,   /* read the request, never answer */
    FAKE_OVERSIZE, /* an answer head that never ends */
    FAKE_CLOSE,    /* read the request, close */
};

struct fake {
    enum fake_mode mode;
    const char *expect_target; /* "host:port" in the request line and Host */
    const char *expect_auth;   /* Proxy-Authorization value, or NULL: must be absent */
    const char *answer;
    int hangup;                /* FAKE_ANSWER: close after the answer instead of echoing */
};

static void proxy_child(int lfd, const struct fake *f)
{
    char req[8192], line[512];
    size_t have = 0;
    int c = accept(lfd, NULL, NULL);
    if (c < 0)
        _exit(2);
    while (!memmem(req, have, "\r\n\r\n", 4)) {
        ssize_t n = read(c, req + have, sizeof(req) - 1 - have);
        if (n <= 0)
            _exit(2);
        have += (size_t)n;
    }
    req[have] = '\0';

    /* the request must be exactly one head, nothing after it */
    int ok = strstr(req, "\r\n\r\n") + 4 == req + have;
    snprintf(line, sizeof(line), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", f->expect_target,
             f->expect_target);
    ok = ok && strncmp(req, line, strlen(line)) == 0;
    if (f->expect_auth) {
        snprintf(line, sizeof(line), "\r\nProxy-Authorization: %s\r\n", f->expect_auth);
        ok = ok && strstr(req, line);
    } else {
        ok = ok && !strstr(req, "Proxy-Authorization");
    }
    if (!ok) {
        const char *bad = "HTTP/1.1 400 Test Proxy Did Not Like The Request\r\n\r\n";
        write_all_or_die(c, bad, strlen(bad));
        _exit(1);
    }

    switch (f->mode) {
    case FAKE_RELAY: {
        const char *colon = strrchr(f->expect_target, ':');
        struct sockaddr_in sin;
        char banner[5];
        char head[64 + sizeof(banner)];
        memset(&sin, 0, sizeof(sin));
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin.sin_port = htons((uint16_t)atoi(colon + 1));
        int t = socket(AF_INET, SOCK_STREAM, 0);
        if (t < 0 || connect(t, (struct sockaddr *)&sin, sizeof(sin)) < 0)
            _exit(5);
        if (read(t, banner, sizeof(banner)) != (ssize_t)sizeof(banner))
            _exit(5);
        const char *ok200 = "HTTP/1.1 200 Connection established\r\n\r\n";
        size_t hl = strlen(ok200);
        memcpy(head, ok200, hl);
        memcpy(head + hl, banner, sizeof(banner));
        write_all_or_die(c, head, hl + sizeof(banner)); /* one write: one segment */
        relay(c, t);
        break;
    }
    case FAKE_ANSWER: {
        const char *p = f->answer;
        for (;;) {
            size_t n = strcspn(p, "|");
            write_all_or_die(c, p, n);
            if (!p[n])
                break;
            p += n + 1;
            usleep(30000);
        }
        if (f->hangup)
            _exit(0);
        char buf[4096];
        ssize_t n;
        while ((n = read(c, buf, sizeof(buf))) > 0)
            write_all_or_die(c, buf, (size_t)n);
        break;
    }
    case FAKE_SILENT:
        for (;;)
            pause();
    case FAKE_OVERSIZE: {
        char pad[100];
        memset(pad, 'a', sizeof(pad));
        memcpy(pad, "X-Pad: ", 7);
        pad[98] = '\r';
        pad[99] = '\n';
        write_all_or_die(c, "HTTP/1.1 200 OK\r\n", 17);
        for (int i = 0; i < 400; i++) /* 40 KB, never an empty line */
            write_all_or_die(c, pad, sizeof(pad));
        for (;;)
            pause();
    }
    case FAKE_CLOSE:
        break;
    }
    _exit(0);
}

static uint16_t start_proxy(const struct fake *f)
{
    uint16_t port;
    int lfd = listen_local(&port);
    if (fork_kid() == 0)
        proxy_child(lfd, f);
    close(lfd);
    return port;
}

static void spec_local(struct proxy_spec *p, uint16_t port, const char *auth)
{
    memset(p, 0, sizeof(*p));
    memcpy(p->host, "127.0.0.1", 10);
    p->port = port;
    assert_int_equal(xsnprintf(p->auth, sizeof(p->auth), "%s", auth ? auth : ""), 0);
}

/* Reads exactly n bytes within 3 s (a broken tunnel must fail, not hang). */
static void read_exact(int fd, char *buf, size_t n)
{
    size_t have = 0;
    while (have < n) {
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        assert_int_equal(poll(&pf, 1, 3000), 1);
        ssize_t r = read(fd, buf + have, n - have);
        assert_true(r > 0);
        have += (size_t)r;
    }
}

static void assert_tunnel_works(int fd)
{
    char buf[16];
    memset(buf, 0, sizeof(buf));
    read_exact(fd, buf, 5);
    assert_memory_equal(buf, "HELLO", 5);
    assert_int_equal(write(fd, "ping", 4), 4);
    read_exact(fd, buf, 4);
    assert_memory_equal(buf, "ping", 4);
}

/* ------------------------------------------------------------------------ */
/* proxy_from_env                                                           */

static int from_env(const char *target, struct proxy_spec *ps, char *err, size_t errlen)
{
    return proxy_from_env(target, ps, err, errlen);
}

static void expect_proxy(const char *value, const char *host, unsigned port, const char *auth)
{
    struct proxy_spec ps;
    char err[256];
    clear_env();
    setenv("https_proxy", value, 1);
    int rc = from_env("gw.example.org", &ps, err, sizeof(err));
    if (rc != 1)
        print_error("value %s: rc %d: %s\n", value, rc, err);
    assert_int_equal(rc, 1);
    assert_string_equal(ps.host, host);
    assert_int_equal(ps.port, port);
    assert_string_equal(ps.auth, auth);
}

static void expect_bad(const char *value, const char *in_msg)
{
    struct proxy_spec ps;
    char err[256];
    clear_env();
    setenv("HTTPS_PROXY", value, 1);
    err[0] = '\0';
    int rc = from_env("gw.example.org", &ps, err, sizeof(err));
    if (rc != -EINVAL || !strstr(err, in_msg))
        print_error("value %s: rc %d: %s\n", value, rc, err);
    assert_int_equal(rc, -EINVAL);
    assert_non_null(strstr(err, in_msg));
    assert_non_null(strstr(err, "HTTPS_PROXY"));
    assert_string_equal(ps.host, "");
    assert_string_equal(ps.auth, "");
}

static void test_env_unset_and_precedence(void **state)
{
    struct proxy_spec ps;
    char err[128];
    (void)state;
    clear_env();
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 0);

    setenv("https_proxy", "", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 0);

    /* an empty lowercase value counts as unset, like curl */
    setenv("HTTPS_PROXY", "upper.example.org:3128", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 1);
    assert_string_equal(ps.host, "upper.example.org");

    setenv("https_proxy", "lower.example.org:8080", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 1);
    assert_string_equal(ps.host, "lower.example.org");
    assert_int_equal(ps.port, 8080);

    /* lowercase wins even when the uppercase one would be malformed */
    setenv("HTTPS_PROXY", "socks5://x:1", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 1);
    assert_string_equal(ps.host, "lower.example.org");
}

static void test_env_forms(void **state)
{
    (void)state;
    expect_proxy("http://proxy.example.org:3128", "proxy.example.org", 3128, "");
    expect_proxy("proxy.example.org:3128", "proxy.example.org", 3128, "");
    expect_proxy("HTTP://Proxy.Example.org:8080/", "Proxy.Example.org", 8080, "");
    expect_proxy("http://proxy.example.org", "proxy.example.org", 1080, "");
    expect_proxy("proxy", "proxy", 1080, "");
    expect_proxy("10.0.0.1:3128", "10.0.0.1", 3128, "");
    expect_proxy("http://10.0.0.1:65535/ignored/path", "10.0.0.1", 65535, "");
    expect_proxy("[2001:db8::1]:3128", "2001:db8::1", 3128, "");
    expect_proxy("http://[::1]", "::1", 1080, "");
    expect_proxy("http://user:pass@proxy:3128", "proxy", 3128, "user:pass");
}

static void test_env_credentials(void **state)
{
    (void)state;
    expect_proxy("http://user:pass@proxy:3128", "proxy", 3128, "user:pass");
    expect_proxy("http://us%40er:p%3As%2fs@proxy:3128", "proxy", 3128, "us@er:p:s/s");
    expect_proxy("http://user@proxy:3128", "proxy", 3128, "user:");
    expect_proxy("http://user:@proxy", "proxy", 1080, "user:");
    expect_proxy("http://Aladdin:open%20sesame@[::1]:8080", "::1", 8080, "Aladdin:open sesame");
    /* an unencoded '@' in the password: the last '@' ends the user info */
    expect_proxy("http://user:p@ss@proxy:3128", "proxy", 3128, "user:p@ss");
}

static void test_env_bad_values(void **state)
{
    (void)state;
    expect_bad("https://proxy.example.org:3128", "https:// proxies are not supported");
    expect_bad("HTTPS://proxy.example.org", "https:// proxies are not supported");
    expect_bad("socks5://proxy.example.org:1080", "SOCKS proxies are not supported");
    expect_bad("socks5h://proxy:1080", "SOCKS");
    expect_bad("socks4a://proxy:1080", "SOCKS");
    expect_bad("ftp://proxy:21", "unsupported proxy URL scheme");
    expect_bad("http://", "names no host");
    expect_bad("http://:3128", "names no host");
    expect_bad("http://user:pw@", "names no host");
    expect_bad("http://proxy:0", "bad port");
    expect_bad("http://proxy:65536", "bad port");
    expect_bad("http://proxy:99999999", "bad port");
    expect_bad("http://proxy:abc", "bad port");
    expect_bad("http://proxy:", "bad port");
    expect_bad("http://proxy:-1", "bad port");
    expect_bad("http://proxy:80:90", "bad port");
    expect_bad("http://[::1", "bad host");
    expect_bad("http://[::1]x", "bad port");
    expect_bad("http://[not:an:address]:1", "bad host");
    expect_bad("http://[10.0.0.1]:1", "bad host");
    expect_bad("http://pro xy:1", "bad host");
    expect_bad(" proxy:1", "bad host");
    expect_bad("http://proxy\r\nX:1", "bad host");
    expect_bad("http://u%zz@proxy:1", "bad user:password");
    expect_bad("http://u%4@proxy:1", "bad user:password");
    expect_bad("http://u%00x@proxy:1", "bad user:password");
    expect_bad("http://:pass@proxy:1", "bad user:password");

    /* messages never quote the value, so no part of a password leaks */
    struct proxy_spec ps;
    char err[256];
    clear_env();
    setenv("https_proxy", "http://user:s3cr/et@proxy:3128", 1); /* '/' not encoded */
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), -EINVAL);
    assert_null(strstr(err, "s3cr"));
    assert_null(strstr(err, "user"));
    setenv("https_proxy", "http://user:s3cret@proxy:99999", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), -EINVAL);
    assert_null(strstr(err, "s3cret"));
    assert_string_equal(ps.auth, "");
}

static void expect_no_proxy(const char *list, const char *target, int applies)
{
    struct proxy_spec ps;
    char err[128];
    clear_env();
    setenv("https_proxy", "proxy:3128", 1);
    setenv("no_proxy", list, 1);
    int rc = from_env(target, &ps, err, sizeof(err));
    if (rc != applies)
        print_error("no_proxy=%s target=%s: rc %d, want %d\n", list, target, rc, applies);
    assert_int_equal(rc, applies);
}

static void test_env_no_proxy(void **state)
{
    struct proxy_spec ps;
    char err[128];
    (void)state;
    expect_no_proxy("*", "gw.example.org", 0);
    expect_no_proxy("other.com,*", "gw.example.org", 0);
    expect_no_proxy("example.org", "gw.example.org", 0);
    expect_no_proxy("example.org", "example.org", 0);
    expect_no_proxy("example.org", "a.b.example.org", 0);
    expect_no_proxy("example.org", "GW.EXAMPLE.ORG", 0);
    expect_no_proxy("EXAMPLE.org", "gw.example.org", 0);
    expect_no_proxy("example.org", "gw.example.org.", 0);
    expect_no_proxy(".example.org", "gw.example.org", 0);
    expect_no_proxy(".example.org", "example.org", 0);
    expect_no_proxy("example.org.", "gw.example.org", 0);
    expect_no_proxy("example.org:443", "gw.example.org", 0);
    expect_no_proxy("localhost, .cluster.local , example.org", "gw.example.org", 0);
    expect_no_proxy(",,example.org,,", "gw.example.org", 0);
    expect_no_proxy("10.1.2.3", "10.1.2.3", 0);
    expect_no_proxy("10.1.2.3:8080", "10.1.2.3", 0);
    expect_no_proxy("::1", "::1", 0);
    expect_no_proxy("[::1]:8443", "::1", 0);
    expect_no_proxy("[::1]", "[::1]", 0);

    expect_no_proxy("badexample.org", "gw.example.org", 1);
    expect_no_proxy("example.org", "gw.badexample.org", 1);
    expect_no_proxy("example.org", "example.org.evil.com", 1);
    expect_no_proxy("gw.example.org", "example.org", 1);
    expect_no_proxy("2.3.4", "1.2.3.4", 1);  /* addresses are not domains */
    expect_no_proxy("*.example.org", "gw.example.org", 1); /* not a glob */
    expect_no_proxy("", "gw.example.org", 1);
    expect_no_proxy(" , ", "gw.example.org", 1);
    expect_no_proxy(".", "gw.example.org", 1);

    /* NO_PROXY when no_proxy is unset or empty; lowercase wins */
    clear_env();
    setenv("https_proxy", "proxy:3128", 1);
    setenv("NO_PROXY", "example.org", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 0);
    setenv("no_proxy", "", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 0);
    setenv("no_proxy", "other.com", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 1);

    /* a proxy that does not apply is not even parsed */
    clear_env();
    setenv("https_proxy", "socks5://proxy:1080", 1);
    setenv("no_proxy", "example.org", 1);
    assert_int_equal(from_env("gw.example.org", &ps, err, sizeof(err)), 0);
    assert_int_equal(from_env("gw.other.org", &ps, err, sizeof(err)), -EINVAL);
}

/* ------------------------------------------------------------------------ */
/* tcp_connect_timeout                                                      */

static void test_tcp_connect(void **state)
{
    char err[256];
    uint16_t port;
    (void)state;
    int lfd = listen_local(&port);
    int fd = tcp_connect_timeout("127.0.0.1", port, 1000, err, sizeof(err));
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
    int one = 0;
    socklen_t sl = sizeof(one);
    assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, &sl), 0);
    assert_int_equal(one, 1);
    close(fd);
    close(lfd);

    /* names go through getaddrinfo too */
    lfd = listen_local(&port);
    fd = tcp_connect_timeout("localhost", port, 1000, err, sizeof(err));
    if (fd < 0) /* a localhost that resolves to ::1 only is the host's business */
        print_message("localhost: %s\n", err);
    else
        close(fd);
    close(lfd);
}

static void test_tcp_connect_refused(void **state)
{
    char err[256];
    (void)state;
    uint16_t port = closed_port();
    int rc = tcp_connect_timeout("127.0.0.1", port, 1000, err, sizeof(err));
    assert_int_equal(rc, -ECONNREFUSED);
    assert_non_null(strstr(err, "127.0.0.1"));
    assert_non_null(strstr(err, "refused"));

    assert_int_equal(tcp_connect_timeout("127.0.0.1", 0, 1000, err, sizeof(err)), -EINVAL);
    assert_int_equal(tcp_connect_timeout("127.0.0.1", 70000, 1000, err, sizeof(err)), -EINVAL);
    assert_int_equal(tcp_connect_timeout("127.0.0.1", port, 0, err, sizeof(err)), -EINVAL);
    assert_int_equal(tcp_connect_timeout("bad host", port, 1000, err, sizeof(err)), -EINVAL);
    assert_int_equal(tcp_connect_timeout("", port, 1000, err, sizeof(err)), -EINVAL);
}

/* ------------------------------------------------------------------------ */
/* proxy_connect                                                            */

static void test_connect_relay_keeps_tunnel_bytes(void **state)
{
    struct proxy_spec ps;
    char err[256], target[64], buf[16];
    (void)state;
    uint16_t tport = start_banner_echo();
    snprintf(target, sizeof(target), "127.0.0.1:%u", tport);
    struct fake f = { .mode = FAKE_RELAY, .expect_target = target };
    spec_local(&ps, start_proxy(&f), NULL);

    int fd = proxy_connect(&ps, "127.0.0.1", tport, 2000, err, sizeof(err));
    if (fd < 0)
        print_error("%s\n", err);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);

    /* the banner came in the same segment as the 200: the very first read has it */
    struct pollfd pf = { .fd = fd, .events = POLLIN };
    assert_int_equal(poll(&pf, 1, 3000), 1);
    memset(buf, 0, sizeof(buf));
    assert_int_equal(read(fd, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "HELLO", 5);
    assert_int_equal(write(fd, "ping", 4), 4);
    read_exact(fd, buf, 4);
    assert_memory_equal(buf, "ping", 4);
    close(fd);
}

static void test_connect_trickled_answer(void **state)
{
    struct proxy_spec ps;
    char err[256];
    (void)state;
    /* the head arrives in pieces, split inside the CRLF CRLF, tunnel bytes mixed in */
    struct fake f = { .mode = FAKE_ANSWER, .expect_target = "gw.example.org:443",
                      .answer = "HTTP/1.1 200 Connection established\r|\nVia: 1.1 test\r\n\r|"
                                "\nHE|LLO" };
    spec_local(&ps, start_proxy(&f), NULL);
    int fd = proxy_connect(&ps, "gw.example.org", 443, 2000, err, sizeof(err));
    if (fd < 0)
        print_error("%s\n", err);
    assert_true(fd >= 0);
    assert_tunnel_works(fd);
    close(fd);
}

static void test_connect_interim_and_http10(void **state)
{
    struct proxy_spec ps;
    char err[256];
    (void)state;
    struct fake f = { .mode = FAKE_ANSWER, .expect_target = "gw.example.org:443",
                      .answer = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nHELLO" };
    spec_local(&ps, start_proxy(&f), NULL);
    int fd = proxy_connect(&ps, "gw.example.org", 443, 2000, err, sizeof(err));
    if (fd < 0)
        print_error("%s\n", err);
    assert_true(fd >= 0);
    assert_tunnel_works(fd);
    close(fd);
}

static void test_connect_ipv6_target(void **state)
{
    struct proxy_spec ps;
    char err[256];
    (void)state;
    struct fake f = { .mode = FAKE_ANSWER, .expect_target = "[2001:db8::1]:8443",
                      .answer = "HTTP/1.1 200 OK\r\n\r\nHELLO" };
    spec_local(&ps, start_proxy(&f), NULL);
    int fd = proxy_connect(&ps, "2001:db8::1", 8443, 2000, err, sizeof(err));
    if (fd < 0)
        print_error("%s\n", err);
    assert_true(fd >= 0);
    assert_tunnel_works(fd);
    close(fd);
}

static void connect_with_auth(const char *auth, const char *expect)
{
    struct proxy_spec ps;
    char err[256];
    struct fake f = { .mode = FAKE_ANSWER, .expect_target = "gw.example.org:443",
                      .expect_auth = expect, .answer = "HTTP/1.1 200 OK\r\n\r\nHELLO" };
    spec_local(&ps, start_proxy(&f), auth);
    int fd = proxy_connect(&ps, "gw.example.org", 443, 2000, err, sizeof(err));
    if (fd < 0)
        print_error("auth %s: %s\n", auth, err);
    assert_true(fd >= 0);
    assert_tunnel_works(fd);
    close(fd);
    teardown(NULL);
}

static void test_connect_basic_auth(void **state)
{
    (void)state;
    /* RFC 7617's example, and every base64 padding length */
    connect_with_auth("Aladdin:open sesame", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    connect_with_auth("a:b", "Basic YTpi");
    connect_with_auth("ab:c", "Basic YWI6Yw==");
    connect_with_auth("abc:d", "Basic YWJjOmQ=");
}

static void test_connect_env_to_wire(void **state)
{
    struct proxy_spec ps;
    char err[256], val[128];
    (void)state;
    struct fake f = { .mode = FAKE_ANSWER, .expect_target = "gw.example.org:443",
                      .expect_auth = "Basic dXNAZXI6cDpzcw==",
                      .answer = "HTTP/1.1 200 Connection established\r\n\r\nHELLO" };
    uint16_t port = start_proxy(&f);
    clear_env();
    snprintf(val, sizeof(val), "http://us%%40er:p%%3Ass@127.0.0.1:%u", port);
    setenv("https_proxy", val, 1);
    assert_int_equal(proxy_from_env("gw.example.org", &ps, err, sizeof(err)), 1);
    int fd = proxy_connect(&ps, "gw.example.org", 443, 2000, err, sizeof(err));
    if (fd < 0)
        print_error("%s\n", err);
    assert_true(fd >= 0);
    assert_tunnel_works(fd);
    close(fd);
}

static void expect_connect_error(const char *answer, const char *auth, int want_rc,
                                 const char *in_msg)
{
    struct proxy_spec ps;
    char err[512];
    struct fake f = { .mode = FAKE_ANSWER, .expect_target = "gw.example.org:443",
                      .answer = answer };
    if (auth)
        f.expect_auth = "Basic dXNlcjpzM2NyZXQ="; /* user:s3cret */
    spec_local(&ps, start_proxy(&f), auth);
    int rc = proxy_connect(&ps, "gw.example.org", 443, 2000, err, sizeof(err));
    if (rc != want_rc || !strstr(err, in_msg))
        print_error("rc %d: %s\n", rc, err);
    assert_int_equal(rc, want_rc);
    assert_non_null(strstr(err, in_msg));
    assert_null(strstr(err, "s3cret"));
    assert_null(strstr(err, "dXNlcjpzM2NyZXQ"));
    teardown(NULL);
}

static void test_connect_refused_status(void **state)
{
    (void)state;
    expect_connect_error("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", NULL,
                         -ECONNREFUSED, "refused CONNECT to gw.example.org:443: 403 Forbidden");
    expect_connect_error("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 5\r\n\r\nerror", NULL,
                         -ECONNREFUSED, "502 Bad Gateway");
    expect_connect_error("HTTP/1.1 101 Switching Protocols\r\n\r\n", NULL, -ECONNREFUSED,
                         "101 Switching Protocols");
    /* the message names the proxy */
    expect_connect_error("HTTP/1.1 403 Forbidden\r\n\r\n", NULL, -ECONNREFUSED,
                         "proxy 127.0.0.1:");
}

static void test_connect_407(void **state)
{
    (void)state;
    const char *a407 = "HTTP/1.1 407 Proxy Authentication Required\r\n"
                       "Proxy-Authenticate: Basic realm=\"site\"\r\n\r\n";
    expect_connect_error(a407, NULL, -EACCES, "wants credentials");
    expect_connect_error(a407, NULL, -EACCES, "407 Proxy Authentication Required");
    expect_connect_error(a407, "user:s3cret", -EACCES, "rejected the credentials");
}

static void test_connect_malformed_answer(void **state)
{
    (void)state;
    expect_connect_error("SSH-2.0-OpenSSH_9.2\r\n\r\n", NULL, -EPROTO, "malformed answer");
    expect_connect_error("HTTP/1.1 200 OK\n\n", NULL, -EPROTO, "malformed answer");
    expect_connect_error("HTTP/1.1 2000 OK\r\n\r\n", NULL, -EPROTO, "malformed answer");
    expect_connect_error("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
                         "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
                         "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
                         NULL, -EPROTO, "too many interim");
}

static void test_connect_closed_without_answer(void **state)
{
    struct proxy_spec ps;
    char err[256];
    (void)state;
    struct fake f = { .mode = FAKE_CLOSE, .expect_target = "gw.example.org:443" };
    spec_local(&ps, start_proxy(&f), NULL);
    int rc = proxy_connect(&ps, "gw.example.org", 443, 2000, err, sizeof(err));
    assert_int_equal(rc, -ECONNRESET);
    assert_non_null(strstr(err, "closed the connection without answering"));
    teardown(NULL);

    /* half a head, then EOF */
    struct fake g = { .mode = FAKE_ANSWER, .expect_target = "gw.example.org:443",
                      .answer = "HTTP/1.1 200 OK\r\n", .hangup = 1 };
    spec_local(&ps, start_proxy(&g), NULL);
    rc = proxy_connect(&ps, "gw.example.org", 443, 2000, err, sizeof(err));
    assert_int_equal(rc, -ECONNRESET);
    assert_non_null(strstr(err, "closed the connection without answering"));
}

static void test_connect_timeout(void **state)
{
    struct proxy_spec ps;
    char err[256];
    (void)state;
    struct fake f = { .mode = FAKE_SILENT, .expect_target = "gw.example.org:443" };
    spec_local(&ps, start_proxy(&f), NULL);
    int64_t t0 = now_mono_ms();
    int rc = proxy_connect(&ps, "gw.example.org", 443, 300, err, sizeof(err));
    int64_t dt = now_mono_ms() - t0;
    assert_int_equal(rc, -ETIMEDOUT);
    assert_non_null(strstr(err, "did not answer CONNECT to gw.example.org:443 within 300 ms"));
    assert_true(dt >= 290);
    assert_true(dt < 1500);
}

static void test_connect_oversize(void **state)
{
    struct proxy_spec ps;
    char err[256];
    (void)state;
    struct fake f = { .mode = FAKE_OVERSIZE, .expect_target = "gw.example.org:443" };
    spec_local(&ps, start_proxy(&f), NULL);
    int64_t t0 = now_mono_ms();
    int rc = proxy_connect(&ps, "gw.example.org", 443, 5000, err, sizeof(err));
    assert_int_equal(rc, -EMSGSIZE);
    assert_non_null(strstr(err, "too large"));
    assert_true(now_mono_ms() - t0 < 4000); /* refused on size, not on time */
}

static void test_connect_proxy_down(void **state)
{
    struct proxy_spec ps;
    char err[256];
    (void)state;
    spec_local(&ps, closed_port(), NULL);
    int rc = proxy_connect(&ps, "gw.example.org", 443, 1000, err, sizeof(err));
    assert_int_equal(rc, -ECONNREFUSED);
    assert_non_null(strstr(err, "cannot reach proxy"));
    assert_non_null(strstr(err, "refused"));
}

static void test_connect_bad_args(void **state)
{
    struct proxy_spec ps;
    char err[256];
    (void)state;
    /* a closed port: reaching the network would give -ECONNREFUSED instead */
    spec_local(&ps, closed_port(), NULL);
    assert_int_equal(proxy_connect(&ps, "gw.example.org\r\nX-Evil: 1", 443, 1000, err,
                                   sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "bad target"));
    assert_int_equal(proxy_connect(&ps, "gw.example.org 443", 443, 1000, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(proxy_connect(&ps, "a:b", 443, 1000, err, sizeof(err)), -EINVAL);
    assert_int_equal(proxy_connect(&ps, "[::1]", 443, 1000, err, sizeof(err)), -EINVAL);
    assert_int_equal(proxy_connect(&ps, "", 443, 1000, err, sizeof(err)), -EINVAL);
    assert_int_equal(proxy_connect(&ps, "gw.example.org", 0, 1000, err, sizeof(err)), -EINVAL);
    assert_int_equal(proxy_connect(&ps, "gw.example.org", 65536, 1000, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(proxy_connect(&ps, "gw.example.org", 443, 0, err, sizeof(err)), -EINVAL);
    ps.port = 0;
    assert_int_equal(proxy_connect(&ps, "gw.example.org", 443, 1000, err, sizeof(err)), -EINVAL);
    spec_local(&ps, 3128, NULL);
    memcpy(ps.host, "x\ry", 4);
    assert_int_equal(proxy_connect(&ps, "gw.example.org", 443, 1000, err, sizeof(err)), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_env_unset_and_precedence, teardown),
        cmocka_unit_test_teardown(test_env_forms, teardown),
        cmocka_unit_test_teardown(test_env_credentials, teardown),
        cmocka_unit_test_teardown(test_env_bad_values, teardown),
        cmocka_unit_test_teardown(test_env_no_proxy, teardown),
        cmocka_unit_test_teardown(test_tcp_connect, teardown),
        cmocka_unit_test_teardown(test_tcp_connect_refused, teardown),
        cmocka_unit_test_teardown(test_connect_relay_keeps_tunnel_bytes, teardown),
        cmocka_unit_test_teardown(test_connect_trickled_answer, teardown),
        cmocka_unit_test_teardown(test_connect_interim_and_http10, teardown),
        cmocka_unit_test_teardown(test_connect_ipv6_target, teardown),
        cmocka_unit_test_teardown(test_connect_basic_auth, teardown),
        cmocka_unit_test_teardown(test_connect_env_to_wire, teardown),
        cmocka_unit_test_teardown(test_connect_refused_status, teardown),
        cmocka_unit_test_teardown(test_connect_407, teardown),
        cmocka_unit_test_teardown(test_connect_malformed_answer, teardown),
        cmocka_unit_test_teardown(test_connect_closed_without_answer, teardown),
        cmocka_unit_test_teardown(test_connect_timeout, teardown),
        cmocka_unit_test_teardown(test_connect_oversize, teardown),
        cmocka_unit_test_teardown(test_connect_proxy_down, teardown),
        cmocka_unit_test_teardown(test_connect_bad_args, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
