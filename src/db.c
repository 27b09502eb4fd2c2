/* SPDX-License-Identifier: Apache-2.0 */
/* The one SQLite layer: safe opening, the error mapping, cached statements,
 * migrations and transactions (see db.h). */
#include "db.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "lv.h"

#define DEFAULT_BUSY_MS 10000

struct Db {
    sqlite3 *db;
    char *path;
    char *label;
    bool readonly;
    bool group; /* a group commit is open (db_group_begin) */
    sqlite3_stmt **st;
    const char *const *st_sql;
    size_t n_st;
};

sqlite3 *db_handle(const Db *db)
{
    return db->db;
}

const char *db_path(const Db *db)
{
    return db->path;
}

bool db_readonly(const Db *db)
{
    return db->readonly;
}

/* ---- errors ---- */

/* true when the file system holding path is mounted read-only. */
static bool fs_readonly(const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof(dir), ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    struct statvfs sv;
    return statvfs(dir, &sv) == 0 && (sv.f_flag & ST_RDONLY);
}

int db_error(Db *db, int rc, const char *what)
{
    int primary = rc & 0xff;
    if ((primary == SQLITE_READONLY || primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR ||
         primary == SQLITE_PERM) &&
        fs_readonly(db->path))
        return lv_error_set(-EROFS,
                            "%s %s: %s: the file system holding it is read-only (the database "
                            "and its -wal and -shm files must be writable)",
                            db->label, db->path, what);
    int r;
    switch (primary) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        r = -EBUSY;
        break;
    case SQLITE_FULL:
        r = -ENOSPC;
        break;
    case SQLITE_NOMEM:
        r = -ENOMEM;
        break;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
        r = -EROFS;
        break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        r = -EUCLEAN;
        break;
    default:
        r = -EIO;
    }
    const char *msg = db->db ? sqlite3_errmsg(db->db) : "";
    const char *name = sqlite3_errstr(rc);
    if (!*msg || strcmp(msg, name) == 0)
        return lv_error_set(r, "%s %s: %s: %s", db->label, db->path, what, name);
    return lv_error_set(r, "%s %s: %s: %s (%s)", db->label, db->path, what, msg, name);
}

int db_last_error(Db *db, const char *what)
{
    return db_error(db, sqlite3_extended_errcode(db->db), what);
}

int db_exec(Db *db, const char *sql)
{
    int rc = sqlite3_exec(db->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_error(db, rc, sql);
}

int db_prepare(Db *db, const char *sql, sqlite3_stmt **ret)
{
    int rc = sqlite3_prepare_v2(db->db, sql, -1, ret, NULL);
    return rc == SQLITE_OK ? 0 : db_error(db, rc, "prepare");
}

sqlite3_stmt *db_stmt(Db *db, unsigned id)
{
    if (id >= db->n_st) {
        lv_error_set(-EINVAL, "%s %s: no statement %u", db->label, db->path, id);
        return NULL;
    }
    if (!db->st[id]) {
        int rc = sqlite3_prepare_v3(db->db, db->st_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                    &db->st[id], NULL);
        if (rc != SQLITE_OK) {
            db_error(db, rc, "prepare");
            return NULL;
        }
    }
    sqlite3_reset(db->st[id]);
    sqlite3_clear_bindings(db->st[id]);
    return db->st[id];
}

int db_query_int(Db *db, const char *sql, int64_t *ret)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = db_prepare(db, sql, &st);
    if (r < 0)
        return r;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *ret = sqlite3_column_int64(st, 0);
    else if (rc == SQLITE_DONE)
        *ret = 0;
    else
        return db_error(db, rc, sql);
    return 0;
}

void db_column_copy(sqlite3_stmt *st, int col, char *out, size_t size)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    snprintf(out, size, "%s", v ? (const char *)v : "");
}

char *db_column_dup(sqlite3_stmt *st, int col)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    return v ? strdup((const char *)v) : NULL;
}

/* ---- transactions ---- */

int db_begin(Db *db)
{
    if (!db->group)
        return db_exec(db, "BEGIN IMMEDIATE");
    if (sqlite3_get_autocommit(db->db)) {
        int r = db_exec(db, "BEGIN IMMEDIATE");
        if (r < 0)
            return r;
    }
    return db_exec(db, "SAVEPOINT op");
}

