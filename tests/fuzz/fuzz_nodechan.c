/*
 * libFuzzer target for the node channel's requests (src/gateway/nodechan.c,
 * docs/slurm.md "The node channel"): nodechan_call_new on a head that the
 * harness builds and http1.c parses, then nodechan_call_run and
 * nodechan_call_finish, as the gateway's loop and its offload threads do,
 * over a real registry (SQLite store in a fresh directory, /dev/shm or /tmp), the
 * real agent CA (jobca_open there) and the real nodechan_new. Built with
 * JG_HAVE_MUNGE; munged cannot run in-process, so munge_cred_decode below
 * stands in for it (munge_cred.c is not linked).
 *
 * Input: the first byte picks the gateway (bit 0: shared mode, else personal,
 * the gateway running as our own uid); the rest is requests separated by a
 * line "%%", each a byte that picks how it is made and its JSON body (at most
 * NODECHAN_BODY_MAX bytes; "@CSR" in it stands for a valid PEM certificate
 * request made at start, JSON-escaped). The byte: bits 0-1 the op (job-start,
 * job-end, job-ready, an unknown one); bits 2-3 the caller's uid (root,
 * TRUSTED of node_users, UNTRUSTED, daemon's uid 1, not trusted); bits 4-5
 * its credential (bound to this op and body, to another body, to another op,
 * not a credential); bits 6-7: 2 no MUNGE scheme in Authorization, 3 a GET.
 *
 * Invariants, checked with abort(): every call answers exactly one HTTP
 * response (Connection: close) whose status is the call's and one of
 * docs/slurm.md's (200, 400, 401, 403, 404, 405, 409, 500; 413 is the
 * connection's, before nodechan), and what the head and credential decide
 * is decided so (404, 405, 401, 403); a refusal's body is {"error":
 * sentence}; a refusal never changes the registry's jobs and destinations
 * (compared whole before and after), so neither does an untrusted uid nor a
 * credential bound to another body or op; a 200 job-start's certificate
 * verifies against the agent CA (jobca_verify) for the body's job, uid and
 * user, and the registry records that job, running, for that uid, with the
 * certificate's and the answer's not_after; a 200 job-end leaves the job
 * ended; a 200 job-ready leaves the node's destinations exactly those given;
 * no crash, leak or undefined behaviour (ASan, UBSan). An input with a 200
 * (the only answer that may change the jobs) leaves a fresh registry (a new
 * store) to the next input, so that each input reproduces alone.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <jansson.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "fuzz.h"
#include "fuzz_gw.h"
#include "config.h"
#include "http1.h"
#include "jobca.h"
#include "log.h"
#include "munge_cred.h"
#include "nodechan.h"
#include "registry.h"
#include "token.h"
#include "util.h"

#define TRUSTED ((uid_t)4242) /* in node_users by number, as a "slurm" user would be */
#define UNTRUSTED ((uid_t)1000)
#define SEP "\n%%\n"

static struct jg_config cfg;
static X509 *gwcert; /* fuzz_gw_init's; unused here */
static struct registry *reg;
static struct jobca *ca;
static struct nodechan *nc;
static char *csr_json; /* the PEM request, JSON-escaped (without quotes) */
static const struct http1_limits lim = {1024, 16384, 64};

/* ---- munged's stand-in ----------------------------------------------------------------- */

/* Stands in for munged (src/lib/munge_cred.c is not linked): a credential is
 * "FUZZ:<uid>:<payload>" and is accepted, with that uid, only when its payload
 * is exactly the one expected, as munged's decode plus munge_cred.c's payload
 * check would; anything else is refused with a reason. */
int munge_cred_decode(const char *socket_path, const char *cred, size_t cred_len,
                      const void *expect_payload, size_t expect_len, struct munge_identity *id,
                      char *err, size_t errlen)
{
    (void)socket_path;
    *id = (struct munge_identity){.uid = (uid_t)-1, .gid = (gid_t)-1};
    const char *end = cred + cred_len, *p = cred + 5, *colon;
    uint64_t uid = 0;
    if (cred_len < 5 || memcmp(cred, "FUZZ:", 5) != 0 ||
        !(colon = memchr(p, ':', (size_t)(end - p))) || colon == p) {
        snprintf(err, errlen, "Invalid credential format");
        return -EPERM;
    }
    for (const char *q = p; q < colon; q++) {
        if (*q < '0' || *q > '9' || uid > UINT32_MAX) {
            snprintf(err, errlen, "Invalid credential format");
            return -EPERM;
        }
        uid = uid * 10 + (uint64_t)(*q - '0');
    }
    if (uid >= UINT32_MAX || (size_t)(end - colon - 1) != expect_len ||
        memcmp(colon + 1, expect_payload, expect_len) != 0) {
        snprintf(err, errlen, "the credential carries another payload");
        return -EPERM;
    }
    *id = (struct munge_identity){.uid = (uid_t)uid, .gid = (gid_t)uid, .encoded_at = now_real(),
                                  .ttl = 300};
    return 0;
}

