/*
 * run_dir — where `jobgate run`'s app listens: a UNIX socket in a private
 * directory (<runtime dir>/jobgate/run-XXXXXX, or /tmp/jobgate-UID/... when
 * there is no runtime directory) that only the user can enter, or with
 * --tcp a loopback port that is free when picked; and the cleanup of the
 * directory at the end. Main thread only.
 */
#include "run.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd.h"
#include "util.h"

/*
 * Opens path without following a symlink and checks that it is a directory
 * of ours that nobody else can write to (exact: mode must be 0700). A
 * directory that we just made gets 0700 first, whatever the umask did.
 * Returns 0, or -1 after printing why.
 */
static int check_private_dir(const char *path, int just_made, int exact)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP || errno == ENOTDIR)
            cli_error("%s is not a directory (or is a symbolic link); refusing to use it", path);
        else
            cli_error("cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        cli_error("cannot stat %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        cli_error("%s belongs to uid %lu, not to you; refusing to use it", path,
                  (unsigned long)st.st_uid);
        close(fd);
        return -1;
    }
    if (just_made && (st.st_mode & 07777) != 0700) {
        if (fchmod(fd, 0700) < 0 || fstat(fd, &st) < 0) {
            cli_error("cannot set the mode of %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    close(fd);
    if (exact ? (st.st_mode & 07777) != 0700 : (st.st_mode & 022) != 0) {
        cli_error("%s has mode %04o; it must be %s; refusing to use it", path,
                  (unsigned)(st.st_mode & 07777), exact ? "0700" : "writable only by you");
        return -1;
    }
    return 0;
}

/*
 * Makes the private directory <base>/run-XXXXXX and the socket path in it.
 * Only we can enter it, so only we (and the gateway, which checks that the
 * socket's directory is ours) can connect to the app.
 */
int rundir_make_socket(struct run *r)
{
    char base[PATH_MAX];
    const char *xdg = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    int exact;

    if (xdg && xdg[0] == '/' && stat(xdg, &st) == 0 && S_ISDIR(st.st_mode)) {
        /* The runtime directory is the user's own; the gateway may have made
         * jobgate/ in it already (its control socket lives there). */
        exact = 0;
        if (xsnprintf(base, sizeof(base), "%s/jobgate", xdg) < 0) {
            cli_error("XDG_RUNTIME_DIR is too long");
            return -1;
        }
    } else {
        /* /tmp is shared: only a directory that is exactly ours will do. */
        exact = 1;
        if (xsnprintf(base, sizeof(base), "/tmp/jobgate-%lu", (unsigned long)geteuid()) < 0) {
            cli_error("temporary directory name too long");
            return -1;
        }
    }
    int made = mkdir(base, 0700) == 0;
    if (!made && errno != EEXIST) {
        cli_error("cannot create %s: %s", base, strerror(errno));
        return -1;
    }
    if (check_private_dir(base, made, exact) < 0)
        return -1;

    char tmpl[PATH_MAX];
    if (xsnprintf(tmpl, sizeof(tmpl), "%s/run-XXXXXX", base) < 0) {
        cli_error("directory name too long: %s/run-XXXXXX", base);
        return -1;
    }
    if (!mkdtemp(tmpl)) {
        cli_error("cannot create a directory in %s: %s", base, strerror(errno));
        return -1;
    }
    /* Recorded before the checks so that cleanup removes it if they fail. */
    memcpy(r->dir, tmpl, strlen(tmpl) + 1);
    if (check_private_dir(r->dir, 1, 1) < 0)
        return -1;
    if (xsnprintf(r->sock, sizeof(r->sock), "%s/app.sock", r->dir) < 0) {
        cli_error("socket path %s/app.sock is longer than %zu bytes; set XDG_RUNTIME_DIR to a "
                  "shorter directory",
                  r->dir, sizeof(r->sock) - 1);
        return -1;
    }
    (void)xsnprintf(r->where, sizeof(r->where), "%s", r->sock);
    return 0;
}

/* A port that is free now. Another process may take it before the app binds
 * it; the gateway then refuses the registration (the port is not ours). */
int rundir_pick_port(struct run *r)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        cli_error("socket: %s", strerror(errno));
        return -1;
    }
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        cli_error("cannot find a free port on 127.0.0.1: %s", strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    r->port = ntohs(a.sin_port);
    (void)xsnprintf(r->where, sizeof(r->where), "127.0.0.1:%u", r->port);
    return 0;
}

void rundir_cleanup(const struct run *r)
{
    if (r->dir[0] == '\0')
        return;
    if (r->sock[0] != '\0' && unlink(r->sock) < 0 && errno != ENOENT)
        cli_error("cannot remove %s: %s", r->sock, strerror(errno));
    /* Not recursive: anything else the app left there is the user's to see. */
    if (rmdir(r->dir) < 0 && errno != ENOENT)
        cli_error("cannot remove %s: %s", r->dir, strerror(errno));
}
