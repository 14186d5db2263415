/*
 * callback — the job's own endpoint of a direct route (`jobgate run
 * --callback`, docs/slurm.md "Direct routes"): a TLS server on a TCP port of
 * the node that presents the job's certificate ($JOBGATE_DIR/job.crt,
 * job.key), requires a client certificate of the job's agent CA
 * ($JOBGATE_DIR/ca.crt) that names the gateway (JOBCERT_GATEWAY_URI), and
 * joins each such connection to the app's private socket or loopback port.
 * Nothing else gets a byte of the app: another user on the node, or a
 * process that presents a job's certificate, is closed after the handshake.
 *
 * Owns its thread, event loop, listener and connections; the caller talks
 * to it only through callback_start and callback_stop.
 */
#ifndef JG_CALLBACK_H
#define JG_CALLBACK_H

#include <stddef.h>

struct callback;

#define CALLBACK_HANDSHAKE_S 15       /* a connection's TLS handshake */
#define CALLBACK_HANDSHAKES_MAX 64    /* connections in their handshake at once */
#define CALLBACK_IDLE_S 3600          /* no byte either way: the connection ends */
#define CALLBACK_LINGER_S 5           /* after the app's end, what the gateway still sends */
#define CALLBACK_HIGH_WATER (1 << 20) /* bytes held for a slow side before reading stops */

/* Listens on listen_port (0: any) of every IPv4 address, and joins each
 * gateway connection to the app at sock (a UNIX socket path) or, when sock
 * is NULL, at 127.0.0.1:port. *bound: the port it listens on. NULL with the
 * reason in err. */
struct callback *callback_start(const char *jobdir, const char *sock, unsigned port,
                                unsigned listen_port, unsigned *bound, char *err, size_t errlen);
/* Closes the listener and every connection; joins the thread. NULL is fine. */
void callback_stop(struct callback *cb);

#endif
