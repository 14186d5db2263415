/* token — see token.h. */
#include "token.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "log.h"

_Static_assert(TOKEN_STR_LEN == (TOKEN_RAW_BYTES * 8 + 5) / 6,
               "TOKEN_STR_LEN must be the unpadded base64url length of TOKEN_RAW_BYTES");
_Static_assert(TOKEN_HASH_LEN == 32, "token hashes are SHA-256");

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* 6-bit value of a base64url character, or -1. */
static int b64url_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

/* Unpadded base64url of n bytes into out, which holds (n*8+5)/6 + 1 chars. */
static void b64url_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
        out[o++] = b64url[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
    }
    out[o] = '\0';
}

int random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        int chunk = n > (size_t)INT_MAX ? INT_MAX : (int)n;
        if (RAND_bytes(p, chunk) != 1)
            return -EIO;
        p += chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

int token_new(char out[TOKEN_STR_LEN + 1])
{
    uint8_t raw[TOKEN_RAW_BYTES];
    if (random_bytes(raw, sizeof(raw)) < 0) {
        out[0] = '\0';
        return -EIO;
    }
    b64url_encode(raw, sizeof(raw), out);
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

/*
 * Besides length and alphabet, the last character must carry no bits beyond
 * the 256 encoded ones (32 bytes = 42 full characters + 4 bits, so the low 2
 * bits of the last character's value are zero). That makes the accepted
 * string form of a token unique: no two strings hash differently yet decode
 * to the same bytes.
 */
int token_syntax_ok(const char *s, size_t len)
{
    enum { SPARE_BITS = TOKEN_STR_LEN * 6 - TOKEN_RAW_BYTES * 8 };
    if (!s || len != TOKEN_STR_LEN)
        return 0;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        v = b64url_value((unsigned char)s[i]);
        if (v < 0)
            return 0;
    }
    return (v & ((1 << SPARE_BITS) - 1)) == 0;
}

void token_hash(const char *s, size_t len, uint8_t out[TOKEN_HASH_LEN])
{
    unsigned int outlen = 0;
    if (EVP_Digest(s, len, out, &outlen, EVP_sha256(), NULL) != 1 || outlen != TOKEN_HASH_LEN)
        fatal("SHA-256 failed");
}

int token_hash_equal(const uint8_t a[TOKEN_HASH_LEN], const uint8_t b[TOKEN_HASH_LEN])
{
    return CRYPTO_memcmp(a, b, TOKEN_HASH_LEN) == 0;
}

void token_hash_hex(const uint8_t h[TOKEN_HASH_LEN], char out[2 * TOKEN_HASH_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < TOKEN_HASH_LEN; i++) {
        out[2 * i] = hex[h[i] >> 4];
        out[2 * i + 1] = hex[h[i] & 15];
    }
    out[2 * TOKEN_HASH_LEN] = '\0';
}

/*
 * Rejection sampling: values below 2^32 mod bound are drawn again, so the
 * remaining range is a whole multiple of bound and r % bound is uniform.
 * The header gives no error channel; a failing CSPRNG is fatal, since
 * continuing with predictable numbers would be worse.
 */
uint32_t random_below(uint32_t bound)
{
    if (bound <= 1)
        return 0;
    uint32_t threshold = (uint32_t)(-bound) % bound;
    for (;;) {
        uint32_t r;
        if (random_bytes(&r, sizeof(r)) < 0)
            fatal("random number generator failed");
        if (r >= threshold)
            return r % bound;
    }
}
