/* SPDX-License-Identifier: Apache-2.0 */
/* The witness's storage: its SQLite schema, opening, and reading and
 * writing checkpoints, heads and fork evidence. */
#include "internal.h"

#include <sys/stat.h>

enum {
    Q_HEAD,
    Q_CHECKPOINT,
    Q_INSERT_CHECKPOINT,
    Q_INSERT_HEAD,
    Q_ADVANCE_HEAD,
    Q_FIND_FORK,
    Q_INSERT_FORK,
    Q_COUNT_STREAMS,
    Q_DAY_STATEMENTS,
    Q_DAY_ADD,
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
    [Q_COUNT_STREAMS] = "SELECT count(*) FROM heads WHERE witness_id=?1 AND tenant_id=?2",
    [Q_DAY_STATEMENTS] = "SELECT statements FROM tenant_days "
                         "WHERE witness_id=?1 AND tenant_id=?2 AND day=?3",
    [Q_DAY_ADD] = "INSERT INTO tenant_days (witness_id, tenant_id, day, statements) "
                  "VALUES (?1, ?2, ?3, 1) ON CONFLICT DO UPDATE SET statements = statements + 1",
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
    " BEGIN SELECT RAISE(ABORT, 'fork evidence is append-only'); END;"
    "INSERT INTO meta VALUES ('created_at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));";

/* Schema 2: statements stored per tenant and UTC day, so that a tenant's
 * daily quota (witness-serve's tenants file) is one row away, counted from
 * the history already stored. */
static const char schema_v2[] =
    "CREATE TABLE tenant_days ("
    " witness_id TEXT NOT NULL, tenant_id TEXT NOT NULL,"
    " day TEXT NOT NULL CHECK (length(day) = 10),"
    " statements INTEGER NOT NULL CHECK (statements >= 0),"
    " PRIMARY KEY (witness_id, tenant_id, day)) WITHOUT ROWID;"
    "INSERT INTO tenant_days (witness_id, tenant_id, day, statements)"
    " SELECT witness_id, tenant_id, day, count(*) FROM ("
    "  SELECT witness_id, tenant_id, substr(witnessed_at, 1, 10) AS day FROM checkpoints"
    "  UNION ALL"
    "  SELECT witness_id, tenant_id, substr(detected_at, 1, 10) FROM fork_evidence)"
    " GROUP BY witness_id, tenant_id, day;";

/* Schema 3: the state anchored on the token (anchor.c). The database's
 * random id (SQLite's randomblob draws from the OS), the generation of the
 * last committed batch, the digest chaining every statement stored since,
 * the digest one generation before (to roll the anchor forward), the
 * digest of every generation (to tell that a later anchor descends from a
 * batch), and the signed records of deliberate re-anchoring, append-only. */
static const char schema_v3[] =
    "INSERT OR IGNORE INTO meta VALUES ('database_id', lower(hex(randomblob(16))));"
    "INSERT OR IGNORE INTO meta VALUES ('generation', '0');"
    "INSERT OR IGNORE INTO meta VALUES ('digest', "
    " '0000000000000000000000000000000000000000000000000000000000000000');"
    "INSERT OR IGNORE INTO meta VALUES ('previous_digest', "
    " '0000000000000000000000000000000000000000000000000000000000000000');"
    "CREATE TABLE IF NOT EXISTS generations (generation INTEGER PRIMARY KEY, digest TEXT NOT NULL"
    " CHECK (length(digest) = 64));"
    "INSERT OR IGNORE INTO generations VALUES (0, "
    " '0000000000000000000000000000000000000000000000000000000000000000');"
    "CREATE TABLE IF NOT EXISTS state_adoptions ("
    " id INTEGER PRIMARY KEY, adopted_at TEXT NOT NULL,"
    " statement_hash TEXT NOT NULL CHECK (length(statement_hash) = 64),"
    " document TEXT NOT NULL);"
    "CREATE TRIGGER IF NOT EXISTS state_adoptions_no_update BEFORE UPDATE ON state_adoptions"
    " BEGIN SELECT RAISE(ABORT, 'state adoptions are append-only'); END;"
    "CREATE TRIGGER IF NOT EXISTS state_adoptions_no_delete BEFORE DELETE ON state_adoptions"
    " BEGIN SELECT RAISE(ABORT, 'state adoptions are append-only'); END;";

/* migrations[i] takes user_version i to i+1; later versions append a step.
 * Schema 3 is idempotent (OR IGNORE, IF NOT EXISTS): it may run again over
 * its own tables when an earlier step is re-applied. */
static const char *const migrations[] = {schema_v1, schema_v2, schema_v3};
/* Tables every version has (db.h): tenant_days came with schema 2. */
static const char *const tables[] = {"checkpoints", "heads", "fork_evidence", NULL};

/* "LVWI": marks the file as a witness database, so that a spool database (or
 * any other SQLite file) given as --witness-db is refused, not reused. */
static const DbSchema schema = {
    .kind = "witness",
    .application_id = 0x4C565749,
    .migrations = migrations,
    .n_migrations = ELEMENTSOF(migrations),
    .tables = tables,
};

const DbSchema *witness_db_schema(void)
{
    return &schema;
}

int witness_open(const char *path, unsigned flags, Witness **ret)
{
    bool ro = flags & WITNESS_OPEN_READONLY;
    Witness *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    /* Refuses a file that others could rewrite: the witness's history is
     * its whole value. */
    DbOptions o = {
        .path = path,
        .label = "witness database",
        .flags = ro ? DB_READONLY : DB_CREATE,
        .schema = &schema,
        .refuse_mode = S_IWGRP | S_IWOTH,
        .refuse_error = -EPERM,
        .missing_hint = "nothing witnessed yet?",
        .statements = queries,
        .n_statements = _Q_MAX,
    };
    int r = db_open(&o, &w->db);
    if (r < 0) {
        free(w);
        return r;
    }
    w->path = db_path(w->db);
    *ret = w;
    return 0;
}

int witness_open_reader(const Witness *w, Witness **ret)
{
    Witness *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    int e = db_open_reader(w->db, &r->db);
    if (e < 0) {
        free(r);
        return e;
    }
    r->path = db_path(r->db);
    *ret = r;
    return 0;
}

Witness *witness_close(Witness *w)
{
    if (!w)
        return NULL;
    db_close(w->db);
    witness_verifier_free(w->verifier);
    free(w->pk_json);
    free(w->anchored);
    free(w);
    return NULL;
}

int witness_ping(Witness *w)
{
    int64_t v;
    return db_query_int(w->db, "PRAGMA user_version", &v);
}

void witness_row_done(Row *r)
{
    free(r->receipt);
    r->receipt = NULL;
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

int witness_store_head(Witness *w, const char *witness_id, const char *tenant_id,
                       const char *stream_id, int64_t *ret_seq)
{
    sqlite3_stmt *s = db_stmt(w->db, Q_HEAD);
    if (!s)
        return db_last_error(w->db, "prepare");
    bind_key(s, witness_id, tenant_id, stream_id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(s);
        return -ENOENT;
    }
    if (rc != SQLITE_ROW)
        return db_error(w->db, rc, "read head");
    *ret_seq = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (*ret_seq < 0 || *ret_seq > WITNESS_MAX_SEQ)
        return lv_error_set(-EIO, "witness database %s: head of %s/%s out of range", w->path,
                            tenant_id, stream_id);
    return 0;
}

int witness_store_row(Witness *w, const char *witness_id, const char *tenant_id,
                      const char *stream_id, int64_t seq, Row *ret)
{
    sqlite3_stmt *s = db_stmt(w->db, Q_CHECKPOINT);
    if (!s)
        return db_last_error(w->db, "prepare");
    bind_key(s, witness_id, tenant_id, stream_id);
    sqlite3_bind_int64(s, 4, seq);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(s);
        return -ENOENT;
    }
    if (rc != SQLITE_ROW)
        return db_error(w->db, rc, "read checkpoint");
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
    int r = witness_store_head(w, witness_id, tenant_id, stream_id, &seq);
    if (r < 0)
        return r;
    if (ret_receipt) {
        Row row = {0};
        r = witness_store_row(w, witness_id, tenant_id, stream_id, seq, &row);
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
    int rc = sqlite3_prepare_v2(db_handle(w->db),
                                "SELECT document FROM fork_evidence "
                                "WHERE (?1 IS NULL OR tenant_id = ?1) AND "
                                "(?2 IS NULL OR stream_id = ?2) ORDER BY id",
                                -1, &s, NULL);
    if (rc != SQLITE_OK)
        return db_error(w->db, rc, "list fork evidence");
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
        r = db_error(w->db, rc, "list fork evidence");
    sqlite3_finalize(s);
    return r < 0 ? r : 0;
}

/* ---- the decision --------------------------------------------------------------------------- */

int witness_store_checkpoint(Witness *w, const char *witness_id, const WitnessRequest *req,
                             const char *witnessed_at, const char *statement_hash, const char *doc)
{
    sqlite3_stmt *s = db_stmt(w->db, Q_INSERT_CHECKPOINT);
    if (!s)
        return db_last_error(w->db, "prepare");
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
    return rc == SQLITE_DONE ? 0 : db_error(w->db, rc, "store checkpoint");
}

int witness_store_move_head(Witness *w, const char *witness_id, const WitnessRequest *req,
                            bool first)
{
    sqlite3_stmt *s = db_stmt(w->db, first ? Q_INSERT_HEAD : Q_ADVANCE_HEAD);
    if (!s)
        return db_last_error(w->db, "prepare");
    bind_key(s, witness_id, req->tenant_id, req->stream_id);
    sqlite3_bind_int64(s, 4, req->seq);
    int rc = sqlite3_step(s);
    bool changed = rc == SQLITE_DONE && sqlite3_changes(db_handle(w->db)) == 1;
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return db_error(w->db, rc, "move head");
    if (!changed)
        return lv_error_set(-EIO, "witness database %s: head of %s/%s did not move", w->path,
                            req->tenant_id, req->stream_id);
    return 0;
}

int witness_store_find_fork(Witness *w, const char *witness_id, const WitnessRequest *req,
                            const char *key, char **ret_doc)
{
    sqlite3_stmt *s = db_stmt(w->db, Q_FIND_FORK);
    if (!s)
        return db_last_error(w->db, "prepare");
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
        r = db_error(w->db, rc, "read fork evidence");
    sqlite3_reset(s);
    return r;
}

int witness_store_fork(Witness *w, const char *witness_id, const WitnessRequest *req,
                       WitnessReason reason, const Row *acc, const char *key,
                       const char *detected_at, const char *statement_hash, const char *doc)
{
    sqlite3_stmt *s = db_stmt(w->db, Q_INSERT_FORK);
    if (!s)
        return db_last_error(w->db, "prepare");
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
    return rc == SQLITE_DONE ? 0 : db_error(w->db, rc, "store fork evidence");
}

int witness_store_streams(Witness *w, const char *witness_id, const char *tenant_id, int64_t *ret)
{
    sqlite3_stmt *s = db_stmt(w->db, Q_COUNT_STREAMS);
    if (!s)
        return db_last_error(w->db, "prepare");
    sqlite3_bind_text(s, 1, witness_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, tenant_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *ret = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    return rc == SQLITE_ROW ? 0 : db_error(w->db, rc, "count streams");
}

/* The day's row: day is "YYYY-MM-DD" (the first 10 bytes of a statement's time). */
int witness_store_day(Witness *w, const char *witness_id, const char *tenant_id, const char *day,
                      bool add, int64_t *ret)
{
    sqlite3_stmt *s = db_stmt(w->db, add ? Q_DAY_ADD : Q_DAY_STATEMENTS);
    if (!s)
        return db_last_error(w->db, "prepare");
    char d[11];
    snprintf(d, sizeof(d), "%s", day);
    sqlite3_bind_text(s, 1, witness_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, tenant_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, d, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(s);
    if (!add && ret)
        *ret = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    if (add)
        return rc == SQLITE_DONE ? 0 : db_error(w->db, rc, "count statement");
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : db_error(w->db, rc, "read day");
}

/* What the table of DESIGN §7 decides for one request against the state w
 * shows, before anything is signed or written. */
