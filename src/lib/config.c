/* config — see config.h. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util.h"

#define CONFIG_MAX_LINE 4096
#define CONFIG_MAX_FILE (1024 * 1024)
#define SUN_PATH_MAX (sizeof(((struct sockaddr_un *)0)->sun_path))

#define MINUTE 60
#define HOUR (60 * MINUTE)
#define DAY (24 * HOUR)

/* ---- well-known paths --------------------------------------------------- */

/* An environment variable that is set, non-empty and an absolute path. */
static const char *abs_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || v[0] != '/')
        return NULL;
    return v;
}

/* dir + "/" + rest, without doubling a trailing slash of dir ("/" stays "/"). */
static char *path_join(const char *dir, const char *rest)
{
    size_t dlen = strlen(dir);
    while (dlen > 1 && dir[dlen - 1] == '/')
        dlen--;
    if (dlen == 1 && dir[0] == '/')
        dlen = 0;
    size_t rlen = strlen(rest);
    char *p = xmalloc(dlen + 1 + rlen + 1);
    memcpy(p, dir, dlen);
    p[dlen] = '/';
    memcpy(p + dlen + 1, rest, rlen + 1);
    return p;
}

char *config_default_state_dir(void)
{
    const char *xdg = abs_env("XDG_STATE_HOME");
    if (xdg)
        return path_join(xdg, "jobgate");
    const char *home = abs_env("HOME");
    if (home)
        return path_join(home, ".local/state/jobgate");
    return NULL;
}

char *config_default_control_socket(const char *state_dir)
{
    const char *run = abs_env("XDG_RUNTIME_DIR");
    struct stat st;
    if (run && stat(run, &st) == 0 && S_ISDIR(st.st_mode))
        return path_join(run, "jobgate/control.sock");
    if (!state_dir)
        return NULL;
    return path_join(state_dir, "control.sock");
}

/* ---- defaults and lifetime ---------------------------------------------- */

/*
 * Every field is filled even when a path cannot be derived, so the caller can
 * still config_free() the result or load a file that names the paths.
 */
int config_defaults(struct jg_config *c)
{
    memset(c, 0, sizeof(*c));
    c->shared = 0;
    c->listen = xstrdup("127.0.0.1:8443");
    c->domain = xstrdup("localhost");
    c->public_port = 0;
    c->state_dir = config_default_state_dir();
    c->control_socket = config_default_control_socket(c->state_dir);
    c->cert_file = NULL;
    c->key_file = NULL;
    c->use_syslog = 0;
    c->max_connections = 10000;
    c->workers = 0;
    c->drain = 10;
    c->run_user = NULL;
    c->max_request_line = 8192;
    c->max_header_bytes = 32768;
    c->max_headers = 100;
    c->t_handshake = 10;
    c->t_request_head = 30;
    c->t_idle = 75;
    c->t_connect = 10;
    c->t_io = 300;
    c->t_tunnel = HOUR;
    c->link_ttl = 10 * MINUTE;
    c->session_ttl = 12 * HOUR;
    c->ping_interval = 15;
    c->ping_timeout = 30;
    c->reconnect_wait = 5;
    c->grace = 10 * MINUTE;
    c->hold = 20;
    c->hold_max = 32;
    c->poll_min = 5;
    c->hello_wait = 5;
    c->pending_max = 1024;
    c->pending_per_address = 32;
    c->munge_socket = NULL;
    c->node_users = NULL;
    c->client_ca = NULL;
    c->gridmap = NULL;
    c->job_cert_margin = 15 * MINUTE;
    c->job_cert_max = 7 * DAY;
    c->job_check = 30;
    c->squeue = NULL;
    c->quota_routes = 256;
    c->quota_links = 1024;
    c->quota_tunnels = 64;
    c->quota_control = 16;
    c->quota_held = 64;
    if (!c->state_dir || !c->control_socket)
        return -ENOENT;
    if (strlen(c->control_socket) >= SUN_PATH_MAX)
        return -ENAMETOOLONG;
    return 0;
}

static void free_str(char **p)
{
    free(*p);
    *p = NULL;
}

