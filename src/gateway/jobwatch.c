/* jobwatch — see jobwatch.h. */
#include "jobwatch.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "hmap.h"
#include "log.h"
#include "registry.h"
#include "tunnel.h"
#include "util.h"

extern char **environ;

#define DEFAULT_SQUEUE "squeue"
#define STDERR_KEEP 512 /* bytes of the command's stderr kept for the log */

/* A tunnel's hello named a job: is it the uid's, and running? */
struct claim {
    uint32_t job;
    uid_t uid;
    uint64_t tunnel;
    char node[JOB_NODE_MAX];
};

struct jobwatch {
    const struct jg_config *_Atomic cfg; /* jobwatch_reconfigure swaps it */
    struct registry *reg;
    struct tunnel_hub *hub;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stop;          /* under mu */
    pid_t child;       /* under mu: the command while it runs, else 0 */
    struct claim claims[JOBWATCH_CLAIMS_MAX]; /* under mu: asked, not yet answered */
    unsigned nclaims;                          /* under mu */
    int failing;       /* the thread's own: the last check could not read the scheduler */
    uint32_t *seen;    /* the thread's own: recorded jobs the last answer listed (sorted) */
    size_t nseen;
};

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* States in which a job's apps must be gone (squeue(1), JOB STATE CODES). */
static const char *const ended_states[] = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
};

static int cmp_job(const void *a, const void *b)
{
    uint32_t x = ((const struct watched_job *)a)->id, y = ((const struct watched_job *)b)->id;
    return x < y ? -1 : x > y;
}

/* Digits into *v, at most max. 0 or -1. */
static int parse_num(const char *s, size_t n, uint64_t max, uint64_t *v)
{
    if (n == 0 || n > 10)
        return -1;
    *v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        *v = *v * 10 + (uint64_t)(s[i] - '0');
    }
    return *v <= max ? 0 : -1;
}

int jobwatch_parse(const char *out, size_t len, struct watched_job **jobs, char *err, size_t errlen)
{
    struct watched_job *v = NULL;
    size_t n = 0, cap = 0;
    unsigned line = 0;
    const char *p = out, *end = out + len;
    *jobs = NULL;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        line++;
        const char *b1 = memchr(p, '|', (size_t)(le - p));
        const char *b2 = b1 ? memchr(b1 + 1, '|', (size_t)(le - b1 - 1)) : NULL;
        uint64_t id, uid;
        size_t slen = b2 ? (size_t)(b2 - b1 - 1) : 0;
        int ok = b2 && parse_num(p, (size_t)(b1 - p), UINT32_MAX - 1, &id) == 0 && id > 0 &&
                 parse_num(b2 + 1, (size_t)(le - b2 - 1), UINT32_MAX - 1, &uid) == 0 &&
                 slen > 0 && slen < JOBWATCH_STATE_MAX;
        for (size_t i = 0; ok && i < slen; i++)
            ok = (b1[1 + i] >= 'A' && b1[1 + i] <= 'Z') || b1[1 + i] == '_';
        if (!ok) {
            free(v);
            return errmsg(err, errlen, -EPROTO,
                          "line %u is not JOBID|STATE|UID (a job id, a state in capitals, a uid)",
                          line);
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            v = xrealloc(v, cap * sizeof(*v));
        }
        struct watched_job *j = &v[n++];
        j->id = (uint32_t)id;
        j->uid = (uid_t)uid;
        memcpy(j->state, b1 + 1, slen);
        j->state[slen] = '\0';
        j->ended = 0;
        for (size_t i = 0; i < JG_ARRAY_LEN(ended_states); i++)
            if (strcmp(j->state, ended_states[i]) == 0)
                j->ended = 1;
        p = nl ? nl + 1 : end;
    }
    if (n > 1)
        qsort(v, n, sizeof(*v), cmp_job);
    *jobs = v;
    return (int)n;
}

