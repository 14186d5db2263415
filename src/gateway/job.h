/*
 * job — the batch jobs the gateway knows (docs/slurm.md): a job is recorded
 * when a node asks for its certificate over the node channel, and ended when
 * a node says it ended. A route made with a job certificate carries the
 * job's id and ends with the job.
 *
 * Owns the struct job objects. Used only by the registry, under its state
 * lock (reading for lookups, writing for changes), like route.c; everyone
 * else gets copies from registry_job_*.
 */
#ifndef JG_JOB_H
#define JG_JOB_H

#include <stdint.h>
#include <sys/types.h>

#define JOB_USER_MAX 64  /* bytes of a user name, NUL included */
#define JOB_NODE_MAX 65  /* bytes of a node name, NUL included */
#define JOB_HOST_MAX 65  /* bytes of a destination's host (a name or an IP literal) */
#define JOB_DEST_MAX 32  /* destinations of one node of a job */
#define JOB_DESTS_MAX 128 /* destinations of one job, all its nodes */

/* A TCP port that a job's own process listens on (docs/slurm.md, "Allowed
 * destinations"): on node, reachable as host:port. */
struct job_dest {
    char node[JOB_NODE_MAX];
    char host[JOB_HOST_MAX];
    uint16_t port;
};

struct job {
    uint32_t id;             /* the scheduler's job id, > 0 */
    uid_t uid;               /* its user */
    char user[JOB_USER_MAX];
    char node[JOB_NODE_MAX]; /* the first node that asked for its certificate */
    int64_t not_after;       /* its certificates' end, seconds since the epoch */
    int64_t started;         /* recorded at, seconds since the epoch */
    int64_t ended;           /* 0 while it runs */
    int adopted;             /* recorded on the scheduler's word for an agent's hello
                              * (SLURM_JOB_ID), not by its node: it has no certificate */
};

struct job_table;

struct job_table *job_table_new(void);
void job_table_free(struct job_table *t);
/* Adds a copy of *j, or replaces the job with its id (keeping its
 * destinations). 0 or -EINVAL (id 0). */
int job_put(struct job_table *t, const struct job *j);
/* The job with this id, or NULL. */
const struct job *job_find(const struct job_table *t, uint32_t id);
/* Removes the job with this id. 0 or -ENOENT. */
int job_remove(struct job_table *t, uint32_t id);
size_t job_count(const struct job_table *t);
/* Calls cb for every job; cb returns nonzero to remove that job (after cb). */
void job_filter(struct job_table *t, int (*cb)(const struct job *j, void *arg), void *arg);

/* Replaces what node registered for job id by d[0..n) (n at most
 * JOB_DEST_MAX; the job's other nodes' stay). 0, -ENOENT (no such job) or
 * -ENOSPC (the job would hold more than JOB_DESTS_MAX). */
int job_dests_set(struct job_table *t, uint32_t id, const char *node, const struct job_dest *d,
                  unsigned n);
/* 1 when host:port is one of job id's destinations. */
int job_dest_has(const struct job_table *t, uint32_t id, const char *host, uint16_t port);
/* Forgets every destination of job id (it ended). */
void job_dests_clear(struct job_table *t, uint32_t id);
/* Job id's destinations: *d points into the table (valid while the caller
 * holds the registry's lock). The count (0 for an unknown job). */
unsigned job_dests(const struct job_table *t, uint32_t id, const struct job_dest **d);

/* 1 if name is a user or node name the gateway records: 1..max-1 bytes of
 * A-Z a-z 0-9 . _ -, not starting with '-'. */
int job_name_valid(const char *name, size_t max);

#endif
