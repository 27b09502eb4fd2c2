/* SPDX-License-Identifier: Apache-2.0 */
/* The spool's SQL: its migrations and the statements of its hot paths. */
#include "internal.h"

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
    /* 2 -> 3: the quota (docs/spool.md "Quota"). The bytes that items not
     * yet delivered (every state but receipted) hold in the file, their
     * envelope and sealed payload, counted by triggers as the states are,
     * so enqueue reads the spool's use in O(1). */
    "INSERT INTO counts VALUES ('held_bytes', (SELECT coalesce(sum(length(envelope) +"
    " length(payload)), 0) FROM items WHERE state <> 'receipted'));"
    "CREATE TRIGGER items_held_ins AFTER INSERT ON items WHEN NEW.state <> 'receipted' BEGIN"
    " UPDATE counts SET n = n + length(NEW.envelope) + length(NEW.payload)"
    " WHERE name = 'held_bytes'; END;"
    "CREATE TRIGGER items_held_del AFTER DELETE ON items WHEN OLD.state <> 'receipted' BEGIN"
    " UPDATE counts SET n = n - length(OLD.envelope) - length(OLD.payload)"
    " WHERE name = 'held_bytes'; END;"
    "CREATE TRIGGER items_held_upd AFTER UPDATE OF state, envelope, payload ON items"
    " WHEN (OLD.state = 'receipted') <> (NEW.state = 'receipted')"
    " OR (NEW.state <> 'receipted' AND (length(OLD.envelope) <> length(NEW.envelope)"
    " OR length(OLD.payload) <> length(NEW.payload))) BEGIN"
    " UPDATE counts SET n = n"
    " - CASE WHEN OLD.state <> 'receipted' THEN length(OLD.envelope) + length(OLD.payload)"
    " ELSE 0 END"
    " + CASE WHEN NEW.state <> 'receipted' THEN length(NEW.envelope) + length(NEW.payload)"
    " ELSE 0 END"
    " WHERE name = 'held_bytes'; END;",
    /* 3 -> 4: the wrap algorithm of each DEK by name, and the PKCS#11
     * mechanism that made the blob (docs/token.md), so that a spool moved to
     * a token with another id for RFC 5649 is unwrapped by algorithm, not by
     * id. Every earlier DEK was wrapped with CKM_AES_KEY_WRAP_PAD (0x210A)
     * on SoftHSM, where it is RFC 5649. */
    "ALTER TABLE deks ADD COLUMN wrap_alg TEXT NOT NULL DEFAULT 'rfc5649';"
    "ALTER TABLE deks ADD COLUMN wrap_mechanism INTEGER NOT NULL DEFAULT 8458;",
};
const char *const spool_statements[ST__MAX] = {
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
    /* Items not yet delivered and their stored bytes (the quota). */
    [ST_USAGE] = "SELECT coalesce(sum(n) FILTER (WHERE name IN ('queued','relaying','dead_letter',"
                 "'quarantined')), 0), coalesce(sum(n) FILTER (WHERE name = 'held_bytes'), 0)"
                 " FROM counts",
    [ST_MARK_DEAD] = "UPDATE items SET state = 'dead_letter', attempts = attempts + 1,"
                     " last_attempt_at = ?3, last_error = ?4, lease_owner = NULL,"
                     " lease_expires_at = NULL WHERE id = ?1 AND state = 'relaying'"
                     " AND lease_owner = ?2 RETURNING stream_id, event_id",
};

static const char *const tables[] = {"meta", "items", NULL};

const DbSchema spool_schema = {
    .kind = "spool",
    .application_id = 0, /* spools were made without one; a file that has one is not a spool */
    .migrations = migrations,
    .n_migrations = ELEMENTSOF(migrations),
    .tables = tables,
};
