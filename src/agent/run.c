/*
 * run — jobgate run: start an app on a private UNIX socket (or a loopback
 * port), wait until it listens, register it with the gateway, print its
 * link, and end the route when the app exits.
 *
 * The app runs in its own process group so that jobgate can stop it and
 * everything it started as one unit; signals that jobgate receives (terminal
 * ^C, a batch system's SIGTERM) are passed on to that group, and jobgate
 * leaves only after the app did, so the route never outlives the app by
 * more than the remove request.
 *
 * With -g GATEWAY or --via ssh:HOST the gateway is remote: the app is
 * published through the tunnel (tunnel.h), which runs on a thread of its
 * own; this file then never touches the control socket. Standard output is
 * written by both threads (ready and reconnect events), under out_mu.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cmd.h"
#include "procnet.h"
#include "ctl.h"
#include "agent_tunnel.h"
#include "util.h"

#define APP_NAME_MAX 64             /* control-protocol.md: 1-64 of [A-Za-z0-9._-] */
#define POLL_INTERVAL_MS 100        /* how often to try the app's socket */
#define PROGRESS_INTERVAL_MS 5000   /* how often to say that we are still waiting */
#define DEFAULT_TIMEOUT_S 120
#define KILL_GRACE_MS 5000          /* SIGTERM to SIGKILL */

#define PH_SOCKET "{socket}"
#define PH_PORT "{port}"

enum { OPT_TCP = 256, OPT_JSON, OPT_TTL, OPT_TIMEOUT, OPT_VIA, OPT_CA, OPT_PING_INTERVAL,
       OPT_PING_TIMEOUT };

struct run {
    char name[APP_NAME_MAX + 1];
    int tcp, json;
    int64_t ttl;                    /* 0: the gateway's default */
    int64_t timeout;                /* seconds; 0: wait for ever */
    const char *control;            /* control socket path (local mode) */
    const char *gateway, *via, *ca; /* remote mode: -g, --via, --ca */
    int64_t ping_interval, ping_timeout; /* seconds; 0: the tunnel's defaults */

    char dir[PATH_MAX];             /* private directory, "" when none */
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
    unsigned port;
    char where[PATH_MAX + 32];      /* the endpoint, for messages */

    pid_t pid;                      /* the app (and its process group), 0 before start */
    int wstatus;                    /* from waitpid, once reaped */
};

/* Written by the signal handler: the app's process group while it may be
 * signalled (cleared before the app is reaped, so that a recycled pid is
 * never hit), and the last terminating signal received. */
static volatile sig_atomic_t app_pgid;
static volatile sig_atomic_t got_signal;

/* Standard output: this thread and the tunnel's both print events. */
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

static const int forwarded_signals[] = {SIGINT, SIGTERM, SIGHUP};

static void on_signal(int sig)
{
    int saved = errno;
    got_signal = sig;
    /* SIGCONT too, as shells do: an app stopped by SIGTTIN (see
     * app_wait_exit) would otherwise never see the signal. */
    if (app_pgid > 0) {
        (void)kill(-(pid_t)app_pgid, sig);
        (void)kill(-(pid_t)app_pgid, SIGCONT);
    }
    errno = saved;
}

static void usage_run(FILE *f)
{
    fputs("usage: jobgate run [-n NAME] [--tcp] [--json] [--ttl DURATION] [--timeout DURATION]\n"
          "                   [-g https://HOST[:PORT] [--ca FILE] | --via ssh:HOST]\n"
          "                   [--ping-interval DURATION] [--ping-timeout DURATION] -- CMD ARG...\n"
          "\n"
          "Starts CMD, waits until it listens, publishes it through the gateway and prints a\n"
          "one-time link that opens it in a browser. The route ends when CMD exits; jobgate\n"
          "exits with CMD's status. SIGINT, SIGTERM and SIGHUP are passed on to CMD.\n"
          "\n"
          "In CMD and its arguments, {socket} becomes the path of a private UNIX socket for\n"
          "the app to listen on (also in $JOBGATE_SOCKET); with --tcp, {port} becomes a free\n"
          "port on 127.0.0.1 (also in $JOBGATE_PORT). $JOBGATE_URL_PREFIX is \"/\".\n"
          "\n"
          "  -n, --name NAME       name shown in listings (default: CMD's file name)\n"
          "      --tcp             listen on a loopback TCP port instead of a UNIX socket;\n"
          "                        every user of this host can reach it, so the app must\n"
          "                        keep its own authentication\n"
          "      --json            print events as JSON objects, one per line (CMD's\n"
          "                        standard output then goes to standard error)\n"
          "      --ttl DURATION    lifetime of the first link (1s to 7d, e.g. 30m)\n"
          "      --timeout DURATION\n"
          "                        how long to wait for CMD to listen (default 120s; 0: no limit)\n"
          "  -g, --gateway https://HOST[:PORT]\n"
          "                        publish through the gateway at HOST (port 443 by default)\n"
          "                        over a tunnel that this process keeps open (https_proxy is\n"
          "                        honoured); without -g and --via, the local gateway\n"
          "      --ca FILE         trust the gateway's certificate through the CA certificates\n"
          "                        in FILE (default: $JOBGATE_CA, else the system's)\n"
          "      --via ssh:HOST    publish through the gateway on HOST, reached with\n"
          "                        'ssh HOST jobgate tunnel --stdio' ($JOBGATE_SSH,\n"
          "                        $JOBGATE_REMOTE_JOBGATE)\n"
          "      --ping-interval DURATION\n"
          "                        how often to check the tunnel (default 15s)\n"
          "      --ping-timeout DURATION\n"
          "                        reconnect when a check is not answered within this\n"
          "                        (default 30s)\n"
          "  -h, --help            show this help\n"
          "\n"
          "example:\n"
          "  jobgate run -- jupyter lab --no-browser --sock {socket} \\\n"
          "      --ServerApp.allow_remote_access=True --ServerApp.token=''\n",
          f);
}

