/* SPDX-License-Identifier: Apache-2.0 */
/* The checkpoint witness: its SQLite state, the decision table of DESIGN §7,
 * the signed statements and their offline verification. */
#include "witness.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include "canon.h"
#include "lv.h"
#include "pubkey.h"

/* "LVWI": marks the file as a witness database, so that a spool database (or
 * any other SQLite file) given as --witness-db is refused, not reused. */
#define WITNESS_APPLICATION_ID 0x4C565749
#define BUSY_TIMEOUT_MS        10000
#define DETECTED_BY            "local_vault_witness"
#define FORK_RESULT            "verifier_rejects_ambiguous_history"

enum {
    Q_HEAD,
    Q_CHECKPOINT,
    Q_INSERT_CHECKPOINT,
    Q_INSERT_HEAD,
    Q_ADVANCE_HEAD,
    Q_FIND_FORK,
    Q_INSERT_FORK,
    _Q_MAX,
};

static const char *const queries[_Q_MAX] = {
    [Q_HEAD] = "SELECT seq FROM heads WHERE witness_id=?1 AND tenant_id=?2 AND stream_id=?3",
    [Q_CHECKPOINT] = "SELECT checkpoint_id, checkpoint_hash, previous_hash, witnessed_at, "
                     "statement_hash, receipt FROM checkpoints "
                     "WHERE witness_id=?1 AND tenant_id=?2 AND stream_id=?3 AND seq=?4",
    [Q_INSERT_CHECKPOINT] =
        "INSERT INTO checkpoints (witness_id, tenant_id, stream_id, seq, checkpoint_id, "
        "checkpoint_hash, previous_hash, witnessed_at, statement_hash, receipt) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    [Q_INSERT_HEAD] = "INSERT INTO heads (witness_id, tenant_id, stream_id, seq) "
                      "VALUES (?1, ?2, ?3, ?4)",
    [Q_ADVANCE_HEAD] = "UPDATE heads SET seq=?4 "
                       "WHERE witness_id=?1 AND tenant_id=?2 AND stream_id=?3",
    [Q_FIND_FORK] = "SELECT document FROM fork_evidence "
                    "WHERE witness_id=?1 AND tenant_id=?2 AND stream_id=?3 AND evidence_key=?4",
    [Q_INSERT_FORK] =
        "INSERT INTO fork_evidence (witness_id, tenant_id, stream_id, reason, submitted_seq, "
        "submitted_hash, accepted_seq, accepted_hash, evidence_key, detected_at, "
        "statement_hash, document) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
};

/* Schema 1. The triggers repeat the witness's promises inside the database so
 * that no bug above it can break them silently: history is append-only, a
 * head only ever advances by one onto a stored checkpoint, evidence is kept. */
static const char schema_v1[] =
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE checkpoints ("
    " witness_id TEXT NOT NULL, tenant_id TEXT NOT NULL, stream_id TEXT NOT NULL,"
    " seq INTEGER NOT NULL CHECK (seq BETWEEN 0 AND 9007199254740991),"
    " checkpoint_id TEXT NOT NULL,"
    " checkpoint_hash TEXT NOT NULL CHECK (length(checkpoint_hash) = 64),"
    " previous_hash TEXT CHECK (previous_hash IS NULL OR length(previous_hash) = 64),"
    " witnessed_at TEXT NOT NULL,"
    " statement_hash TEXT NOT NULL CHECK (length(statement_hash) = 64),"
    " receipt TEXT NOT NULL,"
    " PRIMARY KEY (witness_id, tenant_id, stream_id, seq)) WITHOUT ROWID;"
    "CREATE TABLE heads ("
    " witness_id TEXT NOT NULL, tenant_id TEXT NOT NULL, stream_id TEXT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " PRIMARY KEY (witness_id, tenant_id, stream_id)) WITHOUT ROWID;"
    "CREATE TABLE fork_evidence ("
    " id INTEGER PRIMARY KEY,"
    " witness_id TEXT NOT NULL, tenant_id TEXT NOT NULL, stream_id TEXT NOT NULL,"
    " reason TEXT NOT NULL CHECK (reason IN"
    "  ('conflicting_checkpoint', 'stale_checkpoint', 'divergent_history')),"
    " submitted_seq INTEGER NOT NULL, submitted_hash TEXT NOT NULL,"
    " accepted_seq INTEGER NOT NULL, accepted_hash TEXT NOT NULL,"
    " evidence_key TEXT NOT NULL, detected_at TEXT NOT NULL,"
    " statement_hash TEXT NOT NULL, document TEXT NOT NULL,"
    " UNIQUE (witness_id, tenant_id, stream_id, evidence_key));"
    "CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints"
    " BEGIN SELECT RAISE(ABORT, 'witnessed checkpoints are append-only'); END;"
    "CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints"
    " BEGIN SELECT RAISE(ABORT, 'witnessed checkpoints are append-only'); END;"
    "CREATE TRIGGER heads_need_checkpoint BEFORE INSERT ON heads"
    " WHEN NOT EXISTS (SELECT 1 FROM checkpoints WHERE witness_id = NEW.witness_id"
    "  AND tenant_id = NEW.tenant_id AND stream_id = NEW.stream_id AND seq = NEW.seq)"
    " BEGIN SELECT RAISE(ABORT, 'a head must name a witnessed checkpoint'); END;"
    "CREATE TRIGGER heads_advance_by_one BEFORE UPDATE ON heads"
    " WHEN NEW.seq IS NOT OLD.seq + 1 OR NEW.witness_id IS NOT OLD.witness_id"
    "  OR NEW.tenant_id IS NOT OLD.tenant_id OR NEW.stream_id IS NOT OLD.stream_id"
    "  OR NOT EXISTS (SELECT 1 FROM checkpoints WHERE witness_id = NEW.witness_id"
    "  AND tenant_id = NEW.tenant_id AND stream_id = NEW.stream_id AND seq = NEW.seq)"
    " BEGIN SELECT RAISE(ABORT, 'a witness head only advances by one'); END;"
    "CREATE TRIGGER heads_no_delete BEFORE DELETE ON heads"
    " BEGIN SELECT RAISE(ABORT, 'witness heads are never removed'); END;"
    "CREATE TRIGGER fork_evidence_no_update BEFORE UPDATE ON fork_evidence"
    " BEGIN SELECT RAISE(ABORT, 'fork evidence is append-only'); END;"
    "CREATE TRIGGER fork_evidence_no_delete BEFORE DELETE ON fork_evidence"
    " BEGIN SELECT RAISE(ABORT, 'fork evidence is append-only'); END;";

typedef struct Verifier Verifier;
static void verifier_free(Verifier *v);

struct Witness {
    sqlite3 *db;
    sqlite3_stmt *stmts[_Q_MAX];
    char *path;
    bool readonly;
    /* public_key_json(): the last key's "public_key" member. */
    char *pk_json;
    uint8_t pk_json_pk[TOKEN_ED25519_PK_LEN];
    char pk_json_kid[TOKEN_KID_MAX];
    Verifier *verifier; /* started by the first pipelined batch */
};

/* A stored checkpoint row, validated on the way out of SQLite. */
typedef struct Row {
    int64_t seq;
    char checkpoint_id[129];
    char hash[WITNESS_HASH_HEX_LEN + 1];
    char prev[WITNESS_HASH_HEX_LEN + 1];
    bool has_prev;
    char witnessed_at[32];
    char statement_hash[WITNESS_HASH_HEX_LEN + 1];
    char *receipt; /* malloc'd */
} Row;

static void row_done(Row *r)
{
    free(r->receipt);
    r->receipt = NULL;
}

static void cjson_deletep(cJSON **p)
{
    cJSON_Delete(*p);
}
#define _cleanup_cjson_ _cleanup_(cjson_deletep)

/* ---- names ---------------------------------------------------------------------------------- */

const char *witness_result_name(WitnessResult r)
{
    static const char *const names[_WITNESS_RESULT_MAX] = {
        [WITNESS_ACCEPTED] = "accepted",
        [WITNESS_REPLAYED] = "replayed",
        [WITNESS_FORK] = "fork_evidence",
        [WITNESS_GAP] = "checkpoint_gap",
    };
    return r >= 0 && r < _WITNESS_RESULT_MAX ? names[r] : "";
}

const char *witness_reason_name(WitnessReason r)
{
    static const char *const names[_WITNESS_REASON_MAX] = {
        [WITNESS_REASON_NONE] = "",
        [WITNESS_REASON_CONFLICTING] = "conflicting_checkpoint",
        [WITNESS_REASON_STALE] = "stale_checkpoint",
        [WITNESS_REASON_DIVERGENT] = "divergent_history",
    };
    return r >= 0 && r < _WITNESS_REASON_MAX ? names[r] : "";
}

void witness_outcome_done(WitnessOutcome *o)
{
    if (!o)
        return;
    free(o->document);
    o->document = NULL;
    o->document_len = 0;
}

/* ---- database ------------------------------------------------------------------------------- */

static int db_error(Witness *w, int rc, const char *what)
{
    int r;
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        r = -EBUSY;
        break;
    case SQLITE_FULL:
        r = -ENOSPC;
        break;
    case SQLITE_READONLY:
    case SQLITE_PERM:
        r = -EROFS;
        break;
    case SQLITE_NOMEM:
        r = -ENOMEM;
        break;
    default:
        r = -EIO;
    }
    return lv_error_set(r, "witness database %s: %s: %s", w->path, what,
                        w->db ? sqlite3_errmsg(w->db) : sqlite3_errstr(rc));
}