/* ---- state ------------------------------------------------------------------------------ */

static void state_open(void)
{
    char err[512];
    reg = registry_open(&cfg, err, sizeof(err));
    CHECK(reg);
    nc = nodechan_new(&cfg, reg, ca, getuid(), err, sizeof(err));
    CHECK(nc);
}

static void state_close(void)
{
    nodechan_free(nc);
    registry_close(reg);
    fuzz_store_remove();
}

/* A valid certificate request (EC P-256), JSON-escaped, into csr_json. */
static void make_csr(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509_REQ *req = X509_REQ_new();
    CHECK(key && req && X509_REQ_set_version(req, 0) == 1 && X509_REQ_set_pubkey(req, key) == 1);
    X509_NAME *name = X509_REQ_get_subject_name(req);
    CHECK(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"job",
                                     -1, -1, 0) == 1);
    CHECK(X509_REQ_sign(req, key, EVP_sha256()) > 0);
    BIO *b = BIO_new(BIO_s_mem());
    CHECK(b && PEM_write_bio_X509_REQ(b, req) == 1);
    char *pem;
    long n = BIO_get_mem_data(b, &pem);
    CHECK(n > 0);
    csr_json = xmalloc(2 * (size_t)n + 1);
    size_t k = 0;
    for (long i = 0; i < n; i++) {
        if (pem[i] == '\n') {
            csr_json[k++] = '\\';
            csr_json[k++] = 'n';
        } else {
            csr_json[k++] = pem[i];
        }
    }
    csr_json[k] = '\0';
    BIO_free(b);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
}

int LLVMFuzzerInitialize(int *argc, char ***argv); /* libFuzzer calls it once, first */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[512];
    (void)argc;
    (void)argv;
    log_init("fuzz_nodechan", 0, LOG_LVL_ERR);
    fuzz_gw_init("nodechan", &cfg, &gwcert);
    /* The state in /dev/shm when there is one: an input that changed the jobs costs a new
     * store, and its fsyncs are free there (fuzz_gw.h's directory, still empty, goes). */
    char shm[sizeof(dir)];
    snprintf(shm, sizeof(shm), "/dev/shm/jg-fuzz-nodechan-XXXXXX");
    if (mkdtemp(shm)) {
        CHECK(rmdir(dir) == 0);
        snprintf(dir, sizeof(dir), "%s", shm);
        setenv("HOME", dir, 1);
        free(cfg.state_dir);
        cfg.state_dir = xstrdup(dir);
    }
    free(cfg.node_users);
    cfg.node_users = xstrdup("root 4242");
    ca = jobca_open(dir, err, sizeof(err));
    CHECK(ca);
    make_csr();
    state_open();
    return 0;
}

/* ---- the registry, before and after ---------------------------------------------------- */

static int job_same(const struct job *a, const struct job *b)
{
    return a->id == b->id && a->uid == b->uid && strcmp(a->user, b->user) == 0 &&
           strcmp(a->node, b->node) == 0 && a->not_after == b->not_after &&
           a->started == b->started && a->ended == b->ended && a->adopted == b->adopted;
}

static int dest_same(const struct job_dest *a, const struct job_dest *b)
{
    return strcmp(a->node, b->node) == 0 && strcmp(a->host, b->host) == 0 && a->port == b->port;
}

static void snapshot(struct registry_jobs *s)
{
    CHECK(registry_jobs(reg, 0, 1, s) >= 0);
}

static void check_unchanged(const struct registry_jobs *a)
{
    struct registry_jobs b;
    snapshot(&b);
    CHECK(a->n == b.n && a->ndests == b.ndests);
    for (unsigned i = 0; i < a->n; i++) {
        CHECK(job_same(&a->jobs[i], &b.jobs[i]));
        CHECK(a->first[i] == b.first[i] && a->count[i] == b.count[i]);
    }
    for (unsigned i = 0; i < a->ndests; i++)
        CHECK(dest_same(&a->dests[i], &b.dests[i]));
    registry_jobs_free(&b);
}

/* ---- the answers ----------------------------------------------------------------------- */

