/* Unit tests for src/gateway/jobca.c: the agent CA made and found again, job certificates
 * signed only for well-formed requests and keys, and read back only from this CA. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "jobca.h"
#include "util.h"

static char dir[64], err[512];

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/jg-jobca-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* A PEM certificate request for key, subject CN=cn, signed by key (or by signer). */
static char *make_csr(EVP_PKEY *key, EVP_PKEY *signer, const char *cn)
{
    X509_REQ *req = X509_REQ_new();
    assert_non_null(req);
    X509_NAME *n = X509_REQ_get_subject_name(req);
    assert_true(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0));
    assert_true(X509_REQ_set_pubkey(req, key));
    assert_true(X509_REQ_sign(req, signer ? signer : key,
                              EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256()) > 0);
    BIO *b = BIO_new(BIO_s_mem());
    assert_true(PEM_write_bio_X509_REQ(b, req));
    char *p;
    long len = BIO_get_mem_data(b, &p);
    char *out = xmalloc((size_t)len + 1);
    memcpy(out, p, (size_t)len);
    out[len] = '\0';
    BIO_free(b);
    X509_REQ_free(req);
    return out;
}

static X509 *parse(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(x);
    return x;
}

static struct jobca_job job42(void)
{
    struct jobca_job j = {.job_id = 42, .uid = 1001, .not_after = now_real() + 3600};
    snprintf(j.user, sizeof(j.user), "alice");
    return j;
}

static void test_the_ca_is_made_once_and_found_again(void **state)
{
    struct jobca *ca = jobca_open(dir, err, sizeof(err));
    assert_non_null(ca);
    char path[128];
    struct stat st;
    snprintf(path, sizeof(path), "%s/agent-ca.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char *first = xstrdup(jobca_cert_pem(ca));
    X509 *crt = parse(first);
    assert_true(X509_check_ca(crt) > 0);
    X509_free(crt);
    jobca_free(ca);

    ca = jobca_open(dir, err, sizeof(err));
    assert_non_null(ca);
    assert_string_equal(jobca_cert_pem(ca), first);
    jobca_free(ca);
    free(first);

    /* A key others may read is refused; so is half a pair. */
    assert_int_equal(chmod(path, 0640), 0);
    assert_null(jobca_open(dir, err, sizeof(err)));
    assert_non_null(strstr(err, "chmod 600"));
    assert_int_equal(unlink(path), 0);
    assert_null(jobca_open(dir, err, sizeof(err)));
    assert_non_null(strstr(err, "only one of"));
}

static void test_a_job_certificate_names_its_job_and_nothing_else(void **state)
{
    struct jobca *ca = jobca_open(dir, err, sizeof(err));
    assert_non_null(ca);
    EVP_PKEY *key = EVP_EC_gen("P-256");
    /* What the request asks for is ignored: the job record decides. */
    char *csr = make_csr(key, NULL, "job-999");
    struct jobca_job j = job42();
    char *pem = NULL;
    assert_int_equal(jobca_sign(ca, csr, strlen(csr), &j, &pem, err, sizeof(err)), 0);
    X509 *crt = parse(pem);

    struct jobca_job got;
    assert_int_equal(jobca_verify(ca, crt, now_real(), &got, err, sizeof(err)), 0);
    assert_int_equal(got.job_id, 42);
    assert_int_equal(got.uid, 1001);
    assert_string_equal(got.user, "alice");
    assert_int_equal(got.not_after, j.not_after);
    assert_int_equal(X509_check_ca(crt), 0);
    assert_true(X509_get_extended_key_usage(crt) & XKU_SSL_CLIENT);
    assert_true(X509_get_extended_key_usage(crt) & XKU_SSL_SERVER);
    assert_true(X509_get_key_usage(crt) & KU_DIGITAL_SIGNATURE);
    assert_false(X509_get_key_usage(crt) & KU_KEY_CERT_SIGN);
    EVP_PKEY *pub = X509_get0_pubkey(crt);
    assert_int_equal(EVP_PKEY_eq(pub, key), 1);
    /* Valid from a little before now, until the job's end; expired after it. */
    assert_true(ASN1_TIME_cmp_time_t(X509_get0_notBefore(crt), now_real() - JOBCA_VALID_BEFORE + 5) <= 0);
    assert_int_equal(jobca_verify(ca, crt, j.not_after + 1, &got, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "expired"));
    assert_int_equal(jobca_verify(ca, crt, now_real() - 3600, &got, err, sizeof(err)), -EPERM);

    /* Another gateway's CA does not vouch for it. */
    char other[80];
    snprintf(other, sizeof(other), "%s/other", dir);
    assert_int_equal(mkdir(other, 0700), 0);
    struct jobca *ca2 = jobca_open(other, err, sizeof(err));
    assert_non_null(ca2);
    assert_int_equal(jobca_verify(ca2, crt, now_real(), &got, err, sizeof(err)), -EPERM);
    /* Nor is the CA's own certificate a job's. */
    X509 *cacrt = parse(jobca_cert_pem(ca));
    assert_int_equal(jobca_verify(ca, cacrt, now_real(), &got, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "CA certificate"));
    X509_free(cacrt);

    jobca_free(ca2);
    X509_free(crt);
    free(pem);
    free(csr);
    EVP_PKEY_free(key);
    jobca_free(ca);
}

static void test_requests_that_are_refused(void **state)
{
    struct jobca *ca = jobca_open(dir, err, sizeof(err));
    assert_non_null(ca);
    struct jobca_job j = job42();
    char *pem = NULL;

    /* Signed by another key than the one it carries. */
    EVP_PKEY *key = EVP_EC_gen("P-256"), *thief = EVP_EC_gen("P-256");
    char *csr = make_csr(key, thief, "x");
    assert_int_equal(jobca_sign(ca, csr, strlen(csr), &j, &pem, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "signature"));
    free(csr);

    /* A weak RSA key. */
    EVP_PKEY *rsa = EVP_RSA_gen(1024);
    csr = make_csr(rsa, NULL, "x");
    assert_int_equal(jobca_sign(ca, csr, strlen(csr), &j, &pem, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "1024 bits"));
    free(csr);

    /* Ed25519 and P-384 are fine. */
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    csr = make_csr(ed, NULL, "x");
    assert_int_equal(jobca_sign(ca, csr, strlen(csr), &j, &pem, err, sizeof(err)), 0);
    free(pem);
    free(csr);
    EVP_PKEY *p384 = EVP_EC_gen("P-384");
    csr = make_csr(p384, NULL, "x");
    assert_int_equal(jobca_sign(ca, csr, strlen(csr), &j, &pem, err, sizeof(err)), 0);
    free(pem);

    /* Garbage, too long, a bad job record. */
    assert_int_equal(jobca_sign(ca, "hello", 5, &j, &pem, err, sizeof(err)), -EINVAL);
    assert_null(pem);
    assert_int_equal(jobca_sign(ca, csr, JOBCA_CSR_MAX + 1, &j, &pem, err, sizeof(err)), -EINVAL);
    struct jobca_job bad = j;
    snprintf(bad.user, sizeof(bad.user), "al ice");
    assert_int_equal(jobca_sign(ca, csr, strlen(csr), &bad, &pem, err, sizeof(err)), -EINVAL);
    bad = j;
    bad.job_id = 0;
    assert_int_equal(jobca_sign(ca, csr, strlen(csr), &bad, &pem, err, sizeof(err)), -EINVAL);
    bad = j;
    bad.not_after = now_real() - 1;
    assert_int_equal(jobca_sign(ca, csr, strlen(csr), &bad, &pem, err, sizeof(err)), -EINVAL);
    free(csr);

    EVP_PKEY_free(key);
    EVP_PKEY_free(thief);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);
    EVP_PKEY_free(p384);
    jobca_free(ca);
}

