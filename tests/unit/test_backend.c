/* Unit tests for backend's ownership checks (I2, I3): UNIX socket paths on a
 * real file system, loopback TCP ports on a fake /proc tree (plus one check
 * against the real /proc with a socket of our own). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "backend.h"

#define OTHER_UID ((uid_t)12345)
#define THIRD_UID ((uid_t)54321)

struct fx {
    char dir[64];     /* 0700, ours */
    char sock[128];   /* dir/app.sock */
    int fd;           /* bound socket or -1 */
    char why[256];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    f->fd = -1;
    memcpy(f->dir, "/tmp/jg-be-XXXXXX", sizeof("/tmp/jg-be-XXXXXX"));
    if (!mkdtemp(f->dir) ||
        snprintf(f->sock, sizeof(f->sock), "%s/app.sock", f->dir) >= (int)sizeof(f->sock)) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static void rm_in(const struct fx *f, const char *name)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", f->dir, name);
    (void)unlink(p);
    (void)rmdir(p);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    if (f->fd >= 0)
        close(f->fd);
    rm_in(f, "app.sock");
    rm_in(f, "file");
    rm_in(f, "link.sock");
    rm_in(f, "sub/app.sock");
    rm_in(f, "sub");
    rm_in(f, "net/tcp");
    rm_in(f, "net/tcp6");
    rm_in(f, "net");
    int rc = rmdir(f->dir);
    free(f);
    return rc;
}

static int bind_unix(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    assert_true(strlen(path) < sizeof(sun.sun_path));
    memcpy(sun.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
    assert_int_equal(listen(fd, 4), 0);
    return fd;
}

static int check_unix(struct fx *f, const char *path, uid_t uid, int may_be_missing)
{
    f->why[0] = '\0';
    int r = backend_check_unix(path, uid, may_be_missing, f->why, sizeof(f->why));
    if (r != 0)
        assert_true(f->why[0] != '\0'); /* a refusal always says why */
    return r;
}

/* ---- backend_check_unix ------------------------------------------------------- */

static void test_unix_ok(void **state)
{
    struct fx *f = *state;
    f->fd = bind_unix(f->sock);
    assert_int_equal(check_unix(f, f->sock, getuid(), 0), 0);
    assert_int_equal(check_unix(f, f->sock, getuid(), 1), 0);
    /* 0755: others may read the directory but not write it */
    assert_int_equal(chmod(f->dir, 0755), 0);
    assert_int_equal(check_unix(f, f->sock, getuid(), 0), 0);
}

static void test_unix_dir_writable_by_others(void **state)
{
    struct fx *f = *state;
    f->fd = bind_unix(f->sock);
    static const mode_t bad[] = {0777, 0770, 0720, 0702, 01777, 0730};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(chmod(f->dir, bad[i]), 0);
        if (check_unix(f, f->sock, getuid(), 0) != -EPERM)
            fail_msg("directory mode %o must be refused", (unsigned)bad[i]);
        assert_int_equal(check_unix(f, f->sock, getuid(), 1), -EPERM);
    }
    /* a socket that does not exist yet in such a directory is refused too */
    assert_int_equal(chmod(f->dir, 0777), 0);
    char p[160];
    snprintf(p, sizeof(p), "%s/later.sock", f->dir);
    assert_int_equal(check_unix(f, p, getuid(), 1), -EPERM);
    assert_int_equal(chmod(f->dir, 0700), 0);
}

static void test_unix_not_a_socket(void **state)
{
    struct fx *f = *state;
    char p[160];
    snprintf(p, sizeof(p), "%s/file", f->dir);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(check_unix(f, p, getuid(), 0), -EPERM);
    assert_int_equal(check_unix(f, p, getuid(), 1), -EPERM);

    /* a directory where the socket should be */
    snprintf(p, sizeof(p), "%s/sub", f->dir);
    assert_int_equal(mkdir(p, 0700), 0);
    assert_int_equal(check_unix(f, p, getuid(), 0), -EPERM);

    /* a symlink to a real socket of ours: refused (it could be re-pointed) */
    f->fd = bind_unix(f->sock);
    snprintf(p, sizeof(p), "%s/link.sock", f->dir);
    assert_int_equal(symlink(f->sock, p), 0);
    assert_int_equal(check_unix(f, p, getuid(), 0), -EPERM);
}

