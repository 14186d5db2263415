/* Unit tests for hmap (and its SipHash-2-4). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include "hmap.h"

static void test_put_get_del(void **state)
{
    (void)state;
    struct hmap *m = hmap_new();
    int a = 1, b = 2, c = 3;

    assert_int_equal(hmap_count(m), 0);
    assert_null(hmap_get(m, "alpha", 5));
    assert_int_equal(hmap_put(m, "alpha", 5, &a), 0);
    assert_int_equal(hmap_put(m, "beta", 4, &b), 0);
    assert_int_equal(hmap_count(m), 2);
    assert_ptr_equal(hmap_get(m, "alpha", 5), &a);
    assert_ptr_equal(hmap_get(m, "beta", 4), &b);
    /* Prefixes and extensions of a key are other keys. */
    assert_null(hmap_get(m, "alph", 4));
    assert_null(hmap_get(m, "alphaa", 6));

    assert_ptr_equal(hmap_del(m, "alpha", 5), &a);
    assert_null(hmap_get(m, "alpha", 5));
    assert_null(hmap_del(m, "alpha", 5));
    assert_int_equal(hmap_count(m), 1);
    assert_ptr_equal(hmap_get(m, "beta", 4), &b);

    /* A removed key can be added again (into its tombstone). */
    assert_int_equal(hmap_put(m, "alpha", 5, &c), 0);
    assert_ptr_equal(hmap_get(m, "alpha", 5), &c);
    assert_int_equal(hmap_count(m), 2);
    hmap_free(m, NULL);
}

/* A map of counters: entries come at the first count and go at zero. */
static void test_tally(void **state)
{
    (void)state;
    struct hmap *m = hmap_new();
    assert_int_equal(hmap_tally(m, "10.0.0.1", 8, 0), 0);
    assert_int_equal(hmap_count(m), 0);
    assert_int_equal(hmap_tally(m, "10.0.0.1", 8, 1), 1);
    assert_int_equal(hmap_tally(m, "10.0.0.1", 8, 1), 2);
    assert_int_equal(hmap_tally(m, "10.0.0.2", 8, 5), 5);
    assert_int_equal(hmap_tally(m, "10.0.0.1", 8, 0), 2);
    assert_int_equal(hmap_count(m), 2);
    assert_int_equal(hmap_tally(m, "10.0.0.1", 8, -1), 1);
    assert_int_equal(hmap_tally(m, "10.0.0.1", 8, -1), 0);
    assert_int_equal(hmap_count(m), 1);
    /* Never below zero: a stray decrement leaves no entry behind. */
    assert_int_equal(hmap_tally(m, "10.0.0.1", 8, -1), 0);
    assert_int_equal(hmap_tally(m, "10.0.0.2", 8, -9), 0);
    assert_int_equal(hmap_count(m), 0);
    hmap_free(m, NULL);
}

static void test_keys_are_copied(void **state)
{
    (void)state;
    struct hmap *m = hmap_new();
    char key[8] = "route";
    int v = 7;
    assert_int_equal(hmap_put(m, key, 5, &v), 0);
    memcpy(key, "XXXXX", 5);
    assert_ptr_equal(hmap_get(m, "route", 5), &v);
    assert_null(hmap_get(m, "XXXXX", 5));
    hmap_free(m, NULL);
}

static void test_duplicate(void **state)
{
    (void)state;
    struct hmap *m = hmap_new();
    int a = 1, b = 2;
    assert_int_equal(hmap_put(m, "k", 1, &a), 0);
    assert_int_equal(hmap_put(m, "k", 1, &b), -EEXIST);
    /* Unchanged: the first value stays. */
    assert_ptr_equal(hmap_get(m, "k", 1), &a);
    assert_int_equal(hmap_count(m), 1);
    hmap_free(m, NULL);
}

