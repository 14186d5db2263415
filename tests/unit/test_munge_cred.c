/* Unit tests for munge_cred (MUNGE credentials for agent identity).
 *
 * The group setup starts a private munged (own key, socket, pid, log and
 * seed files in a mkdtemp directory, run in the foreground as our child) so
 * nothing depends on or disturbs a system munged; the teardown stops it and
 * removes the directory. Without /usr/sbin/munged or /usr/sbin/mungekey every
 * test is skipped. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "munge_cred.h"

#ifndef MUNGED
#define MUNGED "/usr/sbin/munged"
#endif
#ifndef MUNGEKEY
#define MUNGEKEY "/usr/sbin/mungekey"
#endif

/* ---- private munged ---------------------------------------------------------- */

struct daemon {
    char dir[64];
    char sock[128];
    pid_t pid;
};

static struct daemon main_d = { .pid = -1 };
static const char *skip_reason;   /* non-NULL: every test skips, saying why */

static void path_in(char *dst, size_t size, const char *dir, const char *name)
{
    int n = snprintf(dst, size, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= size) {
        fprintf(stderr, "path too long: %s/%s\n", dir, name);
        abort();
    }
}

static void print_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        fprintf(stderr, "  | %s", line);
    fclose(f);
}

/* Forks and execs argv with stdout/stderr appended to out_path. The child
 * gets SIGTERM if this process dies, so a crashed test leaves no daemon. */
static pid_t spawn(char *const argv[], const char *out_path)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
        _exit(126);
    int fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || devnull < 0 || dup2(devnull, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
        _exit(126);
    execv(argv[0], argv);
    _exit(127);
}

static int unlink_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void daemon_stop(struct daemon *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        int status;
        pid_t r = 0;
        for (int i = 0; i < 250 && (r = waitpid(d->pid, &status, WNOHANG)) == 0; i++)
            usleep(20 * 1000);
        if (r == 0) {
            fprintf(stderr, "munged %d ignored SIGTERM; killing it\n", (int)d->pid);
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &status, 0);
        }
        d->pid = -1;
    }
    if (d->dir[0]) {
        nftw(d->dir, unlink_cb, 16, FTW_DEPTH | FTW_PHYS);
        d->dir[0] = '\0';
    }
}

/* 1 once something accepts connections on path. */
static int socket_accepts(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path)
        return 0;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

/* Creates a key and starts munged in a fresh directory. 0, or -1 with a
 * message on stderr (and d cleaned up). */
static int daemon_start(struct daemon *d)
{
    memset(d, 0, sizeof *d);
    d->pid = -1;
    memcpy(d->dir, "/tmp/jg-munge-XXXXXX", sizeof "/tmp/jg-munge-XXXXXX");
    if (!mkdtemp(d->dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        d->dir[0] = '\0';
        return -1;
    }
    /* munged insists that everyone may traverse to its socket. */
    if (chmod(d->dir, 0711) != 0) {
        fprintf(stderr, "chmod %s: %s\n", d->dir, strerror(errno));
        daemon_stop(d);
        return -1;
    }

    char key[128], pidf[128], logf[128], seed[128], out[128];
    path_in(key, sizeof key, d->dir, "munge.key");
    path_in(d->sock, sizeof d->sock, d->dir, "munge.sock");
    path_in(pidf, sizeof pidf, d->dir, "munged.pid");
    path_in(logf, sizeof logf, d->dir, "munged.log");
    path_in(seed, sizeof seed, d->dir, "munged.seed");
    path_in(out, sizeof out, d->dir, "output.txt");

    char keyopt[160], sockopt[160], pidopt[160], logopt[160], seedopt[160];
    snprintf(keyopt, sizeof keyopt, "--keyfile=%s", key);
    char *kargv[] = { (char *)MUNGEKEY, (char *)"--create", keyopt, NULL };
    pid_t k = spawn(kargv, out);
    int status = 0;
    if (k < 0 || waitpid(k, &status, 0) != k || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "mungekey --create failed:\n");
        print_file(out);
        daemon_stop(d);
        return -1;
    }

    snprintf(keyopt, sizeof keyopt, "--key-file=%s", key);
    snprintf(sockopt, sizeof sockopt, "--socket=%s", d->sock);
    snprintf(pidopt, sizeof pidopt, "--pid-file=%s", pidf);
    snprintf(logopt, sizeof logopt, "--log-file=%s", logf);
    snprintf(seedopt, sizeof seedopt, "--seed-file=%s", seed);
    char *dargv[] = { (char *)MUNGED, (char *)"--foreground", keyopt, sockopt,
                      pidopt,         logopt,                 seedopt, NULL };
    d->pid = spawn(dargv, out);
    if (d->pid < 0) {
        fprintf(stderr, "fork: %s\n", strerror(errno));
        daemon_stop(d);
        return -1;
    }
    for (int i = 0; i < 500; i++) {   /* up to 10 s */
        if (socket_accepts(d->sock))
            return 0;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = -1;
            fprintf(stderr, "munged exited during startup:\n");
            print_file(out);
            print_file(logf);
            daemon_stop(d);
            return -1;
        }
        usleep(20 * 1000);
    }
    fprintf(stderr, "munged did not open %s within 10 s:\n", d->sock);
    print_file(out);
    print_file(logf);
    daemon_stop(d);
    return -1;
}