static int exec(Witness *w, const char *sql)
{
    int rc = sqlite3_exec(w->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_error(w, rc, sql);
}

static sqlite3_stmt *stmt(Witness *w, int q)
{
    if (!w->stmts[q] && sqlite3_prepare_v3(w->db, queries[q], -1, SQLITE_PREPARE_PERSISTENT,
                                           &w->stmts[q], NULL) != SQLITE_OK)
        return NULL;
    sqlite3_reset(w->stmts[q]);
    sqlite3_clear_bindings(w->stmts[q]);
    return w->stmts[q];
}

static int pragma_int(Witness *w, const char *sql, int64_t *ret)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(w->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK)
        return db_error(w, rc, sql);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *ret = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return rc == SQLITE_ROW ? 0 : db_error(w, rc, sql);
}

/* Creates the file with mode 0600 before SQLite sees it (SQLite gives the
 * -wal and -shm files the mode of the main file), and refuses an existing
 * file that others could rewrite: the witness's history is its whole value. */
static int prepare_file(const char *path, bool readonly)
{
    int flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW;
    if (!readonly)
        flags = O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW;
    _cleanup_close_ int fd = open(path, flags, 0600);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT && readonly)
            return lv_error_set(-ENOENT,
                                "witness database %s: does not exist (nothing witnessed "
                                "yet?)",
                                path);
        /* -EACCES is the PIN class (exit 5); a database the service user
         * may not open is a file problem (exit 1). */
        return lv_error_set(e == EACCES ? -EPERM : -e, "witness database %s: %s", path,
                            strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        return lv_error_set(-errno, "witness database %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return lv_error_set(LV_ERR_INPUT, "witness database %s: not a regular file", path);
    if (st.st_mode & (S_IWGRP | S_IWOTH))
        return lv_error_set(-EPERM,
                            "witness database %s: writable by group or others (mode %04o); "
                            "chmod 0600 it",
                            path, (unsigned)(st.st_mode & 07777));
    return 0;
}

static int migrate(Witness *w)
{
    int r = exec(w, "BEGIN IMMEDIATE");
    if (r < 0)
        return r;
    int64_t version = 0, app = 0, tables = 0;
    if ((r = pragma_int(w, "PRAGMA user_version", &version)) < 0 ||
        (r = pragma_int(w, "PRAGMA application_id", &app)) < 0 ||
        (r = pragma_int(w, "SELECT count(*) FROM sqlite_schema", &tables)) < 0)
        goto done;
    if (version == 0 && app == 0 && tables == 0) {
        char sql[256];
        if ((r = exec(w, schema_v1)) < 0)
            goto done;
        char now[32];
        lv_format_time(lv_now_ms(), now);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO meta VALUES ('created_at', '%s');"
                 "PRAGMA application_id = %d; PRAGMA user_version = %d;",
                 now, WITNESS_APPLICATION_ID, WITNESS_SCHEMA_VERSION);
        if ((r = exec(w, sql)) < 0)
            goto done;
        r = exec(w, "COMMIT");
        return r;
    }
    if (app != WITNESS_APPLICATION_ID) {
        r = lv_error_set(LV_ERR_INPUT,
                         "witness database %s: not a witness database (another "
                         "SQLite file, e.g. the spool?)",
                         w->path);
        goto done;
    }
    if (version > WITNESS_SCHEMA_VERSION) {
        r = lv_error_set(-EPROTO,
                         "witness database %s: schema version %" PRId64
                         " is newer than this program's %d; upgrade the program",
                         w->path, version, WITNESS_SCHEMA_VERSION);
        goto done;
    }
    if (version < 1) {
        r = lv_error_set(-EPROTO, "witness database %s: schema version %" PRId64 " unknown",
                         w->path, version);
        goto done;
    }
    /* Version 1 is the only one so far; later versions migrate forward here,
     * one step per version, inside this transaction. */
    return exec(w, "COMMIT");
done:
    sqlite3_exec(w->db, "ROLLBACK", NULL, NULL, NULL);
    return r;
}

static int check_readonly_schema(Witness *w)
{
    int64_t version = 0, app = 0;
    int r = pragma_int(w, "PRAGMA user_version", &version);
    if (r >= 0)
        r = pragma_int(w, "PRAGMA application_id", &app);
    if (r < 0)
        return r;
    if (app != WITNESS_APPLICATION_ID || version < 1)
        return lv_error_set(LV_ERR_INPUT, "witness database %s: not a witness database", w->path);
    if (version > WITNESS_SCHEMA_VERSION)
        return lv_error_set(-EPROTO,
                            "witness database %s: schema version %" PRId64
                            " is newer than this program's %d",
                            w->path, version, WITNESS_SCHEMA_VERSION);
    return 0;
}

int witness_open(const char *path, unsigned flags, Witness **ret)
{
    bool ro = flags & WITNESS_OPEN_READONLY;
    int r = prepare_file(path, ro);
    if (r < 0)
        return r;
    Witness *w = calloc(1, sizeof(*w));
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return -ENOMEM;
    }
    w->readonly = ro;
    int rc = sqlite3_open_v2(path, &w->db,
                             (ro ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) |
                                 SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE,
                             NULL);
    if (rc != SQLITE_OK) {
        r = db_error(w, rc, "open");
        goto fail;
    }
    sqlite3_busy_timeout(w->db, BUSY_TIMEOUT_MS);
    if (ro) {
        if ((r = check_readonly_schema(w)) < 0)
            goto fail;
        *ret = w;
        return 0;
    }
    /* WAL and FULL: a COMMIT returns only after the WAL is on stable storage,
     * so an answer given after COMMIT is never lost by a crash. */
    sqlite3_stmt *s = NULL;
    rc = sqlite3_prepare_v2(w->db, "PRAGMA journal_mode=WAL", -1, &s, NULL);
    if (rc == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
        const char *mode = (const char *)sqlite3_column_text(s, 0);
        if (!mode || strcmp(mode, "wal") != 0)
            rc = SQLITE_ERROR;
    } else
        rc = rc == SQLITE_OK ? sqlite3_errcode(w->db) : rc;
    sqlite3_finalize(s);
    if (rc != SQLITE_OK) {
        r = db_error(w, rc, "cannot switch to WAL journal mode");
        goto fail;
    }
    if ((r = exec(w, "PRAGMA synchronous=FULL; PRAGMA trusted_schema=OFF")) < 0)
        goto fail;
    if ((r = migrate(w)) < 0)
        goto fail;
    *ret = w;
    return 0;
fail:
    witness_close(w);
    return r;
}

int witness_open_reader(const Witness *w, Witness **ret)
{
    /* Not through prepare_file(): w's checks hold, and an open() and close()
     * of the database file here would drop every POSIX lock this process
     * holds on it, w's too. Another process could then take the file for
     * its own, checkpoint, and remove the WAL that w goes on committing
     * into: those commits would be lost. */
    Witness *r = calloc(1, sizeof(*r));
    if (!r || !(r->path = strdup(w->path))) {
        free(r);
        return -ENOMEM;
    }
    r->readonly = true;
    int rc = sqlite3_open_v2(
        r->path, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE, NULL);
    if (rc != SQLITE_OK) {
        int e = db_error(r, rc, "open a second connection");
        witness_close(r);
        return e;
    }
    sqlite3_busy_timeout(r->db, BUSY_TIMEOUT_MS);
    *ret = r;
    return 0;
}

Witness *witness_close(Witness *w)
{
    if (!w)
        return NULL;
    for (int i = 0; i < _Q_MAX; i++)
        sqlite3_finalize(w->stmts[i]);
    sqlite3_close(w->db);
    verifier_free(w->verifier);
    free(w->pk_json);
    free(w->path);
    free(w);
    return NULL;
}

int witness_ping(Witness *w)
{
    int64_t v;
    return pragma_int(w, "PRAGMA user_version", &v);
}

static void bind_key(sqlite3_stmt *s, const char *witness_id, const char *tenant_id,
                     const char *stream_id)
{
    sqlite3_bind_text(s, 1, witness_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, tenant_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, stream_id, -1, SQLITE_STATIC);
}

/* Copies a text column that must match check(); anything else is a damaged row. */
static int column_copy(sqlite3_stmt *s, int col, char *out, size_t cap)
{
    const unsigned char *v = sqlite3_column_text(s, col);
    int n = sqlite3_column_bytes(s, col);
    if (!v || n < 0 || (size_t)n >= cap)
        return -EIO;
    memcpy(out, v, (size_t)n);
    out[n] = '\0';
    return 0;
}

static int read_head(Witness *w, const char *witness_id, const char *tenant_id,
                     const char *stream_id, int64_t *ret_seq)
{
    sqlite3_stmt *s = stmt(w, Q_HEAD);
    if (!s)
        return db_error(w, sqlite3_errcode(w->db), "prepare");
    bind_key(s, witness_id, tenant_id, stream_id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(s);
        return -ENOENT;
    }
    if (rc != SQLITE_ROW)
        return db_error(w, rc, "read head");
    *ret_seq = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (*ret_seq < 0 || *ret_seq > WITNESS_MAX_SEQ)
        return lv_error_set(-EIO, "witness database %s: head of %s/%s out of range", w->path,
                            tenant_id, stream_id);
    return 0;
}

