/* app — see app.h. */
#include "app.h"

#include <errno.h>
#include <string.h>

int app_name_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

int app_name_valid(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!app_name_char_ok(s[i]))
            return 0;
    return 1;
}

int app_link_ttl_valid(int64_t ttl)
{
    return ttl >= 1 && ttl <= APP_LINK_TTL_MAX;
}

int app_json_ttl(const json_t *req, int64_t dflt, int64_t *ttl)
{
    const json_t *t = json_object_get(req, "ttl");
    *ttl = dflt;
    if (!t)
        return 0;
    if (!json_is_integer(t) || !app_link_ttl_valid(json_integer_value(t)))
        return -EINVAL;
    *ttl = json_integer_value(t);
    return 0;
}
