/* Unit tests for src/agent/policy.c: the policy file, --policy, narrowing. */
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

#include "policy.h"

static int parse(struct policy_file *f, const char *text, char *err, size_t errlen)
{
    return policy_parse(f, "/etc/jobgate/policy", text, strlen(text), err, errlen);
}

static void test_parse_and_match(void **state)
{
    (void)state;
    struct policy_file f;
    char err[512] = "";
    const char *text = "# site policy\n"
                       "\".*\" keepalive(300), reconnect\n"
                       "\n"
                       "   \t# nodes behind a firewall\n"
                       "\"gw[0-9]+\\.example\\.org\" keepalive(60) reconnect poll(120) # polls\n"
                       "\"GW1.example.org\"  callback,poll(30)\r\n"
                       "\"forever.example.org\" keepalive\n";
    assert_int_equal(parse(&f, text, err, sizeof(err)), 0);
    assert_int_equal(f.n, 4);

    const struct policy_rule *r = policy_match(&f, "other.net");
    assert_non_null(r);
    assert_int_equal(r->line, 2);
    assert_int_equal(r->p.keepalive, 300);
    assert_int_equal(r->p.reconnect, 1);
    assert_int_equal(r->p.callback, 0);
    assert_int_equal(r->p.poll, 0);

    /* The last matching line wins; case does not matter. */
    r = policy_match(&f, "gw7.example.org");
    assert_int_equal(r->line, 5);
    assert_int_equal(r->p.keepalive, 60);
    assert_int_equal(r->p.poll, 120);
    r = policy_match(&f, "gw1.EXAMPLE.org");
    assert_int_equal(r->line, 6);
    assert_int_equal(r->p.keepalive, POLICY_FOREVER);
    assert_int_equal(r->p.reconnect, 0);
    assert_int_equal(r->p.callback, 1);
    assert_int_equal(r->p.poll, 30);
    r = policy_match(&f, "forever.example.org");
    assert_int_equal(r->line, 7);
    assert_int_equal(r->p.keepalive, POLICY_FOREVER);

    /* The expression matches the whole name, not a part of it. */
    r = policy_match(&f, "gw7.example.org.evil.net");
    assert_int_equal(r->line, 2);
    r = policy_match(&f, "xgw7.example.org");
    assert_int_equal(r->line, 2);
    policy_file_free(&f);

    /* An expression may not close the anchors' group (it used to be taken, and
     * matched whole names only; refused now, so that no repeat can reach it). */
    assert_int_equal(parse(&f, "\"a)|(b\" poll(5)\n", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "a ')' has no '('"));

    /* An empty file, and one of comments only: no rule. */
    assert_int_equal(parse(&f, "", err, sizeof(err)), 0);
    assert_null(policy_match(&f, "a"));
    policy_file_free(&f);
    assert_int_equal(parse(&f, "# nothing\n\n  \n", err, sizeof(err)), 0);
    assert_int_equal(f.n, 0);
    policy_file_free(&f);
}

