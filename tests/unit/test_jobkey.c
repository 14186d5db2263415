/* Unit tests for src/slurm/jobkey.c: the job's key and a request that proves it (in
 * memory), everything installed at once only when the certificate is for that key (the key
 * last), links never followed, failures leaving nothing, the steps' lock. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "jobkey.h"

static char dir[64], path[128], err[512];

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/jg-jobkey-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static EVP_PKEY *read_key_file(void)
{
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_KEY);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    assert_non_null(k);
    return k;
}

/* A PEM certificate for key's public half, self-signed by signer. */
static char *cert_for(EVP_PKEY *key, EVP_PKEY *signer)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"job-1", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_set_pubkey(x, key);
    assert_true(X509_sign(x, signer, EVP_sha256()) > 0);
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *s = malloc((size_t)n + 1);
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    BIO_free(b);
    X509_free(x);
    return s;
}

static void test_key_and_request(void **state)
{
    EVP_PKEY *key = NULL;
    char *csr = NULL;
    assert_int_equal(jobkey_request(&key, &csr, err, sizeof(err)), 0);
    assert_non_null(key);
    /* The request proves that very key. */
    BIO *b = BIO_new_mem_buf(csr, -1);
    X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(req);
    EVP_PKEY *pub = X509_REQ_get_pubkey(req);
    assert_int_equal(EVP_PKEY_eq(pub, key), 1);
    assert_int_equal(X509_REQ_verify(req, pub), 1);
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
    free(csr);
    assert_false(jobkey_present(dir)); /* nothing written yet: the key stays in memory */
    EVP_PKEY_free(key);
}

static void test_install_writes_all_key_last(void **state)
{
    EVP_PKEY *key = NULL, *ca_key = EVP_EC_gen("P-256");
    char *csr = NULL;
    assert_int_equal(jobkey_request(&key, &csr, err, sizeof(err)), 0);
    free(csr);
    char *good = cert_for(key, ca_key), *ca = cert_for(ca_key, ca_key);
    assert_int_equal(jobkey_install(dir, getuid(), getgid(), key, good, ca, ca, err,
                                    sizeof(err)), 0);
    assert_true(jobkey_present(dir));
    const struct { const char *name; unsigned mode; } want[] = {
        {JOBKEY_CERT, 0644}, {JOBKEY_CA, 0644}, {JOBKEY_GATEWAY_CA, 0644}, {JOBKEY_KEY, 0600}};
    for (size_t i = 0; i < 4; i++) {
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", dir, want[i].name);
        assert_int_equal(lstat(path, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        assert_int_equal(st.st_mode & 07777, want[i].mode);
    }
    EVP_PKEY *again = read_key_file();
    assert_int_equal(EVP_PKEY_eq(again, key), 1);
    EVP_PKEY_free(again);
    free(good);
    free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(ca_key);
}

static void test_planted_files_are_not_followed_and_failures_leave_nothing(void **state)
{
    char target[128];
    EVP_PKEY *key = NULL, *other = EVP_EC_gen("P-256");
    char *csr = NULL;
    assert_int_equal(jobkey_request(&key, &csr, err, sizeof(err)), 0);
    free(csr);
    /* A link planted where the key goes: replaced, never written through. */
    snprintf(target, sizeof(target), "%s/elsewhere", dir);
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_KEY);
    assert_int_equal(symlink(target, path), 0);
    assert_false(jobkey_present(dir)); /* a link is not the key */
    char *good = cert_for(key, other), *ca = cert_for(other, other);
    assert_int_equal(jobkey_install(dir, getuid(), getgid(), key, good, ca, NULL, err,
                                    sizeof(err)), 0);
    assert_int_equal(access(target, F_OK), -1);
    assert_true(jobkey_present(dir));

    /* A certificate for another key, or junk: refused, and nothing new is left. */
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -f '%s'/*", dir);
    assert_int_equal(system(cmd), 0);
    char *wrong = cert_for(other, other);
    assert_int_equal(jobkey_install(dir, getuid(), getgid(), key, wrong, ca, NULL, err,
                                    sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not for this job's key"));
    assert_int_equal(jobkey_install(dir, getuid(), getgid(), key, "junk", ca, NULL, err,
                                    sizeof(err)), -EINVAL);
    /* A directory where a file goes makes the write fail: what was written is removed. */
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_GATEWAY_CA);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/%s/x", dir, JOBKEY_GATEWAY_CA);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
    assert_true(jobkey_install(dir, getuid(), getgid(), key, good, ca, ca, err,
                               sizeof(err)) < 0);
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_CERT);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_CA);
    assert_int_equal(access(path, F_OK), -1);
    assert_false(jobkey_present(dir));
    free(wrong);
    free(good);
    free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

static void test_the_lock_takes_turns(void **state)
{
    int a = jobkey_lock(dir, 100, err, sizeof(err));
    assert_true(a >= 0);
    /* Another step waits, then gives up with a clear reason. */
    assert_int_equal(jobkey_lock(dir, 120, err, sizeof(err)), -ETIMEDOUT);
    assert_non_null(strstr(err, "cannot lock"));
    jobkey_unlock(a);
    int b = jobkey_lock(dir, 100, err, sizeof(err));
    assert_true(b >= 0);
    jobkey_unlock(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_key_and_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_install_writes_all_key_last, setup, teardown),
        cmocka_unit_test_setup_teardown(test_planted_files_are_not_followed_and_failures_leave_nothing,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_the_lock_takes_turns, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
