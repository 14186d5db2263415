/*
 * tunnel_hello — a gateway tunnel's hello (docs/tunnel-protocol.md): its
 * policy, its credential (MUNGE, a user's or a job's certificate, the
 * personal token, SO_PEERCRED of the SSH hand-over), the scheduler's word on
 * a job it names, then the welcome with the user's name.
 *
 * What may wait on another daemon (munged; the user database behind
 * getpwnam_r/getpwuid_r) runs off the event loop (offload.h): the tunnel
 * waits in T_AUTH, still counted as not said hello, until the answer comes
 * back to its worker (hello_done), or its handshake time runs out. A
 * struct hello_job is the pool thread's alone while it works: the tunnel
 * never touches it then, and it never touches the tunnel; a tunnel that
 * ends first tells it so (tctl_hello_forget) on its own thread, the one
 * hello_done runs on.
 */
#include "tunnel.h"
#include "tunnel-int.h"

#include <errno.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/bufferevent_ssl.h>

#include <openssl/err.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "gridmap.h"
#include "jobca.h"
#include "jobcert.h"
#include "log.h"
#include "offload.h"
#include "registry.h"
#include "util.h"
#include "worker-t.h"
#ifdef JG_HAVE_MUNGE
#include "munge_cred.h"
#endif

struct hello_job {
    struct offload_job oj;      /* first: the offload's */
    struct tunnel *t;           /* the tunnel's thread's: NULL once the tunnel is gone */
    /* what the pool thread reads */
    uint64_t id;                /* the tunnel's, for the log */
    char method[12];
    int known;                  /* checked on the loop already (uid below) */
    uid_t uid;
    char *cred, *pem, *sig;     /* munge: cred; cert: pem and sig (copies) */
    char payload[160];          /* what the credential must have signed */
    char *munge_socket;         /* NULL: MUNGE's default */
    const struct tunnel_trust *trust; /* the hub keeps it to the end */
    const struct jobca *ca;
    /* what the loop reads once it is back */
    char node[65], job[33], agent[65];
    int ok;
    char why[400];
    char user[64];              /* uid's name ("" when it has none) */
};

/* Copies a short, printable string from the agent for the log ("-" if absent or odd). */
static void log_str(const json_t *v, char *out, size_t len)
{
    const char *s = json_string_value(v);
    if (!s || !*s || strlen(s) >= len) {
        snprintf(out, len, "-");
        return;
    }
    for (size_t i = 0; s[i]; i++)
        out[i] = (s[i] > ' ' && s[i] < 0x7f) ? s[i] : '?';
    out[strlen(s)] = '\0';
}

static char *dup_str(const json_t *v)
{
    const char *s = json_string_value(v);
    return s ? xstrdup(s) : NULL;
}

/* A job's certificate and its signature of the challenge: 0 with *uid and
 * t->job, or -1 with why. CPU only: on the loop. */
static int jobcert_auth(struct tunnel *t, json_t *auth, uid_t *uid, char *why, size_t wl)
{
    const char *pem = json_string_value(json_object_get(auth, "cert"));
    const char *sig = json_string_value(json_object_get(auth, "signature"));
    X509 *cert = pem ? jobcert_parse(pem, strlen(pem)) : NULL;
    struct jobca_job cj;
    struct job j;
    char err[256], payload[64];
    int rc = -1;
    if (!cert) {
        snprintf(why, wl, "the hello's 'cert' is not a PEM certificate");
        return -1;
    }
    int n = snprintf(payload, sizeof(payload), "jobgate/1 hello %s", t->nonce);
    if (jobca_verify(t->hub->ca, cert, now_real(), &cj, err, sizeof(err)) < 0)
        snprintf(why, wl, "job certificate refused: %s", err);
    else if (!jobcert_verify(cert, payload, (size_t)n, sig))
        snprintf(why, wl, "the signature is not the job certificate's key's");
    else if (registry_job_get(t->hub->reg, cj.job_id, &j) < 0 || j.uid != cj.uid)
        snprintf(why, wl, "job %u is not known to this gateway", (unsigned)cj.job_id);
    else if (j.ended)
        snprintf(why, wl, "job %u has ended", (unsigned)cj.job_id);
    else {
        *uid = j.uid;
        t->job = j.id;
        t->seen_revocation = registry_revocations(t->hub->reg);
        rc = 0;
    }
    X509_free(cert);
    return rc;
}