/* ---- output --------------------------------------------------------------- */

/* One JSON event per line, flushed at once: a portal reads these as they
 * come. A reader that went away must not take the app down with it, so
 * write errors are ignored (SIGPIPE is ignored too). */
static void emit_json(json_t *ev)
{
    if (!ev)
        return;
    char *s = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(ev);
    if (!s)
        return;
    pthread_mutex_lock(&out_mu);
    (void)printf("%s\n", s);
    (void)fflush(stdout);
    pthread_mutex_unlock(&out_mu);
    free(s);
}

/* "10 min" style, for how long a link stays valid. */
static void fmt_span(int64_t secs, char *out, size_t outlen)
{
    if (secs < 0)
        secs = 0;
    if (secs < 120)
        (void)xsnprintf(out, outlen, "%" PRId64 " s", secs);
    else if (secs < 2 * 3600)
        (void)xsnprintf(out, outlen, "%" PRId64 " min", (secs + 30) / 60);
    else if (secs < 2 * 86400)
        (void)xsnprintf(out, outlen, "%" PRId64 " h", (secs + 1800) / 3600);
    else
        (void)xsnprintf(out, outlen, "%" PRId64 " days", (secs + 43200) / 86400);
}

/* ---- names and arguments -------------------------------------------------- */

static int name_char_ok(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '-';
}

static int name_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > APP_NAME_MAX)
        return 0;
    for (const char *p = s; *p; p++)
        if (!name_char_ok(*p))
            return 0;
    return 1;
}

/* The file name of CMD, made acceptable to the gateway. */
static void default_name(const char *cmd, char out[APP_NAME_MAX + 1])
{
    const char *base = strrchr(cmd, '/');
    size_t n = 0;

    base = base ? base + 1 : cmd;
    for (const char *p = base; *p && n < APP_NAME_MAX; p++)
        out[n++] = name_char_ok(*p) ? *p : '-';
    out[n] = '\0';
    if (n == 0)
        memcpy(out, "app", sizeof("app"));
}

