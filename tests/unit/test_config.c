/* Unit tests for config.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

/* ---- helpers ------------------------------------------------------------ */

/* A predictable environment: HOME set, no XDG variables. */
static int env_reset(void **state)
{
    (void)state;
    if (setenv("HOME", "/home/tester", 1) < 0)
        return -1;
    if (unsetenv("XDG_STATE_HOME") < 0 || unsetenv("XDG_RUNTIME_DIR") < 0)
        return -1;
    return 0;
}

/* Writes n bytes to a fresh temp file; path receives its name. */
static void write_tmp_n(const char *data, size_t n, char path[64])
{
    snprintf(path, 64, "/tmp/jg_test_config_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        assert_true(w > 0);
        off += (size_t)w;
    }
    assert_int_equal(close(fd), 0);
}

static void write_tmp(const char *data, char path[64])
{
    write_tmp_n(data, strlen(data), path);
}

/* Defaults, then the file with these contents. Returns config_load's result. */
static int load_n(const char *data, size_t n, struct jg_config *c, char *err, size_t errlen,
                  char path[64])
{
    write_tmp_n(data, n, path);
    assert_int_equal(config_defaults(c), 0);
    int r = config_load(c, path, err, errlen);
    assert_int_equal(unlink(path), 0);
    return r;
}

static int load(const char *data, struct jg_config *c, char *err, size_t errlen, char path[64])
{
    return load_n(data, strlen(data), c, err, errlen, path);
}

static void assert_defaults_untouched(const struct jg_config *c)
{
    assert_int_equal(c->shared, 0);
    assert_string_equal(c->listen, "127.0.0.1:8443");
    assert_string_equal(c->domain, "localhost");
    assert_int_equal(c->public_port, 0);
    assert_string_equal(c->state_dir, "/home/tester/.local/state/jobgate");
    assert_string_equal(c->control_socket, "/home/tester/.local/state/jobgate/control.sock");
    assert_null(c->cert_file);
    assert_null(c->key_file);
    assert_int_equal(c->use_syslog, 0);
    assert_int_equal(c->max_connections, 10000);
    assert_int_equal(c->workers, 0);
    assert_int_equal(c->max_request_line, 8192);
    assert_int_equal(c->max_header_bytes, 32768);
    assert_int_equal(c->max_headers, 100);
    assert_int_equal(c->t_handshake, 10);
    assert_int_equal(c->t_request_head, 30);
    assert_int_equal(c->t_idle, 75);
    assert_int_equal(c->t_connect, 10);
    assert_int_equal(c->t_io, 300);
    assert_int_equal(c->t_tunnel, 3600);
    assert_int_equal(c->link_ttl, 600);
    assert_int_equal(c->session_ttl, 43200);
    assert_int_equal(c->quota_routes, 256);
    assert_int_equal(c->quota_links, 1024);
    assert_int_equal(c->quota_tunnels, 64);
    assert_int_equal(c->quota_control, 16);
    assert_int_equal(c->quota_held, 64);
    assert_int_equal(c->hello_wait, 5);
    assert_int_equal(c->drain, 10);
    assert_int_equal(c->pending_max, 1024);
    assert_int_equal(c->pending_per_address, 32);
}

/*
 * Loads data, expects -EINVAL, an error of exactly "PATH:LINE: " followed by
 * text containing want (line 0: "PATH: "), and the config unchanged.
 */
