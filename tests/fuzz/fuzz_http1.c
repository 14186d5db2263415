/*
 * libFuzzer target for src/lib/http1.c.
 *
 * The input is used three ways: as a request/response head (scanned whole
 * and in two pieces, then parsed), as raw bytes handed straight to the
 * parsers, and as a chunked body (whole and split at an offset taken from
 * the first byte). Invariants are checked with abort(), so a violation is
 * a crash the fuzzer reports.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "http1.h"


/* Small limits so the fuzzer reaches every limit path. */
static const struct http1_limits lim = {512, 4096, 32};

static struct http1_head h;

static int within(const char *base, size_t n, struct http1_str s)
{
    if (!s.p)
        return s.n == 0;
    return s.p >= base && s.n <= n && (size_t)(s.p - base) <= n - s.n;
}

/* What a successfully parsed head must look like. */
static void check_head(const char *buf, size_t head_len, int is_req)
{
    CHECK(h.head_len == head_len);
    CHECK(head_len >= 4 && memcmp(buf + head_len - 4, "\r\n\r\n", 4) == 0);
    CHECK(h.nfields <= lim.max_fields && h.nfields <= HTTP1_MAX_FIELDS_CAP);
    CHECK(h.minor == 0 || h.minor == 1);
    /* every CR is followed by LF and every LF preceded by CR */
    for (size_t i = 0; i < head_len; i++) {
        if (buf[i] == '\r')
            CHECK(i + 1 < head_len && buf[i + 1] == '\n');
        if (buf[i] == '\n')
            CHECK(i > 0 && buf[i - 1] == '\r');
    }
    for (size_t i = 0; i < h.nfields; i++) {
        const struct http1_field *f = &h.fields[i];
        CHECK(within(buf, head_len, f->name) && f->name.n > 0);
        CHECK(within(buf, head_len, f->value));
        CHECK(!memchr(f->name.p, ':', f->name.n));
        for (size_t j = 0; j < f->value.n; j++) {
            unsigned char c = (unsigned char)f->value.p[j];
            CHECK(c == '\t' || (c >= 0x20 && c != 0x7f));
        }
        if (f->value.n) {
            CHECK(f->value.p[0] != ' ' && f->value.p[0] != '\t');
            CHECK(f->value.p[f->value.n - 1] != ' ' && f->value.p[f->value.n - 1] != '\t');
        }
    }
    CHECK(http1_find(&h, "x-no-such-field-name") == -1);
    /* one framing only: CL and TE together never parse */
    CHECK(!((h.flags & HTTP1_F_TE) && http1_find(&h, "content-length") >= 0));
    if (h.body == HTTP1_BODY_LENGTH)
        CHECK(h.content_length > 0);
    if (h.body == HTTP1_BODY_CHUNKED)
        CHECK(h.flags & HTTP1_F_TE);
    if (is_req) {
        CHECK(h.body != HTTP1_BODY_EOF);
        CHECK(within(buf, head_len, h.method) && h.method.n > 0);
        CHECK(within(buf, head_len, h.target) && h.target.n > 0);
        CHECK(within(buf, head_len, h.host));
        if (h.minor == 1)
            CHECK(h.host.p != NULL);
        if (h.flags & HTTP1_F_TE)
            CHECK(h.body == HTTP1_BODY_CHUNKED && h.minor == 1);
    } else {
        CHECK(h.status >= 100 && h.status <= 599);
        CHECK(within(buf, head_len, h.reason));
    }
}

