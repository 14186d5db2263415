/*
 * munge_cred — MUNGE credentials that prove an agent's uid to the gateway
 * (docs/architecture.md, I2). The agent encodes a credential
 * bound to a payload the gateway chose (a per-connection challenge, or a
 * value derived from the TLS session), so a credential captured on one
 * connection cannot be replayed on another; the gateway decodes it through
 * its local munged, insists the payload is exactly the one it expects, and
 * takes the uid/gid that munged vouches for as the owner of the agent's
 * routes.
 *
 * Owns only the munge contexts and buffers of one call; no globals, so every
 * function may be called from any thread. Credentials and payloads are never
 * logged and never copied into error messages (I4). Built only where
 * pkg-config finds munge (JG_HAVE_MUNGE).
 *
 * Errors are negative errno values with an English reason in err:
 *   -EINVAL        bad arguments (NULL pointers, negative ttl)
 *   -EMSGSIZE      credential or payload over the limits below
 *   -ETIMEDOUT     the credential has expired
 *   -EALREADY      the credential was decoded before (replay)
 *   -EPERM         not a valid credential: malformed, wrong key or realm,
 *                  rewound (encoded in the future), restricted to another
 *                  uid, or bound to a different payload
 *   -ENOENT        the munged socket does not exist
 *   -ECONNREFUSED  munged could not be reached through its socket
 *   -ENOMEM        out of memory
 *   -EIO           anything else munge reports
 */
#ifndef JG_MUNGE_CRED_H
#define JG_MUNGE_CRED_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Largest credential text munge_cred_decode() accepts (bytes, without NUL). */
#define MUNGE_CRED_MAX_LEN 8192
/* Largest payload a credential may carry. A 4 KiB payload encodes to well
 * under MUNGE_CRED_MAX_LEN. */
#define MUNGE_CRED_MAX_PAYLOAD 4096

/* Who munged says encoded a credential. */
struct munge_identity {
    uid_t uid;
    gid_t gid;
    int64_t encoded_at;   /* seconds since the epoch, munged's clock */
    int ttl;              /* seconds the credential was valid for */
};

/*
 * Encodes a credential for this process's uid/gid carrying payload (len
 * bytes, at most MUNGE_CRED_MAX_PAYLOAD; payload may be NULL when len is 0).
 * socket_path: munged's socket, or NULL for MUNGE's default socket.
 * ttl_secs: lifetime in seconds; 0 takes munged's default.
 * restrict_uid: only this uid may decode the credential (the gateway's
 * service uid); (uid_t)-1 for no restriction.
 * On success returns 0 and *cred_out holds the NUL-terminated base64
 * credential, which the caller frees with free(). On error *cred_out is NULL.
 */
int munge_cred_encode(const char *socket_path, const void *payload, size_t len, int ttl_secs,
                      uid_t restrict_uid, char **cred_out, char *err, size_t errlen);

/*
 * Decodes cred (cred_len bytes of credential text, no NUL needed; at most
 * MUNGE_CRED_MAX_LEN) through munged at socket_path (NULL = default socket),
 * and requires its payload to equal expect_payload (expect_len bytes)
 * exactly. On success returns 0 and fills *id. On any error *id holds
 * uid/gid (uid_t)-1/(gid_t)-1, encoded_at 0 and ttl 0, so a caller that
 * ignores the return value still gets no identity.
 */
int munge_cred_decode(const char *socket_path, const char *cred, size_t cred_len,
                      const void *expect_payload, size_t expect_len, struct munge_identity *id,
                      char *err, size_t errlen);

#endif
