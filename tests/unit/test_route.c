/* Unit tests for route (the live routing table). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "route.h"

static struct route mk(const char *alias, uid_t uid, uint16_t port)
{
    struct route r;
    memset(&r, 0, sizeof(r));
    assert_true(strlen(alias) < sizeof(r.alias));
    memcpy(r.alias, alias, strlen(alias) + 1);
    memcpy(r.name, "jupyter", sizeof("jupyter"));
    r.uid = uid;
    r.pid = 4242;
    r.kind = port ? ROUTE_TCP : ROUTE_UNIX;
    r.port = port;
    static const char sock[] = "/run/user/1000/jobgate/app.sock";
    if (!port)
        memcpy(r.path, sock, sizeof(sock));
    r.created = 1700000000;
    return r;
}

static void test_add_find_remove(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    struct route a = mk("brisk-otter-canal", 1000, 0);
    struct route b = mk("calm-heron-7", 1001, 8888);

    assert_int_equal(route_count(t), 0);
    assert_int_equal(route_add(t, &a), 0);
    assert_int_equal(route_add(t, &b), 0);
    assert_int_equal(route_count(t), 2);

    const struct route *f = route_find(t, "brisk-otter-canal", strlen("brisk-otter-canal"));
    assert_non_null(f);
    assert_string_equal(f->alias, "brisk-otter-canal");
    assert_string_equal(f->path, a.path);
    assert_int_equal(f->uid, 1000);
    assert_int_equal(f->kind, ROUTE_UNIX);
    f = route_find(t, "calm-heron-7", strlen("calm-heron-7"));
    assert_non_null(f);
    assert_int_equal(f->port, 8888);
    assert_int_equal(f->kind, ROUTE_TCP);
    assert_int_equal(f->uid, 1001);

    assert_null(route_find(t, "calm-heron", strlen("calm-heron")));
    assert_null(route_find(t, "", 0));
    assert_null(route_find(t, NULL, 0));

    assert_int_equal(route_remove(t, "brisk-otter-canal"), 0);
    assert_null(route_find(t, "brisk-otter-canal", strlen("brisk-otter-canal")));
    assert_int_equal(route_remove(t, "brisk-otter-canal"), -ENOENT);
    assert_int_equal(route_remove(t, "never-added"), -ENOENT);
    assert_int_equal(route_count(t), 1);
    assert_non_null(route_find(t, "calm-heron-7", strlen("calm-heron-7")));
    route_table_free(t);
    route_table_free(NULL);
}

static void test_add_copies(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    struct route a = mk("copy-me", 1000, 9000);
    assert_int_equal(route_add(t, &a), 0);
    /* Changing or reusing the caller's struct does not touch the table. */
    a.port = 1;
    a.uid = 0;
    memcpy(a.alias, "other", sizeof("other"));
    const struct route *f = route_find(t, "copy-me", 7);
    assert_non_null(f);
    assert_ptr_not_equal(f, &a);
    assert_int_equal(f->port, 9000);
    assert_int_equal(f->uid, 1000);
    assert_null(route_find(t, "other", 5));
    route_table_free(t);
}

static void test_duplicate(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    struct route a = mk("taken", 1000, 8000);
    struct route b = mk("taken", 2000, 9000);
    assert_int_equal(route_add(t, &a), 0);
    assert_int_equal(route_add(t, &b), -EEXIST);
    assert_int_equal(route_count(t), 1);
    /* The first owner keeps the alias. */
    const struct route *f = route_find(t, "taken", 5);
    assert_non_null(f);
    assert_int_equal(f->uid, 1000);
    assert_int_equal(f->port, 8000);
    route_table_free(t);
}

static void test_alias_valid(void **state)
{
    (void)state;
    char max[ROUTE_ALIAS_MAX + 2];
    memset(max, 'a', sizeof(max));

    assert_true(route_alias_valid("a", 1));
    assert_true(route_alias_valid("0", 1));
    assert_true(route_alias_valid("brisk-otter-canal", 17));
    assert_true(route_alias_valid("a--b", 4));
    assert_true(route_alias_valid("123-abc", 7));
    assert_true(route_alias_valid(max, ROUTE_ALIAS_MAX));

    assert_false(route_alias_valid(max, ROUTE_ALIAS_MAX + 1));
    assert_false(route_alias_valid("", 0));
    assert_false(route_alias_valid(NULL, 3));
    assert_false(route_alias_valid("-abc", 4));
    assert_false(route_alias_valid("abc-", 4));
    assert_false(route_alias_valid("-", 1));
    assert_false(route_alias_valid("Abc", 3));
    assert_false(route_alias_valid("a_b", 3));
    assert_false(route_alias_valid("a.b", 3));
    assert_false(route_alias_valid("a b", 3));
    assert_false(route_alias_valid("a/b", 3));
    assert_false(route_alias_valid("caf\xc3\xa9", 5));
    assert_false(route_alias_valid("ab\0c", 4)); /* a NUL inside the length */
    /* Only len bytes count: the rest of the buffer is ignored. */
    assert_true(route_alias_valid("abc.example.org", 3));
    assert_false(route_alias_valid("abc-.example", 4));
}