static void test_binary_keys(void **state)
{
    (void)state;
    struct hmap *m = hmap_new();
    int v[5];
    static const char k0[] = {'a', '\0', 'b'};
    static const char k1[] = {'a', '\0', 'c'};
    static const char k2[] = {'a'};
    static const char k3[] = {'\0', '\0'};

    assert_int_equal(hmap_put(m, k0, sizeof(k0), &v[0]), 0);
    assert_int_equal(hmap_put(m, k1, sizeof(k1), &v[1]), 0);
    assert_int_equal(hmap_put(m, k2, sizeof(k2), &v[2]), 0);
    assert_int_equal(hmap_put(m, k3, sizeof(k3), &v[3]), 0);
    assert_int_equal(hmap_put(m, "", 0, &v[4]), 0); /* the empty key is a key too */
    assert_int_equal(hmap_count(m), 5);

    assert_ptr_equal(hmap_get(m, k0, sizeof(k0)), &v[0]);
    assert_ptr_equal(hmap_get(m, k1, sizeof(k1)), &v[1]);
    assert_ptr_equal(hmap_get(m, k2, sizeof(k2)), &v[2]);
    assert_ptr_equal(hmap_get(m, k3, sizeof(k3)), &v[3]);
    assert_ptr_equal(hmap_get(m, "", 0), &v[4]);
    assert_null(hmap_get(m, k3, 1));
    assert_null(hmap_get(m, "a\0", 2));

    assert_ptr_equal(hmap_del(m, k0, sizeof(k0)), &v[0]);
    assert_null(hmap_get(m, k0, sizeof(k0)));
    assert_ptr_equal(hmap_get(m, k1, sizeof(k1)), &v[1]);
    hmap_free(m, NULL);
}

static void key_of(unsigned i, char *buf, size_t size, size_t *len)
{
    int n = snprintf(buf, size, "key-%u", i);
    assert_true(n > 0 && (size_t)n < size);
    *len = (size_t)n;
}

static void test_many_keys(void **state)
{
    (void)state;
    enum { N = 100000 };
    struct hmap *m = hmap_new();
    char buf[32];
    size_t len;

    for (unsigned i = 0; i < N; i++) {
        key_of(i, buf, sizeof(buf), &len);
        unsigned *v = malloc(sizeof(*v));
        assert_non_null(v);
        *v = i;
        assert_int_equal(hmap_put(m, buf, len, v), 0);
    }
    assert_int_equal(hmap_count(m), N);
    for (unsigned i = 0; i < N; i++) {
        key_of(i, buf, sizeof(buf), &len);
        unsigned *v = hmap_get(m, buf, len);
        assert_non_null(v);
        assert_int_equal(*v, i);
    }
    key_of(N, buf, sizeof(buf), &len);
    assert_null(hmap_get(m, buf, len));

    /* Delete all but every tenth (shrinking the table), then check again. */
    for (unsigned i = 0; i < N; i++) {
        if (i % 10 == 0)
            continue;
        key_of(i, buf, sizeof(buf), &len);
        unsigned *v = hmap_del(m, buf, len);
        assert_non_null(v);
        assert_int_equal(*v, i);
        free(v);
    }
    assert_int_equal(hmap_count(m), N / 10);
    for (unsigned i = 0; i < N; i++) {
        key_of(i, buf, sizeof(buf), &len);
        unsigned *v = hmap_get(m, buf, len);
        if (i % 10 == 0) {
            assert_non_null(v);
            assert_int_equal(*v, i);
        } else {
            assert_null(v);
        }
    }
    hmap_free(m, free); /* frees the remaining values; ASan checks for leaks */
}

/* Many insert/delete cycles at a steady size must not fill the table with
 * tombstones (a probe would then never meet an empty slot). */
