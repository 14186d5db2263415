/* jobca — see jobca.h. */
#include "jobca.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "jobcert.h"
#include "tls.h"
#include "util.h"

#define CA_DAYS (10 * 365)
#define URI_PREFIX "urn:jobgate:job:"

struct jobca {
    EVP_PKEY *key;
    X509 *crt;
    char *crt_pem;
    SSL_CTX *client;    /* the gateway's own certificate, for job endpoints */
};

static int user_ok(const char *u)
{
    size_t n = strnlen(u, JOBCA_USER_MAX);
    if (n == 0 || n >= JOBCA_USER_MAX || u[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = u[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static int make_ca(const char *key_path, const char *crt_path, char *err, size_t errlen)
{
    int rc = -EIO;
    EVP_PKEY *key;
    X509 *crt = tls_selfissued_new("jobgate", "jobgate agent CA", CA_DAYS, &key);
    if (!crt)
        goto ossl_fail;
    if (tls_add_ext(crt, NULL, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") < 0 ||
        tls_add_ext(crt, NULL, NID_key_usage, "critical,keyCertSign,cRLSign") < 0 ||
        tls_add_ext(crt, NULL, NID_subject_key_identifier, "hash") < 0 ||
        !X509_sign(crt, key, EVP_sha256()))
        goto ossl_fail;
    rc = tls_write_pair(key_path, crt_path, key, crt, err, errlen);
    goto out;
ossl_fail:
    errmsg(err, errlen, rc, "cannot make the agent CA: %s", tls_errstr());
out:
    X509_free(crt);
    EVP_PKEY_free(key);
    return rc;
}

static char *pem_of(X509 *crt)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *p;
    if (b && PEM_write_bio_X509(b, crt)) {
        long n = BIO_get_mem_data(b, &p);
        if (n > 0) {
            out = xmalloc((size_t)n + 1);
            memcpy(out, p, (size_t)n);
            out[n] = '\0';
        }
    }
    BIO_free(b);
    return out;
}

/* The gateway's client certificate (a fresh key each start, signed by the CA)
 * in a TLS client context that trusts the CA alone. NULL on error. */
static SSL_CTX *make_client_ctx(const struct jobca *ca)
{
    EVP_PKEY *key = NULL;
    X509 *crt = tls_selfissued_new("jobgate", "jobgate gateway", 366, &key);
    SSL_CTX *ctx = NULL;
    X509_STORE *store = NULL;
    if (!crt || !X509_set_issuer_name(crt, X509_get_subject_name(ca->crt)) ||
        tls_add_ext(crt, ca->crt, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        tls_add_ext(crt, ca->crt, NID_key_usage, "critical,digitalSignature") < 0 ||
        tls_add_ext(crt, ca->crt, NID_ext_key_usage, "clientAuth") < 0 ||
        tls_add_ext(crt, ca->crt, NID_subject_alt_name, "URI:" JOBCERT_GATEWAY_URI) < 0 ||
        tls_add_ext(crt, ca->crt, NID_authority_key_identifier, "keyid:always") < 0 ||
        !X509_sign(crt, ca->key, EVP_sha256()))
        goto out;
    ctx = SSL_CTX_new(TLS_client_method());
    store = X509_STORE_new();
    if (!ctx || !store || X509_STORE_add_cert(store, ca->crt) != 1 ||
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate(ctx, crt) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1) {
        SSL_CTX_free(ctx);
        ctx = NULL;
        goto out;
    }
    SSL_CTX_set_cert_store(ctx, store); /* the context owns it now */
    store = NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
out:
    X509_STORE_free(store);
    X509_free(crt);
    EVP_PKEY_free(key);
    return ctx;
}

SSL_CTX *jobca_client_ctx(const struct jobca *ca)
{
    return ca->client;
}

struct jobca *jobca_open(const char *dir, char *err, size_t errlen)
{
    char key_path[4096], crt_path[4096];
    if (xsnprintf(key_path, sizeof(key_path), "%s/agent-ca.key", dir) < 0 ||
        xsnprintf(crt_path, sizeof(crt_path), "%s/agent-ca.crt", dir) < 0) {
        errmsg(err, errlen, 0, "%s: path too long", dir);
        return NULL;
    }
    struct stat ks, cs;
    int have_key = stat(key_path, &ks) == 0, have_crt = stat(crt_path, &cs) == 0;
    if (have_key != have_crt) {
        errmsg(err, errlen, 0, "%s: only one of agent-ca.key and agent-ca.crt exists; restore "
               "the other, or remove it to have a new CA made (every job certificate it signed "
               "stops working)", dir);
        return NULL;
    }
    if (!have_key && make_ca(key_path, crt_path, err, errlen) < 0)
        return NULL;
    if (have_key && (ks.st_mode & 077)) {
        errmsg(err, errlen, 0, "%s: group or others may read it (mode %04o); chmod 600",
               key_path, (unsigned)(ks.st_mode & 07777));
        return NULL;
    }
    struct jobca *ca = xcalloc(1, sizeof(*ca));
    FILE *f = fopen(key_path, "re");
    if (f) {
        ca->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
    }
    f = fopen(crt_path, "re");
    if (f) {
        ca->crt = PEM_read_X509(f, NULL, NULL, NULL);
        fclose(f);
    }
    if (!ca->key || !ca->crt) {
        errmsg(err, errlen, 0, "%s: cannot read the agent CA: %s", dir, tls_errstr());
        goto fail;
    }
    if (X509_check_private_key(ca->crt, ca->key) != 1 || X509_check_ca(ca->crt) <= 0) {
        errmsg(err, errlen, 0, "%s: agent-ca.crt is not a CA certificate for agent-ca.key", dir);
        goto fail;
    }
    ca->crt_pem = pem_of(ca->crt);
    if (!ca->crt_pem) {
        errmsg(err, errlen, 0, "%s: %s", crt_path, tls_errstr());
        goto fail;
    }
    ca->client = make_client_ctx(ca);
    if (!ca->client) {
        errmsg(err, errlen, 0, "cannot make the gateway's client certificate: %s", tls_errstr());
        goto fail;
    }
    return ca;
fail:
    jobca_free(ca);
    return NULL;
}

void jobca_free(struct jobca *ca)
{
    if (!ca)
        return;
    EVP_PKEY_free(ca->key);
    X509_free(ca->crt);
    free(ca->crt_pem);
    SSL_CTX_free(ca->client);
    free(ca);
}

const char *jobca_cert_pem(const struct jobca *ca)
{
    return ca->crt_pem;
}

/* The keys a job may have: EC P-256 or P-384, Ed25519, RSA >= 2048 bits. */
static int key_ok(EVP_PKEY *k, char *err, size_t errlen)
{
    char group[64] = "";
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_ED25519:
        return 0;
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(k) >= 2048)
            return 0;
        return errmsg(err, errlen, -EINVAL, "an RSA key of %d bits (2048 at least)",
                      EVP_PKEY_get_bits(k));
    case EVP_PKEY_EC:
        if (EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                           NULL) == 1 &&
            (!strcmp(group, "prime256v1") || !strcmp(group, "secp384r1")))
            return 0;
        return errmsg(err, errlen, -EINVAL, "an EC key on curve %s (P-256 or P-384 only)",
                      group[0] ? group : "?");
    default:
        return errmsg(err, errlen, -EINVAL, "a key of a kind not accepted (%s)",
                      OBJ_nid2sn(EVP_PKEY_get_base_id(k)));
    }
}

int jobca_sign(const struct jobca *ca, const char *csr_pem, size_t len, const struct jobca_job *job,
               char **cert_pem, char *err, size_t errlen)
{
    *cert_pem = NULL;
    int64_t now = now_real();
    if (job->job_id == 0 || !user_ok(job->user))
        return errmsg(err, errlen, -EINVAL, "job record: no job id, or a user name that is not "
                      "[A-Za-z0-9._-]");
    if (job->not_after <= now)
        return errmsg(err, errlen, -EINVAL, "job %u: its end is in the past", job->job_id);
    if (len == 0 || len > JOBCA_CSR_MAX)
        return errmsg(err, errlen, -EINVAL, "certificate request of %zu bytes (1 to %d)", len,
                      JOBCA_CSR_MAX);
    int rc = -EINVAL;
    X509 *crt = NULL;
    BIO *in = BIO_new_mem_buf(csr_pem, (int)len);
    X509_REQ *req = in ? PEM_read_bio_X509_REQ(in, NULL, NULL, NULL) : NULL;
    BIO_free(in);
    if (!req) {
        errmsg(err, errlen, rc, "not a PEM certificate request: %s", tls_errstr());
        goto out;
    }
    EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
    if (!pub) {
        errmsg(err, errlen, rc, "a certificate request without a key");
        goto out;
    }
    char why[160];
    if (key_ok(pub, why, sizeof(why)) < 0) {
        errmsg(err, errlen, rc, "certificate request: %s", why);
        goto out;
    }
    if (X509_REQ_verify(req, pub) != 1) {
        errmsg(err, errlen, rc, "certificate request: its signature does not verify");
        goto out;
    }
    rc = -EIO;
    char cn[32], uri[96];
    snprintf(cn, sizeof(cn), "job-%u", job->job_id);
    snprintf(uri, sizeof(uri), "URI:" URI_PREFIX "%u:uid:%u", job->job_id, job->uid);
    crt = X509_new();
    if (!crt || tls_random_serial(crt) < 0 || !X509_set_version(crt, 2) ||
        !X509_gmtime_adj(X509_getm_notBefore(crt), -JOBCA_VALID_BEFORE) ||
        !ASN1_TIME_set(X509_getm_notAfter(crt), (time_t)job->not_after) ||
        !X509_set_issuer_name(crt, X509_get_subject_name(ca->crt)) || !X509_set_pubkey(crt, pub))
        goto ossl_fail;
    X509_NAME *name = X509_get_subject_name(crt);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"jobgate job",
                                    -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "UID", MBSTRING_ASC, (const unsigned char *)job->user,
                                    -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0))
        goto ossl_fail;
    if (tls_add_ext(crt, ca->crt, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        tls_add_ext(crt, ca->crt, NID_key_usage, "critical,digitalSignature") < 0 ||
        tls_add_ext(crt, ca->crt, NID_ext_key_usage, "clientAuth,serverAuth") < 0 ||
        tls_add_ext(crt, ca->crt, NID_subject_alt_name, uri) < 0 ||
        tls_add_ext(crt, ca->crt, NID_subject_key_identifier, "hash") < 0 ||
        tls_add_ext(crt, ca->crt, NID_authority_key_identifier, "keyid:always") < 0 ||
        !X509_sign(crt, ca->key, EVP_sha256()))
        goto ossl_fail;
    *cert_pem = pem_of(crt);
    if (!*cert_pem)
        goto ossl_fail;
    rc = 0;
    goto out;
ossl_fail:
    errmsg(err, errlen, rc, "cannot sign the job's certificate: %s", tls_errstr());
out:
    X509_REQ_free(req);
    X509_free(crt);
    return rc;
}

/* The one urn:jobgate:job:<id>:uid:<uid> URI of cert. 0, or -EINVAL. */
static int job_uri(X509 *cert, uint32_t *job_id, uint32_t *uid)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int found = 0;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_URI)
            continue;
        const char *s = (const char *)ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        int n = ASN1_STRING_length(g->d.uniformResourceIdentifier);
        char buf[96], tail;
        unsigned j, u;
        if (n <= 0 || n >= (int)sizeof(buf))
            continue;
        memcpy(buf, s, (size_t)n);
        buf[n] = '\0';
        if (strlen(buf) != (size_t)n || strncmp(buf, URI_PREFIX, strlen(URI_PREFIX)) != 0)
            continue;
        if (sscanf(buf + strlen(URI_PREFIX), "%u:uid:%u%c", &j, &u, &tail) != 2 || j == 0) {
            found = -1;
            break;
        }
        if (found) {            /* two job names: which one? neither */
            found = -1;
            break;
        }
        *job_id = j;
        *uid = u;
        found = 1;
    }
    GENERAL_NAMES_free(names);
    return found == 1 ? 0 : -EINVAL;
}

