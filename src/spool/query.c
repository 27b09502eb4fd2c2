/* SPDX-License-Identifier: Apache-2.0 */
/* What the verbs read and change by hand: status, list, show, payload,
 * requeue, purge, the drain's pause, and the signing keys of the spool. */
#include "internal.h"

int spool_stats(Spool *s, SpoolStats *ret)
{
    SpoolStats out = {0};
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = db_prepare(s->db, "SELECT name, n FROM counts", &st);
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
        return db_error(s->db, rc, "counts");
    sqlite3_finalize(TAKE_PTR(st));
    r = db_prepare(s->db,
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
        return db_error(s->db, rc, "status");
    out.oldest_queued_ms = sqlite3_column_int64(st, 0);
    out.next_due_ms = sqlite3_column_int64(st, 1);
    db_column_copy(st, 2, out.last_error, sizeof(out.last_error));
    int64_t pause = sqlite3_column_int64(st, 3);
    if (pause > lv_now_ms()) {
        out.paused_until_ms = pause;
        db_column_copy(st, 4, out.pause_reason, sizeof(out.pause_reason));
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
    db_column_copy(st, 1, it->event_id, sizeof(it->event_id));
    db_column_copy(st, 2, it->stream_id, sizeof(it->stream_id));
    db_column_copy(st, 3, it->source_ref, sizeof(it->source_ref));
    db_column_copy(st, 4, it->event_type, sizeof(it->event_type));
    db_column_copy(st, 5, it->state, sizeof(it->state));
    it->attempts = sqlite3_column_int(st, 6);
    it->enqueued_ms = sqlite3_column_int64(st, 7);
    it->next_attempt_ms = sqlite3_column_int64(st, 8);
    it->last_attempt_ms = sqlite3_column_int64(st, 9);
    it->lease_expires_ms = sqlite3_column_int64(st, 10);
    it->receipted_ms = sqlite3_column_int64(st, 11);
    db_column_copy(st, 12, it->lease_owner, sizeof(it->lease_owner));
    db_column_copy(st, 13, it->envelope_hash, sizeof(it->envelope_hash));
    db_column_copy(st, 14, it->payload_hash, sizeof(it->payload_hash));
    it->last_error = db_column_dup(st, 15);
    it->receipt = db_column_dup(st, 16);
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
    int r = db_prepare(s->db, sql[(state ? 1 : 0) + (stream_id ? 2 : 0)], &st);
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
        return db_error(s->db, rc, "list");
    }
    *ret = out;
    *ret_n = n;
    return 0;
}

static int item_conflicts(Spool *s, int64_t id, int64_t *ret)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = db_prepare(s->db, "SELECT count(*) FROM conflicts WHERE item_id = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_ROW)
        return db_last_error(s->db, "conflicts");
    *ret = sqlite3_column_int64(st, 0);
    return 0;
}

int spool_get(Spool *s, const char *event_id, SpoolItemInfo *ret)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r = db_prepare(
        s->db, "SELECT " INFO_COLS ", envelope, dek_id FROM items WHERE event_id = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return lv_error_set(LV_ERR_INPUT, "%s: no such item in the spool", event_id);
    if (rc != SQLITE_ROW)
        return db_error(s->db, rc, "read item");
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
        r = spool_dek_load(s, sqlite3_column_int64(st, 19), &slot);
        if (r >= 0 || r == LV_ERR_CRYPTO)
            r = spool_unseal(s, "envelope", sqlite3_column_int64(st, 19), it.stream_id,
                             it.source_ref, it.envelope_hash, env, env_len, &it.envelope,
                             &it.envelope_len);
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
        int r = db_prepare(s->db, "SELECT id FROM items WHERE event_id = ?1", &st);
        if (r < 0)
            return r;
        sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
            return lv_error_set(LV_ERR_INPUT, "%s: no such item in the spool", event_id);
        if (rc != SQLITE_ROW)
            return db_error(s->db, rc, "read item");
        id = sqlite3_column_int64(st, 0);
    }
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    RowCheck c = {0};
    r = spool_row_check(s, id, true, &c);
    if (r == LV_ERR_CRYPTO) {
        char reason[512];
        snprintf(reason, sizeof(reason), "%s", lv_error());
        /* A row that could still be relayed is taken out of the flow; a
         * receipted one keeps its state (it was delivered intact). */
        if (strcmp(c.state, "queued") == 0 || strcmp(c.state, "relaying") == 0 ||
            strcmp(c.state, "dead_letter") == 0) {
            r = spool_quarantine(s, id, c.stream_id, c.event_id, reason);
            if (r >= 0)
                r = db_commit(s->db);
            if (r >= 0)
                r = lv_error_set(LV_ERR_CRYPTO, "%s: quarantined: %s", event_id, reason);
        } else {
            r = lv_error_set(LV_ERR_CRYPTO, "%s (%s): %s", event_id, c.state, reason);
        }
    } else if (r >= 0) {
        r = db_commit(s->db);
    }
    if (r < 0) {
        db_rollback(s->db);
        spool_row_check_done(&c);
        return r;
    }
    *ret = TAKE_PTR(c.payload);
    *ret_len = c.payload_len;
    spool_row_check_done(&c);
    return 0;
}