static void test_churn(void **state)
{
    (void)state;
    struct hmap *m = hmap_new();
    char buf[32];
    size_t len;
    int v = 0;
    for (unsigned i = 0; i < 50000; i++) {
        key_of(i, buf, sizeof(buf), &len);
        assert_int_equal(hmap_put(m, buf, len, &v), 0);
        if (i >= 5) {
            key_of(i - 5, buf, sizeof(buf), &len);
            assert_ptr_equal(hmap_del(m, buf, len), &v);
        }
    }
    assert_int_equal(hmap_count(m), 5);
    key_of(49999, buf, sizeof(buf), &len);
    assert_ptr_equal(hmap_get(m, buf, len), &v);
    key_of(7, buf, sizeof(buf), &len);
    assert_null(hmap_get(m, buf, len));
    hmap_free(m, NULL);
}

struct filter_state {
    struct hmap *m;
    unsigned seen[1000];
    unsigned calls;
};

static int drop_odd(const void *key, size_t klen, void *val, void *arg)
{
    struct filter_state *fs = arg;
    unsigned *v = val;
    char buf[32];
    size_t len;
    key_of(*v, buf, sizeof(buf), &len);
    /* The callback sees the entry's own key, and may look others up. */
    assert_int_equal(klen, len);
    assert_memory_equal(key, buf, len);
    assert_ptr_equal(hmap_get(fs->m, key, klen), v);
    fs->seen[*v]++;
    fs->calls++;
    if (*v % 2) {
        free(v); /* allowed: the map removes the entry without touching the value */
        return 1;
    }
    return 0;
}

static void test_filter_half(void **state)
{
    (void)state;
    struct filter_state *fs = calloc(1, sizeof(*fs));
    assert_non_null(fs);
    fs->m = hmap_new();
    char buf[32];
    size_t len;
    for (unsigned i = 0; i < 1000; i++) {
        unsigned *v = malloc(sizeof(*v));
        assert_non_null(v);
        *v = i;
        key_of(i, buf, sizeof(buf), &len);
        assert_int_equal(hmap_put(fs->m, buf, len, v), 0);
    }
    hmap_filter(fs->m, drop_odd, fs);
    assert_int_equal(fs->calls, 1000);
    for (unsigned i = 0; i < 1000; i++)
        assert_int_equal(fs->seen[i], 1); /* each entry exactly once */
    assert_int_equal(hmap_count(fs->m), 500);
    for (unsigned i = 0; i < 1000; i++) {
        key_of(i, buf, sizeof(buf), &len);
        unsigned *v = hmap_get(fs->m, buf, len);
        if (i % 2) {
            assert_null(v);
        } else {
            assert_non_null(v);
            assert_int_equal(*v, i);
        }
    }
    /* The map stays fully usable after a filter. */
    unsigned *v = malloc(sizeof(*v));
    assert_non_null(v);
    *v = 1;
    key_of(1, buf, sizeof(buf), &len);
    assert_int_equal(hmap_put(fs->m, buf, len, v), 0);
    assert_int_equal(hmap_count(fs->m), 501);
    hmap_free(fs->m, free);
    free(fs);
}

static int drop_all(const void *key, size_t klen, void *val, void *arg)
{
    (void)key;
    (void)klen;
    (void)val;
    (*(unsigned *)arg)++;
    return 1;
}

static void test_filter_all_then_reuse(void **state)
{
    (void)state;
    struct hmap *m = hmap_new();
    char buf[32];
    size_t len;
    int v = 0;
    unsigned calls = 0;
    for (unsigned i = 0; i < 5000; i++) {
        key_of(i, buf, sizeof(buf), &len);
        assert_int_equal(hmap_put(m, buf, len, &v), 0);
    }
    hmap_filter(m, drop_all, &calls);
    assert_int_equal(calls, 5000);
    assert_int_equal(hmap_count(m), 0);
    key_of(42, buf, sizeof(buf), &len);
    assert_null(hmap_get(m, buf, len));
    assert_int_equal(hmap_put(m, buf, len, &v), 0);
    assert_ptr_equal(hmap_get(m, buf, len), &v);
    calls = 0;
    hmap_filter(m, drop_all, &calls);
    assert_int_equal(calls, 1);
    hmap_free(m, NULL);
}

