/*
 * http1 — strict HTTP/1.x head parser and chunked-body scanner.
 *
 * Everything here runs on peer bytes on the hot path, so: one pass per
 * byte where possible, character classes from one table, no allocation, no
 * state outside the caller's structures. Every loop is bounded by the length
 * the caller gave us (and that length by the caller's limits).
 */
#include "http1.h"

#include <limits.h>
#include <string.h>

#include "util.h"

/* Character classes (RFC 9110 5.6.2 tchar, 5.5 field-vchar, ...). */
#define T_TCHAR  0x01u /* token character */
#define T_VALUE  0x02u /* field value: HTAB, SP, VCHAR, obs-text */
#define T_HEX    0x04u /* HEXDIG */
#define T_HOST   0x08u /* Host reg-name / IPv4: A-Z a-z 0-9 . - _ ~ */
#define T_TARGET 0x10u /* request-target: visible ASCII 0x21-0x7e */
#define T_QD     0x20u /* qdtext: HTAB, SP, 0x21, 0x23-0x5b, 0x5d-0x7e, obs-text */
#define T_DIGIT  0x40u /* DIGIT */
#define T_EXT    0x80u /* unquoted chunk-ext: tchar ; = SP HTAB */

static const unsigned char cls[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xa2, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xa2, 0xb3, 0x12, 0xb3, 0xb3, 0xb3, 0xb3, 0xb3, 0x32, 0x32, 0xb3, 0xb3, 0x32, 0xbb, 0xbb, 0x32,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x32, 0xb2, 0x32, 0xb2, 0x32, 0x32,
    0x32, 0xbf, 0xbf, 0xbf, 0xbf, 0xbf, 0xbf, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb,
    0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0x32, 0x12, 0x32, 0xb3, 0xbb,
    0xb3, 0xbf, 0xbf, 0xbf, 0xbf, 0xbf, 0xbf, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb,
    0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0x32, 0xb3, 0x32, 0xbb, 0x00,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
};

#define IS(c, t) ((cls[(unsigned char)(c)] & (t)) != 0)

/* Limits used when the caller passes none (NULL): generous but bounded. */
#define DEF_START_LINE 8192
#define DEF_HEAD       65536
#define DEF_FIELDS     100

#define CHUNK_LINE_MAX 4096 /* one chunk-size line with its extensions */

static inline int is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static inline unsigned char lc(unsigned char c)
{
    return (unsigned char)(c + (((unsigned)(c - 'A') < 26u) << 5));
}

