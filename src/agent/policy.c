/* policy — the policy files and narrowing (policy.h, docs/policy.md). */
#include "policy.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* One option at *ps (name, and "(SECONDS)" for keepalive and poll) into p;
 * *seen has a bit per option, so that a line says each only once. */
static int parse_option(const char **ps, struct policy *p, unsigned *seen, char *why,
                        size_t whylen)
{
    static const struct {
        const char *name;
        int arg;        /* 0 none, 1 required, 2 optional */
    } opts[] = {{"keepalive", 2}, {"reconnect", 0}, {"callback", 0}, {"poll", 1}};
    const char *s = *ps;
    size_t n = 0;

    while ((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z'))
        n++;
    unsigned k = 0;
    for (; k < sizeof(opts) / sizeof(opts[0]); k++)
        if (strlen(opts[k].name) == n && strncasecmp(s, opts[k].name, n) == 0)
            break;
    if (n == 0 || k == sizeof(opts) / sizeof(opts[0])) {
        size_t m = n;
        while (s[m] && !is_blank(s[m]) && s[m] != ',' && s[m] != '#' && m < 40)
            m++;
        (void)xsnprintf(why, whylen, "unknown option '%.*s' (known: keepalive(SECONDS), "
                        "reconnect, callback, poll(SECONDS))", (int)(m ? m : 1), s);
        return -EINVAL;
    }
    if (*seen & (1u << k)) {
        (void)xsnprintf(why, whylen, "%s given twice", opts[k].name);
        return -EINVAL;
    }
    *seen |= 1u << k;
    s += n;
    uint64_t secs = 0;
    if (*s == '(') {
        if (opts[k].arg == 0) {
            (void)xsnprintf(why, whylen, "%s takes no value", opts[k].name);
            return -EINVAL;
        }
        const char *close = strchr(s, ')');
        char num[16];
        size_t len = close ? (size_t)(close - s - 1) : 0;
        if (!close || len == 0 || len >= sizeof(num)) {
            (void)xsnprintf(why, whylen, "%s(SECONDS) needs a whole number of seconds and ')'",
                            opts[k].name);
            return -EINVAL;
        }
        memcpy(num, s + 1, len);
        num[len] = '\0';
        if (parse_uint(num, 1, POLICY_SECONDS_MAX, &secs) < 0) {
            (void)xsnprintf(why, whylen, "%s(%s): seconds must be a whole number from 1 to %d",
                            opts[k].name, num, POLICY_SECONDS_MAX);
            return -EINVAL;
        }
        s = close + 1;
    } else if (opts[k].arg == 1) {
        (void)xsnprintf(why, whylen, "%s needs its interval: %s(SECONDS)", opts[k].name,
                        opts[k].name);
        return -EINVAL;
    }
    if (*s && !is_blank(*s) && *s != ',' && *s != '#') {
        (void)xsnprintf(why, whylen, "unexpected '%c' after %s", *s, opts[k].name);
        return -EINVAL;
    }
    switch (k) {
    case 0:
        p->keepalive = secs ? (int64_t)secs : POLICY_FOREVER;
        break;
    case 1:
        p->reconnect = 1;
        break;
    case 2:
        p->callback = 1;
        break;
    default:
        p->poll = (int64_t)secs;
        break;
    }
    *ps = s;
    return 0;
}

/* Options up to the end of s or a comment; at least one. */
static int parse_options(const char *s, struct policy *p, char *why, size_t whylen)
{
    unsigned seen = 0;
    *p = (struct policy){.keepalive = POLICY_FOREVER};
    for (;;) {
        while (is_blank(*s) || *s == ',')
            s++;
        if (!*s || *s == '#')
            break;
        int rc = parse_option(&s, p, &seen, why, whylen);
        if (rc < 0)
            return rc;
    }
    if (!seen) {
        (void)xsnprintf(why, whylen, "no options (keepalive(SECONDS), reconnect, callback, "
                        "poll(SECONDS))");
        return -EINVAL;
    }
    return 0;
}

int policy_parse_options(const char *s, struct policy *p, char *err, size_t errlen)
{
    char why[256];
    if (strlen(s) > POLICY_LINE_MAX)
        return errmsg(err, errlen, -EINVAL, "--policy: longer than %d bytes", POLICY_LINE_MAX);
    for (const char *q = s; *q; q++)
        if ((unsigned char)*q < 0x20 && *q != '\t')
            return errmsg(err, errlen, -EINVAL, "--policy: a control character");
    if (parse_options(s, p, why, sizeof(why)) < 0)
        return errmsg(err, errlen, -EINVAL, "--policy: %s", why);
    return 0;
}

/* One line (NUL-terminated, no newline) into f's next rule, or nothing for
 * a blank or comment line. */
/* Why an expression is refused as too costly to compile, or NULL. glibc's
 * regcomp copies a repeated subtree once per repeat ("x+" is "xx*",
 * "x{2,5}" five copies), so stacked or nested repeats ("a++", "(a{9}b){9}")
 * grow without bound in memory. This estimates the compiled size the same
 * way (an item's size times its repeat count, groups summed inside out) and
 * refuses more than RE_COST_MAX; host names need nothing near it. Also
 * refused: a ')' without its '(' (the expression is compiled inside a group
 * of ours, which it must not close), and a repeat right after a repeat
 * ("a**", "a+{2}"): POSIX leaves it undefined, and glibc's regcomp takes
 * time exponential in their number (found by fuzzing). Escapes and bracket
 * expressions count as one item. */
#define RE_COST_MAX 4096
#define RE_DEPTH_MAX 32
static const char *re_too_costly(const char *re, size_t n)
{
    double size[RE_DEPTH_MAX + 1] = {0}; /* per open group (0: the whole) */
    double last = 0;                      /* the size of the last item, 0: none */
    int depth = 0, repeated = 0;          /* the last item is a repeat */
    for (size_t i = 0; i < n; i++) {
        char c = re[i];
        double k = 0;
        if ((c == '*' || c == '?' || c == '+' || c == '{') && repeated)
            return "a repeat ('*', '+', '?', '{...}') right after another one";
        repeated = c == '*' || c == '?' || c == '+' || c == '{';
        if (c == '\\' && i + 1 < n) {
            i++;
            last = 1;
        } else if (c == '[') {
            size_t j = i + 1;
            if (j < n && re[j] == '^')
                j++;
            if (j < n && re[j] == ']')
                j++;
            while (j < n && re[j] != ']')
                j++;
            i = j;
            last = 1;
        } else if (c == '(') {
            if (depth == RE_DEPTH_MAX)
                return "groups are nested too deep";
            size[++depth] = 0;
            last = 0;
            continue;
        } else if (c == ')') {
            if (depth == 0)
                return "a ')' has no '('";
            last = size[depth--] + 1;
        } else if (c == '|') {
            last = 0;
            continue;
        } else if (c == '*' || c == '?') {
            k = 1; /* one node around the item */
        } else if (c == '+') {
            k = 2;
        } else if (c == '{') {
            double v = 0, most = 0;
            for (i++; i < n && re[i] != '}'; i++) {
                if (re[i] >= '0' && re[i] <= '9')
                    v = v * 10 + (re[i] - '0');
                else
                    v = 0;
                if (v > most)
                    most = v;
                if (most > RE_COST_MAX)
                    break;
            }
            k = most > 1 ? most : 1;
        } else {
            last = 1;
        }
        if (k > 0) {
            /* The item before is copied k times in all: add k - 1 copies. */
            size[depth] += last * (k - 1) + 1;
            last = last * k + 1;
        } else {
            size[depth] += last;
        }
        if (size[depth] > RE_COST_MAX)
            return "the expression would take too much memory to compile (nested or stacked "
                   "repeats)";
    }
    return NULL;
}

static int parse_line(struct policy_file *f, char *line, unsigned lineno, char *why,
                      size_t whylen)
{
    char *s = line;
    while (is_blank(*s))
        s++;
    if (!*s || *s == '#')
        return 0;
    if (*s != '"') {
        (void)xsnprintf(why, whylen, "a line starts with \"REGEX\" (the gateway's host name "
                        "in double quotes)");
        return -EINVAL;
    }
    char *end = strchr(s + 1, '"');
    if (!end) {
        (void)xsnprintf(why, whylen, "the expression has no closing '\"'");
        return -EINVAL;
    }
    size_t relen = (size_t)(end - s - 1);
    if (relen == 0 || relen > POLICY_RE_MAX) {
        (void)xsnprintf(why, whylen, "the expression must have 1 to %d bytes", POLICY_RE_MAX);
        return -EINVAL;
    }
    if (f->n == POLICY_RULES_MAX) {
        (void)xsnprintf(why, whylen, "more than %d rules", POLICY_RULES_MAX);
        return -EINVAL;
    }
    const char *costly = re_too_costly(s + 1, relen);
    if (costly) {
        (void)xsnprintf(why, whylen, "%s", costly);
        return -EINVAL;
    }
    struct policy p;
    if (end[1] && !is_blank(end[1])) {
        (void)xsnprintf(why, whylen, "options follow the expression after a blank");
        return -EINVAL;
    }
    if (parse_options(end + 1, &p, why, whylen) < 0)
        return -EINVAL;

    struct policy_rule *r = &f->rules[f->n];
    memcpy(r->text, s + 1, relen);
    r->text[relen] = '\0';
    char anchored[POLICY_RE_MAX + 8];
    (void)xsnprintf(anchored, sizeof(anchored), "^(%s)$", r->text);
    int rc = regcomp(&r->re, anchored, REG_EXTENDED | REG_ICASE);
    if (rc != 0) {
        char msg[128];
        (void)regerror(rc, &r->re, msg, sizeof(msg));
        (void)xsnprintf(why, whylen, "\"%s\": %s", r->text, msg);
        return -EINVAL;
    }
    r->line = lineno;
    r->p = p;
    f->n++;
    return 0;
}

int policy_parse(struct policy_file *f, const char *path, const char *text, size_t len,
                 char *err, size_t errlen)
{
    memset(f, 0, sizeof(*f));
    (void)xsnprintf(f->path, sizeof(f->path), "%s", path);
    if (len > POLICY_FILE_MAX)
        return errmsg(err, errlen, -EINVAL, "%s: larger than %d KiB", path,
                      POLICY_FILE_MAX / 1024);
    f->rules = xcalloc(POLICY_RULES_MAX, sizeof(*f->rules));

    unsigned lineno = 0;
    size_t off = 0;
    while (off < len) {
        lineno++;
        const char *nl = memchr(text + off, '\n', len - off);
        size_t n = nl ? (size_t)(nl - (text + off)) : len - off;
        char line[POLICY_LINE_MAX + 1], why[300];
        if (n > POLICY_LINE_MAX) {
            policy_file_free(f);
            return errmsg(err, errlen, -EINVAL, "%s:%u: longer than %d bytes", path, lineno,
                          POLICY_LINE_MAX);
        }
        memcpy(line, text + off, n);
        line[n] = '\0';
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)line[i] < 0x20 && line[i] != '\t' && line[i] != '\r') {
                policy_file_free(f);
                return errmsg(err, errlen, -EINVAL, "%s:%u: a control character", path,
                              lineno);
            }
        if (parse_line(f, line, lineno, why, sizeof(why)) < 0) {
            policy_file_free(f);
            return errmsg(err, errlen, -EINVAL, "%s:%u: %s", path, lineno, why);
        }
        off += n + (nl ? 1 : 0);
    }
    return 0;
}