/* A certificate signed with the CA's own key but with names of the test's choice: jobca_verify
 * must find the job named the same way three times, or refuse. */
static X509 *forge(struct jobca *ca, const char *cn, const char *user, const char *uris)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/agent-ca.key", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    EVP_PKEY *cakey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    X509 *cacrt = parse(jobca_cert_pem(ca));
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_issuer_name(x, X509_get_subject_name(cacrt));
    X509_NAME *n = X509_get_subject_name(x);
    if (user)
        X509_NAME_add_entry_by_txt(n, "UID", MBSTRING_ASC, (const unsigned char *)user, -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_pubkey(x, key);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, cacrt, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, uris);
    assert_non_null(e);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    assert_true(X509_sign(x, cakey, EVP_sha256()) > 0);
    EVP_PKEY_free(key);
    EVP_PKEY_free(cakey);
    X509_free(cacrt);
    return x;
}

static void test_names_that_disagree_are_refused(void **state)
{
    struct jobca *ca = jobca_open(dir, err, sizeof(err));
    assert_non_null(ca);
    struct jobca_job got;
    struct { const char *cn, *user, *uris; int rc; } cases[] = {
        {"job-42", "alice", "URI:urn:jobgate:job:42:uid:1001", 0},
        {"job-43", "alice", "URI:urn:jobgate:job:42:uid:1001", -EINVAL},      /* CN of another job */
        {"job-42", NULL, "URI:urn:jobgate:job:42:uid:1001", -EINVAL},         /* no user */
        {"job-42", "al ice", "URI:urn:jobgate:job:42:uid:1001", -EINVAL},     /* a bad user */
        {"job-42", "alice", "URI:urn:jobgate:job:42:uid:1001,URI:urn:jobgate:job:43:uid:1001",
         -EINVAL},                                                            /* two jobs */
        {"job-42", "alice", "URI:urn:jobgate:job:42:uid:1001x", -EINVAL},     /* trailing junk */
        {"job-42", "alice", "DNS:job-42", -EINVAL},                           /* no job URI */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509 *x = forge(ca, cases[i].cn, cases[i].user, cases[i].uris);
        int rc = jobca_verify(ca, x, now_real(), &got, err, sizeof(err));
        if (rc != cases[i].rc)
            fail_msg("case %zu: %d (%s)", i, rc, err);
        X509_free(x);
    }
    X509 *x = forge(ca, "job-42", "alice", "URI:urn:jobgate:job:42:uid:7");
    assert_int_equal(jobca_verify(ca, x, now_real(), &got, err, sizeof(err)), 0);
    assert_int_equal(got.uid, 7);
    X509_free(x);
    jobca_free(ca);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_the_ca_is_made_once_and_found_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_job_certificate_names_its_job_and_nothing_else, setup, teardown),
        cmocka_unit_test_setup_teardown(test_requests_that_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_names_that_disagree_are_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
