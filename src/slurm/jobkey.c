/* jobkey — see jobkey.h. */
#include "jobkey.h"
#include "plugerr.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define PEM_MAX (64 * 1024)     /* bytes of a key or certificate file read back */

/* tls_errstr() of src/lib/tls.c, which the plugin does not link (see README.md). */
/* Writes data into a new file name in dirfd (O_EXCL, no link followed), owned by uid:gid
 * with mode; the file is removed again on any error. 0 or -errno. */
static int write_new(int dirfd, const char *name, const void *data, size_t len, mode_t mode,
                     uid_t uid, gid_t gid)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    int rc = 0;
    if (fchown(fd, uid, gid) < 0 || fchmod(fd, mode) < 0)
        rc = -errno;
    for (size_t off = 0; rc == 0 && off < len;) {
        ssize_t n = write(fd, (const char *)data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = n < 0 ? -errno : -EIO;
        else
            off += (size_t)n;
    }
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    if (close(fd) < 0 && rc == 0)
        rc = -errno;
    if (rc < 0)
        unlinkat(dirfd, name, 0);
    return rc;
}

/* A BIO's contents as a malloc'ed string, or NULL. */
static char *bio_string(BIO *b)
{
    char *p;
    long n = BIO_get_mem_data(b, &p);
    if (n <= 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s) {
        memcpy(s, p, (size_t)n);
        s[n] = '\0';
    }
    return s;
}

static int open_dir(const char *dir, char *err, size_t errlen)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return plug_err(err, errlen, -errno, "cannot open %s: %s", dir, strerror(errno));
    return fd;
}

int jobkey_make(const char *dir, uid_t uid, gid_t gid, char **csr_pem, char *err, size_t errlen)
{
    *csr_pem = NULL;
    int dfd = open_dir(dir, err, errlen);
    if (dfd < 0)
        return dfd;
    struct stat st;
    if (fstatat(dfd, JOBKEY_KEY, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        close(dfd);
        return plug_err(err, errlen, -EEXIST, "%s/%s exists", dir, JOBKEY_KEY);
    }
    int rc = -EIO;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509_REQ *req = X509_REQ_new();
    BIO *kb = BIO_new(BIO_s_mem()), *rb = BIO_new(BIO_s_mem());
    char *key_pem = NULL;
    if (!key || !req || !kb || !rb ||
        !PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) ||
        !(key_pem = bio_string(kb))) {
        plug_err(err, errlen, rc, "cannot make the job's key: %s", plug_ossl_err());
        goto out;
    }
    /* The gateway takes no name from the request: it only proves the key. */
    X509_NAME *name = X509_REQ_get_subject_name(req);
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"jobgate job",
                                    -1, -1, 0) ||
        !X509_REQ_set_version(req, 0) || !X509_REQ_set_pubkey(req, key) ||
        X509_REQ_sign(req, key, EVP_sha256()) <= 0 || !PEM_write_bio_X509_REQ(rb, req) ||
        !(*csr_pem = bio_string(rb))) {
        plug_err(err, errlen, rc, "cannot make the job's certificate request: %s",
                 plug_ossl_err());
        goto out;
    }
    rc = write_new(dfd, JOBKEY_KEY, key_pem, strlen(key_pem), 0600, uid, gid);
    if (rc < 0) {
        plug_err(err, errlen, rc, "cannot write %s/%s: %s", dir, JOBKEY_KEY, strerror(-rc));
        free(*csr_pem);
        *csr_pem = NULL;
    }
out:
    if (key_pem) {
        OPENSSL_cleanse(key_pem, strlen(key_pem));
        free(key_pem);
    }
    BIO_free(kb);
    BIO_free(rb);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    close(dfd);
    return rc;
}

/* The job's key, read back through dirfd (no link followed, at most PEM_MAX bytes). */
static EVP_PKEY *read_key(int dirfd)
{
    int fd = openat(dirfd, JOBKEY_KEY, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = malloc(PEM_MAX);
    ssize_t n = buf ? read(fd, buf, PEM_MAX) : -1;
    close(fd);
    EVP_PKEY *key = NULL;
    if (n > 0 && n < PEM_MAX) {
        BIO *b = BIO_new_mem_buf(buf, (int)n);
        key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
    }
    if (buf) {
        OPENSSL_cleanse(buf, PEM_MAX);
        free(buf);
    }
    return key;
}

int jobkey_store(const char *dir, uid_t uid, gid_t gid, const char *cert_pem, const char *ca_pem,
                 char *err, size_t errlen)
{
    int dfd = open_dir(dir, err, errlen);
    if (dfd < 0)
        return dfd;
    int rc = -EINVAL;
    BIO *b = BIO_new_mem_buf(cert_pem, -1);
    X509 *crt = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    EVP_PKEY *key = read_key(dfd);
    if (!crt) {
        plug_err(err, errlen, rc, "the gateway's answer is not a certificate: %s",
                 plug_ossl_err());
    } else if (!key) {
        plug_err(err, errlen, rc, "cannot read %s/%s back", dir, JOBKEY_KEY);
    } else if (X509_check_private_key(crt, key) != 1) {
        ERR_clear_error();
        plug_err(err, errlen, rc, "the gateway's certificate is not for this job's key");
    } else if ((rc = write_new(dfd, JOBKEY_CERT, cert_pem, strlen(cert_pem), 0644, uid, gid)) < 0) {
        plug_err(err, errlen, rc, "cannot write %s/%s: %s", dir, JOBKEY_CERT, strerror(-rc));
    } else if ((rc = write_new(dfd, JOBKEY_CA, ca_pem, strlen(ca_pem), 0644, uid, gid)) < 0) {
        plug_err(err, errlen, rc, "cannot write %s/%s: %s", dir, JOBKEY_CA, strerror(-rc));
        unlinkat(dfd, JOBKEY_CERT, 0);      /* ours: just written */
    }
    X509_free(crt);
    EVP_PKEY_free(key);
    close(dfd);
    return rc;
}

int jobkey_store_gateway_ca(const char *dir, uid_t uid, gid_t gid, const char *pem, char *err,
                            size_t errlen)
{
    int dfd = open_dir(dir, err, errlen);
    if (dfd < 0)
        return dfd;
    int rc = write_new(dfd, JOBKEY_GATEWAY_CA, pem, strlen(pem), 0644, uid, gid);
    if (rc < 0)
        plug_err(err, errlen, rc, "cannot write %s/%s: %s", dir, JOBKEY_GATEWAY_CA, strerror(-rc));
    close(dfd);
    return rc;
}

void jobkey_discard(const char *dir)
{
    char err[64];
    int dfd = open_dir(dir, err, sizeof(err));
    if (dfd < 0)
        return;
    (void)unlinkat(dfd, JOBKEY_KEY, 0);
    close(dfd);
}
