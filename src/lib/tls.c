/* tls — see tls.h. */
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "util.h"

const char *tls_errstr(void)
{
    static __thread char buf[256];
    unsigned long e = ERR_peek_last_error();
    if (e == 0)
        return "no OpenSSL error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    /* jobgate/1: an agent's tunnel (browsers never offer it); http/1.1: everyone else. */
    static const unsigned char ours[] = "\x09jobgate/1\x08http/1.1";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no ALPN agreed: plain HTTP/1.1 */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "SSL_CTX_new: %s", tls_errstr());
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_ENABLE_PARTIAL_WRITE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        snprintf(err, errlen, "%s: cannot load certificate: %s", cert_file, tls_errstr());
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(err, errlen, "%s: cannot load key: %s", key_file, tls_errstr());
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "%s does not match %s: %s", key_file, cert_file, tls_errstr());
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

int tls_add_ext(X509 *crt, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : crt, crt, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(crt, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -1;
}

int tls_random_serial(X509 *crt)
{
    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof(serial)) != 1)
        return -1;
    serial[0] &= 0x7f; /* positive */
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    int ok = bn && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(crt));
    BN_free(bn);
    return ok ? 0 : -1;
}

X509 *tls_selfissued_new(const char *org, const char *cn, long days, EVP_PKEY **key)
{
    *key = EVP_EC_gen("P-256");
    X509 *crt = X509_new();
    if (!*key || !crt || tls_random_serial(crt) < 0 || !X509_set_version(crt, 2) ||
        !X509_gmtime_adj(X509_getm_notBefore(crt), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(crt), days * 24 * 3600))
        goto fail;
    X509_NAME *name = X509_get_subject_name(crt);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)org, -1, -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0) ||
        !X509_set_issuer_name(crt, name) || !X509_set_pubkey(crt, *key))
        goto fail;
    return crt;
fail:
    X509_free(crt);
    EVP_PKEY_free(*key);
    *key = NULL;
    return NULL;
}

/* Opens path for writing with the given mode, refusing to follow links. */
static FILE *open_new(const char *path, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return NULL;
    if (fchmod(fd, mode) < 0) {
        close(fd);
        return NULL;
    }
    FILE *f = fdopen(fd, "w");
    if (!f)
        close(fd);
    return f;
}

int tls_write_pair(const char *key_path, const char *crt_path, EVP_PKEY *pkey, X509 *crt,
                   char *err, size_t errlen)
{
    char tmp_key[4096], tmp_crt[4096];
    if (xsnprintf(tmp_key, sizeof(tmp_key), "%s.tmp", key_path) < 0 ||
        xsnprintf(tmp_crt, sizeof(tmp_crt), "%s.tmp", crt_path) < 0)
        return errmsg(err, errlen, -ENAMETOOLONG, "%s: path too long", key_path);
    int rc = -EIO;
    FILE *f = open_new(tmp_key, 0600);
    if (!f || !PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL) || fclose(f) != 0) {
        f = NULL;
        errmsg(err, errlen, rc, "%s: cannot write: %s", tmp_key, strerror(errno));
        goto out;
    }
    f = open_new(tmp_crt, 0644);
    if (!f || !PEM_write_X509(f, crt) || fclose(f) != 0) {
        f = NULL;
        errmsg(err, errlen, rc, "%s: cannot write: %s", tmp_crt, strerror(errno));
        goto out;
    }
    f = NULL;
    if (rename(tmp_key, key_path) < 0 || rename(tmp_crt, crt_path) < 0) {
        errmsg(err, errlen, rc, "%s: cannot rename: %s", key_path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (f)
        fclose(f);
    if (rc < 0) {
        unlink(tmp_key);
        unlink(tmp_crt);
    }
    return rc;
}

int tls_selfsigned_ensure(const char *dir, const char *domain, char *err, size_t errlen)
{
    char crt_path[4096], key_path[4096], san[600];
    struct stat st;
    int rc = -EIO;

    if (xsnprintf(crt_path, sizeof(crt_path), "%s/tls.crt", dir) < 0 ||
        xsnprintf(key_path, sizeof(key_path), "%s/tls.key", dir) < 0 ||
        xsnprintf(san, sizeof(san), "DNS:%s,DNS:*.%s,IP:127.0.0.1,IP:::1", domain, domain) < 0) {
        snprintf(err, errlen, "%s: path too long", dir);
        return -ENAMETOOLONG;
    }
    int have_crt = stat(crt_path, &st) == 0, have_key = stat(key_path, &st) == 0;
    if (have_crt && have_key)
        return 0;
    if (have_crt != have_key) {
        snprintf(err, errlen, "%s: only one of tls.crt and tls.key exists; remove it to have both made anew",
                 dir);
        return -EEXIST;
    }

    EVP_PKEY *pkey;
    X509 *crt = tls_selfissued_new("jobgate personal gateway", domain, 825, &pkey);
    if (!crt)
        goto ossl_fail;
    if (tls_add_ext(crt, NULL, NID_basic_constraints, "critical,CA:FALSE") < 0 ||
        tls_add_ext(crt, NULL, NID_key_usage, "critical,digitalSignature") < 0 ||
        tls_add_ext(crt, NULL, NID_ext_key_usage, "serverAuth") < 0 ||
        tls_add_ext(crt, NULL, NID_subject_alt_name, san) < 0 ||
        tls_add_ext(crt, NULL, NID_subject_key_identifier, "hash") < 0)
        goto ossl_fail;
    if (!X509_sign(crt, pkey, EVP_sha256()))
        goto ossl_fail;
    /* Temporary names and a rename: a crash never leaves half a pair. */
    rc = tls_write_pair(key_path, crt_path, pkey, crt, err, errlen);
    goto out;
ossl_fail:
    snprintf(err, errlen, "cannot make a self-signed certificate: %s", tls_errstr());
out:
    X509_free(crt);
    EVP_PKEY_free(pkey);
    return rc;
}
