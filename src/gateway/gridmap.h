/*
 * gridmap — who a user's own certificate is (docs/tunnel-protocol.md, auth
 * method "cert"; the Karajan service's shared mode): the site's CA
 * ([tunnel] client_ca) vouches for a certificate, and the grid-mapfile
 * ([tunnel] gridmap) maps its subject to one local user:
 *
 *     # comment
 *     "/C=US/O=Example/CN=Alice Smith" alice
 *     "/C=US/O=Example/CN=Bob \"B\" Jones" bob
 *
 * A subject is written as OpenSSL's one-line form (X509_NAME_oneline, the
 * grid-mapfile convention), in double quotes (\" and \\ inside), then one
 * user name. All or nothing: a subject that is not in the file, or that
 * the file names more than once, or with several users ("a,b"), is refused
 * with a clear reason; a malformed line is an error with its line number.
 * The file is read again when it changes (its inode, size or mtime): a
 * change that breaks it refuses every certificate until it is fixed (and
 * the log says which line), never keeps an old mapping the site replaced.
 *
 * Per-job certificates (jobca.h) never come here: they map by their own job
 * record.
 *
 * Owns the parsed map and the file's identity; its mutex guards both, so
 * any worker thread may look up.
 */
#ifndef JG_GRIDMAP_H
#define JG_GRIDMAP_H

#include <stddef.h>
#include <sys/types.h>

struct gridmap;

#define GRIDMAP_FILE_MAX (4u << 20)  /* bytes of a grid-mapfile */
#define GRIDMAP_DN_MAX 1024          /* bytes of a subject, NUL included */
#define GRIDMAP_USER_MAX 64          /* bytes of a user name, NUL included */

/* Loads path. NULL with "PATH:LINE: what" (or "PATH: what") in err. */
struct gridmap *gridmap_open(const char *path, char *err, size_t errlen);
void gridmap_free(struct gridmap *gm);

/* The user that subject dn maps to, into user (re-reading the file first
 * when it changed). 0, or -ENOENT (not in the file), -ENOTUNIQ (named more
 * than once, or with several users), -EIO (the file cannot be read or is
 * malformed now), with the reason in why. */
int gridmap_lookup(struct gridmap *gm, const char *dn, char *user, size_t ulen, char *why,
                   size_t wlen);

/* Parses a grid-mapfile's text (len bytes), for the unit test: the number of
 * entries, or -EINVAL with "LINE: what" in err. */
int gridmap_parse_check(const char *text, size_t len, char *err, size_t errlen);

#endif
