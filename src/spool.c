/* SPDX-License-Identifier: Apache-2.0 */
/* The encrypted SQLite spool: schema and migrations, enqueue with
 * idempotency and drift rejection, leases, retry bookkeeping, dead-letter and
 * quarantine. Payloads are sealed on the token with the DEK. */
#include "spool.h"

#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "canon.h"
#include "envelope.h"
#include "lv.h"

#define SPOOL_ID_LEN       16
#define ROW_VERSION        0x01
#define ROW_OVERHEAD       (1 + TOKEN_GCM_IV_LEN + TOKEN_GCM_TAG_LEN)
#define AAD_DOMAIN         "attesto.local-vault.spool-row.v1"
#define DEFAULT_MAX_TRIES  25
#define BACKOFF_BASE_MS    1000
#define BACKOFF_CAP_MS     300000
#define RETRY_AFTER_MAX_MS 3600000 /* a Retry-After floor never parks an item longer */
#define LEASE_MAX          1024

/* ---------- schema ---------- */

/* Forward migrations: migrations[i] takes user_version i to i+1. Never edit
 * a released entry; append a new one. */
static const char *const migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE items("
    " id INTEGER PRIMARY KEY,"
    " event_id TEXT NOT NULL UNIQUE,"
    " stream_id TEXT NOT NULL,"
    " source_ref TEXT NOT NULL,"
    " event_type TEXT NOT NULL,"
    " payload_hash TEXT NOT NULL,"
    " envelope_hash TEXT NOT NULL,"
    " envelope_sealed INTEGER NOT NULL,"
    " envelope BLOB NOT NULL,"
    " payload BLOB NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN"
    "  ('queued','relaying','receipted','dead_letter','quarantined')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " enqueued_at INTEGER NOT NULL,"
    " next_attempt_at INTEGER NOT NULL,"
    " last_attempt_at INTEGER,"
    " lease_owner TEXT,"
    " lease_expires_at INTEGER,"
    " last_error TEXT,"
    " receipt TEXT,"
    " receipted_at INTEGER);"
    /* The head of a stream is its oldest undelivered item. */
    "CREATE INDEX items_pending ON items(stream_id, id) WHERE state IN ('queued','relaying');"
    "CREATE INDEX items_relaying ON items(stream_id) WHERE state = 'relaying';"
    "CREATE INDEX items_state ON items(state, id);"
    /* One row per stream: its head and when it is due (NULL: nothing due,
     * either nothing pending or an item in flight). Leasing reads this
     * table, so its cost does not grow with the number of queued items. */
    "CREATE TABLE streams(stream_id TEXT PRIMARY KEY, head_id INTEGER, due_at INTEGER)"
    " WITHOUT ROWID;"
    "CREATE INDEX streams_due ON streams(due_at) WHERE due_at IS NOT NULL;"
    "CREATE TABLE conflicts("
    " id INTEGER PRIMARY KEY,"
    " item_id INTEGER NOT NULL,"
    " event_id TEXT NOT NULL,"
    " stream_id TEXT NOT NULL,"
    " source_ref TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " event_type TEXT NOT NULL,"
    " payload_hash TEXT NOT NULL,"
    " detected_at INTEGER NOT NULL);"
    "CREATE INDEX conflicts_item ON conflicts(item_id);"
    /* Counters kept by triggers, so status is O(1) with a million rows. */
    "CREATE TABLE counts(name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO counts VALUES ('queued',0),('relaying',0),('receipted',0),"
    " ('dead_letter',0),('quarantined',0),('conflicts',0);"
    "CREATE TRIGGER items_ins AFTER INSERT ON items BEGIN"
    " UPDATE counts SET n = n + 1 WHERE name = NEW.state; END;"
    "CREATE TRIGGER items_del AFTER DELETE ON items BEGIN"
    " UPDATE counts SET n = n - 1 WHERE name = OLD.state; END;"
    "CREATE TRIGGER items_upd AFTER UPDATE OF state ON items WHEN OLD.state <> NEW.state BEGIN"
    " UPDATE counts SET n = n - 1 WHERE name = OLD.state;"
    " UPDATE counts SET n = n + 1 WHERE name = NEW.state; END;"
    "CREATE TRIGGER conflicts_ins AFTER INSERT ON conflicts BEGIN"
    " UPDATE counts SET n = n + 1 WHERE name = 'conflicts'; END;",
    /* 1 -> 2: key rotation (docs/operations.md). The wrapped DEK moves from
     * meta into a table of DEKs; each row names the DEK that sealed it; the
     * signing keys that signed items are remembered. */
    "CREATE TABLE deks(id INTEGER PRIMARY KEY, wrapped BLOB NOT NULL, created_at INTEGER NOT NULL);"
    "INSERT INTO deks(id, wrapped, created_at)"
    " SELECT 1, value, CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM meta"
    " WHERE key = 'wrapped_dek';"
    "INSERT INTO meta(key, value) SELECT 'current_dek', 1 FROM meta WHERE key = 'wrapped_dek';"
    "DELETE FROM meta WHERE key = 'wrapped_dek';"
    "ALTER TABLE items ADD COLUMN dek_id INTEGER NOT NULL DEFAULT 1;"
    "CREATE INDEX items_dek ON items(dek_id, id);"
    "CREATE TABLE signing_keys(kid TEXT PRIMARY KEY, public_key BLOB NOT NULL,"
    " first_used_at INTEGER NOT NULL, last_used_at INTEGER NOT NULL) WITHOUT ROWID;",
};
#define SCHEMA_VERSION ((int)ELEMENTSOF(migrations))

/* Prepared statements of the hot paths, prepared once per spool. */
enum {
    ST_FIND,
    ST_INSERT,
    ST_STREAM_ADD,
    ST_CONFLICT,
    ST_DUE,
    ST_ROW,
    ST_LEASE,
    ST_STREAM_BUSY,
    ST_HEAD,
    ST_INFLIGHT,
    ST_STREAM_SET,
    ST_EXPIRED,
    ST_REQUEUE_ONE,
    ST_META_SET,
    ST_MARK_RECEIPTED,
    ST_MARK_RETRY,
    ST_MARK_DEAD,
    ST_HELD,
    ST_NEXT,
    ST_RELEASE_ONE,
    ST__MAX
};
static const char *const stmt_sql[ST__MAX] = {
    [ST_FIND] = "SELECT id, stream_id, event_type, payload_hash, envelope_hash FROM items"
                " WHERE event_id = ?1",
    [ST_INSERT] = "INSERT INTO items(event_id, stream_id, source_ref, event_type, payload_hash,"
                  " envelope_hash, envelope_sealed, envelope, payload, state, enqueued_at,"
                  " next_attempt_at, dek_id) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,'queued',?10,?10,"
                  "?11)",
    [ST_STREAM_ADD] = "INSERT INTO streams(stream_id, head_id, due_at) VALUES (?1, ?2, ?3)"
                      " ON CONFLICT(stream_id) DO UPDATE SET head_id = excluded.head_id,"
                      " due_at = excluded.due_at WHERE streams.head_id IS NULL",
    [ST_CONFLICT] = "INSERT INTO conflicts(item_id, event_id, stream_id, source_ref, reason,"
                    " event_type, payload_hash, detected_at) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)",
    [ST_DUE] = "SELECT stream_id, head_id FROM streams WHERE due_at IS NOT NULL AND due_at <= ?1"
               " ORDER BY due_at LIMIT ?2",
    [ST_ROW] = "SELECT state, event_id, stream_id, source_ref, payload_hash, envelope_hash,"
               " envelope_sealed, envelope, payload, attempts, dek_id FROM items WHERE id = ?1",
    [ST_LEASE] = "UPDATE items SET state = 'relaying', lease_owner = ?2, lease_expires_at = ?3"
                 " WHERE id = ?1 AND state = 'queued'",
    [ST_STREAM_BUSY] = "UPDATE streams SET due_at = NULL WHERE stream_id = ?1",
    [ST_HEAD] = "SELECT id, state, next_attempt_at FROM items WHERE stream_id = ?1"
                " AND state IN ('queued','relaying') ORDER BY id LIMIT 1",
    [ST_INFLIGHT] = "SELECT 1 FROM items WHERE stream_id = ?1 AND state = 'relaying' LIMIT 1",
    [ST_STREAM_SET] = "INSERT INTO streams(stream_id, head_id, due_at) VALUES (?1, ?2, ?3)"
                      " ON CONFLICT(stream_id) DO UPDATE SET head_id = excluded.head_id,"
                      " due_at = excluded.due_at",
    [ST_EXPIRED] = "UPDATE items SET state = 'queued', lease_owner = NULL,"
                   " lease_expires_at = NULL WHERE state = 'relaying' AND"
                   " (lease_expires_at <= ?1 OR lease_owner = ?2) RETURNING stream_id",
    [ST_REQUEUE_ONE] = "UPDATE items SET state = 'queued', attempts = 0, next_attempt_at = ?2"
                       " WHERE event_id = ?1 AND state = 'dead_letter' RETURNING stream_id",
    [ST_META_SET] = "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
    /* Outcomes: ?1 id, ?2 owner, ?3 i3, ?4 t4, ?5 i5, ?6 i6, ?7 now (apply_outcome). */
    [ST_MARK_RECEIPTED] = "UPDATE items SET state = 'receipted', attempts = attempts + 1,"
                          " receipt = ?4, receipted_at = ?3, last_attempt_at = ?3,"
                          " lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1"
                          " AND state = 'relaying' AND lease_owner = ?2"
                          " RETURNING stream_id, event_id",
    /* Dead-letter is decided inside the UPDATE, so the count it compares is
     * the one it writes. */
    [ST_MARK_RETRY] = "UPDATE items SET"
                      " attempts = attempts + ?6,"
                      " state = CASE WHEN attempts + ?6 >= ?5 THEN 'dead_letter' ELSE 'queued' END,"
                      " next_attempt_at = ?3, last_attempt_at = ?7, last_error = ?4,"
                      " lease_owner = NULL, lease_expires_at = NULL"
                      " WHERE id = ?1 AND state = 'relaying' AND lease_owner = ?2"
                      " RETURNING stream_id, event_id, state",
    [ST_HELD] = "SELECT 1 FROM items WHERE id = ?1 AND state = 'relaying' AND lease_owner = ?2",
    [ST_NEXT] = "SELECT id, state, next_attempt_at FROM items WHERE stream_id = ?1 AND id > ?2"
                " AND state IN ('queued','relaying') ORDER BY id LIMIT 1",
    [ST_RELEASE_ONE] = "UPDATE items SET state = 'queued', lease_owner = NULL,"
                       " lease_expires_at = NULL WHERE id = ?1 AND state = 'relaying'"
                       " AND lease_owner = ?2 RETURNING stream_id",
    [ST_MARK_DEAD] = "UPDATE items SET state = 'dead_letter', attempts = attempts + 1,"
                     " last_attempt_at = ?3, last_error = ?4, lease_owner = NULL,"
                     " lease_expires_at = NULL WHERE id = ?1 AND state = 'relaying'"
                     " AND lease_owner = ?2 RETURNING stream_id, event_id",
};

struct Spool {
    sqlite3 *db;
    Token *tok;
    char *path;
    char installation_id[129];
    bool include_payload;
    bool have_dek;
    int64_t cur_dek;                   /* the DEK new rows are sealed with */
    int64_t slot_dek[TOKEN_DEK_SLOTS]; /* the DEK id in each token slot, 0: free */
    pthread_mutex_t dek_lock;          /* guards slot_dek: rows are verified on threads */
    bool key_recorded;                 /* the signing key is in signing_keys */
    int max_attempts;
    uint8_t spool_id[SPOOL_ID_LEN];
    sqlite3_stmt *st[ST__MAX];
    bool batch; /* a group commit is open (spool_batch_begin) */
};

/* ---------- SQLite plumbing ---------- */

/* true when the file system holding the spool is mounted read-only. SQLite
 * reports that as "unable to open database file" or "attempt to write a
 * readonly database" depending on which of the spool, -wal and -shm files
 * exist; the operator needs to hear the cause. */
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

static int sql_err(Spool *s, int rc, const char *what)
{
    if ((rc == SQLITE_READONLY || rc == SQLITE_CANTOPEN || rc == SQLITE_IOERR ||
         rc == SQLITE_PERM) &&
        s->path && fs_readonly(s->path))
        return lv_error_set(-EROFS,
                            "spool %s: %s: the file system holding the spool is read-only (the "
                            "spool and its -wal and -shm files must be writable)",
                            s->path, what);
    int r;
    switch (rc) {
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
        r = -EACCES;
        break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        r = -EUCLEAN;
        break;
    default:
        r = -EIO;
    }
    /* -EACCES would read as a PIN problem (exit 5); a read-only spool file
     * is a runtime failure. */
    if (r == -EACCES)
        r = -EROFS;
    return lv_error_set(r, "spool %s: %s: %s (%s)", s->path, what,
                        s->db ? sqlite3_errmsg(s->db) : "", sqlite3_errstr(rc));
}

static int exec(Spool *s, const char *sql)
{
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : sql_err(s, rc, sql);
}

static sqlite3_stmt *stmt(Spool *s, int id)
{
    if (!s->st[id] && sqlite3_prepare_v3(s->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                                         &s->st[id], NULL) != SQLITE_OK) {
        sql_err(s, sqlite3_errcode(s->db), "prepare");
        return NULL;
    }
    return s->st[id];
}

static void stmt_resetp(sqlite3_stmt **st)
{
    if (*st) {
        sqlite3_reset(*st);
        sqlite3_clear_bindings(*st);
    }
}
#define _cleanup_reset_ _cleanup_(stmt_resetp)

static void stmt_finalizep(sqlite3_stmt **st)
{
    sqlite3_finalize(*st);
}
#define _cleanup_finalize_ _cleanup_(stmt_finalizep)

static int prepare(Spool *s, const char *sql, sqlite3_stmt **ret)
{
    int rc = sqlite3_prepare_v2(s->db, sql, -1, ret, NULL);
    return rc == SQLITE_OK ? 0 : sql_err(s, rc, "prepare");
}

/* Inside a group commit each operation is a savepoint of the group's one
 * transaction, which the first operation opens: a failed operation is undone
 * alone, and the group's COMMIT makes them all durable with one fsync. The
 * transaction may have been rolled back under us (SQLite does that on
 * SQLITE_FULL, IOERR, NOMEM); autocommit tells, and a new one is opened. */
