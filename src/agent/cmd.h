/*
 * cmd — the subcommands of jobgate and the few helpers they share with
 * main.c: how errors are reported and where the control socket is.
 *
 * Exit statuses: 0 success, 1 failure (message "jobgate: ..." on stderr),
 * 2 usage error (one-line hint), and for run the status of the app.
 */
#ifndef JG_CMD_H
#define JG_CMD_H

#include <stddef.h>
#include <stdint.h>

#define EXIT_USAGE 2

/* Each takes the subcommand's own argv (argv[0] is the command name) and
 * returns the process exit status. */
int cmd_run(int argc, char **argv);
int cmd_ls(int argc, char **argv);
int cmd_link(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
int cmd_rm(int argc, char **argv);
int cmd_tunnel(int argc, char **argv);
int cmd_policy(int argc, char **argv);
/* jobgate tunnel --hold: the shared tunnel's holder (cmd_hold.c). */
int cmd_hold(int argc, char **argv);

/* The host name that policy lines match (policy.h), from GATEWAY as -g
 * (https://HOST[:PORT]), --via (ssh:HOST) or a bare host name. 0, or
 * -EINVAL with a sentence in err. */
int cli_gateway_host(const char *arg, char *host, size_t len, char *err, size_t errlen);

/* Prints "jobgate: <message>" on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "jobgate: <message> (try 'jobgate <cmd> --help')" and returns
 * EXIT_USAGE; cmd may be NULL for the top level. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Reports what getopt_long() returned as c ('?' or ':') as a usage error and
 * returns EXIT_USAGE. Needs opterr = 0 and an optstring starting with ':'
 * (after any '+'), so that a missing value is told apart from an unknown
 * option.
 */
int cli_getopt_error(const char *cmd, int c, int argc, char **argv);

/* The control socket: -s, else $JOBGATE_CONTROL, else the personal
 * gateway's well-known path. NULL (after printing why) if none can be found. */
const char *cli_control_socket(void);

/* One request to the gateway's control socket at sock (takes req): its
 * answer (caller decrefs), or NULL after printing why. */
struct json_t;
struct json_t *cli_call(const char *sock, struct json_t *req);

/* A link lifetime from --ttl, checked here (1 s to 7 days) so that a typo
 * is caught before anything starts. Returns 0, or EXIT_USAGE after printing
 * why. */
int parse_link_ttl(const char *cmd, const char *arg, int64_t *ttl);

/* Copies s for a terminal: bytes that are not printable ASCII become '?',
 * so that a name from the gateway cannot move the cursor. Caller frees. */
char *cli_printable(const char *s);

#endif