static void expect_error_n(const char *data, size_t n, unsigned line, const char *want)
{
    struct jg_config c;
    char err[512], path[64], prefix[128];
    memset(err, 0, sizeof(err));
    int r = load_n(data, n, &c, err, sizeof(err), path);
    if (r != -EINVAL)
        print_error("input <<%s>> loaded with %d, err '%s'\n", data, r, err);
    assert_int_equal(r, -EINVAL);
    if (line)
        snprintf(prefix, sizeof(prefix), "%s:%u: ", path, line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", path);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err + strlen(prefix), want))
        print_error("expected '%s...%s', got '%s'\n", prefix, want, err);
    assert_memory_equal(err, prefix, strlen(prefix));
    assert_non_null(strstr(err + strlen(prefix), want));
    assert_defaults_untouched(&c);
    config_free(&c);
}

static void expect_error(const char *data, unsigned line, const char *want)
{
    expect_error_n(data, strlen(data), line, want);
}

/* Loads "[section]\nkey = value\n" and expects success. */
static void load_kv(const char *section, const char *key, const char *value,
                    struct jg_config *c)
{
    char data[8192], err[512], path[64];
    snprintf(data, sizeof(data), "[%s]\n%s = %s\n", section, key, value);
    int r = load(data, c, err, sizeof(err), path);
    if (r != 0)
        print_error("%s.%s = %s: %s\n", section, key, value, err);
    assert_int_equal(r, 0);
    assert_int_equal(c->shared, 1);
}

/* Expects "[section]\nkey = value\n" to fail on line 2 with want. */
static void bad_kv(const char *section, const char *key, const char *value, const char *want)
{
    char data[8192];
    snprintf(data, sizeof(data), "[%s]\n%s = %s\n", section, key, value);
    expect_error(data, 2, want);
}

static int64_t load_duration(const char *key, const char *value)
{
    struct jg_config c;
    const char *section = strcmp(key, "ttl") == 0 || strcmp(key, "session_ttl") == 0
                              ? "links" : "timeouts";
    load_kv(section, key, value, &c);
    int64_t v = -1;
    if (strcmp(key, "handshake") == 0) v = c.t_handshake;
    else if (strcmp(key, "request_head") == 0) v = c.t_request_head;
    else if (strcmp(key, "idle") == 0) v = c.t_idle;
    else if (strcmp(key, "connect") == 0) v = c.t_connect;
    else if (strcmp(key, "io") == 0) v = c.t_io;
    else if (strcmp(key, "tunnel") == 0) v = c.t_tunnel;
    else if (strcmp(key, "ttl") == 0) v = c.link_ttl;
    else if (strcmp(key, "session_ttl") == 0) v = c.session_ttl;
    config_free(&c);
    return v;
}

/* ---- defaults and paths ------------------------------------------------- */

static void test_defaults_personal(void **state)
{
    (void)state;
    struct jg_config c;
    assert_int_equal(config_defaults(&c), 0);
    assert_defaults_untouched(&c);
    config_free(&c);
    assert_null(c.listen);
    assert_null(c.state_dir);
    config_free(&c); /* twice is harmless */
}

static void test_default_state_dir(void **state)
{
    (void)state;
    char *s;

    s = config_default_state_dir();
    assert_string_equal(s, "/home/tester/.local/state/jobgate");
    free(s);

    assert_int_equal(setenv("XDG_STATE_HOME", "/xdg/state", 1), 0);
    s = config_default_state_dir();
    assert_string_equal(s, "/xdg/state/jobgate");
    free(s);

    assert_int_equal(setenv("XDG_STATE_HOME", "/xdg/state//", 1), 0);
    s = config_default_state_dir();
    assert_string_equal(s, "/xdg/state/jobgate");
    free(s);

    /* relative or empty XDG_STATE_HOME is ignored, as the XDG spec says */
    assert_int_equal(setenv("XDG_STATE_HOME", "relative/state", 1), 0);
    s = config_default_state_dir();
    assert_string_equal(s, "/home/tester/.local/state/jobgate");
    free(s);
    assert_int_equal(setenv("XDG_STATE_HOME", "", 1), 0);
    s = config_default_state_dir();
    assert_string_equal(s, "/home/tester/.local/state/jobgate");
    free(s);

    assert_int_equal(setenv("HOME", "/", 1), 0);
    s = config_default_state_dir();
    assert_string_equal(s, "/.local/state/jobgate");
    free(s);

    assert_int_equal(unsetenv("HOME"), 0);
    assert_null(config_default_state_dir());
    assert_int_equal(setenv("HOME", "", 1), 0);
    assert_null(config_default_state_dir());

    assert_int_equal(setenv("XDG_STATE_HOME", "/only/xdg", 1), 0);
    s = config_default_state_dir();
    assert_string_equal(s, "/only/xdg/jobgate");
    free(s);
}

static void test_default_control_socket(void **state)
{
    (void)state;
    char *s;
    char dir[] = "/tmp/jg_test_runtime_XXXXXX";
    assert_non_null(mkdtemp(dir));

    /* no runtime directory: inside the state directory */
    s = config_default_control_socket("/st/jobgate");
    assert_string_equal(s, "/st/jobgate/control.sock");
    free(s);
    assert_null(config_default_control_socket(NULL));

    /* an existing runtime directory wins */
    assert_int_equal(setenv("XDG_RUNTIME_DIR", dir, 1), 0);
    char want[128];
    snprintf(want, sizeof(want), "%s/jobgate/control.sock", dir);
    s = config_default_control_socket("/st/jobgate");
    assert_string_equal(s, want);
    free(s);
    s = config_default_control_socket(NULL);
    assert_string_equal(s, want);
    free(s);

    /* the personal defaults pick it up too */
    struct jg_config c;
    assert_int_equal(config_defaults(&c), 0);
    assert_string_equal(c.control_socket, want);
    assert_string_equal(c.state_dir, "/home/tester/.local/state/jobgate");
    config_free(&c);

    /* a runtime dir that is missing, relative, empty or a file is not used */
    char missing[128];
    snprintf(missing, sizeof(missing), "%s/nonexistent", dir);
    assert_int_equal(setenv("XDG_RUNTIME_DIR", missing, 1), 0);
    s = config_default_control_socket("/st");
    assert_string_equal(s, "/st/control.sock");
    free(s);

    assert_int_equal(setenv("XDG_RUNTIME_DIR", "tmp", 1), 0);
    s = config_default_control_socket("/st");
    assert_string_equal(s, "/st/control.sock");
    free(s);

    assert_int_equal(setenv("XDG_RUNTIME_DIR", "", 1), 0);
    s = config_default_control_socket("/st");
    assert_string_equal(s, "/st/control.sock");
    free(s);

    char file[128];
    snprintf(file, sizeof(file), "%s/afile", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(setenv("XDG_RUNTIME_DIR", file, 1), 0);
    s = config_default_control_socket("/st");
    assert_string_equal(s, "/st/control.sock");
    free(s);

    assert_int_equal(unlink(file), 0);
    assert_int_equal(rmdir(dir), 0);
}

static void test_defaults_no_home(void **state)
{
    (void)state;
    assert_int_equal(unsetenv("HOME"), 0);
    struct jg_config c;
    assert_int_equal(config_defaults(&c), -ENOENT);
    /* everything else is still filled and freeable */
    assert_null(c.state_dir);
    assert_null(c.control_socket);
    assert_string_equal(c.listen, "127.0.0.1:8443");
    assert_int_equal(c.t_idle, 75);

    /* a file that names the state directory makes it complete */
    char path[64], err[256];
    write_tmp("[gateway]\nstate_dir = /var/lib/jobgate\n", path);
    assert_int_equal(config_load(&c, path, err, sizeof(err)), 0);
    assert_string_equal(c.state_dir, "/var/lib/jobgate");
    assert_string_equal(c.control_socket, "/var/lib/jobgate/control.sock");
    assert_int_equal(c.shared, 1);
    assert_int_equal(unlink(path), 0);
    config_free(&c);

    /* one that does not is an error without a line */
    assert_int_equal(config_defaults(&c), -ENOENT);
    write_tmp("[gateway]\ndomain = apps.example.org\n", path);
    assert_int_equal(config_load(&c, path, err, sizeof(err)), -EINVAL);
    char want[128];
    snprintf(want, sizeof(want), "%s: no 'state_dir'", path);
    assert_memory_equal(err, want, strlen(want));
    assert_string_equal(c.domain, "localhost");
    assert_int_equal(c.shared, 0);
    assert_int_equal(unlink(path), 0);
    config_free(&c);
}

static void test_defaults_socket_too_long(void **state)
{
    (void)state;
    char home[160];
    home[0] = '/';
    memset(home + 1, 'h', 120);
    home[121] = '\0';
    assert_int_equal(setenv("HOME", home, 1), 0);
    struct jg_config c;
    assert_int_equal(config_defaults(&c), -ENAMETOOLONG);
    assert_non_null(c.control_socket);
    assert_true(strlen(c.control_socket) > 107);

    /* loading a file reports it and says what to set */
    char path[64], err[512];
    write_tmp("[gateway]\ndomain = x.org\n", path);
    assert_int_equal(config_load(&c, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "too long for a unix socket"));
    assert_non_null(strstr(err, "control_socket"));
    assert_int_equal(unlink(path), 0);

    /* and setting it fixes it */
    write_tmp("[gateway]\ncontrol_socket = /run/jobgate/control.sock\n", path);
    assert_int_equal(config_load(&c, path, err, sizeof(err)), 0);
    assert_string_equal(c.control_socket, "/run/jobgate/control.sock");
    assert_int_equal(unlink(path), 0);
    config_free(&c);
}

/* ---- whole files -------------------------------------------------------- */

static void test_full_file(void **state)
{
    (void)state;
    const char *data =
        "# jobgate site config\n"
        "; another comment style\n"
        "\n"
        "[gateway]\n"
        "listen = 0.0.0.0:443\n"
        "  domain\t=\tApps.Example.ORG  \n"
        "public_port=8443\n"
        "state_dir = /var/lib/jobgate\n"
        "control_socket = /run/jobgate/control.sock\r\n"
        "cert = /etc/jobgate/tls.crt\n"
        "key = /etc/jobgate/tls.key\n"
        "log = syslog\n"
        "max_connections = 50000\n"
        "   # indented comment\n"
        "[limits]\n"
        "request_line = 4096\n"
        "header_bytes = 65536\n"
        "headers = 64\n"
        "\n"
        "[ timeouts ]\n"
        "handshake = 5s\n"
        "request_head = 1m\n"
        "idle = 120\n"
        "connect = 3s\n"
        "io = 10m\n"
        "tunnel = 2h\n"
        "[links]\n"
        "ttl = 5m\n"
        "session_ttl = 1d"; /* no final newline */
    struct jg_config c;
    char err[256], path[64];
    int r = load(data, &c, err, sizeof(err), path);
    if (r)
        print_error("%s\n", err);
    assert_int_equal(r, 0);
    assert_int_equal(c.shared, 1);
    assert_string_equal(c.listen, "0.0.0.0:443");
    assert_string_equal(c.domain, "apps.example.org");
    assert_int_equal(c.public_port, 8443);
    assert_string_equal(c.state_dir, "/var/lib/jobgate");
    assert_string_equal(c.control_socket, "/run/jobgate/control.sock");
    assert_string_equal(c.cert_file, "/etc/jobgate/tls.crt");
    assert_string_equal(c.key_file, "/etc/jobgate/tls.key");
    assert_int_equal(c.use_syslog, 1);
    assert_int_equal(c.max_connections, 50000);
    assert_int_equal(c.max_request_line, 4096);
    assert_int_equal(c.max_header_bytes, 65536);
    assert_int_equal(c.max_headers, 64);
    assert_int_equal(c.t_handshake, 5);
    assert_int_equal(c.t_request_head, 60);
    assert_int_equal(c.t_idle, 120);
    assert_int_equal(c.t_connect, 3);
    assert_int_equal(c.t_io, 600);
    assert_int_equal(c.t_tunnel, 7200);
    assert_int_equal(c.link_ttl, 300);
    assert_int_equal(c.session_ttl, 86400);
    config_free(&c);
    config_free(&c);
}

static void test_empty_and_comment_only(void **state)
{
    (void)state;
    const char *files[] = {"", "\n\n", "# only\n; comments\n\n  \t \n", "[gateway]\n",
                           "\xef\xbb\xbf# with a byte order mark\n[links]\n"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        struct jg_config c;
        char err[256], path[64];
        assert_int_equal(load(files[i], &c, err, sizeof(err), path), 0);
        assert_int_equal(c.shared, 1);
        c.shared = 0;
        assert_defaults_untouched(&c);
        config_free(&c);
    }
}

/* Repeating a section is fine; each key still appears once. */
static void test_repeated_section(void **state)
{
    (void)state;
    struct jg_config c;
    char err[256], path[64];
    assert_int_equal(load("[gateway]\nlisten = 10.0.0.1:80\n[links]\nttl = 1m\n"
                          "[gateway]\ndomain = a.b\n",
                          &c, err, sizeof(err), path),
                     0);
    assert_string_equal(c.listen, "10.0.0.1:80");
    assert_string_equal(c.domain, "a.b");
    assert_int_equal(c.link_ttl, 60);
    config_free(&c);
}

static void test_load_over_zeroed_struct(void **state)
{
    (void)state;
    struct jg_config c;
    memset(&c, 0, sizeof(c));
    char err[256], path[64];
    write_tmp("[limits]\nheaders = 50\n", path);
    assert_int_equal(config_load(&c, path, err, sizeof(err)), 0);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(c.max_headers, 50);
    assert_string_equal(c.listen, "127.0.0.1:8443");
    assert_string_equal(c.state_dir, "/home/tester/.local/state/jobgate");
    config_free(&c);
}

/* A second load applies on top of the first. */
static void test_load_twice(void **state)
{
    (void)state;
    struct jg_config c;
    char err[256], p1[64], p2[64];
    assert_int_equal(config_defaults(&c), 0);
    write_tmp("[gateway]\ndomain = one.org\nlog = syslog\n", p1);
    write_tmp("[gateway]\ndomain = two.org\n", p2);
    assert_int_equal(config_load(&c, p1, err, sizeof(err)), 0);
    assert_int_equal(config_load(&c, p2, err, sizeof(err)), 0);
    assert_string_equal(c.domain, "two.org");
    assert_int_equal(c.use_syslog, 1);
    assert_int_equal(unlink(p1), 0);
    assert_int_equal(unlink(p2), 0);
    config_free(&c);
}

static void test_missing_file(void **state)
{
    (void)state;
    struct jg_config c;
    char err[256];
    assert_int_equal(config_defaults(&c), 0);
    const char *p = "/tmp/jg_test_config_does_not_exist.conf";
    assert_int_equal(config_load(&c, p, err, sizeof(err)), -ENOENT);
    assert_string_equal(err, "/tmp/jg_test_config_does_not_exist.conf: cannot open: "
                             "No such file or directory");
    assert_defaults_untouched(&c);

    char dir[] = "/tmp/jg_test_cfgdir_XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(config_load(&c, dir, err, sizeof(err)), -EISDIR);
    assert_non_null(strstr(err, "cannot read"));
    assert_int_equal(rmdir(dir), 0);
    assert_defaults_untouched(&c);

    /* no error buffer is fine */
    assert_int_equal(config_load(&c, p, NULL, 0), -ENOENT);
    config_free(&c);
}

static void test_file_size_limit(void **state)
{
    (void)state;
    size_t max = 1024 * 1024;
    char *big = malloc(max + 1);
    assert_non_null(big);
    /* comment lines of 64 bytes: exactly 1 MiB loads */
    for (size_t i = 0; i < max; i += 64) {
        memset(big + i, 'x', 63);
        big[i] = '#';
        big[i + 63] = '\n';
    }
    struct jg_config c;
    char err[256], path[64];
    assert_int_equal(load_n(big, max, &c, err, sizeof(err), path), 0);
    config_free(&c);
    /* one byte more does not */
    big[max] = '\n';
    expect_error_n(big, max + 1, 0, "file is larger than 1048576 bytes");
    free(big);
}

/* [slurm]: the node channel's trusted users and the job certificates' lifetime. */
static void test_slurm_section(void **state)
{
    (void)state;
    struct jg_config c;
    char err[256], path[64];
    assert_int_equal(config_defaults(&c), 0);
    assert_null(c.node_users); /* the default: root, and slurm where it exists */
    assert_int_equal(c.job_cert_margin, 15 * 60);
    assert_int_equal(c.job_cert_max, 7 * 86400);
    assert_int_equal(c.job_check, 30);
    assert_null(c.squeue); /* squeue on PATH */
    config_free(&c);
    assert_int_equal(load("[slurm]\nnode_users = root 64030\tslurm-adm\n"
                          "job_cert_margin = 0s\njob_cert_max = 2d\njob_check = 0\n"
                          "squeue = /opt/slurm/bin/squeue\n",
                          &c, err, sizeof(err), path), 0);
    assert_int_equal(c.job_check, 0);
    assert_string_equal(c.squeue, "/opt/slurm/bin/squeue");
    assert_string_equal(c.node_users, "root 64030\tslurm-adm");
    assert_int_equal(c.job_cert_margin, 0);
    assert_int_equal(c.job_cert_max, 2 * 86400);
    config_free(&c);
    expect_error("[slurm]\nnode_users = root,slurm\n", 2, "'node_users' must be user names");
    expect_error("[slurm]\nnode_users = -root\n", 2, "'node_users' must be user names");
    expect_error("[slurm]\nnode_users = a b c d e f g h i j k l m n o p q\n", 2,
                 "at most 16");
    expect_error("[slurm]\njob_cert_max = 30s\n", 2, "out of range (1m..366d)");
    expect_error("[slurm]\njob_cert_margin = 2d\n", 2, "out of range (0s..1d)");
    expect_error("[slurm]\njob_check = 2h\n", 2, "out of range (0s..1h (0: never))");
    expect_error("[slurm]\nsqueue = squeue\n", 2, "'squeue' must be an absolute path");
    assert_true(config_users_ok("root"));
    assert_true(config_users_ok(" root  slurm "));
    assert_false(config_users_ok(""));
    assert_false(config_users_ok("   "));
    assert_false(config_users_ok("abcdefghijklmnopqrstuvwxyz0123456")); /* 33 bytes */
}

/* ---- syntax errors, each with its line --------------------------------- */

static void test_error_unknown_key(void **state)
{
    (void)state;
    const char *data = "# site\n"
                       "\n"
                       "[gateway]\n"
                       "listen = 0.0.0.0:443\n"
                       "domain = apps.example.org\n"
                       "; next\n"
                       "lisen = 0.0.0.0:443\n";
    struct jg_config c;
    char err[256], path[64], want[128];
    assert_int_equal(load(data, &c, err, sizeof(err), path), -EINVAL);
    snprintf(want, sizeof(want), "%s:7: unknown key 'lisen' in [gateway]", path);
    assert_string_equal(err, want);
    assert_defaults_untouched(&c);
    config_free(&c);

    /* a key of another section, and case matters */
    expect_error("[gateway]\nidle = 10s\n", 2, "unknown key 'idle' in [gateway]");
    expect_error("[timeouts]\nIdle = 10s\n", 2, "unknown key 'Idle' in [timeouts]");
    expect_error("[links]\nmax connections = 5\n", 2, "unknown key 'max connections' in [links]");
}

static void test_error_sections(void **state)
{
    (void)state;
    expect_error("[gateway]\nlisten = 1.2.3.4:5\n[gatway]\n", 3, "unknown section [gatway]");
    expect_error("\n[Gateway]\n", 2, "unknown section [Gateway]");
    expect_error("[gateway\n", 1, "without closing ']'");
    expect_error("[gateway] # c\n", 1, "unexpected text after ']'");
    expect_error("[gateway]]\n", 1, "unexpected text after ']'");
    expect_error("\n\n[]\n", 3, "empty section name");
    expect_error("[  ]\n", 1, "empty section name");
}

static void test_error_key_outside_section(void **state)
{
    (void)state;
    expect_error("# c\nlisten = 1.2.3.4:80\n[gateway]\n", 2,
                 "key 'listen' outside of a section (it belongs in [gateway])");
    expect_error("foo = bar\n", 1, "key 'foo' outside of a section");
}

static void test_error_duplicate(void **state)
{
    (void)state;
    expect_error("[gateway]\ndomain = a.org\n\ndomain = a.org\n", 4,
                 "duplicate key 'domain' in [gateway] (first set on line 2)");
    expect_error("[links]\nttl = 1m\n[gateway]\n[links]\nttl = 2m\n", 5,
                 "duplicate key 'ttl' in [links] (first set on line 2)");
}

static void test_error_line_shape(void **state)
{
    (void)state;
    expect_error("[gateway]\nlisten 1.2.3.4:80\n", 2, "expected 'key = value'");
    expect_error("[gateway]\n\n\nlog\n", 4, "expected 'key = value'");
    expect_error("[gateway]\nlisten =\n", 2, "empty value for 'listen'");
    expect_error("[gateway]\nlisten =   \t \n", 2, "empty value for 'listen'");
    expect_error("[gateway]\n= 1.2.3.4:80\n", 2, "missing key before '='");
    /* comments are whole-line only, so this is part of the value */
    expect_error("[gateway]\nlisten = 1.2.3.4:80 # public\n", 2, "invalid 'listen' address");
    expect_error("[limits]\nheaders = 10 ; ten\n", 2, "invalid number for 'headers'");
    /* control characters and NUL bytes */
    expect_error("[gateway]\ndomain = a\x01.org\n", 2, "control character 0x01");
    expect_error("[gateway]\ndomain = a.org\rx\n", 2, "control character 0x0d");
    static const char with_nul[] = "[gateway]\n\ndomain = a\0.org\n";
    expect_error_n(with_nul, sizeof(with_nul) - 1, 3, "control character 0x00");
    /* CRLF line endings count lines normally */
    expect_error("[gateway]\r\n\r\nlisen = x\r\n", 3, "unknown key 'lisen'");
}

static void test_error_line_too_long(void **state)
{
    (void)state;
    size_t n = 4096;
    char *data = malloc(n + 64);
    assert_non_null(data);
    /* a 4096-byte line is fine */
    int h = snprintf(data, 64, "[gateway]\n");
    memset(data + h, '#', n);
    data[h + n] = '\n';
    data[h + n + 1] = '\0';
    struct jg_config c;
    char err[256], path[64];
    assert_int_equal(load(data, &c, err, sizeof(err), path), 0);
    config_free(&c);
    /* 4097 is not, on line 2 */
    memset(data + h, '#', n + 1);
    data[h + n + 1] = '\n';
    data[h + n + 2] = '\0';
    expect_error(data, 2, "line too long");
    free(data);
}

/* ---- values ------------------------------------------------------------- */

static void test_durations(void **state)
{
    (void)state;
    assert_int_equal(load_duration("idle", "90"), 90);
    assert_int_equal(load_duration("idle", "30s"), 30);
    assert_int_equal(load_duration("idle", "10m"), 600);
    assert_int_equal(load_duration("idle", "2h"), 7200);
    assert_int_equal(load_duration("idle", "1d"), 86400);
    assert_int_equal(load_duration("handshake", "1"), 1);
    assert_int_equal(load_duration("request_head", "24h"), 86400);
    assert_int_equal(load_duration("connect", "86400s"), 86400);
    assert_int_equal(load_duration("io", "1440m"), 86400);
    assert_int_equal(load_duration("tunnel", "7d"), 7 * 86400);
    assert_int_equal(load_duration("tunnel", "1s"), 1);
    assert_int_equal(load_duration("ttl", "1s"), 1);
    assert_int_equal(load_duration("ttl", "7d"), 7 * 86400);
    assert_int_equal(load_duration("session_ttl", "1m"), 60);
    assert_int_equal(load_duration("session_ttl", "60"), 60);
    assert_int_equal(load_duration("session_ttl", "30d"), 30 * 86400);

    bad_kv("timeouts", "idle", "0", "value of 'idle' out of range (1s..1d): '0'");
    bad_kv("timeouts", "idle", "0s", "out of range (1s..1d)");
    bad_kv("timeouts", "handshake", "25h", "value of 'handshake' out of range (1s..1d)");
    bad_kv("timeouts", "io", "86401", "out of range (1s..1d)");
    bad_kv("timeouts", "tunnel", "8d", "value of 'tunnel' out of range (1s..7d)");
    bad_kv("timeouts", "tunnel", "99999999999d", "out of range (1s..7d)");
    bad_kv("links", "ttl", "0m", "value of 'ttl' out of range (1s..7d)");
    bad_kv("links", "ttl", "169h", "out of range (1s..7d)");
    bad_kv("links", "session_ttl", "9s", "value of 'session_ttl' out of range (10s..30d)");
    bad_kv("links", "session_ttl", "31d", "out of range (10s..30d)");
    bad_kv("quota", "control_clients", "513", "value of 'control_clients' out of range (1..512)");
    bad_kv("quota", "routes", "0", "out of range (1..1000000)");
    bad_kv("tunnel", "hello_wait", "2m", "value of 'hello_wait' out of range (1s..1m)");
    bad_kv("gateway", "drain", "11m", "value of 'drain' out of range (0s..10m)");
    bad_kv("tunnel", "pending_per_address", "0", "out of range (1..1000000)");

    const char *junk[] = {"1w", "-1", "1.5h", "10 m", "s", "m5", "+5", "5ss", "0x10", "ten"};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++)
        bad_kv("timeouts", "connect", junk[i], "invalid duration for 'connect'");
}

static void test_uint_ranges(void **state)
{
    (void)state;
    struct jg_config c;
    load_kv("limits", "request_line", "256", &c);
    assert_int_equal(c.max_request_line, 256);
    config_free(&c);
    load_kv("limits", "request_line", "65536", &c);
    assert_int_equal(c.max_request_line, 65536);
    config_free(&c);
    load_kv("limits", "header_bytes", "1024", &c);
    assert_int_equal(c.max_header_bytes, 1024);
    config_free(&c);
    load_kv("limits", "header_bytes", "1048576", &c);
    assert_int_equal(c.max_header_bytes, 1048576);
    config_free(&c);
    load_kv("limits", "headers", "8", &c);
    assert_int_equal(c.max_headers, 8);
    config_free(&c);
    load_kv("limits", "headers", "256", &c);
    assert_int_equal(c.max_headers, 256);
    config_free(&c);
    load_kv("gateway", "max_connections", "1", &c);
    assert_int_equal(c.max_connections, 1);
    config_free(&c);
    load_kv("gateway", "max_connections", "1000000", &c);
    assert_int_equal(c.max_connections, 1000000);
    config_free(&c);
    load_kv("gateway", "public_port", "1", &c);
    assert_int_equal(c.public_port, 1);
    config_free(&c);
    load_kv("gateway", "public_port", "65535", &c);
    assert_int_equal(c.public_port, 65535);
    config_free(&c);
    load_kv("gateway", "public_port", "00443", &c);
    assert_int_equal(c.public_port, 443);
    config_free(&c);
    load_kv("gateway", "workers", "0", &c);
    assert_int_equal(c.workers, 0);
    config_free(&c);
    load_kv("gateway", "workers", "64", &c);
    assert_int_equal(c.workers, 64);
    config_free(&c);

    bad_kv("limits", "request_line", "255", "value of 'request_line' out of range (256..65536)");
    bad_kv("limits", "request_line", "65537", "out of range (256..65536)");
    bad_kv("limits", "header_bytes", "1023", "out of range (1024..1048576)");
    bad_kv("limits", "header_bytes", "1048577", "out of range (1024..1048576)");
    bad_kv("limits", "headers", "7", "out of range (8..256)");
    bad_kv("limits", "headers", "257", "out of range (8..256)");
    bad_kv("gateway", "max_connections", "0", "out of range (1..1000000)");
    bad_kv("gateway", "max_connections", "1000001", "out of range (1..1000000)");
    bad_kv("gateway", "max_connections", "99999999999999999999999", "out of range");
    bad_kv("gateway", "workers", "65", "out of range (0..64");
    bad_kv("gateway", "public_port", "0", "value of 'public_port' out of range (1..65535)");
    bad_kv("gateway", "public_port", "65536", "out of range (1..65535)");

    const char *junk[] = {"abc", "-1", "+5", "0x10", "1e3", "10k", "4 4", "1.0"};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++)
        bad_kv("limits", "headers", junk[i], "invalid number for 'headers'");
}