static void expect_error(const char *text, const char *want)
{
    struct policy_file f;
    char err[512] = "";
    assert_int_equal(parse(&f, text, err, sizeof(err)), -EINVAL);
    if (!strstr(err, want))
        fail_msg("for %s: got '%s', want '%s'", text, err, want);
    assert_null(f.rules);
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_error("\".*\" keepalive(10)\n\".*\" sleep\n", "/etc/jobgate/policy:2: unknown option 'sleep'");
    expect_error("\".*\" keepalive(10\n", ":1: keepalive(SECONDS) needs a whole number");
    expect_error("\".*\" keepalive()\n", ":1: keepalive(SECONDS) needs");
    expect_error("\".*\" keepalive(0)\n", ":1: keepalive(0): seconds must be");
    expect_error("\".*\" keepalive(86401)\n", "keepalive(86401): seconds must be");
    expect_error("\".*\" keepalive(-5)\n", "keepalive(-5)");
    expect_error("\".*\" keepalive(1m)\n", "keepalive(1m)");
    expect_error("\".*\" poll\n", ":1: poll needs its interval");
    expect_error("\".*\" reconnect(5)\n", "reconnect takes no value");
    expect_error("\".*\" reconnect reconnect\n", "reconnect given twice");
    expect_error("\".*\" poll(5)x\n", "unexpected 'x' after poll");
    expect_error("\n\n\".*\n", ":3: the expression has no closing");
    expect_error("\"\" reconnect\n", "the expression must have 1 to");
    expect_error(".* reconnect\n", ":1: a line starts with \"REGEX\"");
    expect_error("\".*\"reconnect\n", "options follow the expression after a blank");
    expect_error("\".*\"\n", ":1: no options");
    expect_error("\".*\" # only a comment\n", ":1: no options");
    expect_error("\"(\" reconnect\n", ":1: \"(\":");
    expect_error("\".*\" reconnect\x01\n", ":1: a control character");
    /* Expressions that glibc's regcomp would blow up in memory (found by fuzzing). */
    expect_error("\"((((((((((((((x+)+)+)+)+)+)+)+)+)+)+)+)+)+)+\" reconnect\n",
                 ":1: the expression would take too much memory");
    expect_error("\"x++\" reconnect\n", ":1: a repeat ('*', '+', '?', '{...}') right after another one");
    expect_error("\"(ab)*****\" reconnect\n", "right after another one");
    expect_error("\"a{2}*\" reconnect\n", "right after another one");
    expect_error("\"((((a{16}b){16}b){16}b){16}b)\" reconnect\n", "too much memory");
    expect_error("\"((a{16}b){16}c){16}\" poll(30)\n", "too much memory");
    expect_error("\"a{9999}\" reconnect\n", "too much memory");
    expect_error("\"a+)+(b\" reconnect\n", ":1: a ')' has no '('");
    {
        struct policy_file f;
        char err[256];
        memset(&f, 0, sizeof(f));
        const char *ok = "\"(login|cn)[0-9]+\\.example\\.org\" reconnect\n"
                         "\"[a+*]+x{2,16}(ab)*\" poll(30)\n"
                         "\"(a+)+|((cn|gpu)[0-9]{1,4}\\.)+cluster\" keepalive(30)\n";
        assert_int_equal(policy_parse(&f, "p", ok, strlen(ok), err, sizeof(err)), 0);
        assert_int_equal(f.n, 3);
        policy_file_free(&f);
    }

    char big[POLICY_LINE_MAX + 16];
    memset(big, 'a', sizeof(big));
    big[0] = '"';
    big[sizeof(big) - 1] = '\0';
    expect_error(big, ":1: longer than 1024 bytes");

    char re[POLICY_RE_MAX + 32];
    memset(re, 'a', sizeof(re));
    re[0] = '"';
    (void)snprintf(re + POLICY_RE_MAX + 2, sizeof(re) - POLICY_RE_MAX - 2, "\" reconnect");
    expect_error(re, "the expression must have 1 to 255 bytes");

    size_t n = (POLICY_RULES_MAX + 1) * 12;
    char *many = malloc(n + 1);
    assert_non_null(many);
    many[0] = '\0';
    for (int i = 0; i <= POLICY_RULES_MAX; i++)
        strcat(many, "\"a\" poll(5)\n");
    expect_error(many, ":257: more than 256 rules");
    free(many);

    struct policy_file f;
    char err[256];
    char *huge = calloc(1, POLICY_FILE_MAX + 2);
    assert_non_null(huge);
    memset(huge, '\n', POLICY_FILE_MAX + 1);
    assert_int_equal(policy_parse(&f, "p", huge, POLICY_FILE_MAX + 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "p: larger than 64 KiB"));
    free(huge);
}

static void test_options_string(void **state)
{
    (void)state;
    struct policy p;
    char err[256];
    assert_int_equal(policy_parse_options("keepalive(60) poll(30)", &p, err, sizeof(err)), 0);
    assert_int_equal(p.keepalive, 60);
    assert_int_equal(p.poll, 30);
    assert_int_equal(p.reconnect, 0);
    assert_int_equal(p.callback, 0);
    assert_int_equal(policy_parse_options("Callback, RECONNECT", &p, err, sizeof(err)), 0);
    assert_int_equal(p.callback, 1);
    assert_int_equal(p.reconnect, 1);
    assert_int_equal(p.keepalive, POLICY_FOREVER);
    assert_int_equal(policy_parse_options("", &p, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "--policy: no options"));
    assert_int_equal(policy_parse_options("\".*\" poll(5)", &p, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "--policy: unknown option"));
    assert_int_equal(policy_parse_options("poll(5)\n", &p, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "control character"));
}