static int begin(Spool *s)
{
    if (!s->batch)
        return exec(s, "BEGIN IMMEDIATE");
    if (sqlite3_get_autocommit(s->db)) {
        int r = exec(s, "BEGIN IMMEDIATE");
        if (r < 0)
            return r;
    }
    return exec(s, "SAVEPOINT op");
}

static int commit(Spool *s)
{
    return exec(s, s->batch ? "RELEASE op" : "COMMIT");
}

static void rollback(Spool *s)
{
    if (sqlite3_get_autocommit(s->db))
        return;
    if (s->batch) {
        sqlite3_exec(s->db, "ROLLBACK TO op", NULL, NULL, NULL);
        sqlite3_exec(s->db, "RELEASE op", NULL, NULL, NULL);
    } else {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    }
}

int spool_batch_begin(Spool *s)
{
    if (s->batch)
        return lv_error_set(-EBUSY, "spool: a group commit is already open");
    s->batch = true;
    return 0;
}

int spool_batch_commit(Spool *s)
{
    if (!s->batch)
        return 0;
    s->batch = false;
    if (sqlite3_get_autocommit(s->db))
        return 0; /* nothing was written */
    int r = exec(s, "COMMIT");
    if (r < 0)
        rollback(s);
    return r;
}

static void copy_col(sqlite3_stmt *st, int col, char *out, size_t size)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    snprintf(out, size, "%s", v ? (const char *)v : "");
}

static char *dup_col(sqlite3_stmt *st, int col)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    return v ? strdup((const char *)v) : NULL;
}

static int meta_get(Spool *s, const char *key, uint8_t **ret, size_t *ret_len)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(s, "SELECT value FROM meta WHERE key = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return sql_err(s, rc, "read meta");
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    uint8_t *v = malloc(n + 1);
    if (!v)
        return -ENOMEM;
    if (n)
        memcpy(v, sqlite3_column_blob(st, 0), n);
    v[n] = 0;
    *ret = v;
    *ret_len = n;
    return 0;
}

static int meta_set(Spool *s, const char *key, const void *v, size_t n, bool text)
{
    _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_META_SET);
    if (!st)
        return -EIO;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (text)
        sqlite3_bind_text(st, 2, v, (int)n, SQLITE_TRANSIENT);
    else
        sqlite3_bind_blob(st, 2, v, (int)n, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    return rc == SQLITE_DONE ? 0 : sql_err(s, rc, "write meta");
}

/* The last failure, for status: "<time> <event_id>: <reason>". */
static int note_error(Spool *s, const char *event_id, const char *reason)
{
    char when[32], line[512];
    lv_format_time(lv_now_ms(), when);
    int n = snprintf(line, sizeof(line), "%s %s: %s", when, event_id, reason);
    return meta_set(s, "last_error", line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1,
                    true);
}

/* ---------- open, migrate, keys ---------- */

static int migrate(Spool *s)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(s, "PRAGMA user_version", &st);
    if (r < 0)
        return r;
    if (sqlite3_step(st) != SQLITE_ROW)
        return sql_err(s, sqlite3_errcode(s->db), "read user_version");
    int v = sqlite3_column_int(st, 0);
    if (v < 0 || v > SCHEMA_VERSION)
        return lv_error_set(-EPROTO,
                            "spool %s: schema version %d is newer than this program knows (%d); "
                            "refusing to touch it",
                            s->path, v, SCHEMA_VERSION);
    for (; v < SCHEMA_VERSION; v++) {
        r = exec(s, migrations[v]);
        if (r < 0)
            return r;
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", v + 1);
        r = exec(s, pragma);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---------- DEKs ---------- */

static int read_current_dek(Spool *s, int64_t *ret)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(s, "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'current_dek'", &st);
    if (r < 0)
        return r;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return sql_err(s, rc, "read current DEK");
    *ret = sqlite3_column_int64(st, 0);
    return 0;
}

/* Unwraps DEK id into a free token slot. A DEK that does not unwrap is a
 * key problem (the KEK), never a reason to condemn the rows it sealed. */
static int load_dek_locked(Spool *s, int64_t id, unsigned *ret_slot)
{
    unsigned slot = TOKEN_DEK_SLOTS;
    for (unsigned i = 0; i < TOKEN_DEK_SLOTS; i++) {
        if (s->slot_dek[i] == id) {
            *ret_slot = i;
            return 0;
        }
        if (s->slot_dek[i] == 0 && slot == TOKEN_DEK_SLOTS)
            slot = i;
    }
    if (slot == TOKEN_DEK_SLOTS)
        return lv_error_set(LV_ERR_KEYBAD,
                            "spool %s: more than %d data keys in use; run `spool rekey` to "
                            "retire the old ones",
                            s->path, TOKEN_DEK_SLOTS);
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(s, "SELECT wrapped FROM deks WHERE id = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return lv_error_set(LV_ERR_CRYPTO, "row_dek_unknown: DEK %lld is not in the spool",
                            (long long)id);
    if (rc != SQLITE_ROW)
        return sql_err(s, rc, "read DEK");
    size_t n = (size_t)sqlite3_column_bytes(st, 0);
    if (n != TOKEN_WRAPPED_DEK_LEN)
        return lv_error_set(-EUCLEAN, "spool %s: wrapped data key %lld is %zu bytes, not %d",
                            s->path, (long long)id, n, TOKEN_WRAPPED_DEK_LEN);
    r = token_dek_load_slot(s->tok, slot, sqlite3_column_blob(st, 0), n);
    if (r < 0)
        return lv_error_set(r == LV_ERR_CRYPTO ? LV_ERR_KEYBAD : r,
                            "spool %s: cannot load data key %lld with the configured KEK: %s",
                            s->path, (long long)id, lv_error());
    s->slot_dek[slot] = id;
    *ret_slot = slot;
    return 0;
}

static int load_dek(Spool *s, int64_t id, unsigned *ret_slot)
{
    pthread_mutex_lock(&s->dek_lock);
    int r = load_dek_locked(s, id, ret_slot);
    pthread_mutex_unlock(&s->dek_lock);
    return r;
}

/* The slot of a DEK already loaded (no SQL: verify_row runs on threads);
 * every caller that reads a row loads its DEK first (read_row). */
static int find_dek(Spool *s, int64_t id, unsigned *ret_slot)
{
    int r = lv_error_set(LV_ERR_CRYPTO,
                         "row_dek_unknown: the row names DEK %lld, which the "
                         "spool does not hold",
                         (long long)id);
    pthread_mutex_lock(&s->dek_lock);
    for (unsigned i = 0; i < TOKEN_DEK_SLOTS; i++)
        if (id > 0 && s->slot_dek[i] == id) {
            *ret_slot = i;
            r = 0;
            break;
        }
    pthread_mutex_unlock(&s->dek_lock);
    if (r == 0)
        lv_error_clear();
    return r;
}

static int new_dek(Spool *s, int64_t id)
{
    uint8_t wrapped[TOKEN_WRAPPED_DEK_LEN];
    int r = token_dek_create(s->tok, wrapped);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = prepare(s, "INSERT INTO deks(id, wrapped, created_at) VALUES (?1, ?2, ?3)", &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, wrapped, sizeof(wrapped), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, lv_now_ms());
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return sql_err(s, rc, "store new DEK");
    _cleanup_finalize_ sqlite3_stmt *m = NULL;
    r = prepare(s, "INSERT OR REPLACE INTO meta(key, value) VALUES ('current_dek', ?1)", &m);
    if (r < 0)
        return r;
    sqlite3_bind_int64(m, 1, id);
    rc = sqlite3_step(m);
    return rc == SQLITE_DONE ? 0 : sql_err(s, rc, "set current DEK");
}

/* The current DEK (made on first use) and every other DEK rows still name. */
static int load_deks(Spool *s)
{
    int64_t cur = 0;
    int r = read_current_dek(s, &cur);
    if (r == -ENOENT) {
        cur = 1;
        r = new_dek(s, cur);
    }
    if (r < 0)
        return r;
    s->cur_dek = cur;
    unsigned slot;
    r = load_dek(s, cur, &slot);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = prepare(s, "SELECT id FROM deks WHERE id <> ?1 ORDER BY id DESC", &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, cur);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        r = load_dek(s, sqlite3_column_int64(st, 0), &slot);
        if (r < 0)
            return r;
    }
    return rc == SQLITE_DONE ? 0 : sql_err(s, rc, "read DEKs");
}

/* Another process may have rotated the DEK since this spool was opened:
 * rows are always sealed with the DEK current at their commit. Called
 * inside the write transaction. */
static int refresh_current_dek(Spool *s)
{
    int64_t cur = 0;
    int r = read_current_dek(s, &cur);
    if (r < 0)
        return r == -ENOENT ? lv_error_set(-EUCLEAN, "spool %s: no current DEK", s->path) : r;
    s->cur_dek = cur;
    unsigned slot;
    return load_dek(s, cur, &slot);
}

static int load_meta(Spool *s, const SpoolOptions *opt)
{
    _cleanup_free_ uint8_t *v = NULL;
    size_t n = 0;
    int r = meta_get(s, "spool_id", &v, &n);
    if (r == -ENOENT) {
        if (!s->tok)
            return lv_error_set(-EPROTO, "spool %s: no spool id (not initialized)", s->path);
        r = lv_random(s->spool_id, SPOOL_ID_LEN);
        if (r < 0)
            return lv_error_set(r, "spool: random spool id: %s", strerror(-r));
        r = meta_set(s, "spool_id", s->spool_id, SPOOL_ID_LEN, false);
        if (r < 0)
            return r;
    } else if (r < 0) {
        return r;
    } else if (n != SPOOL_ID_LEN) {
        return lv_error_set(-EUCLEAN, "spool %s: spool id is %zu bytes, not %d", s->path, n,
                            SPOOL_ID_LEN);
    } else {
        memcpy(s->spool_id, v, SPOOL_ID_LEN);
    }
    free(TAKE_PTR(v));

    r = meta_get(s, "installation_id", &v, &n);
    if (r < 0 && r != -ENOENT)
        return r;
    if (r == 0 && !lv_valid_id((char *)v))
        return lv_error_set(-EUCLEAN, "spool %s: stored installation id is not valid", s->path);
    if (opt->installation_id) {
        if (!lv_valid_id(opt->installation_id))
            return lv_error_set(LV_ERR_INPUT,
                                "--installation-id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
        if (r == 0 && strcmp((char *)v, opt->installation_id) != 0)
            return lv_error_set(LV_ERR_INPUT,
                                "--installation-id: the spool %s belongs to installation %s, "
                                "not %s",
                                s->path, (char *)v, opt->installation_id);
        if (r == -ENOENT && s->tok) {
            r = meta_set(s, "installation_id", opt->installation_id, strlen(opt->installation_id),
                         true);
            if (r < 0)
                return r;
        }
        snprintf(s->installation_id, sizeof(s->installation_id), "%s", opt->installation_id);
    } else if (r == 0) {
        snprintf(s->installation_id, sizeof(s->installation_id), "%s", (char *)v);
    }
    free(TAKE_PTR(v));

    if (!s->tok)
        return 0;
    r = load_deks(s);
    if (r < 0)
        return r;
    s->have_dek = true;
    return 0;
}

/* Creates the file 0600 before SQLite sees it; an existing file that others
 * may read is refused rather than silently tightened. */
/* A file error as a runtime failure: -EACCES is the PIN class of the error
 * space (exit 5), but a spool the service user may not open is a file
 * problem (exit 1). */
static int file_errno(int e)
{
    return e == EACCES ? -EPERM : -e;
}

static int prepare_file(const char *path, bool may_create)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno != ENOENT)
            return lv_error_set(file_errno(errno), "spool %s: %s", path, strerror(errno));
        if (!may_create)
            return lv_error_set(-ENOENT, "spool %s: does not exist (enqueue creates it)", path);
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 && errno != EEXIST)
            return lv_error_set(file_errno(errno), "spool %s: cannot create: %s", path,
                                strerror(errno));
        if (fd >= 0)
            close(fd);
        if (stat(path, &st) < 0)
            return lv_error_set(file_errno(errno), "spool %s: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode))
        return lv_error_set(LV_ERR_INPUT, "spool %s: not a regular file", path);
    if (st.st_mode & 0077)
        return lv_error_set(LV_ERR_INPUT,
                            "spool %s: mode %04o lets other users open it; it must be 0600 "
                            "(chmod 600)",
                            path, (unsigned)(st.st_mode & 07777));
    return 0;
}

int spool_open(const SpoolOptions *opt, Token *tok, Spool **ret)
{
    if (!opt || !opt->path || !*opt->path)
        return lv_error_set(LV_ERR_INPUT, "--spool-db: missing");
    Spool *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->tok = tok;
    s->include_payload = opt->include_payload;
    s->max_attempts = opt->max_attempts > 0 ? opt->max_attempts : DEFAULT_MAX_TRIES;
    pthread_mutex_init(&s->dek_lock, NULL);
    s->path = strdup(opt->path);
    int r = s->path ? prepare_file(opt->path, tok != NULL) : -ENOMEM;
    if (r < 0)
        goto fail;

    /* SQLite gives -wal and -shm the main file's mode; the umask covers any
     * file it creates before that is known. */
    mode_t old = umask(0077);
    int rc =
        sqlite3_open_v2(opt->path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_extended_result_codes(s->db, 0);
        sqlite3_busy_timeout(s->db, 10000);
        /* The schema of a file someone else may have edited runs no
         * functions from triggers or views. */
        r = exec(s, "PRAGMA trusted_schema = OFF; PRAGMA foreign_keys = ON;");
        if (r >= 0)
            r = exec(s, "PRAGMA journal_mode = WAL");
        if (r >= 0)
            r = exec(s, "PRAGMA synchronous = FULL");
    }
    umask(old);
    if (rc != SQLITE_OK) {
        r = sql_err(s, rc, "open");
        goto fail;
    }
    if (r < 0)
        goto fail;
    {
        /* journal_mode=WAL can silently stay "delete" (e.g. on some network
         * file systems); durability rules assume WAL. */
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(s, "PRAGMA journal_mode", &st);
        if (r < 0)
            goto fail;
        if (sqlite3_step(st) != SQLITE_ROW ||
            strcmp((const char *)sqlite3_column_text(st, 0), "wal") != 0) {
            r = lv_error_set(-EIO, "spool %s: could not switch to WAL journal mode", s->path);
            goto fail;
        }
    }
    r = begin(s);
    if (r < 0)
        goto fail;
    r = migrate(s);
    if (r >= 0)
        r = load_meta(s, opt);
    if (r < 0) {
        rollback(s);
        goto fail;
    }
    r = commit(s);
    if (r < 0)
        goto fail;
    r = spool_recover_expired(s, lv_now_ms(), NULL);
    if (r < 0)
        goto fail;
    *ret = s;
    return 0;
fail:
    spool_close(s);
    return r;
}

