/*
 * token — capability tokens (one-time links, session cookies) and their
 * hashes. I4: tokens carry 256 random bits from the OpenSSL CSPRNG, are
 * stored and compared only as SHA-256 hashes, compared in constant time, and
 * never logged.
 */
#ifndef JG_TOKEN_H
#define JG_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#define TOKEN_RAW_BYTES 32
#define TOKEN_STR_LEN 43   /* base64url of 32 bytes, no padding */
#define TOKEN_HASH_LEN 32

/* Writes a fresh token (TOKEN_STR_LEN chars + NUL). 0, or -EIO if the RNG failed. */
int token_new(char out[TOKEN_STR_LEN + 1]);
/* 1 if s is exactly TOKEN_STR_LEN base64url characters. */
int token_syntax_ok(const char *s, size_t len);
/* SHA-256 of the token's characters. */
void token_hash(const char *s, size_t len, uint8_t out[TOKEN_HASH_LEN]);
/* Constant-time equality of two hashes: 1 if equal. */
int token_hash_equal(const uint8_t a[TOKEN_HASH_LEN], const uint8_t b[TOKEN_HASH_LEN]);
/* Lower-case hex of a hash (64 chars + NUL). */
void token_hash_hex(const uint8_t h[TOKEN_HASH_LEN], char out[2 * TOKEN_HASH_LEN + 1]);
/* Random bytes from the CSPRNG. 0 or -EIO. */
int random_bytes(void *buf, size_t n);
/* Uniform random integer in [0, bound) (bound > 0), without modulo bias. */
uint32_t random_below(uint32_t bound);

#endif
