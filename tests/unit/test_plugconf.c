/* Unit tests for src/slurm/plugconf.c: the plugin's arguments in plugstack.conf. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "plugconf.h"

static struct plugconf c;
static char err[512];

#define PARSE(...) ({ const char *argv_[] = {__VA_ARGS__}; \
    err[0] = '\0'; plugconf_parse((int)(sizeof(argv_) / sizeof(argv_[0])), (char *const *)argv_, &c, err, sizeof(err)); })

static void test_defaults_and_values(void **state)
{
    assert_int_equal(PARSE("gateway=https://login.example.org"), 0);
    assert_string_equal(c.gateway, "https://login.example.org");
    assert_string_equal(c.dir, PLUGCONF_DEFAULT_DIR);
    assert_string_equal(c.munge_socket, "");
    assert_string_equal(c.ca, "");

    assert_int_equal(PARSE("gateway=https://login:8443/", "dir=/var/lib/jobgate//",
                           "munge_socket=/run/munge/munge.socket.2", "ca=/etc/jobgate/ca.pem"), 0);
    assert_string_equal(c.gateway, "https://login:8443");
    assert_string_equal(c.dir, "/var/lib/jobgate");
    assert_string_equal(c.munge_socket, "/run/munge/munge.socket.2");
    assert_string_equal(c.ca, "/etc/jobgate/ca.pem");
}

static void test_errors_name_the_argument(void **state)
{
    assert_int_equal(PARSE("gateway=https://x", "bogus=1"), -EINVAL);
    assert_non_null(strstr(err, "unknown argument \"bogus\""));
    assert_non_null(strstr(err, "gateway="));      /* the known ones are listed */

    assert_int_equal(PARSE("dir=/x"), -EINVAL);
    assert_non_null(strstr(err, "gateway= is missing"));

    assert_int_equal(PARSE("gateway=http://login"), -EINVAL);
    assert_non_null(strstr(err, "gateway=http://login"));
    assert_int_equal(PARSE("gateway=https://"), -EINVAL);
    assert_non_null(strstr(err, "no host"));
    assert_int_equal(PARSE("gateway=https://login/path"), -EINVAL);
    assert_int_equal(PARSE("gateway=https://user@login"), -EINVAL);
    assert_int_equal(PARSE("gateway=https://lo gin"), -EINVAL);

    assert_int_equal(PARSE("gateway=https://x", "dir=relative"), -EINVAL);
    assert_non_null(strstr(err, "dir=relative"));
    assert_int_equal(PARSE("gateway=https://x", "ca="), -EINVAL);
    assert_non_null(strstr(err, "ca=: empty"));
    assert_int_equal(PARSE("gateway=https://x", "=1"), -EINVAL);
    assert_int_equal(PARSE("gateway=https://x", "munge_socket"), -EINVAL);
    assert_non_null(strstr(err, "not KEY=VALUE"));
}

static void test_long_values_are_refused(void **state)
{
    static char big[PLUGCONF_VALUE_MAX + 16];
    memcpy(big, "dir=/", 5);
    memset(big + 5, 'a', sizeof(big) - 6);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(PARSE("gateway=https://x", big), -EINVAL);
    assert_non_null(strstr(err, "longer than"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_values),
        cmocka_unit_test(test_errors_name_the_argument),
        cmocka_unit_test(test_long_values_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