static int group_setup(void **state)
{
    (void)state;
    if (access(MUNGED, X_OK) != 0 || access(MUNGEKEY, X_OK) != 0) {
        skip_reason = MUNGED " or " MUNGEKEY " is not installed; skipping MUNGE tests";
        fprintf(stderr, "%s\n", skip_reason);
        return 0;
    }
    return daemon_start(&main_d) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    daemon_stop(&main_d);
    return 0;
}

#define NEED_MUNGED()                                   \
    do {                                                \
        if (skip_reason) {                              \
            print_message("skipped: %s\n", skip_reason); \
            skip();                                     \
        }                                               \
    } while (0)

/* ---- helpers --------------------------------------------------------------- */

static const char challenge[] = "conn-7f3a9c0e:challenge:0123456789abcdef";

static char *encode_ok(const void *payload, size_t len, int ttl, uid_t restrict_uid)
{
    char *cred = NULL;
    char err[256] = "";
    int rc = munge_cred_encode(main_d.sock, payload, len, ttl, restrict_uid, &cred, err,
                               sizeof err);
    if (rc != 0)
        fail_msg("encode failed: %d %s", rc, err);
    assert_non_null(cred);
    assert_true(strncmp(cred, "MUNGE:", 6) == 0);
    return cred;
}

static void assert_identity_cleared(const struct munge_identity *id)
{
    assert_int_equal(id->uid, (uid_t)-1);
    assert_int_equal(id->gid, (gid_t)-1);
    assert_int_equal(id->encoded_at, 0);
    assert_int_equal(id->ttl, 0);
}

/* The error text must not repeat the credential (I4): no 16-character run of
 * its body after "MUNGE:" may appear. */
static void assert_err_hides(const char *err, const char *cred)
{
    size_t n = strlen(cred);
    for (size_t i = 6; i + 16 <= n; i += 8) {
        char piece[17];
        memcpy(piece, cred + i, 16);
        piece[16] = '\0';
        if (strstr(err, piece))
            fail_msg("error message contains credential text: %s", err);
    }
}

/* ---- tests ----------------------------------------------------------------- */

static void test_round_trip(void **state)
{
    (void)state;
    NEED_MUNGED();
    int64_t before = (int64_t)time(NULL);
    char *cred = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);

    struct munge_identity id;
    char err[256] = "";
    int rc = munge_cred_decode(main_d.sock, cred, strlen(cred), challenge, strlen(challenge), &id,
                               err, sizeof err);
    if (rc != 0)
        fail_msg("decode failed: %d %s", rc, err);
    assert_int_equal(id.uid, getuid());
    assert_int_equal(id.gid, getgid());
    int64_t after = (int64_t)time(NULL);
    assert_true(id.encoded_at >= before - 2 && id.encoded_at <= after + 2);
    assert_int_equal(id.ttl, 60);
    free(cred);
}