static int read_row(Witness *w, const char *witness_id, const char *tenant_id,
                    const char *stream_id, int64_t seq, Row *ret)
{
    sqlite3_stmt *s = stmt(w, Q_CHECKPOINT);
    if (!s)
        return db_error(w, sqlite3_errcode(w->db), "prepare");
    bind_key(s, witness_id, tenant_id, stream_id);
    sqlite3_bind_int64(s, 4, seq);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(s);
        return -ENOENT;
    }
    if (rc != SQLITE_ROW)
        return db_error(w, rc, "read checkpoint");
    Row row = {.seq = seq};
    int r = 0;
    if (column_copy(s, 0, row.checkpoint_id, sizeof(row.checkpoint_id)) < 0 ||
        !lv_valid_id(row.checkpoint_id) || column_copy(s, 1, row.hash, sizeof(row.hash)) < 0 ||
        !is_lower_hex(row.hash, WITNESS_HASH_HEX_LEN) ||
        column_copy(s, 3, row.witnessed_at, sizeof(row.witnessed_at)) < 0 ||
        column_copy(s, 4, row.statement_hash, sizeof(row.statement_hash)) < 0 ||
        !is_lower_hex(row.statement_hash, WITNESS_HASH_HEX_LEN))
        r = -EIO;
    if (r == 0 && sqlite3_column_type(s, 2) != SQLITE_NULL) {
        row.has_prev = true;
        if (column_copy(s, 2, row.prev, sizeof(row.prev)) < 0 ||
            !is_lower_hex(row.prev, WITNESS_HASH_HEX_LEN))
            r = -EIO;
    }
    if (r == 0) {
        const char *doc = (const char *)sqlite3_column_text(s, 5);
        if (!doc || sqlite3_column_bytes(s, 5) <= 0)
            r = -EIO;
        else if (!(row.receipt = strdup(doc)))
            r = -ENOMEM;
    }
    sqlite3_reset(s);
    if (r == -EIO)
        return lv_error_set(r, "witness database %s: damaged checkpoint row %s/%s seq %" PRId64,
                            w->path, tenant_id, stream_id, seq);
    if (r < 0)
        return r;
    *ret = row;
    return 0;
}

int witness_head(Witness *w, const char *witness_id, const char *tenant_id, const char *stream_id,
                 int64_t *ret_seq, char **ret_receipt)
{
    int64_t seq;
    int r = read_head(w, witness_id, tenant_id, stream_id, &seq);
    if (r < 0)
        return r;
    if (ret_receipt) {
        Row row = {0};
        r = read_row(w, witness_id, tenant_id, stream_id, seq, &row);
        if (r < 0)
            return r;
        *ret_receipt = TAKE_PTR(row.receipt);
    }
    *ret_seq = seq;
    return 0;
}

int witness_forks_foreach(Witness *w, const char *tenant_id, const char *stream_id,
                          witness_document_fn fn, void *userdata)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(w->db,
                                "SELECT document FROM fork_evidence "
                                "WHERE (?1 IS NULL OR tenant_id = ?1) AND "
                                "(?2 IS NULL OR stream_id = ?2) ORDER BY id",
                                -1, &s, NULL);
    if (rc != SQLITE_OK)
        return db_error(w, rc, "list fork evidence");
    if (tenant_id)
        sqlite3_bind_text(s, 1, tenant_id, -1, SQLITE_STATIC);
    if (stream_id)
        sqlite3_bind_text(s, 2, stream_id, -1, SQLITE_STATIC);
    int r = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *doc = (const char *)sqlite3_column_text(s, 0);
        int n = sqlite3_column_bytes(s, 0);
        if (!doc || n <= 0) {
            r = lv_error_set(-EIO, "witness database %s: damaged fork evidence row", w->path);
            break;
        }
        r = fn(userdata, doc, (size_t)n);
        if (r < 0)
            break;
    }
    if (r >= 0 && rc != SQLITE_DONE)
        r = db_error(w, rc, "list fork evidence");
    sqlite3_finalize(s);
    return r < 0 ? r : 0;
}

/* ---- requests ------------------------------------------------------------------------------- */

enum { F_TENANT, F_STREAM, F_CHECKPOINT_ID, F_SEQ, F_HASH, F_PREV, _F_MAX };
static const char *const json_names[_F_MAX] = {
    "tenant_id",         "stream_id",       "checkpoint_id",
    "checkpoint_seq_no", "checkpoint_hash", "previous_checkpoint_hash",
};
static const char *const cli_names[_F_MAX] = {
    "--tenant-id",         "--stream-id",       "--checkpoint-id",
    "--checkpoint-seq-no", "--checkpoint-hash", "--previous-checkpoint-hash",
};

static int check_id(const char *name, const char *v)
{
    if (!v)
        return lv_error_set(LV_ERR_INPUT, "%s: missing", name);
    if (!lv_valid_id(v))
        return lv_error_set(LV_ERR_INPUT, "%s: must be 1-128 bytes of [A-Za-z0-9._:@/-]", name);
    return 0;
}

static int check_hash(const char *name, const char *v)
{
    if (!v)
        return lv_error_set(LV_ERR_INPUT, "%s: missing", name);
    size_t n = strlen(v);
    if (n != WITNESS_HASH_HEX_LEN)
        return lv_error_set(LV_ERR_INPUT,
                            "%s: must be 64 lowercase hex digits (SHA-256), got %zu characters",
                            name, n);
    if (!is_lower_hex(v, WITNESS_HASH_HEX_LEN))
        return lv_error_set(LV_ERR_INPUT,
                            "%s: must be 64 lowercase hex digits (SHA-256), found a character "
                            "outside [0-9a-f]",
                            name);
    return 0;
}

int witness_request_check(const WitnessRequest *req, WitnessNames names)
{
    const char *const *n = names == WITNESS_NAMES_CLI ? cli_names : json_names;
    int r;
    if ((r = check_id(n[F_TENANT], req->tenant_id)) < 0 ||
        (r = check_id(n[F_STREAM], req->stream_id)) < 0 ||
        (r = check_id(n[F_CHECKPOINT_ID], req->checkpoint_id)) < 0)
        return r;
    if (req->seq < 0 || req->seq > WITNESS_MAX_SEQ)
        return lv_error_set(LV_ERR_INPUT, "%s: must be an integer from 0 to %lld", n[F_SEQ],
                            WITNESS_MAX_SEQ);
    if ((r = check_hash(n[F_HASH], req->checkpoint_hash)) < 0)
        return r;
    if (req->previous_hash && (r = check_hash(n[F_PREV], req->previous_hash)) < 0)
        return r;
    return 0;
}

