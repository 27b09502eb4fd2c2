/* SPDX-License-Identifier: Apache-2.0 */
/* Enqueue: validation, canonical payload, envelope signed and rows sealed
 * on a signing thread ahead of the inserts, idempotency and drift
 * (duplicate, conflict), group commit. */
#include "internal.h"

#include <inttypes.h>

#include "canon.h"
#include "envelope.h"

const char *spool_enqueue_status_name(SpoolEnqueueStatus st)
{
    switch (st) {
    case SPOOL_QUEUED:
        return "queued";
    case SPOOL_DUPLICATE:
        return "duplicate";
    case SPOOL_CONFLICT:
        return "conflict";
    }
    return "unknown";
}

static int check_id(const char *name, const char *v)
{
    if (!v)
        return lv_error_set(LV_ERR_INPUT, "%s: missing", name);
    if (!lv_valid_id(v))
        return lv_error_set(LV_ERR_INPUT, "%s: %s (must be 1-128 bytes of [A-Za-z0-9._:@/-])", name,
                            strlen(v) > 128 ? "longer than 128 bytes"
                                            : "forbidden character or empty");
    return 0;
}

int spool_item_check(const SpoolItemIn *it, char **ret_canon, size_t *ret_len)
{
    int r = check_id("stream_id", it->stream_id);
    if (r < 0)
        return r;
    r = check_id("source_ref", it->source_ref);
    if (r < 0)
        return r;
    if (it->event_type) {
        r = check_id("event_type", it->event_type);
        if (r < 0)
            return r;
    }
    if (!it->payload)
        return lv_error_set(LV_ERR_INPUT, "payload: missing");
    if (it->payload_len > SPOOL_MAX_PAYLOAD)
        return lv_error_set(LV_ERR_TOOBIG, "payload: %zu bytes, over the limit of %d bytes",
                            it->payload_len, SPOOL_MAX_PAYLOAD);
    _cleanup_cjson_erase_ cJSON *tree = NULL;
    r = canon_parse(it->payload, it->payload_len, SPOOL_MAX_PAYLOAD, "payload", &tree);
    if (r < 0)
        return r;
    if (!cJSON_IsObject(tree))
        return lv_error_set(LV_ERR_INPUT, "payload: must be a JSON object");
    char *c = NULL;
    size_t n = 0;
    r = canon_serialize(tree, &c, &n);
    if (r < 0)
        return r;
    /* Numbers such as 1e15 grow when written out; the cap holds for what is
     * stored and signed too. */
    if (n > SPOOL_MAX_PAYLOAD) {
        erase_and_free(c, n);
        return lv_error_set(LV_ERR_TOOBIG,
                            "payload: %zu bytes once canonical, over the limit of %d bytes", n,
                            SPOOL_MAX_PAYLOAD);
    }
    if (ret_canon) {
        *ret_canon = c;
        *ret_len = n;
    } else {
        erase_and_free(c, n);
    }
    return 0;
}

int spool_usage(Spool *s, SpoolUsage *ret)
{
    _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_USAGE);
    if (!st)
        return -EIO;
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
        return db_error(s->db, rc, "read the spool's use");
    *ret = (SpoolUsage){.items = sqlite3_column_int64(st, 0),
                        .bytes = sqlite3_column_int64(st, 1),
                        .quota_items = s->quota_items,
                        .quota_bytes = s->quota_bytes};
    return 0;
}

