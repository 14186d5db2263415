/* Unit tests for util.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static void test_parse_uint(void **state)
{
    (void)state;
    uint64_t v = 0;
    assert_int_equal(parse_uint("0", 0, 10, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(parse_uint("42", 0, 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(parse_uint("007", 0, 100, &v), 0);
    assert_int_equal(v, 7);
    /* the bounds are inclusive */
    assert_int_equal(parse_uint("10", 10, 20, &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(parse_uint("20", 10, 20, &v), 0);
    assert_int_equal(v, 20);
    assert_int_equal(parse_uint("18446744073709551615", 0, UINT64_MAX, &v), 0);
    assert_true(v == UINT64_MAX);

    v = 99;
    assert_int_equal(parse_uint("9", 10, 20, &v), -ERANGE);
    assert_int_equal(parse_uint("21", 10, 20, &v), -ERANGE);
    assert_int_equal(parse_uint("18446744073709551616", 0, UINT64_MAX, &v), -ERANGE);
    assert_int_equal(parse_uint("99999999999999999999999999", 0, UINT64_MAX, &v), -ERANGE);
    assert_int_equal(v, 99); /* untouched on error */

    const char *bad[] = {"", " 1", "1 ", "-1", "+1", "1a", "0x10", "1.0", "1e3", "\xd9\xa1"};
    for (size_t i = 0; i < JG_ARRAY_LEN(bad); i++)
        assert_int_equal(parse_uint(bad[i], 0, UINT64_MAX, &v), -EINVAL);
    assert_int_equal(parse_uint(NULL, 0, 10, &v), -EINVAL);
    assert_int_equal(v, 99);
}

static void test_parse_duration(void **state)
{
    (void)state;
    struct {
        const char *in;
        int64_t secs;
    } good[] = {
        {"0", 0},          {"90", 90},         {"30s", 30},        {"10m", 600},
        {"12h", 43200},    {"7d", 604800},     {"1d", 86400},      {"0s", 0},
        {"0d", 0},         {"0010m", 600},     {"3660d", 3660LL * 86400},
        {"316224000", 316224000}, /* 10 years of 366 days, the cap */
        {"316224000s", 316224000},
    };
    for (size_t i = 0; i < JG_ARRAY_LEN(good); i++) {
        int64_t s = -1;
        assert_int_equal(parse_duration(good[i].in, &s), 0);
        assert_int_equal(s, good[i].secs);
    }

    int64_t s = 123;
    const char *bad[] = {"", "s", "m", "1w", "1ms", "-1", "+1", "1.5h", " 1", "1 ", "10 m",
                         "1S", "1H", "1dd", "h1", "0x1", "ten", "99999999999999999999999"};
    for (size_t i = 0; i < JG_ARRAY_LEN(bad); i++) {
        int r = parse_duration(bad[i], &s);
        if (r == 0)
            print_error("'%s' parsed\n", bad[i]);
        int overflow = strcmp(bad[i], "99999999999999999999999") == 0;
        assert_int_equal(r, overflow ? -ERANGE : -EINVAL);
    }
    assert_int_equal(parse_duration(NULL, &s), -EINVAL);
    /* a string longer than any valid duration */
    assert_int_equal(parse_duration("000000000000000000000000001", &s), -EINVAL);

    /* beyond 10 years is a range error, with or without a unit */
    assert_int_equal(parse_duration("316224001", &s), -ERANGE);
    assert_int_equal(parse_duration("3661d", &s), -ERANGE);
    assert_int_equal(parse_duration("87841h", &s), -ERANGE);
    assert_int_equal(parse_duration("5270401m", &s), -ERANGE);
    assert_int_equal(parse_duration("18446744073709551615d", &s), -ERANGE);
    assert_int_equal(s, 123);
}

static void test_xsnprintf(void **state)
{
    (void)state;
    char buf[8];
    assert_int_equal(xsnprintf(buf, sizeof(buf), "%s", "abc"), 0);
    assert_string_equal(buf, "abc");
    /* 7 chars + NUL fit exactly */
    assert_int_equal(xsnprintf(buf, sizeof(buf), "%d", 1234567), 0);
    assert_string_equal(buf, "1234567");
    /* 8 do not: cut but terminated */
    assert_int_equal(xsnprintf(buf, sizeof(buf), "%d", 12345678), -ENAMETOOLONG);
    assert_string_equal(buf, "1234567");
    assert_int_equal(xsnprintf(buf, sizeof(buf), "%s/%s", "abcd", "efgh"), -ENAMETOOLONG);
    assert_string_equal(buf, "abcd/ef");
    assert_int_equal(xsnprintf(buf, sizeof(buf), "%s", ""), 0);
    assert_string_equal(buf, "");
    char one[1] = {'x'};
    assert_int_equal(xsnprintf(one, sizeof(one), "%s", ""), 0);
    assert_int_equal(one[0], '\0');
    assert_int_equal(xsnprintf(one, sizeof(one), "%c", 'a'), -ENAMETOOLONG);
    assert_int_equal(one[0], '\0');
}

static void test_strings(void **state)
{
    (void)state;
    char *s = xstrdup("hello");
    assert_string_equal(s, "hello");
    free(s);
    s = xstrndup("hello", 3);
    assert_string_equal(s, "hel");
    free(s);
    s = xstrndup("hi", 10);
    assert_string_equal(s, "hi");
    free(s);
    s = xstrdup("");
    assert_string_equal(s, "");
    free(s);
    unsigned *z = xcalloc(16, sizeof(unsigned));
    for (int i = 0; i < 16; i++)
        assert_int_equal(z[i], 0);
    z = xrealloc(z, 1024 * sizeof(unsigned));
    z[1023] = 7;
    assert_int_equal(z[0], 0);
    free(z);
    void *p = xmalloc(0); /* never NULL */
    assert_non_null(p);
    free(p);
}

static void test_clocks(void **state)
{
    (void)state;
    int64_t a = now_mono_ms();
    int64_t b = now_mono_ms();
    assert_true(b >= a);
    assert_true(now_real() > 1600000000); /* after 2020 */
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void test_mkdir_p(void **state)
{
    (void)state;
    char root[] = "/tmp/jg_test_util_XXXXXX";
    assert_non_null(mkdtemp(root));
    char a[128], ab[128], abc[128], file[128], under_file[128];
    snprintf(a, sizeof(a), "%s/a", root);
    snprintf(ab, sizeof(ab), "%s/a/b", root);
    snprintf(abc, sizeof(abc), "%s/a/b/c", root);
    snprintf(file, sizeof(file), "%s/file", root);
    snprintf(under_file, sizeof(under_file), "%s/file/sub", root);

    /* creates every missing level, with the mode asked for (umask aside) */
    mode_t old = umask(0);
    assert_int_equal(mkdir_p(abc, 0700), 0);
    umask(old);
    assert_true(is_dir(a));
    assert_true(is_dir(ab));
    assert_true(is_dir(abc));
    struct stat st;
    assert_int_equal(stat(abc, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    /* existing directories are fine, also with a trailing slash */
    assert_int_equal(mkdir_p(abc, 0700), 0);
    assert_int_equal(mkdir_p(root, 0700), 0);
    char slash[130];
    snprintf(slash, sizeof(slash), "%s/", ab);
    assert_int_equal(mkdir_p(slash, 0700), 0);
    assert_int_equal(mkdir_p("/", 0700), 0);

    /* a file in the way */
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(mkdir_p(file, 0700), -ENOTDIR);
    assert_int_equal(mkdir_p(under_file, 0700), -ENOTDIR);

    /* too long, and empty */
    char *lng = malloc(5000);
    assert_non_null(lng);
    memset(lng, 'x', 4999);
    lng[0] = '/';
    lng[4999] = '\0';
    assert_int_equal(mkdir_p(lng, 0700), -ENAMETOOLONG);
    free(lng);
    assert_int_equal(mkdir_p("", 0700), -ENAMETOOLONG);

    /* no permission (unless running as root, who may write anywhere) */
    if (geteuid() != 0) {
        char ro[128], ro_sub[160];
        snprintf(ro, sizeof(ro), "%s/ro", root);
        snprintf(ro_sub, sizeof(ro_sub), "%s/ro/x/y", root);
        assert_int_equal(mkdir(ro, 0500), 0);
        assert_int_equal(mkdir_p(ro_sub, 0700), -EACCES);
        assert_int_equal(rmdir(ro), 0);
    }

    assert_int_equal(unlink(file), 0);
    assert_int_equal(rmdir(abc), 0);
    assert_int_equal(rmdir(ab), 0);
    assert_int_equal(rmdir(a), 0);
    assert_int_equal(rmdir(root), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_uint),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_xsnprintf),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_mkdir_p),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