/* A member name from outside, made safe to print in one log line. */
static void printable(const char *s, char out[68])
{
    size_t i = 0;
    for (; s[i] && i < 64; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
}

int witness_request_parse(const char *body, size_t len, WitnessRequest *ret, cJSON **ret_tree)
{
    if (len > WITNESS_REQUEST_MAX)
        return lv_error_set(LV_ERR_TOOBIG, "request body: larger than %d bytes",
                            WITNESS_REQUEST_MAX);
    _cleanup_cjson_ cJSON *tree = NULL;
    int r = canon_parse(body, len, WITNESS_REQUEST_MAX, "request", &tree);
    if (r < 0)
        return r;
    if (!cJSON_IsObject(tree))
        return lv_error_set(LV_ERR_INPUT, "request: must be a JSON object");
    WitnessRequest req = {.seq = -1};
    bool seen_seq = false;
    const cJSON *m;
    cJSON_ArrayForEach(m, tree)
    {
        int f = -1;
        for (int i = 0; i < _F_MAX; i++)
            if (strcmp(m->string, json_names[i]) == 0)
                f = i;
        if (f < 0) {
            char name[68];
            printable(m->string, name);
            return lv_error_set(LV_ERR_INPUT,
                                "%s: unknown member (expected tenant_id, stream_id, "
                                "checkpoint_id, checkpoint_seq_no, checkpoint_hash, "
                                "previous_checkpoint_hash)",
                                name);
        }
        if (f == F_SEQ) {
            /* canon_parse admits only integers within +-(2^53-1). */
            if (!cJSON_IsNumber(m))
                return lv_error_set(LV_ERR_INPUT,
                                    "checkpoint_seq_no: must be a JSON integer from 0 to %lld",
                                    WITNESS_MAX_SEQ);
            req.seq = (int64_t)m->valuedouble;
            seen_seq = true;
            continue;
        }
        if (f == F_PREV && cJSON_IsNull(m))
            continue;
        if (!cJSON_IsString(m))
            return lv_error_set(LV_ERR_INPUT, "%s: must be a string%s", json_names[f],
                                f == F_PREV ? " or null" : "");
        const char *v = m->valuestring;
        switch (f) {
        case F_TENANT:
            req.tenant_id = v;
            break;
        case F_STREAM:
            req.stream_id = v;
            break;
        case F_CHECKPOINT_ID:
            req.checkpoint_id = v;
            break;
        case F_HASH:
            req.checkpoint_hash = v;
            break;
        case F_PREV:
            req.previous_hash = v;
            break;
        }
    }
    if (!seen_seq)
        return lv_error_set(LV_ERR_INPUT, "checkpoint_seq_no: missing");
    r = witness_request_check(&req, WITNESS_NAMES_JSON);
    if (r < 0)
        return r;
    *ret = req;
    *ret_tree = TAKE_PTR(tree);
    return 0;
}

/* ---- statements ----------------------------------------------------------------------------- */

static bool add_str(cJSON *o, const char *k, const char *v)
{
    return v ? cJSON_AddStringToObject(o, k, v) != NULL : cJSON_AddNullToObject(o, k) != NULL;
}

static bool add_int(cJSON *o, const char *k, int64_t v)
{
    /* Exact: every seq is <= 2^53-1. */
    return cJSON_AddNumberToObject(o, k, (double)v) != NULL;
}

static cJSON *receipt_statement(const char *witness_id, const WitnessRequest *req,
                                const char *witnessed_at)
{
    cJSON *s = cJSON_CreateObject();
    if (!s || !add_str(s, "kind", "witness_receipt") || !add_str(s, "witness_id", witness_id) ||
        !add_str(s, "tenant_id", req->tenant_id) || !add_str(s, "stream_id", req->stream_id) ||
        !add_str(s, "checkpoint_id", req->checkpoint_id) ||
        !add_int(s, "checkpoint_seq_no", req->seq) ||
        !add_str(s, "checkpoint_hash", req->checkpoint_hash) ||
        !add_str(s, "previous_checkpoint_hash", req->previous_hash) ||
        !add_str(s, "witnessed_at", witnessed_at)) {
        cJSON_Delete(s);
        return NULL;
    }
    return s;
}

static cJSON *fork_statement(const char *witness_id, const WitnessRequest *req,
                             WitnessReason reason, const Row *acc, const char *detected_at)
{
    cJSON *s = cJSON_CreateObject(), *list, *c1, *c2, *a, *sub;
    if (!s || !add_str(s, "kind", "fork_evidence") || !add_str(s, "witness_id", witness_id) ||
        !add_str(s, "tenant_id", req->tenant_id) || !add_str(s, "stream_id", req->stream_id) ||
        !add_str(s, "reason", witness_reason_name(reason)) || !add_str(s, "result", FORK_RESULT) ||
        !add_str(s, "detected_by", DETECTED_BY) || !add_str(s, "detected_at", detected_at) ||
        !(list = cJSON_AddArrayToObject(s, "conflicting_checkpoints")) ||
        !(c1 = cJSON_CreateObject()) || !cJSON_AddItemToArray(list, c1) ||
        !add_str(c1, "checkpoint_id", acc->checkpoint_id) ||
        !add_str(c1, "checkpoint_head_hash", acc->hash) || !(c2 = cJSON_CreateObject()) ||
        !cJSON_AddItemToArray(list, c2) || !add_str(c2, "checkpoint_id", req->checkpoint_id) ||
        !add_str(c2, "checkpoint_head_hash", req->checkpoint_hash) ||
        !(a = cJSON_AddObjectToObject(s, "accepted_checkpoint")) ||
        !add_str(a, "checkpoint_id", acc->checkpoint_id) ||
        !add_int(a, "checkpoint_seq_no", acc->seq) || !add_str(a, "checkpoint_hash", acc->hash) ||
        !add_str(a, "previous_checkpoint_hash", acc->has_prev ? acc->prev : NULL) ||
        !add_str(a, "witnessed_at", acc->witnessed_at) ||
        !add_str(a, "receipt_statement_hash", acc->statement_hash) ||
        !(sub = cJSON_AddObjectToObject(s, "submitted_checkpoint")) ||
        !add_str(sub, "checkpoint_id", req->checkpoint_id) ||
        !add_int(sub, "checkpoint_seq_no", req->seq) ||
        !add_str(sub, "checkpoint_hash", req->checkpoint_hash) ||
        !add_str(sub, "previous_checkpoint_hash", req->previous_hash)) {
        cJSON_Delete(s);
        return NULL;
    }
    return s;
}

/* ---- checking the token's signatures ----------------------------------------------------------
 */

/* Signatures made ahead of the write transaction (witness_presign_batch) are
 * checked against the public key on a thread of their own, while the token
 * signs the next ones: a check costs about half a SoftHSM C_Sign. The thread
 * lives as long as the Witness (not one per batch). Each
 * check reports into its presign's state; witness_commit_batch waits for it
 * before it stores the signature. */
typedef struct Check {
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    uint8_t sig[TOKEN_ED25519_SIG_LEN];
    uint8_t *msg;
    size_t len;
    int *state; /* 0 while queued, then 1 (verified) or -1 */
    struct Check *next;
} Check;

struct Verifier {
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    Check *head, **tail;
    bool stop;
    pthread_t thread;
};

static void *verifier_main(void *arg)
{
    Verifier *v = arg;
    pthread_mutex_lock(&v->lock);
    for (;;) {
        while (!v->head && !v->stop)
            pthread_cond_wait(&v->work, &v->lock);
        Check *c = v->head;
        if (!c)
            break;
        if (!(v->head = c->next))
            v->tail = &v->head;
        pthread_mutex_unlock(&v->lock);
        bool ok = pubkey_verify(c->pk, c->msg, c->len, c->sig) == 0;
        pthread_mutex_lock(&v->lock);
        *c->state = ok ? 1 : -1;
        pthread_cond_broadcast(&v->done);
        free(c->msg);
        free(c);
    }
    pthread_mutex_unlock(&v->lock);
    return NULL;
}

static Verifier *verifier_new(void)
{
    Verifier *v = calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->tail = &v->head;
    pthread_mutex_init(&v->lock, NULL);
    pthread_cond_init(&v->work, NULL);
    pthread_cond_init(&v->done, NULL);
    if (pthread_create(&v->thread, NULL, verifier_main, v) != 0) {
        pthread_cond_destroy(&v->done);
        pthread_cond_destroy(&v->work);
        pthread_mutex_destroy(&v->lock);
        free(v);
        return NULL;
    }
    return v;
}

/* Checks what is queued, then stops. */
static void verifier_free(Verifier *v)
{
    if (!v)
        return;
    pthread_mutex_lock(&v->lock);
    v->stop = true;
    pthread_cond_signal(&v->work);
    pthread_mutex_unlock(&v->lock);
    pthread_join(v->thread, NULL);
    pthread_cond_destroy(&v->done);
    pthread_cond_destroy(&v->work);
    pthread_mutex_destroy(&v->lock);
    free(v);
}

/* Queues a check of sig over a copy of msg; *state is 0 until it is done. */
static int verifier_push(Verifier *v, const uint8_t pk[TOKEN_ED25519_PK_LEN], const uint8_t *msg,
                         size_t len, const uint8_t sig[TOKEN_ED25519_SIG_LEN], int *state)
{
    Check *c = calloc(1, sizeof(*c));
    if (!c || !(c->msg = malloc(len ? len : 1))) {
        free(c);
        return -ENOMEM;
    }
    memcpy(c->msg, msg, len);
    c->len = len;
    memcpy(c->pk, pk, sizeof(c->pk));
    memcpy(c->sig, sig, sizeof(c->sig));
    c->state = state;
    pthread_mutex_lock(&v->lock);
    *state = 0;
    *v->tail = c;
    v->tail = &c->next;
    pthread_cond_signal(&v->work);
    pthread_mutex_unlock(&v->lock);
    return 0;
}

/* Waits for the check that reports into *state; true when it verified. */
static bool verifier_wait(Verifier *v, const int *state)
{
    pthread_mutex_lock(&v->lock);
    while (*state == 0)
        pthread_cond_wait(&v->done, &v->lock);
    bool ok = *state > 0;
    pthread_mutex_unlock(&v->lock);
    return ok;
}

/* The document's "public_key" member, canonical: the same for every
 * statement of one key, and its PEM encoding alone cost a tenth of a
 * decision. Rebuilt when the token's key or kid changes. */
static int public_key_json(Witness *w, const uint8_t pk[TOKEN_ED25519_PK_LEN], const char *kid,
                           const char **ret)
{
    if (!w->pk_json || memcmp(w->pk_json_pk, pk, sizeof(w->pk_json_pk)) != 0 ||
        strcmp(w->pk_json_kid, kid) != 0) {
        _cleanup_cjson_ cJSON *o = NULL;
        char *json = NULL;
        size_t n;
        int r = pubkey_json(pk, kid, &o);
        if (r < 0 || (r = canon_serialize(o, &json, &n)) < 0)
            return r;
        free(w->pk_json);
        w->pk_json = json;
        memcpy(w->pk_json_pk, pk, sizeof(w->pk_json_pk));
        snprintf(w->pk_json_kid, sizeof(w->pk_json_kid), "%s", kid);
    }
    *ret = w->pk_json;
    return 0;
}

/* A statement's canonical bytes and its hash. */
typedef struct Canon {
    char *jcs;
    size_t len;
    char hash[WITNESS_HASH_HEX_LEN + 1];
} Canon;

static void canon_done(Canon *c)
{
    free(c->jcs);
    *c = (Canon){0};
}

static int canon_statement(const cJSON *statement, Canon *ret)
{
    Canon c = {0};
    int r = canon_serialize(statement, &c.jcs, &c.len);
    if (r < 0)
        return r;
    lv_sha256_hex(c.jcs, c.len, c.hash);
    *ret = c;
    return 0;
}

/* Signs a canonical statement on the token and assembles the document in
 * the order of DESIGN §7. The signature is checked against the public key
 * before anything is stored (a faulty token must not leave a bad receipt
 * that every replay would repeat): here, inline, when v is NULL; otherwise
 * v checks it and reports into *state. */
static int sign_statement(Witness *w, Token *t, const char *domain, const char *result,
                          const Canon *st, Verifier *v, int *state, char **ret_doc, size_t *ret_len)
{
    if (!t)
        return lv_error_set(LV_ERR_TOKEN, "token unavailable: cannot sign a new statement");
    _cleanup_free_ char *sig_json = NULL;
    _cleanup_free_ uint8_t *msg = NULL;
    _cleanup_cjson_ cJSON *sig_obj = NULL;
    const char *pk_json;
    size_t mlen, n;
    int r = pubkey_signed_message(domain, st->jcs, st->len, &msg, &mlen);
    if (r < 0)
        return r;
    uint8_t pk[TOKEN_ED25519_PK_LEN], sig[TOKEN_ED25519_SIG_LEN];
    if ((r = token_public_key(t, pk)) < 0 || (r = token_sign(t, msg, mlen, sig)) < 0)
        return r;
    if (v) {
        if ((r = verifier_push(v, pk, msg, mlen, sig, state)) < 0)
            return r;
    } else if (pubkey_verify(pk, msg, mlen, sig) < 0)
        return lv_error_set(LV_ERR_TOKEN, "token returned a signature that does not verify with "
                                          "its public key; nothing stored");
    const char *kid = token_key_id(t);
    char sig_hex[2 * TOKEN_ED25519_SIG_LEN + 1];
    hex_encode(sig, sizeof(sig), sig_hex);
    if (!(sig_obj = cJSON_CreateObject()) || !add_str(sig_obj, "alg", "Ed25519") ||
        !add_str(sig_obj, "kid", kid) || !add_str(sig_obj, "signature", sig_hex))
        return -ENOMEM;
    if ((r = public_key_json(w, pk, kid, &pk_json)) < 0 ||
        (r = canon_serialize(sig_obj, &sig_json, &n)) < 0)
        return r;
    char *doc = NULL;
    int len = asprintf(&doc,
                       "{\"result\":\"%s\",\"statement\":%s,\"statement_hash\":\"%s\","
                       "\"signature\":%s,\"public_key\":%s}",
                       result, st->jcs, st->hash, sig_json, pk_json);
    if (len < 0)
        return -ENOMEM;
    *ret_doc = doc;
    *ret_len = (size_t)len;
    return 0;
}

/* ---- the decision --------------------------------------------------------------------------- */

static int insert_checkpoint(Witness *w, const char *witness_id, const WitnessRequest *req,
                             const char *witnessed_at, const char *statement_hash, const char *doc)
{
    sqlite3_stmt *s = stmt(w, Q_INSERT_CHECKPOINT);
    if (!s)
        return db_error(w, sqlite3_errcode(w->db), "prepare");
    bind_key(s, witness_id, req->tenant_id, req->stream_id);
    sqlite3_bind_int64(s, 4, req->seq);
    sqlite3_bind_text(s, 5, req->checkpoint_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 6, req->checkpoint_hash, -1, SQLITE_STATIC);
    if (req->previous_hash)
        sqlite3_bind_text(s, 7, req->previous_hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 8, witnessed_at, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 9, statement_hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 10, doc, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : db_error(w, rc, "store checkpoint");
}

static int move_head(Witness *w, const char *witness_id, const WitnessRequest *req, bool first)
{
    sqlite3_stmt *s = stmt(w, first ? Q_INSERT_HEAD : Q_ADVANCE_HEAD);
    if (!s)
        return db_error(w, sqlite3_errcode(w->db), "prepare");
    bind_key(s, witness_id, req->tenant_id, req->stream_id);
    sqlite3_bind_int64(s, 4, req->seq);
    int rc = sqlite3_step(s);
    bool changed = rc == SQLITE_DONE && sqlite3_changes(w->db) == 1;
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return db_error(w, rc, "move head");
    if (!changed)
        return lv_error_set(-EIO, "witness database %s: head of %s/%s did not move", w->path,
                            req->tenant_id, req->stream_id);
    return 0;
}

static int evidence_key(const WitnessRequest *req, WitnessReason reason, const Row *acc,
                        char out[WITNESS_HASH_HEX_LEN + 1])
{
    /* Identifiers and hashes cannot hold '\n', so this spelling is unambiguous. */
    _cleanup_free_ char *s = NULL;
    int n = asprintf(&s, "%s\n%" PRId64 "\n%s\n%s\n%" PRId64 "\n%s\n%s",
                     witness_reason_name(reason), acc->seq, acc->hash, req->checkpoint_id, req->seq,
                     req->checkpoint_hash, req->previous_hash ? req->previous_hash : "-");
    if (n < 0) {
        s = NULL;
        return -ENOMEM;
    }
    lv_sha256_hex(s, (size_t)n, out);
    return 0;
}

static int find_fork(Witness *w, const char *witness_id, const WitnessRequest *req, const char *key,
                     char **ret_doc)
{
    sqlite3_stmt *s = stmt(w, Q_FIND_FORK);
    if (!s)
        return db_error(w, sqlite3_errcode(w->db), "prepare");
    bind_key(s, witness_id, req->tenant_id, req->stream_id);
    sqlite3_bind_text(s, 4, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s), r = -ENOENT;
    if (rc == SQLITE_ROW) {
        const char *doc = (const char *)sqlite3_column_text(s, 0);
        if (!doc || sqlite3_column_bytes(s, 0) <= 0)
            r = lv_error_set(-EIO, "witness database %s: damaged fork evidence row", w->path);
        else
            r = (*ret_doc = strdup(doc)) ? 0 : -ENOMEM;
    } else if (rc != SQLITE_DONE)
        r = db_error(w, rc, "read fork evidence");
    sqlite3_reset(s);
    return r;
}

static int insert_fork(Witness *w, const char *witness_id, const WitnessRequest *req,
                       WitnessReason reason, const Row *acc, const char *key,
                       const char *detected_at, const char *statement_hash, const char *doc)
{
    sqlite3_stmt *s = stmt(w, Q_INSERT_FORK);
    if (!s)
        return db_error(w, sqlite3_errcode(w->db), "prepare");
    bind_key(s, witness_id, req->tenant_id, req->stream_id);
    sqlite3_bind_text(s, 4, witness_reason_name(reason), -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, req->seq);
    sqlite3_bind_text(s, 6, req->checkpoint_hash, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 7, acc->seq);
    sqlite3_bind_text(s, 8, acc->hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 9, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 10, detected_at, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 11, statement_hash, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 12, doc, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : db_error(w, rc, "store fork evidence");
}

/* What the table of DESIGN §7 decides for one request against the state w
 * shows, before anything is signed or written. */
typedef struct Plan {
    WitnessOutcome out; /* result, reason, head_seq; the document of a replay or of stored
                           fork evidence */
    Row acc;            /* the stored checkpoint the request was compared with */
    char key[WITNESS_HASH_HEX_LEN + 1]; /* fork evidence key */
    cJSON *statement;                   /* to sign and store: a receipt or new fork evidence */
    const char *domain, *result_name;
} Plan;

static void plan_done(Plan *p)
{
    row_done(&p->acc);
    cJSON_Delete(p->statement);
    witness_outcome_done(&p->out);
    *p = (Plan){0};
}

static int plan_decision(Witness *w, const char *witness_id, const WitnessRequest *req,
                         const char *now, Plan *ret)
{
    Plan p = {.out = {.head_seq = -1}};
    int64_t head;
    int r = read_head(w, witness_id, req->tenant_id, req->stream_id, &head);
    if (r == -ENOENT) {
        p.out.result = WITNESS_ACCEPTED; /* first use */
        r = 0;
    } else if (r < 0)
        goto fail;
    else {
        p.out.head_seq = head;
        if (req->seq <= head) {
            r = read_row(w, witness_id, req->tenant_id, req->stream_id, req->seq, &p.acc);
            if (r < 0 && r != -ENOENT)
                goto fail;
            if (r == 0 && strcmp(p.acc.hash, req->checkpoint_hash) != 0) {
                p.out.result = WITNESS_FORK;
                p.out.reason = WITNESS_REASON_CONFLICTING;
            } else if (req->seq == head) {
                /* The row at the head always exists (a trigger makes sure). */
                if (r < 0) {
                    r = lv_error_set(-EIO, "witness database %s: head of %s/%s has no checkpoint",
                                     w->path, req->tenant_id, req->stream_id);
                    goto fail;
                }
                p.out.result = WITNESS_REPLAYED;
            } else {
                p.out.result = WITNESS_FORK;
                p.out.reason = WITNESS_REASON_STALE;
            }
            r = 0;
        } else if (req->seq == head + 1) {
            if (!req->previous_hash) {
                r = lv_error_set(LV_ERR_INPUT,
                                 "previous_checkpoint_hash (--previous-checkpoint-hash): "
                                 "required to extend the head at seq %" PRId64,
                                 head);
                goto fail;
            }
            if ((r = read_row(w, witness_id, req->tenant_id, req->stream_id, head, &p.acc)) < 0)
                goto fail;
            if (strcmp(p.acc.hash, req->previous_hash) == 0)
                p.out.result = WITNESS_ACCEPTED;
            else {
                p.out.result = WITNESS_FORK;
                p.out.reason = WITNESS_REASON_DIVERGENT;
            }
        } else
            p.out.result = WITNESS_GAP;
    }
    /* Stale evidence names the head the submission fell behind. */
    if (p.out.result == WITNESS_FORK && p.out.reason == WITNESS_REASON_STALE) {
        row_done(&p.acc);
        if ((r = read_row(w, witness_id, req->tenant_id, req->stream_id, head, &p.acc)) < 0)
            goto fail;
    }

    switch (p.out.result) {
    case WITNESS_GAP:
        break;
    case WITNESS_REPLAYED:
        p.out.document = TAKE_PTR(p.acc.receipt);
        p.out.document_len = strlen(p.out.document);
        break;
    case WITNESS_ACCEPTED:
        p.domain = WITNESS_RECEIPT_DOMAIN;
        p.result_name = "accepted";
        if (!(p.statement = receipt_statement(witness_id, req, now))) {
            r = -ENOMEM;
            goto fail;
        }
        break;
    case WITNESS_FORK:
        if ((r = evidence_key(req, p.out.reason, &p.acc, p.key)) < 0)
            goto fail;
        r = find_fork(w, witness_id, req, p.key, &p.out.document);
        if (r == 0) {
            p.out.reused = true;
            p.out.document_len = strlen(p.out.document);
            break;
        }
        if (r != -ENOENT)
            goto fail;
        p.domain = WITNESS_FORK_DOMAIN;
        p.result_name = "fork_evidence";
        if (!(p.statement = fork_statement(witness_id, req, p.out.reason, &p.acc, now))) {
            r = -ENOMEM;
            goto fail;
        }
        break;
    default:
        r = -EINVAL;
        goto fail;
    }
    *ret = p;
    return 0;
fail:
    plan_done(&p);
    return r;
}

/* A statement signed ahead of the write transaction, for one job. */
struct WitnessPresign {
    char now[32]; /* the time the statement names */
    Canon st;     /* the statement signed */
    char *doc;    /* the document, with the signature */
    size_t doc_len;
    Verifier *v; /* checks the signature, */
    int check;   /* into this: 0 pending, 1 verified, -1 not */
};

static void presign_free(WitnessPresign *p)
{
    if (!p)
        return;
    /* The check reports into p: it must be done before p goes. */
    verifier_wait(p->v, &p->check);
    canon_done(&p->st);
    free(p->doc);
    free(p);
}

/* Decides on one request inside the open transaction, signs and stores what
 * the decision needs. A statement signed ahead (pre) is used only when this
 * decision, made here under the write lock, comes to the very same
 * statement bytes and the signature verified; otherwise the statement is
 * signed now and checked inline. On success *ret holds the document (not to
 * be shown before COMMIT) and *ret_write whether anything was written; on
 * failure nothing is held, and the caller undoes the request's writes. */
static int decide(Witness *w, Token *t, const char *witness_id, const WitnessRequest *req,
                  WitnessPresign *pre, WitnessOutcome *ret, bool *ret_write)
{
    Plan p = {0};
    Canon st = {0};
    char now[32];
    _cleanup_free_ char *doc = NULL;
    size_t doc_len = 0;
    if (pre)
        memcpy(now, pre->now, sizeof(now));
    else
        lv_format_time(lv_now_ms(), now);
    int r;
    for (;;) {
        if ((r = plan_decision(w, witness_id, req, now, &p)) < 0)
            goto done;
        if (!p.statement) { /* a gap, a replay, or fork evidence already stored */
            *ret = p.out;
            p.out = (WitnessOutcome){0};
            *ret_write = false;
            goto done;
        }
        if ((r = canon_statement(p.statement, &st)) < 0)
            goto done;
        if (!pre) {
            r = sign_statement(w, t, p.domain, p.result_name, &st, NULL, NULL, &doc, &doc_len);
            if (r < 0)
                goto done;
            break;
        }
        if (st.len == pre->st.len && memcmp(st.jcs, pre->st.jcs, st.len) == 0 &&
            verifier_wait(pre->v, &pre->check)) {
            doc = TAKE_PTR(pre->doc);
            doc_len = pre->doc_len;
            break;
        }
        /* Decided otherwise than ahead (or its signature failed the check):
         * decide again, at this time, and sign here. */
        pre = NULL;
        plan_done(&p);
        canon_done(&st);
        lv_format_time(lv_now_ms(), now);
    }
    if (p.out.result == WITNESS_ACCEPTED) {
        if ((r = insert_checkpoint(w, witness_id, req, now, st.hash, doc)) >= 0)
            r = move_head(w, witness_id, req, p.out.head_seq < 0);
    } else
        r = insert_fork(w, witness_id, req, p.out.reason, &p.acc, p.key, now, st.hash, doc);
    if (r < 0)
        goto done;
    *ret = p.out;
    p.out = (WitnessOutcome){0};
    ret->document = TAKE_PTR(doc);
    ret->document_len = doc_len;
    *ret_write = true;
done:
    canon_done(&st);
    plan_done(&p);
    return r;
}

static void job_fail(WitnessJob *j, int r)
{
    witness_outcome_done(&j->out);
    j->out = (WitnessOutcome){0};
    j->r = r;
    snprintf(j->detail, sizeof(j->detail), "%s", *lv_error() ? lv_error() : strerror(-r));
}

/* Every job fails with r (and the current lv_error()). */
static int fail_all(WitnessJob *jobs, size_t n, int r)
{
    char detail[sizeof(jobs->detail)];
    snprintf(detail, sizeof(detail), "%s", *lv_error() ? lv_error() : strerror(-r));
    for (size_t i = 0; i < n; i++) {
        lv_error_set(r, "%s", detail);
        job_fail(&jobs[i], r);
    }
    return r;
}

static int job_check(Witness *w, const char *witness_id, const WitnessRequest *req)
{
    if (!lv_valid_id(witness_id))
        return lv_error_set(LV_ERR_INPUT, "witness_id: must be 1-128 bytes of [A-Za-z0-9._:@/-]");
    int r = witness_request_check(req, WITNESS_NAMES_JSON);
    if (r < 0)
        return r;
    if (w->readonly)
        return lv_error_set(-EROFS, "witness database %s: opened read-only", w->path);
    return 0;
}

bool witness_same_stream(const WitnessRequest *a, const WitnessRequest *b)
{
    return strcmp(a->tenant_id, b->tenant_id) == 0 && strcmp(a->stream_id, b->stream_id) == 0;
}

int witness_presign_batch(Witness *r, Token *t, const char *witness_id, WitnessJob *jobs, size_t n,
                          const bool *skip)
{
    if (!t)
        return 0;
    if (!r->verifier && !(r->verifier = verifier_new()))
        return 0; /* nothing ahead: every job is signed in its transaction */
    /* One snapshot for the batch; without one, nothing is signed ahead. */
    if (sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return 0;
    int ret = 0;
    for (size_t i = 0; i < n; i++) {
        WitnessJob *j = &jobs[i];
        bool later = false;
        for (size_t k = 0; k < i && !later; k++)
            later = witness_same_stream(jobs[k].req, j->req);
        if (j->pre || later || (skip && skip[i]) || !lv_valid_id(witness_id) ||
            witness_request_check(j->req, WITNESS_NAMES_JSON) < 0)
            continue;
        WitnessPresign *p = calloc(1, sizeof(*p));
        if (!p)
            break;
        p->v = r->verifier;
        p->check = -1; /* until a check is queued */
        lv_format_time(lv_now_ms(), p->now);
        Plan plan = {0};
        int e = plan_decision(r, witness_id, j->req, p->now, &plan);
        if (e >= 0 && plan.statement && (e = canon_statement(plan.statement, &p->st)) >= 0)
            e = sign_statement(r, t, plan.domain, plan.result_name, &p->st, r->verifier, &p->check,
                               &p->doc, &p->doc_len);
        bool signed_ = e >= 0 && plan.statement;
        plan_done(&plan);
        if (!signed_) {
            presign_free(p);
            if (lv_is_token_error(e)) {
                ret = e; /* the token failed: nothing more is signed ahead */
                break;
            }
            continue;
        }
        j->pre = p;
    }
    sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
    return ret;
}

int witness_commit_batch(Witness *w, Token *t, const char *witness_id, WitnessJob *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        jobs[i].out = (WitnessOutcome){0};
        jobs[i].r = 0;
        jobs[i].detail[0] = '\0';
    }
    /* IMMEDIATE takes the write lock before any head is read: two deciders
     * (threads, the CLI and the endpoint) can never both see the same head. */
    lv_error_clear();
    int r = exec(w, "BEGIN IMMEDIATE");
    if (r < 0)
        goto abort;
    /* Savepoints let one job fail alone; a lone job needs none. */
    bool savepoints = n > 1, write = false;
    for (size_t i = 0; i < n; i++) {
        WitnessJob *j = &jobs[i];
        bool wrote = false;
        lv_error_clear();
        if ((r = job_check(w, witness_id, j->req)) < 0) {
            job_fail(j, r);
            continue;
        }
        if (savepoints && (r = exec(w, "SAVEPOINT witness_job")) < 0)
            goto abort;
        r = decide(w, t, witness_id, j->req, j->pre, &j->out, &wrote);
        if (r < 0) {
            job_fail(j, r);
            /* Some errors (I/O, full disk) end the whole transaction in
             * SQLite: what the jobs before this one wrote is gone too. */
            if (sqlite3_get_autocommit(w->db))
                goto abort;
            if (savepoints && (r = exec(w, "ROLLBACK TO witness_job")) < 0)
                goto abort;
            /* The token failed: the session is presumed broken. */
            if (lv_is_token_error(j->r))
                t = NULL;
        } else
            write = write || wrote;
        if (savepoints && (r = exec(w, "RELEASE witness_job")) < 0)
            goto abort;
    }
    r = exec(w, write ? "COMMIT" : "ROLLBACK");
    if (r < 0)
        goto abort;
    r = 0;
    goto out;
abort:
    if (!sqlite3_get_autocommit(w->db))
        sqlite3_exec(w->db, "ROLLBACK", NULL, NULL, NULL);
    /* Nothing was committed: no job may answer, whatever it decided. */
    fail_all(jobs, n, r);
out:
    for (size_t i = 0; i < n; i++)
        jobs[i].pre = (presign_free(jobs[i].pre), NULL);
    return r;
}

int witness_submit_batch(Witness *w, Token *t, const char *witness_id, WitnessJob *jobs, size_t n)
{
    if (n == 0)
        return 0;
    /* A token error ahead is met again, with its own detail, by the job's
     * own signing in the transaction (or not, if the token recovered). */
    witness_presign_batch(w, t, witness_id, jobs, n, NULL);
    return witness_commit_batch(w, t, witness_id, jobs, n);
}

int witness_submit(Witness *w, Token *t, const char *witness_id, const WitnessRequest *req,
                   WitnessOutcome *ret)
{
    WitnessJob job = {.req = req};
    witness_commit_batch(w, t, witness_id, &job, 1);
    if (job.r < 0)
        return lv_error_set(job.r, "%s", job.detail);
    /* Only now, after COMMIT, does the caller see the document. */
    *ret = job.out;
    return 0;
}

/* ---- verification --------------------------------------------------------------------------- */

/* Members of an object: exactly the names given (all required). */
static int exact_members(const cJSON *o, const char *path, const char *const *names, size_t n)
{
    if (!cJSON_IsObject(o))
        return lv_error_set(LV_ERR_INPUT, "%s: must be an object", path);
    const cJSON *m;
    cJSON_ArrayForEach(m, o)
    {
        bool known = false;
        for (size_t i = 0; i < n; i++)
            known |= strcmp(m->string, names[i]) == 0;
        if (!known) {
            char name[68];
            printable(m->string, name);
            return lv_error_set(LV_ERR_INPUT, "%s.%s: unknown member", path, name);
        }
    }
    for (size_t i = 0; i < n; i++)
        if (!cJSON_GetObjectItemCaseSensitive(o, names[i]))
            return lv_error_set(LV_ERR_INPUT, "%s.%s: missing", path, names[i]);
    return 0;
}

static const char *get_str(const cJSON *o, const char *name)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(m) ? m->valuestring : NULL;
}

static int want_str(const cJSON *o, const char *path, const char *name, const char **ret)
{
    *ret = get_str(o, name);
    return *ret ? 0 : lv_error_set(LV_ERR_INPUT, "%s.%s: must be a string", path, name);
}

static int want_id(const cJSON *o, const char *path, const char *name, const char **ret)
{
    int r = want_str(o, path, name, ret);
    if (r == 0 && !lv_valid_id(*ret))
        r = lv_error_set(LV_ERR_INPUT, "%s.%s: must be 1-128 bytes of [A-Za-z0-9._:@/-]", path,
                         name);
    return r;
}

static int want_hash(const cJSON *o, const char *path, const char *name, bool nullable,
                     const char **ret)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    *ret = NULL;
    if (nullable && cJSON_IsNull(m))
        return 0;
    if (!cJSON_IsString(m) || !is_lower_hex(m->valuestring, WITNESS_HASH_HEX_LEN))
        return lv_error_set(LV_ERR_INPUT, "%s.%s: must be 64 lowercase hex digits%s", path, name,
                            nullable ? " or null" : "");
    *ret = m->valuestring;
    return 0;
}

static int want_seq(const cJSON *o, const char *path, const char *name, int64_t *ret)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsNumber(m) || m->valuedouble < 0 || m->valuedouble > (double)WITNESS_MAX_SEQ)
        return lv_error_set(LV_ERR_INPUT, "%s.%s: must be an integer from 0 to %lld", path, name,
                            WITNESS_MAX_SEQ);
    *ret = (int64_t)m->valuedouble;
    return 0;
}

