/*
 * procnet — everything jobgate reads from the kernel's TCP socket tables,
 * /proc/net/tcp and /proc/net/tcp6: the one parser of their lines, and the
 * three questions asked of them.
 *
 *  - Who listens on a loopback port (the gateway, before a route may name a
 *    TCP port: I2, I3)?
 *  - Who holds the far end of a connected loopback socket (both ends, on
 *    every connection to an app: any user can bind a port that the owner's
 *    app does not hold; SO_PEERCRED answers this only for UNIX sockets)?
 *  - Does a process of the app's own tree hold the listening socket
 *    (`jobgate run --tcp`, following the socket inode to a descriptor)?
 *  - Which listening sockets does a tree of processes hold (a Slurm job's
 *    allowed destinations, read by spank_jobgate.so inside slurmstepd)?
 *  - When did a process start (so that a reused pid is not taken for the
 *    route owner it replaced)?
 *
 * Owns nothing and no state; every scan is bounded (a line is 512 bytes at
 * most, tables by the kernel, processes and descriptors by the limits in
 * procnet.c). The proc directory is a parameter: "/proc", or a fake tree in
 * the unit tests. libc only: the Slurm plugin builds it in as well, so it
 * never aborts and reports running out of memory as -ENOMEM.
 */
#ifndef JG_PROCNET_H
#define JG_PROCNET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One line of a table. Addresses stay as the table prints them: each 32-bit
 * word of the network-order address in the host's order, as hex digits. */
struct procnet_sock {
    char local[33], remote[33];
    unsigned lport, rport;
    unsigned state;          /* 0x0A: LISTEN */
    unsigned long uid;
    unsigned long inode;
};

#define PROCNET_LISTEN 0x0A

/* Parses one table line (not the header). 0, or -EINVAL. */
int procnet_parse_line(const char *line, struct procnet_sock *s);

/* Calls cb for every socket of <proc>/net/tcp (v6 = 0) or tcp6 (v6 = 1)
 * until cb returns nonzero. 0, or -errno when the table cannot be read
 * (-ENOENT: no IPv6 on this kernel). */
int procnet_scan(const char *proc, int v6, int (*cb)(const struct procnet_sock *s, void *arg),
                 void *arg);

/* 1 if the table address hex is one a loopback client reaches (127.0.0.1,
 * 0.0.0.0; ::1, ::, ::ffff:127.0.0.1). */
int procnet_loopback_reachable(const char *hex, int v6);

/*
 * Counts the LISTEN sockets reachable on loopback at port: mine[0] / mine[1]
 * those of uid in tcp / tcp6, *others those of anyone else. 0, or -errno
 * with the reason in why.
 */
int procnet_listeners(const char *proc, uint16_t port, uid_t uid, int mine[2], int *others,
                      char *why, size_t len);

/* The uid of the socket in table v6 of proc whose local end is lhex:lport
 * and remote end rhex:rport, or -1. */
long procnet_uid_of(const char *proc, int v6, const char *lhex, unsigned lport, const char *rhex,
                    unsigned rport);

/* The uid of the far end of the connected TCP socket fd (IPv4 or IPv6), or -1
 * when it cannot be told (not found, not TCP). */
long procnet_peer_uid(int fd, const char *proc);

/*
 * Returns 1 when a LISTEN socket on port (IPv4 or IPv6, any local address)
 * is held by root or one of its descendants, 0 when the port is listened on
 * only by other processes, -ENOENT when nothing listens on it, or another
 * negative errno; why explains a 0 or an error.
 */
int procnet_port_in_tree(const char *proc, uint16_t port, pid_t root, char *why, size_t len);

/* When process pid started (<proc>/<pid>/stat's starttime, clock ticks since
 * boot): with the pid it names one process, so that a reused pid is told
 * apart from the process it names. 0, or -errno (-ENOENT: no such process). */
int procnet_start_time(const char *proc, pid_t pid, uint64_t *start);

/* At most this many listening sockets are looked at by procnet_tree_listeners. */
#define PROCNET_TREE_LISTEN_MAX 4096

/*
 * Calls cb for every LISTEN socket of tcp (v6 = 0) and tcp6 (v6 = 1) that
 * root or one of its descendants holds a descriptor of, until cb returns
 * nonzero. 0, or -errno (a table or the process list cannot be read, no
 * memory).
 */
int procnet_tree_listeners(const char *proc, pid_t root,
                           int (*cb)(const struct procnet_sock *s, int v6, void *arg), void *arg);

#endif