Spool *spool_close(Spool *s)
{
    if (!s)
        return NULL;
    for (int i = 0; i < ST__MAX; i++)
        sqlite3_finalize(s->st[i]);
    if (s->db)
        sqlite3_close_v2(s->db);
    pthread_mutex_destroy(&s->dek_lock);
    free(s->path);
    free(s);
    return NULL;
}

/* ---------- sealing rows ---------- */

static void put_field(uint8_t **p, const void *v, size_t n)
{
    (*p)[0] = (uint8_t)(n >> 24);
    (*p)[1] = (uint8_t)(n >> 16);
    (*p)[2] = (uint8_t)(n >> 8);
    (*p)[3] = (uint8_t)n;
    memcpy(*p + 4, v, n);
    *p += 4 + n;
}

/* AAD: each part length-prefixed (4 bytes, big endian), so no two different
 * bindings share an encoding: domain, row kind, spool id, stream_id,
 * source_ref, envelope hash. */
#define AAD_MAX (6 * 4 + sizeof(AAD_DOMAIN) + 8 + SPOOL_ID_LEN + 128 + 128 + 64)
static size_t build_aad(const Spool *s, const char *kind, const char *stream_id,
                        const char *source_ref, const char *envelope_hash, uint8_t out[AAD_MAX])
{
    uint8_t *p = out;
    put_field(&p, AAD_DOMAIN, strlen(AAD_DOMAIN));
    put_field(&p, kind, strlen(kind));
    put_field(&p, s->spool_id, SPOOL_ID_LEN);
    put_field(&p, stream_id, strlen(stream_id));
    put_field(&p, source_ref, strlen(source_ref));
    put_field(&p, envelope_hash, strlen(envelope_hash));
    return (size_t)(p - out);
}

/* version || IV || ciphertext || tag */
static int seal(Spool *s, const char *kind, const char *stream_id, const char *source_ref,
                const char *envelope_hash, const void *pt, size_t n, uint8_t **ret, size_t *ret_len)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "spool: opened without the token's data key");
    uint8_t aad[AAD_MAX];
    size_t aad_len = build_aad(s, kind, stream_id, source_ref, envelope_hash, aad);
    uint8_t *row = malloc(n + ROW_OVERHEAD);
    if (!row)
        return -ENOMEM;
    row[0] = ROW_VERSION;
    unsigned slot;
    int r = find_dek(s, s->cur_dek, &slot);
    if (r < 0) {
        free(row);
        return r;
    }
    r = lv_random(row + 1, TOKEN_GCM_IV_LEN);
    if (r < 0) {
        free(row);
        return lv_error_set(r, "spool: random IV: %s", strerror(-r));
    }
    r = token_aead_encrypt_slot(s->tok, slot, row + 1, aad, aad_len, pt, n,
                                row + 1 + TOKEN_GCM_IV_LEN);
    if (r < 0) {
        free(row);
        return r;
    }
    *ret = row;
    *ret_len = n + ROW_OVERHEAD;
    return 0;
}

/* Seals and opens a fresh random block with the DEK in a token slot: 0 when
 * the token's AES-GCM with this DEK works now, a token error otherwise. */
static int dek_self_test(Spool *s, unsigned slot)
{
    uint8_t iv[TOKEN_GCM_IV_LEN], block[32], ct[32 + TOKEN_GCM_TAG_LEN], back[32];
    static const uint8_t aad[] = "attesto.local-vault.dek-self-test.v1";
    int r = lv_random(iv, sizeof(iv));
    if (r >= 0)
        r = lv_random(block, sizeof(block));
    if (r >= 0)
        r = token_aead_encrypt_slot(s->tok, slot, iv, aad, sizeof(aad) - 1, block, sizeof(block),
                                    ct);
    if (r >= 0)
        r = token_aead_decrypt_slot(s->tok, slot, iv, aad, sizeof(aad) - 1, ct, sizeof(ct), back);
    if (r >= 0 && memcmp(back, block, sizeof(block)) != 0)
        r = lv_error_set(LV_ERR_TOKEN, "AES-GCM self-test: the block came back different");
    explicit_bzero(block, sizeof(block));
    explicit_bzero(back, sizeof(back));
    return r < 0 ? (lv_is_token_error(r) ? r : LV_ERR_TOKEN) : 0;
}

/* LV_ERR_CRYPTO with a reason for a row that is not ours as stored; any
 * other error is the token's and must not condemn the row. */
static int unseal(Spool *s, const char *kind, int64_t dek_id, const char *stream_id,
                  const char *source_ref, const char *envelope_hash, const uint8_t *row, size_t n,
                  char **ret, size_t *ret_len)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "spool: opened without the token's data key");
    if (n < ROW_OVERHEAD || row[0] != ROW_VERSION)
        return lv_error_set(LV_ERR_CRYPTO, "row_format_invalid: %s row has an unknown format",
                            kind);
    uint8_t aad[AAD_MAX];
    size_t aad_len = build_aad(s, kind, stream_id, source_ref, envelope_hash, aad);
    size_t pt_len = n - ROW_OVERHEAD;
    unsigned slot;
    int r = find_dek(s, dek_id, &slot);
    if (r < 0)
        return r;
    char *pt = malloc(pt_len + 1);
    if (!pt)
        return -ENOMEM;
    r = token_aead_decrypt_slot(s->tok, slot, row + 1, aad, aad_len, row + 1 + TOKEN_GCM_IV_LEN,
                                n - 1 - TOKEN_GCM_IV_LEN, (uint8_t *)pt);
    if (r == LV_ERR_CRYPTO) {
        /* A token reports a tag mismatch and its own failure alike (SoftHSM
         * says CKR_GENERAL_ERROR for both). Quarantine is for rows, so a
         * row is condemned only when the row's own DEK is shown to work
         * right now and the row still fails a second time. */
        char first[256];
        snprintf(first, sizeof(first), "%s", lv_error());
        r = dek_self_test(s, slot);
        if (r < 0) {
            erase_and_free(pt, pt_len + 1);
            return lv_error_set(LV_ERR_TOKEN,
                                "token failed the data key self-test after a %s row did not "
                                "decrypt (%s); the row is left as it is: %s",
                                kind, first, lv_error());
        }
        r = token_aead_decrypt_slot(s->tok, slot, row + 1, aad, aad_len, row + 1 + TOKEN_GCM_IV_LEN,
                                    n - 1 - TOKEN_GCM_IV_LEN, (uint8_t *)pt);
    }
    if (r < 0) {
        erase_and_free(pt, pt_len + 1);
        if (r == LV_ERR_CRYPTO)
            return lv_error_set(LV_ERR_CRYPTO,
                                "row_decrypt_failed: %s row fails authentication (altered, "
                                "copied or swapped)",
                                kind);
        return r;
    }
    pt[pt_len] = '\0';
    *ret = pt;
    *ret_len = pt_len;
    return 0;
}

/* ---------- streams ---------- */

/* Recomputes a stream's head and due time after its items changed state. */
static int stream_refresh(Spool *s, const char *stream_id)
{
    int64_t head = 0, due = 0;
    bool queued = false, inflight = false;
    {
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_HEAD);
        if (!st)
            return -EIO;
        sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            head = sqlite3_column_int64(st, 0);
            queued = strcmp((const char *)sqlite3_column_text(st, 1), "queued") == 0;
            due = sqlite3_column_int64(st, 2);
        } else if (rc != SQLITE_DONE) {
            return sql_err(s, rc, "stream head");
        }
    }
    if (head && queued) {
        /* Only an item requeued from dead_letter behind one in flight can
         * make the head queued while another item of the stream relays. */
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_INFLIGHT);
        if (!st)
            return -EIO;
        sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            inflight = true;
        else if (rc != SQLITE_DONE)
            return sql_err(s, rc, "stream in flight");
    }
    _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_STREAM_SET);
    if (!st)
        return -EIO;
    sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
    if (head)
        sqlite3_bind_int64(st, 2, head);
    else
        sqlite3_bind_null(st, 2);
    if (head && queued && !inflight)
        sqlite3_bind_int64(st, 3, due);
    else
        sqlite3_bind_null(st, 3);
    int rc = sqlite3_step(st);
    return rc == SQLITE_DONE ? 0 : sql_err(s, rc, "stream update");
}

/* ---------- enqueue ---------- */

const char *spool_enqueue_status_name(SpoolEnqueueStatus st)
{
    switch (st) {
    case SPOOL_QUEUED:
        return "queued";
    case SPOOL_DUPLICATE:
        return "duplicate";
    case SPOOL_CONFLICT:
        return "conflict";
    }
    return "unknown";
}

static int check_id(const char *name, const char *v)
{
    if (!v)
        return lv_error_set(LV_ERR_INPUT, "%s: missing", name);
    if (!lv_valid_id(v))
        return lv_error_set(LV_ERR_INPUT, "%s: %s (must be 1-128 bytes of [A-Za-z0-9._:@/-])", name,
                            strlen(v) > 128 ? "longer than 128 bytes"
                                            : "forbidden character or empty");
    return 0;
}

static void cjson_freep(cJSON **j)
{
    cJSON_Delete(*j);
}
#define _cleanup_cjson_ _cleanup_(cjson_freep)
static void cjson_erasep(cJSON **j)
{
    envelope_json_erase(*j);
}

int spool_item_check(const SpoolItemIn *it, char **ret_canon, size_t *ret_len)
{
    int r = check_id("stream_id", it->stream_id);
    if (r < 0)
        return r;
    r = check_id("source_ref", it->source_ref);
    if (r < 0)
        return r;
    if (it->event_type) {
        r = check_id("event_type", it->event_type);
        if (r < 0)
            return r;
    }
    if (!it->payload)
        return lv_error_set(LV_ERR_INPUT, "payload: missing");
    if (it->payload_len > SPOOL_MAX_PAYLOAD)
        return lv_error_set(LV_ERR_TOOBIG, "payload: %zu bytes, over the limit of %d bytes",
                            it->payload_len, SPOOL_MAX_PAYLOAD);
    _cleanup_(cjson_erasep) cJSON *tree = NULL;
    r = canon_parse(it->payload, it->payload_len, SPOOL_MAX_PAYLOAD, "payload", &tree);
    if (r < 0)
        return r;
    if (!cJSON_IsObject(tree))
        return lv_error_set(LV_ERR_INPUT, "payload: must be a JSON object");
    char *c = NULL;
    size_t n = 0;
    r = canon_serialize(tree, &c, &n);
    if (r < 0)
        return r;
    /* Numbers such as 1e15 grow when written out; the cap holds for what is
     * stored and signed too. */
    if (n > SPOOL_MAX_PAYLOAD) {
        erase_and_free(c, n);
        return lv_error_set(LV_ERR_TOOBIG,
                            "payload: %zu bytes once canonical, over the limit of %d bytes", n,
                            SPOOL_MAX_PAYLOAD);
    }
    if (ret_canon) {
        *ret_canon = c;
        *ret_len = n;
    } else {
        erase_and_free(c, n);
    }
    return 0;
}

typedef struct Prepared {
    char *canon;
    size_t canon_len;
    /* Built ahead by the signer thread (spool_enqueue) when presign: */
    bool presign;
    char *body;
    size_t body_len;
    char envelope_hash[65];
    uint8_t *payload_row, *env_row; /* sealed */
    size_t payload_row_len, env_row_len;
} Prepared;

static EnvelopeInput envelope_input(const Spool *s, const SpoolItemIn *it, const Prepared *p,
                                    int64_t now)
{
    return (EnvelopeInput){
        .installation_id = s->installation_id,
        .stream_id = it->stream_id,
        .source_ref = it->source_ref,
        .event_type = it->event_type ? it->event_type : ENVELOPE_DEFAULT_EVENT_TYPE,
        .payload_canon = p->canon,
        .payload_len = p->canon_len,
        .include_payload = s->include_payload,
        .spooled_at_ms = now,
    };
}

/* 1: an item with this event id is stored; 0: not; <0: error. */
static int item_stored(Spool *s, const char *event_id)
{
    _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_FIND);
    if (!st)
        return -EIO;
    sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 1;
    return rc == SQLITE_DONE ? 0 : sql_err(s, rc, "look up item");
}

/* Everything of a new item that needs the token: the envelope and its
 * signature, the sealed payload (and the sealed body, with the opt-in
 * payload). No SQL, so the signer thread can run it. */
static int build_item(Spool *s, const SpoolItemIn *it, Prepared *p, int64_t now)
{
    EnvelopeInput ei = envelope_input(s, it, p, now);
    int r = envelope_build(s->tok, &ei, &p->body, &p->body_len, p->envelope_hash);
    if (r >= 0)
        r = seal(s, "payload", it->stream_id, it->source_ref, p->envelope_hash, p->canon,
                 p->canon_len, &p->payload_row, &p->payload_row_len);
    /* With the opt-in payload the body holds the plaintext: seal it too. */
    if (r >= 0 && s->include_payload)
        r = seal(s, "envelope", it->stream_id, it->source_ref, p->envelope_hash, p->body,
                 p->body_len, &p->env_row, &p->env_row_len);
    return r;
}

static void prepared_done(Prepared *p)
{
    erase_and_free(p->body, p->body_len);
    free(p->payload_row);
    free(p->env_row);
    p->body = NULL;
    p->payload_row = p->env_row = NULL;
}

