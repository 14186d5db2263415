/*
 * tls — OpenSSL 3 server context and the self-signed certificate of a
 * personal gateway.
 *
 * Owns nothing beyond what it returns: the caller frees the SSL_CTX.
 * Settings decided here once for every listener: TLS 1.2 minimum, no
 * renegotiation, SSL_OP_IGNORE_UNEXPECTED_EOF (a peer that closes without
 * close_notify is an EOF, not an error: browsers do it all the time), ALPN
 * "http/1.1" (and later protocols registered by the caller), small buffers
 * released while idle.
 */
#ifndef JG_TLS_H
#define JG_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>

/* Builds a server context from PEM files. NULL on error, with the reason
 * (including OpenSSL's) in err. */
SSL_CTX *tls_server_ctx(const char *cert_file, const char *key_file, char *err, size_t errlen);

/*
 * Makes sure dir/tls.crt and dir/tls.key exist: when both are missing,
 * creates a P-256 key (mode 0600) and a self-signed certificate for
 * "localhost", "*.localhost" and 127.0.0.1, valid for 825 days. When they
 * exist they are left alone. 0 or a negative errno; reason in err.
 */
int tls_selfsigned_ensure(const char *dir, const char *domain, char *err, size_t errlen);

/* Adds extension nid (OpenSSL's config syntax in value) to crt; issuer is
 * the signing certificate (NULL: crt signs itself). 0 or -1. */
int tls_add_ext(X509 *crt, X509 *issuer, int nid, const char *value);

/* A new P-256 key in *key and a certificate for it, not yet signed: version
 * 3, random serial, valid from an hour ago for days, subject and issuer
 * O=org, CN=cn. The caller adds extensions and signs it with *key. NULL (and
 * *key NULL) on error. */
X509 *tls_selfissued_new(const char *org, const char *cn, long days, EVP_PKEY **key);

/* Gives crt a random positive 127-bit serial number. 0 or -1. */
int tls_random_serial(X509 *crt);

/* Writes a key (mode 0600) and its certificate (0644) under temporary names
 * and renames them, so that a crash never leaves half a pair; never follows
 * a link. 0 or a negative errno; reason in err. */
int tls_write_pair(const char *key_path, const char *crt_path, EVP_PKEY *pkey, X509 *crt,
                   char *err, size_t errlen);

/* Last OpenSSL error as text (thread-local static buffer) for log lines. */
const char *tls_errstr(void);

#endif
