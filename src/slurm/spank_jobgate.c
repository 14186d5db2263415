/*
 * spank_jobgate.so — the Slurm SPANK plugin: a job started with --jobgate
 * becomes the unit of access to the gateway (docs/slurm.md).
 *
 * What runs where (spank(8) contexts):
 *  - allocator (sbatch, salloc) and local (srun): slurm_spank_init registers
 *    the --jobgate option (sbatch and salloc see an option only when it is
 *    registered with spank_option_register, not through a bare
 *    spank_options table) and checks the plugin's arguments.
 *  - remote (slurmstepd, root, once per step): when the job asked for
 *    jobgate, slurm_spank_init_post_opt makes the job directory
 *    (jobdir.c; the first step on the node makes it, later steps find it)
 *    and exports JOBGATE_DIR, JOBGATE_GATEWAY and JOBGATE_JOB_ID into the
 *    step's tasks.
 *  - job_script (slurmd's epilog, root, a process of its own in which
 *    slurm_spank_init is not called): slurm_spank_job_epilog parses the
 *    arguments itself and removes the job directory.
 *
 * Owns the parsed arguments and the --jobgate flag of this process, both
 * written only in the hooks above: SPANK calls a plugin from one thread.
 * A bad argument fails the hook; plugstack.conf's `required` or `optional`
 * decides whether that fails the job.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

#include "jobdir.h"
#include "plugconf.h"

SPANK_PLUGIN(jobgate, 1);

/* How long (ms) the epilog keeps trying to remove a job directory that NFS keeps busy. */
#define EPILOG_REMOVE_MS 5000

static struct plugconf conf;
static int conf_ok;
static int want_jobgate;

static int opt_jobgate(int val, const char *optarg, int remote)
{
    want_jobgate = 1;
    return 0;
}

/* spank.h declares the option's strings char *: arrays, not literals. */
static char opt_name[] = "jobgate";
static char opt_usage[] = "Reach this job's web apps through the jobgate gateway: the job gets "
                          "a directory of its own (JOBGATE_DIR) and `jobgate run` in it needs "
                          "no more options.";

static struct spank_option jobgate_option = {
    .name = opt_name,
    .arginfo = NULL,
    .usage = opt_usage,
    .has_arg = 0,
    .val = 0,
    .cb = opt_jobgate,
};

int slurm_spank_init(spank_t sp, int ac, char **av)
{
    /* The option first: with `optional` in plugstack.conf and a bad argument, a job that
     * asks for --jobgate still runs (without it) instead of failing on an unknown option. */
    spank_context_t ctx = spank_context();
    if (ctx == S_CTX_ALLOCATOR || ctx == S_CTX_LOCAL || ctx == S_CTX_REMOTE) {
        spank_err_t rc = spank_option_register(sp, &jobgate_option);
        if (rc != ESPANK_SUCCESS) {
            slurm_error("jobgate: cannot register --jobgate: %s", spank_strerror(rc));
            return -1;
        }
    }
    char err[512];
    if (plugconf_parse(ac, av, &conf, err, sizeof(err)) < 0) {
        slurm_error("jobgate: plugstack.conf: %s", err);
        return -1;
    }
    conf_ok = 1;
    return 0;
}

static int set_env(spank_t sp, const char *name, const char *value)
{
    spank_err_t rc = spank_setenv(sp, name, value, 1);
    if (rc != ESPANK_SUCCESS) {
        slurm_error("jobgate: cannot set %s in the job: %s", name, spank_strerror(rc));
        return -1;
    }
    return 0;
}

int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
    if (!spank_remote(sp) || !want_jobgate || !conf_ok)
        return 0;
    uint32_t jobid = 0;
    uid_t uid;
    gid_t gid;
    if (spank_get_item(sp, S_JOB_ID, &jobid) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS) {
        slurm_error("jobgate: the job's id, uid or gid is not known to the plugin");
        return -1;
    }
    char path[4096], err[512], id[16];
    if (jobdir_make(conf.dir, jobid, uid, gid, path, sizeof(path), err, sizeof(err)) < 0) {
        slurm_error("jobgate: job %u: %s", (unsigned)jobid, err);
        return -1;
    }
    snprintf(id, sizeof(id), "%u", (unsigned)jobid);
    if (set_env(sp, "JOBGATE_DIR", path) < 0 || set_env(sp, "JOBGATE_GATEWAY", conf.gateway) < 0 ||
        set_env(sp, "JOBGATE_JOB_ID", id) < 0)
        return -1;
    slurm_verbose("jobgate: job %u: directory %s", (unsigned)jobid, path);
    return 0;
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
    /* slurmstepd runs the epilog in a process of its own without slurm_spank_init. */
    char err[512];
    if (plugconf_parse(ac, av, &conf, err, sizeof(err)) < 0) {
        slurm_error("jobgate: plugstack.conf: %s", err);
        return -1;
    }
    uint32_t jobid = 0;
    if (spank_get_item(sp, S_JOB_ID, &jobid) != ESPANK_SUCCESS) {
        const char *e = getenv("SLURM_JOB_ID");
        char *end;
        unsigned long v = e ? strtoul(e, &end, 10) : 0;
        if (!e || !*e || *end || v == 0 || v > UINT32_MAX) {
            slurm_error("jobgate: epilog: the job's id is not known to the plugin");
            return -1;
        }
        jobid = (uint32_t)v;
    }
    if (jobdir_remove(conf.dir, jobid, EPILOG_REMOVE_MS, err, sizeof(err)) < 0) {
        slurm_error("jobgate: job %u: %s", (unsigned)jobid, err);
        return -1;
    }
    slurm_verbose("jobgate: job %u: directory %s/%u removed", (unsigned)jobid, conf.dir,
                  (unsigned)jobid);
    return 0;
}
