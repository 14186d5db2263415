/* body — see body.h. */
#include "body.h"

ssize_t body_span(struct evbuffer *src, enum http1_body kind, uint64_t *left,
                  struct http1_chunked *ch, int *done)
{
    size_t avail = evbuffer_get_length(src);
    *done = 0;
    switch (kind) {
    case HTTP1_BODY_NONE:
        *done = 1;
        return 0;
    case HTTP1_BODY_EOF:
        return (ssize_t)avail;
    case HTTP1_BODY_LENGTH: {
        size_t n = avail < *left ? avail : (size_t)*left;
        *left -= n;
        *done = *left == 0;
        return (ssize_t)n;
    }
    case HTTP1_BODY_CHUNKED: {
        struct evbuffer_iovec vec[16];
        int nv = evbuffer_peek(src, -1, NULL, vec, 16);
        size_t total = 0;
        for (int i = 0; i < nv && i < 16 && !*done; i++) {
            ssize_t r = http1_chunked_feed(ch, vec[i].iov_base, vec[i].iov_len, done);
            if (r < 0)
                return -1;
            total += (size_t)r;
        }
        return (ssize_t)total;
    }
    }
    return -1;
}