static void test_unix_missing(void **state)
{
    struct fx *f = *state;
    assert_int_equal(check_unix(f, f->sock, getuid(), 0), -ENOENT);
    f->why[0] = '\0';
    assert_int_equal(backend_check_unix(f->sock, getuid(), 1, f->why, sizeof(f->why)), 0);
    /* a missing directory is never acceptable */
    char p[160];
    snprintf(p, sizeof(p), "%s/nodir/app.sock", f->dir);
    assert_int_equal(check_unix(f, p, getuid(), 0), -ENOENT);
    assert_int_equal(check_unix(f, p, getuid(), 1), -ENOENT);
}

static void test_unix_path_shape(void **state)
{
    struct fx *f = *state;
    assert_int_equal(check_unix(f, "app.sock", getuid(), 1), -EINVAL);
    assert_int_equal(check_unix(f, "./app.sock", getuid(), 1), -EINVAL);
    assert_int_equal(check_unix(f, "", getuid(), 1), -EINVAL);

    struct sockaddr_un sun;
    char p[sizeof(sun.sun_path) + 16];
    /* sizeof(sun_path) bytes (no room for the NUL): too long */
    memset(p, 'a', sizeof(p));
    p[0] = '/';
    p[sizeof(sun.sun_path)] = '\0';
    assert_int_equal(check_unix(f, p, getuid(), 1), -EINVAL);
    p[sizeof(p) - 1] = '\0';
    assert_int_equal(check_unix(f, p, getuid(), 1), -EINVAL);
    /* one byte shorter fits: then it is just missing */
    p[sizeof(sun.sun_path) - 1] = '\0';
    assert_int_equal(check_unix(f, p, getuid(), 1), 0);
    assert_int_equal(check_unix(f, p, getuid(), 0), -ENOENT);
}

static void test_unix_ownership(void **state)
{
    struct fx *f = *state;
    if (getuid() != 0)
        skip(); /* needs chown to hand files to other uids */
    f->fd = bind_unix(f->sock);

    /* root's socket in root's directory: not OTHER_UID's */
    assert_int_equal(check_unix(f, f->sock, OTHER_UID, 0), -EPERM);
    /* ... though a missing socket in a root-owned private directory is fine */
    char p[160];
    snprintf(p, sizeof(p), "%s/later.sock", f->dir);
    assert_int_equal(check_unix(f, p, OTHER_UID, 1), 0);

    /* OTHER_UID's socket in OTHER_UID's directory: theirs, not root's */
    assert_int_equal(chown(f->sock, OTHER_UID, OTHER_UID), 0);
    assert_int_equal(chown(f->dir, OTHER_UID, OTHER_UID), 0);
    assert_int_equal(check_unix(f, f->sock, OTHER_UID, 0), 0);
    assert_int_equal(check_unix(f, f->sock, getuid(), 0), -EPERM);

    /* OTHER_UID's socket in a third user's directory */
    assert_int_equal(chown(f->dir, THIRD_UID, THIRD_UID), 0);
    assert_int_equal(check_unix(f, f->sock, OTHER_UID, 0), -EPERM);
    assert_int_equal(check_unix(f, p, OTHER_UID, 1), -EPERM);

    /* OTHER_UID's socket in a root directory (like /run/jobgate): fine */
    assert_int_equal(chown(f->dir, 0, 0), 0);
    assert_int_equal(check_unix(f, f->sock, OTHER_UID, 0), 0);
    /* root's directory but someone else's socket file */
    assert_int_equal(chown(f->sock, THIRD_UID, THIRD_UID), 0);
    assert_int_equal(check_unix(f, f->sock, OTHER_UID, 0), -EPERM);
}

