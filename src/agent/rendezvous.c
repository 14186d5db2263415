/* rendezvous — see rendezvous.h. */
#include "rendezvous.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "util.h"

/* The directory exists (made here if not), is a directory of ours, and
 * nobody else may enter it. */
static int own_dir(const char *dir, char *err, size_t errlen)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return errmsg(err, errlen, -errno, "cannot make %s: %s", dir, strerror(errno));
    struct stat st;
    if (lstat(dir, &st) < 0)
        return errmsg(err, errlen, -errno, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077))
        return errmsg(err, errlen, -EPERM, "%s is not a private directory of this user "
                      "(mode 0700): not sharing tunnels through it", dir);
    return 0;
}

int rdv_key(const char *ident, char key[RDV_KEY_LEN + 1])
{
    unsigned char md[32];
    unsigned mdlen = 0;
    if (!EVP_Digest(ident, strlen(ident), md, &mdlen, EVP_sha256(), NULL))
        return -EIO;
    for (int i = 0; i < RDV_KEY_LEN / 2; i++)
        (void)snprintf(key + 2 * i, 3, "%02x", md[i]);
    return 0;
}

int rdv_paths(const char *key, struct rdv_paths *p, char *err, size_t errlen)
{
    if (strlen(key) != RDV_KEY_LEN || strspn(key, "0123456789abcdef") != RDV_KEY_LEN)
        return errmsg(err, errlen, -EINVAL, "a tunnel's key is %d hex digits", RDV_KEY_LEN);
    const char *run = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    int rc;
    if (run && run[0] == '/' && stat(run, &st) == 0 && S_ISDIR(st.st_mode)) {
        rc = xsnprintf(p->dir, sizeof(p->dir), "%s/jobgate", run);
    } else {
        rc = xsnprintf(p->dir, sizeof(p->dir), "/tmp/jobgate-%u", (unsigned)getuid());
    }
    if (rc < 0)
        return errmsg(err, errlen, -ENAMETOOLONG, "the runtime directory's name is too long");
    rc = own_dir(p->dir, err, errlen);
    if (rc < 0)
        return rc;
    if (xsnprintf(p->sock, sizeof(p->sock), "%s/tunnel-%s.sock", p->dir, key) < 0 ||
        xsnprintf(p->lock, sizeof(p->lock), "%s/tunnel-%s.lock", p->dir, key) < 0)
        return errmsg(err, errlen, -ENAMETOOLONG, "%s: too long a path for a socket", p->dir);
    return 0;
}

int rdv_peer_is_me(int fd)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    return getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 && cr.uid == getuid();
}

static int sun_of(const char *path, struct sockaddr_un *sa)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa->sun_path))
        return -ENAMETOOLONG;
    memcpy(sa->sun_path, path, strlen(path) + 1);
    return 0;
}

int rdv_connect(const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    if (sun_of(path, &sa) < 0)
        return errmsg(err, errlen, -ENAMETOOLONG, "%s: too long", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errmsg(err, errlen, -errno, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return errmsg(err, errlen, -e, "%s: %s", path, strerror(e));
    }
    if (!rdv_peer_is_me(fd)) {
        close(fd);
        return errmsg(err, errlen, -EPERM, "%s is held by another user", path);
    }
    return fd;
}

int rdv_lock(const struct rdv_paths *p, char *err, size_t errlen)
{
    int lk = open(p->lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (lk < 0)
        return errmsg(err, errlen, -errno, "%s: %s", p->lock, strerror(errno));
    if (flock(lk, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(lk);
        return e == EWOULDBLOCK ? -EBUSY : errmsg(err, errlen, -e, "%s: %s", p->lock,
                                                  strerror(e));
    }
    return lk;
}

int rdv_listen(const struct rdv_paths *p, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    if (sun_of(p->sock, &sa) < 0)
        return errmsg(err, errlen, -ENAMETOOLONG, "%s: too long", p->sock);
    /* The caller holds the lock: a socket there is a dead holder's. */
    (void)unlink(p->sock);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return errmsg(err, errlen, -e, "cannot listen at %s: %s", p->sock, strerror(e));
    }
    return fd;
}

/* msg (taken) as one line, newline included: *n bytes; NULL on failure. */
static char *line_of(json_t *msg, size_t *n)
{
    char *s = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!s)
        return NULL;
    *n = strlen(s) + 1;
    s[*n - 1] = '\n'; /* json_dumps' NUL becomes the line's end */
    return s;
}

int rdv_send_nowait(int fd, json_t *msg)
{
    size_t n;
    char *s = line_of(msg, &n);
    if (!s)
        return -ENOMEM;
    ssize_t w;
    do
        w = send(fd, s, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    free(s);
    if (w < 0)
        return -errno;
    return (size_t)w == n ? 0 : -EAGAIN; /* a part went: the line is broken */
}

int rdv_send(int fd, json_t *msg)
{
    size_t n, off = 0;
    char *s = line_of(msg, &n);
    if (!s)
        return -ENOMEM;
    int rc = 0;
    while (off < n) {
        ssize_t w = send(fd, s + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = -errno;
            break;
        }
        off += (size_t)w;
    }
    free(s);
    return rc;
}

void rdv_reader_init(struct rdv_reader *r, int fd)
{
    r->fd = fd;
    r->buf = xmalloc(RDV_LINE_MAX + 1);
    r->len = 0;
}

void rdv_reader_free(struct rdv_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->len = 0;
}

int rdv_recv(struct rdv_reader *r, json_t **msg, int timeout_ms)
{
    *msg = NULL;
    int64_t deadline = timeout_ms >= 0 ? now_mono_ms() + timeout_ms : -1;
    for (;;) {
        char *nl = memchr(r->buf, '\n', r->len);
        if (nl) {
            size_t n = (size_t)(nl - r->buf);
            json_error_t je;
            json_t *m = json_loadb(r->buf, n, JSON_REJECT_DUPLICATES, &je);
            memmove(r->buf, nl + 1, r->len - n - 1);
            r->len -= n + 1;
            if (!json_is_object(m)) {
                json_decref(m);
                return -EPROTO;
            }
            *msg = m;
            return 0;
        }
        if (r->len >= RDV_LINE_MAX)
            return -EPROTO;
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_mono_ms();
            if (left <= 0)
                return -ETIMEDOUT;
            wait = (int)left;
        }
        struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
        int pr = poll(&pfd, 1, wait);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0)
            return -errno;
        if (pr == 0)
            return -ETIMEDOUT;
        ssize_t got = recv(r->fd, r->buf + r->len, RDV_LINE_MAX - r->len, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return errno == ECONNRESET ? -ECONNRESET : -errno;
        if (got == 0)
            return -ECONNRESET;
        r->len += (size_t)got;
    }
}
