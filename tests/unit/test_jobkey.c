/* Unit tests for src/slurm/jobkey.c: the job's key made in its directory, a request that
 * proves it, the gateway's answer stored only when it is for that key, links never followed. */
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
    char *csr = NULL;
    assert_int_equal(jobkey_make(dir, getuid(), getgid(), &csr, err, sizeof(err)), 0);
    assert_non_null(csr);
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_KEY);
    assert_int_equal(lstat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_uid, getuid());

    /* The request carries the key on file and is signed by it. */
    EVP_PKEY *key = read_key_file();
    BIO *b = BIO_new_mem_buf(csr, -1);
    X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(req);
    assert_int_equal(EVP_PKEY_eq(X509_REQ_get0_pubkey(req), key), 1);
    assert_int_equal(X509_REQ_verify(req, key), 1);
    X509_REQ_free(req);
    free(csr);

    /* A second step finds the key there and makes none. */
    assert_int_equal(jobkey_make(dir, getuid(), getgid(), &csr, err, sizeof(err)), -EEXIST);
    assert_null(csr);
    EVP_PKEY *again = read_key_file();
    assert_int_equal(EVP_PKEY_eq(again, key), 1);
    EVP_PKEY_free(again);
    EVP_PKEY_free(key);
}

static void test_a_planted_link_is_not_followed(void **state)
{
    char target[128];
    snprintf(target, sizeof(target), "%s/elsewhere", dir);
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_KEY);
    assert_int_equal(symlink(target, path), 0);
    char *csr = NULL;
    assert_int_equal(jobkey_make(dir, getuid(), getgid(), &csr, err, sizeof(err)), -EEXIST);
    assert_int_equal(access(target, F_OK), -1);     /* nothing written through the link */

    /* The same for the certificate's file. */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(jobkey_make(dir, getuid(), getgid(), &csr, err, sizeof(err)), 0);
    free(csr);
    EVP_PKEY *key = read_key_file();
    char *cert = cert_for(key, key);
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_CERT);
    assert_int_equal(symlink(target, path), 0);
    assert_true(jobkey_store(dir, getuid(), getgid(), cert, cert, err, sizeof(err)) < 0);
    assert_int_equal(access(target, F_OK), -1);
    free(cert);
    EVP_PKEY_free(key);
}

static void test_only_a_certificate_for_the_key_is_stored(void **state)
{
    char *csr = NULL;
    assert_int_equal(jobkey_make(dir, getuid(), getgid(), &csr, err, sizeof(err)), 0);
    free(csr);
    EVP_PKEY *key = read_key_file(), *other = EVP_EC_gen("P-256");

    char *wrong = cert_for(other, other);
    assert_int_equal(jobkey_store(dir, getuid(), getgid(), wrong, wrong, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not for this job's key"));
    assert_int_equal(jobkey_store(dir, getuid(), getgid(), "junk", "junk", err, sizeof(err)), -EINVAL);
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_CERT);
    assert_int_equal(access(path, F_OK), -1);

    /* Signed by another key (the CA), for this key: stored, with the CA beside it. */
    char *good = cert_for(key, other), *ca = cert_for(other, other);
    assert_int_equal(jobkey_store(dir, getuid(), getgid(), good, ca, err, sizeof(err)), 0);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
    snprintf(path, sizeof(path), "%s/%s", dir, JOBKEY_CA);
    assert_int_equal(lstat(path, &st), 0);
    free(wrong);
    free(good);
    free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_key_and_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_planted_link_is_not_followed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_only_a_certificate_for_the_key_is_stored, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
