/*
 * cmd_admin — jobgate ls, jobs, link and rm: one control request each, the answer
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
          "Lists your apps on the gateway: alias, name, job, backend, how a remote app is\n"
          "reached now (REACH: tunnel, reconnecting, poll 30s, callback) and when its agent\n"
          "was last seen (SEEN), age and URL.\n"
          "\n"
          "  --json      print the list as one JSON array\n"
          "  -h, --help  show this help\n",
          f);
}

static void usage_jobs(FILE *f)
{
    fputs("usage: jobgate jobs [--json]\n"
          "\n"
          "Lists your batch jobs that the gateway knows (started with --jobgate): job id,\n"
          "user, node, state (running or ended) and the TCP ports the job listens on that\n"
          "it reported (its allowed destinations).\n"
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

enum { COL_ALIAS, COL_NAME, COL_JOB, COL_BACKEND, COL_REACH, COL_SEEN, COL_AGE, COL_URL, NCOLS };

/* Field of a route as a printable string; unknown or odd values print as "-". */
static char *route_field(const json_t *r, const char *key)
{
    const char *s = json_string_value(json_object_get(r, key));
    return cli_printable(s && *s ? s : "-");
}

#define TABLE_COLS_MAX 8

/* Prints head[0..ncols) and n rows of cells (row-major, ncols each, freed
 * here) as aligned columns two spaces apart; the last column is not padded.
 * 0, or 1 after saying why. */
static int print_cells(const char *const *head, int ncols, char **cells, size_t n)
{
    size_t width[TABLE_COLS_MAX];
    for (int k = 0; k < ncols; k++) {
        width[k] = strlen(head[k]);
        for (size_t i = 0; i < n; i++)
            if (strlen(cells[i * (size_t)ncols + (size_t)k]) > width[k])
                width[k] = strlen(cells[i * (size_t)ncols + (size_t)k]);
    }
    /* Widths come from strings that are at most 64 KiB, the answer's limit. */
    int bad = 0;
    for (size_t i = 0; i <= n; i++) {
        for (int k = 0; k < ncols; k++) {
            const char *c = i == 0 ? head[k] : cells[(i - 1) * (size_t)ncols + (size_t)k];
            bad |= k + 1 < ncols ? printf("%-*s  ", (int)width[k], c) < 0
                                 : printf("%s\n", c) < 0;
        }
    }
    for (size_t i = 0; i < n * (size_t)ncols; i++)
        free(cells[i]);
    free(cells);
    if (bad || fflush(stdout) != 0) {
        cli_error("cannot write to standard output: %s", strerror(errno));
        return 1;
    }
    return 0;
}

/* An integer field as text, "-" when absent. */
static char *int_field(const json_t *o, const char *key)
{
    char buf[24] = "-";
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        (void)xsnprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return xstrdup(buf);
}

static int print_table(const json_t *routes)
{
    static const char *const head[NCOLS] = {"ALIAS", "NAME", "JOB", "BACKEND", "REACH", "SEEN",
                                            "AGE", "URL"};
    size_t n = json_array_size(routes);
    char **cell = xcalloc(n * NCOLS + 1, sizeof(*cell));
    int64_t now = now_real();
    for (size_t i = 0; i < n; i++) {
        const json_t *r = json_array_get(routes, i);
        char age[32] = "-", **row = cell + i * NCOLS;
        json_t *created = json_object_get(r, "created");
        if (json_is_integer(created))
            fmt_age(now - (int64_t)json_integer_value(created), age, sizeof(age));
        row[COL_ALIAS] = route_field(r, "alias");
        row[COL_NAME] = route_field(r, "name");
        row[COL_JOB] = int_field(r, "job");
        row[COL_BACKEND] = route_field(r, "backend");
        /* How a remote app is reached now, and when its agent was last seen
         * (docs/policy.md); "-" for the others. */
        row[COL_REACH] = route_field(r, "reach");
        char seen[32] = "-";
        json_t *sv = json_object_get(r, "seen");
        if (json_is_integer(sv) && now - (int64_t)json_integer_value(sv) < 2)
            (void)xsnprintf(seen, sizeof(seen), "now");
        else if (json_is_integer(sv))
            fmt_age(now - (int64_t)json_integer_value(sv), seen, sizeof(seen));
        if (json_is_integer(sv) && strcmp(seen, "now") != 0)
            (void)xsnprintf(seen + strlen(seen), sizeof(seen) - strlen(seen), " ago");
        row[COL_SEEN] = xstrdup(seen);
        row[COL_AGE] = xstrdup(age);
        row[COL_URL] = route_field(r, "url");
    }
    return print_cells(head, NCOLS, cell, n);
}