static void test_format(void **state)
{
    (void)state;
    char buf[128];
    struct policy d = POLICY_DEFAULT;
    policy_format(&d, buf, sizeof(buf));
    assert_string_equal(buf, "keepalive reconnect");
    struct policy p = {.keepalive = 60, .reconnect = 1, .callback = 1, .poll = 300};
    policy_format(&p, buf, sizeof(buf));
    assert_string_equal(buf, "keepalive(60) reconnect callback poll(300)");
    assert_true(policy_sleeps(&p));
    p.keepalive = POLICY_FOREVER;
    assert_false(policy_sleeps(&p));
    p = (struct policy){.keepalive = 60, .reconnect = 1};
    assert_false(policy_sleeps(&p)); /* keepalive without a way back: persistent */
}

static void test_resolve(void **state)
{
    (void)state;
    struct policy_result r;
    const char *S = "site /etc/jobgate/policy:2", *U = "user ~/.config/jobgate/policy:1";

    /* Nothing matches: persistent with reconnect. */
    policy_resolve(NULL, NULL, NULL, NULL, &r);
    assert_int_equal(r.p.keepalive, POLICY_FOREVER);
    assert_int_equal(r.p.reconnect, 1);
    assert_int_equal(r.p.callback, 0);
    assert_int_equal(r.p.poll, 0);
    assert_string_equal(r.from[PP_POLL], "default");

    /* Only one side: as it says. */
    struct policy site = {.keepalive = 300, .reconnect = 1, .callback = 1, .poll = 60};
    policy_resolve(&site, S, NULL, NULL, &r);
    assert_memory_equal(&r.p, &site, sizeof(site));
    assert_string_equal(r.from[PP_KEEPALIVE], S);
    struct policy user = {.keepalive = 10, .poll = 5};
    policy_resolve(NULL, NULL, &user, U, &r);
    assert_memory_equal(&r.p, &user, sizeof(user));
    assert_string_equal(r.from[PP_CALLBACK], U);

    /* Narrowing: shorter keepalive and longer poll are the user's; a more
     * frequent poll is raised to the site's; reconnect and callback drop. */
    user = (struct policy){.keepalive = 30, .poll = 120};
    policy_resolve(&site, S, &user, U, &r);
    assert_int_equal(r.p.keepalive, 30);
    assert_int_equal(r.p.poll, 120);
    assert_int_equal(r.p.reconnect, 0);
    assert_int_equal(r.p.callback, 0);
    assert_string_equal(r.from[PP_KEEPALIVE], U);
    assert_string_equal(r.from[PP_POLL], U);
    assert_string_equal(r.from[PP_RECONNECT], U);

    user = (struct policy){.keepalive = 600, .reconnect = 1, .poll = 10};
    policy_resolve(&site, S, &user, U, &r);
    assert_int_equal(r.p.keepalive, 300);
    assert_int_equal(r.p.poll, 60);
    assert_int_equal(r.p.reconnect, 1);
    assert_non_null(strstr(r.from[PP_KEEPALIVE], "keepalive(600) of user"));
    assert_non_null(strstr(r.from[PP_KEEPALIVE], "longer than the site's keepalive(300)"));
    assert_non_null(strstr(r.from[PP_POLL], "poll(10) of user"));
    assert_non_null(strstr(r.from[PP_POLL], "more often than the site's poll(60)"));

    /* Widening is refused: no reconnect, callback or poll the site lacks. */
    struct policy strict = {.keepalive = POLICY_FOREVER};
    user = (struct policy){.keepalive = 60, .reconnect = 1, .callback = 1, .poll = 30};
    policy_resolve(&strict, S, &user, U, &r);
    assert_int_equal(r.p.keepalive, 60);
    assert_int_equal(r.p.reconnect, 0);
    assert_int_equal(r.p.callback, 0);
    assert_int_equal(r.p.poll, 0);
    assert_false(policy_sleeps(&r.p));
    assert_non_null(strstr(r.from[PP_RECONNECT], "not allowed"));
    assert_non_null(strstr(r.from[PP_CALLBACK], "not allowed"));
    assert_non_null(strstr(r.from[PP_POLL], "poll(30) of user"));

    /* A user keeping the tunnel for ever where the site lets it sleep: the
     * site's ways back stay. */
    user = (struct policy){.keepalive = POLICY_FOREVER, .reconnect = 1};
    policy_resolve(&site, S, &user, U, &r);
    assert_int_equal(r.p.keepalive, 300);
    assert_int_equal(r.p.callback, 1);
    assert_int_equal(r.p.poll, 60);
    assert_true(policy_sleeps(&r.p));
    assert_non_null(strstr(r.from[PP_POLL], "would keep the tunnel open for ever"));
    /* ... and a user asking for callback where the site only polls. */
    struct policy polls = {.keepalive = 120, .reconnect = 1, .poll = 60};
    user = (struct policy){.keepalive = 60, .callback = 1};
    policy_resolve(&polls, S, &user, U, &r);
    assert_int_equal(r.p.keepalive, 60);
    assert_int_equal(r.p.callback, 0);
    assert_int_equal(r.p.poll, 60);
}

