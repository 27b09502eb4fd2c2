/* SPDX-License-Identifier: Apache-2.0 */
/* Outcomes of a delivery attempt: receipted, retry (or dead-letter when
 * the attempts run out), dead-letter; and the backoff schedule. */
#include "internal.h"

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
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    char stream_id[129] = "", event_id[300] = "";
    {
        /* Prepared once per spool: parsing the SQL cost more than running
         * it, once per delivered item. */
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, o->st);
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
            r = db_error(s->db, rc, "record outcome");
            goto done;
        }
        db_column_copy(st, 0, stream_id, sizeof(stream_id));
        db_column_copy(st, 1, event_id, sizeof(event_id));
        if (ret_state)
            db_column_copy(st, 2, ret_state, 16);
        rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) {
            r = db_error(s->db, rc, "record outcome");
            goto done;
        }
    }
    if (o->reason) {
        r = spool_note_error(s, event_id, o->reason);
        if (r < 0)
            goto done;
    }
    r = spool_stream_refresh(s, stream_id);
    if (r >= 0)
        r = db_commit(s->db);
done:
    if (r < 0)
        db_rollback(s->db);
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
