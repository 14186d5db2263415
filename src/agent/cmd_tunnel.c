/*
 * cmd_tunnel — `jobgate tunnel --stdio`: the remote end of
 * `jobgate run --via ssh:HOST` (docs/tunnel-protocol.md).
 *
 * ssh runs this on the gateway's host with the agent's byte stream on
 * standard input and output. It hands both descriptors to jobgated over the
 * control socket in one sendmsg() (SCM_RIGHTS) together with the line
 * {"op":"tunnel","version":1}; jobgated identifies the user by SO_PEERCRED
 * on that connection and speaks the tunnel on the descriptors from then on.
 * This process reads the one-line answer (bounded: CTL_TIMEOUT_MS and
 * CTL_MAX_LINE). When jobgated took the stream, it stays until jobgated
 * closes the control connection at the tunnel's end, and exits 0: sshd ends
 * the channel (closing the agent's stdin) as soon as its command exits, even
 * while jobgated still holds the descriptors. Otherwise it exits 1.
 *
 * Owns only the control connection. It never writes to standard output,
 * which is the tunnel.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "cmd.h"
#include "ctl.h"
#include "util.h"

static void usage_tunnel(FILE *f)
{
    fputs("usage: jobgate tunnel --stdio\n"
          "\n"
          "The gateway's end of 'jobgate run --via ssh:HOST': hands this process's standard\n"
          "input and output to the gateway (jobgated) on this host, which then carries the\n"
          "tunnel on them. Run by ssh, not by hand.\n"
          "('jobgate tunnel --hold ...' is the process that 'jobgate run' starts to hold one\n"
          "tunnel for all your runs on a node to one gateway; not run by hand either.)\n"
          "\n"
          "      --stdio           the tunnel is on standard input and output (required)\n"
          "  -h, --help            show this help\n",
          f);
}

/* The request line with fds 0 and 1 attached, in one sendmsg(). */
static int send_fds(int fd, char *err, size_t errlen)
{
    static const char line[] = "{\"op\":\"tunnel\",\"version\":1}\n";
    int fds[2] = {STDIN_FILENO, STDOUT_FILENO};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(fds))];
    } u;
    struct iovec iov = {.iov_base = (void *)line, .iov_len = sizeof(line) - 1};
    struct msghdr msg;

    memset(&u, 0, sizeof(u));
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = u.buf;
    msg.msg_controllen = sizeof(u.buf);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(fds));
    memcpy(CMSG_DATA(cm), fds, sizeof(fds));

    ssize_t n;
    do {
        n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return errmsg(err, errlen, -ETIMEDOUT, "the gateway did not take the request within "
                          "%d s", CTL_TIMEOUT_MS / 1000);
        return errmsg(err, errlen, -errno, "cannot send to the gateway: %s", strerror(errno));
    }
    if ((size_t)n != sizeof(line) - 1)
        return errmsg(err, errlen, -EIO, "the request was cut short");
    return 0;
}

int cmd_tunnel(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"stdio", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int stdio = 0, c;

    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--hold") == 0)
            return cmd_hold(argc, argv); /* the shared tunnel of `jobgate run` */
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 's': stdio = 1; break;
        case 'h':
            usage_tunnel(stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        default:
            return cli_getopt_error("tunnel", c, argc, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error("tunnel", "unexpected argument '%s'", argv[optind]);
    if (!stdio)
        return cli_usage_error("tunnel", "missing --stdio");
    if (fcntl(STDIN_FILENO, F_GETFD) < 0 || fcntl(STDOUT_FILENO, F_GETFD) < 0) {
        cli_error("standard input or output is closed; there is no tunnel to hand over");
        return 1;
    }

    const char *path = cli_control_socket();
    if (!path)
        return 1;
    char err[512];
    int fd = ctl_dial(path, err, sizeof(err));
    if (fd < 0) {
        cli_error("%s", err);
        return 1;
    }
    char *buf = xmalloc(CTL_MAX_LINE);
    size_t got = 0;
    ssize_t len = send_fds(fd, err, sizeof(err));
    if (len == 0)
        len = ctl_read_line(fd, buf, CTL_MAX_LINE, &got, now_mono_ms() + CTL_TIMEOUT_MS,
                            "the gateway", err, sizeof(err));
    if (len < 0) {
        close(fd);
        free(buf);
        cli_error("%s", err);
        return 1;
    }

    json_error_t je;
    json_t *ans = json_loadb(buf, (size_t)len, JSON_REJECT_DUPLICATES, &je);
    free(buf);
    json_t *ok = json_object_get(ans, "ok");
    if (!json_is_object(ans) || !json_is_boolean(ok)) {
        cli_error("bad answer from the gateway at %s: %s", path,
                  ans ? "not an object with \"ok\"" : je.text);
        json_decref(ans);
        return 1;
    }
    if (json_is_true(ok)) {
        json_decref(ans);
        /* jobgated has its own copies of the stream now. */
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            (void)dup2(null, STDIN_FILENO);
            (void)dup2(null, STDOUT_FILENO);
            close(null);
        }
        /* No deadline: a tunnel lives as long as its job. */
        char sink[256];
        ssize_t r;
        while ((r = read(fd, sink, sizeof(sink))) != 0)
            if (r < 0 && errno != EINTR)
                break;
        close(fd);
        return 0;
    }
    close(fd);
    const char *msg = json_string_value(json_object_get(ans, "error"));
    const char *code = ctl_error_code(ans);
    if (msg && *msg)
        cli_error("%s", msg);
    else
        cli_error("the gateway refused the tunnel (%s)", *code ? code : "no reason given");
    json_decref(ans);
    return 1;
}
