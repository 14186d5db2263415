/*
 * control — the gateway's UNIX control socket (docs/control-protocol.md):
 * the server side. Newline-delimited JSON requests from local users,
 * identified by SO_PEERCRED, each answered with one line by control_ops.
 *
 * Owns the listener and the client connections, on worker 0's loop. Every
 * request is bounded (64 KiB a line, 60 s idle, a cap on connections and on
 * unread answers); descriptors may come with a client's first bytes
 * (SCM_RIGHTS, for `jobgate tunnel --stdio`). A personal gateway serves only
 * its own user.
 */
#ifndef JG_CONTROL_H
#define JG_CONTROL_H

#include <stddef.h>

#include "worker-t.h"

struct control;

/* Listens on cfg->control_socket on w0's loop. NULL with err. */
struct control *control_start(struct worker *w0, char *err, size_t errlen);
/* Closes the listener and every client; removes the socket. ctl may be NULL. */
void control_stop(struct control *ctl);

#endif