int db_commit(Db *db)
{
    return db_exec(db, db->group ? "RELEASE op" : "COMMIT");
}

void db_rollback(Db *db)
{
    if (sqlite3_get_autocommit(db->db))
        return;
    if (db->group) {
        sqlite3_exec(db->db, "ROLLBACK TO op", NULL, NULL, NULL);
        sqlite3_exec(db->db, "RELEASE op", NULL, NULL, NULL);
    } else {
        sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    }
}

int db_group_begin(Db *db)
{
    if (db->group)
        return lv_error_set(-EBUSY, "%s %s: a group commit is already open", db->label, db->path);
    db->group = true;
    return 0;
}

int db_group_commit(Db *db)
{
    if (!db->group)
        return 0;
    db->group = false;
    if (sqlite3_get_autocommit(db->db))
        return 0; /* nothing was written */
    int r = db_exec(db, "COMMIT");
    if (r < 0)
        db_rollback(db);
    return r;
}

bool db_in_transaction(Db *db)
{
    return !sqlite3_get_autocommit(db->db);
}

static int savepoint_sql(Db *db, const char *verb, const char *name)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "%s %s", verb, name);
    return db_exec(db, sql);
}

int db_savepoint(Db *db, const char *name)
{
    return savepoint_sql(db, "SAVEPOINT", name);
}

int db_release(Db *db, const char *name)
{
    return savepoint_sql(db, "RELEASE", name);
}

int db_rollback_to(Db *db, const char *name)
{
    return savepoint_sql(db, "ROLLBACK TO", name);
}

/* ---- schema ---- */

int db_schema_info(Db *db, DbSchemaInfo *ret)
{
    DbSchemaInfo i = {0};
    int r = db_query_int(db, "PRAGMA user_version", &i.version);
    if (r >= 0)
        r = db_query_int(db, "PRAGMA application_id", &i.application_id);
    if (r >= 0)
        r = db_query_int(db, "SELECT count(*) FROM sqlite_schema", &i.objects);
    if (r < 0)
        return r;
    *ret = i;
    return 0;
}

static int has_table(Db *db, const char *name)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = db_prepare(db, "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 1;
    return rc == SQLITE_DONE ? 0 : db_error(db, rc, "read the schema");
}

int db_schema_check(Db *db, const DbSchema *schema, int64_t *ret_version)
{
    DbSchemaInfo i;
    int r = db_schema_info(db, &i);
    if (r < 0)
        return r;
    if (i.version == 0 && i.objects == 0 && i.application_id == 0)
        return 1;
    if (i.application_id != (int64_t)schema->application_id)
        return lv_error_set(LV_ERR_INPUT,
                            "%s %s: not a %s database (its application_id is %#" PRIx64
                            ": another SQLite file%s?)",
                            db->label, db->path, schema->kind, (uint64_t)i.application_id,
                            schema->application_id ? ", e.g. the spool" : "");
    if (i.version > (int64_t)schema->n_migrations)
        return lv_error_set(-EPROTO,
                            "%s %s: schema version %" PRId64
                            " is newer than this program knows (%zu); refusing to touch it "
                            "(upgrade the program)",
                            db->label, db->path, i.version, schema->n_migrations);
    if (i.version < 1)
        return lv_error_set(LV_ERR_INPUT, "%s %s: not a %s database (schema version %" PRId64 ")",
                            db->label, db->path, schema->kind, i.version);
    for (const char *const *t = schema->tables; t && *t; t++) {
        r = has_table(db, *t);
        if (r < 0)
            return r;
        if (r == 0)
            return lv_error_set(LV_ERR_INPUT, "%s %s: not a %s database (no table %s)", db->label,
                                db->path, schema->kind, *t);
    }
    *ret_version = i.version;
    return 0;
}

/* Forward to the schema's last version, in one BEGIN IMMEDIATE transaction
 * (two processes opening a new file never both create it). */