static int enqueue_one(Spool *s, const SpoolItemIn *it, const Prepared *p, int64_t now,
                       SpoolEnqueueResult *res)
{
    const char *event_type = it->event_type ? it->event_type : ENVELOPE_DEFAULT_EVENT_TYPE;
    char payload_hash[65];
    lv_sha256_hex(p->canon, p->canon_len, payload_hash);
    envelope_event_id(s->installation_id, it->source_ref, res->event_id);

    {
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_FIND);
        if (!st)
            return -EIO;
        sqlite3_bind_text(st, 1, res->event_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            int64_t item_id = sqlite3_column_int64(st, 0);
            const char *reason = NULL;
            if (strcmp((const char *)sqlite3_column_text(st, 1), it->stream_id) != 0)
                reason = "source_ref_in_other_stream";
            else if (strcmp((const char *)sqlite3_column_text(st, 2), event_type) != 0)
                reason = "event_type_differs";
            else if (strcmp((const char *)sqlite3_column_text(st, 3), payload_hash) != 0)
                reason = "payload_differs";
            copy_col(st, 4, res->envelope_hash, sizeof(res->envelope_hash));
            if (!reason) {
                res->status = SPOOL_DUPLICATE;
                return 0;
            }
            res->status = SPOOL_CONFLICT;
            _cleanup_reset_ sqlite3_stmt *ci = stmt(s, ST_CONFLICT);
            if (!ci)
                return -EIO;
            sqlite3_bind_int64(ci, 1, item_id);
            sqlite3_bind_text(ci, 2, res->event_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 3, it->stream_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 4, it->source_ref, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 5, reason, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 6, event_type, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 7, payload_hash, -1, SQLITE_STATIC);
            sqlite3_bind_int64(ci, 8, now);
            rc = sqlite3_step(ci);
            return rc == SQLITE_DONE ? 0 : sql_err(s, rc, "record conflict");
        }
        if (rc != SQLITE_DONE)
            return sql_err(s, rc, "look up item");
    }

    /* The signer thread built the item already, or we build it here. */
    Prepared own = {.canon = p->canon, .canon_len = p->canon_len};
    const Prepared *b = p;
    int r = 0;
    if (!p->body) {
        r = build_item(s, it, &own, now);
        if (r < 0)
            goto done;
        b = &own;
    }
    memcpy(res->envelope_hash, b->envelope_hash, sizeof(res->envelope_hash));
    {
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_INSERT);
        if (!st) {
            r = -EIO;
            goto done;
        }
        sqlite3_bind_text(st, 1, res->event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, it->stream_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, it->source_ref, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, event_type, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, payload_hash, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, res->envelope_hash, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 7, b->env_row ? 1 : 0);
        if (b->env_row)
            sqlite3_bind_blob(st, 8, b->env_row, (int)b->env_row_len, SQLITE_STATIC);
        else
            sqlite3_bind_blob(st, 8, b->body, (int)b->body_len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 9, b->payload_row, (int)b->payload_row_len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 10, now);
        sqlite3_bind_int64(st, 11, s->cur_dek);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) {
            r = sql_err(s, rc, "insert item");
            goto done;
        }
    }
    {
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_STREAM_ADD);
        if (!st) {
            r = -EIO;
            goto done;
        }
        sqlite3_bind_text(st, 1, it->stream_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, sqlite3_last_insert_rowid(s->db));
        sqlite3_bind_int64(st, 3, now);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) {
            r = sql_err(s, rc, "update stream");
            goto done;
        }
    }
    res->status = SPOOL_QUEUED;
    r = 0;
done:
    prepared_done(&own);
    return r;
}

/* Remembers the signing key that signs this spool's items, so that
 * `public-key` can list the earlier ones after a rotation. A kid that
 * already names another key would make signatures ambiguous: refused. */
static int record_signing_key(Spool *s, int64_t now)
{
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    int r = token_public_key(s->tok, pk);
    if (r < 0)
        return r;
    const char *kid = token_key_id(s->tok);
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = prepare(s,
                "INSERT INTO signing_keys(kid, public_key, first_used_at, last_used_at)"
                " VALUES (?1, ?2, ?3, ?3) ON CONFLICT(kid) DO UPDATE SET last_used_at ="
                " excluded.last_used_at WHERE signing_keys.public_key = excluded.public_key",
                &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, kid, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, pk, sizeof(pk), SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return sql_err(s, rc, "record signing key");
    if (sqlite3_changes(s->db) == 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--key-id %s: this spool has items signed by another key under that "
                            "kid; a new signing key needs a new kid (unset --key-id, or give "
                            "another)",
                            kid);
    s->key_recorded = true;
    return 0;
}

/* Pipelining a batch: the token's C_Sign is the slowest step of an item, so
 * one thread does all of an item's token work (build and sign the envelope,
 * seal the rows), in order, while the caller's thread inserts the items
 * already built. All token calls stay on one thread: SoftHSM and OpenSSL 3
 * serialise concurrent operations on internal locks, so splitting them
 * across threads only adds contention. Both run inside the batch's one
 * transaction; nothing is committed before every item is stored. */
#define SIGNER_MIN_ITEMS 2
#define SIGNER_HANDOFF   32 /* items the caller takes over per wakeup, at most */

typedef struct Signer {
    Spool *s;
    const SpoolItemIn *items;
    Prepared *prep;
    size_t n;
    int64_t now;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t ready; /* prep[0..ready) are checked and marked: the signer may start */
    pthread_cond_t ready_cond;
    size_t done;       /* prep[0..done) are settled (built, or not to be built) */
    size_t want;       /* the caller sleeps until done > want: woken once per handoff */
    int error;         /* the first failure; the signer stops there */
    size_t failed_at;  /* the item that failed */
    char detail[1024]; /* its lv_error(), which is thread-local */
    bool stop;         /* the caller gave up: build nothing more */
} Signer;

static void *signer_main(void *arg)
{
    Signer *g = arg;
    for (size_t i = 0; i < g->n; i++) {
        Prepared *p = &g->prep[i];
        int r = 0;
        pthread_mutex_lock(&g->lock);
        while (g->ready <= i && !g->stop)
            pthread_cond_wait(&g->ready_cond, &g->lock);
        bool stop = g->stop, presign = p->presign;
        pthread_mutex_unlock(&g->lock);
        if (stop)
            break;
        if (presign)
            r = build_item(g->s, &g->items[i], p, g->now);
        pthread_mutex_lock(&g->lock);
        if (r < 0) {
            g->error = r;
            g->failed_at = i;
            snprintf(g->detail, sizeof(g->detail), "%s", lv_error());
        }
        g->done = i + 1;
        /* Woken per handoff, not per item: on a busy machine every wakeup
         * of the caller can preempt this thread, the token's only one. */
        if (r < 0 || g->done > g->want)
            pthread_cond_signal(&g->cond);
        pthread_mutex_unlock(&g->lock);
        if (r < 0)
            break;
    }
    return NULL;
}

/* Waits until item i is settled (sleeping, when it must, until the items
 * up to `last` are: one wakeup per handoff); the signer's error (with its
 * detail) if it failed at i or before. A failure further ahead (in a later
 * group) is not item i's: its group still commits. */
static int signer_wait(Signer *g, size_t i, size_t last)
{
    pthread_mutex_lock(&g->lock);
    if (g->done <= i && g->error == 0)
        g->want = last;
    while (g->done <= i && g->error == 0)
        pthread_cond_wait(&g->cond, &g->lock);
    int r = g->error < 0 && i >= g->failed_at ? g->error : 0;
    pthread_mutex_unlock(&g->lock);
    if (r < 0)
        return lv_error_set(r, "%s", g->detail);
    return 0;
}

static size_t hash_ref(const char *v)
{
    size_t h = 1469598103934665603ULL;
    for (; *v; v++)
        h = (h ^ (unsigned char)*v) * 1099511628211ULL;
    return h;
}

/* The source_refs met so far in one call, to tell repeats. */
typedef struct Seen {
    const char **refs;
    size_t cap;
} Seen;

static int seen_init(Seen *seen, size_t n)
{
    seen->cap = 16;
    while (seen->cap < 2 * n)
        seen->cap *= 2;
    seen->refs = calloc(seen->cap, sizeof(*seen->refs));
    return seen->refs ? 0 : -ENOMEM;
}

/* Marks item i for the signer when it is new to the spool and the first of
 * its source_ref in the call (a repeat must meet the stored first one:
 * duplicate or conflict, never a second signature). */
static int mark_presign(Spool *s, Seen *seen, const SpoolItemIn *items, Prepared *prep, size_t i)
{
    const char *ref = items[i].source_ref;
    size_t k = hash_ref(ref) & (seen->cap - 1);
    for (; seen->refs[k]; k = (k + 1) & (seen->cap - 1))
        if (strcmp(seen->refs[k], ref) == 0)
            return 0;
    seen->refs[k] = ref;
    char event_id[ENVELOPE_EVENT_ID_MAX];
    envelope_event_id(s->installation_id, ref, event_id);
    int r = item_stored(s, event_id);
    if (r < 0)
        return r;
    prep[i].presign = r == 0;
    return 0;
}

/* Inserts items [from, to) as the signer settles them; stops at the first
 * error. */
static int insert_range(Spool *s, Signer *g, const SpoolItemIn *items, Prepared *prep, size_t from,
                        size_t to, int64_t now, SpoolEnqueueResult *ret_results)
{
    int r = 0;
    for (size_t i = from; i < to && r >= 0; i++) {
        memset(&ret_results[i], 0, sizeof(ret_results[i]));
        if (g && prep[i].presign)
            r = signer_wait(g, i,
                            i + SIGNER_HANDOFF - 1 < to - 1 ? i + SIGNER_HANDOFF - 1 : to - 1);
        if (r >= 0)
            r = enqueue_one(s, &items[i], &prep[i], now, &ret_results[i]);
        /* Stored (or refused): what the signer built for it is not needed. */
        prepared_done(&prep[i]);
    }
    return r;
}

/* The items in groups of `group`, each committed on its own (then done() is
 * called), the signer running ahead across the groups. */
static int enqueue_run(Spool *s, const SpoolItemIn *items, size_t n,
                       SpoolEnqueueResult *ret_results, size_t group, spool_group_done_fn done,
                       void *userdata)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "enqueue: the spool was opened without the token");
    if (!s->installation_id[0])
        return lv_error_set(LV_ERR_INPUT, "--installation-id: missing (needed to enqueue)");
    if (n == 0)
        return 0;
    Prepared *prep = calloc(n, sizeof(*prep));
    Seen seen = {0};
    if (!prep || seen_init(&seen, n) < 0) {
        free(prep);
        return -ENOMEM;
    }
    Signer g = {.s = s, .items = items, .prep = prep, .n = n};
    bool signer = false, open = false, record_pending = false;
    pthread_t th;
    int r = begin(s);
    if (r < 0)
        goto done;
    open = true;
    int64_t now = lv_now_ms();
    /* The DEK of the first transaction seals every row of the call (the
     * signer seals ahead); rows keep the id of the DEK they were sealed
     * with, so a rotation meanwhile leaves them readable (and rekeyed by the
     * next rekey). */
    bool key_was_recorded = s->key_recorded;
    r = refresh_current_dek(s);
    if (r >= 0 && !s->key_recorded)
        r = record_signing_key(s, now);
    g.now = now;
    /* The key record goes with this first transaction: undone with it. */
    record_pending = r >= 0 && s->key_recorded && !key_was_recorded;
    if (r < 0)
        goto done;
    if (n >= SIGNER_MIN_ITEMS) {
        pthread_mutex_init(&g.lock, NULL);
        pthread_cond_init(&g.cond, NULL);
        pthread_cond_init(&g.ready_cond, NULL);
        int e = pthread_create(&th, NULL, signer_main, &g);
        if (e != 0) {
            pthread_cond_destroy(&g.ready_cond);
            pthread_cond_destroy(&g.cond);
            pthread_mutex_destroy(&g.lock);
            r = lv_error_set(-e, "enqueue: cannot start the signing thread: %s", strerror(e));
            goto done;
        }
        signer = true;
    }
    /* Every item validated before the first write (one bad item, no rows),
     * and handed to the signer as soon as it is: the token starts on the
     * first item while the rest are checked. Marked inside the first group's
     * transaction: what is stored now is seen, and what the groups of this
     * call store is a repeat, never signed twice. */
    for (size_t i = 0; i < n && r >= 0; i++) {
        r = spool_item_check(&items[i], &prep[i].canon, &prep[i].canon_len);
        if (r >= 0)
            r = mark_presign(s, &seen, items, prep, i);
        if (r >= 0 && signer) {
            pthread_mutex_lock(&g.lock);
            g.ready = i + 1;
            pthread_cond_signal(&g.ready_cond);
            pthread_mutex_unlock(&g.lock);
        }
    }
    for (size_t first = 0; first < n && r >= 0; first += group) {
        size_t count = n - first < group ? n - first : group;
        if (!open && (r = begin(s)) < 0)
            break;
        open = true;
        r = insert_range(s, signer ? &g : NULL, items, prep, first, first + count, now,
                         ret_results);
        if (r >= 0)
            r = commit(s);
        if (r < 0)
            break;
        open = false;
        record_pending = false;
        if (done)
            r = done(userdata, first, count);
    }
done:
    if (r < 0 && open) {
        rollback(s);
        if (record_pending)
            s->key_recorded = false; /* the record went with the transaction */
    }
    if (signer) {
        pthread_mutex_lock(&g.lock);
        g.stop = true;
        pthread_cond_signal(&g.ready_cond);
        pthread_mutex_unlock(&g.lock);
        pthread_join(th, NULL);
        pthread_cond_destroy(&g.ready_cond);
        pthread_cond_destroy(&g.cond);
        pthread_mutex_destroy(&g.lock);
    }
    for (size_t i = 0; i < n; i++) {
        erase_and_free(prep[i].canon, prep[i].canon_len);
        prepared_done(&prep[i]);
    }
    free(prep);
    free(seen.refs);
    return r;
}

int spool_enqueue(Spool *s, const SpoolItemIn *items, size_t n, SpoolEnqueueResult *ret_results)
{
    /* One transaction for all n. */
    return enqueue_run(s, items, n, ret_results, n ? n : 1, NULL, NULL);
}

int spool_enqueue_groups(Spool *s, const SpoolItemIn *items, size_t n,
                         SpoolEnqueueResult *ret_results, spool_group_done_fn done, void *userdata)
{
    return enqueue_run(s, items, n, ret_results, SPOOL_BATCH_GROUP, done, userdata);
}

