/* ctl — see ctl.h. */
#include "ctl.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "util.h"

struct ctl {
    int fd;
    char *path;
    char *buf;      /* CTL_MAX_LINE bytes: received, not yet consumed */
    size_t len;
};


int ctl_dial(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    size_t plen = strlen(path);

    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (plen == 0 || plen >= sizeof(sun.sun_path))
        return errmsg(err, errlen, -ENAMETOOLONG,
                      "control socket path is empty or longer than %zu bytes: %s",
                      sizeof(sun.sun_path) - 1, path);
    memcpy(sun.sun_path, path, plen + 1);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errmsg(err, errlen, -errno, "socket: %s", strerror(errno));

    /* A gateway whose listen backlog is full would block connect() forever;
     * on AF_UNIX the send timeout bounds it. */
    struct timeval tv = {.tv_sec = CTL_TIMEOUT_MS / 1000, .tv_usec = 0};
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
        int e = errno;
        close(fd);
        return errmsg(err, errlen, -e, "setsockopt: %s", strerror(e));
    }

    int r;
    do {
        r = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        int e = errno;
        close(fd);
        switch (e) {
        case ENOENT:
        case ENOTDIR:
        case ECONNREFUSED:
        case ENOTSOCK:
            return errmsg(err, errlen, -e,
                          "no gateway at %s (is jobgated running? start one with 'jobgated')",
                          path);
        case EAGAIN:
            return errmsg(err, errlen, -ETIMEDOUT,
                          "the gateway at %s did not accept the connection within %d s", path,
                          CTL_TIMEOUT_MS / 1000);
        default:
            return errmsg(err, errlen, -e, "cannot connect to the gateway at %s: %s", path,
                          strerror(e));
        }
    }
    return fd;
}

int ctl_connect(const char *path, struct ctl **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = ctl_dial(path, err, errlen);
    if (fd < 0)
        return fd;
    struct ctl *c = xcalloc(1, sizeof(*c));
    c->fd = fd;
    c->path = xstrdup(path);
    c->buf = xmalloc(CTL_MAX_LINE);
    c->len = 0;
    *out = c;
    return 0;
}

void ctl_close(struct ctl *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c->path);
    free(c->buf);
    free(c);
}

/* Milliseconds left until deadline, at least 0, as poll() wants them. */
static int ms_left(int64_t deadline)
{
    int64_t left = deadline - now_mono_ms();
    if (left < 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* Waits for events on the socket until the deadline: 1 ready, 0 timed out, -errno. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = events, .revents = 0};
        int n = poll(&pfd, 1, ms_left(deadline));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        return n > 0 ? 1 : 0;
    }
}

static int send_all(struct ctl *c, const char *p, size_t n, int64_t deadline, char *err,
                    size_t errlen)
{
    while (n > 0) {
        int w = wait_fd(c->fd, POLLOUT, deadline);
        if (w < 0)
            return errmsg(err, errlen, w, "poll: %s", strerror(-w));
        if (w == 0)
            return errmsg(err, errlen, -ETIMEDOUT,
                          "the gateway at %s did not take the request within %d s", c->path,
                          CTL_TIMEOUT_MS / 1000);
        /* MSG_NOSIGNAL: a gateway that went away must be an error, not SIGPIPE. */
        ssize_t s = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (s < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return errmsg(err, errlen, -errno, "cannot send to the gateway at %s: %s", c->path,
                          strerror(errno));
        }
        p += s;
        n -= (size_t)s;
    }
    return 0;
}

ssize_t ctl_read_line(int fd, char *buf, size_t cap, size_t *len, int64_t deadline,
                      const char *who, char *err, size_t errlen)
{
    size_t scanned = 0;
    for (;;) {
        char *nl = memchr(buf + scanned, '\n', *len - scanned);
        if (nl)
            return nl - buf;
        scanned = *len;
        if (*len >= cap)
            return errmsg(err, errlen, -EMSGSIZE, "the gateway's answer is longer than %zu bytes",
                          cap);

        int w = wait_fd(fd, POLLIN, deadline);
        if (w < 0)
            return errmsg(err, errlen, w, "poll: %s", strerror(-w));
        if (w == 0)
            return errmsg(err, errlen, -ETIMEDOUT, "no answer from %s within %d s", who,
                          CTL_TIMEOUT_MS / 1000);
        ssize_t r = recv(fd, buf + *len, cap - *len, MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            return errmsg(err, errlen, -errno, "cannot read from %s: %s", who, strerror(errno));
        }
        if (r == 0)
            return errmsg(err, errlen, -ECONNRESET, "%s closed the connection without answering",
                          who);
        *len += (size_t)r;
    }
}

int ctl_request(struct ctl *c, json_t *req, json_t **reply, char *err, size_t errlen)
{
    int64_t deadline = now_mono_ms() + CTL_TIMEOUT_MS;
    *reply = NULL;

    /* Compact output never contains a raw newline (strings are escaped), so
     * the request is exactly one line. */
    char *text = json_dumps(req, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text)
        return errmsg(err, errlen, -EINVAL, "cannot encode the request");
    size_t tlen = strlen(text);
    if (tlen + 1 > CTL_MAX_LINE) {
        free(text);
        return errmsg(err, errlen, -EMSGSIZE, "request longer than %d bytes", CTL_MAX_LINE);
    }
    char *line = xmalloc(tlen + 1);
    memcpy(line, text, tlen);
    line[tlen] = '\n';
    free(text);
    int r = send_all(c, line, tlen + 1, deadline, err, errlen);
    free(line);
    if (r < 0)
        return r;

    char who[PATH_MAX + 32];
    (void)xsnprintf(who, sizeof(who), "the gateway at %s", c->path);
    ssize_t n = ctl_read_line(c->fd, c->buf, CTL_MAX_LINE, &c->len, deadline, who, err, errlen);
    if (n < 0)
        return (int)n;

    json_error_t jerr;
    json_t *j = json_loadb(c->buf, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    /* Consume the line (and its newline) whatever it held, so that the next
     * answer on this connection stays in step. */
    c->len -= (size_t)n + 1;
    memmove(c->buf, c->buf + n + 1, c->len);
    if (!j)
        return errmsg(err, errlen, -EPROTO, "bad answer from the gateway at %s: %s", c->path,
                      jerr.text);
    json_t *ok = json_object_get(j, "ok");
    if (!json_is_object(j) || !json_is_boolean(ok)) {
        json_decref(j);
        return errmsg(err, errlen, -EPROTO,
                      "bad answer from the gateway at %s: not an object with \"ok\"", c->path);
    }
    *reply = j;
    if (json_is_true(ok))
        return 0;
    const char *msg = json_string_value(json_object_get(j, "error"));
    const char *code = ctl_error_code(j);
    if (msg && *msg)
        return errmsg(err, errlen, -EREMOTEIO, "%s", msg);
    return errmsg(err, errlen, -EREMOTEIO, "the gateway refused the request (%s)",
                  *code ? code : "no reason given");
}

int ctl_call(const char *path, json_t *req, json_t **reply, char *err, size_t errlen)
{
    struct ctl *c = NULL;
    *reply = NULL;
    int r = ctl_connect(path, &c, err, errlen);
    if (r < 0 || !c)
        return r < 0 ? r : -EIO;
    r = ctl_request(c, req, reply, err, errlen);
    ctl_close(c);
    return r;
}

const char *ctl_error_code(const json_t *reply)
{
    const char *code = json_string_value(json_object_get(reply, "code"));
    return code ? code : "";
}