int spool_quota_check(Spool *s, size_t new_items, int64_t new_bytes, bool counted)
{
    if (new_items == 0 || (!s->quota_items && !s->quota_bytes))
        return 0;
    SpoolUsage u;
    int r = spool_usage(s, &u);
    if (r < 0)
        return r;
    int64_t items = u.items + (counted ? 0 : (int64_t)new_items);
    int64_t bytes = u.bytes + (counted ? 0 : new_bytes);
    if (s->quota_items && items > s->quota_items)
        return lv_error_set(LV_ERR_QUOTA,
                            "spool quota: %" PRId64 " items not yet delivered with these %zu, "
                            "over the limit of %" PRId64
                            " (--spool-max-items); nothing written: retry once the drain has "
                            "delivered items",
                            items, new_items, s->quota_items);
    if (s->quota_bytes && bytes > s->quota_bytes)
        return lv_error_set(LV_ERR_QUOTA,
                            "spool quota: %" PRId64 " bytes held by items not yet delivered with "
                            "these %zu, over the limit of %" PRId64
                            " (--spool-max-bytes); nothing written: retry once the drain has "
                            "delivered items",
                            bytes, new_items, s->quota_bytes);
    return 0;
}

typedef struct Prepared {
    char *canon;
    size_t canon_len;
    /* Built ahead by the signer thread (spool_enqueue) when presign: */
    bool presign;
    char *body;
    size_t body_len;
    EnvelopeIds ids;                /* handed back by envelope_build */
    uint8_t *payload_row, *env_row; /* sealed */
    size_t payload_row_len, env_row_len;
} Prepared;

static EnvelopeInput envelope_input(const Spool *s, const SpoolItemIn *it, const Prepared *p,
                                    int64_t now)
{
    return (EnvelopeInput){
        .installation_id = s->installation_id,
        .stream_id = it->stream_id,
        .source_ref = it->source_ref,
        .event_type = it->event_type ? it->event_type : ENVELOPE_DEFAULT_EVENT_TYPE,
        .payload_canon = p->canon,
        .payload_len = p->canon_len,
        .include_payload = s->include_payload,
        .spooled_at_ms = now,
    };
}

/* 1: an item with this event id is stored; 0: not; <0: error. */
static int item_stored(Spool *s, const char *event_id)
{
    _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_FIND);
    if (!st)
        return -EIO;
    sqlite3_bind_text(st, 1, event_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return 1;
    return rc == SQLITE_DONE ? 0 : db_error(s->db, rc, "look up item");
}

/* Everything of a new item that needs the token: the envelope and its
 * signature, the sealed payload (and the sealed body, with the opt-in
 * payload). No SQL, so the signer thread can run it. */
static int build_item(Spool *s, const SpoolItemIn *it, Prepared *p, int64_t now)
{
    EnvelopeInput ei = envelope_input(s, it, p, now);
    int r = envelope_build(s->tok, &ei, &p->body, &p->body_len, &p->ids);
    if (r >= 0)
        r = spool_seal(s, "payload", it->stream_id, it->source_ref, p->ids.envelope_hash, p->canon,
                       p->canon_len, &p->payload_row, &p->payload_row_len);
    /* With the opt-in payload the body holds the plaintext: seal it too. */
    if (r >= 0 && s->include_payload)
        r = spool_seal(s, "envelope", it->stream_id, it->source_ref, p->ids.envelope_hash, p->body,
                       p->body_len, &p->env_row, &p->env_row_len);
    return r;
}

static void prepared_done(Prepared *p)
{
    erase_and_free(p->body, p->body_len);
    free(p->payload_row);
    free(p->env_row);
    p->body = NULL;
    p->payload_row = p->env_row = NULL;
}

