/*
 * jobcert — the proofs in the tunnel's hello. First, that of a job certificate
 * (docs/tunnel-protocol.md, auth method "jobcert"): the agent signs the
 * challenge's payload "jobgate/1 hello <nonce>" with the job's key
 * (JOBGATE_DIR/job.key) and sends the signature (base64) beside the job's
 * certificate; the gateway checks that the certificate is one its agent CA
 * signed for a running job (jobca.h, the registry) and that the signature
 * verifies with the certificate's key. The nonce is fresh per connection,
 * so a signature seen once is worth nothing on another.
 *
 * One file for both ends: the agent signs, the gateway verifies. Owns
 * nothing; any thread.
 */
#ifndef JG_JOBCERT_H
#define JG_JOBCERT_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#define JOBCERT_PEM_MAX 8192   /* bytes of a job certificate in PEM */
/* The name in the gateway's own client certificate (signed by its agent CA),
 * which a job's callback endpoint requires (jobgate run --callback). */
#define JOBCERT_GATEWAY_URI "urn:jobgate:gateway"
#define JOBCERT_SIG_MAX 1024   /* bytes of a signature in base64 */

/* Signs payload (len bytes) with key (SHA-256, or Ed25519's own hash).
 * 0 and a malloc'ed base64 signature in *sig_b64, or -1 with err. */
int jobcert_sign(EVP_PKEY *key, const void *payload, size_t len, char **sig_b64, char *err,
                 size_t errlen);

/* 1 when sig_b64 is a signature of payload by cert's key, else 0. */
int jobcert_verify(X509 *cert, const void *payload, size_t len, const char *sig_b64);

/* 1 when cert names exactly the URI uri among its subject alternative names. */
int jobcert_has_uri(X509 *cert, const char *uri);

/*
 * The payload of a MUNGE credential in the hello (auth method "munge"):
 * "jobgate/1 hello <nonce> <gateway>", where gateway is the SHA-256 (hex)
 * of the gateway's TLS certificate (DER): the gateway's own, the peer's
 * for the agent. Bound to the connection by the nonce and to the gateway by
 * its certificate, so that a gateway the agent was pointed at by mistake
 * cannot relay another gateway's challenge with the credential. 0, or -1
 * (no certificate, or buf too small).
 */
#define JOBCERT_GATEWAY_ID_LEN 64
int jobcert_gateway_id(X509 *cert, char out[JOBCERT_GATEWAY_ID_LEN + 1]);
int jobcert_munge_payload(char *buf, size_t len, const char *nonce, const char *gateway_id);

/* Reads one PEM certificate of at most JOBCERT_PEM_MAX bytes. NULL if not. */
X509 *jobcert_parse(const char *pem, size_t len);

#endif
