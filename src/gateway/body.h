/*
 * body — the framing of an HTTP/1 message body as it streams through the
 * gateway (RFC 9112 6): how many of the bytes waiting in a buffer belong to
 * the body that is in flight, and whether it ends within them. Bodies are
 * never held whole: conn moves exactly that many bytes on, then asks again
 * with the next bytes.
 *
 * Owns nothing; pure over its arguments (the chunked state lives in the
 * caller's struct http1_chunked). Any thread.
 */
#ifndef JG_BODY_H
#define JG_BODY_H

#include <stdint.h>
#include <sys/types.h>

#include <event2/buffer.h>

#include "http1.h"

/*
 * How many bytes at the front of src belong to the body described by
 * (kind, *left, *ch): sets *done when the body ends within them and advances
 * *left / *ch past them. A close-delimited body takes everything; no body
 * is done at once. -1 when a chunked body is malformed.
 */
ssize_t body_span(struct evbuffer *src, enum http1_body kind, uint64_t *left,
                  struct http1_chunked *ch, int *done);

#endif