int spool_requeue(Spool *s, const char *event_id, size_t *ret_n)
{
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    size_t n = 0;
    int64_t now = lv_now_ms();
    if (event_id) {
        char stream_id[129] = "";
        {
            _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_REQUEUE_ONE);
            if (!st) {
                r = -EIO;
                goto done;
            }
            sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, now);
            int rc = sqlite3_step(st);
            if (rc == SQLITE_ROW) {
                db_column_copy(st, 0, stream_id, sizeof(stream_id));
                n = 1;
                rc = sqlite3_step(st);
            }
            if (rc != SQLITE_DONE) {
                r = db_error(s->db, rc, "requeue");
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
        r = spool_stream_refresh(s, stream_id);
    } else {
        /* Streams first (few), then one UPDATE for all items. */
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = db_prepare(s->db, "SELECT DISTINCT stream_id FROM items WHERE state = 'dead_letter'",
                       &st);
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
            streams[ns] = db_column_dup(st, 0);
            if (!streams[ns])
                r = -ENOMEM;
            else
                ns++;
        }
        if (r >= 0 && rc != SQLITE_DONE)
            r = db_error(s->db, rc, "requeue");
        if (r >= 0) {
            _cleanup_finalize_ sqlite3_stmt *up = NULL;
            r = db_prepare(s->db,
                           "UPDATE items SET state = 'queued', attempts = 0, next_attempt_at = ?1"
                           " WHERE state = 'dead_letter'",
                           &up);
            if (r >= 0) {
                sqlite3_bind_int64(up, 1, now);
                rc = sqlite3_step(up);
                if (rc != SQLITE_DONE)
                    r = db_error(s->db, rc, "requeue");
                n = (size_t)sqlite3_changes(db_handle(s->db));
            }
        }
        for (size_t i = 0; i < ns && r >= 0; i++)
            r = spool_stream_refresh(s, streams[i]);
        for (size_t i = 0; i < ns; i++)
            free(streams[i]);
        free(streams);
    }
    if (r >= 0)
        r = db_commit(s->db);
done:
    if (r < 0) {
        db_rollback(s->db);
        return r;
    }
    if (ret_n)
        *ret_n = n;
    return 0;
}

int spool_retry_now(Spool *s, const char *stream_id, size_t *ret_n)
{
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    int64_t now = lv_now_ms();
    size_t n = 0;
    /* Items first (the count), then the streams' schedule, which is what
     * drain-loop reads: a stream is due when its head is. A stream whose
     * head is being relayed has no due time and keeps none. */
    static const char *const sql[2][2] = {
        {"UPDATE items SET next_attempt_at = ?1 WHERE state = 'queued' AND next_attempt_at > ?1",
         "UPDATE items SET next_attempt_at = ?1 WHERE state = 'queued' AND next_attempt_at > ?1"
         " AND stream_id = ?2"},
        {"UPDATE streams SET due_at = ?1 WHERE due_at > ?1",
         "UPDATE streams SET due_at = ?1 WHERE due_at > ?1 AND stream_id = ?2"},
    };
    for (int i = 0; i < 2 && r >= 0; i++) {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = db_prepare(s->db, sql[i][stream_id != NULL], &st);
        if (r < 0)
            break;
        sqlite3_bind_int64(st, 1, now);
        if (stream_id)
            sqlite3_bind_text(st, 2, stream_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            r = db_error(s->db, rc, "retry-now");
        else if (i == 0)
            n = (size_t)sqlite3_changes(db_handle(s->db));
    }
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0) {
        db_rollback(s->db);
        return r;
    }
    if (ret_n)
        *ret_n = n;
    return 0;
}

int spool_purge(Spool *s, int64_t before_ms, size_t *ret_n)
{
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = db_prepare(s->db, "DELETE FROM items WHERE state = 'receipted' AND receipted_at < ?1", &st);
    if (r >= 0) {
        sqlite3_bind_int64(st, 1, before_ms);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE)
            r = db_error(s->db, rc, "purge");
    }
    size_t n = r >= 0 ? (size_t)sqlite3_changes(db_handle(s->db)) : 0;
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0) {
        db_rollback(s->db);
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
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    r = spool_meta_set(s, "pause_until", v, (size_t)n, true);
    if (r >= 0)
        r = spool_meta_set(s, "pause_reason", why, strlen(why), true);
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0)
        db_rollback(s->db);
    return r;
}

int spool_signing_keys(const char *path, SpoolKey **ret, size_t *ret_n)
{
    *ret = NULL;
    *ret_n = 0;
    if (access(path, F_OK) < 0 && errno == ENOENT)
        return -ENOENT;
    /* Read-only and never created: public-key must not make files. Nor
     * does it judge the file: a spool from before key rotation (or one not
     * set up yet) has no history, which is an empty list. */
    _cleanup_(db_closep) Db *db = NULL;
    DbOptions o = {.path = path, .label = "spool", .flags = DB_READONLY | DB_NO_SCHEMA};
    int r = db_open(&o, &db);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db_handle(db),
                                "SELECT kid, public_key, first_used_at, last_used_at FROM"
                                " signing_keys ORDER BY first_used_at, kid",
                                -1, &st, NULL);
    if (rc != SQLITE_OK) {
        if (strstr(sqlite3_errmsg(db_handle(db)), "no such table"))
            return 0;
        return db_error(db, rc, "read its signing keys");
    }
    SpoolKey *v = NULL;
    size_t n = 0;
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
        r = db_error(db, rc, "read its signing keys");
    if (r < 0) {
        free(v);
        return r;
    }
    *ret = v;
    *ret_n = n;
    return 0;
}