/* ---- backend_check_tcp on a fake /proc ------------------------------------------- */

static const char tcp_header[] =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode\n";
static const char tcp6_header[] =
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

/* One line in the kernel's format (see net/ipv4/tcp_ipv4.c get_tcp4_sock). */
static void line(char *out, size_t n, int sl, const char *addr, unsigned port, unsigned st,
                 unsigned uid, int v6)
{
    int r = snprintf(out, n,
                     "%4d: %s:%04X %s:0000 %02X 00000000:00000000 00:00000000 00000000 %5u        0 "
                     "%u 1 0000000000000000 100 0 0 10 0\n",
                     sl, addr, port, v6 ? "00000000000000000000000000000000" : "00000000", st, uid,
                     40000u + (unsigned)sl);
    assert_true(r > 0 && (size_t)r < n);
}

#define V4_LO "0100007F"
#define V4_ANY "00000000"
#define V4_LAN "0101A8C0" /* 192.168.1.1 */
#define V4_LO2 "0200007F" /* 127.0.0.2 */
#define V6_LO "00000000000000000000000001000000"
#define V6_ANY "00000000000000000000000000000000"
#define V6_MAPPED_LO "0000000000000000FFFF00000100007F"
#define V6_LAN "B80D0120000000000000000001000000" /* 2001:db8::1 */

#define LISTEN 0x0A
#define ESTABLISHED 0x01
#define TIME_WAIT 0x06

#define PORT 8888u
#define ME ((uid_t)1000)

struct entry {
    const char *addr;
    unsigned port, st, uid;
};

/* Writes <dir>/net/tcp (v4) and tcp6 (v6); n < 0 leaves that file out. */
static void write_table(struct fx *f, int v6, const struct entry *e, int n)
{
    char p[160];
    snprintf(p, sizeof(p), "%s/net", f->dir);
    if (mkdir(p, 0755) < 0)
        assert_int_equal(errno, EEXIST);
    snprintf(p, sizeof(p), "%s/net/%s", f->dir, v6 ? "tcp6" : "tcp");
    (void)unlink(p);
    if (n < 0)
        return;
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fputs(v6 ? tcp6_header : tcp_header, fp);
    /* background noise: other ports, other states */
    char l[256];
    line(l, sizeof(l), 0, v6 ? V6_LO : V4_LO, 22, LISTEN, 0, v6);
    fputs(l, fp);
    line(l, sizeof(l), 1, v6 ? V6_ANY : V4_ANY, PORT + 1, LISTEN, OTHER_UID, v6);
    fputs(l, fp);
    line(l, sizeof(l), 2, v6 ? V6_ANY : V4_ANY, PORT - 1, LISTEN, OTHER_UID, v6);
    fputs(l, fp);
    for (int i = 0; i < n; i++) {
        line(l, sizeof(l), 3 + i, e[i].addr, e[i].port, e[i].st, e[i].uid, v6);
        fputs(l, fp);
    }
    assert_int_equal(fclose(fp), 0);
}

static int check_tcp(struct fx *f, unsigned port, uid_t uid, int *v6)
{
    *v6 = 42;
    f->why[0] = '\0';
    int r = backend_check_tcp(f->dir, (uint16_t)port, uid, v6, f->why, sizeof(f->why));
    if (r != 0) {
        assert_true(f->why[0] != '\0');
        assert_int_equal(*v6, 42); /* untouched on refusal */
    }
    return r;
}

static void test_tcp_v4_listen(void **state)
{
    struct fx *f = *state;
    const struct entry e[] = {{V4_LO, PORT, LISTEN, ME}};
    write_table(f, 0, e, 1);
    write_table(f, 1, NULL, 0);
    int v6;
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);
    assert_int_equal(v6, 0);
    /* another port, or someone else asking: no */
    assert_int_equal(check_tcp(f, PORT + 2, ME, &v6), -ENOENT);
    assert_int_equal(check_tcp(f, PORT, OTHER_UID, &v6), -EPERM);
}