static void fuzz_head(const char *buf, size_t size, size_t cut)
{
    size_t scan = 0, scan2 = 0;
    ssize_t n = http1_scan_head(buf, size, &lim, &scan);
    ssize_t n2;

    CHECK(n <= (ssize_t)size);
    CHECK(n <= (ssize_t)lim.max_head);
    CHECK(scan <= size);
    /* two calls on a growing buffer give the same answer as one */
    n2 = http1_scan_head(buf, cut, &lim, &scan2);
    if (n2 == 0)
        n2 = http1_scan_head(buf, size, &lim, &scan2);
    CHECK(n2 == n);
    if (n > 0) {
        const char *err = NULL;
        int r;
        CHECK(n >= 4);
        r = http1_parse_request(buf, (size_t)n, &lim, &h);
        CHECK(r <= 0);
        err = http1_err_str(r);
        CHECK(err != NULL);
        CHECK(http1_err_status(r) >= 400 && http1_err_status(r) <= 505);
        if (r == 0)
            check_head(buf, (size_t)n, 1);
        r = http1_parse_response(buf, (size_t)n, &lim, (size % 2) != 0, &h);
        CHECK(r <= 0);
        if (r == 0)
            check_head(buf, (size_t)n, 0);
    } else if (n < 0) {
        CHECK(-n >= HTTP1_E_SYNTAX && -n <= HTTP1_E_CHUNK_LARGE);
        /* the parser never accepts what the scanner rejected */
        if (size <= lim.max_head)
            CHECK(http1_parse_request(buf, size, &lim, &h) < 0);
    }

    /* the parsers must cope with any length they are handed */
    if (http1_parse_request(buf, size, &lim, &h) == 0) {
        check_head(buf, size, 1);
        CHECK(n == (ssize_t)size);
    }
    if (http1_parse_response(buf, size, &lim, 0, &h) == 0) {
        check_head(buf, size, 0);
        CHECK(n == (ssize_t)size);
    }
}

static ssize_t chunk_run(const char *buf, size_t size, const size_t *cuts, size_t ncuts,
                         int *done, uint64_t *total)
{
    struct http1_chunked c;
    size_t off = 0;
    ssize_t sum = 0;

    http1_chunked_init(&c, 256);
    *done = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t to = k < ncuts ? cuts[k] : size;
        ssize_t r;
        if (to < off || to > size)
            continue;
        r = http1_chunked_feed(&c, buf + off, to - off, done);
        if (r < 0) {
            CHECK(*done == 0);
            CHECK(r == -HTTP1_E_CHUNK || r == -HTTP1_E_CHUNK_LARGE);
            *total = c.data_total;
            return r;
        }
        CHECK((size_t)r <= to - off);
        sum += r;
        if (*done)
            break;
        CHECK((size_t)r == to - off);
        off = to;
    }
    CHECK(c.data_total <= (uint64_t)sum);
    *total = c.data_total;
    return sum;
}

static void fuzz_chunked(const char *buf, size_t size, size_t cut)
{
    size_t cuts[3];
    int d1, d2, d3;
    uint64_t t1, t2, t3;
    ssize_t r1, r2, r3;

    r1 = chunk_run(buf, size, NULL, 0, &d1, &t1);
    CHECK(r1 <= (ssize_t)size);
    cuts[0] = cut;
    r2 = chunk_run(buf, size, cuts, 1, &d2, &t2);
    CHECK(r1 == r2 && d1 == d2 && t1 == t2);
    cuts[0] = cut / 3;
    cuts[1] = cut;
    cuts[2] = cut + (size - cut) / 2;
    r3 = chunk_run(buf, size, cuts, 3, &d3, &t3);
    CHECK(r1 == r3 && d1 == d3 && t1 == t3);
    if (d1) {
        CHECK(r1 >= 5);
        CHECK(memcmp(buf + r1 - 2, "\r\n", 2) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    size_t cut = size ? (size_t)data[0] * size / 256 : 0;
    size_t scan = 0;
    ssize_t n;

    fuzz_head(buf, size, cut);
    fuzz_chunked(buf, size, cut);

    /* a chunked body behind a head, as the proxy sees it */
    n = http1_scan_head(buf, size, &lim, &scan);
    if (n > 0) {
        size_t rest = size - (size_t)n;
        fuzz_chunked(buf + n, rest, rest ? cut % (rest + 1) : 0);
    }
    return 0;
}
