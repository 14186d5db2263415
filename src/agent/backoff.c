/* backoff — see backoff.h. */
#include "backoff.h"

int64_t backoff_delay_ms(unsigned attempt, uint32_t rnd)
{
    int64_t ceil = BACKOFF_BASE_MS;
    for (unsigned i = 0; i < attempt && ceil < BACKOFF_CAP_MS; i++)
        ceil *= 2;
    if (ceil > BACKOFF_CAP_MS)
        ceil = BACKOFF_CAP_MS;
    return (int64_t)(rnd % (uint32_t)(ceil + 1));
}
