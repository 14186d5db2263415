/*
 * cmd_admin — jobgate ls, link and rm: one control request each, the answer
 * printed for people or, with --json, for programs.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "app.h"
#include "cmd.h"
#include "ctl.h"
#include "util.h"

/* Long-only options get values outside the char range, so that they never
 * look like a short option in error messages. */
enum { OPT_JSON = 256, OPT_TTL };

static void usage_ls(FILE *f)
{
    fputs("usage: jobgate ls [--json]\n"
          "\n"
          "Lists your apps on the gateway: alias, name, backend, age and URL.\n"
          "\n"
          "  --json      print the list as one JSON array\n"
          "  -h, --help  show this help\n",
          f);
}

static void usage_link(FILE *f)
{
    fputs("usage: jobgate link ALIAS [--ttl DURATION] [--json]\n"
          "\n"
          "Makes a new one-time link to an app (ALIAS may also be the app's name when it\n"
          "is unique) and prints it.\n"
          "\n"
          "  --ttl DURATION  how long the link stays valid, e.g. 30s, 10m, 2h (1s to 7d;\n"
          "                  default: the gateway's, usually 10m)\n"
          "  --json          print the gateway's whole answer as one JSON object\n"
          "  -h, --help      show this help\n",
          f);
}

static void usage_rm(FILE *f)
{
    fputs("usage: jobgate rm ALIAS...\n"
          "\n"
          "Removes apps from the gateway: their links and sessions stop working at once.\n"
          "The apps themselves keep running. ALIAS may also be an app's unique name.\n"
          "\n"
          "  -h, --help  show this help\n",
          f);
}

