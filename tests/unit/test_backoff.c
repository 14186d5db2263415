/* Unit tests for src/agent/backoff.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "backoff.h"

static void test_ceiling(void **state)
{
    (void)state;
    /* The largest draw shows the ceiling: base doubling per attempt, then the cap. */
    static const int64_t want[] = {500, 1000, 2000, 4000, 8000, 16000, 30000, 30000};
    for (unsigned a = 0; a < sizeof(want) / sizeof(want[0]); a++) {
        assert_int_equal(backoff_delay_ms(a, (uint32_t)want[a]), want[a]);
        assert_int_equal(backoff_delay_ms(a, (uint32_t)want[a] + 1), 0);
    }
    /* No overflow however many attempts failed. */
    assert_int_equal(backoff_delay_ms(1000000u, 30000), 30000);
    assert_int_equal(backoff_delay_ms(UINT32_MAX, 30000), 30000);
}

static void test_full_jitter(void **state)
{
    (void)state;
    /* Anything from 0 up to the ceiling: never more, and 0 is possible. */
    assert_int_equal(backoff_delay_ms(0, 0), 0);
    for (uint32_t r = 0; r < 100000; r += 7) {
        for (unsigned a = 0; a < 10; a++) {
            int64_t d = backoff_delay_ms(a, r * 2654435761u);
            assert_true(d >= 0 && d <= BACKOFF_CAP_MS);
            assert_true(d <= ((int64_t)BACKOFF_BASE_MS << (a < 6 ? a : 6)));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ceiling),
        cmocka_unit_test(test_full_jitter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
