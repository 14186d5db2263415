/* tunnel_url — what -g and --via may say: a gateway URL (https://HOST[:PORT]
 * and nothing else) and ssh:HOST. Pure string checks, no state; any thread. */
#include "tunnel-int.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "util.h"

int agent_tunnel_parse_gateway(const char *url, char *host, size_t hostlen, unsigned *port,
                               char *err, size_t errlen)
{
    static const char scheme[] = "https://";
    const size_t sl = sizeof(scheme) - 1;
    char auth[300];

    if (!url || strncasecmp(url, scheme, sl) != 0) {
        if (url && strstr(url, "://"))
            return errmsg(err, errlen, -EINVAL,
                          "bad gateway '%s': only https:// URLs are supported", url ? url : "");
        return errmsg(err, errlen, -EINVAL, "bad gateway '%s': expected https://HOST[:PORT]",
                      url ? url : "");
    }
    const char *p = url + sl;
    size_t alen = strcspn(p, "/?#");
    const char *rest = p + alen;
    if (*rest == '/')
        rest++;
    if (*rest == '?' || *rest == '#')
        return errmsg(err, errlen, -EINVAL,
                      "bad gateway '%s': a gateway URL has no query or fragment", url);
    if (*rest != '\0')
        return errmsg(err, errlen, -EINVAL,
                      "bad gateway '%s': a gateway URL has no path (only \"/\")", url);
    if (alen == 0)
        return errmsg(err, errlen, -EINVAL, "bad gateway '%s': no host", url);
    if (alen >= sizeof(auth))
        return errmsg(err, errlen, -EINVAL, "bad gateway '%.40s...': host too long", url);
    memcpy(auth, p, alen);
    auth[alen] = '\0';
    if (strchr(auth, '@'))
        return errmsg(err, errlen, -EINVAL,
                      "bad gateway '%s': no user name or password in a gateway URL", url);

    const char *h = auth, *portstr = NULL;
    char *hend;
    if (auth[0] == '[') {
        hend = strchr(auth, ']');
        if (!hend)
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': unclosed '['", url);
        h = auth + 1;
        *hend = '\0';
        if (hend[1] == ':')
            portstr = hend + 2;
        else if (hend[1] != '\0')
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': junk after ']'", url);
        struct in6_addr a6;
        if (inet_pton(AF_INET6, h, &a6) != 1)
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': bad IPv6 address", url);
    } else {
        hend = strchr(auth, ':');
        if (hend) {
            *hend = '\0';
            portstr = hend + 1;
        }
        if (h[0] == '\0')
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': no host", url);
        for (const char *q = h; *q; q++)
            if (!app_name_char_ok(*q))
                return errmsg(err, errlen, -EINVAL,
                              "bad gateway '%s': bad character in the host name", url);
        if (h[0] == '-' || h[0] == '.')
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': bad host name", url);
    }
    *port = TUNNEL_DEFAULT_PORT;
    if (portstr) {
        uint64_t v;
        if (parse_uint(portstr, 1, 65535, &v) < 0)
            return errmsg(err, errlen, -EINVAL, "bad gateway '%s': bad port (1-65535)", url);
        *port = (unsigned)v;
    }
    if (strlen(h) >= hostlen || strlen(h) > 253)
        return errmsg(err, errlen, -EINVAL, "bad gateway '%s': host too long", url);
    memcpy(host, h, strlen(h) + 1);
    return 0;
}

int agent_tunnel_parse_via(const char *via, char *host, size_t hostlen, char *err, size_t errlen)
{
    if (!via || strncmp(via, "ssh:", 4) != 0)
        return errmsg(err, errlen, -EINVAL, "bad --via '%s': expected ssh:HOST",
                      via ? via : "");
    const char *h = via + 4;
    size_t n = strlen(h);
    if (n == 0)
        return errmsg(err, errlen, -EINVAL, "bad --via '%s': no host after 'ssh:'", via);
    if (h[0] == '-')
        return errmsg(err, errlen, -EINVAL, "bad --via '%s': the host may not start with '-'",
                      via);
    if (n >= hostlen || n > 255)
        return errmsg(err, errlen, -EINVAL, "bad --via: host too long");
    for (const char *q = h; *q; q++)
        if (*q <= 0x20 || *q >= 0x7f)
            return errmsg(err, errlen, -EINVAL,
                          "bad --via '%s': spaces or control characters in the host", via);
    memcpy(host, h, n + 1);
    return 0;
}
