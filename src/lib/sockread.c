/* sockread — see sockread.h. */
#include "sockread.h"

#include <errno.h>
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/event.h>

#define READ_AHEAD_CHUNK (64 * 1024) /* one readv at most */
#define LIBEVENT_READ_MAX 4096       /* what evbuffer_read takes per wakeup in libevent 2.1 */

static int read_into(struct evbuffer *in, evutil_socket_t fd, size_t budget)
{
    while (evbuffer_get_length(in) < budget) {
        size_t want = budget - evbuffer_get_length(in);
        struct evbuffer_iovec v[2];
        struct iovec iov[2];
        if (want > READ_AHEAD_CHUNK)
            want = READ_AHEAD_CHUNK;
        int n = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2);
        if (n <= 0)
            return 0;
        size_t room = want; /* the reservation may be larger than asked */
        for (int i = 0; i < n; i++) {
            iov[i].iov_base = v[i].iov_base;
            iov[i].iov_len = v[i].iov_len < room ? v[i].iov_len : room;
            room -= iov[i].iov_len;
        }
        ssize_t r = readv(fd, iov, n);
        if (r <= 0) {
            int e = errno;
            evbuffer_commit_space(in, v, 0);
            if (r == 0)
                return 1;
            return e == EAGAIN || e == EWOULDBLOCK || e == EINTR ? 0 : -e;
        }
        size_t left = (size_t)r, got = 0;
        int used = 0;
        for (; used < n && left > 0; used++) {
            if (v[used].iov_len > iov[used].iov_len)
                v[used].iov_len = iov[used].iov_len;
            if (v[used].iov_len > left)
                v[used].iov_len = left;
            left -= v[used].iov_len;
            got += v[used].iov_len;
        }
        evbuffer_commit_space(in, v, used);
        if (got < want)
            return 0; /* drained for now */
    }
    return 0;
}

int sockread_ahead(struct bufferevent *bev, size_t budget)
{
    if (!(bufferevent_get_enabled(bev) & EV_READ) || bufferevent_getfd(bev) < 0)
        return 0; /* not reading, or no socket (an in-memory pair) */
    /* libevent read less than its 4 KiB: the socket had no more a moment
     * ago, and a readv now would most likely only say EAGAIN (a syscall per
     * small request for nothing). */
    if (evbuffer_get_length(bufferevent_get_input(bev)) < LIBEVENT_READ_MAX)
        return 0;
    /* A socket bufferevent keeps its input's end frozen outside its own
     * reads, so that nobody else adds to it; this read is one of its own. */
    struct evbuffer *in = bufferevent_get_input(bev);
    evbuffer_unfreeze(in, 0);
    int r = read_into(in, bufferevent_getfd(bev), budget);
    evbuffer_freeze(in, 0);
    return r;
}
