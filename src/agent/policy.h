/*
 * policy — how `jobgate run` reaches a gateway (docs/policy.md): the policy
 * files and the rule that a user's policy may only narrow the site's.
 *
 * A policy file holds lines of
 *     "<extended regular expression on the gateway's host name>" <option>...
 * with options keepalive(SECONDS) (or keepalive alone: for ever), reconnect,
 * callback and poll(SECONDS), separated by blanks or commas; '#' starts a
 * comment. The expression must match the whole host name (case does not
 * matter); the last matching line wins, so a catch-all ".*" goes first.
 *
 * Three sources, in this order: the site's file (/etc/jobgate/policy, or
 * $JOBGATE_SITE_POLICY), then the user's ($XDG_CONFIG_HOME/jobgate/policy,
 * else ~/.config/jobgate/policy) or, for one run, `--policy "OPTIONS"`
 * instead of the user's file. Without any matching line the policy is the
 * one that works on every network: persistent, with reconnect.
 *
 * Narrowing: where both the site and the user have a line, the user may
 * turn reconnect, callback or poll off, shorten keepalive and lengthen the
 * poll interval; never the reverse (a widening part keeps the site's value,
 * and policy_explain says so). A user's line that would leave the tunnel
 * open for ever where the site lets it close keeps the site's ways back.
 *
 * Pure: no globals, any thread. Every input is bounded (file 64 KiB, line
 * 1024 bytes, 256 rules, expression 255 bytes) and every error names its
 * file and line.
 */
#ifndef JG_POLICY_H
#define JG_POLICY_H

#include <regex.h>
#include <stddef.h>
#include <stdint.h>

#define POLICY_FILE_MAX (64 * 1024)
#define POLICY_LINE_MAX 1024
#define POLICY_RULES_MAX 256
#define POLICY_RE_MAX 255
#define POLICY_SECONDS_MAX 86400     /* keepalive and poll: at most a day */
#define POLICY_SITE_FILE "/etc/jobgate/policy"
#define POLICY_FOREVER (-1)          /* keepalive: never close an idle tunnel */

/* What the agent does; a whole line's options. */
struct policy {
    int64_t keepalive;   /* seconds, or POLICY_FOREVER */
    int reconnect;
    int callback;
    int64_t poll;        /* seconds; 0: no polling */
};

/* The default: persistent, with reconnect. */
#define POLICY_DEFAULT ((struct policy){.keepalive = POLICY_FOREVER, .reconnect = 1})

/* Where each part of a resolved policy came from, for `jobgate policy`. */
enum policy_part { PP_KEEPALIVE, PP_RECONNECT, PP_CALLBACK, PP_POLL, PP_COUNT };

struct policy_rule {
    regex_t re;
    char text[POLICY_RE_MAX + 1];
    unsigned line;
    struct policy p;
};

struct policy_file {
    char path[512];      /* for messages; "--policy" for the option */
    struct policy_rule *rules;
    unsigned n;
};

/* Parses text[0..len) (a file's content, named path in errors) into f.
 * 0, or -EINVAL with "PATH:LINE: why" in err. */
int policy_parse(struct policy_file *f, const char *path, const char *text, size_t len,
                 char *err, size_t errlen);
/* Reads and parses the file at path; a missing file is an empty policy
 * (0 with f->n == 0). -errno with "PATH: why" or "PATH:LINE: why" in err. */
int policy_load(struct policy_file *f, const char *path, char *err, size_t errlen);
void policy_file_free(struct policy_file *f);

/* The options of --policy ("keepalive(60) poll(30)"), no expression.
 * 0, or -EINVAL with "--policy: why" in err. */
int policy_parse_options(const char *s, struct policy *p, char *err, size_t errlen);

/* The last rule of f whose expression matches host as a whole, or NULL. */
const struct policy_rule *policy_match(const struct policy_file *f, const char *host);

/* One resolved policy and the story of each part. */
struct policy_result {
    struct policy p;
    char from[PP_COUNT][600];    /* "site /etc/jobgate/policy:3", "default", ... and
                                  * why a part differs from what the user asked */
};

/* The policy for a gateway: site and user are the matching lines (NULL:
 * none) with their origins ("site FILE:LINE", "user FILE:LINE",
 * "--policy"). */
void policy_resolve(const struct policy *site, const char *site_from, const struct policy *user,
                    const char *user_from, struct policy_result *out);

/* "keepalive(60) reconnect poll(30)"; "keepalive reconnect" for the default. */
void policy_format(const struct policy *p, char *buf, size_t len);

/* 1 when the tunnel ever closes while idle: a finite keepalive and a way
 * back (callback or poll). Otherwise keepalive changes nothing. */
int policy_sleeps(const struct policy *p);

/* The site's file: $JOBGATE_SITE_POLICY, else POLICY_SITE_FILE. */
const char *policy_site_path(void);
/* The user's file into buf: $XDG_CONFIG_HOME/jobgate/policy, else
 * $HOME/.config/jobgate/policy. 0, or -ENOENT (neither is set). */
int policy_user_path(char *buf, size_t len);

/*
 * Everything together for `jobgate run` and `jobgate policy`: loads both
 * files, matches host, resolves (options: --policy, or NULL). 0, or -errno
 * with err (a file that does not parse, --policy that does not). A user's
 * file that cannot be read for permissions is skipped with a line on
 * standard error; the site's is an error.
 */
int policy_for_gateway(const char *host, const char *options, struct policy_result *out,
                       char *err, size_t errlen);

#endif