/* p[0..n) equals the lower-case literal lit[0..litn), ignoring ASCII case. */
static int ci_eq(const char *p, size_t n, const char *lit, size_t litn)
{
    if (n != litn)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lc((unsigned char)p[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}

#define CI_EQ(p, n, lit) ci_eq((p), (n), lit, sizeof(lit) - 1)

static const struct http1_limits *limits_or_default(const struct http1_limits *lim,
                                                    struct http1_limits *def)
{
    if (lim)
        return lim;
    def->max_start_line = DEF_START_LINE;
    def->max_head = DEF_HEAD;
    def->max_fields = DEF_FIELDS;
    return def;
}

/*
 * Next element of a comma-separated list (RFC 9110 5.6.1), OWS trimmed.
 * Empty elements are returned too (the caller decides). *pos starts at 0;
 * returns 0 after the last element.
 */
static int list_next(const char *p, size_t n, size_t *pos, struct http1_str *el)
{
    size_t i = *pos, s, e;

    if (i > n)
        return 0;
    while (i < n && is_ows((unsigned char)p[i]))
        i++;
    s = i;
    while (i < n && p[i] != ',')
        i++;
    e = i;
    while (e > s && is_ows((unsigned char)p[e - 1]))
        e--;
    el->p = p + s;
    el->n = e - s;
    *pos = i + 1;
    return 1;
}

static int all_tchar(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!IS(p[i], T_TCHAR))
            return 0;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* scan_head                                                                */

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Nonzero if any of the 8 bytes in x is CR or LF (exact, no false hits). */
static inline uint64_t has_crlf8(uint64_t x)
{
    uint64_t a = x ^ (ONES * '\r'), b = x ^ (ONES * '\n');
    return (((a - ONES) & ~a) | ((b - ONES) & ~b)) & HIGHS;
}

/*
 * The cursor *scan is the index of the first byte not yet validated. Every
 * byte before it has been checked, and a CR before it was always followed by
 * LF, so the state the scanner needs (previous bytes) is in the buffer itself.
 * The only other state, "still inside the start line", matters at exactly one
 * index (max_start_line), which the cursor passes once: that is where the
 * start line length is checked, with one memchr over the bytes before it.
 */
ssize_t http1_scan_head(const char *buf, size_t len, const struct http1_limits *lim, size_t *scan)
{
    struct http1_limits def;
    const unsigned char *p = (const unsigned char *)buf;
    size_t local = 0, i, end, sl, max_head;

    lim = limits_or_default(lim, &def);
    if (!scan)
        scan = &local;
    if (!buf)
        return len ? -HTTP1_E_SYNTAX : 0;
    max_head = lim->max_head;
    if (max_head > (size_t)SSIZE_MAX)
        max_head = (size_t)SSIZE_MAX;
    sl = lim->max_start_line;

    i = *scan;
    if (i > len)
        i = 0; /* not our cursor for this buffer: start over */
    end = len < max_head ? len : max_head;

    while (i < end) {
        size_t stop = end;
        unsigned char c;

        if (i <= sl && sl < stop)
            stop = sl;
        while (i + 8 <= stop) {
            uint64_t x;
            memcpy(&x, p + i, 8);
            if (has_crlf8(x))
                break;
            i += 8;
        }
        while (i < stop && p[i] != '\r' && p[i] != '\n')
            i++;
        if (i >= end)
            break;
        c = p[i];
        if (i == sl && c != '\r' && c != '\n') {
            /* byte max_start_line is not the line end: is it the start line? */
            if (!memchr(p, '\n', sl)) {
                *scan = i;
                return -HTTP1_E_START_LINE_LONG;
            }
            i++;
            continue;
        }
        if (c == '\n') {
            *scan = i;
            return -HTTP1_E_BARE_LF;
        }
        /* CR: decide once the next byte is there */
        if (i + 1 >= len)
            break;
        if (p[i + 1] != '\n') {
            *scan = i;
            return -HTTP1_E_BARE_CR;
        }
        if (i == 0) {
            *scan = i;
            return -HTTP1_E_SYNTAX; /* empty line before the start line */
        }
        if (i >= 2 && p[i - 1] == '\n') {
            size_t hl = i + 2; /* CRLF CRLF: the empty line ends the head */
            if (hl > max_head) {
                *scan = i;
                return -HTTP1_E_HEAD_LARGE;
            }
            *scan = hl;
            return (ssize_t)hl;
        }
        i += 2;
    }
    *scan = i;
    if (len > max_head)
        return -HTTP1_E_HEAD_LARGE;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* head parsing                                                             */

/* Framing facts gathered while walking the fields. */
struct facts {
    unsigned ncl, nhost, nte, nupgrade;
    uint64_t cl;
    /* Transfer-Encoding list, combined over all TE fields */
    unsigned te_n;        /* non-empty codings */
    unsigned te_chunked;  /* how many of them are exactly "chunked" */
    int te_last_chunked;  /* the last non-empty coding is exactly "chunked" */
    int te_bad;           /* an empty element or a coding that is not a bare token */
    /* Connection options */
    int conn_close, conn_keepalive, conn_upgrade;
};

/* The error for an unexpected byte at p[i] (i < end): bare CR/LF if it is one. */
static int bad_at(const unsigned char *p, size_t i, size_t end, int dflt)
{
    if (p[i] == '\n')
        return -HTTP1_E_BARE_LF;
    if (p[i] == '\r' && (i + 1 >= end || p[i + 1] != '\n'))
        return -HTTP1_E_BARE_CR;
    return dflt;
}

/* "HTTP/" DIGIT "." DIGIT: 0 with *minor set, -HTTP1_E_VERSION, -HTTP1_E_SYNTAX. */
static int parse_version(const unsigned char *q, size_t n, int *minor)
{
    if (n != 8 || memcmp(q, "HTTP/", 5) != 0 || !IS(q[5], T_DIGIT) || q[6] != '.' ||
        !IS(q[7], T_DIGIT))
        return -HTTP1_E_SYNTAX;
    if (q[5] != '1' || (q[7] != '0' && q[7] != '1'))
        return -HTTP1_E_VERSION;
    *minor = q[7] - '0';
    return 0;
}

/* Request line content p[0..n) (no CR, no LF in it but possibly bare CRs). */
static int parse_request_line(const unsigned char *p, size_t n, struct http1_head *h)
{
    size_t i = 0, ts, vs;
    int r;

    while (i < n && IS(p[i], T_TCHAR))
        i++;
    if (i == 0 || i == n || p[i] != ' ')
        return (i < n && p[i] == '\r') ? -HTTP1_E_BARE_CR : -HTTP1_E_METHOD;
    h->method.p = (const char *)p;
    h->method.n = i;

    ts = ++i;
    while (i < n && IS(p[i], T_TARGET))
        i++;
    if (i == n)
        return i == ts ? -HTTP1_E_TARGET : -HTTP1_E_SYNTAX; /* no version */
    if (p[i] != ' ' || i == ts)
        return p[i] == '\r' ? -HTTP1_E_BARE_CR : -HTTP1_E_TARGET;
    h->target.p = (const char *)p + ts;
    h->target.n = i - ts;

    vs = i + 1;
    r = parse_version(p + vs, n - vs, &h->minor);
    if (r == -HTTP1_E_SYNTAX && memchr(p + vs, '\r', n - vs))
        return -HTTP1_E_BARE_CR;
    return r;
}

/* Status line content p[0..n). */
static int parse_status_line(const unsigned char *p, size_t n, struct http1_head *h)
{
    int r;

    if (n < 12) {
        if (memchr(p, '\r', n))
            return -HTTP1_E_BARE_CR;
        return -HTTP1_E_STATUS;
    }
    r = parse_version(p, 8, &h->minor);
    if (r == -HTTP1_E_SYNTAX)
        return -HTTP1_E_STATUS;
    if (r < 0)
        return r;
    if (p[8] != ' ' || !IS(p[9], T_DIGIT) || !IS(p[10], T_DIGIT) || !IS(p[11], T_DIGIT))
        return memchr(p + 8, '\r', 4) ? -HTTP1_E_BARE_CR : -HTTP1_E_STATUS;
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (h->status < 100 || h->status > 599)
        return -HTTP1_E_STATUS;
    if (n == 12) {
        h->reason.p = (const char *)p + 12;
        h->reason.n = 0;
        return 0;
    }
    if (p[12] != ' ')
        return p[12] == '\r' ? -HTTP1_E_BARE_CR : -HTTP1_E_STATUS;
    for (size_t i = 13; i < n; i++)
        if (!IS(p[i], T_VALUE))
            return p[i] == '\r' ? -HTTP1_E_BARE_CR : -HTTP1_E_CTL;
    h->reason.p = (const char *)p + 13;
    h->reason.n = n - 13;
    return 0;
}

/* reg-name / IPv4 / "[" IPv6 "]", optional ":" 1*5DIGIT port <= 65535. */
static int host_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    unsigned port = 0, colons = 0;

    if (n == 0 || n > 255)
        return 0;
    if (p[0] == '[') {
        for (i = 1; i < n && p[i] != ']'; i++) {
            if (p[i] == ':')
                colons++;
            else if (!IS(p[i], T_HEX) && p[i] != '.')
                return 0;
        }
        if (i >= n || colons < 2)
            return 0;
        i++;
    } else {
        while (i < n && IS(p[i], T_HOST))
            i++;
        if (i == 0)
            return 0;
    }
    if (i == n)
        return 1;
    if (p[i] != ':' || n - i - 1 == 0 || n - i - 1 > 5)
        return 0;
    for (i++; i < n; i++) {
        if (!IS(p[i], T_DIGIT))
            return 0;
        port = port * 10 + (unsigned)(p[i] - '0');
    }
    return port <= 65535;
}

/* Content-Length value: 1*DIGIT, or a list of identical 1*DIGIT values. */
static int content_length(const char *p, size_t n, struct facts *f)
{
    size_t pos = 0;
    struct http1_str el;

    while (list_next(p, n, &pos, &el)) {
        uint64_t v = 0;
        if (el.n == 0)
            return -HTTP1_E_CL_INVALID;
        for (size_t i = 0; i < el.n; i++) {
            unsigned d = (unsigned char)el.p[i] - (unsigned)'0';
            if (d > 9)
                return -HTTP1_E_CL_INVALID;
            if (v > (UINT64_MAX - d) / 10)
                return -HTTP1_E_CL_INVALID;
            v = v * 10 + d;
        }
        if (f->ncl && f->cl != v)
            return -HTTP1_E_CL_CONFLICT;
        f->cl = v;
        f->ncl++;
    }
    return 0;
}

static void transfer_encoding(const char *p, size_t n, struct facts *f)
{
    size_t pos = 0;
    struct http1_str el;

    f->nte++;
    while (list_next(p, n, &pos, &el)) {
        int chunked;
        if (el.n == 0) {
            f->te_bad = 1;
            continue;
        }
        if (!all_tchar(el.p, el.n)) {
            f->te_bad = 1; /* parameters ("chunked;x") or junk */
            chunked = 0;
        } else {
            chunked = CI_EQ(el.p, el.n, "chunked");
        }
        f->te_n++;
        f->te_chunked += (unsigned)chunked;
        f->te_last_chunked = chunked;
    }
}

static void connection(const char *p, size_t n, struct facts *f)
{
    size_t pos = 0;
    struct http1_str el;

    while (list_next(p, n, &pos, &el)) {
        if (CI_EQ(el.p, el.n, "close"))
            f->conn_close = 1;
        else if (CI_EQ(el.p, el.n, "keep-alive"))
            f->conn_keepalive = 1;
        else if (CI_EQ(el.p, el.n, "upgrade"))
            f->conn_upgrade = 1;
    }
}

/* Field semantics that decide framing and flags. */
static int field_semantics(const struct http1_field *fl, int is_req, struct facts *f,
                           struct http1_head *h)
{
    const char *n = fl->name.p;
    const char *v = fl->value.p;
    size_t vn = fl->value.n;

    switch (fl->name.n) {
    case 4:
        if (is_req && CI_EQ(n, 4, "host")) {
            if (++f->nhost > 1 || !host_valid(v, vn))
                return -HTTP1_E_HOST;
            h->host = fl->value;
        }
        break;
    case 6:
        if (is_req && CI_EQ(n, 6, "expect"))
            h->flags |= CI_EQ(v, vn, "100-continue") ? HTTP1_F_EXPECT_100 : HTTP1_F_EXPECT_OTHER;
        break;
    case 7:
        if (CI_EQ(n, 7, "upgrade"))
            f->nupgrade++;
        break;
    case 10:
        if (CI_EQ(n, 10, "connection"))
            connection(v, vn, f);
        break;
    case 14:
        if (CI_EQ(n, 14, "content-length"))
            return content_length(v, vn, f);
        break;
    case 17:
        if (CI_EQ(n, 17, "transfer-encoding"))
            transfer_encoding(v, vn, f);
        break;
    default:
        break;
    }
    return 0;
}

static int parse_head(const char *buf, size_t head_len, const struct http1_limits *lim,
                      int is_req, int head_request, struct http1_head *h)
{
    struct http1_limits def;
    struct facts f;
    const unsigned char *p = (const unsigned char *)buf;
    const unsigned char *lf;
    size_t maxf, pos, line_n, scan_n;
    int r;

    if (!h)
        return -HTTP1_E_SYNTAX;
    h->method.p = h->target.p = h->reason.p = h->host.p = NULL;
    h->method.n = h->target.n = h->reason.n = h->host.n = 0;
    h->status = 0;
    h->minor = 0;
    h->head_len = head_len;
    h->nfields = 0;
    h->body = HTTP1_BODY_NONE;
    h->content_length = 0;
    h->flags = 0;
    if (!buf)
        return -HTTP1_E_SYNTAX;

    lim = limits_or_default(lim, &def);
    maxf = lim->max_fields < HTTP1_MAX_FIELDS_CAP ? lim->max_fields : HTTP1_MAX_FIELDS_CAP;
    if (head_len > lim->max_head)
        return -HTTP1_E_HEAD_LARGE;

    /* start line: find its end within the limit first */
    scan_n = head_len;
    if (lim->max_start_line < (size_t)SIZE_MAX - 2 && lim->max_start_line + 2 < scan_n)
        scan_n = lim->max_start_line + 2;
    lf = memchr(p, '\n', scan_n);
    if (!lf) {
        if (scan_n < head_len)
            return -HTTP1_E_START_LINE_LONG;
        return memchr(p, '\r', scan_n) ? -HTTP1_E_BARE_CR : -HTTP1_E_SYNTAX;
    }
    if (lf == p || lf[-1] != '\r')
        return -HTTP1_E_BARE_LF;
    line_n = (size_t)(lf - p) - 1;
    if (line_n == 0)
        return -HTTP1_E_SYNTAX;
    if (line_n > lim->max_start_line)
        return -HTTP1_E_START_LINE_LONG;
    r = is_req ? parse_request_line(p, line_n, h) : parse_status_line(p, line_n, h);
    if (r < 0)
        return r;

    memset(&f, 0, sizeof(f));
    pos = line_n + 2;
    for (;;) {
        struct http1_field *fl;
        size_t ns, ne, vs, ve;

        if (pos >= head_len)
            return -HTTP1_E_SYNTAX; /* no empty line */
        if (p[pos] == '\r') {
            if (pos + 1 >= head_len || p[pos + 1] != '\n')
                return -HTTP1_E_BARE_CR;
            if (pos + 2 != head_len)
                return -HTTP1_E_SYNTAX; /* head_len is not this head's length */
            break;
        }
        if (p[pos] == '\n')
            return -HTTP1_E_BARE_LF;
        if (is_ows(p[pos]))
            return -HTTP1_E_OBS_FOLD;
        if (h->nfields >= maxf)
            return -HTTP1_E_TOO_MANY_FIELDS;

        ns = pos;
        while (pos < head_len && IS(p[pos], T_TCHAR))
            pos++;
        if (pos >= head_len)
            return -HTTP1_E_SYNTAX;
        if (p[pos] != ':' || pos == ns)
            return bad_at(p, pos, head_len, -HTTP1_E_FIELD_NAME);
        ne = pos++;
        while (pos < head_len && is_ows(p[pos]))
            pos++;
        vs = pos;
        while (pos < head_len && IS(p[pos], T_VALUE))
            pos++;
        if (pos >= head_len)
            return -HTTP1_E_SYNTAX;
        if (p[pos] != '\r')
            return p[pos] == '\n' ? -HTTP1_E_BARE_LF : -HTTP1_E_CTL;
        if (pos + 1 >= head_len || p[pos + 1] != '\n')
            return -HTTP1_E_BARE_CR;
        ve = pos;
        while (ve > vs && is_ows(p[ve - 1]))
            ve--;
        pos += 2;

        fl = &h->fields[h->nfields++];
        fl->name.p = (const char *)p + ns;
        fl->name.n = ne - ns;
        fl->value.p = (const char *)p + vs;
        fl->value.n = ve - vs;
        r = field_semantics(fl, is_req, &f, h);
        if (r < 0)
            return r;
    }

    if (f.nte)
        h->flags |= HTTP1_F_TE;
    if (f.ncl && f.nte)
        return -HTTP1_E_CL_AND_TE;
    if (f.conn_close || (h->minor == 0 && !f.conn_keepalive))
        h->flags |= HTTP1_F_CLOSE;
    if (f.conn_upgrade && f.nupgrade && h->minor == 1)
        h->flags |= HTTP1_F_UPGRADE;
    if (f.ncl)
        h->content_length = f.cl;

    if (is_req) {
        if (f.nte) {
            if (h->minor == 0 || f.te_bad || f.te_chunked > 1 ||
                (f.te_chunked == 1 && !f.te_last_chunked))
                return -HTTP1_E_TE_INVALID;
            if (f.te_n != 1 || !f.te_last_chunked)
                return -HTTP1_E_TE_UNSUPPORTED;
            h->body = HTTP1_BODY_CHUNKED;
        } else if (f.ncl && f.cl) {
            h->body = HTTP1_BODY_LENGTH;
        }
        if (f.nhost == 0 && h->minor == 1)
            return -HTTP1_E_HOST;
        return 0;
    }

    if (head_request || h->status < 200 || h->status == 204 || h->status == 304) {
        h->body = HTTP1_BODY_NONE;
    } else if (f.nte) {
        if (h->minor == 1 && f.te_last_chunked) {
            h->body = HTTP1_BODY_CHUNKED;
        } else {
            /* RFC 9112 6.3: read until close; TE in 1.0 means faulty framing */
            h->body = HTTP1_BODY_EOF;
            if (h->minor == 0)
                h->flags |= HTTP1_F_CLOSE;
        }
    } else if (f.ncl) {
        h->body = f.cl ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
    } else {
        h->body = HTTP1_BODY_EOF;
    }
    return 0;
}

int http1_parse_request(const char *buf, size_t head_len, const struct http1_limits *lim,
                        struct http1_head *h)
{
    return parse_head(buf, head_len, lim, 1, 0, h);
}

int http1_parse_response(const char *buf, size_t head_len, const struct http1_limits *lim,
                         int head_request, struct http1_head *h)
{
    return parse_head(buf, head_len, lim, 0, head_request, h);
}

/* ------------------------------------------------------------------------ */
/* errors and helpers                                                       */

int http1_err_status(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
    case HTTP1_E_VERSION:
        return 505;
    case HTTP1_E_STATUS:
        return 502;
    case HTTP1_E_START_LINE_LONG:
        return 414;
    case HTTP1_E_HEAD_LARGE:
    case HTTP1_E_TOO_MANY_FIELDS:
        return 431;
    case HTTP1_E_TE_UNSUPPORTED:
        return 501;
    default:
        return 400;
    }
}

const char *http1_err_str(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
    case 0:
        return "no error";
    case HTTP1_E_SYNTAX:
        return "malformed message";
    case HTTP1_E_BARE_LF:
        return "bare LF without CR";
    case HTTP1_E_BARE_CR:
        return "bare CR without LF";
    case HTTP1_E_CTL:
        return "control character in field value";
    case HTTP1_E_OBS_FOLD:
        return "obsolete line folding";
    case HTTP1_E_FIELD_NAME:
        return "invalid field name";
    case HTTP1_E_METHOD:
        return "invalid method";
    case HTTP1_E_TARGET:
        return "invalid request target";
    case HTTP1_E_VERSION:
        return "unsupported HTTP version";
    case HTTP1_E_STATUS:
        return "invalid status line";
    case HTTP1_E_START_LINE_LONG:
        return "start line too long";
    case HTTP1_E_HEAD_LARGE:
        return "header section too large";
    case HTTP1_E_TOO_MANY_FIELDS:
        return "too many header fields";
    case HTTP1_E_CL_INVALID:
        return "invalid Content-Length";
    case HTTP1_E_CL_CONFLICT:
        return "conflicting Content-Length values";
    case HTTP1_E_CL_AND_TE:
        return "both Content-Length and Transfer-Encoding";
    case HTTP1_E_TE_UNSUPPORTED:
        return "unsupported transfer coding";
    case HTTP1_E_TE_INVALID:
        return "invalid Transfer-Encoding";
    case HTTP1_E_HOST:
        return "missing, duplicate or invalid Host";
    case HTTP1_E_CHUNK:
        return "malformed chunked body";
    case HTTP1_E_CHUNK_LARGE:
        return "chunk size, extension or trailer too large";
    default:
        return "unknown HTTP error";
    }
}