static int want_time(const cJSON *o, const char *path, const char *name)
{
    const char *v;
    int64_t ms;
    int r = want_str(o, path, name, &v);
    if (r == 0 && (lv_parse_time(v, &ms) < 0 || strlen(v) != 20))
        r = lv_error_set(LV_ERR_INPUT,
                         "%s.%s: must be an RFC 3339 UTC time "
                         "(YYYY-MM-DDTHH:MM:SSZ)",
                         path, name);
    return r;
}

static int check_receipt_statement(const cJSON *s)
{
    static const char *const names[] = {
        "kind",          "witness_id",        "tenant_id",       "stream_id",
        "checkpoint_id", "checkpoint_seq_no", "checkpoint_hash", "previous_checkpoint_hash",
        "witnessed_at",
    };
    const char *v, *path = "statement";
    int64_t seq;
    int r;
    if ((r = exact_members(s, path, names, ELEMENTSOF(names))) < 0 ||
        (r = want_id(s, path, "witness_id", &v)) < 0 ||
        (r = want_id(s, path, "tenant_id", &v)) < 0 ||
        (r = want_id(s, path, "stream_id", &v)) < 0 ||
        (r = want_id(s, path, "checkpoint_id", &v)) < 0 ||
        (r = want_seq(s, path, "checkpoint_seq_no", &seq)) < 0 ||
        (r = want_hash(s, path, "checkpoint_hash", false, &v)) < 0 ||
        (r = want_hash(s, path, "previous_checkpoint_hash", true, &v)) < 0 ||
        (r = want_time(s, path, "witnessed_at")) < 0)
        return r;
    return 0;
}

