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
 *    (jobdir.c; the first step on the node makes it, later steps find it),
 *    the job's key and certificate (jobkey.c, nodecall.c), starts the
 *    step's JOBGATE_READY_FD watcher (jobready.c; stopped in
 *    slurm_spank_exit) and exports JOBGATE_DIR, JOBGATE_GATEWAY,
 *    JOBGATE_JOB_ID and JOBGATE_READY_FD into the step's tasks.
 *  - job_script (slurmd's epilog, root, a process of its own in which
 *    slurm_spank_init is not called): slurm_spank_job_epilog parses the
 *    arguments itself, tells the gateway the job ended and removes the job
 *    directory.
 *
 * Owns the parsed arguments and the --jobgate flag of this process, both
 * written only in the hooks above: SPANK calls a plugin from one thread.
 * A bad argument fails the hook; plugstack.conf's `required` or `optional`
 * decides whether that fails the job.
 */
#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <slurm/slurm.h>
#include <slurm/spank.h>

#include "jobdir.h"
#include "jobkey.h"
#include "jobready.h"
#include "nodecall.h"
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

/* The node's name as slurmd knows it (its own environment, never the job's,
 * which the user writes), else the host's short name. Returns node. */
static const char *node_name(char *node, size_t len)
{
    const char *env = getenv("SLURMD_NODENAME");
    if (env && *env && strlen(env) < len) {
        memcpy(node, env, strlen(env) + 1);
        return node;
    }
    if (gethostname(node, len) < 0)
        snprintf(node, len, "unknown");
    node[len - 1] = '\0';
    node[strcspn(node, ".")] = '\0';
    return node;
}

/* Reads a small file (the gateway's CA) into a malloc'ed string; NULL if not. */
static char *read_small(const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = malloc(max + 1);
    size_t n = 0;
    ssize_t r = 0;
    while (buf && n < max && (r = read(fd, buf + n, max - n)) > 0)
        n += (size_t)r;
    close(fd);
    if (!buf || r < 0 || n == max) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* Seconds the job has left by slurmctld's word, 0 if it does not say. */
static int64_t job_time_left(uint32_t jobid)
{
    job_info_msg_t *msg = NULL;
    int64_t left = 0;
    if (slurm_load_job(&msg, jobid, SHOW_ALL) == 0 && msg && msg->record_count > 0) {
        time_t end = msg->job_array[0].end_time;
        if (end > time(NULL))
            left = (int64_t)(end - time(NULL));
    }
    if (msg)
        slurm_free_job_info_msg(msg);
    return left;
}

/* How long a step waits for another step of the job that is getting its
 * credentials (the node channel's own deadline, and some). */
#define CREDENTIALS_LOCK_MS (NODECALL_TIMEOUT_MS + 5000)

/* The gateway's answer to job-start for this job's key and request: the
 * certificate and CA installed with the key (jobkey.c). 0 or -1 (logged). */
static int job_start(uint32_t jobid, uid_t uid, gid_t gid, const char *dir, EVP_PKEY *key,
                     const char *csr, const char *node)
{
    char err[1400], pwbuf[2048];
    struct passwd pw, *res = NULL;
    if (getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &res) != 0 || !res) {
        slurm_error("jobgate: job %u: uid %u has no user name on this node", (unsigned)jobid,
                    (unsigned)uid);
        return -1;
    }
    json_t *req = json_pack("{s:I, s:I, s:s, s:s, s:I, s:s}", "job", (json_int_t)jobid, "uid",
                            (json_int_t)uid, "user", res->pw_name, "node", node, "time_limit",
                            (json_int_t)job_time_left(jobid), "csr", csr);
    json_t *ans = NULL;
    int status = 0;
    int rc = req ? nodecall_post(&conf, "job-start", req, &status, &ans, err, sizeof(err))
                 : -ENOMEM;
    json_decref(req);
    if (rc < 0) {
        slurm_error("jobgate: job %u: the gateway %s: %s", (unsigned)jobid, conf.gateway, err);
    } else if (status != 200) {
        const char *why = json_string_value(json_object_get(ans, "error"));
        slurm_error("jobgate: job %u: the gateway %s refused the job (%d): %s", (unsigned)jobid,
                    conf.gateway, status, why ? why : "no reason given");
        rc = -EPERM;
    } else {
        const char *cert = json_string_value(json_object_get(ans, "cert"));
        const char *ca = json_string_value(json_object_get(ans, "ca"));
        char *gw_ca = conf.ca[0] ? read_small(conf.ca, 1 << 20) : NULL;
        if (!cert || !ca) {
            snprintf(err, sizeof(err), "the gateway's answer has no certificate");
            rc = -EPROTO;
        } else if (conf.ca[0] && !gw_ca) {
            snprintf(err, sizeof(err), "cannot read ca=%s", conf.ca);
            rc = -EIO;
        } else {
            rc = jobkey_install(dir, uid, gid, key, cert, ca, gw_ca, err, sizeof(err));
        }
        free(gw_ca);
        if (rc < 0)
            slurm_error("jobgate: job %u: %s", (unsigned)jobid, err);
    }
    json_decref(ans);
    return rc < 0 ? -1 : 0;
}

