/*
 * ctl — client of jobgated's control socket (docs/control-protocol.md):
 * one JSON object per line each way, one answer per request, in order.
 *
 * Owns the connection and its receive buffer. Every request has a deadline
 * (CTL_TIMEOUT_MS for sending it and reading its answer) and every answer a
 * size limit (CTL_MAX_LINE), so a stuck or hostile gateway cannot hang or
 * bloat the CLI.
 */
#ifndef JG_CTL_H
#define JG_CTL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#define CTL_TIMEOUT_MS 10000
#define CTL_MAX_LINE 65536  /* bytes of one line, newline included */

struct ctl;

/* Connects to the control socket at path (a send timeout of CTL_TIMEOUT_MS
 * set) and returns the descriptor, or -errno with a sentence in err. */
int ctl_dial(const char *path, char *err, size_t errlen);

/*
 * Connects to the control socket at path. Returns 0 or -errno and writes a
 * sentence for the user into err (e.g. "no gateway at PATH (...)").
 */
int ctl_connect(const char *path, struct ctl **out, char *err, size_t errlen);

/*
 * Sends req and reads the answer line. Returns:
 *   0            answer with "ok":true, *reply set (caller json_decref()s it);
 *   -EREMOTEIO   answer with "ok":false: *reply set, err holds the gateway's
 *                "error" sentence (use ctl_error_code() for its code);
 *   other -errno no usable answer: *reply NULL, err says why.
 */
int ctl_request(struct ctl *c, json_t *req, json_t **reply, char *err, size_t errlen);

void ctl_close(struct ctl *c);

/*
 * Reads from fd into buf, which holds *len bytes already (cap at most),
 * until it holds a complete line: the deadline (now_mono_ms() time) and cap
 * bound the wait and the size. Returns the line's length without the
 * newline (which is at buf[n]; bytes after it stay in buf), or -errno with a
 * sentence in err that names the peer as who ("the gateway at PATH").
 */
ssize_t ctl_read_line(int fd, char *buf, size_t cap, size_t *len, int64_t deadline,
                      const char *who, char *err, size_t errlen);

/* ctl_connect + ctl_request + ctl_close, for the common one-shot case. */
int ctl_call(const char *path, json_t *req, json_t **reply, char *err, size_t errlen);

/* The "code" of an error answer ("not_found", ...), or "" if absent. */
const char *ctl_error_code(const json_t *reply);

#endif
