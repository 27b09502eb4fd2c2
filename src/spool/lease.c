/* SPDX-License-Identifier: Apache-2.0 */
/* Leases: the due head of each stream, the next item of a stream held by
 * the same owner (rows checked on two threads), release and recovery of
 * expired leases. */
#include "internal.h"

#define LEASE_MAX 1024

void spool_leases_free(SpoolLease *l, size_t n)
{
    if (!l)
        return;
    for (size_t i = 0; i < n; i++)
        erase_and_free(l[i].body, l[i].body_len);
    free(l);
}

/* Expired leases (and, with owner, that owner's leases) back to queued. */
static int recover_locked(Spool *s, int64_t now_ms, const char *owner, size_t *ret_n)
{
    size_t n = 0, cap = 0;
    char **streams = NULL;
    int r = 0;
    {
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_EXPIRED);
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
            streams[n] = db_column_dup(st, 0);
            if (!streams[n]) {
                r = -ENOMEM;
                break;
            }
            n++;
        }
        if (r >= 0 && rc != SQLITE_DONE)
            r = db_error(s->db, rc, "recover leases");
    }
    for (size_t i = 0; i < n && r >= 0; i++)
        r = spool_stream_refresh(s, streams[i]);
    for (size_t i = 0; i < n; i++)
        free(streams[i]);
    free(streams);
    if (r >= 0 && ret_n)
        *ret_n = n;
    return r;
}

int spool_recover_expired(Spool *s, int64_t now_ms, size_t *ret_n)
{
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    r = recover_locked(s, now_ms, NULL, ret_n);
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0)
        db_rollback(s->db);
    return r;
}

int spool_release_leases(Spool *s, const char *owner)
{
    if (!owner)
        return lv_error_set(LV_ERR_INPUT, "release: owner missing");
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    /* now = 0: no lease has expired before the epoch; only owner's return. */
    r = recover_locked(s, 0, owner, NULL);
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0)
        db_rollback(s->db);
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
    int r = (!out || !cand) ? -ENOMEM : db_begin(s->db);
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
            _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_DUE);
            if (!st) {
                r = -EIO;
                break;
            }
            sqlite3_bind_int64(st, 1, now_ms);
            sqlite3_bind_int64(st, 2, (int64_t)(max - n));
            int rc;
            while ((rc = sqlite3_step(st)) == SQLITE_ROW && nc < max - n) {
                db_column_copy(st, 0, cand[nc].stream_id, sizeof(cand[nc].stream_id));
                cand[nc].head = sqlite3_column_int64(st, 1);
                nc++;
            }
            if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                r = db_error(s->db, rc, "due streams");
        }
        for (size_t i = 0; i < nc && r >= 0; i++) {
            RowCheck c = {0};
            r = spool_row_check(s, cand[i].head, false, &c);
            if (r == -ENOENT || (r >= 0 && strcmp(c.state, "queued") != 0)) {
                /* The stream table is behind the items; fix it, move on. */
                spool_row_check_done(&c);
                lv_error_clear();
                r = spool_stream_refresh(s, cand[i].stream_id);
                again = true;
                continue;
            }
            if (r == LV_ERR_CRYPTO) {
                r = spool_quarantine(s, cand[i].head, cand[i].stream_id, c.event_id, lv_error());
                spool_row_check_done(&c);
                again = true;
                continue;
            }
            if (r < 0) {
                spool_row_check_done(&c);
                break;
            }
            _cleanup_reset_ sqlite3_stmt *up = db_stmt(s->db, ST_LEASE);
            if (!up) {
                spool_row_check_done(&c);
                r = -EIO;
                break;
            }
            sqlite3_bind_int64(up, 1, cand[i].head);
            sqlite3_bind_text(up, 2, owner, -1, SQLITE_STATIC);
            sqlite3_bind_int64(up, 3, now_ms + lease_ms);
            int rc = sqlite3_step(up);
            if (rc != SQLITE_DONE) {
                spool_row_check_done(&c);
                r = db_error(s->db, rc, "lease item");
                break;
            }
            _cleanup_reset_ sqlite3_stmt *busy = db_stmt(s->db, ST_STREAM_BUSY);
            if (!busy) {
                spool_row_check_done(&c);
                r = -EIO;
                break;
            }
            sqlite3_bind_text(busy, 1, cand[i].stream_id, -1, SQLITE_STATIC);
            rc = sqlite3_step(busy);
            if (rc != SQLITE_DONE) {
                spool_row_check_done(&c);
                r = db_error(s->db, rc, "mark stream busy");
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
            spool_row_check_done(&c);
        }
    }
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0) {
        db_rollback(s->db);
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
    _cleanup_reset_ sqlite3_stmt *up = db_stmt(s->db, ST_LEASE);
    if (!up)
        return -EIO;
    sqlite3_bind_int64(up, 1, id);
    sqlite3_bind_text(up, 2, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(up, 3, until);
    int rc = sqlite3_step(up);
    if (rc != SQLITE_DONE)
        return db_error(s->db, rc, "lease item");
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
        x->r = spool_row_verify(v->s, false, &x->c);
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
    int r = db_begin(s->db);
    if (r < 0)
        goto out;
    /* 1. SQL: which successors are due, and their rows. */
    for (size_t i = 0; i < n && r >= 0; i++) {
        {
            /* Only behind an item this owner still holds: its lease is
             * what keeps the stream to one sender. */
            _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_HELD);
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
                r = db_error(s->db, rc, "lease held");
                break;
            }
        }
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_NEXT);
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
            r = db_error(s->db, rc, "next item");
            break;
        }
        int64_t id = sqlite3_column_int64(st, 0);
        bool queued = strcmp((const char *)sqlite3_column_text(st, 1), "queued") == 0;
        if (!queued || sqlite3_column_int64(st, 2) > now_ms)
            continue;
        db_stmt_resetp(&st);
        rows[i].id = id;
        r = spool_row_read(s, id, &rows[i].c);
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
            r = spool_quarantine(s, x->id, req[i].stream_id, x->c.event_id, x->reason);
        } else {
            r = lv_error_set(x->r, "%s", x->reason);
        }
    }
done:
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0) {
        db_rollback(s->db);
        for (size_t i = 0; i < n; i++)
            if (req[i].found) {
                erase_and_free(req[i].lease.body, req[i].lease.body_len);
                req[i].lease.body = NULL;
                req[i].found = false;
            }
    }
out:
    for (size_t i = 0; i < n; i++)
        spool_row_check_done(&rows[i].c);
    free(rows);
    return r;
}

int spool_release_lease(Spool *s, int64_t id, const char *owner)
{
    if (!owner)
        return lv_error_set(LV_ERR_INPUT, "release: owner missing");
    int r = db_begin(s->db);
    if (r < 0)
        return r;
    char stream_id[129] = "";
    {
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_RELEASE_ONE);
        if (!st) {
            r = -EIO;
            goto done;
        }
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_text(st, 2, owner, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            db_column_copy(st, 0, stream_id, sizeof(stream_id));
            rc = sqlite3_step(st);
        }
        if (rc != SQLITE_DONE)
            r = db_error(s->db, rc, "release lease");
    }
    /* Not held any more (expired and taken): nothing of ours to return. */
    if (r >= 0 && stream_id[0])
        r = spool_stream_refresh(s, stream_id);
done:
    if (r >= 0)
        r = db_commit(s->db);
    if (r < 0)
        db_rollback(s->db);
    return r;
}