typedef struct Cp {
    const char *id, *hash, *prev;
    int64_t seq;
} Cp;

static int check_checkpoint(const cJSON *o, const char *path, bool accepted, Cp *ret)
{
    static const char *const acc_names[] = {
        "checkpoint_id", "checkpoint_seq_no",      "checkpoint_hash", "previous_checkpoint_hash",
        "witnessed_at",  "receipt_statement_hash",
    };
    const char *v;
    int r = exact_members(o, path, acc_names, accepted ? 6 : 4);
    if (r < 0 || (r = want_id(o, path, "checkpoint_id", &ret->id)) < 0 ||
        (r = want_seq(o, path, "checkpoint_seq_no", &ret->seq)) < 0 ||
        (r = want_hash(o, path, "checkpoint_hash", false, &ret->hash)) < 0 ||
        (r = want_hash(o, path, "previous_checkpoint_hash", true, &ret->prev)) < 0)
        return r;
    if (accepted && ((r = want_time(o, path, "witnessed_at")) < 0 ||
                     (r = want_hash(o, path, "receipt_statement_hash", false, &v)) < 0))
        return r;
    return 0;
}

static int check_fork_statement(const cJSON *s, const char **ret_reason)
{
    static const char *const names[] = {
        "kind",
        "witness_id",
        "tenant_id",
        "stream_id",
        "reason",
        "result",
        "detected_by",
        "detected_at",
        "conflicting_checkpoints",
        "accepted_checkpoint",
        "submitted_checkpoint",
    };
    static const char *const pair_names[] = {"checkpoint_id", "checkpoint_head_hash"};
    const char *v, *reason, *path = "statement";
    Cp acc, sub;
    int r;
    if ((r = exact_members(s, path, names, ELEMENTSOF(names))) < 0 ||
        (r = want_id(s, path, "witness_id", &v)) < 0 ||
        (r = want_id(s, path, "tenant_id", &v)) < 0 ||
        (r = want_id(s, path, "stream_id", &v)) < 0 ||
        (r = want_str(s, path, "reason", &reason)) < 0 || (r = want_str(s, path, "result", &v)) < 0)
        return r;
    if (strcmp(v, FORK_RESULT) != 0)
        return lv_error_set(LV_ERR_INPUT, "statement.result: must be \"%s\"", FORK_RESULT);
    if ((r = want_str(s, path, "detected_by", &v)) < 0 ||
        (r = want_time(s, path, "detected_at")) < 0 ||
        (r = check_checkpoint(cJSON_GetObjectItemCaseSensitive(s, "accepted_checkpoint"),
                              "statement.accepted_checkpoint", true, &acc)) < 0 ||
        (r = check_checkpoint(cJSON_GetObjectItemCaseSensitive(s, "submitted_checkpoint"),
                              "statement.submitted_checkpoint", false, &sub)) < 0)
        return r;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(s, "conflicting_checkpoints");
    if (!cJSON_IsArray(list) || cJSON_GetArraySize(list) != 2)
        return lv_error_set(LV_ERR_INPUT, "statement.conflicting_checkpoints: must list the "
                                          "accepted and the submitted checkpoint");
    const Cp *both[2] = {&acc, &sub};
    for (int i = 0; i < 2; i++) {
        const cJSON *e = cJSON_GetArrayItem(list, i);
        char p[64];
        snprintf(p, sizeof(p), "statement.conflicting_checkpoints[%d]", i);
        if ((r = exact_members(e, p, pair_names, 2)) < 0)
            return r;
        const char *id = get_str(e, "checkpoint_id"), *h = get_str(e, "checkpoint_head_hash");
        if (!id || !h || strcmp(id, both[i]->id) != 0 || strcmp(h, both[i]->hash) != 0)
            return lv_error_set(LV_ERR_INPUT, "%s: does not match the %s checkpoint", p,
                                i == 0 ? "accepted" : "submitted");
    }
    /* The evidence must show what its reason claims. */
    bool shows;
    if (strcmp(reason, "conflicting_checkpoint") == 0)
        shows = sub.seq == acc.seq && strcmp(sub.hash, acc.hash) != 0;
    else if (strcmp(reason, "stale_checkpoint") == 0)
        shows = sub.seq < acc.seq;
    else if (strcmp(reason, "divergent_history") == 0)
        shows = sub.seq == acc.seq + 1 && (!sub.prev || strcmp(sub.prev, acc.hash) != 0);
    else
        return lv_error_set(LV_ERR_INPUT, "statement.reason: must be conflicting_checkpoint, "
                                          "stale_checkpoint or divergent_history");
    if (!shows)
        return lv_error_set(LV_ERR_INPUT, "statement: the checkpoints do not show a %s", reason);
    *ret_reason = reason;
    return 0;
}

