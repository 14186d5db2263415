/* Unit tests for token.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "token.h"

static int in_alphabet(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_';
}

static void test_new_shape(void **state)
{
    (void)state;
    for (int i = 0; i < 200; i++) {
        char t[TOKEN_STR_LEN + 1];
        memset(t, 'x', sizeof(t));
        assert_int_equal(token_new(t), 0);
        assert_int_equal(strlen(t), 43);
        for (size_t j = 0; j < TOKEN_STR_LEN; j++)
            assert_true(in_alphabet(t[j]));
        assert_true(token_syntax_ok(t, strlen(t)));
    }
}

/* Decodes the token with a decoder written here, re-encodes the bytes with
 * OpenSSL's standard base64 and maps that to base64url: both must agree, so
 * the bit order of the encoder is right. */
static void test_new_matches_reference_encoding(void **state)
{
    (void)state;
    const char *all = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int n = 0; n < 100; n++) {
        char t[TOKEN_STR_LEN + 1];
        assert_int_equal(token_new(t), 0);
        uint8_t raw[TOKEN_RAW_BYTES + 2] = {0};
        unsigned acc = 0, bits = 0;
        size_t o = 0;
        for (size_t i = 0; i < TOKEN_STR_LEN; i++) {
            const char *p = strchr(all, t[i]);
            assert_non_null(p);
            acc = (acc << 6) | (unsigned)(p - all);
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                raw[o++] = (uint8_t)(acc >> bits);
                acc &= (1u << bits) - 1;
            }
        }
        assert_int_equal(o, TOKEN_RAW_BYTES);
        unsigned char std[64];
        int len = EVP_EncodeBlock(std, raw, TOKEN_RAW_BYTES);
        assert_int_equal(len, 44);
        assert_int_equal(std[43], '=');
        for (int i = 0; i < 43; i++) {
            char c = (char)std[i];
            if (c == '+')
                c = '-';
            else if (c == '/')
                c = '_';
            assert_int_equal(c, t[i]);
        }
    }
}

static int cmp_tok(const void *a, const void *b)
{
    return memcmp(a, b, TOKEN_STR_LEN + 1);
}

static void test_new_distinct(void **state)
{
    (void)state;
    enum { N = 1000 };
    char (*t)[TOKEN_STR_LEN + 1] = calloc(N, sizeof(*t));
    assert_non_null(t);
    for (int i = 0; i < N; i++)
        assert_int_equal(token_new(t[i]), 0);
    qsort(t, N, sizeof(*t), cmp_tok);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(t[i - 1], t[i]);
    free(t);
}

/* Every one of the 64 characters shows up in the first position over enough
 * draws, and the last position only takes values with the low 2 bits clear. */
static void test_new_alphabet_coverage(void **state)
{
    (void)state;
    int seen_first[128] = {0};
    int seen_last[128] = {0};
    for (int i = 0; i < 4000; i++) {
        char t[TOKEN_STR_LEN + 1];
        assert_int_equal(token_new(t), 0);
        seen_first[(unsigned char)t[0]] = 1;
        seen_last[(unsigned char)t[TOKEN_STR_LEN - 1]] = 1;
    }
    const char *all = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (const char *p = all; *p; p++)
        assert_true(seen_first[(unsigned char)*p]);
    for (int v = 0; v < 64; v++)
        assert_int_equal(seen_last[(unsigned char)all[v]], (v & 3) == 0);
}

static void test_syntax(void **state)
{
    (void)state;
    const char *good = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_int_equal(strlen(good), 43);
    assert_true(token_syntax_ok(good, 43));
    const char *good2 = "abcdefghijklmnopqrstuvwxyz0123456789-_ABCDE";
    assert_true(token_syntax_ok(good2, 43));
    /* wrong length */
    assert_false(token_syntax_ok(good, 42));
    assert_false(token_syntax_ok(good, 0));
    assert_false(token_syntax_ok("", 0));
    assert_false(token_syntax_ok(NULL, 43));
    char longer[45];
    memset(longer, 'A', 44);
    longer[44] = '\0';
    assert_false(token_syntax_ok(longer, 44));
    /* characters outside base64url, at the start, middle and end */
    const char bad[] = {'+', '/', '=', ' ', '.', '%', '\0', '\n', (char)0xc3, '~'};
    for (size_t i = 0; i < sizeof(bad); i++) {
        size_t pos[] = {0, 20, 42};
        for (size_t j = 0; j < 3; j++) {
            char t[TOKEN_STR_LEN + 1];
            memcpy(t, good, sizeof(t));
            t[pos[j]] = bad[i];
            assert_false(token_syntax_ok(t, TOKEN_STR_LEN));
        }
    }
    /* the last char may only carry 4 bits: 'B' (1), 'C' (2), 'D' (3) are
     * non-canonical, 'E' (4) is fine */
    char t[TOKEN_STR_LEN + 1];
    memcpy(t, good, sizeof(t));
    t[42] = 'B';
    assert_false(token_syntax_ok(t, 43));
    t[42] = 'D';
    assert_false(token_syntax_ok(t, 43));
    t[42] = '_';
    assert_false(token_syntax_ok(t, 43));
    t[42] = 'E';
    assert_true(token_syntax_ok(t, 43));
    t[42] = 'w'; /* 48 */
    assert_true(token_syntax_ok(t, 43));
}