/* ---------- the JSONL line ---------- */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Past the closing quote of the string starting at p, or NULL if the line
 * ends first. */
static const char *scan_string(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

/* The end of the value starting at p. Structure inside the span is checked
 * later by canon_parse; this only needs to find where the span ends.
 * *truncated tells a line that ends inside the value. */
static const char *scan_value(const char *p, const char *end, bool *truncated)
{
    *truncated = false;
    if (p >= end) {
        *truncated = true;
        return NULL;
    }
    if (*p == '"') {
        const char *e = scan_string(p, end);
        *truncated = !e;
        return e;
    }
    if (*p == '{' || *p == '[') {
        size_t depth = 0;
        while (p < end) {
            if (*p == '"') {
                p = scan_string(p, end);
                if (!p)
                    break;
                continue;
            }
            if (*p == '{' || *p == '[')
                depth++;
            else if (*p == '}' || *p == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        *truncated = true;
        return NULL;
    }
    const char *q = p;
    while (q < end && !strchr(",}] \t\r\n", *q))
        q++;
    if (q == end)
        *truncated = true; /* a bare value cannot end the line inside an object */
    return q == p ? NULL : q;
}

void spool_item_line_done(SpoolItemLine *l)
{
    if (!l)
        return;
    free(l->stream_id);
    free(l->source_ref);
    free(l->event_type);
    *l = (SpoolItemLine){0};
}

static int line_string(const char *name, const char *v, size_t n, char **ret)
{
    _cleanup_cjson_ cJSON *j = NULL;
    int r = canon_parse(v, n, 4096, name, &j);
    if (r < 0)
        return r;
    if (!cJSON_IsString(j))
        return lv_error_set(LV_ERR_INPUT, "%s: must be a string", name);
    *ret = strdup(j->valuestring);
    return *ret ? 0 : -ENOMEM;
}

int spool_item_parse_line(const char *line, size_t len, SpoolItemLine *ret)
{
    static const char *const names[] = {"stream_id", "source_ref", "event_type", "payload"};
    const char *end = line + len, *p = skip_ws(line, end);
    const char *vstart[4] = {0};
    size_t vlen[4] = {0};
    SpoolItemLine out = {0};
    int r;

    if (p == end)
        return lv_error_set(LV_ERR_INPUT, "empty line");
    if (*p != '{')
        return lv_error_set(LV_ERR_INPUT, "not a JSON object");
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= end)
                return lv_error_set(LV_ERR_INPUT,
                                    "truncated JSON (the line ends inside the object)");
            if (*p != '"')
                return lv_error_set(LV_ERR_INPUT, "malformed JSON (expected a member name)");
            const char *kend = scan_string(p, end);
            if (!kend)
                return lv_error_set(LV_ERR_INPUT, "truncated JSON (the line ends inside a name)");
            _cleanup_cjson_ cJSON *key = NULL;
            r = canon_parse(p, (size_t)(kend - p), 1024, "member name", &key);
            if (r < 0)
                return r;
            if (!cJSON_IsString(key))
                return lv_error_set(LV_ERR_INPUT, "malformed JSON (expected a member name)");
            int k = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(key->valuestring, names[i]) == 0)
                    k = i;
            if (k < 0)
                return lv_error_set(LV_ERR_INPUT,
                                    "%.64s: unknown member (expected stream_id, source_ref, "
                                    "event_type, payload)",
                                    key->valuestring);
            if (vstart[k])
                return lv_error_set(LV_ERR_INPUT, "%s: duplicate member", names[k]);
            p = skip_ws(kend, end);
            if (p >= end)
                return lv_error_set(LV_ERR_INPUT, "%s: truncated JSON (no value)", names[k]);
            if (*p != ':')
                return lv_error_set(LV_ERR_INPUT, "%s: malformed JSON (expected ':')", names[k]);
            p = skip_ws(p + 1, end);
            bool truncated;
            const char *vend = scan_value(p, end, &truncated);
            if (truncated)
                return lv_error_set(
                    LV_ERR_INPUT, "%s: truncated JSON (the line ends inside the value)", names[k]);
            if (!vend)
                return lv_error_set(LV_ERR_INPUT, "%s: malformed JSON value", names[k]);
            vstart[k] = p;
            vlen[k] = (size_t)(vend - p);
            p = skip_ws(vend, end);
            if (p >= end)
                return lv_error_set(LV_ERR_INPUT,
                                    "truncated JSON (the line ends inside the object)");
            if (*p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (*p == '}') {
                p++;
                break;
            }
            return lv_error_set(LV_ERR_INPUT, "%s: malformed JSON (expected ',' or '}')", names[k]);
        }
    }
    if (skip_ws(p, end) != end)
        return lv_error_set(LV_ERR_INPUT, "malformed JSON (data after the object)");
    for (int i = 0; i < 4; i++)
        if (!vstart[i] && i != 2)
            return lv_error_set(LV_ERR_INPUT, "%s: missing", names[i]);
    if (vlen[3] > SPOOL_MAX_PAYLOAD)
        return lv_error_set(LV_ERR_TOOBIG, "payload: %zu bytes, over the limit of %d bytes",
                            vlen[3], SPOOL_MAX_PAYLOAD);
    r = line_string("stream_id", vstart[0], vlen[0], &out.stream_id);
    if (r >= 0)
        r = line_string("source_ref", vstart[1], vlen[1], &out.source_ref);
    if (r >= 0 && vstart[2])
        r = line_string("event_type", vstart[2], vlen[2], &out.event_type);
    if (r < 0) {
        spool_item_line_done(&out);
        return r;
    }
    out.payload = vstart[3];
    out.payload_len = vlen[3];
    *ret = out;
    return 0;
}

/* ---------- leases ---------- */

void spool_leases_free(SpoolLease *l, size_t n)
{
    if (!l)
        return;
    for (size_t i = 0; i < n; i++)
        erase_and_free(l[i].body, l[i].body_len);
    free(l);
}

static int quarantine(Spool *s, int64_t id, const char *stream_id, const char *event_id,
                      const char *reason)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(s,
                    "UPDATE items SET state = 'quarantined', last_error = ?2, lease_owner = NULL,"
                    " lease_expires_at = NULL WHERE id = ?1",
                    &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, reason, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return sql_err(s, rc, "quarantine item");
    r = note_error(s, event_id, reason);
    if (r < 0)
        return r;
    return stream_refresh(s, stream_id);
}

typedef struct RowCheck {
    char state[16];
    char event_id[300], stream_id[129], source_ref[129], payload_hash[65], envelope_hash[65];
    int attempts;
    char *body; /* the verified body */
    size_t body_len;
    char *payload; /* the verified plaintext, when asked for */
    size_t payload_len;
    /* The row as read, until verified: */
    int64_t dek_id;
    bool sealed;
    uint8_t *env, *prow;
    size_t env_len, prow_len;
} RowCheck;

static void row_check_done(RowCheck *c)
{
    erase_and_free(c->body, c->body_len);
    erase_and_free(c->payload, c->payload_len);
    free(c->env);
    free(c->prow);
    c->body = c->payload = NULL;
    c->env = c->prow = NULL;
}

/* Reads row id's columns for verify_row (SQL only). */
static int read_row(Spool *s, int64_t id, RowCheck *c)
{
    _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_ROW);
    if (!st)
        return -EIO;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return lv_error_set(-ENOENT, "item %lld vanished", (long long)id);
    if (rc != SQLITE_ROW)
        return sql_err(s, rc, "read item");
    copy_col(st, 0, c->state, sizeof(c->state));
    copy_col(st, 1, c->event_id, sizeof(c->event_id));
    copy_col(st, 2, c->stream_id, sizeof(c->stream_id));
    copy_col(st, 3, c->source_ref, sizeof(c->source_ref));
    copy_col(st, 4, c->payload_hash, sizeof(c->payload_hash));
    copy_col(st, 5, c->envelope_hash, sizeof(c->envelope_hash));
    c->attempts = sqlite3_column_int(st, 9);
    c->dek_id = sqlite3_column_int64(st, 10);
    /* The row's DEK is unwrapped here, where SQL may run, so that
     * verify_row needs none. An unknown DEK fails verify_row instead. */
    unsigned slot;
    int lr = load_dek(s, c->dek_id, &slot);
    if (lr < 0 && lr != LV_ERR_CRYPTO)
        return lr;
    lv_error_clear();
    c->sealed = sqlite3_column_int(st, 6) != 0;
    c->env_len = (size_t)sqlite3_column_bytes(st, 7);
    c->prow_len = (size_t)sqlite3_column_bytes(st, 8);
    c->env = malloc(c->env_len + 1);
    c->prow = malloc(c->prow_len + 1);
    if (!c->env || !c->prow)
        return -ENOMEM;
    if (c->env_len)
        memcpy(c->env, sqlite3_column_blob(st, 7), c->env_len);
    if (c->prow_len)
        memcpy(c->prow, sqlite3_column_blob(st, 8), c->prow_len);
    return 0;
}

/* Proves that a row read by read_row is what this spool wrote: the payload
 * row decrypts under AAD binding this spool, stream, source_ref and envelope
 * hash (so the GCM tag authenticates the envelope hash), the stored body
 * hashes to that envelope hash, the plaintext hashes to payload_hash and the
 * body names the same item. LV_ERR_CRYPTO (detail = reason) when any of it
 * fails. No SQL: callable from any thread (the Token lends each its own
 * session). */
static int verify_row(Spool *s, bool want_payload, RowCheck *c)
{
    if (!is_lower_hex(c->envelope_hash, 64) || !is_lower_hex(c->payload_hash, 64))
        return lv_error_set(LV_ERR_CRYPTO, "row_format_invalid: stored hashes are malformed");
    char *body = NULL, *payload = NULL;
    size_t body_len = 0, payload_len = 0;
    int r;
    if (c->sealed) {
        r = unseal(s, "envelope", c->dek_id, c->stream_id, c->source_ref, c->envelope_hash, c->env,
                   c->env_len, &body, &body_len);
        if (r < 0)
            goto done;
    } else {
        body = malloc(c->env_len + 1);
        if (!body) {
            r = -ENOMEM;
            goto done;
        }
        if (c->env_len)
            memcpy(body, c->env, c->env_len);
        body[c->env_len] = '\0';
        body_len = c->env_len;
    }
    char h[65];
    lv_sha256_hex(body, body_len, h);
    if (!lv_memeq(h, c->envelope_hash, 64)) {
        r = lv_error_set(LV_ERR_CRYPTO,
                         "envelope_hash_mismatch: the stored envelope does not hash to the "
                         "item's envelope hash");
        goto done;
    }
    r = unseal(s, "payload", c->dek_id, c->stream_id, c->source_ref, c->envelope_hash, c->prow,
               c->prow_len, &payload, &payload_len);
    if (r < 0)
        goto done;
    lv_sha256_hex(payload, payload_len, h);
    if (!lv_memeq(h, c->payload_hash, 64)) {
        r = lv_error_set(LV_ERR_CRYPTO,
                         "payload_hash_mismatch: the payload does not hash to the item's "
                         "payload hash");
        goto done;
    }
    EnvelopeFields f;
    if (envelope_fields(body, body_len, &f) < 0 || strcmp(f.event_id, c->event_id) != 0 ||
        strcmp(f.stream_id, c->stream_id) != 0 || strcmp(f.source_ref, c->source_ref) != 0 ||
        strcmp(f.payload_hash, c->payload_hash) != 0) {
        r = lv_error_set(LV_ERR_CRYPTO,
                         "envelope_fields_mismatch: the envelope names another item");
        goto done;
    }
    c->body = TAKE_PTR(body);
    c->body_len = body_len;
    if (want_payload) {
        c->payload = TAKE_PTR(payload);
        c->payload_len = payload_len;
    }
    r = 0;
done:
    erase_and_free(body, body_len);
    erase_and_free(payload, payload_len);
    return r;
}

/* read_row and verify_row: the row's fields land in rc_out either way. */
static int check_row(Spool *s, int64_t id, bool want_payload, RowCheck *rc_out)
{
    int r = read_row(s, id, rc_out);
    if (r >= 0)
        r = verify_row(s, want_payload, rc_out);
    return r;
}

/* Expired leases (and, with owner, that owner's leases) back to queued. */
static int recover_locked(Spool *s, int64_t now_ms, const char *owner, size_t *ret_n)
{
    size_t n = 0, cap = 0;
    char **streams = NULL;
    int r = 0;
    {
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_EXPIRED);
        if (!st)
            return -EIO;
        sqlite3_bind_int64(st, 1, now_ms);
        if (owner)
            sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 2);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                char **ns = realloc(streams, ncap * sizeof(*ns));
                if (!ns) {
                    r = -ENOMEM;
                    break;
                }
                streams = ns;
                cap = ncap;
            }
            streams[n] = dup_col(st, 0);
            if (!streams[n]) {
                r = -ENOMEM;
                break;
            }
            n++;
        }
        if (r >= 0 && rc != SQLITE_DONE)
            r = sql_err(s, rc, "recover leases");
    }
    for (size_t i = 0; i < n && r >= 0; i++)
        r = stream_refresh(s, streams[i]);
    for (size_t i = 0; i < n; i++)
        free(streams[i]);
    free(streams);
    if (r >= 0 && ret_n)
        *ret_n = n;
    return r;
}

int spool_recover_expired(Spool *s, int64_t now_ms, size_t *ret_n)
{
    int r = begin(s);
    if (r < 0)
        return r;
    r = recover_locked(s, now_ms, NULL, ret_n);
    if (r >= 0)
        r = commit(s);
    if (r < 0)
        rollback(s);
    return r;
}

int spool_release_leases(Spool *s, const char *owner)
{
    if (!owner)
        return lv_error_set(LV_ERR_INPUT, "release: owner missing");
    int r = begin(s);
    if (r < 0)
        return r;
    /* now = 0: no lease has expired before the epoch; only owner's return. */
    r = recover_locked(s, 0, owner, NULL);
    if (r >= 0)
        r = commit(s);
    if (r < 0)
        rollback(s);
    return r;
}

