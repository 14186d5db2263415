/*
 * jobgate — the command-line client of jobgated: entry point, global
 * options, and dispatch to the subcommands (cmd.h).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cmd.h"
#include "config.h"
#include "ctl.h"
#include "util.h"

#ifndef JG_VERSION
#define JG_VERSION "unknown"
#endif

static const char *opt_socket;  /* -s */
static char *default_socket;    /* resolved once, lives until exit */

static void usage(FILE *f)
{
    fputs("usage: jobgate [-s SOCKET] COMMAND [ARG...]\n"
          "\n"
          "Opens the web apps of your jobs in a browser through the jobgated gateway.\n"
          "\n"
          "Commands:\n"
          "  run [-n NAME] [--tcp] [--json] [--ttl DURATION] [--timeout DURATION]\n"
          "      [-g GATEWAY | --via ssh:HOST] -- CMD ARG...\n"
          "                      start CMD, publish it through the gateway, print its link,\n"
          "                      and end the route when CMD exits\n"
          "  ls [--json]         list your apps\n"
          "  jobs [--json]       list your batch jobs that the gateway knows (Slurm --jobgate)\n"
          "  link ALIAS [--ttl DURATION] [--json]\n"
          "                      make a new one-time link to an app\n"
          "  rm ALIAS...         remove apps from the gateway\n"
          "  policy [GATEWAY]    show how 'run' reaches GATEWAY (keepalive, reconnect,\n"
          "                      callback, poll) and which policy file says so\n"
          "  tunnel --stdio      the gateway host's end of 'run --via ssh:HOST' (run by ssh)\n"
          "\n"
          "Options:\n"
          "  -s, --socket SOCKET the gateway's control socket (default: $JOBGATE_CONTROL,\n"
          "                      else the personal gateway's socket)\n"
          "  -h, --help          show this help\n"
          "  -V, --version       show the version\n"
          "\n"
          "'jobgate COMMAND --help' shows the options of a command.\n",
          f);
}

/* Control characters from the gateway or the user must not reach the
 * terminal as such; everything else (including UTF-8) passes. */
static void sanitise_inplace(char *s)
{
    for (unsigned char *p = (unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            *p = '?';
}

static void vmessage(const char *fmt, va_list ap, const char *suffix)
    __attribute__((format(printf, 1, 0)));

static void vmessage(const char *fmt, va_list ap, const char *suffix)
{
    char msg[2048];
    /* A cut message is still worth printing. */
    (void)vsnprintf(msg, sizeof(msg), fmt, ap);
    sanitise_inplace(msg);
    fprintf(stderr, "jobgate: %s%s\n", msg, suffix);
}

void cli_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap, "");
    va_end(ap);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    char hint[128];
    va_list ap;

    if (xsnprintf(hint, sizeof(hint), " (try 'jobgate%s%s --help')", cmd ? " " : "",
                  cmd ? cmd : "") < 0)
        hint[0] = '\0';
    va_start(ap, fmt);
    vmessage(fmt, ap, hint);
    va_end(ap);
    return EXIT_USAGE;
}

int cli_getopt_error(const char *cmd, int c, int argc, char **argv)
{
    const char *word = optind >= 1 && optind - 1 < argc ? argv[optind - 1] : "";
    int islong = strncmp(word, "--", 2) == 0 && word[2] != '\0';
    const char *eq = islong ? strchr(word, '=') : NULL;
    int wlen = eq ? (int)(eq - word) : (int)strlen(word);

    if (c == ':') {
        if (islong)
            return cli_usage_error(cmd, "option '%.*s' needs a value", wlen, word);
        return cli_usage_error(cmd, "option '-%c' needs a value", optopt);
    }
    /* For a long option glibc sets optopt to 0 when the name is unknown, and
     * to the option's value when it got a "=value" it does not take. For a
     * short option, argv[optind - 1] may be an earlier word, so optopt wins. */
    if (islong && optopt == 0)
        return cli_usage_error(cmd, "unknown option '%.*s'", wlen, word);
    if (islong && eq)
        return cli_usage_error(cmd, "option '%.*s' takes no value", wlen, word);
    if (optopt > 0 && optopt < 128 && isprint(optopt))
        return cli_usage_error(cmd, "unknown option '-%c'", optopt);
    return cli_usage_error(cmd, "unknown option '%s'", word);
}

char *cli_printable(const char *s)
{
    char *d = xstrdup(s ? s : "");
    sanitise_inplace(d);
    return d;
}

json_t *cli_call(const char *sock, json_t *req)
{
    char err[512];
    json_t *reply;
    int r = ctl_call(sock, req, &reply, err, sizeof(err));
    json_decref(req);
    if (r < 0) {
        cli_error("%s", err);
        json_decref(reply);
        return NULL;
    }
    return reply;
}

const char *cli_control_socket(void)
{
    if (opt_socket)
        return opt_socket;
    const char *env = getenv("JOBGATE_CONTROL");
    if (env && *env)
        return env;
    if (default_socket)
        return default_socket;

    /* The state directory is only needed where there is no runtime
     * directory, so its absence is not yet an error. */
    char *state = config_default_state_dir();
    default_socket = config_default_control_socket(state);
    free(state);
    if (!default_socket)
        cli_error("cannot tell where the gateway's control socket is (no XDG_RUNTIME_DIR, "
                  "XDG_STATE_HOME or HOME); give it with -s SOCKET or JOBGATE_CONTROL");
    return default_socket;
}

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
};

static const struct command commands[] = {
    {"run", cmd_run},
    {"ls", cmd_ls},
    {"link", cmd_link},
    {"jobs", cmd_jobs},
    {"rm", cmd_rm},
    {"tunnel", cmd_tunnel},
    {"policy", cmd_policy},
};

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"socket", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int c;

    malloc_tune();
    /* Options after COMMAND belong to the command: stop at the first word. */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:s:hV", longopts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (optarg[0] == '\0')
                return cli_usage_error(NULL, "option '-s' needs a non-empty path");
            opt_socket = optarg;
            break;
        case 'h':
            usage(stdout);
            return fflush(stdout) == 0 ? 0 : 1;
        case 'V':
            printf("jobgate %s\n", JG_VERSION);
            return fflush(stdout) == 0 ? 0 : 1;
        default:
            return cli_getopt_error(NULL, c, argc, argv);
        }
    }
    if (optind >= argc)
        return cli_usage_error(NULL, "missing command");

    const char *name = argv[optind];
    if (strcmp(name, "help") == 0) {
        usage(stdout);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    for (size_t i = 0; i < JG_ARRAY_LEN(commands); i++) {
        if (strcmp(name, commands[i].name) != 0)
            continue;
        int sub_argc = argc - optind;
        char **sub_argv = argv + optind;
        optind = 0; /* glibc: 0 re-initialises getopt for the subcommand's words */
        int rc = commands[i].fn(sub_argc, sub_argv);
        if (fflush(stdout) != 0 && rc == 0) {
            cli_error("cannot write to standard output: %s", strerror(errno));
            rc = 1;
        }
        free(default_socket);
        return rc;
    }
    return cli_usage_error(NULL, "unknown command '%s'", name);
}
