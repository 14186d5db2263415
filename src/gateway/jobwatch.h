/*
 * jobwatch — the scheduler's word on the gateway's jobs (docs/slurm.md, "The
 * reaper"): what ends a job whose end the node channel never brought
 * (slurmstepd killed with SIGKILL, a node that rebooted, an epilog that
 * could not reach the gateway).
 *
 * Every [slurm] job_check seconds, while jobs are recorded and running, a
 * thread of its own runs the configured command (default: Slurm's
 *   squeue --noheader --states=all --format=%A|%T|%U
 * one line "JOBID|STATE|UID" per job the scheduler knows), parses its output
 * strictly, and ends through the registry every job that the scheduler says
 * has finished (COMPLETED, CANCELLED, FAILED, TIMEOUT, …, and COMPLETING),
 * no longer knows, or knows as another user's. A command that fails, times
 * out or prints one malformed line changes nothing: the gateway never ends a
 * job on a scheduler it cannot read.
 *
 * Owns the thread, the child process of the command while it runs, and the
 * stop flag (under its mutex). Touches shared state only through
 * registry_* (which locks inside), never on a worker's loop: a slow
 * scheduler delays only this thread.
 */
#ifndef JG_JOBWATCH_H
#define JG_JOBWATCH_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct jg_config;
struct registry;
struct jobwatch;

#define JOBWATCH_TIMEOUT_S 20            /* the command's deadline */
#define JOBWATCH_OUTPUT_MAX (32u << 20)  /* bytes of its output */
#define JOBWATCH_STATE_MAX 32            /* bytes of a state name, NUL included */

/* One line of the command's output. */
struct watched_job {
    uint32_t id;
    uid_t uid;
    int ended;                  /* a state in which the job's apps must be gone */
    char state[JOBWATCH_STATE_MAX];
};

/* Starts the thread (none when cfg->job_check is 0: returns NULL without an
 * error, err empty). NULL with the reason in err when it cannot start. */
struct jobwatch *jobwatch_start(const struct jg_config *cfg, struct registry *reg, char *err,
                          size_t errlen);
/* Stops the thread (killing a command that still runs) and frees it. */
void jobwatch_stop(struct jobwatch *sc);

/* Parses the command's output (len bytes) into a new array sorted by id
 * (*jobs, the caller frees it): the count, or -EPROTO with the line and what
 * is wrong in err. Exposed for the unit test. */
int jobwatch_parse(const char *out, size_t len, struct watched_job **jobs, char *err, size_t errlen);

/* The job with id among jobs[0..n) (sorted), or NULL. */
const struct watched_job *jobwatch_find(const struct watched_job *jobs, size_t n, uint32_t id);

#endif