const struct watched_job *jobwatch_find(const struct watched_job *jobs, size_t n, uint32_t id)
{
    struct watched_job key = {.id = id};
    return n ? bsearch(&key, jobs, n, sizeof(*jobs), cmp_job) : NULL;
}

/* Reads what fds[0] (stdout) and fds[1] (stderr) give until both end or the
 * deadline passes. 0, -ETIMEDOUT, -EMSGSIZE. */
static int read_both(int fds[2], char **out, size_t *olen, char *errbuf, size_t eblen,
                     int64_t deadline)
{
    size_t cap = 65536, elen = 0;
    char *buf = xmalloc(cap);
    *olen = 0;
    int open = 2, rc = 0;
    while (open > 0 && rc == 0) {
        struct pollfd pf[2] = {{.fd = fds[0], .events = POLLIN}, {.fd = fds[1], .events = POLLIN}};
        int64_t left = deadline - now_mono_ms();
        if (left <= 0) {
            rc = -ETIMEDOUT;
            break;
        }
        int k = poll(pf, 2, (int)left);
        if (k < 0 && errno == EINTR)
            continue;
        for (int i = 0; i < 2 && k > 0; i++) {
            if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char tmp[8192];
            ssize_t r = read(pf[i].fd, tmp, sizeof(tmp));
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                fds[i] = -fds[i] - 1; /* done; poll ignores negative fds */
                open--;
                continue;
            }
            if (i == 1) {
                size_t take = elen + (size_t)r < eblen - 1 ? (size_t)r : eblen - 1 - elen;
                memcpy(errbuf + elen, tmp, take);
                elen += take;
                continue;
            }
            if (*olen + (size_t)r > JOBWATCH_OUTPUT_MAX) {
                rc = -EMSGSIZE;
                break;
            }
            while (*olen + (size_t)r > cap)
                buf = xrealloc(buf, cap *= 2);
            memcpy(buf + *olen, tmp, (size_t)r);
            *olen += (size_t)r;
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i] < 0)
            fds[i] = -fds[i] - 1;
    errbuf[elen] = '\0';
    *out = buf;
    return rc;
}