int spool_lease_due(Spool *s, const char *owner, int64_t now_ms, int64_t lease_ms, size_t max,
                    SpoolLease **ret_leases, size_t *ret_n)
{
    if (!owner || !*owner || strlen(owner) > 128)
        return lv_error_set(LV_ERR_INPUT, "lease: owner must be 1-128 bytes");
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "lease: the spool was opened without the token");
    if (max > LEASE_MAX)
        max = LEASE_MAX;
    *ret_leases = NULL;
    *ret_n = 0;
    if (max == 0)
        return 0;
    SpoolLease *out = calloc(max, sizeof(*out));
    typedef struct Cand {
        char stream_id[129];
        int64_t head;
    } Cand;
    Cand *cand = calloc(max, sizeof(*cand));
    size_t n = 0;
    int r = (!out || !cand) ? -ENOMEM : begin(s);
    if (r < 0)
        goto done;
    r = recover_locked(s, now_ms, NULL, NULL);
    /* Each round leases what is due; a round that quarantined rows runs
     * again, so bad rows do not shrink a pass. Bounded: every quarantine
     * removes a row from the due set. */
    for (bool again = true; r >= 0 && again && n < max;) {
        again = false;
        size_t nc = 0;
        {
            _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_DUE);
            if (!st) {
                r = -EIO;
                break;
            }
            sqlite3_bind_int64(st, 1, now_ms);
            sqlite3_bind_int64(st, 2, (int64_t)(max - n));
            int rc;
            while ((rc = sqlite3_step(st)) == SQLITE_ROW && nc < max - n) {
                copy_col(st, 0, cand[nc].stream_id, sizeof(cand[nc].stream_id));
                cand[nc].head = sqlite3_column_int64(st, 1);
                nc++;
            }
            if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                r = sql_err(s, rc, "due streams");
        }
        for (size_t i = 0; i < nc && r >= 0; i++) {
            RowCheck c = {0};
            r = check_row(s, cand[i].head, false, &c);
            if (r == -ENOENT || (r >= 0 && strcmp(c.state, "queued") != 0)) {
                /* The stream table is behind the items; fix it, move on. */
                row_check_done(&c);
                lv_error_clear();
                r = stream_refresh(s, cand[i].stream_id);
                again = true;
                continue;
            }
            if (r == LV_ERR_CRYPTO) {
                r = quarantine(s, cand[i].head, cand[i].stream_id, c.event_id, lv_error());
                row_check_done(&c);
                again = true;
                continue;
            }
            if (r < 0) {
                row_check_done(&c);
                break;
            }
            _cleanup_reset_ sqlite3_stmt *up = stmt(s, ST_LEASE);
            if (!up) {
                row_check_done(&c);
                r = -EIO;
                break;
            }
            sqlite3_bind_int64(up, 1, cand[i].head);
            sqlite3_bind_text(up, 2, owner, -1, SQLITE_STATIC);
            sqlite3_bind_int64(up, 3, now_ms + lease_ms);
            int rc = sqlite3_step(up);
            if (rc != SQLITE_DONE) {
                row_check_done(&c);
                r = sql_err(s, rc, "lease item");
                break;
            }
            _cleanup_reset_ sqlite3_stmt *busy = stmt(s, ST_STREAM_BUSY);
            if (!busy) {
                row_check_done(&c);
                r = -EIO;
                break;
            }
            sqlite3_bind_text(busy, 1, cand[i].stream_id, -1, SQLITE_STATIC);
            rc = sqlite3_step(busy);
            if (rc != SQLITE_DONE) {
                row_check_done(&c);
                r = sql_err(s, rc, "mark stream busy");
                break;
            }
            SpoolLease *l = &out[n++];
            l->id = cand[i].head;
            snprintf(l->stream_id, sizeof(l->stream_id), "%s", c.stream_id);
            snprintf(l->event_id, sizeof(l->event_id), "%s", c.event_id);
            memcpy(l->envelope_hash, c.envelope_hash, sizeof(l->envelope_hash));
            l->body = TAKE_PTR(c.body);
            l->body_len = c.body_len;
            l->attempts = c.attempts;
            row_check_done(&c);
        }
    }
    if (r >= 0)
        r = commit(s);
    if (r < 0) {
        rollback(s);
        goto done;
    }
    *ret_leases = TAKE_PTR(out);
    *ret_n = n;
    n = 0;
done:
    spool_leases_free(out, n);
    free(cand);
    return r;
}

/* Leases one checked row for owner (check_row's result in c). */
static int lease_row(Spool *s, int64_t id, const char *owner, int64_t until, RowCheck *c,
                     SpoolLease *ret)
{
    _cleanup_reset_ sqlite3_stmt *up = stmt(s, ST_LEASE);
    if (!up)
        return -EIO;
    sqlite3_bind_int64(up, 1, id);
    sqlite3_bind_text(up, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(up, 3, until);
    int rc = sqlite3_step(up);
    if (rc != SQLITE_DONE)
        return sql_err(s, rc, "lease item");
    *ret =
        (SpoolLease){.id = id, .attempts = c->attempts, .body = c->body, .body_len = c->body_len};
    snprintf(ret->stream_id, sizeof(ret->stream_id), "%s", c->stream_id);
    snprintf(ret->event_id, sizeof(ret->event_id), "%s", c->event_id);
    memcpy(ret->envelope_hash, c->envelope_hash, sizeof(ret->envelope_hash));
    c->body = NULL;
    return 0;
}

/* One successor being leased: its row as read, then as verified. */
typedef struct NextRow {
    int64_t id;
    bool read;
    RowCheck c;
    int r;
    char reason[512]; /* verify_row's detail (thread-local where it ran) */
} NextRow;

typedef struct Verifier {
    Spool *s;
    NextRow *rows;
    size_t n;
    size_t next; /* the next row to take, shared (atomic) */
} Verifier;

static void verify_some(Verifier *v)
{
    for (;;) {
        size_t i = __atomic_fetch_add(&v->next, 1, __ATOMIC_RELAXED);
        if (i >= v->n)
            break;
        NextRow *x = &v->rows[i];
        if (!x->read)
            continue;
        x->r = verify_row(v->s, false, &x->c);
        if (x->r < 0)
            snprintf(x->reason, sizeof(x->reason), "%s", lv_error());
    }
}

static void *verifier_main(void *arg)
{
    verify_some(arg);
    return NULL;
}

/* Rows to verify before a second thread pays for itself. */
#define VERIFY_PARALLEL_MIN 4

int spool_lease_next_many(Spool *s, const char *owner, SpoolNext *req, size_t n, int64_t now_ms,
                          int64_t lease_ms)
{
    if (!owner || !*owner || strlen(owner) > 128)
        return lv_error_set(LV_ERR_INPUT, "lease: owner must be 1-128 bytes");
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "lease: the spool was opened without the token");
    for (size_t i = 0; i < n; i++)
        req[i].found = false;
    if (n == 0)
        return 0;
    NextRow *rows = calloc(n, sizeof(*rows));
    if (!rows)
        return -ENOMEM;
    size_t n_read = 0;
    int r = begin(s);
    if (r < 0)
        goto out;
    /* 1. SQL: which successors are due, and their rows. */
    for (size_t i = 0; i < n && r >= 0; i++) {
        {
            /* Only behind an item this owner still holds: its lease is
             * what keeps the stream to one sender. */
            _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_HELD);
            if (!st) {
                r = -EIO;
                break;
            }
            sqlite3_bind_int64(st, 1, req[i].after_id);
            sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
            int rc = sqlite3_step(st);
            if (rc == SQLITE_DONE)
                continue;
            if (rc != SQLITE_ROW) {
                r = sql_err(s, rc, "lease held");
                break;
            }
        }
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_NEXT);
        if (!st) {
            r = -EIO;
            break;
        }
        sqlite3_bind_text(st, 1, req[i].stream_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, req[i].after_id);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            continue;
        if (rc != SQLITE_ROW) {
            r = sql_err(s, rc, "next item");
            break;
        }
        int64_t id = sqlite3_column_int64(st, 0);
        bool queued = strcmp((const char *)sqlite3_column_text(st, 1), "queued") == 0;
        if (!queued || sqlite3_column_int64(st, 2) > now_ms)
            continue;
        stmt_resetp(&st);
        rows[i].id = id;
        r = read_row(s, id, &rows[i].c);
        if (r >= 0) {
            rows[i].read = true;
            n_read++;
        }
    }
    if (r < 0)
        goto done;
    /* 2. CPU: verify them (decryption on the token, hashes, the body's
     * fields), on two threads when there are enough: the lease's main cost,
     * and no SQL. */
    Verifier v = {.s = s, .rows = rows, .n = n};
    pthread_t th;
    bool helper =
        n_read >= VERIFY_PARALLEL_MIN && pthread_create(&th, NULL, verifier_main, &v) == 0;
    verify_some(&v);
    if (helper)
        pthread_join(th, NULL);
    /* 3. SQL: lease what verified; quarantine what did not (the stream goes
     * on behind it later, from its head). */
    for (size_t i = 0; i < n && r >= 0; i++) {
        NextRow *x = &rows[i];
        if (!x->read)
            continue;
        if (x->r == 0) {
            r = lease_row(s, x->id, owner, now_ms + lease_ms, &x->c, &req[i].lease);
            if (r >= 0)
                req[i].found = true;
        } else if (x->r == LV_ERR_CRYPTO) {
            r = quarantine(s, x->id, req[i].stream_id, x->c.event_id, x->reason);
        } else {
            r = lv_error_set(x->r, "%s", x->reason);
        }
    }
done:
    if (r >= 0)
        r = commit(s);
    if (r < 0) {
        rollback(s);
        for (size_t i = 0; i < n; i++)
            if (req[i].found) {
                erase_and_free(req[i].lease.body, req[i].lease.body_len);
                req[i].lease.body = NULL;
                req[i].found = false;
            }
    }
out:
    for (size_t i = 0; i < n; i++)
        row_check_done(&rows[i].c);
    free(rows);
    return r;
}

int spool_release_lease(Spool *s, int64_t id, const char *owner)
{
    if (!owner)
        return lv_error_set(LV_ERR_INPUT, "release: owner missing");
    int r = begin(s);
    if (r < 0)
        return r;
    char stream_id[129] = "";
    {
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_RELEASE_ONE);
        if (!st) {
            r = -EIO;
            goto done;
        }
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            copy_col(st, 0, stream_id, sizeof(stream_id));
            rc = sqlite3_step(st);
        }
        if (rc != SQLITE_DONE)
            r = sql_err(s, rc, "release lease");
    }
    /* Not held any more (expired and taken): nothing of ours to return. */
    if (r >= 0 && stream_id[0])
        r = stream_refresh(s, stream_id);
done:
    if (r >= 0)
        r = commit(s);
    if (r < 0)
        rollback(s);
    return r;
}

/* Runs one outcome update (a prepared statement with ?1 = id, ?2 = owner,
 * RETURNING stream_id, event_id) in its own transaction; -ESTALE when owner no longer
 * holds the lease (it expired and someone else took the item). */
typedef struct Outcome {
    int st;             /* ST_MARK_*: ?1 id, ?2 owner, ?3 i3, ?4 t4, ?5 i5, ?6 i6, ?7 now */
    const char *reason; /* for the spool's last error, or NULL */
    int64_t i3;
    const char *t4;
    int64_t i5, i6;
} Outcome;

/* Parameters a statement does not use bind with SQLITE_RANGE: ignored. */
static int apply_outcome(Spool *s, int64_t id, const char *owner, const Outcome *o,
                         char ret_state[16])
{
    if (!owner)
        return lv_error_set(LV_ERR_INPUT, "outcome: owner missing");
    int r = begin(s);
    if (r < 0)
        return r;
    char stream_id[129] = "", event_id[300] = "";
    {
        /* Prepared once per spool: parsing the SQL cost more than running
         * it, once per delivered item. */
        _cleanup_reset_ sqlite3_stmt *st = stmt(s, o->st);
        if (!st) {
            r = -EIO;
            goto done;
        }
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, o->i3);
        if (o->t4)
            sqlite3_bind_text(st, 4, o->t4, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 4);
        sqlite3_bind_int64(st, 5, o->i5);
        sqlite3_bind_int64(st, 6, o->i6);
        sqlite3_bind_int64(st, 7, lv_now_ms());
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            r = lv_error_set(-ESTALE, "item %lld: lease not held by %s (expired?)", (long long)id,
                             owner);
            goto done;
        }
        if (rc != SQLITE_ROW) {
            r = sql_err(s, rc, "record outcome");
            goto done;
        }
        copy_col(st, 0, stream_id, sizeof(stream_id));
        copy_col(st, 1, event_id, sizeof(event_id));
        if (ret_state)
            copy_col(st, 2, ret_state, 16);
        rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) {
            r = sql_err(s, rc, "record outcome");
            goto done;
        }
    }
    if (o->reason) {
        r = note_error(s, event_id, o->reason);
        if (r < 0)
            goto done;
    }
    r = stream_refresh(s, stream_id);
    if (r >= 0)
        r = commit(s);
done:
    if (r < 0)
        rollback(s);
    return r;
}

int spool_mark_receipted(Spool *s, int64_t id, const char *owner, const char *receipt_json)
{
    Outcome o = {
        .st = ST_MARK_RECEIPTED,
        .i3 = lv_now_ms(),
        .t4 = receipt_json,
    };
    return apply_outcome(s, id, owner, &o, NULL);
}

int spool_mark_retry(Spool *s, int64_t id, const char *owner, const char *reason,
                     int64_t next_attempt_ms, bool burn_attempt, bool *ret_dead)
{
    Outcome o = {
        .st = ST_MARK_RETRY,
        .reason = reason ? reason : "retry",
        .i3 = next_attempt_ms,
        .t4 = reason ? reason : "retry",
        .i5 = s->max_attempts,
        .i6 = burn_attempt ? 1 : 0,
    };
    char state[16] = "";
    int r = apply_outcome(s, id, owner, &o, state);
    if (r >= 0 && ret_dead)
        *ret_dead = strcmp(state, "dead_letter") == 0;
    return r;
}

int spool_mark_dead(Spool *s, int64_t id, const char *owner, const char *reason)
{
    Outcome o = {
        .st = ST_MARK_DEAD,
        .reason = reason ? reason : "dead_letter",
        .i3 = lv_now_ms(),
        .t4 = reason ? reason : "dead_letter",
    };
    return apply_outcome(s, id, owner, &o, NULL);
}

