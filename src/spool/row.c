/* SPDX-License-Identifier: Apache-2.0 */
/* A stored row read and proved to be what this spool wrote (decryption on
 * the token, hashes, the envelope's fields), and quarantine for one that is
 * not. */
#include "internal.h"

#include "envelope.h"

int spool_quarantine(Spool *s, int64_t id, const char *stream_id, const char *event_id,
                     const char *reason)
{
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    int r =
        db_prepare(s->db,
                   "UPDATE items SET state = 'quarantined', last_error = ?2, lease_owner = NULL,"
                   " lease_expires_at = NULL WHERE id = ?1",
                   &st);
    if (r < 0)
        return r;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_text(st, 2, reason, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return db_error(s->db, rc, "quarantine item");
    r = spool_note_error(s, event_id, reason);
    if (r < 0)
        return r;
    return spool_stream_refresh(s, stream_id);
}

void spool_row_check_done(RowCheck *c)
{
    erase_and_free(c->body, c->body_len);
    erase_and_free(c->payload, c->payload_len);
    free(c->env);
    free(c->prow);
    c->body = c->payload = NULL;
    c->env = c->prow = NULL;
}

/* Reads row id's columns for verify_row (SQL only). */
int spool_row_read(Spool *s, int64_t id, RowCheck *c)
{
    _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_ROW);
    if (!st)
        return -EIO;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
        return lv_error_set(-ENOENT, "item %lld vanished", (long long)id);
    if (rc != SQLITE_ROW)
        return db_error(s->db, rc, "read item");
    db_column_copy(st, 0, c->state, sizeof(c->state));
    db_column_copy(st, 1, c->event_id, sizeof(c->event_id));
    db_column_copy(st, 2, c->stream_id, sizeof(c->stream_id));
    db_column_copy(st, 3, c->source_ref, sizeof(c->source_ref));
    db_column_copy(st, 4, c->payload_hash, sizeof(c->payload_hash));
    db_column_copy(st, 5, c->envelope_hash, sizeof(c->envelope_hash));
    c->attempts = sqlite3_column_int(st, 9);
    c->dek_id = sqlite3_column_int64(st, 10);
    /* The row's DEK is unwrapped here, where SQL may run, so that
     * verify_row needs none. An unknown DEK fails verify_row instead. */
    unsigned slot;
    int lr = spool_dek_load(s, c->dek_id, &slot);
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
int spool_row_verify(Spool *s, bool want_payload, RowCheck *c)
{
    if (!is_lower_hex(c->envelope_hash, 64) || !is_lower_hex(c->payload_hash, 64))
        return lv_error_set(LV_ERR_CRYPTO, "row_format_invalid: stored hashes are malformed");
    char *body = NULL, *payload = NULL;
    size_t body_len = 0, payload_len = 0;
    int r;
    if (c->sealed) {
        r = spool_unseal(s, "envelope", c->dek_id, c->stream_id, c->source_ref, c->envelope_hash,
                         c->env, c->env_len, &body, &body_len);
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
    r = spool_unseal(s, "payload", c->dek_id, c->stream_id, c->source_ref, c->envelope_hash,
                     c->prow, c->prow_len, &payload, &payload_len);
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
int spool_row_check(Spool *s, int64_t id, bool want_payload, RowCheck *rc_out)
{
    int r = spool_row_read(s, id, rc_out);
    if (r >= 0)
        r = spool_row_verify(s, want_payload, rc_out);
    return r;
}
