/* SPDX-License-Identifier: Apache-2.0 */
/* Key rotation: a new current DEK, re-sealing rows under it (rekey) and
 * rewrapping every DEK under a new KEK. */
#include "internal.h"

int spool_rotate_dek(Spool *s, int64_t *ret_id)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "rotate: the spool was opened without the token");
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    int64_t next = 0;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = db_prepare(s->db, "SELECT coalesce(max(id), 0) + 1, count(*) FROM deks", &st);
        if (r >= 0 && sqlite3_step(st) != SQLITE_ROW)
            r = db_last_error(s->db, "read DEKs");
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
        r = spool_dek_new(s, next);
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0) {
        db_rollback(s->db);
        return r;
    }
    s->cur_dek = next;
    unsigned slot;
    r = spool_dek_load(s, next, &slot);
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
    int r = spool_dek_current(s, &cur);
    if (r < 0 && r != -ENOENT)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = db_prepare(s->db,
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
        return db_error(s->db, rc, "list DEKs");
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
    db_column_copy(row, 1, stream_id, sizeof(stream_id));
    db_column_copy(row, 2, source_ref, sizeof(source_ref));
    db_column_copy(row, 3, envelope_hash, sizeof(envelope_hash));
    bool sealed = sqlite3_column_int(row, 4) != 0;
    int64_t dek_id = sqlite3_column_int64(row, 7);
    char *payload = NULL, *env = NULL;
    size_t payload_len = 0, env_len = 0;
    uint8_t *prow = NULL, *erow = NULL;
    size_t prow_len = 0, erow_len = 0;
    unsigned slot;
    int r = spool_dek_load(s, dek_id, &slot);
    if (r == LV_ERR_CRYPTO)
        lv_error_clear();
    if (r >= 0 || r == LV_ERR_CRYPTO)
        r = spool_unseal(s, "payload", dek_id, stream_id, source_ref, envelope_hash,
                         sqlite3_column_blob(row, 6), (size_t)sqlite3_column_bytes(row, 6),
                         &payload, &payload_len);
    if (r >= 0 && sealed)
        r = spool_unseal(s, "envelope", dek_id, stream_id, source_ref, envelope_hash,
                         sqlite3_column_blob(row, 5), (size_t)sqlite3_column_bytes(row, 5), &env,
                         &env_len);
    if (r >= 0)
        r = spool_seal(s, "payload", stream_id, source_ref, envelope_hash, payload, payload_len,
                       &prow, &prow_len);
    if (r >= 0 && sealed)
        r = spool_seal(s, "envelope", stream_id, source_ref, envelope_hash, env, env_len, &erow,
                       &erow_len);
    if (r >= 0) {
        _cleanup_finalize_ sqlite3_stmt *up = NULL;
        r = db_prepare(
            s->db,
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
                r = db_error(s->db, rc, "re-seal item");
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
    int r = spool_dek_refresh(s);
    if (r < 0)
        return r;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = db_prepare(s->db, "SELECT count(*) FROM items WHERE dek_id <> ?1", &st);
        if (r < 0)
            return r;
        sqlite3_bind_int64(st, 1, s->cur_dek);
        if (sqlite3_step(st) != SQLITE_ROW)
            return db_last_error(s->db, "count rows to rekey");
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
        r = db_begin(s->db);
        if (r < 0)
            return r;
        r = spool_dek_refresh(s);
        size_t got = 0;
        if (r >= 0) {
            _cleanup_finalize_ sqlite3_stmt *st = NULL;
            r = db_prepare(s->db,
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
                r = db_error(s->db, rc, "read rows to rekey");
        }
        if (r >= 0)
            r = db_commit(s->db);
        if (r < 0) {
            db_rollback(s->db);
            return r;
        }
        if (progress)
            progress(userdata, res.rekeyed + res.unreadable, res.total);
        if (got < batch)
            break;
    }
    /* DEKs no row names any more retire: their wrapped blobs are deleted
     * and their session keys destroyed. */
    r = db_begin(s->db);
    if (r < 0)
        return r;
    int64_t retired[TOKEN_DEK_SLOTS * 4];
    size_t n_retired = 0;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL;
        r = db_prepare(s->db,
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
                r = db_error(s->db, rc, "retire DEKs");
        }
    }
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0) {
        db_rollback(s->db);
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
        r = db_prepare(s->db, "SELECT count(*) FROM deks", &st);
        if (r < 0)
            return r;
        if (sqlite3_step(st) != SQLITE_ROW)
            return db_last_error(s->db, "count DEKs");
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
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    size_t n = 0;
    {
        _cleanup_finalize_ sqlite3_stmt *st = NULL, *up = NULL;
        r = db_prepare(s->db, "SELECT id, wrapped FROM deks ORDER BY id", &st);
        if (r >= 0)
            r = db_prepare(s->db,
                           "UPDATE deks SET wrapped = ?2, wrap_alg = ?3, wrap_mechanism = ?4"
                           " WHERE id = ?1",
                           &up);
        const TokenMechanism *wm = token_mechanism(s->tok, TOKEN_ROLE_WRAP);
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
            sqlite3_bind_text(up, 3, wm->algorithm, -1, SQLITE_STATIC);
            sqlite3_bind_int64(up, 4, (sqlite3_int64)wm->mechanism);
            int urc = sqlite3_step(up);
            if (urc != SQLITE_DONE)
                r = db_error(s->db, urc, "store rewrapped DEK");
            n++;
        }
        if (r >= 0 && rc != SQLITE_DONE && rc != SQLITE_ROW)
            r = db_error(s->db, rc, "read DEKs");
    }
    /* All or nothing: a DEK left under the old KEK beside others under the
     * new one would make the spool unreadable with either. */
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
