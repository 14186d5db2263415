/* tunnel_dial — opening the byte stream to the gateway: TCP (directly or
 * through https_proxy, proxyconn.h), TLS on top of it, or the ssh child with
 * its pipe; and the ssh children's lifetime (spawn, status, reap).
 *
 * dial_ssh_prepare and dial_snapshot_env run on the caller's thread inside
 * agent_tunnel_open (they read the environment, which run.c changes later);
 * everything else on the tunnel's thread. Dialing blocks that thread,
 * bounded by TUNNEL_OPEN_TIMEOUT_MS. */
#include "tunnel-int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include "util.h"

#define SSH_WORDS_MAX 32

void dial_free_strv(char **v)
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
int dial_ssh_prepare(struct agent_tunnel *t, char *err, size_t errlen)
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
            dial_free_strv(argv);
            return errmsg(err, errlen, -E2BIG, "JOBGATE_SSH has more than %d words",
                          SSH_WORDS_MAX);
        }
        argv[n++] = xstrndup(p, w);
        p += w;
    }
    if (n == 0) {
        dial_free_strv(argv);
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

void dial_snapshot_env(struct agent_tunnel *t)
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
void dial_reap_children(struct agent_tunnel *t, int final)
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

void dial_reap_later(struct agent_tunnel *t, pid_t pid)
{
    (void)kill(pid, SIGTERM);
    if (t->nreap == MAX_REAP)
        dial_reap_children(t, 1);
    t->reap[t->nreap++] = pid;
}

/* Opens the byte stream to the gateway: ssh's pipe, or TCP (through the
 * proxy when one applies). A blocking fd, or -errno with why in err. */
int dial_connect(struct tconn *c, char *err, size_t errlen)
{
    struct agent_tunnel *t = c->t;
    if (t->via_ssh)
        return ssh_spawn(t, &c->ssh_pid, err, errlen);
    c->pin = trust_load_pin(t, &c->pinlen);
    if (t->have_proxy)
        return proxy_connect(&t->proxy, t->host, t->port, TUNNEL_OPEN_TIMEOUT_MS, err, errlen);
    return tcp_connect_timeout(t->host, t->port, TUNNEL_OPEN_TIMEOUT_MS, err, errlen);
}

/* Puts c->bev on fd: plain over ssh, else TLS (SNI, host name check, the
 * pinned certificate through the app data). 0, or -1 with fd closed. */
int dial_transport(struct tconn *c, int fd)
{
    struct agent_tunnel *t = c->t;
    (void)evutil_make_socket_nonblocking(fd);
    (void)fcntl(fd, F_SETFD, FD_CLOEXEC);

    if (t->via_ssh) {
        c->bev = bufferevent_socket_new(t->base, fd, BEV_OPT_CLOSE_ON_FREE);
        if (!c->bev)
            close(fd);
        return c->bev ? 0 : -1;
    }
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
    return c->bev ? 0 : -1;
}

/* ", ssh exited with status N" when the ssh child is gone (waiting briefly:
 * its end of the socket closes just before it exits); reaps it. */
void dial_ssh_status(struct tconn *c, char *buf, size_t len)
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
