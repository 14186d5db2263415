/* Unit tests for src/gateway/gridmap.c: the grid-mapfile's lines (quoted
 * subjects, escapes, comments), its errors with line numbers, lookups all
 * or nothing (unmapped, mapped twice, several users), and reading the file
 * again when it changes, failing closed when the change breaks it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gridmap.h"

static void expect_error(const char *text, const char *want)
{
    char err[256];
    assert_int_equal(gridmap_parse_check(text, strlen(text), err, sizeof(err)), -EINVAL);
    if (!strstr(err, want))
        fail_msg("error '%s' does not say '%s'", err, want);
}

static void test_lines(void **state)
{
    (void)state;
    char err[256];
    const char *ok = "# site users\n"
                     "\n"
                     "\"/C=US/O=Example/CN=Alice Smith\" alice\n"
                     "  \"/O=Example/CN=Bob \\\"B\\\" Jones\"\tbob  \r\n"
                     "\"/O=Example/CN=Shared\" carol,dave\n";
    assert_int_equal(gridmap_parse_check(ok, strlen(ok), err, sizeof(err)), 3);
    assert_int_equal(gridmap_parse_check("", 0, err, sizeof(err)), 0);
    expect_error("\"/CN=a\" alice\n/CN=b bob\n", "2: expected \"SUBJECT\" USER");
    expect_error("\"/CN=a alice\n", "1: the subject must be quoted");
    expect_error("\"CN=a\" alice\n", "1: the subject must be quoted and start with '/'");
    expect_error("\"/CN=a\"alice\n", "1: expected a user after the subject");
    expect_error("\"/CN=a\"\n", "1: expected a user");
    expect_error("# x\n\"/CN=a\" al ice\n", "2: the user must be a name");
    expect_error("\"/CN=a\" -rf\n", "1: a user name of 1..63 bytes");
    expect_error("\"/CN=a\" a\x01\n", "1: a control character");
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void test_lookup_and_reload(void **state)
{
    (void)state;
    char dir[] = "/tmp/jg-gridmap-XXXXXX", path[64], user[64], why[512], err[256];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/grid-mapfile", dir);
    write_file(path, "\"/O=Example/CN=Alice\" alice\n"
                     "\"/O=Example/CN=Twice\" one\n"
                     "\"/O=Example/CN=Twice\" two\n"
                     "\"/O=Example/CN=Shared\" carol,dave\n");
    struct gridmap *gm = gridmap_open(path, err, sizeof(err));
    assert_non_null(gm);
    assert_int_equal(gridmap_lookup(gm, "/O=Example/CN=Alice", user, sizeof(user), why,
                                    sizeof(why)), 0);
    assert_string_equal(user, "alice");
    assert_int_equal(gridmap_lookup(gm, "/O=Example/CN=alice", user, sizeof(user), why,
                                    sizeof(why)), -ENOENT); /* exact */
    assert_non_null(strstr(why, "is not in the grid-mapfile"));
    assert_int_equal(gridmap_lookup(gm, "/O=Example/CN=Twice", user, sizeof(user), why,
                                    sizeof(why)), -ENOTUNIQ);
    assert_int_equal(gridmap_lookup(gm, "/O=Example/CN=Shared", user, sizeof(user), why,
                                    sizeof(why)), -ENOTUNIQ);
    assert_non_null(strstr(why, "more than one user"));

    /* Changed: read again (a new file renamed over it, as editors do). */
    char tmp[80];
    snprintf(tmp, sizeof(tmp), "%s/new", dir);
    write_file(tmp, "\"/O=Example/CN=Alice\" alice2\n");
    assert_int_equal(rename(tmp, path), 0);
    assert_int_equal(gridmap_lookup(gm, "/O=Example/CN=Alice", user, sizeof(user), why,
                                    sizeof(why)), 0);
    assert_string_equal(user, "alice2");
    /* Broken: nobody is mapped until it is fixed, and the reason names the line. */
    write_file(tmp, "\"/O=Example/CN=Alice\" alice\nnonsense\n");
    assert_int_equal(rename(tmp, path), 0);
    assert_int_equal(gridmap_lookup(gm, "/O=Example/CN=Alice", user, sizeof(user), why,
                                    sizeof(why)), -EIO);
    assert_non_null(strstr(why, "grid-mapfile:2: expected"));
    write_file(tmp, "\"/O=Example/CN=Alice\" alice3\n");
    assert_int_equal(rename(tmp, path), 0);
    assert_int_equal(gridmap_lookup(gm, "/O=Example/CN=Alice", user, sizeof(user), why,
                                    sizeof(why)), 0);
    assert_string_equal(user, "alice3");
    /* Gone: refused too. */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(gridmap_lookup(gm, "/O=Example/CN=Alice", user, sizeof(user), why,
                                    sizeof(why)), -EIO);
    gridmap_free(gm);

    /* A malformed file stops the start, with the line. */
    write_file(path, "\"/O=Example/CN=Alice\" alice\n\"/O=x\" \n");
    assert_null(gridmap_open(path, err, sizeof(err)));
    assert_non_null(strstr(err, "grid-mapfile:2: expected a user"));
    assert_int_equal(unlink(path), 0);
    assert_null(gridmap_open(path, err, sizeof(err)));
    assert_non_null(strstr(err, "No such file"));
    assert_int_equal(rmdir(dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_lookup_and_reload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
