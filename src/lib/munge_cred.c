/* munge_cred — see munge_cred.h. */
#include "munge_cred.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <munge.h>

#include "util.h"

_Static_assert(MUNGE_CRED_MAX_LEN < INT_MAX && MUNGE_CRED_MAX_PAYLOAD < INT_MAX,
               "munge takes lengths as int");
/* Base64 of the payload alone is 4/3 of it; the header, salt, MAC and
 * padding add well under 1 KiB. */
_Static_assert(MUNGE_CRED_MAX_PAYLOAD / 3 * 4 + 1024 <= MUNGE_CRED_MAX_LEN,
               "a maximal payload must encode within MUNGE_CRED_MAX_LEN");

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    if (n < 0)
        err[0] = '\0';
}

/* The socket the context talks to (the caller's, or MUNGE's default); the
 * string belongs to ctx or the caller. */
static const char *ctx_socket(munge_ctx_t ctx, const char *socket_path)
{
    if (socket_path)
        return socket_path;
    char *s = NULL;
    if (munge_ctx_get(ctx, MUNGE_OPT_SOCKET, &s) == EMUNGE_SUCCESS && s)
        return s;
    return "(default MUNGE socket)";
}

/* Creates a context bound to socket_path (NULL: default). 0 or -errno. */
static int ctx_new(const char *what, const char *socket_path, munge_ctx_t *out, char *err,
                   size_t errlen)
{
    munge_ctx_t ctx = munge_ctx_create();
    if (!ctx) {
        set_err(err, errlen, "munge %s: out of memory creating a munge context", what);
        return -ENOMEM;
    }
    if (socket_path) {
        munge_err_t e = munge_ctx_set(ctx, MUNGE_OPT_SOCKET, socket_path);
        if (e != EMUNGE_SUCCESS) {
            set_err(err, errlen, "munge %s: cannot use socket %s: %s", what, socket_path,
                    munge_ctx_strerror(ctx) ? munge_ctx_strerror(ctx) : munge_strerror(e));
            munge_ctx_destroy(ctx);
            return e == EMUNGE_NO_MEMORY ? -ENOMEM : -EINVAL;
        }
    }
    *out = ctx;
    return 0;
}

/* -ENOENT with a message if the socket path does not exist, else 0. munge
 * itself would fail the same way, after retrying. */
static int socket_missing(const char *what, const char *sock, char *err, size_t errlen)
{
    struct stat st;
    if (stat(sock, &st) != 0 && errno == ENOENT) {
        set_err(err, errlen, "munge %s: munged socket %s does not exist (is munged running?)",
                what, sock);
        return -ENOENT;
    }
    return 0;
}

/* Maps a munge error to -errno and writes the reason. Nothing from the
 * credential itself goes into the message: munge's own texts name the
 * problem, never the credential's bytes. */
static int map_err(const char *what, munge_err_t e, munge_ctx_t ctx, const char *sock, char *err,
                   size_t errlen)
{
    const char *detail = munge_ctx_strerror(ctx);
    if (!detail)
        detail = munge_strerror(e);
    switch (e) {
    case EMUNGE_CRED_EXPIRED:
        set_err(err, errlen, "munge %s: credential has expired", what);
        return -ETIMEDOUT;
    case EMUNGE_CRED_REPLAYED:
        set_err(err, errlen, "munge %s: credential was already used (replayed)", what);
        return -EALREADY;
    case EMUNGE_CRED_REWOUND:
        set_err(err, errlen,
                "munge %s: credential is rewound (encoded in the future; clock skew?)", what);
        return -EPERM;
    case EMUNGE_CRED_UNAUTHORIZED:
        set_err(err, errlen, "munge %s: credential may not be decoded by this user (%s)", what,
                detail);
        return -EPERM;
    case EMUNGE_BAD_CRED:
    case EMUNGE_BAD_VERSION:
    case EMUNGE_BAD_CIPHER:
    case EMUNGE_BAD_MAC:
    case EMUNGE_BAD_ZIP:
    case EMUNGE_BAD_REALM:
    case EMUNGE_CRED_INVALID:
        set_err(err, errlen, "munge %s: invalid credential (%s)", what, detail);
        return -EPERM;
    case EMUNGE_BAD_LENGTH:
        set_err(err, errlen, "munge %s: message too long for munged (%s)", what, detail);
        return -EMSGSIZE;
    case EMUNGE_SOCKET: {
        struct stat st;
        if (stat(sock, &st) != 0 && errno == ENOENT) {
            set_err(err, errlen, "munge %s: munged socket %s does not exist (is munged running?)",
                    what, sock);
            return -ENOENT;
        }
        set_err(err, errlen, "munge %s: cannot reach munged at socket %s (%s)", what, sock,
                detail);
        return -ECONNREFUSED;
    }
    case EMUNGE_NO_MEMORY:
        set_err(err, errlen, "munge %s: out of memory (%s)", what, detail);
        return -ENOMEM;
    case EMUNGE_BAD_ARG:
        set_err(err, errlen, "munge %s: invalid argument (%s)", what, detail);
        return -EINVAL;
    default:
        set_err(err, errlen, "munge %s: munge error %d (%s)", what, (int)e, detail);
        return -EIO;
    }
}

