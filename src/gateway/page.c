/* page — see page.h. */
#include "page.h"

#include <stdio.h>
#include <string.h>

#include "util.h"

const char *page_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 303: return "See Other";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static const char *page_sentence(int status)
{
    switch (status) {
    case 400: return "The request was malformed, so the gateway refused it.";
    case 403: return "You have no session for this app. Open a fresh link from 'jobgate link' "
                     "or from the output of 'jobgate run'.";
    case 404: return "There is no app at this address. It may have ended with its job.";
    case 414: return "The request line is too long.";
    case 429: return "Too many tries from your address. Wait a minute, then try again.";
    case 431: return "The request headers are too large.";
    case 501: return "The gateway does not support that transfer coding.";
    case 502: return "The app is not reachable: it may have stopped or crashed.";
    case 503: return "The app is starting. This page will try again in a few seconds.";
    case 504: return "The app did not answer in time.";
    case 505: return "Only HTTP/1.0 and HTTP/1.1 are supported.";
    default: return "The gateway could not handle this request.";
    }
}

/* Copies src into dst with HTML escaping; always NUL-terminates. */
static void html_escape(char *dst, size_t size, const char *src)
{
    size_t o = 0;
    for (; *src && o + 7 < size; src++) {
        const char *rep = NULL;
        switch (*src) {
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '&': rep = "&amp;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        default: break;
        }
        if (rep) {
            size_t n = strlen(rep);
            memcpy(dst + o, rep, n);
            o += n;
        } else if ((unsigned char)*src >= 0x20 && *src != 0x7f) {
            dst[o++] = *src;
        }
    }
    dst[o] = '\0';
}

void page_send(struct evbuffer *out, int status, const char *ctype, const char *body, size_t len,
               int close, const char *extra, int head_only)
{
    evbuffer_add_printf(out,
                        "HTTP/1.1 %d %s\r\n"
                        "Content-Type: %s\r\n"
                        "Content-Length: %zu\r\n"
                        "Cache-Control: no-store\r\n"
                        "X-Content-Type-Options: nosniff\r\n"
                        "X-Frame-Options: DENY\r\n"
                        "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n"
                        "Referrer-Policy: no-referrer\r\n"
                        "%s%s\r\n",
                        status, page_reason(status), ctype, len, close ? "Connection: close\r\n" : "",
                        extra ? extra : "");
    if (!head_only && len)
        evbuffer_add(out, body, len);
}

void page_error(struct evbuffer *out, int status, const char *detail, int close, const char *extra,
                int head_only)
{
    char esc[600], body[2048];
    html_escape(esc, sizeof(esc), detail ? detail : page_sentence(status));
    const char *refresh = status == 503 ? "<meta http-equiv=\"refresh\" content=\"3\">" : "";
    int n = snprintf(body, sizeof(body),
                     "<!doctype html>\n<html><head><meta charset=\"utf-8\">%s"
                     "<title>%d %s</title>"
                     "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;"
                     "padding:0 1em;color:#222}h1{font-size:1.4em}small{color:#777}</style></head>\n"
                     "<body><h1>%d %s</h1>\n<p>%s</p>\n<p><small>jobgate</small></p></body></html>\n",
                     refresh, status, page_reason(status), status, page_reason(status), esc);
    if (n < 0 || (size_t)n >= sizeof(body))
        n = (int)strlen(body);
    page_send(out, status, "text/html; charset=utf-8", body, (size_t)n, close, extra, head_only);
}

void page_waking(struct evbuffer *out, unsigned retry, int html, int close, int head_only)
{
    char body[1024], extra[64];
    int n;
    (void)snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", retry);
    if (!html) {
        n = snprintf(body, sizeof(body), "The app is asleep: its agent comes back within %u s. "
                     "Try again then.\n", retry);
        page_send(out, 503, "text/plain; charset=utf-8", body, n > 0 ? (size_t)n : 0, close,
                  extra, head_only);
        return;
    }
    n = snprintf(body, sizeof(body),
                 "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
                 "<meta http-equiv=\"refresh\" content=\"%u\">"
                 "<title>Waking the app</title>"
                 "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;"
                 "padding:0 1em;color:#222}h1{font-size:1.4em}small{color:#777}</style></head>\n"
                 "<body><h1>Waking the app&hellip;</h1>\n<p>Its agent is asleep and comes back "
                 "within %u s. This page tries again by itself.</p>\n"
                 "<p><small>jobgate</small></p></body></html>\n", retry, retry);
    if (n < 0 || (size_t)n >= sizeof(body))
        n = (int)strlen(body);
    page_send(out, 503, "text/html; charset=utf-8", body, (size_t)n, close, extra, head_only);
}

void page_redirect(struct evbuffer *out, const char *location, int close, const char *extra)
{
    evbuffer_add_printf(out,
                        "HTTP/1.1 303 See Other\r\n"
                        "Location: %s\r\n"
                        "Content-Length: 0\r\n"
                        "Cache-Control: no-store\r\n"
                        "Referrer-Policy: no-referrer\r\n"
                        "%s%s\r\n",
                        location, close ? "Connection: close\r\n" : "", extra ? extra : "");
}
