/* plugconf — see plugconf.h. */
#include "plugconf.h"
#include "plugerr.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define KNOWN "gateway=, dir=, munge_socket=, ca="

/* Every error here is a bad argument. */
#define BAD(...) plug_err(err, errlen, -EINVAL, __VA_ARGS__)

/* https://HOST[:PORT] with an optional trailing slash: the node channel adds its own paths. */
static int check_gateway(const char *v, char *err, size_t errlen)
{
    if (strncmp(v, "https://", 8) != 0)
        return BAD("argument gateway=%s: must start with https://", v);
    const char *host = v + 8;
    size_t n = strcspn(host, "/?#@");
    if (n == 0)
        return BAD("argument gateway=%s: no host name", v);
    if (host[n] != '\0' && !(host[n] == '/' && host[n + 1] == '\0'))
        return BAD("argument gateway=%s: only https://HOST[:PORT], no path, "
                    "query or user name", v);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)host[i];
        if (ch <= ' ' || ch >= 0x7f)
            return BAD("argument gateway=: a space or control character in "
                        "the host name");
    }
    return 0;
}

static int check_path(const char *key, const char *v, char *err, size_t errlen)
{
    if (v[0] != '/')
        return BAD("argument %s=%s: must be an absolute path", key, v);
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p < ' ')
            return BAD("argument %s=: a control character in the path", key);
    return 0;
}

int plugconf_parse(int argc, char *const argv[], struct plugconf *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->dir, sizeof(c->dir), "%s", PLUGCONF_DEFAULT_DIR);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *eq = strchr(a, '=');
        if (!eq || eq == a)
            return BAD("argument \"%s\": not KEY=VALUE (known: " KNOWN ")", a);
        size_t klen = (size_t)(eq - a);
        const char *v = eq + 1;
        char *dst;
        if (klen == 7 && memcmp(a, "gateway", 7) == 0)
            dst = c->gateway;
        else if (klen == 3 && memcmp(a, "dir", 3) == 0)
            dst = c->dir;
        else if (klen == 12 && memcmp(a, "munge_socket", 12) == 0)
            dst = c->munge_socket;
        else if (klen == 2 && memcmp(a, "ca", 2) == 0)
            dst = c->ca;
        else
            return BAD("unknown argument \"%.*s\" (known: " KNOWN ")",
                        (int)(klen > 64 ? 64 : klen), a);
        if (!*v)
            return BAD("argument %.*s=: empty value", (int)klen, a);
        if (strlen(v) >= PLUGCONF_VALUE_MAX)
            return BAD("argument %.*s=: longer than %d bytes", (int)klen, a,
                        PLUGCONF_VALUE_MAX - 1);
        memcpy(dst, v, strlen(v) + 1);
    }
    if (!c->gateway[0])
        return BAD("argument gateway= is missing (the gateway's URL, "
                    "https://HOST[:PORT])");
    int rc = check_gateway(c->gateway, err, errlen);
    if (rc == 0)
        rc = check_path("dir", c->dir, err, errlen);
    if (rc == 0 && c->munge_socket[0])
        rc = check_path("munge_socket", c->munge_socket, err, errlen);
    if (rc == 0 && c->ca[0])
        rc = check_path("ca", c->ca, err, errlen);
    if (rc == 0) {
        size_t n = strlen(c->gateway);
        if (c->gateway[n - 1] == '/')
            c->gateway[n - 1] = '\0';
        n = strlen(c->dir);
        while (n > 1 && c->dir[n - 1] == '/')
            c->dir[--n] = '\0';
    }
    return rc;
}