void config_free(struct jg_config *c)
{
    if (!c)
        return;
    free_str(&c->listen);
    free_str(&c->domain);
    free_str(&c->state_dir);
    free_str(&c->control_socket);
    free_str(&c->cert_file);
    free_str(&c->key_file);
    free_str(&c->munge_socket);
    free_str(&c->node_users);
    free_str(&c->run_user);
    free_str(&c->squeue);
    free_str(&c->client_ca);
    free_str(&c->gridmap);
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void config_copy(struct jg_config *dst, const struct jg_config *src)
{
    *dst = *src;
    dst->listen = dup_or_null(src->listen);
    dst->domain = dup_or_null(src->domain);
    dst->state_dir = dup_or_null(src->state_dir);
    dst->control_socket = dup_or_null(src->control_socket);
    dst->cert_file = dup_or_null(src->cert_file);
    dst->key_file = dup_or_null(src->key_file);
    dst->munge_socket = dup_or_null(src->munge_socket);
    dst->node_users = dup_or_null(src->node_users);
    dst->run_user = dup_or_null(src->run_user);
    dst->squeue = dup_or_null(src->squeue);
    dst->client_ca = dup_or_null(src->client_ca);
    dst->gridmap = dup_or_null(src->gridmap);
}

/* ---- value syntax ------------------------------------------------------- */

static int is_host_char(unsigned char ch)
{
    return ch > ' ' && ch < 0x7f && ch != '[' && ch != ']' && ch != '/';
}

int config_split_hostport(const char *s, char *host, size_t hostlen, unsigned *port)
{
    const char *h, *hend, *p;
    if (!s)
        return -EINVAL;
    if (s[0] == '[') {
        h = s + 1;
        hend = strchr(h, ']');
        if (!hend || hend[1] != ':')
            return -EINVAL;
        p = hend + 2;
        if (!memchr(h, ':', (size_t)(hend - h)))
            return -EINVAL; /* brackets are for IPv6 only */
    } else {
        h = s;
        hend = strchr(s, ':');
        if (!hend)
            return -EINVAL;
        p = hend + 1;
        if (strchr(p, ':'))
            return -EINVAL; /* a bare IPv6 address is ambiguous */
    }
    size_t hl = (size_t)(hend - h);
    if (hl == 0)
        return -EINVAL;
    for (size_t i = 0; i < hl; i++)
        if (!is_host_char((unsigned char)h[i]))
            return -EINVAL;
    uint64_t v;
    if (parse_uint(p, 1, 65535, &v) < 0)
        return -EINVAL;
    if (host) {
        if (hl >= hostlen)
            return -EINVAL;
        memcpy(host, h, hl);
        host[hl] = '\0';
    }
    if (port)
        *port = (unsigned)v;
    return 0;
}

/* listen must be a numeric address the daemon can bind without a resolver. */
static int listen_ok(const char *s)
{
    char host[256];
    unsigned char addr[sizeof(struct in6_addr)];
    if (config_split_hostport(s, host, sizeof(host), NULL) < 0)
        return 0;
    if (s[0] == '[')
        return inet_pton(AF_INET6, host, addr) == 1;
    return inet_pton(AF_INET, host, addr) == 1;
}

/*
 * Checks a DNS name and lower-cases it in place. An all-digit last label is
 * refused: that is an IPv4 address, which cannot have <alias>. subdomains.
 */
static int domain_normalize(char *d)
{
    size_t len = strlen(d);
    size_t label = 0;
    int digits_only = 1;
    if (len == 0 || len > 253)
        return 0;
    for (size_t i = 0; i <= len; i++) {
        unsigned char ch = (unsigned char)d[i];
        if (ch == '.' || ch == '\0') {
            if (label == 0 || label > 63 || d[i - 1] == '-')
                return 0;
            if (ch == '\0' && digits_only)
                return 0;
            label = 0;
            digits_only = 1;
            continue;
        }
        if (ch >= 'A' && ch <= 'Z')
            d[i] = (char)(ch - 'A' + 'a');
        else if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-'))
            return 0;
        if (label == 0 && ch == '-')
            return 0;
        if (ch < '0' || ch > '9')
            digits_only = 0;
        label++;
    }
    return 1;
}

int config_users_ok(const char *v)
{
    int words = 0;
    size_t wlen = 0;
    for (const char *p = v;; p++) {
        if (*p == ' ' || *p == '\t' || *p == '\0') {
            if (wlen > 0 && ++words > CONFIG_USERS_MAX)
                return 0;
            wlen = 0;
            if (*p == '\0')
                return words > 0;
            continue;
        }
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || (*p == '-' && wlen > 0)) || ++wlen > 32)
            return 0;
    }
}

