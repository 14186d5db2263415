/* reqhead — see reqhead.h. */
#include "reqhead.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "route.h"
#include "util.h"

static int lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

int reqhead_alias(const struct http1_str *host, const char *domain, char *out, size_t outlen)
{
    size_t n = host->n;
    const char *p = host->p;
    size_t dlen = strlen(domain);

    if (!p || n == 0 || p[0] == '[')
        return -ENOENT;
    /* Strip ":port" (digits only; the parser already checked the charset). */
    for (size_t i = n; i > 0; i--) {
        if (p[i - 1] == ':') {
            for (size_t j = i; j < n; j++)
                if (p[j] < '0' || p[j] > '9')
                    return -ENOENT;
            n = i - 1;
            break;
        }
    }
    if (n > 0 && p[n - 1] == '.')
        n--;
    /* <alias> '.' <domain> */
    if (n < dlen + 2 || p[n - dlen - 1] != '.')
        return -ENOENT;
    for (size_t i = 0; i < dlen; i++)
        if (lower((unsigned char)p[n - dlen + i]) != lower((unsigned char)domain[i]))
            return -ENOENT;
    size_t alen = n - dlen - 1;
    if (alen >= outlen)
        return -ENOENT;
    for (size_t i = 0; i < alen; i++)
        out[i] = (char)lower((unsigned char)p[i]);
    out[alen] = '\0';
    return route_alias_valid(out, alen) ? 0 : -ENOENT;
}

int reqhead_absolute_form(struct http1_head *h)
{
    static const struct http1_str root = {"/", 1}, host_name = {"Host", 4};
    const char *p = h->target.p;
    size_t n = h->target.n, skip;
    if (n > 0 && p[0] == '/')
        return 0;
    if (n >= 7 && strncasecmp(p, "http://", 7) == 0)
        skip = 7;
    else if (n >= 8 && strncasecmp(p, "https://", 8) == 0)
        skip = 8;
    else
        return -1;
    size_t a = skip;
    while (a < n && p[a] != '/' && p[a] != '?' && p[a] != '#')
        a++;
    struct http1_str auth = {p + skip, a - skip};
    if (auth.n == 0 || memchr(auth.p, '@', auth.n))
        return -1;
    if (a == n) {
        h->target = root;
    } else if (p[a] == '?') {
        return -1; /* "http://host?q": no path to keep the query on without copying */
    } else {
        h->target.p = p + a;
        h->target.n = n - a;
    }
    h->host = auth;
    int found = 0;
    for (size_t i = 0; i < h->nfields; i++) {
        if (http1_name_is(&h->fields[i].name, "host")) {
            h->fields[i].value = auth;
            found = 1;
        }
    }
    if (!found) {
        if (h->nfields >= HTTP1_MAX_FIELDS_CAP)
            return -1;
        h->fields[h->nfields].name = host_name;
        h->fields[h->nfields].value = auth;
        h->nfields++;
    }
    return 1;
}

/* Iterates "a=1; b=2" pairs. Returns 1 with name/value set, 0 at the end. */
static int cookie_next(const char *p, size_t n, size_t *pos, struct http1_str *name,
                       struct http1_str *val, size_t *start, size_t *end)
{
    size_t i = *pos;
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == ';'))
        i++;
    if (i >= n)
        return 0;
    *start = i;
    size_t j = i;
    while (j < n && p[j] != ';')
        j++;
    *end = j;
    *pos = j;
    size_t eq = i;
    while (eq < j && p[eq] != '=')
        eq++;
    size_t ne = eq;
    while (ne > i && (p[ne - 1] == ' ' || p[ne - 1] == '\t'))
        ne--;
    name->p = p + i;
    name->n = ne - i;
    if (eq < j) {
        size_t vs = eq + 1, ve = j;
        while (vs < ve && (p[vs] == ' ' || p[vs] == '\t'))
            vs++;
        while (ve > vs && (p[ve - 1] == ' ' || p[ve - 1] == '\t'))
            ve--;
        val->p = p + vs;
        val->n = ve - vs;
    } else {
        val->p = p + j;
        val->n = 0;
    }
    return 1;
}

static int str_eq(const struct http1_str *s, const char *lit)
{
    size_t n = strlen(lit);
    return s->n == n && memcmp(s->p, lit, n) == 0;
}

