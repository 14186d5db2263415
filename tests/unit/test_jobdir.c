/* Unit tests for src/slurm/jobdir.c: job directories made and removed without following a
 * link the user planted. As root, also the hand-over to another uid. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "jobdir.h"

static char tmp[256], base[300], path[512], err[512];

static int setup(void **state)
{
    snprintf(tmp, sizeof(tmp), "/tmp/jg-jobdir-XXXXXX");
    assert_non_null(mkdtemp(tmp));
    snprintf(base, sizeof(base), "%s/run/jobs", tmp);
    return 0;
}

static int teardown(void **state)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static void touch(const char *dir, const char *name)
{
    char p[1024];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    int fd = open(p, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
}

static void test_make_then_remove(void **state)
{
    uid_t uid = geteuid();
    gid_t gid = getegid();
    assert_int_equal(jobdir_make(base, 42, uid, gid, path, sizeof(path), err, sizeof(err)), 0);
    char want[600];
    snprintf(want, sizeof(want), "%s/42", base);
    assert_string_equal(path, want);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0700);
    assert_int_equal(st.st_uid, uid);
    assert_int_equal(lstat(base, &st), 0);
    assert_int_equal(st.st_mode & 022, 0);

    /* A later step of the job finds it. */
    assert_int_equal(jobdir_make(base, 42, uid, gid, path, sizeof(path), err, sizeof(err)), 0);

    /* What the job left inside goes with it, nested. */
    touch(path, "cert.pem");
    char sub[600];
    snprintf(sub, sizeof(sub), "%s/a", path);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(sub, sizeof(sub), "%s/a/b", path);
    assert_int_equal(mkdir(sub, 0700), 0);
    touch(sub, "x");
    assert_int_equal(jobdir_remove(base, 42, 0, err, sizeof(err)), 0);
    assert_int_equal(lstat(path, &st), -1);
    assert_int_equal(errno, ENOENT);
    /* Absent is fine. */
    assert_int_equal(jobdir_remove(base, 42, 0, err, sizeof(err)), 0);
}

static void test_remove_never_follows_a_link(void **state)
{
    uid_t uid = geteuid();
    assert_int_equal(jobdir_make(base, 7, uid, getegid(), path, sizeof(path), err, sizeof(err)), 0);
    /* A directory outside with a file the job must not be able to have removed. */
    char outside[600], link[700];
    snprintf(outside, sizeof(outside), "%s/outside", tmp);
    assert_int_equal(mkdir(outside, 0700), 0);
    touch(outside, "precious");
    snprintf(link, sizeof(link), "%s/escape", path);
    assert_int_equal(symlink(outside, link), 0);
    assert_int_equal(jobdir_remove(base, 7, 0, err, sizeof(err)), 0);
    char precious[700];
    snprintf(precious, sizeof(precious), "%s/precious", outside);
    assert_int_equal(access(precious, F_OK), 0);

    /* The job directory itself replaced by a link: the link goes, not its target. */
    snprintf(link, sizeof(link), "%s/8", base);
    assert_int_equal(symlink(outside, link), 0);
    assert_int_equal(jobdir_remove(base, 8, 0, err, sizeof(err)), 0);
    assert_int_equal(access(precious, F_OK), 0);
}

static void test_make_refuses_what_is_not_the_jobs(void **state)
{
    uid_t uid = geteuid();
    assert_int_equal(jobdir_make(base, 1, uid, getegid(), path, sizeof(path), err, sizeof(err)), 0);
    /* A link planted where the job directory goes. */
    char outside[600], link[700];
    snprintf(outside, sizeof(outside), "%s/elsewhere", tmp);
    assert_int_equal(mkdir(outside, 0700), 0);
    snprintf(link, sizeof(link), "%s/9", base);
    assert_int_equal(symlink(outside, link), 0);
    assert_true(jobdir_make(base, 9, uid, getegid(), path, sizeof(path), err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "not a directory"));

    /* A job directory that others may enter. */
    snprintf(path, sizeof(path), "%s/10", base);
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(jobdir_make(base, 10, uid, getegid(), path, sizeof(path), err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "is not the job's"));

    /* A base that others may write. */
    assert_int_equal(chmod(base, 0777), 0);
    assert_int_equal(jobdir_make(base, 11, uid, getegid(), path, sizeof(path), err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "writable by it alone"));
    assert_int_equal(chmod(base, 0755), 0);

    /* Another user's existing directory (root only: the hand-over to the job's uid). */
    if (geteuid() == 0) {
        assert_int_equal(jobdir_make(base, 12, 4242, 4242, path, sizeof(path), err, sizeof(err)), 0);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_uid, 4242);
        assert_int_equal(st.st_gid, 4242);
        assert_int_equal(jobdir_make(base, 12, 4343, 4343, path, sizeof(path), err, sizeof(err)), -EPERM);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_make_then_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_never_follows_a_link, setup, teardown),
        cmocka_unit_test_setup_teardown(test_make_refuses_what_is_not_the_jobs, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
