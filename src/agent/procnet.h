/*
 * procnet — which processes listen on a TCP port, read from /proc.
 *
 * Any user of a node can listen on any free port, so an app published with
 * --tcp is proven to be the app (I2) by following the listening socket's
 * inode from /proc/net/tcp{,6} to a file descriptor of a process in the
 * app's own process tree. Owns nothing; every scan is bounded.
 */
#ifndef JG_PROCNET_H
#define JG_PROCNET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Returns 1 when a LISTEN socket on port (IPv4 or IPv6, any local address)
 * is held by root or one of its descendants, 0 when the port is listened on
 * only by other processes, -ENOENT when nothing listens on it, or another
 * negative errno; why explains a 0 or an error. proc is "/proc" (tests use a
 * tree of their own).
 */
int procnet_port_in_tree(const char *proc, uint16_t port, pid_t root, char *why, size_t len);

#endif