/* Replaces every placeholder in arg; a NULL value leaves that placeholder. */
static char *subst(const char *arg, const char *sock, const char *port)
{
    const size_t lsock = sizeof(PH_SOCKET) - 1, lport = sizeof(PH_PORT) - 1;
    size_t vsock = sock ? strlen(sock) : 0, vport = port ? strlen(port) : 0;
    size_t n = 0;

    /* Arguments are bounded by ARG_MAX, so the sum cannot overflow. */
    for (const char *p = arg; *p;) {
        if (sock && strncmp(p, PH_SOCKET, lsock) == 0) {
            n += vsock;
            p += lsock;
        } else if (port && strncmp(p, PH_PORT, lport) == 0) {
            n += vport;
            p += lport;
        } else {
            n++;
            p++;
        }
    }
    char *out = xmalloc(n + 1), *o = out;
    for (const char *p = arg; *p;) {
        if (sock && strncmp(p, PH_SOCKET, lsock) == 0) {
            memcpy(o, sock, vsock);
            o += vsock;
            p += lsock;
        } else if (port && strncmp(p, PH_PORT, lport) == 0) {
            memcpy(o, port, vport);
            o += vport;
            p += lport;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

static int args_contain(char **argv, int argc, const char *needle)
{
    for (int i = 0; i < argc; i++)
        if (strstr(argv[i], needle))
            return 1;
    return 0;
}

/* ---- where the app listens ------------------------------------------------ */

/*
 * Opens path without following a symlink and checks that it is a directory
 * of ours that nobody else can write to (exact: mode must be 0700). A
 * directory that we just made gets 0700 first, whatever the umask did.
 * Returns 0, or -1 after printing why.
 */
static int check_private_dir(const char *path, int just_made, int exact)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP || errno == ENOTDIR)
            cli_error("%s is not a directory (or is a symbolic link); refusing to use it", path);
        else
            cli_error("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        cli_error("cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        cli_error("%s belongs to uid %lu, not to you; refusing to use it", path,
                  (unsigned long)st.st_uid);
        close(fd);
        return -1;
    }
    if (just_made && (st.st_mode & 07777) != 0700) {
        if (fchmod(fd, 0700) < 0 || fstat(fd, &st) < 0) {
            cli_error("cannot set the mode of %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    close(fd);
    if (exact ? (st.st_mode & 07777) != 0700 : (st.st_mode & 022) != 0) {
        cli_error("%s has mode %04o; it must be %s; refusing to use it", path,
                  (unsigned)(st.st_mode & 07777), exact ? "0700" : "writable only by you");
        return -1;
    }
    return 0;
}

/*
 * Makes the private directory <base>/run-XXXXXX and the socket path in it.
 * Only we can enter it, so only we (and the gateway, which checks that the
 * socket's directory is ours) can connect to the app.
 */
static int make_private_socket(struct run *r)
{
    char base[PATH_MAX];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    int exact;

    if (xdg && xdg[0] == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* The runtime directory is the user's own; the gateway may have made
         * jobgate/ in it already (its control socket lives there). */
        exact = 0;
        if (xsnprintf(base, sizeof(base), "%s/jobgate", xdg) < 0) {
            cli_error("XDG_RUNTIME_DIR is too long");
            return -1;
        }
    } else {
        /* /tmp is shared: only a directory that is exactly ours will do. */
        exact = 1;
        if (xsnprintf(base, sizeof(base), "/tmp/jobgate-%lu", (unsigned long)geteuid()) < 0) {
            cli_error("temporary directory name too long");
            return -1;
        }
    }
    int made = mkdir(base, 0700) == 0;
    if (!made && errno != EEXIST) {
        cli_error("cannot create %s: %s", base, strerror(errno));
        return -1;
    }
    if (check_private_dir(base, made, exact) < 0)
        return -1;

    char tmpl[PATH_MAX];
    if (xsnprintf(tmpl, sizeof(tmpl), "%s/run-XXXXXX", base) < 0) {
        cli_error("directory name too long: %s/run-XXXXXX", base);
        return -1;
    }
    if (!mkdtemp(tmpl)) {
        cli_error("cannot create a directory in %s: %s", base, strerror(errno));
        return -1;
    }
    /* Recorded before the checks so that cleanup removes it if they fail. */
    memcpy(r->dir, tmpl, strlen(tmpl) + 1);
    if (check_private_dir(r->dir, 1, 1) < 0)
        return -1;
    if (xsnprintf(r->sock, sizeof(r->sock), "%s/app.sock", r->dir) < 0) {
        cli_error("socket path %s/app.sock is longer than %zu bytes; set XDG_RUNTIME_DIR to a "
                  "shorter directory",
                  r->dir, sizeof(r->sock) - 1);
        return -1;
    }
    (void)xsnprintf(r->where, sizeof(r->where), "%s", r->sock);
    return 0;
}

/* A port that is free now. Another process may take it before the app binds
 * it; the gateway then refuses the registration (the port is not ours). */
static int pick_port(struct run *r)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        cli_error("socket: %s", strerror(errno));
        return -1;
    }
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        cli_error("cannot find a free port on 127.0.0.1: %s", strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    r->port = ntohs(a.sin_port);
    (void)xsnprintf(r->where, sizeof(r->where), "127.0.0.1:%u", r->port);
    return 0;
}

/*
 * One attempt to connect to the app: 1 it accepts connections, 0 not yet.
 * Non-blocking, so that a stuck listener cannot stall the wait loop.
 */
static int app_listening(const struct run *r)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    int fd;

    memset(&ss, 0, sizeof(ss));
    if (r->tcp) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a->sin_port = htons((uint16_t)r->port);
        sslen = sizeof(*a);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    } else {
        struct sockaddr_un *a = (struct sockaddr_un *)&ss;
        a->sun_family = AF_UNIX;
        memcpy(a->sun_path, r->sock, strlen(r->sock) + 1);
        sslen = sizeof(*a);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    }
    if (fd < 0)
        return 0;

    int ok = 0;
    if (connect(fd, (struct sockaddr *)&ss, sslen) == 0) {
        ok = 1;
    } else if (errno == EAGAIN) {
        ok = 1; /* AF_UNIX: listening, backlog full */
    } else if (errno == EINPROGRESS) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT, .revents = 0};
        int soerr = 0;
        socklen_t elen = sizeof(soerr);
        if (poll(&pfd, 1, POLL_INTERVAL_MS) > 0 &&
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &elen) == 0 && soerr == 0)
            ok = 1;
    }
    close(fd);
    return ok;
}