/* The one HTTP response in out: its status (as the call said) and its JSON body, new. */
static json_t *response(struct evbuffer *out, int status)
{
    static const int known[] = {200, 400, 401, 403, 404, 405, 409, 500};
    size_t len = evbuffer_get_length(out), scan = 0;
    const char *p = (const char *)evbuffer_pullup(out, -1);
    struct http1_head h;
    CHECK(len > 0 && p);
    ssize_t hl = http1_scan_head(p, len, &lim, &scan);
    CHECK(hl > 0 && http1_parse_response(p, (size_t)hl, &lim, 0, &h) == 0);
    CHECK(h.status == status && (h.flags & HTTP1_F_CLOSE));
    size_t k = 0;
    while (k < JG_ARRAY_LEN(known) && known[k] != status)
        k++;
    CHECK(k < JG_ARRAY_LEN(known));
    int ct = http1_find(&h, "content-type");
    CHECK(ct >= 0 && h.fields[ct].value.n == 16 &&
          memcmp(h.fields[ct].value.p, "application/json", 16) == 0);
    CHECK(h.body == HTTP1_BODY_LENGTH && h.content_length == len - (size_t)hl);
    json_t *a = json_loadb(p + hl, len - (size_t)hl, JSON_REJECT_DUPLICATES, NULL);
    CHECK(json_is_object(a));
    if (status != 200) {
        const char *e = json_string_value(json_object_get(a, "error"));
        CHECK(e && *e && json_object_size(a) == 1);
    }
    return a;
}

static json_int_t int_of(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    CHECK(json_is_integer(v));
    return json_integer_value(v);
}

/* A 200 job-start: the certificate is the CA's for the body's job and user. */
static void check_start(json_t *a, json_t *m)
{
    json_int_t id = int_of(m, "job"), uid = int_of(m, "uid");
    const char *user = json_string_value(json_object_get(m, "user"));
    const char *pem = json_string_value(json_object_get(a, "cert"));
    const char *capem = json_string_value(json_object_get(a, "ca"));
    CHECK(user && pem && capem && strcmp(capem, jobca_cert_pem(ca)) == 0);
    CHECK(int_of(a, "job") == id);
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    CHECK(x);
    struct jobca_job cj;
    char err[256];
    CHECK(jobca_verify(ca, x, now_real(), &cj, err, sizeof(err)) == 0);
    CHECK(cj.job_id == (uint32_t)id && cj.uid == (uint32_t)uid && strcmp(cj.user, user) == 0);
    struct job j;
    CHECK(registry_job_get(reg, (uint32_t)id, &j) == 0);
    CHECK(j.uid == (uid_t)uid && strcmp(j.user, user) == 0 && !j.ended && !j.adopted);
    CHECK(j.not_after == cj.not_after && int_of(a, "not_after") == j.not_after);
    X509_free(x);
    BIO_free(b);
}

/* A 200 job-end: the job is ended. */
static void check_end(json_t *a, json_t *m)
{
    json_int_t id = int_of(m, "job");
    struct job j;
    CHECK(int_of(a, "job") == id && int_of(a, "routes") >= 0);
    CHECK(registry_job_get(reg, (uint32_t)id, &j) == 0 && j.ended);
}

/* A 200 job-ready: the node's destinations are those given, in order. */
static void check_ready(json_t *a, json_t *m)
{
    json_int_t id = int_of(m, "job");
    const char *node = json_string_value(json_object_get(m, "node"));
    json_t *list = json_object_get(m, "listen");
    CHECK(node && json_is_array(list) && int_of(a, "job") == id);
    CHECK(int_of(a, "destinations") == (json_int_t)json_array_size(list));
    struct registry_jobs s;
    snapshot(&s);
    unsigned i = 0, k = 0;
    while (i < s.n && s.jobs[i].id != (uint32_t)id)
        i++;
    CHECK(i < s.n && !s.jobs[i].ended);
    for (unsigned d = s.first[i]; d < s.first[i] + s.count[i]; d++) {
        const struct job_dest *v = &s.dests[d];
        if (strcmp(v->node, node) != 0)
            continue;
        json_t *e = json_array_get(list, k++);
        CHECK(e && strcmp(v->host, json_string_value(json_object_get(e, "host"))) == 0 &&
              v->port == int_of(e, "port"));
    }
    CHECK(k == json_array_size(list));
    registry_jobs_free(&s);
}

/* ---- the requests ---------------------------------------------------------------------- */

static const char *const ops[] = {"job-start", "job-end", "job-ready", "job-stop"};

