/* log — see log.h. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "jobgate";
static int log_syslog;
static enum log_level log_max = LOG_LVL_INFO;
static long log_pid;
/* Per thread, so that event-loop threads never share a buffer. */
static __thread char acc_buf[32768];
static __thread size_t acc_len;

void log_init(const char *ident, int use_syslog, enum log_level level)
{
    log_ident = ident;
    log_syslog = use_syslog;
    log_max = level;
    log_pid = (long)getpid();
    if (use_syslog)
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

int log_enabled(enum log_level lvl)
{
    return lvl <= log_max;
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nowhere left to complain to */
        p += w;
        n -= (size_t)w;
    }
}

void log_flush(void)
{
    if (acc_len)
        write_all(acc_buf, acc_len);
    acc_len = 0;
}

static int log_line(char *line, size_t size, const char *lvl, const char *msg)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (!log_pid)
        log_pid = (long)getpid();
    int n = snprintf(line, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%ld] %s: %s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_ident, log_pid, lvl, msg);
    if (n < 0)
        return 0;
    if ((size_t)n >= size) {
        n = (int)size - 1;
        line[n - 1] = '\n';
    }
    return n;
}

/* The one place where what a line says is made safe: every string in it
 * may come from a client, an agent or a node (an alias, an op name, a
 * reason), so control characters and DEL become \xHH and a backslash \\:
 * no message can end its line early, forge another, or move a terminal's
 * cursor. */
static void log_escape(char *dst, size_t size, const char *src)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)src; *p && o + 5 < size; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[*p >> 4];
            dst[o++] = hex[*p & 15];
        } else if (*p == '\\') {
            dst[o++] = '\\';
            dst[o++] = '\\';
        } else {
            dst[o++] = (char)*p;
        }
    }
    dst[o] = '\0';
}

static void log_v(enum log_level lvl, int access_line, const char *fmt, va_list ap)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    static const char *name[] = {"error", "warn", "info", "debug"};
    if (lvl > log_max)
        return;
    char raw[2048], msg[2048], line[2200];
    vsnprintf(raw, sizeof(raw), fmt, ap);
    log_escape(msg, sizeof(msg), raw);
    if (log_syslog) {
        syslog(prio[lvl], "%s", msg);
        return;
    }
    int n = log_line(line, sizeof(line), name[lvl], msg);
    if (lvl == LOG_LVL_INFO && access_line) {
        if (acc_len + (size_t)n > sizeof(acc_buf))
            log_flush();
        memcpy(acc_buf + acc_len, line, (size_t)n);
        acc_len += (size_t)n;
        return;
    }
    log_flush();
    write_all(line, (size_t)n);
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(lvl, 0, fmt, ap);
    va_end(ap);
}

void log_limited(struct log_limit *l, enum log_level lvl, const char *fmt, ...)
{
    if (lvl > log_max)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* not util's now_mono_ms: util logs */
    long long sec = (long long)ts.tv_sec;
    if (sec != l->window) {
        l->window = sec;
        l->lines = 0;
    }
    if (l->lines >= LOG_LIMIT_BURST) {
        l->suppressed++;
        return;
    }
    l->lines++;
    char raw[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    if (l->suppressed)
        log_msg(lvl, "%s (%lu similar lines before it not logged)", raw, l->suppressed);
    else
        log_msg(lvl, "%s", raw);
    l->suppressed = 0;
}

void log_access(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(LOG_LVL_INFO, 1, fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(LOG_LVL_ERR, 0, fmt, ap);
    va_end(ap);
    log_flush();
    exit(1);
}