static void test_round_trip_binary_and_empty_payload(void **state)
{
    (void)state;
    NEED_MUNGED();
    /* Binary payload with NULs (e.g. a TLS exporter value). */
    unsigned char bin[32];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (unsigned char)(i * 37);
    bin[5] = 0;
    char *cred = encode_ok(bin, sizeof bin, 0, (uid_t)-1);
    struct munge_identity id;
    char err[256] = "";
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), bin, sizeof bin, &id, err,
                                       sizeof err),
                     0);
    assert_int_equal(id.uid, getuid());
    assert_true(id.ttl > 0);   /* munged's default */
    free(cred);

    /* Empty payload; a credential without newline-terminated text is fine. */
    cred = encode_ok(NULL, 0, 30, (uid_t)-1);
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), NULL, 0, &id, err,
                                       sizeof err),
                     0);
    assert_int_equal(id.uid, getuid());
    free(cred);
}

static void test_cred_len_not_nul_terminated(void **state)
{
    (void)state;
    NEED_MUNGED();
    char *cred = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    size_t n = strlen(cred);
    /* The credential inside a larger buffer, followed by other bytes. */
    char *buf = malloc(n + 8);
    assert_non_null(buf);
    memcpy(buf, cred, n);
    memcpy(buf + n, "\ntrailer", 8);
    struct munge_identity id;
    char err[256] = "";
    int rc = munge_cred_decode(main_d.sock, buf, n, challenge, strlen(challenge), &id, err,
                               sizeof err);
    if (rc != 0)
        fail_msg("decode failed: %d %s", rc, err);
    assert_int_equal(id.uid, getuid());
    free(buf);
    free(cred);
}

static void test_payload_mismatch(void **state)
{
    (void)state;
    NEED_MUNGED();
    struct munge_identity id;
    char err[256] = "";

    /* Same length, one byte different: a challenge for another connection. */
    char *cred = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    char other[sizeof challenge];
    memcpy(other, challenge, sizeof challenge);
    other[5] ^= 1;
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), other, strlen(other), &id,
                                       err, sizeof err),
                     -EPERM);
    assert_non_null(strstr(err, "payload"));
    assert_err_hides(err, cred);
    assert_null(strstr(err, challenge));
    assert_identity_cleared(&id);
    free(cred);

    /* A prefix of the expected payload. */
    cred = encode_ok(challenge, strlen(challenge) - 1, 60, (uid_t)-1);
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), challenge,
                                       strlen(challenge), &id, err, sizeof err),
                     -EPERM);
    assert_non_null(strstr(err, "payload"));
    free(cred);

    /* Empty payload where one is expected, and the reverse. */
    cred = encode_ok(NULL, 0, 60, (uid_t)-1);
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), challenge,
                                       strlen(challenge), &id, err, sizeof err),
                     -EPERM);
    free(cred);
    cred = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), NULL, 0, &id, err,
                                       sizeof err),
                     -EPERM);
    assert_identity_cleared(&id);
    free(cred);
}

static void test_replay(void **state)
{
    (void)state;
    NEED_MUNGED();
    char *cred = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    struct munge_identity id;
    char err[256] = "";
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), challenge,
                                       strlen(challenge), &id, err, sizeof err),
                     0);
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), challenge,
                                       strlen(challenge), &id, err, sizeof err),
                     -EALREADY);
    assert_non_null(strstr(err, "replay"));
    assert_err_hides(err, cred);
    assert_identity_cleared(&id);
    free(cred);
}

static void test_expired(void **state)
{
    (void)state;
    NEED_MUNGED();
    char *cred = encode_ok(challenge, strlen(challenge), 1, (uid_t)-1);
    sleep(2);
    struct munge_identity id;
    char err[256] = "";
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), challenge,
                                       strlen(challenge), &id, err, sizeof err),
                     -ETIMEDOUT);
    assert_non_null(strstr(err, "expired"));
    assert_identity_cleared(&id);
    free(cred);
}