static void test_add_invalid(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    static const char *const bad[] = {"", "-lead", "trail-", "Upper", "dot.ted", "under_score",
                                      "sp ace"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct route r = mk(bad[i], 1000, 8000);
        assert_int_equal(route_add(t, &r), -EINVAL);
    }
    /* An alias that fills the field with no NUL is refused, not read past. */
    struct route r = mk("x", 1000, 8000);
    memset(r.alias, 'a', sizeof(r.alias));
    assert_int_equal(route_add(t, &r), -EINVAL);
    /* So is an unterminated path (it would be read past its end). */
    r = mk("good-alias", 1000, 0);
    memset(r.path, 'p', sizeof(r.path));
    assert_int_equal(route_add(t, &r), -EINVAL);
    assert_int_equal(route_count(t), 0);

    /* 63 characters is the longest label. */
    r = mk("x", 1000, 8000);
    memset(r.alias, 'b', ROUTE_ALIAS_MAX);
    r.alias[ROUTE_ALIAS_MAX] = '\0';
    assert_int_equal(route_add(t, &r), 0);
    assert_non_null(route_find(t, r.alias, ROUTE_ALIAS_MAX));
    route_table_free(t);
}

static void test_find_not_nul_terminated(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    struct route a = mk("brisk-otter-canal", 1000, 8080);
    assert_int_equal(route_add(t, &a), 0);

    /* As the request pipeline sees it: the label in front of the domain. */
    const char host[] = "brisk-otter-canal.apps.example.org:443";
    const struct route *f = route_find(t, host, strlen("brisk-otter-canal"));
    assert_non_null(f);
    assert_int_equal(f->port, 8080);

    /* A buffer with no NUL at all. */
    char raw[17];
    memcpy(raw, "brisk-otter-canal", sizeof(raw));
    assert_non_null(route_find(t, raw, sizeof(raw)));
    assert_null(route_find(t, raw, sizeof(raw) - 1));
    assert_null(route_find(t, host, strlen("brisk-otter-canal.")));
    /* Longer than any label: rejected without a lookup. */
    char big[200];
    memset(big, 'a', sizeof(big));
    assert_null(route_find(t, big, sizeof(big)));
    route_table_free(t);
}

static int drop_uid(const struct route *r, void *arg)
{
    unsigned *calls = arg;
    (*calls)++;
    return r->uid == 1000;
}

static void test_filter(void **state)
{
    (void)state;
    struct route_table *t = route_table_new();
    char alias[32];
    for (unsigned i = 0; i < 200; i++) {
        assert_true(snprintf(alias, sizeof(alias), "app-%u", i) > 0);
        struct route r = mk(alias, i % 2 ? 1000 : 1001, (uint16_t)(10000 + i));
        assert_int_equal(route_add(t, &r), 0);
    }
    unsigned calls = 0;
    route_filter(t, drop_uid, &calls);
    assert_int_equal(calls, 200);
    assert_int_equal(route_count(t), 100);
    for (unsigned i = 0; i < 200; i++) {
        assert_true(snprintf(alias, sizeof(alias), "app-%u", i) > 0);
        const struct route *f = route_find(t, alias, strlen(alias));
        if (i % 2) {
            assert_null(f);
        } else {
            assert_non_null(f);
            assert_int_equal(f->uid, 1001);
            assert_int_equal(f->port, 10000 + i);
        }
    }
    /* A removed alias is free again. */
    struct route r = mk("app-1", 1002, 7000);
    assert_int_equal(route_add(t, &r), 0);
    assert_int_equal(route_find(t, "app-1", 5)->uid, 1002);
    route_table_free(t); /* frees the remaining routes; ASan checks */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_find_remove),
        cmocka_unit_test(test_add_copies),
        cmocka_unit_test(test_duplicate),
        cmocka_unit_test(test_alias_valid),
        cmocka_unit_test(test_add_invalid),
        cmocka_unit_test(test_find_not_nul_terminated),
        cmocka_unit_test(test_filter),
    };
    return cmocka_run_group_tests_name("route", tests, NULL, NULL);
}
