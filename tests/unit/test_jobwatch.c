/* Unit tests for src/gateway/jobwatch.c's parser: the scheduler's lines
 * JOBID|STATE|UID read strictly (one bad line refuses the whole answer),
 * states sorted into running and ended, lookup by id. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobwatch.h"

static int parse(const char *s, struct watched_job **v, char *err, size_t errlen)
{
    return jobwatch_parse(s, strlen(s), v, err, errlen);
}

static void test_lines_sorted_and_found(void **state)
{
    (void)state;
    struct watched_job *v;
    char err[200];
    const char *out = "4711|RUNNING|1000\n12|COMPLETED|1001\n99|PENDING|0\n"
                      "100|CANCELLED|1000\n101|COMPLETING|1000\n102|NODE_FAIL|5\n"
                      "103|SUSPENDED|5\n104|OUT_OF_MEMORY|5";   /* no newline at the end */
    int n = parse(out, &v, err, sizeof(err));
    assert_int_equal(n, 8);
    for (int i = 1; i < n; i++)
        assert_true(v[i - 1].id < v[i].id);
    const struct watched_job *j = jobwatch_find(v, (size_t)n, 4711);
    assert_non_null(j);
    assert_int_equal(j->uid, 1000);
    assert_string_equal(j->state, "RUNNING");
    assert_false(j->ended);
    assert_true(jobwatch_find(v, (size_t)n, 12)->ended);
    assert_false(jobwatch_find(v, (size_t)n, 99)->ended);
    assert_true(jobwatch_find(v, (size_t)n, 100)->ended);
    assert_true(jobwatch_find(v, (size_t)n, 101)->ended);  /* its apps are being killed */
    assert_true(jobwatch_find(v, (size_t)n, 102)->ended);
    assert_false(jobwatch_find(v, (size_t)n, 103)->ended); /* comes back */
    assert_true(jobwatch_find(v, (size_t)n, 104)->ended);
    assert_null(jobwatch_find(v, (size_t)n, 13));
    free(v);

    /* No job at all is an answer too. */
    assert_int_equal(parse("", &v, err, sizeof(err)), 0);
    assert_null(jobwatch_find(v, 0, 1));
    free(v);
}

static void test_one_bad_line_refuses_all(void **state)
{
    (void)state;
    static const struct {
        const char *out;
        unsigned line;
    } bad[] = {
        {"1|RUNNING|1000\n2|RUNNING\n", 2},          /* a field missing */
        {"1|RUNNING|1000|x\n", 1},                    /* one too many */
        {"1|running|1000\n", 1},                      /* states are capitals */
        {"0|RUNNING|1000\n", 1},                      /* no job 0 */
        {"4294967295|RUNNING|1\n", 1},                /* NO_VAL */
        {"12_3|RUNNING|1000\n", 1},                   /* an array task's %i, not %A */
        {"1|RUNNING|root\n", 1},                      /* uids, not names */
        {"1|RUNNING|1000 \n", 1},                     /* nothing else on the line */
        {"1|RUNNING|1000\n\n2|RUNNING|1000\n", 2},    /* no empty lines */
        {"1||1000\n", 1},
        {"1|ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG|1\n", 1}, /* a state of 33 letters */
        {"slurm_load_jobs error: Unable to contact slurm controller\n", 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct watched_job *v = (struct watched_job *)1;
        char err[200], want[32];
        assert_int_equal(parse(bad[i].out, &v, err, sizeof(err)), -EPROTO);
        assert_null(v);
        snprintf(want, sizeof(want), "line %u ", bad[i].line);
        assert_non_null(strstr(err, want));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_sorted_and_found),
        cmocka_unit_test(test_one_bad_line_refuses_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
