/* sockpeer — see sockpeer.h. */
#include "sockpeer.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "util.h"

long sockpeer_uid_in(const char *file, const char *lhex, unsigned lport, const char *rhex,
                     unsigned rport)
{
    FILE *f = fopen(file, "re");
    char line[512];
    long uid = -1;
    if (!f)
        return -1;
    if (!fgets(line, sizeof(line), f)) {
        fclose(f);
        return -1;
    }
    while (uid < 0 && fgets(line, sizeof(line), f)) {
        char local[64], remote[64];
        unsigned lp, rp, st;
        unsigned long owner;
        if (sscanf(line, " %*u: %63[0-9A-Fa-f]:%x %63[0-9A-Fa-f]:%x %x %*x:%*x %*x:%*x %*x %lu",
                   local, &lp, remote, &rp, &st, &owner) != 6)
            continue;
        if (lp == lport && rp == rport && strcasecmp(local, lhex) == 0 &&
            strcasecmp(remote, rhex) == 0)
            uid = (long)owner;
    }
    fclose(f);
    return uid;
}

/* An address as /proc/net/tcp{,6} prints it: each 32-bit word of the
 * network-order address in the host's order, as 8 hex digits. */
static int addr_hex(const struct sockaddr_storage *ss, char *out, size_t len, unsigned *port)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        *port = ntohs(a->sin_port);
        return xsnprintf(out, len, "%08X", (unsigned)a->sin_addr.s_addr);
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uint32_t w[4];
        memcpy(w, &a->sin6_addr, sizeof(w));
        *port = ntohs(a->sin6_port);
        return xsnprintf(out, len, "%08X%08X%08X%08X", (unsigned)w[0], (unsigned)w[1],
                         (unsigned)w[2], (unsigned)w[3]);
    }
    return -1;
}

long sockpeer_tcp_uid(int fd, const char *proc_dir)
{
    struct sockaddr_storage me, peer;
    socklen_t ml = sizeof(me), pl = sizeof(peer);
    char mhex[40], phex[40], path[4096];
    unsigned mport, pport;
    if (getsockname(fd, (struct sockaddr *)&me, &ml) < 0 ||
        getpeername(fd, (struct sockaddr *)&peer, &pl) < 0 ||
        addr_hex(&me, mhex, sizeof(mhex), &mport) < 0 ||
        addr_hex(&peer, phex, sizeof(phex), &pport) < 0 ||
        xsnprintf(path, sizeof(path), "%s/net/%s", proc_dir,
                  peer.ss_family == AF_INET6 ? "tcp6" : "tcp") < 0)
        return -1;
    /* The app's accepted socket: its local end is our peer, its remote end is us. */
    return sockpeer_uid_in(path, phex, pport, mhex, mport);
}