static int enqueue_one(Spool *s, const SpoolItemIn *it, const Prepared *p, int64_t now,
                       SpoolEnqueueResult *res)
{
    const char *event_type = it->event_type ? it->event_type : ENVELOPE_DEFAULT_EVENT_TYPE;
    /* The ids to look the item up by; a new item is stored under the ids
     * its envelope_build handed back, the ones it signed. */
    EnvelopeInput ei = envelope_input(s, it, p, now);
    EnvelopeIds want;
    envelope_ids(&ei, &want);
    const char *payload_hash = want.payload_hash;
    snprintf(res->event_id, sizeof(res->event_id), "%s", want.event_id);

    {
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_FIND);
        if (!st)
            return -EIO;
        sqlite3_bind_text(st, 1, res->event_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            int64_t item_id = sqlite3_column_int64(st, 0);
            const char *reason = NULL;
            if (strcmp((const char *)sqlite3_column_text(st, 1), it->stream_id) != 0)
                reason = "source_ref_in_other_stream";
            else if (strcmp((const char *)sqlite3_column_text(st, 2), event_type) != 0)
                reason = "event_type_differs";
            else if (strcmp((const char *)sqlite3_column_text(st, 3), payload_hash) != 0)
                reason = "payload_differs";
            db_column_copy(st, 4, res->envelope_hash, sizeof(res->envelope_hash));
            if (!reason) {
                res->status = SPOOL_DUPLICATE;
                return 0;
            }
            res->status = SPOOL_CONFLICT;
            _cleanup_reset_ sqlite3_stmt *ci = db_stmt(s->db, ST_CONFLICT);
            if (!ci)
                return -EIO;
            sqlite3_bind_int64(ci, 1, item_id);
            sqlite3_bind_text(ci, 2, res->event_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 3, it->stream_id, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 4, it->source_ref, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 5, reason, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 6, event_type, -1, SQLITE_STATIC);
            sqlite3_bind_text(ci, 7, payload_hash, -1, SQLITE_STATIC);
            sqlite3_bind_int64(ci, 8, now);
            rc = sqlite3_step(ci);
            return rc == SQLITE_DONE ? 0 : db_error(s->db, rc, "record conflict");
        }
        if (rc != SQLITE_DONE)
            return db_error(s->db, rc, "look up item");
    }

    /* The signer thread built the item already, or we build it here. */
    Prepared own = {.canon = p->canon, .canon_len = p->canon_len};
    const Prepared *b = p;
    int r = 0;
    if (!p->body) {
        r = build_item(s, it, &own, now);
        if (r < 0)
            goto done;
        b = &own;
    }
    memcpy(res->envelope_hash, b->ids.envelope_hash, sizeof(res->envelope_hash));
    {
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_INSERT);
        if (!st) {
            r = -EIO;
            goto done;
        }
        sqlite3_bind_text(st, 1, b->ids.event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, it->stream_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, it->source_ref, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, event_type, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 5, b->ids.payload_hash, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 6, res->envelope_hash, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 7, b->env_row ? 1 : 0);
        if (b->env_row)
            sqlite3_bind_blob(st, 8, b->env_row, (int)b->env_row_len, SQLITE_STATIC);
        else
            sqlite3_bind_blob(st, 8, b->body, (int)b->body_len, SQLITE_STATIC);
        sqlite3_bind_blob(st, 9, b->payload_row, (int)b->payload_row_len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 10, now);
        sqlite3_bind_int64(st, 11, s->cur_dek);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) {
            r = db_error(s->db, rc, "insert item");
            goto done;
        }
    }
    {
        _cleanup_reset_ sqlite3_stmt *st = db_stmt(s->db, ST_STREAM_ADD);
        if (!st) {
            r = -EIO;
            goto done;
        }
        sqlite3_bind_text(st, 1, it->stream_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, sqlite3_last_insert_rowid(db_handle(s->db)));
        sqlite3_bind_int64(st, 3, now);
        int rc = sqlite3_step(st);
        if (rc != SQLITE_DONE) {
            r = db_error(s->db, rc, "update stream");
            goto done;
        }
    }
    res->status = SPOOL_QUEUED;
    r = 0;
done:
    prepared_done(&own);
    return r;
}

/* Remembers the signing key that signs this spool's items, so that
 * `public-key` can list the earlier ones after a rotation. A kid that
 * already names another key would make signatures ambiguous: refused. */