static void test_tcp_v6_only(void **state)
{
    struct fx *f = *state;
    const struct entry e[] = {{V6_LO, PORT, LISTEN, ME}};
    write_table(f, 0, NULL, 0);
    write_table(f, 1, e, 1);
    int v6;
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);
    assert_int_equal(v6, 1);

    const struct entry any[] = {{V6_ANY, PORT, LISTEN, ME}};
    write_table(f, 1, any, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);
    assert_int_equal(v6, 1);

    const struct entry mapped[] = {{V6_MAPPED_LO, PORT, LISTEN, ME}};
    write_table(f, 1, mapped, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);

    const struct entry lan[] = {{V6_LAN, PORT, LISTEN, ME}};
    write_table(f, 1, lan, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -ENOENT);
}

static void test_tcp_both_prefers_v4(void **state)
{
    struct fx *f = *state;
    const struct entry e4[] = {{V4_LO, PORT, LISTEN, ME}};
    const struct entry e6[] = {{V6_LO, PORT, LISTEN, ME}};
    write_table(f, 0, e4, 1);
    write_table(f, 1, e6, 1);
    int v6;
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);
    assert_int_equal(v6, 0);
}

static void test_tcp_other_user_same_port(void **state)
{
    struct fx *f = *state;
    int v6;
    /* someone else also on 127.0.0.1:PORT (SO_REUSEPORT) */
    const struct entry both[] = {{V4_LO, PORT, LISTEN, ME}, {V4_LO, PORT, LISTEN, OTHER_UID}};
    write_table(f, 0, both, 2);
    write_table(f, 1, NULL, 0);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -EPERM);
    assert_int_equal(check_tcp(f, PORT, OTHER_UID, &v6), -EPERM);

    /* only someone else */
    const struct entry theirs[] = {{V4_LO, PORT, LISTEN, OTHER_UID}};
    write_table(f, 0, theirs, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -EPERM);

    /* someone else on 0.0.0.0 */
    const struct entry wild[] = {{V4_LO, PORT, LISTEN, ME}, {V4_ANY, PORT, LISTEN, OTHER_UID}};
    write_table(f, 0, wild, 2);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -EPERM);

    /* mine on v4, someone else on [::] (reaches 127.0.0.1 too when dual-stack) */
    const struct entry mine4[] = {{V4_LO, PORT, LISTEN, ME}};
    const struct entry their6[] = {{V6_ANY, PORT, LISTEN, OTHER_UID}};
    write_table(f, 0, mine4, 1);
    write_table(f, 1, their6, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -EPERM);

    /* someone else on ::1 only */
    const struct entry their6lo[] = {{V6_LO, PORT, LISTEN, OTHER_UID}};
    write_table(f, 1, their6lo, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -EPERM);
}

static void test_tcp_nothing(void **state)
{
    struct fx *f = *state;
    int v6;
    write_table(f, 0, NULL, 0);
    write_table(f, 1, NULL, 0);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -ENOENT);
    /* no IPv6 table at all (kernel without IPv6) */
    write_table(f, 1, NULL, -1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -ENOENT);
    const struct entry e[] = {{V4_LO, PORT, LISTEN, ME}};
    write_table(f, 0, e, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);
    assert_int_equal(v6, 0);
    /* no tables at all */
    write_table(f, 0, NULL, -1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -ENOENT);
}

