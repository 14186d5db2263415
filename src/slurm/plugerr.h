/*
 * plugerr — errmsg() (src/lib/util.h) for the plugin's modules, which link
 * nothing of src/lib (util.c brings the log and abort-on-failure allocation
 * that have no place inside Slurm's processes): writes a message into err
 * and returns rc, to keep error paths to one line; plug_ossl_err() is
 * OpenSSL's last error as text for such messages.
 */
#ifndef JG_PLUGERR_H
#define JG_PLUGERR_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include <openssl/err.h>

static inline int plug_err(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static inline int plug_err(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* OpenSSL's last error as text (a thread's own buffer), the queue cleared. */
static inline const char *plug_ossl_err(void)
{
    static __thread char buf[256];
    unsigned long e = ERR_peek_last_error();
    if (!e)
        return "no OpenSSL error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

#endif
