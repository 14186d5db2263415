/* jobkey — see jobkey.h. */
#include "jobkey.h"
#include "plugerr.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>


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

int jobkey_request(EVP_PKEY **key, char **csr_pem, char *err, size_t errlen)
{
    *csr_pem = NULL;
    *key = EVP_EC_gen("P-256");
    X509_REQ *req = X509_REQ_new();
    BIO *rb = BIO_new(BIO_s_mem());
    int rc = -EIO;
    /* The gateway takes no name from the request: it only proves the key. */
    X509_NAME *name = req ? X509_REQ_get_subject_name(req) : NULL;
    if (!*key || !req || !rb || !name ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"jobgate job",
                                    -1, -1, 0) ||
        !X509_REQ_set_version(req, 0) || !X509_REQ_set_pubkey(req, *key) ||
        X509_REQ_sign(req, *key, EVP_sha256()) <= 0 || !PEM_write_bio_X509_REQ(rb, req) ||
        !(*csr_pem = bio_string(rb))) {
        plug_err(err, errlen, rc, "cannot make the job's key and request: %s", plug_ossl_err());
        EVP_PKEY_free(*key);
        *key = NULL;
    } else {
        rc = 0;
    }
    BIO_free(rb);
    X509_REQ_free(req);
    return rc;
}

int jobkey_present(const char *dir)
{
    char err[64];
    struct stat st;
    int dfd = open_dir(dir, err, sizeof(err));
    if (dfd < 0)
        return 0;
    int yes = fstatat(dfd, JOBKEY_KEY, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
    close(dfd);
    return yes;
}

int jobkey_lock(const char *dir, int timeout_ms, char *err, size_t errlen)
{
    int dfd = open_dir(dir, err, errlen);
    if (dfd < 0)
        return dfd;
    for (int waited = 0;; waited += 50) {
        if (flock(dfd, LOCK_EX | LOCK_NB) == 0)
            return dfd;
        if (errno != EWOULDBLOCK || waited >= timeout_ms) {
            int e = errno == EWOULDBLOCK ? ETIMEDOUT : errno;
            close(dfd);
            return plug_err(err, errlen, -e, "cannot lock %s: %s", dir, strerror(e));
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

void jobkey_unlock(int fd)
{
    if (fd >= 0)
        close(fd); /* the lock goes with the descriptor */
}

int jobkey_install(const char *dir, uid_t uid, gid_t gid, EVP_PKEY *key, const char *cert_pem,
                   const char *ca_pem, const char *gw_ca_pem, char *err, size_t errlen)
{
    BIO *b = BIO_new_mem_buf(cert_pem, -1);
    X509 *crt = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    if (!crt) {
        plug_err(err, errlen, -EINVAL, "the gateway's answer is not a certificate: %s",
                 plug_ossl_err());
        return -EINVAL;
    }
    int match = X509_check_private_key(crt, key) == 1;
    X509_free(crt);
    ERR_clear_error();
    if (!match)
        return plug_err(err, errlen, -EINVAL, "the gateway's certificate is not for this job's key");
    BIO *kb = BIO_new(BIO_s_mem());
    char *key_pem = kb && PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL)
                        ? bio_string(kb) : NULL;
    BIO_free(kb);
    if (!key_pem)
        return plug_err(err, errlen, -EIO, "cannot write the key out: %s", plug_ossl_err());
    int dfd = open_dir(dir, err, errlen);
    if (dfd < 0) {
        OPENSSL_cleanse(key_pem, strlen(key_pem));
        free(key_pem);
        return dfd;
    }
    /* The key last: its presence says the rest is there. */
    const struct {
        const char *name, *data;
        mode_t mode;
    } files[] = {
        {JOBKEY_CERT, cert_pem, 0644}, {JOBKEY_CA, ca_pem, 0644},
        {JOBKEY_GATEWAY_CA, gw_ca_pem, 0644}, {JOBKEY_KEY, key_pem, 0600},
    };
    size_t done = 0;
    int rc = 0;
    for (; done < sizeof(files) / sizeof(files[0]); done++) {
        if (!files[done].data)
            continue;
        (void)unlinkat(dfd, files[done].name, 0); /* whatever the user left there: not followed */
        rc = write_new(dfd, files[done].name, files[done].data, strlen(files[done].data),
                       files[done].mode, uid, gid);
        if (rc < 0) {
            plug_err(err, errlen, rc, "cannot write %s/%s: %s", dir, files[done].name,
                     strerror(-rc));
            break;
        }
    }
    if (rc < 0)
        while (done-- > 0)
            if (files[done].data)
                unlinkat(dfd, files[done].name, 0); /* ours: just written */
    OPENSSL_cleanse(key_pem, strlen(key_pem));
    free(key_pem);
    close(dfd);
    return rc;
}
