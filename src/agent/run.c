/*
 * run — jobgate run: start an app on a private UNIX socket (or a loopback
 * port), wait until it listens, register it with the gateway, print its
 * link, and end the route when the app exits.
 *
 * This file is the command: options, the app's command line ({socket},
 * {port}), the order of the steps, and what the user sees. The steps live
 * beside it (run.h): the app process in run_app.c, its directory in
 * run_dir.c, publishing (local or through a tunnel) in run_publish.c.
 * jobgate leaves only after the app did, so the route never outlives the app
 * by more than the remove request.
 *
 * Main thread, except the output functions, which the tunnel's thread calls
 * too (ready and reconnect events): standard output is written under out_mu.
 */
#include "run.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "agent_tunnel.h"
#include "cmd.h"
#include "util.h"

#define DEFAULT_TIMEOUT_S 120

#define PH_SOCKET "{socket}"
#define PH_PORT "{port}"

enum { OPT_TCP = 256, OPT_JSON, OPT_TTL, OPT_TIMEOUT, OPT_VIA, OPT_CA, OPT_CERT, OPT_KEY,
       OPT_CALLBACK, OPT_CALLBACK_PORT, OPT_PING_INTERVAL,
       OPT_PING_TIMEOUT, OPT_POLICY, OPT_OWN_TUNNEL, OPT_CROSS_SITE };

/* Standard output: this thread and the tunnel's both print events. */
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

static void usage_run(FILE *f)
{
    fputs("usage: jobgate run [-n NAME] [--tcp] [--json] [--ttl DURATION] [--timeout DURATION]\n"
          "                   [-g https://HOST[:PORT] [--ca FILE] [--cert FILE --key FILE] |\n"
          "                    --via ssh:HOST]\n"
          "                   [--policy OPTIONS] [--own-tunnel] [--cross-site]\n"
          "                   [--ping-interval DURATION] [--ping-timeout DURATION] -- CMD ARG...\n"
          "\n"
          "Starts CMD, waits until it listens, publishes it through the gateway and prints a\n"
          "one-time link that opens it in a browser. The route ends when CMD exits; jobgate\n"
          "exits with CMD's status. SIGINT, SIGTERM and SIGHUP are passed on to CMD.\n"
          "\n"
          "In CMD and its arguments, {socket} becomes the path of a private UNIX socket for\n"
          "the app to listen on (also in $JOBGATE_SOCKET); with --tcp, {port} becomes a free\n"
          "port on 127.0.0.1 (also in $JOBGATE_PORT). $JOBGATE_URL_PREFIX is \"/\".\n"
          "\n"
          "  -n, --name NAME       name shown in listings (default: CMD's file name)\n"
          "      --tcp             listen on a loopback TCP port instead of a UNIX socket;\n"
          "                        every user of this host can reach it, so the app must\n"
          "                        keep its own authentication\n"
          "      --json            print events as JSON objects, one per line (CMD's\n"
          "                        standard output then goes to standard error)\n"
          "      --ttl DURATION    lifetime of the first link (1s to 7d, e.g. 30m)\n"
          "      --timeout DURATION\n"
          "                        how long to wait for CMD to listen (default 120s; 0: no limit)\n"
          "  -g, --gateway https://HOST[:PORT]\n"
          "                        publish through the gateway at HOST (port 443 by default)\n"
          "                        over the one tunnel that your runs on this node share\n"
          "                        (https_proxy is honoured); without -g and --via:\n"
          "                        $JOBGATE_GATEWAY (a Slurm job started with --jobgate), else\n"
          "                        the local gateway\n"
          "      --ca FILE         trust the gateway's certificate through the CA certificates\n"
          "                        in FILE (default: $JOBGATE_CA, else the job's\n"
          "                        $JOBGATE_DIR/gateway-ca.crt, else the system's)\n"
          "      --callback        in a Slurm job started with --jobgate: hold no tunnel; the\n"
          "                        gateway dials this node instead, with mutual TLS on a\n"
          "                        port of its own (a direct route, docs/slurm.md)\n"
          "      --callback-port PORT\n"
          "                        that port (default: any free one); with --policy, the port\n"
          "                        of the policy's callback endpoint\n"
          "      --cert FILE --key FILE\n"
          "                        prove who you are with your own certificate and its key\n"
          "                        (PEM; default: $JOBGATE_CERT, $JOBGATE_KEY): the gateway\n"
          "                        maps its subject to your user through its grid-mapfile\n"
          "      --via ssh:HOST    publish through the gateway on HOST, reached with\n"
          "                        'ssh HOST jobgate tunnel --stdio' ($JOBGATE_SSH,\n"
          "                        $JOBGATE_REMOTE_JOBGATE)\n"
          "      --own-tunnel      hold a tunnel of this run's own, instead of sharing the one\n"
          "                        that your other runs on this node hold to the gateway\n"
          "      --cross-site      let pages of other apps and sites send the app requests that\n"
          "                        change state (POST, WebSocket...): the gateway refuses them\n"
          "                        by default (403), since all apps share one domain\n"
          "      --policy OPTIONS  how to reach the gateway, for this run instead of your\n"
          "                        policy file, e.g. \"keepalive(60) poll(30)\": options\n"
          "                        keepalive(SECONDS), reconnect, callback, poll(SECONDS); the\n"
          "                        site's /etc/jobgate/policy may narrow it ('jobgate policy')\n"
          "      --ping-interval DURATION\n"
          "                        how often to check the tunnel (default 15s)\n"
          "      --ping-timeout DURATION\n"
          "                        reconnect when a check is not answered within this\n"
          "                        (default 30s)\n"
          "  -h, --help            show this help\n"
          "\n"
          "example:\n"
          "  jobgate run -- jupyter lab --no-browser --sock {socket} \\\n"
          "      --ServerApp.allow_remote_access=True --ServerApp.token=''\n",
          f);
}

