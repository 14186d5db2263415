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
 * no longer lists although an earlier answer did, or lists as another
 * user's. (The gateway's user must see every user's jobs: no PrivateData=jobs
 * for it; a job it never sees is never ended by the scheduler's silence.) A command that fails, times
 * out or prints one malformed line changes nothing: the gateway never ends a
 * job on a scheduler it cannot read.
 *
 * A shared gateway asks every round, jobs or not, and hands the whole answer
 * to the registry for listings (registry_sched_set: queued jobs, jobs that
 * run without jobgate).
 *
 * The same answer settles the jobs that agents' hellos name without a job
 * certificate (SLURM_JOB_ID at a site without the plugin): a tunnel asks
 * (jobwatch_ask), the thread runs the command at once, and the tunnel
 * belongs to the job only when the scheduler runs it as the tunnel's uid.
 *
 * Owns the thread, the child process of the command while it runs, the
 * queue of tunnels' questions and the stop flag (under its mutex). Touches shared state only through
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
struct tunnel_hub;

#define JOBWATCH_TIMEOUT_S 20            /* the command's deadline */
#define JOBWATCH_OUTPUT_MAX (32u << 20)  /* bytes of its output */
#define JOBWATCH_STATE_MAX 32            /* bytes of a state name, NUL included */
#define JOBWATCH_CLAIMS_MAX 256          /* tunnels waiting for an answer at once */
#define JOBWATCH_CLAIMS_PER_UID 8        /* ... of one user */
#define JOBWATCH_GAP_MS 1000             /* between two runs of the command, at least */

/* One line of the command's output. */
struct watched_job {
    uint32_t id;
    uid_t uid;
    int ended;                  /* a state in which the job's apps must be gone */
    char state[JOBWATCH_STATE_MAX];
};

/* SIGHUP: squeue and job_cert_max from cfg from now on (job_check is the
 * running one; the caller keeps cfg until the thread is stopped). */
void jobwatch_reconfigure(struct jobwatch *sc, const struct jg_config *cfg);
/* Starts the thread (none when cfg->job_check is 0: returns NULL without an
 * error, err empty). NULL with the reason in err when it cannot start. */
struct jobwatch *jobwatch_start(const struct jg_config *cfg, struct registry *reg,
                                struct tunnel_hub *hub, char *err, size_t errlen);
/* A tunnel's hello named job (SLURM_JOB_ID) for uid: asks the scheduler at
 * once (not waiting for the next round) and answers with
 * tunnel_job_verdict(hub, tunnel, …) from this thread: confirmed (the job
 * recorded, registry_job_adopt) when it runs as uid. The hook of
 * tunnel_hub_set_job_check; 0, or -EBUSY (too many waiting: not asked). */
int jobwatch_ask(void *arg, uint32_t job, uid_t uid, const char *node, uint64_t tunnel);

/* Stops the thread (killing a command that still runs) and frees it. */
void jobwatch_stop(struct jobwatch *sc);

/* Parses the command's output (len bytes) into a new array sorted by id
 * (*jobs, the caller frees it): the count, or -EPROTO with the line and what
 * is wrong in err. Exposed for the unit test. */
int jobwatch_parse(const char *out, size_t len, struct watched_job **jobs, char *err, size_t errlen);

/* The job with id among jobs[0..n) (sorted), or NULL. */
const struct watched_job *jobwatch_find(const struct watched_job *jobs, size_t n, uint32_t id);

#endif