/* jobgate ls and jobgate jobs: the control op's list under key, printed as
 * a table (print), "empty" when there is none, or as JSON with --json. */
/* The whole list of op's answers under key: the gateway answers in pages
 * ("next": where the following one starts). NULL after saying why. */
#define LIST_PAGES_MAX 10000
static json_t *fetch_pages(const char *sock, const char *op, const char *key)
{
    json_t *all = json_array();
    char *after = NULL;
    for (int page = 0; all; page++) {
        if (page == LIST_PAGES_MAX) {
            cli_error("the gateway's answer has more than %d pages", LIST_PAGES_MAX);
            break;
        }
        json_t *req = json_pack("{s:s}", "op", op);
        if (req && after)
            json_object_set_new(req, "after", json_string(after));
        if (!req) {
            cli_error("cannot build the request");
            break;
        }
        json_t *reply = cli_call(sock, req);
        if (!reply)
            break;
        json_t *list = json_object_get(reply, key);
        const char *next = json_string_value(json_object_get(reply, "next"));
        if (!json_is_array(list)) {
            cli_error("bad answer from the gateway: no \"%s\" list", key);
            json_decref(reply);
            break;
        }
        json_array_extend(all, list);
        free(after);
        after = next && *next && json_array_size(list) > 0 ? xstrdup(next) : NULL;
        json_decref(reply);
        if (!after)
            return all;
    }
    free(after);
    json_decref(all);
    return NULL;
}

static int list_command(int argc, char **argv, const char *cmd, void (*usage)(FILE *),
                        const char *op, const char *key, const char *empty,
                        int (*print)(const json_t *list))
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
        case 'h': return print_help(usage);
        default: return cli_getopt_error(cmd, c, argc, argv);
        }
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);

    const char *sock = cli_control_socket();
    if (!sock)
        return 1;
    json_t *list = fetch_pages(sock, op, key);
    if (!list)
        return 1;
    int rc;
    if (json) {
        rc = print_json_line(list);
    } else if (json_array_size(list) == 0) {
        rc = printf("%s\n", empty) < 0 || fflush(stdout) != 0;
    } else {
        rc = print(list);
    }
    json_decref(list);
    return rc;
}

int cmd_ls(int argc, char **argv)
{
    return list_command(argc, argv, "ls", usage_ls, "list", "routes", "no apps", print_table);
}

/* "host:port" of every destination, joined by commas, or "-". */
static char *dest_list(const json_t *dests)
{
    size_t i, cap = 64, len = 0;
    json_t *d;
    char *s = xmalloc(cap);
    s[0] = '\0';
    json_array_foreach(dests, i, d) {
        const char *host = json_string_value(json_object_get(d, "host"));
        char one[160];
        if (!host)
            continue;
        int n = snprintf(one, sizeof(one), strchr(host, ':') ? "%s[%s]:%" JSON_INTEGER_FORMAT
                                                             : "%s%s:%" JSON_INTEGER_FORMAT,
                         len ? "," : "", host, json_integer_value(json_object_get(d, "port")));
        if (n < 0 || (size_t)n >= sizeof(one))
            continue;
        while (len + (size_t)n + 1 > cap)
            s = xrealloc(s, cap *= 2);
        memcpy(s + len, one, (size_t)n + 1);
        len += (size_t)n;
    }
    if (len == 0) {
        free(s);
        s = xstrdup("-");
    }
    char *p = cli_printable(s);
    free(s);
    return p;
}

static int print_jobs(const json_t *jobs)
{
    enum { J_JOB, J_USER, J_NODE, J_STATE, J_DESTS, NJ };
    static const char *const head[NJ] = {"JOB", "USER", "NODE", "STATE", "DESTINATIONS"};
    size_t n = json_array_size(jobs);
    char **cell = xcalloc(n * NJ + 1, sizeof(*cell));
    for (size_t i = 0; i < n; i++) {
        const json_t *j = json_array_get(jobs, i);
        char **row = cell + i * NJ;
        row[J_JOB] = int_field(j, "job");
        row[J_USER] = route_field(j, "user");
        row[J_NODE] = route_field(j, "node");
        row[J_STATE] = route_field(j, "state");
        row[J_DESTS] = dest_list(json_object_get(j, "destinations"));
    }
    return print_cells(head, NJ, cell, n);
}

int cmd_jobs(int argc, char **argv)
{
    return list_command(argc, argv, "jobs", usage_jobs, "jobs", "jobs", "no jobs", print_jobs);
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
