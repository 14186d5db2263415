/*
 * libFuzzer target for what a tunnel peer sends (docs/tunnel-protocol.md),
 * for both ends (src/lib/tunnel_proto.c): the first byte picks the role
 * (gateway: the HTTP/2 client; agent: the server) and whether the rest is
 * the control stream's bytes (split into lines, each decoded as a message)
 * or raw HTTP/2 input to a session with the tunnel's settings. A session
 * must end any input with an error or take it, within its limits; the
 * splitter must refuse an over-long line and never return one.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <nghttp2/nghttp2.h>

#include "fuzz.h"
#include "tunnel_proto.h"


/* Headers as the gateway's and the agent's callbacks get them: name and
 * value within the input's bounds (HPACK may repeat a table entry). */
static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    CHECK((name || nlen == 0) && (value || vlen == 0));
    return 0;
}

/* The bytes in chunks of the first byte's size (the stream comes in pieces:
 * lines are put together across them). */
static void lines(const uint8_t *data, size_t size)
{
    struct tunnel_lines l = {0};
    if (size < 1)
        return;
    size_t chunk = data[0] ? data[0] : 1;
    const uint8_t *p = data + 1;
    size_t total = size - 1, left = 0;
    for (;;) {
        if (left == 0) {
            if (total == 0)
                break;
            left = total < chunk ? total : chunk;
            total -= left;
        }
        const char *line;
        size_t n;
        int r = tunnel_lines_next(&l, &p, &left, &line, &n);
        if (r < 0)
            break; /* too long: the stream is not to be trusted after that */
        if (r == 0)
            continue; /* the chunk is taken: the line goes on in the next */
        CHECK(n < TUNNEL_CTL_LINE_MAX && !memchr(line, '\n', n));
        json_t *m = NULL;
        char err[200];
        if (tunnel_msg_decode(line, n, &m, err, sizeof(err)) == 0) {
            CHECK(json_is_object(m));
            char *out;
            size_t olen;
            if (tunnel_msg_encode(m, &out, &olen) == 0) { /* takes m */
                CHECK(olen > 0 && out[olen - 1] == '\n');
                free(out);
            }
        }
    }
    tunnel_lines_free(&l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    enum tunnel_role role = (data[0] & 1) ? TUNNEL_ROLE_AGENT : TUNNEL_ROLE_GATEWAY;
    if (data[0] & 2) {
        lines(data + 1, size - 1);
        return 0;
    }
    static const struct tunnel_session_cbs cbs = {.header = on_header};
    nghttp2_session *s = NULL;
    if (tunnel_session_new(&s, role, &cbs, NULL) < 0)
        return 0;
    /* The agent (server) expects the client preface first: give it, so that
     * the fuzzer's bytes reach the frame parser. */
    static const uint8_t preface[] = NGHTTP2_CLIENT_MAGIC;
    if (role == TUNNEL_ROLE_AGENT)
        (void)nghttp2_session_mem_recv(s, preface, sizeof(preface) - 1);
    (void)nghttp2_session_mem_recv(s, data + 1, size - 1);
    const uint8_t *out;
    while (nghttp2_session_mem_send(s, &out) > 0)
        ;
    nghttp2_session_del(s);
    return 0;
}