int64_t spool_backoff_ms(int attempts, int64_t retry_after_ms)
{
    if (attempts < 1)
        attempts = 1;
    int64_t ceiling = BACKOFF_BASE_MS;
    for (int i = 1; i < attempts && ceiling < BACKOFF_CAP_MS; i++)
        ceiling *= 2;
    if (ceiling > BACKOFF_CAP_MS)
        ceiling = BACKOFF_CAP_MS;
    uint64_t rnd = 0;
    if (lv_random(&rnd, sizeof(rnd)) < 0)
        rnd = (uint64_t)lv_mono_ms() * 2654435761u; /* jitter only; never a secret */
    int64_t d = (int64_t)(rnd % (uint64_t)(ceiling + 1));
    if (retry_after_ms > RETRY_AFTER_MAX_MS)
        retry_after_ms = RETRY_AFTER_MAX_MS;
    return d < retry_after_ms ? retry_after_ms : d;
}

/* ---------- status and the verbs' queries ---------- */

int spool_stats(Spool *s, SpoolStats *ret)
{
    SpoolStats out = {0};
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(s, "SELECT name, n FROM counts", &st);
    if (r < 0)
        return r;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        int64_t v = sqlite3_column_int64(st, 1);
        if (strcmp(name, "queued") == 0)
            out.queued = v;
        else if (strcmp(name, "relaying") == 0)
            out.relaying = v;
        else if (strcmp(name, "receipted") == 0)
            out.receipted = v;
        else if (strcmp(name, "dead_letter") == 0)
            out.dead_letter = v;
        else if (strcmp(name, "quarantined") == 0)
            out.quarantined = v;
        else if (strcmp(name, "conflicts") == 0)
            out.conflicts = v;
    }
    if (rc != SQLITE_DONE)
        return sql_err(s, rc, "counts");
    sqlite3_finalize(TAKE_PTR(st));
    r = prepare(s,
                "SELECT (SELECT enqueued_at FROM items WHERE state = 'queued' ORDER BY id"
                " LIMIT 1), (SELECT min(due_at) FROM streams WHERE due_at IS NOT NULL),"
                " (SELECT value FROM meta WHERE key = 'last_error'),"
                " (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'pause_until'),"
                " (SELECT value FROM meta WHERE key = 'pause_reason')",
                &st);
    if (r < 0)
        return r;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return sql_err(s, rc, "status");
    out.oldest_queued_ms = sqlite3_column_int64(st, 0);
    out.next_due_ms = sqlite3_column_int64(st, 1);
    copy_col(st, 2, out.last_error, sizeof(out.last_error));
    int64_t pause = sqlite3_column_int64(st, 3);
    if (pause > lv_now_ms()) {
        out.paused_until_ms = pause;
        copy_col(st, 4, out.pause_reason, sizeof(out.pause_reason));
    }
    *ret = out;
    return 0;
}

bool spool_valid_state(const char *state)
{
    static const char *const names[] = {"queued", "relaying", "receipted", "dead_letter",
                                        "quarantined"};
    for (size_t i = 0; state && i < ELEMENTSOF(names); i++)
        if (strcmp(state, names[i]) == 0)
            return true;
    return false;
}

void spool_item_info_done(SpoolItemInfo *it)
{
    if (!it)
        return;
    free(it->last_error);
    free(it->receipt);
    erase_and_free(it->envelope, it->envelope_len);
    it->last_error = it->receipt = it->envelope = NULL;
}

void spool_item_infos_free(SpoolItemInfo *it, size_t n)
{
    for (size_t i = 0; it && i < n; i++)
        spool_item_info_done(&it[i]);
    free(it);
}

#define INFO_COLS                                                                                  \
    "id, event_id, stream_id, source_ref, event_type, state, attempts, enqueued_at,"               \
    " next_attempt_at, last_attempt_at, lease_expires_at, receipted_at, lease_owner,"              \
    " envelope_hash, payload_hash, last_error, receipt, envelope_sealed"

static int read_info(sqlite3_stmt *st, SpoolItemInfo *it)
{
    *it = (SpoolItemInfo){0};
    it->id = sqlite3_column_int64(st, 0);
    copy_col(st, 1, it->event_id, sizeof(it->event_id));
    copy_col(st, 2, it->stream_id, sizeof(it->stream_id));
    copy_col(st, 3, it->source_ref, sizeof(it->source_ref));
    copy_col(st, 4, it->event_type, sizeof(it->event_type));
    copy_col(st, 5, it->state, sizeof(it->state));
    it->attempts = sqlite3_column_int(st, 6);
    it->enqueued_ms = sqlite3_column_int64(st, 7);
    it->next_attempt_ms = sqlite3_column_int64(st, 8);
    it->last_attempt_ms = sqlite3_column_int64(st, 9);
    it->lease_expires_ms = sqlite3_column_int64(st, 10);
    it->receipted_ms = sqlite3_column_int64(st, 11);
    copy_col(st, 12, it->lease_owner, sizeof(it->lease_owner));
    copy_col(st, 13, it->envelope_hash, sizeof(it->envelope_hash));
    copy_col(st, 14, it->payload_hash, sizeof(it->payload_hash));
    it->last_error = dup_col(st, 15);
    it->receipt = dup_col(st, 16);
    it->envelope_sealed = sqlite3_column_int(st, 17) != 0;
    return 0;
}

int spool_list(Spool *s, const char *state, const char *stream_id, int64_t after_id, size_t limit,
               SpoolItemInfo **ret, size_t *ret_n)
{
    if (state && !spool_valid_state(state))
        return lv_error_set(LV_ERR_INPUT, "--state: %s: must be one of " SPOOL_STATE_NAMES, state);
    /* Spelled out per filter so that a state filter walks the (state, id)
     * index instead of the whole table. */
    static const char *const sql[4] = {
        "SELECT " INFO_COLS " FROM items WHERE id > ?1 ORDER BY id LIMIT ?4",
        "SELECT " INFO_COLS " FROM items WHERE state = ?2 AND id > ?1 ORDER BY id LIMIT ?4",
        "SELECT " INFO_COLS " FROM items WHERE stream_id = ?3 AND id > ?1 ORDER BY id LIMIT ?4",
        "SELECT " INFO_COLS " FROM items WHERE state = ?2 AND stream_id = ?3 AND id > ?1"
        " ORDER BY id LIMIT ?4",
    };
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(s, sql[(state ? 1 : 0) + (stream_id ? 2 : 0)], &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, after_id);
    if (state)
        sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
    if (stream_id)
        sqlite3_bind_text(st, 3, stream_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, (int64_t)limit);
    SpoolItemInfo *out = calloc(limit ? limit : 1, sizeof(*out));
    if (!out)
        return -ENOMEM;
    size_t n = 0;
    int rc;
    while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW)
        read_info(st, &out[n++]);
    if (n < limit && rc != SQLITE_DONE) {
        spool_item_infos_free(out, n);
        return sql_err(s, rc, "list");
    }
    *ret = out;
    *ret_n = n;
    return 0;
}

static int item_conflicts(Spool *s, int64_t id, int64_t *ret)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = prepare(s, "SELECT count(*) FROM conflicts WHERE item_id = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW)
        return sql_err(s, sqlite3_errcode(s->db), "conflicts");
    *ret = sqlite3_column_int64(st, 0);
    return 0;
}

int spool_get(Spool *s, const char *event_id, SpoolItemInfo *ret)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r =
        prepare(s, "SELECT " INFO_COLS ", envelope, dek_id FROM items WHERE event_id = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return lv_error_set(LV_ERR_INPUT, "%s: no such item in the spool", event_id);
    if (rc != SQLITE_ROW)
        return sql_err(s, rc, "read item");
    SpoolItemInfo it;
    read_info(st, &it);
    const void *env = sqlite3_column_blob(st, 18);
    size_t env_len = (size_t)sqlite3_column_bytes(st, 18);
    if (!it.envelope_sealed) {
        it.envelope = malloc(env_len + 1);
        if (!it.envelope) {
            spool_item_info_done(&it);
            return -ENOMEM;
        }
        if (env_len)
            memcpy(it.envelope, env, env_len);
        it.envelope[env_len] = '\0';
        it.envelope_len = env_len;
    } else if (s->have_dek) {
        unsigned slot;
        r = load_dek(s, sqlite3_column_int64(st, 19), &slot);
        if (r >= 0 || r == LV_ERR_CRYPTO)
            r = unseal(s, "envelope", sqlite3_column_int64(st, 19), it.stream_id, it.source_ref,
                       it.envelope_hash, env, env_len, &it.envelope, &it.envelope_len);
        if (r < 0 && r != LV_ERR_CRYPTO) {
            spool_item_info_done(&it);
            return r;
        }
        /* A sealed envelope that fails shows as absent; --payload or the
         * drain quarantines the row. */
        lv_error_clear();
    }
    r = item_conflicts(s, it.id, &it.conflicts);
    if (r < 0) {
        spool_item_info_done(&it);
        return r;
    }
    *ret = it;
    return 0;
}

int spool_payload(Spool *s, const char *event_id, char **ret, size_t *ret_len)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "payload: the spool was opened without the token");
    int64_t id = 0;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        int r = prepare(s, "SELECT id FROM items WHERE event_id = ?1", &st);
        if (r < 0)
            return r;
        sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            return lv_error_set(LV_ERR_INPUT, "%s: no such item in the spool", event_id);
        if (rc != SQLITE_ROW)
            return sql_err(s, rc, "read item");
        id = sqlite3_column_int64(st, 0);
    }
    int r = begin(s);
    if (r < 0)
        return r;
    RowCheck c = {0};
    r = check_row(s, id, true, &c);
    if (r == LV_ERR_CRYPTO) {
        char reason[512];
        snprintf(reason, sizeof(reason), "%s", lv_error());
        /* A row that could still be relayed is taken out of the flow; a
         * receipted one keeps its state (it was delivered intact). */
        if (strcmp(c.state, "queued") == 0 || strcmp(c.state, "relaying") == 0 ||
            strcmp(c.state, "dead_letter") == 0) {
            r = quarantine(s, id, c.stream_id, c.event_id, reason);
            if (r >= 0)
                r = commit(s);
            if (r >= 0)
                r = lv_error_set(LV_ERR_CRYPTO, "%s: quarantined: %s", event_id, reason);
        } else {
            r = lv_error_set(LV_ERR_CRYPTO, "%s (%s): %s", event_id, c.state, reason);
        }
    } else if (r >= 0) {
        r = commit(s);
    }
    if (r < 0) {
        rollback(s);
        row_check_done(&c);
        return r;
    }
    *ret = TAKE_PTR(c.payload);
    *ret_len = c.payload_len;
    row_check_done(&c);
    return 0;
}

int spool_requeue(Spool *s, const char *event_id, size_t *ret_n)
{
    int r = begin(s);
    if (r < 0)
        return r;
    size_t n = 0;
    int64_t now = lv_now_ms();
    if (event_id) {
        char stream_id[129] = "";
        {
            _cleanup_reset_ sqlite3_stmt *st = stmt(s, ST_REQUEUE_ONE);
            if (!st) {
                r = -EIO;
                goto done;
            }
            sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, now);
            int rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) {
                copy_col(st, 0, stream_id, sizeof(stream_id));
                n = 1;
                rc = sqlite3_step(st);
            }
            if (rc != SQLITE_DONE) {
                r = sql_err(s, rc, "requeue");
                goto done;
            }
        }
        if (n == 0) {
            SpoolItemInfo it;
            r = spool_get(s, event_id, &it);
            if (r >= 0) {
                r = lv_error_set(LV_ERR_INPUT,
                                 "%s: in state %s; only dead_letter items can be requeued",
                                 event_id, it.state);
                spool_item_info_done(&it);
            }
            goto done;
        }
        r = stream_refresh(s, stream_id);
    } else {
        /* Streams first (few), then one UPDATE for all items. */
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(s, "SELECT DISTINCT stream_id FROM items WHERE state = 'dead_letter'", &st);
        if (r < 0)
            goto done;
        char **streams = NULL;
        size_t ns = 0, cap = 0;
        int rc;
        while (r >= 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            if (ns == cap) {
                cap = cap ? cap * 2 : 16;
                char **nv = realloc(streams, cap * sizeof(*nv));
                if (!nv) {
                    r = -ENOMEM;
                    break;
                }
                streams = nv;
            }
            streams[ns] = dup_col(st, 0);
            if (!streams[ns])
                r = -ENOMEM;
            else
                ns++;
        }
        if (r >= 0 && rc != SQLITE_DONE)
            r = sql_err(s, rc, "requeue");
        if (r >= 0) {
            _cleanup_finalize_ sqlite3_stmt *up = NULL;
            r = prepare(s,
                        "UPDATE items SET state = 'queued', attempts = 0, next_attempt_at = ?1"
                        " WHERE state = 'dead_letter'",
                        &up);
            if (r >= 0) {
                sqlite3_bind_int64(up, 1, now);
                rc = sqlite3_step(up);
                if (rc != SQLITE_DONE)
                    r = sql_err(s, rc, "requeue");
                n = (size_t)sqlite3_changes(s->db);
            }
        }
        for (size_t i = 0; i < ns && r >= 0; i++)
            r = stream_refresh(s, streams[i]);
        for (size_t i = 0; i < ns; i++)
            free(streams[i]);
        free(streams);
    }
    if (r >= 0)
        r = commit(s);
done:
    if (r < 0) {
        rollback(s);
        return r;
    }
    if (ret_n)
        *ret_n = n;
    return 0;
}

int spool_purge(Spool *s, int64_t before_ms, size_t *ret_n)
{
    int r = begin(s);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = prepare(s, "DELETE FROM items WHERE state = 'receipted' AND receipted_at < ?1", &st);
    if (r >= 0) {
        sqlite3_bind_int64(st, 1, before_ms);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            r = sql_err(s, rc, "purge");
    }
    size_t n = r >= 0 ? (size_t)sqlite3_changes(s->db) : 0;
    if (r >= 0)
        r = commit(s);
    if (r < 0) {
        rollback(s);
        return r;
    }
    if (ret_n)
        *ret_n = n;
    return 0;
}