static int print_help(void (*fn)(FILE *))
{
    fn(stdout);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* Prints v as one compact JSON line on stdout. */
static int print_json_line(const json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    if (!s) {
        cli_error("cannot encode the answer as JSON");
        return 1;
    }
    int r = printf("%s\n", s) < 0 || fflush(stdout) != 0;
    free(s);
    if (r)
        cli_error("cannot write to standard output: %s", strerror(errno));
    return r;
}

int parse_link_ttl(const char *cmd, const char *arg, int64_t *ttl)
{
    if (parse_duration(arg, ttl) < 0 || !app_link_ttl_valid(*ttl))
        return cli_usage_error(cmd, "bad --ttl '%s': give 1s to 7d, e.g. 30s, 10m, 2h", arg);
    return 0;
}

/* Age for a table column: 5s, 3m, 2h, 1d (rounded down). */
static void fmt_age(int64_t secs, char *out, size_t outlen)
{
    if (secs < 0)
        secs = 0; /* the gateway's clock may be a little ahead */
    if (secs < 60)
        (void)xsnprintf(out, outlen, "%" PRId64 "s", secs);
    else if (secs < 3600)
        (void)xsnprintf(out, outlen, "%" PRId64 "m", secs / 60);
    else if (secs < 86400)
        (void)xsnprintf(out, outlen, "%" PRId64 "h", secs / 3600);
    else
        (void)xsnprintf(out, outlen, "%" PRId64 "d", secs / 86400);
}

enum { COL_ALIAS, COL_NAME, COL_JOB, COL_BACKEND, COL_AGE, COL_URL, NCOLS };

/* Field of a route as a printable string; unknown or odd values print as "-". */
static char *route_field(const json_t *r, const char *key)
{
    const char *s = json_string_value(json_object_get(r, key));
    return cli_printable(s && *s ? s : "-");
}

static int print_table(const json_t *routes)
{
    static const char *const head[NCOLS] = {"ALIAS", "NAME", "JOB", "BACKEND", "AGE", "URL"};
    size_t n = json_array_size(routes);
    size_t width[NCOLS];
    char *(*cell)[NCOLS] = xcalloc(n ? n : 1, sizeof(*cell));
    int64_t now = now_real();

    for (int k = 0; k < NCOLS; k++)
        width[k] = strlen(head[k]);
    for (size_t i = 0; i < n; i++) {
        const json_t *r = json_array_get(routes, i);
        char age[32] = "-";
        json_t *created = json_object_get(r, "created");
        if (json_is_integer(created))
            fmt_age(now - (int64_t)json_integer_value(created), age, sizeof(age));
        cell[i][COL_ALIAS] = route_field(r, "alias");
        cell[i][COL_NAME] = route_field(r, "name");
        json_t *job = json_object_get(r, "job");
        char jobs[24] = "-";
        if (json_is_integer(job))
            (void)xsnprintf(jobs, sizeof(jobs), "%" JSON_INTEGER_FORMAT, json_integer_value(job));
        cell[i][COL_JOB] = xstrdup(jobs);
        cell[i][COL_BACKEND] = route_field(r, "backend");
        cell[i][COL_AGE] = xstrdup(age);
        cell[i][COL_URL] = route_field(r, "url");
        for (int k = 0; k < NCOLS; k++) {
            size_t l = strlen(cell[i][k]);
            if (l > width[k])
                width[k] = l;
        }
    }
    /* Widths come from strings that are at most 64 KiB, the answer's limit. */
    int bad = printf("%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int)width[0], head[0],
                     (int)width[1], head[1], (int)width[2], head[2], (int)width[3], head[3],
                     (int)width[4], head[4], head[5]) < 0;
    for (size_t i = 0; i < n; i++) {
        bad |= printf("%-*s  %-*s  %-*s  %-*s  %-*s  %s\n", (int)width[0], cell[i][0],
                      (int)width[1], cell[i][1], (int)width[2], cell[i][2], (int)width[3],
                      cell[i][3], (int)width[4], cell[i][4], cell[i][5]) < 0;
        for (int k = 0; k < NCOLS; k++)
            free(cell[i][k]);
    }
    free(cell);
    if (bad || fflush(stdout) != 0) {
        cli_error("cannot write to standard output: %s", strerror(errno));
        return 1;
    }
    return 0;
}

int cmd_ls(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int json = 0, c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_JSON: json = 1; break;
        case 'h': return print_help(usage_ls);
        default: return cli_getopt_error("ls", c, argc, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error("ls", "unexpected argument '%s'", argv[optind]);

    const char *sock = cli_control_socket();
    if (!sock)
        return 1;
    json_t *req = json_pack("{s:s}", "op", "list");
    if (!req) {
        cli_error("cannot build the request");
        return 1;
    }
    json_t *reply = cli_call(sock, req);
    if (!reply)
        return 1;
    json_t *routes = json_object_get(reply, "routes");
    if (!json_is_array(routes)) {
        cli_error("bad answer from the gateway: no \"routes\" list");
        json_decref(reply);
        return 1;
    }
    int rc;
    if (json)
        rc = print_json_line(routes);
    else if (json_array_size(routes) == 0)
        rc = printf("no apps\n") < 0 || fflush(stdout) != 0;
    else
        rc = print_table(routes);
    json_decref(reply);
    return rc;
}

int cmd_link(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"ttl", required_argument, NULL, OPT_TTL},
        {"json", no_argument, NULL, OPT_JSON},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int json = 0, c;
    int64_t ttl = 0;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_TTL:
            if (parse_link_ttl("link", optarg, &ttl) != 0)
                return EXIT_USAGE;
            break;
        case OPT_JSON: json = 1; break;
        case 'h': return print_help(usage_link);
        default: return cli_getopt_error("link", c, argc, argv);
        }
    }
    if (optind >= argc)
        return cli_usage_error("link", "missing ALIAS");
    if (optind + 1 < argc)
        return cli_usage_error("link", "unexpected argument '%s'", argv[optind + 1]);
    const char *alias = argv[optind];
    if (alias[0] == '\0')
        return cli_usage_error("link", "empty ALIAS");

    const char *sock = cli_control_socket();
    if (!sock)
        return 1;
    json_t *req = json_pack("{s:s,s:s}", "op", "link", "alias", alias);
    if (!req || (ttl > 0 && json_object_set_new(req, "ttl", json_integer(ttl)) < 0)) {
        json_decref(req);
        cli_error("cannot build the request (is ALIAS valid UTF-8?)");
        return 1;
    }
    json_t *reply = cli_call(sock, req);
    if (!reply)
        return 1;
    int rc;
    const char *link = json_string_value(json_object_get(reply, "link"));
    if (json) {
        rc = print_json_line(reply);
    } else if (!link) {
        cli_error("bad answer from the gateway: no \"link\"");
        rc = 1;
    } else {
        char *p = cli_printable(link);
        rc = printf("%s\n", p) < 0 || fflush(stdout) != 0;
        free(p);
    }
    json_decref(reply);
    return rc;
}

int cmd_rm(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': return print_help(usage_rm);
        default: return cli_getopt_error("rm", c, argc, argv);
        }
    }
    if (optind >= argc)
        return cli_usage_error("rm", "missing ALIAS");
    for (int i = optind; i < argc; i++)
        if (argv[i][0] == '\0')
            return cli_usage_error("rm", "empty ALIAS");

    const char *sock = cli_control_socket();
    if (!sock)
        return 1;
    /* One connection for all aliases; each failure is reported and the
     * rest are still removed. */
    char err[512];
    struct ctl *ctl;
    if (ctl_connect(sock, &ctl, err, sizeof(err)) < 0) {
        cli_error("%s", err);
        return 1;
    }
    int rc = 0;
    for (int i = optind; i < argc; i++) {
        json_t *req = json_pack("{s:s,s:s}", "op", "remove", "alias", argv[i]);
        json_t *reply = NULL;
        if (!req) {
            cli_error("cannot build the request for '%s' (not valid UTF-8?)", argv[i]);
            rc = 1;
            continue;
        }
        int r = ctl_request(ctl, req, &reply, err, sizeof(err));
        json_decref(req);
        json_decref(reply);
        if (r < 0) {
            cli_error("%s", err);
            rc = 1;
            if (r != -EREMOTEIO)
                break; /* the connection is out of step or gone */
        }
    }
    ctl_close(ctl);
    return rc;
}