/* On a pool thread: a user's own certificate (the site's client_ca) and its
 * signature of the challenge; the grid-mapfile names its user. */
static void usercert_work(struct hello_job *j)
{
    X509 *cert = j->pem ? jobcert_parse(j->pem, strlen(j->pem)) : NULL;
    char user[GRIDMAP_USER_MAX], err[400], *dn = NULL;
    struct jobca_job cj;
    if (!cert) {
        snprintf(j->why, sizeof(j->why), "the hello's 'cert' is not a PEM certificate");
        return;
    }
    X509_STORE_CTX *xs = X509_STORE_CTX_new();
    int ok = xs && X509_STORE_CTX_init(xs, j->trust->store, cert, NULL) == 1 &&
             X509_STORE_CTX_set_purpose(xs, X509_PURPOSE_SSL_CLIENT) == 1 &&
             X509_verify_cert(xs) == 1;
    const char *verr = xs ? X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)) : "";
    if (jobca_verify(j->ca, cert, now_real(), &cj, err, sizeof(err)) == 0) {
        snprintf(j->why, sizeof(j->why), "a job's certificate proves a job (method jobcert), "
                 "not a user");
    } else if (!ok) {
        snprintf(j->why, sizeof(j->why), "certificate refused: %s", verr);
    } else if (!jobcert_verify(cert, j->payload, strlen(j->payload), j->sig)) {
        snprintf(j->why, sizeof(j->why), "the signature is not the certificate's key's");
    } else if (!(dn = X509_NAME_oneline(X509_get_subject_name(cert), NULL, 0)) ||
               strlen(dn) >= GRIDMAP_DN_MAX) {
        /* Whole, or not at all: a subject cut short could name someone else. */
        snprintf(j->why, sizeof(j->why), "the certificate's subject cannot be read whole (at "
                 "most %d bytes)", GRIDMAP_DN_MAX - 1);
    } else if (gridmap_lookup(j->trust->gridmap, dn, user, sizeof(user), err, sizeof(err)) < 0) {
        snprintf(j->why, sizeof(j->why), "%s", err);
    } else {
        struct passwd pw, *res = NULL;
        char pwbuf[1024];
        if (getpwnam_r(user, &pw, pwbuf, sizeof(pwbuf), &res) != 0 || !res) {
            snprintf(j->why, sizeof(j->why), "the grid-mapfile names user '%s', who does not "
                     "exist here", user);
        } else {
            j->uid = res->pw_uid;
            j->known = 1;
            log_info("tunnel=%" PRIx64 " certificate %.300s is user %s", j->id, dn, user);
        }
    }
    OPENSSL_free(dn);
    X509_STORE_CTX_free(xs);
    X509_free(cert);
    ERR_clear_error();
}

/* On a pool thread: the credential (when the loop could not check it) and
 * the user's name. */
static void hello_work(struct offload_job *oj)
{
    struct hello_job *j = (struct hello_job *)oj;
    if (!j->known && strcmp(j->method, "cert") == 0) {
        usercert_work(j);
    } else if (!j->known) { /* munge */
#ifdef JG_HAVE_MUNGE
        struct munge_identity id;
        char err[256];
        if (munge_cred_decode(j->munge_socket, j->cred, strlen(j->cred), j->payload,
                              strlen(j->payload), &id, err, sizeof(err)) < 0) {
            snprintf(j->why, sizeof(j->why), "MUNGE credential refused: %s", err);
        } else {
            j->uid = id.uid;
            j->known = 1;
        }
#endif
    }
    if (!j->known)
        return;
    struct passwd pw, *res = NULL;
    char pwbuf[1024];
    if (getpwuid_r(j->uid, &pw, pwbuf, sizeof(pwbuf), &res) == 0 && res)
        snprintf(j->user, sizeof(j->user), "%s", res->pw_name);
    j->ok = 1;
}

static void hello_job_free(struct hello_job *j)
{
    free(j->cred);
    free(j->pem);
    free(j->sig);
    free(j->munge_socket);
    free(j);
}