/* One JSON event per line, flushed at once: a portal reads these as they
 * come. A reader that went away must not take the app down with it, so
 * write errors are ignored (SIGPIPE is ignored too). */
void run_emit_json(json_t *ev)
{
    if (!ev)
        return;
    char *s = json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(ev);
    if (!s)
        return;
    pthread_mutex_lock(&out_mu);
    (void)printf("%s\n", s);
    (void)fflush(stdout);
    pthread_mutex_unlock(&out_mu);
    free(s);
}

/* "10 min" style, for how long a link stays valid. */
static void fmt_span(int64_t secs, char *out, size_t outlen)
{
    if (secs < 0)
        secs = 0;
    if (secs < 120)
        (void)xsnprintf(out, outlen, "%" PRId64 " s", secs);
    else if (secs < 2 * 3600)
        (void)xsnprintf(out, outlen, "%" PRId64 " min", (secs + 30) / 60);
    else if (secs < 2 * 86400)
        (void)xsnprintf(out, outlen, "%" PRId64 " h", (secs + 1800) / 3600);
    else
        (void)xsnprintf(out, outlen, "%" PRId64 " days", (secs + 43200) / 86400);
}

/* The file name of CMD, made acceptable to the gateway. */
static void default_name(const char *cmd, char out[APP_NAME_MAX + 1])
{
    const char *base = strrchr(cmd, '/');
    size_t n = 0;

    base = base ? base + 1 : cmd;
    for (const char *p = base; *p && n < APP_NAME_MAX; p++)
        out[n++] = app_name_char_ok(*p) ? *p : '-';
    out[n] = '\0';
    if (n == 0)
        memcpy(out, "app", sizeof("app"));
}

