/*
 * jobkey — a job's key and certificate files in its job directory
 * (jobdir.h): the key made on the node (EC P-256) that never leaves it, the
 * certificate request the node channel sends for it, and, once the gateway
 * answered, all of them written into the directory at once: job.crt, ca.crt
 * (the agent CA that signed it), gateway-ca.crt (the plugin's ca=, when set)
 * and job.key last (0600), all the job's user's. job.key's presence means
 * "done": a later step of the job finds it and does nothing.
 *
 * The directory belongs to the job's user, who may plant anything in it.
 * Nothing is read back from it (the key stays in memory until written);
 * every file is made through the directory's descriptor with O_CREAT |
 * O_EXCL | O_NOFOLLOW after the name was unlinked (never following a link);
 * a failure removes what this call wrote. The steps of one job on a node
 * take turns through a lock on the directory (jobkey_lock). Owns no state.
 */
#ifndef JG_JOBKEY_H
#define JG_JOBKEY_H

#include <stddef.h>
#include <sys/types.h>

#include <openssl/evp.h>

#define JOBKEY_KEY "job.key"
#define JOBKEY_CERT "job.crt"
#define JOBKEY_CA "ca.crt"
#define JOBKEY_GATEWAY_CA "gateway-ca.crt"  /* what the job trusts the gateway's TLS with */

/* A new key in *key and a PEM certificate request for it in *csr_pem
 * (malloc'ed). 0, or -EIO with err. */
int jobkey_request(EVP_PKEY **key, char **csr_pem, char *err, size_t errlen);

/* 1 when dir holds the job's key already (a regular file: an earlier step). */
int jobkey_present(const char *dir);

/* Takes the job directory's lock (the steps of one job take turns), trying
 * for up to timeout_ms. The descriptor that holds it (jobkey_unlock), or
 * -errno with err. */
int jobkey_lock(const char *dir, int timeout_ms, char *err, size_t errlen);
void jobkey_unlock(int fd);

/* Writes cert_pem (which must be a certificate for key: -EINVAL otherwise),
 * ca_pem, gw_ca_pem (NULL: none) and key into dir, owned by uid:gid (0644,
 * the key 0600); on any failure removes what it wrote. 0 or -errno with err. */
int jobkey_install(const char *dir, uid_t uid, gid_t gid, EVP_PKEY *key, const char *cert_pem,
                   const char *ca_pem, const char *gw_ca_pem, char *err, size_t errlen);

#endif
