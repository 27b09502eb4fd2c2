/* SPDX-License-Identifier: Apache-2.0 */
/* The streams table: each stream's head (its oldest undelivered item) and
 * when it is due, so that leasing never scans the queued items. */
#include "internal.h"

/* Recomputes a stream's head and due time after its items changed state. */
int spool_stream_refresh(Spool *s, const char *stream_id)
{
    int64_t head = 0, due = 0;
    bool queued = false, inflight = false;
    {
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_HEAD);
        if (!st)
            return -EIO;
        sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            head = sqlite3_column_int64(st, 0);
            queued = strcmp((const char *)sqlite3_column_text(st, 1), "queued") == 0;
            due = sqlite3_column_int64(st, 2);
        } else if (rc != SQLITE_DONE) {
            return db_error(s->db, rc, "stream head");
        }
    }
    if (head && queued) {
        /* Only an item requeued from dead_letter behind one in flight can
         * make the head queued while another item of the stream relays. */
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_INFLIGHT);
        if (!st)
            return -EIO;
        sqlite3_bind_text(st, 1, stream_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW)
            inflight = true;
        else if (rc != SQLITE_DONE)
            return db_error(s->db, rc, "stream in flight");
    }
    _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_STREAM_SET);
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
    return rc == SQLITE_DONE ? 0 : db_error(s->db, rc, "stream update");
}
