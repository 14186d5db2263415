/*
 * nodechan — the node channel (docs/slurm.md, "The node channel"): how the
 * Slurm plugin on a compute node, as root, tells the gateway that a
 * --jobgate job starts (and gets the job's certificate) or ended.
 *
 *   POST /_jobgate/node/v1/job-start   {"job","uid","user","node","time_limit","csr"}
 *                                      -> 200 {"job","cert","ca","not_after"}
 *   POST /_jobgate/node/v1/job-end     {"job","node"} -> 200 {"job","routes"}
 *   POST /_jobgate/node/v1/job-ready   {"job","node","listen":[{"host","port"}]}
 *                                      -> 200 {"job","destinations"}
 *
 * on the gateway's HTTPS port, on any Host. Each request carries
 * "Authorization: MUNGE <credential>" whose payload is exactly
 * "jobgate/1 node <op> <SHA-256 of the body, hex>": munged vouches for the
 * uid, refuses a replay, and the hash ties the credential to this one body.
 * Only uids named by [slurm] node_users speak for nodes (default root, and
 * slurm where that user exists); everyone else gets 403. The certificate's
 * every field comes from the job record, never from the request (jobca.h).
 *
 * Owns the resolved list of trusted uids: a SIGHUP swaps it
 * (nodechan_reconfigure) and older lists stay to the end, so any thread
 * answers with it without a lock (the registry locks inside, jobca is
 * read-only).
 */
#ifndef JG_NODECHAN_H
#define JG_NODECHAN_H

#include <stddef.h>
#include <sys/types.h>

#include <event2/buffer.h>

#include "http1.h"

struct jg_config;
struct jobca;
struct nodechan;
struct node_users;
struct registry;

#define NODECHAN_PREFIX "/_jobgate/node/"
#define NODECHAN_BODY_MAX 16384 /* bytes of a request body */

/* self: the gateway's own uid (a personal gateway takes only its own jobs).
 * NULL with the reason in err (a user of node_users that does not exist). */
struct nodechan *nodechan_new(const struct jg_config *cfg, struct registry *reg,
                              const struct jobca *ca, uid_t self, char *err, size_t errlen);
void nodechan_free(struct nodechan *nc);

/* [slurm] node_users of cfg resolved to uids (NULL with err: no such user). */
struct node_users *nodechan_users_load(const struct jg_config *cfg, char *err, size_t errlen);
void nodechan_users_free(struct node_users *u);
/* SIGHUP (main thread): nc works by cfg and users (nodechan_users_load of
 * cfg, taken; NULL: the list it has) from now on; the caller keeps cfg
 * until nc is freed. */
void nodechan_reconfigure(struct nodechan *nc, const struct jg_config *cfg,
                          struct node_users *users);

/* 1 if uid is one of node_users (they speak for nodes; quotas do not bound them). */
int nodechan_trusts(const struct nodechan *nc, uid_t uid);

/* 1 if the request target is under NODECHAN_PREFIX. */
int nodechan_match(const struct http1_str *target);

/* One node request (head h, its whole body of len bytes, from ip), in
 * three steps, since its MUNGE credential and the job's user are checked
 * with daemons that may keep it waiting (munged, NSS):
 * - nodechan_call_new, on the loop: looks at the head alone. NULL with the
 *   answer in out and its status in *status; else the call, with copies.
 * - nodechan_call_run, off the loop (offload.h): checks and answers it, into
 *   the call's own buffer.
 * - nodechan_call_finish, on the loop again: the answer moved into out (with
 *   Connection: close); returns its status and frees the call.
 * nodechan_call_free drops a call that will not finish. */
struct nodechan_call;
struct nodechan_call *nodechan_call_new(struct nodechan *nc, const struct http1_head *h,
                                       const char *body, size_t len, const char *ip,
                                       struct evbuffer *out, int *status);
void nodechan_call_run(struct nodechan_call *call);
int nodechan_call_finish(struct nodechan_call *call, struct evbuffer *out);
void nodechan_call_free(struct nodechan_call *call);

#endif