/* ---- the app process ------------------------------------------------------ */

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    /* An interruption by a signal just shortens one wait; callers loop. */
    (void)nanosleep(&ts, NULL);
}

/* 1 if the app has exited (it stays a zombie, so its process group id
 * cannot be reused yet), 0 if it still runs. */
static int app_exited(pid_t pid)
{
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT | WNOHANG) == 0)
            return si.si_pid == pid;
        if (errno == EINTR)
            continue;
        return 1; /* ECHILD: nothing left to wait for */
    }
}

/*
 * Waits until the app exits, without reaping it. The app is not in the
 * terminal's foreground process group, so if it reads from the terminal it
 * is stopped by SIGTTIN and would wait for ever, unnoticed: say so once.
 */
static void app_wait_exit(const struct run *r)
{
    int told = 0;

    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)r->pid, &si, WEXITED | WSTOPPED | WNOWAIT) < 0) {
            if (errno == EINTR)
                continue;
            return; /* ECHILD: nothing left to wait for */
        }
        if (si.si_code != CLD_STOPPED && si.si_code != CLD_TRAPPED)
            return;
        /* Consume the stop report, or the next waitid returns it again. */
        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t)r->pid, &si, WSTOPPED | WNOHANG) < 0 && errno != EINTR)
            return;
        if (!told && si.si_pid == r->pid && (si.si_status == SIGTTIN || si.si_status == SIGTTOU)) {
            cli_error("%s is stopped: it used the terminal, which stays with jobgate; run it with "
                      "input from /dev/null, or press ^C to end it",
                      r->name);
            told = 1;
        }
    }
}

/* Reaps the app and returns the exit status that jobgate passes on. */
static int app_reap(struct run *r)
{
    int st = 0;
    pid_t w;

    app_pgid = 0; /* before the pid can be reused */
    do {
        w = waitpid(r->pid, &st, 0);
    } while (w < 0 && errno == EINTR);
    r->pid = 0;
    if (w < 0)
        return 1;
    r->wstatus = st;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return 1;
}

/* Stops the app's whole group: SIGTERM, then SIGKILL if the app is still
 * there after the grace period. Returns the app's exit status. */
static int app_stop(struct run *r)
{
    /* kill(-0) would hit jobgate's own group. */
    if (r->pid <= 0)
        return 1;
    (void)kill(-r->pid, SIGTERM);
    (void)kill(-r->pid, SIGCONT); /* a stopped app would not see the SIGTERM */
    int64_t deadline = now_mono_ms() + KILL_GRACE_MS;
    while (!app_exited(r->pid) && now_mono_ms() < deadline)
        sleep_ms(POLL_INTERVAL_MS);
    if (!app_exited(r->pid))
        (void)kill(-r->pid, SIGKILL);
    return app_reap(r);
}

/*
 * Starts argv in its own process group. Returns 0, or the status to exit
 * with after printing why (127 when it cannot be executed).
 */
static int app_start(struct run *r, char **argv, const sigset_t *oldmask)
{
    int pfd[2];

    /* The child reports an exec failure through a close-on-exec pipe: EOF
     * means the exec worked. */
    if (pipe2(pfd, O_CLOEXEC) < 0) {
        cli_error("pipe: %s", strerror(errno));
        return 1;
    }
    (void)fflush(stdout);
    (void)fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        cli_error("fork: %s", strerror(errno));
        close(pfd[0]);
        close(pfd[1]);
        return 1;
    }
    if (pid == 0) {
        close(pfd[0]);
        (void)setpgid(0, 0);
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < JG_ARRAY_LEN(forwarded_signals); i++)
            (void)sigaction(forwarded_signals[i], &sa, NULL);
        (void)sigaction(SIGPIPE, &sa, NULL);
        (void)sigprocmask(SIG_SETMASK, oldmask, NULL);
        /* With --json our stdout carries only JSON lines for a program to
         * parse; what the app prints there would break that, so it goes to
         * stderr instead. */
        int e;
        if (r->json && dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
            e = errno;
        } else {
            execvp(argv[0], argv);
            e = errno;
        }
        ssize_t w;
        do {
            w = write(pfd[1], &e, sizeof(e));
        } while (w < 0 && errno == EINTR);
        _exit(127);
    }

    close(pfd[1]);
    /* Both sides set the group, so it exists before either one goes on;
     * EACCES means the child has exec'd, and it did it itself. */
    if (setpgid(pid, pid) < 0 && errno != EACCES && errno != ESRCH)
        cli_error("setpgid: %s", strerror(errno));
    r->pid = pid;
    app_pgid = pid;
    (void)sigprocmask(SIG_SETMASK, oldmask, NULL);

    int e = 0;
    ssize_t n;
    do {
        n = read(pfd[0], &e, sizeof(e));
    } while (n < 0 && errno == EINTR);
    close(pfd[0]);
    if (n == (ssize_t)sizeof(e)) {
        (void)app_reap(r);
        cli_error("cannot run '%s': %s", argv[0], strerror(e));
        return 127;
    }
    return 0;
}