/* The hello's credential, as far as the loop checks it: 0 (j->known with
 * j->uid when it was checked here, else j set up for the pool), or -1 with why. */
static int hello_auth(struct tunnel *t, json_t *auth, struct hello_job *j, char *why, size_t wl)
{
    struct tunnel_hub *hub = t->hub;
    const char *method = json_string_value(json_object_get(auth, "method"));
    if (!method) {
        snprintf(why, wl, "the hello has no auth.method");
        return -1;
    }
    snprintf(t->method, sizeof(t->method), "%s", strlen(method) < 12 ? method : "?");
    snprintf(j->method, sizeof(j->method), "%s", t->method);
    if (strcmp(method, "munge") == 0) {
#ifdef JG_HAVE_MUNGE
        if (!(j->cred = dup_str(json_object_get(auth, "credential")))) {
            snprintf(why, wl, "no MUNGE credential in the hello");
            return -1;
        }
        /* The certificate this very connection showed (a SIGHUP may have
         * brought another one since): the one the agent bound its credential to. */
        char gwid[JOBCERT_GATEWAY_ID_LEN + 1];
        SSL *ssl = t->stdio ? NULL : bufferevent_openssl_get_ssl(t->rd);
        if (!ssl || jobcert_gateway_id(SSL_get_certificate(ssl), gwid) < 0) {
            pthread_mutex_lock(&hub->mu);
            memcpy(gwid, hub->gateway_id, sizeof(gwid));
            pthread_mutex_unlock(&hub->mu);
        }
        (void)jobcert_munge_payload(j->payload, sizeof(j->payload), t->nonce, gwid);
        const char *sock = hub->cfg->munge_socket;
        j->munge_socket = sock ? xstrdup(sock) : NULL;
        return 0;
#else
        snprintf(why, wl, "this gateway was built without MUNGE");
        return -1;
#endif
    } else if (strcmp(method, "cert") == 0) {
        pthread_mutex_lock(&hub->mu); /* kept until the hub ends: usable after unlocking */
        j->trust = hub->trust;
        pthread_mutex_unlock(&hub->mu);
        if (!j->trust || !j->trust->store) {
            snprintf(why, wl, "this gateway takes no users' certificates (no [tunnel] client_ca)");
            return -1;
        }
        j->ca = hub->ca;
        j->pem = dup_str(json_object_get(auth, "cert"));
        j->sig = dup_str(json_object_get(auth, "signature"));
        snprintf(j->payload, sizeof(j->payload), "jobgate/1 hello %s", t->nonce);
        return 0;
    } else if (strcmp(method, "token") == 0) {
        const char *tok = json_string_value(json_object_get(auth, "token"));
        uint8_t h[TOKEN_HASH_LEN];
        if (!hub->have_token) {
            snprintf(why, wl, "agent tokens are for personal gateways; use MUNGE or SSH");
            return -1;
        }
        if (!tok || strlen(tok) > TUNNEL_TOKEN_MAX) {
            snprintf(why, wl, "bad agent token");
            return -1;
        }
        token_hash(tok, strlen(tok), h);
        if (!token_hash_equal(h, hub->token_hash)) {
            snprintf(why, wl, "bad agent token");
            return -1;
        }
        j->uid = hub->uid;
    } else if (strcmp(method, "jobcert") == 0) {
        if (jobcert_auth(t, auth, &j->uid, why, wl) < 0)
            return -1;
    } else if (strcmp(method, "peercred") == 0) {
        if (!t->stdio) {
            snprintf(why, wl, "peercred is only for tunnels handed over by 'jobgate tunnel'");
            return -1;
        }
        j->uid = t->peer_uid;
    } else {
        snprintf(why, wl, "unknown auth method");
        return -1;
    }
    j->known = 1;
    return 0;
}
/* The hello's "policy" (docs/tunnel-protocol.md); none: persistent, with
 * reconnect. -1 with why when it is malformed. */
