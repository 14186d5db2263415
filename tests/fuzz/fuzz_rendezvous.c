/*
 * libFuzzer target for the shared tunnel's rendezvous (src/agent/rendezvous.c):
 * what a run and the tunnel's holder read from each other, one JSON object a
 * line over a UNIX socket (SO_PEERCRED keeps other users out, but a crashed
 * or hostile process of the same user must not crash the other). The input
 * is written to one end of a socket pair, which is then closed; rdv_recv
 * must give objects until the end, or refuse, and never crash or leak.
 */
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "fuzz.h"
#include "rendezvous.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    if (size > 100000 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    int sz = 1 << 20;
    (void)setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(sv[0], data + off, size - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(sv[0]);
    struct rdv_reader r;
    rdv_reader_init(&r, sv[1]);
    for (int i = 0; i < 10000; i++) {
        json_t *m = NULL;
        int rc = rdv_recv(&r, &m, 1000);
        if (rc < 0) {
            CHECK(!m);
            break;
        }
        CHECK(json_is_object(m));
        json_decref(m);
    }
    rdv_reader_free(&r);
    close(sv[1]);
    return 0;
}