/* Waits until the app listens: -1 ready, else the status to exit with
 * (which may be 0: an app that exits at once, successfully). */
static int wait_listening(struct run *r)
{
    int64_t start = now_mono_ms();
    int64_t next_progress = start + PROGRESS_INTERVAL_MS;

    for (;;) {
        if (app_exited(r->pid)) {
            int st = app_reap(r);
            if (WIFSIGNALED(r->wstatus))
                cli_error("%s was killed by signal %d (%s) before it listened on %s", r->name,
                          WTERMSIG(r->wstatus), strsignal(WTERMSIG(r->wstatus)), r->where);
            else
                cli_error("%s exited with status %d before it listened on %s", r->name, st,
                          r->where);
            return st;
        }
        if (app_listening(r)) {
            if (!r->tcp)
                return -1; /* our private directory: nobody else can listen there */
            /* Any user can listen on a TCP port: it must be the app's own (I2). */
            char why[256];
            int own = procnet_port_in_tree("/proc", (uint16_t)r->port, r->pid, why, sizeof(why));
            if (own == 1)
                return -1;
            if (own == 0) {
                cli_error("refusing to publish %s: %s", r->where, why);
                (void)app_stop(r);
                return 1;
            }
            /* -ENOENT: the listener went away between our connect and the scan; wait on. */
        }
        int64_t now = now_mono_ms();
        if (r->timeout > 0 && now - start >= r->timeout * 1000) {
            cli_error("%s did not listen on %s within %" PRId64 " s; stopping it", r->name,
                      r->where, r->timeout);
            (void)app_stop(r);
            return 1;
        }
        if (now >= next_progress) {
            int64_t secs = (next_progress - start) / 1000;
            if (r->json)
                emit_json(json_pack("{s:s,s:I}", "event", "waiting", "seconds", (json_int_t)secs));
            else
                cli_error("waiting for %s to listen on %s (%" PRId64 "s)", r->name, r->where,
                          secs);
            next_progress += PROGRESS_INTERVAL_MS;
        }
        sleep_ms(POLL_INTERVAL_MS);
    }
}

/* ---- talking to the gateway ------------------------------------------------ */

static int gateway_hello(const struct run *r)
{
    char err[512];
    json_t *reply;
    json_t *req = json_pack("{s:s}", "op", "hello");
    if (!req) {
        cli_error("cannot build the request");
        return -1;
    }
    int rc = ctl_call(r->control, req, &reply, err, sizeof(err));
    json_decref(req);
    json_decref(reply);
    if (rc < 0) {
        cli_error("%s", err);
        return -1;
    }
    return 0;
}

/* Registers the app; returns the answer (caller frees) or NULL after
 * printing why. */
static json_t *gateway_register(const struct run *r)
{
    char err[512];
    json_t *reply;
    json_t *req = json_pack("{s:s,s:s}", "op", "register", "name", r->name);
    int bad = !req;

    if (!bad && r->tcp)
        bad = json_object_set_new(req, "port", json_integer(r->port)) < 0;
    else if (!bad)
        bad = json_object_set_new(req, "socket", json_string(r->sock)) < 0;
    if (!bad)
        bad = json_object_set_new(req, "pid", json_integer(getpid())) < 0;
    if (!bad && r->ttl > 0)
        bad = json_object_set_new(req, "ttl", json_integer(r->ttl)) < 0;
    if (bad) {
        /* json_string fails on a path that is not UTF-8. */
        json_decref(req);
        cli_error("cannot build the register request (is %s valid UTF-8?)", r->where);
        return NULL;
    }
    int rc = ctl_call(r->control, req, &reply, err, sizeof(err));
    json_decref(req);
    if (rc < 0) {
        cli_error("%s", err);
        json_decref(reply);
        return NULL;
    }
    if (!json_is_string(json_object_get(reply, "alias")) ||
        !json_is_string(json_object_get(reply, "url")) ||
        !json_is_string(json_object_get(reply, "link"))) {
        cli_error("bad answer from the gateway: no alias, url or link");
        /* Without an alias we cannot take the route back; the gateway drops
         * it anyway when this process is gone (it knows our pid). */
        json_decref(reply);
        return NULL;
    }
    return reply;
}

