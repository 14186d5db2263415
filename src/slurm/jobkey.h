/*
 * jobkey — a job's key and certificate files in its job directory
 * (jobdir.h): the key made on the node (EC P-256, job.key, mode 0600, the
 * job's user's) that never leaves it, the certificate request the node
 * channel sends for it, and the gateway's answer stored beside the key
 * (job.crt, and ca.crt: the agent CA that signed it).
 *
 * Every file is made through the job directory's descriptor with O_CREAT |
 * O_EXCL | O_NOFOLLOW: nothing the job planted there is followed or
 * overwritten. Owns no state.
 */
#ifndef JG_JOBKEY_H
#define JG_JOBKEY_H

#include <stddef.h>
#include <sys/types.h>

#define JOBKEY_KEY "job.key"
#define JOBKEY_CERT "job.crt"
#define JOBKEY_CA "ca.crt"
#define JOBKEY_GATEWAY_CA "gateway-ca.crt"  /* what the job trusts the gateway's TLS with */

/* Makes the job's key in dir (owned by uid:gid, 0600) and returns a PEM
 * certificate request for it in *csr_pem (malloc'ed). -EEXIST when dir
 * already holds a key (an earlier step made it); else 0 or -errno with the
 * reason in err. */
int jobkey_make(const char *dir, uid_t uid, gid_t gid, char **csr_pem, char *err, size_t errlen);

/* Stores the gateway's answer beside the key: cert_pem must be a
 * certificate for dir's job.key (-EINVAL otherwise), ca_pem the CA's
 * certificate; both files owned by uid:gid, 0644 inside the 0700 directory.
 * 0 or -errno with the reason in err. */
int jobkey_store(const char *dir, uid_t uid, gid_t gid, const char *cert_pem, const char *ca_pem,
                 char *err, size_t errlen);

/* Removes dir's job.key (a failed request: the next step makes a new one). */
void jobkey_discard(const char *dir);

/* Writes pem (the CA of the gateway's TLS certificate: the plugin's ca=)
 * into dir as JOBKEY_GATEWAY_CA, owned by uid:gid, 0644. 0 or -errno. */
int jobkey_store_gateway_ca(const char *dir, uid_t uid, gid_t gid, const char *pem, char *err,
                            size_t errlen);

#endif