static int record_signing_key(Spool *s, int64_t now)
{
    uint8_t pk[TOKEN_ED25519_PK_LEN];
    int r = token_public_key(s->tok, pk);
    if (r < 0)
        return r;
    const char *kid = token_key_id(s->tok);
    _cleanup_finalize_ sqlite3_stmt *st = NULL;
    r = db_prepare(s->db,
                   "INSERT INTO signing_keys(kid, public_key, first_used_at, last_used_at)"
                   " VALUES (?1, ?2, ?3, ?3) ON CONFLICT(kid) DO UPDATE SET last_used_at ="
                   " excluded.last_used_at WHERE signing_keys.public_key = excluded.public_key",
                   &st);
    if (r < 0)
        return r;
    sqlite3_bind_text(st, 1, kid, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, pk, sizeof(pk), SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now);
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE)
        return db_error(s->db, rc, "record signing key");
    if (sqlite3_changes(db_handle(s->db)) == 0)
        return lv_error_set(LV_ERR_INPUT,
                            "--key-id %s: this spool has items signed by another key under that "
                            "kid; a new signing key needs a new kid (unset --key-id, or give "
                            "another)",
                            kid);
    s->key_recorded = true;
    return 0;
}

/* Pipelining a batch: the token's C_Sign is the slowest step of an item, so
 * one thread does all of an item's token work (build and sign the envelope,
 * seal the rows), in order, while the caller's thread inserts the items
 * already built. All token calls stay on one thread: SoftHSM and OpenSSL 3
 * serialise concurrent operations on internal locks, so splitting them
 * across threads only adds contention. Both run inside the batch's one
 * transaction; nothing is committed before every item is stored. */
#define SIGNER_MIN_ITEMS 2
#define SIGNER_HANDOFF   32 /* items the caller takes over per wakeup, at most */

typedef struct Signer {
    Spool *s;
    const SpoolItemIn *items;
    Prepared *prep;
    size_t n;
    int64_t now;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t ready; /* prep[0..ready) are checked and marked: the signer may start */
    pthread_cond_t ready_cond;
    size_t done;       /* prep[0..done) are settled (built, or not to be built) */
    size_t want;       /* the caller sleeps until done > want: woken once per handoff */
    int error;         /* the first failure; the signer stops there */
    size_t failed_at;  /* the item that failed */
    char detail[1024]; /* its lv_error(), which is thread-local */
    bool stop;         /* the caller gave up: build nothing more */
} Signer;

static void *signer_main(void *arg)
{
    Signer *g = arg;
    for (size_t i = 0; i < g->n; i++) {
        Prepared *p = &g->prep[i];
        int r = 0;
        pthread_mutex_lock(&g->lock);
        while (g->ready <= i && !g->stop)
            pthread_cond_wait(&g->ready_cond, &g->lock);
        bool stop = g->stop, presign = p->presign;
        pthread_mutex_unlock(&g->lock);
        if (stop)
            break;
        if (presign)
            r = build_item(g->s, &g->items[i], p, g->now);
        pthread_mutex_lock(&g->lock);
        if (r < 0) {
            g->error = r;
            g->failed_at = i;
            snprintf(g->detail, sizeof(g->detail), "%s", lv_error());
        }
        g->done = i + 1;
        /* Woken per handoff, not per item: on a busy machine every wakeup
         * of the caller can preempt this thread, the token's only one. */
        if (r < 0 || g->done > g->want)
            pthread_cond_signal(&g->cond);
        pthread_mutex_unlock(&g->lock);
        if (r < 0)
            break;
    }
    return NULL;
}

/* Waits until item i is settled (sleeping, when it must, until the items
 * up to `last` are: one wakeup per handoff); the signer's error (with its
 * detail) if it failed at i or before. A failure further ahead (in a later
 * group) is not item i's: its group still commits. */
static int signer_wait(Signer *g, size_t i, size_t last)
{
    pthread_mutex_lock(&g->lock);
    if (g->done <= i && g->error == 0)
        g->want = last;
    while (g->done <= i && g->error == 0)
        pthread_cond_wait(&g->cond, &g->lock);
    int r = g->error < 0 && i >= g->failed_at ? g->error : 0;
    pthread_mutex_unlock(&g->lock);
    if (r < 0)
        return lv_error_set(r, "%s", g->detail);
    return 0;
}

