/* Unit tests for src/slurm/jobready.c: the destinations a job's process tree
 * gives, from a fake /proc (which listeners count, how their addresses read
 * for the gateway). slurm_error and friends are stubs here: the plugin gets
 * them from the Slurm process that loads it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "jobready.h"

void slurm_error(const char *fmt, ...);
void slurm_verbose(const char *fmt, ...);
void slurm_error(const char *fmt, ...) { (void)fmt; }
void slurm_verbose(const char *fmt, ...) { (void)fmt; }

#include "fakeproc.h"

#define V4(n, hex, port, inode)                                                            \
    "   " #n ": " hex ":" port " 00000000:0000 0A 00000000:00000000 00:00000000 00000000  "  \
    "1000        0 " #inode " 1 0 100 0 0 10 0\n"
#define V6(n, hex, port, inode)                                                            \
    "   " #n ": " hex ":" port " 00000000000000000000000000000000:0000 0A 00000000:00000000 " \
    "00:00000000 00000000  1000        0 " #inode " 1 0 100 0 0 10 0\n"

static void test_destinations_of_a_tree(void **state)
{
    (void)state;
    fake_make("jobready");
    mk("net");
    put("net/tcp", "  sl  local_address rem_address   st ...\n"
        V4(0, "00000000", "22B8", 101)       /* 0.0.0.0:8888: the host's name */
        V4(1, "0100007F", "2328", 102)       /* 127.0.0.1:9000: left out */
        V4(2, "0302010A", "1B58", 103)       /* 10.1.2.3:7000 */
        V4(3, "0302010A", "1B59", 999));     /* 10.1.2.3:7001, not the job's */
    put("net/tcp6", "  sl  local_address ...\n"
        V6(0, "00000000000000000000000000000000", "22B8", 201) /* [::]:8888: the same */
        V6(1, "00000000000000000000000001000000", "2329", 202) /* [::1]:9001: left out */
        V6(2, "0000000000000000FFFF00000708090A", "1770", 203) /* ::ffff:10.9.8.7:6000 */
        V6(3, "000080FE000000000000000001000000", "1771", 204) /* fe80::1:6001: left out */
        V6(4, "B80D0120000000000000000005000000", "1772", 205)); /* 2001:db8::5:6002 */
    /* stepd 50 -> task 51 -> app 52; 60 is someone else's */
    mk("50"); mk("50/fd"); put("50/stat", "50 (slurmstepd) S 1 50 50 0 -1\n");
    mk("51"); mk("51/fd"); put("51/stat", "51 (bash) S 50 51 51 0 -1\n");
    mk("52"); mk("52/fd"); put("52/stat", "52 (app) S 51 51 51 0 -1\n");
    mk("60"); mk("60/fd"); put("60/stat", "60 (other) S 1 60 60 0 -1\n");
    const char *mine[] = {"101", "102", "103", "201", "202", "203", "204", "205"};
    for (size_t i = 0; i < sizeof(mine) / sizeof(mine[0]); i++) {
        char rel[32], target[32];
        snprintf(rel, sizeof(rel), "52/fd/%zu", i + 3);
        snprintf(target, sizeof(target), "socket:[%s]", mine[i]);
        fdlink(rel, target);
    }
    fdlink("60/fd/3", "socket:[999]");

    const char *addrs[] = {"192.0.2.10", "10.1.2.3", "2001:db8::a", "10.9.8.7",
                           "2001:db8::5"}; /* the node's own */
    json_t *list = jobready_list(fake, 50, 1000, addrs, 5);
    assert_non_null(list);
    char *text = json_dumps(list, JSON_COMPACT);
    /* 0.0.0.0:8888 at each IPv4 address; [::]:8888 at every address (once each); the
     * others as bound; loopback and link-local never. */
    assert_string_equal(text, "[{\"host\":\"192.0.2.10\",\"port\":8888},"
                              "{\"host\":\"10.1.2.3\",\"port\":8888},"
                              "{\"host\":\"10.9.8.7\",\"port\":8888},"
                              "{\"host\":\"10.1.2.3\",\"port\":7000},"
                              "{\"host\":\"2001:db8::a\",\"port\":8888},"
                              "{\"host\":\"2001:db8::5\",\"port\":8888},"
                              "{\"host\":\"10.9.8.7\",\"port\":6000},"
                              "{\"host\":\"2001:db8::5\",\"port\":6002}]");
    free(text);
    json_decref(list);
    /* An address that is not the node's (IP_FREEBIND binds any) is never reported. */
    list = jobready_list(fake, 50, 1000, addrs, 2);
    text = json_dumps(list, JSON_COMPACT);
    assert_string_equal(text, "[{\"host\":\"192.0.2.10\",\"port\":8888},"
                              "{\"host\":\"10.1.2.3\",\"port\":8888},"
                              "{\"host\":\"10.1.2.3\",\"port\":7000}]");
    free(text);
    json_decref(list);
    /* Sockets of another uid are not the job's, even in its tree. */
    list = jobready_list(fake, 50, 1001, addrs, 5);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    /* Another tree's: only its own. */
    list = jobready_list(fake, 60, 1000, addrs, 5);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);

    fake_remove();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_destinations_of_a_tree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