/* body (len bytes) with "@CSR" as the request, at most NODECHAN_BODY_MAX bytes, new. */
static char *expand(const char *body, size_t len, size_t *outlen)
{
    size_t cl = strlen(csr_json), n = 0;
    char *out = xmalloc(NODECHAN_BODY_MAX + 1);
    for (size_t i = 0; i < len && n < NODECHAN_BODY_MAX; i++) {
        if (i + 4 <= len && memcmp(body + i, "@CSR", 4) == 0) {
            size_t c = cl < NODECHAN_BODY_MAX - n ? cl : NODECHAN_BODY_MAX - n;
            memcpy(out + n, csr_json, c);
            n += c;
            i += 3;
        } else {
            out[n++] = body[i];
        }
    }
    *outlen = n;
    return out;
}

/* One request: how (the byte above) and its body. Returns 1 if it may have changed jobs. */
static int request(uint8_t how, const char *raw, size_t rawlen)
{
    static const uid_t uids[] = {0, TRUSTED, UNTRUSTED, 1};
    unsigned op = how & 3, cred = (how >> 4) & 3, form = how >> 6;
    uid_t uid = uids[(how >> 2) & 3];
    size_t len;
    char *body = expand(raw, rawlen, &len);

    /* The credential: over this body and op, another body, another op, or none at all. */
    uint8_t hash[TOKEN_HASH_LEN];
    char hex[2 * TOKEN_HASH_LEN + 1], credtext[256], *head;
    if (cred == 1) {
        char *other = xmalloc(len + 1);
        memcpy(other, body, len);
        other[len] = ' ';
        token_hash(other, len + 1, hash);
        free(other);
    } else {
        token_hash(body, len, hash);
    }
    token_hash_hex(hash, hex);
    if (cred == 3)
        snprintf(credtext, sizeof(credtext), "MUNGEv1:AwQDAAB");
    else
        snprintf(credtext, sizeof(credtext), "FUZZ:%u:jobgate/1 node %s %s", (unsigned)uid,
                 ops[cred == 2 ? (op + 1) % 3 : op], hex);
    int hn = asprintf(&head, "%s /_jobgate/node/v1/%s HTTP/1.1\r\nHost: apps.example.org\r\n"
                      "Authorization: %s %s\r\nContent-Length: %zu\r\n\r\n",
                      form == 3 ? "GET" : "POST", ops[op], form == 2 ? "Basic" : "MUNGE",
                      credtext, len);
    CHECK(hn > 0);
    struct http1_head h;
    size_t scan = 0;
    CHECK(http1_scan_head(head, (size_t)hn, &lim, &scan) == hn);
    CHECK(http1_parse_request(head, (size_t)hn, &lim, &h) == 0);

    /* What the head and the credential decide, before the body is looked at. */
    int expect = op == 3 ? 404 : form == 3 ? 405 : form == 2 || cred != 0 ? 401
                 : uid == 0 || uid == TRUSTED ? 0 : 403;
    struct registry_jobs before;
    snapshot(&before);
    struct evbuffer *out = evbuffer_new();
    CHECK(out);
    int status = -1;
    struct nodechan_call *call = nodechan_call_new(nc, &h, body, len, "192.0.2.7", out, &status);
    if (call) {
        CHECK(status == 0 && evbuffer_get_length(out) == 0);
        nodechan_call_run(call);
        status = nodechan_call_finish(call, out);
        CHECK(expect == 0 || status == expect);
        CHECK(expect != 0 || (status != 401 && status != 405));
    } else {
        CHECK(status == expect && (status == 404 || status == 405 || status == 401));
    }
    json_t *a = response(out, status);
    if (status != 200) {
        check_unchanged(&before);
    } else {
        json_t *m = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
        CHECK(expect == 0 && json_is_object(m));
        if (op == 0)
            check_start(a, m);
        else if (op == 1)
            check_end(a, m);
        else
            check_ready(a, m);
        json_decref(m);
    }
    json_decref(a);
    registry_jobs_free(&before);
    evbuffer_free(out);
    free(head);
    free(body);
    return status == 200;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int dirty;
    if (size < 1)
        return 0;
    if (dirty) { /* the last input changed the jobs: a new store (each input alone) */
        state_close();
        state_open();
        dirty = 0;
    }
    cfg.shared = data[0] & 1; /* read at each request */
    const char *s = (const char *)data + 1, *end = (const char *)data + size;
    while (s < end) {
        const char *sep = memmem(s, (size_t)(end - s), SEP, sizeof(SEP) - 1);
        const char *stop = sep ? sep : end;
        if (stop > s)
            dirty |= request((uint8_t)*s, s + 1, (size_t)(stop - s - 1));
        s = sep ? sep + sizeof(SEP) - 1 : end;
    }
    return 0;
}
