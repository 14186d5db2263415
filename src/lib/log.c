/* log — see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "jobgate";
static int log_syslog;
static enum log_level log_max = LOG_LVL_INFO;

void log_init(const char *ident, int use_syslog, enum log_level level)
{
    log_ident = ident;
    log_syslog = use_syslog;
    log_max = level;
    if (use_syslog)
        openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

int log_enabled(enum log_level lvl)
{
    return lvl <= log_max;
}

static void log_v(enum log_level lvl, const char *fmt, va_list ap)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    static const char *name[] = {"error", "warn", "info", "debug"};
    if (lvl > log_max)
        return;
    if (log_syslog) {
        vsyslog(prio[lvl], fmt, ap);
        return;
    }
    char msg[2048];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    /* One write per line so that lines of concurrent processes do not interleave. */
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%ld] %s: %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            log_ident, (long)getpid(), name[lvl], msg);
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(lvl, fmt, ap);
    va_end(ap);
}

void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(LOG_LVL_ERR, fmt, ap);
    va_end(ap);
    exit(1);
}