/* ---- the key table ------------------------------------------------------ */

enum kind { K_LISTEN, K_DOMAIN, K_PATH, K_SOCKPATH, K_LOG, K_UINT, K_DURATION, K_USERS, K_USER };

struct keydef {
    const char *section;
    const char *key;
    enum kind kind;
    size_t off;
    int64_t min, max;
    const char *range; /* how the range reads in messages */
    int live;          /* a running gateway takes a change on SIGHUP (else: at the next start) */
};

#define LIVE 1
#define AT_START 0

#define OFF(f) offsetof(struct jg_config, f)

static const struct keydef keys[] = {
    {"gateway", "listen", K_LISTEN, OFF(listen), 0, 0, NULL, AT_START},
    {"gateway", "domain", K_DOMAIN, OFF(domain), 0, 0, NULL, AT_START},
    {"gateway", "public_port", K_UINT, OFF(public_port), 1, 65535, "1..65535", AT_START},
    {"gateway", "state_dir", K_PATH, OFF(state_dir), 0, 0, NULL, AT_START},
    {"gateway", "control_socket", K_SOCKPATH, OFF(control_socket), 0, 0, NULL, AT_START},
    {"gateway", "cert", K_PATH, OFF(cert_file), 0, 0, NULL, LIVE},
    {"gateway", "key", K_PATH, OFF(key_file), 0, 0, NULL, LIVE},
    {"gateway", "log", K_LOG, OFF(use_syslog), 0, 0, NULL, AT_START},
    {"gateway", "max_connections", K_UINT, OFF(max_connections), 1, 1000000, "1..1000000", LIVE},
    {"gateway", "workers", K_UINT, OFF(workers), 0, 64, "0..64 (0: one per CPU, at most 8)",
     AT_START},
    {"gateway", "drain", K_DURATION, OFF(drain), 0, 10 * MINUTE, "0s..10m", LIVE},
    {"gateway", "user", K_USER, OFF(run_user), 0, 0, NULL, AT_START},
    {"limits", "request_line", K_UINT, OFF(max_request_line), 256, 65536, "256..65536", LIVE},
    {"limits", "header_bytes", K_UINT, OFF(max_header_bytes), 1024, 1048576, "1024..1048576", LIVE},
    {"limits", "headers", K_UINT, OFF(max_headers), 8, 256, "8..256", LIVE},
    {"timeouts", "handshake", K_DURATION, OFF(t_handshake), 1, DAY, "1s..1d", LIVE},
    {"timeouts", "request_head", K_DURATION, OFF(t_request_head), 1, DAY, "1s..1d", LIVE},
    {"timeouts", "idle", K_DURATION, OFF(t_idle), 1, DAY, "1s..1d", LIVE},
    {"timeouts", "connect", K_DURATION, OFF(t_connect), 1, DAY, "1s..1d", LIVE},
    {"timeouts", "io", K_DURATION, OFF(t_io), 1, DAY, "1s..1d", LIVE},
    {"timeouts", "tunnel", K_DURATION, OFF(t_tunnel), 1, 7 * DAY, "1s..7d", LIVE},
    {"links", "ttl", K_DURATION, OFF(link_ttl), 1, 7 * DAY, "1s..7d", LIVE},
    {"links", "session_ttl", K_DURATION, OFF(session_ttl), 10, 30 * DAY, "10s..30d", LIVE},
    {"tunnel", "ping_interval", K_DURATION, OFF(ping_interval), 1, HOUR, "1s..1h", LIVE},
    {"tunnel", "ping_timeout", K_DURATION, OFF(ping_timeout), 1, HOUR, "1s..1h", LIVE},
    {"tunnel", "reconnect_wait", K_DURATION, OFF(reconnect_wait), 0, MINUTE, "0s..1m", LIVE},
    {"tunnel", "grace", K_DURATION, OFF(grace), 1, 7 * DAY, "1s..7d", LIVE},
    {"tunnel", "hold", K_DURATION, OFF(hold), 0, 5 * MINUTE, "0s..5m", LIVE},
    {"tunnel", "hold_max", K_UINT, OFF(hold_max), 0, 10000, "0..10000", LIVE},
    {"tunnel", "poll_min", K_DURATION, OFF(poll_min), 1, HOUR, "1s..1h", LIVE},
    {"tunnel", "hello_wait", K_DURATION, OFF(hello_wait), 1, MINUTE, "1s..1m", LIVE},
    {"tunnel", "pending_max", K_UINT, OFF(pending_max), 1, 1000000, "1..1000000", LIVE},
    {"tunnel", "pending_per_address", K_UINT, OFF(pending_per_address), 1, 1000000, "1..1000000",
     LIVE},
    {"tunnel", "munge_socket", K_SOCKPATH, OFF(munge_socket), 0, 0, NULL, LIVE},
    {"tunnel", "client_ca", K_PATH, OFF(client_ca), 0, 0, NULL, LIVE},
    {"tunnel", "gridmap", K_PATH, OFF(gridmap), 0, 0, NULL, LIVE},
    {"slurm", "node_users", K_USERS, OFF(node_users), 0, 0, NULL, LIVE},
    {"slurm", "job_cert_margin", K_DURATION, OFF(job_cert_margin), 0, DAY, "0s..1d", LIVE},
    {"slurm", "job_cert_max", K_DURATION, OFF(job_cert_max), MINUTE, 366 * DAY, "1m..366d", LIVE},
    {"slurm", "job_check", K_DURATION, OFF(job_check), 0, HOUR, "0s..1h (0: never)", AT_START},
    {"slurm", "squeue", K_PATH, OFF(squeue), 0, 0, NULL, LIVE},
    {"quota", "routes", K_UINT, OFF(quota_routes), 1, 1000000, "1..1000000", LIVE},
    {"quota", "links", K_UINT, OFF(quota_links), 1, 1000000, "1..1000000", LIVE},
    {"quota", "tunnels", K_UINT, OFF(quota_tunnels), 1, 1000000, "1..1000000", LIVE},
    {"quota", "control_clients", K_UINT, OFF(quota_control), 1, 512, "1..512", LIVE},
    {"quota", "held", K_UINT, OFF(quota_held), 0, 1000000, "0..1000000", LIVE},
};