static void gateway_remove(const struct run *r, const char *alias)
{
    char err[512];
    json_t *reply;
    json_t *req = json_pack("{s:s,s:s}", "op", "remove", "alias", alias);
    if (!req)
        return;
    int rc = ctl_call(r->control, req, &reply, err, sizeof(err));
    json_decref(req);
    /* not_found: the gateway already dropped it (restart, rm, pid check). */
    if (rc == -EREMOTEIO && strcmp(ctl_error_code(reply), "not_found") == 0)
        rc = 0;
    json_decref(reply);
    if (rc < 0)
        cli_error("could not remove %s from the gateway: %s", alias, err);
}

static void print_ready(const struct run *r, const json_t *reply)
{
    const char *alias = json_string_value(json_object_get(reply, "alias"));
    const char *name = json_string_value(json_object_get(reply, "name"));
    const char *url = json_string_value(json_object_get(reply, "url"));
    const char *link = json_string_value(json_object_get(reply, "link"));
    json_t *expires = json_object_get(reply, "expires");

    if (!name)
        name = r->name;
    if (r->json) {
        json_t *ev = json_pack("{s:s,s:s,s:s,s:s,s:s}", "event", "ready", "alias", alias, "name",
                               name, "url", url, "link", link);
        if (ev && json_is_integer(expires))
            (void)json_object_set(ev, "expires", expires);
        emit_json(ev);
        return;
    }
    char *pname = cli_printable(name), *purl = cli_printable(url), *plink = cli_printable(link);
    char note[64] = "(one-time)";
    if (json_is_integer(expires)) {
        char span[32];
        fmt_span((int64_t)json_integer_value(expires) - now_real(), span, sizeof(span));
        (void)xsnprintf(note, sizeof(note), "(one-time, expires in %s)", span);
    }
    pthread_mutex_lock(&out_mu);
    (void)printf("jobgate: %s is ready\n  url:  %s\n  link: %s   %s\n", pname, purl, plink, note);
    (void)fflush(stdout);
    pthread_mutex_unlock(&out_mu);
    free(pname);
    free(purl);
    free(plink);
}

/* ---- through a tunnel (-g, --via) -------------------------------------------- */

/* From the tunnel's thread: reconnects on stderr (or as JSON events), an
 * app registered anew like the first ready. */
static void on_tunnel_event(void *arg, const struct agent_tunnel_event *ev)
{
    const struct run *r = arg;

    if (strcmp(ev->event, "ready") == 0 && ev->reply) {
        print_ready(r, ev->reply);
    } else if (r->json && strcmp(ev->event, "reconnecting") == 0) {
        json_t *j = json_pack("{s:s,s:s,s:f,s:i}", "event", "reconnecting", "reason",
                              ev->reason ? ev->reason : "", "retry_in", ev->retry_in, "attempt",
                              (int)ev->attempt);
        emit_json(j);
    } else if (r->json && strcmp(ev->event, "reconnected") == 0) {
        emit_json(json_pack("{s:s}", "event", "reconnected"));
    } else if (ev->message) {
        cli_error("%s", ev->message);
    }
}

static struct agent_tunnel *tunnel_open(struct run *r)
{
    struct agent_tunnel_opts o;
    struct agent_tunnel *t = NULL;
    char err[1024];

    memset(&o, 0, sizeof(o));
    o.gateway = r->gateway;
    o.via = r->via;
    o.ca_file = r->ca;
    o.ping_interval_ms = r->ping_interval * 1000;
    o.ping_timeout_ms = r->ping_timeout * 1000;
    o.on_event = on_tunnel_event;
    o.event_arg = r;
    if (agent_tunnel_open(&o, &t, err, sizeof(err)) < 0) {
        cli_error("%s", err);
        return NULL;
    }
    return t;
}

static json_t *tunnel_register(const struct run *r, struct agent_tunnel *t)
{
    char err[1024];
    json_t *reply = NULL;
    if (agent_tunnel_register(t, r->name, r->tcp ? NULL : r->sock, r->port, r->ttl, &reply, err,
                              sizeof(err)) < 0) {
        cli_error("%s", err);
        return NULL;
    }
    return reply;
}

