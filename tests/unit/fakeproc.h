/* A fake /proc for unit tests (test_procnet.c, test_jobready.c): files,
 * directories and descriptor links under a temporary directory. Include
 * after cmocka.h; one fake tree per test program. */
#ifndef JG_TEST_FAKEPROC_H
#define JG_TEST_FAKEPROC_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char fake[64];

/* Makes the fake tree's root (empty). */
static void fake_make(const char *prefix)
{
    snprintf(fake, sizeof(fake), "/tmp/%s-XXXXXX", prefix);
    assert_non_null(mkdtemp(fake));
}

/* Removes the whole tree. */
static void fake_remove(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fake);
    assert_int_equal(system(cmd), 0);
}

static void put(const char *rel, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", fake, rel);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void mk(const char *rel)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", fake, rel);
    assert_int_equal(mkdir(path, 0700), 0);
}

static void fdlink(const char *rel, const char *target)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", fake, rel);
    assert_int_equal(symlink(target, path), 0);
}

#endif
