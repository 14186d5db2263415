/* Unit tests for src/lib/app.c: the app-name and link-lifetime rules that the
 * CLI, the agent, the control socket and the tunnel share. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "app.h"

static void test_names(void **state)
{
    char max[APP_NAME_MAX + 2];
    memset(max, 'a', sizeof(max));
    max[APP_NAME_MAX] = '\0';
    assert_true(app_name_valid("jupyter", APP_NAME_MAX));
    assert_true(app_name_valid("A.b_c-9", APP_NAME_MAX));
    assert_true(app_name_valid(max, APP_NAME_MAX));
    max[APP_NAME_MAX] = 'a';
    max[APP_NAME_MAX + 1] = '\0';
    assert_false(app_name_valid(max, APP_NAME_MAX));
    assert_false(app_name_valid("", APP_NAME_MAX));
    assert_false(app_name_valid(NULL, APP_NAME_MAX));
    static const char *bad[] = {"a b", "a/b", "a:b", "ü", "a\n", "-x;rm"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(app_name_valid(bad[i], APP_NAME_MAX));
    assert_false(app_name_valid("abcd", 3));
}

static void test_ttl(void **state)
{
    int64_t ttl;
    json_t *req = json_object();
    assert_int_equal(app_json_ttl(req, 600, &ttl), 0);
    assert_int_equal(ttl, 600);
    json_object_set_new(req, "ttl", json_integer(APP_LINK_TTL_MAX));
    assert_int_equal(app_json_ttl(req, 600, &ttl), 0);
    assert_int_equal(ttl, APP_LINK_TTL_MAX);
    json_object_set_new(req, "ttl", json_integer(APP_LINK_TTL_MAX + 1));
    assert_int_equal(app_json_ttl(req, 600, &ttl), -EINVAL);
    json_object_set_new(req, "ttl", json_integer(0));
    assert_int_equal(app_json_ttl(req, 600, &ttl), -EINVAL);
    json_object_set_new(req, "ttl", json_string("60"));
    assert_int_equal(app_json_ttl(req, 600, &ttl), -EINVAL);
    json_decref(req);
    assert_true(app_link_ttl_valid(1));
    assert_false(app_link_ttl_valid(-5));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_ttl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