int policy_load(struct policy_file *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof(*f));
    (void)xsnprintf(f->path, sizeof(f->path), "%s", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        return errmsg(err, errlen, -errno, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        (void)close(fd);
        return errmsg(err, errlen, -EINVAL, "%s: not a regular file", path);
    }
    char *buf = xmalloc(POLICY_FILE_MAX + 1);
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, POLICY_FILE_MAX + 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            (void)close(fd);
            return errmsg(err, errlen, -e, "%s: %s", path, strerror(e));
        }
        if (r == 0 || (len += (size_t)r) > POLICY_FILE_MAX)
            break;
    }
    (void)close(fd);
    int rc = policy_parse(f, path, buf, len, err, errlen);
    free(buf);
    return rc;
}

void policy_file_free(struct policy_file *f)
{
    for (unsigned i = 0; i < f->n; i++)
        regfree(&f->rules[i].re);
    free(f->rules);
    f->rules = NULL;
    f->n = 0;
}

const struct policy_rule *policy_match(const struct policy_file *f, const char *host)
{
    /* The whole name: the anchors alone can be escaped ("a)|(b"). */
    regoff_t len = (regoff_t)strlen(host);
    for (unsigned i = f->n; i-- > 0;) {
        regmatch_t m;
        if (regexec(&f->rules[i].re, host, 1, &m, 0) == 0 && m.rm_so == 0 && m.rm_eo == len)
            return &f->rules[i];
    }
    return NULL;
}