static int free_count;
static void count_free(void *p)
{
    (void)p;
    free_count++;
}

static void test_free_callback(void **state)
{
    (void)state;
    struct hmap *m = hmap_new();
    int v[3];
    assert_int_equal(hmap_put(m, "a", 1, &v[0]), 0);
    assert_int_equal(hmap_put(m, "b", 1, &v[1]), 0);
    assert_int_equal(hmap_put(m, "c", 1, &v[2]), 0);
    assert_ptr_equal(hmap_del(m, "b", 1), &v[1]);
    free_count = 0;
    hmap_free(m, count_free);
    assert_int_equal(free_count, 2); /* live entries only */
    hmap_free(NULL, NULL);
}

/* Reference vectors: key 00..0f, message 00..(len-1) (SipHash paper, appendix A,
 * and the reference implementation's vectors.h). */
static void test_siphash_vectors(void **state)
{
    (void)state;
    uint8_t key[16], msg[64];
    for (unsigned i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)i;
    for (unsigned i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)i;
    assert_true(siphash24(key, msg, 15) == UINT64_C(0xa129ca6149be45e5));
    assert_true(siphash24(key, msg, 0) == UINT64_C(0x726fdb47dd0e0e31));
    assert_true(siphash24(key, NULL, 0) == UINT64_C(0x726fdb47dd0e0e31));
    assert_true(siphash24(key, msg, 1) == UINT64_C(0x74f839c593dc67fd));
    assert_true(siphash24(key, msg, 2) == UINT64_C(0x0d6c8009d9a94f5a));
    assert_true(siphash24(key, msg, 3) == UINT64_C(0x85676696d7fb7e2d));
    assert_true(siphash24(key, msg, 4) == UINT64_C(0xcf2794e0277187b7));
    assert_true(siphash24(key, msg, 8) == UINT64_C(0x93f5f5799a932462));
}

/* Every length 0..200 (every tail length, several blocks) against OpenSSL's
 * own SipHash-2-4 MAC, with a key and message that are not counting bytes. */
static void test_siphash_vs_openssl(void **state)
{
    (void)state;
    uint8_t key[16], msg[200];
    for (unsigned i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(i * 37 + 11);
    for (unsigned i = 0; i < sizeof(msg); i++)
        msg[i] = (uint8_t)(i * 7 + 3);

    EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
    assert_non_null(mac);
    size_t outlen = 8;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &outlen),
                           OSSL_PARAM_construct_end()};
    for (size_t len = 0; len <= sizeof(msg); len++) {
        EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
        assert_non_null(ctx);
        uint8_t out[8];
        size_t n = 0;
        assert_int_equal(EVP_MAC_init(ctx, key, sizeof(key), params), 1);
        assert_int_equal(EVP_MAC_update(ctx, msg, len), 1);
        assert_int_equal(EVP_MAC_final(ctx, out, &n, sizeof(out)), 1);
        assert_int_equal(n, 8);
        uint64_t want = 0;
        for (int i = 7; i >= 0; i--)
            want = want << 8 | out[i]; /* OpenSSL prints the tag little-endian */
        assert_true(siphash24(key, msg, len) == want);
        EVP_MAC_CTX_free(ctx);
    }
    EVP_MAC_free(mac);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_del),
        cmocka_unit_test(test_tally),
        cmocka_unit_test(test_keys_are_copied),
        cmocka_unit_test(test_duplicate),
        cmocka_unit_test(test_binary_keys),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_churn),
        cmocka_unit_test(test_filter_half),
        cmocka_unit_test(test_filter_all_then_reuse),
        cmocka_unit_test(test_free_callback),
        cmocka_unit_test(test_siphash_vectors),
        cmocka_unit_test(test_siphash_vs_openssl),
    };
    return cmocka_run_group_tests_name("hmap", tests, NULL, NULL);
}