#define NKEYS JG_ARRAY_LEN(keys)

static const char *const sections[] = {"gateway", "limits", "timeouts", "links", "tunnel",
                                       "slurm", "quota"};

/* ---- errors ------------------------------------------------------------- */

/* Writes "PATH:LINE: reason" (or "PATH: reason" for line 0). Returns -EINVAL. */
__attribute__((format(printf, 5, 6)))
static int fail(char *err, size_t errlen, const char *path, unsigned line, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return -EINVAL;
    int n;
    if (line)
        n = snprintf(err, errlen, "%s:%u: ", path, line);
    else
        n = snprintf(err, errlen, "%s: ", path);
    if (n < 0 || (size_t)n >= errlen)
        return -EINVAL;
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(err + n, errlen - (size_t)n, fmt, ap); /* truncation is acceptable */
    va_end(ap);
    return -EINVAL;
}

/* ---- parsing ------------------------------------------------------------ */

/* Sets one key in w from value v (trimmed, non-empty). 0 or fail(). */
static int set_value(struct jg_config *w, const struct keydef *k, const char *v, char *err,
                     size_t errlen, const char *path, unsigned line)
{
    char *base = (char *)w;
    switch (k->kind) {
    case K_LISTEN:
        if (!listen_ok(v))
            return fail(err, errlen, path, line,
                        "invalid 'listen' address '%s' (expected IPV4:PORT or [IPV6]:PORT, "
                        "port 1..65535)", v);
        break;
    case K_DOMAIN:
        break; /* checked on the copy below */
    case K_USER:
        if (!config_users_ok(v) || strpbrk(v, " \t"))
            return fail(err, errlen, path, line,
                        "'%s' must be one user name or uid (A-Z a-z 0-9 . _ -), not '%s'",
                        k->key, v);
        break;
    case K_USERS:
        if (!config_users_ok(v))
            return fail(err, errlen, path, line,
                        "'%s' must be user names or uids separated by blanks (at most %d, "
                        "each of A-Z a-z 0-9 . _ -), not '%s'", k->key, CONFIG_USERS_MAX, v);
        break;
    case K_PATH:
    case K_SOCKPATH:
        if (v[0] != '/')
            return fail(err, errlen, path, line, "'%s' must be an absolute path, not '%s'",
                        k->key, v);
        if (k->kind == K_SOCKPATH && strlen(v) >= SUN_PATH_MAX)
            return fail(err, errlen, path, line,
                        "'%s' is too long for a unix socket (%zu bytes, at most %zu)", k->key,
                        strlen(v), SUN_PATH_MAX - 1);
        break;
    case K_LOG: {
        int *dst = (int *)(base + k->off);
        if (strcmp(v, "stderr") == 0)
            *dst = 0;
        else if (strcmp(v, "syslog") == 0)
            *dst = 1;
        else
            return fail(err, errlen, path, line, "'log' must be 'stderr' or 'syslog', not '%s'",
                        v);
        return 0;
    }
    case K_UINT: {
        uint64_t u;
        int r = parse_uint(v, (uint64_t)k->min, (uint64_t)k->max, &u);
        if (r == -ERANGE)
            return fail(err, errlen, path, line, "value of '%s' out of range (%s): '%s'", k->key,
                        k->range, v);
        if (r < 0)
            return fail(err, errlen, path, line, "invalid number for '%s': '%s'", k->key, v);
        *(unsigned *)(base + k->off) = (unsigned)u;
        return 0;
    }
    case K_DURATION: {
        int64_t d;
        int r = parse_duration(v, &d);
        if (r == -ERANGE || (r == 0 && (d < k->min || d > k->max)))
            return fail(err, errlen, path, line, "value of '%s' out of range (%s): '%s'", k->key,
                        k->range, v);
        if (r < 0)
            return fail(err, errlen, path, line,
                        "invalid duration for '%s': '%s' (use e.g. 30s, 10m, 2h, 1d)", k->key, v);
        *(int64_t *)(base + k->off) = d;
        return 0;
    }
    }

    /* the string kinds */
    char *copy = xstrdup(v);
    if (k->kind == K_DOMAIN && !domain_normalize(copy)) {
        free(copy);
        return fail(err, errlen, path, line,
                    "'domain' is not a valid DNS name: '%s' (labels of a-z, 0-9 and '-', "
                    "separated by dots)", v);
    }
    char **dst = (char **)(base + k->off);
    free(*dst);
    *dst = copy;
    return 0;
}

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Trims blanks at both ends of [*s, *s + *len). */
static void trim(const char **s, size_t *len)
{
    while (*len > 0 && is_blank(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && is_blank((*s)[*len - 1]))
        (*len)--;
}

static int section_index(const char *name)
{
    for (size_t i = 0; i < JG_ARRAY_LEN(sections); i++)
        if (strcmp(sections[i], name) == 0)
            return (int)i;
    return -1;
}

static const struct keydef *find_key(const char *section, const char *key)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].key, key) == 0)
            return &keys[i];
    return NULL;
}

