/*
 * log — the one logging sink: stderr (with a timestamp) or syslog.
 *
 * Rule for every caller: never pass a token, cookie, credential or query
 * string to these functions. Name the object instead (conn id, alias, uid).
 * Untrusted strings may be passed as they are: every message is escaped here,
 * in one place (control characters and DEL as \xHH, a backslash as \\), so
 * one message is always one line.
 */
#ifndef JG_LOG_H
#define JG_LOG_H

enum log_level { LOG_LVL_ERR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* ident: program name; use_syslog: 0 = stderr; level: most verbose level shown. */
void log_init(const char *ident, int use_syslog, enum log_level level);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int log_enabled(enum log_level lvl);

#define log_err(...)   log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_enabled(LOG_LVL_DEBUG)) log_msg(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)

/*
 * A line that a peer can cause at will (a refused client, a wrong token):
 * at most LOG_LIMIT_BURST such lines a second per limiter, and the first one
 * after a suppressed stretch says how many were left out. A limiter belongs
 * to one thread (a static one in code that runs on one loop, or one per
 * worker); zero-initialise it.
 */
#define LOG_LIMIT_BURST 10
struct log_limit {
    long long window;          /* the second (monotonic) being counted */
    unsigned lines;            /* written in that second */
    unsigned long suppressed;  /* left out since the last written line */
};
void log_limited(struct log_limit *l, enum log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Access-log lines (one per request) go through a per-thread buffer written
 * out when it fills, when log_flush() is called from that thread (each
 * event-loop thread does so every second and at exit) or before any other
 * log line of that thread, so that its lines stay in order. Costs one
 * write per 32 KiB instead of one per request. On syslog it is log_info.
 */
void log_access(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_flush(void);

/* Logs at LOG_LVL_ERR and exits with status 1. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
