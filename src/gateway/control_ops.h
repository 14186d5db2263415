/*
 * control_ops — the operations of the control socket (control_ops.c),
 * called by the socket server (control.c) once per request line.
 * Worker 0's thread; no lock (the registry locks inside).
 */
#ifndef JG_CONTROL_OPS_H
#define JG_CONTROL_OPS_H

#include <stddef.h>
#include <sys/types.h>

#include "worker-t.h"

struct evbuffer;

/* Who asks, as the server knows it. */
struct ctl_peer {
    struct worker *w;   /* worker 0: the control socket's loop */
    uid_t uid;          /* SO_PEERCRED */
    pid_t pid;
    int sock;           /* the client's connection */
    int fds[2];         /* descriptors sent with this request, or -1; an op that
                         * keeps them sets them to -1 */
    int handed_over;    /* set by the tunnel op: the connection now belongs to a tunnel */
};

/* A list answer stops after about this many bytes of items ("next" then
 * says where the next request starts): every answer fits the clients'
 * 64 KiB line, however many routes there are. */
#define CTL_PAGE_BYTES 32768

/* Handles one request line and appends exactly one answer line to out. */
void control_handle(struct ctl_peer *p, const char *line, size_t len, struct evbuffer *out);

#endif