static void test_tcp_state_and_address(void **state)
{
    struct fx *f = *state;
    int v6;
    write_table(f, 1, NULL, 0);

    /* not listening: an established connection or TIME_WAIT on that port */
    const struct entry est[] = {{V4_LO, PORT, ESTABLISHED, ME}, {V4_LO, PORT, TIME_WAIT, ME}};
    write_table(f, 0, est, 2);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -ENOENT);

    /* someone else's non-listening socket does not block mine */
    const struct entry mix[] = {{V4_LO, PORT, ESTABLISHED, OTHER_UID},
                                {V4_LO, PORT, LISTEN, ME}};
    write_table(f, 0, mix, 2);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);

    /* 0.0.0.0 reaches loopback */
    const struct entry any[] = {{V4_ANY, PORT, LISTEN, ME}};
    write_table(f, 0, any, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);
    assert_int_equal(v6, 0);

    /* a LAN address or 127.0.0.2 is not what the gateway dials */
    const struct entry lan[] = {{V4_LAN, PORT, LISTEN, ME}};
    write_table(f, 0, lan, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -ENOENT);
    const struct entry lo2[] = {{V4_LO2, PORT, LISTEN, ME}};
    write_table(f, 0, lo2, 1);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), -ENOENT);

    /* someone else on a LAN address only: no conflict on loopback */
    const struct entry lan_other[] = {{V4_LAN, PORT, LISTEN, OTHER_UID},
                                      {V4_LO, PORT, LISTEN, ME}};
    write_table(f, 0, lan_other, 2);
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);
}

static void test_tcp_ports_exact(void **state)
{
    struct fx *f = *state;
    int v6;
    const struct entry e[] = {{V4_LO, 65535, LISTEN, ME}, {V4_LO, 1, LISTEN, ME}};
    write_table(f, 0, e, 2);
    write_table(f, 1, NULL, 0);
    assert_int_equal(check_tcp(f, 65535, ME, &v6), 0);
    assert_int_equal(check_tcp(f, 1, ME, &v6), 0);
    assert_int_equal(check_tcp(f, 0xFFF, ME, &v6), -ENOENT);
    /* uid 0 owns the background port 22 listener */
    assert_int_equal(check_tcp(f, 22, 0, &v6), 0);
    assert_int_equal(check_tcp(f, 22, ME, &v6), -EPERM);
}

static void test_tcp_garbage_lines(void **state)
{
    struct fx *f = *state;
    char p[160];
    snprintf(p, sizeof(p), "%s/net", f->dir);
    assert_int_equal(mkdir(p, 0755), 0);
    write_table(f, 1, NULL, 0);
    snprintf(p, sizeof(p), "%s/net/tcp", f->dir);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fputs(tcp_header, fp);
    fputs("garbage\n\n   7: nothex:22B8 00000000:0000 0A\n", fp);
    char l[256];
    line(l, sizeof(l), 9, V4_LO, PORT, LISTEN, ME, 0);
    fputs(l, fp);
    assert_int_equal(fclose(fp), 0);
    int v6;
    assert_int_equal(check_tcp(f, PORT, ME, &v6), 0);
}

/* The real /proc: a socket we hold on 127.0.0.1 is found as ours. */
static void test_tcp_real_proc(void **state)
{
    struct fx *f = *state;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t sl = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    unsigned port = ntohs(sin.sin_port);
    int v6 = 42;
    /* bound but not listening yet */
    assert_int_equal(backend_check_tcp("/proc", (uint16_t)port, getuid(), &v6, f->why,
                                       sizeof(f->why)), -ENOENT);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(backend_check_tcp("/proc", (uint16_t)port, getuid(), &v6, f->why,
                                       sizeof(f->why)), 0);
    assert_int_equal(v6, 0);
    assert_int_equal(backend_check_tcp("/proc", (uint16_t)port, OTHER_UID, &v6, f->why,
                                       sizeof(f->why)), -EPERM);
    close(fd);
    assert_int_equal(backend_check_tcp("/proc", (uint16_t)port, getuid(), &v6, f->why,
                                       sizeof(f->why)), -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_unix_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_dir_writable_by_others, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_not_a_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_path_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_ownership, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_v4_listen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_v6_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_both_prefers_v4, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_other_user_same_port, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_state_and_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_ports_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_garbage_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_real_proc, setup, teardown),
    };
    return cmocka_run_group_tests_name("backend", tests, NULL, NULL);
}