int jobca_verify(const struct jobca *ca, X509 *cert, int64_t now, struct jobca_job *job,
                 char *err, size_t errlen)
{
    memset(job, 0, sizeof(*job));
    EVP_PKEY *ca_pub = X509_get0_pubkey(ca->crt);
    if (X509_check_issued(ca->crt, cert) != X509_V_OK || !ca_pub || X509_verify(cert, ca_pub) != 1)
        return errmsg(err, errlen, -EPERM, "not a certificate of this gateway's agent CA");
    if (ASN1_TIME_cmp_time_t(X509_get0_notBefore(cert), (time_t)now) > 0)
        return errmsg(err, errlen, -EPERM, "the job certificate is not valid yet");
    if (ASN1_TIME_cmp_time_t(X509_get0_notAfter(cert), (time_t)now) < 0)
        return errmsg(err, errlen, -EPERM, "the job certificate has expired");
    if (X509_check_ca(cert) != 0)
        return errmsg(err, errlen, -EINVAL, "a CA certificate is not a job certificate");
    if (job_uri(cert, &job->job_id, &job->uid) < 0)
        return errmsg(err, errlen, -EINVAL, "no single " URI_PREFIX " name in the certificate");
    X509_NAME *name = X509_get_subject_name(cert);
    char cn[32], want[32];
    snprintf(want, sizeof(want), "job-%u", job->job_id);
    if (X509_NAME_get_text_by_NID(name, NID_commonName, cn, sizeof(cn)) <= 0 || strcmp(cn, want) != 0)
        return errmsg(err, errlen, -EINVAL, "the certificate's CN is not %s", want);
    if (X509_NAME_get_text_by_NID(name, NID_userId, job->user, sizeof(job->user)) <= 0 ||
        !user_ok(job->user))
        return errmsg(err, errlen, -EINVAL, "the certificate names no valid user (UID)");
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1)
        return errmsg(err, errlen, -EINVAL, "the certificate's end date cannot be read");
    job->not_after = (int64_t)timegm(&tm);
    return 0;
}