/* Runs the command; 0 with its output (free()), or -errno with err. */
static int run_command(struct jobwatch *sc, char **out, size_t *olen, char *err, size_t errlen)
{
    const char *prog = sc->cfg->squeue ? sc->cfg->squeue : DEFAULT_SQUEUE;
    char a0[] = "--noheader", a1[] = "--states=all", a2[] = "--format=%A|%T|%U";
    char *const argv[] = {(char *)prog, a0, a1, a2, NULL};
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    *out = NULL;
    if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) {
        int e = errno;
        for (int i = 0; i < 2; i++) {
            if (po[i] >= 0)
                close(po[i]);
            if (pe[i] >= 0)
                close(pe[i]);
        }
        return errmsg(err, errlen, -e, "cannot make a pipe: %s", strerror(e));
    }
    /* The command starts with default signals: not this thread's mask (all blocked), not the
     * daemon's ignored SIGPIPE. */
    posix_spawnattr_t attr;
    sigset_t none, pipe;
    sigemptyset(&none);
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &pipe);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, po[1], 1);
    posix_spawn_file_actions_adddup2(&fa, pe[1], 2);
    pid_t pid;
    pthread_mutex_lock(&sc->mu);
    int rc = sc->stop ? ECANCELED : posix_spawnp(&pid, prog, &fa, &attr, argv, environ);
    if (rc == 0)
        sc->child = pid;
    pthread_mutex_unlock(&sc->mu);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(po[1]);
    close(pe[1]);
    if (rc != 0) {
        close(po[0]);
        close(pe[0]);
        return errmsg(err, errlen, -rc, "cannot run %s: %s", prog, strerror(rc));
    }
    char ebuf[STDERR_KEEP];
    int fds[2] = {po[0], pe[0]};
    int r = read_both(fds, out, olen, ebuf, sizeof(ebuf),
                      now_mono_ms() + JOBWATCH_TIMEOUT_S * 1000);
    if (r < 0)
        kill(pid, SIGKILL);
    close(fds[0]);
    close(fds[1]);
    /* Forgotten before it is reaped: a stop must not kill a pid the kernel gave away. */
    pthread_mutex_lock(&sc->mu);
    sc->child = 0;
    pthread_mutex_unlock(&sc->mu);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    ebuf[strcspn(ebuf, "\n")] = '\0';
    if (r == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
        r = -EIO;
    if (r < 0) {
        free(*out);
        *out = NULL;
        if (r == -ETIMEDOUT)
            return errmsg(err, errlen, r, "%s did not finish within %d s", prog, JOBWATCH_TIMEOUT_S);
        if (r == -EMSGSIZE)
            return errmsg(err, errlen, r, "%s printed more than %u bytes", prog,
                          JOBWATCH_OUTPUT_MAX);
        if (WIFEXITED(status))
            return errmsg(err, errlen, r, "%s exited with %d%s%s", prog, WEXITSTATUS(status),
                          ebuf[0] ? ": " : "", ebuf);
        return errmsg(err, errlen, r, "%s ended by signal %d", prog,
                      WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    return 0;
}

/* uid's name into out ("" if it has none), once per uid and round (names). */
static void user_name(struct hmap *names, uid_t uid, char *out, size_t len)
{
    const char *known = hmap_get(names, &uid, sizeof(uid));
    if (!known) {
        struct passwd pw, *res = NULL;
        char pwbuf[1024];
        int ok = getpwuid_r(uid, &pw, pwbuf, sizeof(pwbuf), &res) == 0 && res;
        char *name = xstrdup(ok ? res->pw_name : "");
        if (hmap_put(names, &uid, sizeof(uid), name) < 0) {
            snprintf(out, len, "%s", name);
            free(name);
            return;
        }
        known = name;
    }
    snprintf(out, len, "%s", known);
}

/* Answers a claim from the scheduler's list (jobs[0..m)), or with why when
 * the scheduler could not be read (m < 0). */
static void answer_claim(struct jobwatch *sc, const struct claim *c, const struct watched_job *jobs,
                         int m, const char *err)
{
    char why[160];
    const struct watched_job *j = m >= 0 ? jobwatch_find(jobs, (size_t)m, c->job) : NULL;
    struct passwd pw, *res = NULL;
    char pwbuf[1024];
    if (m < 0) {
        snprintf(why, sizeof(why), "cannot ask the scheduler: %.120s", err);
    } else if (!j) {
        snprintf(why, sizeof(why), "the scheduler does not know job %u", (unsigned)c->job);
    } else if (j->uid != c->uid) {
        snprintf(why, sizeof(why), "job %u is not yours", (unsigned)c->job);
    } else if (strcmp(j->state, "RUNNING") != 0) {
        snprintf(why, sizeof(why), "job %u is %s", (unsigned)c->job, j->state);
    } else if (getpwuid_r(c->uid, &pw, pwbuf, sizeof(pwbuf), &res) != 0 || !res ||
               !job_name_valid(res->pw_name, JOB_USER_MAX)) {
        snprintf(why, sizeof(why), "uid %u has no user name here", (unsigned)c->uid);
    } else {
        struct job rec = {.id = c->job, .uid = c->uid, .adopted = 1,
                          .not_after = now_real() + sc->cfg->job_cert_max};
        snprintf(rec.user, sizeof(rec.user), "%s", res->pw_name);
        snprintf(rec.node, sizeof(rec.node), "%s",
                 job_name_valid(c->node, JOB_NODE_MAX) ? c->node : "unknown");
        int rc = registry_job_adopt(sc->reg, &rec);
        if (rc == 0) {
            tunnel_job_verdict(sc->hub, c->tunnel, 1, NULL);
            return;
        }
        snprintf(why, sizeof(why), "job %u %s", (unsigned)c->job,
                 rc == -ESTALE ? "has ended"
                 : rc == -EEXIST ? "is recorded for another user"
                 : rc == -EPERM ? "has its own certificate (JOBGATE_DIR): only that proves it"
                                : "could not be recorded");
    }
    tunnel_job_verdict(sc->hub, c->tunnel, 0, why);
}

/* Asks the scheduler about the running jobs and ends those it says ended;
 * answers the claims taken from the queue. */
static void check(struct jobwatch *sc, const struct claim *claims, unsigned nclaims)
{
    uint32_t *ids;
    int n = registry_jobs_running(sc->reg, &ids);
    if (n <= 0 && nclaims == 0 && !sc->cfg->shared) {
        free(ids); /* a personal gateway asks only about jobs it has */
        return;
    }
    char err[700], *out = NULL;
    size_t len = 0;
    struct watched_job *jobs = NULL;
    int m = run_command(sc, &out, &len, err, sizeof(err));
    if (m == 0)
        m = jobwatch_parse(out, len, &jobs, err, sizeof(err));
    free(out);
    for (unsigned i = 0; i < nclaims; i++)
        answer_claim(sc, &claims[i], jobs, m, err);
    if (m < 0) {
        if (!sc->failing)
            log_warn("jobwatch: cannot read the scheduler's jobs (%s); no job is ended until it "
                     "answers", err);
        sc->failing = 1;
        free(ids);
        return;
    }
    if (sc->failing)
        log_info("jobwatch: the scheduler answers again (%d jobs)", m);
    sc->failing = 0;
    /* The whole answer, for listings (queued jobs, jobs without jobgate), with
     * the users' names: looked up here, where waiting on NSS stalls no loop. */
    struct registry_sched_job *view = xcalloc((size_t)m + 1, sizeof(*view));
    struct hmap *names = hmap_new();
    for (int i = 0; i < m; i++) {
        view[i].id = jobs[i].id;
        view[i].uid = jobs[i].uid;
        snprintf(view[i].state, sizeof(view[i].state), "%s", jobs[i].state);
        user_name(names, jobs[i].uid, view[i].user, sizeof(view[i].user));
    }
    hmap_free(names, free);
    registry_sched_set(sc->reg, view, (size_t)m);
    /* A job missing from an answer ends only when an earlier answer listed it: a
     * scheduler that shows the gateway nothing (PrivateData=jobs, another cluster) must
     * not end every job. */
    uint32_t *seen = xcalloc((size_t)n + 1, sizeof(*seen));
    size_t nseen = 0;
    for (int i = 0; i < n; i++)
        if (jobwatch_find(jobs, (size_t)m, ids[i]))
            seen[nseen++] = ids[i];
    qsort(seen, nseen, sizeof(*seen), cmp_u32);
    for (int i = 0; i < n; i++) {
        const struct watched_job *j = jobwatch_find(jobs, (size_t)m, ids[i]);
        struct job rec;
        char why[96];
        if (registry_job_get(sc->reg, ids[i], &rec) < 0 || rec.ended)
            continue;
        if (!j && !(sc->nseen && bsearch(&ids[i], sc->seen, sc->nseen, sizeof(*sc->seen),
                                         cmp_u32)))
            continue; /* never listed: nothing to conclude */
        if (!j)
            snprintf(why, sizeof(why), "the scheduler no longer knows the job");
        else if (j->uid != rec.uid)
            snprintf(why, sizeof(why), "the scheduler has job %u as uid %u's",
                     (unsigned)ids[i], (unsigned)j->uid);
        else if (j->ended)
            snprintf(why, sizeof(why), "the scheduler says %s", j->state);
        else
            continue;
        registry_job_end(sc->reg, ids[i], 0, why);
    }
    free(sc->seen);
    sc->seen = seen;
    sc->nseen = nseen;
    free(jobs);
    free(ids);
}

int jobwatch_ask(void *arg, uint32_t job, uid_t uid, const char *node, uint64_t tunnel)
{
    struct jobwatch *sc = arg;
    unsigned mine = 0;
    pthread_mutex_lock(&sc->mu);
    for (unsigned i = 0; i < sc->nclaims; i++)
        mine += sc->claims[i].uid == uid;
    int rc = sc->stop || sc->nclaims == JOBWATCH_CLAIMS_MAX || mine >= JOBWATCH_CLAIMS_PER_UID
                 ? -EBUSY : 0;
    if (rc == 0) {
        struct claim *c = &sc->claims[sc->nclaims++];
        c->job = job;
        c->uid = uid;
        c->tunnel = tunnel;
        snprintf(c->node, sizeof(c->node), "%s", node ? node : "");
        pthread_cond_signal(&sc->cond);
    }
    pthread_mutex_unlock(&sc->mu);
    return rc;
}

static void *jobwatch_main(void *arg)
{
    struct jobwatch *sc = arg;
    struct claim claims[JOBWATCH_CLAIMS_MAX];
    struct timespec next, last = {0, 0};
    clock_gettime(CLOCK_MONOTONIC, &next);
    next.tv_sec += (time_t)sc->cfg->job_check;
    pthread_mutex_lock(&sc->mu);
    while (!sc->stop) {
        /* The next round, or at once for a tunnel that waits for its answer (but never
         * more often than every JOBWATCH_GAP_MS: hellos must not drive squeue). */
        while (!sc->stop && sc->nclaims == 0 &&
               pthread_cond_timedwait(&sc->cond, &sc->mu, &next) != ETIMEDOUT)
            ;
        struct timespec gap = last;
        gap.tv_nsec += (long)JOBWATCH_GAP_MS * 1000000L;
        gap.tv_sec += gap.tv_nsec / 1000000000L;
        gap.tv_nsec %= 1000000000L;
        while (!sc->stop && pthread_cond_timedwait(&sc->cond, &sc->mu, &gap) != ETIMEDOUT)
            ;
        if (sc->stop)
            break;
        unsigned n = sc->nclaims;
        memcpy(claims, sc->claims, n * sizeof(*claims));
        sc->nclaims = 0;
        pthread_mutex_unlock(&sc->mu);
        check(sc, claims, n);
        clock_gettime(CLOCK_MONOTONIC, &last);
        next = last;
        next.tv_sec += (time_t)sc->cfg->job_check;
        pthread_mutex_lock(&sc->mu);
    }
    pthread_mutex_unlock(&sc->mu);
    return NULL;
}

void jobwatch_reconfigure(struct jobwatch *sc, const struct jg_config *cfg)
{
    if (sc)
        atomic_store(&sc->cfg, cfg);
}

struct jobwatch *jobwatch_start(const struct jg_config *cfg, struct registry *reg,
                                struct tunnel_hub *hub, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (cfg->job_check == 0)
        return NULL;
    struct jobwatch *sc = xcalloc(1, sizeof(*sc));
    sc->cfg = cfg;
    sc->reg = reg;
    sc->hub = hub;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sc->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&sc->mu, NULL);
    /* No signal of the daemon's may reach this thread (libevent's handlers run on worker 0). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&sc->thread, NULL, jobwatch_main, sc);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errmsg(err, errlen, -rc, "cannot start the scheduler thread: %s", strerror(rc));
        pthread_cond_destroy(&sc->cond);
        pthread_mutex_destroy(&sc->mu);
        free(sc);
        return NULL;
    }
    return sc;
}

void jobwatch_stop(struct jobwatch *sc)
{
    if (!sc)
        return;
    pthread_mutex_lock(&sc->mu);
    sc->stop = 1;
    if (sc->child > 0)
        kill(sc->child, SIGKILL);
    pthread_cond_signal(&sc->cond);
    pthread_mutex_unlock(&sc->mu);
    pthread_join(sc->thread, NULL);
    pthread_cond_destroy(&sc->cond);
    pthread_mutex_destroy(&sc->mu);
    free(sc->seen);
    free(sc);
}
