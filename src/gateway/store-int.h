/*
 * store-int.h — private to the store's files: store.c (the reads and writes
 * of each table) and store_open.c (the file, its pragmas, the schema and its
 * migrations, the prepared statements). store.h is the outside; the rule of
 * use is there (one connection, under the registry's write lock).
 */
#ifndef JG_STORE_INT_H
#define JG_STORE_INT_H

#include <stddef.h>

#include <sqlite3.h>

#include "store.h"

enum stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_ROUTE_DROP_OTHER,
    ST_ROUTE_PUT,
    ST_ROUTE_DEL,
    ST_ROUTE_LOAD,
    ST_LINK_PUT,
    ST_LINK_GET,
    ST_LINK_DEL,
    ST_SESS_PUT,
    ST_SESS_DEL,
    ST_SESS_LOAD,
    ST_LINK_LOAD,
    ST_EXP_LINKS,
    ST_EXP_SESS,
    ST_EXP_AUDIT,
    ST_AUDIT,
    ST_JOB_PUT,
    ST_JOB_LOAD,
    ST_JOB_DEL,
    ST_COUNT
};

struct store {
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
};

/* Logs a failed SQLite call (within a rate) and returns its -errno. */
int store_fail(const struct store *s, int rc, const char *op, const char *alias);
/* Copies a text column of at most size - 1 bytes into dst. 0, or -1. */
int store_col_text(sqlite3_stmt *st, int col, char *dst, size_t size);

#endif