int policy_sleeps(const struct policy *p)
{
    return p->keepalive != POLICY_FOREVER && (p->callback || p->poll > 0);
}

static void fmt_keepalive(int64_t k, char *buf, size_t len)
{
    if (k == POLICY_FOREVER)
        (void)xsnprintf(buf, len, "keepalive");
    else
        (void)xsnprintf(buf, len, "keepalive(%" PRId64 ")", k);
}

void policy_format(const struct policy *p, char *buf, size_t len)
{
    char ka[32], poll[32] = "";
    fmt_keepalive(p->keepalive, ka, sizeof(ka));
    if (p->poll > 0)
        (void)xsnprintf(poll, sizeof(poll), " poll(%" PRId64 ")", p->poll);
    (void)xsnprintf(buf, len, "%s%s%s%s", ka, p->reconnect ? " reconnect" : "",
                    p->callback ? " callback" : "", poll);
}

void policy_resolve(const struct policy *site, const char *site_from, const struct policy *user,
                    const char *user_from, struct policy_result *out)
{
    memset(out, 0, sizeof(*out));
    if (!site && !user) {
        out->p = POLICY_DEFAULT;
        for (int i = 0; i < PP_COUNT; i++)
            (void)xsnprintf(out->from[i], sizeof(out->from[i]), "default");
        return;
    }
    if (!site || !user) {
        const char *from = site ? site_from : user_from;
        out->p = site ? *site : *user;
        for (int i = 0; i < PP_COUNT; i++)
            (void)xsnprintf(out->from[i], sizeof(out->from[i]), "%s", from);
        return;
    }

    struct policy *r = &out->p;
    char u[32], s[32];

    /* keepalive: the shorter. */
    if (site->keepalive == POLICY_FOREVER ||
        (user->keepalive != POLICY_FOREVER && user->keepalive <= site->keepalive)) {
        r->keepalive = user->keepalive;
        (void)xsnprintf(out->from[PP_KEEPALIVE], sizeof(out->from[0]), "%s", user_from);
    } else {
        r->keepalive = site->keepalive;
        fmt_keepalive(user->keepalive, u, sizeof(u));
        fmt_keepalive(site->keepalive, s, sizeof(s));
        (void)xsnprintf(out->from[PP_KEEPALIVE], sizeof(out->from[0]),
                        "%s (%s of %s is longer than the site's %s)", site_from, u, user_from, s);
    }

    /* reconnect and callback: only where both have it. */
    r->reconnect = user->reconnect && site->reconnect;
    if (user->reconnect && !site->reconnect)
        (void)xsnprintf(out->from[PP_RECONNECT], sizeof(out->from[0]),
                        "%s (reconnect of %s is not allowed: the site's line has none)",
                        site_from, user_from);
    else
        (void)xsnprintf(out->from[PP_RECONNECT], sizeof(out->from[0]), "%s", user_from);
    r->callback = user->callback && site->callback;
    if (user->callback && !site->callback)
        (void)xsnprintf(out->from[PP_CALLBACK], sizeof(out->from[0]),
                        "%s (callback of %s is not allowed: the site's line has none)",
                        site_from, user_from);
    else
        (void)xsnprintf(out->from[PP_CALLBACK], sizeof(out->from[0]), "%s", user_from);

    /* poll: only where both poll, at the longer interval. */
    if (user->poll == 0) {
        r->poll = 0;
        (void)xsnprintf(out->from[PP_POLL], sizeof(out->from[0]), "%s", user_from);
    } else if (site->poll == 0) {
        r->poll = 0;
        (void)xsnprintf(out->from[PP_POLL], sizeof(out->from[0]),
                        "%s (poll(%" PRId64 ") of %s is not allowed: the site's line has none)",
                        site_from, user->poll, user_from);
    } else if (user->poll < site->poll) {
        r->poll = site->poll;
        (void)xsnprintf(out->from[PP_POLL], sizeof(out->from[0]),
                        "%s (poll(%" PRId64 ") of %s is more often than the site's poll(%" PRId64
                        "))", site_from, user->poll, user_from, site->poll);
    } else {
        r->poll = user->poll;
        (void)xsnprintf(out->from[PP_POLL], sizeof(out->from[0]), "%s", user_from);
    }

    /* Where the site lets idle tunnels close, the user may not keep one
     * open for ever by dropping every way back. */
    if (policy_sleeps(site) && !r->callback && r->poll == 0) {
        r->callback = site->callback;
        r->poll = site->poll;
        (void)xsnprintf(out->from[PP_CALLBACK], sizeof(out->from[0]),
                        "%s (%s would keep the tunnel open for ever)", site_from, user_from);
        memcpy(out->from[PP_POLL], out->from[PP_CALLBACK], sizeof(out->from[0]));
    }
}

