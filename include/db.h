/* SPDX-License-Identifier: Apache-2.0 */
/* The one SQLite layer: opening a database file safely, the one mapping of
 * SQLite result codes into the error space, cached prepared statements, the
 * migration runner and transaction helpers. The spool, the witness and
 * doctor reach SQLite only through it (tests and benchmarks that tamper
 * with a file open it directly). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <sqlite3.h>

typedef struct Db Db;

/* What a database of one kind looks like (the spool's, the witness's). */
typedef struct DbSchema {
    const char *kind;        /* "spool", "witness": "not a <kind> database" */
    uint32_t application_id; /* PRAGMA application_id stamped on creation; 0: none */
    /* migrations[i] takes user_version i to i+1, each in the open's one
     * transaction. Never edit a released entry; append a new one. */
    const char *const *migrations;
    size_t n_migrations;
    const char *const *tables; /* NULL-terminated: tables every version has */
} DbSchema;

enum {
    DB_READONLY = 1 << 0,  /* SQLITE_OPEN_READONLY: nothing created, migrated or written */
    DB_CREATE = 1 << 1,    /* create a missing file (mode 0600); else a missing file is -ENOENT */
    DB_NO_SCHEMA = 1 << 2, /* do not check nor migrate the schema (doctor looks itself) */
    /* Return with the migration's BEGIN IMMEDIATE transaction still open:
     * the caller finishes setting the file up in it (its metadata), then
     * db_commit or db_rollback, so that a new file is made whole or not. */
    DB_KEEP_TRANSACTION = 1 << 3,
};

typedef struct DbOptions {
    const char *path;
    const char *label; /* names the file in every error: "<label> <path>: ..." */
    unsigned flags;
    const DbSchema *schema; /* NULL only with DB_NO_SCHEMA */
    /* The file's permission bits that make it refused, and as what: the
     * spool refuses any access by others (0077, LV_ERR_INPUT), the witness
     * any write by others (0022, -EPERM). 0: no check. */
    mode_t refuse_mode;
    int refuse_error;
    const char *missing_hint; /* added to "does not exist" (e.g. "enqueue creates it") */
    int busy_timeout_ms;      /* 0: 10 s */
    /* SQL of the statements db_stmt() caches, by index. */
    const char *const *statements;
    size_t n_statements;
} DbOptions;

/* Opens path: refuses a symbolic link, anything but a regular file, and a
 * file with refuse_mode bits; creates a missing file with mode 0600 before
 * SQLite sees it (DB_CREATE), and its -wal and -shm files under umask
 * 0077. Read-write: WAL (required: refused when it does not stick),
 * synchronous=FULL, busy timeout, trusted_schema=OFF, foreign_keys=ON; then
 * the schema is checked (db_schema_check) and migrated forward in one
 * BEGIN IMMEDIATE transaction. Read-only: the schema is checked, never
 * migrated. Errors carry detail naming the label and path. A file error
 * EACCES is -EPERM (a file problem, exit 1; -EACCES is the PIN class). */
int db_open(const DbOptions *opt, Db **ret);
/* A second connection to db's file, read-only, for reading beside db in
 * the same process. It does not look at the file first: any open() and
 * close() of it here would drop the POSIX locks the process holds on it
 * (db's too), which SQLite's safety across processes rests on. */
int db_open_reader(const Db *db, Db **ret);
/* Accepts NULL, returns NULL. */
Db *db_close(Db *db);
static inline void db_closep(Db **db)
{
    db_close(*db);
}

sqlite3 *db_handle(const Db *db);
const char *db_path(const Db *db);
bool db_readonly(const Db *db);