static const struct keydef *find_key_any_section(const char *key)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].key, key) == 0)
            return &keys[i];
    return NULL;
}

/* Parses buf (n bytes) into w. line_of[i] receives the line that set keys[i]. */
static int parse_ini(struct jg_config *w, const char *buf, size_t n, const char *path,
                     unsigned line_of[NKEYS], char *err, size_t errlen)
{
    const char *p = buf;
    const char *end = buf + n;
    const char *section = NULL;
    unsigned lineno = 0;

    if (n >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
        p += 3; /* a UTF-8 byte order mark from some editors */

    while (p < end) {
        lineno++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        const char *s = p;
        p = nl ? nl + 1 : end;

        if (len > 0 && s[len - 1] == '\r')
            len--;
        if (len > CONFIG_MAX_LINE)
            return fail(err, errlen, path, lineno, "line too long (more than %d bytes)",
                        CONFIG_MAX_LINE);
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)s[i];
            if ((ch < ' ' && ch != '\t') || ch == 0x7f)
                return fail(err, errlen, path, lineno, "control character 0x%02x in line",
                            (unsigned)ch);
        }
        trim(&s, &len);
        if (len == 0 || s[0] == '#' || s[0] == ';')
            continue;

        /* lengths are at most CONFIG_MAX_LINE here, so these buffers hold any part */
        if (s[0] == '[') {
            const char *close = memchr(s, ']', len);
            if (!close)
                return fail(err, errlen, path, lineno, "section header without closing ']'");
            if ((size_t)(close - s) != len - 1)
                return fail(err, errlen, path, lineno, "unexpected text after ']'");
            const char *name = s + 1;
            size_t nlen = (size_t)(close - name);
            trim(&name, &nlen);
            char sec[CONFIG_MAX_LINE + 1];
            memcpy(sec, name, nlen);
            sec[nlen] = '\0';
            if (nlen == 0)
                return fail(err, errlen, path, lineno, "empty section name");
            int idx = section_index(sec);
            if (idx < 0)
                return fail(err, errlen, path, lineno, "unknown section [%s]", sec);
            section = sections[idx];
            continue;
        }

        const char *eq = memchr(s, '=', len);
        if (!eq)
            return fail(err, errlen, path, lineno,
                        "expected 'key = value', '[section]' or a comment");
        const char *ks = s;
        size_t klen = (size_t)(eq - s);
        const char *vs = eq + 1;
        size_t vlen = len - klen - 1;
        trim(&ks, &klen);
        trim(&vs, &vlen);
        char key[CONFIG_MAX_LINE + 1], val[CONFIG_MAX_LINE + 1];
        memcpy(key, ks, klen);
        key[klen] = '\0';
        memcpy(val, vs, vlen);
        val[vlen] = '\0';

        if (klen == 0)
            return fail(err, errlen, path, lineno, "missing key before '='");
        if (!section) {
            const struct keydef *any = find_key_any_section(key);
            if (any)
                return fail(err, errlen, path, lineno,
                            "key '%s' outside of a section (it belongs in [%s])", key,
                            any->section);
            return fail(err, errlen, path, lineno, "key '%s' outside of a section", key);
        }
        const struct keydef *k = find_key(section, key);
        if (!k)
            return fail(err, errlen, path, lineno, "unknown key '%s' in [%s]", key, section);
        size_t ki = (size_t)(k - keys);
        if (line_of[ki])
            return fail(err, errlen, path, lineno,
                        "duplicate key '%s' in [%s] (first set on line %u)", key, section,
                        line_of[ki]);
        if (vlen == 0)
            return fail(err, errlen, path, lineno, "empty value for '%s'", key);
        int r = set_value(w, k, val, err, errlen, path, lineno);
        if (r < 0)
            return r;
        line_of[ki] = lineno;
    }
    return 0;
}

