/*
 * jobready — JOBGATE_READY_FD: how a --jobgate job says "I listen now" and
 * gets the TCP ports its own processes listen on registered at the gateway
 * as its allowed destinations (docs/slurm.md, "Allowed destinations").
 *
 * In each step's slurmstepd (root), before its tasks start: a pipe whose
 * write end the tasks inherit (JOBGATE_READY_FD names it) and a thread that
 * reads the other end. Whatever a task writes there (a line, any bytes) is a
 * signal, never data: at most once a second the thread lists, through /proc
 * (src/lib/procnet.c, no lsof), the LISTEN sockets, IPv4 and IPv6, that
 * slurmstepd's own descendants hold, and sends them over the node channel
 * (nodecall.c, job-ready), replacing what this node said before. Loopback
 * listeners are left out (the gateway cannot reach them there: the tunnel
 * is for those); a wildcard listener is reported once per address of the
 * node (getifaddrs, not loopback or link-local), so that the gateway never
 * has to resolve a name to reach a job.
 *
 * Owns the pipe, the stop pipe and the thread; the thread owns nothing else
 * and touches no SPANK handle (SPANK is not thread-safe): all it needs is
 * copied in before it starts.
 */
#ifndef JG_JOBREADY_H
#define JG_JOBREADY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "plugconf.h"

#define JOBREADY_EVERY_MS 1000   /* at most one registration per this */
#define JOBREADY_DESTS_MAX 32    /* listeners sent per node (the gateway's limit) */

/* Makes the pipe for job jobid's step run by this process (its descendants
 * of the job's uid are the job's processes) on node (Slurm's name). On
 * success 0 and the write end's number in *fd (inherited by the tasks:
 * JOBGATE_READY_FD); else -errno with err. */
int jobready_prepare(const struct plugconf *c, uint32_t jobid, uid_t uid, const char *node,
                     int *fd, char *err, size_t errlen);

/* Starts the thread, once slurmstepd has forked its last task (no task is
 * forked while the thread holds a lock or a descriptor of a node call).
 * 0 (also when not prepared), or -errno with err. */
int jobready_run(char *err, size_t errlen);

/* Stops the thread (waiting at most for a node call's deadline) and closes
 * both ends (slurm_spank_exit). Safe when not started. */
void jobready_stop(void);

/* The destination list of the listeners that uid's processes in root's tree
 * hold under proc (the JSON array the node channel takes): a wildcard
 * listener once per address of addrs[0..naddrs) (the node's own; IPv4 ones
 * only for 0.0.0.0), one on a specific address only when it is one of
 * addrs: for the unit test. NULL on error. */
struct json_t *jobready_list(const char *proc, pid_t root, uid_t uid, const char *const *addrs,
                             size_t naddrs);

#endif