static void test_garbage(void **state)
{
    (void)state;
    NEED_MUNGED();
    struct munge_identity id;
    char err[256] = "";
    static const char *const junk[] = {
        "hello",                                  /* no armor */
        "MUNGE:",                                 /* armor, nothing inside */
        "MUNGE:!!!!not base64!!!!:",              /* not base64 */
        "MUNGE:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA:",
    };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        err[0] = '\0';
        int rc = munge_cred_decode(main_d.sock, junk[i], strlen(junk[i]), challenge,
                                   strlen(challenge), &id, err, sizeof err);
        if (rc != -EPERM)
            fail_msg("junk %zu: got %d (%s), want -EPERM", i, rc, err);
        assert_non_null(strstr(err, "invalid credential"));
        assert_identity_cleared(&id);
    }

    /* Empty, and an embedded NUL: refused before munged sees them. */
    assert_int_equal(munge_cred_decode(main_d.sock, "", 0, NULL, 0, &id, err, sizeof err), -EPERM);
    assert_non_null(strstr(err, "invalid credential"));
    char *cred = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    size_t n = strlen(cred);
    cred[n / 2] = '\0';
    assert_int_equal(munge_cred_decode(main_d.sock, cred, n, challenge, strlen(challenge), &id,
                                       err, sizeof err),
                     -EPERM);
    assert_non_null(strstr(err, "NUL"));
    free(cred);
}

static void test_tampered(void **state)
{
    (void)state;
    NEED_MUNGED();
    char *cred = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    size_t n = strlen(cred);
    /* Change one base64 character in the middle of the body. */
    size_t i = n / 2;
    cred[i] = cred[i] == 'A' ? 'B' : 'A';
    struct munge_identity id;
    char err[256] = "";
    int rc = munge_cred_decode(main_d.sock, cred, n, challenge, strlen(challenge), &id, err,
                               sizeof err);
    if (rc != -EPERM)
        fail_msg("tampered credential: got %d (%s), want -EPERM", rc, err);
    assert_non_null(strstr(err, "invalid credential"));
    assert_err_hides(err, cred);
    assert_identity_cleared(&id);
    free(cred);
}

static void test_foreign_key(void **state)
{
    (void)state;
    NEED_MUNGED();
    /* A credential from another cluster (another key) is not accepted. */
    struct daemon other;
    if (daemon_start(&other) != 0)
        fail_msg("cannot start a second munged");
    char *cred = NULL;
    char err[256] = "";
    int rc = munge_cred_encode(other.sock, challenge, strlen(challenge), 60, (uid_t)-1, &cred, err,
                               sizeof err);
    daemon_stop(&other);
    if (rc != 0)
        fail_msg("encode at second munged failed: %d %s", rc, err);
    struct munge_identity id;
    rc = munge_cred_decode(main_d.sock, cred, strlen(cred), challenge, strlen(challenge), &id, err,
                           sizeof err);
    if (rc != -EPERM)
        fail_msg("foreign credential: got %d (%s), want -EPERM", rc, err);
    assert_non_null(strstr(err, "invalid credential"));
    assert_identity_cleared(&id);
    free(cred);
}

static void test_uid_restriction(void **state)
{
    (void)state;
    NEED_MUNGED();
    struct munge_identity id;
    char err[256] = "";

    /* Restricted to us: decodes. */
    char *cred = encode_ok(challenge, strlen(challenge), 60, getuid());
    int rc = munge_cred_decode(main_d.sock, cred, strlen(cred), challenge, strlen(challenge), &id,
                               err, sizeof err);
    if (rc != 0)
        fail_msg("decode of credential restricted to us failed: %d %s", rc, err);
    assert_int_equal(id.uid, getuid());
    free(cred);

    /* Restricted to someone else (root is not exempt). */
    uid_t other = getuid() == 12345 ? 12346 : 12345;
    cred = encode_ok(challenge, strlen(challenge), 60, other);
    rc = munge_cred_decode(main_d.sock, cred, strlen(cred), challenge, strlen(challenge), &id, err,
                           sizeof err);
    if (rc != -EPERM)
        fail_msg("decode of credential restricted to uid %u: got %d (%s), want -EPERM",
                 (unsigned)other, rc, err);
    assert_non_null(strstr(err, "may not be decoded"));
    assert_identity_cleared(&id);
    free(cred);
}