static size_t hash_ref(const char *v)
{
    size_t h = 1469598103934665603ULL;
    for (; *v; v++)
        h = (h ^ (unsigned char)*v) * 1099511628211ULL;
    return h;
}

/* The source_refs met so far in one call, to tell repeats. */
typedef struct Seen {
    const char **refs;
    size_t cap;
} Seen;

static int seen_init(Seen *seen, size_t n)
{
    seen->cap = 16;
    while (seen->cap < 2 * n)
        seen->cap *= 2;
    seen->refs = calloc(seen->cap, sizeof(*seen->refs));
    return seen->refs ? 0 : -ENOMEM;
}

/* Marks item i for the signer when it is new to the spool and the first of
 * its source_ref in the call (a repeat must meet the stored first one:
 * duplicate or conflict, never a second signature). */
static int mark_presign(Spool *s, Seen *seen, const SpoolItemIn *items, Prepared *prep, size_t i)
{
    const char *ref = items[i].source_ref;
    size_t k = hash_ref(ref) & (seen->cap - 1);
    for (; seen->refs[k]; k = (k + 1) & (seen->cap - 1))
        if (strcmp(seen->refs[k], ref) == 0)
            return 0;
    seen->refs[k] = ref;
    char event_id[ENVELOPE_EVENT_ID_MAX];
    envelope_event_id(s->installation_id, ref, event_id);
    int r = item_stored(s, event_id);
    if (r < 0)
        return r;
    prep[i].presign = r == 0;
    return 0;
}

/* Inserts items [from, to) as the signer settles them; stops at the first
 * error. */
static int insert_range(Spool *s, Signer *g, const SpoolItemIn *items, Prepared *prep, size_t from,
                        size_t to, int64_t now, SpoolEnqueueResult *ret_results)
{
    int r = 0;
    for (size_t i = from; i < to && r >= 0; i++) {
        memset(&ret_results[i], 0, sizeof(ret_results[i]));
        if (g && prep[i].presign)
            r = signer_wait(g, i,
                            i + SIGNER_HANDOFF - 1 < to - 1 ? i + SIGNER_HANDOFF - 1 : to - 1);
        if (r >= 0)
            r = enqueue_one(s, &items[i], &prep[i], now, &ret_results[i]);
        /* Stored (or refused): what the signer built for it is not needed. */
        prepared_done(&prep[i]);
    }
    return r;
}

/* The items in groups of `group`, each committed on its own (then done() is
 * called), the signer running ahead across the groups. */