static int hello_policy(struct tunnel *t, json_t *p, char *why, size_t wl)
{
    if (!p)
        return 0;
    json_t *rc = json_object_get(p, "reconnect"), *cb = json_object_get(p, "callback");
    json_t *sl = json_object_get(p, "sleeps"), *poll = json_object_get(p, "poll");
    json_t *ci = json_object_get(p, "checkin");
    if (!json_is_object(p) || (rc && !json_is_boolean(rc)) || (cb && !json_is_boolean(cb)) ||
        (sl && !json_is_boolean(sl)) ||
        (poll && (!json_is_integer(poll) || json_integer_value(poll) < 0 ||
                  json_integer_value(poll) > 86400)) ||
        (ci && (!json_is_integer(ci) || json_integer_value(ci) < 1 ||
                json_integer_value(ci) > 86400)) ||
        (json_is_true(sl) && (!ci || (!json_is_true(cb) && (!poll ||
                                                             json_integer_value(poll) == 0))))) {
        snprintf(why, wl, "'policy' must be {\"reconnect\": bool, \"callback\": bool, "
                 "\"sleeps\": bool, \"poll\": 0..86400, \"checkin\": 1..86400}, with "
                 "checkin and callback or poll when it sleeps");
        return -1;
    }
    /* Between poll_min and an hour: a sleeping route outlives its agent by at
     * most twice that (or the grace time), whatever the agent asks. */
    int64_t min = t->hub->cfg->poll_min, max = TUN_CHECKIN_MAX;
    t->once = rc && json_is_false(rc);
    t->callback = json_is_true(cb);
    t->sleeps = json_is_true(sl);
    int64_t pv = poll ? json_integer_value(poll) : 0;
    t->poll = (uint32_t)(pv > 0 && pv < min ? min : pv > max ? max : pv);
    if (t->sleeps) {
        int64_t cv = t->poll ? t->poll : json_integer_value(ci);
        t->checkin = (uint32_t)(cv < min ? min : cv > max ? max : cv);
    }
    return 0;
}

/* Back on the tunnel's loop with the credential's verdict and the user's name. */
static void hello_authed(struct tunnel *t, struct hello_job *j)
{
    char why[400];
    if (!j->ok) {
        tctl_refuse(t, "auth", j->why[0] ? j->why : "the credential could not be checked");
        return;
    }
    uid_t uid = j->uid;
    if (!t->hub->cfg->shared && uid != t->hub->uid) {
        snprintf(why, sizeof(why), "this personal gateway takes only its own user's agents "
                 "(uid %u)", (unsigned)t->hub->uid);
        tctl_refuse(t, "auth", why);
        return;
    }
    if (tunnel_count_hello(t, uid, why, sizeof(why)) < 0) {
        tctl_refuse(t, "quota", why);
        return;
    }
    t->uid = uid;
    snprintf(t->user, sizeof(t->user), "%s", j->user);
    if (t->job)
        snprintf(j->job, sizeof(j->job), "%u", (unsigned)t->job); /* the certificate's */
    log_info("tunnel=%" PRIx64 " peer=%s hello uid=%u method=%s node=%s job=%s agent=%s", t->id,
             t->peer, (unsigned)uid, t->method, j->node, j->job, j->agent);
    /* A job named in the hello without its certificate (SLURM_JOB_ID, a site
     * without the plugin): the tunnel belongs to it only once the scheduler
     * says that it runs as this uid (docs/slurm.md, "Without the plugin"). */
    uint64_t claimed;
    if (!t->job && t->hub->ask_job && strcmp(j->job, "-") != 0 &&
        parse_uint(j->job, 1, UINT32_MAX - 1, &claimed) == 0) {
        t->claimed = (uint32_t)claimed;
        t->st = T_VERIFY;
        t->verify_at = now_mono_ms();
        if (t->hub->ask_job(t->hub->ask_arg, t->claimed, uid, j->node, t->id) == 0)
            return;
        t->claimed = 0;
        tctl_welcome(t, "the scheduler cannot be asked");
        return;
    }
    tctl_welcome(t, NULL);
}

/* On the tunnel's loop (or at the gateway's end, the tunnel long gone). */
static void hello_done(struct offload_job *oj)
{
    struct hello_job *j = (struct hello_job *)oj;
    struct tunnel *t = j->t;
    if (t) {
        t->hello = NULL;
        if (!t->dead && t->st == T_AUTH) {
            t->busy++;
            hello_authed(t, j);
            tunnel_flush(t);
            tunnel_leave(t);
        }
    }
    hello_job_free(j);
}