static void test_listen(void **state)
{
    (void)state;
    const char *good[] = {"0.0.0.0:443", "127.0.0.1:1", "10.1.2.3:65535", "[::1]:443",
                          "[::]:8443", "[2001:db8::7]:80", "[::ffff:127.0.0.1]:443"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct jg_config c;
        load_kv("gateway", "listen", good[i], &c);
        assert_string_equal(c.listen, good[i]);
        config_free(&c);
    }
    const char *bad[] = {"::1:443",       "[::1]443",       "[::1]",          "[::1]:",
                         "127.0.0.1",     "127.0.0.1:",     "127.0.0.1:0",    "127.0.0.1:65536",
                         ":443",          "[]:443",         "localhost:8443", "127.0.0.1:http",
                         "1.2.3.4:80:",   "[1.2.3.4]:80",   "256.1.1.1:80",   "[::1:443",
                         "1.2.3.4:-80",   "[zz::1]:443",    "1.2.3.4 :80",    "1.2.3.4: 80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        bad_kv("gateway", "listen", bad[i], "invalid 'listen' address");
}

static void test_split_hostport(void **state)
{
    (void)state;
    char host[64];
    unsigned port = 0;
    assert_int_equal(config_split_hostport("127.0.0.1:8443", host, sizeof(host), &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8443);
    assert_int_equal(config_split_hostport("[fe80::1]:443", host, sizeof(host), &port), 0);
    assert_string_equal(host, "fe80::1");
    assert_int_equal(port, 443);
    /* host names are fine here (the CLI dials gateways by name) */
    assert_int_equal(config_split_hostport("login1.cluster:22", host, sizeof(host), &port), 0);
    assert_string_equal(host, "login1.cluster");
    assert_int_equal(port, 22);
    /* host and port outputs are optional */
    assert_int_equal(config_split_hostport("a:1", NULL, 0, NULL), 0);
    /* the host must fit, with its NUL */
    assert_int_equal(config_split_hostport("abcd:1", host, 5, &port), 0);
    assert_string_equal(host, "abcd");
    assert_int_equal(config_split_hostport("abcde:1", host, 5, &port), -EINVAL);

    const char *bad[] = {NULL,    "",       "a",       "a:",      ":1",     "a:0",
                         "a:65536", "a:b:1", "[a]:1",   "[::1]",   "[::1]x1", "a b:1",
                         "a:1 ",  "a/b:1",  "[::1]:1x", "a:99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        port = 77;
        assert_int_equal(config_split_hostport(bad[i], host, sizeof(host), &port), -EINVAL);
        assert_int_equal(port, 77);
    }
}

static void test_domain(void **state)
{
    (void)state;
    char l63[64], name[300];
    memset(l63, 'a', 63);
    l63[63] = '\0';
    struct {
        const char *in, *out;
    } good[] = {
        {"localhost", "localhost"},
        {"Apps.Example.ORG", "apps.example.org"},
        {"x1.y-2.z", "x1.y-2.z"},
        {"123.example.org", "123.example.org"},
        {"xn--bcher-kva.example", "xn--bcher-kva.example"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct jg_config c;
        load_kv("gateway", "domain", good[i].in, &c);
        assert_string_equal(c.domain, good[i].out);
        config_free(&c);
    }
    /* a 63-byte label, and a name of exactly 253 bytes: 3 labels of 63, one of 61, 3 dots */
    struct jg_config c;
    snprintf(name, sizeof(name), "%s.org", l63);
    load_kv("gateway", "domain", name, &c);
    assert_string_equal(c.domain, name);
    config_free(&c);
    snprintf(name, sizeof(name), "%s.%s.%s.%.61s", l63, l63, l63, l63);
    assert_int_equal(strlen(name), 253);
    load_kv("gateway", "domain", name, &c);
    assert_string_equal(c.domain, name);
    config_free(&c);

    const char *bad[] = {".example.org", "example.org.", "a..b", "-a.b", "a-.b", "a.-b",
                         "a_b.org", "exa mple.org", "a.b/c", "1.2.3.4", "127", "ex*ample.org",
                         "a.org:443", "\xc3\xa9t\xc3\xa9.fr", "."};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        bad_kv("gateway", "domain", bad[i], "'domain' is not a valid DNS name");
    snprintf(name, sizeof(name), "%sa.org", l63);
    bad_kv("gateway", "domain", name, "not a valid DNS name");
    snprintf(name, sizeof(name), "%s.%s.%s.%.62s", l63, l63, l63, l63);
    assert_int_equal(strlen(name), 254);
    bad_kv("gateway", "domain", name, "not a valid DNS name");
}

static void test_paths(void **state)
{
    (void)state;
    struct jg_config c;
    char err[256], path[64];

    /* state_dir moves the default control socket with it */
    load_kv("gateway", "state_dir", "/srv/jobgate", &c);
    assert_string_equal(c.state_dir, "/srv/jobgate");
    assert_string_equal(c.control_socket, "/srv/jobgate/control.sock");
    config_free(&c);

    /* ... unless it is named too, in any order */
    assert_int_equal(load("[gateway]\ncontrol_socket = /run/jg.sock\nstate_dir = /srv/jg\n", &c,
                          err, sizeof(err), path),
                     0);
    assert_string_equal(c.state_dir, "/srv/jg");
    assert_string_equal(c.control_socket, "/run/jg.sock");
    config_free(&c);

    /* a value may contain '#' and ';' */
    load_kv("gateway", "state_dir", "/srv/a#b;c", &c);
    assert_string_equal(c.state_dir, "/srv/a#b;c");
    config_free(&c);

    bad_kv("gateway", "state_dir", "var/lib/jobgate",
           "'state_dir' must be an absolute path, not 'var/lib/jobgate'");
    bad_kv("gateway", "state_dir", "~/jobgate", "must be an absolute path");
    bad_kv("gateway", "control_socket", "control.sock", "'control_socket' must be an absolute");
    bad_kv("gateway", "cert", "tls.crt", "'cert' must be an absolute path");
    bad_kv("gateway", "key", "./tls.key", "'key' must be an absolute path");

    /* sun_path holds 107 bytes and the NUL */
    char sock[200];
    sock[0] = '/';
    memset(sock + 1, 's', 106);
    sock[107] = '\0';
    load_kv("gateway", "control_socket", sock, &c);
    assert_string_equal(c.control_socket, sock);
    config_free(&c);
    sock[107] = 's';
    sock[108] = '\0';
    bad_kv("gateway", "control_socket", sock,
           "'control_socket' is too long for a unix socket (108 bytes, at most 107)");

    /* a state_dir whose derived socket does not fit is reported on its line */
    char sd[200];
    sd[0] = '/';
    memset(sd + 1, 'd', 100);
    sd[101] = '\0';
    char data[512];
    snprintf(data, sizeof(data), "[gateway]\ndomain = a.org\nstate_dir = %s\n", sd);
    expect_error(data, 3, "control.sock' is too long for a unix socket (at most 107 bytes); "
                          "set 'control_socket' in [gateway]");
}

static void test_cert_key(void **state)
{
    (void)state;
    struct jg_config c;
    char err[256], path[64];
    assert_int_equal(load("[gateway]\nkey = /k.pem\ncert = /c.pem\n", &c, err, sizeof(err), path),
                     0);
    assert_string_equal(c.cert_file, "/c.pem");
    assert_string_equal(c.key_file, "/k.pem");
    config_free(&c);

    expect_error("[gateway]\ndomain = a.org\ncert = /c.pem\n", 3,
                 "'cert' and 'key' go together: set both or neither");
    expect_error("[gateway]\n\nkey = /k.pem\n", 3, "'cert' and 'key' go together");
}

static void test_log(void **state)
{
    (void)state;
    struct jg_config c;
    load_kv("gateway", "log", "syslog", &c);
    assert_int_equal(c.use_syslog, 1);
    config_free(&c);
    load_kv("gateway", "log", "stderr", &c);
    assert_int_equal(c.use_syslog, 0);
    config_free(&c);
    bad_kv("gateway", "log", "file", "'log' must be 'stderr' or 'syslog', not 'file'");
    bad_kv("gateway", "log", "Syslog", "'log' must be 'stderr' or 'syslog'");
    bad_kv("gateway", "log", "syslog stderr", "'log' must be");
}

/* A failure late in the file leaves everything from earlier lines unapplied
 * (expect_error checks all defaults), and a tiny error buffer is safe. */
static void test_error_leaves_config_unchanged(void **state)
{
    (void)state;
    expect_error("[gateway]\nlisten = 10.0.0.1:80\ndomain = x.org\ncert = /c\nkey = /k\n"
                 "log = syslog\nstate_dir = /s\n[limits]\nheaders = 9\n[timeouts]\nidle = 5\n"
                 "[links]\nttl = 9\nsession_ttl = 0\n",
                 14, "session_ttl");

    struct jg_config c;
    char err[8], path[64];
    assert_int_equal(load("[x]\n", &c, err, sizeof(err), path), -EINVAL);
    assert_int_equal(strlen(err), 7);
    assert_memory_equal(err, path, 7);
    config_free(&c);
    char one[1] = {'x'};
    assert_int_equal(load("[x]\n", &c, one, 1, path), -EINVAL);
    assert_int_equal(one[0], '\0');
    config_free(&c);
}

/* SIGHUP: every changed key reported once, with when it applies; the keys
 * only a start changes take the running value back, the others stay new. */
struct seen {
    char keys[512];
};

static void note_change(void *arg, const char *section, const char *key, int live)
{
    struct seen *s = arg;
    size_t n = strlen(s->keys);
    snprintf(s->keys + n, sizeof(s->keys) - n, "%s%s.%s=%s", n ? " " : "", section, key,
             live ? "live" : "start");
}

static void test_reconcile(void **state)
{
    (void)state;
    struct jg_config cur, next;
    char err[256], p1[64], p2[64];
    struct seen seen = {{0}};
    assert_int_equal(config_defaults(&cur), 0);
    assert_int_equal(config_defaults(&next), 0);
    write_tmp("[gateway]\ndomain = one.org\nworkers = 2\n[quota]\nroutes = 9\n", p1);
    write_tmp("[gateway]\ndomain = two.org\nworkers = 2\ncert = /c\nkey = /k\n"
              "[limits]\nheaders = 50\n[slurm]\njob_check = 0\n[quota]\nroutes = 9\n", p2);
    assert_int_equal(config_load(&cur, p1, err, sizeof(err)), 0);
    assert_int_equal(config_load(&next, p2, err, sizeof(err)), 0);
    config_reconcile(&next, &cur, note_change, &seen);
    assert_string_equal(seen.keys, "gateway.domain=start gateway.cert=live gateway.key=live "
                                   "limits.headers=live slurm.job_check=start");
    assert_string_equal(next.domain, "one.org");
    assert_string_equal(next.cert_file, "/c");
    assert_int_equal(next.max_headers, 50);
    assert_int_equal(next.job_check, cur.job_check);
    seen.keys[0] = '\0';
    config_reconcile(&next, &next, note_change, &seen);
    assert_string_equal(seen.keys, "");
    assert_int_equal(unlink(p1), 0);
    assert_int_equal(unlink(p2), 0);
    config_free(&cur);
    config_free(&next);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_defaults_personal, env_reset),
        cmocka_unit_test_setup(test_default_state_dir, env_reset),
        cmocka_unit_test_setup(test_default_control_socket, env_reset),
        cmocka_unit_test_setup(test_defaults_no_home, env_reset),
        cmocka_unit_test_setup(test_defaults_socket_too_long, env_reset),
        cmocka_unit_test_setup(test_full_file, env_reset),
        cmocka_unit_test_setup(test_empty_and_comment_only, env_reset),
        cmocka_unit_test_setup(test_repeated_section, env_reset),
        cmocka_unit_test_setup(test_load_over_zeroed_struct, env_reset),
        cmocka_unit_test_setup(test_load_twice, env_reset),
        cmocka_unit_test_setup(test_missing_file, env_reset),
        cmocka_unit_test_setup(test_file_size_limit, env_reset),
        cmocka_unit_test_setup(test_slurm_section, env_reset),
        cmocka_unit_test_setup(test_error_unknown_key, env_reset),
        cmocka_unit_test_setup(test_error_sections, env_reset),
        cmocka_unit_test_setup(test_error_key_outside_section, env_reset),
        cmocka_unit_test_setup(test_error_duplicate, env_reset),
        cmocka_unit_test_setup(test_error_line_shape, env_reset),
        cmocka_unit_test_setup(test_error_line_too_long, env_reset),
        cmocka_unit_test_setup(test_durations, env_reset),
        cmocka_unit_test_setup(test_uint_ranges, env_reset),
        cmocka_unit_test_setup(test_listen, env_reset),
        cmocka_unit_test_setup(test_split_hostport, env_reset),
        cmocka_unit_test_setup(test_domain, env_reset),
        cmocka_unit_test_setup(test_paths, env_reset),
        cmocka_unit_test_setup(test_cert_key, env_reset),
        cmocka_unit_test_setup(test_log, env_reset),
        cmocka_unit_test_setup(test_error_leaves_config_unchanged, env_reset),
        cmocka_unit_test_setup(test_reconcile, env_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
