/*
 * jobca — the gateway's agent CA and the per-job certificates it signs
 * (docs/slurm.md). The CA's key never leaves the gateway host: it lives in
 * the state directory (agent-ca.key, mode 0600, beside agent-ca.crt) and
 * signs the certificate request a node sends for a --jobgate job over the
 * node channel. The node makes the job's key; the gateway decides every
 * field of the certificate from its own record of the job, never from the
 * request: the request only proves possession of the key.
 *
 * A job certificate names its job and user three times over, all checked by
 * jobca_verify: subject CN "job-<id>", subject UID (userId) the user name,
 * and the subject alternative name URI urn:jobgate:job:<id>:uid:<uid>. It
 * is good for TLS client and server authentication (the tunnel's hello, and
 * the job's own endpoint in the callback direction), not for signing
 * certificates.
 *
 * Owns the CA's key and certificate; read-only after jobca_open, so any
 * thread may sign and verify with it at the same time (OpenSSL's objects
 * are safe for concurrent reads). Revocation (a job that ended) is the
 * registry's: a certificate that verifies here may still be refused there.
 */
#ifndef JG_JOBCA_H
#define JG_JOBCA_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

struct jobca;

#define JOBCA_CSR_MAX 8192          /* bytes of a PEM certificate request */
#define JOBCA_USER_MAX 64           /* bytes of a user name, NUL included */
#define JOBCA_VALID_BEFORE 300      /* seconds a certificate is valid before it was made (clock skew) */

/* A job, as the gateway recorded it. */
struct jobca_job {
    uint32_t job_id;
    uint32_t uid;
    char user[JOBCA_USER_MAX];      /* [A-Za-z0-9._-], not starting with '-' */
    int64_t not_after;              /* seconds since the epoch */
};

/* Loads dir/agent-ca.key and dir/agent-ca.crt, or makes both when neither
 * exists (P-256, "jobgate agent CA", valid 10 years). NULL with the reason
 * in err (one of the two missing, unreadable, a key that does not match). */
struct jobca *jobca_open(const char *dir, char *err, size_t errlen);
void jobca_free(struct jobca *ca);

/* A TLS client context with the gateway's own certificate (made at
 * jobca_open, signed by this CA, URI JOBCERT_GATEWAY_URI, clientAuth, its
 * key only in memory) that trusts this CA alone: what the gateway presents
 * to a job's callback endpoint (backend_direct.c). The peer's job is checked
 * by the caller (jobca_verify). Read-only; any thread. */
SSL_CTX *jobca_client_ctx(const struct jobca *ca);

/* The CA's certificate in PEM, for nodes (they check the gateway's
 * signature on a job certificate and write it into the job's directory). */
const char *jobca_cert_pem(const struct jobca *ca);

/* Signs the job's certificate request (PEM, at most JOBCA_CSR_MAX bytes):
 * its signature must verify with its own key, which must be EC P-256 or
 * P-384, Ed25519, or RSA of 2048 bits or more. Validity from now -
 * JOBCA_VALID_BEFORE to job->not_after. On success 0 and a malloc'ed PEM
 * certificate in *cert_pem; else -EINVAL (the request, the job) or -EIO
 * (OpenSSL), with the reason in err. */
int jobca_sign(const struct jobca *ca, const char *csr_pem, size_t len, const struct jobca_job *job,
               char **cert_pem, char *err, size_t errlen);

/* Checks that cert is a job certificate this CA signed and valid at now;
 * on success 0 and the job it names in *job (not_after from the
 * certificate); -EPERM (another CA, expired, not yet valid) or -EINVAL (not
 * a job certificate) with the reason in err. */
int jobca_verify(const struct jobca *ca, X509 *cert, int64_t now, struct jobca_job *job,
                 char *err, size_t errlen);

#endif