void tctl_hello_forget(struct tunnel *t)
{
    if (t->hello) {
        t->hello->t = NULL;
        offload_cancel(&t->hello->oj);
    }
    t->hello = NULL;
}

void tctl_hello(struct tunnel *t, json_t *m)
{
    char why[400];
    json_t *ver = json_object_get(m, "version");
    if (strcmp(json_string_value(json_object_get(m, "type")) ?: "", "hello") != 0) {
        tctl_refuse(t, "protocol", "the first message must be a hello");
        return;
    }
    if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
        tctl_refuse(t, "version", "this gateway speaks tunnel protocol version 1");
        return;
    }
    if (hello_policy(t, json_object_get(m, "policy"), why, sizeof(why)) < 0) {
        tctl_refuse(t, "protocol", why);
        return;
    }
    struct hello_job *j = xcalloc(1, sizeof(*j));
    if (hello_auth(t, json_object_get(m, "auth"), j, why, sizeof(why)) < 0) {
        hello_job_free(j);
        tctl_refuse(t, "auth", why);
        return;
    }
    log_str(json_object_get(m, "node"), j->node, sizeof(j->node));
    log_str(json_object_get(m, "job"), j->job, sizeof(j->job));
    log_str(json_object_get(m, "agent"), j->agent, sizeof(j->agent));
    j->id = t->id;
    j->t = t;
    j->oj.work = hello_work;
    j->oj.done = hello_done;
    j->oj.base = t->w->base;
    int rc = offload_submit(t->w->offload, &j->oj, OFFLOAD_QUEUE_MAX - OFFLOAD_RESERVE);
    if (rc < 0) {
        hello_job_free(j);
        tctl_refuse(t, "busy", rc == -EBUSY ? "the gateway is checking too many credentials "
                    "at once; try again shortly" : "the gateway is stopping");
        return;
    }
    t->hello = j;
    t->st = T_AUTH;
}

void tctl_welcome(struct tunnel *t, const char *job_refused)
{
    char idhex[17];
    t->st = T_READY;
    snprintf(idhex, sizeof(idhex), "%016" PRIx64, t->id);
    if (job_refused)
        log_info("tunnel=%" PRIx64 " welcomed uid=%u, not as job %u: %s", t->id,
                 (unsigned)t->uid, (unsigned)t->claimed, job_refused);
    else
        log_info("tunnel=%" PRIx64 " welcomed uid=%u job=%u", t->id, (unsigned)t->uid,
                 (unsigned)t->job);
    json_t *w = json_pack("{s:s, s:I, s:s, s:s}", "type", "welcome", "uid", (json_int_t)t->uid,
                          "user", t->user, "tunnel", idhex);
    if (w && t->job)
        json_object_set_new(w, "job", json_integer(t->job));
    if (w && job_refused)
        json_object_set_new(w, "job_refused", json_string(job_refused));
    if (w && t->sleeps) /* what we expect of it (poll raised to poll_min) */
        json_object_set_new(w, "policy", json_pack("{s:I, s:I}", "poll", (json_int_t)t->poll,
                                                   "checkin", (json_int_t)t->checkin));
    t->claimed = 0;
    tctl_send(t, w);
}

/* The scheduler's answer about the job the hello named (tunnel_job_verdict). */
void tctl_on_verdict(evutil_socket_t fd, short what, void *arg)
{
    struct tunnel *t = arg;
    char why[sizeof(t->verdict_why)];
    pthread_mutex_lock(&t->hub->mu);
    int verdict = t->verdict;
    memcpy(why, t->verdict_why, sizeof(why));
    t->verdict = 0;
    pthread_mutex_unlock(&t->hub->mu);
    if (t->dead || t->st != T_VERIFY || verdict == 0)
        return;
    t->busy++;
    if (verdict > 0) {
        t->job = t->claimed;
        t->seen_revocation = registry_revocations(t->hub->reg);
        tctl_welcome(t, NULL);
    } else {
        tctl_welcome(t, why);
    }
    tunnel_flush(t);
    tunnel_leave(t);
}
