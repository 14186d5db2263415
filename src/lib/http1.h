/*
 * http1 — strict HTTP/1.1 message-head parser and chunked-body scanner
 * (RFC 9110 / RFC 9112), written for a reverse proxy that streams bodies.
 *
 * Owns no memory: a parsed head points into the caller's buffer, which must
 * stay unchanged while the head is used. No allocation, no global state.
 *
 * Invariants (the proxy's safety rests on them):
 *  - a head is accepted only if every line ends in CRLF; a bare LF or bare CR
 *    anywhere in the head is an error, never "tolerated";
 *  - a request has exactly one framing: none, Content-Length, or chunked.
 *    Both Content-Length and Transfer-Encoding is an error (smuggling shape);
 *    differing Content-Length values (in one field or across fields) are an
 *    error; identical duplicates are one value;
 *  - obs-fold, control characters (other than HTAB in values), whitespace
 *    between a field name and its colon, and invalid token characters are
 *    errors;
 *  - every scan over peer bytes is bounded by the limits given by the caller.
 */
#ifndef JG_HTTP1_H
#define JG_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HTTP1_MAX_FIELDS_CAP 256 /* hard upper bound for http1_limits.max_fields */

struct http1_limits {
    size_t max_start_line; /* request line or status line, without CRLF */
    size_t max_head;       /* whole head including the final empty line */
    size_t max_fields;     /* header fields, at most HTTP1_MAX_FIELDS_CAP */
};

/* Errors, returned negated (-HTTP1_E_BAD_LF). */
enum http1_err {
    HTTP1_E_SYNTAX = 1,     /* 400 anything malformed not listed below */
    HTTP1_E_BARE_LF,        /* 400 LF not preceded by CR */
    HTTP1_E_BARE_CR,        /* 400 CR not followed by LF */
    HTTP1_E_CTL,            /* 400 control character */
    HTTP1_E_OBS_FOLD,       /* 400 line folding */
    HTTP1_E_FIELD_NAME,     /* 400 bad field name (incl. space before colon) */
    HTTP1_E_METHOD,         /* 400 bad method token */
    HTTP1_E_TARGET,         /* 400 bad request target */
    HTTP1_E_VERSION,        /* 505 HTTP version other than 1.0/1.1 (well-formed) */
    HTTP1_E_STATUS,         /* 502-worthy: bad status line (responses) */
    HTTP1_E_START_LINE_LONG,/* 414 request line too long (status line: 502) */
    HTTP1_E_HEAD_LARGE,     /* 431 head larger than max_head */
    HTTP1_E_TOO_MANY_FIELDS,/* 431 more than max_fields */
    HTTP1_E_CL_INVALID,     /* 400 Content-Length not 1*DIGIT or overflows */
    HTTP1_E_CL_CONFLICT,    /* 400 differing Content-Length values */
    HTTP1_E_CL_AND_TE,      /* 400 both Content-Length and Transfer-Encoding */
    HTTP1_E_TE_UNSUPPORTED, /* 501 request transfer-coding other than "chunked" */
    HTTP1_E_TE_INVALID,     /* 400 malformed TE, "chunked" twice or not last, TE in HTTP/1.0 request */
    HTTP1_E_HOST,           /* 400 missing Host in HTTP/1.1, several Host fields, bad Host value */
    HTTP1_E_CHUNK,          /* 400 malformed chunked body (size line, CRLF, trailer) */
    HTTP1_E_CHUNK_LARGE,    /* 400 chunk size overflow, or extension/trailer over limits */
};

struct http1_str {
    const char *p;
    size_t n;
};

struct http1_field {
    struct http1_str name;  /* as received (case preserved) */
    struct http1_str value; /* leading and trailing OWS removed */
};

enum http1_body {
    HTTP1_BODY_NONE = 0, /* no body bytes follow the head */
    HTTP1_BODY_LENGTH,   /* content_length bytes follow */
    HTTP1_BODY_CHUNKED,  /* a chunked body follows */
    HTTP1_BODY_EOF,      /* response only: body ends when the server closes */
};

/* flags */
#define HTTP1_F_CLOSE        0x01u /* Connection: close, or HTTP/1.0 without keep-alive */
#define HTTP1_F_UPGRADE      0x02u /* Connection lists "upgrade" and an Upgrade field exists */
#define HTTP1_F_EXPECT_100   0x04u /* Expect: 100-continue */
#define HTTP1_F_EXPECT_OTHER 0x08u /* an Expect field with any other value (417) */
#define HTTP1_F_TE           0x10u /* a Transfer-Encoding field was present */

struct http1_head {
    /* request line */
    struct http1_str method;
    struct http1_str target;
    /* status line */
    int status;
    struct http1_str reason;

