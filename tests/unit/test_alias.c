/* Unit tests for alias (three-word app names).
 *
 * This program defines random_below() and random_bytes() itself, so the
 * linker takes them from here instead of libjg's token.o (nothing else this
 * program links needs token.o). By default they draw from getrandom(); a test
 * can script them to force collisions with the route table, which a real
 * CSPRNG would practically never produce. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "alias.h"
#include "route.h"
#include "token.h"

/* From the generated wordlist.c. */
extern const char *const alias_words[];
extern const size_t alias_nwords;

/* ---- RNG stand-ins ---------------------------------------------------------- */

static const uint32_t *script;     /* scripted random_below results, or NULL */
static size_t script_len, script_pos;
static uint8_t bytes_seed;          /* scripted random_bytes: seed, seed+1, ... */
static int bytes_scripted;
static uint32_t last_bound;
static unsigned below_calls, bytes_calls;

static void real_random(void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0)
            fail_msg("getrandom failed");
        p += r;
        n -= (size_t)r;
    }
}

uint32_t random_below(uint32_t bound)
{
    below_calls++;
    last_bound = bound;
    if (script) {
        if (script_pos >= script_len)
            fail_msg("alias_new drew more words than scripted");
        uint32_t v = script[script_pos++];
        assert_true(v < bound);
        return v;
    }
    uint32_t lim = UINT32_MAX - UINT32_MAX % bound, v;
    do
        real_random(&v, sizeof(v));
    while (v >= lim);
    return v % bound;
}

int random_bytes(void *buf, size_t n)
{
    bytes_calls++;
    if (bytes_scripted) {
        uint8_t *p = buf;
        for (size_t i = 0; i < n; i++)
            p[i] = (uint8_t)(bytes_seed + i);
        bytes_seed++;
        return 0;
    }
    real_random(buf, n);
    return 0;
}

static void use_script(const uint32_t *s, size_t n)
{
    script = s;
    script_len = n;
    script_pos = 0;
}

static int reset(void **state)
{
    (void)state;
    script = NULL;
    script_len = script_pos = 0;
    bytes_scripted = 0;
    bytes_seed = 0;
    last_bound = 0;
    below_calls = bytes_calls = 0;
    return 0;
}

/* ---- helpers -------------------------------------------------------------------- */

static struct route mk(const char *alias)
{
    struct route r;
    memset(&r, 0, sizeof(r));
    assert_true(strlen(alias) < sizeof(r.alias));
    memcpy(r.alias, alias, strlen(alias) + 1);
    memcpy(r.name, "lab", sizeof("lab"));
    r.uid = 1000;
    r.kind = ROUTE_TCP;
    r.port = 8888;
    return r;
}

static void add(struct route_table *t, const char *alias)
{
    struct route r = mk(alias);
    assert_int_equal(route_add(t, &r), 0);
}

static int is_word(const char *w, size_t n)
{
    for (size_t i = 0; i < alias_nwords; i++)
        if (strlen(alias_words[i]) == n && memcmp(alias_words[i], w, n) == 0)
            return 1;
    return 0;
}