static int migrate(Db *db, const DbSchema *schema, bool keep_open)
{
    int r = db_exec(db, "BEGIN IMMEDIATE");
    if (r < 0)
        return r;
    int64_t v = 0;
    r = db_schema_check(db, schema, &v);
    if (r == 1) {
        v = 0;
        if (schema->application_id) {
            char sql[64];
            snprintf(sql, sizeof(sql), "PRAGMA application_id = %" PRIu32, schema->application_id);
            r = db_exec(db, sql);
        } else
            r = 0;
    }
    for (; r >= 0 && v < (int64_t)schema->n_migrations; v++) {
        r = db_exec(db, schema->migrations[v]);
        if (r < 0)
            break;
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %" PRId64, v + 1);
        r = db_exec(db, pragma);
    }
    if (r >= 0 && !keep_open)
        r = db_exec(db, "COMMIT");
    if (r < 0)
        sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    return r;
}

int db_integrity_check(Db *db, int max, char *first, size_t first_size, int *ret_n)
{
    char sql[64];
    snprintf(sql, sizeof(sql), "PRAGMA integrity_check(%d)", max);
    _cleanup_finalize_ sqlite3_stmt *q = NULL;
    int r = db_prepare(db, sql, &q);
    if (r < 0)
        return r;
    first[0] = '\0';
    int n = 0, rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        const char *m = (const char *)sqlite3_column_text(q, 0);
        if (n++ > 0)
            continue;
        /* One line: SQLite's report spans several. */
        if (m && strncmp(m, "*** in database main ***\n", 25) == 0)
            m += 25;
        snprintf(first, first_size, "%s", m ? m : "");
        for (char *p = first; *p; p++)
            if (*p == '\n' || *p == '\r' || *p == '\t')
                *p = ';';
    }
    if (rc != SQLITE_DONE)
        return db_error(db, rc, "integrity_check");
    *ret_n = n == 1 && strcmp(first, "ok") == 0 ? 0 : n;
    return 0;
}

/* ---- opening ---- */

/* A file error as a runtime failure: -EACCES is the PIN class of the error
 * space (exit 5), but a database the service user may not open is a file
 * problem (exit 1). */
static int file_errno(int e)
{
    return e == EACCES ? -EPERM : -e;
}

/* Looks at the file without opening it (an open() and close() would drop
 * the POSIX locks this process may hold on it through another connection),
 * and creates a missing one with mode 0600 before SQLite sees it: SQLite
 * gives the -wal and -shm files the main file's mode. */
static int prepare_file(const DbOptions *o)
{
    const char *path = o->path;
    bool create = (o->flags & DB_CREATE) && !(o->flags & DB_READONLY);
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno != ENOENT)
            return lv_error_set(file_errno(errno), "%s %s: %s", o->label, path, strerror(errno));
        if (!create)
            return lv_error_set(-ENOENT, "%s %s: does not exist%s%s%s", o->label, path,
                                o->missing_hint ? " (" : "", o->missing_hint ? o->missing_hint : "",
                                o->missing_hint ? ")" : "");
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0 && errno != EEXIST)
            return lv_error_set(file_errno(errno), "%s %s: cannot create: %s", o->label, path,
                                strerror(errno));
        if (fd >= 0)
            close(fd);
        if (lstat(path, &st) < 0)
            return lv_error_set(file_errno(errno), "%s %s: %s", o->label, path, strerror(errno));
    }
    if (S_ISLNK(st.st_mode))
        return lv_error_set(LV_ERR_INPUT, "%s %s: is a symbolic link (give the file itself)",
                            o->label, path);
    if (!S_ISREG(st.st_mode))
        return lv_error_set(LV_ERR_INPUT, "%s %s: not a regular file", o->label, path);
    if (o->refuse_mode && (st.st_mode & o->refuse_mode))
        return lv_error_set(o->refuse_error ? o->refuse_error : LV_ERR_INPUT,
                            "%s %s: mode %04o lets other users %s it (%s by group or others); "
                            "it must be 0600 (chmod 600)",
                            o->label, path, (unsigned)(st.st_mode & 07777),
                            o->refuse_mode & 0044 ? "open" : "change",
                            o->refuse_mode & 0044 ? "readable or writable" : "writable");
    if (access(path, o->flags & DB_READONLY ? R_OK : R_OK | W_OK) < 0 && errno != EROFS)
        return lv_error_set(file_errno(errno), "%s %s: %s", o->label, path, strerror(errno));
    return 0;
}