/* ---- the command ------------------------------------------------------------ */

static void cleanup_files(const struct run *r)
{
    if (r->dir[0] == '\0')
        return;
    if (r->sock[0] != '\0' && unlink(r->sock) < 0 && errno != ENOENT)
        cli_error("cannot remove %s: %s", r->sock, strerror(errno));
    /* Not recursive: anything else the app left there is the user's to see. */
    if (rmdir(r->dir) < 0 && errno != ENOENT)
        cli_error("cannot remove %s: %s", r->dir, strerror(errno));
}

static int install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    /* No SA_RESTART: waits must notice signals (they loop on EINTR). */
    for (size_t i = 0; i < JG_ARRAY_LEN(forwarded_signals); i++)
        if (sigaction(forwarded_signals[i], &sa, NULL) < 0)
            return -1;
    /* A closed stdout (the reader of --json went away) must not kill jobgate
     * and leave the app without anyone to end its route. */
    sa.sa_handler = SIG_IGN;
    return sigaction(SIGPIPE, &sa, NULL);
}

/* Parses the options into r; returns -1 to go on, or an exit status. */
static int parse_options(struct run *r, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"name", required_argument, NULL, 'n'},
        {"tcp", no_argument, NULL, OPT_TCP},
        {"json", no_argument, NULL, OPT_JSON},
        {"ttl", required_argument, NULL, OPT_TTL},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"gateway", required_argument, NULL, 'g'},
        {"via", required_argument, NULL, OPT_VIA},
        {"ca", required_argument, NULL, OPT_CA},
        {"ping-interval", required_argument, NULL, OPT_PING_INTERVAL},
        {"ping-timeout", required_argument, NULL, OPT_PING_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    char host[256], err[512];
    unsigned port;

    opterr = 0;
    /* '+': the first non-option word is CMD; its own options are not ours. */
    while ((c = getopt_long(argc, argv, "+:n:g:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (!name_valid(optarg))
                return cli_usage_error("run", "bad name '%s': use 1-%d of A-Z a-z 0-9 . _ -",
                                       optarg, APP_NAME_MAX);
            memcpy(r->name, optarg, strlen(optarg) + 1);
            break;
        case OPT_TCP: r->tcp = 1; break;
        case OPT_JSON: r->json = 1; break;
        case OPT_TTL:
            if (parse_link_ttl("run", optarg, &r->ttl) != 0)
                return EXIT_USAGE;
            break;
        case OPT_TIMEOUT:
            if (parse_duration(optarg, &r->timeout) < 0)
                return cli_usage_error("run", "bad --timeout '%s': e.g. 30s, 10m, 2h (0: no limit)",
                                       optarg);
            break;
        case 'g':
            if (agent_tunnel_parse_gateway(optarg, host, sizeof(host), &port, err,
                                           sizeof(err)) < 0)
                return cli_usage_error("run", "%s", err);
            r->gateway = optarg;
            break;
        case OPT_VIA:
            if (agent_tunnel_parse_via(optarg, host, sizeof(host), err, sizeof(err)) < 0)
                return cli_usage_error("run", "%s", err);
            r->via = optarg;
            break;
        case OPT_CA:
            if (optarg[0] == '\0')
                return cli_usage_error("run", "option '--ca' needs a file name");
            r->ca = optarg;
            break;
        case OPT_PING_INTERVAL:
        case OPT_PING_TIMEOUT: {
            int64_t *v = c == OPT_PING_INTERVAL ? &r->ping_interval : &r->ping_timeout;
            if (parse_duration(optarg, v) < 0 || *v < 1 || *v > 86400)
                return cli_usage_error("run", "bad --%s '%s': 1s to 1d, e.g. 15s",
                                       c == OPT_PING_INTERVAL ? "ping-interval" : "ping-timeout",
                                       optarg);
            break;
        }
        case 'h':
            usage_run(stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        default:
            return cli_getopt_error("run", c, argc, argv);
        }
    }
    if (r->gateway && r->via)
        return cli_usage_error("run", "give either -g or --via, not both");
    if (r->ca && !r->gateway)
        return cli_usage_error("run", "--ca goes with -g");
    if ((r->ping_interval || r->ping_timeout) && !r->gateway && !r->via)
        return cli_usage_error("run", "--ping-interval and --ping-timeout go with -g or --via");
    if (optind >= argc)
        return cli_usage_error("run", "missing the command to run (jobgate run -- CMD ARG...)");
    if (argv[optind][0] == '\0')
        return cli_usage_error("run", "empty command");
    if (r->tcp && args_contain(argv + optind, argc - optind, PH_SOCKET))
        return cli_usage_error("run", "'%s' in the command cannot be used with --tcp (use %s)",
                               PH_SOCKET, PH_PORT);
    if (!r->tcp && args_contain(argv + optind, argc - optind, PH_PORT))
        return cli_usage_error("run", "'%s' in the command needs --tcp", PH_PORT);
    return -1;
}

int cmd_run(int argc, char **argv)
{
    struct run r;
    sigset_t fwd, oldmask;
    char portstr[16];
    char **app_argv = NULL;
    int app_argc = 0;
    int status = 1;
    json_t *reg = NULL;
    struct agent_tunnel *tunnel = NULL;

    memset(&r, 0, sizeof(r));
    r.timeout = DEFAULT_TIMEOUT_S;
    int rc = parse_options(&r, argc, argv);
    if (rc >= 0)
        return rc;
    char **cmd = argv + optind;
    int ncmd = argc - optind;
    if (r.name[0] == '\0')
        default_name(cmd[0], r.name);

    /* Before anything is started: no point in an app nobody can reach. */
    if (r.gateway || r.via) {
        tunnel = tunnel_open(&r);
        if (!tunnel)
            return 1;
    } else {
        r.control = cli_control_socket();
        if (!r.control)
            return 1;
        if (gateway_hello(&r) < 0)
            return 1;
    }
    /* From here on a signal must not end jobgate before it has cleaned up;
     * until now the default action (exit) was right, also while the hello
     * waited for a slow gateway. */
    if (install_signals() < 0) {
        cli_error("sigaction: %s", strerror(errno));
        agent_tunnel_close(tunnel);
        return 1;
    }

    if ((r.tcp ? pick_port(&r) : make_private_socket(&r)) < 0)
        goto out;

    app_argv = xcalloc((size_t)ncmd + 1, sizeof(*app_argv));
    if (r.tcp)
        (void)xsnprintf(portstr, sizeof(portstr), "%u", r.port);
    for (app_argc = 0; app_argc < ncmd; app_argc++)
        app_argv[app_argc] =
            subst(cmd[app_argc], r.tcp ? NULL : r.sock, r.tcp ? portstr : NULL);
    /* Set here rather than in the child: the parent needs none of these, and
     * setenv after fork is not async-signal-safe in general. The other
     * variable is dropped in case jobgate itself runs under jobgate. */
    if ((r.tcp ? setenv("JOBGATE_PORT", portstr, 1) : setenv("JOBGATE_SOCKET", r.sock, 1)) < 0 ||
        unsetenv(r.tcp ? "JOBGATE_SOCKET" : "JOBGATE_PORT") < 0 ||
        setenv("JOBGATE_URL_PREFIX", "/", 1) < 0) {
        cli_error("setenv: %s", strerror(errno));
        goto out;
    }

    /* Signals stay blocked from here until the child's pid is recorded, so
     * that none slips between fork and forwarding. */
    sigemptyset(&fwd);
    for (size_t i = 0; i < JG_ARRAY_LEN(forwarded_signals); i++)
        sigaddset(&fwd, forwarded_signals[i]);
    if (sigprocmask(SIG_BLOCK, &fwd, &oldmask) < 0) {
        cli_error("sigprocmask: %s", strerror(errno));
        goto out;
    }
    if (got_signal) {
        (void)sigprocmask(SIG_SETMASK, &oldmask, NULL);
        status = 128 + got_signal;
        goto out;
    }
    rc = app_start(&r, app_argv, &oldmask);
    if (rc != 0) {
        status = rc;
        goto exit_event;
    }

    rc = wait_listening(&r);
    if (rc >= 0) {
        status = rc;
        goto exit_event;
    }

    reg = tunnel ? tunnel_register(&r, tunnel) : gateway_register(&r);
    if (!reg) {
        cli_error("stopping %s", r.name);
        (void)app_stop(&r);
        status = 1;
        goto exit_event;
    }
    print_ready(&r, reg);

    app_wait_exit(&r);
    status = app_reap(&r);
    if (tunnel) {
        agent_tunnel_close(tunnel); /* unregisters */
        tunnel = NULL;
    } else {
        gateway_remove(&r, json_string_value(json_object_get(reg, "alias")));
    }

exit_event:
    if (r.json)
        emit_json(json_pack("{s:s,s:i}", "event", "exit", "status", status));
out:
    if (r.pid > 0) /* only on paths that have not stopped it yet */
        status = app_stop(&r);
    agent_tunnel_close(tunnel);
    cleanup_files(&r);
    json_decref(reg);
    for (int i = 0; i < app_argc; i++)
        free(app_argv[i]);
    free(app_argv);
    return status;
}