static int enqueue_run(Spool *s, const SpoolItemIn *items, size_t n,
                       SpoolEnqueueResult *ret_results, size_t group, spool_group_done_fn done,
                       void *userdata)
{
    if (!s->have_dek)
        return lv_error_set(LV_ERR_NOKEY, "enqueue: the spool was opened without the token");
    if (!s->installation_id[0])
        return lv_error_set(LV_ERR_INPUT, "--installation-id: missing (needed to enqueue)");
    if (n == 0)
        return 0;
    Prepared *prep = calloc(n, sizeof(*prep));
    Seen seen = {0};
    if (!prep || seen_init(&seen, n) < 0) {
        free(prep);
        return -ENOMEM;
    }
    Signer g = {.s = s, .items = items, .prep = prep, .n = n};
    bool signer = false, open = false, record_pending = false;
    pthread_t th;
    int r = db_begin(s->db);
    if (r < 0)
        goto done;
    open = true;
    int64_t now = lv_now_ms();
    /* The DEK of the first transaction seals every row of the call (the
     * signer seals ahead); rows keep the id of the DEK they were sealed
     * with, so a rotation meanwhile leaves them readable (and rekeyed by the
     * next rekey). */
    bool key_was_recorded = s->key_recorded;
    r = spool_dek_refresh(s);
    if (r >= 0 && !s->key_recorded)
        r = record_signing_key(s, now);
    g.now = now;
    /* The key record goes with this first transaction: undone with it. */
    record_pending = r >= 0 && s->key_recorded && !key_was_recorded;
    if (r < 0)
        goto done;
    if (n >= SIGNER_MIN_ITEMS) {
        pthread_mutex_init(&g.lock, NULL);
        pthread_cond_init(&g.cond, NULL);
        pthread_cond_init(&g.ready_cond, NULL);
        int e = pthread_create(&th, NULL, signer_main, &g);
        if (e != 0) {
            pthread_cond_destroy(&g.ready_cond);
            pthread_cond_destroy(&g.cond);
            pthread_mutex_destroy(&g.lock);
            r = lv_error_set(-e, "enqueue: cannot start the signing thread: %s", strerror(e));
            goto done;
        }
        signer = true;
    }
    /* Every item validated before the first write (one bad item, no rows),
     * and handed to the signer as soon as it is: the token starts on the
     * first item while the rest are checked. Marked inside the first group's
     * transaction: what is stored now is seen, and what the groups of this
     * call store is a repeat, never signed twice. */
    for (size_t i = 0; i < n && r >= 0; i++) {
        r = spool_item_check(&items[i], &prep[i].canon, &prep[i].canon_len);
        if (r >= 0)
            r = mark_presign(s, &seen, items, prep, i);
        if (r >= 0 && signer) {
            pthread_mutex_lock(&g.lock);
            g.ready = i + 1;
            pthread_cond_signal(&g.ready_cond);
            pthread_mutex_unlock(&g.lock);
        }
    }
    /* The quota before anything is written: the new items' number, and
     * at least their sealed payloads' bytes (each group is held to the
     * exact figure before its COMMIT, below). */
    if (r >= 0) {
        size_t fresh = 0;
        int64_t bytes = 0;
        for (size_t i = 0; i < n; i++)
            if (prep[i].presign) {
                fresh++;
                bytes += (int64_t)(prep[i].canon_len + SPOOL_SEAL_OVERHEAD);
            }
        r = spool_quota_check(s, fresh, bytes, false);
    }
    for (size_t first = 0; first < n && r >= 0; first += group) {
        size_t count = n - first < group ? n - first : group;
        if (!open && (r = db_begin(s->db)) < 0)
            break;
        open = true;
        r = insert_range(s, signer ? &g : NULL, items, prep, first, first + count, now,
                         ret_results);
        if (r >= 0) {
            size_t stored = 0;
            for (size_t i = first; i < first + count; i++)
                stored += ret_results[i].status == SPOOL_QUEUED;
            r = spool_quota_check(s, stored, 0, true);
        }
        if (r >= 0)
            r = db_commit(s->db);
        if (r < 0)
            break;
        open = false;
        record_pending = false;
        if (done)
            r = done(userdata, first, count);
    }
done:
    if (r < 0 && open) {
        db_rollback(s->db);
        if (record_pending)
            s->key_recorded = false; /* the record went with the transaction */
    }
    if (signer) {
        pthread_mutex_lock(&g.lock);
        g.stop = true;
        pthread_cond_signal(&g.ready_cond);
        pthread_mutex_unlock(&g.lock);
        pthread_join(th, NULL);
        pthread_cond_destroy(&g.ready_cond);
        pthread_cond_destroy(&g.cond);
        pthread_mutex_destroy(&g.lock);
    }
    for (size_t i = 0; i < n; i++) {
        erase_and_free(prep[i].canon, prep[i].canon_len);
        prepared_done(&prep[i]);
    }
    free(prep);
    free(seen.refs);
    return r;
}

int spool_enqueue(Spool *s, const SpoolItemIn *items, size_t n, SpoolEnqueueResult *ret_results)
{
    /* One transaction for all n. */
    return enqueue_run(s, items, n, ret_results, n ? n : 1, NULL, NULL);
}

int spool_enqueue_groups(Spool *s, const SpoolItemIn *items, size_t n,
                         SpoolEnqueueResult *ret_results, spool_group_done_fn done, void *userdata)
{
    return enqueue_run(s, items, n, ret_results, SPOOL_BATCH_GROUP, done, userdata);
}