bool witness_document_shape(const cJSON *doc)
{
    return cJSON_IsObject(doc) && cJSON_GetObjectItemCaseSensitive(doc, "statement") &&
           cJSON_GetObjectItemCaseSensitive(doc, "statement_hash") &&
           cJSON_GetObjectItemCaseSensitive(doc, "signature") &&
           cJSON_GetObjectItemCaseSensitive(doc, "public_key");
}

int witness_verify_document(const char *text, size_t len, const uint8_t *expected_pk,
                            cJSON **ret_summary)
{
    static const char *const doc_names[] = {"result", "statement", "statement_hash", "signature",
                                            "public_key"};
    static const char *const sig_names[] = {"alg", "kid", "signature"};
    static const char *const pk_names[] = {"alg", "kid", "public_key_hex", "public_key_pem"};
    _cleanup_cjson_ cJSON *doc = NULL;
    int r = canon_parse(text, len, WITNESS_DOCUMENT_MAX, "document", &doc);
    if (r < 0)
        return r;
    if ((r = exact_members(doc, "document", doc_names, ELEMENTSOF(doc_names))) < 0)
        return r;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(doc, "statement");
    const cJSON *sig = cJSON_GetObjectItemCaseSensitive(doc, "signature");
    const cJSON *pko = cJSON_GetObjectItemCaseSensitive(doc, "public_key");
    const char *result, *kind, *sh, *v, *sig_kid, *pk_kid, *sig_hex, *pk_hex, *pem;
    const char *reason = NULL;
    if ((r = want_str(doc, "document", "result", &result)) < 0 ||
        (r = want_hash(doc, "document", "statement_hash", false, &sh)) < 0)
        return r;
    if (!cJSON_IsObject(st))
        return lv_error_set(LV_ERR_INPUT, "statement: must be an object");
    if ((r = want_str(st, "statement", "kind", &kind)) < 0)
        return r;
    const char *domain;
    if (strcmp(kind, "witness_receipt") == 0) {
        if (strcmp(result, "accepted") != 0 && strcmp(result, "replayed") != 0)
            return lv_error_set(LV_ERR_INPUT, "result: a witness receipt must be \"accepted\" or "
                                              "\"replayed\"");
        domain = WITNESS_RECEIPT_DOMAIN;
        r = check_receipt_statement(st);
    } else if (strcmp(kind, "fork_evidence") == 0) {
        if (strcmp(result, "fork_evidence") != 0)
            return lv_error_set(LV_ERR_INPUT, "result: fork evidence must be \"fork_evidence\"");
        domain = WITNESS_FORK_DOMAIN;
        r = check_fork_statement(st, &reason);
    } else
        return lv_error_set(LV_ERR_INPUT, "statement.kind: must be witness_receipt or "
                                          "fork_evidence");
    if (r < 0)
        return r;
    if ((r = exact_members(sig, "signature", sig_names, ELEMENTSOF(sig_names))) < 0 ||
        (r = exact_members(pko, "public_key", pk_names, ELEMENTSOF(pk_names))) < 0 ||
        (r = want_str(sig, "signature", "alg", &v)) < 0)
        return r;
    if (strcmp(v, "Ed25519") != 0)
        return lv_error_set(LV_ERR_INPUT, "signature.alg: must be \"Ed25519\"");
    if ((r = want_str(pko, "public_key", "alg", &v)) < 0)
        return r;
    if (strcmp(v, "Ed25519") != 0)
        return lv_error_set(LV_ERR_INPUT, "public_key.alg: must be \"Ed25519\"");
    if ((r = want_str(sig, "signature", "kid", &sig_kid)) < 0 ||
        (r = want_str(pko, "public_key", "kid", &pk_kid)) < 0 ||
        (r = want_str(sig, "signature", "signature", &sig_hex)) < 0 ||
        (r = want_str(pko, "public_key", "public_key_hex", &pk_hex)) < 0 ||
        (r = want_str(pko, "public_key", "public_key_pem", &pem)) < 0)
        return r;
    if (strcmp(sig_kid, pk_kid) != 0)
        return lv_error_set(LV_ERR_CRYPTO, "signature.kid: differs from public_key.kid");
    uint8_t pk[32], pem_pk[32], sigb[64];
    if (!is_lower_hex(pk_hex, 64) || hex_decode(pk_hex, pk, 32) < 0)
        return lv_error_set(LV_ERR_INPUT, "public_key.public_key_hex: must be 64 lowercase hex "
                                          "digits");
    if (!is_lower_hex(sig_hex, 128) || hex_decode(sig_hex, sigb, 64) < 0)
        return lv_error_set(LV_ERR_INPUT, "signature.signature: must be 128 lowercase hex digits");
    if (pubkey_parse(pem, pem_pk) < 0 || !strstr(pem, "-----BEGIN PUBLIC KEY-----"))
        return lv_error_set(LV_ERR_INPUT, "public_key.public_key_pem: not a PEM Ed25519 "
                                          "SubjectPublicKeyInfo");
    if (memcmp(pk, pem_pk, 32) != 0)
        return lv_error_set(LV_ERR_CRYPTO, "public_key: the PEM and the hex name different keys");
    if (expected_pk && !lv_memeq(pk, expected_pk, 32))
        return lv_error_set(LV_ERR_CRYPTO, "public_key: not the expected witness key");

    _cleanup_free_ char *jcs = NULL;
    _cleanup_free_ uint8_t *msg = NULL;
    size_t jlen, mlen;
    if ((r = canon_serialize(st, &jcs, &jlen)) < 0)
        return r;
    char want[WITNESS_HASH_HEX_LEN + 1];
    lv_sha256_hex(jcs, jlen, want);
    if (strcmp(want, sh) != 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "statement_hash: is not the SHA-256 of the canonical "
                            "statement (%s)",
                            want);
    if ((r = pubkey_signed_message(domain, jcs, jlen, &msg, &mlen)) < 0)
        return r;
    if (pubkey_verify(pk, msg, mlen, sigb) < 0)
        return lv_error_set(LV_ERR_CRYPTO,
                            "signature: does not verify over \"%s\" 0x0A "
                            "JCS(statement) with public_key_hex",
                            domain);
    if (ret_summary) {
        cJSON *s = cJSON_CreateObject();
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(
            strcmp(kind, "witness_receipt") == 0
                ? st
                : cJSON_GetObjectItemCaseSensitive(st, "submitted_checkpoint"),
            "checkpoint_seq_no");
        if (!s || !cJSON_AddTrueToObject(s, "valid") || !add_str(s, "kind", kind) ||
            !add_str(s, "result", result) || !add_str(s, "witness_id", get_str(st, "witness_id")) ||
            !add_str(s, "tenant_id", get_str(st, "tenant_id")) ||
            !add_str(s, "stream_id", get_str(st, "stream_id")) ||
            !add_int(s, "checkpoint_seq_no", (int64_t)seq->valuedouble) ||
            (reason && !add_str(s, "reason", reason)) || !add_str(s, "statement_hash", sh) ||
            !add_str(s, "kid", pk_kid) || !add_str(s, "public_key_hex", pk_hex) ||
            !cJSON_AddBoolToObject(s, "key_pinned", expected_pk != NULL)) {
            cJSON_Delete(s);
            return -ENOMEM;
        }
        *ret_summary = s;
    }
    return 0;
}

static bool statement_kind_is(const cJSON *doc, const char *kind)
{
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(doc, "statement");
    const char *k = get_str(st, "kind");
    return witness_document_shape(doc) && k && strcmp(k, kind) == 0;
}

bool witness_receipt_match(const cJSON *doc)
{
    return statement_kind_is(doc, "witness_receipt");
}

bool witness_fork_match(const cJSON *doc)
{
    return statement_kind_is(doc, "fork_evidence");
}

int witness_verify_check(const char *text, size_t len, const uint8_t pk[32], cJSON *ret)
{
    _cleanup_cjson_ cJSON *summary = NULL;
    int r = witness_verify_document(text, len, pk, &summary);
    if (r < 0)
        return r;
    cJSON *m;
    while ((m = summary->child)) {
        cJSON_DetachItemViaPointer(summary, m);
        if (strcmp(m->string, "valid") == 0 || strcmp(m->string, "kind") == 0)
            cJSON_Delete(m);
        else
            cJSON_AddItemToObject(ret, m->string, m);
    }
    return 0;
}