static void test_missing_socket(void **state)
{
    (void)state;
    NEED_MUNGED();
    char nope[160];
    path_in(nope, sizeof nope, main_d.dir, "no-such.sock");
    char *cred = (char *)"x";
    char err[256] = "";
    assert_int_equal(munge_cred_encode(nope, challenge, strlen(challenge), 60, (uid_t)-1, &cred,
                                       err, sizeof err),
                     -ENOENT);
    assert_null(cred);
    assert_non_null(strstr(err, nope));
    assert_non_null(strstr(err, "does not exist"));

    char *good = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    struct munge_identity id;
    err[0] = '\0';
    assert_int_equal(munge_cred_decode(nope, good, strlen(good), challenge, strlen(challenge), &id,
                                       err, sizeof err),
                     -ENOENT);
    assert_non_null(strstr(err, nope));
    assert_identity_cleared(&id);
    free(good);

    /* NULL means MUNGE's default socket; when no system munged runs, the
     * message names that default socket. */
    struct stat st;
    if (stat("/run/munge/munge.socket.2", &st) != 0 && errno == ENOENT) {
        assert_int_equal(munge_cred_encode(NULL, challenge, strlen(challenge), 60, (uid_t)-1,
                                           &cred, err, sizeof err),
                         -ENOENT);
        assert_non_null(strstr(err, "/run/munge/munge.socket.2"));
    }
}

static void test_refused_socket(void **state)
{
    (void)state;
    NEED_MUNGED();
    /* A socket file nobody listens on (a munged that died): connection
     * refused. libmunge retries for a couple of seconds first. */
    char path[160];
    path_in(path, sizeof path, main_d.dir, "stale.sock");
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) + 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);

    char *good = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    struct munge_identity id;
    char err[256] = "";
    int rc = munge_cred_decode(path, good, strlen(good), challenge, strlen(challenge), &id, err,
                               sizeof err);
    close(fd);
    unlink(path);
    if (rc != -ECONNREFUSED)
        fail_msg("stale socket: got %d (%s), want -ECONNREFUSED", rc, err);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "cannot reach munged"));
    assert_err_hides(err, good);
    assert_identity_cleared(&id);
    free(good);
}

