/*
 * run_app — the process of `jobgate run`'s app: started in its own process
 * group so that jobgate can stop it and everything it started as one unit;
 * the signals jobgate receives (terminal ^C, a batch system's SIGTERM) are
 * passed on to that group; waits until it listens (for --tcp, on a port of
 * its own process tree: procnet.h), then until it ends; stops it (SIGTERM,
 * then SIGKILL) when it must.
 *
 * Main thread only, but for app_end (any thread); the signal handler
 * touches only app_pgid and got_signal. The tunnel's thread blocks the forwarded signals, so they
 * always arrive here.
 */
#include "run.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cmd.h"
#include "procnet.h"
#include "util.h"

#define POLL_INTERVAL_MS 100        /* how often to try the app's socket */
#define PROGRESS_INTERVAL_MS 5000   /* how often to say that we are still waiting */
#define KILL_GRACE_MS 5000          /* SIGTERM to SIGKILL */

/* Written by the signal handler: the app's process group while it may be
 * signalled (cleared before the app is reaped, so that a recycled pid is
 * never hit), and the last terminating signal received. */
static volatile sig_atomic_t app_pgid;
static volatile sig_atomic_t got_signal;

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

void app_end(void)
{
    if (app_pgid > 0) {
        (void)kill(-(pid_t)app_pgid, SIGTERM);
        (void)kill(-(pid_t)app_pgid, SIGCONT);
    }
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
void app_wait_exit(const struct run *r)
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
int app_reap(struct run *r)
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
int app_stop(struct run *r)
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
int app_start(struct run *r, char **argv, const sigset_t *oldmask)
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
int app_wait_listening(struct run *r)
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
                run_emit_json(json_pack("{s:s,s:I}", "event", "waiting", "seconds", (json_int_t)secs));
            else
                cli_error("waiting for %s to listen on %s (%" PRId64 "s)", r->name, r->where,
                          secs);
            next_progress += PROGRESS_INTERVAL_MS;
        }
        sleep_ms(POLL_INTERVAL_MS);
    }
}

int app_block_signals(sigset_t *old)
{
    sigset_t fwd;
    sigemptyset(&fwd);
    for (size_t i = 0; i < JG_ARRAY_LEN(forwarded_signals); i++)
        sigaddset(&fwd, forwarded_signals[i]);
    return sigprocmask(SIG_BLOCK, &fwd, old);
}

int app_pending_signal(void)
{
    return got_signal;
}

int app_install_signals(void)
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