static size_t key_index(const char *section, const char *key)
{
    const struct keydef *k = find_key(section, key);
    return (size_t)(k - keys);
}

/* Checks that involve several keys or the defaults, after the whole file. */
static int check_whole(struct jg_config *w, const unsigned line_of[NKEYS], const char *path,
                       char *err, size_t errlen)
{
    unsigned l_cert = line_of[key_index("gateway", "cert")];
    unsigned l_key = line_of[key_index("gateway", "key")];
    unsigned l_state = line_of[key_index("gateway", "state_dir")];
    unsigned l_sock = line_of[key_index("gateway", "control_socket")];

    if (!w->cert_file != !w->key_file)
        return fail(err, errlen, path, w->cert_file ? l_cert : l_key,
                    "'cert' and 'key' go together: set both or neither");
    if (!w->client_ca != !w->gridmap)
        return fail(err, errlen, path,
                    line_of[key_index("tunnel", w->client_ca ? "client_ca" : "gridmap")],
                    "'client_ca' and 'gridmap' go together: a certificate is accepted only "
                    "for the user the grid-mapfile names");

    if (!w->state_dir)
        return fail(err, errlen, path, 0,
                    "no 'state_dir' in [gateway] and no default "
                    "(neither XDG_STATE_HOME nor HOME is set)");
    /* The control socket follows a state directory set in the file, as it
     * would by default, unless the file names it too. */
    if (l_state && !l_sock) {
        free(w->control_socket);
        w->control_socket = config_default_control_socket(w->state_dir);
    }
    if (!w->control_socket)
        return fail(err, errlen, path, 0, "no 'control_socket' in [gateway] and no default");
    if (strlen(w->control_socket) >= SUN_PATH_MAX)
        return fail(err, errlen, path, l_sock ? l_sock : l_state,
                    "control socket path '%s' is too long for a unix socket (at most %zu bytes); "
                    "set 'control_socket' in [gateway]",
                    w->control_socket, SUN_PATH_MAX - 1);
    if (!w->listen || !w->domain)
        return fail(err, errlen, path, 0, "no 'listen' or 'domain' in [gateway]");
    return 0;
}