/* The job's key, its certificate from the gateway (the node channel) and the
 * gateway's CA, in dir. The first step on the node does it, the others find
 * the key (they wait for it under the directory's lock). 0 or -1 (logged). */
static int job_credentials(uint32_t jobid, uid_t uid, gid_t gid, const char *dir)
{
    char err[512], node[128];
    int lock = jobkey_lock(dir, CREDENTIALS_LOCK_MS, err, sizeof(err));
    if (lock < 0) {
        slurm_error("jobgate: job %u: %s", (unsigned)jobid, err);
        return -1;
    }
    int rc = 0;
    if (!jobkey_present(dir)) {
        EVP_PKEY *key = NULL;
        char *csr = NULL;
        rc = jobkey_request(&key, &csr, err, sizeof(err));
        if (rc < 0)
            slurm_error("jobgate: job %u: %s", (unsigned)jobid, err);
        else
            rc = job_start(jobid, uid, gid, dir, key, csr, node_name(node, sizeof(node)));
        EVP_PKEY_free(key);
        free(csr);
    }
    jobkey_unlock(lock);
    return rc < 0 ? -1 : 0;
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
    if (job_credentials(jobid, uid, gid, path) < 0)
        return -1;
    snprintf(id, sizeof(id), "%u", (unsigned)jobid);
    if (set_env(sp, "JOBGATE_DIR", path) < 0 || set_env(sp, "JOBGATE_GATEWAY", conf.gateway) < 0 ||
        set_env(sp, "JOBGATE_JOB_ID", id) < 0)
        return -1;
    /* JOBGATE_READY_FD: this step's listeners, registered when the job says so. */
    char node[128], fdtext[16];
    int fd;
    node_name(node, sizeof(node));
    if (jobready_prepare(&conf, jobid, uid, node, &fd, err, sizeof(err)) < 0) {
        slurm_error("jobgate: job %u: JOBGATE_READY_FD: %s", (unsigned)jobid, err);
        return -1;
    }
    snprintf(fdtext, sizeof(fdtext), "%d", fd);
    if (set_env(sp, "JOBGATE_READY_FD", fdtext) < 0)
        return -1;
    slurm_verbose("jobgate: job %u: directory %s", (unsigned)jobid, path);
    return 0;
}

/* Tells the gateway that the job ended: its routes, sessions and tunnels end. */
static void job_end(spank_t sp, uint32_t jobid)
{
    char node[128], err[512];
    node_name(node, sizeof(node));
    json_t *req = json_pack("{s:I, s:s}", "job", (json_int_t)jobid, "node", node), *ans = NULL;
    int status = 0;
    int rc = req ? nodecall_post(&conf, "job-end", req, &status, &ans, err, sizeof(err)) : -ENOMEM;
    json_decref(req);
    if (rc < 0)
        slurm_error("jobgate: job %u: cannot tell the gateway %s that it ended: %s",
                    (unsigned)jobid, conf.gateway, err);
    else if (status != 200 && status != 404)
        slurm_error("jobgate: job %u: the gateway %s answered %d to its end: %s", (unsigned)jobid,
                    conf.gateway, status,
                    json_string_value(json_object_get(ans, "error")) ?: "no reason given");
    else
        slurm_verbose("jobgate: job %u: ended at the gateway (%" JSON_INTEGER_FORMAT " routes)",
                      (unsigned)jobid, json_integer_value(json_object_get(ans, "routes")));
    json_decref(ans);
}

int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
    /* The JOBGATE_READY_FD watcher starts once the step's last local task is forked. */
    int task = -1;
    uint32_t count = 0;
    char err[256];
    if (!spank_remote(sp) || !want_jobgate ||
        spank_get_item(sp, S_TASK_ID, &task) != ESPANK_SUCCESS ||
        spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &count) != ESPANK_SUCCESS ||
        task < 0 || (uint32_t)task + 1 < count)
        return 0;
    if (jobready_run(err, sizeof(err)) < 0)
        slurm_error("jobgate: JOBGATE_READY_FD: %s", err); /* the job runs without it */
    return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
    if (spank_remote(sp))
        jobready_stop(); /* the step ends */
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
    /* A job with a directory here asked for jobgate: the gateway ends its routes first. */
    char path[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%u", conf.dir, (unsigned)jobid);
    if (lstat(path, &st) == 0)
        job_end(sp, jobid);
    if (jobdir_remove(conf.dir, jobid, EPILOG_REMOVE_MS, err, sizeof(err)) < 0) {
        slurm_error("jobgate: job %u: %s", (unsigned)jobid, err);
        return -1;
    }
    slurm_verbose("jobgate: job %u: directory %s/%u removed", (unsigned)jobid, conf.dir,
                  (unsigned)jobid);
    return 0;
}