static Db *db_new(const char *path, const char *label, bool readonly)
{
    Db *db = calloc(1, sizeof(*db));
    if (!db)
        return NULL;
    db->path = strdup(path);
    db->label = strdup(label ? label : "database");
    db->readonly = readonly;
    if (!db->path || !db->label)
        return db_close(db);
    return db;
}

static int db_connect(Db *db, int busy_ms)
{
    int rc =
        sqlite3_open_v2(db->path, &db->db,
                        (db->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
                            SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_EXRESCODE,
                        NULL);
    if (rc != SQLITE_OK)
        return db_error(db, rc, "open");
    sqlite3_busy_timeout(db->db, busy_ms > 0 ? busy_ms : DEFAULT_BUSY_MS);
    /* The schema of a file someone else may have edited runs no functions
     * from triggers or views. */
    return db_exec(db, "PRAGMA trusted_schema = OFF");
}

int db_open(const DbOptions *opt, Db **ret)
{
    if (!opt->schema && !(opt->flags & DB_NO_SCHEMA))
        return lv_error_set(-EINVAL, "%s %s: no schema", opt->label, opt->path);
    int r = prepare_file(opt);
    if (r < 0)
        return r;
    bool ro = opt->flags & DB_READONLY;
    Db *db = db_new(opt->path, opt->label, ro);
    if (!db)
        return -ENOMEM;
    if (opt->n_statements) {
        db->st = calloc(opt->n_statements, sizeof(*db->st));
        if (!db->st) {
            db_close(db);
            return -ENOMEM;
        }
        db->st_sql = opt->statements;
        db->n_st = opt->n_statements;
    }
    /* The umask covers any file SQLite creates before it knows the main
     * file's mode. */
    mode_t old = umask(0077);
    r = db_connect(db, opt->busy_timeout_ms);
    if (r >= 0 && !ro) {
        r = db_exec(db, "PRAGMA foreign_keys = ON");
        /* WAL and FULL: a COMMIT returns only after the WAL is on stable
         * storage, so an answer given after COMMIT is never lost by a
         * crash. journal_mode=WAL can silently stay "delete" (e.g. on some
         * network file systems); the durability rules assume WAL. */
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        if (r >= 0)
            r = db_prepare(db, "PRAGMA journal_mode = WAL", &st);
        if (r >= 0) {
            int rc = sqlite3_step(st);
            const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
            if (rc != SQLITE_ROW)
                r = db_error(db, rc, "PRAGMA journal_mode = WAL");
            else if (!mode || strcmp(mode, "wal") != 0)
                r = lv_error_set(-EIO, "%s %s: could not switch to WAL journal mode", db->label,
                                 db->path);
        }
        if (r >= 0)
            r = db_exec(db, "PRAGMA synchronous = FULL");
    }
    umask(old);
    if (r >= 0 && !(opt->flags & DB_NO_SCHEMA)) {
        if (ro) {
            int64_t v;
            r = db_schema_check(db, opt->schema, &v);
            if (r == 1)
                r = lv_error_set(LV_ERR_INPUT, "%s %s: not a %s database (empty)", db->label,
                                 db->path, opt->schema->kind);
        } else
            r = migrate(db, opt->schema, opt->flags & DB_KEEP_TRANSACTION);
    }
    if (r < 0) {
        db_close(db);
        return r;
    }
    *ret = db;
    return 0;
}

int db_open_reader(const Db *src, Db **ret)
{
    Db *db = db_new(src->path, src->label, true);
    if (!db)
        return -ENOMEM;
    int r = db_connect(db, 0);
    if (r < 0) {
        db_close(db);
        return r;
    }
    *ret = db;
    return 0;
}

Db *db_close(Db *db)
{
    if (!db)
        return NULL;
    for (size_t i = 0; i < db->n_st; i++)
        sqlite3_finalize(db->st[i]);
    free(db->st);
    if (db->db)
        sqlite3_close_v2(db->db);
    free(db->path);
    free(db->label);
    free(db);
    return NULL;
}