/* word-word-word, each [a-z]+ and from the list. */
static void assert_three_words(const char *a)
{
    const char *p = a;
    for (int k = 0; k < 3; k++) {
        const char *s = p;
        while (*p >= 'a' && *p <= 'z')
            p++;
        if (p == s || !is_word(s, (size_t)(p - s)))
            fail_msg("alias '%s': part %d is not a word of the list", a, k);
        if (k < 2) {
            if (*p != '-')
                fail_msg("alias '%s' is not word-word-word", a);
            p++;
        }
    }
    if (*p != '\0')
        fail_msg("alias '%s' has trailing bytes", a);
    assert_true(route_alias_valid(a, strlen(a)));
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static void three(char *out, size_t outlen, uint32_t a, uint32_t b, uint32_t c)
{
    snprintf(out, outlen, "%s-%s-%s", alias_words[a], alias_words[b], alias_words[c]);
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_word_list(void **state)
{
    (void)state;
    assert_true(alias_nwords >= 4096);
    for (size_t i = 0; i < alias_nwords; i++) {
        size_t n = strlen(alias_words[i]);
        assert_true(n >= 3 && n <= 12); /* three of them always fit one DNS label */
        for (size_t k = 0; k < n; k++)
            assert_true(alias_words[i][k] >= 'a' && alias_words[i][k] <= 'z');
    }
}

static void test_format_and_spread(void **state)
{
    (void)state;
    enum { N = 1000 };
    static char buf[N][64];
    static const char *ptr[N];
    struct route_table *t = route_table_new();
    for (int i = 0; i < N; i++) {
        assert_int_equal(alias_new(t, buf[i], sizeof(buf[i])), 0);
        assert_three_words(buf[i]);
        ptr[i] = buf[i];
    }
    /* the whole list is used, not a slice of it */
    assert_int_equal(last_bound, (uint32_t)alias_nwords);

    qsort(ptr, N, sizeof(ptr[0]), cmp_str);
    int distinct = 1;
    for (int i = 1; i < N; i++)
        distinct += strcmp(ptr[i - 1], ptr[i]) != 0;
    assert_true(distinct >= N - 2); /* ~38 bits each: a repeat is a one-in-a-million event */

    /* First words vary widely (about 1000 draws from ~7000 words). */
    qsort(ptr, N, sizeof(ptr[0]), cmp_str);
    int firsts = 1;
    for (int i = 1; i < N; i++) {
        size_t a = strcspn(ptr[i - 1], "-"), b = strcspn(ptr[i], "-");
        firsts += a != b || memcmp(ptr[i - 1], ptr[i], a) != 0;
    }
    assert_true(firsts > 800);
    route_table_free(t);
}

static void test_never_taken_in_full_table(void **state)
{
    (void)state;
    enum { N = 5000 };
    struct route_table *t = route_table_new();
    char a[64];
    for (int i = 0; i < N; i++) {
        assert_int_equal(alias_new(t, a, sizeof(a)), 0);
        assert_null(route_find(t, a, strlen(a)));
        add(t, a); /* would be -EEXIST if alias_new returned a live alias */
    }
    assert_int_equal(route_count(t), N);
    route_table_free(t);
}

static void test_collision_retries(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    char taken[64], want[64], a[64];
    three(taken, sizeof(taken), 0, 1, 2);
    add(t, taken);
    three(want, sizeof(want), 3, 4, 5);

    static const uint32_t s[] = {0, 1, 2, 3, 4, 5};
    use_script(s, 6);
    assert_int_equal(alias_new(t, a, sizeof(a)), 0);
    assert_string_equal(a, want);
    assert_int_equal(script_pos, 6);
    assert_int_equal(last_bound, (uint32_t)alias_nwords);
    route_table_free(t);
}

static void test_crowded_falls_back(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    char taken[64], a[64];
    three(taken, sizeof(taken), 7, 7, 7);
    add(t, taken);

    static uint32_t sevens[24];
    for (size_t i = 0; i < 24; i++)
        sevens[i] = 7;
    use_script(sevens, 24);
    bytes_scripted = 1;
    bytes_seed = 0;
    assert_int_equal(alias_new(t, a, sizeof(a)), 0);
    assert_int_equal(script_pos, 24); /* eight word attempts first */
    /* "app-" and 12 base32 characters (bytes 0..11 map to a..l) */
    assert_string_equal(a, "app-abcdefghijkl");
    assert_true(route_alias_valid(a, strlen(a)));

    /* The fallback is checked against the table too. */
    add(t, "app-abcdefghijkl");
    use_script(sevens, 24);
    bytes_seed = 0;
    assert_int_equal(alias_new(t, a, sizeof(a)), 0);
    assert_string_equal(a, "app-bcdefghijklm");
    assert_null(route_find(t, a, strlen(a)));

    /* base32 alphabet: byte values 26..31 map to digits 2..7, high bits ignored */
    route_table_free(t);
    t = route_table_new();
    add(t, taken);
    use_script(sevens, 24);
    bytes_seed = 250; /* 250..255, 0..5: & 31 -> 26..31, 0..5 */
    assert_int_equal(alias_new(t, a, sizeof(a)), 0);
    assert_string_equal(a, "app-234567abcdef");
    route_table_free(t);
}

static void test_hopeless_table(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    char taken[64], a[64], n[64];
    three(taken, sizeof(taken), 7, 7, 7);
    add(t, taken);
    /* Scripted bytes: call k gives bytes k..k+11, so fallback k is this name. */
    for (int k = 0; k < 8; k++) {
        char tail[13];
        for (int i = 0; i < 12; i++)
            tail[i] = "abcdefghijklmnopqrstuvwxyz234567"[(k + i) & 31];
        tail[12] = '\0';
        snprintf(n, sizeof(n), "app-%s", tail);
        add(t, n);
    }
    static uint32_t sevens[24];
    for (size_t i = 0; i < 24; i++)
        sevens[i] = 7;
    use_script(sevens, 24);
    bytes_scripted = 1;
    bytes_seed = 0;
    memset(a, 'Z', sizeof(a));
    assert_int_equal(alias_new(t, a, sizeof(a)), -EEXIST);
    assert_int_equal(bytes_calls, 8); /* bounded: gives up, never loops */
    route_table_free(t);
}

static void test_small_buffer(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    char a[8];
    assert_int_equal(alias_new(t, a, sizeof(a)), -ENAMETOOLONG);
    route_table_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_word_list, reset),
        cmocka_unit_test_setup(test_format_and_spread, reset),
        cmocka_unit_test_setup(test_never_taken_in_full_table, reset),
        cmocka_unit_test_setup(test_collision_retries, reset),
        cmocka_unit_test_setup(test_crowded_falls_back, reset),
        cmocka_unit_test_setup(test_hopeless_table, reset),
        cmocka_unit_test_setup(test_small_buffer, reset),
    };
    return cmocka_run_group_tests_name("alias", tests, NULL, NULL);
}
