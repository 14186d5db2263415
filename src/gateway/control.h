/*
 * control — the gateway's UNIX control socket (docs/control-protocol.md):
 * newline-delimited JSON requests from local users, identified by
 * SO_PEERCRED, to register, list, link and remove their routes.
 *
 * Owns the listener and the client connections. Every request is bounded
 * (64 KiB a line, 60 s idle, a cap on connections) and answered with one
 * line; a caller acts only on its own routes (I2), except root in shared
 * mode who may name a uid.
 */
#ifndef JG_CONTROL_H
#define JG_CONTROL_H

#include <stddef.h>

struct gateway;

int control_start(struct gateway *gw, char *err, size_t errlen);
void control_stop(struct gateway *gw);

#endif
