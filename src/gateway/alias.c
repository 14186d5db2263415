/* alias — see alias.h. */
#include "alias.h"

#include <errno.h>
#include <string.h>

#include "route.h"
#include "token.h"
#include "util.h"

/* From the generated wordlist.c. */
extern const char *const alias_words[];
extern const size_t alias_nwords;

int alias_new(const struct route_table *t, char *out, size_t outlen)
{
    static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
    for (int attempt = 0; attempt < 8; attempt++) {
        const char *w[3];
        for (int i = 0; i < 3; i++)
            w[i] = alias_words[random_below((uint32_t)alias_nwords)];
        if (xsnprintf(out, outlen, "%s-%s-%s", w[0], w[1], w[2]) < 0)
            return -ENAMETOOLONG;
        if (!route_find(t, out, strlen(out)))
            return 0;
    }
    /* The table is crowded (or we are very unlucky): 12 base32 characters. */
    for (int attempt = 0; attempt < 8; attempt++) {
        uint8_t rnd[12];
        char tail[13];
        if (random_bytes(rnd, sizeof(rnd)) < 0)
            return -EIO;
        for (size_t i = 0; i < sizeof(rnd); i++)
            tail[i] = b32[rnd[i] & 31];
        tail[12] = '\0';
        if (xsnprintf(out, outlen, "app-%s", tail) < 0)
            return -ENAMETOOLONG;
        if (!route_find(t, out, strlen(out)))
            return 0;
    }
    return -EEXIST;
}