int munge_cred_encode(const char *socket_path, const void *payload, size_t len, int ttl_secs,
                      uid_t restrict_uid, char **cred_out, char *err, size_t errlen)
{
    static const char what[] = "encode";
    if (cred_out)
        *cred_out = NULL;
    if (!cred_out || (!payload && len > 0) || ttl_secs < 0) {
        set_err(err, errlen, "munge encode: invalid arguments");
        return -EINVAL;
    }
    if (len > MUNGE_CRED_MAX_PAYLOAD) {
        set_err(err, errlen, "munge encode: payload of %zu bytes exceeds the limit of %d", len,
                MUNGE_CRED_MAX_PAYLOAD);
        return -EMSGSIZE;
    }

    munge_ctx_t ctx;
    int rc = ctx_new(what, socket_path, &ctx, err, errlen);
    if (rc < 0)
        return rc;
    const char *sock = ctx_socket(ctx, socket_path);

    munge_err_t e = EMUNGE_SUCCESS;
    if (ttl_secs > 0)
        e = munge_ctx_set(ctx, MUNGE_OPT_TTL, ttl_secs);
    if (e == EMUNGE_SUCCESS && restrict_uid != (uid_t)-1)
        e = munge_ctx_set(ctx, MUNGE_OPT_UID_RESTRICTION, restrict_uid);
    if (e != EMUNGE_SUCCESS) {
        rc = map_err(what, e, ctx, sock, err, errlen);
        goto out;
    }
    rc = socket_missing(what, sock, err, errlen);
    if (rc < 0)
        goto out;

    char *cred = NULL;
    e = munge_encode(&cred, ctx, payload, (int)len);
    if (e != EMUNGE_SUCCESS) {
        free(cred);
        rc = map_err(what, e, ctx, sock, err, errlen);
        goto out;
    }
    if (!cred || strlen(cred) > MUNGE_CRED_MAX_LEN) {
        /* Cannot happen with MUNGE_CRED_MAX_PAYLOAD; the decoder would
         * refuse such a credential anyway. */
        free(cred);
        set_err(err, errlen, "munge encode: munged returned no usable credential");
        rc = -EIO;
        goto out;
    }
    *cred_out = cred;
    rc = 0;
out:
    munge_ctx_destroy(ctx);
    return rc;
}

/* Equality of two byte strings of the same length, in time independent of
 * where they differ. */
static int bytes_equal(const unsigned char *a, const unsigned char *b, size_t n)
{
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

int munge_cred_decode(const char *socket_path, const char *cred, size_t cred_len,
                      const void *expect_payload, size_t expect_len, struct munge_identity *id,
                      char *err, size_t errlen)
{
    static const char what[] = "decode";
    if (id) {
        id->uid = (uid_t)-1;
        id->gid = (gid_t)-1;
        id->encoded_at = 0;
        id->ttl = 0;
    }
    if (!id || (!cred && cred_len > 0) || (!expect_payload && expect_len > 0)) {
        set_err(err, errlen, "munge decode: invalid arguments");
        return -EINVAL;
    }
    if (cred_len > MUNGE_CRED_MAX_LEN) {
        set_err(err, errlen, "munge decode: credential of %zu bytes exceeds the limit of %d",
                cred_len, MUNGE_CRED_MAX_LEN);
        return -EMSGSIZE;
    }
    if (expect_len > MUNGE_CRED_MAX_PAYLOAD) {
        set_err(err, errlen, "munge decode: expected payload of %zu bytes exceeds the limit of %d",
                expect_len, MUNGE_CRED_MAX_PAYLOAD);
        return -EMSGSIZE;
    }
    if (cred_len == 0) {
        set_err(err, errlen, "munge decode: invalid credential (empty)");
        return -EPERM;
    }
    if (memchr(cred, '\0', cred_len)) {
        set_err(err, errlen, "munge decode: invalid credential (contains a NUL byte)");
        return -EPERM;
    }

    munge_ctx_t ctx;
    int rc = ctx_new(what, socket_path, &ctx, err, errlen);
    if (rc < 0)
        return rc;
    const char *sock = ctx_socket(ctx, socket_path);
    char *text = NULL;
    void *got = NULL;
    int got_len = 0;

    rc = socket_missing(what, sock, err, errlen);
    if (rc < 0)
        goto out;

    /* munge wants a C string. */
    text = xmalloc(cred_len + 1);
    memcpy(text, cred, cred_len);
    text[cred_len] = '\0';

    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    munge_err_t e = munge_decode(text, ctx, &got, &got_len, &uid, &gid);
    if (e != EMUNGE_SUCCESS) {
        /* For expired, rewound and replayed credentials munge still hands
         * back the payload and ids; they are not to be trusted. */
        rc = map_err(what, e, ctx, sock, err, errlen);
        goto out;
    }
    if (got_len < 0 || (size_t)got_len != expect_len ||
        (expect_len > 0 && (!got || !bytes_equal(got, expect_payload, expect_len)))) {
        set_err(err, errlen,
                "munge decode: credential is bound to a different payload (not issued for "
                "this connection)");
        rc = -EPERM;
        goto out;
    }
    if (uid == (uid_t)-1 || gid == (gid_t)-1) {
        set_err(err, errlen, "munge decode: munged returned no identity");
        rc = -EIO;
        goto out;
    }

    time_t t = 0;
    int ttl = 0;
    if (munge_ctx_get(ctx, MUNGE_OPT_ENCODE_TIME, &t) != EMUNGE_SUCCESS ||
        munge_ctx_get(ctx, MUNGE_OPT_TTL, &ttl) != EMUNGE_SUCCESS) {
        set_err(err, errlen, "munge decode: cannot read the credential's times (%s)",
                munge_ctx_strerror(ctx) ? munge_ctx_strerror(ctx) : "unknown error");
        rc = -EIO;
        goto out;
    }
    id->uid = uid;
    id->gid = gid;
    id->encoded_at = (int64_t)t;
    id->ttl = ttl;
    rc = 0;
out:
    if (text) {
        explicit_bzero(text, cred_len);
        free(text);
    }
    free(got);
    munge_ctx_destroy(ctx);
    return rc;
}
