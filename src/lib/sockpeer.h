/*
 * sockpeer — who holds the far end of a connected loopback TCP socket, read
 * from /proc/net/tcp{,6}. SO_PEERCRED answers this for UNIX sockets only;
 * for TCP the kernel's socket tables name the uid of the socket that
 * accepted our connection. Both the gateway (a local app's port) and the
 * agent (its app's port on the node) use it to make sure that the process
 * behind a port is the owner's before any byte is sent (I2): any user can
 * bind a loopback port that the owner's app does not hold.
 *
 * Owns nothing; one bounded scan of one table per call.
 */
#ifndef JG_SOCKPEER_H
#define JG_SOCKPEER_H

#include <stddef.h>

/* The uid of the socket in the /proc/net table file (tcp or tcp6) whose
 * local end is lhex:lport and remote end rhex:rport (addresses as the table
 * prints them), or -1. */
long sockpeer_uid_in(const char *file, const char *lhex, unsigned lport, const char *rhex,
                     unsigned rport);

/* The uid of the far end of the connected TCP socket fd (IPv4 or IPv6), from
 * <proc_dir>/net/tcp{,6}; -1 when it cannot be told (not found, not TCP). */
long sockpeer_tcp_uid(int fd, const char *proc_dir);

#endif