/* The one SQLite -> error rule. By the primary result code (rc & 0xff):
 *   BUSY, LOCKED           -> -EBUSY   (another writer holds the lock)
 *   FULL                   -> -ENOSPC
 *   NOMEM                  -> -ENOMEM
 *   READONLY, PERM, AUTH   -> -EROFS   (never -EACCES: that is the PIN class)
 *   CORRUPT, NOTADB        -> -EUCLEAN (the file is damaged or not a database)
 *   anything else          -> -EIO
 * READONLY, CANTOPEN, IOERR and PERM on a file system mounted read-only are
 * -EROFS with a line that says so (SQLite's own words name the symptom,
 * "unable to open database file", not the cause). Records the detail
 * "<label> <path>: <what>: <SQLite's message> (<code name>)" and returns the
 * error. */
int db_error(Db *db, int rc, const char *what);
/* db_error for the connection's last error. */
int db_last_error(Db *db, const char *what);

int db_exec(Db *db, const char *sql);
/* A one-off statement (finalize it; _cleanup_finalize_). */
int db_prepare(Db *db, const char *sql, sqlite3_stmt **ret);
/* Statement `id` of opt->statements, prepared once (persistent) and
 * returned reset with its bindings cleared; NULL with detail recorded when
 * it does not prepare. Reset it after use (_cleanup_reset_). */
sqlite3_stmt *db_stmt(Db *db, unsigned id);
/* One integer from a query or pragma (0 when it returns no row). */
int db_query_int(Db *db, const char *sql, int64_t *ret);

static inline void db_stmt_resetp(sqlite3_stmt **st)
{
    if (*st) {
        sqlite3_reset(*st);
        sqlite3_clear_bindings(*st);
    }
}
#define _cleanup_reset_ __attribute__((cleanup(db_stmt_resetp)))
static inline void db_stmt_finalizep(sqlite3_stmt **st)
{
    sqlite3_finalize(*st);
}
#define _cleanup_finalize_ __attribute__((cleanup(db_stmt_finalizep)))

/* A text column copied into out (truncated, "" for NULL) / strdup'd (NULL
 * for NULL; check the column type to tell it from no memory). */
void db_column_copy(sqlite3_stmt *st, int col, char *out, size_t size);
char *db_column_dup(sqlite3_stmt *st, int col);

/* Transactions. db_begin is BEGIN IMMEDIATE: the write lock is taken before
 * anything is read, so two writers never decide on the same state. Inside
 * a group (db_group_begin) each db_begin/db_commit pair is instead a
 * savepoint of the group's one transaction, which the first of them opens:
 * an operation that fails is undone alone (db_rollback), and
 * db_group_commit makes them all durable with one COMMIT. The group's
 * transaction may have been rolled back under it (SQLite does that on FULL,
 * IOERR, NOMEM); then the next db_begin opens a new one. */
int db_begin(Db *db);
int db_commit(Db *db);
void db_rollback(Db *db);
int db_group_begin(Db *db);  /* -EBUSY if one is open */
int db_group_commit(Db *db); /* 0 when none is open or nothing was written */
bool db_in_transaction(Db *db);
/* Named savepoints inside an open transaction. */
int db_savepoint(Db *db, const char *name);
int db_release(Db *db, const char *name);
int db_rollback_to(Db *db, const char *name);

/* What the file says it is: user_version, application_id and the number of
 * objects in its schema. */
typedef struct DbSchemaInfo {
    int64_t version, application_id, objects;
} DbSchemaInfo;
int db_schema_info(Db *db, DbSchemaInfo *ret);

/* The schema rule db_open applies: 1 for an empty file (version 0, no
 * objects: not initialized); LV_ERR_INPUT "not a <kind> database" for a
 * file with another application_id, without one of the schema's tables, or
 * at version 0 with objects; -EPROTO for a version newer than the program
 * knows; 0 with *ret_version otherwise (it may be older: db_open migrates). */
int db_schema_check(Db *db, const DbSchema *schema, int64_t *ret_version);

/* PRAGMA integrity_check(max): 0 and *ret_n = 0 when it says "ok";
 * otherwise the number of problems it reported and the first of them on one
 * line in first (the whole file is read). */
int db_integrity_check(Db *db, int max, char *first, size_t first_size, int *ret_n);