static void test_oversize(void **state)
{
    (void)state;
    NEED_MUNGED();
    char err[256] = "";
    struct munge_identity id;

    /* The largest payload round-trips and its credential fits the limit. */
    unsigned char *big = malloc(MUNGE_CRED_MAX_PAYLOAD + 1);
    assert_non_null(big);
    for (size_t i = 0; i <= MUNGE_CRED_MAX_PAYLOAD; i++)
        big[i] = (unsigned char)(i * 7 + 3);
    char *cred = encode_ok(big, MUNGE_CRED_MAX_PAYLOAD, 60, (uid_t)-1);
    assert_true(strlen(cred) <= MUNGE_CRED_MAX_LEN);
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), big,
                                       MUNGE_CRED_MAX_PAYLOAD, &id, err, sizeof err),
                     0);
    free(cred);

    /* One byte more is refused on both sides. */
    cred = (char *)"x";
    assert_int_equal(munge_cred_encode(main_d.sock, big, MUNGE_CRED_MAX_PAYLOAD + 1, 60,
                                       (uid_t)-1, &cred, err, sizeof err),
                     -EMSGSIZE);
    assert_null(cred);
    assert_non_null(strstr(err, "exceeds"));

    cred = encode_ok(challenge, strlen(challenge), 60, (uid_t)-1);
    assert_int_equal(munge_cred_decode(main_d.sock, cred, strlen(cred), big,
                                       MUNGE_CRED_MAX_PAYLOAD + 1, &id, err, sizeof err),
                     -EMSGSIZE);
    assert_identity_cleared(&id);
    free(cred);
    free(big);

    /* A credential text over the limit is refused without contacting munged. */
    char *huge = malloc(MUNGE_CRED_MAX_LEN + 2);
    assert_non_null(huge);
    memset(huge, 'A', MUNGE_CRED_MAX_LEN + 1);
    memcpy(huge, "MUNGE:", 6);
    huge[MUNGE_CRED_MAX_LEN] = ':';
    huge[MUNGE_CRED_MAX_LEN + 1] = '\0';
    assert_int_equal(munge_cred_decode(main_d.sock, huge, MUNGE_CRED_MAX_LEN + 1, challenge,
                                       strlen(challenge), &id, err, sizeof err),
                     -EMSGSIZE);
    assert_non_null(strstr(err, "exceeds"));
    assert_identity_cleared(&id);
    free(huge);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    NEED_MUNGED();
    char err[256] = "";
    char *cred = (char *)"x";
    struct munge_identity id;
    assert_int_equal(munge_cred_encode(main_d.sock, challenge, 4, 60, (uid_t)-1, NULL, err,
                                       sizeof err),
                     -EINVAL);
    assert_int_equal(munge_cred_encode(main_d.sock, NULL, 4, 60, (uid_t)-1, &cred, err,
                                       sizeof err),
                     -EINVAL);
    assert_null(cred);
    assert_int_equal(munge_cred_encode(main_d.sock, challenge, 4, -1, (uid_t)-1, &cred, err,
                                       sizeof err),
                     -EINVAL);
    assert_int_equal(munge_cred_decode(main_d.sock, NULL, 5, NULL, 0, &id, err, sizeof err),
                     -EINVAL);
    assert_identity_cleared(&id);
    assert_int_equal(munge_cred_decode(main_d.sock, "hello", 5, NULL, 3, &id, err, sizeof err),
                     -EINVAL);
    assert_int_equal(munge_cred_decode(main_d.sock, "hello", 5, NULL, 0, NULL, err, sizeof err),
                     -EINVAL);
    /* err may be absent. */
    assert_int_equal(munge_cred_decode(main_d.sock, "hello", 5, NULL, 0, &id, NULL, 0), -EPERM);
    /* A tiny err buffer is truncated, still NUL-terminated. */
    char tiny[8];
    memset(tiny, 'z', sizeof tiny);
    assert_int_equal(munge_cred_decode(main_d.sock, "hello", 5, NULL, 0, &id, tiny, sizeof tiny),
                     -EPERM);
    assert_true(memchr(tiny, '\0', sizeof tiny) != NULL);
}

/* Several threads encoding and decoding at once: no shared state. */
#define N_THREADS 4
#define N_ROUNDS 25

struct worker {
    int index;
    int failures;
    char first_err[320]; /* rc, a space and err */
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int r = 0; r < N_ROUNDS; r++) {
        char payload[64];
        int plen = snprintf(payload, sizeof payload, "thread-%d-round-%d", w->index, r);
        char *cred = NULL;
        char err[256] = "";
        int rc = munge_cred_encode(main_d.sock, payload, (size_t)plen, 60, (uid_t)-1, &cred, err,
                                   sizeof err);
        struct munge_identity id;
        if (rc == 0)
            rc = munge_cred_decode(main_d.sock, cred, strlen(cred), payload, (size_t)plen, &id,
                                   err, sizeof err);
        if (rc == 0 && id.uid != getuid())
            rc = -EFAULT;
        if (rc != 0 && w->failures++ == 0)
            snprintf(w->first_err, sizeof w->first_err, "%d %s", rc, err);
        free(cred);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    NEED_MUNGED();
    pthread_t t[N_THREADS];
    struct worker w[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].index = i;
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < N_THREADS; i++)
        if (w[i].failures)
            fail_msg("thread %d: %d failures, first: %s", i, w[i].failures, w[i].first_err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_round_trip_binary_and_empty_payload),
        cmocka_unit_test(test_cred_len_not_nul_terminated),
        cmocka_unit_test(test_payload_mismatch),
        cmocka_unit_test(test_replay),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_foreign_key),
        cmocka_unit_test(test_uid_restriction),
        cmocka_unit_test(test_missing_socket),
        cmocka_unit_test(test_refused_socket),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests_name("munge_cred", tests, group_setup, group_teardown);
}
