/* Unit tests for src/agent/procnet.c: real process trees, and a fake /proc. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "procnet.h"

/* A listening socket on 127.0.0.1 (v6 = 0) or ::1; returns the fd and its port. */
static int listen_any(int v6, uint16_t *port)
{
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    if (v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = in6addr_loopback;
        sl = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sl = sizeof(*s4);
    }
    assert_int_equal(bind(fd, (struct sockaddr *)&ss, sl), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    *port = ntohs(v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

/*
 * Forks app -> grandchild; the grandchild listens and reports its port on a
 * pipe, then both sleep until killed. Returns the app's pid.
 */
static pid_t spawn_tree(int v6, uint16_t *port)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t app = fork();
    assert_true(app >= 0);
    if (app == 0) {
        setpgid(0, 0);
        pid_t g = fork();
        if (g == 0) {
            uint16_t pt;
            int fd = listen_any(v6, &pt);
            (void)fd;
            if (write(p[1], &pt, sizeof(pt)) != sizeof(pt))
                _exit(1);
            pause();
            _exit(0);
        }
        pause();
        _exit(0);
    }
    close(p[1]);
    assert_int_equal(read(p[0], port, sizeof(*port)), (ssize_t)sizeof(*port));
    close(p[0]);
    return app;
}

static void kill_tree(pid_t app)
{
    kill(-app, SIGKILL);
    waitpid(app, NULL, 0);
}

static void test_grandchild_listener_v4(void **state)
{
    (void)state;
    char why[256];
    uint16_t port;
    pid_t app = spawn_tree(0, &port);
    assert_int_equal(procnet_port_in_tree("/proc", port, app, why, sizeof(why)), 1);
    kill_tree(app);
}

static void test_grandchild_listener_v6(void **state)
{
    (void)state;
    char why[256];
    uint16_t port;
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    if (probe < 0)
        skip();
    close(probe);
    pid_t app = spawn_tree(1, &port);
    assert_int_equal(procnet_port_in_tree("/proc", port, app, why, sizeof(why)), 1);
    kill_tree(app);
}

static void test_listener_outside_tree(void **state)
{
    (void)state;
    char why[256];
    uint16_t port;
    /* This test process listens; a separate child tree does not contain us. */
    int fd = listen_any(0, &port);
    pid_t other = fork();
    if (other == 0) {
        close(fd); /* a forked child would hold the listener too */
        pause();
        _exit(0);
    }
    usleep(100 * 1000); /* let the child drop its copy */
    assert_int_equal(procnet_port_in_tree("/proc", port, other, why, sizeof(why)), 0);
    assert_non_null(strstr(why, "outside the app's process tree"));
    /* ... while the test process itself (the root of its own tree) holds it. */
    assert_int_equal(procnet_port_in_tree("/proc", port, getpid(), why, sizeof(why)), 1);
    kill(other, SIGKILL);
    waitpid(other, NULL, 0);
    close(fd);
}

static void test_nothing_listens(void **state)
{
    (void)state;
    char why[256];
    uint16_t port;
    int fd = listen_any(0, &port);
    close(fd); /* the port is free again */
    assert_int_equal(procnet_port_in_tree("/proc", port, getpid(), why, sizeof(why)), -ENOENT);
    assert_non_null(strstr(why, "nothing listens"));
}

/* ---- a fake /proc: odd comm names, several tables ---------------------------- */

#include "fakeproc.h"

static int fake_setup(void **state)
{
    (void)state;
    fake_make("procnet");
    mk("net");
    put("net/tcp",
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 100 0 0 10 0\n"
        "   1: 0100007F:1F91 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 777 1 0 20 4 30 10 -1\n");
    put("net/tcp6",
        "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000000000000000000001000000:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5151 1 0 100 0 0 10 0\n");
    /* 10 -> 11 "weird) (name" -> 12 holds inode 4242; 20 holds 5151; 30 unrelated. */
    mk("10"); mk("10/fd"); put("10/stat", "10 (bash) S 1 10 10 0 -1\n");
    mk("11"); mk("11/fd"); put("11/stat", "11 (weird) (name) S 10 10 10 0 -1\n");
    mk("12"); mk("12/fd"); put("12/stat", "12 (py) S 11 10 10 0 -1\n");
    fdlink("12/fd/0", "/dev/null");
    fdlink("12/fd/5", "socket:[4242]");
    mk("20"); mk("20/fd"); put("20/stat", "20 (other) S 1 20 20 0 -1\n");
    fdlink("20/fd/3", "socket:[5151]");
    fdlink("20/fd/4", "socket:[777]");
    mk("30"); mk("30/fd"); put("30/stat", "30 (idle) S 1 30 30 0 -1\n");
    mk("self");
    return 0;
}

static int fake_teardown(void **state)
{
    (void)state;
    fake_remove();
    return 0;
}

static void test_fake_proc(void **state)
{
    (void)state;
    char why[256];
    /* 0x1F90 = 8080 held by 12, grandchild of 10 through a process named "weird) (name". */
    assert_int_equal(procnet_port_in_tree(fake, 8080, 10, why, sizeof(why)), 1);
    assert_int_equal(procnet_port_in_tree(fake, 8080, 12, why, sizeof(why)), 1);
    assert_int_equal(procnet_port_in_tree(fake, 8080, 20, why, sizeof(why)), 0);
    /* 8081 is only an established connection, not a listener. */
    assert_int_equal(procnet_port_in_tree(fake, 8081, 20, why, sizeof(why)), -ENOENT);
    /* 8082 listens on ::1, held by 20. */
    assert_int_equal(procnet_port_in_tree(fake, 8082, 20, why, sizeof(why)), 1);
    assert_int_equal(procnet_port_in_tree(fake, 8082, 10, why, sizeof(why)), 0);
    assert_int_equal(procnet_port_in_tree(fake, 8082, 30, why, sizeof(why)), 0);
}

struct seen {
    unsigned port[8];
    int v6[8], n;
};

static int note(const struct procnet_sock *s, int v6, void *arg)
{
    struct seen *sn = arg;
    assert_true(sn->n < 8);
    sn->port[sn->n] = s->lport;
    sn->v6[sn->n++] = v6;
    return 0;
}

/* The listeners a tree holds (a Slurm job's destinations): only LISTEN
 * sockets, only of the tree, from both tables. */
static void test_fake_tree_listeners(void **state)
{
    (void)state;
    struct seen sn = {0};
    assert_int_equal(procnet_tree_listeners(fake, 10, note, &sn), 0);
    assert_int_equal(sn.n, 1);
    assert_int_equal(sn.port[0], 8080);
    assert_int_equal(sn.v6[0], 0);
    memset(&sn, 0, sizeof(sn));
    assert_int_equal(procnet_tree_listeners(fake, 20, note, &sn), 0); /* not 777: connected */
    assert_int_equal(sn.n, 1);
    assert_int_equal(sn.port[0], 8082);
    assert_int_equal(sn.v6[0], 1);
    memset(&sn, 0, sizeof(sn));
    assert_int_equal(procnet_tree_listeners(fake, 30, note, &sn), 0);
    assert_int_equal(sn.n, 0);
    memset(&sn, 0, sizeof(sn));
    assert_int_equal(procnet_tree_listeners(fake, 1, note, &sn), 0); /* everyone's */
    assert_int_equal(sn.n, 2);
}

/* A real tree: a grandchild's listener, found from the app, not from a sibling tree. */
static void test_real_tree_listeners(void **state)
{
    (void)state;
    uint16_t port;
    pid_t app = spawn_tree(0, &port);
    struct seen sn = {0};
    assert_int_equal(procnet_tree_listeners("/proc", app, note, &sn), 0);
    assert_int_equal(sn.n, 1);
    assert_int_equal(sn.port[0], port);
    pid_t other = spawn_tree(0, &port);
    memset(&sn, 0, sizeof(sn));
    assert_int_equal(procnet_tree_listeners("/proc", app, note, &sn), 0);
    assert_int_equal(sn.n, 1); /* not the other tree's */
    kill_tree(other);
    kill_tree(app);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grandchild_listener_v4),
        cmocka_unit_test(test_grandchild_listener_v6),
        cmocka_unit_test(test_listener_outside_tree),
        cmocka_unit_test(test_nothing_listens),
        cmocka_unit_test_setup_teardown(test_fake_proc, fake_setup, fake_teardown),
        cmocka_unit_test_setup_teardown(test_fake_tree_listeners, fake_setup, fake_teardown),
        cmocka_unit_test(test_real_tree_listeners),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