int http1_name_is(const struct http1_str *name, const char *lower)
{
    if (!name || !lower || (!name->p && name->n))
        return 0;
    return ci_eq(name->p, name->n, lower, strlen(lower));
}

int http1_list_has(const struct http1_str *value, const char *lower_token)
{
    size_t pos = 0, tn;
    struct http1_str el;

    if (!value || !lower_token || !value->p)
        return 0;
    tn = strlen(lower_token);
    while (list_next(value->p, value->n, &pos, &el))
        if (ci_eq(el.p, el.n, lower_token, tn))
            return 1;
    return 0;
}

int http1_find(const struct http1_head *h, const char *lower_name)
{
    size_t n, cnt;

    if (!h || !lower_name)
        return -1;
    n = strlen(lower_name);
    cnt = h->nfields < HTTP1_MAX_FIELDS_CAP ? h->nfields : HTTP1_MAX_FIELDS_CAP;
    for (size_t i = 0; i < cnt && i <= (size_t)INT_MAX; i++)
        if (ci_eq(h->fields[i].name.p, h->fields[i].name.n, lower_name, n))
            return (int)i;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* chunked body scanner                                                     */

enum {
    CS_SIZE = 0,  /* chunk-size digits (c->digits so far) */
    CS_SIZE_WS,   /* BWS after the size: only ";" may follow */
    CS_EXT,       /* chunk-ext outside quotes */
    CS_EXT_Q,     /* inside a quoted-string */
    CS_EXT_QESC,  /* after a backslash in a quoted-string */
    CS_SIZE_LF,   /* CR of the size line seen */
    CS_DATA,      /* c->remaining data bytes to skip */
    CS_DATA_CR,   /* CRLF after chunk data */
    CS_DATA_LF,
    CS_TRL_START, /* start of a trailer line (or the final CRLF) */
    CS_TRL_NAME,
    CS_TRL_VALUE,
    CS_TRL_LF,
    CS_FINAL_LF,
    CS_DONE,
    CS_ERR_CHUNK, /* errors are sticky */
    CS_ERR_LARGE,
};

void http1_chunked_init(struct http1_chunked *c, size_t max_trailer)
{
    if (!c)
        return;
    c->state = CS_SIZE;
    c->remaining = 0;
    c->line = 0;
    c->trailer = 0;
    c->max_trailer = max_trailer;
    c->digits = 0;
    c->data_total = 0;
}

ssize_t http1_chunked_feed(struct http1_chunked *c, const char *buf, size_t len, int *done)
{
    const unsigned char *p = (const unsigned char *)buf;
    size_t i = 0;
    int ignored;
    int err;

    if (!done)
        done = &ignored;
    *done = 0;
    if (!c)
        return -HTTP1_E_CHUNK;
    if (c->state == CS_ERR_CHUNK)
        return -HTTP1_E_CHUNK;
    if (c->state == CS_ERR_LARGE)
        return -HTTP1_E_CHUNK_LARGE;
    if (c->state == CS_DONE) {
        *done = 1;
        return 0;
    }
    if (!p)
        return len ? -HTTP1_E_CHUNK : 0;
    if (len > (size_t)SSIZE_MAX)
        len = (size_t)SSIZE_MAX;

    while (i < len) {
        unsigned char ch;

        if (c->state == CS_DATA) {
            size_t avail = len - i;
            size_t n = c->remaining < avail ? (size_t)c->remaining : avail;
            i += n;
            c->remaining -= n;
            c->data_total += n;
            if (c->remaining == 0)
                c->state = CS_DATA_CR;
            continue;
        }

        ch = p[i++];
        switch (c->state) {
        case CS_SIZE:
            if (IS(ch, T_HEX)) {
                if (c->digits >= 16)
                    goto large;
                c->remaining = (c->remaining << 4) | (unsigned)hex_value(ch);
                c->digits++;
            } else if (c->digits == 0) {
                goto bad;
            } else if (ch == '\r') {
                c->state = CS_SIZE_LF;
                break;
            } else if (ch == ';') {
                c->state = CS_EXT;
            } else if (is_ows(ch)) {
                c->state = CS_SIZE_WS;
            } else {
                goto bad;
            }
            if (++c->line > CHUNK_LINE_MAX)
                goto large;
            break;
        case CS_SIZE_WS:
            if (ch == ';')
                c->state = CS_EXT;
            else if (!is_ows(ch))
                goto bad;
            if (++c->line > CHUNK_LINE_MAX)
                goto large;
            break;
        case CS_EXT:
            if (ch == '\r') {
                c->state = CS_SIZE_LF;
                break;
            }
            if (ch == '"')
                c->state = CS_EXT_Q;
            else if (!IS(ch, T_EXT))
                goto bad;
            if (++c->line > CHUNK_LINE_MAX)
                goto large;
            break;
        case CS_EXT_Q:
            if (ch == '"')
                c->state = CS_EXT;
            else if (ch == '\\')
                c->state = CS_EXT_QESC;
            else if (!IS(ch, T_QD))
                goto bad;
            if (++c->line > CHUNK_LINE_MAX)
                goto large;
            break;
        case CS_EXT_QESC:
            if (!IS(ch, T_VALUE))
                goto bad;
            c->state = CS_EXT_Q;
            if (++c->line > CHUNK_LINE_MAX)
                goto large;
            break;
        case CS_SIZE_LF:
            if (ch != '\n')
                goto bad;
            c->line = 0;
            c->digits = 0;
            c->state = c->remaining ? CS_DATA : CS_TRL_START;
            break;
        case CS_DATA_CR:
            if (ch != '\r')
                goto bad;
            c->state = CS_DATA_LF;
            break;
        case CS_DATA_LF:
            if (ch != '\n')
                goto bad;
            c->state = CS_SIZE;
            break;
        case CS_TRL_START:
            if (ch == '\r') {
                c->state = CS_FINAL_LF;
                break;
            }
            if (!IS(ch, T_TCHAR))
                goto bad; /* obs-fold, empty name, bare LF, junk */
            c->state = CS_TRL_NAME;
            if (++c->trailer > c->max_trailer)
                goto large;
            break;
        case CS_TRL_NAME:
            if (ch == ':')
                c->state = CS_TRL_VALUE;
            else if (!IS(ch, T_TCHAR))
                goto bad;
            if (++c->trailer > c->max_trailer)
                goto large;
            break;
        case CS_TRL_VALUE:
            if (ch == '\r')
                c->state = CS_TRL_LF;
            else if (!IS(ch, T_VALUE))
                goto bad;
            if (++c->trailer > c->max_trailer)
                goto large;
            break;
        case CS_TRL_LF:
            if (ch != '\n')
                goto bad;
            c->state = CS_TRL_START;
            if (++c->trailer > c->max_trailer)
                goto large;
            break;
        case CS_FINAL_LF:
            if (ch != '\n')
                goto bad;
            c->state = CS_DONE;
            *done = 1;
            return (ssize_t)i;
        default:
            goto bad; /* corrupted state */
        }
    }
    return (ssize_t)i;

bad:
    err = HTTP1_E_CHUNK;
    c->state = CS_ERR_CHUNK;
    return -err;
large:
    err = HTTP1_E_CHUNK_LARGE;
    c->state = CS_ERR_LARGE;
    return -err;
}