const char *policy_site_path(void)
{
    const char *p = getenv("JOBGATE_SITE_POLICY");
    return p && *p ? p : POLICY_SITE_FILE;
}

int policy_user_path(char *buf, size_t len)
{
    const char *x = getenv("XDG_CONFIG_HOME");
    if (x && x[0] == '/')
        return xsnprintf(buf, len, "%s/jobgate/policy", x) < 0 ? -ENAMETOOLONG : 0;
    const char *h = getenv("HOME");
    if (h && h[0] == '/')
        return xsnprintf(buf, len, "%s/.config/jobgate/policy", h) < 0 ? -ENAMETOOLONG : 0;
    return -ENOENT;
}

int policy_for_gateway(const char *host, const char *options, struct policy_result *out,
                       char *err, size_t errlen)
{
    struct policy_file site, user;
    char site_from[600], user_from[600];
    const struct policy_rule *sr, *ur = NULL;
    struct policy opt;
    int rc = policy_load(&site, policy_site_path(), err, errlen);
    if (rc < 0)
        return rc;
    sr = policy_match(&site, host);
    if (sr)
        (void)xsnprintf(site_from, sizeof(site_from), "site %s:%u", site.path, sr->line);

    memset(&user, 0, sizeof(user));
    if (options) {
        rc = policy_parse_options(options, &opt, err, errlen);
        (void)xsnprintf(user_from, sizeof(user_from), "--policy");
    } else {
        char path[512];
        if (policy_user_path(path, sizeof(path)) == 0) {
            rc = policy_load(&user, path, err, errlen);
            if (rc == -EACCES) {
                /* Not the user's to read (a job's HOME that is another's):
                 * as if there were none, said once. */
                fprintf(stderr, "jobgate: %s; going without it\n", err);
                rc = 0;
            }
            if (rc == 0 && (ur = policy_match(&user, host)) != NULL) {
                opt = ur->p;
                (void)xsnprintf(user_from, sizeof(user_from), "user %s:%u", user.path,
                                ur->line);
            }
        }
    }
    if (rc == 0)
        policy_resolve(sr ? &sr->p : NULL, site_from, options || ur ? &opt : NULL, user_from,
                       out);
    policy_file_free(&site);
    policy_file_free(&user);
    return rc;
}
