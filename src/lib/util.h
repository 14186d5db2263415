/*
 * util — process-wide helpers that every module uses: allocation that never
 * returns NULL (allocation failure is fatal, one place decides how), bounded
 * string formatting, and the two clocks.
 *
 * Owns nothing; no state.
 */
#ifndef JG_UTIL_H
#define JG_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define JG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Called first thing in main(): fixes glibc's malloc thresholds for a
 * process that recycles 64-256 KiB I/O buffers (evbuffer chains, TLS
 * records). With the defaults, freeing such a chunk at the top of a heap
 * gives it back to the kernel and the next read takes it again: a brk or
 * madvise plus page faults per buffer, a sixth of the gateway's CPU on a
 * tunnel download. Keeps at most 2 MiB free per arena. */
void malloc_tune(void);

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* 1 when a and b are equal strings, or both NULL. */
int str_same(const char *a, const char *b);
char *xstrndup(const char *s, size_t n);

/* snprintf that reports truncation: returns 0 when the whole string fit,
 * -ENAMETOOLONG when it was cut (dst is still NUL-terminated). */
int xsnprintf(char *dst, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes a message into err (when err is non-NULL and errlen > 0; a cut
 * message is better than none) and returns rc, to keep error paths short:
 * `return errmsg(err, errlen, -EINVAL, "bad %s", what);` */
int errmsg(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The value of a hex digit (0-9, a-f, A-F), or -1. Inline: the head parser
 * uses it and is built alone for fuzzing. */
static inline int hex_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Seconds since the epoch (wall clock) and milliseconds of CLOCK_MONOTONIC. */
int64_t now_real(void);
int64_t now_mono_ms(void);

/* Parses a duration: a whole number with an optional unit s, m, h or d
 * ("90", "30s", "10m", "12h", "7d"). Returns 0 and the seconds, or -EINVAL.
 * The result is capped at 10 years; larger values are -ERANGE. */
int parse_duration(const char *s, int64_t *secs);

/* Parses a decimal unsigned integer in [min, max]; -EINVAL or -ERANGE. */
int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* Makes a directory (and missing parents) with the given mode; an existing
 * directory is fine. Returns 0 or -errno. */
int mkdir_p(const char *path, unsigned mode);

#endif