int reqhead_cookies(const struct http1_head *h, const char *name, struct http1_str *vals, int max)
{
    int found = 0;
    for (size_t f = 0; f < h->nfields && found < max; f++) {
        if (!http1_name_is(&h->fields[f].name, "cookie"))
            continue;
        const struct http1_str *v = &h->fields[f].value;
        size_t pos = 0, s, e;
        struct http1_str cn, cv;
        while (found < max && cookie_next(v->p, v->n, &pos, &cn, &cv, &s, &e))
            if (str_eq(&cn, name))
                vals[found++] = cv;
    }
    return found;
}

int reqhead_wants_html(const struct http1_head *h)
{
    static const char th[] = "text/html";
    for (size_t f = 0; f < h->nfields; f++) {
        const struct http1_str *v = &h->fields[f].value;
        if (http1_name_is(&h->fields[f].name, "sec-fetch-mode") && http1_list_has(v, "navigate"))
            return 1;
        if (!http1_name_is(&h->fields[f].name, "accept"))
            continue;
        for (size_t i = 0; i + sizeof(th) - 1 <= v->n; i++)
            if (strncasecmp(v->p + i, th, sizeof(th) - 1) == 0)
                return 1;
    }
    return 0;
}

/* Appends one "name=value; attr" piece (trailing blanks cut) to out, after
 * "; " unless it is the first: -1 when out has no room for it. */
static int put_pair(char *out, size_t outlen, size_t *o, const char *p, size_t len)
{
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    if (*o + (*o ? 2 : 0) + len > outlen)
        return -1;
    if (*o) {
        out[(*o)++] = ';';
        out[(*o)++] = ' ';
    }
    memcpy(out + *o, p, len);
    *o += len;
    return 0;
}

int reqhead_cookie_strip(const struct http1_str *value, const char *name, char *out, size_t outlen)
{
    size_t pos = 0, s, e, o = 0;
    struct http1_str cn, cv;
    while (cookie_next(value->p, value->n, &pos, &cn, &cv, &s, &e)) {
        if (str_eq(&cn, name))
            continue;
        if (put_pair(out, outlen, &o, value->p + s, e - s) < 0)
            return -1;
    }
    return (int)o;
}

const char *reqhead_cross_site(const struct http1_head *h)
{
    static const char https[] = "https://";
    const struct http1_str *m = &h->method;
    if (!(h->flags & HTTP1_F_UPGRADE) &&
        (http1_name_is(m, "get") || http1_name_is(m, "head") || http1_name_is(m, "options")))
        return NULL; /* safe methods: a link from anywhere still opens the app */
    const struct http1_str *host = &h->host; /* after an absolute-form target's rewrite */
    for (size_t f = 0; f < h->nfields; f++) {
        const struct http1_str *n = &h->fields[f].name, *v = &h->fields[f].value;
        if (http1_name_is(n, "sec-fetch-site") &&
            (http1_name_is(v, "same-site") || http1_name_is(v, "cross-site")))
            return "it comes from a page of another app or site (Sec-Fetch-Site)";
        if (!http1_name_is(n, "origin"))
            continue;
        if (host->n == 0 || v->n != sizeof(https) - 1 + host->n ||
            strncasecmp(v->p, https, sizeof(https) - 1) != 0 ||
            strncasecmp(v->p + sizeof(https) - 1, host->p, host->n) != 0)
            return "it comes from a page of another app or site (Origin)";
    }
    return NULL;
}

int reqhead_set_cookie(const struct http1_str *value, char *out, size_t outlen)
{
    size_t pos = 0, s, e, o = 0;
    struct http1_str cn, cv;
    int first = 1;
    while (cookie_next(value->p, value->n, &pos, &cn, &cv, &s, &e)) {
        if (first && cn.n == sizeof(REQHEAD_COOKIE) - 1 &&
            strncasecmp(cn.p, REQHEAD_COOKIE, cn.n) == 0)
            return -1; /* the gateway's own cookie is the gateway's to set */
        if (!first && http1_name_is(&cn, "domain"))
            continue;
        first = 0;
        if (put_pair(out, outlen, &o, value->p + s, e - s) < 0)
            return -1;
    }
    return o ? (int)o : -1;
}

