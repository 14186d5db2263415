/*
 * jobgated — the jobgate gateway daemon: option parsing, configuration,
 * daemonising; the daemon itself is gateway.c. See jobgated(8).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "gateway.h"
#include "log.h"
#include "util.h"

static void usage(FILE *f)
{
    fputs("usage: jobgated [-c FILE] [-l ADDRESS:PORT] [--check] [-f] [-v]\n"
          "\n"
          "The jobgate gateway: opens the web apps of batch jobs over HTTPS.\n"
          "Without -c it runs in personal mode: 127.0.0.1:8443, apps at\n"
          "https://<alias>.localhost:8443/, state in $XDG_STATE_HOME/jobgate.\n"
          "\n"
          "  -c, --config FILE    shared mode, settings from FILE (see jobgated(8))\n"
          "  -l, --listen ADDR:PORT  listen there instead (e.g. 127.0.0.1:9443, [::1]:8443)\n"
          "      --check          validate the configuration and exit\n"
          "  -f, --foreground     stay in the foreground, log to stderr\n"
          "  -v, --verbose        log debug messages too\n"
          "  -h, --help           this text\n"
          "      --version        print the version\n",
          f);
}

/* Detaches from the terminal once everything that can fail has been set up,
 * so that errors still reach the user who started the daemon. */
static int daemonize(struct gateway *gw)
{
    char logpath[4096];
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid > 0)
        _exit(0);
    if (setsid() < 0)
        return -errno;
    if (gateway_reinit(gw) < 0)
        return -EIO;
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (nul >= 0) {
        dup2(nul, STDIN_FILENO);
        dup2(nul, STDOUT_FILENO);
        close(nul);
    }
    if (!gw->cfg->use_syslog) {
        snprintf(logpath, sizeof(logpath), "%s/jobgated.log", gw->cfg->state_dir);
        int lf = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (lf >= 0) {
            dup2(lf, STDERR_FILENO);
            close(lf);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"listen", required_argument, NULL, 'l'},
        {"check", no_argument, NULL, 'C'},        {"foreground", no_argument, NULL, 'f'},
        {"verbose", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    const char *file = NULL, *listen = NULL;
    int check = 0, fg = 0, verbose = 0, ch;
    char err[1024];

    malloc_tune();
    while ((ch = getopt_long(argc, argv, "c:l:fvh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': file = optarg; break;
        case 'l': listen = optarg; break;
        case 'C': check = 1; break;
        case 'f': fg = 1; break;
        case 'v': verbose = 1; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("jobgated %s\n", JG_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "jobgated: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    struct jg_config cfg;
    int rc = config_defaults(&cfg);
    if (rc < 0 && !file) {
        fprintf(stderr, "jobgated: cannot find a state directory (set HOME or XDG_STATE_HOME): %s\n",
                strerror(-rc));
        config_free(&cfg);
        return 1;
    }
    if (file && config_load(&cfg, file, err, sizeof(err)) < 0) {
        fprintf(stderr, "jobgated: %s\n", err);
        config_free(&cfg);
        return 1;
    }
    if (listen) {
        unsigned port;
        char host[256];
        if (config_split_hostport(listen, host, sizeof(host), &port) < 0) {
            fprintf(stderr, "jobgated: bad listen address '%s' (want ADDRESS:PORT)\n", listen);
            config_free(&cfg);
            return 2;
        }
        free(cfg.listen);
        cfg.listen = xstrdup(listen);
    }
    if (check) {
        printf("jobgated: configuration OK (%s mode, listen %s, domain %s, state %s)\n",
               cfg.shared ? "shared" : "personal", cfg.listen, cfg.domain, cfg.state_dir);
        config_free(&cfg);
        return 0;
    }

    log_init("jobgated", !fg && cfg.use_syslog, verbose ? LOG_LVL_DEBUG : LOG_LVL_INFO);
    /* static: a call stuck in a hung munged may still use it as the process exits
     * (gateway_free) */
    static struct gateway gw;
    static char cfgpath[PATH_MAX]; /* absolute (a detached gateway runs in /), and found
                                    * before the gateway may drop to an account that cannot */
    int have_path = file && realpath(file, cfgpath);
    rc = gateway_init(&gw, &cfg, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "jobgated: %s\n", err);
        gateway_free(&gw);
        config_free(&cfg);
        return 1;
    }
    if (have_path)
        gw.config_path = cfgpath;
    gw.listen_arg = listen;
    if (!fg && (rc = daemonize(&gw)) < 0) {
        fprintf(stderr, "jobgated: cannot run in the background: %s\n", strerror(-rc));
        gateway_free(&gw);
        config_free(&cfg);
        return 1;
    }
    if (!fg)
        gateway_note_pid(&gw); /* the lock file names the detached process */
    rc = gateway_run(&gw);
    log_info("stopped");
    gateway_free(&gw);
    config_free(&cfg);
    return rc < 0 ? 1 : 0;
}
