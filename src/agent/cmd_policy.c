/*
 * cmd_policy — jobgate policy GATEWAY: the connection policy that
 * `jobgate run` would use for GATEWAY (policy.h, docs/policy.md), each
 * part with the file and line it came from; and cli_gateway_host(), the
 * one place that turns -g, --via or a bare name into the host name that
 * policy lines match.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "agent_tunnel.h"
#include "cmd.h"
#include "policy.h"
#include "util.h"

enum { OPT_JSON = 256, OPT_POLICY };

static void usage_policy(FILE *f)
{
    fputs("usage: jobgate policy [--policy OPTIONS] [--json] [GATEWAY]\n"
          "\n"
          "Prints the connection policy that 'jobgate run' uses for GATEWAY\n"
          "(https://HOST[:PORT], ssh:HOST or HOST; default: $JOBGATE_GATEWAY) and where\n"
          "each part comes from: the site's file (/etc/jobgate/policy), yours\n"
          "($XDG_CONFIG_HOME/jobgate/policy, else ~/.config/jobgate/policy) or the default\n"
          "(persistent, with reconnect). Yours may only narrow the site's.\n"
          "\n"
          "  --policy OPTIONS  as 'jobgate run --policy OPTIONS' would, instead of your file\n"
          "                    (e.g. \"keepalive(60) poll(30)\")\n"
          "  --json            print it as one JSON object\n"
          "  -h, --help        show this help\n"
          "\n"
          "A policy line: \"REGEX\" OPTION... where REGEX matches the gateway's whole host name\n"
          "and the last matching line wins. Options: keepalive(SECONDS), reconnect, callback,\n"
          "poll(SECONDS).\n",
          f);
}

int cli_gateway_host(const char *arg, char *host, size_t len, char *err, size_t errlen)
{
    unsigned port;
    if (strncmp(arg, "https://", 8) == 0)
        return agent_tunnel_parse_gateway(arg, host, len, &port, err, errlen);
    if (strncmp(arg, "ssh:", 4) == 0)
        return agent_tunnel_parse_via(arg, host, len, err, errlen);
    size_t n = strlen(arg);
    if (n == 0 || n >= len || n > 253)
        return errmsg(err, errlen, -EINVAL, "GATEWAY must be https://HOST[:PORT], ssh:HOST "
                      "or a host name");
    for (size_t i = 0; i < n; i++) {
        char c = arg[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '_'))
            return errmsg(err, errlen, -EINVAL, "'%s' is not a host name (GATEWAY must be "
                          "https://HOST[:PORT], ssh:HOST or a host name)", arg);
    }
    memcpy(host, arg, n + 1);
    return 0;
}

/* One sentence on what the policy does. */
static void describe(const struct policy *p, char *buf, size_t len)
{
    char back[160] = "";
    if (p->callback && p->poll)
        (void)xsnprintf(back, sizeof(back), "the gateway dials this node for the next request "
                        "(callback), and where it cannot, the agent comes back every %" PRId64
                        " s (poll)", p->poll);
    else if (p->callback)
        (void)xsnprintf(back, sizeof(back), "the gateway dials this node for the next request "
                        "(callback)");
    else if (p->poll)
        (void)xsnprintf(back, sizeof(back), "the agent comes back every %" PRId64 " s to "
                        "collect requests (poll)", p->poll);
    const char *lost = p->reconnect ? "a lost tunnel is dialled again"
                                    : "a lost tunnel ends 'jobgate run' and the app's route";
    if (policy_sleeps(p))
        (void)xsnprintf(buf, len, "The tunnel closes %" PRId64 " s after its last connection "
                        "ended; then %s; %s.", p->keepalive, back, lost);
    else
        (void)xsnprintf(buf, len, "The tunnel stays open while the app runs%s; %s.",
                        p->keepalive != POLICY_FOREVER ? " (keepalive needs callback or poll "
                        "to let it close)" : "", lost);
}

int cmd_policy(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"policy", required_argument, NULL, OPT_POLICY},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *options = NULL;
    int json = 0, c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_POLICY: options = optarg; break;
        case OPT_JSON: json = 1; break;
        case 'h':
            usage_policy(stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        default: return cli_getopt_error("policy", c, argc, argv);
        }
    }
    if (optind + 1 < argc)
        return cli_usage_error("policy", "unexpected argument '%s'", argv[optind + 1]);
    const char *gw = optind < argc ? argv[optind] : getenv("JOBGATE_GATEWAY");
    if (!gw || !*gw)
        return cli_usage_error("policy", "missing GATEWAY (and $JOBGATE_GATEWAY is not set)");

    char host[256], err[1024];
    if (cli_gateway_host(gw, host, sizeof(host), err, sizeof(err)) < 0)
        return cli_usage_error("policy", "%s", err);
    struct policy_result r;
    if (policy_for_gateway(host, options, &r, err, sizeof(err)) < 0) {
        if (options && strncmp(err, "--policy", 8) == 0)
            return cli_usage_error("policy", "%s", err);
        cli_error("%s", err);
        return 1;
    }

    char text[160], what[600];
    policy_format(&r.p, text, sizeof(text));
    describe(&r.p, what, sizeof(what));
    if (json) {
        json_t *o = json_pack("{s:s,s:s,s:I,s:b,s:b,s:I,s:b,s:{s:s,s:s,s:s,s:s},s:s}",
                              "gateway", host, "policy", text,
                              "keepalive", (json_int_t)r.p.keepalive, "reconnect", r.p.reconnect,
                              "callback", r.p.callback, "poll", (json_int_t)r.p.poll,
                              "sleeps", policy_sleeps(&r.p),
                              "from", "keepalive", r.from[PP_KEEPALIVE], "reconnect",
                              r.from[PP_RECONNECT], "callback", r.from[PP_CALLBACK], "poll",
                              r.from[PP_POLL], "summary", what);
        char *s = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        if (!s) {
            cli_error("out of memory");
            return 1;
        }
        printf("%s\n", s);
        free(s);
        return 0;
    }

    char ka[32], poll[32];
    if (r.p.keepalive == POLICY_FOREVER)
        (void)xsnprintf(ka, sizeof(ka), "keepalive");
    else
        (void)xsnprintf(ka, sizeof(ka), "keepalive(%" PRId64 ")", r.p.keepalive);
    if (r.p.poll)
        (void)xsnprintf(poll, sizeof(poll), "poll(%" PRId64 ")", r.p.poll);
    else
        (void)xsnprintf(poll, sizeof(poll), "no poll");
    char *ph = cli_printable(host);
    printf("%s: %s\n", ph, text);
    free(ph);
    printf("  %-16s %s\n", ka, r.from[PP_KEEPALIVE]);
    printf("  %-16s %s\n", r.p.reconnect ? "reconnect" : "no reconnect", r.from[PP_RECONNECT]);
    printf("  %-16s %s\n", r.p.callback ? "callback" : "no callback", r.from[PP_CALLBACK]);
    printf("  %-16s %s\n", poll, r.from[PP_POLL]);
    printf("%s\n", what);
    return 0;
}