int spool_set_pause(Spool *s, int64_t until_ms, const char *reason)
{
    char v[32];
    int n = snprintf(v, sizeof(v), "%lld", (long long)(until_ms > 0 ? until_ms : 0));
    const char *why = until_ms > 0 && reason ? reason : "";
    int r = begin(s);
    if (r < 0)
        return r;
    r = meta_set(s, "pause_until", v, (size_t)n, true);
    if (r >= 0)
        r = meta_set(s, "pause_reason", why, strlen(why), true);
    if (r >= 0)
        r = commit(s);
    if (r < 0)
        rollback(s);
    return r;
}

int spool_schema_version(void)
{
    return SCHEMA_VERSION;
}

/* ---------- key rotation ---------- */

int spool_rotate_dek(Spool *s, int64_t *ret_id)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "rotate: the spool was opened without the token");
    int r = begin(s);
    if (r < 0)
        return r;
    int64_t next = 0;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(s, "SELECT coalesce(max(id), 0) + 1, count(*) FROM deks", &st);
        if (r >= 0 && sqlite3_step(st) != SQLITE_ROW)
            r = sql_err(s, sqlite3_errcode(s->db), "read DEKs");
        if (r >= 0) {
            next = sqlite3_column_int64(st, 0);
            /* Every DEK rows still name must fit the token's slots. */
            if (sqlite3_column_int64(st, 1) >= TOKEN_DEK_SLOTS)
                r = lv_error_set(LV_ERR_INPUT,
                                 "spool %s: %lld data keys in use; run `spool rekey` first so "
                                 "that the old ones retire",
                                 s->path, (long long)sqlite3_column_int64(st, 1));
        }
    }
    if (r >= 0)
        r = new_dek(s, next);
    if (r >= 0)
        r = commit(s);
    if (r < 0) {
        rollback(s);
        return r;
    }
    s->cur_dek = next;
    unsigned slot;
    r = load_dek(s, next, &slot);
    if (r < 0)
        return r;
    if (ret_id)
        *ret_id = next;
    return 0;
}

int spool_dek_list(Spool *s, SpoolDek **ret, size_t *ret_n)
{
    *ret = NULL;
    *ret_n = 0;
    int64_t cur = 0;
    int r = read_current_dek(s, &cur);
    if (r < 0 && r != -ENOENT)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = prepare(s,
                "SELECT d.id, d.created_at, (SELECT count(*) FROM items i WHERE i.dek_id = d.id)"
                " FROM deks d ORDER BY d.id",
                &st);
    if (r < 0)
        return r;
    SpoolDek *v = NULL;
    size_t n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        SpoolDek *nv = realloc(v, (n + 1) * sizeof(*v));
        if (!nv) {
            free(v);
            return -ENOMEM;
        }
        v = nv;
        v[n] = (SpoolDek){.id = sqlite3_column_int64(st, 0),
                          .created_ms = sqlite3_column_int64(st, 1),
                          .rows = sqlite3_column_int64(st, 2)};
        v[n].current = v[n].id == cur;
        n++;
    }
    if (rc != SQLITE_DONE) {
        free(v);
        return sql_err(s, rc, "list DEKs");
    }
    *ret = v;
    *ret_n = n;
    return 0;
}

/* Re-seals one row's payload (and sealed envelope) under the current DEK.
 * LV_ERR_CRYPTO when the row does not open under its own DEK. */
static int rekey_row(Spool *s, sqlite3_stmt *row)
{
    int64_t id = sqlite3_column_int64(row, 0);
    char stream_id[129], source_ref[129], envelope_hash[65];
    copy_col(row, 1, stream_id, sizeof(stream_id));
    copy_col(row, 2, source_ref, sizeof(source_ref));
    copy_col(row, 3, envelope_hash, sizeof(envelope_hash));
    bool sealed = sqlite3_column_int(row, 4) != 0;
    int64_t dek_id = sqlite3_column_int64(row, 7);
    char *payload = NULL, *env = NULL;
    size_t payload_len = 0, env_len = 0;
    uint8_t *prow = NULL, *erow = NULL;
    size_t prow_len = 0, erow_len = 0;
    unsigned slot;
    int r = load_dek(s, dek_id, &slot);
    if (r == LV_ERR_CRYPTO)
        lv_error_clear();
    if (r >= 0 || r == LV_ERR_CRYPTO)
        r = unseal(s, "payload", dek_id, stream_id, source_ref, envelope_hash,
                   sqlite3_column_blob(row, 6), (size_t)sqlite3_column_bytes(row, 6), &payload,
                   &payload_len);
    if (r >= 0 && sealed)
        r = unseal(s, "envelope", dek_id, stream_id, source_ref, envelope_hash,
                   sqlite3_column_blob(row, 5), (size_t)sqlite3_column_bytes(row, 5), &env,
                   &env_len);
    if (r >= 0)
        r = seal(s, "payload", stream_id, source_ref, envelope_hash, payload, payload_len, &prow,
                 &prow_len);
    if (r >= 0 && sealed)
        r = seal(s, "envelope", stream_id, source_ref, envelope_hash, env, env_len, &erow,
                 &erow_len);
    if (r >= 0) {
        _cleanup_finalize_ sqlite3_stmt *up = NULL;
        r = prepare(s,
                    "UPDATE items SET payload = ?2, envelope = CASE WHEN ?3 IS NULL THEN envelope"
                    " ELSE ?3 END, dek_id = ?4 WHERE id = ?1 AND dek_id = ?5",
                    &up);
        if (r >= 0) {
            sqlite3_bind_int64(up, 1, id);
            sqlite3_bind_blob(up, 2, prow, (int)prow_len, SQLITE_STATIC);
            if (erow)
                sqlite3_bind_blob(up, 3, erow, (int)erow_len, SQLITE_STATIC);
            else
                sqlite3_bind_null(up, 3);
            sqlite3_bind_int64(up, 4, s->cur_dek);
            sqlite3_bind_int64(up, 5, dek_id);
            int rc = sqlite3_step(up);
            if (rc != SQLITE_DONE)
                r = sql_err(s, rc, "re-seal item");
        }
    }
    erase_and_free(payload, payload_len);
    erase_and_free(env, env_len);
    free(prow);
    free(erow);
    return r;
}

int spool_rekey(Spool *s, size_t batch, spool_progress_fn progress, void *userdata,
                SpoolRekeyResult *ret)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "rekey: the spool was opened without the token");
    if (batch == 0)
        batch = SPOOL_BATCH_GROUP;
    SpoolRekeyResult res = {0};
    int r = refresh_current_dek(s);
    if (r < 0)
        return r;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(s, "SELECT count(*) FROM items WHERE dek_id <> ?1", &st);
        if (r < 0)
            return r;
        sqlite3_bind_int64(st, 1, s->cur_dek);
        if (sqlite3_step(st) != SQLITE_ROW)
            return sql_err(s, sqlite3_errcode(s->db), "count rows to rekey");
        res.total = sqlite3_column_int64(st, 0);
    }
    if (progress)
        progress(userdata, 0, res.total);
    /* Batches in id order, each its own transaction: a rekey stopped half
     * way leaves every row readable under its own DEK and goes on where it
     * was when run again. Rows that do not open are left as they are (and
     * keep their DEK); the drain or `show --payload` quarantines them. */
    int64_t after = 0;
    for (;;) {
        r = begin(s);
        if (r < 0)
            return r;
        r = refresh_current_dek(s);
        size_t got = 0;
        if (r >= 0) {
            _cleanup_finalize_ sqlite3_stmt *st = NULL;
            r = prepare(s,
                        "SELECT id, stream_id, source_ref, envelope_hash, envelope_sealed,"
                        " envelope, payload, dek_id FROM items WHERE dek_id <> ?1 AND id > ?2"
                        " ORDER BY id LIMIT ?3",
                        &st);
            if (r >= 0) {
                sqlite3_bind_int64(st, 1, s->cur_dek);
                sqlite3_bind_int64(st, 2, after);
                sqlite3_bind_int64(st, 3, (int64_t)batch);
            }
            int rc = SQLITE_DONE;
            while (r >= 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
                got++;
                after = sqlite3_column_int64(st, 0);
                r = rekey_row(s, st);
                if (r == LV_ERR_CRYPTO) {
                    res.unreadable++;
                    lv_error_clear();
                    r = 0;
                } else if (r >= 0)
                    res.rekeyed++;
            }
            if (r >= 0 && rc != SQLITE_DONE && rc != SQLITE_ROW)
                r = sql_err(s, rc, "read rows to rekey");
        }
        if (r >= 0)
            r = commit(s);
        if (r < 0) {
            rollback(s);
            return r;
        }
        if (progress)
            progress(userdata, res.rekeyed + res.unreadable, res.total);
        if (got < batch)
            break;
    }
    /* DEKs no row names any more retire: their wrapped blobs are deleted
     * and their session keys destroyed. */
    r = begin(s);
    if (r < 0)
        return r;
    int64_t retired[TOKEN_DEK_SLOTS * 4];
    size_t n_retired = 0;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(s,
                    "DELETE FROM deks WHERE id <> ?1 AND NOT EXISTS"
                    " (SELECT 1 FROM items WHERE items.dek_id = deks.id) RETURNING id",
                    &st);
        if (r >= 0) {
            sqlite3_bind_int64(st, 1, s->cur_dek);
            int rc;
            while ((rc = sqlite3_step(st)) == SQLITE_ROW)
                if (n_retired < ELEMENTSOF(retired))
                    retired[n_retired++] = sqlite3_column_int64(st, 0);
            if (rc != SQLITE_DONE)
                r = sql_err(s, rc, "retire DEKs");
        }
    }
    if (r >= 0)
        r = commit(s);
    if (r < 0) {
        rollback(s);
        return r;
    }
    for (size_t i = 0; i < n_retired; i++)
        for (unsigned k = 0; k < TOKEN_DEK_SLOTS; k++)
            if (s->slot_dek[k] == retired[i]) {
                token_dek_unload_slot(s->tok, k);
                s->slot_dek[k] = 0;
            }
    res.retired_deks = (int64_t)n_retired;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = prepare(s, "SELECT count(*) FROM deks", &st);
        if (r < 0)
            return r;
        if (sqlite3_step(st) != SQLITE_ROW)
            return sql_err(s, sqlite3_errcode(s->db), "count DEKs");
        res.deks_left = sqlite3_column_int64(st, 0);
    }
    if (ret)
        *ret = res;
    return 0;
}

int spool_rewrap_kek(Spool *s, const char *new_kek_uri, size_t *ret_n)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "rewrap: the spool was opened without the token");
    int r = begin(s);
    if (r < 0)
        return r;
    size_t n = 0;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL, *up = NULL;
        r = prepare(s, "SELECT id, wrapped FROM deks ORDER BY id", &st);
        if (r >= 0)
            r = prepare(s, "UPDATE deks SET wrapped = ?2 WHERE id = ?1", &up);
        int rc = SQLITE_DONE;
        while (r >= 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
            uint8_t blob[TOKEN_WRAPPED_DEK_LEN];
            r = token_dek_rewrap(s->tok, new_kek_uri, sqlite3_column_blob(st, 1),
                                 (size_t)sqlite3_column_bytes(st, 1), blob);
            if (r < 0)
                break;
            sqlite3_reset(up);
            sqlite3_bind_int64(up, 1, sqlite3_column_int64(st, 0));
            sqlite3_bind_blob(up, 2, blob, sizeof(blob), SQLITE_TRANSIENT);
            int urc = sqlite3_step(up);
            if (urc != SQLITE_DONE)
                r = sql_err(s, urc, "store rewrapped DEK");
            n++;
        }
        if (r >= 0 && rc != SQLITE_DONE && rc != SQLITE_ROW)
            r = sql_err(s, rc, "read DEKs");
    }
    /* All or nothing: a DEK left under the old KEK beside others under the
     * new one would make the spool unreadable with either. */
    if (r >= 0)
        r = commit(s);
    if (r < 0) {
        rollback(s);
        return r;
    }
    if (ret_n)
        *ret_n = n;
    return 0;
}

int spool_signing_keys(const char *path, SpoolKey **ret, size_t *ret_n)
{
    *ret = NULL;
    *ret_n = 0;
    if (access(path, F_OK) < 0 && errno == ENOENT)
        return -ENOENT;
    sqlite3 *db = NULL;
    /* Read-only and never created: public-key must not make files. */
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOFOLLOW, NULL);
    if (rc != SQLITE_OK) {
        int r = lv_error_set(-EIO, "spool %s: cannot open read-only to list its signing keys: %s",
                             path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close_v2(db);
        return r;
    }
    sqlite3_busy_timeout(db, 10000);
    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(db,
                            "SELECT kid, public_key, first_used_at, last_used_at FROM signing_keys"
                            " ORDER BY first_used_at, kid",
                            -1, &st, NULL);
    if (rc != SQLITE_OK) {
        /* A spool from before key rotation has no history; anything else
         * (unreadable, not a database) is said. */
        bool no_table = strstr(sqlite3_errmsg(db), "no such table") != NULL;
        int r = no_table ? 0
                         : lv_error_set(-EIO, "spool %s: cannot read its signing keys: %s", path,
                                        sqlite3_errmsg(db));
        sqlite3_close_v2(db);
        return r;
    }
    SpoolKey *v = NULL;
    size_t n = 0;
    int r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *kid = sqlite3_column_text(st, 0);
        if (!kid || !lv_valid_id((const char *)kid) || sqlite3_column_bytes(st, 1) != 32)
            continue;
        SpoolKey *nv = realloc(v, (n + 1) * sizeof(*v));
        if (!nv) {
            r = -ENOMEM;
            break;
        }
        v = nv;
        memset(&v[n], 0, sizeof(v[n]));
        snprintf(v[n].kid, sizeof(v[n].kid), "%s", (const char *)kid);
        memcpy(v[n].pk, sqlite3_column_blob(st, 1), 32);
        v[n].first_used_ms = sqlite3_column_int64(st, 2);
        v[n].last_used_ms = sqlite3_column_int64(st, 3);
        n++;
    }
    if (r >= 0 && rc != SQLITE_DONE)
        r = lv_error_set(-EIO, "spool %s: reading signing keys: %s", path, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    sqlite3_close_v2(db);
    if (r < 0) {
        free(v);
        return r;
    }
    *ret = v;
    *ret_n = n;
    return 0;
}