static void test_hash_vectors(void **state)
{
    (void)state;
    uint8_t h[TOKEN_HASH_LEN];
    char hex[2 * TOKEN_HASH_LEN + 1];

    token_hash("abc", 3, h);
    token_hash_hex(h, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    token_hash("", 0, h);
    token_hash_hex(h, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

    /* only len bytes are hashed */
    token_hash("abcdef", 3, h);
    token_hash_hex(h, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    token_hash(m, strlen(m), h);
    token_hash_hex(h, hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_hash_equal(void **state)
{
    (void)state;
    uint8_t a[TOKEN_HASH_LEN], b[TOKEN_HASH_LEN];
    token_hash("abc", 3, a);
    token_hash("abc", 3, b);
    assert_true(token_hash_equal(a, b));
    token_hash("abd", 3, b);
    assert_false(token_hash_equal(a, b));
    /* a difference in the first or last byte alone is seen */
    memcpy(b, a, sizeof(b));
    b[0] ^= 1;
    assert_false(token_hash_equal(a, b));
    memcpy(b, a, sizeof(b));
    b[TOKEN_HASH_LEN - 1] ^= 0x80;
    assert_false(token_hash_equal(a, b));
}

static void test_hash_hex(void **state)
{
    (void)state;
    uint8_t h[TOKEN_HASH_LEN];
    char hex[2 * TOKEN_HASH_LEN + 1];
    for (size_t i = 0; i < TOKEN_HASH_LEN; i++)
        h[i] = (uint8_t)(i * 8 + 7);
    memset(hex, 'Z', sizeof(hex));
    token_hash_hex(h, hex);
    assert_int_equal(strlen(hex), 64);
    assert_string_equal(hex, "070f171f272f373f474f575f676f777f878f979fa7afb7bfc7cfd7dfe7eff7ff");
    memset(h, 0, sizeof(h));
    token_hash_hex(h, hex);
    assert_string_equal(hex, "0000000000000000000000000000000000000000000000000000000000000000");
}

static void test_random_bytes(void **state)
{
    (void)state;
    uint8_t a[64], b[64];
    memset(a, 0, sizeof(a));
    memset(b, 0, sizeof(b));
    assert_int_equal(random_bytes(a, sizeof(a)), 0);
    assert_int_equal(random_bytes(b, sizeof(b)), 0);
    assert_memory_not_equal(a, b, sizeof(a));
    assert_int_equal(random_bytes(a, 0), 0);
    /* a large request fills the whole buffer (no 0-run of 64 bytes at the end) */
    size_t n = 1 << 20;
    uint8_t *big = calloc(1, n);
    assert_non_null(big);
    assert_int_equal(random_bytes(big, n), 0);
    uint8_t zero[64] = {0};
    assert_memory_not_equal(big + n - 64, zero, 64);
    free(big);
}

static void test_random_below_bounds(void **state)
{
    (void)state;
    for (int i = 0; i < 100; i++)
        assert_int_equal(random_below(1), 0);
    uint32_t bounds[] = {2, 3, 7, 10, 1000, 65537, 0x80000001u, 0xfffffffeu, 0xffffffffu};
    for (size_t b = 0; b < sizeof(bounds) / sizeof(bounds[0]); b++)
        for (int i = 0; i < 2000; i++)
            assert_true(random_below(bounds[b]) < bounds[b]);
}

/* Uniformity: 120000 draws into 12 buckets; each bucket expects 10000 with a
 * standard deviation of about 96, so +-700 (over 7 sigma) never trips by chance. */
static void test_random_below_distribution(void **state)
{
    (void)state;
    enum { BUCKETS = 12, DRAWS = 120000 };
    unsigned count[BUCKETS] = {0};
    for (int i = 0; i < DRAWS; i++) {
        uint32_t r = random_below(BUCKETS);
        assert_true(r < BUCKETS);
        count[r]++;
    }
    for (int i = 0; i < BUCKETS; i++) {
        assert_in_range(count[i], 10000 - 700, 10000 + 700);
    }
    /* a bound just above 2^31 rejects almost half of all draws; the upper and
     * lower halves of its range must still come out evenly */
    uint32_t big = 0x80000001u;
    unsigned upper = 0;
    for (int i = 0; i < 20000; i++)
        if (random_below(big) >= big / 2)
            upper++;
    assert_in_range(upper, 10000 - 700, 10000 + 700);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_shape),
        cmocka_unit_test(test_new_matches_reference_encoding),
        cmocka_unit_test(test_new_distinct),
        cmocka_unit_test(test_new_alphabet_coverage),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_hash_vectors),
        cmocka_unit_test(test_hash_equal),
        cmocka_unit_test(test_hash_hex),
        cmocka_unit_test(test_random_bytes),
        cmocka_unit_test(test_random_below_bounds),
        cmocka_unit_test(test_random_below_distribution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