/* Replaces every placeholder in arg; a NULL value leaves that placeholder. */
static char *subst(const char *arg, const char *sock, const char *port)
{
    const size_t lsock = sizeof(PH_SOCKET) - 1, lport = sizeof(PH_PORT) - 1;
    size_t vsock = sock ? strlen(sock) : 0, vport = port ? strlen(port) : 0;
    size_t n = 0;

    /* Arguments are bounded by ARG_MAX, so the sum cannot overflow. */
    for (const char *p = arg; *p;) {
        if (sock && strncmp(p, PH_SOCKET, lsock) == 0) {
            n += vsock;
            p += lsock;
        } else if (port && strncmp(p, PH_PORT, lport) == 0) {
            n += vport;
            p += lport;
        } else {
            n++;
            p++;
        }
    }
    char *out = xmalloc(n + 1), *o = out;
    for (const char *p = arg; *p;) {
        if (sock && strncmp(p, PH_SOCKET, lsock) == 0) {
            memcpy(o, sock, vsock);
            o += vsock;
            p += lsock;
        } else if (port && strncmp(p, PH_PORT, lport) == 0) {
            memcpy(o, port, vport);
            o += vport;
            p += lport;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

static int args_contain(char **argv, int argc, const char *needle)
{
    for (int i = 0; i < argc; i++)
        if (strstr(argv[i], needle))
            return 1;
    return 0;
}

void run_print_ready(const struct run *r, const json_t *reply)
{
    const char *alias = json_string_value(json_object_get(reply, "alias"));
    const char *name = json_string_value(json_object_get(reply, "name"));
    const char *url = json_string_value(json_object_get(reply, "url"));
    const char *link = json_string_value(json_object_get(reply, "link"));
    json_t *expires = json_object_get(reply, "expires");

    if (!name)
        name = r->name;
    if (r->json) {
        json_t *ev = json_pack("{s:s,s:s,s:s,s:s,s:s}", "event", "ready", "alias", alias, "name",
                               name, "url", url, "link", link);
        if (ev && json_is_integer(expires))
            (void)json_object_set(ev, "expires", expires);
        if (ev && json_object_get(reply, "callback_port"))
            (void)json_object_set(ev, "callback_port", json_object_get(reply, "callback_port"));
        run_emit_json(ev);
        return;
    }
    char *pname = cli_printable(name), *purl = cli_printable(url), *plink = cli_printable(link);
    char note[64] = "(one-time)";
    if (json_is_integer(expires)) {
        char span[32];
        fmt_span((int64_t)json_integer_value(expires) - now_real(), span, sizeof(span));
        (void)xsnprintf(note, sizeof(note), "(one-time, expires in %s)", span);
    }
    pthread_mutex_lock(&out_mu);
    (void)printf("jobgate: %s is ready\n  url:  %s\n  link: %s   %s\n", pname, purl, plink, note);
    if (json_is_integer(json_object_get(reply, "callback_port")))
        (void)printf("  the gateway dials this node on port %" JSON_INTEGER_FORMAT
                     " (a direct route)\n",
                     json_integer_value(json_object_get(reply, "callback_port")));
    (void)fflush(stdout);
    pthread_mutex_unlock(&out_mu);
    free(pname);
    free(purl);
    free(plink);
}

/* Parses the options into r; returns -1 to go on, or an exit status. */
static int parse_options(struct run *r, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"name", required_argument, NULL, 'n'},
        {"tcp", no_argument, NULL, OPT_TCP},
        {"json", no_argument, NULL, OPT_JSON},
        {"ttl", required_argument, NULL, OPT_TTL},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"gateway", required_argument, NULL, 'g'},
        {"via", required_argument, NULL, OPT_VIA},
        {"ca", required_argument, NULL, OPT_CA},
        {"cert", required_argument, NULL, OPT_CERT},
        {"callback", no_argument, NULL, OPT_CALLBACK},
        {"callback-port", required_argument, NULL, OPT_CALLBACK_PORT},
        {"key", required_argument, NULL, OPT_KEY},
        {"ping-interval", required_argument, NULL, OPT_PING_INTERVAL},
        {"ping-timeout", required_argument, NULL, OPT_PING_TIMEOUT},
        {"policy", required_argument, NULL, OPT_POLICY},
        {"own-tunnel", no_argument, NULL, OPT_OWN_TUNNEL},
        {"cross-site", no_argument, NULL, OPT_CROSS_SITE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;
    char host[256], err[512];
    unsigned port;

    opterr = 0;
    /* '+': the first non-option word is CMD; its own options are not ours. */
    while ((c = getopt_long(argc, argv, "+:n:g:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            if (!app_name_valid(optarg, APP_NAME_MAX))
                return cli_usage_error("run", "bad name '%s': use 1-%d of A-Z a-z 0-9 . _ -",
                                       optarg, APP_NAME_MAX);
            memcpy(r->name, optarg, strlen(optarg) + 1);
            break;
        case OPT_TCP: r->tcp = 1; break;
        case OPT_JSON: r->json = 1; break;
        case OPT_TTL:
            if (parse_link_ttl("run", optarg, &r->ttl) != 0)
                return EXIT_USAGE;
            break;
        case OPT_TIMEOUT:
            if (parse_duration(optarg, &r->timeout) < 0)
                return cli_usage_error("run", "bad --timeout '%s': e.g. 30s, 10m, 2h (0: no limit)",
                                       optarg);
            break;
        case 'g':
            if (agent_tunnel_parse_gateway(optarg, host, sizeof(host), &port, err,
                                           sizeof(err)) < 0)
                return cli_usage_error("run", "%s", err);
            r->gateway = optarg;
            break;
        case OPT_VIA:
            if (agent_tunnel_parse_via(optarg, host, sizeof(host), err, sizeof(err)) < 0)
                return cli_usage_error("run", "%s", err);
            r->via = optarg;
            break;
        case OPT_CALLBACK:
            r->callback = 1;
            break;
        case OPT_CALLBACK_PORT: {
            uint64_t v;
            if (parse_uint(optarg, 1, 65535, &v) < 0)
                return cli_usage_error("run", "--callback-port must be 1..65535, not '%s'",
                                       optarg);
            r->callback_port = (unsigned)v;
            break;
        }
        case OPT_CERT:
        case OPT_KEY:
            if (optarg[0] == '\0')
                return cli_usage_error("run", "option '--%s' needs a file name",
                                       c == OPT_CERT ? "cert" : "key");
            *(c == OPT_CERT ? &r->cert : &r->key) = optarg;
            break;
        case OPT_CA:
            if (optarg[0] == '\0')
                return cli_usage_error("run", "option '--ca' needs a file name");
            r->ca = optarg;
            break;
        case OPT_PING_INTERVAL:
        case OPT_PING_TIMEOUT: {
            int64_t *v = c == OPT_PING_INTERVAL ? &r->ping_interval : &r->ping_timeout;
            if (parse_duration(optarg, v) < 0 || *v < 1 || *v > 86400)
                return cli_usage_error("run", "bad --%s '%s': 1s to 1d, e.g. 15s",
                                       c == OPT_PING_INTERVAL ? "ping-interval" : "ping-timeout",
                                       optarg);
            break;
        }
        case OPT_POLICY: {
            struct policy p;
            if (policy_parse_options(optarg, &p, err, sizeof(err)) < 0)
                return cli_usage_error("run", "%s", err);
            r->policy_opt = optarg;
            break;
        }
        case OPT_OWN_TUNNEL: r->own_tunnel = 1; break;
        case OPT_CROSS_SITE: r->cross_site = 1; break;
        case 'h':
            usage_run(stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        default:
            return cli_getopt_error("run", c, argc, argv);
        }
    }
    if (r->gateway && r->via)
        return cli_usage_error("run", "give either -g or --via, not both");
    /* --callback-port alone means --callback, but with --policy it is the
     * port of the policy's callback endpoint. */
    if (r->callback_port && !r->policy_opt)
        r->callback = 1;
    if (!r->gateway && !r->via && getenv("JOBGATE_GATEWAY") && *getenv("JOBGATE_GATEWAY")) {
        /* In a --jobgate job (docs/slurm.md): the plugin named the gateway. */
        r->gateway = getenv("JOBGATE_GATEWAY");
        if (agent_tunnel_parse_gateway(r->gateway, host, sizeof(host), &port, err,
                                       sizeof(err)) < 0)
            return cli_usage_error("run", "JOBGATE_GATEWAY: %s", err);
    }
    if (r->ca && !r->gateway)
        return cli_usage_error("run", "--ca goes with -g");
    if (r->callback && (!r->gateway || r->via))
        return cli_usage_error("run", "--callback goes with -g (or $JOBGATE_GATEWAY)");
    if (r->callback && (!getenv("JOBGATE_DIR") || !*getenv("JOBGATE_DIR")))
        return cli_usage_error("run", "--callback needs the job's certificate: run it in a "
                               "Slurm job started with --jobgate (JOBGATE_DIR)");
    if (r->callback && (r->cert || r->key))
        return cli_usage_error("run", "--callback proves the job with its own certificate, "
                               "not --cert");
    if ((r->cert || r->key) && !r->gateway)
        return cli_usage_error("run", "--cert and --key go with -g");
    if (!r->cert != !r->key)
        return cli_usage_error("run", "--cert and --key go together");
    if (r->policy_opt && ((!r->gateway && !r->via) || r->callback))
        return cli_usage_error("run", "--policy goes with -g or --via (not --callback)");
    if (r->own_tunnel && !r->gateway && !r->via)
        return cli_usage_error("run", "--own-tunnel goes with -g or --via");
    if ((r->ping_interval || r->ping_timeout) && !r->gateway && !r->via)
        return cli_usage_error("run", "--ping-interval and --ping-timeout go with -g or --via");
    if (optind >= argc)
        return cli_usage_error("run", "missing the command to run (jobgate run -- CMD ARG...)");
    if (argv[optind][0] == '\0')
        return cli_usage_error("run", "empty command");
    if (r->tcp && args_contain(argv + optind, argc - optind, PH_SOCKET))
        return cli_usage_error("run", "'%s' in the command cannot be used with --tcp (use %s)",
                               PH_SOCKET, PH_PORT);
    if (!r->tcp && args_contain(argv + optind, argc - optind, PH_PORT))
        return cli_usage_error("run", "'%s' in the command needs --tcp", PH_PORT);
    return -1;
}

int cmd_run(int argc, char **argv)
{
    struct run r;
    sigset_t oldmask;
    char portstr[16];
    char **app_argv = NULL;
    int app_argc = 0;
    int status = 1;
    json_t *reg = NULL;

    memset(&r, 0, sizeof(r));
    r.timeout = DEFAULT_TIMEOUT_S;
    int rc = parse_options(&r, argc, argv);
    if (rc >= 0)
        return rc;
    char **cmd = argv + optind;
    int ncmd = argc - optind;
    if (r.name[0] == '\0')
        default_name(cmd[0], r.name);

    /* Before anything is started: no point in an app nobody can reach. */
    r.pub = r.callback ? &publish_callback
            : r.gateway || r.via ? (r.own_tunnel ? &publish_tunnel : &publish_shared)
            : &publish_local;
    if (r.pub->open(&r) < 0)
        return 1;
    /* From here on a signal must not end jobgate before it has cleaned up;
     * until now the default action (exit) was right, also while the hello
     * waited for a slow gateway. */
    if (app_install_signals() < 0) {
        cli_error("sigaction: %s", strerror(errno));
        r.pub->close(&r);
        return 1;
    }

    if ((r.tcp ? rundir_pick_port(&r) : rundir_make_socket(&r)) < 0)
        goto out;

    app_argv = xcalloc((size_t)ncmd + 1, sizeof(*app_argv));
    if (r.tcp)
        (void)xsnprintf(portstr, sizeof(portstr), "%u", r.port);
    for (app_argc = 0; app_argc < ncmd; app_argc++)
        app_argv[app_argc] =
            subst(cmd[app_argc], r.tcp ? NULL : r.sock, r.tcp ? portstr : NULL);
    /* Set here rather than in the child: the parent needs none of these, and
     * setenv after fork is not async-signal-safe in general. The other
     * variable is dropped in case jobgate itself runs under jobgate. */
    if ((r.tcp ? setenv("JOBGATE_PORT", portstr, 1) : setenv("JOBGATE_SOCKET", r.sock, 1)) < 0 ||
        unsetenv(r.tcp ? "JOBGATE_SOCKET" : "JOBGATE_PORT") < 0 ||
        setenv("JOBGATE_URL_PREFIX", "/", 1) < 0) {
        cli_error("setenv: %s", strerror(errno));
        goto out;
    }

    /* Signals stay blocked from here until the child's pid is recorded, so
     * that none slips between fork and forwarding. */
    if (app_block_signals(&oldmask) < 0) {
        cli_error("sigprocmask: %s", strerror(errno));
        goto out;
    }
    if (app_pending_signal()) {
        (void)sigprocmask(SIG_SETMASK, &oldmask, NULL);
        status = 128 + app_pending_signal();
        goto out;
    }
    rc = app_start(&r, app_argv, &oldmask);
    if (rc != 0) {
        status = rc;
        goto exit_event;
    }

    rc = app_wait_listening(&r);
    if (rc >= 0) {
        status = rc;
        goto exit_event;
    }

    reg = r.pub->add(&r);
    if (!reg) {
        cli_error("stopping %s", r.name);
        (void)app_stop(&r);
        status = 1;
        goto exit_event;
    }
    run_print_ready(&r, reg);

    app_wait_exit(&r);
    status = app_reap(&r);
    r.pub->remove(&r, reg);
    if (atomic_load(&r.lost)) {
        cli_error("%s has stopped with its tunnel", r.name);
        status = 1;
    }

exit_event:
    if (r.json)
        run_emit_json(json_pack("{s:s,s:i}", "event", "exit", "status", status));
out:
    if (r.pid > 0) /* only on paths that have not stopped it yet */
        status = app_stop(&r);
    r.pub->close(&r);
    rundir_cleanup(&r);
    json_decref(reg);
    for (int i = 0; i < app_argc; i++)
        free(app_argv[i]);
    free(app_argv);
    return status;
}