    int minor;                 /* HTTP/1.<minor>: 0 or 1 */
    size_t head_len;           /* bytes of the head including the final CRLF CRLF */
    struct http1_field fields[HTTP1_MAX_FIELDS_CAP];
    size_t nfields;

    enum http1_body body;
    uint64_t content_length;   /* valid when body == HTTP1_BODY_LENGTH */
    unsigned flags;
    struct http1_str host;     /* requests: the Host value; p == NULL when absent (1.0) */
};

/*
 * Finds the end of a head in a buffer that grows between calls. *scan is the
 * caller's cursor: set it to 0 for a new head and keep it between calls, so
 * the total work is linear in the head size. Rejects a bare LF or CR as soon
 * as it is seen, a start line longer than max_start_line as soon as that many
 * bytes arrived without its end (HTTP1_E_START_LINE_LONG), and a head longer
 * than max_head (HTTP1_E_HEAD_LARGE).
 * Returns the head length (> 0) when the empty line was found, 0 when more
 * bytes are needed, or -HTTP1_E_*.
 * Leading empty lines before a request line (RFC 9112 2.2) are not skipped:
 * they are an error.
 */
ssize_t http1_scan_head(const char *buf, size_t len, const struct http1_limits *lim, size_t *scan);

/*
 * Parses a complete request head of exactly head_len bytes (as returned by
 * http1_scan_head). Fills *h. Returns 0 or -HTTP1_E_*.
 * Request framing: Transfer-Encoding whose only coding is "chunked" ->
 * CHUNKED; Content-Length -> LENGTH (LENGTH with 0 becomes NONE); else NONE.
 * A request target must be non-empty visible ASCII (0x21-0x7e).
 * HTTP/1.1 requires exactly one Host field; HTTP/1.0 allows none, not two.
 * A Host value must be a reg-name / IPv4 / [IPv6] with an optional :port,
 * characters limited to A-Za-z0-9 . - _ ~ : [ ] and at most 255 bytes.
 */
int http1_parse_request(const char *buf, size_t head_len, const struct http1_limits *lim,
                        struct http1_head *h);

/*
 * Parses a complete response head. head_request is nonzero when the request
 * was HEAD. Response framing: HEAD request, 1xx, 204 and 304 -> NONE;
 * Transfer-Encoding with "chunked" last -> CHUNKED; other Transfer-Encoding ->
 * EOF; Content-Length -> LENGTH (0 -> NONE); else EOF. Both CL and TE is
 * -HTTP1_E_CL_AND_TE. Status must be three digits 100..599.
 */
int http1_parse_response(const char *buf, size_t head_len, const struct http1_limits *lim,
                         int head_request, struct http1_head *h);

/* Suggested HTTP status for an error in a request (400, 414, 431, 501, 505). */
int http1_err_status(int err);
/* Short English reason for an error code (positive or negative). Never NULL. */
const char *http1_err_str(int err);

/* Case-insensitive comparison of a field name with a lower-case literal. */
int http1_name_is(const struct http1_str *name, const char *lower);
/* True if a comma-separated list value contains token (case-insensitive, OWS around items ignored). */
int http1_list_has(const struct http1_str *value, const char *lower_token);
/* Index of the first field with that name, or -1. */
int http1_find(const struct http1_head *h, const char *lower_name);

/*
 * Chunked body scanner: validates a chunked body and finds where it ends,
 * without copying. The proxy forwards the raw bytes it was told belong to the
 * body. Chunk data is skipped without being inspected.
 * Limits: chunk-size at most 16 hex digits and no overflow of uint64_t; one
 * size line (with extensions) at most 4096 bytes; trailer section at most
 * max_trailer bytes in total (set by http1_chunked_init).
 */
struct http1_chunked {
    int state;              /* private */
    uint64_t remaining;     /* private: data bytes left in the current chunk */
    size_t line;            /* private: bytes in the current line */
    size_t trailer;         /* private: bytes of trailer section so far */
    size_t max_trailer;
    int digits;             /* private */
    uint64_t data_total;    /* sum of chunk-data bytes seen so far (for tests, logs) */
};

void http1_chunked_init(struct http1_chunked *c, size_t max_trailer);
/*
 * Feeds the next len bytes of the stream. Returns how many of them belong to
 * the body (<= len), or -HTTP1_E_CHUNK / -HTTP1_E_CHUNK_LARGE. *done is set to
 * 1 when the body's final CRLF has been consumed (the return value then stops
 * right after it; bytes beyond belong to the next message), else 0.
 * Works on any split of the input, down to one byte at a time.
 */
ssize_t http1_chunked_feed(struct http1_chunked *c, const char *p, size_t len, int *done);

#endif
