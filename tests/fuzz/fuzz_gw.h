/*
 * fuzz_gw.h — what the targets that run the gateway's own state share
 * (fuzz_control.c, fuzz_tunnel_ops.c): the alias words, a state directory
 * under /tmp (HOME too) removed at exit and kept after a crash for a look,
 * the store's files in it, the configuration over it and a certificate for
 * the tunnel hub. Included once per target (it defines what it declares).
 */
#ifndef JG_FUZZ_GW_H
#define JG_FUZZ_GW_H

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "config.h"
#include "fuzz.h"
#include "tls.h"
#include "util.h"

/* alias.c draws from the word list that meson generates (scripts/gen-wordlist.py); the fuzz
 * build has no generated sources, so a few words stand in (fewer words: more collisions, so
 * alias.c's fallback runs too). */
const char *const alias_words[] = {"amber", "brisk", "canal", "delta", "ember", "fjord",
                                   "gecko", "heron", "igloo", "jolly", "koala", "lemon"};
const size_t alias_nwords = sizeof(alias_words) / sizeof(alias_words[0]);

static char dir[64]; /* the state directory */

static int fuzz_rm_one(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    return remove(path);
}

static void fuzz_rm_dir(void)
{
    (void)nftw(dir, fuzz_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The state directory /tmp/jg-fuzz-NAME-XXXXXX, cfg's defaults over it (a shared gateway's
 * domain, port 443) and the gateway's certificate in *cert. */
static void fuzz_gw_init(const char *name, struct jg_config *cfg, X509 **cert)
{
    EVP_PKEY *key = NULL;
    snprintf(dir, sizeof(dir), "/tmp/jg-fuzz-%s-XXXXXX", name);
    CHECK(mkdtemp(dir));
    atexit(fuzz_rm_dir);
    setenv("HOME", dir, 1);
    CHECK(config_defaults(cfg) == 0);
    free(cfg->state_dir);
    cfg->state_dir = xstrdup(dir);
    free(cfg->domain);
    cfg->domain = xstrdup("apps.example.org");
    cfg->public_port = 443;
    *cert = tls_selfissued_new("fuzz", "localhost", 1, &key);
    CHECK(*cert && X509_sign(*cert, key, EVP_sha256()) > 0);
    EVP_PKEY_free(key);
}

/* The store's files, for a new store (opening one costs its fsyncs: now and then only). */
static void fuzz_store_remove(void)
{
    static const char *const files[] = {"jobgate.db", "jobgate.db-wal", "jobgate.db-shm"};
    char p[128];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
}

#endif
