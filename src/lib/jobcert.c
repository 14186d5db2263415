/* jobcert — see jobcert.h. */
#include "jobcert.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls.h"

/* SHA-256 for EC and RSA keys; Ed25519 hashes by itself. */
static const EVP_MD *md_for(EVP_PKEY *key)
{
    return EVP_PKEY_get_id(key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256();
}

int jobcert_sign(EVP_PKEY *key, const void *payload, size_t len, char **sig_b64, char *err,
                 size_t errlen)
{
    *sig_b64 = NULL;
    unsigned char sig[512];
    size_t slen = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit(md, NULL, md_for(key), NULL, key) != 1 ||
        EVP_DigestSign(md, sig, &slen, payload, len) != 1) {
        snprintf(err, errlen, "cannot sign with the job's key: %s", tls_errstr());
        EVP_MD_CTX_free(md);
        return -1;
    }
    EVP_MD_CTX_free(md);
    char *b64 = malloc(4 * ((slen + 2) / 3) + 1);
    if (!b64) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    EVP_EncodeBlock((unsigned char *)b64, sig, (int)slen);
    *sig_b64 = b64;
    return 0;
}

int jobcert_verify(X509 *cert, const void *payload, size_t len, const char *sig_b64)
{
    size_t n = sig_b64 ? strnlen(sig_b64, JOBCERT_SIG_MAX + 1) : 0;
    if (n == 0 || n > JOBCERT_SIG_MAX || n % 4 != 0)
        return 0;
    unsigned char sig[JOBCERT_SIG_MAX];
    int slen = EVP_DecodeBlock(sig, (const unsigned char *)sig_b64, (int)n);
    if (slen <= 0)
        return 0;
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    slen -= (sig_b64[n - 1] == '=') + (sig_b64[n - 2] == '=');
    EVP_PKEY *key = X509_get0_pubkey(cert);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = key && md && EVP_DigestVerifyInit(md, NULL, md_for(key), NULL, key) == 1 &&
             EVP_DigestVerify(md, sig, (size_t)slen, payload, len) == 1;
    EVP_MD_CTX_free(md);
    ERR_clear_error();
    return ok;
}

X509 *jobcert_parse(const char *pem, size_t len)
{
    if (!pem || len == 0 || len > JOBCERT_PEM_MAX)
        return NULL;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    ERR_clear_error();
    return x;
}

int jobcert_has_uri(X509 *cert, const char *uri)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int found = 0, n = names ? sk_GENERAL_NAME_num(names) : 0;
    for (int i = 0; i < n; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_URI)
            continue;
        const unsigned char *d = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        int len = ASN1_STRING_length(g->d.uniformResourceIdentifier);
        if (len == (int)strlen(uri) && memcmp(d, uri, (size_t)len) == 0)
            found = 1;
    }
    GENERAL_NAMES_free(names);
    return found;
}

int jobcert_gateway_id(X509 *cert, char out[JOBCERT_GATEWAY_ID_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!cert || !X509_digest(cert, EVP_sha256(), md, &n) || n * 2 != JOBCERT_GATEWAY_ID_LEN)
        return -1;
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

int jobcert_munge_payload(char *buf, size_t len, const char *nonce, const char *gateway_id)
{
    int n = snprintf(buf, len, "jobgate/1 hello %s %s", nonce, gateway_id);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}