static char tmpdir[64];

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void test_for_gateway(void **state)
{
    (void)state;
    char site[128], udir[128], upath[160], err[1024];
    struct policy_result r;
    (void)snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_policy.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    (void)snprintf(site, sizeof(site), "%s/site", tmpdir);
    (void)snprintf(udir, sizeof(udir), "%s/jobgate", tmpdir);
    (void)snprintf(upath, sizeof(upath), "%s/jobgate/policy", tmpdir);
    assert_int_equal(mkdir(udir, 0700), 0);
    setenv("JOBGATE_SITE_POLICY", site, 1);
    setenv("XDG_CONFIG_HOME", tmpdir, 1);

    /* No files: the default. */
    assert_int_equal(policy_for_gateway("gw.example.org", NULL, &r, err, sizeof(err)), 0);
    assert_int_equal(r.p.reconnect, 1);
    assert_int_equal(r.p.keepalive, POLICY_FOREVER);

    write_file(site, "\".*\" keepalive(600) reconnect callback poll(60)\n"
                     "\"slow\\..*\" keepalive(600) reconnect poll(300)\n");
    write_file(upath, "\".*\" keepalive(60) reconnect poll(120)\n");
    assert_int_equal(policy_for_gateway("gw.example.org", NULL, &r, err, sizeof(err)), 0);
    assert_int_equal(r.p.keepalive, 60);
    assert_int_equal(r.p.poll, 120);
    assert_int_equal(r.p.callback, 0);
    char want[512];
    (void)snprintf(want, sizeof(want), "user %s:1", upath);
    assert_string_equal(r.from[PP_KEEPALIVE], want);
    assert_int_equal(policy_for_gateway("slow.example.org", NULL, &r, err, sizeof(err)), 0);
    assert_int_equal(r.p.poll, 300);
    (void)snprintf(want, sizeof(want), "site %s:2 (poll(120) of user %s:1", site, upath);
    assert_non_null(strstr(r.from[PP_POLL], want));

    /* --policy replaces the user's file for one run, still narrowed. */
    assert_int_equal(policy_for_gateway("gw.example.org", "keepalive(5) callback poll(10)", &r,
                                        err, sizeof(err)), 0);
    assert_int_equal(r.p.keepalive, 5);
    assert_int_equal(r.p.callback, 1);
    assert_int_equal(r.p.poll, 60);
    assert_int_equal(r.p.reconnect, 0);
    assert_string_equal(r.from[PP_CALLBACK], "--policy");

    /* Errors name the file and line. */
    write_file(upath, "\".*\" poll(120)\n\".*\" pol(5)\n");
    assert_int_equal(policy_for_gateway("gw", NULL, &r, err, sizeof(err)), -EINVAL);
    (void)snprintf(want, sizeof(want), "%s:2: unknown option 'pol(5)'", upath);
    assert_non_null(strstr(err, want));
    assert_int_equal(policy_for_gateway("gw", "pol(5)", &r, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "--policy: unknown option"));
    write_file(site, "\".*\" keepalive(600) reconnect\n\"[\" poll(5)\n");
    assert_int_equal(policy_for_gateway("gw", "poll(5)", &r, err, sizeof(err)), -EINVAL);
    (void)snprintf(want, sizeof(want), "%s:2: \"[\":", site);
    assert_non_null(strstr(err, want));
    /* A directory where the file should be. */
    setenv("JOBGATE_SITE_POLICY", tmpdir, 1);
    assert_int_equal(policy_for_gateway("gw", NULL, &r, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not a regular file"));

    unlink(site);
    unlink(upath);
    rmdir(udir);
    rmdir(tmpdir);
    unsetenv("JOBGATE_SITE_POLICY");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_match),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_options_string),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_resolve),
        cmocka_unit_test(test_for_gateway),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
