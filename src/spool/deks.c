/* SPDX-License-Identifier: Apache-2.0 */
/* The spool's data keys: wrapped in the deks table, unwrapped into the
 * token's slots on demand. */
#include "internal.h"

int spool_dek_current(Spool *s, int64_t *ret)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r =
        db_prepare(s->db, "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'current_dek'", &st);
    if (r < 0)
        return r;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return -ENOENT;
    if (rc != SQLITE_ROW)
        return db_error(s->db, rc, "read current DEK");
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
    int r = db_prepare(s->db, "SELECT wrapped, wrap_alg FROM deks WHERE id = ?1", &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return lv_error_set(LV_ERR_CRYPTO, "row_dek_unknown: DEK %lld is not in the spool",
                            (long long)id);
    if (rc != SQLITE_ROW)
        return db_error(s->db, rc, "read DEK");
    /* Unwrapped by algorithm, with whatever id this token gives it. */
    const char *alg = (const char *)sqlite3_column_text(st, 1);
    if (!alg || strcmp(alg, TOKEN_WRAP_ALG) != 0)
        return lv_error_set(-EUCLEAN,
                            "spool %s: data key %lld is wrapped with '%.32s', which this version "
                            "cannot unwrap (it knows %s)",
                            s->path, (long long)id, alg ? alg : "(null)", TOKEN_WRAP_ALG);
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

int spool_dek_load(Spool *s, int64_t id, unsigned *ret_slot)
{
    pthread_mutex_lock(&s->dek_lock);
    int r = load_dek_locked(s, id, ret_slot);
    pthread_mutex_unlock(&s->dek_lock);
    return r;
}

/* The slot of a DEK already loaded (no SQL: verify_row runs on threads);
 * every caller that reads a row loads its DEK first (read_row). */
int spool_dek_find(Spool *s, int64_t id, unsigned *ret_slot)
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

int spool_dek_new(Spool *s, int64_t id)
{
    uint8_t wrapped[TOKEN_WRAPPED_DEK_LEN];
    int r = token_dek_create(s->tok, wrapped);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = db_prepare(s->db,
                   "INSERT INTO deks(id, wrapped, created_at, wrap_alg, wrap_mechanism)"
                   " VALUES (?1, ?2, ?3, ?4, ?5)",
                   &st);
    if (r < 0)
        return r;
    const TokenMechanism *wm = token_mechanism(s->tok, TOKEN_ROLE_WRAP);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_blob(st, 2, wrapped, sizeof(wrapped), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, lv_now_ms());
    sqlite3_bind_text(st, 4, wm->algorithm, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)wm->mechanism);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return db_error(s->db, rc, "store new DEK");
    _cleanup_finalize_ sqlite3_stmt *m = NULL;
    r = db_prepare(s->db, "INSERT OR REPLACE INTO meta(key, value) VALUES ('current_dek', ?1)", &m);
    if (r < 0)
        return r;
    sqlite3_bind_int64(m, 1, id);
    rc = sqlite3_step(m);
    return rc == SQLITE_DONE ? 0 : db_error(s->db, rc, "set current DEK");
}

/* The current DEK (made on first use) and every other DEK rows still name. */
int spool_deks_load(Spool *s)
{
    int64_t cur = 0;
    int r = spool_dek_current(s, &cur);
    if (r == -ENOENT) {
        cur = 1;
        r = spool_dek_new(s, cur);
    }
    if (r < 0)
        return r;
    s->cur_dek = cur;
    unsigned slot;
    r = spool_dek_load(s, cur, &slot);
    if (r < 0)
        return r;
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = db_prepare(s->db, "SELECT id FROM deks WHERE id <> ?1 ORDER BY id DESC", &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, cur);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        r = spool_dek_load(s, sqlite3_column_int64(st, 0), &slot);
        if (r < 0)
            return r;
    }
    return rc == SQLITE_DONE ? 0 : db_error(s->db, rc, "read DEKs");
}

/* Another process may have rotated the DEK since this spool was opened:
 * rows are always sealed with the DEK current at their commit. Called
 * inside the write transaction. */
int spool_dek_refresh(Spool *s)
{
    int64_t cur = 0;
    int r = spool_dek_current(s, &cur);
    if (r < 0)
        return r == -ENOENT ? lv_error_set(-EUCLEAN, "spool %s: no current DEK", s->path) : r;
    s->cur_dek = cur;
    unsigned slot;
    return spool_dek_load(s, cur, &slot);
}