/* Reads the whole file, at most CONFIG_MAX_FILE bytes, NUL-terminated. */
static int read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        (void)fail(err, errlen, path, 0, "cannot open: %s", strerror(e));
        return -e;
    }
    size_t cap = 4096, len = 0;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = xrealloc(buf, cap + 1);
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            (void)fail(err, errlen, path, 0, "cannot read: %s", strerror(e));
            free(buf);
            (void)close(fd);
            return -e;
        }
        if (r == 0)
            break;
        len += (size_t)r;
        if (len > CONFIG_MAX_FILE)
            break;
    }
    (void)close(fd);
    if (len > CONFIG_MAX_FILE) {
        free(buf);
        return fail(err, errlen, path, 0, "file is larger than %d bytes", CONFIG_MAX_FILE);
    }
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return 0;
}

/*
 * The file is applied to a copy; c changes only when the whole file is good,
 * so a failed load leaves c as it was. c must hold defaults (config_defaults)
 * or be all zero, in which case the defaults are filled first.
 */
int config_load(struct jg_config *c, const char *path, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!path)
        return -EINVAL;

    char *buf = NULL;
    size_t len = 0;
    int r = read_file(path, &buf, &len, err, errlen);
    if (r < 0)
        return r;

    struct jg_config w;
    if (!c->listen && !c->domain)
        (void)config_defaults(&w); /* missing paths are reported by check_whole */
    else
        config_copy(&w, c);

    unsigned line_of[NKEYS] = {0};
    r = parse_ini(&w, buf, len, path, line_of, err, errlen);
    free(buf);
    if (r == 0)
        r = check_whole(&w, line_of, path, err, errlen);
    if (r < 0) {
        config_free(&w);
        return r;
    }
    config_free(c);
    *c = w;
    c->shared = 1;
    return 0;
}

/* 1 when k's value differs between a and b. */
static int key_differs(const struct keydef *k, const struct jg_config *a, const struct jg_config *b)
{
    const char *pa = (const char *)a + k->off, *pb = (const char *)b + k->off;
    switch (k->kind) {
    case K_LOG:
        return *(const int *)pa != *(const int *)pb;
    case K_UINT:
        return *(const unsigned *)pa != *(const unsigned *)pb;
    case K_DURATION:
        return *(const int64_t *)pa != *(const int64_t *)pb;
    default: {
        return !str_same(*(char *const *)pa, *(char *const *)pb);
    }
    }
}

void config_reconcile(struct jg_config *next, const struct jg_config *cur,
                      void (*changed)(void *arg, const char *section, const char *key, int live),
                      void *arg)
{
    for (size_t i = 0; i < NKEYS; i++) {
        const struct keydef *k = &keys[i];
        if (!key_differs(k, next, cur))
            continue;
        changed(arg, k->section, k->key, k->live);
        if (k->live)
            continue;
        char *dst = (char *)next + k->off;
        const char *src = (const char *)cur + k->off;
        switch (k->kind) {
        case K_LOG:
            *(int *)dst = *(const int *)src;
            break;
        case K_UINT:
            *(unsigned *)dst = *(const unsigned *)src;
            break;
        case K_DURATION:
            *(int64_t *)dst = *(const int64_t *)src;
            break;
        default:
            free(*(char **)dst);
            *(char **)dst = dup_or_null(*(char *const *)src);
        }
    }
}