int reqhead_next(const struct http1_str *target, char *out, size_t outlen)
{
    const char *q = memchr(target->p, '?', target->n);
    size_t o = 0;
    if (outlen < 2)
        return -EINVAL;
    out[0] = '/';
    out[1] = '\0';
    if (!q)
        return -EINVAL;
    const char *end = target->p + target->n;
    /* Find "next=" at the start of a parameter. */
    const char *p = q + 1;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        if (pe - p >= 5 && memcmp(p, "next=", 5) == 0) {
            for (const char *c = p + 5; c < pe; c++) {
                int ch = (unsigned char)*c;
                if (ch == '%') {
                    if (pe - c < 3 || hex_value(c[1]) < 0 || hex_value(c[2]) < 0)
                        goto bad;
                    ch = hex_value(c[1]) * 16 + hex_value(c[2]);
                    c += 2;
                } else if (ch == '+') {
                    goto bad;
                }
                /* Control bytes and backslashes have no business in a path;
                 * anything else outside the safe set goes out percent-encoded. */
                if (ch < 0x20 || ch == 0x7f || ch == '\\')
                    goto bad;
                if (ch == 0x20 || ch > 0x7f || strchr("\"<>^`{|}", ch)) {
                    if (o + 4 >= outlen)
                        goto bad;
                    out[o++] = '%';
                    out[o++] = "0123456789ABCDEF"[ch >> 4];
                    out[o++] = "0123456789ABCDEF"[ch & 15];
                    continue;
                }
                if (o + 1 >= outlen)
                    goto bad;
                out[o++] = (char)ch;
            }
            out[o] = '\0';
            if (o == 0 || out[0] != '/' || (o > 1 && (out[1] == '/')))
                goto bad;
            return 0;
        }
        p = pe + 1;
    }
bad:
    out[0] = '/';
    out[1] = '\0';
    return -EINVAL;
}

void reqhead_log_path(const struct http1_str *target, char *out, size_t outlen)
{
    static const char redeem[] = "/_jobgate/redeem/";
    size_t n = target->n, o = 0;
    const char *q = memchr(target->p, '?', n);
    if (q)
        n = (size_t)(q - target->p);
    if (outlen == 0)
        return;
    if (n >= sizeof(redeem) - 1 && memcmp(target->p, redeem, sizeof(redeem) - 1) == 0) {
        snprintf(out, outlen, "%s[redacted]", redeem);
        return;
    }
    for (size_t i = 0; i < n && o + 1 < outlen; i++) {
        unsigned char c = (unsigned char)target->p[i];
        out[o++] = (c > 0x20 && c < 0x7f && c != '"') ? (char)c : '?';
    }
    out[o] = '\0';
}

