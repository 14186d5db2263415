/*
 * nodecall — the plugin's side of the node channel (docs/slurm.md): one
 * HTTPS POST to the gateway's /_jobgate/node/v1/<op>, authenticated by a
 * MUNGE credential that this process (root, in slurmstepd or slurmd's
 * epilog) encodes over "jobgate/1 node <op> <SHA-256 of the body, hex>".
 * The gateway's certificate is checked against ca= (or the system's CAs)
 * and its name against gateway='s host.
 *
 * Blocking, with one deadline for the whole call (Slurm waits for the hook);
 * owns nothing between calls. Never logs the credential.
 */
#ifndef JG_NODECALL_H
#define JG_NODECALL_H

#include <stddef.h>

#include <jansson.h>

#include "plugconf.h"

#define NODECALL_TIMEOUT_MS 15000   /* the whole call: connect, TLS, request, answer */
#define NODECALL_ANSWER_MAX 65536   /* bytes of the gateway's answer */

/* POSTs body (a JSON object, not taken) to op ("job-start", "job-end").
 * 0 with the HTTP status in *status and the answer's JSON object in *answer
 * (the caller json_decref's it; an error answer has "error"); or -errno with
 * the reason in err (no answer: DNS, connect, TLS, MUNGE, deadline). */
int nodecall_post(const struct plugconf *c, const char *op, json_t *body, int *status,
                  json_t **answer, char *err, size_t errlen);

#endif
