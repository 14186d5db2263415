/* Unit tests for src/agent/tunnel_url.c: what -g and --via accept. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "agent_tunnel.h"

static void ok_gw(const char *url, const char *host, unsigned port)
{
    char h[256], err[256] = "";
    unsigned p = 0;
    int rc = agent_tunnel_parse_gateway(url, h, sizeof(h), &p, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s: %s", url, err);
    assert_string_equal(h, host);
    assert_int_equal(p, port);
}

/* Refused with a message that contains want. */
static void bad_gw(const char *url, const char *want)
{
    char h[256] = "untouched", err[1024] = "";
    unsigned p = 7;
    assert_int_equal(agent_tunnel_parse_gateway(url, h, sizeof(h), &p, err, sizeof(err)),
                     -EINVAL);
    if (!strstr(err, want))
        fail_msg("%s: '%s' does not say '%s'", url ? url : "(null)", err, want);
    assert_string_equal(h, "untouched");
}

static void test_gateway_ok(void **state)
{
    (void)state;
    ok_gw("https://gw.example.org", "gw.example.org", TUNNEL_DEFAULT_PORT);
    ok_gw("https://gw.example.org/", "gw.example.org", 443);
    ok_gw("HTTPS://gw:8443", "gw", 8443);
    ok_gw("https://127.0.0.1:1", "127.0.0.1", 1);
    ok_gw("https://[::1]:65535/", "::1", 65535);
    ok_gw("https://[2001:db8::7]", "2001:db8::7", 443);
    ok_gw("https://under_score-9.x", "under_score-9.x", 443);
}

static void test_gateway_bad(void **state)
{
    (void)state;
    bad_gw(NULL, "expected https://HOST[:PORT]");
    bad_gw("gw.example.org", "expected https://HOST[:PORT]");
    bad_gw("http://gw", "only https:// URLs");
    bad_gw("ftp://gw", "only https:// URLs");
    bad_gw("https://", "no host");
    bad_gw("https://:443", "no host");
    bad_gw("https:///", "no host");
    bad_gw("https://gw/path", "no path");
    bad_gw("https://gw?x=1", "no query or fragment");
    bad_gw("https://gw/#top", "no query or fragment");
    bad_gw("https://user:pw@gw", "no user name or password");
    bad_gw("https://gw:0", "bad port");
    bad_gw("https://gw:65536", "bad port");
    bad_gw("https://gw:8x", "bad port");
    bad_gw("https://gw:", "bad port");
    bad_gw("https://[::1", "unclosed '['");
    bad_gw("https://[::1]x", "junk after ']'");
    bad_gw("https://[not-v6]", "bad IPv6 address");
    bad_gw("https://g w", "bad character");
    bad_gw("https://-gw", "bad host name");
    bad_gw("https://.gw", "bad host name");

    char longhost[400];
    memcpy(longhost, "https://", 8);
    memset(longhost + 8, 'a', 260);
    longhost[268] = '\0';
    bad_gw(longhost, "host too long");
    memset(longhost + 8, 'a', 320);
    longhost[328] = '\0';
    bad_gw(longhost, "host too long");
}

static void test_via(void **state)
{
    (void)state;
    char h[300], err[256];
    assert_int_equal(agent_tunnel_parse_via("ssh:login.example.org", h, sizeof(h), err,
                                            sizeof(err)), 0);
    assert_string_equal(h, "login.example.org");
    assert_int_equal(agent_tunnel_parse_via("ssh:alice@login", h, sizeof(h), err, sizeof(err)),
                     0);
    assert_string_equal(h, "alice@login");

    assert_int_equal(agent_tunnel_parse_via(NULL, h, sizeof(h), err, sizeof(err)), -EINVAL);
    assert_int_equal(agent_tunnel_parse_via("login", h, sizeof(h), err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "expected ssh:HOST"));
    assert_int_equal(agent_tunnel_parse_via("ssh:", h, sizeof(h), err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "no host"));
    /* ssh would take it for an option. */
    assert_int_equal(agent_tunnel_parse_via("ssh:-oProxyCommand=x", h, sizeof(h), err,
                                            sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "may not start with '-'"));
    assert_int_equal(agent_tunnel_parse_via("ssh:a b", h, sizeof(h), err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(agent_tunnel_parse_via("ssh:a\tb", h, sizeof(h), err, sizeof(err)),
                     -EINVAL);
    char small[4];
    assert_int_equal(agent_tunnel_parse_via("ssh:abcd", small, sizeof(small), err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "too long"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gateway_ok),
        cmocka_unit_test(test_gateway_bad),
        cmocka_unit_test(test_via),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