int reqhead_hop_by_hop(const struct http1_head *h, const struct http1_str *name)
{
    static const char *const fixed[] = {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authorization", "proxy-authenticate",
        "content-length", /* not hop-by-hop, but framing is restated from the parsed head */
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (http1_name_is(name, fixed[i]))
            return 1;
    for (size_t f = 0; f < h->nfields; f++) {
        if (!http1_name_is(&h->fields[f].name, "connection"))
            continue;
        /* Compare the name against each listed token. */
        const struct http1_str *v = &h->fields[f].value;
        size_t i = 0;
        while (i < v->n) {
            while (i < v->n && (v->p[i] == ',' || v->p[i] == ' ' || v->p[i] == '\t'))
                i++;
            size_t s = i;
            while (i < v->n && v->p[i] != ',' && v->p[i] != ' ' && v->p[i] != '\t')
                i++;
            if (i - s == name->n && strncasecmp(v->p + s, name->p, name->n) == 0)
                return 1;
        }
    }
    return 0;
}

static void add_str(struct evbuffer *out, const struct http1_str *s)
{
    evbuffer_add(out, s->p, s->n);
}

static void add_field(struct evbuffer *out, const struct http1_field *f)
{
    add_str(out, &f->name);
    evbuffer_add(out, ": ", 2);
    add_str(out, &f->value);
    evbuffer_add(out, "\r\n", 2);
}

/* Framing and upgrade fields as the gateway restates them. */
static void add_framing(struct evbuffer *out, const struct http1_head *h)
{
    if (h->body == HTTP1_BODY_CHUNKED) {
        evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    } else if (h->body == HTTP1_BODY_LENGTH) {
        evbuffer_add_printf(out, "Content-Length: %llu\r\n", (unsigned long long)h->content_length);
    } else if (h->body == HTTP1_BODY_NONE && h->status >= 200 && h->status != 204 &&
               h->status != 304) {
        /* A response without body bytes (HEAD, or length 0) keeps the framing
         * it announced: for HEAD it describes the body a GET would get. */
        int i = http1_find(h, "content-length");
        if (i >= 0)
            add_field(out, &h->fields[i]);
        else if (h->flags & HTTP1_F_TE)
            evbuffer_add(out, "Transfer-Encoding: chunked\r\n", 28);
    } else if (h->body == HTTP1_BODY_NONE && h->status == 0 && http1_find(h, "content-length") >= 0) {
        evbuffer_add(out, "Content-Length: 0\r\n", 19); /* a request that said 0 keeps saying it */
    }
    if ((h->flags & HTTP1_F_UPGRADE) || h->status == 101) {
        int i = http1_find(h, "upgrade");
        if (i >= 0) {
            evbuffer_add(out, "Connection: upgrade\r\n", 21);
            add_field(out, &h->fields[i]);
        }
    }
}

/* Appends the Cookie field without the gateway's cookie (dropped when empty). */
static void add_cookie(struct evbuffer *out, const struct http1_field *f)
{
    char stack[4096];
    /* Separators are rewritten as "; ", so "a=1;b=2" grows: at most twice the input. */
    size_t cap = 2 * f->value.n + 2;
    char *buf = cap <= sizeof(stack) ? stack : xmalloc(cap);
    int n = reqhead_cookie_strip(&f->value, REQHEAD_COOKIE, buf, cap);
    if (n > 0) {
        evbuffer_add(out, "Cookie: ", 8);
        evbuffer_add(out, buf, (size_t)n);
        evbuffer_add(out, "\r\n", 2);
    }
    if (buf != stack)
        free(buf);
}

/* Appends an app's Set-Cookie field made host-only (reqhead_set_cookie). */
static void add_set_cookie(struct evbuffer *out, const struct http1_field *f)
{
    char stack[4096];
    size_t cap = 2 * f->value.n + 2;
    char *buf = cap <= sizeof(stack) ? stack : xmalloc(cap);
    int n = reqhead_set_cookie(&f->value, buf, cap);
    if (n > 0) {
        evbuffer_add(out, "Set-Cookie: ", 12);
        evbuffer_add(out, buf, (size_t)n);
        evbuffer_add(out, "\r\n", 2);
    }
    if (buf != stack)
        free(buf);
}

static int is_forwarded(const struct http1_str *name)
{
    return http1_name_is(name, "forwarded") ||
           (name->n >= 12 && strncasecmp(name->p, "x-forwarded-", 12) == 0);
}

void reqhead_forward_request(struct evbuffer *out, const struct http1_head *h, const char *client_ip)
{
    add_str(out, &h->method);
    evbuffer_add(out, " ", 1);
    add_str(out, &h->target);
    evbuffer_add(out, h->minor ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n", 11);
    for (size_t i = 0; i < h->nfields; i++) {
        const struct http1_field *f = &h->fields[i];
        if (reqhead_hop_by_hop(h, &f->name) || is_forwarded(&f->name))
            continue;
        if (http1_name_is(&f->name, "cookie"))
            add_cookie(out, f);
        else
            add_field(out, f);
    }
    add_framing(out, h);
    evbuffer_add_printf(out, "X-Forwarded-For: %s\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ",
                        client_ip);
    add_str(out, &h->host);
    evbuffer_add(out, "\r\n\r\n", 4);
}

void reqhead_forward_response(struct evbuffer *out, const struct http1_head *h, int close)
{
    evbuffer_add_printf(out, "HTTP/1.1 %03d ", h->status);
    add_str(out, &h->reason);
    evbuffer_add(out, "\r\n", 2);
    for (size_t i = 0; i < h->nfields; i++) {
        const struct http1_field *f = &h->fields[i];
        if (reqhead_hop_by_hop(h, &f->name))
            continue;
        if (http1_name_is(&f->name, "set-cookie"))
            add_set_cookie(out, f);
        else
            add_field(out, f);
    }
    add_framing(out, h);
    if (close && h->status >= 200)
        evbuffer_add(out, "Connection: close\r\n", 19);
    evbuffer_add(out, "\r\n", 2);
}
